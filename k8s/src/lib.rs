//! Everything of meshd that talks to a Kubernetes API server, outside the
//! mesh core (which builds without kube):
//!
//! - [`watch`]: the discovery source: Namespaces, Services, EndpointSlices
//!   and Pods through kube-rs watchers, into the core's index.
//! - [`events`]: Events on the objects whose routing annotations are
//!   rejected.
//! - [`leader`]: leader election on a `coordination.k8s.io/v1` Lease; only
//!   the leader writes what follows.
//! - [`ca_secret`]: the mesh CA's root in a Secret, shared by the replicas.
//! - [`webhook_ca`]: the webhook configurations' `caBundle`, kept current.
//! - [`identity_secrets`]: each meshed service account's bootstrap identity
//!   Secret.
//! - [`route_status`]: the Gateway API routes' `status.parents` conditions.
//!
//! The binary wires them to the core: the watch source as a
//! `server::Source::Custom`, the CA store through `meshd_ca::CaStore`,
//! identity Secrets through `meshd_injector::identity::IdentityProvisioner`,
//! leadership and routing problems as `watch` channels.

pub mod ca_secret;
pub mod events;
pub mod identity_secrets;
pub mod leader;
pub mod route_status;
pub mod watch;
pub mod webhook_ca;
