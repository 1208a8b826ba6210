//! Real Envoy accepts what routing annotations translate to: every
//! annotation at once, on the outbound side of a mesh-wide and of a scoped
//! proxy, and faults on the inbound side of the pods that serve them (with
//! capture and without), checked with `envoy --mode validate`; and what
//! ExternalName and headless services translate to, with mTLS; and what
//! Gateway API routes translate to: every match and filter kind validated,
//! and their rewrites, redirects and 500s observed through real Envoy on
//! loopback.
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
        // payments' HTTP and gRPC ports; db's two and cache's one port, the
        // outbound passthrough and the inbound catch-all's.
        assert_eq!(kinds(cluster::DiscoveryType::LogicalDns), 2, "{node}");
        assert_eq!(kinds(cluster::DiscoveryType::OriginalDst), 5, "{node}");
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

/// Gateway API routes of every kind the mesh translates, on echo's two
/// HTTP ports, and the services they send to. Routes are not files of the
/// registry yet: [`gateway_mesh`] reads them with discovery's own objects.
const GATEWAY: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: mesh}
spec: {clusterIP: 198.19.0.1, ports: [{name: http, port: 80}, {name: http-alt, port: 8080}, {name: grpc, port: 7070}]}
---
apiVersion: v1
kind: Service
metadata: {name: echo-v1, namespace: mesh, annotations: {meshd.io/load-balancer: least-request}}
spec: {clusterIP: 198.19.0.2, ports: [{name: http, port: 80}, {name: grpc, port: 7070}]}
---
apiVersion: v1
kind: Service
metadata: {name: echo-v2, namespace: mesh}
spec: {clusterIP: 198.19.0.3, ports: [{name: http, port: 80}, {name: grpc, port: 7070}]}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: other}
spec: {clusterIP: 198.19.0.4, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Pod
metadata: {name: client-0, namespace: mesh}
status: {podIP: 198.18.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: scoped-0, namespace: mesh, annotations: {meshd.io/egress: "./echo"}}
status: {podIP: 198.18.0.3}
---
apiVersion: v1
kind: Pod
metadata: {name: explicit-0, namespace: mesh, annotations: {meshd.io/interception: none}}
status: {podIP: 198.18.0.4}
---
apiVersion: v1
kind: Pod
metadata: {name: consumer-0, namespace: consumer}
status: {podIP: 198.18.0.5}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: everything, namespace: mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /strip-prefix}}]
    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}}]
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /prefix/one/}}]
    filters: [{type: URLRewrite, urlRewrite: {hostname: one.example, path: {type: ReplacePrefixMatch, replacePrefixMatch: /one}}}]
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /full/one}}]
    filters:
    - {type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /one}}}
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: X-Header-Set, value: set-overwrites-values}]
        add: [{name: X-Header-Add-Append, value: header-val-2}]
        remove: [X-Header-Remove]
    - type: ResponseHeaderModifier
      responseHeaderModifier: {set: [{name: X-Route, value: full 100%}], remove: [X-Served-By]}
    - {type: RequestMirror, requestMirror: {backendRef: {name: echo-v2, port: 80}, fraction: {numerator: 1, denominator: 3}}}
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /original-prefix}}]
    filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /replacement-prefix}}}]
  - matches: [{path: {type: PathPrefix, value: /full-redirect}}]
    filters: [{type: RequestRedirect, requestRedirect: {hostname: example.org, statusCode: 301, path: {type: ReplaceFullPath, replaceFullPath: /full-path-replacement}}}]
  - matches: [{path: {type: PathPrefix, value: /scheme}}]
    filters: [{type: RequestRedirect, requestRedirect: {scheme: https, statusCode: 303}}]
  - matches: [{path: {type: PathPrefix, value: /port}}]
    filters: [{type: RequestRedirect, requestRedirect: {port: 8083, statusCode: 307}}]
  - matches: [{path: {type: PathPrefix, value: /permanent}}]
    filters: [{type: RequestRedirect, requestRedirect: {statusCode: 308}}]
  - matches: [{path: {type: PathPrefix, value: /mixed}}]
    backendRefs: [{name: echo-v1, port: 80, weight: 1}, {name: missing, port: 80, weight: 1000000}]
  - matches: [{path: {type: PathPrefix, value: /nothing}}]
    backendRefs: [{name: echo-v1, port: 80, weight: 0}]
  - matches:
    - path: {type: Exact, value: /v2}
      method: GET
      headers: [{name: X-Version, value: two}, {name: X-Re, type: RegularExpression, value: "t[a-z]+"}]
      queryParams: [{name: q, value: "1"}, {name: r, type: RegularExpression, value: "[0-9]+"}]
    - path: {type: RegularExpression, value: "/v2/[a-z]+"}
    timeouts: {request: 10s, backendRequest: 5s}
    backendRefs:
    - name: echo-v2
      port: 80
      filters:
      - {type: RequestHeaderModifier, requestHeaderModifier: {add: [{name: X-Backend, value: v2}], remove: [X-Version]}}
      - {type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: X-From, value: v2}]}}
    - {name: api, namespace: other, port: 80, weight: 0}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: alt, namespace: mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 8080}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /scheme}}]
    filters: [{type: RequestRedirect, requestRedirect: {scheme: https}}]
  - timeouts: {backendRequest: 1s}
    backendRefs: [{name: echo-v1, port: 80, weight: 3}, {name: echo-v2, port: 80, weight: 1}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: mine, namespace: consumer}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, namespace: mesh, port: 80}]
  rules:
  - filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: X-Consumer, value: "yes"}]}}]
    backendRefs: [{name: echo-v1, namespace: mesh, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: consumers, namespace: mesh}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: consumer}]
  to: [{group: "", kind: Service}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: grpc, namespace: mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 7070}]
  rules:
  - matches:
    - method: {service: pkg.Echo, method: Call}
    - method: {service: pkg.Other}
    - method: {method: Ping}
    - method: {type: RegularExpression, service: "pkg\\..*", method: "P.*"}
      headers: [{name: x-tenant, value: a}]
    filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-grpc, value: "1"}]}}]
    backendRefs: [{name: echo-v1, port: 7070, weight: 70}, {name: echo-v2, port: 7070, weight: 30}]
