//! Gateway API route status, written by the leader through `kube::Client`
//! against a scripted API server.
//!
//! ```text
//! MeshRoutes (watch) ──> status writer ── kube::Client ── tower_test::mock::pair
//!                                                            │ GET   …/httproutes/NAME/status
//!                                                            │ PATCH …/httproutes/NAME/status
//!                                                            v
//!                                            Api: the test answers each request in turn
//! ```
//!
//! "Not written again" shows as the next request being about the next
//! change, not as waiting for silence.

mod scripted_api;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode, header};
use meshd_api::gateway::{CONTROLLER_NAME, RouteKey, RouteKind};
use meshd_controlplane::discovery::file;
use meshd_controlplane::discovery::index::Index;
use meshd_controlplane::model::{
    Condition, Mesh, MeshRoutes, ParentRef, ParentStatus, RouteStatus,
};
use meshd_controlplane::translate::{Snapshot, TranslateOptions};
use meshd_controlplane::xds::{ServerState, spawn_publisher};
use meshd_k8s::route_status;
use scripted_api::{Api, api_error, body_json, client, json_response};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::timeout;

fn status_path(kind: RouteKind, name: &str) -> String {
    format!(
        "/apis/gateway.networking.k8s.io/v1/namespaces/shop/{}/{name}/status",
        kind.plural()
    )
}

/// The route object as the API server has it.
fn route_object(kind: RouteKind, name: &str, version: &str, parents: &Value) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": kind.as_str(),
        "metadata": {"name": name, "namespace": "shop", "resourceVersion": version, "generation": 3},
        "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "reviews", "port": 9080}]},
        "status": {"parents": parents},
    })
}

impl Api {
    /// Expects a GET of the route's status; answers with the route holding
    /// `parents`, or 404 when `None`.
    async fn expect_get(&mut self, kind: RouteKind, name: &str, answer: Option<(&str, &Value)>) {
        let (request, respond) = self.next().await;
        assert_eq!(request.method(), Method::GET, "{}", request.uri());
        assert_eq!(request.uri().path(), status_path(kind, name));
        respond.send_response(match answer {
            Some((version, parents)) => {
                json_response(StatusCode::OK, &route_object(kind, name, version, parents))
            }
            None => api_error(404, "NotFound"),
        });
    }

    /// Expects a merge PATCH of the route's status; answers `code` and
    /// returns the patch.
    async fn expect_patch(&mut self, kind: RouteKind, name: &str, code: u16) -> Value {
        let (request, respond) = self.next().await;
        assert_eq!(request.method(), Method::PATCH, "{}", request.uri());
        assert_eq!(request.uri().path(), status_path(kind, name));
        assert_eq!(
            request.headers()[header::CONTENT_TYPE],
            "application/merge-patch+json"
        );
        let patch = body_json(request).await;
        respond.send_response(if code == 200 {
            json_response(
                StatusCode::OK,
                &route_object(kind, name, "100", &patch["status"]["parents"]),
            )
        } else {
            api_error(code, "Conflict")
        });
        patch
    }
}

fn key(kind: RouteKind, name: &str) -> RouteKey {
    RouteKey {
        kind,
        namespace: "shop".into(),
        name: name.into(),
    }
}

fn condition(status: bool, reason: &str) -> Condition {
    Condition {
        status,
        reason: reason.into(),
        message: format!("{reason} message"),
    }
}

/// A route with one Service parent, shop/reviews:9080.
fn route_status(accepted: bool, resolved: bool) -> RouteStatus {
    RouteStatus {
        generation: Some(3),
        parents: vec![ParentStatus {
            parent: ParentRef {
                namespace: "shop".into(),
                name: "reviews".into(),
                port: Some(9080),
            },
            accepted: if accepted {
                condition(true, "Accepted")
            } else {
                condition(false, "NoMatchingParent")
            },
            resolved_refs: if resolved {
                condition(true, "ResolvedRefs")
            } else {
                condition(false, "BackendNotFound")
            },
        }],
    }
}

fn routes(statuses: &[(RouteKey, RouteStatus)]) -> Arc<MeshRoutes> {
    let mut routes = MeshRoutes::default();
    routes.statuses = statuses.iter().cloned().collect::<BTreeMap<_, _>>();
    Arc::new(routes)
}

