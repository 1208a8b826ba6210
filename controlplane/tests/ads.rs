//! The xDS server in-process, driven the way Envoy drives it.
//!
//! Each test writes a small registry into a temporary directory, starts a
//! [`ControlPlane`] on `127.0.0.1:0`, and scripts one ADS stream through a
//! channel:
//!
//! ```text
//! test ──mpsc──> ReceiverStream ──gRPC──> ControlPlane ──> Streaming<Response> ──> test
//!   └── rewrites the registry file ──notify──┘   └── debug HTTP (GET /debug/…)
//! ```
//!
//! Every wait for a response is bounded, so a server that goes quiet fails
//! the test instead of hanging it; "nothing arrives" is asserted over a
//! short window.

use std::collections::BTreeSet;
use std::time::Duration;

use meshd_controlplane::server::{ControlPlane, Options, Source};
use meshd_proto::envoy::config::cluster::v3::Cluster;
use meshd_proto::envoy::config::core::v3::{Node, address, socket_address::PortSpecifier};
use meshd_proto::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, lb_endpoint::HostIdentifier,
};
use meshd_proto::envoy::config::listener::v3::Listener;
use meshd_proto::envoy::config::route::v3::RouteConfiguration;
use meshd_proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
};
use meshd_proto::pb::google::rpc::Status as RpcStatus;
use meshd_proto::{Any, type_url};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Streaming};

/// How long a response may take before the test fails.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long "no response" is watched for.
const QUIET: Duration = Duration::from_millis(300);

const CLIENT: &str = "client-0.shop";
const WEB_CLUSTER: &str = "outbound|80||web.shop.svc.cluster.local";
const API_CLUSTER: &str = "outbound|80||api.shop.svc.cluster.local";
const PASSTHROUGH: &str = "PassthroughCluster";
/// The route configuration of port 80 on shop's VIPs.
const SHOP_ROUTES: &str = "80|shop";
/// The inbound catch-all's cluster, which every captured pod has.
const INBOUND_PASSTHROUGH: &str = "InboundPassthroughCluster";

// ---- registry manifests ----------------------------------------------------

fn namespace() -> String {
    "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n".to_string()
}

/// A service in `shop` with one HTTP port, 80.
fn service(name: &str, vip: &str) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: shop}}
spec:
  clusterIP: {vip}
  ports: [{{name: http, port: 80}}]
"
    )
}

/// The service's endpoints, `(ip, pod)`, each serving port 8080.
fn slice(service: &str, endpoints: &[(&str, &str)]) -> String {
    let mut yaml = format!(
        "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {service}-1, namespace: shop, labels: {{kubernetes.io/service-name: {service}}}}}
addressType: IPv4
ports: [{{name: http, port: 8080}}]
endpoints:
"
    );
    for (ip, pod) in endpoints {
        yaml.push_str(&format!(
            "- addresses: [{ip}]\n  targetRef: {{kind: Pod, name: {pod}}}\n"
        ));
    }
    yaml
}

fn pod(name: &str, ip: &str) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: shop}}
spec: {{serviceAccountName: {name}, containers: []}}
status: {{podIP: {ip}}}
"
    )
}

fn registry(documents: &[String]) -> String {
    documents.join("---\n")
}

/// `web` with one endpoint (pod `web-0`), and a client pod that serves
/// nothing.
fn base() -> Vec<String> {
    vec![
        namespace(),
        service("web", "198.19.0.1"),
        slice("web", &[("198.18.0.3", "web-0")]),
        pod("web-0", "198.18.0.3"),
        pod("client-0", "198.18.0.2"),
    ]
}

fn api() -> Vec<String> {
    vec![
        service("api", "198.19.0.2"),
        slice("api", &[("198.18.0.5", "api-0")]),
        pod("api-0", "198.18.0.5"),
    ]
}

// ---- the control plane under test ------------------------------------------

struct Harness {
    dir: tempfile::TempDir,
    cp: ControlPlane,
}

