//! What the control plane reads from a workload's (and its namespace's)
//! annotations: the mTLS mode of its inbound side and how its proxy
//! captures traffic. The injector reads the same keys to set the pod up.

/// Namespace or Pod annotation setting the mTLS mode (read by discovery).
pub const MTLS: &str = "meshd.io/mtls";
/// Pod annotation choosing how the proxy captures traffic (read by
/// discovery and the injector).
pub const INTERCEPTION: &str = "meshd.io/interception";

/// How a proxy receives its application's traffic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Interception {
    /// iptables redirects the pod's TCP traffic to the proxy (15001 out,
    /// 15006 in): applications are unaware of the proxy.
    #[default]
    Redirect,
    /// No capture: the application uses the proxy as an explicit HTTP proxy
    /// on 15001, and the proxy receives inbound traffic on the pod IP at each
    /// target port, forwarding it to the app on 127.0.0.1. This is what lets
    /// several "pods" share one loopback (the demo, unprivileged tests).
    None,
}

impl Interception {
    pub const ACCEPTED: &'static str = "redirect, none";

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "redirect" => Some(Interception::Redirect),
            "none" => Some(Interception::None),
            _ => None,
        }
    }
}

/// How a workload's inbound side treats TLS, set mesh-wide and overridden
/// per namespace and per workload with the `meshd.io/mtls` annotation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MtlsMode {
    /// Only mutual TLS from mesh workloads is accepted.
    Strict,
    /// Mutual TLS and plaintext are both accepted (migration).
    #[default]
    Permissive,
    /// Plaintext only; mesh clients do not use TLS towards it.
    Disable,
}

impl MtlsMode {
    pub const ACCEPTED: &'static str = "STRICT, PERMISSIVE, DISABLE";

    pub fn parse(value: &str) -> Option<Self> {
        match value.to_ascii_uppercase().as_str() {
            "STRICT" => Some(MtlsMode::Strict),
            "PERMISSIVE" => Some(MtlsMode::Permissive),
            "DISABLE" => Some(MtlsMode::Disable),
            _ => None,
        }
    }

    /// The value as users write it.
    pub fn name(self) -> &'static str {
        match self {
            MtlsMode::Strict => "STRICT",
            MtlsMode::Permissive => "PERMISSIVE",
            MtlsMode::Disable => "DISABLE",
        }
    }
}
