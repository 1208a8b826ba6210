//! What each subcommand does: parse, call into the library crates, report.

use std::time::Duration;

use anyhow::{Context, bail};
use meshd_api::annotations::workload::MtlsMode;
use meshd_api::sidecar::bootstrap::{self, BootstrapConfig, XdsProtocol};
use meshd_ca::{Authority, DirStore, PlugInFiles, SpiffeId};
use meshd_controlplane::CancellationToken;
use meshd_controlplane::identity::{Identity, IdentityConfig};
use meshd_controlplane::server::{
    ControlPlane, DebugEndpoints, ListenerLimits, Options, Source, TlsOptions,
};
use meshd_controlplane::serving::{ConnectionCaps, Limits};
use meshd_controlplane::tls::ServerIdentity;
use meshd_controlplane::translate::{Telemetry, Tracing};
use meshd_injector::capture::{self, CaptureConfig};
use meshd_injector::config::InjectorConfig;
use meshd_k8s::identity_secrets::{self, SecretProvisioner};
use meshd_k8s::leader::{LeaderElection, LeaseConfig};
use meshd_k8s::webhook_ca::{self, WebhookConfigurations};
use meshd_k8s::{ca_secret, events};

use crate::args::{
    Args, BootstrapArgs, CaArgs, CaptureArgs, Command, HaArgs, InjectArgs, InjectorArgs, LimitArgs,
    ProxyConfigArgs, ProxyStatusArgs, RunArgs,
};

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Command::Run(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(serve(*args)),
        Command::Bootstrap(args) => render_bootstrap(args),
        Command::Capture(args) => install_capture(args),
        Command::Inject(args) => offline_inject(args),
        Command::ProxyStatus(args) => proxy_status(args),
        Command::ProxyConfig(args) => proxy_config(args),
    }
}

/// A small runtime for the commands that ask a control plane over HTTP.
fn client_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn proxy_status(args: ProxyStatusArgs) -> anyhow::Result<()> {
    client_runtime()?.block_on(crate::inspect::proxy_status(
        &args.control_planes,
        args.proxy.as_deref(),
    ))
}

fn proxy_config(args: ProxyConfigArgs) -> anyhow::Result<()> {
    let filter = crate::inspect::Filter {
        fqdn: args.fqdn,
        port: args.port,
        name: args.name,
    };
    client_runtime()?.block_on(crate::inspect::proxy_config(
        &args.control_planes,
        args.r#type,
        &args.proxy,
        args.output,
        &filter,
        args.admin.as_deref(),
        args.diff,
    ))
}

