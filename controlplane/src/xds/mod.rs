//! The xDS server: ADS over gRPC, State-of-the-World and Delta.
//!
//! ```text
//! watch<Mesh> ──> publisher (debounce, Snapshot) ──> watch<Snapshot>
//!                                                            │ each stream subscribes
//! Envoy ──DiscoveryRequest──> stream task ── Session ────────┘
//!       <──DiscoveryResponse─┘   (subscriptions, ACK/NACK, push order)
//! ```
//!
//! Every stream serves one proxy, identified by the node id of its first
//! request. NACKs are logged with the proxy and type, counted, and kept for
//! the debug endpoint.

pub mod dump;
mod grpc;
mod overlay;
pub mod request;
mod session;
mod sotw;

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use meshd_proto::envoy::service::discovery::v3::{DeltaDiscoveryResponse, DiscoveryResponse};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use prost::Message;
use request::DeltaRequest;
use serde::Serialize;
use tokio::sync::{Notify, Semaphore, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic::body::Body;
use tracing::Instrument;

pub use grpc::{MAX_REQUEST_BYTES, REQUEST_BUDGET, REQUEST_BUDGET_PATIENCE, SEND_BUDGET};
use grpc::{Outgoing, RequestReader, ResponseBody};

pub use session::{Outcome, Push, Request, Session, Subscribe};

use crate::identity::{DEFAULT_SECRET, Identity, ROOT_SECRET, WorkloadCert};
use crate::model::{Mesh, MeshRoutes};
use crate::translate::{Kind, ProxyView, Resource, Snapshot, TranslateOptions};
use meshd_api::annotations::routing::{AnnotationError, Severity};
use meshd_ca::SpiffeId;

/// How many NACKs the debug endpoint remembers.
const NACK_HISTORY: usize = 256;

/// The longest node id logged or shown whole. A pod's (`<pod>.<namespace>`:
/// 253 + 1 + 63 bytes) always fits; anything longer is no pod's and is cut,
/// so a proxy cannot put 100 KB of its own choosing into every log line.
pub const NODE_ID_DISPLAY_LIMIT: usize = 320;

/// The longest proxy-supplied text (a NACK's message, a secret name, a type
/// URL) logged or kept whole.
const PROXY_TEXT_LIMIT: usize = 1024;

/// Refused SDS names of one stream, logged in aggregate.
#[derive(Debug, Default)]
struct RefusedSecrets {
    /// Refused since the last line.
    unlogged: u64,
    /// One of them (shortened), for the line.
    example: Option<String>,
    logged_at: Option<tokio::time::Instant>,
}

impl RefusedSecrets {
    const LOG_EVERY: Duration = Duration::from_secs(10);

    fn due(&self) -> bool {
        self.logged_at
            .is_none_or(|at| at.elapsed() >= Self::LOG_EVERY)
    }
}

/// `id` as logs and debug output show it: whole if it could be a pod's,
/// else cut (see [`NODE_ID_DISPLAY_LIMIT`]).
pub fn display_node_id(id: &str) -> String {
    shorten(id, NODE_ID_DISPLAY_LIMIT)
}

/// `text` whole when at most `limit` bytes; else its first `limit` bytes
/// (to a character boundary) and how many more there were.
fn shorten(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_string();
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…({} more bytes)", &text[..end], text.len() - end)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabels {
    pub r#type: String,
}

#[derive(Debug, Default)]
pub struct Metrics {
    pub connected_proxies: Gauge,
    /// Connected proxies with a type not acknowledged at its latest
    /// version (sent and pending, or rejected), or no workload in the mesh
    /// yet; set when metrics are scraped ([`ServerState::refresh_metrics`]).
    pub proxies_not_synced: Gauge,
    /// From a change to the mesh to the push that carries it, per proxy
    /// the change concerns.
    pub push_latency: PushLatency,
    pub pushes: Family<TypeLabels, Counter>,
    pub nacks: Family<TypeLabels, Counter>,
    pub snapshots: Counter,
    /// Streams refused because the client certificate is not the workload
    /// the node id names, and SDS requests for secrets not the proxy's own.
    pub identity_denied: Counter,
    pub certificates_issued: Counter,
    /// Routing annotation problems in the current mesh.
    pub routing_annotation_errors: Gauge,
    /// Routing annotation problems as they appear (each distinct one once).
    pub routing_annotation_rejections: Counter,
    /// Annotations in force with a warning (an identity rule on workloads
    /// that accept plaintext).
    pub annotation_warnings: Gauge,
    /// TLS handshakes on the xDS port that failed, by reason: a proxy
    /// locked out shows here even though it never reaches a stream.
    pub tls_handshake_failures: Family<crate::serving::HandshakeFailureLabels, Counter>,
}

impl Metrics {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("meshd_xds");
        r.register(
            "connected_proxies",
            "ADS streams currently open",
            self.connected_proxies.clone(),
        );
        r.register(
            "proxies_not_synced",
            "Connected proxies with a type not acknowledged at its latest version (pending or rejected), or not in the mesh",
            self.proxies_not_synced.clone(),
        );
        r.register(
            "push_latency_seconds",
            "From a mesh change (its first event, before debouncing) to the push carrying it, once per proxy it concerns",
            self.push_latency.0.clone(),
        );
        r.register("pushes", "xDS responses sent, by type", self.pushes.clone());
        r.register(
            "nacks",
            "xDS responses a proxy rejected, by type",
            self.nacks.clone(),
        );
        r.register(
            "snapshots",
            "Mesh snapshots translated",
            self.snapshots.clone(),
        );
        r.register(
            "identity_denied",
            "Requests refused because the proxy asked for an identity not its own",
            self.identity_denied.clone(),
        );
        r.register(
            "tls_handshake_failures",
            "TLS handshakes on the xDS port that failed, by reason (unknown_ca: the client certificate's root is not trusted; peer_unknown_ca: the client does not trust ours; ...)",
            self.tls_handshake_failures.clone(),
        );
        r.register(
            "certificates_issued",
            "Workload certificates issued to proxies over SDS",
            self.certificates_issued.clone(),
        );
        let r = registry.sub_registry_with_prefix("meshd_routing");
        r.register(
            "annotation_errors",
            "Routing annotations currently rejected (their services keep their last good routing)",
            self.routing_annotation_errors.clone(),
        );
        r.register(
            "annotation_warnings",
            "Annotations in force with a warning (authorization rules naming identities on workloads that accept plaintext); /debug/routing lists them",
            self.annotation_warnings.clone(),
        );
        r.register(
            "annotation_rejections",
            "Routing annotation values rejected, each distinct problem counted when it appears",
            self.routing_annotation_rejections.clone(),
        );
    }
}

/// The push latency histogram: 1 ms to a minute, since a debounced burst
/// or a slow proxy can take seconds.
#[derive(Debug, Clone)]
pub struct PushLatency(pub Histogram);

impl Default for PushLatency {
    fn default() -> Self {
        PushLatency(Histogram::new([
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            60.0,
        ]))
    }
}

/// How many snapshots' change times are remembered for the push latency:
/// a stream further behind than this has bigger problems than a missing
/// sample.
const CHANGE_TIMES: usize = 64;

fn labels(kind: Kind) -> TypeLabels {
    TypeLabels {
        r#type: kind.short_name().to_string(),
    }
}

