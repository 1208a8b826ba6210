//! TLS for the xDS port: the control plane's serving certificate, issued by
//! its own CA and renewed before it expires, and client-certificate checks
//! against the live trust bundle (which changes during a root rotation).
//!
//! After a rotation, a proxy may reconnect with the bootstrap files it was
//! started with: a client certificate and a trust bundle from the retired
//! root. The port keeps accepting that root's client certificates for a
//! grace period, and its certificate chain carries the new root certified
//! by the old one, so neither side refuses the other.

use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use meshd_ca::serving::provider;
use meshd_ca::{RenewingServerCert, SpiffeId};
use rustls::DistinguishedName;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::identity::Identity;

/// The serving certificate's lifetime; renewed half-way.
const SERVER_CERT_TTL: Duration = Duration::from_secs(24 * 3600);

/// What the control plane's serving certificate names.
#[derive(Clone, Debug)]
pub struct ServerIdentity {
    pub id: SpiffeId,
    pub dns_names: Vec<String>,
    pub ips: Vec<IpAddr>,
}

/// The xDS port's certificate: issued on first use, renewed half-way
/// through its life and whenever the CA changes (root rotation).
fn serving_cert(identity: Arc<Identity>, server: ServerIdentity) -> RenewingServerCert {
    let ca = identity.ca.clone();
    RenewingServerCert::new(
        ca,
        "xDS",
        server.id,
        server.dns_names,
        server.ips,
        SERVER_CERT_TTL,
    )
    .with_generation(Arc::new(move || identity.generation()))
}

/// The xDS server's TLS configuration: client certificates required.
pub fn server_config(identity: Arc<Identity>, server: ServerIdentity) -> Arc<ServerConfig> {
    let verifier = Arc::new(BundleVerifier {
        identity: identity.clone(),
        cache: RwLock::new(None),
    });
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(serving_cert(identity, server)));
    config.alpn_protocols = vec![b"h2".to_vec()];
    // No session resumption: a resumed session skips the verifier and
    // brings back the certificate of the session it resumes, which may
    // have expired, or chain to a root retired, since. A proxy reconnects
    // rarely, and after a control plane restart there is nothing to
    // resume; a full handshake costs a fraction of a sync. No session
    // cache to fill with proxies' chains; and no TLS 1.3 tickets, which
    // rustls would otherwise encode at every handshake only for the
    // storage to refuse them.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Arc::new(config)
}

/// Verifies client certificates against whatever the trust bundle holds
/// now, and the roots a rotation retired less than a grace ago: a proxy's
/// bootstrap identity comes from files written when its pod started, and
/// a proxy whose identity nobody refreshed must not be locked out at its
/// next reconnect (it is issued a certificate from the current root as soon
/// as it is in). Rebuilds the WebPKI verifier when either changes.
#[derive(Debug)]
struct BundleVerifier {
    identity: Arc<Identity>,
    cache: RwLock<Option<CachedVerifier>>,
}

/// A verifier, the CA generation it was built for, and when a retired root
/// it accepts stops being accepted.
type CachedVerifier = (
    u64,
    Option<time::OffsetDateTime>,
    Arc<dyn ClientCertVerifier>,
);

impl BundleVerifier {
    fn current(&self) -> Result<Arc<dyn ClientCertVerifier>, rustls::Error> {
        let generation = self.identity.generation();
        if let Some((g, until, v)) = self
            .cache
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            && *g == generation
            && until.is_none_or(|until| time::OffsetDateTime::now_utc() < until)
        {
            return Ok(v.clone());
        }
        let until = self.identity.ca.client_trust_changes_at();
        let mut roots = RootCertStore::empty();
        for anchor in self.identity.ca.client_trust_anchors() {
            roots.add(anchor)?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        *self.cache.write().unwrap_or_else(|p| p.into_inner()) =
            Some((generation, until, verifier.clone()));
        Ok(verifier)
    }
}

impl ClientCertVerifier for BundleVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints are optional; Envoy presents its one certificate anyway.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.current()?
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current()?.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current()?.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
