//! `meshd-load`: the real `meshd run` binary under a simulated fleet of
//! proxies, measured from the outside.
//!
//! ```text
//!  coordinator ── generates ──> registry dir (a file per service) <── watches ── meshd run
//!   │  writes changes, reads /proc/<meshd>/{status,stat} and /metrics            ▲
//!   │ commands / reports (in process, or JSON lines over a worker's stdin/stdout) │ mTLS ADS
//!   └─> fleet (one thread, or one per worker process) ── a stream per proxy ──────┘
//! ```
//!
//! Each simulated proxy is a pod of the generated mesh with a bootstrap
//! identity from the mesh CA, on its own mTLS connection with one ADS stream
//! (Delta or State of the World) that subscribes, follows up and ACKs as
//! Envoy does ([`xds`]). The coordinator ([`run`]) drives the phases: a
//! cold sync, endpoint changes, service additions, and the fleet
//! disconnecting and reconnecting, timing each change from the moment it
//! lands in the registry to its receipt at every proxy. Fleets keep per
//! proxy only names, versions and a per-cluster count of ready endpoints,
//! and run single-threaded so that "the client saturated a core" is a
//! clear signal ([`fleet`]).

pub mod apiserver;
pub mod fleet;
pub mod mesh;
pub mod meshd;
pub mod protocol;
pub mod report;
pub mod run;
pub mod xds;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};

pub use protocol::Kind;

/// Which ADS flavour the simulated proxies speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProtocolMix {
    /// Incremental xDS for every proxy.
    Delta,
    /// State of the World for every proxy.
    Sotw,
    /// Half Delta, half State of the World (alternating).
    Mix,
}

/// Where `meshd run` discovers the generated mesh.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Source {
    /// A file registry (`--registry`): a change rewrites one service's file.
    Files,
    /// The Kubernetes API (`--kubernetes`), served by a stand-in API server
    /// on loopback that speaks list and watch: a change is a watch event.
    Kubernetes,
}

/// Simulates a fleet of proxies against the real `meshd run` and reports
/// what it costs: sync time, memory, CPU, and how fast changes arrive.
#[derive(Clone, Debug, Parser)]
#[command(name = "meshd-load", version)]
pub struct Args {
    /// Services in the generated mesh (every tenth a TCP database on 5432,
    /// the others HTTP on port 80).
    #[arg(long, env = "MESHD_LOAD_SERVICES", default_value_t = 1000)]
    pub services: usize,

    /// Namespaces the services are spread over.
    #[arg(long, env = "MESHD_LOAD_NAMESPACES", default_value_t = 20)]
    pub namespaces: usize,

    /// Endpoints (and pods) per service.
    #[arg(long, env = "MESHD_LOAD_ENDPOINTS_PER_SERVICE", default_value_t = 10)]
    pub endpoints_per_service: usize,

    /// Simulated proxies: pods of the mesh, spread over its services (and so
    /// over its namespaces), each with its own connection and ADS stream.
    #[arg(long, env = "MESHD_LOAD_PROXIES", default_value_t = 2000)]
    pub proxies: usize,

    /// The ADS flavour of the proxies.
    #[arg(long, env = "MESHD_LOAD_PROTOCOL", value_enum, default_value = "delta")]
    pub protocol: ProtocolMix,

