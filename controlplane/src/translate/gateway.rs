//! Gateway API routes for the mesh (HTTPRoute, GRPCRoute attached to a
//! Service port; [`crate::model::MeshRoutes`]) in Envoy terms, on the
//! caller's side.
//!
//! ```text
//! with capture, outbound listener, on a port number a route attaches to (80):
//!   chain outbound|80|http|echo.ns…   echo's VIPs (a route attaches) ─> RDS "echo.ns.svc.cluster.local:80":
//!                                       one virtual host "*", the routes for the caller's namespace
//!   chain outbound|80|http|web.ns…    web's VIPs (no route) ─> inline: web's annotation routes, "*"
//! on the other port numbers, as without routes:
//!   chain outbound|8080|http|ns       the VIPs of ns on the port ─> RDS "8080|ns" (by Host)
//! without capture: RDS outbound_http_proxy, echo's virtual host (by Host) holds the same routes
//!
//! RouteEntry (one match of one rule, in precedence order) ─> one Envoy route
//!   match:   path / path_separated_prefix / safe_regex, :method, headers, query_parameters
//!   filters: request/response headers, redirect, rewrite (regex_rewrite, host), mirrors
//!   backends ─> cluster | weighted_clusters (per-backend headers) | direct_response 500
//! ```
//!
//! A Service port with a route is routed by the Service the caller
//! connected to, not by the Host it sent (the specification's "frontend"
//! semantics, MeshFrontendHostname): with capture its VIPs get their own
//! filter chain and route configuration ([`route_config_name`]). So do the
//! other Services' VIPs on that port number (their annotation routes,
//! inline in the listener): a call to one of them with the Host of a
//! Service that has a route goes to the Service called, as it would
//! without the mesh. Port numbers without routes keep one chain routed by
//! Host, so a mesh without routes is translated as before.
//!
//! The route configuration of a Service port with a route is per caller
//! namespace: a namespace with consumer routes gets them, the others the
//! producer routes, or the Service's annotation routing when only another
//! namespace's consumer routes attach. The routes replace the
//! annotations' routes of that port (timeouts, retries, split, `routes`);
//! what the annotations put on clusters (load balancing, circuit breaking,
//! outlier detection) still applies to the backends' clusters.
//!
//! Choices where the specification leaves room, or Envoy differs:
//! - `PathPrefix` matches whole segments (`path_separated_prefix`); a
//!   trailing `/` in the value is ignored, as the specification says.
//! - Path rewrites and redirects that replace a prefix are `regex_rewrite`s
//!   on the matched prefix, so `/prefix` → `/` gives `/three` for
//!   `/prefix/three` (not `//three`), and `/` for `/prefix`.
//! - A backend that did not resolve keeps its share of the weight and that
//!   share answers 500: the weighted cluster names no cluster
//!   ([`UNRESOLVED`]), and the route's `cluster_not_found_response_code` is
//!   500. When no backend with a weight resolved (or there is none, or every
//!   weight is 0), the route answers 500 itself.
//! - Timeouts: the model has no retries, so a request is one try to a
//!   backend and `backendRequest` bounds it as much as `request` does; the
//!   route's timeout is the shorter of the two (`backendRequest` is at most
//!   `request` unless `request` is 0, no deadline). Neither set: no deadline
//!   (Envoy's default of 15 s is not what the user asked for).
//! - A redirect without a port uses the scheme's well-known port (80 or
//!   443) when it sets a scheme, else the Service port (the "listener port"
//!   of a mesh); the port is left out of `Location` where Envoy's own
//!   handling of the request's Host already gives that port.

use std::collections::BTreeSet;

use meshd_api::gateway::{
    Backend, Filter, HeaderModifier, Mirror, PathMatch, PathModifier, Redirect, Rewrite,
    ValueMatch, regex_escape,
};
use meshd_proto::UInt32Value;
use meshd_proto::envoy::config::core::v3::{
    HeaderValue, HeaderValueOption, RuntimeFractionalPercent, header_value_option,
};
use meshd_proto::envoy::config::route::v3::{
    DirectResponseAction, HeaderMatcher, QueryParameterMatcher, RedirectAction,
    Route as EnvoyRoute, RouteAction, RouteMatch as EnvoyRouteMatch, WeightedCluster,
    header_matcher, query_parameter_matcher, redirect_action, route, route_action, route_match,
    weighted_cluster,
};
use meshd_proto::envoy::r#type::matcher::v3::{
    RegexMatchAndSubstitute, RegexMatcher, StringMatcher, string_matcher,
};
use meshd_proto::envoy::r#type::v3::{FractionalPercent, fractional_percent};

use super::resource::Resources;
use super::routing::proto_duration;
use crate::model::{AttachedRoute, Mesh, MeshRoutes, RouteEntry, RouteMatch, ServiceKey};

/// The name a weighted cluster gets for a backend that did not resolve: no
/// cluster has it, so Envoy answers that share with the route's
/// `cluster_not_found_response_code` (500).
pub(super) const UNRESOLVED: &str = "meshd.unresolved-backend";

/// The route configuration (and filter chain suffix) of a Service port a
/// route attaches to, with capture: `<fqdn>:<port>`, the name its virtual
/// host has in the shared configurations, which cannot be a port number.
pub(super) fn route_config_name(service: &ServiceKey, port: u16) -> String {
    format!("{}:{port}", service.fqdn())
}

/// The filter chain of such a port, in its port's outbound listener.
pub(super) fn chain_name(service: &ServiceKey, port: u16) -> String {
    format!("outbound|{port}|http|{}", service.fqdn())
}

/// Whether two meshes attach the same routes to the same Service ports
/// (their statuses aside): if so, listeners and route configurations carry
/// over to the next snapshot.
pub(super) fn same_routes(a: &MeshRoutes, b: &MeshRoutes) -> bool {
    std::ptr::eq(a, b) || a.services == b.services
}

