//! The generated root CA kept in a Kubernetes Secret, so every replica
//! issues from the same root.
//!
//! ```text
//! startup: GET Secret <namespace>/<name> ──found──> parse ──> Authority (from the Secret)
//!              │ 404
//!              ├─ leader:   generate (Authority) ──POST──> 201 ──> Authority
//!              │                                   └─409 (another replica won) ──> GET theirs
//!              └─ follower: wait for the leader (poll, or leadership comes to us)
//!
//! rotation: Authority ──CaStore::save──> SecretStore (memory) ──watch──> writer task ──PUT──> Secret
//! ```
//!
//! The Secret is `Opaque` with `root-cert.pem`, `root-key.pem` and, while a
//! root rotation is under way, `staged-root-cert.pem` and
//! `staged-root-key.pem` (step 1: trusted, not signing) or
//! `previous-root-cert.pem` (step 2: still trusted) — the layout of
//! `--ca-dir`. Replicas that are not the leader re-read it every
//! [`FOLLOW_INTERVAL`] and adopt each step ([`follow`]), so proxies
//! connected to any replica trust a new root before any replica signs with
//! it, and keep trusting the old one until every replica has moved on. `meshd-ca` knows nothing of Kubernetes: it sees a
//! [`CaStore`] whose `load` answers from memory.
//!
//! Why `save` does not write the Secret itself: [`CaStore`] is synchronous
//! and the Authority calls it with its state locked, from async code on a
//! runtime worker. Blocking there on an API round trip (`block_in_place` or
//! `Handle::block_on`) would stall signing for every stream, and panics on
//! a current-thread runtime. So `save` records the root in memory and wakes
//! a writer task, which replaces the Secret (conditional on its
//! resourceVersion) and retries with backoff until it succeeds. Only the
//! latest root matters, so a burst of saves is one write.
//!
//! Key material never reaches a log or an error message: errors name the
//! Secret and the key (the data field), never its content.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use meshd_ca::{Authority, CaStore, PrivateKey, StagedRoot, StoredRoot};
use tokio::sync::watch;
use tracing::Instrument;

use crate::leader::is_conflict;

/// The root certificate, PEM.
pub const ROOT_CERT: &str = "root-cert.pem";
/// The root's private key, PEM (PKCS#8).
pub const ROOT_KEY: &str = "root-key.pem";
/// Roots still trusted during a rotation away from them, PEM.
pub const PREVIOUS_ROOT_CERT: &str = "previous-root-cert.pem";
/// The next root, trusted but not yet signing (first step of a rotation).
pub const STAGED_ROOT_CERT: &str = "staged-root-cert.pem";
/// The next root's private key.
pub const STAGED_ROOT_KEY: &str = "staged-root-key.pem";

/// How often a replica that is not the leader re-reads the Secret to
/// follow the leader's root rotations. The leader waits
/// [`REPLICA_SETTLE`] after each rotation step so every replica has
/// followed (and pushed to its proxies) before the next.
pub const FOLLOW_INTERVAL: Duration = Duration::from_secs(5);
pub const REPLICA_SETTLE: Duration = Duration::from_secs(12);

/// How often a follower looks for the Secret the leader creates.
pub const FOLLOWER_POLL: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read Secret {secret}: {source}")]
    Read { secret: String, source: kube::Error },
    #[error("cannot create Secret {secret}: {source}")]
    Create { secret: String, source: kube::Error },
    #[error("Secret {secret}, key `{key}`: {problem}")]
    Content {
        secret: String,
        key: &'static str,
        problem: String,
    },
    #[error("the root CA for Secret {secret}: {source}")]
    Ca {
        secret: String,
        source: meshd_ca::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A [`CaStore`] over one Secret: reads from memory, writes through a
/// background task.
pub struct SecretStore {
    api: Api<Secret>,
    namespace: String,
    name: String,
    root: Mutex<Option<StoredRoot>>,
    /// Bumped by every `save` once the Secret exists; the writer catches up.
    saves: watch::Sender<u64>,
}

impl std::fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretStore")
            .field("secret", &self.secret())
            .finish_non_exhaustive()
    }
}

