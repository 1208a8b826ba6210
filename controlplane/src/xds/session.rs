//! One proxy's ADS stream, independent of the wire flavour.
//!
//! State-of-the-World and Delta streams share everything but the message
//! shapes: what the proxy subscribed to, what was sent and acknowledged per
//! type, NACK handling, and the order of a push. A push walks the types in
//! [`Kind::PUSH_ORDER`] (clusters, endpoints, listeners, routes), so a
//! cluster always exists before anything refers to it. Removal runs the
//! other way round: a cluster stays in CDS while a listener or route that
//! the proxy holds or is being sent still refers to it, and goes only once
//! the proxy has acknowledged config that no longer does.
//!
//! A rejected (NACKed) response is recorded and not sent again: the proxy
//! keeps its last accepted config, and the next change to that type is sent
//! as usual.
//!
//! Clusters and endpoints are most of a proxy's config (one of each per
//! service port) and change a few at a time. A session that is up to date
//! with one snapshot therefore checks, on the next, only the names that
//! snapshot says changed ([`ProxyView::changes`]), instead of comparing
//! every resource: with thousands of proxies, an endpoint change costs each
//! of them a few lookups rather than a walk over the whole mesh.

use std::collections::HashMap;
use std::sync::Arc;

use super::overlay::Overlay;
pub use super::overlay::Sent;
use crate::translate::{Kind, ProxyView, Resource};

/// What a proxy holds of one type, by name; for clusters and load
/// assignments, kept as the snapshot's own map plus this proxy's
/// differences from it (see [`Overlay`]).
pub type SentMap = Overlay<Sent>;

/// The names a proxy subscribed to (load assignments: on the snapshot's
/// map too).
pub type Names = Overlay<()>;

/// What a request says about subscriptions.
#[derive(Debug)]
pub enum Subscribe {
    /// State-of-the-World: the complete list of names (empty = wildcard for
    /// listeners and clusters).
    Replace(Vec<String>),
    /// State-of-the-World: the same names as the last request of this
    /// type on the stream (read without them, see `sotw.rs`).
    Same,
    /// Delta: names added and removed, and what the proxy already holds.
    Change {
        subscribe: Vec<String>,
        unsubscribe: Vec<String>,
        initial_versions: HashMap<String, String>,
    },
}

/// A request, reduced to what the session acts on.
#[derive(Debug)]
pub struct Request {
    pub kind: Kind,
    pub response_nonce: String,
    /// Set on a NACK: Envoy's reason for rejecting the response.
    pub error: Option<String>,
    pub subscribe: Subscribe,
}

/// What happened to a response Envoy answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ack,
    Nack {
        version: String,
        message: String,
    },
    /// A request carrying no nonce, or one we no longer track.
    Other,
}

/// One response to send.
#[derive(Debug)]
pub struct Push {
    pub kind: Kind,
    pub nonce: String,
    /// State-of-the-World version: a digest of every resource in the set.
    pub version: String,
    /// Every resource in the subscription (State-of-the-World listeners
    /// and clusters only: the other kinds are sent as `changed`).
    pub all: Vec<Arc<Resource>>,
    /// Resources new or changed since the last push (Delta).
    pub changed: Vec<Arc<Resource>>,
    /// Names gone since the last push (Delta).
    pub removed: Vec<String>,
}

#[derive(Debug, Default)]
pub struct TypeState {
    /// The proxy asked for this type at least once.
    pub requested: bool,
    pub wildcard: bool,
    pub names: Names,
    /// What the proxy has been sent (for Delta: what it holds, as far as
    /// we know).
    pub sent: SentMap,
    /// What the proxy acknowledged last.
    pub acked: SentMap,
    pub acked_version: String,
    pub sent_version: String,
    /// The response awaiting an answer: nonce and the set it carried.
    inflight: Option<(String, SentMap)>,
    /// The nonce of the last response sent, answered or not.
    last_nonce: u64,
    /// The egress scope of the view `sent` and `names` are based on.
    base_scope: u64,
    /// Clusters kept in `sent` only because a listener or route the proxy
    /// holds still refers to them (clusters only). While there are none,
    /// acknowledging a listener or route cannot change which clusters the
    /// proxy should have.
    retained: usize,
    pub last_nack: Option<(String, String)>,
    /// `sent` is what the view of this snapshot version asks for, and
    /// neither the subscription nor anything else `sent` depends on has
    /// changed since (clusters and endpoints only).
    synced: Option<Synced>,
}

#[derive(Clone, Copy, Debug)]
struct Synced {
    /// The snapshot ([`ProxyView::snapshot_id`]).
    version: u64,
    /// The egress scope of the view then ([`ProxyView::scope_id`]).
    scope: u64,
    /// The proxy's own resources of the type (inbound clusters) then.
    local: usize,
}

#[derive(Debug)]
pub struct Session {
    pub delta: bool,
    pub types: TypeStates,
    next_nonce: u64,
    /// A request since the last [`Session::push`] changed what it would
    /// send (see [`Session::has_pending`]).
    pending: bool,
}

/// A session's state of each type, one slot per [`Kind`]. (A `BTreeMap`
/// of the five allocated a node with room for eleven states, ~5 KiB per
/// connected proxy.)
#[derive(Debug, Default)]
pub struct TypeStates([TypeState; Kind::PUSH_ORDER.len()]);

