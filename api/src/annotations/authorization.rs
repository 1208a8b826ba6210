//! Authorization from annotations: who may call a Service, set on the
//! Service or, as the default for its Services, on its Namespace.
//!
//! ```text
//! Service annotations ───┐  parse (pure: what the validating webhook and
//!                        │  the control plane's discovery both call)
//!                        ├─────────────────────────────────────────────> Policy
//! Namespace annotations ─┘  per annotation, the Service's value wins
//!                             └─ AnnotationError: object, annotation, value, accepted
//! ```
//!
//! A request is allowed when its caller is admitted by the default
//! (`meshd.io/authorization`, else the mesh's `--authorization-default`)
//! or by a `meshd.io/allow` rule, and matches no `meshd.io/deny` rule.
//! Callers are told apart by the SPIFFE ID of their mTLS certificate,
//! never by anything they send: a plaintext caller is `unauthenticated`.
//!
//! The rule syntax, short to type:
//!
//! ```text
//! meshd.io/allow: "shop/web, ./* GET,HEAD /api/*; */prometheus GET /metrics port=9090"
//!                  └callers──────┘ └methods┘ └paths┘                       └service ports
//! ```
//!
//! Rules are separated by `;` (or new lines); a rule is a comma-separated
//! list of callers followed, optionally, by methods, paths and ports.
//! [`ANNOTATIONS`] is the one source for the README table and for the
//! `accepted` part of every message.

use std::fmt;

use super::routing::{AnnotationDoc, AnnotationError, Annotations, Applies, Severity};
use crate::names::{ServiceKey, is_dns_label};

pub const AUTHORIZATION: &str = "meshd.io/authorization";
pub const ALLOW: &str = "meshd.io/allow";
pub const DENY: &str = "meshd.io/deny";
pub const AUTHORIZATION_MODE: &str = "meshd.io/authorization-mode";

/// Every authorization annotation (the routing parser skips these as
/// owned elsewhere).
pub const KEYS: [&str; 4] = [AUTHORIZATION, ALLOW, DENY, AUTHORIZATION_MODE];

/// The most rules one annotation may hold, and the most callers, methods,
/// paths or ports one rule may list: every rule becomes Envoy matchers on
/// each inbound port of each pod behind the service.
pub const MAX_RULES: usize = 64;
pub const MAX_ITEMS: usize = 64;

macro_rules! rule_syntax {
    () => {
        "rules separated by `;`, each a comma-separated list of callers (namespace/service-account, namespace/* for any of a namespace, */service-account for that name in any namespace, . for the object's own namespace, authenticated for any mesh workload, unauthenticated for plaintext callers, * for anyone), then optionally methods (GET,POST: GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, CONNECT, TRACE), paths (/healthz exact, /api/* prefix, comma-separated) and port=80,8080 (Service ports)"
    };
}

/// The authorization annotations meshd reads.
pub const ANNOTATIONS: &[AnnotationDoc] = &[
    AnnotationDoc {
        name: AUTHORIZATION,
        applies: Applies::ServiceOrNamespace,
        accepted: "allow-all, allow-authenticated, allow-same-namespace, deny-all",
        default: "the mesh's --authorization-default (allow-all unless set)",
        description: "Who may call the Service besides the callers of meshd.io/allow: anyone, any mesh workload (mTLS), mesh workloads of the Service's namespace, or no one.",
    },
    AnnotationDoc {
        name: ALLOW,
        applies: Applies::ServiceOrNamespace,
        accepted: concat!(
            rule_syntax!(),
            "; methods and paths only match on HTTP ports"
        ),
        default: "none",
        description: "Callers allowed on top of the default (with allow-all in force, only these are allowed; allow-all and meshd.io/allow on one object conflict).",
    },
    AnnotationDoc {
        name: DENY,
        applies: Applies::ServiceOrNamespace,
        accepted: concat!(
            rule_syntax!(),
            "; on TCP ports a rule with methods or paths denies its callers outright"
        ),
        default: "none",
        description: "Requests denied whatever allows them: deny wins over allow.",
    },
    AnnotationDoc {
        name: AUTHORIZATION_MODE,
        applies: Applies::ServiceOrNamespace,
        accepted: "enforce, dry-run",
        default: "enforce",
        description: "dry-run: nothing is blocked, and each request the policy would deny is counted by the serving proxy (its rbac.dry_run.shadow_denied counter).",
    },
];

/// The row of a known authorization annotation.
pub fn doc(name: &str) -> Option<&'static AnnotationDoc> {
    ANNOTATIONS.iter().find(|d| d.name == name)
}

/// The `accepted` part of the messages about annotation `name`.
pub fn accepted(name: &str) -> &'static str {
    doc(name).map_or("", |d| d.accepted)
}

