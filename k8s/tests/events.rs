//! Kubernetes Events for rejected routing annotations and for config a
//! proxy rejected (NACKs), through `kube::Client` against a scripted API
//! server.
//!
//! ```text
//! errors (watch) ──> event recorder ── kube::Client ── tower_test::mock::pair
//!                                                          │ GET the object's metadata
//!                                                          │ POST events.k8s.io/v1 events
//!                                                          v
//!                                          Api: the test answers each request in turn
//! ```
//!
//! The test expects the requests one by one: "no event for an error
//! already reported" shows as the next request being about the next
//! error, not as waiting for silence.

mod scripted_api;

use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode, header};
use meshd_api::annotations::routing::{AnnotationError, Severity};
use meshd_controlplane::discovery::file;
use meshd_controlplane::discovery::index::Index;
use meshd_controlplane::model::Mesh;
use meshd_controlplane::translate::TranslateOptions;
use meshd_controlplane::xds::{ProxyNack, ServerState, spawn_publisher};
use meshd_k8s::events::{
    self, REASON_INVALID, REASON_NACK, REASON_RESOLVED, REASON_WARNING, REASON_WARNING_CLEARED,
};
use scripted_api::{Api, WAIT, body_json, client, json_response};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::timeout;

impl Api {
    /// Expects a metadata GET of `path`; answers with `uid`, or 404 when
    /// `None`.
    async fn expect_get(&mut self, path: &str, uid: Option<&str>) {
        let (request, respond) = self.next().await;
        assert_eq!(request.method(), Method::GET, "{}", request.uri());
        assert_eq!(request.uri().path(), path);
        let accept = request.headers()[header::ACCEPT]
            .to_str()
            .unwrap_or_default();
        assert!(accept.contains("as=PartialObjectMetadata"), "{accept}");
        let name = path.rsplit('/').next().unwrap_or_default();
        respond.send_response(match uid {
            Some(uid) => json_response(
                StatusCode::OK,
                &json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                        "metadata": {"name": name, "uid": uid, "resourceVersion": "42"}}),
            ),
            None => json_response(
                StatusCode::NOT_FOUND,
                &json!({"apiVersion": "v1", "kind": "Status", "status": "Failure",
                        "reason": "NotFound", "code": 404, "message": format!("{name} not found")}),
            ),
        });
    }

    /// Expects an event POSTed in `namespace`; answers 201 and returns it.
    async fn expect_event(&mut self, namespace: &str) -> Value {
        let (request, respond) = self.next().await;
        assert_eq!(request.method(), Method::POST, "{}", request.uri());
        assert_eq!(
            request.uri().path(),
            format!("/apis/events.k8s.io/v1/namespaces/{namespace}/events")
        );
        let mut event = body_json(request).await;
        let mut created = event.clone();
        created["metadata"]["name"] = json!("created.1");
        respond.send_response(json_response(StatusCode::CREATED, &created));
        event
            .as_object_mut()
            .expect("an object")
            .remove("eventTime")
            .expect("eventTime is set (required for events.k8s.io/v1)");
        event
    }
}

fn timeout_error(object: &str, value: &str) -> AnnotationError {
    AnnotationError {
        severity: Severity::Rejected,
        object: object.into(),
        annotation: "meshd.io/timeout".into(),
        value: value.into(),
        message: format!("`{value}` is not a duration; accepted: a duration"),
    }
}

/// What the control plane says of a rule that names identities while its
/// value is in force and the Service's pods accept plaintext.
fn plaintext_warning() -> AnnotationError {
    AnnotationError {
        severity: Severity::Warning,
        object: "Service shop/reviews".into(),
        annotation: "meshd.io/deny".into(),
        value: "shop/legacy".into(),
        message:
            "names callers by their mTLS identity, but pods behind this Service accept plaintext"
                .into(),
    }
}

fn regarding(kind: &str, namespace: Option<&str>, name: &str, uid: &str) -> Value {
    let mut reference = json!({"apiVersion": "v1", "kind": kind, "name": name,
                               "uid": uid, "resourceVersion": "42"});
    if let Some(namespace) = namespace {
        reference["namespace"] = json!(namespace);
    }
    reference
}

