//! Workload identity in-process, over real mutual TLS: SDS over ADS, the
//! identity checks on the xDS port, and the CSR service.
//!
//! Each test starts a [`ControlPlane`] with a fresh CA on `127.0.0.1:0` and
//! dials it the way a proxy or a workload does, with a client certificate
//! from that CA:
//!
//! ```text
//! test ──TLS (client cert shop/client)──> xDS port ──> ADS (SDS `default`, `ROOTCA`)
//!                                                 └──> CertificateService (CSR)
//!   └── plain HTTP GET /metrics ─────────> debug port
//! ```
//!
//! Every network wait is bounded, so a server that goes quiet fails the
//! test instead of hanging it.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use meshd_api::sidecar::bootstrap::DEFAULT_CONTROL_PLANE_ID;
use meshd_ca::{Authority, DirStore, SpiffeId};
use meshd_controlplane::identity::{Identity, IdentityConfig};
use meshd_controlplane::server::{ControlPlane, Options, Source, TlsOptions};
use meshd_controlplane::tls::ServerIdentity;
use meshd_proto::ca::v1::CreateCertificateRequest;
use meshd_proto::ca::v1::certificate_service_client::CertificateServiceClient;
use meshd_proto::envoy::config::core::v3::{DataSource, Node, data_source};
use meshd_proto::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};
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
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Streaming};

/// How long any one network step may take before the test fails.
const STEP: Duration = Duration::from_secs(5);
/// How long "this never arrives" is watched for.
const QUIET: Duration = Duration::from_millis(500);
const TRUST_DOMAIN: &str = "cluster.local";
const CLIENT_NODE: &str = "client-0.shop";
const WEB_NODE: &str = "web-0.shop";
const CLIENT_ID: &str = "spiffe://cluster.local/ns/shop/sa/client";
const WEB_ID: &str = "spiffe://cluster.local/ns/shop/sa/web";

// ---- the registry ----------------------------------------------------------

/// `web` (one HTTP port, one endpoint: pod `web-0`, service account `web`)
/// and a client pod `client-0` with service account `client`.
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

// ---- the control plane under test ------------------------------------------

struct Harness {
    identity: Arc<Identity>,
    cp: ControlPlane,
    _registry: tempfile::TempDir,
    _ca: tempfile::TempDir,
}

impl Harness {
    /// A control plane with a fresh CA, serving xDS over mutual TLS.
    async fn start() -> Self {
        let ca_dir = tempfile::tempdir().expect("a temporary directory");
        let ca = Authority::load_or_generate(TRUST_DOMAIN, Arc::new(DirStore::new(ca_dir.path())))
            .expect("a CA");
        let identity = Arc::new(Identity::new(Arc::new(ca), IdentityConfig::default()));
        let tls = TlsOptions {
            identity: identity.clone(),
            server: ServerIdentity {
                id: SpiffeId::parse(DEFAULT_CONTROL_PLANE_ID).expect("a SPIFFE ID"),
                dns_names: vec!["localhost".into()],
                ips: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            },
        };
        Self::start_with(Some(tls), identity, ca_dir).await
    }

    async fn start_with(
        tls: Option<TlsOptions>,
        identity: Arc<Identity>,
        ca_dir: tempfile::TempDir,
    ) -> Self {
        let registry = tempfile::tempdir().expect("a temporary directory");
        std::fs::write(registry.path().join("mesh.yaml"), REGISTRY).expect("write the registry");
        let cp = ControlPlane::start(Options {
            source: Source::Files(registry.path().to_path_buf()),
            tls,
            xds: TcpListener::bind("127.0.0.1:0").await.expect("bind xDS"),
            debug: Some(TcpListener::bind("127.0.0.1:0").await.expect("bind debug")),
            debounce: Duration::from_millis(20),
            telemetry: Default::default(),
            authorization: Default::default(),
        })
        .await
        .expect("the control plane starts");
        let problems = cp.registry_problems.read().unwrap().clone();
        assert!(problems.is_empty(), "the registry is valid: {problems:?}");
        Harness {
            identity,
            cp,
            _registry: registry,
            _ca: ca_dir,
        }
    }

    /// A TLS channel to the xDS port that trusts the mesh CA and presents a
    /// certificate for `as_workload` (or none). Connection failures are
    /// returned, not unwrapped: refusing a client is an outcome some tests
    /// expect.
    async fn connect(&self, as_workload: Option<&SpiffeId>) -> Result<Channel, String> {
        let client = as_workload.map(|id| {
            let (issued, key) = self
                .identity
                .ca
                .issue_with_key(id, Duration::from_secs(3600))
                .expect("a client certificate");
            (issued.chain_pem, key.expose_pem().to_string())
        });
        self.connect_with(&self.identity.ca.trust_bundle_pem(), client)
            .await
    }

