//! What a proxy was sent, rendered for `GET /debug/xds/proxies/{node}/config`
//! and `meshd proxy-config`, in the shape of Envoy's own `/config_dump`
//! (`envoy.admin.v3.*ConfigDump`, original field names, proto3 JSON
//! mapping) so the two can be compared.
//!
//! ```text
//! debug handler ── ServerState::inspect ──> stream task (between messages)
//!        │            pointers to the snapshot's shared resources <──┘
//!        └─ render: decode each resource, keep the fields below, JSON
//! ```
//!
//! `envoy-types` has no serde or descriptors, so this is not the full
//! protobuf JSON mapping: each resource is rendered with the fields an
//! operator reads (and `meshd proxy-config` tabulates): names, types,
//! addresses, filter chains and their matches, TLS transport sockets,
//! virtual hosts, route matches, backends, timeouts, retries, endpoints
//! and their health, certificates. Every field rendered is rendered as
//! Envoy renders it (defaults omitted, durations as `"1.500s"`, wrapper
//! types as plain numbers), so a field-by-field comparison with Envoy's
//! dump holds.
//!
//! A secret's private key is never rendered: like Envoy's dump, it reads
//! `[redacted]`. Certificates are rendered whole (they are public), and
//! summarised ([`CertificateInfo`]) for the tables.

use std::collections::BTreeMap;

use base64::Engine;
use meshd_proto::envoy::config::cluster::v3::{Cluster, cluster};
use meshd_proto::envoy::config::core::v3::{
    Address, DataSource, HealthStatus, Metadata, TransportSocket, address, data_source,
    socket_address, transport_socket,
};
use meshd_proto::envoy::config::endpoint::v3::{ClusterLoadAssignment, lb_endpoint};
use meshd_proto::envoy::config::listener::v3::{FilterChain, FilterChainMatch, Listener, filter};
use meshd_proto::envoy::config::route::v3::{
    HeaderMatcher, RouteConfiguration, header_matcher, route, route_action, route_match,
};
use meshd_proto::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager,
};
use meshd_proto::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use meshd_proto::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};
use meshd_proto::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use meshd_proto::{Any, Duration, Struct};
use prost::Name;
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::{Inspection, TypeInspection};
use crate::translate::{Kind, Resource, decode};

/// What the debug endpoint answers: the proxy's status, per-resource
/// acknowledgements where kept, the config dump, and certificate summaries.
#[derive(Debug, Serialize)]
pub struct ProxyConfig {
    #[serde(flatten)]
    pub status: super::ProxyStatus,
    /// For listeners and routes: what the proxy acknowledged, by name
    /// (version). Other types are acknowledged as a whole (`types`).
    pub acknowledged: BTreeMap<&'static str, BTreeMap<String, String>>,
    pub config_dump: Value,
    /// The certificates in the secrets the proxy was sent.
    pub certificates: Vec<CertificateInfo>,
    /// Who may call the proxy's workload, as the control plane has it now.
    pub authorization: Option<crate::translate::WorkloadAuthorization>,
}

/// One certificate of a secret, as `meshd proxy-config secret` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct CertificateInfo {
    /// The secret it is in (`default`: the proxy's own; `ROOTCA`: the
    /// trust bundle).
    pub secret: String,
    pub serial: String,
    pub spiffe_id: Option<String>,
    pub subject: String,
    pub issuer: String,
    /// RFC 3339.
    pub not_before: String,
    pub not_after: String,
}

