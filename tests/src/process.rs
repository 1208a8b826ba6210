//! The real binaries under test: `meshd` of this profile, and child
//! processes that die with the test.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

/// The `meshd` binary of the calling test's profile, built if needed (it
/// belongs to another package, which cargo does not build for this one's
/// tests; a no-op when it is current).
pub fn meshd_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    // target/<profile>/deps/<test>-<hash> → target/<profile>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test runs from target/<profile>/deps");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .args(["build", "--quiet", "-p", "meshd", "--bin", "meshd"])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    // Variables cargo sets for the test's run only: some build scripts
    // track them, and a build that saw them would make the next `cargo
    // test` rebuild those crates again.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_BIN_")
            || [
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_CRATE_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "OUT_DIR",
            ]
            .contains(&name.as_ref())
        {
            build.env_remove(name.as_ref());
        }
    }
    if profile_dir.ends_with("release") {
        build.arg("--release");
    }
    let status = build.status().expect("cargo runs");
    assert!(status.success(), "building meshd failed: {status}");
    let meshd = profile_dir.join("meshd");
    assert!(meshd.is_file(), "{} was not built", meshd.display());
    meshd
}

/// A child process, killed and reaped when dropped (also when the test
/// fails).
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback port free right now.
pub fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .expect("binding a loopback port")
        .local_addr()
        .expect("the bound address")
}

/// `meshd bootstrap` for a sidecar of pod `pod` on this machine: its admin
/// interface on `ip:15000`, its listeners on `ip`, a bootstrap identity for
/// `service_account` issued from the mesh CA in `work/ca` (the one `meshd
/// run --ca-dir work/ca` made) into `work/<pod>-identity`, and `extra`
/// flags. Returns the bootstrap file, `work/<pod>.yaml`.
#[allow(clippy::too_many_arguments)]
pub fn local_bootstrap(
    meshd: &Path,
    work: &Path,
    namespace: &str,
    pod: &str,
    service_account: &str,
    ip: std::net::IpAddr,
    xds: &str,
    extra: &[&str],
) -> anyhow::Result<PathBuf> {
    let bootstrap = work.join(format!("{pod}.yaml"));
    let out = Command::new(meshd)
        .args(["bootstrap", "--namespace", namespace, "--pod", pod])
        .args(["--service-account", service_account, "--xds-address", xds])
        .arg("--admin-address")
        .arg(format!("{ip}:15000"))
        .arg("--proxy-address")
        .arg(ip.to_string())
        .arg("--identity-dir")
        .arg(work.join(format!("{pod}-identity")))
        .arg("--issue-from-ca-dir")
        .arg(work.join("ca"))
        .arg("--output")
        .arg(&bootstrap)
        .args(extra)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "meshd bootstrap failed for {pod}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(bootstrap)
}