/// The annotation table in Markdown, for the README.
pub fn markdown_table() -> String {
    let cell = |s: &str| s.replace('|', "\\|");
    let mut out = String::from(
        "| annotation | on | accepted | default | what |\n| --- | --- | --- | --- | --- |\n",
    );
    for d in ANNOTATIONS {
        out.push_str(&format!(
            "| `{}` | {} | {} | {} | {} |\n",
            d.name,
            d.applies.text(),
            cell(d.accepted),
            cell(d.default),
            cell(d.description)
        ));
    }
    out
}

/// Who may call when no rule says otherwise.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DefaultPolicy {
    /// Anyone, plaintext callers included: meshd without authorization.
    #[default]
    AllowAll,
    /// Any caller with a mesh certificate (mTLS).
    AllowAuthenticated,
    /// Mesh workloads of the Service's own namespace.
    AllowSameNamespace,
    /// No one (but the callers of `meshd.io/allow`).
    DenyAll,
}

impl DefaultPolicy {
    pub const ACCEPTED: &'static str =
        "allow-all, allow-authenticated, allow-same-namespace, deny-all";

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "allow-all" => Some(DefaultPolicy::AllowAll),
            "allow-authenticated" => Some(DefaultPolicy::AllowAuthenticated),
            "allow-same-namespace" => Some(DefaultPolicy::AllowSameNamespace),
            "deny-all" => Some(DefaultPolicy::DenyAll),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DefaultPolicy::AllowAll => "allow-all",
            DefaultPolicy::AllowAuthenticated => "allow-authenticated",
            DefaultPolicy::AllowSameNamespace => "allow-same-namespace",
            DefaultPolicy::DenyAll => "deny-all",
        }
    }
}

impl fmt::Display for DefaultPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether the policy blocks or only counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Mode {
    #[default]
    Enforce,
    /// Nothing is blocked; what would be denied is counted and logged.
    DryRun,
}

impl Mode {
    /// The value as users write it (`meshd.io/authorization-mode`).
    pub fn name(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::DryRun => "dry-run",
        }
    }
}

/// Who a rule names.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Caller {
    /// Anyone, with or without a certificate.
    Any,
    /// Any caller with a mesh certificate.
    Authenticated,
    /// Callers without a certificate (plaintext, under PERMISSIVE).
    Unauthenticated,
    /// Any service account of a namespace.
    Namespace(String),
    /// A service account name in any namespace.
    AnyNamespace(String),
    /// One service account.
    ServiceAccount { namespace: String, name: String },
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::Any => f.write_str("*"),
            Caller::Authenticated => f.write_str("authenticated"),
            Caller::Unauthenticated => f.write_str("unauthenticated"),
            Caller::Namespace(ns) => write!(f, "{ns}/*"),
            Caller::AnyNamespace(sa) => write!(f, "*/{sa}"),
            Caller::ServiceAccount { namespace, name } => write!(f, "{namespace}/{name}"),
        }
    }
}

/// A request path: exact, or a prefix (written with a trailing `*`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
}

/// As written: `/healthz`, or `/api/*` for a prefix.
impl fmt::Display for PathMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathMatch::Exact(path) => f.write_str(path),
            PathMatch::Prefix(prefix) => write!(f, "{prefix}*"),
        }
    }
}

/// One `meshd.io/allow` or `meshd.io/deny` rule.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Rule {
    pub callers: Vec<Caller>,
    /// Uppercase; empty: any method.
    pub methods: Vec<String>,
    /// Empty: any path.
    pub paths: Vec<PathMatch>,
    /// Service ports; empty: every port.
    pub ports: Vec<u16>,
}

/// In the annotation's syntax (`shop/web, ./* GET /api/* port=80`, with
/// `.` already resolved to its namespace): what [`parse_rules`] reads back
/// as the same rule.
impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn joined<T: fmt::Display>(items: &[T]) -> String {
            items
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        }
        let callers: Vec<String> = self.callers.iter().map(ToString::to_string).collect();
        f.write_str(&callers.join(", "))?;
        if !self.methods.is_empty() {
            write!(f, " {}", self.methods.join(","))?;
        }
        if !self.paths.is_empty() {
            write!(f, " {}", joined(&self.paths))?;
        }
        if !self.ports.is_empty() {
            write!(f, " port={}", joined(&self.ports))?;
        }
        Ok(())
    }
}

impl Rule {
    /// Whether the rule looks into HTTP requests (so only matches them).
    pub fn is_http(&self) -> bool {
        !self.methods.is_empty() || !self.paths.is_empty()
    }

    /// Whether the rule applies on service port `port`.
    pub fn covers(&self, port: u16) -> bool {
        self.ports.is_empty() || self.ports.contains(&port)
    }
}