    /// A TLS channel to the xDS port that trusts `trust_pem` and presents
    /// `client` (chain and key PEM), as a proxy does with the bootstrap
    /// files it was started with.
    async fn connect_with(
        &self,
        trust_pem: &str,
        client: Option<(String, String)>,
    ) -> Result<Channel, String> {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(trust_pem))
            .domain_name("localhost");
        if let Some((chain, key)) = client {
            tls = tls.identity(tonic::transport::Identity::from_pem(chain, key));
        }
        let endpoint = Endpoint::from_shared(format!("https://{}", self.cp.xds_addr))
            .expect("a valid URI")
            .tls_config(tls)
            .expect("a valid TLS configuration");
        match timeout(STEP, endpoint.connect()).await {
            Ok(connected) => connected.map_err(|e| format!("{e:?}")),
            Err(_) => Err("timed out connecting".into()),
        }
    }

    /// An ADS stream over `channel`.
    async fn sotw_on(channel: Channel) -> Ads {
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
        Ads { tx, responses }
    }

    /// An ADS stream as the workload `client`.
    async fn sotw_as(&self, id: &SpiffeId) -> Ads {
        let channel = self
            .connect(Some(id))
            .await
            .expect("a client with a mesh certificate connects");
        Self::sotw_on(channel).await
    }

    async fn csr_client(&self, id: &SpiffeId) -> CertificateServiceClient<Channel> {
        CertificateServiceClient::new(
            self.connect(Some(id))
                .await
                .expect("a client with a mesh certificate connects"),
        )
    }

    /// A counter or gauge from `GET /metrics` (0 when absent).
    async fn metric(&self, name: &str) -> f64 {
        let body = self.get("/metrics").await;
        body.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .map_or(0.0, |value| {
                value
                    .trim()
                    .parse()
                    .unwrap_or_else(|e| panic!("{name}: {value}: {e}"))
            })
    }

    /// A plain HTTP/1.1 GET on the debug listener; returns the body of a 200.
    async fn get(&self, path: &str) -> String {
        let (status, body) = self.raw(&format!("GET {path} HTTP/1.1\r\n")).await;
        assert!(status.starts_with("HTTP/1.1 200"), "GET {path}: {status}");
        body
    }

    /// A raw HTTP/1.1 request on the debug listener: the status line and
    /// the body.
    async fn raw(&self, head: &str) -> (String, String) {
        let addr = self.cp.debug_addr.expect("the debug listener is on");
        let mut conn = timeout(STEP, TcpStream::connect(addr))
            .await
            .expect("connect to debug in time")
            .expect("connect to debug");
        let request = format!("{head}Host: {addr}\r\nConnection: close\r\n\r\n");
        timeout(STEP, conn.write_all(request.as_bytes()))
            .await
            .expect("send in time")
            .expect("send the request");
        let mut raw = Vec::new();
        timeout(STEP, conn.read_to_end(&mut raw))
            .await
            .expect("the debug endpoint answers in time")
            .expect("read the response");
        let text = String::from_utf8(raw).expect("a UTF-8 response");
        let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
        let status = head.lines().next().unwrap_or_default().to_string();
        (status, body.to_string())
    }

    async fn stop(self) {
        self.cp.shutdown().await;
    }
}

/// Issue #11 C.2: a web page cannot rotate the root through a
/// port-forward: requests with an Origin, or without the confirmation
/// header (a plain form POST), are refused; the marked request works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_the_root_refuses_cross_site_and_unmarked_requests() {
    let h = Harness::start().await;
    let form = "POST /ca/rotate-root HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 0\r\n";
    let (status, body) = h.raw(form).await;
    assert!(status.contains(" 403"), "{status}: {body}");
    assert!(body.contains("x-meshd-confirm: rotate-root"), "{body}");
    let cross_site = "POST /ca/rotate-root HTTP/1.1\r\nOrigin: http://evil.example\r\nx-meshd-confirm: rotate-root\r\nContent-Length: 0\r\n";
    let (status, body) = h.raw(cross_site).await;
    assert!(status.contains(" 403"), "{status}: {body}");
    assert!(body.contains("Origin"), "{body}");
    let marked =
        "POST /ca/rotate-root HTTP/1.1\r\nx-meshd-confirm: rotate-root\r\nContent-Length: 0\r\n";
    let (status, body) = h.raw(marked).await;
    assert!(status.contains(" 200"), "{status}: {body}");
    h.stop().await;
}

/// One State-of-the-World ADS stream.
struct Ads {
    tx: mpsc::Sender<DiscoveryRequest>,
    responses: Streaming<DiscoveryResponse>,
}

