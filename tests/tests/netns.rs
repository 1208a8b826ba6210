//! End-to-end with real traffic capture: pods as network namespaces,
//! iptables rules from `meshd_injector::capture` (what `meshd capture`
//! installs), Envoy running as the proxy UID, apps that call services by
//! their VIP, unaware of any proxy, and mutual TLS between the proxies.
//!
//! ```text
//! client (198.18.0.2, meshed) ──mTLS──> server (198.18.0.3, meshed)
//! outsider (198.18.0.4, no sidecar) ──plaintext──┘
//! ```

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use meshd_api::sidecar::bootstrap::XdsProtocol;
use meshd_controlplane::identity::IdentityConfig;
use meshd_controlplane::server::{ControlPlane, Options, Source};
use meshd_injector::capture::{self, CaptureConfig};
use meshd_tests::envoy::{self, Envoy, admin_get, stat, wait_for};
use meshd_tests::http::{self, App};
use meshd_tests::mesh::{Sidecar, envoy_for_proxy_uid, require_namespaces};
use meshd_tests::netns::{self, HUB_IP, NetPod, Topology};
use meshd_tests::pki::Pki;
use meshd_tests::registry;

const NS: &str = "e2e";
const VIP: &str = "198.19.0.10";
const APP_PORT: u16 = 8080;
const WAIT: Duration = Duration::from_secs(30);
const CLIENT_ID: &str = "URI=spiffe://cluster.local/ns/e2e/sa/client-0";

/// Two meshed pods and an outsider, a control plane on the hub, and the
/// server app; everything torn down on drop (namespaces last).
struct NetMesh {
    // Fields drop in order: Envoys and the control plane before the
    // namespaces they live in.
    envoys: Vec<Envoy>,
    cp: Option<ControlPlane>,
    rt: tokio::runtime::Runtime,
    pki: Pki,
    app: App,
    registry: tempfile::TempDir,
    client: NetPod,
    server: NetPod,
    outsider: NetPod,
    _work: tempfile::TempDir,
    _topology: Topology,
}

impl NetMesh {
    fn start(identity: IdentityConfig) -> Option<NetMesh> {
        meshd_tests::init_tracing();
        let envoy_bin = envoy::require_envoy()?;
        if !require_namespaces() {
            return None;
        }
        let work = meshd_tests::workdir().unwrap();
        let envoy_bin = envoy_for_proxy_uid(&envoy_bin, work.path());

        let mut topology = Topology::new().unwrap();
        let client = topology.add_pod("client", 2).unwrap();
        let server = topology.add_pod("server", 3).unwrap();
        let outsider = topology.add_pod("outsider", 4).unwrap();

        // The server app listens on all addresses of its pod, as apps do.
        let app = server
            .run(|| {
                App::serve(
                    "server-0",
                    TcpListener::bind(("0.0.0.0", APP_PORT)).unwrap(),
                )
            })
            .unwrap()
            .unwrap();

        let registry = tempfile::tempdir().unwrap();
        let mesh = NetMesh::registry_text(&client, &server, &[]);
        std::fs::write(registry.path().join("mesh.yaml"), mesh).unwrap();

        // The control plane listens on the hub, the only address pods share.
        let xds_listener = topology
            .hub_run(|| TcpListener::bind((HUB_IP, 15010)))
            .unwrap()
            .unwrap();
        xds_listener.set_nonblocking(true).unwrap();
        let pki = Pki::new(identity).unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let cp = rt
            .block_on(async {
                ControlPlane::start(Options {
                    source: Source::Files(registry.path().to_path_buf()),
                    tls: Some(pki.tls(&[IpAddr::V4(HUB_IP)])),
                    xds: tokio::net::TcpListener::from_std(xds_listener)?,
                    debug: None,
                    debounce: Duration::from_millis(20),
                    telemetry: Default::default(),
                    authorization: Default::default(),
                })
                .await
                .map_err(anyhow::Error::from)
            })
            .unwrap();

        // The same rules the injected init container installs.
        let rules = CaptureConfig::default();
        for pod in [&client, &server] {
            pod.run(|| capture::apply(&rules, false)).unwrap().unwrap();
        }

        let mut envoys = Vec::new();
        for (pod, name, protocol) in [
            (&client, "client-0", XdsProtocol::Delta),
            (&server, "server-0", XdsProtocol::Sotw),
        ] {
            let sidecar = Sidecar {
                namespace: NS,
                name,
                protocol,
            };
            envoys.push(sidecar.start(pod, &pki, &envoy_bin, work.path()).unwrap());
        }
        Some(NetMesh {
            envoys,
            cp: Some(cp),
            rt,
            pki,
            app,
            registry,
            client,
            server,
            outsider,
            _work: work,
            _topology: topology,
        })
    }