/// The authorization of one Service: what its annotations (and its
/// namespace's defaults) ask for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Policy {
    /// `None`: the mesh's `--authorization-default`.
    pub default: Option<DefaultPolicy>,
    pub allow: Vec<Rule>,
    pub deny: Vec<Rule>,
    pub mode: Mode,
}

impl Policy {
    /// A Service without authorization annotations: the mesh default.
    pub const NONE: Policy = Policy {
        default: None,
        allow: Vec::new(),
        deny: Vec::new(),
        mode: Mode::Enforce,
    };

    /// The default in force under the mesh default `mesh`. With allow-all
    /// and allow rules, the rules are the callers: allow-all leaves nothing
    /// for them to add to.
    pub fn baseline(&self, mesh: DefaultPolicy) -> DefaultPolicy {
        match self.default.unwrap_or(mesh) {
            DefaultPolicy::AllowAll if !self.allow.is_empty() => DefaultPolicy::DenyAll,
            other => other,
        }
    }

    /// Whether every request is allowed and nothing is counted: no
    /// filter is needed.
    pub fn allows_everything(&self, mesh: DefaultPolicy) -> bool {
        self.baseline(mesh) == DefaultPolicy::AllowAll && self.deny.is_empty()
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy::NONE
    }
}

/// One object's annotations, as a layer of the lookup.
struct Layer<'a> {
    object: String,
    annotations: &'a Annotations,
}

/// The value in force for `name`: the first layer that sets it.
fn lookup<'a, 'b>(layers: &'b [Layer<'a>], name: &str) -> Option<(&'b Layer<'a>, &'a str)> {
    layers
        .iter()
        .find_map(|l| Some((l, l.annotations.get(name)?.as_str())))
}

fn error(layer: &Layer<'_>, name: &str, value: &str, detail: String) -> AnnotationError {
    AnnotationError {
        severity: Severity::Rejected,
        object: layer.object.clone(),
        annotation: name.to_string(),
        value: value.to_string(),
        message: format!("{detail}; accepted: {}", accepted(name)),
    }
}

/// `namespace` is the object's, for `.`.
fn policy(layers: &[Layer<'_>], namespace: &str) -> Result<Policy, Vec<AnnotationError>> {
    let mut errors = Vec::new();
    let default = lookup(layers, AUTHORIZATION).and_then(|(layer, value)| {
        DefaultPolicy::parse(value.trim()).or_else(|| {
            let detail = format!("`{}` is not a default", value.trim());
            errors.push(error(layer, AUTHORIZATION, value, detail));
            None
        })
    });
    let mode = lookup(layers, AUTHORIZATION_MODE)
        .and_then(|(layer, value)| match value.trim() {
            "enforce" => Some(Mode::Enforce),
            "dry-run" => Some(Mode::DryRun),
            other => {
                let detail = format!("`{other}` is not a mode");
                errors.push(error(layer, AUTHORIZATION_MODE, value, detail));
                None
            }
        })
        .unwrap_or_default();
    let mut rules = |name: &str| -> Vec<Rule> {
        let Some((layer, value)) = lookup(layers, name) else {
            return Vec::new();
        };
        match parse_rules(value, namespace) {
            Ok(rules) => rules,
            Err(detail) => {
                errors.push(error(layer, name, value, detail));
                Vec::new()
            }
        }
    };
    let allow = rules(ALLOW);
    let deny = rules(DENY);
    // allow-all admits everyone: rules beside it on one object say two
    // things at once.
    for layer in layers {
        if let (Some(value), Some(rules)) = (
            layer.annotations.get(AUTHORIZATION),
            layer.annotations.get(ALLOW),
        ) && value.trim() == DefaultPolicy::AllowAll.name()
        {
            errors.push(error(
                layer,
                ALLOW,
                rules,
                format!(
                    "conflicts with {AUTHORIZATION}: allow-all on the same object (allow-all admits every caller; set deny-all, allow-authenticated or allow-same-namespace to admit only some)"
                ),
            ));
        }
    }
    if errors.is_empty() {
        Ok(Policy {
            default,
            allow,
            deny,
            mode,
        })
    } else {
        Err(errors)
    }
}

/// A Service's lookup: its own annotations, then its Namespace's.
fn service_layers<'a>(
    service: &ServiceKey,
    service_annotations: &'a Annotations,
    namespace_annotations: &'a Annotations,
) -> [Layer<'a>; 2] {
    [
        Layer {
            object: format!("Service {service}"),
            annotations: service_annotations,
        },
        Layer {
            object: format!("Namespace {}", service.namespace),
            annotations: namespace_annotations,
        },
    ]
}

