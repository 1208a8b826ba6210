//! The control plane's HTTP endpoints: health, Prometheus metrics, and JSON
//! debug views of connected proxies, rejected config, registry problems,
//! rejected routing annotations and the Gateway API routes' conditions.
//!
//! Bind it to loopback (the default) or a port only operators reach: it
//! reveals topology, though never key material.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use crate::discovery::file::FileError;
use crate::identity::Identity;
use crate::xds::ServerState;

#[derive(Clone)]
pub struct DebugState {
    pub xds: Arc<ServerState>,
    pub identity: Option<Arc<Identity>>,
    pub registry_problems: Arc<RwLock<Vec<FileError>>>,
    pub metrics: Arc<Registry>,
    pub lifecycle: Arc<Lifecycle>,
}

/// What readiness depends on besides the CA: a first full view of the
/// mesh, not draining; and, in a cluster, whether this replica leads.
#[derive(Debug, Default)]
pub struct Lifecycle {
    synced: AtomicBool,
    draining: AtomicBool,
    leader: Mutex<Option<watch::Receiver<bool>>>,
}

impl Lifecycle {
    /// The first full view of the mesh is served.
    pub fn set_synced(&self) {
        self.synced.store(true, Ordering::Relaxed);
    }

    /// Shutdown began: readiness turns false for good, so the Service
    /// stops sending new proxies here.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Report leadership (leader election in a cluster).
    pub fn set_leadership(&self, leading: watch::Receiver<bool>) {
        *self.leader.lock().unwrap_or_else(|p| p.into_inner()) = Some(leading);
    }

