//! The file registry: a directory of Kubernetes-shaped YAML manifests
//! (Namespace, Service, EndpointSlice, Pod) standing in for a cluster.
//!
//! ```text
//! notify event naming *.yaml ──> those files ─┐
//! any other event, load()    ──> stat all ────┴─> read + parse the changed ones
//!                                                   │ error: the file keeps its last good objects
//!                                                   v
//! per file: its objects ──settle claims──> apply / delete only what changed ──> Index ──> Mesh ──watch──> xDS
//!                        (the live definition wins)
//! ```
//!
//! Each file is parsed on its own, and only when it changed: a notify event
//! names it, or on a rescan its fingerprint (device, inode, size, mtime,
//! ctime) differs. Unchanged files keep their parsed objects, and the
//! [`Index`] the mesh is built from is kept between reloads: only objects
//! that came, went or changed are applied or deleted, so its join stays
//! incremental too.
//!
//! Nothing serving is lost by accident:
//! - A file with any error (unreadable, a dangling symlink, too large or
//!   too deep, invalid YAML or fields, emptied) keeps serving the objects
//!   of its last good version; only removing the file removes them.
//! - Two files defining one object, or two services claiming one cluster
//!   IP: the definition that is live keeps serving, and the newcomer is
//!   refused and named. With nothing live yet (the first load), files
//!   are taken in name order. A refused definition takes over when the
//!   live one goes.
//!
//! Every problem (file, object, field, what is accepted) is logged once
//! and kept for the debug endpoint until it is fixed.

pub use meshd_api::manifest as limits;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::Read as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::{mpsc, watch};

use super::index::Index;
use super::objects::{self, ACCEPTED_KINDS, Object, ObjectRef};
use crate::model::{Mesh, ServiceKey};

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

/// A registry file's name: its path as listed, shared by every object it
/// defines.
type FileName = Arc<str>;

