//! The process's own resource use, under the names every Prometheus client
//! library exports it by (`process_resident_memory_bytes`,
//! `process_cpu_seconds_total`, `process_open_fds`, ...): what the control
//! plane dashboards of other meshes chart for istiod or Linkerd's
//! controllers, and what an operator checks first when a replica grows
//! with its fleet.
//!
//! Read from `/proc/self` and `getrusage` at each scrape (a few small
//! reads), not sampled in between. Where `/proc` is missing (not Linux),
//! the series that need it are left out rather than reported as zero; the
//! start time is then when the metrics were registered.

use std::time::{SystemTime, UNIX_EPOCH};

use nix::sys::resource::{Resource, UsageWho, getrlimit, getrusage};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

/// Exports the process metrics; register it once per registry.
#[derive(Debug)]
pub struct ProcessCollector {
    /// When the process started, in seconds since the epoch.
    start_time: f64,
}

impl ProcessCollector {
    /// Adds the process metrics to `registry`, unprefixed as Prometheus
    /// names them.
    pub fn register(registry: &mut Registry) {
        // The control plane starts once the CA is loaded, which can wait a
        // while for the leader's Secret: the process's own start is what
        // a restart shows as.
        let start_time = process_start_time().unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64())
        });
        registry.register_collector(Box::new(ProcessCollector { start_time }));
    }
}

/// Clock ticks per second in `/proc/<pid>/stat` (`USER_HZ`): Linux fixes
/// it at 100 on every architecture, whatever the kernel's own tick.
const USER_HZ: f64 = 100.0;

/// The boot time (`btime` in `/proc/stat`) plus the process's start
/// after boot (field 22 of `/proc/self/stat`).
fn process_start_time() -> Option<f64> {
    let boot = std::fs::read_to_string("/proc/stat").ok()?;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    start_time_of(&boot, &stat)
}

