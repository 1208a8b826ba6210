//! Offline injection (`meshd inject -f`): the same [`inject`] over YAML
//! manifests, for GitOps pipelines and for reviewing what the webhook would
//! do.
//!
//! ```text
//! YAML ─split at `---`─> document ─┬─ Pod / a workload's pod template ─> inject() ─> patch applied ─> YAML (emit)
//!                                  ├─ kind: List ─> each item, as above
//!                                  └─ anything else, or skipped ─> as written (+ a warning if it looks like a workload)
//! ```
//!
//! Workloads are injected through their pod template (`spec.template`;
//! `spec.jobTemplate.spec.template` for a CronJob) in the workload's
//! namespace (`default` when it names none). The patch is applied to the
//! document itself, keeping its key order, and written by `emit` so
//! YAML 1.1 readers (kubectl) and YAML 1.2 readers agree on every value;
//! documents left alone are copied byte for byte, comments included.

use std::fmt;

use json_patch::PatchOperation;
use json_patch::jsonptr::Pointer;
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use serde_yaml::Value as Yaml;

use meshd_api::manifest::{self as limits, LimitError};

use crate::config::InjectorConfig;
use crate::inject::{InjectError, Injection, inject};

mod emit;

/// The namespace of a manifest that names none, as kubectl would use
/// without `-n`.
pub const DEFAULT_NAMESPACE: &str = "default";

// The causes are part of each message, not error sources: a caller
// printing the chain (anyhow's `{:#}`) would print them twice.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OfflineError {
    #[error("document {index}: not valid YAML: {problem}")]
    Yaml { index: usize, problem: String },
    /// Too large or too deeply nested to parse: refused up front, as the
    /// file registry refuses such a file.
    #[error("document {index}: {limit}")]
    Limits { index: usize, limit: LimitError },
    #[error("{at} ({object}): {problem}")]
    Invalid {
        at: Location,
        object: String,
        problem: String,
    },
    #[error("{at} ({object}): {error}")]
    Inject {
        at: Location,
        object: String,
        error: Box<InjectError>,
    },
}

/// Where an object is in the stream: its document, numbered from 1 (empty
/// ones not counted), and in a `kind: List` its item, from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub document: usize,
    pub item: Option<usize>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "document {}", self.document)?;
        match self.item {
            Some(item) => write!(f, ", item {item}"),
            None => Ok(()),
        }
    }
}

/// A workload that was left as written, and why: for the user to read
/// (`meshd inject` prints each on standard error), since the output alone
/// does not show what was passed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub at: Location,
    /// `<kind> <namespace>/<name>`.
    pub object: String,
    pub reason: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}): not injected: {}",
            self.at, self.object, self.reason
        )
    }
}

/// The injected stream and what was not injected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Injected {
    pub yaml: String,
    pub warnings: Vec<Warning>,
}

/// Where a kind keeps its pod: `(apiVersion, kind, pointer)`. Only the
/// versions Kubernetes serves (1.29 and later): a manifest in a removed
/// version (`extensions/v1beta1`, `apps/v1beta2` Deployments, `batch/v1beta1`
/// CronJobs) would be refused by the API server whatever its pod holds,
/// so it is reported, not injected.
const POD_HOLDERS: &[(&str, &str, &str)] = &[
    ("v1", "Pod", ""),
    ("v1", "ReplicationController", "/spec/template"),
    ("apps/v1", "Deployment", "/spec/template"),
    ("apps/v1", "StatefulSet", "/spec/template"),
    ("apps/v1", "DaemonSet", "/spec/template"),
    ("apps/v1", "ReplicaSet", "/spec/template"),
    ("batch/v1", "Job", "/spec/template"),
    ("batch/v1", "CronJob", "/spec/jobTemplate/spec/template"),
];

/// Where other resources that run pods keep their pod spec (Argo
/// Rollouts, Knative Services, OpenKruise CloneSets, ...): such a document
/// is reported, since only the webhook sees the pods it creates.
const POD_SPEC_SHAPES: &[&str] = &[
    "/spec/containers",
    "/spec/template/spec/containers",
    "/spec/jobTemplate/spec/template/spec/containers",
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
    inject_manifests_with_warnings(yaml, namespace, config).map(|injected| injected.yaml)
}

