//! The authorization in force across the mesh: every Service's policy,
//! parsed from the `meshd.io/*` authorization annotations of the Service
//! and its Namespace ([`meshd_api::annotations::authorization`]) and
//! checked against the Service (rule ports must be its ports), where the
//! mesh is built, as routing is ([`super::routing`]).
//!
//! ```text
//! Index::mesh ──> AuthorizationIndex::update ──> Mesh.authorization ──> translate/authz.rs
//!                   │ invalid: the service keeps its last good Policy
//!                   └ errors join the routing errors (log, metric,
//!                     /debug/routing, an Event on the object)
//! ```
//!
//! A bad edit never opens a service up nor shuts it: the service keeps
//! what last worked until the annotation is fixed. A service that never
//! had a good policy gets the mesh default.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use meshd_api::annotations::authorization::{Policy, check_ports, parse};
use meshd_api::annotations::routing::{AnnotationError, Annotations};

use crate::model::{Mesh, MeshAuthorization, ServiceKey};

/// The last good policy of every service, across meshes. A discovery
/// source's index owns it and calls [`AuthorizationIndex::update`] for
/// each mesh it builds.
#[derive(Clone, Debug, Default)]
pub struct AuthorizationIndex {
    services: BTreeMap<ServiceKey, Arc<Policy>>,
    namespaces: BTreeMap<String, Arc<Policy>>,
}

impl AuthorizationIndex {
    /// Parses every namespace's and service's policy. Where a value is
    /// invalid the last good policy of that object stays in force (the
    /// mesh default when there never was one), and the errors are returned.
    pub fn update(&mut self, mesh: &Mesh) -> (MeshAuthorization, Vec<AnnotationError>) {
        let mut errors = Vec::new();
        let mut namespaces = BTreeMap::new();
        for ns in mesh.namespaces.values() {
            let parsed =
                meshd_api::annotations::authorization::parse_namespace(&ns.name, &ns.annotations);
            if let Some(policy) = in_force(&mut self.namespaces, &ns.name, parsed, &mut errors) {
                namespaces.insert(ns.name.clone(), policy);
            }
        }
        self.namespaces
            .retain(|k, _| mesh.namespaces.contains_key(k));
        let no_annotations = Annotations::new();
        let mut services = BTreeMap::new();
        let mut refused = BTreeSet::new();
        for svc in mesh.services.values() {
            let namespace = mesh
                .namespaces
                .get(&svc.key.namespace)
                .map_or(&no_annotations, |n| &n.annotations);
            let parsed = match parse(&svc.key, &svc.annotations, namespace) {
                // The Namespace's parse errors are reported once, above.
                Err(e) => Err(e
                    .into_iter()
                    .filter(|e| e.object.starts_with("Service "))
                    .collect()),
                // A Namespace rule's port that does not fit this Service is
                // reported on the Namespace, once per Service.
                Ok(policy) => {
                    let ports: Vec<u16> = svc.ports.iter().map(|p| p.port).collect();
                    let problems =
                        check_ports(&svc.key, &ports, &svc.annotations, namespace, &policy);
                    if problems.is_empty() {
                        Ok(policy)
                    } else {
                        Err(problems)
                    }
                }
            };
            if parsed.is_err() {
                refused.insert(svc.key.clone());
            }
            if let Some(policy) = in_force(&mut self.services, &svc.key, parsed, &mut errors) {
                services.insert(svc.key.clone(), policy);
            }
        }
        self.services.retain(|k, _| mesh.services.contains_key(k));
        (
            MeshAuthorization {
                services,
                namespaces,
                refused,
            },
            errors,
        )
    }
}

