//! The Kubernetes source end to end through `kube::Client`: the real
//! watchers and index of `meshd_k8s::watch::run`, against a scripted
//! API server that speaks kube-apiserver's list and watch wire format.
//!
//! ```text
//! kubernetes::run ── kube-rs watchers ── kube::Client ── tower_test::mock::pair
//!       │                                                       │ GET list / watch
//!       │ Arc<Mesh>                                             v
//!       v                                                 FakeApiServer
//! watch::Receiver ──> assertions <── test ── apply, delete, ───┘
//!                                            bookmark, close, reset, expire
//! ```
//!
//! The fake keeps what the apiserver keeps: one revision counter for every
//! change, a history that a watch resumes from (`resourceVersion=N` replays
//! the changes after N) until it is compacted, after which such a watch gets
//! a 410 Gone ERROR event, and open watches that get each change as a JSON
//! line. List items carry no `kind`/`apiVersion`, as in real lists.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame};
use meshd_controlplane::model::{Mesh, ServiceKey};
use meshd_k8s::watch as kubernetes;
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, watch};
use tokio::time::timeout;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tower_test::mock;

type ResponseBody = UnsyncBoxBody<Bytes, io::Error>;
type Chunk = Result<Frame<Bytes>, io::Error>;
type Respond = mock::SendResponse<Response<ResponseBody>>;
type Query = BTreeMap<String, String>;

const PUBLISH_INTERVAL: Duration = Duration::from_millis(20);
/// The longest any one wait may take. kube-rs backs off 0.8-1.6 s after the
/// first watch error, so this leaves plenty of room on a loaded machine.
const WAIT: Duration = Duration::from_secs(15);
/// Many publish intervals: a mesh that was going to be published has been.
const QUIET: Duration = Duration::from_millis(300);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Namespace,
    Service,
    EndpointSlice,
    Pod,
}

impl Kind {
    const ALL: [Kind; 4] = [
        Kind::Namespace,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Pod,
    ];

