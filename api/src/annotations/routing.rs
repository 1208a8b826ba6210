//! Traffic routing from annotations: timeouts, retries, traffic splits,
//! header and path routes, fault injection, load balancing, circuit breaking
//! and outlier detection on Services (with Namespace defaults), and the
//! egress scope of proxies on Namespaces and Pods.
//!
//! ```text
//! Service annotations ───┐  parse (pure: what the validating webhook and
//!                        │  the control plane's RoutingIndex both call)
//!                        ├─────────────────────────────────────────────> Routing
//! Namespace annotations ─┘  per annotation, the Service's value wins
//!                             └─ AnnotationError: object, annotation, value, accepted
//! Namespace / Pod meshd.io/egress ──> EgressRule ──resolve──> Egress
//! ```
//!
//! [`ANNOTATIONS`] is the one source for the documentation table
//! ([`markdown_table`]) and for the `accepted` part of every message.
//! Whether a split target or route backend exists is the control plane's
//! check (`meshd_controlplane::discovery::routing::check_references`): it
//! needs the mesh.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use super::workload::MTLS;
use crate::names::{DNS_LABEL, ServiceKey, is_dns_label};

/// Annotations as Kubernetes objects carry them.
pub type Annotations = BTreeMap<String, String>;

/// Every meshd annotation starts with this.
pub const PREFIX: &str = "meshd.io/";

pub const TIMEOUT: &str = "meshd.io/timeout";
pub const RETRIES: &str = "meshd.io/retries";
pub const RETRY_PER_TRY_TIMEOUT: &str = "meshd.io/retry-per-try-timeout";
pub const RETRY_ON: &str = "meshd.io/retry-on";
pub const TRAFFIC_SPLIT: &str = "meshd.io/traffic-split";
pub const ROUTES: &str = "meshd.io/routes";
pub const FAULT_DELAY: &str = "meshd.io/fault-delay";
pub const FAULT_ABORT: &str = "meshd.io/fault-abort";
pub const LOAD_BALANCER: &str = "meshd.io/load-balancer";
pub const MAX_CONNECTIONS: &str = "meshd.io/max-connections";
pub const MAX_PENDING_REQUESTS: &str = "meshd.io/max-pending-requests";
pub const MAX_REQUESTS: &str = "meshd.io/max-requests";
pub const MAX_RETRIES: &str = "meshd.io/max-retries";
pub const OUTLIER_CONSECUTIVE_5XX: &str = "meshd.io/outlier-consecutive-5xx";
pub const OUTLIER_INTERVAL: &str = "meshd.io/outlier-interval";
pub const OUTLIER_BASE_EJECTION_TIME: &str = "meshd.io/outlier-base-ejection-time";
pub const OUTLIER_MAX_EJECTION_PERCENT: &str = "meshd.io/outlier-max-ejection-percent";
pub const EGRESS: &str = "meshd.io/egress";

/// `meshd.io/*` annotations on a Namespace that other parts of meshd read
/// (so they are not "unknown" here): the mTLS mode (discovery).
pub const NAMESPACE_ANNOTATIONS_OWNED_ELSEWHERE: &[&str] =
    &[MTLS, AUTHZ[0], AUTHZ[1], AUTHZ[2], AUTHZ[3]];
/// `meshd.io/*` annotations on a Service that other parts of meshd read:
/// authorization (`super::authorization`, which checks them). Any other
/// `meshd.io/` annotation on a Service is a typo and reported.
pub const SERVICE_ANNOTATIONS_OWNED_ELSEWHERE: &[&str] = &AUTHZ;
/// The keys of `super::authorization::KEYS`, written out: that module
/// builds on this one's error type, so this one does not import it (a
/// test there checks they agree).
const AUTHZ: [&str; 4] = [
    "meshd.io/authorization",
    "meshd.io/allow",
    "meshd.io/deny",
    "meshd.io/authorization-mode",
];

/// The most retries a request may get.
pub const MAX_RETRY_ATTEMPTS: u32 = 10;
/// The longest duration any annotation accepts.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);
/// The largest weight, and the largest sum of weights, of a traffic split.
pub const MAX_WEIGHT: u32 = 1_000_000;

/// Where an annotation may be set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applies {
    /// On a Service, or on a Namespace as the default for its Services.
    ServiceOrNamespace,
    /// On a Service only (a namespace-wide split or route would send every
    /// service's traffic to the same backends).
    Service,
    /// On a Namespace (its pods' default) or a Pod.
    NamespaceOrPod,
}

impl Applies {
    pub fn text(self) -> &'static str {
        match self {
            Applies::ServiceOrNamespace => "Service, Namespace",
            Applies::Service => "Service",
            Applies::NamespaceOrPod => "Namespace, Pod",
        }
    }
}

/// One row of the annotation table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AnnotationDoc {
    pub name: &'static str,
    pub applies: Applies,
    /// What values are accepted; also the `accepted` part of errors.
    pub accepted: &'static str,
    /// What applies without it.
    pub default: &'static str,
    pub description: &'static str,
}

/// The duration syntax, as a literal so `concat!` can build on it.
macro_rules! duration_syntax {
    () => {
        "whole numbers with a unit ms, s, m or h, combinable (500ms, 5s, 1m30s), at most 24h"
    };
}
macro_rules! percent_syntax {
    () => {
        "a percentage 0-100 with up to 4 decimals"
    };
}

