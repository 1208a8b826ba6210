//! Sidecar injection.
//!
//! - [`inject`]: the pure core, Pod → JSON Patch, shared by the webhook and
//!   `meshd inject`.
//! - [`capture`]: the traffic-capture rules the injected init container
//!   applies (`meshd capture`), also applied by the end-to-end tests.
//! - [`config`]: what gets injected.

pub mod capture;
pub mod config;
pub mod identity;
pub mod inject;
