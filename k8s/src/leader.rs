//! Leader election on a `coordination.k8s.io/v1` Lease.
//!
//! Every replica serves xDS, SDS and the webhook; only the leader does the
//! cluster-wide writes that must happen once: creating the root CA Secret
//! and patching the webhook configurations' `caBundle`.
//!
//! ```text
//! LeaderElection::run ──GET / POST / PUT (resourceVersion)──> Lease <namespace>/<name>
//!        │ every retry period                                  holderIdentity, renewTime,
//!        v                                                     leaseDurationSeconds, ...
//! watch<bool> (leading) ──> CA Secret creation, caBundle patcher, /readyz "leader:"
//! ```
//!
//! The rules are client-go's: a Lease held by another replica is taken over
//! only once its record has stayed unchanged for a whole lease duration *as
//! this replica measured it* (its own monotonic clock: replicas' wall
//! clocks may disagree, and `renewTime` is another replica's wall clock).
//! Writes are conditional on the `resourceVersion` read, so two candidates
//! never both win: the loser gets 409 Conflict. A leader whose renewals keep
//! failing steps down after the renew deadline, which is shorter than the
//! lease duration, so it has stopped before anyone else may take over. On
//! shutdown the leader clears the holder, so the next replica takes over at
//! its next retry instead of a lease duration later.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// How long a Lease stays valid without renewal.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How long a leader keeps trying to renew before it steps down.
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// How often candidates try to acquire, and the leader renews.
pub const RETRY_PERIOD: Duration = Duration::from_secs(2);

/// Which Lease, who we are, and the timings.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// The holder identity written into the Lease (the pod name).
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// The standard timings: 15s lease, 10s renew deadline, 2s retry.
    pub fn new(namespace: &str, name: &str, identity: &str) -> Self {
        LeaseConfig {
            namespace: namespace.to_string(),
            name: name.to_string(),
            identity: identity.to_string(),
            lease_duration: LEASE_DURATION,
            renew_deadline: RENEW_DEADLINE,
            retry_period: RETRY_PERIOD,
        }
    }
}

/// What one attempt to acquire or renew found.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    /// We hold the Lease (created, renewed, or taken over).
    Held,
    /// Another replica holds a valid Lease.
    HeldBy(String),
    /// Our write lost a race (409): someone else wrote the Lease first.
    Conflict,
}

/// The Lease record as last seen, and when (our clock) it last changed.
struct Observed {
    resource_version: Option<String>,
    holder: Option<String>,
    at: Instant,
}

/// Campaigns for, holds and releases one Lease. Leadership is published on
/// a watch channel ([`LeaderElection::subscribe`]).
pub struct LeaderElection {
    api: Api<Lease>,
    config: LeaseConfig,
    leading: watch::Sender<bool>,
    observed: Option<Observed>,
    /// The Lease as our last successful write left it (for renewal and
    /// release).
    held: Option<Lease>,
}

impl LeaderElection {
    pub fn new(client: kube::Client, config: LeaseConfig) -> Self {
        LeaderElection {
            api: Api::namespaced(client, &config.namespace),
            config,
            leading: watch::Sender::new(false),
            observed: None,
            held: None,
        }
    }