async fn serve(args: RunArgs) -> anyhow::Result<()> {
    let drain = parse_duration("--drain-period", &args.ha.drain_period)?;
    let caps = connection_caps(&args.limits, raise_fd_limit(), args.xds);
    // Installed first: a SIGTERM while starting (say, waiting for the
    // leader's CA Secret) still releases the Lease.
    let mut signals = Signals::install()?;
    let xds = match args.xds {
        true => Some(
            tokio::net::TcpListener::bind(args.xds_address)
                .await
                .with_context(|| format!("cannot listen for xDS on {}", args.xds_address))?,
        ),
        false => None,
    };
    let debug = tokio::net::TcpListener::bind(args.debug_address)
        .await
        .with_context(|| {
            format!(
                "cannot listen for debug endpoints on {}",
                args.debug_address
            )
        })?;
    let client = match args.kubernetes {
        true => Some(
            kube::Client::try_default()
                .await
                .context("--kubernetes: cannot reach the Kubernetes API")?,
        ),
        false => None,
    };

    // In a cluster, replicas elect a leader for the writes that must
    // happen once (the CA Secret, webhook caBundles). Stopped first on
    // shutdown, so leadership moves while this replica drains.
    let leadership = CancellationToken::new();
    let mut election = None;
    let leading = match &client {
        Some(client) => {
            let identity = pod_name(&args.ha);
            let config =
                LeaseConfig::new(&args.namespace, &args.ha.leader_election_lease, &identity);
            tracing::info!(lease = %format!("{}/{}", args.namespace, args.ha.leader_election_lease), %identity, "joining leader election");
            let campaign = LeaderElection::new(client.clone(), config);
            let leading = campaign.subscribe();
            election = Some(tokio::spawn(campaign.run(leadership.clone())));
            Some(leading)
        }
        None => None,
    };
    // A start that fails after joining the election releases the Lease
    // first, so another replica need not wait out a whole lease.
    macro_rules! or_release {
        ($result:expr) => {
            match $result {
                Ok(value) => value,
                Err(e) => {
                    leadership.cancel();
                    if let Some(election) = election.take() {
                        let _ = tokio::time::timeout(Duration::from_secs(5), election).await;
                    }
                    return Err(anyhow::Error::from(e));
                }
            }
        };
    }

    let ca = tokio::select! {
        ca = load_ca(&args, client.as_ref(), leading.clone()) => or_release!(ca),
        () = signals.recv() => {
            tracing::info!("stopped while starting");
            leadership.cancel();
            if let Some(election) = election {
                let _ = tokio::time::timeout(Duration::from_secs(5), election).await;
            }
            return Ok(());
        }
    };
    let tls = or_release!(tls_options(&args, ca));
    let identity = tls.identity.clone();
    let webhook = match args.webhook_address {
        Some(address) => Some(or_release!(
            start_webhook(&args, address, &tls, caps.webhook).await
        )),
        None => None,
    };
    // Leader-only tasks, stopped with the election.
    let mut background = Vec::new();
    let following = CancellationToken::new();
    if let (Some(client), Some(leading), None) = (&client, &leading, &args.ca.plug_in_ca) {
        // Every replica issues from the root in the Secret: the others
        // follow the leader's rotations, and the leader gives them time to.
        identity.set_replica_settle(ca_secret::REPLICA_SETTLE);
        // Its own stop: a draining replica still serves its proxies and
        // must keep up with rotations until its streams are closed.
        background.push(ca_secret::follow(
            client.clone(),
            &args.namespace,
            &args.ha.ca_secret,
            identity.clone(),
            leading.clone(),
            following.clone(),
        ));
    }
    if let (Some(client), Some(leading)) = (&client, &leading) {
        let configs = WebhookConfigurations {
            mutating: args.ha.mutating_webhook_configuration.clone(),
            validating: args.ha.validating_webhook_configuration.clone(),
        };
        if !configs.is_empty() {
            background.push(tokio::spawn(webhook_ca::run(
                client.clone(),
                configs,
                identity.clone(),
                leading.clone(),
                leadership.clone(),
            )));
        }
    }

    let serving = match xds {
        Some(xds) => {
            let kube_client = client.clone();
            let source = match client {
                Some(client) => {
                    tracing::info!("discovering the mesh from the Kubernetes API");
                    Source::Custom(Box::new(meshd_k8s::watch::WatchSource(client)))
                }
                None => match &args.registry {
                    Some(dir) => {
                        tracing::info!(registry = %dir.display(), "serving the file registry");
                        Source::Files(dir.clone())
                    }
                    None => {
                        tracing::info!("serving the embedded default registry");
                        Source::Embedded
                    }
                },
            };
            let control_plane = or_release!(
                ControlPlane::start_with_limits(
                    Options {
                        source,
                        tls: Some(tls),
                        xds,
                        debug: Some(debug),
                        debounce: Duration::from_millis(args.debounce_ms),
                        telemetry: Telemetry {
                            access_log: args.access_log,
                            tracing: args.tracing_collector.clone().map(|collector| Tracing {
                                collector,
                                sampling: args.tracing_sampling,
                            }),
                        },
                        authorization: args.authorization_default,
                    },
                    ListenerLimits {
                        xds: Limits {
                            max_connections: caps.xds,
                            ..Limits::xds()
                        },
                        debug: debug_limits(caps),
                    },
                )
                .await
            );
            if let (Some(client), Some(leading)) = (&kube_client, &leading) {
                // A Kubernetes Event on each object whose routing
                // annotation is rejected (from the leader only: every
                // replica sees the same errors).
                background.push(events::spawn_leader_event_recorder(
                    client.clone(),
                    control_plane.state.watch_routing_errors(),
                    pod_name(&args.ha),
                    leading.clone(),
                ));
                // Each Gateway API route's status.parents conditions, from
                // the leader only, written when a route's status changes.
                background.push(meshd_k8s::route_status::spawn_leader_route_status_writer(
                    client.clone(),
                    control_plane.snapshots.clone(),
                    |snapshot| snapshot.mesh.routes.clone(),
                    leading.clone(),
                ));
            }
            if let Some(client) = &kube_client {
                // A Warning on a proxy's Pod once per new NACK, from every
                // replica: each knows only the proxies connected to it.
                background.push(events::spawn_nack_event_recorder(
                    client.clone(),
                    control_plane.state.watch_nacks(),
                    pod_name(&args.ha),
                ));
            }
            if let Some(leading) = &leading {
                control_plane.set_leadership(leading.clone());
                // Renew the bootstrap identities of the mesh's service
                // accounts, so long-lived pods keep reaching xDS.
                if let Some((_, _, Some(provisioner))) = &webhook {
                    let snapshots = control_plane.snapshots.clone();
                    let accounts = move || {
                        snapshots
                            .borrow()
                            .mesh
                            .workloads
                            .values()
                            // Only injected pods hold an identity Secret.
                            .filter(|w| {
                                w.annotations
                                    .contains_key(meshd_api::annotations::pod::STATUS)
                            })
                            .map(|w| (w.namespace.clone(), w.service_account.clone()))
                            .collect()
                    };
                    background.push(tokio::spawn(identity_secrets::keep_current(
                        provisioner.clone(),
                        accounts,
                        leading.clone(),
                        identity.subscribe(),
                        IDENTITY_REFRESH_PERIOD,
                        leadership.clone(),
                    )));
                }
            }
            Serving::ControlPlane(control_plane)
        }
        None => {
            tracing::info!("xDS is off (--xds=false)");
            let endpoints = or_release!(
                DebugEndpoints::start_with_limits(debug, Some(identity), debug_limits(caps)).await
            );
            if let Some(leading) = &leading {
                endpoints.set_leadership(leading.clone());
            }
            Serving::DebugOnly(endpoints)
        }
    };
    signals.recv().await;

    tracing::info!(?drain, "shutting down");
    leadership.cancel();
    match serving {
        Serving::ControlPlane(control_plane) => control_plane.shutdown_gracefully(drain).await,
        Serving::DebugOnly(endpoints) => {
            endpoints.lifecycle.set_draining();
            // The API server may still call the webhook until the Endpoints
            // drop this pod: keep answering for the drain period.
            if webhook.is_some() {
                tokio::time::sleep(drain).await;
            }
            endpoints.shutdown().await;
        }
    }
    // The webhook finishes its in-flight reviews and stops last: admission
    // requests may reach this pod until its endpoint is gone.
    if let Some((stop, task, _)) = webhook {
        let _ = stop.send(());
        let _ = task.await;
    }
    following.cancel();
    if let Some(election) = election
        && tokio::time::timeout(Duration::from_secs(5), election)
            .await
            .is_err()
    {
        tracing::warn!("leader election did not finish releasing the Lease in time");
    }
    for task in background {
        task.abort();
        let _ = task.await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// What `meshd run` serves: the control plane, or (with --xds=false) only
/// the debug endpoints beside the webhook.
enum Serving {
    ControlPlane(ControlPlane),
    DebugOnly(DebugEndpoints),
}

/// The Lease holder identity: --pod-name, else the hostname (the pod name
/// in Kubernetes), else an id unique to this process.
fn pod_name(args: &HaArgs) -> String {
    if let Some(name) = args.pod_name.as_deref().filter(|n| !n.is_empty()) {
        return name.to_string();
    }
    let hostname = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty());
    hostname.unwrap_or_else(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        format!("meshd-{}-{nanos:08x}", std::process::id())
    })
}

