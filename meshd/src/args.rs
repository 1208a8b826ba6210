//! Command-line arguments. Every flag also reads a `MESHD_…` environment
//! variable, which is how the chart configures the container. A variable
//! means one thing: two commands share one only where the flag means the
//! same for both (the injector settings of `run` and `inject`, the trust
//! domain); otherwise each command has its own prefix
//! (`MESHD_BOOTSTRAP_…`, `MESHD_INJECT_…`, `MESHD_CAPTURE_…`), so the
//! environment of a `meshd run` container never steers another command.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use meshd_api::annotations::authorization::DefaultPolicy;
use meshd_api::annotations::pod::{SamplingPercent, TRACING_SAMPLING_ACCEPTED};
use meshd_controlplane::translate::Collector;
use meshd_injector::config::InjectorConfig;

#[derive(Debug, Parser)]
#[command(
    name = "meshd",
    version,
    about = "A lightweight service mesh control plane for Envoy"
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the control plane: service discovery and the xDS server.
    // Boxed: the run flags dwarf the other commands'.
    Run(Box<RunArgs>),
    /// Print the Envoy bootstrap for a workload's sidecar.
    Bootstrap(BootstrapArgs),
    /// Install the iptables rules that send a pod's traffic through its
    /// sidecar (the init container's job).
    Capture(CaptureArgs),
    /// Inject sidecars into manifests offline (Pods, Deployments,
    /// StatefulSets, DaemonSets, ReplicaSets, Jobs, CronJobs), exactly as the
    /// webhook would; other kinds pass through untouched.
    Inject(InjectArgs),
    /// Show whether each connected proxy has taken what it was sent, per
    /// type (CDS, EDS, LDS, RDS, SDS: SYNCED, NOT SENT, STALE = sent and
    /// not yet acknowledged, NACKED), or one proxy in detail.
    ProxyStatus(ProxyStatusArgs),
    /// Show what the control plane sent a proxy (clusters, endpoints,
    /// listeners, routes, secrets; never a private key) and what it
    /// acknowledged, or compare it with Envoy's own config dump (--diff).
    ProxyConfig(ProxyConfigArgs),
}

#[derive(Debug, clap::Args)]
pub struct ProxyStatusArgs {
    /// One proxy to show in detail, as `POD.NAMESPACE` (its node id).
    #[arg(env = "MESHD_PROXY_STATUS_PROXY", value_name = "POD.NAMESPACE")]
    pub proxy: Option<String>,
    /// A control plane's debug address (`meshd run --debug-address`, or a
    /// `kubectl port-forward` to it). Repeat it (or separate with commas)
    /// for several replicas: each is asked and the answers merged.
    #[arg(
        long = "control-plane",
        env = "MESHD_PROXY_STATUS_CONTROL_PLANE",
        value_delimiter = ',',
        value_name = "HOST:PORT",
        default_value = "127.0.0.1:15014"
    )]
    pub control_planes: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct ProxyConfigArgs {
    /// What to show.
    #[arg(env = "MESHD_PROXY_CONFIG_TYPE", value_enum)]
    pub r#type: crate::inspect::ConfigType,
    /// The proxy, as `POD.NAMESPACE` (its node id).
    #[arg(env = "MESHD_PROXY_CONFIG_PROXY", value_name = "POD.NAMESPACE")]
    pub proxy: String,
    /// Output: table (readable), or json / yaml in the shape of Envoy's
    /// config dump.
    #[arg(
        long,
        short,
        env = "MESHD_PROXY_CONFIG_OUTPUT",
        value_enum,
        default_value = "table"
    )]
    pub output: crate::inspect::Output,
    /// Only what concerns this service's FQDN
    /// (`web.shop.svc.cluster.local`): its clusters and endpoints, its
    /// virtual hosts, the listener chains that lead to it.
    #[arg(long, env = "MESHD_PROXY_CONFIG_FQDN")]
    pub fqdn: Option<String>,
    /// Only what concerns this port.
    #[arg(long, env = "MESHD_PROXY_CONFIG_PORT")]
    pub port: Option<u16>,
    /// Only the resource of this name.
    #[arg(long, env = "MESHD_PROXY_CONFIG_NAME")]
    pub name: Option<String>,
    /// Compare what the control plane sent with what Envoy holds (its
    /// admin `/config_dump`, at --admin); exits non-zero when they differ.
    #[arg(long, env = "MESHD_PROXY_CONFIG_DIFF", requires = "admin")]
    pub diff: bool,
    /// The proxy's Envoy admin address (local mode, or a `kubectl
    /// port-forward POD 15000`): for --diff, and for the listener table's
    /// authorization denials by caller, read from the proxy's counters.
    #[arg(long, env = "MESHD_PROXY_CONFIG_ADMIN", value_name = "HOST:PORT")]
    pub admin: Option<String>,
    /// A control plane's debug address; repeat it (or separate with
    /// commas) for several replicas: the one the proxy is connected to
    /// answers.
    #[arg(
        long = "control-plane",
        env = "MESHD_PROXY_CONFIG_CONTROL_PLANE",
        value_delimiter = ',',
        value_name = "HOST:PORT",
        default_value = "127.0.0.1:15014"
    )]
    pub control_planes: Vec<String>,
}

