//! Golden tests: every `tests/golden/<case>.in.yaml` is injected offline
//! (the same `inject` the webhook calls) and compared with
//! `<case>.out.yaml`.
//!
//! Regenerate after an intended change with
//! `MESHD_UPDATE_GOLDEN=1 cargo test -p meshd-injector --test golden`, and
//! review the diff.
//!
//! An input's leading comment block describes the case and is copied to
//! the output; a `# config: {…}` line in it overrides injector settings
//! (as the chart names them, e.g. `{"nativeSidecar": false}`). A case whose
//! injection fails has `# error: <message>` as its output.
//!
//! Beyond the text, every case checks that each injected pod (or pod
//! template) deserialises as Kubernetes' own types, that applying the patch
//! with `json_patch` to the input gives the same objects, and that injecting
//! the output again changes nothing.

use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::Pod;
use meshd_injector::config::InjectorConfig;
use meshd_injector::inject::{Injection, inject};
use meshd_injector::offline::inject_manifests;
use serde_json::Value;

const UPDATE_ENV: &str = "MESHD_UPDATE_GOLDEN";

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// The settings every case starts from: the defaults, with an init image
/// that does not change with each release.
fn base_config() -> Value {
    let mut config = serde_json::to_value(InjectorConfig::default()).unwrap();
    config["initImage"] = "ghcr.io/meshd/meshd:dev".into();
    config
}

struct Case {
    name: String,
    header: String,
    body: String,
    config: InjectorConfig,
}

fn load(path: &Path) -> Case {
    let text = std::fs::read_to_string(path).unwrap();
    let split = text
        .lines()
        .take_while(|l| l.starts_with('#'))
        .map(|l| l.len() + 1)
        .sum::<usize>()
        .min(text.len());
    let (header, body) = text.split_at(split);
    let mut config = base_config();
    for line in header.lines() {
        if let Some(overrides) = line.strip_prefix("# config:") {
            let overrides: serde_json::Map<String, Value> = serde_json::from_str(overrides)
                .unwrap_or_else(|e| panic!("{}: bad `# config:` line: {e}", path.display()));
            for (k, v) in overrides {
                assert!(
                    config.get(&k).is_some(),
                    "{}: unknown setting {k}",
                    path.display()
                );
                config[k] = v;
            }
        }
    }
    let name = path
        .file_name()
        .unwrap()
        .to_string_lossy()
        .trim_end_matches(".in.yaml")
        .to_string();
    Case {
        name,
        header: header.to_string(),
        body: body.to_string(),
        config: serde_json::from_value(config).unwrap(),
    }
}

