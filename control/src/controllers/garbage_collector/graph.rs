//! Graph: who owns whom, keyed by UID, as the metadata watches report it — pure and owned by
//! the collector's one loop (upstream's `GraphBuilder` with its `uidToNode`,
//! `pkg/controller/garbagecollector/graph_builder.go`).
//!
//! Invariants: every observed object is a [`Node`] under its UID; `dependents[owner]` holds
//! the UID of every node that names `owner` in its ownerReferences, whether or not the owner
//! was ever observed (upstream's "virtual" node: the entry lives as long as a dependent names
//! it); a change returns the UIDs whose work may have changed, and [`Graph::work`] says what
//! that work is from the graph alone. The graph is a hint: it decides who to look at and when
//! nothing needs doing, never that something is gone — that takes a live read.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::discovery::ApiResource;

use super::kinds::group_of;
use super::verdict::{self, Blocker, Foreground};

/// One object, by type, place, name and UID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub resource: Arc<ApiResource>,
    /// None for a cluster-scoped object.
    pub namespace: Option<String>,
    pub name: String,
    pub uid: String,
}

/// `deployments.apps shop/web`, `nodes worker-1`.
impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.resource;
        if r.group.is_empty() {
            write!(f, "{}", r.plural)?;
        } else {
            write!(f, "{}.{}", r.plural, r.group)?;
        }
        match &self.namespace {
            Some(ns) => write!(f, " {ns}/{}", self.name),
            None => write!(f, " {}", self.name),
        }
    }
}

/// What the graph keeps of an observed object.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub identity: Identity,
    pub owners: Vec<OwnerReference>,
    /// It has a deletionTimestamp: deletion is a one-way trip.
    pub deleting: bool,
    pub foreground: bool,
    pub orphan: bool,
}

impl Node {
    /// None for metadata without a name or UID (never sent by a real API server).
    pub fn from_meta(resource: Arc<ApiResource>, meta: &ObjectMeta) -> Option<Node> {
        Some(Node {
            identity: Identity {
                resource,
                namespace: meta.namespace.clone().filter(|ns| !ns.is_empty()),
                name: meta.name.clone()?,
                uid: meta.uid.clone()?,
            },
            owners: meta.owner_references.clone().unwrap_or_default(),
            deleting: meta.deletion_timestamp.is_some(),
            foreground: verdict::has_finalizer(meta, verdict::FOREGROUND),
            orphan: verdict::has_finalizer(meta, verdict::ORPHAN),
        })
    }

    /// Being deleted in the foreground: held until its blocking dependents are gone.
    pub fn deleting_dependents(&self) -> bool {
        self.deleting && self.foreground
    }

    /// Being deleted with orphaning: held until its dependents no longer name it.
    pub fn orphaning(&self) -> bool {
        self.deleting && self.orphan
    }
}

/// A dependent whose owners need a live look.
#[derive(Clone, Debug, PartialEq)]
pub struct Judge {
    pub identity: Identity,
    /// The owner UIDs the graph has seen, where they should be (others may exist unwatched).
    pub observed: HashSet<String>,
    /// References whose owner the graph has seen in another namespace than the dependent's:
    /// cross-namespace ownership does not exist, so these are dangling and worth an event.
    pub misplaced: Vec<OwnerReference>,
    pub has_dependents: bool,
    pub dependent_deleting_dependents: bool,
}

/// What is to be done about one UID, as far as the graph can tell.
#[derive(Clone, Debug, PartialEq)]
pub enum Work {
    /// Judge a dependent against the live state of its owners.
    Judge(Judge),
    /// An owner deleted with `orphan`: detach these dependents, then remove the finalizer.
    Orphan {
        owner: Identity,
        dependents: Vec<Identity>,
    },
    /// An owner deleted in the foreground that nothing blocks any more: remove
    /// `foregroundDeletion`.
    Release { owner: Identity },
    /// An owner deleted in the foreground, still blocked: judge these dependents.
    Nudge(Vec<String>),
}

#[derive(Debug, Default)]
pub struct Graph {
    nodes: HashMap<String, Node>,
    dependents: HashMap<String, BTreeSet<String>>,
}

impl Graph {
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn get(&self, uid: &str) -> Option<&Node> {
        self.nodes.get(uid)
    }

