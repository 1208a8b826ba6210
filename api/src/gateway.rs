//! Gateway API routes for the mesh (GAMMA): `HTTPRoute` and `GRPCRoute`
//! objects whose `parentRefs` name a Service, and the `ReferenceGrant`s
//! that let a route send to a Service in another namespace.
//!
//! The objects are the community-maintained `gateway-api` types, as a user
//! writes them (`kubectl`, the file registry). Here they are checked and
//! reduced to a [`Route`]: what the mesh does with a route, independent of
//! which of the two kinds it came from. A `GRPCRoute` is an HTTP/2 route
//! whose matches are on the `/service/method` path, so both become the same
//! rules. What depends on the rest of the mesh (does the parent Service
//! exist, is a backend permitted) is decided by discovery, not here.

use std::fmt;
use std::time::Duration;

use gateway_api::grpcroutes::{GrpcRoute, GrpcRouteRulesMatchesMethodType};
use gateway_api::httproutes::{
    HttpRoute, HttpRouteParentRefs, HttpRouteRules, HttpRouteRulesBackendRefs,
    HttpRouteRulesFilters, HttpRouteRulesFiltersRequestHeaderModifier,
    HttpRouteRulesFiltersRequestMirrorBackendRef, HttpRouteRulesFiltersRequestRedirectScheme,
    HttpRouteRulesFiltersType, HttpRouteRulesMatches, HttpRouteRulesMatchesHeadersType,
    HttpRouteRulesMatchesPathType, HttpRouteRulesMatchesQueryParamsType,
};
use gateway_api::referencegrants::ReferenceGrant;

pub use gateway_api::grpcroutes::GrpcRoute as GrpcRouteObject;
pub use gateway_api::httproutes::HttpRoute as HttpRouteObject;
pub use gateway_api::referencegrants::ReferenceGrant as ReferenceGrantObject;
/// The metadata of the Gateway API types (their k8s-openapi's).
pub use k8s_openapi_gateway::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// The API group of every kind here.
pub const GROUP: &str = "gateway.networking.k8s.io";
/// The `controllerName` meshd writes into each route's `status.parents`.
pub const CONTROLLER_NAME: &str = "meshd.io/mesh-controller";
/// The most rules, matches per rule, backends per rule and filters per rule
/// or backend a route may have: the CRD's own bounds (`maxItems`), so a
/// route `kubectl` accepts is accepted here too.
pub const MAX_RULES: usize = 16;
pub const MAX_MATCHES: usize = 64;
pub const MAX_BACKENDS: usize = 16;
pub const MAX_FILTERS: usize = 16;
pub const MAX_PARENTS: usize = 32;

/// Which of the two route kinds a route came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RouteKind {
    Http,
    Grpc,
}

impl RouteKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RouteKind::Http => "HTTPRoute",
            RouteKind::Grpc => "GRPCRoute",
        }
    }

    /// The plural resource name, as in the API path.
    pub fn plural(self) -> &'static str {
        match self {
            RouteKind::Http => "httproutes",
            RouteKind::Grpc => "grpcroutes",
        }
    }
}

impl fmt::Display for RouteKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which route: kind, namespace, name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteKey {
    pub kind: RouteKind,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for RouteKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// A `parentRefs` entry of kind Service (group ""), namespace defaulted to
/// the route's.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ParentRef {
    pub namespace: String,
    pub name: String,
    /// `None`: every port of the Service.
    pub port: Option<u16>,
}