/// What tells a file's content apart without reading it: replaced
/// (another inode), written (size, mtime) or made readable (ctime).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fingerprint {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Fingerprint {
    fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Fingerprint {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

#[derive(Debug, Default)]
struct FileState {
    /// Of the version last looked at; `None` when it could not be taken
    /// (a dangling symlink), so every rescan looks again.
    fingerprint: Option<Fingerprint>,
    /// The objects of the last version of the file that parsed cleanly,
    /// each once.
    good: Vec<Arc<Object>>,
    /// Why the current version is not served.
    error: Option<String>,
    /// Objects the served version defines more than once.
    duplicates: Vec<String>,
}

/// The definition of an object being served, and the file it came from.
#[derive(Debug)]
struct Live {
    file: FileName,
    object: Arc<Object>,
}

/// A definition refused because another one is live, kept to take over
/// when that one goes.
#[derive(Debug)]
struct Refused {
    object: Arc<Object>,
    message: String,
}

/// Registry files, what each last contributed, and what is served.
#[derive(Debug, Default)]
pub struct FileRegistry {
    dir: Option<PathBuf>,
    /// Why the directory could not be listed, if it could not.
    dir_error: Option<String>,
    files: BTreeMap<FileName, FileState>,
    live: HashMap<ObjectRef, Live>,
    /// Which live service holds each cluster IP.
    cluster_ips: HashMap<IpAddr, ServiceKey>,
    refused: BTreeMap<(FileName, ObjectRef), Refused>,
    /// The live objects, joined; kept between reloads.
    index: Index,
    /// Whether the index changed since the last mesh was built.
    changed: bool,
}

/// The outcome of a (re)load: the mesh to serve and every current problem.
#[derive(Debug)]
pub struct Load {
    pub mesh: Mesh,
    pub errors: Vec<FileError>,
}

/// What a reload looks at.
#[derive(Debug, Default)]
struct Refresh {
    /// Read again whatever their fingerprint says: notify named them.
    files: BTreeSet<PathBuf>,
    /// Also stat every file of the directory: an event named something
    /// else (the directory, a hidden file such as a ConfigMap's `..data`
    /// swap, an editor's temporary file) or events were lost.
    all: bool,
    /// The last event renamed a manifest into place and no manifest saw
    /// anything but such renames: the writer is done, there is nothing to
    /// settle.
    in_place: bool,
    /// A manifest saw a write, a creation or a removal: it may be half
    /// written or half replaced (an editor's save), so wait for it to
    /// settle.
    unsettled: bool,
}

/// A file's new content, or its removal.
type Changes = BTreeMap<FileName, Option<Vec<Object>>>;

impl FileRegistry {
    /// A registry over a directory; call [`FileRegistry::load`] to read it.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: Some(dir.into()),
            ..Self::default()
        }
    }

    /// The registry compiled into the binary.
    pub fn embedded() -> Self {
        let mut registry = Self::default();
        let name: FileName = EMBEDDED_NAME.into();
        let state = registry.files.entry(name.clone()).or_default();
        let mut changes = Changes::new();
        match parse(EMBEDDED_DEFAULT) {
            Ok(objects) => {
                changes.insert(name, Some(objects));
            }
            Err(errors) => state.error = Some(errors.join("; ")),
        }
        registry.apply(changes);
        registry
    }

    /// Looks at every file of the directory (if any) again, reading only
    /// those whose fingerprint changed, and returns the mesh and every
    /// current problem.
    pub fn load(&mut self) -> Load {
        self.refresh(Refresh {
            files: BTreeSet::new(),
            all: true,
            ..Default::default()
        });
        Load {
            mesh: self.mesh(),
            errors: self.errors(),
        }
    }

    fn mesh(&mut self) -> Mesh {
        self.changed = false;
        self.index.mesh()
    }

    /// Reads again what `what` names; whether the index changed.
    fn refresh(&mut self, what: Refresh) -> bool {
        let Some(dir) = self.dir.clone() else {
            return false;
        };
        let mut changes = Changes::new();
        if what.all {
            self.rescan(&dir, &what.files, &mut changes);
        } else {
            for path in &what.files {
                let name: FileName = path.display().to_string().into();
                self.refresh_file(name, path, true, &mut changes);
            }
        }
        self.apply(changes);
        self.changed
    }

    /// Stats every manifest of `dir`; reads those in `forced` and those
    /// whose fingerprint changed.
    fn rescan(&mut self, dir: &Path, forced: &BTreeSet<PathBuf>, changes: &mut Changes) {
        let listing = match std::fs::read_dir(dir) {
            Ok(listing) => listing,
            Err(e) => {
                // Keep serving everything we had: a directory that vanished
                // for a moment (a ConfigMap symlink swap) is not an empty mesh.
                self.dir_error = Some(format!(
                    "cannot read the registry directory: {e}; every file keeps serving its last good version"
                ));
                return;
            }
        };
        self.dir_error = None;
        let mut present = HashSet::new();
        let mut complete = true;
        for entry in listing {
            let path = match entry {
                Ok(entry) => entry.path(),
                Err(e) => {
                    self.dir_error = Some(format!(
                        "cannot list the registry directory: {e}; files not listed keep serving their last good version"
                    ));
                    complete = false;
                    continue;
                }
            };
            if !is_manifest_name(&path) {
                continue;
            }
            let name: FileName = path.display().to_string().into();
            present.insert(name.clone());
            self.refresh_file(name, &path, forced.contains(&path), changes);
        }
        // A deleted file takes its objects with it: deleting is how users
        // remove things from the registry. A file missing from a listing
        // that failed part way was not seen, not deleted.
        if complete {
            for name in self.files.keys() {
                if !present.contains(name) {
                    changes.insert(name.clone(), None);
                }
            }
        }
    }

    /// Looks at one file: read and parsed when `force`d or changed.
    fn refresh_file(&mut self, name: FileName, path: &Path, force: bool, changes: &mut Changes) {
        let known = self.files.get(&name).and_then(|s| s.fingerprint);
        let (content, fingerprint) = read_manifest(path, known, force);
        let text = match content {
            Content::Removed => {
                if self.files.contains_key(&name) {
                    changes.insert(name, None);
                }
                return;
            }
            Content::Unchanged => return,
            Content::Unreadable(message) => Err(message),
            Content::Text(text) => Ok(text),
        };
        let state = self.files.entry(name.clone()).or_default();
        state.fingerprint = fingerprint;
        let parsed = text.and_then(|text| {
            if text.trim().is_empty() && !state.good.is_empty() {
                // Editors save in two steps, truncate then write: the
                // moment between is not a request to remove everything.
                return Err(
                    "is empty; accepted: manifests (to remove this file's objects, delete the file or leave only a comment in it)"
                        .to_string(),
                );
            }
            parse(&text).map_err(|errors| errors.join("; "))
        });
        match parsed {
            Ok(objects) => {
                changes.insert(name, Some(objects));
            }
            Err(message) => state.error = Some(message),
        }
    }

    /// Replaces the objects of each changed file, then settles which
    /// definitions are live. Files are taken in name order.
    fn apply(&mut self, changes: Changes) {
        let mut claims: Vec<(FileName, Arc<Object>)> = Vec::new();
        for (file, objects) in changes {
            // The file's refused definitions are claimed afresh below.
            self.refused.retain(|(f, _), _| *f != file);
            let removed = objects.is_none();
            let (good, duplicates) = once_each(objects.unwrap_or_default());
            let defined: HashSet<ObjectRef> = good.iter().map(|o| o.object_ref()).collect();
            let old = match self.files.get_mut(&file) {
                Some(state) => std::mem::take(&mut state.good),
                None => Vec::new(),
            };
            for object in old {
                let id = object.object_ref();
                if !defined.contains(&id) && self.live.get(&id).is_some_and(|l| l.file == file) {
                    self.release(&id);
                }
            }
            if removed {
                self.files.remove(&file);
                continue;
            }
            let state = self.files.entry(file.clone()).or_default();
            state.error = None;
            state.duplicates = duplicates;
            state.good = good.clone();
            claims.extend(good.into_iter().map(|o| (file.clone(), o)));
        }
        // Definitions refused earlier were there first: they get the
        // first chance at whatever was just given up.
        self.retry_refused();
        for (file, object) in claims {
            self.settle(file, object);
        }
        // A changed service may have given up a cluster IP a refused one
        // wanted.
        self.retry_refused();
    }

    /// Serves `object` from `file`, or records why it is refused.
    fn settle(&mut self, file: FileName, object: Arc<Object>) {
        let id = object.object_ref();
        match self.claim(&file, &object) {
            Ok(()) => {
                self.refused.remove(&(file, id));
            }
            Err(message) => {
                self.refused.insert((file, id), Refused { object, message });
            }
        }
    }

    fn retry_refused(&mut self) {
        loop {
            let waiting: Vec<(FileName, Arc<Object>)> = self
                .refused
                .iter()
                .map(|((file, _), r)| (file.clone(), r.object.clone()))
                .collect();
            let mut progress = false;
            for (file, object) in waiting {
                let id = object.object_ref();
                match self.claim(&file, &object) {
                    Ok(()) => {
                        self.refused.remove(&(file, id));
                        progress = true;
                    }
                    Err(message) => {
                        if let Some(refused) = self.refused.get_mut(&(file, id)) {
                            refused.message = message;
                        }
                    }
                }
            }
            if !progress {
                return;
            }
        }
    }

    /// Makes `file`'s definition of `object` the live one, unless another
    /// file's definition of it, or another service holding one of its
    /// cluster IPs, is live.
    fn claim(&mut self, file: &FileName, object: &Arc<Object>) -> Result<(), String> {
        let id = object.object_ref();
        let update = match self.live.get(&id) {
            Some(live) if live.file != *file => {
                return Err(format!(
                    "duplicate {id}: already defined in {}, which serves it; this copy is refused",
                    live.file
                ));
            }
            Some(live) if Arc::ptr_eq(&live.object, object) || *live.object == **object => {
                return Ok(());
            }
            Some(_) => true,
            None => false,
        };
        if let Object::Service(svc) = &**object {
            for vip in svc.vips() {
                if let Some(owner) = self.cluster_ips.get(&vip)
                    && *owner != svc.key
                {
                    let field = if svc.vip == Some(vip) {
                        "spec.clusterIP"
                    } else {
                        "spec.clusterIPs"
                    };
                    let outcome = if update {
                        "this version is refused and the last good one keeps serving"
                    } else {
                        "this service is refused"
                    };
                    return Err(format!(
                        "{id}: {field}: {vip} is already the address of Service {owner}; each service needs its own cluster IPs, {outcome}"
                    ));
                }
            }
        }
        if let Some(old) = self.live.remove(&id) {
            self.release_cluster_ips(&old.object);
        }
        if let Object::Service(svc) = &**object {
            for vip in svc.vips() {
                self.cluster_ips.insert(vip, svc.key.clone());
            }
        }
        self.index.apply((**object).clone());
        self.live.insert(
            id,
            Live {
                file: file.clone(),
                object: object.clone(),
            },
        );
        self.changed = true;
        Ok(())
    }

    /// Stops serving an object.
    fn release(&mut self, id: &ObjectRef) {
        if let Some(live) = self.live.remove(id) {
            self.release_cluster_ips(&live.object);
            self.index.delete(id);
            self.changed = true;
        }
    }

    fn release_cluster_ips(&mut self, object: &Object) {
        if let Object::Service(svc) = object {
            for vip in svc.vips() {
                if self.cluster_ips.get(&vip) == Some(&svc.key) {
                    self.cluster_ips.remove(&vip);
                }
            }
        }
    }

    /// Every current problem, by file.
    fn errors(&self) -> Vec<FileError> {
        let mut errors = Vec::new();
        if let (Some(dir), Some(message)) = (&self.dir, &self.dir_error) {
            errors.push(FileError {
                file: dir.display().to_string(),
                message: message.clone(),
            });
        }
        let first = ObjectRef {
            kind: "",
            namespace: None,
            name: String::new(),
        };
        for (file, state) in &self.files {
            let error = |message: String| FileError {
                file: file.to_string(),
                message,
            };
            if let Some(message) = &state.error {
                let kept = if state.good.is_empty() {
                    "nothing from this file is served"
                } else {
                    "its last good version keeps serving"
                };
                errors.push(error(format!("{message} ({kept})")));
            }
            errors.extend(state.duplicates.iter().cloned().map(error));
            errors.extend(
                self.refused
                    .range((file.clone(), first.clone())..)
                    .take_while(|((f, _), _)| f == file)
                    .map(|(_, refused)| error(refused.message.clone())),
            );
        }
        errors
    }
}