impl TypeStates {
    fn slot(kind: Kind) -> usize {
        match kind {
            Kind::Secret => 0,
            Kind::Cluster => 1,
            Kind::Endpoint => 2,
            Kind::Listener => 3,
            Kind::Route => 4,
        }
    }

    pub fn get(&self, kind: &Kind) -> Option<&TypeState> {
        self.0.get(Self::slot(*kind))
    }

    /// Every type, in [`Kind::PUSH_ORDER`].
    pub fn iter(&self) -> impl Iterator<Item = (Kind, &TypeState)> {
        Kind::PUSH_ORDER.into_iter().map(|k| (k, &self[&k]))
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut TypeState> {
        self.0.iter_mut()
    }
}

impl std::ops::Index<&Kind> for TypeStates {
    type Output = TypeState;

    fn index(&self, kind: &Kind) -> &TypeState {
        &self.0[Self::slot(*kind)]
    }
}

impl std::ops::IndexMut<&Kind> for TypeStates {
    fn index_mut(&mut self, kind: &Kind) -> &mut TypeState {
        &mut self.0[Self::slot(*kind)]
    }
}

impl Session {
    pub fn new(delta: bool) -> Self {
        Session {
            delta,
            types: TypeStates::default(),
            next_nonce: 0,
            pending: false,
        }
    }

    fn state(&mut self, kind: Kind) -> &mut TypeState {
        &mut self.types[&kind]
    }

    /// Whether a request since the last [`Session::push`] may have changed
    /// what the proxy should be sent: a first request of its type, one
    /// with no nonce, a changed subscription, or the acknowledgement of a
    /// listener or route while clusters are kept for what it replaced.
    /// Otherwise (a plain ACK or NACK, most of a stream's requests) a push
    /// for the same view sends nothing, and need not be worked out.
    pub fn has_pending(&self) -> bool {
        self.pending
    }

    /// Applies a request: ACK/NACK bookkeeping, then subscription changes.
    pub fn on_request(&mut self, req: Request) -> Outcome {
        let delta = self.delta;
        if req.response_nonce.is_empty() || !self.types[&req.kind].requested {
            self.pending = true;
        }
        if !req.response_nonce.is_empty()
            && matches!(req.kind, Kind::Listener | Kind::Route)
            && self.types[&Kind::Cluster].retained > 0
        {
            // Which clusters are kept depends on the listeners and routes
            // the proxy acknowledged.
            self.state(Kind::Cluster).synced = None;
            self.pending = true;
        }
        let mut pending = false;
        let state = &mut self.types[&req.kind];
        let mut outcome = Outcome::Other;
        if !req.response_nonce.is_empty() {
            match state.inflight.take() {
                Some((nonce, set)) if nonce == req.response_nonce => match req.error {
                    None => {
                        state.acked = set;
                        state.acked_version = state.sent_version.clone();
                        state.last_nack = None;
                        outcome = Outcome::Ack;
                    }
                    Some(message) => {
                        // `sent` stays as it is, so the rejected content is
                        // not sent again until the config changes.
                        state.last_nack = Some((state.sent_version.clone(), message.clone()));
                        outcome = Outcome::Nack {
                            version: state.sent_version.clone(),
                            message,
                        };
                    }
                },
                other => {
                    state.inflight = other;
                    // The latest response, answered before: a State-of-the-
                    // World proxy changing its subscription (Envoy asks for
                    // a new cluster's endpoints quoting the EDS nonce it
                    // last acknowledged). Anything older is stale, and
                    // State-of-the-World says to ignore it entirely.
                    let latest = req.response_nonce.parse() == Ok(state.last_nonce);
                    if !delta && !latest {
                        return Outcome::Other;
                    }
                }
            }
        }
        state.requested = true;
        match req.subscribe {
            Subscribe::Replace(names) => {
                let wildcard =
                    req.kind.is_wildcard() && (names.is_empty() || names.iter().any(|n| n == "*"));
                let names = Names::names_like(&state.names, names.into_iter().filter(|n| n != "*"));
                // State-of-the-World repeats the whole subscription in every
                // ACK; only a different one invalidates what was synced.
                if wildcard != state.wildcard || !names.same_as(&state.names) {
                    state.synced = None;
                    pending = true;
                }
                state.wildcard = wildcard;
                state.names = names;
                if !state.wildcard {
                    // Forget what the proxy no longer asks for, so asking
                    // again gets it again.
                    state.sent.retain_in(&state.names);
                }
            }
            Subscribe::Same => {}
            Subscribe::Change {
                subscribe,
                unsubscribe,
                initial_versions,
            } => {
                if !(subscribe.is_empty() && unsubscribe.is_empty() && initial_versions.is_empty())
                {
                    state.synced = None;
                    pending = true;
                }
                let first = !state.wildcard && state.names.is_empty() && state.sent.is_empty();
                if first && req.kind.is_wildcard() && subscribe.is_empty() {
                    state.wildcard = true;
                }
                let (wildcard, names): (Vec<_>, Vec<_>) =
                    subscribe.into_iter().partition(|name| name == "*");
                if !wildcard.is_empty() {
                    state.wildcard = true;
                }
                state.names.subscribe(names);
                for name in unsubscribe {
                    if name == "*" {
                        state.wildcard = false;
                    } else {
                        state.names.remove(&name);
                        state.sent.remove(&name);
                    }
                }
                // A reconnecting proxy says what it holds: unchanged
                // resources are not sent again.
                for (name, version) in initial_versions {
                    if !state.sent.contains(&name) {
                        let held = Sent::Held(version.into());
                        state.sent.insert(&name, held);
                    }
                }
            }
        }
        self.pending |= pending;
        outcome
    }

