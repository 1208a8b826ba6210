//! Bootstrap identities as Kubernetes Secrets.
//!
//! One Secret per service account and namespace,
//! `meshd-identity-<service-account>`, holding the files of
//! [`meshd_api::sidecar::bootstrap::identity_files`] for the sidecar's mount
//! point. It is written with server-side apply (field manager `meshd`), and
//! rewritten when its certificate has used half its life or the trust
//! bundle changed; Envoy picks the new files up through file-based SDS.
//!
//! Admission writes a Secret when a pod of the account is created;
//! [`keep_current`] renews the existing ones of the accounts whose pods are
//! in the mesh, periodically and after every CA change (root rotation), so
//! long-running pods keep a bootstrap certificate that reaches xDS.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams};
use meshd_api::sidecar::bootstrap::{identity_file_names as files, identity_files};
use meshd_ca::{Authority, SpiffeId};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use meshd_injector::config::{IDENTITY_MOUNT, identity_secret_name};
use meshd_injector::identity::IdentityProvisioner;

const FIELD_MANAGER: &str = "meshd";
const SERVICE_ACCOUNT_LABEL: &str = "meshd.io/service-account";

/// Keeps identity Secrets current through the Kubernetes API.
pub struct SecretProvisioner {
    client: kube::Client,
    ca: Arc<Authority>,
    ttl: Duration,
}

impl SecretProvisioner {
    /// `ttl` is the bootstrap certificates' lifetime; a Secret is renewed
    /// once less than half of it remains.
    pub fn new(client: kube::Client, ca: Arc<Authority>, ttl: Duration) -> Self {
        SecretProvisioner { client, ca, ttl }
    }

    /// Whether `secret` still serves: its certificate has more than half
    /// its lifetime left and it carries the current trust bundle.
    fn is_current(&self, secret: &Secret, bundle: &str) -> bool {
        let data = secret.data.clone().unwrap_or_default();
        let text = |name: &str| {
            data.get(name)
                .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        };
        let Some(chain) = text(files::CERT_CHAIN) else {
            return false;
        };
        let fresh = meshd_ca::leaf_expiry(&chain).is_some_and(|not_after| {
            let left = not_after - time::OffsetDateTime::now_utc();
            left > self.ttl / 2
        });
        fresh && text(files::ROOT).as_deref() == Some(bundle) && text(files::KEY).is_some()
    }

    fn desired(&self, namespace: &str, service_account: &str) -> Result<Secret, String> {
        let id = SpiffeId::new(self.ca.trust_domain(), namespace, service_account);
        let (issued, key) = self
            .ca
            .issue_with_key(&id, self.ttl)
            .map_err(|e| format!("cannot issue the identity of {id}: {e}"))?;
        let data: BTreeMap<String, ByteString> = identity_files(
            Path::new(IDENTITY_MOUNT),
            &issued.chain_pem,
            &key,
            &self.ca.trust_bundle_pem(),
        )
        .into_iter()
        .map(|f| (f.name.to_string(), ByteString(f.contents.into_bytes())))
        .collect();
        Ok(Secret {
            metadata: ObjectMeta {
                name: Some(identity_secret_name(service_account)),
                namespace: Some(namespace.to_string()),
                labels: Some(BTreeMap::from([
                    (
                        "app.kubernetes.io/managed-by".to_string(),
                        "meshd".to_string(),
                    ),
                    (
                        SERVICE_ACCOUNT_LABEL.to_string(),
                        service_account.to_string(),
                    ),
                ])),
                ..Default::default()
            },
            type_: Some("Opaque".into()),
            data: Some(data),
            ..Default::default()
        })
    }
}

impl SecretProvisioner {
    /// Renews the account's identity Secret if it exists and is no longer
    /// current; a missing one is left to admission (the account may have
    /// no injected pod). Returns whether it was rewritten.
    pub async fn refresh(&self, namespace: &str, service_account: &str) -> Result<bool, String> {
        let name = identity_secret_name(service_account);
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let Some(existing) = api
            .get_opt(&name)
            .await
            .map_err(|e| format!("cannot read Secret {namespace}/{name}: {e}"))?
        else {
            return Ok(false);
        };
        if self.is_current(&existing, &self.ca.trust_bundle_pem()) {
            return Ok(false);
        }
        self.apply(&api, namespace, service_account).await?;
        Ok(true)
    }

    async fn apply(
        &self,
        api: &Api<Secret>,
        namespace: &str,
        service_account: &str,
    ) -> Result<(), String> {
        let name = identity_secret_name(service_account);
        let secret = self.desired(namespace, service_account)?;
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&secret),
        )
        .await
        .map_err(|e| format!("cannot write Secret {namespace}/{name}: {e}"))?;
        tracing::info!(%namespace, secret = %name, "wrote a bootstrap identity");
        Ok(())
    }
}

