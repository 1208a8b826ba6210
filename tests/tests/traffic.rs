//! End-to-end routing: Kubernetes objects from YAML fixtures → the control
//! plane's model → real Envoy in network namespaces, proving with real
//! requests what routing annotations do: split weights, header and path
//! routes, a fault delay against a timeout, a fault abort against retries,
//! and an invalid annotation that leaves traffic as it was.
//!
//! ```text
//!                               ┌──> reviews-v1-0 (198.18.0.3): Envoy ──> app "reviews-v1-0"
//! client-0 (198.18.0.2) ──mTLS──┤
//!   app calls reviews (VIP)     └──> reviews-v2-0 (198.18.0.4): Envoy ──> app "reviews-v2-0"
//! ```
//!
//! `reviews` selects both pods (as a Deployment's Service selects every
//! version); `reviews-v1` and `reviews-v2` one each. The tests annotate
//! `reviews`, start the mesh, and count which app answered each request
//! (its `X-Served-By`) and with what status.
//!
//! Counts are random (Envoy draws each weighted pick and each fault): the
//! tolerances are 5 binomial standard deviations, sqrt(n·p·(1-p)), around
//! n·p, so a correct mesh fails one run in about 1.7 million per check,
//! while the wrong behaviours they guard against (no split, 50/50 round
//! robin, no retries) fall far outside.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use meshd_controlplane::identity::IdentityConfig;
use meshd_tests::envoy::{stat, wait_for};
use meshd_tests::http::Connection;
use meshd_tests::mesh::{PodSpec, TestMesh, pod_ip};
use meshd_tests::registry;

const NS: &str = "e2e";
const APP_PORT: u16 = 8080;
const REVIEWS_VIP: &str = "198.19.0.10";
const V1_VIP: &str = "198.19.0.11";
const V2_VIP: &str = "198.19.0.12";
const CLIENT: &str = "client-0";
const V1: &str = "reviews-v1-0";
const V2: &str = "reviews-v2-0";
const WAIT: Duration = Duration::from_secs(30);

const PODS: [PodSpec<'static>; 3] = [
    PodSpec {
        name: CLIENT,
        host: 2,
        app_port: None,
    },
    PodSpec {
        name: V1,
        host: 3,
        app_port: Some(APP_PORT),
    },
    PodSpec {
        name: V2,
        host: 4,
        app_port: Some(APP_PORT),
    },
];

/// The fixture: namespace, the three services, their EndpointSlices and
/// the pods, with `reviews_annotations` on `reviews`.
fn registry_text(reviews_annotations: &[(&str, &str)]) -> String {
    let ip = |host| IpAddr::V4(pod_ip(host));
    let (v1, v2) = ((V1, ip(3)), (V2, ip(4)));
    registry::documents(&[
        registry::namespace(NS),
        registry::http_service_with(NS, "reviews", REVIEWS_VIP, 80, reviews_annotations),
        registry::http_service(NS, "reviews-v1", V1_VIP, 80),
        registry::http_service(NS, "reviews-v2", V2_VIP, 80),
        registry::slice(NS, "reviews-1", "reviews", APP_PORT, &[v1, v2]),
        registry::slice(NS, "reviews-v1-1", "reviews-v1", APP_PORT, &[v1]),
        registry::slice(NS, "reviews-v2-1", "reviews-v2", APP_PORT, &[v2]),
        registry::pod(NS, CLIENT, ip(2), true),
        registry::pod(NS, V1, ip(3), true),
        registry::pod(NS, V2, ip(4), true),
    ])
}

/// What a batch of requests got.
#[derive(Debug, Default)]
struct Tally {
    /// Answers by the app that served them (`X-Served-By`); Envoy's own
    /// answers (faults, timeouts) have none.
    served_by: BTreeMap<String, u32>,
    status: BTreeMap<u16, u32>,
    /// Requests that got no HTTP answer at all.
    errors: Vec<String>,
}

impl Tally {
    fn served_by(&self, app: &str) -> u32 {
        self.served_by.get(app).copied().unwrap_or(0)
    }

    fn status(&self, status: u16) -> u32 {
        self.status.get(&status).copied().unwrap_or(0)
    }
}

