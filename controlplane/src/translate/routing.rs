//! Routing annotations ([`meshd_api::annotations::routing`], checked by
//! discovery) in Envoy terms, on the caller's side except faults, which the
//! serving side injects:
//!
//! ```text
//! caller's virtual host of reviews:80
//!   ├─ route: pathPrefix + headers ─> reviews-v2      ┐ timeout, retry_policy,
//!   └─ route: /  ─> weighted_clusters (or reviews)    ┘ hash_policy (ring hash)
//! cluster outbound|80||reviews… ── lb_policy, circuit_breakers, outlier_detection
//! serving pods' inbound route config ── vhost of reviews: typed_per_filter_config[fault]
//! ```
//!
//! Faults are per-virtual-host config of the fault filter in the *inbound*
//! connection managers of the pods that receive the service's requests
//! (see [`super::inbound`] for why, and for which requests they apply to).

use std::collections::BTreeSet;

use meshd_proto::envoy::config::cluster::v3::{
    CircuitBreakers, Cluster, OutlierDetection, circuit_breakers, cluster,
};
use meshd_proto::envoy::config::core::v3::RoutingPriority;
use meshd_proto::envoy::config::route::v3::{
    HeaderMatcher, RetryPolicy, Route, RouteAction, RouteMatch, WeightedCluster, header_matcher,
    retry_policy, route, route_action, route_match, weighted_cluster,
};
use meshd_proto::envoy::extensions::filters::common::fault::v3::{
    FaultDelay as EnvoyFaultDelay, fault_delay,
};
use meshd_proto::envoy::extensions::filters::http::fault::v3::{
    FaultAbort as EnvoyFaultAbort, HttpFault, fault_abort,
};
use meshd_proto::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_filter,
};
use meshd_proto::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use meshd_proto::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use meshd_proto::envoy::r#type::v3::{FractionalPercent, fractional_percent};
use meshd_proto::{Any, Duration, UInt32Value, to_any};

use std::net::IpAddr;

use super::clusters::duration;
use super::resource::Resources;
use crate::model::{Mesh, Protocol, Service, ServiceKey, outbound_cluster_name};
use meshd_api::annotations::routing::{LoadBalancer, Percent, Retries, RouteRule, Routing};

use crate::model::MeshRouting;

pub(super) const FAULT_FILTER: &str = "envoy.filters.http.fault";
const PREVIOUS_HOSTS: &str = "envoy.retry_host_predicates.previous_hosts";

/// The fault filter of inbound connection managers that inject faults: it
/// does nothing unless a virtual host configures it.
pub(super) fn fault_filter() -> HttpFilter {
    HttpFilter {
        name: FAULT_FILTER.into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(to_any(
            &HttpFault::default(),
        ))),
        ..Default::default()
    }
}

