//! Every service's outbound clusters and load assignments, translated
//! incrementally.
//!
//! A snapshot keeps, per service, what its resources were made from (the
//! Service, its endpoints, its routing and the identities of its pods) next
//! to the resources themselves. The next snapshot reuses the resources of
//! every service whose inputs are equal, so an endpoint change re-encodes
//! one load assignment instead of the whole mesh, and the unchanged
//! resources stay the very same `Arc`s: the xDS sessions and
//! [`SharedChanges`] tell what changed by pointer, not by content.
//!
//! Service ports become EDS clusters with a load assignment each, except
//! for two kinds of service without a VIP: an ExternalName service's HTTP
//! ports become DNS clusters carrying their one address inline, and a
//! headless service's ports become original-destination clusters (their
//! clients pick the pod), whose TLS follows the readiness of the pods.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use meshd_proto::envoy::config::endpoint::v3::{ClusterLoadAssignment, LocalityLbEndpoints};

use super::clusters::{dns_cluster, eds_cluster, lb_endpoint, original_dst_cluster};
use super::resource::{MtlsOptions, Resource, Resources, TranslateOptions};
use super::{routing, tls};
use crate::model::{Endpoint, Mesh, MtlsMode, Protocol, Service, ServiceKey};
use meshd_api::annotations::routing::Routing;
use meshd_api::sidecar::stats::{ConnectionSecurity, outbound_stat_name};
use meshd_proto::envoy::config::cluster::v3::Cluster;

use crate::model::MeshRouting;

/// One service's outbound resources and what they were made from.
#[derive(Debug)]
pub(super) struct ServiceEntry {
    service: Arc<Service>,
    routing: Routing,
    endpoints: Option<Arc<Vec<Endpoint>>>,
    /// Per endpoint, the service account clients verify (`None`: the pod
    /// does not take mTLS).
    identities: Vec<Option<String>>,
    clusters: Vec<Arc<Resource>>,
    load_assignments: Vec<Arc<Resource>>,
}

pub(super) type Entries = HashMap<ServiceKey, Arc<ServiceEntry>>;

/// The shared outbound resources of one snapshot.
pub(super) struct Translated {
    pub entries: Entries,
    pub clusters: Resources,
    pub endpoints: Resources,
}

/// What changed in the shared resources since the previous snapshot: the
/// names of the outbound clusters and load assignments that were added,
/// removed or changed.
#[derive(Debug)]
pub struct SharedChanges {
    /// The previous snapshot ([`super::ProxyView::snapshot_id`]).
    pub since: u64,
    pub clusters: BTreeSet<String>,
    pub endpoints: BTreeSet<String>,
    /// More than clusters and load assignments changed (services, routing,
    /// headless chains): listeners and routes were built again, and the
    /// clusters of an egress scope may have changed beyond these names.
    pub structural: bool,
    /// The changes that led to the previous snapshot, for proxies that are
    /// a few snapshots behind (a chain of at most [`CHANGE_HISTORY`]).
    pub earlier: Option<Arc<SharedChanges>>,
    pub(super) depth: usize,
}

/// How many snapshots back a proxy can be and still be brought up to date
/// from the changes alone.
pub const CHANGE_HISTORY: usize = 8;

/// The pods whose sidecars take mTLS, by (namespace, pod), with their
/// service accounts: their endpoints get the TLS transport socket, and
/// their identities are what clients verify.
fn mtls_pods<'m>(
    mesh: &'m Mesh,
    options: &TranslateOptions,
) -> HashMap<(&'m str, &'m str), &'m str> {
    let Some(mtls) = &options.mtls else {
        return HashMap::new();
    };
    mesh.workloads
        .values()
        .filter(|w| mesh.mtls_mode(w, mtls.default_mode) != MtlsMode::Disable)
        .map(|w| {
            (
                (w.namespace.as_str(), w.name.as_str()),
                w.service_account.as_str(),
            )
        })
        .collect()
}

