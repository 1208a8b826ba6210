//! Sets of named resources kept as a base shared with the snapshot, and so
//! with every other session, plus one session's differences from it.
//!
//! A proxy holds, per type, what it was sent and what it subscribed to.
//! For clusters and load assignments that is the whole mesh: a thousand
//! names and versions per proxy, the same for every proxy of a namespace.
//! Kept as plain maps, those copies were most of the memory of a connected
//! proxy. An [`Overlay`] instead points at the snapshot's own map
//! ([`Overlay::rebase`]) and keeps only the entries where this session
//! differs (its own inbound clusters, a resource it has not been sent yet,
//! a name it did not subscribe to): a session in sync with the snapshot
//! costs a pointer and an empty map.
//!
//! The representation is canonical: an entry equal to the base's (same
//! version) is never kept in the differences, so two overlays on the same
//! base hold the same entries exactly when their differences are equal,
//! and comparing them costs the size of the differences, not of the mesh.

use std::collections::{BTreeMap, BTreeSet};
use std::iter::Peekable;
use std::sync::Arc;

use itertools::EitherOrBoth::{Both, Left, Right};
use itertools::Itertools;

use crate::translate::{Resource, Resources, entry_digest};

/// What an overlay keeps per name.
pub trait Entry: Clone {
    /// The entry a resource of the base stands for.
    fn of(resource: &Arc<Resource>) -> Self;
    /// Whether this entry is the same as the base's `resource`.
    fn matches(&self, resource: &Resource) -> bool;
    /// This entry's share of the set's digest.
    fn digest(&self, name: &str) -> u64;
    /// The share of the entry the base's `resource` stands for, without
    /// making that entry.
    fn digest_of(resource: &Resource, name: &str) -> u64;
    /// Whether two entries of one name are the same.
    fn same(&self, other: &Self) -> bool;
}

/// A resource as the session last sent it, or, for a reconnecting Delta
/// client, the version it says it holds (no body then).
#[derive(Clone, Debug)]
pub enum Sent {
    Resource(Arc<Resource>),
    Held(Box<str>),
}

impl Sent {
    pub fn of(resource: &Arc<Resource>) -> Self {
        Sent::Resource(resource.clone())
    }

    pub fn version(&self) -> &str {
        match self {
            Sent::Resource(r) => &r.version,
            Sent::Held(version) => version,
        }
    }

    pub fn resource(&self) -> Option<&Arc<Resource>> {
        match self {
            Sent::Resource(r) => Some(r),
            Sent::Held(_) => None,
        }
    }
}

impl Entry for Sent {
    fn of(resource: &Arc<Resource>) -> Self {
        Sent::of(resource)
    }

    fn matches(&self, resource: &Resource) -> bool {
        self.version() == resource.version
    }

    fn digest(&self, name: &str) -> u64 {
        match self {
            Sent::Resource(r) => Self::digest_of(r, name),
            Sent::Held(version) => entry_digest(name, version),
        }
    }

    fn digest_of(resource: &Resource, name: &str) -> u64 {
        if resource.name == name {
            // Made with the resource from its name and version, which no
            // one changes after.
            debug_assert_eq!(resource.digest, entry_digest(name, &resource.version));
            resource.digest
        } else {
            entry_digest(name, &resource.version)
        }
    }

    fn same(&self, other: &Self) -> bool {
        self.version() == other.version()
    }
}

/// A subscribed name.
impl Entry for () {
    fn of(_: &Arc<Resource>) -> Self {}

    fn matches(&self, _: &Resource) -> bool {
        true
    }

    fn digest(&self, _: &str) -> u64 {
        0
    }

    fn digest_of(_: &Resource, _: &str) -> u64 {
        0
    }

    fn same(&self, _: &Self) -> bool {
        true
    }
}

/// A shared base: the snapshot's map, and which snapshot it is of.
#[derive(Clone, Debug)]
struct Base {
    snapshot: u64,
    map: Arc<Resources>,
}

/// A set of named entries: a shared base plus differences.
#[derive(Clone, Debug)]
pub struct Overlay<V> {
    base: Option<Base>,
    /// `Some`: an entry that differs from the base's or is not in it;
    /// `None`: a name of the base that is not in this set.
    diff: BTreeMap<String, Option<V>>,
    /// The XOR of every entry's [`Entry::digest`], kept as entries change;
    /// `None` for a set made from a base whose digest was never needed.
    digest: Option<u64>,
    /// How many entries the set holds, kept as entries change (every
    /// request updates the proxy's status, which shows it).
    len: usize,
}