/// The routing annotations meshd reads.
pub const ANNOTATIONS: &[AnnotationDoc] = &[
    AnnotationDoc {
        name: TIMEOUT,
        applies: Applies::ServiceOrNamespace,
        accepted: concat!("a duration: ", duration_syntax!(), "; 0 for none"),
        default: "none (no deadline)",
        description: "The deadline of a request to the Service, retries included (a gRPC stream is one request: keep 0 for long-lived streams).",
    },
    AnnotationDoc {
        name: RETRIES,
        applies: Applies::ServiceOrNamespace,
        accepted: "a whole number 0-10",
        default: "0",
        description: "How many times a failed request is retried (on another endpoint when there is one).",
    },
    AnnotationDoc {
        name: RETRY_PER_TRY_TIMEOUT,
        applies: Applies::ServiceOrNamespace,
        accepted: concat!("a duration: ", duration_syntax!(), "; 0 for none"),
        default: "none (each try may use what is left of the timeout)",
        description: "The deadline of each try, when meshd.io/retries is above 0.",
    },
    AnnotationDoc {
        name: RETRY_ON,
        applies: Applies::ServiceOrNamespace,
        accepted: "a comma-separated list of 5xx, gateway-error, reset, connect-failure, retriable-4xx, refused-stream, retriable-status-codes and HTTP status codes 100-599 (a status code implies retriable-status-codes, which needs at least one)",
        default: "5xx,connect-failure,reset",
        description: "What failures are retried, when meshd.io/retries is above 0.",
    },
    AnnotationDoc {
        name: TRAFFIC_SPLIT,
        applies: Applies::Service,
        accepted: "a comma-separated list of service=weight (reviews-v1=90,reviews-v2=10): Services of the same namespace with the Service's HTTP ports, weights 0-1000000 each, their sum 1-1000000",
        default: "all traffic to the Service itself",
        description: "Splits requests to the Service's HTTP ports across these Services by weight.",
    },
    AnnotationDoc {
        name: ROUTES,
        applies: Applies::Service,
        accepted: r#"a JSON list of {"pathPrefix": "/api", "headers": {"end-user": "jason"}, "backend": "reviews-v2"}: pathPrefix (starting with /) or headers (exact values) or both, backend a Service of the same namespace with the Service's HTTP ports"#,
        default: "none",
        description: "Requests matching a rule (the first that matches) go to its backend; the others to the traffic split or the Service itself.",
    },
    AnnotationDoc {
        name: FAULT_DELAY,
        applies: Applies::ServiceOrNamespace,
        accepted: concat!(
            "duration@percent (5s@50): a duration above 0 (",
            duration_syntax!(),
            "), ",
            percent_syntax!()
        ),
        default: "none",
        description: "Delays this share of the requests to the Service (fault injection, by the proxies of the pods that receive them, so the caller's timeout counts the delay).",
    },
    AnnotationDoc {
        name: FAULT_ABORT,
        applies: Applies::ServiceOrNamespace,
        accepted: concat!(
            "status@percent (503@10): an HTTP status 200-599, ",
            percent_syntax!()
        ),
        default: "none",
        description: "Answers this share of the requests to the Service with the status, without calling the app (fault injection, by the proxies of the pods that receive them, so the caller's retries apply).",
    },
    AnnotationDoc {
        name: LOAD_BALANCER,
        applies: Applies::ServiceOrNamespace,
        accepted: "round-robin, least-request, random, ring-hash:<header> (an HTTP header name)",
        default: "round-robin",
        description: "How the caller picks an endpoint; ring-hash sends requests with the same header value to the same endpoint (HTTP ports; TCP ports use round-robin).",
    },
    AnnotationDoc {
        name: MAX_CONNECTIONS,
        applies: Applies::ServiceOrNamespace,
        accepted: "a whole number 1-4294967295",
        default: "Envoy's (1024)",
        description: "Circuit breaking: the most connections each caller's proxy opens to the Service.",
    },
    AnnotationDoc {
        name: MAX_PENDING_REQUESTS,
        applies: Applies::ServiceOrNamespace,
        accepted: "a whole number 0-4294967295",
        default: "Envoy's (1024)",
        description: "Circuit breaking: the most requests waiting for a connection; more fail at once with 503.",
    },
    AnnotationDoc {
        name: MAX_REQUESTS,
        applies: Applies::ServiceOrNamespace,
        accepted: "a whole number 1-4294967295",
        default: "Envoy's (1024)",
        description: "Circuit breaking: the most requests in flight to the Service from each caller's proxy.",
    },
    AnnotationDoc {
        name: MAX_RETRIES,
        applies: Applies::ServiceOrNamespace,
        accepted: "a whole number 0-4294967295",
        default: "Envoy's (3)",
        description: "Circuit breaking: the most retries in flight to the Service from each caller's proxy.",
    },
    AnnotationDoc {
        name: OUTLIER_CONSECUTIVE_5XX,
        applies: Applies::ServiceOrNamespace,
        accepted: "a whole number 1-4294967295",
        default: "5 when any outlier annotation is set; no outlier detection when none is",
        description: "Outlier detection: consecutive 5xx responses (or connection failures) that eject an endpoint.",
    },
    AnnotationDoc {
        name: OUTLIER_INTERVAL,
        applies: Applies::ServiceOrNamespace,
        accepted: concat!("a duration above 0: ", duration_syntax!()),
        default: "10s when any outlier annotation is set",
        description: "Outlier detection: how often endpoints are evaluated.",
    },
    AnnotationDoc {
        name: OUTLIER_BASE_EJECTION_TIME,
        applies: Applies::ServiceOrNamespace,
        accepted: concat!("a duration above 0: ", duration_syntax!()),
        default: "30s when any outlier annotation is set",
        description: "Outlier detection: how long an endpoint stays ejected (times the number of ejections).",
    },
    AnnotationDoc {
        name: OUTLIER_MAX_EJECTION_PERCENT,
        applies: Applies::ServiceOrNamespace,
        accepted: "a whole number 0-100",
        default: "10 when any outlier annotation is set",
        description: "Outlier detection: the largest share of the Service's endpoints ejected at once.",
    },
    AnnotationDoc {
        name: EGRESS,
        applies: Applies::NamespaceOrPod,
        accepted: "a comma-separated list of namespace/service, each part a name or *, the namespace also . for the proxy's own (./*, shop/*, */reviews)",
        default: "every service in the mesh",
        description: "The services the proxies may call through the mesh: they get configuration for these only (the Pod's value wins over its Namespace's). Others are reached as outside the mesh.",
    },
];

/// The row of a known annotation.
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

/// A value that is not accepted, or an annotation that is not known.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, thiserror::Error,
)]
#[error("{object}: {annotation}: {message}")]
pub struct AnnotationError {
    /// Whether the value was refused (the last good one stays) or is in
    /// force with a warning.
    pub severity: Severity,
    /// `Service shop/reviews`, `Namespace shop` or `Pod shop/web-0`.
    pub object: String,
    pub annotation: String,
    pub value: String,
    /// What is wrong, and what is accepted.
    pub message: String,
}

/// What became of an annotation's value that has a problem.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Not accepted: the object's last good value stays in force.
    #[default]
    Rejected,
    /// In force, but likely not doing what its author meant.
    Warning,
}

impl AnnotationError {
    /// The object as (kind, namespace, name): `Namespace shop` is
    /// `("Namespace", None, "shop")`. `None` for a string this module did
    /// not write.
    pub fn object_ref(&self) -> Option<(&str, Option<&str>, &str)> {
        match self.object.split_once(' ')? {
            ("Namespace", name) if !name.contains('/') => Some(("Namespace", None, name)),
            (kind @ ("Service" | "Pod"), key) => {
                let (namespace, name) = key.split_once('/')?;
                Some((kind, Some(namespace), name))
            }
            _ => None,
        }
    }
}

/// A share of requests, in millionths (Envoy's finest denominator).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Percent {
    pub millionths: u32,
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.millionths / 10_000;
        let fraction = self.millionths % 10_000;
        if fraction == 0 {
            write!(f, "{whole}%")
        } else {
            let fraction = format!("{fraction:04}");
            write!(f, "{whole}.{}%", fraction.trim_end_matches('0'))
        }
    }
}

/// An Envoy `retry_on` condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RetryOn {
    Status5xx,
    GatewayError,
    Reset,
    ConnectFailure,
    Retriable4xx,
    RefusedStream,
    RetriableStatusCodes,
}

