//! Names: of services (`namespace/name`, their cluster domain names), of
//! proxies (the xDS node id of a pod), and the rule every Kubernetes name
//! meshd builds a domain from must follow.

use std::fmt;

/// The domain suffix of in-cluster service names.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// A service's identity: namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    pub namespace: String,
    pub name: String,
}

impl ServiceKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// `name.namespace.svc.cluster.local`
    pub fn fqdn(&self) -> String {
        format!("{}.{}.svc.{CLUSTER_DOMAIN}", self.name, self.namespace)
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The xDS node id of the proxy of pod `pod` in `namespace`: `pod.namespace`.
pub fn node_id(namespace: &str, pod: &str) -> String {
    format!("{pod}.{namespace}")
}

/// Whether `name` is a DNS label as Kubernetes requires of namespace and
/// service names (RFC 1123: lowercase alphanumerics and `-`, at most 63).
/// Service names become route domains (`name.namespace`), so a dot in one
/// could collide with another service's domain and make Envoy reject the
/// whole route configuration.
pub fn is_dns_label(name: &str) -> bool {
    name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

pub const DNS_LABEL: &str = "lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters";
