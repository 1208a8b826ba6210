//! The coordinator: sets up the mesh and meshd, drives the fleets through
//! the phases and measures each one.
//!
//! ```text
//! generate mesh ─> start meshd, /readyz ─> idle memory
//!   ─> prepare fleets (identities) ─> cold sync
//!   ─> endpoint changes ─> service additions
//!   ─> disconnect ─> (reconnect, sync, disconnect) × cycles ─> summary
//! ```
//!
//! Every wait is bounded by the phase's limit and by `--timeout`; when time
//! runs out the run stops where it is and reports what it measured.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::apiserver::{self, ApiServer};
use super::mesh::Mesh;
use super::meshd::{self, Launch, Meshd, Usage};
use super::protocol::{Command, FleetConfig, FleetStats, Kind, Nack, Probe, Report, now_us};
use super::report::{Change, Disconnect, LoadReport, PolicyChange, Spread, Sync};
use super::{Args, Source, fleet};

/// How long the last proxy may take to receive one change.
const CHANGE_LIMIT: Duration = Duration::from_secs(60);
/// After a disconnect, meshd's memory is read every so often until it has
/// not fallen for a while.
const SETTLE_POLL: Duration = Duration::from_millis(500);
const SETTLED_AFTER: Duration = Duration::from_secs(3);
/// How long after the last proxy synced meshd's memory and CPU are read.
const SYNC_SETTLE: Duration = Duration::from_millis(500);
/// A sync that makes no progress for this long has stalled.
const SYNC_STALL: Duration = Duration::from_secs(120);
/// How long fleets and meshd get to answer a command or close streams.
const COMMAND_LIMIT: Duration = Duration::from_secs(30);
const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// A client process using this much of a core over a phase is the limit.
const SATURATED: f64 = 0.9;
/// Stream failures whose messages are kept.
const ERRORS_KEPT: usize = 10;

