//! The caBundle patcher against a stateful fake API server through the
//! real `kube::Client`: the leader patches every webhook with the mesh
//! trust bundle (base64 of the PEM), leaves current ones alone, re-patches
//! after a root rotation, waits for a missing configuration, and a follower
//! sends nothing. Paused time: resync timers cost nothing.

mod fake_api;

use std::sync::Arc;
use std::time::Duration;

use fake_api::FakeApi;
use http::Method;
use meshd_ca::{Authority, DirStore};
use meshd_controlplane::identity::{Identity, IdentityConfig};
use meshd_k8s::webhook_ca::{self, WebhookConfigurations};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const MUTATING: &str =
    "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/meshd-injector";
const VALIDATING: &str =
    "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/meshd-validator";
const WAIT: Duration = Duration::from_secs(120);

fn config(kind: &str, name: &str, webhooks: &[(&str, Option<&str>)]) -> Value {
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": kind,
        "metadata": {"name": name},
        "webhooks": webhooks.iter().map(|(name, bundle)| {
            let mut client_config = json!({
                "service": {"name": "meshd", "namespace": "meshd-system", "path": "/inject"}
            });
            if let Some(bundle) = bundle {
                client_config["caBundle"] = json!(bundle);
            }
            json!({
                "name": name,
                "clientConfig": client_config,
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
            })
        }).collect::<Vec<_>>(),
    })
}

fn base64(text: &str) -> String {
    serde_json::to_value(k8s_openapi::ByteString(text.as_bytes().to_vec()))
        .expect("base64")
        .as_str()
        .expect("a string")
        .to_string()
}

struct Running {
    _dir: tempfile::TempDir,
    identity: Arc<Identity>,
    leading: watch::Sender<bool>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn start(api: &FakeApi, leading: bool, configs: WebhookConfigurations) -> Running {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let ca = Authority::load_or_generate("cluster.local", Arc::new(DirStore::new(dir.path())))
        .expect("a CA");
    let identity = Arc::new(Identity::new(Arc::new(ca), IdentityConfig::default()));
    let (tx, rx) = watch::channel(leading);
    let stop = CancellationToken::new();
    let task = tokio::spawn(webhook_ca::run(
        api.client(),
        configs,
        identity.clone(),
        rx,
        stop.clone(),
    ));
    Running {
        _dir: dir,
        identity,
        leading: tx,
        stop,
        task,
    }
}

fn both() -> WebhookConfigurations {
    WebhookConfigurations {
        mutating: Some("meshd-injector".into()),
        validating: Some("meshd-validator".into()),
    }
}

fn bundles(api: &FakeApi, path: &str) -> Vec<Value> {
    api.object(path).expect("the configuration")["webhooks"]
        .as_array()
        .expect("webhooks")
        .iter()
        .map(|w| w["clientConfig"]["caBundle"].clone())
        .collect()
}

async fn until(what: &str, done: impl Fn() -> bool) {
    tokio::time::timeout(WAIT, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("never: {what}"));
}

impl Running {
    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("stops")
            .expect("no panic");
    }
}

