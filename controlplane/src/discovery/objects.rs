//! Kubernetes objects → mesh model.
//!
//! Every discovery source speaks Kubernetes' own object shapes (the file
//! registry holds the same YAML `kubectl` would), so this is the one place
//! where a Namespace, Service, EndpointSlice or Pod is validated and turned
//! into model types. Errors name the object, the field and what is accepted.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::model::{
    Conditions, DNS_LABEL, Endpoint, Interception, MtlsMode, Namespace, Protocol, Service,
    ServiceKey, ServicePort, Workload, is_dns_label,
};
use meshd_api::annotations::pod as pod_annotations;
use meshd_api::annotations::workload::{
    INTERCEPTION as INTERCEPTION_ANNOTATION, MTLS as MTLS_ANNOTATION,
};
use meshd_api::gateway::{self, Grant, ParentRef, Route, RouteError, RouteKey, RouteKind};

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Kubernetes' default namespace for objects that do not name one.
pub const DEFAULT_NAMESPACE: &str = "default";

/// The most ports a Service may declare. Kubernetes sets no bound on a
/// Service itself, but an EndpointSlice carries at most 100 ports, so the
/// endpoints of a Service with more cannot be published
/// (kubernetes/kubernetes#99382). Each port costs Envoy clusters and
/// listener chains on every proxy.
pub const MAX_SERVICE_PORTS: usize = 100;
/// Kubernetes' own bounds on an EndpointSlice (discovery.k8s.io/v1
/// validation): ports, endpoints, and addresses per endpoint.
pub const MAX_SLICE_PORTS: usize = 100;
pub const MAX_SLICE_ENDPOINTS: usize = 1000;
pub const MAX_ENDPOINT_ADDRESSES: usize = 100;

/// The kinds a source accepts, as `apiVersion kind`.
pub const ACCEPTED_KINDS: &str = "v1 Namespace, v1 Service, v1 Pod, discovery.k8s.io/v1 EndpointSlice, gateway.networking.k8s.io/v1 HTTPRoute, gateway.networking.k8s.io/v1 GRPCRoute, gateway.networking.k8s.io/v1 (or v1beta1) ReferenceGrant";

/// A problem with one object: which object, which field, what is wrong and
/// what would be accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{object}: {field}: {message}")]
pub struct ObjectError {
    /// `Kind namespace/name`, or just `Kind` when the name is unknown.
    pub object: String,
    /// A path into the object, as `kubectl explain` spells it.
    pub field: String,
    pub message: String,
}

/// The kind and name of an object, for messages.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    pub kind: &'static str,
    pub namespace: Option<String>,
    pub name: String,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

impl ObjectRef {
    fn error(&self, field: impl Into<String>, message: impl Into<String>) -> ObjectError {
        ObjectError {
            object: self.to_string(),
            field: field.into(),
            message: message.into(),
        }
    }
}

/// An EndpointSlice reduced to what the mesh uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slice {
    pub namespace: String,
    pub name: String,
    pub service: ServiceKey,
    pub endpoints: Vec<Endpoint>,
}

/// One accepted object, converted to the model.
///
/// Behind `Arc`s: a source keeps what it was given (the file registry,
/// each file's last good objects) and the [`super::index::Index`] keeps
/// the very same objects, not a copy of every pod's annotations and
/// every slice's endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Object {
    Namespace(Arc<Namespace>),
    Service(Arc<Service>),
    EndpointSlice(Arc<Slice>),
    Pod(Arc<Workload>),
    /// An HTTPRoute or GRPCRoute. A route whose spec the mesh cannot use is
    /// still an object: its last good version keeps serving and its status
    /// says why the new one is not used.
    Route(RouteObject),
    ReferenceGrant(Arc<Grant>),
}

/// A route as a source saw it: its key and generation, and the checked
/// route or why it was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteObject {
    pub key: RouteKey,
    pub generation: Option<i64>,
    /// The Service parents, read even from a route refused as a whole, so
    /// its status can say so on each of them.
    pub parents: Vec<ParentRef>,
    pub route: Result<Arc<Route>, RouteError>,
}

impl RouteObject {
    fn new(
        key: RouteKey,
        generation: Option<i64>,
        parents: Vec<ParentRef>,
        route: Result<Route, RouteError>,
    ) -> RouteObject {
        RouteObject {
            key,
            generation,
            parents,
            route: route.map(Arc::new),
        }
    }
}

impl Object {
    pub fn from_namespace(ns: &core::Namespace) -> Result<Self, ObjectError> {
        namespace(ns).map(|ns| Object::Namespace(Arc::new(ns)))
    }

