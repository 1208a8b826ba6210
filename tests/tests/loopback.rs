//! End-to-end on loopback, without traffic capture: any user can run these.
//!
//! Each "pod" gets its own 127.77.N.x address; its Envoy binds there
//! (admin, explicit-proxy outbound on 15001, inbound on the target port) and
//! its app listens on 127.0.0.1. The client sends plain HTTP through its
//! proxy, as an app with `http_proxy` set would.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use meshd_api::sidecar::bootstrap::{BootstrapConfig, XdsProtocol};
use meshd_controlplane::identity::IdentityConfig;
use meshd_controlplane::server::{ControlPlane, Options, Source};
use meshd_tests::envoy::{self, Envoy, admin_get, stat, wait_for};
use meshd_tests::http::{self, App};
use meshd_tests::pki::Pki;
use meshd_tests::registry;

const NS: &str = "e2e";
const SERVER_HOST: &str = "server.e2e";
const WAIT: Duration = Duration::from_secs(30);

/// A fresh 127.77.N.0/24 block per test, so tests in one binary can run in
/// parallel without their Envoys' ports colliding.
fn block() -> u8 {
    static NEXT: AtomicU8 = AtomicU8::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn pod_ip(block: u8, host: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 77, block, host))
}

struct Mesh {
    pki: Pki,
    rt: tokio::runtime::Runtime,
    cp: Option<ControlPlane>,
    registry: tempfile::TempDir,
    work: tempfile::TempDir,
    envoy: std::path::PathBuf,
    envoys: Vec<Envoy>,
}

