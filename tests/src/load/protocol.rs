//! What the coordinator and its fleets say to each other: commands one
//! way, reports the other. In process they travel over channels; to a
//! worker process as one JSON object per line on its stdin and stdout.
//!
//! Times are microseconds since the Unix epoch, so that receipts measured in
//! different processes compare with the moment a change was written.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The xDS resource types a proxy subscribes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Cds,
    Eds,
    Lds,
    Rds,
    Sds,
}

impl Kind {
    pub const ALL: [Kind; 5] = [Kind::Cds, Kind::Eds, Kind::Lds, Kind::Rds, Kind::Sds];

    pub fn type_url(self) -> &'static str {
        use meshd_proto::type_url;
        match self {
            Kind::Cds => type_url::CLUSTER,
            Kind::Eds => type_url::ENDPOINT,
            Kind::Lds => type_url::LISTENER,
            Kind::Rds => type_url::ROUTE,
            Kind::Sds => type_url::SECRET,
        }
    }

    pub fn from_type_url(url: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.type_url() == url)
    }

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn label(self) -> &'static str {
        match self {
            Kind::Cds => "CDS",
            Kind::Eds => "EDS",
            Kind::Lds => "LDS",
            Kind::Rds => "RDS",
            Kind::Sds => "SDS",
        }
    }
}

/// The ADS flavour of one stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Flavour {
    Delta,
    Sotw,
}

/// One simulated proxy: the pod it stands for.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProxySpec {
    /// Its number in the whole fleet (reports name proxies by it).
    pub index: u32,
    pub namespace: String,
    pub pod: String,
    pub service_account: String,
    pub flavour: Flavour,
}

impl ProxySpec {
    /// The node id meshd serves: `<pod>.<namespace>`.
    pub fn node_id(&self) -> String {
        format!("{}.{}", self.pod, self.namespace)
    }
}

/// Rejecting some responses, as a proxy does with config it cannot use.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Nack {
    pub kind: Kind,
    pub fraction: f64,
}

/// Everything a fleet needs to run its share of the proxies.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FleetConfig {
    pub xds: SocketAddr,
    /// The name meshd's serving certificate is verified against.
    pub server_name: String,
    pub ca_dir: PathBuf,
    pub trust_domain: String,
    pub proxies: Vec<ProxySpec>,
    pub nack: Option<Nack>,
    pub connect_concurrency: usize,
}

/// What the coordinator is waiting for every proxy to receive.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "probe", rename_all = "snake_case")]
pub enum Probe {
    /// A load assignment for `cluster` with `ready` ready endpoints.
    Endpoints {
        id: u32,
        cluster: String,
        ready: u32,
    },
    /// A new service, held whole: its cluster, its load assignment with
    /// `ready` ready endpoints, an outbound listener chain for `vip:port`,
    /// and a route configuration with a virtual host for `domain`.
    Service {
        id: u32,
        cluster: String,
        ready: u32,
        vip: String,
        port: u32,
        domain: String,
    },
}

impl Probe {
    pub fn id(&self) -> u32 {
        match self {
            Probe::Endpoints { id, .. } | Probe::Service { id, .. } => *id,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    /// Issue every proxy's identity; answered by [`Report::Prepared`].
    Prepare(FleetConfig),
    /// Open every proxy's connection and stream (again, after a
    /// disconnect); each proxy answers [`Report::Synced`] or
    /// [`Report::Failed`].
    Connect,
    /// Start watching for a probe (or stop, with `None`); answered by
    /// [`Report::ProbeSet`], then a [`Report::Receipt`] per proxy.
    Probe {
        probe: Option<Probe>,
    },
    /// Answered by [`Report::Stats`].
    Stats,
    /// Close every stream and connection; answered by
    /// [`Report::Disconnected`].
    Disconnect,
    Exit,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "report", rename_all = "snake_case")]
pub enum Report {
    Prepared {
        proxies: u32,
    },
    /// The proxy holds a response for every type it subscribed to and
    /// every load assignment and route configuration it asked for.
    Synced {
        proxy: u32,
        at_us: u64,
    },
    /// The proxy's connection or stream ended without being asked to.
    Failed {
        proxy: u32,
        error: String,
    },
    /// `expected`: the proxies that were synced and connected when the
    /// probe was set, which should each report a receipt.
    ProbeSet {
        id: u32,
        expected: u32,
    },
    Receipt {
        probe: u32,
        proxy: u32,
        at_us: u64,
    },
    Stats(FleetStats),
    Disconnected {
        proxies: u32,
    },
    /// The fleet cannot go on (its identities could not be issued, …).
    Fatal {
        error: String,
    },
}

/// Counters of one fleet since it started.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FleetStats {
    /// Protobuf bytes of the responses received, by [`Kind::index`].
    pub bytes: [u64; 5],
    pub responses: [u64; 5],
    pub nacks_sent: u64,
    /// Delta resources received again with a version the proxy already
    /// held, by [`Kind::index`].
    pub unchanged: [u64; 5],
    /// Proxies synced and connected now.
    pub live: u32,
}

/// Now, in microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}
