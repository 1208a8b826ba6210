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
use crate::identity::Identity;
use crate::model::Mesh;
use crate::tls::ServerIdentity;
use crate::translate::{MtlsOptions, Snapshot, TranslateOptions};
use crate::xds::{self, Ads, ServerState};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot watch the registry directory {dir}: {source}")]
    Watch { dir: PathBuf, source: notify::Error },
    #[error("cannot read a listener's address: {0}")]
    Listener(std::io::Error),
}

/// The CA and the TLS identity of the xDS port.
pub struct TlsOptions {
    pub identity: Arc<Identity>,
    pub server: ServerIdentity,
}

/// Where the mesh model comes from.
pub enum Source {
    /// The registry compiled into the binary (the local demo).
    Embedded,
    /// A directory of Kubernetes manifests, watched for changes.
    Files(PathBuf),
    /// The Kubernetes API.
    Kubernetes(kube::Client),
}

pub struct Options {
    pub source: Source,
    /// With a CA: xDS over TLS with client certificates, SDS, and mTLS
    /// between workloads. Without: plaintext xDS and plaintext traffic (for
    /// tests of the xDS machinery alone).
    pub tls: Option<TlsOptions>,
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

        let settle = options.debounce.min(Duration::from_millis(100));
        let mut tasks = Vec::new();
        let registry = match options.source {
            Source::Embedded => Some((FileRegistry::embedded(), PathBuf::new())),
            Source::Files(dir) => Some((FileRegistry::new(&dir), dir)),
            Source::Kubernetes(client) => {
                tasks.push(tokio::spawn(crate::discovery::kubernetes::run(
                    client,
                    mesh_tx.clone(),
                    settle,
                )));
                None
            }
        };
        if let Some((registry, dir)) = registry
            && let Some(watcher) = file::run(registry, mesh_tx, registry_problems.clone(), settle)
                .await
                .map_err(|source| Error::Watch { dir, source })?
        {
            tasks.push(watcher);
        }
        let translate = TranslateOptions {
            mtls: options.tls.as_ref().map(|tls| MtlsOptions {
                trust_domain: tls.identity.trust_domain().to_string(),
                default_mode: tls.identity.config.default_mtls,
            }),
        };
        let snapshots = xds::spawn_publisher(mesh_rx, options.debounce, state.clone(), translate);

        let xds_addr = options.xds.local_addr().map_err(Error::Listener)?;
        let identity = options.tls.as_ref().map(|t| t.identity.clone());
        let ads = Ads::new(
            snapshots.clone(),
            state.clone(),
            identity.clone(),
            shutdown.clone(),
        );
        // The CSR service authenticates callers by client certificate, so
        // it exists only on the TLS listener.
        let csr_metrics = crate::certificates::CsrMetrics::default();
        let certificates = identity.clone().map(|identity| {
            crate::certificates::CertificateService::new(identity, csr_metrics.clone())
                .into_service()
        });
        let router = tonic::transport::Server::builder()
            // Envoy keeps its ADS stream for hours: probe it so a vanished
            // proxy frees its stream.
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .add_service(ads.into_service())
            .add_optional_service(certificates);
        let stop = shutdown.clone();
        tasks.push(match options.tls {
            Some(tls) => {
                let config = crate::tls::server_config(tls.identity, tls.server);
                let incoming = tls_incoming(options.xds, config, shutdown.clone());
                tokio::spawn(async move {
                    if let Err(e) = router
                        .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                        .await
                    {
                        tracing::error!("xDS server failed: {e}");
                    }
                })
            }
            None => {
                let incoming = tokio_stream::wrappers::TcpListenerStream::new(options.xds);
                tokio::spawn(async move {
                    if let Err(e) = router
                        .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                        .await
                    {
                        tracing::error!("xDS server failed: {e}");
                    }
                })
            }
        });
        tracing::info!(address = %xds_addr, "xDS server listening");

        let mut debug_addr = None;
        if let Some(listener) = options.debug {
            let mut registry = Registry::default();
            state.metrics.register(&mut registry);
            if let Some(identity) = &identity {
                csr_metrics.register(&mut registry);
                identity.metrics.register(&mut registry);
            }
            let router = crate::debug::router(crate::debug::DebugState {
                xds: state.clone(),
                identity: identity.clone(),
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

/// Accepted TLS connections. Handshakes run concurrently, so a slow or
/// hostile client cannot hold up the others; clients without a valid
/// certificate never reach the gRPC layer.
fn tls_incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    shutdown: CancellationToken,
) -> tokio_stream::wrappers::ReceiverStream<
    std::io::Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>,
> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                () = shutdown.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: back off.
                        tracing::warn!("xDS accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => {
                        tracing::info!(%peer, "refused an xDS connection: TLS handshake failed: {e}")
                    }
                    Err(_) => {
                        tracing::info!(%peer, "refused an xDS connection: TLS handshake timed out")
                    }
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
