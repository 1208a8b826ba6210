//! `meshd proxy-status` and `meshd proxy-config`: what each proxy was sent
//! and whether it took it, read from the control plane's debug endpoints
//! (what `kubectl port-forward` reaches), and compared with Envoy's own
//! `/config_dump` on request.
//!
//! ```text
//! meshd proxy-status ── GET /debug/xds/proxies ──────────> each --control-plane
//! meshd proxy-config ── GET /debug/xds/proxies/{node}/config ──> the replica the proxy is on
//!        ├─ --diff ──── GET /config_dump?include_eds ─────> the proxy's --admin
//!        └─ listener ── GET /stats/prometheus (denials) ──> the proxy's --admin
//! ```
//!
//! The rendering is plain functions of the JSON answers (tested here); the
//! commands only fetch, call and print.

mod client;
mod diff;
mod tables;

use anyhow::{Context, bail};
use serde_json::Value;

use client::{Peer, authority, get_json};
pub use tables::Output;

/// The resource types, as the commands name them and as the debug
/// endpoint's `type=` takes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ConfigType {
    Cluster,
    Endpoint,
    Listener,
    Route,
    Secret,
    All,
}

impl ConfigType {
    const EACH: [ConfigType; 5] = [
        ConfigType::Cluster,
        ConfigType::Endpoint,
        ConfigType::Listener,
        ConfigType::Route,
        ConfigType::Secret,
    ];

    fn word(self) -> &'static str {
        match self {
            ConfigType::Cluster => "cluster",
            ConfigType::Endpoint => "endpoint",
            ConfigType::Listener => "listener",
            ConfigType::Route => "route",
            ConfigType::Secret => "secret",
            ConfigType::All => "all",
        }
    }

    /// The xDS short name of the type.
    fn xds(self) -> &'static str {
        match self {
            ConfigType::Cluster => "CDS",
            ConfigType::Endpoint => "EDS",
            ConfigType::Listener => "LDS",
            ConfigType::Route => "RDS",
            ConfigType::Secret => "SDS",
            ConfigType::All => "",
        }
    }

    /// The `@type` of its part of a config dump.
    fn dump_type(self) -> &'static str {
        match self {
            ConfigType::Cluster => "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
            ConfigType::Endpoint => "type.googleapis.com/envoy.admin.v3.EndpointsConfigDump",
            ConfigType::Listener => "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
            ConfigType::Route => "type.googleapis.com/envoy.admin.v3.RoutesConfigDump",
            ConfigType::Secret => "type.googleapis.com/envoy.admin.v3.SecretsConfigDump",
            ConfigType::All => "",
        }
    }

    fn expand(self) -> Vec<ConfigType> {
        match self {
            ConfigType::All => Self::EACH.to_vec(),
            t => vec![t],
        }
    }
}

/// Which resources to show.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub fqdn: Option<String>,
    pub port: Option<u16>,
    pub name: Option<String>,
}

/// `meshd proxy-status`: every proxy connected to any of `control_planes`,
/// one line each; or, given `proxy`, that one in detail.
pub async fn proxy_status(control_planes: &[String], proxy: Option<&str>) -> anyhow::Result<()> {
    let addresses = addresses(control_planes)?;
    match proxy {
        None => {
            let mut rows = Vec::new();
            let mut failures = Vec::new();
            for address in &addresses {
                match get_json(Peer::ControlPlane, address, "/debug/xds/proxies").await {
                    Ok(Value::Array(proxies)) => {
                        rows.extend(proxies.into_iter().map(|p| (address.clone(), p)))
                    }
                    Ok(other) => failures.push(format!(
                        "{address}: /debug/xds/proxies answered {other}, not a list"
                    )),
                    Err(e) => failures.push(format!("{e:#}")),
                }
            }
            print!("{}", tables::status_list(&mut rows));
            if !failures.is_empty() {
                bail!("{}", failures.join("\n"));
            }
            Ok(())
        }
        Some(node) => {
            let (address, status) = find_proxy(&addresses, node, "").await?;
            print!("{}", tables::status_detail(&address, &status));
            Ok(())
        }
    }
}

