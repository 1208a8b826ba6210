//! Routing annotations through the running control plane: the publisher
//! keeps each service's last good routing across snapshots while an edit is
//! invalid, and reports the problem on `/debug/routing` and in metrics.
//!
//! ```text
//! test ──rewrites mesh.yaml──> file source ──> publisher (RoutingIndex) ──> snapshots
//!   └── GET /debug/routing, /metrics ──────────────────────────┘
//! ```

use std::sync::Arc;
use std::time::Duration;

use meshd_controlplane::server::{ControlPlane, Options, Source};
use meshd_controlplane::translate::{Kind, Snapshot, decode};
use meshd_proto::envoy::config::route::v3::{RouteConfiguration, route};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(5);

fn registry(timeout: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Namespace
metadata: {{name: shop}}
---
apiVersion: v1
kind: Service
metadata: {{name: reviews, namespace: shop, annotations: {{meshd.io/timeout: "{timeout}"}}}}
spec: {{clusterIP: 198.19.0.1, ports: [{{name: http, port: 80}}]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: client-0, namespace: shop}}
status: {{podIP: 198.18.0.2}}
"#
    )
}

struct Harness {
    dir: tempfile::TempDir,
    cp: ControlPlane,
}

impl Harness {
    async fn start(yaml: &str) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        std::fs::write(dir.path().join("mesh.yaml"), yaml).expect("write the registry");
        let cp = ControlPlane::start(Options {
            source: Source::Files(dir.path().to_path_buf()),
            tls: None,
            xds: TcpListener::bind("127.0.0.1:0").await.expect("bind xDS"),
            debug: Some(TcpListener::bind("127.0.0.1:0").await.expect("bind debug")),
            debounce: Duration::from_millis(20),
            telemetry: Default::default(),
            authorization: Default::default(),
        })
        .await
        .expect("the control plane starts");
        Harness { dir, cp }
    }

    /// Replaces the registry in one step, so the watcher never reads half.
    fn write(&self, yaml: &str) {
        let staged = self.dir.path().join(".mesh.yaml.tmp");
        std::fs::write(&staged, yaml).expect("write the registry");
        std::fs::rename(&staged, self.dir.path().join("mesh.yaml")).expect("replace it");
    }

    /// The first snapshot (the current one included) that satisfies `done`.
    async fn snapshot_where(&self, done: impl Fn(&Snapshot) -> bool) -> Arc<Snapshot> {
        let mut rx = self.cp.snapshots.clone();
        timeout(WAIT, async {
            loop {
                let snapshot = rx.borrow_and_update().clone();
                if done(&snapshot) {
                    return snapshot;
                }
                rx.changed().await.expect("the publisher runs");
            }
        })
        .await
        .expect("the expected snapshot is published in time")
    }

    async fn get(&self, path: &str) -> String {
        let addr = self.cp.debug_addr.expect("the debug listener is on");
        let mut conn = TcpStream::connect(addr).await.expect("connect to debug");
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        conn.write_all(request.as_bytes()).await.expect("send");
        let mut raw = Vec::new();
        timeout(WAIT, conn.read_to_end(&mut raw))
            .await
            .expect("the debug endpoint answers in time")
            .expect("read the response");
        let text = String::from_utf8(raw).expect("UTF-8");
        let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
        assert!(head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
        body.to_string()
    }
}

/// The timeout of the route to `reviews`, as the client's proxy gets it.
fn reviews_timeout(snapshot: &Snapshot) -> i64 {
    let view = snapshot
        .proxy("client-0.shop")
        .expect("the client is known");
    let rc: RouteConfiguration =
        decode(view.get(Kind::Route, "80|shop").expect("route 80|shop")).unwrap();
    let vhost = rc
        .virtual_hosts
        .iter()
        .find(|v| v.name == "reviews.shop.svc.cluster.local:80")
        .expect("the reviews virtual host");
    match &vhost.routes[0].action {
        Some(route::Action::Route(a)) => a.timeout.expect("a timeout").seconds,
        other => panic!("not a route action: {other:?}"),
    }
}

fn metric(metrics: &str, name: &str) -> Option<u64> {
    metrics.lines().find_map(|l| {
        let (metric, value) = l.split_once(' ')?;
        (metric == name).then(|| value.trim().parse().ok())?
    })
}

