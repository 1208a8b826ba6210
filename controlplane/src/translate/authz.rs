//! Authorization on the serving side: each Service's policy
//! ([`crate::model::MeshAuthorization`], else the mesh's
//! `--authorization-default`) becomes Envoy RBAC filters on the inbound
//! filter chains of the pods behind it.
//!
//! ```text
//! caller ──mTLS──> server proxy, inbound port 8080 (chain per mTLS / plaintext)
//!                    HTTP: HCM: rbac (403) ─> [fault] ─> router ─> 127.0.0.1:8080
//!                    TCP:  rbac (close)    ─> tcp_proxy ─────────> 127.0.0.1:8080
//! ```
//!
//! **Who the caller is.** Only the SPIFFE ID in the URI SAN of the
//! certificate the caller presented in the mTLS handshake
//! (`authenticated.principal_name`), which the inbound TLS context has
//! verified against the mesh's roots. Nothing a caller sends (headers,
//! `x-forwarded-client-cert`) is looked at. A plaintext connection (a
//! PERMISSIVE workload's plaintext chain) has no principal: it matches
//! only `unauthenticated` and `*`.
//!
//! **One ALLOW filter, exactly.** Envoy's RBAC has one action per filter;
//! deny-wins-over-allow with two filters (DENY, then ALLOW) would count a
//! request that both deny and a missing allow refuse twice in dry-run.
//! So each policy is one ALLOW filter whose policies are
//! `(default or an allow rule) and not (any deny rule)`, all in principals
//! (which can match `:method` and the URL path too): every request is
//! counted once, `allowed` or `denied` (`shadow_*` in dry-run).
//!
//! **Counting.** HTTP: `http.<inbound stat prefix>.rbac.{allowed,denied}`
//! and, in dry-run, `…rbac.dry_run.shadow_{allowed,denied}`; TCP:
//! `<inbound stat prefix>.rbac.…` the same. The stat prefix is the inbound
//! chain's (`inbound_<port>_<mtls|plaintext>`), so the series are bounded by
//! ports and chain kinds, per proxy (whose workload labels name the
//! destination). Who was denied is logged instead of counted (callers are
//! an unbounded set): each HTTP request denied, or in dry-run that would
//! be, is a JSON line on the serving proxy's stdout ([`denial_log`]).
//!
//! **Ports no Service declares** reach the app through the inbound
//! listener's catch-all chain, which does not terminate mTLS: there is no
//! caller to match, so the chain is open or closed to everyone. It gets a
//! network RBAC filter that allows nobody ([`guard_undeclared`]) on a pod
//! behind a Service whose policy admits only some callers (as an Istio
//! ALLOW policy denies the workload's other ports), and on pods behind no
//! Service when the mesh default is not allow-all ([`policies`]).
//!
//! **What changes on a policy edit.** Only the inbound side of the pods
//! behind the service: the cache of inbound sides by shape (ports, mTLS
//! mode, faults, policies) gives them a new listener; every other proxy's
//! resources keep their versions.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock};

use meshd_api::annotations::authorization::{
    Caller, DefaultPolicy, Mode, PathMatch, PlaintextWarning, Policy, Rule,
};
use meshd_api::annotations::routing::{AnnotationError, Annotations};
use meshd_api::names::node_id;
use meshd_api::sidecar::stats;
use meshd_proto::envoy::config::accesslog::v3::{
    AccessLog, AccessLogFilter, MetadataFilter, OrFilter, access_log, access_log_filter,
};
use meshd_proto::envoy::config::listener::v3::{Filter, FilterChain, filter};
use meshd_proto::envoy::config::rbac::v3::{
    Permission, Policy as RbacPolicy, Principal, Rbac, permission, principal, rbac,
};
use meshd_proto::envoy::config::route::v3::{HeaderMatcher, header_matcher};
use meshd_proto::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use meshd_proto::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, http_filter,
};
use meshd_proto::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use meshd_proto::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use meshd_proto::envoy::r#type::matcher::v3::{
    MetadataMatcher, PathMatcher, RegexMatcher, StringMatcher, ValueMatcher, metadata_matcher,
    path_matcher, string_matcher, value_matcher,
};
use meshd_proto::to_any;
use prost::Message;
use serde::Serialize;

use super::telemetry;
use crate::model::{Mesh, MtlsMode};

/// The prefix of the dry-run counters: Envoy adds a dot,
/// `rbac.dry_run.shadow_denied`.
pub const DRY_RUN_STAT_PREFIX: &str = "dry_run";
pub const HTTP_RBAC_FILTER: &str = "envoy.filters.http.rbac";
pub const NETWORK_RBAC_FILTER: &str = "envoy.filters.network.rbac";

/// One service's policy on one of its ports, as Envoy RBAC rules for an
/// HTTP chain and for a TCP chain (a target port two services share may
/// be served as either).
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Enforced {
    http: Rbac,
    tcp: Rbac,
    mode: Mode,
    /// The Service's name (its namespace is the pod's): the
    /// `destination_service` of the denials this policy counts.
    service: String,
}

/// What one workload's inbound side enforces: per inbound (target) port,
/// the policies that must all allow a request, and whether the ports no
/// Service declares (the catch-all chain) are closed.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct PortPolicies {
    ports: BTreeMap<u16, Vec<Arc<Enforced>>>,
    /// `None`: undeclared ports pass through to the app, as without
    /// authorization; else they are closed (or, in dry-run, counted).
    undeclared: Option<Mode>,
}

impl PortPolicies {
    /// The policies of inbound port `port`; none for most ports.
    pub(super) fn port(&self, port: u16) -> &[Arc<Enforced>] {
        self.ports.get(&port).map_or(&[], Vec::as_slice)
    }

    /// Whether (and how) the catch-all chain is closed.
    pub(super) fn undeclared(&self) -> Option<Mode> {
        self.undeclared
    }

    /// One more Service of the pod: an ALLOW-style policy on it (a
    /// baseline other than allow-all) closes the pod's undeclared ports,
    /// as an Istio ALLOW policy on a workload denies every port it does
    /// not match. Enforced if any such policy enforces.
    fn close_undeclared(&mut self, mode: Mode) {
        self.undeclared = match (self.undeclared, mode) {
            (Some(Mode::Enforce), _) | (_, Mode::Enforce) => Some(Mode::Enforce),
            _ => Some(Mode::DryRun),
        };
    }
}

/// [`PortPolicies`] per workload: (namespace, pod); the others (pods
/// behind no Service, or not yet in an EndpointSlice) get their
/// namespace's, else `fallback`.
#[derive(Debug, Default)]
pub(super) struct Policies {
    by_pod: HashMap<(String, String), PortPolicies>,
    by_namespace: HashMap<String, PortPolicies>,
    fallback: PortPolicies,
}

impl Policies {
    pub(super) fn workload(&self, namespace: &str, pod: &str) -> &PortPolicies {
        self.by_pod
            .get(&(namespace.to_string(), pod.to_string()))
            .or_else(|| self.by_namespace.get(namespace))
            .unwrap_or(&self.fallback)
    }
}