impl SecretStore {
    fn new(client: kube::Client, namespace: &str, name: &str, root: Option<StoredRoot>) -> Self {
        SecretStore {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            name: name.to_string(),
            root: Mutex::new(root),
            saves: watch::Sender::new(0),
        }
    }

    fn secret(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    fn current(&self) -> Option<StoredRoot> {
        self.root.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// From now on, every save is written to the Secret. The writer ends
    /// when the store is dropped.
    fn persist_saves(self: &Arc<Self>, leading: watch::Receiver<bool>) {
        let mut saves = self.saves.subscribe();
        saves.mark_unchanged();
        let store: Weak<SecretStore> = Arc::downgrade(self);
        let span = tracing::info_span!(parent: None, "ca_secret_writer", secret = %self.secret());
        tokio::spawn(
            async move {
                while saves.changed().await.is_ok() {
                    let mut backoff = Duration::from_secs(1);
                    loop {
                        let Some(store) = store.upgrade() else { return };
                        let Some(root) = store.current() else { break };
                        // Only the leader writes the root: a replica that
                        // lost the lease while retrying must not overwrite
                        // its successor's.
                        if !*leading.borrow() {
                            tracing::warn!("not the leader any more: the root CA is not written");
                            break;
                        }
                        match store.write(&root).await {
                            Ok(()) => {
                                tracing::info!("wrote the root CA to its Secret");
                                break;
                            }
                            Err(e) => tracing::warn!(
                                "cannot write the root CA, retrying in {backoff:?}: {e}"
                            ),
                        }
                        drop(store);
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                }
            }
            .instrument(span),
        );
    }

    /// Replaces the Secret's data, conditional on the version just read.
    async fn write(&self, root: &StoredRoot) -> Result<(), kube::Error> {
        match self.api.get_opt(&self.name).await? {
            Some(mut secret) => {
                secret.data = Some(secret_data(root));
                secret.type_ = Some("Opaque".into());
                self.api
                    .replace(&self.name, &PostParams::default(), &secret)
                    .await?;
            }
            None => {
                self.api
                    .create(
                        &PostParams::default(),
                        &secret_of(&self.name, &self.namespace, root),
                    )
                    .await?;
            }
        }
        Ok(())
    }
}

impl CaStore for SecretStore {
    fn load(&self) -> meshd_ca::Result<Option<StoredRoot>> {
        Ok(self.current())
    }

    fn save(&self, root: &StoredRoot) -> meshd_ca::Result<()> {
        *self.root.lock().unwrap_or_else(|p| p.into_inner()) = Some(root.clone());
        self.saves.send_modify(|n| *n += 1);
        Ok(())
    }
}

fn secret_data(root: &StoredRoot) -> BTreeMap<String, ByteString> {
    let mut data = BTreeMap::from([
        (
            ROOT_CERT.to_string(),
            ByteString(root.cert_pem.clone().into_bytes()),
        ),
        (
            ROOT_KEY.to_string(),
            ByteString(root.key.expose_pem().as_bytes().to_vec()),
        ),
    ]);
    if !root.previous_certs_pem.is_empty() {
        data.insert(
            PREVIOUS_ROOT_CERT.to_string(),
            ByteString(root.previous_certs_pem.concat().into_bytes()),
        );
    }
    if let Some(staged) = &root.staged {
        data.insert(
            STAGED_ROOT_CERT.to_string(),
            ByteString(staged.cert_pem.clone().into_bytes()),
        );
        data.insert(
            STAGED_ROOT_KEY.to_string(),
            ByteString(staged.key.expose_pem().as_bytes().to_vec()),
        );
    }
    data
}

fn secret_of(name: &str, namespace: &str, root: &StoredRoot) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_string(),
                "meshd".to_string(),
            )])),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(secret_data(root)),
        ..Default::default()
    }
}