    /// Everything that should be sent now to bring the proxy up to `view`.
    pub fn push(&mut self, view: &ProxyView) -> Vec<Push> {
        self.pending = false;
        let mut pushes = Vec::new();
        for kind in Kind::PUSH_ORDER {
            if !self.types[&kind].requested {
                continue;
            }
            self.rebase(kind, view);
            let push = match self.incremental(kind, view) {
                Some(push) => push,
                None => {
                    let (desired, retained) = self.desired(kind, view);
                    self.state(kind).retained = retained;
                    let push = self.plan(kind, desired);
                    if matches!(kind, Kind::Cluster | Kind::Endpoint) {
                        self.state(kind).synced = Some(Synced {
                            version: view.snapshot_id(),
                            scope: view.scope_id(),
                            local: view.local(kind).count(),
                        });
                    }
                    push
                }
            };
            if let Some(push) = push {
                match kind {
                    Kind::Cluster => {
                        // Envoy re-warms a changed cluster and waits for its
                        // endpoints: make sure they are sent again.
                        let eds = self.state(Kind::Endpoint);
                        eds.synced = None;
                        for r in &push.changed {
                            eds.sent.remove(&r.name);
                        }
                    }
                    // New listeners and routes may refer to clusters kept
                    // for the old ones (the full comparison knows).
                    Kind::Listener | Kind::Route if self.types[&Kind::Cluster].retained > 0 => {
                        self.state(Kind::Cluster).synced = None
                    }
                    _ => {}
                }
                pushes.push(push);
            }
        }
        pushes
    }

    /// Moves what the session holds of `kind` onto the view's shared map,
    /// so that in the usual case (the proxy has what the snapshot has) it
    /// keeps no copy of it. The content does not change.
    fn rebase(&mut self, kind: Kind, view: &ProxyView) {
        let Some(base) = view.base(kind) else {
            return;
        };
        let id = view.snapshot_id();
        let state = self.state(kind);
        // Changes hold between maps of one scope only.
        let same_scope =
            std::mem::replace(&mut state.base_scope, view.scope_id()) == view.scope_id();
        let changed = |set: Option<u64>| {
            set.filter(|_| same_scope)
                .and_then(|since| view.changed_since(kind, since))
        };
        let sent_changes = changed(state.sent.base_snapshot());
        state.sent.rebase(id, base, sent_changes);
        // Envoy subscribes to the load assignment of every cluster it was
        // sent, and to the route configuration every listener names: the
        // map's own names, usually.
        if matches!(kind, Kind::Endpoint | Kind::Route) && !state.wildcard {
            let name_changes = changed(state.names.base_snapshot());
            state.names.rebase(id, base, name_changes);
        }
    }

    /// The push for `kind` worked out from only what `view`'s snapshot
    /// changed since the one this session is synced with: `Some(None)` when
    /// nothing is to be sent, `None` when it cannot be told that way (the
    /// full comparison runs then).
    fn incremental(&mut self, kind: Kind, view: &ProxyView) -> Option<Option<Push>> {
        let state = &self.types[&kind];
        let synced = state.synced?;
        if state.sent_version.is_empty() || !matches!(kind, Kind::Cluster | Kind::Endpoint) {
            return None;
        }
        // Synced with this very snapshot (the proxy is acknowledging what
        // it was sent): nothing `sent` depends on has changed since.
        if synced.version == view.snapshot_id() {
            return Some(None);
        }
        // A new egress scope changes which clusters the proxy sees beyond
        // the names that changed.
        if synced.scope != view.scope_id() {
            return None;
        }
        let names = view.changed_since(kind, synced.version)?;
        let mut updates: Vec<(&str, Option<&Arc<Resource>>)> = Vec::new();
        for name in names {
            let wanted = state.wildcard || state.names.contains(name);
            let now = view.get(kind, name).filter(|_| wanted);
            match (now, state.sent.get(name)) {
                (None, None) => {}
                (Some(now), Some(sent)) if now.version == sent.version() => {}
                // Whether a cluster leaves depends on what still refers
                // to it: the full comparison knows.
                (None, Some(_)) if kind == Kind::Cluster => return None,
                (now, _) => updates.push((name, now)),
            }
        }
        if kind == Kind::Cluster {
            let mut local = 0;
            for r in view.local(kind) {
                local += 1;
                if state
                    .sent
                    .get(&r.name)
                    .is_none_or(|s| s.version() != r.version)
                {
                    return None;
                }
            }
            if local != synced.local {
                return None;
            }
        }
        let mut changed = Vec::new();
        let mut removed = Vec::new();
        let state = self.state(kind);
        state.synced = Some(Synced {
            version: view.snapshot_id(),
            ..synced
        });
        for (name, now) in updates {
            match now {
                Some(r) => {
                    changed.push(r.clone());
                    state.sent.insert(name, Sent::of(r));
                }
                None => {
                    removed.push(name.to_string());
                    state.sent.remove(name);
                }
            }
        }
        if changed.is_empty() && removed.is_empty() {
            return Some(None);
        }
        Some(Some(self.send(kind, changed, removed)))
    }

