//! The certificate service (`meshd.ca.v1.CertificateService`): how a
//! workload that is not an Envoy sidecar (a job, an agent, a database proxy)
//! gets a workload certificate and keeps it fresh.
//!
//! ```text
//! workload ──TLS, client cert = its identity──> xDS port ──CreateCertificate(csr, ttl)
//!    ^                                              │ caller = the client cert's SPIFFE ID
//!    │                                              v
//!    └────────── chain (leaf, intermediates) ── Authority::sign_csr(csr, caller, ttl)
//!                + trust bundle                     (refuses any other identity)
//! ```
//!
//! The caller proves who it is with the TLS client certificate it already
//! holds (its bootstrap certificate, or the last one this service issued);
//! it can only ever obtain a certificate for that same identity, over a key
//! it generated itself. The service runs only on the TLS listener, next to
//! ADS.

use std::sync::Arc;
use std::time::Duration;

use meshd_ca::{MIN_WORKLOAD_TTL, SpiffeId};
use meshd_proto::ca::v1::{CreateCertificateRequest, CreateCertificateResponse};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tonic::Status;

use crate::identity::Identity;

/// What the certificate service counts. Clones share their counters, so the
/// service and the metrics registry each hold one.
#[derive(Clone, Debug, Default)]
pub struct CsrMetrics {
    /// Certificates signed.
    pub issued: Counter,
    /// Requests refused because the caller is not authenticated or asked for
    /// an identity not its own (malformed requests are not counted: they
    /// are bugs, not attempts).
    pub denied: Counter,
}

impl CsrMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("meshd_ca");
        r.register(
            "csr_issued",
            "Workload certificates signed for certificate signing requests",
            self.issued.clone(),
        );
        r.register(
            "csr_denied",
            "Certificate signing requests refused: no client certificate, or an identity not the caller's",
            self.denied.clone(),
        );
    }
}

/// The gRPC certificate service.
#[derive(Clone, Debug)]
pub struct CertificateService {
    identity: Arc<Identity>,
    metrics: CsrMetrics,
}

impl CertificateService {
    pub fn new(identity: Arc<Identity>, metrics: CsrMetrics) -> Self {
        CertificateService { identity, metrics }
    }

    pub fn into_service(self) -> CertificateServer {
        CertificateServer {
            service: Arc::new(self),
        }
    }

    /// Signs `request` for `caller` (the identity its client certificate
    /// proved, if any).
    pub fn create(
        &self,
        caller: Option<SpiffeId>,
        request: &CreateCertificateRequest,
    ) -> Result<CreateCertificateResponse, Status> {
        let Some(caller) = caller else {
            self.metrics.denied.inc();
            tracing::warn!("denied a CSR: the caller presented no workload client certificate");
            return Err(Status::unauthenticated(
                "CreateCertificate needs a TLS client certificate whose URI SAN is the caller's \
                 workload identity (spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>), \
                 issued by the mesh CA",
            ));
        };
        tracing::Span::current().record("caller", tracing::field::display(&caller));
        if caller.trust_domain != self.identity.trust_domain() {
            self.metrics.denied.inc();
            tracing::warn!(%caller, "denied a CSR: the caller is from another trust domain");
            return Err(Status::permission_denied(format!(
                "the client certificate is {caller}, outside this mesh's trust domain `{}`",
                self.identity.trust_domain()
            )));
        }
        let ttl = workload_ttl(
            request.requested_ttl.as_ref(),
            self.identity.config.workload_ttl,
        )?;
        let issued = match self.identity.ca.sign_csr(&request.csr_pem, &caller, ttl) {
            Ok(issued) => issued,
            Err(e) => return Err(self.refused(&caller, e)),
        };
        self.metrics.issued.inc();
        tracing::info!(
            identity = %caller,
            serial = %issued.serial_hex,
            not_after = %issued.not_after,
            "issued a workload certificate for a CSR"
        );
        Ok(CreateCertificateResponse {
            cert_chain_pem: split_pem(&issued.chain_pem),
            trust_bundle_pem: split_pem(&self.identity.ca.trust_bundle_pem()),
        })
    }