impl Ads {
    async fn send(&self, request: DiscoveryRequest) {
        timeout(STEP, self.tx.send(request))
            .await
            .expect("the request is taken in time")
            .expect("the request stream is open");
    }

    /// The next response, or the status the stream ended with.
    async fn next(&mut self) -> Result<Option<DiscoveryResponse>, tonic::Status> {
        timeout(STEP, self.responses.message())
            .await
            .expect("a response or an end in time")
    }

    /// Every secret that arrives until `done` holds or `window` passes,
    /// acknowledging each response as Envoy does.
    async fn secrets_within(
        &mut self,
        window: Duration,
        names: &[&str],
        done: impl Fn(&[Secret]) -> bool,
    ) -> Vec<Secret> {
        let mut secrets = Vec::new();
        let deadline = tokio::time::Instant::now() + window;
        while !done(&secrets) {
            let Ok(message) = tokio::time::timeout_at(deadline, self.responses.message()).await
            else {
                break;
            };
            let response = message
                .expect("no stream error")
                .expect("the stream stays open");
            assert_eq!(response.type_url, type_url::SECRET, "{response:?}");
            secrets.extend(response.resources.iter().map(|any| {
                assert_eq!(any.type_url, type_url::SECRET);
                Secret::decode(any.value.as_slice()).expect("a well-formed Secret")
            }));
            self.send(DiscoveryRequest {
                version_info: response.version_info.clone(),
                response_nonce: response.nonce.clone(),
                ..sds(names)
            })
            .await;
        }
        secrets
    }
}

fn sds(names: &[&str]) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: type_url::SECRET.to_string(),
        resource_names: names.iter().map(|n| n.to_string()).collect(),
        ..Default::default()
    }
}

fn first_sds(node_id: &str, names: &[&str]) -> DiscoveryRequest {
    DiscoveryRequest {
        node: Some(Node {
            id: node_id.to_string(),
            ..Default::default()
        }),
        ..sds(names)
    }
}

fn client_id() -> SpiffeId {
    SpiffeId::parse(CLIENT_ID).unwrap()
}

fn inline_text(source: Option<&DataSource>) -> String {
    match source.and_then(|s| s.specifier.as_ref()) {
        Some(data_source::Specifier::InlineBytes(bytes)) => {
            String::from_utf8(bytes.clone()).expect("PEM is UTF-8")
        }
        other => panic!("an inline data source, got {other:?}"),
    }
}

/// The URI SANs of the first certificate in `pem`, and its lifetime.
fn leaf_facts(pem: &str) -> (Vec<String>, Duration) {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("a PEM certificate");
    let cert = pem.parse_x509().expect("an X.509 certificate");
    let uris = cert
        .subject_alternative_name()
        .expect("a well-formed SAN extension")
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    x509_parser::extensions::GeneralName::URI(uri) => Some(uri.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let validity = cert.validity();
    let lifetime = validity.not_after.timestamp() - validity.not_before.timestamp();
    (
        uris,
        Duration::from_secs(lifetime.try_into().expect("not_after after not_before")),
    )
}

/// The raw public key of the first certificate in `pem`.
fn leaf_public_key(pem: &str) -> Vec<u8> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("a PEM certificate");
    let cert = pem.parse_x509().expect("an X.509 certificate");
    cert.public_key().subject_public_key.data.to_vec()
}

fn csr(uri: &str) -> (String, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("a key");
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into().expect("an IA5 string"))];
    let csr = params
        .serialize_request(&key)
        .expect("a CSR")
        .pem()
        .expect("PEM");
    (csr, key)
}

fn ttl(seconds: i64) -> Option<meshd_proto::Duration> {
    Some(meshd_proto::Duration { seconds, nanos: 0 })
}