/// While `leading`, renews the identity Secrets of `accounts()`
/// ((namespace, service account) pairs, e.g. those of the mesh's pods):
/// every `period` and whenever `ca_changes` moves (a root rotation changes
/// the trust bundle, and then the signer). Failures are logged and retried
/// at the next pass.
pub async fn keep_current(
    provisioner: Arc<SecretProvisioner>,
    accounts: impl Fn() -> BTreeSet<(String, String)> + Send,
    mut leading: watch::Receiver<bool>,
    mut ca_changes: watch::Receiver<u64>,
    period: Duration,
    shutdown: CancellationToken,
) {
    async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                led = leading.wait_for(|l| *l) => if led.is_err() { return },
            }
            ca_changes.borrow_and_update();
            let (mut renewed, mut failed) = (0, 0);
            for (namespace, service_account) in accounts() {
                if shutdown.is_cancelled() {
                    return;
                }
                match provisioner.refresh(&namespace, &service_account).await {
                    Ok(true) => renewed += 1,
                    Ok(false) => {}
                    Err(e) => {
                        failed += 1;
                        tracing::warn!("{e}");
                    }
                }
            }
            if renewed > 0 || failed > 0 {
                tracing::info!(renewed, failed, "refreshed bootstrap identities");
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = leading.changed() => {}
                changed = ca_changes.changed() => if changed.is_err() {
                    tokio::time::sleep(period).await;
                },
                () = tokio::time::sleep(period) => {}
            }
        }
    }
    .instrument(tracing::info_span!("identity_secret_refresh"))
    .await
}

impl IdentityProvisioner for SecretProvisioner {
    fn ensure<'a>(
        &'a self,
        namespace: &'a str,
        service_account: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async move {
            let name = identity_secret_name(service_account);
            let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
            let existing = api
                .get_opt(&name)
                .await
                .map_err(|e| format!("cannot read Secret {namespace}/{name}: {e}"))?;
            let bundle = self.ca.trust_bundle_pem();
            if existing
                .as_ref()
                .is_some_and(|s| self.is_current(s, &bundle))
            {
                return Ok(());
            }
            self.apply(&api, namespace, service_account).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request, Response};
    use kube::client::Body;

    fn ca() -> (tempfile::TempDir, Arc<Authority>) {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::load_or_generate(
            "cluster.local",
            Arc::new(meshd_ca::DirStore::new(dir.path())),
        )
        .unwrap();
        (dir, Arc::new(ca))
    }

    async fn body_of(request: Request<Body>) -> (http::request::Parts, Vec<u8>) {
        let (parts, body) = request.into_parts();
        let bytes = body.collect_bytes().await.unwrap();
        (parts, bytes.to_vec())
    }

    fn json_response(status: u16, body: serde_json::Value) -> Response<Body> {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap()
    }