    /// The status for a CSR the CA would not sign. The CA's messages name
    /// identities and validity dates, never keys or the CSR itself.
    fn refused(&self, caller: &SpiffeId, error: meshd_ca::Error) -> Status {
        use meshd_ca::Error;
        match error {
            Error::IdentityMismatch { .. } => {
                self.metrics.denied.inc();
                tracing::warn!(%caller, "denied a CSR: {error}");
                Status::permission_denied(error.to_string())
            }
            Error::InvalidCsr(_) => {
                tracing::info!(%caller, "refused a CSR: {error}");
                Status::invalid_argument(format!(
                    "csr_pem: {error}; accepted: a PEM PKCS#10 request \
                     (-----BEGIN CERTIFICATE REQUEST-----)"
                ))
            }
            Error::IssuerExpired { .. } | Error::IssuerNotYetValid { .. } => {
                tracing::error!(%caller, "cannot sign a CSR: {error}");
                Status::unavailable(error.to_string())
            }
            other => {
                tracing::error!(%caller, "cannot sign a CSR: {other}");
                Status::internal(format!("cannot sign the certificate: {other}"))
            }
        }
    }
}

/// The lifetime to issue for `requested`. Unset or zero means `max`, the
/// mesh's workload certificate lifetime.
///
/// Longer requests are shortened to `max`: there is no revocation, so a
/// certificate's lifetime is how long a stolen key stays useful, and a
/// workload outside Envoy gets the same exposure as a sidecar. Shorter ones
/// are raised to [`MIN_WORKLOAD_TTL`]: a certificate that expires within
/// seconds would have its holder renewing continuously (load on the CA for
/// no gain) and could expire before a peer with a slightly late clock ever
/// accepts it.
pub fn workload_ttl(
    requested: Option<&meshd_proto::Duration>,
    max: Duration,
) -> Result<Duration, Status> {
    let max = max.max(MIN_WORKLOAD_TTL);
    let Some(requested) = requested else {
        return Ok(max);
    };
    if requested.seconds < 0 || !(0..1_000_000_000).contains(&requested.nanos) {
        return Err(Status::invalid_argument(format!(
            "requested_ttl: {}s {}ns is not a valid lifetime; accepted: a positive duration \
             (at most {}s; unset for the default)",
            requested.seconds,
            requested.nanos,
            max.as_secs()
        )));
    }
    let requested = Duration::new(requested.seconds as u64, requested.nanos as u32);
    if requested.is_zero() {
        return Ok(max);
    }
    Ok(requested.clamp(MIN_WORKLOAD_TTL, max))
}

/// Each PEM certificate in `pem`, as its own string, with its line endings
/// as they were.
fn split_pem(pem: &str) -> Vec<String> {
    const END: &str = "-----END CERTIFICATE-----";
    let mut certs = Vec::new();
    let mut rest = pem;
    while let Some(begin) = rest.find("-----BEGIN CERTIFICATE-----") {
        let Some(end) = rest[begin..].find(END) else {
            break;
        };
        let mut end = begin + end + END.len();
        for eol in ["\r\n", "\n"] {
            if rest[end..].starts_with(eol) {
                end += eol.len();
                break;
            }
        }
        certs.push(rest[begin..end].to_string());
        rest = &rest[end..];
    }
    certs
}

// ---- the gRPC method, decoded by hand ------------------------------------
//
// The generated server decodes `csr_pem` as a protobuf `string`, and prost
// fails a whole message whose string is not UTF-8 with a decode error that
// tonic answers as INTERNAL: the caller's mistake would look like ours. So
// the request is decoded as `WireRequest` (the same message, `csr_pem` as
// `bytes`, which is wire-compatible), and text is checked here, where the
// error can name the field.

/// The gRPC path of `CreateCertificate`.
const CREATE_CERTIFICATE_PATH: &str = "/meshd.ca.v1.CertificateService/CreateCertificate";

/// `CreateCertificateRequest` as it arrives on the wire: field 1 as bytes.
#[derive(Clone, PartialEq, prost::Message)]
struct WireRequest {
    #[prost(bytes = "vec", tag = "1")]
    csr_pem: Vec<u8>,
    #[prost(message, optional, tag = "2")]
    requested_ttl: Option<meshd_proto::Duration>,
}

impl TryFrom<WireRequest> for CreateCertificateRequest {
    type Error = Status;

    fn try_from(wire: WireRequest) -> Result<Self, Status> {
        let csr_pem = String::from_utf8(wire.csr_pem).map_err(|e| {
            Status::invalid_argument(format!(
                "csr_pem: not UTF-8 text (invalid byte at offset {}); accepted: a PEM PKCS#10 \
                 request (-----BEGIN CERTIFICATE REQUEST-----)",
                e.utf8_error().valid_up_to()
            ))
        })?;
        Ok(CreateCertificateRequest {
            csr_pem,
            requested_ttl: wire.requested_ttl,
        })
    }
}

/// Protobuf encoding of the response, decoding of [`WireRequest`]; a body
/// that is not a `CreateCertificateRequest` at all is the caller's error.
#[derive(Clone, Copy, Debug, Default)]
struct CsrCodec;