/// The policies of every workload serving a service that does not allow
/// everything. Under the mesh default allow-all only services with
/// authorization annotations are looked at.
///
/// Undeclared ports: closed on a pod behind a Service whose baseline is
/// not allow-all (an allow rule, or a default other than allow-all), and
/// on pods behind no Service when their Namespace's baseline (else the
/// mesh default) is not allow-all. The
/// catch-all chain does not terminate mTLS (callers' proxies send those
/// connections as they are), so there is no caller identity to allow:
/// closed means closed to everyone.
pub(super) fn policies(
    mesh: &Mesh,
    default: DefaultPolicy,
    trust_domain: Option<&str>,
) -> Policies {
    let mut by_pod: HashMap<(String, String), PortPolicies> = HashMap::new();
    let annotated: Vec<_> = if default == DefaultPolicy::AllowAll {
        mesh.authorization
            .services()
            .filter_map(|(k, p)| Some((mesh.services.get(k)?, &**p)))
            .collect()
    } else {
        mesh.services
            .values()
            .map(|s| (s, mesh.authorization.service(&s.key)))
            .collect()
    };
    for (svc, policy) in annotated {
        let endpoints = mesh.endpoints_of(&svc.key);
        let closes = policy.baseline(default) != DefaultPolicy::AllowAll;
        // Every pod behind a Service has an entry: without one, the
        // fallback (for pods behind no Service) would apply.
        for ep in endpoints {
            if let Some(pod) = &ep.pod {
                let entry = by_pod
                    .entry((svc.key.namespace.clone(), pod.clone()))
                    .or_default();
                if closes {
                    entry.close_undeclared(policy.mode);
                }
            }
        }
        if policy.allows_everything(default) {
            continue;
        }
        for port in &svc.ports {
            let Some(mut enforced) =
                Enforced::new(policy, default, &svc.key.namespace, port.port, trust_domain)
            else {
                continue;
            };
            enforced.service.clone_from(&svc.key.name);
            let enforced = Arc::new(enforced);
            for ep in endpoints {
                if let (Some(pod), Some(target)) = (&ep.pod, ep.port_for(port)) {
                    let list = by_pod
                        .entry((svc.key.namespace.clone(), pod.clone()))
                        .or_default()
                        .ports
                        .entry(target)
                        .or_default();
                    if !list.contains(&enforced) {
                        list.push(enforced.clone());
                    }
                }
            }
        }
    }
    let fallback = PortPolicies {
        ports: BTreeMap::new(),
        undeclared: (default != DefaultPolicy::AllowAll).then_some(Mode::Enforce),
    };
    // A pod behind no Service has no declared port: its namespace's
    // baseline decides whether the rest is open, as for a Service's pods.
    let by_namespace = mesh
        .authorization
        .namespaces()
        .map(|(namespace, policy)| {
            let closes = policy.baseline(default) != DefaultPolicy::AllowAll;
            let ports = PortPolicies {
                ports: BTreeMap::new(),
                undeclared: closes.then_some(policy.mode),
            };
            (namespace.to_string(), ports)
        })
        .collect();
    Policies {
        by_pod,
        by_namespace,
        fallback,
    }
}

/// What one workload's sidecar enforces on its inbound side, as the
/// debugging commands show it (`meshd proxy-config`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WorkloadAuthorization {
    /// Each Service the pod serves (by the EndpointSlices), with its policy.
    pub services: Vec<ServiceAuthorization>,
    /// Ports no Service declares: `open`, `closed`, or `closed (dry-run)`.
    pub undeclared_ports: &'static str,
}

/// One Service's policy in force, in the annotations' own terms.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ServiceAuthorization {
    pub service: String,
    /// `enforce` or `dry-run`.
    pub mode: &'static str,
    /// Who gets in besides the allow rules: the Service's default, else its
    /// Namespace's, else the mesh's (deny-all where allow rules stand
    /// alone under allow-all).
    pub default: &'static str,
    pub allow: Vec<String>,
    pub deny: Vec<String>,
}

/// The authorization pod `pod` of `namespace` enforces.
pub(super) fn workload_authorization(
    mesh: &Mesh,
    default: DefaultPolicy,
    policies: &Policies,
    namespace: &str,
    pod: &str,
) -> WorkloadAuthorization {
    let services = mesh
        .services
        .values()
        .filter(|s| {
            s.key.namespace == namespace
                && mesh
                    .endpoints_of(&s.key)
                    .iter()
                    .any(|ep| ep.pod.as_deref() == Some(pod))
        })
        .map(|svc| {
            let policy = mesh.authorization.service(&svc.key);
            let rules = |rules: &[Rule]| rules.iter().map(ToString::to_string).collect();
            ServiceAuthorization {
                service: svc.key.to_string(),
                mode: policy.mode.name(),
                default: policy.baseline(default).name(),
                allow: rules(&policy.allow),
                deny: rules(&policy.deny),
            }
        })
        .collect();
    let undeclared_ports = match policies.workload(namespace, pod).undeclared() {
        None => "open",
        Some(Mode::Enforce) => "closed",
        Some(Mode::DryRun) => "closed (dry-run)",
    };
    WorkloadAuthorization {
        services,
        undeclared_ports,
    }
}

/// A warning for every authorization annotation in force that does not do
/// what it says for plaintext callers ([`Policy::plaintext_surprises`]) on
/// Services with pods that accept plaintext (`mtls`: the mesh default
/// mode, `None` when the control plane has no CA). One warning per
/// annotation; its text (its identity: a new text is a new Event) names no
/// pods, which come and go with every rollout, and no list of Services.
pub(super) fn plaintext_warnings(mesh: &Mesh, mtls: Option<MtlsMode>) -> Vec<AnnotationError> {
    let no_annotations = Annotations::new();
    // Per annotation: the reason shared by the most pods that accept
    // plaintext, whichever pods there are now.
    let mut found: BTreeMap<PlaintextWarning, Plaintext> = BTreeMap::new();
    for (key, policy) in mesh.authorization.services() {
        // While a value is refused, the last good policy is in force and
        // the error speaks for the annotation: a warning would quote the
        // refused value.
        if mesh.authorization.is_refused(key) || policy.plaintext_surprises().is_empty() {
            continue;
        }
        let Some(reason) = mesh
            .endpoints_of(key)
            .iter()
            .filter_map(|ep| ep.pod.as_deref())
            .filter_map(|pod| Plaintext::of(mesh, &key.namespace, pod, mtls))
            .min()
        else {
            continue;
        };
        let Some(svc) = mesh.services.get(key) else {
            continue;
        };
        let namespace = mesh
            .namespaces
            .get(&key.namespace)
            .map_or(&no_annotations, |n| &n.annotations);
        for warning in meshd_api::annotations::authorization::plaintext_warnings(
            key,
            &svc.annotations,
            namespace,
            policy,
        ) {
            let shared = found.entry(warning).or_insert(reason);
            *shared = (*shared).min(reason);
        }
    }
    found
        .into_iter()
        .map(|(warning, reason)| {
            let whose = if warning.object.starts_with("Namespace ") {
                "pods behind its Services"
            } else {
                "pods behind this Service"
            };
            warning.warning(
                &format!("{whose} accept plaintext ({})", reason.why()),
                reason.remedy(),
            )
        })
        .collect()
}

/// Why a pod accepts plaintext, the most widely shared reason first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Plaintext {
    /// The control plane has no CA: no workload has an identity.
    NoCa,
    MeshDefault(MtlsMode),
    Namespace(MtlsMode),
    Pod(MtlsMode),
}