/// The objects of a file, each once: a second definition in the same file
/// is reported, and the first one counts.
fn once_each(objects: Vec<Object>) -> (Vec<Arc<Object>>, Vec<String>) {
    let mut seen = HashSet::new();
    let mut good = Vec::with_capacity(objects.len());
    let mut duplicates = Vec::new();
    for object in objects {
        let id = object.object_ref();
        if seen.insert(id.clone()) {
            good.push(Arc::new(object));
        } else {
            duplicates.push(format!(
                "duplicate {id}: already defined earlier in this file; this copy is ignored"
            ));
        }
    }
    (good, duplicates)
}

/// What reading a registry file found.
enum Content {
    /// The file is gone: its objects go too.
    Removed,
    /// Its fingerprint is the one last seen.
    Unchanged,
    /// It is there but cannot be read; it keeps its last good content.
    Unreadable(String),
    Text(String),
}

/// Reads a registry file, unless `known` says it has not changed (and it
/// is not `force`d). Only a file that is not there at all is removed: a
/// symlink to nothing, a directory, a file too large or unreadable is an
/// error.
fn read_manifest(
    path: &Path,
    known: Option<Fingerprint>,
    force: bool,
) -> (Content, Option<Fingerprint>) {
    use std::io::ErrorKind;
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) => {
            // Not there at all, or a symlink whose target is missing or
            // loops: only the first is a removal.
            let target = match std::fs::symlink_metadata(path) {
                Err(e) if e.kind() == ErrorKind::NotFound => return (Content::Removed, None),
                Ok(link) if link.file_type().is_symlink() => std::fs::read_link(path)
                    .map(|t| t.display().to_string())
                    .unwrap_or_default(),
                _ => return (Content::Unreadable(format!("cannot read: {e}")), None),
            };
            let message = if e.kind() == ErrorKind::NotFound {
                format!(
                    "is a symlink to `{target}`, which does not exist; accepted: a file, or a symlink to one"
                )
            } else {
                format!("cannot follow the symlink to `{target}`: {e}")
            };
            return (Content::Unreadable(message), None);
        }
    };
    if meta.is_dir() {
        return (
            Content::Unreadable(
                "is a directory; accepted: a file of YAML manifests (subdirectories are not read)"
                    .into(),
            ),
            None,
        );
    }
    let fingerprint = Fingerprint::of(&meta);
    if !meta.is_file() {
        // Reading a FIFO would wait for a writer, holding every reload.
        return (
            Content::Unreadable(
                "is not a regular file (a FIFO, socket or device); accepted: a file of YAML manifests"
                    .into(),
            ),
            Some(fingerprint),
        );
    }
    if !force && known == Some(fingerprint) {
        return (Content::Unchanged, Some(fingerprint));
    }
    let too_large = |bytes| limits::LimitError::TooLarge { bytes }.to_string();
    if meta.len() > limits::MAX_BYTES as u64 {
        return (
            Content::Unreadable(too_large(meta.len())),
            Some(fingerprint),
        );
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // The file may grow between the stat and the read: never read more
    // than the limit.
    let read = std::fs::File::open(path)
        .and_then(|f| f.take(limits::MAX_BYTES as u64 + 1).read_to_end(&mut bytes));
    if let Err(e) = read {
        return (
            Content::Unreadable(format!("cannot read: {e}")),
            Some(fingerprint),
        );
    }
    if bytes.len() > limits::MAX_BYTES {
        return (
            Content::Unreadable(too_large(bytes.len() as u64)),
            Some(fingerprint),
        );
    }
    match String::from_utf8(bytes) {
        Ok(text) => (Content::Text(text), Some(fingerprint)),
        Err(e) => (
            Content::Unreadable(format!(
                "is not UTF-8 text ({}); accepted: YAML in UTF-8",
                e.utf8_error()
            )),
            Some(fingerprint),
        ),
    }
}

