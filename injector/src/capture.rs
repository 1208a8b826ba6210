//! Traffic capture: the iptables rules that send a pod's TCP traffic
//! through its sidecar.
//!
//! The init container (`meshd capture`) applies exactly these rules, and the
//! end-to-end tests apply them inside their network namespaces, so what is
//! tested is what runs.
//!
//! ```text
//! inbound:  PREROUTING ─> MESHD_INBOUND ─(excluded port? RETURN)─> REDIRECT :15006
//! outbound: OUTPUT ─> MESHD_OUTPUT ─(proxy's own uid/gid, loopback, excluded? RETURN)─> REDIRECT :15001
//!                      └─(the proxy to its own pod over lo: MESHD_IN_REDIRECT, as a caller)
//! ```
//!
//! The proxy's own traffic (UID/GID 1337) is never redirected; otherwise
//! every connection Envoy opens would loop back into Envoy.

use std::fmt::Write as _;

/// The annotation value parsers the capture flags share.
pub use meshd_api::annotations::pod::{Cidr, parse_cidrs, parse_ports};

/// The UID (and GID) the sidecar runs as.
pub const PROXY_UID: u32 = 1337;

/// What to capture. Defaults match the injected sidecar.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaptureConfig {
    pub proxy_uid: u32,
    pub proxy_gid: u32,
    pub outbound_port: u16,
    pub inbound_port: u16,
    /// Inbound ports that reach the pod directly (the sidecar's own
    /// readiness and stats ports are always among them).
    pub exclude_inbound_ports: Vec<u16>,
    /// Destination ports the app reaches directly.
    pub exclude_outbound_ports: Vec<u16>,
    /// Destinations the app reaches directly.
    pub exclude_outbound_cidrs: Vec<Cidr>,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            proxy_uid: PROXY_UID,
            proxy_gid: PROXY_UID,
            outbound_port: 15001,
            inbound_port: 15006,
            exclude_inbound_ports: Vec::new(),
            exclude_outbound_ports: Vec::new(),
            exclude_outbound_cidrs: Vec::new(),
        }
    }
}

/// Ports of the sidecar that must never be redirected inbound: kubelet
/// probes readiness on 15021 and Prometheus scrapes 15090.
const SIDECAR_INBOUND_PORTS: [u16; 2] = [15021, 15090];

/// Destination ports never redirected outbound: the ports the sidecar
/// listens on at every address (inbound capture, readiness, stats). The
/// capture listener hands a connection to the listener of its original
/// destination's port, and on these that is the caller's own sidecar: a
/// meshed Prometheus scraping another pod's 15090 would read its own
/// proxy's stats. These connections leave as they are, as they did through
/// the passthrough before the outbound side had a listener per port.
const SIDECAR_OUTBOUND_PORTS: [u16; 3] = [15006, 15021, 15090];

