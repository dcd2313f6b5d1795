//! Placement: which nodes a DaemonSet's pod belongs on, the pod it gets there, and what one
//! sync creates or deletes on each node.
//!
//! Invariants: a node should run the daemon pod when the template's nodeName (if any),
//! nodeSelector and required node affinity admit it and the pod — with the tolerations every
//! daemon pod gets (not-ready and unreachable NoExecute; disk-, memory-, pid-pressure and
//! unschedulable NoSchedule; network-unavailable NoSchedule with hostNetwork) — tolerates
//! every NoSchedule and NoExecute taint of the node's spec; a pod already there may stay
//! unless a NoExecute taint is untolerated. The pod is bound through the scheduler: its
//! required node affinity is replaced by one term, `matchFields metadata.name In [node]`,
//! and its nodeName is left empty. A node keeps one daemon pod (the oldest), two only while
//! surging (an old one and a new one); failed and succeeded pods are deleted, failed ones
//! no faster than a per-node backoff (1 s doubling to 15 min) allows. Upstream:
//! `pkg/controller/daemon/daemon_controller.go` (`NodeShouldRunDaemonPod`, `predicates`,
//! `podsShouldBeOnNode`, `podByCreationTimestampAndPhase`, `getUnscheduledPodsWithoutNode`,
//! `failedPodsBackoffKey`) and `pkg/controller/daemon/util/daemonset_util.go`
//! (`AddOrUpdateDaemonPodTolerations`, `ReplaceDaemonSetPodNodeNameNodeAffinity`,
//! `GetTargetNodeName`, `IsPodUpdated`).

use std::cmp::Ordering;
use std::collections::HashMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    PodSpec, Taint, Toleration,
};
use k8s_openapi::jiff::Timestamp;
use nodus_api::selection;

use crate::controllers::history::{GENERATION_LABEL, HASH_LABEL};
use crate::controllers::replicaset::pods::{is_available, is_ready};

/// The only field a node selector may select on.
pub const NODE_NAME_FIELD: &str = "metadata.name";

/// The tolerations every daemon pod gets: (key, effect).
const DAEMON_TOLERATIONS: [(&str, &str); 6] = [
    ("node.kubernetes.io/not-ready", "NoExecute"),
    ("node.kubernetes.io/unreachable", "NoExecute"),
    ("node.kubernetes.io/disk-pressure", "NoSchedule"),
    ("node.kubernetes.io/memory-pressure", "NoSchedule"),
    ("node.kubernetes.io/pid-pressure", "NoSchedule"),
    ("node.kubernetes.io/unschedulable", "NoSchedule"),
];
const NETWORK_UNAVAILABLE: &str = "node.kubernetes.io/network-unavailable";

/// kube-controller-manager's failed daemon pod backoff: `flowcontrol.NewBackOff(1s, 15m)`;
/// an entry idle for twice the cap starts over.
const FAILED_INITIAL: Duration = Duration::from_secs(1);
const FAILED_MAX: Duration = Duration::from_secs(15 * 60);

/// Whether a DaemonSet's pod belongs on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// A pod should be created there if there is none.
    pub should_run: bool,
    /// A pod there may stay.
    pub should_continue: bool,
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default()
}

/// Upstream's `AddOrUpdateDaemonPodTolerations`: each daemon toleration is added unless the
/// same one is there already.
pub fn add_tolerations(spec: &mut PodSpec) {
    let network = spec
        .host_network
        .unwrap_or(false)
        .then_some((NETWORK_UNAVAILABLE, "NoSchedule"));
    let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
    for (key, effect) in DAEMON_TOLERATIONS.into_iter().chain(network) {
        let wanted = Toleration {
            key: Some(key.into()),
            operator: Some("Exists".into()),
            effect: Some(effect.into()),
            ..Toleration::default()
        };
        if !tolerations.contains(&wanted) {
            tolerations.push(wanted);
        }
    }
}

/// The spec of the pod the DaemonSet would run on any node: its template's, with the
/// daemon tolerations.
pub fn daemon_spec(ds: &DaemonSet) -> PodSpec {
    let mut spec = ds.spec.template.spec.clone().unwrap_or_default();
    add_tolerations(&mut spec);
    spec
}