    pub fn from_service(svc: &core::Service) -> Result<Self, ObjectError> {
        service(svc).map(|svc| Object::Service(Arc::new(svc)))
    }

    pub fn from_endpoint_slice(slice: &discovery::EndpointSlice) -> Result<Self, ObjectError> {
        endpoint_slice(slice).map(|slice| Object::EndpointSlice(Arc::new(slice)))
    }

    pub fn from_pod(p: &core::Pod) -> Result<Self, ObjectError> {
        pod(p).map(|p| Object::Pod(Arc::new(p)))
    }

    /// An HTTPRoute: `Err` only when it has no usable name; a spec the
    /// mesh cannot use is an `Object::Route` carrying the error.
    pub fn from_http_route(route: &gateway::HttpRouteObject) -> Result<Self, ObjectError> {
        let key = route_key(RouteKind::Http, &route.metadata)?;
        let generation = route.metadata.generation;
        Ok(Object::Route(RouteObject::new(
            key,
            generation,
            gateway::http_route_parents(route),
            gateway::http_route(route),
        )))
    }

    /// A GRPCRoute, as [`Object::from_http_route`].
    pub fn from_grpc_route(route: &gateway::GrpcRouteObject) -> Result<Self, ObjectError> {
        let key = route_key(RouteKind::Grpc, &route.metadata)?;
        let generation = route.metadata.generation;
        Ok(Object::Route(RouteObject::new(
            key,
            generation,
            gateway::grpc_route_parents(route),
            gateway::grpc_route(route),
        )))
    }

    pub fn from_reference_grant(
        grant: &gateway::ReferenceGrantObject,
    ) -> Result<Self, ObjectError> {
        gateway::reference_grant(grant)
            .map(|g| Object::ReferenceGrant(Arc::new(g)))
            .map_err(|e| ObjectError {
                object: e.object,
                field: e.field,
                message: e.message,
            })
    }

    pub fn object_ref(&self) -> ObjectRef {
        let (kind, namespace, name) = match self {
            Object::Namespace(ns) => ("Namespace", None, &ns.name),
            Object::Service(s) => ("Service", Some(&s.key.namespace), &s.key.name),
            Object::EndpointSlice(s) => ("EndpointSlice", Some(&s.namespace), &s.name),
            Object::Pod(p) => ("Pod", Some(&p.namespace), &p.name),
            Object::Route(r) => (r.key.kind.as_str(), Some(&r.key.namespace), &r.key.name),
            Object::ReferenceGrant(g) => ("ReferenceGrant", Some(&g.namespace), &g.name),
        };
        ObjectRef {
            kind,
            namespace: namespace.cloned(),
            name: name.clone(),
        }
    }
}

/// A route's key from its metadata (the Gateway API types carry their own
/// `ObjectMeta`), with the same checks as every other object's.
fn route_key(kind: RouteKind, meta: &gateway::ObjectMeta) -> Result<RouteKey, ObjectError> {
    let meta = ObjectMeta {
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        ..Default::default()
    };
    let obj = identify(kind.as_str(), &meta, true)?;
    Ok(RouteKey {
        kind,
        namespace: obj.namespace.unwrap_or_default(),
        name: obj.name,
    })
}

/// Name and namespace from metadata, with the errors a user needs when they
/// are missing.
fn identify(
    kind: &'static str,
    meta: &ObjectMeta,
    namespaced: bool,
) -> Result<ObjectRef, ObjectError> {
    let name = meta
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ObjectError {
            object: kind.to_string(),
            field: "metadata.name".into(),
            message: "is required".into(),
        })?;
    let namespace = namespaced.then(|| {
        meta.namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string())
    });
    let obj = ObjectRef {
        kind,
        namespace,
        name,
    };
    if let Some(ns) = &obj.namespace
        && !is_dns_label(ns)
    {
        return Err(obj.error(
            "metadata.namespace",
            format!("`{ns}` is not a valid namespace name; accepted: {DNS_LABEL}"),
        ));
    }
    if matches!(kind, "Namespace" | "Service") && !is_dns_label(&obj.name) {
        return Err(obj.error(
            "metadata.name",
            format!(
                "`{}` is not a valid {kind} name; accepted: {DNS_LABEL}",
                obj.name
            ),
        ));
    }
    Ok(obj)
}

fn port_number(obj: &ObjectRef, field: &str, value: i32) -> Result<u16, ObjectError> {
    // Kubernetes' types read a missing port as 0.
    if value == 0 {
        return Err(obj.error(field, "is required; accepted: 1-65535"));
    }
    u16::try_from(value)
        .map_err(|_| obj.error(field, format!("{value} is out of range; accepted: 1-65535")))
}