// ---- tests -----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_gets_its_own_certificate_over_sds() {
    let h = Harness::start().await;
    let mut ads = h.sotw_as(&client_id()).await;
    let names = ["default", "ROOTCA"];
    ads.send(first_sds(CLIENT_NODE, &names)).await;
    let secrets = ads
        .secrets_within(STEP, &names, |s| {
            ["default", "ROOTCA"]
                .iter()
                .all(|n| s.iter().any(|secret| secret.name == *n))
        })
        .await;
    let mut served: Vec<&str> = secrets.iter().map(|s| s.name.as_str()).collect();
    served.sort_unstable();
    served.dedup();
    assert_eq!(served, ["ROOTCA", "default"]);

    let default = secrets.iter().find(|s| s.name == "default").unwrap();
    let Some(secret::Type::TlsCertificate(tls)) = &default.r#type else {
        panic!("`default` is a TLS certificate: {:?}", default.r#type);
    };
    let chain = inline_text(tls.certificate_chain.as_ref());
    let (uris, lifetime) = leaf_facts(&chain);
    assert_eq!(uris, [CLIENT_ID], "the workload's own identity, only");
    assert!(
        lifetime <= Duration::from_secs(24 * 3600 + 5 * 60),
        "{lifetime:?}"
    );
    // The key Envoy is handed is the one the certificate certifies.
    let key = rcgen::KeyPair::from_pem(&inline_text(tls.private_key.as_ref()))
        .expect("a PEM private key");
    assert_eq!(key.public_key_raw(), leaf_public_key(&chain).as_slice());

    let root = secrets.iter().find(|s| s.name == "ROOTCA").unwrap();
    let Some(secret::Type::ValidationContext(validation)) = &root.r#type else {
        panic!("`ROOTCA` is a validation context: {:?}", root.r#type);
    };
    assert_eq!(
        inline_text(validation.trusted_ca.as_ref()),
        h.identity.ca.trust_bundle_pem()
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_id_claiming_another_workload_is_denied() {
    let h = Harness::start().await;
    let mut ads = h.sotw_as(&client_id()).await;
    ads.send(first_sds(WEB_NODE, &["default", "ROOTCA"])).await;
    let status = loop {
        match ads.next().await {
            Ok(Some(response)) => {
                // Nothing of web's may ever reach the client.
                for any in &response.resources {
                    let secret = Secret::decode(any.value.as_slice()).expect("a Secret");
                    assert_ne!(secret.name, "default", "web's certificate was served");
                }
            }
            Ok(None) => panic!("the stream ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains(WEB_ID) && status.message().contains(CLIENT_ID),
        "the message names both identities: {}",
        status.message()
    );
    assert!(h.metric("meshd_xds_identity_denied_total").await >= 1.0);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_for_another_secret_is_refused() {
    let h = Harness::start().await;
    let before = h.metric("meshd_xds_identity_denied_total").await;
    let mut ads = h.sotw_as(&client_id()).await;
    let names = ["default", WEB_ID];
    ads.send(first_sds(CLIENT_NODE, &names)).await;
    // Its own certificate arrives; then watch a while longer: the foreign
    // secret must never arrive.
    let mut secrets = ads
        .secrets_within(STEP, &names, |s| s.iter().any(|s| s.name == "default"))
        .await;
    secrets.extend(ads.secrets_within(QUIET, &names, |_| false).await);
    let served: Vec<&str> = secrets.iter().map(|s| s.name.as_str()).collect();
    assert!(served.contains(&"default"), "{served:?}");
    assert!(
        served.iter().all(|name| *name != WEB_ID),
        "another workload's secret was served: {served:?}"
    );
    for secret in secrets.iter().filter(|s| s.name == "default") {
        let Some(secret::Type::TlsCertificate(tls)) = &secret.r#type else {
            panic!("`default` is a TLS certificate");
        };
        let (uris, _) = leaf_facts(&inline_text(tls.certificate_chain.as_ref()));
        assert_eq!(uris, [CLIENT_ID]);
    }
    assert!(h.metric("meshd_xds_identity_denied_total").await >= before + 1.0);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_certificate_is_refused() {
    let h = Harness::start().await;
    // The control: the same client, with a certificate, is served. So what
    // fails below fails for the missing certificate alone.
    let mut ads = h.sotw_as(&client_id()).await;
    ads.send(first_sds(CLIENT_NODE, &["default"])).await;
    let served = ads
        .secrets_within(STEP, &["default"], |s| !s.is_empty())
        .await;
    assert_eq!(served.len(), 1, "the control is served");

    // TLS 1.3 lets the client finish its side of the handshake before the
    // server checks the (missing) certificate, so the refusal surfaces at
    // connect or at the first call (as an alert or a closed connection,
    // depending on timing); either way no ADS call succeeds.
    let outcome = match h.connect(None).await {
        Err(e) => Err(format!("connect: {e}")),
        Ok(channel) => {
            let (tx, rx) = mpsc::channel(16);
            tx.send(first_sds(CLIENT_NODE, &["default"])).await.unwrap();
            let call = timeout(
                STEP,
                AggregatedDiscoveryServiceClient::new(channel)
                    .stream_aggregated_resources(ReceiverStream::new(rx)),
            )
            .await
            .expect("the call ends in time");
            match call {
                Err(status) => Err(format!("call: {status:?}")),
                Ok(response) => {
                    let mut stream = response.into_inner();
                    match timeout(STEP, stream.message())
                        .await
                        .expect("the stream ends in time")
                    {
                        Err(status) => Err(format!("stream: {status:?}")),
                        Ok(message) => Ok(message),
                    }
                }
            }
        }
    };
    assert!(
        outcome.is_err(),
        "a client without a certificate was served: {outcome:?}"
    );
    let proxies = h.cp.state.proxies();
    assert!(
        proxies
            .iter()
            .all(|p| p.peer_identity.as_deref() == Some(CLIENT_ID)),
        "only the control's stream ever reached ADS: {proxies:?}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csr_signs_only_the_callers_identity() {
    let h = Harness::start().await;
    let mut client = h.csr_client(&client_id()).await;

    // Its own identity, for ten minutes.
    let (csr_pem, key) = csr(CLIENT_ID);
    let response = timeout(
        STEP,
        client.create_certificate(CreateCertificateRequest {
            csr_pem,
            requested_ttl: ttl(600),
        }),
    )
    .await
    .expect("an answer in time")
    .expect("the CSR is signed")
    .into_inner();
    assert_eq!(response.cert_chain_pem.len(), 1, "leaf only: a root signs");
    let leaf = &response.cert_chain_pem[0];
    let (uris, lifetime) = leaf_facts(leaf);
    assert_eq!(uris, [CLIENT_ID]);
    assert!(
        lifetime <= Duration::from_secs(600 + 5 * 60) && lifetime >= Duration::from_secs(600),
        "ten minutes, plus at most the 5-minute backdate: {lifetime:?}"
    );
    assert_eq!(
        leaf_public_key(leaf),
        key.public_key_raw(),
        "over the caller's key"
    );
    assert_eq!(
        response.trust_bundle_pem.concat(),
        h.identity.ca.trust_bundle_pem()
    );

    // Another workload's identity.
    let (csr_pem, _) = csr(WEB_ID);
    let status = timeout(
        STEP,
        client.create_certificate(CreateCertificateRequest {
            csr_pem,
            requested_ttl: ttl(600),
        }),
    )
    .await
    .expect("an answer in time")
    .expect_err("another identity is refused");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains(WEB_ID), "{}", status.message());

    // Not a CSR.
    let status = timeout(
        STEP,
        client.create_certificate(CreateCertificateRequest {
            csr_pem:
                "-----BEGIN CERTIFICATE REQUEST-----\ngarbage\n-----END CERTIFICATE REQUEST-----\n"
                    .into(),
            requested_ttl: None,
        }),
    )
    .await
    .expect("an answer in time")
    .expect_err("garbage is refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("csr_pem"), "{}", status.message());

    // A hundred days is clamped to the workload lifetime (24 h by default).
    let (csr_pem, _) = csr(CLIENT_ID);
    let response = timeout(
        STEP,
        client.create_certificate(CreateCertificateRequest {
            csr_pem,
            requested_ttl: ttl(100 * 24 * 3600),
        }),
    )
    .await
    .expect("an answer in time")
    .expect("the CSR is signed")
    .into_inner();
    let (_, lifetime) = leaf_facts(&response.cert_chain_pem[0]);
    let workload_ttl = h.identity.config.workload_ttl;
    assert_eq!(workload_ttl, Duration::from_secs(24 * 3600));
    assert!(
        lifetime >= workload_ttl && lifetime <= workload_ttl + Duration::from_secs(5 * 60),
        "clamped to the workload lifetime: {lifetime:?}"
    );

    assert_eq!(h.metric("meshd_ca_csr_issued_total").await, 2.0);
    assert_eq!(h.metric("meshd_ca_csr_denied_total").await, 1.0);
    h.stop().await;
}

/// The CSR service authenticates by client certificate, so a control plane
/// without TLS does not offer it at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_csr_service_is_only_on_the_tls_listener() {
    let ca_dir = tempfile::tempdir().expect("a temporary directory");
    let ca = Authority::load_or_generate(TRUST_DOMAIN, Arc::new(DirStore::new(ca_dir.path())))
        .expect("a CA");
    let identity = Arc::new(Identity::new(Arc::new(ca), IdentityConfig::default()));
    let h = Harness::start_with(None, identity, ca_dir).await;
    let channel = timeout(
        STEP,
        Endpoint::from_shared(format!("http://{}", h.cp.xds_addr))
            .expect("a valid URI")
            .connect(),
    )
    .await
    .expect("connect in time")
    .expect("plaintext xDS accepts connections");
    let (csr_pem, _) = csr(CLIENT_ID);
    let status = timeout(
        STEP,
        CertificateServiceClient::new(channel).create_certificate(CreateCertificateRequest {
            csr_pem,
            requested_ttl: None,
        }),
    )
    .await
    .expect("an answer in time")
    .expect_err("no CSR service without TLS");
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    h.stop().await;
}

fn web_id() -> SpiffeId {
    SpiffeId::parse(WEB_ID).unwrap()
}

const ROTATE: &str =
    "POST /ca/rotate-root HTTP/1.1\r\nx-meshd-confirm: rotate-root\r\nContent-Length: 0\r\n";

/// Issue #11 C.3: one proxy that never acknowledges its secrets does not
/// hold up the mesh's root rotation. It is disconnected once the (bounded)
/// wait runs out, the rotation completes for everyone else, and the answer
/// is a 200 whose JSON names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_that_never_acknowledges_does_not_hold_up_a_root_rotation() {
    let h = Harness::start().await;
    // Short, so the test does not sit through the default minute.
    h.identity
        .set_rotation_step_timeout(Duration::from_millis(300));
    let names = ["default", "ROOTCA"];

    // `client` acknowledges every response, as Envoy does.
    let mut client = h.sotw_as(&client_id()).await;
    client.send(first_sds(CLIENT_NODE, &names)).await;
    let acking = tokio::spawn(async move {
        let mut acked = 0;
        while let Ok(Some(response)) = client.responses.message().await {
            client
                .send(DiscoveryRequest {
                    version_info: response.version_info.clone(),
                    response_nonce: response.nonce.clone(),
                    ..sds(&names)
                })
                .await;
            acked += 1;
        }
        acked
    });

    // `web` takes its first secrets and then never acknowledges anything.
    let mut web = h.sotw_as(&web_id()).await;
    web.send(first_sds(WEB_NODE, &names)).await;
    let first = web
        .next()
        .await
        .expect("secrets")
        .expect("the stream is open");
    assert_eq!(first.type_url, type_url::SECRET);

    let (status, body) = h.raw(ROTATE).await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}\n{body}");
    let report: serde_json::Value = serde_json::from_str(&body).expect("a JSON report");
    assert_eq!(report["complete"], true, "{body}");
    assert!(report["error"].is_null(), "{body}");
    let steps = report["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 3, "{body}");
    assert_eq!(
        steps[0]["disconnected"],
        serde_json::json!([WEB_NODE]),
        "the stuck proxy is named at the step it held up: {body}"
    );
    assert_eq!(steps[0]["acknowledged"], 1, "{body}");
    for step in &steps[1..] {
        assert_eq!(step["disconnected"], serde_json::json!([]), "{body}");
    }
    assert_eq!(
        h.identity.ca.trust_anchors().len(),
        1,
        "the old root is retired"
    );

    // The stuck proxy was told to reconnect, with the reason.
    let ended = loop {
        match web.next().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), Code::Unavailable, "{ended:?}");
    assert!(ended.message().contains("root rotation"), "{ended:?}");

    // The client was re-issued along the way and is still connected.
    let proxies = h.get("/debug/xds/proxies").await;
    assert!(proxies.contains(CLIENT_NODE), "{proxies}");
    assert!(!proxies.contains(WEB_NODE), "{proxies}");
    h.stop().await;
    let acked = timeout(STEP, acking)
        .await
        .expect("the client ends")
        .unwrap();
    assert!(acked >= 4, "the client acknowledged each step: {acked}");
}

// ---- what the server logs ---------------------------------------------------

/// Every event and span field the server records, as text.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<Record>>>);

#[derive(Debug)]
struct Record {
    /// `None` for span fields.
    level: Option<tracing::Level>,
    fields: Vec<(String, String)>,
}

impl Record {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

struct Fields<'a>(&'a mut Vec<(String, String)>);

impl tracing::field::Visit for Fields<'_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.push((field.name().to_string(), value.to_string()));
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0
            .push((field.name().to_string(), format!("{value:?}")));
    }
}