pub(super) fn translate(
    mesh: &Mesh,
    routing: &MeshRouting,
    options: &TranslateOptions,
    previous: Option<&Entries>,
) -> Translated {
    let pods = mtls_pods(mesh, options);
    let mut translated = Translated {
        entries: HashMap::with_capacity(mesh.services.len()),
        clusters: Resources::new(),
        endpoints: Resources::new(),
    };
    for svc in mesh.services.values() {
        let endpoints = mesh.endpoints.get(&svc.key);
        let eps = endpoints.map_or(&[][..], |e| e.as_slice());
        let identity = |ep: &Endpoint| -> Option<&str> {
            pods.get(&(svc.key.namespace.as_str(), ep.pod.as_deref()?))
                .copied()
        };
        let service_routing = routing.service(&svc.key);
        let old = previous.and_then(|p| p.get(&svc.key));
        let same_service = old.is_some_and(|o| Arc::ptr_eq(&o.service, svc) || o.service == *svc);
        let same_identities = old.is_some_and(|o| {
            o.identities.len() == eps.len()
                && o.identities
                    .iter()
                    .zip(eps)
                    .all(|(a, ep)| a.as_deref() == identity(ep))
        });
        let same_endpoints = old.is_some_and(|o| match (&o.endpoints, endpoints) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
            (None, None) => true,
            _ => false,
        });
        let entry = match old {
            Some(old) if same_service && same_identities && same_endpoints => {
                if old.routing == *service_routing {
                    old.clone()
                } else {
                    Arc::new(ServiceEntry {
                        routing: service_routing.clone(),
                        clusters: clusters(
                            svc,
                            service_routing,
                            eps,
                            &identity,
                            options,
                            Some(old),
                        ),
                        load_assignments: old.load_assignments.clone(),
                        service: svc.clone(),
                        endpoints: endpoints.cloned(),
                        identities: old.identities.clone(),
                    })
                }
            }
            _ => {
                // A headless service's clusters also follow which of its
                // endpoints are ready (TLS or not): translate them again,
                // keeping the old resources when equal.
                let keep_clusters = old.filter(|o| {
                    same_service
                        && !svc.is_headless()
                        && o.routing == *service_routing
                        && same_sans(o, eps, &identity)
                        && every_endpoint_mtls(o.identities.iter().map(Option::is_some))
                            == every_endpoint_mtls(eps.iter().map(|ep| identity(ep).is_some()))
                });
                Arc::new(ServiceEntry {
                    service: svc.clone(),
                    routing: service_routing.clone(),
                    endpoints: endpoints.cloned(),
                    identities: eps
                        .iter()
                        .map(|ep| identity(ep).map(str::to_string))
                        .collect(),
                    clusters: match keep_clusters {
                        Some(o) => o.clusters.clone(),
                        None => clusters(svc, service_routing, eps, &identity, options, old),
                    },
                    load_assignments: load_assignments(svc, eps, &identity, old),
                })
            }
        };
        for r in &entry.clusters {
            translated.clusters.insert(r.name.clone(), r.clone());
        }
        for r in &entry.load_assignments {
            translated.endpoints.insert(r.name.clone(), r.clone());
        }
        translated.entries.insert(svc.key.clone(), entry);
    }
    translated
}

/// Whether every endpoint of a service takes mTLS (the usual case once a
/// namespace is meshed). A cluster with identities to verify always has
/// the TLS transport socket; only while some endpoints take plaintext (a
/// migration) does it also have a plaintext match, and only those
/// endpoints carry the mark that selects it. So a fully meshed service's
/// load assignment carries no marks (half the bytes of marking every mTLS
/// endpoint), and an endpoint without a mark is always reached over mTLS:
/// while a cluster changes between the two forms, Envoy may apply the new
/// load assignment to the old cluster, and either way that fails closed
/// (TLS to a plaintext pod fails; plaintext never goes to a pod that was
/// meant to get mTLS).
fn every_endpoint_mtls(mut takes_mtls: impl Iterator<Item = bool>) -> bool {
    takes_mtls.all(|mtls| mtls)
}

/// Whether the identities clients verify for a service stay the same
/// (endpoints came or went, but no service account did).
fn same_sans<'e>(
    old: &ServiceEntry,
    eps: &'e [Endpoint],
    identity: &impl Fn(&'e Endpoint) -> Option<&'e str>,
) -> bool {
    let now: BTreeSet<&str> = eps.iter().filter_map(identity).collect();
    let then: BTreeSet<&str> = old
        .identities
        .iter()
        .flatten()
        .map(String::as_str)
        .collect();
    now == then
}