fn start_time_of(proc_stat: &str, self_stat: &str) -> Option<f64> {
    let boot: f64 = proc_stat
        .lines()
        .find_map(|line| line.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    // The command name (field 2) is in parentheses and may hold spaces or
    // parentheses itself: count from after the last `)`, which is field 3.
    let after_name = &self_stat[self_stat.rfind(')')? + 1..];
    let ticks: f64 = after_name.split_whitespace().nth(22 - 3)?.parse().ok()?;
    Some(boot + ticks / USER_HZ)
}

/// One reading of the process.
struct Reading {
    cpu_seconds: Option<f64>,
    resident_bytes: Option<u64>,
    virtual_bytes: Option<u64>,
    threads: Option<u64>,
    open_fds: Option<u64>,
    max_fds: Option<u64>,
}

impl Reading {
    fn now() -> Reading {
        let status = std::fs::read_to_string("/proc/self/status").ok();
        let status = status.as_deref().map(Status::parse).unwrap_or_default();
        Reading {
            cpu_seconds: getrusage(UsageWho::RUSAGE_SELF).ok().map(|u| {
                let seconds =
                    |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
                seconds(u.user_time()) + seconds(u.system_time())
            }),
            resident_bytes: status.resident_bytes,
            virtual_bytes: status.virtual_bytes,
            threads: status.threads,
            // The directory's own handle, open while it is read, is
            // counted too, as Prometheus' own collectors count it.
            open_fds: std::fs::read_dir("/proc/self/fd")
                .ok()
                .map(|entries| entries.count() as u64),
            // `RLIM_INFINITY` is no limit worth charting.
            max_fds: getrlimit(Resource::RLIMIT_NOFILE)
                .ok()
                .map(|(soft, _)| soft)
                .filter(|&soft| soft != nix::sys::resource::RLIM_INFINITY),
        }
    }
}

/// What `/proc/self/status` says of memory and threads.
#[derive(Debug, Default, PartialEq)]
struct Status {
    resident_bytes: Option<u64>,
    virtual_bytes: Option<u64>,
    threads: Option<u64>,
}

impl Status {
    /// Lines such as `VmRSS:\t   65852 kB` and `Threads:\t7`.
    fn parse(text: &str) -> Status {
        let field = |name: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
        };
        let kib = |name: &str| {
            let value = field(name)?.strip_suffix("kB")?.trim();
            value.parse::<u64>().ok().map(|k| k * 1024)
        };
        Status {
            resident_bytes: kib("VmRSS"),
            virtual_bytes: kib("VmSize"),
            threads: field("Threads").and_then(|t| t.parse().ok()),
        }
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let reading = Reading::now();
        let count = |n: Option<u64>| n.map(|n| n as f64);
        // Name (without its unit), help as Prometheus' clients word it,
        // unit, value.
        let gauges = [
            (
                "process_resident_memory",
                "Resident memory size in bytes.",
                Some(Unit::Bytes),
                count(reading.resident_bytes),
            ),
            (
                "process_virtual_memory",
                "Virtual memory size in bytes.",
                Some(Unit::Bytes),
                count(reading.virtual_bytes),
            ),
            (
                "process_open_fds",
                "Number of open file descriptors.",
                None,
                count(reading.open_fds),
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors.",
                None,
                count(reading.max_fds),
            ),
            (
                "process_threads",
                "Number of OS threads in the process.",
                None,
                count(reading.threads),
            ),
            (
                "process_start_time",
                "Start time of the process since unix epoch in seconds.",
                Some(Unit::Seconds),
                Some(self.start_time),
            ),
        ];
        for (name, help, unit, value) in gauges {
            let Some(value) = value else { continue };
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(
                name,
                help,
                unit.as_ref(),
                gauge.metric_type(),
            )?)?;
        }
        if let Some(seconds) = reading.cpu_seconds {
            let counter = ConstCounter::new(seconds);
            counter.encode(encoder.encode_descriptor(
                "process_cpu",
                "Total user and system CPU time spent in seconds.",
                Some(&Unit::Seconds),
                counter.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_give_memory_in_bytes_and_threads() {
        let status = "Name:\tmeshd\nVmPeak:\t  300000 kB\nVmSize:\t  256000 kB\nVmRSS:\t   65852 kB\nThreads:\t7\n";
        assert_eq!(
            Status::parse(status),
            Status {
                resident_bytes: Some(65_852 * 1024),
                virtual_bytes: Some(256_000 * 1024),
                threads: Some(7),
            }
        );
        // A kernel thread has no memory lines; nothing is made up.
        assert_eq!(
            Status::parse("Name:\tkthreadd\nThreads:\t1\n").resident_bytes,
            None
        );
    }

    #[test]
    fn the_start_time_is_the_boot_time_plus_the_processs_start_after_boot() {
        let proc_stat = "cpu  1 2 3\nintr 5\nbtime 1796500000\nprocesses 9\n";
        // A command name with a space and a parenthesis; starttime 12345
        // ticks after boot (field 22).
        let self_stat = "4242 (meshd (x) run) S 1 4242 4242 0 -1 4194560 500 0 0 0 \
                         10 5 0 0 20 0 7 0 12345 174956544 2010 18446744073709551615";
        assert_eq!(
            start_time_of(proc_stat, self_stat),
            Some(1_796_500_000.0 + 123.45)
        );
        assert_eq!(start_time_of("cpu 1\n", self_stat), None);
        assert_eq!(start_time_of(proc_stat, "4242 (meshd) S 1"), None);
    }

    /// The scrape as Prometheus reads it: each series once, under the name
    /// its dashboards query, with this process's values.
    #[test]
    fn a_scrape_reports_this_process() {
        // A few MiB, written to: the resident size counts them.
        let ballast = std::hint::black_box(vec![1u8; 8 << 20]);
        let mut registry = Registry::default();
        ProcessCollector::register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let value = |name: &str| -> f64 {
            let lines: Vec<&str> = text
                .lines()
                .filter(|l| l.split(' ').next() == Some(name))
                .collect();
            assert_eq!(lines.len(), 1, "{name} in\n{text}");
            lines[0].rsplit(' ').next().unwrap().parse().unwrap()
        };
        let resident = value("process_resident_memory_bytes");
        assert!(resident >= ballast.len() as f64, "{text}");
        assert!(value("process_virtual_memory_bytes") >= resident, "{text}");
        // This test's binary has its standard streams and the test
        // harness' handles open, and its limit is above that.
        let open = value("process_open_fds");
        assert!(open >= 3.0, "{text}");
        if text.contains("process_max_fds ") {
            assert!(value("process_max_fds") > open, "{text}");
        }
        assert!(value("process_threads") >= 1.0, "{text}");
        assert!(value("process_cpu_seconds_total") > 0.0, "{text}");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let started = value("process_start_time_seconds");
        assert!(started <= now && started > now - 3600.0, "{started} {now}");
        assert!(
            text.contains("# TYPE process_cpu_seconds counter"),
            "{text}"
        );
        for gauge in [
            "process_resident_memory_bytes",
            "process_virtual_memory_bytes",
            "process_open_fds",
            "process_threads",
            "process_start_time_seconds",
        ] {
            assert!(text.contains(&format!("# TYPE {gauge} gauge")), "{text}");
        }
        assert!(
            text.contains("# UNIT process_resident_memory_bytes bytes"),
            "{text}"
        );
        drop(ballast);
    }
}