/// Whether a Kubernetes port protocol (`TCP` when absent) is one the mesh
/// proxies. UDP and SCTP ports are not intercepted by the sidecar, so they
/// are left out of the model rather than rejected.
fn is_tcp(protocol: Option<&str>) -> bool {
    protocol.is_none_or(|p| p == "TCP")
}

fn protocol_of(name: Option<&str>, app_protocol: Option<&str>) -> Protocol {
    app_protocol
        .and_then(Protocol::from_app_protocol)
        .unwrap_or_else(|| Protocol::from_port_name(name.unwrap_or_default()))
}

fn mtls_annotation(
    obj: &ObjectRef,
    annotations: &std::collections::BTreeMap<String, String>,
) -> Result<Option<MtlsMode>, ObjectError> {
    annotations
        .get(MTLS_ANNOTATION)
        .map(|value| {
            MtlsMode::parse(value).ok_or_else(|| {
                obj.error(
                    format!("metadata.annotations[{MTLS_ANNOTATION}]"),
                    format!("`{value}` is not valid; accepted: {}", MtlsMode::ACCEPTED),
                )
            })
        })
        .transpose()
}

pub fn namespace(ns: &core::Namespace) -> Result<Namespace, ObjectError> {
    let obj = identify("Namespace", &ns.metadata, false)?;
    let annotations = ns.metadata.annotations.clone().unwrap_or_default();
    Ok(Namespace {
        mtls: mtls_annotation(&obj, &annotations)?,
        name: obj.name,
        labels: ns.metadata.labels.clone().unwrap_or_default(),
        annotations,
    })
}

pub fn service(svc: &core::Service) -> Result<Service, ObjectError> {
    let obj = identify("Service", &svc.metadata, true)?;
    let spec = svc
        .spec
        .as_ref()
        .ok_or_else(|| obj.error("spec", "is required"))?;
    let external_name = if spec.type_.as_deref() == Some("ExternalName") {
        Some(external_name(&obj, spec)?)
    } else {
        None
    };
    let (vip, secondary_vips) = match external_name {
        // Kubernetes allocates no cluster IP to an ExternalName service:
        // its name resolves to a CNAME, not to a VIP.
        Some(_) => (None, Vec::new()),
        None => cluster_ips(&obj, spec)?,
    };
    let all_ports = spec.ports.as_deref().unwrap_or_default();
    // Before anything per port: the checks below compare ports pairwise.
    if all_ports.len() > MAX_SERVICE_PORTS {
        return Err(obj.error(
            "spec.ports",
            format!(
                "{} ports; accepted: at most {MAX_SERVICE_PORTS} (the most an EndpointSlice can carry)",
                all_ports.len()
            ),
        ));
    }
    let mut ports: Vec<ServicePort> = Vec::with_capacity(all_ports.len());
    for (i, p) in all_ports.iter().enumerate() {
        let field = format!("spec.ports[{i}]");
        let number = port_number(&obj, &format!("{field}.port"), p.port)?;
        if all_ports.len() > 1 && p.name.as_deref().is_none_or(str::is_empty) {
            return Err(obj.error(
                format!("{field}.name"),
                "is required when a service has more than one port",
            ));
        }
        if !is_tcp(p.protocol.as_deref()) {
            continue;
        }
        if let Some(dup) = ports.iter().find(|q| q.port == number) {
            return Err(obj.error(
                format!("{field}.port"),
                format!(
                    "port {number} is already declared by port {:?}; each port may appear once",
                    dup.name.as_deref().unwrap_or_default()
                ),
            ));
        }
        if let Some(name) = p.name.as_deref().filter(|n| !n.is_empty())
            && ports.iter().any(|q| q.name.as_deref() == Some(name))
        {
            return Err(obj.error(
                format!("{field}.name"),
                format!("`{name}` is used by another port; names must be unique"),
            ));
        }
        ports.push(ServicePort {
            name: p.name.clone().filter(|n| !n.is_empty()),
            port: number,
            protocol: protocol_of(p.name.as_deref(), p.app_protocol.as_deref()),
        });
    }
    Ok(Service {
        key: ServiceKey::new(obj.namespace.unwrap_or_default(), obj.name),
        vip,
        secondary_vips,
        ports,
        annotations: svc.metadata.annotations.clone().unwrap_or_default(),
        external_name,
    })
}

