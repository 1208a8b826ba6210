//! The root CA in a Secret, against a stateful fake API server through the
//! real `kube::Client`: created by the leader when absent, loaded when
//! present, a lost creation race resolved to the winner's root, followers
//! waiting for the leader, rotations written back, and bad Secret content
//! reported by Secret and key.

mod fake_api;

use std::sync::Arc;
use std::time::Duration;

use base64_free::decode;
use fake_api::FakeApi;
use http::Method;
use meshd_ca::{Authority, DirStore};
use meshd_k8s::ca_secret;
use serde_json::{Value, json};
use tokio::sync::watch;

const SECRETS: &str = "/api/v1/namespaces/meshd-system/secrets";
const SECRET: &str = "/api/v1/namespaces/meshd-system/secrets/meshd-ca";
const WAIT: Duration = Duration::from_secs(60);

/// Base64 through k8s-openapi's `ByteString`, the type the wire uses.
mod base64_free {
    pub fn encode(bytes: &[u8]) -> serde_json::Value {
        serde_json::to_value(k8s_openapi::ByteString(bytes.to_vec())).expect("base64")
    }
    pub fn decode(value: &serde_json::Value) -> String {
        let bytes: k8s_openapi::ByteString =
            serde_json::from_value(value.clone()).expect("base64 data");
        String::from_utf8(bytes.0).expect("PEM text")
    }
}

/// A root generated the ordinary way, as (cert PEM, key PEM).
fn a_root() -> (String, String) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    Authority::load_or_generate("cluster.local", Arc::new(DirStore::new(dir.path())))
        .expect("a root");
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).expect("root files");
    (read("root-cert.pem"), read("root-key.pem"))
}

fn secret(data: &[(&str, &str)]) -> Value {
    let data: serde_json::Map<String, Value> = data
        .iter()
        .map(|(k, v)| (k.to_string(), base64_free::encode(v.as_bytes())))
        .collect();
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "meshd-ca", "namespace": "meshd-system"},
        "type": "Opaque",
        "data": data,
    })
}

async fn load(api: &FakeApi, leading: bool) -> Result<Authority, ca_secret::Error> {
    let (_tx, rx) = watch::channel(leading);
    tokio::time::timeout(
        WAIT,
        ca_secret::load_or_create(
            api.client(),
            "meshd-system",
            "meshd-ca",
            "cluster.local",
            rx,
        ),
    )
    .await
    .expect("done in time")
}

fn stored(api: &FakeApi, key: &str) -> Option<String> {
    let secret = api.object(SECRET)?;
    secret["data"].get(key).map(decode)
}

#[tokio::test]
async fn the_leader_creates_the_secret_when_absent() {
    let api = FakeApi::new();
    let ca = load(&api, true).await.expect("the CA");
    assert_eq!(api.count(&Method::POST, SECRETS), 1);
    let secret = api.object(SECRET).expect("the Secret was created");
    assert_eq!(secret["type"], "Opaque");
    let cert = stored(&api, "root-cert.pem").expect("root-cert.pem");
    let key = stored(&api, "root-key.pem").expect("root-key.pem");
    assert!(key.contains("PRIVATE KEY"), "a PEM key");
    assert_eq!(
        ca.trust_bundle_pem(),
        cert,
        "the CA issues from the stored root"
    );
    assert!(stored(&api, "previous-root-cert.pem").is_none());
}

#[tokio::test]
async fn an_existing_secret_is_loaded_and_not_written() {
    let api = FakeApi::new();
    let (cert, key) = a_root();
    api.insert(
        SECRET,
        secret(&[("root-cert.pem", &cert), ("root-key.pem", &key)]),
    );
    for leading in [true, false] {
        let ca = load(&api, leading).await.expect("the CA");
        assert_eq!(ca.trust_bundle_pem(), cert);
    }
    assert_eq!(api.count(&Method::POST, SECRETS), 0);
    assert_eq!(api.count(&Method::PUT, SECRET), 0);
}

