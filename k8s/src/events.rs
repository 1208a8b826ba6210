//! Kubernetes Events for rejected routing annotations: `kubectl describe`
//! of the Service, Namespace or Pod shows what is wrong with its
//! annotation, the value and what is accepted.
//!
//! ```text
//! publisher ── ServerState::set_routing_errors ──watch<Vec<AnnotationError>>──> recorder
//!                                                                                 │ new error:
//!   GET the object's metadata (its uid, so `kubectl describe` finds the Event) <──┤ Warning
//!   POST events.k8s.io/v1 Event (regarding: the object) <─────────────────────────┘ resolved:
//!                                                                                   Normal
//! ```
//!
//! Each error is reported once, when it appears; it is reported again only
//! after it has gone away and come back. When the last error on an
//! annotation goes away, a Normal event says the value is accepted again.
//! The rest (logging, metrics, `/debug/routing`) is the publisher's.
//! With several replicas, [`spawn_leader_event_recorder`] posts from the
//! leader only.
//!
//! kube-rs's `Recorder` is not used: it folds every event with the same
//! reason on one object into a series that keeps the first note, so a
//! second bad annotation on a Service would never be named.
//!
//! Failing to post an event is logged and not retried: the error is still
//! logged, counted and listed by the control plane.
//!
//! Rejected config gets the same treatment ([`spawn_nack_event_recorder`]):
//! a Warning on the proxy's Pod once per new NACK (proxy, type, Envoy's
//! message), from the replica the proxy is connected to (each replica
//! knows only its own proxies' NACKs, so every replica posts).

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Namespace, ObjectReference, Pod, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use kube::core::PartialObjectMeta;
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

use meshd_api::annotations::routing::{AnnotationError, Severity};
use meshd_controlplane::xds::ProxyNack;

/// `reportingController` of every event.
pub const REPORTING_CONTROLLER: &str = "meshd";
/// The reason of the Warning for a rejected annotation.
pub const REASON_INVALID: &str = "InvalidRoutingAnnotation";
/// The reason of the Normal event when an annotation is accepted again.
pub const REASON_RESOLVED: &str = "RoutingAnnotationAccepted";
/// The reason of the Warning for an annotation in force that likely does
/// not do what it says (an identity rule on pods that accept plaintext).
pub const REASON_WARNING: &str = "AnnotationWarning";
/// The reason of the Normal event when that warning no longer applies.
pub const REASON_WARNING_CLEARED: &str = "AnnotationWarningCleared";
/// What meshd did: it validated the object's annotations.
pub const ACTION: &str = "Validate";
/// The reason of the Warning on a Pod whose proxy rejected its config.
pub const REASON_NACK: &str = "ProxyConfigRejected";
/// What meshd did: it configured the Pod's proxy.
pub const ACTION_CONFIGURE: &str = "Configure";
/// How many NACK events a replica posts a minute at most: a bad resource
/// every proxy rejects at once is worth a few hundred Events, not one per
/// proxy of a large mesh in the same second. The rest are logged.
pub const NACK_EVENTS_PER_MINUTE: usize = 60;
/// How long a NACK reported stays reported after it is gone: a proxy that
/// reconnects and rejects the same thing again is not reported twice.
const NACK_MEMORY: std::time::Duration = std::time::Duration::from_secs(3600);
/// Kubernetes refuses notes over 1 kB.
const MAX_NOTE_BYTES: usize = 1024;
/// The longest annotation value quoted in a note.
const MAX_QUOTED_VALUE: usize = 200;
/// Events about cluster-scoped objects (Namespaces) live here: the API
/// server accepts them only in `default` or `kube-system`.
const CLUSTER_SCOPED_EVENT_NAMESPACE: &str = "default";

/// Posts an event for every routing annotation error as it appears, until
/// `errors` closes. `instance` is the `reportingInstance` (the pod's name
/// where meshd runs in a cluster).
pub fn spawn_event_recorder(
    client: Client,
    errors: watch::Receiver<Vec<AnnotationError>>,
    instance: String,
) -> JoinHandle<()> {
    let recorder = EventRecorder::new(client, instance);
    tokio::spawn(
        recorder
            .run(errors)
            .instrument(tracing::info_span!("routing_events")),
    )
}

