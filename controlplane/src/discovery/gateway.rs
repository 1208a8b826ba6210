//! Gateway API routes checked against the mesh: which Service ports each
//! HTTPRoute / GRPCRoute attaches to, which of its backends resolve, the
//! order Envoy tries the routes in, and each route's conditions.
//!
//! ```text
//! Object::Route / Object::ReferenceGrant ──> GatewayIndex (last good route, grants)
//!        Index::mesh ──> GatewayIndex::update ──> Mesh.routes ──> translate/gateway.rs
//!                          │ status per parent: Accepted, ResolvedRefs
//!                          └ a Service whose own routing annotations a route
//!                            replaces: a routing problem on the Service
//! ```
//!
//! A route whose new version the mesh cannot use keeps serving its last
//! good version; its status says the new generation was refused and why.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use meshd_api::annotations::routing::{
    AnnotationError, RETRIES, ROUTES, Severity, TIMEOUT, TRAFFIC_SPLIT,
};
use meshd_api::gateway::{BackendRef, Grant, PathMatch, RouteError, RouteKind};

use super::objects::RouteObject;
use crate::model::{
    AttachedRoute, Condition, Mesh, MeshRoutes, ParentRef, ParentStatus, PortRoutes, Route,
    RouteEntry, RouteKey, RouteStatus, Service, ServiceKey,
};

/// One route as the sources last gave it.
#[derive(Clone, Debug)]
struct RouteState {
    /// The last version the mesh could use.
    good: Option<Arc<Route>>,
    /// The latest generation, and why it was refused if it was.
    generation: Option<i64>,
    refused: Option<RouteError>,
    /// The Service parents of the latest version.
    parents: Vec<ParentRef>,
}

/// Every route and ReferenceGrant, across meshes.
#[derive(Clone, Debug, Default)]
pub struct GatewayIndex {
    routes: BTreeMap<RouteKey, RouteState>,
    grants: BTreeMap<(String, String), Arc<Grant>>,
    /// The last result and its problems, handed out again (same `Arc`)
    /// while nothing they depend on changes.
    last: Arc<MeshRoutes>,
    last_problems: Vec<AnnotationError>,
    /// Routes, grants or Services changed since the last [`Self::update`].
    /// Endpoint and Pod changes, the common ones, leave routes as they
    /// are: they are not worked out again for those.
    dirty: bool,
}

impl GatewayIndex {
    /// Services changed: which ports routes attach to and which backends
    /// resolve may have too.
    pub fn services_changed(&mut self) {
        self.dirty = true;
    }

    pub fn apply_route(&mut self, object: RouteObject) {
        self.dirty = true;
        let previous = self.routes.remove(&object.key);
        let state = match object.route {
            Ok(route) => RouteState {
                good: Some(route),
                generation: object.generation,
                refused: None,
                parents: object.parents,
            },
            Err(error) => RouteState {
                good: previous.and_then(|p| p.good),
                generation: object.generation,
                refused: Some(error),
                parents: object.parents,
            },
        };
        self.routes.insert(object.key, state);
    }

    pub fn delete_route(&mut self, key: &RouteKey) {
        self.dirty = true;
        self.routes.remove(key);
    }

    pub fn apply_grant(&mut self, grant: Arc<Grant>) {
        self.dirty = true;
        self.grants
            .insert((grant.namespace.clone(), grant.name.clone()), grant);
    }

    pub fn delete_grant(&mut self, namespace: &str, name: &str) {
        self.dirty = true;
        self.grants
            .remove(&(namespace.to_string(), name.to_string()));
    }

    /// Keeps only the routes of `kind` that `keep` accepts (a re-list).
    pub fn retain_routes(&mut self, kind: RouteKind, keep: impl Fn(&RouteKey) -> bool) {
        self.dirty = true;
        self.routes.retain(|k, _| k.kind != kind || keep(k));
    }

    pub fn retain_grants(&mut self, keep: impl Fn(&str, &str) -> bool) {
        self.dirty = true;
        self.grants.retain(|(ns, name), _| keep(ns, name));
    }

