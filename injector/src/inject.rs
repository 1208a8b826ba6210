//! The injection itself: a pure function from a Pod to a JSON Patch.
//!
//! `inject` decides whether a pod is meshed, validates its `meshd.io/*`
//! annotations, and returns the patch that adds the sidecar, the capture
//! init container, the bootstrap and the identity volume. The webhook and
//! `meshd inject` both call it, so what `kubectl apply` gets is what
//! offline injection prints.
//!
//! ```text
//! Pod ─┬─ protected namespace / already injected / opted out / hostNetwork ──> Skipped
//!      └─ annotations::parse + InjectorConfig ──> Plan ──> add operations at known paths ──> Patch
//!                                                   └─ containers rendered once per configuration and Plan
//! ```
//!
//! The patch is built directly, never by diffing the pod before and after:
//! the injected list items are inserted by index (a list the pod lacks is
//! added whole), and so are the label and annotations. What the injected
//! containers look like depends only on the mesh settings and the pod's
//! `meshd.io/*` overrides, so they are built and serialised once for each
//! such combination and shared by every pod that has it: a review costs
//! little beyond decoding its pod and writing the patch.
//!
//! What a meshed pod gets:
//!
//! - `meshd-proxy`: Envoy as UID/GID 1337, bootstrap inline (`--config-yaml`),
//!   node id `<pod>.<namespace>` from the downward API. Native mode (the
//!   default): an init container with `restartPolicy: Always` placed right
//!   after `meshd-init` and before the pod's own init containers, so those
//!   already have the mesh, the app starts only once the proxy is ready, and
//!   Jobs complete. Classic mode: the first regular container; `meshd-init`
//!   then runs *last* among the init containers, so the pod's own init
//!   containers run before traffic is captured (there is no proxy yet to
//!   capture it to). A pod that runs to completion (`restartPolicy` `Never`
//!   or `OnFailure`, as every Job's) is refused in classic mode: its proxy
//!   would never exit, so the pod would never complete.
//! - `meshd-init`: `meshd capture`, the iptables redirection (left out with
//!   `meshd.io/interception: none`, where nothing is captured).
//! - `meshd-identity`: the bootstrap identity Secret, mounted in the proxy only.
//! - the label `meshd.io/proxy: "true"` and the annotation `meshd.io/status`.
//! - the app containers' HTTP probes pointed at the proxy's readiness port
//!   (unless `meshd.io/rewrite-app-probes: "false"`): under STRICT mTLS the
//!   inbound listener refuses kubelet's plaintext, so kubelet asks
//!   `15021/app-health/<container>/<livez|readyz|startupz>` and the proxy's
//!   bootstrap routes that to the app's port and original path. Only
//!   `spec.containers` are rewritten, only `httpGet` probes with scheme HTTP
//!   and no `host`: HTTPS would need the proxy to originate TLS to the app;
//!   a TCP probe is answered by the proxy's inbound listener anyway, which
//!   accepts the connection whatever the mTLS mode; exec probes do not use
//!   the network. A probe whose port names no port of its container, or
//!   whose path is not plain printable ASCII, is left as it is.
//! - the app containers' gRPC probes pointed at 15021 too (their `port`
//!   only; the service they name stays): the readiness listener forwards
//!   the `grpc.health.v1.Health/Check` call, and no other, to the app's
//!   port over plaintext HTTP/2 on loopback. Kubelet's call carries nothing
//!   that says which port it was meant for, so a pod whose gRPC probes
//!   reach more than one port is refused (with what to do instead).

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use json_patch::jsonptr::PointerBuf;
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, Lifecycle,
    LifecycleHandler, ObjectFieldSelector, Pod, PodSpec, Probe, ResourceRequirements,
    SecretVolumeSource, SecurityContext, SleepAction, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as K8sQuantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use meshd_api::annotations::workload::Interception;
use meshd_api::sidecar::bootstrap::{
    self, APP_HEALTH_PREFIX, AppProbe, BootstrapConfig, GrpcProbe, XdsProtocol,
};
use meshd_api::sidecar::{TRACING_RESOURCE_ENV, ports, tracing_resource};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::capture::{CaptureConfig, PROXY_UID};
use crate::config::{IDENTITY_MOUNT, InjectorConfig, identity_secret_name};
pub use crate::error::{InjectError, Result};
use meshd_api::annotations::pod::{self as annotations, Overrides, Quantity, Resource};

/// The injected proxy container.
pub const PROXY_CONTAINER: &str = "meshd-proxy";
/// The injected traffic-capture init container.
pub const INIT_CONTAINER: &str = "meshd-init";
/// The volume holding the bootstrap identity.
pub const IDENTITY_VOLUME: &str = "meshd-identity";
/// Namespaces never injected besides the control plane's own.
pub const KUBE_SYSTEM: &str = "kube-system";
/// Environment variables the proxy gets from the downward API. Kubernetes
/// expands `$(NAME)` in `args`, which is how Envoy learns the pod's name
/// (not known at admission when the pod uses generateName).
pub const POD_NAME_ENV: &str = "MESHD_POD_NAME";
pub use meshd_api::sidecar::POD_NAMESPACE_ENV;
/// The workload and service account the proxy's metrics carry (fixed tags
/// of the bootstrap), also from the downward API: the bootstrap is shared
/// by the pods of a configuration.
pub use meshd_api::sidecar::WORKLOAD_ENV;
pub const SERVICE_ACCOUNT_ENV: &str = "MESHD_SERVICE_ACCOUNT";
/// Tells `kubectl logs/exec` which container to pick when the proxy is not
/// the only one.
const DEFAULT_CONTAINER_ANNOTATION: &str = "kubectl.kubernetes.io/default-container";

/// The ports the proxy binds in the pod's network namespace. The admin
/// port (15000) is bound to 127.0.0.1 only and is not declared as a
/// containerPort: it is unauthenticated and must not be reachable.
pub const PROXY_PORTS: [u16; 5] = [
    ports::ADMIN,
    ports::OUTBOUND,
    ports::INBOUND,
    ports::READINESS,
    ports::PROMETHEUS,
];
/// The declared ports: informational, and so a PodMonitor can name the
/// stats port.
const DECLARED_PORTS: [(&str, u16); 4] = [
    ("meshd-outbound", ports::OUTBOUND),
    ("meshd-inbound", ports::INBOUND),
    ("meshd-ready", ports::READINESS),
    ("meshd-metrics", ports::PROMETHEUS),
];
const READY_PATH: &str = "/healthz/ready";

/// Why a pod is left alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Skip {
    /// `meshd.io/inject: "false"` (label or annotation).
    OptedOut,
    /// The pod shares the node's network: capturing it would capture the node.
    HostNetwork,
    /// Already carries the sidecar (`meshd.io/status`): reinvocation never
    /// injects twice.
    AlreadyInjected,
    /// The control plane's own namespace or kube-system.
    ProtectedNamespace(String),
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Skip::OptedOut => write!(f, "opted out ({}: \"false\")", annotations::INJECT),
            Skip::HostNetwork => write!(f, "uses the host network (spec.hostNetwork)"),
            Skip::AlreadyInjected => write!(f, "already injected ({})", annotations::STATUS),
            Skip::ProtectedNamespace(ns) => {
                write!(f, "namespace {ns} is never injected")
            }
        }
    }
}

/// What injection decided. The patch is a `json_patch::Patch` from
/// [`inject`], a [`PodPatch`] from [`inject_patch`].
#[derive(Debug)]
pub enum Injection<P = json_patch::Patch> {
    Skipped(Skip),
    /// The patch, and the service account whose identity Secret the pod
    /// mounts (the webhook makes sure it exists).
    Patched {
        patch: P,
        service_account: String,
    },
}

/// The value of `meshd.io/status`: what the injector added, so it can be
/// recognised (and, one day, removed).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub version: String,
    pub containers: Vec<String>,
    pub init_containers: Vec<String>,
    pub volumes: Vec<String>,
    /// The probe paths the proxy serves for the app (`/app-health/…`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub app_probes: Vec<String>,
    /// The app's gRPC probes pointed at the proxy's readiness port, as
    /// `<container>/<livez|readyz|startupz>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grpc_probes: Vec<String>,
}

/// Checks the mesh-wide settings, so a bad configuration is refused when
/// the control plane starts rather than at its first pod.
pub fn check_config(config: &InjectorConfig) -> Result<()> {
    let prepared = Prepared::for_config(config)?;
    Plan::new(
        config,
        &prepared.defaults,
        &Overrides::default(),
        Vec::new(),
    )
    .map(|_| ())
}

/// Injects `pod`, created in `namespace`.
pub fn inject(pod: &Pod, namespace: &str, config: &InjectorConfig) -> Result<Injection> {
    Ok(match inject_patch(pod, namespace, config)? {
        Injection::Skipped(why) => Injection::Skipped(why),
        Injection::Patched {
            patch,
            service_account,
        } => Injection::Patched {
            patch: patch.to_patch(),
            service_account,
        },
    })
}

/// [`inject`], with the patch as a [`PodPatch`]: what the webhook sends,
/// written as JSON straight from the containers rendered for the pod's
/// settings, without building a `json_patch::Patch` first.
pub fn inject_patch(
    pod: &Pod,
    namespace: &str,
    config: &InjectorConfig,
) -> Result<Injection<PodPatch>> {
    if namespace == config.control_plane_namespace || namespace == KUBE_SYSTEM {
        return Ok(Injection::Skipped(Skip::ProtectedNamespace(
            namespace.to_string(),
        )));
    }
    let labels = pod.metadata.labels.as_ref();
    let pod_annotations = pod.metadata.annotations.as_ref();
    if let Some(status) = pod_annotations.and_then(|a| a.get(annotations::STATUS)) {
        // Only ever written by the injector; anything but a JSON object is
        // someone else's doing, and guessing could inject twice.
        if serde_json::from_str::<serde_json::Map<String, Value>>(status).is_err() {
            return Err(annotations::Error::InvalidAnnotation {
                annotation: annotations::STATUS.into(),
                value: status.clone(),
                accepted: "only the injector's JSON object (remove the annotation to inject)"
                    .into(),
            }
            .into());
        }
        return Ok(Injection::Skipped(Skip::AlreadyInjected));
    }
    if annotations::inject_decision(labels, pod_annotations)? == Some(false) {
        return Ok(Injection::Skipped(Skip::OptedOut));
    }
    let Some(spec) = pod.spec.as_ref() else {
        return Err(InjectError::InvalidPod(
            "spec is missing; accepted: a pod with spec.containers".into(),
        ));
    };
    if spec.host_network == Some(true) {
        return Ok(Injection::Skipped(Skip::HostNetwork));
    }
    let empty = BTreeMap::new();
    let overrides = annotations::parse(pod_annotations.unwrap_or(&empty))?;
    let prepared = Prepared::for_config(config)?;
    let rewrites = app_probe_rewrites(spec, &overrides, config);
    let probes = ProxiedProbes::of(spec, &rewrites)?;
    let mut plan = Plan::new(config, &prepared.defaults, &overrides, probes.http)?;
    plan.grpc_probe = probes.grpc;
    plan.grpc_probes = probes.grpc_names;
    let service_account = service_account(spec)?;
    check_conflicts(spec, &plan)?;
    check_completes(pod, spec, &overrides, &plan)?;

    let rendered = prepared.rendered(plan)?;
    let metadata = Metadata {
        workload: overrides.workload.is_none().then(|| workload_name(pod)),
        scrape: overrides
            .prometheus_scrape
            .unwrap_or(config.prometheus_scrape),
    };
    Ok(Injection::Patched {
        patch: PodPatch::build(
            pod,
            spec,
            &rendered,
            &service_account,
            &rewrites,
            &config.image_pull_secrets,
            &metadata,
        )?,
        service_account,
    })
}

/// A Pod holding only what [`inject_patch`] reads, which is what the
/// webhook decodes from each review: the metadata names, labels,
/// annotations and owners; the spec's containers (names, ports, run-as
/// IDs, the probes' `httpGet`, `grpc` and timeout), init and
/// ephemeral container names, volume names, host network, service account,
/// restart policy, image pull secrets and pod run-as IDs. The rest of the Pod (most of its bytes: images,
/// env, probes, the managed fields' trees) is parsed past without being
/// built, and so never costs an allocation.
///
/// The fields kept are decoded as [`Pod`] decodes them (missing lists and
/// names default the same way), so `inject_patch` on this Pod gives what
/// it gives on the whole one, and a bad value in a field it reads is
/// reported with the same path. A bad value in a field injection does not
/// read is not looked at: the API server has decoded the Pod into its own
/// types before it asks, and validates it after the patch.
///
/// A field injection starts to read must be added to [`read`] too; a test
/// injects every pod shape of this module's tests both ways and compares.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(try_from = "read::Pod")]
pub struct PodForInjection(pub Pod);

impl kube::core::Resource for PodForInjection {
    type DynamicType = ();
    type Scope = kube::core::NamespaceResourceScope;

    fn kind(_: &()) -> std::borrow::Cow<'_, str> {
        "Pod".into()
    }
    fn group(_: &()) -> std::borrow::Cow<'_, str> {
        "".into()
    }
    fn version(_: &()) -> std::borrow::Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> std::borrow::Cow<'_, str> {
        "pods".into()
    }
    fn meta(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        &self.0.metadata
    }
    fn meta_mut(&mut self) -> &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        &mut self.0.metadata
    }
}