    /// A Kubernetes `Status` error as the API server sends it.
    fn api_error(code: u16, reason: &str, message: &str) -> Response<Body> {
        json_response(
            code,
            serde_json::json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": message, "reason": reason, "code": code
            }),
        )
    }

    #[tokio::test]
    async fn a_missing_secret_is_applied_with_the_identity_files() {
        let (_dir, ca) = ca();
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let provisioner = SecretProvisioner::new(
            kube::Client::new(service, "default"),
            ca.clone(),
            Duration::from_secs(3600),
        );
        let server = tokio::spawn(async move {
            let (request, send) = handle.next_request().await.expect("a GET");
            assert_eq!(request.method(), http::Method::GET);
            assert_eq!(
                request.uri().path(),
                "/api/v1/namespaces/shop/secrets/meshd-identity-web"
            );
            send.send_response(api_error(
                404,
                "NotFound",
                "secrets \"meshd-identity-web\" not found",
            ));

            let (request, send) = handle.next_request().await.expect("an apply");
            let (parts, body) = body_of(request).await;
            assert_eq!(parts.method, http::Method::PATCH);
            assert_eq!(
                parts.headers["content-type"],
                "application/apply-patch+yaml"
            );
            assert!(parts.uri.query().unwrap().contains("fieldManager=meshd"));
            let secret: serde_json::Value = serde_json::from_slice(&body).unwrap();
            send.send_response(json_response(200, secret.clone()));
            secret
        });
        tokio::time::timeout(Duration::from_secs(5), provisioner.ensure("shop", "web"))
            .await
            .unwrap()
            .unwrap();
        let secret = tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(secret["metadata"]["labels"][SERVICE_ACCOUNT_LABEL], "web");
        let data = secret["data"].as_object().unwrap();
        for name in [
            files::KEY,
            files::CERT_CHAIN,
            files::ROOT,
            files::CERT_SDS,
            files::ROOT_SDS,
        ] {
            assert!(data.contains_key(name), "{name} missing");
        }
        // The SDS files point at the sidecar's mount.
        let sds: Secret = serde_json::from_value(secret).unwrap();
        let cert_sds = String::from_utf8(sds.data.unwrap()[files::CERT_SDS].0.clone()).unwrap();
        assert!(
            cert_sds.contains("/etc/meshd/identity/cert-chain.pem"),
            "{cert_sds}"
        );
    }

    #[tokio::test]
    async fn a_current_secret_is_left_alone_and_api_errors_are_reported() {
        let (_dir, ca) = ca();
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let provisioner = SecretProvisioner::new(
            kube::Client::new(service, "default"),
            ca.clone(),
            Duration::from_secs(3600),
        );
        let current = provisioner.desired("shop", "web").unwrap();
        let server = tokio::spawn(async move {
            let (_, send) = handle.next_request().await.expect("a GET");
            send.send_response(json_response(200, serde_json::to_value(&current).unwrap()));
            // Nothing else may follow: a second request would be a write.
            let (_, send) = handle.next_request().await.expect("a GET");
            send.send_response(api_error(403, "Forbidden", "secrets is forbidden"));
        });
        tokio::time::timeout(Duration::from_secs(5), provisioner.ensure("shop", "web"))
            .await
            .unwrap()
            .unwrap();
        let err = tokio::time::timeout(Duration::from_secs(5), provisioner.ensure("shop", "web"))
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            err.contains("cannot read Secret shop/meshd-identity-web") && err.contains("forbidden"),
            "{err}"
        );
        assert!(!err.contains("PRIVATE"), "{err}");
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn refresh_renews_a_stale_secret_and_leaves_others_alone() {
        let (_old_dir, old_ca) = ca();
        let (_dir, ca) = ca();
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(service, "default");
        let provisioner =
            SecretProvisioner::new(client.clone(), ca.clone(), Duration::from_secs(3600));
        // Issued by a CA whose root is no longer the trust bundle.
        let stale = SecretProvisioner::new(client, old_ca, Duration::from_secs(3600))
            .desired("shop", "web")
            .unwrap();
        let current = provisioner.desired("shop", "api").unwrap();
        let server = tokio::spawn(async move {
            let (request, send) = handle.next_request().await.expect("a GET");
            assert_eq!(
                request.uri().path(),
                "/api/v1/namespaces/shop/secrets/meshd-identity-web"
            );
            send.send_response(json_response(200, serde_json::to_value(&stale).unwrap()));
            let (request, send) = handle.next_request().await.expect("an apply");
            let (parts, body) = body_of(request).await;
            assert_eq!(parts.method, http::Method::PATCH);
            let secret: serde_json::Value = serde_json::from_slice(&body).unwrap();
            send.send_response(json_response(200, secret.clone()));

            let (_, send) = handle.next_request().await.expect("a GET");
            send.send_response(json_response(200, serde_json::to_value(&current).unwrap()));
            let (_, send) = handle.next_request().await.expect("a GET");
            send.send_response(api_error(
                404,
                "NotFound",
                "secrets \"meshd-identity-db\" not found",
            ));
            secret
        });
        let wait = |f| tokio::time::timeout(Duration::from_secs(5), f);
        assert!(
            wait(provisioner.refresh("shop", "web"))
                .await
                .unwrap()
                .unwrap()
        );
        assert!(
            !wait(provisioner.refresh("shop", "api"))
                .await
                .unwrap()
                .unwrap(),
            "current"
        );
        assert!(
            !wait(provisioner.refresh("shop", "db"))
                .await
                .unwrap()
                .unwrap(),
            "missing: left to admission"
        );
        let written = tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap();
        let root = String::from_utf8(
            serde_json::from_value::<Secret>(written)
                .unwrap()
                .data
                .unwrap()[files::ROOT]
                .0
                .clone(),
        )
        .unwrap();
        assert_eq!(
            root,
            ca.trust_bundle_pem(),
            "renewed with the current trust bundle"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn keep_current_runs_only_while_leading_and_after_ca_changes() {
        let (_dir, ca) = ca();
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let provisioner = Arc::new(SecretProvisioner::new(
            kube::Client::new(service, "default"),
            ca,
            Duration::from_secs(3600),
        ));
        let (leading_tx, leading) = watch::channel(false);
        let (ca_tx, ca_changes) = watch::channel(0u64);
        let stop = CancellationToken::new();
        let period = Duration::from_secs(24 * 3600);
        let task = tokio::spawn(keep_current(
            provisioner,
            || BTreeSet::from([("shop".to_string(), "web".to_string())]),
            leading,
            ca_changes,
            period,
            stop.clone(),
        ));
        let hour = Duration::from_secs(3600);
        assert!(
            tokio::time::timeout(hour, handle.next_request())
                .await
                .is_err(),
            "a follower sends nothing"
        );
        leading_tx.send_replace(true);
        let (request, send) = tokio::time::timeout(hour, handle.next_request())
            .await
            .expect("the leader checks")
            .expect("a request");
        assert_eq!(
            request.uri().path(),
            "/api/v1/namespaces/shop/secrets/meshd-identity-web"
        );
        send.send_response(api_error(404, "NotFound", "not found"));
        assert!(
            tokio::time::timeout(hour, handle.next_request())
                .await
                .is_err(),
            "nothing more before the period"
        );
        ca_tx.send_replace(1);
        let (_, send) = tokio::time::timeout(hour, handle.next_request())
            .await
            .expect("a CA change triggers a pass")
            .expect("a request");
        send.send_response(api_error(404, "NotFound", "not found"));
        stop.cancel();
        tokio::time::timeout(hour, task).await.unwrap().unwrap();
    }
}