    /// The cluster-wide collection the source lists and watches.
    fn path(self) -> &'static str {
        match self {
            Kind::Namespace => "/api/v1/namespaces",
            Kind::Service => "/api/v1/services",
            Kind::EndpointSlice => "/apis/discovery.k8s.io/v1/endpointslices",
            Kind::Pod => "/api/v1/pods",
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Kind::EndpointSlice => "discovery.k8s.io/v1",
            _ => "v1",
        }
    }

    fn of(object: &Value) -> Kind {
        match object["kind"].as_str() {
            Some("Namespace") => Kind::Namespace,
            Some("Service") => Kind::Service,
            Some("EndpointSlice") => Kind::EndpointSlice,
            Some("Pod") => Kind::Pod,
            other => panic!("not a kind the source watches: {other:?}"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verb {
    List,
    Watch,
}

/// A request the fake answered.
#[derive(Clone, Debug)]
struct Seen {
    kind: Kind,
    verb: Verb,
    resource_version: Option<String>,
}

/// One change, as the watch cache keeps it for resuming watches.
struct Change {
    revision: u64,
    kind: Kind,
    event: &'static str,
    object: Value,
}

struct OpenWatch {
    kind: Kind,
    events: mpsc::UnboundedSender<Chunk>,
    /// A watch that fell behind: changes are not sent to it any more.
    behind: bool,
}

/// A request held back until the test releases its kind.
struct Parked {
    kind: Kind,
    query: Query,
    respond: Respond,
}

type ObjectKey = (Kind, String, String);

#[derive(Default)]
struct State {
    revision: u64,
    objects: BTreeMap<ObjectKey, Value>,
    history: Vec<Change>,
    /// Watches from a revision older than this get 410 Gone.
    compacted: u64,
    watches: Vec<OpenWatch>,
    held: BTreeSet<Kind>,
    parked: Vec<Parked>,
    seen: Vec<Seen>,
    unexpected: Vec<String>,
    /// Lookups of the Gateway API kinds, answered 404: this fake is a
    /// cluster without their CRDs.
    gateway_lookups: Vec<String>,
}

impl State {
    fn requests(&self, kind: Kind, verb: Verb) -> Vec<&Seen> {
        self.seen
            .iter()
            .filter(|s| s.kind == kind && s.verb == verb)
            .collect()
    }

    fn count(&self, kind: Kind, verb: Verb) -> usize {
        self.requests(kind, verb).len()
    }

    fn open_watches(&self, kind: Kind) -> usize {
        self.watches
            .iter()
            .filter(|w| w.kind == kind && !w.events.is_closed())
            .count()
    }

    fn is_parked(&self, kind: Kind) -> bool {
        self.parked.iter().any(|p| p.kind == kind)
    }

    fn answer(&mut self, kind: Kind, query: Query, respond: Respond) {
        let verb = if query.get("watch").is_some_and(|w| w == "true") {
            Verb::Watch
        } else {
            Verb::List
        };
        self.seen.push(Seen {
            kind,
            verb,
            resource_version: query.get("resourceVersion").cloned(),
        });
        match verb {
            Verb::List => self.list(kind, &query, respond),
            Verb::Watch => self.watch(kind, &query, respond),
        }
    }

    fn list(&mut self, kind: Kind, query: &Query, respond: Respond) {
        let items: Vec<Value> = self
            .objects
            .iter()
            .filter(|((k, ..), _)| *k == kind)
            .map(|(_, object)| {
                let mut item = object.clone();
                if let Some(fields) = item.as_object_mut() {
                    fields.remove("kind");
                    fields.remove("apiVersion");
                }
                item
            })
            .collect();
        // This fake serves every list in one page; a request that would
        // need a second one is a test bug, not a pass.
        let limit = query.get("limit").and_then(|l| l.parse::<usize>().ok());
        if query.contains_key("continue") || limit.is_some_and(|limit| items.len() > limit) {
            self.unexpected
                .push(format!("{kind:?} list needing pagination: {query:?}"));
        }
        respond.send_response(json_response(
            StatusCode::OK,
            &json!({
                "kind": format!("{kind:?}List"),
                "apiVersion": kind.api_version(),
                "metadata": {"resourceVersion": self.revision.to_string()},
                "items": items,
            }),
        ));
    }

    fn watch(&mut self, kind: Kind, query: &Query, respond: Respond) {
        let (events, body) = mpsc::unbounded_channel();
        respond.send_response(
            Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/json")
                .body(StreamBody::new(UnboundedReceiverStream::new(body)).boxed_unsync())
                .expect("a valid response"),
        );
        if query.contains_key("sendInitialEvents") {
            self.unexpected
                .push(format!("{kind:?} streaming list: {query:?}"));
        }
        let Some(from) = query
            .get("resourceVersion")
            .and_then(|rv| rv.parse::<u64>().ok())
        else {
            self.unexpected.push(format!(
                "{kind:?} watch without a resourceVersion: {query:?}"
            ));
            return;
        };
        if from < self.compacted {
            // kube-apiserver answers a watch from a compacted revision with
            // a 200 whose only event is this ERROR, then ends the stream.
            let gone = status(
                410,
                "Expired",
                &format!("too old resource version: {from} ({})", self.compacted),
            );
            let _ = events.send(chunk(&line("ERROR", &gone)));
            return;
        }
        let replay: String = self
            .history
            .iter()
            .filter(|c| c.kind == kind && c.revision > from)
            .map(|c| line(c.event, &c.object))
            .collect();
        if !replay.is_empty() {
            let _ = events.send(chunk(&replay));
        }
        self.watches.push(OpenWatch {
            kind,
            events,
            behind: false,
        });
    }

    /// Records one change and returns its watch event line.
    fn record(&mut self, kind: Kind, event: &'static str, mut object: Value) -> String {
        self.revision += 1;
        object["metadata"]["resourceVersion"] = json!(self.revision.to_string());
        let line = line(event, &object);
        self.history.push(Change {
            revision: self.revision,
            kind,
            event,
            object,
        });
        line
    }

    /// Sends `text` (whole event lines) to every open watch of `kind` that
    /// has not fallen behind, as one chunk.
    fn broadcast(&mut self, kind: Kind, text: &str) {
        self.watches.retain(|w| !w.events.is_closed());
        for w in self.watches.iter().filter(|w| w.kind == kind && !w.behind) {
            let _ = w.events.send(chunk(text));
        }
    }
}

/// The scripted API server.
#[derive(Clone, Default)]
struct FakeApiServer {
    state: Arc<Mutex<State>>,
}

impl FakeApiServer {
    fn with(objects: Vec<Value>) -> Self {
        let api = Self::default();
        api.apply_together(objects);
        api
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("the fake's state")
    }

    /// A `kube::Client` whose requests this server answers.
    fn client(&self) -> kube::Client {
        let (service, mut handle) =
            mock::pair::<Request<kube::client::Body>, Response<ResponseBody>>();
        let api = self.clone();
        tokio::spawn(async move {
            while let Some((request, respond)) = handle.next_request().await {
                api.serve(&request, respond);
            }
        });
        kube::Client::new(service, "default")
    }

    fn serve(&self, request: &Request<kube::client::Body>, respond: Respond) {
        let mut state = self.lock();
        let kind = Kind::ALL
            .into_iter()
            .find(|k| k.path() == request.uri().path());
        if request
            .uri()
            .path()
            .starts_with("/apis/gateway.networking.k8s.io/")
        {
            state.gateway_lookups.push(request.uri().path().to_owned());
            respond.send_response(json_response(
                StatusCode::NOT_FOUND,
                &status(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                ),
            ));
            return;
        }
        let (Some(kind), &Method::GET) = (kind, request.method()) else {
            state
                .unexpected
                .push(format!("{} {}", request.method(), request.uri()));
            respond.send_response(json_response(
                StatusCode::NOT_FOUND,
                &status(404, "NotFound", "not served by this fake"),
            ));
            return;
        };
        let query: Query = request
            .uri()
            .query()
            .unwrap_or_default()
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect();
        if state.held.contains(&kind) {
            state.parked.push(Parked {
                kind,
                query,
                respond,
            });
        } else {
            state.answer(kind, query, respond);
        }
    }

    /// Creates or replaces one object (ADDED or MODIFIED).
    fn apply(&self, object: Value) {
        self.apply_together(vec![object]);
    }

    /// Creates or replaces objects; open watches get the events of each
    /// kind in one chunk, as a busy watch would deliver them.
    fn apply_together(&self, objects: Vec<Value>) {
        let mut state = self.lock();
        let mut chunks: BTreeMap<Kind, String> = BTreeMap::new();
        for object in objects {
            let kind = Kind::of(&object);
            let meta = &object["metadata"];
            let key = (
                kind,
                meta["namespace"].as_str().unwrap_or_default().to_owned(),
                meta["name"].as_str().expect("metadata.name").to_owned(),
            );
            let event = if state.objects.contains_key(&key) {
                "MODIFIED"
            } else {
                "ADDED"
            };
            let line = state.record(kind, event, object);
            let stored = state.history.last().expect("recorded").object.clone();
            state.objects.insert(key, stored);
            chunks.entry(kind).or_default().push_str(&line);
        }
        for (kind, text) in chunks {
            state.broadcast(kind, &text);
        }
    }

    fn delete(&self, kind: Kind, namespace: &str, name: &str) {
        let mut state = self.lock();
        let object = state
            .objects
            .remove(&(kind, namespace.to_owned(), name.to_owned()))
            .unwrap_or_else(|| panic!("no {kind:?} {namespace}/{name} to delete"));
        let line = state.record(kind, "DELETED", object);
        state.broadcast(kind, &line);
    }

    /// Sends a BOOKMARK at the current revision to the watches of `kind`.
    fn bookmark(&self, kind: Kind) -> u64 {
        let mut state = self.lock();
        let revision = state.revision;
        let bookmark = json!({
            "kind": format!("{kind:?}"),
            "apiVersion": kind.api_version(),
            "metadata": {"resourceVersion": revision.to_string()},
        });
        state.broadcast(kind, &line("BOOKMARK", &bookmark));
        revision
    }

    /// Forgets the history: a watch from before now gets 410 Gone.
    fn compact(&self) {
        let mut state = self.lock();
        state.compacted = state.revision;
        let compacted = state.compacted;
        state.history.retain(|c| c.revision > compacted);
    }

    /// Ends the watches of `kind` cleanly, as the server does at
    /// `timeoutSeconds`.
    fn close_watches(&self, kind: Kind) {
        self.lock().watches.retain(|w| w.kind != kind);
    }

    /// Breaks the connections of the watches of `kind` mid-stream.
    fn reset_watches(&self, kind: Kind) {
        self.lock().watches.retain(|w| {
            if w.kind == kind {
                let _ = w.events.send(Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "connection reset by peer",
                )));
            }
            w.kind != kind
        });
    }

    /// The watches of `kind` fall behind: changes are not sent to them.
    fn fall_behind(&self, kind: Kind) {
        for w in self.lock().watches.iter_mut().filter(|w| w.kind == kind) {
            w.behind = true;
        }
    }

    /// The watch cache gives up on the watches of `kind`: history is
    /// compacted and they end with a 410 Gone ERROR event.
    fn expire(&self, kind: Kind) {
        self.compact();
        let mut state = self.lock();
        let gone = status(410, "Expired", "too old resource version");
        let text = line("ERROR", &gone);
        state.watches.retain(|w| {
            if w.kind == kind {
                let _ = w.events.send(chunk(&text));
            }
            w.kind != kind
        });
    }

    /// Requests for `kind` wait until [`Self::release`].
    fn hold(&self, kind: Kind) {
        self.lock().held.insert(kind);
    }

    fn release(&self, kind: Kind) {
        let mut state = self.lock();
        state.held.remove(&kind);
        for parked in std::mem::take(&mut state.parked) {
            if parked.kind == kind {
                state.answer(parked.kind, parked.query, parked.respond);
            } else {
                state.parked.push(parked);
            }
        }
    }

    async fn until(&self, what: &str, done: impl Fn(&State) -> bool) {
        let waited = timeout(WAIT, async {
            while !done(&self.lock()) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(
            waited.is_ok(),
            "timed out waiting for {what}; requests: {:?}",
            self.lock().seen
        );
    }

    fn assert_nothing_unexpected(&self) {
        let state = self.lock();
        assert!(
            state.unexpected.is_empty(),
            "unexpected requests: {:?}",
            state.unexpected
        );
    }
}

fn line(event: &str, object: &Value) -> String {
    let mut text = json!({"type": event, "object": object}).to_string();
    text.push('\n');
    text
}

fn chunk(text: &str) -> Chunk {
    Ok(Frame::data(Bytes::from(text.to_owned())))
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
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

// Objects, shaped as the API server returns them.

fn namespace(name: &str, mtls: Option<&str>) -> Value {
    let mut ns = json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}},
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    });
    if let Some(mode) = mtls {
        ns["metadata"]["annotations"] = json!({"meshd.io/mtls": mode});
    }
    ns
}

