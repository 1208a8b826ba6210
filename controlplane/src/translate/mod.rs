//! Mesh model → Envoy resources, per proxy.
//!
//! A [`Snapshot`] is built once per mesh change, from the mesh and the
//! routing in force ([`crate::model::MeshRouting`]). What every proxy
//! shares is translated once, up front: outbound clusters and their
//! endpoints, and the outbound listeners. What varies is translated when a
//! proxy first asks and then cached: the outbound side per egress scope
//! (proxies with `meshd.io/egress` get only the clusters, endpoints and
//! filter chains of the services in scope; equal scopes share one copy),
//! and route configurations per namespace and scope (short service names
//! only resolve within the caller's namespace). What belongs to one proxy
//! alone, its inbound listener and clusters, is built per proxy and is small.
//!
//! ```text
//!                 outbound (15001)    0.0.0.0_<port>                inbound (15006)
//! app ──iptables──> original_dst ─ port ─> VIP ─> cluster ──> original_dst ─ port ─> 127.0.0.1:port
//!                   └ other ports ─┐       └ unknown ─┐       └ unknown ─> PassthroughCluster
//!                                  └──────────────────┴─> PassthroughCluster
//! ```
//!
//! Every resource carries a version (a hash of its encoding), so the xDS
//! server can tell what changed without comparing messages, and the names of
//! the clusters it refers to, so clusters are never removed while a listener
//! or route Envoy still holds points at them.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::Hasher;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};

use itertools::Itertools;
use meshd_proto::envoy::config::accesslog::v3::AccessLog;
use meshd_proto::envoy::config::core::v3::{Address, CidrRange, TrafficDirection};
use meshd_proto::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter, filter, listener_filter,
};
use meshd_proto::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
use meshd_proto::envoy::extensions::filters::http::router::v3::Router;
use meshd_proto::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
use meshd_proto::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use meshd_proto::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
};
use meshd_proto::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use meshd_proto::{BoolValue, UInt32Value, to_any};

use crate::model::{Interception, Mesh, MtlsMode, Protocol, ServiceKey, Workload};
use meshd_api::annotations::routing::{AnnotationError, Egress};
use meshd_api::sidecar::stats::{ConnectionSecurity, inbound_stat_prefix};

use crate::model::MeshRouting;
pub use outbound::SharedChanges;

mod authz;
mod clusters;
mod gateway;
mod hosts;
mod inbound;
mod outbound;
mod resource;
mod routing;
mod telemetry;
mod tls;

pub use authz::{ServiceAuthorization, WorkloadAuthorization};
pub use clusters::inbound_cluster_name;
use clusters::{inbound_cluster, passthrough_cluster, socket_address};
use hosts::SharedHost;
use resource::ads;
pub use resource::{Collector, Tracing};
pub use resource::{
    DEFAULT_SECRET, HTTP_PROXY_ROUTE, INBOUND_LISTENER, INBOUND_PASSTHROUGH_CLUSTER, Kind,
    MtlsOptions, OUTBOUND_LISTENER, OUTBOUND_PORT_LISTENER_PREFIX, PASSTHROUGH_CLUSTER,
    ROOT_SECRET, Resource, Resources, Telemetry, TranslateOptions, decode, entry_digest,
};
use routing::{route_to, service_hosts};
pub use telemetry::{ACCESS_LOG_FIELDS, TRACING_COLLECTOR_CLUSTER};
use telemetry::{TracedListeners, TracingKey};

/// Ports the sidecar owns inside a pod (listener ports are translation's
/// vocabulary too).
pub use meshd_api::sidecar::ports;

/// Everything a proxy should have, by kind.
#[derive(Debug)]
pub struct ProxyView {
    pub workload: Arc<Workload>,
    shared_clusters: Arc<Resources>,
    shared_endpoints: Arc<Resources>,
    local_clusters: Arc<Resources>,
    /// The outbound listeners, the same map for every proxy of the egress
    /// scope that logs and traces alike ([`Outbound::listeners_for`]).
    outbound_listeners: Arc<Resources>,
    /// The proxy's own listeners (inbound; all of them without capture).
    listeners: Resources,
    routes: Arc<Resources>,
    /// The proxy's own secrets; the stream that serves it fills them in.
    secrets: Resources,
    /// The version of the snapshot this view is of.
    version: u64,
    snapshot_id: u64,
    changes: Option<Arc<SharedChanges>>,
    /// Which egress scope: 0 for the whole mesh, else a hash of the scope
    /// (its clusters are then a part of the mesh's).
    scope_id: u64,
}

impl ProxyView {
    /// Sets the proxy's SDS secrets (its certificate and the trust bundle).
    pub fn set_secrets(&mut self, secrets: impl IntoIterator<Item = Arc<Resource>>) {
        self.secrets = secrets.into_iter().map(|r| (r.name.clone(), r)).collect();
    }

    /// The version of the snapshot this view is of.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Which snapshot this view is of: unique in the process, unlike
    /// versions, which every publisher (and test) counts on its own.
    pub fn snapshot_id(&self) -> u64 {
        self.snapshot_id
    }

    /// What changed in the shared resources since the previous snapshot.
    /// A proxy's own resources ([`ProxyView::local`]) are not included.
    pub fn changes(&self) -> Option<&SharedChanges> {
        self.changes.as_deref()
    }

    /// Which egress scope the view's shared maps are of (0: the whole
    /// mesh). The changes a snapshot lists hold between views of one scope
    /// only: a proxy whose scope changed must be compared in full.
    pub fn scope_id(&self) -> u64 {
        self.scope_id
    }

    /// The shared map a kind's resources come from (clusters, but for the
    /// proxy's own, and load assignments: the same `Arc` for every proxy
    /// of a scope; route configurations: for every proxy of a namespace
    /// and scope).
    pub fn base(&self, kind: Kind) -> Option<&Arc<Resources>> {
        match kind {
            Kind::Cluster => Some(&self.shared_clusters),
            Kind::Endpoint => Some(&self.shared_endpoints),
            // Shared by the proxies of a namespace (and egress scope): a
            // session holding them keeps no copy of their names (twenty or
            // so, in four sets: subscribed, sent, acknowledged, in flight).
            Kind::Route => Some(&self.routes),
            _ => None,
        }
    }

    /// The names of `kind` ([`ProxyView::base`]) whose resources may differ
    /// between snapshot `since` and this one; `None` when that cannot be
    /// told from the changes (too far behind, or this proxy's egress scope
    /// may have changed).
    pub fn changed_since<'a>(&'a self, kind: Kind, since: u64) -> Option<Vec<&'a str>> {
        // Asked about this very snapshot (a session rebasing onto the
        // snapshot it already holds): nothing changed. Without this the
        // walk below would go down the whole history looking for `since`,
        // merging every set on the way (the first full view of a cluster,
        // after the empty mesh, names every cluster), and then give up.
        if since == self.snapshot_id {
            return Some(Vec::new());
        }
        let scoped = self.scope_id != 0;
        let pick = |c: &'a SharedChanges| -> Option<&'a BTreeSet<String>> {
            if c.structural && scoped {
                return None;
            }
            match kind {
                Kind::Cluster => Some(&c.clusters),
                Kind::Endpoint => Some(&c.endpoints),
                _ => None,
            }
        };
        let mut changes = self.changes.as_deref()?;
        let first = pick(changes)?;
        if changes.since == since {
            return Some(first.iter().map(String::as_str).collect());
        }
        let mut names: BTreeSet<&str> = first.iter().map(String::as_str).collect();
        loop {
            changes = changes.earlier.as_deref()?;
            names.extend(pick(changes)?.iter().map(String::as_str));
            if changes.since == since {
                return Some(names.into_iter().collect());
            }
        }
    }

    /// The resources of a kind that belong to this proxy alone (its
    /// inbound clusters); the rest of the clusters and load assignments
    /// are shared.
    pub fn local(&self, kind: Kind) -> Box<dyn Iterator<Item = &Arc<Resource>> + '_> {
        match kind {
            Kind::Cluster => Box::new(self.local_clusters.values()),
            _ => Box::new(std::iter::empty()),
        }
    }

    pub fn get(&self, kind: Kind, name: &str) -> Option<&Arc<Resource>> {
        match kind {
            Kind::Secret => self.secrets.get(name),
            Kind::Cluster => self
                .local_clusters
                .get(name)
                .or_else(|| self.shared_clusters.get(name)),
            Kind::Endpoint => self.shared_endpoints.get(name),
            Kind::Listener => self
                .listeners
                .get(name)
                .or_else(|| self.outbound_listeners.get(name)),
            Kind::Route => self.routes.get(name),
        }
    }

    /// Every resource of a kind (what a wildcard subscription receives).
    pub fn all(&self, kind: Kind) -> Box<dyn Iterator<Item = &Arc<Resource>> + '_> {
        match kind {
            Kind::Secret => Box::new(self.secrets.values()),
            Kind::Cluster => Box::new(
                self.shared_clusters
                    .values()
                    .chain(self.local_clusters.values()),
            ),
            Kind::Endpoint => Box::new(self.shared_endpoints.values()),
            // By name, as one map would list them, and each name once (the
            // proxy's own first, as `get` finds it).
            Kind::Listener => Box::new(
                self.outbound_listeners
                    .iter()
                    .merge_join_by(&self.listeners, |a, b| a.0.cmp(b.0))
                    .map(|both| both.reduce(|_, own| own).1),
            ),
            Kind::Route => Box::new(self.routes.values()),
        }
    }
}

/// The outbound side of the proxies of one egress scope.
#[derive(Debug)]
struct Outbound {
    clusters: Arc<Resources>,
    endpoints: Arc<Resources>,
    /// The capture listener and one listener per destination port
    /// ([`redirect_outbound_listener`]). Proxies' views share this map
    /// rather than copy it: with a listener per port, a copy per proxy and
    /// snapshot would cost every push work and memory that grow with the
    /// number of ports in the mesh.
    listeners: Arc<Resources>,
    /// The listeners with access logs, made when a proxy that logs asks.
    logged: OnceLock<Arc<Resources>>,
    /// The listeners of traced proxies, by access logging and how they are
    /// traced: made in each snapshot when a proxy of each first asks.
    traced: Mutex<HashMap<(bool, TracingKey), Arc<Resources>>>,
}

impl Outbound {
    fn new(clusters: Arc<Resources>, endpoints: Arc<Resources>, listeners: Arc<Resources>) -> Self {
        Outbound {
            clusters,
            endpoints,
            listeners,
            logged: OnceLock::new(),
            traced: Mutex::default(),
        }
    }

    /// The outbound listeners, or their access-logging variants (made
    /// once).
    fn listeners(&self, access_log: bool) -> &Arc<Resources> {
        if access_log {
            self.logged.get_or_init(|| {
                let logged = self
                    .listeners
                    .iter()
                    .map(|(name, l)| (name.clone(), telemetry::with_access_log(l)));
                Arc::new(logged.collect())
            })
        } else {
            &self.listeners
        }
    }

    /// The outbound listeners of a proxy that logs or not, and is traced
    /// as `tracing` or not.
    fn listeners_for(
        &self,
        access_log: bool,
        tracing: Option<&TracingKey>,
        cache: &TracedListeners,
    ) -> Arc<Resources> {
        let listeners = self.listeners(access_log);
        let Some(key) = tracing else {
            return listeners.clone();
        };
        lock(&self.traced)
            .entry((access_log, key.clone()))
            .or_insert_with(|| {
                let traced = listeners
                    .iter()
                    .map(|(name, l)| (name.clone(), cache.listener(l, key)));
                Arc::new(traced.collect())
            })
            .clone()
    }
}

/// `listener`, or its access-logging variant (made once, in `logged`).
fn listener_for(
    listener: &Arc<Resource>,
    logged: &OnceLock<Arc<Resource>>,
    access_log: bool,
) -> Arc<Resource> {
    if access_log {
        logged
            .get_or_init(|| telemetry::with_access_log(listener))
            .clone()
    } else {
        listener.clone()
    }
}

/// Route configurations are shared by the proxies of a namespace, an
/// interception mode and an egress scope (`None`: the whole mesh).
type RouteKey = (String, Interception, Option<Arc<Egress>>);

/// A redirect-mode pod's inbound side: its inbound clusters and listener.
/// It follows from the pod's service ports, their faults and the pod's mTLS
/// mode alone, so the pods behind a service share one (and, through
/// [`InboundCache::carry_over`], one across snapshots) instead of each
/// proxy's stream encoding its own on every snapshot.
#[derive(Debug)]
struct Inbound {
    clusters: Arc<Resources>,
    listener: Arc<Resource>,
    /// The listener with access logs, made when a proxy that logs asks.
    logged: OnceLock<Arc<Resource>>,
    /// Asked for since the snapshot was made: worth carrying over.
    used: std::sync::atomic::AtomicBool,
}

