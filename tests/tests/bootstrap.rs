//! Real Envoy accepts the bootstraps `meshd bootstrap` renders.

use std::net::{IpAddr, SocketAddr};
use std::process::Command;

use std::time::Duration;

use meshd_api::sidecar::bootstrap::{AppProbe, BootstrapConfig, XdsProtocol};
use meshd_tests::envoy;

#[test]
fn envoy_validates_every_bootstrap_flavour() {
    let Some(envoy_bin) = envoy::require_envoy() else {
        return;
    };
    let work = meshd_tests::workdir().unwrap();

    let delta = BootstrapConfig::new("shop", "web-0");
    let mut sotw_dns = BootstrapConfig::new("shop", "web-1");
    sotw_dns.xds_protocol = XdsProtocol::Sotw;
    sotw_dns.xds_host = "meshd.meshd-system.svc.cluster.local".into();
    let mut loopback = BootstrapConfig::new("demo", "client-0");
    loopback.admin = SocketAddr::from(([127, 0, 10, 1], 15000));
    loopback.proxy_address = IpAddr::from([127, 0, 10, 1]);

    // The mTLS flavour: the xDS cluster reads its identity through
    // file-based SDS.
    let pki = meshd_tests::pki::Pki::new(Default::default()).unwrap();
    let mut mtls = BootstrapConfig::new("shop", "web-2");
    pki.provision(&mut mtls, "web", work.path(), None).unwrap();

    // The app's probes on the readiness listener: two ports, a query kept.
    let mut probes = BootstrapConfig::new("shop", "web-3");
    probes.app_probes = vec![
        AppProbe {
            path: "/app-health/web/readyz".into(),
            port: 8080,
            original_path: "/ready?full=1".into(),
            timeout: Duration::from_secs(1),
        },
        AppProbe {
            path: "/app-health/web/livez".into(),
            port: 8080,
            original_path: "/live".into(),
            timeout: Duration::from_secs(10),
        },
        AppProbe {
            path: "/app-health/admin/startupz".into(),
            port: 9090,
            original_path: "/".into(),
            timeout: Duration::from_millis(2500),
        },
    ];

    for config in [delta, sotw_dns, loopback, mtls, probes] {
        let path = meshd_tests::write_bootstrap(work.path(), &config).unwrap();
        let out = Command::new(&envoy_bin)
            .args(["--mode", "validate", "--log-level", "error", "-c"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "envoy rejected the bootstrap for {}:\n{}\n{}",
            config.node_id(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
