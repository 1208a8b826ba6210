//! The mesh's certificate authority.
//!
//! Intentionally empty for now: the built-in CA (root generation, plug-in CA,
//! SPIFFE workload certificates, rotation) lands with issue #3. The crate
//! exists so the workspace has its final shape and nothing else grows a CA of
//! its own in the meantime.
