//! The mesh model: what the control plane knows about services, their
//! endpoints, the workloads that run proxies, and namespaces.
//!
//! Discovery sources (the file registry now, the Kubernetes API later) turn
//! Kubernetes-shaped objects into these plain structs; translation turns a
//! [`Mesh`] into Envoy resources. Nothing here knows about Envoy or about
//! where the data came from.
//!
//! ```text
//! Service ──< ServicePort          (name, namespace, VIP, ports)
//!    │
//!    └──< Endpoint                 (from EndpointSlices: IP, ports, conditions, pod)
//!                 │
//! Workload ───────┘ (a Pod: node id, IP, service account, annotations)
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use meshd_api::annotations::authorization::Policy;
use meshd_api::annotations::routing::{AnnotationError, Egress, Routing};
pub use meshd_api::annotations::workload::{Interception, MtlsMode};
pub use meshd_api::gateway::{BackendRef, ParentRef, Route, RouteKey, RouteKind, RouteMatch, Rule};
pub use meshd_api::names::{CLUSTER_DOMAIN, DNS_LABEL, ServiceKey, is_dns_label, node_id};

/// The application protocol of a service port, which decides whether Envoy
/// proxies it as HTTP (routes, retries, …) or as opaque TCP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Http,
    Http2,
    Grpc,
    Tcp,
}

impl Protocol {
    /// The accepted spellings, for error messages.
    pub const ACCEPTED: &'static str =
        "http, http2, grpc, tcp (or a port name prefixed `http-`, `http2-`, `grpc-`, `tcp-`)";

    pub fn is_http(self) -> bool {
        !matches!(self, Protocol::Tcp)
    }

    /// Whether the upstream speaks HTTP/2 (gRPC always does).
    pub fn is_http2(self) -> bool {
        matches!(self, Protocol::Http2 | Protocol::Grpc)
    }

    /// Parses an `appProtocol` value. Kubernetes' own `kubernetes.io/h2c`
    /// counts as HTTP/2.
    pub fn from_app_protocol(value: &str) -> Option<Self> {
        match value.to_ascii_lowercase().as_str() {
            "http" | "http1" | "kubernetes.io/http" => Some(Protocol::Http),
            "http2" | "h2c" | "kubernetes.io/h2c" => Some(Protocol::Http2),
            "grpc" | "grpc-web" => Some(Protocol::Grpc),
            "tcp" => Some(Protocol::Tcp),
            _ => None,
        }
    }

    /// The protocol a port name implies by its prefix (`http-web`, `grpc`),
    /// the convention Istio users already follow. Unprefixed names are TCP.
    pub fn from_port_name(name: &str) -> Self {
        let prefix = name.split('-').next().unwrap_or_default();
        match prefix.to_ascii_lowercase().as_str() {
            "http" => Protocol::Http,
            "http2" => Protocol::Http2,
            "grpc" | "grpc-web" => Protocol::Grpc,
            _ => Protocol::Tcp,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Http => "http",
            Protocol::Http2 => "http2",
            Protocol::Grpc => "grpc",
            Protocol::Tcp => "tcp",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// Kubernetes requires a name once a service has more than one port; it
    /// is how EndpointSlice ports are matched to service ports.
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub key: ServiceKey,
    /// The cluster IP (`spec.clusterIP`); `None` for headless and
    /// ExternalName services.
    pub vip: Option<IpAddr>,
    /// The service's other cluster IPs (the rest of `spec.clusterIPs`): the
    /// other IP family's on a dual-stack service.
    pub secondary_vips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    pub annotations: BTreeMap<String, String>,
    /// The DNS name an ExternalName service stands for (`spec.externalName`,
    /// without a trailing dot): outside the mesh, reached by resolving it.
    pub external_name: Option<String>,
}

impl Service {
    /// Every cluster IP of the service, the primary first.
    pub fn vips(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.vip.iter().chain(&self.secondary_vips).copied()
    }

    /// A headless service (`clusterIP: None`): clients resolve its name to
    /// pod IPs and connect to them directly.
    pub fn is_headless(&self) -> bool {
        self.vip.is_none() && self.external_name.is_none()
    }

    /// The Envoy cluster name for one of this service's ports, in the
    /// `outbound|port||fqdn` form Istio operators already read fluently.
    pub fn cluster_name(&self, port: u16) -> String {
        outbound_cluster_name(&self.key, port)
    }
}

pub fn outbound_cluster_name(key: &ServiceKey, port: u16) -> String {
    format!("outbound|{port}||{}", key.fqdn())
}

/// Endpoint conditions as EndpointSlices report them. An absent condition
/// means `ready`/`serving` true and `terminating` false, as Kubernetes
/// documents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conditions {
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

impl Default for Conditions {
    fn default() -> Self {
        Self {
            ready: true,
            serving: true,
            terminating: false,
        }
    }
}

/// One address behind a service, with the port numbers it serves keyed by
/// service port name (`""` for a single unnamed port).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub address: IpAddr,
    pub ports: BTreeMap<String, u16>,
    pub conditions: Conditions,
    /// The pod behind the address, from the slice's `targetRef`.
    pub pod: Option<String>,
    /// Resolved from the pod; the identity a client will verify (issue #3).
    pub service_account: Option<String>,
}

impl Endpoint {
    /// The target port this endpoint serves for `port`.
    pub fn port_for(&self, port: &ServicePort) -> Option<u16> {
        self.ports
            .get(port.name.as_deref().unwrap_or_default())
            .copied()
    }
}

/// A pod that runs (or will run) a proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    pub namespace: String,
    pub name: String,
    pub ip: Option<IpAddr>,
    pub service_account: String,
    /// The pod's `meshd.io/` annotations, the only ones meshd reads
    /// (a pod's other annotations can be kilobytes, times every pod of the
    /// mesh). Its labels are not kept: nothing selects pods by label.
    pub annotations: BTreeMap<String, String>,
    pub interception: Interception,
    /// The workload's own `meshd.io/mtls`, if set.
    pub mtls: Option<MtlsMode>,
}