/// A response a proxy rejected.
#[derive(Clone, Debug, Serialize)]
pub struct NackRecord {
    pub node_id: String,
    pub type_url: String,
    pub version: String,
    pub nonce: String,
    pub message: String,
    pub at_unix_seconds: u64,
}

/// Where a proxy stands with one type, as `meshd proxy-status` shows it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub enum SyncStatus {
    /// Nothing sent yet.
    #[default]
    #[serde(rename = "NOT SENT")]
    NotSent,
    /// The latest response sent was acknowledged.
    #[serde(rename = "SYNCED")]
    Synced,
    /// Sent, not yet acknowledged.
    #[serde(rename = "STALE")]
    Stale,
    /// The latest response sent was rejected; the proxy keeps what it
    /// acknowledged before.
    #[serde(rename = "NACKED")]
    Nacked,
}

/// Per-type state of one proxy, for the debug endpoint.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TypeStatus {
    pub status: SyncStatus,
    pub sent_version: String,
    pub acked_version: String,
    pub resources: usize,
    /// `version: message` of the last NACK, until the next ACK.
    pub last_nack: Option<String>,
    /// The same, apart: the rejected version and Envoy's message.
    pub last_nack_version: Option<String>,
    pub last_nack_message: Option<String>,
}

impl TypeStatus {
    /// Brings the record up to `t`, reusing its strings' buffers.
    fn update(&mut self, t: &session::TypeState) {
        self.status = if t.sent_version.is_empty() {
            SyncStatus::NotSent
        } else if t
            .last_nack
            .as_ref()
            .is_some_and(|(v, _)| *v == t.sent_version)
        {
            SyncStatus::Nacked
        } else if t.acked_version == t.sent_version {
            SyncStatus::Synced
        } else {
            SyncStatus::Stale
        };
        self.sent_version.clone_from(&t.sent_version);
        self.acked_version.clone_from(&t.acked_version);
        self.resources = t.sent.len();
        match &t.last_nack {
            None => {
                self.last_nack = None;
                self.last_nack_version = None;
                self.last_nack_message = None;
            }
            Some((version, message)) => {
                if self.last_nack_version.as_ref() != Some(version)
                    || self.last_nack_message.as_ref() != Some(message)
                {
                    self.last_nack = Some(format!("{version}: {message}"));
                    self.last_nack_version = Some(version.clone());
                    self.last_nack_message = Some(message.clone());
                }
            }
        }
    }
}