#[tokio::test]
async fn losing_the_creation_race_uses_the_winners_root() {
    let api = FakeApi::new();
    let (cert, key) = a_root();
    // Another leader (a moment ago) created it between our GET and POST.
    api.fail_next_with(
        Method::POST,
        409,
        SECRET,
        secret(&[("root-cert.pem", &cert), ("root-key.pem", &key)]),
    );
    let ca = load(&api, true).await.expect("the CA");
    assert_eq!(ca.trust_bundle_pem(), cert, "the winner's root, not ours");
    assert_eq!(
        stored(&api, "root-cert.pem").as_deref(),
        Some(cert.as_str())
    );
}

#[tokio::test(start_paused = true)]
async fn a_follower_waits_for_the_leader_to_create_it() {
    let api = FakeApi::new();
    let (_tx, rx) = watch::channel(false);
    let loading = tokio::spawn(ca_secret::load_or_create(
        api.client(),
        "meshd-system",
        "meshd-ca",
        "cluster.local",
        rx,
    ));
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(!loading.is_finished(), "nothing to load yet");
    assert_eq!(
        api.count(&Method::POST, SECRETS),
        0,
        "a follower never creates"
    );
    let (cert, key) = a_root();
    api.insert(
        SECRET,
        secret(&[("root-cert.pem", &cert), ("root-key.pem", &key)]),
    );
    let ca = tokio::time::timeout(WAIT, loading)
        .await
        .expect("loaded in time")
        .expect("no panic")
        .expect("the CA");
    assert_eq!(ca.trust_bundle_pem(), cert);
}

#[tokio::test(start_paused = true)]
async fn a_waiting_follower_that_becomes_leader_creates_it() {
    let api = FakeApi::new();
    let (tx, rx) = watch::channel(false);
    let loading = tokio::spawn(ca_secret::load_or_create(
        api.client(),
        "meshd-system",
        "meshd-ca",
        "cluster.local",
        rx,
    ));
    tokio::time::sleep(Duration::from_secs(5)).await;
    tx.send_replace(true);
    let ca = tokio::time::timeout(WAIT, loading)
        .await
        .expect("loaded in time")
        .expect("no panic")
        .expect("the CA");
    assert_eq!(
        stored(&api, "root-cert.pem").as_deref(),
        Some(ca.trust_bundle_pem().as_str())
    );
}

