//! Serving certificates that renew themselves: what meshd's own TLS
//! servers (the xDS port, the admission webhook) present.
//!
//! ```text
//! handshake ──> RenewingServerCert::resolve ──current and fresh?──> cached CertifiedKey
//!                                             └─ half its life gone, or the CA
//!                                                changed ──> Authority::issue_server
//! ```
//!
//! The certificate is issued on first use and again half-way through its
//! life, or as soon as the caller's generation counter moves (a root
//! rotation), so a long-running server never needs a restart for its
//! certificate. When re-issuing fails, the previous certificate keeps being
//! served for as long as it is valid.

use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use time::OffsetDateTime;

use crate::{Authority, Error, Result, SpiffeId};

/// Reports the CA's generation: a number that changes whenever the signer
/// or the trust bundle does, so certificates from before are re-issued.
pub type Generation = Arc<dyn Fn() -> u64 + Send + Sync>;

/// A certificate in use and when it stops being current.
struct Current {
    key: Arc<CertifiedKey>,
    renew_at: OffsetDateTime,
    not_after: OffsetDateTime,
    generation: u64,
}

/// A server certificate from the mesh CA, renewed before it expires and
/// whenever the CA changes. Use it as a rustls certificate resolver, or ask
/// it for [`RenewingServerCert::current`] directly (readiness checks).
pub struct RenewingServerCert {
    ca: Arc<Authority>,
    /// What the certificate is for, in log messages ("xDS", "webhook").
    purpose: String,
    id: SpiffeId,
    dns_names: Vec<String>,
    ips: Vec<IpAddr>,
    ttl: Duration,
    generation: Generation,
    current: RwLock<Option<Current>>,
    /// Held while issuing, so a burst of handshakes that all find the
    /// certificate due issues it once.
    issuing: Mutex<()>,
}

impl fmt::Debug for RenewingServerCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RenewingServerCert")
            .field("purpose", &self.purpose)
            .field("id", &self.id)
            .field("dns_names", &self.dns_names)
            .field("ips", &self.ips)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl RenewingServerCert {
    /// A certificate for `id` that also names `dns_names` and `ips` (what
    /// clients dial and verify), lasting `ttl`. Nothing is issued until
    /// first use.
    pub fn new(
        ca: Arc<Authority>,
        purpose: impl Into<String>,
        id: SpiffeId,
        dns_names: Vec<String>,
        ips: Vec<IpAddr>,
        ttl: Duration,
    ) -> Self {
        RenewingServerCert {
            ca,
            purpose: purpose.into(),
            id,
            dns_names,
            ips,
            ttl,
            generation: Arc::new(|| 0),
            current: RwLock::new(None),
            issuing: Mutex::new(()),
        }
    }

    /// Re-issues whenever `generation` reports a new value.
    pub fn with_generation(mut self, generation: Generation) -> Self {
        self.generation = generation;
        self
    }

    pub fn dns_names(&self) -> &[String] {
        &self.dns_names
    }

    /// The certificate to present now, issuing or renewing it first if it
    /// is due; `None` only when there is no valid certificate and the CA
    /// cannot sign one (the error is logged).
    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        let now = OffsetDateTime::now_utc();
        let generation = (self.generation)();
        if let Some(key) = self.fresh(now, generation) {
            return Some(key);
        }
        let _issuing = self.issuing.lock().unwrap_or_else(|p| p.into_inner());
        // Another handshake may have renewed it while this one waited.
        if let Some(key) = self.fresh(now, generation) {
            return Some(key);
        }
        match self.issue(generation) {
            Ok(fresh) => {
                tracing::debug!(
                    purpose = %self.purpose,
                    generation,
                    renew_at = %fresh.renew_at,
                    "issued a serving certificate"
                );
                let key = fresh.key.clone();
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(fresh);
                Some(key)
            }
            Err(e) => {
                let current = self.current.read().unwrap_or_else(|p| p.into_inner());
                match current.as_ref().filter(|c| now < c.not_after) {
                    Some(still_valid) => {
                        tracing::warn!(
                            "cannot renew the {} serving certificate, serving the current one until it expires at {}: {e}",
                            self.purpose,
                            still_valid.not_after
                        );
                        Some(still_valid.key.clone())
                    }
                    None => {
                        tracing::error!(
                            "cannot issue the {} serving certificate: {e}",
                            self.purpose
                        );
                        None
                    }
                }
            }
        }
    }

    /// When the certificate in use expires, if one has been issued.
    pub fn not_after(&self) -> Option<OffsetDateTime> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|c| c.not_after)
    }

    fn fresh(&self, now: OffsetDateTime, generation: u64) -> Option<Arc<CertifiedKey>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .filter(|c| now < c.renew_at && c.generation == generation)
            .map(|c| c.key.clone())
    }

    fn issue(&self, generation: u64) -> Result<Current> {
        let (issued, key) = self
            .ca
            .issue_server(&self.id, &self.dns_names, &self.ips, self.ttl)?;
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(issued.chain_pem.as_bytes())
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| Error::Generate(format!("the issued chain is not PEM: {e}")))?;
        // Neither message may quote the key: say only what failed.
        let key = PrivateKeyDer::from_pem_slice(key.expose_pem().as_bytes())
            .map_err(|_| Error::Generate("the issued private key is not PEM".into()))?;
        let signing_key = provider()
            .key_provider
            .load_private_key(key)
            .map_err(|_| Error::Generate("rustls cannot use the issued private key".into()))?;
        Ok(Current {
            key: Arc::new(CertifiedKey::new(chain, signing_key)),
            renew_at: issued.not_before + (issued.not_after - issued.not_before) / 2,
            not_after: issued.not_after,
            generation,
        })
    }
}