fn spiffe_ids<'e>(
    svc: &Service,
    eps: &'e [Endpoint],
    identity: &impl Fn(&'e Endpoint) -> Option<&'e str>,
    mtls: &MtlsOptions,
) -> Vec<String> {
    let accounts: BTreeSet<&str> = eps.iter().filter_map(identity).collect();
    accounts
        .into_iter()
        .map(|sa| meshd_ca::SpiffeId::new(&mtls.trust_domain, &svc.key.namespace, sa).to_string())
        .collect()
}

fn clusters<'e>(
    svc: &Service,
    service_routing: &Routing,
    eps: &'e [Endpoint],
    identity: &impl Fn(&'e Endpoint) -> Option<&'e str>,
    options: &TranslateOptions,
    old: Option<&Arc<ServiceEntry>>,
) -> Vec<Arc<Resource>> {
    let sans = match &options.mtls {
        Some(mtls) => spiffe_ids(svc, eps, identity, mtls),
        None => Vec::new(),
    };
    // A headless cluster has no endpoints to label for mTLS: the pods
    // that take it are reached through the TLS cluster, the others (a
    // migration in progress) through a plaintext twin, chosen per pod by
    // the outbound listeners' chains.
    let headless_plaintext = !sans.is_empty()
        && eps
            .iter()
            .any(|ep| ep.conditions.ready && identity(ep).is_none());
    let plaintext_twins: Vec<Arc<Resource>> = if svc.is_headless() && headless_plaintext {
        svc.ports
            .iter()
            .map(|port| {
                let name = plaintext_cluster_name(svc, port.port);
                let mut cluster = original_dst_cluster(&name);
                routing::configure_cluster(&mut cluster, service_routing, port.protocol);
                cluster.lb_policy = original_dst_cluster(&name).lb_policy;
                name_stats_by_security(&mut cluster);
                keep_if_equal(
                    Resource::new(name, &cluster, vec![]),
                    old.map(|o| &o.clusters),
                )
            })
            .collect()
    } else {
        Vec::new()
    };
    let mut resources: Vec<Arc<Resource>> = svc
        .ports
        .iter()
        // Traffic to an ExternalName service's TCP port cannot be told from
        // other traffic to that port and leaves through the passthrough: no
        // cluster to resolve the name for nothing.
        .filter(|port| svc.external_name.is_none() || port.protocol.is_http())
        .map(|port| {
            let name = svc.cluster_name(port.port);
            let mut cluster = if let Some(host) = &svc.external_name {
                // Outside the mesh: no mTLS.
                let mut cluster = dns_cluster(&name, host, port.port, port.protocol);
                routing::configure_cluster(&mut cluster, service_routing, port.protocol);
                cluster
            } else if svc.is_headless() {
                let mut cluster = original_dst_cluster(&name);
                // Load balancing means nothing when the client picked the
                // pod; circuit breaking and outlier detection still apply.
                routing::configure_cluster(&mut cluster, service_routing, port.protocol);
                cluster.lb_policy = original_dst_cluster(&name).lb_policy;
                if !sans.is_empty() {
                    // The client's bytes pass through as TCP, whatever the
                    // port's protocol: no ALPN, so the server's connection
                    // manager detects the HTTP version itself.
                    cluster.transport_socket = Some(tls::upstream(&name, Protocol::Tcp, &sans));
                }
                cluster
            } else {
                let mut cluster = eds_cluster(&name, port.protocol);
                routing::configure_cluster(&mut cluster, service_routing, port.protocol);
                if !sans.is_empty() {
                    cluster.transport_socket = Some(tls::upstream(&name, port.protocol, &sans));
                    if !every_endpoint_mtls(eps.iter().map(|ep| identity(ep).is_some())) {
                        cluster.transport_socket_matches = vec![tls::plaintext_match()];
                    }
                }
                cluster
            };
            name_stats_by_security(&mut cluster);
            keep_if_equal(
                Resource::new(name, &cluster, vec![]),
                old.map(|o| &o.clusters),
            )
        })
        .collect();
    resources.extend(plaintext_twins);
    resources
}

/// Gives an outbound cluster's statistics a name that says how its
/// connections are secured (`connection_security` on its series), as the
/// cluster takes its endpoints: TLS for all, TLS with a plaintext match
/// for the unlabelled ones (mixed), or no TLS. Only a change of that state
/// changes the cluster; it already does (the match comes and goes).
fn name_stats_by_security(cluster: &mut Cluster) {
    let security = match (
        &cluster.transport_socket,
        cluster.transport_socket_matches.is_empty(),
    ) {
        (None, _) => ConnectionSecurity::Plaintext,
        (Some(_), true) => ConnectionSecurity::Mtls,
        (Some(_), false) => ConnectionSecurity::Mixed,
    };
    if let Some(stat_name) = outbound_stat_name(&cluster.name, security)
        && stat_name != cluster.name
    {
        cluster.alt_stat_name = stat_name;
    }
}

