//! The discovery index: accepted objects by kind, joined into a [`Mesh`].
//!
//! Sources `apply` and `delete` objects (a watch event, a registry file) and
//! then ask for a [`Mesh`] snapshot. The join happens here: EndpointSlices
//! are grouped under their Service, and each endpoint learns the service
//! account of the pod behind it so clients can verify the right identity.
//!
//! The join is kept between snapshots: only the services whose slices
//! changed, or whose pods came, went or changed service account, are joined
//! again, and every other service keeps its very `Arc` of endpoints (which
//! translation then recognises as unchanged without comparing them).
//!
//! Each mesh leaves here with its routing and authorization checked
//! ([`super::routing`], [`super::authorization`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use super::authorization::AuthorizationIndex;
use super::gateway::GatewayIndex;
use super::objects::{Object, ObjectRef, Slice};
use super::routing::RoutingIndex;
use crate::model::{
    Endpoint, Mesh, Namespace, RouteKey, RouteKind, Service, ServiceKey, Workload, node_id,
};

/// A poisoned lock is used as is: the join state is rebuilt from the
/// index's objects, and a routing history left half-updated by a panic
/// only keeps an older last-good routing for some services until their
/// annotations change (the parsers return errors; none is known to panic).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

type NamespacedName = (String, String);

#[derive(Debug, Default)]
pub struct Index {
    namespaces: BTreeMap<String, Arc<Namespace>>,
    services: BTreeMap<ServiceKey, Arc<Service>>,
    slices: BTreeMap<NamespacedName, Arc<Slice>>,
    pods: BTreeMap<NamespacedName, Arc<Workload>>,
    /// The endpoints of each service as last joined, and what to join
    /// again. Behind a lock so [`Index::mesh`] can refresh it through `&self`.
    joined: Mutex<Joined>,
    /// The last good routing of every service, checked against each mesh
    /// built (behind a lock for the same reason).
    routing: Mutex<RoutingIndex>,
    /// The last good authorization policy of every service.
    authorization: Mutex<AuthorizationIndex>,
    /// Gateway API routes (last good versions) and ReferenceGrants.
    gateway: Mutex<GatewayIndex>,
}

#[derive(Clone, Debug, Default)]
struct Joined {
    endpoints: BTreeMap<ServiceKey, Arc<Vec<Endpoint>>>,
    dirty: BTreeSet<ServiceKey>,
    /// Pods that came, went or changed service account since the last join.
    dirty_pods: BTreeMap<String, BTreeSet<String>>,
    /// Everything is to be joined again (a re-list, or too many changes
    /// for one by one to pay).
    all: bool,
}

/// Beyond this many changed services a snapshot joins everything again.
const JOIN_ONE_BY_ONE: usize = 64;

impl Clone for Index {
    fn clone(&self) -> Self {
        Index {
            namespaces: self.namespaces.clone(),
            services: self.services.clone(),
            slices: self.slices.clone(),
            pods: self.pods.clone(),
            joined: Mutex::new(self.joined().clone()),
            routing: Mutex::new(lock(&self.routing).clone()),
            authorization: Mutex::new(lock(&self.authorization).clone()),
            gateway: Mutex::new(lock(&self.gateway).clone()),
        }
    }
}