#[tokio::test(start_paused = true)]
async fn the_leader_patches_every_webhook_with_the_trust_bundle() {
    let api = FakeApi::new();
    api.insert(
        MUTATING,
        config(
            "MutatingWebhookConfiguration",
            "meshd-injector",
            &[
                ("inject.meshd.io", None),
                ("inject-ns.meshd.io", Some("c3RhbGU=")),
            ],
        ),
    );
    api.insert(
        VALIDATING,
        config(
            "ValidatingWebhookConfiguration",
            "meshd-validator",
            &[("validate.meshd.io", None)],
        ),
    );
    let running = start(&api, true, both());
    let want = json!(base64(&running.identity.ca.trust_bundle_pem()));
    until("both configurations patched", || {
        api.count(&Method::PATCH, MUTATING) == 1 && api.count(&Method::PATCH, VALIDATING) == 1
    })
    .await;
    assert_eq!(bundles(&api, MUTATING), vec![want.clone(), want.clone()]);
    assert_eq!(bundles(&api, VALIDATING), vec![want.clone()]);
    let patch = api
        .seen()
        .into_iter()
        .find(|s| s.method == Method::PATCH && s.path == MUTATING)
        .expect("the PATCH");
    assert_eq!(
        patch.content_type.as_deref(),
        Some("application/strategic-merge-patch+json")
    );
    let body = patch.body.expect("a JSON body");
    assert_eq!(body["webhooks"][0]["name"], "inject.meshd.io");
    assert_eq!(body["webhooks"][0]["clientConfig"]["caBundle"], want);
    assert!(
        body["metadata"]["resourceVersion"].is_string(),
        "conditional: {body}"
    );
    // Nothing else the chart owns was touched.
    let stored = api.object(MUTATING).expect("the configuration");
    assert_eq!(stored["webhooks"][0]["sideEffects"], "None");
    assert_eq!(
        stored["webhooks"][1]["clientConfig"]["service"]["path"],
        "/inject"
    );
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_current_bundle_is_not_patched() {
    let api = FakeApi::new();
    let running = start(&api, true, WebhookConfigurations::default());
    running.stop().await;
    assert!(api.seen().is_empty(), "nothing configured, nothing sent");

    let api = FakeApi::new();
    let running = start(&api, false, both());
    let bundle = base64(&running.identity.ca.trust_bundle_pem());
    api.insert(
        MUTATING,
        config(
            "MutatingWebhookConfiguration",
            "meshd-injector",
            &[("inject.meshd.io", Some(&bundle))],
        ),
    );
    api.insert(
        VALIDATING,
        config(
            "ValidatingWebhookConfiguration",
            "meshd-validator",
            &[("validate.meshd.io", Some(&bundle))],
        ),
    );
    running.leading.send_replace(true);
    // Several resyncs.
    tokio::time::sleep(webhook_ca::RESYNC * 3).await;
    assert!(api.count(&Method::GET, MUTATING) >= 2, "{:?}", api.seen());
    assert_eq!(api.count(&Method::PATCH, MUTATING), 0);
    assert_eq!(api.count(&Method::PATCH, VALIDATING), 0);
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_root_rotation_is_patched_in() {
    let api = FakeApi::new();
    api.insert(
        MUTATING,
        config(
            "MutatingWebhookConfiguration",
            "meshd-injector",
            &[("inject.meshd.io", None)],
        ),
    );
    let configs = WebhookConfigurations {
        mutating: Some("meshd-injector".into()),
        validating: None,
    };
    let running = start(&api, true, configs);
    until("first patch", || api.count(&Method::PATCH, MUTATING) == 1).await;
    let before = running.identity.ca.trust_bundle_pem();

    running.identity.ca.stage_new_root().expect("stage");
    running.identity.changed();
    let after = running.identity.ca.trust_bundle_pem();
    assert!(after.starts_with(&before) && after.len() > before.len());
    until("patch after rotation", || {
        api.count(&Method::PATCH, MUTATING) == 2
    })
    .await;
    assert_eq!(bundles(&api, MUTATING), vec![json!(base64(&after))]);
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_follower_sends_nothing_until_it_leads() {
    let api = FakeApi::new();
    api.insert(
        MUTATING,
        config(
            "MutatingWebhookConfiguration",
            "meshd-injector",
            &[("inject.meshd.io", None)],
        ),
    );
    let running = start(&api, false, both());
    tokio::time::sleep(webhook_ca::RESYNC * 3).await;
    assert!(api.seen().is_empty(), "{:?}", api.seen());
    running.leading.send_replace(true);
    until("patched once leading", || {
        api.count(&Method::PATCH, MUTATING) == 1
    })
    .await;
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_missing_configuration_is_retried_until_it_exists() {
    let api = FakeApi::new();
    let configs = WebhookConfigurations {
        mutating: Some("meshd-injector".into()),
        validating: None,
    };
    let running = start(&api, true, configs);
    until("retried", || api.count(&Method::GET, MUTATING) >= 2).await;
    api.insert(
        MUTATING,
        config(
            "MutatingWebhookConfiguration",
            "meshd-injector",
            &[("inject.meshd.io", None)],
        ),
    );
    until("patched once created", || {
        api.count(&Method::PATCH, MUTATING) == 1
    })
    .await;
    let want = json!(base64(&running.identity.ca.trust_bundle_pem()));
    assert_eq!(bundles(&api, MUTATING), vec![want]);
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_conflicting_write_is_retried_on_the_fresh_object() {
    let api = FakeApi::new();
    api.insert(
        MUTATING,
        config(
            "MutatingWebhookConfiguration",
            "meshd-injector",
            &[("inject.meshd.io", None)],
        ),
    );
    // The chart re-applies the configuration between our GET and PATCH.
    api.fail_next_with(
        Method::PATCH,
        409,
        MUTATING,
        config(
            "MutatingWebhookConfiguration",
            "meshd-injector",
            &[("inject.meshd.io", None), ("inject-2.meshd.io", None)],
        ),
    );
    let configs = WebhookConfigurations {
        mutating: Some("meshd-injector".into()),
        validating: None,
    };
    let running = start(&api, true, configs);
    until("patched after the conflict", || {
        api.count(&Method::PATCH, MUTATING) == 2
    })
    .await;
    let want = json!(base64(&running.identity.ca.trust_bundle_pem()));
    assert_eq!(bundles(&api, MUTATING), vec![want.clone(), want]);
    running.stop().await;
}

#[test]
fn the_patch_names_only_stale_webhooks() {
    let current = json!("Y3VycmVudA==");
    let object = config(
        "MutatingWebhookConfiguration",
        "meshd-injector",
        &[
            ("a.meshd.io", Some("Y3VycmVudA==")),
            ("b.meshd.io", Some("b2xk")),
        ],
    );
    let (patch, names) = webhook_ca::ca_bundle_patch(&object, &current).expect("a patch");
    assert_eq!(names, vec!["b.meshd.io".to_string()]);
    assert_eq!(
        patch["webhooks"],
        json!([{"name": "b.meshd.io", "clientConfig": {"caBundle": "Y3VycmVudA=="}}])
    );
    let object = config(
        "MutatingWebhookConfiguration",
        "meshd-injector",
        &[("a.meshd.io", Some("Y3VycmVudA=="))],
    );
    assert!(webhook_ca::ca_bundle_patch(&object, &current).is_none());
}
