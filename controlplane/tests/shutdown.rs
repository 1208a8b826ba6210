//! Graceful shutdown in-process: a control plane on `127.0.0.1:0` with one
//! open ADS stream is told to drain. Readiness turns false at once, new
//! connections are refused, the open stream keeps getting pushes during
//! the drain period, then ends cleanly so its proxy reconnects elsewhere.

use std::time::Duration;

use meshd_controlplane::server::{ControlPlane, Options, Source};
use meshd_proto::envoy::config::cluster::v3::Cluster;
use meshd_proto::envoy::config::core::v3::Node;
use meshd_proto::envoy::service::discovery::v3::{
    DiscoveryRequest, DiscoveryResponse,
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
};
use meshd_proto::type_url;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

const WAIT: Duration = Duration::from_secs(10);
const API_CLUSTER: &str = "outbound|80||api.shop.svc.cluster.local";
const WEB_CLUSTER: &str = "outbound|80||web.shop.svc.cluster.local";

fn registry(with_api: bool) -> String {
    let mut docs = vec![
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n".to_string(),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: client-0, namespace: shop}\nspec: {serviceAccountName: client, containers: []}\nstatus: {podIP: 198.18.0.2}\n".to_string(),
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec: {clusterIP: 198.19.0.1, ports: [{name: http, port: 80}]}\n".to_string(),
    ];
    if with_api {
        docs.push("apiVersion: v1\nkind: Service\nmetadata: {name: api, namespace: shop}\nspec: {clusterIP: 198.19.0.2, ports: [{name: http, port: 80}]}\n".to_string());
    }
    docs.join("---\n")
}

struct Harness {
    dir: tempfile::TempDir,
    cp: ControlPlane,
}

impl Harness {
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        std::fs::write(dir.path().join("mesh.yaml"), registry(false)).expect("registry");
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

    fn write_registry(&self, with_api: bool) {
        let staged = self.dir.path().join(".mesh.yaml.tmp");
        std::fs::write(&staged, registry(with_api)).expect("registry");
        std::fs::rename(&staged, self.dir.path().join("mesh.yaml")).expect("replace");
    }
}

/// `GET path` on the debug listener: (status line, body).
async fn get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    let mut conn = TcpStream::connect(addr).await.expect("connect to debug");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    conn.write_all(request.as_bytes()).await.expect("send");
    let mut raw = Vec::new();
    timeout(WAIT, conn.read_to_end(&mut raw))
        .await
        .expect("answered in time")
        .expect("read");
    let text = String::from_utf8(raw).expect("UTF-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    (
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    )
}

async fn connect(
    addr: std::net::SocketAddr,
) -> AggregatedDiscoveryServiceClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("a URI")
        .connect()
        .await
        .expect("connect to xDS");
    AggregatedDiscoveryServiceClient::new(channel)
}

async fn open_stream(
    client: &mut AggregatedDiscoveryServiceClient<tonic::transport::Channel>,
) -> Result<(mpsc::Sender<DiscoveryRequest>, Streaming<DiscoveryResponse>), tonic::Status> {
    let (tx, rx) = mpsc::channel(16);
    tx.send(DiscoveryRequest {
        node: Some(Node {
            id: "client-0.shop".into(),
            ..Default::default()
        }),
        type_url: type_url::CLUSTER.into(),
        ..Default::default()
    })
    .await
    .expect("queue the first request");
    let responses = timeout(
        WAIT,
        client.stream_aggregated_resources(ReceiverStream::new(rx)),
    )
    .await
    .map_err(|_| tonic::Status::deadline_exceeded("the stream did not open"))??
    .into_inner();
    Ok((tx, responses))
}

async fn recv(responses: &mut Streaming<DiscoveryResponse>) -> DiscoveryResponse {
    timeout(WAIT, responses.message())
        .await
        .expect("a response in time")
        .expect("no stream error")
        .expect("the stream is open")
}

fn clusters(response: &DiscoveryResponse) -> Vec<String> {
    response
        .resources
        .iter()
        .map(|any| {
            Cluster::decode(any.value.as_slice())
                .expect("a cluster")
                .name
        })
        .collect()
}

fn ack(response: &DiscoveryResponse) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: response.version_info.clone(),
        response_nonce: response.nonce.clone(),
        type_url: response.type_url.clone(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_keeps_open_streams_served_then_closes_them() {
    let h = Harness::start().await;
    let debug = h.cp.debug_addr.expect("debug listener");
    let xds = h.cp.xds_addr;
    let (status, body) = get(debug, "/readyz").await;
    assert!(status.contains("200"), "{status} {body}");

    let mut client = connect(xds).await;
    let (tx, mut responses) = open_stream(&mut client).await.expect("the stream opens");
    let cds = recv(&mut responses).await;
    assert!(clusters(&cds).contains(&WEB_CLUSTER.to_string()));
    tx.send(ack(&cds)).await.expect("ACK");

    let drain = Duration::from_secs(3);
    let Harness { dir, cp } = h;
    let lifecycle = cp.lifecycle.clone();
    let draining = tokio::spawn(cp.shutdown_gracefully(drain));
    timeout(WAIT, async {
        while !lifecycle.is_draining() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("draining starts");

    // Readiness is false at once, with the reason.
    let (status, body) = get(debug, "/readyz").await;
    assert!(status.contains("503"), "{status} {body}");
    assert!(body.contains("draining"), "{body}");

    // New connections are refused (once the listener is closed, which
    // happens as soon as the server sees the drain).
    timeout(WAIT, async {
        while TcpStream::connect(xds).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the xDS listener closes");
    // And the open connection takes no new stream.
    match open_stream(&mut client).await {
        Err(_) => {}
        Ok((_tx, mut second)) => {
            let next = timeout(WAIT, second.message())
                .await
                .expect("an answer in time");
            assert!(
                !matches!(next, Ok(Some(_))),
                "a new stream was served during the drain: {next:?}"
            );
        }
    }

    // The open stream still gets pushes.
    let harness_dir = dir;
    std::fs::write(harness_dir.path().join(".mesh.yaml.tmp"), registry(true)).expect("registry");
    std::fs::rename(
        harness_dir.path().join(".mesh.yaml.tmp"),
        harness_dir.path().join("mesh.yaml"),
    )
    .expect("replace");
    let pushed = recv(&mut responses).await;
    assert!(
        clusters(&pushed).contains(&API_CLUSTER.to_string()),
        "{:?}",
        clusters(&pushed)
    );
    tx.send(ack(&pushed)).await.expect("ACK");

    // Then, after the drain period, the stream ends cleanly.
    let end = timeout(drain + WAIT, responses.message())
        .await
        .expect("the stream ends after the drain period");
    assert!(matches!(end, Ok(None)), "a clean end of stream: {end:?}");
    timeout(WAIT, draining)
        .await
        .expect("shutdown completes")
        .expect("no panic");
    assert!(
        TcpStream::connect(debug).await.is_err(),
        "debug endpoints stopped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_without_connections_ends_without_waiting_out_the_period() {
    let h = Harness::start().await;
    h.write_registry(true);
    let debug = h.cp.debug_addr.expect("debug listener");
    // An hour: the test's own timeout fails long before, unless the drain
    // ends as soon as no connection is left.
    timeout(WAIT, h.cp.shutdown_gracefully(Duration::from_secs(3600)))
        .await
        .expect("nothing to drain: done at once");
    assert!(TcpStream::connect(debug).await.is_err());
}