impl Plaintext {
    /// Why pod `pod` of `namespace` accepts plaintext, or `None` if it
    /// does not (STRICT).
    fn of(mesh: &Mesh, namespace: &str, pod: &str, mtls: Option<MtlsMode>) -> Option<Plaintext> {
        let Some(default) = mtls else {
            return Some(Plaintext::NoCa);
        };
        let pod_mode = mesh
            .workloads
            .get(&node_id(namespace, pod))
            .and_then(|w| w.mtls);
        let reason = match (
            pod_mode,
            mesh.namespaces.get(namespace).and_then(|n| n.mtls),
        ) {
            (Some(mode), _) => Plaintext::Pod(mode),
            (None, Some(mode)) => Plaintext::Namespace(mode),
            (None, None) => Plaintext::MeshDefault(default),
        };
        match reason {
            Plaintext::Pod(MtlsMode::Strict)
            | Plaintext::Namespace(MtlsMode::Strict)
            | Plaintext::MeshDefault(MtlsMode::Strict) => None,
            other => Some(other),
        }
    }

    fn why(self) -> String {
        match self {
            Plaintext::NoCa => "the control plane has no CA".into(),
            Plaintext::MeshDefault(mode) => format!("the mesh's --mtls-mode is {}", mode.name()),
            Plaintext::Namespace(mode) => {
                format!("the Namespace's meshd.io/mtls is {}", mode.name())
            }
            Plaintext::Pod(mode) => format!("their Pods' meshd.io/mtls is {}", mode.name()),
        }
    }

    fn remedy(self) -> &'static str {
        match self {
            Plaintext::NoCa => "run the control plane with its CA to give workloads identities",
            Plaintext::MeshDefault(_) => {
                "set meshd.io/mtls: STRICT on the Namespace (or run meshd with --mtls-mode STRICT) to refuse plaintext"
            }
            Plaintext::Namespace(_) => {
                "set the Namespace's meshd.io/mtls to STRICT to refuse plaintext"
            }
            Plaintext::Pod(_) => "set the Pods' meshd.io/mtls to STRICT to refuse plaintext",
        }
    }
}

impl Enforced {
    /// `None`: everything is allowed on this port (its deny rules are
    /// scoped to other ports).
    fn new(
        policy: &Policy,
        default: DefaultPolicy,
        namespace: &str,
        port: u16,
        trust_domain: Option<&str>,
    ) -> Option<Enforced> {
        let baseline = policy.baseline(default);
        let allow: Vec<&Rule> = policy.allow.iter().filter(|r| r.covers(port)).collect();
        let deny: Vec<&Rule> = policy.deny.iter().filter(|r| r.covers(port)).collect();
        if baseline == DefaultPolicy::AllowAll && deny.is_empty() {
            return None;
        }
        let ids = Identities { trust_domain };
        let build = |http: bool| {
            let base = match baseline {
                DefaultPolicy::AllowAll => Some(any()),
                DefaultPolicy::AllowAuthenticated => Some(ids.caller(&Caller::Authenticated)),
                DefaultPolicy::AllowSameNamespace => {
                    Some(ids.caller(&Caller::Namespace(namespace.to_string())))
                }
                DefaultPolicy::DenyAll => None,
            };
            // One policy: (the baseline or any allow rule) and no deny
            // rule, so the deny rules are written once, however many
            // allow rules there are (a policy per allow rule would repeat
            // them in each).
            let mut allowed: Vec<Principal> = base.into_iter().collect();
            // An HTTP-only rule allows nothing on a TCP chain.
            allowed.extend(
                allow
                    .iter()
                    .filter(|rule| http || !rule.is_http())
                    .map(|rule| ids.rule(rule, http)),
            );
            let denied = or(deny.iter().map(|r| ids.rule(r, http)).collect());
            let mut policies = HashMap::new();
            if let Some(allowed) = or(allowed) {
                let principal = match denied {
                    Some(denied) => and(vec![allowed, not(denied)]),
                    None => allowed,
                };
                policies.insert(
                    ALLOWED_POLICY.to_string(),
                    RbacPolicy {
                        permissions: vec![Permission {
                            rule: Some(permission::Rule::Any(true)),
                        }],
                        principals: vec![principal],
                        ..Default::default()
                    },
                );
            }
            Rbac {
                action: rbac::Action::Allow as i32,
                policies,
                ..Default::default()
            }
        };
        Some(Enforced {
            http: build(true),
            tcp: build(false),
            mode: policy.mode,
            service: String::new(),
        })
    }
}

/// The name of the one RBAC policy of an enforced port: what it allows
/// (no policy: nothing is allowed).
const ALLOWED_POLICY: &str = "allowed";

/// SPIFFE IDs of the mesh's trust domain.
struct Identities<'a> {
    /// `None`: the control plane has no CA; no caller has an identity.
    trust_domain: Option<&'a str>,
}

impl Identities<'_> {
    fn caller(&self, caller: &Caller) -> Principal {
        let spiffe = |pattern: string_matcher::MatchPattern| match self.trust_domain {
            Some(_) => authenticated(Some(StringMatcher {
                match_pattern: Some(pattern),
                ..Default::default()
            })),
            None => not(any()),
        };
        let td = self.trust_domain.unwrap_or_default();
        match caller {
            Caller::Any => any(),
            Caller::Authenticated => authenticated(None),
            Caller::Unauthenticated => not(authenticated(None)),
            Caller::Namespace(ns) => spiffe(string_matcher::MatchPattern::Prefix(format!(
                "spiffe://{td}/ns/{ns}/sa/"
            ))),
            Caller::ServiceAccount { namespace, name } => {
                spiffe(string_matcher::MatchPattern::Exact(format!(
                    "spiffe://{td}/ns/{namespace}/sa/{name}"
                )))
            }
            Caller::AnyNamespace(name) => {
                spiffe(string_matcher::MatchPattern::SafeRegex(RegexMatcher {
                    regex: format!(
                        "^spiffe://{}/ns/[^/]+/sa/{}$",
                        regex_escape(td),
                        regex_escape(name)
                    ),
                    ..Default::default()
                }))
            }
        }
    }

    /// The requests `rule` matches. On a TCP chain (`http` false) its
    /// methods and paths cannot be seen: a deny rule then matches its
    /// callers outright (denying more rather than less).
    fn rule(&self, rule: &Rule, http: bool) -> Principal {
        let mut parts = vec![
            or(rule.callers.iter().map(|c| self.caller(c)).collect()).unwrap_or_else(|| not(any())),
        ];
        if http {
            if let Some(methods) = or(rule.methods.iter().map(|m| method(m)).collect()) {
                parts.push(methods);
            }
            if let Some(paths) = or(rule.paths.iter().map(path).collect()) {
                parts.push(paths);
            }
        }
        and(parts)
    }
}

fn regex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if !c.is_ascii_alphanumeric() && c != '-' && c != '_' && c != '/' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn principal(id: principal::Identifier) -> Principal {
    Principal {
        identifier: Some(id),
    }
}

fn any() -> Principal {
    principal(principal::Identifier::Any(true))
}

fn not(p: Principal) -> Principal {
    principal(principal::Identifier::NotId(Box::new(p)))
}

fn authenticated(name: Option<StringMatcher>) -> Principal {
    principal(principal::Identifier::Authenticated(
        principal::Authenticated {
            principal_name: name,
        },
    ))
}