impl Harness {
    async fn start(documents: &[String]) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().to_path_buf();
        std::fs::write(path.join("mesh.yaml"), registry(documents)).expect("write the registry");
        let xds = TcpListener::bind("127.0.0.1:0").await.expect("bind xDS");
        let debug = TcpListener::bind("127.0.0.1:0").await.expect("bind debug");
        let cp = ControlPlane::start(Options {
            source: Source::Files(path),
            // Plaintext: these tests exercise the xDS machinery alone.
            tls: None,
            xds,
            debug: Some(debug),
            debounce: Duration::from_millis(20),
            telemetry: Default::default(),
            authorization: Default::default(),
        })
        .await
        .expect("the control plane starts");
        let problems = cp.registry_problems.read().unwrap().clone();
        assert!(
            problems.is_empty(),
            "the test registry is valid: {problems:?}"
        );
        Harness { dir, cp }
    }

    /// Replaces the registry in one step (write aside, rename), so the
    /// watcher never reads a half-written file.
    fn write_registry(&self, documents: &[String]) {
        let staged = self.dir.path().join(".mesh.yaml.tmp");
        std::fs::write(&staged, registry(documents)).expect("write the registry");
        std::fs::rename(&staged, self.dir.path().join("mesh.yaml")).expect("replace the registry");
    }

    async fn client(&self) -> AggregatedDiscoveryServiceClient<Channel> {
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{}", self.cp.xds_addr))
                .expect("a valid URI")
                .connect()
                .await
                .expect("connect to the xDS server");
        AggregatedDiscoveryServiceClient::new(channel)
    }

    async fn sotw(&self) -> Ads<DiscoveryRequest, DiscoveryResponse> {
        let (tx, rx) = mpsc::channel(16);
        let mut client = self.client().await;
        let responses = timeout(
            RESPONSE_TIMEOUT,
            client.stream_aggregated_resources(ReceiverStream::new(rx)),
        )
        .await
        .expect("the stream opens in time")
        .expect("the stream opens")
        .into_inner();
        Ads { tx, responses }
    }

    async fn delta(&self) -> Ads<DeltaDiscoveryRequest, DeltaDiscoveryResponse> {
        let (tx, rx) = mpsc::channel(16);
        let mut client = self.client().await;
        let responses = timeout(
            RESPONSE_TIMEOUT,
            client.delta_aggregated_resources(ReceiverStream::new(rx)),
        )
        .await
        .expect("the stream opens in time")
        .expect("the stream opens")
        .into_inner();
        Ads { tx, responses }
    }

    /// A plain HTTP/1.1 GET on the debug listener; returns the body of a 200.
    async fn get(&self, path: &str) -> String {
        let addr = self.cp.debug_addr.expect("the debug listener is on");
        let mut conn = TcpStream::connect(addr).await.expect("connect to debug");
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        conn.write_all(request.as_bytes())
            .await
            .expect("send the request");
        let mut raw = Vec::new();
        timeout(RESPONSE_TIMEOUT, conn.read_to_end(&mut raw))
            .await
            .expect("the debug endpoint answers in time")
            .expect("read the response");
        let text = String::from_utf8(raw).expect("a UTF-8 response");
        let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
        assert!(head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
        assert!(
            !head
                .to_ascii_lowercase()
                .contains("transfer-encoding: chunked"),
            "GET {path}: expected a sized body: {head}"
        );
        body.to_string()
    }

    async fn get_json(&self, path: &str) -> serde_json::Value {
        let body = self.get(path).await;
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    async fn stop(self) {
        self.cp.shutdown().await;
    }
}

/// One ADS stream: requests go in through a channel, responses come out.
struct Ads<Req, Resp> {
    tx: mpsc::Sender<Req>,
    responses: Streaming<Resp>,
}

impl<Req, Resp: std::fmt::Debug> Ads<Req, Resp> {
    async fn send(&self, request: Req) {
        self.tx
            .send(request)
            .await
            .expect("the request stream is open");
    }

    async fn recv(&mut self) -> Resp {
        timeout(RESPONSE_TIMEOUT, self.responses.message())
            .await
            .expect("a response in time")
            .expect("no stream error")
            .expect("the stream stays open")
    }

    /// Asserts that nothing arrives for a while.
    async fn quiet(&mut self, why: &str) {
        if let Ok(message) = timeout(QUIET, self.responses.message()).await {
            panic!("expected no response ({why}), got {message:?}");
        }
    }
}

// ---- requests and responses ------------------------------------------------

fn node(id: &str) -> Option<Node> {
    Some(Node {
        id: id.to_string(),
        ..Default::default()
    })
}

fn strings(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

fn request(type_url: &str, names: &[&str]) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: type_url.to_string(),
        resource_names: strings(names),
        ..Default::default()
    }
}

fn first_request(node_id: &str, type_url: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        node: node(node_id),
        ..request(type_url, &[])
    }
}

/// The ACK of a State-of-the-World response: its version and nonce back,
/// with the names still wanted.
fn ack(response: &DiscoveryResponse, names: &[&str]) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: response.version_info.clone(),
        response_nonce: response.nonce.clone(),
        ..request(&response.type_url, names)
    }
}

fn subscribe(type_url: &str, names: &[&str]) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: type_url.to_string(),
        resource_names_subscribe: strings(names),
        ..Default::default()
    }
}

fn delta_ack(response: &DeltaDiscoveryResponse) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: response.type_url.clone(),
        response_nonce: response.nonce.clone(),
        ..Default::default()
    }
}