/// Stops the webhook; its task; the identity Secret writer (in a cluster).
type WebhookHandle = (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
    Option<std::sync::Arc<SecretProvisioner>>,
);

/// The lifetime of bootstrap identities (the injector's Secrets).
const BOOTSTRAP_IDENTITY_TTL: Duration = Duration::from_secs(24 * 3600);
/// How often the leader looks for identity Secrets to renew (they are
/// renewed at half their lifetime, and at once after a CA change).
const IDENTITY_REFRESH_PERIOD: Duration = Duration::from_secs(600);

/// Starts the injection webhook on the mesh CA. In a cluster, identity
/// Secrets are written through the Kubernetes API; elsewhere (local tries
/// with `meshd inject`) there is no API to write them to.
async fn start_webhook(
    args: &RunArgs,
    address: std::net::SocketAddr,
    tls: &TlsOptions,
    max_connections: usize,
) -> anyhow::Result<WebhookHandle> {
    use meshd_injector::webhook;
    let config = run_injector_config(args);
    meshd_injector::inject::check_config(&config)?;
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen for the webhook on {address}"))?;
    let identity = tls.identity.clone();
    let generation = identity.clone();
    let cert = std::sync::Arc::new(
        webhook::serving_cert(
            identity.ca.clone(),
            tls.server.id.clone(),
            vec![webhook::service_dns_name(
                &args.webhook_service,
                &args.namespace,
            )],
            vec![],
        )
        .with_generation(std::sync::Arc::new(move || generation.generation())),
    );
    let mut state = webhook::WebhookState::new(config, identity.ca.clone(), cert.clone());
    let mut provisioner = None;
    if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
        let client = kube::Client::try_default()
            .await
            .context("cannot reach the Kubernetes API for identity Secrets")?;
        let secrets = std::sync::Arc::new(SecretProvisioner::new(
            client,
            identity.ca.clone(),
            BOOTSTRAP_IDENTITY_TTL,
        ));
        state = state.with_provisioner(secrets.clone());
        provisioner = Some(secrets);
    } else {
        tracing::warn!(
            "not in a cluster: the webhook injects, but cannot write identity Secrets; create meshd-identity-<service-account> Secrets yourself"
        );
    }
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let shutdown = async {
            let _ = stopped.await;
        };
        let limits = Limits {
            max_connections,
            ..webhook::default_limits()
        };
        let served = webhook::serve_with_limits(
            listener,
            webhook::tls_config(cert),
            state,
            limits,
            shutdown,
        );
        if let Err(e) = served.await {
            tracing::error!("the webhook stopped: {e}");
        }
    });
    Ok((stop, task, provisioner))
}