/// What gets injected (shared by the webhook in `meshd run` and `meshd inject`).
#[derive(Debug, clap::Args)]
pub struct InjectorArgs {
    /// The Envoy image of the sidecar.
    #[arg(long, env = "MESHD_PROXY_IMAGE", default_value_t = InjectorConfig::default().proxy_image)]
    pub proxy_image: String,
    /// The meshd image, run as the traffic-capture init container.
    #[arg(long, env = "MESHD_INIT_IMAGE", default_value_t = InjectorConfig::default().init_image)]
    pub init_image: String,
    /// Where injected proxies reach the control plane, `host:port`
    /// [default: with `meshd run`, its own Service:
    /// <--webhook-service>.<--namespace>.svc:<port of --xds-address>
    /// (meshd.meshd-system.svc:15010 with the defaults); with `meshd
    /// inject`, meshd.meshd-system.svc:15010]
    #[arg(long, env = "MESHD_INJECT_XDS_ADDRESS", value_name = "HOST:PORT")]
    pub inject_xds_address: Option<String>,
    /// Run proxies as native sidecars (Kubernetes 1.29+): true or false.
    #[arg(
        long,
        env = "MESHD_NATIVE_SIDECAR",
        default_value_t = InjectorConfig::default().native_sidecar,
        action = clap::ArgAction::Set,
        value_name = "BOOL"
    )]
    pub native_sidecar: bool,
    /// Send app containers' HTTP and gRPC probes through the proxy so they
    /// pass under STRICT mTLS (pods override with
    /// meshd.io/rewrite-app-probes): true or false.
    #[arg(
        long,
        env = "MESHD_REWRITE_APP_PROBES",
        default_value_t = InjectorConfig::default().rewrite_app_probes,
        action = clap::ArgAction::Set,
        value_name = "BOOL"
    )]
    pub rewrite_app_probes: bool,
    /// Add the Prometheus scrape annotations (prometheus.io/scrape, port
    /// 15090, path /stats/prometheus) to injected pods, never over the
    /// pod's own (pods opt out with meshd.io/prometheus-scrape): true or
    /// false.
    #[arg(
        long,
        env = "MESHD_PROMETHEUS_SCRAPE",
        default_value_t = InjectorConfig::default().prometheus_scrape,
        action = clap::ArgAction::Set,
        value_name = "BOOL"
    )]
    pub prometheus_scrape: bool,
    /// Secrets for pulling the proxy and init images from a private
    /// registry, added to the imagePullSecrets of every injected pod (each
    /// must exist in the pod's own namespace): a comma-separated list of
    /// names.
    #[arg(
        long,
        env = "MESHD_IMAGE_PULL_SECRETS",
        value_delimiter = ',',
        value_name = "NAME,..."
    )]
    pub image_pull_secrets: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct InjectArgs {
    /// The manifests to inject: a file, or `-` for standard input.
    #[arg(long, short = 'f', env = "MESHD_INJECT_FILENAME")]
    pub filename: PathBuf,
    /// The namespace of manifests that do not name one.
    #[arg(
        long,
        short = 'n',
        env = "MESHD_INJECT_NAMESPACE",
        default_value = "default"
    )]
    pub namespace: String,
    #[command(flatten)]
    pub injector: InjectorArgs,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// A directory of Kubernetes manifests (Namespace, Service,
    /// EndpointSlice, Pod) to serve, watched for changes. Without it, the
    /// embedded default registry (the local demo) is served.
    #[arg(long, env = "MESHD_REGISTRY", conflicts_with = "kubernetes")]
    pub registry: Option<PathBuf>,

    /// Discover the mesh from the Kubernetes API (in-cluster configuration,
    /// or the current kubeconfig context) instead of a registry.
    #[arg(long, env = "MESHD_KUBERNETES")]
    pub kubernetes: bool,

    /// Where the xDS (ADS) gRPC server listens.
    #[arg(long, env = "MESHD_XDS_ADDRESS", default_value = "127.0.0.1:15010")]
    pub xds_address: SocketAddr,

    /// Serve xDS (and SDS, and the CSR service): true or false. Turn it off
    /// for an injector-only deployment (with --webhook-address); the debug
    /// endpoints (health, readiness, metrics) stay on either way.
    #[arg(
        long,
        env = "MESHD_XDS",
        default_value_t = true,
        action = clap::ArgAction::Set,
        value_name = "BOOL"
    )]
    pub xds: bool,

    /// Where health, metrics and debug endpoints listen.
    #[arg(long, env = "MESHD_DEBUG_ADDRESS", default_value = "127.0.0.1:15014")]
    pub debug_address: SocketAddr,

    /// Coalescing window, in milliseconds: a change after this much quiet
    /// goes to proxies at once; changes closer together than this are
    /// sent together once they stop for this long.
    #[arg(long, env = "MESHD_DEBOUNCE_MS", default_value_t = 100)]
    pub debounce_ms: u64,

    #[command(flatten)]
    pub ca: CaArgs,

    /// The mesh-wide mTLS mode: STRICT, PERMISSIVE or DISABLE. Namespaces
    /// and pods override it with the `meshd.io/mtls` annotation.
    #[arg(long, env = "MESHD_MTLS_MODE", default_value = "PERMISSIVE")]
    pub mtls_mode: String,

    /// JSON access logs on every proxy's standard output (pods override
    /// with the `meshd.io/access-log` annotation): true or false.
    #[arg(
        long,
        env = "MESHD_ACCESS_LOG",
        default_value_t = false,
        action = clap::ArgAction::Set,
        value_name = "BOOL"
    )]
    pub access_log: bool,

    /// The OpenTelemetry collector the proxies send their spans to, over
    /// OTLP/gRPC: HOST:PORT (`otel-collector.observability:4317`). Unset,
    /// nothing is traced.
    #[arg(
        long,
        env = "MESHD_TRACING_COLLECTOR",
        value_name = "HOST:PORT",
        value_parser = parse_tracing_collector
    )]
    pub tracing_collector: Option<Collector>,

    /// The percentage of requests the proxies trace when there is a
    /// collector (pods override with the `meshd.io/tracing-sampling`
    /// annotation): 0 to 100, at most two decimals.
    #[arg(
        long,
        env = "MESHD_TRACING_SAMPLING",
        default_value = "1",
        value_name = "PERCENT",
        value_parser = parse_tracing_sampling
    )]
    pub tracing_sampling: SamplingPercent,

    /// Who may call a Service without `meshd.io/authorization` of its own
    /// or its Namespace's: allow-all, allow-authenticated (any mesh
    /// workload), allow-same-namespace or deny-all. Enforced by the
    /// serving pods' proxies.
    #[arg(
        long,
        env = "MESHD_AUTHORIZATION_DEFAULT",
        default_value = "allow-all",
        value_name = "DEFAULT",
        value_parser = parse_authorization_default
    )]
    pub authorization_default: DefaultPolicy,

    /// Workload certificate lifetime (`90s`, `30m`, `24h`; at least 60s).
    #[arg(long, env = "MESHD_WORKLOAD_CERT_TTL", default_value = "24h")]
    pub workload_cert_ttl: String,

    /// When in its lifetime a workload certificate is replaced (0 < f < 1).
    #[arg(long, env = "MESHD_ROTATION_FRACTION", default_value_t = 0.5)]
    pub rotation_fraction: f64,

    /// The control plane's own namespace (part of its SPIFFE ID, which
    /// proxies verify).
    #[arg(long, env = "MESHD_NAMESPACE", default_value = "meshd-system")]
    pub namespace: String,

    /// The control plane's service account (part of its SPIFFE ID).
    #[arg(long, env = "MESHD_SERVICE_ACCOUNT", default_value = "meshd")]
    pub service_account: String,

    /// DNS names proxies may use to reach the xDS port (comma-separated).
    #[arg(long, env = "MESHD_XDS_DNS_NAMES", default_value = "localhost")]
    pub xds_dns_names: String,

    /// Serve the sidecar injection webhook (HTTPS) here; off when unset.
    #[arg(long, env = "MESHD_WEBHOOK_ADDRESS")]
    pub webhook_address: Option<SocketAddr>,

    /// The Service the API server calls the webhook through; its
    /// `<service>.<namespace>.svc` name is in the webhook's certificate.
    #[arg(long, env = "MESHD_WEBHOOK_SERVICE", default_value = "meshd")]
    pub webhook_service: String,

    #[command(flatten)]
    pub injector: InjectorArgs,

    #[command(flatten)]
    pub ha: HaArgs,

    #[command(flatten)]
    pub limits: LimitArgs,
}

