//! A root rotation in local mode, with real Envoy (issue #11 C.4).
//!
//! A proxy's bootstrap identity (client certificate and trust bundle) is
//! written once, when its pod starts; in local mode nobody refreshes it.
//! After `rotate-root` the proxy must still get in at its next reconnect:
//! Envoy (BoringSSL) must accept the control plane's new chain with its old
//! trust bundle, and the control plane must accept Envoy's old certificate.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use meshd_api::sidecar::bootstrap::{BootstrapConfig, XdsProtocol};
use meshd_controlplane::identity::{IdentityConfig, rotate_root};
use meshd_controlplane::server::{ControlPlane, Options, Source};
use meshd_tests::envoy::{self, Envoy, wait_for};
use meshd_tests::pki::Pki;
use meshd_tests::registry;

const NS: &str = "e2e";
const NODE: &str = "client-0.e2e";
const WAIT: Duration = Duration::from_secs(30);
/// A loopback block no other test file uses, so this can run beside them.
const PROXY_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 79, 4, 1));

#[test]
fn a_proxy_reconnects_with_its_old_bootstrap_identity_after_a_root_rotation() {
    meshd_tests::init_tracing();
    let Some(binary) = envoy::require_envoy() else {
        return;
    };
    let registry_dir = tempfile::tempdir().unwrap();
    std::fs::write(
        registry_dir.path().join("mesh.yaml"),
        registry::documents(&[
            registry::namespace(NS),
            // A service the pod serves: its inbound listener takes the
            // pod's certificate and the trust bundle over SDS.
            registry::http_service(NS, "client", "198.19.0.40", 80),
            registry::slice(NS, "client-1", "client", 18080, &[("client-0", PROXY_IP)]),
            registry::pod(NS, "client-0", PROXY_IP, false),
        ]),
    )
    .unwrap();
    let pki = Pki::new(IdentityConfig::default()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cp = rt
        .block_on(async {
            ControlPlane::start(Options {
                source: Source::Files(registry_dir.path().to_path_buf()),
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
    let work = meshd_tests::workdir().unwrap();
    let mut config = BootstrapConfig::new(NS, "client-0");
    config.xds_port = cp.xds_addr.port();
    config.xds_protocol = XdsProtocol::Delta;
    config.admin = SocketAddr::new(PROXY_IP, 15000);
    config.proxy_address = PROXY_IP;
    // Written once, from the root of the moment, as `meshd bootstrap
    // --issue-from-ca-dir` does.
    pki.provision(&mut config, "client-0", work.path(), None)
        .unwrap();
    let bootstrap = meshd_tests::write_bootstrap(work.path(), &config).unwrap();
    let start = || {
        Envoy::start(
            "client-0",
            &binary,
            &bootstrap,
            config.admin,
            &[],
            work.path(),
        )
        .unwrap()
    };
    let serving = |generation: u64| {
        let state = cp.state.clone();
        move || {
            let acked = state
                .proxies()
                .into_iter()
                .find(|p| p.node_id == NODE)
                .and_then(|p| p.ca_generation_acked);
            if acked >= Some(generation) {
                Ok(Some(()))
            } else {
                Err(format!("{NODE}: acknowledged CA generation {acked:?}"))
            }
        }
    };

    let envoy = start();
    wait_for("the proxy's first secrets", WAIT, serving(0))
        .unwrap_or_else(|e| panic!("{e:#}\n{}", envoy.log_tail()));

    let report = rt
        .block_on(rotate_root(
            &pki.identity,
            &*cp.state,
            Duration::from_secs(10),
            None,
        ))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(report.complete, "{report:?}");
    assert_eq!(
        pki.identity.ca.trust_anchors().len(),
        1,
        "the old root is retired"
    );
    let generation = pki.identity.generation();

    // The next reconnect, with the files the pod started with.
    drop(envoy);
    let envoy = start();
    wait_for(
        "the restarted proxy's secrets from the new root",
        WAIT,
        serving(generation),
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e:#}\nhandshake failures: {:?}\n{}",
            cp.state.metrics.tls_handshake_failures,
            envoy.log_tail()
        )
    });
    drop(envoy);
    rt.block_on(cp.shutdown());
}
