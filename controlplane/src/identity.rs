//! Workload identity as the control plane serves it: SDS secrets, their
//! rotation schedule, and who a proxy is.
//!
//! ```text
//! Authority (meshd-ca) ──issue──> WorkloadCert ──> SDS `default` (cert + key)
//!          └─trust bundle──────────────────────> SDS `ROOTCA`  (validation context)
//! ```
//!
//! A proxy is served secrets only for the identity its workload has in the
//! registry (`spiffe://<td>/ns/<namespace>/sa/<service account>`), and only
//! after its xDS client certificate proved it is that workload.

use std::sync::Arc;
use std::time::Duration;

use meshd_ca::{Authority, IssuedCert, SpiffeId};
use meshd_proto::envoy::config::core::v3::{DataSource, data_source};
use meshd_proto::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, TlsCertificate, secret,
};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::model::{MtlsMode, Workload};
use crate::translate::Resource;
pub use crate::translate::{DEFAULT_SECRET, ROOT_SECRET};

#[derive(Clone, Debug)]
pub struct IdentityConfig {
    pub workload_ttl: Duration,
    /// When in a certificate's life it is replaced (0.5 = half-way).
    pub rotation_fraction: f64,
    /// The mesh-wide mTLS mode; namespaces and workloads may override it.
    pub default_mtls: MtlsMode,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            workload_ttl: Duration::from_secs(24 * 3600),
            rotation_fraction: 0.5,
            default_mtls: MtlsMode::Permissive,
        }
    }
}

/// The CA and what the control plane needs around it.
#[derive(Debug)]
pub struct Identity {
    pub ca: Arc<Authority>,
    pub config: IdentityConfig,
    /// Bumped whenever the signer or the trust bundle changes (root
    /// rotation), so every stream re-issues and re-sends.
    generation: watch::Sender<u64>,
    /// The `ROOTCA` secret of the current generation.
    root: std::sync::Mutex<Option<(u64, Arc<Resource>)>>,
    pub metrics: CaMetrics,
    /// Held while a root rotation runs.
    rotating: tokio::sync::Mutex<()>,
    /// How long a root rotation step waits, after this replica's proxies
    /// acknowledged it, for the other replicas to follow (zero: alone).
    replica_settle: std::sync::Mutex<Duration>,
    /// How long a root rotation step waits for each proxy's acknowledgement
    /// before disconnecting the ones that have not.
    rotation_step_timeout: std::sync::Mutex<Duration>,
}

/// Seconds until expiry, so operators see it coming: refreshed when
/// scraped.
#[derive(Debug, Default)]
pub struct CaMetrics {
    pub root_expiry_seconds: Gauge,
    pub issuer_expiry_seconds: Gauge,
    /// The soonest-expiring certificate held by a connected proxy.
    pub workload_cert_expiry_seconds: Gauge,
}

impl CaMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("meshd_ca");
        r.register(
            "root_expiry_seconds",
            "Seconds until the soonest-expiring trusted root expires",
            self.root_expiry_seconds.clone(),
        );
        r.register(
            "issuer_expiry_seconds",
            "Seconds until the issuing certificate (root or plug-in intermediate) expires",
            self.issuer_expiry_seconds.clone(),
        );
        r.register(
            "workload_cert_expiry_seconds",
            "Seconds until the soonest-expiring workload certificate held by a connected proxy expires",
            self.workload_cert_expiry_seconds.clone(),
        );
    }

    /// `soonest_not_after`: when the soonest-expiring workload certificate
    /// a connected proxy holds expires (Unix seconds), if any does.
    pub fn refresh(&self, ca: &Authority, soonest_not_after: Option<i64>) {
        let status = ca.status();
        self.root_expiry_seconds.set(status.root_expiry_seconds);
        self.issuer_expiry_seconds.set(status.issuer_expiry_seconds);
        let now = OffsetDateTime::now_utc().unix_timestamp();
        if let Some(soonest) = soonest_not_after {
            self.workload_cert_expiry_seconds.set(soonest - now);
        }
    }
}