impl Index {
    fn joined(&self) -> std::sync::MutexGuard<'_, Joined> {
        lock(&self.joined)
    }

    fn touch(&mut self, service: &ServiceKey) {
        let joined = self.joined.get_mut().unwrap_or_else(|p| p.into_inner());
        if !joined.all {
            joined.dirty.insert(service.clone());
        }
    }

    /// A pod's service account is part of its endpoints: the services
    /// whose slices name it are joined again. Which ones is worked out
    /// once per snapshot ([`Index::mesh`]), not on every pod event: a
    /// (re)list applies thousands of pods in a row.
    fn touch_pod(&mut self, namespace: &str, pod: &str) {
        let joined = self.joined.get_mut().unwrap_or_else(|p| p.into_inner());
        if !joined.all {
            joined
                .dirty_pods
                .entry(namespace.to_string())
                .or_default()
                .insert(pod.to_string());
        }
    }

    pub fn apply(&mut self, object: Object) {
        match object {
            Object::Namespace(ns) => {
                self.namespaces.insert(ns.name.clone(), ns);
            }
            Object::Service(svc) => {
                self.gateway_mut().services_changed();
                self.services.insert(svc.key.clone(), svc);
            }
            Object::EndpointSlice(slice) => {
                let service = slice.service.clone();
                self.touch(&service);
                let key = (slice.namespace.clone(), slice.name.clone());
                if let Some(old) = self.slices.insert(key, slice)
                    && old.service != service
                {
                    self.touch(&old.service);
                }
            }
            Object::Pod(pod) => {
                let key = (pod.namespace.clone(), pod.name.clone());
                let account_changed = self
                    .pods
                    .get(&key)
                    .is_none_or(|old| old.service_account != pod.service_account);
                self.pods.insert(key.clone(), pod);
                if account_changed {
                    self.touch_pod(&key.0, &key.1);
                }
            }
            Object::Route(route) => self.gateway_mut().apply_route(route),
            Object::ReferenceGrant(grant) => self.gateway_mut().apply_grant(grant),
        }
    }

    fn gateway_mut(&mut self) -> &mut GatewayIndex {
        self.gateway.get_mut().unwrap_or_else(|p| p.into_inner())
    }

    pub fn delete(&mut self, object: &ObjectRef) {
        let key = || {
            (
                object.namespace.clone().unwrap_or_default(),
                object.name.clone(),
            )
        };
        match object.kind {
            "Namespace" => {
                self.namespaces.remove(&object.name);
            }
            "Service" => {
                let (namespace, name) = key();
                self.gateway_mut().services_changed();
                self.services.remove(&ServiceKey { namespace, name });
            }
            "EndpointSlice" => {
                if let Some(old) = self.slices.remove(&key()) {
                    self.touch(&old.service);
                }
            }
            "Pod" => {
                let (namespace, name) = key();
                if self
                    .pods
                    .remove(&(namespace.clone(), name.clone()))
                    .is_some()
                {
                    self.touch_pod(&namespace, &name);
                }
            }
            "HTTPRoute" | "GRPCRoute" => {
                let (namespace, name) = key();
                let kind = route_kind(object.kind);
                self.gateway_mut().delete_route(&RouteKey {
                    kind,
                    namespace,
                    name,
                });
            }
            "ReferenceGrant" => {
                let (namespace, name) = key();
                self.gateway_mut().delete_grant(&namespace, &name);
            }
            _ => {}
        }
    }

    /// Replaces every object of `kind` with `objects` (a re-list), except
    /// the objects named in `keep`, whose current versions stay: they
    /// failed to parse this time, and their last good versions keep serving.
    pub fn reset(&mut self, kind: &str, objects: Vec<Object>, keep: &[ObjectRef]) {
        let kept = |namespace: &str, name: &str| {
            keep.iter().any(|r| {
                r.kind == kind
                    && r.name == name
                    && r.namespace.as_deref().unwrap_or_default() == namespace
            })
        };
        match kind {
            "Namespace" => self.namespaces.retain(|name, _| kept("", name)),
            "Service" => {
                self.gateway_mut().services_changed();
                self.services.retain(|k, _| kept(&k.namespace, &k.name));
            }
            "EndpointSlice" => self.slices.retain(|(ns, name), _| kept(ns, name)),
            "Pod" => self.pods.retain(|(ns, name), _| kept(ns, name)),
            "HTTPRoute" | "GRPCRoute" => self
                .gateway_mut()
                .retain_routes(route_kind(kind), |k| kept(&k.namespace, &k.name)),
            "ReferenceGrant" => self.gateway_mut().retain_grants(kept),
            _ => {}
        }
        if matches!(kind, "EndpointSlice" | "Pod") {
            self.joined.get_mut().unwrap_or_else(|p| p.into_inner()).all = true;
        }
        for object in objects {
            self.apply(object);
        }
    }

    /// Whether a service with this key is indexed.
    pub fn has_service(&self, key: &ServiceKey) -> bool {
        self.services.contains_key(key)
    }

    /// The service that already claims `vip` (as any of its cluster IPs),
    /// if any.
    pub fn service_with_vip(&self, vip: std::net::IpAddr) -> Option<&ServiceKey> {
        self.services
            .values()
            .find(|s| s.vips().any(|v| v == vip))
            .map(|s| &s.key)
    }

    /// The endpoints of one service's slices, each with its pod's service
    /// account, in a stable order (so resource versions stay stable across
    /// reloads that only reorder slices).
    fn join<'s>(&self, slices: impl Iterator<Item = &'s Slice>) -> Vec<Endpoint> {
        let mut list = Vec::new();
        for slice in slices {
            for ep in &slice.endpoints {
                let mut ep = ep.clone();
                ep.service_account = ep.pod.as_ref().and_then(|pod| {
                    self.pods
                        .get(&(slice.namespace.clone(), pod.clone()))
                        .map(|w| w.service_account.clone())
                });
                list.push(ep);
            }
        }
        list.sort_by_key(|e| e.address);
        list
    }

    /// Joins the index into a mesh snapshot.
    pub fn mesh(&self) -> Mesh {
        let mut joined = self.joined();
        let dirty_pods = std::mem::take(&mut joined.dirty_pods);
        if !joined.all {
            // Only the namespaces of those pods are looked through.
            for (namespace, pods) in &dirty_pods {
                let slices = self
                    .slices
                    .range((namespace.clone(), String::new())..)
                    .take_while(|((ns, _), _)| ns == namespace);
                for (_, slice) in slices {
                    let names_a_dirty_pod = slice
                        .endpoints
                        .iter()
                        .any(|ep| ep.pod.as_ref().is_some_and(|pod| pods.contains(pod)));
                    if names_a_dirty_pod {
                        joined.dirty.insert(slice.service.clone());
                    }
                }
            }
        }
        if joined.all || joined.dirty.len() > JOIN_ONE_BY_ONE {
            let mut by_service: BTreeMap<&ServiceKey, Vec<&Slice>> = BTreeMap::new();
            for slice in self.slices.values() {
                by_service.entry(&slice.service).or_default().push(slice);
            }
            let fresh: BTreeMap<ServiceKey, Arc<Vec<Endpoint>>> = by_service
                .into_iter()
                .map(|(key, slices)| {
                    let endpoints = self.join(slices.into_iter());
                    // Unchanged services keep their Arc.
                    let endpoints = match joined.endpoints.get(key) {
                        Some(old) if **old == endpoints => old.clone(),
                        _ => Arc::new(endpoints),
                    };
                    (key.clone(), endpoints)
                })
                .collect();
            joined.endpoints = fresh;
        } else {
            for key in std::mem::take(&mut joined.dirty) {
                let endpoints = self.join(
                    self.slices
                        .values()
                        .filter(|s| s.service == key)
                        .map(|s| &**s),
                );
                if endpoints.is_empty() && !self.slices.values().any(|s| s.service == key) {
                    joined.endpoints.remove(&key);
                } else {
                    joined.endpoints.insert(key, Arc::new(endpoints));
                }
            }
        }
        joined.all = false;
        joined.dirty.clear();
        let endpoints = joined.endpoints.clone();
        drop(joined);
        let mut mesh = Mesh {
            services: self.services.clone(),
            endpoints,
            workloads: self
                .pods
                .values()
                .map(|w| (node_id(&w.namespace, &w.name), w.clone()))
                .collect(),
            namespaces: self.namespaces.clone(),
            routing: Default::default(),
            authorization: Default::default(),
            routes: Default::default(),
        };
        // User input is checked here, where it enters: translation gets
        // only routing that parsed and whose targets exist in this mesh.
        let mut routing = lock(&self.routing).update(&mesh);
        let (authorization, problems) = lock(&self.authorization).update(&mesh);
        // Routes are checked against the Services (their ports, their own
        // routing annotations, which a route replacing is reported with).
        let (routes, conflicts) = lock(&self.gateway).update(&mesh);
        if !problems.is_empty() || !conflicts.is_empty() {
            // One list of annotation problems: reported as routing's are.
            routing.errors.extend(problems);
            routing.errors.extend(conflicts);
            routing.errors.sort();
            routing.errors.dedup();
        }
        mesh.routing = Arc::new(routing);
        mesh.authorization = Arc::new(authorization);
        mesh.routes = routes;
        mesh
    }
}

