//! The `meshd.io/*` annotations and labels a pod may carry for injection,
//! as data, with the parsers of their values (the injector applies them).
//!
//! [`ANNOTATIONS`] and [`LABELS`] are the one source for the README table
//! ([`markdown_table`]) and for every error message: a value that is not
//! accepted is reported with the `accepted` text of its row, an unknown
//! `meshd.io/` annotation with the list of known names.
//!
//! ```text
//! pod annotations ──parse──> Overrides ──(with InjectorConfig)──> what inject() builds
//!                     └─ unknown meshd.io/* or bad value ──> Error
//! ```

use std::collections::BTreeMap;
use std::fmt;

use std::net::IpAddr;
use std::str::FromStr;

use super::routing;
use super::workload::{Interception, MtlsMode};

/// Why a pod's annotations or labels are refused: the messages name the
/// annotation or label, the value, and what is accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("annotation {annotation}: `{value}` is not valid; accepted: {accepted}")]
    InvalidAnnotation {
        annotation: String,
        value: String,
        accepted: String,
    },
    #[error("annotation {annotation} is not a meshd annotation; accepted: {accepted}")]
    UnknownAnnotation {
        annotation: String,
        accepted: String,
    },
    #[error("label {label}: `{value}` is not valid; accepted: {accepted}")]
    InvalidLabel {
        label: String,
        value: String,
        accepted: String,
    },
}

/// A list value that does not parse (the capture settings share these
/// parsers with their flags, named by `field`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ListError {
    #[error(
        "{field}: `{value}` is not a port; accepted: a comma-separated list of numbers 1-65535"
    )]
    Port { field: &'static str, value: String },
    #[error(
        "{field}: `{value}` is not a CIDR; accepted: a comma-separated list like 10.0.0.0/8,fd00::/8"
    )]
    Cidr { field: &'static str, value: String },
}

/// An address block, as iptables takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub address: IpAddr,
    pub prefix: u8,
}

impl FromStr for Cidr {
    type Err = ();

    fn from_str(s: &str) -> std::result::Result<Self, ()> {
        let (addr, prefix) = s.split_once('/').unwrap_or((s, ""));
        let address: IpAddr = addr.parse().map_err(|_| ())?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        let prefix = if prefix.is_empty() {
            max
        } else {
            prefix.parse().map_err(|_| ())?
        };
        if prefix > max {
            return Err(());
        }
        Ok(Cidr { address, prefix })
    }
}

/// Parses `80,443` (spaces allowed, empty = none).
pub fn parse_ports(field: &'static str, value: &str) -> Result<Vec<u16>, ListError> {
    value
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| ListError::Port {
                    field,
                    value: p.to_string(),
                })
        })
        .collect()
}

/// Parses `10.0.0.0/8,192.168.1.1` (a bare address is a /32 or /128).
pub fn parse_cidrs(field: &'static str, value: &str) -> Result<Vec<Cidr>, ListError> {
    value
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|c| {
            c.parse().map_err(|()| ListError::Cidr {
                field,
                value: c.to_string(),
            })
        })
        .collect()
}

/// Every meshd annotation and label starts with this.
pub const PREFIX: &str = "meshd.io/";

pub const INJECT: &str = "meshd.io/inject";
pub const STATUS: &str = "meshd.io/status";
pub const NATIVE_SIDECAR: &str = "meshd.io/native-sidecar";
pub const PROXY_CPU: &str = "meshd.io/proxy-cpu";
pub const PROXY_MEMORY: &str = "meshd.io/proxy-memory";
pub const PROXY_CPU_LIMIT: &str = "meshd.io/proxy-cpu-limit";
pub const PROXY_MEMORY_LIMIT: &str = "meshd.io/proxy-memory-limit";
pub const LOG_LEVEL: &str = "meshd.io/log-level";
pub const CONCURRENCY: &str = "meshd.io/concurrency";
pub const EXCLUDE_INBOUND_PORTS: &str = "meshd.io/exclude-inbound-ports";
pub const EXCLUDE_OUTBOUND_PORTS: &str = "meshd.io/exclude-outbound-ports";
pub const EXCLUDE_OUTBOUND_CIDRS: &str = "meshd.io/exclude-outbound-cidrs";
pub const INTERCEPTION: &str = "meshd.io/interception";
pub const MTLS: &str = "meshd.io/mtls";
pub const REWRITE_APP_PROBES: &str = "meshd.io/rewrite-app-probes";
pub const PROMETHEUS_SCRAPE: &str = "meshd.io/prometheus-scrape";
pub const ACCESS_LOG: &str = "meshd.io/access-log";
pub const WORKLOAD: &str = "meshd.io/workload";
pub const TRACING_SAMPLING: &str = "meshd.io/tracing-sampling";

