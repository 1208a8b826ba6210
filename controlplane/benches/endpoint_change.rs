//! What one endpoint change costs in a 1,000-service / 10,000-endpoint
//! mesh with 2,000 connected proxies (issue #5, "Scale behaviour").
//!
//! The change: one pod of one HTTP service stops being ready (its
//! EndpointSlice is re-applied with that endpoint not ready), then becomes
//! ready again, alternately, so every iteration is a real change.
//!
//! - `endpoint_change/model_update`: the discovery index applies the
//!   slice and joins the mesh, the routing index updates, and the next
//!   snapshot is translated from the previous one: the publisher's work
//!   for one change.
//! - `endpoint_change/push_all_proxies`: every one of the 2,000 proxies'
//!   streams takes its view of the new snapshot and works out what to
//!   send (the diff), as the streams do after each publish; the sessions
//!   then acknowledge.
//!
//! Before timing, it prints how many proxies a single change sends
//! anything to, of which kinds, and how many bytes (Delta xDS): once with
//! every proxy seeing the whole mesh (what is timed), once with each
//! namespace's proxies scoped to their own namespace (`meshd.io/egress`).
//!
//! Run with `cargo bench -p meshd-controlplane --bench endpoint_change`.

mod support;

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use meshd_controlplane::discovery::index::Index;
use meshd_controlplane::discovery::objects::Object;
use meshd_controlplane::translate::{Kind, Snapshot};
use meshd_controlplane::xds::{Push, Request, Session, Subscribe};
use support::{ENDPOINTS_PER_SERVICE, SERVICES, node_id, options, slice};

/// Proxies: the first two pods of every service.
const PODS_WITH_PROXIES: usize = 2;
/// The service whose endpoint flaps (HTTP, in `ns-03`).
const CHANGED: usize = 3;

/// The source's index (which keeps the routing history) and the
/// publisher's last snapshot.
struct Publisher {
    index: Index,
    snapshot: Arc<Snapshot>,
    version: u64,
}

impl Publisher {
    fn new(namespace_annotations: &[(&str, &str)]) -> Self {
        let index = support::index_with(namespace_annotations);
        let mesh = Arc::new(index.mesh());
        let snapshot = Arc::new(Snapshot::new(1, mesh, options()));
        Publisher {
            index,
            snapshot,
            version: 1,
        }
    }

    /// Applies one EndpointSlice change and publishes the next snapshot.
    fn change(&mut self, ready: usize) {
        self.index
            .apply(Object::EndpointSlice(Arc::new(slice(CHANGED, ready))));
        let mesh = Arc::new(self.index.mesh());
        self.version += 1;
        self.snapshot = Arc::new(Snapshot::next(
            self.version,
            mesh,
            options(),
            &self.snapshot,
        ));
    }
}

fn request(kind: Kind, nonce: &str, names: Vec<String>) -> Request {
    Request {
        kind,
        response_nonce: nonce.to_string(),
        error: None,
        subscribe: Subscribe::Change {
            subscribe: names,
            unsubscribe: vec![],
            initial_versions: Default::default(),
        },
    }
}

/// A connected proxy: Delta ADS, subscribed as Envoy subscribes
/// (clusters and listeners by wildcard, then the endpoints of every EDS
/// cluster and the route configurations its listeners name).
struct Proxy {
    node: String,
    session: Session,
}

impl Proxy {
    fn connect(node: String, snapshot: &Snapshot) -> Self {
        let mut session = Session::new(true);
        session.on_request(request(Kind::Cluster, "", vec![]));
        session.on_request(request(Kind::Listener, "", vec![]));
        let view = snapshot.proxy(&node).expect("the pod is in the mesh");
        let eds: Vec<String> = view.all(Kind::Endpoint).map(|r| r.name.clone()).collect();
        let rds: Vec<String> = view.all(Kind::Route).map(|r| r.name.clone()).collect();
        session.on_request(request(Kind::Endpoint, "", eds));
        session.on_request(request(Kind::Route, "", rds));
        let mut proxy = Proxy { node, session };
        proxy.update(snapshot);
        assert!(
            proxy.update(snapshot).is_empty(),
            "a settled proxy gets nothing"
        );
        proxy
    }