/// [`Inbound`] sides by shape: ports and mTLS mode, then faults (Envoy's
/// types, which compare but do not hash).
/// [`Inbound`] sides by shape: ports, then mTLS mode and faults (Envoy's
/// types, which compare but do not hash). Looked up by reference: a
/// stream's lookup allocates nothing.
#[derive(Debug, Default)]
struct InboundCache(HashMap<BTreeMap<u16, Protocol>, Vec<InboundVariant>>);

/// One shape's [`Inbound`] side for an mTLS mode and its faults.
type InboundVariant = (
    Option<MtlsMode>,
    inbound::PortFaults,
    authz::PortPolicies,
    Arc<Inbound>,
);

impl InboundCache {
    fn get_or_build(
        &mut self,
        ports: &BTreeMap<u16, Protocol>,
        faults: &inbound::PortFaults,
        mtls: Option<MtlsMode>,
        policies: &authz::PortPolicies,
    ) -> Arc<Inbound> {
        let found = self.0.get(ports).and_then(|variants| {
            variants
                .iter()
                .find(|(m, f, p, _)| *m == mtls && f == faults && p == policies)
                .map(|(_, _, _, side)| side.clone())
        });
        let side = match found {
            Some(side) => side,
            None => {
                let mut clusters: Resources = ports
                    .iter()
                    .map(|(&port, &protocol)| {
                        let name = inbound_cluster_name(port);
                        let cluster = inbound_cluster(&name, port, protocol);
                        (name.clone(), Resource::new(name, &cluster, vec![]))
                    })
                    .collect();
                clusters.insert(
                    INBOUND_PASSTHROUGH_CLUSTER.into(),
                    Resource::new(
                        INBOUND_PASSTHROUGH_CLUSTER.into(),
                        &clusters::inbound_passthrough_cluster(),
                        vec![],
                    ),
                );
                let side = Arc::new(Inbound {
                    clusters: Arc::new(clusters),
                    listener: redirect_inbound_listener(ports, faults, mtls, policies),
                    logged: OnceLock::new(),
                    used: Default::default(),
                });
                self.0.entry(ports.clone()).or_default().push((
                    mtls,
                    faults.clone(),
                    policies.clone(),
                    side.clone(),
                ));
                side
            }
        };
        side.used.store(true, std::sync::atomic::Ordering::Relaxed);
        side
    }