/// Runs the tool (or, with `--worker`, one of its worker processes).
pub fn main(args: Args) -> std::process::ExitCode {
    if args.worker {
        return match fleet::serve_stdio() {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("meshd-load worker: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    match run(args) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("meshd-load: error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

/// Runs the whole measurement; `Ok(true)` when every proxy synced every
/// time and every change reached every proxy.
pub fn run(args: Args) -> anyhow::Result<bool> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut c = Coordinator::setup(args).await?;
        let outcome = c.phases().await;
        c.finish(outcome).await
    })
}

/// What has been heard from the fleets.
#[derive(Default)]
struct Tally {
    /// This connection of the fleet: per proxy, when it synced.
    synced_at: Vec<Option<u64>>,
    synced: usize,
    /// This connection: proxies whose stream failed before they synced.
    failed_unsynced: usize,
    /// Every failure of the run.
    failures: usize,
    errors: Vec<String>,
    /// Answers to the command in flight, per kind of answer.
    prepared: usize,
    probe_set: usize,
    expected: usize,
    disconnected: usize,
    closed: usize,
    stats: Vec<FleetStats>,
    /// The probe being watched, and the receipts for it.
    probe: u32,
    receipts: Vec<u64>,
    fatal: Option<String>,
    /// When anything last moved.
    last_progress: Option<Instant>,
}

impl Tally {
    fn new_connection(&mut self, proxies: usize) {
        self.synced_at = vec![None; proxies];
        self.synced = 0;
        self.failed_unsynced = 0;
    }

    fn apply(&mut self, report: Report) {
        self.last_progress = Some(Instant::now());
        match report {
            Report::Prepared { .. } => self.prepared += 1,
            Report::Synced { proxy, at_us } => {
                if let Some(slot @ None) = self.synced_at.get_mut(proxy as usize) {
                    *slot = Some(at_us);
                    self.synced += 1;
                }
            }
            Report::Failed { proxy, error } => {
                self.failures += 1;
                if self
                    .synced_at
                    .get(proxy as usize)
                    .is_some_and(|s| s.is_none())
                {
                    self.failed_unsynced += 1;
                }
                if self.errors.len() < ERRORS_KEPT {
                    self.errors.push(format!("proxy {proxy}: {error}"));
                }
            }
            Report::ProbeSet { expected, .. } => {
                self.probe_set += 1;
                self.expected += expected as usize;
            }
            Report::Receipt { probe, at_us, .. } => {
                if probe == self.probe {
                    self.receipts.push(at_us);
                }
            }
            Report::Stats(stats) => self.stats.push(stats),
            Report::Disconnected { proxies } => {
                self.disconnected += 1;
                self.closed += proxies as usize;
            }
            Report::Fatal { error } => self.fatal = Some(error),
        }
    }
}

/// Where a fleet runs.
enum FleetHandle {
    Thread(mpsc::UnboundedSender<Command>),
    Process {
        stdin: tokio::process::ChildStdin,
        child: Box<tokio::process::Child>,
    },
}

struct Coordinator {
    args: Args,
    mesh: Mesh,
    /// The stand-in API server with `--source kubernetes`.
    api: Option<ApiServer>,
    meshd: Meshd,
    fleets: Vec<FleetHandle>,
    reports: mpsc::UnboundedReceiver<Report>,
    tally: Tally,
    report: LoadReport,
    started: Instant,
    deadline: Instant,
    interrupted: Arc<AtomicBool>,
    next_probe: u32,
    /// Receipts' latencies over all endpoint changes / service additions.
    endpoint_latencies: Vec<f64>,
    add_latencies: Vec<f64>,
    _work: Option<tempfile::TempDir>,
}

#[derive(Clone, Copy)]
enum ProbeKind {
    Endpoints,
    Service,
}

/// Why the phases stopped early.
enum Stop {
    TimedOut(String),
    Failed(anyhow::Error),
}

impl From<Stop> for anyhow::Error {
    fn from(stop: Stop) -> Self {
        match stop {
            Stop::TimedOut(why) => anyhow::anyhow!(why),
            Stop::Failed(e) => e,
        }
    }
}

impl Coordinator {
    async fn setup(args: Args) -> anyhow::Result<Coordinator> {
        let started = Instant::now();
        let deadline = started + Duration::from_secs(args.timeout);
        if args.processes == 0 {
            bail!("--processes must be at least 1");
        }
        if !(0.0..=1.0).contains(&args.nack_fraction) {
            bail!("--nack-fraction must be between 0 and 1");
        }
        raise_open_files(args.proxies / args.processes + args.proxies);

        let (work, work_path) = match &args.work_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                (None, dir.clone())
            }
            None => {
                let dir = tempfile::Builder::new().prefix("meshd-load-").tempdir()?;
                let path = dir.path().to_path_buf();
                (Some(dir), path)
            }
        };
        let registry = args
            .registry
            .clone()
            .unwrap_or_else(|| work_path.join("registry"));
        let ca_dir = args.ca_dir.clone().unwrap_or_else(|| work_path.join("ca"));
        let mesh = Mesh::new(
            &registry,
            args.services,
            args.namespaces,
            args.endpoints_per_service,
            args.service_adds,
            &args.trust_domain,
        )?;
        let specs = mesh.proxies(args.proxies, args.protocol)?;
        progress(
            started,
            &format!(
                "generating {} services in {} namespaces ({} endpoints each) for {}",
                args.services,
                args.namespaces,
                args.endpoints_per_service,
                match args.source {
                    Source::Files => registry.display().to_string(),
                    Source::Kubernetes => "a stand-in API server".to_string(),
                }
            ),
        );
        let (api, kubeconfig) = match args.source {
            Source::Files => {
                mesh.write_all()?;
                (None, None)
            }
            Source::Kubernetes => {
                let (api, kubeconfig) =
                    serve_kubernetes(&mesh, &ca_dir, &work_path, &args.trust_domain)?;
                progress(
                    started,
                    &format!(
                        "serving the mesh from a stand-in API server ({})",
                        kubeconfig.display()
                    ),
                );
                (Some(api), Some(kubeconfig))
            }
        };

        let mut meshd = match args.target {
            Some(xds) => Meshd::existing(xds, args.debug_address, args.meshd_pid),
            None => {
                let binary = match &args.meshd {
                    Some(path) => path.clone(),
                    None => meshd::default_binary()?,
                };
                let xds = match args.xds_address {
                    Some(a) => a,
                    None => meshd::free_loopback_port()?,
                };
                let debug = match args.debug_address {
                    Some(a) => a,
                    None => meshd::free_loopback_port()?,
                };
                let log = work_path.join("meshd.log");
                progress(
                    started,
                    &format!(
                        "starting {} run (xDS {xds}, debug {debug}, log {})",
                        binary.display(),
                        log.display()
                    ),
                );
                Meshd::start(Launch {
                    binary: &binary,
                    registry: &registry,
                    kubeconfig: kubeconfig.as_deref(),
                    ca_dir: &ca_dir,
                    trust_domain: &args.trust_domain,
                    xds,
                    debug,
                    extra_args: &args.meshd_args,
                    log: &log,
                })?
            }
        };
        let ready_by = deadline.min(Instant::now() + Duration::from_secs(120));
        // Nothing else runs yet: blocking this thread while polling is fine.
        meshd.wait_ready(ready_by)?;
        // The registry is loaded; let start-up allocations settle.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let idle = meshd.usage();
        if let Some(u) = idle {
            progress(started, &format!("meshd ready, idle: {}", usage_text(u)));
        }

        let interrupted = Arc::new(AtomicBool::new(false));
        let flag = interrupted.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                flag.store(true, Ordering::Relaxed);
            }
        });

        let (report_tx, reports) = mpsc::unbounded_channel();
        let mut fleets = Vec::new();
        for _ in 0..args.processes.min(args.proxies.max(1)) {
            fleets.push(start_fleet(args.processes > 1, report_tx.clone())?);
        }
        drop(report_tx);

        let nack = args.nack_type.map(|kind| Nack {
            kind,
            fraction: args.nack_fraction,
        });
        let count = fleets.len();
        let mut shares: Vec<Vec<_>> = vec![Vec::new(); count];
        for spec in specs {
            shares[spec.index as usize % count].push(spec);
        }
        let mut c = Coordinator {
            report: LoadReport {
                proxies: args.proxies,
                services: args.services,
                namespaces: args.namespaces,
                endpoints_per_service: args.endpoints_per_service,
                protocol: format!("{:?}", args.protocol).to_lowercase(),
                source: format!("{:?}", args.source).to_lowercase(),
                processes: count,
                idle,
                ..Default::default()
            },
            mesh,
            api,
            fleets,
            reports,
            tally: Tally::default(),
            started,
            deadline,
            interrupted,
            next_probe: 0,
            endpoint_latencies: Vec::new(),
            add_latencies: Vec::new(),
            _work: work,
            meshd,
            args,
        };
        progress(
            started,
            &format!(
                "issuing {} bootstrap identities in {count} fleet{}",
                c.args.proxies,
                if count == 1 { "" } else { "s" }
            ),
        );
        for (i, proxies) in shares.into_iter().enumerate() {
            let config = FleetConfig {
                xds: c.meshd.xds,
                server_name: "localhost".into(),
                ca_dir: ca_dir.clone(),
                trust_domain: c.args.trust_domain.clone(),
                proxies,
                nack,
                connect_concurrency: c.args.connect_concurrency,
            };
            c.send(i, Command::Prepare(config)).await?;
        }
        let prepared = c
            .wait(
                Instant::now() + Duration::from_secs(300),
                "identities",
                |t| t.prepared == count,
            )
            .await;
        if let Some(e) = &c.tally.fatal {
            bail!("a fleet could not start: {e}");
        }
        if !prepared {
            bail!("the fleets did not prepare their identities in time");
        }
        Ok(c)
    }

    async fn phases(&mut self) -> Result<(), Stop> {
        let cold = self.sync("cold sync").await?;
        self.report.syncs.push(cold);
        for n in 0..self.args.changes {
            let change = self.endpoint_change(n).await?;
            self.report.endpoint_changes.push(change);
        }
        for n in 0..self.args.service_adds {
            let add = self.service_add(n).await?;
            self.report.service_adds.push(add);
        }
        for n in 0..self.args.policy_changes {
            let change = self.policy_change(n).await?;
            self.report.policy_changes.push(change);
        }
        let gone = self.disconnect("disconnect").await?;
        self.report.disconnects.push(gone);
        for cycle in 1..=self.args.reconnect_cycles {
            let sync = self.sync(&format!("reconnect {cycle}")).await?;
            self.report.syncs.push(sync);
            let gone = self.disconnect(&format!("disconnect {cycle}")).await?;
            self.report.disconnects.push(gone);
        }
        Ok(())
    }

    /// Connects the whole fleet and waits for every proxy to sync.
    async fn sync(&mut self, label: &str) -> Result<Sync, Stop> {
        let proxies = self.args.proxies;
        self.tally.new_connection(proxies);
        let stats_before = self.stats().await?;
        let before = self.meshd.usage();
        let client_before = self.client_cpu_by_pid();
        let started = Instant::now();
        let t0 = now_us();
        self.broadcast(Command::Connect).await?;
        let done = self
            .wait_stalling(SYNC_STALL, label, |t| {
                t.synced + t.failed_unsynced >= proxies
            })
            .await;
        let tag = if self.report.syncs.is_empty() {
            "sync"
        } else {
            "reconnect"
        };
        let client_cpu_ms = self.check_client(label, tag, &client_before, started);
        // The last proxies' ACKs are still on their way: meshd's cost of the
        // sync includes handling them.
        tokio::time::sleep_until((Instant::now() + SYNC_SETTLE).min(self.deadline).into()).await;
        let after = self.meshd.usage();
        let stats_after = self.stats().await?;
        // Every proxy stays connected while the allocator gives back what
        // the sync used only in passing (response chunks, handshakes).
        let settled = self
            .settle(Instant::now() + Duration::from_secs(self.args.settle_seconds))
            .await;
        let synced: Vec<f64> = self
            .tally
            .synced_at
            .iter()
            .flatten()
            .map(|&at| at.saturating_sub(t0) as f64 / 1000.0)
            .collect();
        let meshd_cpu_ms = cpu_between(before, after);
        self.check_machine(label, tag, client_cpu_ms, meshd_cpu_ms, started);
        let count = synced.len();
        let result = Sync {
            proxies,
            synced: count,
            failed: proxies - count,
            sync_s: synced.iter().copied().fold(0.0, f64::max) / 1000.0,
            per_proxy: Spread::of(&synced),
            meshd_cpu_ms,
            cpu_ms_per_proxy: if count == 0 {
                0.0
            } else {
                meshd_cpu_ms as f64 / count as f64
            },
            meshd: after,
            settled,
            bytes_per_proxy: Kind::ALL
                .iter()
                .map(|k| {
                    let i = k.index();
                    let bytes = stats_after.bytes[i] - stats_before.bytes[i];
                    (k.label().to_string(), bytes / count.max(1) as u64)
                })
                .collect(),
            client_cpu_ms,
        };
        let bytes: Vec<String> = result
            .bytes_per_proxy
            .iter()
            .map(|(k, b)| format!("{k} {:.0} KiB", *b as f64 / 1024.0))
            .collect();
        progress(
            self.started,
            &format!(
                "{label}: {count}/{proxies} synced in {:.1} s (per proxy p50 {} ms, p99 {} ms); meshd CPU {} ms ({:.2} ms per proxy), {}, settled RSS {}; per proxy {}",
                result.sync_s,
                result.per_proxy.map_or(0.0, |s| s.p50_ms).round(),
                result.per_proxy.map_or(0.0, |s| s.p99_ms).round(),
                meshd_cpu_ms,
                result.cpu_ms_per_proxy,
                after.map_or("no /proc figures".to_string(), usage_text),
                settled.map_or("-".to_string(), |u| format!(
                    "{:.0} MiB",
                    u.rss_kib as f64 / 1024.0
                )),
                bytes.join(", ")
            ),
        );
        if !done {
            self.report.syncs.push(result);
            return Err(self.stopped(label));
        }
        Ok(result)
    }

    /// Turns one endpoint ready or not ready and waits for every proxy to
    /// receive the new load assignment.
    async fn endpoint_change(&mut self, n: usize) -> Result<Change, Stop> {
        let services = self.mesh.services;
        // A stride through the services: consecutive changes touch
        // different services and namespaces.
        let service = (1 + n * 37) % services;
        let endpoint = n % self.mesh.endpoints;
        self.mesh.flip(service, endpoint);
        let ready = self.mesh.ready_count(service) as u32;
        let cluster = self.mesh.cluster(service);
        let id = self.new_probe_id();
        let probe = Probe::Endpoints {
            id,
            cluster: cluster.clone(),
            ready,
        };
        let label = format!(
            "endpoint change {}/{}: {} endpoint {endpoint} {}",
            n + 1,
            self.args.changes,
            Mesh::service_name(service),
            if self.mesh.ready_count(service) < self.mesh.endpoints {
                "not ready"
            } else {
                "ready"
            }
        );
        let (change, latencies) = self.watch_change(probe, service, cluster, &label).await?;
        self.endpoint_latencies.extend(latencies);
        Ok(change)
    }

    /// Adds a service and waits for every proxy to hold all of it.
    async fn service_add(&mut self, n: usize) -> Result<Change, Stop> {
        let service = self.mesh.added_service(n);
        let cluster = self.mesh.cluster(service);
        let port = Mesh::port_of(service).port;
        let id = self.new_probe_id();
        let probe = Probe::Service {
            id,
            cluster: cluster.clone(),
            ready: self.mesh.endpoints as u32,
            vip: Mesh::vip(service).to_string(),
            port: port.into(),
            domain: format!("{}:{port}", self.mesh.fqdn(service)),
        };
        let label = format!(
            "service add {}/{}: {}",
            n + 1,
            self.args.service_adds,
            Mesh::service_name(service)
        );
        let (change, latencies) = self.watch_change(probe, service, cluster, &label).await?;
        self.add_latencies.extend(latencies);
        Ok(change)
    }

    /// Gives one service an allow rule and counts what the fleet receives:
    /// the proxies of the service's pods a new inbound listener each, every
    /// other proxy nothing.
    async fn policy_change(&mut self, n: usize) -> Result<PolicyChange, Stop> {
        // A service with proxies among its pods (proxy j is a pod of
        // service j % services).
        let with_proxies = self.mesh.services.min(self.args.proxies).max(1);
        let service = (3 + n * 41) % with_proxies;
        let covered = self.mesh.proxies_of(service, self.args.proxies);
        let namespace = self.mesh.namespace_of(service);
        self.mesh
            .set_allow(service, format!("{namespace}/policy-caller-{n}"));
        let label = format!(
            "policy change {}/{}: {} allows {namespace}/policy-caller-{n}",
            n + 1,
            self.args.policy_changes,
            Mesh::service_name(service)
        );
        let before_stats = self.stats().await?;
        let before = self.meshd.usage();
        let written = Instant::now();
        self.publish(service).map_err(Stop::Failed)?;
        let until = (written + CHANGE_LIMIT).min(self.deadline);
        let lds = Kind::Lds.index();
        let mut reached_ms = None;
        while Instant::now() < until {
            let now = self.stats().await?;
            if now.responses[lds] - before_stats.responses[lds] >= covered as u64 {
                reached_ms = Some(written.elapsed().as_secs_f64() * 1000.0);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Anything else the change sets off arrives within the interval.
        let interval = Duration::from_millis(self.args.change_interval_ms);
        tokio::time::sleep_until((written + interval).min(self.deadline).into()).await;
        let after_stats = self.stats().await?;
        let after = self.meshd.usage();
        let change = PolicyChange {
            service: Mesh::service_name(service),
            covered,
            responses: Kind::ALL
                .iter()
                .map(|k| {
                    let i = k.index();
                    let got = after_stats.responses[i] - before_stats.responses[i];
                    (k.label().to_string(), got)
                })
                .collect(),
            reached_ms,
            meshd_cpu_ms: cpu_between(before, after),
        };
        progress(
            self.started,
            &format!(
                "{label}: {covered} proxies covered, {} listener responses{}, {} responses beyond one listener per covered proxy; meshd CPU {} ms",
                change.listeners(),
                reached_ms.map_or(String::new(), |ms| format!(" ({covered} after {ms:.0} ms)")),
                change.beyond(),
                change.meshd_cpu_ms
            ),
        );
        if reached_ms.is_none() {
            return Err(self.stopped(&label));
        }
        Ok(change)
    }

    /// Sets the probe, writes the service's file, and collects receipts
    /// until every proxy has it (or the limit passes); then keeps the
    /// change interval, so meshd's CPU time covers all the change cost.
    async fn watch_change(
        &mut self,
        probe: Probe,
        service: usize,
        cluster: String,
        label: &str,
    ) -> Result<(Change, Vec<f64>), Stop> {
        let probe_kind = match probe {
            Probe::Endpoints { .. } => ProbeKind::Endpoints,
            Probe::Service { .. } => ProbeKind::Service,
        };
        let expected = self.set_probe(Some(probe)).await?;
        let before = self.meshd.usage();
        let client_before = self.client_cpu_by_pid();
        let written_at = now_us();
        let written = Instant::now();
        self.publish(service).map_err(Stop::Failed)?;
        let done = self
            .wait(written + CHANGE_LIMIT, label, move |t| {
                t.receipts.len() >= expected
            })
            .await;
        let tag = match probe_kind {
            ProbeKind::Endpoints => "eds",
            ProbeKind::Service => "add",
        };
        let client_cpu_ms = self.check_client(label, tag, &client_before, written);
        let meshd_by_then = cpu_between(before, self.meshd.usage());
        self.check_machine(label, tag, client_cpu_ms, meshd_by_then, written);
        let interval = Duration::from_millis(self.args.change_interval_ms);
        let rest = (written + interval).min(self.deadline);
        tokio::time::sleep_until(rest.into()).await;
        let after = self.meshd.usage();
        let latencies: Vec<f64> = self
            .tally
            .receipts
            .iter()
            .map(|&at| at.saturating_sub(written_at) as f64 / 1000.0)
            .collect();
        let change = Change {
            service: Mesh::service_name(service),
            cluster,
            expected,
            received: latencies.len(),
            latency: Spread::of(&latencies),
            meshd_cpu_ms: cpu_between(before, after),
            client_cpu_ms,
        };
        progress(
            self.started,
            &format!(
                "{label}: {}/{} proxies, p50 {} ms, p99 {} ms, max {} ms; meshd CPU {} ms, client CPU {} ms",
                change.received,
                change.expected,
                change.latency.map_or(0.0, |s| s.p50_ms).round(),
                change.latency.map_or(0.0, |s| s.p99_ms).round(),
                change.latency.map_or(0.0, |s| s.max_ms).round(),
                change.meshd_cpu_ms,
                change.client_cpu_ms
            ),
        );
        self.set_probe(None).await?;
        if !done {
            return Err(self.stopped(label));
        }
        Ok((change, latencies))
    }

    /// Puts the service as it now is at the source: its file rewritten, or
    /// its changed objects sent to the API server's watches.
    fn publish(&self, service: usize) -> anyhow::Result<()> {
        match &self.api {
            Some(api) => api.apply(self.mesh.service_objects(service)?).map(|_| ()),
            None => self.mesh.write_service(service),
        }
    }

    /// Closes every stream, waits for meshd to see them gone, and reads its
    /// memory once it has had time to free what it frees.
    async fn disconnect(&mut self, label: &str) -> Result<Disconnect, Stop> {
        self.tally.disconnected = 0;
        self.tally.closed = 0;
        self.broadcast(Command::Disconnect).await?;
        let count = self.fleets.len();
        if !self
            .wait(Instant::now() + COMMAND_LIMIT, label, |t| {
                t.disconnected == count
            })
            .await
        {
            return Err(self.stopped(label));
        }
        let until = Instant::now() + COMMAND_LIMIT;
        let mut streams_left = self.meshd.metric("meshd_xds_connected_proxies");
        while streams_left.is_some_and(|n| n > 0.0) && Instant::now() < until.min(self.deadline) {
            tokio::time::sleep(Duration::from_millis(200)).await;
            streams_left = self.meshd.metric("meshd_xds_connected_proxies");
        }
        let closed = Instant::now();
        let meshd = self
            .settle(closed + Duration::from_secs(self.args.settle_seconds))
            .await;
        let result = Disconnect {
            proxies_closed: self.tally.closed,
            streams_left,
            meshd,
            settled_s: closed.elapsed().as_secs_f64(),
        };
        progress(
            self.started,
            &format!(
                "{label}: {} streams closed{}; meshd after {:.1} s: {}",
                result.proxies_closed,
                streams_left.map_or(String::new(), |n| format!(", meshd counts {n} open")),
                result.settled_s,
                result.meshd.map_or("-".to_string(), usage_text)
            ),
        );
        Ok(result)
    }

    /// meshd's usage once its memory has fallen and then stopped falling
    /// (an allocator gives memory back some seconds after it is freed), or
    /// at `until`. Memory that has not begun to fall is not settled:
    /// jemalloc starts returning a disconnected fleet's pages only seconds
    /// later, so a reading taken then would count them as kept.
    async fn settle(&self, until: Instant) -> Option<Usage> {
        let until = until.min(self.deadline);
        let mut usage = self.meshd.usage();
        let mut lowest = usage.map_or(0, |u| u.rss_kib);
        let mut last_drop: Option<Instant> = None;
        while Instant::now() + SETTLE_POLL <= until
            && last_drop.is_none_or(|at| at.elapsed() < SETTLED_AFTER)
        {
            tokio::time::sleep(SETTLE_POLL).await;
            usage = self.meshd.usage();
            let rss = usage.map_or(0, |u| u.rss_kib);
            // Less than 1 % is noise, not memory being given back.
            if rss < lowest - lowest / 100 {
                lowest = rss;
                last_drop = Some(Instant::now());
            }
        }
        usage
    }

    fn new_probe_id(&mut self) -> u32 {
        self.next_probe += 1;
        self.next_probe
    }

    /// Sets (or clears) the probe in every fleet; returns how many proxies
    /// should report it.
    async fn set_probe(&mut self, probe: Option<Probe>) -> Result<usize, Stop> {
        self.tally.probe = probe.as_ref().map_or(0, Probe::id);
        self.tally.receipts.clear();
        self.tally.probe_set = 0;
        self.tally.expected = 0;
        self.broadcast(Command::Probe { probe }).await?;
        let count = self.fleets.len();
        if !self
            .wait(Instant::now() + COMMAND_LIMIT, "probe", |t| {
                t.probe_set == count
            })
            .await
        {
            return Err(self.stopped("setting a probe"));
        }
        Ok(self.tally.expected)
    }

    /// Every fleet's counters, summed.
    async fn stats(&mut self) -> Result<FleetStats, Stop> {
        self.tally.stats.clear();
        self.broadcast(Command::Stats).await?;
        let count = self.fleets.len();
        if !self
            .wait(Instant::now() + COMMAND_LIMIT, "stats", |t| {
                t.stats.len() == count
            })
            .await
        {
            return Err(self.stopped("collecting statistics"));
        }
        let mut sum = FleetStats::default();
        for s in &self.tally.stats {
            for i in 0..5 {
                sum.bytes[i] += s.bytes[i];
                sum.responses[i] += s.responses[i];
            }
            sum.nacks_sent += s.nacks_sent;
            for i in 0..5 {
                sum.unchanged[i] += s.unchanged[i];
            }
            sum.live += s.live;
        }
        Ok(sum)
    }

    /// Applies reports until `done` holds, `until` or the run's deadline
    /// passes, or the run is interrupted; prints progress meanwhile.
    async fn wait(&mut self, until: Instant, what: &str, done: impl Fn(&Tally) -> bool) -> bool {
        self.wait_inner(until, None, what, done).await
    }

    /// [`Self::wait`] with no limit but the run's, as long as something
    /// happens at least every `stall`.
    async fn wait_stalling(
        &mut self,
        stall: Duration,
        what: &str,
        done: impl Fn(&Tally) -> bool,
    ) -> bool {
        self.wait_inner(self.deadline, Some(stall), what, done)
            .await
    }

    async fn wait_inner(
        &mut self,
        until: Instant,
        stall: Option<Duration>,
        what: &str,
        done: impl Fn(&Tally) -> bool,
    ) -> bool {
        let until = until.min(self.deadline);
        let mut next_progress = Instant::now() + PROGRESS_EVERY;
        let mut last_move = Instant::now();
        loop {
            if done(&self.tally) {
                return true;
            }
            let now = Instant::now();
            if self.tally.fatal.is_some()
                || self.interrupted.load(Ordering::Relaxed)
                || now >= until
                || stall.is_some_and(|s| now >= last_move + s)
            {
                return false;
            }
            if now >= next_progress {
                if let Err(e) = self.meshd.check_alive() {
                    self.tally.fatal = Some(format!("{e:#}"));
                    return false;
                }
                self.progress_line(what);
                next_progress = now + PROGRESS_EVERY;
            }
            let wake = until.min(next_progress);
            match tokio::time::timeout_at(wake.into(), self.reports.recv()).await {
                Ok(Some(report)) => {
                    self.tally.apply(report);
                    while let Ok(report) = self.reports.try_recv() {
                        self.tally.apply(report);
                    }
                    last_move = Instant::now();
                }
                Ok(None) => {
                    self.tally.fatal = Some("every fleet has gone".into());
                    return false;
                }
                Err(_) => {}
            }
        }
    }

    fn progress_line(&self, what: &str) {
        let t = &self.tally;
        let mut line = format!(
            "{what}: synced {}/{}, failed {}",
            t.synced, self.args.proxies, t.failures
        );
        if t.probe != 0 {
            line.push_str(&format!(", received {}/{}", t.receipts.len(), t.expected));
        }
        if let Some(u) = self.meshd.usage() {
            line.push_str(&format!("; meshd {}", usage_text(u)));
        }
        progress(self.started, &line);
    }

    /// Why a phase did not finish, as a stop of the run.
    fn stopped(&self, what: &str) -> Stop {
        if let Some(e) = &self.tally.fatal {
            Stop::Failed(anyhow::anyhow!("{what}: {e}"))
        } else if self.interrupted.load(Ordering::Relaxed) {
            Stop::TimedOut(format!("{what}: interrupted"))
        } else if Instant::now() >= self.deadline {
            Stop::TimedOut(format!("{what}: --timeout {} s reached", self.args.timeout))
        } else {
            Stop::TimedOut(format!("{what}: did not finish in time"))
        }
    }

    async fn send(&mut self, fleet: usize, command: Command) -> Result<(), Stop> {
        let sent = match &mut self.fleets[fleet] {
            FleetHandle::Thread(tx) => tx
                .send(command)
                .map_err(|_| anyhow::anyhow!("fleet {fleet} has stopped")),
            FleetHandle::Process { stdin, .. } => {
                let mut line = serde_json::to_vec(&command).map_err(|e| Stop::Failed(e.into()))?;
                line.push(b'\n');
                let write = async {
                    stdin.write_all(&line).await?;
                    stdin.flush().await
                };
                write
                    .await
                    .with_context(|| format!("worker process {fleet} has stopped"))
            }
        };
        sent.map_err(Stop::Failed)
    }

    async fn broadcast(&mut self, command: Command) -> Result<(), Stop> {
        for i in 0..self.fleets.len() {
            self.send(i, command.clone()).await?;
        }
        Ok(())
    }

    /// The CPU time of each client process: this one and its workers.
    fn client_cpu_by_pid(&self) -> Vec<(u32, u64)> {
        let mut pids = vec![std::process::id()];
        for f in &self.fleets {
            if let FleetHandle::Process { child, .. } = f
                && let Some(pid) = child.id()
            {
                pids.push(pid);
            }
        }
        pids.into_iter()
            .filter_map(|pid| Some((pid, meshd::cpu_ms(pid)?)))
            .collect()
    }

    /// The client's CPU time since `before`; says so when a client process
    /// used (nearly) a whole core since `started`: a fleet is
    /// single-threaded, so then the client was the limit.
    fn check_client(
        &mut self,
        phase: &str,
        tag: &str,
        before: &[(u32, u64)],
        started: Instant,
    ) -> u64 {
        let wall = started.elapsed().as_millis().max(1) as f64;
        let mut total = 0;
        let mut saturated = Vec::new();
        for &(pid, cpu_before) in before {
            let Some(now) = meshd::cpu_ms(pid) else {
                continue;
            };
            let used = now.saturating_sub(cpu_before);
            total += used;
            let cores = used as f64 / wall;
            // CPU time comes in 10 ms ticks: too short a window says nothing.
            if cores >= SATURATED && wall >= 200.0 {
                saturated.push(format!("pid {pid}: {cores:.2} cores"));
            }
        }
        if !saturated.is_empty() {
            eprintln!(
                "meshd-load: warning: the client saturated a core during {phase} ({}): these figures are limited by the client; run with --processes {}",
                saturated.join(", "),
                self.fleets.len() * 2
            );
            if !self.report.client_saturated.iter().any(|t| t == tag) {
                self.report.client_saturated.push(tag.to_string());
            }
        }
        total
    }

    /// Says so when the client and meshd together kept every core of the
    /// machine busy: then meshd had less than it could have used, and the
    /// client's share is what to take off (another machine, or fewer
    /// proxies per machine).
    fn check_machine(
        &mut self,
        phase: &str,
        tag: &str,
        client_ms: u64,
        meshd_ms: u64,
        started: Instant,
    ) {
        let wall = started.elapsed().as_millis().max(1) as f64;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let client = client_ms as f64 / wall;
        let meshd = meshd_ms as f64 / wall;
        if wall >= 200.0 && client + meshd >= SATURATED * cores {
            eprintln!(
                "meshd-load: warning: the machine's {cores} cores were busy during {phase}: the client used {client:.2} of them, meshd {meshd:.2}"
            );
            if !self.report.machine_saturated.iter().any(|t| t == tag) {
                self.report.machine_saturated.push(tag.to_string());
            }
        }
    }

    async fn finish(mut self, outcome: Result<(), Stop>) -> anyhow::Result<bool> {
        let mut error = None;
        match outcome {
            Ok(()) => {}
            Err(Stop::TimedOut(why)) => {
                eprintln!("meshd-load: stopped early: {why}");
                self.report.timed_out = true;
            }
            Err(Stop::Failed(e)) => {
                eprintln!("meshd-load: stopped early: {e:#}");
                error = Some(format!("{e:#}"));
            }
        }
        if let Ok(stats) = self.stats().await {
            self.report.nacks_sent = stats.nacks_sent;
            self.report.resent_unchanged = Kind::ALL
                .iter()
                .map(|k| (k.label().to_string(), stats.unchanged[k.index()]))
                .collect();
        }
        // Before the workers exit and their /proc entries go.
        self.report.client_cpu_ms = self.client_cpu_by_pid().iter().map(|(_, cpu)| cpu).sum();
        let _ = self.broadcast(Command::Exit).await;
        for fleet in std::mem::take(&mut self.fleets) {
            if let FleetHandle::Process { stdin, mut child } = fleet {
                drop(stdin);
                if tokio::time::timeout(COMMAND_LIMIT, child.wait())
                    .await
                    .is_err()
                {
                    let _ = child.kill().await;
                }
            }
        }
        self.meshd.stop();
        self.report.endpoint_latency = Spread::of(&self.endpoint_latencies);
        self.report.service_add_latency = Spread::of(&self.add_latencies);
        self.report.failed = self.tally.failures
            + self
                .report
                .syncs
                .iter()
                .map(|s| s.proxies - s.synced)
                .sum::<usize>();
        self.report.errors = self.tally.errors.clone();
        if let Some(e) = error {
            self.report.errors.push(e);
        }
        self.report.complete = self.report.is_complete() && self.report.errors.is_empty();
        for e in &self.report.errors {
            eprintln!("meshd-load: {e}");
        }
        println!("{}", self.report.summary());
        if let Some(path) = &self.args.json {
            let json = serde_json::to_string_pretty(&self.report)?;
            if path == &PathBuf::from("-") {
                println!("{json}");
            } else {
                std::fs::write(path, json)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
        Ok(self.report.complete)
    }
}

/// Starts a fleet: on a thread here, or as a worker process.
fn start_fleet(
    as_process: bool,
    reports: mpsc::UnboundedSender<Report>,
) -> anyhow::Result<FleetHandle> {
    if !as_process {
        let (commands, _thread) = fleet::spawn_thread(reports)?;
        return Ok(FleetHandle::Thread(commands));
    }
    let exe = std::env::current_exe().context("locating this executable")?;
    let mut child = tokio::process::Command::new(exe)
        .arg("--worker")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting a worker process")?;
    let stdin = child.stdin.take().context("the worker's stdin")?;
    let stdout = child.stdout.take().context("the worker's stdout")?;
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        loop {
            let report = match lines.next_line().await {
                Ok(Some(line)) => {
                    serde_json::from_str::<Report>(&line).unwrap_or_else(|e| Report::Fatal {
                        error: format!("unreadable report from a worker: {e}"),
                    })
                }
                Ok(None) => break,
                Err(e) => Report::Fatal {
                    error: format!("reading a worker's reports: {e}"),
                },
            };
            if reports.send(report).is_err() {
                break;
            }
        }
    });
    Ok(FleetHandle::Process {
        stdin,
        child: Box::new(child),
    })
}

/// Raises this process's open-file limit to its hard limit (children,
/// meshd among them, inherit it): thousands of connections need more than
/// the usual 1024.
/// The mesh in a stand-in API server, with the mesh CA in the Secret
/// `meshd run --kubernetes` reads (`meshd-system/meshd-ca`, the layout of
/// `--ca-dir`), so the fleet issues bootstrap identities from `ca_dir` as
/// with a file registry. Returns the server and a kubeconfig naming it.
fn serve_kubernetes(
    mesh: &Mesh,
    ca_dir: &std::path::Path,
    work: &std::path::Path,
    trust_domain: &str,
) -> anyhow::Result<(ApiServer, std::path::PathBuf)> {
    use base64::Engine;
    let api = ApiServer::new();
    api.apply(mesh.namespace_objects())?;
    for service in 0..mesh.services {
        api.apply(mesh.service_objects(service)?)?;
    }
    meshd_ca::Authority::load_or_generate(trust_domain, Arc::new(meshd_ca::DirStore::new(ca_dir)))
        .with_context(|| format!("creating the mesh CA in {}", ca_dir.display()))?;
    let mut data = serde_json::Map::new();
    for key in ["root-cert.pem", "root-key.pem"] {
        let path = ca_dir.join(key);
        let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        data.insert(
            key.into(),
            base64::engine::general_purpose::STANDARD
                .encode(text)
                .into(),
        );
    }
    api.insert(
        "/api/v1/namespaces/meshd-system/secrets/meshd-ca",
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {"name": "meshd-ca", "namespace": "meshd-system"},
            "data": data,
        }),
    );
    let address = api.serve()?;
    let kubeconfig = work.join("kubeconfig");
    std::fs::write(&kubeconfig, apiserver::kubeconfig(address, "meshd-system"))
        .with_context(|| format!("writing {}", kubeconfig.display()))?;
    Ok((api, kubeconfig))
}

fn raise_open_files(needed: usize) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_err() {
        eprintln!("meshd-load: warning: could not raise the open-file limit from {soft}");
    }
    let wanted = needed as u64 + 1024;
    if hard < wanted {
        eprintln!(
            "meshd-load: warning: the open-file limit is {hard}, and this run needs about {wanted} (ulimit -Hn)"
        );
    }
}

fn cpu_between(before: Option<Usage>, after: Option<Usage>) -> u64 {
    match (before, after) {
        (Some(b), Some(a)) => a.cpu_ms.saturating_sub(b.cpu_ms),
        _ => 0,
    }
}

fn usage_text(u: Usage) -> String {
    format!(
        "RSS {:.0} MiB (peak {:.0} MiB), CPU {:.1} s",
        u.rss_kib as f64 / 1024.0,
        u.peak_kib as f64 / 1024.0,
        u.cpu_ms as f64 / 1000.0
    )
}

fn progress(started: Instant, line: &str) {
    eprintln!("[{:7.1}s] {line}", started.elapsed().as_secs_f64());
}
