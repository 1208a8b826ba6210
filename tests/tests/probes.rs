//! Kubelet's probes under STRICT mTLS: the injector points an app's HTTP
//! probe at the proxy's readiness port, and the proxy's bootstrap routes it
//! to the app on loopback. A caller without a sidecar (as kubelet is) gets
//! the app's answer there, while the app's own port refuses its plaintext.
//!
//! ```text
//! kubelet (198.18.0.9, no sidecar) ──GET :15021/app-health/app/readyz──> server's Envoy ──GET /ready──> 127.0.0.1:8080 app
//!                                  ──GET :8080/ready──> iptables ──> Envoy :15006 (STRICT) ──> refused
//! ```

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use meshd_controlplane::bootstrap::AppProbe;
use meshd_controlplane::identity::IdentityConfig;
use meshd_tests::envoy::wait_for;
use meshd_tests::http;
use meshd_tests::mesh::{Extras, PodSpec, TestMesh, pod_ip};
use meshd_tests::registry;

const NS: &str = "e2e";
const APP_PORT: u16 = 8080;
const SERVER: &str = "server-0";
const KUBELET: &str = "kubelet";
const PROBE_PATH: &str = "/app-health/app/readyz";
const WAIT: Duration = Duration::from_secs(30);

const PODS: [PodSpec<'static>; 1] = [PodSpec {
    name: SERVER,
    host: 3,
    app_port: Some(APP_PORT),
}];

fn registry_text() -> String {
    let ip = IpAddr::V4(pod_ip(3));
    registry::documents(&[
        format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NS}, annotations: {{meshd.io/mtls: STRICT}}}}\n"
        ),
        registry::http_service(NS, "server", "198.19.0.30", APP_PORT),
        registry::slice(NS, "server-1", "server", APP_PORT, &[(SERVER, ip)]),
        registry::pod(NS, SERVER, ip, true),
    ])
}

/// A plaintext GET from the kubelet pod to the server's `port`.
fn kubelet_get(mesh: &TestMesh, port: u16, path: &str) -> anyhow::Result<http::Response> {
    let target = SocketAddr::new(IpAddr::V4(pod_ip(3)), port);
    mesh.pod(KUBELET)
        .run(|| http::get(target, &target.to_string(), path, false))?
}

#[test]
fn kubelet_probes_reach_the_app_through_the_proxy_under_strict_mtls() {
    let probes = [(
        SERVER,
        AppProbe {
            path: PROBE_PATH.into(),
            port: APP_PORT,
            original_path: "/ready".into(),
            timeout: Duration::from_secs(1),
        },
    )];
    let extras = Extras {
        probes: &probes,
        outsiders: &[(KUBELET, 9)],
    };
    let Some(mut mesh) = TestMesh::start_with(
        NS,
        &PODS,
        &registry_text(),
        IdentityConfig::default(),
        extras,
    ) else {
        return;
    };

    // The app's STRICT inbound chain is in place: the proxy has its
    // certificate and its inbound listener from the control plane.
    let admin = SocketAddr::from(([127, 0, 0, 1], 15000));
    let inbound = wait_for(
        "the server's proxy to take its inbound config",
        WAIT,
        || match mesh
            .pod(SERVER)
            .run(|| http::get(admin, "localhost", "/listeners", false))
        {
            Ok(Ok(r)) if r.body.contains(":15006") => Ok(Some(())),
            Ok(Ok(r)) => Err(format!("listeners: {}", r.body)),
            Ok(Err(e)) | Err(e) => Err(format!("{e:#}")),
        },
    );
    inbound.unwrap_or_else(|e| panic!("{e:#}\n{}", mesh.logs()));

    let before = mesh.apps[0].requests();
    let probe = wait_for(
        "the rewritten probe to reach the app",
        WAIT,
        || match kubelet_get(&mesh, 15021, PROBE_PATH) {
            Ok(r) if r.status == 200 => Ok(Some(r)),
            Ok(r) => Err(format!("HTTP {}: {}", r.status, r.body)),
            Err(e) => Err(format!("{e:#}")),
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", mesh.logs()));
    // The app itself answered (not Envoy), in plaintext from the proxy: no
    // client certificate was involved.
    assert!(
        probe.body.starts_with(&format!("hello from {SERVER}")),
        "{}",
        probe.body
    );
    assert_eq!(probe.header("x-served-by"), Some(SERVER), "{}", probe.body);
    assert!(mesh.apps[0].requests() > before);
    // Envoy's own readiness keeps its path on the same port.
    let ready = kubelet_get(&mesh, 15021, "/healthz/ready").unwrap();
    assert_eq!(ready.status, 200, "{}", ready.body);
    // Other paths on the readiness port reach nothing.
    let other = kubelet_get(&mesh, 15021, "/app-health/app/livez").unwrap();
    assert_eq!(other.status, 404, "{}", other.body);

    // The same request to the app's own port is plaintext under STRICT:
    // refused by the inbound listener, and the app never sees it.
    let before = mesh.apps[0].requests();
    match kubelet_get(&mesh, APP_PORT, "/ready") {
        Ok(r) => panic!("STRICT served plaintext: HTTP {}: {}", r.status, r.body),
        Err(e) => println!("plaintext to the app port under STRICT: {e:#}"),
    }
    assert_eq!(mesh.apps[0].requests(), before);
}