/// The policy in force for `key` from its latest parse: the new one when
/// good (the same `Arc` as before when unchanged: translation tells
/// unchanged inbound sides apart by it), else the last good one, with the
/// errors added to `errors`. `None` when it is the mesh default.
fn in_force<K: Ord + Clone>(
    last_good: &mut BTreeMap<K, Arc<Policy>>,
    key: &K,
    parsed: Result<Policy, Vec<AnnotationError>>,
    errors: &mut Vec<AnnotationError>,
) -> Option<Arc<Policy>> {
    let policy = match parsed {
        Ok(policy) => {
            let policy = match last_good.get(key) {
                Some(old) if **old == policy => old.clone(),
                _ => Arc::new(policy),
            };
            last_good.insert(key.clone(), policy.clone());
            Some(policy)
        }
        Err(e) => {
            errors.extend(e);
            last_good.get(key).cloned()
        }
    };
    policy.filter(|p| **p != Policy::NONE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Namespace, Protocol, Service, ServicePort};
    use meshd_api::annotations::authorization::{
        ALLOW, AUTHORIZATION, Caller, DENY, DefaultPolicy,
    };

    fn ann(pairs: &[(&str, &str)]) -> Annotations {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn mesh(annotations: &[(&str, &str)], namespace: &[(&str, &str)]) -> Mesh {
        let mut mesh = Mesh::default();
        let svc = Arc::new(Service {
            key: ServiceKey::new("shop", "reviews"),
            vip: None,
            secondary_vips: Vec::new(),
            external_name: None,
            ports: vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                protocol: Protocol::Http,
            }],
            annotations: ann(annotations),
        });
        mesh.services.insert(svc.key.clone(), svc);
        mesh.namespaces.insert(
            "shop".into(),
            Arc::new(Namespace {
                name: "shop".into(),
                annotations: ann(namespace),
                ..Default::default()
            }),
        );
        mesh
    }

    fn key() -> ServiceKey {
        ServiceKey::new("shop", "reviews")
    }

    #[test]
    fn an_invalid_policy_keeps_the_last_good_one() {
        let mut index = AuthorizationIndex::default();
        let (first, errors) = index.update(&mesh(&[(ALLOW, "shop/web")], &[]));
        assert!(errors.is_empty(), "{errors:?}");
        let good = first.service(&key()).clone();
        assert_eq!(
            good.allow[0].callers,
            [Caller::ServiceAccount {
                namespace: "shop".into(),
                name: "web".into()
            }]
        );

        // A bad edit: the old policy stays, the error names everything.
        let (second, errors) = index.update(&mesh(&[(ALLOW, "shop/web GETT")], &[]));
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].object, "Service shop/reviews");
        assert_eq!(errors[0].annotation, ALLOW);
        assert_eq!(errors[0].value, "shop/web GETT");
        assert!(errors[0].message.contains("accepted: "), "{}", errors[0]);
        assert_eq!(*second.service(&key()), good);

        // A port the service does not have.
        let (third, errors) = index.update(&mesh(&[(DENY, "* port=8080")], &[]));
        assert!(
            errors[0]
                .message
                .contains("Service shop/reviews has no port 8080"),
            "{errors:?}"
        );
        assert_eq!(*third.service(&key()), good);

        // A Namespace rule's port the Service does not have: reported on
        // the Namespace, with its value (not the Service's, which is
        // empty), naming the Service.
        let (_, errors) = index.update(&mesh(&[], &[(ALLOW, "./* port=9090")]));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].object, "Namespace shop");
        assert_eq!(errors[0].value, "./* port=9090");
        assert!(
            errors[0]
                .message
                .contains("Service shop/reviews has no port 9090"),
            "{errors:?}"
        );

        // Fixed, and from the namespace: applied.
        let (fourth, errors) = index.update(&mesh(&[], &[(AUTHORIZATION, "deny-all")]));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(fourth.service(&key()).default, Some(DefaultPolicy::DenyAll));

        // A bad namespace value is reported once, on the Namespace.
        let (_, errors) = index.update(&mesh(&[], &[(AUTHORIZATION, "deny-some")]));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].object, "Namespace shop");

        // A service that never had a good policy gets the mesh default.
        let (fresh, _) = AuthorizationIndex::default().update(&mesh(&[(DENY, "nope")], &[]));
        assert_eq!(*fresh.service(&key()), Policy::NONE);
    }
}
