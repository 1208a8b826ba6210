//! Misbehaving clients against every listener of `meshd run`, in-process on
//! loopback: the xDS port (gRPC over mutual TLS), the admission webhook
//! (HTTPS) and the debug endpoints (plain HTTP), all from one CA, as
//! `meshd run` starts them. Each listener gets a small connection cap and
//! timeouts chosen per test, so the whole file runs in seconds.
//!
//! ```text
//! slow clients ──idle TCP, half a ClientHello, TLS and silence, half a head,
//!                5 of 1,000 body bytes, an HTTP/2 preface and silence──┐
//!                                                                      v
//! real clients ──AdmissionReview (HTTPS)──> webhook   xDS   debug ──> /readyz
//!              └─ADS stream (mTLS, tonic)──────────────┘
//! ```
//!
//! Every wait is bounded; the bounds are generous and never performance
//! assertions.

mod webhook_support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use meshd_api::sidecar::bootstrap::DEFAULT_CONTROL_PLANE_ID;
use meshd_ca::{DirStore, SpiffeId};
use meshd_controlplane::identity::{Identity, IdentityConfig};
use meshd_controlplane::server::{ControlPlane, ListenerLimits, Options, Source, TlsOptions};
use meshd_controlplane::serving::Limits;
use meshd_controlplane::tls::ServerIdentity;
use meshd_injector::config::InjectorConfig;
use meshd_injector::webhook::{self, WebhookState};
use meshd_proto::envoy::config::core::v3::Node;
use meshd_proto::envoy::service::discovery::v3::{
    DiscoveryRequest, DiscoveryResponse,
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
};
use meshd_proto::type_url;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
use webhook_support::{Client, SERVICE_DNS, TRUST_DOMAIN, pod_review};