fn debug_limits(caps: ConnectionCaps) -> Limits {
    Limits {
        max_connections: caps.debug,
        ..Limits::debug()
    }
}

/// Raises the soft limit on open files to the hard limit (Go programs get
/// this from their runtime, Rust's standard library does not; container
/// runtimes commonly start processes at a soft 1024 under a hard limit a
/// thousand times higher) and returns the limit in force.
fn raise_fd_limit() -> Option<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(e) => {
            tracing::warn!("cannot read the open-file limit: {e}");
            return None;
        }
    };
    if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => return Some(hard),
            Err(e) => tracing::warn!(soft, hard, "cannot raise the open-file limit: {e}"),
        }
    }
    Some(soft)
}

/// Each listener's connection cap: the flag, else its share of the
/// open-file limit ([`ConnectionCaps::for_fd_limit`]).
fn connection_caps(args: &LimitArgs, fd_limit: Option<u64>, xds: bool) -> ConnectionCaps {
    let derived = fd_limit.map_or(
        ConnectionCaps::for_fd_limit(u64::MAX),
        ConnectionCaps::for_fd_limit,
    );
    let caps = ConnectionCaps {
        xds: args.xds_max_connections.unwrap_or(derived.xds).max(1),
        webhook: args
            .webhook_max_connections
            .unwrap_or(derived.webhook)
            .max(1),
        debug: args.debug_max_connections.unwrap_or(derived.debug).max(1),
    };
    let limit = fd_limit.map_or("unknown".to_string(), |l| l.to_string());
    tracing::info!(
        open_file_limit = %limit,
        xds = caps.xds,
        webhook = caps.webhook,
        debug = caps.debug,
        "connection limits"
    );
    if let Some(fd_limit) = fd_limit {
        let total = (caps.xds as u64) + (caps.webhook as u64) + (caps.debug as u64);
        if total >= fd_limit {
            tracing::warn!(
                fd_limit,
                total,
                "the connection limits add up to the open-file limit or more: a flood on one listener can take the descriptors the others need"
            );
        } else if xds && args.xds_max_connections.is_none() && caps.xds < 10_000 {
            tracing::warn!(
                fd_limit,
                xds = caps.xds,
                "the open-file limit allows only this many xDS connections (one per proxy); raise it (LimitNOFILE, ulimit -n) for a larger fleet"
            );
        }
    }
    caps
}

