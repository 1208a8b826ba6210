//! What translation produces: xDS resources by kind, with a version and the
//! clusters they refer to, the names of the resources every proxy has, and
//! the mesh-wide settings a translation follows.

use std::collections::BTreeMap;
use std::hash::Hasher;
use std::sync::Arc;

use meshd_proto::envoy::config::core::v3::{
    AggregatedConfigSource, ApiVersion, ConfigSource, config_source::ConfigSourceSpecifier,
};
use meshd_proto::{Any, to_any, type_url};

use crate::model::MtlsMode;
use meshd_api::annotations::authorization::DefaultPolicy;
use meshd_api::annotations::pod::SamplingPercent;

/// The names of the resources every proxy has.
pub const OUTBOUND_LISTENER: &str = "outbound";
/// What the name of each destination port's outbound listener starts
/// with: `0.0.0.0_80`, as Istio names its own.
pub const OUTBOUND_PORT_LISTENER_PREFIX: &str = "0.0.0.0_";
pub const INBOUND_LISTENER: &str = "inbound";
pub const PASSTHROUGH_CLUSTER: &str = "PassthroughCluster";
/// The inbound catch-all's way to the app: the original destination, from
/// `meshd_api::sidecar::INBOUND_PASSTHROUGH_SOURCE`.
pub const INBOUND_PASSTHROUGH_CLUSTER: &str = "InboundPassthroughCluster";

/// The SDS name of a proxy's own certificate and key.
pub const DEFAULT_SECRET: &str = "default";
/// The SDS name of the trust bundle.
pub const ROOT_SECRET: &str = "ROOTCA";

/// The route configuration behind the explicit-proxy listener of workloads
/// without traffic capture.
pub const HTTP_PROXY_ROUTE: &str = "outbound_http_proxy";

/// The xDS resource types, in the order a push must follow: a cluster
/// exists before its endpoints, and before a listener or route that
/// points at it; a listener before the routes it names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Secret,
    Cluster,
    Endpoint,
    Listener,
    Route,
}

impl Kind {
    /// Secrets come first: clusters and listeners that use them wait
    /// (warm) until they arrive.
    pub const PUSH_ORDER: [Kind; 5] = [
        Kind::Secret,
        Kind::Cluster,
        Kind::Endpoint,
        Kind::Listener,
        Kind::Route,
    ];

    pub fn type_url(self) -> &'static str {
        match self {
            Kind::Secret => type_url::SECRET,
            Kind::Cluster => type_url::CLUSTER,
            Kind::Endpoint => type_url::ENDPOINT,
            Kind::Listener => type_url::LISTENER,
            Kind::Route => type_url::ROUTE,
        }
    }

    pub fn from_type_url(url: &str) -> Option<Self> {
        Self::PUSH_ORDER.into_iter().find(|k| k.type_url() == url)
    }

    /// Listeners and clusters are fetched as a whole (wildcard); endpoints
    /// and routes by the names the proxy's clusters and listeners use.
    pub fn is_wildcard(self) -> bool {
        matches!(self, Kind::Cluster | Kind::Listener)
    }

    pub fn short_name(self) -> &'static str {
        match self {
            Kind::Secret => "SDS",
            Kind::Cluster => "CDS",
            Kind::Endpoint => "EDS",
            Kind::Listener => "LDS",
            Kind::Route => "RDS",
        }
    }
}

/// One translated xDS resource.
#[derive(PartialEq)]
pub struct Resource {
    pub name: String,
    /// A hash of the encoded resource: equal versions mean equal content.
    pub version: String,
    pub body: Any,
    /// The clusters this listener or route configuration routes to.
    pub cluster_refs: Vec<String>,
    /// [`entry_digest`] of this resource under its own name, worked out
    /// once: every proxy's session digests the sets it is sent (a version
    /// per set), and hashing a thousand names per proxy was a tenth of a
    /// cold sync.
    pub digest: u64,
}

/// Never the body: a secret's body holds its private key.
impl std::fmt::Debug for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resource")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("type_url", &self.body.type_url)
            .field("bytes", &self.body.value.len())
            .finish()
    }
}

impl Resource {
    pub(crate) fn new<M: prost::Name>(
        name: String,
        message: &M,
        cluster_refs: Vec<String>,
    ) -> Arc<Self> {
        let body = to_any(message);
        Self::from_any(name, body, cluster_refs)
    }