/// The Envoy routes of one Service port for one caller namespace.
pub(super) struct GatewayRoutes {
    pub routes: Vec<EnvoyRoute>,
    /// Every cluster the routes send or mirror to.
    pub clusters: BTreeSet<String>,
    /// Some route names [`UNRESOLVED`]: the configuration must not be
    /// checked against the clusters (RDS configurations never are; a
    /// static copy, as in tests, would be).
    pub names_unresolved: bool,
}

/// The routes of `entries` (in precedence order, from
/// [`crate::model::MeshRoutes::for_caller`]) for calls to a Service port
/// `port`. `clusters`: every outbound cluster of the mesh.
pub(super) fn service_routes(
    mesh: &Mesh,
    clusters: &Resources,
    port: u16,
    entries: &[RouteEntry],
) -> GatewayRoutes {
    let mut out = GatewayRoutes {
        routes: Vec::with_capacity(entries.len()),
        clusters: BTreeSet::new(),
        names_unresolved: false,
    };
    for entry in entries {
        let route = envoy_route(mesh, clusters, port, entry, &mut out);
        out.routes.push(route);
    }
    out
}

/// The cluster a backend reference sends to: resolved by discovery, and a
/// cluster of this mesh that reaches the Service (a headless Service's
/// cluster connects to the address the caller dialed, here another
/// Service's VIP, so it cannot be a backend).
fn backend_cluster(
    mesh: &Mesh,
    clusters: &Resources,
    attached: &AttachedRoute,
    target: &meshd_api::gateway::BackendRef,
) -> Option<String> {
    let cluster = attached.cluster(target)?;
    let service = mesh
        .services
        .get(&ServiceKey::new(&target.namespace, &target.name))?;
    (!service.is_headless() && clusters.contains_key(&cluster)).then_some(cluster)
}

fn envoy_route(
    mesh: &Mesh,
    clusters: &Resources,
    port: u16,
    entry: &RouteEntry,
    out: &mut GatewayRoutes,
) -> EnvoyRoute {
    let rule = entry.rule();
    let matched = entry.route_match();
    let mut request = Headers::default();
    let mut response = Headers::default();
    let mut redirect = None;
    let mut rewrite = None;
    let mut mirrors = Vec::new();
    for filter in &rule.filters {
        match filter {
            Filter::RequestHeaders(m) => request.add(m, true),
            Filter::ResponseHeaders(m) => response.add(m, false),
            Filter::Redirect(r) => redirect = Some(r),
            Filter::Rewrite(r) => rewrite = Some(r),
            Filter::Mirror(m) => mirrors.push(m),
        }
    }
    let prefix = matched_prefix(matched);
    let action = match redirect {
        Some(r) => route::Action::Redirect(redirect_action(r, prefix, port)),
        None => {
            let mut action = match backends(mesh, clusters, entry, &rule.backends, out) {
                Some(action) => action,
                None => {
                    return EnvoyRoute {
                        name: route_name(entry),
                        r#match: Some(envoy_match(matched)),
                        action: Some(route::Action::DirectResponse(DirectResponseAction {
                            status: 500,
                            ..Default::default()
                        })),
                        response_headers_to_add: response.add,
                        response_headers_to_remove: response.remove,
                        ..Default::default()
                    };
                }
            };
            let timeouts = &rule.timeouts;
            let timeout = match (timeouts.request, timeouts.backend_request) {
                (Some(r), Some(b)) if !r.is_zero() => r.min(b),
                (_, Some(b)) => b,
                (r, None) => r.unwrap_or_default(),
            };
            action.timeout = Some(proto_duration(timeout));
            if let Some(r) = rewrite {
                apply_rewrite(&mut action, r, prefix);
            }
            if action.host_rewrite_specifier.is_none()
                && let Some(host) = request.host.take()
            {
                action.host_rewrite_specifier =
                    Some(route_action::HostRewriteSpecifier::HostRewriteLiteral(host));
            }
            action.request_mirror_policies = mirrors
                .into_iter()
                .filter_map(|m| mirror_policy(mesh, clusters, &entry.route, m, out))
                .collect();
            route::Action::Route(action)
        }
    };
    EnvoyRoute {
        name: route_name(entry),
        r#match: Some(envoy_match(matched)),
        action: Some(action),
        request_headers_to_add: request.add,
        request_headers_to_remove: request.remove,
        response_headers_to_add: response.add,
        response_headers_to_remove: response.remove,
        ..Default::default()
    }
}

/// `HTTPRoute ns/name rule 0 match 1`, shown in proxy-config and in
/// Envoy's own config dump.
fn route_name(entry: &RouteEntry) -> String {
    let route = &entry.route.route;
    let rule = match &entry.rule().name {
        Some(name) => format!("rule {} ({name})", entry.rule),
        None => format!("rule {}", entry.rule),
    };
    match entry.matched {
        Some(m) => format!("{} {rule} match {m}", route.key),
        None => format!("{} {rule}", route.key),
    }
}