/// [`spawn_event_recorder`] for one replica among several: events are
/// posted only while `leading` is true, so the replicas (each of which
/// publishes the same errors) do not each post them. A replica that
/// becomes the leader reports the errors current then once more: it cannot
/// know which its predecessor reported, and one repeat beats a gap.
pub fn spawn_leader_event_recorder(
    client: Client,
    errors: watch::Receiver<Vec<AnnotationError>>,
    instance: String,
    mut leading: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(
        async move {
            loop {
                if leading.wait_for(|leader| *leader).await.is_err() {
                    return;
                }
                let recorder = EventRecorder::new(client.clone(), instance.clone());
                tokio::select! {
                    () = recorder.run(errors.clone()) => return,
                    stepped_down = leading.wait_for(|leader| !*leader) => {
                        if stepped_down.is_err() {
                            return;
                        }
                    }
                }
            }
        }
        .instrument(tracing::info_span!("routing_events")),
    )
}

/// Remembers what has been reported, so each error is reported once.
pub struct EventRecorder {
    client: Client,
    instance: String,
    reported: BTreeSet<AnnotationError>,
}

impl EventRecorder {
    pub fn new(client: Client, instance: String) -> Self {
        EventRecorder {
            client,
            instance,
            reported: BTreeSet::new(),
        }
    }

    /// Reports the current errors, then every change.
    pub async fn run(mut self, mut errors: watch::Receiver<Vec<AnnotationError>>) {
        loop {
            let current = errors.borrow_and_update().clone();
            self.observe(&current).await;
            if errors.changed().await.is_err() {
                return;
            }
        }
    }

    /// Posts a Warning for each error not reported yet and a Normal event
    /// for each annotation whose errors are all gone; `current` becomes
    /// what has been reported.
    pub async fn observe(&mut self, current: &[AnnotationError]) {
        let current: BTreeSet<AnnotationError> = current.iter().cloned().collect();
        for error in current.difference(&self.reported) {
            self.publish(error, Kind::Invalid).await;
        }
        // A warning does not clear an error on the same annotation, nor
        // the other way round: each has its own Normal event when gone.
        let still_wrong: BTreeSet<(Severity, &str, &str)> = current
            .iter()
            .map(|e| (e.severity, e.object.as_str(), e.annotation.as_str()))
            .collect();
        let mut resolved = BTreeSet::new();
        for error in self.reported.difference(&current) {
            let key = (
                error.severity,
                error.object.as_str(),
                error.annotation.as_str(),
            );
            if !still_wrong.contains(&key) && resolved.insert(key) {
                self.publish(error, Kind::Resolved).await;
            }
        }
        self.reported = current;
    }

    async fn publish(&self, error: &AnnotationError, kind: Kind) {
        let Some((object_kind, namespace, name)) = error.object_ref() else {
            tracing::warn!(object = %error.object, "no Kubernetes object to attach a routing event to");
            return;
        };
        let regarding = match self.reference(object_kind, namespace, name).await {
            Ok(Some(reference)) => reference,
            // Deleted since: nobody is left to read the event.
            Ok(None) => {
                tracing::debug!(object = %error.object, "no event: the object is gone");
                return;
            }
            Err(e) => {
                // Still worth posting: `kubectl get events` lists it, only
                // `kubectl describe` (which matches the uid) will not.
                tracing::info!(object = %error.object, "cannot read the object's uid for its event: {e}");
                ObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some(object_kind.into()),
                    namespace: namespace.map(str::to_string),
                    name: Some(name.into()),
                    ..ObjectReference::default()
                }
            }
        };
        let event = event(error, kind, regarding, &self.instance);
        let namespace = event.metadata.namespace.clone().unwrap_or_default();
        let events: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        match events.create(&PostParams::default(), &event).await {
            Ok(_) => {
                tracing::debug!(object = %error.object, annotation = %error.annotation, ?kind, "event posted")
            }
            Err(e) => tracing::warn!(
                object = %error.object,
                annotation = %error.annotation,
                "cannot post the routing annotation event: {e}"
            ),
        }
    }

    /// The object's reference with its uid; `None` if it does not exist.
    async fn reference(
        &self,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> kube::Result<Option<ObjectReference>> {
        object_reference(&self.client, kind, namespace, name).await
    }
}

