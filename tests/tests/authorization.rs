//! Authorization end to end with real Envoy in network namespaces: the
//! serving pod's sidecar decides on the caller's SPIFFE ID from the mTLS
//! handshake, and policy edits in the registry take effect live.
//!
//! ```text
//! namespace shop:  client-0 (198.18.0.2) ─┐
//!                  other-0  (198.18.0.3) ─┼─mTLS─> web-0 (198.18.0.4): HTTP app on 8080 (Service web, 80),
//!                                         │                               TCP echo on 9090 (no Service)
//! namespace batch: batch-0  (198.18.0.6) ─┘       db-0  (198.18.0.5): TCP echo on 5432 (Service db)
//! kubelet (198.18.0.9, no sidecar): plaintext to web-0's pod IP, and its probe on 15021
//! ```
//!
//! Each pod's service account is its name. Policies are rewritten in the
//! registry while everything runs; each phase waits for a sign that the
//! new policy is in force, then checks every caller.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use meshd_api::annotations::authorization::{ALLOW, AUTHORIZATION, AUTHORIZATION_MODE, DENY};
use meshd_api::sidecar::bootstrap::AppProbe;
use meshd_controlplane::identity::IdentityConfig;
use meshd_tests::envoy::{stat, wait_for};
use meshd_tests::http;
use meshd_tests::mesh::{Extras, PodSpec, TestMesh, pod_ip};
use meshd_tests::registry;

const NS: &str = "shop";
const OTHER_NS: &str = "batch";
const CLIENT: &str = "client-0";
const OTHER: &str = "other-0";
const WEB: &str = "web-0";
const DB: &str = "db-0";
const BATCH: &str = "batch-0";
const KUBELET: &str = "kubelet";
const WEB_VIP: &str = "198.19.0.40";
const DB_VIP: &str = "198.19.0.41";
const APP_PORT: u16 = 8080;
const DB_PORT: u16 = 5432;
/// A port web's pod serves that no Service declares.
const UNDECLARED_PORT: u16 = 9090;
/// Envoy's counters for web's undeclared ports (the catch-all chain).
const UNDECLARED_DENIED: &str = "InboundPassthrough.rbac.denied";
const UNDECLARED_WOULD_DENY: &str = "InboundPassthrough.rbac.dry_run.shadow_denied";
/// Sent to web's undeclared port: longer than a TLS record header, so
/// the TLS inspector of web's PERMISSIVE listener decides at once.
const GREETING: &[u8] = b"hello, undeclared port";
const PROBE_PATH: &str = "/app-health/app/readyz";
const WAIT: Duration = Duration::from_secs(30);
/// Envoy's counter of requests web's dry-run policy would have denied
/// (mTLS callers of port 8080).
const WOULD_DENY: &str = "http.inbound_8080_mtls.rbac.dry_run.shadow_denied";

const PODS: [PodSpec<'static>; 5] = [
    PodSpec {
        name: CLIENT,
        host: 2,
        app_port: None,
    },
    PodSpec {
        name: OTHER,
        host: 3,
        app_port: None,
    },
    PodSpec {
        name: WEB,
        host: 4,
        app_port: Some(APP_PORT),
    },
    PodSpec {
        name: DB,
        host: 5,
        app_port: None,
    },
    PodSpec {
        name: BATCH,
        host: 6,
        app_port: None,
    },
];