    /// The shapes the previous snapshot's proxies used, for the next one
    /// (what nobody asked for is dropped).
    fn carry_over(&self) -> InboundCache {
        let mut next = InboundCache::default();
        for (ports, variants) in &self.0 {
            let used: Vec<InboundVariant> = variants
                .iter()
                .filter(|(_, _, _, side)| side.used.load(std::sync::atomic::Ordering::Relaxed))
                .map(|(mtls, faults, policies, side)| {
                    let fresh = Inbound {
                        clusters: side.clusters.clone(),
                        listener: side.listener.clone(),
                        logged: side.logged.clone(),
                        used: Default::default(),
                    };
                    (*mtls, faults.clone(), policies.clone(), Arc::new(fresh))
                })
                .collect();
            if !used.is_empty() {
                next.0.insert(ports.clone(), used);
            }
        }
        next
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The translated mesh at one point in time.
#[derive(Debug)]
pub struct Snapshot {
    pub version: u64,
    /// Unique in the process (see [`ProxyView::snapshot_id`]).
    id: u64,
    pub mesh: Arc<Mesh>,
    /// The routing in force, and the annotation errors of this mesh.
    pub routing: Arc<MeshRouting>,
    /// Annotations in force that likely do not do what they say (see
    /// [`authz::plaintext_warnings`]).
    warnings: Vec<AnnotationError>,
    /// Every outbound cluster and load assignment of the mesh.
    clusters: Arc<Resources>,
    /// What proxies without an egress scope share.
    mesh_wide: Arc<Outbound>,
    /// The same per egress scope, built when a proxy of the scope asks.
    scoped: Mutex<HashMap<Arc<Egress>, Arc<Outbound>>>,
    /// Service ports each pod serves: (namespace, pod) → target port → protocol.
    inbound_ports: HashMap<(String, String), BTreeMap<u16, Protocol>>,
    /// The faults each pod's inbound ports inject (pods serving a service
    /// with a fault only).
    inbound_faults: inbound::Faults,
    /// The authorization each pod's inbound ports enforce (pods behind a
    /// service that does not allow everything only).
    inbound_policies: authz::Policies,
    routes: Mutex<HashMap<RouteKey, Arc<Resources>>>,
    /// The virtual hosts of `routes`, shared by caller namespaces.
    hosts: hosts::SharedHosts,
    options: TranslateOptions,
    /// Each service's outbound resources with what they were made from,
    /// for the next snapshot to reuse.
    entries: outbound::Entries,
    /// What changed since the previous snapshot.
    changes: Option<Arc<SharedChanges>>,
    /// Inbound sides of redirect-mode pods, shared by pods of one shape.
    inbound: Mutex<InboundCache>,
    /// Traced listeners and the collector's cluster, when tracing.
    traced: telemetry::TracedListeners,
}

/// Whether two meshes have the same services (endpoints aside).
fn same_services(a: &Mesh, b: &Mesh) -> bool {
    a.services.len() == b.services.len()
        && a.services
            .iter()
            .zip(&b.services)
            .all(|((ka, va), (kb, vb))| ka == kb && (Arc::ptr_eq(va, vb) || va == vb))
}

/// Whether the endpoints of every headless service are the same: the
/// outbound listeners have a filter chain per ready pod IP of each.
fn same_headless_endpoints(a: &Mesh, b: &Mesh) -> bool {
    b.services.values().filter(|s| s.is_headless()).all(|s| {
        match (a.endpoints.get(&s.key), b.endpoints.get(&s.key)) {
            (Some(x), Some(y)) => Arc::ptr_eq(x, y) || x == y,
            (None, None) => true,
            _ => false,
        }
    })
}

impl Snapshot {
    /// Translates `mesh` with the routing discovery checked for it.
    pub fn new(version: u64, mesh: Arc<Mesh>, options: TranslateOptions) -> Self {
        Self::build(version, mesh, options, None)
    }

    /// The snapshot after `previous`: what did not change is reused
    /// rather than translated and encoded again.
    pub fn next(
        version: u64,
        mesh: Arc<Mesh>,
        options: TranslateOptions,
        previous: &Snapshot,
    ) -> Self {
        Self::build(version, mesh, options, Some(previous))
    }

    fn build(
        version: u64,
        mesh: Arc<Mesh>,
        options: TranslateOptions,
        previous: Option<&Snapshot>,
    ) -> Self {
        let routing = mesh.routing.clone();
        let outbound::Translated {
            entries,
            mut clusters,
            endpoints,
        } = outbound::translate(&mesh, &routing, &options, previous.map(|p| &p.entries));
        let mut inbound_ports: HashMap<(String, String), BTreeMap<u16, Protocol>> = HashMap::new();
        for svc in mesh.services.values() {
            let eps = mesh.endpoints_of(&svc.key);
            for port in &svc.ports {
                for ep in eps {
                    if let (Some(pod), Some(target)) = (&ep.pod, ep.port_for(port)) {
                        inbound_ports
                            .entry((svc.key.namespace.clone(), pod.clone()))
                            .or_default()
                            .entry(target)
                            // Two services targeting one port: HTTP wins, so
                            // HTTP callers keep L7 handling.
                            .and_modify(|p| {
                                if !p.is_http() {
                                    *p = port.protocol
                                }
                            })
                            .or_insert(port.protocol);
                    }
                }
            }
        }
        let passthrough = match previous {
            Some(p) => p.clusters[PASSTHROUGH_CLUSTER].clone(),
            None => Resource::new(PASSTHROUGH_CLUSTER.into(), &passthrough_cluster(), vec![]),
        };
        clusters.insert(PASSTHROUGH_CLUSTER.into(), passthrough);
        let clusters = Arc::new(clusters);
        let endpoints = Arc::new(endpoints);
        // Listeners, routes and egress scopes follow from the services and
        // their routing alone: when neither changed (endpoints did, say),
        // they carry over as they are, and proxies can be told precisely
        // which clusters and load assignments changed.
        let same_structure = previous.filter(|p| {
            p.options
                .mtls
                .as_ref()
                .map(|m| (&m.trust_domain, m.default_mode))
                == options
                    .mtls
                    .as_ref()
                    .map(|m| (&m.trust_domain, m.default_mode))
                && same_services(&p.mesh, &mesh)
                && same_headless_endpoints(&p.mesh, &mesh)
                && outbound::same_headless_identities(&p.entries, &entries, &mesh)
                && p.routing.same_routes(&routing)
                && gateway::same_routes(&p.mesh.routes, &mesh.routes)
        });
        let listeners = match same_structure {
            Some(p) => p.mesh_wide.listeners.clone(),
            None => redirect_outbound_listener(&mesh, &entries, &clusters, |_| true),
        };
        let mesh_wide = Arc::new(Outbound {
            logged: match same_structure {
                Some(p) => p.mesh_wide.logged.clone(),
                None => OnceLock::new(),
            },
            ..Outbound::new(clusters.clone(), endpoints.clone(), listeners)
        });
        let (scoped, routes) = match same_structure {
            Some(p) => {
                let scoped = lock(&p.scoped)
                    .iter()
                    .map(|(scope, old)| {
                        let pick = |all: &Resources, old: &Resources| -> Resources {
                            old.keys()
                                .filter_map(|n| Some((n.clone(), all.get(n)?.clone())))
                                .collect()
                        };
                        let outbound = Outbound {
                            logged: old.logged.clone(),
                            ..Outbound::new(
                                Arc::new(pick(&clusters, &old.clusters)),
                                Arc::new(pick(&endpoints, &old.endpoints)),
                                old.listeners.clone(),
                            )
                        };
                        (scope.clone(), Arc::new(outbound))
                    })
                    .collect();
                (scoped, lock(&p.routes).clone())
            }
            None => (HashMap::new(), HashMap::new()),
        };
        // Proxies are told which clusters and load assignments changed,
        // whatever else did: most of what a proxy holds is those, and a
        // new service should not cost every proxy a walk over the mesh.
        let changes = previous.map(|p| {
            let earlier = p
                .changes
                .clone()
                .filter(|c| c.depth + 1 < outbound::CHANGE_HISTORY);
            Arc::new(SharedChanges {
                since: p.id,
                clusters: outbound::differences(&p.clusters, &clusters),
                endpoints: outbound::differences(&p.mesh_wide.endpoints, &endpoints),
                structural: same_structure.is_none(),
                depth: earlier.as_ref().map_or(0, |c| c.depth + 1),
                earlier,
            })
        });
        let inbound_faults = inbound::faults(&mesh, &routing);
        let trust_domain = options.mtls.as_ref().map(|m| m.trust_domain.as_str());
        let inbound_policies = authz::policies(&mesh, options.authorization, trust_domain);
        let warnings =
            authz::plaintext_warnings(&mesh, options.mtls.as_ref().map(|m| m.default_mode));
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Snapshot {
            version,
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            mesh,
            routing,
            warnings,
            clusters,
            mesh_wide,
            scoped: Mutex::new(scoped),
            inbound_ports,
            inbound_faults,
            inbound_policies,
            routes: Mutex::new(routes),
            hosts: hosts::SharedHosts::default(),
            options,
            entries,
            changes,
            inbound: Mutex::new(
                previous
                    .map(|p| lock(&p.inbound).carry_over())
                    .unwrap_or_default(),
            ),
            traced: previous.map(|p| p.traced.carry_over()).unwrap_or_default(),
        }
    }

    /// What `workload`'s sidecar enforces on its inbound side, for the
    /// debugging commands.
    pub fn authorization_of(&self, workload: &Workload) -> WorkloadAuthorization {
        authz::workload_authorization(
            &self.mesh,
            self.options.authorization,
            &self.inbound_policies,
            &workload.namespace,
            &workload.name,
        )
    }

    /// Every annotation problem of this mesh, sorted, each once: the
    /// values refused (their objects' last good values stay) and the
    /// warnings about values in force.
    pub fn problems(&self) -> Vec<AnnotationError> {
        let mut all = self.routing.errors.clone();
        all.extend(self.warnings.iter().cloned());
        all.sort();
        all.dedup();
        all
    }

    /// The outbound side for an egress scope (`None`: the whole mesh).
    fn outbound(&self, scope: Option<&Arc<Egress>>) -> Arc<Outbound> {
        let Some(scope) = scope else {
            return self.mesh_wide.clone();
        };
        lock(&self.scoped)
            .entry(scope.clone())
            .or_insert_with(|| Arc::new(self.scope(scope)))
            .clone()
    }

    /// The clusters and endpoints of the services in scope and of the
    /// services their routes send to (split targets, route backends, on
    /// the same ports; Gateway API backends and mirrors, on theirs), and a
    /// listener for the services in scope.
    fn scope(&self, egress: &Egress) -> Outbound {
        let mut names = BTreeSet::from([PASSTHROUGH_CLUSTER.to_string()]);
        for svc in self
            .mesh
            .services
            .values()
            .filter(|s| egress.allows(&s.key))
        {
            names.extend(svc.ports.iter().map(|p| svc.cluster_name(p.port)));
            if svc.is_headless() {
                // Picked below only where it exists.
                names.extend(
                    svc.ports
                        .iter()
                        .map(|p| outbound::plaintext_cluster_name(svc, p.port)),
                );
            }
            for target in self.routing.service(&svc.key).targets() {
                let key = ServiceKey::new(svc.key.namespace.clone(), target);
                if let Some(target) = self.mesh.services.get(&key) {
                    names.extend(
                        target
                            .ports
                            .iter()
                            .filter(|p| svc.ports.iter().any(|q| q.port == p.port))
                            .map(|p| target.cluster_name(p.port)),
                    );
                }
            }
            // An ExternalName aliasing a mesh service is routed to it.
            if let Some(target) = routing::aliased_service(&self.mesh, svc) {
                names.extend(svc.ports.iter().map(|p| target.cluster_name(p.port)));
            }
            // Gateway API routes send to backends anywhere in the mesh.
            names.extend(self.mesh.routes.target_clusters(&svc.key));
        }
        let pick = |all: &Resources| -> Resources {
            names
                .iter()
                .filter_map(|n| Some((n.clone(), all.get(n)?.clone())))
                .collect()
        };
        Outbound::new(
            Arc::new(pick(&self.mesh_wide.clusters)),
            Arc::new(pick(&self.mesh_wide.endpoints)),
            redirect_outbound_listener(&self.mesh, &self.entries, &self.clusters, |k| {
                egress.allows(k)
            }),
        )
    }

    /// The configuration for the proxy with this node id, or `None` while
    /// the mesh does not know the workload.
    /// Which snapshot this is: unique in the process.
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn proxy(&self, node_id: &str) -> Option<ProxyView> {
        let workload = self.mesh.workloads.get(node_id)?.clone();
        let scope = self.routing.egress(node_id);
        let outbound = self.outbound(scope);
        let inbound = self
            .inbound_ports
            .get(&(workload.namespace.clone(), workload.name.clone()));
        let empty = BTreeMap::new();
        let inbound = inbound.unwrap_or(&empty);
        let no_faults = inbound::PortFaults::new();
        let faults = self
            .inbound_faults
            .get(&(workload.namespace.clone(), workload.name.clone()))
            .unwrap_or(&no_faults);
        let policies = self
            .inbound_policies
            .workload(&workload.namespace, &workload.name);

        let mut listeners = Resources::new();
        let mtls = self
            .options
            .mtls
            .as_ref()
            .map(|m| self.mesh.mtls_mode(&workload, m.default_mode));
        let access_log = telemetry::access_log_for(&workload, &self.options.telemetry);
        let tracing = telemetry::tracing_of(&workload, &self.options.telemetry);
        // Without capture, a proxy's listeners are all its own.
        let outbound_listeners = match workload.interception {
            Interception::Redirect => {
                outbound.listeners_for(access_log, tracing.as_ref(), &self.traced)
            }
            Interception::None => Arc::default(),
        };
        let local_clusters = match workload.interception {
            Interception::Redirect => {
                let side = lock(&self.inbound).get_or_build(inbound, faults, mtls, policies);
                let inb = listener_for(&side.listener, &side.logged, access_log);
                listeners.insert(INBOUND_LISTENER.into(), inb);
                side.clusters.clone()
            }
            Interception::None => {
                let mut local_clusters = Resources::new();
                for (&port, &protocol) in inbound {
                    let name = inbound_cluster_name(port);
                    let cluster = inbound_cluster(&name, port, protocol);
                    local_clusters.insert(name.clone(), Resource::new(name, &cluster, vec![]));
                }
                if let Some(ip) = workload.ip {
                    let logged = |l: Arc<Resource>| {
                        if access_log {
                            telemetry::with_access_log(&l)
                        } else {
                            l
                        }
                    };
                    let l = logged(explicit_outbound_listener(ip));
                    listeners.insert(OUTBOUND_LISTENER.into(), l);
                    for (&port, &protocol) in inbound {
                        let faults = faults.get(&port).map_or(&[][..], Vec::as_slice);
                        let policies = policies.port(port);
                        let l =
                            explicit_inbound_listener(ip, port, protocol, faults, mtls, policies);
                        let l = logged(l);
                        listeners.insert(l.name.clone(), l);
                    }
                }
                Arc::new(local_clusters)
            }
        };
        let (listeners, local_clusters) = match &tracing {
            Some(key) => telemetry::with_tracing(
                &self.traced,
                key,
                &self.options.telemetry,
                listeners,
                local_clusters,
            ),
            None => (listeners, local_clusters),
        };
        let routes = self.routes(&workload.namespace, workload.interception, scope);
        Some(ProxyView {
            workload,
            shared_clusters: outbound.clusters.clone(),
            shared_endpoints: outbound.endpoints.clone(),
            local_clusters,
            outbound_listeners,
            listeners,
            routes,
            secrets: Resources::new(),
            version: self.version,
            snapshot_id: self.id,
            changes: self.changes.clone(),
            scope_id: scope.map_or(0, |e| {
                let mut hasher = std::hash::DefaultHasher::new();
                std::hash::Hash::hash(&**e, &mut hasher);
                hasher.finish() | 1
            }),
        })
    }

    fn routes(
        &self,
        namespace: &str,
        mode: Interception,
        scope: Option<&Arc<Egress>>,
    ) -> Arc<Resources> {
        let key = (namespace.to_string(), mode, scope.cloned());
        lock(&self.routes)
            .entry(key)
            .or_insert_with(|| {
                let visible = |k: &ServiceKey| scope.is_none_or(|e| e.allows(k));
                Arc::new(outbound_routes(self, namespace, mode, visible))
            })
            .clone()
    }
}

fn original_dst_filter() -> ListenerFilter {
    ListenerFilter {
        name: "envoy.filters.listener.original_dst".into(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(to_any(
            &OriginalDst::default(),
        ))),
        ..Default::default()
    }
}

fn tcp_proxy_filter(stat_prefix: &str, cluster: &str) -> Filter {
    tcp_proxy_filter_logged(stat_prefix, cluster, Vec::new())
}

fn tcp_proxy_filter_logged(stat_prefix: &str, cluster: &str, access_log: Vec<AccessLog>) -> Filter {
    let proxy = TcpProxy {
        stat_prefix: stat_prefix.to_string(),
        cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(cluster.to_string())),
        access_log,
        ..Default::default()
    };
    Filter {
        name: "envoy.filters.network.tcp_proxy".into(),
        config_type: Some(filter::ConfigType::TypedConfig(to_any(&proxy))),
    }
}

/// What an HTTP connection manager does with `x-forwarded-client-cert`.
#[derive(Clone, Copy)]
enum ClientCert {
    /// Remove whatever the client sent (Envoy's default).
    Strip,
    /// Replace it with the verified peer's SPIFFE ID (inbound mTLS).
    SetFromPeer,
}

/// Which HTTP filters a connection manager runs before the router.
#[derive(Clone, Copy, PartialEq)]
enum Side {
    Outbound,
    /// The serving side; `faults`: the fault filter, configured per virtual
    /// host ([`inbound`]), runs before the router.
    Inbound {
        faults: bool,
    },
}

fn http_filter(
    stat_prefix: &str,
    routes: http_connection_manager::RouteSpecifier,
    client_cert: ClientCert,
    side: Side,
) -> Filter {
    use http_connection_manager::{ForwardClientCertDetails, SetCurrentClientCertDetails};
    let router = HttpFilter {
        name: "envoy.filters.http.router".into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(to_any(
            &Router::default(),
        ))),
        ..Default::default()
    };
    let (forward, set_current) = match client_cert {
        ClientCert::Strip => (ForwardClientCertDetails::Sanitize, None),
        ClientCert::SetFromPeer => (
            ForwardClientCertDetails::SanitizeSet,
            Some(SetCurrentClientCertDetails {
                uri: true,
                ..Default::default()
            }),
        ),
    };
    let mut http_filters = Vec::with_capacity(2);
    if side == (Side::Inbound { faults: true }) {
        http_filters.push(routing::fault_filter());
    }
    http_filters.push(router);
    let hcm = HttpConnectionManager {
        stat_prefix: stat_prefix.to_string(),
        codec_type: http_connection_manager::CodecType::Auto as i32,
        http_filters,
        route_specifier: Some(routes),
        // The client's address as seen by the app is the caller's, not the
        // sidecar's: trust nothing a caller put in X-Forwarded-For.
        use_remote_address: Some(BoolValue { value: false }),
        normalize_path: Some(BoolValue { value: true }),
        merge_slashes: true,
        // Inbound, `%2F` and `%5C` are decoded before authorization's path
        // rules see the path (and the app gets the same path), so
        // `/admin%2Fusers` cannot pass a rule on `/admin/*`.
        path_with_escaped_slashes_action: match side {
            Side::Inbound { .. } => {
                http_connection_manager::PathWithEscapedSlashesAction::UnescapeAndForward as i32
            }
            _ => 0,
        },
        // A caller cannot claim an identity by sending the header itself.
        forward_client_cert_details: forward as i32,
        set_current_client_cert_details: set_current,
        // The serving side counts its requests by caller.
        access_log: match side {
            Side::Inbound { .. } => vec![telemetry::inbound_by_caller(true)],
            Side::Outbound => Vec::new(),
        },
        ..Default::default()
    };
    Filter {
        name: "envoy.filters.network.http_connection_manager".into(),
        config_type: Some(filter::ConfigType::TypedConfig(to_any(&hcm))),
    }
}

fn rds(route_config_name: String) -> http_connection_manager::RouteSpecifier {
    http_connection_manager::RouteSpecifier::Rds(Rds {
        config_source: ads(),
        route_config_name,
    })
}

fn listener(
    name: &str,
    address: Address,
    direction: TrafficDirection,
    capture: bool,
    filter_chains: Vec<FilterChain>,
    default_filter_chain: Option<FilterChain>,
) -> Listener {
    let mut listener_filters = Vec::new();
    if capture {
        listener_filters.push(original_dst_filter());
    }
    // PERMISSIVE chains match on TLS or not, which the inspector decides.
    let inspects_tls = filter_chains.iter().any(|c| {
        c.filter_chain_match
            .as_ref()
            .is_some_and(|m| !m.transport_protocol.is_empty())
    });
    if inspects_tls {
        listener_filters.push(ListenerFilter {
            name: "envoy.filters.listener.tls_inspector".into(),
            config_type: Some(listener_filter::ConfigType::TypedConfig(to_any(
                &TlsInspector::default(),
            ))),
            ..Default::default()
        });
    }
    Listener {
        name: name.to_string(),
        address: Some(address),
        traffic_direction: direction as i32,
        listener_filters,
        // A server-speaks-first protocol sends nothing to inspect: after the
        // timeout, treat the connection as plaintext rather than drop it.
        continue_on_listener_filters_timeout: inspects_tls,
        filter_chains,
        default_filter_chain,
        ..Default::default()
    }
}

fn passthrough_chain(stat_prefix: &str, cluster: &str) -> FilterChain {
    FilterChain {
        name: cluster.into(),
        filters: vec![tcp_proxy_filter(stat_prefix, cluster)],
        ..Default::default()
    }
}

fn cidr(ip: IpAddr) -> CidrRange {
    CidrRange {
        address_prefix: ip.to_string(),
        prefix_len: Some(UInt32Value {
            value: if ip.is_ipv4() { 32 } else { 128 },
        }),
    }
}