impl<V> Default for Overlay<V> {
    fn default() -> Self {
        Overlay {
            base: None,
            diff: BTreeMap::new(),
            digest: Some(0),
            len: 0,
        }
    }
}

impl<V: Entry> Overlay<V> {
    /// Every entry of `map`, without a digest.
    pub fn based(snapshot: u64, map: &Arc<Resources>) -> Self {
        Overlay {
            base: Some(Base {
                snapshot,
                map: map.clone(),
            }),
            diff: BTreeMap::new(),
            digest: None,
            len: map.len(),
        }
    }

    /// Nothing at all, and no base: a session that has not been sent or
    /// asked for anything of this type yet.
    pub fn is_blank(&self) -> bool {
        self.base.is_none() && self.diff.is_empty()
    }

    /// `other` with its digest worked out: what a blank set becomes when
    /// everything in `other` is sent at once.
    pub fn adopt(&mut self, other: Overlay<V>) {
        let digest = other.digest();
        *self = Overlay {
            digest: Some(digest),
            ..other
        };
    }

    fn base_get(&self, name: &str) -> Option<&Arc<Resource>> {
        self.base.as_ref()?.map.get(name)
    }

    pub fn get(&self, name: &str) -> Option<V> {
        match self.diff.get(name) {
            Some(entry) => entry.clone(),
            None => self.base_get(name).map(V::of),
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        match self.diff.get(name) {
            Some(entry) => entry.is_some(),
            None => self.base_get(name).is_some(),
        }
    }

    /// The digest of every entry (see [`Entry::digest`]): the base's
    /// entries, then the differences (a base entry replaced or removed
    /// cancels out, since the digest is an XOR).
    pub fn digest(&self) -> u64 {
        self.digest.unwrap_or_else(|| {
            let base = self.base.iter().flat_map(|b| b.map.iter());
            let base = base.fold(0, |acc, (name, r)| acc ^ V::digest_of(r, name));
            self.diff.iter().fold(base, |mut acc, (name, entry)| {
                if let Some(r) = self.base_get(name) {
                    acc ^= V::digest_of(r, name);
                }
                if let Some(entry) = entry {
                    acc ^= entry.digest(name);
                }
                acc
            })
        })
    }

    fn account(&mut self, name: &str, old: Option<&V>, new: Option<&V>) {
        if let Some(digest) = &mut self.digest {
            for entry in [old, new].into_iter().flatten() {
                *digest ^= entry.digest(name);
            }
        }
    }

    /// Sets `name`'s entry, returning the one it had.
    pub fn insert(&mut self, name: &str, entry: V) -> Option<V> {
        let old = self.get(name);
        self.account(name, old.as_ref(), Some(&entry));
        if old.is_none() {
            self.len += 1;
        }
        match self.base_get(name) {
            Some(base) if entry.matches(base) => {
                self.diff.remove(name);
            }
            _ => {
                self.diff.insert(name.to_string(), Some(entry));
            }
        }
        old
    }

    /// Removes `name`, returning the entry it had.
    pub fn remove(&mut self, name: &str) -> Option<V> {
        let old = Some(self.get(name)?);
        self.account(name, old.as_ref(), None);
        self.len -= 1;
        if self.base_get(name).is_some() {
            self.diff.insert(name.to_string(), None);
        } else {
            self.diff.remove(name);
        }
        old
    }

    /// Every entry, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, V)> + '_ {
        self.entries().map(|(name, entry)| {
            let entry = match entry {
                Kept::Base(r) => V::of(r),
                Kept::Own(entry) => entry.clone(),
            };
            (name, entry)
        })
    }