fn service(name: &str, cluster_ip: &str, port: u16) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": cluster_ip,
            "clusterIPs": [cluster_ip],
            "selector": {"app": name},
            "ports": [{"name": "http", "port": port, "protocol": "TCP", "targetPort": 8080}],
        },
    })
}

/// A slice of `service`'s endpoints, each an (address, pod) pair.
fn endpoint_slice(name: &str, service: &str, endpoints: &[(&str, &str)]) -> Value {
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|(address, pod)| {
            json!({
                "addresses": [address],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "targetRef": {"kind": "Pod", "namespace": "shop", "name": pod},
            })
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": "shop",
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            },
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints,
    })
}

fn pod(name: &str, ip: &str, service_account: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {
            "serviceAccountName": service_account,
            "containers": [{"name": "app", "image": "registry.example/app:1"}],
        },
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    })
}

/// The cluster every test starts from.
fn cluster() -> Vec<Value> {
    vec![
        namespace("default", None),
        namespace("shop", Some("STRICT")),
        service("web", "198.19.0.1", 80),
        service("api", "198.19.0.2", 9090),
        endpoint_slice(
            "web-abcde",
            "web",
            &[("198.18.0.1", "web-0"), ("198.18.0.2", "web-1")],
        ),
        endpoint_slice("api-fghij", "api", &[("198.18.0.3", "api-0")]),
        pod("web-0", "198.18.0.1", "web"),
        pod("web-1", "198.18.0.2", "web"),
        pod("api-0", "198.18.0.3", "api"),
    ]
}