/// Posts a Warning on a proxy's Pod for every NACK as it appears (see the
/// module docs), until `nacks` closes. `instance` is the
/// `reportingInstance`.
pub fn spawn_nack_event_recorder(
    client: Client,
    nacks: watch::Receiver<Vec<ProxyNack>>,
    instance: String,
) -> JoinHandle<()> {
    let recorder = NackEventRecorder::new(client, instance);
    tokio::spawn(
        recorder
            .run(nacks)
            .instrument(tracing::info_span!("nack_events")),
    )
}

/// Remembers which NACKs were reported (and when), and how many events
/// went out this minute.
pub struct NackEventRecorder {
    client: Client,
    instance: String,
    reported: std::collections::BTreeMap<NackKey, tokio::time::Instant>,
    window: (tokio::time::Instant, usize),
    suppressed: usize,
}

/// What makes a NACK new: the proxy, the type and Envoy's message (a new
/// version rejected for the same reason is the same problem).
type NackKey = (String, &'static str, String);

impl NackEventRecorder {
    pub fn new(client: Client, instance: String) -> Self {
        NackEventRecorder {
            client,
            instance,
            reported: Default::default(),
            window: (tokio::time::Instant::now(), 0),
            suppressed: 0,
        }
    }

    /// Reports the current NACKs, then every change.
    pub async fn run(mut self, mut nacks: watch::Receiver<Vec<ProxyNack>>) {
        loop {
            let current = nacks.borrow_and_update().clone();
            self.observe(&current).await;
            if nacks.changed().await.is_err() {
                return;
            }
        }
    }

    /// The NACKs of `current` not reported yet; forgets those gone for
    /// longer than [`NACK_MEMORY`].
    pub fn new_nacks<'a>(&mut self, current: &'a [ProxyNack]) -> Vec<&'a ProxyNack> {
        let now = tokio::time::Instant::now();
        let keys: BTreeSet<NackKey> = current.iter().map(nack_key).collect();
        self.reported
            .retain(|key, at| keys.contains(key) || now.duration_since(*at) < NACK_MEMORY);
        let mut fresh = Vec::new();
        for nack in current {
            let key = nack_key(nack);
            if let std::collections::btree_map::Entry::Vacant(slot) = self.reported.entry(key) {
                slot.insert(now);
                fresh.push(nack);
            }
        }
        fresh
    }

    /// Whether another event fits in this minute's budget.
    fn allow(&mut self) -> bool {
        let now = tokio::time::Instant::now();
        if now.duration_since(self.window.0) >= std::time::Duration::from_secs(60) {
            if self.suppressed > 0 {
                tracing::warn!(
                    suppressed = self.suppressed,
                    "NACK events not posted in the last minute (at most {NACK_EVENTS_PER_MINUTE} a minute); every NACK is still logged, counted in meshd_xds_nacks_total and listed on /debug/xds/nacks"
                );
            }
            self.window = (now, 0);
            self.suppressed = 0;
        }
        if self.window.1 < NACK_EVENTS_PER_MINUTE {
            self.window.1 += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }

    pub async fn observe(&mut self, current: &[ProxyNack]) {
        for nack in self.new_nacks(current) {
            let Some((pod, namespace)) = nack.node_id.rsplit_once('.') else {
                tracing::debug!(node = %nack.node_id, "no Pod to attach a NACK event to");
                continue;
            };
            if !self.allow() {
                continue;
            }
            let regarding = match object_reference(&self.client, "Pod", Some(namespace), pod).await
            {
                Ok(Some(reference)) => reference,
                Ok(None) => {
                    tracing::debug!(node = %nack.node_id, "no NACK event: the Pod is gone");
                    continue;
                }
                Err(e) => {
                    tracing::info!(node = %nack.node_id, "cannot read the Pod's uid for its event: {e}");
                    ObjectReference {
                        api_version: Some("v1".into()),
                        kind: Some("Pod".into()),
                        namespace: Some(namespace.into()),
                        name: Some(pod.into()),
                        ..ObjectReference::default()
                    }
                }
            };
            let event = nack_event(nack, regarding, &self.instance);
            let events: Api<Event> = Api::namespaced(self.client.clone(), namespace);
            match events.create(&PostParams::default(), &event).await {
                Ok(_) => {
                    tracing::debug!(node = %nack.node_id, r#type = nack.r#type, "NACK event posted")
                }
                Err(e) => {
                    tracing::warn!(node = %nack.node_id, r#type = nack.r#type, "cannot post the NACK event: {e}")
                }
            }
        }
    }
}

fn nack_key(nack: &ProxyNack) -> NackKey {
    (nack.node_id.clone(), nack.r#type, nack.message.clone())
}

/// The Warning for `nack` on the Pod `regarding` names.
fn nack_event(nack: &ProxyNack, regarding: ObjectReference, instance: &str) -> Event {
    let note = format!(
        "the proxy rejected its {} ({}) version {}; it keeps its last accepted config. Envoy: {}",
        nack.r#type, nack.type_url, nack.version, nack.message
    );
    Event {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}.", regarding.name.as_deref().unwrap_or("meshd"))),
            namespace: regarding.namespace.clone(),
            ..ObjectMeta::default()
        },
        event_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::now())),
        type_: Some("Warning".into()),
        reason: Some(REASON_NACK.into()),
        action: Some(ACTION_CONFIGURE.into()),
        note: Some(truncate(note, MAX_NOTE_BYTES)),
        regarding: Some(regarding),
        reporting_controller: Some(REPORTING_CONTROLLER.into()),
        reporting_instance: Some(instance.into()),
        ..Event::default()
    }
}

