//! Gateway API route status: the leader writes each HTTPRoute's and
//! GRPCRoute's `status.parents` entries of our controller, so
//! `kubectl get httproute -o yaml` says whether the route applies to its
//! Service parents and why not.
//!
//! ```text
//! snapshots ──> MeshRoutes.statuses ──> writer (leader only)
//!                                        │ status changed since this replica wrote it?
//!                                        │   GET  …/httproutes/NAME/status
//!                                        │   parents = other controllers' entries + ours
//!                                        │   PATCH …/httproutes/NAME/status (merge patch,
//!                                        │         metadata.resourceVersion: 409 ──> GET again)
//!                                        v
//!                                      written: what each route was last given
//! ```
//!
//! The mesh changes with every endpoint, route statuses rarely: a new
//! `MeshRoutes` that is the same `Arc` as the last is skipped at once, and
//! a route whose status equals what this replica last wrote is not read
//! nor written again. Routes are written one at a time. A replica that
//! becomes the leader writes every route once (it cannot know what its
//! predecessor wrote), but only where the object says something else.
//!
//! Entries of other controllers (a Gateway implementation's, for a
//! Gateway parent) are kept as they are; ours for a Service the route no
//! longer names are removed. A condition keeps its `lastTransitionTime`
//! while its status stays the same.
//!
//! A route that is gone (404) is skipped: its deletion reaches discovery
//! soon. Other failures are logged at warn once per route and kind of
//! error, and the route is tried again at the next change or after
//! [`RETRY_AFTER`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

use meshd_api::gateway::{CONTROLLER_NAME, RouteKey, RouteKind};
use meshd_controlplane::model::{MeshRoutes, RouteStatus};

/// The Gateway API group.
pub const GROUP: &str = "gateway.networking.k8s.io";
/// The version status is written through.
pub const VERSION: &str = "v1";
/// How many times a write that lost a race (409) is tried with a fresh
/// read before it is left for the next change.
pub const CONFLICT_ATTEMPTS: usize = 3;
/// When routes failed to be written and nothing changes, how long until
/// they are tried again.
pub const RETRY_AFTER: Duration = Duration::from_secs(60);
/// The CRD's `maxItems` for `status.parents`.
const MAX_STATUS_PARENTS: usize = 32;

/// The resource of a route kind, built here: the `gateway-api` crate's
/// `Resource` impls are for another kube version.
pub fn route_resource(kind: RouteKind) -> ApiResource {
    ApiResource {
        group: GROUP.into(),
        version: VERSION.into(),
        api_version: format!("{GROUP}/{VERSION}"),
        kind: kind.as_str().into(),
        plural: kind.plural().into(),
    }
}

/// Writes route status while `leading` is true, from the routes `routes`
/// finds in each value of `source` (the control plane's snapshots), until
/// `source` or `leading` closes.
pub fn spawn_leader_route_status_writer<T, F>(
    client: Client,
    source: watch::Receiver<T>,
    routes: F,
    mut leading: watch::Receiver<bool>,
) -> JoinHandle<()>
where
    T: Send + Sync + 'static,
    F: Fn(&T) -> Arc<MeshRoutes> + Send + Sync + 'static,
{
    tokio::spawn(
        async move {
            loop {
                if leading.wait_for(|leader| *leader).await.is_err() {
                    return;
                }
                // A new writer each term: what was written before may
                // have been overwritten by another leader since.
                let writer = RouteStatusWriter::new(client.clone());
                tokio::select! {
                    () = writer.run(source.clone(), &routes) => return,
                    stepped_down = leading.wait_for(|leader| !*leader) => {
                        if stepped_down.is_err() {
                            return;
                        }
                    }
                }
            }
        }
        .instrument(tracing::info_span!("route_status")),
    )
}

/// What one write did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Written,
    /// The object already said so.
    Unchanged,
    /// The route does not exist (any more).
    Gone,
}

/// Remembers what each route was last given, so it is written once per
/// change.
pub struct RouteStatusWriter {
    client: Client,
    last: Option<Arc<MeshRoutes>>,
    written: BTreeMap<RouteKey, RouteStatus>,
    /// Which (route, kind of error) has been logged at warn.
    warned: BTreeSet<(RouteKey, String)>,
}

impl RouteStatusWriter {
    pub fn new(client: Client) -> Self {
        RouteStatusWriter {
            client,
            last: None,
            written: BTreeMap::new(),
            warned: BTreeSet::new(),
        }
    }