/// The authorization of one service from its own annotations and its
/// namespace's (per annotation, the service's own value wins). Pure: the
/// validating webhook calls it on the object under review.
pub fn parse(
    service: &ServiceKey,
    service_annotations: &Annotations,
    namespace_annotations: &Annotations,
) -> Result<Policy, Vec<AnnotationError>> {
    let layers = service_layers(service, service_annotations, namespace_annotations);
    policy(&layers, &service.namespace)
}

/// Rule ports of `policy` (as [`parse`] made it) that are not `ports`, the
/// ports of Service `service`: one error per annotation, on the object
/// whose value is in force: the Service's own, else its Namespace's (a
/// Namespace rule with `port=` applies to every Service of the namespace,
/// and must fit each). The validating webhook calls it with the Service's
/// `spec.ports` and no namespace annotations; discovery with both.
pub fn check_ports(
    service: &ServiceKey,
    ports: &[u16],
    service_annotations: &Annotations,
    namespace_annotations: &Annotations,
    policy: &Policy,
) -> Vec<AnnotationError> {
    let layers = service_layers(service, service_annotations, namespace_annotations);
    let mut errors = Vec::new();
    for (annotation, rules) in [(ALLOW, &policy.allow), (DENY, &policy.deny)] {
        let mut missing: Vec<u16> = rules
            .iter()
            .flat_map(|r| &r.ports)
            .filter(|p| !ports.contains(p))
            .copied()
            .collect();
        missing.sort_unstable();
        missing.dedup();
        if missing.is_empty() {
            continue;
        }
        let (object, value) = lookup(&layers, annotation)
            .map_or((layers[0].object.clone(), ""), |(l, v)| {
                (l.object.clone(), v)
            });
        let missing: Vec<String> = missing.iter().map(u16::to_string).collect();
        errors.push(AnnotationError {
            severity: Severity::Rejected,
            object,
            annotation: annotation.to_string(),
            value: value.to_string(),
            message: format!(
                "Service {service} has no port {}; accepted: {}",
                missing.join(", "),
                accepted(annotation)
            ),
        });
    }
    errors
}

impl Caller {
    /// Whether matching this caller takes a certificate: a plaintext caller
    /// has none, so it can only ever be `*` or `unauthenticated`.
    pub fn needs_identity(&self) -> bool {
        !matches!(self, Caller::Any | Caller::Unauthenticated)
    }

    /// Whether a plaintext caller can match it.
    fn admits_plaintext(&self) -> bool {
        !self.needs_identity()
    }
}

/// What an annotation in force does to plaintext callers (on a workload
/// that accepts plaintext) that its text does not say: a plaintext caller
/// has no identity, and matches only `unauthenticated` and `*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PlaintextSurprise {
    /// `allow-same-namespace`, and no allow rule admits plaintext: a
    /// plaintext caller of the Service's own namespace is refused.
    SameNamespaceRefused,
    /// Allow rules name callers by identity and none admits plaintext:
    /// every plaintext caller is refused, those the rules name included.
    /// (`authenticated` alone says as much, as `allow-authenticated` does:
    /// neither is a surprise.)
    NamedCallersRefused,
    /// Deny rules name callers by identity: the same callers in plaintext
    /// are not stopped.
    DenyMissed,
}

impl PlaintextSurprise {
    fn consequence(self) -> &'static str {
        match self {
            PlaintextSurprise::SameNamespaceRefused => {
                "so this default refuses plaintext callers of the namespace too"
            }
            PlaintextSurprise::NamedCallersRefused => {
                "so the callers these rules name are refused when they call in plaintext"
            }
            PlaintextSurprise::DenyMissed => {
                "so these deny rules do not stop the callers they name when they call in plaintext"
            }
        }
    }
}

impl Policy {
    /// The annotations of this policy that do not do what they say for
    /// plaintext callers, each with its annotation; cheap, for every
    /// Service at every snapshot.
    pub fn plaintext_surprises(&self) -> Vec<(&'static str, PlaintextSurprise)> {
        let admits_plaintext = self
            .allow
            .iter()
            .any(|r| r.callers.iter().any(Caller::admits_plaintext));
        let names = |rules: &[Rule]| {
            rules.iter().any(|r| {
                r.callers
                    .iter()
                    .any(|c| c.needs_identity() && *c != Caller::Authenticated)
            })
        };
        let mut found = Vec::new();
        if self.default == Some(DefaultPolicy::AllowSameNamespace) && !admits_plaintext {
            found.push((AUTHORIZATION, PlaintextSurprise::SameNamespaceRefused));
        }
        if names(&self.allow) && !admits_plaintext {
            found.push((ALLOW, PlaintextSurprise::NamedCallersRefused));
        }
        // A deny rule for `authenticated` does not stop plaintext callers
        // either, which its text does not say.
        if self
            .deny
            .iter()
            .any(|r| r.callers.iter().any(Caller::needs_identity))
        {
            found.push((DENY, PlaintextSurprise::DenyMissed));
        }
        found
    }
}

