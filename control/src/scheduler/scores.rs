//! Scores: how good each feasible node is for a pod, as upstream's default score plugins
//! rate it — NodeResourcesFit (LeastAllocated) and NodeResourcesBalancedAllocation over cpu
//! and memory, NodeAffinity (preferred terms) and TaintToleration (untolerated
//! PreferNoSchedule taints) — each normalised to 0–100 and summed with upstream's default
//! weights. Pure. Invariant: `pick` is deterministic; equal totals go to the node whose name
//! sorts first (upstream picks among ties at random).
//!
//! Not yet: PodTopologySpread (which spreads replicas by default upstream), InterPodAffinity
//! and ImageLocality.

use k8s_openapi::api::core::v1::{Node, PodSpec};

use super::resources::{self, Demand, NodeUsage};

/// Upstream's `MaxNodeScore`.
pub const MAX: i64 = 100;

/// Upstream's default plugin weights (`getDefaultPlugins`).
pub const WEIGHT_LEAST_ALLOCATED: i64 = 1;
pub const WEIGHT_BALANCED_ALLOCATION: i64 = 1;
pub const WEIGHT_NODE_AFFINITY: i64 = 2;
pub const WEIGHT_TAINT_TOLERATION: i64 = 3;

/// A node that passed every filter, with what its pods use.
#[derive(Debug, Clone, Copy)]
pub struct Feasible<'a> {
    pub node: &'a Node,
    pub usage: &'a NodeUsage,
}

fn cpu_memory(node: &Node) -> [i128; 2] {
    let allocatable = resources::allocatable(node);
    [
        allocatable.get("cpu").copied().unwrap_or(0),
        allocatable.get("memory").copied().unwrap_or(0),
    ]
}

/// LeastAllocated: the free share of cpu and memory after placing the pod, averaged with
/// equal weights. Counts the defaults for containers without requests (`non_zero_*`), so
/// best-effort pods spread too. Resources the node lacks are left out.
pub fn least_allocated(demand: &Demand, feasible: Feasible<'_>) -> i64 {
    let allocatable = cpu_memory(feasible.node);
    let requested = [
        feasible.usage.non_zero_cpu + demand.non_zero_cpu,
        feasible.usage.non_zero_memory + demand.non_zero_memory,
    ];
    let (mut sum, mut weights) = (0i128, 0i128);
    for (requested, capacity) in requested.into_iter().zip(allocatable) {
        if capacity <= 0 {
            continue;
        }
        let score = if requested > capacity {
            0
        } else {
            (capacity - requested) * i128::from(MAX) / capacity
        };
        sum += score;
        weights += 1;
    }
    if weights == 0 {
        return 0;
    }
    i64::try_from(sum / weights).unwrap_or(0)
}

/// BalancedAllocation: 100 × (1 − standard deviation of the cpu and memory fractions in use
/// after placing the pod), so nodes whose resources fill evenly win. Uses the real requests.
pub fn balanced_allocation(demand: &Demand, feasible: Feasible<'_>) -> i64 {
    let allocatable = cpu_memory(feasible.node);
    let requested = [
        feasible.usage.get("cpu") + demand.get("cpu"),
        feasible.usage.get("memory") + demand.get("memory"),
    ];
    let fractions: Vec<f64> = requested
        .into_iter()
        .zip(allocatable)
        .filter(|(_, capacity)| *capacity > 0)
        .map(|(requested, capacity)| (requested as f64 / capacity as f64).min(1.0))
        .collect();
    // With two resources the standard deviation is half their difference (upstream's
    // shortcut); with one it is zero.
    let std = match fractions.as_slice() {
        [a, b] => ((a - b) / 2.0).abs(),
        _ => 0.0,
    };
    ((1.0 - std) * MAX as f64) as i64
}

