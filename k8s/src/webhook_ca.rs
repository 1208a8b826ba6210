//! Keeps the `clientConfig.caBundle` of meshd's own webhook configurations
//! equal to the mesh trust bundle, so the API server trusts the webhook's
//! serving certificate (issued by the mesh CA) without cert-manager.
//!
//! ```text
//! leadership (watch<bool>) ─┐
//! CA generation (watch<u64>)┼──> patcher: GET config ──differs?──> PATCH webhooks[name].clientConfig.caBundle
//! resync / retry timer ─────┘                 └─equal: nothing
//! ```
//!
//! Only the leader patches. The patch is a strategic merge patch (the
//! `webhooks` list merges by `name`), conditional on the resourceVersion
//! read, and names only the webhooks whose bundle differs; other fields
//! stay with whoever owns them (the chart). A configuration that does not
//! exist yet is a warning, retried, never fatal.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use meshd_controlplane::identity::Identity;

const FIELD_MANAGER: &str = "meshd";
/// How often the leader re-checks the bundles when all is well (someone
/// may have reapplied the configuration without it).
pub const RESYNC: Duration = Duration::from_secs(60);
/// How soon a failed or impossible patch is tried again.
pub const RETRY: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Mutating,
    Validating,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Mutating => "MutatingWebhookConfiguration",
            Kind::Validating => "ValidatingWebhookConfiguration",
        }
    }

    fn resource(self) -> ApiResource {
        match self {
            Kind::Mutating => ApiResource::erase::<MutatingWebhookConfiguration>(&()),
            Kind::Validating => ApiResource::erase::<ValidatingWebhookConfiguration>(&()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{kind} {name} does not exist (yet); its caBundle is patched once it does")]
    Missing { kind: &'static str, name: String },
    #[error("cannot read {kind} {name}: {source}")]
    Read {
        kind: &'static str,
        name: String,
        source: kube::Error,
    },
    #[error("cannot patch the caBundle of {kind} {name}: {source}")]
    Patch {
        kind: &'static str,
        name: String,
        source: kube::Error,
    },
}

/// What one pass did to one configuration.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every webhook already carried the bundle.
    Current,
    /// These webhooks were patched.
    Patched(Vec<String>),
}

/// Which configurations to keep current.
#[derive(Clone, Debug, Default)]
pub struct WebhookConfigurations {
    pub mutating: Option<String>,
    pub validating: Option<String>,
}

impl WebhookConfigurations {
    fn each(&self) -> impl Iterator<Item = (Kind, &str)> {
        [
            (Kind::Mutating, self.mutating.as_deref()),
            (Kind::Validating, self.validating.as_deref()),
        ]
        .into_iter()
        .filter_map(|(kind, name)| Some((kind, name?)))
    }

    pub fn is_empty(&self) -> bool {
        self.each().next().is_none()
    }
}

/// The bundle as the API carries it: base64 of the PEM.
fn encoded(bundle_pem: &str) -> Value {
    serde_json::to_value(ByteString(bundle_pem.as_bytes().to_vec())).unwrap_or(Value::Null)
}

/// The strategic merge patch that brings `config`'s webhooks to `bundle`,
/// or `None` when every webhook already has it.
pub fn ca_bundle_patch(config: &Value, bundle: &Value) -> Option<(Value, Vec<String>)> {
    let webhooks = config["webhooks"].as_array()?;
    let stale: Vec<&str> = webhooks
        .iter()
        .filter(|w| w["clientConfig"]["caBundle"] != *bundle)
        .filter_map(|w| w["name"].as_str())
        .collect();
    if stale.is_empty() {
        return None;
    }
    let patch = json!({
        "metadata": {"resourceVersion": config["metadata"]["resourceVersion"]},
        "webhooks": stale
            .iter()
            .map(|name| json!({"name": name, "clientConfig": {"caBundle": bundle}}))
            .collect::<Vec<_>>(),
    });
    Some((patch, stale.into_iter().map(String::from).collect()))
}

/// Makes every webhook of one configuration carry `bundle_pem`.
pub async fn ensure_ca_bundle(
    client: &kube::Client,
    kind: Kind,
    name: &str,
    bundle_pem: &str,
) -> Result<Outcome, Error> {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &kind.resource());
    let config = api
        .get_opt(name)
        .await
        .map_err(|source| Error::Read {
            kind: kind.name(),
            name: name.to_string(),
            source,
        })?
        .ok_or_else(|| Error::Missing {
            kind: kind.name(),
            name: name.to_string(),
        })?;
    let config = serde_json::to_value(&config).unwrap_or(Value::Null);
    let Some((patch, webhooks)) = ca_bundle_patch(&config, &encoded(bundle_pem)) else {
        return Ok(Outcome::Current);
    };
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    api.patch(name, &params, &Patch::Strategic(patch))
        .await
        .map_err(|source| Error::Patch {
            kind: kind.name(),
            name: name.to_string(),
            source,
        })?;
    Ok(Outcome::Patched(webhooks))
}

/// While this replica leads, keeps the configurations' caBundle equal to
/// the trust bundle: at leadership start, on every CA change (root
/// rotation), and on a slow resync; failures are retried sooner.
pub async fn run(
    client: kube::Client,
    configs: WebhookConfigurations,
    identity: Arc<Identity>,
    mut leading: watch::Receiver<bool>,
    shutdown: CancellationToken,
) {
    if configs.is_empty() {
        return;
    }
    let mut ca_changes = identity.subscribe();
    async move {
        loop {
            // Followers wait; a closed channel means the election is over.
            tokio::select! {
                () = shutdown.cancelled() => return,
                led = leading.wait_for(|l| *l) => if led.is_err() { return },
            }
            let bundle = identity.ca.trust_bundle_pem();
            ca_changes.borrow_and_update();
            let mut failed = false;
            for (kind, name) in configs.each() {
                match ensure_ca_bundle(&client, kind, name, &bundle).await {
                    Ok(Outcome::Current) => {
                        tracing::debug!(kind = kind.name(), %name, "caBundle is current")
                    }
                    Ok(Outcome::Patched(webhooks)) => {
                        tracing::info!(kind = kind.name(), %name, ?webhooks, "patched the caBundle")
                    }
                    Err(e) => {
                        failed = true;
                        tracing::warn!("{e}");
                    }
                }
            }
            let wait = if failed { RETRY } else { RESYNC };
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = leading.changed() => {}
                _ = ca_changes.changed() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
    .instrument(tracing::info_span!("webhook_ca_bundle"))
    .await
}
