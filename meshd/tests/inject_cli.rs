//! `meshd inject` as a user runs it: what reaches standard output and
//! standard error, and the exit status.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn inject(stdin: &str, args: &[&str]) -> Output {
    inject_with_env(stdin, args, &[])
}

fn inject_with_env(stdin: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_meshd"))
        .arg("inject")
        .args(args)
        .env_remove("MESHD_LOG")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: shop}\nspec: {containers: [{name: web, image: web:1}]}\n";

/// Issue #11 D.6: the cause of an error was printed a second time after
/// the message that already held it. (`meshd run`'s errors: see
/// `a_run_error_names_its_cause_once`.)
#[test]
fn each_error_is_printed_once() {
    let bad_annotation = POD.replace(
        "namespace: shop}",
        "namespace: shop, annotations: {meshd.io/log-level: loud}}",
    );
    let deep = format!("data: {}\n", "[".repeat(100));
    for (input, args, problem) in [
        (
            bad_annotation.as_str(),
            &["-f", "-"][..],
            "`loud` is not valid",
        ),
        (deep.as_str(), &["-f", "-"], "nests more than 64 levels"),
        ("a: [\n", &["-f", "-"], "not valid YAML"),
        ("", &["-f", "/nonexistent/manifest.yaml"], "No such file"),
    ] {
        let out = inject(input, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert_eq!(stderr.matches(problem).count(), 1, "{problem}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(out.stdout.is_empty());
    }
}

/// Issue #11 D.3.
#[test]
fn workloads_not_injected_are_named_on_standard_error() {
    let input = format!(
        "{POD}---\n{}---\napiVersion: v1\nkind: List\nitems:\n- {{apiVersion: extensions/v1beta1, kind: Deployment, metadata: {{name: old}}, spec: {{template: {{spec: {{containers: [{{name: a}}]}}}}}}}}\n",
        POD.replace("kind: Pod", "kind: pod")
    );
    let out = inject(&input, &["-f", "-", "-n", "apps"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        stderr.lines().collect::<Vec<_>>(),
        [
            "warning: -: document 2 (pod shop/web): not injected: kind `pod` is not a Kubernetes kind (kinds are case-sensitive); accepted: Pod (v1)",
            "warning: -: document 3, item 1 (Deployment apps/old): not injected: apiVersion extensions/v1beta1 is no longer served by Kubernetes (meshd supports 1.29 and later); accepted: apps/v1 for a Deployment",
        ]
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.matches("meshd.io/status").count(), 1, "{stdout}");
}

/// Issue #11 D.6, in the other commands: a library error that carries its
/// cause in its message and as its source.
#[test]
fn a_run_error_names_its_cause_once() {
    let not_a_dir = std::env::temp_dir().join(format!("meshd-cli-file-{}", std::process::id()));
    std::fs::write(&not_a_dir, "").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_meshd"))
        .args(["run", "--xds-address", "127.0.0.1:0"])
        .args(["--debug-address", "127.0.0.1:0", "--ca-dir"])
        .arg(not_a_dir.join("ca"))
        .env("MESHD_LOG", "error")
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&not_a_dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert_eq!(stderr.matches("Not a directory").count(), 1, "{stderr}");
}

/// Issue #11 E.2: the injected images come from a private registry, so
/// the pull Secrets the mesh is given reach every injected pod, from the
/// flag or from its MESHD_ variable (what the chart sets).
#[test]
fn pull_secrets_for_the_injected_images_reach_the_pod() {
    let by_flag = inject(
        POD,
        &["-f", "-", "--image-pull-secrets", "registry-a,registry-b"],
    );
    let by_env = inject_with_env(
        POD,
        &["-f", "-"],
        &[("MESHD_IMAGE_PULL_SECRETS", "registry-a,registry-b")],
    );
    for out in [by_flag, by_env] {
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pod: serde_yaml::Value = serde_yaml::from_str(&stdout).unwrap();
        let names: Vec<&str> = pod["spec"]["imagePullSecrets"]
            .as_sequence()
            .expect("imagePullSecrets")
            .iter()
            .map(|s| s["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["registry-a", "registry-b"], "{stdout}");
    }
    let without = inject(POD, &["-f", "-"]);
    assert!(!String::from_utf8_lossy(&without.stdout).contains("imagePullSecrets"));
}

/// Issue #15: Gateway API routes travel in the same manifests as the
/// workloads they route to. `meshd inject` leaves them as written, byte
/// for byte (comments, flow style, quoting and key order included), and
/// says nothing about them.
#[test]
fn gateway_api_routes_pass_through_untouched() {
    const HTTP_ROUTE: &str = r#"# reviews: 90/10 canary
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews-split, namespace: shop}
spec:
  parentRefs:
  - {group: "", kind: Service, name: reviews, port: 9080}
  rules:
  - matches: [{path: {type: PathPrefix, value: /v2}}]   # the canary's paths
    filters:
    - type: URLRewrite
      urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: '/'}}
    backendRefs:
    - {name: reviews-v1, port: 9080, weight: 90}
    - {name: reviews-v2, port: 9080, weight: 10}
    timeouts: {request: "5s"}
"#;
    const GRPC_ROUTE: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata:\n  name: echo\n  namespace: shop\nspec:\n  parentRefs: [{group: '', kind: Service, name: echo}]\n  rules: [{backendRefs: [{name: echo-v1, port: 7070}]}]\n";
    let input = format!("{HTTP_ROUTE}---\n{POD}---\n{GRPC_ROUTE}");
    let out = inject(&input, &["-f", "-"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(HTTP_ROUTE), "{stdout}");
    assert!(stdout.contains(GRPC_ROUTE), "{stdout}");
    // In their places around the Pod, which is injected.
    let documents: Vec<&str> = stdout.split("\n---\n").collect();
    assert_eq!(documents.len(), 3, "{stdout}");
    assert!(documents[0].contains("kind: HTTPRoute"), "{stdout}");
    assert!(documents[1].contains("meshd.io/status"), "{stdout}");
    assert!(documents[2].contains("kind: GRPCRoute"), "{stdout}");
}