/// The weighted backends of a rule; `None`: nothing to send to (no
/// backend, every weight 0, or none that resolved), answered with 500.
fn backends(
    mesh: &Mesh,
    clusters: &Resources,
    entry: &RouteEntry,
    backends: &[Backend],
    out: &mut GatewayRoutes,
) -> Option<RouteAction> {
    let targets: Vec<(&Backend, Option<String>)> = backends
        .iter()
        .filter(|b| b.weight > 0)
        .map(|b| (b, backend_cluster(mesh, clusters, &entry.route, &b.target)))
        .collect();
    if targets.iter().all(|(_, cluster)| cluster.is_none()) {
        return None;
    }
    out.clusters
        .extend(targets.iter().filter_map(|(_, c)| c.clone()));
    let mut action = RouteAction::default();
    if let [(backend, Some(cluster))] = targets.as_slice()
        && backend.filters.is_empty()
    {
        action.cluster_specifier = Some(route_action::ClusterSpecifier::Cluster(cluster.clone()));
        return Some(action);
    }
    let mut weighted = Vec::with_capacity(targets.len());
    for (backend, cluster) in targets {
        let Some(cluster) = cluster else {
            out.names_unresolved = true;
            action.cluster_not_found_response_code =
                route_action::ClusterNotFoundResponseCode::InternalServerError as i32;
            weighted.push(weighted_cluster::ClusterWeight {
                name: UNRESOLVED.into(),
                weight: Some(UInt32Value {
                    value: backend.weight,
                }),
                ..Default::default()
            });
            continue;
        };
        let mut request = Headers::default();
        let mut response = Headers::default();
        for filter in &backend.filters {
            match filter {
                Filter::RequestHeaders(m) => request.add(m, true),
                Filter::ResponseHeaders(m) => response.add(m, false),
                // Discovery refuses the others on a backend.
                _ => {}
            }
        }
        weighted.push(weighted_cluster::ClusterWeight {
            name: cluster,
            weight: Some(UInt32Value {
                value: backend.weight,
            }),
            request_headers_to_add: request.add,
            request_headers_to_remove: request.remove,
            response_headers_to_add: response.add,
            response_headers_to_remove: response.remove,
            host_rewrite_specifier: request
                .host
                .map(weighted_cluster::cluster_weight::HostRewriteSpecifier::HostRewriteLiteral),
            ..Default::default()
        });
    }
    action.cluster_specifier = Some(route_action::ClusterSpecifier::WeightedClusters(
        WeightedCluster {
            clusters: weighted,
            ..Default::default()
        },
    ));
    Some(action)
}

fn mirror_policy(
    mesh: &Mesh,
    clusters: &Resources,
    attached: &AttachedRoute,
    mirror: &Mirror,
    out: &mut GatewayRoutes,
) -> Option<route_action::RequestMirrorPolicy> {
    // A mirror that did not resolve mirrors nothing: the request itself
    // still goes to its backends.
    let cluster = backend_cluster(mesh, clusters, attached, &mirror.backend)?;
    out.clusters.insert(cluster.clone());
    Some(route_action::RequestMirrorPolicy {
        cluster,
        runtime_fraction: mirror.fraction.map(|(numerator, denominator)| {
            let millionths = u64::from(numerator) * 1_000_000 / u64::from(denominator.max(1));
            RuntimeFractionalPercent {
                default_value: Some(FractionalPercent {
                    numerator: u32::try_from(millionths).unwrap_or(1_000_000),
                    denominator: fractional_percent::DenominatorType::Million as i32,
                }),
                runtime_key: String::new(),
            }
        }),
        ..Default::default()
    })
}

/// Header modifications in Envoy's terms.
#[derive(Default)]
struct Headers {
    add: Vec<HeaderValueOption>,
    remove: Vec<String>,
    /// A request `Host` set or added: Envoy does not let header
    /// modifications touch it, so it becomes a host rewrite.
    host: Option<String>,
}

impl Headers {
    fn add(&mut self, m: &HeaderModifier, request: bool) {
        use header_value_option::HeaderAppendAction;
        let actions = [
            (&m.set, HeaderAppendAction::OverwriteIfExistsOrAdd),
            (&m.add, HeaderAppendAction::AppendIfExistsOrAdd),
        ];
        for (headers, action) in actions {
            for (name, value) in headers {
                if name == "host" {
                    if request {
                        self.host = Some(value.clone());
                    }
                    continue;
                }
                self.add.push(HeaderValueOption {
                    header: Some(HeaderValue {
                        key: name.clone(),
                        // `%` starts a command in Envoy's header values.
                        value: value.replace('%', "%%"),
                        ..Default::default()
                    }),
                    append_action: action as i32,
                    ..Default::default()
                });
            }
        }
        self.remove
            .extend(m.remove.iter().filter(|n| *n != "host").cloned());
    }
}

/// The path prefix a request matched, without a trailing `/` (`""` for
/// `/`): what a `ReplacePrefixMatch` replaces. `None` for other matches.
fn matched_prefix(matched: Option<&RouteMatch>) -> Option<&str> {
    match matched.and_then(|m| m.path.as_ref()) {
        None => Some(""),
        Some(PathMatch::Prefix(p)) => Some(p.trim_end_matches('/')),
        Some(_) => None,
    }
}

fn envoy_match(matched: Option<&RouteMatch>) -> EnvoyRouteMatch {
    use route_match::PathSpecifier;
    let Some(m) = matched else {
        return EnvoyRouteMatch {
            path_specifier: Some(PathSpecifier::Prefix("/".into())),
            ..Default::default()
        };
    };
    let path = match &m.path {
        None => PathSpecifier::Prefix("/".into()),
        Some(PathMatch::Exact(p)) => PathSpecifier::Path(p.clone()),
        Some(PathMatch::Regex(r)) => PathSpecifier::SafeRegex(regex(r.clone())),
        Some(PathMatch::Prefix(p)) => {
            let p = p.trim_end_matches('/');
            if p.is_empty() {
                PathSpecifier::Prefix("/".into())
            } else if p.contains(['?', '#']) {
                // `path_separated_prefix` refuses these; the same match
                // as a regular expression.
                PathSpecifier::SafeRegex(regex(format!("{}(/.*)?", regex_escape(p))))
            } else {
                PathSpecifier::PathSeparatedPrefix(p.to_string())
            }
        }
    };
    let mut headers: Vec<HeaderMatcher> = m
        .method
        .iter()
        .map(|method| header(":method", &ValueMatch::Exact(method.clone())))
        .collect();
    headers.extend(m.headers.iter().map(|(name, value)| {
        // Envoy holds the Host header as `:authority`.
        let name = if name == "host" { ":authority" } else { name };
        header(name, value)
    }));
    EnvoyRouteMatch {
        path_specifier: Some(path),
        headers,
        query_parameters: m
            .query
            .iter()
            .map(|(name, value)| QueryParameterMatcher {
                name: name.clone(),
                query_parameter_match_specifier: Some(
                    query_parameter_matcher::QueryParameterMatchSpecifier::StringMatch(
                        string_match(value),
                    ),
                ),
            })
            .collect(),
        ..Default::default()
    }
}