impl ResolvesServerCert for RenewingServerCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

/// The crypto provider meshd's TLS servers use.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::DirStore;

    fn authority(dir: &std::path::Path) -> Arc<Authority> {
        Arc::new(
            Authority::load_or_generate("cluster.local", Arc::new(DirStore::new(dir)))
                .expect("a generated root"),
        )
    }

    fn leaf(key: &CertifiedKey) -> x509_parser::certificate::X509Certificate<'_> {
        x509_parser::parse_x509_certificate(key.cert[0].as_ref())
            .expect("an X.509 leaf")
            .1
    }

    #[test]
    fn issues_once_and_names_the_dns_names() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let cert = RenewingServerCert::new(
            authority(dir.path()),
            "webhook",
            SpiffeId::new("cluster.local", "meshd-system", "meshd"),
            vec!["meshd.meshd-system.svc".into()],
            vec!["127.0.0.1".parse().expect("an IP")],
            Duration::from_secs(3600),
        );
        assert!(cert.not_after().is_none(), "nothing is issued before use");
        let first = cert.current().expect("a certificate");
        let again = cert.current().expect("a certificate");
        assert!(Arc::ptr_eq(&first, &again), "a fresh certificate is reused");
        let sans = leaf(&first)
            .subject_alternative_name()
            .expect("a SAN extension")
            .expect("SANs")
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>();
        assert!(
            sans.contains(&"DNSName(meshd.meshd-system.svc)".to_string()),
            "{sans:?}"
        );
        assert!(
            sans.iter()
                .any(|s| s.contains("spiffe://cluster.local/ns/meshd-system/sa/meshd")),
            "{sans:?}"
        );
        assert!(cert.not_after().is_some());
    }

    #[test]
    fn reissues_when_the_generation_moves() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let generation = Arc::new(AtomicU64::new(0));
        let reported = generation.clone();
        let cert = RenewingServerCert::new(
            authority(dir.path()),
            "xDS",
            SpiffeId::new("cluster.local", "meshd-system", "meshd"),
            vec![],
            vec![],
            Duration::from_secs(3600),
        )
        .with_generation(Arc::new(move || reported.load(Ordering::SeqCst)));
        let first = cert.current().expect("a certificate");
        generation.store(1, Ordering::SeqCst);
        let second = cert.current().expect("a certificate");
        assert!(!Arc::ptr_eq(&first, &second), "a CA change re-issues");
        assert_ne!(leaf(&first).serial, leaf(&second).serial);
        let third = cert.current().expect("a certificate");
        assert!(Arc::ptr_eq(&second, &third));
    }
}