fn untolerated(taints: &[Taint], tolerations: &[Toleration], effects: &[&str]) -> bool {
    taints.iter().any(|taint| {
        effects.contains(&taint.effect.as_str())
            && !tolerations.iter().any(|t| selection::tolerates(t, taint))
    })
}

/// Upstream's `NodeShouldRunDaemonPod`, given [`daemon_spec`] for the DaemonSet.
pub fn placement(spec: &PodSpec, node: &Node) -> Placement {
    let never = Placement {
        should_run: false,
        should_continue: false,
    };
    let name = node.metadata.name.as_deref().unwrap_or_default();
    if spec
        .node_name
        .as_deref()
        .is_some_and(|n| !n.is_empty() && n != name)
    {
        return never;
    }
    if !selection::node_matches(spec, node) {
        return never;
    }
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default();
    let tolerations = spec.tolerations.as_deref().unwrap_or_default();
    if untolerated(taints, tolerations, &["NoSchedule", "NoExecute"]) {
        return Placement {
            should_run: false,
            should_continue: !untolerated(taints, tolerations, &["NoExecute"]),
        };
    }
    Placement {
        should_run: true,
        should_continue: true,
    }
}

/// Upstream's `ReplaceDaemonSetPodNodeNameNodeAffinity`: the required node affinity becomes
/// the one term that picks `node` by name; preferred terms and other affinities stay.
pub fn pin_to(affinity: Option<Affinity>, node: &str) -> Affinity {
    let term = NodeSelectorTerm {
        match_fields: Some(vec![NodeSelectorRequirement {
            key: NODE_NAME_FIELD.into(),
            operator: "In".into(),
            values: Some(vec![node.to_owned()]),
        }]),
        match_expressions: None,
    };
    let mut affinity = affinity.unwrap_or_default();
    let node_affinity = affinity
        .node_affinity
        .get_or_insert_with(NodeAffinity::default);
    node_affinity.required_during_scheduling_ignored_during_execution = Some(NodeSelector {
        node_selector_terms: vec![term],
    });
    affinity
}

/// Upstream's `GetTargetNodeName`: the node a daemon pod is on, or is pinned to.
pub fn target_node(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if let Some(node) = spec.node_name.as_deref().filter(|n| !n.is_empty()) {
        return Some(node.to_owned());
    }
    let terms = &spec
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms;
    terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|r| r.key == NODE_NAME_FIELD && r.operator == "In")
        .and_then(|r| match r.values.as_deref() {
            Some([only]) => Some(only.clone()),
            _ => None,
        })
}

fn scheduled(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty())
}

/// Upstream's `podByCreationTimestampAndPhase`: scheduled pods first, then oldest, then by
/// name.
pub fn by_age(a: &Pod, b: &Pod) -> Ordering {
    scheduled(b)
        .cmp(&scheduled(a))
        .then_with(|| {
            let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
            created(a).cmp(&created(b))
        })
        .then_with(|| a.metadata.name.cmp(&b.metadata.name))
}

/// Upstream's `IsPodUpdated`: the pod carries the current revision's hash, or the template
/// generation (the label of DaemonSets from before ControllerRevisions).
pub fn is_updated(pod: &Pod, hash: &str, generation: Option<i64>) -> bool {
    let label = |key: &str| pod.metadata.labels.as_ref().and_then(|l| l.get(key));
    let generation_matches =
        generation.is_some_and(|g| label(GENERATION_LABEL) == Some(&g.to_string()));
    let hash_matches = !hash.is_empty() && label(HASH_LABEL).map(String::as_str) == Some(hash);
    hash_matches || generation_matches
}

/// Upstream's `failedPodsBackoff` (client-go `flowcontrol.Backoff`): per DaemonSet
/// generation and node, how soon another failed pod may be deleted.
#[derive(Debug, Clone, Default)]
pub struct FailedBackoff {
    entries: HashMap<String, (Duration, Timestamp)>,
}

impl FailedBackoff {
    /// Upstream's `failedPodsBackoffKey`.
    pub fn key(ds: &DaemonSet, node: &str) -> String {
        let uid = ds.metadata.uid.as_deref().unwrap_or_default();
        let generation = ds
            .status
            .as_ref()
            .and_then(|s| s.observed_generation)
            .unwrap_or(0);
        format!("{uid}/{generation}/{node}")
    }

    fn expired(since: Timestamp, now: Timestamp) -> bool {
        Duration::try_from(now.duration_since(since)).is_ok_and(|idle| idle > 2 * FAILED_MAX)
    }

