//! What the injector puts into a pod works: real Envoy accepts the
//! sidecar's command line and inline bootstrap, and the init container's
//! `meshd capture` flags install exactly the rules the network-namespace
//! e2e tests apply.

use std::collections::BTreeMap;
use std::process::Command;

use k8s_openapi::api::core::v1::{Container, Pod};
use meshd_api::sidecar::bootstrap::BootstrapConfig;
use meshd_injector::capture::{self, CaptureConfig};
use meshd_injector::config::{IDENTITY_MOUNT, InjectorConfig};
use meshd_injector::inject::{INIT_CONTAINER, Injection, PROXY_CONTAINER, inject};
use meshd_tests::envoy;
use serde_json::{Value, json};

const NAMESPACE: &str = "shop";
const POD: &str = "web-0";

/// A pod as a Deployment creates it (no name yet: generateName), injected
/// in `NAMESPACE`, with the patch applied.
fn injected(annotations: &[(&str, &str)], config: &InjectorConfig) -> Pod {
    let annotations: BTreeMap<&str, &str> = annotations.iter().copied().collect();
    let original = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "web-", "annotations": annotations},
        "spec": {
            "serviceAccountName": "web",
            // Probed over HTTP and gRPC: the bootstrap Envoy validates
            // carries both kinds of probe route.
            "containers": [{
                "name": "web", "image": "web:1",
                "ports": [{"containerPort": 8080}, {"containerPort": 9090}],
                "livenessProbe": {"httpGet": {"path": "/live", "port": 8080}},
                "readinessProbe": {"grpc": {"port": 9090}},
            }],
        },
    });
    let pod: Pod = serde_json::from_value(original.clone()).unwrap();
    let Injection::Patched { patch, .. } = inject(&pod, NAMESPACE, config).unwrap() else {
        panic!("the pod was not injected");
    };
    let mut doc = original;
    json_patch::patch(&mut doc, &patch).unwrap();
    serde_json::from_value(doc).unwrap()
}

fn container<'a>(pod: &'a Pod, name: &str) -> &'a Container {
    let spec = pod.spec.as_ref().unwrap();
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// Kubernetes' expansion of `$(VAR)` in a container's command and args:
/// a defined variable is substituted, `$$` is a literal `$`, anything else
/// is left as written.
fn expand(text: &str, vars: &[(&str, &str)]) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i + 1..];
        if let Some(after) = tail.strip_prefix('$') {
            out.push('$');
            rest = after;
        } else if let Some((name, value)) = tail
            .strip_prefix('(')
            .and_then(|t| t.split_once(')'))
            .and_then(|(name, _)| vars.iter().find(|(n, _)| *n == name))
        {
            out.push_str(value);
            rest = &tail[name.len() + 2..];
        } else {
            out.push('$');
            rest = tail;
        }
    }
    out.push_str(rest);
    out
}

#[test]
fn kubernetes_expansion_is_modelled_faithfully() {
    let vars = [("A", "x"), ("B", "y")];
    assert_eq!(expand("$(A).$(B)", &vars), "x.y");
    assert_eq!(expand("$$(A) $$ $(C) $", &vars), "$(A) $ $(C) $");
}