// What the published meshes should hold, as comparable JSON.

fn endpoint(address: &str, pod: &str, service_account: Option<&str>) -> Value {
    json!({
        "address": address,
        "pod": pod,
        "serviceAccount": service_account,
        "ports": {"http": 8080},
        "ready": true,
    })
}

fn workload(ip: &str, service_account: &str) -> Value {
    json!({"ip": ip, "serviceAccount": service_account})
}

/// The mesh of [`cluster`].
fn cluster_mesh() -> Value {
    json!({
        "services": {
            "shop/api": {"vip": "198.19.0.2", "ports": [9090]},
            "shop/web": {"vip": "198.19.0.1", "ports": [80]},
        },
        "endpoints": {
            "shop/api": [endpoint("198.18.0.3", "api-0", Some("api"))],
            "shop/web": [
                endpoint("198.18.0.1", "web-0", Some("web")),
                endpoint("198.18.0.2", "web-1", Some("web")),
            ],
        },
        "workloads": {
            "api-0.shop": workload("198.18.0.3", "api"),
            "web-0.shop": workload("198.18.0.1", "web"),
            "web-1.shop": workload("198.18.0.2", "web"),
        },
        "namespaces": {
            "default": {"mtls": null},
            "shop": {"mtls": "Strict"},
        },
    })
}