/// The proxy's current workload certificate (never its key).
#[derive(Clone, Debug, Serialize)]
pub struct CertificateStatus {
    pub spiffe_id: String,
    pub serial: String,
    pub not_after_unix_seconds: i64,
    /// The same instant, RFC 3339.
    pub not_after: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct ProxyStatus {
    pub node_id: String,
    pub protocol: &'static str,
    /// The identity the proxy's xDS client certificate proved, if TLS.
    pub peer_identity: Option<String>,
    /// The CA generation (bumped at each root rotation step) of the last
    /// secrets the proxy acknowledged.
    pub ca_generation_acked: Option<u64>,
    pub known_workload: bool,
    pub certificate: Option<CertificateStatus>,
    pub types: TypeStatuses,
}

/// A proxy's records by xDS type (at most five), in name order. A list
/// rather than a `BTreeMap`: a map's node has room for eleven records and
/// cost every proxy ~1.7 KiB for its five.
#[derive(Clone, Debug, Default)]
pub struct TypeStatuses(Vec<(&'static str, TypeStatus)>);

impl TypeStatuses {
    /// The xDS types a proxy can subscribe to, so the list is made once.
    const TYPES: usize = 5;

    pub fn get(&self, name: &str) -> Option<&TypeStatus> {
        self.0.iter().find(|(n, _)| *n == name).map(|(_, t)| t)
    }

    pub fn values(&self) -> impl Iterator<Item = &TypeStatus> {
        self.0.iter().map(|(_, t)| t)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &TypeStatus)> {
        self.0.iter().map(|(n, t)| (*n, t))
    }

    fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.0.retain(|(n, _)| keep(n));
    }

    /// The record of `name`, made in its place if there is none.
    fn entry(&mut self, name: &'static str) -> &mut TypeStatus {
        let at = match self.0.binary_search_by(|(n, _)| (*n).cmp(name)) {
            Ok(at) => at,
            Err(at) => {
                if self.0.capacity() == 0 {
                    self.0.reserve_exact(Self::TYPES);
                }
                self.0.insert(at, (name, TypeStatus::default()));
                at
            }
        };
        &mut self.0[at].1
    }
}

/// As the map it stands for: `{"CDS": {...}, ...}`.
impl Serialize for TypeStatuses {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

/// What the server shares with the debug endpoint and metrics.
#[derive(Debug, Default)]
pub struct ServerState {
    pub metrics: Metrics,
    proxies: Mutex<BTreeMap<u64, ProxyStatus>>,
    nacks: Mutex<VecDeque<NackRecord>>,
    routing_errors: Mutex<Vec<AnnotationError>>,
    /// The same errors for subscribers (the Kubernetes Event recorder);
    /// changes only when the set does.
    routing_error_updates: watch::Sender<Vec<AnnotationError>>,
    /// The Gateway API routes of the current snapshot, with their
    /// conditions (`/debug/routing/routes`).
    routes: Mutex<Arc<MeshRoutes>>,
    next_stream: AtomicU64,
    /// Each open stream's way to be ended by the control plane (a proxy
    /// that holds up a root rotation) or asked what it sent, by stream id.
    streams: Mutex<BTreeMap<u64, Arc<StreamControl>>>,
    /// The NACKs proxies stand by now (their last response of a type was
    /// rejected); cleared by an ACK or the stream's end.
    current_nacks: Mutex<CurrentNacks>,
    /// The same, sorted and each once, for subscribers (the Kubernetes
    /// Event recorder); changes only when the set does, and is kept only
    /// while someone subscribes.
    nack_updates: watch::Sender<Vec<ProxyNack>>,
    /// When the mesh changes that recent snapshots carry began, by
    /// snapshot id (for the push latency).
    change_times: Mutex<VecDeque<(u64, tokio::time::Instant)>>,
}

/// The NACKs proxies stand by, kept so that a change costs the same with
/// ten proxies rejecting a resource as with ten thousand: by stream, so a
/// stream's end finds its own, and each distinct NACK with how many
/// (stream, type) stand by it, so the published list changes by one
/// insertion or removal instead of being rebuilt and sorted.
#[derive(Debug, Default)]
struct CurrentNacks {
    by_stream: BTreeMap<u64, BTreeMap<Kind, ProxyNack>>,
    distinct: BTreeMap<ProxyNack, usize>,
}

/// A change to the set of distinct NACKs.
enum NackChange {
    Added(ProxyNack),
    Removed(ProxyNack),
}

impl CurrentNacks {
    fn set(&mut self, stream: u64, kind: Kind, nack: Option<ProxyNack>) -> Vec<NackChange> {
        let mut changes = Vec::new();
        let old = match nack {
            Some(nack) => {
                let kinds = self.by_stream.entry(stream).or_default();
                match kinds.insert(kind, nack.clone()) {
                    Some(old) if old == nack => return changes,
                    old => {
                        self.add(nack, &mut changes);
                        old
                    }
                }
            }
            None => {
                let Some(kinds) = self.by_stream.get_mut(&stream) else {
                    return changes;
                };
                let old = kinds.remove(&kind);
                if kinds.is_empty() {
                    self.by_stream.remove(&stream);
                }
                old
            }
        };
        if let Some(old) = old {
            self.remove(old, &mut changes);
        }
        changes
    }

    fn forget(&mut self, stream: u64) -> Vec<NackChange> {
        let mut changes = Vec::new();
        for old in self
            .by_stream
            .remove(&stream)
            .into_iter()
            .flat_map(|k| k.into_values())
        {
            self.remove(old, &mut changes);
        }
        changes
    }

    fn add(&mut self, nack: ProxyNack, changes: &mut Vec<NackChange>) {
        match self.distinct.get_mut(&nack) {
            Some(count) => *count += 1,
            None => {
                self.distinct.insert(nack.clone(), 1);
                changes.push(NackChange::Added(nack));
            }
        }
    }

    fn remove(&mut self, nack: ProxyNack, changes: &mut Vec<NackChange>) {
        if let Some(count) = self.distinct.get_mut(&nack) {
            *count -= 1;
            if *count == 0 {
                self.distinct.remove(&nack);
                changes.push(NackChange::Removed(nack));
            }
        }
    }
}

/// A rejected response a proxy stands by (for Kubernetes Events).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct ProxyNack {
    /// The proxy's node id (`pod.namespace`), shortened for display.
    pub node_id: String,
    /// CDS, EDS, LDS, RDS or SDS.
    pub r#type: &'static str,
    pub type_url: &'static str,
    pub version: String,
    /// Envoy's message (shortened).
    pub message: String,
}

/// What the control plane holds to reach a running stream.
#[derive(Debug, Default)]
struct StreamControl {
    disconnect: CancellationToken,
    /// Wakes the stream to answer `inspections`.
    inspect: Notify,
    inspections: Mutex<Vec<InspectQuery>>,
}

#[derive(Debug)]
struct InspectQuery {
    kinds: Vec<Kind>,
    reply: oneshot::Sender<Inspection>,
}

/// What one stream sent its proxy, as the debug endpoint renders it: the
/// snapshot's own shared resources (no copies), looked up when asked.
#[derive(Debug)]
pub struct Inspection {
    pub status: ProxyStatus,
    pub types: Vec<TypeInspection>,
    /// What the proxy's workload enforces on its inbound side (`None`
    /// before the proxy is known as a workload of the mesh).
    pub authorization: Option<crate::translate::WorkloadAuthorization>,
}

#[derive(Debug)]
pub struct TypeInspection {
    pub kind: Kind,
    /// What the proxy was sent and holds, by name: version, and the
    /// resource (`None` only for a version a reconnecting Delta proxy said
    /// it holds that is no longer in the snapshot).
    pub sent: Vec<(String, String, Option<Arc<Resource>>)>,
    /// What it acknowledged, by name and version, where the session keeps
    /// that per resource (listeners and routes; for the other types the
    /// type's status says whether all of `sent` is acknowledged).
    pub acked: Option<BTreeMap<String, String>>,
}

/// Why a stream could not be inspected.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("no proxy with node id {0:?} is connected to this control plane")]
    UnknownProxy(String),
    #[error("the stream of proxy {0:?} ended or did not answer; try again")]
    NoAnswer(String),
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ServerState {
    pub fn proxies(&self) -> Vec<ProxyStatus> {
        lock(&self.proxies).values().cloned().collect()
    }

    /// The status of the proxy with node id `node_id` (its newest stream,
    /// should it have two while reconnecting).
    pub fn proxy(&self, node_id: &str) -> Option<ProxyStatus> {
        lock(&self.proxies)
            .values()
            .rev()
            .find(|p| p.node_id == node_id)
            .cloned()
    }

    /// Asks the stream of proxy `node_id` what it sent, of `kinds`. The
    /// stream answers between two messages with pointers to the resources
    /// it holds; rendering them is the caller's.
    pub async fn inspect(&self, node_id: &str, kinds: &[Kind]) -> Result<Inspection, InspectError> {
        let stream = lock(&self.proxies)
            .iter()
            .rev()
            .find(|(_, p)| p.node_id == node_id)
            .map(|(id, _)| *id)
            .ok_or_else(|| InspectError::UnknownProxy(display_node_id(node_id)))?;
        let control = lock(&self.streams)
            .get(&stream)
            .cloned()
            .ok_or_else(|| InspectError::NoAnswer(display_node_id(node_id)))?;
        let (reply, answer) = oneshot::channel();
        lock(&control.inspections).push(InspectQuery {
            kinds: kinds.to_vec(),
            reply,
        });
        control.inspect.notify_one();
        // A stream blocked on a full send queue answers once it moves on;
        // a debug request does not wait for it forever.
        match tokio::time::timeout(Duration::from_secs(10), answer).await {
            Ok(Ok(inspection)) => Ok(inspection),
            _ => Err(InspectError::NoAnswer(display_node_id(node_id))),
        }
    }

    /// Updates the gauges worked out from every proxy's state (called when
    /// metrics are scraped, rather than on every request of every stream).
    pub fn refresh_metrics(&self) {
        let not_synced = lock(&self.proxies)
            .values()
            .filter(|p| {
                !p.known_workload || p.types.values().any(|t| t.status != SyncStatus::Synced)
            })
            .count();
        self.metrics
            .proxies_not_synced
            .set(i64::try_from(not_synced).unwrap_or(i64::MAX));
    }

    /// The NACKs connected proxies stand by (sorted), now and at every change.
    pub fn watch_nacks(&self) -> watch::Receiver<Vec<ProxyNack>> {
        // Unwatched, the published list is not kept up: bring it up to
        // date before the first subscriber reads it.
        let current = lock(&self.current_nacks);
        if self.nack_updates.receiver_count() == 0 {
            self.nack_updates
                .send_replace(current.distinct.keys().cloned().collect());
        }
        self.nack_updates.subscribe()
    }

    /// Records (`Some`) or clears (`None`) what stream `stream` stands by
    /// for `kind`, and tells subscribers when the set changed.
    fn set_current_nack(&self, stream: u64, kind: Kind, nack: Option<ProxyNack>) {
        let mut current = lock(&self.current_nacks);
        let changes = current.set(stream, kind, nack);
        self.publish_nacks(changes);
    }

    fn forget_nacks(&self, stream: u64) {
        let mut current = lock(&self.current_nacks);
        let changes = current.forget(stream);
        self.publish_nacks(changes);
    }

    /// Applies `changes` to the published list in place: a binary search
    /// and one insertion or removal each, no copy of the other NACKs.
    /// Called with `current_nacks` held, so changes apply in order.
    fn publish_nacks(&self, changes: Vec<NackChange>) {
        if changes.is_empty() || self.nack_updates.receiver_count() == 0 {
            return;
        }
        self.nack_updates.send_modify(|published| {
            for change in changes {
                match change {
                    NackChange::Added(nack) => {
                        if let Err(at) = published.binary_search(&nack) {
                            published.insert(at, nack);
                        }
                    }
                    NackChange::Removed(nack) => {
                        if let Ok(at) = published.binary_search(&nack) {
                            published.remove(at);
                        }
                    }
                }
            }
        });
    }

    /// Remembers when the change snapshot `snapshot` carries began.
    fn record_change(&self, snapshot: u64, at: tokio::time::Instant) {
        let mut times = lock(&self.change_times);
        if times.len() == CHANGE_TIMES {
            times.pop_front();
        }
        times.push_back((snapshot, at));
    }

    fn change_time(&self, snapshot: u64) -> Option<tokio::time::Instant> {
        lock(&self.change_times)
            .iter()
            .rev()
            .find(|(id, _)| *id == snapshot)
            .map(|(_, at)| *at)
    }

    pub fn nacks(&self) -> Vec<NackRecord> {
        lock(&self.nacks).iter().cloned().collect()
    }

    /// The proxies holding a workload certificate that have not yet
    /// acknowledged secrets of CA `generation`: their stream ids and node
    /// ids (shortened for display, see [`display_node_id`]).
    pub fn not_acknowledged(&self, generation: u64) -> Vec<(u64, String)> {
        lock(&self.proxies)
            .iter()
            .filter(|(_, p)| p.certificate.is_some() && p.ca_generation_acked < Some(generation))
            .map(|(id, p)| (*id, p.node_id.clone()))
            .collect()
    }

    /// Ends stream `stream` with UNAVAILABLE; Envoy reconnects at once and
    /// is sent the current secrets on its new stream. False if the stream
    /// has already ended.
    pub fn disconnect(&self, stream: u64) -> bool {
        match lock(&self.streams).get(&stream) {
            Some(control) => {
                control.disconnect.cancel();
                true
            }
            None => false,
        }
    }

    /// When the soonest-expiring workload certificate a connected proxy
    /// holds expires (Unix seconds).
    pub fn soonest_certificate_expiry(&self) -> Option<i64> {
        lock(&self.proxies)
            .values()
            .filter_map(|p| p.certificate.as_ref())
            .map(|c| c.not_after_unix_seconds)
            .min()
    }

    /// The routing annotation problems of the current snapshot.
    pub fn routing_errors(&self) -> Vec<AnnotationError> {
        lock(&self.routing_errors).clone()
    }

    /// The Gateway API routes of the current snapshot and their conditions.
    pub fn routes(&self) -> Arc<MeshRoutes> {
        lock(&self.routes).clone()
    }

    /// The routing annotation problems (sorted) now and at every change.
    pub fn watch_routing_errors(&self) -> watch::Receiver<Vec<AnnotationError>> {
        self.routing_error_updates.subscribe()
    }

    /// Replaces the current routing problems (sorted), logging and counting
    /// those that are new and logging those that are gone.
    fn set_routing_errors(&self, errors: &[AnnotationError]) {
        let mut current = lock(&self.routing_errors);
        for e in errors {
            if current.binary_search(e).is_err() {
                match e.severity {
                    Severity::Rejected => {
                        self.metrics.routing_annotation_rejections.inc();
                        tracing::warn!(object = %e.object, annotation = %e.annotation, value = %e.value, "routing annotation rejected, the last good routing stays: {}", e.message);
                    }
                    Severity::Warning => {
                        tracing::warn!(object = %e.object, annotation = %e.annotation, value = %e.value, "annotation in force, with a warning: {}", e.message);
                    }
                }
            }
        }
        for e in current.iter() {
            if errors.binary_search(e).is_err() {
                tracing::info!(object = %e.object, annotation = %e.annotation, "routing annotation problem resolved");
            }
        }
        *current = errors.to_vec();
        self.routing_error_updates.send_if_modified(|published| {
            let changed = published.as_slice() != errors;
            if changed {
                *published = errors.to_vec();
            }
            changed
        });
        let warnings = errors
            .iter()
            .filter(|e| e.severity == Severity::Warning)
            .count();
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.metrics
            .routing_annotation_errors
            .set(count(errors.len() - warnings));
        self.metrics.annotation_warnings.set(count(warnings));
    }
}

impl crate::identity::ProxyAcks for ServerState {
    fn connected(&self) -> usize {
        lock(&self.proxies).len()
    }

    fn not_acknowledged(&self, generation: u64) -> Vec<(u64, String)> {
        ServerState::not_acknowledged(self, generation)
    }

    fn disconnect(&self, stream: u64) -> bool {
        ServerState::disconnect(self, stream)
    }
}

/// Turns mesh changes into translated snapshots. A change that comes after
/// a quiet `debounce` window is published at once (an endpoint going away
/// should not wait); changes arriving within `debounce` of the last
/// publish are coalesced into one snapshot, so a burst (a rollout, a
/// registry rewrite) costs a translation per window rather than per
/// change; a steady stream of changes still publishes at least every 10
/// windows.
///
/// Routing comes validated with each mesh (discovery keeps each service's
/// last good routing); the publisher reports its problems.
pub fn spawn_publisher(
    mut meshes: watch::Receiver<Arc<Mesh>>,
    debounce: Duration,
    state: Arc<ServerState>,
    options: TranslateOptions,
) -> watch::Receiver<Arc<Snapshot>> {
    let first = Arc::new(Snapshot::new(
        1,
        meshes.borrow_and_update().clone(),
        options.clone(),
    ));
    state.set_routing_errors(&first.problems());
    *lock(&state.routes) = first.mesh.routes.clone();
    state.metrics.snapshots.inc();
    let mut last = first.clone();
    let (tx, rx) = watch::channel(first);
    tokio::spawn(
        async move {
            let mut version = 1;
            let mut published = tokio::time::Instant::now();
            while meshes.changed().await.is_ok() {
                let now = tokio::time::Instant::now();
                let deadline = now + debounce * 10;
                // Quiet since the last publish: this is no burst (yet).
                let leading = now.duration_since(published) >= debounce;
                if !leading {
                    loop {
                        let quiet = tokio::time::sleep(debounce);
                        tokio::select! {
                            _ = quiet => break,
                            changed = meshes.changed() => if changed.is_err() { return },
                        }
                        if tokio::time::Instant::now() >= deadline {
                            break;
                        }
                    }
                }
                // The change began at `now`, before any debouncing.
                let changed_at = now;
                let mesh = meshes.borrow_and_update().clone();
                version += 1;
                let options = options.clone();
                let previous = last.clone();
                let snapshot = tokio::task::spawn_blocking(move || {
                    Snapshot::next(version, mesh, options, &previous)
                })
                .await
                .expect("translation does not panic");
                published = tokio::time::Instant::now();
                state.set_routing_errors(&snapshot.problems());
                *lock(&state.routes) = snapshot.mesh.routes.clone();
                state.metrics.snapshots.inc();
                state.record_change(snapshot.id(), changed_at);
                tracing::debug!(version, "snapshot published");
                last = Arc::new(snapshot);
                if tx.send(last.clone()).is_err() {
                    return;
                }
            }
        }
        .instrument(tracing::info_span!("publisher")),
    );
    rx
}

/// The ADS service.
#[derive(Clone, Debug)]
pub struct Ads {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    state: Arc<ServerState>,
    /// The CA, when the server runs with TLS and hands out secrets.
    identity: Option<Arc<Identity>>,
    shutdown: CancellationToken,
    /// Response bytes in flight across every stream ([`SEND_BUDGET`]).
    budget: Arc<Semaphore>,
    /// Large request messages being read across every stream
    /// ([`REQUEST_BUDGET`]).
    request_budget: Arc<Semaphore>,
}

impl Ads {
    pub fn new(
        snapshots: watch::Receiver<Arc<Snapshot>>,
        state: Arc<ServerState>,
        identity: Option<Arc<Identity>>,
        shutdown: CancellationToken,
    ) -> Self {
        Ads {
            snapshots,
            state,
            identity,
            shutdown,
            budget: grpc::send_budget(),
            request_budget: grpc::request_budget(),
        }
    }

    /// The gRPC service to mount on a tonic server.
    pub fn into_service(self) -> AdsService {
        AdsService { ads: self }
    }
}

/// `envoy.service.discovery.v3.AggregatedDiscoveryService`, both methods.
#[derive(Clone, Debug)]
pub struct AdsService {
    ads: Ads,
}

impl tonic::server::NamedService for AdsService {
    const NAME: &'static str = grpc::SERVICE;
}

impl tower_service::Service<http::Request<Body>> for AdsService {
    type Response = http::Response<Body>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let response = match request.uri().path() {
            grpc::SOTW_PATH => self.ads.open::<Sotw>(request),
            grpc::DELTA_PATH => self.ads.open::<Delta>(request),
            path => Status::unimplemented(format!("no such method: {path}")).into_http(),
        };
        std::future::ready(Ok(response))
    }
}

/// The two wire flavours, as the stream loop sees them.
trait Wire: Send + 'static {
    type Req: Send + 'static;
    /// What a stream keeps between requests to read the next one.
    type Reader: Default + Send + 'static;
    const NAME: &'static str;
    fn decode(bytes: &[u8], reader: &mut Self::Reader) -> Result<Self::Req, prost::DecodeError>;
    fn node_id(req: &Self::Req) -> Option<&str>;
    fn type_url(req: &Self::Req) -> &str;
    fn request(req: Self::Req, kind: Kind) -> Request;
    fn response(push: Push, snapshot_version: u64) -> Outgoing;
}