impl Workload {
    /// The xDS node id a proxy of this pod presents: `pod.namespace`.
    pub fn node_id(&self) -> String {
        node_id(&self.namespace, &self.name)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// The namespace's `meshd.io/mtls`, if set.
    pub mtls: Option<MtlsMode>,
}

/// An immutable view of the whole mesh. Sources publish a new one on every
/// change; entries are `Arc`s so unchanged parts are shared between
/// consecutive snapshots.
#[derive(Clone, Debug, Default)]
pub struct Mesh {
    pub services: BTreeMap<ServiceKey, Arc<Service>>,
    /// Endpoints per service, merged over all of the service's slices.
    pub endpoints: BTreeMap<ServiceKey, Arc<Vec<Endpoint>>>,
    /// Workloads by node id.
    pub workloads: BTreeMap<String, Arc<Workload>>,
    pub namespaces: BTreeMap<String, Arc<Namespace>>,
    /// Routing and egress scopes from the annotations, validated.
    pub routing: Arc<MeshRouting>,
    /// Who may call each service, from the annotations, validated.
    pub authorization: Arc<MeshAuthorization>,
    /// Gateway API routes (HTTPRoute, GRPCRoute) attached to Services,
    /// checked against this mesh.
    pub routes: Arc<MeshRoutes>,
}

/// The Gateway API routes in force for one mesh, by the Service (and port)
/// they attach to, and every route's status.
///
/// Which routes a caller sees for a Service port: the consumer routes of its
/// own namespace (routes in another namespace than the Service's that name
/// it as a parent) if there are any, else the producer routes (those in the
/// Service's namespace). A port with no route at all is routed by the
/// Service's `meshd.io/*` annotations, as before.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MeshRoutes {
    pub(crate) services: BTreeMap<ServiceKey, BTreeMap<u16, Arc<PortRoutes>>>,
    /// Every route discovery knows, with its conditions per Service parent.
    pub statuses: BTreeMap<RouteKey, RouteStatus>,
}

/// The routes attached to one Service port, each list in the order Envoy
/// must try them (the specification's precedence: exact path, longest
/// prefix, method, most headers, most query parameters, then the oldest
/// route, then namespace/name, then rule and match order).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortRoutes {
    pub producer: Vec<RouteEntry>,
    /// By the caller namespace the consumer routes belong to.
    pub consumers: BTreeMap<String, Vec<RouteEntry>>,
}

/// One match of one rule of an attached route: one Envoy route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteEntry {
    pub route: Arc<AttachedRoute>,
    /// Index into `route.route.rules`.
    pub rule: usize,
    /// Index into that rule's `matches`; `None`: the rule has none and
    /// matches every request.
    pub matched: Option<usize>,
}

impl RouteEntry {
    pub fn rule(&self) -> &Rule {
        &self.route.route.rules[self.rule]
    }

