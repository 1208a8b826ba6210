//! What the sidecar's Prometheus endpoint (15090, `/stats/prometheus`)
//! exports about traffic, with upstream Envoy only: Envoy's own cluster,
//! HTTP connection manager and TCP proxy statistics, labelled with the
//! mesh's words by Envoy's tag extraction.
//!
//! The labels come from two places:
//!
//! - fixed tags from the bootstrap: the proxy's own workload, namespace
//!   and SPIFFE identity, on every series ([`WORKLOAD`], [`WORKLOAD_NAMESPACE`],
//!   [`WORKLOAD_IDENTITY`]);
//! - tags extracted from the names the control plane gives clusters and
//!   stat prefixes (see `controlplane/src/translate`):
//!
//! ```text
//! cluster.outbound|80||reviews.shop.svc.cluster.local.upstream_rq_503
//!         └direction └port └service └namespace          └envoy_response_code
//! http.inbound_8080_mtls.downstream_rq_5xx          tcp.inbound_5432_plaintext.downstream_cx_total
//!      └direction └port └connection_security
//! ```
//!
//! Cardinality stays bounded: no label carries an endpoint, a pod IP, a
//! path or a user agent; Envoy keeps no per-host series in Prometheus; and
//! the [`stats_matcher`] leaves out the cluster statistics the mesh does
//! not use (circuit-breaker states, load-balancer internals, config update
//! counters, per-worker listener copies), about half of each cluster's.

use serde_json::{Value, json};

/// The proxy's own workload: for `direction="outbound"` series the
/// caller, for `direction="inbound"` ones the callee.
pub const WORKLOAD: &str = "workload";
/// The proxy's namespace.
pub const WORKLOAD_NAMESPACE: &str = "workload_namespace";
/// The proxy's SPIFFE ID.
pub const WORKLOAD_IDENTITY: &str = "workload_identity";
/// `inbound` (served by the proxy's app) or `outbound` (called by it).
pub const DIRECTION: &str = "direction";
/// The service called (outbound series).
pub const DESTINATION_SERVICE: &str = "destination_service";
/// The called service's namespace (outbound series).
pub const DESTINATION_NAMESPACE: &str = "destination_namespace";
/// The service port called (outbound) or the app port served (inbound).
pub const DESTINATION_PORT: &str = "destination_port";
/// `mtls` or `plaintext`: how the caller connected (inbound series of the
/// HTTP connection manager and the TCP proxy).
pub const CONNECTION_SECURITY: &str = "connection_security";

/// How an inbound connection arrived, as its filter chain knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionSecurity {
    Mtls,
    Plaintext,
}

impl ConnectionSecurity {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionSecurity::Mtls => "mtls",
            ConnectionSecurity::Plaintext => "plaintext",
        }
    }
}

/// The stat prefix of the HTTP connection manager or TCP proxy serving an
/// inbound port over one kind of connection: `inbound_8080_mtls`.
pub fn inbound_stat_prefix(port: u16, security: ConnectionSecurity) -> String {
    format!("inbound_{port}_{}", security.as_str())
}

/// An outbound cluster's name, up to the statistic's name: a service port's
/// `outbound|<port>|<subset>|<service>.<namespace>.svc.cluster.local` (the
/// only dotted cluster names), else a name without dots. Envoy's own
/// default stops at the first dot.
const CLUSTER_NAME: &str = r"(outbound\|\d+\|[^|.]*\|[^|.]+\.[^|.]+\.svc\.cluster\.local|[^.]+?)";

/// Envoy's default tags the mesh keeps (their default expressions): with
/// `use_all_default_tags` off, `envoy.cluster_name` and `envoy.tcp_prefix`
/// can take the expressions that understand dotted cluster names.
const DEFAULT_TAGS: &[&str] = &[
    "envoy.response_code",
    "envoy.response_code_class",
    "envoy.http_conn_manager_prefix",
    "envoy.listener_address",
    "envoy.worker_id",
    "envoy.ssl_cipher",
    "envoy.ssl_curve",
    "envoy.ssl_sigalg",
    "envoy.ssl_version",
    "envoy.virtual_host",
    "envoy.virtual_cluster",
    "envoy.route",
    "envoy.rds_route_config",
    "envoy.fault_downstream_cluster",
];