fn header(name: &str, value: &ValueMatch) -> HeaderMatcher {
    HeaderMatcher {
        name: name.to_string(),
        header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(
            string_match(value),
        )),
        ..Default::default()
    }
}

fn string_match(value: &ValueMatch) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(match value {
            ValueMatch::Exact(v) => string_matcher::MatchPattern::Exact(v.clone()),
            ValueMatch::Regex(r) => string_matcher::MatchPattern::SafeRegex(regex(r.clone())),
        }),
        ..Default::default()
    }
}

/// A regular expression for Envoy's default engine, RE2 (discovery checked
/// the syntax).
fn regex(regex: String) -> RegexMatcher {
    RegexMatcher {
        regex,
        ..Default::default()
    }
}

/// A substitution string for RE2, where `\` introduces a capture group.
fn substitution(text: &str) -> String {
    text.replace('\\', "\\\\")
}

/// How a path modifier rewrites the path (the query string is kept):
/// - `ReplaceFullPath p`: the whole path becomes `p`;
/// - `ReplacePrefixMatch r` after the prefix `m` matched: `m` becomes `r`
///   with its trailing `/` dropped, so that segments stay separated by one
///   `/`; with `r` empty or `/`, `m` and the slashes after it become `/`.
fn path_rewrite(modifier: &PathModifier, prefix: Option<&str>) -> RegexMatchAndSubstitute {
    let (pattern, substitution) = match modifier {
        PathModifier::Full(path) => ("^.*$".to_string(), substitution(path)),
        PathModifier::Prefix(replacement) => {
            // Discovery allows a prefix replacement only after prefix
            // matches; anything else is treated as the root prefix.
            let prefix = prefix.unwrap_or_default();
            let replacement = replacement.trim_end_matches('/');
            if replacement.is_empty() {
                (format!("^{}/*", regex_escape(prefix)), "/".to_string())
            } else if prefix.is_empty() {
                ("^/".to_string(), format!("{}/", substitution(replacement)))
            } else {
                (
                    format!("^{}", regex_escape(prefix)),
                    substitution(replacement),
                )
            }
        }
    };
    RegexMatchAndSubstitute {
        pattern: Some(regex(pattern)),
        substitution,
    }
}

fn apply_rewrite(action: &mut RouteAction, rewrite: &Rewrite, prefix: Option<&str>) {
    if let Some(host) = &rewrite.hostname {
        action.host_rewrite_specifier = Some(
            route_action::HostRewriteSpecifier::HostRewriteLiteral(host.clone()),
        );
    }
    if let Some(path) = &rewrite.path {
        action.regex_rewrite = Some(path_rewrite(path, prefix));
    }
}

fn redirect_action(r: &Redirect, prefix: Option<&str>, service_port: u16) -> RedirectAction {
    use redirect_action::{PathRewriteSpecifier, RedirectResponseCode, SchemeRewriteSpecifier};
    let response_code = match r.status {
        301 => RedirectResponseCode::MovedPermanently,
        303 => RedirectResponseCode::SeeOther,
        307 => RedirectResponseCode::TemporaryRedirect,
        308 => RedirectResponseCode::PermanentRedirect,
        // 302, the default, and all discovery lets through otherwise.
        _ => RedirectResponseCode::Found,
    };
    RedirectAction {
        scheme_rewrite_specifier: r.scheme.clone().map(SchemeRewriteSpecifier::SchemeRedirect),
        host_redirect: r.hostname.clone().unwrap_or_default(),
        port_redirect: redirect_port(r, service_port),
        path_rewrite_specifier: r.path.as_ref().map(|p| match p {
            PathModifier::Full(path) => PathRewriteSpecifier::PathRedirect(path.clone()),
            PathModifier::Prefix(_) => PathRewriteSpecifier::RegexRewrite(path_rewrite(p, prefix)),
        }),
        response_code: response_code as i32,
        strip_query: false,
    }
}

/// Envoy's `port_redirect` (0: none) for a redirect of calls to
/// `service_port`. The specification's port: the redirect's, else the
/// scheme's well-known port if it sets a scheme, else the Service port;
/// and no port in `Location` where it is the scheme's well-known one.
///
/// Without `port_redirect`, Envoy keeps the port of the request's Host,
/// dropping it only when the scheme changes and it was the old scheme's
/// default. Callers name a Service on port 80 without a port or with `:80`,
/// any other port with it. So `port_redirect` is left out where that gives
/// the right port: a well-known port on a port-80 Service, or the Service
/// port itself when the scheme stays. Otherwise it is set, even to a
/// well-known port (`https://echo:443/` is right; `https://echo:8080/`
/// would not be).
fn redirect_port(r: &Redirect, service_port: u16) -> u32 {
    // Mesh traffic reaches the sidecar in plaintext HTTP.
    let scheme = r.scheme.as_deref().unwrap_or("http");
    let well_known = match scheme {
        "https" => 443,
        _ => 80,
    };
    let port = r
        .port
        .or(r.scheme.as_ref().map(|_| well_known))
        .unwrap_or(service_port);
    let implied = if r.hostname.is_some() {
        // Envoy writes the hostname as given, without a port.
        port == well_known
    } else {
        (port == well_known && service_port == 80) || (r.scheme.is_none() && port == service_port)
    };
    if implied { 0 } else { u32::from(port) }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use meshd_proto::envoy::config::listener::v3::filter;
    use meshd_proto::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
    use meshd_proto::envoy::extensions::filters::network::http_connection_manager::v3::{
        HttpConnectionManager, http_connection_manager,
    };
    use prost::Message;

    use super::super::{Kind, ProxyView, Snapshot, TranslateOptions, decode};
    use super::*;
    use crate::discovery::index::Index;
    use crate::discovery::objects::Object;
    use crate::model::Mesh;

    /// Applies YAML documents (the file registry's kinds, and routes).
    fn mesh(yaml: &str) -> Arc<Mesh> {
        let mut index = Index::default();
        for doc in yaml.split("\n---\n").filter(|d| !d.trim().is_empty()) {
            let value: serde_yaml::Value = serde_yaml::from_str(doc).unwrap();
            let object = match value["kind"].as_str().unwrap() {
                "HTTPRoute" => Object::from_http_route(&serde_yaml::from_value(value).unwrap()),
                "GRPCRoute" => Object::from_grpc_route(&serde_yaml::from_value(value).unwrap()),
                "ReferenceGrant" => {
                    Object::from_reference_grant(&serde_yaml::from_value(value).unwrap())
                }
                _ => {
                    for object in crate::discovery::file::parse(doc).unwrap() {
                        index.apply(object);
                    }
                    continue;
                }
            };
            index.apply(object.unwrap());
        }
        Arc::new(index.mesh())
    }

    const SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: mesh, annotations: {meshd.io/timeout: 3s}}
