//! The discovery index: accepted objects by kind, joined into a [`Mesh`].
//!
//! Sources `apply` and `delete` objects (a watch event, a registry file) and
//! then ask for a [`Mesh`] snapshot. The join happens here: EndpointSlices
//! are grouped under their Service, and each endpoint learns the service
//! account of the pod behind it so clients can verify the right identity.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::objects::{Object, ObjectRef, Slice};
use crate::model::{Mesh, Namespace, Service, ServiceKey, Workload, node_id};

type NamespacedName = (String, String);

#[derive(Clone, Debug, Default)]
pub struct Index {
    namespaces: BTreeMap<String, Arc<Namespace>>,
    services: BTreeMap<ServiceKey, Arc<Service>>,
    slices: BTreeMap<NamespacedName, Slice>,
    pods: BTreeMap<NamespacedName, Arc<Workload>>,
}

impl Index {
    pub fn apply(&mut self, object: Object) {
        match object {
            Object::Namespace(ns) => {
                self.namespaces.insert(ns.name.clone(), Arc::new(ns));
            }
            Object::Service(svc) => {
                self.services.insert(svc.key.clone(), Arc::new(svc));
            }
            Object::EndpointSlice(slice) => {
                self.slices
                    .insert((slice.namespace.clone(), slice.name.clone()), slice);
            }
            Object::Pod(pod) => {
                self.pods
                    .insert((pod.namespace.clone(), pod.name.clone()), Arc::new(pod));
            }
        }
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
                self.services.remove(&ServiceKey { namespace, name });
            }
            "EndpointSlice" => {
                self.slices.remove(&key());
            }
            "Pod" => {
                self.pods.remove(&key());
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
            "Service" => self.services.retain(|k, _| kept(&k.namespace, &k.name)),
            "EndpointSlice" => self.slices.retain(|(ns, name), _| kept(ns, name)),
            "Pod" => self.pods.retain(|(ns, name), _| kept(ns, name)),
            _ => {}
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

    /// Joins the index into a mesh snapshot.
    pub fn mesh(&self) -> Mesh {
        let mut endpoints: BTreeMap<ServiceKey, Vec<_>> = BTreeMap::new();
        for slice in self.slices.values() {
            let list = endpoints.entry(slice.service.clone()).or_default();
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
        Mesh {
            services: self.services.clone(),
            endpoints: endpoints
                .into_iter()
                .map(|(k, mut v)| {
                    // A stable order keeps resource versions stable across
                    // reloads that only reorder slices.
                    v.sort_by_key(|e| e.address);
                    (k, Arc::new(v))
                })
                .collect(),
            workloads: self
                .pods
                .values()
                .map(|w| (node_id(&w.namespace, &w.name), w.clone()))
                .collect(),
            namespaces: self.namespaces.clone(),
        }
    }
}
