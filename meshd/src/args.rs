//! Command-line arguments. Every flag also reads a `MESHD_…` environment
//! variable, which is how the chart configures the container.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::{Parser, Subcommand};

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
    Run(RunArgs),
    /// Print the Envoy bootstrap for a workload's sidecar.
    Bootstrap(BootstrapArgs),
    /// Install the iptables rules that send a pod's traffic through its
    /// sidecar (the init container's job).
    Capture(CaptureArgs),
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// A directory of Kubernetes manifests (Namespace, Service,
    /// EndpointSlice, Pod) to serve, watched for changes. Without it, the
    /// embedded default registry (the local demo) is served.
    #[arg(long, env = "MESHD_REGISTRY")]
    pub registry: Option<PathBuf>,

    /// Where the xDS (ADS) gRPC server listens.
    #[arg(long, env = "MESHD_XDS_ADDRESS", default_value = "127.0.0.1:15010")]
    pub xds_address: SocketAddr,

    /// Where health, metrics and debug endpoints listen.
    #[arg(long, env = "MESHD_DEBUG_ADDRESS", default_value = "127.0.0.1:15014")]
    pub debug_address: SocketAddr,

    /// Quiet time, in milliseconds, that ends a burst of changes before
    /// proxies are updated.
    #[arg(long, env = "MESHD_DEBOUNCE_MS", default_value_t = 100)]
    pub debounce_ms: u64,
}

#[derive(Debug, clap::Args)]
pub struct BootstrapArgs {
    /// The pod's namespace.
    #[arg(long, env = "MESHD_NAMESPACE")]
    pub namespace: String,

    /// The pod's name; with the namespace it forms the proxy's node id.
    #[arg(long, env = "MESHD_POD_NAME")]
    pub pod: String,

    /// The control plane's xDS address, `host:port`.
    #[arg(long, env = "MESHD_XDS_ADDRESS", default_value = "127.0.0.1:15010")]
    pub xds_address: String,

    /// The ADS flavour: delta or sotw.
    #[arg(long, env = "MESHD_XDS_PROTOCOL", default_value = "delta")]
    pub xds_protocol: String,

    /// Where Envoy's admin interface listens (keep it on loopback).
    #[arg(long, env = "MESHD_ADMIN_ADDRESS", default_value = "127.0.0.1:15000")]
    pub admin_address: SocketAddr,

    /// The address the readiness (15021) and stats (15090) listeners bind.
    #[arg(long, env = "MESHD_PROXY_ADDRESS", default_value = "0.0.0.0")]
    pub proxy_address: IpAddr,

    /// Write to this file instead of standard output.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct CaptureArgs {
    /// The UID the sidecar runs as; its traffic is never redirected.
    #[arg(long, env = "MESHD_PROXY_UID", default_value_t = meshd_injector::capture::PROXY_UID)]
    pub proxy_uid: u32,

    /// The GID the sidecar runs as.
    #[arg(long, env = "MESHD_PROXY_GID", default_value_t = meshd_injector::capture::PROXY_UID)]
    pub proxy_gid: u32,

    /// Inbound ports reached directly, bypassing the sidecar (comma-separated).
    #[arg(long, env = "MESHD_EXCLUDE_INBOUND_PORTS", default_value = "")]
    pub exclude_inbound_ports: String,

    /// Outbound destination ports reached directly (comma-separated).
    #[arg(long, env = "MESHD_EXCLUDE_OUTBOUND_PORTS", default_value = "")]
    pub exclude_outbound_ports: String,

    /// Outbound destinations reached directly (comma-separated CIDRs).
    #[arg(long, env = "MESHD_EXCLUDE_OUTBOUND_CIDRS", default_value = "")]
    pub exclude_outbound_cidrs: String,

    /// Also capture IPv6 (needs ip6tables).
    #[arg(long, env = "MESHD_CAPTURE_IPV6")]
    pub ipv6: bool,

    /// Print the rules instead of applying them.
    #[arg(long)]
    pub dry_run: bool,
}