    /// What the proxy should hold of `kind`, and how many of those are
    /// clusters kept only for config that still refers to them.
    fn desired(&self, kind: Kind, view: &ProxyView) -> (SentMap, usize) {
        let state = &self.types[&kind];
        let mut retained = 0;
        let base = view.base(kind);
        let mut desired = match base {
            Some(base) => SentMap::based(view.snapshot_id(), base),
            None => SentMap::default(),
        };
        if state.wildcard {
            let own = if base.is_some() {
                view.local(kind)
            } else {
                view.all(kind)
            };
            for r in own {
                desired.insert(&r.name, Sent::of(r));
            }
        } else if base.is_some() {
            // The map, less what the proxy did not ask for, plus what it
            // asked for from outside the map.
            desired.retain_in(&state.names);
            for name in state.names.outside_base() {
                if let Some(r) = view.get(kind, name) {
                    desired.insert(name, Sent::of(r));
                }
            }
        } else {
            for name in state.names.names() {
                if let Some(r) = view.get(kind, name) {
                    desired.insert(name, Sent::of(r));
                }
            }
        }
        if kind == Kind::Cluster {
            // Keep clusters that config the proxy holds still points at.
            for referrer in [Kind::Listener, Kind::Route] {
                let s = &self.types[&referrer];
                for (_, held) in s.sent.iter().chain(s.acked.iter()) {
                    for cluster in held.resource().iter().flat_map(|r| &r.cluster_refs) {
                        if !desired.contains(cluster)
                            && let Some(old) = state.sent.get(cluster)
                        {
                            desired.insert(cluster, old);
                            retained += 1;
                        }
                    }
                }
            }
        }
        (desired, retained)
    }

    fn plan(&mut self, kind: Kind, desired: SentMap) -> Option<Push> {
        let state = self.state(kind);
        if state.sent.is_blank() {
            // The first push of this type: all of it.
            let changed: Vec<Arc<Resource>> = desired.resources().cloned().collect();
            let never_sent = state.sent_version.is_empty();
            state.sent.adopt(desired);
            if changed.is_empty() && !never_sent {
                return None;
            }
            return Some(self.send(kind, changed, Vec::new()));
        }
        let state = &self.types[&kind];
        let mut changed = Vec::new();
        let mut removed = Vec::new();
        let mut updates = Vec::new();
        for name in state.sent.differing(&desired) {
            let now = desired.get(name);
            match &now {
                Some(d) => changed.extend(d.resource().cloned()),
                None => removed.push(name.to_string()),
            }
            updates.push((name.to_string(), now));
        }
        // The first answer goes out even when empty: Envoy waits for it
        // before it finishes initialising.
        let never_sent = state.sent_version.is_empty();
        let state = self.state(kind);
        for (name, now) in updates {
            match now {
                Some(entry) => state.sent.insert(&name, entry),
                None => state.sent.remove(&name),
            };
        }
        if changed.is_empty() && removed.is_empty() && !never_sent {
            return None;
        }
        Some(self.send(kind, changed, removed))
    }

    /// The response that brings the proxy to `sent` for `kind`.
    fn send(&mut self, kind: Kind, changed: Vec<Arc<Resource>>, removed: Vec<String>) -> Push {
        self.next_nonce += 1;
        let nonce = self.next_nonce.to_string();
        self.state(kind).last_nonce = self.next_nonce;
        let whole_set = !self.delta && kind.is_wildcard();
        let state = self.state(kind);
        let version = format!("{:016x}", state.sent.digest());
        // Only State-of-the-World listeners and clusters go as a whole set.
        let all = if whole_set {
            state.sent.resources().cloned().collect()
        } else {
            Vec::new()
        };
        state.sent_version = version.clone();
        // Only what listeners and routes the proxy acknowledged matters
        // later (clusters they use stay); for the large kinds, remembering
        // the nonce is enough.
        let set = if matches!(kind, Kind::Listener | Kind::Route) {
            state.sent.clone()
        } else {
            SentMap::default()
        };
        state.inflight = Some((nonce.clone(), set));
        Push {
            kind,
            nonce,
            version,
            all,
            changed,
            removed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::{file, index::Index};
    use crate::translate::Snapshot;

    const CLIENT: &str = "client-0.shop";

    fn service(name: &str, vip: &str, tcp: bool) -> String {
        let port = if tcp {
            "{name: tcp-db, port: 5432}"
        } else {
            "{name: http, port: 80}"
        };
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: shop}}\nspec: {{clusterIP: {vip}, ports: [{port}]}}\n---\n"
        )
    }

    fn snapshot(services: &str) -> Snapshot {
        let text = format!(
            "{services}apiVersion: v1\nkind: Pod\nmetadata: {{name: client-0, namespace: shop}}\nstatus: {{podIP: 198.18.0.2}}\n"
        );
        let mut index = Index::default();
        for object in file::parse(&text).unwrap() {
            index.apply(object);
        }
        Snapshot::new(1, std::sync::Arc::new(index.mesh()), Default::default())
    }

