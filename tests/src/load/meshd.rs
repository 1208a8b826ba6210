//! The control plane under test: the `meshd run` child (or one already
//! running), its readiness and metrics over the debug port, and its memory
//! and CPU time from /proc.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;

use crate::http;

/// /proc/<pid>/stat counts in USER_HZ, which Linux fixes at 100 for every
/// user-space interface whatever the kernel's own tick.
const TICKS_PER_SECOND: u64 = 100;

/// A process's memory and CPU time at one moment.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Usage {
    /// Resident memory (VmRSS), KiB.
    pub rss_kib: u64,
    /// Peak resident memory since the process started (VmHWM), KiB.
    pub peak_kib: u64,
    /// User plus system CPU time, milliseconds.
    pub cpu_ms: u64,
}

/// Memory and CPU time of `pid`, or `None` once it is gone.
pub fn usage(pid: u32) -> Option<Usage> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |field: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    Some(Usage {
        rss_kib: kib("VmRSS:")?,
        peak_kib: kib("VmHWM:")?,
        cpu_ms: cpu_ms(pid)?,
    })
}

/// User plus system CPU time of `pid` (all its threads), milliseconds.
pub fn cpu_ms(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields are counted
    // from after its closing parenthesis, where field 3 (state) starts.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) * 1000 / TICKS_PER_SECOND)
}

/// A free loopback port, for a meshd the tool starts.
pub fn free_loopback_port() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free loopback port")?;
    Ok(listener.local_addr()?)
}

/// `meshd` next to this executable: where `cargo build` puts both.
pub fn default_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating this executable")?;
    let path = exe.with_file_name("meshd");
    if !path.is_file() {
        bail!(
            "{} not found: build it (`cargo build --release -p meshd`) or pass --meshd PATH",
            path.display()
        );
    }
    Ok(path)
}

pub struct Meshd {
    pub xds: SocketAddr,
    pub debug: Option<SocketAddr>,
    pub pid: Option<u32>,
    /// Where the child's log goes.
    pub log: Option<PathBuf>,
    child: Option<Child>,
}

/// How `meshd run` is started.
pub struct Launch<'a> {
    pub binary: &'a Path,
    /// The file registry, or, with `kubeconfig`, none: meshd watches the
    /// API server the kubeconfig names.
    pub registry: &'a Path,
    pub kubeconfig: Option<&'a Path>,
    pub ca_dir: &'a Path,
    pub trust_domain: &'a str,
    pub xds: SocketAddr,
    pub debug: SocketAddr,
    pub extra_args: &'a [String],
    pub log: &'a Path,
}

impl Meshd {
    /// Starts `meshd run` on the registry (or the API server), serving on
    /// loopback.
    pub fn start(launch: Launch<'_>) -> anyhow::Result<Meshd> {
        let log = std::fs::File::create(launch.log)
            .with_context(|| format!("creating {}", launch.log.display()))?;
        let mut command = Command::new(launch.binary);
        command.arg("run");
        match launch.kubeconfig {
            Some(kubeconfig) => {
                command.arg("--kubernetes").env("KUBECONFIG", kubeconfig);
            }
            None => {
                command.arg("--registry").arg(launch.registry);
            }
        }
        command
            .arg("--ca-dir")
            .arg(launch.ca_dir)
            .args(["--trust-domain", launch.trust_domain])
            .arg("--xds-address")
            .arg(launch.xds.to_string())
            .arg("--debug-address")
            .arg(launch.debug.to_string());
        // The fleet is gone when the tool stops meshd: no reason to serve
        // it for the default ten seconds.
        if !launch
            .extra_args
            .iter()
            .any(|a| a.starts_with("--drain-period"))
        {
            command.args(["--drain-period", "1s"]);
        }
        command
            .args(launch.extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = command
            .spawn()
            .with_context(|| format!("starting {} run", launch.binary.display()))?;
        Ok(Meshd {
            xds: launch.xds,
            debug: Some(launch.debug),
            pid: Some(child.id()),
            log: Some(launch.log.to_path_buf()),
            child: Some(child),
        })
    }

    /// A meshd someone else started.
    pub fn existing(xds: SocketAddr, debug: Option<SocketAddr>, pid: Option<u32>) -> Meshd {
        Meshd {
            xds,
            debug,
            pid,
            log: None,
            child: None,
        }
    }

    /// Waits for `/readyz` to answer 200 (the mesh is loaded and the CA can
    /// sign); without a debug address, for the xDS port to accept.
    pub fn wait_ready(&mut self, deadline: Instant) -> anyhow::Result<()> {
        let mut last = String::from("no answer yet");
        while Instant::now() < deadline {
            if let Some(child) = &mut self.child
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "meshd exited ({status}) before it was ready{}",
                    self.log_hint()
                );
            }
            match self.debug {
                Some(debug) => match http::get(debug, "localhost", "/readyz", false) {
                    Ok(r) if r.status == 200 => return Ok(()),
                    Ok(r) => last = format!("HTTP {}: {}", r.status, r.body.trim()),
                    Err(e) => last = format!("{e:#}"),
                },
                None => {
                    match std::net::TcpStream::connect_timeout(&self.xds, Duration::from_secs(1)) {
                        Ok(_) => return Ok(()),
                        Err(e) => last = e.to_string(),
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "meshd was not ready in time; last: {last}{}",
            self.log_hint()
        )
    }

    /// Whether the child (if the tool started one) is still running.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(child) = &mut self.child
            && let Some(status) = child.try_wait()?
        {
            bail!("meshd exited ({status}){}", self.log_hint());
        }
        Ok(())
    }

    pub fn usage(&self) -> Option<Usage> {
        usage(self.pid?)
    }

    /// A gauge or counter from `/metrics` (the sum over its label sets).
    pub fn metric(&self, name: &str) -> Option<f64> {
        let response = http::get(self.debug?, "localhost", "/metrics", false).ok()?;
        if response.status != 200 {
            return None;
        }
        let mut found = None;
        for line in response.body.lines() {
            let Some(rest) = line.strip_prefix(name) else {
                continue;
            };
            // `name value` or `name{labels} value`, not `name_longer …`.
            if !(rest.starts_with(' ') || rest.starts_with('{')) {
                continue;
            }
            if let Some(value) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
                *found.get_or_insert(0.0) += value;
            }
        }
        found
    }

    fn log_hint(&self) -> String {
        match &self.log {
            Some(log) => format!(
                "; the end of its log ({}):\n{}",
                log.display(),
                tail(log, 20)
            ),
            None => String::new(),
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited in 15 s.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Meshd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last `lines` lines of a log file.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let own = usage(std::process::id()).expect("this process is in /proc");
        assert!(own.rss_kib > 0 && own.peak_kib >= own.rss_kib);
    }
}