/// The kinds `type=` names: `cluster`, `endpoint`, `listener`, `route`,
/// `secret`, or `all` (comma-separated).
pub fn parse_kinds(text: &str) -> Result<Vec<Kind>, String> {
    let mut kinds = Vec::new();
    for word in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        let found: &[Kind] = match word {
            "all" => &Kind::PUSH_ORDER,
            "cluster" | "clusters" | "cds" => &[Kind::Cluster],
            "endpoint" | "endpoints" | "eds" => &[Kind::Endpoint],
            "listener" | "listeners" | "lds" => &[Kind::Listener],
            "route" | "routes" | "rds" => &[Kind::Route],
            "secret" | "secrets" | "sds" => &[Kind::Secret],
            other => {
                return Err(format!(
                    "type={other:?} is not a resource type; accepted: cluster, endpoint, listener, route, secret, all (comma-separated)"
                ));
            }
        };
        for k in found {
            if !kinds.contains(k) {
                kinds.push(*k);
            }
        }
    }
    if kinds.is_empty() {
        kinds = Kind::PUSH_ORDER.to_vec();
    }
    // Envoy's dump order: clusters, endpoints, listeners, routes, secrets.
    kinds.sort_by_key(|k| match k {
        Kind::Cluster => 0,
        Kind::Endpoint => 1,
        Kind::Listener => 2,
        Kind::Route => 3,
        Kind::Secret => 4,
    });
    Ok(kinds)
}

/// Renders what a stream said it sent.
pub fn render(inspection: Inspection) -> ProxyConfig {
    let mut configs = Vec::new();
    let mut acknowledged = BTreeMap::new();
    let mut certificates = Vec::new();
    for t in &inspection.types {
        configs.push(type_dump(t, &inspection.status, &mut certificates));
        if let Some(acked) = &t.acked {
            acknowledged.insert(t.kind.short_name(), acked.clone());
        }
    }
    ProxyConfig {
        status: inspection.status,
        acknowledged,
        config_dump: json!({ "configs": configs }),
        certificates,
        authorization: inspection.authorization,
    }
}

fn type_dump(
    t: &TypeInspection,
    status: &super::ProxyStatus,
    certificates: &mut Vec<CertificateInfo>,
) -> Value {
    let version = status
        .types
        .get(t.kind.short_name())
        .map(|s| s.acked_version.clone())
        .unwrap_or_default();
    let mut entries = Vec::new();
    for (name, resource_version, resource) in &t.sent {
        let body = match resource {
            Some(r) => resource_json(t.kind, r, certificates),
            // Only its name and version are known.
            None => json!({ "name": name }),
        };
        let entry = match t.kind {
            Kind::Cluster => json!({ "version_info": resource_version, "cluster": body }),
            Kind::Endpoint => {
                json!({ "version_info": resource_version, "endpoint_config": body })
            }
            Kind::Listener => json!({
                "name": name,
                "active_state": { "version_info": resource_version, "listener": body },
            }),
            Kind::Route => json!({ "version_info": resource_version, "route_config": body }),
            Kind::Secret => json!({
                "name": name,
                "version_info": resource_version,
                "secret": body,
            }),
        };
        entries.push(entry);
    }
    let (dump, key) = match t.kind {
        Kind::Cluster => ("ClustersConfigDump", "dynamic_active_clusters"),
        Kind::Endpoint => ("EndpointsConfigDump", "dynamic_endpoint_configs"),
        Kind::Listener => ("ListenersConfigDump", "dynamic_listeners"),
        Kind::Route => ("RoutesConfigDump", "dynamic_route_configs"),
        Kind::Secret => ("SecretsConfigDump", "dynamic_active_secrets"),
    };
    let mut object = Map::new();
    object.insert(
        "@type".into(),
        format!("type.googleapis.com/envoy.admin.v3.{dump}").into(),
    );
    if !version.is_empty() && matches!(t.kind, Kind::Cluster | Kind::Listener) {
        object.insert("version_info".into(), version.into());
    }
    object.insert(key.into(), entries.into());
    Value::Object(object)
}

fn resource_json(kind: Kind, r: &Resource, certificates: &mut Vec<CertificateInfo>) -> Value {
    let rendered = match kind {
        Kind::Cluster => decode::<Cluster>(r).map(|c| cluster_json(&c)),
        Kind::Endpoint => decode::<ClusterLoadAssignment>(r).map(|c| load_assignment_json(&c)),
        Kind::Listener => decode::<Listener>(r).map(|l| listener_json(&l)),
        Kind::Route => decode::<RouteConfiguration>(r).map(|c| route_config_json(&c)),
        Kind::Secret => decode::<Secret>(r).map(|s| secret_json(&s, certificates)),
    };
    rendered.unwrap_or_else(|e| json!({ "name": r.name, "error": format!("cannot decode: {e}") }))
}