fn registry_text(web: &[(&str, &str)], db: &[(&str, &str)]) -> String {
    let ip = |host| IpAddr::V4(pod_ip(host));
    let db_annotations = db
        .iter()
        .map(|(k, v)| format!("{k}: '{v}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let db_service = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: db, namespace: {NS}, annotations: {{{db_annotations}}}}}\nspec: {{clusterIP: {DB_VIP}, ports: [{{name: tcp-echo, port: {DB_PORT}}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: db-1, namespace: {NS}, labels: {{kubernetes.io/service-name: db}}}}\naddressType: IPv4\nports: [{{name: tcp-echo, port: {DB_PORT}}}]\nendpoints: [{{addresses: [\"{}\"], targetRef: {{kind: Pod, name: {DB}}}}}]\n",
        ip(5)
    );
    registry::documents(&[
        registry::namespace(NS),
        registry::namespace(OTHER_NS),
        registry::http_service_with(NS, "web", WEB_VIP, 80, web),
        registry::slice(NS, "web-1", "web", APP_PORT, &[(WEB, ip(4))]),
        db_service,
        registry::pod(NS, CLIENT, ip(2), true),
        registry::pod(NS, OTHER, ip(3), true),
        registry::pod(NS, WEB, ip(4), true),
        registry::pod(NS, DB, ip(5), true),
        registry::pod(OTHER_NS, BATCH, ip(6), true),
    ])
}

/// One request from `pod`'s app to `addr` on a fresh connection; the
/// status and body, or why there is none.
fn request(
    mesh: &TestMesh,
    pod: &str,
    addr: SocketAddr,
    method: &str,
    path: &str,
) -> anyhow::Result<(u16, String)> {
    mesh.pod(pod).run(|| {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: web.shop\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )?;
        let mut text = String::new();
        stream.read_to_string(&mut text)?;
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no HTTP answer: {text:?}"))?;
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        Ok((status, body.to_string()))
    })?
}

/// The status of `method path` from `pod` to web's VIP (0: no answer).
fn web(mesh: &TestMesh, pod: &str, method: &str, path: &str) -> u16 {
    let addr: SocketAddr = format!("{WEB_VIP}:80").parse().unwrap();
    request(mesh, pod, addr, method, path).map_or(0, |(status, _)| status)
}

