//! Verdict: what the garbage collector does about one object, decided from its latest read
//! and the live state of each owner it names — pure, so that every case is a table row.
//!
//! Upstream (`pkg/controller/garbagecollector/garbagecollector.go`): `classifyReferences`
//! sorts owners into solid, dangling and waiting for their dependents; `attemptToDeleteItem`
//! turns that into keep, detach or delete; `processDeletingDependentsItem` releases an owner
//! deleted in the foreground once nothing blocks it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::PropagationPolicy;

/// The finalizer of an object deleted in the foreground: it goes after its dependents.
pub const FOREGROUND: &str = "foregroundDeletion";
/// The finalizer of an object deleted with its dependents orphaned.
pub const ORPHAN: &str = "orphan";

/// What the live lookup of one owner found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// It exists and is not waiting for its dependents.
    Solid,
    /// It exists, being deleted in the foreground: it waits for its dependents to go.
    Waiting,
    /// Nothing of that name and UID exists where the dependent's owners must live: in its
    /// namespace, or cluster-wide for a cluster-scoped kind.
    Dangling,
    /// A cluster-scoped dependent names a namespaced kind: the reference can never resolve
    /// (upstream: `namespacedOwnerOfClusterScopedObjectErr`).
    Invalid,
}

pub fn has_finalizer(meta: &ObjectMeta, finalizer: &str) -> bool {
    meta.finalizers.iter().flatten().any(|f| f == finalizer)
}

/// Deleted and held for its dependents' deletion.
pub fn deleting_dependents(meta: &ObjectMeta) -> bool {
    meta.deletion_timestamp.is_some() && has_finalizer(meta, FOREGROUND)
}

/// Deleted and held until its dependents are orphaned.
pub fn orphaning(meta: &ObjectMeta) -> bool {
    meta.deletion_timestamp.is_some() && has_finalizer(meta, ORPHAN)
}

/// An owner as read by name: gone, or another object of the same name (a different UID),
/// is dangling.
pub fn owner_state(live: Option<&ObjectMeta>, uid: &str) -> Owner {
    match live {
        Some(meta) if meta.uid.as_deref() == Some(uid) => {
            if deleting_dependents(meta) {
                Owner::Waiting
            } else {
                Owner::Solid
            }
        }
        _ => Owner::Dangling,
    }
}

/// What the verdict needs of the dependent beyond its owners.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dependent {
    /// Carries `orphan` already (someone asked for it): a delete honours it.
    pub orphan_finalizer: bool,
    /// Carries `foregroundDeletion` already: a delete honours it.
    pub foreground_finalizer: bool,
    /// Has dependents of its own in the graph.
    pub has_dependents: bool,
    /// One of those is itself being deleted in the foreground (a possible cycle).
    pub dependent_deleting_dependents: bool,
}