/// `n` requests from the client app to `host` (called by its VIP, as an
/// app unaware of the mesh does), on one keep-alive connection.
fn send(
    mesh: &TestMesh,
    vip: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    n: u32,
) -> Tally {
    let addr: SocketAddr = format!("{vip}:80").parse().unwrap();
    mesh.pod(CLIENT)
        .run(|| {
            let mut connection = Connection::new(addr);
            let mut tally = Tally::default();
            for _ in 0..n {
                match connection.get(host, path, headers) {
                    Ok(r) => {
                        *tally.status.entry(r.status).or_default() += 1;
                        if let Some(app) = r.header("x-served-by") {
                            *tally.served_by.entry(app.to_string()).or_default() += 1;
                        }
                    }
                    Err(e) => tally.errors.push(format!("{e:#}")),
                }
            }
            tally
        })
        .unwrap()
}

/// Starts the mesh with `reviews_annotations` and waits until both pods
/// serve through the mesh (by their own services, which carry no
/// annotations): from then on every proxy has its configuration.
fn start(reviews_annotations: &[(&str, &str)]) -> Option<TestMesh> {
    let mut mesh = TestMesh::start(
        NS,
        &PODS,
        &registry_text(reviews_annotations),
        IdentityConfig::default(),
    )?;
    for (vip, host, app) in [(V1_VIP, "reviews-v1", V1), (V2_VIP, "reviews-v2", V2)] {
        let ready = wait_for(&format!("{app} to serve through the mesh"), WAIT, || {
            let t = send(&mesh, vip, host, "/", &[], 1);
            if t.served_by(app) == 1 {
                Ok(Some(()))
            } else {
                Err(format!("{t:?}"))
            }
        });
        if let Err(e) = ready {
            panic!("{e:#}\n{}", mesh.logs());
        }
    }
    Some(mesh)
}

/// `n·p ± 5·sqrt(n·p·(1-p))`, the range a binomial count falls in but for
/// about one run in 1.7 million.
fn binomial_range(n: u32, p: f64) -> std::ops::RangeInclusive<u32> {
    let n = f64::from(n);
    let mean = n * p;
    let tolerance = 5.0 * (n * p * (1.0 - p)).sqrt();
    let low = (mean - tolerance).floor().max(0.0);
    let high = (mean + tolerance).ceil().min(n);
    // Both bounds lie in 0..=n, so the conversions are exact.
    (low as u32)..=(high as u32)
}

/// Waits until the client's proxy has a route configuration containing
/// `needle` (e.g. `"num_retries": 3`), or no longer does (`present` false).
fn wait_for_client_routes(mesh: &mut TestMesh, needle: &str, present: bool) {
    let seen = wait_for(&format!("the client's routes ({needle})"), WAIT, || {
        let dump = mesh.admin(CLIENT, "/config_dump?resource=dynamic_route_configs");
        if dump.contains(needle) == present {
            Ok(Some(()))
        } else {
            Err(format!("{needle} present: {}", !present))
        }
    });
    if let Err(e) = seen {
        panic!("{e:#}\n{}", mesh.logs());
    }
}

/// A fault-filter counter summed over both reviews pods.
fn faults_injected(mesh: &TestMesh, counter: &str) -> u64 {
    // The callers come over mTLS: the inbound chain of mTLS connections.
    let name = format!("http.inbound_{APP_PORT}_mtls.fault.{counter}");
    [V1, V2]
        .iter()
        .map(|pod| stat(&mesh.admin(pod, "/stats?filter=fault"), &name))
        .sum()
}

#[test]
fn a_traffic_split_sends_each_backend_its_weight() {
    let Some(mesh) = start(&[("meshd.io/traffic-split", "reviews-v1=80,reviews-v2=20")]) else {
        return;
    };
    const N: u32 = 1000;
    let tally = send(&mesh, REVIEWS_VIP, "reviews", "/", &[], N);
    println!("split 80/20 over {N} requests: {tally:?}");
    assert!(tally.errors.is_empty(), "{:?}", tally.errors);
    assert_eq!(tally.status(200), N, "{tally:?}");
    // 20% to v2: 200 ± 5·sqrt(1000·0.2·0.8) = 200 ± 63.2, so 136..=264;
    // the rest to v1. Round robin over reviews' two pods would give ~500.
    let v2 = binomial_range(N, 0.2);
    assert_eq!(v2, 136..=264);
    assert!(v2.contains(&tally.served_by(V2)), "{tally:?}");
    assert_eq!(tally.served_by(V1) + tally.served_by(V2), N, "{tally:?}");
}