    /// Whether this replica leads, now and as it changes.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.leading.subscribe()
    }

    /// Campaigns until `shutdown`, then releases the Lease if held. Never
    /// returns an error: API failures are logged and retried.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let span = tracing::info_span!(
            "leader_election",
            lease = %format!("{}/{}", self.config.namespace, self.config.name),
            identity = %self.config.identity,
        );
        async move {
            let mut last_renewal: Option<Instant> = None;
            loop {
                let leading = *self.leading.borrow();
                // A leader must give up before its Lease can expire for the
                // others, so an attempt may not outlast the renew deadline.
                let budget = match (leading, last_renewal) {
                    (true, Some(at)) => (at + self.config.renew_deadline)
                        .saturating_duration_since(Instant::now())
                        .max(Duration::from_millis(1)),
                    _ => self.config.renew_deadline,
                };
                let attempt = tokio::select! {
                    () = shutdown.cancelled() => break,
                    attempt = tokio::time::timeout(budget, self.try_acquire_or_renew()) => attempt,
                };
                match attempt {
                    Ok(Ok(Attempt::Held)) => {
                        last_renewal = Some(Instant::now());
                        if !leading {
                            tracing::info!("became the leader");
                            self.leading.send_replace(true);
                        }
                    }
                    Ok(Ok(Attempt::HeldBy(holder))) => {
                        if leading {
                            tracing::warn!(%holder, "lost the Lease to another replica; stepping down");
                            self.step_down();
                        } else {
                            tracing::debug!(%holder, "another replica leads");
                        }
                    }
                    Ok(Ok(Attempt::Conflict)) => {
                        tracing::debug!("the Lease changed under us (409 Conflict); retrying");
                        self.give_up_if_past_deadline(leading, last_renewal);
                    }
                    Ok(Err(e)) => {
                        tracing::warn!("cannot acquire or renew the Lease: {e}");
                        self.give_up_if_past_deadline(leading, last_renewal);
                    }
                    Err(_) => {
                        tracing::warn!("the API server did not answer within {budget:?}");
                        self.give_up_if_past_deadline(leading, last_renewal);
                    }
                }
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(self.config.retry_period) => {}
                }
            }
            if *self.leading.borrow() {
                // Stop leader work before the Lease is handed on.
                self.leading.send_replace(false);
                match tokio::time::timeout(self.config.retry_period, self.release()).await {
                    Ok(Ok(())) => tracing::info!("released the Lease"),
                    Ok(Err(e)) => tracing::warn!("cannot release the Lease: {e}"),
                    Err(_) => tracing::warn!("releasing the Lease timed out"),
                }
            }
        }
        .instrument(span)
        .await
    }

    fn step_down(&mut self) {
        self.held = None;
        self.leading.send_replace(false);
    }

    fn give_up_if_past_deadline(&mut self, leading: bool, last_renewal: Option<Instant>) {
        let expired = last_renewal.is_none_or(|at| at.elapsed() >= self.config.renew_deadline);
        if leading && expired {
            tracing::warn!(
                "could not renew the Lease within the renew deadline ({:?}); stepping down",
                self.config.renew_deadline
            );
            self.step_down();
        }
    }

    /// Notes when the record last changed, by our clock.
    fn observe(&mut self, lease: &Lease) {
        let resource_version = lease.metadata.resource_version.clone();
        let holder = holder_of(lease);
        let changed = self
            .observed
            .as_ref()
            .is_none_or(|o| o.resource_version != resource_version || o.holder != holder);
        if changed {
            self.observed = Some(Observed {
                resource_version,
                holder,
                at: Instant::now(),
            });
        }
    }

    fn record(&self, previous: Option<&LeaseSpec>) -> LeaseSpec {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let previous = previous.cloned().unwrap_or_default();
        let ours = previous.holder_identity.as_deref() == Some(self.config.identity.as_str());
        LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.config.lease_duration.as_secs()).unwrap_or(i32::MAX),
            ),
            acquire_time: if ours {
                previous.acquire_time.clone().or(Some(now.clone()))
            } else {
                Some(now.clone())
            },
            renew_time: Some(now),
            lease_transitions: Some(if ours {
                previous.lease_transitions.unwrap_or(0)
            } else {
                previous
                    .lease_transitions
                    .map_or(0, |t| t.saturating_add(1))
            }),
            ..previous
        }
    }

    async fn try_acquire_or_renew(&mut self) -> kube::Result<Attempt> {
        let name = self.config.name.clone();
        let Some(current) = self.api.get_opt(&name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name),
                    namespace: Some(self.config.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(self.record(None)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(&created);
                    self.held = Some(created);
                    Ok(Attempt::Held)
                }
                Err(e) if is_conflict(&e) => Ok(Attempt::Conflict),
                Err(e) => Err(e),
            };
        };
        self.observe(&current);
        if let Some(holder) = holder_of(&current)
            && holder != self.config.identity
        {
            let duration = current
                .spec
                .as_ref()
                .and_then(|s| s.lease_duration_seconds)
                .and_then(|s| u64::try_from(s).ok())
                .map_or(self.config.lease_duration, Duration::from_secs);
            let unchanged_since = self.observed.as_ref().map_or_else(Instant::now, |o| o.at);
            if unchanged_since.elapsed() < duration {
                return Ok(Attempt::HeldBy(holder));
            }
            tracing::info!(%holder, "the Lease expired; taking over");
        }
        let mut next = current.clone();
        next.spec = Some(self.record(current.spec.as_ref()));
        // `current` carries its resourceVersion: the write fails with 409 if
        // anyone wrote in between.
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &next)
            .await
        {
            Ok(updated) => {
                self.observe(&updated);
                self.held = Some(updated);
                Ok(Attempt::Held)
            }
            Err(e) if is_conflict(&e) => Ok(Attempt::Conflict),
            Err(e) => Err(e),
        }
    }

    /// Clears the holder so a candidate need not wait out the lease. Reads
    /// the Lease first: a renewal cut short by shutdown may have landed
    /// after our last known version.
    async fn release(&mut self) -> kube::Result<()> {
        if self.held.take().is_none() {
            return Ok(());
        }
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            return Ok(());
        };
        if holder_of(&lease).as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        if let Some(spec) = lease.spec.as_mut() {
            spec.holder_identity = None;
            spec.renew_time = Some(MicroTime(k8s_openapi::jiff::Timestamp::now()));
        }
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            // Someone else wrote it: it is no longer ours to release.
            Err(e) if is_conflict(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

fn holder_of(lease: &Lease) -> Option<String> {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.clone())
        .filter(|h| !h.is_empty())
}

pub(crate) fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 409)
}
