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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::Hasher;
use std::sync::Arc;

use crate::translate::{Kind, ProxyView, Resource};

/// A resource as the session last sent it (or as a reconnecting delta
/// client says it holds it, in which case there is no body).
#[derive(Clone, Debug)]
pub struct Sent {
    pub version: String,
    pub resource: Option<Arc<Resource>>,
}

impl Sent {
    fn of(resource: &Arc<Resource>) -> Self {
        Sent {
            version: resource.version.clone(),
            resource: Some(resource.clone()),
        }
    }
}

type SentMap = BTreeMap<String, Sent>;

/// What a request says about subscriptions.
#[derive(Debug)]
pub enum Subscribe {
    /// State-of-the-World: the complete list of names (empty = wildcard for
    /// listeners and clusters).
    Replace(Vec<String>),
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
    /// Every resource in the subscription (State-of-the-World).
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
    pub names: BTreeSet<String>,
    /// What the proxy has been sent (for Delta: what it holds, as far as
    /// we know).
    pub sent: SentMap,
    /// What the proxy acknowledged last.
    pub acked: SentMap,
    pub acked_version: String,
    pub sent_version: String,
    /// The response awaiting an answer: nonce and the set it carried.
    inflight: Option<(String, SentMap)>,
    pub last_nack: Option<(String, String)>,
}

#[derive(Debug)]
pub struct Session {
    pub delta: bool,
    pub types: BTreeMap<Kind, TypeState>,
    next_nonce: u64,
}

impl Session {
    pub fn new(delta: bool) -> Self {
        Session {
            delta,
            types: Kind::PUSH_ORDER
                .into_iter()
                .map(|k| (k, TypeState::default()))
                .collect(),
            next_nonce: 0,
        }
    }

    fn state(&mut self, kind: Kind) -> &mut TypeState {
        self.types.entry(kind).or_default()
    }

    /// Applies a request: ACK/NACK bookkeeping, then subscription changes.
    pub fn on_request(&mut self, req: Request) -> Outcome {
        let delta = self.delta;
        let state = self.state(req.kind);
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
                    // A stale nonce: the proxy answers an older response.
                    // State-of-the-World says to ignore it entirely.
                    state.inflight = other;
                    if !delta {
                        return Outcome::Other;
                    }
                }
            }
        }
        state.requested = true;
        match req.subscribe {
            Subscribe::Replace(names) => {
                state.wildcard =
                    req.kind.is_wildcard() && (names.is_empty() || names.iter().any(|n| n == "*"));
                state.names = names.into_iter().filter(|n| n != "*").collect();
                if !state.wildcard {
                    // Forget what the proxy no longer asks for, so asking
                    // again gets it again.
                    let names = &state.names;
                    state.sent.retain(|name, _| names.contains(name));
                }
            }
            Subscribe::Change {
                subscribe,
                unsubscribe,
                initial_versions,
            } => {
                let first = !state.wildcard && state.names.is_empty() && state.sent.is_empty();
                if first && req.kind.is_wildcard() && subscribe.is_empty() {
                    state.wildcard = true;
                }
                for name in subscribe {
                    if name == "*" {
                        state.wildcard = true;
                    } else {
                        state.names.insert(name);
                    }
                }
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
                    state.sent.entry(name).or_insert(Sent {
                        version,
                        resource: None,
                    });
                }
            }
        }
        outcome
    }

    /// Everything that should be sent now to bring the proxy up to `view`.
    pub fn push(&mut self, view: &ProxyView) -> Vec<Push> {
        let mut pushes = Vec::new();
        for kind in Kind::PUSH_ORDER {
            if !self.types[&kind].requested {
                continue;
            }
            let desired = self.desired(kind, view);
            if let Some(push) = self.plan(kind, desired) {
                if kind == Kind::Cluster {
                    // Envoy re-warms a changed cluster and waits for its
                    // endpoints: make sure they are sent again.
                    let eds = self.state(Kind::Endpoint);
                    for r in &push.changed {
                        eds.sent.remove(&r.name);
                    }
                }
                pushes.push(push);
            }
        }
        pushes
    }

    fn desired(&self, kind: Kind, view: &ProxyView) -> SentMap {
        let state = &self.types[&kind];
        let mut desired: SentMap = if state.wildcard {
            view.all(kind)
                .map(|r| (r.name.clone(), Sent::of(r)))
                .collect()
        } else {
            state
                .names
                .iter()
                .filter_map(|n| view.get(kind, n))
                .map(|r| (r.name.clone(), Sent::of(r)))
                .collect()
        };
        if kind == Kind::Cluster {
            // Keep clusters that config the proxy holds still points at.
            for referrer in [Kind::Listener, Kind::Route] {
                let s = &self.types[&referrer];
                for held in s.sent.values().chain(s.acked.values()) {
                    for cluster in held.resource.iter().flat_map(|r| &r.cluster_refs) {
                        if !desired.contains_key(cluster)
                            && let Some(old) = state.sent.get(cluster)
                        {
                            desired.insert(cluster.clone(), old.clone());
                        }
                    }
                }
            }
        }
        desired
    }

    fn plan(&mut self, kind: Kind, desired: SentMap) -> Option<Push> {
        let state = &self.types[&kind];
        let changed: Vec<Arc<Resource>> = desired
            .iter()
            .filter(|(name, d)| state.sent.get(*name).is_none_or(|s| s.version != d.version))
            .filter_map(|(_, d)| d.resource.clone())
            .collect();
        let removed: Vec<String> = state
            .sent
            .keys()
            .filter(|name| !desired.contains_key(*name))
            .cloned()
            .collect();
        // The first answer goes out even when empty: Envoy waits for it
        // before it finishes initialising.
        let never_sent = state.sent_version.is_empty();
        if changed.is_empty() && removed.is_empty() && !never_sent {
            return None;
        }
        let version = digest(&desired);
        self.next_nonce += 1;
        let nonce = self.next_nonce.to_string();
        let all = desired
            .values()
            .filter_map(|d| d.resource.clone())
            .collect();
        let state = self.state(kind);
        state.sent = desired;
        state.sent_version = version.clone();
        state.inflight = Some((nonce.clone(), state.sent.clone()));
        Some(Push {
            kind,
            nonce,
            version,
            all,
            changed,
            removed,
        })
    }
}

/// A digest of a set of resources' names and versions.
fn digest(set: &SentMap) -> String {
    let mut hasher = std::hash::DefaultHasher::new();
    for (name, sent) in set {
        hasher.write(name.as_bytes());
        hasher.write_u8(0);
        hasher.write(sent.version.as_bytes());
        hasher.write_u8(0);
    }
    format!("{:016x}", hasher.finish())
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
        assert!(session.types[&Kind::Cluster].sent.contains_key(db));

        // Once the proxy ACKs the new listener, the cluster is removed.
        session.on_request(request(Kind::Listener, &lds.nonce, &[]));
        let pushes = session.push(&view);
        let cds = pushes
            .iter()
            .find(|p| p.kind == Kind::Cluster)
            .expect("a CDS push");
        assert!(!names(cds).contains(&db));
        assert_eq!(cds.removed, vec![db.to_string()]);
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
}