impl RetryOn {
    pub const ALL: [RetryOn; 7] = [
        RetryOn::Status5xx,
        RetryOn::GatewayError,
        RetryOn::Reset,
        RetryOn::ConnectFailure,
        RetryOn::Retriable4xx,
        RetryOn::RefusedStream,
        RetryOn::RetriableStatusCodes,
    ];
    /// Used when retries are on and `meshd.io/retry-on` is not set.
    pub const DEFAULT: [RetryOn; 3] = [RetryOn::Status5xx, RetryOn::ConnectFailure, RetryOn::Reset];

    /// The name, as Envoy's `retry_on` and the annotation spell it.
    pub fn name(self) -> &'static str {
        match self {
            RetryOn::Status5xx => "5xx",
            RetryOn::GatewayError => "gateway-error",
            RetryOn::Reset => "reset",
            RetryOn::ConnectFailure => "connect-failure",
            RetryOn::Retriable4xx => "retriable-4xx",
            RetryOn::RefusedStream => "refused-stream",
            RetryOn::RetriableStatusCodes => "retriable-status-codes",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Retries {
    /// 1-10.
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    pub on: Vec<RetryOn>,
    /// With [`RetryOn::RetriableStatusCodes`]: the statuses retried.
    pub status_codes: Vec<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WeightedTarget {
    /// A service of the same namespace.
    pub service: String,
    pub weight: u32,
}

/// One `meshd.io/routes` rule: requests matching every criterion go to
/// `backend`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RouteRule {
    pub path_prefix: Option<String>,
    /// Exact header values, by lowercase header name.
    pub headers: Vec<(String, String)>,
    /// A service of the same namespace.
    pub backend: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FaultDelay {
    pub delay: Duration,
    pub percent: Percent,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FaultAbort {
    /// 200-599.
    pub status: u16,
    pub percent: Percent,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum LoadBalancer {
    #[default]
    RoundRobin,
    LeastRequest,
    Random,
    /// Consistent hashing on a request header (lowercase).
    RingHash {
        header: String,
    },
}

impl LoadBalancer {
    /// The header requests are hashed on, with ring hash.
    pub fn hash_header(&self) -> Option<&str> {
        match self {
            LoadBalancer::RingHash { header } => Some(header),
            _ => None,
        }
    }
}

/// Circuit breaking thresholds; `None` leaves Envoy's default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConnectionLimits {
    pub max_connections: Option<u32>,
    pub max_pending_requests: Option<u32>,
    pub max_requests: Option<u32>,
    pub max_retries: Option<u32>,
}

impl ConnectionLimits {
    pub fn is_default(&self) -> bool {
        *self == ConnectionLimits::default()
    }
}

/// Outlier detection; the fields left `None` take Envoy's defaults.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct OutlierDetection {
    pub consecutive_5xx: Option<u32>,
    pub interval: Option<Duration>,
    pub base_ejection_time: Option<Duration>,
    pub max_ejection_percent: Option<u32>,
}

/// How callers reach one service: what its annotations (and its
/// namespace's defaults) ask for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Routing {
    /// `Duration::ZERO`: no deadline.
    pub timeout: Duration,
    pub retries: Option<Retries>,
    /// Empty: everything to the service itself.
    pub split: Vec<WeightedTarget>,
    pub routes: Vec<RouteRule>,
    pub fault_delay: Option<FaultDelay>,
    pub fault_abort: Option<FaultAbort>,
    pub load_balancer: LoadBalancer,
    pub limits: ConnectionLimits,
    pub outlier: Option<OutlierDetection>,
}

impl Routing {
    /// What a service without routing annotations gets.
    pub const DEFAULT: Routing = Routing {
        timeout: Duration::ZERO,
        retries: None,
        split: Vec::new(),
        routes: Vec::new(),
        fault_delay: None,
        fault_abort: None,
        load_balancer: LoadBalancer::RoundRobin,
        limits: ConnectionLimits {
            max_connections: None,
            max_pending_requests: None,
            max_requests: None,
            max_retries: None,
        },
        outlier: None,
    };

    /// The other services of the namespace this routing sends requests to
    /// (split targets, then route backends), each once.
    pub fn targets(&self) -> Vec<&str> {
        let mut seen = BTreeSet::new();
        self.split
            .iter()
            .map(|t| t.service.as_str())
            .chain(self.routes.iter().map(|r| r.backend.as_str()))
            .filter(|s| seen.insert(*s))
            .collect()
    }

    pub fn has_fault(&self) -> bool {
        self.fault_delay.is_some() || self.fault_abort.is_some()
    }
}

impl Default for Routing {
    fn default() -> Self {
        Routing::DEFAULT
    }
}

// --- parsing -------------------------------------------------------------

/// One object's annotations, as a layer of the lookup.
struct Layer<'a> {
    object: String,
    annotations: &'a Annotations,
}

/// Looks annotations up in the Service's layer, then (for annotations a
/// Namespace may default) the Namespace's, collecting errors.
struct Parser<'a> {
    service: Option<Layer<'a>>,
    namespace: Option<Layer<'a>>,
    errors: Vec<AnnotationError>,
}

impl<'a> Parser<'a> {
    /// The value in force for `name` and the object it comes from.
    fn lookup(&self, name: &str) -> Option<(&Layer<'a>, &'a str)> {
        let applies = doc(name).map_or(Applies::Service, |d| d.applies);
        let layers = [
            self.service.as_ref(),
            self.namespace
                .as_ref()
                .filter(|_| applies == Applies::ServiceOrNamespace),
        ];
        layers
            .into_iter()
            .flatten()
            .find_map(|l| Some((l, l.annotations.get(name)?.as_str())))
    }

    /// Parses the value in force for `name`; a value that does not parse is
    /// recorded as an error (and gives `None`).
    fn get<T>(
        &mut self,
        name: &'static str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let (layer, value) = self.lookup(name)?;
        match parse(value.trim()) {
            Ok(v) => Some(v),
            Err(detail) => {
                let error = AnnotationError {
                    severity: Severity::Rejected,
                    object: layer.object.clone(),
                    annotation: name.to_string(),
                    value: value.to_string(),
                    message: format!("{detail}; accepted: {}", accepted(name)),
                };
                self.errors.push(error);
                None
            }
        }
    }

