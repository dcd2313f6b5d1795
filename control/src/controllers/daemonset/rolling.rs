//! Rolling update: which old daemon pods to delete (and, when surging, on which nodes to
//! start new ones beside them) so that a new template reaches every node within
//! `maxUnavailable` / `maxSurge`.
//!
//! Invariants: without surge, at most maxUnavailable nodes are without an available pod —
//! an old pod that is not available anyway is replaced at once, an available one only while
//! the count allows; with surge (maxSurge above zero), a new pod starts beside an old one on
//! at most maxSurge nodes at a time (at once where the old one is not available), and the
//! old one goes when the new one is available (which [`super::placement::on_node`] does);
//! a node with several old or several new pods is left to the manage step and counts as
//! unavailable (surging). Both counts are scaled to the nodes that should run the pod,
//! rounding up; both at zero means one unavailable. Nodes are taken in name order (upstream
//! walks a Go map, in no order). Upstream: `pkg/controller/daemon/update.go`
//! (`rollingUpdate`, `findUpdatedPodsOnNode`, `updatedDesiredNodeCounts`) and
//! `pkg/controller/daemon/util/daemonset_util.go` (`SurgeCount`, `UnavailableCount`,
//! `AllowsSurge`).

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::apps::v1::{DaemonSet, RollingUpdateDaemonSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;

use super::placement::{Placement, is_updated};
use crate::controllers::deployment::arithmetic::{ArithmeticError, scaled_value};
use crate::controllers::replicaset::pods::is_available;

/// The rolling update settings, None for OnDelete.
fn rolling(ds: &DaemonSet) -> Option<&RollingUpdateDaemonSet> {
    let strategy = ds.spec.update_strategy.as_ref();
    // The API server defaults the type to RollingUpdate.
    match strategy.and_then(|s| s.type_.as_deref()) {
        None | Some("RollingUpdate") => strategy?.rolling_update.as_ref(),
        Some(_) => None,
    }
}

pub fn is_rolling(ds: &DaemonSet) -> bool {
    let strategy = ds.spec.update_strategy.as_ref();
    matches!(
        strategy.and_then(|s| s.type_.as_deref()),
        None | Some("RollingUpdate")
    )
}

/// Upstream's `SurgeCount`: 0 unless asked for.
pub fn max_surge(ds: &DaemonSet, desired: i32) -> Result<i32, ArithmeticError> {
    match rolling(ds).and_then(|r| r.max_surge.as_ref()) {
        Some(value) => scaled_value(value, desired, true),
        None => Ok(0),
    }
}

/// Upstream's `UnavailableCount` (the API server defaults maxUnavailable to 1).
pub fn max_unavailable(ds: &DaemonSet, desired: i32) -> Result<i32, ArithmeticError> {
    let one = IntOrString::Int(1);
    match rolling(ds) {
        Some(r) => scaled_value(r.max_unavailable.as_ref().unwrap_or(&one), desired, true),
        None => Ok(0),
    }
}

/// Upstream's `AllowsSurge`: any maxSurge above zero lets a node hold two pods.
pub fn allows_surge(ds: &DaemonSet) -> bool {
    max_surge(ds, 1).is_ok_and(|s| s > 0)
}

/// Upstream's `findUpdatedPodsOnNode`: the node's new and old pod (being deleted ones
/// aside), or None if it has several of either.
fn updated_on<'a>(
    pods: &[&'a Pod],
    hash: &str,
    generation: Option<i64>,
) -> Option<(Option<&'a Pod>, Option<&'a Pod>)> {
    let (mut new, mut old) = (None, None);
    for pod in pods.iter().copied() {
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let slot = if is_updated(pod, hash, generation) {
            &mut new
        } else {
            &mut old
        };
        if slot.replace(pod).is_some() {
            return None;
        }
    }
    Some((new, old))
}

/// What a rolling update step does.
#[derive(Debug, Default, PartialEq)]
pub struct Step<'a> {
    pub delete: Vec<&'a Pod>,
    /// Nodes that get a new pod beside their old one.
    pub create: Vec<String>,
}

/// The nodes and their daemon pods as one sync sees them.
#[derive(Debug)]
pub struct Nodes<'n, 'a> {
    pub placements: &'n HashMap<String, Placement>,
    /// Each node's pods (terminal pods being deleted left out).
    pub pods: &'n BTreeMap<String, Vec<&'a Pod>>,
    pub hash: &'n str,
    pub generation: Option<i64>,
}