    /// The routes in force for `mesh`, and the routing problems they cause
    /// (a Service whose own routing annotations a route replaces).
    pub fn update(&mut self, mesh: &Mesh) -> (Arc<MeshRoutes>, Vec<AnnotationError>) {
        if !self.dirty {
            return (self.last.clone(), self.last_problems.clone());
        }
        self.dirty = false;
        let mut routes = MeshRoutes::default();
        let mut attached_ports: BTreeMap<ServiceKey, BTreeSet<(u16, RouteKey)>> = BTreeMap::new();
        for (key, state) in &self.routes {
            let mut status = RouteStatus {
                generation: state.generation,
                parents: Vec::new(),
            };
            let Some(route) = &state.good else {
                // Never usable: every parent says why.
                let error = state.refused.as_ref();
                for parent in &state.parents {
                    status.parents.push(ParentStatus {
                        parent: parent.clone(),
                        accepted: refused(error),
                        resolved_refs: condition(
                            false,
                            "UnsupportedValue",
                            "the route was not accepted",
                        ),
                    });
                }
                routes.statuses.insert(key.clone(), status);
                continue;
            };
            let (resolved, resolved_refs) = self.resolve(mesh, route);
            let attached = Arc::new(AttachedRoute {
                route: route.clone(),
                resolved,
            });
            let mut parents = route.parents.clone();
            // A refused newer version may have other parents: report on
            // those too.
            for p in &state.parents {
                if !parents.contains(p) {
                    parents.push(p.clone());
                }
            }
            for parent in parents {
                let serves = route.parents.contains(&parent);
                let accepted = match (serves, &state.refused) {
                    (_, Some(error)) => {
                        let mut c = refused(Some(error));
                        if serves {
                            c.message.push_str(&format!(
                                "; the last accepted version{} keeps serving",
                                route
                                    .generation
                                    .map(|g| format!(" (generation {g})"))
                                    .unwrap_or_default()
                            ));
                        }
                        c
                    }
                    _ => condition(true, "Accepted", "attached to the Service"),
                };
                let ports = if serves {
                    match attach_ports(mesh, route.key.kind, &parent) {
                        Ok(ports) => ports,
                        Err(problem) => {
                            status.parents.push(ParentStatus {
                                parent,
                                accepted: problem,
                                resolved_refs: resolved_refs.clone(),
                            });
                            continue;
                        }
                    }
                } else {
                    Vec::new()
                };
                let service = ServiceKey::new(&parent.namespace, &parent.name);
                for port in ports {
                    attached_ports
                        .entry(service.clone())
                        .or_default()
                        .insert((port, route.key.clone()));
                    let port_routes = routes
                        .services
                        .entry(service.clone())
                        .or_default()
                        .entry(port)
                        .or_insert_with(|| Arc::new(PortRoutes::default()));
                    let port_routes = Arc::make_mut(port_routes);
                    let list = if route.key.namespace == service.namespace {
                        &mut port_routes.producer
                    } else {
                        port_routes
                            .consumers
                            .entry(route.key.namespace.clone())
                            .or_default()
                    };
                    for (r, rule) in route.rules.iter().enumerate() {
                        if rule.matches.is_empty() {
                            list.push(RouteEntry {
                                route: attached.clone(),
                                rule: r,
                                matched: None,
                            });
                        }
                        for m in 0..rule.matches.len() {
                            list.push(RouteEntry {
                                route: attached.clone(),
                                rule: r,
                                matched: Some(m),
                            });
                        }
                    }
                }
                status.parents.push(ParentStatus {
                    parent,
                    accepted,
                    resolved_refs: resolved_refs.clone(),
                });
            }
            routes.statuses.insert(key.clone(), status);
        }
        for ports in routes.services.values_mut() {
            for port_routes in ports.values_mut() {
                let port_routes = Arc::make_mut(port_routes);
                port_routes.producer.sort_by_cached_key(precedence);
                for list in port_routes.consumers.values_mut() {
                    list.sort_by_cached_key(precedence);
                }
            }
        }
        self.last_problems = conflicts(mesh, &attached_ports);
        if routes != *self.last {
            self.last = Arc::new(routes);
        }
        (self.last.clone(), self.last_problems.clone())
    }

