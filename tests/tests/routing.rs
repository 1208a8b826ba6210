//! Real Envoy accepts what routing annotations translate to: every
//! annotation at once, on the outbound side of a mesh-wide and of a scoped
//! proxy, and faults on the inbound side of the pods that serve them (with
//! capture and without), checked with `envoy --mode validate`; and what
//! ExternalName and headless services translate to, with mTLS.
//!
//! The proxy's xDS resources become a static bootstrap (binary protobuf):
//! route configurations are inlined into their connection managers and EDS
//! clusters carry their load assignments, so Envoy validates exactly the
//! messages the control plane would stream.

use std::process::Command;
use std::sync::Arc;

use meshd_api::annotations::workload::MtlsMode;
use meshd_ca::SpiffeId;
use meshd_controlplane::discovery::{file, index::Index};
use meshd_controlplane::translate::{
    Kind, MtlsOptions, ProxyView, Snapshot, TranslateOptions, decode,
};
use meshd_proto::envoy::config::bootstrap::v3::{Bootstrap, bootstrap};
use meshd_proto::envoy::config::cluster::v3::{Cluster, cluster};
use meshd_proto::envoy::config::core::v3::{
    Node, TrafficDirection, TransportSocket, transport_socket,
};
use meshd_proto::envoy::config::endpoint::v3::ClusterLoadAssignment;
use meshd_proto::envoy::config::listener::v3::{Listener, filter};
use meshd_proto::envoy::config::route::v3::RouteConfiguration;
use meshd_proto::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager::RouteSpecifier,
};
use meshd_proto::envoy::extensions::transport_sockets::tls::v3::{
    CommonTlsContext, DownstreamTlsContext, UpstreamTlsContext, common_tls_context,
};
use meshd_proto::to_any;
use meshd_tests::envoy;
use meshd_tests::pki::{Pki, TRUST_DOMAIN};
use prost::Message;

const REGISTRY: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, annotations: {meshd.io/timeout: 2s, meshd.io/fault-delay: 100ms@0.5}}
---
apiVersion: v1
kind: Service
metadata:
  name: reviews
  namespace: shop
  annotations:
    meshd.io/retries: "3"
    meshd.io/retry-per-try-timeout: 500ms
    meshd.io/retry-on: 5xx,gateway-error,reset,connect-failure,retriable-4xx,refused-stream,503
    meshd.io/traffic-split: reviews-v1=90,reviews-v2=10
    meshd.io/routes: '[{"pathPrefix":"/api","headers":{"end-user":"jason"},"backend":"reviews-v2"},{"headers":{"x-canary":"1"},"backend":"reviews-v1"}]'
    meshd.io/fault-delay: 5s@50
    meshd.io/fault-abort: 503@12.5
    meshd.io/max-connections: "100"
    meshd.io/max-pending-requests: "10"
    meshd.io/max-requests: "1000"
    meshd.io/max-retries: "5"
    meshd.io/outlier-consecutive-5xx: "3"
    meshd.io/outlier-interval: 5s
    meshd.io/outlier-base-ejection-time: 1m
    meshd.io/outlier-max-ejection-percent: "50"
spec: {clusterIP: 198.19.0.1, ports: [{name: http, port: 80}, {name: grpc-api, port: 9090}]}
---
apiVersion: v1
kind: Service
metadata: {name: reviews-v1, namespace: shop, annotations: {meshd.io/load-balancer: "ring-hash:x-user"}}
spec: {clusterIP: 198.19.0.2, ports: [{name: http, port: 80}, {name: grpc-api, port: 9090}]}
---
apiVersion: v1
kind: Service
metadata: {name: reviews-v2, namespace: shop, annotations: {meshd.io/load-balancer: least-request}}
spec: {clusterIP: 198.19.0.3, ports: [{name: http, port: 80}, {name: grpc-api, port: 9090}]}
---
apiVersion: v1
kind: Service
metadata: {name: ratings, namespace: shop, annotations: {meshd.io/load-balancer: random, meshd.io/fault-abort: 500@100}}
spec: {clusterIP: 198.19.0.4, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: postgres, namespace: shop, annotations: {meshd.io/load-balancer: "ring-hash:x-user", meshd.io/max-connections: "5"}}
spec: {clusterIP: 198.19.0.5, ports: [{name: tcp-pg, port: 5432}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: reviews-v1, namespace: shop, labels: {kubernetes.io/service-name: reviews-v1}}
addressType: IPv4
ports: [{name: http, port: 8080}, {name: grpc-api, port: 9090}]
endpoints:
- {addresses: [198.18.0.10], targetRef: {kind: Pod, name: reviews-v1-0}}
- {addresses: [198.18.0.11], targetRef: {kind: Pod, name: reviews-v1-1}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: ratings, namespace: shop, labels: {kubernetes.io/service-name: ratings}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [198.18.0.12], targetRef: {kind: Pod, name: ratings-0}}]
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v1-0, namespace: shop}
status: {podIP: 198.18.0.10}
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v1-1, namespace: shop, annotations: {meshd.io/interception: none}}
status: {podIP: 198.18.0.11}
---
apiVersion: v1
kind: Pod
metadata: {name: ratings-0, namespace: shop}
status: {podIP: 198.18.0.12}
---
apiVersion: v1
kind: Pod
metadata: {name: client-0, namespace: shop}
status: {podIP: 198.18.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: scoped-0, namespace: shop, annotations: {meshd.io/egress: "./reviews"}}
status: {podIP: 198.18.0.3}
---
apiVersion: v1
kind: Pod
metadata: {name: explicit-0, namespace: shop, annotations: {meshd.io/interception: none}}
status: {podIP: 198.18.0.4}
"#;