impl Captured {
    fn push(&self, level: Option<tracing::Level>, fields: Vec<(String, String)>) {
        self.0.lock().unwrap().push(Record { level, fields });
    }

    /// The WARN lines about refused SDS names, and the count each carries.
    fn refused_secret_lines(&self) -> Vec<u64> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.level == Some(tracing::Level::WARN))
            .filter(|r| {
                r.field("message")
                    .is_some_and(|m| m.contains("not the proxy's own"))
            })
            .map(|r| r.field("refused").and_then(|n| n.parse().ok()).unwrap_or(0))
            .collect()
    }

    fn longest_field(&self) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .flat_map(|r| r.fields.iter().map(|(_, v)| v.len()))
            .max()
            .unwrap_or(0)
    }
}

impl tracing::Subscriber for Captured {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let mut fields = Vec::new();
        span.record(&mut Fields(&mut fields));
        self.push(None, fields);
        tracing::span::Id::from_u64(1)
    }

    fn record(&self, _: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        let mut fields = Vec::new();
        values.record(&mut Fields(&mut fields));
        self.push(None, fields);
    }

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        let mut fields = Vec::new();
        event.record(&mut Fields(&mut fields));
        self.push(Some(*event.metadata().level()), fields);
    }

    fn enter(&self, _: &tracing::span::Id) {}

    fn exit(&self, _: &tracing::span::Id) {}
}