spec: {clusterIP: 198.19.0.1, ports: [{name: http, port: 80}, {name: http-alt, port: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: echo-v1, namespace: mesh}
spec: {clusterIP: 198.19.0.2, ports: [{name: http, port: 80}, {name: http-alt, port: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: echo-v2, namespace: mesh}
spec: {clusterIP: 198.19.0.3, ports: [{name: http, port: 80}]}
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
metadata: {name: client-1, namespace: consumer}
status: {podIP: 198.18.0.3}
---
apiVersion: v1
kind: Pod
metadata: {name: explicit-0, namespace: mesh, annotations: {meshd.io/interception: none}}
status: {podIP: 198.18.0.4}
---
apiVersion: v1
kind: Pod
metadata: {name: scoped-0, namespace: mesh, annotations: {meshd.io/egress: "./echo"}}
status: {podIP: 198.18.0.5}
"#;

    const ECHO: &str = "echo.mesh.svc.cluster.local:80";
    const V1: &str = "outbound|80||echo-v1.mesh.svc.cluster.local";
    const V2: &str = "outbound|80||echo-v2.mesh.svc.cluster.local";

    fn snapshot(routes: &str) -> Snapshot {
        let mesh = mesh(&format!("{SERVICES}\n---\n{routes}"));
        Snapshot::new(1, mesh, TranslateOptions::default())
    }

    fn route_config(view: &ProxyView, name: &str) -> RouteConfiguration {
        decode(
            view.get(Kind::Route, name)
                .unwrap_or_else(|| panic!("no route configuration {name}")),
        )
        .unwrap()
    }

    fn echo_routes(view: &ProxyView) -> Vec<EnvoyRoute> {
        let rc = route_config(view, ECHO);
        assert_eq!(rc.virtual_hosts.len(), 1);
        assert_eq!(rc.virtual_hosts[0].domains, ["*"]);
        rc.virtual_hosts[0].routes.clone()
    }

    fn action(route: &EnvoyRoute) -> &RouteAction {
        match &route.action {
            Some(route::Action::Route(a)) => a,
            other => panic!("not a route action: {other:?}"),
        }
    }

    fn weights(action: &RouteAction) -> Vec<(String, u32)> {
        match &action.cluster_specifier {
            Some(route_action::ClusterSpecifier::WeightedClusters(w)) => w
                .clusters
                .iter()
                .map(|c| (c.name.clone(), c.weight.as_ref().unwrap().value))
                .collect(),
            Some(route_action::ClusterSpecifier::Cluster(c)) => vec![(c.clone(), 1)],
            other => panic!("{other:?}"),
        }
    }

    /// The outbound listener's HTTP chains: (name, port, VIPs, RDS name).
    fn http_chains(view: &ProxyView) -> Vec<(String, u32, Vec<String>, String)> {
        let l = crate::translate::joined_outbound(view);
        l.filter_chains
            .iter()
            .filter_map(|c| {
                let m = c.filter_chain_match.as_ref().unwrap();
                let Some(filter::ConfigType::TypedConfig(any)) = &c.filters[0].config_type else {
                    return None;
                };
                let hcm = HttpConnectionManager::decode(any.value.as_slice()).ok()?;
                let Some(http_connection_manager::RouteSpecifier::Rds(rds)) = hcm.route_specifier
                else {
                    return None;
                };
                Some((
                    c.name.clone(),
                    m.destination_port.as_ref().unwrap().value,
                    m.prefix_ranges
                        .iter()
                        .map(|r| r.address_prefix.clone())
                        .collect(),
                    rds.route_config_name,
                ))
            })
            .collect()
    }

    const SPLIT: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: split, namespace: mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - matches:
    - path: {type: Exact, value: /v1}
    - path: {type: PathPrefix, value: /api/}
      method: GET
      headers: [{name: X-Version, value: one}, {name: x-re, type: RegularExpression, value: "a.*"}]
      queryParams: [{name: q, value: "1"}, {name: r, type: RegularExpression, value: "[0-9]+"}]
    - path: {type: RegularExpression, value: "/re/[a-z]+"}
    backendRefs: [{name: echo-v1, port: 80}]
  - backendRefs:
    - {name: echo-v1, port: 80, weight: 30}
    - {name: echo-v2, port: 80, weight: 70}
    - {name: echo, port: 80, weight: 0}
"#;

    #[test]
    fn a_service_port_with_a_route_gets_its_own_chain_and_routes() {
        let snap = snapshot(SPLIT);
        let view = snap.proxy("client-0.mesh").unwrap();
        let chains = http_chains(&view);
        assert!(
            chains.contains(&(
                "outbound|80|http|echo.mesh.svc.cluster.local".into(),
                80,
                vec!["198.19.0.1".into()],
                ECHO.into()
            )),
            "{chains:?}"
        );
        // Port 80 has a route: every VIP there is routed by the Service
        // called; echo-v1's chain carries its own routes inline.
        assert!(chains.iter().all(|c| c.3 != "80"), "{chains:?}");
        let l = crate::translate::joined_outbound(&view);
        let v1_chain = l
            .filter_chains
            .iter()
            .find(|c| c.name == "outbound|80|http|echo-v1.mesh.svc.cluster.local")
            .unwrap();
        assert_eq!(
            v1_chain.filter_chain_match.as_ref().unwrap().prefix_ranges[0].address_prefix,
            "198.19.0.2"
        );
        let Some(filter::ConfigType::TypedConfig(any)) = &v1_chain.filters[0].config_type else {
            panic!("{v1_chain:?}")
        };
        let hcm = HttpConnectionManager::decode(any.value.as_slice()).unwrap();
        let Some(http_connection_manager::RouteSpecifier::RouteConfig(inline)) =
            hcm.route_specifier
        else {
            panic!("{hcm:?}")
        };
        assert_eq!(inline.virtual_hosts[0].domains, ["*"]);
        assert_eq!(
            weights(action(&inline.virtual_hosts[0].routes[0])),
            [(V1.to_string(), 1)]
        );
        // Port 8080 has no route: routed by Host, a chain per namespace.
        let alt = chains.iter().find(|c| c.3 == "8080|mesh").unwrap();
        assert!(alt.2.contains(&"198.19.0.1".to_string()), "{alt:?}");
        assert!(alt.2.contains(&"198.19.0.2".to_string()), "{alt:?}");

        let routes = echo_routes(&view);
        assert_eq!(routes.len(), 4, "three matches and a rule without");
        use route_match::PathSpecifier;
        let m = |i: usize| routes[i].r#match.clone().unwrap();
        // Discovery's precedence: exact, regular expression, the longest
        // prefix, ….
        assert_eq!(m(0).path_specifier, Some(PathSpecifier::Path("/v1".into())));
        assert_eq!(routes[2].name, "HTTPRoute mesh/split rule 0 match 1");
        let second = m(2);
        assert_eq!(
            second.path_specifier,
            Some(PathSpecifier::PathSeparatedPrefix("/api".into())),
            "a trailing / is ignored"
        );
        let headers: Vec<_> = second.headers.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(headers, [":method", "x-version", "x-re"]);
        assert!(matches!(
            &second.headers[2].header_match_specifier,
            Some(header_matcher::HeaderMatchSpecifier::StringMatch(StringMatcher {
                match_pattern: Some(string_matcher::MatchPattern::SafeRegex(r)), ..
            })) if r.regex == "a.*"
        ));
        let query: Vec<_> = second
            .query_parameters
            .iter()
            .map(|q| q.name.as_str())
            .collect();
        assert_eq!(query, ["q", "r"]);
        assert!(matches!(
            m(1).path_specifier,
            Some(PathSpecifier::SafeRegex(ref r)) if r.regex == "/re/[a-z]+"
        ));
        assert_eq!(m(3).path_specifier, Some(PathSpecifier::Prefix("/".into())));
        assert_eq!(weights(action(&routes[0])), [(V1.to_string(), 1)]);
        assert_eq!(
            weights(action(&routes[3])),
            [(V1.to_string(), 30), (V2.to_string(), 70)],
            "weight 0 is left out"
        );
        // The route replaces the annotation's 3 s timeout: no deadline.
        assert_eq!(
            action(&routes[3]).timeout,
            Some(proto_duration(Default::default()))
        );

        let resource = view.get(Kind::Route, ECHO).unwrap();
        assert_eq!(resource.cluster_refs, [V1, V2]);

        // Without capture the same routes are echo's virtual host in the
        // forward-proxy configuration, chosen by Host.
        let explicit = snap.proxy("explicit-0.mesh").unwrap();
        let rc = route_config(&explicit, super::super::HTTP_PROXY_ROUTE);
        let vhost: &VirtualHost = rc.virtual_hosts.iter().find(|v| v.name == ECHO).unwrap();
        assert!(vhost.domains.contains(&"echo".to_string()));
        assert_eq!(vhost.routes, routes);
    }

    #[test]
    fn consumer_routes_apply_to_their_namespace_only() {
        let snap = snapshot(
            r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: mine, namespace: consumer}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, namespace: mesh, port: 80}]
  rules:
  - filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-consumer, value: "yes 100%"}]}}]
    backendRefs: [{name: echo, namespace: mesh, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: consumers, namespace: mesh}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: consumer}]
  to: [{group: "", kind: Service}]
