//! What a run measured: the JSON report and the one summary line.

use std::collections::BTreeMap;

use serde::Serialize;

use super::meshd::Usage;

/// Latencies of one kind of change, over every receipt.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Spread {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Spread {
    /// Nearest-rank percentiles; `None` without samples.
    pub fn of(samples: &[f64]) -> Option<Spread> {
        if samples.is_empty() {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let rank = |p: f64| {
            sorted[((p / 100.0 * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1]
        };
        Some(Spread {
            p50_ms: rank(50.0),
            p99_ms: rank(99.0),
            max_ms: sorted[sorted.len() - 1],
        })
    }
}

/// One connection of the whole fleet: the cold sync, or a reconnect.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Sync {
    pub proxies: usize,
    pub synced: usize,
    pub failed: usize,
    /// From the connect command to the last proxy synced.
    pub sync_s: f64,
    /// Per proxy, from the connect command to its sync.
    pub per_proxy: Option<Spread>,
    /// meshd's CPU time over the sync.
    pub meshd_cpu_ms: u64,
    pub cpu_ms_per_proxy: f64,
    /// meshd right after the sync: what it holds, and the transient buffers
    /// of the sync that the allocator has not yet given back.
    pub meshd: Option<Usage>,
    /// meshd with every proxy still connected, once its memory stopped
    /// falling (at most --settle-seconds after the sync): the steady cost
    /// of the mesh and its proxies.
    pub settled: Option<Usage>,
    /// Protobuf bytes received per synced proxy during the sync, by type.
    pub bytes_per_proxy: BTreeMap<String, u64>,
    /// The client's CPU time over the sync.
    pub client_cpu_ms: u64,
}

/// One endpoint change or service addition, as every proxy saw it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Change {
    pub service: String,
    pub cluster: String,
    /// Proxies synced when it was made: each should receive it.
    pub expected: usize,
    pub received: usize,
    /// From the file write to each proxy's receipt.
    pub latency: Option<Spread>,
    /// meshd's CPU time from the write until the next change.
    pub meshd_cpu_ms: u64,
    /// The client's CPU time from the write until the last receipt.
    pub client_cpu_ms: u64,
}

/// One authorization policy change: which proxies received what.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PolicyChange {
    pub service: String,
    /// Connected proxies that are pods of the service: each should receive
    /// a new inbound listener, and no other proxy anything.
    pub covered: usize,
    /// Responses the fleet received from the write until the next change,
    /// by type (LDS: `covered` expected; the others: none).
    pub responses: BTreeMap<String, u64>,
    /// From the write until the fleet had `covered` listener responses.
    pub reached_ms: Option<f64>,
    /// meshd's CPU time from the write until the next change.
    pub meshd_cpu_ms: u64,
}

impl PolicyChange {
    /// Responses beyond one listener per covered proxy: what the proxies
    /// the policy does not cover received, and anything but that listener
    /// the covered ones did. None is expected.
    pub fn beyond(&self) -> u64 {
        let all: u64 = self.responses.values().sum();
        all.saturating_sub(self.covered as u64)
    }

    pub fn listeners(&self) -> u64 {
        self.responses.get("LDS").copied().unwrap_or(0)
    }
}

/// meshd once the fleet has disconnected.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Disconnect {
    pub proxies_closed: usize,
    /// meshd's own count of open streams, when it reports one.
    pub streams_left: Option<f64>,
    pub meshd: Option<Usage>,
    /// From the streams closing to the memory reading: until meshd's
    /// memory stopped falling, at most --settle-seconds.
    pub settled_s: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct LoadReport {
    pub proxies: usize,
    pub services: usize,
    pub namespaces: usize,
    pub endpoints_per_service: usize,
    pub protocol: String,
    /// Where meshd discovered the mesh: `files` or `kubernetes`.
    pub source: String,
    pub processes: usize,
    /// meshd with the mesh loaded and no proxy connected.
    pub idle: Option<Usage>,
    /// The cold sync first, then one per reconnect cycle.
    pub syncs: Vec<Sync>,
    pub endpoint_changes: Vec<Change>,
    pub service_adds: Vec<Change>,
    pub policy_changes: Vec<PolicyChange>,
    /// After each disconnect of the fleet: the first after the changes,
    /// then one per reconnect cycle.
    pub disconnects: Vec<Disconnect>,
    /// Over every endpoint change's receipts.
    pub endpoint_latency: Option<Spread>,
    /// Over every service addition's receipts.
    pub service_add_latency: Option<Spread>,
    /// NACKs the proxies sent (with --nack-type).
    pub nacks_sent: u64,
    /// Delta resources sent again at a version the proxy already held,
    /// by type, over the run.
    pub resent_unchanged: BTreeMap<String, u64>,
    /// Phases (sync, reconnect, eds, add) in which a client process used
    /// a whole core.
    pub client_saturated: Vec<String>,
    /// Phases in which the client and meshd together kept every core busy:
    /// meshd shared the machine with the client.
    pub machine_saturated: Vec<String>,
    pub client_cpu_ms: u64,
    /// Stream failures (a few of the messages in `errors`).
    pub failed: usize,
    pub errors: Vec<String>,
    pub timed_out: bool,
    /// Every proxy synced every time, and every change reached every proxy.
    pub complete: bool,
}

