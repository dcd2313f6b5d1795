//! Cache: the scheduler's view of the nodes and of what the pods bound to each one use,
//! fed by the node and pod watchers. Assume-then-confirm: a pod the scheduler has just
//! placed counts against its node at once (assumed), before the API server has the
//! binding, so two pods scheduled back to back never both take the same free space; the
//! watcher's copy of the bound pod then confirms it, and a failed binding forgets it.
//! Invariant: every pod's demand is added to exactly one node's usage, and removed from it
//! exactly once.
//!
//! Bound pods also keep what preemption reads of them (`Resident`): assumed ones do not, as
//! a pod whose binding is not in the API server yet is never a victim.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::jiff::Timestamp;

use super::resources::{Demand, NodeUsage};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("pod {0} is already assumed or bound")]
    AlreadyPresent(String),
    #[error("pod {0} is not assumed")]
    NotAssumed(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Placed by this scheduler; `bound` once the binding call has succeeded and only the
    /// watcher's confirmation is outstanding.
    Assumed { bound: bool },
    /// Seen bound in the API server.
    Confirmed,
}

#[derive(Debug)]
struct Record {
    node: String,
    demand: Demand,
    state: State,
    /// Set once the watcher has shown the pod bound.
    resident: Option<Resident>,
}

/// What preemption reads of a bound pod: which pod it is, how important, since when, and
/// whether it is already on its way out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resident {
    pub uid: Option<String>,
    pub generation: Option<i64>,
    pub priority: i32,
    pub started: Option<Timestamp>,
    /// Deleted and terminating because a scheduler preempted it (upstream's
    /// `PodTerminatingByPreemption`: a deletionTimestamp and DisruptionTarget with reason
    /// PreemptionByScheduler).
    pub preempted: bool,
    /// For the disruption budgets that cover it.
    pub labels: BTreeMap<String, String>,
}

/// Upstream's `PodReasonPreemptionByScheduler`.
pub const REASON_PREEMPTED: &str = "PreemptionByScheduler";

impl Resident {
    pub fn of(pod: &Pod) -> Self {
        let status = pod.status.as_ref();
        let disrupted = status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|conditions| {
                conditions.iter().any(|c| {
                    c.type_ == "DisruptionTarget"
                        && c.status == "True"
                        && c.reason.as_deref() == Some(REASON_PREEMPTED)
                })
            });
        Self {
            uid: pod.metadata.uid.clone(),
            generation: pod.metadata.generation,
            priority: pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0),
            started: status.and_then(|s| s.start_time.as_ref()).map(|t| t.0),
            preempted: disrupted && pod.metadata.deletion_timestamp.is_some(),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
        }
    }
}

/// A pod the API server shows bound, as preemption sees it.
#[derive(Debug, Clone, Copy)]
pub struct Bound<'a> {
    pub key: &'a str,
    pub node: &'a str,
    pub demand: &'a Demand,
    pub resident: &'a Resident,
}

/// One node name's slot: the Node (absent when the watcher has not delivered it, or it was
/// deleted while pods still point at it) and what its pods use.
#[derive(Debug, Default)]
struct Slot {
    node: Option<Arc<Node>>,
    usage: NodeUsage,
}

#[derive(Debug, Default)]
pub struct Cache {
    slots: BTreeMap<String, Slot>,
    pods: HashMap<String, Record>,
}

/// The parts of a Node the filters and scores read; a change elsewhere (heartbeat times,
/// images, addresses) cannot make an unschedulable pod fit.
fn scheduling_view(node: &Node) -> impl PartialEq + use<> {
    let spec = node.spec.as_ref();
    let status = node.status.as_ref();
    (
        node.metadata.labels.clone(),
        spec.and_then(|s| s.unschedulable),
        spec.and_then(|s| s.taints.clone()),
        status.and_then(|s| s.allocatable.clone()),
        status.and_then(|s| s.conditions.as_ref()).map(|c| {
            c.iter()
                .map(|c| (c.type_.clone(), c.status.clone()))
                .collect::<Vec<_>>()
        }),
    )
}