/// How many connections each listener holds at most. Each is a file
/// descriptor: meshd raises its soft descriptor limit to the hard limit at
/// start, and by default shares it out (a reserve for everything else,
/// then at most 128 debug, 1024 webhook and 32768 xDS connections), so a
/// flood on one port never starves another. A full listener closes the
/// connection idle longest to make room.
#[derive(Debug, clap::Args)]
pub struct LimitArgs {
    /// Most open xDS connections (one per proxy) [default: 32768, or less
    /// as the descriptor limit allows].
    #[arg(long, env = "MESHD_XDS_MAX_CONNECTIONS", value_name = "N")]
    pub xds_max_connections: Option<usize>,

    /// Most open webhook connections [default: 1024, or less as the
    /// descriptor limit allows].
    #[arg(long, env = "MESHD_WEBHOOK_MAX_CONNECTIONS", value_name = "N")]
    pub webhook_max_connections: Option<usize>,

    /// Most open connections to the debug endpoints [default: 128, or less
    /// as the descriptor limit allows].
    #[arg(long, env = "MESHD_DEBUG_MAX_CONNECTIONS", value_name = "N")]
    pub debug_max_connections: Option<usize>,
}

/// Running several replicas in a cluster (with --kubernetes).
#[derive(Debug, clap::Args)]
pub struct HaArgs {
    /// This replica's name, the holder identity in the leader Lease (the
    /// pod name; defaults to the hostname, else a random id).
    #[arg(long, env = "MESHD_POD_NAME")]
    pub pod_name: Option<String>,