/// A Gateway implementation's entry, which must survive our writes.
fn gateway_entry() -> Value {
    json!({
        "parentRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "edge"},
        "controllerName": "example.com/gateway-controller",
        "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted",
                        "message": "", "observedGeneration": 3,
                        "lastTransitionTime": "2026-01-01T00:00:00Z"}],
    })
}

fn spawn(
    client: kube::Client,
    statuses: watch::Receiver<Arc<MeshRoutes>>,
    leading: bool,
) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let (leader, leading) = watch::channel(leading);
    let writer =
        route_status::spawn_leader_route_status_writer(client, statuses, Arc::clone, leading);
    (leader, writer)
}

#[tokio::test]
async fn our_conditions_are_written_beside_another_controllers_entry_and_once() {
    let (client, mut api) = client();
    let http = key(RouteKind::Http, "reviews");
    let (mesh, rx) = watch::channel(routes(&[(http.clone(), route_status(true, true))]));
    let (_leader, _writer) = spawn(client, rx, true);

    // On the object: the Gateway's entry; ours for this Service with
    // Accepted True since January and ResolvedRefs False; ours for a
    // Service the route no longer names.
    let ours_before = json!([
        {
            "parentRef": {"group": "", "kind": "Service", "namespace": "shop", "name": "reviews", "port": 9080},
            "controllerName": CONTROLLER_NAME,
            "conditions": [
                {"type": "Accepted", "status": "True", "reason": "Accepted", "message": "old",
                 "observedGeneration": 2, "lastTransitionTime": "2026-01-02T00:00:00Z"},
                {"type": "ResolvedRefs", "status": "False", "reason": "BackendNotFound", "message": "old",
                 "observedGeneration": 2, "lastTransitionTime": "2026-01-02T00:00:00Z"},
            ],
        },
        {
            "parentRef": {"group": "", "kind": "Service", "name": "dropped"},
            "controllerName": CONTROLLER_NAME,
            "conditions": [],
        },
    ]);
    let mut before = vec![gateway_entry()];
    before.extend(ours_before.as_array().expect("a list").iter().cloned());
    api.expect_get(
        RouteKind::Http,
        "reviews",
        Some(("5", &Value::Array(before))),
    )
    .await;
    let patch = api.expect_patch(RouteKind::Http, "reviews", 200).await;
    assert_eq!(
        patch["metadata"],
        json!({"resourceVersion": "5"}),
        "{patch}"
    );
    let parents = patch["status"]["parents"].as_array().expect("a list");
    assert_eq!(
        parents.len(),
        2,
        "the dropped Service's entry is gone: {patch}"
    );
    assert_eq!(parents[0], gateway_entry(), "kept as it was");
    let ours = &parents[1];
    assert_eq!(ours["controllerName"], CONTROLLER_NAME);
    assert_eq!(
        ours["parentRef"],
        json!({"group": "", "kind": "Service", "namespace": "shop", "name": "reviews", "port": 9080})
    );
    let accepted = &ours["conditions"][0];
    assert_eq!(
        (
            accepted["type"].clone(),
            accepted["status"].clone(),
            accepted["reason"].clone()
        ),
        (json!("Accepted"), json!("True"), json!("Accepted"))
    );
    assert_eq!(accepted["message"], "Accepted message");
    assert_eq!(accepted["observedGeneration"], 3);
    // Still True: the transition was in January.
    assert_eq!(accepted["lastTransitionTime"], "2026-01-02T00:00:00Z");
    let resolved = &ours["conditions"][1];
    assert_eq!(
        (
            resolved["type"].clone(),
            resolved["status"].clone(),
            resolved["reason"].clone()
        ),
        (json!("ResolvedRefs"), json!("True"), json!("ResolvedRefs"))
    );
    // False to True: now.
    let moved = resolved["lastTransitionTime"].as_str().expect("a time");
    assert!(
        moved.starts_with("20") && moved != "2026-01-02T00:00:00Z",
        "{moved}"
    );

    // A new mesh (an endpoint changed) with the same statuses: nothing.
    // Then a second route: the next request is about it alone, and it is
    // gone (404): skipped.
    let grpc = key(RouteKind::Grpc, "ratings");
    mesh.send_replace(routes(&[(http.clone(), route_status(true, true))]));
    tokio::task::yield_now().await;
    mesh.send_replace(routes(&[
        (http.clone(), route_status(true, true)),
        (grpc.clone(), route_status(true, false)),
    ]));
    api.expect_get(RouteKind::Grpc, "ratings", None).await;

    // The first route's status changes: written again, from what the
    // object holds now.
    mesh.send_replace(routes(&[
        (http.clone(), route_status(false, true)),
        (grpc.clone(), route_status(true, false)),
    ]));
    let now = patch["status"]["parents"].clone();
    api.expect_get(RouteKind::Http, "reviews", Some(("100", &now)))
        .await;
    let patch = api.expect_patch(RouteKind::Http, "reviews", 200).await;
    assert_eq!(patch["metadata"]["resourceVersion"], "100");
    let conditions = &patch["status"]["parents"][1]["conditions"];
    assert_eq!(conditions[0]["status"], "False");
    assert_eq!(conditions[0]["reason"], "NoMatchingParent");
    assert_eq!(conditions[1]["lastTransitionTime"], moved, "{patch}");
}

