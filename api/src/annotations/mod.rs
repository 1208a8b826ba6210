//! The `meshd.io/*` annotations users write: keys, parsers, the messages
//! that name what is accepted, and the rows of the README's tables.
//!
//! - [`routing`]: Service and Namespace routing (timeouts, retries, splits,
//!   routes, faults, load balancing, circuit breaking, outlier detection),
//!   and the egress scope of Namespaces and Pods.
//! - [`workload`]: the mTLS mode and traffic interception of a workload,
//!   which discovery reads from Pods and Namespaces.
//! - [`pod`]: what a Pod may ask of its injected sidecar (resources, log
//!   level, capture exclusions, native or classic sidecar, probes), and
//!   the labels meshd reads or writes.
//!
//! - [`authorization`]: who may call a Service (defaults, allow and deny
//!   rules by SPIFFE identity, methods and paths, dry-run).
//!
//! Each module's table of rows is the README's table and the `accepted`
//! part of every message about its annotations.

pub mod authorization;
pub mod pod;
pub mod routing;
pub mod workload;