/// Whether a directory entry is a registry file by its name: `*.yaml` or
/// `*.yml`, not hidden. What it is (a file, a directory, a symlink to
/// nothing) is for [`read_manifest`] to report.
fn is_manifest_name(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_none_or(|n| n.starts_with('.'));
    let yaml = matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    );
    yaml && !hidden
}

/// Parses one multi-document YAML file. Every problem in the file is
/// reported, not just the first. A byte order mark at the start is
/// skipped; a file larger or deeper than [`limits`] allow is refused
/// before it is parsed.
pub fn parse(text: &str) -> Result<Vec<Object>, Vec<String>> {
    let text = limits::strip_bom(text);
    limits::check(text).map_err(|e| vec![e.to_string()])?;
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
        ("gateway.networking.k8s.io/v1", "HTTPRoute") => {
            decode_as(value, &kind, &name, Object::from_http_route).inspect(log_refused)
        }
        ("gateway.networking.k8s.io/v1", "GRPCRoute") => {
            decode_as(value, &kind, &name, Object::from_grpc_route).inspect(log_refused)
        }
        // v1beta1 is the version most clusters still serve; the shape is v1's.
        (
            "gateway.networking.k8s.io/v1" | "gateway.networking.k8s.io/v1beta1",
            "ReferenceGrant",
        ) => decode_as(value, &kind, &name, Object::from_reference_grant),
        _ => Err(format!(
            "{kind} {name}: unsupported kind `{api_version} {kind}`; accepted: {ACCEPTED_KINDS}"
        )),
    }
}