/// The capture listeners redirected proxies share (all of them, or those
/// of an egress scope): each `visible` service VIP and port gets a filter
/// chain; the HTTP ports of a number and a namespace share one chain and
/// one route configuration.
///
/// The chains of each destination port are a listener of their own,
/// `0.0.0.0_<port>`, bound to no socket: the capture listener (`outbound`,
/// 15001) hands each connection to the listener of its original
/// destination's port (`use_original_dst`), and keeps only the
/// passthrough. So a Service added on port 80 changes the port-80 listener
/// alone, and a Delta proxy is sent that one, not the chains of every port
/// of the mesh (at 1,000 services, ~23 of ~55 KiB; see BENCHMARKS.md;
/// State of the World sends every listener whenever one changes). Each
/// port listener passes what none of its chains matches through, as the
/// capture listener does. Chains on the sidecar's own ports stay in the
/// capture listener: a listener of that address would collide with the
/// sidecar's. (Envoy would hand connections to 15006, 15021 and 15090 to
/// the sidecar's own listeners of those ports, so the capture rules let
/// them leave directly: `meshd_injector::capture`.) An IPv6 destination
/// is handed to a `[::]` listener, which there is none of: IPv6 capture
/// will need them.
///
/// - ExternalName services have no VIP: their clients connect to whatever
///   the external name resolves to. An HTTP port of one makes the HTTP
///   chain of that port number match every destination (the route
///   configuration tells services apart by Host, and sends unknown Hosts
///   on through the passthrough), so all traffic to that port number is
///   parsed as HTTP. Their TCP ports cannot be told apart from any other
///   destination and leave through the passthrough, outside the mesh.
/// - Headless services have no VIP either: their clients connect to pod
///   IPs. Each ready endpoint's (IP, target port) gets a TCP chain to the
///   service port's original-destination cluster, which carries mTLS when
///   the pods take it. L7 routing does not apply to them.
/// - On a port number where a Gateway API route attaches to a Service,
///   every Service's VIPs get a chain of their own: calls are routed by the
///   Service called, not by Host ([`gateway`]). The Services a route
///   attaches to have their own route configuration over RDS (it differs
///   per caller namespace); the others carry their annotation routes inline
///   (the same for every caller).
fn redirect_outbound_listener(
    mesh: &Mesh,
    entries: &outbound::Entries,
    clusters: &Resources,
    visible: impl Fn(&ServiceKey) -> bool,
) -> Arc<Resources> {
    let routed_ports: BTreeSet<u16> = mesh
        .services
        .values()
        .filter(|s| visible(&s.key) && s.vips().next().is_some())
        .flat_map(|s| {
            s.ports
                .iter()
                .filter(|p| p.protocol.is_http() && mesh.routes.attaches(&s.key, p.port))
                .map(|p| p.port)
        })
        .collect();
    // The VIPs of the HTTP Service ports routed by Host, by port and the
    // Services' namespace: one chain (and route configuration) each.
    let mut http_vips: BTreeMap<(u16, &str), Vec<IpAddr>> = BTreeMap::new();
    let mut http_any_destination = BTreeSet::new();
    let mut pod_chains: BTreeMap<(IpAddr, u16), String> = BTreeMap::new();
    let mut vip_destinations = HashSet::new();
    let mut chains = PortChains::default();
    for svc in mesh.services.values().filter(|s| visible(&s.key)) {
        if svc.external_name.is_some() {
            http_any_destination.extend(
                svc.ports
                    .iter()
                    .filter(|p| p.protocol.is_http())
                    .map(|p| p.port),
            );
            continue;
        }
        if svc.is_headless() {
            for port in &svc.ports {
                for (i, ep) in mesh.endpoints_of(&svc.key).iter().enumerate() {
                    if let (true, Some(target)) = (ep.conditions.ready, ep.port_for(port)) {
                        // A pod behind two headless services on one target
                        // port: the first service (by name) takes the chain.
                        pod_chains.entry((ep.address, target)).or_insert_with(|| {
                            if outbound::reached_in_plaintext(entries, &svc.key, i) {
                                outbound::plaintext_cluster_name(svc, port.port)
                            } else {
                                svc.cluster_name(port.port)
                            }
                        });
                    }
                }
            }
            continue;
        }
        // Every cluster IP: a dual-stack service has one per family.
        let vips: Vec<IpAddr> = svc.vips().collect();
        if vips.is_empty() {
            continue;
        }
        for port in &svc.ports {
            vip_destinations.extend(vips.iter().map(|&vip| (vip, port.port)));
            if port.protocol.is_http() && mesh.routes.attaches(&svc.key, port.port) {
                let config = gateway::route_config_name(&svc.key, port.port);
                chains.add(port.port, vip_chain(svc, port.port, &vips, rds(config)), []);
            } else if port.protocol.is_http() && routed_ports.contains(&port.port) {
                let routes = routing::service_routes(mesh, &mesh.routing, clusters, svc, port.port);
                let name = gateway::route_config_name(&svc.key, port.port);
                let config = RouteConfiguration {
                    name: name.clone(),
                    virtual_hosts: vec![VirtualHost {
                        name,
                        domains: vec!["*".into()],
                        routes: routes.routes,
                        ..Default::default()
                    }],
                    ..Default::default()
                };
                let inline = http_connection_manager::RouteSpecifier::RouteConfig(config);
                let chain = vip_chain(svc, port.port, &vips, inline);
                chains.add(port.port, chain, routes.clusters);
            } else if port.protocol.is_http() {
                http_vips
                    .entry((port.port, svc.key.namespace.as_str()))
                    .or_default()
                    .extend(&vips);
            } else {
                let cluster = svc.cluster_name(port.port);
                let chain = FilterChain {
                    name: cluster.clone(),
                    filter_chain_match: Some(FilterChainMatch {
                        destination_port: Some(UInt32Value {
                            value: port.port.into(),
                        }),
                        prefix_ranges: vips.iter().copied().map(cidr).collect(),
                        ..Default::default()
                    }),
                    filters: vec![tcp_proxy_filter(&cluster, &cluster)],
                    ..Default::default()
                };
                chains.add(port.port, chain, [cluster]);
            }
        }
    }
    for ((ip, port), cluster) in pod_chains {
        // Envoy refuses two chains with one match: a VIP chain keeps it.
        if vip_destinations.contains(&(ip, port)) {
            continue;
        }
        let chain = FilterChain {
            name: format!("{cluster}|{}", std::net::SocketAddr::new(ip, port)),
            filter_chain_match: Some(FilterChainMatch {
                destination_port: Some(UInt32Value { value: port.into() }),
                prefix_ranges: vec![cidr(ip)],
                ..Default::default()
            }),
            filters: vec![tcp_proxy_filter(&cluster, &cluster)],
            ..Default::default()
        };
        chains.add(port, chain, [cluster]);
    }
    let http_chain = |port: u16, namespace: Option<&str>, vips: Vec<IpAddr>| FilterChain {
        name: match namespace {
            Some(namespace) => format!("outbound|{port}|http|{namespace}"),
            None => format!("outbound|{port}|http"),
        },
        filter_chain_match: Some(FilterChainMatch {
            destination_port: Some(UInt32Value { value: port.into() }),
            prefix_ranges: vips.into_iter().map(cidr).collect(),
            ..Default::default()
        }),
        filters: vec![http_filter(
            // One prefix for the port's chains: its statistics.
            &format!("outbound_{port}"),
            rds(host_routed_config_name(port, namespace)),
            ClientCert::Strip,
            Side::Outbound,
        )],
        ..Default::default()
    };
    for ((port, namespace), vips) in http_vips {
        chains.add(port, http_chain(port, Some(namespace), vips), []);
    }
    // An ExternalName's callers connect to whatever its name resolves to:
    // its port's chain matches every destination the VIP chains do not.
    for port in http_any_destination {
        chains.add(port, http_chain(port, None, Vec::new()), []);
    }
    chains.into_listeners()
}

/// The outbound filter chains by destination port, with the clusters each
/// port's chains route to.
#[derive(Default)]
struct PortChains(BTreeMap<u16, (Vec<FilterChain>, BTreeSet<String>)>);

impl PortChains {
    fn add(&mut self, port: u16, chain: FilterChain, refs: impl IntoIterator<Item = String>) {
        let (chains, port_refs) = self.0.entry(port).or_default();
        chains.push(chain);
        port_refs.extend(refs);
    }

    /// The capture listener and one listener per destination port (see
    /// [`redirect_outbound_listener`]), by name.
    fn into_listeners(self) -> Arc<Resources> {
        let passthrough = || Some(passthrough_chain(PASSTHROUGH_CLUSTER, PASSTHROUGH_CLUSTER));
        let mut capture_chains = Vec::new();
        let mut capture_refs = BTreeSet::from([PASSTHROUGH_CLUSTER.to_string()]);
        let mut listeners = Resources::new();
        for (port, (chains, mut refs)) in self.0 {
            if ports::ALL.contains(&port) {
                capture_chains.extend(chains);
                capture_refs.append(&mut refs);
                continue;
            }
            refs.insert(PASSTHROUGH_CLUSTER.to_string());
            let name = outbound_port_listener_name(port);
            let mut l = listener(
                &name,
                socket_address(IpAddr::from([0, 0, 0, 0]), port),
                TrafficDirection::Outbound,
                false,
                chains,
                passthrough(),
            );
            // Reached only through the capture listener's hand-off.
            l.bind_to_port = Some(BoolValue { value: false });
            let l = Resource::new(name.clone(), &l, refs.into_iter().collect());
            listeners.insert(name, l);
        }
        let mut capture = listener(
            OUTBOUND_LISTENER,
            socket_address(IpAddr::from([0, 0, 0, 0]), ports::OUTBOUND),
            TrafficDirection::Outbound,
            true,
            capture_chains,
            passthrough(),
        );
        capture.use_original_dst = Some(BoolValue { value: true });
        let capture = Resource::new(
            OUTBOUND_LISTENER.into(),
            &capture,
            capture_refs.into_iter().collect(),
        );
        listeners.insert(OUTBOUND_LISTENER.into(), capture);
        Arc::new(listeners)
    }
}

/// The name of the outbound listener of destination port `port`.
fn outbound_port_listener_name(port: u16) -> String {
    format!("{OUTBOUND_PORT_LISTENER_PREFIX}{port}")
}

/// The route configuration of the outbound chain for the HTTP
/// Service ports numbered `port` of `namespace` that are routed by Host:
/// `<port>|<namespace>`, matched on those Services' VIPs; `None` for every
/// other destination (`<port>`, when an ExternalName Service is on the
/// port; its virtual host is in each namespace's configuration too). One per
/// destination namespace rather than one per port, so that a Service added
/// or changed re-sends every caller the virtual hosts of its namespace
/// only, not of the whole mesh; a Host naming a Service of another
/// namespace than the VIP called goes where it was sent.
fn host_routed_config_name(port: u16, namespace: Option<&str>) -> String {
    match namespace {
        Some(namespace) => format!("{port}|{namespace}"),
        None => port.to_string(),
    }
}

/// The filter chain of one Service port's VIPs, with a route configuration
/// of its own (on a port number where Gateway API routes are in use).
fn vip_chain(
    svc: &crate::model::Service,
    port: u16,
    vips: &[IpAddr],
    routes: http_connection_manager::RouteSpecifier,
) -> FilterChain {
    FilterChain {
        name: gateway::chain_name(&svc.key, port),
        filter_chain_match: Some(FilterChainMatch {
            destination_port: Some(UInt32Value { value: port.into() }),
            prefix_ranges: vips.iter().copied().map(cidr).collect(),
            ..Default::default()
        }),
        filters: vec![http_filter(
            // The port's statistics, as the shared chain's.
            &format!("outbound_{port}"),
            routes,
            ClientCert::Strip,
            Side::Outbound,
        )],
        ..Default::default()
    }
}

/// Without capture, the application sends HTTP to 15001 as to any forward
/// proxy (`http_proxy=…`), and routing goes by the Host it names.
fn explicit_outbound_listener(ip: IpAddr) -> Arc<Resource> {
    let chain = FilterChain {
        filters: vec![http_filter(
            "outbound_http_proxy",
            rds(HTTP_PROXY_ROUTE.into()),
            ClientCert::Strip,
            Side::Outbound,
        )],
        ..Default::default()
    };
    let l = listener(
        OUTBOUND_LISTENER,
        socket_address(ip, ports::OUTBOUND),
        TrafficDirection::Outbound,
        false,
        vec![chain],
        None,
    );
    Resource::new(OUTBOUND_LISTENER.into(), &l, vec![])
}

