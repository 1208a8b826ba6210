//! The `meshd.io/*` annotations users write: keys, parsers, the messages
//! that name what is accepted, and the rows of the README's tables.
//!
//! - [`routing`]: Service and Namespace routing (timeouts, retries, splits,
//!   routes, faults, load balancing, circuit breaking, outlier detection),
//!   and the egress scope of Namespaces and Pods.
//! - [`workload`]: the mTLS mode and traffic interception of a workload,
//!   which discovery reads from Pods and Namespaces.

pub mod routing;
pub mod workload;
