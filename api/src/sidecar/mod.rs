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
}