#[tokio::test]
async fn an_invalid_annotation_keeps_the_last_good_routing_and_is_reported() {
    let h = Harness::start(&registry("3s")).await;
    let good = h.snapshot_where(|s| s.mesh.workloads.len() == 1).await;
    assert_eq!(reviews_timeout(&good), 3);
    assert_eq!(h.get("/debug/routing").await.trim(), "[]");

    // A typo: the 3 s timeout stays, the problem is reported.
    h.write(&registry("3 seconds"));
    let broken = h.snapshot_where(|s| !s.routing.errors.is_empty()).await;
    assert!(broken.version > good.version);
    assert_eq!(reviews_timeout(&broken), 3);
    let errors: serde_json::Value =
        serde_json::from_str(&h.get("/debug/routing").await).expect("JSON");
    assert_eq!(errors.as_array().map(Vec::len), Some(1), "{errors}");
    assert_eq!(errors[0]["object"], "Service shop/reviews");
    assert_eq!(errors[0]["annotation"], "meshd.io/timeout");
    assert_eq!(errors[0]["value"], "3 seconds");
    let message = errors[0]["message"].as_str().unwrap();
    assert!(message.contains("accepted: a duration"), "{message}");
    let metrics = h.get("/metrics").await;
    assert_eq!(
        metric(&metrics, "meshd_routing_annotation_errors"),
        Some(1),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "meshd_routing_annotation_rejections_total"),
        Some(1)
    );

    // Fixed: the new value applies and the problem is gone; the rejection
    // stays counted.
    h.write(&registry("1s"));
    let fixed = h.snapshot_where(|s| s.routing.errors.is_empty()).await;
    assert_eq!(reviews_timeout(&fixed), 1);
    assert_eq!(h.get("/debug/routing").await.trim(), "[]");
    let metrics = h.get("/metrics").await;
    assert_eq!(metric(&metrics, "meshd_routing_annotation_errors"), Some(0));
    assert_eq!(
        metric(&metrics, "meshd_routing_annotation_rejections_total"),
        Some(1)
    );
    h.cp.shutdown().await;
}

/// A Gateway API route's conditions on `/debug/routing/routes`, as the
/// leader would write them into its `status.parents`: a route whose backend
/// is missing is accepted with ResolvedRefs False, and once the backend
/// Service exists ResolvedRefs turns True.
#[tokio::test]
async fn a_routes_conditions_are_shown_on_debug_routing_routes() {
    let route = r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews-split, namespace: shop, generation: 2}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews, port: 80}]
  rules: [{backendRefs: [{name: reviews-v2, port: 80}]}]
"#;
    let v2 = r#"
---
apiVersion: v1
kind: Service
metadata: {name: reviews-v2, namespace: shop}
spec: {clusterIP: 198.19.0.2, ports: [{name: http, port: 80}]}
"#;
    let h = Harness::start(&format!("{}{route}", registry("3s"))).await;
    h.snapshot_where(|s| !s.mesh.routes.statuses.is_empty())
        .await;
    let routes: serde_json::Value =
        serde_json::from_str(&h.get("/debug/routing/routes").await).expect("JSON");
    assert_eq!(routes[0]["kind"], "HTTPRoute", "{routes}");
    assert_eq!(routes[0]["name"], "reviews-split");
    let parent = &routes[0]["status"]["parents"][0];
    assert_eq!(
        parent["parentRef"],
        serde_json::json!({"group": "", "kind": "Service", "namespace": "shop", "name": "reviews", "port": 80})
    );
    assert_eq!(parent["controllerName"], "meshd.io/mesh-controller");
    let conditions = parent["conditions"].as_array().unwrap();
    assert_eq!(conditions[0]["type"], "Accepted");
    assert_eq!(conditions[0]["status"], "True");
    assert_eq!(conditions[0]["observedGeneration"], 2);
    assert_eq!(conditions[1]["type"], "ResolvedRefs");
    assert_eq!(conditions[1]["status"], "False");
    assert_eq!(conditions[1]["reason"], "BackendNotFound");
    assert!(
        conditions[1]["message"]
            .as_str()
            .unwrap()
            .contains("Service shop/reviews-v2 does not exist"),
        "{routes}"
    );

    h.write(&format!("{}{route}{v2}", registry("3s")));
    h.snapshot_where(|s| {
        s.mesh
            .routes
            .statuses
            .values()
            .all(|r| r.parents.iter().all(|p| p.resolved_refs.status))
    })
    .await;
    let routes: serde_json::Value =
        serde_json::from_str(&h.get("/debug/routing/routes").await).expect("JSON");
    assert_eq!(
        routes[0]["status"]["parents"][0]["conditions"][1]["reason"], "ResolvedRefs",
        "{routes}"
    );
}
