//! Sidecar injection.
//!
//! Today this crate holds [`capture`], the traffic-capture rules the
//! injected init container applies (and the end-to-end tests apply in their
//! network namespaces). The mutating admission webhook and offline
//! injection land with issue #4 and reuse the same rules.

pub mod capture;
