//! The routing in force across the mesh: every Service's routing and every
//! proxy's egress scope, parsed from the `meshd.io/*` annotations (with
//! [`meshd_api::annotations::routing`]) and checked against the mesh (split
//! targets and route backends must exist), where the mesh is built: the
//! model that reaches translation carries validated routing only.
//!
//! ```text
//! Index::mesh ──> RoutingIndex::update ──> Mesh.routing (MeshRouting) ──> translate
//!                   │ invalid (or a target that is not in the mesh): the service
//!                   │ keeps its last good Routing; the errors are reported
//!                   └ egress: Namespace / Pod `meshd.io/egress` ──> Egress per proxy
//! ```
//!
//! Each discovery source's index owns one, for as long as the source runs,
//! so a bad edit never takes a service back to default routing: the
//! service keeps what last worked until the annotation is fixed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use meshd_api::annotations::routing::{
    AnnotationError, Annotations, EGRESS, Egress, EgressRule, ROUTES, Routing, Severity,
    TRAFFIC_SPLIT, accepted, parse, pod_egress, validate_namespace,
};

use crate::model::{Mesh, MeshRouting, Service, ServiceKey, node_id};

/// Checks that every split target and route backend of `service` is a
/// service of its namespace serving each of its HTTP ports.
pub fn check_references(service: &Service, routing: &Routing, mesh: &Mesh) -> Vec<AnnotationError> {
    let mut errors = Vec::new();
    let http_ports: Vec<u16> = service
        .ports
        .iter()
        .filter(|p| p.protocol.is_http())
        .map(|p| p.port)
        .collect();
    let targets = [
        (
            TRAFFIC_SPLIT,
            routing
                .split
                .iter()
                .map(|t| t.service.as_str())
                .collect::<Vec<_>>(),
        ),
        (
            ROUTES,
            routing.routes.iter().map(|r| r.backend.as_str()).collect(),
        ),
    ];
    for (annotation, names) in targets {
        if names.is_empty() {
            continue;
        }
        let mut problems = Vec::new();
        if http_ports.is_empty() {
            problems.push(format!(
                "Service {} has no HTTP port, so requests cannot be routed",
                service.key
            ));
        }
        let mut seen = BTreeSet::new();
        for name in names.into_iter().filter(|n| seen.insert(*n)) {
            let key = ServiceKey::new(service.key.namespace.clone(), name);
            match mesh.services.get(&key) {
                None => problems.push(format!(
                    "`{name}` is not a Service in namespace {}",
                    service.key.namespace
                )),
                Some(target) => {
                    let missing: Vec<String> = http_ports
                        .iter()
                        .filter(|p| !target.ports.iter().any(|q| q.port == **p))
                        .map(u16::to_string)
                        .collect();
                    if !missing.is_empty() {
                        problems.push(format!("Service {key} has no port {}", missing.join(", ")));
                    }
                }
            }
        }
        if !problems.is_empty() {
            errors.push(AnnotationError {
                severity: Severity::Rejected,
                object: format!("Service {}", service.key),
                annotation: annotation.to_string(),
                value: service
                    .annotations
                    .get(annotation)
                    .cloned()
                    .unwrap_or_default(),
                message: format!(
                    "{}; accepted: {}",
                    problems.join("; "),
                    accepted(annotation)
                ),
            });
        }
    }
    errors
}

/// The last good routing of every service and the last good egress rule of
/// every namespace and pod, across meshes. A discovery source's index owns
/// it and calls [`RoutingIndex::update`] for each mesh it builds.
#[derive(Clone, Debug, Default)]
pub struct RoutingIndex {
    services: BTreeMap<ServiceKey, Arc<Routing>>,
    namespace_egress: BTreeMap<String, Arc<EgressRule>>,
    pod_egress: BTreeMap<String, Arc<EgressRule>>,
}