    /// Writes the current statuses, then every change, until `source`
    /// closes.
    pub async fn run<T>(
        mut self,
        mut source: watch::Receiver<T>,
        routes: impl Fn(&T) -> Arc<MeshRoutes>,
    ) {
        loop {
            let current = routes(&source.borrow_and_update());
            let failed = self.observe(&current).await;
            if failed {
                tokio::select! {
                    changed = source.changed() => if changed.is_err() { return },
                    () = tokio::time::sleep(RETRY_AFTER) => self.last = None,
                }
            } else if source.changed().await.is_err() {
                return;
            }
        }
    }

    /// Writes the status of every route whose status is not what this
    /// writer last wrote for it. Returns whether a write failed.
    pub async fn observe(&mut self, routes: &Arc<MeshRoutes>) -> bool {
        if self
            .last
            .as_ref()
            .is_some_and(|last| Arc::ptr_eq(last, routes))
        {
            return false;
        }
        self.last = Some(routes.clone());
        // A route that comes back (deleted and created again) is written.
        self.written
            .retain(|key, _| routes.statuses.contains_key(key));
        self.warned
            .retain(|(key, _)| routes.statuses.contains_key(key));
        let mut failed = false;
        for (key, status) in &routes.statuses {
            if self.written.get(key) == Some(status) {
                continue;
            }
            match self.write(key, status).await {
                Ok(outcome) => {
                    tracing::debug!(route = %key, ?outcome, "route status");
                    self.written.insert(key.clone(), status.clone());
                    self.warned.retain(|(k, _)| k != key);
                }
                Err(e) => {
                    failed = true;
                    self.written.remove(key);
                    if self.warned.insert((key.clone(), error_kind(&e))) {
                        tracing::warn!(route = %key, "cannot write the route's status (tried again at the next change, or in {}s): {e}", RETRY_AFTER.as_secs());
                    } else {
                        tracing::debug!(route = %key, "cannot write the route's status: {e}");
                    }
                }
            }
        }
        failed
    }

