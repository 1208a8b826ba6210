//! What the injector injects: images, the control plane's address and
//! identity, and the proxy defaults pods may override by annotation.

use serde::{Deserialize, Serialize};

/// Mesh-wide injection settings (flags of `meshd run`, values of the chart).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct InjectorConfig {
    /// The Envoy image of the sidecar.
    pub proxy_image: String,
    /// The meshd image, run as the traffic-capture init container.
    pub init_image: String,
    /// Where proxies reach the control plane's xDS port, `host:port`.
    pub xds_address: String,
    /// The SPIFFE ID the control plane's certificate carries.
    pub control_plane_id: String,
    /// The control plane's own namespace: never injected.
    pub control_plane_namespace: String,
    /// The ADS flavour proxies use: `delta` or `sotw`.
    pub xds_protocol: String,
    /// Run the proxy as a native sidecar (an init container with
    /// `restartPolicy: Always`, Kubernetes 1.29+) unless a pod says
    /// otherwise with `meshd.io/native-sidecar`.
    pub native_sidecar: bool,
    /// Send the app containers' HTTP probes through the proxy's 15021
    /// listener (so they pass under STRICT mTLS) unless a pod says
    /// otherwise with `meshd.io/rewrite-app-probes`.
    pub rewrite_app_probes: bool,
    /// Add the Prometheus scrape annotations to meshed pods unless a pod
    /// says otherwise with `meshd.io/prometheus-scrape`.
    pub prometheus_scrape: bool,
    /// Proxy resources, overridable per pod.
    pub proxy_cpu_request: String,
    pub proxy_memory_request: String,
    pub proxy_cpu_limit: String,
    pub proxy_memory_limit: String,
    /// Envoy's log level, overridable per pod.
    pub proxy_log_level: String,
    /// Envoy worker threads (0: one per core), overridable per pod.
    pub proxy_concurrency: u32,
    /// Seconds Envoy drains connections before it stops.
    pub drain_seconds: u32,
    /// Secrets (in each workload's namespace) the kubelet uses to pull the
    /// proxy and init images from a private registry: appended to every
    /// injected pod's `spec.imagePullSecrets`, after the pod's own, each
    /// once.
    pub image_pull_secrets: Vec<String>,
}

impl Default for InjectorConfig {
    fn default() -> Self {
        InjectorConfig {
            proxy_image: "envoyproxy/envoy:v1.40.0".into(),
            init_image: format!("ghcr.io/meshd/meshd:{}", env!("CARGO_PKG_VERSION")),
            xds_address: "meshd.meshd-system.svc:15010".into(),
            control_plane_id: meshd_api::sidecar::bootstrap::DEFAULT_CONTROL_PLANE_ID.into(),
            control_plane_namespace: "meshd-system".into(),
            xds_protocol: "delta".into(),
            native_sidecar: true,
            rewrite_app_probes: true,
            prometheus_scrape: true,
            proxy_cpu_request: "100m".into(),
            proxy_memory_request: "128Mi".into(),
            proxy_cpu_limit: "2".into(),
            proxy_memory_limit: "1Gi".into(),
            proxy_log_level: "warning".into(),
            proxy_concurrency: 2,
            drain_seconds: 5,
            image_pull_secrets: Vec::new(),
        }
    }
}

/// Where the sidecar finds its bootstrap identity (a Secret mounted
/// read-only), as `meshd bootstrap --identity-dir` would point at it.
pub const IDENTITY_MOUNT: &str = "/etc/meshd/identity";

/// The Secret holding the bootstrap identity of a service account's pods.
pub fn identity_secret_name(service_account: &str) -> String {
    format!("meshd-identity-{service_account}")
}