pub(super) fn proto_duration(d: std::time::Duration) -> Duration {
    Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

fn fraction(p: Percent) -> FractionalPercent {
    FractionalPercent {
        numerator: p.millionths,
        denominator: fractional_percent::DenominatorType::Million as i32,
    }
}

fn uint32(value: Option<u32>) -> Option<UInt32Value> {
    value.map(|value| UInt32Value { value })
}

/// Load balancing, circuit breaking and outlier detection of one of the
/// service's clusters.
pub(super) fn configure_cluster(cluster: &mut Cluster, routing: &Routing, protocol: Protocol) {
    use cluster::LbPolicy;
    cluster.lb_policy = match &routing.load_balancer {
        LoadBalancer::RoundRobin => LbPolicy::RoundRobin,
        LoadBalancer::LeastRequest => LbPolicy::LeastRequest,
        LoadBalancer::Random => LbPolicy::Random,
        // TCP has no header to hash on.
        LoadBalancer::RingHash { .. } if protocol.is_http() => LbPolicy::RingHash,
        LoadBalancer::RingHash { .. } => LbPolicy::RoundRobin,
    } as i32;
    let limits = &routing.limits;
    if !limits.is_default() {
        cluster.circuit_breakers = Some(CircuitBreakers {
            thresholds: vec![circuit_breakers::Thresholds {
                priority: RoutingPriority::Default as i32,
                max_connections: uint32(limits.max_connections),
                max_pending_requests: uint32(limits.max_pending_requests),
                max_requests: uint32(limits.max_requests),
                max_retries: uint32(limits.max_retries),
                ..Default::default()
            }],
            ..Default::default()
        });
    }
    if let Some(o) = &routing.outlier {
        cluster.outlier_detection = Some(OutlierDetection {
            consecutive_5xx: uint32(o.consecutive_5xx),
            interval: o.interval.map(proto_duration),
            base_ejection_time: o.base_ejection_time.map(proto_duration),
            max_ejection_percent: uint32(o.max_ejection_percent),
            ..Default::default()
        });
    }
}

/// What one service port's virtual host holds.
pub(super) struct ServiceRoutes {
    pub routes: Vec<Route>,
    /// Every cluster the routes use.
    pub clusters: Vec<String>,
}

/// The routes for calls to `service` on `port`: its `meshd.io/routes`
/// rules, then its split (or itself). Targets whose cluster does not exist
/// are left out: a last good routing may name a service deleted since,
/// and a route to a missing cluster fails every request it takes. So are
/// headless targets: their clusters connect to the address the client
/// asked for, which here is the routed service's VIP, not their pods.
pub(super) fn service_routes(
    mesh: &Mesh,
    mesh_routing: &MeshRouting,
    clusters: &Resources,
    service: &Service,
    port: u16,
) -> ServiceRoutes {
    let routing = mesh_routing.service(&service.key);
    let target = |name: &str| {
        let key = ServiceKey::new(service.key.namespace.clone(), name);
        let cluster = outbound_cluster_name(&key, port);
        let routable = mesh.services.get(&key).is_some_and(|s| !s.is_headless());
        (routable && clusters.contains_key(&cluster)).then(|| (cluster, mesh_routing.service(&key)))
    };
    let mut used = BTreeSet::new();
    let mut routes = Vec::with_capacity(routing.routes.len() + 1);
    for rule in &routing.routes {
        let Some((cluster, backend)) = target(&rule.backend) else {
            continue;
        };
        used.insert(cluster.clone());
        routes.push(Route {
            r#match: Some(rule_match(rule)),
            action: Some(route::Action::Route(action(
                routing,
                route_action::ClusterSpecifier::Cluster(cluster),
                &[backend],
            ))),
            ..Default::default()
        });
    }
    let split: Vec<_> = routing
        .split
        .iter()
        .filter(|t| t.weight > 0)
        .filter_map(|t| target(&t.service).map(|(cluster, r)| (cluster, t.weight, r)))
        .collect();
    let default = if split.is_empty() {
        let own = own_cluster(mesh, clusters, service, port);
        used.insert(own.clone());
        action(
            routing,
            route_action::ClusterSpecifier::Cluster(own),
            &[routing],
        )
    } else {
        used.extend(split.iter().map(|(c, _, _)| c.clone()));
        let targets: Vec<&Routing> = split.iter().map(|(_, _, r)| *r).collect();
        let weighted = WeightedCluster {
            clusters: split
                .iter()
                .map(|(cluster, weight, _)| weighted_cluster::ClusterWeight {
                    name: cluster.clone(),
                    weight: Some(UInt32Value { value: *weight }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        action(
            routing,
            route_action::ClusterSpecifier::WeightedClusters(weighted),
            &targets,
        )
    };
    routes.push(Route {
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
            ..Default::default()
        }),
        action: Some(route::Action::Route(default)),
        ..Default::default()
    });
    ServiceRoutes {
        routes,
        clusters: used.into_iter().collect(),
    }
}

/// Where calls to `service` on `port` go when nothing routes them
/// elsewhere: its own cluster; but for an ExternalName that names another
/// service of the mesh (`db.other.svc.cluster.local`, a common alias), that
/// service's cluster, so the call stays in the mesh, over mTLS, instead of
/// leaving in plaintext through a DNS cluster to the service's VIP.
fn own_cluster(mesh: &Mesh, clusters: &Resources, service: &Service, port: u16) -> String {
    if let Some(target) = aliased_service(mesh, service) {
        let cluster = target.cluster_name(port);
        if clusters.contains_key(&cluster) {
            return cluster;
        }
    }
    service.cluster_name(port)
}

/// The mesh service an ExternalName service names, by its
/// `<name>.<namespace>.svc[.<cluster domain>]` name, when calls can be
/// routed to it (it has a cluster IP).
pub(super) fn aliased_service<'m>(mesh: &'m Mesh, service: &Service) -> Option<&'m Service> {
    let host = service.external_name.as_deref()?;
    let mut parts = host.trim_end_matches('.').splitn(4, '.');
    let (name, namespace) = (parts.next()?, parts.next()?);
    if parts.next()? != "svc" {
        return None;
    }
    mesh.services
        .get(&ServiceKey::new(namespace, name))
        .map(|target| &**target)
        .filter(|target| target.external_name.is_none() && !target.is_headless())
}

fn rule_match(rule: &RouteRule) -> RouteMatch {
    RouteMatch {
        path_specifier: Some(route_match::PathSpecifier::Prefix(
            rule.path_prefix.clone().unwrap_or_else(|| "/".into()),
        )),
        headers: rule
            .headers
            .iter()
            .map(|(name, value)| HeaderMatcher {
                name: name.clone(),
                header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(
                    StringMatcher {
                        match_pattern: Some(string_matcher::MatchPattern::Exact(value.clone())),
                        ..Default::default()
                    },
                )),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// The action of a route of `routing`'s service towards clusters whose
/// services route with `targets` (for their ring-hash headers).
fn action(
    routing: &Routing,
    clusters: route_action::ClusterSpecifier,
    targets: &[&Routing],
) -> RouteAction {
    let mut headers: Vec<&str> = Vec::new();
    for header in targets.iter().filter_map(|t| t.load_balancer.hash_header()) {
        if !headers.contains(&header) {
            headers.push(header);
        }
    }
    RouteAction {
        cluster_specifier: Some(clusters),
        // Zero is no deadline, not Envoy's default of 15 s: timeouts are
        // what the annotations ask for.
        timeout: Some(proto_duration(routing.timeout)),
        retry_policy: routing.retries.as_ref().map(retry_policy),
        hash_policy: headers
            .into_iter()
            .map(|header| route_action::HashPolicy {
                policy_specifier: Some(route_action::hash_policy::PolicySpecifier::Header(
                    route_action::hash_policy::Header {
                        header_name: header.to_string(),
                        ..Default::default()
                    },
                )),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn retry_policy(retries: &Retries) -> RetryPolicy {
    let retry_on: Vec<&str> = retries.on.iter().map(|c| c.name()).collect();
    RetryPolicy {
        retry_on: retry_on.join(","),
        num_retries: Some(UInt32Value {
            value: retries.attempts,
        }),
        per_try_timeout: retries.per_try_timeout.map(proto_duration),
        retriable_status_codes: retries.status_codes.iter().map(|&c| c.into()).collect(),
        // A retry goes to another endpoint when there is one.
        retry_host_predicate: vec![retry_policy::RetryHostPredicate {
            name: PREVIOUS_HOSTS.into(),
            config_type: Some(retry_policy::retry_host_predicate::ConfigType::TypedConfig(
                to_any(&PreviousHostsPredicate {}),
            )),
        }],
        host_selection_retry_max_attempts: 5,
        ..Default::default()
    }
}

/// The fault filter's per-virtual-host config for a service's faults;
/// `None` when it has none.
pub(super) fn fault_config(routing: &Routing) -> Option<Any> {
    if !routing.has_fault() {
        return None;
    }
    Some(to_any(&HttpFault {
        delay: routing.fault_delay.map(|d| EnvoyFaultDelay {
            percentage: Some(fraction(d.percent)),
            fault_delay_secifier: Some(fault_delay::FaultDelaySecifier::FixedDelay(
                proto_duration(d.delay),
            )),
        }),
        abort: routing.fault_abort.map(|a| EnvoyFaultAbort {
            percentage: Some(fraction(a.percent)),
            error_type: Some(fault_abort::ErrorType::HttpStatus(a.status.into())),
            ..Default::default()
        }),
        ..Default::default()
    }))
}

pub(super) fn route_to(cluster: &str) -> Route {
    Route {
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
            ..Default::default()
        }),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster.to_string())),
            // No deadline the user did not ask for (Envoy's default is 15 s):
            // timeouts come from routing annotations.
            timeout: duration(0),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// The names a pod may use for a service, as DNS search paths make them
/// resolve: `name` (same namespace only), `name.ns`, `name.ns.svc`, the
/// FQDN, and the VIPs.
pub(super) fn service_hosts(
    key: &ServiceKey,
    vips: impl IntoIterator<Item = IpAddr>,
    caller_namespace: &str,
) -> Vec<String> {
    let mut hosts = Vec::with_capacity(5);
    if key.namespace == caller_namespace {
        hosts.push(key.name.clone());
    }
    hosts.push(format!("{}.{}", key.name, key.namespace));
    hosts.push(format!("{}.{}.svc", key.name, key.namespace));
    hosts.push(key.fqdn());
    for vip in vips {
        hosts.push(match vip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("[{v6}]"),
        });
    }
    hosts
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use meshd_proto::envoy::config::listener::v3::{Listener, filter};
    use meshd_proto::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
    use meshd_proto::envoy::extensions::filters::network::http_connection_manager::v3::{
        HttpConnectionManager, http_connection_manager,
    };
    use prost::Message;

    use super::super::{
        INBOUND_LISTENER, Kind, OUTBOUND_LISTENER, PASSTHROUGH_CLUSTER, ProxyView, Snapshot,
        TranslateOptions, decode,
    };
    use super::*;
    use crate::discovery::index::Index;
    use crate::discovery::routing::RoutingIndex;
    use crate::model::Mesh;

    const REGISTRY: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, annotations: {meshd.io/timeout: 2s}}
---
apiVersion: v1
kind: Service
metadata:
  name: reviews
  namespace: shop
  annotations:
    meshd.io/retries: "3"
    meshd.io/retry-per-try-timeout: 500ms
    meshd.io/retry-on: 5xx,503
    meshd.io/traffic-split: reviews-v1=90,reviews-v2=10
    meshd.io/routes: '[{"pathPrefix":"/api","headers":{"end-user":"jason"},"backend":"reviews-v2"}]'
    meshd.io/fault-delay: 5s@50
    meshd.io/fault-abort: 503@12.5
    meshd.io/max-connections: "100"
    meshd.io/max-pending-requests: "10"
    meshd.io/outlier-consecutive-5xx: "3"
    meshd.io/outlier-interval: 5s
spec: {clusterIP: 198.19.0.1, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: reviews-v1, namespace: shop, annotations: {meshd.io/load-balancer: "ring-hash:x-user"}}
spec: {clusterIP: 198.19.0.2, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: reviews-v2, namespace: shop, annotations: {meshd.io/load-balancer: least-request}}
spec: {clusterIP: 198.19.0.3, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: ratings, namespace: shop}
spec: {clusterIP: 198.19.0.4, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Namespace
metadata: {name: db}
---
apiVersion: v1
kind: Service
metadata: {name: postgres, namespace: db, annotations: {meshd.io/load-balancer: "ring-hash:x-user"}}
spec: {clusterIP: 198.19.0.5, ports: [{name: tcp-pg, port: 5432}]}
---
apiVersion: v1
kind: Pod
metadata: {name: client-0, namespace: shop}
status: {podIP: 198.18.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: scoped-0, namespace: shop, annotations: {meshd.io/egress: "./reviews,db/*"}}
status: {podIP: 198.18.0.3}
---
apiVersion: v1
kind: Pod
metadata: {name: scoped-1, namespace: shop, annotations: {meshd.io/egress: "db/*, ./reviews"}}
status: {podIP: 198.18.0.4}
"#;

    const REVIEWS: &str = "outbound|80||reviews.shop.svc.cluster.local";
    const REVIEWS_V1: &str = "outbound|80||reviews-v1.shop.svc.cluster.local";
    const REVIEWS_V2: &str = "outbound|80||reviews-v2.shop.svc.cluster.local";
    const RATINGS: &str = "outbound|80||ratings.shop.svc.cluster.local";
    const POSTGRES: &str = "outbound|5432||postgres.db.svc.cluster.local";

    fn mesh(yaml: &str) -> Arc<Mesh> {
        let mut index = Index::default();
        for object in crate::discovery::file::parse(yaml).unwrap() {
            index.apply(object);
        }
        Arc::new(index.mesh())
    }

    fn snapshot(yaml: &str) -> Snapshot {
        let snapshot = Snapshot::new(1, mesh(yaml), TranslateOptions::default());
        assert!(
            snapshot.routing.errors.is_empty(),
            "{:?}",
            snapshot.routing.errors
        );
        snapshot
    }

    fn route_config(view: &ProxyView, name: &str) -> RouteConfiguration {
        decode(view.get(Kind::Route, name).unwrap()).unwrap()
    }

    fn vhost<'a>(rc: &'a RouteConfiguration, service: &str) -> &'a VirtualHost {
        let name = format!("{service}.shop.svc.cluster.local:80");
        rc.virtual_hosts
            .iter()
            .find(|v| v.name == name)
            .unwrap_or_else(|| panic!("no virtual host {name}"))
    }

    #[test]
    fn an_external_name_naming_a_mesh_service_routes_to_that_service() {
        let snap = snapshot(
            r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 198.19.0.1, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: web-alias, namespace: shop}
spec: {type: ExternalName, externalName: web.shop.svc.cluster.local., ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: outside, namespace: shop}
spec: {type: ExternalName, externalName: api.example.com, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Pod
metadata: {name: client-0, namespace: shop}
status: {podIP: 198.18.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: scoped-0, namespace: shop, annotations: {meshd.io/egress: ./web-alias}}
status: {podIP: 198.18.0.3}
"#,
        );
        // A proxy that may call the alias only still gets the cluster it
        // routes to.
        let scoped = snap.proxy("scoped-0.shop").unwrap();
        assert!(
            scoped
                .get(Kind::Cluster, "outbound|80||web.shop.svc.cluster.local")
                .is_some()
        );
        let view = snap.proxy("client-0.shop").unwrap();
        // ExternalName Services are routed by Host wherever their names
        // resolve: in the port's configuration for every other
        // destination, and in each namespace's (web-alias resolves to
        // web's VIP, whose chain is shop's).
        for config in ["80", "80|shop"] {
            let rc = route_config(&view, config);
            let target = |service: &str| -> String {
                match &route_action(&vhost(&rc, service).routes[0]).cluster_specifier {
                    Some(route_action::ClusterSpecifier::Cluster(c)) => c.clone(),
                    other => panic!("{other:?}"),
                }
            };
            // Through the mesh (and its mTLS), not a DNS cluster to the VIP.
            assert_eq!(
                target("web-alias"),
                "outbound|80||web.shop.svc.cluster.local",
                "{config}"
            );
            assert_eq!(
                target("outside"),
                "outbound|80||outside.shop.svc.cluster.local",
                "{config}"
            );
        }
    }

    fn route_action(route: &Route) -> &RouteAction {
        match &route.action {
            Some(route::Action::Route(a)) => a,
            other => panic!("not a route action: {other:?}"),
        }
    }

    fn cluster(view: &ProxyView, name: &str) -> Cluster {
        decode(view.get(Kind::Cluster, name).unwrap()).unwrap()
    }

    fn hcm(chain: &meshd_proto::envoy::config::listener::v3::FilterChain) -> HttpConnectionManager {
        match &chain.filters[0].config_type {
            Some(filter::ConfigType::TypedConfig(any)) => {
                HttpConnectionManager::decode(any.value.as_slice()).unwrap()
            }
            other => panic!("not a typed config: {other:?}"),
        }
    }

    #[test]
    fn routes_carry_timeouts_retries_rules_splits_and_hashing() {
        let snap = snapshot(REGISTRY);
        let view = snap.proxy("client-0.shop").unwrap();
        let rc = route_config(&view, "80|shop");
        let reviews = vhost(&rc, "reviews");
        assert_eq!(reviews.routes.len(), 2);

        // The rule first: prefix and header match, to its backend.
        let rule = &reviews.routes[0];
        let m = rule.r#match.as_ref().unwrap();
        assert_eq!(
            m.path_specifier,
            Some(route_match::PathSpecifier::Prefix("/api".into()))
        );
        assert_eq!(m.headers.len(), 1);
        assert_eq!(m.headers[0].name, "end-user");
        assert_eq!(
            m.headers[0].header_match_specifier,
            Some(header_matcher::HeaderMatchSpecifier::StringMatch(
                StringMatcher {
                    match_pattern: Some(string_matcher::MatchPattern::Exact("jason".into())),
                    ..Default::default()
                }
            ))
        );
        let a = route_action(rule);
        assert_eq!(
            a.cluster_specifier,
            Some(route_action::ClusterSpecifier::Cluster(REVIEWS_V2.into()))
        );
        // reviews-v2 balances by least request: nothing to hash.
        assert!(a.hash_policy.is_empty());

        // Then the split, for everything else.
        let default = &reviews.routes[1];
        assert_eq!(
            default.r#match.as_ref().unwrap().path_specifier,
            Some(route_match::PathSpecifier::Prefix("/".into()))
        );
        let a = route_action(default);
        let Some(route_action::ClusterSpecifier::WeightedClusters(w)) = &a.cluster_specifier else {
            panic!("not a split: {:?}", a.cluster_specifier);
        };
        let weights: Vec<_> = w
            .clusters
            .iter()
            .map(|c| (c.name.as_str(), c.weight.unwrap().value))
            .collect();
        assert_eq!(weights, [(REVIEWS_V1, 90), (REVIEWS_V2, 10)]);
        // reviews-v1 hashes on x-user, so the route computes that hash.
        assert_eq!(a.hash_policy.len(), 1);
        assert_eq!(
            a.hash_policy[0].policy_specifier,
            Some(route_action::hash_policy::PolicySpecifier::Header(
                route_action::hash_policy::Header {
                    header_name: "x-user".into(),
                    regex_rewrite: None
                }
            ))
        );

        // Every route of the service: the namespace's timeout, the
        // service's retries.
        for route in &reviews.routes {
            let a = route_action(route);
            assert_eq!(
                a.timeout,
                Some(Duration {
                    seconds: 2,
                    nanos: 0
                })
            );
            let retry = a.retry_policy.as_ref().unwrap();
            assert_eq!(retry.retry_on, "5xx,retriable-status-codes");
            assert_eq!(retry.retriable_status_codes, [503]);
            assert_eq!(retry.num_retries, Some(UInt32Value { value: 3 }));
            assert_eq!(
                retry.per_try_timeout,
                Some(Duration {
                    seconds: 0,
                    nanos: 500_000_000
                })
            );
            assert_eq!(retry.retry_host_predicate[0].name, PREVIOUS_HOSTS);
        }

        // A service without annotations of its own: the namespace timeout,
        // no retries, to itself.
        let ratings = vhost(&rc, "ratings");
        assert_eq!(ratings.routes.len(), 1);
        let a = route_action(&ratings.routes[0]);
        assert_eq!(
            a.cluster_specifier,
            Some(route_action::ClusterSpecifier::Cluster(RATINGS.into()))
        );
        assert_eq!(a.timeout.unwrap().seconds, 2);
        assert!(a.retry_policy.is_none());
        assert!(ratings.typed_per_filter_config.is_empty());

        // The route configuration keeps the split's clusters.
        let refs = &view.get(Kind::Route, "80|shop").unwrap().cluster_refs;
        for c in [REVIEWS_V1, REVIEWS_V2, RATINGS, PASSTHROUGH_CLUSTER] {
            assert!(refs.contains(&c.to_string()), "{c} not in {refs:?}");
        }
        assert!(!refs.contains(&REVIEWS.to_string()), "split away: {refs:?}");
    }

    /// Pods behind reviews' split targets and behind ratings, one of them
    /// without capture.
    const SERVING_PODS: &str = r#"
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: v1, namespace: shop, labels: {kubernetes.io/service-name: reviews-v1}}
addressType: IPv4
ports: [{name: http, port: 9080}]
endpoints: [{addresses: [198.18.0.11], targetRef: {kind: Pod, name: reviews-v1-0}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: v2, namespace: shop, labels: {kubernetes.io/service-name: reviews-v2}}
addressType: IPv4
ports: [{name: http, port: 9080}]
endpoints: [{addresses: [198.18.0.12], targetRef: {kind: Pod, name: reviews-v2-0}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: ratings, namespace: shop, labels: {kubernetes.io/service-name: ratings}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [198.18.0.13], targetRef: {kind: Pod, name: ratings-0}}]
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v1-0, namespace: shop}
status: {podIP: 198.18.0.11}
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v2-0, namespace: shop, annotations: {meshd.io/interception: none}}
status: {podIP: 198.18.0.12}
---
apiVersion: v1
kind: Pod
metadata: {name: ratings-0, namespace: shop}
status: {podIP: 198.18.0.13}
"#;

    /// The connection manager of an inbound listener's first chain, and
    /// the names of its HTTP filters.
    fn inbound_hcm(view: &ProxyView, listener: &str) -> (HttpConnectionManager, Vec<String>) {
        let l: Listener = decode(view.get(Kind::Listener, listener).unwrap()).unwrap();
        let hcm = hcm(&l.filter_chains[0]);
        let names = hcm.http_filters.iter().map(|f| f.name.clone()).collect();
        (hcm, names)
    }

    fn inline_routes(hcm: &HttpConnectionManager) -> &RouteConfiguration {
        match &hcm.route_specifier {
            Some(http_connection_manager::RouteSpecifier::RouteConfig(rc)) => rc,
            other => panic!("not inline routes: {other:?}"),
        }
    }

    #[test]
    fn faults_are_injected_by_the_serving_pods_before_their_router() {
        let snap = snapshot(&format!("{REGISTRY}{SERVING_PODS}"));

        // The caller only routes: its router sees the serving side's delay
        // (against its timeout) and aborts (which it retries).
        let client = snap.proxy("client-0.shop").unwrap();
        let rc = route_config(&client, "80|shop");
        assert!(
            rc.virtual_hosts
                .iter()
                .all(|v| v.typed_per_filter_config.is_empty())
        );
        let l = crate::translate::joined_outbound(&client);
        let http = l
            .filter_chains
            .iter()
            .find(|c| c.name == "outbound|80|http|shop")
            .unwrap();
        let names: Vec<_> = hcm(http)
            .http_filters
            .iter()
            .map(|f| f.name.clone())
            .collect();
        assert_eq!(names, ["envoy.filters.http.router"]);

        // reviews' split sends to reviews-v1: its pod injects reviews'
        // fault for requests addressed to reviews, before its router.
        let v1 = snap.proxy("reviews-v1-0.shop").unwrap();
        let (hcm_v1, names) = inbound_hcm(&v1, INBOUND_LISTENER);
        assert_eq!(names, [FAULT_FILTER, "envoy.filters.http.router"]);
        let rc = inline_routes(&hcm_v1);
        let vhosts: Vec<_> = rc.virtual_hosts.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(
            vhosts,
            [
                "inbound|http|9080|reviews.shop.svc.cluster.local",
                "inbound|http|9080"
            ]
        );
        let reviews = &rc.virtual_hosts[0];
        assert_eq!(
            reviews.domains,
            [
                "reviews:80",
                "reviews",
                "reviews.shop:80",
                "reviews.shop",
                "reviews.shop.svc:80",
                "reviews.shop.svc",
                "reviews.shop.svc.cluster.local:80",
                "reviews.shop.svc.cluster.local",
                "198.19.0.1:80",
                "198.19.0.1",
            ]
        );
        assert_eq!(
            route_action(&reviews.routes[0]).cluster_specifier,
            Some(route_action::ClusterSpecifier::Cluster(
                "inbound|9080||".into()
            ))
        );
        let any = &reviews.typed_per_filter_config[FAULT_FILTER];
        let fault = HttpFault::decode(any.value.as_slice()).unwrap();
        let delay = fault.delay.unwrap();
        assert_eq!(
            delay.fault_delay_secifier,
            Some(fault_delay::FaultDelaySecifier::FixedDelay(Duration {
                seconds: 5,
                nanos: 0
            }))
        );
        assert_eq!(
            delay.percentage,
            Some(FractionalPercent {
                numerator: 500_000,
                denominator: fractional_percent::DenominatorType::Million as i32
            })
        );
        let abort = fault.abort.unwrap();
        assert_eq!(
            abort.error_type,
            Some(fault_abort::ErrorType::HttpStatus(503))
        );
        assert_eq!(abort.percentage.unwrap().numerator, 125_000);
        // Any other Host (reviews-v1 by name, the pod IP): no fault.
        let default = &rc.virtual_hosts[1];
        assert_eq!(default.domains, ["*"]);
        assert!(default.typed_per_filter_config.is_empty());

        // The same on a pod without capture (its explicit inbound
        // listener), which reviews' header route reaches.
        let v2 = snap.proxy("reviews-v2-0.shop").unwrap();
        let (hcm_v2, names) = inbound_hcm(&v2, "inbound|9080");
        assert_eq!(names, [FAULT_FILTER, "envoy.filters.http.router"]);
        assert_eq!(inline_routes(&hcm_v2).virtual_hosts.len(), 2);

        // ratings has no fault: its pod's inbound side is as ever.
        let ratings = snap.proxy("ratings-0.shop").unwrap();
        let (hcm_r, names) = inbound_hcm(&ratings, INBOUND_LISTENER);
        assert_eq!(names, ["envoy.filters.http.router"]);
        let rc = inline_routes(&hcm_r);
        assert_eq!(rc.virtual_hosts.len(), 1);
        assert_eq!(rc.virtual_hosts[0].domains, ["*"]);
    }

    #[test]
    fn a_namespace_fault_is_injected_for_every_service_a_pod_serves() {
        let yaml = format!("{REGISTRY}{SERVING_PODS}").replace(
            "meshd.io/timeout: 2s}",
            "meshd.io/timeout: 2s, meshd.io/fault-abort: 500@1}",
        );
        let snap = snapshot(&yaml);
        let ratings = snap.proxy("ratings-0.shop").unwrap();
        let (hcm, names) = inbound_hcm(&ratings, INBOUND_LISTENER);
        assert_eq!(names, [FAULT_FILTER, "envoy.filters.http.router"]);
        let rc = inline_routes(&hcm);
        let ratings_vhost = &rc.virtual_hosts[0];
        assert_eq!(
            ratings_vhost.name,
            "inbound|http|8080|ratings.shop.svc.cluster.local"
        );
        let fault = HttpFault::decode(
            ratings_vhost.typed_per_filter_config[FAULT_FILTER]
                .value
                .as_slice(),
        )
        .unwrap();
        assert_eq!(
            fault.abort.unwrap().error_type,
            Some(fault_abort::ErrorType::HttpStatus(500))
        );
        // reviews-v1's pod now injects both reviews' own fault and
        // reviews-v1's (the namespace's), each for its own Host.
        let v1 = snap.proxy("reviews-v1-0.shop").unwrap();
        let (hcm, _) = inbound_hcm(&v1, INBOUND_LISTENER);
        let names: Vec<_> = inline_routes(&hcm)
            .virtual_hosts
            .iter()
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "inbound|http|9080|reviews.shop.svc.cluster.local",
                "inbound|http|9080|reviews-v1.shop.svc.cluster.local",
                "inbound|http|9080"
            ]
        );
    }

    #[test]
    fn two_services_given_one_vip_never_claim_a_domain_twice() {
        // ratings given reviews-v1's VIP by mistake, both with faults and
        // both selecting reviews-v1-0: Envoy refuses a route configuration
        // listing a domain twice, so the first service keeps the VIP.
        let yaml = format!("{REGISTRY}{SERVING_PODS}")
            .replace(
                "metadata: {name: ratings, namespace: shop}\nspec: {clusterIP: 198.19.0.4,",
                "metadata: {name: ratings, namespace: shop, annotations: {meshd.io/fault-abort: 500@1}}\nspec: {clusterIP: 198.19.0.2,",
            )
            .replace(
                "annotations: {meshd.io/load-balancer: \"ring-hash:x-user\"}}\nspec: {clusterIP: 198.19.0.2",
                "annotations: {meshd.io/load-balancer: \"ring-hash:x-user\", meshd.io/fault-delay: 1s@1}}\nspec: {clusterIP: 198.19.0.2",
            )
            .replace(
                "ports: [{name: http, port: 8080}]\nendpoints: [{addresses: [198.18.0.13], targetRef: {kind: Pod, name: ratings-0}}]",
                "ports: [{name: http, port: 9080}]\nendpoints: [{addresses: [198.18.0.11], targetRef: {kind: Pod, name: reviews-v1-0}}]",
            );
        let snap = snapshot(&yaml);
        let v1 = snap.proxy("reviews-v1-0.shop").unwrap();
        let (hcm, _) = inbound_hcm(&v1, INBOUND_LISTENER);
        let rc = inline_routes(&hcm);
        let mut seen = std::collections::BTreeSet::new();
        for domain in rc.virtual_hosts.iter().flat_map(|v| &v.domains) {
            assert!(seen.insert(domain), "{domain} listed twice");
        }
        let owner = |domain: &str| {
            rc.virtual_hosts
                .iter()
                .find(|v| v.domains.iter().any(|d| d == domain))
                .map(|v| v.name.as_str())
        };
        assert_eq!(
            owner("198.19.0.2"),
            Some("inbound|http|9080|ratings.shop.svc.cluster.local")
        );
        assert_eq!(
            owner("reviews-v1"),
            Some("inbound|http|9080|reviews-v1.shop.svc.cluster.local")
        );
        assert_eq!(
            owner("ratings"),
            Some("inbound|http|9080|ratings.shop.svc.cluster.local")
        );
    }

    #[test]
    fn clusters_carry_load_balancing_circuit_breakers_and_outlier_detection() {
        use cluster::LbPolicy;
        let snap = snapshot(REGISTRY);
        let view = snap.proxy("client-0.shop").unwrap();

        let reviews = cluster(&view, REVIEWS);
        assert_eq!(reviews.lb_policy, LbPolicy::RoundRobin as i32);
        let thresholds = &reviews.circuit_breakers.unwrap().thresholds;
        assert_eq!(thresholds.len(), 1);
        assert_eq!(thresholds[0].priority, RoutingPriority::Default as i32);
        assert_eq!(
            thresholds[0].max_connections,
            Some(UInt32Value { value: 100 })
        );
        assert_eq!(
            thresholds[0].max_pending_requests,
            Some(UInt32Value { value: 10 })
        );
        assert_eq!(thresholds[0].max_requests, None);
        assert_eq!(thresholds[0].max_retries, None);
        let outlier = reviews.outlier_detection.unwrap();
        assert_eq!(outlier.consecutive_5xx, Some(UInt32Value { value: 3 }));
        assert_eq!(outlier.interval.unwrap().seconds, 5);
        assert_eq!(outlier.base_ejection_time, None);

        assert_eq!(
            cluster(&view, REVIEWS_V1).lb_policy,
            LbPolicy::RingHash as i32
        );
        assert_eq!(
            cluster(&view, REVIEWS_V2).lb_policy,
            LbPolicy::LeastRequest as i32
        );
        let ratings = cluster(&view, RATINGS);
        assert!(ratings.circuit_breakers.is_none());
        assert!(ratings.outlier_detection.is_none());
        // TCP has no header to hash on.
        assert_eq!(
            cluster(&view, POSTGRES).lb_policy,
            LbPolicy::RoundRobin as i32
        );
    }

    #[test]
    fn an_invalid_edit_keeps_the_last_good_routing_across_snapshots() {
        let mut index = RoutingIndex::default();
        // One routing history across the three meshes, as a source keeps.
        let build = |index: &mut RoutingIndex, version, yaml: &str| {
            let mut mesh = (*mesh(yaml)).clone();
            mesh.routing = Arc::new(index.update(&mesh));
            Snapshot::new(version, Arc::new(mesh), TranslateOptions::default())
        };
        let first = build(&mut index, 1, REGISTRY);
        assert!(first.routing.errors.is_empty());
        let before = first.proxy("client-0.shop").unwrap();

        // A typo in the service's retries and a namespace timeout turned
        // invalid: every service of the namespace keeps its routing.
        let broken = REGISTRY
            .replace(r#"meshd.io/retries: "3""#, r#"meshd.io/retries: "30""#)
            .replace("meshd.io/timeout: 2s", "meshd.io/timeout: 2 seconds");
        let second = build(&mut index, 2, &broken);
        let errors: Vec<_> = second
            .routing
            .errors
            .iter()
            .map(|e| (e.object.as_str(), e.annotation.as_str(), e.value.as_str()))
            .collect();
        assert_eq!(
            errors,
            [
                ("Namespace shop", "meshd.io/timeout", "2 seconds"),
                ("Service shop/reviews", "meshd.io/retries", "30"),
            ]
        );
        let after = second.proxy("client-0.shop").unwrap();
        for kind in [Kind::Route, Kind::Cluster, Kind::Listener] {
            let a: Vec<_> = before.all(kind).map(|r| (&r.name, &r.version)).collect();
            let b: Vec<_> = after.all(kind).map(|r| (&r.name, &r.version)).collect();
            assert_eq!(a, b, "{kind:?} changed");
        }

        // Without history (a fresh index) the same mesh gets defaults.
        let fresh = Snapshot::new(3, mesh(&broken), TranslateOptions::default());
        let rc = route_config(&fresh.proxy("client-0.shop").unwrap(), "80|shop");
        assert_eq!(
            route_action(&vhost(&rc, "ratings").routes[0]).timeout,
            Some(Duration::default())
        );

        // Fixed: applied.
        let fixed = broken
            .replace(r#"meshd.io/retries: "30""#, r#"meshd.io/retries: "1""#)
            .replace("meshd.io/timeout: 2 seconds", "meshd.io/timeout: 1s");
        let third = build(&mut index, 4, &fixed);
        assert!(third.routing.errors.is_empty());
        let rc = route_config(&third.proxy("client-0.shop").unwrap(), "80|shop");
        let a = route_action(&vhost(&rc, "reviews").routes[1]);
        assert_eq!(a.timeout.unwrap().seconds, 1);
        assert_eq!(
            a.retry_policy.as_ref().unwrap().num_retries,
            Some(UInt32Value { value: 1 })
        );
    }

    #[test]
    fn a_split_target_deleted_since_the_last_good_routing_is_left_out() {
        let mut index = RoutingIndex::default();
        let mesh1 = mesh(REGISTRY);
        index.update(&mesh1);
        let without_v2 = REGISTRY.replace(
            "metadata: {name: reviews-v2, namespace: shop, annotations: {meshd.io/load-balancer: least-request}}\nspec: {clusterIP: 198.19.0.3, ports: [{name: http, port: 80}]}",
            "metadata: {name: other, namespace: shop}\nspec: {clusterIP: 198.19.0.3, ports: [{name: http, port: 80}]}",
        );
        let mesh2 = mesh(&without_v2);
        let routing = Arc::new(index.update(&mesh2));
        let annotations: Vec<_> = routing
            .errors
            .iter()
            .map(|e| e.annotation.as_str())
            .collect();
        assert_eq!(
            annotations,
            [
                meshd_api::annotations::routing::ROUTES,
                meshd_api::annotations::routing::TRAFFIC_SPLIT
            ]
        );
        let mut mesh2 = (*mesh2).clone();
        mesh2.routing = routing;
        let snap = Snapshot::new(2, Arc::new(mesh2), TranslateOptions::default());
        let view = snap.proxy("client-0.shop").unwrap();
        let rc = route_config(&view, "80|shop");
        let reviews = vhost(&rc, "reviews");
        // The rule to reviews-v2 is gone; the split keeps reviews-v1 only.
        assert_eq!(reviews.routes.len(), 1);
        let Some(route_action::ClusterSpecifier::WeightedClusters(w)) =
            &route_action(&reviews.routes[0]).cluster_specifier
        else {
            panic!()
        };
        assert_eq!(w.clusters.len(), 1);
        assert_eq!(w.clusters[0].name, REVIEWS_V1);
        let refs = &view.get(Kind::Route, "80|shop").unwrap().cluster_refs;
        assert!(!refs.contains(&REVIEWS_V2.to_string()));
    }

    #[test]
    fn scoped_proxies_get_only_their_services() {
        let snap = snapshot(REGISTRY);
        let view = snap.proxy("scoped-0.shop").unwrap();
        let clusters: Vec<_> = view.all(Kind::Cluster).map(|r| r.name.as_str()).collect();
        // reviews and postgres are in scope; reviews' split and rule need
        // reviews-v1 and -v2; ratings is out. (The pod's own inbound
        // catch-all cluster comes with its capture.)
        assert_eq!(
            clusters,
            [
                PASSTHROUGH_CLUSTER,
                POSTGRES,
                REVIEWS_V1,
                REVIEWS_V2,
                REVIEWS,
                "InboundPassthroughCluster",
            ]
        );
        let endpoints: Vec<_> = view.all(Kind::Endpoint).map(|r| r.name.as_str()).collect();
        assert_eq!(endpoints, [POSTGRES, REVIEWS_V1, REVIEWS_V2, REVIEWS]);

        let l = crate::translate::joined_outbound(&view);
        let chains: Vec<_> = l
            .filter_chains
            .iter()
            .map(|c| {
                let m = c.filter_chain_match.as_ref().unwrap();
                let vips: Vec<_> = m
                    .prefix_ranges
                    .iter()
                    .map(|r| r.address_prefix.as_str())
                    .collect();
                (c.name.as_str(), vips)
            })
            .collect();
        assert_eq!(
            chains,
            [
                (POSTGRES, vec!["198.19.0.5"]),
                ("outbound|80|http|shop", vec!["198.19.0.1"]),
            ]
        );

        let rc = route_config(&view, "80|shop");
        let vhosts: Vec<_> = rc.virtual_hosts.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(vhosts, ["reviews.shop.svc.cluster.local:80", "allow_any"]);

        // The unscoped proxy sees the whole mesh.
        let all = snap.proxy("client-0.shop").unwrap();
        assert_eq!(all.all(Kind::Cluster).count(), 7);
        assert_eq!(route_config(&all, "80|shop").virtual_hosts.len(), 5);

        // Proxies with equal scopes (written differently) share one copy.
        let twin = snap.proxy("scoped-1.shop").unwrap();
        for listener in [OUTBOUND_LISTENER, "0.0.0.0_80"] {
            assert!(Arc::ptr_eq(
                view.get(Kind::Listener, listener).unwrap(),
                twin.get(Kind::Listener, listener).unwrap()
            ));
        }
        assert!(Arc::ptr_eq(
            view.get(Kind::Route, "80|shop").unwrap(),
            twin.get(Kind::Route, "80|shop").unwrap()
        ));
        assert_eq!(lock_len(&snap), 1);
    }

    fn lock_len(snap: &Snapshot) -> usize {
        super::super::lock(&snap.scoped).len()
    }

    #[test]
    fn routed_resources_are_deterministic() {
        let a = snapshot(REGISTRY);
        let b = snapshot(REGISTRY);
        for node in ["client-0.shop", "scoped-0.shop"] {
            let va = a.proxy(node).unwrap();
            let vb = b.proxy(node).unwrap();
            for kind in Kind::PUSH_ORDER {
                let x: Vec<_> = va.all(kind).map(|r| (&r.name, &r.version)).collect();
                let y: Vec<_> = vb.all(kind).map(|r| (&r.name, &r.version)).collect();
                assert_eq!(x, y, "{node} {kind:?}");
            }
        }
    }
}
