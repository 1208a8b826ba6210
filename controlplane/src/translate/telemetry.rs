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

use std::sync::{Arc, LazyLock};

use meshd_proto::envoy::config::accesslog::v3::{AccessLog, access_log};
use meshd_proto::envoy::config::core::v3::TrafficDirection;
use meshd_proto::envoy::config::listener::v3::{Listener, filter};
use meshd_proto::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use meshd_proto::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use meshd_proto::{Any, Struct, Value, pb::google::protobuf::value::Kind as ValueKind, to_any};
use prost::{Message, Name};

use super::resource::{Resource, Telemetry, decode};
use crate::model::Workload;
use meshd_api::annotations::pod as pod_annotations;

/// The fields of an access-log line and the Envoy command behind each.
/// `direction` is filled in per listener.
pub const ACCESS_LOG_FIELDS: &[(&str, &str)] = &[
    ("start_time", "%START_TIME%"),
    // The caller's SPIFFE ID: set on inbound mTLS connections.
    ("caller_identity", "%DOWNSTREAM_PEER_URI_SAN%"),
    // The called workload's SPIFFE ID, as verified: outbound mTLS.
    ("upstream_identity", "%UPSTREAM_PEER_URI_SAN%"),
    ("upstream_cluster", "%UPSTREAM_CLUSTER%"),
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
    fields.push(("direction", direction));
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

#[cfg(test)]
mod tests {
    use super::*;
    use meshd_proto::envoy::config::core::v3::SubstitutionFormatString;
    use meshd_proto::envoy::config::core::v3::substitution_format_string::Format;
    use meshd_proto::envoy::extensions::access_loggers::stream::v3::{
        StdoutAccessLog, stdout_access_log,
    };

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
}