/// Parses `90`, `90s`, `30m`, `24h`.
fn parse_duration(flag: &str, value: &str) -> anyhow::Result<Duration> {
    let (number, unit) = value
        .find(|c: char| !c.is_ascii_digit())
        .map_or((value, "s"), |i| value.split_at(i));
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => 0,
    };
    match number.parse::<u64>() {
        Ok(n) if scale > 0 => Ok(Duration::from_secs(n * scale)),
        _ => bail!(
            "{flag}: `{value}` is not a duration; accepted: a number with s, m or h (e.g. 90s, 30m, 24h)"
        ),
    }
}

/// The CA: a plug-in intermediate; in a cluster, the generated root
/// shared through a Secret; locally, the generated root in --ca-dir.
async fn load_ca(
    args: &RunArgs,
    client: Option<&kube::Client>,
    leading: Option<tokio::sync::watch::Receiver<bool>>,
) -> anyhow::Result<Authority> {
    let ca: &CaArgs = &args.ca;
    Ok(match (&ca.plug_in_ca, client, leading) {
        (Some(dir), _, _) => Authority::plug_in(&ca.trust_domain, &PlugInFiles::in_dir(dir))
            .with_context(|| format!("--plug-in-ca {}", dir.display()))?,
        (None, Some(client), Some(leading)) => ca_secret::load_or_create(
            client.clone(),
            &args.namespace,
            &args.ha.ca_secret,
            &ca.trust_domain,
            leading,
        )
        .await
        .context("--ca-secret")?,
        _ => Authority::load_or_generate(
            &ca.trust_domain,
            std::sync::Arc::new(DirStore::new(&ca.ca_dir)),
        )
        .with_context(|| format!("--ca-dir {}", ca.ca_dir.display()))?,
    })
}

fn tls_options(args: &RunArgs, ca: Authority) -> anyhow::Result<TlsOptions> {
    let Some(default_mtls) = MtlsMode::parse(&args.mtls_mode) else {
        bail!(
            "--mtls-mode: `{}` is not valid; accepted: {}",
            args.mtls_mode,
            MtlsMode::ACCEPTED
        );
    };
    let workload_ttl = parse_duration("--workload-cert-ttl", &args.workload_cert_ttl)?;
    if workload_ttl < meshd_ca::MIN_WORKLOAD_TTL {
        bail!(
            "--workload-cert-ttl: {} is below the minimum of {}s",
            args.workload_cert_ttl,
            meshd_ca::MIN_WORKLOAD_TTL.as_secs()
        );
    }
    if !(args.rotation_fraction > 0.0 && args.rotation_fraction < 1.0) {
        bail!(
            "--rotation-fraction: {} is not valid; accepted: a number between 0 and 1 (exclusive)",
            args.rotation_fraction
        );
    }
    if let Some(reason) = ca.status().unready {
        // Keep serving config (certificates already issued stay valid) but
        // say loudly why no new ones will be.
        tracing::error!("the CA cannot sign: {reason}");
    }
    let identity = Identity::new(
        std::sync::Arc::new(ca),
        IdentityConfig {
            workload_ttl,
            rotation_fraction: args.rotation_fraction,
            default_mtls,
        },
    );
    let mut ips = vec![std::net::IpAddr::from([127, 0, 0, 1])];
    if !args.xds_address.ip().is_unspecified() && !ips.contains(&args.xds_address.ip()) {
        ips.push(args.xds_address.ip());
    }
    Ok(TlsOptions {
        identity: std::sync::Arc::new(identity),
        server: ServerIdentity {
            id: SpiffeId::new(
                &args.ca.trust_domain,
                &args.namespace,
                &args.service_account,
            ),
            dns_names: args
                .xds_dns_names
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(String::from)
                .collect(),
            ips,
        },
    })
}

/// SIGTERM (the kubelet) and SIGINT (Ctrl-C): both start a graceful
/// shutdown.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("cannot install a SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("cannot install a SIGINT handler")?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// The control plane's SPIFFE ID a bootstrap expects: as given, else the
/// chart's in the proxy's own trust domain (a proxy of trust domain X
/// would never accept a control plane of `cluster.local`).
fn control_plane_id(args: &BootstrapArgs) -> String {
    args.control_plane_identity.clone().unwrap_or_else(|| {
        SpiffeId::new(args.trust_domain.clone(), "meshd-system", "meshd").to_string()
    })
}

