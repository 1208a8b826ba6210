//! Access logs: JSON lines on the sidecar's standard output, one per HTTP
//! request or TCP connection, with what the mesh knows of it.
//!
//! Whether a proxy logs is the mesh's setting ([`Telemetry::access_log`],
//! `meshd run --access-log`) unless its Pod says otherwise with
//! `meshd.io/access-log`. Listeners are shared by many proxies, so the
//! logging variant of a listener is derived from the plain one (every
//! HTTP connection manager and TCP proxy in it gets the logger) and shared
//! in turn by the proxies that log.
//!
//! ```text
//! listener ──with_access_log──> same listener, each HCM / tcp_proxy + envoy.access_loggers.stdout (json)
//! ```
//!
//! Tracing: with a collector ([`Telemetry::tracing`], `meshd run
//! --tracing-collector`), every HTTP connection manager of a proxy's
//! listeners gets `tracing` with the OpenTelemetry provider: spans named
//! for the workload, sent over OTLP/gRPC to the collector's cluster (sent
//! to the proxy over CDS with its other clusters, so changing the
//! collector needs no re-injection), a share of requests sampled (the
//! mesh's percentage or the Pod's `meshd.io/tracing-sampling`). Envoy
//! propagates `traceparent` to the upstream, so the callee's proxy makes
//! its span a child of the caller's. The workload's name is not in the
//! listener: Envoy's `environment` resource detector reads it from the
//! sidecar's `OTEL_RESOURCE_ATTRIBUTES`, which the injector sets (with
//! the name in the listener, every workload needed its own copy of the
//! outbound listener: +65 KiB per workload at 1,000 services). The traced
//! variant of a listener is made once per (listener, sampling), shared by
//! every proxy with that sampling, and kept across snapshots while the
//! listener it derives from does not change.
//!
//! ```text
//! listener ──with_tracing──> same listener, each HCM + tracing { opentelemetry → TRACING_COLLECTOR_CLUSTER }
//! ```

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, OnceLock};

use meshd_proto::envoy::config::accesslog::v3::{AccessLog, access_log};
use meshd_proto::envoy::config::core::v3::{
    GrpcService, TrafficDirection, TypedExtensionConfig, grpc_service,
};
use meshd_proto::envoy::config::listener::v3::{Listener, filter};
use meshd_proto::envoy::config::trace::v3::{OpenTelemetryConfig, tracing};
use meshd_proto::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager,
};
use meshd_proto::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use meshd_proto::envoy::extensions::tracers::opentelemetry::resource_detectors::v3::EnvironmentResourceDetectorConfig;
use meshd_proto::envoy::r#type::v3::Percent;
use meshd_proto::{
    Any, Struct, UInt32Value, Value, pb::google::protobuf::value::Kind as ValueKind, to_any,
};
use prost::{Message, Name};

use super::clusters::dns_cluster;
use super::resource::{Resource, Resources, Telemetry, Tracing, decode};
use crate::model::{Protocol, Workload};
use meshd_api::annotations::pod::{self as pod_annotations, SamplingPercent};
use meshd_api::sidecar::stats as stats_names;

/// The cluster of the OpenTelemetry collector, on proxies that trace.
pub const TRACING_COLLECTOR_CLUSTER: &str = "tracing-collector";

/// The fields of an access-log line and the Envoy command behind each.
/// `direction` is filled in per listener.
pub const ACCESS_LOG_FIELDS: &[(&str, &str)] = &[
    ("start_time", "%START_TIME%"),
    // The caller's SPIFFE ID: set on inbound mTLS connections.
    ("caller_identity", "%DOWNSTREAM_PEER_URI_SAN%"),
    // The called workload's SPIFFE ID, as verified: outbound mTLS.
    ("upstream_identity", "%UPSTREAM_PEER_URI_SAN%"),
    // The cluster's own name, as `meshd proxy-config` shows it, not its
    // statistics name (which carries the connection security).
    ("upstream_cluster", "%UPSTREAM_CLUSTER_RAW%"),
    ("upstream_host", "%UPSTREAM_HOST%"),
    ("response_code", "%RESPONSE_CODE%"),
    ("response_flags", "%RESPONSE_FLAGS%"),
    ("duration_ms", "%DURATION%"),
    ("request_id", "%REQ(X-REQUEST-ID)%"),
    ("method", "%REQ(:METHOD)%"),
    ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"),
    ("authority", "%REQ(:AUTHORITY)%"),
    ("protocol", "%PROTOCOL%"),
    ("bytes_received", "%BYTES_RECEIVED%"),
    ("bytes_sent", "%BYTES_SENT%"),
];