/// The cluster IPs of a service: `spec.clusterIPs` (one per IP family on
/// a dual-stack service, the primary first), falling back to
/// `spec.clusterIP`, which Kubernetes keeps equal to the first.
fn cluster_ips(
    obj: &ObjectRef,
    spec: &core::ServiceSpec,
) -> Result<(Option<IpAddr>, Vec<IpAddr>), ObjectError> {
    const ACCEPTED: &str = "an IPv4 or IPv6 address, or None for a headless service";
    let listed = spec.cluster_ips.as_deref().unwrap_or_default();
    let single = spec.cluster_ip.as_deref().filter(|ip| !ip.is_empty());
    let (field, primary) = match (single, listed.first()) {
        (Some(ip), Some(first)) if ip != first => {
            return Err(obj.error(
                "spec.clusterIPs[0]",
                format!(
                    "`{first}` differs from spec.clusterIP `{ip}`; accepted: spec.clusterIP repeated as the first of spec.clusterIPs"
                ),
            ));
        }
        (Some(ip), _) => ("spec.clusterIP", ip),
        (None, Some(first)) => ("spec.clusterIPs[0]", first.as_str()),
        (None, None) => {
            return Err(obj.error(
                "spec.clusterIP",
                format!(
                    "is required (the file registry has no IP allocator); accepted: {ACCEPTED}"
                ),
            ));
        }
    };
    let parse = |field: &str, ip: &str| {
        ip.parse::<IpAddr>().map_err(|_| {
            obj.error(
                field,
                format!("`{ip}` is not an IP address; accepted: {ACCEPTED}"),
            )
        })
    };
    if primary == "None" {
        if listed.len() > 1 {
            return Err(obj.error(
                "spec.clusterIPs",
                "a headless service has no cluster IPs; accepted: [None]",
            ));
        }
        return Ok((None, Vec::new()));
    }
    let vip = parse(field, primary)?;
    let mut secondary = Vec::new();
    for (i, ip) in listed.iter().enumerate().skip(1) {
        let field = format!("spec.clusterIPs[{i}]");
        let ip = parse(&field, ip)?;
        if i > 1 || ip.is_ipv4() == vip.is_ipv4() {
            return Err(obj.error(
                field,
                format!(
                    "`{ip}` is a second address of one IP family; accepted: at most one IPv4 and one IPv6 address"
                ),
            ));
        }
        secondary.push(ip);
    }
    Ok((Some(vip), secondary))
}

/// `spec.externalName` of an ExternalName service: a DNS name, as
/// Kubernetes validates it (an RFC 1123 subdomain, a trailing dot allowed).
fn external_name(obj: &ObjectRef, spec: &core::ServiceSpec) -> Result<String, ObjectError> {
    const ACCEPTED: &str = "a DNS name such as api.example.com: dot-separated labels of lowercase letters, digits and '-', each starting and ending with a letter or digit, at most 63 characters each and 253 in all";
    let assigned = |ip: &str| !ip.is_empty() && ip != "None";
    if spec.cluster_ip.as_deref().is_some_and(assigned)
        || spec.cluster_ips.iter().flatten().any(|ip| assigned(ip))
    {
        return Err(obj.error(
            "spec.clusterIP",
            "must be empty for an ExternalName service: its name resolves to spec.externalName, not to a cluster IP",
        ));
    }
    let name = spec.external_name.as_deref().unwrap_or_default();
    if name.is_empty() {
        return Err(obj.error(
            "spec.externalName",
            format!("is required for a service of type ExternalName; accepted: {ACCEPTED}"),
        ));
    }
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty()
        || trimmed.len() > 253
        || !trimmed
            .split('.')
            .all(|label| !label.is_empty() && is_dns_label(label))
    {
        return Err(obj.error(
            "spec.externalName",
            format!("`{name}` is not a DNS name; accepted: {ACCEPTED}"),
        ));
    }
    Ok(trimmed.to_string())
}