fn render_bootstrap(args: BootstrapArgs) -> anyhow::Result<()> {
    let Some(xds_protocol) = XdsProtocol::parse(&args.xds_protocol) else {
        bail!(
            "--xds-protocol: `{}` is not valid; accepted: {}",
            args.xds_protocol,
            XdsProtocol::ACCEPTED
        );
    };
    let (host, port) = args
        .xds_address
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.trim_matches(['[', ']']), p.parse::<u16>().ok()?)))
        .with_context(|| {
            format!(
                "--xds-address: `{}` is not valid; accepted: host:port",
                args.xds_address
            )
        })?;
    let control_plane_id = control_plane_id(&args);
    // Envoy resolves relative paths against its own working directory, not
    // this one: name the identity by its absolute path (in the bootstrap
    // and in the SDS files that point at the certificate and key).
    let identity_dir = std::path::absolute(&args.identity_dir).with_context(|| {
        format!(
            "--identity-dir: cannot make {} absolute",
            args.identity_dir.display()
        )
    })?;
    let mut config = BootstrapConfig::new(args.namespace, args.pod);
    config.xds_host = host.to_string();
    config.xds_port = port;
    config.xds_protocol = xds_protocol;
    config.admin = args.admin_address;
    config.proxy_address = args.proxy_address;
    config.control_plane_id = control_plane_id;
    config.identity_dir = Some(identity_dir.clone());
    // The identity its metrics carry (`workload_identity`) is the one its
    // certificate proves.
    config.service_account = args.service_account.clone();
    config.trust_domain = args.trust_domain.clone();
    if let Some(ca_dir) = &args.issue_from_ca_dir {
        let ca = Authority::load_or_generate(
            &args.trust_domain,
            std::sync::Arc::new(DirStore::new(ca_dir)),
        )
        .with_context(|| format!("--issue-from-ca-dir {}", ca_dir.display()))?;
        let id = SpiffeId::new(&args.trust_domain, &config.namespace, &args.service_account);
        let (issued, key) = ca.issue_with_key(&id, Duration::from_secs(24 * 3600))?;
        bootstrap::write_identity(
            &identity_dir,
            &issued.chain_pem,
            &key,
            &ca.trust_bundle_pem(),
        )
        .with_context(|| format!("cannot write the identity into {}", identity_dir.display()))?;
    }
    let yaml = bootstrap::render_yaml(&config);
    match args.output {
        Some(path) => std::fs::write(&path, yaml)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => print!("{yaml}"),
    }
    Ok(())
}

fn install_capture(args: CaptureArgs) -> anyhow::Result<()> {
    let config = CaptureConfig {
        proxy_uid: args.proxy_uid,
        proxy_gid: args.proxy_gid,
        exclude_inbound_ports: capture::parse_ports(
            "--exclude-inbound-ports",
            &args.exclude_inbound_ports,
        )?,
        exclude_outbound_ports: capture::parse_ports(
            "--exclude-outbound-ports",
            &args.exclude_outbound_ports,
        )?,
        exclude_outbound_cidrs: capture::parse_cidrs(
            "--exclude-outbound-cidrs",
            &args.exclude_outbound_cidrs,
        )?,
        ..Default::default()
    };
    if args.dry_run {
        print!("{}", config.render(false));
        if args.ipv6 {
            print!("{}", config.render(true));
        }
        return Ok(());
    }
    if args.ipv6 {
        tracing::warn!(
            "--ipv6: the proxy's listeners are IPv4-only, so IPv6 connections now fail instead of bypassing the proxy"
        );
    }
    capture::apply(&config, args.ipv6)?;
    tracing::info!("traffic capture installed");
    Ok(())
}

/// The injector's configuration: defaults, overridden by flags.
/// What the webhook of this control plane injects: proxies that verify
/// this control plane's own SPIFFE ID, reach it through its Service unless
/// told otherwise, and never a sidecar in its own namespace.
fn run_injector_config(args: &RunArgs) -> InjectorConfig {
    let mut config = injector_config(&args.injector);
    config.control_plane_id = SpiffeId::new(
        &args.ca.trust_domain,
        &args.namespace,
        &args.service_account,
    )
    .to_string();
    config.control_plane_namespace = args.namespace.clone();
    if args.injector.inject_xds_address.is_none() {
        config.xds_address = format!(
            "{}.{}.svc:{}",
            args.webhook_service,
            args.namespace,
            args.xds_address.port()
        );
    }
    config
}