struct Sotw;
struct Delta;

impl Wire for Sotw {
    type Req = sotw::SotwRequest;
    type Reader = sotw::SeenNames;
    const NAME: &'static str = "sotw";

    fn decode(bytes: &[u8], seen: &mut sotw::SeenNames) -> Result<Self::Req, prost::DecodeError> {
        seen.decode(bytes)
    }

    fn node_id(req: &Self::Req) -> Option<&str> {
        req.request.node.as_ref().map(|n| n.id.as_str())
    }

    fn type_url(req: &Self::Req) -> &str {
        &req.request.type_url
    }

    fn request(req: Self::Req, kind: Kind) -> Request {
        let sotw::SotwRequest {
            request: req,
            same_names,
        } = req;
        Request {
            kind,
            response_nonce: req.response_nonce,
            error: req.error_detail.map(|e| e.message),
            subscribe: match same_names {
                true => Subscribe::Same,
                false => Subscribe::Replace(req.resource_names),
            },
        }
    }

    fn response(push: Push, _: u64) -> Outgoing {
        // Listeners and clusters must be sent as a whole set. Routes and
        // endpoints need not: what a response leaves out stays as it was, so
        // an endpoint change sends one load assignment, not all of them.
        let resources = if push.kind.is_wildcard() {
            push.all
        } else {
            push.changed
        };
        let head = DiscoveryResponse {
            version_info: push.version,
            type_url: push.kind.type_url().to_string(),
            nonce: push.nonce,
            ..Default::default()
        };
        Outgoing::new(head.encode_to_vec(), resources, false)
    }
}