    /// Every entry as the set keeps it, in name order.
    fn entries(&self) -> Merge<'_, impl Iterator<Item = (&String, &Arc<Resource>)>, V> {
        Merge {
            base: self.base.iter().flat_map(|b| b.map.iter()).peekable(),
            diff: self.diff.iter().peekable(),
        }
    }

    pub fn names(&self) -> impl Iterator<Item = &str> + '_ {
        self.iter().map(|(name, _)| name)
    }

    pub fn len(&self) -> usize {
        // Every test run checks the count against the entries.
        debug_assert_eq!(self.len, self.iter().count(), "the kept count drifted");
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn same_base(&self, other: &Overlay<impl Entry>) -> bool {
        match (&self.base, &other.base) {
            (Some(a), Some(b)) => Arc::ptr_eq(&a.map, &b.map),
            (None, None) => true,
            _ => false,
        }
    }

    /// The names whose entries differ between `self` and `other` (present
    /// in one only, or with other versions), in name order.
    pub fn differing<'a>(&'a self, other: &'a Overlay<V>) -> Vec<&'a str> {
        if self.same_base(other) {
            // Canonical forms on one base: only names in either's
            // differences can differ.
            let names: BTreeSet<&str> = self
                .diff
                .keys()
                .chain(other.diff.keys())
                .map(String::as_str)
                .collect();
            return names
                .into_iter()
                .filter(|n| !same_entry(self.get(n).as_ref(), other.get(n).as_ref()))
                .collect();
        }
        let mut differing = Vec::new();
        let mut a = self.iter().peekable();
        let mut b = other.iter().peekable();
        loop {
            match (a.peek(), b.peek()) {
                (None, None) => return differing,
                (Some((name, _)), None) => {
                    differing.push(*name);
                    a.next();
                }
                (None, Some((name, _))) => {
                    differing.push(*name);
                    b.next();
                }
                (Some((an, ae)), Some((bn, be))) => match an.cmp(bn) {
                    std::cmp::Ordering::Less => {
                        differing.push(*an);
                        a.next();
                    }
                    std::cmp::Ordering::Greater => {
                        differing.push(*bn);
                        b.next();
                    }
                    std::cmp::Ordering::Equal => {
                        if !same_entry(Some(ae), Some(be)) {
                            differing.push(*an);
                        }
                        a.next();
                        b.next();
                    }
                },
            }
        }
    }

    /// Whether both hold the same entries.
    pub fn same_as(&self, other: &Overlay<V>) -> bool {
        self.differing(other).is_empty()
    }

    /// Keeps only the names `keep` holds.
    pub fn retain_in(&mut self, keep: &Overlay<()>) {
        let drop: Vec<String> = if self.same_base(keep) {
            // Base names `keep` lacks are in its differences; so are the
            // names of this set's differences it holds.
            keep.diff
                .iter()
                .filter(|(_, e)| e.is_none())
                .map(|(n, _)| n.clone())
                .chain(
                    self.diff
                        .iter()
                        .filter(|(n, e)| e.is_some() && !keep.contains(n))
                        .map(|(n, _)| n.clone()),
                )
                .collect()
        } else {
            self.names()
                .filter(|n| !keep.contains(n))
                .map(str::to_string)
                .collect()
        };
        for name in drop {
            self.remove(&name);
        }
    }

    /// Moves the set onto the snapshot's `map`, keeping every entry as it
    /// is. `changed` lists the names whose entries may differ between the
    /// current base and `map` (the snapshot's changes since the base's
    /// snapshot); without it, the whole set is walked once.
    pub fn rebase<'n>(
        &mut self,
        snapshot: u64,
        map: &Arc<Resources>,
        changed: Option<impl IntoIterator<Item = &'n str>>,
    ) {
        let base = Base {
            snapshot,
            map: map.clone(),
        };
        if self.is_blank() {
            // Nothing held: on a base it would be a "not held" mark per name.
            return;
        }
        match (&self.base, changed) {
            (Some(old), _) if Arc::ptr_eq(&old.map, map) => self.base = Some(base),
            (None, _) => {
                // Every entry is explicit: one walk along both, in order,
                // keeps the names that differ and marks the base's names
                // this set lacks.
                let explicit = std::mem::take(&mut self.diff);
                self.diff = explicit
                    .into_iter()
                    .merge_join_by(map.iter(), |(held, _), (name, _)| {
                        held.as_str().cmp(name.as_str())
                    })
                    .filter_map(|both| match both {
                        Left(held) => Some(held),
                        Right((name, _)) => Some((name.clone(), None)),
                        Both((name, entry), (_, r)) => {
                            (!entry.as_ref().is_some_and(|e| e.matches(r))).then_some((name, entry))
                        }
                    })
                    .collect();
                self.base = Some(base);
            }
            (Some(_), Some(changed)) => self.rebase_changed(base, changed),
            (Some(old), None) => {
                // The names whose entries differ between the two bases, by
                // one walk along both (no copy of the set).
                let old = old.map.clone();
                self.rebase_changed(base, changed_names(&old, map));
            }
        }
    }

    /// Moves the set onto `base`, where only the `changed` names may have
    /// other entries than in the current base.
    fn rebase_changed<'n>(&mut self, base: Base, changed: impl IntoIterator<Item = &'n str>) {
        // Names outside `changed` have the same entry in both bases, so
        // their differences stay right as they are.
        let fixes: Vec<(&str, Option<V>)> = changed.into_iter().map(|n| (n, self.get(n))).collect();
        self.base = Some(base);
        let digest = self.digest;
        for (name, entry) in fixes {
            self.diff.remove(name);
            match (entry, self.base_get(name).is_some()) {
                (Some(entry), _) => {
                    self.put(name, entry);
                }
                (None, true) => {
                    self.diff.insert(name.to_string(), None);
                }
                (None, false) => {}
            }
        }
        self.digest = digest;
    }

    /// Sets an entry's representation, without touching the digest.
    fn put(&mut self, name: &str, entry: V) {
        match self.base_get(name) {
            Some(base) if entry.matches(base) => {}
            _ => {
                self.diff.insert(name.to_string(), Some(entry));
            }
        }
    }

    /// The names of entries that are not in the base.
    pub fn outside_base(&self) -> impl Iterator<Item = &str> + '_ {
        self.diff
            .iter()
            .filter(|(name, entry)| entry.is_some() && self.base_get(name).is_none())
            .map(|(name, _)| name.as_str())
    }

    /// How many entries are kept apart from the base (what the set costs
    /// beyond a pointer).
    #[cfg(test)]
    pub fn differences(&self) -> usize {
        self.diff.len()
    }

    /// Which snapshot the base is of.
    pub fn base_snapshot(&self) -> Option<u64> {
        self.base.as_ref().map(|b| b.snapshot)
    }
}