/// An annotation in force for a Service that does not do what it says for
/// plaintext callers (see [`PlaintextSurprise`]).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PlaintextWarning {
    /// The object whose value is in force: the Service, else its Namespace.
    pub object: String,
    pub annotation: &'static str,
    pub value: String,
    pub surprise: PlaintextSurprise,
}

impl PlaintextWarning {
    /// The warning for this annotation, where `plaintext` says whose
    /// workloads accept plaintext and why (`pods behind this Service accept
    /// plaintext (its Namespace's meshd.io/mtls is PERMISSIVE)`) and
    /// `remedy` how to refuse plaintext there.
    pub fn warning(&self, plaintext: &str, remedy: &str) -> AnnotationError {
        AnnotationError {
            severity: Severity::Warning,
            object: self.object.clone(),
            annotation: self.annotation.to_string(),
            value: self.value.clone(),
            message: format!(
                "names callers by their mTLS identity, but {plaintext}: a plaintext caller has no identity and matches only `unauthenticated` or `*`, {}; {remedy}",
                self.surprise.consequence()
            ),
        }
    }
}

/// The annotations in force for `service` (as [`parse`] made `policy`)
/// that do not do what they say for plaintext callers
/// ([`Policy::plaintext_surprises`]), on the objects whose values are in
/// force.
pub fn plaintext_warnings(
    service: &ServiceKey,
    service_annotations: &Annotations,
    namespace_annotations: &Annotations,
    policy: &Policy,
) -> Vec<PlaintextWarning> {
    let layers = service_layers(service, service_annotations, namespace_annotations);
    policy
        .plaintext_surprises()
        .into_iter()
        .filter_map(|(annotation, surprise)| {
            let (layer, value) = lookup(&layers, annotation)?;
            Some(PlaintextWarning {
                object: layer.object.clone(),
                annotation,
                value: value.to_string(),
                surprise,
            })
        })
        .collect()
}

/// Checks a Namespace's authorization defaults on their own.
pub fn validate_namespace(
    namespace: &str,
    annotations: &Annotations,
) -> Result<(), Vec<AnnotationError>> {
    parse_namespace(namespace, annotations).map(|_| ())
}

/// A Namespace's own policy: what its Services inherit, and what its pods
/// behind no Service get.
pub fn parse_namespace(
    namespace: &str,
    annotations: &Annotations,
) -> Result<Policy, Vec<AnnotationError>> {
    let layers = [Layer {
        object: format!("Namespace {namespace}"),
        annotations,
    }];
    policy(&layers, namespace)
}

const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
];

/// Parses the rules of `meshd.io/allow` or `meshd.io/deny`; `namespace`
/// stands for `.`.
pub fn parse_rules(value: &str, namespace: &str) -> Result<Vec<Rule>, String> {
    let texts: Vec<&str> = value
        .split([';', '\n'])
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .collect();
    if texts.is_empty() {
        return Err("no rule".into());
    }
    if texts.len() > MAX_RULES {
        return Err(format!("{} rules, at most {MAX_RULES}", texts.len()));
    }
    texts.into_iter().map(|r| rule(r, namespace)).collect()
}

fn rule(text: &str, namespace: &str) -> Result<Rule, String> {
    // "a, b" is one list: join what a comma separates before splitting
    // the rule into its parts at the remaining spaces.
    let joined = text.split(',').map(str::trim).collect::<Vec<_>>().join(",");
    let mut parts = joined.split_whitespace();
    let callers = parts.next().unwrap_or_default();
    let mut rule = Rule {
        callers: Vec::new(),
        methods: Vec::new(),
        paths: Vec::new(),
        ports: Vec::new(),
    };
    for item in list(callers)? {
        rule.callers.push(caller(item, namespace)?);
    }
    for part in parts {
        if let Some(ports) = part.strip_prefix("port=") {
            for p in list(ports)? {
                match p.parse::<u16>() {
                    Ok(n) if n > 0 => rule.ports.push(n),
                    _ => return Err(format!("`{p}` is not a port 1-65535")),
                }
            }
        } else if part.starts_with('/') {
            for p in list(part)? {
                rule.paths.push(path(p)?);
            }
        } else if part.bytes().next().is_some_and(|b| b.is_ascii_alphabetic()) {
            for m in list(part)? {
                if !METHODS.contains(&m) {
                    return Err(format!(
                        "`{m}` is not a method (methods are uppercase) in rule `{text}`"
                    ));
                }
                rule.methods.push(m.to_string());
            }
        } else {
            return Err(format!(
                "`{part}` is neither methods, paths nor port= in rule `{text}`"
            ));
        }
    }
    // Paths and ports may come in several parts; the bound is on the rule
    // (it is what becomes matchers), so that it reads back as one part.
    for (what, count) in [("paths", rule.paths.len()), ("ports", rule.ports.len())] {
        if count > MAX_ITEMS {
            return Err(format!(
                "rule `{text}` lists {count} {what}, at most {MAX_ITEMS}"
            ));
        }
    }
    rule.methods.sort();
    rule.methods.dedup();
    rule.paths.sort();
    rule.paths.dedup();
    rule.ports.sort();
    rule.ports.dedup();
    Ok(rule)
}