"#;

/// The mesh of [`GATEWAY`]: Kubernetes kinds through the registry's
/// parser, routes and grants through discovery's objects.
fn gateway_mesh() -> Arc<meshd_controlplane::model::Mesh> {
    use meshd_controlplane::discovery::objects::Object;
    let mut index = Index::default();
    for doc in GATEWAY.split("\n---\n").filter(|d| !d.trim().is_empty()) {
        let value: serde_yaml::Value = serde_yaml::from_str(doc).unwrap();
        let object = match value["kind"].as_str().unwrap() {
            "HTTPRoute" => Object::from_http_route(&serde_yaml::from_value(value).unwrap()),
            "GRPCRoute" => Object::from_grpc_route(&serde_yaml::from_value(value).unwrap()),
            "ReferenceGrant" => {
                Object::from_reference_grant(&serde_yaml::from_value(value).unwrap())
            }
            _ => {
                for object in file::parse(doc).unwrap() {
                    index.apply(object);
                }
                continue;
            }
        };
        index.apply(object.unwrap());
    }
    let mesh = index.mesh();
    for (key, status) in &mesh.routes.statuses {
        for parent in &status.parents {
            assert!(parent.accepted.status, "{key}: {:?}", parent.accepted);
        }
    }
    Arc::new(mesh)
}

#[test]
fn envoy_accepts_every_gateway_route_kind() {
    let Some(envoy_bin) = envoy::require_envoy() else {
        return;
    };
    let snapshot = Snapshot::new(1, gateway_mesh(), TranslateOptions::default());
    let work = meshd_tests::workdir().unwrap();
    for node in [
        "client-0.mesh",
        "scoped-0.mesh",
        "explicit-0.mesh",
        "consumer-0.consumer",
    ] {
        let view = snapshot.proxy(node).unwrap();
        // Each proxy has the routes: with capture on echo's own chains,
        // without in the forward-proxy configuration.
        let names: Vec<&str> = view.all(Kind::Route).map(|r| r.name.as_str()).collect();
        if node.starts_with("explicit") {
            assert_eq!(names, ["outbound_http_proxy"], "{node}");
        } else {
            for port in [80, 8080, 7070] {
                let name = format!("echo.mesh.svc.cluster.local:{port}");
                assert!(names.contains(&name.as_str()), "{node}: {names:?}");
            }
        }
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
}

/// A loopback server that answers every request with its request line and
/// headers, so a test sees the path and headers Envoy sent upstream.
fn request_echo() -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let body = String::from_utf8_lossy(&head).to_string();
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Served-By: echo\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    addr
}