/// The object's reference with its uid; `None` if it does not exist.
async fn object_reference(
    client: &Client,
    kind: &str,
    namespace: Option<&str>,
    name: &str,
) -> kube::Result<Option<ObjectReference>> {
    let client = client.clone();
    let meta = match (kind, namespace) {
        ("Namespace", _) => metadata(Api::<Namespace>::all(client), name).await?,
        ("Service", Some(ns)) => metadata(Api::<Service>::namespaced(client, ns), name).await?,
        ("Pod", Some(ns)) => metadata(Api::<Pod>::namespaced(client, ns), name).await?,
        _ => None,
    };
    Ok(meta.map(|meta| ObjectReference {
        api_version: Some("v1".into()),
        kind: Some(kind.into()),
        namespace: namespace.map(str::to_string),
        name: Some(name.into()),
        uid: meta.uid,
        resource_version: meta.resource_version,
        field_path: None,
    }))
}

async fn metadata<K>(api: Api<K>, name: &str) -> kube::Result<Option<ObjectMeta>>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    Ok(api
        .get_metadata_opt(name)
        .await?
        .map(|m: PartialObjectMeta<K>| m.metadata))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Invalid,
    Resolved,
}

/// The event for `error` on the object `regarding` names.
fn event(error: &AnnotationError, kind: Kind, regarding: ObjectReference, instance: &str) -> Event {
    let namespace = regarding
        .namespace
        .clone()
        .unwrap_or_else(|| CLUSTER_SCOPED_EVENT_NAMESPACE.into());
    let (type_, reason, note) = match (kind, error.severity) {
        (Kind::Invalid, Severity::Rejected) => (
            "Warning",
            REASON_INVALID,
            format!(
                "annotation {} = {:?} is rejected, the last good routing stays: {}",
                error.annotation,
                quoted(&error.value),
                error.message
            ),
        ),
        (Kind::Invalid, Severity::Warning) => (
            "Warning",
            REASON_WARNING,
            format!(
                "annotation {} = {:?} is in force, but: {}",
                error.annotation,
                quoted(&error.value),
                error.message
            ),
        ),
        (Kind::Resolved, Severity::Rejected) => (
            "Normal",
            REASON_RESOLVED,
            format!("annotation {} is accepted again", error.annotation),
        ),
        (Kind::Resolved, Severity::Warning) => (
            "Normal",
            REASON_WARNING_CLEARED,
            format!(
                "annotation {}: the warning no longer applies",
                error.annotation
            ),
        ),
    };
    Event {
        metadata: ObjectMeta {
            // The server picks a unique suffix: two events on one object
            // in the same instant must not collide.
            generate_name: Some(format!("{}.", regarding.name.as_deref().unwrap_or("meshd"))),
            namespace: Some(namespace),
            ..ObjectMeta::default()
        },
        event_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::now())),
        type_: Some(type_.into()),
        reason: Some(reason.into()),
        action: Some(ACTION.into()),
        note: Some(truncate(note, MAX_NOTE_BYTES)),
        regarding: Some(regarding),
        reporting_controller: Some(REPORTING_CONTROLLER.into()),
        reporting_instance: Some(instance.into()),
        ..Event::default()
    }
}