    /// An object was added or changed. Returns the UIDs to look at.
    pub fn apply(&mut self, node: Node) -> Vec<String> {
        let uid = node.identity.uid.clone();
        let before = self.nodes.remove(&uid);
        let old_owners = before
            .as_ref()
            .map(|b| b.owners.clone())
            .unwrap_or_default();
        for gone in old_owners
            .iter()
            .filter(|o| !node.owners.iter().any(|n| n.uid == o.uid))
        {
            self.unlink(&gone.uid, &uid);
        }
        for owner in &node.owners {
            self.dependents
                .entry(owner.uid.clone())
                .or_default()
                .insert(uid.clone());
        }

        let mut look = Vec::new();
        let owners_changed = before.as_ref().is_none_or(|b| b.owners != node.owners);
        // An owner waiting on its dependents hears of any change in who depends on it, or
        // how (upstream: `addUnblockedOwnersToDeleteQueue`, and new dependents to orphan).
        if owners_changed {
            for owner in old_owners.iter().chain(&node.owners) {
                if self
                    .nodes
                    .get(&owner.uid)
                    .is_some_and(|o| o.deleting_dependents() || o.orphaning())
                {
                    look.push(owner.uid.clone());
                }
            }
        }
        if node.deleting_dependents() {
            look.push(uid.clone());
            // Upstream's `processTransitions`: when the foreground deletion starts, every
            // dependent is judged (and so deleted: its owner now waits for it).
            if !before.as_ref().is_some_and(Node::deleting_dependents) {
                look.extend(self.dependents.get(&uid).into_iter().flatten().cloned());
            }
        } else if node.orphaning() || (owners_changed && !node.deleting && !self.all_solid(&node)) {
            // Its dependents to orphan, or new owners the graph cannot vouch for (an update
            // that leaves the owners as they were changes nothing of its verdict: the
            // owners' own events say when they go).
            look.push(uid.clone());
        }
        self.nodes.insert(uid, node);
        dedup(look)
    }

    /// An object is gone. Returns the UIDs to look at: its dependents (their owner may be
    /// gone for good) and its owners waiting for it.
    pub fn remove(&mut self, uid: &str) -> Vec<String> {
        let Some(node) = self.nodes.remove(uid) else {
            return Vec::new();
        };
        let mut look = Vec::new();
        for owner in &node.owners {
            self.unlink(&owner.uid, uid);
            if self
                .nodes
                .get(&owner.uid)
                .is_some_and(Node::deleting_dependents)
            {
                look.push(owner.uid.clone());
            }
        }
        look.extend(self.dependents.get(uid).into_iter().flatten().cloned());
        dedup(look)
    }

    /// A complete listing of one type: its nodes not in `seen` were deleted while the watch
    /// was down. Returns the UIDs to look at.
    pub fn relisted(&mut self, resource: &ApiResource, seen: &HashSet<String>) -> Vec<String> {
        let gone: Vec<String> = self
            .nodes
            .values()
            .filter(|n| *n.identity.resource == *resource && !seen.contains(&n.identity.uid))
            .map(|n| n.identity.uid.clone())
            .collect();
        let mut look = Vec::new();
        for uid in gone {
            look.extend(self.remove(&uid));
        }
        dedup(look)
    }

    /// What is to be done about `uid`; None when nothing is, as far as the graph can tell.
    pub fn work(&self, uid: &str) -> Option<Work> {
        let node = self.nodes.get(uid)?;
        let dependents = || {
            self.dependents
                .get(uid)
                .into_iter()
                .flatten()
                .filter_map(|d| self.nodes.get(d))
        };
        if node.orphaning() {
            return Some(Work::Orphan {
                owner: node.identity.clone(),
                dependents: dependents().map(|d| d.identity.clone()).collect(),
            });
        }
        if node.deleting_dependents() {
            let blockers: Vec<Blocker> = dependents()
                .map(|d| Blocker {
                    uid: d.identity.uid.clone(),
                    blocks: d
                        .owners
                        .iter()
                        .any(|o| o.uid == uid && o.block_owner_deletion == Some(true)),
                    deleting_dependents: d.deleting_dependents(),
                })
                .collect();
            return match verdict::foreground(&blockers) {
                Foreground::Release => Some(Work::Release {
                    owner: node.identity.clone(),
                }),
                Foreground::Wait { nudge } if nudge.is_empty() => None,
                Foreground::Wait { nudge } => Some(Work::Nudge(nudge)),
            };
        }
        // Deletion is a one-way trip: its dependents are looked at when it is gone.
        if node.deleting || node.owners.is_empty() || self.all_solid(node) {
            return None;
        }
        Some(Work::Judge(Judge {
            identity: node.identity.clone(),
            observed: node
                .owners
                .iter()
                .filter(|o| self.observed(o, node))
                .map(|o| o.uid.clone())
                .collect(),
            misplaced: node
                .owners
                .iter()
                .filter(|o| self.misplaced(o, node))
                .cloned()
                .collect(),
            has_dependents: dependents().next().is_some(),
            dependent_deleting_dependents: dependents().any(Node::deleting_dependents),
        }))
    }