/// A route the mesh cannot use is still applied (its last good version
/// keeps serving; its conditions on /debug/routing say why), and logged.
fn log_refused(object: &Object) {
    if let Object::Route(route) = object
        && let Err(e) = &route.route
    {
        tracing::warn!("registry: {e}; the route's last good version, if any, keeps serving");
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

/// Replaces the current problems, logging those that are new.
fn report(problems: &Problems, errors: Vec<FileError>) {
    let mut current = problems.write().unwrap_or_else(|p| p.into_inner());
    for e in &errors {
        if !current.contains(e) {
            tracing::error!(file = %e.file, "registry: {}", e.message);
        }
    }
    *current = errors;
}

impl Refresh {
    /// Adds what a notify event names. `watched` is the directory as
    /// notify reports it (absolute), `dir` as the registry names it.
    fn note(&mut self, event: notify::Result<notify::Event>, watched: &Path, dir: &Path) {
        use notify::event::{EventKind, ModifyKind, RenameMode};
        let event = match event {
            Ok(event) if !event.need_rescan() && !event.paths.is_empty() => event,
            Ok(_) => {
                self.all = true;
                self.unsettled = true;
                return;
            }
            Err(e) => {
                tracing::warn!("registry watch: {e}; looking at every file");
                self.all = true;
                self.unsettled = true;
                return;
            }
        };
        let manifest = |path: &Path| match (path.parent(), path.file_name()) {
            (Some(parent), Some(name))
                if parent == watched && is_manifest_name(Path::new(name)) =>
            {
                Some(dir.join(name))
            }
            _ => None,
        };
        // A rename's target is the last path (`Both` names from and to).
        let renamed_in = matches!(
            event.kind,
            EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both))
        ) && event.paths.last().and_then(|p| manifest(p)).is_some();
        self.in_place = renamed_in;
        for path in &event.paths {
            match manifest(path) {
                Some(file) => {
                    if !renamed_in {
                        self.unsettled = true;
                    }
                    self.files.insert(file);
                }
                None => self.all = true,
            }
        }
    }

    /// Whether the files can be read now: every manifest named was renamed
    /// into place, which a writer does only once it has written the whole
    /// file (Kubernetes' atomic writer, `meshd-load`, most deploy tools).
    fn settled(&self) -> bool {
        self.in_place && !self.unsettled
    }
}