impl Mesh {
    /// Starts a control plane on `files` (name → YAML), or returns `None`
    /// when Envoy is unavailable outside CI.
    fn start(files: &[(&str, String)]) -> Option<Mesh> {
        meshd_tests::init_tracing();
        let envoy = envoy::require_envoy()?;
        let registry = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(registry.path().join(name), text).unwrap();
        }
        let pki = Pki::new(IdentityConfig::default()).unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let cp = rt
            .block_on(async {
                ControlPlane::start(Options {
                    source: Source::Files(registry.path().to_path_buf()),
                    tls: Some(pki.tls(&[IpAddr::from([127, 0, 0, 1])])),
                    xds: tokio::net::TcpListener::bind("127.0.0.1:0").await?,
                    debug: None,
                    debounce: Duration::from_millis(20),
                    telemetry: Default::default(),
                    authorization: Default::default(),
                })
                .await
                .map_err(anyhow::Error::from)
            })
            .unwrap();
        Some(Mesh {
            pki,
            rt,
            cp: Some(cp),
            registry,
            work: meshd_tests::workdir().unwrap(),
            envoy,
            envoys: Vec::new(),
        })
    }

    fn cp(&self) -> &ControlPlane {
        self.cp.as_ref().unwrap()
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.registry.path().join(name), text).unwrap();
    }

    fn remove(&self, name: &str) {
        std::fs::remove_file(self.registry.path().join(name)).unwrap();
    }

    /// Starts the sidecar of pod `name` at `ip`; returns its admin address.
    fn proxy(&mut self, name: &str, ip: IpAddr, protocol: XdsProtocol) -> SocketAddr {
        let mut config = BootstrapConfig::new(NS, name);
        config.xds_port = self.cp().xds_addr.port();
        config.xds_protocol = protocol;
        config.admin = SocketAddr::new(ip, 15000);
        config.proxy_address = ip;
        self.pki
            .provision(&mut config, name, self.work.path(), None)
            .unwrap();
        let bootstrap = meshd_tests::write_bootstrap(self.work.path(), &config).unwrap();
        let proxy = Envoy::start(
            name,
            &self.envoy,
            &bootstrap,
            config.admin,
            &[],
            self.work.path(),
        )
        .unwrap();
        self.envoys.push(proxy);
        config.admin
    }

    fn logs(&self) -> String {
        self.envoys
            .iter()
            .map(|e| format!("--- {} ---\n{}", e.name, e.log_tail()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        self.envoys.clear();
        if let Some(cp) = self.cp.take() {
            self.rt.block_on(cp.shutdown());
        }
    }
}

fn local_get(addr: SocketAddr, path: &str) -> anyhow::Result<http::Response> {
    http::get(addr, &addr.to_string(), path, false)
}

/// A request from the client app through its proxy to the server service.
fn call(client: IpAddr) -> anyhow::Result<http::Response> {
    http::get(SocketAddr::new(client, 15001), SERVER_HOST, "/", true)
}

fn call_until_ok(mesh: &Mesh, client: IpAddr) -> http::Response {
    wait_for("a request through both proxies", WAIT, || {
        match call(client) {
            Ok(r) if r.status == 200 => Ok(Some(r)),
            Ok(r) => Err(format!("HTTP {}: {}", r.status, r.body)),
            Err(e) => Err(format!("{e:#}")),
        }
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", mesh.logs()))
}

fn app(name: &str) -> App {
    App::serve(name, TcpListener::bind("127.0.0.1:0").unwrap()).unwrap()
}

fn two_pod_registry(b: u8, server_port: u16) -> Vec<(&'static str, String)> {
    let (client, server) = (pod_ip(b, 1), pod_ip(b, 2));
    vec![(
        "mesh.yaml",
        registry::documents(&[
            registry::namespace(NS),
            registry::http_service(NS, "server", "198.19.0.10", 80),
            registry::slice(
                NS,
                "server-1",
                "server",
                server_port,
                &[("server-0", server)],
            ),
            registry::pod(NS, "client-0", client, false),
            registry::pod(NS, "server-0", server, false),
        ]),
    )]
}

fn request_crosses_both_proxies(protocol: XdsProtocol) {
    let b = block();
    let (client, server) = (pod_ip(b, 1), pod_ip(b, 2));
    let app = app("server-0");
    let Some(mut mesh) = Mesh::start(&two_pod_registry(b, app.addr.port())) else {
        return;
    };
    let client_admin = mesh.proxy("client-0", client, protocol);
    let server_admin = mesh.proxy("server-0", server, protocol);

    let response = call_until_ok(&mesh, client);
    assert!(
        response.body.starts_with("hello from server-0"),
        "{}",
        response.body
    );
    // Envoy marks the request on the way: the client proxy adds a request
    // id, the app sees it.
    assert!(
        response.body.to_ascii_lowercase().contains("x-request-id:"),
        "{}",
        response.body
    );
    // The hop between the proxies is mutual TLS: the server proxy verified
    // the client's certificate and tells the app who called.
    assert!(
        response
            .body
            .contains("URI=spiffe://cluster.local/ns/e2e/sa/client-0"),
        "the server app did not see the client's SPIFFE ID:\n{}",
        response.body
    );
    // A client cannot claim an identity by sending the header itself.
    let spoofed = http::get_with(
        SocketAddr::new(client, 15001),
        SERVER_HOST,
        "/",
        true,
        &[(
            "x-forwarded-client-cert",
            "URI=spiffe://cluster.local/ns/e2e/sa/admin",
        )],
    )
    .unwrap();
    assert_eq!(spoofed.status, 200);
    assert!(!spoofed.body.contains("sa/admin"), "{}", spoofed.body);
    assert!(
        spoofed
            .body
            .contains("URI=spiffe://cluster.local/ns/e2e/sa/client-0"),
        "{}",
        spoofed.body
    );

    let client_stats =
        admin_get(client_admin, "/stats?filter=upstream_rq_200", &local_get).unwrap();
    let server_stats =
        admin_get(server_admin, "/stats?filter=upstream_rq_200", &local_get).unwrap();
    assert!(
        stat(
            &client_stats,
            "cluster.outbound|80|mtls|server.e2e.svc.cluster.local.upstream_rq_200"
        ) >= 1,
        "client proxy did not route the request:\n{client_stats}"
    );
    let inbound = format!("cluster.inbound|{}||.upstream_rq_200", app.addr.port());
    assert!(
        stat(&server_stats, &inbound) >= 1,
        "server proxy did not receive the request:\n{server_stats}"
    );
    let protocols: Vec<_> = mesh
        .cp()
        .state
        .proxies()
        .iter()
        .map(|p| p.protocol)
        .collect();
    let expected = match protocol {
        XdsProtocol::Delta => "delta",
        XdsProtocol::Sotw => "sotw",
    };
    assert_eq!(protocols, [expected, expected]);
}

#[test]
fn delta_request_crosses_both_proxies() {
    request_crosses_both_proxies(XdsProtocol::Delta);
}

#[test]
fn sotw_request_crosses_both_proxies() {
    request_crosses_both_proxies(XdsProtocol::Sotw);
}

/// Whether the client proxy's `/clusters` lists `ip` for the server service.
fn clusters_list(admin: SocketAddr, ip: IpAddr) -> Result<bool, String> {
    let clusters = admin_get(admin, "/clusters", &local_get)?;
    Ok(clusters.lines().any(|l| {
        l.starts_with("outbound|80||server.e2e.svc.cluster.local::")
            && l.contains(&format!("::{ip}:"))
    }))
}

fn time_until(what: &str, mesh: &Mesh, mut done: impl FnMut() -> Result<bool, String>) -> Duration {
    let start = Instant::now();
    wait_for(what, WAIT, || done().map(|d| d.then_some(())))
        .unwrap_or_else(|e| panic!("{e:#}\n{}", mesh.logs()));
    start.elapsed()
}

#[test]
fn endpoint_changes_reach_envoy_without_restart() {
    let b = block();
    let client = pod_ip(b, 1);
    let (ip_a, ip_b) = (pod_ip(b, 2), pod_ip(b, 3));
    let (app_a, app_b) = (app("server-a"), app("server-b"));
    let base = registry::documents(&[
        registry::namespace(NS),
        registry::http_service(NS, "server", "198.19.0.10", 80),
        registry::pod(NS, "client-0", client, false),
        registry::pod(NS, "server-a", ip_a, false),
        registry::pod(NS, "server-b", ip_b, false),
    ]);
    let slice_a = registry::slice(
        NS,
        "server-a",
        "server",
        app_a.addr.port(),
        &[("server-a", ip_a)],
    );
    let slice_b = registry::slice(
        NS,
        "server-b",
        "server",
        app_b.addr.port(),
        &[("server-b", ip_b)],
    );
    let Some(mut mesh) = Mesh::start(&[("base.yaml", base), ("slice-a.yaml", slice_a)]) else {
        return;
    };
    let admin = mesh.proxy("client-0", client, XdsProtocol::Delta);
    mesh.proxy("server-a", ip_a, XdsProtocol::Delta);
    mesh.proxy("server-b", ip_b, XdsProtocol::Sotw);
    call_until_ok(&mesh, client);

    // Add server-b's endpoint: it appears in Envoy and takes traffic.
    mesh.write("slice-b.yaml", &slice_b);
    let added = time_until("server-b in /clusters", &mesh, || {
        clusters_list(admin, ip_b)
    });
    println!("endpoint added: in Envoy's /clusters {added:?} after the registry write");
    let before_b = app_b.requests();
    wait_for("traffic to reach server-b", WAIT, || {
        let r = call(client).map_err(|e| e.to_string())?;
        Ok((r.status == 200 && app_b.requests() > before_b).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", mesh.logs()));

    // Remove server-a's endpoint: it leaves Envoy and gets no more traffic.
    mesh.remove("slice-a.yaml");
    let removed = time_until("server-a gone from /clusters", &mesh, || {
        clusters_list(admin, ip_a).map(|listed| !listed)
    });
    println!("endpoint removed: gone from Envoy's /clusters {removed:?} after the registry write");
    let a_before = app_a.requests();
    for _ in 0..20 {
        let r = call(client).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-served-by"), Some("server-b"));
    }
    assert_eq!(
        app_a.requests(),
        a_before,
        "a removed endpoint still received requests"
    );
}

/// Issue #11 C.1: a service added while a State-of-the-World proxy is
/// connected gets its endpoints there too (Envoy asks for them quoting the
/// EDS nonce it already acknowledged; they used to be dropped as stale,
/// leaving the new cluster without endpoints and every call a 503).
#[test]
fn a_service_added_at_runtime_reaches_a_sotw_proxy() {
    let b = block();
    let (client, server) = (pod_ip(b, 1), pod_ip(b, 2));
    let app = app("server-0");
    let pods = registry::documents(&[
        registry::namespace(NS),
        registry::http_service(NS, "other", "198.19.0.11", 80),
        registry::pod(NS, "client-0", client, false),
        registry::pod(NS, "server-0", server, false),
    ]);
    let Some(mut mesh) = Mesh::start(&[("pods.yaml", pods)]) else {
        return;
    };
    let admin = mesh.proxy("client-0", client, XdsProtocol::Sotw);
    mesh.proxy("server-0", server, XdsProtocol::Sotw);
    // The client has taken its first config (EDS acknowledged, for the
    // other service's cluster) before the new service arrives.
    wait_for("the client's first clusters", WAIT, || {
        let clusters = admin_get(admin, "/clusters", &local_get)?;
        Ok(clusters
            .contains("outbound|80||other.e2e.svc.cluster.local")
            .then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", mesh.logs()));

    mesh.write(
        "server.yaml",
        &registry::documents(&[
            registry::http_service(NS, "server", "198.19.0.10", 80),
            registry::slice(
                NS,
                "server-1",
                "server",
                app.addr.port(),
                &[("server-0", server)],
            ),
        ]),
    );
    time_until("the new service's endpoint in /clusters", &mesh, || {
        clusters_list(admin, server)
    });
    let response = call_until_ok(&mesh, client);
    assert!(
        response.body.starts_with("hello from server-0"),
        "{}",
        response.body
    );
}

#[test]
fn rejected_config_is_recorded_and_the_last_good_one_keeps_serving() {
    let b = block();
    let (client, server) = (pod_ip(b, 1), pod_ip(b, 2));
    let app = app("server-0");
    let files = two_pod_registry(b, app.addr.port());
    let Some(mut mesh) = Mesh::start(&files) else {
        return;
    };
    mesh.proxy("client-0", client, XdsProtocol::Sotw);
    mesh.proxy("server-0", server, XdsProtocol::Delta);
    call_until_ok(&mesh, client);

    // Move the client pod to an address this host does not have: its
    // explicit-proxy listener cannot bind there, and Envoy rejects the LDS
    // update.
    let (_, text) = &files[0];
    let moved = text.replace(&format!("podIP: \"{client}\""), "podIP: \"198.18.255.254\"");
    assert_ne!(&moved, text);
    mesh.write("mesh.yaml", &moved);

    let nack = wait_for("the control plane to record the NACK", WAIT, || {
        Ok(mesh
            .cp()
            .state
            .nacks()
            .into_iter()
            .find(|n| n.node_id == "client-0.e2e"))
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", mesh.logs()));
    println!("recorded NACK: {nack:?}");
    assert_eq!(nack.type_url, meshd_proto_type_url_listener());
    assert!(!nack.message.is_empty());

    // The proxy keeps its last accepted listener and keeps serving.
    for _ in 0..5 {
        let r = call(client).unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
    }
    // The rejected version is not resent in a loop: one NACK, still, after
    // Envoy had every chance to reject a resend.
    std::thread::sleep(Duration::from_secs(1));
    let nacks = mesh.cp().state.nacks();
    assert_eq!(nacks.len(), 1, "{nacks:?}");
    let status = mesh.cp().state.proxies();
    let lds = &status
        .iter()
        .find(|p| p.node_id == "client-0.e2e")
        .unwrap()
        .types
        .get("LDS")
        .unwrap();
    assert_ne!(lds.sent_version, lds.acked_version);
    assert!(lds.last_nack.is_some());
}

fn meshd_proto_type_url_listener() -> &'static str {
    "type.googleapis.com/envoy.config.listener.v3.Listener"
}

/// The serial of the workload certificate the control plane last issued
/// to `node`.
fn issued_serial(mesh: &Mesh, node: &str) -> Option<String> {
    mesh.cp()
        .state
        .proxies()
        .into_iter()
        .find(|p| p.node_id == node)?
        .certificate
        .map(|c| c.serial)
}

#[test]
fn reissued_certificates_reach_envoy_over_sds() {
    let b = block();
    let (client, server) = (pod_ip(b, 1), pod_ip(b, 2));
    let app = app("server-0");
    let Some(mut mesh) = Mesh::start(&two_pod_registry(b, app.addr.port())) else {
        return;
    };
    let admin = mesh.proxy("client-0", client, XdsProtocol::Delta);
    mesh.proxy("server-0", server, XdsProtocol::Sotw);
    call_until_ok(&mesh, client);

    // A CA change (as in a root rotation step) re-issues every proxy's
    // certificate; measure how long until Envoy presents the new one.
    let mut latencies = Vec::new();
    for _ in 0..20 {
        let old = issued_serial(&mesh, "client-0.e2e").unwrap();
        let start = Instant::now();
        mesh.pki.identity.changed();
        let new = loop {
            if let Some(new) = issued_serial(&mesh, "client-0.e2e").filter(|s| *s != old) {
                break new;
            }
            assert!(start.elapsed() < WAIT, "no new certificate was issued");
            std::thread::sleep(Duration::from_millis(1));
        };
        // Poll finely (2 ms): wait_for's 50 ms step would hide the figure.
        loop {
            let certs = admin_get(admin, "/certs", &local_get).unwrap();
            if certs.contains(&new) {
                break;
            }
            assert!(
                start.elapsed() < WAIT,
                "Envoy never presented {new}\n{}",
                mesh.logs()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        latencies.push(start.elapsed());
        assert_eq!(call(client).unwrap().status, 200);
    }
    latencies.sort();
    println!(
        "SDS push latency (CA change to the new certificate in Envoy's /certs, 20 rounds, 2 ms polling): p50 {:?}, max {:?}",
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );
}

/// The control plane drains (as on SIGTERM) and a new one takes its
/// address, as a rolling update of the Deployment does behind its Service:
/// traffic between the proxies never notices, and both proxies reconnect.
#[test]
fn a_control_plane_restart_drops_no_request() {
    let b = block();
    let (client, server) = (pod_ip(b, 1), pod_ip(b, 2));
    let app = app("server-0");
    let Some(mut mesh) = Mesh::start(&two_pod_registry(b, app.addr.port())) else {
        return;
    };
    let client_admin = mesh.proxy("client-0", client, XdsProtocol::Delta);
    mesh.proxy("server-0", server, XdsProtocol::Sotw);
    call_until_ok(&mesh, client);

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0u64, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match call(client) {
                    Ok(r) if r.status == 200 => ok += 1,
                    Ok(r) => failed.push(format!("HTTP {}", r.status)),
                    Err(e) => failed.push(format!("{e:#}")),
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            (ok, failed)
        })
    };

    let xds = mesh.cp().xds_addr;
    let old = mesh.cp.take().unwrap();
    mesh.rt
        .block_on(old.shutdown_gracefully(Duration::from_millis(300)));
    // No control plane at all for a while: the proxies keep their config.
    std::thread::sleep(Duration::from_secs(1));
    let tls = mesh.pki.tls(&[IpAddr::from([127, 0, 0, 1])]);
    let replacement = mesh
        .rt
        .block_on(async {
            ControlPlane::start(Options {
                source: Source::Files(mesh.registry.path().to_path_buf()),
                tls: Some(tls),
                xds: tokio::net::TcpListener::bind(xds).await?,
                debug: None,
                debounce: Duration::from_millis(20),
                telemetry: Default::default(),
                authorization: Default::default(),
            })
            .await
            .map_err(anyhow::Error::from)
        })
        .unwrap();
    mesh.cp = Some(replacement);
    wait_for("both proxies to reconnect", WAIT, || {
        match mesh.cp().state.proxies().len() {
            2 => Ok(Some(())),
            n => Err(format!("{n} connected")),
        }
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", mesh.logs()));
    // The new control plane's changes reach the proxies.
    let mut files = two_pod_registry(b, app.addr.port());
    files[0].1 += &registry::documents(&[
        String::new(),
        registry::http_service(NS, "other", "198.19.0.11", 80),
    ]);
    mesh.write(files[0].0, &files[0].1);
    time_until("a new service to reach the client proxy", &mesh, || {
        let clusters = admin_get(client_admin, "/clusters", &local_get)?;
        Ok(clusters.contains("outbound|80||other.e2e.svc.cluster.local::"))
    });

    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = load.join().unwrap();
    assert!(ok > 100, "only {ok} requests went through");
    assert!(
        failed.is_empty(),
        "{} of {} requests failed across the restart: {:?}\n{}",
        failed.len(),
        ok + failed.len() as u64,
        &failed[..failed.len().min(5)],
        mesh.logs()
    );
}