fn summary(mesh: &Mesh) -> Value {
    let services: Map<String, Value> = mesh
        .services
        .iter()
        .map(|(key, s)| {
            let ports: Vec<u16> = s.ports.iter().map(|p| p.port).collect();
            let vip = s.vip.map(|ip| ip.to_string());
            (key.to_string(), json!({"vip": vip, "ports": ports}))
        })
        .collect();
    let endpoints: Map<String, Value> = mesh
        .endpoints
        .iter()
        .map(|(key, endpoints)| {
            let endpoints: Vec<Value> = endpoints
                .iter()
                .map(|e| {
                    json!({
                        "address": e.address.to_string(),
                        "pod": e.pod,
                        "serviceAccount": e.service_account,
                        "ports": e.ports,
                        "ready": e.conditions.ready,
                    })
                })
                .collect();
            (key.to_string(), Value::from(endpoints))
        })
        .collect();
    let workloads: Map<String, Value> = mesh
        .workloads
        .iter()
        .map(|(id, w)| {
            let ip = w.ip.map(|ip| ip.to_string());
            (
                id.clone(),
                json!({"ip": ip, "serviceAccount": w.service_account}),
            )
        })
        .collect();
    let namespaces: Map<String, Value> = mesh
        .namespaces
        .iter()
        .map(|(name, ns)| {
            let mtls = ns.mtls.map(|m| format!("{m:?}"));
            (name.clone(), json!({"mtls": mtls}))
        })
        .collect();
    json!({
        "services": services,
        "endpoints": endpoints,
        "workloads": workloads,
        "namespaces": namespaces,
    })
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).expect("JSON")
}

fn assert_mesh(mesh: &Mesh, expected: &Value) {
    let actual = summary(mesh);
    assert!(
        actual == *expected,
        "mesh:\n{}\nexpected:\n{}",
        pretty(&actual),
        pretty(expected)
    );
}

fn shop(name: &str) -> ServiceKey {
    ServiceKey::new("shop", name)
}

fn ports_of(mesh: &Mesh, service: &str) -> Vec<u16> {
    mesh.services
        .get(&shop(service))
        .map(|s| s.ports.iter().map(|p| p.port).collect())
        .unwrap_or_default()
}

// The source under test, and waiting on what it publishes.

fn start(api: &FakeApiServer) -> watch::Receiver<Arc<Mesh>> {
    let (mesh_tx, meshes) = watch::channel(Arc::new(Mesh::default()));
    tokio::spawn(kubernetes::run(api.client(), mesh_tx, PUBLISH_INTERVAL));
    meshes
}

async fn next_mesh(meshes: &mut watch::Receiver<Arc<Mesh>>) -> Arc<Mesh> {
    timeout(WAIT, meshes.changed())
        .await
        .unwrap_or_else(|_| panic!("no mesh published within {WAIT:?}"))
        .expect("the source stopped publishing");
    meshes.borrow_and_update().clone()
}