fn decode<M: Message + Default>(any: &Any) -> M {
    M::decode(any.value.as_slice()).expect("a well-formed resource")
}

fn sotw_names<M: Message + Default>(
    response: &DiscoveryResponse,
    name: fn(&M) -> &str,
) -> BTreeSet<String> {
    response
        .resources
        .iter()
        .map(|any| name(&decode::<M>(any)).to_string())
        .collect()
}

fn cluster_names(response: &DiscoveryResponse) -> BTreeSet<String> {
    assert_eq!(response.type_url, type_url::CLUSTER, "{response:?}");
    sotw_names::<Cluster>(response, |c| &c.name)
}

fn delta_names(response: &DeltaDiscoveryResponse) -> BTreeSet<String> {
    response.resources.iter().map(|r| r.name.clone()).collect()
}

fn delta_body<M: Message + Default>(response: &DeltaDiscoveryResponse, name: &str) -> M {
    let resource = response
        .resources
        .iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("{name} in {:?}", delta_names(response)));
    decode(resource.resource.as_ref().expect("a resource body"))
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| n.to_string()).collect()
}

/// The `(ip, port)` of every endpoint of a load assignment.
fn addresses(cla: &ClusterLoadAssignment) -> Vec<(String, u32)> {
    cla.endpoints
        .iter()
        .flat_map(|locality| &locality.lb_endpoints)
        .map(|ep| {
            let Some(HostIdentifier::Endpoint(endpoint)) = &ep.host_identifier else {
                panic!("an endpoint address: {ep:?}");
            };
            let address = endpoint.address.as_ref().and_then(|a| a.address.as_ref());
            let Some(address::Address::SocketAddress(socket)) = address else {
                panic!("a socket address: {endpoint:?}");
            };
            let Some(PortSpecifier::PortValue(port)) = socket.port_specifier else {
                panic!("a port number: {socket:?}");
            };
            (socket.address.clone(), port)
        })
        .collect()
}

fn addr(ip: &str, port: u32) -> (String, u32) {
    (ip.to_string(), port)
}

// ---- tests -----------------------------------------------------------------

// Every test uses a multi-threaded runtime, as `meshd run` does, so the
// server's tasks, its blocking reloads and the test's own client run
// concurrently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_serves_clusters_endpoints_and_listeners() {
    let h = Harness::start(&base()).await;
    let mut ads = h.sotw().await;

    ads.send(first_request(CLIENT, type_url::CLUSTER)).await;
    let cds = ads.recv().await;
    let clusters = cluster_names(&cds);
    assert!(clusters.contains(WEB_CLUSTER), "{clusters:?}");
    assert!(clusters.contains(PASSTHROUGH), "{clusters:?}");
    assert!(
        !cds.version_info.is_empty() && !cds.nonce.is_empty(),
        "{cds:?}"
    );
    ads.send(ack(&cds, &[])).await;

    ads.send(request(type_url::ENDPOINT, &[WEB_CLUSTER])).await;
    let eds = ads.recv().await;
    assert_eq!(eds.type_url, type_url::ENDPOINT);
    assert_eq!(eds.resources.len(), 1, "only the named cluster's endpoints");
    let cla: ClusterLoadAssignment = decode(&eds.resources[0]);
    assert_eq!(cla.cluster_name, WEB_CLUSTER);
    assert_eq!(addresses(&cla), [addr("198.18.0.3", 8080)]);
    ads.send(ack(&eds, &[WEB_CLUSTER])).await;

    ads.send(request(type_url::LISTENER, &[])).await;
    let lds = ads.recv().await;
    assert_eq!(lds.type_url, type_url::LISTENER);
    let listeners = sotw_names::<Listener>(&lds, |l| &l.name);
    assert_eq!(listeners, set(&["0.0.0.0_80", "inbound", "outbound"]));
    ads.send(ack(&lds, &[])).await;

    ads.quiet("ACKs are not answered").await;
    h.stop().await;
}

/// The client's first request, the size of Envoy's (its node padded), as
/// sent: `bytes` in all with the gRPC message's 5-byte prefix.
fn envoy_sized_first_request(bytes: usize) -> Vec<u8> {
    let mut first = DeltaDiscoveryRequest {
        node: node(CLIENT),
        ..subscribe(type_url::CLUSTER, &[])
    };
    let target = bytes - 5;
    let mut padding = target - first.encoded_len();
    while first.encoded_len() != target {
        first.node.as_mut().unwrap().user_agent_name = "x".repeat(padding);
        padding = padding + target - first.encoded_len();
    }
    raw_h2::grpc(&first.encode_to_vec())
}