/// Tag extraction: the first group of each expression is taken out of the
/// statistic's name, the second is the tag's value.
fn tag_specifiers() -> Vec<Value> {
    let regex = |name: &str, regex: String| json!({ "tag_name": name, "regex": regex });
    let mut tags: Vec<Value> = DEFAULT_TAGS
        .iter()
        .map(|name| json!({ "tag_name": name }))
        .collect();
    tags.extend([
        regex(
            "envoy.cluster_name",
            format!(r"^cluster\.({CLUSTER_NAME}\.)"),
        ),
        regex("envoy.tcp_prefix", format!(r"^tcp\.({CLUSTER_NAME}\.)")),
        regex(
            DIRECTION,
            r"^(?:cluster|http|tcp)\.((inbound|outbound)[|_])".into(),
        ),
        regex(
            DESTINATION_SERVICE,
            r"^(?:cluster|tcp)\.outbound\|\d+\|[^|.]*\|(([^|.]+)\.)".into(),
        ),
        regex(
            DESTINATION_NAMESPACE,
            r"^(?:cluster|tcp)\.outbound\|\d+\|[^|.]*\|[^|.]+\.(([^|.]+)\.)svc\.".into(),
        ),
        regex(
            DESTINATION_PORT,
            r"^(?:(?:cluster|tcp)\.(?:in|out)bound\||(?:http|tcp)\.(?:in|out)bound_)((\d+)[|_.])"
                .into(),
        ),
        regex(
            CONNECTION_SECURITY,
            r"^(?:http|tcp)\.inbound_\d+_((mtls|plaintext)\.)".into(),
        ),
    ]);
    tags
}

/// Statistics left out: each cluster's that no mesh metric, dashboard or
/// alert reads, and per-worker copies of listener statistics.
fn stats_matcher() -> Value {
    let cluster = [
        r"circuit_breakers\..+",
        r"lb_.+",
        r"assignment_.+",
        r"update_.+",
        r"http1\..+",
        r"external\..+",
        r"internal\..+",
        r"upstream_flow_control_.+",
        r"upstream_cx_http[123]_total",
        r"upstream_internal_redirect_.+",
        r"upstream_rq_0rtt",
        r"upstream_cx_connect_with_0_rtt",
        r"upstream_http3_broken",
        r"default\.total_match_count",
        r"upstream_r[qs]_headers_count",
        r"upstream_rq_per_cx",
        r"upstream_cx_[rt]x_bytes_buffered",
        r"warming_state",
        r"version",
        r"max_host_weight",
        r"membership_(?:change|degraded|excluded)",
        r"bind_errors",
        r"upstream_rq_maintenance_mode",
        r"upstream_queue_overloaded",
        r"retry_or_shadow_abandoned",
    ]
    .join("|");
    json!({
        "exclusion_list": { "patterns": [
            { "safe_regex": { "regex": format!(r"^cluster\..+\.(?:{cluster})\z") } },
            { "safe_regex": { "regex": r"^listener\..+\.worker_\d+\..+\z" } },
        ] },
    })
}

/// The bootstrap's `stats_config` for a proxy of `workload` in `namespace`
/// with SPIFFE ID `identity`.
pub fn stats_config(workload: &str, namespace: &str, identity: &str) -> Value {
    let mut tags = vec![
        json!({ "tag_name": WORKLOAD, "fixed_value": workload }),
        json!({ "tag_name": WORKLOAD_NAMESPACE, "fixed_value": namespace }),
        json!({ "tag_name": WORKLOAD_IDENTITY, "fixed_value": identity }),
    ];
    tags.extend(tag_specifiers());
    json!({
        "use_all_default_tags": false,
        "stats_tags": tags,
        "stats_matcher": stats_matcher(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_proxy_names_itself_and_keeps_the_mesh_tags() {
        let config = stats_config("web", "shop", "spiffe://cluster.local/ns/shop/sa/web");
        let tags = config["stats_tags"].as_array().unwrap();
        assert_eq!(
            tags[0],
            json!({ "tag_name": "workload", "fixed_value": "web" })
        );
        let names: Vec<&str> = tags
            .iter()
            .map(|t| t["tag_name"].as_str().unwrap())
            .collect();
        for name in [
            WORKLOAD_IDENTITY,
            DIRECTION,
            DESTINATION_SERVICE,
            DESTINATION_NAMESPACE,
            DESTINATION_PORT,
            CONNECTION_SECURITY,
            "envoy.response_code",
            "envoy.cluster_name",
        ] {
            assert_eq!(names.iter().filter(|n| **n == name).count(), 1, "{name}");
        }
        assert_eq!(
            inbound_stat_prefix(8080, ConnectionSecurity::Mtls),
            "inbound_8080_mtls"
        );
    }
}