/// An object of the given pairs, leaving out `Value::Null`s (proto3 JSON
/// leaves out unset fields and defaults).
fn object<const N: usize>(fields: [(&str, Value); N]) -> Value {
    Value::Object(
        fields
            .into_iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    )
}

fn non_empty(text: &str) -> Value {
    match text.is_empty() {
        true => Value::Null,
        false => text.into(),
    }
}

fn list<T>(items: &[T], f: impl Fn(&T) -> Value) -> Value {
    match items.is_empty() {
        true => Value::Null,
        false => items.iter().map(f).collect(),
    }
}

/// The proto3 JSON form of a Duration: seconds with 0, 3, 6 or 9
/// fractional digits.
pub fn duration(d: &Duration) -> Value {
    let (seconds, nanos) = (d.seconds, d.nanos);
    let text = if nanos == 0 {
        format!("{seconds}s")
    } else if nanos % 1_000_000 == 0 {
        format!("{seconds}.{:03}s", nanos / 1_000_000)
    } else if nanos % 1_000 == 0 {
        format!("{seconds}.{:06}s", nanos / 1_000)
    } else {
        format!("{seconds}.{nanos:09}s")
    };
    text.into()
}

fn optional_duration(d: &Option<Duration>) -> Value {
    d.as_ref().map_or(Value::Null, duration)
}

fn any_type(any: &Any) -> Value {
    json!({ "@type": any.type_url })
}

fn address_json(a: &Option<Address>) -> Value {
    match a.as_ref().and_then(|a| a.address.as_ref()) {
        Some(address::Address::SocketAddress(s)) => {
            let port = match s.port_specifier {
                Some(socket_address::PortSpecifier::PortValue(p)) if p != 0 => p.into(),
                Some(socket_address::PortSpecifier::NamedPort(ref n)) => {
                    return json!({ "socket_address": { "address": s.address, "named_port": n } });
                }
                _ => Value::Null,
            };
            json!({ "socket_address": object([
                ("address", non_empty(&s.address)),
                ("port_value", port),
            ]) })
        }
        Some(address::Address::Pipe(p)) => json!({ "pipe": { "path": p.path } }),
        Some(address::Address::EnvoyInternalAddress(_)) => json!({ "envoy_internal_address": {} }),
        None => Value::Null,
    }
}

fn struct_json(s: &Struct) -> Value {
    let mut fields: Vec<_> = s.fields.iter().collect();
    fields.sort_by(|a, b| a.0.cmp(b.0));
    Value::Object(
        fields
            .into_iter()
            .map(|(k, v)| (k.clone(), value_json(v)))
            .collect(),
    )
}

fn value_json(v: &meshd_proto::Value) -> Value {
    use meshd_proto::pb::google::protobuf::value::Kind as V;
    match &v.kind {
        None | Some(V::NullValue(_)) => Value::Null,
        Some(V::NumberValue(n)) => json!(n),
        Some(V::StringValue(s)) => s.clone().into(),
        Some(V::BoolValue(b)) => (*b).into(),
        Some(V::StructValue(s)) => struct_json(s),
        Some(V::ListValue(l)) => l.values.iter().map(value_json).collect(),
    }
}

fn metadata_json(m: &Option<Metadata>) -> Value {
    match m {
        Some(m) if !m.filter_metadata.is_empty() => {
            let mut keys: Vec<_> = m.filter_metadata.iter().collect();
            keys.sort_by(|a, b| a.0.cmp(b.0));
            let map: Map<String, Value> = keys
                .into_iter()
                .map(|(k, v)| (k.clone(), struct_json(v)))
                .collect();
            json!({ "filter_metadata": map })
        }
        _ => Value::Null,
    }
}