impl Wire for Delta {
    type Req = DeltaRequest;
    type Reader = ();
    const NAME: &'static str = "delta";

    fn decode(bytes: &[u8], (): &mut ()) -> Result<Self::Req, prost::DecodeError> {
        DeltaRequest::decode(bytes)
    }

    fn node_id(req: &DeltaRequest) -> Option<&str> {
        req.node.as_ref().map(|n| n.id.as_str())
    }

    fn type_url(req: &DeltaRequest) -> &str {
        &req.type_url
    }

    fn request(req: DeltaRequest, kind: Kind) -> Request {
        Request {
            kind,
            response_nonce: req.response_nonce,
            error: req.error_detail.map(|e| e.message),
            subscribe: Subscribe::Change {
                subscribe: req.resource_names_subscribe,
                unsubscribe: req.resource_names_unsubscribe,
                initial_versions: req.initial_resource_versions,
            },
        }
    }

    fn response(push: Push, snapshot_version: u64) -> Outgoing {
        let head = DeltaDiscoveryResponse {
            system_version_info: snapshot_version.to_string(),
            type_url: push.kind.type_url().to_string(),
            removed_resources: push.removed,
            nonce: push.nonce,
            ..Default::default()
        };
        Outgoing::new(head.encode_to_vec(), push.changed, true)
    }
}

/// The workload identity in the stream's client certificate, if any.
fn peer_of<T>(request: &tonic::Request<T>) -> Option<SpiffeId> {
    let certs = request.peer_certs()?;
    crate::identity::peer_identity(certs.first()?)
}

impl Ads {
    fn open<W: Wire>(&self, request: http::Request<Body>) -> http::Response<Body> {
        let request = tonic::Request::from_http(request);
        let peer = peer_of(&request);
        let requests = RequestReader::new(request.into_inner(), self.request_budget.clone());
        // A push is at most one response per type.
        let (tx, rx) = mpsc::channel(Kind::PUSH_ORDER.len());
        let stream_id = self.state.next_stream.fetch_add(1, Ordering::Relaxed);
        let control = Arc::new(StreamControl::default());
        lock(&self.state.streams).insert(stream_id, control.clone());
        let task = Box::new(StreamTask::<W> {
            stream_id,
            control,
            node_id: String::new(),
            node_display: String::new(),
            refused_secrets: RefusedSecrets::default(),
            session: Session::new(std::any::TypeId::of::<W>() == std::any::TypeId::of::<Delta>()),
            view: None,
            snapshots: self.snapshots.clone(),
            state: self.state.clone(),
            ca_changes: self.identity.as_ref().map(|i| i.subscribe()),
            identity: self.identity.clone(),
            peer,
            cert: None,
            secrets_generation: None,
            sds_sent: None,
            sds_acked: None,
            reader: W::Reader::default(),
            tx,
            _wire: std::marker::PhantomData,
        });
        let shutdown = self.shutdown.clone();
        tokio::spawn(
            async move {
                task.run(requests, shutdown).await;
            }
            .instrument(tracing::info_span!(
                "ads",
                stream = stream_id,
                protocol = W::NAME,
                node = tracing::field::Empty
            )),
        );
        grpc::response(ResponseBody::new(rx, self.budget.clone()))
    }
}