fn list(text: &str) -> Result<Vec<&str>, String> {
    let items: Vec<&str> = text.split(',').collect();
    if items.iter().any(|i| i.is_empty()) {
        return Err(format!("`{text}` has an empty item"));
    }
    if items.len() > MAX_ITEMS {
        return Err(format!("`{text}` lists more than {MAX_ITEMS} items"));
    }
    Ok(items)
}

/// A service account name: a DNS subdomain.
fn is_service_account(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| !l.is_empty() && is_dns_label(l))
}

fn caller(text: &str, namespace: &str) -> Result<Caller, String> {
    match text {
        "*" => return Ok(Caller::Any),
        "authenticated" => return Ok(Caller::Authenticated),
        "unauthenticated" => return Ok(Caller::Unauthenticated),
        _ => {}
    }
    let bad = || {
        format!(
            "`{text}` is not a caller (namespace/service-account, namespace/*, */service-account, ./…, authenticated, unauthenticated or *)"
        )
    };
    let (ns, sa) = text.split_once('/').ok_or_else(bad)?;
    if ns == "*" {
        return match sa {
            sa if is_service_account(sa) => Ok(Caller::AnyNamespace(sa.to_string())),
            _ => Err(bad()),
        };
    }
    let ns = if ns == "." { namespace } else { ns };
    if ns.is_empty() || !is_dns_label(ns) {
        return Err(bad());
    }
    match sa {
        "*" => Ok(Caller::Namespace(ns.to_string())),
        sa if is_service_account(sa) => Ok(Caller::ServiceAccount {
            namespace: ns.to_string(),
            name: sa.to_string(),
        }),
        _ => Err(bad()),
    }
}