    /// The leadership watch, when leader election runs.
    fn leadership(&self) -> Option<watch::Receiver<bool>> {
        self.leader
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// `Some(leading)` when leader election runs.
    pub fn is_leader(&self) -> Option<bool> {
        self.leadership().map(|l| *l.borrow())
    }

    /// Why this replica should get no new proxies, if it should not.
    fn unready(&self) -> Option<String> {
        if self.is_draining() {
            Some("draining".into())
        } else if !self.synced.load(Ordering::Relaxed) {
            Some("waiting for the first full view of the mesh".into())
        } else {
            None
        }
    }
}

pub fn router(state: DebugState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/debug/xds/proxies", get(proxies))
        .route("/debug/xds/proxies/{node}", get(proxy))
        .route("/debug/xds/proxies/{node}/config", get(proxy_config))
        .route("/debug/xds/nacks", get(nacks))
        .route("/debug/registry", get(registry))
        .route("/debug/routing", get(routing))
        .route("/debug/routing/routes", get(routes))
        .route("/ca/rotate-root", axum::routing::post(rotate_root))
        .with_state(state)
}

/// Ready unless draining, still waiting for the first view of the mesh,
/// or the CA cannot sign (an expired or not-yet-valid issuer): then the
/// reason, so an operator sees it in the probe's output. With leader
/// election, a `leader: true|false` line follows.
async fn readyz(State(s): State<DebugState>) -> impl IntoResponse {
    let unready = s
        .lifecycle
        .unready()
        .or_else(|| s.identity.as_ref().and_then(|i| i.ca.status().unready));
    let (status, mut body) = match unready {
        None => (StatusCode::OK, "ok\n".to_string()),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
    };
    if let Some(leading) = s.lifecycle.is_leader() {
        body.push_str(&format!("leader: {leading}\n"));
    }
    (status, body)
}

/// The header `POST /ca/rotate-root` must carry. A browser cannot send a
/// custom header to another origin without a CORS preflight, which this
/// port never answers, so a page the operator happens to have open cannot
/// rotate the mesh's root through a port-forward.
pub const ROTATE_CONFIRM_HEADER: &str = "x-meshd-confirm";
const ROTATE_CONFIRM_VALUE: &str = "rotate-root";

/// Rotates the generated root CA (see [`crate::identity::rotate_root`]);
/// answers with a JSON [`crate::identity::RotationReport`]: each step, and
/// the proxies that did not acknowledge it in time and were disconnected.
async fn rotate_root(
    State(s): State<DebugState>,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    // Browsers mark every cross-site (and same-site) POST with Origin;
    // curl and kubectl do not.
    if headers.contains_key(axum::http::header::ORIGIN) {
        return (
            StatusCode::FORBIDDEN,
            "POST /ca/rotate-root refuses requests from a web page (an Origin header was sent)\n"
                .to_string(),
        )
            .into_response();
    }
    if headers
        .get(ROTATE_CONFIRM_HEADER)
        .is_none_or(|v| v.as_bytes() != ROTATE_CONFIRM_VALUE.as_bytes())
    {
        return (
            StatusCode::FORBIDDEN,
            format!(
                "POST /ca/rotate-root needs the header `{ROTATE_CONFIRM_HEADER}: {ROTATE_CONFIRM_VALUE}`\n"
            ),
        )
            .into_response();
    }
    // The debug port is reachable from the cluster (metrics); replacing
    // the mesh's root is for an operator on the pod itself (kubectl
    // port-forward or exec arrive over loopback).
    if peer
        .is_some_and(|axum::Extension(axum::extract::ConnectInfo(addr))| !addr.ip().is_loopback())
    {
        return (
            StatusCode::FORBIDDEN,
            "POST /ca/rotate-root is accepted from loopback only; use kubectl port-forward to this pod\n"
                .to_string(),
        )
            .into_response();
    }
    let Some(identity) = s.identity.clone() else {
        return (
            StatusCode::CONFLICT,
            "this control plane runs without a CA\n".to_string(),
        )
            .into_response();
    };
    // The root lives in a Secret shared by every replica: only the leader
    // may replace it.
    if s.lifecycle.is_leader() == Some(false) {
        return (
            StatusCode::CONFLICT,
            "this replica is not the leader; rotate the root on the leader (see /readyz: leader: true)\n"
                .to_string(),
        )
            .into_response();
    }
    let leading = s.lifecycle.leadership();
    let step_timeout = identity.rotation_step_timeout();
    let mut report = crate::identity::RotationReport::default();
    let result = crate::identity::rotate_root_steps(
        &identity,
        &*s.xds,
        step_timeout,
        leading.as_ref(),
        &mut report,
    )
    .await;
    // A proxy that did not acknowledge is an expected condition, not a
    // failure: it is in the report's `disconnected`, and the answer is 200.
    let status = match result {
        Ok(()) => {
            report.complete = true;
            StatusCode::OK
        }
        Err(e) => {
            let status = match e {
                crate::identity::RotationError::NotLeader { .. } => StatusCode::CONFLICT,
                crate::identity::RotationError::Ca { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            };
            report.error = Some(format!("root rotation stopped: {e}"));
            status
        }
    };
    let body = serde_json::to_string_pretty(&report).unwrap_or_default() + "\n";
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn proxies(State(s): State<DebugState>) -> impl IntoResponse {
    Json(s.xds.proxies())
}

/// One proxy's status (its newest stream), or 404 naming the proxy.
async fn proxy(
    State(s): State<DebugState>,
    axum::extract::Path(node): axum::extract::Path<String>,
) -> axum::response::Response {
    match s.xds.proxy(&node) {
        Some(status) => Json(status).into_response(),
        None => not_connected(&node),
    }
}

fn not_connected(node: &str) -> axum::response::Response {
    (
        StatusCode::NOT_FOUND,
        format!(
            "no proxy with node id {:?} is connected to this control plane (node ids are `pod.namespace`; GET /debug/xds/proxies lists them)\n",
            crate::xds::display_node_id(node)
        ),
    )
        .into_response()
}

/// What the control plane sent one proxy, in the shape of Envoy's config
/// dump (see [`crate::xds::dump`]); `?type=cluster,endpoint,listener,route,secret`
/// or `all` (the default). Never a private key.
async fn proxy_config(
    State(s): State<DebugState>,
    axum::extract::Path(node): axum::extract::Path<String>,
    uri: axum::http::Uri,
) -> axum::response::Response {
    let types = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .filter(|(key, _)| *key == "type")
        .map(|(_, value)| value.replace("%2C", ",").replace("%2c", ","))
        .collect::<Vec<_>>()
        .join(",");
    let kinds = match crate::xds::dump::parse_kinds(&types) {
        Ok(kinds) => kinds,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    match s.xds.inspect(&node, &kinds).await {
        Ok(inspection) => Json(crate::xds::dump::render(inspection)).into_response(),
        Err(crate::xds::InspectError::UnknownProxy(_)) => not_connected(&node),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    }
}

async fn nacks(State(s): State<DebugState>) -> impl IntoResponse {
    Json(s.xds.nacks())
}

async fn registry(State(s): State<DebugState>) -> impl IntoResponse {
    let problems = s
        .registry_problems
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Json(serde_json::json!({ "errors": problems }))
}

/// Annotation problems now: values rejected (object, annotation, value and
/// what is accepted; their objects keep their last good values) and values
/// in force with a warning, told apart by `severity`.
async fn routing(State(s): State<DebugState>) -> impl IntoResponse {
    Json(s.xds.routing_errors())
}

/// Every Gateway API route discovery knows, with the conditions it has (or,
/// in Kubernetes, that the leader writes to) in `status.parents`: why a
/// route does or does not apply, also with the file registry.
async fn routes(State(s): State<DebugState>) -> impl IntoResponse {
    let routes = s.xds.routes();
    let list: Vec<serde_json::Value> = routes
        .statuses
        .iter()
        .map(|(key, status)| {
            serde_json::json!({
                "kind": key.kind.as_str(),
                "namespace": key.namespace,
                "name": key.name,
                "generation": status.generation,
                "status": {"parents": status.parents_json()},
            })
        })
        .collect();
    Json(list)
}

async fn metrics(State(s): State<DebugState>) -> impl IntoResponse {
    s.xds.refresh_metrics();
    if let Some(identity) = &s.identity {
        identity
            .metrics
            .refresh(&identity.ca, s.xds.soonest_certificate_expiry());
    }
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &s.metrics) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
