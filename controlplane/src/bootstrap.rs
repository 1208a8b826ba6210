//! The Envoy bootstrap for a workload's sidecar.
//!
//! Everything dynamic comes over ADS; the bootstrap holds only what Envoy
//! needs before it can reach the control plane: its node identity, the xDS
//! cluster, the admin interface, and two small static listeners that expose
//! readiness (15021, for kubelet probes) and Prometheus stats (15090)
//! without exposing the admin interface itself.

use std::net::{IpAddr, SocketAddr};

use serde_json::{Value, json};

use crate::translate::ports;

/// Which ADS flavour the proxy speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum XdsProtocol {
    /// Incremental xDS: only changed resources cross the wire.
    #[default]
    Delta,
    /// State of the World: every response carries the full set.
    Sotw,
}

impl XdsProtocol {
    pub const ACCEPTED: &'static str = "delta, sotw";

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "delta" => Some(XdsProtocol::Delta),
            "sotw" => Some(XdsProtocol::Sotw),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct BootstrapConfig {
    pub namespace: String,
    pub pod: String,
    /// The control plane's xDS address: an IP or a DNS name, and a port.
    pub xds_host: String,
    pub xds_port: u16,
    pub xds_protocol: XdsProtocol,
    /// Where Envoy's admin listens; loopback only, it is not authenticated.
    pub admin: SocketAddr,
    /// The address the readiness and stats listeners bind to.
    pub proxy_address: IpAddr,
}

impl BootstrapConfig {
    pub fn new(namespace: impl Into<String>, pod: impl Into<String>) -> Self {
        BootstrapConfig {
            namespace: namespace.into(),
            pod: pod.into(),
            xds_host: "127.0.0.1".into(),
            xds_port: 15010,
            xds_protocol: XdsProtocol::default(),
            admin: SocketAddr::from(([127, 0, 0, 1], ports::ADMIN)),
            proxy_address: IpAddr::from([0, 0, 0, 0]),
        }
    }

    pub fn node_id(&self) -> String {
        crate::model::node_id(&self.namespace, &self.pod)
    }
}

fn socket_address(address: impl ToString, port: u16) -> Value {
    json!({ "socket_address": { "address": address.to_string(), "port_value": port } })
}

fn static_cluster(name: &str, host: &str, port: u16, http2: bool) -> Value {
    let mut cluster = json!({
        "name": name,
        "type": if host.parse::<IpAddr>().is_ok() { "STATIC" } else { "STRICT_DNS" },
        "connect_timeout": "5s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": socket_address(host, port) } }] }],
        },
    });
    if http2 {
        cluster["typed_extension_protocol_options"] = json!({
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": { "http2_protocol_options": {
                    // Notice a dead control plane without waiting for TCP.
                    "connection_keepalive": { "interval": "30s", "timeout": "10s" }
                } },
            }
        });
    }
    cluster
}

/// A listener that serves one admin path (and nothing else) on `port`.
fn admin_path_listener(name: &str, address: IpAddr, port: u16, path: &str, rewrite: &str) -> Value {
    json!({
        "name": name,
        "address": socket_address(address, port),
        "filter_chains": [{ "filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": name,
                "route_config": { "virtual_hosts": [{
                    "name": name,
                    "domains": ["*"],
                    "routes": [{
                        "match": { "path": path },
                        "route": { "cluster": "admin", "prefix_rewrite": rewrite },
                    }],
                }] },
                "http_filters": [{
                    "name": "envoy.filters.http.router",
                    "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" },
                }],
            },
        }] }],
    })
}

/// Renders the bootstrap as a JSON value.
pub fn render(config: &BootstrapConfig) -> Value {
    let api_type = match config.xds_protocol {
        XdsProtocol::Delta => "DELTA_GRPC",
        XdsProtocol::Sotw => "GRPC",
    };
    json!({
        "node": {
            "id": config.node_id(),
            "cluster": format!("{}.{}", config.pod, config.namespace),
            "metadata": {
                "namespace": config.namespace,
                "pod": config.pod,
                "meshd_version": env!("CARGO_PKG_VERSION"),
            },
        },
        "admin": {
            "address": socket_address(config.admin.ip(), config.admin.port()),
        },
        "dynamic_resources": {
            "ads_config": {
                "api_type": api_type,
                "transport_api_version": "V3",
                "set_node_on_first_message_only": true,
                "grpc_services": [{ "envoy_grpc": { "cluster_name": "xds-grpc" } }],
            },
            "cds_config": { "ads": {}, "resource_api_version": "V3" },
            "lds_config": { "ads": {}, "resource_api_version": "V3" },
        },
        "static_resources": {
            "clusters": [
                static_cluster("xds-grpc", &config.xds_host, config.xds_port, true),
                static_cluster("admin", &config.admin.ip().to_string(), config.admin.port(), false),
            ],
            "listeners": [
                admin_path_listener("readiness", config.proxy_address, ports::READINESS, "/healthz/ready", "/ready"),
                admin_path_listener("prometheus", config.proxy_address, ports::PROMETHEUS, "/stats/prometheus", "/stats/prometheus"),
            ],
        },
    })
}

/// Renders the bootstrap as YAML, the form `envoy -c` reads.
pub fn render_yaml(config: &BootstrapConfig) -> String {
    serde_yaml::to_string(&render(config)).expect("a JSON value always serialises as YAML")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_names_the_node_and_the_ads_flavour() {
        let mut config = BootstrapConfig::new("shop", "web-0");
        let v = render(&config);
        assert_eq!(v["node"]["id"], "web-0.shop");
        assert_eq!(
            v["dynamic_resources"]["ads_config"]["api_type"],
            "DELTA_GRPC"
        );
        assert_eq!(
            v["admin"]["address"]["socket_address"]["address"],
            "127.0.0.1"
        );
        config.xds_protocol = XdsProtocol::Sotw;
        config.xds_host = "meshd.meshd-system.svc".into();
        let v = render(&config);
        assert_eq!(v["dynamic_resources"]["ads_config"]["api_type"], "GRPC");
        assert_eq!(v["static_resources"]["clusters"][0]["type"], "STRICT_DNS");
    }
}