fn transport_socket_json(t: &Option<TransportSocket>) -> Value {
    let Some(t) = t else { return Value::Null };
    object([
        ("name", non_empty(&t.name)),
        (
            "typed_config",
            match &t.config_type {
                Some(transport_socket::ConfigType::TypedConfig(any)) => any_type(any),
                None => Value::Null,
            },
        ),
    ])
}

fn cluster_json(c: &Cluster) -> Value {
    let discovery = match c.cluster_discovery_type {
        Some(cluster::ClusterDiscoveryType::Type(t)) if t != 0 => {
            cluster::DiscoveryType::try_from(t).map_or(Value::Null, |t| t.as_str_name().into())
        }
        Some(cluster::ClusterDiscoveryType::ClusterType(ref custom)) => {
            return object([
                ("name", non_empty(&c.name)),
                ("cluster_type", json!({ "name": custom.name })),
            ]);
        }
        _ => Value::Null,
    };
    let lb_policy = match c.lb_policy {
        0 => Value::Null,
        p => cluster::LbPolicy::try_from(p).map_or(Value::Null, |p| p.as_str_name().into()),
    };
    object([
        ("name", non_empty(&c.name)),
        ("type", discovery),
        (
            "eds_cluster_config",
            c.eds_cluster_config.as_ref().map_or(Value::Null, |e| {
                object([("service_name", non_empty(&e.service_name))])
            }),
        ),
        ("connect_timeout", optional_duration(&c.connect_timeout)),
        ("lb_policy", lb_policy),
        (
            "transport_socket",
            transport_socket_json(&c.transport_socket),
        ),
        (
            "transport_socket_matches",
            list(&c.transport_socket_matches, |m| {
                object([
                    ("name", non_empty(&m.name)),
                    ("match", m.r#match.as_ref().map_or(Value::Null, struct_json)),
                    (
                        "transport_socket",
                        transport_socket_json(&m.transport_socket),
                    ),
                ])
            }),
        ),
        (
            "load_assignment",
            c.load_assignment
                .as_ref()
                .map_or(Value::Null, load_assignment_json),
        ),
    ])
}

fn load_assignment_json(c: &ClusterLoadAssignment) -> Value {
    object([
        ("cluster_name", non_empty(&c.cluster_name)),
        (
            "endpoints",
            list(&c.endpoints, |l| {
                object([
                    (
                        "locality",
                        l.locality.as_ref().map_or(Value::Null, |l| {
                            let v = object([
                                ("region", non_empty(&l.region)),
                                ("zone", non_empty(&l.zone)),
                                ("sub_zone", non_empty(&l.sub_zone)),
                            ]);
                            if v.as_object().is_some_and(Map::is_empty) {
                                Value::Null
                            } else {
                                v
                            }
                        }),
                    ),
                    (
                        "lb_endpoints",
                        list(&l.lb_endpoints, |e| {
                            let endpoint = match &e.host_identifier {
                                Some(lb_endpoint::HostIdentifier::Endpoint(e)) => {
                                    object([("address", address_json(&e.address))])
                                }
                                _ => Value::Null,
                            };
                            object([
                                ("endpoint", endpoint),
                                ("health_status", health(e.health_status)),
                                ("metadata", metadata_json(&e.metadata)),
                            ])
                        }),
                    ),
                    (
                        "priority",
                        match l.priority {
                            0 => Value::Null,
                            p => p.into(),
                        },
                    ),
                ])
            }),
        ),
    ])
}

fn health(status: i32) -> Value {
    match status {
        0 => Value::Null,
        s => HealthStatus::try_from(s).map_or(Value::Null, |s| s.as_str_name().into()),
    }
}

fn listener_json(l: &Listener) -> Value {
    object([
        ("name", non_empty(&l.name)),
        ("address", address_json(&l.address)),
        ("filter_chains", list(&l.filter_chains, filter_chain_json)),
        (
            "use_original_dst",
            l.use_original_dst
                .as_ref()
                .map_or(Value::Null, |b| b.value.into()),
        ),
        (
            "bind_to_port",
            l.bind_to_port
                .as_ref()
                .map_or(Value::Null, |b| b.value.into()),
        ),
        (
            "default_filter_chain",
            l.default_filter_chain
                .as_ref()
                .map_or(Value::Null, filter_chain_json),
        ),
        (
            "listener_filters",
            list(&l.listener_filters, |f| {
                object([("name", non_empty(&f.name))])
            }),
        ),
    ])
}

fn filter_chain_json(c: &FilterChain) -> Value {
    object([
        (
            "filter_chain_match",
            c.filter_chain_match
                .as_ref()
                .map_or(Value::Null, chain_match_json),
        ),
        (
            "filters",
            list(&c.filters, |f| {
                let typed = match &f.config_type {
                    Some(filter::ConfigType::TypedConfig(any)) => network_filter_json(any),
                    _ => Value::Null,
                };
                object([("name", non_empty(&f.name)), ("typed_config", typed)])
            }),
        ),
        (
            "transport_socket",
            transport_socket_json(&c.transport_socket),
        ),
        ("name", non_empty(&c.name)),
    ])
}

fn chain_match_json(m: &FilterChainMatch) -> Value {
    let strings = |v: &[String]| list(v, |s| s.clone().into());
    object([
        (
            "destination_port",
            m.destination_port
                .as_ref()
                .map_or(Value::Null, |p| p.value.into()),
        ),
        (
            "prefix_ranges",
            list(&m.prefix_ranges, |r| {
                object([
                    ("address_prefix", non_empty(&r.address_prefix)),
                    (
                        "prefix_len",
                        r.prefix_len
                            .as_ref()
                            .map_or(Value::Null, |p| p.value.into()),
                    ),
                ])
            }),
        ),
        ("server_names", strings(&m.server_names)),
        ("transport_protocol", non_empty(&m.transport_protocol)),
        ("application_protocols", strings(&m.application_protocols)),
    ])
}

/// The HTTP connection manager's route source and the TCP proxy's
/// cluster: where a chain sends its traffic.
fn network_filter_json(any: &Any) -> Value {
    let mut v = any_type(any);
    let Some(fields) = v.as_object_mut() else {
        return v;
    };
    if any.type_url == HttpConnectionManager::type_url() {
        if let Ok(hcm) = prost::Message::decode(any.value.as_slice()) {
            let hcm: HttpConnectionManager = hcm;
            fields.insert("stat_prefix".into(), hcm.stat_prefix.into());
            match hcm.route_specifier {
                Some(http_connection_manager::RouteSpecifier::Rds(rds)) => {
                    fields.insert(
                        "rds".into(),
                        json!({ "route_config_name": rds.route_config_name }),
                    );
                }
                Some(http_connection_manager::RouteSpecifier::RouteConfig(rc)) => {
                    fields.insert("route_config".into(), route_config_json(&rc));
                }
                _ => {}
            }
        }
    } else if any.type_url == TcpProxy::type_url()
        && let Ok(tcp) = prost::Message::decode(any.value.as_slice())
    {
        let tcp: TcpProxy = tcp;
        fields.insert("stat_prefix".into(), tcp.stat_prefix.into());
        if let Some(tcp_proxy::ClusterSpecifier::Cluster(c)) = tcp.cluster_specifier {
            fields.insert("cluster".into(), c.into());
        }
    }
    v
}

fn route_config_json(c: &RouteConfiguration) -> Value {
    object([
        ("name", non_empty(&c.name)),
        (
            "virtual_hosts",
            list(&c.virtual_hosts, |vh| {
                object([
                    ("name", non_empty(&vh.name)),
                    ("domains", list(&vh.domains, |d| d.clone().into())),
                    ("routes", list(&vh.routes, route_json)),
                ])
            }),
        ),
    ])
}

fn route_json(r: &meshd_proto::envoy::config::route::v3::Route) -> Value {
    let matcher = r.r#match.as_ref().map_or(Value::Null, |m| {
        let (key, path) = match &m.path_specifier {
            Some(route_match::PathSpecifier::Prefix(p)) => ("prefix", p.clone().into()),
            Some(route_match::PathSpecifier::Path(p)) => ("path", p.clone().into()),
            Some(route_match::PathSpecifier::SafeRegex(r)) => {
                ("safe_regex", json!({ "regex": r.regex }))
            }
            Some(route_match::PathSpecifier::PathSeparatedPrefix(p)) => {
                ("path_separated_prefix", p.clone().into())
            }
            _ => ("prefix", Value::Null),
        };
        let mut v = object([(key, path), ("headers", list(&m.headers, header_json))]);
        if v.as_object().is_some_and(Map::is_empty) {
            v = json!({});
        }
        v
    });
    let (action_key, action) = match &r.action {
        Some(route::Action::Route(a)) => ("route", route_action_json(a)),
        Some(route::Action::DirectResponse(d)) => (
            "direct_response",
            object([(
                "status",
                match d.status {
                    0 => Value::Null,
                    s => s.into(),
                },
            )]),
        ),
        Some(route::Action::Redirect(_)) => ("redirect", json!({})),
        _ => ("route", Value::Null),
    };
    object([
        ("name", non_empty(&r.name)),
        ("match", matcher),
        (action_key, action),
    ])
}