    /// Reads the route, and writes our entries if they differ; a lost race
    /// is tried again with a fresh read, [`CONFLICT_ATTEMPTS`] times.
    async fn write(&self, key: &RouteKey, status: &RouteStatus) -> kube::Result<Outcome> {
        let api: Api<DynamicObject> = Api::namespaced_with(
            self.client.clone(),
            &key.namespace,
            &route_resource(key.kind),
        );
        let mut attempt = 1;
        loop {
            let route = match api.get_status(&key.name).await {
                Ok(route) => route,
                Err(e) if is_status(&e, 404) => return Ok(Outcome::Gone),
                Err(e) => return Err(e),
            };
            let now = serde_json::to_value(Time(k8s_openapi::jiff::Timestamp::now()))
                .unwrap_or(Value::Null);
            let Some(patch) = status_patch(&route, key, status, &now) else {
                return Ok(Outcome::Unchanged);
            };
            match api
                .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => return Ok(Outcome::Written),
                Err(e) if is_status(&e, 404) => return Ok(Outcome::Gone),
                Err(e) if is_status(&e, 409) && attempt < CONFLICT_ATTEMPTS => {
                    tracing::debug!(route = %key, "the route changed under us (409 Conflict); reading it again");
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// The merge patch that gives `route` our entries for `status` (other
/// controllers' entries kept, ours replaced), carrying the route's
/// `resourceVersion`; `None` when the route already says so. `now` is the
/// `lastTransitionTime` of a condition whose status changes.
pub fn status_patch(
    route: &DynamicObject,
    key: &RouteKey,
    status: &RouteStatus,
    now: &Value,
) -> Option<Value> {
    let current: &[Value] = route
        .data
        .pointer("/status/parents")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice);
    let (mine, others): (Vec<&Value>, Vec<&Value>) = current
        .iter()
        .partition(|entry| entry["controllerName"] == CONTROLLER_NAME);
    let mut parents: Vec<Value> = others.into_iter().cloned().collect();
    let room = MAX_STATUS_PARENTS.saturating_sub(parents.len());
    let Value::Array(ours) = status.parents_json() else {
        return None;
    };
    if ours.len() > room {
        tracing::debug!(route = %key, "status.parents holds {MAX_STATUS_PARENTS} entries at most: {} of ours left out", ours.len() - room);
    }
    for mut entry in ours.into_iter().take(room) {
        let before = mine
            .iter()
            .find(|m| parent_of(&m["parentRef"], key) == parent_of(&entry["parentRef"], key));
        if let Some(Value::Array(conditions)) = entry.get_mut("conditions") {
            for condition in conditions {
                let object = condition.as_object_mut()?;
                if object.get("observedGeneration") == Some(&Value::Null) {
                    object.remove("observedGeneration");
                }
                let kept = before
                    .and_then(|b| b["conditions"].as_array())
                    .and_then(|cs| cs.iter().find(|c| c["type"] == object["type"]))
                    .filter(|c| c["status"] == object["status"])
                    .and_then(|c| c.get("lastTransitionTime"))
                    .filter(|t| t.is_string());
                object.insert(
                    "lastTransitionTime".into(),
                    kept.cloned().unwrap_or_else(|| now.clone()),
                );
            }
        }
        parents.push(entry);
    }
    if parents.as_slice() == current {
        return None;
    }
    let mut patch = json!({"status": {"parents": parents}});
    if let Some(version) = &route.metadata.resource_version {
        // Optimistic concurrency: a write in between (another controller's
        // entries) makes this one fail with 409 rather than erase it.
        patch["metadata"] = json!({"resourceVersion": version});
    }
    Some(patch)
}

/// A Service `parentRef` as (namespace, name, port), the namespace
/// defaulted to the route's; `None` for other kinds.
fn parent_of<'a>(
    parent_ref: &'a Value,
    key: &'a RouteKey,
) -> Option<(&'a str, &'a str, Option<u64>)> {
    let group = parent_ref["group"].as_str().unwrap_or("");
    let kind = parent_ref["kind"].as_str().unwrap_or("");
    if !group.is_empty() || kind != "Service" {
        return None;
    }
    Some((
        parent_ref["namespace"].as_str().unwrap_or(&key.namespace),
        parent_ref["name"].as_str()?,
        parent_ref["port"].as_u64(),
    ))
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == code)
}

/// What makes two failures the same for logging: the HTTP status and
/// reason, or the kind of client error.
fn error_kind(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => format!("{} {}", status.code, status.reason),
        other => {
            let text = format!("{other:?}");
            text.split(['(', ' ', '{'])
                .next()
                .unwrap_or_default()
                .to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshd_controlplane::model::{Condition, ParentRef, ParentStatus};

    fn key() -> RouteKey {
        RouteKey {
            kind: RouteKind::Http,
            namespace: "shop".into(),
            name: "reviews".into(),
        }
    }

    fn status(accepted: bool) -> RouteStatus {
        RouteStatus {
            generation: Some(2),
            parents: vec![ParentStatus {
                parent: ParentRef {
                    namespace: "shop".into(),
                    name: "reviews".into(),
                    port: None,
                },
                accepted: Condition {
                    status: accepted,
                    reason: if accepted {
                        "Accepted"
                    } else {
                        "NoMatchingParent"
                    }
                    .into(),
                    message: "m".into(),
                },
                resolved_refs: Condition {
                    status: true,
                    reason: "ResolvedRefs".into(),
                    message: "r".into(),
                },
            }],
        }
    }

    fn route(parents: Value) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "reviews", "namespace": "shop", "resourceVersion": "7"},
            "status": {"parents": parents},
        }))
        .expect("a route")
    }

    #[test]
    fn a_condition_keeps_its_transition_time_while_its_status_holds() {
        let now = json!("2026-12-04T10:00:00Z");
        let first = status_patch(&route(json!([])), &key(), &status(true), &now).expect("a patch");
        assert_eq!(first["metadata"]["resourceVersion"], "7");
        let written = first["status"]["parents"].clone();
        assert_eq!(written[0]["conditions"][0]["lastTransitionTime"], now);
        // Written already: nothing to do.
        let later = json!("2026-12-04T11:00:00Z");
        assert_eq!(
            status_patch(&route(written.clone()), &key(), &status(true), &later),
            None
        );
        // Accepted turns False: its time moves, ResolvedRefs' stays.
        let second =
            status_patch(&route(written), &key(), &status(false), &later).expect("a patch");
        let conditions = &second["status"]["parents"][0]["conditions"];
        assert_eq!(conditions[0]["lastTransitionTime"], later);
        assert_eq!(conditions[1]["lastTransitionTime"], now);
        assert_eq!(conditions[0]["observedGeneration"], 2);
    }

    #[test]
    fn no_generation_is_left_out_rather_than_null() {
        let mut s = status(true);
        s.generation = None;
        let patch = status_patch(&route(json!([])), &key(), &s, &json!("t")).expect("a patch");
        let condition = patch["status"]["parents"][0]["conditions"][0]
            .as_object()
            .expect("an object");
        assert!(
            !condition.contains_key("observedGeneration"),
            "{condition:?}"
        );
    }
}