    /// Whether the graph alone shows every owner of `node` in place and not waiting for its
    /// dependents: then nothing is to be done, without asking the API server.
    fn all_solid(&self, node: &Node) -> bool {
        node.owners.iter().all(|o| {
            self.observed(o, node)
                && self
                    .nodes
                    .get(&o.uid)
                    .is_some_and(|owner| !owner.deleting_dependents())
        })
    }

    /// The owner was observed with the coordinates the reference gives, where a dependent's
    /// owner can be: cluster-scoped, or in the dependent's namespace.
    fn observed(&self, reference: &OwnerReference, dependent: &Node) -> bool {
        self.nodes.get(&reference.uid).is_some_and(|owner| {
            let id = &owner.identity;
            id.name == reference.name
                && id.resource.kind == reference.kind
                && id.resource.group == group_of(&reference.api_version)
                && (id.namespace.is_none() || id.namespace == dependent.identity.namespace)
        })
    }

    /// The owner was observed in a namespace other than the dependent's (or the dependent is
    /// cluster-scoped and the owner namespaced).
    fn misplaced(&self, reference: &OwnerReference, dependent: &Node) -> bool {
        self.nodes.get(&reference.uid).is_some_and(|owner| {
            owner.identity.namespace.is_some()
                && owner.identity.namespace != dependent.identity.namespace
        })
    }

    fn unlink(&mut self, owner: &str, dependent: &str) {
        if let Some(set) = self.dependents.get_mut(owner) {
            set.remove(dependent);
            if set.is_empty() {
                self.dependents.remove(owner);
            }
        }
    }

    /// Nodes of a type no longer served: gone from the graph. Returns the UIDs to look at.
    pub fn forget(&mut self, resource: &ApiResource) -> Vec<String> {
        self.relisted(resource, &HashSet::new())
    }

    #[cfg(test)]
    fn dependents_of(&self, owner: &str) -> Vec<&str> {
        self.dependents
            .get(owner)
            .into_iter()
            .flatten()
            .map(String::as_str)
            .collect()
    }
}

fn dedup(mut uids: Vec<String>) -> Vec<String> {
    let mut seen = HashSet::new();
    uids.retain(|u| seen.insert(u.clone()));
    uids
}

#[cfg(test)]
mod tests {
    use kube::core::gvk::GroupVersion;

    use super::*;

    fn resource(group: &str, kind: &str, plural: &str) -> Arc<ApiResource> {
        Arc::new(ApiResource {
            group: group.into(),
            version: "v1".into(),
            api_version: GroupVersion::gv(group, "v1").api_version(),
            kind: kind.into(),
            plural: plural.into(),
        })
    }

    fn rs() -> Arc<ApiResource> {
        resource("apps", "ReplicaSet", "replicasets")
    }

    fn pod() -> Arc<ApiResource> {
        resource("", "Pod", "pods")
    }

    fn owned_by(uid: &str, blocks: bool) -> OwnerReference {
        OwnerReference {
            api_version: "apps/v1".into(),
            kind: "ReplicaSet".into(),
            name: uid.into(),
            uid: uid.into(),
            controller: Some(true),
            block_owner_deletion: Some(blocks),
        }
    }

    fn node(resource: Arc<ApiResource>, ns: &str, uid: &str, owners: &[OwnerReference]) -> Node {
        Node {
            identity: Identity {
                resource,
                namespace: (!ns.is_empty()).then(|| ns.to_owned()),
                name: uid.into(),
                uid: uid.into(),
            },
            owners: owners.to_vec(),
            deleting: false,
            foreground: false,
            orphan: false,
        }
    }

    fn deleted(mut n: Node, foreground: bool, orphan: bool) -> Node {
        n.deleting = true;
        n.foreground = foreground;
        n.orphan = orphan;
        n
    }

    #[test]
    fn a_dependent_of_an_observed_owner_needs_no_look() {
        let mut g = Graph::default();
        assert!(g.apply(node(rs(), "shop", "rs1", &[])).is_empty());
        assert!(
            g.apply(node(pod(), "shop", "p1", &[owned_by("rs1", true)]))
                .is_empty()
        );
        assert_eq!(g.work("p1"), None);
        assert_eq!(g.dependents_of("rs1"), vec!["p1"]);
    }