/// A client may send meshd no more than a small window that meshd has not
/// read, once a connection's first 64 KiB are spent (an Envoy's first
/// request spends most of them): asking a raw HTTP/2 client for room to
/// send 1 MiB on an ADS stream gets it ~8 KiB, not the megabyte hyper's
/// defaults would grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_may_send_only_a_small_window_ahead_of_what_meshd_has_read() {
    use meshd_controlplane::serving::H2_CONNECTION_WINDOW;

    let h = Harness::start(&base()).await;
    let tcp = TcpStream::connect(h.cp.xds_addr)
        .await
        .expect("connect to the xDS server");
    let (client, connection) = h2::client::handshake(tcp)
        .await
        .expect("an HTTP/2 handshake");
    tokio::spawn(connection);
    let mut client = client.ready().await.expect("the connection takes a stream");
    let request = http::Request::post(format!(
        "http://{}/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources",
        h.cp.xds_addr
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(())
    .expect("a request head");
    let (response, mut stream) = client
        .send_request(request, false)
        .expect("the stream opens");

    // A first message the size of Envoy's, answered: meshd's settings are
    // in force by then (they are the first frame it sends).
    stream
        .send_data(envoy_sized_first_request(61_240).into(), false)
        .expect("the first message is sent");
    let mut body = timeout(RESPONSE_TIMEOUT, response)
        .await
        .expect("the response starts in time")
        .expect("a response")
        .into_body();
    let cds = timeout(RESPONSE_TIMEOUT, body.data())
        .await
        .expect("the clusters come in time");
    assert!(matches!(cds, Some(Ok(_))), "the clusters: {cds:?}");

    // The window updates for the first message arrive...
    tokio::time::sleep(QUIET).await;
    // ...and then the client asks for room for a megabyte.
    stream.reserve_capacity(1 << 20);
    let granted = timeout(
        RESPONSE_TIMEOUT,
        std::future::poll_fn(|cx| stream.poll_capacity(cx)),
    )
    .await
    .expect("capacity in time")
    .expect("the stream is open")
    .expect("capacity");
    assert!(
        granted > 0 && granted <= 8 * 1024,
        "granted {granted} bytes; the connection window is {H2_CONNECTION_WINDOW}"
    );
    h.stop().await;
}

/// HTTP/2 frames written and read by hand, to play a client's side of the
/// connection preface exactly as Envoy's timing can.
mod raw_h2 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const SETTINGS: u8 = 0x4;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const END_HEADERS: u8 = 0x4;
    pub const ACK: u8 = 0x1;
    /// RFC 9113 §6.5.2: a stream's window until SETTINGS say otherwise.
    pub const DEFAULT_WINDOW: i64 = 65_535;
    pub const MAX_FRAME: usize = 16_384;

    pub async fn write_frame(
        tcp: &mut TcpStream,
        kind: u8,
        flags: u8,
        stream: u32,
        payload: &[u8],
    ) {
        let len = payload.len() as u32;
        let mut frame = len.to_be_bytes()[1..].to_vec();
        frame.extend([kind, flags]);
        frame.extend(stream.to_be_bytes());
        frame.extend(payload);
        tcp.write_all(&frame).await.expect("write a frame");
    }

    pub async fn read_frame(tcp: &mut TcpStream) -> (u8, u8, u32, Vec<u8>) {
        let mut head = [0u8; 9];
        tcp.read_exact(&mut head)
            .await
            .expect("read a frame header");
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        tcp.read_exact(&mut payload)
            .await
            .expect("read a frame payload");
        (head[3], head[4], stream, payload)
    }

    /// A request head in HPACK, every field a literal without indexing
    /// (no table, no Huffman: RFC 7541 §6.2.2).
    pub fn request_head(path: &str) -> Vec<u8> {
        let mut block = Vec::new();
        for (name, value) in [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "meshd"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ] {
            block.push(0);
            for text in [name, value] {
                assert!(text.len() < 127);
                block.push(text.len() as u8);
                block.extend(text.as_bytes());
            }
        }
        block
    }

    /// The SETTINGS_INITIAL_WINDOW_SIZE a SETTINGS payload carries.
    pub fn initial_window(settings: &[u8]) -> Option<i64> {
        settings
            .chunks(6)
            .find(|s| u16::from_be_bytes([s[0], s[1]]) == 0x4)
            .map(|s| i64::from(u32::from_be_bytes([s[2], s[3], s[4], s[5]])))
    }

    /// The increment a WINDOW_UPDATE payload grants.
    pub fn window_increment(payload: &[u8]) -> i64 {
        i64::from(
            u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) & 0x7fff_ffff,
        )
    }

    pub fn grpc(message: &[u8]) -> Vec<u8> {
        let mut framed = vec![0u8];
        framed.extend((message.len() as u32).to_be_bytes());
        framed.extend(message);
        framed
    }
}

