//! Sidecar injection.
//!
//! - [`inject`]: the pure core, Pod → JSON Patch, shared by the webhook and
//!   `meshd inject`.
//! - [`capture`]: the traffic-capture rules the injected init container
//!   applies (`meshd capture`), also applied by the end-to-end tests.
//! - [`annotations`]: the `meshd.io/*` annotations pods may carry, as data.
//! - [`offline`]: `meshd inject`, the same injection over YAML manifests.
//! - [`config`]: what gets injected.
//! - [`webhook`]: the admission webhook serving [`inject`] over HTTPS.
//! - [`validate`]: the validating webhook's decision on the routing
//!   annotations of Services and Namespaces.

pub mod admission;
pub mod capture;
pub mod config;
pub mod error;
pub mod identity;
pub mod inject;
pub mod offline;
pub mod validate;
pub mod webhook;
