//! Mutual TLS in the generated config.
//!
//! - Outbound: a cluster carries a TLS transport socket that Envoy uses only
//!   for endpoints labelled as mesh workloads accepting mTLS
//!   (`envoy.transport_socket_match`), so calls to pods without a sidecar
//!   or with mTLS disabled stay plaintext. The server's certificate must
//!   carry the SPIFFE ID of one of the service's service accounts.
//!   Headless services' clusters connect to the pod the client addressed
//!   (original destination), with no endpoint to label: they use TLS when
//!   every ready pod behind the service takes mTLS, plaintext otherwise.
//! - Inbound: STRICT serves TLS only and requires a client certificate;
//!   PERMISSIVE tells TLS from plaintext with the TLS inspector; DISABLE
//!   serves plaintext.
//!
//! Both sides offer TLS 1.3 (and accept 1.2).
//!
//! Certificates and the trust bundle come over SDS (`default`, `ROOTCA`) on
//! the same ADS stream.

use meshd_proto::envoy::config::cluster::v3::cluster::TransportSocketMatch;
use meshd_proto::envoy::config::core::v3::{Metadata, TransportSocket, transport_socket};
use meshd_proto::envoy::extensions::transport_sockets::raw_buffer::v3::RawBuffer;
use meshd_proto::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig,
    SubjectAltNameMatcher, TlsParameters, UpstreamTlsContext, common_tls_context,
    subject_alt_name_matcher, tls_parameters,
};
use meshd_proto::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use meshd_proto::pb::google::protobuf::value::Kind as ValueKind;
use meshd_proto::{BoolValue, Struct, Value, to_any};

use super::resource::ads;
use super::resource::{DEFAULT_SECRET, ROOT_SECRET};
use crate::model::Protocol;

/// The endpoint metadata key that selects the TLS transport socket.
const TLS_MODE_KEY: &str = "meshd.io/tls";
const TLS_MODE_PLAINTEXT: &str = "disabled";
const TRANSPORT_SOCKET_MATCH: &str = "envoy.transport_socket_match";

fn sds(name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.to_string(),
        sds_config: ads(),
    }
}

fn common(alpn: &[&str], sans: &[String]) -> CommonTlsContext {
    let default_context = CertificateValidationContext {
        match_typed_subject_alt_names: sans
            .iter()
            .map(|san| SubjectAltNameMatcher {
                san_type: subject_alt_name_matcher::SanType::Uri as i32,
                matcher: Some(StringMatcher {
                    match_pattern: Some(string_matcher::MatchPattern::Exact(san.clone())),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    CommonTlsContext {
        tls_params: Some(tls_params()),
        tls_certificate_sds_secret_configs: vec![sds(DEFAULT_SECRET)],
        validation_context_type: Some(
            common_tls_context::ValidationContextType::CombinedValidationContext(
                common_tls_context::CombinedCertificateValidationContext {
                    default_validation_context: Some(default_context),
                    validation_context_sds_secret_config: Some(sds(ROOT_SECRET)),
                    ..Default::default()
                },
            ),
        ),
        alpn_protocols: alpn.iter().map(|p| p.to_string()).collect(),
        ..Default::default()
    }
}

/// TLS 1.3 between workloads, 1.2 still accepted. Envoy's client default
/// stops at 1.2, where the caller's certificate, and so its identity,
/// crosses the network in the clear; on a server these are Envoy's
/// defaults, stated.
fn tls_params() -> TlsParameters {
    TlsParameters {
        tls_minimum_protocol_version: tls_parameters::TlsProtocol::TlSv12 as i32,
        tls_maximum_protocol_version: tls_parameters::TlsProtocol::TlSv13 as i32,
        ..Default::default()
    }
}

fn alpn(protocol: Protocol) -> &'static [&'static str] {
    match protocol {
        Protocol::Http2 | Protocol::Grpc => &["h2"],
        Protocol::Http => &["http/1.1"],
        Protocol::Tcp => &[],
    }
}

fn tls_socket(config: meshd_proto::Any) -> TransportSocket {
    TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(config)),
    }
}

fn plaintext_mode_struct() -> Struct {
    Struct {
        fields: [(
            TLS_MODE_KEY.to_string(),
            Value {
                kind: Some(ValueKind::StringValue(TLS_MODE_PLAINTEXT.into())),
            },
        )]
        .into_iter()
        .collect(),
    }
}

/// The mTLS transport socket of an outbound connection, verifying the
/// server is one of `sans` (SPIFFE IDs).
pub(super) fn upstream(sni: &str, protocol: Protocol, sans: &[String]) -> TransportSocket {
    let context = UpstreamTlsContext {
        common_tls_context: Some(common(alpn(protocol), sans)),
        sni: sni.to_string(),
        ..Default::default()
    };
    tls_socket(to_any(&context))
}

/// The transport socket an outbound cluster of a service in migration
/// uses for its endpoints that take no mTLS: plaintext, for the endpoints
/// marked with [`plaintext_endpoint_metadata`] only. Every other endpoint
/// gets the cluster's own TLS socket, so an endpoint without a mark (a
/// load assignment meant for another version of the cluster, say) fails
/// closed.
pub(super) fn plaintext_match() -> TransportSocketMatch {
    TransportSocketMatch {
        name: "plaintext".into(),
        r#match: Some(plaintext_mode_struct()),
        transport_socket: Some(TransportSocket {
            name: "envoy.transport_sockets.raw_buffer".into(),
            config_type: Some(transport_socket::ConfigType::TypedConfig(to_any(
                &RawBuffer::default(),
            ))),
        }),
    }
}

/// Endpoint metadata marking a pod that takes no mTLS, in a service whose
/// other pods do.
pub(super) fn plaintext_endpoint_metadata() -> Metadata {
    Metadata {
        filter_metadata: [(TRANSPORT_SOCKET_MATCH.to_string(), plaintext_mode_struct())]
            .into_iter()
            .collect(),
        ..Default::default()
    }
}

/// The transport socket of an inbound TLS filter chain.
pub(super) fn downstream(protocol: Protocol) -> TransportSocket {
    let mut alpn_protocols = vec!["h2", "http/1.1"];
    if !protocol.is_http() {
        alpn_protocols.clear();
    }
    let context = DownstreamTlsContext {
        common_tls_context: Some(common(&alpn_protocols, &[])),
        require_client_certificate: Some(BoolValue { value: true }),
        ..Default::default()
    };
    tls_socket(to_any(&context))
}