/// A generous bound on any one step that should succeed.
const STEP: Duration = Duration::from_secs(10);
/// How long a connection that should already be closed is probed.
const PROBE: Duration = Duration::from_millis(100);
/// The registry: Service `web` and the client pod whose proxy asks for
/// config.
const REGISTRY: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 198.19.0.1
  ports: [{name: http, port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- addresses: [198.18.0.3]
  targetRef: {kind: Pod, name: web-0}
---
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: shop}
spec: {serviceAccountName: web, containers: []}
status: {podIP: 198.18.0.3}
---
apiVersion: v1
kind: Pod
metadata: {name: client-0, namespace: shop}
spec: {serviceAccountName: client, containers: []}
status: {podIP: 198.18.0.2}
";
const CLIENT_NODE: &str = "client-0.shop";
const CLIENT_ID: &str = "spiffe://cluster.local/ns/shop/sa/client";
/// Far more than any announced body should cost: 10 GiB.
const TEN_GIB: u64 = 10 * 1024 * 1024 * 1024;

/// Every timeout of a listener set to `timeout`, at most `max_connections`
/// open, bodies up to 4 MiB.
fn limits(max_connections: usize, timeout: Duration) -> Limits {
    Limits {
        max_connections,
        handshake_timeout: timeout,
        header_read_timeout: timeout,
        idle_timeout: timeout,
        body_timeout: timeout,
        max_body_bytes: Some(webhook::MAX_BODY_BYTES as u64),
    }
}

/// The control plane (xDS, debug) and the webhook, on one CA.
struct Meshd {
    identity: Arc<Identity>,
    cp: ControlPlane,
    webhook: SocketAddr,
    webhook_stop: Option<tokio::sync::oneshot::Sender<()>>,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

impl Meshd {
    async fn start(xds: Limits, webhook: Limits, debug: Limits) -> Meshd {
        let ca_dir = tempfile::tempdir().expect("a temporary directory");
        let ca = meshd_ca::Authority::load_or_generate(
            TRUST_DOMAIN,
            Arc::new(DirStore::new(ca_dir.path())),
        )
        .expect("a CA");
        let identity = Arc::new(Identity::new(Arc::new(ca), IdentityConfig::default()));
        let registry = tempfile::tempdir().expect("a temporary directory");
        std::fs::write(registry.path().join("mesh.yaml"), REGISTRY).expect("write the registry");
        let cp = ControlPlane::start_with_limits(
            Options {
                source: Source::Files(registry.path().to_path_buf()),
                tls: Some(TlsOptions {
                    identity: identity.clone(),
                    server: ServerIdentity {
                        id: SpiffeId::parse(DEFAULT_CONTROL_PLANE_ID).expect("a SPIFFE ID"),
                        dns_names: vec!["localhost".into()],
                        ips: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
                    },
                }),
                xds: TcpListener::bind("127.0.0.1:0").await.expect("bind xDS"),
                debug: Some(TcpListener::bind("127.0.0.1:0").await.expect("bind debug")),
                debounce: Duration::from_millis(20),
                telemetry: Default::default(),
                authorization: Default::default(),
            },
            ListenerLimits { xds, debug },
        )
        .await
        .expect("the control plane starts");

        let cert = Arc::new(webhook::serving_cert(
            identity.ca.clone(),
            SpiffeId::new(TRUST_DOMAIN, "meshd-system", "meshd"),
            vec![SERVICE_DNS.into()],
            vec![],
        ));
        let state = WebhookState::new(InjectorConfig::default(), identity.ca.clone(), cert.clone());
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the webhook");
        let webhook_addr = listener.local_addr().expect("its address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(webhook::serve_with_limits(
            listener,
            webhook::tls_config(cert),
            state,
            webhook,
            async move {
                let _ = stopped.await;
            },
        ));
        Meshd {
            identity,
            cp,
            webhook: webhook_addr,
            webhook_stop: Some(stop),
            _dirs: (ca_dir, registry),
        }
    }

    fn debug(&self) -> SocketAddr {
        self.cp.debug_addr.expect("the debug listener is on")
    }

    /// TLS to the webhook as the API server dials it.
    fn webhook_tls(&self) -> Arc<rustls::ClientConfig> {
        client_config(&self.identity.ca.trust_anchors(), None, b"http/1.1")
    }

    /// TLS to the xDS port with a mesh certificate for the client
    /// workload, as its proxy dials it.
    fn xds_tls(&self) -> Arc<rustls::ClientConfig> {
        let (issued, key) = self
            .identity
            .ca
            .issue_with_key(
                &SpiffeId::parse(CLIENT_ID).expect("a SPIFFE ID"),
                Duration::from_secs(3600),
            )
            .expect("a client certificate");
        client_config(
            &self.identity.ca.trust_anchors(),
            Some((&issued.chain_pem, key.expose_pem())),
            b"h2",
        )
    }

    /// A real admission review, answered with the sidecar's patch.
    async fn review(&self, uid: &str) {
        let mut client = timeout(
            STEP,
            Client::connect(self.webhook, &self.identity.ca.trust_anchors(), SERVICE_DNS),
        )
        .await
        .expect("the webhook takes a connection in time")
        .expect("a TLS connection to the webhook");
        let (status, body) = timeout(STEP, client.post_review(&pod_review(uid, true)))
            .await
            .expect("the review is answered in time")
            .expect("an HTTP answer");
        let body = String::from_utf8_lossy(&body);
        assert_eq!(status, 200, "{body}");
        let answer: serde_json::Value = serde_json::from_str(&body).expect("a JSON review");
        assert_eq!(answer["response"]["uid"], uid, "{answer}");
        assert_eq!(answer["response"]["allowed"], true, "{answer}");
        assert_eq!(answer["response"]["patchType"], "JSONPatch", "{answer}");
    }

    /// A real ADS stream for the client proxy that has received its
    /// clusters.
    async fn ads(&self) -> Ads {
        let (issued, key) = self
            .identity
            .ca
            .issue_with_key(
                &SpiffeId::parse(CLIENT_ID).expect("a SPIFFE ID"),
                Duration::from_secs(3600),
            )
            .expect("a client certificate");
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(self.identity.ca.trust_bundle_pem()))
            .domain_name("localhost")
            .identity(tonic::transport::Identity::from_pem(
                issued.chain_pem,
                key.expose_pem(),
            ));
        let channel = timeout(
            STEP,
            Endpoint::from_shared(format!("https://{}", self.cp.xds_addr))
                .expect("a valid URI")
                .tls_config(tls)
                .expect("a valid TLS configuration")
                .connect(),
        )
        .await
        .expect("the xDS port takes a connection in time")
        .expect("a mesh proxy connects");
        let (tx, rx) = mpsc::channel(16);
        let responses = timeout(
            STEP,
            AggregatedDiscoveryServiceClient::new(channel)
                .stream_aggregated_resources(ReceiverStream::new(rx)),
        )
        .await
        .expect("the stream opens in time")
        .expect("the stream opens")
        .into_inner();
        let mut ads = Ads { tx, responses };
        let clusters = ads.get(type_url::CLUSTER).await;
        assert!(
            !clusters.resources.is_empty(),
            "the proxy gets its clusters: {clusters:?}"
        );
        ads
    }

    /// `GET /readyz` on the debug port answers 200.
    async fn ready(&self) {
        let mut tcp = timeout(STEP, TcpStream::connect(self.debug()))
            .await
            .expect("connect in time")
            .expect("connect to debug");
        let request = "GET /readyz HTTP/1.1\r\nHost: meshd\r\nConnection: close\r\n\r\n";
        tcp.write_all(request.as_bytes())
            .await
            .expect("send the request");
        let mut answer = Vec::new();
        timeout(STEP, tcp.read_to_end(&mut answer))
            .await
            .expect("/readyz answers in time")
            .expect("read the answer");
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }

    async fn stop(mut self) {
        if let Some(stop) = self.webhook_stop.take() {
            let _ = stop.send(());
        }
        self.cp.shutdown().await;
    }
}