#[tokio::test]
async fn a_conflict_is_retried_with_a_fresh_read() {
    let (client, mut api) = client();
    let http = key(RouteKind::Http, "reviews");
    let (mesh, rx) = watch::channel(routes(&[(http.clone(), route_status(true, true))]));
    let (_leader, _writer) = spawn(client, rx, true);

    api.expect_get(RouteKind::Http, "reviews", Some(("1", &json!([]))))
        .await;
    let patch = api.expect_patch(RouteKind::Http, "reviews", 409).await;
    assert_eq!(patch["metadata"]["resourceVersion"], "1");
    assert_eq!(patch["status"]["parents"].as_array().map(Vec::len), Some(1));

    // In between, a Gateway controller wrote its entry.
    api.expect_get(
        RouteKind::Http,
        "reviews",
        Some(("2", &json!([gateway_entry()]))),
    )
    .await;
    let patch = api.expect_patch(RouteKind::Http, "reviews", 200).await;
    assert_eq!(patch["metadata"]["resourceVersion"], "2");
    let parents = patch["status"]["parents"].as_array().expect("a list");
    assert_eq!(parents.len(), 2, "{patch}");
    assert_eq!(parents[0], gateway_entry());
    assert_eq!(parents[1]["controllerName"], CONTROLLER_NAME);

    // Written: a new route is the next request.
    mesh.send_replace(routes(&[
        (http.clone(), route_status(true, true)),
        (key(RouteKind::Http, "stock"), route_status(true, true)),
    ]));
    api.expect_get(RouteKind::Http, "stock", None).await;
}

#[tokio::test]
async fn conflicts_that_go_on_are_left_for_the_next_change() {
    let (client, mut api) = client();
    let http = key(RouteKind::Http, "reviews");
    let (mesh, rx) = watch::channel(routes(&[(http.clone(), route_status(true, true))]));
    let (_leader, _writer) = spawn(client, rx, true);

    for version in 0..route_status::CONFLICT_ATTEMPTS {
        let version = version.to_string();
        api.expect_get(RouteKind::Http, "reviews", Some((&version, &json!([]))))
            .await;
        api.expect_patch(RouteKind::Http, "reviews", 409).await;
    }
    // Given up for now; the next change tries again (the route was not
    // written, so it is written with the other one).
    mesh.send_replace(routes(&[
        (http.clone(), route_status(true, true)),
        (key(RouteKind::Http, "stock"), route_status(true, true)),
    ]));
    api.expect_get(RouteKind::Http, "reviews", Some(("9", &json!([]))))
        .await;
    api.expect_patch(RouteKind::Http, "reviews", 200).await;
    api.expect_get(RouteKind::Http, "stock", None).await;
}

