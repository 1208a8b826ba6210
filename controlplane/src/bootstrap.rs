//! The Envoy bootstrap for a workload's sidecar.
//!
//! Everything dynamic comes over ADS; the bootstrap holds only what Envoy
//! needs before it can reach the control plane: its node identity, the xDS
//! cluster, the admin interface, and two small static listeners that expose
//! readiness (15021, for kubelet probes) and Prometheus stats (15090)
//! without exposing the admin interface itself.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

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
    /// Where the proxy's bootstrap identity lives (see [`write_identity`]).
    /// With it, the proxy talks to the control plane over mutual TLS and
    /// proves which workload it is; without it, xDS is plaintext (only for
    /// a control plane without a CA).
    pub identity_dir: Option<PathBuf>,
    /// The SPIFFE ID the control plane's certificate must carry.
    pub control_plane_id: String,
}

/// The SPIFFE ID of a control plane installed as `meshd` in `meshd-system`.
pub const DEFAULT_CONTROL_PLANE_ID: &str = "spiffe://cluster.local/ns/meshd-system/sa/meshd";

/// File names inside an identity directory.
pub mod identity_file_names {
    pub const CERT_CHAIN: &str = "cert-chain.pem";
    pub const KEY: &str = "key.pem";
    pub const ROOT: &str = "root-cert.pem";
    pub const CERT_SDS: &str = "identity.sds.yaml";
    pub const ROOT_SDS: &str = "trust.sds.yaml";
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
            identity_dir: None,
            control_plane_id: DEFAULT_CONTROL_PLANE_ID.to_string(),
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

/// An SDS config source reading a secret from a file Envoy watches, so a
/// rotated identity (a Kubernetes Secret update swaps the directory) is
/// picked up without a restart.
fn file_sds(name: &str, dir: &Path, file: &str) -> Value {
    json!({
        "name": name,
        "sds_config": {
            "path_config_source": {
                "path": dir.join(file).display().to_string(),
                "watched_directory": { "path": dir.display().to_string() },
            },
            "resource_api_version": "V3",
        },
    })
}

/// The xDS cluster's TLS: the bootstrap identity as client certificate,
/// and the control plane's SPIFFE ID checked on its certificate.
fn xds_tls(dir: &Path, control_plane_id: &str) -> Value {
    json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": {
                "alpn_protocols": ["h2"],
                "tls_certificate_sds_secret_configs": [file_sds("xds-identity", dir, identity_file_names::CERT_SDS)],
                "combined_validation_context": {
                    "default_validation_context": {
                        "match_typed_subject_alt_names": [{ "san_type": "URI", "matcher": { "exact": control_plane_id } }],
                    },
                    "validation_context_sds_secret_config": file_sds("xds-trust", dir, identity_file_names::ROOT_SDS),
                },
            },
        },
    })
}

/// One file of a bootstrap identity.
pub struct IdentityFile {
    pub name: &'static str,
    pub contents: String,
    /// 0600 for the key, 0644 otherwise.
    pub mode: u32,
}

/// The files of a bootstrap identity that will live in `dir`: the
/// certificate chain, the key, the trust bundle, and the two SDS files the
/// bootstrap points Envoy at (which name the others by absolute path).
pub fn identity_files(
    dir: &Path,
    chain_pem: &str,
    key: &meshd_ca::PrivateKey,
    bundle_pem: &str,
) -> Vec<IdentityFile> {
    let path = |name: &str| dir.join(name).display().to_string();
    let cert_sds = json!({ "resources": [{
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
        "name": "xds-identity",
        "tls_certificate": {
            "certificate_chain": { "filename": path(identity_file_names::CERT_CHAIN) },
            "private_key": { "filename": path(identity_file_names::KEY) },
        },
    }]});
    let root_sds = json!({ "resources": [{
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
        "name": "xds-trust",
        "validation_context": { "trusted_ca": { "filename": path(identity_file_names::ROOT) } },
    }]});
    let file = |name, contents: String, mode| IdentityFile {
        name,
        contents,
        mode,
    };
    vec![
        file(
            identity_file_names::KEY,
            key.expose_pem().to_string(),
            0o600,
        ),
        file(
            identity_file_names::CERT_CHAIN,
            chain_pem.to_string(),
            0o644,
        ),
        file(identity_file_names::ROOT, bundle_pem.to_string(), 0o644),
        file(identity_file_names::CERT_SDS, cert_sds.to_string(), 0o644),
        file(identity_file_names::ROOT_SDS, root_sds.to_string(), 0o644),
    ]
}

/// Writes a bootstrap identity into `dir` (see [`identity_files`]); the key
/// gets mode 0600: the caller gives it to the proxy's user.
pub fn write_identity(
    dir: &Path,
    chain_pem: &str,
    key: &meshd_ca::PrivateKey,
    bundle_pem: &str,
) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir)?;
    for file in identity_files(dir, chain_pem, key, bundle_pem) {
        // Write then rename, so Envoy's file watch never reads half a file.
        let tmp = dir.join(format!(".{}.tmp", file.name));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(file.mode)
            .open(&tmp)?;
        f.write_all(file.contents.as_bytes())?;
        std::fs::rename(tmp, dir.join(file.name))?;
    }
    Ok(())
}

/// Renders the bootstrap as a JSON value.
pub fn render(config: &BootstrapConfig) -> Value {
    let api_type = match config.xds_protocol {
        XdsProtocol::Delta => "DELTA_GRPC",
        XdsProtocol::Sotw => "GRPC",
    };
    let mut xds_cluster = static_cluster("xds-grpc", &config.xds_host, config.xds_port, true);
    if let Some(dir) = &config.identity_dir {
        xds_cluster["transport_socket"] = xds_tls(dir, &config.control_plane_id);
    }
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
                xds_cluster,
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