#[tokio::test]
async fn a_root_rotation_is_written_back_to_the_secret() {
    let api = FakeApi::new();
    let ca = load(&api, true).await.expect("the CA");
    let old = stored(&api, "root-cert.pem").expect("root-cert.pem");
    ca.stage_new_root().expect("stage");
    ca.activate_staged_root().expect("activate");
    let until = |what: &'static str, done: Box<dyn Fn() -> bool>| async move {
        tokio::time::timeout(Duration::from_secs(10), async {
            while !done() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{what}"));
    };
    let api2 = api.clone();
    let old2 = old.clone();
    until(
        "the new root reaches the Secret",
        Box::new(move || {
            stored(&api2, "root-cert.pem").is_some_and(|c| c != old2)
                && stored(&api2, "previous-root-cert.pem").as_deref() == Some(old2.as_str())
        }),
    )
    .await;
    let new = stored(&api, "root-cert.pem").expect("root-cert.pem");
    assert!(ca.trust_bundle_pem().starts_with(&new));

    ca.retire_previous_roots().expect("retire");
    let api2 = api.clone();
    until(
        "the old root leaves the Secret",
        Box::new(move || stored(&api2, "previous-root-cert.pem").is_none()),
    )
    .await;
    // A restart loads what was written.
    let reloaded = load(&api, false).await.expect("the CA");
    assert_eq!(reloaded.trust_bundle_pem(), new);
}

#[tokio::test]
async fn bad_secret_content_names_the_secret_and_the_key() {
    let (cert, key) = a_root();
    let (other_cert, _) = a_root();
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "missing key",
            secret(&[("root-cert.pem", &cert)]),
            "root-key.pem",
        ),
        (
            "missing certificate",
            secret(&[("root-key.pem", &key)]),
            "root-cert.pem",
        ),
        (
            "certificate not PEM",
            secret(&[("root-cert.pem", "hello"), ("root-key.pem", &key)]),
            "root-cert.pem",
        ),
        (
            "broken certificate PEM",
            secret(&[
                (
                    "root-cert.pem",
                    "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                ),
                ("root-key.pem", &key),
            ]),
            "root-cert.pem",
        ),
        (
            "key not PEM",
            secret(&[("root-cert.pem", &cert), ("root-key.pem", "hello")]),
            "root-key.pem",
        ),
        (
            "key unusable",
            secret(&[
                ("root-cert.pem", &cert),
                (
                    "root-key.pem",
                    "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                ),
            ]),
            "root-key.pem",
        ),
        (
            "key of another certificate",
            secret(&[("root-cert.pem", &other_cert), ("root-key.pem", &key)]),
            "root-cert.pem",
        ),
    ];
    for (case, object, key_name) in cases {
        let api = FakeApi::new();
        api.insert(SECRET, object);
        let err = load(&api, true).await.expect_err(case).to_string();
        assert!(
            err.contains("Secret meshd-system/meshd-ca") && err.contains(key_name),
            "{case}: {err}"
        );
        assert!(
            !err.contains(key.lines().nth(1).unwrap_or("-")),
            "{case}: leaks the key"
        );
        assert_eq!(
            api.count(&Method::POST, SECRETS),
            0,
            "{case}: never overwritten"
        );
        assert_eq!(
            api.count(&Method::PUT, SECRET),
            0,
            "{case}: never overwritten"
        );
    }
}

#[tokio::test]
async fn api_errors_name_the_secret() {
    let api = FakeApi::new();
    api.fail_next(Method::GET, 403);
    let err = load(&api, true).await.expect_err("forbidden").to_string();
    assert!(
        err.contains("cannot read Secret meshd-system/meshd-ca"),
        "{err}"
    );
}

/// A replica that is not the leader adopts each step of the leader's root
/// rotation from the Secret: its trust bundle and signing root follow.
#[tokio::test]
async fn a_follower_adopts_each_rotation_step_from_the_secret() {
    let api = FakeApi::new();
    let leader = load(&api, true).await.expect("the leader's CA");
    let follower = load(&api, false).await.expect("the follower's CA");
    let identity = meshd_controlplane::identity::Identity::new(
        Arc::new(follower),
        meshd_controlplane::identity::IdentityConfig::default(),
    );
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(api.client(), "meshd-system");
    let follow =
        || ca_secret::follow_once(&secrets, "meshd-system/meshd-ca", "meshd-ca", &identity);
    assert!(!follow().await.expect("read"), "nothing to adopt yet");

    type Step = fn(&Authority) -> meshd_ca::Result<()>;
    let steps: [(&str, Step); 3] = [
        ("stage", Authority::stage_new_root),
        ("activate", Authority::activate_staged_root),
        ("retire", Authority::retire_previous_roots),
    ];
    for (what, step) in steps {
        let before = stored(&api, "root-cert.pem");
        let staged_before = stored(&api, "staged-root-cert.pem");
        let previous_before = stored(&api, "previous-root-cert.pem");
        step(&leader).expect(what);
        // The leader's writer task puts the step into the Secret.
        tokio::time::timeout(Duration::from_secs(10), async {
            while stored(&api, "root-cert.pem") == before
                && stored(&api, "staged-root-cert.pem") == staged_before
                && stored(&api, "previous-root-cert.pem") == previous_before
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{what} reaches the Secret"));
        assert_ne!(
            identity.ca.trust_bundle_pem(),
            leader.trust_bundle_pem(),
            "{what}"
        );
        assert!(follow().await.expect("read"), "{what}: adopted");
        assert!(!follow().await.expect("read"), "{what}: adopted once");
        assert_eq!(
            identity.ca.trust_bundle_pem(),
            leader.trust_bundle_pem(),
            "{what}"
        );
    }
    assert_eq!(identity.ca.trust_anchors().len(), 1);
}

#[tokio::test]
async fn a_staged_root_without_its_key_is_refused_by_key() {
    let (cert, key) = a_root();
    let (staged, _) = a_root();
    let api = FakeApi::new();
    api.insert(
        SECRET,
        secret(&[
            ("root-cert.pem", &cert),
            ("root-key.pem", &key),
            ("staged-root-cert.pem", &staged),
        ]),
    );
    let err = load(&api, false).await.expect_err("refused").to_string();
    assert!(
        err.contains("meshd-system/meshd-ca") && err.contains("staged-root-key.pem"),
        "{err}"
    );
    assert!(!err.contains("PRIVATE KEY"), "{err}");
}