"#,
        );
        let consumer = snap.proxy("client-1.consumer").unwrap();
        let routes = echo_routes(&consumer);
        assert_eq!(routes.len(), 1);
        let header = routes[0].request_headers_to_add[0].header.as_ref().unwrap();
        assert_eq!(
            (header.key.as_str(), header.value.as_str()),
            ("x-consumer", "yes 100%%")
        );
        // Callers in the Service's namespace have no route there: echo's
        // annotations route them, on echo's own chain all the same.
        let producer = snap.proxy("client-0.mesh").unwrap();
        let routes = echo_routes(&producer);
        assert!(routes[0].request_headers_to_add.is_empty());
        assert_eq!(
            action(&routes[0]).timeout,
            Some(proto_duration(std::time::Duration::from_secs(3)))
        );
    }

    #[test]
    fn filters_become_headers_redirects_rewrites_and_mirrors() {
        let snap = snapshot(
            r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: filters, namespace: mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /strip-prefix}}]
    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}}]
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /prefix/one}}]
    filters: [{type: URLRewrite, urlRewrite: {hostname: one.example, path: {type: ReplacePrefixMatch, replacePrefixMatch: /one/}}}]
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /full}}]
    filters:
    - {type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /one}}}
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: X-Set, value: s}], add: [{name: X-Add, value: a}], remove: [X-Remove]}
    - type: ResponseHeaderModifier
      responseHeaderModifier: {set: [{name: X-Out, value: o}], remove: [X-Gone]}
    - {type: RequestMirror, requestMirror: {backendRef: {name: echo-v2, port: 80}, fraction: {numerator: 1, denominator: 4}}}
    - {type: RequestMirror, requestMirror: {backendRef: {name: missing, port: 80}}}
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /redirect}}]
    filters: [{type: RequestRedirect, requestRedirect: {scheme: https, hostname: example.org, statusCode: 301, path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}}]
  - matches: [{path: {type: PathPrefix, value: /port}}]
    filters: [{type: RequestRedirect, requestRedirect: {port: 8083, statusCode: 308}}]
  - matches: [{path: {type: PathPrefix, value: /scheme}}]
    filters: [{type: RequestRedirect, requestRedirect: {scheme: https, path: {type: ReplaceFullPath, replaceFullPath: /x}}}]
