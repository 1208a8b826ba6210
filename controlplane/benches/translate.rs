//! How long translation takes for a mesh of 1,000 services (issue #2).
//!
//! The mesh is synthetic and built in code through the discovery index, the
//! same join the file registry uses:
//!
//! ```text
//! 20 namespaces × 50 services ── 900 HTTP (port 80), 100 TCP (5432)
//!        └─ 10 ready endpoints each (198.18.0.0/16, target port 8080)
//!              └─ one Pod per endpoint (10,000 workloads)
//! ```
//!
//! What is measured, in the order a change reaches a proxy:
//! - `snapshot_new`: the shared translation, once per mesh change;
//! - `proxy_first`: the first proxy of a namespace on a fresh snapshot,
//!   which also builds that namespace's route configurations;
//! - `proxy_warm`: any further proxy (routes cached): the per-proxy cost of
//!   a push;
//! - `full_proxy_config`: a fresh snapshot, one proxy's view, and a walk
//!   over every resource it receives.
//!
//! Run with `cargo bench -p meshd-controlplane --bench translate`.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use meshd_controlplane::discovery::index::Index;
use meshd_controlplane::discovery::objects::{Object, Slice};
use meshd_controlplane::model::{
    Conditions, Endpoint, Interception, Mesh, MtlsMode, Namespace, Protocol, Service, ServiceKey,
    ServicePort, Workload,
};
use meshd_controlplane::translate::{Kind, MtlsOptions, ProxyView, Snapshot, TranslateOptions};
use prost::Message;

const NAMESPACES: usize = 20;
const SERVICES: usize = 1_000;
const ENDPOINTS_PER_SERVICE: usize = 10;
/// Every tenth service is a database behind a TCP port.
const TCP_EVERY: usize = 10;
const TARGET_PORT: u16 = 8080;

/// The `n`th address (1-based) of a /16.
/// Translation as `meshd run` does it: with mutual TLS (PERMISSIVE).
fn options() -> TranslateOptions {
    TranslateOptions {
        mtls: Some(MtlsOptions {
            trust_domain: "cluster.local".into(),
            default_mode: MtlsMode::Permissive,
        }),
    }
}

fn address(prefix: [u8; 2], n: usize) -> IpAddr {
    let n = u16::try_from(n).expect("the mesh fits in a /16");
    let [hi, lo] = n.to_be_bytes();
    IpAddr::V4(Ipv4Addr::new(prefix[0], prefix[1], hi, lo))
}

fn namespace_of(service: usize) -> String {
    format!("ns-{:02}", service % NAMESPACES)
}

fn service_name(service: usize) -> String {
    format!("svc-{service:04}")
}

fn port_of(service: usize) -> ServicePort {
    if service.is_multiple_of(TCP_EVERY) {
        ServicePort {
            name: Some("tcp-db".into()),
            port: 5432,
            protocol: Protocol::Tcp,
        }
    } else {
        ServicePort {
            name: Some("http".into()),
            port: 80,
            protocol: Protocol::Http,
        }
    }
}

fn mesh() -> Arc<Mesh> {
    let mut index = Index::default();
    for ns in 0..NAMESPACES {
        index.apply(Object::Namespace(Namespace {
            name: format!("ns-{ns:02}"),
            ..Default::default()
        }));
    }
    for i in 0..SERVICES {
        let namespace = namespace_of(i);
        let name = service_name(i);
        let port = port_of(i);
        let port_name = port.name.clone().unwrap_or_default();
        index.apply(Object::Service(Service {
            key: ServiceKey::new(&namespace, &name),
            vip: Some(address([198, 19], i + 1)),
            ports: vec![port],
            annotations: BTreeMap::new(),
        }));
        let mut endpoints = Vec::with_capacity(ENDPOINTS_PER_SERVICE);
        for k in 0..ENDPOINTS_PER_SERVICE {
            let ip = address([198, 18], i * ENDPOINTS_PER_SERVICE + k + 1);
            let pod = format!("{name}-{k}");
            index.apply(Object::Pod(Workload {
                namespace: namespace.clone(),
                name: pod.clone(),
                ip: Some(ip),
                service_account: name.clone(),
                labels: BTreeMap::from([("app".to_string(), name.clone())]),
                annotations: BTreeMap::new(),
                interception: Interception::Redirect,
                mtls: None,
            }));
            endpoints.push(Endpoint {
                address: ip,
                ports: BTreeMap::from([(port_name.clone(), TARGET_PORT)]),
                conditions: Conditions::default(),
                pod: Some(pod),
                service_account: None,
            });
        }
        index.apply(Object::EndpointSlice(Slice {
            namespace: namespace.clone(),
            name: format!("{name}-1"),
            service: ServiceKey::new(&namespace, &name),
            endpoints,
        }));
    }
    let mesh = index.mesh();
    assert_eq!(mesh.services.len(), SERVICES);
    assert_eq!(mesh.workloads.len(), SERVICES * ENDPOINTS_PER_SERVICE);
    Arc::new(mesh)
}

/// A proxy in front of an HTTP service's first pod (service 1, `ns-01`).
fn node_id() -> String {
    format!("{}-0.{}", service_name(1), namespace_of(1))
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