    /// Which backend references of `route` resolve, and its ResolvedRefs
    /// condition.
    fn resolve(&self, mesh: &Mesh, route: &Route) -> (BTreeSet<BackendRef>, Condition) {
        let mut resolved = BTreeSet::new();
        let mut first: Option<(&'static str, String)> = None;
        let mut problems = Vec::new();
        for target in route.backend_refs() {
            match self.check_backend(mesh, route, target) {
                Ok(()) => {
                    resolved.insert(target.clone());
                }
                Err((reason, message)) => {
                    if first.is_none() {
                        first = Some((reason, message.clone()));
                    }
                    if !problems.contains(&message) {
                        problems.push(message);
                    }
                }
            }
        }
        let condition = match first {
            None => condition(true, "ResolvedRefs", "every backend reference resolved"),
            Some((reason, _)) => condition(false, reason, &problems.join("; ")),
        };
        (resolved, condition)
    }

    fn check_backend(
        &self,
        mesh: &Mesh,
        route: &Route,
        target: &BackendRef,
    ) -> Result<(), (&'static str, String)> {
        let name = format!("{}/{}", target.namespace, target.name);
        if let Some(kind) = &target.unsupported_kind {
            return Err((
                "InvalidKind",
                format!(
                    "backend {name} is a {kind}; accepted: a core Service (group \"\", kind Service)"
                ),
            ));
        }
        // A consumer route may send to the Service it routes (its parent)
        // without a grant: its callers reach that Service anyway, and the
        // Gateway API's mesh profile (MeshConsumerRoute) asks for no grant.
        let is_parent = route
            .parents
            .iter()
            .any(|p| p.namespace == target.namespace && p.name == target.name);
        if target.namespace != route.key.namespace && !is_parent {
            let permitted = self.grants.values().any(|g| {
                g.namespace == target.namespace
                    && g.permits(route.key.kind, &route.key.namespace, &target.name)
            });
            if !permitted {
                return Err((
                    "RefNotPermitted",
                    format!(
                        "backend Service {name} is in another namespace and no ReferenceGrant in {} permits {}s from {}",
                        target.namespace, route.key.kind, route.key.namespace
                    ),
                ));
            }
        }
        let Some(service) = mesh
            .services
            .get(&ServiceKey::new(&target.namespace, &target.name))
        else {
            return Err(("BackendNotFound", format!("Service {name} does not exist")));
        };
        let Some(port) = target.port else {
            return Err((
                "BackendNotFound",
                format!("backend Service {name} has no port; accepted: a port of the Service"),
            ));
        };
        if !service.ports.iter().any(|p| p.port == port) {
            return Err((
                "BackendNotFound",
                format!("Service {name} has no port {port}"),
            ));
        }
        Ok(())
    }
}

fn condition(status: bool, reason: &str, message: &str) -> Condition {
    Condition {
        status,
        reason: reason.to_string(),
        message: message.to_string(),
    }
}

fn refused(error: Option<&RouteError>) -> Condition {
    match error {
        Some(e) => condition(false, e.reason, &e.to_string()),
        None => condition(false, "UnsupportedValue", "the route was not accepted"),
    }
}

/// The ports of the parent Service a route attaches to, or the Accepted
/// condition that says why it does not.
fn attach_ports(mesh: &Mesh, kind: RouteKind, parent: &ParentRef) -> Result<Vec<u16>, Condition> {
    let key = ServiceKey::new(&parent.namespace, &parent.name);
    let Some(service) = mesh.services.get(&key) else {
        return Err(condition(
            false,
            "NoMatchingParent",
            &format!("Service {key} does not exist"),
        ));
    };
    if service.is_headless() || service.external_name.is_some() {
        return Err(condition(
            false,
            "UnsupportedValue",
            &format!(
                "Service {key} is {}; accepted: a Service with a cluster IP",
                if service.is_headless() {
                    "headless"
                } else {
                    "an ExternalName"
                }
            ),
        ));
    }
    let http = |s: &Service| -> Vec<u16> {
        s.ports
            .iter()
            .filter(|p| p.protocol.is_http())
            .map(|p| p.port)
            .collect()
    };
    match parent.port {
        Some(port) => match service.ports.iter().find(|p| p.port == port) {
            None => Err(condition(
                false,
                "NoMatchingParent",
                &format!("Service {key} has no port {port}"),
            )),
            Some(p) if !p.protocol.is_http() => Err(condition(
                false,
                "UnsupportedValue",
                &format!(
                    "port {port} of Service {key} is TCP; accepted: an HTTP or gRPC port (a port name `http-…`, `http2-…`, `grpc-…`, or an appProtocol) for a {kind}"
                ),
            )),
            Some(_) => Ok(vec![port]),
        },
        None => {
            let ports = http(service);
            if ports.is_empty() {
                Err(condition(
                    false,
                    "UnsupportedValue",
                    &format!("Service {key} has no HTTP or gRPC port for a {kind}"),
                ))
            } else {
                Ok(ports)
            }
        }
    }
}

/// The order Envoy tries routes in, smallest first: the Gateway API's
/// precedence (exact path, then the longest prefix, then a method, then the
/// most header matches, then the most query parameter matches), then the
/// oldest route, then namespace/name, then rule and match order. A regular
/// expression path ranks after exact paths and before prefixes: the
/// specification leaves it to the implementation, and a prefix `/` ranked
/// first would hide it.
type Precedence = (
    u8,
    usize,
    bool,
    usize,
    usize,
    i64,
    String,
    String,
    RouteKind,
    usize,
    Option<usize>,
);

fn precedence(entry: &RouteEntry) -> Precedence {
    let m = entry.route_match();
    let (path_rank, prefix_len) = match m.and_then(|m| m.path.as_ref()) {
        Some(PathMatch::Exact(_)) => (0, 0),
        Some(PathMatch::Regex(_)) => (1, 0),
        Some(PathMatch::Prefix(p)) => (2, usize::MAX - p.trim_end_matches('/').len()),
        // No path: `PathPrefix /`, the shortest prefix.
        None => (2, usize::MAX),
    };
    let route = &entry.route.route;
    (
        path_rank,
        prefix_len,
        m.is_none_or(|m| m.method.is_none()),
        usize::MAX - m.map_or(0, |m| m.headers.len()),
        usize::MAX - m.map_or(0, |m| m.query.len()),
        route.created.unwrap_or(i64::MAX),
        route.key.namespace.clone(),
        route.key.name.clone(),
        route.key.kind,
        entry.rule,
        entry.matched,
    )
}

/// A Service port that a route attaches to and whose own annotations route
/// it too: the route wins there; say so on the Service.
fn conflicts(
    mesh: &Mesh,
    attached: &BTreeMap<ServiceKey, BTreeSet<(u16, RouteKey)>>,
) -> Vec<AnnotationError> {
    let mut problems = Vec::new();
    for (key, ports) in attached {
        let Some(service) = mesh.services.get(key) else {
            continue;
        };
        for annotation in [ROUTES, TRAFFIC_SPLIT, TIMEOUT, RETRIES] {
            let Some(value) = service.annotations.get(annotation) else {
                continue;
            };
            let mut by_port: BTreeMap<u16, Vec<String>> = BTreeMap::new();
            for (port, route) in ports {
                by_port.entry(*port).or_default().push(route.to_string());
            }
            let detail: Vec<String> = by_port
                .iter()
                .map(|(port, routes)| format!("port {port} ({})", routes.join(", ")))
                .collect();
            problems.push(AnnotationError {
                severity: Severity::Rejected,
                object: format!("Service {key}"),
                annotation: annotation.to_string(),
                value: value.clone(),
                message: format!(
                    "Gateway API routes attach to {} and replace this annotation's routing there; accepted: the annotation or routes on a port, not both (load balancing, connection limits and outlier detection annotations still apply)",
                    detail.join(", ")
                ),
            });
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::index::Index;
    use crate::discovery::objects::Object;

    /// Applies YAML documents (Services, routes, grants) to `index`.
    fn apply(index: &mut Index, yaml: &str) {
        for doc in yaml.split("\n---\n").filter(|d| !d.trim().is_empty()) {
            let value: serde_yaml::Value = serde_yaml::from_str(doc).unwrap();
            let object = match value["kind"].as_str().unwrap() {
                "Service" => Object::from_service(&serde_yaml::from_value(value).unwrap()),
                "HTTPRoute" => Object::from_http_route(&serde_yaml::from_value(value).unwrap()),
                "GRPCRoute" => Object::from_grpc_route(&serde_yaml::from_value(value).unwrap()),
                "ReferenceGrant" => {
                    Object::from_reference_grant(&serde_yaml::from_value(value).unwrap())
                }
                other => panic!("{other}"),
            };
            index.apply(object.unwrap());
        }
    }

    const BASE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: mesh}
spec: {clusterIP: 198.19.0.1, ports: [{name: http, port: 80}, {name: http-alt, port: 8080}, {name: tcp, port: 9090}]}
---
apiVersion: v1
kind: Service
metadata: {name: echo-v1, namespace: mesh}
spec: {clusterIP: 198.19.0.2, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: other}
spec: {clusterIP: 198.19.0.3, ports: [{name: http, port: 80}]}
"#;

    fn mesh(extra: &str) -> Mesh {
        let mut index = Index::default();
        apply(&mut index, &format!("{BASE}\n---\n{extra}"));
        index.mesh()
    }

    fn key(kind: RouteKind, namespace: &str, name: &str) -> RouteKey {
        RouteKey {
            kind,
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    #[test]
    fn a_route_attaches_to_the_http_ports_of_its_parent_in_precedence_order() {
        let mesh = mesh(
            r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: split, namespace: mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: echo}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /}}]
    backendRefs: [{name: echo, port: 80}]
  - matches: [{path: {type: Exact, value: /v1}}, {path: {type: PathPrefix, value: /v1/api}}]
    backendRefs: [{name: echo-v1, port: 80}]
"#,
        );
        let echo = ServiceKey::new("mesh", "echo");
        assert!(mesh.routes.attaches(&echo, 80));
        assert!(mesh.routes.attaches(&echo, 8080));
        assert!(!mesh.routes.attaches(&echo, 9090), "TCP port");
        let entries = mesh.routes.for_caller(&echo, 80, "anywhere").unwrap();
        let order: Vec<_> = entries
            .iter()
            .map(|e| e.route_match().unwrap().path.clone().unwrap())
            .collect();
        assert_eq!(
            order,
            [
                PathMatch::Exact("/v1".into()),
                PathMatch::Prefix("/v1/api".into()),
                PathMatch::Prefix("/".into()),
            ]
        );
        let status = &mesh.routes.statuses[&key(RouteKind::Http, "mesh", "split")];
        assert_eq!(status.parents.len(), 1);
        assert!(status.parents[0].accepted.status);
        assert_eq!(status.parents[0].resolved_refs.reason, "ResolvedRefs");
        assert_eq!(
            mesh.routes
                .target_clusters(&echo)
                .into_iter()
                .collect::<Vec<_>>(),
            [
                "outbound|80||echo-v1.mesh.svc.cluster.local",
                "outbound|80||echo.mesh.svc.cluster.local"
            ]
        );
    }

