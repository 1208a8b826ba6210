//! The Envoy bootstrap for a workload's sidecar.
//!
//! Everything dynamic comes over ADS; the bootstrap holds only what Envoy
//! needs before it can reach the control plane: its node identity, the xDS
//! cluster, the admin interface, and two small static listeners that expose
//! readiness (15021, for kubelet probes) and Prometheus stats (15090)
//! without exposing the admin interface itself.
//!
//! The readiness listener also serves the app's own HTTP probes, which the
//! injector rewrites to it: under STRICT mTLS the inbound listener refuses
//! kubelet's plaintext, so kubelet asks `15021/app-health/<container>/<kind>`
//! and the proxy forwards to the app on loopback, as the original path.
//!
//! ```text
//! kubelet ──GET :15021/app-health/web/readyz──> readiness listener ──GET /ready──> 127.0.0.1:8080 (cluster app-probe|8080)
//! ```
//!
//! It serves the app's gRPC probes too. A gRPC probe has no path of its
//! own to route by (kubelet always calls `grpc.health.v1.Health/Check`,
//! naming the service in the request body), so the injector points them
//! at 15021 only when they all reach one app port, and the listener (which
//! reads HTTP/1.1 and plaintext HTTP/2 alike) forwards that one method,
//! and nothing else, to the app over HTTP/2 on loopback:
//!
//! ```text
//! kubelet ──h2c POST :15021/grpc.health.v1.Health/Check──> readiness listener ──h2c──> 127.0.0.1:9555 (cluster app-grpc-probe|9555)
//! ```

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use super::ports;

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
    /// The app's HTTP probes served on the readiness port (see the module
    /// documentation).
    pub app_probes: Vec<AppProbe>,
    /// Where the app's gRPC probes, sent to the readiness port, go.
    pub grpc_probe: Option<GrpcProbe>,
    /// The workload the proxy's metrics name it by (a Deployment's name
    /// rather than its pods'; see [`super::stats`]).
    pub workload: String,
    /// The pod's service account: with the namespace and `trust_domain`,
    /// the identity its metrics carry.
    pub service_account: String,
    pub trust_domain: String,
}

/// The app's gRPC health service, which kubelet's gRPC probes reach through
/// the proxy's readiness port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GrpcProbe {
    /// The app's gRPC port, reached on 127.0.0.1.
    pub port: u16,
    /// How long the proxy waits for the app's answer.
    pub timeout: Duration,
}

/// The one method a gRPC probe calls, and the only one the readiness port
/// forwards: the app's other methods stay behind mTLS.
pub const GRPC_HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";

/// The static cluster that reaches the app's gRPC `port` for its probes.
pub fn app_grpc_probe_cluster(port: u16) -> String {
    format!("app-grpc-probe|{port}")
}

/// One app HTTP probe that kubelet sends to the proxy's readiness port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AppProbe {
    /// The path kubelet asks for on the readiness port, matched exactly:
    /// `/app-health/<container>/<livez|readyz|startupz>`.
    pub path: String,
    /// The app's port, reached on 127.0.0.1.
    pub port: u16,
    /// The path the app serves the probe on, as the pod spec wrote it
    /// (it may carry a query).
    pub original_path: String,
    /// How long the proxy waits for the app: the probe's own timeout, after
    /// which kubelet has given up anyway.
    pub timeout: Duration,
}

/// The prefix of every rewritten probe path.
pub const APP_HEALTH_PREFIX: &str = "/app-health/";