    #[test]
    fn a_dependent_whose_owner_was_never_seen_is_judged() {
        let mut g = Graph::default();
        assert_eq!(
            g.apply(node(pod(), "shop", "p1", &[owned_by("rs1", true)])),
            vec!["p1"]
        );
        let Some(Work::Judge(judge)) = g.work("p1") else {
            panic!("a judge: {:?}", g.work("p1"));
        };
        assert!(judge.observed.is_empty());
        assert!(!judge.has_dependents);
        // The owner shows up later: nothing to do any more.
        g.apply(node(rs(), "shop", "rs1", &[]));
        assert_eq!(g.work("p1"), None);
    }

    #[test]
    fn an_update_that_keeps_the_owners_does_not_judge_again() {
        let mut g = Graph::default();
        let p1 = node(pod(), "shop", "p1", &[owned_by("rs1", true)]);
        assert_eq!(g.apply(p1.clone()), vec!["p1"]);
        assert!(g.apply(p1).is_empty(), "a status update, say");
        assert!(matches!(g.work("p1"), Some(Work::Judge(_))));
    }

    #[test]
    fn an_owner_that_goes_wakes_its_dependents() {
        let mut g = Graph::default();
        g.apply(node(rs(), "shop", "rs1", &[]));
        g.apply(node(pod(), "shop", "p1", &[owned_by("rs1", true)]));
        g.apply(node(pod(), "shop", "p2", &[owned_by("rs1", true)]));
        assert_eq!(g.remove("rs1"), vec!["p1", "p2"]);
        assert!(matches!(g.work("p1"), Some(Work::Judge(_))));
        assert_eq!(g.remove("rs1"), Vec::<String>::new(), "already gone");
        // The virtual owner stays while dependents name it, and goes with them.
        assert_eq!(g.dependents_of("rs1"), vec!["p1", "p2"]);
        g.remove("p1");
        g.remove("p2");
        assert!(g.dependents_of("rs1").is_empty());
        assert!(g.is_empty());
    }

    #[test]
    fn an_owner_in_another_namespace_is_misplaced() {
        let mut g = Graph::default();
        g.apply(node(rs(), "other", "rs1", &[]));
        g.apply(node(pod(), "shop", "p1", &[owned_by("rs1", true)]));
        let Some(Work::Judge(judge)) = g.work("p1") else {
            panic!("a judge");
        };
        assert!(judge.observed.is_empty());
        assert_eq!(judge.misplaced, vec![owned_by("rs1", true)]);

        // A cluster-scoped dependent of a namespaced owner too.
        let pv = resource("", "PersistentVolume", "persistentvolumes");
        g.apply(node(pv, "", "pv1", &[owned_by("rs1", true)]));
        let Some(Work::Judge(judge)) = g.work("pv1") else {
            panic!("a judge");
        };
        assert_eq!(judge.misplaced.len(), 1);

        // A cluster-scoped owner serves dependents anywhere.
        let ns = resource("", "Namespace", "namespaces");
        g.apply(node(ns, "", "ns1", &[]));
        let by_ns = OwnerReference {
            api_version: "v1".into(),
            kind: "Namespace".into(),
            ..owned_by("ns1", false)
        };
        g.apply(node(pod(), "shop", "p2", &[by_ns]));
        assert_eq!(g.work("p2"), None);
    }

    #[test]
    fn a_reference_with_other_coordinates_than_the_observed_owner_is_judged() {
        let mut g = Graph::default();
        g.apply(node(rs(), "shop", "rs1", &[]));
        let wrong_kind = OwnerReference {
            kind: "StatefulSet".into(),
            ..owned_by("rs1", true)
        };
        g.apply(node(pod(), "shop", "p1", &[wrong_kind]));
        assert!(matches!(g.work("p1"), Some(Work::Judge(_))));
    }