struct StreamTask<W: Wire> {
    stream_id: u64,
    /// The node id as logs and the debug endpoint show it (shortened).
    node_display: String,
    /// Refused SDS names not yet logged (their lines are aggregated).
    refused_secrets: RefusedSecrets,
    /// To end this stream from outside ([`ServerState::disconnect`]) or
    /// ask what it sent ([`ServerState::inspect`]).
    control: Arc<StreamControl>,
    node_id: String,
    session: Session,
    /// The proxy's view of the latest snapshot, translated once per
    /// snapshot rather than on every request.
    view: Option<ProxyView>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    state: Arc<ServerState>,
    identity: Option<Arc<Identity>>,
    ca_changes: Option<watch::Receiver<u64>>,
    /// Who the client certificate says the proxy is.
    peer: Option<SpiffeId>,
    /// The proxy's current workload certificate.
    cert: Option<WorkloadCert>,
    /// The CA generation of the secrets computed for the current push.
    secrets_generation: Option<u64>,
    /// The last SDS response sent (nonce) and the CA generation it carried.
    sds_sent: Option<(String, u64)>,
    /// The CA generation of the last secrets the proxy acknowledged.
    sds_acked: Option<u64>,
    /// What reading the next request needs (State of the World: the names
    /// each type last asked for, hashed).
    reader: W::Reader,
    tx: mpsc::Sender<grpc::Message>,
    _wire: std::marker::PhantomData<W>,
}

impl<W: Wire> StreamTask<W> {
    /// Takes the task boxed: its state (~2.7 KiB, the session and the
    /// view) is then in the spawned task once. Moved by value into this
    /// future, it had a slot in the spawned block and another in this
    /// frame, and a stream's task was ~9 KiB.
    async fn run(mut self: Box<Self>, mut requests: RequestReader, shutdown: CancellationToken) {
        let result = self.serve(&mut requests, &shutdown).await;
        // Whatever it holds of the request budget goes back now, not after
        // the status below is sent to a proxy that may not read it.
        drop(requests);
        lock(&self.state.streams).remove(&self.stream_id);
        self.state.forget_nacks(self.stream_id);
        // What was refused since the last line is not lost with the stream.
        self.log_refused_secrets();
        if !self.node_id.is_empty() {
            lock(&self.state.proxies).remove(&self.stream_id);
            self.state.metrics.connected_proxies.dec();
        }
        match result {
            Ok(()) => tracing::info!(node = %self.node_display, "proxy disconnected"),
            Err(status) => {
                tracing::info!(node = %self.node_display, "stream ended: {}", status.message());
                let _ = self.tx.send(Err(Box::new(status))).await;
            }
        }
    }