/// Envoy sends its first request, ~60 KB with its node's list of
/// extensions, before it has read meshd's SETTINGS, within HTTP/2's
/// default 64 KiB window. If meshd read all of it and only then learned
/// that its SETTINGS were acknowledged, a stream window meshd had set below
/// the default shrank by the difference while h2 (0.4) held back the
/// WINDOW_UPDATE for the message's last part; Envoy was left with a window
/// of zero or less, could send nothing more, and waited for its endpoints
/// forever (one e2e run in ~40 in CI). Played here frame by frame: the
/// second request must get through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_request_read_before_the_settings_are_acknowledged_leaves_room_for_the_next() {
    use raw_h2::*;

    let h = Harness::start(&base()).await;
    let mut tcp = TcpStream::connect(h.cp.xds_addr)
        .await
        .expect("connect to the xDS server");
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .expect("the preface");
    write_frame(&mut tcp, SETTINGS, 0, 0, &[]).await;
    let path = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";
    write_frame(&mut tcp, HEADERS, END_HEADERS, 1, &request_head(path)).await;

    // The first request: three full frames and a last one of 12,000 bytes,
    // all inside the default window.
    let first = envoy_sized_first_request(3 * MAX_FRAME + 12_000);
    let (head, last) = first.split_at(3 * MAX_FRAME);

    let mut server_window = None;
    let mut window_updates = 0i64;
    let next_frame = async |tcp: &mut TcpStream| timeout(RESPONSE_TIMEOUT, read_frame(tcp)).await;
    for part in head.chunks(MAX_FRAME) {
        write_frame(&mut tcp, DATA, 0, 1, part).await;
    }
    // meshd reads the three frames and gives their room back...
    while window_updates == 0 {
        match next_frame(&mut tcp).await.expect("meshd reads the request") {
            (SETTINGS, 0, 0, payload) => server_window = initial_window(&payload),
            (WINDOW_UPDATE, _, 1, payload) => {
                window_updates += window_increment(&payload);
            }
            _ => {}
        }
    }
    // ...then the rest, and answers the whole message (its clusters).
    write_frame(&mut tcp, DATA, 0, 1, last).await;
    loop {
        match next_frame(&mut tcp)
            .await
            .expect("meshd answers the request")
        {
            (SETTINGS, 0, 0, payload) => server_window = initial_window(&payload),
            (WINDOW_UPDATE, _, 1, payload) => {
                window_updates += window_increment(&payload);
            }
            (DATA, _, 1, _) => break,
            _ => {}
        }
    }
    // Only now are meshd's settings acknowledged.
    write_frame(&mut tcp, SETTINGS, ACK, 0, &[]).await;

    // The stream's window as the client must count it (RFC 9113 §6.9.2).
    let initial = server_window.unwrap_or(DEFAULT_WINDOW);
    let mut window = initial - first.len() as i64 + window_updates;
    let second = grpc(&subscribe(type_url::ENDPOINT, &[WEB_CLUSTER]).encode_to_vec());
    while window < second.len() as i64 {
        let Ok(frame) = next_frame(&mut tcp).await else {
            panic!(
                "meshd left the stream a window of {window} bytes (initial {initial}): \
                 no room for the next request"
            );
        };
        if let (WINDOW_UPDATE, _, 1, payload) = frame {
            window += window_increment(&payload);
        }
    }
    write_frame(&mut tcp, DATA, 0, 1, &second).await;
    let eds = loop {
        if let (DATA, _, 1, payload) = next_frame(&mut tcp).await.expect("meshd answers in time") {
            let response = DeltaDiscoveryResponse::decode(&payload[5..]).expect("a response");
            if response.type_url == type_url::ENDPOINT {
                break response;
            }
        }
    };
    assert_eq!(delta_names(&eds), set(&[WEB_CLUSTER]));
    h.stop().await;
}