impl tonic::codec::Codec for CsrCodec {
    type Encode = CreateCertificateResponse;
    type Decode = WireRequest;
    type Encoder = CsrCodec;
    type Decoder = CsrCodec;

    fn encoder(&mut self) -> Self::Encoder {
        CsrCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        CsrCodec
    }
}

impl tonic::codec::Encoder for CsrCodec {
    type Item = CreateCertificateResponse;
    type Error = Status;

    fn encode(
        &mut self,
        item: CreateCertificateResponse,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), Status> {
        prost::Message::encode(&item, dst)
            .map_err(|e| Status::internal(format!("cannot encode the response: {e}")))
    }
}

impl tonic::codec::Decoder for CsrCodec {
    type Item = WireRequest;
    type Error = Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<WireRequest>, Status> {
        <WireRequest as prost::Message>::decode(src)
            .map(Some)
            .map_err(|e| {
                Status::invalid_argument(format!(
                    "the request is not a meshd.ca.v1.CreateCertificateRequest: {e}"
                ))
            })
    }
}

/// `meshd.ca.v1.CertificateService`, mounted next to ADS.
#[derive(Clone, Debug)]
pub struct CertificateServer {
    service: Arc<CertificateService>,
}

impl tonic::server::NamedService for CertificateServer {
    const NAME: &'static str = "meshd.ca.v1.CertificateService";
}

impl tonic::server::UnaryService<WireRequest> for CertificateServer {
    type Response = CreateCertificateResponse;
    type Future = std::future::Ready<Result<tonic::Response<CreateCertificateResponse>, Status>>;

    fn call(&mut self, request: tonic::Request<WireRequest>) -> Self::Future {
        let span = tracing::info_span!("csr", caller = tracing::field::Empty);
        let _entered = span.enter();
        let caller = request
            .peer_certs()
            .and_then(|certs| crate::identity::peer_identity(certs.first()?));
        let result = CreateCertificateRequest::try_from(request.into_inner())
            .and_then(|request| self.service.create(caller, &request))
            .map(tonic::Response::new);
        std::future::ready(result)
    }
}

impl tower_service::Service<http::Request<tonic::body::Body>> for CertificateServer {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        if request.uri().path() != CREATE_CERTIFICATE_PATH {
            let path = request.uri().path().to_string();
            return Box::pin(async move {
                Ok(Status::unimplemented(format!("no such method: {path}")).into_http())
            });
        }
        let server = self.clone();
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(CsrCodec);
            Ok(grpc.unary(server, request).await)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::IdentityConfig;
    use meshd_ca::{Authority, DirStore};
    use tonic::Code;

    const TD: &str = "cluster.local";

    fn service() -> (tempfile::TempDir, CertificateService) {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::load_or_generate(TD, Arc::new(DirStore::new(dir.path()))).unwrap();
        let identity = Identity::new(Arc::new(ca), IdentityConfig::default());
        let service = CertificateService::new(Arc::new(identity), CsrMetrics::default());
        (dir, service)
    }

