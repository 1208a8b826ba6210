//! The mesh's certificate authority.
//!
//! ```text
//!  root (self-signed, generated once and persisted through a CaStore)
//!    └─ or a plug-in intermediate (ca-cert.pem + ca-key.pem, chained to root-cert.pem)
//!         └─ workload leaf: URI SAN spiffe://<td>/ns/<ns>/sa/<sa>, ECDSA P-256, short-lived
//! ```
//!
//! [`Authority`] signs; it never signs with an issuer outside its validity
//! window and never lets a leaf outlive its issuer. The trust bundle may hold
//! more than one root while a root rotation is under way.
//!
//! Private keys live in [`PrivateKey`], whose `Debug` is redacted, and are
//! never part of an error message.

mod authority;
pub mod identity;
pub mod serving;
pub mod store;

use std::fmt;
use std::path::PathBuf;

pub use authority::{
    Authority, DEFAULT_RETIRED_ROOT_GRACE, IssuedCert, MIN_WORKLOAD_TTL, Status, leaf_expiry,
};
pub use identity::{DEFAULT_TRUST_DOMAIN, SpiffeId};
pub use serving::RenewingServerCert;
pub use store::{
    CaStore, DirStore, PlugInFiles, RetiredRoot, RetiredRoots, StagedRoot, StoredRoot,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {problem}")]
    File { path: PathBuf, problem: String },
    #[error(
        "`{value}` is not a workload identity; accepted: spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>"
    )]
    InvalidIdentity { value: String },
    #[error("the issuing certificate is not valid until {not_before}; refusing to sign")]
    IssuerNotYetValid { not_before: String },
    #[error("the issuing certificate expired at {not_after}; refusing to sign")]
    IssuerExpired { not_after: String },
    #[error("invalid certificate signing request: {0}")]
    InvalidCsr(String),
    #[error(
        "the signing request asks for {requested}, but the caller is {caller}; a workload may only request its own identity"
    )]
    IdentityMismatch { requested: String, caller: String },
    #[error("root rotation: {0}")]
    Rotation(String),
    #[error("certificate generation failed: {0}")]
    Generate(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<rcgen::Error> for Error {
    fn from(e: rcgen::Error) -> Self {
        Error::Generate(e.to_string())
    }
}

/// A private key in PEM. Its `Debug` output never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateKey(String);

impl PrivateKey {
    pub fn from_pem(pem: String) -> Self {
        PrivateKey(pem)
    }

    /// The PEM text, for handing to Envoy or writing to a 0600 file: never
    /// for logs.
    pub fn expose_pem(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}