async fn mesh_where(
    meshes: &mut watch::Receiver<Arc<Mesh>>,
    what: &str,
    done: impl Fn(&Mesh) -> bool,
) -> Arc<Mesh> {
    let waited = timeout(WAIT, async {
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
    .await;
    waited.unwrap_or_else(|_| {
        panic!(
            "no mesh where {what} within {WAIT:?}; the last one:\n{}",
            pretty(&summary(&meshes.borrow()))
        )
    })
}

async fn assert_quiet(meshes: &mut watch::Receiver<Arc<Mesh>>, why: &str) {
    tokio::time::sleep(QUIET).await;
    assert!(
        !meshes.has_changed().expect("the source is running"),
        "{why}, but a mesh was published:\n{}",
        pretty(&summary(&meshes.borrow()))
    );
}

/// Starts the source on [`cluster`] and waits for its first mesh and for
/// every kind to be watched.
async fn started(api: &FakeApiServer) -> watch::Receiver<Arc<Mesh>> {
    let mut meshes = start(api);
    let mesh = next_mesh(&mut meshes).await;
    assert_mesh(&mesh, &cluster_mesh());
    api.until("every kind watched", |s| {
        Kind::ALL.iter().all(|&k| s.open_watches(k) == 1)
    })
    .await;
    meshes
}

#[tokio::test]
async fn the_first_mesh_waits_for_every_kind_and_has_them_all() {
    let api = FakeApiServer::with(cluster());
    api.hold(Kind::Pod);
    let mut meshes = start(&api);
    // A kind is watched once its list has gone to the index.
    api.until("every kind but Pods listed, the Pod list waiting", |s| {
        [Kind::Namespace, Kind::Service, Kind::EndpointSlice]
            .iter()
            .all(|&k| s.open_watches(k) == 1)
            && s.is_parked(Kind::Pod)
    })
    .await;
    assert_quiet(&mut meshes, "Pods are not listed yet").await;

    api.release(Kind::Pod);
    let mesh = next_mesh(&mut meshes).await;
    assert_mesh(&mesh, &cluster_mesh());
    assert_quiet(&mut meshes, "nothing changed after the first mesh").await;
    api.assert_nothing_unexpected();
    // The Gateway API kinds were looked for; their missing CRDs held
    // nothing back.
    let looked_for: BTreeSet<String> = api.lock().gateway_lookups.iter().cloned().collect();
    assert_eq!(
        looked_for,
        BTreeSet::from(
            [
                "/apis/gateway.networking.k8s.io/v1/httproutes",
                "/apis/gateway.networking.k8s.io/v1/grpcroutes",
                "/apis/gateway.networking.k8s.io/v1/referencegrants",
                "/apis/gateway.networking.k8s.io/v1beta1/referencegrants",
            ]
            .map(String::from)
        )
    );
}

#[tokio::test]
async fn added_modified_and_deleted_objects_reach_the_mesh() {
    let api = FakeApiServer::with(cluster());
    let mut meshes = started(&api).await;
    let mut expected = cluster_mesh();

    // A new pod (ADDED) and its endpoint (MODIFIED slice): the endpoint
    // carries the new pod's service account.
    api.apply(pod("web-2", "198.18.0.4", "web-canary"));
    api.apply(endpoint_slice(
        "web-abcde",
        "web",
        &[
            ("198.18.0.1", "web-0"),
            ("198.18.0.2", "web-1"),
            ("198.18.0.4", "web-2"),
        ],
    ));
    let mesh = mesh_where(&mut meshes, "web-2's endpoint has its identity", |m| {
        m.endpoints_of(&shop("web"))
            .iter()
            .any(|e| e.service_account.as_deref() == Some("web-canary"))
    })
    .await;
    expected["workloads"]["web-2.shop"] = workload("198.18.0.4", "web-canary");
    expected["endpoints"]["shop/web"] = json!([
        endpoint("198.18.0.1", "web-0", Some("web")),
        endpoint("198.18.0.2", "web-1", Some("web")),
        endpoint("198.18.0.4", "web-2", Some("web-canary")),
    ]);
    assert_mesh(&mesh, &expected);

    // A service's port changes (MODIFIED).
    api.apply(service("web", "198.19.0.1", 8000));
    let mesh = mesh_where(&mut meshes, "web serves on 8000", |m| {
        ports_of(m, "web") == [8000]
    })
    .await;
    expected["services"]["shop/web"]["ports"] = json!([8000]);
    assert_mesh(&mesh, &expected);

    // A pod goes away (DELETED): its workload goes, and until the slice
    // drops its endpoint, nobody vouches for that endpoint's identity.
    api.delete(Kind::Pod, "shop", "web-1");
    let mesh = mesh_where(&mut meshes, "web-1 is gone", |m| {
        !m.workloads.contains_key("web-1.shop")
    })
    .await;
    expected["workloads"]
        .as_object_mut()
        .expect("workloads")
        .remove("web-1.shop");
    expected["endpoints"]["shop/web"][1] = endpoint("198.18.0.2", "web-1", None);
    assert_mesh(&mesh, &expected);

    api.apply(endpoint_slice(
        "web-abcde",
        "web",
        &[("198.18.0.1", "web-0"), ("198.18.0.4", "web-2")],
    ));
    let mesh = mesh_where(&mut meshes, "web-1's endpoint is gone", |m| {
        m.endpoints_of(&shop("web")).len() == 2
    })
    .await;
    expected["endpoints"]["shop/web"] = json!([
        endpoint("198.18.0.1", "web-0", Some("web")),
        endpoint("198.18.0.4", "web-2", Some("web-canary")),
    ]);
    assert_mesh(&mesh, &expected);

    // Watch events, not re-lists, carried all of it.
    let state = api.lock();
    for kind in Kind::ALL {
        assert_eq!(state.count(kind, Verb::List), 1, "{kind:?} lists");
        assert_eq!(state.count(kind, Verb::Watch), 1, "{kind:?} watches");
    }
    drop(state);
    api.assert_nothing_unexpected();
}

#[tokio::test]
async fn a_bookmark_changes_nothing_and_moves_where_the_watch_resumes() {
    let api = FakeApiServer::with(cluster());
    let mut meshes = started(&api).await;
    let mut expected = cluster_mesh();

    // Another kind moves the revision on; the Service watch hears only a
    // bookmark at the new revision.
    api.apply(namespace("billing", None));
    let mesh = mesh_where(&mut meshes, "namespace billing", |m| {
        m.namespaces.contains_key("billing")
    })
    .await;
    expected["namespaces"]["billing"] = json!({"mtls": null});
    assert_mesh(&mesh, &expected);

    let bookmark = api.bookmark(Kind::Service);
    assert_quiet(&mut meshes, "a bookmark is not a change").await;
    {
        let state = api.lock();
        assert_eq!(
            (
                state.count(Kind::Service, Verb::List),
                state.count(Kind::Service, Verb::Watch)
            ),
            (1, 1),
            "a bookmark is not an error: the same watch goes on"
        );
    }

    // The history before the bookmark is compacted away and the watch
    // ends: it resumes from the bookmark, so no 410 and no re-list.
    api.compact();
    api.close_watches(Kind::Service);
    api.until("the Service watch resumed", |s| {
        s.open_watches(Kind::Service) == 1 && s.count(Kind::Service, Verb::Watch) == 2
    })
    .await;
    assert_eq!(
        api.lock().requests(Kind::Service, Verb::Watch)[1]
            .resource_version
            .as_deref(),
        Some(bookmark.to_string().as_str()),
        "the watch resumes from the bookmark"
    );

    api.apply(service("api", "198.19.0.2", 9091));
    let mesh = mesh_where(&mut meshes, "api serves on 9091", |m| {
        ports_of(m, "api") == [9091]
    })
    .await;
    expected["services"]["shop/api"]["ports"] = json!([9091]);
    assert_mesh(&mesh, &expected);
    assert_eq!(api.lock().count(Kind::Service, Verb::List), 1);
    api.assert_nothing_unexpected();
}

#[tokio::test]
async fn a_410_gone_relists_without_losing_or_duplicating() {
    let api = FakeApiServer::with(cluster());
    let mut meshes = started(&api).await;
    let mut expected = cluster_mesh();

    // The Service watch drops. While it is down, `api` is deleted, `db`
    // created and the history compacted: the resumed watch gets 410 Gone.
    api.hold(Kind::Service);
    api.close_watches(Kind::Service);
    api.until("the Service watch resuming", |s| s.is_parked(Kind::Service))
        .await;
    api.delete(Kind::Service, "shop", "api");
    api.apply(service("db", "198.19.0.3", 5432));
    api.compact();
    api.release(Kind::Service);
    let mesh = mesh_where(&mut meshes, "the re-listed services", |m| {
        m.services.contains_key(&shop("db"))
    })
    .await;
    let services = expected["services"].as_object_mut().expect("services");
    services.remove("shop/api");
    services.insert(
        "shop/db".into(),
        json!({"vip": "198.19.0.3", "ports": [5432]}),
    );
    assert_mesh(&mesh, &expected);
    assert_eq!(
        api.lock().count(Kind::Service, Verb::List),
        2,
        "a 410 Gone means a re-list"
    );

    // The EndpointSlice watch falls behind while a slice goes and another
    // comes; the watch cache ends it with a 410 Gone ERROR event.
    api.fall_behind(Kind::EndpointSlice);
    api.delete(Kind::EndpointSlice, "shop", "api-fghij");
    api.apply(endpoint_slice("db-klmno", "db", &[("198.18.0.5", "db-0")]));
    api.apply(pod("db-0", "198.18.0.5", "db"));
    api.expire(Kind::EndpointSlice);
    let mesh = mesh_where(&mut meshes, "the re-listed slices", |m| {
        m.endpoints_of(&shop("db"))
            .iter()
            .any(|e| e.service_account.as_deref() == Some("db"))
    })
    .await;
    let endpoints = expected["endpoints"].as_object_mut().expect("endpoints");
    endpoints.remove("shop/api");
    endpoints.insert(
        "shop/db".into(),
        json!([endpoint("198.18.0.5", "db-0", Some("db"))]),
    );
    expected["workloads"]["db-0.shop"] = workload("198.18.0.5", "db");
    assert_mesh(&mesh, &expected);
    assert_eq!(api.lock().count(Kind::EndpointSlice, Verb::List), 2);

    // Both watchers watch again from their re-lists.
    api.apply(service("web", "198.19.0.1", 8080));
    api.apply(endpoint_slice(
        "web-abcde",
        "web",
        &[("198.18.0.1", "web-0")],
    ));
    let mesh = mesh_where(&mut meshes, "web changed after the re-lists", |m| {
        ports_of(m, "web") == [8080] && m.endpoints_of(&shop("web")).len() == 1
    })
    .await;
    expected["services"]["shop/web"]["ports"] = json!([8080]);
    expected["endpoints"]["shop/web"] = json!([endpoint("198.18.0.1", "web-0", Some("web"))]);
    assert_mesh(&mesh, &expected);
    api.assert_nothing_unexpected();
}

#[tokio::test]
async fn a_dropped_watch_reconnects_and_resumes() {
    let api = FakeApiServer::with(cluster());
    let mut meshes = started(&api).await;
    let mut expected = cluster_mesh();

    // The server ends the Pod watch; a pod starts before the watcher is
    // back, and the resumed watch replays it.
    api.hold(Kind::Pod);
    api.close_watches(Kind::Pod);
    api.until("the Pod watch resuming", |s| s.is_parked(Kind::Pod))
        .await;
    api.apply(pod("web-2", "198.18.0.4", "web"));
    api.release(Kind::Pod);
    let mesh = mesh_where(&mut meshes, "web-2 from the resumed watch", |m| {
        m.workloads.contains_key("web-2.shop")
    })
    .await;
    expected["workloads"]["web-2.shop"] = workload("198.18.0.4", "web");
    assert_mesh(&mesh, &expected);

    // The connection breaks mid-stream; kube-rs backs off (about a
    // second) and resumes from the last event it saw.
    api.reset_watches(Kind::Pod);
    api.apply(pod("web-3", "198.18.0.5", "web"));
    let mesh = mesh_where(&mut meshes, "web-3 after the reset", |m| {
        m.workloads.contains_key("web-3.shop")
    })
    .await;
    expected["workloads"]["web-3.shop"] = workload("198.18.0.5", "web");
    assert_mesh(&mesh, &expected);

    // And the new watch carries live events.
    api.until("the Pod watch open again", |s| {
        s.open_watches(Kind::Pod) == 1
    })
    .await;
    api.delete(Kind::Pod, "shop", "api-0");
    let mesh = mesh_where(&mut meshes, "api-0 is gone", |m| {
        !m.workloads.contains_key("api-0.shop")
    })
    .await;
    expected["workloads"]
        .as_object_mut()
        .expect("workloads")
        .remove("api-0.shop");
    expected["endpoints"]["shop/api"][0] = endpoint("198.18.0.3", "api-0", None);
    assert_mesh(&mesh, &expected);

    let state = api.lock();
    assert_eq!(
        state.count(Kind::Pod, Verb::List),
        1,
        "resumed, not re-listed"
    );
    assert_eq!(state.count(Kind::Pod, Verb::Watch), 3);
    drop(state);
    api.assert_nothing_unexpected();
}

#[tokio::test]
async fn a_bad_object_keeps_its_last_good_version() {
    let api = FakeApiServer::with(cluster());
    let mut meshes = started(&api).await;
    let mut expected = cluster_mesh();

    api.apply(service("web", "not-an-ip", 80));
    assert_quiet(&mut meshes, "a rejected object changes nothing").await;

    // Other changes still flow, and web keeps its last good version.
    api.apply(service("api", "198.19.0.2", 9091));
    let mesh = mesh_where(&mut meshes, "api serves on 9091", |m| {
        ports_of(m, "api") == [9091]
    })
    .await;
    expected["services"]["shop/api"]["ports"] = json!([9091]);
    assert_mesh(&mesh, &expected);

    // A re-list (after a 410 Gone) still holds the bad web: still the last
    // good version serves, next to what the re-list brought.
    api.fall_behind(Kind::Service);
    api.apply(service("cache", "198.19.0.4", 6379));
    api.expire(Kind::Service);
    let mesh = mesh_where(&mut meshes, "cache from the re-list", |m| {
        m.services.contains_key(&shop("cache"))
    })
    .await;
    expected["services"]["shop/cache"] = json!({"vip": "198.19.0.4", "ports": [6379]});
    assert_mesh(&mesh, &expected);

    // Fixed: the new version serves.
    api.apply(service("web", "198.19.0.10", 80));
    let mesh = mesh_where(&mut meshes, "web's fixed address", |m| {
        m.services[&shop("web")].vip == Some("198.19.0.10".parse().expect("an IP"))
    })
    .await;
    expected["services"]["shop/web"]["vip"] = json!("198.19.0.10");
    assert_mesh(&mesh, &expected);
    api.assert_nothing_unexpected();
}

#[tokio::test]
async fn a_rejected_object_does_not_hold_back_the_changes_before_it() {
    let api = FakeApiServer::with(cluster());
    let mut meshes = started(&api).await;
    let mut expected = cluster_mesh();

    // One chunk, so both land within one publish interval: a good change,
    // then a bad object. The rejection must not swallow the pending change:
    // a `Rejected` update leaves `KubeIndex`'s dirty flag alone.
    api.apply_together(vec![
        service("api", "198.19.0.2", 9091),
        service("web", "not-an-ip", 80),
    ]);
    let mesh = mesh_where(&mut meshes, "api serves on 9091", |m| {
        ports_of(m, "api") == [9091]
    })
    .await;
    expected["services"]["shop/api"]["ports"] = json!([9091]);
    assert_mesh(&mesh, &expected);
    api.assert_nothing_unexpected();
}