fn route_action_json(a: &meshd_proto::envoy::config::route::v3::RouteAction) -> Value {
    let (key, target) = match &a.cluster_specifier {
        Some(route_action::ClusterSpecifier::Cluster(c)) => ("cluster", c.clone().into()),
        Some(route_action::ClusterSpecifier::WeightedClusters(w)) => (
            "weighted_clusters",
            json!({ "clusters": w.clusters.iter().map(|c| object([
                ("name", non_empty(&c.name)),
                ("weight", c.weight.as_ref().map_or(Value::Null, |w| w.value.into())),
            ])).collect::<Vec<_>>() }),
        ),
        Some(route_action::ClusterSpecifier::ClusterHeader(h)) => {
            ("cluster_header", h.clone().into())
        }
        _ => ("cluster", Value::Null),
    };
    let retry = a.retry_policy.as_ref().map_or(Value::Null, |p| {
        object([
            ("retry_on", non_empty(&p.retry_on)),
            (
                "num_retries",
                p.num_retries
                    .as_ref()
                    .map_or(Value::Null, |n| n.value.into()),
            ),
            ("per_try_timeout", optional_duration(&p.per_try_timeout)),
            (
                "retriable_status_codes",
                list(&p.retriable_status_codes, |c| (*c).into()),
            ),
        ])
    });
    object([
        (key, target),
        ("timeout", optional_duration(&a.timeout)),
        ("retry_policy", retry),
    ])
}