/// A request larger than both HTTP/2 flow-control windows meshd grants (a
/// stream's 64 KiB, a connection's ~8 KiB once its first 64 KiB are
/// spent) comes in as meshd reads it and is answered whole: a
/// State-of-the-World EDS request naming every cluster
/// of a large mesh (~130 KB for 3,000 clusters), as Envoy sends one after
/// every cluster update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_larger_than_the_flow_control_windows_is_read_and_answered() {
    let mut documents = base();
    documents.extend(api());
    let h = Harness::start(&documents).await;
    let mut ads = h.sotw().await;

    ads.send(first_request(CLIENT, type_url::CLUSTER)).await;
    let cds = ads.recv().await;
    ads.send(ack(&cds, &[])).await;

    // Clusters of other services, gone from the registry by now.
    let gone: Vec<String> = (0..3_000)
        .map(|i| format!("outbound|80||service-{i:04}.shop.svc.cluster.local"))
        .collect();
    let mut names = vec![WEB_CLUSTER, API_CLUSTER];
    names.extend(gone.iter().map(String::as_str));
    let eds_request = request(type_url::ENDPOINT, &names);
    assert!(
        eds_request.encoded_len() > 2 * 65_535,
        "larger than the windows"
    );
    ads.send(eds_request).await;
    let eds = ads.recv().await;
    assert_eq!(eds.type_url, type_url::ENDPOINT);
    assert_eq!(
        sotw_names::<ClusterLoadAssignment>(&eds, |c| &c.cluster_name),
        set(&[API_CLUSTER, WEB_CLUSTER])
    );
    ads.send(ack(&eds, &names)).await;

    // The stream still carries requests: the listeners come.
    ads.send(request(type_url::LISTENER, &[])).await;
    let lds = ads.recv().await;
    assert_eq!(
        sotw_names::<Listener>(&lds, |l| &l.name),
        set(&["0.0.0.0_80", "inbound", "outbound"])
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_nack_is_recorded_and_not_resent() {
    let h = Harness::start(&base()).await;
    let mut ads = h.sotw().await;

    ads.send(first_request(CLIENT, type_url::CLUSTER)).await;
    let cds = ads.recv().await;
    assert!(cluster_names(&cds).contains(WEB_CLUSTER));

    // Envoy's NACK: the last accepted version (none yet) and the rejected
    // response's nonce, with its reason.
    ads.send(DiscoveryRequest {
        error_detail: Some(RpcStatus {
            code: Code::InvalidArgument as i32,
            message: "bad".into(),
            details: vec![],
        }),
        ..ack(&cds, &[])
    })
    .await;
    ads.quiet("a rejected response is not sent again").await;

    let nacks = h.get_json("/debug/xds/nacks").await;
    let recorded = nacks.as_array().expect("a list of NACKs").iter().any(|n| {
        n["node_id"] == CLIENT
            && n["type_url"] == type_url::CLUSTER
            && n["message"] == "bad"
            && n["nonce"] == cds.nonce.as_str()
            && n["version"] == cds.version_info.as_str()
    });
    assert!(recorded, "{nacks:#}");

    let proxies = h.get_json("/debug/xds/proxies").await;
    let proxy = proxies
        .as_array()
        .expect("a list of proxies")
        .iter()
        .find(|p| p["node_id"] == CLIENT)
        .unwrap_or_else(|| panic!("{CLIENT} in {proxies:#}"));
    let last_nack = proxy["types"]["CDS"]["last_nack"]
        .as_str()
        .unwrap_or_default();
    assert!(last_nack.contains("bad"), "{proxy:#}");
    assert_eq!(proxy["types"]["CDS"]["acked_version"], "", "{proxy:#}");

    // The next change is sent as usual.
    let mut documents = base();
    documents.extend(api());
    h.write_registry(&documents);
    let cds2 = ads.recv().await;
    let clusters = cluster_names(&cds2);
    assert!(clusters.contains(API_CLUSTER), "{clusters:?}");
    assert!(clusters.contains(WEB_CLUSTER), "{clusters:?}");
    assert_ne!(cds2.nonce, cds.nonce);
    assert_ne!(cds2.version_info, cds.version_info);
    h.stop().await;
}

/// `client`'s record on `/debug/xds/proxies` once its CDS status is
/// `status` (an ACK or NACK is handled after the request is read: wait
/// for it rather than read once).
async fn proxy_with_cds(h: &Harness, status: &str) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    for _ in 0..100 {
        let proxies = h.get_json("/debug/xds/proxies").await;
        if let Some(proxy) = proxies
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["node_id"] == CLIENT))
        {
            if proxy["types"]["CDS"]["status"] == status {
                return proxy.clone();
            }
            last = proxy.clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{CLIENT}'s CDS never became {status}: {last:#}");
}