#[test]
fn header_and_path_routes_pick_their_backend_and_the_rest_takes_the_default() {
    let routes = r#"[{"headers":{"end-user":"jason"},"backend":"reviews-v2"},{"pathPrefix":"/canary","backend":"reviews-v2"}]"#;
    let Some(mesh) = start(&[
        ("meshd.io/routes", routes),
        ("meshd.io/traffic-split", "reviews-v1=100"),
    ]) else {
        return;
    };
    const N: u32 = 100;
    let jason = send(
        &mesh,
        REVIEWS_VIP,
        "reviews",
        "/",
        &[("end-user", "jason")],
        N,
    );
    assert_eq!(jason.served_by(V2), N, "{jason:?}");
    let canary = send(&mesh, REVIEWS_VIP, "reviews", "/canary/page", &[], N);
    assert_eq!(canary.served_by(V2), N, "{canary:?}");
    // Another user, and no header at all: the split (all to v1).
    let other = send(
        &mesh,
        REVIEWS_VIP,
        "reviews",
        "/",
        &[("end-user", "maria")],
        N,
    );
    assert_eq!(other.served_by(V1), N, "{other:?}");
    let plain = send(&mesh, REVIEWS_VIP, "reviews", "/", &[], N);
    assert_eq!(plain.served_by(V1), N, "{plain:?}");
}

#[test]
fn a_fault_delay_longer_than_the_timeout_is_a_504() {
    const DELAY: Duration = Duration::from_secs(2);
    let Some(mut mesh) = start(&[
        ("meshd.io/fault-delay", "2s@100"),
        ("meshd.io/timeout", "300ms"),
    ]) else {
        return;
    };
    // The serving proxies delay every request addressed to reviews by 2 s;
    // the client's router gives up after 300 ms.
    const N: u32 = 5;
    let tally = send(&mesh, REVIEWS_VIP, "reviews", "/", &[], N);
    println!("delay 2s, timeout 300ms: {tally:?}");
    assert_eq!(tally.status(504), N, "{tally:?}\n{}", mesh.logs());
    assert!(faults_injected(&mesh, "delays_injected") >= u64::from(N));

    // Calls to reviews-v1 by its own name are not reviews': no delay.
    let direct = send(&mesh, V1_VIP, "reviews-v1", "/", &[], N);
    assert_eq!(direct.served_by(V1), N, "{direct:?}");

    // Without the timeout, the same requests succeed, after the delay.
    let timeout = "\"timeout\": \"0.300s\"";
    wait_for_client_routes(&mut mesh, timeout, true);
    mesh.write_registry(&registry_text(&[("meshd.io/fault-delay", "2s@100")]));
    wait_for_client_routes(&mut mesh, timeout, false);
    for _ in 0..3 {
        let started = Instant::now();
        let tally = send(&mesh, REVIEWS_VIP, "reviews", "/", &[], 1);
        let took = started.elapsed();
        assert_eq!(tally.status(200), 1, "{tally:?}");
        // A lower bound, not a performance check: the delay was injected.
        // Envoy arms its timers from the event loop's cached clock, so one
        // may fire a millisecond or so before the full delay has passed.
        let slack = Duration::from_millis(20);
        assert!(
            took >= DELAY - slack,
            "answered in {took:?}, before the delay"
        );
    }
}