    /// `IsInBackOffSinceUpdate`: Some(the current delay) while it has not passed since the
    /// last delete.
    pub fn holding(&self, key: &str, now: Timestamp) -> Option<Duration> {
        let (delay, since) = *self.entries.get(key)?;
        let elapsed = Duration::try_from(now.duration_since(since)).unwrap_or(Duration::ZERO);
        (!Self::expired(since, now) && elapsed < delay).then_some(delay)
    }

    /// `Next`: a delete happens now; the next waits twice as long (from 1 s, up to 15 min).
    pub fn next(&mut self, key: &str, now: Timestamp) {
        let delay = match self.entries.get(key) {
            Some((delay, since)) if !Self::expired(*since, now) => (*delay * 2).min(FAILED_MAX),
            _ => FAILED_INITIAL,
        };
        self.entries.insert(key.to_owned(), (delay, now));
    }

    /// The entries of one DaemonSet (by uid), for its sync.
    pub fn of(&self, uid: &str) -> FailedBackoff {
        let prefix = format!("{uid}/");
        FailedBackoff {
            entries: self
                .entries
                .iter()
                .filter(|(k, _)| k.starts_with(&prefix))
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
        }
    }

    /// Takes back what a sync did; drops entries idle too long.
    pub fn absorb(&mut self, other: FailedBackoff, now: Timestamp) {
        self.entries.extend(other.entries);
        self.entries
            .retain(|_, (_, since)| !Self::expired(*since, now));
    }
}

/// What one sync does on one node.
#[derive(Debug, Default, PartialEq)]
pub struct NodeWork<'a> {
    pub create: bool,
    pub delete: Vec<&'a Pod>,
    /// Failed and succeeded pods among `delete`, for their events.
    pub failed: Vec<&'a Pod>,
    pub succeeded: Vec<&'a Pod>,
    /// A failed pod waits out the backoff: look again then.
    pub wait: Option<Duration>,
}

/// How a DaemonSet's rollout sees a node's pods.
#[derive(Debug, Clone, Copy)]
pub struct Rollout<'h> {
    /// maxSurge allows an extra pod per node.
    pub surge: bool,
    pub hash: &'h str,
    pub min_ready: i32,
}