/// Reads the stored root out of a Secret, naming the key of any problem.
pub fn stored_root(secret_name: &str, secret: &Secret) -> Result<StoredRoot> {
    let empty = BTreeMap::new();
    let data = secret.data.as_ref().unwrap_or(&empty);
    let problem = |key: &'static str, problem: &str| Error::Content {
        secret: secret_name.to_string(),
        key,
        problem: problem.to_string(),
    };
    let text = |key: &'static str| -> Result<Option<String>> {
        data.get(key)
            .map(|b| {
                String::from_utf8(b.0.clone())
                    .map_err(|_| problem(key, "is not text; accepted: PEM"))
            })
            .transpose()
    };
    let cert_pem = text(ROOT_CERT)?.ok_or_else(|| {
        problem(
            ROOT_CERT,
            "is missing; accepted: the root certificate in PEM",
        )
    })?;
    if !cert_pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(problem(
            ROOT_CERT,
            "holds no PEM certificate; accepted: the root certificate in PEM",
        ));
    }
    let key = text(ROOT_KEY)?.ok_or_else(|| {
        problem(
            ROOT_KEY,
            "is missing; accepted: the root's private key in PEM (PKCS#8)",
        )
    })?;
    if !key.contains("PRIVATE KEY-----") {
        return Err(problem(
            ROOT_KEY,
            "holds no PEM private key; accepted: the root's private key in PEM (PKCS#8)",
        ));
    }
    let previous = text(PREVIOUS_ROOT_CERT)?;
    let staged = match (text(STAGED_ROOT_CERT)?, text(STAGED_ROOT_KEY)?) {
        (None, None) => None,
        (Some(cert_pem), Some(key)) => Some(StagedRoot {
            cert_pem,
            key: PrivateKey::from_pem(key),
        }),
        (Some(_), None) => {
            return Err(problem(
                STAGED_ROOT_KEY,
                "is missing while staged-root-cert.pem is set; accepted: both or neither",
            ));
        }
        (None, Some(_)) => {
            return Err(problem(
                STAGED_ROOT_CERT,
                "is missing while staged-root-key.pem is set; accepted: both or neither",
            ));
        }
    };
    Ok(StoredRoot {
        staged,
        cert_pem,
        key: PrivateKey::from_pem(key),
        previous_certs_pem: previous
            .into_iter()
            .filter(|p| !p.trim().is_empty())
            .collect(),
    })
}

/// Builds the Authority from a store, turning `meshd-ca`'s "stored root
/// …" errors into ones naming the Secret's key.
fn authority(trust_domain: &str, store: Arc<SecretStore>, secret: &str) -> Result<Authority> {
    Authority::load_or_generate(trust_domain, store).map_err(|source| match source {
        meshd_ca::Error::File { path, problem } => {
            let key = match path.to_str() {
                Some("stored root key") => ROOT_KEY,
                Some("previous root certificate") => PREVIOUS_ROOT_CERT,
                Some("stored staged root key") => STAGED_ROOT_KEY,
                Some("stored staged root certificate") => STAGED_ROOT_CERT,
                _ => ROOT_CERT,
            };
            Error::Content {
                secret: secret.to_string(),
                key,
                problem: problem
                    .replace("the stored root key", &format!("the key in `{ROOT_KEY}`")),
            }
        }
        source => Error::Ca {
            secret: secret.to_string(),
            source,
        },
    })
}