/// The fields of a Pod that injection reads, by their JSON names, for
/// [`PodForInjection`].
mod read {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1 as core;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
    use serde::Deserialize;

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Pod {
        api_version: Option<String>,
        kind: Option<String>,
        metadata: Option<Metadata>,
        spec: Option<Spec>,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Metadata {
        name: Option<String>,
        generate_name: Option<String>,
        namespace: Option<String>,
        labels: Option<BTreeMap<String, String>>,
        annotations: Option<BTreeMap<String, String>>,
        owner_references: Option<Vec<OwnerReference>>,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Spec {
        containers: Option<Vec<Container>>,
        init_containers: Option<Vec<Container>>,
        ephemeral_containers: Option<Vec<Named>>,
        volumes: Option<Vec<Named>>,
        host_network: Option<bool>,
        security_context: Option<RunAs>,
        service_account_name: Option<String>,
        service_account: Option<String>,
        restart_policy: Option<String>,
        image_pull_secrets: Option<Vec<core::LocalObjectReference>>,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Container {
        name: Option<String>,
        ports: Option<Vec<core::ContainerPort>>,
        security_context: Option<RunAs>,
        liveness_probe: Option<Probe>,
        readiness_probe: Option<Probe>,
        startup_probe: Option<Probe>,
    }

    /// What probe rewriting reads of a probe.
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        http_get: Option<core::HTTPGetAction>,
        grpc: Option<core::GRPCAction>,
        timeout_seconds: Option<i32>,
    }

    impl From<Probe> for core::Probe {
        fn from(p: Probe) -> Self {
            core::Probe {
                http_get: p.http_get,
                grpc: p.grpc,
                timeout_seconds: p.timeout_seconds,
                ..Default::default()
            }
        }
    }

    #[derive(Deserialize)]
    struct Named {
        name: Option<String>,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct RunAs {
        run_as_user: Option<i64>,
        run_as_group: Option<i64>,
    }

    impl From<Container> for core::Container {
        fn from(c: Container) -> Self {
            core::Container {
                name: c.name.unwrap_or_default(),
                ports: c.ports,
                security_context: c.security_context.map(|s| core::SecurityContext {
                    run_as_user: s.run_as_user,
                    run_as_group: s.run_as_group,
                    ..Default::default()
                }),
                liveness_probe: c.liveness_probe.map(Into::into),
                readiness_probe: c.readiness_probe.map(Into::into),
                startup_probe: c.startup_probe.map(Into::into),
                ..Default::default()
            }
        }
    }

    fn containers(list: Option<Vec<Container>>) -> Option<Vec<core::Container>> {
        list.map(|cs| cs.into_iter().map(Into::into).collect())
    }

    impl TryFrom<Pod> for super::PodForInjection {
        type Error = String;

        /// Refuses another type, as [`core::Pod`] does.
        fn try_from(pod: Pod) -> Result<Self, String> {
            for (field, value, expected) in [
                ("apiVersion", &pod.api_version, "v1"),
                ("kind", &pod.kind, "Pod"),
            ] {
                if let Some(value) = value.as_deref().filter(|v| *v != expected) {
                    return Err(format!("{field} is `{value}`, expected `{expected}`"));
                }
            }
            let metadata = pod
                .metadata
                .map_or_else(ObjectMeta::default, |m| ObjectMeta {
                    name: m.name,
                    generate_name: m.generate_name,
                    namespace: m.namespace,
                    labels: m.labels,
                    annotations: m.annotations,
                    owner_references: m.owner_references,
                    ..Default::default()
                });
            let spec = pod.spec.map(|s| core::PodSpec {
                containers: containers(s.containers).unwrap_or_default(),
                init_containers: containers(s.init_containers),
                ephemeral_containers: s.ephemeral_containers.map(|cs| {
                    cs.into_iter()
                        .map(|c| core::EphemeralContainer {
                            name: c.name.unwrap_or_default(),
                            ..Default::default()
                        })
                        .collect()
                }),
                volumes: s.volumes.map(|vs| {
                    vs.into_iter()
                        .map(|v| core::Volume {
                            name: v.name.unwrap_or_default(),
                            ..Default::default()
                        })
                        .collect()
                }),
                host_network: s.host_network,
                security_context: s.security_context.map(|s| core::PodSecurityContext {
                    run_as_user: s.run_as_user,
                    run_as_group: s.run_as_group,
                    ..Default::default()
                }),
                service_account_name: s.service_account_name,
                service_account: s.service_account,
                restart_policy: s.restart_policy,
                image_pull_secrets: s.image_pull_secrets,
                ..Default::default()
            });
            Ok(super::PodForInjection(core::Pod {
                metadata,
                spec,
                status: None,
            }))
        }
    }
}

/// What the injector writes into a pod's metadata besides its status.
struct Metadata {
    /// `meshd.io/workload`, when the pod does not name its workload.
    workload: Option<String>,
    /// Whether to add the Prometheus scrape annotations the pod lacks.
    scrape: bool,
}

/// The workload a pod's proxy reports its metrics as: its controller's
/// name, the Deployment's for a ReplicaSet's pods (the ReplicaSet's name
/// less its `pod-template-hash`) and the CronJob's for a Job's pods (the
/// Job's name less its schedule suffix), so replicas and rollouts add up;
/// a pod without one goes by its generateName, else its name.
fn workload_name(pod: &Pod) -> String {
    let meta = &pod.metadata;
    let controller = meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    let trim = |name: &str, suffix: Option<&str>| -> String {
        suffix
            .and_then(|s| name.strip_suffix(s))
            .and_then(|n| n.strip_suffix('-'))
            .filter(|n| !n.is_empty())
            .unwrap_or(name)
            .to_string()
    };
    let name = match controller {
        Some(owner) if owner.kind == "ReplicaSet" => {
            let hash = meta
                .labels
                .as_ref()
                .and_then(|l| l.get("pod-template-hash"))
                .map(String::as_str);
            trim(&owner.name, hash)
        }
        // A CronJob's template (offline injection) is named after it.
        Some(owner) if owner.kind == "Job" => {
            // A CronJob names its Jobs `<cronjob>-<minutes since epoch>`.
            match owner.name.rsplit_once('-') {
                Some((cron, n)) if n.len() >= 8 && n.bytes().all(|b| b.is_ascii_digit()) => {
                    cron.to_string()
                }
                _ => owner.name.clone(),
            }
        }
        Some(owner) => owner.name.clone(),
        None => match (&meta.generate_name, &meta.name) {
            (Some(prefix), _) if !prefix.trim_end_matches('-').is_empty() => {
                prefix.trim_end_matches('-').to_string()
            }
            (_, Some(name)) => name.clone(),
            _ => "unknown".to_string(),
        },
    };
    if annotations::valid_workload(&name) {
        name
    } else {
        "unknown".to_string()
    }
}

/// The pod's service account: its identity.
fn service_account(spec: &PodSpec) -> Result<String> {
    let name = spec
        .service_account_name
        .as_deref()
        .or(spec.service_account.as_deref())
        .filter(|s| !s.is_empty())
        .unwrap_or("default");
    let secret = identity_secret_name(name);
    let valid = secret.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if !valid {
        return Err(InjectError::InvalidPod(format!(
            "spec.serviceAccountName `{name}` cannot name the identity Secret `{secret}`; accepted: a DNS subdomain (lowercase letters, digits, '-', '.') of at most {} characters",
            253 - identity_secret_name("").len()
        )));
    }
    Ok(name.to_string())
}

/// The mesh-wide settings, validated.
struct MeshDefaults {
    cpu_request: Quantity,
    memory_request: Quantity,
    cpu_limit: Quantity,
    memory_limit: Quantity,
    log_level: &'static str,
    concurrency: u32,
    /// The bootstrap of a pod without rewritten probes, rendered.
    bootstrap: String,
    /// What it was rendered from, for pods with probes.
    bootstrap_config: BootstrapConfig,
}

fn invalid_setting(setting: &str, value: impl ToString, accepted: impl ToString) -> InjectError {
    InjectError::InvalidConfig {
        setting: setting.to_string(),
        value: value.to_string(),
        accepted: accepted.to_string(),
    }
}

impl MeshDefaults {
    fn from_config(config: &InjectorConfig) -> Result<MeshDefaults> {
        let quantity = |setting: &str, value: &str, resource| {
            let accepted = annotations::doc(match resource {
                Resource::Cpu => annotations::PROXY_CPU,
                Resource::Memory => annotations::PROXY_MEMORY,
            })
            .map_or("", |d| d.accepted);
            Quantity::parse(value, resource)
                .ok_or_else(|| invalid_setting(setting, value, accepted))
        };
        for (setting, value) in [
            ("proxyImage", &config.proxy_image),
            ("initImage", &config.init_image),
        ] {
            if value.trim().is_empty() || value.chars().any(char::is_whitespace) {
                return Err(invalid_setting(
                    setting,
                    value,
                    "a container image reference",
                ));
            }
        }
        let log_level = annotations::parse_log_level(&config.proxy_log_level).ok_or_else(|| {
            invalid_setting(
                "proxyLogLevel",
                &config.proxy_log_level,
                annotations::LOG_LEVELS.join(", "),
            )
        })?;
        if config.proxy_concurrency > annotations::MAX_CONCURRENCY {
            return Err(invalid_setting(
                "proxyConcurrency",
                config.proxy_concurrency,
                "a whole number 0-64",
            ));
        }
        for secret in &config.image_pull_secrets {
            if !dns_subdomain(secret) {
                return Err(invalid_setting(
                    "imagePullSecrets",
                    secret,
                    "names of Secrets in the workloads' namespaces: DNS subdomains (lowercase letters, digits, '-', '.'), at most 253 characters",
                ));
            }
        }
        let bootstrap_config = proxy_bootstrap_config(config)?;
        if config.control_plane_namespace.is_empty() {
            return Err(invalid_setting(
                "controlPlaneNamespace",
                "",
                "the control plane's namespace",
            ));
        }
        Ok(MeshDefaults {
            cpu_request: quantity("proxyCpuRequest", &config.proxy_cpu_request, Resource::Cpu)?,
            memory_request: quantity(
                "proxyMemoryRequest",
                &config.proxy_memory_request,
                Resource::Memory,
            )?,
            cpu_limit: quantity("proxyCpuLimit", &config.proxy_cpu_limit, Resource::Cpu)?,
            memory_limit: quantity(
                "proxyMemoryLimit",
                &config.proxy_memory_limit,
                Resource::Memory,
            )?,
            log_level,
            concurrency: config.proxy_concurrency,
            bootstrap: render_bootstrap(&bootstrap_config),
            bootstrap_config,
        })
    }
}

/// A Kubernetes object name that is a DNS subdomain (RFC 1123), as
/// Secrets' names are.
fn dns_subdomain(name: &str) -> bool {
    let alphanumeric = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 253
        && bytes
            .iter()
            .all(|&b| alphanumeric(b) || b == b'-' || b == b'.')
        && name.split('.').all(|label| {
            label.bytes().next().is_some_and(alphanumeric)
                && label.bytes().last().is_some_and(alphanumeric)
        })
}

/// Splits `host:port` (`[v6]:port` for IPv6 addresses).
fn parse_xds_address(value: &str) -> Option<(String, u16)> {
    let (host, port) = value.rsplit_once(':')?;
    let port = port.parse::<u16>().ok().filter(|p| *p != 0)?;
    let host = match host.strip_prefix('[') {
        Some(v6) => {
            let v6 = v6.strip_suffix(']')?;
            v6.parse::<std::net::Ipv6Addr>().ok()?;
            v6
        }
        None => host,
    };
    let dns_name = |h: &str| {
        !h.is_empty()
            && h.len() <= 253
            && h.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            })
    };
    (host.parse::<IpAddr>().is_ok() || dns_name(host)).then(|| (host.to_string(), port))
}

/// What injection needs from one configuration, worked out once: the
/// validated settings (the bootstrap among them, a sixth of a review's
/// cost when it was rendered for every pod) and the containers rendered for
/// each [`Plan`] seen.
struct Prepared {
    config: InjectorConfig,
    defaults: MeshDefaults,
    /// The most recent plans first. Bounded: pods choose their overrides,
    /// and an unusual combination is only rendered again.
    rendered: Mutex<Vec<Arc<Rendered>>>,
}

/// How many plans a configuration keeps rendered. Pods with probes have a
/// plan per probe set, so about one per workload.
const RENDERED_PLANS: usize = 64;

impl Prepared {
    /// The preparation for `config`: the last one when the configuration
    /// has not changed (the webhook and `meshd inject` use one at a time).
    fn for_config(config: &InjectorConfig) -> Result<Arc<Prepared>> {
        static LAST: Mutex<Option<Arc<Prepared>>> = Mutex::new(None);
        let mut last = LAST.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(prepared) = last.as_ref()
            && prepared.config == *config
        {
            return Ok(prepared.clone());
        }
        let prepared = Arc::new(Prepared {
            config: config.clone(),
            defaults: MeshDefaults::from_config(config)?,
            rendered: Mutex::default(),
        });
        *last = Some(prepared.clone());
        Ok(prepared)
    }

    /// The containers of `plan`, rendered on first use.
    fn rendered(&self, plan: Plan) -> Result<Arc<Rendered>> {
        let lock = || self.rendered.lock().unwrap_or_else(PoisonError::into_inner);
        {
            let mut cache = lock();
            if let Some(i) = cache.iter().position(|r| r.plan == plan) {
                let found = cache[i].clone();
                if i > 0 {
                    // Keep the plans in use at the front.
                    cache[..=i].rotate_right(1);
                }
                return Ok(found);
            }
        }
        let rendered = Arc::new(Rendered::new(plan, &self.config, &self.defaults)?);
        let mut cache = lock();
        cache.insert(0, rendered.clone());
        cache.truncate(RENDERED_PLANS);
        Ok(rendered)
    }
}

/// The Envoy bootstrap's settings, checked, without app probes.
fn proxy_bootstrap_config(config: &InjectorConfig) -> Result<BootstrapConfig> {
    let (xds_host, xds_port) = parse_xds_address(&config.xds_address).ok_or_else(|| {
        invalid_setting(
            "xdsAddress",
            &config.xds_address,
            "host:port, the host a DNS name or an IP ([v6]:port), the port 1-65535",
        )
    })?;
    let xds_protocol = XdsProtocol::parse(&config.xds_protocol).ok_or_else(|| {
        invalid_setting("xdsProtocol", &config.xds_protocol, XdsProtocol::ACCEPTED)
    })?;
    meshd_ca::SpiffeId::parse(&config.control_plane_id).map_err(|_| {
        invalid_setting(
            "controlPlaneId",
            &config.control_plane_id,
            "a SPIFFE ID like spiffe://cluster.local/ns/meshd-system/sa/meshd",
        )
    })?;
    let pod_ref = format!("$({POD_NAME_ENV})");
    let namespace_ref = format!("$({POD_NAMESPACE_ENV})");
    let mut bootstrap = BootstrapConfig::new(namespace_ref, pod_ref);
    bootstrap.workload = format!("$({WORKLOAD_ENV})");
    bootstrap.service_account = format!("$({SERVICE_ACCOUNT_ENV})");
    // Workloads share the control plane's trust domain.
    if let Some(domain) = config
        .control_plane_id
        .strip_prefix("spiffe://")
        .and_then(|rest| rest.split('/').next())
    {
        bootstrap.trust_domain = domain.to_string();
    }
    bootstrap.xds_host = xds_host;
    bootstrap.xds_port = xds_port;
    bootstrap.xds_protocol = xds_protocol;
    bootstrap.admin = SocketAddr::from(([127, 0, 0, 1], ports::ADMIN));
    bootstrap.proxy_address = IpAddr::from([0, 0, 0, 0]);
    bootstrap.identity_dir = Some(PathBuf::from(IDENTITY_MOUNT));
    bootstrap.control_plane_id = config.control_plane_id.clone();
    Ok(bootstrap)
}

/// The Envoy bootstrap as compact JSON, ready to be one element of the
/// container's `args`. It names the node with the downward-API variables;
/// Kubernetes substitutes them (and `--service-node` says the same), so every
/// other `$` (a probe path may hold one) is doubled to stay literal.
fn render_bootstrap(bootstrap: &BootstrapConfig) -> String {
    let mut json = bootstrap::render(bootstrap).to_string().replace('$', "$$");
    for env in [
        POD_NAME_ENV,
        POD_NAMESPACE_ENV,
        WORKLOAD_ENV,
        SERVICE_ACCOUNT_ENV,
    ] {
        let reference = format!("$({env})");
        json = json.replace(&format!("${reference}"), &reference);
    }
    json
}

/// One app probe the injector points at the proxy.
#[derive(Clone, Debug)]
struct ProbeRewrite {
    /// The index of the container in `spec.containers`.
    container: usize,
    /// The probe's field: `livenessProbe`, `readinessProbe`, `startupProbe`.
    field: &'static str,
    /// The last part of its path: `livez`, `readyz`, `startupz`.
    kind: &'static str,
    target: ProbeTarget,
}

#[derive(Clone, Debug)]
enum ProbeTarget {
    /// An `httpGet` probe, as the pod has it, and the path the proxy
    /// serves it on.
    Http {
        http_get: HTTPGetAction,
        app: AppProbe,
    },
    /// A `grpc` probe: the app's gRPC port it reaches, and how long kubelet
    /// waits. Only its port changes (to the readiness port); the service it
    /// names stays.
    Grpc { port: u16, timeout: Duration },
}

/// What the proxy's bootstrap serves for the probes of a pod.
struct ProxiedProbes {
    http: Vec<AppProbe>,
    grpc: Option<GrpcProbe>,
    /// `<container>/<kind>` of each gRPC probe, for `meshd.io/status`.
    grpc_names: Vec<String>,
}

impl ProxiedProbes {
    /// Refuses gRPC probes of more than one port: kubelet's gRPC health
    /// check carries no path or header that tells the proxy which port it
    /// was meant for, so the readiness port can forward to one only.
    fn of(spec: &PodSpec, rewrites: &[ProbeRewrite]) -> Result<ProxiedProbes> {
        let mut probes = ProxiedProbes {
            http: Vec::new(),
            grpc: None,
            grpc_names: Vec::new(),
        };
        let mut first_grpc: Option<&ProbeRewrite> = None;
        for rewrite in rewrites {
            let (port, timeout) = match &rewrite.target {
                ProbeTarget::Http { app, .. } => {
                    probes.http.push(app.clone());
                    continue;
                }
                ProbeTarget::Grpc { port, timeout } => (*port, *timeout),
            };
            let name = &spec.containers[rewrite.container].name;
            probes.grpc_names.push(format!("{name}/{}", rewrite.kind));
            match (&mut probes.grpc, first_grpc) {
                (Some(grpc), Some(first)) => {
                    if grpc.port != port {
                        let at = |r: &ProbeRewrite| {
                            format!(
                                "spec.containers[{}].{}.grpc.port",
                                spec.containers[r.container].name, r.field
                            )
                        };
                        return Err(InjectError::InvalidPod(format!(
                            "{} is {} and {} is {port}: the proxy can carry the gRPC probes of one port only (kubelet's gRPC health check names nothing to tell ports apart by); accepted: gRPC probes on one port (one health service can answer for several services by name), or {}: \"false\" to leave the probes as they are (they then fail under STRICT mTLS)",
                            at(first),
                            grpc.port,
                            at(rewrite),
                            annotations::REWRITE_APP_PROBES
                        )));
                    }
                    // One route for all of them: the longest wait.
                    grpc.timeout = grpc.timeout.max(timeout);
                }
                _ => {
                    probes.grpc = Some(GrpcProbe { port, timeout });
                    first_grpc = Some(rewrite);
                }
            }
        }
        Ok(probes)
    }
}

/// The probe fields rewritten, in the order of their JSON names (which is
/// the order of the patch operations), with the last part of their path.
const PROBE_FIELDS: [(&str, &str); 3] = [
    ("livenessProbe", "livez"),
    ("readinessProbe", "readyz"),
    ("startupProbe", "startupz"),
];

/// The app probes of `spec.containers` the proxy can serve.
/// The probes to send through the proxy: none when the pod (or, unless
/// the pod says otherwise, the mesh) opts out.
fn app_probe_rewrites(
    spec: &PodSpec,
    overrides: &annotations::Overrides,
    config: &InjectorConfig,
) -> Vec<ProbeRewrite> {
    if overrides
        .rewrite_app_probes
        .unwrap_or(config.rewrite_app_probes)
    {
        probe_rewrites(spec)
    } else {
        Vec::new()
    }
}

fn probe_rewrites(spec: &PodSpec) -> Vec<ProbeRewrite> {
    let mut rewrites = Vec::new();
    for (index, c) in spec.containers.iter().enumerate() {
        // Container names are DNS labels once the API server has validated
        // the pod; anything else would make a path Envoy might refuse.
        let plain_name = !c.name.is_empty()
            && c.name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !plain_name {
            continue;
        }
        let probes = [&c.liveness_probe, &c.readiness_probe, &c.startup_probe];
        for ((field, kind), probe) in PROBE_FIELDS.into_iter().zip(probes) {
            let Some(probe) = probe else { continue };
            let target = if let Some(http_get) = &probe.http_get {
                app_probe(c, kind, http_get, probe.timeout_seconds).map(|app| ProbeTarget::Http {
                    http_get: http_get.clone(),
                    app,
                })
            } else if let Some(grpc) = &probe.grpc {
                u16::try_from(grpc.port)
                    .ok()
                    .filter(|p| *p > 0 && !PROXY_PORTS.contains(p))
                    .map(|port| ProbeTarget::Grpc {
                        port,
                        timeout: probe_timeout(probe.timeout_seconds),
                    })
            } else {
                None
            };
            let Some(target) = target else { continue };
            rewrites.push(ProbeRewrite {
                container: index,
                field,
                kind,
                target,
            });
        }
    }
    rewrites
}

/// The probe as the proxy serves it, or `None` when it stays as it is.
fn app_probe(
    c: &Container,
    kind: &str,
    http_get: &HTTPGetAction,
    timeout_seconds: Option<i32>,
) -> Option<AppProbe> {
    // A probe of another host is not the app's.
    if http_get.host.as_deref().is_some_and(|h| !h.is_empty()) {
        return None;
    }
    // HTTPS would need the proxy to originate TLS to the app.
    if !matches!(http_get.scheme.as_deref(), None | Some("HTTP")) {
        return None;
    }
    let port = probe_port(c, &http_get.port)?;
    if PROXY_PORTS.contains(&port) {
        return None;
    }
    // Kubelet asks for `/` without a path and adds the leading slash.
    let path = http_get.path.as_deref().unwrap_or_default();
    let original_path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    // Printable ASCII only, without a fragment: what a request line carries
    // as it is.
    if !original_path
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b'#')
    {
        return None;
    }
    Some(AppProbe {
        path: format!("{APP_HEALTH_PREFIX}{}/{kind}", c.name),
        port,
        original_path,
        timeout: probe_timeout(timeout_seconds),
    })
}