/// What a root rotation needs of the connected proxies (the xDS server
/// keeps them): how many there are, which have not yet acknowledged the
/// secrets of a CA generation, and a way to disconnect one that never will.
pub trait ProxyAcks: Send + Sync {
    fn connected(&self) -> usize;
    /// Stream ids and (display) node ids of the proxies holding a workload
    /// certificate that have not acknowledged `generation`.
    fn not_acknowledged(&self, generation: u64) -> Vec<(u64, String)>;
    /// Ends stream `stream`; false if it has already ended.
    fn disconnect(&self, stream: u64) -> bool;
}

/// A proxy's current certificate, as an SDS resource, and when to replace it.
///
/// Every stream holds one for its life: only what the stream shows of the
/// certificate is kept beside the encoded secret, not the issued PEM text
/// again (two more copies of the leaf, ~2 KiB per proxy).
#[derive(Debug)]
pub struct WorkloadCert {
    pub id: SpiffeId,
    pub serial_hex: String,
    pub not_after: OffsetDateTime,
    pub secret: Arc<Resource>,
    pub rotate_at: tokio::time::Instant,
    pub generation: u64,
}

impl Identity {
    pub fn new(ca: Arc<Authority>, config: IdentityConfig) -> Self {
        Identity {
            ca,
            config,
            generation: watch::Sender::new(0),
            root: std::sync::Mutex::new(None),
            metrics: CaMetrics::default(),
            replica_settle: std::sync::Mutex::new(Duration::ZERO),
            rotation_step_timeout: std::sync::Mutex::new(DEFAULT_ROTATION_STEP_TIMEOUT),
            rotating: tokio::sync::Mutex::new(()),
        }
    }

    /// Other replicas serve proxies from the same root and follow this
    /// one's rotations within `settle`: each rotation step waits that long
    /// for them.
    pub fn set_replica_settle(&self, settle: Duration) {
        *self
            .replica_settle
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = settle;
    }

    /// How long each root rotation step waits for a proxy to acknowledge
    /// before disconnecting it (default [`DEFAULT_ROTATION_STEP_TIMEOUT`]).
    pub fn set_rotation_step_timeout(&self, timeout: Duration) {
        *self
            .rotation_step_timeout
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = timeout;
    }

