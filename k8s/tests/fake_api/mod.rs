//! A small stateful API server for the HA tests (Lease, CA Secret, webhook
//! configurations), reached through a real `kube::Client` over
//! `tower_test::mock::pair`, so requests and answers use the real wire
//! format.
//!
//! It keeps what the apiserver keeps for these calls: objects by path, one
//! revision counter stamped into `metadata.resourceVersion`, conditional
//! writes (a PUT or PATCH naming a stale resourceVersion gets 409 Conflict),
//! create-if-absent (POST of an existing name gets 409 AlreadyExists), and a
//! strategic merge patch for webhook configurations (`webhooks` merged by
//! `name`). Every request is recorded; faults can be queued per method.

#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use http::{Method, Request, Response};
use kube::client::Body;
use serde_json::{Value, json};

#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub content_type: Option<String>,
    pub body: Option<Value>,
}

struct Fault {
    method: Method,
    code: u16,
    /// What another actor wrote at that moment (the race the fault models).
    install: Option<(String, Value)>,
}

#[derive(Default)]
struct State {
    objects: BTreeMap<String, Value>,
    revision: u64,
    seen: Vec<Seen>,
    /// Answers queued for the next requests of a method, before the store
    /// is consulted.
    faults: VecDeque<Fault>,
}

#[derive(Clone, Default)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
}

impl FakeApi {
    pub fn new() -> Self {
        FakeApi::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A client whose requests this fake answers (in a spawned task).
    pub fn client(&self) -> kube::Client {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api = self.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let response = api.serve(request).await;
                send.send_response(response);
            }
        });
        kube::Client::new(service, "default")
    }

    /// Puts an object in place (as another actor would), with a fresh
    /// resourceVersion.
    pub fn insert(&self, path: &str, mut object: Value) {
        let mut state = self.lock();
        state.revision += 1;
        object["metadata"]["resourceVersion"] = json!(state.revision.to_string());
        state.objects.insert(path.to_string(), object);
    }

    pub fn object(&self, path: &str) -> Option<Value> {
        self.lock().objects.get(path).cloned()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.lock().seen.clone()
    }

    pub fn count(&self, method: &Method, path: &str) -> usize {
        self.lock()
            .seen
            .iter()
            .filter(|s| s.method == *method && s.path == path)
            .count()
    }

    /// The next request with `method` gets `code` instead of its answer.
    pub fn fail_next(&self, method: Method, code: u16) {
        self.lock().faults.push_back(Fault {
            method,
            code,
            install: None,
        });
    }

    /// Like [`FakeApi::fail_next`], and at that moment `object` is written
    /// at `path` (another writer won the race).
    pub fn fail_next_with(&self, method: Method, code: u16, path: &str, object: Value) {
        self.lock().faults.push_back(Fault {
            method,
            code,
            install: Some((path.to_string(), object)),
        });
    }

    async fn serve(&self, request: Request<Body>) -> Response<Body> {
        let (parts, body) = request.into_parts();
        let bytes = body.collect_bytes().await.unwrap_or_default();
        let body: Option<Value> = serde_json::from_slice(&bytes).ok();
        let path = parts.uri.path().to_string();
        let mut state = self.lock();
        state.seen.push(Seen {
            method: parts.method.clone(),
            path: path.clone(),
            content_type: parts
                .headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .map(String::from),
            body: body.clone(),
        });
        if let Some(i) = state.faults.iter().position(|f| f.method == parts.method)
            && let Some(fault) = state.faults.remove(i)
        {
            if let Some((path, mut object)) = fault.install {
                state.revision += 1;
                object["metadata"]["resourceVersion"] = json!(state.revision.to_string());
                state.objects.insert(path, object);
            }
            let code = fault.code;
            return status(code, "Injected", &format!("injected failure {code}"));
        }
        match parts.method {
            Method::GET => match state.objects.get(&path) {
                Some(object) => ok(200, object),
                None => status(404, "NotFound", &format!("{path} not found")),
            },
            Method::POST => {
                let Some(mut object) = body else {
                    return status(400, "BadRequest", "no body");
                };
                let name = object["metadata"]["name"].as_str().unwrap_or_default();
                let path = format!("{path}/{name}");
                if state.objects.contains_key(&path) {
                    return status(409, "AlreadyExists", &format!("{path} already exists"));
                }
                state.revision += 1;
                object["metadata"]["resourceVersion"] = json!(state.revision.to_string());
                state.objects.insert(path, object.clone());
                ok(201, &object)
            }
            Method::PUT => {
                let Some(mut object) = body else {
                    return status(400, "BadRequest", "no body");
                };
                let Some(current) = state.objects.get(&path) else {
                    return status(404, "NotFound", &format!("{path} not found"));
                };
                if object["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"] {
                    return status(409, "Conflict", "the object has been modified");
                }
                state.revision += 1;
                object["metadata"]["resourceVersion"] = json!(state.revision.to_string());
                state.objects.insert(path, object.clone());
                ok(200, &object)
            }
            Method::PATCH => {
                let Some(mut patch) = body else {
                    return status(400, "BadRequest", "no body");
                };
                let Some(current) = state.objects.get(&path).cloned() else {
                    return status(404, "NotFound", &format!("{path} not found"));
                };
                if let Some(version) = patch["metadata"]
                    .as_object_mut()
                    .and_then(|m| m.remove("resourceVersion"))
                    && version != current["metadata"]["resourceVersion"]
                {
                    return status(409, "Conflict", "the object has been modified");
                }
                let mut merged = current;
                strategic_merge(&mut merged, &patch);
                state.revision += 1;
                merged["metadata"]["resourceVersion"] = json!(state.revision.to_string());
                state.objects.insert(path, merged.clone());
                ok(200, &merged)
            }
            _ => status(405, "MethodNotAllowed", "not supported by the fake"),
        }
    }
}

/// JSON merge, except that lists of objects with a `name` (the webhooks of
/// a webhook configuration) merge item by item, as the apiserver's
/// strategic merge patch does for them.
fn strategic_merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => {
            for (key, value) in patch {
                match target.get_mut(key) {
                    Some(existing) if !value.is_null() => strategic_merge(existing, value),
                    _ if value.is_null() => {
                        target.remove(key);
                    }
                    _ => {
                        target.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (Value::Array(target), Value::Array(patch))
            if patch.iter().all(|p| p["name"].is_string()) =>
        {
            for item in patch {
                match target.iter_mut().find(|t| t["name"] == item["name"]) {
                    Some(existing) => strategic_merge(existing, item),
                    None => target.push(item.clone()),
                }
            }
        }
        (target, patch) => *target = patch.clone(),
    }
}

fn ok(code: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap_or_default()))
        .expect("a valid response")
}

/// A Kubernetes `Status` error as the apiserver sends it.
pub fn status(code: u16, reason: &str, message: &str) -> Response<Body> {
    ok(
        code,
        &json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code
        }),
    )
}