/// NodeAffinity (raw): the summed weights of the preferred terms the node matches.
pub fn node_affinity(pod: &PodSpec, node: &Node) -> i64 {
    pod.affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.preferred_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .into_iter()
        .flatten()
        .filter(|term| nodus_api::selection::term_matches(&term.preference, node))
        .map(|term| i64::from(term.weight))
        .sum()
}

/// TaintToleration (raw): how many PreferNoSchedule taints the pod does not tolerate, with
/// only its tolerations for that effect (or any effect) counting.
pub fn taint_toleration(pod: &PodSpec, node: &Node) -> i64 {
    let tolerations: Vec<_> = pod
        .tolerations
        .iter()
        .flatten()
        .filter(|t| {
            matches!(
                t.effect.as_deref(),
                None | Some("") | Some("PreferNoSchedule")
            )
        })
        .collect();
    let count = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
        .filter(|taint| taint.effect == "PreferNoSchedule")
        .filter(|taint| {
            !tolerations
                .iter()
                .any(|t| nodus_api::selection::tolerates(t, taint))
        })
        .count();
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// Upstream's `DefaultNormalizeScore`: scale so the highest raw score is 100; `reverse`
/// turns "more is worse" counts into scores (all 100 when every count is zero).
pub fn normalize(scores: &mut [i64], reverse: bool) {
    let max = scores.iter().copied().max().unwrap_or(0);
    if max == 0 {
        if reverse {
            scores.iter_mut().for_each(|s| *s = MAX);
        }
        return;
    }
    for score in scores.iter_mut() {
        let scaled = MAX * *score / max;
        *score = if reverse { MAX - scaled } else { scaled };
    }
}

/// The weighted total of every score plugin for each feasible node, in input order.
pub fn totals(pod: &PodSpec, demand: &Demand, nodes: &[Feasible<'_>]) -> Vec<i64> {
    let mut affinity: Vec<i64> = nodes.iter().map(|f| node_affinity(pod, f.node)).collect();
    normalize(&mut affinity, false);
    let mut taints: Vec<i64> = nodes
        .iter()
        .map(|f| taint_toleration(pod, f.node))
        .collect();
    normalize(&mut taints, true);
    nodes
        .iter()
        .enumerate()
        .map(|(i, f)| {
            WEIGHT_LEAST_ALLOCATED * least_allocated(demand, *f)
                + WEIGHT_BALANCED_ALLOCATION * balanced_allocation(demand, *f)
                + WEIGHT_NODE_AFFINITY * affinity[i]
                + WEIGHT_TAINT_TOLERATION * taints[i]
        })
        .collect()
}

/// The index of the best node: highest total, ties to the name that sorts first.
pub fn pick(pod: &PodSpec, demand: &Demand, nodes: &[Feasible<'_>]) -> Option<usize> {
    if nodes.len() <= 1 {
        // Upstream skips scoring when there is nothing to choose between.
        return (!nodes.is_empty()).then_some(0);
    }
    let totals = totals(pod, demand, nodes);
    let name = |i: usize| nodes[i].node.metadata.name.as_deref().unwrap_or_default();
    (0..nodes.len()).max_by(|&a, &b| totals[a].cmp(&totals[b]).then_with(|| name(b).cmp(name(a))))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{
        Affinity, NodeAffinity, NodeSelectorRequirement, NodeSelectorTerm, NodeSpec,
        PreferredSchedulingTerm, Taint, Toleration,
    };

    use super::*;
    use crate::scheduler::filters::tests::{node, pod};

    fn usage_of(specs: &[PodSpec]) -> NodeUsage {
        let mut usage = NodeUsage::default();
        for spec in specs {
            usage.add(&Demand::of(spec));
        }
        usage
    }

    #[test]
    fn least_allocated() {
        let cases = [
            // (node cpu, node memory, used, pod, score)
            ("empty node", "4", "4Gi", vec![], pod("1", "1Gi"), 75),
            (
                "half used",
                "4",
                "4Gi",
                vec![pod("1", "1Gi")],
                pod("1", "1Gi"),
                50,
            ),
            (
                "cpu full, memory explicitly zero",
                "2",
                "4Gi",
                vec![],
                pod("2", "0"),
                50,
            ),
            (
                "over-committed counts as zero",
                "1",
                "1Gi",
                vec![pod("2", "2Gi")],
                pod("1", "1Gi"),
                0,
            ),
            (
                "best effort counts 100m and 200Mi",
                "1",
                "1000Mi",
                vec![],
                pod("0", "0"),
                (90 + 80) / 2,
            ),
        ];
        for (name, cpu, memory, used, spec, want) in cases {
            // "0" requests are explicit zeros; the defaults apply only to missing requests.
            let spec = if name.starts_with("best effort") {
                PodSpec {
                    containers: vec![k8s_openapi::api::core::v1::Container::default()],
                    ..spec
                }
            } else {
                spec
            };
            let n = node("n", cpu, memory, "110");
            let usage = usage_of(&used);
            let score = super::least_allocated(
                &Demand::of(&spec),
                Feasible {
                    node: &n,
                    usage: &usage,
                },
            );
            assert_eq!(score, want, "{name}");
        }
    }

    #[test]
    fn balanced_allocation() {
        let cases = [
            ("even use", vec![], pod("1", "1Gi"), 100),
            ("cpu only", vec![], pod("2", "0"), 75),
            ("cpu full", vec![], pod("4", "0"), 50),
            (
                "existing use evens out",
                vec![pod("0", "2Gi")],
                pod("2", "0"),
                100,
            ),
            (
                "over-committed is capped at full",
                vec![pod("8", "0")],
                pod("0", "0"),
                50,
            ),
        ];
        for (name, used, spec, want) in cases {
            let n = node("n", "4", "4Gi", "110");
            let usage = usage_of(&used);
            let score = super::balanced_allocation(
                &Demand::of(&spec),
                Feasible {
                    node: &n,
                    usage: &usage,
                },
            );
            assert_eq!(score, want, "{name}");
        }
    }

    #[test]
    fn normalize() {
        let cases: [(Vec<i64>, bool, Vec<i64>); 4] = [
            (vec![0, 5, 10], false, vec![0, 50, 100]),
            (vec![0, 0], false, vec![0, 0]),
            (vec![0, 1, 2], true, vec![100, 50, 0]),
            (vec![0, 0], true, vec![100, 100]),
        ];
        for (mut scores, reverse, want) in cases {
            super::normalize(&mut scores, reverse);
            assert_eq!(scores, want);
        }
    }

    fn preferring(terms: &[(i32, &str, &str)]) -> PodSpec {
        PodSpec {
            affinity: Some(Affinity {
                node_affinity: Some(NodeAffinity {
                    preferred_during_scheduling_ignored_during_execution: Some(
                        terms
                            .iter()
                            .map(|(weight, key, value)| PreferredSchedulingTerm {
                                weight: *weight,
                                preference: NodeSelectorTerm {
                                    match_expressions: Some(vec![NodeSelectorRequirement {
                                        key: (*key).into(),
                                        operator: "In".into(),
                                        values: Some(vec![(*value).into()]),
                                    }]),
                                    match_fields: None,
                                },
                            })
                            .collect(),
                    ),
                    ..NodeAffinity::default()
                }),
                ..Affinity::default()
            }),
            ..pod("0", "0")
        }
    }

    #[test]
    fn preferred_node_affinity() {
        let n = node("n", "1", "1Gi", "10");
        let cases = [
            ("no preferences", preferring(&[]), 0),
            ("one match", preferring(&[(30, "disk", "ssd")]), 30),
            (
                "matches add up",
                preferring(&[(30, "disk", "ssd"), (5, "gen", "5")]),
                35,
            ),
            (
                "misses count nothing",
                preferring(&[(30, "disk", "hdd"), (5, "gen", "5")]),
                5,
            ),
        ];
        for (name, spec, want) in cases {
            assert_eq!(super::node_affinity(&spec, &n), want, "{name}");
        }
    }

    fn tainted(name: &str, taints: &[(&str, &str)]) -> Node {
        let mut n = node(name, "4", "4Gi", "110");
        n.spec = Some(NodeSpec {
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
        });
        n
    }

    #[test]
    fn prefer_no_schedule_taints() {
        let n = tainted(
            "n",
            &[
                ("a", "PreferNoSchedule"),
                ("b", "PreferNoSchedule"),
                ("c", "NoSchedule"),
            ],
        );
        let tolerating = |effect: Option<&str>| PodSpec {
            tolerations: Some(vec![Toleration {
                key: Some("a".into()),
                operator: Some("Exists".into()),
                effect: effect.map(str::to_owned),
                ..Toleration::default()
            }]),
            ..pod("0", "0")
        };
        let cases = [
            ("none tolerated", pod("0", "0"), 2),
            ("one tolerated for any effect", tolerating(None), 1),
            (
                "one tolerated for PreferNoSchedule",
                tolerating(Some("PreferNoSchedule")),
                1,
            ),
            (
                "a NoSchedule toleration does not count",
                tolerating(Some("NoSchedule")),
                2,
            ),
        ];
        for (name, spec, want) in cases {
            assert_eq!(super::taint_toleration(&spec, &n), want, "{name}");
        }
    }

    #[test]
    fn pick_combines_weights_and_breaks_ties_by_name() {
        let empty = NodeUsage::default();
        let busy = usage_of(&[pod("3", "3Gi")]);
        let (a, b, c) = (
            node("a", "4", "4Gi", "110"),
            node("b", "4", "4Gi", "110"),
            node("c", "4", "4Gi", "110"),
        );
        let spec = pod("1", "1Gi");
        let demand = Demand::of(&spec);
        fn feasible<'a>(list: &[(&'a Node, &'a NodeUsage)]) -> Vec<Feasible<'a>> {
            list.iter()
                .map(|&(node, usage)| Feasible { node, usage })
                .collect()
        }
        let name = |nodes: &[Feasible<'_>], i: Option<usize>| {
            i.and_then(|i| nodes[i].node.metadata.name.clone())
        };

        // Equal nodes: the first name wins, whatever the input order.
        let nodes = feasible(&[(&c, &empty), (&b, &empty), (&a, &empty)]);
        assert_eq!(
            name(&nodes, pick(&spec, &demand, &nodes)).as_deref(),
            Some("a")
        );

        // The less loaded node wins.
        let nodes = feasible(&[(&a, &busy), (&b, &empty)]);
        assert_eq!(
            name(&nodes, pick(&spec, &demand, &nodes)).as_deref(),
            Some("b")
        );

        // A PreferNoSchedule taint (weight 3) outweighs a lighter load (weight 1 + 1).
        let soft = tainted("a", &[("x", "PreferNoSchedule")]);
        let nodes = feasible(&[(&soft, &empty), (&b, &busy)]);
        let totals = totals(&spec, &demand, &nodes);
        // a: 75 least + 100 balanced + 0 taint; b: 0 least + 100 balanced + 3 × 100 taint.
        assert_eq!(totals, vec![175, 400]);
        assert_eq!(
            name(&nodes, pick(&spec, &demand, &nodes)).as_deref(),
            Some("b")
        );

        // Preferred affinity (weight 2) pulls the pod to the matching node.
        let mut labelled = node("z", "4", "4Gi", "110");
        labelled
            .metadata
            .labels
            .as_mut()
            .expect("labels")
            .insert("zone".into(), "east".into());
        let wants_east = PodSpec {
            containers: spec.containers.clone(),
            ..preferring(&[(10, "zone", "east")])
        };
        let nodes = feasible(&[(&a, &empty), (&labelled, &empty)]);
        assert_eq!(
            name(&nodes, pick(&wants_east, &demand, &nodes)).as_deref(),
            Some("z")
        );

        assert_eq!(pick(&spec, &demand, &[]), None);
    }
}
