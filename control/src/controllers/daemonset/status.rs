//! DaemonSet status: how many nodes should run the daemon pod, run it, run it up to date,
//! ready and available, and how many run it without belonging — what `kubectl rollout
//! status ds/…` waits on.
//!
//! Invariants: counted over the nodes of the sync (nodes being deleted left out); a node
//! counts by its oldest daemon pod (scheduled first, then by creation), terminal pods being
//! deleted excluded; `numberUnavailable` is desired less available; `observedGeneration`
//! only moves when the sync could act on that generation (its previous writes were all
//! seen); collisionCount and conditions are kept as they are; the status is written only
//! when a count changed or the generation is new. Upstream:
//! `pkg/controller/daemon/daemon_controller.go` (`updateDaemonSetStatus`,
//! `storeDaemonSetStatus`).

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;

use super::placement::{Placement, by_age, is_updated};
use crate::controllers::replicaset::pods::{available_after, is_available, is_ready};

/// The status counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub desired: i32,
    pub current: i32,
    pub misscheduled: i32,
    pub ready: i32,
    pub available: i32,
    pub updated: i32,
}

fn min_ready(ds: &DaemonSet) -> i32 {
    ds.spec.min_ready_seconds.unwrap_or(0)
}

/// Upstream's `updateDaemonSetStatus` counts.
pub fn counts(
    ds: &DaemonSet,
    placements: &HashMap<String, Placement>,
    pods: &BTreeMap<String, Vec<&Pod>>,
    hash: &str,
    generation: Option<i64>,
    now: Timestamp,
) -> Counts {
    let mut c = Counts::default();
    let min_ready = min_ready(ds);
    for (node, placement) in placements {
        let oldest = pods
            .get(node)
            .and_then(|on_node| on_node.iter().copied().min_by(|a, b| by_age(a, b)));
        match (placement.should_run, oldest) {
            (true, None) => c.desired += 1,
            (true, Some(pod)) => {
                c.desired += 1;
                c.current += 1;
                if is_ready(pod) {
                    c.ready += 1;
                    if is_available(pod, min_ready, now) {
                        c.available += 1;
                    }
                }
                if is_updated(pod, hash, generation) {
                    c.updated += 1;
                }
            }
            (false, Some(_)) => c.misscheduled += 1,
            (false, None) => {}
        }
    }
    c
}

/// Upstream's `storeDaemonSetStatus` check: nothing to write.
pub fn unchanged(ds: &DaemonSet, c: &Counts) -> bool {
    let Some(old) = ds.status.as_ref() else {
        return false;
    };
    old.desired_number_scheduled == c.desired
        && old.current_number_scheduled == c.current
        && old.number_misscheduled == c.misscheduled
        && old.number_ready == c.ready
        && old.updated_number_scheduled.unwrap_or(0) == c.updated
        && old.number_available.unwrap_or(0) == c.available
        && old.number_unavailable.unwrap_or(0) == c.desired - c.available
        && old.observed_generation.unwrap_or(0) >= ds.metadata.generation.unwrap_or(0)
}

/// The status to write: the counts, and the generation if the sync acted on it.
pub fn status(ds: &DaemonSet, c: &Counts, observed: bool) -> DaemonSetStatus {
    let mut status = ds.status.clone().unwrap_or_default();
    if observed {
        status.observed_generation = ds.metadata.generation;
    }
    status.desired_number_scheduled = c.desired;
    status.current_number_scheduled = c.current;
    status.number_misscheduled = c.misscheduled;
    status.number_ready = c.ready;
    status.updated_number_scheduled = Some(c.updated);
    status.number_available = Some(c.available);
    status.number_unavailable = Some(c.desired - c.available);
    status
}

/// When the next ready pod becomes available (minReadySeconds): the DaemonSet must be
/// looked at then, as no pod event will say so.
pub fn next_available(
    ds: &DaemonSet,
    pods: &BTreeMap<String, Vec<&Pod>>,
    now: Timestamp,
) -> Option<Timestamp> {
    let min_ready = min_ready(ds);
    pods.values()
        .flatten()
        .filter_map(|p| available_after(p, min_ready))
        .filter(|at| *at >= now)
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::history::HASH_LABEL;
    use crate::controllers::history::tests::daemonset;
    use crate::controllers::replicaset::pods::tests::{NOW, at, pod};

    fn hashed(mut p: Pod, hash: &str) -> Pod {
        p.metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(HASH_LABEL.into(), hash.into());
        p
    }

    #[test]
    fn nodes_count_by_their_oldest_pod() {
        let mut ds = daemonset("agent:2");
        ds.spec.min_ready_seconds = Some(30);
        let run = Placement {
            should_run: true,
            should_continue: true,
        };
        let off = Placement {
            should_run: false,
            should_continue: false,
        };
        let placements: HashMap<String, Placement> = [
            ("a".to_owned(), run),
            ("b".to_owned(), run),
            ("c".to_owned(), run),
            ("d".to_owned(), off),
        ]
        .into();
        let a = hashed(pod("a1", "a", "Running", Some(NOW - 60), 10), "h2");
        let a_young = hashed(pod("a2", "a", "Running", None, 20), "h1");
        let b = hashed(pod("b1", "b", "Running", Some(NOW - 5), 10), "h1");
        let d = hashed(pod("d1", "d", "Running", Some(NOW - 60), 10), "h2");
        let pods: BTreeMap<String, Vec<&Pod>> = [
            ("a".to_owned(), vec![&a_young, &a]),
            ("b".to_owned(), vec![&b]),
            ("d".to_owned(), vec![&d]),
        ]
        .into();
        let c = counts(&ds, &placements, &pods, "h2", None, at(NOW));
        assert_eq!(
            c,
            Counts {
                desired: 3,
                current: 2,
                misscheduled: 1,
                ready: 2,
                available: 1,
                updated: 1,
            }
        );
        let s = status(&ds, &c, true);
        assert_eq!(
            (s.observed_generation, s.number_unavailable),
            (Some(2), Some(2))
        );
        assert!(!unchanged(&ds, &c));
        let mut written = ds.clone();
        written.status = Some(s.clone());
        assert!(unchanged(&written, &c));
        assert_eq!(status(&ds, &c, false).observed_generation, None);
        assert_eq!(next_available(&ds, &pods, at(NOW)), Some(at(NOW + 25)));
    }
}
