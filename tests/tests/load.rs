//! The load tool at a small size, so it never rots: `meshd-load` against
//! the real `meshd run` (this profile's build), with both ADS flavours and
//! two worker processes, and once through the Kubernetes source. It asserts what must hold at any size (every
//! proxy synced, every change reached every proxy, the fleet's streams
//! closed when it disconnected), never a time.

use std::process::Command;

use meshd_tests::process::meshd_binary;
use serde_json::Value;

const PROXIES: u64 = 50;

#[test]
fn a_small_fleet_syncs_and_receives_every_change() {
    small_fleet_run("files", &["--protocol", "mix", "--processes", "2"]);
}

/// The same through the Kubernetes source: `meshd run --kubernetes`
/// lists and watches a stand-in API server, and every change is a watch
/// event that must reach every proxy.
#[test]
fn a_small_fleet_receives_every_change_from_the_kubernetes_source() {
    small_fleet_run("kubernetes", &["--protocol", "delta"]);
}

fn small_fleet_run(source: &str, flavour: &[&str]) {
    let meshd = meshd_binary();
    let work = tempfile::tempdir().unwrap();
    let json = work.path().join("report.json");
    let output = Command::new(env!("CARGO_BIN_EXE_meshd-load"))
        .arg("--meshd")
        .arg(&meshd)
        .args(["--proxies", &PROXIES.to_string()])
        .args(["--services", "50", "--namespaces", "5"])
        .args(["--endpoints-per-service", "4"])
        .args(["--source", source])
        .args(flavour)
        .args(["--changes", "3", "--change-interval-ms", "300"])
        .args(["--service-adds", "1", "--reconnect-cycles", "1"])
        .args(["--settle-seconds", "0", "--timeout", "90"])
        .arg("--work-dir")
        .arg(work.path().join("run"))
        .arg("--json")
        .arg(&json)
        .output()
        .expect("meshd-load runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let log = std::fs::read_to_string(work.path().join("run/meshd.log")).unwrap_or_default();
    let context = format!(
        "stdout:\n{stdout}\nstderr:\n{stderr}\nmeshd log (end):\n{}",
        log.lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        output.status.success(),
        "meshd-load failed ({})\n{context}",
        output.status
    );

    let summary = stdout.lines().last().unwrap_or_default();
    assert!(
        summary.starts_with("meshd-load: proxies=50 synced=50 "),
        "{context}"
    );
    assert!(
        summary.ends_with(&format!(" failed=0 source={source}")),
        "{context}"
    );

    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["complete"], true, "{context}");
    assert_eq!(report["source"], source);

    let syncs = report["syncs"].as_array().unwrap();
    assert_eq!(syncs.len(), 2, "the cold sync and one reconnect");
    for sync in syncs {
        assert_eq!(sync["synced"], PROXIES, "{sync}");
        // Every synced proxy holds its clusters, endpoints, listeners,
        // routes and both secrets: each type sent it something.
        for kind in ["CDS", "EDS", "LDS", "RDS", "SDS"] {
            assert!(
                sync["bytes_per_proxy"][kind].as_u64().unwrap() > 0,
                "{kind}: {sync}"
            );
        }
    }
    let changes = report["endpoint_changes"].as_array().unwrap();
    let adds = report["service_adds"].as_array().unwrap();
    assert_eq!((changes.len(), adds.len()), (3, 1));
    for change in changes.iter().chain(adds) {
        assert_eq!(change["expected"], PROXIES, "{change}");
        assert_eq!(change["received"], PROXIES, "{change}");
    }
    // A policy change reaches the proxies of the service's pods (one
    // here: 50 proxies over 50 services) and nobody else.
    let policies = report["policy_changes"].as_array().unwrap();
    assert_eq!(policies.len(), 1, "{context}");
    let policy = &policies[0];
    assert_eq!(policy["covered"], 1, "{policy}");
    assert_eq!(policy["responses"]["LDS"], 1, "{policy}");
    for kind in ["CDS", "EDS", "RDS", "SDS"] {
        assert_eq!(policy["responses"][kind], 0, "{kind}: {policy}");
    }
    let disconnects = report["disconnects"].as_array().unwrap();
    assert_eq!(disconnects.len(), 2);
    for gone in disconnects {
        assert_eq!(gone["proxies_closed"], PROXIES, "{gone}");
        // meshd's own gauge, where it has one, agrees that none is left.
        assert!(
            gone["streams_left"].as_f64().is_none_or(|n| n == 0.0),
            "{gone}"
        );
    }
    // meshd's own figures came from /proc.
    assert!(report["idle"]["rss_kib"].as_u64().unwrap() > 0);
    assert_eq!(report["failed"], 0);
}