/// Any of `ids`; `None` for none.
fn or(mut ids: Vec<Principal>) -> Option<Principal> {
    match ids.len() {
        0 => None,
        1 => ids.pop(),
        _ => Some(principal(principal::Identifier::OrIds(principal::Set {
            ids,
        }))),
    }
}

fn and(mut ids: Vec<Principal>) -> Principal {
    if ids.len() == 1 {
        return ids.pop().unwrap_or_else(any);
    }
    principal(principal::Identifier::AndIds(principal::Set { ids }))
}

fn method(m: &str) -> Principal {
    principal(principal::Identifier::Header(HeaderMatcher {
        name: ":method".into(),
        header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(
            StringMatcher {
                match_pattern: Some(string_matcher::MatchPattern::Exact(m.to_string())),
                ..Default::default()
            },
        )),
        ..Default::default()
    }))
}

/// Matched on the path without query or fragment, as normalized by the
/// connection manager (`normalize_path`, `merge_slashes`).
fn path(p: &PathMatch) -> Principal {
    let pattern = match p {
        PathMatch::Exact(s) => string_matcher::MatchPattern::Exact(s.clone()),
        PathMatch::Prefix(s) => string_matcher::MatchPattern::Prefix(s.clone()),
    };
    principal(principal::Identifier::UrlPath(PathMatcher {
        rule: Some(path_matcher::Rule::Path(StringMatcher {
            match_pattern: Some(pattern),
            ..Default::default()
        })),
    }))
}

/// `policies` put in front of an inbound chain's filters: the HTTP RBAC
/// filter first among the connection manager's HTTP filters (before
/// faults: a denied request gets no fault), the network RBAC filter before
/// the TCP proxy. Each policy is a filter of its own: all must allow.
pub(super) fn guard(filters: Vec<Filter>, policies: &[Arc<Enforced>]) -> Vec<Filter> {
    if policies.is_empty() {
        return filters;
    }
    filters
        .into_iter()
        .flat_map(|f| match &f.config_type {
            Some(filter::ConfigType::TypedConfig(any)) => {
                if let Ok(mut hcm) = decode::<HttpConnectionManager>(any) {
                    let rbac = policies.iter().map(|p| http_rbac(p));
                    hcm.http_filters.splice(0..0, rbac);
                    for mode in [Mode::Enforce, Mode::DryRun] {
                        if let Some(services) = services_in(policies, mode) {
                            hcm.access_log
                                .extend(denial_records(Layer::Http, mode, &services));
                        }
                    }
                    vec![Filter {
                        name: f.name,
                        config_type: Some(filter::ConfigType::TypedConfig(to_any(&hcm))),
                    }]
                } else if let Ok(mut tcp) = decode::<TcpProxy>(any) {
                    let mut out: Vec<Filter> = policies
                        .iter()
                        .map(|p| network_rbac(p, &tcp.stat_prefix))
                        .collect();
                    // The TCP proxy logs at the connection's close, with
                    // the verdict the RBAC filter left on the connection.
                    for mode in [Mode::Enforce, Mode::DryRun] {
                        if let Some(services) = services_in(policies, mode) {
                            tcp.access_log
                                .extend(denial_records(Layer::Tcp, mode, &services));
                        }
                    }
                    out.push(Filter {
                        name: f.name,
                        config_type: Some(filter::ConfigType::TypedConfig(to_any(&tcp))),
                    });
                    out
                } else {
                    vec![f]
                }
            }
            _ => vec![f],
        })
        .collect()
}

/// The catch-all chain (ports no Service declares) closed as `mode` says:
/// a network RBAC filter that allows nobody, in front of its TCP proxy.
/// Counted under `<stat_prefix>.rbac.denied` (or the dry-run's
/// `shadow_denied`). `None`: the chain as it is.
pub(super) fn guard_undeclared(
    mut chain: FilterChain,
    mode: Option<Mode>,
    stat_prefix: &str,
) -> FilterChain {
    let Some(mode) = mode else {
        return chain;
    };
    // An ALLOW action with no policies matches nothing: every connection
    // is denied.
    let nobody = Rbac {
        action: rbac::Action::Allow as i32,
        ..Default::default()
    };
    let closed = Enforced {
        http: nobody.clone(),
        tcp: nobody,
        mode,
        service: String::new(),
    };
    chain.filters.insert(0, network_rbac(&closed, stat_prefix));
    chain
}

/// The filter's config when it is an `M` (inbound chains carry a
/// connection manager or a TCP proxy, built a few lines from the call).
fn decode<M: Message + Default + prost::Name>(any: &meshd_proto::Any) -> Result<M, ()> {
    if any.type_url != M::type_url() {
        return Err(());
    }
    M::decode(any.value.as_slice()).map_err(|_| ())
}

fn http_rbac(policy: &Enforced) -> HttpFilter {
    let config = match policy.mode {
        Mode::Enforce => HttpRbac {
            rules: Some(policy.http.clone()),
            ..Default::default()
        },
        Mode::DryRun => HttpRbac {
            shadow_rules: Some(policy.http.clone()),
            shadow_rules_stat_prefix: DRY_RUN_STAT_PREFIX.into(),
            ..Default::default()
        },
    };
    HttpFilter {
        name: HTTP_RBAC_FILTER.into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(to_any(&config))),
        ..Default::default()
    }
}

/// Where a policy decides: per HTTP request, or per TCP connection.
#[derive(Clone, Copy)]
enum Layer {
    Http,
    Tcp,
}

/// The Services whose policies in `mode` guard a chain, comma-separated
/// (one, but for a port several Services of the pod share); `None` if no
/// policy there is in `mode`.
fn services_in(policies: &[Arc<Enforced>], mode: Mode) -> Option<String> {
    let mut names: Vec<&str> = policies
        .iter()
        .filter(|p| p.mode == mode)
        .map(|p| p.service.as_str())
        .collect();
    if names.is_empty() {
        return None;
    }
    names.sort_unstable();
    names.dedup();
    Some(names.join(","))
}

/// The most caller series each inbound filter chain keeps for its denial
/// counters together: callers beyond are in the per-port totals only, so
/// no caller can grow a proxy's series without bound.
pub const MAX_CALLER_SERIES: u32 = 256;