/// [`inject_manifests_in`], also saying which workloads were not injected
/// and why: skipped pods (opted out, host network, ...), kinds in the
/// wrong case, documents without `apiVersion`, versions Kubernetes no
/// longer serves, and other resources with a pod template.
pub fn inject_manifests_with_warnings(
    yaml: &str,
    namespace: &str,
    config: &InjectorConfig,
) -> Result<Injected, OfflineError> {
    let mut out: Vec<String> = Vec::new();
    let mut warnings = Vec::new();
    let mut index = 0;
    // Editors on Windows start files with a byte order mark; serde_yaml
    // would read a second document into it.
    for text in split_documents(limits::strip_bom(yaml)) {
        if text.trim().is_empty() {
            continue;
        }
        // The parser's time grows with the square of the nesting depth:
        // refuse what no manifest needs before it gets there.
        limits::check(&text).map_err(|limit| OfflineError::Limits {
            index: index + 1,
            limit,
        })?;
        let mut parsed: Yaml = serde_yaml::from_str(&text).map_err(|e| OfflineError::Yaml {
            index: index + 1,
            problem: e.to_string(),
        })?;
        if parsed.is_null() {
            // Only comments: keep them where they were.
            out.push(text);
            continue;
        }
        index += 1;
        let at = Location {
            document: index,
            item: None,
        };
        match inject_value(&mut parsed, at, namespace, config, &mut warnings)? {
            true => out.push(emit::to_string(&parsed)),
            false => out.push(text),
        }
    }
    let yaml = out
        .into_iter()
        .map(|mut d| {
            if !d.ends_with('\n') {
                d.push('\n');
            }
            d
        })
        .collect::<Vec<_>>()
        .join("---\n");
    Ok(Injected { yaml, warnings })
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

fn str_at(doc: &Yaml, keys: &[&str]) -> Option<String> {
    let mut v = doc;
    for k in keys {
        v = v.get(k)?;
    }
    v.as_str().map(String::from)
}

/// Injects one document, or each item of a list (`kind: List`, what
/// `kubectl get -o yaml` prints, or a typed `DeploymentList` whose items
/// name no kind); `true` when something changed.
fn inject_value(
    doc: &mut Yaml,
    at: Location,
    default_namespace: &str,
    config: &InjectorConfig,
    warnings: &mut Vec<Warning>,
) -> Result<bool, OfflineError> {
    let api_version = str_at(doc, &["apiVersion"]);
    let kind = str_at(doc, &["kind"]);
    let item_kind = match kind.as_deref() {
        Some("List") => None,
        Some(kind) => match kind.strip_suffix("List") {
            Some(item) if !item.is_empty() => Some(item.to_string()),
            _ => {
                return inject_object(
                    doc,
                    at,
                    api_version,
                    kind.to_string().into(),
                    default_namespace,
                    config,
                    warnings,
                );
            }
        },
        None => {
            return inject_object(
                doc,
                at,
                api_version,
                None,
                default_namespace,
                config,
                warnings,
            );
        }
    };
    let Some(Yaml::Sequence(items)) = doc.get_mut("items") else {
        return inject_object(
            doc,
            at,
            api_version,
            kind,
            default_namespace,
            config,
            warnings,
        );
    };
    let mut changed = false;
    for (i, item) in items.iter_mut().enumerate() {
        let at = Location {
            document: at.document,
            item: Some(i + 1),
        };
        // Items of a typed list inherit its group, version and kind.
        let (item_api_version, kind) = match &item_kind {
            Some(kind) => (
                str_at(item, &["apiVersion"]).or_else(|| api_version.clone()),
                str_at(item, &["kind"]).or_else(|| Some(kind.clone())),
            ),
            None => (str_at(item, &["apiVersion"]), str_at(item, &["kind"])),
        };
        changed |= inject_object(
            item,
            at,
            item_api_version,
            kind,
            default_namespace,
            config,
            warnings,
        )?;
    }
    Ok(changed)
}

/// Where the object keeps the pod to inject, or why it is not injected
/// (`None`: it is not a workload at all).
fn pod_pointer(
    api_version: Option<&str>,
    kind: Option<&str>,
    doc: &Yaml,
) -> Result<&'static str, Option<String>> {
    if let Some(&(_, _, pointer)) = POD_HOLDERS
        .iter()
        .find(|(v, k, _)| Some(*v) == api_version && Some(*k) == kind)
    {
        return Ok(pointer);
    }
    let holder = |matches: &dyn Fn(&str) -> bool| POD_HOLDERS.iter().find(|(_, k, _)| matches(k));
    let has_pod_spec = POD_SPEC_SHAPES.iter().find(|p| {
        p.split('/')
            .skip(1)
            .try_fold(doc, |v, key| v.get(key))
            .is_some_and(Yaml::is_sequence)
    });
    let kind_and_version = || {
        format!(
            "{} {}",
            api_version.unwrap_or("(no apiVersion)"),
            kind.unwrap_or("(no kind)")
        )
    };
    if let Some((expected, kind, _)) = holder(&|k| Some(k) == kind) {
        let group = |v: &str| v.rsplit_once('/').map_or("", |(g, _)| g).to_string();
        let expected_group = group(expected);
        return Err(Some(match api_version {
            None => format!("it has no apiVersion; accepted: {expected} for a {kind}"),
            // The same group in another version: one Kubernetes served once.
            Some(v) if group(v) == expected_group || group(v) == "extensions" => format!(
                "apiVersion {v} is no longer served by Kubernetes (meshd supports 1.29 and later); accepted: {expected} for a {kind}"
            ),
            Some(v) => match has_pod_spec {
                Some(_) => format!(
                    "{v} {kind} is not Kubernetes' {kind} ({expected}); the webhook injects the pods it creates"
                ),
                None => return Err(None),
            },
        }));
    }
    if let Some((expected, holder, _)) =
        holder(&|k| kind.is_some_and(|kind| k.eq_ignore_ascii_case(kind)))
    {
        return Err(Some(format!(
            "kind `{}` is not a Kubernetes kind (kinds are case-sensitive); accepted: {holder} ({expected})",
            kind.unwrap_or_default()
        )));
    }
    match has_pod_spec {
        Some(pointer) => Err(Some(format!(
            "{} has a pod spec at {} but is not a kind meshd injects offline (accepted: {}); the webhook injects the pods it creates",
            kind_and_version(),
            pointer.trim_start_matches('/').replace('/', "."),
            POD_HOLDERS
                .iter()
                .map(|(v, k, _)| format!("{v} {k}"))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
        None => Err(None),
    }
}

/// Injects one object: `true` when it changed, `false` to keep it as
/// written (with a warning when it looks like a workload).
fn inject_object(
    doc: &mut Yaml,
    at: Location,
    api_version: Option<String>,
    kind: Option<String>,
    default_namespace: &str,
    config: &InjectorConfig,
    warnings: &mut Vec<Warning>,
) -> Result<bool, OfflineError> {
    let namespace =
        str_at(doc, &["metadata", "namespace"]).unwrap_or_else(|| default_namespace.to_string());
    let name = str_at(doc, &["metadata", "name"])
        .or_else(|| str_at(doc, &["metadata", "generateName"]).map(|g| format!("{g}*")))
        .unwrap_or_else(|| "(no name)".into());
    let object = format!(
        "{} {namespace}/{name}",
        kind.as_deref().unwrap_or("(no kind)")
    );
    let pointer = match pod_pointer(api_version.as_deref(), kind.as_deref(), doc) {
        Ok(pointer) => pointer,
        Err(reason) => {
            if let Some(reason) = reason {
                warnings.push(Warning { at, object, reason });
            }
            return Ok(false);
        }
    };
    let invalid = |problem: String| OfflineError::Invalid {
        at,
        object: object.clone(),
        problem,
    };

    // Anchors and merge keys as kubectl resolves them.
    doc.apply_merge()
        .map_err(|e| invalid(format!("YAML merge keys cannot be resolved: {e}")))?;
    let mut json = serde_json::to_value(&*doc)
        .map_err(|e| invalid(format!("not representable as JSON: {e}")))?;
    let field = pointer.trim_start_matches('/').replace('/', ".");
    let target = pointer
        .split('/')
        .skip(1)
        .try_fold(&mut *doc, |v, key| v.get_mut(key))
        .filter(|t| !t.is_null());
    let template = json.pointer_mut(pointer).filter(|t| !t.is_null());
    let (Some(target), Some(template)) = (target, template) else {
        return Err(invalid(format!(
            "{field} is missing; accepted: a pod template"
        )));
    };
    let pod = if pointer.is_empty() {
        read_as_kubectl::<Pod>(target, template, "").map_err(invalid)?
    } else {
        let template =
            read_as_kubectl::<PodTemplateSpec>(target, template, &field).map_err(invalid)?;
        let mut metadata = template.metadata.unwrap_or_default();
        // The template's pods will be the workload's: name it their
        // controller, so the injector names their workload after it (a
        // pod template has no name of its own).
        if let (None, Some(kind), Some(name)) = (
            &metadata.owner_references,
            json.get("kind").and_then(|k| k.as_str()),
            json.pointer("/metadata/name").and_then(|n| n.as_str()),
        ) {
            metadata.owner_references = Some(vec![
                k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                    kind: kind.to_string(),
                    name: name.to_string(),
                    controller: Some(true),
                    ..Default::default()
                },
            ]);
        }
        Pod {
            metadata,
            spec: template.spec,
            status: None,
        }
    };
    let patch = match inject(&pod, &namespace, config) {
        Ok(Injection::Skipped(skip)) => {
            warnings.push(Warning {
                at,
                object,
                reason: skip.to_string(),
            });
            return Ok(false);
        }
        Ok(Injection::Patched { patch, .. }) => patch,
        Err(error) => {
            return Err(OfflineError::Inject {
                at,
                object,
                error: Box::new(error),
            });
        }
    };
    if let Yaml::Mapping(m) = target
        && !m.get("metadata").is_some_and(Yaml::is_mapping)
    {
        // The patch adds labels and annotations under metadata.
        m.insert("metadata".into(), Yaml::Mapping(Default::default()));
    }
    apply_patch(target, &patch)
        .map_err(|e| invalid(format!("the injection patch does not apply: {e}")))?;
    Ok(true)
}

/// Reads `T` from `json` (`yaml` as JSON) as kubectl reads YAML 1.1:
/// where a field wants a number or a boolean and holds a string that YAML
/// 1.1 reads as one (`defaultMode: 0755` is 493 to kubectl; `1_000`,
/// `0b101`, `yes`, `off`), the value is taken as that number or boolean,
/// in `yaml` too, so the output carries it as such (`defaultMode: 493`).
/// serde_yaml, a YAML 1.2 reader, keeps these as strings.
///
/// Only where the type asks for it, so `args: ["no"]` stays a string. A
/// quoted `'0755'` cannot be told from a plain one once parsed, so it is
/// taken as 493 too, where kubectl would refuse it.
fn read_as_kubectl<T: serde::de::DeserializeOwned>(
    yaml: &mut Yaml,
    json: &mut serde_json::Value,
    prefix: &str,
) -> Result<T, String> {
    let mut coerced: Vec<(String, serde_json::Value)> = Vec::new();
    loop {
        let error = match serde_path_to_error::deserialize::<_, T>(&*json) {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        let pointer = json_pointer(error.path());
        if let Some(pointer) = pointer
            && !coerced.iter().any(|(p, _)| *p == pointer)
            && let Some(serde_json::Value::String(text)) = json.pointer(&pointer)
            && let Some(value) = yaml11_scalar(text)
            && let Ok(as_yaml) = serde_yaml::to_value(&value)
            && let Some(node) = yaml_at(yaml, &pointer)
            && let Some(slot) = json.pointer_mut(&pointer)
        {
            *node = as_yaml;
            let original = std::mem::replace(slot, value);
            coerced.push((pointer, original));
            continue;
        }
        // A coerced value the type refuses too: report the value as written.
        if let Some(pointer) = json_pointer(error.path())
            && let Some((_, original)) = coerced.iter().find(|(p, _)| *p == pointer)
            && let Some(slot) = json.pointer_mut(&pointer)
        {
            *slot = original.clone();
            if let Err(error) = serde_path_to_error::deserialize::<_, T>(&*json) {
                return Err(path_error(error, prefix));
            }
        }
        return Err(path_error(error, prefix));
    }
}

/// The JSON pointer of a deserialisation error's path.
fn json_pointer(path: &serde_path_to_error::Path) -> Option<String> {
    use serde_path_to_error::Segment;
    let mut pointer = String::new();
    for segment in path.iter() {
        pointer.push('/');
        match segment {
            Segment::Seq { index } => pointer.push_str(&index.to_string()),
            Segment::Map { key } => pointer.push_str(&key.replace('~', "~0").replace('/', "~1")),
            Segment::Enum { .. } | Segment::Unknown => return None,
        }
    }
    Some(pointer)
}

fn yaml_at<'a>(mut node: &'a mut Yaml, pointer: &str) -> Option<&'a mut Yaml> {
    for token in pointer.split('/').skip(1) {
        let key = token.replace("~1", "/").replace("~0", "~");
        node = match node {
            Yaml::Mapping(m) => m.get_mut(key.as_str())?,
            Yaml::Sequence(s) => s.get_mut(key.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(node)
}

/// A plain scalar's value as kubectl's YAML reader (go-yaml v2, YAML 1.1)
/// resolves it, when that is a boolean or an integer. Integers: `_`
/// ignored, then an optional sign and `0x`, `0o`, `0b` or a leading `0`
/// (octal) for the base.
fn yaml11_scalar(text: &str) -> Option<serde_json::Value> {
    match text {
        "y" | "Y" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" => return Some(true.into()),
        "n" | "N" | "no" | "No" | "NO" | "off" | "Off" | "OFF" => return Some(false.into()),
        _ => {}
    }
    let digits = text.replace('_', "");
    let (negative, unsigned) = match digits.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, digits.strip_prefix('+').unwrap_or(&digits)),
    };
    let lower = unsigned.to_ascii_lowercase();
    let (radix, digits) = if let Some(hex) = lower.strip_prefix("0x") {
        (16, hex)
    } else if let Some(octal) = lower.strip_prefix("0o") {
        (8, octal)
    } else if let Some(binary) = lower.strip_prefix("0b") {
        (2, binary)
    } else if lower.len() > 1
        && let Some(octal) = lower.strip_prefix('0')
    {
        (8, octal)
    } else {
        (10, lower.as_str())
    };
    // from_str_radix would take a second sign.
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let magnitude = i128::from_str_radix(digits, radix).ok()?;
    let value = i64::try_from(if negative { -magnitude } else { magnitude }).ok()?;
    Some(value.into())
}

/// A deserialisation error with the path of the offending field.
fn path_error(error: serde_path_to_error::Error<serde_json::Error>, prefix: &str) -> String {
    let path = error.path().to_string();
    let path = match (prefix.is_empty(), path.as_str()) {
        (_, ".") => prefix.to_string(),
        (true, _) => path,
        (false, _) => format!("{prefix}.{path}"),
    };
    format!("{path}: {}", error.into_inner())
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
        // But for the workload's name: offline, the Deployment names it;
        // the webhook, seeing only a pod, reads it off the pod's name.
        expected["spec"]["template"]["metadata"]["annotations"]["meshd.io/workload"] = "web".into();
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

    /// Argo CD's redis, and every other string a YAML 1.1 reader (kubectl)
    /// would take for a boolean, null, number or timestamp.
    const TRICKY: &[&str] = &[
        "no",
        "yes",
        "on",
        "off",
        "y",
        "n",
        "Y",
        "NO",
        "True",
        "~",
        "null",
        "",
        "=",
        "<<",
        "1_000",
        "12:30",
        "1:30.5",
        "0755",
        "0x1F",
        "0b101",
        "1e3",
        "+1",
        ".5",
        ".inf",
        "2.3.1",
        "2001-12-14",
        "2001-12-14t21:59:43.10-05:00",
    ];

    fn tricky_deployment() -> String {
        let quoted = |s: &&str| format!("\"{s}\"");
        let args: Vec<String> = TRICKY.iter().map(quoted).collect();
        let env: Vec<String> = TRICKY
            .iter()
            .enumerate()
            .map(|(i, s)| format!("{{name: V{i}, value: {}}}", quoted(s)))
            .collect();
        format!(
            "\
apiVersion: apps/v1
kind: Deployment
metadata: {{name: argocd-redis, namespace: argocd}}
spec:
  selector: {{matchLabels: {{app: redis}}}}
  template:
    metadata:
      labels: {{app: redis, \"on\": \"yes\"}}
    spec:
      containers:
      - name: redis
        image: redis:7.0.15-alpine
        args: [\"--save\", \"\", \"--appendonly\", \"no\", {}]
        env: [{}]
        ports: [{{containerPort: 6379}}]
        readinessProbe: {{tcpSocket: {{port: 6379}}, initialDelaySeconds: 5}}
        securityContext: {{readOnlyRootFilesystem: true}}
",
            args.join(", "),
            env.join(", ")
        )
    }

    /// The plain (unquoted, not block) scalars of block-style output
    /// written as this module writes it: keys and values.
    fn plain_scalars(yaml: &str) -> Vec<String> {
        let mut scalars = Vec::new();
        let mut block_indent: Option<usize> = None;
        for line in yaml.lines() {
            let indent = line.len() - line.trim_start().len();
            if let Some(block) = block_indent {
                if line.trim().is_empty() || indent > block {
                    continue;
                }
                block_indent = None;
            }
            let mut rest = line.trim_start();
            let mut column = indent;
            while let Some(r) = rest.strip_prefix("- ") {
                rest = r;
                column += 2;
            }
            let value = match rest
                .split_once(": ")
                .or(rest.strip_suffix(':').map(|k| (k, "")))
            {
                Some((key, value)) if !key.starts_with(['\'', '"', '[', '{']) => {
                    scalars.push(key.to_string());
                    value
                }
                _ => rest,
            };
            if value.starts_with('|') {
                block_indent = Some(column);
            } else if !value.is_empty() && !value.starts_with(['\'', '"', '[', '{']) {
                scalars.push(value.to_string());
            }
        }
        scalars
    }

    /// Whether YAML 1.1 (yaml.org/type: bool, null, int, float, merge,
    /// value, timestamp; and kubectl's go-yaml v2) resolves the plain
    /// scalar `s` to something other than a string. Written from the 1.1
    /// type definitions, apart from the writer's own rule.
    fn yaml_1_1_non_string(s: &str) -> bool {
        let all = |s: &str, f: &dyn Fn(char) -> bool| !s.is_empty() && s.chars().all(f);
        let dec = |c: char| c.is_ascii_digit() || c == '_';
        let words = "y Y yes Yes YES n N no No NO true True TRUE false False FALSE on On ON off Off OFF ~ null Null NULL << =";
        if s.is_empty() || words.split(' ').any(|w| w == s) {
            return true;
        }
        let u = s.strip_prefix(['-', '+']).unwrap_or(s);
        let sexagesimal = |u: &str| {
            let mut parts = u.split(':');
            let head = parts.next().unwrap_or_default();
            u.contains(':')
                && head.starts_with(|c: char| ('1'..='9').contains(&c))
                && all(head, &dec)
                && parts.all(|p| {
                    (1..=2).contains(&p.len())
                        && all(p, &|c| c.is_ascii_digit())
                        && (p.len() == 1 || p.as_bytes()[0] <= b'5')
                })
        };
        let int = u
            .strip_prefix("0b")
            .is_some_and(|r| all(r, &|c| "01_".contains(c)))
            || u.strip_prefix("0x")
                .is_some_and(|r| all(r, &|c| c.is_ascii_hexdigit() || c == '_'))
            || u.strip_prefix('0')
                .is_some_and(|r| r.is_empty() || all(r, &|c| ('0'..='7').contains(&c) || c == '_'))
            || (u.starts_with(|c: char| ('1'..='9').contains(&c)) && all(u, &dec))
            || sexagesimal(u);
        let float = {
            let (mantissa, exponent) = match u.find(['e', 'E']) {
                Some(i) => (&u[..i], Some(&u[i + 1..])),
                None => (u, None),
            };
            let exponent_ok = exponent.is_none_or(|e| {
                e.strip_prefix(['-', '+'])
                    .is_some_and(|d| all(d, &|c| c.is_ascii_digit()))
            });
            let decimal = mantissa.split_once('.').is_some_and(|(whole, fraction)| {
                (whole.is_empty()
                    || (whole.starts_with(|c: char| c.is_ascii_digit()) && all(whole, &dec)))
                    && fraction.chars().all(|c| c.is_ascii_digit() || c == '.')
            });
            let sexagesimal_float = u
                .split_once('.')
                .is_some_and(|(whole, fraction)| sexagesimal(whole) && fraction.chars().all(dec));
            // kubectl's go-yaml v2 also takes digits with an exponent and no
            // dot (1e3) for a float.
            let go_yaml = exponent.is_some_and(|e| {
                all(e.strip_prefix(['-', '+']).unwrap_or(e), &|c| {
                    c.is_ascii_digit()
                })
            }) && all(mantissa, &|c| c.is_ascii_digit());
            (decimal && exponent_ok)
                || go_yaml
                || sexagesimal_float
                || [".inf", ".Inf", ".INF", ".nan", ".NaN", ".NAN"].contains(&u)
        };
        let b = s.as_bytes();
        let timestamp = b.len() >= 8
            && b[..4].iter().all(u8::is_ascii_digit)
            && b[4] == b'-'
            && s[5..].starts_with(|c: char| c.is_ascii_digit())
            && s[5..]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || " \t-:.+".contains(c));
        int || float || timestamp
    }

    #[test]
    fn the_oracle_knows_yaml_1_1() {
        for s in [
            "no",
            "0755",
            "0x1F",
            "1_000",
            "12:30",
            "1:30.5",
            "1e+3",
            "1e3",
            "2.3.1",
            "=",
            "2001-12-14",
        ] {
            assert!(yaml_1_1_non_string(s), "{s}");
        }
        for s in [
            "nope",
            "64Mi",
            "7d9f8b6c5",
            "12:60",
            "v1.2",
            "--save",
            "redis",
        ] {
            assert!(!yaml_1_1_non_string(s), "{s}");
        }
    }

    /// Issue #11 D.1.
    #[test]
    fn every_string_stays_a_string_for_yaml_1_1_and_1_2_readers() {
        let input = tricky_deployment();
        let out = inject_manifests(&input, &config()).unwrap();
        assert!(out.contains("meshd.io/status"), "{out}");
        // A YAML 1.2 reader reads the same strings back.
        let doc: serde_json::Value = serde_yaml::from_str(&out).unwrap();
        let container = &doc["spec"]["template"]["spec"]["containers"][0];
        let args: Vec<&str> = container["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().expect("every arg a string"))
            .collect();
        assert_eq!(args[..4], ["--save", "", "--appendonly", "no"]);
        assert_eq!(args[4..], *TRICKY);
        for (i, s) in TRICKY.iter().enumerate() {
            assert_eq!(container["env"][i]["value"], *s, "{out}");
            // Each comes out quoted.
            assert!(
                out.contains(&format!("- '{s}'\n")),
                "{s:?} not quoted in:\n{out}"
            );
        }
        assert_eq!(doc["spec"]["template"]["metadata"]["labels"]["on"], "yes");
        // A YAML 1.1 reader takes no plain scalar for another type than a
        // YAML 1.2 reader does: strings stay strings, numbers numbers.
        let plain = plain_scalars(&out);
        assert!(
            plain.contains(&"redis:7.0.15-alpine".to_string()),
            "{plain:?}"
        );
        for scalar in plain {
            let as_1_2: Yaml = serde_yaml::from_str(&scalar).unwrap();
            assert_eq!(
                as_1_2.is_string(),
                !yaml_1_1_non_string(&scalar),
                "`{scalar}` is read as different types by YAML 1.1 and 1.2 in:\n{out}"
            );
        }
    }

    /// Issue #11 D.2.
    #[test]
    fn yaml_1_1_numbers_and_booleans_are_read_where_kubernetes_wants_them() {
        let input = "\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  selector: {matchLabels: {app: web}}
  template:
    spec:
      automountServiceAccountToken: no
      terminationGracePeriodSeconds: 1_0
      containers: [{name: web, image: web:1, args: [\"0755\"]}]
      volumes:
      - name: config
        secret:
          secretName: web
          defaultMode: 0755
          items: [{key: a, path: a, mode: 0644}]
      - name: tokens
        projected: {defaultMode: 0o440, sources: [{serviceAccountToken: {path: t, expirationSeconds: 0x1C20}}]}
";
        let out = inject_manifests(input, &config()).unwrap();
        let doc: serde_json::Value = serde_yaml::from_str(&out).unwrap();
        let spec = &doc["spec"]["template"]["spec"];
        assert_eq!(spec["volumes"][0]["secret"]["defaultMode"], 493);
        assert_eq!(spec["volumes"][0]["secret"]["items"][0]["mode"], 420);
        assert_eq!(spec["volumes"][1]["projected"]["defaultMode"], 288);
        assert_eq!(
            spec["volumes"][1]["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"],
            7200
        );
        assert_eq!(spec["automountServiceAccountToken"], false);
        assert_eq!(spec["terminationGracePeriodSeconds"], 10);
        // Written as decimal numbers; a string field keeps its string.
        assert!(out.contains("defaultMode: 493\n"), "{out}");
        assert_eq!(spec["containers"][0]["args"][0], "0755");

        // What YAML 1.1 does not read as the field's type is still refused,
        // with the value as written.
        for (value, expected) in [("yes", "string \"yes\""), ("0789", "string \"0789\"")] {
            let bad = input.replace("defaultMode: 0755", &format!("defaultMode: {value}"));
            let err = inject_manifests(&bad, &config()).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!(
                    "document 1 (Deployment default/web): spec.template.spec.volumes[0].secret.defaultMode: invalid type: {expected}, expected i32"
                )),
                "{err}"
            );
        }
    }

    /// Issue #11 D.3.
    #[test]
    fn a_lists_items_are_injected() {
        let list = format!(
            "apiVersion: v1\nkind: List\nmetadata: {{resourceVersion: ''}}\nitems:\n- {}\n- {{apiVersion: v1, kind: Service, metadata: {{name: web}}}}\n",
            serde_json::to_string(&serde_yaml::from_str::<serde_json::Value>(DEPLOYMENT).unwrap())
                .unwrap()
        );
        let injected = inject_manifests_with_warnings(&list, "default", &config()).unwrap();
        assert_eq!(injected.warnings, []);
        let doc: serde_json::Value = serde_yaml::from_str(&injected.yaml).unwrap();
        assert_eq!(doc["kind"], "List");
        let alone: serde_json::Value =
            serde_yaml::from_str(&inject_manifests(DEPLOYMENT, &config()).unwrap()).unwrap();
        assert_eq!(doc["items"][0], alone);
        assert_eq!(doc["items"][1]["kind"], "Service");

        // A typed list's items name no kind: they are the list's.
        let typed = "apiVersion: apps/v1\nkind: DeploymentList\nitems:\n- metadata: {name: a}\n  spec: {template: {spec: {containers: [{name: a}]}}}\n";
        let out = inject_manifests(typed, &config()).unwrap();
        assert!(out.contains("meshd.io/status"), "{out}");

        // Errors name the item.
        let bad = list.replace("loud", "x").replace(
            "\"labels\":{\"app\":\"web\"}}",
            "\"labels\":{\"app\":\"web\"},\"annotations\":{\"meshd.io/log-level\":\"loud\"}}",
        );
        let err = inject_manifests(&bad, &config()).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "document 1, item 1 (Deployment shop/web): annotation meshd.io/log-level"
            ),
            "{err}"
        );
    }

    /// Issue #11 D.3.
    #[test]
    fn workloads_left_alone_are_reported() {
        let input = "\
apiVersion: v1
kind: pod
metadata: {name: lower}
spec: {containers: [{name: a}]}
---
kind: Pod
metadata: {name: versionless, namespace: shop}
spec: {containers: [{name: a}]}
---
apiVersion: extensions/v1beta1
kind: Deployment
metadata: {name: old}
spec: {template: {spec: {containers: [{name: a}]}}}
---
apiVersion: apps/v1beta2
kind: StatefulSet
metadata: {name: db}
spec: {template: {spec: {containers: [{name: a}]}}}
---
apiVersion: batch/v1beta1
kind: CronJob
metadata: {name: nightly}
spec: {jobTemplate: {spec: {template: {spec: {containers: [{name: a}]}}}}}
---
apiVersion: argoproj.io/v1alpha1
kind: Rollout
metadata: {name: canary}
spec: {template: {spec: {containers: [{name: a}]}}}
---
apiVersion: v1
kind: Pod
metadata: {name: host}
spec: {hostNetwork: true, containers: [{name: a}]}
---
apiVersion: v1
kind: Service
metadata: {name: web}
---
apiVersion: example.com/v1
kind: Deployment
metadata: {name: not-apps}
";
        let injected = inject_manifests_with_warnings(input, "default", &config()).unwrap();
        // All as written.
        assert_eq!(injected.yaml, input);
        let warnings: Vec<String> = injected.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(
            warnings,
            [
                "document 1 (pod default/lower): not injected: kind `pod` is not a Kubernetes kind (kinds are case-sensitive); accepted: Pod (v1)",
                "document 2 (Pod shop/versionless): not injected: it has no apiVersion; accepted: v1 for a Pod",
                "document 3 (Deployment default/old): not injected: apiVersion extensions/v1beta1 is no longer served by Kubernetes (meshd supports 1.29 and later); accepted: apps/v1 for a Deployment",
                "document 4 (StatefulSet default/db): not injected: apiVersion apps/v1beta2 is no longer served by Kubernetes (meshd supports 1.29 and later); accepted: apps/v1 for a StatefulSet",
                "document 5 (CronJob default/nightly): not injected: apiVersion batch/v1beta1 is no longer served by Kubernetes (meshd supports 1.29 and later); accepted: batch/v1 for a CronJob",
                "document 6 (Rollout default/canary): not injected: argoproj.io/v1alpha1 Rollout has a pod spec at spec.template.spec.containers but is not a kind meshd injects offline (accepted: v1 Pod, v1 ReplicationController, apps/v1 Deployment, apps/v1 StatefulSet, apps/v1 DaemonSet, apps/v1 ReplicaSet, batch/v1 Job, batch/v1 CronJob); the webhook injects the pods it creates",
                "document 7 (Pod default/host): not injected: uses the host network (spec.hostNetwork)",
            ]
        );
    }

    /// Issue #11 D.6: a caller printing the error with its causes
    /// (anyhow's `{:#}`) printed the cause twice.
    #[test]
    fn errors_carry_their_cause_in_the_message_only() {
        use std::error::Error;
        let bad_annotation = DEPLOYMENT.replace(
            "      labels: {app: web}\n",
            "      labels: {app: web}\n      annotations: {meshd.io/log-level: loud}\n",
        );
        let deep = format!("data: {}\n", "[".repeat(100));
        for input in [bad_annotation.as_str(), deep.as_str(), "a: [\n"] {
            let err = inject_manifests(input, &config()).unwrap_err();
            assert!(
                err.source().is_none(),
                "{err}: has a source {:?}",
                err.source()
            );
        }
    }
}
