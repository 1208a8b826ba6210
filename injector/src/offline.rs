//! Offline injection (`meshd inject -f`): the same [`inject`] over YAML
//! manifests, for GitOps pipelines and for reviewing what the webhook would
//! do.
//!
//! ```text
//! YAML ─split at `---`─> document ─┬─ Pod / a workload's pod template ─> inject() ─> patch applied ─> YAML
//!                                  └─ anything else, or skipped ──────────────────────────────────> as written
//! ```
//!
//! Workloads are injected through their pod template (`spec.template`;
//! `spec.jobTemplate.spec.template` for a CronJob) in the workload's
//! namespace (`default` when it names none). The patch is applied to the
//! document itself, keeping its key order; documents left alone are
//! copied byte for byte, comments included.

use json_patch::PatchOperation;
use json_patch::jsonptr::Pointer;
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use serde_yaml::Value as Yaml;

use meshd_controlplane::discovery::file::limits::{self, LimitError};

use crate::config::InjectorConfig;
use crate::inject::{InjectError, Injection, inject};

/// The namespace of a manifest that names none, as kubectl would use
/// without `-n`.
pub const DEFAULT_NAMESPACE: &str = "default";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OfflineError {
    #[error("document {index}: not valid YAML: {problem}")]
    Yaml { index: usize, problem: String },
    /// Too large or too deeply nested to parse: refused up front, as the
    /// file registry refuses such a file.
    #[error("document {index}: {source}")]
    Limits { index: usize, source: LimitError },
    #[error("document {index} ({object}): {problem}")]
    Invalid {
        index: usize,
        object: String,
        problem: String,
    },
    #[error("document {index} ({object}): {source}")]
    Inject {
        index: usize,
        object: String,
        source: InjectError,
    },
}

/// Where a kind keeps its pod: `(apiVersion group, kind, pointer)`.
const POD_HOLDERS: &[(&str, &str, &str)] = &[
    ("", "Pod", ""),
    ("", "ReplicationController", "/spec/template"),
    ("apps", "Deployment", "/spec/template"),
    ("apps", "StatefulSet", "/spec/template"),
    ("apps", "DaemonSet", "/spec/template"),
    ("apps", "ReplicaSet", "/spec/template"),
    ("batch", "Job", "/spec/template"),
    ("batch", "CronJob", "/spec/jobTemplate/spec/template"),
];

/// Injects every pod and pod template in a multi-document YAML stream;
/// a document without `metadata.namespace` is taken to be in `default`.
/// Documents are numbered from 1 in errors, empty ones not counted.
pub fn inject_manifests(yaml: &str, config: &InjectorConfig) -> Result<String, OfflineError> {
    inject_manifests_in(yaml, DEFAULT_NAMESPACE, config)
}

/// [`inject_manifests`], with documents that name no namespace taken to be
/// in `namespace` (as `kubectl apply -n` would place them).
pub fn inject_manifests_in(
    yaml: &str,
    namespace: &str,
    config: &InjectorConfig,
) -> Result<String, OfflineError> {
    let mut out: Vec<String> = Vec::new();
    let mut index = 0;
    // Editors on Windows start files with a byte order mark; serde_yaml
    // would read a second document into it.
    for text in split_documents(limits::strip_bom(yaml)) {
        if text.trim().is_empty() {
            continue;
        }
        // The parser's time grows with the square of the nesting depth:
        // refuse what no manifest needs before it gets there.
        limits::check(&text).map_err(|source| OfflineError::Limits {
            index: index + 1,
            source,
        })?;
        let parsed: Yaml = serde_yaml::from_str(&text).map_err(|e| OfflineError::Yaml {
            index: index + 1,
            problem: e.to_string(),
        })?;
        if parsed.is_null() {
            // Only comments: keep them where they were.
            out.push(text);
            continue;
        }
        index += 1;
        match inject_document(parsed, index, namespace, config)? {
            Some(injected) => out.push(injected),
            None => out.push(text),
        }
    }
    Ok(out
        .into_iter()
        .map(|mut d| {
            if !d.ends_with('\n') {
                d.push('\n');
            }
            d
        })
        .collect::<Vec<_>>()
        .join("---\n"))
}