    pub fn route_match(&self) -> Option<&RouteMatch> {
        self.matched.map(|m| &self.rule().matches[m])
    }
}

/// A route as discovery accepted it, with which of its backend references
/// resolved in this mesh (an unresolved backend keeps its share of the
/// weight and answers 500, as the specification asks).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachedRoute {
    pub route: Arc<Route>,
    /// The references (backends and mirrors) that name an existing Service
    /// port and are permitted (same namespace, or a ReferenceGrant).
    pub resolved: std::collections::BTreeSet<BackendRef>,
}

impl AttachedRoute {
    /// The outbound cluster a backend reference sends to, if it resolved.
    pub fn cluster(&self, target: &BackendRef) -> Option<String> {
        let port = target.port?;
        self.resolved
            .contains(target)
            .then(|| outbound_cluster_name(&ServiceKey::new(&target.namespace, &target.name), port))
    }
}

/// A route's conditions, as `status.parents` has them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteStatus {
    /// The generation these conditions describe.
    pub generation: Option<i64>,
    pub parents: Vec<ParentStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParentStatus {
    pub parent: ParentRef,
    pub accepted: Condition,
    pub resolved_refs: Condition,
}

/// A Gateway API condition: `status` True or False, a standard reason and
/// a message for people.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Condition {
    pub status: bool,
    pub reason: String,
    pub message: String,
}

impl RouteStatus {
    /// This status as the Gateway API's `status.parents` entries of our
    /// controller (conditions without `lastTransitionTime`, which whoever
    /// writes them sets): what `/debug/routing/routes` shows and the
    /// leader writes to the route.
    pub fn parents_json(&self) -> serde_json::Value {
        let condition = |kind: &str, c: &Condition| {
            serde_json::json!({
                "type": kind,
                "status": if c.status { "True" } else { "False" },
                "reason": c.reason,
                "message": c.message,
                "observedGeneration": self.generation,
            })
        };
        self.parents
            .iter()
            .map(|p| {
                let mut parent_ref = serde_json::json!({
                    "group": "",
                    "kind": "Service",
                    "namespace": p.parent.namespace,
                    "name": p.parent.name,
                });
                if let Some(port) = p.parent.port {
                    parent_ref["port"] = port.into();
                }
                serde_json::json!({
                    "parentRef": parent_ref,
                    "controllerName": meshd_api::gateway::CONTROLLER_NAME,
                    "conditions": [
                        condition("Accepted", &p.accepted),
                        condition("ResolvedRefs", &p.resolved_refs),
                    ],
                })
            })
            .collect()
    }
}

impl MeshRoutes {
    /// The routes callers in `caller_namespace` see for a Service port;
    /// `None`: no route attaches there (the annotations route it).
    pub fn for_caller(
        &self,
        service: &ServiceKey,
        port: u16,
        caller_namespace: &str,
    ) -> Option<&[RouteEntry]> {
        let port = self.services.get(service)?.get(&port)?;
        if caller_namespace != service.namespace
            && let Some(consumer) = port.consumers.get(caller_namespace)
        {
            return Some(consumer);
        }
        (!port.producer.is_empty()).then_some(port.producer.as_slice())
    }

    /// Whether any route attaches to this Service port (for any caller).
    pub fn attaches(&self, service: &ServiceKey, port: u16) -> bool {
        self.services
            .get(service)
            .is_some_and(|ports| ports.contains_key(&port))
    }

    /// The Service ports routes attached to `service` send to (backends and
    /// mirrors, resolved ones only), as outbound cluster names.
    pub fn target_clusters(&self, service: &ServiceKey) -> std::collections::BTreeSet<String> {
        let mut out = std::collections::BTreeSet::new();
        for port in self
            .services
            .get(service)
            .into_iter()
            .flat_map(|p| p.values())
        {
            for entry in port
                .producer
                .iter()
                .chain(port.consumers.values().flatten())
            {
                for target in entry.route.route.backend_refs() {
                    out.extend(entry.route.cluster(target));
                }
            }
        }
        out
    }

    /// The Services with at least one attached route.
    pub fn services(&self) -> impl Iterator<Item = &ServiceKey> {
        self.services.keys()
    }
}