    pub fn rotation_step_timeout(&self) -> Duration {
        *self
            .rotation_step_timeout
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn replica_settle(&self) -> Duration {
        *self
            .replica_settle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    pub fn trust_domain(&self) -> &str {
        self.ca.trust_domain()
    }

    pub fn spiffe_id(&self, workload: &Workload) -> SpiffeId {
        SpiffeId::new(
            self.trust_domain(),
            &workload.namespace,
            &workload.service_account,
        )
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    pub fn generation(&self) -> u64 {
        *self.generation.borrow()
    }

    /// Announces a CA change to every stream.
    pub fn changed(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// Issues `id` a certificate and key, packed as the `default` secret.
    pub fn issue(&self, id: &SpiffeId) -> meshd_ca::Result<WorkloadCert> {
        let generation = self.generation();
        let (issued, key) = self.ca.issue_with_key(id, self.config.workload_ttl)?;
        let rotate_at = self.rotation_instant(&issued);
        // The chain moves into the secret; the stream keeps only what it
        // shows of the rest.
        let IssuedCert {
            chain_pem,
            serial_hex,
            not_after,
            ..
        } = issued;
        let secret = Secret {
            name: DEFAULT_SECRET.into(),
            r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                certificate_chain: Some(inline(chain_pem.into_bytes())),
                private_key: Some(inline(key.expose_pem().as_bytes().to_vec())),
                ..Default::default()
            })),
        };
        Ok(WorkloadCert {
            id: id.clone(),
            secret: Resource::new(DEFAULT_SECRET.into(), &secret, vec![]),
            serial_hex,
            not_after,
            rotate_at,
            generation,
        })
    }

    /// The trust bundle as the `ROOTCA` secret.
    pub fn root_secret(&self) -> Arc<Resource> {
        let generation = self.generation();
        let mut cached = self.root.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((g, resource)) = cached.as_ref()
            && *g == generation
        {
            return resource.clone();
        }
        let resource = self.build_root_secret();
        *cached = Some((generation, resource.clone()));
        resource
    }

    fn build_root_secret(&self) -> Arc<Resource> {
        let secret = Secret {
            name: ROOT_SECRET.into(),
            r#type: Some(secret::Type::ValidationContext(
                CertificateValidationContext {
                    trusted_ca: Some(inline(self.ca.trust_bundle_pem().into_bytes())),
                    ..Default::default()
                },
            )),
        };
        Resource::new(ROOT_SECRET.into(), &secret, vec![])
    }

    /// Half-way through the certificate's life (by default), give or take
    /// 5% of the lifetime so a fleet issued together does not renew
    /// together; never sooner than a second from now, so a certificate cut
    /// short (an issuer about to expire) cannot spin the rotation loop.
    fn rotation_instant(&self, issued: &IssuedCert) -> tokio::time::Instant {
        let lifetime = issued.lifetime().as_secs_f64();
        let jitter = (rand::random::<f64>() - 0.5) * 0.1 * lifetime;
        let remaining = lifetime * (1.0 - self.config.rotation_fraction) - jitter;
        let at = issued.not_after - time::Duration::seconds_f64(remaining.max(0.0));
        let from_now = (at - OffsetDateTime::now_utc()).as_seconds_f64().max(1.0);
        tokio::time::Instant::now() + Duration::from_secs_f64(from_now)
    }
}

fn inline(bytes: Vec<u8>) -> DataSource {
    DataSource {
        specifier: Some(data_source::Specifier::InlineBytes(bytes)),
        ..Default::default()
    }
}

/// The workload identity in a client certificate (its first URI SAN that
/// is a SPIFFE ID).
pub fn peer_identity(cert_der: &[u8]) -> Option<SpiffeId> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        x509_parser::extensions::GeneralName::URI(uri) => SpiffeId::parse(uri).ok(),
        _ => None,
    })
}

/// How long each root rotation step waits for every proxy's
/// acknowledgement unless set otherwise ([`Identity::set_rotation_step_timeout`]).
pub const DEFAULT_ROTATION_STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// What a root rotation did, step by step: the answer of
/// `POST /ca/rotate-root`.
#[derive(Debug, Default, serde::Serialize)]
pub struct RotationReport {
    /// Every step ran: the new root signs and the old one is retired.
    pub complete: bool,
    pub steps: Vec<RotationStep>,
    /// Why the rotation stopped, when it did (resumes from here next time).
    pub error: Option<String>,
}

/// One step of a root rotation and who held it up.
#[derive(Debug, serde::Serialize)]
pub struct RotationStep {
    pub step: &'static str,
    /// The CA generation this step's secrets carry.
    pub generation: u64,
    /// Proxies that acknowledged the step's secrets (or were never issued
    /// a certificate, so had nothing to acknowledge).
    pub acknowledged: usize,
    /// Proxies that had not acknowledged when the wait ran out (node ids,
    /// shortened), each disconnected: Envoy reconnects and is sent the
    /// current secrets on its new stream.
    pub disconnected: Vec<String>,
    pub waited_seconds: f64,
}

/// Why a root rotation stopped before its end.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    #[error("{step}: this replica is no longer the leader")]
    NotLeader { step: &'static str },
    #[error("{step}: {source}")]
    Ca {
        step: &'static str,
        source: meshd_ca::Error,
    },
}