/// The mesh CA from Secret `<namespace>/<name>`: loaded when it exists;
/// otherwise generated and created by the leader, and waited for by the
/// others. Root rotations are written back to the Secret.
#[tracing::instrument(skip_all, fields(secret = %format!("{namespace}/{name}")))]
pub async fn load_or_create(
    client: kube::Client,
    namespace: &str,
    name: &str,
    trust_domain: &str,
    mut leading: watch::Receiver<bool>,
) -> Result<Authority> {
    let secret = format!("{namespace}/{name}");
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut waiting_logged = false;
    loop {
        let found = api.get_opt(name).await.map_err(|source| Error::Read {
            secret: secret.clone(),
            source,
        })?;
        if let Some(found) = found {
            let root = stored_root(&secret, &found)?;
            let store = Arc::new(SecretStore::new(client, namespace, name, Some(root)));
            let ca = authority(trust_domain, store.clone(), &secret)?;
            store.persist_saves(leading.clone());
            tracing::info!("loaded the root CA from its Secret");
            return Ok(ca);
        }
        if *leading.borrow_and_update() {
            let store = Arc::new(SecretStore::new(client.clone(), namespace, name, None));
            // Generates a root and saves it into the store's memory only:
            // the Secret is created below, where a lost race can be seen.
            let ca = authority(trust_domain, store.clone(), &secret)?;
            let Some(root) = store.current() else {
                // load_or_generate always saves what it generated.
                return Err(Error::Content {
                    secret,
                    key: ROOT_CERT,
                    problem: "the generated root was not stored".into(),
                });
            };
            match api
                .create(&PostParams::default(), &secret_of(name, namespace, &root))
                .await
            {
                Ok(_) => {
                    store.persist_saves(leading.clone());
                    tracing::info!("generated the root CA and created its Secret");
                    return Ok(ca);
                }
                Err(e) if is_conflict(&e) => {
                    tracing::info!("another replica created the root CA Secret first; using it");
                    continue;
                }
                Err(source) => return Err(Error::Create { secret, source }),
            }
        }
        if !waiting_logged {
            tracing::info!("waiting for the leader to create the root CA Secret");
            waiting_logged = true;
        }
        tokio::select! {
            changed = leading.changed() => if changed.is_err() {
                tokio::time::sleep(FOLLOWER_POLL).await;
            },
            () = tokio::time::sleep(FOLLOWER_POLL) => {}
        }
    }
}

/// While this replica is not the leader, keeps its CA in step with the
/// Secret the leader writes: each rotation step the leader takes is adopted
/// within [`FOLLOW_INTERVAL`] and announced to this replica's streams, which
/// push the new trust bundle (and, once the new root signs, new
/// certificates) to their proxies. A Secret that cannot be read or parsed
/// is logged and the CA keeps what it has.
pub fn follow(
    client: kube::Client,
    namespace: &str,
    name: &str,
    identity: Arc<meshd_controlplane::identity::Identity>,
    mut leading: watch::Receiver<bool>,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let secret = format!("{namespace}/{name}");
    let name = name.to_string();
    let span = tracing::info_span!("ca_follower", secret = %secret);
    tokio::spawn(
        async move {
            let mut caught_up = false;
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(FOLLOW_INTERVAL) => {}
                    changed = leading.changed() => if changed.is_err() {
                        // The election is over (shutting down): poll.
                        tokio::time::sleep(FOLLOW_INTERVAL).await;
                    },
                }
                // The leader is the one writing and follows no one, once it
                // has caught up with what its predecessor wrote last.
                let leader = *leading.borrow_and_update();
                if leader && caught_up {
                    continue;
                }
                match follow_once(&api, &secret, &name, &identity).await {
                    Ok(adopted) => {
                        if adopted {
                            identity.changed();
                        }
                        caught_up = leader;
                    }
                    Err(e) => tracing::warn!("cannot follow the root CA Secret: {e}"),
                }
            }
        }
        .instrument(span),
    )
}

/// One look at the Secret: whether the CA adopted something new.
pub async fn follow_once(
    api: &Api<Secret>,
    secret: &str,
    name: &str,
    identity: &meshd_controlplane::identity::Identity,
) -> Result<bool> {
    let found = api.get_opt(name).await.map_err(|source| Error::Read {
        secret: secret.to_string(),
        source,
    })?;
    let Some(found) = found else {
        return Ok(false);
    };
    let root = stored_root(secret, &found)?;
    identity.ca.adopt(&root).map_err(|source| Error::Ca {
        secret: secret.to_string(),
        source,
    })
}
