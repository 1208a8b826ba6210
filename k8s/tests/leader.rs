//! Leader election against a stateful fake API server, through the real
//! `kube::Client`. Time is tokio's paused clock: waiting out a lease costs
//! nothing, and the outcomes (who holds the Lease, what it records) are
//! asserted, not how long anything took.

mod fake_api;

use std::time::Duration;

use fake_api::FakeApi;
use http::Method;
use meshd_k8s::leader::{LEASE_DURATION, LeaderElection, LeaseConfig};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/meshd-system/leases";
const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/meshd-system/leases/meshd-leader";
/// Generous virtual time for anything that should happen within a few
/// retry periods.
const SOON: Duration = Duration::from_secs(60);

fn lease(holder: Option<&str>, renew_time: &str, transitions: i32) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "meshd-leader", "namespace": "meshd-system"},
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": 15,
            "acquireTime": "2026-01-01T00:00:00.000000Z",
            "renewTime": renew_time,
            "leaseTransitions": transitions,
        }
    })
}

struct Candidate {
    leading: watch::Receiver<bool>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn campaign(api: &FakeApi, identity: &str) -> Candidate {
    let election = LeaderElection::new(
        api.client(),
        LeaseConfig::new("meshd-system", "meshd-leader", identity),
    );
    let leading = election.subscribe();
    let stop = CancellationToken::new();
    let task = tokio::spawn(election.run(stop.clone()));
    Candidate {
        leading,
        stop,
        task,
    }
}

impl Candidate {
    async fn until_leading(&mut self, want: bool) {
        tokio::time::timeout(SOON, self.leading.wait_for(|l| *l == want))
            .await
            .unwrap_or_else(|_| panic!("leadership never became {want}"))
            .expect("the election runs");
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(SOON, self.task)
            .await
            .expect("the election stops")
            .expect("the election task does not panic");
    }
}

fn spec(api: &FakeApi) -> Value {
    api.object(LEASE).expect("the Lease exists")["spec"].clone()
}

#[tokio::test(start_paused = true)]
async fn a_missing_lease_is_created_with_us_as_holder() {
    let api = FakeApi::new();
    let mut candidate = campaign(&api, "meshd-0");
    candidate.until_leading(true).await;
    assert_eq!(api.count(&Method::POST, LEASES), 1);
    let spec = spec(&api);
    assert_eq!(spec["holderIdentity"], "meshd-0");
    assert_eq!(spec["leaseDurationSeconds"], 15);
    assert_eq!(spec["leaseTransitions"], 0);
    assert!(spec["acquireTime"].is_string(), "{spec}");
    assert!(spec["renewTime"].is_string(), "{spec}");
    candidate.stop().await;
}

#[tokio::test(start_paused = true)]
async fn the_leader_keeps_renewing_its_lease() {
    let api = FakeApi::new();
    let mut candidate = campaign(&api, "meshd-0");
    candidate.until_leading(true).await;
    let first = spec(&api);
    tokio::time::sleep(LEASE_DURATION * 2).await;
    let later = spec(&api);
    assert!(
        api.count(&Method::PUT, LEASE) >= 2,
        "renewals: {:?}",
        api.seen()
    );
    assert_eq!(later["holderIdentity"], "meshd-0");
    assert_eq!(later["leaseTransitions"], 0, "a renewal is no transition");
    assert_eq!(later["acquireTime"], first["acquireTime"]);
    assert_ne!(later["renewTime"], first["renewTime"]);
    assert!(*candidate.leading.borrow());
    candidate.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_lease_another_replica_keeps_renewing_is_never_taken() {
    let api = FakeApi::new();
    api.insert(
        LEASE,
        lease(Some("meshd-1"), "2026-01-01T00:00:00.000000Z", 3),
    );
    // The other leader renews every second.
    let renewer = {
        let api = api.clone();
        tokio::spawn(async move {
            for i in 0u32.. {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let when = format!("2026-01-01T00:{:02}:{:02}.000000Z", i / 60 % 60, i % 60);
                api.insert(LEASE, lease(Some("meshd-1"), &when, 3));
            }
        })
    };
    let candidate = campaign(&api, "meshd-0");
    let mut ever_led = candidate.leading.clone();
    let watched = tokio::spawn(async move {
        let _ = ever_led.wait_for(|l| *l).await;
    });
    tokio::time::sleep(LEASE_DURATION * 4).await;
    assert!(!watched.is_finished(), "meshd-0 must never lead");
    assert_eq!(api.count(&Method::PUT, LEASE), 0, "{:?}", api.seen());
    assert_eq!(api.count(&Method::POST, LEASES), 0);
    assert!(api.count(&Method::GET, LEASE) >= 2, "it keeps checking");
    assert_eq!(spec(&api)["holderIdentity"], "meshd-1");
    renewer.abort();
    watched.abort();
    candidate.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_expired_lease_is_taken_over_with_one_more_transition() {
    let api = FakeApi::new();
    // The holder is gone: nobody renews.
    api.insert(
        LEASE,
        lease(Some("meshd-1"), "2026-01-01T00:00:00.000000Z", 3),
    );
    let mut candidate = campaign(&api, "meshd-0");
    // Respected for a lease duration as measured here, whatever its
    // renewTime says (another replica's clock).
    tokio::time::sleep(LEASE_DURATION - Duration::from_secs(3)).await;
    assert!(!*candidate.leading.borrow());
    assert_eq!(spec(&api)["holderIdentity"], "meshd-1");
    candidate.until_leading(true).await;
    let spec = spec(&api);
    assert_eq!(spec["holderIdentity"], "meshd-0");
    assert_eq!(spec["leaseTransitions"], 4);
    assert_ne!(spec["acquireTime"], "2026-01-01T00:00:00.000000Z");
    candidate.stop().await;
}

#[tokio::test(start_paused = true)]
async fn losing_the_write_race_leaves_us_a_follower() {
    let api = FakeApi::new();
    // Released by its last holder: free to take.
    api.insert(LEASE, lease(None, "2026-01-01T00:00:00.000000Z", 5));
    // meshd-1 writes first: our PUT carries a stale resourceVersion.
    api.fail_next_with(
        Method::PUT,
        409,
        LEASE,
        lease(Some("meshd-1"), "2026-01-01T00:00:01.000000Z", 6),
    );
    let candidate = campaign(&api, "meshd-0");
    let mut ever_led = candidate.leading.clone();
    let watched = tokio::spawn(async move {
        let _ = ever_led.wait_for(|l| *l).await;
    });
    // Well within meshd-1's lease: it is the leader, we are not.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(!watched.is_finished(), "meshd-0 must not lead");
    assert_eq!(api.count(&Method::PUT, LEASE), 1, "{:?}", api.seen());
    assert!(
        api.count(&Method::GET, LEASE) >= 2,
        "it re-reads after a 409"
    );
    assert_eq!(spec(&api)["holderIdentity"], "meshd-1");
    watched.abort();
    candidate.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_conflict_is_retried_and_the_free_lease_then_won() {
    let api = FakeApi::new();
    api.insert(LEASE, lease(None, "2026-01-01T00:00:00.000000Z", 5));
    api.fail_next(Method::PUT, 409);
    let mut candidate = campaign(&api, "meshd-0");
    candidate.until_leading(true).await;
    assert!(api.count(&Method::PUT, LEASE) >= 2);
    let spec = spec(&api);
    assert_eq!(spec["holderIdentity"], "meshd-0");
    assert_eq!(spec["leaseTransitions"], 6);
    candidate.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_leader_that_cannot_renew_steps_down_before_its_lease_expires() {
    let api = FakeApi::new();
    let mut candidate = campaign(&api, "meshd-0");
    candidate.until_leading(true).await;
    for _ in 0..64 {
        api.fail_next(Method::GET, 500);
    }
    let lost = tokio::time::Instant::now();
    candidate.until_leading(false).await;
    // Stepped down before another replica could take over (a lease
    // duration after the last renewal, by its clock).
    assert!(lost.elapsed() < LEASE_DURATION, "{:?}", lost.elapsed());
    candidate.stop().await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_releases_the_lease_and_the_next_replica_takes_over_at_once() {
    let api = FakeApi::new();
    let mut first = campaign(&api, "meshd-0");
    first.until_leading(true).await;
    let mut second = campaign(&api, "meshd-1");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!*second.leading.borrow());

    let mut first_leading = first.leading.clone();
    first.stop().await;
    assert!(!*first_leading.borrow_and_update(), "leader work stops");
    assert!(spec(&api)["holderIdentity"].is_null(), "{}", spec(&api));

    // Well before meshd-0's lease would have expired.
    let released = tokio::time::Instant::now();
    second.until_leading(true).await;
    assert!(released.elapsed() < LEASE_DURATION / 2);
    let spec = spec(&api);
    assert_eq!(spec["holderIdentity"], "meshd-1");
    assert_eq!(spec["leaseTransitions"], 1);
    second.stop().await;
}
