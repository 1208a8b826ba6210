//! meshd's control plane: the mesh model, discovery sources, translation to
//! Envoy resources, and the xDS server that streams them to proxies.
//!
//! ```text
//! discovery source ──Mesh──> xds::Publisher ──Snapshot──> ADS streams ──> Envoy
//!  (file registry,             (debounce,                  (SotW / Delta)
//!   Kubernetes API;             translate)
//!   routing validated)
//! ```
//!
//! Discovery reads the traffic annotations (timeouts, retries, splits,
//! faults, load balancing, circuit breaking, egress scopes) with the parsers
//! of `meshd-api`, checks them against the mesh and keeps each service's
//! last good routing ([`discovery::routing`]): the model that translation
//! gets carries validated routing only.

pub mod certificates;
pub mod debug;
pub mod discovery;
pub mod identity;
pub mod model;
pub mod process;
pub mod server;
pub mod serving;
pub mod tls;
pub mod translate;
pub mod xds;

/// The shutdown signal the long-running tasks take (leader election, the
/// caBundle patcher), re-exported so the binary needs no tokio-util of its own.
pub use tokio_util::sync::CancellationToken;
