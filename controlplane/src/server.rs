//! Wires a discovery source, the publisher, the xDS server and the debug
//! endpoints together: what `meshd run` starts, and what tests start
//! in-process on listeners they bound themselves.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::discovery::file::{self, FileRegistry};
use crate::model::Mesh;
use crate::translate::Snapshot;
use crate::xds::{self, Ads, ServerState};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot watch the registry directory {dir}: {source}")]
    Watch { dir: PathBuf, source: notify::Error },
    #[error("cannot read a listener's address: {0}")]
    Listener(std::io::Error),
}

pub struct Options {
    /// The registry directory; `None` serves the embedded default.
    pub registry: Option<PathBuf>,
    pub xds: TcpListener,
    pub debug: Option<TcpListener>,
    /// Quiet time that ends a burst of changes before a push.
    pub debounce: Duration,
}

/// A running control plane.
pub struct ControlPlane {
    pub xds_addr: std::net::SocketAddr,
    pub debug_addr: Option<std::net::SocketAddr>,
    pub state: Arc<ServerState>,
    pub registry_problems: file::Problems,
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl ControlPlane {
    pub async fn start(options: Options) -> Result<Self, Error> {
        let shutdown = CancellationToken::new();
        let state = Arc::new(ServerState::default());
        let registry_problems: file::Problems = Arc::new(RwLock::new(Vec::new()));
        let (mesh_tx, mesh_rx) = watch::channel(Arc::new(Mesh::default()));

        let registry = match &options.registry {
            Some(dir) => FileRegistry::new(dir),
            None => FileRegistry::embedded(),
        };
        let settle = options.debounce.min(Duration::from_millis(100));
        let mut tasks = Vec::new();
        if let Some(watcher) = file::run(registry, mesh_tx, registry_problems.clone(), settle)
            .await
            .map_err(|source| Error::Watch {
                dir: options.registry.clone().unwrap_or_default(),
                source,
            })?
        {
            tasks.push(watcher);
        }
        let snapshots = xds::spawn_publisher(mesh_rx, options.debounce, state.clone());

        let xds_addr = options.xds.local_addr().map_err(Error::Listener)?;
        let ads = Ads::new(snapshots.clone(), state.clone(), shutdown.clone());
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(options.xds);
        let stop = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            let result = tonic::transport::Server::builder()
                // Envoy keeps its ADS stream for hours: probe it so a
                // vanished proxy frees its stream.
                .http2_keepalive_interval(Some(Duration::from_secs(30)))
                .http2_keepalive_timeout(Some(Duration::from_secs(10)))
                .add_service(ads.into_service())
                .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                .await;
            if let Err(e) = result {
                tracing::error!("xDS server failed: {e}");
            }
        }));
        tracing::info!(address = %xds_addr, "xDS server listening");

        let mut debug_addr = None;
        if let Some(listener) = options.debug {
            let mut registry = Registry::default();
            state.metrics.register(&mut registry);
            let router = crate::debug::router(crate::debug::DebugState {
                xds: state.clone(),
                registry_problems: registry_problems.clone(),
                metrics: Arc::new(registry),
            });
            debug_addr = Some(listener.local_addr().map_err(Error::Listener)?);
            let stop = shutdown.clone();
            tasks.push(tokio::spawn(async move {
                let result = axum::serve(listener, router)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await;
                if let Err(e) = result {
                    tracing::error!("debug server failed: {e}");
                }
            }));
            tracing::info!(address = ?debug_addr, "debug endpoints listening");
        }

        Ok(ControlPlane {
            xds_addr,
            debug_addr,
            state,
            registry_problems,
            snapshots,
            shutdown,
            tasks,
        })
    }

    /// Stops serving: open streams end, listeners close.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        for task in self.tasks {
            task.abort();
            let _ = task.await;
        }
    }
}