/// `faults`: the virtual hosts of the services whose faults this port
/// injects ([`inbound`]); none for most ports.
fn inbound_filters(
    port: u16,
    protocol: Protocol,
    client_cert: ClientCert,
    faults: &[VirtualHost],
) -> Vec<Filter> {
    let cluster = inbound_cluster_name(port);
    // One prefix per kind of chain, so the proxy's metrics tell mTLS
    // callers from plaintext ones (`connection_security`).
    let security = match client_cert {
        ClientCert::SetFromPeer => ConnectionSecurity::Mtls,
        ClientCert::Strip => ConnectionSecurity::Plaintext,
    };
    let stat_prefix = inbound_stat_prefix(port, security);
    let filter = if protocol.is_http() {
        let mut virtual_hosts = faults.to_vec();
        virtual_hosts.push(VirtualHost {
            name: format!("inbound|http|{port}"),
            domains: vec!["*".into()],
            routes: vec![route_to(&cluster)],
            ..Default::default()
        });
        let route = RouteConfiguration {
            name: format!("inbound|{port}"),
            virtual_hosts,
            ..Default::default()
        };
        http_filter(
            &stat_prefix,
            http_connection_manager::RouteSpecifier::RouteConfig(route),
            client_cert,
            Side::Inbound {
                faults: !faults.is_empty(),
            },
        )
    } else {
        tcp_proxy_filter_logged(
            &stat_prefix,
            &cluster,
            vec![telemetry::inbound_by_caller(false)],
        )
    };
    vec![filter]
}

/// The filter chains serving one inbound port under an mTLS mode (`None`:
/// the control plane has no CA, plaintext only). `port_match` restricts
/// them to the port on a shared capture listener.
fn inbound_chains(
    port: u16,
    protocol: Protocol,
    faults: &[VirtualHost],
    mtls: Option<MtlsMode>,
    port_match: bool,
    policies: &[Arc<authz::Enforced>],
) -> Vec<FilterChain> {
    let name = inbound_cluster_name(port);
    let chain_match = |transport_protocol: &str| {
        let m = FilterChainMatch {
            destination_port: port_match.then_some(UInt32Value { value: port.into() }),
            transport_protocol: transport_protocol.to_string(),
            ..Default::default()
        };
        (m != FilterChainMatch::default()).then_some(m)
    };
    let tls = |transport_protocol: &str| FilterChain {
        name: format!("{name}tls"),
        filter_chain_match: chain_match(transport_protocol),
        filters: authz::guard(
            inbound_filters(port, protocol, ClientCert::SetFromPeer, faults),
            policies,
        ),
        transport_socket: Some(tls::downstream(protocol)),
        ..Default::default()
    };
    let plaintext = |transport_protocol: &str| FilterChain {
        name: format!("{name}plaintext"),
        filter_chain_match: chain_match(transport_protocol),
        filters: authz::guard(
            inbound_filters(port, protocol, ClientCert::Strip, faults),
            policies,
        ),
        ..Default::default()
    };
    match mtls {
        None | Some(MtlsMode::Disable) => vec![plaintext("")],
        Some(MtlsMode::Strict) => vec![tls("")],
        Some(MtlsMode::Permissive) => vec![tls("tls"), plaintext("raw_buffer")],
    }
}

fn redirect_inbound_listener(
    inbound: &BTreeMap<u16, Protocol>,
    faults: &inbound::PortFaults,
    mtls: Option<MtlsMode>,
    policies: &authz::PortPolicies,
) -> Arc<Resource> {
    let mut refs = vec![INBOUND_PASSTHROUGH_CLUSTER.to_string()];
    let mut chains = Vec::new();
    for (&port, &protocol) in inbound {
        refs.push(inbound_cluster_name(port));
        let faults = faults.get(&port).map_or(&[][..], Vec::as_slice);
        let enforced = policies.port(port);
        chains.extend(inbound_chains(port, protocol, faults, mtls, true, enforced));
    }
    // Ports no Service declares: closed when the pod's policies say so.
    let catch_all = authz::guard_undeclared(
        passthrough_chain(INBOUND_PASSTHROUGH, INBOUND_PASSTHROUGH_CLUSTER),
        policies.undeclared(),
        INBOUND_PASSTHROUGH,
    );
    let l = listener(
        INBOUND_LISTENER,
        socket_address(IpAddr::from([0, 0, 0, 0]), ports::INBOUND),
        TrafficDirection::Inbound,
        true,
        chains,
        Some(catch_all),
    );
    Resource::new(INBOUND_LISTENER.into(), &l, refs)
}

/// The stat prefix of the inbound catch-all chain (and its RBAC filter's).
const INBOUND_PASSTHROUGH: &str = "InboundPassthrough";

fn explicit_inbound_listener(
    ip: IpAddr,
    port: u16,
    protocol: Protocol,
    faults: &[VirtualHost],
    mtls: Option<MtlsMode>,
    policies: &[Arc<authz::Enforced>],
) -> Arc<Resource> {
    let name = format!("inbound|{port}");
    let l = listener(
        &name,
        socket_address(ip, port),
        TrafficDirection::Inbound,
        false,
        inbound_chains(port, protocol, faults, mtls, false, policies),
        None,
    );
    Resource::new(name, &l, vec![inbound_cluster_name(port)])
}

fn outbound_routes(
    snapshot: &Snapshot,
    namespace: &str,
    mode: Interception,
    visible: impl Fn(&ServiceKey) -> bool,
) -> Resources {
    let mut by_config: BTreeMap<String, Vec<Arc<SharedHost>>> = BTreeMap::new();
    // Configurations of Service ports with their own chain (a Gateway API
    // route attaches): one virtual host, no passthrough.
    let mut own: BTreeSet<String> = BTreeSet::new();
    // Configurations with a weighted cluster for a backend that did not
    // resolve (it names no cluster).
    let mut unvalidated: BTreeSet<String> = BTreeSet::new();
    // With capture: the port of each configuration routed by Host, and the
    // ExternalName Services' virtual hosts per port.
    let mut host_routed: BTreeMap<String, u16> = BTreeMap::new();
    let mut external: BTreeMap<u16, Vec<Arc<SharedHost>>> = BTreeMap::new();
    // Clients of a headless service connect to pod IPs, which the outbound
    // listener forwards as TCP: there is no VIP chain to route them from.
    for svc in snapshot
        .mesh
        .services
        .values()
        .filter(|s| visible(&s.key) && !s.is_headless())
    {
        for port in svc.ports.iter().filter(|p| p.protocol.is_http()) {
            let (config, bare) = match mode {
                // With capture the chain already matched the port, so the
                // Host header may or may not carry it.
                Interception::Redirect => (
                    host_routed_config_name(
                        port.port,
                        svc.external_name
                            .is_none()
                            .then_some(svc.key.namespace.as_str()),
                    ),
                    true,
                ),
                // A forward-proxy client leaves the port out of Host only
                // when it is 80.
                Interception::None => (HTTP_PROXY_ROUTE.to_string(), port.port == 80),
            };
            let mesh_routes = &snapshot.mesh.routes;
            // With capture, a port a route attaches to has its own chain
            // (its VIPs; an ExternalName has none and stays routed by Host):
            // the shared configuration does not claim its names, so a call
            // to another VIP with its Host goes where it was sent.
            let own_chain = mode == Interception::Redirect
                && mesh_routes.attaches(&svc.key, port.port)
                && svc.vips().next().is_some();
            let config = if own_chain {
                let name = gateway::route_config_name(&svc.key, port.port);
                own.insert(name.clone());
                name
            } else {
                config
            };
            let domains = || {
                if own_chain {
                    return vec!["*".to_string()];
                }
                let hosts = service_hosts(&svc.key, svc.vips(), namespace);
                let mut domains = Vec::with_capacity(hosts.len() * 2);
                for host in hosts {
                    domains.push(format!("{host}:{}", port.port));
                    if bare {
                        domains.push(host);
                    }
                }
                domains
            };
            let vhost = |domains: Vec<String>, routes| VirtualHost {
                name: format!("{}:{}", svc.key.fqdn(), port.port),
                domains,
                routes,
                ..Default::default()
            };
            // A Gateway API route replaces the annotations' routes; a
            // caller it does not apply to (another namespace's consumer
            // route) keeps the annotations'.
            let host = match mesh_routes.for_caller(&svc.key, port.port, namespace) {
                Some(entries) => {
                    let routes = gateway::service_routes(
                        &snapshot.mesh,
                        &snapshot.clusters,
                        port.port,
                        entries,
                    );
                    if routes.names_unresolved {
                        unvalidated.insert(config.clone());
                    }
                    let clusters = routes.clusters.into_iter().collect();
                    SharedHost::new(&vhost(domains(), routes.routes), clusters)
                }
                // The same for every caller namespace but the Service's
                // own: built once per snapshot (see `hosts`).
                None => {
                    let key = (
                        svc.key.clone(),
                        port.port,
                        svc.key.namespace == namespace,
                        mode,
                    );
                    snapshot.hosts.get_or_build(key, || {
                        let routes = routing::service_routes(
                            &snapshot.mesh,
                            &snapshot.routing,
                            &snapshot.clusters,
                            svc,
                            port.port,
                        );
                        SharedHost::new(&vhost(domains(), routes.routes), routes.clusters)
                    })
                }
            };
            if mode == Interception::Redirect && !own.contains(&config) {
                if svc.external_name.is_some() {
                    external.entry(port.port).or_default().push(host);
                    continue;
                }
                host_routed.insert(config.clone(), port.port);
            }
            by_config.entry(config).or_default().push(host);
        }
    }
    // An ExternalName's name may resolve to a mesh Service's VIP (an alias
    // of `web.shop.svc.cluster.local`), whose chain is its namespace's: so
    // its virtual host is in every configuration of its port routed by
    // Host, as well as in the port's configuration for other destinations.
    for (port, hosts) in external {
        let mut configs: Vec<String> = host_routed
            .iter()
            .filter(|(_, p)| **p == port)
            .map(|(name, _)| name.clone())
            .collect();
        let any_destination = host_routed_config_name(port, None);
        // A backend of theirs that does not resolve goes with them.
        let unresolved = unvalidated.contains(&any_destination);
        configs.push(any_destination);
        for config in configs {
            if unresolved {
                unvalidated.insert(config.clone());
            }
            by_config
                .entry(config)
                .or_default()
                .extend(hosts.iter().cloned());
        }
    }
    if mode == Interception::Redirect {
        // A Host no service claims goes where the app sent it, as it
        // would without the mesh.
        let allow_any = SharedHost::new(
            &VirtualHost {
                name: "allow_any".into(),
                domains: vec!["*".into()],
                routes: vec![route_to(PASSTHROUGH_CLUSTER)],
                ..Default::default()
            },
            vec![],
        );
        for (_, hosts) in by_config
            .iter_mut()
            .filter(|(name, _)| !own.contains(*name))
        {
            hosts.push(allow_any.clone());
        }
    }
    if mode == Interception::None {
        by_config.entry(HTTP_PROXY_ROUTE.to_string()).or_default();
    }
    by_config
        .into_iter()
        .map(|(name, hosts)| {
            let mut cluster_refs: BTreeSet<&str> = hosts
                .iter()
                .flat_map(|h| h.clusters.iter().map(String::as_str))
                .collect();
            if mode == Interception::Redirect && !own.contains(&name) {
                cluster_refs.insert(PASSTHROUGH_CLUSTER);
            }
            let cluster_refs = cluster_refs.into_iter().map(str::to_string).collect();
            // Envoy never checks RDS configurations against its
            // clusters; a static copy (tests) would be, and a backend
            // that did not resolve names none on purpose.
            let validate_clusters = unvalidated
                .contains(&name)
                .then_some(BoolValue { value: false });
            let config =
                hosts::route_configuration(name.clone(), &hosts, validate_clusters, cluster_refs);
            (name, config)
        })
        .collect()
}

/// The capture listener with the chains of every port listener joined in,
/// as one listener held them before ports had listeners of their own: what
/// tests of the chains look at, wherever a chain lives.
#[cfg(test)]
pub(crate) fn joined_outbound(view: &ProxyView) -> Listener {
    let mut joined: Listener =
        decode(view.get(Kind::Listener, OUTBOUND_LISTENER).unwrap()).unwrap();
    for r in view.all(Kind::Listener) {
        if r.name.starts_with(OUTBOUND_PORT_LISTENER_PREFIX) {
            let port: Listener = decode(r).unwrap();
            joined.filter_chains.extend(port.filter_chains);
        }
    }
    joined
}