    fn request(kind: Kind, nonce: &str, names: &[&str]) -> Request {
        Request {
            kind,
            response_nonce: nonce.to_string(),
            error: None,
            subscribe: Subscribe::Replace(names.iter().map(|n| n.to_string()).collect()),
        }
    }

    fn names(push: &Push) -> Vec<&str> {
        push.all.iter().map(|r| r.name.as_str()).collect()
    }

    /// Subscribes to CDS, LDS and RDS `80` and ACKs everything.
    fn settle(session: &mut Session, view: &ProxyView) {
        for (kind, subscription) in [
            (Kind::Cluster, vec![]),
            (Kind::Listener, vec![]),
            (Kind::Route, vec!["80"]),
        ] {
            session.on_request(request(kind, "", &subscription));
        }
        for push in session.push(view) {
            let sub: Vec<&str> = if push.kind == Kind::Route {
                vec!["80"]
            } else {
                vec![]
            };
            assert_eq!(
                session.on_request(request(push.kind, &push.nonce, &sub)),
                Outcome::Ack
            );
        }
        assert!(!session.has_pending(), "ACKs leave nothing to work out");
        assert!(
            session.push(view).is_empty(),
            "settled sessions send nothing"
        );
    }

    #[test]
    fn a_nacked_version_is_not_sent_again() {
        let snap = snapshot(&service("web", "198.19.0.1", false));
        let view = snap.proxy(CLIENT).unwrap();
        let mut session = Session::new(false);
        session.on_request(request(Kind::Cluster, "", &[]));
        let push = session.push(&view).pop().unwrap();
        let mut nack = request(Kind::Cluster, &push.nonce, &[]);
        nack.error = Some("bad cluster".into());
        assert_eq!(
            session.on_request(nack),
            Outcome::Nack {
                version: push.version.clone(),
                message: "bad cluster".into()
            }
        );
        assert!(!session.has_pending());
        assert!(session.push(&view).is_empty());
        assert_eq!(session.types[&Kind::Cluster].acked_version, "");

        // The next change is sent as usual.
        let changed =
            snapshot(&(service("web", "198.19.0.1", false) + &service("api", "198.19.0.2", false)));
        let push = session.push(&changed.proxy(CLIENT).unwrap()).pop().unwrap();
        assert!(names(&push).contains(&"outbound|80||api.shop.svc.cluster.local"));
    }

    #[test]
    fn a_stale_nonce_is_ignored() {
        let snap = snapshot(&service("web", "198.19.0.1", false));
        let mut session = Session::new(false);
        session.on_request(request(Kind::Cluster, "", &[]));
        session.push(&snap.proxy(CLIENT).unwrap());
        assert_eq!(
            session.on_request(request(Kind::Cluster, "999", &[])),
            Outcome::Other
        );
        assert!(!session.has_pending());
        assert_eq!(session.types[&Kind::Cluster].acked_version, "");
    }

    #[test]
    fn clusters_leave_only_after_nothing_the_proxy_holds_uses_them() {
        let both = service("web", "198.19.0.1", false) + &service("db", "198.19.0.3", true);
        let v1 = snapshot(&both);
        let mut session = Session::new(false);
        settle(&mut session, &v1.proxy(CLIENT).unwrap());
        let db = "outbound|5432||db.shop.svc.cluster.local";

        // db goes away: the listener is updated, but db's cluster stays
        // while the acknowledged listener still routes to it.
        let v2 = snapshot(&service("web", "198.19.0.1", false));
        let view = v2.proxy(CLIENT).unwrap();
        let pushes = session.push(&view);
        let kinds: Vec<Kind> = pushes.iter().map(|p| p.kind).collect();
        assert!(!kinds.contains(&Kind::Cluster), "{kinds:?}");
        let lds = pushes.iter().find(|p| p.kind == Kind::Listener).unwrap();
        assert!(session.types[&Kind::Cluster].sent.contains(db));

        // Once the proxy ACKs the new listener, the cluster is removed.
        session.on_request(request(Kind::Listener, &lds.nonce, &[]));
        assert!(session.has_pending(), "the ACK releases a kept cluster");
        let pushes = session.push(&view);
        let cds = pushes
            .iter()
            .find(|p| p.kind == Kind::Cluster)
            .expect("a CDS push");
        assert!(!names(cds).contains(&db));
        assert_eq!(cds.removed, vec![db.to_string()]);
    }