/// A probe's `timeoutSeconds` as kubelet reads it: 1 when unset, at least 1.
fn probe_timeout(timeout_seconds: Option<i32>) -> Duration {
    let seconds = u64::try_from(timeout_seconds.unwrap_or(1))
        .unwrap_or(1)
        .max(1);
    Duration::from_secs(seconds)
}

/// The port a probe reaches, as kubelet resolves it: a number, or the name
/// of one of the container's ports (else a number written as a string).
fn probe_port(c: &Container, port: &IntOrString) -> Option<u16> {
    let number = match port {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port)
            .or_else(|| name.parse().ok())?,
    };
    u16::try_from(number).ok().filter(|p| *p > 0)
}

/// Everything decided about one pod's sidecar, before any of it is built:
/// what the pod's overrides make of the mesh settings. With the
/// configuration, it determines the injected containers entirely, so it is
/// also what their rendering is cached by.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Plan {
    native: bool,
    /// `None` with `meshd.io/interception: none`: no init container.
    capture: Option<CaptureConfig>,
    cpu_request: Quantity,
    memory_request: Quantity,
    cpu_limit: Quantity,
    memory_limit: Quantity,
    log_level: String,
    concurrency: u32,
    /// The app probes the proxy serves; they are part of its bootstrap.
    app_probes: Vec<AppProbe>,
    /// Where the app's gRPC probes go, and which they are (`<container>/<kind>`).
    grpc_probe: Option<GrpcProbe>,
    grpc_probes: Vec<String>,
}

/// Picks the pod's value over the mesh's and checks request <= limit, as
/// the API server would (but naming the annotation).
fn resources(
    what: &str,
    (request_annotation, request_setting, request): (&str, &str, (Option<Quantity>, Quantity)),
    (limit_annotation, limit_setting, limit): (&str, &str, (Option<Quantity>, Quantity)),
) -> Result<(Quantity, Quantity)> {
    let (request_override, request_default) = request;
    let (limit_override, limit_default) = limit;
    let request_from_pod = request_override.is_some();
    let limit_from_pod = limit_override.is_some();
    let request = request_override.unwrap_or(request_default);
    let limit = limit_override.unwrap_or(limit_default);
    if request <= limit {
        return Ok((request, limit));
    }
    let limit_source = if limit_from_pod {
        limit_annotation.to_string()
    } else {
        format!("the mesh setting {limit_setting}")
    };
    Err(if request_from_pod {
        annotations::Error::InvalidAnnotation {
            annotation: request_annotation.into(),
            value: request.to_string(),
            accepted: format!(
                "a quantity no larger than the proxy's {what} limit {limit} ({limit_source}); raise {limit_annotation} too"
            ),
        }
        .into()
    } else if limit_from_pod {
        annotations::Error::InvalidAnnotation {
            annotation: limit_annotation.into(),
            value: limit.to_string(),
            accepted: format!(
                "a quantity no smaller than the proxy's {what} request {request} (the mesh setting {request_setting}); lower {request_annotation} too"
            ),
        }
        .into()
    } else {
        invalid_setting(
            request_setting,
            request,
            format!("a quantity no larger than {limit_setting} ({limit})"),
        )
    })
}

impl Plan {
    fn new(
        config: &InjectorConfig,
        defaults: &MeshDefaults,
        overrides: &Overrides,
        app_probes: Vec<AppProbe>,
    ) -> Result<Plan> {
        let (cpu_request, cpu_limit) = resources(
            "CPU",
            (
                annotations::PROXY_CPU,
                "proxyCpuRequest",
                (overrides.proxy_cpu.clone(), defaults.cpu_request.clone()),
            ),
            (
                annotations::PROXY_CPU_LIMIT,
                "proxyCpuLimit",
                (
                    overrides.proxy_cpu_limit.clone(),
                    defaults.cpu_limit.clone(),
                ),
            ),
        )?;
        let (memory_request, memory_limit) = resources(
            "memory",
            (
                annotations::PROXY_MEMORY,
                "proxyMemoryRequest",
                (
                    overrides.proxy_memory.clone(),
                    defaults.memory_request.clone(),
                ),
            ),
            (
                annotations::PROXY_MEMORY_LIMIT,
                "proxyMemoryLimit",
                (
                    overrides.proxy_memory_limit.clone(),
                    defaults.memory_limit.clone(),
                ),
            ),
        )?;
        if overrides.interception == Interception::None {
            // Exclusions from a capture that is not installed would be
            // silently ignored: say so instead.
            let ports = |p: &[u16]| p.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
            let cidrs = overrides
                .exclude_outbound_cidrs
                .iter()
                .map(|c| format!("{}/{}", c.address, c.prefix))
                .collect::<Vec<_>>()
                .join(",");
            for (annotation, value) in [
                (
                    annotations::EXCLUDE_INBOUND_PORTS,
                    ports(&overrides.exclude_inbound_ports),
                ),
                (
                    annotations::EXCLUDE_OUTBOUND_PORTS,
                    ports(&overrides.exclude_outbound_ports),
                ),
                (annotations::EXCLUDE_OUTBOUND_CIDRS, cidrs),
            ] {
                if !value.is_empty() {
                    return Err(annotations::Error::InvalidAnnotation {
                        annotation: annotation.into(),
                        value,
                        accepted: format!(
                            "nothing with {}: none, which captures no traffic to exclude from",
                            annotations::INTERCEPTION
                        ),
                    }
                    .into());
                }
            }
        }
        let capture = (overrides.interception == Interception::Redirect).then(|| CaptureConfig {
            exclude_inbound_ports: overrides.exclude_inbound_ports.clone(),
            exclude_outbound_ports: overrides.exclude_outbound_ports.clone(),
            exclude_outbound_cidrs: overrides.exclude_outbound_cidrs.clone(),
            ..Default::default()
        });
        Ok(Plan {
            native: overrides.native_sidecar.unwrap_or(config.native_sidecar),
            capture,
            cpu_request,
            memory_request,
            cpu_limit,
            memory_limit,
            log_level: overrides
                .log_level
                .clone()
                .unwrap_or_else(|| defaults.log_level.to_string()),
            concurrency: overrides.concurrency.unwrap_or(defaults.concurrency),
            app_probes,
            grpc_probe: None,
            grpc_probes: Vec::new(),
        })
    }

