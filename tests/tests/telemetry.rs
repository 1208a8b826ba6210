//! End-to-end telemetry with real Envoy in network namespaces: known
//! traffic goes through the mesh, then each sidecar's Prometheus endpoint
//! (15090) is scraped and its access log read.
//!
//! ```text
//! client-0 (198.18.0.2) ──mTLS──> web-0 (198.18.0.3): app answering 200, or 503 for /status/503
//!   app calls web (VIP) 3×200, 2×503
//!                        ──mTLS──> web-0's gRPC app on 7070 (Service rpc)
//!   app calls rpc (VIP) 3× Echo, gRPC OK
//!                        ──mTLS──> db-0 (198.18.0.4): TCP echo on 5432
//!   app calls db (VIP) once, TCP
//! ```
//!
//! Counters are read before and after the traffic, so what the mesh
//! did while starting (readiness requests) does not count.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use meshd_api::annotations::pod::ACCESS_LOG;
use meshd_controlplane::identity::IdentityConfig;
use meshd_tests::envoy::wait_for;
use meshd_tests::grpc_echo::{self, GrpcEcho};
use meshd_tests::http::Connection;
use meshd_tests::mesh::{PodSpec, TestMesh, pod_ip};
use meshd_tests::registry;

const NS: &str = "e2e";
const CLIENT: &str = "client-0";
const WEB: &str = "web-0";
const DB: &str = "db-0";
const WEB_VIP: &str = "198.19.0.20";
const DB_VIP: &str = "198.19.0.21";
const RPC_VIP: &str = "198.19.0.22";
/// web-0's gRPC app, behind the Service rpc (same port).
const RPC_PORT: u16 = 7070;
const APP_PORT: u16 = 8080;
const DB_PORT: u16 = 5432;
const WAIT: Duration = Duration::from_secs(30);

const PODS: [PodSpec<'static>; 3] = [
    PodSpec {
        name: CLIENT,
        host: 2,
        app_port: None,
    },
    PodSpec {
        name: WEB,
        host: 3,
        app_port: Some(APP_PORT),
    },
    PodSpec {
        name: DB,
        host: 4,
        app_port: None,
    },
];