/// What `meshd proxy-status` prints per type, from the stream's own
/// messages: nothing before anything is sent, STALE once sent and until the ACK,
/// SYNCED after it, STALE again for the next version, NACKED when that is
/// rejected (the acknowledged version stays the earlier one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_status_follows_sent_acknowledged_and_rejected_versions() {
    let h = Harness::start(&base()).await;
    let mut ads = h.sotw().await;

    ads.send(first_request(CLIENT, type_url::CLUSTER)).await;
    let cds = ads.recv().await;
    let proxy = proxy_with_cds(&h, "STALE").await;
    assert_eq!(
        proxy["types"]["CDS"]["sent_version"],
        cds.version_info.as_str(),
        "{proxy:#}"
    );
    assert_eq!(proxy["types"]["CDS"]["acked_version"], "", "{proxy:#}");
    // Nothing of LDS yet: not listed (`meshd proxy-status` prints NOT SENT).
    assert!(proxy["types"].get("LDS").is_none(), "{proxy:#}");

    ads.send(ack(&cds, &[])).await;
    let proxy = proxy_with_cds(&h, "SYNCED").await;
    assert_eq!(
        proxy["types"]["CDS"]["acked_version"],
        cds.version_info.as_str(),
        "{proxy:#}"
    );

    let mut documents = base();
    documents.extend(api());
    h.write_registry(&documents);
    let cds2 = ads.recv().await;
    assert!(cluster_names(&cds2).contains(API_CLUSTER));
    let proxy = proxy_with_cds(&h, "STALE").await;
    assert_eq!(
        proxy["types"]["CDS"]["sent_version"],
        cds2.version_info.as_str(),
        "{proxy:#}"
    );
    assert_eq!(
        proxy["types"]["CDS"]["acked_version"],
        cds.version_info.as_str(),
        "{proxy:#}"
    );

    // Envoy's NACK names the version it keeps and the rejected nonce.
    ads.send(DiscoveryRequest {
        version_info: cds.version_info.clone(),
        error_detail: Some(RpcStatus {
            code: Code::InvalidArgument as i32,
            message: "cluster api: bad".into(),
            details: vec![],
        }),
        ..ack(&cds2, &[])
    })
    .await;
    let proxy = proxy_with_cds(&h, "NACKED").await;
    let cds_status = &proxy["types"]["CDS"];
    assert_eq!(
        cds_status["acked_version"],
        cds.version_info.as_str(),
        "{proxy:#}"
    );
    assert_eq!(
        cds_status["last_nack_version"],
        cds2.version_info.as_str(),
        "{proxy:#}"
    );
    assert_eq!(
        cds_status["last_nack_message"], "cluster api: bad",
        "{proxy:#}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_sends_changes_only_and_removes_clusters_once_unreferenced() {
    let mut documents = base();
    documents.extend(api());
    let h = Harness::start(&documents).await;
    let mut ads = h.delta().await;

    // Wildcard CDS: an empty first subscription.
    ads.send(DeltaDiscoveryRequest {
        node: node(CLIENT),
        ..subscribe(type_url::CLUSTER, &[])
    })
    .await;
    let cds = ads.recv().await;
    assert_eq!(cds.type_url, type_url::CLUSTER);
    assert_eq!(
        delta_names(&cds),
        set(&[API_CLUSTER, WEB_CLUSTER, PASSTHROUGH, INBOUND_PASSTHROUGH])
    );
    assert!(cds.removed_resources.is_empty(), "{cds:?}");
    assert!(
        cds.resources
            .iter()
            .all(|r| !r.version.is_empty() && r.resource.is_some()),
        "{cds:?}"
    );
    ads.send(delta_ack(&cds)).await;

    ads.send(subscribe(type_url::ENDPOINT, &[WEB_CLUSTER, API_CLUSTER]))
        .await;
    let eds = ads.recv().await;
    assert_eq!(eds.type_url, type_url::ENDPOINT);
    assert_eq!(delta_names(&eds), set(&[API_CLUSTER, WEB_CLUSTER]));
    let web: ClusterLoadAssignment = delta_body(&eds, WEB_CLUSTER);
    assert_eq!(addresses(&web), [addr("198.18.0.3", 8080)]);
    ads.send(delta_ack(&eds)).await;

    ads.send(subscribe(type_url::LISTENER, &[])).await;
    let lds = ads.recv().await;
    assert_eq!(lds.type_url, type_url::LISTENER);
    assert_eq!(
        delta_names(&lds),
        set(&["0.0.0.0_80", "inbound", "outbound"])
    );
    ads.send(delta_ack(&lds)).await;

    // Port 80's configuration for shop's VIPs, as the listener names it.
    ads.send(subscribe(type_url::ROUTE, &[SHOP_ROUTES])).await;
    let rds = ads.recv().await;
    assert_eq!(rds.type_url, type_url::ROUTE);
    assert_eq!(delta_names(&rds), set(&[SHOP_ROUTES]));
    ads.send(delta_ack(&rds)).await;
    ads.quiet("everything subscribed is acknowledged").await;

    // Scale web up: only its load assignment changes.
    let scaled = |with_api: bool| {
        let mut documents = vec![
            namespace(),
            service("web", "198.19.0.1"),
            slice("web", &[("198.18.0.3", "web-0"), ("198.18.0.4", "web-1")]),
            pod("web-0", "198.18.0.3"),
            pod("web-1", "198.18.0.4"),
            pod("client-0", "198.18.0.2"),
        ];
        if with_api {
            documents.extend(api());
        }
        documents
    };
    h.write_registry(&scaled(true));
    let eds = ads.recv().await;
    assert_eq!(eds.type_url, type_url::ENDPOINT, "{eds:?}");
    assert_eq!(delta_names(&eds), set(&[WEB_CLUSTER]), "only what changed");
    assert!(eds.removed_resources.is_empty(), "{eds:?}");
    let web: ClusterLoadAssignment = delta_body(&eds, WEB_CLUSTER);
    assert_eq!(
        addresses(&web),
        [addr("198.18.0.3", 8080), addr("198.18.0.4", 8080)]
    );
    ads.send(delta_ack(&eds)).await;
    ads.quiet("clusters, listeners and routes did not change")
        .await;

    // Remove api. Its endpoints go at once; listener and route change; its
    // cluster stays while the proxy may still hold the old route to it.
    h.write_registry(&scaled(false));
    let eds = ads.recv().await;
    assert_eq!(eds.type_url, type_url::ENDPOINT, "{eds:?}");
    assert!(eds.resources.is_empty(), "{eds:?}");
    assert_eq!(eds.removed_resources, [API_CLUSTER]);
    let lds = ads.recv().await;
    assert_eq!(lds.type_url, type_url::LISTENER, "{lds:?}");
    // Only the listener of api's port changed: the capture listener,
    // which hands connections to it, did not.
    assert_eq!(delta_names(&lds), set(&["0.0.0.0_80"]));
    assert!(lds.removed_resources.is_empty(), "{lds:?}");
    let rds = ads.recv().await;
    assert_eq!(rds.type_url, type_url::ROUTE, "{rds:?}");
    let route: RouteConfiguration = delta_body(&rds, SHOP_ROUTES);
    let hosts: Vec<_> = route
        .virtual_hosts
        .iter()
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(
        hosts,
        ["web.shop.svc.cluster.local:80", "allow_any"],
        "api's virtual host is gone"
    );

    ads.send(delta_ack(&eds)).await;
    ads.send(delta_ack(&lds)).await;
    ads.quiet("route 80 that routes to api is not yet acknowledged")
        .await;

    ads.send(delta_ack(&rds)).await;
    let cds = ads.recv().await;
    assert_eq!(cds.type_url, type_url::CLUSTER, "{cds:?}");
    assert!(cds.resources.is_empty(), "{cds:?}");
    assert_eq!(cds.removed_resources, [API_CLUSTER]);
    ads.send(delta_ack(&cds)).await;
    ads.quiet("nothing else changed").await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_node_waits_until_its_pod_appears() {
    let h = Harness::start(&base()).await;
    let mut ads = h.sotw().await;

    ads.send(first_request("late-0.shop", type_url::CLUSTER))
        .await;
    ads.quiet("no pod late-0 in shop yet").await;

    let mut documents = base();
    documents.push(pod("late-0", "198.18.0.9"));
    h.write_registry(&documents);
    let cds = ads.recv().await;
    let clusters = cluster_names(&cds);
    assert!(clusters.contains(WEB_CLUSTER), "{clusters:?}");
    assert!(clusters.contains(PASSTHROUGH), "{clusters:?}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_request_without_node_id_is_rejected() {
    let h = Harness::start(&base()).await;
    let mut ads = h.sotw().await;

    ads.send(request(type_url::CLUSTER, &[])).await;
    let end = timeout(RESPONSE_TIMEOUT, ads.responses.message())
        .await
        .expect("the stream ends in time");
    match end {
        Err(status) => {
            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
            assert!(status.message().contains("node.id"), "{status:?}");
        }
        Ok(message) => panic!("expected InvalidArgument, got {message:?}"),
    }
    h.stop().await;
}

/// A stream open before the mesh changes, whose first request (the one
/// naming its node) comes after: the debug view still lists it by its node
/// id, as `meshd proxy-status` shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_is_listed_by_its_node_id_when_the_mesh_changed_before_its_first_request() {
    let h = Harness::start(&base()).await;
    let mut ads = h.sotw().await;
    let snapshots = |metrics: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("meshd_xds_snapshots_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let before = snapshots(&h.get("/metrics").await);
    let mut documents = base();
    documents.extend(api());
    h.write_registry(&documents);
    // Until the change is published (a wait, not a measurement).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while snapshots(&h.get("/metrics").await) == before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the registry change was never published"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    ads.send(first_request(CLIENT, type_url::CLUSTER)).await;
    let cds = ads.recv().await;
    ads.send(ack(&cds, &[])).await;
    ads.quiet("ACKs are not answered").await;
    let proxies = h.get_json("/debug/xds/proxies").await;
    let proxies = proxies.as_array().expect("a list of proxies");
    assert_eq!(proxies.len(), 1, "{proxies:#?}");
    assert_eq!(proxies[0]["node_id"], CLIENT, "{proxies:#?}");
    assert_eq!(
        proxies[0]["types"]["CDS"]["status"], "SYNCED",
        "{proxies:#?}"
    );
    h.stop().await;
}