/// One State-of-the-World ADS stream.
struct Ads {
    tx: mpsc::Sender<DiscoveryRequest>,
    responses: Streaming<DiscoveryResponse>,
}

impl Ads {
    /// Subscribes to every resource of `type_url` and returns the response.
    async fn get(&mut self, type_url: &str) -> DiscoveryResponse {
        let request = DiscoveryRequest {
            node: Some(Node {
                id: CLIENT_NODE.into(),
                ..Default::default()
            }),
            type_url: type_url.into(),
            ..Default::default()
        };
        self.tx.send(request).await.expect("the stream is open");
        let response = timeout(STEP, self.responses.message())
            .await
            .expect("a response in time")
            .expect("no stream error")
            .expect("the stream stays open");
        assert_eq!(response.type_url, type_url, "{response:?}");
        response
    }
}

fn client_config(
    roots: &[CertificateDer<'static>],
    identity: Option<(&str, &str)>,
    alpn: &[u8],
) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add(root.clone()).expect("a valid root");
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("default TLS versions")
    .with_root_certificates(store);
    let mut config = match identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(chain.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .expect("a PEM chain"),
                PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("a PEM key"),
            )
            .expect("a client certificate"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(config)
}

// ---- misbehaving clients ---------------------------------------------------

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A connection a misbehaving client holds.
struct Hostile {
    what: String,
    io: Box<dyn Io>,
    /// What the server sent before closing.
    received: Vec<u8>,
}

impl Hostile {
    async fn tcp(addr: SocketAddr, what: &str) -> Hostile {
        let tcp = timeout(STEP, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        Hostile {
            what: what.into(),
            io: Box::new(tcp),
            received: Vec::new(),
        }
    }

    /// TCP, then the first 5 bytes of a ClientHello, then nothing.
    async fn half_client_hello(addr: SocketAddr) -> Hostile {
        let mut hostile = Hostile::tcp(addr, "half a ClientHello").await;
        hostile.send(&[0x16, 0x03, 0x01, 0x02, 0x00]).await;
        hostile
    }

    /// A finished TLS handshake, then nothing.
    async fn tls(
        addr: SocketAddr,
        config: Arc<rustls::ClientConfig>,
        name: &str,
        what: &str,
    ) -> Hostile {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let name = ServerName::try_from(name.to_string()).expect("a server name");
        let tls = timeout(
            STEP,
            tokio_rustls::TlsConnector::from(config).connect(name, tcp),
        )
        .await
        .expect("the handshake finishes in time")
        .expect("the handshake succeeds");
        Hostile {
            what: what.into(),
            io: Box::new(tls),
            received: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.expect("send");
        self.io.flush().await.expect("flush");
    }

    /// Whether the server closes the connection within `window`, keeping
    /// what it sent before.
    async fn closed_within(&mut self, window: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + window;
        let mut buffer = [0u8; 4096];
        loop {
            match tokio::time::timeout_at(deadline, self.io.read(&mut buffer)).await {
                Err(_) => return false,
                Ok(Ok(0) | Err(_)) => return true,
                Ok(Ok(read)) => self.received.extend_from_slice(&buffer[..read]),
            }
        }
    }

    fn received(&self) -> String {
        String::from_utf8_lossy(&self.received).into_owned()
    }
}

/// Half a request head: the line and part of one header.
const HALF_HEAD: &[u8] = b"POST /inject HTTP/1.1\r\nHost: meshd\r\nContent-Ty";
/// A head announcing 1,000 body bytes, and 5 of them.
const STALLED_BODY: &[u8] = b"POST /inject HTTP/1.1\r\nHost: meshd\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"api";
/// The HTTP/2 connection preface and an empty SETTINGS frame: a client that
/// starts HTTP/2 and never sends a request.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// `count` slow clients on the webhook, of every kind in turn.
async fn slow_webhook_clients(meshd: &Meshd, count: usize) -> Vec<Hostile> {
    let mut hostile = Vec::new();
    for i in 0..count {
        let addr = meshd.webhook;
        hostile.push(match i % 5 {
            0 => Hostile::tcp(addr, "idle TCP").await,
            1 => Hostile::half_client_hello(addr).await,
            2 => Hostile::tls(addr, meshd.webhook_tls(), SERVICE_DNS, "TLS, then silence").await,
            3 => {
                let mut h =
                    Hostile::tls(addr, meshd.webhook_tls(), SERVICE_DNS, "half a head").await;
                h.send(HALF_HEAD).await;
                h
            }
            _ => {
                let mut h =
                    Hostile::tls(addr, meshd.webhook_tls(), SERVICE_DNS, "a stalled body").await;
                h.send(STALLED_BODY).await;
                h
            }
        });
    }
    hostile
}

/// `count` slow clients on the debug port, of every kind in turn.
async fn slow_debug_clients(meshd: &Meshd, count: usize) -> Vec<Hostile> {
    let mut hostile = Vec::new();
    for i in 0..count {
        let mut h = Hostile::tcp(meshd.debug(), "idle TCP").await;
        match i % 3 {
            0 => {}
            1 => {
                h.what = "half a head".into();
                h.send(HALF_HEAD).await;
            }
            _ => {
                h.what = "a stalled body".into();
                h.send(STALLED_BODY).await;
            }
        }
        hostile.push(h);
    }
    hostile
}

/// `count` slow clients on the xDS port, of every kind in turn; the last
/// two kinds hold a mesh certificate.
async fn slow_xds_clients(meshd: &Meshd, count: usize) -> Vec<Hostile> {
    let mut hostile = Vec::new();
    for i in 0..count {
        let addr = meshd.cp.xds_addr;
        hostile.push(match i % 4 {
            0 => Hostile::tcp(addr, "idle TCP").await,
            1 => Hostile::half_client_hello(addr).await,
            2 => Hostile::tls(addr, meshd.xds_tls(), "localhost", "mTLS, then silence").await,
            _ => {
                let mut h = Hostile::tls(
                    addr,
                    meshd.xds_tls(),
                    "localhost",
                    "an HTTP/2 preface, then silence",
                )
                .await;
                h.send(H2_PREFACE).await;
                h
            }
        });
    }
    hostile
}

/// How many of `hostile` the server has closed, and the rest.
async fn count_closed(hostile: &mut [Hostile]) -> (usize, Vec<String>) {
    let mut closed = 0;
    let mut open = Vec::new();
    for h in hostile.iter_mut() {
        if h.closed_within(PROBE).await {
            closed += 1;
        } else {
            open.push(h.what.clone());
        }
    }
    (closed, open)
}

// ---- the tests -----------------------------------------------------------------

/// Every listener filled to its cap and past it with slow clients, whose
/// timeouts never come during the test: the API server's review, a proxy's
/// xDS stream and the readiness probe are still served, each listener
/// making room by closing the slow connection idle longest, and none
/// holding more than its cap.
#[tokio::test]
async fn full_listeners_still_serve_a_review_an_xds_stream_and_readiness() {
    const CAP: usize = 10;
    const EXTRA: usize = 5;
    let patient = Duration::from_secs(300);
    let meshd = Meshd::start(
        limits(CAP, patient),
        limits(CAP, patient),
        limits(CAP, patient),
    )
    .await;

    let mut webhook = slow_webhook_clients(&meshd, CAP + EXTRA).await;
    let mut debug = slow_debug_clients(&meshd, CAP + EXTRA).await;
    let mut xds = slow_xds_clients(&meshd, CAP + EXTRA).await;

    meshd.review("uid-while-flooded").await;
    let mut ads = meshd.ads().await;
    meshd.ready().await;
    // The stream keeps being served.
    let listeners = ads.get(type_url::LISTENER).await;
    assert!(!listeners.resources.is_empty(), "{listeners:?}");

    for (name, hostile) in [
        ("webhook", &mut webhook),
        ("debug", &mut debug),
        ("xDS", &mut xds),
    ] {
        let (closed, open) = count_closed(hostile).await;
        // EXTRA beyond the cap, and one for each real client.
        assert!(
            closed > EXTRA,
            "{name}: {closed} slow connections closed, still open: {open:?}"
        );
        assert!(
            open.len() < CAP,
            "{name}: more slow connections open than the cap allows with a real client in: {open:?}"
        );
    }

    // Another review and readiness, with the slow clients still there.
    meshd.review("uid-again").await;
    meshd.ready().await;
    meshd.stop().await;
}

/// Each kind of slow client is disconnected once its timeout passes (1 s
/// here), on every listener, while a live ADS stream stays open past them
/// all; a stalled review body is answered 408 first.
#[tokio::test]
async fn slow_clients_are_disconnected_after_their_timeouts() {
    let quick = Duration::from_secs(1);
    let meshd = Meshd::start(limits(64, quick), limits(64, quick), limits(64, quick)).await;
    let mut ads = meshd.ads().await;

    let mut hostile = Vec::new();
    for (listener, clients) in [
        ("webhook", slow_webhook_clients(&meshd, 5).await),
        ("debug", slow_debug_clients(&meshd, 3).await),
        ("xDS", slow_xds_clients(&meshd, 4).await),
    ] {
        hostile.extend(clients.into_iter().map(|mut h| {
            h.what = format!("{listener}: {}", h.what);
            h
        }));
    }
    // A keep-alive connection that asked once and then went quiet.
    let mut keep_alive = Hostile::tls(
        meshd.webhook,
        meshd.webhook_tls(),
        SERVICE_DNS,
        "webhook: idle after a request",
    )
    .await;
    keep_alive
        .send(b"GET /healthz HTTP/1.1\r\nHost: meshd\r\n\r\n")
        .await;
    hostile.push(keep_alive);

    for h in &mut hostile {
        assert!(
            h.closed_within(STEP).await,
            "{}: still open after {STEP:?}",
            h.what
        );
    }
    let received = |what: &str| {
        hostile
            .iter()
            .find(|h| h.what == what)
            .unwrap_or_else(|| panic!("{what}"))
            .received()
    };
    // The webhook waits for the body, then says why it gave up on it.
    let answer = received("webhook: a stalled body");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive within 1 s"), "{answer}");
    // The debug endpoints answer without reading it (no such path).
    let answer = received("debug: a stalled body");
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    let answer = received("webhook: idle after a request");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // The proxy's stream, open all along, is still served.
    let listeners = ads.get(type_url::LISTENER).await;
    assert!(!listeners.resources.is_empty(), "{listeners:?}");
    meshd.review("uid-after").await;
    meshd.ready().await;
    meshd.stop().await;
}

/// A request announcing a 10 GiB body is refused with 413 before any of
/// it is sent, on the webhook and on the debug port, and its connection
/// closed.
#[tokio::test]
async fn an_announced_oversized_body_is_refused_at_once() {
    let patient = Duration::from_secs(300);
    let meshd = Meshd::start(
        limits(64, patient),
        limits(64, patient),
        Limits {
            max_body_bytes: Some(64 * 1024),
            ..limits(64, patient)
        },
    )
    .await;
    let head = |path: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: meshd\r\nContent-Type: application/json\r\nContent-Length: {TEN_GIB}\r\n\r\n"
        )
    };

    let mut webhook = Hostile::tls(
        meshd.webhook,
        meshd.webhook_tls(),
        SERVICE_DNS,
        "10 GiB announced",
    )
    .await;
    webhook.send(head("/inject").as_bytes()).await;
    assert!(webhook.closed_within(STEP).await, "the webhook closes");
    let answer = webhook.received();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("larger than 4 MiB"), "{answer}");

    let mut debug = Hostile::tcp(meshd.debug(), "10 GiB announced").await;
    debug.send(head("/healthz").as_bytes()).await;
    assert!(debug.closed_within(STEP).await, "the debug port closes");
    let answer = debug.received();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("larger than 64 KiB"), "{answer}");

    meshd.review("uid-after").await;
    meshd.stop().await;
}
