//! A mesh in network namespaces: pods with captured traffic, each with its
//! own Envoy (as the proxy UID, with the iptables rules `meshd capture`
//! installs, mTLS between them) and optionally an app; the control plane
//! on the hub, reading a registry directory the test rewrites.
//!
//! ```text
//! test ──writes──> registry dir ──> control plane (hub 198.18.0.1:15010) ──xDS──> every pod's Envoy
//! pod 198.18.0.<host>: app ──iptables──> Envoy ──mTLS──> Envoy ──> app   (pod per PodSpec)
//! ```
//!
//! Everything is torn down on drop, namespaces last, also when a test
//! panics.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use meshd_api::annotations::authorization::DefaultPolicy;
use meshd_api::annotations::pod::SamplingPercent;
use meshd_api::sidecar::bootstrap::{AppProbe, BootstrapConfig, GrpcProbe, XdsProtocol};
use meshd_controlplane::identity::IdentityConfig;
use meshd_controlplane::server::{ControlPlane, Options, Source};
use meshd_controlplane::translate::{Collector, Telemetry, Tracing};
use meshd_injector::capture::{self, CaptureConfig, PROXY_UID};

use crate::envoy::{self, Envoy, admin_get};
use crate::http::{self, App};
use crate::netns::{self, HUB_IP, NetPod, Topology};
use crate::pki::Pki;

/// The sidecar of a pod in a namespace e2e: its Envoy, as the proxy UID,
/// bootstrapped to reach the control plane on the hub.
pub struct Sidecar<'a> {
    pub namespace: &'a str,
    /// The pod's name (with the namespace, the node id).
    pub name: &'a str,
    pub protocol: XdsProtocol,
}

impl Sidecar<'_> {
    /// Provisions the bootstrap identity from `pki` and starts Envoy in `pod`.
    pub fn start(
        &self,
        pod: &NetPod,
        pki: &Pki,
        envoy: &Path,
        work: &Path,
    ) -> anyhow::Result<Envoy> {
        self.start_with_probes(pod, pki, envoy, work, &[])
    }

    /// [`Self::start`], the bootstrap serving the app's `probes` on the
    /// readiness port, as the injector renders it for a pod with probes.
    pub fn start_with_probes(
        &self,
        pod: &NetPod,
        pki: &Pki,
        envoy: &Path,
        work: &Path,
        probes: &[AppProbe],
    ) -> anyhow::Result<Envoy> {
        self.start_with_grpc_probe(pod, pki, envoy, work, probes, None)
    }

    /// [`Self::start_with_probes`], the readiness port also forwarding
    /// the app's gRPC probes to `grpc_probe`.
    pub fn start_with_grpc_probe(
        &self,
        pod: &NetPod,
        pki: &Pki,
        envoy: &Path,
        work: &Path,
        probes: &[AppProbe],
        grpc_probe: Option<GrpcProbe>,
    ) -> anyhow::Result<Envoy> {
        let mut config = BootstrapConfig::new(self.namespace, self.name);
        // The service account the registry's pods have (see `registry::pod`).
        config.service_account = self.name.to_string();
        config.xds_host = HUB_IP.to_string();
        config.xds_port = 15010;
        config.xds_protocol = self.protocol;
        config.app_probes = probes.to_vec();
        config.grpc_probe = grpc_probe;
        pki.provision(&mut config, self.name, work, Some(PROXY_UID))?;
        let bootstrap = crate::write_bootstrap(work, &config)?;
        Envoy::start_in(
            self.namespace,
            self.name,
            envoy,
            &bootstrap,
            config.admin,
            &proxy_launcher(pod),
            work,
        )
    }
}

/// Namespaces, or a clear account of why they are unavailable. Under
/// `CI=true` that fails the test.
pub fn require_namespaces() -> bool {
    match netns::available() {
        Ok(()) => true,
        Err(why) if envoy::in_ci() => {
            panic!("network namespaces are required under CI=true: {why}")
        }
        Err(why) => {
            eprintln!(
                "network namespace test did not run: {why}. The loopback tests cover the rest."
            );
            false
        }
    }
}

/// The proxy UID must be able to execute Envoy; a binary under a private
/// home directory is copied somewhere it can.
pub fn envoy_for_proxy_uid(envoy: &Path, work: &Path) -> PathBuf {
    let uid = PROXY_UID.to_string();
    let ok = std::process::Command::new("setpriv")
        .args(["--reuid", &uid, "--regid", &uid, "--clear-groups"])
        .arg(envoy)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return envoy.to_path_buf();
    }
    let copy = work.join("envoy");
    std::fs::copy(envoy, &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    copy
}

/// The argv prefix that runs Envoy in `pod` as the proxy UID (whose
/// traffic capture lets through).
pub fn proxy_launcher(pod: &NetPod) -> Vec<String> {
    let mut argv = pod.exec();
    let uid = PROXY_UID.to_string();
    argv.extend(
        [
            "setpriv",
            "--reuid",
            &uid,
            "--regid",
            &uid,
            "--clear-groups",
        ]
        .map(String::from),
    );
    argv
}