impl Cache {
    /// Adds or updates a node; true if it is new or changed in a way that may let a pending
    /// pod fit (the queue then retries unschedulable pods).
    pub fn apply_node(&mut self, node: Node) -> bool {
        let Some(name) = node.metadata.name.clone() else {
            return false;
        };
        let slot = self.slots.entry(name).or_default();
        let relevant = slot
            .node
            .as_ref()
            .is_none_or(|old| scheduling_view(old) != scheduling_view(&node));
        slot.node = Some(Arc::new(node));
        relevant
    }

    pub fn delete_node(&mut self, name: &str) {
        if let Some(slot) = self.slots.get_mut(name) {
            slot.node = None;
            if slot.usage.pods == 0 {
                self.slots.remove(name);
            }
        }
    }

    /// Replaces every node after a relist; true if anything relevant changed.
    pub fn replace_nodes(&mut self, nodes: Vec<Node>) -> bool {
        let listed: std::collections::BTreeSet<String> = nodes
            .iter()
            .filter_map(|n| n.metadata.name.clone())
            .collect();
        let gone: Vec<String> = self
            .slots
            .iter()
            .filter(|(name, slot)| slot.node.is_some() && !listed.contains(*name))
            .map(|(name, _)| name.clone())
            .collect();
        let mut relevant = !gone.is_empty();
        for name in gone {
            self.delete_node(&name);
        }
        for node in nodes {
            relevant |= self.apply_node(node);
        }
        relevant
    }

    /// Every known node with its usage, in name order (so scheduling is deterministic).
    pub fn nodes(&self) -> impl Iterator<Item = (&Node, &NodeUsage)> {
        self.slots
            .values()
            .filter_map(|slot| slot.node.as_deref().map(|node| (node, &slot.usage)))
    }

    pub fn node_count(&self) -> usize {
        self.slots.values().filter(|s| s.node.is_some()).count()
    }

    pub fn usage(&self, node: &str) -> Option<&NodeUsage> {
        self.slots.get(node).map(|s| &s.usage)
    }

    /// A known node and its usage.
    pub fn node(&self, name: &str) -> Option<(&Node, &NodeUsage)> {
        self.slots
            .get(name)
            .and_then(|slot| slot.node.as_deref().map(|node| (node, &slot.usage)))
    }

