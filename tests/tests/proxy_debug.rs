//! `meshd proxy-status` and `meshd proxy-config` against the real `meshd
//! run` (a file registry, mutual TLS) and real Envoy on loopback: every
//! type SYNCED, the tables naming what the test knows was sent (and never
//! a key), `--diff` agreeing with Envoy's own `/config_dump`, and a
//! deliberately rejected listener shown as NACKED with Envoy's message.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use meshd_tests::envoy::{self, Envoy, wait_for};
use meshd_tests::http::{self, App};
use meshd_tests::process::{Process, free_port, local_bootstrap, meshd_binary};
use meshd_tests::registry;

const NS: &str = "dbg";
const WAIT: Duration = Duration::from_secs(60);
/// Pods on 127.78.0.x: no other test uses that block.
const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 78, 0, 1));
const SERVER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 78, 0, 2));
const SERVER_CLUSTER: &str = "outbound|80||server.dbg.svc.cluster.local";

fn mesh_yaml(client_ip: IpAddr, server_port: u16) -> String {
    mesh_yaml_with(client_ip, server_port, &[])
}

/// [`mesh_yaml`] with `server` annotated.
fn mesh_yaml_with(client_ip: IpAddr, server_port: u16, server: &[(&str, &str)]) -> String {
    registry::documents(&[
        registry::namespace(NS),
        registry::http_service_with(NS, "server", "198.19.0.10", 80, server),
        registry::slice(
            NS,
            "server-1",
            "server",
            server_port,
            &[("server-0", SERVER)],
        ),
        registry::pod(NS, "client-0", client_ip, false),
        registry::pod(NS, "server-0", SERVER, false),
    ])
}

struct Cli {
    meshd: PathBuf,
    debug: SocketAddr,
}

impl Cli {
    fn run(&self, args: &[&str]) -> Output {
        Command::new(&self.meshd)
            .args(args)
            .arg("--control-plane")
            .arg(self.debug.to_string())
            .output()
            .expect("meshd runs")
    }

    /// Runs `meshd ARGS`, which must succeed; its standard output.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "meshd {args:?} failed: {stderr}\n{stdout}"
        );
        assert!(
            !stdout.contains("PRIVATE KEY") && !stderr.contains("PRIVATE KEY"),
            "meshd {args:?} printed a private key"
        );
        stdout
    }
}

/// The line of `proxy-status` about `node`.
fn status_line(status: &str, node: &str) -> Option<String> {
    status
        .lines()
        .find(|l| l.split_whitespace().next() == Some(node))
        .map(str::to_string)
}

fn all_synced(line: &str) -> bool {
    line.matches("SYNCED").count() == 5
}