/// The usual Prometheus scrape annotations, which the injector adds to
/// meshed pods (never over the pod's own).
pub const PROMETHEUS_SCRAPE_ANNOTATIONS: [(&str, &str); 3] = [
    ("prometheus.io/scrape", "true"),
    ("prometheus.io/port", "15090"),
    ("prometheus.io/path", "/stats/prometheus"),
];

/// The label the injector puts on every pod it injects (value
/// [`PROXY_LABEL_VALUE`]), so meshed pods can be selected: by a
/// PodMonitor scraping 15090, a NetworkPolicy, or `kubectl get -l`.
pub const PROXY_LABEL: &str = "meshd.io/proxy";
pub const PROXY_LABEL_VALUE: &str = "true";

/// Envoy's log levels, as `--log-level` takes them.
pub const LOG_LEVELS: &[&str] = &[
    "trace", "debug", "info", "warning", "error", "critical", "off",
];

const WORKLOAD_ACCEPTED: &str = "1-253 characters: lowercase letters, digits, '-', '.'";

/// Whether a workload name is one `meshd.io/workload` accepts (a metric
/// label value, also put into the proxy's command line).
pub fn valid_workload(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 253
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// Parses `true` / `false`.
pub fn parse_flag(value: &str) -> Option<bool> {
    match value {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// What `meshd.io/tracing-sampling` and `meshd run --tracing-sampling`
/// accept.
pub const TRACING_SAMPLING_ACCEPTED: &str =
    "a percentage from 0 to 100 with at most two decimals (100, 1, 0.5)";

/// The share of requests a proxy traces. Kept in hundredths of a percent,
/// so a setting compares, hashes and prints exactly as written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SamplingPercent(u32);

impl SamplingPercent {
    pub const ALL: SamplingPercent = SamplingPercent(10_000);

    /// Parses `0`-`100` with at most two decimals (`1`, `0.5`, `12.25`).
    pub fn parse(value: &str) -> Option<SamplingPercent> {
        let (whole, fraction) = value.split_once('.').unwrap_or((value, ""));
        let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty()
            || whole.len() > 3
            || !digits(whole)
            || fraction.len() > 2
            || !digits(fraction)
            || (value.contains('.') && fraction.is_empty())
        {
            return None;
        }
        let whole: u32 = whole.parse().ok()?;
        let fraction: u32 = format!("{fraction:0<2}").parse().ok()?;
        let hundredths = whole * 100 + fraction;
        (hundredths <= Self::ALL.0).then_some(SamplingPercent(hundredths))
    }

    /// The percentage, as Envoy's `Percent` takes it.
    pub fn percent(self) -> f64 {
        f64::from(self.0) / 100.0
    }
}

impl fmt::Display for SamplingPercent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 % 100 {
            0 => write!(f, "{}", self.0 / 100),
            h if h % 10 == 0 => write!(f, "{}.{}", self.0 / 100, h / 10),
            h => write!(f, "{}.{h:02}", self.0 / 100),
        }
    }
}

/// The largest `meshd.io/concurrency`.
pub const MAX_CONCURRENCY: u32 = 64;

/// One row of the annotation (or label) table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AnnotationDoc {
    pub name: &'static str,
    /// What values are accepted; also the text of the error message.
    pub accepted: &'static str,
    /// What applies without it.
    pub default: &'static str,
    pub description: &'static str,
}

const QUANTITY: &str = "a Kubernetes quantity: digits with an optional decimal part and an optional suffix m, k, M, G, T, Ki, Mi, Gi, Ti (e.g. 100m, 0.5, 2)";
const MEMORY_QUANTITY: &str = "a Kubernetes quantity: digits with an optional decimal part and an optional suffix k, M, G, T, Ki, Mi, Gi, Ti (e.g. 128Mi, 1Gi); `m` (milli-bytes) is refused as a likely typo for Mi";