/// A proxy's resources as one static bootstrap.
fn bootstrap(node_id: &str, view: &ProxyView) -> Bootstrap {
    let listeners = view
        .all(Kind::Listener)
        .map(|r| {
            let mut listener: Listener = decode(r).unwrap();
            for chain in &mut listener.filter_chains {
                for f in &mut chain.filters {
                    let Some(filter::ConfigType::TypedConfig(any)) = &mut f.config_type else {
                        continue;
                    };
                    let Ok(mut hcm) = HttpConnectionManager::decode(any.value.as_slice()) else {
                        continue;
                    };
                    if let Some(RouteSpecifier::Rds(rds)) = &hcm.route_specifier {
                        let routes: RouteConfiguration = view
                            .get(Kind::Route, &rds.route_config_name)
                            .map(|r| decode(r).unwrap())
                            .unwrap_or_default();
                        hcm.route_specifier = Some(RouteSpecifier::RouteConfig(routes));
                        *any = to_any(&hcm);
                    }
                }
            }
            listener
        })
        .collect();
    let clusters = view
        .all(Kind::Cluster)
        .map(|r| {
            let mut c: Cluster = decode(r).unwrap();
            if c.eds_cluster_config.take().is_some() {
                let cla: ClusterLoadAssignment =
                    decode(view.get(Kind::Endpoint, &c.name).unwrap()).unwrap();
                c.cluster_discovery_type = Some(cluster::ClusterDiscoveryType::Type(
                    cluster::DiscoveryType::Static as i32,
                ));
                c.load_assignment = Some(cla);
            }
            c
        })
        .collect();
    Bootstrap {
        node: Some(Node {
            id: node_id.to_string(),
            cluster: "shop".into(),
            ..Default::default()
        }),
        static_resources: Some(bootstrap::StaticResources {
            listeners,
            clusters,
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn envoy_accepts_every_routing_annotation() {
    let Some(envoy_bin) = envoy::require_envoy() else {
        return;
    };
    let mut index = Index::default();
    for object in file::parse(REGISTRY).unwrap() {
        index.apply(object);
    }
    let snapshot = Snapshot::new(1, Arc::new(index.mesh()), TranslateOptions::default());
    assert!(
        snapshot.routing.errors.is_empty(),
        "{:?}",
        snapshot.routing.errors
    );
    let work = meshd_tests::workdir().unwrap();
    let mut fault_filters = 0;
    for node in [
        "client-0.shop",
        "scoped-0.shop",
        "explicit-0.shop",
        "reviews-v1-0.shop",
        "reviews-v1-1.shop",
        "ratings-0.shop",
    ] {
        let view = snapshot.proxy(node).unwrap();
        fault_filters += count_fault_filters(&view);
        let path = work.path().join(format!("{node}.pb"));
        std::fs::write(&path, bootstrap(node, &view).encode_to_vec()).unwrap();
        let out = Command::new(&envoy_bin)
            .args(["--mode", "validate", "--log-level", "error", "-c"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "envoy rejected the configuration of {node}:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The serving pods' inbound listeners carried faults to validate: both
    // ports of each reviews-v1 pod (reviews' and the namespace's faults)
    // and ratings' one port.
    assert_eq!(fault_filters, 5);
}

/// ExternalName and headless services, with mTLS on: the external name's
/// DNS cluster (every routing annotation that applies to a cluster), the
/// catch-all HTTP chain of its port, and the headless service's per-pod
/// chains and original-destination clusters, plaintext and with mTLS.
const OUTSIDE_AND_HEADLESS: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: payments
  namespace: shop
  annotations:
    meshd.io/timeout: 2s
    meshd.io/retries: "2"
    meshd.io/load-balancer: "ring-hash:x-user"
    meshd.io/max-connections: "100"
    meshd.io/outlier-consecutive-5xx: "3"
spec:
  type: ExternalName
  externalName: api.example.com
  ports: [{name: http, port: 80}, {name: grpc-api, port: 9090}, {name: tcp-db, port: 5432}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 198.19.0.1, ports: [{name: http, port: 80}, {name: tcp-db, port: 5432}]}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop, annotations: {meshd.io/load-balancer: least-request, meshd.io/max-connections: "5"}}
spec: {clusterIP: None, ports: [{name: tcp-pg, port: 5432}, {name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: cache, namespace: shop}
spec: {clusterIP: None, ports: [{name: tcp-redis, port: 6379}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db, namespace: shop, labels: {kubernetes.io/service-name: db}}
addressType: IPv4
ports: [{name: tcp-pg, port: 5432}, {name: http, port: 8080}]
endpoints:
- {addresses: [198.18.0.20], targetRef: {kind: Pod, name: db-0}}
- {addresses: [198.18.0.21], targetRef: {kind: Pod, name: db-1}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}, {name: tcp-db, port: 5432}]
endpoints:
- {addresses: [198.18.0.10], targetRef: {kind: Pod, name: web-0}}
- {addresses: [198.18.0.11], targetRef: {kind: Pod, name: web-1}}
---
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: shop}
spec: {serviceAccountName: web, containers: []}
status: {podIP: 198.18.0.10}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, annotations: {meshd.io/mtls: DISABLE}}
spec: {serviceAccountName: web, containers: []}
status: {podIP: 198.18.0.11}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: cache, namespace: shop, labels: {kubernetes.io/service-name: cache}}
addressType: IPv4
ports: [{name: tcp-redis, port: 6379}]
endpoints: [{addresses: [198.18.0.30]}]
---
apiVersion: v1
kind: Pod
metadata: {name: db-0, namespace: shop}
spec: {serviceAccountName: db, containers: []}
status: {podIP: 198.18.0.20}
---
apiVersion: v1
kind: Pod
metadata: {name: db-1, namespace: shop}
spec: {serviceAccountName: db, containers: []}
status: {podIP: 198.18.0.21}
---
apiVersion: v1
kind: Pod
metadata: {name: client-0, namespace: shop}
status: {podIP: 198.18.0.2}
"#;

#[test]
fn envoy_accepts_external_name_and_headless_services() {
    let Some(envoy_bin) = envoy::require_envoy() else {
        return;
    };
    let mut index = Index::default();
    for object in file::parse(OUTSIDE_AND_HEADLESS).unwrap() {
        index.apply(object);
    }
    let options = TranslateOptions {
        mtls: Some(MtlsOptions {
            trust_domain: "cluster.local".into(),
            default_mode: MtlsMode::Permissive,
        }),
        telemetry: Default::default(),
        authorization: Default::default(),
    };
    let snapshot = Snapshot::new(1, Arc::new(index.mesh()), options);
    assert!(
        snapshot.routing.errors.is_empty(),
        "{:?}",
        snapshot.routing.errors
    );
    let work = meshd_tests::workdir().unwrap();
    let pki = Pki::new(Default::default()).unwrap();
    for node in ["client-0.shop", "db-0.shop"] {
        let view = snapshot.proxy(node).unwrap();
        let clusters: Vec<Cluster> = view
            .all(Kind::Cluster)
            .map(|r| decode(r).unwrap())
            .collect();
        let kinds = |t: cluster::DiscoveryType| {
            clusters
                .iter()
                .filter(|c| {
                    c.cluster_discovery_type == Some(cluster::ClusterDiscoveryType::Type(t as i32))
                })
                .count()
        };
        // payments' HTTP and gRPC ports; db's two and cache's one port, and
        // the passthrough.
        assert_eq!(kinds(cluster::DiscoveryType::LogicalDns), 2, "{node}");
        assert_eq!(kinds(cluster::DiscoveryType::OriginalDst), 4, "{node}");
        let with_tls = clusters
            .iter()
            .filter(|c| c.transport_socket.is_some())
            .count();
        assert_eq!(
            with_tls, 4,
            "db's two ports and web's two take mTLS, cache's pod has no sidecar"
        );
        // web is in a migration (web-1 takes no mTLS): its clusters keep
        // TLS as the default and match plaintext for marked endpoints.
        let migrating: Vec<_> = clusters
            .iter()
            .filter(|c| c.name.ends_with("web.shop.svc.cluster.local"))
            .collect();
        assert_eq!(migrating.len(), 2, "{node}");
        for c in migrating {
            assert!(c.transport_socket.is_some(), "{}", c.name);
            assert_eq!(c.transport_socket_matches.len(), 1, "{}", c.name);
        }

        let mut bootstrap = bootstrap(node, &view);
        static_secrets(&mut bootstrap, &pki);
        let path = work.path().join(format!("{node}.pb"));
        std::fs::write(&path, bootstrap.encode_to_vec()).unwrap();
        let out = Command::new(&envoy_bin)
            .args(["--mode", "validate", "--log-level", "error", "-c"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "envoy rejected the configuration of {node}:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Envoy cannot validate secrets that would come over ADS: the proxy's
/// certificate and the trust bundle become static secrets of the same
/// names, and every TLS context refers to them without a config source.
fn static_secrets(bootstrap: &mut Bootstrap, pki: &Pki) {
    let id = SpiffeId::new(TRUST_DOMAIN, "shop", "db");
    let secrets = [
        pki.identity.issue(&id).unwrap().secret,
        pki.identity.root_secret(),
    ];
    let resources = bootstrap.static_resources.as_mut().unwrap();
    resources.secrets = secrets.iter().map(|r| decode(r).unwrap()).collect();
    let unsourced = |common: &mut Option<CommonTlsContext>| {
        let common = common.as_mut().unwrap();
        for sds in &mut common.tls_certificate_sds_secret_configs {
            sds.sds_config = None;
        }
        if let Some(common_tls_context::ValidationContextType::CombinedValidationContext(v)) =
            &mut common.validation_context_type
        {
            v.validation_context_sds_secret_config
                .as_mut()
                .unwrap()
                .sds_config = None;
        }
    };
    let rewrite = |socket: &mut TransportSocket| {
        let Some(transport_socket::ConfigType::TypedConfig(any)) = &mut socket.config_type else {
            return;
        };
        if let Ok(mut tls) = UpstreamTlsContext::decode(any.value.as_slice())
            && any.type_url.ends_with("UpstreamTlsContext")
        {
            unsourced(&mut tls.common_tls_context);
            *any = to_any(&tls);
        } else if let Ok(mut tls) = DownstreamTlsContext::decode(any.value.as_slice())
            && any.type_url.ends_with("DownstreamTlsContext")
        {
            unsourced(&mut tls.common_tls_context);
            *any = to_any(&tls);
        }
    };
    for cluster in &mut resources.clusters {
        cluster.transport_socket.iter_mut().for_each(rewrite);
        for m in &mut cluster.transport_socket_matches {
            m.transport_socket.iter_mut().for_each(rewrite);
        }
    }
    for listener in &mut resources.listeners {
        for chain in &mut listener.filter_chains {
            chain.transport_socket.iter_mut().for_each(rewrite);
        }
    }
}

/// Inbound connection managers that run the fault filter.
fn count_fault_filters(view: &ProxyView) -> usize {
    let mut count = 0;
    for r in view.all(Kind::Listener) {
        let listener: Listener = decode(r).unwrap();
        if listener.traffic_direction != TrafficDirection::Inbound as i32 {
            continue;
        }
        // Per port, the first chain (with mTLS, PERMISSIVE has two).
        let mut ports = std::collections::BTreeSet::new();
        for chain in &listener.filter_chains {
            for f in &chain.filters {
                let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
                    continue;
                };
                let Ok(hcm) = HttpConnectionManager::decode(any.value.as_slice()) else {
                    continue;
                };
                if hcm
                    .http_filters
                    .iter()
                    .any(|f| f.name == "envoy.filters.http.fault")
                {
                    ports.insert(hcm.stat_prefix.clone());
                }
            }
        }
        count += ports.len();
    }
    count
}
