//! Discovery: where the mesh model comes from.
//!
//! - [`objects`]: Kubernetes objects → model types, shared by every source.
//! - [`index`]: accepted objects by kind, joined into a [`crate::model::Mesh`].
//! - [`routing`]: the routing annotations of the mesh, parsed and checked
//!   against it when the mesh is built; each service keeps its last good
//!   routing.
//! - [`authorization`]: the authorization annotations, parsed and checked
//!   the same way; each service keeps its last good policy.
//! - [`file`]: the file registry source (a directory of manifests, or the
//!   embedded default).
//! - [`kubernetes`]: the index of the Kubernetes API source, whose watchers
//!   (kube-rs) live in `meshd-k8s`, outside the core.
//!
//! A source publishes whole [`crate::model::Mesh`] snapshots on a
//! `tokio::sync::watch` channel; the xDS server subscribes to it. Sources
//! outside the core plug in as a [`crate::server::MeshSource`].

pub mod authorization;
pub mod file;
pub mod gateway;
pub mod index;
pub mod kubernetes;
pub mod objects;
pub mod routing;