pub fn endpoint_slice(slice: &discovery::EndpointSlice) -> Result<Slice, ObjectError> {
    let obj = identify("EndpointSlice", &slice.metadata, true)?;
    let namespace = obj.namespace.clone().unwrap_or_default();
    let service_name = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            obj.error(
                format!("metadata.labels[{SERVICE_NAME_LABEL}]"),
                "is required: it names the Service these endpoints belong to",
            )
        })?;
    match slice.address_type.as_str() {
        "IPv4" | "IPv6" => {}
        other => {
            return Err(obj.error(
                "addressType",
                format!("`{other}` is not supported; accepted: IPv4, IPv6"),
            ));
        }
    }
    let slice_ports = slice.ports.as_deref().unwrap_or_default();
    for (field, count, limit) in [
        ("ports", slice_ports.len(), MAX_SLICE_PORTS),
        ("endpoints", slice.endpoints.len(), MAX_SLICE_ENDPOINTS),
    ] {
        if count > limit {
            return Err(obj.error(field, format!("{count} {field}; accepted: at most {limit}")));
        }
    }
    let mut ports = BTreeMap::new();
    for (i, p) in slice_ports.iter().enumerate() {
        let field = format!("ports[{i}].port");
        let number = p
            .port
            .ok_or_else(|| obj.error(&field, "is required"))
            .and_then(|n| port_number(&obj, &field, n))?;
        if is_tcp(p.protocol.as_deref()) {
            ports.insert(p.name.clone().unwrap_or_default(), number);
        }
    }
    let mut endpoints = Vec::new();
    for (i, ep) in slice.endpoints.iter().enumerate() {
        let conditions = ep
            .conditions
            .as_ref()
            .map_or_else(Conditions::default, |c| {
                let ready = c.ready.unwrap_or(true);
                Conditions {
                    ready,
                    serving: c.serving.unwrap_or(ready),
                    terminating: c.terminating.unwrap_or(false),
                }
            });
        let pod = ep
            .target_ref
            .as_ref()
            .filter(|r| r.kind.as_deref().is_none_or(|k| k == "Pod"))
            .and_then(|r| r.name.clone());
        if ep.addresses.is_empty() {
            return Err(obj.error(
                format!("endpoints[{i}].addresses"),
                "needs at least one address",
            ));
        }
        if ep.addresses.len() > MAX_ENDPOINT_ADDRESSES {
            return Err(obj.error(
                format!("endpoints[{i}].addresses"),
                format!(
                    "{} addresses; accepted: at most {MAX_ENDPOINT_ADDRESSES}",
                    ep.addresses.len()
                ),
            ));
        }
        for (j, address) in ep.addresses.iter().enumerate() {
            let address = address.parse::<IpAddr>().map_err(|_| {
                obj.error(
                    format!("endpoints[{i}].addresses[{j}]"),
                    format!(
                        "`{address}` is not an IP address; accepted: an {} address",
                        slice.address_type
                    ),
                )
            })?;
            if address.is_ipv4() != (slice.address_type == "IPv4") {
                return Err(obj.error(
                    format!("endpoints[{i}].addresses[{j}]"),
                    format!(
                        "`{address}` does not match addressType {}",
                        slice.address_type
                    ),
                ));
            }
            endpoints.push(Endpoint {
                address,
                ports: ports.clone(),
                conditions,
                pod: pod.clone(),
                service_account: None,
            });
        }
    }
    Ok(Slice {
        service: ServiceKey::new(namespace.clone(), service_name.clone()),
        namespace,
        name: obj.name,
        endpoints,
    })
}

