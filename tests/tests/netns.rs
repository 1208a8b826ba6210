//! End-to-end with real traffic capture: two pods as network namespaces,
//! iptables rules from `meshd_injector::capture` (what `meshd capture`
//! installs), Envoy running as the proxy UID, and an app that calls the
//! server service by its VIP, unaware of any proxy.

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use meshd_controlplane::bootstrap::{BootstrapConfig, XdsProtocol};
use meshd_controlplane::identity::IdentityConfig;
use meshd_controlplane::server::{ControlPlane, Options};
use meshd_injector::capture::{self, CaptureConfig, PROXY_UID};
use meshd_tests::envoy::{self, Envoy, admin_get, stat, wait_for};
use meshd_tests::http::{self, App};
use meshd_tests::netns::{self, HUB_IP, NetPod, Topology};
use meshd_tests::pki::Pki;
use meshd_tests::registry;

const NS: &str = "e2e";
const VIP: &str = "198.19.0.10";
const APP_PORT: u16 = 8080;
const WAIT: Duration = Duration::from_secs(30);

/// Namespaces, or a clear account of why they are unavailable. Under
/// `CI=true` that fails the test.
fn require_namespaces() -> bool {
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
fn envoy_for_proxy_uid(envoy: &Path, work: &Path) -> PathBuf {
    let ok = std::process::Command::new("setpriv")
        .args([
            "--reuid",
            &PROXY_UID.to_string(),
            "--regid",
            &PROXY_UID.to_string(),
            "--clear-groups",
        ])
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

fn proxy_launcher(pod: &NetPod) -> Vec<String> {
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

fn admin_in(pod: &NetPod) -> impl Fn(SocketAddr, &str) -> anyhow::Result<http::Response> + '_ {
    move |addr, path| pod.run(|| http::get(addr, "localhost", path, false))?
}

#[test]
fn captured_traffic_crosses_both_proxies() {
    meshd_tests::init_tracing();
    let Some(envoy_bin) = envoy::require_envoy() else {
        return;
    };
    if !require_namespaces() {
        return;
    }
    let work = meshd_tests::workdir().unwrap();
    let envoy_bin = envoy_for_proxy_uid(&envoy_bin, work.path());

    let mut topology = Topology::new().unwrap();
    let client = topology.add_pod("client", 2).unwrap();
    let server = topology.add_pod("server", 3).unwrap();

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

    let registry_dir = tempfile::tempdir().unwrap();
    std::fs::write(
        registry_dir.path().join("mesh.yaml"),
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
            registry::pod(NS, "server-0", IpAddr::V4(server.ip), true),
        ]),
    )
    .unwrap();

    // The control plane listens on the hub, the only address pods share.
    let xds_listener = topology
        .hub_run(|| TcpListener::bind((HUB_IP, 15010)))
        .unwrap()
        .unwrap();
    xds_listener.set_nonblocking(true).unwrap();
    let pki = Pki::new(IdentityConfig::default()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cp = rt
        .block_on(async {
            ControlPlane::start(Options {
                registry: Some(registry_dir.path().to_path_buf()),
                tls: Some(pki.tls(&[IpAddr::V4(HUB_IP)])),
                xds: tokio::net::TcpListener::from_std(xds_listener)?,
                debug: None,
                debounce: Duration::from_millis(20),
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
        let mut config = BootstrapConfig::new(NS, name);
        config.xds_host = HUB_IP.to_string();
        config.xds_port = 15010;
        config.xds_protocol = protocol;
        pki.provision(&mut config, name, work.path(), Some(PROXY_UID))
            .unwrap();
        let bootstrap = meshd_tests::write_bootstrap(work.path(), &config).unwrap();
        envoys.push(
            Envoy::start(
                name,
                &envoy_bin,
                &bootstrap,
                config.admin,
                &proxy_launcher(pod),
                work.path(),
            )
            .unwrap(),
        );
    }
    let logs = |envoys: &mut Vec<Envoy>| {
        envoys
            .iter_mut()
            .map(|e| {
                let exited = e.check_alive().err();
                format!("--- {} ({exited:?}) ---\n{}", e.name, e.log_tail())
            })
            .collect::<Vec<_>>()
            .join("\n")
    };

    // The client app calls the service VIP directly; iptables hands the
    // connection to its proxy.
    let vip: SocketAddr = format!("{VIP}:80").parse().unwrap();
    let response = wait_for("a captured request to reach the server app", WAIT, || {
        let r = client
            .run(|| http::get(vip, "server", "/", false))
            .map_err(|e| format!("{e:#}"))?
            .map_err(|e| format!("{e:#}"))?;
        if r.status == 200 {
            Ok(Some(r))
        } else {
            Err(format!("HTTP {}: {}", r.status, r.body))
        }
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", logs(&mut envoys)));
    assert!(
        response.body.starts_with("hello from server-0"),
        "{}",
        response.body
    );
    assert!(app.requests() >= 1);

    // Both proxies handled it: the client's outbound cluster and the
    // server's inbound cluster each count the request.
    let admin = SocketAddr::from(([127, 0, 0, 1], 15000));
    let client_stats =
        admin_get(admin, "/stats?filter=upstream_rq_200", &admin_in(&client)).unwrap();
    let server_stats =
        admin_get(admin, "/stats?filter=upstream_rq_200", &admin_in(&server)).unwrap();
    assert!(
        stat(
            &client_stats,
            "cluster.outbound|80||server.e2e.svc.cluster.local.upstream_rq_200"
        ) >= 1,
        "{client_stats}"
    );
    assert!(
        stat(&server_stats, "cluster.inbound|8080||.upstream_rq_200") >= 1,
        "{server_stats}"
    );

    // Traffic to a destination the mesh does not know passes through the
    // proxy untouched: the client reaches the server pod's IP directly
    // (captured on both sides, routed by the passthrough cluster).
    let direct = client
        .run(|| {
            http::get(
                SocketAddr::new(IpAddr::V4(server.ip), APP_PORT),
                "direct",
                "/",
                false,
            )
        })
        .unwrap()
        .unwrap();
    assert_eq!(direct.status, 200, "{}", direct.body);
    let client_tcp = admin_get(
        admin,
        "/stats?filter=PassthroughCluster.upstream_cx_total",
        &admin_in(&client),
    )
    .unwrap();
    assert!(
        stat(&client_tcp, "cluster.PassthroughCluster.upstream_cx_total") >= 1,
        "{client_tcp}"
    );

    drop(envoys);
    rt.block_on(cp.shutdown());
}
