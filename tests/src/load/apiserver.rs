//! A stand-in Kubernetes API server for `--source kubernetes`: `meshd run
//! --kubernetes` lists and watches the generated mesh through it over
//! plain HTTP on loopback, so an endpoint change is timed from the watch
//! event the API server sends to the last proxy's receipt, through the real
//! kube-rs watchers, the source's index and the publisher.
//!
//! It speaks what kube-apiserver speaks for these calls:
//! - list (`GET <collection>`) answers every item (no paging) with the
//!   collection's `resourceVersion`;
//! - watch (`?watch=true&resourceVersion=N`) replays the changes after `N`
//!   and then streams each new one as a JSON line (`ADDED`, `MODIFIED`);
//! - any other object (the leader Lease, the CA Secret, Events) is kept by
//!   path: `GET` answers it or 404, `POST` creates it (409 if present),
//!   `PUT` replaces it, `PATCH` merges it (JSON merge patch).
//!
//! One revision counter stamps every object's `metadata.resourceVersion`.
//! It keeps its whole change history: a load run makes a few dozen changes.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::Context;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

/// The collections the Kubernetes source watches, cluster-wide.
const WATCHED: [(&str, &str); 4] = [
    ("Namespace", "/api/v1/namespaces"),
    ("Service", "/api/v1/services"),
    ("EndpointSlice", "/apis/discovery.k8s.io/v1/endpointslices"),
    ("Pod", "/api/v1/pods"),
];

fn collection_of(kind: &str) -> Option<&'static str> {
    WATCHED.iter().find(|(k, _)| *k == kind).map(|(_, p)| *p)
}

struct Change {
    revision: u64,
    collection: &'static str,
    line: Bytes,
}

#[derive(Default)]
struct Store {
    revision: u64,
    /// Watched objects by collection, then `namespace/name`.
    watched: BTreeMap<&'static str, BTreeMap<String, Value>>,
    /// Everything else, by path.
    others: BTreeMap<String, Value>,
    history: Vec<Change>,
    watches: Vec<(
        &'static str,
        mpsc::UnboundedSender<Result<Bytes, io::Error>>,
    )>,
    /// Requests answered, by method and collection (for the report).
    requests: u64,
}

#[derive(Clone, Default)]
pub struct ApiServer {
    store: Arc<Mutex<Store>>,
}

impl ApiServer {
    pub fn new() -> Self {
        ApiServer::default()
    }

    fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Serves on a free loopback port, on a thread of its own (the
    /// coordinator blocks its runtime while it polls meshd's readiness);
    /// returns the address.
    pub fn serve(&self) -> anyhow::Result<SocketAddr> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .context("binding the stand-in API server on loopback")?;
        listener.set_nonblocking(true)?;
        let address = listener.local_addr()?;
        let app = Router::new().fallback(answer).with_state(self.clone());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("apiserver".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let served = match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => axum::serve(listener, app).await,
                        Err(e) => Err(e),
                    };
                    if let Err(e) = served {
                        eprintln!("meshd-load: the stand-in API server stopped: {e}");
                    }
                })
            })?;
        Ok(address)
    }

    /// Creates or replaces objects of the watched kinds, as one writer
    /// would, one after another; an object equal to the stored one is no
    /// change. Open watches get each change at once. Returns how many
    /// objects changed.
    pub fn apply(&self, objects: Vec<Value>) -> anyhow::Result<usize> {
        let mut store = self.lock();
        let mut changed = 0;
        for mut object in objects {
            let kind = object["kind"].as_str().unwrap_or_default().to_string();
            let collection = collection_of(&kind)
                .with_context(|| format!("`{kind}` is not a kind the source watches"))?;
            let key = format!(
                "{}/{}",
                object["metadata"]["namespace"].as_str().unwrap_or_default(),
                object["metadata"]["name"].as_str().unwrap_or_default()
            );
            let previous = store.watched.get(collection).and_then(|m| m.get(&key));
            let event = match previous {
                Some(previous) if same_object(previous, &object) => continue,
                Some(_) => "MODIFIED",
                None => "ADDED",
            };
            store.revision += 1;
            let revision = store.revision;
            object["metadata"]["resourceVersion"] = json!(revision.to_string());
            let mut line = serde_json::to_vec(&json!({"type": event, "object": &object}))?;
            line.push(b'\n');
            let line = Bytes::from(line);
            store
                .watches
                .retain(|(c, tx)| *c != collection || tx.send(Ok(line.clone())).is_ok());
            store.history.push(Change {
                revision,
                collection,
                line,
            });
            store
                .watched
                .entry(collection)
                .or_default()
                .insert(key, object);
            changed += 1;
        }
        Ok(changed)
    }

    /// Puts an object of another kind at its path (the CA Secret before
    /// meshd starts).
    pub fn insert(&self, path: &str, mut object: Value) {
        let mut store = self.lock();
        store.revision += 1;
        object["metadata"]["resourceVersion"] = json!(store.revision.to_string());
        store.others.insert(path.to_string(), object);
    }

    /// Requests answered so far.
    pub fn requests(&self) -> u64 {
        self.lock().requests
    }
}

/// Equal but for the server-set resourceVersion.
fn same_object(stored: &Value, new: &Value) -> bool {
    let mut stored = stored.clone();
    if let Some(meta) = stored["metadata"].as_object_mut() {
        meta.remove("resourceVersion");
    }
    stored == *new
}

fn status(code: StatusCode, reason: &str, message: String) -> Response {
    let body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    });
    (code, axum::Json(body)).into_response()
}