/// Real Envoy, given client-0's route configurations of echo's ports on
/// loopback listeners and every backend cluster pointing at
/// [`request_echo`], does what the Gateway API says: path rewrites (whole
/// segments, no doubled slash, query kept), header modifiers, redirects
/// (Location, status), 500 for an unresolved backend's share and for a
/// rule with nothing to send to.
#[test]
fn envoy_rewrites_redirects_and_answers_as_the_gateway_api_says() {
    use meshd_proto::envoy::config::bootstrap::v3::Admin;
    use meshd_proto::envoy::config::core::v3::{Address, SocketAddress, address, socket_address};
    use meshd_proto::envoy::config::endpoint::v3::{LbEndpoint, LocalityLbEndpoints, lb_endpoint};
    use meshd_proto::envoy::config::listener::v3::FilterChain;
    use meshd_tests::http::get_with;
    use meshd_tests::process::free_port;

    let Some(envoy_bin) = envoy::require_envoy() else {
        return;
    };
    let snapshot = Snapshot::new(1, gateway_mesh(), TranslateOptions::default());
    let view = snapshot.proxy("client-0.mesh").unwrap();
    let echo = request_echo();
    let socket = |addr: std::net::SocketAddr| Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: addr.ip().to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(addr.port().into())),
            ..Default::default()
        })),
    };
    // echo's own chains (port 80 and 8080), and echo-v1's on port 80 (a
    // route attaches to another Service of that port number), each on a
    // loopback port.
    // Wherever they are: each destination port has a listener of its own.
    let chains: Vec<FilterChain> = view
        .all(Kind::Listener)
        .flat_map(|r| decode::<Listener>(r).unwrap().filter_chains)
        .collect();
    let mut listeners = Vec::new();
    let mut ports = std::collections::BTreeMap::new();
    for (service, port) in [("echo", 80u16), ("echo", 8080), ("echo-v1", 80)] {
        let name = format!("outbound|{port}|http|{service}.mesh.svc.cluster.local");
        let chain = chains
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no chain {name}"));
        let mut filter = chain.filters[0].clone();
        let Some(filter::ConfigType::TypedConfig(any)) = &mut filter.config_type else {
            panic!("{name}: {filter:?}");
        };
        let mut hcm = HttpConnectionManager::decode(any.value.as_slice()).unwrap();
        if let Some(RouteSpecifier::Rds(rds)) = &hcm.route_specifier {
            let routes: RouteConfiguration =
                decode(view.get(Kind::Route, &rds.route_config_name).unwrap()).unwrap();
            hcm.route_specifier = Some(RouteSpecifier::RouteConfig(routes));
            *any = to_any(&hcm);
        }
        let addr = free_port();
        ports.insert((service, port), addr);
        listeners.push(Listener {
            name: format!("{service}_{port}"),
            address: Some(socket(addr)),
            filter_chains: vec![FilterChain {
                filters: vec![filter],
                ..Default::default()
            }],
            ..Default::default()
        });
    }
    let clusters = view
        .all(Kind::Cluster)
        .filter(|r| r.name.starts_with("outbound|"))
        .map(|r| {
            let mut c: Cluster = decode(r).unwrap();
            c.eds_cluster_config = None;
            c.cluster_discovery_type = Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Static as i32,
            ));
            c.load_assignment = Some(ClusterLoadAssignment {
                cluster_name: c.name.clone(),
                endpoints: vec![LocalityLbEndpoints {
                    lb_endpoints: vec![LbEndpoint {
                        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(
                            meshd_proto::envoy::config::endpoint::v3::Endpoint {
                                address: Some(socket(echo)),
                                ..Default::default()
                            },
                        )),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            });
            c
        })
        .collect();
    let admin = free_port();
    let config = Bootstrap {
        node: Some(Node {
            id: "client-0.mesh".into(),
            cluster: "mesh".into(),
            ..Default::default()
        }),
        admin: Some(Admin {
            address: Some(socket(admin)),
            ..Default::default()
        }),
        static_resources: Some(bootstrap::StaticResources {
            listeners,
            clusters,
            ..Default::default()
        }),
        ..Default::default()
    };
    let work = meshd_tests::workdir().unwrap();
    let path = work.path().join("gateway.pb");
    std::fs::write(&path, config.encode_to_vec()).unwrap();
    let envoy = envoy::Envoy::start("gateway", &envoy_bin, &path, admin, &[], work.path()).unwrap();
    let port80 = ports[&("echo", 80)];
    let get = |addr, host: &str, path: &str, headers: &[(&str, &str)]| {
        get_with(addr, host, path, false, headers)
            .unwrap_or_else(|e| panic!("GET {path}: {e:#}\n{}", envoy.log_tail()))
    };
    envoy::wait_for("the listeners", std::time::Duration::from_secs(20), || {
        Ok(get_with(port80, "echo", "/strip-prefix", false, &[])
            .ok()
            .filter(|r| r.status == 200))
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", envoy.log_tail()));

    // The path upstream saw: the request line of the echoed request.
    let upstream = |path: &str| {
        let r = get(port80, "echo", path, &[]);
        assert_eq!(r.status, 200, "{path}: {r:?}");
        r.body.lines().next().unwrap_or_default().to_string()
    };
    assert_eq!(upstream("/strip-prefix/three"), "GET /three HTTP/1.1");
    assert_eq!(upstream("/strip-prefix"), "GET / HTTP/1.1");
    assert_eq!(upstream("/strip-prefix/?x=1"), "GET /?x=1 HTTP/1.1");
    assert_eq!(upstream("/prefix/one/two"), "GET /one/two HTTP/1.1");
    assert_eq!(upstream("/prefix/one"), "GET /one HTTP/1.1");
    assert_eq!(upstream("/full/one/two?q=1"), "GET /one?q=1 HTTP/1.1");
    // Prefixes match whole segments.
    assert_eq!(get(port80, "echo", "/prefix/onetwo", &[]).status, 404);

    let r = get(
        port80,
        "echo",
        "/full/one",
        &[
            ("X-Header-Remove", "remove-val"),
            ("X-Header-Set", "set-val"),
            ("X-Header-Add-Append", "append-val-1"),
        ],
    );
    let seen = r.body.to_ascii_lowercase();
    assert!(
        seen.contains("x-header-set: set-overwrites-values"),
        "{seen}"
    );
    assert!(!seen.contains("set-val\r"), "{seen}");
    assert!(seen.contains("x-header-add-append: append-val-1"), "{seen}");
    assert!(seen.contains("header-val-2"), "{seen}");
    assert!(!seen.contains("x-header-remove"), "{seen}");
    assert_eq!(r.header("x-route"), Some("full 100%"));
    assert_eq!(r.header("x-served-by"), None);
    let r = get(port80, "echo", "/prefix/one/x", &[]);
    assert!(
        r.body.to_ascii_lowercase().contains("host: one.example"),
        "{}",
        r.body
    );

    let redirect = |addr, host: &str, path: &str| {
        let r = get(addr, host, path, &[]);
        (
            r.status,
            r.header("location").unwrap_or_default().to_string(),
        )
    };
    assert_eq!(
        redirect(port80, "echo", "/original-prefix/lemon"),
        (302, "http://echo/replacement-prefix/lemon".into())
    );
    assert_eq!(
        redirect(port80, "echo", "/full-redirect/x?q=1"),
        (301, "http://example.org/full-path-replacement?q=1".into())
    );
    assert_eq!(
        redirect(port80, "echo", "/scheme"),
        (303, "https://echo/scheme".into())
    );
    assert_eq!(
        redirect(port80, "echo:80", "/scheme"),
        (303, "https://echo/scheme".into())
    );
    assert_eq!(
        redirect(port80, "echo", "/port"),
        (307, "http://echo:8083/port".into())
    );
    assert_eq!(
        redirect(port80, "echo", "/permanent"),
        (308, "http://echo/permanent".into())
    );
    // On port 8080 the Host carries the port: https gets its own.
    assert_eq!(
        redirect(ports[&("echo", 8080)], "echo:8080", "/scheme"),
        (302, "https://echo:443/scheme".into())
    );

    // Matches and a backend's own header modifiers.
    let r = get(
        port80,
        "echo",
        "/v2?q=1&r=42",
        &[("X-Version", "two"), ("X-Re", "two")],
    );
    assert_eq!(r.status, 200, "{r:?}");
    let seen = r.body.to_ascii_lowercase();
    assert!(seen.contains("x-backend: v2"), "{seen}");
    assert!(!seen.contains("x-version"), "{seen}");
    assert_eq!(r.header("x-from"), Some("v2"));
    let r = get(port80, "echo", "/v2?q=2&r=42", &[("X-Version", "two")]);
    assert_eq!(r.status, 404, "the query does not match: {r:?}");

    // Nothing to send to: 500. An unresolved backend's share (almost all
    // of it here): 500 too, not Envoy's 503 for an unknown cluster.
    assert_eq!(get(port80, "echo", "/nothing", &[]).status, 500);
    let statuses: Vec<u16> = (0..5)
        .map(|_| get(port80, "echo", "/mixed", &[]).status)
        .collect();
    assert!(statuses.contains(&500), "{statuses:?}");
    assert!(
        statuses.iter().all(|s| [200, 500].contains(s)),
        "{statuses:?}"
    );

    // Routed by the Service called, not by Host (MeshFrontendHostname): a
    // call to echo-v1 with Host echo is echo-v1's, without echo's routes.
    let r = get(ports[&("echo-v1", 80)], "echo", "/full/one", &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.starts_with("GET /full/one HTTP/1.1"), "{}", r.body);
    assert_eq!(r.header("x-route"), None);
}