fn injector_config(args: &InjectorArgs) -> InjectorConfig {
    let mut config = InjectorConfig {
        proxy_image: args.proxy_image.clone(),
        init_image: args.init_image.clone(),
        native_sidecar: args.native_sidecar,
        rewrite_app_probes: args.rewrite_app_probes,
        prometheus_scrape: args.prometheus_scrape,
        image_pull_secrets: args.image_pull_secrets.clone(),
        ..InjectorConfig::default()
    };
    if let Some(address) = &args.inject_xds_address {
        config.xds_address = address.clone();
    }
    config
}

fn offline_inject(args: InjectArgs) -> anyhow::Result<()> {
    use std::io::Read;
    let mut text = String::new();
    if args.filename.as_os_str() == "-" {
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read standard input")?;
    } else {
        text = std::fs::read_to_string(&args.filename)
            .with_context(|| format!("cannot read {}", args.filename.display()))?;
    }
    let config = injector_config(&args.injector);
    meshd_injector::inject::check_config(&config)?;
    let injected =
        meshd_injector::offline::inject_manifests_with_warnings(&text, &args.namespace, &config)
            .with_context(|| format!("{}", args.filename.display()))?;
    // Not injected is not an error (kube-system pods, a List of mixed
    // kinds), but it must not pass unnoticed: one line each, apart from
    // the manifests on standard output.
    for warning in &injected.warnings {
        eprintln!("warning: {}: {warning}", args.filename.display());
    }
    print!("{}", injected.yaml);
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn run_args(argv: &[&str]) -> RunArgs {
        let argv = ["meshd", "run"].iter().chain(argv);
        match Args::try_parse_from(argv).unwrap().command {
            Command::Run(args) => *args,
            other => panic!("not run: {other:?}"),
        }
    }

    /// Issue #11 C.5.
    #[test]
    fn a_bootstraps_control_plane_identity_follows_its_trust_domain() {
        let bootstrap = |argv: &[&str]| {
            let argv = [
                "meshd",
                "bootstrap",
                "--namespace",
                "shop",
                "--pod",
                "web-0",
            ]
            .iter()
            .chain(["--identity-dir", "/tmp/id"].iter())
            .chain(argv);
            match Args::try_parse_from(argv).unwrap().command {
                Command::Bootstrap(args) => control_plane_id(&args),
                other => panic!("not bootstrap: {other:?}"),
            }
        };
        assert_eq!(bootstrap(&[]), bootstrap::DEFAULT_CONTROL_PLANE_ID);
        assert_eq!(
            bootstrap(&["--trust-domain", "example.org"]),
            "spiffe://example.org/ns/meshd-system/sa/meshd"
        );
        assert_eq!(
            bootstrap(&[
                "--trust-domain",
                "example.org",
                "--control-plane-identity",
                "spiffe://example.org/ns/cp/sa/cp"
            ]),
            "spiffe://example.org/ns/cp/sa/cp"
        );
    }

    #[test]
    fn connection_caps_come_from_flags_or_the_open_file_limit() {
        let caps = connection_caps(&run_args(&[]).limits, Some(256), true);
        assert_eq!(caps, ConnectionCaps::for_fd_limit(256));
        assert!(caps.xds + caps.webhook + caps.debug < 256, "{caps:?}");

        let args = run_args(&[
            "--xds-max-connections",
            "50000",
            "--webhook-max-connections",
            "64",
            "--debug-max-connections",
            "8",
        ]);
        let caps = connection_caps(&args.limits, Some(1 << 20), true);
        assert_eq!(
            caps,
            ConnectionCaps {
                xds: 50_000,
                webhook: 64,
                debug: 8
            }
        );
    }

    #[test]
    fn injected_proxies_trust_this_control_plane_and_reach_its_service() {
        let config = run_injector_config(&run_args(&[
            "--namespace",
            "mesh",
            "--service-account",
            "control",
            "--trust-domain",
            "example.org",
            "--webhook-service",
            "meshd-cp",
        ]));
        assert_eq!(
            config.control_plane_id,
            "spiffe://example.org/ns/mesh/sa/control"
        );
        assert_eq!(config.control_plane_namespace, "mesh");
        assert_eq!(config.xds_address, "meshd-cp.mesh.svc:15010");

        let config = run_injector_config(&run_args(&["--inject-xds-address", "cp.example:443"]));
        assert_eq!(config.xds_address, "cp.example:443");
        assert_eq!(config.control_plane_id, bootstrap::DEFAULT_CONTROL_PLANE_ID);
    }
}
