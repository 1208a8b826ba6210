//! The end-to-end harness: real Envoy processes, sample apps, network
//! namespaces, and registry fixtures. The e2e tests in `tests/tests/` and
//! the local demo (`meshd-demo`) are built on it, and so is the load tool
//! (`meshd-load`, in [`load`]).

pub mod envoy;
pub mod grpc_echo;
pub mod http;
pub mod load;
pub mod mesh;
pub mod netns;
pub mod otlp;
pub mod pki;
pub mod process;
pub mod registry;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use meshd_api::sidecar::bootstrap::{self, BootstrapConfig};

/// Logs from the control plane under test, once per process.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MESHD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_test_writer()
        .try_init();
}

/// A scratch directory Envoy can use even when it runs as the proxy UID.
pub fn workdir() -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new().prefix("meshd-e2e-").tempdir()?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))?;
    Ok(dir)
}

/// Writes a bootstrap rendered by the same code as `meshd bootstrap`.
pub fn write_bootstrap(dir: &Path, config: &BootstrapConfig) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("{}.bootstrap.yaml", config.node_id()));
    std::fs::write(&path, bootstrap::render_yaml(config))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
    Ok(path)
}