    #[test]
    fn a_foreground_deletion_judges_every_dependent_and_waits_for_the_blocking_ones() {
        let mut g = Graph::default();
        g.apply(node(rs(), "shop", "rs1", &[]));
        g.apply(node(pod(), "shop", "p1", &[owned_by("rs1", true)]));
        g.apply(node(pod(), "shop", "p2", &[owned_by("rs1", false)]));
        let look = g.apply(deleted(node(rs(), "shop", "rs1", &[]), true, false));
        assert_eq!(look, vec!["rs1", "p1", "p2"]);
        assert_eq!(g.work("rs1"), Some(Work::Nudge(vec!["p1".into()])));
        // The owner now waits: its dependents are judged.
        assert!(matches!(g.work("p2"), Some(Work::Judge(_))));
        // Updates of the owner do not wake the dependents again.
        assert_eq!(
            g.apply(deleted(node(rs(), "shop", "rs1", &[]), true, false)),
            vec!["rs1"]
        );
        // The blocking pod is being deleted (grace period): nothing new to do for it.
        assert_eq!(
            g.apply(deleted(
                node(pod(), "shop", "p1", &[owned_by("rs1", true)]),
                false,
                false
            )),
            Vec::<String>::new()
        );
        assert_eq!(g.work("p1"), None);
        // The non-blocking one goes: the owner is still blocked.
        assert_eq!(g.remove("p2"), vec!["rs1"]);
        assert_eq!(g.work("rs1"), Some(Work::Nudge(vec!["p1".into()])));
        // The blocking one goes: the owner is released.
        assert_eq!(g.remove("p1"), vec!["rs1"]);
        assert!(matches!(g.work("rs1"), Some(Work::Release { .. })));
    }

    #[test]
    fn a_blocking_reference_dropped_or_unblocked_wakes_the_waiting_owner() {
        let mut g = Graph::default();
        g.apply(deleted(node(rs(), "shop", "rs1", &[]), true, false));
        g.apply(node(rs(), "shop", "rs2", &[]));
        g.apply(node(
            pod(),
            "shop",
            "p1",
            &[owned_by("rs1", true), owned_by("rs2", true)],
        ));
        assert_eq!(g.work("rs1"), Some(Work::Nudge(vec!["p1".into()])));
        let look = g.apply(node(pod(), "shop", "p1", &[owned_by("rs2", true)]));
        assert_eq!(look, vec!["rs1"]);
        assert!(matches!(g.work("rs1"), Some(Work::Release { .. })));
    }

    #[test]
    fn an_orphaning_owner_lists_its_dependents_including_new_ones() {
        let mut g = Graph::default();
        g.apply(node(rs(), "shop", "rs1", &[]));
        g.apply(node(pod(), "shop", "p1", &[owned_by("rs1", true)]));
        assert_eq!(
            g.apply(deleted(node(rs(), "shop", "rs1", &[]), false, true)),
            vec!["rs1"]
        );
        assert_eq!(
            g.apply(node(pod(), "shop", "p2", &[owned_by("rs1", true)])),
            vec!["rs1"],
            "a new dependent wakes the orphaning owner"
        );
        let Some(Work::Orphan { owner, dependents }) = g.work("rs1") else {
            panic!("orphan work");
        };
        assert_eq!(owner.uid, "rs1");
        let uids: Vec<&str> = dependents.iter().map(|d| d.uid.as_str()).collect();
        assert_eq!(uids, vec!["p1", "p2"]);
    }

    #[test]
    fn a_relisting_removes_what_was_deleted_meanwhile() {
        let mut g = Graph::default();
        g.apply(node(rs(), "shop", "rs1", &[]));
        g.apply(node(rs(), "shop", "rs2", &[]));
        g.apply(node(pod(), "shop", "p1", &[owned_by("rs1", true)]));
        let seen = HashSet::from(["rs2".to_owned()]);
        assert_eq!(g.relisted(&rs(), &seen), vec!["p1"]);
        assert!(g.get("rs1").is_none() && g.get("rs2").is_some());
        assert_eq!(g.forget(&pod()), Vec::<String>::new());
        assert_eq!(g.len(), 1);
    }

    #[test]
    fn a_dependent_with_dependents_going_in_the_foreground_is_flagged() {
        let mut g = Graph::default();
        g.apply(deleted(node(rs(), "shop", "rs1", &[]), true, false));
        g.apply(node(rs(), "shop", "mid", &[owned_by("rs1", true)]));
        let owned_by_mid = owned_by("mid", true);
        g.apply(deleted(
            node(rs(), "shop", "leaf", &[owned_by_mid]),
            true,
            false,
        ));
        let Some(Work::Judge(judge)) = g.work("mid") else {
            panic!("a judge");
        };
        assert!(judge.has_dependents && judge.dependent_deleting_dependents);
        // Observed in place, yet waiting: not solid, so it is judged.
        assert!(judge.observed.contains("rs1"));
    }

    #[test]
    fn identities_read_as_type_and_place() {
        let n = node(rs(), "shop", "web", &[]);
        assert_eq!(n.identity.to_string(), "replicasets.apps shop/web");
        let n = node(resource("", "Node", "nodes"), "", "w1", &[]);
        assert_eq!(n.identity.to_string(), "nodes w1");
    }
}