    #[test]
    fn a_delta_subscription_of_the_wildcard_and_names_keeps_both() {
        let mut session = Session::new(true);
        session.on_request(Request {
            kind: Kind::Endpoint,
            response_nonce: String::new(),
            error: None,
            subscribe: Subscribe::Change {
                subscribe: ["b", "*", "a", "b"].map(String::from).to_vec(),
                unsubscribe: vec![],
                initial_versions: HashMap::new(),
            },
        });
        let state = &session.types[&Kind::Endpoint];
        assert!(state.wildcard);
        assert_eq!(state.names.names().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(state.names.len(), 2);
        session.on_request(Request {
            kind: Kind::Endpoint,
            response_nonce: String::new(),
            error: None,
            subscribe: Subscribe::Change {
                subscribe: vec!["c".into()],
                unsubscribe: ["*", "a"].map(String::from).to_vec(),
                initial_versions: HashMap::new(),
            },
        });
        let state = &session.types[&Kind::Endpoint];
        assert!(!state.wildcard);
        assert_eq!(state.names.names().collect::<Vec<_>>(), ["b", "c"]);
    }

    #[test]
    fn a_changed_cluster_gets_its_endpoints_again() {
        let v1 = snapshot(&service("web", "198.19.0.1", false));
        let mut session = Session::new(true);
        let eds = "outbound|80||web.shop.svc.cluster.local";
        session.on_request(Request {
            kind: Kind::Cluster,
            response_nonce: String::new(),
            error: None,
            subscribe: Subscribe::Change {
                subscribe: vec![],
                unsubscribe: vec![],
                initial_versions: HashMap::new(),
            },
        });
        session.on_request(Request {
            kind: Kind::Endpoint,
            response_nonce: String::new(),
            error: None,
            subscribe: Subscribe::Change {
                subscribe: vec![eds.into()],
                unsubscribe: vec![],
                initial_versions: HashMap::new(),
            },
        });
        let pushes = session.push(&v1.proxy(CLIENT).unwrap());
        assert_eq!(
            pushes.iter().map(|p| p.kind).collect::<Vec<_>>(),
            [Kind::Cluster, Kind::Endpoint]
        );
        assert!(session.push(&v1.proxy(CLIENT).unwrap()).is_empty());

        // The port's protocol changes the cluster (HTTP/2 options): Envoy
        // re-warms it, so its unchanged endpoints are sent again.
        let v2 = snapshot(&service("web", "198.19.0.1", false).replace(
            "{name: http, port: 80}",
            "{name: http, port: 80, appProtocol: grpc}",
        ));
        let pushes = session.push(&v2.proxy(CLIENT).unwrap());
        assert_eq!(
            pushes.iter().map(|p| p.kind).collect::<Vec<_>>(),
            [Kind::Cluster, Kind::Endpoint]
        );
        assert_eq!(
            pushes[0].changed.len(),
            1,
            "delta sends only the changed cluster"
        );
    }

    /// The stream skips the push after a request that leaves nothing
    /// pending: that is only right if such a push would send nothing.
    #[test]
    fn only_requests_that_change_what_is_sent_leave_a_push_pending() {
        let web = "outbound|80||web.shop.svc.cluster.local";
        let api = "outbound|80||api.shop.svc.cluster.local";
        let both =
            snapshot(&(service("web", "198.19.0.1", false) + &service("api", "198.19.0.2", false)));
        let view = both.proxy(CLIENT).unwrap();
        let mut session = Session::new(true);
        let change = |kind, nonce: &str, subscribe: &[&str], unsubscribe: &[&str]| Request {
            kind,
            response_nonce: nonce.to_string(),
            error: None,
            subscribe: Subscribe::Change {
                subscribe: subscribe.iter().map(|n| n.to_string()).collect(),
                unsubscribe: unsubscribe.iter().map(|n| n.to_string()).collect(),
                initial_versions: HashMap::new(),
            },
        };
        session.on_request(change(Kind::Cluster, "", &[], &[]));
        assert!(session.has_pending(), "a first request");
        let cds = session.push(&view).pop().unwrap();
        assert!(!session.has_pending());
        session.on_request(change(Kind::Endpoint, "", &[web], &[]));
        assert!(session.has_pending(), "a first request");
        let eds = session.push(&view).pop().unwrap();

        // Plain ACKs: nothing pending, and indeed nothing to send.
        assert_eq!(
            session.on_request(change(Kind::Cluster, &cds.nonce, &[], &[])),
            Outcome::Ack
        );
        assert_eq!(
            session.on_request(change(Kind::Endpoint, &eds.nonce, &[], &[])),
            Outcome::Ack
        );
        assert!(!session.has_pending());
        assert!(session.push(&view).is_empty());

        // A NACK: the rejected version is not sent again.
        let mut nack = change(Kind::Endpoint, &eds.nonce, &[], &[]);
        nack.error = Some("rejected".into());
        session.on_request(nack);
        assert!(!session.has_pending());
        assert!(session.push(&view).is_empty());

        // A new name, then one dropped: each is a push.
        session.on_request(change(Kind::Endpoint, &eds.nonce, &[api], &[]));
        assert!(session.has_pending());
        let pushes = session.push(&view);
        assert_eq!(names_changed(&pushes[0]), vec![api]);
        session.on_request(change(Kind::Endpoint, &pushes[0].nonce, &[], &[web]));
        assert!(session.has_pending());
        session.push(&view);
        // A request with no nonce asks again.
        session.on_request(change(Kind::Cluster, "", &[], &[]));
        assert!(session.has_pending());
    }

    /// Route configurations are shared by the proxies of a namespace: a
    /// session that holds its namespace's keeps no copy of their names.
    #[test]
    fn a_settled_session_keeps_no_route_names_of_its_own() {
        let snap =
            snapshot(&(service("web", "198.19.0.1", false) + &service("db", "198.19.0.3", true)));
        let view = snap.proxy(CLIENT).unwrap();
        let configs: Vec<String> = view.all(Kind::Route).map(|r| r.name.clone()).collect();
        assert!(!configs.is_empty());
        let subscription: Vec<&str> = configs.iter().map(String::as_str).collect();
        let mut session = Session::new(false);
        session.on_request(request(Kind::Route, "", &subscription));
        let push = session.push(&view).pop().unwrap();
        assert_eq!(names_changed(&push), subscription);
        session.on_request(request(Kind::Route, &push.nonce, &subscription));
        assert!(session.push(&view).is_empty());
        let routes = &session.types[&Kind::Route];
        assert_eq!(
            (
                routes.names.differences(),
                routes.sent.differences(),
                routes.acked.differences()
            ),
            (0, 0, 0)
        );
    }

    #[test]
    fn a_reconnecting_delta_proxy_is_not_sent_what_it_holds() {
        let snap = snapshot(&service("web", "198.19.0.1", false));
        let view = snap.proxy(CLIENT).unwrap();
        let held: HashMap<String, String> = view
            .all(Kind::Cluster)
            .map(|r| (r.name.clone(), r.version.clone()))
            .collect();
        let mut session = Session::new(true);
        session.on_request(Request {
            kind: Kind::Cluster,
            response_nonce: String::new(),
            error: None,
            subscribe: Subscribe::Change {
                subscribe: vec![],
                unsubscribe: vec![],
                initial_versions: held,
            },
        });
        let pushes = session.push(&view);
        // One (empty) answer so Envoy finishes initialising, nothing resent.
        assert_eq!(pushes.len(), 1);
        assert!(pushes[0].changed.is_empty() && pushes[0].removed.is_empty());
    }

    /// Snapshots in which the web service's second endpoint flaps.
    fn flapping(ready: &[bool]) -> Vec<Snapshot> {
        let mut snapshots: Vec<Snapshot> = Vec::new();
        for (i, ready) in ready.iter().enumerate() {
            let text = format!(
                "{}apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: web-1, namespace: shop, labels: {{kubernetes.io/service-name: web}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n- addresses: [198.18.0.3]\n- addresses: [198.18.0.4]\n  conditions: {{ready: {ready}}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: client-0, namespace: shop}}\nstatus: {{podIP: 198.18.0.2}}\n",
                service("web", "198.19.0.1", false) + &service("db", "198.19.0.2", true)
            );
            let mut index = Index::default();
            for object in file::parse(&text).unwrap() {
                index.apply(object);
            }
            let mesh = std::sync::Arc::new(index.mesh());
            let next = match snapshots.last() {
                Some(p) => Snapshot::next(i as u64 + 1, mesh, Default::default(), p),
                None => Snapshot::new(1, mesh, Default::default()),
            };
            snapshots.push(next);
        }
        snapshots
    }

    #[test]
    fn pushes_worked_out_from_changes_equal_full_comparisons() {
        let snapshots = flapping(&[true, false, false, true, false]);
        for delta in [true, false] {
            let mut incremental = Session::new(delta);
            let mut full = Session::new(delta);
            let first = snapshots[0].proxy(CLIENT).unwrap();
            let eds: Vec<&str> = vec![
                "outbound|80||web.shop.svc.cluster.local",
                "outbound|5432||db.shop.svc.cluster.local",
            ];
            for session in [&mut incremental, &mut full] {
                settle(session, &first);
                session.on_request(request(Kind::Endpoint, "", &eds));
                for push in session.push(&first) {
                    session.on_request(request(push.kind, &push.nonce, &eds));
                }
            }
            let mut sent_something = 0;
            for snapshot in &snapshots[1..] {
                let view = snapshot.proxy(CLIENT).unwrap();
                assert!(view.changes().is_some());
                // The full comparison: forget what the session was synced with.
                for state in full.types.values_mut() {
                    state.synced = None;
                }
                let a = incremental.push(&view);
                let b = full.push(&view);
                fn summary(pushes: &[Push]) -> Vec<(Kind, Vec<&str>, &[String], &str)> {
                    pushes
                        .iter()
                        .map(|p| (p.kind, names_changed(p), &p.removed[..], &p.version[..]))
                        .collect()
                }
                assert_eq!(summary(&a), summary(&b), "delta: {delta}");
                sent_something += a.len();
                for (session, pushes) in [(&mut incremental, a), (&mut full, b)] {
                    for push in pushes {
                        session.on_request(request(push.kind, &push.nonce, &eds));
                    }
                }
                let sent = |s: &Session| -> Vec<(String, String)> {
                    s.types[&Kind::Endpoint]
                        .sent
                        .iter()
                        .map(|(n, v)| (n.to_string(), v.version().to_string()))
                        .collect()
                };
                assert_eq!(sent(&incremental), sent(&full));
            }
            // Three of the four snapshots change the endpoint's readiness.
            assert_eq!(sent_something, 3, "delta: {delta}");
        }
    }

    /// Reviewer's case: a State-of-the-World proxy narrows its EDS
    /// subscription (nothing to send), then an endpoint changes: the
    /// version it is sent is the digest of what it holds, by either path.
    #[test]
    fn the_version_follows_a_narrowed_subscription() {
        let snapshots = flapping(&[true, true, false]);
        let web = "outbound|80||web.shop.svc.cluster.local";
        let db = "outbound|5432||db.shop.svc.cluster.local";
        let mut versions = Vec::new();
        for fast in [true, false] {
            let mut session = Session::new(false);
            let first = snapshots[0].proxy(CLIENT).unwrap();
            settle(&mut session, &first);
            session.on_request(request(Kind::Endpoint, "", &[web, db]));
            for push in session.push(&first) {
                session.on_request(request(push.kind, &push.nonce, &[web, db]));
            }
            // Narrowed: nothing to send, but `sent` shrinks.
            session.on_request(request(Kind::Endpoint, "", &[web]));
            assert!(
                session
                    .push(&snapshots[1].proxy(CLIENT).unwrap())
                    .is_empty()
            );
            if !fast {
                for state in session.types.values_mut() {
                    state.synced = None;
                }
            }
            let pushes = session.push(&snapshots[2].proxy(CLIENT).unwrap());
            assert_eq!(pushes.len(), 1, "{pushes:?}");
            let sent = &session.types[&Kind::Endpoint].sent;
            let digest = sent.iter().fold(0, |acc, (name, entry)| {
                acc ^ crate::translate::entry_digest(name, entry.version())
            });
            let expected = format!("{digest:016x}");
            assert_eq!(pushes[0].version, expected, "fast path: {fast}");
            versions.push(pushes[0].version.clone());
        }
        assert_eq!(versions[0], versions[1]);
    }

    /// Issue #11 C.1: Envoy (State-of-the-World) asks for a new cluster's
    /// endpoints quoting the EDS nonce it already acknowledged; the new
    /// name must be served, not dropped as stale.
    #[test]
    fn a_subscription_quoting_the_acknowledged_nonce_is_served() {
        let snap =
            snapshot(&(service("web", "198.19.0.1", false) + &service("api", "198.19.0.2", false)));
        let view = snap.proxy(CLIENT).unwrap();
        let web = "outbound|80||web.shop.svc.cluster.local";
        let api = "outbound|80||api.shop.svc.cluster.local";
        let mut session = Session::new(false);
        session.on_request(request(Kind::Endpoint, "", &[web]));
        let push = session.push(&view).pop().unwrap();
        assert_eq!(
            session.on_request(request(Kind::Endpoint, &push.nonce, &[web])),
            Outcome::Ack
        );
        // The same nonce again, with one more name.
        session.on_request(request(Kind::Endpoint, &push.nonce, &[web, api]));
        assert!(session.has_pending());
        let pushes = session.push(&view);
        assert_eq!(pushes.len(), 1, "{pushes:?}");
        assert_eq!(names_changed(&pushes[0]), vec![api]);
        // An older nonce still counts as stale.
        session.on_request(request(Kind::Endpoint, "0", &[web]));
        assert!(session.types[&Kind::Endpoint].names.contains(api));
    }

    /// Acknowledging listeners and routes costs no cluster comparison while
    /// no cluster is kept only for them.
    #[test]
    fn listener_acks_keep_clusters_synced_unless_some_are_retained() {
        let snap = snapshot(&service("web", "198.19.0.1", false));
        let view = snap.proxy(CLIENT).unwrap();
        let mut session = Session::new(false);
        settle(&mut session, &view);
        assert_eq!(session.types[&Kind::Cluster].retained, 0);
        assert!(session.types[&Kind::Cluster].synced.is_some());
        let nonce = session.types[&Kind::Listener].last_nonce.to_string();
        session.on_request(request(Kind::Listener, &nonce, &[]));
        assert!(session.types[&Kind::Cluster].synced.is_some());
    }

    /// A proxy whose egress scope goes away sees the clusters it could not
    /// see before, though none of them changed: the snapshot's list of
    /// changes does not cover a new scope.
    #[test]
    fn a_proxy_whose_scope_widens_gets_the_clusters_it_did_not_see() {
        let text = |egress: &str| {
            format!(
                "apiVersion: v1\nkind: Namespace\nmetadata: {{name: shop{egress}}}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: other}}\n---\n{}apiVersion: v1\nkind: Service\nmetadata: {{name: db, namespace: other}}\nspec: {{clusterIP: 198.19.0.9, ports: [{{name: http, port: 80}}]}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: client-0, namespace: shop}}\nstatus: {{podIP: 198.18.0.2}}\n",
                service("web", "198.19.0.1", false)
            )
        };
        let mesh = |text: String| {
            let mut index = Index::default();
            for object in file::parse(&text).unwrap() {
                index.apply(object);
            }
            std::sync::Arc::new(index.mesh())
        };
        let scoped = mesh(text(", annotations: {meshd.io/egress: ./*}"));
        let first = Snapshot::new(1, scoped.clone(), Default::default());
        let wide = mesh(text(""));
        let second = Snapshot::next(2, wide.clone(), Default::default(), &first);
        let db = "outbound|80||db.other.svc.cluster.local";
        let mut session = Session::new(true);
        let view = first.proxy(CLIENT).unwrap();
        assert!(view.get(Kind::Cluster, db).is_none(), "db is out of scope");
        settle(&mut session, &view);
        let pushes = session.push(&second.proxy(CLIENT).unwrap());
        let cds = pushes.iter().find(|p| p.kind == Kind::Cluster);
        assert!(
            cds.is_some_and(|p| names_changed(p).contains(&db)),
            "{pushes:?}"
        );
        assert!(session.types[&Kind::Cluster].sent.contains(db));
    }

    fn names_changed(push: &Push) -> Vec<&str> {
        push.changed.iter().map(|r| r.name.as_str()).collect()
    }
}