impl Dependent {
    pub fn of(
        meta: &ObjectMeta,
        has_dependents: bool,
        dependent_deleting_dependents: bool,
    ) -> Self {
        Dependent {
            orphan_finalizer: has_finalizer(meta, ORPHAN),
            foreground_finalizer: has_finalizer(meta, FOREGROUND),
            has_dependents,
            dependent_deleting_dependents,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// No owner reference, or every one solid, or one that can never resolve.
    Keep,
    /// Some owner still exists: drop only the references to these owner UIDs — the
    /// dangling ones, and those waiting for their dependents, which would otherwise wait
    /// for this object forever.
    Detach(Vec<String>),
    /// No owner exists any more (or every one left waits for its dependents): delete it.
    /// `unblock` first clears `blockOwnerDeletion` on its references, to break a cycle of
    /// objects each waiting in the foreground for the other.
    Delete {
        policy: PropagationPolicy,
        unblock: bool,
    },
}

/// The verdict on a dependent that is not being deleted, given each owner reference of its
/// latest read with what the lookup of that owner found.
pub fn judge(owners: &[(OwnerReference, Owner)], dependent: Dependent) -> Verdict {
    if owners.is_empty() || owners.iter().any(|(_, o)| *o == Owner::Invalid) {
        return Verdict::Keep;
    }
    let uids = |state: Owner| {
        owners
            .iter()
            .filter(move |(_, o)| *o == state)
            .map(|(r, _)| r.uid.clone())
    };
    let waiting = uids(Owner::Waiting).count() > 0;
    if uids(Owner::Solid).count() > 0 {
        let detach: Vec<String> = uids(Owner::Dangling).chain(uids(Owner::Waiting)).collect();
        return if detach.is_empty() {
            Verdict::Keep
        } else {
            Verdict::Detach(detach)
        };
    }
    if waiting && dependent.has_dependents {
        // The foreground deletion goes on down the tree: this object too waits for its own
        // dependents before it goes (upstream deletes it with Foreground).
        return Verdict::Delete {
            policy: PropagationPolicy::Foreground,
            unblock: dependent.dependent_deleting_dependents,
        };
    }
    // A finalizer the object already carries says how its own dependents go; otherwise
    // they go in the background.
    let policy = if dependent.orphan_finalizer {
        PropagationPolicy::Orphan
    } else if dependent.foreground_finalizer {
        PropagationPolicy::Foreground
    } else {
        PropagationPolicy::Background
    };
    Verdict::Delete {
        policy,
        unblock: false,
    }
}

/// A dependent of an owner being deleted in the foreground, as the graph knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocker {
    pub uid: String,
    /// Its reference to the owner has `blockOwnerDeletion: true`.
    pub blocks: bool,
    /// It is itself being deleted in the foreground: it is on its way.
    pub deleting_dependents: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Foreground {
    /// Nothing blocks the owner any more: remove its `foregroundDeletion` finalizer.
    Release,
    /// Dependents still block it; these (not already going in the foreground) are to be
    /// judged, which deletes them.
    Wait { nudge: Vec<String> },
}

/// The next step for an owner being deleted in the foreground.
pub fn foreground(dependents: &[Blocker]) -> Foreground {
    let blocking: Vec<&Blocker> = dependents.iter().filter(|d| d.blocks).collect();
    if blocking.is_empty() {
        return Foreground::Release;
    }
    Foreground::Wait {
        nudge: blocking
            .into_iter()
            .filter(|d| !d.deleting_dependents)
            .map(|d| d.uid.clone())
            .collect(),
    }
}

/// The references without those to `uids`.
pub fn without_owners(refs: &[OwnerReference], uids: &[String]) -> Vec<OwnerReference> {
    refs.iter()
        .filter(|r| !uids.contains(&r.uid))
        .cloned()
        .collect()
}

/// The references with `blockOwnerDeletion` cleared where it was set; None when none was.
pub fn unblocked(refs: &[OwnerReference]) -> Option<Vec<OwnerReference>> {
    if !refs.iter().any(|r| r.block_owner_deletion == Some(true)) {
        return None;
    }
    Some(
        refs.iter()
            .map(|r| OwnerReference {
                block_owner_deletion: r.block_owner_deletion.map(|_| false),
                ..r.clone()
            })
            .collect(),
    )
}

/// The finalizers without `finalizer`; None when it is not there.
pub fn without_finalizer(meta: &ObjectMeta, finalizer: &str) -> Option<Vec<String>> {
    if !has_finalizer(meta, finalizer) {
        return None;
    }
    Some(
        meta.finalizers
            .iter()
            .flatten()
            .filter(|f| *f != finalizer)
            .cloned()
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    use super::*;
    use Owner::{Dangling, Invalid, Solid, Waiting};
    use PropagationPolicy::{Background, Foreground as Fg, Orphan};

    fn reference(uid: &str, blocks: Option<bool>) -> OwnerReference {
        OwnerReference {
            api_version: "apps/v1".into(),
            kind: "ReplicaSet".into(),
            name: format!("rs-{uid}"),
            uid: uid.into(),
            controller: Some(true),
            block_owner_deletion: blocks,
        }
    }

    fn owners(states: &[Owner]) -> Vec<(OwnerReference, Owner)> {
        states
            .iter()
            .enumerate()
            .map(|(i, s)| (reference(&format!("u{i}"), Some(true)), *s))
            .collect()
    }

    fn detach(uids: &[&str]) -> Verdict {
        Verdict::Detach(uids.iter().map(|u| (*u).to_owned()).collect())
    }

    fn delete(policy: PropagationPolicy) -> Verdict {
        Verdict::Delete {
            policy,
            unblock: false,
        }
    }

    #[test]
    fn judge_follows_upstream_for_every_mix_of_owners() {
        let plain = Dependent::default();
        let parent = Dependent {
            has_dependents: true,
            ..Dependent::default()
        };
        let cases: Vec<(&str, Vec<Owner>, Dependent, Verdict)> = vec![
            ("no owners", vec![], plain, Verdict::Keep),
            ("one solid", vec![Solid], plain, Verdict::Keep),
            ("all solid", vec![Solid, Solid], plain, Verdict::Keep),
            ("all gone", vec![Dangling], plain, delete(Background)),
            (
                "all gone, two",
                vec![Dangling, Dangling],
                plain,
                delete(Background),
            ),
            (
                "solid and gone",
                vec![Solid, Dangling],
                plain,
                detach(&["u1"]),
            ),
            (
                "solid, gone and waiting",
                vec![Dangling, Solid, Waiting],
                plain,
                detach(&["u0", "u2"]),
            ),
            (
                "solid and waiting",
                vec![Waiting, Solid],
                plain,
                detach(&["u0"]),
            ),
            (
                "waiting, no dependents",
                vec![Waiting],
                plain,
                delete(Background),
            ),
            (
                "waiting and gone",
                vec![Waiting, Dangling],
                plain,
                delete(Background),
            ),
            (
                "waiting, with dependents",
                vec![Waiting],
                parent,
                delete(Fg),
            ),
            (
                "gone, with dependents",
                vec![Dangling],
                parent,
                delete(Background),
            ),
            (
                "invalid wins over gone",
                vec![Dangling, Invalid],
                plain,
                Verdict::Keep,
            ),
            (
                "invalid wins over solid",
                vec![Invalid, Solid],
                plain,
                Verdict::Keep,
            ),
            (
                "its orphan finalizer is honoured",
                vec![Dangling],
                Dependent {
                    orphan_finalizer: true,
                    ..parent
                },
                delete(Orphan),
            ),
            (
                "its foreground finalizer is honoured",
                vec![Dangling],
                Dependent {
                    foreground_finalizer: true,
                    ..plain
                },
                delete(Fg),
            ),
            (
                "a possible cycle is unblocked first",
                vec![Waiting],
                Dependent {
                    dependent_deleting_dependents: true,
                    ..parent
                },
                Verdict::Delete {
                    policy: Fg,
                    unblock: true,
                },
            ),
        ];
        for (name, states, dependent, expected) in cases {
            assert_eq!(judge(&owners(&states), dependent), expected, "{name}");
        }
    }

    fn meta(uid: &str, deleting: bool, finalizers: &[&str]) -> ObjectMeta {
        ObjectMeta {
            uid: Some(uid.into()),
            deletion_timestamp: deleting.then_some(Time(Timestamp::UNIX_EPOCH)),
            finalizers: Some(finalizers.iter().map(|f| (*f).to_owned()).collect()),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn an_owner_is_what_its_live_read_shows() {
        let cases = [
            (None, Dangling),
            (Some(meta("other", false, &[])), Dangling),
            (Some(meta("u", false, &[])), Solid),
            (Some(meta("u", true, &[])), Solid),
            (Some(meta("u", true, &[ORPHAN])), Solid),
            (Some(meta("u", false, &[FOREGROUND])), Solid),
            (Some(meta("u", true, &[FOREGROUND])), Waiting),
        ];
        for (live, expected) in cases {
            assert_eq!(owner_state(live.as_ref(), "u"), expected, "{live:?}");
        }
    }

    fn blocker(uid: &str, blocks: bool, deleting_dependents: bool) -> Blocker {
        Blocker {
            uid: uid.into(),
            blocks,
            deleting_dependents,
        }
    }

    #[test]
    fn a_foreground_owner_waits_only_for_blocking_dependents() {
        let cases = [
            (vec![], Foreground::Release),
            (vec![blocker("a", false, false)], Foreground::Release),
            (
                vec![blocker("a", true, false), blocker("b", false, false)],
                Foreground::Wait {
                    nudge: vec!["a".into()],
                },
            ),
            (
                vec![blocker("a", true, true)],
                Foreground::Wait { nudge: vec![] },
            ),
        ];
        for (dependents, expected) in cases {
            assert_eq!(foreground(&dependents), expected, "{dependents:?}");
        }
    }

    #[test]
    fn references_and_finalizers_are_edited_without_touching_the_rest() {
        let refs = vec![reference("a", Some(true)), reference("b", None)];
        assert_eq!(
            without_owners(&refs, &["a".to_owned()]),
            vec![reference("b", None)]
        );
        assert_eq!(without_owners(&refs, &[]), refs);
        assert_eq!(
            unblocked(&refs),
            Some(vec![reference("a", Some(false)), reference("b", None)])
        );
        assert_eq!(unblocked(&[reference("b", Some(false))]), None);

        let m = meta("u", true, &["example.com/keep", FOREGROUND]);
        assert_eq!(
            without_finalizer(&m, FOREGROUND),
            Some(vec!["example.com/keep".to_owned()])
        );
        assert_eq!(without_finalizer(&m, ORPHAN), None);
        assert!(deleting_dependents(&m) && !orphaning(&m));
    }
}