/// Issue #11 C.6: an authenticated proxy cannot make the log grow with what
/// it sends. A 100 KB node id is shortened wherever it is logged or shown,
/// and 5,000 refused SDS names over five requests are each counted but
/// logged as a handful of lines that carry the count.
///
/// On the current-thread runtime every server task runs on this thread, so
/// the thread's capture sees everything they log.
#[tokio::test]
async fn a_proxy_cannot_amplify_the_log() {
    let captured = Captured::default();
    let _capture = tracing::subscriber::set_default(captured.clone());
    let h = Harness::start().await;
    let node = format!("client-0.shop{}", "x".repeat(100_000));
    let foreign: Vec<String> = (0..1000).map(|i| format!("someone-else-{i}")).collect();
    let mut names = vec!["ROOTCA"];
    names.extend(foreign.iter().map(String::as_str));

    let ads = h.sotw_as(&client_id()).await;
    ads.send(first_sds(&node, &names)).await;
    for _ in 0..4 {
        ads.send(sds(&names)).await;
    }
    let deadline = tokio::time::Instant::now() + STEP;
    while h.metric("meshd_xds_identity_denied_total").await < 5000.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the five requests are read in time"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(h.metric("meshd_xds_identity_denied_total").await, 5000.0);

    let proxies = h.get("/debug/xds/proxies").await;
    assert!(proxies.contains("client-0.shopxxx"), "{proxies}");
    assert!(proxies.len() < 4096, "{} bytes", proxies.len());

    // The stream ends: what was refused since the last line is logged.
    drop(ads);
    let deadline = tokio::time::Instant::now() + STEP;
    while captured.refused_secret_lines().iter().sum::<u64>() < 5000 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "every refusal is logged in time: {:?}",
            captured.refused_secret_lines()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lines = captured.refused_secret_lines();
    assert_eq!(lines.iter().sum::<u64>(), 5000, "{lines:?}");
    assert!(lines.len() < 10, "{} lines for 5000 refusals", lines.len());
    assert!(
        captured.longest_field() < 2048,
        "a field of {} bytes was logged",
        captured.longest_field()
    );
    h.stop().await;
}

