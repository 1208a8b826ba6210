//! The contract between the control plane and the sidecar it manages: the
//! ports the proxy owns inside a pod, and the Envoy bootstrap it starts
//! with (node id, the xDS cluster, its identity files). The injector puts
//! both into pods; `meshd bootstrap` writes them for a proxy run by hand.

pub mod bootstrap;
pub mod stats;

/// Ports the sidecar owns inside a pod.
pub mod ports {
    pub const OUTBOUND: u16 = 15001;
    pub const INBOUND: u16 = 15006;
    pub const ADMIN: u16 = 15000;
    pub const READINESS: u16 = 15021;
    pub const PROMETHEUS: u16 = 15090;
    /// Every one of them: no outbound listener of a Service port takes one
    /// of these addresses.
    pub const ALL: [u16; 5] = [OUTBOUND, INBOUND, ADMIN, READINESS, PROMETHEUS];
}

/// The source address of the connections the sidecar passes on to its own
/// pod's app for ports no Service declares (the inbound catch-all). The
/// capture rules send the sidecar's other connections to its own pod's
/// address back through the inbound side (so a pod calling a Service whose
/// endpoint is itself gets mTLS on both ends); these must not be, or they
/// would loop, so they leave from this loopback address, which the rules
/// let through (Istio uses the same one).
pub const INBOUND_PASSTHROUGH_SOURCE: std::net::Ipv4Addr = std::net::Ipv4Addr::new(127, 0, 0, 6);

/// The proxy's namespace and workload, in its environment (the injector
/// sets them from the downward API): the bootstrap's fixed tags read them
/// through Kubernetes' `$(VAR)` expansion, and the authorization denial
/// counters, whose tags Envoy does not extract from names, through Envoy's
/// `%ENVIRONMENT(VAR)%`.
pub const POD_NAMESPACE_ENV: &str = "MESHD_POD_NAMESPACE";
pub const WORKLOAD_ENV: &str = "MESHD_WORKLOAD";

/// The environment variable Envoy's OpenTelemetry tracer reads resource
/// attributes from (the control plane configures its `environment`
/// resource detector): the injector sets it to name the workload, so the
/// spans of every proxy name their workload while the proxies of a
/// namespace still share one listener.
pub const TRACING_RESOURCE_ENV: &str = "OTEL_RESOURCE_ATTRIBUTES";

/// The value of [`TRACING_RESOURCE_ENV`] for `workload` (a DNS label, or a
/// `$(VAR)` reference Kubernetes expands).
pub fn tracing_resource(workload: &str) -> String {
    format!("service.name={workload}")
}