/// A `backendRef` (or a mirror's) of kind Service, namespace defaulted to
/// the route's.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendRef {
    pub namespace: String,
    pub name: String,
    /// `None` only where the specification lets it be (a parent's port is
    /// used): discovery refuses a Service backend without one.
    pub port: Option<u16>,
    /// Set when the reference is to something other than a core Service:
    /// `group/kind`, which discovery reports as `InvalidKind`.
    pub unsupported_kind: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PathMatch {
    Exact(String),
    /// A prefix of whole path segments (`/v1` matches `/v1` and `/v1/x`,
    /// not `/v12`).
    Prefix(String),
    Regex(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ValueMatch {
    Exact(String),
    Regex(String),
}

/// One `matches` entry: every condition must hold.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RouteMatch {
    /// `None` on an HTTPRoute is `PathPrefix /`, the specification's default.
    pub path: Option<PathMatch>,
    pub method: Option<String>,
    /// (lower-cased header name, value).
    pub headers: Vec<(String, ValueMatch)>,
    pub query: Vec<(String, ValueMatch)>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct HeaderModifier {
    pub set: Vec<(String, String)>,
    pub add: Vec<(String, String)>,
    pub remove: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PathModifier {
    Full(String),
    /// Replace the matched `PathPrefix` with this.
    Prefix(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub hostname: Option<String>,
    pub port: Option<u16>,
    pub path: Option<PathModifier>,
    /// 301, 302 (the default), 303, 307 or 308.
    pub status: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Rewrite {
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Mirror {
    pub backend: BackendRef,
    /// The share of requests mirrored, as numerator/denominator; `None`: all.
    pub fraction: Option<(u32, u32)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Filter {
    RequestHeaders(HeaderModifier),
    ResponseHeaders(HeaderModifier),
    Redirect(Redirect),
    Rewrite(Rewrite),
    Mirror(Mirror),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Backend {
    pub target: BackendRef,
    /// Relative; 0 sends nothing. Defaults to 1.
    pub weight: u32,
    /// Header modifiers applied only to requests sent to this backend.
    pub filters: Vec<Filter>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Timeouts {
    /// The whole request, retries included; `None`: no deadline.
    pub request: Option<Duration>,
    /// Each try to a backend.
    pub backend_request: Option<Duration>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Rule {
    pub name: Option<String>,
    /// Empty: match every request (`PathPrefix /`).
    pub matches: Vec<RouteMatch>,
    pub filters: Vec<Filter>,
    /// Empty with no redirect filter: the specification's 500 answer.
    pub backends: Vec<Backend>,
    pub timeouts: Timeouts,
}

/// A checked route: what the mesh does with one HTTPRoute or GRPCRoute.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Route {
    pub key: RouteKey,
    pub generation: Option<i64>,
    /// Seconds since the epoch; the older route wins a precedence tie.
    pub created: Option<i64>,
    /// The parents of kind Service. Other parents (Gateways) belong to other
    /// controllers and are left out.
    pub parents: Vec<ParentRef>,
    pub hostnames: Vec<String>,
    pub rules: Vec<Rule>,
}

impl Route {
    /// Every Service this route sends to (backends and mirrors).
    pub fn backend_refs(&self) -> impl Iterator<Item = &BackendRef> {
        self.rules.iter().flat_map(|r| {
            r.backends
                .iter()
                .map(|b| &b.target)
                .chain(r.filters.iter().filter_map(|f| match f {
                    Filter::Mirror(m) => Some(&m.backend),
                    _ => None,
                }))
        })
    }
}

/// A `ReferenceGrant`: routes of the `from` namespaces may send to the
/// Services of the grant's namespace it names.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Grant {
    pub namespace: String,
    pub name: String,
    /// Namespaces whose HTTPRoutes / GRPCRoutes are allowed.
    pub from: Vec<(RouteKind, String)>,
    /// Service names allowed; `None` in the list: every Service.
    pub to: Vec<Option<String>>,
}

impl Grant {
    /// Whether a route of `kind` in `from_namespace` may refer to Service
    /// `service` of this grant's namespace.
    pub fn permits(&self, kind: RouteKind, from_namespace: &str, service: &str) -> bool {
        self.from
            .iter()
            .any(|(k, ns)| *k == kind && ns == from_namespace)
            && self
                .to
                .iter()
                .any(|name| name.as_deref().is_none_or(|n| n == service))
    }
}

/// A route the mesh cannot use: which object, which field, what is wrong and
/// what is accepted. `reason` is the Gateway API condition reason it is
/// reported with (`UnsupportedValue`, …).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{object}: {field}: {message}")]
pub struct RouteError {
    pub object: String,
    pub field: String,
    pub message: String,
    pub reason: &'static str,
}

struct Ctx<'a> {
    object: String,
    namespace: &'a str,
    kind: RouteKind,
}

impl Ctx<'_> {
    fn err(&self, field: impl Into<String>, message: impl Into<String>) -> RouteError {
        RouteError {
            object: self.object.clone(),
            field: field.into(),
            message: message.into(),
            reason: "UnsupportedValue",
        }
    }
}

fn meta_key(
    kind: RouteKind,
    meta: &k8s_openapi_gateway::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Result<RouteKey, RouteError> {
    let name = meta.name.clone().filter(|n| !n.is_empty());
    let Some(name) = name else {
        return Err(RouteError {
            object: kind.to_string(),
            field: "metadata.name".into(),
            message: "is required".into(),
            reason: "UnsupportedValue",
        });
    };
    let namespace = meta
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".into());
    Ok(RouteKey {
        kind,
        namespace,
        name,
    })
}

/// Checks an HTTPRoute.
pub fn http_route(route: &HttpRoute) -> Result<Route, RouteError> {
    let key = meta_key(RouteKind::Http, &route.metadata)?;
    let ctx = Ctx {
        object: key.to_string(),
        namespace: &key.namespace,
        kind: key.kind,
    };
    let parents = parents(&ctx, route.spec.parent_refs.as_deref().unwrap_or_default())?;
    let rules = route.spec.rules.as_deref().unwrap_or_default();
    if rules.len() > MAX_RULES {
        return Err(ctx.err(
            "spec.rules",
            format!("{} rules; accepted: at most {MAX_RULES}", rules.len()),
        ));
    }
    let rules = rules
        .iter()
        .enumerate()
        .map(|(i, r)| rule(&ctx, &format!("spec.rules[{i}]"), r))
        .collect::<Result<_, _>>()?;
    Ok(Route {
        generation: route.metadata.generation,
        created: created(&route.metadata),
        parents,
        hostnames: route.spec.hostnames.clone().unwrap_or_default(),
        rules,
        key,
    })
}

/// Checks a GRPCRoute. Its parts have the same shapes as an HTTPRoute's
/// (the generated types differ only in name), so they are read as such.
pub fn grpc_route(route: &GrpcRoute) -> Result<Route, RouteError> {
    let key = meta_key(RouteKind::Grpc, &route.metadata)?;
    let ctx = Ctx {
        object: key.to_string(),
        namespace: &key.namespace,
        kind: key.kind,
    };
    let parent_refs: Option<Vec<HttpRouteParentRefs>> =
        same_shape(&ctx, "spec.parentRefs", &route.spec.parent_refs)?;
    let parent_refs = parent_refs.unwrap_or_default();
    let parents = parents(&ctx, &parent_refs)?;
    let grpc_rules = route.spec.rules.as_deref().unwrap_or_default();
    if grpc_rules.len() > MAX_RULES {
        return Err(ctx.err(
            "spec.rules",
            format!("{} rules; accepted: at most {MAX_RULES}", grpc_rules.len()),
        ));
    }
    let mut rules = Vec::with_capacity(grpc_rules.len());
    for (i, r) in grpc_rules.iter().enumerate() {
        let field = format!("spec.rules[{i}]");
        let mut matches = Vec::new();
        for (j, m) in r.matches.iter().flatten().enumerate() {
            let field = format!("{field}.matches[{j}]");
            let mut out = RouteMatch {
                path: None,
                method: Some("POST".into()),
                headers: Vec::new(),
                query: Vec::new(),
            };
            if let Some(method) = &m.method {
                let regex = matches!(
                    method.r#type,
                    Some(GrpcRouteRulesMatchesMethodType::RegularExpression)
                );
                out.path = grpc_path(&ctx, &format!("{field}.method"), method, regex)?;
            }
            for (k, h) in m.headers.iter().flatten().enumerate() {
                let value = match h.r#type {
                    Some(gateway_api::grpcroutes::GrpcRouteRulesMatchesHeadersType::RegularExpression) => {
                        ValueMatch::Regex(regex(&ctx, &format!("{field}.headers[{k}].value"), &h.value)?)
                    }
                    _ => ValueMatch::Exact(h.value.clone()),
                };
                out.headers.push((
                    header_name(&ctx, &format!("{field}.headers[{k}].name"), &h.name)?,
                    value,
                ));
            }
            matches.push(out);
        }
        if matches.len() > MAX_MATCHES {
            return Err(ctx.err(
                format!("{field}.matches"),
                format!("accepted: at most {MAX_MATCHES}"),
            ));
        }
        // Without matches a GRPCRoute rule still takes only gRPC calls.
        if matches.is_empty() {
            matches.push(RouteMatch {
                path: None,
                method: Some("POST".into()),
                headers: Vec::new(),
                query: Vec::new(),
            });
        }
        let filters: Vec<HttpRouteRulesFilters> =
            same_shape::<_, Option<_>>(&ctx, &format!("{field}.filters"), &r.filters)?
                .unwrap_or_default();
        let backend_refs: Vec<HttpRouteRulesBackendRefs> =
            same_shape::<_, Option<_>>(&ctx, &format!("{field}.backendRefs"), &r.backend_refs)?
                .unwrap_or_default();
        rules.push(Rule {
            name: r.name.clone(),
            matches,
            filters: filters_of(&ctx, &field, &filters, false)?,
            backends: backends(&ctx, &field, &backend_refs)?,
            timeouts: Timeouts::default(),
        });
    }
    Ok(Route {
        generation: route.metadata.generation,
        created: created(&route.metadata),
        parents,
        hostnames: route.spec.hostnames.clone().unwrap_or_default(),
        rules,
        key,
    })
}

/// The Service parents of an HTTPRoute, read leniently (a bad port is left
/// out): where to report a route that [`http_route`] refuses.
pub fn http_route_parents(route: &HttpRoute) -> Vec<ParentRef> {
    lenient_parents(&route.metadata, route.spec.parent_refs.as_deref())
}

/// [`http_route_parents`] for a GRPCRoute.
pub fn grpc_route_parents(route: &GrpcRoute) -> Vec<ParentRef> {
    let refs: Option<Vec<HttpRouteParentRefs>> = serde_json::to_value(&route.spec.parent_refs)
        .and_then(serde_json::from_value)
        .unwrap_or_default();
    lenient_parents(&route.metadata, refs.as_deref())
}

fn lenient_parents(meta: &ObjectMeta, refs: Option<&[HttpRouteParentRefs]>) -> Vec<ParentRef> {
    let namespace = meta
        .namespace
        .as_deref()
        .filter(|n| !n.is_empty())
        .unwrap_or("default");
    refs.unwrap_or_default()
        .iter()
        .filter(|p| p.group.as_deref() == Some("") && p.kind.as_deref() == Some("Service"))
        .map(|p| ParentRef {
            namespace: p.namespace.clone().unwrap_or_else(|| namespace.to_string()),
            name: p.name.clone(),
            port: p.port.and_then(|p| u16::try_from(p).ok()),
        })
        .collect()
}

/// Checks a ReferenceGrant; only what concerns routes to Services is kept.
pub fn reference_grant(grant: &ReferenceGrant) -> Result<Grant, RouteError> {
    let name = grant.metadata.name.clone().unwrap_or_default();
    let namespace = grant
        .metadata
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".into());
    if name.is_empty() {
        return Err(RouteError {
            object: "ReferenceGrant".into(),
            field: "metadata.name".into(),
            message: "is required".into(),
            reason: "UnsupportedValue",
        });
    }
    let from = grant
        .spec
        .from
        .iter()
        .filter(|f| f.group == GROUP)
        .filter_map(|f| {
            let kind = match f.kind.as_str() {
                "HTTPRoute" => RouteKind::Http,
                "GRPCRoute" => RouteKind::Grpc,
                _ => return None,
            };
            Some((kind, f.namespace.clone()))
        })
        .collect();
    let to = grant
        .spec
        .to
        .iter()
        .filter(|t| t.group.is_empty() && t.kind == "Service")
        .map(|t| t.name.clone().filter(|n| !n.is_empty()))
        .collect();
    Ok(Grant {
        namespace,
        name,
        from,
        to,
    })
}

fn created(
    meta: &k8s_openapi_gateway::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<i64> {
    meta.creation_timestamp.as_ref().map(|t| t.0.as_second())
}

/// Re-reads a part of a GRPCRoute as the same-shaped HTTPRoute part.
fn same_shape<T: serde::Serialize, U: serde::de::DeserializeOwned>(
    ctx: &Ctx<'_>,
    field: &str,
    value: &T,
) -> Result<U, RouteError> {
    serde_json::to_value(value)
        .and_then(serde_json::from_value)
        .map_err(|e| ctx.err(field, format!("{e}")))
}

fn port(ctx: &Ctx<'_>, field: &str, port: Option<i32>) -> Result<Option<u16>, RouteError> {
    port.map(|p| {
        u16::try_from(p)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| ctx.err(field, format!("{p}; accepted: a port from 1 to 65535")))
    })
    .transpose()
}

fn parents(ctx: &Ctx<'_>, refs: &[HttpRouteParentRefs]) -> Result<Vec<ParentRef>, RouteError> {
    if refs.len() > MAX_PARENTS {
        return Err(ctx.err(
            "spec.parentRefs",
            format!("{} parents; accepted: at most {MAX_PARENTS}", refs.len()),
        ));
    }
    let mut out = Vec::new();
    for (i, p) in refs.iter().enumerate() {
        // The default group is the Gateway API's and the default kind
        // Gateway: only an explicit `group: ""`, `kind: Service` is ours.
        let is_service = p.group.as_deref() == Some("") && p.kind.as_deref() == Some("Service");
        if !is_service {
            continue;
        }
        if p.section_name.as_deref().is_some_and(|s| !s.is_empty()) {
            return Err(ctx.err(
                format!("spec.parentRefs[{i}].sectionName"),
                "is not supported for a Service parent; accepted: `port` to attach to one port",
            ));
        }
        out.push(ParentRef {
            namespace: p
                .namespace
                .clone()
                .unwrap_or_else(|| ctx.namespace.to_string()),
            name: p.name.clone(),
            port: port(ctx, &format!("spec.parentRefs[{i}].port"), p.port)?,
        });
    }
    Ok(out)
}

fn rule(ctx: &Ctx<'_>, field: &str, r: &HttpRouteRules) -> Result<Rule, RouteError> {
    let matches = r.matches.as_deref().unwrap_or_default();
    if matches.len() > MAX_MATCHES {
        return Err(ctx.err(
            format!("{field}.matches"),
            format!("{} matches; accepted: at most {MAX_MATCHES}", matches.len()),
        ));
    }
    let matches = matches
        .iter()
        .enumerate()
        .map(|(j, m)| route_match(ctx, &format!("{field}.matches[{j}]"), m))
        .collect::<Result<Vec<_>, _>>()?;
    let filters = filters_of(ctx, field, r.filters.as_deref().unwrap_or_default(), true)?;
    let replaces_prefix = filters.iter().any(|f| {
        matches!(
            f,
            Filter::Rewrite(Rewrite {
                path: Some(PathModifier::Prefix(_)),
                ..
            }) | Filter::Redirect(Redirect {
                path: Some(PathModifier::Prefix(_)),
                ..
            })
        )
    });
    // The specification allows ReplacePrefixMatch only with PathPrefix
    // matches: there must be a prefix to replace (no match is `PathPrefix /`).
    if replaces_prefix
        && !matches
            .iter()
            .all(|m| matches!(m.path, Some(PathMatch::Prefix(_)) | None))
    {
        return Err(ctx.err(
            format!("{field}.filters"),
            "ReplacePrefixMatch needs every match of the rule to be a PathPrefix match; accepted: PathPrefix matches, or ReplaceFullPath",
        ));
    }
    let backend_refs = r.backend_refs.as_deref().unwrap_or_default();
    let timeouts = match &r.timeouts {
        None => Timeouts::default(),
        Some(t) => Timeouts {
            request: duration(
                ctx,
                &format!("{field}.timeouts.request"),
                t.request.as_deref(),
            )?,
            backend_request: duration(
                ctx,
                &format!("{field}.timeouts.backendRequest"),
                t.backend_request.as_deref(),
            )?,
        },
    };
    if let (Some(request), Some(backend)) = (timeouts.request, timeouts.backend_request)
        && !request.is_zero()
        && backend > request
    {
        return Err(ctx.err(
            format!("{field}.timeouts.backendRequest"),
            "is longer than timeouts.request; accepted: at most the request timeout",
        ));
    }
    Ok(Rule {
        name: r.name.clone(),
        matches,
        filters,
        backends: backends(ctx, field, backend_refs)?,
        timeouts,
    })
}

fn duration(
    ctx: &Ctx<'_>,
    field: &str,
    value: Option<&str>,
) -> Result<Option<Duration>, RouteError> {
    value
        .map(|v| {
            v.parse::<gateway_api::Duration>()
                .map(|d| Duration::from_millis(d.as_millis() as u64))
                .map_err(|e| {
                    ctx.err(
                        field,
                        format!("`{v}`: {e}; accepted: a Gateway API duration such as 10s, 1m30s or 500ms (0s: no deadline)"),
                    )
                })
        })
        .transpose()
}

fn route_match(
    ctx: &Ctx<'_>,
    field: &str,
    m: &HttpRouteRulesMatches,
) -> Result<RouteMatch, RouteError> {
    let path = match &m.path {
        None => None,
        Some(p) => {
            let value = p.value.clone().unwrap_or_else(|| "/".into());
            let f = format!("{field}.path.value");
            Some(match p.r#type {
                Some(HttpRouteRulesMatchesPathType::Exact) => {
                    absolute_path(ctx, &f, &value)?;
                    PathMatch::Exact(value)
                }
                Some(HttpRouteRulesMatchesPathType::RegularExpression) => {
                    PathMatch::Regex(regex(ctx, &f, &value)?)
                }
                Some(HttpRouteRulesMatchesPathType::PathPrefix) | None => {
                    absolute_path(ctx, &f, &value)?;
                    PathMatch::Prefix(value)
                }
            })
        }
    };
    let mut headers = Vec::new();
    for (k, h) in m.headers.iter().flatten().enumerate() {
        let f = format!("{field}.headers[{k}]");
        let value = match h.r#type {
            Some(HttpRouteRulesMatchesHeadersType::RegularExpression) => {
                ValueMatch::Regex(regex(ctx, &format!("{f}.value"), &h.value)?)
            }
            _ => ValueMatch::Exact(h.value.clone()),
        };
        headers.push((header_name(ctx, &format!("{f}.name"), &h.name)?, value));
    }
    let mut query = Vec::new();
    for (k, q) in m.query_params.iter().flatten().enumerate() {
        let f = format!("{field}.queryParams[{k}]");
        if q.name.is_empty() {
            return Err(ctx.err(
                format!("{f}.name"),
                "is empty; accepted: a query parameter name",
            ));
        }
        let value = match q.r#type {
            Some(HttpRouteRulesMatchesQueryParamsType::RegularExpression) => {
                ValueMatch::Regex(regex(ctx, &format!("{f}.value"), &q.value)?)
            }
            _ => ValueMatch::Exact(q.value.clone()),
        };
        query.push((q.name.clone(), value));
    }
    let method = m.method.as_ref().map(|method| {
        serde_json::to_value(method)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    });
    Ok(RouteMatch {
        path,
        method,
        headers,
        query,
    })
}

fn grpc_path(
    ctx: &Ctx<'_>,
    field: &str,
    method: &gateway_api::grpcroutes::GrpcRouteRulesMatchesMethod,
    is_regex: bool,
) -> Result<Option<PathMatch>, RouteError> {
    let service = method.service.as_deref().filter(|s| !s.is_empty());
    let name = method.method.as_deref().filter(|s| !s.is_empty());
    if service.is_none() && name.is_none() {
        return Err(ctx.err(
            field,
            "names neither service nor method; accepted: at least one of them",
        ));
    }
    if is_regex {
        let service = service
            .map(|s| regex(ctx, &format!("{field}.service"), s))
            .transpose()?;
        let name = name
            .map(|m| regex(ctx, &format!("{field}.method"), m))
            .transpose()?;
        return Ok(Some(PathMatch::Regex(format!(
            "/{}/{}",
            service.as_deref().unwrap_or("[^/]+"),
            name.as_deref().unwrap_or("[^/]+")
        ))));
    }
    for (part, value) in [("service", service), ("method", name)] {
        if let Some(v) = value
            && v.contains('/')
        {
            return Err(ctx.err(
                format!("{field}.{part}"),
                format!("`{v}` contains `/`; accepted: a gRPC {part} name"),
            ));
        }
    }
    Ok(Some(match (service, name) {
        (Some(s), Some(m)) => PathMatch::Exact(format!("/{s}/{m}")),
        (Some(s), None) => PathMatch::Prefix(format!("/{s}")),
        (None, Some(m)) => PathMatch::Regex(format!("/[^/]+/{}", regex_escape(m))),
        (None, None) => unreachable!("checked above"),
    }))
}

/// `text` matched literally by RE2 (Envoy's regular expressions). Only
/// ASCII punctuation is escaped: RE2 refuses an escaped letter (`\é`).
pub fn regex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii_punctuation() && c != '-' && c != '_' && c != '/' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn absolute_path(ctx: &Ctx<'_>, field: &str, value: &str) -> Result<(), RouteError> {
    if !value.starts_with('/')
        || value.contains("//")
        || value.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(ctx.err(
            field,
            format!(
                "`{value}`; accepted: an absolute path starting with `/`, without `//` or spaces"
            ),
        ));
    }
    Ok(())
}

/// Envoy matches regular expressions with RE2; the `regex` crate's syntax
/// is the same subset (no look-around, no back-references), so what it
/// refuses Envoy would refuse too, and the route is refused here instead of
/// being NACKed by every proxy.
fn regex(ctx: &Ctx<'_>, field: &str, value: &str) -> Result<String, RouteError> {
    if value.len() > 1024 {
        return Err(ctx.err(
            field,
            "is longer than 1024 characters; accepted: a shorter RE2 expression",
        ));
    }
    regex::Regex::new(value)
        .map(|_| value.to_string())
        .map_err(|e| {
            ctx.err(
                field,
                format!(
                    "`{value}` is not a valid regular expression ({}); accepted: RE2 syntax",
                    e.to_string().lines().last().unwrap_or_default()
                ),
            )
        })
}

fn header_name(ctx: &Ctx<'_>, field: &str, name: &str) -> Result<String, RouteError> {
    let valid = !name.is_empty()
        && name.len() <= 256
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !valid {
        return Err(ctx.err(
            field,
            format!("`{name}`; accepted: an HTTP header name (RFC 7230 token)"),
        ));
    }
    Ok(name.to_ascii_lowercase())
}

/// An HTTP header value cannot carry CR, LF or NUL (Envoy refuses such a
/// value, so the whole configuration would be NACKed).
fn header_value(ctx: &Ctx<'_>, field: &str, value: &str) -> Result<String, RouteError> {
    if value.contains(['\r', '\n', '\0']) {
        return Err(ctx.err(
            field,
            "contains a carriage return, line feed or NUL; accepted: a header value on one line",
        ));
    }
    Ok(value.to_string())
}

fn header_modifier(
    ctx: &Ctx<'_>,
    field: &str,
    m: &HttpRouteRulesFiltersRequestHeaderModifier,
) -> Result<HeaderModifier, RouteError> {
    let mut out = HeaderModifier::default();
    let pairs =
        |list: Vec<(&String, &String)>, part: &str| -> Result<Vec<(String, String)>, RouteError> {
            list.into_iter()
                .enumerate()
                .map(|(i, (name, value))| {
                    Ok((
                        header_name(ctx, &format!("{field}.{part}[{i}].name"), name)?,
                        header_value(ctx, &format!("{field}.{part}[{i}].value"), value)?,
                    ))
                })
                .collect()
        };
    out.set = pairs(
        m.set
            .iter()
            .flatten()
            .map(|h| (&h.name, &h.value))
            .collect(),
        "set",
    )?;
    out.add = pairs(
        m.add
            .iter()
            .flatten()
            .map(|h| (&h.name, &h.value))
            .collect(),
        "add",
    )?;
    for (i, h) in m.remove.iter().flatten().enumerate() {
        out.remove
            .push(header_name(ctx, &format!("{field}.remove[{i}]"), h)?);
    }
    Ok(out)
}

fn backend_ref(
    ctx: &Ctx<'_>,
    field: &str,
    group: Option<&str>,
    kind: Option<&str>,
    name: &str,
    namespace: Option<&str>,
    p: Option<i32>,
) -> Result<BackendRef, RouteError> {
    let group = group.unwrap_or_default();
    let kind = kind.unwrap_or("Service");
    let unsupported_kind = (!(group.is_empty() && kind == "Service")).then(|| {
        if group.is_empty() {
            kind.to_string()
        } else {
            format!("{group}/{kind}")
        }
    });
    Ok(BackendRef {
        namespace: namespace.unwrap_or(ctx.namespace).to_string(),
        name: name.to_string(),
        port: port(ctx, &format!("{field}.port"), p)?,
        unsupported_kind,
    })
}

fn mirror_ref(
    ctx: &Ctx<'_>,
    field: &str,
    b: &HttpRouteRulesFiltersRequestMirrorBackendRef,
) -> Result<BackendRef, RouteError> {
    backend_ref(
        ctx,
        field,
        b.group.as_deref(),
        b.kind.as_deref(),
        &b.name,
        b.namespace.as_deref(),
        b.port,
    )
}

fn filters_of(
    ctx: &Ctx<'_>,
    field: &str,
    filters: &[HttpRouteRulesFilters],
    http: bool,
) -> Result<Vec<Filter>, RouteError> {
    if filters.len() > MAX_FILTERS {
        return Err(ctx.err(
            format!("{field}.filters"),
            format!("accepted: at most {MAX_FILTERS}"),
        ));
    }
    let mut out = Vec::with_capacity(filters.len());
    for (i, f) in filters.iter().enumerate() {
        let field = format!("{field}.filters[{i}]");
        let missing = |what: &str| {
            ctx.err(&field, format!("type {what} without its `{}` settings; accepted: the settings field named after the type", lower_first(what)))
        };
        let filter = match f.r#type {
            HttpRouteRulesFiltersType::RequestHeaderModifier => {
                Filter::RequestHeaders(header_modifier(
                    ctx,
                    &format!("{field}.requestHeaderModifier"),
                    f.request_header_modifier
                        .as_ref()
                        .ok_or_else(|| missing("RequestHeaderModifier"))?,
                )?)
            }
            HttpRouteRulesFiltersType::ResponseHeaderModifier => {
                let m = f
                    .response_header_modifier
                    .as_ref()
                    .ok_or_else(|| missing("ResponseHeaderModifier"))?;
                let m: HttpRouteRulesFiltersRequestHeaderModifier =
                    same_shape(ctx, &format!("{field}.responseHeaderModifier"), m)?;
                Filter::ResponseHeaders(header_modifier(
                    ctx,
                    &format!("{field}.responseHeaderModifier"),
                    &m,
                )?)
            }
            HttpRouteRulesFiltersType::RequestMirror => {
                let m = f
                    .request_mirror
                    .as_ref()
                    .ok_or_else(|| missing("RequestMirror"))?;
                let fraction = match (&m.fraction, m.percent) {
                    (Some(fr), _) => {
                        let den = fr.denominator.unwrap_or(100);
                        if den <= 0 || fr.numerator < 0 || fr.numerator > den {
                            return Err(ctx.err(
                                format!("{field}.requestMirror.fraction"),
                                "accepted: 0 <= numerator <= denominator, denominator > 0",
                            ));
                        }
                        Some((fr.numerator as u32, den as u32))
                    }
                    (None, Some(p)) => {
                        if !(0..=100).contains(&p) {
                            return Err(ctx.err(
                                format!("{field}.requestMirror.percent"),
                                format!("{p}; accepted: 0 to 100"),
                            ));
                        }
                        Some((p as u32, 100))
                    }
                    (None, None) => None,
                };
                Filter::Mirror(Mirror {
                    backend: mirror_ref(
                        ctx,
                        &format!("{field}.requestMirror.backendRef"),
                        &m.backend_ref,
                    )?,
                    fraction,
                })
            }
            HttpRouteRulesFiltersType::RequestRedirect if http => {
                let r = f
                    .request_redirect
                    .as_ref()
                    .ok_or_else(|| missing("RequestRedirect"))?;
                let status = match &r.status_code {
                    None => 302,
                    Some(code) => match code {
                        301 | 302 | 303 | 307 | 308 => *code as u16,
                        other => {
                            return Err(ctx.err(
                                format!("{field}.requestRedirect.statusCode"),
                                format!("{other}; accepted: 301, 302, 303, 307, 308"),
                            ));
                        }
                    },
                };
                Filter::Redirect(Redirect {
                    scheme: r.scheme.as_ref().map(|s| match s {
                        HttpRouteRulesFiltersRequestRedirectScheme::Http => "http".to_string(),
                        HttpRouteRulesFiltersRequestRedirectScheme::Https => "https".to_string(),
                    }),
                    hostname: r.hostname.clone().filter(|h| !h.is_empty()),
                    port: port(ctx, &format!("{field}.requestRedirect.port"), r.port)?,
                    path: r
                        .path
                        .as_ref()
                        .map(|p| {
                            path_modifier(
                                ctx,
                                &format!("{field}.requestRedirect.path"),
                                p.replace_full_path.as_deref(),
                                p.replace_prefix_match.as_deref(),
                            )
                        })
                        .transpose()?,
                    status,
                })
            }
            HttpRouteRulesFiltersType::UrlRewrite if http => {
                let r = f
                    .url_rewrite
                    .as_ref()
                    .ok_or_else(|| missing("URLRewrite"))?;
                Filter::Rewrite(Rewrite {
                    hostname: r.hostname.clone().filter(|h| !h.is_empty()),
                    path: r
                        .path
                        .as_ref()
                        .map(|p| {
                            path_modifier(
                                ctx,
                                &format!("{field}.urlRewrite.path"),
                                p.replace_full_path.as_deref(),
                                p.replace_prefix_match.as_deref(),
                            )
                        })
                        .transpose()?,
                })
            }
            ref other => {
                let name = serde_json::to_value(other)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                let accepted = if http {
                    "RequestHeaderModifier, ResponseHeaderModifier, RequestRedirect, URLRewrite, RequestMirror"
                } else {
                    "RequestHeaderModifier, ResponseHeaderModifier, RequestMirror"
                };
                return Err(ctx.err(
                    format!("{field}.type"),
                    format!(
                        "{name} is not supported by meshd for {}; accepted: {accepted}",
                        ctx.kind
                    ),
                ));
            }
        };
        out.push(filter);
    }
    let redirects = out
        .iter()
        .filter(|f| matches!(f, Filter::Redirect(_)))
        .count();
    let rewrites = out
        .iter()
        .filter(|f| matches!(f, Filter::Rewrite(_)))
        .count();
    if redirects > 1 || rewrites > 1 || (redirects == 1 && rewrites == 1) {
        return Err(ctx.err(
            format!("{field}.filters"),
            "accepted: at most one of RequestRedirect and URLRewrite, once",
        ));
    }
    Ok(out)
}

fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

fn path_modifier(
    ctx: &Ctx<'_>,
    field: &str,
    full: Option<&str>,
    prefix: Option<&str>,
) -> Result<PathModifier, RouteError> {
    match (full, prefix) {
        (Some(p), None) => {
            absolute_path(ctx, &format!("{field}.replaceFullPath"), p)?;
            Ok(PathModifier::Full(p.to_string()))
        }
        (None, Some(p)) => {
            absolute_path(ctx, &format!("{field}.replacePrefixMatch"), p)?;
            Ok(PathModifier::Prefix(p.to_string()))
        }
        _ => Err(ctx.err(
            field,
            "accepted: exactly one of replaceFullPath and replacePrefixMatch",
        )),
    }
}

fn backends(
    ctx: &Ctx<'_>,
    field: &str,
    refs: &[HttpRouteRulesBackendRefs],
) -> Result<Vec<Backend>, RouteError> {
    if refs.len() > MAX_BACKENDS {
        return Err(ctx.err(
            format!("{field}.backendRefs"),
            format!("accepted: at most {MAX_BACKENDS}"),
        ));
    }
    let mut out = Vec::with_capacity(refs.len());
    for (i, b) in refs.iter().enumerate() {
        let f = format!("{field}.backendRefs[{i}]");
        let weight = match b.weight {
            None => 1,
            Some(w) if (0..=1_000_000).contains(&w) => w as u32,
            Some(w) => {
                return Err(ctx.err(
                    format!("{f}.weight"),
                    format!("{w}; accepted: 0 to 1000000"),
                ));
            }
        };
        let filters: Option<Vec<HttpRouteRulesFilters>> =
            same_shape(ctx, &format!("{f}.filters"), &b.filters)?;
        let filters = filters.unwrap_or_default();
        let filters = filters_of(ctx, &f, &filters, false)?;
        if let Some(Filter::Mirror(_)) = filters.iter().find(|f| matches!(f, Filter::Mirror(_))) {
            return Err(ctx.err(
                format!("{f}.filters"),
                "RequestMirror on a backendRef is not supported by meshd; accepted: RequestHeaderModifier, ResponseHeaderModifier",
            ));
        }
        out.push(Backend {
            target: backend_ref(
                ctx,
                &f,
                b.group.as_deref(),
                b.kind.as_deref(),
                &b.name,
                b.namespace.as_deref(),
                b.port,
            )?,
            weight,
            filters,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(yaml: &str) -> Result<Route, RouteError> {
        http_route(&serde_yaml::from_str::<HttpRoute>(yaml).unwrap())
    }

    #[test]
    fn a_conformance_route_is_read_with_defaults() {
        let r = http(
            r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: mesh-split, namespace: gateway-conformance-mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}, {name: some-gateway}]
  rules:
  - matches: [{path: {type: Exact, value: /v1}}]
    backendRefs: [{name: echo-v1, port: 80}]
  - backendRefs: [{name: echo-v2, port: 80, weight: 0}]
"#,
        )
        .unwrap();
        assert_eq!(
            r.key.to_string(),
            "HTTPRoute gateway-conformance-mesh/mesh-split"
        );
        assert_eq!(
            r.parents,
            [ParentRef {
                namespace: "gateway-conformance-mesh".into(),
                name: "echo".into(),
                port: Some(80)
            }]
        );
        assert_eq!(
            r.rules[0].matches[0].path,
            Some(PathMatch::Exact("/v1".into()))
        );
        assert_eq!(r.rules[0].backends[0].weight, 1);
        assert_eq!(r.rules[1].backends[0].weight, 0);
        assert_eq!(
            r.rules[1].backends[0].target.namespace,
            "gateway-conformance-mesh"
        );
        assert!(r.rules[1].matches.is_empty());
    }

    #[test]
    fn errors_name_the_route_the_field_and_what_is_accepted() {
        let e = http(
            r#"
metadata: {name: r, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: web}]
  rules:
  - matches: [{path: {type: RegularExpression, value: "/(?=x)"}}]
"#,
        )
        .unwrap_err();
        assert_eq!(e.object, "HTTPRoute shop/r");
        assert_eq!(e.field, "spec.rules[0].matches[0].path.value");
        assert!(e.message.contains("accepted: RE2 syntax"), "{e}");

        let e = http(
            r#"
metadata: {name: r, namespace: shop}
spec:
  rules:
  - filters: [{type: CORS, cors: {}}]
"#,
        )
        .unwrap_err();
        assert_eq!(e.field, "spec.rules[0].filters[0].type");
        assert!(e.message.contains("CORS is not supported"), "{e}");

        let e = http(
            r#"
metadata: {name: r, namespace: shop}
spec:
  rules:
  - filters: [{type: RequestHeaderModifier, requestHeaderModifier: {add: [{name: x-a, value: "one\r\nx-b: two"}]}}]
"#,
        )
        .unwrap_err();
        assert_eq!(
            e.field,
            "spec.rules[0].filters[0].requestHeaderModifier.add[0].value"
        );
        assert!(
            e.message.contains("accepted: a header value on one line"),
            "{e}"
        );

        let e = http(
            r#"
metadata: {name: r, namespace: shop}
spec:
  rules:
  - timeouts: {request: 1s, backendRequest: 2s}
"#,
        )
        .unwrap_err();
        assert_eq!(e.field, "spec.rules[0].timeouts.backendRequest");
    }

    #[test]
    fn grpc_matches_become_paths() {
        let r = grpc_route(
            &serde_yaml::from_str::<GrpcRoute>(
                r#"
metadata: {name: g, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 7070}]
  rules:
  - matches:
    - method: {service: gateway_api_conformance.echo_basic.grpcecho.GrpcEcho, method: Echo}
    - method: {service: a.B}
    - method: {method: Echo}
    filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: X-Set, value: v}]}}]
    backendRefs: [{name: echo-v1, port: 7070, weight: 70}]