/// Every replica sees the same statuses; only the leader writes them.
#[tokio::test]
async fn only_the_leader_writes() {
    let (client, mut api) = client();
    let http = key(RouteKind::Http, "reviews");
    let (mesh, rx) = watch::channel(routes(&[(http.clone(), route_status(true, true))]));
    let (leader, _writer) = spawn(client, rx, false);

    // A follower writes nothing. (Absence, bounded by a short wait.)
    let quiet = Duration::from_millis(300);
    assert!(
        timeout(quiet, api.handle.next_request()).await.is_err(),
        "a follower wrote route status"
    );

    leader.send_replace(true);
    api.expect_get(RouteKind::Http, "reviews", Some(("1", &json!([]))))
        .await;
    let patch = api.expect_patch(RouteKind::Http, "reviews", 200).await;
    let written = patch["status"]["parents"].clone();

    // Stepped down: a new route is left to the new leader.
    leader.send_replace(false);
    mesh.send_replace(routes(&[
        (http.clone(), route_status(true, true)),
        (key(RouteKind::Http, "stock"), route_status(true, true)),
    ]));
    assert!(
        timeout(quiet, api.handle.next_request()).await.is_err(),
        "a replica that stepped down wrote route status"
    );

    // Leading again: every route is looked at once; the one whose object
    // already says what we would write is not written.
    leader.send_replace(true);
    api.expect_get(RouteKind::Http, "reviews", Some(("2", &written)))
        .await;
    api.expect_get(RouteKind::Http, "stock", Some(("3", &json!([]))))
        .await;
    let patch = api.expect_patch(RouteKind::Http, "stock", 200).await;
    assert_eq!(patch["metadata"]["resourceVersion"], "3");
}

/// The wiring the server uses: the publisher's snapshots carry the routes'
/// statuses; a route whose backend appears is written again, resolved.
#[tokio::test]
async fn the_publishers_route_statuses_are_written() {
    let manifests = |backend_exists: bool| {
        let mut yaml = String::from(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {name: reviews, namespace: shop}\n\
             spec: {clusterIP: 198.19.0.20, ports: [{name: http, port: 9080}]}\n---\n\
             apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
             metadata: {name: reviews, namespace: shop, generation: 3}\n\
             spec:\n  parentRefs: [{group: \"\", kind: Service, name: reviews, port: 9080}]\n  \
             rules: [{backendRefs: [{name: reviews-v2, port: 9080}]}]\n",
        );
        if backend_exists {
            yaml.push_str(
                "---\napiVersion: v1\nkind: Service\nmetadata: {name: reviews-v2, namespace: shop}\n\
                 spec: {clusterIP: 198.19.0.21, ports: [{name: http, port: 9080}]}\n",
            );
        }
        yaml
    };
    let mesh = |backend_exists: bool| -> Arc<Mesh> {
        let mut index = Index::default();
        for object in file::parse(&manifests(backend_exists)).expect("valid manifests") {
            index.apply(object);
        }
        Arc::new(index.mesh())
    };
    let (meshes, rx) = watch::channel(mesh(false));
    let snapshots = spawn_publisher(
        rx,
        Duration::from_millis(10),
        Arc::new(ServerState::default()),
        TranslateOptions::default(),
    );
    let (client, mut api) = client();
    let (_leader, leading) = watch::channel(true);
    let _writer = route_status::spawn_leader_route_status_writer(
        client,
        snapshots,
        |snapshot: &Arc<Snapshot>| snapshot.mesh.routes.clone(),
        leading,
    );

    api.expect_get(RouteKind::Http, "reviews", Some(("1", &json!([]))))
        .await;
    let patch = api.expect_patch(RouteKind::Http, "reviews", 200).await;
    let conditions = &patch["status"]["parents"][0]["conditions"];
    assert_eq!(conditions[0]["status"], "True", "{patch}");
    assert_eq!(conditions[1]["status"], "False", "{patch}");
    assert_eq!(conditions[1]["reason"], "BackendNotFound", "{patch}");
    assert_eq!(conditions[1]["observedGeneration"], 3, "{patch}");
    let written = patch["status"]["parents"].clone();

    meshes.send_replace(mesh(true));
    api.expect_get(RouteKind::Http, "reviews", Some(("2", &written)))
        .await;
    let patch = api.expect_patch(RouteKind::Http, "reviews", 200).await;
    let conditions = &patch["status"]["parents"][0]["conditions"];
    assert_eq!(conditions[1]["status"], "True", "{patch}");
    assert_eq!(conditions[1]["reason"], "ResolvedRefs", "{patch}");
    // Accepted did not change: its time is the one written first.
    assert_eq!(
        conditions[0]["lastTransitionTime"],
        written[0]["conditions"][0]["lastTransitionTime"]
    );
}