#[test]
fn retries_raise_the_success_rate_under_a_fault_abort() {
    let abort = ("meshd.io/fault-abort", "503@50");
    let Some(mut mesh) = start(&[abort]) else {
        return;
    };
    const N: u32 = 1000;
    let before = send(&mesh, REVIEWS_VIP, "reviews", "/", &[], N);
    println!("abort 503@50, no retries, {N} requests: {before:?}");
    assert!(before.errors.is_empty(), "{:?}", before.errors);
    assert_eq!(before.status(200) + before.status(503), N, "{before:?}");
    // Half fail: 500 ± 5·sqrt(1000·0.5·0.5) = 500 ± 79.1.
    let failures = binomial_range(N, 0.5);
    assert_eq!(failures, 420..=580);
    assert!(failures.contains(&before.status(503)), "{before:?}");

    // Three retries on 5xx: a request fails only when all 4 tries are
    // aborted, so success is 1 - 0.5^(3+1) = 93.75%:
    // 937.5 ± 5·sqrt(1000·0.9375·0.0625) = 937.5 ± 38.3.
    mesh.write_registry(&registry_text(&[
        abort,
        ("meshd.io/retries", "3"),
        ("meshd.io/retry-on", "5xx"),
    ]));
    wait_for_client_routes(&mut mesh, "\"num_retries\": 3", true);
    let retries_before = stat(
        &mesh.admin(CLIENT, "/stats?filter=upstream_rq_retry$"),
        "cluster.outbound|80|mtls|reviews.e2e.svc.cluster.local.upstream_rq_retry",
    );
    let after = send(&mesh, REVIEWS_VIP, "reviews", "/", &[], N);
    println!("abort 503@50, 3 retries, {N} requests: {after:?}");
    let successes = binomial_range(N, 1.0 - 0.5_f64.powi(4));
    assert_eq!(successes, 899..=976);
    assert!(successes.contains(&after.status(200)), "{after:?}");
    assert!(
        after.status(200) > before.status(200) + 250,
        "{before:?} / {after:?}"
    );
    // The client's proxy retried (about one retry per request: 0.5 + 0.25
    // + 0.125 on average).
    let retries = stat(
        &mesh.admin(CLIENT, "/stats?filter=upstream_rq_retry$"),
        "cluster.outbound|80|mtls|reviews.e2e.svc.cluster.local.upstream_rq_retry",
    ) - retries_before;
    assert!(retries >= u64::from(N) / 2, "{retries} retries");
    assert!(faults_injected(&mesh, "aborts_injected") >= u64::from(N));
}

#[test]
fn an_invalid_annotation_leaves_traffic_unchanged_and_is_reported() {
    let split = "meshd.io/traffic-split";
    let Some(mut mesh) = start(&[(split, "reviews-v2=100")]) else {
        return;
    };
    const N: u32 = 200;
    let before = send(&mesh, REVIEWS_VIP, "reviews", "/", &[], N);
    assert_eq!(before.served_by(V2), N, "{before:?}");

    // A weight that is not a number: rejected, reported, and reviews keeps
    // its last good routing (default routing would spread requests over
    // both of reviews' pods).
    mesh.write_registry(&registry_text(&[(split, "reviews-v1=50,reviews-v2=half")]));
    let reported = wait_for("the control plane to report the annotation", WAIT, || {
        let r = mesh
            .debug_get("/debug/routing")
            .map_err(|e| format!("{e:#}"))?;
        let errors: serde_json::Value =
            serde_json::from_str(&r.body).map_err(|e| format!("{e}: {}", r.body))?;
        let found = errors.as_array().into_iter().flatten().find(|e| {
            e["object"] == "Service e2e/reviews"
                && e["annotation"] == split
                && e["value"] == "reviews-v1=50,reviews-v2=half"
        });
        Ok(found.cloned())
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    println!("reported: {reported}");
    assert!(
        reported["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{reported}"
    );
    let during = send(&mesh, REVIEWS_VIP, "reviews", "/", &[], N);
    assert_eq!(during.served_by(V2), N, "{during:?}");

    // Fixed: the new split applies and the problem is gone.
    mesh.write_registry(&registry_text(&[(split, "reviews-v1=100")]));
    let switched = wait_for("the fixed split to apply", WAIT, || {
        let t = send(&mesh, REVIEWS_VIP, "reviews", "/", &[], 1);
        Ok((t.served_by(V1) == 1).then_some(()))
    });
    if let Err(e) = switched {
        panic!("{e:#}\n{}", mesh.logs());
    }
    let after = send(&mesh, REVIEWS_VIP, "reviews", "/", &[], N);
    assert_eq!(after.served_by(V1), N, "{after:?}");
    let errors = mesh.debug_get("/debug/routing").unwrap();
    assert_eq!(errors.body.trim(), "[]", "{}", errors.body);
}