#[cfg(test)]
mod tests {
    use super::clusters::duration;
    use super::*;
    use crate::discovery::file::FileRegistry;
    use meshd_proto::envoy::config::cluster::v3::{Cluster, cluster};
    use meshd_proto::envoy::config::core::v3::transport_socket;
    use meshd_proto::envoy::config::core::v3::{
        SocketAddress, address, socket_address::PortSpecifier,
    };
    use meshd_proto::envoy::config::endpoint::v3::{
        ClusterLoadAssignment, lb_endpoint::HostIdentifier,
    };
    use meshd_proto::envoy::config::route::v3::{route, route_action};
    use meshd_proto::envoy::extensions::transport_sockets::tls::v3::{
        UpstreamTlsContext, common_tls_context,
    };
    use meshd_proto::envoy::r#type::matcher::v3::string_matcher;
    use prost::Message;

    const REGISTRY: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 198.19.0.1
  ports: [{name: http, port: 80}, {name: tcp-db, port: 5432}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}, {name: tcp-db, port: 5432}]
endpoints:
- addresses: [198.18.0.3]
  targetRef: {kind: Pod, name: web-0}
- addresses: [198.18.0.4]
  conditions: {ready: false}
---
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: shop}
spec: {serviceAccountName: web, containers: []}
status: {podIP: 198.18.0.3}
---
apiVersion: v1
kind: Pod
metadata: {name: client-0, namespace: other}
spec: {containers: []}
status: {podIP: 198.18.0.2}
"#;

    fn snapshot() -> Snapshot {
        snapshot_of(REGISTRY)
    }

    fn snapshot_of(registry: &str) -> Snapshot {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("r.yaml"), registry).unwrap();
        let load = FileRegistry::new(dir.path()).load();
        assert!(load.errors.is_empty(), "{:?}", load.errors);
        Snapshot::new(1, Arc::new(load.mesh), TranslateOptions::default())
    }

    #[test]
    fn debug_output_never_shows_a_resource_body() {
        let secret = meshd_proto::envoy::extensions::transport_sockets::tls::v3::Secret {
            name: "default".into(),
            ..Default::default()
        };
        let mut resource = Resource::new("default".into(), &secret, vec![]);
        Arc::get_mut(&mut resource).unwrap().body.value = b"-----BEGIN PRIVATE KEY-----".to_vec();
        let shown = format!("{resource:?}");
        assert!(!shown.contains("PRIVATE"), "{shown}");
        assert!(shown.contains("default"));
    }

    #[test]
    fn unknown_workloads_get_nothing() {
        assert!(snapshot().proxy("ghost.nowhere").is_none());
    }

    #[test]
    fn endpoints_carry_only_ready_addresses_at_the_target_port() {
        let snap = snapshot();
        let view = snap.proxy("client-0.other").unwrap();
        let cla: ClusterLoadAssignment = decode(
            view.get(Kind::Endpoint, "outbound|80||web.shop.svc.cluster.local")
                .unwrap(),
        )
        .unwrap();
        let addrs: Vec<_> = cla.endpoints[0]
            .lb_endpoints
            .iter()
            .map(|e| match &e.host_identifier {
                Some(HostIdentifier::Endpoint(ep)) => match &ep.address.as_ref().unwrap().address {
                    Some(address::Address::SocketAddress(sa)) => {
                        (sa.address.clone(), sa.port_specifier.clone())
                    }
                    _ => panic!(),
                },
                _ => panic!(),
            })
            .collect();
        assert_eq!(
            addrs,
            [(
                "198.18.0.3".to_string(),
                Some(PortSpecifier::PortValue(8080))
            )]
        );
    }

    #[test]
    fn routes_use_short_names_only_within_the_namespace() {
        let snap = snapshot();
        let other = snap.proxy("client-0.other").unwrap();
        let rc: RouteConfiguration = decode(other.get(Kind::Route, "80|shop").unwrap()).unwrap();
        let domains = &rc.virtual_hosts[0].domains;
        assert!(domains.contains(&"web.shop".to_string()));
        assert!(domains.contains(&"web.shop.svc.cluster.local:80".to_string()));
        assert!(domains.contains(&"198.19.0.1".to_string()));
        assert!(!domains.contains(&"web".to_string()));
        assert_eq!(rc.virtual_hosts.last().unwrap().name, "allow_any");

        let same = snap.proxy("web-0.shop").unwrap();
        let rc: RouteConfiguration = decode(same.get(Kind::Route, "80|shop").unwrap()).unwrap();
        assert!(rc.virtual_hosts[0].domains.contains(&"web".to_string()));
        // TCP ports get no route configuration.
        assert!(same.get(Kind::Route, "5432").is_none());
    }

    /// Callers outside a Service's namespace share its virtual host, built
    /// once per snapshot; its own namespace gets the one with its short
    /// name. The configurations joined from them are what a caller gets.
    #[test]
    fn callers_of_other_namespaces_share_the_virtual_hosts() {
        let mut registry = String::new();
        for (i, ns) in ["shop", "pay", "ads"].into_iter().enumerate() {
            registry.push_str(&format!(
                "---\napiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: {ns}}}\nspec: {{clusterIP: 198.19.0.{}, ports: [{{name: http, port: 80}}]}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: client-0, namespace: {ns}}}\nstatus: {{podIP: 198.18.0.{}}}\n",
                i + 1,
                i + 1,
            ));
        }
        let snap = mtls_snapshot(&registry);
        let shop = snap.proxy("client-0.shop").unwrap();
        let pay = snap.proxy("client-0.pay").unwrap();
        let ads = snap.proxy("client-0.ads").unwrap();
        // Three Services, each built for its own namespace and for others.
        assert_eq!(lock(&snap.hosts.0).len(), 6);
        let of = |view: &ProxyView, name: &str| view.get(Kind::Route, name).unwrap().clone();
        assert_eq!(of(&shop, "80|ads").body, of(&pay, "80|ads").body);
        assert_ne!(of(&shop, "80|ads").body, of(&ads, "80|ads").body);
        let own: RouteConfiguration = decode(&of(&ads, "80|ads")).unwrap();
        assert!(own.virtual_hosts[0].domains.contains(&"web".to_string()));
        let other: RouteConfiguration = decode(&of(&shop, "80|ads")).unwrap();
        assert!(!other.virtual_hosts[0].domains.contains(&"web".to_string()));
        assert_eq!(other.virtual_hosts.last().unwrap().name, "allow_any");
        // Joined bytes decode and encode again to the very same bytes.
        assert_eq!(other.encode_to_vec(), of(&shop, "80|ads").body.value);
    }

    #[test]
    fn inbound_listener_forwards_each_target_port_to_localhost() {
        let snap = snapshot();
        let view = snap.proxy("web-0.shop").unwrap();
        let l: Listener = decode(view.get(Kind::Listener, INBOUND_LISTENER).unwrap()).unwrap();
        let ports: Vec<_> = l
            .filter_chains
            .iter()
            .map(|c| {
                c.filter_chain_match
                    .as_ref()
                    .unwrap()
                    .destination_port
                    .unwrap()
                    .value
            })
            .collect();
        assert_eq!(ports, [5432, 8080]);
        assert!(view.get(Kind::Cluster, "inbound|8080||").is_some());
        // The client serves nothing: no inbound clusters, passthrough only.
        let client = snap.proxy("client-0.other").unwrap();
        assert!(client.get(Kind::Cluster, "inbound|8080||").is_none());
    }

    /// Pods of one shape share one inbound side, in a snapshot and the
    /// next: a stream does not encode its own on every snapshot.
    #[test]
    fn pods_behind_one_service_share_their_inbound_side() {
        let registry = |ready: bool| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: shop}}\nspec: {{clusterIP: 198.19.0.1, ports: [{{name: http, port: 80, targetPort: 8080}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: web-1, namespace: shop, labels: {{kubernetes.io/service-name: web}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n- addresses: [198.18.0.3]\n  targetRef: {{kind: Pod, name: web-0}}\n- addresses: [198.18.0.4]\n  conditions: {{ready: {ready}}}\n  targetRef: {{kind: Pod, name: web-1}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: web-0, namespace: shop}}\nstatus: {{podIP: 198.18.0.3}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: web-1, namespace: shop}}\nstatus: {{podIP: 198.18.0.4}}\n"
            )
        };
        let mesh = |text: String| {
            let mut index = crate::discovery::index::Index::default();
            for object in crate::discovery::file::parse(&text).unwrap() {
                index.apply(object);
            }
            Arc::new(index.mesh())
        };
        let first = Snapshot::new(1, mesh(registry(true)), TranslateOptions::default());
        let inbound = |snap: &Snapshot, pod: &str| {
            snap.proxy(pod)
                .unwrap()
                .get(Kind::Listener, INBOUND_LISTENER)
                .unwrap()
                .clone()
        };
        let web_0 = inbound(&first, "web-0.shop");
        assert!(Arc::ptr_eq(&web_0, &inbound(&first, "web-1.shop")));
        let m = mesh(registry(false));
        let second = Snapshot::next(2, m, TranslateOptions::default(), &first);
        assert!(Arc::ptr_eq(&web_0, &inbound(&second, "web-0.shop")));
    }

    #[test]
    fn outbound_listener_matches_vips_and_ports() {
        let snap = snapshot();
        let view = snap.proxy("client-0.other").unwrap();
        let capture = view.get(Kind::Listener, OUTBOUND_LISTENER).unwrap();
        let l: Listener = decode(capture).unwrap();
        // The capture listener hands each connection to its port's listener.
        assert!(l.filter_chains.is_empty());
        assert_eq!(l.use_original_dst, Some(BoolValue { value: true }));
        assert_eq!(l.bind_to_port, None);
        assert!(l.default_filter_chain.is_some());
        let names: Vec<&str> = view.all(Kind::Listener).map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["0.0.0.0_5432", "0.0.0.0_80", "inbound", "outbound"]);
        for (port, cluster) in [
            (80u16, "outbound|80||web.shop.svc.cluster.local"),
            (5432, "outbound|5432||web.shop.svc.cluster.local"),
        ] {
            let res = view
                .get(Kind::Listener, &format!("0.0.0.0_{port}"))
                .unwrap();
            let l: Listener = decode(res).unwrap();
            assert_eq!(l.filter_chains.len(), 1);
            let m = l.filter_chains[0].filter_chain_match.as_ref().unwrap();
            assert_eq!(m.destination_port, Some(UInt32Value { value: port.into() }));
            assert_eq!(l.bind_to_port, Some(BoolValue { value: false }));
            assert_eq!(l.use_original_dst, None);
            // What no chain matches on the port passes through.
            assert_eq!(
                l.default_filter_chain.unwrap().name,
                PASSTHROUGH_CLUSTER,
                "{port}"
            );
            assert!(res.cluster_refs.iter().any(|c| c == PASSTHROUGH_CLUSTER));
            if port == 5432 {
                assert!(res.cluster_refs.contains(&cluster.to_string()));
            }
        }
    }

    /// Redirected proxies of one egress scope hold one map of outbound
    /// listeners between them, not a copy each (a copy per proxy and
    /// snapshot grows with the mesh's ports), and list it with their own
    /// listeners by name, as one map would.
    #[test]
    fn redirected_proxies_share_the_outbound_listeners_and_list_them_with_their_own() {
        let snap = snapshot();
        let web = snap.proxy("web-0.shop").unwrap();
        let client = snap.proxy("client-0.other").unwrap();
        assert!(Arc::ptr_eq(
            &web.outbound_listeners,
            &client.outbound_listeners
        ));
        assert!(!web.listeners.contains_key(OUTBOUND_LISTENER));
        let names: Vec<&str> = web.all(Kind::Listener).map(|l| l.name.as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(names, sorted);
        for name in [
            INBOUND_LISTENER,
            OUTBOUND_LISTENER,
            "0.0.0.0_80",
            "0.0.0.0_5432",
        ] {
            assert!(names.contains(&name), "{name}: {names:?}");
            let found = web.get(Kind::Listener, name).map(|l| l.name.as_str());
            assert_eq!(found, Some(name));
        }
        assert!(web.get(Kind::Listener, "0.0.0.0_8080").is_none());
    }

    /// Every outbound chain sits in the listener of its destination port,
    /// no port listener takes one of the sidecar's ports, and a port's
    /// listener goes with the last Service port of that number.
    #[test]
    fn each_chain_is_in_its_ports_listener_which_goes_with_the_ports_last_service() {
        let snap = mtls_snapshot(&outside_and_headless("STRICT"));
        let view = snap.proxy("client-0.shop").unwrap();
        let mut port_listeners = 0;
        for r in view.all(Kind::Listener) {
            let Some(port) = r.name.strip_prefix(OUTBOUND_PORT_LISTENER_PREFIX) else {
                continue;
            };
            let port: u16 = port.parse().unwrap();
            assert!(!ports::ALL.contains(&port), "{port}");
            let l: Listener = decode(r).unwrap();
            let Some(address::Address::SocketAddress(SocketAddress {
                port_specifier: Some(PortSpecifier::PortValue(bound)),
                ..
            })) = l.address.and_then(|a| a.address)
            else {
                panic!("{}: no socket address", r.name)
            };
            assert_eq!(bound, u32::from(port));
            assert!(!l.filter_chains.is_empty(), "{}", r.name);
            for c in &l.filter_chains {
                let m = c.filter_chain_match.as_ref().unwrap();
                assert_eq!(
                    m.destination_port,
                    Some(UInt32Value { value: port.into() }),
                    "{}",
                    c.name
                );
            }
            port_listeners += 1;
        }
        // Port 80's VIPs, the ExternalName's any-destination port, the
        // headless pods' target ports.
        assert!(port_listeners >= 3, "{port_listeners}");

        let view = snapshot().proxy("client-0.other").unwrap();
        assert!(view.get(Kind::Listener, "0.0.0.0_5432").is_some());
        let without = REGISTRY.replace(", {name: tcp-db, port: 5432}", "");
        assert_ne!(without, REGISTRY);
        let snap = snapshot_of(&without);
        let view = snap.proxy("client-0.other").unwrap();
        assert!(view.get(Kind::Listener, "0.0.0.0_5432").is_none());
        assert!(view.get(Kind::Listener, "0.0.0.0_80").is_some());
    }

    /// A Service on one of the sidecar's own ports keeps its chain in the
    /// capture listener: a listener of that address would collide with the
    /// sidecar's own.
    #[test]
    fn a_service_on_a_sidecar_port_keeps_its_chain_in_the_capture_listener() {
        let registry = format!(
            "{REGISTRY}---\napiVersion: v1\nkind: Service\nmetadata: {{name: odd, namespace: shop}}\n\
             spec: {{clusterIP: 198.19.0.9, ports: [{{name: tcp, port: {}}}]}}\n",
            ports::READINESS
        );
        let snap = snapshot_of(&registry);
        let view = snap.proxy("client-0.other").unwrap();
        let l: Listener = decode(view.get(Kind::Listener, OUTBOUND_LISTENER).unwrap()).unwrap();
        assert_eq!(l.filter_chains.len(), 1);
        assert_eq!(
            l.filter_chains[0].name,
            "outbound|15021||odd.shop.svc.cluster.local"
        );
        assert!(view.get(Kind::Listener, "0.0.0.0_15021").is_none());
    }

    /// Two namespaces' HTTP Services on one port, and optionally a second
    /// Service in `pay`.
    fn two_namespaces(with_api2: bool) -> Snapshot {
        let mut registry = String::from(
            r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 198.19.0.1, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: pay}
spec: {clusterIP: 198.19.0.2, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Pod
metadata: {name: client-0, namespace: shop}
status: {podIP: 198.18.0.2}
"#,
        );
        if with_api2 {
            registry.push_str(
                "---\napiVersion: v1\nkind: Service\nmetadata: {name: api2, namespace: pay}\nspec: {clusterIP: 198.19.0.3, ports: [{name: http, port: 80}]}\n",
            );
        }
        mtls_snapshot(&registry)
    }

    /// With capture, a port's HTTP Services are routed by Host per
    /// destination namespace: a chain on each namespace's VIPs, each with
    /// its own route configuration, so a Service added in one namespace
    /// leaves the other namespaces' configurations as they were.
    #[test]
    fn http_routes_are_per_destination_namespace_behind_its_vips() {
        let snap = two_namespaces(false);
        let view = snap.proxy("client-0.shop").unwrap();
        let l = joined_outbound(&view);
        let http: Vec<(String, Vec<String>, String)> = l
            .filter_chains
            .iter()
            .filter(|c| c.name.starts_with("outbound|80|http"))
            .map(|c| {
                let m = c.filter_chain_match.as_ref().unwrap();
                let Some(filter::ConfigType::TypedConfig(any)) = &c.filters[0].config_type else {
                    panic!("{c:?}")
                };
                let hcm = HttpConnectionManager::decode(any.value.as_slice()).unwrap();
                let Some(http_connection_manager::RouteSpecifier::Rds(rds)) = hcm.route_specifier
                else {
                    panic!("{hcm:?}")
                };
                (
                    c.name.clone(),
                    m.prefix_ranges
                        .iter()
                        .map(|r| r.address_prefix.clone())
                        .collect(),
                    rds.route_config_name,
                )
            })
            .collect();
        assert_eq!(
            http,
            [
                (
                    "outbound|80|http|pay".into(),
                    vec!["198.19.0.2".into()],
                    "80|pay".into()
                ),
                (
                    "outbound|80|http|shop".into(),
                    vec!["198.19.0.1".into()],
                    "80|shop".into()
                ),
            ]
        );
        let vhosts = |view: &ProxyView, name: &str| -> Vec<(String, Vec<String>)> {
            let rc: RouteConfiguration = decode(view.get(Kind::Route, name).unwrap()).unwrap();
            rc.virtual_hosts
                .into_iter()
                .map(|v| (v.name, v.domains))
                .collect()
        };
        let shop = vhosts(&view, "80|shop");
        assert_eq!(shop.len(), 2, "{shop:?}");
        assert_eq!(shop[0].0, "web.shop.svc.cluster.local:80");
        assert!(
            shop[0].1.contains(&"web".to_string()),
            "short name in its namespace"
        );
        assert_eq!(shop[1].0, "allow_any");
        let pay = vhosts(&view, "80|pay");
        assert_eq!(pay.len(), 2, "{pay:?}");
        assert_eq!(pay[0].0, "api.pay.svc.cluster.local:80");
        assert!(pay[0].1.contains(&"api.pay".to_string()));
        assert!(
            !pay[0].1.contains(&"api".to_string()),
            "no short name across namespaces"
        );
        assert_eq!(pay[1].0, "allow_any");
        assert!(view.get(Kind::Route, "80").is_none());

        // A Service added in pay: shop's configuration is unchanged, pay's
        // gains it.
        let next = two_namespaces(true);
        let after = next.proxy("client-0.shop").unwrap();
        let version =
            |view: &ProxyView, name: &str| view.get(Kind::Route, name).unwrap().version.clone();
        assert_eq!(version(&view, "80|shop"), version(&after, "80|shop"));
        assert_ne!(version(&view, "80|pay"), version(&after, "80|pay"));
        assert_eq!(vhosts(&after, "80|pay").len(), 3);
    }

    /// An ExternalName service (HTTP and TCP ports), a headless one whose
    /// third pod is not ready, and an ordinary one; `db_1_mtls` is db-1's
    /// `meshd.io/mtls`.
    fn outside_and_headless(db_1_mtls: &str) -> String {
        format!(
            r#"
apiVersion: v1
kind: Service
metadata: {{name: payments, namespace: shop, annotations: {{meshd.io/max-connections: "7", meshd.io/timeout: 3s}}}}
spec: {{type: ExternalName, externalName: api.example.com, ports: [{{name: http, port: 80}}, {{name: tcp-db, port: 5432}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: shop}}
spec: {{clusterIP: 198.19.0.1, ports: [{{name: http, port: 80}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: db, namespace: shop}}
spec: {{clusterIP: None, ports: [{{name: tcp-pg, port: 5432}}, {{name: http, port: 8080}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: db-1, namespace: shop, labels: {{kubernetes.io/service-name: db}}}}
addressType: IPv4
ports: [{{name: tcp-pg, port: 5433}}, {{name: http, port: 8081}}]
endpoints:
- {{addresses: [198.18.0.20], targetRef: {{kind: Pod, name: db-0}}}}
- {{addresses: [198.18.0.21], targetRef: {{kind: Pod, name: db-1}}}}
- {{addresses: [198.18.0.22], targetRef: {{kind: Pod, name: db-2}}, conditions: {{ready: false}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: db-0, namespace: shop}}
spec: {{serviceAccountName: db, containers: []}}
status: {{podIP: 198.18.0.20}}
---
apiVersion: v1
kind: Pod
metadata: {{name: db-1, namespace: shop, annotations: {{meshd.io/mtls: {db_1_mtls}}}}}
spec: {{serviceAccountName: db, containers: []}}
status: {{podIP: 198.18.0.21}}
---
apiVersion: v1
kind: Pod
metadata: {{name: client-0, namespace: shop}}
status: {{podIP: 198.18.0.2}}
---
apiVersion: v1
kind: Pod
metadata: {{name: scoped-0, namespace: shop, annotations: {{meshd.io/egress: "./web"}}}}
status: {{podIP: 198.18.0.3}}
"#
        )
    }

    fn mtls_snapshot(registry: &str) -> Snapshot {
        let mut index = crate::discovery::index::Index::default();
        for object in crate::discovery::file::parse(registry).unwrap() {
            index.apply(object);
        }
        let options = TranslateOptions {
            mtls: Some(MtlsOptions {
                trust_domain: "cluster.local".into(),
                default_mode: MtlsMode::Permissive,
            }),
            telemetry: Default::default(),
            authorization: Default::default(),
        };
        let snap = Snapshot::new(1, Arc::new(index.mesh()), options);
        assert!(snap.routing.errors.is_empty(), "{:?}", snap.routing.errors);
        snap
    }

    /// Per outbound filter chain: name, destination port, prefixes.
    fn outbound_chains(view: &ProxyView) -> Vec<(String, u32, Vec<String>)> {
        let l = joined_outbound(view);
        l.filter_chains
            .iter()
            .map(|c| {
                let m = c.filter_chain_match.as_ref().unwrap();
                (
                    c.name.clone(),
                    m.destination_port.unwrap().value,
                    m.prefix_ranges
                        .iter()
                        .map(|r| r.address_prefix.clone())
                        .collect(),
                )
            })
            .collect()
    }

    const PAYMENTS: &str = "outbound|80||payments.shop.svc.cluster.local";
    const DB_PG: &str = "outbound|5432||db.shop.svc.cluster.local";
    const DB_HTTP: &str = "outbound|8080||db.shop.svc.cluster.local";

    #[test]
    fn external_name_ports_are_dns_clusters_outside_the_mesh() {
        let snap = mtls_snapshot(&outside_and_headless("STRICT"));
        let view = snap.proxy("client-0.shop").unwrap();
        let c: Cluster = decode(view.get(Kind::Cluster, PAYMENTS).unwrap()).unwrap();
        assert_eq!(
            c.cluster_discovery_type,
            Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::LogicalDns as i32
            ))
        );
        assert!(c.eds_cluster_config.is_none());
        let lb = &c.load_assignment.as_ref().unwrap().endpoints[0].lb_endpoints;
        let Some(HostIdentifier::Endpoint(ep)) = &lb[0].host_identifier else {
            panic!("{lb:?}")
        };
        assert_eq!(
            ep.address,
            Some(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: "api.example.com".into(),
                    port_specifier: Some(PortSpecifier::PortValue(80)),
                    ..Default::default()
                }))
            })
        );
        // Outside the mesh: no mTLS; circuit breaking still applies.
        assert!(c.transport_socket.is_none() && c.transport_socket_matches.is_empty());
        assert_eq!(
            c.alt_stat_name,
            "outbound|80|plaintext|payments.shop.svc.cluster.local"
        );
        let limits = &c.circuit_breakers.unwrap().thresholds[0];
        assert_eq!(limits.max_connections, Some(UInt32Value { value: 7 }));
        // Envoy waits for no load assignment, and the TCP port has no cluster.
        assert!(view.get(Kind::Endpoint, PAYMENTS).is_none());
        assert!(
            view.get(
                Kind::Cluster,
                "outbound|5432||payments.shop.svc.cluster.local"
            )
            .is_none()
        );

        // Port 80 gets a chain for any destination beside shop's VIPs';
        // nothing else does.
        let chains = outbound_chains(&view);
        let http: Vec<_> = chains.iter().filter(|c| c.1 == 80).collect();
        assert_eq!(
            http.iter()
                .map(|c| (c.0.as_str(), c.2.len()))
                .collect::<Vec<_>>(),
            [("outbound|80|http|shop", 1), ("outbound|80|http", 0)],
            "{chains:?}"
        );
        assert!(
            chains.iter().all(|c| !c.0.contains("payments")),
            "{chains:?}"
        );

        // Its names route to it, with its routing; unknown Hosts still pass.
        let rc: RouteConfiguration = decode(view.get(Kind::Route, "80").unwrap()).unwrap();
        let vhost = rc
            .virtual_hosts
            .iter()
            .find(|v| v.name == "payments.shop.svc.cluster.local:80")
            .unwrap();
        for domain in [
            "payments",
            "payments:80",
            "payments.shop",
            "payments.shop.svc",
            "payments.shop.svc.cluster.local:80",
        ] {
            assert!(vhost.domains.contains(&domain.to_string()), "{domain}");
        }
        let Some(route::Action::Route(action)) = &vhost.routes[0].action else {
            panic!()
        };
        assert_eq!(
            action.cluster_specifier,
            Some(route_action::ClusterSpecifier::Cluster(PAYMENTS.into()))
        );
        assert_eq!(action.timeout, duration(3));
        assert_eq!(rc.virtual_hosts.last().unwrap().name, "allow_any");
        assert!(
            view.get(Kind::Route, "80")
                .unwrap()
                .cluster_refs
                .contains(&PAYMENTS.to_string())
        );
        // Its name may resolve to a mesh VIP (an alias): the configuration
        // of shop's VIPs routes it too, to the same cluster.
        let shop: RouteConfiguration = decode(view.get(Kind::Route, "80|shop").unwrap()).unwrap();
        let names: Vec<&str> = shop.virtual_hosts.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "web.shop.svc.cluster.local:80",
                "payments.shop.svc.cluster.local:80",
                "allow_any"
            ]
        );
        assert!(
            view.get(Kind::Route, "80|shop")
                .unwrap()
                .cluster_refs
                .contains(&PAYMENTS.to_string())
        );

        // A proxy whose egress scope leaves it out keeps port 80 to VIPs.
        let scoped = snap.proxy("scoped-0.shop").unwrap();
        let http: Vec<_> = outbound_chains(&scoped)
            .into_iter()
            .filter(|c| c.1 == 80)
            .collect();
        assert_eq!(
            http,
            [(
                "outbound|80|http|shop".into(),
                80,
                vec!["198.19.0.1".into()]
            )]
        );
        assert!(scoped.get(Kind::Cluster, PAYMENTS).is_none());
        let rc: RouteConfiguration = decode(scoped.get(Kind::Route, "80|shop").unwrap()).unwrap();
        assert!(
            rc.virtual_hosts
                .iter()
                .all(|v| !v.name.contains("payments"))
        );
    }

    #[test]
    fn headless_pods_get_a_tcp_chain_to_an_original_destination_cluster() {
        let snap = mtls_snapshot(&outside_and_headless("STRICT"));
        let view = snap.proxy("client-0.shop").unwrap();
        let chains = outbound_chains(&view);
        let mut pods: Vec<_> = chains
            .iter()
            .filter(|c| c.0.contains("db.shop"))
            .map(|c| (c.0.as_str(), c.1, c.2.join(",")))
            .collect();
        // By pod, then port (the chains are grouped by port listener).
        pods.sort_by(|a, b| (&a.2, a.1).cmp(&(&b.2, b.1)));
        // Ready endpoints only, at their target ports, TCP whatever the
        // port's protocol.
        assert_eq!(
            pods,
            [
                (
                    format!("{DB_PG}|198.18.0.20:5433").as_str(),
                    5433,
                    "198.18.0.20".into()
                ),
                (
                    format!("{DB_HTTP}|198.18.0.20:8081").as_str(),
                    8081,
                    "198.18.0.20".into()
                ),
                (
                    format!("{DB_PG}|198.18.0.21:5433").as_str(),
                    5433,
                    "198.18.0.21".into()
                ),
                (
                    format!("{DB_HTTP}|198.18.0.21:8081").as_str(),
                    8081,
                    "198.18.0.21".into()
                ),
            ]
        );
        let l = joined_outbound(&view);
        let chain = l
            .filter_chains
            .iter()
            .find(|c| c.name.starts_with(DB_HTTP))
            .unwrap();
        assert_eq!(chain.filters[0].name, "envoy.filters.network.tcp_proxy");
        // Each target port's listener refers to its chains' clusters.
        let refs = |port: u16| {
            view.get(Kind::Listener, &outbound_port_listener_name(port))
                .unwrap()
                .cluster_refs
                .clone()
        };
        assert!(refs(5433).contains(&DB_PG.to_string()));
        assert!(refs(8081).contains(&DB_HTTP.to_string()));

        for name in [DB_PG, DB_HTTP] {
            let c: Cluster = decode(view.get(Kind::Cluster, name).unwrap()).unwrap();
            assert_eq!(
                c.cluster_discovery_type,
                Some(cluster::ClusterDiscoveryType::Type(
                    cluster::DiscoveryType::OriginalDst as i32
                ))
            );
            assert_eq!(c.lb_policy, cluster::LbPolicy::ClusterProvided as i32);
            assert!(view.get(Kind::Endpoint, name).is_none());
            // Every ready pod takes mTLS: the cluster verifies db's identity.
            let socket = c.transport_socket.expect("mTLS to the pods");
            let Some(transport_socket::ConfigType::TypedConfig(any)) = socket.config_type else {
                panic!()
            };
            let tls = UpstreamTlsContext::decode(any.value.as_slice()).unwrap();
            let common = tls.common_tls_context.unwrap();
            assert!(common.alpn_protocols.is_empty());
            let Some(common_tls_context::ValidationContextType::CombinedValidationContext(v)) =
                common.validation_context_type
            else {
                panic!()
            };
            let sans: Vec<_> = v
                .default_validation_context
                .unwrap()
                .match_typed_subject_alt_names
                .into_iter()
                .map(|m| match m.matcher.unwrap().match_pattern {
                    Some(string_matcher::MatchPattern::Exact(s)) => s,
                    other => panic!("{other:?}"),
                })
                .collect();
            assert_eq!(sans, ["spiffe://cluster.local/ns/shop/sa/db"]);
        }
        // L7 routing does not apply: no virtual host, no route configuration.
        assert!(view.get(Kind::Route, "8080").is_none());

        // One ready pod without mTLS (a migration in progress): it alone is
        // reached in plaintext, through the TLS cluster's plaintext twin;
        // the other keeps mTLS.
        let snap = mtls_snapshot(&outside_and_headless("DISABLE"));
        let view = snap.proxy("client-0.shop").unwrap();
        let c: Cluster = decode(view.get(Kind::Cluster, DB_PG).unwrap()).unwrap();
        assert!(c.transport_socket.is_some());
        let twin = "outbound|5432|plaintext|db.shop.svc.cluster.local";
        let plain: Cluster = decode(view.get(Kind::Cluster, twin).unwrap()).unwrap();
        assert!(plain.transport_socket.is_none());
        let chains = outbound_chains(&view);
        let target = |ip: &str| {
            chains
                .iter()
                .find(|c| c.0.contains(&format!("|{ip}:5433")))
                .map(|c| c.0.clone())
                .unwrap()
        };
        assert!(target("198.18.0.20").starts_with(DB_PG), "{chains:?}");
        assert!(target("198.18.0.21").starts_with(twin), "{chains:?}");
        let refs = &view
            .get(Kind::Listener, "0.0.0.0_5433")
            .unwrap()
            .cluster_refs;
        assert!(refs.contains(&twin.to_string()));
        // Once every pod takes mTLS again, the twin goes.
        let snap = mtls_snapshot(&outside_and_headless("STRICT"));
        let view = snap.proxy("client-0.shop").unwrap();
        assert!(view.get(Kind::Cluster, twin).is_none());
    }

    /// A headless pod that stops taking mTLS changes no endpoint, only its
    /// chain's cluster: the next snapshot must not carry the old listener.
    #[test]
    fn a_headless_pods_mtls_change_rebuilds_the_listener() {
        let strict = mtls_snapshot(&outside_and_headless("STRICT"));
        let disable = mtls_snapshot(&outside_and_headless("DISABLE"));
        let next = Snapshot::next(2, disable.mesh.clone(), disable.options.clone(), &strict);
        // The listener of the pods' target port.
        let listener = |s: &Snapshot| {
            s.proxy("client-0.shop")
                .unwrap()
                .get(Kind::Listener, "0.0.0.0_5433")
                .unwrap()
                .version
                .clone()
        };
        assert_ne!(listener(&strict), listener(&disable));
        assert_eq!(listener(&next), listener(&disable));
    }

    #[test]
    fn a_pod_behind_two_headless_services_gets_one_chain() {
        let mut registry = String::new();
        for name in ["db", "db-peers"] {
            registry.push_str(&format!(
                r#"
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: shop}}
spec: {{clusterIP: None, ports: [{{name: tcp-pg, port: 5432}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}, namespace: shop, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{name: tcp-pg, port: 5432}}]
endpoints: [{{addresses: [198.18.0.20], targetRef: {{kind: Pod, name: db-0}}}}]
---
"#
            ));
        }
        registry.push_str(
            "{apiVersion: v1, kind: Pod, metadata: {name: db-0, namespace: shop}, status: {podIP: 198.18.0.20}}",
        );
        let snap = mtls_snapshot(&registry);
        let view = snap.proxy("db-0.shop").unwrap();
        assert_eq!(
            outbound_chains(&view),
            [(
                format!("{DB_PG}|198.18.0.20:5432"),
                5432,
                vec!["198.18.0.20".into()]
            )]
        );
        // Both clusters exist, for either name's clients.
        assert!(
            view.get(
                Kind::Cluster,
                "outbound|5432||db-peers.shop.svc.cluster.local"
            )
            .is_some()
        );
    }

    #[test]
    fn dual_stack_services_match_and_reach_both_families() {
        let snap = mtls_snapshot(
            r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIPs: [198.19.0.1, "fd00::1"], ports: [{name: http, port: 80}, {name: tcp-db, port: 5432}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-v4, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}, {name: tcp-db, port: 5432}]
endpoints: [{addresses: [198.18.0.3], targetRef: {kind: Pod, name: web-0}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-v6, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv6
ports: [{name: http, port: 8080}, {name: tcp-db, port: 5432}]
endpoints: [{addresses: ["fd00:18::3"], targetRef: {kind: Pod, name: web-0}}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: shop}
spec: {serviceAccountName: web, containers: []}
status: {podIP: 198.18.0.3}
"#,
        );
        let view = snap.proxy("web-0.shop").unwrap();
        let both = vec!["198.19.0.1".to_string(), "fd00::1".to_string()];
        assert_eq!(
            outbound_chains(&view),
            [
                (
                    "outbound|5432||web.shop.svc.cluster.local".into(),
                    5432,
                    both.clone()
                ),
                ("outbound|80|http|shop".into(), 80, both),
            ]
        );
        let rc: RouteConfiguration = decode(view.get(Kind::Route, "80|shop").unwrap()).unwrap();
        let domains = &rc.virtual_hosts[0].domains;
        for host in ["198.19.0.1", "198.19.0.1:80", "[fd00::1]", "[fd00::1]:80"] {
            assert!(domains.contains(&host.to_string()), "{host}: {domains:?}");
        }
        // The pod's two addresses both take traffic, both with mTLS: every
        // endpoint takes it, so the cluster carries the TLS transport
        // socket and no endpoint needs a mark.
        let cluster: Cluster = decode(
            view.get(Kind::Cluster, "outbound|80||web.shop.svc.cluster.local")
                .unwrap(),
        )
        .unwrap();
        assert!(cluster.transport_socket.is_some(), "cluster-wide mTLS");
        assert!(cluster.transport_socket_matches.is_empty());
        let cla: ClusterLoadAssignment = decode(
            view.get(Kind::Endpoint, "outbound|80||web.shop.svc.cluster.local")
                .unwrap(),
        )
        .unwrap();
        let addresses: Vec<_> = cla.endpoints[0]
            .lb_endpoints
            .iter()
            .map(|lb| {
                assert!(lb.metadata.is_none(), "no per-endpoint mTLS mark");
                let Some(HostIdentifier::Endpoint(ep)) = &lb.host_identifier else {
                    panic!()
                };
                let Some(address::Address::SocketAddress(sa)) =
                    &ep.address.as_ref().unwrap().address
                else {
                    panic!()
                };
                sa.address.clone()
            })
            .collect();
        assert_eq!(addresses, ["198.18.0.3", "fd00:18::3"]);
    }

    #[test]
    fn versions_are_stable_and_follow_content() {
        let a = snapshot();
        let b = snapshot();
        let va = a.proxy("client-0.other").unwrap();
        let vb = b.proxy("client-0.other").unwrap();
        for kind in Kind::PUSH_ORDER {
            let x: Vec<_> = va.all(kind).map(|r| (&r.name, &r.version)).collect();
            let y: Vec<_> = vb.all(kind).map(|r| (&r.name, &r.version)).collect();
            assert_eq!(x, y, "{kind:?}");
        }
    }
}