/// The pod annotations meshd reads. Any other `meshd.io/` annotation is an
/// error.
pub const ANNOTATIONS: &[AnnotationDoc] = &[
    AnnotationDoc {
        name: INJECT,
        accepted: "true, false",
        default: "true in a namespace labelled meshd-injection=enabled",
        description: "Opt the pod in or out of injection; the label of the same name does the same (they must agree when both are set).",
    },
    AnnotationDoc {
        name: NATIVE_SIDECAR,
        accepted: "true, false",
        default: "the mesh setting (nativeSidecar, default true)",
        description: "Run the proxy as a native sidecar (an init container with restartPolicy: Always, Kubernetes 1.29+) or as the first regular container.",
    },
    AnnotationDoc {
        name: PROXY_CPU,
        accepted: QUANTITY,
        default: "the mesh setting (proxyCpuRequest, default 100m)",
        description: "The proxy's CPU request.",
    },
    AnnotationDoc {
        name: PROXY_MEMORY,
        accepted: MEMORY_QUANTITY,
        default: "the mesh setting (proxyMemoryRequest, default 128Mi)",
        description: "The proxy's memory request.",
    },
    AnnotationDoc {
        name: PROXY_CPU_LIMIT,
        accepted: QUANTITY,
        default: "the mesh setting (proxyCpuLimit, default 2)",
        description: "The proxy's CPU limit; never below its request.",
    },
    AnnotationDoc {
        name: PROXY_MEMORY_LIMIT,
        accepted: MEMORY_QUANTITY,
        default: "the mesh setting (proxyMemoryLimit, default 1Gi)",
        description: "The proxy's memory limit; never below its request.",
    },
    AnnotationDoc {
        name: LOG_LEVEL,
        accepted: "trace, debug, info, warning, error, critical, off",
        default: "the mesh setting (proxyLogLevel, default warning)",
        description: "Envoy's --log-level.",
    },
    AnnotationDoc {
        name: CONCURRENCY,
        accepted: "a whole number 0-64 (0: one worker per CPU Envoy sees)",
        default: "the mesh setting (proxyConcurrency, default 2)",
        description: "Envoy's worker threads (--concurrency).",
    },
    AnnotationDoc {
        name: EXCLUDE_INBOUND_PORTS,
        accepted: "a comma-separated list of ports 1-65535 (e.g. 22,8081)",
        default: "none (15021 and 15090 are always excluded)",
        description: "Inbound ports that reach the app directly, bypassing the proxy (only with interception redirect).",
    },
    AnnotationDoc {
        name: EXCLUDE_OUTBOUND_PORTS,
        accepted: "a comma-separated list of ports 1-65535 (e.g. 5432,6379)",
        default: "none",
        description: "Destination ports the app reaches directly, bypassing the proxy (only with interception redirect).",
    },
    AnnotationDoc {
        name: EXCLUDE_OUTBOUND_CIDRS,
        accepted: "a comma-separated list of IPv4/IPv6 CIDRs or addresses (e.g. 10.0.0.0/8,fd00::/8,169.254.169.254)",
        default: "none",
        description: "Destinations the app reaches directly, bypassing the proxy (only with interception redirect).",
    },
    AnnotationDoc {
        name: INTERCEPTION,
        accepted: "redirect, none",
        default: "redirect",
        description: "redirect: iptables capture by the meshd-init container; none: no capture and no meshd-init, the app uses the proxy explicitly (read by the control plane too).",
    },
    AnnotationDoc {
        name: MTLS,
        accepted: "STRICT, PERMISSIVE, DISABLE",
        default: "the namespace's meshd.io/mtls, else the mesh's --mtls-mode",
        description: "The workload's inbound mTLS mode (read by the control plane).",
    },
    AnnotationDoc {
        name: REWRITE_APP_PROBES,
        accepted: "true, false",
        default: "true",
        description: "Send the app containers' HTTP liveness, readiness and startup probes through the proxy's port 15021 (`/app-health/<container>/livez`, `readyz`, `startupz`), and their gRPC probes too (`port: 15021`; the proxy forwards the gRPC health check to the app's port), so they pass under STRICT mTLS; HTTPS, TCP and exec probes are left as they are.",
    },
    AnnotationDoc {
        name: PROMETHEUS_SCRAPE,
        accepted: "true, false",
        default: "the mesh setting (prometheusScrape, default true)",
        description: "Add the Prometheus scrape annotations `prometheus.io/scrape: \"true\"`, `prometheus.io/port: \"15090\"`, `prometheus.io/path: /stats/prometheus` to the pod, so a Prometheus that follows them scrapes the proxy's metrics (each one only when the pod does not set it).",
    },
    AnnotationDoc {
        name: ACCESS_LOG,
        accepted: "true, false",
        default: "the mesh setting (`meshd run --access-log`, default off)",
        description: "JSON access logs on the proxy's standard output, a line per request or TCP connection (read by the control plane; see Access logs).",
    },
    AnnotationDoc {
        name: TRACING_SAMPLING,
        accepted: TRACING_SAMPLING_ACCEPTED,
        default: "the mesh setting (`meshd run --tracing-sampling`, default 1)",
        description: "The percentage of requests the proxy starts a trace for, when the mesh has a collector (`meshd run --tracing-collector`); read by the control plane, so a change needs no restart (see Tracing).",
    },
    AnnotationDoc {
        name: WORKLOAD,
        accepted: WORKLOAD_ACCEPTED,
        default: "set by the injector when absent: the pod's controller (a Deployment's name for the pods of its ReplicaSets, a CronJob's for its Jobs' pods), else the pod's generateName or name",
        description: "The workload the proxy's metrics name it by (the `workload` label), so the pods of one Deployment add up.",
    },
    AnnotationDoc {
        name: STATUS,
        accepted: "written by the injector only: a JSON object listing what was injected",
        default: "absent until injected",
        description: "What the injector added; a pod carrying it is never injected again.",
    },
];

