//! How long translation takes for a mesh of 1,000 services (issue #2).
//!
//! The mesh is synthetic (`support`): 1,000 services in 20 namespaces,
//! 10,000 endpoints and workloads.
//!
//! What is measured, in the order a change reaches a proxy:
//! - `snapshot_new`: the shared translation, once per mesh change;
//! - `proxy_first`: the first proxy of a namespace on a fresh snapshot,
//!   which also builds that namespace's route configurations;
//! - `proxy_warm`: any further proxy (routes cached): the per-proxy cost of
//!   a push;
//! - `proxy_warm_100_ports`: the same with the HTTP services spread over
//!   100 port numbers, so 100 outbound port listeners: what a proxy's view
//!   costs as the mesh's ports grow;
//! - `full_proxy_config`: a fresh snapshot, one proxy's view, and a walk
//!   over every resource it receives.
//!
//! Run with `cargo bench -p meshd-controlplane --bench translate`.

mod support;

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use meshd_controlplane::model::Mesh;
use meshd_controlplane::translate::{Kind, ProxyView, Snapshot};
use prost::Message;
use support::{ENDPOINTS_PER_SERVICE, SERVICES, options};

fn mesh() -> Arc<Mesh> {
    let mesh = support::index().mesh();
    assert_eq!(mesh.services.len(), SERVICES);
    assert_eq!(mesh.workloads.len(), SERVICES * ENDPOINTS_PER_SERVICE);
    Arc::new(mesh)
}

/// `mesh` with its HTTP services spread over `ports` port numbers
/// (8000 and up), each a port listener of its own.
fn with_ports(mesh: &Mesh, ports: usize) -> Arc<Mesh> {
    let mut mesh = mesh.clone();
    for (i, service) in mesh.services.values_mut().enumerate() {
        let mut spread = (**service).clone();
        for port in spread.ports.iter_mut().filter(|p| p.protocol.is_http()) {
            port.port = 8000 + u16::try_from(i % ports).expect("ports fit in a u16");
        }
        *service = Arc::new(spread);
    }
    Arc::new(mesh)
}

/// A proxy in front of an HTTP service's first pod (service 1, `ns-01`).
fn node_id() -> String {
    support::node_id(1, 0)
}

/// Resources and bytes (as `Any`, the way they go on the wire) per kind.
fn sizes(view: &ProxyView) -> Vec<(Kind, usize, usize)> {
    Kind::PUSH_ORDER
        .into_iter()
        .map(|kind| {
            view.all(kind).fold((kind, 0, 0), |(kind, n, bytes), r| {
                (kind, n + 1, bytes + r.body.encoded_len())
            })
        })
        .collect()
}

fn report(mesh: &Arc<Mesh>, node: &str) {
    let snapshot = Snapshot::new(1, mesh.clone(), options());
    let view = snapshot
        .proxy(node)
        .expect("the proxy's pod is in the mesh");
    let sizes = sizes(&view);
    eprintln!(
        "mesh: {} services, {} endpoints, {} workloads; config for proxy {node}:",
        mesh.services.len(),
        mesh.endpoints.values().map(|e| e.len()).sum::<usize>(),
        mesh.workloads.len(),
    );
    for (kind, n, bytes) in &sizes {
        eprintln!(
            "  {:<3} {n:>5} resources {bytes:>10} bytes",
            kind.short_name()
        );
    }
    let (n, bytes) = sizes
        .iter()
        .fold((0, 0), |(n, b), (_, rn, rb)| (n + rn, b + rb));
    eprintln!("  all {n:>5} resources {bytes:>10} bytes");
}

fn translate(c: &mut Criterion) {
    let mesh = mesh();
    let node = node_id();
    report(&mesh, &node);

    let mut group = c.benchmark_group("translate");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));

    group.bench_function("snapshot_new", |b| {
        b.iter(|| Snapshot::new(1, black_box(mesh.clone()), options()));
    });

    group.bench_function("proxy_first", |b| {
        b.iter_batched_ref(
            || Snapshot::new(1, mesh.clone(), options()),
            |snapshot| snapshot.proxy(black_box(&node)).expect("known proxy"),
            BatchSize::PerIteration,
        );
    });

    let warm = Snapshot::new(1, mesh.clone(), options());
    warm.proxy(&node).expect("known proxy");
    group.bench_function("proxy_warm", |b| {
        b.iter(|| warm.proxy(black_box(&node)).expect("known proxy"));
    });

    let many_ports = with_ports(&mesh, 100);
    let warm_ports = Snapshot::new(1, many_ports, options());
    let view = warm_ports.proxy(&node).expect("known proxy");
    assert!(view.all(Kind::Listener).count() > 100);
    group.bench_function("proxy_warm_100_ports", |b| {
        b.iter(|| warm_ports.proxy(black_box(&node)).expect("known proxy"));
    });

    group.bench_function("full_proxy_config", |b| {
        b.iter(|| {
            let snapshot = Snapshot::new(1, black_box(mesh.clone()), options());
            let view = snapshot.proxy(&node).expect("known proxy");
            Kind::PUSH_ORDER
                .into_iter()
                .flat_map(|kind| view.all(kind))
                .map(|r| r.body.encoded_len())
                .sum::<usize>()
        });
    });
    group.finish();
}

criterion_group!(benches, translate);
criterion_main!(benches);
