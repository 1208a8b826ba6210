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
//! cluster.outbound|80|mtls|reviews.shop.svc.cluster.local.upstream_rq_503
//!         └direction └port └connection_security           └envoy_response_code
//!                              └service └namespace
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
/// The caller's SPIFFE ID (empty for a plaintext caller), on the serving
/// proxy's metrics by caller only: `envoy_inbound_by_caller_*` and the
/// authorization denial counters, each bounded by a per-proxy cap on its
/// series.
pub const CALLER_IDENTITY: &str = "caller_identity";
/// The HTTP status, named as Envoy's own tag is.
pub const RESPONSE_CODE: &str = "envoy_response_code";
/// `mtls` or `plaintext`: how the caller connected (inbound series of the
/// HTTP connection manager and the TCP proxy); on outbound cluster series,
/// how the proxy connects to the service's endpoints (`mixed` while some
/// take mTLS and some do not).
pub const CONNECTION_SECURITY: &str = "connection_security";

/// How a connection is secured: an inbound one as its filter chain knows
/// it; an outbound cluster's as its endpoints take it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionSecurity {
    Mtls,
    Plaintext,
    /// Outbound only: some of the service's endpoints take mTLS and some
    /// do not (a migration in progress); a request goes either way.
    Mixed,
}

impl ConnectionSecurity {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionSecurity::Mtls => "mtls",
            ConnectionSecurity::Plaintext => "plaintext",
            ConnectionSecurity::Mixed => "mixed",
        }
    }
}

/// The statistics name (Envoy's `alt_stat_name`) of outbound cluster
/// `cluster` whose connections are secured as `security`: the security
/// takes the subset's place (`outbound|80|mtls|reviews.shop.svc.cluster.local`),
/// or joins it (`outbound|80|v1+mtls|…`). `None` for another shape of name.
///
/// Not a new field: a proxy whose bootstrap predates this label still
/// reads the service, namespace and port from such a name (only its
/// `envoy_cluster_name` then shows the statistics name).
pub fn outbound_stat_name(cluster: &str, security: ConnectionSecurity) -> Option<String> {
    let mut parts = cluster.splitn(4, '|');
    let (Some("outbound"), Some(port), Some(subset), Some(fqdn)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let security = security.as_str();
    Some(match subset {
        "" => format!("outbound|{port}|{security}|{fqdn}"),
        // A plaintext twin says it already.
        same if same == security => cluster.to_string(),
        subset => format!("outbound|{port}|{subset}+{security}|{fqdn}"),
    })
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
            r"^(?:(?:http|tcp)\.inbound_\d+_|cluster\.outbound\|\d+\|(?:[^|.+]*\+)?)((mtls|plaintext|mixed)[.|])"
                .into(),
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

    #[test]
    fn an_outbound_stat_name_carries_its_security_where_old_tags_still_read_it() {
        let reviews = "outbound|80||reviews.shop.svc.cluster.local";
        let name = |cluster, security| outbound_stat_name(cluster, security).unwrap();
        assert_eq!(
            name(reviews, ConnectionSecurity::Mtls),
            "outbound|80|mtls|reviews.shop.svc.cluster.local"
        );
        assert_eq!(
            name(
                "outbound|80|v1|reviews.shop.svc.cluster.local",
                ConnectionSecurity::Mixed
            ),
            "outbound|80|v1+mixed|reviews.shop.svc.cluster.local"
        );
        let twin = "outbound|80|plaintext|reviews.shop.svc.cluster.local";
        assert_eq!(name(twin, ConnectionSecurity::Plaintext), twin);
        assert_eq!(
            outbound_stat_name("inbound|8080||", ConnectionSecurity::Mtls),
            None
        );

        // Each tag expression on a statistic of such a cluster, as Envoy
        // applies it: the first group is cut from the name, the second is
        // the value.
        let tags = tag_specifiers();
        let value = |tag: &str, stat: &str| -> Option<String> {
            let spec = tags.iter().find(|t| t["tag_name"] == tag)?;
            let re = regex::Regex::new(spec["regex"].as_str()?).unwrap();
            re.captures(stat).map(|c| c[2].to_string())
        };
        for (subset, security) in [
            ("mtls", "mtls"),
            ("v1+mixed", "mixed"),
            ("plaintext", "plaintext"),
        ] {
            let stat = format!(
                "cluster.outbound|80|{subset}|reviews.shop.svc.cluster.local.upstream_rq_503"
            );
            assert_eq!(
                value(CONNECTION_SECURITY, &stat).as_deref(),
                Some(security),
                "{stat}"
            );
            assert_eq!(
                value(DESTINATION_SERVICE, &stat).as_deref(),
                Some("reviews")
            );
            assert_eq!(value(DESTINATION_NAMESPACE, &stat).as_deref(), Some("shop"));
            assert_eq!(value(DESTINATION_PORT, &stat).as_deref(), Some("80"));
            assert_eq!(value("envoy.response_code", &stat), None, "Envoy's own");
        }
        // A subset that is not a security, and inbound chains, as before.
        let http = "cluster.outbound|80|http|reviews.shop.svc.cluster.local.upstream_rq_503";
        assert_eq!(value(CONNECTION_SECURITY, http), None);
        assert_eq!(
            value(
                CONNECTION_SECURITY,
                "http.inbound_8080_plaintext.downstream_rq_5xx"
            )
            .as_deref(),
            Some("plaintext")
        );
    }
}
