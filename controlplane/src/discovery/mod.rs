//! Discovery: where the mesh model comes from.
//!
//! - [`objects`]: Kubernetes objects → model types, shared by every source.
//! - [`index`]: accepted objects by kind, joined into a [`crate::model::Mesh`].
//! - [`routing`]: the routing annotations of the mesh, parsed and checked
//!   against it when the mesh is built; each service keeps its last good
//!   routing.
//! - [`file`]: the file registry source (a directory of manifests, or the
//!   embedded default).
//! - [`kubernetes`]: the API server, through kube-rs watchers.
//! - [`events`]: Kubernetes Events on objects whose routing annotations
//!   are rejected.
//!
//! A source publishes whole [`crate::model::Mesh`] snapshots on a
//! `tokio::sync::watch` channel; the xDS server subscribes to it.

pub mod events;
pub mod file;
pub mod index;
pub mod kubernetes;
pub mod objects;
pub mod routing;