/// The plaintext twin of a headless service port's cluster, for its pods
/// that take no mTLS.
pub(super) fn plaintext_cluster_name(svc: &Service, port: u16) -> String {
    format!("outbound|{port}|plaintext|{}", svc.key.fqdn())
}

/// Whether the outbound chains send a headless service's `i`th endpoint
/// to the plaintext twin: it takes no mTLS while others of the service do.
pub(super) fn reached_in_plaintext(entries: &Entries, key: &ServiceKey, i: usize) -> bool {
    entries.get(key).is_some_and(|e| {
        e.identities.get(i).is_some_and(Option::is_none) && e.identities.iter().any(Option::is_some)
    })
}

/// Whether every headless service's endpoints take mTLS as before (the
/// outbound listeners' chains follow it).
pub(super) fn same_headless_identities(a: &Entries, b: &Entries, mesh: &Mesh) -> bool {
    mesh.services
        .values()
        .filter(|s| s.is_headless())
        .all(|s| a.get(&s.key).map(|e| &e.identities) == b.get(&s.key).map(|e| &e.identities))
}

fn load_assignments<'e>(
    svc: &Service,
    eps: &'e [Endpoint],
    identity: &impl Fn(&'e Endpoint) -> Option<&'e str>,
    old: Option<&Arc<ServiceEntry>>,
) -> Vec<Arc<Resource>> {
    // ExternalName clusters carry their one address inline and headless
    // clusters connect where the client asked: neither waits for EDS.
    if svc.external_name.is_some() || svc.is_headless() {
        return Vec::new();
    }
    let mark_plaintext = !every_endpoint_mtls(eps.iter().map(|ep| identity(ep).is_some()));
    svc.ports
        .iter()
        .map(|port| {
            let name = svc.cluster_name(port.port);
            let lb_endpoints = eps
                .iter()
                // Not-ready endpoints (starting, failing probes,
                // terminating) receive no new requests.
                .filter(|ep| ep.conditions.ready)
                .filter_map(|ep| {
                    let mut lb = lb_endpoint(ep.address, ep.port_for(port)?);
                    if mark_plaintext && identity(ep).is_none() {
                        lb.metadata = Some(tls::plaintext_endpoint_metadata());
                    }
                    Some(lb)
                })
                .collect();
            let cla = ClusterLoadAssignment {
                cluster_name: name.clone(),
                endpoints: vec![LocalityLbEndpoints {
                    lb_endpoints,
                    ..Default::default()
                }],
                ..Default::default()
            };
            // Equal content (say, an endpoint that is not ready came or
            // went) keeps the old resource, so nothing is pushed for it.
            keep_if_equal(
                Resource::new(name, &cla, vec![]),
                old.map(|o| &o.load_assignments),
            )
        })
        .collect()
}

/// The old resource when it has the fresh one's name and content.
fn keep_if_equal(fresh: Arc<Resource>, old: Option<&Vec<Arc<Resource>>>) -> Arc<Resource> {
    old.into_iter()
        .flatten()
        .find(|r| r.name == fresh.name && r.version == fresh.version)
        .cloned()
        .unwrap_or(fresh)
}