"#,
            )
            .unwrap(),
        )
        .unwrap();
        let paths: Vec<_> = r.rules[0]
            .matches
            .iter()
            .map(|m| m.path.clone().unwrap())
            .collect();
        assert_eq!(
            paths,
            [
                PathMatch::Exact(
                    "/gateway_api_conformance.echo_basic.grpcecho.GrpcEcho/Echo".into()
                ),
                PathMatch::Prefix("/a.B".into()),
                PathMatch::Regex("/[^/]+/Echo".into()),
            ]
        );
        assert_eq!(
            r.rules[0].filters,
            [Filter::RequestHeaders(HeaderModifier {
                set: vec![("x-set".into(), "v".into())],
                ..Default::default()
            })]
        );
        assert_eq!(r.rules[0].backends[0].weight, 70);
    }

    #[test]
    fn reference_grants_permit_only_what_they_name() {
        let g = reference_grant(
            &serde_yaml::from_str::<ReferenceGrant>(
                r#"
metadata: {name: g, namespace: backend}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: web}]
  to: [{group: "", kind: Service, name: api}]
"#,
            )
            .unwrap(),
        )
        .unwrap();
        assert!(g.permits(RouteKind::Http, "web", "api"));
        assert!(!g.permits(RouteKind::Grpc, "web", "api"));
        assert!(!g.permits(RouteKind::Http, "other", "api"));
        assert!(!g.permits(RouteKind::Http, "web", "db"));
    }
}