/// Loads the registry, publishes its mesh, and (for a directory) keeps
/// watching: after `settle`, the files that changed are read again and
/// the mesh is republished if any object changed. Returns once the first
/// load is published.
pub async fn run(
    mut registry: FileRegistry,
    mesh_tx: watch::Sender<Arc<Mesh>>,
    problems: Problems,
    settle: Duration,
) -> Result<Option<tokio::task::JoinHandle<()>>, notify::Error> {
    let load = registry.load();
    report(&problems, load.errors);
    mesh_tx.send_replace(Arc::new(load.mesh));
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
    // notify names paths under the directory made absolute.
    let watched = std::path::absolute(&dir).unwrap_or_else(|_| dir.clone());
    tracing::info!(dir = %dir.display(), "watching the registry");

    let task = tokio::spawn(async move {
        // The watcher stops when dropped: it lives as long as this task.
        let _watcher = watcher;
        while let Some(first) = events.recv().await {
            let mut refresh = Refresh::default();
            refresh.note(first, &watched, &dir);
            // Editors write a file in several steps: wait for them to
            // settle, unless the writer renamed the finished file into
            // place (then an endpoint change is not held back for nothing).
            let deadline = tokio::time::Instant::now() + settle;
            while !refresh.settled() {
                match tokio::time::timeout_at(deadline, events.recv()).await {
                    Ok(Some(event)) => refresh.note(event, &watched, &dir),
                    Ok(None) | Err(_) => break,
                }
            }
            while let Ok(event) = events.try_recv() {
                refresh.note(event, &watched, &dir);
            }
            // Reading and parsing files blocks: keep it off the async workers.
            let reloaded = tokio::task::spawn_blocking(move || {
                let started = std::time::Instant::now();
                let mesh = registry.refresh(refresh).then(|| Arc::new(registry.mesh()));
                let errors = registry.errors();
                (registry, mesh, errors, started.elapsed())
            })
            .await;
            let Ok((reloaded, mesh, errors, elapsed)) = reloaded else {
                tracing::error!(
                    "registry reload panicked; the watch stops and the last mesh keeps serving"
                );
                return;
            };
            registry = reloaded;
            report(&problems, errors);
            // Nothing served changed (a file rewritten as it was, an
            // error): no new mesh, no snapshot.
            if let Some(mesh) = mesh {
                tracing::info!(
                    services = mesh.services.len(),
                    workloads = mesh.workloads.len(),
                    ?elapsed,
                    "registry reloaded"
                );
                mesh_tx.send_replace(mesh);
            }
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
        // The demo's HTTPRoute attaches to server-v2.
        let status = load.mesh.routes.statuses.values().next().expect("a route");
        assert!(status.parents[0].accepted.status, "{status:?}");
        assert!(status.parents[0].resolved_refs.status, "{status:?}");
        assert!(
            load.mesh
                .routes
                .attaches(&ServiceKey::new("demo", "server-v2"), 80)
        );
    }

    #[test]
    fn gateway_api_routes_and_grants_are_read_and_a_refused_route_keeps_its_last_good_version() {
        let route = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web-split, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: web}]
  rules: [{matches: [{path: {type: PathPrefix, value: /v1}}], backendRefs: [{name: web, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: from-web, namespace: shop}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: other}]
  to: [{group: "", kind: Service}]
"#;
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "web.yaml", SERVICE);
        write(dir.path(), "route.yaml", route);
        let mut registry = FileRegistry::new(dir.path());
        let load = registry.load();
        assert!(load.errors.is_empty(), "{:?}", load.errors);
        let web = ServiceKey::new("shop", "web");
        assert!(load.mesh.routes.attaches(&web, 80));

        // A regular expression RE2 refuses: the route is still an object,
        // its last good version keeps serving, the file has no error.
        write(
            dir.path(),
            "route.yaml",
            &route.replace(
                "{type: PathPrefix, value: /v1}",
                "{type: RegularExpression, value: '(?=x)'}",
            ),
        );
        let load = registry.load();
        assert!(load.errors.is_empty(), "{:?}", load.errors);
        let entries = load.mesh.routes.for_caller(&web, 80, "shop").unwrap();
        assert_eq!(
            entries[0].route_match().unwrap().path,
            Some(meshd_api::gateway::PathMatch::Prefix("/v1".into()))
        );
        let status = load.mesh.routes.statuses.values().next().unwrap();
        assert!(!status.parents[0].accepted.status);
        assert!(
            status.parents[0]
                .accepted
                .message
                .contains("spec.rules[0].matches[0].path.value"),
            "{status:?}"
        );

        write(
            dir.path(),
            "route.yaml",
            &route.replace(
                "gateway.networking.k8s.io/v1\nkind: HTTPRoute",
                "gateway.networking.k8s.io/v9\nkind: HTTPRoute",
            ),
        );
        let load = registry.load();
        assert!(
            load.errors[0]
                .message
                .contains("unsupported kind `gateway.networking.k8s.io/v9 HTTPRoute`; accepted:"),
            "{:?}",
            load.errors
        );
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

    const SLICE: &str = r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- addresses: [198.18.0.1]
"#;

    fn service(name: &str, vip: &str) -> String {
        SERVICE
            .replace("name: web", &format!("name: {name}"))
            .replace("198.19.0.1", vip)
    }

    fn with_slice(name: &str, vip: &str, endpoint: &str) -> String {
        format!(
            "{}---{}",
            service(name, vip),
            SLICE.replace("web", name).replace("198.18.0.1", endpoint)
        )
    }

    fn key(name: &str) -> ServiceKey {
        ServiceKey::new("shop", name)
    }

    fn vip(mesh: &Mesh, name: &str) -> Option<std::net::IpAddr> {
        mesh.services.get(&key(name)).and_then(|s| s.vip)
    }

    /// The one error about `file`, or a panic listing them all.
    fn error_of<'e>(load: &'e Load, file: &str) -> &'e str {
        let errors: Vec<_> = load
            .errors
            .iter()
            .filter(|e| e.file.ends_with(file))
            .collect();
        assert_eq!(errors.len(), 1, "errors about {file}: {:?}", load.errors);
        &errors[0].message
    }

    #[test]
    fn a_reload_keeps_what_unchanged_files_serve() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "web.yaml",
            &with_slice("web", "198.19.0.1", "198.18.0.1"),
        );
        write(
            dir.path(),
            "api.yaml",
            &with_slice("api", "198.19.0.2", "198.18.0.2"),
        );
        let mut registry = FileRegistry::new(dir.path());
        let before = registry.load().mesh;

        write(
            dir.path(),
            "api.yaml",
            &with_slice("api", "198.19.0.2", "198.18.0.3"),
        );
        let after = registry.load().mesh;
        assert_eq!(
            after.endpoints[&key("api")][0].address.to_string(),
            "198.18.0.3"
        );
        // web.yaml was neither parsed nor applied again: the index kept
        // its service and its joined endpoints, the very same values.
        assert!(Arc::ptr_eq(
            &before.services[&key("web")],
            &after.services[&key("web")]
        ));
        assert!(Arc::ptr_eq(
            &before.endpoints[&key("web")],
            &after.endpoints[&key("web")]
        ));
        assert!(Arc::ptr_eq(
            &before.services[&key("api")],
            &after.services[&key("api")]
        ));

        // A notify event for api.yaml reads api.yaml only: web.yaml,
        // broken meanwhile, is not looked at until an event names it.
        write(dir.path(), "web.yaml", "kind: [");
        write(
            dir.path(),
            "api.yaml",
            &with_slice("api", "198.19.0.2", "198.18.0.4"),
        );
        let changed = registry.refresh(Refresh {
            files: BTreeSet::from([dir.path().join("api.yaml")]),
            all: false,
            ..Default::default()
        });
        assert!(changed);
        assert!(registry.errors().is_empty(), "{:?}", registry.errors());
        let mesh = registry.mesh();
        assert_eq!(
            mesh.endpoints[&key("api")][0].address.to_string(),
            "198.18.0.4"
        );
        assert!(Arc::ptr_eq(
            &before.services[&key("web")],
            &mesh.services[&key("web")]
        ));

        // A file rewritten as it was changes nothing.
        write(
            dir.path(),
            "api.yaml",
            &with_slice("api", "198.19.0.2", "198.18.0.4"),
        );
        assert!(!registry.refresh(Refresh {
            files: BTreeSet::from([dir.path().join("api.yaml")]),
            all: false,
            ..Default::default()
        }));
    }

    #[test]
    fn the_live_definition_keeps_serving_and_the_newcomer_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "api.yaml", &service("api", "198.19.0.1"));
        let mut registry = FileRegistry::new(dir.path());
        assert!(registry.load().errors.is_empty());

        // 0.yaml sorts before api.yaml; it still comes second.
        write(dir.path(), "0.yaml", &service("api", "198.19.0.2"));
        // And a new service wants api's cluster IP.
        write(dir.path(), "00.yaml", &service("shop", "198.19.0.1"));
        let load = registry.load();
        assert_eq!(vip(&load.mesh, "api"), Some("198.19.0.1".parse().unwrap()));
        assert_eq!(vip(&load.mesh, "shop"), None);
        let api_yaml = dir.path().join("api.yaml").display().to_string();
        assert_eq!(
            error_of(&load, "/0.yaml"),
            format!(
                "duplicate Service shop/api: already defined in {api_yaml}, which serves it; this copy is refused"
            )
        );
        assert_eq!(
            error_of(&load, "/00.yaml"),
            "Service shop/shop: spec.clusterIP: 198.19.0.1 is already the address of Service shop/api; each service needs its own cluster IPs, this service is refused"
        );
        assert_eq!(load.errors.len(), 2, "{:?}", load.errors);

        // The live service moving onto a taken address keeps its last
        // good version.
        write(dir.path(), "web.yaml", &service("web", "198.19.0.9"));
        registry.load();
        write(dir.path(), "api.yaml", &service("api", "198.19.0.9"));
        let load = registry.load();
        assert_eq!(vip(&load.mesh, "api"), Some("198.19.0.1".parse().unwrap()));
        assert!(
            error_of(&load, "/api.yaml")
                .ends_with("this version is refused and the last good one keeps serving"),
            "{:?}",
            load.errors
        );
        write(dir.path(), "api.yaml", &service("api", "198.19.0.1"));
        assert_eq!(registry.load().errors.len(), 2);

        // When the live definition goes, the refused ones take over.
        std::fs::remove_file(dir.path().join("api.yaml")).unwrap();
        let load = registry.load();
        assert!(load.errors.is_empty(), "{:?}", load.errors);
        assert_eq!(vip(&load.mesh, "api"), Some("198.19.0.2".parse().unwrap()));
        assert_eq!(vip(&load.mesh, "shop"), Some("198.19.0.1".parse().unwrap()));

        // On a fresh start nothing is live: name order decides.
        write(dir.path(), "api.yaml", &service("api", "198.19.0.1"));
        let load = FileRegistry::new(dir.path()).load();
        assert_eq!(vip(&load.mesh, "api"), Some("198.19.0.2".parse().unwrap()));
        assert!(error_of(&load, "/api.yaml").starts_with("duplicate Service shop/api"));
    }

    #[test]
    fn a_file_that_cannot_be_read_keeps_its_last_good_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web.yaml");
        let replace_with_symlink = |target: &str| {
            std::fs::remove_file(&path).unwrap();
            std::os::unix::fs::symlink(target, &path).unwrap();
        };
        type Break<'a> = (&'a str, Box<dyn Fn() + 'a>, &'a str);
        let cases: Vec<Break> = vec![
            (
                "dangling symlink",
                Box::new(|| replace_with_symlink("gone.yaml")),
                "is a symlink to `gone.yaml`, which does not exist",
            ),
            (
                "symlink loop",
                Box::new(|| replace_with_symlink("web.yaml")),
                "cannot follow the symlink to `web.yaml`",
            ),
            (
                "truncated",
                Box::new(|| write(dir.path(), "web.yaml", "")),
                "is empty; accepted: manifests",
            ),
            (
                // A read that fails (EIO) even for root, which could read
                // a file without permissions.
                "read error",
                Box::new(|| replace_with_symlink("/proc/self/mem")),
                "cannot read: ",
            ),
        ];
        for (case, break_it, shown) in cases {
            write(dir.path(), "web.yaml", SERVICE);
            let mut registry = FileRegistry::new(dir.path());
            assert_eq!(registry.load().mesh.services.len(), 1, "{case}");
            break_it();
            let load = registry.load();
            assert!(
                load.mesh.services.contains_key(&key("web")),
                "{case}: the service went"
            );
            let message = error_of(&load, "/web.yaml");
            assert!(message.contains(shown), "{case}: {message}");
            assert!(
                message.ends_with("(its last good version keeps serving)"),
                "{case}: {message}"
            );
            // Only removing the file removes its objects.
            std::fs::remove_file(&path).unwrap();
            let load = registry.load();
            assert!(load.mesh.services.is_empty(), "{case}");
            assert!(load.errors.is_empty(), "{case}: {:?}", load.errors);
        }

        // What cannot be a registry file is reported, not skipped.
        std::os::unix::fs::symlink("nowhere.yaml", dir.path().join("new.yaml")).unwrap();
        std::fs::create_dir(dir.path().join("old.yaml")).unwrap();
        // Reading a FIFO would wait for a writer, holding every reload.
        let fifo = std::process::Command::new("mkfifo")
            .arg(dir.path().join("pipe.yaml"))
            .status()
            .unwrap();
        assert!(fifo.success());
        let load = FileRegistry::new(dir.path()).load();
        assert!(error_of(&load, "/new.yaml").contains("which does not exist"));
        assert!(error_of(&load, "/old.yaml").starts_with("is a directory"));
        assert!(error_of(&load, "/pipe.yaml").starts_with("is not a regular file"));

        // A new empty file is just empty.
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "new.yaml", "");
        assert!(FileRegistry::new(dir.path()).load().errors.is_empty());
    }

    #[test]
    fn deep_or_huge_files_are_refused_before_parsing_and_the_others_update() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "web.yaml", SERVICE);
        // Minutes of parsing before the pre-scan.
        write(
            dir.path(),
            "deep.yaml",
            &format!("kind: {}", "[".repeat(200_000)),
        );
        let huge = format!("kind: '{}'", "x".repeat(limits::MAX_BYTES));
        write(dir.path(), "huge.yaml", &huge);
        let started = std::time::Instant::now();
        let load = FileRegistry::new(dir.path()).load();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert!(load.mesh.services.contains_key(&key("web")));
        assert_eq!(
            error_of(&load, "/deep.yaml"),
            "line 1: nests more than 64 levels deep (`[`, `{` or indentation); accepted: at most 64 levels (nothing from this file is served)"
        );
        assert_eq!(
            error_of(&load, "/huge.yaml"),
            format!(
                "is {} bytes; accepted: at most 4194304 bytes (4 MiB) (nothing from this file is served)",
                huge.len()
            )
        );
    }

    #[test]
    fn a_byte_order_mark_is_skipped() {
        // Before the first key, a BOM made serde_yaml see two documents.
        let with_bom = format!("\u{feff}{}", SERVICE.trim_start());
        assert_eq!(parse(&with_bom), parse(SERVICE));
        assert_eq!(parse(&with_bom).unwrap().len(), 1);
    }

    /// Which writes are read at once and which wait for the settle window.
    #[test]
    fn only_a_finished_file_renamed_into_place_skips_the_settle_window() {
        use notify::event::{
            AccessKind, AccessMode, CreateKind, DataChange, Event, EventKind, ModifyKind,
            RemoveKind, RenameMode,
        };
        let dir = Path::new("/registry");
        let event = |kind: EventKind, names: &[&str]| {
            let mut event = Event::new(kind);
            for name in names {
                event = event.add_path(dir.join(name));
            }
            event
        };
        let create = EventKind::Create(CreateKind::File);
        let data = EventKind::Modify(ModifyKind::Data(DataChange::Any));
        let closed = EventKind::Access(AccessKind::Close(AccessMode::Write));
        let from = EventKind::Modify(ModifyKind::Name(RenameMode::From));
        let to = EventKind::Modify(ModifyKind::Name(RenameMode::To));
        let both = EventKind::Modify(ModifyKind::Name(RenameMode::Both));
        let removed = EventKind::Remove(RemoveKind::File);
        let settled = |events: Vec<Event>| {
            let mut refresh = Refresh::default();
            for e in events {
                refresh.note(Ok(e), dir, dir);
            }
            (refresh.settled(), refresh.files.len())
        };

        // Written to a hidden file, then renamed over the manifest.
        let atomic = vec![
            event(create, &[".api.yaml.tmp"]),
            event(data, &[".api.yaml.tmp"]),
            event(closed, &[".api.yaml.tmp"]),
            event(from, &[".api.yaml.tmp"]),
            event(to, &["api.yaml"]),
            event(both, &[".api.yaml.tmp", "api.yaml"]),
        ];
        assert_eq!(settled(atomic.clone()), (true, 1));
        // Only the first events are in yet: the rename is still to come.
        assert!(!settled(atomic[..3].to_vec()).0);
        // Written in place: may be written again at once (`>>`).
        assert!(
            !settled(vec![
                event(create, &["api.yaml"]),
                event(data, &["api.yaml"]),
                event(closed, &["api.yaml"])
            ])
            .0
        );
        // An editor's save: the old file moved aside, a new one written.
        assert!(
            !settled(vec![
                event(from, &["api.yaml"]),
                event(to, &["api.yaml~"]),
                event(create, &["api.yaml"]),
                event(closed, &["api.yaml"])
            ])
            .0
        );
        // A removal may be the first half of a replacement.
        assert!(!settled(vec![event(removed, &["api.yaml"])]).0);
        // A ConfigMap's `..data` swap is not a manifest: it still settles.
        assert!(
            !settled(vec![
                event(create, &["..data_tmp"]),
                event(from, &["..data_tmp"]),
                event(to, &["..data"])
            ])
            .0
        );
        // A rename in place after a write to the same manifest: the write
        // may belong to something else still under way.
        assert!(!settled(vec![event(data, &["api.yaml"]), event(to, &["api.yaml"])]).0);
    }
}