    /// The registry: the server service and both meshed pods, the server
    /// pod with `server_annotations`.
    fn registry_text(
        client: &NetPod,
        server: &NetPod,
        server_annotations: &[(&str, &str)],
    ) -> String {
        registry::documents(&[
            registry::namespace(NS),
            registry::http_service(NS, "server", VIP, 80),
            registry::slice(
                NS,
                "server-1",
                "server",
                APP_PORT,
                &[("server-0", IpAddr::V4(server.ip))],
            ),
            registry::pod(NS, "client-0", IpAddr::V4(client.ip), true),
            registry::pod_with(
                NS,
                "server-0",
                IpAddr::V4(server.ip),
                true,
                server_annotations,
            ),
        ])
    }

    fn set_server_annotations(&self, annotations: &[(&str, &str)]) {
        let text = NetMesh::registry_text(&self.client, &self.server, annotations);
        let tmp = self.registry.path().join(".mesh.yaml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(tmp, self.registry.path().join("mesh.yaml")).unwrap();
    }

    fn logs(&mut self) -> String {
        self.envoys
            .iter_mut()
            .map(|e| {
                let exited = e.check_alive().err();
                format!("--- {} ({exited:?}) ---\n{}", e.name, e.log_tail())
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The client app calls the service VIP directly; iptables hands the
    /// connection to its proxy.
    fn call(&self) -> anyhow::Result<http::Response> {
        let vip: SocketAddr = format!("{VIP}:80").parse()?;
        self.client.run(|| http::get(vip, "server", "/", false))?
    }

    fn call_until_ok(&mut self) -> http::Response {
        let result = wait_for(
            "a captured request to reach the server app",
            WAIT,
            || match self.call() {
                Ok(r) if r.status == 200 => Ok(Some(r)),
                Ok(r) => Err(format!("HTTP {}: {}", r.status, r.body)),
                Err(e) => Err(format!("{e:#}")),
            },
        );
        result.unwrap_or_else(|e| panic!("{e:#}\n{}", self.logs()))
    }

    /// A plaintext request from a pod without a sidecar straight to the
    /// server pod.
    fn outsider_call(&self) -> anyhow::Result<http::Response> {
        let target = SocketAddr::new(IpAddr::V4(self.server.ip), APP_PORT);
        self.outsider
            .run(|| http::get(target, "server", "/", false))?
    }

    fn admin(pod: &NetPod, path: &str) -> String {
        let admin = SocketAddr::from(([127, 0, 0, 1], 15000));
        let get =
            |addr: SocketAddr, path: &str| pod.run(|| http::get(addr, "localhost", path, false))?;
        admin_get(admin, path, &get).unwrap()
    }
}

impl Drop for NetMesh {
    fn drop(&mut self) {
        self.envoys.clear();
        if let Some(cp) = self.cp.take() {
            self.rt.block_on(cp.shutdown());
        }
    }
}

#[test]
fn captured_traffic_crosses_both_proxies_over_mtls() {
    let Some(mut mesh) = NetMesh::start(IdentityConfig::default()) else {
        return;
    };
    let response = mesh.call_until_ok();
    assert!(
        response.body.starts_with("hello from server-0"),
        "{}",
        response.body
    );
    assert!(mesh.app.requests() >= 1);
    // Mutual TLS between the proxies: the server app learns the caller's
    // identity from its proxy.
    assert!(response.body.contains(CLIENT_ID), "{}", response.body);

    // Both proxies handled it: the client's outbound cluster and the
    // server's inbound cluster each count the request, and the hop between
    // them was a TLS handshake.
    let client_stats = NetMesh::admin(&mesh.client, "/stats?filter=outbound");
    let server_stats = NetMesh::admin(&mesh.server, "/stats?filter=inbound");
    assert!(
        stat(
            &client_stats,
            "cluster.outbound|80|mtls|server.e2e.svc.cluster.local.upstream_rq_200"
        ) >= 1,
        "{client_stats}"
    );
    assert!(
        stat(
            &client_stats,
            "cluster.outbound|80|mtls|server.e2e.svc.cluster.local.ssl.handshake"
        ) >= 1,
        "{client_stats}"
    );
    assert!(
        stat(&server_stats, "cluster.inbound|8080||.upstream_rq_200") >= 1,
        "{server_stats}"
    );
    // TLS 1.3, where the caller's certificate is encrypted; Envoy's client
    // default would stop at 1.2. The same for each proxy's connection to
    // meshd, whose cipher (AES-128-GCM) the load tool's fleet offers first.
    assert!(
        stat(
            &client_stats,
            "cluster.outbound|80|mtls|server.e2e.svc.cluster.local.ssl.versions.TLSv1.3"
        ) >= 1,
        "{client_stats}"
    );
    for proxy in [&mesh.client, &mesh.server] {
        let xds = NetMesh::admin(proxy, "/stats?filter=xds-grpc.ssl");
        assert!(
            stat(&xds, "cluster.xds-grpc.ssl.versions.TLSv1.3") >= 1,
            "{xds}"
        );
        assert!(
            stat(&xds, "cluster.xds-grpc.ssl.ciphers.TLS_AES_128_GCM_SHA256") >= 1,
            "{xds}"
        );
    }

    // Traffic to a destination the mesh does not know passes through the
    // proxy untouched: the client reaches the server pod's IP directly.
    let direct = mesh
        .client
        .run(|| {
            http::get(
                SocketAddr::new(IpAddr::V4(mesh.server.ip), APP_PORT),
                "direct",
                "/",
                false,
            )
        })
        .unwrap()
        .unwrap();
    assert_eq!(direct.status, 200, "{}", direct.body);
    let passthrough = NetMesh::admin(
        &mesh.client,
        "/stats?filter=PassthroughCluster.upstream_cx_total",
    );
    assert!(
        stat(&passthrough, "cluster.PassthroughCluster.upstream_cx_total") >= 1,
        "{passthrough}"
    );

    // A meshed scraper reaches the other pod's sidecar stats, not its own:
    // the sidecar listens on 15090 at every address, and a captured
    // connection would be handed to the caller's own listener of the port.
    let scraped = mesh
        .client
        .run(|| {
            http::get(
                SocketAddr::new(IpAddr::V4(mesh.server.ip), 15090),
                "server",
                "/stats/prometheus",
                false,
            )
        })
        .unwrap()
        .unwrap();
    assert_eq!(scraped.status, 200, "{}", scraped.body);
    // Only the server's sidecar has an inbound cluster for its app's port.
    assert!(
        scraped.body.contains(&format!("inbound|{APP_PORT}||")),
        "not the server's stats:\n{}",
        scraped.body
    );
}

#[test]
fn mtls_modes_decide_who_reaches_the_server() {
    let Some(mut mesh) = NetMesh::start(IdentityConfig::default()) else {
        return;
    };
    mesh.call_until_ok();

    // PERMISSIVE (the default): a plaintext client without a sidecar is
    // served, and gets no identity.
    let plain = mesh.outsider_call().unwrap();
    assert_eq!(plain.status, 200, "{}", plain.body);
    assert!(
        !plain.body.contains("x-forwarded-client-cert"),
        "{}",
        plain.body
    );

    // STRICT: the plaintext client is refused; the meshed client, with its
    // certificate, still gets through.
    mesh.set_server_annotations(&[("meshd.io/mtls", "STRICT")]);
    let refused = wait_for("STRICT to refuse plaintext", WAIT, || {
        match mesh.outsider_call() {
            Ok(r) => Err(format!("still served: HTTP {}", r.status)),
            Err(e) => Ok(Some(format!("{e:#}"))),
        }
    });
    let refused = refused.unwrap_or_else(|e| panic!("{e:#}\n{}", mesh.logs()));
    println!("plaintext client under STRICT: {refused}");
    let ok = mesh.call().unwrap();
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert!(ok.body.contains(CLIENT_ID), "{}", ok.body);

    // DISABLE: plaintext for everyone; mesh clients stop using TLS towards
    // the server, so its app no longer learns identities.
    mesh.set_server_annotations(&[("meshd.io/mtls", "DISABLE")]);
    let plain = wait_for("DISABLE to serve plaintext", WAIT, || {
        match mesh.outsider_call() {
            Ok(r) if r.status == 200 => Ok(Some(r)),
            Ok(r) => Err(format!("HTTP {}", r.status)),
            Err(e) => Err(format!("{e:#}")),
        }
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", mesh.logs()));
    assert!(!plain.body.contains("x-forwarded-client-cert"));
    let meshed = wait_for("the client to switch to plaintext", WAIT, || {
        match mesh.call() {
            Ok(r) if r.status == 200 && !r.body.contains(CLIENT_ID) => Ok(Some(r)),
            Ok(r) => Err(format!("HTTP {}: {}", r.status, r.body)),
            Err(e) => Err(format!("{e:#}")),
        }
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", mesh.logs()));
    assert!(meshed.body.starts_with("hello from server-0"));
}

/// Sends requests from the client app back to back until stopped; counts
/// successes and failures.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    errors: Arc<std::sync::Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(pod: &NetPod) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
        let ns = pod.ns.clone();
        let (s, o, f, e) = (stop.clone(), ok.clone(), failed.clone(), errors.clone());
        let thread = std::thread::spawn(move || {
            let vip: SocketAddr = format!("{VIP}:80").parse().unwrap();
            netns::run_in(&ns, || {
                while !s.load(Ordering::Relaxed) {
                    match http::get(vip, "server", "/", false) {
                        Ok(r) if r.status == 200 => {
                            o.fetch_add(1, Ordering::Relaxed);
                        }
                        other => {
                            f.fetch_add(1, Ordering::Relaxed);
                            let what = match other {
                                Ok(r) => format!("HTTP {}: {}", r.status, r.body),
                                Err(err) => format!("{err:#}"),
                            };
                            e.lock().unwrap().push(what);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
            .unwrap();
        });
        Load {
            stop,
            ok,
            failed,
            errors,
            thread: Some(thread),
        }
    }

    /// Stops and returns (ok, failed, first errors).
    fn finish(mut self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        let errors = self
            .errors
            .lock()
            .unwrap()
            .iter()
            .take(5)
            .cloned()
            .collect();
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            errors,
        )
    }
}

/// Serial numbers of the certificates a proxy presents (Envoy's /certs).
fn serials(pod: &NetPod) -> BTreeSet<String> {
    let certs: serde_json::Value = serde_json::from_str(&NetMesh::admin(pod, "/certs")).unwrap();
    certs["certificates"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["cert_chain"].as_array().cloned().unwrap_or_default())
        .filter_map(|c| c["serial_number"].as_str().map(String::from))
        .collect()
}

#[test]
fn short_lived_certificates_rotate_without_a_failed_request() {
    let config = IdentityConfig {
        workload_ttl: Duration::from_secs(60),
        ..IdentityConfig::default()
    };
    let Some(mut mesh) = NetMesh::start(config) else {
        return;
    };
    mesh.call_until_ok();
    let load = Load::start(&mesh.client);

    // 60 s certificates are replaced about every 30 s: watch the client
    // proxy's serials until it has presented three rotated certificates.
    let start = Instant::now();
    let mut seen = serials(&mesh.client);
    let first = seen.clone();
    while seen.difference(&first).count() < 3 && start.elapsed() < Duration::from_secs(150) {
        std::thread::sleep(Duration::from_secs(2));
        seen.extend(serials(&mesh.client));
    }
    let (ok, failed, errors) = load.finish();
    let rotations = seen.difference(&first).count();
    println!(
        "{rotations} rotations in {:?}: {ok} requests succeeded, {failed} failed",
        start.elapsed()
    );
    assert!(
        rotations >= 3,
        "only {rotations} rotations seen: {seen:?}\n{}",
        mesh.logs()
    );
    assert_eq!(failed, 0, "requests failed during rotation: {errors:?}");
    assert!(ok > 100, "too few requests to mean anything: {ok}");
}

#[test]
fn root_rotation_drops_no_request() {
    let Some(mut mesh) = NetMesh::start(IdentityConfig::default()) else {
        return;
    };
    mesh.call_until_ok();
    let before = serials(&mesh.client);
    let load = Load::start(&mesh.client);
    std::thread::sleep(Duration::from_secs(1));

    let identity = mesh.pki.identity.clone();
    let state = mesh.cp.as_ref().unwrap().state.clone();
    let started = Instant::now();
    mesh.rt
        .block_on(meshd_controlplane::identity::rotate_root(
            &identity,
            &*state,
            Duration::from_secs(30),
            None,
        ))
        .unwrap_or_else(|e| panic!("{e}"));
    println!("root rotated in {:?}", started.elapsed());
    std::thread::sleep(Duration::from_secs(1));
    let (ok, failed, errors) = load.finish();
    println!("during root rotation: {ok} requests succeeded, {failed} failed");
    assert_eq!(
        failed, 0,
        "requests failed during root rotation: {errors:?}"
    );

    // The client proxy now presents a certificate from the new root (the
    // one the control plane issued last), and no longer the old one; the
    // new root alone is trusted.
    assert_eq!(identity.ca.trust_anchors().len(), 1);
    let current = state
        .proxies()
        .into_iter()
        .find(|p| p.node_id == "client-0.e2e")
        .and_then(|p| p.certificate)
        .map(|c| c.serial)
        .unwrap();
    let after = serials(&mesh.client);
    assert!(after.contains(&current), "{current} not in {after:?}");
    assert!(!before.contains(&current));
    assert!(
        before.difference(&after).count() >= 1,
        "the old workload certificate is still presented: {before:?} / {after:?}"
    );
    let response = mesh.call().unwrap();
    assert_eq!(response.status, 200);
    assert!(response.body.contains(CLIENT_ID), "{}", response.body);
}