/// Upstream's `podsShouldBeOnNode` for one node and the DaemonSet's pods there (terminal
/// pods being deleted already left out).
pub fn on_node<'a>(
    place: Placement,
    pods: &[&'a Pod],
    rollout: Rollout<'_>,
    backoff: (&mut FailedBackoff, &str),
    now: Timestamp,
) -> NodeWork<'a> {
    let mut work = NodeWork::default();
    let (failed_backoff, key) = backoff;
    if place.should_run && pods.is_empty() {
        work.create = true;
        return work;
    }
    if !place.should_continue {
        work.delete = pods
            .iter()
            .copied()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        return work;
    }
    let mut running: Vec<&Pod> = Vec::new();
    for pod in pods.iter().copied() {
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        match phase(pod) {
            "Failed" => {
                // Often the kubelet refusing the pod: without a backoff the two would fight
                // in a hot loop.
                if let Some(delay) = failed_backoff.holding(key, now) {
                    work.wait = Some(work.wait.map_or(delay, |w| w.min(delay)));
                    continue;
                }
                failed_backoff.next(key, now);
                work.failed.push(pod);
                work.delete.push(pod);
            }
            "Succeeded" => {
                work.succeeded.push(pod);
                work.delete.push(pod);
            }
            _ => running.push(pod),
        }
    }
    running.sort_by(|a, b| by_age(a, b));
    if !rollout.surge {
        // One pod per node: all but the oldest go. A node left without one gets it on the
        // next sync, once the deleted ones are gone.
        work.delete.extend(running.iter().skip(1));
        return work;
    }
    if running.len() <= 1 {
        work.create = running.is_empty() && place.should_run;
        return work;
    }
    // Surging: an old and a new pod may share the node until the new one is available.
    let (mut oldest_new, mut oldest_old) = (None, None);
    for pod in running {
        let hash = pod.metadata.labels.as_ref().and_then(|l| l.get(HASH_LABEL));
        let slot = if hash.map(String::as_str) == Some(rollout.hash) {
            &mut oldest_new
        } else {
            &mut oldest_old
        };
        if slot.is_none() {
            *slot = Some(pod);
        } else {
            work.delete.push(pod);
        }
    }
    if let (Some(new), Some(old)) = (oldest_new, oldest_old)
        && (!is_ready(old) || is_available(new, rollout.min_ready, now))
    {
        work.delete.push(old);
    }
    work
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::{NodeSpec, PreferredSchedulingTerm};
    use kube::api::ObjectMeta;

    use super::*;
    use crate::controllers::replicaset::pods::tests::{NOW, at, pod};

    pub fn node(name: &str, labels: &[(&str, &str)], taints: &[(&str, &str)]) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                ),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec {
                taints: Some(
                    taints
                        .iter()
                        .map(|(key, effect)| Taint {
                            key: (*key).into(),
                            effect: (*effect).into(),
                            ..Taint::default()
                        })
                        .collect(),
                ),
                ..NodeSpec::default()
            }),
            status: None,
        }
    }

    fn labelled(mut p: Pod, hash: &str) -> Pod {
        p.metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(HASH_LABEL.into(), hash.into());
        p
    }

    #[test]
    fn eligibility_follows_selector_affinity_and_taints_with_daemon_tolerations() {
        let mut spec = PodSpec {
            node_selector: Some(BTreeMap::from([("role".to_owned(), "edge".to_owned())])),
            ..PodSpec::default()
        };
        add_tolerations(&mut spec);
        let edge = [("role", "edge")];
        let run = Placement {
            should_run: true,
            should_continue: true,
        };
        let never = Placement {
            should_run: false,
            should_continue: false,
        };
        let stay = Placement {
            should_run: false,
            should_continue: true,
        };
        // (node, placement)
        let cases = [
            (node("a", &edge, &[]), run),
            (node("b", &[("role", "core")], &[]), never),
            // Tolerated by every daemon pod.
            (
                node(
                    "c",
                    &edge,
                    &[("node.kubernetes.io/unschedulable", "NoSchedule")],
                ),
                run,
            ),
            (
                node("d", &edge, &[("node.kubernetes.io/not-ready", "NoExecute")]),
                run,
            ),
            (node("e", &edge, &[("dedicated", "NoSchedule")]), stay),
            (node("f", &edge, &[("dedicated", "NoExecute")]), never),
            (
                node(
                    "g",
                    &edge,
                    &[("node.kubernetes.io/network-unavailable", "NoSchedule")],
                ),
                stay,
            ),
        ];
        for (n, want) in cases {
            assert_eq!(placement(&spec, &n), want, "{:?}", n.metadata.name);
        }
        let mut host = spec.clone();
        host.host_network = Some(true);
        add_tolerations(&mut host);
        assert_eq!(
            placement(
                &host,
                &node(
                    "g",
                    &edge,
                    &[("node.kubernetes.io/network-unavailable", "NoSchedule")]
                )
            ),
            run
        );
        add_tolerations(&mut host);
        assert_eq!(
            host.tolerations.as_ref().map(Vec::len),
            Some(7),
            "added once"
        );
        let mut named = spec.clone();
        named.node_name = Some("a".into());
        assert_eq!(placement(&named, &node("z", &edge, &[])), never);
    }

    #[test]
    fn pods_are_pinned_by_name_and_found_by_it() {
        let preferred = Affinity {
            node_affinity: Some(NodeAffinity {
                preferred_during_scheduling_ignored_during_execution: Some(vec![
                    PreferredSchedulingTerm::default(),
                ]),
                required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm::default()],
                }),
            }),
            ..Affinity::default()
        };
        let pinned = pin_to(Some(preferred), "n7");
        let node_affinity = pinned.node_affinity.clone().expect("node affinity");
        assert_eq!(
            node_affinity
                .preferred_during_scheduling_ignored_during_execution
                .map(|p| p.len()),
            Some(1)
        );
        let mut p = pod("x", "", "Pending", None, 0);
        if let Some(spec) = p.spec.as_mut() {
            spec.affinity = Some(pinned);
        }
        assert_eq!(target_node(&p), Some("n7".into()));
        assert!(selection::node_matches(
            p.spec.as_ref().expect("spec"),
            &node("n7", &[], &[])
        ));
        assert!(!selection::node_matches(
            p.spec.as_ref().expect("spec"),
            &node("n8", &[], &[])
        ));
        assert_eq!(
            target_node(&pod("y", "n2", "Running", None, 0)),
            Some("n2".into())
        );
        assert_eq!(target_node(&pod("z", "", "Pending", None, 0)), None);
    }

    #[test]
    fn a_node_keeps_its_oldest_pod_and_failed_ones_go_with_backoff() {
        let now = at(NOW);
        let run = Placement {
            should_run: true,
            should_continue: true,
        };
        let rollout = Rollout {
            surge: false,
            hash: "h2",
            min_ready: 0,
        };
        let old = pod("old", "n1", "Running", Some(NOW - 100), 10);
        let young = pod("young", "n1", "Running", Some(NOW - 100), 20);
        let failed = pod("failed", "n1", "Failed", None, 5);
        let done = pod("done", "n1", "Succeeded", None, 5);
        let mut backoff = FailedBackoff::default();
        let names = |v: &[&Pod]| -> Vec<String> {
            v.iter().filter_map(|p| p.metadata.name.clone()).collect()
        };

        let w = on_node(run, &[], rollout, (&mut backoff, "k"), now);
        assert!(w.create && w.delete.is_empty());
        let w = on_node(run, &[&young, &old], rollout, (&mut backoff, "k"), now);
        assert_eq!(
            (w.create, names(&w.delete)),
            (false, vec!["young".to_owned()])
        );
        let w = on_node(run, &[&failed, &done], rollout, (&mut backoff, "k"), now);
        assert_eq!(names(&w.delete), vec!["failed", "done"]);
        assert_eq!(
            (names(&w.failed), names(&w.succeeded)),
            (vec!["failed".to_owned()], vec!["done".to_owned()])
        );
        assert!(!w.create, "created once the deleted ones are gone");
        // Another failure within a second waits; after it, the delay doubles.
        let w = on_node(run, &[&failed], rollout, (&mut backoff, "k"), now);
        assert_eq!((w.delete.len(), w.wait), (0, Some(Duration::from_secs(1))));
        let later = at(NOW + 1);
        let w = on_node(run, &[&failed], rollout, (&mut backoff, "k"), later);
        assert_eq!(w.delete.len(), 1);
        assert_eq!(backoff.holding("k", later), Some(Duration::from_secs(2)));

        let leave = Placement {
            should_run: false,
            should_continue: false,
        };
        let w = on_node(leave, &[&old, &young], rollout, (&mut backoff, "k"), now);
        assert_eq!(names(&w.delete), vec!["old", "young"]);
    }

    #[test]
    fn surging_keeps_an_old_pod_until_the_new_one_is_available() {
        let now = at(NOW);
        let run = Placement {
            should_run: true,
            should_continue: true,
        };
        let rollout = Rollout {
            surge: true,
            hash: "h2",
            min_ready: 30,
        };
        let old = labelled(pod("old", "n1", "Running", Some(NOW - 100), 10), "h1");
        let fresh = labelled(pod("fresh", "n1", "Running", Some(NOW - 5), 20), "h2");
        let settled = labelled(pod("settled", "n1", "Running", Some(NOW - 60), 20), "h2");
        let mut old_down = old.clone();
        if let Some(status) = old_down.status.as_mut() {
            status.conditions = None;
        }
        let mut backoff = FailedBackoff::default();
        let mut deleted = |pods: &[&Pod]| -> Vec<String> {
            on_node(run, pods, rollout, (&mut backoff, "k"), now)
                .delete
                .iter()
                .filter_map(|p| p.metadata.name.clone())
                .collect()
        };
        assert!(
            deleted(&[&old, &fresh]).is_empty(),
            "new one not available yet"
        );
        assert_eq!(deleted(&[&old, &settled]), vec!["old"]);
        assert_eq!(
            deleted(&[&old_down, &fresh]),
            vec!["old"],
            "old one not ready"
        );
    }

    #[test]
    fn updated_pods_carry_the_hash_or_the_generation() {
        let mut p = labelled(pod("a", "n1", "Running", None, 0), "h2");
        assert!(is_updated(&p, "h2", None));
        assert!(!is_updated(&p, "h3", None));
        p.metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(GENERATION_LABEL.into(), "4".into());
        assert!(is_updated(&p, "h3", Some(4)));
        assert!(!is_updated(&p, "", Some(5)));
    }
}
