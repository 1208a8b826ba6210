//! What meshd agrees on with the world outside the control plane: the
//! names it gives services and proxies, and the `meshd.io/*` annotations
//! users write on Services, Namespaces and Pods.
//!
//! Plain data and pure functions, no I/O: the control plane (discovery and
//! translation), the injector and the validating webhook all parse user
//! input with the same code, and none of them needs the others for it.

pub mod annotations;
pub mod names;