fn registry_text() -> String {
    let ip = |host| IpAddr::V4(pod_ip(host));
    let logs = [(ACCESS_LOG, "\"true\"")];
    let db = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: db, namespace: {NS}}}\nspec: {{clusterIP: {DB_VIP}, ports: [{{name: tcp-echo, port: {DB_PORT}}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: db-1, namespace: {NS}, labels: {{kubernetes.io/service-name: db}}}}\naddressType: IPv4\nports: [{{name: tcp-echo, port: {DB_PORT}}}]\nendpoints: [{{addresses: [\"{}\"], targetRef: {{kind: Pod, name: {DB}}}}}]\n",
        ip(4)
    );
    let rpc = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: rpc, namespace: {NS}}}\nspec: {{clusterIP: {RPC_VIP}, ports: [{{name: grpc, port: {RPC_PORT}}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: rpc-1, namespace: {NS}, labels: {{kubernetes.io/service-name: rpc}}}}\naddressType: IPv4\nports: [{{name: grpc, port: {RPC_PORT}}}]\nendpoints: [{{addresses: [\"{}\"], targetRef: {{kind: Pod, name: {WEB}}}}}]\n",
        ip(3)
    );
    registry::documents(&[
        registry::namespace(NS),
        rpc,
        registry::http_service(NS, "web", WEB_VIP, 80),
        registry::slice(NS, "web-1", "web", APP_PORT, &[(WEB, ip(3))]),
        db,
        registry::pod_with(NS, CLIENT, ip(2), true, &logs),
        registry::pod_with(NS, WEB, ip(3), true, &logs),
        registry::pod(NS, DB, ip(4), true),
    ])
}

/// A metric's expected increase on a pod's sidecar: (pod, metric, labels,
/// increase, whether at least rather than exactly).
type Expectation = (
    &'static str,
    &'static str,
    Vec<(&'static str, &'static str)>,
    f64,
    bool,
);

/// One sample of a Prometheus text exposition.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses Envoy's `/stats/prometheus` (label values hold no `"` or `,`
/// here: names of clusters, prefixes and SPIFFE IDs).
fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|p| !p.is_empty())
                .filter_map(|pair| {
                    let (k, v) = pair.split_once("=\"")?;
                    Some((k.to_string(), v.trim_end_matches('"').to_string()))
                })
                .collect();
            Some(Sample {
                name: name.to_string(),
                labels,
                value: value.parse().ok()?,
            })
        })
        .collect()
}

/// The sum of metric `name` over the series carrying all of `labels`.
fn sum(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
        })
        .map(|s| s.value)
        .sum()
}

/// `n` requests for `path` from the client app to web's VIP; their statuses.
fn send(mesh: &TestMesh, path: &str, n: u32) -> Vec<u16> {
    let addr: SocketAddr = format!("{WEB_VIP}:80").parse().unwrap();
    mesh.pod(CLIENT)
        .run(|| {
            let mut connection = Connection::new(addr);
            (0..n)
                .map(|_| connection.get("web", path, &[]).map_or(0, |r| r.status))
                .collect()
        })
        .unwrap()
}

/// `n` unary gRPC calls from the client app to rpc's VIP, on one HTTP/2
/// connection; how many were answered OK.
fn call_rpc(mesh: &TestMesh, n: usize) -> anyhow::Result<usize> {
    let addr: SocketAddr = format!("{RPC_VIP}:{RPC_PORT}").parse().unwrap();
    let answers = mesh
        .pod(CLIENT)
        .run(|| grpc_echo::call(addr, "rpc", &[], n))??;
    Ok(answers.iter().filter(|a| a.is_ok()).count())
}

/// One TCP exchange with db's echo server through both sidecars.
fn echo(mesh: &TestMesh) -> anyhow::Result<Vec<u8>> {
    let addr: SocketAddr = format!("{DB_VIP}:{DB_PORT}").parse().unwrap();
    mesh.pod(CLIENT).run(|| {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(b"ping")?;
        let mut got = [0u8; 4];
        stream.read_exact(&mut got)?;
        Ok(got.to_vec())
    })?
}

#[test]
fn sidecars_export_request_and_tcp_metrics_with_the_mesh_labels_and_log_json() {
    let Some(mut mesh) = TestMesh::start(NS, &PODS, &registry_text(), IdentityConfig::default())
    else {
        return;
    };
    // db's app: an echo server in its pod, one connection at a time.
    let listener = mesh
        .pod(DB)
        .run(|| TcpListener::bind(("0.0.0.0", DB_PORT)))
        .unwrap()
        .unwrap();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut buf = [0u8; 64];
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 || stream.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    });
    // web's gRPC app, beside its HTTP one.
    let grpc_listener = mesh
        .pod(WEB)
        .run(|| TcpListener::bind(("0.0.0.0", RPC_PORT)))
        .unwrap()
        .unwrap();
    GrpcEcho::serve(WEB, NS, grpc_listener).unwrap();
    let ready = wait_for("web and rpc to answer through the mesh", WAIT, || {
        match (send(&mesh, "/", 1).as_slice(), call_rpc(&mesh, 1)) {
            ([200], Ok(1)) => Ok(Some(())),
            (http, grpc) => Err(format!("HTTP {http:?}, gRPC {grpc:?}")),
        }
    });
    if let Err(e) = ready {
        panic!("{e:#}\n{}", mesh.logs());
    }
    let scrape = |pod: &str| parse(&mesh.scrape(pod).unwrap());
    let (client_before, web_before, db_before) = (scrape(CLIENT), scrape(WEB), scrape(DB));

    // The known traffic.
    assert_eq!(send(&mesh, "/", 3), [200, 200, 200]);
    assert_eq!(send(&mesh, "/status/503", 2), [503, 503]);
    assert_eq!(echo(&mesh).unwrap(), b"ping");
    assert_eq!(call_rpc(&mesh, 3).unwrap(), 3);

    let client_id = "spiffe://cluster.local/ns/e2e/sa/client-0";
    let to_web = [
        ("workload", CLIENT),
        ("workload_namespace", NS),
        ("workload_identity", client_id),
        ("direction", "outbound"),
        ("destination_service", "web"),
        ("destination_namespace", NS),
        ("destination_port", "80"),
        // Every endpoint of web takes mTLS, so every request did.
        ("connection_security", "mtls"),
    ];
    let to_db = [
        ("workload", CLIENT),
        ("direction", "outbound"),
        ("destination_service", "db"),
        ("destination_namespace", NS),
        ("destination_port", "5432"),
    ];
    let at_web = [
        ("workload", WEB),
        ("workload_namespace", NS),
        ("direction", "inbound"),
        ("destination_port", "8080"),
    ];
    // gRPC: the same request metrics, its own port and service.
    let to_rpc = [
        ("workload", CLIENT),
        ("direction", "outbound"),
        ("destination_service", "rpc"),
        ("destination_namespace", NS),
        ("destination_port", "7070"),
        ("connection_security", "mtls"),
    ];
    let at_rpc = [
        ("workload", WEB),
        ("direction", "inbound"),
        ("destination_port", "7070"),
        ("connection_security", "mtls"),
    ];
    let at_db = [
        ("workload", DB),
        ("direction", "inbound"),
        ("destination_port", "5432"),
    ];
    let with = |base: &[(&'static str, &'static str)], more: &[(&'static str, &'static str)]| {
        let mut all = base.to_vec();
        all.extend_from_slice(more);
        all
    };
    // The TCP proxy's series are named by its listener's stat prefix, the
    // cluster's own name: the cluster's series carry the security.
    let to_db_cluster = with(&to_db, &[("connection_security", "mtls")]);
    let web_from_client = [
        ("workload", WEB),
        ("workload_namespace", NS),
        ("caller_identity", client_id),
        ("destination_port", "8080"),
    ];
    let db_from_client = [
        ("workload", DB),
        ("workload_namespace", NS),
        ("caller_identity", client_id),
        ("destination_port", "5432"),
    ];
    let rpc_from_client = [
        ("workload", WEB),
        ("caller_identity", client_id),
        ("destination_port", "7070"),
    ];
    // (pod, metric, labels, the increase expected, at least rather than exactly)
    let expectations: Vec<Expectation> = vec![
        // gRPC calls are HTTP/2 requests, counted on both sides (HTTP
        // status 200; grpc-status is not a label).
        (
            CLIENT,
            "envoy_cluster_upstream_rq",
            with(&to_rpc, &[("envoy_response_code", "200")]),
            3.0,
            false,
        ),
        (
            CLIENT,
            "envoy_cluster_upstream_rq_time_count",
            to_rpc.to_vec(),
            3.0,
            true,
        ),
        (
            WEB,
            "envoy_http_downstream_rq_xx",
            with(&at_rpc, &[("envoy_response_code_class", "2")]),
            3.0,
            false,
        ),
        (
            WEB,
            "envoy_inbound_by_caller_requests",
            with(&rpc_from_client, &[("envoy_response_code", "200")]),
            3.0,
            false,
        ),
        // Outbound, per response code, with the caller named.
        (
            CLIENT,
            "envoy_cluster_upstream_rq",
            with(&to_web, &[("envoy_response_code", "200")]),
            3.0,
            false,
        ),
        (
            CLIENT,
            "envoy_cluster_upstream_rq",
            with(&to_web, &[("envoy_response_code", "503")]),
            2.0,
            false,
        ),
        (
            CLIENT,
            "envoy_cluster_upstream_rq_xx",
            with(&to_web, &[("envoy_response_code_class", "5")]),
            2.0,
            false,
        ),
        // Durations and sizes: histograms, each request observed once. At
        // least: Envoy publishes histograms at its stats flush, so the
        // readiness request may land after the first scrape.
        (
            CLIENT,
            "envoy_cluster_upstream_rq_time_count",
            to_web.to_vec(),
            5.0,
            true,
        ),
        (
            CLIENT,
            "envoy_cluster_upstream_rq_headers_size_count",
            to_web.to_vec(),
            5.0,
            true,
        ),
        (
            CLIENT,
            "envoy_cluster_upstream_rs_body_size_count",
            to_web.to_vec(),
            5.0,
            true,
        ),
        // Inbound: the server's side, over mTLS.
        (
            WEB,
            "envoy_http_downstream_rq_xx",
            with(
                &at_web,
                &[
                    ("connection_security", "mtls"),
                    ("envoy_response_code_class", "2"),
                ],
            ),
            3.0,
            false,
        ),
        (
            WEB,
            "envoy_http_downstream_rq_xx",
            with(
                &at_web,
                &[
                    ("connection_security", "mtls"),
                    ("envoy_response_code_class", "5"),
                ],
            ),
            2.0,
            false,
        ),
        (
            WEB,
            "envoy_http_downstream_rq_time_count",
            with(&at_web, &[("connection_security", "mtls")]),
            5.0,
            true,
        ),
        (
            WEB,
            "envoy_cluster_upstream_rq",
            with(&at_web, &[("envoy_response_code", "503")]),
            2.0,
            false,
        ),
        // The serving side names its caller: by the SPIFFE ID client-0's
        // certificate proved.
        (
            WEB,
            "envoy_inbound_by_caller_requests",
            with(&web_from_client, &[("envoy_response_code", "200")]),
            3.0,
            false,
        ),
        (
            WEB,
            "envoy_inbound_by_caller_requests",
            with(&web_from_client, &[("envoy_response_code", "503")]),
            2.0,
            false,
        ),
        (
            WEB,
            "envoy_inbound_by_caller_request_duration_count",
            web_from_client.to_vec(),
            5.0,
            true,
        ),
        (
            DB,
            "envoy_inbound_by_caller_connections",
            db_from_client.to_vec(),
            1.0,
            false,
        ),
        (
            DB,
            "envoy_inbound_by_caller_received_bytes",
            db_from_client.to_vec(),
            4.0,
            false,
        ),
        (
            DB,
            "envoy_inbound_by_caller_sent_bytes",
            db_from_client.to_vec(),
            4.0,
            false,
        ),
        // Nothing came in plaintext.
        (
            WEB,
            "envoy_http_downstream_rq_xx",
            with(&at_web, &[("connection_security", "plaintext")]),
            0.0,
            false,
        ),
        // TCP: one connection opened and closed, the bytes both ways.
        (
            CLIENT,
            "envoy_cluster_upstream_cx_total",
            to_db_cluster.clone(),
            1.0,
            false,
        ),
        (
            CLIENT,
            "envoy_cluster_upstream_cx_destroy",
            to_db_cluster.clone(),
            1.0,
            false,
        ),
        (
            CLIENT,
            "envoy_cluster_upstream_cx_tx_bytes_total",
            to_db_cluster,
            4.0,
            true,
        ),
        (
            CLIENT,
            "envoy_tcp_downstream_cx_total",
            to_db.to_vec(),
            1.0,
            false,
        ),
        (
            CLIENT,
            "envoy_tcp_downstream_cx_rx_bytes_total",
            to_db.to_vec(),
            4.0,
            false,
        ),
        (
            CLIENT,
            "envoy_tcp_downstream_cx_tx_bytes_total",
            to_db.to_vec(),
            4.0,
            false,
        ),
        (
            DB,
            "envoy_tcp_downstream_cx_total",
            with(&at_db, &[("connection_security", "mtls")]),
            1.0,
            false,
        ),
        (
            DB,
            "envoy_cluster_upstream_cx_total",
            at_db.to_vec(),
            1.0,
            false,
        ),
    ];
    let before = |pod: &str| match pod {
        CLIENT => &client_before,
        WEB => &web_before,
        _ => &db_before,
    };
    // Histograms reach the Prometheus endpoint at Envoy's next stats flush,
    // and a TCP close after the client's: poll until every count is there.
    let settled = wait_for("the metrics of the traffic", WAIT, || {
        let now: BTreeMap<&str, Vec<Sample>> = [CLIENT, WEB, DB]
            .into_iter()
            .map(|p| (p, scrape(p)))
            .collect();
        let mut wrong = Vec::new();
        for (pod, metric, labels, expected, at_least) in &expectations {
            let got = sum(&now[pod], metric, labels) - sum(before(pod), metric, labels);
            let ok = if *at_least {
                got >= *expected
            } else {
                got == *expected
            };
            if !ok {
                wrong.push(format!(
                    "{pod} {metric} {labels:?}: {got}, expected {expected}"
                ));
            }
        }
        if wrong.is_empty() {
            Ok(Some(now))
        } else {
            Err(wrong.join("\n"))
        }
    });
    let now = match settled {
        Ok(now) => now,
        Err(e) => panic!("{e:#}\n{}", mesh.logs()),
    };
    // Bounded labels: no series names an endpoint or a pod IP.
    for (pod, samples) in &now {
        for s in samples {
            for value in s.labels.values() {
                assert!(
                    !value.contains("198.18.") && !value.contains("127.0.0.1"),
                    "{pod}: {} {:?}",
                    s.name,
                    s.labels
                );
            }
        }
    }
    // Left out by the stats matcher.
    assert!(
        now[CLIENT]
            .iter()
            .all(|s| !s.name.starts_with("envoy_cluster_circuit_breakers")),
    );

    // Access logs: JSON lines naming the caller's SPIFFE ID on the server.
    let lines = |pod: &str| -> Vec<serde_json::Value> {
        mesh.access_log(pod)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{pod}: {l}: {e}")))
            .collect()
    };
    let logged = wait_for("the access logs", WAIT, || {
        let web: Vec<_> = lines(WEB)
            .into_iter()
            .filter(|l| l["path"] == "/status/503")
            .collect();
        if web.len() == 2 {
            Ok(Some(web))
        } else {
            Err(format!("{web:?}"))
        }
    });
    let web_lines = match logged {
        Ok(lines) => lines,
        Err(e) => panic!("{e:#}\n{}", mesh.logs()),
    };
    for line in &web_lines {
        assert_eq!(line["caller_identity"], client_id, "{line}");
        assert_eq!(line["direction"], "inbound", "{line}");
        assert_eq!(line["response_code"], 503, "{line}");
        assert_eq!(line["method"], "GET", "{line}");
        assert!(line["request_id"].is_string(), "{line}");
        assert_eq!(line["upstream_cluster"], "inbound|8080||", "{line}");
    }
    // Envoy writes its access logs out in batches: wait for the lines.
    let outbound = wait_for("the client's access log", WAIT, || {
        let client: Vec<_> = lines(CLIENT)
            .into_iter()
            .filter(|l| l["path"] == "/status/503")
            .collect();
        if client.len() == 2 {
            Ok(Some(client))
        } else {
            Err(format!("{client:?}"))
        }
    })
    .unwrap();
    for line in &outbound {
        assert_eq!(line["direction"], "outbound", "{line}");
        assert_eq!(
            line["upstream_cluster"], "outbound|80||web.e2e.svc.cluster.local",
            "{line}"
        );
        assert_eq!(
            line["upstream_identity"], "spiffe://cluster.local/ns/e2e/sa/web-0",
            "{line}"
        );
    }
    // db-0 does not log: its pod does not ask, and the mesh's default is off.
    assert_eq!(mesh.access_log(DB), "");
}