    /// The coordination.k8s.io Lease, in --namespace, that elects the
    /// leader (lease 15s, renew deadline 10s, retry 2s). Only the leader
    /// creates the root CA Secret and patches webhook caBundles; every
    /// replica serves xDS, SDS and the webhook.
    #[arg(
        long,
        env = "MESHD_LEADER_ELECTION_LEASE",
        default_value = "meshd-leader"
    )]
    pub leader_election_lease: String,

    /// The Secret, in --namespace, holding the generated root CA
    /// (root-cert.pem, root-key.pem) with --kubernetes and no --plug-in-ca;
    /// created by the leader on first start. Without --kubernetes, --ca-dir
    /// is the store.
    #[arg(long, env = "MESHD_CA_SECRET", default_value = "meshd-ca")]
    pub ca_secret: String,

    /// A MutatingWebhookConfiguration whose webhooks' clientConfig.caBundle
    /// the leader keeps equal to the mesh trust bundle (at start and after
    /// a root rotation).
    #[arg(long, env = "MESHD_MUTATING_WEBHOOK_CONFIGURATION")]
    pub mutating_webhook_configuration: Option<String>,

    /// The same for a ValidatingWebhookConfiguration.
    #[arg(long, env = "MESHD_VALIDATING_WEBHOOK_CONFIGURATION")]
    pub validating_webhook_configuration: Option<String>,

    /// On SIGTERM or SIGINT: how long open xDS streams are still served
    /// (readiness already false, new connections refused) before they are
    /// closed so proxies reconnect to another replica (`90`, `10s`, `1m`).
    #[arg(long, env = "MESHD_DRAIN_PERIOD", default_value = "10s")]
    pub drain_period: String,
}