/// The names whose resources differ (by pointer) between two maps.
pub(super) fn differences(before: &Resources, after: &Resources) -> BTreeSet<String> {
    let mut changed = BTreeSet::new();
    let mut b = before.iter().peekable();
    let mut a = after.iter().peekable();
    loop {
        match (b.peek(), a.peek()) {
            (None, None) => return changed,
            (Some((name, _)), None) => {
                changed.insert((*name).clone());
                b.next();
            }
            (None, Some((name, _))) => {
                changed.insert((*name).clone());
                a.next();
            }
            (Some((bn, br)), Some((an, ar))) => match bn.cmp(an) {
                std::cmp::Ordering::Less => {
                    changed.insert((*bn).clone());
                    b.next();
                }
                std::cmp::Ordering::Greater => {
                    changed.insert((*an).clone());
                    a.next();
                }
                std::cmp::Ordering::Equal => {
                    if !Arc::ptr_eq(br, ar) {
                        changed.insert((*an).clone());
                    }
                    b.next();
                    a.next();
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::routing::RoutingIndex;
    use crate::discovery::{file, index::Index};
    use crate::model::MtlsMode;
    use crate::translate::{Kind, Snapshot};

    fn objects(ready: &str, reviews_annotations: &str) -> String {
        format!(
            r#"
apiVersion: v1
kind: Namespace
metadata: {{name: shop}}
---
apiVersion: v1
kind: Service
metadata: {{name: reviews, namespace: shop, annotations: {{{reviews_annotations}}}}}
spec: {{clusterIP: 198.19.0.1, ports: [{{name: http, port: 80}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: ratings, namespace: shop}}
spec: {{clusterIP: 198.19.0.2, ports: [{{name: http, port: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: reviews-1, namespace: shop, labels: {{kubernetes.io/service-name: reviews}}}}
addressType: IPv4
ports: [{{name: http, port: 8080}}]
endpoints:
- addresses: [198.18.0.3]
  targetRef: {{kind: Pod, name: reviews-0}}
- addresses: [198.18.0.4]
  targetRef: {{kind: Pod, name: reviews-1}}
  conditions: {{ready: {ready}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: ratings-1, namespace: shop, labels: {{kubernetes.io/service-name: ratings}}}}
addressType: IPv4
ports: [{{name: http, port: 8080}}]
endpoints:
- addresses: [198.18.0.5]
  targetRef: {{kind: Pod, name: ratings-0}}
---
apiVersion: v1
kind: Pod
metadata: {{name: reviews-0, namespace: shop}}
spec: {{serviceAccountName: reviews, containers: []}}
status: {{podIP: 198.18.0.3}}
---
apiVersion: v1
kind: Pod
metadata: {{name: reviews-1, namespace: shop}}
spec: {{serviceAccountName: reviews, containers: []}}
status: {{podIP: 198.18.0.4}}
---
apiVersion: v1
kind: Pod
metadata: {{name: ratings-0, namespace: shop}}
spec: {{serviceAccountName: ratings, containers: []}}
status: {{podIP: 198.18.0.5}}
"#
        )
    }

    fn options() -> TranslateOptions {
        TranslateOptions {
            mtls: Some(MtlsOptions {
                trust_domain: "cluster.local".into(),
                default_mode: MtlsMode::Permissive,
            }),
            telemetry: Default::default(),
            authorization: Default::default(),
        }
    }

    /// The publisher's steps: mesh, routing, snapshot after `previous`.
    fn publish(text: &str, routing: &mut RoutingIndex, previous: Option<&Snapshot>) -> Snapshot {
        let mut index = Index::default();
        for object in file::parse(text).unwrap() {
            index.apply(object);
        }
        // The routing history is the test's, not this fresh index's.
        let mut mesh = index.mesh();
        mesh.routing = Arc::new(routing.update(&mesh));
        let mesh = Arc::new(mesh);
        match previous {
            Some(p) => Snapshot::next(p.version + 1, mesh, options(), p),
            None => Snapshot::new(1, mesh, options()),
        }
    }

    const REVIEWS: &str = "outbound|80||reviews.shop.svc.cluster.local";
    const RATINGS: &str = "outbound|80||ratings.shop.svc.cluster.local";

    #[test]
    fn an_endpoint_change_reuses_everything_but_one_load_assignment() {
        let mut routing = RoutingIndex::default();
        let first = publish(&objects("true", ""), &mut routing, None);
        let before = first.proxy("ratings-0.shop").unwrap();
        let second = publish(&objects("false", ""), &mut routing, Some(&first));
        let after = second.proxy("ratings-0.shop").unwrap();

        let changes = after.changes().expect("only endpoints changed");
        assert!(!changes.structural);
        assert_eq!(changes.since, first.id);
        assert_eq!(changes.endpoints, BTreeSet::from([REVIEWS.to_string()]));
        assert!(changes.clusters.is_empty(), "{:?}", changes.clusters);

        let same = |kind, name| {
            Arc::ptr_eq(
                before.get(kind, name).unwrap(),
                after.get(kind, name).unwrap(),
            )
        };
        assert!(!same(Kind::Endpoint, REVIEWS));
        assert!(same(Kind::Endpoint, RATINGS));
        assert!(
            same(Kind::Cluster, REVIEWS),
            "the identities did not change"
        );
        assert!(same(Kind::Cluster, RATINGS));
        assert!(same(Kind::Listener, "outbound"));
        assert!(same(Kind::Listener, "0.0.0.0_80"));
        assert!(same(Kind::Route, "80|shop"), "routes carry over");

        // Back to ready: the content is what the first snapshot had.
        let third = publish(&objects("true", ""), &mut routing, Some(&second));
        let changes = third.changes.as_deref().unwrap();
        assert_eq!(changes.endpoints, BTreeSet::from([REVIEWS.to_string()]));
        assert_eq!(
            third.mesh_wide.endpoints[REVIEWS].version,
            first.mesh_wide.endpoints[REVIEWS].version
        );
    }

    #[test]
    fn nothing_changed_since_the_snapshot_itself() {
        // A source whose first snapshot is the empty mesh (the Kubernetes
        // source before its watches list): the second names every cluster.
        let mut routing = RoutingIndex::default();
        let empty = publish("", &mut routing, None);
        let full = publish(&objects("true", ""), &mut routing, Some(&empty));
        let next = publish(&objects("false", ""), &mut routing, Some(&full));
        let view = next.proxy("ratings-0.shop").unwrap();
        for kind in [Kind::Cluster, Kind::Endpoint] {
            assert_eq!(view.changed_since(kind, next.id), Some(Vec::new()));
        }
        assert_eq!(
            view.changed_since(Kind::Endpoint, full.id),
            Some(vec![REVIEWS])
        );
        // Further back than the history: the caller compares in full.
        assert_eq!(view.changed_since(Kind::Endpoint, empty.id - 1), None);
    }

    #[test]
    fn a_routing_change_is_not_an_endpoint_change() {
        let mut routing = RoutingIndex::default();
        let first = publish(&objects("true", ""), &mut routing, None);
        let second = publish(
            &objects("true", "meshd.io/load-balancer: random"),
            &mut routing,
            Some(&first),
        );
        assert!(
            second.changes.as_ref().is_some_and(|c| c.structural),
            "routes and listeners are rebuilt"
        );
        assert!(!Arc::ptr_eq(
            &first.clusters[REVIEWS],
            &second.clusters[REVIEWS]
        ));
        assert!(Arc::ptr_eq(
            &first.clusters[RATINGS],
            &second.clusters[RATINGS]
        ));
        assert!(Arc::ptr_eq(
            &first.mesh_wide.endpoints[REVIEWS],
            &second.mesh_wide.endpoints[REVIEWS]
        ));
    }

    /// A headless service `db` and an ordinary one, `web`, each with a
    /// second pod whose readiness is given.
    fn with_headless(db_ready: &str, web_ready: &str) -> String {
        format!(
            r#"
apiVersion: v1
kind: Service
metadata: {{name: db, namespace: shop}}
spec: {{clusterIP: None, ports: [{{name: tcp-pg, port: 5432}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: shop}}
spec: {{clusterIP: 198.19.0.1, ports: [{{name: http, port: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: db-1, namespace: shop, labels: {{kubernetes.io/service-name: db}}}}
addressType: IPv4
ports: [{{name: tcp-pg, port: 5432}}]
endpoints:
- {{addresses: [198.18.0.20], targetRef: {{kind: Pod, name: db-0}}}}
- {{addresses: [198.18.0.21], targetRef: {{kind: Pod, name: db-1}}, conditions: {{ready: {db_ready}}}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-1, namespace: shop, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: [{{name: http, port: 8080}}]
endpoints:
- {{addresses: [198.18.0.30], targetRef: {{kind: Pod, name: web-0}}}}
- {{addresses: [198.18.0.31], targetRef: {{kind: Pod, name: web-1}}, conditions: {{ready: {web_ready}}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: db-0, namespace: shop}}
spec: {{serviceAccountName: db, containers: []}}
status: {{podIP: 198.18.0.20}}
---
apiVersion: v1
kind: Pod
metadata: {{name: web-0, namespace: shop}}
spec: {{serviceAccountName: web, containers: []}}
status: {{podIP: 198.18.0.30}}
"#
        )
    }

    const DB: &str = "outbound|5432||db.shop.svc.cluster.local";
    const WEB: &str = "outbound|80||web.shop.svc.cluster.local";

    #[test]
    fn a_headless_endpoint_change_rebuilds_the_listener() {
        let mut routing = RoutingIndex::default();
        let first = publish(&with_headless("true", "true"), &mut routing, None);
        let before = first.proxy("web-0.shop").unwrap();

        // An ordinary service's endpoint: the listener carries over.
        let second = publish(&with_headless("true", "false"), &mut routing, Some(&first));
        let after = second.proxy("web-0.shop").unwrap();
        let changes = after.changes().expect("only endpoints changed");
        assert!(!changes.structural);
        assert_eq!(changes.endpoints, BTreeSet::from([WEB.to_string()]));
        assert!(changes.clusters.is_empty(), "{:?}", changes.clusters);
        for name in ["outbound", "0.0.0.0_80", "0.0.0.0_5432"] {
            assert!(Arc::ptr_eq(
                before.get(Kind::Listener, name).unwrap(),
                after.get(Kind::Listener, name).unwrap()
            ));
        }

        // A headless service's endpoint: its pod's chain goes, so the
        // listener is rebuilt; db-1 has no pod (no mTLS), so with it gone
        // the plaintext twin of db's cluster goes too (db's own cluster,
        // mTLS for db-0, stays).
        let third = publish(
            &with_headless("false", "false"),
            &mut routing,
            Some(&second),
        );
        assert!(
            third.changes.as_ref().is_some_and(|c| c.structural),
            "listeners are rebuilt"
        );
        let view = third.proxy("web-0.shop").unwrap();
        // The listener of the pods' port; the other ports' stay as they were.
        let listener = view.get(Kind::Listener, "0.0.0.0_5432").unwrap();
        assert_ne!(
            listener.version,
            after.get(Kind::Listener, "0.0.0.0_5432").unwrap().version
        );
        assert_eq!(
            view.get(Kind::Listener, "0.0.0.0_80").unwrap().version,
            after.get(Kind::Listener, "0.0.0.0_80").unwrap().version
        );
        let l: meshd_proto::envoy::config::listener::v3::Listener =
            crate::translate::decode(listener).unwrap();
        let db_chains: Vec<_> = l
            .filter_chains
            .iter()
            .filter(|c| c.name.starts_with(DB))
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(db_chains, [format!("{DB}|198.18.0.20:5432")]);
        let twin = "outbound|5432|plaintext|db.shop.svc.cluster.local";
        assert!(second.clusters.contains_key(twin));
        assert!(!third.clusters.contains_key(twin));
        assert!(Arc::ptr_eq(&second.clusters[DB], &third.clusters[DB]));
        assert!(Arc::ptr_eq(&second.clusters[WEB], &third.clusters[WEB]));
        assert!(Arc::ptr_eq(
            &second.mesh_wide.endpoints[WEB],
            &third.mesh_wide.endpoints[WEB]
        ));
        assert!(third.mesh_wide.endpoints.get(DB).is_none(), "no EDS");

        // Whatever was reused, the result is what a fresh translation gives.
        for (snap, db, web) in [(&second, "true", "false"), (&third, "false", "false")] {
            let fresh = publish(&with_headless(db, web), &mut RoutingIndex::default(), None);
            for kind in [Kind::Cluster, Kind::Endpoint, Kind::Listener, Kind::Route] {
                let versions = |s: &Snapshot| -> Vec<(String, String)> {
                    s.proxy("web-0.shop")
                        .unwrap()
                        .all(kind)
                        .map(|r| (r.name.clone(), r.version.clone()))
                        .collect()
                };
                assert_eq!(versions(snap), versions(&fresh), "{kind:?} {db} {web}");
            }
        }
    }

    #[test]
    fn reused_resources_equal_a_fresh_translation() {
        let mut routing = RoutingIndex::default();
        let mut previous = publish(&objects("true", ""), &mut routing, None);
        for (ready, annotations) in [
            ("false", ""),
            ("false", "meshd.io/load-balancer: random"),
            ("true", "meshd.io/load-balancer: random"),
            ("true", ""),
        ] {
            let next = publish(&objects(ready, annotations), &mut routing, Some(&previous));
            let fresh = publish(
                &objects(ready, annotations),
                &mut RoutingIndex::default(),
                None,
            );
            for kind in [Kind::Cluster, Kind::Endpoint, Kind::Listener, Kind::Route] {
                let a = next.proxy("reviews-0.shop").unwrap();
                let b = fresh.proxy("reviews-0.shop").unwrap();
                let versions = |v: &crate::translate::ProxyView| -> Vec<(String, String)> {
                    v.all(kind)
                        .map(|r| (r.name.clone(), r.version.clone()))
                        .collect()
                };
                assert_eq!(
                    versions(&a),
                    versions(&b),
                    "{kind:?} after {ready} {annotations}"
                );
            }
            previous = next;
        }
    }

    /// The same mesh with reviews-1 taking plaintext (`meshd.io/mtls: DISABLE`).
    fn with_plaintext_reviews_1() -> String {
        objects("true", "").replace(
            "metadata: {name: reviews-1, namespace: shop}",
            "metadata: {name: reviews-1, namespace: shop, annotations: {meshd.io/mtls: DISABLE}}",
        )
    }

    #[test]
    fn only_plaintext_endpoints_are_marked_and_only_in_a_migration() {
        use meshd_proto::envoy::config::cluster::v3::Cluster;
        use meshd_proto::envoy::config::core::v3::address;
        use meshd_proto::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;

        let cluster = |s: &Snapshot| -> Cluster {
            crate::translate::decode(
                s.proxy("ratings-0.shop")
                    .unwrap()
                    .get(Kind::Cluster, REVIEWS)
                    .unwrap(),
            )
            .unwrap()
        };
        // The addresses of the load assignment's endpoints that carry the mark.
        let marked = |s: &Snapshot| -> Vec<String> {
            let cla: ClusterLoadAssignment = crate::translate::decode(
                s.proxy("ratings-0.shop")
                    .unwrap()
                    .get(Kind::Endpoint, REVIEWS)
                    .unwrap(),
            )
            .unwrap();
            cla.endpoints[0]
                .lb_endpoints
                .iter()
                .filter(|lb| lb.metadata.is_some())
                .map(|lb| {
                    let Some(HostIdentifier::Endpoint(ep)) = &lb.host_identifier else {
                        panic!("an endpoint")
                    };
                    let Some(address::Address::SocketAddress(sa)) =
                        &ep.address.as_ref().unwrap().address
                    else {
                        panic!("a socket address")
                    };
                    sa.address.clone()
                })
                .collect()
        };

        let mut routing = RoutingIndex::default();
        let all = publish(&objects("true", ""), &mut routing, None);
        let c = cluster(&all);
        assert!(c.transport_socket.is_some(), "every endpoint takes mTLS");
        assert!(c.transport_socket_matches.is_empty());
        // Its series say so: `connection_security="mtls"`.
        assert_eq!(
            c.alt_stat_name,
            "outbound|80|mtls|reviews.shop.svc.cluster.local"
        );
        assert!(marked(&all).is_empty(), "no endpoint needs a mark");

        // A pod without mTLS joins: the cluster keeps TLS as its default
        // and gains a plaintext match, and only the plaintext endpoint is
        // marked: an unmarked endpoint is never reached in plaintext.
        let mixed = publish(&with_plaintext_reviews_1(), &mut routing, Some(&all));
        let c = cluster(&mixed);
        assert!(c.transport_socket.is_some());
        assert_eq!(c.transport_socket_matches.len(), 1);
        assert_eq!(c.transport_socket_matches[0].name, "plaintext");
        assert_eq!(
            c.alt_stat_name,
            "outbound|80|mixed|reviews.shop.svc.cluster.local"
        );
        assert_eq!(marked(&mixed), ["198.18.0.4"]);
        let view = mixed.proxy("ratings-0.shop").unwrap();
        let changes = view.changes().expect("a shared change");
        assert!(changes.clusters.contains(REVIEWS), "{changes:?}");

        // And back: the very resources a fresh translation makes.
        let again = publish(&objects("true", ""), &mut routing, Some(&mixed));
        let fresh = publish(&objects("true", ""), &mut RoutingIndex::default(), None);
        for kind in [Kind::Cluster, Kind::Endpoint] {
            let version = |s: &Snapshot| {
                s.proxy("ratings-0.shop")
                    .unwrap()
                    .get(kind, REVIEWS)
                    .unwrap()
                    .version
                    .clone()
            };
            assert_eq!(version(&again), version(&fresh), "{kind:?}");
        }
        assert!(cluster(&again).transport_socket.is_some());
        assert!(marked(&again).is_empty());
    }
}