/// Splits a YAML stream at its document markers (`---`, and `...` which
/// ends a document), which YAML only recognises at the start of a line.
/// Content after `---` on the same line belongs to the new document.
fn split_documents(text: &str) -> Vec<String> {
    let marker = |line: &str, m: &str| -> Option<String> {
        let rest = line.strip_prefix(m)?;
        (rest.is_empty() || rest.starts_with([' ', '\t'])).then(|| rest.trim().to_string())
    };
    let mut docs = vec![String::new()];
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\n', '\r']);
        if let Some(rest) = marker(bare, "---") {
            let mut doc = String::new();
            if !rest.is_empty() {
                doc.push_str(&rest);
                doc.push('\n');
            }
            docs.push(doc);
        } else if marker(bare, "...").is_some() {
            docs.push(String::new());
        } else if let Some(doc) = docs.last_mut() {
            doc.push_str(line);
        }
    }
    docs
}

/// Injects one document: `Some(yaml)` when it changed, `None` to keep it
/// as written.
fn inject_document(
    mut doc: Yaml,
    index: usize,
    default_namespace: &str,
    config: &InjectorConfig,
) -> Result<Option<String>, OfflineError> {
    let str_at = |doc: &Yaml, keys: &[&str]| -> Option<String> {
        let mut v = doc;
        for k in keys {
            v = v.get(k)?;
        }
        v.as_str().map(String::from)
    };
    let (Some(api_version), Some(kind)) = (str_at(&doc, &["apiVersion"]), str_at(&doc, &["kind"]))
    else {
        return Ok(None);
    };
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    let Some(&(_, _, pointer)) = POD_HOLDERS
        .iter()
        .find(|(g, k, _)| *g == group && *k == kind)
    else {
        return Ok(None);
    };
    let namespace =
        str_at(&doc, &["metadata", "namespace"]).unwrap_or_else(|| default_namespace.to_string());
    let name = str_at(&doc, &["metadata", "name"])
        .or_else(|| str_at(&doc, &["metadata", "generateName"]).map(|g| format!("{g}*")))
        .unwrap_or_else(|| "(no name)".into());
    let object = format!("{kind} {namespace}/{name}");
    let invalid = |problem: String| OfflineError::Invalid {
        index,
        object: object.clone(),
        problem,
    };

    // Anchors and merge keys as kubectl resolves them.
    doc.apply_merge()
        .map_err(|e| invalid(format!("YAML merge keys cannot be resolved: {e}")))?;
    let json = serde_json::to_value(&doc)
        .map_err(|e| invalid(format!("not representable as JSON: {e}")))?;
    let field = pointer.trim_start_matches('/').replace('/', ".");
    let pod = if pointer.is_empty() {
        from_json::<Pod>(&json, "").map_err(invalid)?
    } else {
        let template = json
            .pointer(pointer)
            .filter(|t| !t.is_null())
            .ok_or_else(|| invalid(format!("{field} is missing; accepted: a pod template")))?;
        let template = from_json::<PodTemplateSpec>(template, &field).map_err(invalid)?;
        Pod {
            metadata: template.metadata.unwrap_or_default(),
            spec: template.spec,
            status: None,
        }
    };
    let patch = match inject(&pod, &namespace, config) {
        Ok(Injection::Skipped(_)) => return Ok(None),
        Ok(Injection::Patched { patch, .. }) => patch,
        Err(source) => {
            return Err(OfflineError::Inject {
                index,
                object,
                source,
            });
        }
    };
    let target = pointer
        .split('/')
        .skip(1)
        .try_fold(&mut doc, |v, key| v.get_mut(key))
        .ok_or_else(|| invalid(format!("{field} is missing")))?;
    if let Yaml::Mapping(m) = target
        && !m.get("metadata").is_some_and(Yaml::is_mapping)
    {
        // The patch adds labels and annotations under metadata.
        m.insert("metadata".into(), Yaml::Mapping(Default::default()));
    }
    apply_patch(target, &patch)
        .map_err(|e| invalid(format!("the injection patch does not apply: {e}")))?;
    serde_yaml::to_string(&doc)
        .map(Some)
        .map_err(|e| invalid(format!("cannot be written as YAML: {e}")))
}