/// The names present in one map only, or with other versions, in name
/// order.
fn changed_names<'a>(before: &'a Resources, after: &'a Resources) -> Vec<&'a str> {
    before
        .iter()
        .merge_join_by(after.iter(), |(b, _), (a, _)| b.cmp(a))
        .filter_map(|both| match both {
            Left((name, _)) | Right((name, _)) => Some(name.as_str()),
            Both((name, b), (_, a)) => {
                (!(Arc::ptr_eq(b, a) || b.version == a.version)).then_some(name.as_str())
            }
        })
        .collect()
}

impl Overlay<Sent> {
    /// The resources sent, in name order, without an entry made for each
    /// (a first push and every State-of-the-World whole set take a
    /// thousand of them per proxy).
    pub fn resources(&self) -> impl Iterator<Item = &Arc<Resource>> + '_ {
        self.entries().filter_map(|(_, entry)| match entry {
            Kept::Base(r) | Kept::Own(Sent::Resource(r)) => Some(r),
            Kept::Own(Sent::Held(_)) => None,
        })
    }
}

impl Overlay<()> {
    /// Adds `names` to the set. A proxy's first subscription (every
    /// cluster's endpoints, at a cold sync) goes to a blank set, which is
    /// built from the names in one sorted pass instead of a thousand
    /// inserts.
    pub fn subscribe(&mut self, names: Vec<String>) {
        if !self.is_blank() {
            for name in names {
                self.insert(&name, ());
            }
            return;
        }
        self.diff = names.into_iter().map(|name| (name, Some(()))).collect();
        self.len = self.diff.len();
    }

    /// A set of names, on the same base as `like` (so that comparing with
    /// it and with sets on that base stays cheap).
    pub fn names_like(like: &Overlay<()>, names: impl IntoIterator<Item = String>) -> Self {
        let Some(base) = &like.base else {
            let mut set = Overlay::default();
            for name in names {
                set.diff.insert(name, Some(()));
            }
            set.len = set.diff.len();
            return set;
        };
        // Both in name order: one walk finds the names outside the base and
        // the base's names left out.
        let mut names: Vec<String> = names.into_iter().collect();
        names.sort_unstable();
        names.dedup();
        let mut set = Overlay {
            base: Some(base.clone()),
            diff: BTreeMap::new(),
            digest: Some(0),
            len: names.len(),
        };
        set.diff = names
            .into_iter()
            .merge_join_by(base.map.keys(), |asked, known| {
                asked.as_str().cmp(known.as_str())
            })
            .filter_map(|both| match both {
                Left(asked) => Some((asked, Some(()))),
                Right(known) => Some((known.clone(), None)),
                Both(..) => None,
            })
            .collect();
        set
    }
}