    async fn serve(
        &mut self,
        requests: &mut RequestReader,
        shutdown: &CancellationToken,
    ) -> Result<(), Status> {
        // A source that never changes (the embedded registry) closes its
        // channel after the first snapshot; the stream keeps serving it.
        let mut updates = true;
        let control = self.control.clone();
        // Made once, not at every turn of the loop: every stream waits on
        // the server's shutdown, and making and dropping that wait (and a
        // timer) for each acknowledgement was a tenth of the CPU a mesh
        // change costs at 2,000 proxies.
        let shutdown = shutdown.cancelled();
        let disconnect = control.disconnect.cancelled();
        let mut rotate_at = self.cert.as_ref().map(|c| c.rotate_at);
        let rotation =
            tokio::time::sleep_until(rotate_at.unwrap_or_else(tokio::time::Instant::now));
        tokio::pin!(shutdown, disconnect, rotation);
        loop {
            let now_rotate_at = self.cert.as_ref().map(|c| c.rotate_at);
            if now_rotate_at != rotate_at {
                rotate_at = now_rotate_at;
                if let Some(at) = rotate_at {
                    rotation.as_mut().reset(at);
                }
            }
            let ca_changed = async {
                match self.ca_changes.as_mut() {
                    Some(rx) => rx.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                () = control.inspect.notified() => {
                    // Nothing changed: no push.
                    self.answer_inspections();
                    continue;
                }
                () = &mut disconnect => return Err(Status::unavailable(
                    "ended by the control plane: this proxy did not acknowledge its secrets \
                     in time during a root rotation; reconnect to be sent the current ones",
                )),
                message = requests.message(|bytes| W::decode(bytes, &mut self.reader)) => {
                    let Some(req) = message? else { return Ok(()) };
                    self.on_request(req)?;
                    // Most requests only answer a response: with no new
                    // snapshot and no new subscription there is nothing to
                    // send, so the push is not worked out (at a mesh change
                    // each proxy answers four or five responses); only the
                    // status moves (acknowledged, or rejected).
                    if !self.session.has_pending() && !self.snapshots.has_changed().unwrap_or(false) {
                        self.publish_status(self.view.is_some());
                        continue;
                    }
                }
                changed = self.snapshots.changed(), if updates => {
                    updates = changed.is_ok();
                }
                // Time to rotate: the push below issues a fresh certificate.
                () = &mut rotation, if rotate_at.is_some() => {}
                // The CA changed (root rotation): re-issue and re-send.
                open = ca_changed => if !open { self.ca_changes = None },
            }
            // A push waits for the proxy to take its responses, without
            // reading requests: past its time, a large request in progress
            // gives up its budget (its place in the queue, or its permits)
            // rather than hold the other streams' large requests up.
            let expiry = requests.budget_expiry();
            let push = self.push();
            tokio::pin!(push);
            tokio::select! {
                pushed = &mut push => pushed?,
                () = tokio::time::sleep_until(expiry.unwrap_or_else(tokio::time::Instant::now)), if expiry.is_some() => {
                    requests.yield_budget();
                    push.await?;
                }
            }
        }
    }

    fn on_request(&mut self, req: W::Req) -> Result<(), Status> {
        if self.node_id.is_empty() {
            let node_id = W::node_id(&req).unwrap_or_default();
            if node_id.is_empty() {
                return Err(Status::invalid_argument(
                    "the first request on an ADS stream must carry node.id (the pod's `name.namespace`)",
                ));
            }
            self.node_id = node_id.to_string();
            self.node_display = display_node_id(node_id);
            // Every line in the stream's span carries this field.
            tracing::Span::current().record("node", self.node_display.as_str());
            tracing::info!(node = %self.node_display, "proxy connected");
            self.state.metrics.connected_proxies.inc();
        }
        let type_url = W::type_url(&req).to_string();
        let Some(kind) = Kind::from_type_url(&type_url) else {
            tracing::debug!(node = %self.node_display, type_url = %shorten(&type_url, PROXY_TEXT_LIMIT), "ignoring a request for a type meshd does not serve");
            return Ok(());
        };
        let mut request = W::request(req, kind);
        if kind == Kind::Secret {
            self.refuse_foreign_secrets(&mut request);
        }
        let nonce = request.response_nonce.clone();
        let outcome = self.session.on_request(request);
        if kind == Kind::Secret
            && outcome == Outcome::Ack
            && let Some((sent_nonce, generation)) = &self.sds_sent
            && *sent_nonce == nonce
        {
            self.sds_acked = Some(*generation);
        }
        if outcome == Outcome::Ack {
            self.state.set_current_nack(self.stream_id, kind, None);
        }
        if let Outcome::Nack { version, message } = outcome {
            // Envoy's own messages are short; a longer one is cut, so a
            // proxy cannot make each NACK a megabyte of log.
            let message = shorten(&message, PROXY_TEXT_LIMIT);
            self.state.set_current_nack(
                self.stream_id,
                kind,
                Some(ProxyNack {
                    node_id: self.node_display.clone(),
                    r#type: kind.short_name(),
                    type_url: kind.type_url(),
                    version: version.clone(),
                    message: message.clone(),
                }),
            );
            self.state.metrics.nacks.get_or_create(&labels(kind)).inc();
            tracing::warn!(
                node = %self.node_display,
                %type_url,
                %version,
                "proxy rejected config; it keeps its last accepted {}: {message}",
                kind.short_name()
            );
            let mut nacks = lock(&self.state.nacks);
            if nacks.len() == NACK_HISTORY {
                nacks.pop_front();
            }
            nacks.push_back(NackRecord {
                node_id: self.node_display.clone(),
                type_url,
                version,
                nonce,
                message,
                at_unix_seconds: SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            });
        }
        Ok(())
    }

    /// A proxy may only ask for its own certificate and the trust bundle;
    /// any other secret name is refused and counted, and logged at most
    /// once per stream every [`RefusedSecrets::LOG_EVERY`] with how many
    /// there were: the names are the proxy's to choose, and a line per
    /// name per request would let one proxy write the log's size.
    fn refuse_foreign_secrets(&mut self, request: &mut Request) {
        let names = match &mut request.subscribe {
            Subscribe::Replace(names) => names,
            Subscribe::Change { subscribe, .. } => subscribe,
            // Never for secrets (see `sotw::SeenNames`): nothing new to check.
            Subscribe::Same => return,
        };
        let before = names.len();
        let mut example = None;
        names.retain(|n| {
            let own = n == DEFAULT_SECRET || n == ROOT_SECRET;
            if !own && example.is_none() {
                example = Some(shorten(n, PROXY_TEXT_LIMIT));
            }
            own
        });
        let refused = (before - names.len()) as u64;
        let Some(example) = example else { return };
        self.state.metrics.identity_denied.inc_by(refused);
        self.refused_secrets.unlogged += refused;
        self.refused_secrets.example = Some(example);
        if self.refused_secrets.due() {
            self.log_refused_secrets();
        }
    }

    /// Logs the refused SDS names counted since the last such line.
    fn log_refused_secrets(&mut self) {
        let refused = std::mem::take(&mut self.refused_secrets.unlogged);
        let Some(example) = self.refused_secrets.example.take() else {
            return;
        };
        self.refused_secrets.logged_at = Some(tokio::time::Instant::now());
        tracing::warn!(
            node = %self.node_display,
            peer = ?self.peer.as_ref().map(ToString::to_string),
            refused,
            example = %example,
            "denied SDS requests for secrets that are not the proxy's own \
             (at most one line per stream every {:?}; each is counted in \
             meshd_xds_identity_denied_total)",
            RefusedSecrets::LOG_EVERY
        );
    }

    /// Checks the proxy is the workload its node id names, and returns its
    /// secrets, issuing or rotating its certificate as needed.
    fn secrets(
        &mut self,
        workload: &crate::model::Workload,
    ) -> Result<Vec<Arc<crate::translate::Resource>>, Status> {
        let Some(identity) = self.identity.clone() else {
            return Ok(Vec::new());
        };
        let expected = identity.spiffe_id(workload);
        if self.peer.as_ref() != Some(&expected) {
            self.state.metrics.identity_denied.inc();
            let peer = self
                .peer
                .as_ref()
                .map_or("no identity".to_string(), ToString::to_string);
            tracing::warn!(node = %self.node_display, %peer, %expected, "denied: the client certificate is not the workload the node id names");
            return Err(Status::permission_denied(format!(
                "node {} is workload {expected}, but the client certificate is {peer}",
                self.node_display
            )));
        }
        let stale = self.cert.as_ref().is_none_or(|c| {
            c.id != expected
                || c.generation != identity.generation()
                || tokio::time::Instant::now() >= c.rotate_at
        });
        if stale {
            match identity.issue(&expected) {
                Ok(cert) => {
                    self.state.metrics.certificates_issued.inc();
                    tracing::info!(node = %self.node_display, serial = %cert.serial_hex, not_after = %cert.not_after, "issued a workload certificate");
                    self.cert = Some(cert);
                }
                Err(e) => {
                    // Keep the current certificate (if any): it is still
                    // valid until its NotAfter, and the CA's health says why.
                    tracing::error!(node = %self.node_display, "cannot issue a workload certificate: {e}");
                }
            }
        }
        self.secrets_generation = Some(identity.generation());
        let mut secrets = vec![identity.root_secret()];
        secrets.extend(self.cert.as_ref().map(|c| c.secret.clone()));
        Ok(secrets)
    }

    async fn push(&mut self) -> Result<(), Status> {
        let snapshot = self.snapshots.borrow_and_update().clone();
        // A push for a snapshot newer than the one the proxy was served
        // carries a mesh change: its latency is measured. A proxy's first
        // push (it just connected) carries none.
        let mut carries_change = false;
        if self
            .view
            .as_ref()
            .is_none_or(|v| v.snapshot_id() != snapshot.id())
        {
            carries_change = self.view.is_some();
            self.view = snapshot.proxy(&self.node_id);
        }
        let mut view = self.view.take();
        let pushes = match &mut view {
            Some(view) => {
                let workload = view.workload.clone();
                view.set_secrets(self.secrets(&workload)?);
                self.session.push(view)
            }
            None => {
                tracing::debug!(node = %self.node_display, "no workload with this node id yet; waiting");
                Vec::new()
            }
        };
        self.publish_status(view.is_some());
        self.view = view;
        let change_time = match carries_change && !pushes.is_empty() {
            true => self.state.change_time(snapshot.id()),
            false => None,
        };
        for push in pushes {
            if push.kind == Kind::Secret
                && let Some(generation) = self.secrets_generation
            {
                self.sds_sent = Some((push.nonce.clone(), generation));
            }
            self.state
                .metrics
                .pushes
                .get_or_create(&labels(push.kind))
                .inc();
            tracing::debug!(
                node = %self.node_display,
                r#type = push.kind.short_name(),
                nonce = %push.nonce,
                changed = push.changed.len(),
                removed = push.removed.len(),
                "push"
            );
            if self
                .tx
                .send(Ok(Box::new(W::response(push, snapshot.version))))
                .await
                .is_err()
            {
                return Err(Status::cancelled("proxy went away"));
            }
        }
        if let Some(at) = change_time {
            self.state
                .metrics
                .push_latency
                .0
                .observe(at.elapsed().as_secs_f64());
        }
        Ok(())
    }

    /// Records where this stream stands for the debug endpoint and the
    /// metrics. It runs after every request and push of every stream, so
    /// an existing record is updated in place, reusing the strings it
    /// holds, rather than built again.
    fn publish_status(&self, known_workload: bool) {
        let mut proxies = lock(&self.state.proxies);
        let Some(status) = proxies.get_mut(&self.stream_id) else {
            let mut types = TypeStatuses::default();
            for (kind, t) in self.session.types.iter().filter(|(_, t)| t.requested) {
                types.entry(kind.short_name()).update(t);
            }
            proxies.insert(self.stream_id, self.status(known_workload, types));
            return;
        };
        // The node id arrives with the stream's first request, which may
        // come after the record was made.
        if status.node_id != self.node_display {
            status.node_id.clone_from(&self.node_display);
        }
        if status.peer_identity.is_none() && self.peer.is_some() {
            status.peer_identity = self.peer.as_ref().map(ToString::to_string);
        }
        status.known_workload = known_workload;
        status.ca_generation_acked = self.sds_acked;
        let serial = self.cert.as_ref().map(|c| &c.serial_hex);
        if status.certificate.as_ref().map(|c| &c.serial) != serial {
            status.certificate = self.certificate_status();
        }
        let requested = |name: &str| {
            self.session
                .types
                .iter()
                .any(|(k, t)| t.requested && k.short_name() == name)
        };
        status.types.retain(requested);
        for (kind, t) in self.session.types.iter().filter(|(_, t)| t.requested) {
            status.types.entry(kind.short_name()).update(t);
        }
    }

    fn certificate_status(&self) -> Option<CertificateStatus> {
        self.cert.as_ref().map(|c| CertificateStatus {
            spiffe_id: c.id.to_string(),
            serial: c.serial_hex.clone(),
            not_after_unix_seconds: c.not_after.unix_timestamp(),
            not_after: c
                .not_after
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
        })
    }

    fn status(&self, known_workload: bool, types: TypeStatuses) -> ProxyStatus {
        ProxyStatus {
            node_id: self.node_display.clone(),
            protocol: W::NAME,
            peer_identity: self.peer.as_ref().map(ToString::to_string),
            ca_generation_acked: self.sds_acked,
            known_workload,
            certificate: self.certificate_status(),
            types,
        }
    }

    /// Answers the debug endpoint's questions: what this stream sent, as
    /// pointers to the snapshot's resources.
    fn answer_inspections(&mut self) {
        let queries = std::mem::take(&mut *lock(&self.control.inspections));
        for query in queries {
            let types = query
                .kinds
                .iter()
                .map(|&kind| self.inspect_type(kind))
                .collect();
            let status = lock(&self.state.proxies)
                .get(&self.stream_id)
                .cloned()
                .unwrap_or_else(|| self.status(self.view.is_some(), TypeStatuses::default()));
            let authorization = self.view.as_ref().map(|view| {
                let snapshot = self.snapshots.borrow().clone();
                snapshot.authorization_of(&view.workload)
            });
            let _ = query.reply.send(Inspection {
                status,
                types,
                authorization,
            });
        }
    }

    fn inspect_type(&self, kind: Kind) -> TypeInspection {
        let Some(state) = self.session.types.get(&kind) else {
            return TypeInspection {
                kind,
                sent: Vec::new(),
                acked: None,
            };
        };
        let sent = state
            .sent
            .iter()
            .map(|(name, entry)| {
                let version = entry.version().to_string();
                // A version a reconnecting Delta proxy said it holds is
                // the snapshot's resource when the versions agree (a
                // version is the digest of the encoded resource).
                let resource = entry.resource().cloned().or_else(|| {
                    self.view
                        .as_ref()
                        .and_then(|v| v.get(kind, name))
                        .filter(|r| r.version == version)
                        .cloned()
                });
                (name.to_string(), version, resource)
            })
            .collect();
        let acked = matches!(kind, Kind::Listener | Kind::Route).then(|| {
            state
                .acked
                .iter()
                .map(|(name, entry)| (name.to_string(), entry.version().to_string()))
                .collect()
        });
        TypeInspection { kind, sent, acked }
    }
}

#[cfg(test)]
mod nack_tests {
    use super::*;