/// Deserialises with the path of the offending field in the message.
fn from_json<T: serde::de::DeserializeOwned>(
    json: &serde_json::Value,
    prefix: &str,
) -> Result<T, String> {
    serde_path_to_error::deserialize(json).map_err(|e| {
        let path = e.path().to_string();
        let path = match (prefix.is_empty(), path.as_str()) {
            (_, ".") => prefix.to_string(),
            (true, _) => path,
            (false, _) => format!("{prefix}.{path}"),
        };
        format!("{path}: {}", e.into_inner())
    })
}

/// Applies a JSON Patch (the add, replace and remove operations `inject`
/// produces) to a YAML value, keeping the order of its keys.
fn apply_patch(doc: &mut Yaml, patch: &json_patch::Patch) -> Result<(), String> {
    for op in patch.iter() {
        match op {
            PatchOperation::Add(add) => {
                let value = to_yaml(&add.value)?;
                let (parent, key) = split(&add.path)?;
                match walk(doc, parent)? {
                    Yaml::Mapping(m) => {
                        m.insert(Yaml::String(key), value);
                    }
                    Yaml::Sequence(s) if key == "-" => s.push(value),
                    Yaml::Sequence(s) => {
                        let i = index(&key, s.len() + 1, &add.path)?;
                        s.insert(i, value);
                    }
                    _ => return Err(format!("{}: the parent is not a container", add.path)),
                }
            }
            PatchOperation::Replace(replace) => {
                *walk(doc, &replace.path)? = to_yaml(&replace.value)?;
            }
            PatchOperation::Remove(remove) => {
                let (parent, key) = split(&remove.path)?;
                let removed = match walk(doc, parent)? {
                    Yaml::Mapping(m) => m.shift_remove(key.as_str()).is_some(),
                    Yaml::Sequence(s) => {
                        let i = index(&key, s.len(), &remove.path)?;
                        s.remove(i);
                        true
                    }
                    _ => false,
                };
                if !removed {
                    return Err(format!("{}: nothing to remove", remove.path));
                }
            }
            other => return Err(format!("unexpected operation {other}")),
        }
    }
    Ok(())
}

fn to_yaml(value: &serde_json::Value) -> Result<Yaml, String> {
    serde_yaml::to_value(value).map_err(|e| e.to_string())
}

fn split(path: &Pointer) -> Result<(&Pointer, String), String> {
    path.split_back()
        .map(|(parent, last)| (parent, last.decoded().into_owned()))
        .ok_or_else(|| "the patch targets the whole document".to_string())
}

fn index(key: &str, bound: usize, path: &Pointer) -> Result<usize, String> {
    key.parse::<usize>()
        .ok()
        .filter(|i| *i < bound)
        .ok_or_else(|| format!("{path}: index out of range"))
}