/// Where the CA's keys come from.
#[derive(Debug, clap::Args)]
pub struct CaArgs {
    /// Directory of the generated root CA (created on first start; the key
    /// is written with mode 0600).
    #[arg(long, env = "MESHD_CA_DIR", default_value = ".meshd/ca")]
    pub ca_dir: PathBuf,

    /// Issue from an intermediate instead: a directory with ca-cert.pem,
    /// ca-key.pem, root-cert.pem and cert-chain.pem (Istio's cacerts layout).
    #[arg(long, env = "MESHD_PLUG_IN_CA")]
    pub plug_in_ca: Option<PathBuf>,

    /// The SPIFFE trust domain.
    #[arg(long, env = "MESHD_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
}

#[derive(Debug, clap::Args)]
pub struct BootstrapArgs {
    /// The pod's namespace.
    #[arg(long, env = "MESHD_BOOTSTRAP_NAMESPACE")]
    pub namespace: String,

    /// The pod's name; with the namespace it forms the proxy's node id.
    #[arg(long, env = "MESHD_BOOTSTRAP_POD")]
    pub pod: String,

    /// The control plane's xDS address, `host:port`.
    #[arg(
        long,
        env = "MESHD_BOOTSTRAP_XDS_ADDRESS",
        default_value = "127.0.0.1:15010"
    )]
    pub xds_address: String,

    /// The ADS flavour: delta or sotw.
    #[arg(long, env = "MESHD_BOOTSTRAP_XDS_PROTOCOL", default_value = "delta")]
    pub xds_protocol: String,

    /// Where Envoy's admin interface listens (keep it on loopback).
    #[arg(
        long,
        env = "MESHD_BOOTSTRAP_ADMIN_ADDRESS",
        default_value = "127.0.0.1:15000"
    )]
    pub admin_address: SocketAddr,

    /// The address the readiness (15021) and stats (15090) listeners bind.
    #[arg(long, env = "MESHD_BOOTSTRAP_PROXY_ADDRESS", default_value = "0.0.0.0")]
    pub proxy_address: IpAddr,

    /// Write to this file instead of standard output.
    #[arg(long, short, env = "MESHD_BOOTSTRAP_OUTPUT")]
    pub output: Option<PathBuf>,

    /// The pod's service account: with the namespace, its identity.
    #[arg(
        long,
        env = "MESHD_BOOTSTRAP_SERVICE_ACCOUNT",
        default_value = "default"
    )]
    pub service_account: String,

    /// The directory holding the proxy's bootstrap identity (certificate,
    /// key, trust bundle), with which it proves to the control plane who
    /// it is. In Kubernetes, the injector mounts it from a Secret. The
    /// bootstrap names it by its absolute path, so Envoy may start in any
    /// directory.
    #[arg(long, env = "MESHD_BOOTSTRAP_IDENTITY_DIR")]
    pub identity_dir: PathBuf,

    /// Issue the bootstrap identity into --identity-dir from the local CA
    /// in this directory (local mode; the control plane's --ca-dir).
    #[arg(long, env = "MESHD_BOOTSTRAP_ISSUE_FROM_CA_DIR")]
    pub issue_from_ca_dir: Option<PathBuf>,

    /// The SPIFFE trust domain (the same variable as `meshd run`'s: the
    /// two must agree).
    #[arg(long, env = "MESHD_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,

    /// The SPIFFE ID the control plane's certificate must carry. Default:
    /// the chart's (namespace meshd-system, service account meshd) in
    /// --trust-domain.
    #[arg(long, env = "MESHD_BOOTSTRAP_CONTROL_PLANE_IDENTITY")]
    pub control_plane_identity: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct CaptureArgs {
    /// The UID the sidecar runs as; its traffic is never redirected.
    #[arg(long, env = "MESHD_CAPTURE_PROXY_UID", default_value_t = meshd_injector::capture::PROXY_UID)]
    pub proxy_uid: u32,

    /// The GID the sidecar runs as.
    #[arg(long, env = "MESHD_CAPTURE_PROXY_GID", default_value_t = meshd_injector::capture::PROXY_UID)]
    pub proxy_gid: u32,

    /// Inbound ports reached directly, bypassing the sidecar (comma-separated).
    #[arg(long, env = "MESHD_CAPTURE_EXCLUDE_INBOUND_PORTS", default_value = "")]
    pub exclude_inbound_ports: String,

    /// Outbound destination ports reached directly (comma-separated).
    #[arg(long, env = "MESHD_CAPTURE_EXCLUDE_OUTBOUND_PORTS", default_value = "")]
    pub exclude_outbound_ports: String,

    /// Outbound destinations reached directly (comma-separated CIDRs).
    #[arg(long, env = "MESHD_CAPTURE_EXCLUDE_OUTBOUND_CIDRS", default_value = "")]
    pub exclude_outbound_cidrs: String,

    /// Also redirect IPv6 (with ip6tables). The proxy's listeners are
    /// IPv4-only in this version, so redirected IPv6 connections are
    /// refused: IPv6 fails closed instead of bypassing the proxy. Without
    /// it (and the injector never sets it) IPv6 traffic is not captured.
    #[arg(long, env = "MESHD_CAPTURE_IPV6")]
    pub ipv6: bool,

    /// Print the rules instead of applying them.
    #[arg(long, env = "MESHD_CAPTURE_DRY_RUN")]
    pub dry_run: bool,
}