fn same_entry<V: Entry>(a: Option<&V>, b: Option<&V>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a.same(b),
        _ => false,
    }
}

/// An entry where a set keeps it.
enum Kept<'a, V> {
    Base(&'a Arc<Resource>),
    Own(&'a V),
}

/// Merges a base's entries with the differences, in name order.
struct Merge<'a, B: Iterator<Item = (&'a String, &'a Arc<Resource>)>, V: 'a> {
    base: Peekable<B>,
    diff: Peekable<std::collections::btree_map::Iter<'a, String, Option<V>>>,
}

impl<'a, B, V> Iterator for Merge<'a, B, V>
where
    B: Iterator<Item = (&'a String, &'a Arc<Resource>)>,
    V: Entry + 'a,
{
    type Item = (&'a str, Kept<'a, V>);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let order = match (self.base.peek(), self.diff.peek()) {
                (None, None) => return None,
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some((b, _)), Some((d, _))) => b.cmp(d),
            };
            match order {
                std::cmp::Ordering::Less => {
                    let (name, r) = self.base.next()?;
                    return Some((name, Kept::Base(r)));
                }
                std::cmp::Ordering::Equal => {
                    self.base.next();
                    let (name, entry) = self.diff.next()?;
                    if let Some(entry) = entry {
                        return Some((name, Kept::Own(entry)));
                    }
                }
                std::cmp::Ordering::Greater => {
                    let (name, entry) = self.diff.next()?;
                    if let Some(entry) = entry {
                        return Some((name, Kept::Own(entry)));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshd_proto::envoy::config::endpoint::v3::ClusterLoadAssignment;

    fn resource(name: &str, content: &str) -> Arc<Resource> {
        Resource::new(
            name.to_string(),
            &ClusterLoadAssignment {
                cluster_name: content.to_string(),
                ..Default::default()
            },
            vec![],
        )
    }

    fn map(entries: &[(&str, &str)]) -> Arc<Resources> {
        Arc::new(
            entries
                .iter()
                .map(|(n, c)| (n.to_string(), resource(n, c)))
                .collect(),
        )
    }

    /// The entries, checking on the way that the kept count is theirs.
    fn plain(set: &Overlay<Sent>) -> Vec<(String, String)> {
        let entries: Vec<(String, String)> = set
            .iter()
            .map(|(n, e)| (n.to_string(), e.version().to_string()))
            .collect();
        assert_eq!(set.len(), entries.len(), "the kept count drifted");
        entries
    }

    fn full_digest(set: &Overlay<Sent>) -> u64 {
        set.iter()
            .fold(0, |acc, (n, e)| acc ^ entry_digest(n, e.version()))
    }

    #[test]
    fn a_set_worked_out_from_its_base_has_every_entry_digest_and_resource() {
        let base = map(&[("a", "1"), ("b", "1"), ("c", "1"), ("d", "1")]);
        let mut set = Overlay::<Sent>::based(1, &base);
        assert_eq!(set.digest, None, "worked out only when asked");
        assert_eq!(set.digest(), full_digest(&set));
        set.insert("b", Sent::of(&resource("b", "2")));
        set.remove("c");
        set.insert("e", Sent::Held("held".into()));
        // Kept under another name than its own: hashed, not taken from it.
        set.insert("f", Sent::of(&resource("other", "1")));
        assert_eq!(set.digest, None);
        assert_eq!(set.digest(), full_digest(&set));
        let resources: Vec<(String, String)> = set
            .resources()
            .map(|r| (r.name.clone(), r.version.clone()))
            .collect();
        let expected: Vec<(String, String)> = ["a", "b", "d", "other"]
            .iter()
            .map(|&name| {
                let r = set.get(if name == "other" { "f" } else { name }).unwrap();
                (name.to_string(), r.version().to_string())
            })
            .collect();
        assert_eq!(resources, expected, "every resource, the held one not");
        let mut adopted = Overlay::default();
        adopted.adopt(set.clone());
        assert_eq!(adopted.digest, Some(full_digest(&set)));
    }

    #[test]
    fn a_first_subscription_is_the_set_its_names_make_one_by_one() {
        let asked = ["c", "a", "b", "a"].map(String::from).to_vec();
        let one_by_one = |start: &Overlay<()>| {
            let mut set = start.clone();
            for name in &asked {
                set.insert(name, ());
            }
            set
        };
        let names = |set: &Overlay<()>| -> Vec<String> {
            assert_eq!(set.len(), set.iter().count(), "the kept count drifted");
            set.names().map(String::from).collect()
        };
        let mut blank = Overlay::<()>::default();
        blank.subscribe(asked.clone());
        assert_eq!(names(&blank), ["a", "b", "c"]);
        assert!(blank.same_as(&one_by_one(&Overlay::default())));

        // On a base, names go in one by one, each kept only where it differs.
        let base = map(&[("a", "1"), ("z", "1")]);
        let mut on_base = Overlay::<()>::names_like(&Overlay::based(1, &base), ["z".to_string()]);
        let expected = one_by_one(&on_base);
        on_base.subscribe(asked.clone());
        assert_eq!(names(&on_base), ["a", "b", "c", "z"]);
        assert!(on_base.same_as(&expected));
    }

    #[test]
    fn rebasing_keeps_every_entry_and_the_digest() {
        let v1 = map(&[("a", "1"), ("b", "1"), ("c", "1")]);
        let mut sent = Overlay::<Sent>::default();
        for (name, r) in v1.iter() {
            sent.insert(name, Sent::of(r));
        }
        sent.insert("local", Sent::of(&resource("local", "x")));
        let before = plain(&sent);
        sent.rebase(1, &v1, None::<Vec<&str>>);
        assert_eq!(plain(&sent), before);
        assert_eq!(sent.diff.len(), 1, "only the entry outside the base");
        assert_eq!(sent.digest(), full_digest(&sent));

        // v2: b changed, c gone, d new; the session still holds v1's.
        let v2 = Arc::new({
            let mut m = (*v1).clone();
            m.insert("b".into(), resource("b", "2"));
            m.remove("c");
            m.insert("d".into(), resource("d", "1"));
            m
        });
        let mut by_changes = sent.clone();
        by_changes.rebase(2, &v2, Some(["b", "c", "d"]));
        assert_eq!(changed_names(&v1, &v2), ["b", "c", "d"]);
        let mut by_walk = sent.clone();
        by_walk.rebase(2, &v2, None::<Vec<&str>>);
        for set in [&by_changes, &by_walk] {
            assert_eq!(plain(set), before);
            assert_eq!(set.digest(), full_digest(set));
        }
        let diff = |s: &Overlay<Sent>| -> Vec<(String, Option<String>)> {
            s.diff
                .iter()
                .map(|(n, e)| (n.clone(), e.as_ref().map(|e| e.version().to_string())))
                .collect()
        };
        assert_eq!(diff(&by_changes), diff(&by_walk), "one canonical form");

        // Brought up to date, the session's differences shrink back.
        by_changes.insert("b", Sent::of(&v2["b"]));
        by_changes.remove("c");
        by_changes.insert("d", Sent::of(&v2["d"]));
        assert_eq!(by_changes.diff.len(), 1);
        assert_eq!(by_changes.len(), 4);
        assert_eq!(by_changes.digest(), full_digest(&by_changes));
        assert!(by_changes.same_as(&{
            let mut s = Overlay::<Sent>::based(2, &v2);
            s.insert("local", Sent::of(&resource("local", "x")));
            s
        }));
    }

    #[test]
    fn names_and_differences_on_one_base_cost_only_the_differences() {
        let base = map(&[("a", "1"), ("b", "1"), ("c", "1")]);
        // A blank set stays blank on a base (no mark per name)...
        let mut blank = Overlay::<()>::default();
        blank.rebase(1, &base, None::<Vec<&str>>);
        assert!(blank.is_blank());
        // ...a set of names moves onto it.
        let mut names = Overlay::<()>::default();
        for name in ["a", "b", "c"] {
            names.insert(name, ());
        }
        names.rebase(1, &base, None::<Vec<&str>>);
        assert!(names.diff.is_empty());
        let wanted = Overlay::names_like(&names, ["a".to_string(), "z".to_string()]);
        assert_eq!(wanted.names().collect::<Vec<_>>(), ["a", "z"]);
        assert_eq!(wanted.diff.len(), 3, "b and c left out, z added");
        let mut sent = Overlay::<Sent>::based(1, &base);
        sent.retain_in(&wanted);
        assert_eq!(sent.names().collect::<Vec<_>>(), ["a"]);
        let all = Overlay::<Sent>::based(1, &base);
        assert_eq!(sent.differing(&all), ["b", "c"]);
    }
}