impl RoutingIndex {
    /// Parses every service's routing and every proxy's egress scope.
    /// Where a value is invalid (or a split target or route backend is not
    /// in the mesh), the last good routing of that service (or the last
    /// good egress of that namespace or pod) stays in force (defaults when
    /// there never was one), and the errors are returned with the rest.
    pub fn update(&mut self, mesh: &Mesh) -> MeshRouting {
        let mut errors = BTreeSet::new();
        for ns in mesh.namespaces.values() {
            if let Err(e) = validate_namespace(&ns.name, &ns.annotations) {
                errors.extend(e);
            }
        }
        let no_annotations = Annotations::new();
        let mut services = BTreeMap::new();
        for svc in mesh.services.values() {
            let namespace = mesh
                .namespaces
                .get(&svc.key.namespace)
                .map_or(&no_annotations, |n| &n.annotations);
            let parsed = parse(&svc.key, &svc.annotations, namespace).and_then(|routing| {
                let problems = check_references(svc, &routing, mesh);
                if problems.is_empty() {
                    Ok(routing)
                } else {
                    Err(problems)
                }
            });
            let routing = match parsed {
                Ok(routing) => {
                    // Keep the Arc when nothing changed.
                    let routing = match self.services.get(&svc.key) {
                        Some(old) if **old == routing => old.clone(),
                        _ => Arc::new(routing),
                    };
                    self.services.insert(svc.key.clone(), routing.clone());
                    Some(routing)
                }
                Err(e) => {
                    errors.extend(e);
                    self.services.get(&svc.key).cloned()
                }
            };
            if let Some(routing) = routing.filter(|r| **r != Routing::DEFAULT) {
                services.insert(svc.key.clone(), routing);
            }
        }
        self.services.retain(|k, _| mesh.services.contains_key(k));

        for ns in mesh.namespaces.values() {
            let object = format!("Namespace {}", ns.name);
            match ns
                .annotations
                .get(EGRESS)
                .map(|v| EgressRule::parse(&object, v))
            {
                None => {
                    self.namespace_egress.remove(&ns.name);
                }
                Some(Ok(rule)) => {
                    self.namespace_egress
                        .insert(ns.name.clone(), Arc::new(rule));
                }
                // Reported by validate_namespace above; the last good stays.
                Some(Err(_)) => {}
            }
        }
        self.namespace_egress
            .retain(|ns, _| mesh.namespaces.contains_key(ns));
        let mut egress = BTreeMap::new();
        let mut shared: BTreeSet<Arc<Egress>> = BTreeSet::new();
        for (id, w) in &mesh.workloads {
            match pod_egress(&w.namespace, &w.name, &w.annotations) {
                Ok(None) => {
                    self.pod_egress.remove(id);
                }
                Ok(Some(rule)) => {
                    self.pod_egress.insert(id.clone(), Arc::new(rule));
                }
                Err(e) => {
                    errors.insert(e);
                }
            }
            let rule = self
                .pod_egress
                .get(id)
                .or_else(|| self.namespace_egress.get(&w.namespace));
            if let Some(scope) = rule.and_then(|r| r.resolve(&w.namespace)) {
                // One Arc per distinct scope.
                let scope = match shared.get(&scope) {
                    Some(s) => s.clone(),
                    None => {
                        let s = Arc::new(scope);
                        shared.insert(s.clone());
                        s
                    }
                };
                egress.insert(node_id(&w.namespace, &w.name), scope);
            }
        }
        self.pod_egress
            .retain(|id, _| mesh.workloads.contains_key(id));
        MeshRouting {
            services,
            egress,
            errors: errors.into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Namespace, Protocol, ServicePort, Workload};
    use meshd_api::annotations::routing::{EGRESS, RETRIES, TIMEOUT};
    use std::time::Duration;

    fn key() -> ServiceKey {
        ServiceKey::new("shop", "reviews")
    }

    fn ann(pairs: &[(&str, &str)]) -> Annotations {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn service(name: &str, ports: &[u16], annotations: &[(&str, &str)]) -> Arc<Service> {
        Arc::new(Service {
            key: ServiceKey::new("shop", name),
            vip: None,
            secondary_vips: Vec::new(),
            external_name: None,
            ports: ports
                .iter()
                .map(|&port| ServicePort {
                    name: Some(format!("http-{port}")),
                    port,
                    protocol: Protocol::Http,
                })
                .collect(),
            annotations: ann(annotations),
        })
    }

    fn mesh(services: Vec<Arc<Service>>) -> Mesh {
        let mut mesh = Mesh::default();
        for s in services {
            mesh.services.insert(s.key.clone(), s);
        }
        mesh
    }

    #[test]
    fn an_invalid_annotation_keeps_the_last_good_routing() {
        let mut index = RoutingIndex::default();
        let first = index.update(&mesh(vec![service("reviews", &[80], &[(TIMEOUT, "5s")])]));
        assert!(first.errors.is_empty());
        assert_eq!(first.service(&key()).timeout, Duration::from_secs(5));

        // A bad edit: the 5 s timeout stays, the error is reported; the
        // good half of the edit waits with it.
        let second = index.update(&mesh(vec![service(
            "reviews",
            &[80],
            &[(TIMEOUT, "5 seconds"), (RETRIES, "2")],
        )]));
        assert_eq!(second.errors.len(), 1);
        assert_eq!(second.errors[0].annotation, TIMEOUT);
        assert_eq!(second.service(&key()).timeout, Duration::from_secs(5));
        assert_eq!(second.service(&key()).retries, None);

        // Fixed: applied, the error is gone.
        let third = index.update(&mesh(vec![service(
            "reviews",
            &[80],
            &[(TIMEOUT, "1s"), (RETRIES, "2")],
        )]));
        assert!(third.errors.is_empty());
        assert_eq!(third.service(&key()).timeout, Duration::from_secs(1));
        assert_eq!(third.service(&key()).retries.as_ref().unwrap().attempts, 2);

        // A service that never had good routing gets the default.
        let fresh = RoutingIndex::default().update(&mesh(vec![service(
            "reviews",
            &[80],
            &[(TIMEOUT, "nope")],
        )]));
        assert_eq!(*fresh.service(&key()), Routing::DEFAULT);

        // A deleted service is forgotten: recreated with a bad value, it
        // starts from the default.
        index.update(&mesh(vec![]));
        let again = index.update(&mesh(vec![service("reviews", &[80], &[(TIMEOUT, "x")])]));
        assert_eq!(*again.service(&key()), Routing::DEFAULT);
    }

    #[test]
    fn split_targets_must_exist_with_the_same_ports() {
        let split = [(TRAFFIC_SPLIT, "reviews-v1=90,reviews-v2=10")];
        let mut index = RoutingIndex::default();
        let good = index.update(&mesh(vec![
            service("reviews", &[80], &split),
            service("reviews-v1", &[80], &[]),
            service("reviews-v2", &[80, 9090], &[]),
        ]));
        assert!(good.errors.is_empty(), "{:?}", good.errors);
        assert_eq!(good.service(&key()).split.len(), 2);

        // reviews-v2 goes away: an error for the annotation, and the last
        // good split stays (translation drops the missing cluster).
        let missing = index.update(&mesh(vec![
            service("reviews", &[80], &split),
            service("reviews-v1", &[80], &[]),
        ]));
        assert_eq!(missing.errors.len(), 1);
        let e = &missing.errors[0];
        assert_eq!(e.object, "Service shop/reviews");
        assert_eq!(e.annotation, TRAFFIC_SPLIT);
        assert_eq!(e.value, "reviews-v1=90,reviews-v2=10");
        assert!(
            e.message
                .contains("`reviews-v2` is not a Service in namespace shop"),
            "{e}"
        );
        assert_eq!(missing.service(&key()).split.len(), 2);

        // A target without the port.
        let errors = RoutingIndex::default()
            .update(&mesh(vec![
                service("reviews", &[80, 8080], &split),
                service("reviews-v1", &[80, 8080], &[]),
                service("reviews-v2", &[80], &[]),
            ]))
            .errors;
        assert!(
            errors[0]
                .message
                .contains("Service shop/reviews-v2 has no port 8080"),
            "{errors:?}"
        );

        // Route backends too.
        let errors = RoutingIndex::default()
            .update(&mesh(vec![service(
                "reviews",
                &[80],
                &[(ROUTES, r#"[{"pathPrefix":"/a","backend":"ghost"}]"#)],
            )]))
            .errors;
        assert_eq!(errors[0].annotation, ROUTES);
        assert!(errors[0].message.contains("`ghost` is not a Service"));
    }

    fn workload(name: &str, annotations: &[(&str, &str)]) -> Arc<Workload> {
        Arc::new(Workload {
            namespace: "shop".into(),
            name: name.into(),
            ip: None,
            service_account: "default".into(),
            annotations: ann(annotations),
            interception: Default::default(),
            mtls: None,
        })
    }

    #[test]
    fn egress_scopes_per_proxy_with_last_good() {
        let mut m = mesh(vec![]);
        m.namespaces.insert(
            "shop".into(),
            Arc::new(Namespace {
                name: "shop".into(),
                annotations: ann(&[(EGRESS, "./*")]),
                ..Default::default()
            }),
        );
        for w in [
            workload("a", &[]),
            workload("b", &[(EGRESS, "db/*")]),
            workload("c", &[(EGRESS, "*/*")]),
        ] {
            m.workloads.insert(w.node_id(), w);
        }
        let mut index = RoutingIndex::default();
        let r = index.update(&m);
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert_eq!(r.egress("a.shop").unwrap().to_string(), "shop/*");
        assert_eq!(r.egress("b.shop").unwrap().to_string(), "db/*");
        assert!(r.egress("c.shop").is_none());

        // b's rule breaks: it keeps db/*; a new pod with a bad rule falls
        // back to its namespace's.
        for w in [
            workload("b", &[(EGRESS, "db")]),
            workload("d", &[(EGRESS, "nope")]),
        ] {
            m.workloads.insert(w.node_id(), w);
        }
        let r = index.update(&m);
        assert_eq!(r.errors.len(), 2, "{:?}", r.errors);
        assert_eq!(r.errors[0].object, "Pod shop/b");
        assert_eq!(r.egress("b.shop").unwrap().to_string(), "db/*");
        assert_eq!(r.egress("d.shop").unwrap().to_string(), "shop/*");
    }
}