/// The pod labels meshd reads or writes.
pub const LABELS: &[AnnotationDoc] = &[
    AnnotationDoc {
        name: INJECT,
        accepted: "true, false",
        default: "true in a namespace labelled meshd-injection=enabled",
        description: "Opt the pod in or out of injection (same as the annotation).",
    },
    AnnotationDoc {
        name: PROXY_LABEL,
        accepted: "set by the injector: true",
        default: "absent until injected",
        description: "Marks a pod that runs the meshd proxy, for selectors.",
    },
];

/// The row of a known annotation.
pub fn doc(name: &str) -> Option<&'static AnnotationDoc> {
    ANNOTATIONS.iter().find(|d| d.name == name)
}

fn accepted(name: &str) -> String {
    doc(name).map_or_else(String::new, |d| d.accepted.to_string())
}

/// The known annotation names, for the "unknown annotation" message.
pub fn known_names() -> String {
    ANNOTATIONS
        .iter()
        .map(|d| d.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The annotation and label tables in Markdown, for the README.
pub fn markdown_table() -> String {
    let mut out =
        String::from("| annotation | accepted | default | what |\n| --- | --- | --- | --- |\n");
    for d in ANNOTATIONS {
        out.push_str(&row(d));
    }
    out.push_str("\n| label | accepted | default | what |\n| --- | --- | --- | --- |\n");
    for d in LABELS {
        out.push_str(&row(d));
    }
    out
}

fn row(d: &AnnotationDoc) -> String {
    let cell = |s: &str| s.replace('|', "\\|");
    format!(
        "| `{}` | {} | {} | {} |\n",
        d.name,
        cell(d.accepted),
        cell(d.default),
        cell(d.description)
    )
}

fn invalid(annotation: &str, value: &str) -> Error {
    Error::InvalidAnnotation {
        annotation: annotation.to_string(),
        value: value.to_string(),
        accepted: accepted(annotation),
    }
}

/// A resource quantity in the subset of Kubernetes' syntax meshd accepts:
/// `<digits>[.<digits>][suffix]`. Kept as written (that is what goes into
/// the pod) with its value for comparisons.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quantity {
    text: String,
    /// The value in billionths of the unit, rounded up as Kubernetes does.
    nanos: u128,
}

/// Which resource a quantity measures: memory refuses the `m` suffix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource {
    Cpu,
    Memory,
}