    #[test]
    fn consumer_routes_replace_producer_routes_for_their_namespace_only() {
        let mesh = mesh(
            r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: producer, namespace: mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules: [{backendRefs: [{name: echo-v1, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: consumer, namespace: other}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, namespace: mesh, port: 80}]
  rules: [{backendRefs: [{name: echo, namespace: mesh, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: elsewhere, namespace: other}
spec:
  parentRefs: [{group: "", kind: Service, name: api, port: 80}]
  rules: [{backendRefs: [{name: echo-v1, namespace: mesh, port: 80}]}]
"#,
        );
        let echo = ServiceKey::new("mesh", "echo");
        let names = |ns: &str| -> Vec<String> {
            mesh.routes
                .for_caller(&echo, 80, ns)
                .unwrap()
                .iter()
                .map(|e| e.route.route.key.name.clone())
                .collect()
        };
        assert_eq!(names("other"), ["consumer"]);
        assert_eq!(names("mesh"), ["producer"]);
        assert_eq!(names("third"), ["producer"]);
        // The consumer's backend is the Service it routes, in another
        // namespace: no grant needed for that one.
        let status = &mesh.routes.statuses[&key(RouteKind::Http, "other", "consumer")];
        assert!(status.parents[0].accepted.status);
        assert!(status.parents[0].resolved_refs.status, "{status:?}");
        let entry = &mesh.routes.for_caller(&echo, 80, "other").unwrap()[0];
        assert_eq!(
            entry
                .route
                .cluster(&entry.rule().backends[0].target)
                .as_deref(),
            Some("outbound|80||echo.mesh.svc.cluster.local")
        );
        // Any other Service of another namespace needs a ReferenceGrant.
        let status = &mesh.routes.statuses[&key(RouteKind::Http, "other", "elsewhere")];
        assert_eq!(status.parents[0].resolved_refs.reason, "RefNotPermitted");
    }

    #[test]
    fn a_reference_grant_permits_a_cross_namespace_backend() {
        let mesh = mesh(
            r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules: [{backendRefs: [{name: api, namespace: other, port: 80}, {name: missing, port: 80, weight: 0}]}]
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: from-mesh, namespace: other}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: mesh}]
  to: [{group: "", kind: Service}]
"#,
        );
        let echo = ServiceKey::new("mesh", "echo");
        let entry = &mesh.routes.for_caller(&echo, 80, "mesh").unwrap()[0];
        assert_eq!(
            entry
                .route
                .cluster(&entry.rule().backends[0].target)
                .as_deref(),
            Some("outbound|80||api.other.svc.cluster.local")
        );
        assert_eq!(entry.route.cluster(&entry.rule().backends[1].target), None);
        let status = &mesh.routes.statuses[&key(RouteKind::Http, "mesh", "r")];
        assert_eq!(status.parents[0].resolved_refs.reason, "BackendNotFound");
        assert!(
            status.parents[0]
                .resolved_refs
                .message
                .contains("mesh/missing"),
            "{:?}",
            status.parents[0].resolved_refs
        );
    }

    #[test]
    fn parents_that_cannot_take_the_route_say_why() {
        let mesh = mesh(
            r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: mesh}
spec:
  parentRefs:
  - {group: "", kind: Service, name: nowhere}
  - {group: "", kind: Service, name: echo, port: 81}
  - {group: "", kind: Service, name: echo, port: 9090}
  rules: [{backendRefs: [{name: echo, port: 80}]}]
"#,
        );
        let status = &mesh.routes.statuses[&key(RouteKind::Http, "mesh", "r")];
        let reasons: Vec<_> = status
            .parents
            .iter()
            .map(|p| (p.accepted.status, p.accepted.reason.as_str()))
            .collect();
        assert_eq!(
            reasons,
            [
                (false, "NoMatchingParent"),
                (false, "NoMatchingParent"),
                (false, "UnsupportedValue")
            ]
        );
        assert!(!mesh.routes.attaches(&ServiceKey::new("mesh", "echo"), 80));
    }