#[tokio::test]
async fn a_new_error_is_one_warning_on_its_object_and_is_not_repeated() {
    let (client, mut api) = client();
    let (errors, rx) = watch::channel(vec![timeout_error("Service shop/reviews", "fast")]);
    let recorder = events::spawn_event_recorder(client, rx, "meshd-0".into());

    api.expect_get("/api/v1/namespaces/shop/services/reviews", Some("svc-uid"))
        .await;
    let event = api.expect_event("shop").await;
    assert_eq!(
        event,
        json!({
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            "metadata": {"generateName": "reviews.", "namespace": "shop"},
            "type": "Warning",
            "reason": REASON_INVALID,
            "action": "Validate",
            "reportingController": "meshd",
            "reportingInstance": "meshd-0",
            "regarding": regarding("Service", Some("shop"), "reviews", "svc-uid"),
            "note": "annotation meshd.io/timeout = \"fast\" is rejected, the last good routing stays: \
                     `fast` is not a duration; accepted: a duration",
        })
    );

    // The same error again (a new snapshot with the same problem): nothing.
    // Then a second error: the next request is about it alone.
    errors.send_replace(vec![timeout_error("Service shop/reviews", "fast")]);
    tokio::task::yield_now().await;
    errors.send_replace(vec![
        timeout_error("Service shop/ratings", "slow"),
        timeout_error("Service shop/reviews", "fast"),
    ]);
    api.expect_get(
        "/api/v1/namespaces/shop/services/ratings",
        Some("ratings-uid"),
    )
    .await;
    let event = api.expect_event("shop").await;
    assert_eq!(
        event["regarding"],
        regarding("Service", Some("shop"), "ratings", "ratings-uid")
    );
    assert!(
        event["note"]
            .as_str()
            .unwrap_or_default()
            .contains("\"slow\""),
        "{event}"
    );

    // Gone: one Normal event; back again: a Warning again.
    errors.send_replace(vec![timeout_error("Service shop/ratings", "slow")]);
    api.expect_get("/api/v1/namespaces/shop/services/reviews", Some("svc-uid"))
        .await;
    let event = api.expect_event("shop").await;
    assert_eq!(event["type"], "Normal", "{event}");
    assert_eq!(event["reason"], REASON_RESOLVED, "{event}");
    assert_eq!(
        event["note"],
        "annotation meshd.io/timeout is accepted again"
    );

    errors.send_replace(vec![
        timeout_error("Service shop/ratings", "slow"),
        timeout_error("Service shop/reviews", "fast"),
    ]);
    api.expect_get("/api/v1/namespaces/shop/services/reviews", Some("svc-uid"))
        .await;
    let event = api.expect_event("shop").await;
    assert_eq!(event["type"], "Warning", "{event}");

    drop(errors);
    timeout(WAIT, recorder)
        .await
        .expect("the recorder ends with its channel")
        .expect("no panic");
}

#[tokio::test]
async fn namespace_events_go_to_default_and_deleted_objects_get_none() {
    let (client, mut api) = client();
    let (errors, rx) = watch::channel(vec![]);
    let _recorder = events::spawn_event_recorder(client, rx, "meshd-0".into());

    // Sorted, as the publisher keeps them: the Namespace before the Pod.
    let mut egress = timeout_error("Namespace shop", "x");
    egress.annotation = "meshd.io/egress".into();
    let mut pod_egress = timeout_error("Pod shop/web-0", "y");
    pod_egress.annotation = "meshd.io/egress".into();
    errors.send_replace(vec![egress, pod_egress]);

    api.expect_get("/api/v1/namespaces/shop", Some("ns-uid"))
        .await;
    let event = api.expect_event("default").await;
    assert_eq!(
        event["regarding"],
        regarding("Namespace", None, "shop", "ns-uid")
    );
    assert_eq!(event["metadata"]["generateName"], "shop.");

    // The Pod is already gone: no event for it.
    api.expect_get("/api/v1/namespaces/shop/pods/web-0", None)
        .await;
    errors.send_replace(vec![timeout_error("Service shop/reviews", "z")]);
    // Within one change, new problems first: the Service's.
    api.expect_get("/api/v1/namespaces/shop/services/reviews", Some("svc-uid"))
        .await;
    let event = api.expect_event("shop").await;
    assert_eq!(event["reason"], REASON_INVALID, "{event}");
    // Then the resolved ones: the Namespace's gets a Normal event...
    api.expect_get("/api/v1/namespaces/shop", Some("ns-uid"))
        .await;
    let event = api.expect_event("default").await;
    assert_eq!(event["reason"], REASON_RESOLVED, "{event}");
    // ...and the Pod's none, as the Pod does not exist.
    api.expect_get("/api/v1/namespaces/shop/pods/web-0", None)
        .await;
}

