//! Nominations: pending pods that preempted others and wait for the room on one node (their
//! `status.nominatedNodeName`). Until such a pod is bound, its requests count against that
//! node whenever a pod of no higher priority is filtered, so the room its victims free is not
//! taken by someone else first (upstream's nominator and `RunFilterPluginsWithNominatedPods`).
//! Few pods are ever nominated at once, so lookups scan.

use std::borrow::Cow;
use std::collections::HashMap;

use k8s_openapi::api::core::v1::Pod;

use super::resources::{Demand, NodeUsage};

#[derive(Debug)]
struct Nomination {
    node: String,
    priority: i32,
    demand: Demand,
    /// Keys of the pods this scheduler evicted for it (empty when the nomination was only
    /// seen in the API server).
    victims: Vec<String>,
}

#[derive(Debug, Default)]
pub struct Nominations {
    by_pod: HashMap<String, Nomination>,
}

fn nominated_node(pod: &Pod) -> Option<&str> {
    pod.status
        .as_ref()
        .and_then(|s| s.nominated_node_name.as_deref())
        .filter(|n| !n.is_empty())
}

impl Nominations {
    pub fn is_empty(&self) -> bool {
        self.by_pod.is_empty()
    }

    /// This scheduler has just preempted `victims` on `node` for the pod.
    pub fn set(
        &mut self,
        key: &str,
        node: &str,
        priority: i32,
        demand: Demand,
        victims: Vec<String>,
    ) {
        self.by_pod.insert(
            key.to_owned(),
            Nomination {
                node: node.to_owned(),
                priority,
                demand,
                victims,
            },
        );
    }

    /// A pending pod as the watcher shows it. A copy without a nomination does not clear
    /// ours: it may predate the status write that sets it.
    pub fn observe(&mut self, key: &str, pod: &Pod) {
        let Some(node) = nominated_node(pod) else {
            return;
        };
        let priority = pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0);
        match self.by_pod.get_mut(key) {
            Some(nomination) if nomination.node == node => nomination.priority = priority,
            _ => {
                let demand = pod.spec.as_ref().map(Demand::of).unwrap_or_default();
                self.set(key, node, priority, demand, Vec::new());
            }
        }
    }

    /// The pod is bound, deleted or no longer this scheduler's.
    pub fn remove(&mut self, key: &str) {
        self.by_pod.remove(key);
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.by_pod.retain(|key, _| keep(key));
    }

    pub fn node_of(&self, key: &str) -> Option<&str> {
        self.by_pod.get(key).map(|n| n.node.as_str())
    }

    /// Evictions that failed: those pods are no longer waited for.
    pub fn forget_victims(&mut self, key: &str, failed: &[String]) {
        if let Some(nomination) = self.by_pod.get_mut(key) {
            nomination.victims.retain(|v| !failed.contains(v));
        }
    }

    /// The pods this scheduler evicted for `key`.
    pub fn victims_of(&self, key: &str) -> &[String] {
        self.by_pod.get(key).map_or(&[], |n| n.victims.as_slice())
    }

    /// `usage` of `node` as the pod `key` of `priority` must see it: with the requests of
    /// every other pod nominated there whose priority is at least as high.
    pub fn usage_for<'a>(
        &self,
        node: &str,
        usage: &'a NodeUsage,
        key: &str,
        priority: i32,
    ) -> Cow<'a, NodeUsage> {
        let mut usage = Cow::Borrowed(usage);
        for (other, nomination) in &self.by_pod {
            if nomination.node == node && other != key && nomination.priority >= priority {
                usage.to_mut().add(&nomination.demand);
            }
        }
        usage
    }

    /// The nodes with at least one nomination.
    pub fn nodes(&self) -> impl Iterator<Item = &str> {
        self.by_pod.values().map(|n| n.node.as_str())
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{PodSpec, PodStatus};
    use kube::api::ObjectMeta;

    use super::*;
    use crate::scheduler::filters::tests::pod as spec;

    fn pending(priority: i32, nominated: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta::default(),
            spec: Some(PodSpec {
                priority: Some(priority),
                ..spec("1", "0")
            }),
            status: Some(PodStatus {
                nominated_node_name: nominated.map(str::to_owned),
                ..PodStatus::default()
            }),
        }
    }

    #[test]
    fn a_nomination_counts_for_pods_of_no_higher_priority_on_its_node_only() {
        let mut nominations = Nominations::default();
        nominations.set(
            "ns/high",
            "a",
            100,
            Demand::of(&spec("1", "0")),
            vec!["ns/low".into()],
        );
        let empty = NodeUsage::default();
        let cpu = |usage: Cow<'_, NodeUsage>| usage.get("cpu");
        assert_eq!(
            cpu(nominations.usage_for("a", &empty, "ns/other", 100)),
            1000
        );
        assert_eq!(cpu(nominations.usage_for("a", &empty, "ns/other", 5)), 1000);
        assert_eq!(cpu(nominations.usage_for("a", &empty, "ns/other", 101)), 0);
        assert_eq!(cpu(nominations.usage_for("b", &empty, "ns/other", 5)), 0);
        assert_eq!(
            cpu(nominations.usage_for("a", &empty, "ns/high", 100)),
            0,
            "not against itself"
        );
        assert_eq!(nominations.victims_of("ns/high"), ["ns/low".to_owned()]);
    }

    #[test]
    fn the_watcher_adds_nominations_but_a_stale_copy_does_not_clear_ours() {
        let mut nominations = Nominations::default();
        nominations.set("ns/p", "a", 10, Demand::default(), vec!["ns/v".into()]);
        nominations.observe("ns/p", &pending(10, None));
        assert_eq!(nominations.node_of("ns/p"), Some("a"));
        nominations.observe("ns/p", &pending(10, Some("a")));
        assert_eq!(
            nominations.victims_of("ns/p"),
            ["ns/v".to_owned()],
            "same node: our victims stay known"
        );
        nominations.observe("ns/q", &pending(3, Some("b")));
        assert_eq!(nominations.node_of("ns/q"), Some("b"));
        nominations.remove("ns/p");
        assert_eq!(nominations.node_of("ns/p"), None);
    }
}
