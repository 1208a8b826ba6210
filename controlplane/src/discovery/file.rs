//! The file registry: a directory of Kubernetes-shaped YAML manifests
//! (Namespace, Service, EndpointSlice, Pod) standing in for a cluster.
//!
//! ```text
//! *.yaml ──parse──> objects per file ──merge──> Index ──> Mesh ──watch──> xDS
//!            │ (error: keep that file's last good objects, report it)
//! ```
//!
//! Each file is parsed on its own. A file with any error keeps serving the
//! objects of its last good version, and the error (file, object, field,
//! what is accepted) is logged and kept for the debug endpoint until the file
//! is fixed. Nothing is dropped without a message.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::{mpsc, watch};

use super::index::Index;
use super::objects::{self, ACCEPTED_KINDS, Object, ObjectRef};
use crate::model::Mesh;

/// The registry the `meshd run` uses when given no directory: the two
/// workloads of the local demo, on loopback.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../registry/default.yaml");
const EMBEDDED_NAME: &str = "<embedded default registry>";

/// A problem with one registry file.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, thiserror::Error)]
#[error("{file}: {message}")]
pub struct FileError {
    pub file: String,
    pub message: String,
}

#[derive(Debug, Default)]
struct FileState {
    /// The objects of the last version of the file that parsed cleanly.
    good: Vec<Object>,
    errors: Vec<String>,
}

/// Registry files and what each last contributed.
#[derive(Debug, Default)]
pub struct FileRegistry {
    dir: Option<PathBuf>,
    files: BTreeMap<String, FileState>,
}

/// The outcome of a (re)load: the mesh to serve and every current problem.
#[derive(Debug)]
pub struct Load {
    pub mesh: Mesh,
    pub errors: Vec<FileError>,
}

impl FileRegistry {
    /// A registry over a directory; call [`FileRegistry::load`] to read it.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: Some(dir.into()),
            files: BTreeMap::new(),
        }
    }

    /// The registry compiled into the binary.
    pub fn embedded() -> Self {
        let mut registry = Self::default();
        registry.update_file(EMBEDDED_NAME.to_string(), Ok(EMBEDDED_DEFAULT.to_string()));
        registry
    }

    /// Rereads the directory (if any) and merges every file's objects.
    pub fn load(&mut self) -> Load {
        if let Some(dir) = self.dir.clone() {
            self.rescan(&dir);
        }
        self.merge()
    }

    fn rescan(&mut self, dir: &Path) {
        let listing = match std::fs::read_dir(dir) {
            Ok(listing) => listing,
            Err(e) => {
                // Keep serving everything we had: a directory that vanished
                // for a moment (a ConfigMap symlink swap) is not an empty mesh.
                let state = self.files.entry(dir.display().to_string()).or_default();
                state.errors = vec![format!("cannot read the registry directory: {e}")];
                return;
            }
        };
        self.files.remove(&dir.display().to_string());
        let mut present = Vec::new();
        for entry in listing.flatten() {
            let path = entry.path();
            if !is_manifest(&path) {
                continue;
            }
            let name = path.display().to_string();
            let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read: {e}"));
            self.update_file(name.clone(), text);
            present.push(name);
        }
        // A deleted file takes its objects with it: deleting is how users
        // remove things from the registry.
        self.files.retain(|name, _| present.contains(name));
    }

    fn update_file(&mut self, name: String, text: Result<String, String>) {
        let state = self.files.entry(name).or_default();
        match text.and_then(|t| parse(&t).map_err(|errs| errs.join("; "))) {
            Ok(objects) => {
                state.good = objects;
                state.errors.clear();
            }
            Err(message) => state.errors = vec![message],
        }
    }

    fn merge(&self) -> Load {
        let mut index = Index::default();
        let mut seen: HashMap<ObjectRef, &str> = HashMap::new();
        let mut errors: Vec<FileError> = Vec::new();
        for (file, state) in &self.files {
            for message in &state.errors {
                let kept = if state.good.is_empty() {
                    "nothing from this file is served"
                } else {
                    "its last good version keeps serving"
                };
                errors.push(FileError {
                    file: file.clone(),
                    message: format!("{message} ({kept})"),
                });
            }
            for object in &state.good {
                let id = object.object_ref();
                if let Some(first) = seen.get(&id) {
                    errors.push(FileError {
                        file: file.clone(),
                        message: format!(
                            "duplicate {id}: already defined in {first}; this copy is ignored"
                        ),
                    });
                    continue;
                }
                if let Object::Service(svc) = object
                    && let Some((vip, owner)) = svc
                        .vips()
                        .find_map(|vip| Some((vip, index.service_with_vip(vip)?)))
                {
                    let field = if svc.vip == Some(vip) {
                        "spec.clusterIP"
                    } else {
                        "spec.clusterIPs"
                    };
                    errors.push(FileError {
                        file: file.clone(),
                        message: format!(
                            "{id}: {field}: {vip} is already the address of Service {owner}; each service needs its own cluster IPs, this service is ignored"
                        ),
                    });
                    continue;
                }
                seen.insert(id, file);
                index.apply(object.clone());
            }
        }
        Load {
            mesh: index.mesh(),
            errors,
        }
    }
}

