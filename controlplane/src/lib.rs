//! meshd's control plane: the mesh model, discovery sources, translation to
//! Envoy resources, and the xDS server that streams them to proxies.
//!
//! ```text
//! discovery source ──Mesh──> xds::Publisher ──Snapshot──> ADS streams ──> Envoy
//!  (file registry)            (debounce, translate)       (SotW / Delta)
//! ```

pub mod bootstrap;
pub mod certificates;
pub mod debug;
pub mod discovery;
pub mod identity;
pub mod model;
pub mod server;
pub mod tls;
pub mod translate;
pub mod xds;
