//! Wires a discovery source, the publisher, the xDS server and the debug
//! endpoints together: what `meshd run` starts, and what tests start
//! in-process on listeners they bound themselves.
//!
//! Graceful shutdown ([`ControlPlane::shutdown_gracefully`]) goes in steps,
//! so proxies move to another replica without a gap:
//!
//! ```text
//! draining ──> /readyz 503 "draining"        (the Service stops routing new proxies here)
//!          ──> xDS listener closed, GOAWAY   (new connections refused, no new streams)
//!          ──> open ADS streams served      (pushes go on for the drain period)
//!          ──> streams closed               (Envoy reconnects elsewhere)
//!          ──> debug endpoints stop
//! ```
//!
//! Both listeners are served by [`crate::serving`], with the bounds of
//! [`ListenerLimits`]: no connection is held without a deadline, and a
//! flood on one port never takes the file descriptors of the other.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::debug::Lifecycle;
use crate::discovery::file::{self, FileRegistry};
use crate::identity::Identity;
use crate::model::Mesh;
use crate::serving::{Limits, Protocol, Server};
use crate::tls::ServerIdentity;
use crate::translate::{MtlsOptions, Snapshot, Telemetry, TranslateOptions};
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
    /// A source outside the core: the Kubernetes API (`meshd-k8s`), or any
    /// other that builds meshes with a [`crate::discovery::index::Index`].
    Custom(Box<dyn MeshSource>),
}

/// A discovery source the core runs without knowing its insides. It sends
/// whole meshes on `meshes`: the first once it has everything (until then
/// the control plane is not ready), then at most one per `settle`, and
/// returns when `meshes` has no receiver left. Build each mesh with a
/// [`crate::discovery::index::Index`] kept for the source's lifetime: its
/// `mesh()` is where routing annotations are checked and each service's
/// last good routing kept; a `Mesh` made by hand carries no routing.
pub trait MeshSource: Send {
    fn run(
        self: Box<Self>,
        meshes: watch::Sender<Arc<Mesh>>,
        settle: Duration,
    ) -> futures::future::BoxFuture<'static, ()>;
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
    /// Access logs and the proxies' other telemetry settings.
    pub telemetry: Telemetry,
    /// Who may call a Service without authorization annotations.
    pub authorization: meshd_api::annotations::authorization::DefaultPolicy,
}

/// A running control plane.
pub struct ControlPlane {
    pub xds_addr: std::net::SocketAddr,
    pub debug_addr: Option<std::net::SocketAddr>,
    pub state: Arc<ServerState>,
    pub registry_problems: file::Problems,
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    /// Readiness beyond the CA (draining, first view) and leadership.
    pub lifecycle: Arc<Lifecycle>,
    /// Stops accepting xDS connections and streams (the first drain step).
    accepting: CancellationToken,
    /// Ends the open ADS streams (the last drain step).
    streams: CancellationToken,
    /// Stops everything else.
    shutdown: CancellationToken,
    /// The xDS server: finishes once its listener is closed and every
    /// connection has ended.
    xds_server: Option<JoinHandle<()>>,
    tasks: Vec<JoinHandle<()>>,
}

/// How long closed streams get to say goodbye before the xDS server is
/// stopped outright.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// The bounds of the control plane's listeners (see [`crate::serving`]).
#[derive(Clone, Debug)]
pub struct ListenerLimits {
    pub xds: Limits,
    pub debug: Limits,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            xds: Limits::xds(),
            debug: Limits::debug(),
        }
    }
}

impl ControlPlane {
    /// Starts with the default [`ListenerLimits`].
    pub async fn start(options: Options) -> Result<Self, Error> {
        Self::start_with_limits(options, ListenerLimits::default()).await
    }

    pub async fn start_with_limits(
        options: Options,
        limits: ListenerLimits,
    ) -> Result<Self, Error> {
        let shutdown = CancellationToken::new();
        let accepting = CancellationToken::new();
        let streams = CancellationToken::new();
        let lifecycle = Arc::new(Lifecycle::default());
        let state = Arc::new(ServerState::default());
        let registry_problems: file::Problems = Arc::new(RwLock::new(Vec::new()));
        let (mesh_tx, mesh_rx) = watch::channel(Arc::new(Mesh::default()));

        let settle = options.debounce.min(Duration::from_millis(100));
        let mut tasks = Vec::new();
        let registry_source = !matches!(options.source, Source::Custom(_));
        let registry = match options.source {
            Source::Embedded => Some((FileRegistry::embedded(), PathBuf::new())),
            Source::Files(dir) => Some((FileRegistry::new(&dir), dir)),
            Source::Custom(source) => {
                tasks.push(tokio::spawn(source.run(mesh_tx.clone(), settle)));
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
            telemetry: options.telemetry.clone(),
            authorization: options.authorization,
        };
        let snapshots = xds::spawn_publisher(mesh_rx, options.debounce, state.clone(), translate);
        if registry_source {
            // The registry was read before the first snapshot.
            lifecycle.set_synced();
        } else {
            // A custom source publishes once it has everything (the
            // Kubernetes source: every kind listed); until then the first
            // snapshot is an empty mesh.
            let mut first_view = snapshots.clone();
            let lifecycle = lifecycle.clone();
            tasks.push(tokio::spawn(async move {
                if first_view.changed().await.is_ok() {
                    lifecycle.set_synced();
                }
            }));
        }

        let xds_addr = options.xds.local_addr().map_err(Error::Listener)?;
        let identity = options.tls.as_ref().map(|t| t.identity.clone());
        let ads = Ads::new(
            snapshots.clone(),
            state.clone(),
            identity.clone(),
            streams.clone(),
        );
        // The CSR service authenticates callers by client certificate, so
        // it exists only on the TLS listener.
        let csr_metrics = crate::certificates::CsrMetrics::default();
        let certificates = identity.clone().map(|identity| {
            crate::certificates::CertificateService::new(identity, csr_metrics.clone())
                .into_service()
        });
        let routes = tonic::service::Routes::new(ads.into_service());
        let routes = match certificates {
            Some(certificates) => routes.add_service(certificates),
            None => routes,
        }
        .prepare();
        let mut server = Server::new("xDS", options.xds, Protocol::Http2, limits.xds)
            .count_handshake_failures(state.metrics.tls_handshake_failures.clone());
        if let Some(tls) = options.tls {
            server = server.tls(crate::tls::server_config(tls.identity, tls.server));
        }
        // On `accepting`, the listener closes and every connection gets a
        // GOAWAY: open streams go on, new ones are refused.
        let xds_server = Some(tokio::spawn(
            server
                .serve(routes, accepting.clone().cancelled_owned())
                .instrument(tracing::info_span!("xds_server")),
        ));
        tracing::info!(address = %xds_addr, "xDS server listening");

        let mut debug_addr = None;
        if let Some(listener) = options.debug {
            let mut registry = Registry::default();
            crate::process::ProcessCollector::register(&mut registry);
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
                lifecycle: lifecycle.clone(),
            });
            debug_addr = Some(listener.local_addr().map_err(Error::Listener)?);
            tasks.push(serve_debug(
                listener,
                router,
                limits.debug,
                shutdown.clone(),
            ));
            tracing::info!(address = ?debug_addr, "debug endpoints listening");
        }

