//! End-to-end tracing with real Envoy in network namespaces: a request
//! goes from the client's app through both sidecars to web's app, and
//! both proxies report their spans over OTLP/gRPC to a collector the test
//! serves on the hub.
//!
//! ```text
//! client-0 app ──> client-0 Envoy (outbound span) ──mTLS + traceparent──> web-0 Envoy (inbound span) ──traceparent──> web-0 app
//!                        │                                                     │
//!                        └──────────── OTLP/gRPC ──> test collector (198.18.0.1:4317) <──┘
//! ```
//!
//! The mesh traces none of its requests (0 %); the client asks for all of
//! them with `meshd.io/tracing-sampling: "100"`, so its span proves the
//! annotation. Web keeps the mesh's 0 %: its span proves that a proxy
//! continuing a trace follows the caller's decision (the `traceparent`
//! sampled flag), not its own percentage.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use meshd_api::annotations::pod::{SamplingPercent, TRACING_SAMPLING};
use meshd_controlplane::identity::IdentityConfig;
use meshd_tests::envoy::wait_for;
use meshd_tests::http::Connection;
use meshd_tests::mesh::{Extras, PodSpec, TestMesh, pod_ip};
use meshd_tests::otlp::{Collector, ReceivedSpan, SpanKind, hex};
use meshd_tests::registry;

const NS: &str = "e2e";
const CLIENT: &str = "client-0";
const WEB: &str = "web-0";
const WEB_VIP: &str = "198.19.0.20";
const APP_PORT: u16 = 8080;
const WAIT: Duration = Duration::from_secs(60);

const PODS: [PodSpec<'static>; 2] = [
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
];

fn registry_text() -> String {
    let ip = |host| IpAddr::V4(pod_ip(host));
    let all = [(TRACING_SAMPLING, "\"100\"")];
    registry::documents(&[
        registry::namespace(NS),
        registry::http_service(NS, "web", WEB_VIP, 80),
        registry::slice(NS, "web-1", "web", APP_PORT, &[(WEB, ip(3))]),
        registry::pod_with(NS, CLIENT, ip(2), true, &all),
        registry::pod(NS, WEB, ip(3), true),
    ])
}

/// One request from the client app to web's VIP: the status and the
/// request headers web's app saw (the app echoes them).
fn request(mesh: &TestMesh, path: &str) -> (u16, BTreeMap<String, String>) {
    let addr: SocketAddr = format!("{WEB_VIP}:80").parse().unwrap();
    let response = mesh
        .pod(CLIENT)
        .run(|| Connection::new(addr).get("web", path, &[]))
        .unwrap();
    let Ok(response) = response else {
        return (0, BTreeMap::new());
    };
    let seen = response
        .body
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (response.status, seen)
}

#[test]
fn both_proxies_report_spans_and_the_servers_is_a_child_of_the_clients() {
    let extras = Extras {
        tracing: Some(SamplingPercent::parse("0").unwrap()),
        ..Extras::default()
    };
    let Some(mut mesh) = TestMesh::start_with(
        NS,
        &PODS,
        &registry_text(),
        IdentityConfig::default(),
        extras,
    ) else {
        return;
    };
    let listener = mesh.tracing_collector.take().expect("a collector listener");
    let (collector, _collector_runtime) = Collector::serve(listener).unwrap();

    let ready = wait_for("web to answer through the mesh", WAIT, || {
        match request(&mesh, "/") {
            (200, _) => Ok(Some(())),
            (other, _) => Err(format!("HTTP {other}")),
        }
    });
    if let Err(e) = ready {
        panic!("{e:#}\n{}", mesh.logs());
    }

    // The request this test follows: its trace is the one web's app was
    // handed in `traceparent` (version-trace id-parent id-flags).
    let (status, seen) = request(&mesh, "/traced");
    assert_eq!(status, 200);
    let traceparent = seen
        .get("traceparent")
        .unwrap_or_else(|| panic!("web's app saw no traceparent: {seen:?}"));
    let parts: Vec<&str> = traceparent.split('-').collect();
    let [version, trace_id, app_parent, flags] = parts.as_slice() else {
        panic!("traceparent {traceparent}")
    };
    assert_eq!((*version, *flags), ("00", "01"), "{traceparent}: sampled");
    assert!(
        seen.contains_key("x-request-id"),
        "web's app saw no x-request-id: {seen:?}"
    );

    // Envoy sends its spans in batches: wait until both proxies' spans of
    // this trace have arrived.
    let trace: Vec<ReceivedSpan> = wait_for("both proxies' spans at the collector", WAIT, || {
        let spans = collector.spans();
        let trace: Vec<ReceivedSpan> = spans
            .iter()
            .filter(|s| hex(&s.trace_id) == *trace_id)
            .cloned()
            .collect();
        let services: Vec<&str> = trace.iter().map(|s| s.service.as_str()).collect();
        if services.contains(&CLIENT) && services.contains(&WEB) {
            Ok(Some(trace))
        } else {
            Err(format!(
                "{} spans received, of this trace from {services:?}",
                spans.len()
            ))
        }
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", mesh.logs()));

    let one = |service: &str| {
        let of: Vec<&ReceivedSpan> = trace.iter().filter(|s| s.service == service).collect();
        assert_eq!(of.len(), 1, "{service}: {trace:#?}");
        of[0].clone()
    };
    let (client, server) = (one(CLIENT), one(WEB));
    // The client's proxy started the trace, calling out; the server's
    // proxy continued it from the traceparent it was sent.
    assert_eq!(client.kind, SpanKind::Client, "{client:?}");
    assert!(client.parent_span_id.is_empty(), "{client:?}");
    assert_eq!(server.kind, SpanKind::Server, "{server:?}");
    assert_eq!(
        hex(&server.parent_span_id),
        hex(&client.span_id),
        "the server's span is the client's child"
    );
    // And web's app was handed the server span as its parent, so the
    // app's own calls would join the trace if it forwards the headers.
    assert_eq!(*app_parent, hex(&server.span_id));
}
