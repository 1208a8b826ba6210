//! Building blocks of Envoy clusters and endpoints: the EDS, DNS,
//! original-destination and inbound clusters, and the addresses in them.

use std::collections::HashMap;
use std::net::IpAddr;

use meshd_proto::envoy::config::cluster::v3::{Cluster, TrackClusterStats, cluster};
use meshd_proto::envoy::config::core::v3::{
    Address, BindConfig, HealthStatus, Http2ProtocolOptions, SocketAddress, address,
    socket_address::PortSpecifier,
};
use meshd_proto::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, LbEndpoint, LocalityLbEndpoints, lb_endpoint::HostIdentifier,
};
use meshd_proto::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options,
};
use meshd_proto::{Any, Duration, to_any};

use crate::model::Protocol;

use super::resource::{INBOUND_PASSTHROUGH_CLUSTER, PASSTHROUGH_CLUSTER, ads};

pub fn inbound_cluster_name(port: u16) -> String {
    format!("inbound|{port}||")
}

/// Request and response size histograms (`upstream_rq_body_size`,
/// `upstream_rs_body_size`, and the headers'), which Envoy keeps only when
/// asked: the mesh's request metrics include sizes.
fn track_sizes(protocol: Protocol) -> Option<TrackClusterStats> {
    protocol.is_http().then(|| TrackClusterStats {
        request_response_sizes: true,
        ..Default::default()
    })
}

pub(super) fn duration(seconds: i64) -> Option<Duration> {
    Some(Duration { seconds, nanos: 0 })
}

pub(super) fn socket_address(ip: IpAddr, port: u16) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.to_string(),
            port_specifier: Some(PortSpecifier::PortValue(port.into())),
            ..Default::default()
        })),
    }
}

pub(super) fn lb_endpoint(ip: IpAddr, port: u16) -> LbEndpoint {
    LbEndpoint {
        host_identifier: Some(HostIdentifier::Endpoint(
            meshd_proto::envoy::config::endpoint::v3::Endpoint {
                address: Some(socket_address(ip, port)),
                ..Default::default()
            },
        )),
        health_status: HealthStatus::Healthy as i32,
        ..Default::default()
    }
}

/// HTTP/2 to the upstream for h2 and gRPC ports; HTTP/1.1 (Envoy's default)
/// otherwise.
fn protocol_options(protocol: Protocol) -> HashMap<String, Any> {
    use http_protocol_options::{
        ExplicitHttpConfig, UpstreamProtocolOptions, explicit_http_config::ProtocolConfig,
    };
    let mut options = HashMap::new();
    if protocol.is_http2() {
        let http2 = HttpProtocolOptions {
            upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
                ExplicitHttpConfig {
                    protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(
                        Http2ProtocolOptions::default(),
                    )),
                },
            )),
            ..Default::default()
        };
        options.insert(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_string(),
            to_any(&http2),
        );
    }
    options
}

pub(super) fn eds_cluster(name: &str, protocol: Protocol) -> Cluster {
    Cluster {
        name: name.to_string(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cluster::EdsClusterConfig {
            eds_config: ads(),
            service_name: name.to_string(),
        }),
        connect_timeout: duration(10),
        lb_policy: cluster::LbPolicy::RoundRobin as i32,
        track_cluster_stats: track_sizes(protocol),
        typed_extension_protocol_options: protocol_options(protocol),
        ..Default::default()
    }
}

/// The cluster of an ExternalName service's port: Envoy resolves the
/// external name itself and connects to the first address of the latest
/// answer (LOGICAL_DNS), as the application would without the mesh. The
/// name is outside the mesh, so the connection is plaintext and there is
/// no load assignment to wait for over EDS.
pub(super) fn dns_cluster(name: &str, host: &str, port: u16, protocol: Protocol) -> Cluster {
    Cluster {
        name: name.to_string(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::LogicalDns as i32,
        )),
        // Pods and the capture listener are IPv4 today; a name with both
        // A and AAAA records must not make Envoy pick an unreachable IPv6
        // address.
        dns_lookup_family: cluster::DnsLookupFamily::V4Preferred as i32,
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: name.to_string(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(HostIdentifier::Endpoint(
                        meshd_proto::envoy::config::endpoint::v3::Endpoint {
                            address: Some(Address {
                                address: Some(address::Address::SocketAddress(SocketAddress {
                                    address: host.to_string(),
                                    port_specifier: Some(PortSpecifier::PortValue(port.into())),
                                    ..Default::default()
                                })),
                            }),
                            ..Default::default()
                        },
                    )),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        connect_timeout: duration(10),
        lb_policy: cluster::LbPolicy::RoundRobin as i32,
        track_cluster_stats: track_sizes(protocol),
        typed_extension_protocol_options: protocol_options(protocol),
        ..Default::default()
    }
}

/// A cluster that connects to the address the application asked for: the
/// passthrough, and the ports of headless services, whose clients address
/// pods directly.
pub(super) fn original_dst_cluster(name: &str) -> Cluster {
    Cluster {
        name: name.to_string(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::OriginalDst as i32,
        )),
        lb_policy: cluster::LbPolicy::ClusterProvided as i32,
        connect_timeout: duration(10),
        ..Default::default()
    }
}

pub(super) fn inbound_cluster(name: &str, port: u16, protocol: Protocol) -> Cluster {
    Cluster {
        name: name.to_string(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Static as i32,
        )),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: name.to_string(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![lb_endpoint(IpAddr::from([127, 0, 0, 1]), port)],
                ..Default::default()
            }],
            ..Default::default()
        }),
        connect_timeout: duration(10),
        track_cluster_stats: track_sizes(protocol),
        typed_extension_protocol_options: protocol_options(protocol),
        ..Default::default()
    }
}

/// Where traffic to unknown destinations goes: on to the address the
/// application asked for, untouched.
pub(super) fn passthrough_cluster() -> Cluster {
    original_dst_cluster(PASSTHROUGH_CLUSTER)
}

/// The inbound catch-all's way on to the app: the original destination (the
/// pod's own address), from a loopback source the capture rules let
/// through, so the connection is not captured into the inbound side again.
pub(super) fn inbound_passthrough_cluster() -> Cluster {
    Cluster {
        upstream_bind_config: Some(BindConfig {
            source_address: Some(SocketAddress {
                address: meshd_api::sidecar::INBOUND_PASSTHROUGH_SOURCE.to_string(),
                port_specifier: Some(PortSpecifier::PortValue(0)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..original_dst_cluster(INBOUND_PASSTHROUGH_CLUSTER)
    }
}