fn is_manifest(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_none_or(|n| n.starts_with('.'));
    let yaml = matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    );
    path.is_file() && yaml && !hidden
}

/// Parses one multi-document YAML file. Every problem in the file is
/// reported, not just the first.
pub fn parse(text: &str) -> Result<Vec<Object>, Vec<String>> {
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    for (i, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let doc = i + 1;
        let value = match serde_yaml::Value::deserialize(document) {
            Ok(serde_yaml::Value::Null) => continue,
            Ok(value) => value,
            Err(e) => {
                errors.push(format!("document {doc}: invalid YAML: {e}"));
                // The parser cannot resynchronise after a syntax error.
                break;
            }
        };
        match parse_object(value) {
            Ok(object) => objects.push(object),
            Err(e) => errors.push(format!("document {doc}: {e}")),
        }
    }
    if errors.is_empty() {
        Ok(objects)
    } else {
        Err(errors)
    }
}

fn parse_object(value: serde_yaml::Value) -> Result<Object, String> {
    let field = |name: &str| value.get(name).and_then(|v| v.as_str()).map(str::to_owned);
    let api_version = field("apiVersion").ok_or("apiVersion: is required")?;
    let kind = field("kind").ok_or("kind: is required")?;
    let name = value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(|n| n.as_str())
        .unwrap_or("<unnamed>")
        .to_string();
    match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace") => decode_as(value, &kind, &name, Object::from_namespace),
        ("v1", "Service") => decode_as(value, &kind, &name, Object::from_service),
        ("v1", "Pod") => decode_as(value, &kind, &name, Object::from_pod),
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            decode_as(value, &kind, &name, Object::from_endpoint_slice)
        }
        _ => Err(format!(
            "{kind} {name}: unsupported kind `{api_version} {kind}`; accepted: {ACCEPTED_KINDS}"
        )),
    }
}

/// Decodes `value` as `K`, naming the path of a bad field, then validates
/// it into the model.
fn decode_as<K: serde::de::DeserializeOwned>(
    value: serde_yaml::Value,
    kind: &str,
    name: &str,
    convert: fn(&K) -> Result<Object, objects::ObjectError>,
) -> Result<Object, String> {
    let typed: K = serde_path_to_error::deserialize(value)
        .map_err(|e| format!("{kind} {name}: {}: {}", e.path(), e.inner()))?;
    convert(&typed).map_err(|e| e.to_string())
}

/// The registry's current problems, shared with the debug endpoint.
pub type Problems = Arc<RwLock<Vec<FileError>>>;

/// Loads the registry, publishes its mesh, and (for a directory) keeps
/// watching: every change is re-read after `settle` and republished.
/// Returns once the first load is published.
pub async fn run(
    registry: FileRegistry,
    mesh_tx: watch::Sender<Arc<Mesh>>,
    problems: Problems,
    settle: Duration,
) -> Result<Option<tokio::task::JoinHandle<()>>, notify::Error> {
    let publish = move |mut registry: FileRegistry| -> (FileRegistry, Arc<Mesh>) {
        let load = registry.load();
        for e in &load.errors {
            tracing::error!(file = %e.file, "registry: {}", e.message);
        }
        *problems.write().unwrap_or_else(|p| p.into_inner()) = load.errors;
        (registry, Arc::new(load.mesh))
    };
    let (mut registry, mesh) = publish(registry);
    mesh_tx.send_replace(mesh);
    let Some(dir) = registry.dir.clone() else {
        return Ok(None);
    };

    let (event_tx, mut events) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Reading the registry opens and closes its files (access events
        // on Linux): reacting to those would reload forever. A file closed
        // after writing is a change.
        use notify::event::{AccessKind, AccessMode, EventKind};
        if event.as_ref().is_ok_and(|e| {
            matches!(e.kind, EventKind::Access(kind) if kind != AccessKind::Close(AccessMode::Write))
        }) {
            return;
        }
        let _ = event_tx.send(event);
    })?;
    notify::Watcher::watch(&mut watcher, &dir, notify::RecursiveMode::NonRecursive)?;
    tracing::info!(dir = %dir.display(), "watching the registry");

    let task = tokio::spawn(async move {
        // The watcher stops when dropped: it lives as long as this task.
        let _watcher = watcher;
        while let Some(first) = events.recv().await {
            if let Err(e) = first {
                tracing::warn!("registry watch: {e}");
            }
            // Editors write a file in several steps: wait for them to settle.
            tokio::time::sleep(settle).await;
            while events.try_recv().is_ok() {}
            // Reading and parsing files blocks: keep it off the async workers.
            let publish = publish.clone();
            let reloaded = tokio::task::spawn_blocking(move || publish(registry)).await;
            let Ok((reloaded, mesh)) = reloaded else {
                tracing::error!(
                    "registry reload panicked; the watch stops and the last mesh keeps serving"
                );
                return;
            };
            registry = reloaded;
            tracing::info!(
                services = mesh.services.len(),
                workloads = mesh.workloads.len(),
                "registry reloaded"
            );
            mesh_tx.send_replace(mesh);
        }
    });
    Ok(Some(task))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ServiceKey;

    const SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 198.19.0.1
  ports: [{name: http, port: 80}]