/// The static cluster that reaches the app's `port` for its probes.
pub fn app_probe_cluster(port: u16) -> String {
    format!("app-probe|{port}")
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
            app_probes: Vec::new(),
            grpc_probe: None,
            workload: String::new(),
            service_account: "default".into(),
            trust_domain: "cluster.local".into(),
        }
    }

    /// The workload its metrics name: [`Self::workload`], else the pod.
    pub fn workload(&self) -> &str {
        if self.workload.is_empty() {
            &self.pod
        } else {
            &self.workload
        }
    }

    /// The SPIFFE ID its metrics carry as `workload_identity`.
    pub fn identity(&self) -> String {
        format!(
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }

    pub fn node_id(&self) -> String {
        crate::names::node_id(&self.namespace, &self.pod)
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
    admin_path_listener_with(name, address, port, path, rewrite, Vec::new())
}

/// [`admin_path_listener`], with `extra_routes` after the admin path's.
fn admin_path_listener_with(
    name: &str,
    address: IpAddr,
    port: u16,
    path: &str,
    rewrite: &str,
    extra_routes: Vec<Value>,
) -> Value {
    let mut routes = vec![json!({
        "match": { "path": path },
        "route": { "cluster": "admin", "prefix_rewrite": rewrite },
    })];
    routes.extend(extra_routes);
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
                    "routes": routes,
                }] },
                "http_filters": [{
                    "name": "envoy.filters.http.router",
                    "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" },
                }],
            },
        }] }],
    })
}

/// The route of one app probe: an exact path match (the query is not part
/// of the match and is kept), its whole path replaced by the original one.
fn app_probe_route(probe: &AppProbe) -> Value {
    let timeout = format!(
        "{}.{:03}s",
        probe.timeout.as_secs(),
        probe.timeout.subsec_millis()
    );
    json!({
        "match": { "path": probe.path },
        "route": {
            "cluster": app_probe_cluster(probe.port),
            "prefix_rewrite": probe.original_path,
            "timeout": timeout,
        },
    })
}

/// The route of the app's gRPC probes: only gRPC calls of the health
/// check method.
fn grpc_probe_route(probe: &GrpcProbe) -> Value {
    json!({
        "match": { "path": GRPC_HEALTH_CHECK, "grpc": {} },
        "route": {
            "cluster": app_grpc_probe_cluster(probe.port),
            "timeout": format!("{}.{:03}s", probe.timeout.as_secs(), probe.timeout.subsec_millis()),
        },
    })
}