/// Phase tags for the summary: `no`, or `sync,add`.
fn list(tags: &[String]) -> String {
    if tags.is_empty() {
        "no".to_string()
    } else {
        tags.join(",")
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

impl LoadReport {
    pub fn is_complete(&self) -> bool {
        let full = |c: &Change| c.expected == self.proxies && c.received >= c.expected;
        !self.timed_out
            && self.failed == 0
            && !self.syncs.is_empty()
            && self.syncs.iter().all(|s| s.synced == self.proxies)
            && self.endpoint_changes.iter().all(full)
            && self.service_adds.iter().all(full)
            && self
                .policy_changes
                .iter()
                .all(|p| p.listeners() >= p.covered as u64)
    }

    /// The one line a run ends with.
    pub fn summary(&self) -> String {
        let cold = self.syncs.first();
        let after = cold.and_then(|s| s.meshd);
        let settled = cold.and_then(|s| s.settled);
        let idle_kib = self.idle.map_or(0, |u| u.rss_kib);
        // The steady cost per proxy: from the settled reading when there is one.
        let per_proxy_kib = match (cold, settled.or(after)) {
            (Some(s), Some(u)) if s.synced > 0 => {
                u.rss_kib.saturating_sub(idle_kib) as f64 / s.synced as f64
            }
            _ => 0.0,
        };
        let spread = |s: Option<Spread>, f: fn(&Spread) -> f64| {
            s.as_ref()
                .map_or("-".to_string(), |s| format!("{:.0}", f(s)))
        };
        let received = |changes: &[Change]| {
            format!(
                "{}/{}",
                changes.iter().map(|c| c.received).sum::<usize>(),
                changes.iter().map(|c| c.expected).sum::<usize>()
            )
        };
        let mean_cpu = |changes: &[Change]| {
            if changes.is_empty() {
                "-".to_string()
            } else {
                format!(
                    "{:.0}",
                    changes.iter().map(|c| c.meshd_cpu_ms).sum::<u64>() as f64
                        / changes.len() as f64
                )
            }
        };
        let rss_list = |usages: Vec<Option<Usage>>| {
            usages
                .iter()
                .map(|u| u.map_or("-".to_string(), |u| format!("{:.0}", mib(u.rss_kib))))
                .collect::<Vec<_>>()
                .join(",")
        };
        let disconnected = rss_list(self.disconnects.iter().map(|d| d.meshd).collect());
        let resynced = rss_list(self.syncs.iter().skip(1).map(|s| s.meshd).collect());
        let peak = self
            .syncs
            .iter()
            .filter_map(|s| s.meshd)
            .chain(self.disconnects.iter().filter_map(|d| d.meshd))
            .map(|u| u.peak_kib)
            .max()
            .unwrap_or(0);
        format!(
            "meshd-load: proxies={} synced={} sync_s={:.1} rss_mib={:.0} settled_mib={} peak_mib={:.0} per_proxy_kib={:.0} cpu_ms_per_proxy={:.2} eds_p50_ms={} eds_p99_ms={} eds_max_ms={} eds_received={} eds_cpu_ms={} add_p50_ms={} add_p99_ms={} add_max_ms={} add_received={} add_cpu_ms={} policy_covered={} policy_lds={} policy_beyond={} idle_mib={:.0} disconnected_mib={} resynced_mib={} client_cpu_s={:.1} client_saturated={} machine_saturated={} nacks={} failed={} source={}",
            self.proxies,
            cold.map_or(0, |s| s.synced),
            cold.map_or(0.0, |s| s.sync_s),
            mib(after.map_or(0, |u| u.rss_kib)),
            settled.map_or("-".to_string(), |u| format!("{:.0}", mib(u.rss_kib))),
            mib(peak),
            per_proxy_kib,
            cold.map_or(0.0, |s| s.cpu_ms_per_proxy),
            spread(self.endpoint_latency, |s| s.p50_ms),
            spread(self.endpoint_latency, |s| s.p99_ms),
            spread(self.endpoint_latency, |s| s.max_ms),
            received(&self.endpoint_changes),
            mean_cpu(&self.endpoint_changes),
            spread(self.service_add_latency, |s| s.p50_ms),
            spread(self.service_add_latency, |s| s.p99_ms),
            spread(self.service_add_latency, |s| s.max_ms),
            received(&self.service_adds),
            mean_cpu(&self.service_adds),
            self.policy_changes.iter().map(|p| p.covered).sum::<usize>(),
            self.policy_changes
                .iter()
                .map(PolicyChange::listeners)
                .sum::<u64>(),
            self.policy_changes
                .iter()
                .map(PolicyChange::beyond)
                .sum::<u64>(),
            mib(idle_kib),
            if disconnected.is_empty() {
                "-".into()
            } else {
                disconnected
            },
            if resynced.is_empty() {
                "-".into()
            } else {
                resynced
            },
            self.client_cpu_ms as f64 / 1000.0,
            list(&self.client_saturated),
            list(&self.machine_saturated),
            self.nacks_sent,
            self.failed,
            if self.source.is_empty() {
                "files"
            } else {
                &self.source
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = Spread::of(&samples).unwrap();
        assert_eq!((s.p50_ms, s.p99_ms, s.max_ms), (50.0, 99.0, 100.0));
        let one = Spread::of(&[7.0]).unwrap();
        assert_eq!((one.p50_ms, one.p99_ms), (7.0, 7.0));
        assert!(Spread::of(&[]).is_none());
    }

    #[test]
    fn a_run_is_complete_only_when_everything_arrived_everywhere() {
        let mut report = LoadReport {
            proxies: 2,
            syncs: vec![Sync {
                proxies: 2,
                synced: 2,
                ..Default::default()
            }],
            endpoint_changes: vec![Change {
                expected: 2,
                received: 2,
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(report.is_complete());
        assert!(
            report
                .summary()
                .starts_with("meshd-load: proxies=2 synced=2 ")
        );
        assert!(report.summary().ends_with(" failed=0 source=files"));
        report.endpoint_changes[0].received = 1;
        assert!(!report.is_complete());
    }
}