    fn routing(&mut self) -> Routing {
        let timeout = self.get(TIMEOUT, duration).unwrap_or_default();
        let attempts = self
            .get(RETRIES, |v| whole(v, 0, MAX_RETRY_ATTEMPTS))
            .unwrap_or(0);
        let per_try_timeout = self
            .get(RETRY_PER_TRY_TIMEOUT, duration)
            .filter(|d| !d.is_zero());
        let retry_on = self.get(RETRY_ON, retry_conditions);
        let retries = (attempts > 0).then(|| {
            let (on, status_codes) =
                retry_on.unwrap_or_else(|| (RetryOn::DEFAULT.to_vec(), vec![]));
            Retries {
                attempts,
                per_try_timeout,
                on,
                status_codes,
            }
        });
        let split = self.get(TRAFFIC_SPLIT, traffic_split).unwrap_or_default();
        let routes = self.get(ROUTES, route_rules).unwrap_or_default();
        let fault_delay = self.get(FAULT_DELAY, |v| {
            let (delay, percent) = at_percent(v, positive_duration)?;
            Ok(FaultDelay { delay, percent })
        });
        let fault_abort = self.get(FAULT_ABORT, |v| {
            let (status, percent) = at_percent(v, |s| {
                let n = whole(s, 200, 599)?;
                u16::try_from(n).map_err(|_| format!("`{s}` is out of range"))
            })?;
            Ok(FaultAbort { status, percent })
        });
        let load_balancer = self.get(LOAD_BALANCER, load_balancer).unwrap_or_default();
        let limits = ConnectionLimits {
            max_connections: self.get(MAX_CONNECTIONS, |v| whole(v, 1, u32::MAX)),
            max_pending_requests: self.get(MAX_PENDING_REQUESTS, |v| whole(v, 0, u32::MAX)),
            max_requests: self.get(MAX_REQUESTS, |v| whole(v, 1, u32::MAX)),
            max_retries: self.get(MAX_RETRIES, |v| whole(v, 0, u32::MAX)),
        };
        let outlier = OutlierDetection {
            consecutive_5xx: self.get(OUTLIER_CONSECUTIVE_5XX, |v| whole(v, 1, u32::MAX)),
            interval: self.get(OUTLIER_INTERVAL, positive_duration),
            base_ejection_time: self.get(OUTLIER_BASE_EJECTION_TIME, positive_duration),
            max_ejection_percent: self.get(OUTLIER_MAX_EJECTION_PERCENT, |v| whole(v, 0, 100)),
        };
        Routing {
            timeout,
            retries,
            split,
            routes,
            fault_delay,
            fault_abort,
            load_balancer,
            limits,
            outlier: (outlier != OutlierDetection::default()).then_some(outlier),
        }
    }

    /// Reports `meshd.io/*` annotations of `layer` that are not read here,
    /// nor by another part of meshd, on objects of that kind.
    fn unknown(&mut self, kind: Kind, annotations: &Annotations, object: &str) {
        for (name, value) in annotations {
            if !name.starts_with(PREFIX) || kind.owned_elsewhere().contains(&name.as_str()) {
                continue;
            }
            let message = match doc(name) {
                Some(d) if kind.accepts(d.applies) => continue,
                Some(d) => format!(
                    "is not accepted on a {}, only on: {}",
                    kind.name(),
                    d.applies.text()
                ),
                None => format!(
                    "is not a meshd annotation; accepted on a {}: {}",
                    kind.name(),
                    kind.known()
                ),
            };
            self.errors.push(AnnotationError {
                severity: Severity::Rejected,
                object: object.to_string(),
                annotation: name.clone(),
                value: value.clone(),
                message,
            });
        }
    }

    fn finish<T>(self, value: T) -> Result<T, Vec<AnnotationError>> {
        if self.errors.is_empty() {
            Ok(value)
        } else {
            Err(self.errors)
        }
    }
}

/// The kinds of object routing annotations are read from.
#[derive(Clone, Copy)]
enum Kind {
    Service,
    Namespace,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::Namespace => "Namespace",
        }
    }

    fn accepts(self, applies: Applies) -> bool {
        match self {
            Kind::Service => matches!(applies, Applies::Service | Applies::ServiceOrNamespace),
            Kind::Namespace => {
                matches!(
                    applies,
                    Applies::ServiceOrNamespace | Applies::NamespaceOrPod
                )
            }
        }
    }

    fn owned_elsewhere(self) -> &'static [&'static str] {
        match self {
            Kind::Service => SERVICE_ANNOTATIONS_OWNED_ELSEWHERE,
            Kind::Namespace => NAMESPACE_ANNOTATIONS_OWNED_ELSEWHERE,
        }
    }

    fn known(self) -> String {
        ANNOTATIONS
            .iter()
            .filter(|d| self.accepts(d.applies))
            .map(|d| d.name)
            .chain(self.owned_elsewhere().iter().copied())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The routing of one service from its own annotations and its namespace's
/// (per annotation, the service's own value wins). Pure: a validating
/// webhook can call it on the object under review.
///
/// Errors cover the service's own annotations (invalid values, unknown
/// `meshd.io/` names) and the namespace values in force for it. Whether
/// split targets and route backends exist is a question for the mesh:
/// [`check_references`].
pub fn parse(
    service: &ServiceKey,
    service_annotations: &Annotations,
    namespace_annotations: &Annotations,
) -> Result<Routing, Vec<AnnotationError>> {
    let object = format!("Service {service}");
    let mut parser = Parser {
        service: Some(Layer {
            object: object.clone(),
            annotations: service_annotations,
        }),
        namespace: Some(Layer {
            object: format!("Namespace {}", service.namespace),
            annotations: namespace_annotations,
        }),
        errors: Vec::new(),
    };
    parser.unknown(Kind::Service, service_annotations, &object);
    let routing = parser.routing();
    parser.finish(routing)
}

/// Checks a Namespace's routing defaults and egress scope on their own
/// (what a validating webhook for Namespaces calls).
pub fn validate_namespace(
    namespace: &str,
    annotations: &Annotations,
) -> Result<(), Vec<AnnotationError>> {
    let object = format!("Namespace {namespace}");
    let mut parser = Parser {
        service: None,
        namespace: Some(Layer {
            object: object.clone(),
            annotations,
        }),
        errors: Vec::new(),
    };
    parser.unknown(Kind::Namespace, annotations, &object);
    parser.routing();
    if let Some(value) = annotations.get(EGRESS)
        && let Err(e) = EgressRule::parse(&object, value)
    {
        parser.errors.push(e);
    }
    parser.finish(())
}

/// A Pod's `meshd.io/egress`, if set. (Its other annotations belong to the
/// injector, which validates them.)
pub fn pod_egress(
    namespace: &str,
    pod: &str,
    annotations: &Annotations,
) -> Result<Option<EgressRule>, AnnotationError> {
    annotations
        .get(EGRESS)
        .map(|v| EgressRule::parse(&format!("Pod {namespace}/{pod}"), v))
        .transpose()
}

fn whole(value: &str, min: u32, max: u32) -> Result<u32, String> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("`{value}` is not a whole number"));
    }
    match value.parse::<u32>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!("`{value}` is out of range")),
    }
}