    fn proxy_container(&self, config: &InjectorConfig, bootstrap: &str) -> Container {
        let mut args: Vec<String> = vec![
            "--service-node".into(),
            format!("$({POD_NAME_ENV}).$({POD_NAMESPACE_ENV})"),
            "--service-cluster".into(),
            format!("$({POD_NAMESPACE_ENV})"),
            "--log-level".into(),
            self.log_level.clone(),
        ];
        // 0 means "one worker per CPU", which is Envoy's own default: say
        // nothing rather than rely on how Envoy reads 0.
        if self.concurrency > 0 {
            args.extend(["--concurrency".into(), self.concurrency.to_string()]);
        }
        args.extend([
            "--disable-hot-restart".into(),
            "--drain-time-s".into(),
            config.drain_seconds.to_string(),
            "--config-yaml".into(),
            bootstrap.to_string(),
        ]);
        let field = |name: &str, path: &str| EnvVar {
            name: name.into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    api_version: Some("v1".into()),
                    field_path: path.into(),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let ready = |period: i32, failures: i32| Probe {
            http_get: Some(HTTPGetAction {
                path: Some(READY_PATH.into()),
                port: IntOrString::Int(ports::READINESS.into()),
                scheme: Some("HTTP".into()),
                ..Default::default()
            }),
            period_seconds: Some(period),
            timeout_seconds: Some(3),
            failure_threshold: Some(failures),
            success_threshold: Some(1),
            ..Default::default()
        };
        let proxy_id = i64::from(PROXY_UID);
        Container {
            name: PROXY_CONTAINER.into(),
            image: Some(config.proxy_image.clone()),
            command: Some(vec!["envoy".into()]),
            args: Some(args),
            env: Some(vec![
                field(POD_NAME_ENV, "metadata.name"),
                field(POD_NAMESPACE_ENV, "metadata.namespace"),
                field(
                    WORKLOAD_ENV,
                    &format!("metadata.annotations['{}']", annotations::WORKLOAD),
                ),
                field(SERVICE_ACCOUNT_ENV, "spec.serviceAccountName"),
                // Names the workload in the proxy's spans (Kubernetes
                // expands the reference to the variable above).
                EnvVar {
                    name: TRACING_RESOURCE_ENV.into(),
                    value: Some(tracing_resource(&format!("$({WORKLOAD_ENV})"))),
                    ..Default::default()
                },
            ]),
            ports: Some(
                DECLARED_PORTS
                    .iter()
                    .map(|(name, port)| ContainerPort {
                        name: Some((*name).into()),
                        container_port: (*port).into(),
                        protocol: Some("TCP".into()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            resources: Some(ResourceRequirements {
                requests: Some(BTreeMap::from([
                    ("cpu".into(), K8sQuantity(self.cpu_request.to_string())),
                    (
                        "memory".into(),
                        K8sQuantity(self.memory_request.to_string()),
                    ),
                ])),
                limits: Some(BTreeMap::from([
                    ("cpu".into(), K8sQuantity(self.cpu_limit.to_string())),
                    ("memory".into(), K8sQuantity(self.memory_limit.to_string())),
                ])),
                ..Default::default()
            }),
            security_context: Some(SecurityContext {
                run_as_user: Some(proxy_id),
                run_as_group: Some(proxy_id),
                run_as_non_root: Some(true),
                read_only_root_filesystem: Some(true),
                allow_privilege_escalation: Some(false),
                privileged: Some(false),
                capabilities: Some(Capabilities {
                    drop: Some(vec!["ALL".into()]),
                    add: None,
                }),
                ..Default::default()
            }),
            readiness_probe: Some(ready(2, 3)),
            // Native: the next init container (and the app) starts only
            // once the proxy is ready; allow it ten minutes to get there.
            startup_probe: self.native.then(|| ready(1, 600)),
            restart_policy: self.native.then(|| "Always".into()),
            // Classic: the proxy gets SIGTERM together with the app; keep it
            // up while the app drains its own connections. A native sidecar
            // is stopped only after the app has exited, so waiting would
            // only delay the pod's end.
            lifecycle: (!self.native).then(|| Lifecycle {
                pre_stop: Some(LifecycleHandler {
                    sleep: Some(SleepAction {
                        seconds: config.drain_seconds.into(),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            volume_mounts: Some(vec![VolumeMount {
                name: IDENTITY_VOLUME.into(),
                mount_path: IDENTITY_MOUNT.into(),
                read_only: Some(true),
                ..Default::default()
            }]),
            termination_message_policy: Some("FallbackToLogsOnError".into()),
            ..Default::default()
        }
    }

    fn init_container(&self, config: &InjectorConfig) -> Option<Container> {
        let capture = self.capture.as_ref()?;
        let mut command: Vec<String> = vec!["meshd".into(), "capture".into()];
        let join = |items: Vec<String>| items.join(",");
        let ports = |ports: &[u16]| join(ports.iter().map(u16::to_string).collect());
        for (flag, value) in [
            (
                "--exclude-inbound-ports",
                ports(&capture.exclude_inbound_ports),
            ),
            (
                "--exclude-outbound-ports",
                ports(&capture.exclude_outbound_ports),
            ),
            (
                "--exclude-outbound-cidrs",
                join(
                    capture
                        .exclude_outbound_cidrs
                        .iter()
                        .map(|c| format!("{}/{}", c.address, c.prefix))
                        .collect(),
                ),
            ),
        ] {
            if !value.is_empty() {
                command.push(format!("{flag}={value}"));
            }
        }
        let quantities = |cpu: &str, memory: &str| {
            Some(BTreeMap::from([
                ("cpu".into(), K8sQuantity(cpu.into())),
                ("memory".into(), K8sQuantity(memory.into())),
            ]))
        };
        Some(Container {
            name: INIT_CONTAINER.into(),
            image: Some(config.init_image.clone()),
            command: Some(command),
            resources: Some(ResourceRequirements {
                requests: quantities("10m", "16Mi"),
                limits: quantities("100m", "64Mi"),
                ..Default::default()
            }),
            // iptables needs root with NET_ADMIN/NET_RAW in the pod's network
            // namespace: Kubernetes grants added capabilities only to UID 0.
            // These settings are the container's own, so they hold even when
            // the pod says runAsNonRoot: that pod-level default is for the
            // pod's containers, and this one exits before any of them starts.
            // Nothing else is granted: no privilege escalation, a read-only
            // root filesystem, every other capability dropped. (Namespaces
            // enforcing the baseline or restricted Pod Security Standard
            // refuse NET_ADMIN: meshed namespaces need `privileged`.)
            security_context: Some(SecurityContext {
                run_as_user: Some(0),
                run_as_non_root: Some(false),
                read_only_root_filesystem: Some(true),
                allow_privilege_escalation: Some(false),
                privileged: Some(false),
                capabilities: Some(Capabilities {
                    add: Some(vec!["NET_ADMIN".into(), "NET_RAW".into()]),
                    drop: Some(vec!["ALL".into()]),
                }),
                ..Default::default()
            }),
            termination_message_policy: Some("FallbackToLogsOnError".into()),
            ..Default::default()
        })
    }
}

fn identity_volume(service_account: &str) -> Volume {
    Volume {
        name: IDENTITY_VOLUME.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(identity_secret_name(service_account)),
            // World-readable inside the volume: Envoy runs as UID 1337,
            // which is not the files' owner and, without an fsGroup we would
            // have to impose on the whole pod, not their group either. Only
            // the proxy container mounts the volume, so no other container
            // of the pod can read the key.
            default_mode: Some(0o444),
            // Without its identity the proxy cannot reach the control plane:
            // better the pod waits for the Secret than starts unmeshed.
            optional: Some(false),
            items: None,
        }),
        ..Default::default()
    }
}

/// Refuses pods whose own names, ports or user IDs would collide with what
/// is injected: the API server would reject them less clearly, or, for the
/// proxy's UID, the pod would silently bypass its sidecar.
fn check_conflicts(spec: &PodSpec, plan: &Plan) -> Result<()> {
    let init = spec.init_containers.as_deref().unwrap_or_default();
    let lists = [
        ("containers", &spec.containers[..]),
        ("initContainers", init),
    ];
    let ephemeral = spec
        .ephemeral_containers
        .iter()
        .flatten()
        .map(|c| ("ephemeralContainers", c.name.as_str()));
    let names = lists
        .iter()
        .flat_map(|(list, cs)| cs.iter().map(move |c| (*list, c.name.as_str())))
        .chain(ephemeral);
    for (list, name) in names {
        if name == PROXY_CONTAINER || name == INIT_CONTAINER {
            return Err(InjectError::InvalidPod(format!(
                "spec.{list}: the name {name} is reserved for the injected containers ({PROXY_CONTAINER}, {INIT_CONTAINER}); accepted: any other container name"
            )));
        }
    }
    for volume in spec.volumes.iter().flatten() {
        if volume.name == IDENTITY_VOLUME {
            return Err(InjectError::InvalidPod(format!(
                "spec.volumes: the name {IDENTITY_VOLUME} is reserved for the proxy's identity; accepted: any other volume name"
            )));
        }
    }
    for (list, containers) in lists {
        for c in containers {
            for port in c.ports.iter().flatten() {
                if u16::try_from(port.container_port).is_ok_and(|p| PROXY_PORTS.contains(&p)) {
                    return Err(InjectError::InvalidPod(format!(
                        "spec.{list}[{}].ports: port {} is the proxy's; accepted: any port but {}",
                        c.name,
                        port.container_port,
                        PROXY_PORTS.map(|p| p.to_string()).join(", ")
                    )));
                }
                if let Some(name) = &port.name
                    && DECLARED_PORTS.iter().any(|(ours, _)| ours == name)
                {
                    return Err(InjectError::InvalidPod(format!(
                        "spec.{list}[{}].ports: the port name {name} is the proxy's; accepted: any name but {}",
                        c.name,
                        DECLARED_PORTS.map(|(n, _)| n).join(", ")
                    )));
                }
            }
        }
    }
    if plan.capture.is_some() {
        check_proxy_identity(spec, plan.native)?;
    }
    Ok(())
}

/// Refuses a classic-mode proxy in a pod meant to run to completion (every
/// Job's and CronJob's pod has `restartPolicy` `Never` or `OnFailure`): a
/// regular proxy container never exits, so the pod would never succeed and
/// its Job would never complete. A native sidecar is stopped by the kubelet
/// once the app containers have exited, which is why it is the way out.
/// (Making a regular container follow the app's exit would need the app or
/// its image to cooperate, or a shared process namespace: changes to the
/// user's manifests this injector does not make behind their back.)
fn check_completes(pod: &Pod, spec: &PodSpec, overrides: &Overrides, plan: &Plan) -> Result<()> {
    let policy = spec.restart_policy.as_deref().unwrap_or("Always");
    if plan.native || !matches!(policy, "Never" | "OnFailure") {
        return Ok(());
    }
    let job = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.kind == "Job" && o.api_version.starts_with("batch/"));
    let owner = job.map_or_else(String::new, |j| format!(" (the pod of Job {})", j.name));
    let classic = if overrides.native_sidecar == Some(false) {
        format!("{}: \"false\"", annotations::NATIVE_SIDECAR)
    } else {
        "the mesh setting nativeSidecar: false".to_string()
    };
    Err(InjectError::InvalidPod(format!(
        "spec.restartPolicy is {policy}{owner}: the pod runs to completion, but with {classic} the proxy is a regular container that never exits, so the pod (and its Job) would never complete; accepted: a native sidecar ({}: \"true\" in the pod template; Kubernetes 1.29 or later), or {}: \"false\" to leave the pod out of the mesh",
        annotations::NATIVE_SIDECAR,
        annotations::INJECT,
    )))
}

/// Capture lets the proxy's UID and GID through untouched (its own
/// connections must not loop back into it), so an app running as either
/// would bypass the mesh, mTLS included. In classic mode the pod's own init
/// containers run before capture and are not concerned.
fn check_proxy_identity(spec: &PodSpec, native: bool) -> Result<()> {
    let pod = spec.security_context.as_ref();
    let proxy_id = i64::from(PROXY_UID);
    let mut lists = vec![("containers", &spec.containers[..])];
    if native {
        lists.push((
            "initContainers",
            spec.init_containers.as_deref().unwrap_or_default(),
        ));
    }
    for (list, containers) in lists {
        for c in containers {
            let own = c.security_context.as_ref();
            let uid = own
                .and_then(|s| s.run_as_user)
                .or(pod.and_then(|p| p.run_as_user));
            let gid = own
                .and_then(|s| s.run_as_group)
                .or(pod.and_then(|p| p.run_as_group));
            for (what, id) in [("runAsUser", uid), ("runAsGroup", gid)] {
                if id == Some(proxy_id) {
                    return Err(InjectError::InvalidPod(format!(
                        "spec.{list}[{}] runs with {what} {proxy_id} (its own securityContext or the pod's), the proxy's, so its traffic would bypass the sidecar; accepted: any other ID, or {}: none",
                        c.name,
                        annotations::INTERCEPTION
                    )));
                }
            }
        }
    }
    Ok(())
}

/// The injected containers of one [`Plan`], serialised once and shared
/// by every pod with that plan (under one configuration).
#[derive(Debug)]
struct Rendered {
    plan: Plan,
    proxy: Arc<RenderedJson>,
    /// `None` without capture.
    init: Option<Arc<RenderedJson>>,
    /// The value of `meshd.io/status`.
    status: String,
}

/// A JSON value with its compact serialisation.
#[derive(Debug)]
struct RenderedJson {
    value: Value,
    json: String,
}

impl RenderedJson {
    fn new(what: &str, item: &impl Serialize) -> Result<RenderedJson> {
        let cannot = |e: serde_json::Error| {
            InjectError::InvalidPod(format!("the {what} cannot be serialised: {e}"))
        };
        // Through a `Value`, whose object keys are sorted: the same text a
        // `json_patch::Patch` holding the value serialises to.
        let value = serde_json::to_value(item).map_err(cannot)?;
        let json = serde_json::to_string(&value).map_err(cannot)?;
        Ok(RenderedJson { value, json })
    }
}

impl Rendered {
    fn new(plan: Plan, config: &InjectorConfig, defaults: &MeshDefaults) -> Result<Rendered> {
        let proxy = if plan.app_probes.is_empty() && plan.grpc_probe.is_none() {
            plan.proxy_container(config, &defaults.bootstrap)
        } else {
            let mut bootstrap = defaults.bootstrap_config.clone();
            bootstrap.app_probes = plan.app_probes.clone();
            bootstrap.grpc_probe = plan.grpc_probe.clone();
            plan.proxy_container(config, &render_bootstrap(&bootstrap))
        };
        let init = plan.init_container(config);
        let mut status = Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        };
        // In the order `PodPatch::build` adds them.
        status
            .init_containers
            .extend(init.as_ref().map(|c| c.name.clone()));
        if plan.native {
            status.init_containers.push(proxy.name.clone());
        } else {
            status.containers.push(proxy.name.clone());
        }
        status.volumes.push(IDENTITY_VOLUME.to_string());
        status.app_probes = plan.app_probes.iter().map(|p| p.path.clone()).collect();
        status.grpc_probes = plan.grpc_probes.clone();
        let status = serde_json::to_string(&status).map_err(|e| {
            InjectError::InvalidPod(format!(
                "the {} annotation cannot be serialised: {e}",
                annotations::STATUS
            ))
        })?;
        Ok(Rendered {
            proxy: Arc::new(RenderedJson::new("proxy container", &proxy)?),
            init: init
                .map(|init| RenderedJson::new("init container", &init).map(Arc::new))
                .transpose()?,
            status,
            plan,
        })
    }
}

/// The JSON Patch that injects a pod: `add` operations at known paths,
/// built without serialising the pod. Its values are either built for the
/// pod (the identity volume, labels, annotations) or the containers
/// rendered for its plan, shared and written out as already-serialised
/// JSON.
///
/// What it adds, in this order:
///
/// - `spec.initContainers`: native, `meshd-init` and `meshd-proxy` at the
///   front; classic, `meshd-init` at the end (the pod's own init containers
///   run before capture). A pod without the list gets it whole.
/// - `spec.containers`: classic, `meshd-proxy` at the front.
/// - `spec.volumes`: the identity volume at the end (or the list whole).
/// - `metadata.annotations`: `kubectl.kubernetes.io/default-container`
///   (classic, naming the pod's first container, unless the pod says which
///   already), then `meshd.io/status` (or the map whole).
/// - `metadata.labels`: `meshd.io/proxy: "true"`, replacing another value
///   (or the map whole).
/// - `spec.containers[i].<probe>.httpGet`: `path`, `port` and `scheme` of
///   each rewritten app probe, field by field (the rest of the probe, its
///   headers and timings, is the pod's).
/// - `spec.imagePullSecrets`: the mesh's pull secrets the pod does not
///   list yet, at the end (or the list whole).
/// - classic without capture, a pod's empty `spec.initContainers` is
///   removed.
///
/// Inserting by index matters: applied by the API server to the pod it
/// holds, a patch that rewrote the lists field by field would leave any
/// field this crate's Pod type does not know (a newer Kubernetes) on the
/// wrong container.
#[derive(Clone, Debug)]
pub struct PodPatch {
    operations: Vec<Operation>,
}

#[derive(Clone, Debug)]
struct Operation {
    op: Op,
    path: PointerBuf,
    /// `None` for `remove`.
    value: Option<PatchValue>,
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Add,
    Replace,
    Remove,
}

/// Where in a list items are inserted.
#[derive(Clone, Copy, Debug)]
enum At {
    Front,
    End,
}

#[derive(Clone, Debug)]
enum PatchValue {
    Value(Value),
    Rendered(Arc<RenderedJson>),
    Array(Vec<PatchValue>),
}

impl PatchValue {
    fn to_value(&self) -> Value {
        match self {
            PatchValue::Value(value) => value.clone(),
            PatchValue::Rendered(rendered) => rendered.value.clone(),
            PatchValue::Array(items) => Value::Array(items.iter().map(Self::to_value).collect()),
        }
    }

    /// The length of the already-serialised JSON it holds.
    fn rendered_len(&self) -> usize {
        match self {
            PatchValue::Value(_) => 0,
            PatchValue::Rendered(rendered) => rendered.json.len(),
            PatchValue::Array(items) => items.iter().map(Self::rendered_len).sum(),
        }
    }

    fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        match self {
            PatchValue::Value(value) => serde_json::to_writer(&mut *out, value)?,
            PatchValue::Rendered(rendered) => out.extend_from_slice(rendered.json.as_bytes()),
            PatchValue::Array(items) => {
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    item.write_json(out)?;
                }
                out.push(b']');
            }
        }
        Ok(())
    }
}

impl PodPatch {
    fn build(
        pod: &Pod,
        spec: &PodSpec,
        rendered: &Rendered,
        service_account: &str,
        rewrites: &[ProbeRewrite],
        image_pull_secrets: &[String],
        metadata: &Metadata,
    ) -> Result<PodPatch> {
        let mut patch = PodPatch {
            operations: Vec::with_capacity(8 + 3 * rewrites.len()),
        };
        let proxy = || PatchValue::Rendered(rendered.proxy.clone());
        let init = rendered
            .init
            .as_ref()
            .map(|init| PatchValue::Rendered(init.clone()));
        let init_containers = spec.init_containers.as_ref().map(Vec::len);
        let mut remove_init_containers = false;
        if rendered.plan.native {
            // Capture, then the proxy (ready before the next one starts),
            // then the pod's own init containers, which thus have the mesh.
            let ours = init.into_iter().chain([proxy()]).collect();
            patch.insert("initContainers", init_containers, At::Front, ours);
        } else {
            // The pod's own init containers run before capture is installed:
            // there is no proxy yet to send their traffic to.
            match init {
                Some(init) => patch.insert("initContainers", init_containers, At::End, vec![init]),
                // Without capture nothing is added, but an empty list is
                // removed, as it always was (the patch used to be a diff
                // with the pod as built, which had no list rather than an
                // empty one). Harmless: an empty list is no list.
                None => remove_init_containers = init_containers == Some(0),
            }
            let containers = Some(spec.containers.len());
            patch.insert("containers", containers, At::Front, vec![proxy()]);
        }
        let volume = serde_json::to_value(identity_volume(service_account)).map_err(|e| {
            InjectError::InvalidPod(format!("the identity volume cannot be serialised: {e}"))
        })?;
        let volumes = spec.volumes.as_ref().map(Vec::len);
        patch.insert("volumes", volumes, At::End, vec![PatchValue::Value(volume)]);

        // The metadata after the spec, the annotations before the label and
        // keys in order: the order of the operations has not changed since
        // they came from a diff, which walks objects key by key.
        let default_container = spec
            .containers
            .first()
            .filter(|_| !rendered.plan.native)
            .map(|first| (DEFAULT_CONTAINER_ANNOTATION, first.name.as_str()));
        // Each added only where the pod has none of its own: a user's
        // prometheus.io settings are never overwritten.
        let mut added = Vec::with_capacity(6);
        added.extend(default_container);
        if let Some(workload) = &metadata.workload {
            added.push((annotations::WORKLOAD, workload.as_str()));
        }
        if metadata.scrape {
            added.extend(annotations::PROMETHEUS_SCRAPE_ANNOTATIONS);
        }
        added.push((annotations::STATUS, rendered.status.as_str()));
        added.sort_by_key(|(key, _)| *key);
        match &pod.metadata.annotations {
            None => {
                patch.add_map("annotations", &added);
            }
            Some(existing) => {
                for (key, value) in added {
                    if key == annotations::STATUS || !existing.contains_key(key) {
                        patch.add_key("annotations", key, value);
                    }
                }
            }
        }
        let label = (annotations::PROXY_LABEL, annotations::PROXY_LABEL_VALUE);
        match pod.metadata.labels.as_ref().map(|l| l.get(label.0)) {
            None => patch.add_map("labels", &[label]),
            Some(None) => patch.add_key("labels", label.0, label.1),
            Some(Some(value)) if value == label.1 => {}
            Some(Some(_)) => patch.operations.push(Operation {
                op: Op::Replace,
                path: PointerBuf::from_tokens(["metadata", "labels", label.0]),
                value: Some(PatchValue::Value(label.1.into())),
            }),
        }
        // Classic mode put the proxy in front of the pod's containers.
        let shift = usize::from(!rendered.plan.native);
        for rewrite in rewrites {
            patch.rewrite_probe(rewrite, rewrite.container + shift);
        }
        // The mesh's pull secrets after the pod's own, each once: the
        // kubelet tries them in turn for every image of the pod.
        let pod_secrets = spec.image_pull_secrets.as_deref();
        let mut missing: Vec<&str> = Vec::new();
        for name in image_pull_secrets {
            let present = pod_secrets
                .unwrap_or_default()
                .iter()
                .any(|s| s.name == *name);
            if !present && !missing.contains(&name.as_str()) {
                missing.push(name);
            }
        }
        if !missing.is_empty() {
            let items = missing
                .into_iter()
                .map(|name| PatchValue::Value(serde_json::json!({ "name": name })))
                .collect();
            patch.insert(
                "imagePullSecrets",
                pod_secrets.map(<[_]>::len),
                At::End,
                items,
            );
        }
        if remove_init_containers {
            patch.operations.push(Operation {
                op: Op::Remove,
                path: PointerBuf::from_tokens(["spec", "initContainers"]),
                value: None,
            });
        }
        Ok(patch)
    }

    /// Inserts `items` into the pod's `spec.<list>`, which holds `len`
    /// items, at its front or end. A pod without the list (`None`) gets it
    /// whole.
    fn insert(&mut self, list: &str, len: Option<usize>, at: At, items: Vec<PatchValue>) {
        let Some(len) = len else {
            self.operations.push(Operation {
                op: Op::Add,
                path: PointerBuf::from_tokens(["spec", list]),
                value: Some(PatchValue::Array(items)),
            });
            return;
        };
        let first = match at {
            At::Front => 0,
            At::End => len,
        };
        for (i, item) in items.into_iter().enumerate() {
            let mut path = PointerBuf::from_tokens(["spec", list]);
            path.push_back(first + i);
            self.operations.push(Operation {
                op: Op::Add,
                path,
                value: Some(item),
            });
        }
    }

    /// Points the probe of `rewrite` at the proxy: its `httpGet` path, port
    /// and scheme, each added or replaced only when it differs.
    fn rewrite_probe(&mut self, rewrite: &ProbeRewrite, index: usize) {
        let probe_path = || {
            let mut path = PointerBuf::from_tokens(["spec", "containers"]);
            path.push_back(index);
            path.push_back(rewrite.field);
            path
        };
        let (original, app) = match &rewrite.target {
            ProbeTarget::Http { http_get, app } => (http_get, app),
            ProbeTarget::Grpc { .. } => {
                // `port` is a required field of a gRPC probe, and differs
                // (a probe of the readiness port is not rewritten).
                let mut path = probe_path();
                path.push_back("grpc");
                path.push_back("port");
                self.operations.push(Operation {
                    op: Op::Replace,
                    path,
                    value: Some(PatchValue::Value(Value::from(ports::READINESS))),
                });
                return;
            }
        };
        let port = Value::from(ports::READINESS);
        let fields = [
            (
                "path",
                original.path.as_deref().map(Value::from),
                Value::from(app.path.as_str()),
            ),
            (
                "port",
                Some(match &original.port {
                    IntOrString::Int(n) => Value::from(*n),
                    IntOrString::String(s) => Value::from(s.as_str()),
                }),
                port,
            ),
            (
                "scheme",
                original.scheme.as_deref().map(Value::from),
                Value::from("HTTP"),
            ),
        ];
        for (key, before, after) in fields {
            let op = match before {
                None => Op::Add,
                Some(before) if before != after => Op::Replace,
                Some(_) => continue,
            };
            let mut path = probe_path();
            path.push_back("httpGet");
            path.push_back(key);
            self.operations.push(Operation {
                op,
                path,
                value: Some(PatchValue::Value(after)),
            });
        }
    }

    /// Adds `metadata.<map>`, which the pod lacks, holding `entries`.
    fn add_map(&mut self, map: &str, entries: &[(&str, &str)]) {
        let object = entries
            .iter()
            .map(|(k, v)| ((*k).to_string(), Value::from(*v)))
            .collect();
        self.operations.push(Operation {
            op: Op::Add,
            path: PointerBuf::from_tokens(["metadata", map]),
            value: Some(PatchValue::Value(Value::Object(object))),
        });
    }

    /// Adds `key` to the pod's `metadata.<map>`.
    fn add_key(&mut self, map: &str, key: &str, value: &str) {
        self.operations.push(Operation {
            op: Op::Add,
            path: PointerBuf::from_tokens(["metadata", map, key]),
            value: Some(PatchValue::Value(value.into())),
        });
    }

    /// How many operations the patch has.
    pub fn len(&self) -> usize {
        self.operations.len()
    }

    pub fn is_empty(&self) -> bool {
        self.operations.is_empty()
    }

    /// The patch as a `json_patch::Patch`, its values built out.
    pub fn to_patch(&self) -> json_patch::Patch {
        use json_patch::{AddOperation, PatchOperation, RemoveOperation, ReplaceOperation};
        let operations = self.operations.iter().map(|operation| {
            let path = operation.path.clone();
            let value = || {
                operation
                    .value
                    .as_ref()
                    .map_or(Value::Null, PatchValue::to_value)
            };
            match operation.op {
                Op::Add => PatchOperation::Add(AddOperation {
                    path,
                    value: value(),
                }),
                Op::Replace => PatchOperation::Replace(ReplaceOperation {
                    path,
                    value: value(),
                }),
                Op::Remove => PatchOperation::Remove(RemoveOperation { path }),
            }
        });
        json_patch::Patch(operations.collect())
    }

    /// The patch as JSON: the same text as `serde_json::to_vec` of
    /// [`Self::to_patch`], with the rendered containers copied in as they
    /// are.
    pub fn to_json(&self) -> serde_json::Result<Vec<u8>> {
        let rendered: usize = self
            .operations
            .iter()
            .filter_map(|o| o.value.as_ref())
            .map(PatchValue::rendered_len)
            .sum();
        let mut out = Vec::with_capacity(rendered + 128 * self.operations.len());
        out.push(b'[');
        for (i, operation) in self.operations.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(match operation.op {
                Op::Add => br#"{"op":"add","path":"#,
                Op::Replace => br#"{"op":"replace","path":"#,
                Op::Remove => br#"{"op":"remove","path":"#,
            });
            serde_json::to_writer(&mut out, operation.path.as_str())?;
            if let Some(value) = &operation.value {
                out.extend_from_slice(br#","value":"#);
                value.write_json(&mut out)?;
            }
            out.push(b'}');
        }
        out.push(b']');
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshd_api::annotations::pod::{
        CONCURRENCY, EXCLUDE_INBOUND_PORTS, EXCLUDE_OUTBOUND_CIDRS, EXCLUDE_OUTBOUND_PORTS, INJECT,
        INTERCEPTION, LOG_LEVEL, NATIVE_SIDECAR, PROXY_CPU, PROXY_CPU_LIMIT, PROXY_MEMORY_LIMIT,
        REWRITE_APP_PROBES, STATUS,
    };
    use serde_json::json;

    fn pod(value: Value) -> Pod {
        serde_json::from_value(value).unwrap()
    }

    fn web() -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "generateName": "web-",
                "labels": {"app": "web"},
                "annotations": {"example.com/owner": "team-a"},
            },
            "spec": {
                "serviceAccountName": "web",
                "initContainers": [{"name": "migrate", "image": "migrate:1"}],
                "containers": [
                    {"name": "app", "image": "web:1", "ports": [{"name": "http", "containerPort": 8080}]},
                    {"name": "logger", "image": "logger:1"},
                ],
                "volumes": [{"name": "data", "emptyDir": {}}],
            },
        })
    }

    fn with(mut v: Value, pointer: &str, value: Value) -> Value {
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        v.pointer_mut(parent).unwrap()[key.replace("~1", "/")] = value;
        v
    }

    fn annotate(v: Value, pairs: &[(&str, &str)]) -> Value {
        let mut v = v;
        for (k, val) in pairs {
            v["metadata"]["annotations"][*k] = json!(val);
        }
        v
    }

    fn config() -> InjectorConfig {
        InjectorConfig {
            proxy_image: "envoyproxy/envoy:test".into(),
            init_image: "meshd:test".into(),
            ..Default::default()
        }
    }

    fn classic() -> InjectorConfig {
        InjectorConfig {
            native_sidecar: false,
            ..config()
        }
    }

    /// A mesh pulling from a private registry, its list with a duplicate.
    fn pulling() -> InjectorConfig {
        InjectorConfig {
            image_pull_secrets: vec!["regcred".into(), "mirror".into(), "regcred".into()],
            ..config()
        }
    }

    /// How the patch was computed before it was built directly: the whole
    /// mutated pod, serialised with the original, the injected list items
    /// inserted by index and `json_patch::diff` for the rest. The direct
    /// patch must equal it operation for operation.
    mod reference {
        use super::*;
        use k8s_openapi::api::core::v1::LocalObjectReference;

        /// The pod with everything added, for `config`.
        pub fn mutated(pod: &Pod, config: &InjectorConfig, service_account: &str) -> Pod {
            let defaults = MeshDefaults::from_config(config).unwrap();
            let empty = BTreeMap::new();
            let overrides =
                annotations::parse(pod.metadata.annotations.as_ref().unwrap_or(&empty)).unwrap();
            let spec = pod.spec.as_ref().unwrap();
            let rewrites = app_probe_rewrites(spec, &overrides, config);
            let probes = ProxiedProbes::of(spec, &rewrites).unwrap();
            let mut plan = Plan::new(config, &defaults, &overrides, probes.http).unwrap();
            plan.grpc_probe = probes.grpc;
            plan.grpc_probes = probes.grpc_names;
            let bootstrap = if plan.app_probes.is_empty() && plan.grpc_probe.is_none() {
                defaults.bootstrap.clone()
            } else {
                let mut bootstrap = defaults.bootstrap_config.clone();
                bootstrap.app_probes = plan.app_probes.clone();
                bootstrap.grpc_probe = plan.grpc_probe.clone();
                render_bootstrap(&bootstrap)
            };
            apply(
                &plan,
                config,
                &bootstrap,
                pod,
                pod.spec.as_ref().unwrap(),
                service_account,
            )
        }

        /// The patch as it was computed.
        pub fn patch(
            pod: &Pod,
            config: &InjectorConfig,
            service_account: &str,
        ) -> json_patch::Patch {
            let original = serde_json::to_value(pod).unwrap();
            let mutated = serde_json::to_value(mutated(pod, config, service_account)).unwrap();
            pod_patch(&original, &mutated)
        }

        /// The pod with everything added.
        fn apply(
            plan: &Plan,
            config: &InjectorConfig,
            bootstrap: &str,
            pod: &Pod,
            spec: &PodSpec,
            service_account: &str,
        ) -> Pod {
            let original = pod;
            let mut pod = pod.clone();
            let mut spec = spec.clone();
            let user_containers: Vec<String> =
                spec.containers.iter().map(|c| c.name.clone()).collect();
            // The app probes of the plan, pointed at the proxy.
            for c in &mut spec.containers {
                let name = c.name.clone();
                let probes = [
                    (&mut c.liveness_probe, "livez"),
                    (&mut c.readiness_probe, "readyz"),
                    (&mut c.startup_probe, "startupz"),
                ];
                for (probe, kind) in probes {
                    if plan.grpc_probes.contains(&format!("{name}/{kind}")) {
                        probe.as_mut().unwrap().grpc.as_mut().unwrap().port = 15021;
                        continue;
                    }
                    let path = format!("/app-health/{name}/{kind}");
                    if !plan.app_probes.iter().any(|p| p.path == path) {
                        continue;
                    }
                    let get = probe.as_mut().unwrap().http_get.as_mut().unwrap();
                    get.path = Some(path);
                    get.port = IntOrString::Int(15021);
                    get.scheme = Some("HTTP".into());
                }
            }
            let mut status = Status {
                version: env!("CARGO_PKG_VERSION").to_string(),
                ..Default::default()
            };

            let proxy = plan.proxy_container(config, bootstrap);
            let init = plan.init_container(config);
            let mut init_containers = spec.init_containers.take().unwrap_or_default();
            if plan.native {
                // Capture, then the proxy (ready before the next one starts),
                // then the pod's own init containers, which thus have the mesh.
                let mut ours = Vec::new();
                ours.extend(init);
                ours.push(proxy);
                status.init_containers = ours.iter().map(|c| c.name.clone()).collect();
                init_containers.splice(0..0, ours);
            } else {
                // The pod's own init containers run before capture is installed:
                // there is no proxy yet to send their traffic to.
                if let Some(init) = init {
                    status.init_containers.push(init.name.clone());
                    init_containers.push(init);
                }
                status.containers.push(proxy.name.clone());
                spec.containers.insert(0, proxy);
            }
            if !init_containers.is_empty() {
                spec.init_containers = Some(init_containers);
            }
            spec.volumes
                .get_or_insert_with(Vec::new)
                .push(identity_volume(service_account));
            status.volumes.push(IDENTITY_VOLUME.to_string());
            status.app_probes = plan.app_probes.iter().map(|p| p.path.clone()).collect();
            status.grpc_probes = plan.grpc_probes.clone();
            for name in &config.image_pull_secrets {
                let secrets = spec.image_pull_secrets.get_or_insert_with(Vec::new);
                if !secrets.iter().any(|s| s.name == *name) {
                    secrets.push(LocalObjectReference { name: name.clone() });
                }
            }
            pod.spec = Some(spec);

            pod.metadata
                .labels
                .get_or_insert_with(BTreeMap::new)
                .insert(
                    annotations::PROXY_LABEL.into(),
                    annotations::PROXY_LABEL_VALUE.into(),
                );
            let pod_annotations = pod.metadata.annotations.get_or_insert_with(BTreeMap::new);
            if !plan.native
                && let Some(first) = user_containers.first()
            {
                pod_annotations
                    .entry(DEFAULT_CONTAINER_ANNOTATION.into())
                    .or_insert_with(|| first.clone());
            }
            let overrides = annotations::parse(pod_annotations).unwrap();
            if overrides.workload.is_none() {
                let workload = workload_name(original);
                pod_annotations.insert(annotations::WORKLOAD.into(), workload);
            }
            if overrides
                .prometheus_scrape
                .unwrap_or(config.prometheus_scrape)
            {
                for (key, value) in annotations::PROMETHEUS_SCRAPE_ANNOTATIONS {
                    pod_annotations
                        .entry(key.into())
                        .or_insert_with(|| value.into());
                }
            }
            pod_annotations.insert(
                annotations::STATUS.into(),
                serde_json::to_string(&status).unwrap_or_default(),
            );
            pod
        }

        /// The patch from `original` to `mutated`.
        ///
        /// `json_patch::diff` compares arrays index by index: inserting the proxy
        /// at the front of a list would come out as a rewrite, field by field, of
        /// every container after it. Applied by the API server to the pod it holds,
        /// such a patch would leave any field this crate's Pod type does not know
        /// (a newer Kubernetes) on the wrong container. So the injected list items
        /// are inserted by index, and `diff` covers the rest.
        pub fn pod_patch(original: &Value, mutated: &Value) -> json_patch::Patch {
            use json_patch::jsonptr::PointerBuf;
            use json_patch::{AddOperation, PatchOperation};

            let mut ops = Vec::new();
            for list in ["initContainers", "containers", "volumes"] {
                let pointer = |index: Option<usize>| {
                    let mut p = PointerBuf::from_tokens(["spec", list]);
                    if let Some(i) = index {
                        p.push_back(i);
                    }
                    p
                };
                let after = mutated["spec"][list].as_array();
                let Some(after) = after else { continue };
                let Some(before) = original["spec"][list].as_array() else {
                    ops.push(PatchOperation::Add(AddOperation {
                        path: pointer(None),
                        value: Value::Array(after.clone()),
                    }));
                    continue;
                };
                let mut inserts = Vec::new();
                let mut kept = 0;
                // Items are told apart by name: the pod's containers keep
                // theirs, though their probes may change.
                let name = |item: &Value| item.get("name").cloned();
                for (i, item) in after.iter().enumerate() {
                    if before.get(kept).map(name) == Some(name(item)) {
                        kept += 1;
                    } else {
                        inserts.push(PatchOperation::Add(AddOperation {
                            path: pointer(Some(i)),
                            value: item.clone(),
                        }));
                    }
                }
                // Anything but pure insertions is left to diff.
                if kept == before.len() {
                    ops.extend(inserts);
                }
            }
            let mut stepped = original.clone();
            if json_patch::patch(&mut stepped, &ops).is_err() {
                return json_patch::diff(original, mutated);
            }
            ops.extend(json_patch::diff(&stepped, mutated).0);
            json_patch::Patch(ops)
        }
    }

    /// Injects and applies the patch, checking it reproduces the pod
    /// `inject` built.
    fn injected(v: Value, config: &InjectorConfig) -> (Pod, String) {
        let original = pod(v.clone());
        match inject(&original, "shop", config).unwrap() {
            Injection::Patched {
                patch,
                service_account,
            } => {
                let mut doc = v;
                json_patch::patch(&mut doc, &patch).unwrap();
                let result: Pod = serde_json::from_value(doc.clone()).unwrap();
                // The same pod as building it whole, and the same patch as
                // diffing with it.
                let built = reference::mutated(&original, config, &service_account);
                assert_eq!(patch, reference::patch(&original, config, &service_account));
                assert_eq!(doc, serde_json::to_value(&built).unwrap());
                (result, service_account)
            }
            Injection::Skipped(why) => panic!("skipped: {why}"),
        }
    }

    fn skipped(v: Value, namespace: &str, config: &InjectorConfig) -> Skip {
        match inject(&pod(v), namespace, config).unwrap() {
            Injection::Skipped(why) => why,
            Injection::Patched { .. } => panic!("injected"),
        }
    }

    fn names(containers: &Option<Vec<Container>>) -> Vec<&str> {
        containers
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect()
    }

    fn container<'a>(pod: &'a Pod, name: &str) -> &'a Container {
        let spec = pod.spec.as_ref().unwrap();
        spec.containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .find(|c| c.name == name)
            .unwrap()
    }