    /// A resource of type `M` from its encoded bytes (put together from
    /// parts encoded once, see `hosts`).
    pub(crate) fn encoded<M: prost::Name>(
        name: String,
        value: Vec<u8>,
        cluster_refs: Vec<String>,
    ) -> Arc<Self> {
        let body = Any {
            type_url: M::type_url(),
            value,
        };
        Self::from_any(name, body, cluster_refs)
    }

    fn from_any(name: String, body: Any, cluster_refs: Vec<String>) -> Arc<Self> {
        let mut hasher = std::hash::DefaultHasher::new();
        hasher.write(&body.value);
        let version = format!("{:016x}", hasher.finish());
        Arc::new(Resource {
            digest: entry_digest(&name, &version),
            name,
            version,
            body,
            cluster_refs,
        })
    }
}

/// One named version's share of a set's digest: the digest of a set is the
/// XOR of its entries', so changing a few entries of a large set updates
/// it without walking the set.
pub fn entry_digest(name: &str, version: &str) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    hasher.write(name.as_bytes());
    hasher.write_u8(0);
    hasher.write(version.as_bytes());
    hasher.finish()
}

pub type Resources = BTreeMap<String, Arc<Resource>>;

/// Mesh-wide translation settings.
#[derive(Clone, Debug, Default)]
pub struct TranslateOptions {
    /// Mutual TLS between workloads; `None` when the control plane runs
    /// without a CA (plaintext xDS, no secrets to hand out).
    pub mtls: Option<MtlsOptions>,
    pub telemetry: Telemetry,
    /// Who may call a Service without authorization annotations
    /// (`--authorization-default`).
    pub authorization: DefaultPolicy,
}

/// Mesh-wide telemetry settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Telemetry {
    /// JSON access logs on every proxy's standard output, unless its Pod's
    /// `meshd.io/access-log` says otherwise.
    pub access_log: bool,
    /// Spans for HTTP requests, sent to an OpenTelemetry collector; `None`:
    /// no tracing.
    pub tracing: Option<Tracing>,
}

/// Where the proxies send their spans, and how many requests they trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tracing {
    /// The collector's OTLP/gRPC address.
    pub collector: Collector,
    /// The share of requests traced, unless a Pod's
    /// `meshd.io/tracing-sampling` says otherwise.
    pub sampling: SamplingPercent,
}

/// An OpenTelemetry collector's OTLP/gRPC endpoint: `HOST:PORT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Collector {
    /// A DNS name or an IP address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
}

impl Collector {
    /// What [`Collector::parse`] accepts, for error messages.
    pub const ACCEPTED: &str =
        "HOST:PORT, where HOST is a DNS name or an IP address ([IPv6]:PORT) and PORT is 1-65535";

    /// Parses `HOST:PORT` (`otel-collector.observability:4317`,
    /// `10.0.0.7:4317`, `[fd00::7]:4317`).
    pub fn parse(value: &str) -> Option<Collector> {
        let (host, port) = value.rsplit_once(':')?;
        let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
        let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(v6) => v6.parse::<std::net::Ipv6Addr>().ok()?.to_string(),
            None if host.parse::<std::net::Ipv4Addr>().is_ok() => host.to_string(),
            None => {
                let label = |l: &str| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                        && !l.starts_with('-')
                        && !l.ends_with('-')
                };
                let name = host.strip_suffix('.').unwrap_or(host);
                if name.len() > 253 || !name.split('.').all(label) {
                    return None;
                }
                host.to_string()
            }
        };
        Some(Collector { host, port })
    }
}

impl std::fmt::Display for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

#[derive(Clone, Debug)]
pub struct MtlsOptions {
    pub trust_domain: String,
    pub default_mode: MtlsMode,
}

/// Where every dynamic resource (EDS, RDS, SDS) comes from: the ADS
/// stream the proxy already has open.
pub(super) fn ads() -> Option<ConfigSource> {
    Some(ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    })
}

/// Decodes a resource back into its message (tests, debug endpoints).
pub fn decode<M: prost::Message + Default>(resource: &Resource) -> Result<M, prost::DecodeError> {
    M::decode(resource.body.value.as_slice())
}
