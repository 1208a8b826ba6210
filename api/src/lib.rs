//! What meshd agrees on with the world outside the control plane: the
//! names it gives services and proxies, the `meshd.io/*` annotations users
//! write on Services, Namespaces and Pods, the bounds on the YAML it reads,
//! and the sidecar contract (its ports and Envoy bootstrap).
//!
//! Plain data and pure functions (writing a proxy's identity files aside):
//! the control plane (discovery and translation), the injector, the
//! validating webhook and `meshd inject` all parse user input and render
//! sidecars with the same code, and none of them needs the others for it.

pub mod annotations;
pub mod gateway;
pub mod manifest;
pub mod names;
pub mod sidecar;
