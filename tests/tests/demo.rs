//! The README's demo command, run as a user runs it (`scripts/demo` is a
//! build, then this binary): it must keep working at every commit. It
//! listens on fixed loopback ports (127.0.0.1:15010, 15014, 18080, 18081,
//! 14317 and 127.0.10.1-3), so it is a test binary of its own: cargo runs
//! test binaries one at a time.
//!
//! The demo checks each of its steps itself and fails on the first that
//! does not do what it says; this test also reads what it printed for the
//! outcome of each feature the README's walkthrough points at.

use std::process::Command;

use meshd_tests::process::meshd_binary;

#[test]
fn the_readme_demo_runs_every_step() {
    // The demo finds `meshd` beside itself, as `scripts/demo` builds it.
    meshd_binary();
    // Under CI=true a missing Envoy fails here; elsewhere it is reported.
    if meshd_tests::envoy::require_envoy().is_none() {
        return;
    }
    let output = Command::new(env!("CARGO_BIN_EXE_meshd-demo"))
        .output()
        .expect("meshd-demo starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the demo failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    for expected in [
        // A request routed through both sidecars, over mutual TLS.
        "HTTP 200 from server-0",
        "URI=spiffe://cluster.local/ns/demo/sa/client",
        // Routing by annotation and by a Gateway API HTTPRoute.
        "HTTP 200 from server-v2-0",
        "x-route: demo/server-v2-canary",
        // Authorization: the denied call, counted by caller.
        "HTTP 403",
        "server   spiffe://cluster.local/ns/demo/sa/client  18080  1       0",
        // Golden signals and access logs.
        "envoy_response_code=\"403\"",
        "\"caller_identity\":\"spiffe://cluster.local/ns/demo/sa/client\"",
        // A trace across both proxies.
        "SERVER  span",
        // proxy-status and proxy-config, and no difference with Envoy's
        // own config dump.
        "CDS SYNCED",
        "no differences",
    ] {
        assert!(
            stdout.contains(expected),
            "the demo's output lacks {expected:?}:\n{stdout}"
        );
    }
    // Every proxy took everything it was sent.
    for proxy in ["client-0.demo", "server-0.demo", "server-v2-0.demo"] {
        let line = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(proxy) && l.contains("Delta"))
            .unwrap_or_else(|| panic!("no proxy-status line for {proxy}:\n{stdout}"));
        assert_eq!(line.matches("SYNCED").count(), 5, "{line}");
    }
}