/// A plaintext HTTP/1.1 cluster per distinct app port, in port order.
fn app_probe_clusters(probes: &[AppProbe]) -> Vec<Value> {
    let ports: std::collections::BTreeSet<u16> = probes.iter().map(|p| p.port).collect();
    ports
        .into_iter()
        .map(|port| static_cluster(&app_probe_cluster(port), "127.0.0.1", port, false))
        .collect()
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
/// and the control plane's SPIFFE ID checked on its certificate. TLS 1.3,
/// as between workloads (see the control plane's `translate::tls`): Envoy's
/// client default stops at 1.2, where the proxy's certificate, and so its
/// identity, crosses the network in the clear.
fn xds_tls(dir: &Path, control_plane_id: &str) -> Value {
    json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": {
                "alpn_protocols": ["h2"],
                "tls_params": {
                    "tls_minimum_protocol_version": "TLSv1_2",
                    "tls_maximum_protocol_version": "TLSv1_3",
                },
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
    let mut clusters = vec![
        xds_cluster,
        static_cluster(
            "admin",
            &config.admin.ip().to_string(),
            config.admin.port(),
            false,
        ),
    ];
    clusters.extend(app_probe_clusters(&config.app_probes));
    let mut probe_routes: Vec<Value> = config.app_probes.iter().map(app_probe_route).collect();
    if let Some(probe) = &config.grpc_probe {
        // Plaintext HTTP/2 to the app: gRPC needs it, and there is no
        // keepalive to configure for a connection kubelet opens per probe.
        let mut cluster = static_cluster(
            &app_grpc_probe_cluster(probe.port),
            "127.0.0.1",
            probe.port,
            false,
        );
        cluster["typed_extension_protocol_options"] = json!({
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": { "http2_protocol_options": {} },
            }
        });
        clusters.push(cluster);
        probe_routes.push(grpc_probe_route(probe));
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
        "stats_config": super::stats::stats_config(config.workload(), &config.namespace, &config.identity()),
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
            "clusters": clusters,
            "listeners": [
                admin_path_listener_with("readiness", config.proxy_address, ports::READINESS, "/healthz/ready", "/ready", probe_routes),
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
        // No probes: the two static clusters only.
        assert_eq!(
            v["static_resources"]["clusters"].as_array().unwrap().len(),
            2
        );
    }

    #[test]
    fn app_probes_are_routed_on_the_readiness_listener_to_the_app() {
        let mut config = BootstrapConfig::new("shop", "web-0");
        let probe = |path: &str, port, original: &str| AppProbe {
            path: path.into(),
            port,
            original_path: original.into(),
            timeout: Duration::from_millis(1500),
        };
        config.app_probes = vec![
            probe("/app-health/web/readyz", 8080, "/ready?full=1"),
            probe("/app-health/web/livez", 8080, "/live"),
            probe("/app-health/admin/livez", 9090, "/"),
        ];
        let v = render(&config);
        let listener = &v["static_resources"]["listeners"][0];
        assert_eq!(listener["name"], "readiness");
        let routes = &listener["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"]
            [0]["routes"];
        let routes = routes.as_array().unwrap();
        assert_eq!(routes.len(), 4);
        // Envoy's own readiness first, unchanged.
        assert_eq!(routes[0]["match"]["path"], "/healthz/ready");
        assert_eq!(routes[0]["route"]["cluster"], "admin");
        assert_eq!(routes[1]["match"]["path"], "/app-health/web/readyz");
        assert_eq!(routes[1]["route"]["cluster"], "app-probe|8080");
        assert_eq!(routes[1]["route"]["prefix_rewrite"], "/ready?full=1");
        assert_eq!(routes[1]["route"]["timeout"], "1.500s");
        assert_eq!(routes[3]["route"]["cluster"], "app-probe|9090");
        // One cluster per distinct port, to the app on loopback.
        let clusters = v["static_resources"]["clusters"].as_array().unwrap();
        let names: Vec<&str> = clusters
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            ["xds-grpc", "admin", "app-probe|8080", "app-probe|9090"]
        );
        let address = &clusters[3]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
            ["address"]["socket_address"];
        assert_eq!(address["address"], "127.0.0.1");
        assert_eq!(address["port_value"], 9090);
        assert_eq!(clusters[3]["type"], "STATIC");
        // Plain HTTP/1.1: no protocol options, no TLS.
        assert!(
            clusters[3]
                .get("typed_extension_protocol_options")
                .is_none()
        );
        assert!(clusters[3].get("transport_socket").is_none());
    }

    #[test]
    fn grpc_probes_are_routed_on_the_readiness_listener_to_the_apps_grpc_port() {
        let mut config = BootstrapConfig::new("shop", "cart-0");
        config.grpc_probe = Some(GrpcProbe {
            port: 7070,
            timeout: Duration::from_secs(5),
        });
        let v = render(&config);
        let routes = &v["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
            ["route_config"]["virtual_hosts"][0]["routes"];
        assert_eq!(routes.as_array().unwrap().len(), 2);
        // Only gRPC calls of the health check, nothing else of the app.
        assert_eq!(
            routes[1]["match"],
            json!({ "path": "/grpc.health.v1.Health/Check", "grpc": {} })
        );
        assert_eq!(routes[1]["route"]["cluster"], "app-grpc-probe|7070");
        assert_eq!(routes[1]["route"]["timeout"], "5.000s");
        assert!(routes[1]["route"].get("prefix_rewrite").is_none());
        let clusters = v["static_resources"]["clusters"].as_array().unwrap();
        let cluster = &clusters[2];
        assert_eq!(cluster["name"], "app-grpc-probe|7070");
        let address = &cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
            ["socket_address"];
        assert_eq!(address["address"], "127.0.0.1");
        assert_eq!(address["port_value"], 7070);
        // HTTP/2 in plaintext.
        let options = &cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
        assert_eq!(
            options["explicit_http_config"],
            json!({ "http2_protocol_options": {} })
        );
        assert!(cluster.get("transport_socket").is_none());
    }
}