#[test]
fn proxy_status_and_config_show_what_was_sent_and_a_nack() {
    meshd_tests::init_tracing();
    let Some(envoy_bin) = envoy::require_envoy() else {
        return;
    };
    let meshd = meshd_binary();
    let work = meshd_tests::workdir().unwrap();
    let registry_dir = work.path().join("registry");
    std::fs::create_dir(&registry_dir).unwrap();
    let app = App::serve("server-0", TcpListener::bind("127.0.0.1:0").unwrap()).unwrap();
    let mesh = registry_dir.join("mesh.yaml");
    std::fs::write(&mesh, mesh_yaml(CLIENT, app.addr.port())).unwrap();

    let (xds, debug) = (free_port(), free_port());
    let log = std::fs::File::create(work.path().join("meshd.log")).unwrap();
    let _cp = Process(
        Command::new(&meshd)
            .args(["run", "--debounce-ms", "20"])
            .arg("--registry")
            .arg(&registry_dir)
            .arg("--xds-address")
            .arg(xds.to_string())
            .arg("--debug-address")
            .arg(debug.to_string())
            .arg("--ca-dir")
            .arg(work.path().join("ca"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let cp_log = || std::fs::read_to_string(work.path().join("meshd.log")).unwrap_or_default();
    wait_for("meshd run to be ready", WAIT, || {
        match http::get(debug, &debug.to_string(), "/readyz", false) {
            Ok(r) if r.status == 200 => Ok(Some(())),
            Ok(r) => Err(format!("HTTP {}", r.status)),
            Err(e) => Err(format!("{e:#}")),
        }
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", cp_log()));

    let mut envoys = Vec::new();
    for (pod, ip, protocol) in [("client-0", CLIENT, "delta"), ("server-0", SERVER, "sotw")] {
        let bootstrap = local_bootstrap(
            &meshd,
            work.path(),
            NS,
            pod,
            pod,
            ip,
            &xds.to_string(),
            &["--xds-protocol", protocol],
        )
        .unwrap();
        let admin = SocketAddr::new(ip, 15000);
        envoys.push(Envoy::start(pod, &envoy_bin, &bootstrap, admin, &[], work.path()).unwrap());
    }
    let logs = |envoys: &[Envoy]| {
        let tails: Vec<String> = envoys.iter().map(|e| e.log_tail()).collect();
        format!("{}\n--- meshd ---\n{}", tails.join("\n"), cp_log())
    };
    let cli = Cli {
        meshd: meshd.clone(),
        debug,
    };
    let client = format!("client-0.{NS}");
    let server = format!("server-0.{NS}");

    // Both proxies SYNCED for every type, with their identity, protocol,
    // replica and certificate expiry on their line.
    let status = wait_for("both proxies synced for every type", WAIT, || {
        let status = cli.ok(&["proxy-status"]);
        match (status_line(&status, &client), status_line(&status, &server)) {
            (Some(c), Some(s)) if all_synced(&c) && all_synced(&s) => Ok(Some(status)),
            _ => Err(status),
        }
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", logs(&envoys)));
    println!("{status}");
    let line = status_line(&status, &client).unwrap();
    for expected in [
        "spiffe://cluster.local/ns/dbg/sa/client-0",
        "Delta",
        &debug.to_string(),
    ] {
        assert!(line.contains(expected), "{expected} in {line}");
    }
    assert!(
        status_line(&status, &server).unwrap().contains("SotW"),
        "{status}"
    );
    // The certificate's expiry, RFC 3339.
    assert!(
        line.split_whitespace()
            .last()
            .is_some_and(|t| t.contains('T') && t.len() >= 20),
        "{line}"
    );

    // Several replicas: a second `meshd run` with no proxy on it; the
    // list merges both, each proxy on the replica it is connected to. A
    // replica that does not answer is named, the others are still listed,
    // and the command fails.
    let (xds2, debug2) = (free_port(), free_port());
    let _second = Process(
        Command::new(&meshd)
            .args(["run", "--debounce-ms", "20"])
            .arg("--registry")
            .arg(&registry_dir)
            .arg("--xds-address")
            .arg(xds2.to_string())
            .arg("--debug-address")
            .arg(debug2.to_string())
            .arg("--ca-dir")
            .arg(work.path().join("ca2"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for("the second replica to be ready", WAIT, || {
        match http::get(debug2, &debug2.to_string(), "/readyz", false) {
            Ok(r) if r.status == 200 => Ok(Some(())),
            Ok(r) => Err(format!("HTTP {}", r.status)),
            Err(e) => Err(format!("{e:#}")),
        }
    })
    .unwrap();
    let replicas = format!("{debug2},{debug}");
    let merged = Command::new(&meshd)
        .args(["proxy-status", "--control-plane", &replicas])
        .output()
        .unwrap();
    let merged_out = String::from_utf8_lossy(&merged.stdout);
    assert!(merged.status.success(), "{merged_out}");
    for node in [&client, &server] {
        let line =
            status_line(&merged_out, node).unwrap_or_else(|| panic!("{node} in {merged_out}"));
        assert!(line.contains(&debug.to_string()), "{line}");
    }
    let down = free_port();
    let partial = Command::new(&meshd)
        .args([
            "proxy-status",
            "--control-plane",
            &format!("{debug},{down}"),
        ])
        .output()
        .unwrap();
    let (partial_out, partial_err) = (
        String::from_utf8_lossy(&partial.stdout),
        String::from_utf8_lossy(&partial.stderr),
    );
    assert!(!partial.status.success(), "{partial_out}");
    assert!(
        status_line(&partial_out, &client).is_some(),
        "the answering replica's proxies are still listed: {partial_out}"
    );
    assert!(
        partial_err.contains(&format!("no control plane at {down}: connection refused")),
        "{partial_err}"
    );

    // What was sent, as tables.
    let clusters = cli.ok(&["proxy-config", "cluster", &client]);
    println!("{clusters}");
    let row = clusters
        .lines()
        .find(|l| l.starts_with(SERVER_CLUSTER))
        .unwrap_or_else(|| panic!("{SERVER_CLUSTER} in\n{clusters}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[1], "EDS", "{row}");
    assert_eq!(cells.last(), Some(&"1"), "one endpoint: {row}");
    assert!(clusters.contains("CDS SYNCED"), "{clusters}");

    let routes = cli.ok(&[
        "proxy-config",
        "route",
        &client,
        "--fqdn",
        "server.dbg.svc.cluster.local",
    ]);
    println!("{routes}");
    assert!(
        routes
            .lines()
            .any(|l| l.contains("server.dbg.svc.cluster.local") && l.contains(SERVER_CLUSTER)),
        "{routes}"
    );

    let secrets = cli.ok(&["proxy-config", "secret", &client]);
    println!("{secrets}");
    assert!(
        secrets
            .lines()
            .any(|l| l.starts_with("default")
                && l.contains("spiffe://cluster.local/ns/dbg/sa/client-0")),
        "{secrets}"
    );
    assert!(
        secrets.lines().any(|l| l.starts_with("ROOTCA")),
        "{secrets}"
    );

    let endpoints = cli.ok(&["proxy-config", "endpoint", &client, "--port", "80"]);
    assert!(
        endpoints.contains(&format!("{SERVER}:{}", app.addr.port())),
        "{endpoints}"
    );

    // The config-dump shape, never a key.
    let json = cli.ok(&["proxy-config", "all", &client, "-o", "json"]);
    let dump: serde_json::Value = serde_json::from_str(&json).unwrap();
    let types: Vec<&str> = dump["configs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["@type"].as_str())
        .collect();
    assert_eq!(types.len(), 5, "{types:?}");
    assert!(json.contains("[redacted]"), "the key's place says so");
    let yaml = cli.ok(&["proxy-config", "listener", &server, "-o", "yaml"]);
    assert!(yaml.contains("ListenersConfigDump"), "{yaml}");

    // What the control plane sent is what each Envoy holds.
    for (node, envoy) in [(&client, &envoys[0]), (&server, &envoys[1])] {
        let diff = cli.ok(&[
            "proxy-config",
            "all",
            node,
            "--diff",
            "--admin",
            &envoy.admin.to_string(),
        ]);
        println!("{diff}");
        assert!(diff.contains("no differences"), "{diff}");
    }

    // A policy on server refuses client-0 /admin: the serving proxy counts
    // the denial by caller, and `proxy-config listener --admin` shows it.
    std::fs::write(
        &mesh,
        mesh_yaml_with(CLIENT, app.addr.port(), &[("meshd.io/deny", "* /admin/*")]),
    )
    .unwrap();
    let explicit_proxy = SocketAddr::new(CLIENT, 15001);
    wait_for("server's proxy to refuse /admin", WAIT, || match http::get(
        explicit_proxy,
        "server",
        "/admin/users",
        false,
    ) {
        Ok(r) if r.status == 403 => Ok(Some(())),
        Ok(r) => Err(format!("HTTP {}", r.status)),
        Err(e) => Err(format!("{e:#}")),
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", logs(&envoys)));
    let server_admin = envoys[1].admin.to_string();
    let denied = wait_for("the denial in proxy-config's table", WAIT, || {
        let listeners = cli.ok(&[
            "proxy-config",
            "listener",
            &server,
            "--admin",
            &server_admin,
        ]);
        match listeners
            .lines()
            .find(|l| l.contains(" spiffe://cluster.local/ns/dbg/sa/client-0 "))
        {
            Some(row) => Ok(Some(
                row.split_whitespace()
                    .map(str::to_string)
                    .collect::<Vec<_>>(),
            )),
            None => Err(listeners),
        }
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    // SERVICE CALLER PORT DENIED WOULD-DENY: server refused the one
    // request, no dry-run.
    assert_eq!(denied[0], "server", "{denied:?}");
    assert_eq!(denied[3..], ["1", "0"], "{denied:?}");

    // Errors that say what is wrong.
    let unknown = cli.run(&["proxy-config", "cluster", "nobody.dbg"]);
    let message = String::from_utf8_lossy(&unknown.stderr);
    assert!(!unknown.status.success());
    assert!(
        message.contains("proxy nobody.dbg is not connected to the control plane"),
        "{message}"
    );
    let nothing = free_port();
    let refused = Command::new(&meshd)
        .args(["proxy-status", "--control-plane", &nothing.to_string()])
        .output()
        .unwrap();
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        message.contains(&format!(
            "no control plane at {nothing}: connection refused"
        )) && message.contains("kubectl port-forward"),
        "{message}"
    );

    // Move the client pod to an address this host does not have: its
    // explicit-proxy listener cannot bind there, and Envoy rejects the LDS
    // update.
    std::fs::write(
        &mesh,
        mesh_yaml(
            IpAddr::V4(Ipv4Addr::new(198, 18, 255, 254)),
            app.addr.port(),
        ),
    )
    .unwrap();
    let status = wait_for("the client's LDS NACKED", WAIT, || {
        let status = cli.ok(&["proxy-status"]);
        match status_line(&status, &client) {
            Some(line) if line.contains("NACKED") => Ok(Some(status)),
            _ => Err(status),
        }
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", logs(&envoys)));
    println!("{status}");
    let nack = status
        .lines()
        .find(|l| l.starts_with(&format!("{client} LDS NACKED: ")))
        .unwrap_or_else(|| panic!("the NACK's message in\n{status}"));
    assert!(
        nack.len() > format!("{client} LDS NACKED: ").len(),
        "{nack}"
    );
    let detail = cli.ok(&["proxy-status", &client]);
    println!("{detail}");
    assert!(detail.contains("Last LDS NACK"), "{detail}");
    let listeners = cli.ok(&["proxy-config", "listener", &client]);
    assert!(listeners.contains("LDS NACKED"), "{listeners}");
    assert!(listeners.contains("last NACK: "), "{listeners}");
    // The operator's metrics: one proxy not synced, and the change was
    // pushed (a push latency observed).
    let metrics = http::get(debug, &debug.to_string(), "/metrics", false).unwrap();
    let value = |name: &str| -> Option<f64> {
        metrics
            .body
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    };
    assert_eq!(
        value("meshd_xds_proxies_not_synced"),
        Some(1.0),
        "{}",
        metrics.body
    );
    assert!(
        value("meshd_xds_push_latency_seconds_count").is_some_and(|n| n >= 1.0),
        "{}",
        metrics.body
    );
    assert!(
        metrics
            .body
            .contains("meshd_xds_nacks_total{type=\"LDS\"} 1"),
        "{}",
        metrics.body
    );

    // Envoy kept its last accepted listener: --diff says where they part.
    let diff = cli.run(&[
        "proxy-config",
        "listener",
        &client,
        "--diff",
        "--admin",
        &envoys[0].admin.to_string(),
    ]);
    let report = String::from_utf8_lossy(&diff.stdout);
    println!("{report}");
    assert!(!diff.status.success(), "{report}");
    assert!(
        report.lines().any(|l| l.starts_with("LDS outbound: ")
            && l.contains("\"198.18.255.254\"")
            && l.contains(&format!("\"{CLIENT}\""))),
        "{report}"
    );
}