    fn csr(uri: &str) -> String {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into().unwrap())];
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    fn request(csr_pem: String, seconds: Option<i64>) -> CreateCertificateRequest {
        CreateCertificateRequest {
            csr_pem,
            requested_ttl: seconds.map(|seconds| meshd_proto::Duration { seconds, nanos: 0 }),
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn ttl(seconds: i64, nanos: i32) -> Result<Duration, Status> {
        workload_ttl(Some(&meshd_proto::Duration { seconds, nanos }), secs(3600))
    }

    #[test]
    fn ttl_defaults_to_and_is_clamped_by_the_workload_lifetime() {
        assert_eq!(workload_ttl(None, secs(3600)).unwrap(), secs(3600));
        assert_eq!(ttl(0, 0).unwrap(), secs(3600), "zero means unset");
        assert_eq!(ttl(600, 0).unwrap(), secs(600));
        assert_eq!(ttl(100 * 86400, 0).unwrap(), secs(3600));
        assert_eq!(ttl(1, 0).unwrap(), MIN_WORKLOAD_TTL);
        assert_eq!(ttl(0, 1).unwrap(), MIN_WORKLOAD_TTL);
        // A workload lifetime configured below the minimum never inverts
        // the clamp.
        assert_eq!(workload_ttl(None, secs(1)).unwrap(), MIN_WORKLOAD_TTL);
        for (s, n) in [(-1, 0), (0, -1), (1, 1_000_000_000)] {
            let status = ttl(s, n).unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument);
            assert!(status.message().starts_with("requested_ttl:"), "{status:?}");
        }
    }

    #[test]
    fn pem_bundles_split_into_certificates() {
        let a = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----";
        let b = "-----BEGIN CERTIFICATE-----\nBBBB\n-----END CERTIFICATE-----";
        assert_eq!(
            split_pem(&format!("{a}\n{b}\r\n")),
            vec![format!("{a}\n"), format!("{b}\r\n")]
        );
        assert_eq!(split_pem(&format!("{a}{b}")), vec![a, b]);
        assert!(split_pem("").is_empty());
        assert!(split_pem("-----BEGIN CERTIFICATE-----\ntruncated").is_empty());
    }

    #[test]
    fn signs_for_the_caller_and_counts() {
        let (_dir, service) = service();
        let caller = SpiffeId::new(TD, "shop", "client");
        let response = service
            .create(
                Some(caller.clone()),
                &request(csr(&caller.to_string()), Some(600)),
            )
            .unwrap();
        assert_eq!(response.cert_chain_pem.len(), 1, "a root signs directly");
        assert_eq!(response.trust_bundle_pem.len(), 1);
        assert_eq!(
            response.trust_bundle_pem.concat(),
            service.identity.ca.trust_bundle_pem()
        );
        let pem = x509_parser::pem::parse_x509_pem(response.cert_chain_pem[0].as_bytes())
            .unwrap()
            .1;
        let leaf = pem.parse_x509().unwrap();
        assert_eq!(
            crate::identity::peer_identity(&pem.contents),
            Some(caller.clone())
        );
        assert!(!leaf.is_ca());
        assert_eq!(service.metrics.issued.get(), 1);
        assert_eq!(service.metrics.denied.get(), 0);
    }

    /// Issue #11 C.7: `csr_pem` bytes that are not UTF-8 are the caller's
    /// mistake (INVALID_ARGUMENT naming the field), not a server fault
    /// (INTERNAL, as the generated `string` decoder answered).
    #[tokio::test]
    async fn a_csr_that_is_not_utf8_is_an_invalid_argument() {
        use http_body_util::BodyExt;
        use tower_service::Service;

        let (_dir, service) = service();
        let mut server = service.into_service();
        // CreateCertificateRequest field 1 (csr_pem), length-delimited,
        // holding a PEM header and then 0xff 0xfe: never valid UTF-8.
        let mut csr = b"-----BEGIN CERTIFICATE REQUEST-----\n".to_vec();
        csr.extend_from_slice(&[0xff, 0xfe]);
        let mut message = vec![0x0a, u8::try_from(csr.len()).unwrap()];
        message.extend_from_slice(&csr);
        // gRPC framing: uncompressed, then the length (big-endian).
        let mut frame = vec![0];
        frame.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
        frame.extend_from_slice(&message);
        let request = http::Request::builder()
            .method("POST")
            .uri(CREATE_CERTIFICATE_PATH)
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(tonic::body::Body::new(http_body_util::Full::new(
                bytes::Bytes::from(frame),
            )))
            .unwrap();
        let response = server.call(request).await.unwrap();
        let status = match Status::from_header_map(response.headers()) {
            Some(status) => status,
            None => {
                let trailers = response
                    .into_body()
                    .collect()
                    .await
                    .unwrap()
                    .trailers()
                    .cloned()
                    .expect("a gRPC status in the trailers");
                Status::from_header_map(&trailers).expect("a gRPC status")
            }
        };
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().starts_with("csr_pem:"), "{status:?}");
        assert!(status.message().contains("UTF-8"), "{status:?}");
    }

    #[test]
    fn refusals_carry_the_right_status() {
        let (_dir, service) = service();
        let caller = SpiffeId::new(TD, "shop", "client");
        let own = || request(csr(&caller.to_string()), None);

        let status = service.create(None, &own()).unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);

        let status = service
            .create(
                Some(caller.clone()),
                &request(csr("spiffe://cluster.local/ns/shop/sa/web"), None),
            )
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied);
        assert!(
            status.message().contains("sa/web") && status.message().contains("sa/client"),
            "{status:?}"
        );

        let stranger = SpiffeId::new("other.example", "shop", "client");
        let status = service.create(Some(stranger), &own()).unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied);
        assert!(status.message().contains("other.example"), "{status:?}");
        assert_eq!(service.metrics.denied.get(), 3);

        let status = service
            .create(Some(caller.clone()), &request("garbage".into(), None))
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().starts_with("csr_pem:"), "{status:?}");
        assert_eq!(service.metrics.denied.get(), 3, "malformed is not denied");
        assert_eq!(service.metrics.issued.get(), 0);
    }
}