#[test]
fn envoy_validates_the_injected_sidecar() {
    let Some(envoy_bin) = envoy::require_envoy() else {
        return;
    };
    let work = meshd_tests::workdir().unwrap();
    let pki = meshd_tests::pki::Pki::new(Default::default()).unwrap();
    // The identity the Secret would hold, for the pod's service account.
    let mut identity = BootstrapConfig::new(NAMESPACE, POD);
    let identity_dir = pki
        .provision(&mut identity, "web", work.path(), None)
        .unwrap();

    let flavours = [
        ("delta-dns", InjectorConfig::default()),
        (
            "sotw-ip-classic",
            InjectorConfig {
                xds_address: "10.96.0.10:15010".into(),
                xds_protocol: "sotw".into(),
                native_sidecar: false,
                proxy_concurrency: 0,
                ..Default::default()
            },
        ),
    ];
    for (flavour, config) in flavours {
        let pod = injected(&[("meshd.io/log-level", "info")], &config);
        let proxy = container(&pod, PROXY_CONTAINER);
        assert_eq!(proxy.command.as_deref(), Some(&["envoy".to_string()][..]));
        // What the kubelet fills in from the downward API.
        let vars = [
            ("MESHD_POD_NAME", POD),
            ("MESHD_POD_NAMESPACE", NAMESPACE),
            ("MESHD_WORKLOAD", "web"),
            ("MESHD_SERVICE_ACCOUNT", "web"),
        ];
        let declared: Vec<&str> = proxy
            .env
            .iter()
            .flatten()
            .map(|e| e.name.as_str())
            .collect();
        for (var, _) in vars {
            assert!(declared.contains(&var), "{flavour}: {var} is not in env");
        }
        let mut args: Vec<String> = proxy
            .args
            .iter()
            .flatten()
            .map(|a| expand(a, &vars))
            .collect();
        let at = args.iter().position(|a| a == "--config-yaml").unwrap() + 1;
        // IDENTITY_MOUNT is where the Secret is mounted in the pod; here the
        // same files live in a scratch directory.
        args[at] = args[at].replace(IDENTITY_MOUNT, &identity_dir.display().to_string());
        let bootstrap: Value = serde_json::from_str(&args[at]).unwrap();
        assert_eq!(bootstrap["node"]["id"], "web-0.shop", "{flavour}");
        let clusters = bootstrap["static_resources"]["clusters"].to_string();
        for probe_cluster in ["app-probe|8080", "app-grpc-probe|9090"] {
            assert!(clusters.contains(probe_cluster), "{flavour}: {clusters}");
        }
        assert!(
            !args.iter().any(|a| a.contains("$(")),
            "{flavour}: {args:?}"
        );
        std::fs::write(work.path().join(format!("{flavour}.json")), &args[at]).unwrap();

        let out = Command::new(&envoy_bin)
            .args(["--mode", "validate"])
            .args(&args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{flavour}: envoy rejected the injected sidecar ({:?}):\n{}\n{}",
            args.iter()
                .map(|a| if a.len() > 80 { "<bootstrap>" } else { a })
                .collect::<Vec<_>>(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Reads `meshd capture`'s flags back, as the init container passes them,
/// with the parsers `meshd capture` uses.
fn capture_from_command(command: &[String]) -> CaptureConfig {
    assert_eq!(command[..2], ["meshd", "capture"], "{command:?}");
    let mut config = CaptureConfig::default();
    for arg in &command[2..] {
        let (flag, value) = arg
            .split_once('=')
            .unwrap_or_else(|| panic!("`{arg}` is not --flag=value"));
        match flag {
            "--exclude-inbound-ports" => {
                config.exclude_inbound_ports =
                    capture::parse_ports("--exclude-inbound-ports", value).unwrap();
            }
            "--exclude-outbound-ports" => {
                config.exclude_outbound_ports =
                    capture::parse_ports("--exclude-outbound-ports", value).unwrap();
            }
            "--exclude-outbound-cidrs" => {
                config.exclude_outbound_cidrs =
                    capture::parse_cidrs("--exclude-outbound-cidrs", value).unwrap();
            }
            other => panic!("meshd capture has no flag {other}"),
        }
    }
    config
}

#[test]
fn the_init_container_installs_the_rules_the_e2e_tests_apply() {
    let config = InjectorConfig::default();
    // No annotations: the rules of the network-namespace e2e test.
    let pod = injected(&[], &config);
    let init = container(&pod, INIT_CONTAINER);
    let from_pod = capture_from_command(init.command.as_deref().unwrap());
    for ipv6 in [false, true] {
        assert_eq!(from_pod.render(ipv6), CaptureConfig::default().render(ipv6));
    }

    // With exclusions: the same rules as built straight from the values.
    let inbound = "22, 8081";
    let outbound = "5432,6379";
    let cidrs = "10.96.0.1/32, 169.254.169.254, fd00:10:96::/112";
    let pod = injected(
        &[
            ("meshd.io/exclude-inbound-ports", inbound),
            ("meshd.io/exclude-outbound-ports", outbound),
            ("meshd.io/exclude-outbound-cidrs", cidrs),
        ],
        &config,
    );
    let init = container(&pod, INIT_CONTAINER);
    let from_pod = capture_from_command(init.command.as_deref().unwrap());
    let expected = CaptureConfig {
        exclude_inbound_ports: capture::parse_ports("inbound", inbound).unwrap(),
        exclude_outbound_ports: capture::parse_ports("outbound", outbound).unwrap(),
        exclude_outbound_cidrs: capture::parse_cidrs("cidrs", cidrs).unwrap(),
        ..Default::default()
    };
    for ipv6 in [false, true] {
        let rules = from_pod.render(ipv6);
        assert_eq!(rules, expected.render(ipv6));
        assert!(rules.contains("-A MESHD_INBOUND -p tcp --dport 8081 -j RETURN"));
    }
    assert!(
        from_pod
            .render(false)
            .contains("-d 169.254.169.254/32 -j RETURN")
    );
    assert!(
        from_pod
            .render(true)
            .contains("-d fd00:10:96::/112 -j RETURN")
    );
}
