//! What each subcommand does: parse, call into the library crates, report.

use std::time::Duration;

use anyhow::{Context, bail};
use meshd_ca::{Authority, DirStore, PlugInFiles, SpiffeId};
use meshd_controlplane::bootstrap::{self, BootstrapConfig, XdsProtocol};
use meshd_controlplane::identity::{Identity, IdentityConfig};
use meshd_controlplane::model::MtlsMode;
use meshd_controlplane::server::{ControlPlane, Options, Source, TlsOptions};
use meshd_controlplane::tls::ServerIdentity;
use meshd_injector::capture::{self, CaptureConfig};
use meshd_injector::config::InjectorConfig;

use crate::args::{
    Args, BootstrapArgs, CaArgs, CaptureArgs, Command, InjectArgs, InjectorArgs, RunArgs,
};

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Command::Run(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(serve(args)),
        Command::Bootstrap(args) => render_bootstrap(args),
        Command::Capture(args) => install_capture(args),
        Command::Inject(args) => offline_inject(args),
    }
}

async fn serve(args: RunArgs) -> anyhow::Result<()> {
    let xds = tokio::net::TcpListener::bind(args.xds_address)
        .await
        .with_context(|| format!("cannot listen for xDS on {}", args.xds_address))?;
    let debug = tokio::net::TcpListener::bind(args.debug_address)
        .await
        .with_context(|| {
            format!(
                "cannot listen for debug endpoints on {}",
                args.debug_address
            )
        })?;
    let source = if args.kubernetes {
        let client = kube::Client::try_default()
            .await
            .context("--kubernetes: cannot reach the Kubernetes API")?;
        tracing::info!("discovering the mesh from the Kubernetes API");
        Source::Kubernetes(client)
    } else if let Some(dir) = &args.registry {
        tracing::info!(registry = %dir.display(), "serving the file registry");
        Source::Files(dir.clone())
    } else {
        tracing::info!("serving the embedded default registry");
        Source::Embedded
    };
    let tls = tls_options(&args)?;
    let webhook = match args.webhook_address {
        Some(address) => Some(start_webhook(&args, address, &tls).await?),
        None => None,
    };
    let control_plane = ControlPlane::start(Options {
        source,
        tls: Some(tls),
        xds,
        debug: Some(debug),
        debounce: Duration::from_millis(args.debounce_ms),
    })
    .await?;
    shutdown_signal().await;
    tracing::info!("shutting down");
    if let Some((stop, task)) = webhook {
        let _ = stop.send(());
        let _ = task.await;
    }
    control_plane.shutdown().await;
    Ok(())
}

type WebhookHandle = (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
);

/// Starts the injection webhook on the mesh CA. In a cluster, identity
/// Secrets are written through the Kubernetes API; elsewhere (local tries
/// with `meshd inject`) there is no API to write them to.
async fn start_webhook(
    args: &RunArgs,
    address: std::net::SocketAddr,
    tls: &TlsOptions,
) -> anyhow::Result<WebhookHandle> {
    use meshd_injector::webhook;
    let config = injector_config(&args.injector);
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
    if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
        let client = kube::Client::try_default()
            .await
            .context("cannot reach the Kubernetes API for identity Secrets")?;
        state = state.with_provisioner(std::sync::Arc::new(
            meshd_injector::kube_identity::SecretProvisioner::new(
                client,
                identity.ca.clone(),
                Duration::from_secs(24 * 3600),
            ),
        ));
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
        if let Err(e) = webhook::serve(listener, webhook::tls_config(cert), state, shutdown).await {
            tracing::error!("the webhook stopped: {e}");
        }
    });
    Ok((stop, task))
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

fn load_ca(args: &CaArgs) -> anyhow::Result<Authority> {
    Ok(match &args.plug_in_ca {
        Some(dir) => Authority::plug_in(&args.trust_domain, &PlugInFiles::in_dir(dir))
            .with_context(|| format!("--plug-in-ca {}", dir.display()))?,
        None => Authority::load_or_generate(
            &args.trust_domain,
            std::sync::Arc::new(DirStore::new(&args.ca_dir)),
        )
        .with_context(|| format!("--ca-dir {}", args.ca_dir.display()))?,
    })
}

fn tls_options(args: &RunArgs) -> anyhow::Result<TlsOptions> {
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
    let ca = load_ca(&args.ca)?;
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

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
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
    let mut config = BootstrapConfig::new(args.namespace, args.pod);
    config.xds_host = host.to_string();
    config.xds_port = port;
    config.xds_protocol = xds_protocol;
    config.admin = args.admin_address;
    config.proxy_address = args.proxy_address;
    config.control_plane_id = args.control_plane_identity;
    config.identity_dir = Some(args.identity_dir.clone());
    if let Some(ca_dir) = &args.issue_from_ca_dir {
        let ca = Authority::load_or_generate(
            &args.trust_domain,
            std::sync::Arc::new(DirStore::new(ca_dir)),
        )
        .with_context(|| format!("--issue-from-ca-dir {}", ca_dir.display()))?;
        let id = SpiffeId::new(&args.trust_domain, &config.namespace, &args.service_account);
        let (issued, key) = ca.issue_with_key(&id, Duration::from_secs(24 * 3600))?;
        bootstrap::write_identity(
            &args.identity_dir,
            &issued.chain_pem,
            &key,
            &ca.trust_bundle_pem(),
        )
        .with_context(|| {
            format!(
                "cannot write the identity into {}",
                args.identity_dir.display()
            )
        })?;
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
    capture::apply(&config, args.ipv6)?;
    tracing::info!("traffic capture installed");
    Ok(())
}

/// The injector's configuration: defaults, overridden by flags.
fn injector_config(args: &InjectorArgs) -> InjectorConfig {
    let mut config = InjectorConfig::default();
    if let Some(image) = &args.proxy_image {
        config.proxy_image = image.clone();
    }
    if let Some(image) = &args.init_image {
        config.init_image = image.clone();
    }
    if let Some(address) = &args.inject_xds_address {
        config.xds_address = address.clone();
    }
    if let Some(native) = args.native_sidecar {
        config.native_sidecar = native;
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
    let injected = meshd_injector::offline::inject_manifests_in(&text, &args.namespace, &config)
        .with_context(|| format!("{}", args.filename.display()))?;
    print!("{injected}");
    Ok(())
}