"#,
        );
        let view = snap.proxy("client-0.mesh").unwrap();
        let routes = echo_routes(&view);
        let by_prefix = |p: &str| {
            routes
                .iter()
                .find(|r| {
                    r.r#match.as_ref().unwrap().path_specifier
                        == Some(route_match::PathSpecifier::PathSeparatedPrefix(p.into()))
                })
                .unwrap_or_else(|| panic!("no route for {p}"))
        };
        let rewrite = |p: &str| {
            let r = action(by_prefix(p)).regex_rewrite.clone().unwrap();
            (r.pattern.unwrap().regex, r.substitution)
        };
        assert_eq!(
            rewrite("/strip-prefix"),
            ("^/strip-prefix/*".into(), "/".into())
        );
        assert_eq!(
            rewrite("/prefix/one"),
            ("^/prefix/one".into(), "/one".into())
        );
        assert_eq!(rewrite("/full"), ("^.*$".into(), "/one".into()));
        assert_eq!(
            action(by_prefix("/prefix/one")).host_rewrite_specifier,
            Some(route_action::HostRewriteSpecifier::HostRewriteLiteral(
                "one.example".into()
            ))
        );

        let full = by_prefix("/full");
        let added: Vec<_> = full
            .request_headers_to_add
            .iter()
            .map(|h| {
                let header = h.header.as_ref().unwrap();
                (header.key.as_str(), header.value.as_str(), h.append_action)
            })
            .collect();
        use header_value_option::HeaderAppendAction;
        assert_eq!(
            added,
            [
                (
                    "x-set",
                    "s",
                    HeaderAppendAction::OverwriteIfExistsOrAdd as i32
                ),
                ("x-add", "a", HeaderAppendAction::AppendIfExistsOrAdd as i32),
            ]
        );
        assert_eq!(full.request_headers_to_remove, ["x-remove"]);
        assert_eq!(full.response_headers_to_remove, ["x-gone"]);
        assert_eq!(full.response_headers_to_add.len(), 1);
        let mirrors = &action(full).request_mirror_policies;
        assert_eq!(mirrors.len(), 1, "the unresolved mirror is left out");
        assert_eq!(mirrors[0].cluster, V2);
        let fraction = mirrors[0]
            .runtime_fraction
            .as_ref()
            .unwrap()
            .default_value
            .unwrap();
        assert_eq!(fraction.numerator, 250_000);

        let redirect = |p: &str| match &by_prefix(p).action {
            Some(route::Action::Redirect(r)) => r.clone(),
            other => panic!("{other:?}"),
        };
        use redirect_action::{PathRewriteSpecifier, RedirectResponseCode, SchemeRewriteSpecifier};
        let r = redirect("/redirect");
        assert_eq!(
            r.scheme_rewrite_specifier,
            Some(SchemeRewriteSpecifier::SchemeRedirect("https".into()))
        );
        assert_eq!(r.host_redirect, "example.org");
        assert_eq!(r.port_redirect, 0, "443 is https's own");
        assert_eq!(
            r.response_code,
            RedirectResponseCode::MovedPermanently as i32
        );
        assert!(matches!(
            r.path_rewrite_specifier,
            Some(PathRewriteSpecifier::RegexRewrite(ref re))
                if re.pattern.as_ref().unwrap().regex == "^/redirect" && re.substitution == "/new"
        ));
        let r = redirect("/port");
        assert_eq!(r.port_redirect, 8083);
        assert_eq!(
            r.response_code,
            RedirectResponseCode::PermanentRedirect as i32
        );
        let r = redirect("/scheme");
        assert_eq!(r.port_redirect, 0);
        assert_eq!(r.response_code, RedirectResponseCode::Found as i32);
        assert_eq!(
            r.path_rewrite_specifier,
            Some(PathRewriteSpecifier::PathRedirect("/x".into()))
        );
        let refs = &view.get(Kind::Route, ECHO).unwrap().cluster_refs;
        assert_eq!(refs, &[V1, V2], "the mirror's cluster is referred to");
    }

    #[test]
    fn prefix_rewrites_keep_segments_apart() {
        let rewrite = |replacement: &str, prefix: &str| {
            let r = path_rewrite(&PathModifier::Prefix(replacement.into()), Some(prefix));
            (r.pattern.unwrap().regex, r.substitution)
        };
        assert_eq!(rewrite("/xyz/", "/foo"), ("^/foo".into(), "/xyz".into()));
        assert_eq!(rewrite("", "/foo"), ("^/foo/*".into(), "/".into()));
        assert_eq!(rewrite("/xyz", ""), ("^/".into(), "/xyz/".into()));
        assert_eq!(
            rewrite(r"/a\b", "/café.v1"),
            (r"^/café\.v1".into(), r"/a\\b".into())
        );
    }

    #[test]
    fn redirect_ports_follow_the_specification() {
        let r = |scheme: Option<&str>, hostname: Option<&str>, port: Option<u16>| Redirect {
            scheme: scheme.map(Into::into),
            hostname: hostname.map(Into::into),
            port,
            path: None,
            status: 302,
        };
        // Service on port 80: Envoy's handling of Host already gives it.
        assert_eq!(redirect_port(&r(None, None, None), 80), 0);
        assert_eq!(redirect_port(&r(Some("https"), None, None), 80), 0);
        assert_eq!(redirect_port(&r(None, Some("a.example"), None), 80), 0);
        assert_eq!(redirect_port(&r(None, None, Some(8083)), 80), 8083);
        // Service on 8080: the request's Host carries :8080.
        assert_eq!(redirect_port(&r(None, None, None), 8080), 0);
        assert_eq!(redirect_port(&r(Some("https"), None, None), 8080), 443);
        assert_eq!(redirect_port(&r(Some("http"), None, None), 8080), 80);
        assert_eq!(redirect_port(&r(None, Some("a.example"), None), 8080), 8080);
        assert_eq!(
            redirect_port(&r(Some("https"), Some("a.example"), None), 8080),
            0
        );
    }

    #[test]
    fn unresolved_backends_answer_500() {
        let snap = snapshot(
            r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: broken, namespace: mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /mixed}}]
    backendRefs: [{name: echo-v1, port: 80, weight: 1}, {name: missing, port: 80, weight: 1}]
  - matches: [{path: {type: PathPrefix, value: /none}}]
    backendRefs: [{name: missing, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /zero}}]
    backendRefs: [{name: echo-v1, port: 80, weight: 0}]
  - matches: [{path: {type: PathPrefix, value: /other-namespace}}]
    backendRefs: [{name: api, namespace: other, port: 80}]