/// The address [`Topology::add_pod`] gives the pod at `host`.
pub fn pod_ip(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, host)
}

/// One meshed pod: a namespace at `198.18.0.<host>` with traffic capture
/// and an Envoy for node `<name>.<namespace>` (service account `name`),
/// and, with `app_port`, an app answering as `name` on that port.
#[derive(Clone, Copy, Debug)]
pub struct PodSpec<'a> {
    pub name: &'a str,
    pub host: u8,
    pub app_port: Option<u16>,
}

/// What some tests add to a [`TestMesh`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Extras<'a> {
    /// App probes for a pod's sidecar bootstrap: (pod name, probe).
    pub probes: &'a [(&'a str, AppProbe)],
    /// Where a pod's sidecar forwards the app's gRPC probes: (pod name, probe).
    pub grpc_probes: &'a [(&'a str, GrpcProbe)],
    /// Pods without capture or sidecar, like kubelet or a client outside
    /// the mesh: (name, host), at `198.18.0.<host>`.
    pub outsiders: &'a [(&'a str, u8)],
    /// Tracing at this mesh-wide percentage, to a collector the test
    /// serves on [`TestMesh::tracing_collector`].
    pub tracing: Option<SamplingPercent>,
    /// Pods in another namespace than the mesh's: (pod name, namespace).
    pub namespaces: &'a [(&'a str, &'a str)],
    /// The mesh's `--authorization-default`.
    pub authorization: DefaultPolicy,
}

/// Where the collector of a mesh with [`Extras::tracing`] listens: on the
/// hub, which every pod's Envoy reaches (as it reaches the control plane).
pub const TRACING_COLLECTOR_PORT: u16 = 4317;

/// The running mesh.
pub struct TestMesh {
    // Fields drop in order: Envoys and the control plane before the
    // namespaces they live in.
    envoys: Vec<Envoy>,
    cp: Option<ControlPlane>,
    rt: tokio::runtime::Runtime,
    pub pki: Pki,
    pub apps: Vec<App>,
    /// With [`Extras::tracing`]: the listener the proxies send their spans
    /// to (`198.18.0.1:4317` on the hub), for the test to serve OTLP on.
    pub tracing_collector: Option<TcpListener>,
    registry: tempfile::TempDir,
    /// Meshed pods, then outsiders.
    pods: Vec<(String, NetPod)>,
    _work: tempfile::TempDir,
    _topology: Topology,
}