/// The records of each HTTP request (or TCP connection) a policy denies
/// (or, in dry-run, would deny): a JSON line on the serving proxy's stdout
/// naming both identities, and a count per caller identity and port,
/// whether or not access logs are on. Envoy's RBAC filters put their
/// verdict in the stream's dynamic metadata (for TCP, the connection's):
/// `enforced_engine_result` for the rules they enforce, and for shadow
/// rules the shadow stat prefix followed by `shadow_engine_result` (the
/// unprefixed key is matched too).
fn denial_records(layer: Layer, mode: Mode, services: &str) -> [AccessLog; 2] {
    fn logger(layer: Layer, verdict: &str) -> meshd_proto::Any {
        let mut fields = vec![
            ("authorization", verdict),
            ("start_time", "%START_TIME%"),
            ("caller_identity", "%DOWNSTREAM_PEER_URI_SAN%"),
            ("workload_identity", "%DOWNSTREAM_LOCAL_URI_SAN%"),
        ];
        fields.extend(match layer {
            Layer::Http => [
                ("method", "%REQ(:METHOD)%"),
                // The path the decision saw (inbound nothing rewrites it,
                // and x-envoy-original-path would be the caller's to set),
                // without its query string: this line is written with
                // access logs off, and a query often carries tokens nobody
                // opted to log.
                ("path", "%PATH(NQ)%"),
                ("authority", "%REQ(:AUTHORITY)%"),
                ("request_id", "%REQ(X-REQUEST-ID)%"),
                ("response_code", "%RESPONSE_CODE%"),
            ]
            .as_slice(),
            Layer::Tcp => [("protocol", "tcp"), ("port", "%DOWNSTREAM_LOCAL_PORT%")].as_slice(),
        });
        telemetry::json_stdout_logger(fields)
    }
    static LOGGERS: LazyLock<[meshd_proto::Any; 4]> = LazyLock::new(|| {
        [
            logger(Layer::Http, "denied"),
            logger(Layer::Http, "dry-run: would deny"),
            logger(Layer::Tcp, "denied"),
            logger(Layer::Tcp, "dry-run: would deny"),
        ]
    });
    let namespace = match layer {
        Layer::Http => HTTP_RBAC_FILTER,
        Layer::Tcp => NETWORK_RBAC_FILTER,
    };
    let denied = |key: String| AccessLogFilter {
        filter_specifier: Some(access_log_filter::FilterSpecifier::MetadataFilter(
            MetadataFilter {
                matcher: Some(MetadataMatcher {
                    filter: namespace.into(),
                    path: vec![metadata_matcher::PathSegment {
                        segment: Some(metadata_matcher::path_segment::Segment::Key(key)),
                    }],
                    value: Some(ValueMatcher {
                        match_pattern: Some(value_matcher::MatchPattern::StringMatch(
                            StringMatcher {
                                match_pattern: Some(string_matcher::MatchPattern::Exact(
                                    "denied".into(),
                                )),
                                ..Default::default()
                            },
                        )),
                    }),
                    invert: false,
                }),
                // Unset would log a request without the verdict (and one
                // of the dry-run's two keys is always missing).
                match_if_key_not_found: Some(meshd_proto::BoolValue { value: false }),
            },
        )),
    };
    let loggers = &*LOGGERS;
    let layer_loggers = match layer {
        Layer::Http => &loggers[..2],
        Layer::Tcp => &loggers[2..],
    };
    let enforced = match layer {
        Layer::Http => ENFORCED_ENGINE_RESULT.to_string(),
        Layer::Tcp => format!("{TCP_ENFORCED_SHADOW_PREFIX}{SHADOW_ENGINE_RESULT}"),
    };
    let (filter, logger) = match mode {
        Mode::Enforce => (denied(enforced), &layer_loggers[0]),
        Mode::DryRun => (
            AccessLogFilter {
                filter_specifier: Some(access_log_filter::FilterSpecifier::OrFilter(OrFilter {
                    filters: vec![
                        denied(format!("{DRY_RUN_STAT_PREFIX}{SHADOW_ENGINE_RESULT}")),
                        denied(SHADOW_ENGINE_RESULT.into()),
                    ],
                })),
            },
            &layer_loggers[1],
        ),
    };
    let counter = caller_counter(
        match mode {
            Mode::Enforce => "denied",
            Mode::DryRun => "would_deny",
        },
        services,
    );
    [
        AccessLog {
            name: "envoy.access_loggers.stdout".into(),
            filter: Some(filter.clone()),
            config_type: Some(access_log::ConfigType::TypedConfig(logger.clone())),
        },
        AccessLog {
            name: "envoy.access_loggers.stats".into(),
            filter: Some(filter),
            config_type: Some(access_log::ConfigType::TypedConfig(counter)),
        },
    ]
}

/// The count of each record under `authorization.<name>` by destination
/// Service (`services`, as [`services_in`] names them), caller identity
/// and inbound port (`envoy_authorization_denied{workload,
/// workload_namespace, destination_service, caller_identity,
/// destination_port}`), at most [`MAX_CALLER_SERIES`] series per chain.
fn caller_counter(name: &str, services: &str) -> meshd_proto::Any {
    telemetry::stats_logger(
        "authorization",
        MAX_CALLER_SERIES,
        &[(
            telemetry::Stat::Count(name),
            &[
                // A literal: no command operator in it.
                (stats::DESTINATION_SERVICE, services),
                (stats::CALLER_IDENTITY, "%DOWNSTREAM_PEER_URI_SAN%"),
                (stats::DESTINATION_PORT, "%DOWNSTREAM_LOCAL_PORT%"),
            ],
        )],
    )
}

/// Envoy's dynamic-metadata key for the enforced rules' verdict.
const ENFORCED_ENGINE_RESULT: &str = "enforced_engine_result";
/// The shadow stat prefix of the copy of enforced TCP rules that records
/// their verdict (see [`network_rbac`]).
const TCP_ENFORCED_SHADOW_PREFIX: &str = "enforced.";
/// Envoy's dynamic-metadata key for the shadow rules' verdict.
const SHADOW_ENGINE_RESULT: &str = "shadow_engine_result";