fn header_json(h: &HeaderMatcher) -> Value {
    let spec = match &h.header_match_specifier {
        Some(header_matcher::HeaderMatchSpecifier::StringMatch(m)) => {
            ("string_match", string_matcher_json(m))
        }
        Some(header_matcher::HeaderMatchSpecifier::PresentMatch(p)) => {
            ("present_match", (*p).into())
        }
        _ => ("string_match", Value::Null),
    };
    object([
        ("name", non_empty(&h.name)),
        spec,
        (
            "invert_match",
            match h.invert_match {
                true => true.into(),
                false => Value::Null,
            },
        ),
    ])
}

fn string_matcher_json(m: &StringMatcher) -> Value {
    let pattern = match &m.match_pattern {
        Some(string_matcher::MatchPattern::Exact(s)) => ("exact", s.clone().into()),
        Some(string_matcher::MatchPattern::Prefix(s)) => ("prefix", s.clone().into()),
        Some(string_matcher::MatchPattern::Suffix(s)) => ("suffix", s.clone().into()),
        Some(string_matcher::MatchPattern::Contains(s)) => ("contains", s.clone().into()),
        Some(string_matcher::MatchPattern::SafeRegex(r)) => {
            ("safe_regex", json!({ "regex": r.regex }))
        }
        _ => ("exact", Value::Null),
    };
    object([
        pattern,
        (
            "ignore_case",
            match m.ignore_case {
                true => true.into(),
                false => Value::Null,
            },
        ),
    ])
}

/// What Envoy's dump shows in place of a private key.
pub const REDACTED: &str = "[redacted]";