    #[test]
    fn a_refused_version_leaves_the_last_good_one_serving_and_says_so() {
        let good = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: mesh, generation: 1}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules: [{backendRefs: [{name: echo-v1, port: 80}]}]
"#;
        let bad = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: mesh, generation: 2}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules: [{matches: [{path: {type: RegularExpression, value: "(?<=x)"}}], backendRefs: [{name: echo, port: 80}]}]
"#;
        let mut index = Index::default();
        apply(&mut index, &format!("{BASE}\n---\n{good}"));
        apply(&mut index, bad);
        let mesh = index.mesh();
        let echo = ServiceKey::new("mesh", "echo");
        let entries = mesh.routes.for_caller(&echo, 80, "mesh").unwrap();
        assert_eq!(entries[0].rule().backends[0].target.name, "echo-v1");
        let status = &mesh.routes.statuses[&key(RouteKind::Http, "mesh", "r")];
        assert_eq!(status.generation, Some(2));
        let accepted = &status.parents[0].accepted;
        assert!(!accepted.status);
        assert_eq!(accepted.reason, "UnsupportedValue");
        assert!(
            accepted
                .message
                .contains("spec.rules[0].matches[0].path.value")
                && accepted.message.contains("generation 1) keeps serving"),
            "{accepted:?}"
        );
    }

    #[test]
    fn a_route_over_routing_annotations_is_reported_on_the_service() {
        let mut index = Index::default();
        apply(
            &mut index,
            r#"
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: mesh, annotations: {meshd.io/timeout: 2s}}
spec: {clusterIP: 198.19.0.1, ports: [{name: http, port: 80}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: echo}]
  rules: [{backendRefs: [{name: echo, port: 80}]}]
"#,
        );
        let mesh = index.mesh();
        let problem = mesh
            .routing
            .errors
            .iter()
            .find(|e| e.annotation == TIMEOUT)
            .expect("a conflict is reported");
        assert_eq!(problem.object, "Service mesh/echo");
        assert!(
            problem.message.contains("port 80 (HTTPRoute mesh/r)"),
            "{problem:?}"
        );
    }
}