/// `500ms`, `5s`, `1m30s`, `2h`, or `0`.
pub fn duration(value: &str) -> Result<Duration, String> {
    let bad = || format!("`{value}` is not a duration");
    if value == "0" {
        return Ok(Duration::ZERO);
    }
    if value.is_empty() {
        return Err(bad());
    }
    let mut rest = value;
    let mut total_ms: u64 = 0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad());
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("`{value}` is too long"))?;
        rest = &rest[digits..];
        let (unit_ms, unit_len) = if rest.starts_with("ms") {
            (1, 2)
        } else if rest.starts_with('s') {
            (1_000, 1)
        } else if rest.starts_with('m') {
            (60_000, 1)
        } else if rest.starts_with('h') {
            (3_600_000, 1)
        } else {
            return Err(format!("`{value}` needs a unit after each number"));
        };
        rest = &rest[unit_len..];
        total_ms = number
            .checked_mul(unit_ms)
            .and_then(|ms| total_ms.checked_add(ms))
            .ok_or_else(|| format!("`{value}` is too long"))?;
    }
    let total = Duration::from_millis(total_ms);
    if total > MAX_DURATION {
        return Err(format!("`{value}` is too long"));
    }
    Ok(total)
}

fn positive_duration(value: &str) -> Result<Duration, String> {
    match duration(value)? {
        d if d.is_zero() => Err(format!("`{value}` must be above 0")),
        d => Ok(d),
    }
}

/// `50`, `12.5`, `0.0001`: 0-100 with up to 4 decimals.
pub fn percent(value: &str) -> Result<Percent, String> {
    let bad = || format!("`{value}` is not a percentage");
    let (whole_part, fraction) = value.split_once('.').unwrap_or((value, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole_part.is_empty()
        || !digits(whole_part)
        || !digits(fraction)
        || (value.contains('.') && fraction.is_empty())
    {
        return Err(bad());
    }
    if fraction.len() > 4 {
        return Err(format!("`{value}` has more than 4 decimals"));
    }
    let whole_part: u32 = whole_part
        .parse()
        .map_err(|_| format!("`{value}` is above 100"))?;
    let fraction: u32 = format!("{fraction:0<4}").parse().map_err(|_| bad())?;
    let millionths = whole_part
        .checked_mul(10_000)
        .and_then(|w| w.checked_add(fraction))
        .filter(|m| *m <= 1_000_000)
        .ok_or_else(|| format!("`{value}` is above 100"))?;
    Ok(Percent { millionths })
}

/// `<thing>@<percent>`.
fn at_percent<T>(
    value: &str,
    thing: impl FnOnce(&str) -> Result<T, String>,
) -> Result<(T, Percent), String> {
    let (left, right) = value
        .split_once('@')
        .ok_or_else(|| format!("`{value}` has no @percent"))?;
    Ok((thing(left.trim())?, percent(right.trim())?))
}

fn retry_conditions(value: &str) -> Result<(Vec<RetryOn>, Vec<u16>), String> {
    let mut on = Vec::new();
    let mut codes = Vec::new();
    for item in value.split(',').map(str::trim) {
        if item.is_empty() {
            return Err(format!("`{value}` has an empty item"));
        }
        if let Some(condition) = RetryOn::ALL.into_iter().find(|c| c.name() == item) {
            if !on.contains(&condition) {
                on.push(condition);
            }
        } else if item.bytes().all(|b| b.is_ascii_digit()) {
            let code = whole(item, 100, 599)
                .map_err(|_| format!("`{item}` is not an HTTP status 100-599"))?;
            let code = u16::try_from(code).map_err(|_| format!("`{item}` is out of range"))?;
            if !codes.contains(&code) {
                codes.push(code);
            }
        } else {
            return Err(format!("`{item}` is not a retry condition"));
        }
    }
    let listed = on.contains(&RetryOn::RetriableStatusCodes);
    match (listed, codes.is_empty()) {
        (true, true) => {
            return Err(
                "retriable-status-codes needs at least one status code in the list".to_string(),
            );
        }
        (false, false) => on.push(RetryOn::RetriableStatusCodes),
        _ => {}
    }
    Ok((on, codes))
}

fn service_name(name: &str) -> Result<(), String> {
    if name.is_empty() || !is_dns_label(name) {
        return Err(format!("`{name}` is not a service name ({DNS_LABEL})"));
    }
    Ok(())
}

fn traffic_split(value: &str) -> Result<Vec<WeightedTarget>, String> {
    let mut targets: Vec<WeightedTarget> = Vec::new();
    let mut sum: u64 = 0;
    for item in value.split(',').map(str::trim) {
        let (service, weight) = item
            .split_once('=')
            .ok_or_else(|| format!("`{item}` is not service=weight"))?;
        let service = service.trim();
        let weight = weight.trim();
        service_name(service)?;
        let weight = whole(weight, 0, MAX_WEIGHT)
            .map_err(|_| format!("the weight of `{service}` (`{weight}`) is not 0-{MAX_WEIGHT}"))?;
        if targets.iter().any(|t| t.service == service) {
            return Err(format!("`{service}` is listed twice"));
        }
        sum += u64::from(weight);
        targets.push(WeightedTarget {
            service: service.to_string(),
            weight,
        });
    }
    if sum == 0 {
        return Err("the weights add up to 0".to_string());
    }
    if sum > u64::from(MAX_WEIGHT) {
        return Err(format!("the weights add up to {sum}, above {MAX_WEIGHT}"));
    }
    Ok(targets)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawRule {
    #[serde(default)]
    path_prefix: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    backend: String,
}

/// RFC 9110 token characters: what a header name may be made of.
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn route_rules(value: &str) -> Result<Vec<RouteRule>, String> {
    let raw: Vec<RawRule> =
        serde_json::from_str(value).map_err(|e| format!("not a valid rule list: {e}"))?;
    let mut rules = Vec::with_capacity(raw.len());
    for (i, rule) in raw.into_iter().enumerate() {
        let at = |m: String| format!("rule {i}: {m}");
        service_name(&rule.backend).map_err(at)?;
        if let Some(prefix) = &rule.path_prefix
            && (!prefix.starts_with('/') || prefix.chars().any(|c| c.is_control() || c == ' '))
        {
            return Err(at(format!(
                "pathPrefix `{prefix}` must start with / and hold no spaces or control characters"
            )));
        }
        if rule.path_prefix.is_none() && rule.headers.is_empty() {
            return Err(at(
                "matches every request (give pathPrefix or headers; to send everything elsewhere use meshd.io/traffic-split)".to_string(),
            ));
        }
        let mut headers = Vec::with_capacity(rule.headers.len());
        for (name, header_value) in rule.headers {
            if !is_header_name(&name) {
                return Err(at(format!("`{name}` is not an HTTP header name")));
            }
            if header_value.chars().any(char::is_control) {
                return Err(at(format!(
                    "the value of header `{name}` holds control characters"
                )));
            }
            headers.push((name.to_ascii_lowercase(), header_value));
        }
        headers.sort();
        headers.dedup_by(|a, b| a.0 == b.0);
        rules.push(RouteRule {
            path_prefix: rule.path_prefix,
            headers,
            backend: rule.backend,
        });
    }
    Ok(rules)
}

fn load_balancer(value: &str) -> Result<LoadBalancer, String> {
    match value {
        "round-robin" => Ok(LoadBalancer::RoundRobin),
        "least-request" => Ok(LoadBalancer::LeastRequest),
        "random" => Ok(LoadBalancer::Random),
        _ => match value.strip_prefix("ring-hash:") {
            Some(header) if is_header_name(header.trim()) => Ok(LoadBalancer::RingHash {
                header: header.trim().to_ascii_lowercase(),
            }),
            Some(header) => Err(format!("`{header}` is not an HTTP header name")),
            None => Err(format!("`{value}` is not a load balancer")),
        },
    }
}

// --- egress --------------------------------------------------------------

/// One part of an egress host: a name or `*`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Segment {
    Any,
    Name(String),
}

impl Segment {
    fn matches(&self, name: &str) -> bool {
        match self {
            Segment::Any => true,
            Segment::Name(n) => n == name,
        }
    }
}

/// `meshd.io/egress` as written: `.` (the proxy's own namespace) is
/// resolved per proxy by [`EgressRule::resolve`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EgressRule {
    /// (namespace, service); a namespace of `None` is the proxy's own.
    hosts: Vec<(Option<Segment>, Segment)>,
}

impl EgressRule {
    pub fn parse(object: &str, value: &str) -> Result<EgressRule, AnnotationError> {
        let error = |detail: String| AnnotationError {
            severity: Severity::Rejected,
            object: object.to_string(),
            annotation: EGRESS.to_string(),
            value: value.to_string(),
            message: format!("{detail}; accepted: {}", accepted(EGRESS)),
        };
        let segment = |s: &str| -> Result<Segment, String> {
            if s == "*" {
                Ok(Segment::Any)
            } else if !s.is_empty() && is_dns_label(s) {
                Ok(Segment::Name(s.to_string()))
            } else {
                Err(format!("`{s}` is not a name or *"))
            }
        };
        let mut hosts = Vec::new();
        for item in value.split(',').map(str::trim) {
            let (namespace, service) = item
                .split_once('/')
                .ok_or_else(|| error(format!("`{item}` is not namespace/service")))?;
            let namespace = match namespace {
                "." => None,
                other => Some(segment(other).map_err(error)?),
            };
            hosts.push((namespace, segment(service).map_err(error)?));
        }
        Ok(EgressRule { hosts })
    }

    /// The scope for a proxy in `namespace`; `None` when it allows every
    /// service (`*/*`), so such proxies share the mesh-wide configuration.
    pub fn resolve(&self, namespace: &str) -> Option<Egress> {
        let hosts: BTreeSet<(Segment, Segment)> = self
            .hosts
            .iter()
            .map(|(ns, svc)| {
                let ns = ns
                    .clone()
                    .unwrap_or_else(|| Segment::Name(namespace.to_string()));
                (ns, svc.clone())
            })
            .collect();
        if hosts.contains(&(Segment::Any, Segment::Any)) {
            return None;
        }
        Some(Egress { hosts })
    }
}

/// The services a proxy may call, normalised (sorted, duplicates removed,
/// the own namespace resolved): proxies with equal scopes share their
/// translated configuration.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Egress {
    hosts: BTreeSet<(Segment, Segment)>,
}

