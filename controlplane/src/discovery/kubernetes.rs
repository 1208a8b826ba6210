//! The index of a list-then-watch source of Kubernetes objects: what the
//! watchers of the API server (in `meshd-k8s`, which speaks to it) report,
//! kept in the same [`Index`] the file registry fills.
//!
//! ```text
//! watcher(Namespace) ─┐
//! watcher(Service) ───┤ Update ──> KubeIndex (Index + last-good) ──> Mesh ──> watch channel
//! watcher(EndpointSlice)┤                    (published once every kind listed,
//! watcher(Pod) ───────┘                      then at most every publish interval)
//! ```
//!
//! A re-list (after a 410 Gone or a reconnect) replaces that kind's objects
//! wholesale, so nothing is lost or duplicated. An object that fails to
//! parse is logged and its last good version keeps serving.

use std::collections::{BTreeMap, BTreeSet};

use super::index::Index;
use super::objects::{Object, ObjectError, ObjectRef};
use crate::model::Mesh;

/// The kinds the source watches; the mesh is published once each has been
/// listed, so proxies never see services without their endpoints.
pub const KINDS: [&str; 4] = ["Namespace", "Service", "EndpointSlice", "Pod"];

/// One change from a watcher.
#[derive(Debug)]
pub enum Update {
    Apply(Object),
    Delete(ObjectRef),
    /// A bad object: logged, and its last good version (if any) stays.
    Rejected(ObjectRef, ObjectError),
    /// A complete (re-)list of one kind; the objects in `rejected` failed to
    /// parse and keep their last good versions.
    Reset {
        kind: &'static str,
        objects: Vec<Object>,
        rejected: Vec<(ObjectRef, ObjectError)>,
    },
}

/// The index as the Kubernetes source keeps it.
#[derive(Debug, Default)]
pub struct KubeIndex {
    index: Index,
    listed: BTreeSet<&'static str>,
    dirty: bool,
    /// Objects whose current version was rejected, with why.
    problems: BTreeMap<ObjectRef, ObjectError>,
}

impl KubeIndex {
    pub fn update(&mut self, update: Update) {
        match update {
            Update::Apply(object) => {
                self.problems.remove(&object.object_ref());
                self.index.apply(object);
                self.dirty = true;
            }
            Update::Delete(object) => {
                self.problems.remove(&object);
                self.index.delete(&object);
                self.dirty = true;
            }
            Update::Rejected(object, error) => {
                // Nothing changes in the index; changes before it still
                // count as unpublished.
                tracing::error!(object = %object, "rejected: {error}; its last good version keeps serving");
                self.problems.insert(object, error);
            }
            Update::Reset {
                kind,
                objects,
                rejected,
            } => {
                self.problems.retain(|r, _| r.kind != kind);
                let keep: Vec<ObjectRef> = rejected.iter().map(|(r, _)| r.clone()).collect();
                for (object, error) in rejected {
                    tracing::error!(object = %object, "rejected: {error}; its last good version keeps serving");
                    self.problems.insert(object, error);
                }
                self.index.reset(kind, objects, &keep);
                self.listed.insert(kind);
                self.dirty = true;
            }
        }
    }

    /// Whether every kind has been listed at least once.
    pub fn ready(&self) -> bool {
        KINDS.iter().all(|k| self.listed.contains(k))
    }

    /// The mesh, when ready and changed since the last call.
    pub fn take_mesh(&mut self) -> Option<Mesh> {
        if !self.ready() || !self.dirty {
            return None;
        }
        self.dirty = false;
        Some(self.index.mesh())
    }

    pub fn problems(&self) -> &BTreeMap<ObjectRef, ObjectError> {
        &self.problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ServiceKey;
    use k8s_openapi::api::core::v1 as core;

    fn svc(name: &str, vip: &str) -> core::Service {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"clusterIP": vip, "ports": [{"name": "http", "port": 80}]}
        }))
        .unwrap()
    }

    fn list_all(index: &mut KubeIndex, services: Vec<Object>) {
        for kind in KINDS {
            let objects = if kind == "Service" {
                services.clone()
            } else {
                vec![]
            };
            index.update(Update::Reset {
                kind,
                objects,
                rejected: vec![],
            });
        }
    }

    #[test]
    fn nothing_is_published_until_every_kind_is_listed() {
        let mut index = KubeIndex::default();
        index.update(Update::Apply(
            Object::from_service(&svc("web", "198.19.0.1")).unwrap(),
        ));
        assert!(index.take_mesh().is_none());
        list_all(
            &mut index,
            vec![Object::from_service(&svc("web", "198.19.0.1")).unwrap()],
        );
        let mesh = index.take_mesh().unwrap();
        assert!(mesh.services.contains_key(&ServiceKey::new("shop", "web")));
        assert!(index.take_mesh().is_none(), "nothing changed since");
    }

    #[test]
    fn a_relist_replaces_without_losing_or_duplicating() {
        let mut index = KubeIndex::default();
        list_all(
            &mut index,
            vec![
                Object::from_service(&svc("web", "198.19.0.1")).unwrap(),
                Object::from_service(&svc("api", "198.19.0.2")).unwrap(),
            ],
        );
        index.take_mesh();
        // After a 410 Gone, the watcher lists again: api was deleted while
        // the watch was down, db was added.
        index.update(Update::Reset {
            kind: "Service",
            objects: vec![
                Object::from_service(&svc("web", "198.19.0.1")).unwrap(),
                Object::from_service(&svc("db", "198.19.0.3")).unwrap(),
            ],
            rejected: vec![],
        });
        let mesh = index.take_mesh().unwrap();
        let names: Vec<_> = mesh.services.keys().map(|k| k.name.as_str()).collect();
        assert_eq!(names, ["db", "web"]);
    }

    #[test]
    fn a_bad_object_keeps_its_last_good_version() {
        let mut index = KubeIndex::default();
        list_all(
            &mut index,
            vec![Object::from_service(&svc("web", "198.19.0.1")).unwrap()],
        );
        index.take_mesh();
        let bad = svc("web", "not-an-ip");
        let err = Object::from_service(&bad).unwrap_err();
        let bad = ObjectRef {
            kind: "Service",
            namespace: Some("shop".into()),
            name: "web".into(),
        };
        index.update(Update::Rejected(bad.clone(), err.clone()));
        assert!(index.take_mesh().is_none(), "a rejection changes nothing");
        // Also across a re-list.
        index.update(Update::Reset {
            kind: "Service",
            objects: vec![],
            rejected: vec![(bad, err)],
        });
        let mesh = index.take_mesh().unwrap();
        let web = &mesh.services[&ServiceKey::new("shop", "web")];
        assert_eq!(web.vip, Some("198.19.0.1".parse().unwrap()));
        assert_eq!(index.problems().len(), 1);
        // Fixed: the problem clears.
        index.update(Update::Apply(
            Object::from_service(&svc("web", "198.19.0.5")).unwrap(),
        ));
        assert!(index.problems().is_empty());
    }
}