/// The wiring the server uses: the publisher's routing errors, through
/// `ServerState::watch_routing_errors`, become events.
#[tokio::test]
async fn the_publishers_routing_errors_become_events() {
    let manifests = |timeout: &str| {
        format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: shop}}\n---\n\
             apiVersion: v1\nkind: Service\n\
             metadata: {{name: reviews, namespace: shop, annotations: {{meshd.io/timeout: '{timeout}'}}}}\n\
             spec: {{clusterIP: 198.19.0.20, ports: [{{name: http, port: 9080}}]}}\n"
        )
    };
    let mesh = |timeout: &str| -> Arc<Mesh> {
        let mut index = Index::default();
        for object in file::parse(&manifests(timeout)).expect("valid manifests") {
            index.apply(object);
        }
        Arc::new(index.mesh())
    };
    let (meshes, rx) = watch::channel(mesh("fast"));
    let state = Arc::new(ServerState::default());
    let _snapshots = spawn_publisher(
        rx,
        Duration::from_millis(10),
        state.clone(),
        TranslateOptions::default(),
    );
    let (client, mut api) = client();
    let _recorder =
        events::spawn_event_recorder(client, state.watch_routing_errors(), "meshd-0".into());

    api.expect_get("/api/v1/namespaces/shop/services/reviews", Some("svc-uid"))
        .await;
    let event = api.expect_event("shop").await;
    assert_eq!(event["reason"], REASON_INVALID, "{event}");
    let note = event["note"].as_str().unwrap_or_default();
    assert!(
        note.starts_with("annotation meshd.io/timeout = \"fast\" is rejected"),
        "{note}"
    );
    assert!(
        note.contains("accepted: a duration: whole numbers"),
        "{note}"
    );

    // Fixed: the problem is resolved, and said so.
    meshes.send_replace(mesh("5s"));
    api.expect_get("/api/v1/namespaces/shop/services/reviews", Some("svc-uid"))
        .await;
    let event = api.expect_event("shop").await;
    assert_eq!(event["reason"], REASON_RESOLVED, "{event}");
}

/// Several replicas publish the same errors; only the leader posts events.
#[tokio::test]
async fn only_the_leader_posts_events() {
    let (client, mut api) = client();
    let (errors, rx) = watch::channel(vec![timeout_error("Service shop/reviews", "fast")]);
    let (leading, leading_rx) = watch::channel(false);
    let _recorder = events::spawn_leader_event_recorder(client, rx, "meshd-1".into(), leading_rx);

    // A follower says nothing. (Absence, bounded by a short wait.)
    let quiet = Duration::from_millis(300);
    assert!(
        timeout(quiet, api.handle.next_request()).await.is_err(),
        "a follower posted an event"
    );

    leading.send_replace(true);
    api.expect_get("/api/v1/namespaces/shop/services/reviews", Some("svc-uid"))
        .await;
    let event = api.expect_event("shop").await;
    assert_eq!(event["reportingInstance"], "meshd-1", "{event}");

    // Stepped down: a new error is left to the new leader.
    leading.send_replace(false);
    errors.send_replace(vec![
        timeout_error("Service shop/ratings", "slow"),
        timeout_error("Service shop/reviews", "fast"),
    ]);
    assert!(
        timeout(quiet, api.handle.next_request()).await.is_err(),
        "a replica that stepped down posted an event"
    );

    // Leading again: what is current is reported, each error once.
    leading.send_replace(true);
    api.expect_get(
        "/api/v1/namespaces/shop/services/ratings",
        Some("ratings-uid"),
    )
    .await;
    api.expect_event("shop").await;
    api.expect_get("/api/v1/namespaces/shop/services/reviews", Some("svc-uid"))
        .await;
    api.expect_event("shop").await;
    errors.send_replace(vec![
        timeout_error("Service shop/ratings", "slow"),
        timeout_error("Service shop/reviews", "fast"),
        timeout_error("Service shop/stock", "never"),
    ]);
    api.expect_get("/api/v1/namespaces/shop/services/stock", Some("stock-uid"))
        .await;
}

fn nack(node: &str, message: &str) -> ProxyNack {
    ProxyNack {
        node_id: node.into(),
        r#type: "LDS",
        type_url: "type.googleapis.com/envoy.config.listener.v3.Listener",
        version: "00ab".into(),
        message: message.into(),
    }
}