fn parse_tracing_collector(value: &str) -> Result<Collector, String> {
    Collector::parse(value).ok_or_else(|| format!("accepted: {}", Collector::ACCEPTED))
}

fn parse_authorization_default(value: &str) -> Result<DefaultPolicy, String> {
    DefaultPolicy::parse(value).ok_or_else(|| format!("accepted: {}", DefaultPolicy::ACCEPTED))
}

fn parse_tracing_sampling(value: &str) -> Result<SamplingPercent, String> {
    SamplingPercent::parse(value).ok_or_else(|| format!("accepted: {TRACING_SAMPLING_ACCEPTED}"))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use clap::CommandFactory;

    use super::*;

    /// Every flag of every command, as (command, flag id, variable).
    fn flags() -> Vec<(String, String, Option<String>)> {
        let mut flags = Vec::new();
        for command in Args::command().get_subcommands() {
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                flags.push((
                    command.get_name().to_string(),
                    id.to_string(),
                    arg.get_env().map(|e| e.to_string_lossy().into_owned()),
                ));
            }
        }
        flags
    }

    /// Issue #11 E.4: `bootstrap -o`, `--issue-from-ca-dir`, `inject -f`
    /// and `-n` had none.
    #[test]
    fn every_flag_has_a_meshd_variable() {
        let flags = flags();
        assert!(flags.len() > 40, "{flags:?}");
        for (command, id, env) in &flags {
            assert!(
                env.as_deref().is_some_and(|e| e.starts_with("MESHD_")),
                "meshd {command} --{id} has no MESHD_ variable"
            );
        }
    }

    /// Issue #11 E.4: `bootstrap` read MESHD_NAMESPACE, MESHD_POD_NAME,
    /// MESHD_XDS_ADDRESS and MESHD_SERVICE_ACCOUNT, which mean the control
    /// plane's own in `run`.
    #[test]
    fn a_variable_shared_by_two_commands_means_the_same_in_both() {
        let mut users: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
        for (command, id, env) in flags() {
            users
                .entry(env.unwrap_or_default())
                .or_default()
                .push((command, id));
        }
        let shared: BTreeMap<&str, Vec<(&str, &str)>> = users
            .iter()
            .filter(|(_, u)| u.len() > 1)
            .map(|(env, u)| {
                (
                    env.as_str(),
                    u.iter().map(|(c, i)| (c.as_str(), i.as_str())).collect(),
                )
            })
            .collect();
        let injector = |id| vec![("run", id), ("inject", id)];
        assert_eq!(
            shared,
            BTreeMap::from([
                ("MESHD_IMAGE_PULL_SECRETS", injector("image_pull_secrets")),
                ("MESHD_INIT_IMAGE", injector("init_image")),
                ("MESHD_INJECT_XDS_ADDRESS", injector("inject_xds_address")),
                ("MESHD_NATIVE_SIDECAR", injector("native_sidecar")),
                ("MESHD_PROMETHEUS_SCRAPE", injector("prometheus_scrape")),
                ("MESHD_PROXY_IMAGE", injector("proxy_image")),
                ("MESHD_REWRITE_APP_PROBES", injector("rewrite_app_probes")),
                (
                    "MESHD_TRUST_DOMAIN",
                    vec![("run", "trust_domain"), ("bootstrap", "trust_domain")]
                ),
            ])
        );
        // The others carry their command's name.
        for (env, users) in &users {
            if let [(command, _)] = users.as_slice()
                && command != "run"
            {
                let prefix = format!("MESHD_{}_", command.to_uppercase().replace('-', "_"));
                assert!(env.starts_with(&prefix), "{env} of meshd {command}");
            }
        }
    }

    #[test]
    fn the_authorization_default_is_allow_all_and_names_what_is_accepted() {
        let run = |flags: &[&str]| {
            let mut argv = vec!["meshd", "run"];
            argv.extend_from_slice(flags);
            Args::try_parse_from(argv).map(|a| match a.command {
                Command::Run(run) => run.authorization_default,
                other => panic!("{other:?}"),
            })
        };
        assert_eq!(run(&[]).unwrap(), DefaultPolicy::AllowAll);
        assert_eq!(
            run(&["--authorization-default", "deny-all"]).unwrap(),
            DefaultPolicy::DenyAll
        );
        let err = run(&["--authorization-default", "deny"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--authorization-default") && err.contains(DefaultPolicy::ACCEPTED),
            "{err}"
        );
    }

    #[test]
    fn tracing_flags_take_a_collector_and_a_percentage() {
        let run = |flags: &[&str]| {
            let mut argv = vec!["meshd", "run"];
            argv.extend_from_slice(flags);
            Args::try_parse_from(argv).map(|a| match a.command {
                Command::Run(run) => (run.tracing_collector, run.tracing_sampling),
                other => panic!("{other:?}"),
            })
        };
        let (collector, sampling) = run(&[]).unwrap();
        assert_eq!((collector, sampling.to_string()), (None, "1".to_string()));
        let (collector, sampling) = run(&[
            "--tracing-collector",
            "otel.observability:4317",
            "--tracing-sampling",
            "12.5",
        ])
        .unwrap();
        assert_eq!(collector.unwrap().to_string(), "otel.observability:4317");
        assert_eq!(sampling.to_string(), "12.5");
        for (flag, value, accepted) in [
            ("--tracing-collector", "otel", "HOST:PORT"),
            ("--tracing-sampling", "101", "from 0 to 100"),
        ] {
            let err = run(&[flag, value]).unwrap_err().to_string();
            assert!(
                err.contains(flag) && err.contains(value) && err.contains(accepted),
                "{err}"
            );
        }
    }

    /// Issue #11 E.4.
    #[test]
    fn help_shows_the_injectors_defaults() {
        let defaults = InjectorConfig::default();
        for command in ["run", "inject"] {
            let help = Args::command()
                .find_subcommand_mut(command)
                .unwrap()
                .render_long_help()
                .to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            for expected in [
                format!("[default: {}]", defaults.proxy_image),
                format!("[default: {}]", defaults.init_image),
                format!("with `meshd inject`, {}]", defaults.xds_address),
            ] {
                assert!(help.contains(&expected), "{command}: {expected} in\n{help}");
            }
            for (flag, default) in [
                ("--native-sidecar", defaults.native_sidecar),
                ("--rewrite-app-probes", defaults.rewrite_app_probes),
            ] {
                let (_, text) = help.split_once(&format!("{flag} <BOOL>")).unwrap();
                let text = text.split(" --").next().unwrap();
                assert!(
                    text.contains(&format!("[default: {default}]")),
                    "{command} {flag}: {text}"
                );
            }
        }
    }
}
