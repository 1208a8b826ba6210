//! TLS for the xDS port: the control plane's serving certificate, issued by
//! its own CA and renewed before it expires, and client-certificate checks
//! against the live trust bundle (which changes during a root rotation).

use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use meshd_ca::SpiffeId;
use rustls::DistinguishedName;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use time::OffsetDateTime;

use crate::identity::Identity;

/// The serving certificate's lifetime; renewed half-way.
const SERVER_CERT_TTL: Duration = Duration::from_secs(24 * 3600);

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What the control plane's serving certificate names.
#[derive(Clone, Debug)]
pub struct ServerIdentity {
    pub id: SpiffeId,
    pub dns_names: Vec<String>,
    pub ips: Vec<IpAddr>,
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
        .with_cert_resolver(Arc::new(RenewingCert {
            identity,
            server,
            current: RwLock::new(None),
        }));
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// Issues the serving certificate on first use and again half-way through
/// its life, or when the CA changes.
#[derive(Debug)]
struct RenewingCert {
    identity: Arc<Identity>,
    server: ServerIdentity,
    current: RwLock<Option<(Arc<CertifiedKey>, OffsetDateTime, u64)>>,
}

impl RenewingCert {
    fn issue(&self) -> Option<(Arc<CertifiedKey>, OffsetDateTime, u64)> {
        let generation = self.identity.generation();
        let (issued, key) = match self.identity.ca.issue_server(
            &self.server.id,
            &self.server.dns_names,
            &self.server.ips,
            SERVER_CERT_TTL,
        ) {
            Ok(issued) => issued,
            Err(e) => {
                tracing::error!("cannot issue the xDS serving certificate: {e}");
                return None;
            }
        };
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(issued.chain_pem.as_bytes())
                .collect::<Result<_, _>>()
                .ok()?;
        let key = PrivateKeyDer::from_pem_slice(key.expose_pem().as_bytes()).ok()?;
        let signing_key = provider().key_provider.load_private_key(key).ok()?;
        let renew_at = issued.not_before + (issued.not_after - issued.not_before) / 2;
        Some((
            Arc::new(CertifiedKey::new(chain, signing_key)),
            renew_at,
            generation,
        ))
    }
}

impl ResolvesServerCert for RenewingCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let now = OffsetDateTime::now_utc();
        let generation = self.identity.generation();
        if let Some((key, renew_at, issued_in)) = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            && now < *renew_at
            && *issued_in == generation
        {
            return Some(key.clone());
        }
        let fresh = self.issue()?;
        let key = fresh.0.clone();
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(fresh);
        Some(key)
    }
}

/// Verifies client certificates against whatever the trust bundle holds
/// now, rebuilding the WebPKI verifier when the bundle changes.
#[derive(Debug)]
struct BundleVerifier {
    identity: Arc<Identity>,
    cache: RwLock<Option<(u64, Arc<dyn ClientCertVerifier>)>>,
}

impl BundleVerifier {
    fn current(&self) -> Result<Arc<dyn ClientCertVerifier>, rustls::Error> {
        let generation = self.identity.generation();
        if let Some((g, v)) = self
            .cache
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            && *g == generation
        {
            return Ok(v.clone());
        }
        let mut roots = RootCertStore::empty();
        for anchor in self.identity.ca.trust_anchors() {
            roots.add(anchor)?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        *self.cache.write().unwrap_or_else(|p| p.into_inner()) =
            Some((generation, verifier.clone()));
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