fn walk<'a>(mut v: &'a mut Yaml, path: &Pointer) -> Result<&'a mut Yaml, String> {
    for token in path.tokens() {
        let key = token.decoded();
        v = match v {
            Yaml::Mapping(m) => m.get_mut(key.as_ref()),
            Yaml::Sequence(s) => match key.parse::<usize>() {
                Ok(i) => s.get_mut(i),
                Err(_) => None,
            },
            _ => None,
        }
        .ok_or_else(|| format!("{path}: no such field"))?;
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inject::{INIT_CONTAINER, PROXY_CONTAINER};

    fn config() -> InjectorConfig {
        InjectorConfig {
            proxy_image: "envoy:test".into(),
            init_image: "meshd:test".into(),
            ..Default::default()
        }
    }

    const DEPLOYMENT: &str = "\
# The web tier.
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
spec:
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: web:1
        resources:
          requests: {cpu: 0.5, memory: 64Mi}
";

    #[test]
    fn workloads_are_injected_through_their_template() {
        let out = inject_manifests(DEPLOYMENT, &config()).unwrap();
        let doc: serde_json::Value = serde_yaml::from_str(&out).unwrap();
        let template = &doc["spec"]["template"];
        let init: Vec<&str> = template["spec"]["initContainers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(init, [INIT_CONTAINER, PROXY_CONTAINER]);
        assert_eq!(template["metadata"]["labels"]["meshd.io/proxy"], "true");
        assert!(template["metadata"]["annotations"]["meshd.io/status"].is_string());
        // Key order is the document's own.
        assert!(out.starts_with("apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n"));
        // The same as applying the patch with json_patch.
        let mut expected: serde_json::Value = serde_yaml::from_str(DEPLOYMENT).unwrap();
        let pod = Pod {
            metadata: serde_json::from_value(expected["spec"]["template"]["metadata"].clone())
                .unwrap(),
            spec: serde_json::from_value(expected["spec"]["template"]["spec"].clone()).unwrap(),
            status: None,
        };
        let Injection::Patched { patch, .. } = inject(&pod, "shop", &config()).unwrap() else {
            panic!("skipped")
        };
        json_patch::patch(expected.pointer_mut("/spec/template").unwrap(), &patch).unwrap();
        assert_eq!(doc, expected);
    }

    #[test]
    fn cronjobs_are_injected_through_the_job_template() {
        let cron = "apiVersion: batch/v1\nkind: CronJob\nmetadata: {name: nightly}\nspec:\n  schedule: '@daily'\n  jobTemplate:\n    spec:\n      template:\n        spec:\n          restartPolicy: Never\n          containers: [{name: job, image: job:1}]\n";
        let out = inject_manifests(cron, &config()).unwrap();
        let doc: serde_json::Value = serde_yaml::from_str(&out).unwrap();
        let template = &doc["spec"]["jobTemplate"]["spec"]["template"];
        assert_eq!(
            template["spec"]["initContainers"][1]["name"],
            PROXY_CONTAINER
        );
        // The template had no metadata: it gets some.
        assert_eq!(template["metadata"]["labels"]["meshd.io/proxy"], "true");
    }

    #[test]
    fn other_documents_pass_through_as_written() {
        let input = "\
# header comment
---
apiVersion: v1
kind: Service   # a comment that survives
metadata: {name: web}
---
apiVersion: v1
kind: Pod
metadata: {name: host, namespace: shop}
spec: {hostNetwork: true, containers: [{name: a}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: system, namespace: kube-system}
spec: {template: {spec: {containers: [{name: a}]}}}
---
apiVersion: example.com/v1
kind: Deployment
metadata: {name: not-apps}
...
";
        let out = inject_manifests(input, &config()).unwrap();
        assert_eq!(out, input.replace("...\n", ""));
        assert_eq!(inject_manifests("", &config()).unwrap(), "");
        assert_eq!(inject_manifests("---\n---\n", &config()).unwrap(), "");
    }

    #[test]
    fn documents_are_joined_with_separators() {
        let input =
            format!("{DEPLOYMENT}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c}}\n");
        let out = inject_manifests(&input, &config()).unwrap();
        let docs: Vec<&str> = out.split("\n---\n").collect();
        assert_eq!(docs.len(), 2, "{out}");
        assert_eq!(
            docs[1],
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n"
        );
        // Content on the marker line belongs to the document.
        let inline = "--- {apiVersion: v1, kind: Pod, metadata: {name: p}, spec: {containers: [{name: a}]}}\n";
        let out = inject_manifests(inline, &config()).unwrap();
        assert!(out.contains("meshd.io/status"), "{out}");
    }

    #[test]
    fn errors_name_the_document_the_object_and_the_problem() {
        let bad_annotation = format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c}}\n---\n{}",
            DEPLOYMENT.replace(
                "      labels: {app: web}\n",
                "      labels: {app: web}\n      annotations: {meshd.io/log-level: loud}\n"
            )
        );
        let err = inject_manifests(&bad_annotation, &config()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "document 2 (Deployment shop/web): annotation meshd.io/log-level: `loud` is not valid; accepted: trace, debug, info, warning, error, critical, off"
        );

        let bad_field = "apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: db}\nspec:\n  template:\n    spec:\n      containers:\n      - name: db\n        ports: [{containerPort: http}]\n";
        let err = inject_manifests(bad_field, &config())
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("document 1 (StatefulSet default/db): spec.template.spec.containers[0].ports[0].containerPort: invalid type"),
            "{err}"
        );

        let missing = "apiVersion: batch/v1\nkind: Job\nmetadata: {name: j}\nspec: {}\n";
        assert_eq!(
            inject_manifests(missing, &config())
                .unwrap_err()
                .to_string(),
            "document 1 (Job default/j): spec.template is missing; accepted: a pod template"
        );

        let broken = "apiVersion: v1\nkind: Pod\nmetadata: {name: [}\n";
        assert!(matches!(
            inject_manifests(broken, &config()),
            Err(OfflineError::Yaml { index: 1, .. })
        ));
    }

    #[test]
    fn a_byte_order_mark_is_skipped() {
        // Before the first key, a BOM made serde_yaml see two documents.
        let deployment = DEPLOYMENT.trim_start_matches("# The web tier.\n");
        let with_bom = format!("\u{feff}{deployment}");
        let injected = inject_manifests(&with_bom, &config()).unwrap();
        assert_eq!(injected, inject_manifests(deployment, &config()).unwrap());
        assert!(!injected.contains('\u{feff}'));
    }

    #[test]
    fn deep_or_huge_documents_are_refused_before_parsing() {
        let deep = format!(
            "apiVersion: v1\nkind: ConfigMap\ndata: {}\n",
            "[".repeat(100_000)
        );
        let started = std::time::Instant::now();
        let err = inject_manifests(&format!("{DEPLOYMENT}---\n{deep}"), &config()).unwrap_err();
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert_eq!(
            err.to_string(),
            "document 2: line 3: nests more than 64 levels deep (`[`, `{` or indentation); accepted: at most 64 levels"
        );

        let huge = format!(
            "apiVersion: v1\nkind: ConfigMap\ndata: {{a: '{}'}}\n",
            "x".repeat(5 << 20)
        );
        let err = inject_manifests(&huge, &config()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "document 1: is {} bytes; accepted: at most 4194304 bytes (4 MiB)",
                huge.len()
            )
        );
    }

    #[test]
    fn documents_without_a_namespace_take_the_one_given() {
        let pod =
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: a}]}\n";
        assert_eq!(
            inject_manifests_in(pod, "kube-system", &config()).unwrap(),
            pod
        );
        assert_ne!(inject_manifests(pod, &config()).unwrap(), pod);
    }

    #[test]
    fn merge_keys_are_resolved_before_injection() {
        let input = "\
apiVersion: v1
kind: Pod
metadata: {name: p}
spec:
  containers:
  - &base {name: a, image: a:1}
  - <<: *base
    name: b
";
        let out = inject_manifests(input, &config()).unwrap();
        let pod: Pod = serde_yaml::from_str(&out).unwrap();
        let names: Vec<_> = pod
            .spec
            .unwrap()
            .containers
            .into_iter()
            .map(|c| (c.name, c.image))
            .collect();
        assert_eq!(
            names,
            [
                ("a".into(), Some("a:1".into())),
                ("b".into(), Some("a:1".into()))
            ]
        );
    }

    #[test]
    fn the_yaml_patch_reports_paths_that_do_not_exist() {
        let mut doc: Yaml = serde_yaml::from_str("a: [1]").unwrap();
        let patch: json_patch::Patch = serde_json::from_value(serde_json::json!([
            {"op": "add", "path": "/b/c", "value": 1}
        ]))
        .unwrap();
        assert!(apply_patch(&mut doc, &patch).is_err());
        let patch: json_patch::Patch = serde_json::from_value(serde_json::json!([
            {"op": "add", "path": "/a/1", "value": 2},
            {"op": "add", "path": "/a/-", "value": 3},
            {"op": "replace", "path": "/a/0", "value": 0},
            {"op": "remove", "path": "/a/1"},
        ]))
        .unwrap();
        apply_patch(&mut doc, &patch).unwrap();
        assert_eq!(serde_yaml::to_string(&doc).unwrap(), "a:\n- 0\n- 3\n");
        let patch: json_patch::Patch = serde_json::from_value(serde_json::json!([
            {"op": "add", "path": "/a/5", "value": 2}
        ]))
        .unwrap();
        assert!(apply_patch(&mut doc, &patch).is_err());
    }
}
