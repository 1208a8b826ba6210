//! Gateway API routes from the Kubernetes source: the real watchers of
//! `meshd_k8s::watch::run` through a `kube::Client`, against a small API
//! server that serves the core kinds and the Gateway API's HTTPRoutes and
//! ReferenceGrants (v1beta1 only, as in most clusters). The routes that
//! reach the mesh are the ones the file registry makes of the same objects.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame};
use meshd_controlplane::discovery::file::FileRegistry;
use meshd_controlplane::model::{Mesh, ServiceKey};
use meshd_k8s::watch as kubernetes;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tower_test::mock;

type ResponseBody = UnsyncBoxBody<Bytes, std::io::Error>;
type Chunk = Result<Frame<Bytes>, std::io::Error>;

const WAIT: Duration = Duration::from_secs(15);

/// The objects, as a user would `kubectl apply` them (and put them in a
/// registry file).
const OBJECTS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: mesh, creationTimestamp: "2026-12-01T10:00:00Z"}
spec: {clusterIP: 198.19.0.1, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: backend, creationTimestamp: "2026-12-01T10:00:00Z"}
spec: {clusterIP: 198.19.0.2, ports: [{name: http, port: 80}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo-split, namespace: mesh, generation: 3, creationTimestamp: "2026-12-01T10:00:00Z"}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /api}, headers: [{name: x-user, value: jason}]}]
    filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-routed, value: "yes"}]}}]
    backendRefs: [{name: api, namespace: backend, port: 80, weight: 90}, {name: echo, port: 80, weight: 10}]
  - backendRefs: [{name: echo, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: from-mesh, namespace: backend, creationTimestamp: "2026-12-01T10:00:00Z"}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: mesh}]
  to: [{group: "", kind: Service, name: api}]
"#;

/// The collection each object is listed in, and its list item (items of
/// a real list carry no apiVersion or kind).
fn collections() -> Vec<(&'static str, Vec<Value>)> {
    let mut out: Vec<(&'static str, Vec<Value>)> = vec![
        ("/api/v1/namespaces", vec![]),
        ("/api/v1/services", vec![]),
        ("/apis/discovery.k8s.io/v1/endpointslices", vec![]),
        ("/api/v1/pods", vec![]),
        ("/apis/gateway.networking.k8s.io/v1/httproutes", vec![]),
        ("/apis/gateway.networking.k8s.io/v1/grpcroutes", vec![]),
        (
            "/apis/gateway.networking.k8s.io/v1beta1/referencegrants",
            vec![],
        ),
    ];
    for doc in OBJECTS.split("\n---\n") {
        let mut object: Value = serde_yaml::from_str(doc).expect("YAML");
        let path = match object["kind"].as_str().expect("kind") {
            "Service" => "/api/v1/services",
            "HTTPRoute" => "/apis/gateway.networking.k8s.io/v1/httproutes",
            "ReferenceGrant" => "/apis/gateway.networking.k8s.io/v1beta1/referencegrants",
            other => panic!("{other}"),
        };
        let item = object.as_object_mut().expect("an object");
        item.remove("apiVersion");
        item.remove("kind");
        item["metadata"]["resourceVersion"] = json!("1");
        out.iter_mut()
            .find(|(p, _)| *p == path)
            .expect("a collection")
            .1
            .push(object);
    }
    out
}

fn json_response(status: StatusCode, body: &Value) -> Response<ResponseBody> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(
            Full::new(Bytes::from(body.to_string()))
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .expect("a valid response")
}

/// A `kube::Client` on an API server that lists `collections`, keeps every
/// watch open without events, and answers 404 for anything else (here:
/// ReferenceGrant v1, which this cluster does not serve).
fn client(open_watches: Arc<Mutex<Vec<mpsc::UnboundedSender<Chunk>>>>) -> kube::Client {
    let (service, mut handle) = mock::pair::<Request<kube::client::Body>, Response<ResponseBody>>();
    let collections = collections();
    tokio::spawn(async move {
        while let Some((request, respond)) = handle.next_request().await {
            let path = request.uri().path();
            let query = request.uri().query().unwrap_or_default();
            let Some((_, items)) = collections.iter().find(|(p, _)| *p == path) else {
                respond.send_response(json_response(
                    StatusCode::NOT_FOUND,
                    &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                            "reason": "NotFound", "code": 404}),
                ));
                continue;
            };
            if query.split('&').any(|q| q == "watch=true") {
                let (tx, rx) = mpsc::unbounded_channel::<Chunk>();
                open_watches.lock().unwrap().push(tx);
                let body = StreamBody::new(UnboundedReceiverStream::new(rx)).boxed_unsync();
                respond.send_response(
                    Response::builder()
                        .status(StatusCode::OK)
                        .header(header::CONTENT_TYPE, "application/json")
                        .body(body)
                        .expect("a valid response"),
                );
                continue;
            }
            respond.send_response(json_response(
                StatusCode::OK,
                &json!({"kind": "List", "apiVersion": "v1",
                        "metadata": {"resourceVersion": "1"}, "items": items}),
            ));
        }
    });
    kube::Client::new(service, "default")
}

async fn mesh_where(
    meshes: &mut watch::Receiver<Arc<Mesh>>,
    done: impl Fn(&Mesh) -> bool,
) -> Arc<Mesh> {
    tokio::time::timeout(WAIT, async {
        loop {
            let mesh = meshes.borrow_and_update().clone();
            if done(&mesh) {
                return mesh;
            }
            meshes
                .changed()
                .await
                .expect("the source stopped publishing");
        }
    })
    .await
    .expect("no mesh with the route within the wait")
}

#[tokio::test]
async fn routes_from_the_api_server_are_the_routes_the_file_registry_makes_of_the_same_objects() {
    let open_watches = Arc::new(Mutex::new(Vec::new()));
    let (mesh_tx, mut meshes) = watch::channel(Arc::new(Mesh::default()));
    tokio::spawn(kubernetes::run(
        client(open_watches.clone()),
        mesh_tx,
        Duration::from_millis(20),
    ));
    let echo = ServiceKey::new("mesh", "echo");
    let from_api = mesh_where(&mut meshes, |m| {
        m.routes.attaches(&echo, 80)
            // The grant came in too: the cross-namespace backend resolved.
            && m.routes
                .statuses
                .values()
                .all(|s| s.parents.iter().all(|p| p.resolved_refs.status))
    })
    .await;

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), OBJECTS).unwrap();
    let mut registry = FileRegistry::new(dir.path());
    let load = registry.load();
    assert!(load.errors.is_empty(), "{:?}", load.errors);
    assert_eq!(*from_api.routes, *load.mesh.routes);

    let entries = from_api.routes.for_caller(&echo, 80, "mesh").unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(
        entries[0]
            .route
            .cluster(&entries[0].rule().backends[0].target)
            .as_deref(),
        Some("outbound|80||api.backend.svc.cluster.local")
    );
    let status = from_api.routes.statuses.values().next().unwrap();
    assert_eq!(status.generation, Some(3));
    assert_eq!(status.parents[0].accepted.reason, "Accepted");
}
