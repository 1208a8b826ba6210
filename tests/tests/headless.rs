//! A headless service (a StatefulSet's) behind a STRICT-mTLS pod: clients
//! address the pod directly (its DNS name resolves to the pod IP), the
//! client's sidecar captures the connection and carries it over mutual TLS
//! to the server's sidecar, which refuses plaintext.
//!
//! ```text
//! client-0 (198.18.0.2) app ──> 198.18.0.3:8080 ──iptables──> Envoy ──mTLS──> db-0 (198.18.0.3, STRICT): Envoy ──> app
//! ```

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use meshd_controlplane::identity::IdentityConfig;
use meshd_tests::envoy::wait_for;
use meshd_tests::http;
use meshd_tests::mesh::{PodSpec, TestMesh, pod_ip};
use meshd_tests::registry;

const NS: &str = "e2e";
const APP_PORT: u16 = 8080;
const CLIENT: &str = "client-0";
const DB: &str = "db-0";
const WAIT: Duration = Duration::from_secs(30);

const PODS: [PodSpec<'static>; 2] = [
    PodSpec {
        name: CLIENT,
        host: 2,
        app_port: None,
    },
    PodSpec {
        name: DB,
        host: 3,
        app_port: Some(APP_PORT),
    },
];

fn registry_text() -> String {
    let ip = |host| IpAddr::V4(pod_ip(host));
    registry::documents(&[
        format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NS}, annotations: {{meshd.io/mtls: STRICT}}}}\n"
        ),
        registry::http_service(NS, "db", "None", APP_PORT),
        registry::slice(NS, "db-1", "db", APP_PORT, &[(DB, ip(3))]),
        registry::pod(NS, CLIENT, ip(2), true),
        registry::pod(NS, DB, ip(3), true),
    ])
}

#[test]
fn a_headless_pod_under_strict_mtls_is_reached_over_mtls() {
    let Some(mut mesh) = TestMesh::start(NS, &PODS, &registry_text(), IdentityConfig::default())
    else {
        return;
    };
    let db = SocketAddr::new(IpAddr::V4(pod_ip(3)), APP_PORT);
    let host = "db-0.db.e2e.svc.cluster.local";
    let response = wait_for(
        "the client to reach db-0 by its pod IP",
        WAIT,
        || match mesh.pod(CLIENT).run(|| http::get(db, host, "/", false)) {
            Ok(Ok(r)) if r.status == 200 => Ok(Some(r)),
            Ok(Ok(r)) => Err(format!("HTTP {}: {}", r.status, r.body)),
            Ok(Err(e)) | Err(e) => Err(format!("{e:#}")),
        },
    );
    let response = response.unwrap_or_else(|e| panic!("{e:#}\n{}", mesh.logs()));
    assert!(
        response.body.starts_with("hello from db-0"),
        "{}",
        response.body
    );
    // The server's sidecar verified the client's certificate: mTLS, though
    // the client app called a bare pod IP.
    assert!(
        response
            .body
            .contains("URI=spiffe://cluster.local/ns/e2e/sa/client-0"),
        "{}",
        response.body
    );
}