impl TestMesh {
    /// Starts the control plane on `registry` (the registry file's text)
    /// and the pods; `None` (after saying why) when Envoy or namespaces
    /// are missing outside CI.
    pub fn start(
        namespace: &str,
        pods: &[PodSpec<'_>],
        registry: &str,
        identity: IdentityConfig,
    ) -> Option<TestMesh> {
        Self::start_with(namespace, pods, registry, identity, Extras::default())
    }

    /// [`Self::start`] with [`Extras`].
    pub fn start_with(
        namespace: &str,
        pods: &[PodSpec<'_>],
        registry: &str,
        identity: IdentityConfig,
        extras: Extras<'_>,
    ) -> Option<TestMesh> {
        crate::init_tracing();
        let envoy_bin = envoy::require_envoy()?;
        if !require_namespaces() {
            return None;
        }
        let work = crate::workdir().unwrap();
        let envoy_bin = envoy_for_proxy_uid(&envoy_bin, work.path());

        let mut topology = Topology::new().unwrap();
        let mut net_pods = Vec::new();
        let mut apps = Vec::new();
        for spec in pods {
            let pod = topology.add_pod(spec.name, spec.host).unwrap();
            assert_eq!(pod.ip, pod_ip(spec.host));
            if let Some(port) = spec.app_port {
                // Apps listen on all addresses of their pod, as apps do.
                let name = spec.name.to_string();
                let app = pod
                    .run(move || App::serve(&name, TcpListener::bind(("0.0.0.0", port))?))
                    .unwrap()
                    .unwrap();
                apps.push(app);
            }
            net_pods.push((spec.name.to_string(), pod));
        }
        let mut outsiders = Vec::new();
        for (name, host) in extras.outsiders {
            let pod = topology.add_pod(name, *host).unwrap();
            outsiders.push((name.to_string(), pod));
        }

        let registry_dir = tempfile::tempdir().unwrap();
        std::fs::write(registry_dir.path().join("mesh.yaml"), registry).unwrap();

        // The control plane listens on the hub, the only address pods
        // share; its debug endpoints on this process's loopback.
        let xds_listener = topology
            .hub_run(|| TcpListener::bind((HUB_IP, 15010)))
            .unwrap()
            .unwrap();
        xds_listener.set_nonblocking(true).unwrap();
        let tracing_collector = extras.tracing.map(|_| {
            let l = topology
                .hub_run(|| TcpListener::bind((HUB_IP, TRACING_COLLECTOR_PORT)))
                .unwrap()
                .unwrap();
            l.set_nonblocking(true).unwrap();
            l
        });
        let telemetry = Telemetry {
            access_log: false,
            tracing: extras.tracing.map(|sampling| Tracing {
                collector: Collector {
                    host: HUB_IP.to_string(),
                    port: TRACING_COLLECTOR_PORT,
                },
                sampling,
            }),
        };
        let debug_listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        debug_listener.set_nonblocking(true).unwrap();
        let pki = Pki::new(identity).unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let cp = rt
            .block_on(async {
                ControlPlane::start(Options {
                    source: Source::Files(registry_dir.path().to_path_buf()),
                    tls: Some(pki.tls(&[IpAddr::V4(HUB_IP)])),
                    xds: tokio::net::TcpListener::from_std(xds_listener)?,
                    debug: Some(tokio::net::TcpListener::from_std(debug_listener)?),
                    debounce: Duration::from_millis(20),
                    telemetry,
                    authorization: extras.authorization,
                })
                .await
                .map_err(anyhow::Error::from)
            })
            .unwrap();

        // The same rules the injected init container installs.
        let rules = CaptureConfig::default();
        for (_, pod) in &net_pods {
            pod.run(|| capture::apply(&rules, false)).unwrap().unwrap();
        }

        let mut envoys = Vec::new();
        for (name, pod) in &net_pods {
            let namespace = extras
                .namespaces
                .iter()
                .find(|(pod, _)| pod == name)
                .map_or(namespace, |(_, ns)| *ns);
            let sidecar = Sidecar {
                namespace,
                name,
                protocol: XdsProtocol::Delta,
            };
            let probes: Vec<AppProbe> = extras
                .probes
                .iter()
                .filter(|(pod, _)| pod == name)
                .map(|(_, probe)| probe.clone())
                .collect();
            let grpc_probe = extras
                .grpc_probes
                .iter()
                .find(|(pod, _)| pod == name)
                .map(|(_, probe)| probe.clone());
            envoys.push(
                sidecar
                    .start_with_grpc_probe(pod, &pki, &envoy_bin, work.path(), &probes, grpc_probe)
                    .unwrap(),
            );
        }
        net_pods.extend(outsiders);
        Some(TestMesh {
            envoys,
            cp: Some(cp),
            rt,
            pki,
            apps,
            tracing_collector,
            registry: registry_dir,
            pods: net_pods,
            _work: work,
            _topology: topology,
        })
    }

    pub fn pod(&self, name: &str) -> &NetPod {
        self.pods
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p)
            .unwrap_or_else(|| panic!("no pod {name}"))
    }

    /// Replaces the registry file at once (the watcher never sees half a
    /// file).
    pub fn write_registry(&self, text: &str) {
        let tmp = self.registry.path().join(".mesh.yaml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(tmp, self.registry.path().join("mesh.yaml")).unwrap();
    }

    /// A path of the control plane's debug endpoints (`/debug/routing`).
    pub fn debug_get(&self, path: &str) -> anyhow::Result<http::Response> {
        let addr = self
            .cp
            .as_ref()
            .and_then(|cp| cp.debug_addr)
            .ok_or_else(|| anyhow::anyhow!("the control plane serves no debug endpoints"))?;
        http::get(addr, "localhost", path, false)
    }

    /// An admin path of the Envoy in pod `name`.
    pub fn admin(&self, name: &str, path: &str) -> String {
        let pod = self.pod(name);
        let admin = SocketAddr::from(([127, 0, 0, 1], 15000));
        let get =
            |addr: SocketAddr, path: &str| pod.run(|| http::get(addr, "localhost", path, false))?;
        admin_get(admin, path, &get).unwrap_or_else(|e| panic!("admin {path} of {name}: {e}"))
    }

    /// The access-log lines the Envoy of pod `name` has written so far.
    pub fn access_log(&self, name: &str) -> String {
        let envoy = self
            .envoys
            .iter()
            .find(|e| e.name == name)
            .unwrap_or_else(|| panic!("no sidecar {name}"));
        std::fs::read_to_string(&envoy.stdout).unwrap_or_default()
    }

    /// A path of the Prometheus listener (15090) of pod `name`'s sidecar,
    /// fetched from inside the pod as a scraper would.
    pub fn scrape(&self, name: &str) -> anyhow::Result<String> {
        let pod = self.pod(name);
        let addr = SocketAddr::new(IpAddr::V4(pod.ip), 15090);
        let r = pod.run(|| http::get(addr, "localhost", "/stats/prometheus", false))??;
        anyhow::ensure!(r.status == 200, "/stats/prometheus: HTTP {}", r.status);
        Ok(r.body)
    }

    /// Every Envoy's state and log tail, for failure messages.
    pub fn logs(&mut self) -> String {
        self.envoys
            .iter_mut()
            .map(|e| {
                let exited = e.check_alive().err();
                format!("--- {} ({exited:?}) ---\n{}", e.name, e.log_tail())
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for TestMesh {
    fn drop(&mut self) {
        self.envoys.clear();
        if let Some(cp) = self.cp.take() {
            self.rt.block_on(cp.shutdown());
        }
    }
}