impl Egress {
    pub fn allows(&self, service: &ServiceKey) -> bool {
        self.hosts
            .iter()
            .any(|(ns, svc)| ns.matches(&service.namespace) && svc.matches(&service.name))
    }
}

impl fmt::Display for Egress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let part = |s: &Segment| match s {
            Segment::Any => "*".to_string(),
            Segment::Name(n) => n.clone(),
        };
        let hosts: Vec<String> = self
            .hosts
            .iter()
            .map(|(ns, svc)| format!("{}/{}", part(ns), part(svc)))
            .collect();
        f.write_str(&hosts.join(","))
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

    fn ok(pairs: &[(&str, &str)]) -> Routing {
        parse(&key(), &ann(pairs), &Annotations::new()).unwrap()
    }

    /// The one error `pairs` (on the Service) produce.
    fn err(pairs: &[(&str, &str)]) -> AnnotationError {
        let mut errors = parse(&key(), &ann(pairs), &Annotations::new()).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        errors.remove(0)
    }

    #[track_caller]
    fn assert_rejected(annotation: &str, value: &str, detail: &str) {
        let e = err(&[(annotation, value)]);
        assert_eq!(e.object, "Service shop/reviews");
        assert_eq!(e.annotation, annotation);
        assert_eq!(e.value, value);
        assert!(e.message.contains(detail), "{value}: {}", e.message);
        assert!(
            e.message
                .ends_with(&format!("accepted: {}", accepted(annotation))),
            "{}",
            e.message
        );
    }

    #[test]
    fn no_annotations_is_the_default_routing() {
        assert_eq!(ok(&[]), Routing::DEFAULT);
        assert_eq!(ok(&[("example.com/other", "x")]), Routing::DEFAULT);
    }

    #[test]
    fn durations() {
        assert_eq!(duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(duration("0"), Ok(Duration::ZERO));
        assert_eq!(duration("0s"), Ok(Duration::ZERO));
        for bad in [
            "",
            "5",
            "s",
            "5x",
            "-1s",
            "1.5s",
            "5 s",
            "25h",
            "99999999999999999999s",
        ] {
            assert!(duration(bad).is_err(), "{bad}");
        }
        assert_eq!(ok(&[(TIMEOUT, "1m")]).timeout, Duration::from_secs(60));
        assert_eq!(ok(&[(TIMEOUT, " 5s ")]).timeout, Duration::from_secs(5));
        assert_eq!(ok(&[(TIMEOUT, "0")]).timeout, Duration::ZERO);
        assert_rejected(TIMEOUT, "5 seconds", "needs a unit");
        assert_rejected(TIMEOUT, "fast", "is not a duration");
        assert_rejected(TIMEOUT, "48h", "too long");
    }

    #[test]
    fn percentages() {
        assert_eq!(percent("50").unwrap().millionths, 500_000);
        assert_eq!(percent("12.5").unwrap().millionths, 125_000);
        assert_eq!(percent("0.0001").unwrap().millionths, 1);
        assert_eq!(percent("100").unwrap().millionths, 1_000_000);
        assert_eq!(percent("100.0").unwrap().millionths, 1_000_000);
        assert_eq!(percent("0").unwrap().millionths, 0);
        assert_eq!(percent("12.5").unwrap().to_string(), "12.5%");
        for bad in [
            "",
            "100.01",
            "101",
            "-1",
            "1e2",
            ".5",
            "5.",
            "0.00001",
            "5%",
            "99999999999",
        ] {
            assert!(percent(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn retries() {
        let r = ok(&[(RETRIES, "3")]);
        let retries = r.retries.unwrap();
        assert_eq!(retries.attempts, 3);
        assert_eq!(retries.on, RetryOn::DEFAULT);
        assert_eq!(retries.per_try_timeout, None);

        let r = ok(&[
            (RETRIES, "10"),
            (RETRY_PER_TRY_TIMEOUT, "250ms"),
            (RETRY_ON, "gateway-error, reset,503,504,503"),
        ]);
        let retries = r.retries.unwrap();
        assert_eq!(retries.per_try_timeout, Some(Duration::from_millis(250)));
        assert_eq!(
            retries.on,
            [
                RetryOn::GatewayError,
                RetryOn::Reset,
                RetryOn::RetriableStatusCodes
            ]
        );
        assert_eq!(retries.status_codes, [503, 504]);
        // Zero retries: no policy, whatever else is set.
        assert_eq!(ok(&[(RETRIES, "0"), (RETRY_ON, "5xx")]).retries, None);
        assert_eq!(ok(&[(RETRY_ON, "5xx")]).retries, None);

        assert_rejected(RETRIES, "11", "out of range");
        assert_rejected(RETRIES, "three", "not a whole number");
        assert_rejected(RETRIES, "-1", "not a whole number");
        assert_rejected(RETRY_PER_TRY_TIMEOUT, "1", "needs a unit");
        assert_rejected(RETRY_ON, "5xx,teapot", "`teapot` is not a retry condition");
        assert_rejected(RETRY_ON, "5xx,,reset", "empty item");
        assert_rejected(RETRY_ON, "600", "not an HTTP status");
        assert_rejected(
            RETRY_ON,
            "retriable-status-codes",
            "needs at least one status code",
        );
    }

    #[test]
    fn traffic_splits() {
        let r = ok(&[(TRAFFIC_SPLIT, "reviews-v1=90, reviews-v2 = 10,reviews-v3=0")]);
        assert_eq!(
            r.split,
            [
                WeightedTarget {
                    service: "reviews-v1".into(),
                    weight: 90
                },
                WeightedTarget {
                    service: "reviews-v2".into(),
                    weight: 10
                },
                WeightedTarget {
                    service: "reviews-v3".into(),
                    weight: 0
                },
            ]
        );
        assert_eq!(r.targets(), ["reviews-v1", "reviews-v2", "reviews-v3"]);
        assert_rejected(TRAFFIC_SPLIT, "reviews-v1=0", "add up to 0");
        assert_rejected(TRAFFIC_SPLIT, "reviews-v1", "is not service=weight");
        assert_rejected(TRAFFIC_SPLIT, "reviews-v1=-5", "is not 0-1000000");
        assert_rejected(TRAFFIC_SPLIT, "reviews-v1=ten", "is not 0-1000000");
        assert_rejected(TRAFFIC_SPLIT, "Reviews=1", "is not a service name");
        assert_rejected(TRAFFIC_SPLIT, "a=1,a=2", "listed twice");
        assert_rejected(TRAFFIC_SPLIT, "a=1000000,b=1", "above 1000000");
        assert_rejected(TRAFFIC_SPLIT, "", "is not service=weight");
    }

    #[test]
    fn route_rules_parse_and_keep_their_order() {
        let r = ok(&[(
            ROUTES,
            r#"[{"pathPrefix":"/api","headers":{"End-User":"jason"},"backend":"reviews-v2"},
                {"headers":{"x-canary":"1"},"backend":"reviews-v3"}]"#,
        )]);
        assert_eq!(
            r.routes,
            [
                RouteRule {
                    path_prefix: Some("/api".into()),
                    headers: vec![("end-user".into(), "jason".into())],
                    backend: "reviews-v2".into(),
                },
                RouteRule {
                    path_prefix: None,
                    headers: vec![("x-canary".into(), "1".into())],
                    backend: "reviews-v3".into(),
                },
            ]
        );
        assert_rejected(ROUTES, "not json", "not a valid rule list");
        assert_rejected(
            ROUTES,
            r#"[{"prefix":"/api","backend":"b"}]"#,
            "unknown field `prefix`",
        );
        assert_rejected(
            ROUTES,
            r#"[{"pathPrefix":"/api"}]"#,
            "missing field `backend`",
        );
        assert_rejected(
            ROUTES,
            r#"[{"pathPrefix":"api","backend":"b"}]"#,
            "rule 0: pathPrefix `api` must start with /",
        );
        assert_rejected(
            ROUTES,
            r#"[{"pathPrefix":"/","backend":"b"},{"backend":"b"}]"#,
            "rule 1: matches every request",
        );
        assert_rejected(
            ROUTES,
            r#"[{"headers":{"bad header":"x"},"backend":"b"}]"#,
            "not an HTTP header name",
        );
        assert_rejected(
            ROUTES,
            r#"[{"pathPrefix":"/a","backend":"B_2"}]"#,
            "`B_2` is not a service name",
        );
        assert_rejected(ROUTES, r#"{"backend":"b"}"#, "not a valid rule list");
    }

    #[test]
    fn faults() {
        let r = ok(&[(FAULT_DELAY, "5s@50"), (FAULT_ABORT, "503@12.5")]);
        assert_eq!(
            r.fault_delay,
            Some(FaultDelay {
                delay: Duration::from_secs(5),
                percent: Percent {
                    millionths: 500_000
                }
            })
        );
        assert_eq!(
            r.fault_abort,
            Some(FaultAbort {
                status: 503,
                percent: Percent {
                    millionths: 125_000
                }
            })
        );
        assert!(r.has_fault());
        assert_rejected(FAULT_DELAY, "5s", "has no @percent");
        assert_rejected(FAULT_DELAY, "0s@50", "must be above 0");
        assert_rejected(FAULT_DELAY, "5s@101", "above 100");
        assert_rejected(FAULT_ABORT, "503", "has no @percent");
        assert_rejected(FAULT_ABORT, "600@10", "out of range");
        assert_rejected(FAULT_ABORT, "199@10", "out of range");
        assert_rejected(FAULT_ABORT, "503@ten", "not a percentage");
    }

    #[test]
    fn load_balancers() {
        assert_eq!(
            ok(&[(LOAD_BALANCER, "least-request")]).load_balancer,
            LoadBalancer::LeastRequest
        );
        assert_eq!(
            ok(&[(LOAD_BALANCER, "random")]).load_balancer,
            LoadBalancer::Random
        );
        assert_eq!(
            ok(&[(LOAD_BALANCER, "round-robin")]).load_balancer,
            LoadBalancer::RoundRobin
        );
        assert_eq!(
            ok(&[(LOAD_BALANCER, "ring-hash:X-User")]).load_balancer,
            LoadBalancer::RingHash {
                header: "x-user".into()
            }
        );
        assert_rejected(LOAD_BALANCER, "ring-hash:", "not an HTTP header name");
        assert_rejected(LOAD_BALANCER, "ring-hash:a b", "not an HTTP header name");
        assert_rejected(LOAD_BALANCER, "maglev", "is not a load balancer");
    }

    #[test]
    fn circuit_breaking_and_outlier_detection() {
        let r = ok(&[
            (MAX_CONNECTIONS, "100"),
            (MAX_PENDING_REQUESTS, "0"),
            (MAX_REQUESTS, "200"),
            (MAX_RETRIES, "4294967295"),
        ]);
        assert_eq!(
            r.limits,
            ConnectionLimits {
                max_connections: Some(100),
                max_pending_requests: Some(0),
                max_requests: Some(200),
                max_retries: Some(u32::MAX),
            }
        );
        assert_eq!(r.outlier, None);
        assert_rejected(MAX_CONNECTIONS, "0", "out of range");
        assert_rejected(MAX_REQUESTS, "0", "out of range");
        assert_rejected(MAX_RETRIES, "4294967296", "out of range");
        assert_rejected(MAX_PENDING_REQUESTS, "1k", "not a whole number");

        let r = ok(&[(OUTLIER_CONSECUTIVE_5XX, "3")]);
        assert_eq!(
            r.outlier,
            Some(OutlierDetection {
                consecutive_5xx: Some(3),
                ..Default::default()
            })
        );
        let r = ok(&[
            (OUTLIER_INTERVAL, "5s"),
            (OUTLIER_BASE_EJECTION_TIME, "1m"),
            (OUTLIER_MAX_EJECTION_PERCENT, "50"),
        ]);
        let o = r.outlier.unwrap();
        assert_eq!(o.interval, Some(Duration::from_secs(5)));
        assert_eq!(o.base_ejection_time, Some(Duration::from_secs(60)));
        assert_eq!(o.max_ejection_percent, Some(50));
        assert_rejected(OUTLIER_CONSECUTIVE_5XX, "0", "out of range");
        assert_rejected(OUTLIER_INTERVAL, "0", "must be above 0");
        assert_rejected(OUTLIER_BASE_EJECTION_TIME, "soon", "not a duration");
        assert_rejected(OUTLIER_MAX_EJECTION_PERCENT, "101", "out of range");
    }

    #[test]
    fn the_namespace_sets_defaults_and_the_service_overrides_each_annotation() {
        let namespace = ann(&[
            (TIMEOUT, "5s"),
            (RETRIES, "2"),
            (LOAD_BALANCER, "random"),
            (MTLS, "STRICT"),
        ]);
        let service = ann(&[(TIMEOUT, "1s"), (RETRY_ON, "gateway-error")]);
        let r = parse(&key(), &service, &namespace).unwrap();
        assert_eq!(r.timeout, Duration::from_secs(1));
        let retries = r.retries.unwrap();
        assert_eq!(retries.attempts, 2);
        assert_eq!(retries.on, [RetryOn::GatewayError]);
        assert_eq!(r.load_balancer, LoadBalancer::Random);

        // An invalid namespace default is this service's error unless the
        // service sets its own value.
        let namespace = ann(&[(TIMEOUT, "soon")]);
        let errors = parse(&key(), &Annotations::new(), &namespace).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].object, "Namespace shop");
        assert_eq!(errors[0].annotation, TIMEOUT);
        assert_eq!(errors[0].value, "soon");
        let r = parse(&key(), &ann(&[(TIMEOUT, "2s")]), &namespace).unwrap();
        assert_eq!(r.timeout, Duration::from_secs(2));

        // Splits and routes are per service: a namespace's are not read,
        // and the namespace itself is told so.
        let namespace = ann(&[(TRAFFIC_SPLIT, "a=1")]);
        assert_eq!(
            parse(&key(), &Annotations::new(), &namespace).unwrap(),
            Routing::DEFAULT
        );
        let errors = validate_namespace("shop", &namespace).unwrap_err();
        assert_eq!(errors[0].object, "Namespace shop");
        assert!(
            errors[0]
                .message
                .contains("not accepted on a Namespace, only on: Service"),
            "{}",
            errors[0].message
        );
    }

    #[test]
    fn unknown_annotations_are_errors() {
        let e = err(&[("meshd.io/timout", "5s")]);
        assert_eq!(e.annotation, "meshd.io/timout");
        assert_eq!(e.value, "5s");
        assert!(e.message.contains("is not a meshd annotation"), "{e}");
        assert!(e.message.contains(TIMEOUT), "{e}");
        // Read elsewhere, but not on a Service.
        let e = err(&[(MTLS, "STRICT")]);
        assert!(e.message.contains("is not a meshd annotation"), "{e}");
        let e = err(&[(EGRESS, "./*")]);
        assert!(
            e.message.contains("only on: Namespace, Pod"),
            "{}",
            e.message
        );
        // Namespaces may carry what other parts of meshd read.
        assert!(validate_namespace("shop", &ann(&[(MTLS, "STRICT")])).is_ok());
        let errors = validate_namespace("shop", &ann(&[("meshd.io/retires", "3")])).unwrap_err();
        assert_eq!(errors[0].annotation, "meshd.io/retires");
    }

    #[test]
    fn every_error_is_reported_at_once() {
        let errors = parse(
            &key(),
            &ann(&[(TIMEOUT, "x"), (RETRIES, "99"), ("meshd.io/nope", "")]),
            &Annotations::new(),
        )
        .unwrap_err();
        let names: Vec<_> = errors.iter().map(|e| e.annotation.as_str()).collect();
        assert_eq!(names, ["meshd.io/nope", TIMEOUT, RETRIES]);
    }

    #[test]
    fn egress_rules() {
        let rule = EgressRule::parse("Pod shop/web-0", "./*, */reviews,db/postgres").unwrap();
        let scope = rule.resolve("shop").unwrap();
        assert!(scope.allows(&ServiceKey::new("shop", "anything")));
        assert!(scope.allows(&ServiceKey::new("other", "reviews")));
        assert!(scope.allows(&ServiceKey::new("db", "postgres")));
        assert!(!scope.allows(&ServiceKey::new("db", "mysql")));
        assert_eq!(scope.to_string(), "*/reviews,db/postgres,shop/*");
        // Equal scopes written differently are equal.
        let other = EgressRule::parse("Namespace shop", "db/postgres,shop/*,*/reviews,./*")
            .unwrap()
            .resolve("shop");
        assert_eq!(Some(scope), other);
        // Everything is no scope at all.
        assert_eq!(
            EgressRule::parse("Namespace shop", "*/*")
                .unwrap()
                .resolve("shop"),
            None
        );
        for bad in ["", "shop", "shop/", "/x", "Shop/*", "shop/re*", "a/b/c"] {
            let e = EgressRule::parse("Pod shop/web-0", bad).unwrap_err();
            assert_eq!(e.object, "Pod shop/web-0");
            assert_eq!(e.annotation, EGRESS);
            assert!(e.message.contains("accepted: "), "{e}");
        }
    }

    #[test]
    fn the_table_documents_every_annotation() {
        let table = markdown_table();
        for d in ANNOTATIONS {
            assert!(table.contains(&format!("| `{}` |", d.name)), "{}", d.name);
        }
        assert_eq!(table.lines().count(), ANNOTATIONS.len() + 2);
    }
}