impl CaptureConfig {
    /// The `nat` table rules as `iptables-restore` input for one address
    /// family. Applying them is atomic: a pod never runs half-captured.
    pub fn render(&self, ipv6: bool) -> String {
        let mut r = String::new();
        let loopback = if ipv6 { "::1/128" } else { "127.0.0.1/32" };
        let _ = writeln!(r, "*nat");
        for chain in [
            "MESHD_INBOUND",
            "MESHD_IN_REDIRECT",
            "MESHD_OUTPUT",
            "MESHD_REDIRECT",
        ] {
            let _ = writeln!(r, ":{chain} - [0:0]");
        }
        let _ = writeln!(
            r,
            "-A MESHD_IN_REDIRECT -p tcp -j REDIRECT --to-ports {}",
            self.inbound_port
        );
        let _ = writeln!(
            r,
            "-A MESHD_REDIRECT -p tcp -j REDIRECT --to-ports {}",
            self.outbound_port
        );

        let _ = writeln!(r, "-A PREROUTING -p tcp -j MESHD_INBOUND");
        for port in excluded(&SIDECAR_INBOUND_PORTS, &self.exclude_inbound_ports) {
            let _ = writeln!(r, "-A MESHD_INBOUND -p tcp --dport {port} -j RETURN");
        }
        let _ = writeln!(r, "-A MESHD_INBOUND -p tcp -j MESHD_IN_REDIRECT");

        let _ = writeln!(r, "-A OUTPUT -p tcp -j MESHD_OUTPUT");
        if !ipv6 {
            // The proxy connecting to its own pod (a Service whose chosen
            // endpoint is this pod, over mTLS) goes through the inbound
            // side, as any other caller's connection does; without this the
            // mTLS connection would reach the plaintext app. The inbound
            // catch-all's own connections to the app leave from
            // INBOUND_PASSTHROUGH_SOURCE and are let through, or they would
            // loop. The app talking to its own pod address stays local, as
            // it would without the mesh. (IPv4 only: IPv6 has no second
            // loopback address to tell the catch-all's connections by.)
            let _ = writeln!(
                r,
                "-A MESHD_OUTPUT -s {}/32 -o lo -j RETURN",
                meshd_api::sidecar::INBOUND_PASSTHROUGH_SOURCE
            );
            for owner in [
                format!("--uid-owner {}", self.proxy_uid),
                format!("--gid-owner {}", self.proxy_gid),
            ] {
                let _ = writeln!(
                    r,
                    "-A MESHD_OUTPUT ! -d {loopback} -o lo -m owner {owner} -j MESHD_IN_REDIRECT"
                );
                let _ = writeln!(r, "-A MESHD_OUTPUT -o lo -m owner ! {owner} -j RETURN");
            }
        }
        // The proxy's own connections leave as they are.
        let _ = writeln!(
            r,
            "-A MESHD_OUTPUT -m owner --uid-owner {} -j RETURN",
            self.proxy_uid
        );
        let _ = writeln!(
            r,
            "-A MESHD_OUTPUT -m owner --gid-owner {} -j RETURN",
            self.proxy_gid
        );
        // The app talking to itself over loopback stays local.
        let _ = writeln!(r, "-A MESHD_OUTPUT -d {loopback} -j RETURN");
        for cidr in self
            .exclude_outbound_cidrs
            .iter()
            .filter(|c| c.address.is_ipv6() == ipv6)
        {
            let _ = writeln!(
                r,
                "-A MESHD_OUTPUT -d {}/{} -j RETURN",
                cidr.address, cidr.prefix
            );
        }
        for port in excluded(&SIDECAR_OUTBOUND_PORTS, &self.exclude_outbound_ports) {
            let _ = writeln!(r, "-A MESHD_OUTPUT -p tcp --dport {port} -j RETURN");
        }
        let _ = writeln!(r, "-A MESHD_OUTPUT -j MESHD_REDIRECT");
        let _ = writeln!(r, "COMMIT");
        r
    }
}

