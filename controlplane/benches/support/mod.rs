//! The synthetic mesh the translation benchmarks share, built in code
//! through the discovery index (the same join the file registry and the
//! Kubernetes source use):
//!
//! ```text
//! 20 namespaces × 50 services ── 900 HTTP (port 80), 100 TCP (5432)
//!        └─ 10 ready endpoints each (198.18.0.0/16, target port 8080)
//!              └─ one Pod per endpoint (10,000 workloads)
//! ```

// Each benchmark uses its own part of this module.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use meshd_controlplane::discovery::index::Index;
use meshd_controlplane::discovery::objects::{Object, Slice};
use meshd_controlplane::model::{
    Conditions, Endpoint, Interception, MtlsMode, Namespace, Protocol, Service, ServiceKey,
    ServicePort, Workload,
};
use meshd_controlplane::translate::{MtlsOptions, TranslateOptions};

pub const NAMESPACES: usize = 20;
pub const SERVICES: usize = 1_000;
pub const ENDPOINTS_PER_SERVICE: usize = 10;
/// Every tenth service is a database behind a TCP port.
pub const TCP_EVERY: usize = 10;
pub const TARGET_PORT: u16 = 8080;

/// Translation as `meshd run` does it: with mutual TLS (PERMISSIVE).
pub fn options() -> TranslateOptions {
    TranslateOptions {
        mtls: Some(MtlsOptions {
            trust_domain: "cluster.local".into(),
            default_mode: MtlsMode::Permissive,
        }),
        telemetry: Default::default(),
        authorization: Default::default(),
    }
}

/// The `n`th address (1-based) of a /16.
pub fn address(prefix: [u8; 2], n: usize) -> IpAddr {
    let n = u16::try_from(n).expect("the mesh fits in a /16");
    let [hi, lo] = n.to_be_bytes();
    IpAddr::V4(Ipv4Addr::new(prefix[0], prefix[1], hi, lo))
}

pub fn namespace_of(service: usize) -> String {
    format!("ns-{:02}", service % NAMESPACES)
}

pub fn service_name(service: usize) -> String {
    format!("svc-{service:04}")
}

pub fn port_of(service: usize) -> ServicePort {
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

/// The node id of the proxy in front of pod `k` of service `service`.
pub fn node_id(service: usize, k: usize) -> String {
    format!("{}-{k}.{}", service_name(service), namespace_of(service))
}

/// Service `service`'s EndpointSlice with `ready` endpoints: the first
/// `ready` pods are ready, the rest not (a rollout in progress).
pub fn slice(service: usize, ready: usize) -> Slice {
    let namespace = namespace_of(service);
    let name = service_name(service);
    let port_name = port_of(service).name.unwrap_or_default();
    let endpoints = (0..ENDPOINTS_PER_SERVICE)
        .map(|k| Endpoint {
            address: address([198, 18], service * ENDPOINTS_PER_SERVICE + k + 1),
            ports: BTreeMap::from([(port_name.clone(), TARGET_PORT)]),
            conditions: Conditions {
                ready: k < ready,
                ..Conditions::default()
            },
            pod: Some(format!("{name}-{k}")),
            service_account: None,
        })
        .collect();
    Slice {
        namespace: namespace.clone(),
        name: format!("{name}-1"),
        service: ServiceKey::new(&namespace, &name),
        endpoints,
    }
}

/// The whole mesh, every endpoint ready.
pub fn index() -> Index {
    index_with(&[])
}

/// The whole mesh, with these annotations on every namespace.
pub fn index_with(namespace_annotations: &[(&str, &str)]) -> Index {
    let mut index = Index::default();
    for ns in 0..NAMESPACES {
        index.apply(Object::Namespace(Arc::new(Namespace {
            name: format!("ns-{ns:02}"),
            annotations: namespace_annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        })));
    }
    for i in 0..SERVICES {
        let namespace = namespace_of(i);
        let name = service_name(i);
        index.apply(Object::Service(Arc::new(Service {
            key: ServiceKey::new(&namespace, &name),
            vip: Some(address([198, 19], i + 1)),
            secondary_vips: Vec::new(),
            external_name: None,
            ports: vec![port_of(i)],
            annotations: BTreeMap::new(),
        })));
        for k in 0..ENDPOINTS_PER_SERVICE {
            index.apply(Object::Pod(Arc::new(Workload {
                namespace: namespace.clone(),
                name: format!("{name}-{k}"),
                ip: Some(address([198, 18], i * ENDPOINTS_PER_SERVICE + k + 1)),
                service_account: name.clone(),
                annotations: BTreeMap::new(),
                interception: Interception::Redirect,
                mtls: None,
            })));
        }
        index.apply(Object::EndpointSlice(Arc::new(slice(
            i,
            ENDPOINTS_PER_SERVICE,
        ))));
    }
    index
}
