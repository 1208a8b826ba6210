//! Test hosts as Linux network namespaces.
//!
//! ```text
//!            hub namespace: bridge br0 198.18.0.1/24 (the control plane listens here)
//!             ├── veth ── pod namespace "client": eth0 198.18.0.2/24
//!             └── veth ── pod namespace "server": eth0 198.18.0.3/24
//! ```
//!
//! Pods get a route for the service range (198.19.0.0/16) and nothing else:
//! no default route, so no packet can leave for anywhere but the test's own
//! hosts. Every namespace is deleted when the [`Topology`] is dropped, which
//! also happens when a test panics.

use std::fs::File;
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, bail};
use nix::sched::{CloneFlags, setns};

pub const HUB_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const SERVICE_CIDR: &str = "198.19.0.0/16";
const PREFIX: &str = "meshd-e2e";

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .with_context(|| format!("running ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Whether this process can create network namespaces (root with `ip`).
pub fn available() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("network namespaces need root".into());
    }
    for tool in ["ip", "iptables-restore", "setpriv"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        if !found {
            return Err(format!(
                "`{tool}` is not installed (scripts/test installs iproute2 and iptables)"
            ));
        }
    }
    Ok(())
}

/// A pod's network namespace.
#[derive(Clone, Debug)]
pub struct NetPod {
    pub ns: String,
    pub ip: Ipv4Addr,
}

impl NetPod {
    /// The argv prefix that runs a command inside this namespace.
    pub fn exec(&self) -> Vec<String> {
        ["ip", "netns", "exec", &self.ns].map(String::from).to_vec()
    }

    /// Runs `f` on a thread inside this namespace. Sockets created there
    /// stay in the namespace after `f` returns.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        run_in(&self.ns, f)
    }
}

pub fn run_in<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
    let handle = File::open(format!("/run/netns/{ns}"))
        .with_context(|| format!("opening network namespace {ns}"))?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                setns(&handle, CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("entering network namespace {ns}"))?;
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("a thread in namespace {ns} panicked"))?
    })
}

/// A hub and its pods; all removed on drop.
pub struct Topology {
    pub hub: String,
    pods: Vec<NetPod>,
}

impl Topology {
    pub fn new() -> anyhow::Result<Topology> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        remove_leftovers();
        let hub = format!(
            "{PREFIX}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &hub])?;
        // From here on, drop cleans up whatever was created.
        let topology = Topology {
            hub: hub.clone(),
            pods: Vec::new(),
        };
        ip(&["-n", &hub, "link", "set", "lo", "up"])?;
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&[
            "-n",
            &hub,
            "addr",
            "add",
            &format!("{HUB_IP}/24"),
            "dev",
            "br0",
        ])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        Ok(topology)
    }

    /// Adds a pod namespace at `198.18.0.<host>`, attached to the hub.
    pub fn add_pod(&mut self, name: &str, host: u8) -> anyhow::Result<NetPod> {
        let pod = NetPod {
            ns: format!("{}-{name}", self.hub),
            ip: Ipv4Addr::new(198, 18, 0, host),
        };
        ip(&["netns", "add", &pod.ns])?;
        self.pods.push(pod.clone());
        let veth = format!("veth{host}");
        ip(&["-n", &pod.ns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n", &self.hub, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns",
            &pod.ns,
        ])?;
        ip(&["-n", &self.hub, "link", "set", &veth, "master", "br0", "up"])?;
        ip(&[
            "-n",
            &pod.ns,
            "addr",
            "add",
            &format!("{}/24", pod.ip),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &pod.ns, "link", "set", "eth0", "up"])?;
        // Service VIPs are reachable only through capture; without a route
        // connect() would fail before iptables sees the packet.
        ip(&["-n", &pod.ns, "route", "add", SERVICE_CIDR, "dev", "eth0"])?;
        Ok(pod)
    }

    pub fn hub_run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        run_in(&self.hub, f)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for pod in self.pods.iter().rev() {
            let _ = ip(&["netns", "del", &pod.ns]);
        }
        let _ = ip(&["netns", "del", &self.hub]);
    }
}

/// Deletes namespaces left by an earlier run that was killed before its
/// drop ran (its process no longer exists).
fn remove_leftovers() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(rest) = name.strip_prefix(&format!("{PREFIX}-")) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or_default();
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", &name]);
        }
    }
}