        Ok(ControlPlane {
            xds_addr,
            debug_addr,
            state,
            registry_problems,
            snapshots,
            lifecycle,
            accepting,
            streams,
            shutdown,
            xds_server,
            tasks,
        })
    }

    /// Reports this replica's leadership on `/readyz` and gates root
    /// rotation to the leader.
    pub fn set_leadership(&self, leading: watch::Receiver<bool>) {
        self.lifecycle.set_leadership(leading);
    }

    /// Stops serving at once: open streams end, listeners close.
    pub async fn shutdown(mut self) {
        self.accepting.cancel();
        self.streams.cancel();
        self.shutdown.cancel();
        if let Some(task) = self.xds_server.take() {
            self.tasks.push(task);
        }
        for task in self.tasks {
            task.abort();
            let _ = task.await;
        }
    }

    /// Stops serving without dropping proxies on the floor: readiness goes
    /// false at once, no new connections or streams are accepted, open ADS
    /// streams are served (pushes included) for `drain`, or until they
    /// have all gone, then closed so their proxies reconnect elsewhere.
    pub async fn shutdown_gracefully(mut self, drain: Duration) {
        self.lifecycle.set_draining();
        tracing::info!(
            ?drain,
            "draining: not ready, refusing new xDS connections, serving open streams"
        );
        self.accepting.cancel();
        if let Some(mut server) = self.xds_server.take() {
            // The server finishes early once every connection has ended.
            if tokio::time::timeout(drain, &mut server).await.is_err() {
                tracing::info!("drain period over: closing the open xDS streams");
                self.streams.cancel();
                if tokio::time::timeout(CLOSE_GRACE, &mut server)
                    .await
                    .is_err()
                {
                    tracing::warn!("xDS connections still open after closing their streams");
                    server.abort();
                }
            }
        }
        self.shutdown().await;
    }
}

fn serve_debug(
    listener: TcpListener,
    router: axum::Router,
    limits: Limits,
    stop: CancellationToken,
) -> JoinHandle<()> {
    let server = Server::new("debug", listener, Protocol::Http1, limits);
    tokio::spawn(
        server
            .serve(router, stop.cancelled_owned())
            .instrument(tracing::info_span!("debug_server")),
    )
}

/// The debug endpoints without xDS, for a deployment that runs only the
/// injector: health, readiness (the CA, draining) and the CA's metrics.
pub struct DebugEndpoints {
    pub debug_addr: std::net::SocketAddr,
    pub lifecycle: Arc<Lifecycle>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl DebugEndpoints {
    /// Starts with the default [`Limits::debug`].
    pub async fn start(
        listener: TcpListener,
        identity: Option<Arc<Identity>>,
    ) -> Result<Self, Error> {
        Self::start_with_limits(listener, identity, Limits::debug()).await
    }

    pub async fn start_with_limits(
        listener: TcpListener,
        identity: Option<Arc<Identity>>,
        limits: Limits,
    ) -> Result<Self, Error> {
        let lifecycle = Arc::new(Lifecycle::default());
        // Nothing to discover: there is no mesh view to wait for.
        lifecycle.set_synced();
        let mut registry = Registry::default();
        crate::process::ProcessCollector::register(&mut registry);
        if let Some(identity) = &identity {
            identity.metrics.register(&mut registry);
        }
        let router = crate::debug::router(crate::debug::DebugState {
            xds: Arc::new(ServerState::default()),
            identity,
            registry_problems: Arc::new(RwLock::new(Vec::new())),
            metrics: Arc::new(registry),
            lifecycle: lifecycle.clone(),
        });
        let debug_addr = listener.local_addr().map_err(Error::Listener)?;
        let shutdown = CancellationToken::new();
        let task = serve_debug(listener, router, limits, shutdown.clone());
        tracing::info!(address = %debug_addr, "debug endpoints listening (xDS off)");
        Ok(DebugEndpoints {
            debug_addr,
            lifecycle,
            shutdown,
            task,
        })
    }

    pub fn set_leadership(&self, leading: watch::Receiver<bool>) {
        self.lifecycle.set_leadership(leading);
    }

    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}