async fn answer(State(api): State<ApiServer>, method: Method, uri: Uri, body: Bytes) -> Response {
    // kube-rs sends `watch`, `resourceVersion`, `timeoutSeconds`, `limit`
    // and `allowWatchBookmarks`, none of which needs unescaping.
    let query: BTreeMap<&str, &str> = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .collect();
    let path = uri.path().trim_end_matches('/').to_string();
    let mut store = api.lock();
    store.requests += 1;
    if let Some(&(kind, collection)) = WATCHED.iter().find(|(_, p)| *p == path) {
        if method != Method::GET {
            return status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                format!("{method} {path}: the stand-in API server only lists and watches it"),
            );
        }
        if query
            .get("watch")
            .is_some_and(|w| *w == "true" || *w == "1")
        {
            let after: u64 = query
                .get("resourceVersion")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let (tx, rx) = mpsc::unbounded_channel();
            for change in store
                .history
                .iter()
                .filter(|c| c.collection == collection && c.revision > after)
            {
                let _ = tx.send(Ok(change.line.clone()));
            }
            store.watches.push((collection, tx));
            return Response::builder()
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from_stream(UnboundedReceiverStream::new(rx)))
                .unwrap_or_else(|e| {
                    status(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "InternalError",
                        e.to_string(),
                    )
                });
        }
        let items: Vec<&Value> = store
            .watched
            .get(collection)
            .map(|m| m.values().collect())
            .unwrap_or_default();
        let api_version = if kind == "EndpointSlice" {
            "discovery.k8s.io/v1"
        } else {
            "v1"
        };
        let list = json!({
            "kind": format!("{kind}List"),
            "apiVersion": api_version,
            "metadata": {"resourceVersion": store.revision.to_string()},
            "items": items,
        });
        return axum::Json(list).into_response();
    }

    let parse = || serde_json::from_slice::<Value>(&body);
    match method {
        Method::GET => match store.others.get(&path) {
            Some(object) => axum::Json(object.clone()).into_response(),
            None => status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("{path} not found"),
            ),
        },
        Method::POST => {
            let Ok(mut object) = parse() else {
                return status(StatusCode::BAD_REQUEST, "BadRequest", "not JSON".into());
            };
            // Events are named by the client, or generated.
            let name = match object["metadata"]["name"].as_str() {
                Some(name) => name.to_string(),
                None => {
                    let generated = format!(
                        "{}{}",
                        object["metadata"]["generateName"]
                            .as_str()
                            .unwrap_or("object-"),
                        store.revision + 1
                    );
                    object["metadata"]["name"] = json!(generated);
                    generated
                }
            };
            let at = format!("{path}/{name}");
            if store.others.contains_key(&at) {
                return status(
                    StatusCode::CONFLICT,
                    "AlreadyExists",
                    format!("{at} already exists"),
                );
            }
            store.revision += 1;
            object["metadata"]["resourceVersion"] = json!(store.revision.to_string());
            store.others.insert(at, object.clone());
            (StatusCode::CREATED, axum::Json(object)).into_response()
        }
        Method::PUT => {
            let Ok(mut object) = parse() else {
                return status(StatusCode::BAD_REQUEST, "BadRequest", "not JSON".into());
            };
            let current = store
                .others
                .get(&path)
                .map(|o| o["metadata"]["resourceVersion"].clone());
            let named = object["metadata"]["resourceVersion"].clone();
            if let Some(current) = current
                && !named.is_null()
                && named != current
            {
                return status(
                    StatusCode::CONFLICT,
                    "Conflict",
                    format!("{path}: the object has been modified"),
                );
            }
            store.revision += 1;
            object["metadata"]["resourceVersion"] = json!(store.revision.to_string());
            store.others.insert(path, object.clone());
            axum::Json(object).into_response()
        }
        Method::PATCH => {
            let Ok(patch) = parse() else {
                return status(StatusCode::BAD_REQUEST, "BadRequest", "not JSON".into());
            };
            let revision = store.revision + 1;
            let Some(object) = store.others.get_mut(&path) else {
                return status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    format!("{path} not found"),
                );
            };
            merge(object, &patch);
            object["metadata"]["resourceVersion"] = json!(revision.to_string());
            let object = object.clone();
            store.revision = revision;
            axum::Json(object).into_response()
        }
        _ => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{method} {path}"),
        ),
    }
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(target), Some(patch)) => {
            for (key, value) in patch {
                if value.is_null() {
                    target.remove(key);
                } else {
                    merge(target.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

/// A kubeconfig that points kube-rs at the stand-in server.
pub fn kubeconfig(address: SocketAddr, namespace: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: load\n  cluster: {{server: \"http://{address}\"}}\nusers:\n- name: load\n  user: {{token: load}}\ncontexts:\n- name: load\n  context: {{cluster: load, user: load, namespace: {namespace}}}\ncurrent-context: load\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_replaces_removes_and_adds() {
        let mut object = json!({"a": {"b": 1, "c": 2}, "d": [1]});
        merge(&mut object, &json!({"a": {"b": null, "e": 3}, "d": [2]}));
        assert_eq!(object, json!({"a": {"c": 2, "e": 3}, "d": [2]}));
    }

    #[test]
    fn an_unchanged_object_is_no_change() {
        let api = ApiServer::new();
        let service = json!({"kind": "Service", "metadata": {"name": "a", "namespace": "n"}});
        assert_eq!(api.apply(vec![service.clone()]).unwrap(), 1);
        assert_eq!(api.apply(vec![service.clone()]).unwrap(), 0);
        let mut changed = service;
        changed["spec"] = json!({"clusterIP": "10.0.0.1"});
        assert_eq!(api.apply(vec![changed]).unwrap(), 1);
        assert_eq!(api.lock().history.len(), 2);
    }
}
