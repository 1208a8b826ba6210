//! The `meshd.io/*` annotations users write: keys, parsers, the messages
//! that name what is accepted, and the rows of the README's tables.
//!
//! - [`routing`]: Service and Namespace routing (timeouts, retries, splits,
//!   routes, faults, load balancing, circuit breaking, outlier detection),
//!   the egress scope of Namespaces and Pods, and the keys of the mTLS mode
//!   and traffic interception that discovery reads.

pub mod routing;