/// The authorization in force for one mesh: each service's last good
/// policy (services with none follow the mesh default).
#[derive(Clone, Debug, Default)]
pub struct MeshAuthorization {
    /// Services with authorization annotations (or their namespace's).
    pub(crate) services: BTreeMap<ServiceKey, Arc<Policy>>,
    /// Namespaces with authorization annotations: the policy of their
    /// pods behind no Service.
    pub(crate) namespaces: BTreeMap<String, Arc<Policy>>,
    /// Services whose annotations (or their Namespace's) are refused now:
    /// the policy in force is their last good one, not what they say.
    pub(crate) refused: BTreeSet<ServiceKey>,
}

static NO_POLICY: Policy = Policy::NONE;

impl MeshAuthorization {
    pub fn service(&self, key: &ServiceKey) -> &Policy {
        self.services.get(key).map_or(&NO_POLICY, |p| p)
    }

    /// The services with a policy of their own.
    pub fn services(&self) -> impl Iterator<Item = (&ServiceKey, &Arc<Policy>)> {
        self.services.iter()
    }

    /// Whether `key`'s annotations are refused now (its policy in force is
    /// the last good one).
    pub fn is_refused(&self, key: &ServiceKey) -> bool {
        self.refused.contains(key)
    }

    /// The namespaces with a policy of their own.
    pub fn namespaces(&self) -> impl Iterator<Item = (&str, &Arc<Policy>)> {
        self.namespaces.iter().map(|(k, p)| (k.as_str(), p))
    }
}

/// The routing in force for one mesh: what discovery parsed and checked
/// (each service's last good routing, each proxy's egress scope) and the
/// problems it found.
#[derive(Clone, Debug, Default)]
pub struct MeshRouting {
    /// Services whose routing is not the default.
    pub(crate) services: BTreeMap<ServiceKey, Arc<Routing>>,
    /// Proxies (by node id) with an egress scope; the others see the mesh.
    pub(crate) egress: BTreeMap<String, Arc<Egress>>,
    /// Every current problem, sorted, each once.
    pub errors: Vec<AnnotationError>,
}

static DEFAULT_ROUTING: Routing = Routing::DEFAULT;

impl MeshRouting {
    pub fn service(&self, key: &ServiceKey) -> &Routing {
        self.services.get(key).map_or(&DEFAULT_ROUTING, |r| r)
    }

    /// The egress scope of a proxy; `None`: every service.
    pub fn egress(&self, node_id: &str) -> Option<&Arc<Egress>> {
        self.egress.get(node_id)
    }

    /// Whether `other` routes every service and scopes every proxy the
    /// same way (the errors aside).
    pub fn same_routes(&self, other: &MeshRouting) -> bool {
        fn same<K: Eq, V: Eq>(a: &BTreeMap<K, Arc<V>>, b: &BTreeMap<K, Arc<V>>) -> bool {
            a.len() == b.len()
                && a.iter()
                    .zip(b)
                    .all(|((ka, va), (kb, vb))| ka == kb && (Arc::ptr_eq(va, vb) || va == vb))
        }
        same(&self.services, &other.services) && same(&self.egress, &other.egress)
    }
}

impl Mesh {
    pub fn endpoints_of(&self, key: &ServiceKey) -> &[Endpoint] {
        self.endpoints.get(key).map_or(&[], |e| e.as_slice())
    }

    /// The mTLS mode in force for a workload: its own annotation, else its
    /// namespace's, else the mesh default.
    pub fn mtls_mode(&self, workload: &Workload, default: MtlsMode) -> MtlsMode {
        workload
            .mtls
            .or_else(|| self.namespaces.get(&workload.namespace)?.mtls)
            .unwrap_or(default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_from_port_name_follows_the_prefix_convention() {
        assert_eq!(Protocol::from_port_name("http"), Protocol::Http);
        assert_eq!(Protocol::from_port_name("http-web"), Protocol::Http);
        assert_eq!(Protocol::from_port_name("http2-api"), Protocol::Http2);
        assert_eq!(Protocol::from_port_name("grpc"), Protocol::Grpc);
        assert_eq!(Protocol::from_port_name("tcp-db"), Protocol::Tcp);
        assert_eq!(Protocol::from_port_name("web"), Protocol::Tcp);
        assert_eq!(Protocol::from_port_name("httpx"), Protocol::Tcp);
    }

    #[test]
    fn cluster_names_are_istio_shaped() {
        let key = ServiceKey::new("demo", "server");
        assert_eq!(key.fqdn(), "server.demo.svc.cluster.local");
        assert_eq!(
            outbound_cluster_name(&key, 8080),
            "outbound|8080||server.demo.svc.cluster.local"
        );
    }
}