fn secret_json(s: &Secret, certificates: &mut Vec<CertificateInfo>) -> Value {
    let body = match &s.r#type {
        Some(secret::Type::TlsCertificate(t)) => {
            if let Some(chain) = &t.certificate_chain {
                certificates.extend(certificate_infos(&s.name, chain));
            }
            // The key is never read here: only whether there is one.
            let key = t
                .private_key
                .as_ref()
                .map_or(Value::Null, |_| json!({ "inline_string": REDACTED }));
            (
                "tls_certificate",
                object([
                    ("certificate_chain", data_source_json(&t.certificate_chain)),
                    ("private_key", key),
                ]),
            )
        }
        Some(secret::Type::ValidationContext(v)) => {
            if let Some(bundle) = &v.trusted_ca {
                certificates.extend(certificate_infos(&s.name, bundle));
            }
            (
                "validation_context",
                object([("trusted_ca", data_source_json(&v.trusted_ca))]),
            )
        }
        _ => ("tls_certificate", Value::Null),
    };
    object([("name", non_empty(&s.name)), body])
}

/// A public data source (certificates; never a key).
fn data_source_json(d: &Option<DataSource>) -> Value {
    match d.as_ref().and_then(|d| d.specifier.as_ref()) {
        Some(data_source::Specifier::InlineBytes(b)) => {
            json!({ "inline_bytes": base64::engine::general_purpose::STANDARD.encode(b) })
        }
        Some(data_source::Specifier::InlineString(s)) => json!({ "inline_string": s }),
        Some(data_source::Specifier::Filename(f)) => json!({ "filename": f }),
        Some(data_source::Specifier::EnvironmentVariable(e)) => {
            json!({ "environment_variable": e })
        }
        None => Value::Null,
    }
}

/// The certificates in a PEM data source, summarised.
fn certificate_infos(secret: &str, source: &DataSource) -> Vec<CertificateInfo> {
    let pem: &[u8] = match &source.specifier {
        Some(data_source::Specifier::InlineBytes(b)) => b,
        Some(data_source::Specifier::InlineString(s)) => s.as_bytes(),
        _ => return Vec::new(),
    };
    let rfc3339 = |t: x509_parser::time::ASN1Time| {
        t.to_datetime()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    let mut infos = Vec::new();
    for pem in x509_parser::pem::Pem::iter_from_buffer(pem).flatten() {
        // Only certificates: a PEM block of any other label is skipped.
        if pem.label != "CERTIFICATE" {
            continue;
        }
        let Ok(cert) = pem.parse_x509() else { continue };
        let spiffe_id = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .and_then(|san| {
                san.value.general_names.iter().find_map(|n| match n {
                    x509_parser::extensions::GeneralName::URI(u) if u.starts_with("spiffe://") => {
                        Some(u.to_string())
                    }
                    _ => None,
                })
            });
        infos.push(CertificateInfo {
            secret: secret.to_string(),
            serial: cert.raw_serial_as_string().replace(':', ""),
            spiffe_id,
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            not_before: rfc3339(cert.validity().not_before),
            not_after: rfc3339(cert.validity().not_after),
        });
    }
    infos
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_follow_the_proto3_json_mapping() {
        let d = |seconds, nanos| duration(&Duration { seconds, nanos });
        assert_eq!(d(15, 0), "15s");
        assert_eq!(d(0, 250_000_000), "0.250s");
        assert_eq!(d(1, 500), "1.000000500s");
        assert_eq!(d(2, 1_000), "2.000001s");
    }

    #[test]
    fn types_are_parsed_and_bad_ones_named() {
        assert_eq!(
            parse_kinds("route,cluster").unwrap(),
            vec![Kind::Cluster, Kind::Route]
        );
        assert_eq!(parse_kinds("all").unwrap().len(), 5);
        assert_eq!(parse_kinds("").unwrap().len(), 5);
        let e = parse_kinds("clusterz").unwrap_err();
        assert!(e.contains("\"clusterz\"") && e.contains("accepted:"), "{e}");
    }
}