    fn arg_after<'a>(c: &'a Container, flag: &str) -> Option<&'a str> {
        let args = c.args.as_ref().unwrap();
        let i = args.iter().position(|a| a == flag)?;
        args.get(i + 1).map(String::as_str)
    }

    #[test]
    fn protected_namespaces_are_never_injected() {
        let c = config();
        assert_eq!(
            skipped(web(), "kube-system", &c),
            Skip::ProtectedNamespace("kube-system".into())
        );
        assert_eq!(
            skipped(web(), "meshd-system", &c),
            Skip::ProtectedNamespace("meshd-system".into())
        );
        // Even when the pod asks for it.
        let opted_in = with(web(), "/metadata/labels/meshd.io~1inject", json!("true"));
        assert_eq!(
            skipped(opted_in, "kube-system", &c),
            Skip::ProtectedNamespace("kube-system".into())
        );
    }

    #[test]
    fn pods_opt_out_by_label_or_annotation() {
        let label = with(web(), "/metadata/labels/meshd.io~1inject", json!("false"));
        assert_eq!(skipped(label, "shop", &config()), Skip::OptedOut);
        let annotation = annotate(web(), &[(INJECT, "false")]);
        assert_eq!(skipped(annotation, "shop", &config()), Skip::OptedOut);
        // An opted-out pod is not judged on its other annotations.
        let bad = annotate(web(), &[(INJECT, "false"), (LOG_LEVEL, "loud")]);
        assert_eq!(skipped(bad, "shop", &config()), Skip::OptedOut);
        // Opting in changes nothing in a namespace that injects anyway.
        let label = with(web(), "/metadata/labels/meshd.io~1inject", json!("true"));
        injected(label, &config());
        injected(annotate(web(), &[(INJECT, "true")]), &config());
        // Saying both yes and no is an error, as is anything but true/false.
        let both = annotate(
            with(web(), "/metadata/labels/meshd.io~1inject", json!("true")),
            &[(INJECT, "false")],
        );
        assert!(inject(&pod(both), "shop", &config()).is_err());
        let yes = with(web(), "/metadata/labels/meshd.io~1inject", json!("yes"));
        assert_eq!(
            inject(&pod(yes), "shop", &config())
                .unwrap_err()
                .to_string(),
            "label meshd.io/inject: `yes` is not valid; accepted: true, false"
        );
    }

    #[test]
    fn host_network_pods_are_left_alone() {
        let v = with(web(), "/spec/hostNetwork", json!(true));
        assert_eq!(skipped(v, "shop", &config()), Skip::HostNetwork);
    }

    #[test]
    fn reinvocation_never_injects_twice() {
        let (once, _) = injected(web(), &config());
        let again = serde_json::to_value(&once).unwrap();
        assert_eq!(skipped(again, "shop", &config()), Skip::AlreadyInjected);
        let (once, _) = injected(web(), &classic());
        let again = serde_json::to_value(&once).unwrap();
        assert_eq!(skipped(again, "shop", &classic()), Skip::AlreadyInjected);
        // A status that is not ours is reported, not guessed at.
        let forged = annotate(web(), &[(STATUS, "yes")]);
        assert!(matches!(
            inject(&pod(forged), "shop", &config()),
            Err(InjectError::Annotation(
                annotations::Error::InvalidAnnotation { .. }
            ))
        ));
    }

    #[test]
    fn native_mode_orders_capture_proxy_then_the_pods_init_containers() {
        let (pod, sa) = injected(web(), &config());
        assert_eq!(sa, "web");
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(
            names(&spec.init_containers),
            ["meshd-init", "meshd-proxy", "migrate"]
        );
        assert_eq!(names(&Some(spec.containers.clone())), ["app", "logger"]);
        let proxy = container(&pod, PROXY_CONTAINER);
        assert_eq!(proxy.restart_policy.as_deref(), Some("Always"));
        let startup = proxy.startup_probe.as_ref().unwrap();
        assert_eq!(
            startup.http_get.as_ref().unwrap().port,
            IntOrString::Int(15021)
        );
        assert_eq!(startup.period_seconds, Some(1));
        assert_eq!(startup.failure_threshold, Some(600));
        assert!(proxy.lifecycle.is_none());
        let status: Status =
            serde_json::from_str(&pod.metadata.annotations.as_ref().unwrap()[STATUS]).unwrap();
        assert_eq!(status.init_containers, ["meshd-init", "meshd-proxy"]);
        assert!(status.containers.is_empty());
        assert_eq!(status.volumes, ["meshd-identity"]);
        assert_eq!(status.version, env!("CARGO_PKG_VERSION"));
    }

    #[test]
    fn classic_mode_puts_the_proxy_first_and_capture_last() {
        let (pod, _) = injected(web(), &classic());
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(names(&spec.init_containers), ["migrate", "meshd-init"]);
        assert_eq!(
            names(&Some(spec.containers.clone())),
            ["meshd-proxy", "app", "logger"]
        );
        let proxy = container(&pod, PROXY_CONTAINER);
        assert!(proxy.restart_policy.is_none());
        assert!(proxy.startup_probe.is_none());
        let sleep = proxy.lifecycle.as_ref().unwrap().pre_stop.as_ref().unwrap();
        assert_eq!(sleep.sleep.as_ref().unwrap().seconds, 5);
        let annotations = pod.metadata.annotations.as_ref().unwrap();
        assert_eq!(annotations[DEFAULT_CONTAINER_ANNOTATION], "app");
        let status: Status = serde_json::from_str(&annotations[STATUS]).unwrap();
        assert_eq!(status.containers, ["meshd-proxy"]);
        assert_eq!(status.init_containers, ["meshd-init"]);
        // The pod's annotation choosing native wins over the mesh's.
        let (pod, _) = injected(annotate(web(), &[(NATIVE_SIDECAR, "true")]), &classic());
        assert_eq!(
            names(&pod.spec.unwrap().init_containers),
            ["meshd-init", "meshd-proxy", "migrate"]
        );
        let (pod, _) = injected(annotate(web(), &[(NATIVE_SIDECAR, "false")]), &config());
        assert_eq!(
            names(&pod.spec.unwrap().init_containers),
            ["migrate", "meshd-init"]
        );
    }

    #[test]
    fn the_proxy_runs_unprivileged_and_the_init_container_only_with_net_admin() {
        let (pod, _) = injected(web(), &config());
        let proxy = container(&pod, PROXY_CONTAINER);
        let sc = proxy.security_context.as_ref().unwrap();
        assert_eq!(sc.run_as_user, Some(1337));
        assert_eq!(sc.run_as_group, Some(1337));
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        let caps = sc.capabilities.as_ref().unwrap();
        assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
        assert!(caps.add.is_none());

        let init = container(&pod, INIT_CONTAINER);
        let sc = init.security_context.as_ref().unwrap();
        assert_eq!(sc.run_as_user, Some(0));
        assert_eq!(sc.run_as_non_root, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        let caps = sc.capabilities.as_ref().unwrap();
        assert_eq!(
            caps.add.as_deref(),
            Some(&["NET_ADMIN".to_string(), "NET_RAW".to_string()][..])
        );
        assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
        assert_eq!(init.image.as_deref(), Some("meshd:test"));
        assert_eq!(
            init.command.as_deref().unwrap(),
            ["meshd".to_string(), "capture".to_string()]
        );
    }

    #[test]
    fn the_proxy_is_configured_from_the_mesh_and_the_pod() {
        let (pod, _) = injected(web(), &config());
        let proxy = container(&pod, PROXY_CONTAINER);
        assert_eq!(proxy.image.as_deref(), Some("envoyproxy/envoy:test"));
        assert_eq!(arg_after(proxy, "--log-level"), Some("warning"));
        assert_eq!(arg_after(proxy, "--concurrency"), Some("2"));
        assert_eq!(arg_after(proxy, "--drain-time-s"), Some("5"));
        assert_eq!(
            arg_after(proxy, "--service-node"),
            Some("$(MESHD_POD_NAME).$(MESHD_POD_NAMESPACE)")
        );
        assert_eq!(
            arg_after(proxy, "--service-cluster"),
            Some("$(MESHD_POD_NAMESPACE)")
        );
        assert!(
            proxy
                .args
                .as_ref()
                .unwrap()
                .contains(&"--disable-hot-restart".into())
        );
        let bootstrap: Value =
            serde_json::from_str(arg_after(proxy, "--config-yaml").unwrap()).unwrap();
        assert_eq!(
            bootstrap["node"]["id"],
            "$(MESHD_POD_NAME).$(MESHD_POD_NAMESPACE)"
        );
        assert_eq!(
            bootstrap["admin"]["address"]["socket_address"]["address"],
            "127.0.0.1"
        );
        assert_eq!(
            bootstrap["dynamic_resources"]["ads_config"]["api_type"],
            "DELTA_GRPC"
        );
        let xds = &bootstrap["static_resources"]["clusters"][0];
        assert_eq!(
            xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
                ["address"],
            "meshd.meshd-system.svc"
        );
        assert!(xds["transport_socket"].to_string().contains(IDENTITY_MOUNT));
        // The admin port is not declared; the others are.
        let declared: Vec<i32> = proxy
            .ports
            .iter()
            .flatten()
            .map(|p| p.container_port)
            .collect();
        assert_eq!(declared, [15001, 15006, 15021, 15090]);
        let env: Vec<_> = proxy
            .env
            .iter()
            .flatten()
            .map(|e| {
                // A value, or the downward API field it comes from.
                let source = match (&e.value, &e.value_from) {
                    (Some(value), None) => value.as_str(),
                    (None, Some(from)) => from.field_ref.as_ref().unwrap().field_path.as_str(),
                    other => panic!("{other:?}"),
                };
                (e.name.as_str(), source)
            })
            .collect();
        assert_eq!(
            env,
            [
                ("MESHD_POD_NAME", "metadata.name"),
                ("MESHD_POD_NAMESPACE", "metadata.namespace"),
                (
                    "MESHD_WORKLOAD",
                    "metadata.annotations['meshd.io/workload']"
                ),
                ("MESHD_SERVICE_ACCOUNT", "spec.serviceAccountName"),
                // After MESHD_WORKLOAD: Kubernetes expands only references
                // to variables defined before.
                ("OTEL_RESOURCE_ATTRIBUTES", "service.name=$(MESHD_WORKLOAD)"),
            ]
        );
        let mount = &proxy.volume_mounts.as_ref().unwrap()[0];
        assert_eq!(mount.mount_path, IDENTITY_MOUNT);
        assert_eq!(mount.read_only, Some(true));
        let readiness = proxy
            .readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(readiness.path.as_deref(), Some("/healthz/ready"));
        // Only the proxy mounts the identity.
        for c in &pod.spec.as_ref().unwrap().containers {
            assert!(c.volume_mounts.is_none(), "{}", c.name);
        }
        let volume = pod
            .spec
            .as_ref()
            .unwrap()
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == IDENTITY_VOLUME)
            .unwrap();
        let secret = volume.secret.as_ref().unwrap();
        assert_eq!(secret.secret_name.as_deref(), Some("meshd-identity-web"));
        assert_eq!(secret.default_mode, Some(0o444));
        assert_eq!(secret.optional, Some(false));
        assert_eq!(
            pod.metadata.labels.as_ref().unwrap()[annotations::PROXY_LABEL],
            "true"
        );

        let tuned = annotate(
            web(),
            &[
                (LOG_LEVEL, "debug"),
                (CONCURRENCY, "0"),
                (PROXY_CPU, "250m"),
                (PROXY_MEMORY_LIMIT, "512Mi"),
            ],
        );
        let (pod, _) = injected(tuned, &config());
        let proxy = container(&pod, PROXY_CONTAINER);
        assert_eq!(arg_after(proxy, "--log-level"), Some("debug"));
        assert_eq!(arg_after(proxy, "--concurrency"), None);
        let resources = proxy.resources.as_ref().unwrap();
        assert_eq!(resources.requests.as_ref().unwrap()["cpu"].0, "250m");
        assert_eq!(resources.requests.as_ref().unwrap()["memory"].0, "128Mi");
        assert_eq!(resources.limits.as_ref().unwrap()["memory"].0, "512Mi");
        assert_eq!(resources.limits.as_ref().unwrap()["cpu"].0, "2");
    }

    #[test]
    fn the_default_service_account_is_used_when_none_is_named() {
        let v = web();
        let mut v = v;
        v["spec"]
            .as_object_mut()
            .unwrap()
            .remove("serviceAccountName");
        let (pod, sa) = injected(v, &config());
        assert_eq!(sa, "default");
        let volumes = pod.spec.unwrap().volumes.unwrap();
        assert_eq!(
            volumes[1].secret.as_ref().unwrap().secret_name.as_deref(),
            Some("meshd-identity-default")
        );
    }

    #[test]
    fn capture_exclusions_reach_the_init_container() {
        let v = annotate(
            web(),
            &[
                (EXCLUDE_INBOUND_PORTS, "22, 8081"),
                (EXCLUDE_OUTBOUND_PORTS, "5432"),
                (EXCLUDE_OUTBOUND_CIDRS, "10.0.0.0/8, 169.254.169.254"),
            ],
        );
        let (pod, _) = injected(v, &config());
        let init = container(&pod, INIT_CONTAINER);
        assert_eq!(
            init.command.as_deref().unwrap(),
            [
                "meshd",
                "capture",
                "--exclude-inbound-ports=22,8081",
                "--exclude-outbound-ports=5432",
                "--exclude-outbound-cidrs=10.0.0.0/8,169.254.169.254/32",
            ]
        );
    }

    #[test]
    fn no_interception_means_no_init_container() {
        let v = annotate(web(), &[(INTERCEPTION, "none")]);
        let (pod, _) = injected(v.clone(), &config());
        assert_eq!(
            names(&pod.spec.as_ref().unwrap().init_containers),
            ["meshd-proxy", "migrate"]
        );
        let (pod, _) = injected(v, &classic());
        assert_eq!(
            names(&pod.spec.as_ref().unwrap().init_containers),
            ["migrate"]
        );
        let status: Status =
            serde_json::from_str(&pod.metadata.annotations.as_ref().unwrap()[STATUS]).unwrap();
        assert!(status.init_containers.is_empty());
    }

    #[test]
    fn exclusions_without_capture_are_refused() {
        let v = annotate(
            web(),
            &[(INTERCEPTION, "none"), (EXCLUDE_OUTBOUND_PORTS, "5432")],
        );
        assert_eq!(
            inject(&pod(v), "shop", &config()).unwrap_err().to_string(),
            "annotation meshd.io/exclude-outbound-ports: `5432` is not valid; accepted: nothing with meshd.io/interception: none, which captures no traffic to exclude from"
        );
    }

    #[test]
    fn bad_annotations_are_errors_naming_the_annotation() {
        for (name, value) in [
            (LOG_LEVEL, "loud"),
            (CONCURRENCY, "100"),
            (PROXY_CPU, "a lot"),
            (EXCLUDE_OUTBOUND_CIDRS, "10.0.0.0/40"),
            (NATIVE_SIDECAR, "1"),
        ] {
            let err =
                inject(&pod(annotate(web(), &[(name, value)])), "shop", &config()).unwrap_err();
            assert!(
                matches!(&err, InjectError::Annotation(annotations::Error::InvalidAnnotation { annotation, .. }) if annotation == name),
                "{err}"
            );
        }
        let err = inject(
            &pod(annotate(web(), &[("meshd.io/sidecar-image", "x")])),
            "shop",
            &config(),
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                InjectError::Annotation(annotations::Error::UnknownAnnotation { .. })
            ),
            "{err}"
        );
    }

    #[test]
    fn requests_above_limits_are_refused_with_both_values() {
        let err = inject(
            &pod(annotate(web(), &[(PROXY_CPU, "4")])),
            "shop",
            &config(),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "annotation meshd.io/proxy-cpu: `4` is not valid; accepted: a quantity no larger than the proxy's CPU limit 2 (the mesh setting proxyCpuLimit); raise meshd.io/proxy-cpu-limit too"
        );
        let err = inject(
            &pod(annotate(web(), &[(PROXY_CPU_LIMIT, "50m")])),
            "shop",
            &config(),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("no smaller than the proxy's CPU request 100m"),
            "{err}"
        );
        injected(
            annotate(web(), &[(PROXY_CPU, "4"), (PROXY_CPU_LIMIT, "4")]),
            &config(),
        );
    }

    #[test]
    fn collisions_with_the_injected_names_ports_and_uid_are_refused() {
        let named = with(web(), "/spec/containers/1/name", json!("meshd-proxy"));
        assert!(
            inject(&pod(named), "shop", &config())
                .unwrap_err()
                .to_string()
                .contains("reserved")
        );
        let volume = with(web(), "/spec/volumes/0/name", json!("meshd-identity"));
        assert!(inject(&pod(volume), "shop", &config()).is_err());
        let port = with(
            web(),
            "/spec/containers/0/ports/0/containerPort",
            json!(15001),
        );
        let err = inject(&pod(port), "shop", &config())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("spec.containers[app].ports: port 15001"),
            "{err}"
        );
        let port_name = with(
            web(),
            "/spec/containers/0/ports/0/name",
            json!("meshd-metrics"),
        );
        assert!(inject(&pod(port_name), "shop", &config()).is_err());

        let uid = with(web(), "/spec/securityContext", json!({"runAsUser": 1337}));
        let err = inject(&pod(uid.clone()), "shop", &config())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("spec.containers[app] runs with runAsUser 1337"),
            "{err}"
        );
        // A container's own UID overrides the pod's...
        let mut own = uid;
        for i in 0..2 {
            own["spec"]["containers"][i]["securityContext"] = json!({"runAsUser": 1000});
        }
        own["spec"]["initContainers"][0]["securityContext"] = json!({"runAsUser": 1000});
        injected(own, &config());
        // ...and without capture there is nothing to bypass.
        let gid = annotate(
            with(web(), "/spec/securityContext", json!({"runAsGroup": 1337})),
            &[(INTERCEPTION, "none")],
        );
        injected(gid, &config());
        // Classic: the pod's init containers run before capture anyway.
        let init_uid = with(
            web(),
            "/spec/initContainers/0/securityContext",
            json!({"runAsUser": 1337}),
        );
        injected(init_uid.clone(), &classic());
        assert!(inject(&pod(init_uid), "shop", &config()).is_err());
    }

    /// `web()` as the Job controller creates it.
    fn job_pod(policy: &str) -> Value {
        with(
            with(web(), "/spec/restartPolicy", json!(policy)),
            "/metadata/ownerReferences",
            json!([{"apiVersion": "batch/v1", "kind": "Job", "name": "db-migrate",
                    "uid": "0b6d3c1e", "controller": true, "blockOwnerDeletion": true}]),
        )
    }

    #[test]
    fn classic_mode_refuses_pods_that_run_to_completion() {
        let accepted = "accepted: a native sidecar (meshd.io/native-sidecar: \"true\" in the pod template; Kubernetes 1.29 or later), or meshd.io/inject: \"false\" to leave the pod out of the mesh";
        let error = |v: Value, config: &InjectorConfig| {
            inject(&pod(v), "shop", config).unwrap_err().to_string()
        };
        assert_eq!(
            error(job_pod("Never"), &classic()),
            format!(
                "the pod cannot be injected: spec.restartPolicy is Never (the pod of Job db-migrate): the pod runs to completion, but with the mesh setting nativeSidecar: false the proxy is a regular container that never exits, so the pod (and its Job) would never complete; {accepted}"
            )
        );
        // A bare pod that runs to completion, classic by its annotation.
        let bare = annotate(
            with(web(), "/spec/restartPolicy", json!("OnFailure")),
            &[(NATIVE_SIDECAR, "false")],
        );
        assert_eq!(
            error(bare, &config()),
            format!(
                "the pod cannot be injected: spec.restartPolicy is OnFailure: the pod runs to completion, but with meshd.io/native-sidecar: \"false\" the proxy is a regular container that never exits, so the pod (and its Job) would never complete; {accepted}"
            )
        );
        // Native sidecars, by the mesh or the pod, are stopped once the
        // job's containers have exited: injected.
        let (native, _) = injected(job_pod("Never"), &config());
        assert_eq!(
            names(&native.spec.unwrap().init_containers),
            ["meshd-init", "meshd-proxy", "migrate"]
        );
        injected(
            annotate(job_pod("OnFailure"), &[(NATIVE_SIDECAR, "true")]),
            &classic(),
        );
        // Pods that keep running are classic as before; opted out is left alone.
        injected(
            with(web(), "/spec/restartPolicy", json!("Always")),
            &classic(),
        );
        let out = with(
            job_pod("Never"),
            "/metadata/labels/meshd.io~1inject",
            json!("false"),
        );
        assert_eq!(skipped(out, "shop", &classic()), Skip::OptedOut);
    }

    #[test]
    fn the_meshs_pull_secrets_follow_the_pods_own_once_each() {
        let secrets = |pod: &Pod| -> Vec<String> {
            let spec = pod.spec.as_ref().unwrap();
            spec.image_pull_secrets
                .iter()
                .flatten()
                .map(|s| s.name.clone())
                .collect()
        };
        // A pod without the list gets it whole, without the duplicate.
        let (pod, _) = injected(web(), &pulling());
        assert_eq!(secrets(&pod), ["regcred", "mirror"]);
        // A pod with its own: they stay first, the mesh's one it already
        // names is not added again.
        let own = with(
            web(),
            "/spec/imagePullSecrets",
            json!([{"name": "own"}, {"name": "mirror"}]),
        );
        let (pod, _) = injected(own.clone(), &pulling());
        assert_eq!(secrets(&pod), ["own", "mirror", "regcred"]);
        let Injection::Patched { patch, .. } = inject(&self::pod(own), "shop", &pulling()).unwrap()
        else {
            panic!("skipped")
        };
        let adds: Vec<String> = patch
            .0
            .iter()
            .map(|op| serde_json::to_value(op).unwrap())
            .filter(|op| op["path"].as_str().unwrap().contains("imagePullSecrets"))
            .map(|op| format!("{} {} {}", op["op"], op["path"], op["value"]))
            .collect();
        assert_eq!(
            adds,
            [r#""add" "/spec/imagePullSecrets/2" {"name":"regcred"}"#]
        );
        // All there already, or none configured: the list is untouched.
        let all = with(
            web(),
            "/spec/imagePullSecrets",
            json!([{"name": "mirror"}, {"name": "regcred"}]),
        );
        let (pod, _) = injected(all, &pulling());
        assert_eq!(secrets(&pod), ["mirror", "regcred"]);
        let (pod, _) = injected(web(), &config());
        assert_eq!(pod.spec.unwrap().image_pull_secrets, None);
        // A name that is no Secret's is refused by its setting.
        for bad in [
            "",
            "Regcred",
            "reg cred",
            "-regcred",
            "a..b",
            &"a".repeat(254),
        ] {
            let c = InjectorConfig {
                image_pull_secrets: vec!["regcred".into(), bad.into()],
                ..config()
            };
            assert_eq!(
                check_config(&c).unwrap_err().to_string(),
                format!(
                    "injector setting imagePullSecrets: `{bad}` is not valid; accepted: names of Secrets in the workloads' namespaces: DNS subdomains (lowercase letters, digits, '-', '.'), at most 253 characters"
                )
            );
        }
    }

    #[test]
    fn bad_mesh_settings_are_reported_by_name() {
        let bad = [
            InjectorConfig {
                xds_address: "meshd".into(),
                ..config()
            },
            InjectorConfig {
                xds_address: "[::1:15010".into(),
                ..config()
            },
            InjectorConfig {
                xds_protocol: "rest".into(),
                ..config()
            },
            InjectorConfig {
                proxy_cpu_request: "fast".into(),
                ..config()
            },
            InjectorConfig {
                proxy_memory_request: "2Gi".into(),
                ..config()
            },
            InjectorConfig {
                proxy_log_level: "loud".into(),
                ..config()
            },
            InjectorConfig {
                proxy_concurrency: 65,
                ..config()
            },
            InjectorConfig {
                control_plane_id: "meshd".into(),
                ..config()
            },
            InjectorConfig {
                proxy_image: "".into(),
                ..config()
            },
        ];
        for c in bad {
            let err = check_config(&c).unwrap_err();
            assert!(matches!(err, InjectError::InvalidConfig { .. }), "{err}");
            assert_eq!(inject(&pod(web()), "shop", &c).unwrap_err(), err);
        }
        check_config(&InjectorConfig::default()).unwrap();
        let v6 = InjectorConfig {
            xds_address: "[fd00::1]:15010".into(),
            ..config()
        };
        check_config(&v6).unwrap();
    }

    #[test]
    fn dollars_in_settings_stay_literal_through_kubernetes_expansion() {
        // A SPIFFE ID cannot hold `$`, but the bootstrap escapes any it would
        // get, and leaves the downward-API references alone.
        let bootstrap = render_bootstrap(&proxy_bootstrap_config(&config()).unwrap());
        assert!(!bootstrap.contains("$$"));
        assert!(bootstrap.contains("\"$(MESHD_POD_NAME).$(MESHD_POD_NAMESPACE)\""));
    }

    #[test]
    fn meshed_pods_get_the_scrape_annotations_but_never_over_their_own() {
        let annotations_of = |v: Value, config: &InjectorConfig| {
            injected(v, config)
                .0
                .metadata
                .annotations
                .unwrap_or_default()
        };
        let got = annotations_of(web(), &config());
        assert_eq!(got["prometheus.io/scrape"], "true");
        assert_eq!(got["prometheus.io/port"], "15090");
        assert_eq!(got["prometheus.io/path"], "/stats/prometheus");
        // The pod's own settings stay; the missing ones are added.
        let own = annotate(
            web(),
            &[("prometheus.io/port", "9090"), ("prometheus.io/path", "/m")],
        );
        let got = annotations_of(own, &config());
        assert_eq!(got["prometheus.io/port"], "9090");
        assert_eq!(got["prometheus.io/path"], "/m");
        assert_eq!(got["prometheus.io/scrape"], "true");
        // Opted out per pod, or mesh-wide (and a pod may opt back in).
        let out = annotate(web(), &[(annotations::PROMETHEUS_SCRAPE, "false")]);
        assert!(!annotations_of(out, &config()).contains_key("prometheus.io/scrape"));
        let off = InjectorConfig {
            prometheus_scrape: false,
            ..config()
        };
        assert!(!annotations_of(web(), &off).contains_key("prometheus.io/scrape"));
        let back = annotate(web(), &[(annotations::PROMETHEUS_SCRAPE, "true")]);
        assert_eq!(annotations_of(back, &off)["prometheus.io/scrape"], "true");
        let bad = annotate(web(), &[(annotations::PROMETHEUS_SCRAPE, "no")]);
        let err = inject(&pod(bad), "shop", &config())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("meshd.io/prometheus-scrape") && err.contains("accepted: true, false"),
            "{err}"
        );
    }

    #[test]
    fn the_workload_is_the_pods_controller_unless_the_pod_names_it() {
        let owned = |kind: &str, name: &str, labels: Value| {
            pod(json!({
                "metadata": {
                    "name": "x-1", "labels": labels,
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": "u", "controller": true}],
                },
                "spec": {"containers": [{"name": "app"}]},
            }))
        };
        let hash = json!({"pod-template-hash": "7d9f8c6b5"});
        assert_eq!(
            workload_name(&owned("ReplicaSet", "web-7d9f8c6b5", hash)),
            "web"
        );
        assert_eq!(workload_name(&owned("StatefulSet", "db", json!({}))), "db");
        assert_eq!(
            workload_name(&owned("Job", "report-28911230", json!({}))),
            "report"
        );
        let bare = pod(
            json!({"metadata": {"generateName": "tool-"}, "spec": {"containers": [{"name": "app"}]}}),
        );
        assert_eq!(workload_name(&bare), "tool");
        let named = annotate(web(), &[(annotations::WORKLOAD, "storefront")]);
        let got = injected(named, &config()).0.metadata.annotations.unwrap();
        assert_eq!(got[annotations::WORKLOAD], "storefront");
        let bad = annotate(web(), &[(annotations::WORKLOAD, "Store Front")]);
        assert!(inject(&pod(bad), "shop", &config()).is_err());
    }

    #[test]
    fn the_patch_inserts_rather_than_rewrites() {
        let original = pod(web());
        let Injection::Patched { patch, .. } = inject(&original, "shop", &classic()).unwrap()
        else {
            panic!("skipped")
        };
        let ops = serde_json::to_value(&patch).unwrap();
        let paths: Vec<(&str, &str)> = ops
            .as_array()
            .unwrap()
            .iter()
            .map(|op| (op["op"].as_str().unwrap(), op["path"].as_str().unwrap()))
            .collect();
        assert_eq!(
            paths,
            [
                ("add", "/spec/initContainers/1"),
                ("add", "/spec/containers/0"),
                ("add", "/spec/volumes/1"),
                (
                    "add",
                    "/metadata/annotations/kubectl.kubernetes.io~1default-container"
                ),
                ("add", "/metadata/annotations/meshd.io~1status"),
                ("add", "/metadata/annotations/meshd.io~1workload"),
                ("add", "/metadata/annotations/prometheus.io~1path"),
                ("add", "/metadata/annotations/prometheus.io~1port"),
                ("add", "/metadata/annotations/prometheus.io~1scrape"),
                ("add", "/metadata/labels/meshd.io~1proxy"),
            ]
        );
        // A pod without the lists gets them whole.
        let bare =
            pod(json!({"metadata": {"name": "a"}, "spec": {"containers": [{"name": "app"}]}}));
        let Injection::Patched { patch, .. } = inject(&bare, "shop", &config()).unwrap() else {
            panic!("skipped")
        };
        let mut doc = serde_json::to_value(&bare).unwrap();
        json_patch::patch(&mut doc, &patch).unwrap();
        let result: Pod = serde_json::from_value(doc).unwrap();
        assert_eq!(
            names(&result.spec.unwrap().init_containers),
            ["meshd-init", "meshd-proxy"]
        );
    }

    /// `web()` with a probe of every kind: the app's HTTP readiness (named
    /// port) and liveness (numbered port, a query, a header, its own
    /// timings) and an HTTPS startup probe, the logger's HTTP probe on a
    /// port it does not name, a TCP and an exec probe, and an HTTP probe on
    /// the init container.
    fn probed() -> Value {
        let mut v = web();
        v["spec"]["containers"][0]["ports"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "admin", "containerPort": 9090}));
        v["spec"]["containers"][0]["readinessProbe"] =
            json!({"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 5});
        v["spec"]["containers"][0]["livenessProbe"] = json!({
            "httpGet": {"path": "/live?full=1", "port": 9090, "scheme": "HTTP",
                        "httpHeaders": [{"name": "x-probe", "value": "kubelet"}]},
            "initialDelaySeconds": 10, "timeoutSeconds": 3, "failureThreshold": 5,
        });
        v["spec"]["containers"][0]["startupProbe"] =
            json!({"httpGet": {"path": "/started", "port": 8443, "scheme": "HTTPS"}});
        v["spec"]["containers"][1]["readinessProbe"] =
            json!({"httpGet": {"path": "/ready", "port": "metrics"}});
        v["spec"]["containers"][1]["livenessProbe"] = json!({"tcpSocket": {"port": 9102}});
        v["spec"]["containers"][1]["startupProbe"] = json!({"exec": {"command": ["true"]}});
        v["spec"]["initContainers"][0]["readinessProbe"] =
            json!({"httpGet": {"path": "/ready", "port": 8081}});
        v
    }

    /// `web()` as Online Boutique's services are probed: gRPC readiness
    /// and liveness on the app's gRPC port (one naming a service, with its
    /// own timeout), an HTTP startup probe, and the logger's gRPC probe of
    /// the proxy's own readiness port.
    fn grpc_probed() -> Value {
        let mut v = web();
        v["spec"]["containers"][0]["ports"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "grpc", "containerPort": 9555}));
        v["spec"]["containers"][0]["readinessProbe"] =
            json!({"grpc": {"port": 9555}, "periodSeconds": 5});
        v["spec"]["containers"][0]["livenessProbe"] = json!({
            "grpc": {"port": 9555, "service": "hipstershop.CartService"},
            "initialDelaySeconds": 15, "timeoutSeconds": 4,
        });
        v["spec"]["containers"][0]["startupProbe"] =
            json!({"httpGet": {"path": "/started", "port": "http"}});
        v["spec"]["containers"][1]["readinessProbe"] = json!({"grpc": {"port": 15021}});
        v
    }

    /// Pods of every shape the patch treats differently.
    fn shapes() -> Vec<(&'static str, Value)> {
        let remove = |mut v: Value, pointer: &str, key: &str| {
            v.pointer_mut(pointer)
                .unwrap()
                .as_object_mut()
                .unwrap()
                .remove(key);
            v
        };
        let no_maps = remove(
            remove(web(), "/metadata", "labels"),
            "/metadata",
            "annotations",
        );
        let empty_lists = with(
            with(
                with(
                    with(web(), "/spec/initContainers", json!([])),
                    "/spec/volumes",
                    json!([]),
                ),
                "/metadata/labels",
                json!({}),
            ),
            "/metadata/annotations",
            json!({}),
        );
        vec![
            ("web", web()),
            (
                "bare",
                json!({"metadata": {"name": "a"}, "spec": {"containers": [{"name": "app"}]}}),
            ),
            (
                "no metadata",
                json!({"spec": {"containers": [{"name": "app"}]}}),
            ),
            ("no containers", json!({"spec": {"containers": []}})),
            ("no labels or annotations", no_maps),
            ("empty lists and maps", empty_lists),
            ("no volumes", remove(web(), "/spec", "volumes")),
            (
                "no init containers",
                remove(web(), "/spec", "initContainers"),
            ),
            (
                "already labelled",
                with(web(), "/metadata/labels/meshd.io~1proxy", json!("true")),
            ),
            (
                "labelled otherwise",
                with(web(), "/metadata/labels/meshd.io~1proxy", json!("false")),
            ),
            (
                "default container named",
                annotate(web(), &[(DEFAULT_CONTAINER_ANNOTATION, "logger")]),
            ),
            ("no capture", annotate(web(), &[(INTERCEPTION, "none")])),
            (
                "no capture, empty init containers",
                annotate(
                    with(web(), "/spec/initContainers", json!([])),
                    &[(INTERCEPTION, "none")],
                ),
            ),
            (
                "no capture, no init containers",
                annotate(
                    remove(web(), "/spec", "initContainers"),
                    &[(INTERCEPTION, "none")],
                ),
            ),
            ("native", annotate(web(), &[(NATIVE_SIDECAR, "true")])),
            ("classic", annotate(web(), &[(NATIVE_SIDECAR, "false")])),
            (
                "overrides",
                annotate(
                    web(),
                    &[
                        (PROXY_CPU, "250m"),
                        (PROXY_MEMORY_LIMIT, "512Mi"),
                        (LOG_LEVEL, "debug"),
                        (CONCURRENCY, "0"),
                        (EXCLUDE_INBOUND_PORTS, "22"),
                        (EXCLUDE_OUTBOUND_CIDRS, "10.0.0.0/8"),
                    ],
                ),
            ),
            ("probes", probed()),
            ("grpc probes", grpc_probed()),
            (
                "grpc probes, not rewritten",
                annotate(grpc_probed(), &[(REWRITE_APP_PROBES, "false")]),
            ),
            (
                "pull secrets",
                with(
                    web(),
                    "/spec/imagePullSecrets",
                    json!([{"name": "own"}, {"name": "mirror"}]),
                ),
            ),
            (
                "empty pull secrets",
                with(web(), "/spec/imagePullSecrets", json!([])),
            ),
            (
                "probes, not rewritten",
                annotate(probed(), &[(REWRITE_APP_PROBES, "false")]),
            ),
            (
                "probes, no capture",
                annotate(probed(), &[(INTERCEPTION, "none")]),
            ),
            (
                "odd keys",
                annotate(
                    with(web(), "/metadata/labels/a~1b", json!("~")),
                    &[("x/~y", "\"\\\u{1}")],
                ),
            ),
        ]
    }

    #[test]
    fn the_direct_patch_is_the_diff_of_the_mutated_pod() {
        let classic_pulling = InjectorConfig {
            native_sidecar: false,
            ..pulling()
        };
        for config in [config(), classic(), pulling(), classic_pulling] {
            for (shape, v) in shapes() {
                let what = format!("{shape} (native: {})", config.native_sidecar);
                let original = pod(v);
                let Injection::Patched {
                    patch,
                    service_account,
                } = inject_patch(&original, "shop", &config).unwrap()
                else {
                    panic!("{what}: skipped")
                };
                let expected = reference::patch(&original, &config, &service_account);
                assert_eq!(patch.to_patch(), expected, "{what}");
                assert_eq!(patch.len(), expected.0.len(), "{what}");
                // Written out, the very text of the patch serialised.
                assert_eq!(
                    String::from_utf8(patch.to_json().unwrap()).unwrap(),
                    serde_json::to_string(&expected).unwrap(),
                    "{what}"
                );
                // Applied to the pod, the mutated pod.
                let mut doc = serde_json::to_value(&original).unwrap();
                json_patch::patch(&mut doc, &patch.to_patch()).unwrap();
                let mutated = reference::mutated(&original, &config, &service_account);
                assert_eq!(doc, serde_json::to_value(&mutated).unwrap(), "{what}");
            }
        }
    }

    #[test]
    fn containers_rendered_for_other_plans_are_never_mixed_up() {
        // More plans than are kept rendered, twice over, interleaved with
        // the common one.
        for _ in 0..2 {
            for n in 0..=(RENDERED_PLANS as u32 + 4) {
                // Plans differ by concurrency and by the app's probe.
                for (concurrency, probe) in [(n % 65, Some(n)), (2, None)] {
                    let mut v = annotate(web(), &[(CONCURRENCY, &concurrency.to_string())]);
                    if let Some(probe) = probe {
                        v["spec"]["containers"][0]["readinessProbe"] =
                            json!({"httpGet": {"path": format!("/ready/{probe}"), "port": "http"}});
                    }
                    let (pod, _) = injected(v, &config());
                    let proxy = container(&pod, PROXY_CONTAINER);
                    let expected = (concurrency > 0).then(|| concurrency.to_string());
                    assert_eq!(arg_after(proxy, "--concurrency"), expected.as_deref());
                    let bootstrap = arg_after(proxy, "--config-yaml").unwrap();
                    let routed = probe.map(|p| format!("\"/ready/{p}\""));
                    assert_eq!(
                        routed
                            .as_ref()
                            .is_some_and(|r| bootstrap.contains(r.as_str())),
                        probe.is_some(),
                        "{bootstrap}"
                    );
                }
            }
        }
    }

    /// What injecting `pod` gives, comparable: the patch as JSON, or why
    /// there is none.
    fn outcome(pod: &Pod, config: &InjectorConfig) -> String {
        match inject_patch(pod, "shop", config) {
            Ok(Injection::Patched {
                patch,
                service_account,
            }) => format!(
                "{service_account}: {}",
                String::from_utf8(patch.to_json().unwrap()).unwrap()
            ),
            Ok(Injection::Skipped(why)) => format!("not injected: {why}"),
            Err(e) => format!("error: {e}"),
        }
    }

    #[test]
    fn the_webhooks_view_of_a_pod_injects_as_the_whole_pod() {
        let realistic = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "generateName": "web-7d4b9c8f6-", "namespace": "shop",
                "labels": {"app": "web", "pod-template-hash": "7d4b9c8f6"},
                "annotations": {"kubectl.kubernetes.io/restartedAt": "2025-05-01T10:00:00Z"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d4b9c8f6",
                                     "uid": "5b7e1f0a", "controller": true}],
                "managedFields": [{"manager": "kube-controller-manager", "operation": "Update",
                                   "apiVersion": "v1", "fieldsType": "FieldsV1",
                                   "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:app": {}}}}}]
            },
            "spec": {
                "serviceAccount": "web",
                "securityContext": {"fsGroup": 2000, "runAsNonRoot": true},
                "containers": [{
                    "name": "app", "image": "web:1", "args": ["--port=8080"],
                    "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                    "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                    "resources": {"requests": {"cpu": "250m"}},
                    "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}},
                    "securityContext": {"runAsUser": 1000, "readOnlyRootFilesystem": true}
                }],
                "volumes": [{"name": "token", "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}}],
                "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists"}]
            },
            "status": {"phase": "Pending"}
        });
        let mut cases = shapes();
        cases.extend([
            ("realistic", realistic.clone()),
            (
                "null lists",
                with(
                    with(web(), "/spec/volumes", Value::Null),
                    "/spec/initContainers",
                    Value::Null,
                ),
            ),
            (
                "host network",
                with(web(), "/spec/hostNetwork", json!(true)),
            ),
            ("already injected", annotate(web(), &[(STATUS, "{}")])),
            ("bad status", annotate(web(), &[(STATUS, "yes")])),
            (
                "opted out",
                with(web(), "/metadata/labels/meshd.io~1inject", json!("false")),
            ),
            ("bad annotation", annotate(web(), &[(PROXY_CPU, "lots")])),
            (
                "bad probe annotation",
                annotate(probed(), &[(REWRITE_APP_PROBES, "no")]),
            ),
            (
                "probe of another host",
                with(
                    probed(),
                    "/spec/containers/0/readinessProbe/httpGet/host",
                    json!("10.0.0.1"),
                ),
            ),
            (
                "probe port as a numeric string",
                with(
                    probed(),
                    "/spec/containers/0/readinessProbe/httpGet/port",
                    json!("8080"),
                ),
            ),
            (
                "probe without a path",
                with(
                    probed(),
                    "/spec/containers/0/readinessProbe/httpGet",
                    json!({"port": 8080}),
                ),
            ),
            (
                "probe on the proxy's port",
                with(
                    probed(),
                    "/spec/containers/0/readinessProbe/httpGet/port",
                    json!(15090),
                ),
            ),
            (
                "grpc probe",
                with(
                    probed(),
                    "/spec/containers/0/readinessProbe",
                    json!({"grpc": {"port": 8080}}),
                ),
            ),
            (
                "grpc probes on two ports",
                with(
                    grpc_probed(),
                    "/spec/containers/1/readinessProbe",
                    json!({"grpc": {"port": 9556}}),
                ),
            ),
            (
                "bad service account",
                with(web(), "/spec/serviceAccountName", json!("Web_1")),
            ),
            ("job pod", job_pod("Never")),
            (
                "job pod, native by annotation",
                annotate(job_pod("OnFailure"), &[(NATIVE_SIDECAR, "true")]),
            ),
            ("no spec", json!({"metadata": {"name": "a"}})),
            (
                "reserved container",
                with(web(), "/spec/containers/1/name", json!(PROXY_CONTAINER)),
            ),
            (
                "reserved init container",
                with(web(), "/spec/initContainers/0/name", json!(INIT_CONTAINER)),
            ),
            (
                "reserved ephemeral container",
                with(
                    web(),
                    "/spec/ephemeralContainers",
                    json!([{"name": INIT_CONTAINER, "image": "x"}]),
                ),
            ),
            (
                "reserved volume",
                with(web(), "/spec/volumes/0/name", json!(IDENTITY_VOLUME)),
            ),
            (
                "proxy port",
                with(
                    web(),
                    "/spec/containers/0/ports/0/containerPort",
                    json!(15001),
                ),
            ),
            (
                "proxy port name",
                with(
                    web(),
                    "/spec/containers/0/ports/0/name",
                    json!("meshd-inbound"),
                ),
            ),
            (
                "proxy uid",
                with(
                    web(),
                    "/spec/containers/1/securityContext",
                    json!({"runAsUser": 1337}),
                ),
            ),
            (
                "proxy gid for the pod",
                with(realistic, "/spec/securityContext/runAsGroup", json!(1337)),
            ),
        ]);
        let mut distinct = std::collections::BTreeSet::new();
        for config in [config(), classic(), pulling()] {
            for (shape, v) in &cases {
                let whole: Pod = serde_json::from_value(v.clone()).unwrap();
                let view: PodForInjection = serde_json::from_value(v.clone()).unwrap();
                let expected = outcome(&whole, &config);
                assert_eq!(outcome(&view.0, &config), expected, "{shape}");
                distinct.insert(expected);
            }
        }
        // The cases differ: each exercises what it says.
        assert!(distinct.len() > 40, "{}", distinct.len());
    }

    #[test]
    fn the_webhooks_view_of_a_pod_names_bad_fields_as_the_whole_pod_does() {
        for (pointer, value) in [
            ("/spec/containers/0/ports/0/containerPort", json!("eighty")),
            ("/spec/containers/0/name", json!(7)),
            ("/spec/hostNetwork", json!("yes")),
            ("/metadata/annotations/a", json!(1)),
            ("/spec/volumes", json!({})),
            ("/spec/containers/0/readinessProbe/httpGet/port", json!({})),
            (
                "/spec/containers/0/livenessProbe/timeoutSeconds",
                json!("x"),
            ),
            ("/spec/containers/0/livenessProbe/httpGet/path", json!(1)),
            ("/kind", json!("Deployment")),
        ] {
            let v = with(probed(), pointer, value);
            let whole = serde_path_to_error::deserialize::<_, Pod>(v.clone()).unwrap_err();
            let view = serde_path_to_error::deserialize::<_, PodForInjection>(v).unwrap_err();
            if pointer == "/kind" {
                assert!(view.inner().to_string().contains("`Deployment`"), "{view}");
                continue;
            }
            assert_eq!(
                view.path().to_string(),
                whole.path().to_string(),
                "{pointer}"
            );
            assert_eq!(
                view.inner().to_string(),
                whole.inner().to_string(),
                "{pointer}"
            );
        }
    }

    fn probe<'a>(pod: &'a Pod, container: usize, field: &str) -> Option<&'a Probe> {
        let c = &pod.spec.as_ref().unwrap().containers[container];
        match field {
            "livenessProbe" => c.liveness_probe.as_ref(),
            "readinessProbe" => c.readiness_probe.as_ref(),
            _ => c.startup_probe.as_ref(),
        }
    }

    #[test]
    fn app_http_probes_go_through_the_proxy_and_the_others_stay() {
        for config in [config(), classic()] {
            let (pod, _) = injected(probed(), &config);
            let original = self::pod(probed());
            // In classic mode the proxy is the first container.
            let shift = usize::from(!config.native_sidecar);
            let app = |field| probe(&pod, shift, field).unwrap();
            let get = |field| app(field).http_get.as_ref().unwrap();
            assert_eq!(get("readinessProbe").port, IntOrString::Int(15021));
            assert_eq!(
                get("readinessProbe").path.as_deref(),
                Some("/app-health/app/readyz")
            );
            assert_eq!(get("readinessProbe").scheme.as_deref(), Some("HTTP"));
            assert_eq!(app("readinessProbe").period_seconds, Some(5));
            let live = app("livenessProbe");
            assert_eq!(
                live.http_get.as_ref().unwrap().path.as_deref(),
                Some("/app-health/app/livez")
            );
            // Headers and timings are the pod's.
            assert_eq!(
                live.http_get.as_ref().unwrap().http_headers,
                probe(&original, 0, "livenessProbe")
                    .unwrap()
                    .http_get
                    .as_ref()
                    .unwrap()
                    .http_headers
            );
            assert_eq!(live.initial_delay_seconds, Some(10));
            assert_eq!(live.timeout_seconds, Some(3));
            assert_eq!(live.failure_threshold, Some(5));
            // HTTPS, a port the container does not name, TCP, exec and the
            // init container's probe are left alone.
            assert_eq!(
                probe(&pod, shift, "startupProbe"),
                probe(&original, 0, "startupProbe")
            );
            for field in ["livenessProbe", "readinessProbe", "startupProbe"] {
                assert_eq!(
                    probe(&pod, shift + 1, field),
                    probe(&original, 1, field),
                    "{field}"
                );
            }
            let init = pod.spec.as_ref().unwrap().init_containers.as_ref().unwrap();
            let migrate = init.iter().find(|c| c.name == "migrate").unwrap();
            assert_eq!(
                migrate.readiness_probe,
                original
                    .spec
                    .as_ref()
                    .unwrap()
                    .init_containers
                    .as_ref()
                    .unwrap()[0]
                    .readiness_probe
            );

            // The proxy's bootstrap routes both to the app, by port and path.
            let proxy = container(&pod, PROXY_CONTAINER);
            let bootstrap: Value =
                serde_json::from_str(arg_after(proxy, "--config-yaml").unwrap()).unwrap();
            let routes = &bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"]
                [0]["typed_config"]["route_config"]["virtual_hosts"][0]["routes"];
            let routes: Vec<(&str, &str, &str, &str)> = routes
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    (
                        r["match"]["path"].as_str().unwrap(),
                        r["route"]["cluster"].as_str().unwrap(),
                        r["route"]["prefix_rewrite"].as_str().unwrap(),
                        r["route"]["timeout"].as_str().unwrap_or(""),
                    )
                })
                .collect();
            assert_eq!(
                routes,
                [
                    ("/healthz/ready", "admin", "/ready", ""),
                    (
                        "/app-health/app/livez",
                        "app-probe|9090",
                        "/live?full=1",
                        "3.000s"
                    ),
                    (
                        "/app-health/app/readyz",
                        "app-probe|8080",
                        "/ready",
                        "1.000s"
                    ),
                ]
            );
            let status: Status =
                serde_json::from_str(&pod.metadata.annotations.as_ref().unwrap()[STATUS]).unwrap();
            assert_eq!(
                status.app_probes,
                ["/app-health/app/livez", "/app-health/app/readyz"]
            );

            // Opted out (by the pod, or mesh-wide unless the pod opts
            // back in): the probes are the pod's, the bootstrap has none.
            let mesh_off = InjectorConfig {
                rewrite_app_probes: false,
                ..config.clone()
            };
            let (back_in, _) = injected(
                annotate(probed(), &[(REWRITE_APP_PROBES, "true")]),
                &mesh_off,
            );
            assert_ne!(
                probe(&back_in, shift, "readinessProbe"),
                probe(&original, 0, "readinessProbe")
            );
            let (off, _) = injected(probed(), &mesh_off);
            let v = annotate(probed(), &[(REWRITE_APP_PROBES, "false")]);
            let (pod, _) = injected(v, &config);
            for field in ["livenessProbe", "readinessProbe", "startupProbe"] {
                assert_eq!(
                    probe(&pod, shift, field),
                    probe(&original, 0, field),
                    "{field}"
                );
                assert_eq!(probe(&off, shift, field), probe(&original, 0, field));
            }
            let proxy = container(&pod, PROXY_CONTAINER);
            assert!(
                !arg_after(proxy, "--config-yaml")
                    .unwrap()
                    .contains("app-health")
            );
            let status = &pod.metadata.annotations.as_ref().unwrap()[STATUS];
            assert!(!status.contains("appProbes"), "{status}");
        }
    }

    #[test]
    fn app_grpc_probes_go_through_the_proxys_readiness_port() {
        for config in [config(), classic()] {
            let (pod, _) = injected(grpc_probed(), &config);
            let original = self::pod(grpc_probed());
            let shift = usize::from(!config.native_sidecar);
            // Only the port changes: the service named, the timings and
            // the rest of the probe are the pod's.
            for field in ["readinessProbe", "livenessProbe"] {
                let mut expected = probe(&original, 0, field).unwrap().clone();
                expected.grpc.as_mut().unwrap().port = 15021;
                assert_eq!(probe(&pod, shift, field), Some(&expected), "{field}");
            }
            assert_eq!(
                probe(&pod, shift, "livenessProbe")
                    .unwrap()
                    .grpc
                    .as_ref()
                    .unwrap()
                    .service
                    .as_deref(),
                Some("hipstershop.CartService")
            );
            // The HTTP probe in the same pod as before; a gRPC probe of
            // the proxy's port is left alone.
            let startup = probe(&pod, shift, "startupProbe").unwrap();
            assert_eq!(
                startup.http_get.as_ref().unwrap().path.as_deref(),
                Some("/app-health/app/startupz")
            );
            assert_eq!(
                probe(&pod, shift + 1, "readinessProbe"),
                probe(&original, 1, "readinessProbe")
            );

            // The bootstrap forwards the health check, and only it, to the
            // app's gRPC port, waiting as long as the most patient probe.
            let proxy = container(&pod, PROXY_CONTAINER);
            let bootstrap: Value =
                serde_json::from_str(arg_after(proxy, "--config-yaml").unwrap()).unwrap();
            let listener = &bootstrap["static_resources"]["listeners"][0];
            assert_eq!(listener["address"]["socket_address"]["port_value"], 15021);
            let routes = listener["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]
                ["virtual_hosts"][0]["routes"]
                .as_array()
                .unwrap();
            let grpc: Vec<&Value> = routes
                .iter()
                .filter(|r| r["match"].get("grpc").is_some())
                .collect();
            assert_eq!(grpc.len(), 1, "{routes:?}");
            assert_eq!(grpc[0]["match"]["path"], "/grpc.health.v1.Health/Check");
            assert_eq!(grpc[0]["route"]["cluster"], "app-grpc-probe|9555");
            assert_eq!(grpc[0]["route"]["timeout"], "4.000s");
            let clusters = bootstrap["static_resources"]["clusters"]
                .as_array()
                .unwrap();
            assert!(
                clusters.iter().any(|c| c["name"] == "app-grpc-probe|9555"),
                "{clusters:?}"
            );
            let status: Status =
                serde_json::from_str(&pod.metadata.annotations.as_ref().unwrap()[STATUS]).unwrap();
            assert_eq!(status.grpc_probes, ["app/livez", "app/readyz"]);
            assert_eq!(status.app_probes, ["/app-health/app/startupz"]);

            // Opted out: the probes are the pod's, the bootstrap has none.
            let v = annotate(grpc_probed(), &[(REWRITE_APP_PROBES, "false")]);
            let (off, _) = injected(v, &config);
            for field in ["livenessProbe", "readinessProbe", "startupProbe"] {
                assert_eq!(probe(&off, shift, field), probe(&original, 0, field));
            }
            let proxy = container(&off, PROXY_CONTAINER);
            assert!(
                !arg_after(proxy, "--config-yaml")
                    .unwrap()
                    .contains("grpc.health")
            );
        }
    }

    #[test]
    fn grpc_probes_of_two_ports_are_refused_saying_what_to_do() {
        let v = with(
            grpc_probed(),
            "/spec/containers/1/readinessProbe",
            json!({"grpc": {"port": 9556}}),
        );
        assert_eq!(
            inject(&pod(v.clone()), "shop", &config())
                .unwrap_err()
                .to_string(),
            "the pod cannot be injected: spec.containers[app].livenessProbe.grpc.port is 9555 and spec.containers[logger].readinessProbe.grpc.port is 9556: the proxy can carry the gRPC probes of one port only (kubelet's gRPC health check names nothing to tell ports apart by); accepted: gRPC probes on one port (one health service can answer for several services by name), or meshd.io/rewrite-app-probes: \"false\" to leave the probes as they are (they then fail under STRICT mTLS)"
        );
        let (pod, _) = injected(annotate(v, &[(REWRITE_APP_PROBES, "false")]), &config());
        assert_eq!(
            probe(&pod, 1, "readinessProbe")
                .unwrap()
                .grpc
                .as_ref()
                .unwrap()
                .port,
            9556
        );
    }

    #[test]
    fn a_bad_probe_annotation_names_what_is_accepted() {
        let v = annotate(probed(), &[(REWRITE_APP_PROBES, "off")]);
        assert_eq!(
            inject(&pod(v), "shop", &config()).unwrap_err().to_string(),
            "annotation meshd.io/rewrite-app-probes: `off` is not valid; accepted: true, false"
        );
    }

    #[test]
    fn a_pod_without_spec_is_an_error_not_a_panic() {
        let err = inject(&pod(json!({"metadata": {"name": "a"}})), "shop", &config()).unwrap_err();
        assert!(matches!(err, InjectError::InvalidPod(_)));
    }
}