    /// What the stream does on a new snapshot: push, then the proxy ACKs.
    fn update(&mut self, snapshot: &Snapshot) -> Vec<Push> {
        let view = snapshot.proxy(&self.node).expect("the pod is in the mesh");
        let pushes = self.session.push(&view);
        for push in &pushes {
            self.session
                .on_request(request(push.kind, &push.nonce, vec![]));
        }
        pushes
    }
}

/// This process's resident set (Linux), to see what sessions cost.
fn resident_bytes() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse::<usize>()
        .ok()?;
    Some(kib << 10)
}

fn fleet(snapshot: &Snapshot) -> Vec<Proxy> {
    (0..SERVICES)
        .flat_map(|s| (0..PODS_WITH_PROXIES).map(move |k| node_id(s, k)))
        .map(|node| Proxy::connect(node, snapshot))
        .collect()
}

fn report(what: &str, publisher: &mut Publisher, proxies: &mut [Proxy]) {
    publisher.change(ENDPOINTS_PER_SERVICE - 1);
    let mut pushed = 0;
    let mut by_kind: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for proxy in proxies.iter_mut() {
        let pushes = proxy.update(&publisher.snapshot);
        if !pushes.is_empty() {
            pushed += 1;
        }
        for push in pushes {
            let entry = by_kind.entry(push.kind.short_name()).or_default();
            entry.0 += push.changed.len() + push.removed.len();
            entry.1 += push
                .changed
                .iter()
                .map(|r| r.body.value.len())
                .sum::<usize>();
        }
    }
    eprintln!(
        "one endpoint change ({} services, {} endpoints, {} proxies, {what}): {pushed} proxies sent anything",
        SERVICES,
        SERVICES * ENDPOINTS_PER_SERVICE,
        proxies.len()
    );
    for (kind, (resources, bytes)) in by_kind {
        eprintln!("  {kind:<3} {resources:>6} resources {bytes:>10} bytes in all");
    }
    publisher.change(ENDPOINTS_PER_SERVICE);
    for proxy in proxies.iter_mut() {
        proxy.update(&publisher.snapshot);
    }
}

fn endpoint_change(c: &mut Criterion) {
    // Proxies that may call only their own namespace's services.
    let mut scoped = Publisher::new(&[("meshd.io/egress", "./*")]);
    let mut scoped_proxies = fleet(&scoped.snapshot);
    report(
        "egress ./* on every namespace",
        &mut scoped,
        &mut scoped_proxies,
    );
    drop(scoped_proxies);

    let before = resident_bytes();
    let mut publisher = Publisher::new(&[]);
    let after_mesh = resident_bytes();
    let mut proxies = fleet(&publisher.snapshot);
    let after_sessions = resident_bytes();
    if let (Some(a), Some(b), Some(c)) = (before, after_mesh, after_sessions) {
        eprintln!(
            "resident memory: mesh + snapshot {} MiB, {} sessions {} MiB ({} KiB each)",
            b.saturating_sub(a) >> 20,
            proxies.len(),
            c.saturating_sub(b) >> 20,
            (c.saturating_sub(b) / proxies.len()) >> 10,
        );
    }
    report("mesh-wide", &mut publisher, &mut proxies);

    let mut group = c.benchmark_group("endpoint_change");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));

    let mut ready = ENDPOINTS_PER_SERVICE;
    group.bench_function("model_update", |b| {
        b.iter(|| {
            ready = if ready == ENDPOINTS_PER_SERVICE {
                ready - 1
            } else {
                ENDPOINTS_PER_SERVICE
            };
            publisher.change(ready);
        });
    });

    group.bench_function("push_all_proxies", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                ready = if ready == ENDPOINTS_PER_SERVICE {
                    ready - 1
                } else {
                    ENDPOINTS_PER_SERVICE
                };
                publisher.change(ready);
                let start = Instant::now();
                let pushes: usize = proxies
                    .iter_mut()
                    .map(|p| p.update(&publisher.snapshot).len())
                    .sum();
                timed += start.elapsed();
                black_box(pushes);
            }
            timed
        });
    });
    group.finish();
}

criterion_group!(benches, endpoint_change);
criterion_main!(benches);
