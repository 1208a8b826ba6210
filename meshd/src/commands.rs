//! What each subcommand does: parse, call into the library crates, report.

use std::time::Duration;

use anyhow::{Context, bail};
use meshd_controlplane::bootstrap::{self, BootstrapConfig, XdsProtocol};
use meshd_controlplane::server::{ControlPlane, Options};
use meshd_injector::capture::{self, CaptureConfig};

use crate::args::{Args, BootstrapArgs, CaptureArgs, Command, RunArgs};

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Command::Run(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(serve(args)),
        Command::Bootstrap(args) => render_bootstrap(args),
        Command::Capture(args) => install_capture(args),
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
    match &args.registry {
        Some(dir) => tracing::info!(registry = %dir.display(), "serving the file registry"),
        None => tracing::info!("serving the embedded default registry"),
    }
    let control_plane = ControlPlane::start(Options {
        registry: args.registry,
        xds,
        debug: Some(debug),
        debounce: Duration::from_millis(args.debounce_ms),
    })
    .await?;
    shutdown_signal().await;
    tracing::info!("shutting down");
    control_plane.shutdown().await;
    Ok(())
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