fn network_rbac(policy: &Enforced, stat_prefix: &str) -> Filter {
    let mut config = NetworkRbac {
        stat_prefix: format!("{stat_prefix}."),
        ..Default::default()
    };
    match policy.mode {
        Mode::Enforce => {
            config.rules = Some(policy.tcp.clone());
            // Envoy's network RBAC filter leaves no enforced verdict on
            // the connection when it closes it, only its shadow one: the
            // same rules as shadow rules give the denial log its key.
            config.shadow_rules = Some(policy.tcp.clone());
            config.shadow_rules_stat_prefix = TCP_ENFORCED_SHADOW_PREFIX.into();
        }
        Mode::DryRun => {
            config.shadow_rules = Some(policy.tcp.clone());
            config.shadow_rules_stat_prefix = DRY_RUN_STAT_PREFIX.into();
        }
    }
    Filter {
        name: NETWORK_RBAC_FILTER.into(),
        config_type: Some(filter::ConfigType::TypedConfig(to_any(&config))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::{
        INBOUND_LISTENER, Kind, MtlsOptions, OUTBOUND_LISTENER, Snapshot, TranslateOptions, decode,
    };
    use meshd_api::annotations::routing::Severity;
    use meshd_proto::envoy::config::listener::v3::Listener;

    /// web (two pods, HTTP) and db (one pod, TCP) in shop; client in shop.
    fn registry(web_annotations: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: shop}}\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: shop, annotations: {{{web_annotations}}}}}\nspec: {{clusterIP: 198.19.0.1, ports: [{{name: http, port: 80, targetPort: 8080}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: web-1, namespace: shop, labels: {{kubernetes.io/service-name: web}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n- addresses: [198.18.0.3]\n  targetRef: {{kind: Pod, name: web-0}}\n- addresses: [198.18.0.4]\n  targetRef: {{kind: Pod, name: web-1}}\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: db, namespace: shop}}\nspec: {{clusterIP: 198.19.0.2, ports: [{{name: tcp, port: 5432}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: db-1, namespace: shop, labels: {{kubernetes.io/service-name: db}}}}\naddressType: IPv4\nports: [{{name: tcp, port: 5432}}]\nendpoints:\n- addresses: [198.18.0.5]\n  targetRef: {{kind: Pod, name: db-0}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: web-0, namespace: shop}}\nstatus: {{podIP: 198.18.0.3}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: web-1, namespace: shop}}\nstatus: {{podIP: 198.18.0.4}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: db-0, namespace: shop}}\nstatus: {{podIP: 198.18.0.5}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: client-0, namespace: shop}}\nstatus: {{podIP: 198.18.0.2}}\n"
        )
    }

    fn mesh(text: &str) -> Arc<Mesh> {
        let mut index = crate::discovery::index::Index::default();
        for object in crate::discovery::file::parse(text).unwrap() {
            index.apply(object);
        }
        let mesh = index.mesh();
        assert!(mesh.routing.errors.is_empty(), "{:?}", mesh.routing.errors);
        Arc::new(mesh)
    }

    fn options(default: DefaultPolicy) -> TranslateOptions {
        TranslateOptions {
            mtls: Some(MtlsOptions {
                trust_domain: "cluster.local".into(),
                default_mode: MtlsMode::Strict,
            }),
            authorization: default,
            ..Default::default()
        }
    }

    /// The filter names of each chain of a proxy's inbound listener, the
    /// connection manager's HTTP filters in place of its own name.
    fn inbound_filters(snapshot: &Snapshot, node: &str) -> Vec<Vec<String>> {
        let view = snapshot.proxy(node).unwrap();
        let listener: Listener =
            decode(view.get(Kind::Listener, INBOUND_LISTENER).unwrap()).unwrap();
        listener
            .filter_chains
            .iter()
            .map(|chain| {
                chain
                    .filters
                    .iter()
                    .flat_map(|f| match &f.config_type {
                        Some(filter::ConfigType::TypedConfig(any)) => {
                            match decode_any::<HttpConnectionManager>(any) {
                                Some(hcm) => {
                                    hcm.http_filters.iter().map(|h| h.name.clone()).collect()
                                }
                                None => vec![f.name.clone()],
                            }
                        }
                        _ => vec![f.name.clone()],
                    })
                    .collect()
            })
            .collect()
    }

    fn decode_any<M: Message + Default + prost::Name>(any: &meshd_proto::Any) -> Option<M> {
        super::decode::<M>(any).ok()
    }

    fn version(snapshot: &Snapshot, node: &str, kind: Kind, name: &str) -> String {
        snapshot
            .proxy(node)
            .unwrap()
            .get(kind, name)
            .unwrap()
            .version
            .clone()
    }

    #[test]
    fn identity_rules_on_pods_that_accept_plaintext_are_called_out() {
        let warnings = |web: &str, mtls: Option<MtlsMode>| -> Vec<AnnotationError> {
            let mut options = options(DefaultPolicy::AllowAll);
            options.mtls = mtls.map(|default_mode| MtlsOptions {
                trust_domain: "cluster.local".into(),
                default_mode,
            });
            Snapshot::new(1, mesh(&registry(web)), options).problems()
        };
        let deny = "meshd.io/deny: shop/legacy";
        let found = warnings(deny, Some(MtlsMode::Permissive));
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].severity, Severity::Warning);
        assert_eq!(found[0].object, "Service shop/web");
        assert_eq!(found[0].annotation, "meshd.io/deny");
        assert!(
            found[0].message.contains(
                "pods behind this Service accept plaintext \
                 (the mesh's --mtls-mode is PERMISSIVE)"
            ),
            "{}",
            found[0].message
        );
        let found = warnings(deny, None);
        assert!(
            found[0].message.contains("the control plane has no CA"),
            "{found:?}"
        );
        assert_eq!(warnings(deny, Some(MtlsMode::Strict)), []);
        // A good value, then one refused (a bad method; a rule port the
        // Service lacks): the last good one stays in force, and the error
        // alone speaks of the annotation (a warning would quote the refused
        // value).
        for refused in [
            "meshd.io/deny: 'shop/legacy GETT'",
            "meshd.io/deny: 'shop/legacy port=81'",
        ] {
            let mut index = crate::discovery::index::Index::default();
            for text in [registry(deny), registry(refused)] {
                for object in crate::discovery::file::parse(&text).unwrap() {
                    index.apply(object);
                }
                // Each version is seen: the first becomes the last good one.
                let _ = index.mesh();
            }
            let mut options = options(DefaultPolicy::AllowAll);
            options.mtls.as_mut().unwrap().default_mode = MtlsMode::Permissive;
            let mesh = index.mesh();
            assert_eq!(
                mesh.authorization
                    .service(&crate::model::ServiceKey::new("shop", "web"))
                    .deny
                    .len(),
                1
            );
            let problems = Snapshot::new(1, Arc::new(mesh), options).problems();
            assert_eq!(problems.len(), 1, "{refused}: {problems:?}");
            assert_eq!(problems[0].severity, Severity::Rejected, "{refused}");
        }
        // `*` admits plaintext callers as it says: nothing to call out.
        assert_eq!(
            warnings("meshd.io/allow: '*'", Some(MtlsMode::Permissive)),
            []
        );
    }

    #[test]
    fn a_namespace_rule_is_called_out_once_with_the_reason_and_remedy_of_its_pods() {
        let problems = |text: &str| {
            let mut options = options(DefaultPolicy::AllowAll);
            options.mtls.as_mut().unwrap().default_mode = MtlsMode::Permissive;
            Snapshot::new(1, mesh(text), options).problems()
        };
        // The Namespace's deny rule covers web and db: one warning, on the
        // Namespace, naming neither (its text stays as pods and Services
        // come and go).
        let found = problems(&with_namespace("meshd.io/deny: 'batch/*'"));
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].object, "Namespace shop");
        assert!(
            found[0].message.contains(
                "pods behind its Services accept plaintext (the mesh's --mtls-mode is PERMISSIVE)"
            ) && found[0]
                .message
                .ends_with("set meshd.io/mtls: STRICT on the Namespace (or run meshd with --mtls-mode STRICT) to refuse plaintext"),
            "{}",
            found[0].message
        );
        // PERMISSIVE set on the Namespace: its remedy is the Namespace's.
        let found = problems(&with_namespace(
            "meshd.io/deny: 'batch/*', meshd.io/mtls: PERMISSIVE",
        ));
        assert!(
            found[0]
                .message
                .contains("(the Namespace's meshd.io/mtls is PERMISSIVE)")
                && found[0]
                    .message
                    .ends_with("set the Namespace's meshd.io/mtls to STRICT to refuse plaintext"),
            "{}",
            found[0].message
        );
        // A STRICT Namespace with one PERMISSIVE Pod: the Pod is the reason.
        let text = with_namespace("meshd.io/deny: 'batch/*', meshd.io/mtls: STRICT").replacen(
            "metadata: {name: db-0, namespace: shop}",
            "metadata: {name: db-0, namespace: shop, annotations: {meshd.io/mtls: PERMISSIVE}}",
            1,
        );
        let found = problems(&text);
        assert!(
            found[0]
                .message
                .contains("(their Pods' meshd.io/mtls is PERMISSIVE)"),
            "{}",
            found[0].message
        );
        // allow-authenticated refuses plaintext callers, as it says.
        assert_eq!(
            problems(&with_namespace(
                "meshd.io/authorization: allow-authenticated"
            )),
            []
        );
    }

    #[test]
    fn a_policy_puts_rbac_first_on_the_pods_behind_the_service_only() {
        let none = Snapshot::new(1, mesh(&registry("")), options(DefaultPolicy::AllowAll));
        // allow-all and no annotation: today's configuration.
        assert_eq!(
            inbound_filters(&none, "web-0.shop"),
            [["envoy.filters.http.router"]]
        );

        let annotated =
            registry("meshd.io/allow: 'shop/client-0 GET /api/*', meshd.io/deny: 'shop/bad'");
        let policy = Snapshot::next(2, mesh(&annotated), options(DefaultPolicy::AllowAll), &none);
        assert_eq!(
            inbound_filters(&policy, "web-0.shop"),
            [[HTTP_RBAC_FILTER, "envoy.filters.http.router"]]
        );
        // Only the inbound listener of web's pods changed; web's two pods
        // still share one.
        for node in ["web-0.shop", "web-1.shop"] {
            assert_ne!(
                version(&none, node, Kind::Listener, INBOUND_LISTENER),
                version(&policy, node, Kind::Listener, INBOUND_LISTENER)
            );
        }
        assert_eq!(
            version(&policy, "web-0.shop", Kind::Listener, INBOUND_LISTENER),
            version(&policy, "web-1.shop", Kind::Listener, INBOUND_LISTENER)
        );
        for node in ["db-0.shop", "client-0.shop"] {
            assert_eq!(
                version(&none, node, Kind::Listener, INBOUND_LISTENER),
                version(&policy, node, Kind::Listener, INBOUND_LISTENER),
                "{node}"
            );
        }
        // No outbound listener moves: the capture listener nor any port's.
        for node in ["web-0.shop", "db-0.shop", "client-0.shop"] {
            let outbound = |snap: &Snapshot| -> Vec<(String, String)> {
                snap.proxy(node)
                    .unwrap()
                    .all(Kind::Listener)
                    .filter(|r| {
                        r.name == OUTBOUND_LISTENER
                            || r.name
                                .starts_with(super::super::OUTBOUND_PORT_LISTENER_PREFIX)
                    })
                    .map(|r| (r.name.clone(), r.version.clone()))
                    .collect()
            };
            assert!(outbound(&none).len() > 1, "{node}");
            assert_eq!(outbound(&none), outbound(&policy), "{node}");
        }

        // The mesh default deny-all: TCP chains get the network filter.
        let deny_all = Snapshot::new(3, mesh(&registry("")), options(DefaultPolicy::DenyAll));
        assert_eq!(
            inbound_filters(&deny_all, "db-0.shop"),
            [[NETWORK_RBAC_FILTER, "envoy.filters.network.tcp_proxy"]]
        );
    }

    /// The filter names of a proxy's inbound catch-all chain (ports no
    /// Service declares), and whether its RBAC filter only counts.
    fn catch_all(snapshot: &Snapshot, node: &str) -> (Vec<String>, bool) {
        let view = snapshot.proxy(node).unwrap();
        let listener: Listener =
            decode(view.get(Kind::Listener, INBOUND_LISTENER).unwrap()).unwrap();
        let chain = listener.default_filter_chain.unwrap();
        let shadow = chain.filters.iter().any(|f| match &f.config_type {
            Some(filter::ConfigType::TypedConfig(any)) => decode_any::<NetworkRbac>(any)
                .is_some_and(|r| r.rules.is_none() && r.shadow_rules.is_some()),
            _ => false,
        });
        (
            chain.filters.iter().map(|f| f.name.clone()).collect(),
            shadow,
        )
    }

    /// What [`catch_all`] says of a chain: its filters, and whether its
    /// RBAC only counts.
    type ChainState = (Vec<String>, bool);

    /// A chain left open, closed, and counting (dry-run).
    fn catch_all_states() -> (ChainState, ChainState, ChainState) {
        let tcp_proxy = "envoy.filters.network.tcp_proxy".to_string();
        let closed = vec![NETWORK_RBAC_FILTER.to_string(), tcp_proxy.clone()];
        (
            (vec![tcp_proxy], false),
            (closed.clone(), false),
            (closed, true),
        )
    }

    #[test]
    fn undeclared_ports_close_when_the_pods_policy_or_the_mesh_default_denies() {
        let (open, closed, counted) = catch_all_states();
        let allow_all = options(DefaultPolicy::AllowAll);
        // Today's behaviour without policies.
        let none = Snapshot::new(1, mesh(&registry("")), allow_all.clone());
        for node in ["web-0.shop", "db-0.shop", "client-0.shop"] {
            assert_eq!(catch_all(&none, node), open, "{node}");
        }
        // An allow rule (ALLOW semantics) closes web's pods' other ports;
        // a deny rule alone does not, nor does it touch other pods.
        let allow = Snapshot::next(
            2,
            mesh(&registry("meshd.io/allow: 'shop/client-0'")),
            allow_all.clone(),
            &none,
        );
        assert_eq!(catch_all(&allow, "web-1.shop"), closed);
        assert_eq!(catch_all(&allow, "db-0.shop"), open);
        assert_eq!(catch_all(&allow, "client-0.shop"), open);
        let deny = Snapshot::next(
            3,
            mesh(&registry("meshd.io/deny: 'shop/client-0'")),
            allow_all.clone(),
            &allow,
        );
        assert_eq!(catch_all(&deny, "web-0.shop"), open);
        // In dry-run, undeclared ports are counted, not closed.
        let dry_run = Snapshot::next(
            4,
            mesh(&registry(
                "meshd.io/authorization: deny-all, meshd.io/authorization-mode: dry-run",
            )),
            allow_all,
            &deny,
        );
        assert_eq!(catch_all(&dry_run, "web-0.shop"), counted);
        // The mesh default deny-all closes every pod's, behind a Service
        // or not; a Service that allows all opens its pods'.
        let deny_all = options(DefaultPolicy::DenyAll);
        let mesh_deny = Snapshot::new(5, mesh(&registry("")), deny_all.clone());
        for node in ["web-0.shop", "db-0.shop", "client-0.shop"] {
            assert_eq!(catch_all(&mesh_deny, node), closed, "{node}");
        }
        let opted_out = Snapshot::new(
            6,
            mesh(&registry("meshd.io/authorization: allow-all")),
            deny_all,
        );
        assert_eq!(catch_all(&opted_out, "web-0.shop"), open);
        assert_eq!(catch_all(&opted_out, "client-0.shop"), closed);
    }

    /// shop's Namespace with `annotations` (a flow mapping's body).
    fn with_namespace(annotations: &str) -> String {
        registry("").replacen(
            "metadata: {name: shop}",
            &format!("metadata: {{name: shop, annotations: {{{annotations}}}}}"),
            1,
        )
    }

    #[test]
    fn a_pod_behind_no_service_follows_its_namespaces_policy() {
        let (open, closed, counted) = catch_all_states();
        let allow_all = options(DefaultPolicy::AllowAll);
        // client-0 is behind no Service; deny-all on its Namespace closes
        // its ports as it closes those of the namespace's Services' pods.
        let deny = Snapshot::new(
            1,
            mesh(&with_namespace("meshd.io/authorization: deny-all")),
            allow_all.clone(),
        );
        for node in ["client-0.shop", "web-0.shop", "db-0.shop"] {
            assert_eq!(catch_all(&deny, node), closed, "{node}");
        }
        // An allow rule on the Namespace: its baseline denies the rest.
        let allow = Snapshot::next(
            2,
            mesh(&with_namespace("meshd.io/allow: 'shop/*'")),
            allow_all.clone(),
            &deny,
        );
        assert_eq!(catch_all(&allow, "client-0.shop"), closed);
        // Dry-run on the Namespace: counted, not closed.
        let dry_run = Snapshot::next(
            3,
            mesh(&with_namespace(
                "meshd.io/authorization: deny-all, meshd.io/authorization-mode: dry-run",
            )),
            allow_all.clone(),
            &allow,
        );
        assert_eq!(catch_all(&dry_run, "client-0.shop"), counted);
        // A Namespace that allows all opens it under a deny-all mesh.
        let opted_out = Snapshot::new(
            4,
            mesh(&with_namespace("meshd.io/authorization: allow-all")),
            options(DefaultPolicy::DenyAll),
        );
        assert_eq!(catch_all(&opted_out, "client-0.shop"), open);
        // A deny rule alone leaves allow-all in place.
        let deny_rule = Snapshot::new(
            5,
            mesh(&with_namespace("meshd.io/deny: 'other/*'")),
            allow_all,
        );
        assert_eq!(catch_all(&deny_rule, "client-0.shop"), open);
    }

    /// The rules as Envoy gets them, for one service port.
    fn rules(policy: &str, default: DefaultPolicy) -> Enforced {
        let key = meshd_api::names::ServiceKey::new("shop", "web");
        let annotations = [("meshd.io/allow".to_string(), policy.to_string())]
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .collect();
        let policy =
            meshd_api::annotations::authorization::parse(&key, &annotations, &Default::default())
                .unwrap();
        Enforced::new(&policy, default, "shop", 80, Some("cluster.local")).unwrap()
    }

    /// As an Istio ALLOW policy does for its workload: an allow rule
    /// scoped to one port makes the Service's other ports deny-by-default
    /// too (the rule's allow-all baseline gives way to the rules on every
    /// port), rather than leaving them open.
    #[test]
    fn an_allow_rule_scoped_to_one_port_closes_the_services_other_ports() {
        let key = meshd_api::names::ServiceKey::new("shop", "web");
        let annotations = [(
            "meshd.io/allow".to_string(),
            "shop/client-0 port=80".to_string(),
        )]
        .into_iter()
        .collect();
        let policy =
            meshd_api::annotations::authorization::parse(&key, &annotations, &Default::default())
                .unwrap();
        let td = Some("cluster.local");
        let scoped = Enforced::new(&policy, DefaultPolicy::AllowAll, "shop", 80, td).unwrap();
        let names: Vec<&String> = scoped.http.policies.keys().collect();
        assert_eq!(names, [ALLOWED_POLICY]);
        // allow-all gave way to the rule: client-0 only.
        assert_eq!(
            scoped.http.policies[ALLOWED_POLICY].principals,
            [
                Identities { trust_domain: td }.caller(&Caller::ServiceAccount {
                    namespace: "shop".into(),
                    name: "client-0".into()
                })
            ]
        );
        // Port 8080: enforced, and nobody is allowed.
        let other = Enforced::new(&policy, DefaultPolicy::AllowAll, "shop", 8080, td)
            .expect("the other port is enforced, not left open");
        assert_eq!(other.http.action, rbac::Action::Allow as i32);
        assert!(other.http.policies.is_empty(), "{other:?}");
        assert!(other.tcp.policies.is_empty(), "{other:?}");
        // Kept open by a rule of its own, as the README shows.
        let annotations = [(
            "meshd.io/allow".to_string(),
            "shop/client-0 port=80; * port=8080".to_string(),
        )]
        .into_iter()
        .collect();
        let policy =
            meshd_api::annotations::authorization::parse(&key, &annotations, &Default::default())
                .unwrap();
        let opened = Enforced::new(&policy, DefaultPolicy::AllowAll, "shop", 8080, td).unwrap();
        assert_eq!(opened.http.policies[ALLOWED_POLICY].principals, [any()]);
        // A deny rule scoped to one port leaves the others as they were.
        let annotations = [(
            "meshd.io/deny".to_string(),
            "shop/client-0 port=80".to_string(),
        )]
        .into_iter()
        .collect();
        let policy =
            meshd_api::annotations::authorization::parse(&key, &annotations, &Default::default())
                .unwrap();
        assert!(Enforced::new(&policy, DefaultPolicy::AllowAll, "shop", 8080, td).is_none());
    }

    #[test]
    fn callers_are_matched_on_their_spiffe_id_only() {
        let e = rules("shop/web-0, other/*, */prom", DefaultPolicy::AllowAll);
        let text = format!("{:?}", e.http);
        assert!(
            text.contains("spiffe://cluster.local/ns/shop/sa/web-0"),
            "{text}"
        );
        assert!(
            text.contains("Prefix(\"spiffe://cluster.local/ns/other/sa/\")"),
            "{text}"
        );
        assert!(
            text.contains(r"^spiffe://cluster\\.local/ns/[^/]+/sa/prom$"),
            "{text}"
        );
        // allow-all gave way to the rules; no header but :method is read.
        let principals = format!("{:?}", e.http.policies[ALLOWED_POLICY].principals);
        assert!(!principals.contains("Any(true)"), "{principals}");
        assert!(!text.contains("x-forwarded-client-cert"), "{text}");
        let same = rules("", DefaultPolicy::AllowSameNamespace);
        assert!(format!("{:?}", same.http).contains("spiffe://cluster.local/ns/shop/sa/"));
        // An HTTP-only allow rule allows nothing on a TCP chain.
        let http_only = rules("shop/web-0 GET", DefaultPolicy::DenyAll);
        assert_eq!(http_only.http.policies.len(), 1);
        assert!(http_only.tcp.policies.is_empty());
    }

    /// Deny rules are written once per chain, however many allow rules
    /// there are: the config grows with allow + deny rules, not their
    /// product.
    #[test]
    fn deny_rules_are_written_once_whatever_the_number_of_allow_rules() {
        let key = meshd_api::names::ServiceKey::new("shop", "web");
        let annotations = [
            (
                "meshd.io/allow".to_string(),
                "shop/a GET; shop/b POST; shop/c; shop/d /api/*".to_string(),
            ),
            ("meshd.io/deny".to_string(), "batch/x; batch/y".to_string()),
            (
                "meshd.io/authorization".to_string(),
                "allow-same-namespace".to_string(),
            ),
        ]
        .into_iter()
        .collect();
        let policy =
            meshd_api::annotations::authorization::parse(&key, &annotations, &Default::default())
                .unwrap();
        let e = Enforced::new(
            &policy,
            DefaultPolicy::AllowAll,
            "shop",
            80,
            Some("cluster.local"),
        )
        .unwrap();
        for (chain, rbac) in [("http", &e.http), ("tcp", &e.tcp)] {
            assert_eq!(rbac.policies.len(), 1, "{chain}");
            let text = format!("{rbac:?}");
            for denied in ["ns/batch/sa/x", "ns/batch/sa/y"] {
                assert_eq!(text.matches(denied).count(), 1, "{chain}: {text}");
            }
            // The baseline (same namespace) is there once, beside the rules.
            assert_eq!(
                text.matches("Prefix(\"spiffe://cluster.local/ns/shop/sa/\")")
                    .count(),
                1,
                "{chain}: {text}"
            );
        }
        // The HTTP-only rules (a, b, d) allow nothing on the TCP chain.
        let tcp = format!("{:?}", e.tcp);
        assert!(
            tcp.contains("ns/shop/sa/c") && !tcp.contains("ns/shop/sa/a"),
            "{tcp}"
        );
    }
}