fn path(text: &str) -> Result<PathMatch, String> {
    let bad = |why: &str| format!("`{text}` is not a path: {why}");
    if text.len() > 1024 {
        return Err(bad("longer than 1024 characters"));
    }
    // What Envoy compares after normalizing: no query, no fragment, no
    // dot segments, visible ASCII.
    if !text.bytes().all(|b| b.is_ascii_graphic()) || text.contains(['?', '#', '%']) {
        return Err(bad("only visible ASCII without ?, # or %"));
    }
    if text.split('/').any(|s| s == "." || s == "..") || text.contains("//") {
        return Err(bad("no . or .. segments or //"));
    }
    match text.strip_suffix('*') {
        Some(prefix) if !prefix.contains('*') => Ok(PathMatch::Prefix(prefix.to_string())),
        None if !text.contains('*') => Ok(PathMatch::Exact(text.to_string())),
        _ => Err(bad("* only at the end")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> Annotations {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn key() -> ServiceKey {
        ServiceKey::new("shop", "reviews")
    }

    #[test]
    fn plaintext_surprises_are_found_on_the_object_whose_value_is_in_force() {
        let service = ann(&[(DENY, "shop/legacy")]);
        let namespace = ann(&[
            (AUTHORIZATION, "allow-same-namespace"),
            (ALLOW, "shop/web GET /api/*"),
        ]);
        let policy = parse(&key(), &service, &namespace).unwrap();
        let found = plaintext_warnings(&key(), &service, &namespace, &policy);
        assert_eq!(
            found,
            [
                PlaintextWarning {
                    object: "Namespace shop".into(),
                    annotation: AUTHORIZATION,
                    value: "allow-same-namespace".into(),
                    surprise: PlaintextSurprise::SameNamespaceRefused,
                },
                PlaintextWarning {
                    object: "Namespace shop".into(),
                    annotation: ALLOW,
                    value: "shop/web GET /api/*".into(),
                    surprise: PlaintextSurprise::NamedCallersRefused,
                },
                PlaintextWarning {
                    object: "Service shop/reviews".into(),
                    annotation: DENY,
                    value: "shop/legacy".into(),
                    surprise: PlaintextSurprise::DenyMissed,
                },
            ]
        );
        let warning = found[2].warning(
            "pods behind this Service accept plaintext",
            "set the Namespace's meshd.io/mtls to STRICT",
        );
        assert_eq!(warning.severity, Severity::Warning);
        assert!(
            warning
                .message
                .contains("pods behind this Service accept plaintext")
                && warning
                    .message
                    .contains("do not stop the callers they name")
                && warning.message.ends_with("meshd.io/mtls to STRICT"),
            "{warning}"
        );
    }

    #[test]
    fn rules_that_say_what_they_do_to_plaintext_are_no_surprise() {
        let surprises = |pairs: &[(&str, &str)]| {
            parse(&key(), &ann(pairs), &Annotations::new())
                .unwrap()
                .plaintext_surprises()
        };
        // `*` and `unauthenticated` match plaintext callers as written.
        assert_eq!(
            surprises(&[(ALLOW, "*"), (DENY, "unauthenticated POST")]),
            []
        );
        // Refusing plaintext is what `authenticated` and
        // allow-authenticated ask for.
        assert_eq!(surprises(&[(AUTHORIZATION, "allow-authenticated")]), []);
        assert_eq!(surprises(&[(ALLOW, "authenticated GET")]), []);
        // An allow rule that admits plaintext: the rules were written
        // with plaintext callers in mind.
        assert_eq!(
            surprises(&[(ALLOW, "shop/web; unauthenticated GET /healthz")]),
            []
        );
        assert_eq!(
            surprises(&[
                (AUTHORIZATION, "allow-same-namespace"),
                (ALLOW, "unauthenticated GET /healthz"),
            ]),
            []
        );
        // Denying `authenticated` leaves plaintext callers in, unsaid.
        assert_eq!(
            surprises(&[(DENY, "authenticated POST")]),
            [(DENY, PlaintextSurprise::DenyMissed)]
        );
    }

    #[test]
    fn a_rule_is_shown_as_it_is_written() {
        let text = "shop/web, batch/* GET,HEAD /api/*,/healthz port=80,8080; unauthenticated";
        let rules = parse_rules(text, "shop").unwrap();
        let shown: Vec<String> = rules.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                // Paths in the order the parser keeps them.
                "shop/web, batch/* GET,HEAD /healthz,/api/* port=80,8080",
                "unauthenticated"
            ]
        );
        assert_eq!(parse_rules(&shown.join("; "), "shop").unwrap(), rules);

        // Paths in several parts are bounded together, so that the rule
        // shown (one part) reads back.
        let part = |from: usize, count: usize| {
            (from..from + count)
                .map(|i| format!("/p{i}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let text = format!("shop/web {} {}", part(0, 40), part(40, 40));
        let error = parse_rules(&text, "shop").unwrap_err();
        assert!(error.contains("lists 80 paths, at most 64"), "{error}");
        let text = format!("shop/web {} {}", part(0, 40), part(40, 24));
        let rules = parse_rules(&text, "shop").unwrap();
        assert_eq!(parse_rules(&rules[0].to_string(), "shop").unwrap(), rules);
    }

    #[test]
    fn rules_read_as_written() {
        let rules = parse_rules(
            "shop/web, ./* GET,HEAD /api/*,/healthz; */prometheus GET /metrics port=9090;unauthenticated",
            "shop",
        )
        .unwrap();
        assert_eq!(rules.len(), 3);
        assert_eq!(
            rules[0].callers,
            [
                Caller::ServiceAccount {
                    namespace: "shop".into(),
                    name: "web".into()
                },
                Caller::Namespace("shop".into())
            ]
        );
        assert_eq!(rules[0].methods, ["GET", "HEAD"]);
        assert_eq!(
            rules[0].paths,
            [
                PathMatch::Exact("/healthz".into()),
                PathMatch::Prefix("/api/".into())
            ]
        );
        assert!(rules[0].ports.is_empty());
        assert_eq!(rules[1].ports, [9090]);
        assert!(rules[1].is_http());
        assert!(rules[1].covers(9090) && !rules[1].covers(80));
        assert_eq!(rules[2].callers, [Caller::Unauthenticated]);
        assert!(!rules[2].is_http());
    }

    #[test]
    fn bad_rules_say_what_is_wrong() {
        for (value, wanted) in [
            ("shop", "is not a caller"),
            ("Shop/web", "is not a caller"),
            ("shop/web get", "is not a method"),
            ("shop/web GET api", "is not a method"),
            ("shop/web /a*b", "* only at the end"),
            ("shop/web /a/../b", "no . or .."),
            ("shop/web port=0", "is not a port"),
            ("shop/web,,x/y", "empty item"),
            ("shop/web 80", "neither methods, paths nor port="),
            (" ; ", "no rule"),
        ] {
            let e = parse_rules(value, "shop").unwrap_err();
            assert!(e.contains(wanted), "{value}: {e}");
        }
    }

    #[test]
    fn the_service_wins_per_annotation_and_errors_name_everything() {
        let ns = ann(&[(AUTHORIZATION, "allow-same-namespace"), (DENY, "x/*")]);
        let p = parse(&key(), &ann(&[(ALLOW, "other/batch")]), &ns).unwrap();
        assert_eq!(p.default, Some(DefaultPolicy::AllowSameNamespace));
        assert_eq!(p.allow[0].callers[0].to_string(), "other/batch");
        assert_eq!(p.deny[0].callers, [Caller::Namespace("x".into())]);
        assert_eq!(
            p.baseline(DefaultPolicy::AllowAll),
            DefaultPolicy::AllowSameNamespace
        );

        let errors = parse(
            &key(),
            &ann(&[(AUTHORIZATION, "allow-some"), (ALLOW, "web")]),
            &ann(&[(AUTHORIZATION_MODE, "audit")]),
        )
        .unwrap_err();
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert_eq!(errors[0].object, "Service shop/reviews");
        assert_eq!(errors[0].annotation, AUTHORIZATION);
        assert_eq!(errors[0].value, "allow-some");
        assert!(
            errors[0]
                .message
                .ends_with(&format!("accepted: {}", DefaultPolicy::ACCEPTED))
        );
        assert_eq!(errors[1].object, "Namespace shop");
        assert_eq!(errors[1].annotation, AUTHORIZATION_MODE);
        assert_eq!(errors[2].annotation, ALLOW);
        assert!(
            errors[2].message.contains("`web` is not a caller"),
            "{}",
            errors[2]
        );
    }

    #[test]
    fn allow_all_beside_allow_rules_conflicts_and_allow_rules_narrow_allow_all() {
        let errors = parse(
            &key(),
            &ann(&[(AUTHORIZATION, "allow-all"), (ALLOW, "shop/web")]),
            &Annotations::new(),
        )
        .unwrap_err();
        assert!(errors[0].message.contains("conflicts"), "{errors:?}");
        // Allow rules under the mesh's allow-all: only they are allowed.
        let p = parse(&key(), &ann(&[(ALLOW, "shop/web")]), &Annotations::new()).unwrap();
        assert_eq!(p.baseline(DefaultPolicy::AllowAll), DefaultPolicy::DenyAll);
        assert!(!p.allows_everything(DefaultPolicy::AllowAll));
        assert!(Policy::NONE.allows_everything(DefaultPolicy::AllowAll));
        assert!(!Policy::NONE.allows_everything(DefaultPolicy::DenyAll));
    }

    #[test]
    fn the_dot_is_the_objects_namespace() {
        let p = parse(&key(), &Annotations::new(), &ann(&[(ALLOW, "./*")])).unwrap();
        assert_eq!(p.allow[0].callers, [Caller::Namespace("shop".into())]);
        assert!(validate_namespace("shop", &ann(&[(DENY, "./nope!")])).is_err());
    }

    #[test]
    fn the_routing_parser_leaves_these_keys_alone() {
        use crate::annotations::routing;
        for key in KEYS {
            assert!(routing::SERVICE_ANNOTATIONS_OWNED_ELSEWHERE.contains(&key));
            assert!(routing::NAMESPACE_ANNOTATIONS_OWNED_ELSEWHERE.contains(&key));
        }
        let service = ann(&[(ALLOW, "shop/web"), (AUTHORIZATION_MODE, "dry-run")]);
        assert!(routing::parse(&key(), &service, &Annotations::new()).is_ok());
        assert!(routing::validate_namespace("shop", &service).is_ok());
    }

    #[test]
    fn rule_ports_must_be_the_services_named_on_the_object_whose_value_it_is() {
        let key = ServiceKey::new("shop", "reviews");
        let check = |svc: &Annotations, ns: &Annotations| {
            let policy = parse(&key, svc, ns).unwrap();
            check_ports(&key, &[80, 9090], svc, ns, &policy)
        };
        let fits = ann(&[(ALLOW, "shop/web port=80; * port=9090")]);
        assert!(check(&fits, &Annotations::new()).is_empty());
        // The Service's own value.
        let own = ann(&[(DENY, "* port=8080,80,8080")]);
        let errors = check(&own, &Annotations::new());
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].object, "Service shop/reviews");
        assert_eq!(errors[0].annotation, DENY);
        assert_eq!(errors[0].value, "* port=8080,80,8080");
        assert!(
            errors[0]
                .message
                .starts_with("Service shop/reviews has no port 8080; accepted: "),
            "{}",
            errors[0].message
        );
        // The Namespace's value (the Service sets none): the Namespace is
        // named, with its value, and the Service it does not fit.
        let ns = ann(&[(ALLOW, "./* port=8443")]);
        let errors = check(&Annotations::new(), &ns);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].object, "Namespace shop");
        assert_eq!(errors[0].annotation, ALLOW);
        assert_eq!(errors[0].value, "./* port=8443");
        assert!(
            errors[0]
                .message
                .contains("Service shop/reviews has no port 8443"),
            "{}",
            errors[0].message
        );
    }
}
