//! A fleet: a share of the simulated proxies on one thread, driven by the
//! coordinator's commands.
//!
//! ```text
//! commands ──> serve ──Prepare──> identities issued from the CA directory, one endpoint per proxy
//!                    ──Connect──> a task per proxy (xds::run), reporting Synced / Failed / Receipt
//!                    ──Probe────> the watch every proxy checks on each response
//! reports <── proxies and serve
//! ```
//!
//! The coordinator runs one fleet on a thread of its own, or (with
//! `--processes`) one per worker process, which is this same executable
//! started with `--worker`, speaking JSON lines on stdin and stdout. A
//! fleet runs on a single-threaded runtime, so its process's CPU time says
//! plainly when the client, rather than meshd, is the limit.

use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use meshd_ca::{Authority, CaStore, DirStore, SpiffeId};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use super::protocol::{Command, FleetConfig, FleetStats, Probe, ProxySpec, Report, now_us};
use super::xds::{self, ActiveProbe, Ctx, Names, ServiceProbe};

/// How long the proxies' bootstrap certificates last: longer than any run.
const BOOTSTRAP_CERT_TTL: Duration = Duration::from_secs(24 * 3600);

struct Fleet {
    ctx: Arc<Ctx>,
    probe: watch::Sender<Option<Arc<ActiveProbe>>>,
    proxies: Vec<(ProxySpec, Endpoint)>,
    tasks: JoinSet<()>,
}

impl Fleet {
    /// Issues each proxy's bootstrap identity, as `meshd bootstrap
    /// --issue-from-ca-dir` does, and prepares its endpoint.
    fn prepare(
        config: FleetConfig,
        reports: mpsc::UnboundedSender<Report>,
    ) -> anyhow::Result<Fleet> {
        let store = DirStore::new(&config.ca_dir);
        // Generating a root here would give the proxies an identity meshd
        // does not trust: the CA must be the one meshd created.
        if store
            .load()
            .with_context(|| format!("reading the mesh CA in {}", config.ca_dir.display()))?
            .is_none()
        {
            bail!(
                "no mesh CA in {}: point --ca-dir at the directory meshd run uses",
                config.ca_dir.display()
            );
        }
        let ca = Authority::load_or_generate(&config.trust_domain, Arc::new(store))
            .with_context(|| format!("loading the mesh CA from {}", config.ca_dir.display()))?;
        let roots = Certificate::from_pem(ca.trust_bundle_pem());
        let mut proxies = Vec::with_capacity(config.proxies.len());
        for spec in config.proxies {
            let id = SpiffeId::new(&config.trust_domain, &spec.namespace, &spec.service_account);
            let (issued, key) = ca
                .issue_with_key(&id, BOOTSTRAP_CERT_TTL)
                .with_context(|| format!("issuing the bootstrap identity {id}"))?;
            let tls = ClientTlsConfig::new()
                .ca_certificate(roots.clone())
                .domain_name(config.server_name.clone())
                .identity(Identity::from_pem(issued.chain_pem, key.expose_pem()));
            proxies.push((spec, xds::endpoint(config.xds, tls)?));
        }
        let (probe, probe_rx) = watch::channel(None);
        let ctx = Ctx {
            names: Mutex::new(Names::default()),
            probe: probe_rx,
            nack: config.nack,
            reports,
            connect: Semaphore::new(config.connect_concurrency.max(1)),
            bytes: Default::default(),
            responses: Default::default(),
            nacks_sent: AtomicU64::new(0),
            unchanged: Default::default(),
            live: AtomicU32::new(0),
        };
        Ok(Fleet {
            ctx: Arc::new(ctx),
            probe,
            proxies,
            tasks: JoinSet::new(),
        })
    }

    async fn handle(&mut self, command: Command) {
        match command {
            Command::Connect => {
                for (spec, endpoint) in &self.proxies {
                    self.tasks
                        .spawn(xds::run(self.ctx.clone(), spec.clone(), endpoint.clone()));
                }
            }
            Command::Probe { probe } => {
                let id = probe.as_ref().map_or(0, Probe::id);
                let active = probe.map(|p| Arc::new(self.activate(p)));
                self.probe.send_replace(active);
                // Read on the thread every proxy runs on: no proxy syncs
                // between the probe being set and this count.
                let expected = self.ctx.live.load(Ordering::Relaxed);
                self.report(Report::ProbeSet { id, expected });
            }
            Command::Stats => {
                let load = |a: &[AtomicU64; 5]| a.each_ref().map(|v| v.load(Ordering::Relaxed));
                self.report(Report::Stats(FleetStats {
                    bytes: load(&self.ctx.bytes),
                    responses: load(&self.ctx.responses),
                    nacks_sent: self.ctx.nacks_sent.load(Ordering::Relaxed),
                    unchanged: load(&self.ctx.unchanged),
                    live: self.ctx.live.load(Ordering::Relaxed),
                }));
            }
            Command::Disconnect => {
                let proxies = self.disconnect().await;
                self.report(Report::Disconnected { proxies });
            }
            Command::Prepare(_) => self.report(Report::Fatal {
                error: "the fleet is already prepared".into(),
            }),
            Command::Exit => {}
        }
    }