    fn nack(node: &str, r#type: &'static str, message: &str) -> ProxyNack {
        ProxyNack {
            node_id: node.into(),
            r#type,
            type_url: "type.googleapis.com/envoy.config.listener.v3.Listener",
            version: "7".into(),
            message: message.into(),
        }
    }

    /// What the list was when it was rebuilt at every change: every
    /// stream's NACKs, sorted, each once.
    fn rebuilt(state: &ServerState) -> Vec<ProxyNack> {
        let current = lock(&state.current_nacks);
        let mut all: Vec<ProxyNack> = current
            .by_stream
            .values()
            .flat_map(|kinds| kinds.values().cloned())
            .collect();
        all.sort();
        all.dedup();
        all
    }

    #[test]
    fn the_published_nacks_follow_each_change_sorted_and_each_once() {
        let state = ServerState::default();
        // Before anyone subscribes the list is not kept up, but the first
        // subscriber reads the current set.
        state.set_current_nack(1, Kind::Listener, Some(nack("b.shop", "LDS", "bad")));
        let nacks = state.watch_nacks();
        assert_eq!(*nacks.borrow(), [nack("b.shop", "LDS", "bad")]);

        // A thousand proxies reject the same listener, in reverse order.
        for stream in (2..1002).rev() {
            let node = format!("p{stream:04}.shop");
            state.set_current_nack(stream, Kind::Listener, Some(nack(&node, "LDS", "bad")));
        }
        assert_eq!(nacks.borrow().len(), 1001);
        assert_eq!(*nacks.borrow(), rebuilt(&state));

        // One of them reconnected and rejects it on its new stream too: it
        // is listed once, and stays while either stream stands by it.
        state.set_current_nack(5000, Kind::Listener, Some(nack("p0002.shop", "LDS", "bad")));
        assert_eq!(nacks.borrow().len(), 1001);
        state.forget_nacks(5000);
        assert!(nacks.borrow().contains(&nack("p0002.shop", "LDS", "bad")));
        // Its old stream ACKs: gone.
        state.set_current_nack(2, Kind::Listener, None);
        assert!(!nacks.borrow().contains(&nack("p0002.shop", "LDS", "bad")));

        // A new message replaces the old one; the same one changes nothing.
        state.set_current_nack(3, Kind::Listener, Some(nack("p0003.shop", "LDS", "worse")));
        let before = nacks.borrow().clone();
        let mut seen = nacks.clone();
        seen.mark_unchanged();
        state.set_current_nack(3, Kind::Listener, Some(nack("p0003.shop", "LDS", "worse")));
        assert!(
            !seen.has_changed().unwrap(),
            "an unchanged NACK is not a change"
        );
        assert_eq!(*nacks.borrow(), before);
        assert!(!before.contains(&nack("p0003.shop", "LDS", "bad")));

        // Two types on one stream; the stream's end clears both.
        state.set_current_nack(4, Kind::Route, Some(nack("p0004.shop", "RDS", "bad")));
        assert_eq!(*nacks.borrow(), rebuilt(&state));
        state.forget_nacks(4);
        assert!(!nacks.borrow().iter().any(|n| n.node_id == "p0004.shop"));
        assert_eq!(*nacks.borrow(), rebuilt(&state));
        assert_eq!(nacks.borrow().len(), 999);
    }
}

#[cfg(test)]
mod type_status_tests {
    use super::*;

    /// The records read as the map they stand for: one per type, in name
    /// order whatever the order they were made in, in one allocation.
    #[test]
    fn a_proxys_type_records_serialize_as_a_map_in_name_order() {
        let mut types = TypeStatuses::default();
        for name in ["SDS", "CDS", "RDS", "LDS", "EDS", "CDS"] {
            types.entry(name).resources += 1;
        }
        assert_eq!(
            types.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            ["CDS", "EDS", "LDS", "RDS", "SDS"]
        );
        assert_eq!(types.get("CDS").map(|t| t.resources), Some(2));
        assert_eq!(types.0.capacity(), TypeStatuses::TYPES);

        types.retain(|name| name != "EDS");
        let json = serde_json::to_value(&types).unwrap();
        let object = json.as_object().expect("a map");
        assert_eq!(
            object.keys().map(String::as_str).collect::<Vec<_>>(),
            ["CDS", "LDS", "RDS", "SDS"]
        );
        assert_eq!(object["CDS"]["resources"], 2);
        assert_eq!(object["LDS"]["status"], "NOT SENT");
    }
}