/// A proxy's rejected config becomes one Warning on its Pod, as the API
/// server receives it; the same NACK again (another version, a reconnect)
/// posts nothing, and a Pod that is gone gets none.
#[tokio::test]
async fn a_rejected_config_is_one_warning_on_the_proxys_pod() {
    let (client, mut api) = client();
    let bad_bind = nack("web-0.shop", "cannot bind 198.18.255.254:15001");
    let (nacks, rx) = watch::channel(vec![bad_bind.clone()]);
    let recorder = events::spawn_nack_event_recorder(client, rx, "meshd-0".into());

    api.expect_get("/api/v1/namespaces/shop/pods/web-0", Some("pod-uid"))
        .await;
    let event = api.expect_event("shop").await;
    assert_eq!(
        event,
        json!({
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            "metadata": {"generateName": "web-0.", "namespace": "shop"},
            "type": "Warning",
            "reason": REASON_NACK,
            "action": "Configure",
            "reportingController": "meshd",
            "reportingInstance": "meshd-0",
            "regarding": regarding("Pod", Some("shop"), "web-0", "pod-uid"),
            "note": "the proxy rejected its LDS (type.googleapis.com/envoy.config.listener.v3.Listener) \
                     version 00ab; it keeps its last accepted config. Envoy: cannot bind 198.18.255.254:15001",
        })
    );

    // The same rejection of a newer version: the same problem, nothing.
    // A Pod already gone: nothing posted. Then a new rejection: the next
    // request is about it alone.
    let mut newer = bad_bind.clone();
    newer.version = "00ac".into();
    nacks.send_replace(vec![newer.clone()]);
    tokio::task::yield_now().await;
    nacks.send_replace(vec![newer.clone(), nack("gone-0.shop", "bad route")]);
    api.expect_get("/api/v1/namespaces/shop/pods/gone-0", None)
        .await;
    nacks.send_replace(vec![
        newer,
        nack("gone-0.shop", "bad route"),
        nack("api-0.store", "unknown cluster"),
    ]);
    api.expect_get("/api/v1/namespaces/store/pods/api-0", Some("api-uid"))
        .await;
    let event = api.expect_event("store").await;
    assert_eq!(
        event["regarding"],
        regarding("Pod", Some("store"), "api-0", "api-uid")
    );
    assert!(
        event["note"]
            .as_str()
            .unwrap_or_default()
            .ends_with("Envoy: unknown cluster"),
        "{event}"
    );

    drop(nacks);
    timeout(WAIT, recorder)
        .await
        .expect("the recorder ends with its channel")
        .expect("no panic");
}

/// An edit refused while a warning stood on the same annotation: the
/// warning is gone (its value is no longer in force) and says so, the
/// error is reported; fixed again, each turns back.
#[tokio::test]
async fn a_warning_and_an_error_on_one_annotation_are_reported_and_cleared_apart() {
    let (client, mut api) = client();
    let (problems, rx) = watch::channel(vec![plaintext_warning()]);
    let recorder = events::spawn_event_recorder(client, rx, "meshd-0".into());
    let reviews = "/api/v1/namespaces/shop/services/reviews";
    let refused = AnnotationError {
        severity: Severity::Rejected,
        object: "Service shop/reviews".into(),
        annotation: "meshd.io/deny".into(),
        value: "shop/legacy GETT".into(),
        message: "`GETT` is not a method".into(),
    };

    api.expect_get(reviews, Some("svc-uid")).await;
    assert_eq!(api.expect_event("shop").await["reason"], REASON_WARNING);

    problems.send_replace(vec![refused.clone()]);
    api.expect_get(reviews, Some("svc-uid")).await;
    let event = api.expect_event("shop").await;
    assert_eq!(
        (&event["type"], &event["reason"]),
        (&json!("Warning"), &json!(REASON_INVALID)),
        "{event}"
    );
    api.expect_get(reviews, Some("svc-uid")).await;
    let event = api.expect_event("shop").await;
    assert_eq!(
        (&event["type"], &event["reason"]),
        (&json!("Normal"), &json!(REASON_WARNING_CLEARED)),
        "{event}"
    );

    problems.send_replace(vec![plaintext_warning()]);
    api.expect_get(reviews, Some("svc-uid")).await;
    assert_eq!(api.expect_event("shop").await["reason"], REASON_WARNING);
    api.expect_get(reviews, Some("svc-uid")).await;
    assert_eq!(api.expect_event("shop").await["reason"], REASON_RESOLVED);

    drop(problems);
    timeout(WAIT, recorder)
        .await
        .expect("the recorder ends with its channel")
        .expect("no panic");
}