    fn activate(&self, probe: Probe) -> ActiveProbe {
        let set_at_us = now_us();
        let mut names = self.ctx.names.lock().unwrap_or_else(|p| p.into_inner());
        match probe {
            Probe::Endpoints { id, cluster, ready } => ActiveProbe {
                id,
                set_at_us,
                cluster: names.intern(&cluster),
                ready,
                service: None,
            },
            Probe::Service {
                id,
                cluster,
                ready,
                vip,
                port,
                domain,
            } => ActiveProbe {
                id,
                set_at_us,
                cluster: names.intern(&cluster),
                ready,
                service: Some(ServiceProbe::new(vip, port, &domain)),
            },
        }
    }

    /// Drops every stream and connection, as a fleet of proxies going away
    /// at once; returns how many were open.
    async fn disconnect(&mut self) -> u32 {
        let open = self.tasks.len() as u32;
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        self.ctx.live.store(0, Ordering::Relaxed);
        open
    }

    fn report(&self, report: Report) {
        let _ = self.ctx.reports.send(report);
    }
}

/// Runs a fleet until [`Command::Exit`] or the end of the commands.
pub async fn serve(
    mut commands: mpsc::UnboundedReceiver<Command>,
    reports: mpsc::UnboundedSender<Report>,
) {
    let mut fleet: Option<Fleet> = None;
    while let Some(command) = commands.recv().await {
        match (command, &mut fleet) {
            (Command::Exit, _) => break,
            (Command::Prepare(config), None) => {
                let proxies = config.proxies.len() as u32;
                match Fleet::prepare(config, reports.clone()) {
                    Ok(f) => {
                        fleet = Some(f);
                        let _ = reports.send(Report::Prepared { proxies });
                    }
                    Err(e) => {
                        let _ = reports.send(Report::Fatal {
                            error: format!("{e:#}"),
                        });
                    }
                }
            }
            (command, Some(f)) => f.handle(command).await,
            (command, None) => {
                let _ = reports.send(Report::Fatal {
                    error: format!("{command:?} before the fleet was prepared"),
                });
            }
        }
    }
    if let Some(mut f) = fleet {
        f.disconnect().await;
    }
}

/// Starts a fleet on a thread of its own (with its own single-threaded
/// runtime); returns where to send its commands.
pub fn spawn_thread(
    reports: mpsc::UnboundedSender<Report>,
) -> anyhow::Result<(mpsc::UnboundedSender<Command>, std::thread::JoinHandle<()>)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (commands, rx) = mpsc::unbounded_channel();
    let thread = std::thread::Builder::new()
        .name("fleet".into())
        .spawn(move || runtime.block_on(serve(rx, reports)))?;
    Ok((commands, thread))
}

/// The worker process: commands from stdin, reports to stdout, one JSON
/// object per line. Stops when told to or when stdin closes (the
/// coordinator is gone).
pub fn serve_stdio() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (commands, commands_rx) = mpsc::unbounded_channel();
    let (reports, mut reports_rx) = mpsc::unbounded_channel::<Report>();

    // Plain threads for the pipes: a blocked read or write never stalls
    // the proxies' runtime.
    let fatal = reports.clone();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            match serde_json::from_str::<Command>(&line) {
                Ok(command) => {
                    if commands.send(command).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = fatal.send(Report::Fatal {
                        error: format!("unreadable command from the coordinator: {e}"),
                    });
                }
            }
        }
        let _ = commands.send(Command::Exit);
    });
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        let stdout = std::io::stdout();
        let mut out = std::io::BufWriter::new(stdout.lock());
        while let Some(report) = reports_rx.blocking_recv() {
            write_line(&mut out, &report)?;
            // Whatever else is already waiting goes in the same write.
            while let Ok(report) = reports_rx.try_recv() {
                write_line(&mut out, &report)?;
            }
            out.flush()?;
        }
        Ok(())
    });
    runtime.block_on(serve(commands_rx, reports));
    // Aborted proxy tasks (and their report senders) go with the runtime;
    // then the writer has sent everything and stops.
    drop(runtime);
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("the report writer panicked"))?
        .context("writing reports to stdout")
}

fn write_line(out: &mut impl Write, report: &Report) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, report)?;
    out.write_all(b"\n")
}