impl Quantity {
    /// Parses `100m`, `0.5`, `128Mi`; `None` for anything else.
    pub fn parse(text: &str, resource: Resource) -> Option<Quantity> {
        let digits_end = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(text.len());
        let (number, suffix) = text.split_at(digits_end);
        let (whole, fraction) = match number.split_once('.') {
            Some((w, f)) => (w, f),
            None => (number, ""),
        };
        let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty()
            || !all_digits(whole)
            || !all_digits(fraction)
            || (number.contains('.') && fraction.is_empty())
            // Beyond this a u128 could overflow; no real resource is this big.
            || whole.len() + fraction.len() > 17
        {
            return None;
        }
        const NANO: u128 = 1_000_000_000;
        const KI: u128 = 1024;
        let scale: u128 = match suffix {
            "m" if resource == Resource::Cpu => NANO / 1000,
            "" => NANO,
            "k" => NANO * 1_000,
            "M" => NANO * 1_000_000,
            "G" => NANO * 1_000_000_000,
            "T" => NANO * 1_000_000_000_000,
            "Ki" => NANO * KI,
            "Mi" => NANO * KI.pow(2),
            "Gi" => NANO * KI.pow(3),
            "Ti" => NANO * KI.pow(4),
            _ => return None,
        };
        let mantissa: u128 = format!("{whole}{fraction}").parse().ok()?;
        let divisor = 10u128.checked_pow(u32::try_from(fraction.len()).ok()?)?;
        let nanos = mantissa.checked_mul(scale)?.div_ceil(divisor);
        Some(Quantity {
            text: text.to_string(),
            nanos,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl PartialOrd for Quantity {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Quantity {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.nanos.cmp(&other.nanos)
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// What a pod's annotations override; `None`/empty: the mesh setting.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    pub native_sidecar: Option<bool>,
    pub proxy_cpu: Option<Quantity>,
    pub proxy_memory: Option<Quantity>,
    pub proxy_cpu_limit: Option<Quantity>,
    pub proxy_memory_limit: Option<Quantity>,
    pub log_level: Option<String>,
    pub concurrency: Option<u32>,
    pub exclude_inbound_ports: Vec<u16>,
    pub exclude_outbound_ports: Vec<u16>,
    pub exclude_outbound_cidrs: Vec<Cidr>,
    pub interception: Interception,
    pub rewrite_app_probes: Option<bool>,
    pub prometheus_scrape: Option<bool>,
    pub access_log: Option<bool>,
    pub workload: Option<String>,
    pub tracing_sampling: Option<SamplingPercent>,
}

fn parse_bool(annotation: &str, value: &str) -> Result<bool, Error> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(invalid(annotation, value)),
    }
}

fn parse_quantity(annotation: &str, value: &str, resource: Resource) -> Result<Quantity, Error> {
    Quantity::parse(value, resource).ok_or_else(|| invalid(annotation, value))
}

/// Parses a log level as Envoy's `--log-level` takes it.
pub fn parse_log_level(value: &str) -> Option<&'static str> {
    LOG_LEVELS.iter().copied().find(|l| *l == value)
}

/// Parses a worker count 0-64.
pub fn parse_concurrency(value: &str) -> Option<u32> {
    value
        .parse::<u32>()
        .ok()
        .filter(|n| *n <= MAX_CONCURRENCY && !value.starts_with('+'))
}

/// Validates every `meshd.io/` annotation of a pod and returns what they
/// override. Annotations outside `meshd.io/` are not meshd's business.
pub fn parse(annotations: &BTreeMap<String, String>) -> Result<Overrides, Error> {
    let mut o = Overrides::default();
    for (name, value) in annotations {
        if !name.starts_with(PREFIX) {
            continue;
        }
        let value = value.as_str();
        match name.as_str() {
            // Decided before (see [`inject_decision`]), or written by the
            // injector only.
            INJECT | STATUS => {}
            MTLS => {
                MtlsMode::parse(value).ok_or_else(|| invalid(name, value))?;
            }
            INTERCEPTION => {
                o.interception = Interception::parse(value).ok_or_else(|| invalid(name, value))?;
            }
            // The proxy's egress scope, documented with the routing
            // annotations and read by the control plane: checked here too,
            // so a bad value stops the pod at admission.
            routing::EGRESS => {
                routing::EgressRule::parse("Pod", value).map_err(|_| Error::InvalidAnnotation {
                    annotation: name.clone(),
                    value: value.to_string(),
                    accepted: routing::accepted(routing::EGRESS).to_string(),
                })?;
            }
            NATIVE_SIDECAR => o.native_sidecar = Some(parse_bool(name, value)?),
            REWRITE_APP_PROBES => o.rewrite_app_probes = Some(parse_bool(name, value)?),
            PROMETHEUS_SCRAPE => o.prometheus_scrape = Some(parse_bool(name, value)?),
            ACCESS_LOG => o.access_log = Some(parse_bool(name, value)?),
            TRACING_SAMPLING => {
                let sampling = SamplingPercent::parse(value).ok_or_else(|| invalid(name, value))?;
                o.tracing_sampling = Some(sampling);
            }
            WORKLOAD => {
                if !valid_workload(value) {
                    return Err(invalid(name, value));
                }
                o.workload = Some(value.to_string());
            }
            PROXY_CPU => o.proxy_cpu = Some(parse_quantity(name, value, Resource::Cpu)?),
            PROXY_CPU_LIMIT => {
                o.proxy_cpu_limit = Some(parse_quantity(name, value, Resource::Cpu)?);
            }
            PROXY_MEMORY => {
                o.proxy_memory = Some(parse_quantity(name, value, Resource::Memory)?);
            }
            PROXY_MEMORY_LIMIT => {
                o.proxy_memory_limit = Some(parse_quantity(name, value, Resource::Memory)?);
            }
            LOG_LEVEL => {
                let level = parse_log_level(value).ok_or_else(|| invalid(name, value))?;
                o.log_level = Some(level.to_string());
            }
            CONCURRENCY => {
                o.concurrency = Some(parse_concurrency(value).ok_or_else(|| invalid(name, value))?);
            }
            EXCLUDE_INBOUND_PORTS => {
                o.exclude_inbound_ports =
                    parse_ports(EXCLUDE_INBOUND_PORTS, value).map_err(|_| invalid(name, value))?;
            }
            EXCLUDE_OUTBOUND_PORTS => {
                o.exclude_outbound_ports =
                    parse_ports(EXCLUDE_OUTBOUND_PORTS, value).map_err(|_| invalid(name, value))?;
            }
            EXCLUDE_OUTBOUND_CIDRS => {
                o.exclude_outbound_cidrs =
                    parse_cidrs(EXCLUDE_OUTBOUND_CIDRS, value).map_err(|_| invalid(name, value))?;
            }
            _ => {
                return Err(Error::UnknownAnnotation {
                    annotation: name.clone(),
                    accepted: known_names(),
                });
            }
        }
    }
    Ok(o)
}

/// What the pod says about injection: `Some(false)` opts out, `Some(true)`
/// opts in, `None` leaves it to the namespace. The label and the annotation
/// `meshd.io/inject` mean the same; when both are set they must agree, as
/// there is no good reason for a pod to say both yes and no.
pub fn inject_decision(
    labels: Option<&BTreeMap<String, String>>,
    annotations: Option<&BTreeMap<String, String>>,
) -> Result<Option<bool>, Error> {
    let label = match labels.and_then(|l| l.get(INJECT)) {
        None => None,
        Some(v) => Some(parse_bool(INJECT, v).map_err(|_| Error::InvalidLabel {
            label: INJECT.to_string(),
            value: v.clone(),
            accepted: "true, false".to_string(),
        })?),
    };
    let annotation = match annotations.and_then(|a| a.get(INJECT)) {
        None => None,
        Some(v) => Some(parse_bool(INJECT, v)?),
    };
    match (label, annotation) {
        (Some(l), Some(a)) if l != a => Err(Error::InvalidAnnotation {
            annotation: INJECT.to_string(),
            value: a.to_string(),
            accepted: format!(
                "the same value as the pod's label {INJECT} (`{l}`), or no annotation"
            ),
        }),
        (l, a) => Ok(l.or(a)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn sampling_is_a_percentage_with_at_most_two_decimals() {
        for (ok, percent, shown) in [
            ("0", 0.0, "0"),
            ("1", 1.0, "1"),
            ("0.5", 0.5, "0.5"),
            ("12.25", 12.25, "12.25"),
            ("0.05", 0.05, "0.05"),
            ("100", 100.0, "100"),
            ("100.00", 100.0, "100"),
        ] {
            let s = SamplingPercent::parse(ok).unwrap_or_else(|| panic!("{ok}"));
            assert_eq!((s.percent(), s.to_string().as_str()), (percent, shown));
        }
        for bad in [
            "", "101", "100.01", "-1", "+1", "1.", ".5", "0.125", "1e2", "50%", " 1", "NaN", "1000",
        ] {
            assert_eq!(SamplingPercent::parse(bad), None, "{bad}");
        }
        let err = parse(&map(&[(TRACING_SAMPLING, "150")])).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(TRACING_SAMPLING) && text.contains("150") && text.contains("0 to 100"),
            "{text}"
        );
        let o = parse(&map(&[(TRACING_SAMPLING, "100")])).unwrap();
        assert_eq!(o.tracing_sampling, Some(SamplingPercent::ALL));
    }

    #[test]
    fn quantities_follow_the_kubernetes_subset() {
        let cpu = |s| Quantity::parse(s, Resource::Cpu);
        let mem = |s| Quantity::parse(s, Resource::Memory);
        for ok in ["100m", "0.5", "2", "1.25", "128Mi", "1Gi", "1k", "3T", "0"] {
            assert!(cpu(ok).is_some(), "{ok}");
        }
        for bad in [
            "", "m", "1.", ".5", "-1", "+1", "1e3", "1 Gi", "1mi", "1Ei", "1.2.3", "0x10", "100 m",
            "1m1",
        ] {
            assert!(cpu(bad).is_none(), "{bad}");
        }
        assert!(mem("100m").is_none(), "milli-bytes are refused for memory");
        assert!(mem("128Mi").is_some());
        assert!(cpu("123456789012345678").is_none(), "too many digits");
        // Comparisons are by value, whatever the notation.
        assert_eq!(
            cpu("0.5").unwrap().cmp(&cpu("500m").unwrap()),
            std::cmp::Ordering::Equal
        );
        assert!(cpu("100m").unwrap() < cpu("1").unwrap());
        assert!(mem("1Gi").unwrap() > mem("1G").unwrap());
        assert_eq!(
            mem("1Ki").unwrap().cmp(&mem("1024").unwrap()),
            std::cmp::Ordering::Equal
        );
        assert_eq!(cpu("0.5").unwrap().as_str(), "0.5");
    }

    #[test]
    fn every_override_is_parsed() {
        let o = parse(&map(&[
            (NATIVE_SIDECAR, "false"),
            (PROXY_CPU, "200m"),
            (PROXY_MEMORY, "64Mi"),
            (PROXY_CPU_LIMIT, "1"),
            (PROXY_MEMORY_LIMIT, "256Mi"),
            (LOG_LEVEL, "debug"),
            (CONCURRENCY, "4"),
            (EXCLUDE_INBOUND_PORTS, "22, 8081"),
            (EXCLUDE_OUTBOUND_PORTS, "5432"),
            (EXCLUDE_OUTBOUND_CIDRS, "10.0.0.0/8,fd00::/8"),
            (INTERCEPTION, "none"),
            (MTLS, "STRICT"),
            (REWRITE_APP_PROBES, "false"),
            (INJECT, "true"),
            ("example.com/other", "anything"),
        ]))
        .unwrap();
        assert_eq!(o.native_sidecar, Some(false));
        assert_eq!(o.proxy_cpu.unwrap().as_str(), "200m");
        assert_eq!(o.log_level.as_deref(), Some("debug"));
        assert_eq!(o.concurrency, Some(4));
        assert_eq!(o.exclude_inbound_ports, vec![22, 8081]);
        assert_eq!(o.exclude_outbound_ports, vec![5432]);
        assert_eq!(o.exclude_outbound_cidrs.len(), 2);
        assert_eq!(o.interception, Interception::None);
        assert_eq!(o.rewrite_app_probes, Some(false));
        assert_eq!(parse(&map(&[])).unwrap(), Overrides::default());
    }

    #[test]
    fn bad_values_name_the_annotation_and_what_is_accepted() {
        let cases = [
            (NATIVE_SIDECAR, "yes"),
            (PROXY_CPU, "lots"),
            (PROXY_MEMORY, "128m"),
            (PROXY_CPU_LIMIT, "-1"),
            (PROXY_MEMORY_LIMIT, "1GB"),
            (LOG_LEVEL, "verbose"),
            (LOG_LEVEL, "INFO"),
            (CONCURRENCY, "65"),
            (CONCURRENCY, "-1"),
            (CONCURRENCY, "+2"),
            (EXCLUDE_INBOUND_PORTS, "22,ssh"),
            (EXCLUDE_OUTBOUND_PORTS, "70000"),
            (EXCLUDE_OUTBOUND_CIDRS, "10.0.0.0/33"),
            (INTERCEPTION, "tproxy"),
            (MTLS, "ON"),
            (REWRITE_APP_PROBES, "no"),
            (REWRITE_APP_PROBES, "False"),
        ];
        for (name, value) in cases {
            let err = parse(&map(&[(name, value)])).unwrap_err();
            assert_eq!(
                err,
                Error::InvalidAnnotation {
                    annotation: name.into(),
                    value: value.into(),
                    accepted: doc(name).unwrap().accepted.into(),
                },
                "{name}={value}"
            );
            let text = err.to_string();
            assert!(text.contains(name) && text.contains(value), "{text}");
        }
        assert_eq!(
            parse(&map(&[(LOG_LEVEL, "verbose")]))
                .unwrap_err()
                .to_string(),
            "annotation meshd.io/log-level: `verbose` is not valid; accepted: trace, debug, info, warning, error, critical, off"
        );
    }

    /// A Pod's egress scope is the control plane's (documented with the
    /// routing annotations): it was refused as unknown, so such a pod could
    /// not be injected at all.
    #[test]
    fn a_pods_egress_scope_is_accepted_and_checked() {
        assert_eq!(
            parse(&map(&[(routing::EGRESS, "./*,shop/reviews")])).unwrap(),
            Overrides::default()
        );
        let err = parse(&map(&[(routing::EGRESS, "shop")])).unwrap_err();
        assert_eq!(
            err,
            Error::InvalidAnnotation {
                annotation: routing::EGRESS.into(),
                value: "shop".into(),
                accepted: routing::accepted(routing::EGRESS).into(),
            }
        );
    }

    #[test]
    fn unknown_meshd_annotations_are_refused_with_the_known_list() {
        let err = parse(&map(&[("meshd.io/proxy-cpus", "1")])).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("meshd.io/proxy-cpus"), "{text}");
        assert!(text.contains("meshd.io/proxy-cpu,"), "{text}");
        assert!(text.contains(STATUS), "{text}");
        // Other prefixes are someone else's.
        assert!(parse(&map(&[("sidecar.meshd.io/x", "1"), ("meshd.iox", "1")])).is_ok());
    }

    #[test]
    fn label_and_annotation_decide_injection_together() {
        let l = |v| map(&[(INJECT, v)]);
        assert_eq!(inject_decision(None, None), Ok(None));
        assert_eq!(inject_decision(Some(&l("false")), None), Ok(Some(false)));
        assert_eq!(inject_decision(None, Some(&l("false"))), Ok(Some(false)));
        assert_eq!(inject_decision(Some(&l("true")), None), Ok(Some(true)));
        assert_eq!(
            inject_decision(Some(&l("true")), Some(&l("true"))),
            Ok(Some(true))
        );
        let conflict = inject_decision(Some(&l("true")), Some(&l("false"))).unwrap_err();
        assert!(
            conflict
                .to_string()
                .contains("label meshd.io/inject (`true`)")
        );
        assert!(matches!(
            inject_decision(Some(&l("yes")), None),
            Err(Error::InvalidLabel { .. })
        ));
        assert!(matches!(
            inject_decision(None, Some(&l("False"))),
            Err(Error::InvalidAnnotation { .. })
        ));
    }

    #[test]
    fn the_table_covers_every_annotation_once() {
        let table = markdown_table();
        for d in ANNOTATIONS.iter().chain(LABELS) {
            assert!(table.contains(&format!("| `{}` |", d.name)), "{}", d.name);
        }
        let mut names: Vec<_> = ANNOTATIONS.iter().map(|d| d.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ANNOTATIONS.len());
        assert!(names.iter().all(|n| n.starts_with(PREFIX)));
    }
}