/// Issue #11 C.4: a proxy started before a root rotation, whose bootstrap
/// identity and trust bundle nobody refreshed (local mode), still gets in
/// after the rotation: the xDS port accepts client certificates from the
/// retired root for a grace period, and presents the new root certified by
/// the old one, so the proxy's old trust bundle verifies the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bootstrap_identity_from_the_previous_root_still_connects_after_rotation() {
    let h = Harness::start().await;
    // What `meshd bootstrap --issue-from-ca-dir` wrote before the rotation.
    let old_bundle = h.identity.ca.trust_bundle_pem();
    let (issued, key) = h
        .identity
        .ca
        .issue_with_key(&client_id(), Duration::from_secs(3600))
        .expect("a bootstrap identity");
    let bootstrap = (issued.chain_pem, key.expose_pem().to_string());

    let (status, body) = h.raw(ROTATE).await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}\n{body}");
    let new_bundle = h.identity.ca.trust_bundle_pem();
    assert_ne!(new_bundle, old_bundle, "the root was replaced");
    assert_eq!(
        h.identity.ca.trust_anchors().len(),
        1,
        "the old root is retired"
    );

    // The proxy reconnects with its old files and is served.
    let channel = h
        .connect_with(&old_bundle, Some(bootstrap))
        .await
        .expect("the old bootstrap identity and trust bundle still connect");
    let mut ads = Harness::sotw_on(channel).await;
    let names = ["default", "ROOTCA"];
    ads.send(first_sds(CLIENT_NODE, &names)).await;
    let secrets = ads
        .secrets_within(STEP, &names, |s| {
            names
                .iter()
                .all(|n| s.iter().any(|secret| secret.name == *n))
        })
        .await;
    let root = secrets.iter().find(|s| s.name == "ROOTCA").expect("ROOTCA");
    let Some(secret::Type::ValidationContext(validation)) = &root.r#type else {
        panic!("`ROOTCA` is a validation context: {:?}", root.r#type);
    };
    assert_eq!(
        inline_text(validation.trusted_ca.as_ref()),
        new_bundle,
        "the proxy is sent the new root only"
    );
    let default = secrets
        .iter()
        .find(|s| s.name == "default")
        .expect("default");
    let Some(secret::Type::TlsCertificate(tls)) = &default.r#type else {
        panic!("`default` is a TLS certificate: {:?}", default.r#type);
    };
    let (uris, _) = leaf_facts(&inline_text(tls.certificate_chain.as_ref()));
    assert_eq!(uris, [CLIENT_ID]);
    assert_eq!(h.metric("meshd_xds_identity_denied_total").await, 0.0);
    h.stop().await;
}