"#,
        );
        let view = snap.proxy("client-0.mesh").unwrap();
        let routes = echo_routes(&view);
        let prefix = |r: &EnvoyRoute| match &r.r#match.as_ref().unwrap().path_specifier {
            Some(route_match::PathSpecifier::PathSeparatedPrefix(p)) => p.clone(),
            other => panic!("{other:?}"),
        };
        let (mixed, rest): (Vec<_>, Vec<_>) = routes.iter().partition(|r| prefix(r) == "/mixed");
        let mixed = action(mixed[0]);
        assert_eq!(
            weights(mixed),
            [(V1.to_string(), 1), (UNRESOLVED.to_string(), 1)]
        );
        assert_eq!(
            mixed.cluster_not_found_response_code,
            route_action::ClusterNotFoundResponseCode::InternalServerError as i32
        );
        assert_eq!(rest.len(), 3);
        for route in rest {
            assert!(
                matches!(
                    route.action,
                    Some(route::Action::DirectResponse(DirectResponseAction {
                        status: 500,
                        ..
                    }))
                ),
                "{route:?}"
            );
        }
        let rc = route_config(&view, ECHO);
        assert_eq!(
            rc.validate_clusters,
            Some(meshd_proto::BoolValue { value: false })
        );
        assert_eq!(view.get(Kind::Route, ECHO).unwrap().cluster_refs, [V1]);
    }

    #[test]
    fn backend_filters_timeouts_and_grpc_methods() {
        let snap = snapshot(
            r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: backend, namespace: mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /t}}]
    timeouts: {request: 10s, backendRequest: 2s}
    backendRefs:
    - name: echo-v1
      port: 80
      filters: [{type: RequestHeaderModifier, requestHeaderModifier: {add: [{name: x-backend, value: v1}]}}]
  - timeouts: {backendRequest: 1s}
    backendRefs: [{name: echo-v2, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: grpc, namespace: mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 8080}]
  rules:
  - matches: [{method: {service: pkg.Echo, method: Call}}]
    backendRefs: [{name: echo-v1, port: 8080}]
"#,
        );
        let view = snap.proxy("client-0.mesh").unwrap();
        let routes = echo_routes(&view);
        let t = action(&routes[0]);
        assert_eq!(
            t.timeout,
            Some(proto_duration(std::time::Duration::from_secs(2)))
        );
        let Some(route_action::ClusterSpecifier::WeightedClusters(w)) = &t.cluster_specifier else {
            panic!("{t:?}")
        };
        assert_eq!(w.clusters[0].request_headers_to_add.len(), 1);
        assert_eq!(
            action(&routes[1]).timeout,
            Some(proto_duration(std::time::Duration::from_secs(1)))
        );

        let grpc = route_config(&view, "echo.mesh.svc.cluster.local:8080");
        let route = &grpc.virtual_hosts[0].routes[0];
        let m = route.r#match.as_ref().unwrap();
        assert_eq!(
            m.path_specifier,
            Some(route_match::PathSpecifier::Path("/pkg.Echo/Call".into()))
        );
        assert_eq!(m.headers[0].name, ":method");
    }

    #[test]
    fn a_scoped_proxy_gets_the_clusters_its_routes_send_to() {
        let snap = snapshot(SPLIT);
        let view = snap.proxy("scoped-0.mesh").unwrap();
        for cluster in [V1, V2] {
            assert!(view.get(Kind::Cluster, cluster).is_some(), "{cluster}");
        }
        assert_eq!(echo_routes(&view).len(), 4);
        // echo-v1 itself is not in scope: no chain for its VIP.
        let chains = http_chains(&view);
        assert!(
            chains
                .iter()
                .all(|c| !c.2.contains(&"198.19.0.2".to_string())),
            "{chains:?}"
        );
    }

    #[test]
    fn a_route_change_rebuilds_the_routes() {
        let first = snapshot(SPLIT);
        let mesh = mesh(&format!(
            "{SERVICES}\n---\n{}",
            SPLIT.replace("weight: 30", "weight: 40")
        ));
        let next = Snapshot::next(2, mesh, TranslateOptions::default(), &first);
        let before = first.proxy("client-0.mesh").unwrap();
        let after = next.proxy("client-0.mesh").unwrap();
        assert_ne!(
            before.get(Kind::Route, ECHO).unwrap().version,
            after.get(Kind::Route, ECHO).unwrap().version
        );
        assert_eq!(
            weights(action(&echo_routes(&after)[3])),
            [(V1.to_string(), 40), (V2.to_string(), 70)]
        );
    }
}