/// Whether `workload`'s proxy logs: its Pod's `meshd.io/access-log`, else
/// the mesh's setting. The injector and the validating webhook refuse a bad
/// value, and discovery refuses the Pod; should one get here anyway, the
/// mesh's setting applies.
pub(super) fn access_log_for(workload: &Workload, telemetry: &Telemetry) -> bool {
    workload
        .annotations
        .get(pod_annotations::ACCESS_LOG)
        .and_then(|v| pod_annotations::parse_flag(v))
        .unwrap_or(telemetry.access_log)
}

/// Appends a length-delimited field to a protobuf encoding.
fn put_bytes(out: &mut Vec<u8>, tag: u32, bytes: &[u8]) {
    prost::encoding::encode_key(tag, prost::encoding::WireType::LengthDelimited, out);
    prost::encoding::encode_varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// The stdout logger of a listener of `direction`. A `Struct`'s fields are
/// a hash map, which prost encodes in no fixed order; the format is
/// encoded here field by field in name order, so a listener's version (a
/// hash of its encoding) is the same on every replica and every run.
fn stdout_logger(direction: &str) -> Any {
    let mut fields: Vec<(&str, &str)> = ACCESS_LOG_FIELDS.to_vec();
    if direction == "inbound" {
        // Inbound nothing rewrites the path, and x-envoy-original-path
        // would be the caller's to set: log the path the request had.
        for field in &mut fields {
            if field.0 == "path" {
                field.1 = "%REQ(:PATH)%";
            }
        }
    }
    fields.push(("direction", direction));
    json_stdout_logger(fields)
}

/// A stdout logger writing one JSON object of `fields` (name, Envoy
/// command operator) per entry, encoded the same on every run.
pub(super) fn json_stdout_logger(mut fields: Vec<(&str, &str)>) -> Any {
    fields.sort_unstable();
    let mut json_format = Vec::new();
    for (name, command) in fields {
        // A one-field Struct encodes as exactly that map entry; map entries
        // concatenate.
        let entry = Struct {
            fields: [(
                name.to_string(),
                Value {
                    kind: Some(ValueKind::StringValue(command.to_string())),
                },
            )]
            .into(),
        };
        json_format.extend(entry.encode_to_vec());
    }
    // SubstitutionFormatString.json_format (2), StdoutAccessLog.log_format (1).
    let mut format = Vec::new();
    put_bytes(&mut format, 2, &json_format);
    let mut logger = Vec::new();
    put_bytes(&mut logger, 1, &format);
    Any {
        type_url:
            meshd_proto::envoy::extensions::access_loggers::stream::v3::StdoutAccessLog::type_url(),
        value: logger,
    }
}

/// One statistic of an Envoy stats access logger.
pub(super) enum Stat<'a> {
    /// Adds 1 per record.
    Count(&'a str),
    /// Adds the value of a command operator (`%BYTES_RECEIVED%`).
    Sum(&'a str, &'a str),
    /// Records a command operator's value in milliseconds (`%DURATION%`).
    Milliseconds(&'a str, &'a str),
}

/// Envoy's stats access logger (`envoy.access_loggers.stats`): per record,
/// each of `stats` under `<prefix>.<name>` with the proxy's `workload` and
/// `workload_namespace` and `tags` (name, command operator) as labels.
/// Each logger (one per filter chain) has its own scope holding at most
/// `max_series` counters and a tenth as many histograms: past that, new
/// label values are not counted, so no caller can grow a proxy's series
/// without bound. The counts start again when the chain is replaced (a
/// new inbound listener: a policy edit, a port added), which Prometheus
/// reads as a counter reset. (One scope shared by a proxy's chains,
/// Envoy's `sharing_name`, would bound the proxy rather than each chain
/// and outlive listener changes, but makes Envoy 1.40 crash in `--mode
/// validate`.)
pub(super) fn stats_logger(
    prefix: &str,
    max_series: u32,
    stats: &[(Stat<'_>, &[(&str, &str)])],
) -> Any {
    use meshd_proto::envoy::extensions::access_loggers::stats::v3::{Config, config};
    use meshd_proto::pb::google::protobuf::UInt64Value;
    // Statistics with tags of their own get none of the bootstrap's fixed
    // ones: the proxy's labels come from the environment the injector
    // gives it.
    let proxy = [
        (
            stats_names::WORKLOAD,
            format!("%ENVIRONMENT({})%", meshd_api::sidecar::WORKLOAD_ENV),
        ),
        (
            stats_names::WORKLOAD_NAMESPACE,
            format!("%ENVIRONMENT({})%", meshd_api::sidecar::POD_NAMESPACE_ENV),
        ),
    ];
    let stat = |name: &str, tags: &[(&str, &str)]| config::Stat {
        name: name.into(),
        tags: proxy
            .iter()
            .map(|(n, v)| (*n, v.as_str()))
            .chain(tags.iter().copied())
            .map(|(name, value_format)| config::Tag {
                name: name.into(),
                value_format: value_format.into(),
                rules: None,
            })
            .collect(),
    };
    // `stats_scope` (Envoy 1.39 and later; Envoy refuses it with the
    // older `stat_prefix`) is what bounds the series.
    let mut config = Config {
        stats_scope: Some(meshd_proto::envoy::r#type::v3::Scope {
            prefix: prefix.into(),
            max_counters: Some(UInt32Value { value: max_series }),
            max_histograms: Some(UInt32Value {
                value: (max_series / 10).max(1),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    for (kind, tags) in stats {
        match *kind {
            Stat::Count(name) => config.counters.push(config::Counter {
                stat: Some(stat(name, tags)),
                value_fixed: Some(UInt64Value { value: 1 }),
                ..Default::default()
            }),
            Stat::Sum(name, value) => config.counters.push(config::Counter {
                stat: Some(stat(name, tags)),
                value_format: value.into(),
                ..Default::default()
            }),
            Stat::Milliseconds(name, value) => config.histograms.push(config::Histogram {
                stat: Some(stat(name, tags)),
                unit: config::histogram::Unit::Milliseconds as i32,
                value_format: value.into(),
            }),
        }
    }
    to_any(&config)
}

/// The most series of the inbound metrics by caller per inbound filter
/// chain (a port has one for mTLS callers and one for plaintext ones, and
/// plaintext callers all count as one caller).
pub const MAX_INBOUND_CALLER_SERIES: u32 = 512;

/// What an inbound HTTP connection manager (`http`) or TCP proxy records
/// per request or connection by caller: the `envoy_inbound_by_caller_*`
/// metrics, the caller's SPIFFE ID (empty for a plaintext caller) beside
/// the port and, for requests, the response code. Envoy's own inbound
/// statistics cannot name the caller: their names are fixed per filter
/// chain.
pub(super) fn inbound_by_caller(http: bool) -> AccessLog {
    static LOGGERS: LazyLock<[Any; 2]> = LazyLock::new(|| {
        let caller = (stats_names::CALLER_IDENTITY, "%DOWNSTREAM_PEER_URI_SAN%");
        let port = (stats_names::DESTINATION_PORT, "%DOWNSTREAM_LOCAL_PORT%");
        let code = (stats_names::RESPONSE_CODE, "%RESPONSE_CODE%");
        let http = stats_logger(
            "inbound_by_caller",
            MAX_INBOUND_CALLER_SERIES,
            &[
                (Stat::Count("requests"), &[caller, port, code]),
                (
                    Stat::Milliseconds("request_duration", "%DURATION%"),
                    &[caller, port],
                ),
            ],
        );
        let tcp = stats_logger(
            "inbound_by_caller",
            MAX_INBOUND_CALLER_SERIES,
            &[
                (Stat::Count("connections"), &[caller, port]),
                (
                    Stat::Sum("received_bytes", "%BYTES_RECEIVED%"),
                    &[caller, port],
                ),
                (Stat::Sum("sent_bytes", "%BYTES_SENT%"), &[caller, port]),
            ],
        );
        [http, tcp]
    });
    AccessLog {
        name: "envoy.access_loggers.stats".into(),
        filter: None,
        config_type: Some(access_log::ConfigType::TypedConfig(
            LOGGERS[usize::from(!http)].clone(),
        )),
    }
}

fn access_log(direction: TrafficDirection) -> AccessLog {
    static INBOUND: LazyLock<Any> = LazyLock::new(|| stdout_logger("inbound"));
    static OUTBOUND: LazyLock<Any> = LazyLock::new(|| stdout_logger("outbound"));
    let logger = match direction {
        TrafficDirection::Inbound => &*INBOUND,
        _ => &*OUTBOUND,
    };
    AccessLog {
        name: "envoy.access_loggers.stdout".into(),
        config_type: Some(access_log::ConfigType::TypedConfig(logger.clone())),
        ..Default::default()
    }
}

/// `listener` with an access log on every HTTP connection manager and TCP
/// proxy in it.
pub(super) fn with_access_log(listener: &Arc<Resource>) -> Arc<Resource> {
    let Ok(mut l) = decode::<Listener>(listener) else {
        // Translation encoded it a moment ago: it decodes.
        return listener.clone();
    };
    let direction = TrafficDirection::try_from(l.traffic_direction).unwrap_or_default();
    let log = access_log(direction);
    let chains = l
        .filter_chains
        .iter_mut()
        .chain(l.default_filter_chain.as_mut());
    for chain in chains {
        for f in &mut chain.filters {
            let Some(filter::ConfigType::TypedConfig(any)) = &mut f.config_type else {
                continue;
            };
            if any.type_url == HttpConnectionManager::type_url() {
                if let Ok(mut hcm) = HttpConnectionManager::decode(any.value.as_slice()) {
                    hcm.access_log.push(log.clone());
                    *any = to_any(&hcm);
                }
            } else if any.type_url == TcpProxy::type_url()
                && let Ok(mut proxy) = TcpProxy::decode(any.value.as_slice())
            {
                proxy.access_log.push(log.clone());
                *any = to_any(&proxy);
            }
        }
    }
    Resource::new(listener.name.clone(), &l, listener.cluster_refs.clone())
}

/// How a proxy traces: its sampling. (The workload its spans name comes
/// from the sidecar's environment, see the module docs.)
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct TracingKey {
    sampling: SamplingPercent,
}

/// Envoy's resource detector that reads `OTEL_RESOURCE_ATTRIBUTES`.
const ENVIRONMENT_DETECTOR: &str = "envoy.tracers.opentelemetry.resource_detectors.environment";

/// `workload`'s tracing, when the mesh has a collector: its Pod's
/// `meshd.io/tracing-sampling`, else the mesh's percentage. The injector
/// and the validating webhook refuse a bad value, and discovery refuses
/// the Pod; should one get here anyway, the mesh's percentage applies.
fn tracing_for(workload: &Workload, tracing: &Tracing) -> TracingKey {
    let sampling = workload
        .annotations
        .get(pod_annotations::TRACING_SAMPLING)
        .and_then(|v| SamplingPercent::parse(v))
        .unwrap_or(tracing.sampling);
    TracingKey { sampling }
}

/// The collector's cluster: Envoy resolves the name itself (an IP address
/// resolves to itself) and speaks gRPC (HTTP/2) to it. Envoy's own
/// connections are not captured, so this one is plaintext, straight to
/// the collector.
fn collector_cluster(tracing: &Tracing) -> Arc<Resource> {
    let c = &tracing.collector;
    let cluster = dns_cluster(TRACING_COLLECTOR_CLUSTER, &c.host, c.port, Protocol::Grpc);
    Resource::new(TRACING_COLLECTOR_CLUSTER.to_string(), &cluster, vec![])
}

/// The HCM `tracing` of a proxy traced as `key`.
fn hcm_tracing(key: &TracingKey) -> http_connection_manager::Tracing {
    let provider = OpenTelemetryConfig {
        grpc_service: Some(GrpcService {
            target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
                grpc_service::EnvoyGrpc {
                    cluster_name: TRACING_COLLECTOR_CLUSTER.to_string(),
                    ..Default::default()
                },
            )),
            ..Default::default()
        }),
        // The injector sets `OTEL_RESOURCE_ATTRIBUTES=service.name=<the
        // workload the proxy's metrics name>`, so spans and metrics agree.
        resource_detectors: vec![TypedExtensionConfig {
            name: ENVIRONMENT_DETECTOR.into(),
            typed_config: Some(to_any(&EnvironmentResourceDetectorConfig {})),
        }],
        ..Default::default()
    };
    http_connection_manager::Tracing {
        random_sampling: Some(Percent {
            value: key.sampling.percent(),
        }),
        provider: Some(tracing::Http {
            name: "envoy.tracers.opentelemetry".into(),
            config_type: Some(tracing::http::ConfigType::TypedConfig(to_any(&provider))),
        }),
        ..Default::default()
    }
}

/// `listener` with `tracing` on every HTTP connection manager in it; the
/// listener itself when it has none (TCP only).
fn traced(listener: &Arc<Resource>, key: &TracingKey) -> Arc<Resource> {
    let Ok(mut l) = decode::<Listener>(listener) else {
        // Translation encoded it a moment ago: it decodes.
        return listener.clone();
    };
    let tracing = hcm_tracing(key);
    let mut any_hcm = false;
    let chains = l
        .filter_chains
        .iter_mut()
        .chain(l.default_filter_chain.as_mut());
    for chain in chains {
        for f in &mut chain.filters {
            let Some(filter::ConfigType::TypedConfig(any)) = &mut f.config_type else {
                continue;
            };
            if any.type_url == HttpConnectionManager::type_url()
                && let Ok(mut hcm) = HttpConnectionManager::decode(any.value.as_slice())
            {
                hcm.tracing = Some(tracing.clone());
                *any = to_any(&hcm);
                any_hcm = true;
            }
        }
    }
    if !any_hcm {
        return listener.clone();
    }
    let mut refs = listener.cluster_refs.clone();
    refs.push(TRACING_COLLECTOR_CLUSTER.to_string());
    Resource::new(listener.name.clone(), &l, refs)
}

/// What tracing adds to a snapshot's proxies, made once: the traced
/// listeners by (listener version, how traced), which the proxies of one
/// workload share, and the collector's cluster, which all share. The
/// traced listeners the proxies used are carried over to the next
/// snapshot ([`TracedListeners::carry_over`]): the traced copy of a
/// listener for each way of tracing is made again only when that listener
/// changes, not decoded and re-encoded at every snapshot.
#[derive(Debug, Default)]
pub(super) struct TracedListeners {
    listeners: Mutex<HashMap<(String, TracingKey), TracedListener>>,
    collector: OnceLock<Arc<Resource>>,
}

#[derive(Debug)]
struct TracedListener {
    traced: Arc<Resource>,
    /// Asked for since the snapshot was made: worth carrying over.
    used: bool,
}

impl TracedListeners {
    /// The traced listeners this snapshot's proxies used, for the next
    /// snapshot (what nobody asked for is dropped, so listeners that
    /// changed do not pile up). The key is the version of the listener a
    /// copy derives from, a hash of its bytes: an unchanged listener (the
    /// same `Arc`, or the same bytes built again) finds its copy.
    pub(super) fn carry_over(&self) -> TracedListeners {
        let listeners = lock(&self.listeners)
            .iter()
            .filter(|(_, t)| t.used)
            .map(|(key, t)| {
                let fresh = TracedListener {
                    traced: t.traced.clone(),
                    used: false,
                };
                (key.clone(), fresh)
            })
            .collect();
        TracedListeners {
            listeners: Mutex::new(listeners),
            collector: OnceLock::new(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How `workload`'s proxy is traced, or `None` when the mesh has no
/// collector.
pub(super) fn tracing_of(workload: &Workload, telemetry: &Telemetry) -> Option<TracingKey> {
    telemetry.tracing.as_ref().map(|t| tracing_for(workload, t))
}

impl TracedListeners {
    /// `listener` traced as `key`, made once per listener version and key.
    pub(super) fn listener(&self, listener: &Arc<Resource>, key: &TracingKey) -> Arc<Resource> {
        let mut traced_listeners = lock(&self.listeners);
        let entry = traced_listeners
            .entry((listener.version.clone(), key.clone()))
            .or_insert_with(|| TracedListener {
                traced: traced(listener, key),
                used: false,
            });
        entry.used = true;
        entry.traced.clone()
    }
}

/// A proxy's own listeners and local clusters, traced as `key`: each
/// listener with HTTP gets its traced variant, and the collector's cluster
/// joins the local clusters. (The outbound listeners it shares with other
/// proxies are traced once for all of them: `Outbound::listeners_for`.)
pub(super) fn with_tracing(
    cache: &TracedListeners,
    key: &TracingKey,
    telemetry: &Telemetry,
    listeners: Resources,
    local_clusters: Arc<Resources>,
) -> (Resources, Arc<Resources>) {
    let Some(tracing) = &telemetry.tracing else {
        return (listeners, local_clusters);
    };
    let listeners = listeners
        .into_iter()
        .map(|(name, l)| (name, cache.listener(&l, key)))
        .collect();
    let mut clusters = (*local_clusters).clone();
    let collector = cache.collector.get_or_init(|| collector_cluster(tracing));
    clusters.insert(TRACING_COLLECTOR_CLUSTER.to_string(), collector.clone());
    (listeners, Arc::new(clusters))
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshd_proto::envoy::config::core::v3::SubstitutionFormatString;
    use meshd_proto::envoy::config::core::v3::substitution_format_string::Format;
    use meshd_proto::envoy::extensions::access_loggers::stream::v3::{
        StdoutAccessLog, stdout_access_log,
    };

    use super::super::resource::{Collector, Kind, TranslateOptions};
    use super::super::{INBOUND_LISTENER, ProxyView, Snapshot};

    /// The outbound listener of port 80, where web's HTTP chain is.
    const HTTP_LISTENER: &str = "0.0.0.0_80";
    use meshd_proto::envoy::config::cluster::v3::Cluster;

    const REGISTRY: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 198.19.0.1, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec: {clusterIP: 198.19.0.2, ports: [{name: tcp-pg, port: 5432}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [198.18.0.3], targetRef: {kind: Pod, name: web-0}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-1, namespace: shop, labels: {kubernetes.io/service-name: db}}
addressType: IPv4
ports: [{name: tcp-pg, port: 5432}]
endpoints: [{addresses: [198.18.0.4], targetRef: {kind: Pod, name: db-0}}]
---
apiVersion: v1
kind: Pod
metadata: {name: client-0, namespace: shop}
status: {podIP: 198.18.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: shop, annotations: {meshd.io/tracing-sampling: "100", meshd.io/workload: web}}
status: {podIP: 198.18.0.3}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, annotations: {meshd.io/tracing-sampling: "100", meshd.io/workload: web}}
status: {podIP: 198.18.0.5}
---
apiVersion: v1
kind: Pod
metadata: {name: db-0, namespace: shop}
status: {podIP: 198.18.0.4}
"#;

    fn snapshot(tracing: Option<Tracing>) -> Snapshot {
        let mut index = crate::discovery::index::Index::default();
        for object in crate::discovery::file::parse(REGISTRY).unwrap() {
            index.apply(object);
        }
        let options = TranslateOptions {
            telemetry: Telemetry {
                access_log: false,
                tracing,
            },
            ..Default::default()
        };
        Snapshot::new(1, Arc::new(index.mesh()), options)
    }

    fn mesh_tracing() -> Tracing {
        Tracing {
            collector: Collector::parse("otel-collector.observability:4317").unwrap(),
            sampling: SamplingPercent::parse("1").unwrap(),
        }
    }

    /// Each HTTP connection manager's tracing in a proxy's listener.
    fn hcm_tracings(
        view: &ProxyView,
        listener: &str,
    ) -> Vec<Option<http_connection_manager::Tracing>> {
        let l: Listener = decode(view.get(Kind::Listener, listener).unwrap()).unwrap();
        l.filter_chains
            .iter()
            .chain(l.default_filter_chain.as_ref())
            .flat_map(|c| &c.filters)
            .filter_map(|f| match &f.config_type {
                Some(filter::ConfigType::TypedConfig(any))
                    if any.type_url == HttpConnectionManager::type_url() =>
                {
                    Some(
                        HttpConnectionManager::decode(any.value.as_slice())
                            .unwrap()
                            .tracing,
                    )
                }
                _ => None,
            })
            .collect()
    }

    /// (resource detectors, collector cluster, sampling percentage) of a
    /// tracing; its service name is left to the detectors.
    fn provider(t: &http_connection_manager::Tracing) -> (Vec<String>, String, f64) {
        let http = t.provider.as_ref().unwrap();
        assert_eq!(http.name, "envoy.tracers.opentelemetry");
        let Some(tracing::http::ConfigType::TypedConfig(any)) = &http.config_type else {
            panic!("{http:?}")
        };
        assert_eq!(any.type_url, OpenTelemetryConfig::type_url());
        let otel = OpenTelemetryConfig::decode(any.value.as_slice()).unwrap();
        assert_eq!(otel.service_name, "", "the workload is not in the listener");
        let detectors = otel
            .resource_detectors
            .iter()
            .map(|d| {
                let any = d.typed_config.as_ref().unwrap();
                assert_eq!(any.type_url, EnvironmentResourceDetectorConfig::type_url());
                d.name.clone()
            })
            .collect();
        let Some(grpc_service::TargetSpecifier::EnvoyGrpc(grpc)) =
            otel.grpc_service.and_then(|g| g.target_specifier)
        else {
            panic!("no Envoy gRPC target")
        };
        (
            detectors,
            grpc.cluster_name,
            t.random_sampling.unwrap().value,
        )
    }

    #[test]
    fn without_a_collector_nothing_is_traced() {
        let snap = snapshot(None);
        let view = snap.proxy("client-0.shop").unwrap();
        assert!(view.get(Kind::Cluster, TRACING_COLLECTOR_CLUSTER).is_none());
        let tracings = hcm_tracings(&view, HTTP_LISTENER);
        assert!(!tracings.is_empty());
        assert!(tracings.iter().all(Option::is_none), "{tracings:?}");
    }

    #[test]
    fn every_http_connection_manager_traces_to_the_collector_and_the_workload_comes_from_the_environment()
     {
        let snap = snapshot(Some(mesh_tracing()));
        let client = snap.proxy("client-0.shop").unwrap();
        // The mesh's percentage; the workload's name from the sidecar's
        // OTEL_RESOURCE_ATTRIBUTES, which the injector sets.
        let tracings = hcm_tracings(&client, HTTP_LISTENER);
        assert!(!tracings.is_empty());
        for t in &tracings {
            let t = t.as_ref().expect("traced");
            let expected = (
                vec![ENVIRONMENT_DETECTOR.to_string()],
                TRACING_COLLECTOR_CLUSTER.into(),
                1.0,
            );
            assert_eq!(provider(t), expected);
        }
        let cluster: Cluster = decode(
            client
                .get(Kind::Cluster, TRACING_COLLECTOR_CLUSTER)
                .unwrap(),
        )
        .unwrap();
        let endpoint = format!("{:?}", cluster.load_assignment);
        assert!(
            endpoint.contains("otel-collector.observability") && endpoint.contains("4317"),
            "{endpoint}"
        );
        // HTTP/2 for gRPC.
        assert!(!cluster.typed_extension_protocol_options.is_empty());

        // The pod's own percentage, inbound and outbound.
        let web = snap.proxy("web-0.shop").unwrap();
        for listener in [HTTP_LISTENER, INBOUND_LISTENER] {
            let tracings = hcm_tracings(&web, listener);
            assert!(!tracings.is_empty(), "{listener}");
            for t in &tracings {
                let (_, _, sampling) = provider(t.as_ref().expect("traced"));
                assert_eq!(sampling, 100.0, "{listener}");
            }
        }
        // Proxies with one sampling share their traced listeners, whatever
        // their workload: web's two pods, and client and db.
        let web_1 = snap.proxy("web-1.shop").unwrap();
        let (a, b) = (
            web.get(Kind::Listener, HTTP_LISTENER).unwrap(),
            web_1.get(Kind::Listener, HTTP_LISTENER).unwrap(),
        );
        assert!(Arc::ptr_eq(a, b));
        let client_out = client.get(Kind::Listener, HTTP_LISTENER).unwrap();
        assert_ne!(a.version, client_out.version);
        let db = snap.proxy("db-0.shop").unwrap();
        let db_out = db.get(Kind::Listener, HTTP_LISTENER).unwrap();
        assert!(Arc::ptr_eq(client_out, db_out));
        // Not only each listener: the whole set of outbound listeners is
        // one map for the proxies traced alike, not a copy each.
        assert!(Arc::ptr_eq(
            &client.outbound_listeners,
            &db.outbound_listeners
        ));
        assert!(!Arc::ptr_eq(
            &client.outbound_listeners,
            &web.outbound_listeners
        ));
    }

    #[test]
    fn an_unchanged_listener_keeps_its_traced_copy_across_snapshots() {
        let first = snapshot(Some(mesh_tracing()));
        let listener = |snap: &Snapshot, node: &str| {
            let view = snap.proxy(node).unwrap();
            view.get(Kind::Listener, HTTP_LISTENER).unwrap().clone()
        };
        let before = listener(&first, "web-0.shop");
        let before_client = listener(&first, "client-0.shop");
        // The same mesh again: the same traced copies, not rebuilt ones.
        let options = first.options.clone();
        let second = Snapshot::next(2, first.mesh.clone(), options.clone(), &first);
        assert!(Arc::ptr_eq(&before, &listener(&second, "web-0.shop")));
        assert!(Arc::ptr_eq(
            &before_client,
            &listener(&second, "client-0.shop")
        ));
        // Another sampling for the mesh: client's copy is made again (web
        // has its own percentage and keeps its copy).
        let mut resampled = options;
        if let Some(t) = &mut resampled.telemetry.tracing {
            t.sampling = SamplingPercent::parse("50").unwrap();
        }
        let third = Snapshot::next(3, second.mesh.clone(), resampled, &second);
        let after_client = listener(&third, "client-0.shop");
        assert!(!Arc::ptr_eq(&before_client, &after_client));
        assert_ne!(before_client.version, after_client.version);
        assert!(Arc::ptr_eq(&before, &listener(&third, "web-0.shop")));
        // What the third snapshot's proxies did not use is not carried on.
        let fourth = Snapshot::next(4, third.mesh.clone(), third.options.clone(), &third);
        let carried = lock(&fourth.traced.listeners);
        assert!(
            carried
                .values()
                .all(|t| !Arc::ptr_eq(&t.traced, &before_client)),
            "a copy nobody used any more is dropped"
        );
    }

    #[test]
    fn the_collector_address_is_host_and_port() {
        for (ok, host, port, shown) in [
            ("otel:4317", "otel", 4317, "otel:4317"),
            ("10.0.0.7:4317", "10.0.0.7", 4317, "10.0.0.7:4317"),
            ("[fd00::7]:4317", "fd00::7", 4317, "[fd00::7]:4317"),
            (
                "otel.observability.svc.cluster.local.:4317",
                "otel.observability.svc.cluster.local.",
                4317,
                "otel.observability.svc.cluster.local.:4317",
            ),
        ] {
            let c = Collector::parse(ok).unwrap_or_else(|| panic!("{ok}"));
            assert_eq!(
                (c.host.as_str(), c.port, c.to_string().as_str()),
                (host, port, shown)
            );
        }
        for bad in [
            "otel",
            "otel:",
            ":4317",
            "otel:0",
            "otel:65536",
            "fd00::7:4317",
            "http://otel:4317",
            "ot el:4317",
            "-otel:4317",
            "[otel]:4317",
        ] {
            assert_eq!(Collector::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_logger_is_json_with_the_mesh_fields_and_encodes_the_same_every_time() {
        let any = stdout_logger("inbound");
        assert_eq!(any, stdout_logger("inbound"));
        let logger = StdoutAccessLog::decode(any.value.as_slice()).unwrap();
        let Some(stdout_access_log::AccessLogFormat::LogFormat(SubstitutionFormatString {
            format: Some(Format::JsonFormat(json)),
            ..
        })) = logger.access_log_format
        else {
            panic!("{logger:?}")
        };
        let field = |name: &str| match &json.fields[name].kind {
            Some(ValueKind::StringValue(s)) => s.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(field("caller_identity"), "%DOWNSTREAM_PEER_URI_SAN%");
        assert_eq!(field("direction"), "inbound");
        assert_eq!(json.fields.len(), ACCESS_LOG_FIELDS.len() + 1);
    }

    /// The stdout access logs of `node`'s listeners.
    fn stdout_logs(snap: &Snapshot, node: &str) -> usize {
        let view = snap.proxy(node).unwrap();
        view.all(Kind::Listener)
            .map(|r| {
                let l: Listener = decode(r).unwrap();
                l.filter_chains
                    .iter()
                    .chain(l.default_filter_chain.as_ref())
                    .flat_map(|c| &c.filters)
                    .filter_map(|f| match &f.config_type {
                        Some(filter::ConfigType::TypedConfig(any)) => {
                            if any.type_url == HttpConnectionManager::type_url() {
                                Some(
                                    HttpConnectionManager::decode(any.value.as_slice())
                                        .unwrap()
                                        .access_log,
                                )
                            } else if any.type_url == TcpProxy::type_url() {
                                Some(TcpProxy::decode(any.value.as_slice()).unwrap().access_log)
                            } else {
                                None
                            }
                        }
                        _ => None,
                    })
                    .flatten()
                    .filter(|log| log.name == "envoy.access_loggers.stdout")
                    .count()
            })
            .sum()
    }

    /// `--access-log` sets every proxy's default; a Pod's
    /// `meshd.io/access-log` wins either way.
    #[test]
    fn a_pods_access_log_annotation_wins_over_the_mesh_setting() {
        let registry = REGISTRY
            .replace(
                "metadata: {name: client-0, namespace: shop}",
                "metadata: {name: client-0, namespace: shop, annotations: {meshd.io/access-log: \"true\"}}",
            )
            .replace(
                "metadata: {name: db-0, namespace: shop}",
                "metadata: {name: db-0, namespace: shop, annotations: {meshd.io/access-log: \"false\"}}",
            );
        let mut index = crate::discovery::index::Index::default();
        for object in crate::discovery::file::parse(&registry).unwrap() {
            index.apply(object);
        }
        let mesh = Arc::new(index.mesh());
        let logs = |mesh_wide: bool| {
            let options = TranslateOptions {
                telemetry: Telemetry {
                    access_log: mesh_wide,
                    tracing: None,
                },
                ..Default::default()
            };
            let snap = Snapshot::new(1, mesh.clone(), options);
            ["client-0.shop", "web-0.shop", "db-0.shop"].map(|node| stdout_logs(&snap, node) > 0)
        };
        // Mesh-wide on: everyone logs but db-0, which said "false".
        assert_eq!(logs(true), [true, true, false]);
        // Mesh-wide off: only client-0, which said "true".
        assert_eq!(logs(false), [true, false, false]);
    }
}