/// The sidecar's ports and the pod's own choice, sorted, each once.
fn excluded(sidecar: &[u16], chosen: &[u16]) -> Vec<u16> {
    let mut ports: Vec<u16> = sidecar.iter().chain(chosen).copied().collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// Applies the rules with `iptables-restore` (and `ip6tables-restore` when
/// `ipv6`), in the current network namespace. Needs NET_ADMIN and NET_RAW.
pub fn apply(config: &CaptureConfig, ipv6: bool) -> std::io::Result<()> {
    let mut families = vec![("iptables-restore", false)];
    if ipv6 {
        families.push(("ip6tables-restore", true));
    }
    for (command, v6) in families {
        restore(command, &config.render(v6))?;
    }
    Ok(())
}

fn restore(command: &str, rules: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    // --noflush: other tables and chains the pod already has stay.
    let mut child = Command::new(command)
        .arg("--noflush")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot run {command}: {e}")))?;
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(rules.as_bytes())?;
    let output = child.wait_with_output()?;
    if !output.status.success() {
        return Err(std::io::Error::other(format!(
            "{command} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_rules_redirect_everything_but_the_proxy() {
        let rules = CaptureConfig::default().render(false);
        assert!(rules.starts_with("*nat\n"));
        assert!(rules.ends_with("COMMIT\n"));
        assert!(rules.contains("-A MESHD_REDIRECT -p tcp -j REDIRECT --to-ports 15001\n"));
        assert!(rules.contains("-A MESHD_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006\n"));
        assert!(rules.contains("-A MESHD_OUTPUT -m owner --uid-owner 1337 -j RETURN\n"));
        assert!(rules.contains("-A MESHD_INBOUND -p tcp --dport 15021 -j RETURN\n"));
        // The owner exclusion comes before the catch-all redirect.
        let uid = rules.find("--uid-owner").unwrap();
        let redirect = rules.find("-A MESHD_OUTPUT -j MESHD_REDIRECT").unwrap();
        assert!(uid < redirect);
    }

    #[test]
    fn the_proxy_calling_its_own_pod_goes_through_the_inbound_side() {
        let rules = CaptureConfig::default().render(false);
        let lines: Vec<&str> = rules.lines().collect();
        let at = |rule: &str| {
            lines
                .iter()
                .position(|l| *l == rule)
                .unwrap_or_else(|| panic!("no `{rule}` in\n{rules}"))
        };
        let passthrough = at("-A MESHD_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN");
        let to_inbound = at(
            "-A MESHD_OUTPUT ! -d 127.0.0.1/32 -o lo -m owner --uid-owner 1337 -j MESHD_IN_REDIRECT",
        );
        let app_local = at("-A MESHD_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN");
        let proxy = at("-A MESHD_OUTPUT -m owner --uid-owner 1337 -j RETURN");
        // The catch-all's connections first, then the proxy's own pod,
        // before the proxy's other connections leave untouched.
        assert!(passthrough < to_inbound && to_inbound < app_local && app_local < proxy);
        // IPv6 has no such rules: nothing to tell the catch-all's
        // connections by.
        assert!(!CaptureConfig::default().render(true).contains("-o lo"));
    }

    #[test]
    fn exclusions_are_rendered_per_family() {
        let config = CaptureConfig {
            exclude_inbound_ports: parse_ports("inbound", "22, 8081").unwrap(),
            exclude_outbound_ports: parse_ports("outbound", "5432").unwrap(),
            exclude_outbound_cidrs: parse_cidrs("cidrs", "10.0.0.0/8,fd00::/8,192.168.0.1")
                .unwrap(),
            ..Default::default()
        };
        let v4 = config.render(false);
        assert!(v4.contains("-A MESHD_INBOUND -p tcp --dport 22 -j RETURN"));
        assert!(v4.contains("-A MESHD_OUTPUT -d 10.0.0.0/8 -j RETURN"));
        assert!(v4.contains("-A MESHD_OUTPUT -d 192.168.0.1/32 -j RETURN"));
        assert!(!v4.contains("fd00"));
        assert!(v4.contains("-A MESHD_OUTPUT -p tcp --dport 5432 -j RETURN"));
        let v6 = config.render(true);
        assert!(v6.contains("-A MESHD_OUTPUT -d fd00::/8 -j RETURN"));
        assert!(v6.contains("-A MESHD_OUTPUT -d ::1/128 -j RETURN"));
    }

    /// The sidecar listens on these at every address: redirected, a call to
    /// another pod's port would reach the caller's own sidecar.
    #[test]
    fn the_sidecars_own_ports_are_reached_directly_outbound() {
        for ipv6 in [false, true] {
            let rules = CaptureConfig {
                exclude_outbound_ports: vec![15090, 5432],
                ..Default::default()
            }
            .render(ipv6);
            let lines: Vec<&str> = rules.lines().collect();
            let redirect = lines
                .iter()
                .position(|l| *l == "-A MESHD_OUTPUT -j MESHD_REDIRECT")
                .unwrap();
            for port in [5432, 15006, 15021, 15090] {
                let rule = format!("-A MESHD_OUTPUT -p tcp --dport {port} -j RETURN");
                let at: Vec<usize> = (0..lines.len()).filter(|&i| lines[i] == rule).collect();
                assert_eq!(at.len(), 1, "{rule} once:\n{rules}");
                assert!(at[0] < redirect, "{rule} before the redirect");
            }
        }
    }

    #[test]
    fn bad_values_name_the_field() {
        assert_eq!(
            parse_ports("--exclude-inbound-ports", "80,http")
                .unwrap_err()
                .to_string(),
            "--exclude-inbound-ports: `http` is not a port; accepted: a comma-separated list of numbers 1-65535"
        );
        assert!(parse_cidrs("--exclude-outbound-cidrs", "10.0.0.0/33").is_err());
        assert!(parse_ports("p", "0").is_err());
    }
}