    /// Every pod the watcher has shown bound (assumed pods are not among them).
    pub fn bound(&self) -> impl Iterator<Item = Bound<'_>> {
        self.pods.iter().filter_map(|(key, record)| {
            record.resident.as_ref().map(|resident| Bound {
                key,
                node: &record.node,
                demand: &record.demand,
                resident,
            })
        })
    }

    /// Whether the pod is assumed or bound: the queue must not schedule it (again).
    pub fn contains(&self, key: &str) -> bool {
        self.pods.contains_key(key)
    }

    fn add(
        &mut self,
        key: String,
        node: String,
        demand: Demand,
        state: State,
        resident: Option<Resident>,
    ) {
        self.slots
            .entry(node.clone())
            .or_default()
            .usage
            .add(&demand);
        self.pods.insert(
            key,
            Record {
                node,
                demand,
                state,
                resident,
            },
        );
    }

    fn remove(&mut self, key: &str) -> Option<Record> {
        let record = self.pods.remove(key)?;
        if let Some(slot) = self.slots.get_mut(&record.node) {
            slot.usage.remove(&record.demand);
            if slot.node.is_none() && slot.usage.pods == 0 {
                self.slots.remove(&record.node);
            }
        }
        Some(record)
    }

    /// Counts a pod against a node before its binding exists.
    pub fn assume(&mut self, key: &str, node: &str, demand: Demand) -> Result<(), Error> {
        if self.pods.contains_key(key) {
            return Err(Error::AlreadyPresent(key.to_owned()));
        }
        self.add(
            key.to_owned(),
            node.to_owned(),
            demand,
            State::Assumed { bound: false },
            None,
        );
        Ok(())
    }

    /// The binding call succeeded; the watcher's copy will confirm the pod.
    pub fn finish_binding(&mut self, key: &str) -> Result<(), Error> {
        match self.pods.get_mut(key) {
            Some(Record {
                state: state @ State::Assumed { .. },
                ..
            }) => {
                *state = State::Assumed { bound: true };
                Ok(())
            }
            // Already confirmed by the watcher, which can be faster than the call's reply.
            Some(_) => Ok(()),
            None => Err(Error::NotAssumed(key.to_owned())),
        }
    }

    /// The binding failed: the node gets its space back.
    pub fn forget(&mut self, key: &str) -> Result<(), Error> {
        match self.pods.get(key) {
            Some(Record {
                state: State::Assumed { .. },
                ..
            }) => {
                self.remove(key);
                Ok(())
            }
            _ => Err(Error::NotAssumed(key.to_owned())),
        }
    }

    /// A pod the API server has bound (by us or anyone): confirms an assumed pod, or
    /// records one bound elsewhere; follows a change of its requests.
    pub fn apply_pod(&mut self, key: &str, pod: &Pod) {
        let Some(spec) = pod.spec.as_ref() else {
            return;
        };
        let Some(node) = spec.node_name.clone().filter(|n| !n.is_empty()) else {
            return;
        };
        let demand = Demand::of(spec);
        let resident = Resident::of(pod);
        if let Some(record) = self.pods.get_mut(key)
            && record.state == State::Confirmed
            && record.node == node
            && record.demand == demand
        {
            record.resident = Some(resident);
            return;
        }
        self.remove(key);
        self.add(
            key.to_owned(),
            node,
            demand,
            State::Confirmed,
            Some(resident),
        );
    }

    /// A bound pod is gone (deleted, or terminal and so no longer using the node).
    pub fn delete_pod(&mut self, key: &str) -> bool {
        self.remove(key).is_some()
    }

    /// Replaces the bound pods after a relist. Assumed pods whose binding is still in flight
    /// stay (the relist may predate the binding); those already bound but missing from the
    /// list were deleted while the watch was down, and go.
    pub fn replace_pods<'a>(&mut self, bound: impl IntoIterator<Item = (String, &'a Pod)>) {
        let bound: HashMap<String, &Pod> = bound.into_iter().collect();
        let stale: Vec<String> = self
            .pods
            .iter()
            .filter(|(key, record)| {
                !bound.contains_key(*key) && record.state != State::Assumed { bound: false }
            })
            .map(|(key, _)| key.clone())
            .collect();
        for key in stale {
            self.remove(&key);
        }
        for (key, pod) in bound {
            self.apply_pod(&key, pod);
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{NodeSpec, PodSpec, Taint};
    use kube::api::ObjectMeta;

    use super::*;
    use crate::scheduler::filters::tests::{node, pod};
    use crate::scheduler::filters::{self, Code};

    fn bound(name: &str, node: &str, spec: PodSpec) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                node_name: Some(node.into()),
                ..spec
            }),
            status: None,
        }
    }

    fn cpu_used(cache: &Cache, node: &str) -> i128 {
        cache.usage(node).map(|u| u.get("cpu")).unwrap_or(0)
    }

    #[test]
    fn back_to_back_assumptions_both_count() {
        let mut cache = Cache::default();
        cache.apply_node(node("n", "2", "4Gi", "110"));
        let spec = pod("1", "1Gi");
        let demand = Demand::of(&spec);
        for key in ["default/a", "default/b"] {
            let (n, usage) = cache.nodes().next().expect("one node");
            assert_eq!(filters::run(&spec, &demand, n, usage), Ok(()), "{key} fits");
            cache.assume(key, "n", demand.clone()).expect("assume");
        }
        // The third finds the node full although nothing is bound yet.
        let (n, usage) = cache.nodes().next().expect("one node");
        let rejection = filters::run(&spec, &demand, n, usage).expect_err("full");
        assert_eq!(rejection.reasons, vec!["Insufficient cpu"]);
        assert_eq!(rejection.code, Code::Unschedulable);
        assert_eq!(
            cache.assume("default/a", "n", demand),
            Err(Error::AlreadyPresent("default/a".into()))
        );
    }

    #[test]
    fn assume_confirm_forget() {
        let mut cache = Cache::default();
        cache.apply_node(node("n", "4", "4Gi", "110"));
        cache.apply_node(node("m", "4", "4Gi", "110"));
        let spec = pod("1", "1Gi");

        // Confirmed by the watcher: counted once, not twice.
        cache
            .assume("default/a", "n", Demand::of(&spec))
            .expect("assume a");
        cache.finish_binding("default/a").expect("bound a");
        cache.apply_pod("default/a", &bound("a", "n", spec.clone()));
        assert_eq!(cpu_used(&cache, "n"), 1000);
        assert_eq!(
            cache.forget("default/a"),
            Err(Error::NotAssumed("default/a".into()))
        );

        // Forgotten after a failed binding: the space comes back.
        cache
            .assume("default/b", "n", Demand::of(&spec))
            .expect("assume b");
        assert_eq!(cpu_used(&cache, "n"), 2000);
        cache.forget("default/b").expect("forget b");
        assert_eq!(cpu_used(&cache, "n"), 1000);
        assert!(!cache.contains("default/b"));

        // Bound elsewhere than assumed (someone else won): moves to the real node.
        cache
            .assume("default/c", "n", Demand::of(&spec))
            .expect("assume c");
        cache.apply_pod("default/c", &bound("c", "m", spec.clone()));
        assert_eq!(cpu_used(&cache, "n"), 1000);
        assert_eq!(cpu_used(&cache, "m"), 1000);

        // Deleted: freed.
        assert!(cache.delete_pod("default/a"));
        assert_eq!(cpu_used(&cache, "n"), 0);
        assert!(!cache.delete_pod("default/a"));
    }

    #[test]
    fn relist_keeps_bindings_in_flight_and_drops_vanished_pods() {
        let mut cache = Cache::default();
        cache.apply_node(node("n", "4", "4Gi", "110"));
        let spec = pod("1", "0");
        cache
            .assume("default/flying", "n", Demand::of(&spec))
            .expect("assume");
        cache
            .assume("default/vanished", "n", Demand::of(&spec))
            .expect("assume");
        cache.finish_binding("default/vanished").expect("bound");
        cache.apply_pod("default/gone", &bound("gone", "n", spec.clone()));
        let kept = bound("kept", "n", spec.clone());
        cache.replace_pods([("default/kept".to_owned(), &kept)]);
        assert!(cache.contains("default/flying"));
        assert!(cache.contains("default/kept"));
        assert!(!cache.contains("default/vanished"));
        assert!(!cache.contains("default/gone"));
        assert_eq!(cpu_used(&cache, "n"), 2000);
    }

    #[test]
    fn pods_may_arrive_before_their_node() {
        let mut cache = Cache::default();
        cache.apply_pod("default/early", &bound("early", "late", pod("1", "0")));
        assert_eq!(cache.node_count(), 0);
        cache.apply_node(node("late", "4", "4Gi", "110"));
        let (_, usage) = cache.nodes().next().expect("node");
        assert_eq!(usage.get("cpu"), 1000);
        cache.delete_node("late");
        assert_eq!(cache.node_count(), 0);
        assert_eq!(cpu_used(&cache, "late"), 1000);
    }

    #[test]
    fn node_changes_that_matter() {
        let mut cache = Cache::default();
        let base = node("n", "4", "4Gi", "110");
        assert!(cache.apply_node(base.clone()), "a new node");
        assert!(!cache.apply_node(base.clone()), "no change");
        let mut heartbeat = base.clone();
        heartbeat.metadata.resource_version = Some("2".into());
        assert!(!cache.apply_node(heartbeat), "only metadata noise");
        let mut tainted = base.clone();
        tainted.spec = Some(NodeSpec {
            taints: Some(vec![Taint {
                key: "k".into(),
                effect: "NoSchedule".into(),
                ..Taint::default()
            }]),
            ..NodeSpec::default()
        });
        assert!(cache.apply_node(tainted), "taints changed");
        assert!(cache.replace_nodes(vec![]), "relist without the node");
        assert_eq!(cache.node_count(), 0);
    }
}
