//! The mesh CA for tests and the demo: a root in a scratch directory, the
//! control plane's TLS options, and bootstrap identities for proxies.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use meshd_api::sidecar::bootstrap::{self, BootstrapConfig, DEFAULT_CONTROL_PLANE_ID};
use meshd_ca::{Authority, DirStore, SpiffeId};
use meshd_controlplane::identity::{Identity, IdentityConfig};
use meshd_controlplane::server::TlsOptions;
use meshd_controlplane::tls::ServerIdentity;

pub const TRUST_DOMAIN: &str = "cluster.local";

pub struct Pki {
    pub identity: Arc<Identity>,
    _dir: tempfile::TempDir,
}

impl Pki {
    pub fn new(config: IdentityConfig) -> anyhow::Result<Pki> {
        let dir = tempfile::tempdir()?;
        let ca = Authority::load_or_generate(TRUST_DOMAIN, Arc::new(DirStore::new(dir.path())))?;
        Ok(Pki {
            identity: Arc::new(Identity::new(Arc::new(ca), config)),
            _dir: dir,
        })
    }

    /// TLS options for a control plane reachable at `ips`.
    pub fn tls(&self, ips: &[IpAddr]) -> TlsOptions {
        TlsOptions {
            identity: self.identity.clone(),
            server: ServerIdentity {
                id: SpiffeId::parse(DEFAULT_CONTROL_PLANE_ID).expect("a valid SPIFFE ID"),
                dns_names: vec!["localhost".into()],
                ips: ips.to_vec(),
            },
        }
    }

    /// Issues the bootstrap identity of `namespace/service_account` into
    /// `dir`, readable by `owner` (the proxy's UID) when given, and points
    /// `config` at it.
    pub fn provision(
        &self,
        config: &mut BootstrapConfig,
        service_account: &str,
        dir: &Path,
        owner: Option<u32>,
    ) -> anyhow::Result<PathBuf> {
        let id = SpiffeId::new(TRUST_DOMAIN, &config.namespace, service_account);
        let (issued, key) = self
            .identity
            .ca
            .issue_with_key(&id, Duration::from_secs(24 * 3600))?;
        let identity_dir = dir.join(format!("{}-identity", config.node_id()));
        bootstrap::write_identity(
            &identity_dir,
            &issued.chain_pem,
            &key,
            &self.identity.ca.trust_bundle_pem(),
        )?;
        if let Some(uid) = owner {
            std::os::unix::fs::chown(&identity_dir, Some(uid), Some(uid))?;
            for entry in std::fs::read_dir(&identity_dir)? {
                std::os::unix::fs::chown(entry?.path(), Some(uid), Some(uid))?;
            }
        }
        config.identity_dir = Some(identity_dir.clone());
        Ok(identity_dir)
    }
}