"#;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn embedded_default_is_valid() {
        let load = FileRegistry::embedded().load();
        assert!(load.errors.is_empty(), "{:?}", load.errors);
        assert!(!load.mesh.services.is_empty());
        assert!(!load.mesh.workloads.is_empty());
    }

    #[test]
    fn bad_file_keeps_its_last_good_version_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "web.yaml", SERVICE);
        let mut registry = FileRegistry::new(dir.path());
        let load = registry.load();
        assert!(load.errors.is_empty());
        assert!(
            load.mesh
                .services
                .contains_key(&ServiceKey::new("shop", "web"))
        );

        write(
            dir.path(),
            "web.yaml",
            &SERVICE.replace("port: 80", "port: 80000"),
        );
        let load = registry.load();
        assert!(
            load.mesh
                .services
                .contains_key(&ServiceKey::new("shop", "web"))
        );
        assert_eq!(load.errors.len(), 1);
        let msg = load.errors[0].to_string();
        assert!(msg.contains("web.yaml"), "{msg}");
        assert!(
            msg.contains("Service shop/web: spec.ports[0].port"),
            "{msg}"
        );
        assert!(msg.contains("last good version keeps serving"), "{msg}");
    }

    #[test]
    fn yaml_errors_unknown_kinds_and_missing_fields_are_reported() {
        for (text, expect) in [
            ("kind: [unclosed", "invalid YAML"),
            (
                "{apiVersion: apps/v1, kind: Deployment, metadata: {name: d}}",
                "unsupported kind `apps/v1 Deployment`; accepted: v1 Namespace",
            ),
            (
                "{apiVersion: v1, kind: Service, metadata: {name: s}, spec: {clusterIP: 198.19.0.9, ports: [{name: http}]}}",
                "Service default/s: spec.ports[0].port: is required; accepted: 1-65535",
            ),
            ("{kind: Service}", "apiVersion: is required"),
        ] {
            let errors = parse(text).unwrap_err();
            assert!(errors[0].contains(expect), "{text}: {errors:?}");
        }
    }

    #[test]
    fn duplicates_keep_the_first_definition() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.yaml", SERVICE);
        write(
            dir.path(),
            "b.yaml",
            &SERVICE.replace("198.19.0.1", "198.19.0.2"),
        );
        let load = FileRegistry::new(dir.path()).load();
        let svc = &load.mesh.services[&ServiceKey::new("shop", "web")];
        assert_eq!(svc.vip, Some("198.19.0.1".parse().unwrap()));
        assert_eq!(load.errors.len(), 1);
        assert!(load.errors[0].file.ends_with("b.yaml"));
        assert!(
            load.errors[0]
                .message
                .contains("duplicate Service shop/web: already defined in")
        );
    }

    #[test]
    fn a_cluster_ip_belongs_to_one_service() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.yaml", SERVICE);
        write(
            dir.path(),
            "b.yaml",
            &SERVICE.replace("name: web", "name: api"),
        );
        let load = FileRegistry::new(dir.path()).load();
        assert_eq!(load.mesh.services.len(), 1);
        assert!(
            load.errors[0]
                .message
                .contains("spec.clusterIP: 198.19.0.1 is already the address of Service shop/web"),
            "{:?}",
            load.errors
        );
    }

    #[test]
    fn a_dual_stack_service_claims_both_its_cluster_ips() {
        let dir = tempfile::tempdir().unwrap();
        let dual = |name: &str, v4: &str| {
            format!(
                "{{apiVersion: v1, kind: Service, metadata: {{name: {name}, namespace: shop}}, spec: {{clusterIPs: ['{v4}', 'fd00::1'], ports: [{{name: http, port: 80}}]}}}}"
            )
        };
        write(dir.path(), "a.yaml", &dual("web", "198.19.0.1"));
        write(dir.path(), "b.yaml", &dual("api", "198.19.0.2"));
        let load = FileRegistry::new(dir.path()).load();
        assert_eq!(load.mesh.services.len(), 1);
        let web = &load.mesh.services[&ServiceKey::new("shop", "web")];
        assert_eq!(
            web.vips().collect::<Vec<_>>(),
            [
                "198.19.0.1".parse::<std::net::IpAddr>().unwrap(),
                "fd00::1".parse().unwrap()
            ]
        );
        assert!(
            load.errors[0].message.contains(
                "Service shop/api: spec.clusterIPs: fd00::1 is already the address of Service shop/web"
            ),
            "{:?}",
            load.errors
        );
    }

    #[test]
    fn deleting_a_file_removes_its_objects() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "web.yaml", SERVICE);
        let mut registry = FileRegistry::new(dir.path());
        assert_eq!(registry.load().mesh.services.len(), 1);
        std::fs::remove_file(dir.path().join("web.yaml")).unwrap();
        assert_eq!(registry.load().mesh.services.len(), 0);
    }
}