/// Where each kind keeps its pod template.
fn template_pointer(kind: &str) -> Option<&'static str> {
    match kind {
        "Pod" => Some(""),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => Some("/spec/template"),
        "CronJob" => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

fn documents(yaml: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// The output's objects are what Kubernetes' own types accept.
fn check_types(case: &str, doc: &Value) {
    let kind = doc["kind"].as_str().unwrap_or_default();
    let typed = |r: Result<(), serde_json::Error>| {
        r.unwrap_or_else(|e| panic!("{case}: the {kind} does not deserialise: {e}"));
    };
    let v = doc.clone();
    match kind {
        "Pod" => typed(serde_json::from_value::<Pod>(v).map(drop)),
        "Deployment" => typed(serde_json::from_value::<Deployment>(v).map(drop)),
        "StatefulSet" => typed(serde_json::from_value::<StatefulSet>(v).map(drop)),
        "DaemonSet" => typed(serde_json::from_value::<DaemonSet>(v).map(drop)),
        "ReplicaSet" => typed(serde_json::from_value::<ReplicaSet>(v).map(drop)),
        "Job" => typed(serde_json::from_value::<Job>(v).map(drop)),
        "CronJob" => typed(serde_json::from_value::<CronJob>(v).map(drop)),
        _ => {}
    }
    if let Some(pointer) = template_pointer(kind) {
        let template = doc.pointer(pointer).unwrap();
        let pod: Pod = serde_json::from_value(template.clone())
            .unwrap_or_else(|e| panic!("{case}: the {kind}'s pod does not deserialise: {e}"));
        assert!(pod.spec.is_some(), "{case}: a {kind} without a pod spec");
    }
}

/// Applying `inject`'s patch with `json_patch` to each input object gives
/// the output object: offline injection is the webhook's.
fn check_patch(case: &Case, output: &str) {
    let inputs = documents(&case.body);
    let outputs = documents(output);
    assert_eq!(inputs.len(), outputs.len(), "{}: document count", case.name);
    for (mut input, output) in inputs.into_iter().zip(outputs) {
        let kind = input["kind"].as_str().unwrap_or_default().to_string();
        let Some(pointer) = template_pointer(&kind) else {
            assert_eq!(input, output, "{}: a {kind} was changed", case.name);
            continue;
        };
        let namespace = input["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_string();
        let owner = input["metadata"]["name"].as_str().map(|name| {
            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                kind: kind.clone(),
                name: name.to_string(),
                controller: Some(true),
                ..Default::default()
            }
        });
        let template = input.pointer_mut(pointer).unwrap();
        let mut pod: Pod = serde_json::from_value(template.clone()).unwrap();
        // As `meshd inject` does: a template's pods are its workload's.
        if !pointer.is_empty() && pod.metadata.owner_references.is_none() {
            pod.metadata.owner_references = owner.map(|o| vec![o]);
        }
        match inject(&pod, &namespace, &case.config).unwrap() {
            Injection::Skipped(_) => {}
            Injection::Patched { patch, .. } => {
                if template.get("metadata").is_none() {
                    template["metadata"] = serde_json::json!({});
                }
                json_patch::patch(template, &patch).unwrap();
            }
        }
        assert_eq!(
            input, output,
            "{}: the output differs from the patched input",
            case.name
        );
        check_types(&case.name, &output);
    }
}

fn run(case: &Case) -> String {
    match inject_manifests(&case.body, &case.config) {
        Ok(output) => {
            check_patch(case, &output);
            assert_eq!(
                inject_manifests(&output, &case.config).unwrap(),
                output,
                "{}: injecting the output again changed it",
                case.name
            );
            format!("{}{output}", case.header)
        }
        Err(e) => format!("{}# error: {e}\n", case.header),
    }
}

#[test]
fn golden() {
    let update = std::env::var_os(UPDATE_ENV).is_some_and(|v| v == "1");
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(golden_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".in.yaml"))
        .collect();
    inputs.sort();
    assert!(inputs.len() >= 10, "the golden corpus is missing");
    let mut failures = Vec::new();
    for path in inputs {
        let case = load(&path);
        let actual = run(&case);
        let out_path = golden_dir().join(format!("{}.out.yaml", case.name));
        if update {
            std::fs::write(&out_path, &actual).unwrap();
            continue;
        }
        match std::fs::read_to_string(&out_path) {
            Ok(expected) if expected == actual => {}
            Ok(expected) => failures.push(format!(
                "{}: differs from {} (- expected, + actual):\n{}",
                case.name,
                out_path.display(),
                diff(&expected, &actual)
            )),
            Err(e) => failures.push(format!(
                "{}: cannot read {}: {e}",
                case.name,
                out_path.display()
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n\nIf the change is intended, regenerate with {UPDATE_ENV}=1 cargo test -p meshd-injector --test golden",
        failures.join("\n\n")
    );
}

/// A line diff (longest common subsequence) with three lines of context.
fn diff(expected: &str, actual: &str) -> String {
    let a: Vec<&str> = expected.lines().collect();
    let b: Vec<&str> = actual.lines().collect();
    // lcs[i][j]: the common subsequence length of a[i..] and b[j..].
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut lines: Vec<(char, &str)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            lines.push((' ', a[i]));
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            lines.push(('-', a[i]));
            i += 1;
        } else {
            lines.push(('+', b[j]));
            j += 1;
        }
    }
    let changed: Vec<usize> = (0..lines.len()).filter(|&k| lines[k].0 != ' ').collect();
    let near = |k: usize| changed.iter().any(|&c| c.abs_diff(k) <= 3);
    let mut out = String::new();
    let mut skipped = false;
    for (k, (mark, line)) in lines.iter().enumerate() {
        if near(k) {
            if skipped {
                out.push_str("  ...\n");
                skipped = false;
            }
            out.push_str(&format!("{mark} {line}\n"));
        } else {
            skipped = true;
        }
    }
    if skipped {
        out.push_str("  ...\n");
    }
    out
}

#[test]
fn the_diff_shows_changes_in_context() {
    let d = diff("a\nb\nc\nd\ne\nf\ng\nh\ni\n", "a\nb\nc\nd\nE\nf\ng\nh\ni\n");
    assert_eq!(d, "  ...\n  b\n  c\n  d\n- e\n+ E\n  f\n  g\n  h\n  ...\n");
}