pub fn pod(pod: &core::Pod) -> Result<Workload, ObjectError> {
    let obj = identify("Pod", &pod.metadata, true)?;
    // Only meshd's own are read (and kept).
    let annotations: BTreeMap<String, String> = pod
        .metadata
        .annotations
        .iter()
        .flatten()
        .filter(|(key, _)| key.starts_with(pod_annotations::PREFIX))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    let interception = match annotations.get(INTERCEPTION_ANNOTATION) {
        None => Interception::default(),
        Some(value) => Interception::parse(value).ok_or_else(|| {
            obj.error(
                format!("metadata.annotations[{INTERCEPTION_ANNOTATION}]"),
                format!(
                    "`{value}` is not valid; accepted: {}",
                    Interception::ACCEPTED
                ),
            )
        })?,
    };
    let ip = match pod.status.as_ref().and_then(|s| s.pod_ip.as_deref()) {
        None | Some("") => None,
        Some(ip) => Some(ip.parse::<IpAddr>().map_err(|_| {
            obj.error(
                "status.podIP",
                format!("`{ip}` is not an IP address; accepted: an IPv4 or IPv6 address"),
            )
        })?),
    };
    let service_account = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".to_string());
    let mtls = mtls_annotation(&obj, &annotations)?;
    // Translation reads it from the annotations; a bad value is refused
    // here, where the Pod can be named.
    if let Some(value) = annotations.get(pod_annotations::ACCESS_LOG)
        && pod_annotations::parse_flag(value).is_none()
    {
        return Err(obj.error(
            format!("metadata.annotations[{}]", pod_annotations::ACCESS_LOG),
            format!("`{value}` is not valid; accepted: true, false"),
        ));
    }
    if let Some(value) = annotations.get(pod_annotations::TRACING_SAMPLING)
        && pod_annotations::SamplingPercent::parse(value).is_none()
    {
        return Err(obj.error(
            format!(
                "metadata.annotations[{}]",
                pod_annotations::TRACING_SAMPLING
            ),
            format!(
                "`{value}` is not valid; accepted: {}",
                pod_annotations::TRACING_SAMPLING_ACCEPTED
            ),
        ));
    }
    Ok(Workload {
        mtls,
        namespace: obj.namespace.unwrap_or_default(),
        name: obj.name,
        ip,
        service_account,
        annotations,
        interception,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(yaml: &str) -> Result<Service, ObjectError> {
        service(&serde_yaml::from_str(yaml).unwrap())
    }

    #[test]
    fn service_ports_take_protocol_from_app_protocol_then_name() {
        let s = svc(r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 198.19.0.1
  ports:
  - {name: http-main, port: 80}
  - {name: api, port: 9090, appProtocol: grpc}
  - {name: db, port: 5432}
  - {name: dns, port: 53, protocol: UDP}
"#)
        .unwrap();
        assert_eq!(s.key, ServiceKey::new("shop", "web"));
        let protocols: Vec<_> = s.ports.iter().map(|p| (p.port, p.protocol)).collect();
        assert_eq!(
            protocols,
            [
                (80, Protocol::Http),
                (9090, Protocol::Grpc),
                (5432, Protocol::Tcp)
            ]
        );
    }

    #[test]
    fn service_errors_name_the_field_and_what_is_accepted() {
        let err = svc("{apiVersion: v1, kind: Service, metadata: {name: web}, spec: {clusterIP: 198.19.0.1, ports: [{port: 70000}]}}")
            .unwrap_err();
        assert_eq!(err.object, "Service default/web");
        assert_eq!(err.field, "spec.ports[0].port");
        assert!(err.message.contains("accepted: 1-65535"), "{err}");

        let err = svc("{apiVersion: v1, kind: Service, metadata: {name: web.shop, namespace: x}, spec: {clusterIP: 198.19.0.1}}").unwrap_err();
        assert_eq!(err.field, "metadata.name");
        assert!(err.message.contains("not a valid Service name"), "{err}");

        let err =
            svc("{apiVersion: v1, kind: Service, metadata: {name: web}, spec: {clusterIP: nope}}")
                .unwrap_err();
        assert_eq!(err.field, "spec.clusterIP");

        let err = svc("{apiVersion: v1, kind: Service, metadata: {name: web}, spec: {clusterIP: 198.19.0.1, ports: [{name: a, port: 80}, {name: b, port: 80}]}}")
            .unwrap_err();
        assert_eq!(err.field, "spec.ports[1].port");

        let err = svc("{apiVersion: v1, kind: Service, metadata: {name: web}, spec: {clusterIP: 198.19.0.1, ports: [{name: a, port: 80}, {port: 81}]}}")
            .unwrap_err();
        assert_eq!(err.field, "spec.ports[1].name");
    }

    #[test]
    fn external_name_services_need_no_cluster_ip() {
        let s = svc(r#"
apiVersion: v1
kind: Service
metadata: {name: payments, namespace: shop}
spec:
  type: ExternalName
  externalName: api.example.com.
  ports: [{name: http, port: 80}, {name: tcp-db, port: 5432}]
"#)
        .unwrap();
        assert_eq!(s.external_name.as_deref(), Some("api.example.com"));
        assert_eq!(s.vip, None);
        assert!(!s.is_headless());
        assert_eq!(s.ports.len(), 2);

        // Other service types keep their cluster IP and no external name.
        let s = svc("{apiVersion: v1, kind: Service, metadata: {name: web}, spec: {type: ClusterIP, clusterIP: 198.19.0.1, externalName: ignored.example.com}}").unwrap();
        assert_eq!(s.external_name, None);
        assert_eq!(s.vip, Some("198.19.0.1".parse().unwrap()));
        let s =
            svc("{apiVersion: v1, kind: Service, metadata: {name: db}, spec: {clusterIP: None}}")
                .unwrap();
        assert!(s.is_headless());
    }

    #[test]
    fn dual_stack_services_keep_every_cluster_ip() {
        let v4: IpAddr = "198.19.0.1".parse().unwrap();
        let v6: IpAddr = "fd00::1".parse().unwrap();
        for spec in [
            "{clusterIP: 198.19.0.1, clusterIPs: [198.19.0.1, 'fd00::1']}",
            "{clusterIPs: [198.19.0.1, 'fd00::1']}",
        ] {
            let s = svc(&format!(
                "{{apiVersion: v1, kind: Service, metadata: {{name: web}}, spec: {spec}}}"
            ))
            .unwrap();
            assert_eq!(s.vip, Some(v4), "{spec}");
            assert_eq!(s.secondary_vips, [v6], "{spec}");
        }
        let s = svc(
            "{apiVersion: v1, kind: Service, metadata: {name: web}, spec: {clusterIP: 'fd00::1'}}",
        )
        .unwrap();
        assert_eq!(s.vips().collect::<Vec<_>>(), [v6]);
        let s = svc("{apiVersion: v1, kind: Service, metadata: {name: db}, spec: {clusterIP: None, clusterIPs: [None]}}").unwrap();
        assert!(s.is_headless());

        for (spec, field, shown) in [
            (
                "{clusterIP: 198.19.0.1, clusterIPs: [198.19.0.2]}",
                "spec.clusterIPs[0]",
                "differs from spec.clusterIP",
            ),
            (
                "{clusterIPs: [198.19.0.1, 198.19.0.2]}",
                "spec.clusterIPs[1]",
                "accepted: at most one IPv4 and one IPv6 address",
            ),
            (
                "{clusterIPs: [198.19.0.1, 'fd00::1', 'fd00::2']}",
                "spec.clusterIPs[2]",
                "accepted: at most one IPv4 and one IPv6 address",
            ),
            (
                "{clusterIPs: [198.19.0.1, nope]}",
                "spec.clusterIPs[1]",
                "`nope` is not an IP address",
            ),
            (
                "{clusterIPs: [None, 198.19.0.1]}",
                "spec.clusterIPs",
                "accepted: [None]",
            ),
            ("{clusterIPs: []}", "spec.clusterIP", "is required"),
        ] {
            let err = svc(&format!(
                "{{apiVersion: v1, kind: Service, metadata: {{name: web}}, spec: {spec}}}"
            ))
            .unwrap_err();
            assert_eq!(err.field, field, "{spec}");
            assert!(err.message.contains(shown), "{spec}: {err}");
        }
    }

    #[test]
    fn external_name_errors_name_the_field_and_what_is_accepted() {
        for (name, shown) in [
            ("", "is required for a service of type ExternalName"),
            ("API.example.com", "`API.example.com` is not a DNS name"),
            ("api_v1.example.com", "is not a DNS name"),
            ("-api.example.com", "is not a DNS name"),
            ("api..example.com", "is not a DNS name"),
            (".", "is not a DNS name"),
            ("http://api.example.com", "is not a DNS name"),
        ] {
            let err = svc(&format!("{{apiVersion: v1, kind: Service, metadata: {{name: payments, namespace: shop}}, spec: {{type: ExternalName, externalName: '{name}'}}}}"))
                .unwrap_err();
            assert_eq!(err.object, "Service shop/payments");
            assert_eq!(err.field, "spec.externalName", "{name}");
            assert!(err.message.contains(shown), "{name}: {err}");
            assert!(err.message.contains("accepted: a DNS name"), "{err}");
        }
        let long = format!("{}.com", vec!["a".repeat(63); 4].join("."));
        let err = svc(&format!("{{apiVersion: v1, kind: Service, metadata: {{name: p}}, spec: {{type: ExternalName, externalName: {long}}}}}"))
            .unwrap_err();
        assert_eq!(err.field, "spec.externalName");

        let err = svc("{apiVersion: v1, kind: Service, metadata: {name: p}, spec: {type: ExternalName, externalName: api.example.com, clusterIP: 198.19.0.1}}")
            .unwrap_err();
        assert_eq!(err.field, "spec.clusterIP");
        assert!(err.message.contains("must be empty"), "{err}");
    }

    #[test]
    fn endpoint_slices_keep_conditions_and_pods() {
        let slice: discovery::EndpointSlice = serde_yaml::from_str(
            r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http-main, port: 8080}]
endpoints:
- addresses: [198.18.0.3]
  targetRef: {kind: Pod, name: web-0}
- addresses: [198.18.0.4]
  conditions: {ready: false, serving: true, terminating: true}
"#,
        )
        .unwrap();
        let s = endpoint_slice(&slice).unwrap();
        assert_eq!(s.service, ServiceKey::new("shop", "web"));
        assert_eq!(s.endpoints.len(), 2);
        assert_eq!(s.endpoints[0].pod.as_deref(), Some("web-0"));
        assert_eq!(s.endpoints[0].ports["http-main"], 8080);
        assert!(s.endpoints[0].conditions.ready);
        assert!(!s.endpoints[1].conditions.ready);
        assert!(s.endpoints[1].conditions.terminating);
    }

    #[test]
    fn endpoint_slice_without_service_label_is_rejected() {
        let slice: discovery::EndpointSlice = serde_yaml::from_str(
            "{apiVersion: discovery.k8s.io/v1, kind: EndpointSlice, metadata: {name: x}, addressType: IPv4, endpoints: []}",
        )
        .unwrap();
        let err = endpoint_slice(&slice).unwrap_err();
        assert_eq!(err.field, "metadata.labels[kubernetes.io/service-name]");
    }

    #[test]
    fn services_and_slices_beyond_kubernetes_bounds_are_refused() {
        let ports = |n: usize| {
            (0..n)
                .map(|i| format!("{{name: p{i}, port: {}}}", i + 1))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let svc_with = |n| {
            svc(&format!(
                "{{apiVersion: v1, kind: Service, metadata: {{name: web, namespace: shop}}, spec: {{clusterIP: 198.19.0.1, ports: [{}]}}}}",
                ports(n)
            ))
        };
        assert_eq!(svc_with(MAX_SERVICE_PORTS).unwrap().ports.len(), 100);
        let Err(err) = svc_with(20_000) else {
            panic!("a Service with 20,000 ports was accepted");
        };
        assert_eq!(err.object, "Service shop/web");
        assert_eq!(err.field, "spec.ports");
        assert_eq!(
            err.message,
            "20000 ports; accepted: at most 100 (the most an EndpointSlice can carry)"
        );

        let slice = |ports_n: usize, endpoints: usize, addresses: usize| {
            let addresses = (0..addresses)
                .map(|a| format!("198.18.{}.{}", a / 256, a % 256))
                .collect::<Vec<_>>()
                .join(", ");
            let endpoints = vec![format!("{{addresses: [{addresses}]}}"); endpoints].join(", ");
            let slice: discovery::EndpointSlice = serde_yaml::from_str(&format!(
                "{{apiVersion: discovery.k8s.io/v1, kind: EndpointSlice, metadata: {{name: web-1, namespace: shop, labels: {{kubernetes.io/service-name: web}}}}, addressType: IPv4, ports: [{}], endpoints: [{endpoints}]}}",
                ports(ports_n)
            ))
            .unwrap();
            endpoint_slice(&slice)
        };
        assert!(slice(MAX_SLICE_PORTS, MAX_SLICE_ENDPOINTS, 1).is_ok());
        assert!(slice(1, 1, MAX_ENDPOINT_ADDRESSES).is_ok());
        for (ports, endpoints, addresses, field, message) in [
            (101, 1, 1, "ports", "101 ports; accepted: at most 100"),
            (
                1,
                1001,
                1,
                "endpoints",
                "1001 endpoints; accepted: at most 1000",
            ),
            (
                1,
                1,
                101,
                "endpoints[0].addresses",
                "101 addresses; accepted: at most 100",
            ),
        ] {
            let Err(err) = slice(ports, endpoints, addresses) else {
                panic!("{field}: accepted beyond the bound");
            };
            assert_eq!(err.object, "EndpointSlice shop/web-1");
            assert_eq!(err.field, field);
            assert_eq!(err.message, message);
        }
    }

    #[test]
    fn pod_interception_annotation_is_validated() {
        let p: core::Pod = serde_yaml::from_str(
            "{apiVersion: v1, kind: Pod, metadata: {name: a, namespace: n, annotations: {meshd.io/interception: tproxy}}}",
        )
        .unwrap();
        let err = pod(&p).unwrap_err();
        assert_eq!(err.field, "metadata.annotations[meshd.io/interception]");
        assert!(err.message.contains("accepted: redirect, none"), "{err}");
    }

    #[test]
    fn a_pod_keeps_only_meshds_annotations() {
        let p: core::Pod = serde_yaml::from_str(
            "{apiVersion: v1, kind: Pod, metadata: {name: a, namespace: n, labels: {app: a}, annotations: {meshd.io/access-log: 'true', meshd.io/egress: 'registry-only', kubectl.kubernetes.io/last-applied-configuration: '{\"big\": true}', prometheus.io/scrape: 'true'}}}",
        )
        .unwrap();
        let workload = pod(&p).unwrap();
        assert_eq!(
            workload.annotations.keys().collect::<Vec<_>>(),
            ["meshd.io/access-log", "meshd.io/egress"]
        );
    }

    #[test]
    fn pod_tracing_sampling_annotation_is_validated() {
        let p: core::Pod = serde_yaml::from_str(
            "{apiVersion: v1, kind: Pod, metadata: {name: a, namespace: n, annotations: {meshd.io/tracing-sampling: '150'}}}",
        )
        .unwrap();
        let err = pod(&p).unwrap_err();
        assert_eq!(err.field, "metadata.annotations[meshd.io/tracing-sampling]");
        let text = err.to_string();
        assert!(
            text.contains("`150`") && text.contains("from 0 to 100") && text.contains("n/a"),
            "{text}"
        );
    }
}