/// Rotates a generated root without breaking a connection:
///
/// 1. a new root joins the trust bundle (still signing with the old one),
///    and every connected proxy acknowledges the bundle;
/// 2. the new root signs: every proxy is re-issued a certificate from it,
///    and acknowledges it;
/// 3. the old root leaves the bundle, once more acknowledged by all.
///
/// At no step does a proxy hold a certificate its peers cannot verify,
/// except one that does not acknowledge within `step_timeout`: one stuck
/// proxy must not hold the whole mesh's rotation, so it is disconnected
/// (its new stream starts from the current secrets), named in the report,
/// and the rotation goes on.
/// Bootstrap identities (the xDS client certificates, and the trust bundle
/// the proxy verifies the control plane with) need not be refreshed first:
/// the xDS port accepts client certificates from the retired root for a
/// grace as long as a bootstrap identity lives, and presents the new root
/// cross-signed by the old (see `meshd_ca::Authority::retire_previous_roots`).
pub async fn rotate_root(
    identity: &Identity,
    xds: &dyn ProxyAcks,
    step_timeout: Duration,
    leading: Option<&tokio::sync::watch::Receiver<bool>>,
) -> Result<RotationReport, RotationError> {
    let mut report = RotationReport::default();
    rotate_root_steps(identity, xds, step_timeout, leading, &mut report).await?;
    report.complete = true;
    Ok(report)
}

/// [`rotate_root`], recording each step in `report` as it completes (the
/// debug endpoint reports a partial rotation too).
pub async fn rotate_root_steps(
    identity: &Identity,
    xds: &dyn ProxyAcks,
    step_timeout: Duration,
    leading: Option<&tokio::sync::watch::Receiver<bool>>,
    report: &mut RotationReport,
) -> Result<(), RotationError> {
    type Step = fn(&Authority) -> meshd_ca::Result<()>;
    let steps: [(&str, Step); 3] = [
        ("stage the new root", Authority::stage_new_root),
        ("sign with the new root", Authority::activate_staged_root),
        ("retire the old root", Authority::retire_previous_roots),
    ];
    // One rotation at a time; a second request waits for the first.
    let _rotating = identity.rotating.lock().await;
    // An interrupted rotation resumes where it stopped.
    let from = identity.ca.rotation_step();
    if from > 0 {
        tracing::info!(
            step = from + 1,
            "root rotation: resuming an interrupted rotation"
        );
    }
    for (what, step) in steps.into_iter().skip(from) {
        // A replica that lost the lease stops: the new leader owns the root.
        if leading.is_some_and(|l| !*l.borrow()) {
            return Err(RotationError::NotLeader { step: what });
        }
        step(&identity.ca).map_err(|source| RotationError::Ca { step: what, source })?;
        identity.changed();
        let generation = identity.generation();
        tracing::info!(generation, "root rotation: {what}; waiting for every proxy");
        let started = tokio::time::Instant::now();
        let deadline = started + step_timeout;
        let mut disconnected = Vec::new();
        let acknowledged = loop {
            let connected = xds.connected();
            let pending = xds.not_acknowledged(generation);
            if pending.is_empty() {
                break connected;
            }
            if tokio::time::Instant::now() >= deadline {
                // Named in the report and the log; the rest of the mesh
                // goes on. A disconnected proxy is sent this generation's
                // secrets as soon as it is back.
                tracing::warn!(
                    step = what,
                    proxies = pending.len(),
                    first = %pending[0].1,
                    "root rotation: proxies did not acknowledge within {step_timeout:?}; \
                     disconnecting them and going on"
                );
                let acknowledged = connected.saturating_sub(pending.len());
                for (stream, node) in pending {
                    if xds.disconnect(stream) {
                        disconnected.push(node);
                    }
                }
                break acknowledged;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        report.steps.push(RotationStep {
            step: what,
            generation,
            acknowledged,
            disconnected,
            waited_seconds: started.elapsed().as_secs_f64(),
        });
        let settle = identity.replica_settle();
        if !settle.is_zero() {
            tracing::info!(
                ?settle,
                "root rotation: {what}; waiting for the other replicas to follow"
            );
            tokio::time::sleep(settle).await;
        }
    }
    tracing::info!("root rotation complete");
    Ok(())
}