    /// Where meshd discovers the mesh; changes are timed from the moment
    /// they are at the source (the file written, the watch event sent).
    #[arg(
        long,
        env = "MESHD_LOAD_SOURCE",
        value_enum,
        default_value = "files",
        conflicts_with = "target"
    )]
    pub source: Source,

    /// The meshd binary to start (default: `meshd` next to this executable,
    /// as `cargo build` leaves it in target/<profile>/).
    #[arg(long, env = "MESHD_LOAD_MESHD")]
    pub meshd: Option<PathBuf>,

    /// Extra arguments for `meshd run` (repeat the flag), e.g.
    /// `--meshd-arg=--debounce-ms=50`.
    #[arg(long = "meshd-arg", allow_hyphen_values = true)]
    pub meshd_args: Vec<String>,

    /// Use a meshd that is already running, at this xDS address, instead of
    /// starting one; needs --ca-dir and --registry of that instance (the
    /// mesh is generated into its registry directory), and --debug-address
    /// and --meshd-pid for readiness, memory and CPU figures.
    #[arg(long, env = "MESHD_LOAD_TARGET", requires_all = ["ca_dir", "registry"])]
    pub target: Option<SocketAddr>,

    /// The debug address of the meshd under test (readiness and metrics).
    /// When the tool starts meshd, a free loopback port by default.
    #[arg(long, env = "MESHD_LOAD_DEBUG_ADDRESS")]
    pub debug_address: Option<SocketAddr>,

    /// The xDS address for the meshd the tool starts (default: a free
    /// loopback port).
    #[arg(long, env = "MESHD_LOAD_XDS_ADDRESS", conflicts_with = "target")]
    pub xds_address: Option<SocketAddr>,

    /// The process id of a --target meshd, for its memory and CPU time.
    #[arg(long, env = "MESHD_LOAD_MESHD_PID")]
    pub meshd_pid: Option<u32>,

    /// The mesh CA directory (meshd's --ca-dir), from which every proxy's
    /// bootstrap identity is issued. Default: in the work directory.
    #[arg(long, env = "MESHD_LOAD_CA_DIR")]
    pub ca_dir: Option<PathBuf>,

    /// The registry directory the mesh is generated into (meshd's
    /// --registry). Default: in the work directory.
    #[arg(long, env = "MESHD_LOAD_REGISTRY")]
    pub registry: Option<PathBuf>,

    /// Keep the registry, CA and meshd's log here instead of a temporary
    /// directory that is removed at the end.
    #[arg(long, env = "MESHD_LOAD_WORK_DIR")]
    pub work_dir: Option<PathBuf>,

    /// The mesh's SPIFFE trust domain.
    #[arg(long, env = "MESHD_LOAD_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,

    /// Endpoint changes: each turns one endpoint of one service ready or not
    /// ready, rewriting that service's file.
    #[arg(long, env = "MESHD_LOAD_CHANGES", default_value_t = 20)]
    pub changes: usize,

    /// Time between two changes or service additions, in milliseconds (the
    /// next waits longer when the last proxy is later).
    #[arg(long, env = "MESHD_LOAD_CHANGE_INTERVAL_MS", default_value_t = 1000)]
    pub change_interval_ms: u64,

    /// Authorization policy changes: each sets a `meshd.io/allow` rule on one
    /// service. Only the proxies of that service's pods should receive
    /// anything (their inbound listener); the run reports what the fleet
    /// received, by type.
    #[arg(long, env = "MESHD_LOAD_POLICY_CHANGES", default_value_t = 1)]
    pub policy_changes: usize,

    /// Services added (a new file each: Service, EndpointSlice and pods).
    #[arg(long, env = "MESHD_LOAD_SERVICE_ADDS", default_value_t = 5)]
    pub service_adds: usize,

    /// Times the whole fleet connects and syncs again after disconnecting.
    #[arg(long, env = "MESHD_LOAD_RECONNECT_CYCLES", default_value_t = 5)]
    pub reconnect_cycles: usize,

    /// After the fleet synced (still connected) and after it disconnected,
    /// meshd's memory is read once it has fallen and then not fallen for
    /// 3 s (an allocator returns freed memory over seconds, starting some
    /// seconds after it was freed), and at the latest after this many
    /// seconds.
    #[arg(long, env = "MESHD_LOAD_SETTLE_SECONDS", default_value_t = 20)]
    pub settle_seconds: u64,

    /// Reject (NACK) responses of this type once a proxy has synced.
    #[arg(long, env = "MESHD_LOAD_NACK_TYPE", value_enum)]
    pub nack_type: Option<Kind>,

    /// The fraction of those responses rejected, 0 to 1.
    #[arg(long, env = "MESHD_LOAD_NACK_FRACTION", default_value_t = 1.0)]
    pub nack_fraction: f64,

    /// Split the proxies over this many worker processes (each runs its
    /// proxies on one thread), so that the client is not the limit.
    #[arg(long, env = "MESHD_LOAD_PROCESSES", default_value_t = 1)]
    pub processes: usize,

    /// Connections being established at once, per fleet.
    #[arg(long, env = "MESHD_LOAD_CONNECT_CONCURRENCY", default_value_t = 64)]
    pub connect_concurrency: usize,

    /// Stop after this many seconds, report what was measured so far and
    /// exit non-zero.
    #[arg(long, env = "MESHD_LOAD_TIMEOUT", default_value_t = 600)]
    pub timeout: u64,

    /// Also write the full report as JSON to this file (`-` for stdout,
    /// after the summary line).
    #[arg(long, env = "MESHD_LOAD_JSON")]
    pub json: Option<PathBuf>,

    /// Internal: run as a worker process of another meshd-load, taking
    /// commands on stdin and reporting on stdout.
    #[arg(long, hide = true)]
    pub worker: bool,
}
