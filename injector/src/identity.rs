//! Bootstrap identities for injected pods.
//!
//! An injected sidecar proves which workload it is with a certificate for
//! its service account, mounted from the Secret
//! [`crate::config::identity_secret_name`] in the pod's namespace. The
//! webhook makes sure that Secret exists (and is current) before it lets
//! the pod in; dry-run reviews never write it.

use std::future::Future;
use std::pin::Pin;

/// Makes sure a service account's identity Secret exists and is current.
pub trait IdentityProvisioner: Send + Sync {
    fn ensure<'a>(
        &'a self,
        namespace: &'a str,
        service_account: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;
}