/// The value of `metric` in a Prometheus scrape of `workload`'s proxy for
/// the caller whose SPIFFE ID ends with `caller` on inbound port `port` of
/// the workload's Service (0 if none).
fn caller_count(scrape: &str, metric: &str, workload: &str, caller: &str, port: u16) -> u64 {
    // The Service is the workload's (web-0 serves web).
    let service = workload.trim_end_matches("-0");
    let labels = format!(
        "workload=\"{workload}\",workload_namespace=\"{NS}\",destination_service=\"{service}\","
    );
    scrape
        .lines()
        .filter(|l| l.starts_with(&format!("{metric}{{{labels}")))
        .filter(|l| {
            l.contains(&format!("{caller}\""))
                && l.contains(&format!("destination_port=\"{port}\""))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
        .sum()
}

/// web's would-deny counts by caller (its service account name).
fn would_deny_by_caller(mesh: &TestMesh) -> BTreeMap<String, u64> {
    let scrape = mesh.scrape(WEB).unwrap();
    let mut counts = BTreeMap::new();
    for line in scrape
        .lines()
        .filter(|l| l.starts_with("envoy_authorization_would_deny{"))
    {
        let caller = line
            .split("caller_identity=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .and_then(|id| id.rsplit('/').next())
            .unwrap_or_default();
        let value: u64 = line
            .rsplit_once(' ')
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        *counts.entry(caller.to_string()).or_default() += value;
    }
    counts
}

/// One TCP exchange from `pod` with db's echo server: the echo, or the
/// error (a closed connection).
fn echo(mesh: &TestMesh, pod: &str) -> anyhow::Result<Vec<u8>> {
    let addr: SocketAddr = format!("{DB_VIP}:{DB_PORT}").parse().unwrap();
    echo_at(mesh, pod, addr, b"ping")
}

/// One TCP exchange from `pod` with web's echo server on the port no
/// Service declares, at web's pod IP.
fn undeclared(mesh: &TestMesh, pod: &str) -> anyhow::Result<Vec<u8>> {
    let addr = SocketAddr::new(IpAddr::V4(pod_ip(4)), UNDECLARED_PORT);
    echo_at(mesh, pod, addr, GREETING)
}

fn echo_at(
    mesh: &TestMesh,
    pod: &str,
    addr: SocketAddr,
    message: &[u8],
) -> anyhow::Result<Vec<u8>> {
    mesh.pod(pod).run(|| {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(message)?;
        let mut got = vec![0u8; message.len()];
        stream.read_exact(&mut got)?;
        Ok(got)
    })?
}

/// Rewrites the registry and waits until `pod`'s `method path` to web
/// answers `status`: the sign the new policy is in force.
fn switch(mesh: &mut TestMesh, text: &str, (pod, method, path, status): (&str, &str, &str, u16)) {
    mesh.write_registry(text);
    let r = wait_for("the new policy to be in force", WAIT, || {
        match web(mesh, pod, method, path) {
            s if s == status => Ok(Some(())),
            other => Err(format!("{pod} {method} {path}: {other}")),
        }
    });
    if let Err(e) = r {
        panic!("{e:#}\n{}", mesh.logs());
    }
    // Connections the callers' proxies opened before the change still
    // run the old filter chains until they drain (the proxy's drain
    // time): wait until no chain is draining on the serving proxies.
    for pod in [WEB, DB] {
        let drained = wait_for("the old filter chains to drain", WAIT, || {
            match stat(
                &mesh.admin(pod, "/stats"),
                "listener_manager.total_filter_chains_draining",
            ) {
                0 => Ok(Some(())),
                n => Err(format!("{pod}: {n} draining")),
            }
        });
        if let Err(e) = drained {
            panic!("{e:#}\n{}", mesh.logs());
        }
    }
}

#[test]
fn the_serving_sidecar_allows_and_denies_callers_by_identity_live() {
    let probes = [(
        WEB,
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
        namespaces: &[(BATCH, OTHER_NS)],
        ..Extras::default()
    };
    let Some(mut mesh) = TestMesh::start_with(
        NS,
        &PODS,
        &registry_text(&[], &[]),
        IdentityConfig::default(),
        extras,
    ) else {
        return;
    };
    // db's app, and web's on a port no Service declares: echo servers.
    for (pod, port) in [(DB, DB_PORT), (WEB, UNDECLARED_PORT)] {
        let listener = mesh
            .pod(pod)
            .run(|| TcpListener::bind(("0.0.0.0", port)))
            .unwrap()
            .unwrap();
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = stream.read(&mut buf) {
                        if n == 0 || stream.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
    }

    // No policy: the mesh default allow-all, everyone through.
    let ready = wait_for("every caller to reach web and db", WAIT, || {
        let statuses: Vec<u16> = [CLIENT, OTHER, BATCH]
            .iter()
            .map(|p| web(&mesh, p, "GET", "/"))
            .collect();
        match (statuses.as_slice(), echo(&mesh, CLIENT)) {
            ([200, 200, 200], Ok(e)) if e == b"ping" => Ok(Some(())),
            (s, e) => Err(format!("{s:?} {e:?}")),
        }
    });
    if let Err(e) = ready {
        panic!("{e:#}\n{}", mesh.logs());
    }
    // web's undeclared port is open to a meshed caller and to a plaintext
    // one while nothing restricts web.
    for pod in [CLIENT, KUBELET] {
        assert_eq!(undeclared(&mesh, pod).unwrap(), GREETING, "{pod}");
    }

    // allow-same-namespace: batch's caller is denied, shop's are not.
    let text = registry_text(&[(AUTHORIZATION, "allow-same-namespace")], &[]);
    switch(&mut mesh, &text, (BATCH, "GET", "/", 403));
    assert_eq!(web(&mesh, CLIENT, "GET", "/"), 200);
    assert_eq!(web(&mesh, OTHER, "GET", "/"), 200);
    // The denial names nothing internal: no identity, cluster or port.
    let addr: SocketAddr = format!("{WEB_VIP}:80").parse().unwrap();
    let (status, body) = request(&mesh, BATCH, addr, "GET", "/orders?token=t0ps3cret").unwrap();
    assert_eq!(status, 403);
    for internal in ["spiffe", "inbound", "outbound", "cluster", "shop", "8080"] {
        assert!(!body.contains(internal), "{body}");
    }

    // deny-all with exceptions: client-0 may call anything but /admin
    // (deny wins over allow); other-0 only GET /public/*; and the TCP
    // service denies everyone.
    let web_policy = [
        (AUTHORIZATION, "deny-all"),
        (
            ALLOW,
            "shop/client-0; shop/other-0 GET /public/*; unauthenticated GET /healthz",
        ),
        (DENY, "shop/client-0 /admin/*"),
    ];
    let text = registry_text(&web_policy, &[(AUTHORIZATION, "deny-all")]);
    switch(&mut mesh, &text, (OTHER, "GET", "/", 403));
    assert_eq!(web(&mesh, CLIENT, "GET", "/"), 200);
    assert_eq!(web(&mesh, CLIENT, "POST", "/orders"), 200);
    assert_eq!(web(&mesh, CLIENT, "GET", "/admin/users"), 403, "deny wins");
    // Encoded and doubled slashes and dot segments are the same path to
    // the rules as to the app.
    for path in [
        "/admin%2Fusers",
        "/admin%2fusers",
        "//admin/users",
        "/public/../admin/users",
    ] {
        assert_eq!(web(&mesh, CLIENT, "GET", path), 403, "{path}");
    }
    assert_eq!(
        web(&mesh, OTHER, "GET", "/public/logo.png"),
        200,
        "path rule"
    );
    assert_eq!(
        web(&mesh, OTHER, "POST", "/public/logo.png"),
        403,
        "method rule"
    );
    assert_eq!(web(&mesh, OTHER, "GET", "/private"), 403, "path rule");
    assert_eq!(web(&mesh, BATCH, "GET", "/public/logo.png"), 403);
    // A plaintext caller (web is PERMISSIVE) is only ever `unauthenticated`.
    let web_pod = SocketAddr::new(IpAddr::V4(pod_ip(4)), APP_PORT);
    let plain = |path| request(&mesh, KUBELET, web_pod, "GET", path).map(|(s, _)| s);
    assert_eq!(plain("/healthz").unwrap(), 200);
    assert_eq!(plain("/").unwrap(), 403);
    // ...so web's deny rule does not stop client-0 calling in plaintext,
    // which a warning says (its allow rules admit `unauthenticated`: they
    // were written with plaintext callers in mind, nothing to say).
    let problems = mesh.debug_get("/debug/routing").unwrap();
    let problems: serde_json::Value = serde_json::from_str(&problems.body).unwrap();
    let warnings: Vec<&serde_json::Value> = problems
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["severity"] == "warning")
        .collect();
    assert_eq!(warnings.len(), 1, "{problems:#}");
    assert_eq!(warnings[0]["object"], "Service shop/web");
    assert_eq!(warnings[0]["annotation"], DENY);
    assert!(
        warnings[0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("pods behind this Service accept plaintext")),
        "{problems:#}"
    );
    // `meshd proxy-config`'s source says who may call web, as written.
    let config = mesh
        .debug_get(&format!("/debug/xds/proxies/{WEB}.{NS}/config"))
        .unwrap();
    let config: serde_json::Value = serde_json::from_str(&config.body).unwrap();
    let shown = &config["authorization"];
    assert_eq!(shown["undeclared_ports"], "closed", "{shown:#}");
    assert_eq!(
        shown["services"],
        serde_json::json!([{
            "service": "shop/web",
            "mode": "enforce",
            "default": "deny-all",
            "allow": [
                "shop/client-0",
                "shop/other-0 GET /public/*",
                "unauthenticated GET /healthz"
            ],
            "deny": ["shop/client-0 /admin/*"],
        }])
    );
    // TCP: the connection is closed, nothing echoed.
    let tcp = wait_for("db to close denied connections", WAIT, || {
        match echo(&mesh, CLIENT) {
            Err(e) => Ok(Some(e)),
            Ok(got) => Err(format!("echoed {got:?}")),
        }
    });
    tcp.unwrap_or_else(|e| panic!("{e:#}\n{}", mesh.logs()));
    // web's policy denies what it does not allow: its undeclared port too
    // (there is no identity to allow there: the connection is not mTLS),
    // for a meshed caller its policy allows and for a plaintext one.
    for pod in [CLIENT, KUBELET] {
        assert!(undeclared(&mesh, pod).is_err(), "{pod}");
    }
    assert!(
        stat(&mesh.admin(WEB, "/stats"), UNDECLARED_DENIED) >= 2,
        "undeclared ports' denials are counted"
    );
    // Each HTTP request the policy denied is a line on web's proxy's
    // stdout naming both identities, access logs off: batch-0 (refused by
    // allow-same-namespace, then by deny-all) among the callers.
    let denied = wait_for("web's denial log lines", WAIT, || {
        let lines: Vec<serde_json::Value> = mesh
            .access_log(WEB)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|l| l["authorization"] == "denied")
            .collect();
        // The request with a query string, among batch-0's.
        let from_batch = lines.iter().any(|l| {
            l["path"] == "/orders"
                && l["caller_identity"]
                    .as_str()
                    .is_some_and(|c| c.contains("/ns/batch/"))
        });
        match from_batch {
            true => Ok(Some(lines)),
            false => Err(format!(
                "{} lines, none from batch for /orders",
                lines.len()
            )),
        }
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", mesh.access_log(WEB)));
    // A plaintext caller (the kubelet's GET / above) has no identity, and
    // its line names neither side's.
    assert!(
        denied.iter().all(|l| l["response_code"] == 403
            && match l["caller_identity"].as_str() {
                Some(_) => l["workload_identity"]
                    .as_str()
                    .is_some_and(|w| w.contains("/sa/web")),
                None => l["workload_identity"].is_null(),
            }),
        "{denied:#?}"
    );
    // The path, never its query string: the line is written with access
    // logs off, and a query may carry a token.
    assert!(!mesh.access_log(WEB).contains("t0ps3cret"), "{denied:#?}");
    // The kubelet's probe through the proxy's probe port still passes.
    let probe_addr = SocketAddr::new(IpAddr::V4(pod_ip(4)), 15021);
    let probe = mesh
        .pod(KUBELET)
        .run(|| http::get(probe_addr, &probe_addr.to_string(), PROBE_PATH, false))
        .unwrap()
        .unwrap();
    assert_eq!(probe.status, 200, "{}", probe.body);
    assert!(probe.body.starts_with(&format!("hello from {WEB}")));
    // Counted per destination: web's proxy counted its denials.
    let stats = mesh.admin(WEB, "/stats");
    assert!(
        stat(&stats, "http.inbound_8080_mtls.rbac.denied") >= 5,
        "{stats}"
    );
    let db_stats = mesh.admin(DB, "/stats");
    assert!(
        stat(&db_stats, "inbound_5432_mtls.rbac.denied") >= 1,
        "{db_stats}"
    );
    // Per caller identity and port, as Prometheus scrapes them: batch-0
    // was refused by web, client-0 by db (since the last policy switch:
    // these counters start again with each new inbound listener).
    let web_scrape = mesh.scrape(WEB).unwrap();
    assert!(
        caller_count(
            &web_scrape,
            "envoy_authorization_denied",
            WEB,
            "/ns/batch/sa/batch-0",
            8080
        ) >= 1,
        "{web_scrape}"
    );
    let db_scrape = mesh.scrape(DB).unwrap();
    assert!(
        caller_count(
            &db_scrape,
            "envoy_authorization_denied",
            DB,
            "/ns/shop/sa/client-0",
            DB_PORT
        ) >= 1,
        "{db_scrape}"
    );
    // ...and logged, at the connection's close, with both identities.
    let tcp_denied = wait_for("db's denial log line", WAIT, || {
        let line = mesh
            .access_log(DB)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|l| l["authorization"] == "denied");
        Ok::<_, String>(line)
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", mesh.access_log(DB)));
    assert_eq!(tcp_denied["protocol"], "tcp", "{tcp_denied}");
    assert_eq!(tcp_denied["port"], DB_PORT, "{tcp_denied}");
    assert!(
        tcp_denied["caller_identity"]
            .as_str()
            .is_some_and(|c| c.ends_with("/ns/shop/sa/client-0"))
            && tcp_denied["workload_identity"]
                .as_str()
                .is_some_and(|w| w.ends_with("/sa/db-0")),
        "{tcp_denied}"
    );

    // Dry-run of the same policy: nothing is blocked, and the would-deny
    // counter grows by exactly the requests the policy would deny.
    let mut dry_run = web_policy.to_vec();
    dry_run.push((AUTHORIZATION_MODE, "dry-run"));
    let text = registry_text(&dry_run, &[]);
    switch(&mut mesh, &text, (OTHER, "GET", "/", 200));
    let before = stat(&mesh.admin(WEB, "/stats"), WOULD_DENY);
    let by_caller_before = would_deny_by_caller(&mesh);
    let mut would_deny = 0;
    for (pod, method, path, denied) in [
        (CLIENT, "GET", "/", false),
        (CLIENT, "GET", "/admin/users", true),
        (OTHER, "GET", "/public/a", false),
        (OTHER, "GET", "/", true),
        (OTHER, "POST", "/public/a", true),
        (BATCH, "GET", "/", true),
        (BATCH, "GET", "/", true),
    ] {
        assert_eq!(web(&mesh, pod, method, path), 200, "{pod} {method} {path}");
        would_deny += u64::from(denied);
    }
    assert_eq!(echo(&mesh, CLIENT).unwrap(), b"ping", "db's policy is gone");
    // In dry-run the undeclared port is open and each connection counted.
    let counted = stat(&mesh.admin(WEB, "/stats"), UNDECLARED_WOULD_DENY);
    assert_eq!(undeclared(&mesh, KUBELET).unwrap(), GREETING);
    assert_eq!(
        stat(&mesh.admin(WEB, "/stats"), UNDECLARED_WOULD_DENY) - counted,
        1,
        "undeclared ports' would-deny count"
    );
    let after = stat(&mesh.admin(WEB, "/stats"), WOULD_DENY);
    assert_eq!(after - before, would_deny);
    // Counted per caller too, each exactly: client-0 once, other-0 and
    // batch-0 twice.
    let by_caller = would_deny_by_caller(&mesh);
    for (caller, expected) in [("client-0", 1), ("other-0", 2), ("batch-0", 2)] {
        let grew = by_caller.get(caller).copied().unwrap_or(0)
            - by_caller_before.get(caller).copied().unwrap_or(0);
        assert_eq!(grew, expected, "{caller}: {by_caller:?}");
    }
    // And each of them is a line on web's proxy's stdout naming the caller
    // (access logs are off: this log is the dry-run's own), as is the one
    // request of `switch` that found the dry-run in force (other-0's GET /,
    // which the policy denies). Envoy writes its logs out every second or
    // so: wait for them, then count.
    let would_deny = would_deny + 1;
    let would_deny_lines = |mesh: &TestMesh| -> Vec<serde_json::Value> {
        mesh.access_log(WEB)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|l| l["authorization"] == "dry-run: would deny")
            .collect()
    };
    let lines = wait_for("web's would-deny log lines", WAIT, || {
        let lines = would_deny_lines(&mesh);
        match lines.len() as u64 {
            n if n >= would_deny => Ok(Some(lines)),
            n => Err(format!("{n} of {would_deny} lines")),
        }
    })
    .unwrap();
    assert_eq!(lines.len() as u64, would_deny, "{lines:#?}");
    let callers: Vec<&str> = lines
        .iter()
        .map(|l| l["caller_identity"].as_str().unwrap_or_default())
        .collect();
    for pod in ["client", "other", "batch"] {
        assert!(
            callers.iter().any(|c| c.contains(&format!("/sa/{pod}"))),
            "{pod} in {callers:?}"
        );
    }
    assert!(
        lines.iter().all(|l| l["workload_identity"]
            .as_str()
            .unwrap_or_default()
            .contains("/sa/web")),
        "{lines:#?}"
    );
}
