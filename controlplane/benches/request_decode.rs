//! Micro-benchmark: reading an ADS stream's first request, which carries
//! the proxy's node (issue #10). Envoy's node lists the extensions compiled
//! into it; this one lists 470 in their shape (52 KB in all). Decoded into
//! Envoy's `DeltaDiscoveryRequest` every entry is allocated and dropped;
//! meshd's `xds::request::DeltaRequest` keeps the node's id alone and
//! prost steps over the rest. It measures the decode only, in process:
//! not TLS, HTTP/2 or the stream's other work.
//!
//! Run with `cargo bench -p meshd-controlplane --bench request_decode`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use meshd_controlplane::xds::request::DeltaRequest;
use meshd_proto::envoy::config::core::v3::{Extension, Node};
use meshd_proto::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use prost::Message;

fn first_request() -> Vec<u8> {
    let node = Node {
        id: "web-0.shop".into(),
        user_agent_name: "envoy".into(),
        extensions: (0..470)
            .map(|i| Extension {
                name: format!("envoy.filters.http.extension_{i}"),
                category: "envoy.filters.http".into(),
                type_urls: vec![format!(
                    "envoy.extensions.filters.http.extension_{i}.v3.Config"
                )],
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    DeltaDiscoveryRequest {
        node: Some(node),
        type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
        ..Default::default()
    }
    .encode_to_vec()
}

fn request_decode(c: &mut Criterion) {
    let bytes = first_request();
    eprintln!("first request: {} bytes", bytes.len());
    let mut group = c.benchmark_group("request_decode");
    group.bench_function("envoy_types", |b| {
        b.iter(|| DeltaDiscoveryRequest::decode(black_box(bytes.as_slice())).unwrap())
    });
    group.bench_function("meshd_fields", |b| {
        b.iter(|| DeltaRequest::decode(black_box(bytes.as_slice())).unwrap())
    });
    group.finish();
}

criterion_group!(benches, request_decode);
criterion_main!(benches);