/// `meshd proxy-config`.
pub async fn proxy_config(
    control_planes: &[String],
    kind: ConfigType,
    proxy: &str,
    output: Output,
    filter: &Filter,
    admin: Option<&str>,
    diff: bool,
) -> anyhow::Result<()> {
    let addresses = addresses(control_planes)?;
    let shown = kind.expand();
    // The cluster table counts endpoints, and --diff tells EDS clusters'
    // endpoints from the others' by the clusters: ask for both.
    let mut asked = shown.clone();
    if shown.contains(&ConfigType::Cluster) && !shown.contains(&ConfigType::Endpoint) {
        asked.push(ConfigType::Endpoint);
    }
    if shown.contains(&ConfigType::Endpoint) && !shown.contains(&ConfigType::Cluster) {
        asked.push(ConfigType::Cluster);
    }
    let query = asked.iter().map(|t| t.word()).collect::<Vec<_>>().join(",");
    let (replica, mut config) =
        find_proxy(&addresses, proxy, &format!("/config?type={query}")).await?;
    tables::apply_filter(&mut config, filter);
    let admin = admin.map(authority).transpose()?;
    if let (true, Some(admin)) = (diff, &admin) {
        let envoy = get_json(Peer::EnvoyAdmin, admin, "/config_dump?include_eds").await?;
        let differences = diff::differences(&config, &envoy, &shown, filter);
        print!(
            "{}",
            diff::report(proxy, &replica, admin, &shown, &differences)
        );
        if !differences.is_empty() {
            bail!(
                "{} resource(s) differ between what the control plane sent and what Envoy holds",
                differences.len()
            );
        }
        return Ok(());
    }
    match output {
        Output::Table => {
            print!("{}", tables::config_tables(&config, &shown));
            if let (Some(admin), true) = (&admin, shown.contains(&ConfigType::Listener)) {
                let stats = client::get(
                    Peer::EnvoyAdmin,
                    admin,
                    "/stats/prometheus?usedonly&filter=%5Eauthorization%5C.",
                )
                .await?;
                if stats.status != 200 {
                    bail!(
                        "the proxy's admin at {admin} answered {} to /stats/prometheus",
                        stats.status
                    );
                }
                print!("{}", tables::denials(admin, &stats.body));
            }
        }
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&tables::dump_of(&config, &shown))?
        ),
        Output::Yaml => print!(
            "{}",
            serde_yaml::to_string(&tables::dump_of(&config, &shown))?
        ),
    }
    Ok(())
}

fn addresses(control_planes: &[String]) -> anyhow::Result<Vec<String>> {
    if control_planes.is_empty() {
        bail!("--control-plane: at least one address is needed");
    }
    control_planes.iter().map(|a| authority(a)).collect()
}

/// The first replica that knows `node`, and its answer for
/// `/debug/xds/proxies/{node}{suffix}`.
async fn find_proxy(
    addresses: &[String],
    node: &str,
    suffix: &str,
) -> anyhow::Result<(String, Value)> {
    if !node.contains('.') || node.contains('/') || node.contains('?') {
        bail!("{node:?} is not a proxy; accepted: POD.NAMESPACE (its node id), e.g. web-0.shop");
    }
    let mut failures = Vec::new();
    let mut not_here = Vec::new();
    for address in addresses {
        let path = format!("/debug/xds/proxies/{node}{suffix}");
        match client::get(Peer::ControlPlane, address, &path).await {
            Ok(answer) if answer.status == 200 => {
                let value = serde_json::from_str(&answer.body)
                    .with_context(|| format!("{address}: GET {path}: the answer is not JSON"))?;
                return Ok((address.clone(), value));
            }
            Ok(answer) if answer.status == 404 => not_here.push(address.clone()),
            Ok(answer) => failures.push(format!(
                "{address}: GET {path}: HTTP {}: {}",
                answer.status,
                answer.body.trim()
            )),
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    let mut message = String::new();
    if !not_here.is_empty() {
        message = format!(
            "proxy {node} is not connected to the control plane at {} (`meshd proxy-status` lists the connected proxies; with several replicas, pass each with --control-plane)",
            not_here.join(", ")
        );
    }
    for f in failures {
        if !message.is_empty() {
            message.push('\n');
        }
        message.push_str(&f);
    }
    bail!("{message}")
}