/// Issue #11 C.4: a refused TLS handshake on the xDS port is counted by
/// reason, whichever side refused: our verifier (a client certificate from
/// another CA) or the client (it does not trust our certificate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_tls_handshakes_are_counted_by_reason() {
    let h = Harness::start().await;
    let other_dir = tempfile::tempdir().expect("a temporary directory");
    // Another mesh's CA (another trust domain, so its root's name differs
    // from ours too).
    let other =
        Authority::load_or_generate("other.example", Arc::new(DirStore::new(other_dir.path())))
            .expect("another CA");
    let (issued, key) = other
        .issue_with_key(
            &SpiffeId::new("other.example", "shop", "client"),
            Duration::from_secs(3600),
        )
        .expect("a certificate from another CA");
    let stranger = (issued.chain_pem, key.expose_pem().to_string());

    // A client certificate from a CA this mesh never trusted.
    let refused = h
        .connect_with(&h.identity.ca.trust_bundle_pem(), Some(stranger.clone()))
        .await;
    // The client may only learn of the refusal on its first request.
    if let Ok(channel) = refused {
        let mut ads = AggregatedDiscoveryServiceClient::new(channel);
        let (_tx, rx) = mpsc::channel::<DiscoveryRequest>(1);
        let opened = timeout(
            STEP,
            ads.stream_aggregated_resources(ReceiverStream::new(rx)),
        )
        .await
        .expect("an answer in time");
        assert!(opened.is_err(), "a foreign client certificate is refused");
    }
    // A client that does not trust this mesh's root.
    let distrusting = h
        .connect_with(&other.trust_bundle_pem(), Some(stranger))
        .await;
    assert!(distrusting.is_err(), "the client refuses our certificate");

    let deadline = tokio::time::Instant::now() + STEP;
    let peer_unknown_ca = "meshd_xds_tls_handshake_failures_total{reason=\"peer_unknown_ca\"}";
    while h.metric(peer_unknown_ca).await < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the client's refusal is counted in time:\n{}",
            h.get("/metrics").await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(h.metric(peer_unknown_ca).await, 1.0);
    // Each handshake is counted once, but how many the refused client makes
    // is its library's choice: tonic's channel reconnects in the background
    // after the server's alert, so one or a few, each refused and counted.
    let unknown_ca = "meshd_xds_tls_handshake_failures_total{reason=\"unknown_ca\"}";
    while h.metric(unknown_ca).await < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the foreign certificate's refusal is counted in time:\n{}",
            h.get("/metrics").await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.stop().await;
}

/// A proxy proves its certificate at every connection: the xDS server
/// resumes no TLS session (1.2 or 1.3), so a session opened with a
/// certificate that has since expired, or that chains to a root since
/// retired, cannot bring that identity back without the checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connection_proves_its_certificate_afresh() {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

    let h = Harness::start().await;
    let (issued, key) = h
        .identity
        .ca
        .issue_with_key(&client_id(), Duration::from_secs(3600))
        .expect("a client certificate");
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(issued.chain_pem.as_bytes())
            .collect::<Result<_, _>>()
            .expect("the issued chain parses");
    let key = PrivateKeyDer::from_pem_slice(key.expose_pem().as_bytes()).expect("the key parses");
    let mut roots = rustls::RootCertStore::empty();
    for root in h.identity.ca.trust_anchors() {
        roots.add(root).expect("a root");
    }
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        // One client, with its session cache, for both connections, as
        // Envoy keeps its TLS sessions across reconnects.
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[version])
        .expect("the version")
        .with_root_certificates(roots.clone())
        .with_client_auth_cert(chain.clone(), key.clone_key())
        .expect("the client certificate");
        config.alpn_protocols = vec![b"h2".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        for connection in 0..2 {
            let tcp = TcpStream::connect(h.cp.xds_addr).await.expect("connect");
            let mut tls = timeout(
                STEP,
                connector.connect(ServerName::try_from("localhost").unwrap(), tcp),
            )
            .await
            .expect("the handshake ends in time")
            .expect("the handshake");
            assert_eq!(
                tls.get_ref().1.handshake_kind(),
                Some(rustls::HandshakeKind::Full),
                "{version:?}, connection {connection}"
            );
            // HTTP/2's preface and an empty SETTINGS; reading the server's
            // SETTINGS takes in whatever it sent after the handshake (a TLS
            // 1.3 session ticket among it), as a proxy's connection would.
            tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
                .await
                .expect("write the preface");
            let mut frame_header = [0u8; 9];
            timeout(STEP, tls.read_exact(&mut frame_header))
                .await
                .expect("the server's SETTINGS in time")
                .expect("the server's SETTINGS");
            assert_eq!(frame_header[3], 4, "a SETTINGS frame");
        }
    }
    h.stop().await;
}