fn route_kind(kind: &str) -> RouteKind {
    if kind == "GRPCRoute" {
        RouteKind::Grpc
    } else {
        RouteKind::Http
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Conditions;

    fn slice(name: &str, service: &str, pods: &[(&str, [u8; 4])]) -> Object {
        Object::EndpointSlice(Arc::new(Slice {
            namespace: "shop".into(),
            name: name.into(),
            service: ServiceKey::new("shop", service),
            endpoints: pods
                .iter()
                .map(|(pod, ip)| Endpoint {
                    address: std::net::IpAddr::from(*ip),
                    ports: BTreeMap::from([("http".to_string(), 8080)]),
                    conditions: Conditions::default(),
                    pod: Some(pod.to_string()),
                    service_account: None,
                })
                .collect(),
        }))
    }

    fn pod(name: &str, account: &str) -> Object {
        Object::Pod(Arc::new(Workload {
            namespace: "shop".into(),
            name: name.into(),
            ip: None,
            service_account: account.into(),
            annotations: BTreeMap::new(),
            interception: Default::default(),
            mtls: None,
        }))
    }

    /// The same objects in a fresh index: what the kept join must equal.
    fn fresh(index: &Index) -> Index {
        let mut fresh = Index::default();
        for slice in index.slices.values() {
            fresh.apply(Object::EndpointSlice(slice.clone()));
        }
        for pod in index.pods.values() {
            fresh.apply(Object::Pod(pod.clone()));
        }
        fresh
    }

    #[test]
    fn the_kept_join_equals_a_fresh_one_and_reuses_what_did_not_change() {
        let mut index = Index::default();
        index.apply(slice(
            "reviews-1",
            "reviews",
            &[("reviews-0", [198, 18, 0, 3])],
        ));
        index.apply(slice(
            "ratings-1",
            "ratings",
            &[("ratings-0", [198, 18, 0, 5])],
        ));
        let first = index.mesh();
        let ratings = ServiceKey::new("shop", "ratings");
        let reviews = ServiceKey::new("shop", "reviews");
        assert_eq!(first.endpoints[&reviews][0].service_account, None);

        // Each step: the join equals a fresh index's; untouched services
        // keep their Arc.
        type Step = Box<dyn Fn(&mut Index)>;
        let steps: Vec<Step> = vec![
            // The pod arrives after its endpoint: the account joins in.
            Box::new(|i| i.apply(pod("reviews-0", "reviews"))),
            // Another slice of the same service.
            Box::new(|i| {
                i.apply(slice(
                    "reviews-2",
                    "reviews",
                    &[("reviews-1", [198, 18, 0, 4])],
                ))
            }),
            // A pod's account changes.
            Box::new(|i| i.apply(pod("reviews-0", "reviews-v2"))),
            // A slice goes.
            Box::new(|i| {
                i.delete(&ObjectRef {
                    kind: "EndpointSlice",
                    namespace: Some("shop".into()),
                    name: "reviews-1".into(),
                })
            }),
            // A pod goes.
            Box::new(|i| {
                i.delete(&ObjectRef {
                    kind: "Pod",
                    namespace: Some("shop".into()),
                    name: "reviews-0".into(),
                })
            }),
            // The service's last slice goes.
            Box::new(|i| {
                i.delete(&ObjectRef {
                    kind: "EndpointSlice",
                    namespace: Some("shop".into()),
                    name: "reviews-2".into(),
                })
            }),
        ];
        let mut before = first;
        for (n, step) in steps.iter().enumerate() {
            step(&mut index);
            let mesh = index.mesh();
            assert_eq!(mesh.endpoints, fresh(&index).mesh().endpoints, "step {n}");
            assert!(
                Arc::ptr_eq(&before.endpoints[&ratings], &mesh.endpoints[&ratings]),
                "step {n}: ratings was joined again"
            );
            before = mesh;
        }
        assert!(!before.endpoints.contains_key(&reviews));
    }
}