/// Upstream's `rollingUpdate`.
pub fn step<'a>(
    ds: &DaemonSet,
    nodes: &Nodes<'_, 'a>,
    now: Timestamp,
) -> Result<Step<'a>, ArithmeticError> {
    let should_run = |node: &str| nodes.placements.get(node).is_some_and(|p| p.should_run);
    let mut by_node: BTreeMap<&str, &[&'a Pod]> = nodes
        .pods
        .iter()
        .map(|(n, pods)| (n.as_str(), pods.as_slice()))
        .collect();
    // updatedDesiredNodeCounts: every node that should run the pod is counted, with or
    // without one.
    let mut desired = 0;
    for (name, placement) in nodes.placements {
        if placement.should_run {
            desired += 1;
            by_node.entry(name.as_str()).or_insert(&[]);
        }
    }
    let mut surge = max_surge(ds, desired)?;
    let mut unavailable = max_unavailable(ds, desired)?;
    if desired > 0 && surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    let min_ready = ds.spec.min_ready_seconds.unwrap_or(0);
    let available = |pod: &Pod| is_available(pod, min_ready, now);
    let mut out = Step::default();

    if surge == 0 {
        let mut down = 0;
        let mut allowed = Vec::new();
        let mut candidates = Vec::new();
        for pods in by_node.values() {
            match updated_on(pods, nodes.hash, nodes.generation) {
                // Left to the manage step: count it as unavailable.
                None | Some((None, None) | (Some(_), Some(_))) => down += 1,
                Some((Some(new), None)) => {
                    if !available(new) {
                        down += 1;
                    }
                }
                Some((None, Some(old))) => {
                    if !available(old) {
                        allowed.push(old);
                        down += 1;
                    } else if down < unavailable {
                        candidates.push(old);
                    }
                }
            }
        }
        let room = usize::try_from(unavailable - down).unwrap_or(0);
        out.delete = allowed;
        out.delete.extend(candidates.into_iter().take(room));
        return Ok(out);
    }

    let mut surging = 0;
    let mut up = 0;
    let mut allowed = Vec::new();
    let mut candidates = Vec::new();
    let mut leaving = Vec::new();
    for (name, pods) in &by_node {
        let Some((new, old)) = updated_on(pods, nodes.hash, nodes.generation) else {
            surging += 1;
            continue;
        };
        if old.or(new).is_some_and(available) {
            up += 1;
        }
        match (new, old) {
            (_, None) => {}
            (None, Some(old)) if !available(old) => {
                if should_run(name) {
                    allowed.push((*name).to_owned());
                } else {
                    out.delete.push(old);
                }
            }
            (None, Some(old)) => {
                if !should_run(name) {
                    leaving.push(old);
                } else if surging < surge {
                    candidates.push((*name).to_owned());
                }
            }
            (Some(new), Some(old)) => {
                if available(new) {
                    out.delete.push(old);
                } else {
                    surging += 1;
                }
            }
        }
    }
    // Pods on nodes that should no longer run one go only while enough others are
    // available: with surge the owner expects full availability.
    let deletable = usize::try_from(up - desired).unwrap_or(0);
    out.delete.extend(leaving.into_iter().take(deletable));
    surge = (surge - surging).max(0);
    out.create = allowed;
    out.create.extend(
        candidates
            .into_iter()
            .take(usize::try_from(surge).unwrap_or(0)),
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::apps::v1::DaemonSetUpdateStrategy;

    use super::*;
    use crate::controllers::history::HASH_LABEL;
    use crate::controllers::history::tests::daemonset;
    use crate::controllers::replicaset::pods::tests::{NOW, pod};

    fn strategy(surge: Option<&str>, unavailable: Option<&str>) -> DaemonSet {
        let parse = |v: &str| match v.parse::<i32>() {
            Ok(n) => IntOrString::Int(n),
            Err(_) => IntOrString::String(v.into()),
        };
        let mut ds = daemonset("agent:2");
        ds.spec.update_strategy = Some(DaemonSetUpdateStrategy {
            type_: Some("RollingUpdate".into()),
            rolling_update: Some(RollingUpdateDaemonSet {
                max_surge: surge.map(parse),
                max_unavailable: unavailable.map(parse),
            }),
        });
        ds
    }

    /// A running, ready pod of revision `hash` on `node`, ready for `ready_for` seconds.
    fn on(node: &str, hash: &str, ready_for: Option<i64>) -> Pod {
        let mut p = pod(
            &format!("{node}-{hash}"),
            node,
            "Running",
            ready_for.map(|s| NOW - s),
            0,
        );
        p.metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(HASH_LABEL.into(), hash.into());
        p
    }

    fn run_everywhere(names: &[&str]) -> HashMap<String, Placement> {
        names
            .iter()
            .map(|n| {
                (
                    (*n).to_owned(),
                    Placement {
                        should_run: true,
                        should_continue: true,
                    },
                )
            })
            .collect()
    }

    fn names(pods: &[&Pod]) -> Vec<String> {
        pods.iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect()
    }

    #[test]
    fn counts_scale_to_the_desired_nodes_rounding_up() {
        // (maxSurge, maxUnavailable, desired, surge, unavailable, allows surge)
        let cases = [
            (None, Some("1"), 10, 0, 1, false),
            (None, Some("25%"), 10, 0, 3, false),
            (Some("10%"), Some("0"), 10, 1, 0, true),
            (Some("0"), None, 5, 0, 1, false),
        ];
        for (s, u, desired, surge, unavailable, allows) in cases {
            let ds = strategy(s, u);
            assert_eq!(
                (
                    max_surge(&ds, desired),
                    max_unavailable(&ds, desired),
                    allows_surge(&ds)
                ),
                (Ok(surge), Ok(unavailable), allows),
                "{s:?} {u:?}"
            );
        }
        let mut on_delete = strategy(None, Some("1"));
        on_delete.spec.update_strategy = Some(DaemonSetUpdateStrategy {
            type_: Some("OnDelete".into()),
            rolling_update: None,
        });
        assert!(!is_rolling(&on_delete));
        assert_eq!(max_unavailable(&on_delete, 10), Ok(0));
    }

    #[test]
    fn without_surge_at_most_max_unavailable_old_pods_go() {
        let ds = strategy(None, Some("2"));
        let placements = run_everywhere(&["a", "b", "c", "d", "e"]);
        let pods = [
            on("a", "h1", Some(100)),
            on("b", "h1", Some(100)),
            on("c", "h1", None),
            on("d", "h2", Some(100)),
            on("e", "h1", Some(100)),
        ];
        let mut by_node: BTreeMap<String, Vec<&Pod>> = BTreeMap::new();
        for p in &pods {
            let node = p
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default();
            by_node.entry(node).or_default().push(p);
        }
        let nodes = Nodes {
            placements: &placements,
            pods: &by_node,
            hash: "h2",
            generation: None,
        };
        let step = step(
            &ds,
            &nodes,
            crate::controllers::replicaset::pods::tests::at(NOW),
        )
        .expect("valid");
        // c is down anyway and goes at once (one unavailable); one more may: a.
        assert_eq!(names(&step.delete), vec!["c-h1", "a-h1"]);
        assert!(step.create.is_empty());
    }

    #[test]
    fn with_surge_new_pods_start_beside_old_ones() {
        let ds = strategy(Some("1"), Some("0"));
        let placements = run_everywhere(&["a", "b", "c"]);
        let a_old = on("a", "h1", Some(100));
        let a_new = on("a", "h2", Some(100));
        let b_old = on("b", "h1", None);
        let c_old = on("c", "h1", Some(100));
        let by_node: BTreeMap<String, Vec<&Pod>> = [
            ("a".to_owned(), vec![&a_old, &a_new]),
            ("b".to_owned(), vec![&b_old]),
            ("c".to_owned(), vec![&c_old]),
        ]
        .into();
        let nodes = Nodes {
            placements: &placements,
            pods: &by_node,
            hash: "h2",
            generation: None,
        };
        let step = step(
            &ds,
            &nodes,
            crate::controllers::replicaset::pods::tests::at(NOW),
        )
        .expect("valid");
        // a's new pod is available: its old one goes; b's old one is down: surge there at
        // once; c waits its turn (maxSurge 1).
        assert_eq!(names(&step.delete), vec!["a-h1"]);
        assert_eq!(step.create, vec!["b", "c"]);
    }
}