fn quoted(value: &str) -> String {
    match value.char_indices().nth(MAX_QUOTED_VALUE) {
        None => value.to_string(),
        Some((end, _)) => format!("{}…", &value[..end]),
    }
}

/// `text` cut to at most `max` bytes on a character boundary.
fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max - '…'.len_utf8();
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshd_api::annotations::routing::{self, Annotations};
    use meshd_api::names::ServiceKey;

    fn ann(pairs: &[(&str, &str)]) -> Annotations {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn errors_name_the_objects_they_are_on() {
        let errors = routing::parse(
            &ServiceKey::new("shop", "reviews"),
            &ann(&[("meshd.io/timeout", "fast")]),
            &ann(&[("meshd.io/retries", "many")]),
        )
        .unwrap_err();
        let refs: Vec<_> = errors.iter().map(AnnotationError::object_ref).collect();
        assert!(refs.contains(&Some(("Service", Some("shop"), "reviews"))));
        assert!(refs.contains(&Some(("Namespace", None, "shop"))));
        let pod =
            routing::pod_egress("shop", "web-0", &ann(&[("meshd.io/egress", "x")])).unwrap_err();
        assert_eq!(pod.object_ref(), Some(("Pod", Some("shop"), "web-0")));
        let mut odd = pod;
        odd.object = "Deployment shop/web".into();
        assert_eq!(odd.object_ref(), None);
    }

    fn error(object: &str, value: &str) -> AnnotationError {
        AnnotationError {
            severity: Severity::Rejected,
            object: object.into(),
            annotation: "meshd.io/routes".into(),
            value: value.into(),
            message: "not JSON; accepted: a JSON list".into(),
        }
    }

    fn reference(namespace: Option<&str>, kind: &str, name: &str) -> ObjectReference {
        ObjectReference {
            api_version: Some("v1".into()),
            kind: Some(kind.into()),
            namespace: namespace.map(str::to_string),
            name: Some(name.into()),
            uid: Some("uid-1".into()),
            ..ObjectReference::default()
        }
    }

    #[test]
    fn a_warning_names_annotation_value_and_what_is_accepted() {
        let e = error("Service shop/reviews", "[");
        let event = event(
            &e,
            Kind::Invalid,
            reference(Some("shop"), "Service", "reviews"),
            "meshd-0",
        );
        assert_eq!(event.metadata.namespace.as_deref(), Some("shop"));
        assert_eq!(event.metadata.generate_name.as_deref(), Some("reviews."));
        assert_eq!(event.type_.as_deref(), Some("Warning"));
        assert_eq!(event.reason.as_deref(), Some(REASON_INVALID));
        assert_eq!(
            event.note.as_deref(),
            Some(
                "annotation meshd.io/routes = \"[\" is rejected, the last good routing stays: \
                 not JSON; accepted: a JSON list"
            )
        );
        assert_eq!(event.reporting_instance.as_deref(), Some("meshd-0"));
    }

    #[test]
    fn an_annotation_in_force_with_a_warning_is_not_called_rejected() {
        let e = AnnotationError {
            severity: Severity::Warning,
            ..error("Service shop/reviews", "shop/legacy")
        };
        let regarding = || reference(Some("shop"), "Service", "reviews");
        let warning = event(&e, Kind::Invalid, regarding(), "meshd-0");
        assert_eq!(warning.type_.as_deref(), Some("Warning"));
        assert_eq!(warning.reason.as_deref(), Some(REASON_WARNING));
        let note = warning.note.unwrap();
        assert!(
            note.starts_with("annotation meshd.io/routes = \"shop/legacy\" is in force, but: ")
                && !note.contains("rejected"),
            "{note}"
        );
        let cleared = event(&e, Kind::Resolved, regarding(), "meshd-0");
        assert_eq!(cleared.type_.as_deref(), Some("Normal"));
        assert_eq!(cleared.reason.as_deref(), Some(REASON_WARNING_CLEARED));
    }

    fn nack(node: &str, message: &str) -> ProxyNack {
        ProxyNack {
            node_id: node.into(),
            r#type: "LDS",
            type_url: "type.googleapis.com/envoy.config.listener.v3.Listener",
            version: "00ab".into(),
            message: message.into(),
        }
    }

    #[test]
    fn a_nack_event_names_the_type_and_envoys_message_on_the_pod() {
        let event = nack_event(
            &nack("web-0.shop", "cannot bind 198.18.255.254:15001"),
            reference(Some("shop"), "Pod", "web-0"),
            "meshd-0",
        );
        assert_eq!(event.metadata.namespace.as_deref(), Some("shop"));
        assert_eq!(event.type_.as_deref(), Some("Warning"));
        assert_eq!(event.reason.as_deref(), Some(REASON_NACK));
        let note = event.note.unwrap();
        assert!(
            note.contains("LDS") && note.contains("cannot bind 198.18.255.254:15001"),
            "{note}"
        );
    }

    #[tokio::test]
    async fn each_nack_is_reported_once_even_across_a_reconnect() {
        let (client, _server) = tower_test::mock::pair::<
            http::Request<kube::client::Body>,
            http::Response<kube::client::Body>,
        >();
        let client = Client::new(client, "default");
        let mut recorder = NackEventRecorder::new(client, "meshd".into());
        let a = nack("web-0.shop", "bad listener");
        assert_eq!(recorder.new_nacks(std::slice::from_ref(&a)).len(), 1);
        assert!(recorder.new_nacks(std::slice::from_ref(&a)).is_empty());
        // Gone (the stream ended) and back (it reconnected): not again.
        assert!(recorder.new_nacks(&[]).is_empty());
        assert!(recorder.new_nacks(std::slice::from_ref(&a)).is_empty());
        // A different message is a new problem.
        let b = nack("web-0.shop", "another reason");
        assert_eq!(recorder.new_nacks(&[a, b]).len(), 1);
        // The budget holds.
        let allowed = (0..NACK_EVENTS_PER_MINUTE + 5)
            .filter(|_| recorder.allow())
            .count();
        assert_eq!(allowed, NACK_EVENTS_PER_MINUTE);
    }

    #[test]
    fn events_on_namespaces_live_in_default_and_notes_stay_under_1kb() {
        let e = error("Namespace shop", &"é".repeat(5000));
        let event = event(
            &e,
            Kind::Invalid,
            reference(None, "Namespace", "shop"),
            "meshd",
        );
        assert_eq!(event.metadata.namespace.as_deref(), Some("default"));
        let note = event.note.expect("a note");
        assert!(note.len() <= MAX_NOTE_BYTES, "{}", note.len());
        assert!(note.ends_with("not JSON; accepted: a JSON list"), "{note}");
        assert_eq!(truncate("x".repeat(2000), 10).len(), 10);
        assert_eq!(
            truncate("é".repeat(2000), 10),
            format!("{}…", "é".repeat(3))
        );
    }
}
