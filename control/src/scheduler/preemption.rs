//! Preemption: for a pod that fits no node, find a node where evicting pods of lower
//! priority makes room, as upstream's DefaultPreemption does — on each node the filters
//! rejected for a reason removing pods can fix, take out every lower-priority pod, check
//! that the pod then fits, and put back as many as still leave it fitting, most important
//! first; the victims are the ones that could not go back. Of the nodes that work, pick the
//! one whose most important victim matters least, then the smallest sum of priorities, the
//! fewest victims, the most recently started victims. Pure: the scheduler carries out the
//! decision (nominate the pod, mark and delete the victims).
//!
//! Disruption budgets (`budgets`) come first in both choices: victims that would break a
//! budget are reprieved before the others, and the node with the fewest broken budgets
//! wins. A pod does not preempt when its `preemptionPolicy` is Never, or while victims of
//! its earlier preemption are still terminating on its nominated node (evicting more would
//! only over-preempt).

use std::cmp::Reverse;
use std::collections::{HashMap, HashSet};

use k8s_openapi::api::core::v1::{Node, Pod, PodSpec};
use k8s_openapi::jiff::Timestamp;

use super::budgets::Budgets;
use super::cache::{Bound, Cache};
use super::diagnosis;
use super::filters::{self, Code, Rejection};
use super::nominated::Nominations;
use super::resources::{Demand, NodeUsage};

pub const NOT_ELIGIBLE_NEVER: &str = "not eligible due to preemptionPolicy=Never.";
pub const NOT_ELIGIBLE_TERMINATING: &str =
    "not eligible due to a terminating pod on the nominated node.";

/// A pod chosen for eviction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Victim {
    /// `namespace/name`.
    pub key: String,
    pub uid: Option<String>,
    pub generation: Option<i64>,
}

impl Victim {
    pub fn namespace(&self) -> &str {
        self.key.split_once('/').map_or("", |(ns, _)| ns)
    }

    pub fn name(&self) -> &str {
        self.key
            .split_once('/')
            .map_or(self.key.as_str(), |(_, name)| name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The pod may not preempt now; why, in upstream's words.
    NotEligible(&'static str),
    /// No node works: each considered node's reasons, for the message.
    NoCandidate(Vec<String>),
    /// Evict `victims` (most important first) from `node` and nominate the pod there.
    Preempt { node: String, victims: Vec<Victim> },
}

impl Decision {
    /// The preemption part of the FailedScheduling message, after "preemption: ".
    pub fn describe(&self, total_nodes: usize) -> String {
        match self {
            Decision::NotEligible(why) => (*why).to_owned(),
            Decision::NoCandidate(reasons) => {
                diagnosis::nodes_available(total_nodes, reasons.iter().map(String::as_str))
            }
            Decision::Preempt { node, victims } => format!(
                "found a potential placement for pod on node {node}, preempting {} victims",
                victims.len()
            ),
        }
    }
}

/// What the pod asking to preempt brings.
#[derive(Debug, Clone, Copy)]
pub struct Preemptor<'a> {
    pub key: &'a str,
    pub pod: &'a Pod,
    pub demand: &'a Demand,
    pub priority: i32,
}

/// What the cluster looks like to preemption.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    pub cache: &'a Cache,
    pub nominations: &'a Nominations,
    pub budgets: &'a Budgets,
}

/// Decides preemption for a pod every node rejected (`rejections`: node name and why).
pub fn decide(
    preemptor: Preemptor<'_>,
    view: View<'_>,
    rejections: &[(String, Rejection)],
) -> Decision {
    let View {
        cache,
        nominations,
        budgets,
    } = view;
    let Some(spec) = preemptor.pod.spec.as_ref() else {
        return Decision::NoCandidate(Vec::new());
    };
    if spec.preemption_policy.as_deref() == Some("Never") {
        return Decision::NotEligible(NOT_ELIGIBLE_NEVER);
    }
    let priority = preemptor.priority;
    if waits_for_victims(preemptor, cache, nominations, rejections) {
        return Decision::NotEligible(NOT_ELIGIBLE_TERMINATING);
    }

    let considered: HashSet<&str> = rejections
        .iter()
        .filter(|(_, r)| r.code == Code::Unschedulable)
        .map(|(node, _)| node.as_str())
        .collect();
    let mut residents: HashMap<&str, Vec<Bound<'_>>> = HashMap::new();
    for bound in cache.bound() {
        if considered.contains(bound.node) {
            residents.entry(bound.node).or_default().push(bound);
        }
    }

    let mut reasons = Vec::new();
    let mut candidates: Vec<Candidate<'_>> = Vec::new();
    for (name, rejection) in rejections {
        if rejection.code == Code::UnschedulableAndUnresolvable {
            reasons.push(diagnosis::NOT_HELPFUL.to_owned());
            continue;
        }
        let Some((node, usage)) = cache.node(name) else {
            continue;
        };
        let usage = nominations.usage_for(name, usage, preemptor.key, priority);
        let on_node = residents.remove(name.as_str()).unwrap_or_default();
        let fit = Fit {
            spec,
            demand: preemptor.demand,
            node,
        };
        match select_victims(fit, priority, &usage, on_node, budgets) {
            Selection::Victims {
                victims,
                violations,
            } => candidates.push(Candidate {
                node: name,
                victims,
                violations,
            }),
            Selection::NoVictims => reasons.push(diagnosis::NO_VICTIMS.to_owned()),
            Selection::StillRejected(rejection) => reasons.extend(rejection.reasons),
        }
    }
    match pick(&candidates) {
        Some(at) => {
            let Candidate { node, victims, .. } = &candidates[at];
            Decision::Preempt {
                node: (*node).to_owned(),
                victims: victims
                    .iter()
                    .map(|b| Victim {
                        key: b.key.to_owned(),
                        uid: b.resident.uid.clone(),
                        generation: b.resident.generation,
                    })
                    .collect(),
            }
        }
        None => Decision::NoCandidate(reasons),
    }
}

/// Upstream's `PodEligibleToPreemptOthers`, second half: the pod's nominated node (ours, or
/// its `nominatedNodeName` as the watcher showed it) still holds lower-priority pods
/// terminating by preemption (ours or another scheduler's), unless that node can no longer
/// take the pod at all.
fn waits_for_victims(
    preemptor: Preemptor<'_>,
    cache: &Cache,
    nominations: &Nominations,
    rejections: &[(String, Rejection)],
) -> bool {
    let Some(nominated) = nominations.node_of(preemptor.key) else {
        return false;
    };
    let hopeless = rejections
        .iter()
        .any(|(node, r)| node == nominated && r.code == Code::UnschedulableAndUnresolvable);
    if hopeless {
        return false;
    }
    // Our own victims count from the moment we deleted them, before the watcher shows them
    // terminating.
    let ours = nominations.victims_of(preemptor.key);
    cache.bound().any(|b| {
        b.node == nominated
            && b.resident.priority < preemptor.priority
            && (b.resident.preempted || ours.iter().any(|v| v == b.key))
    })
}

/// A node that works if `victims` go.
#[derive(Debug)]
struct Candidate<'a> {
    node: &'a str,
    /// Most important first.
    victims: Vec<Bound<'a>>,
    /// How many of them break a disruption budget.
    violations: usize,
}

/// The pod and the node whose fit is checked.
#[derive(Debug, Clone, Copy)]
struct Fit<'a> {
    spec: &'a PodSpec,
    demand: &'a Demand,
    node: &'a Node,
}

impl Fit<'_> {
    fn fits(&self, usage: &NodeUsage) -> Result<(), Rejection> {
        filters::run(self.spec, self.demand, self.node, usage)
    }
}

/// What evicting pods could do on one node.
#[derive(Debug)]
enum Selection<'a> {
    /// These pods must go, most important first; `violations` of them break a budget.
    Victims {
        victims: Vec<Bound<'a>>,
        violations: usize,
    },
    /// No pod there has a lower priority.
    NoVictims,
    /// Even without every lower-priority pod the node rejects the pod.
    StillRejected(Rejection),
}

/// Upstream's `MoreImportantPod` order: higher priority, then the earlier start.
fn importance(bound: &Bound<'_>) -> (Reverse<i32>, Timestamp) {
    (
        Reverse(bound.resident.priority),
        bound.resident.started.unwrap_or(Timestamp::MAX),
    )
}

/// Upstream's `SelectVictimsOnNode`: remove every lower-priority pod, then reprieve the
/// most important ones while the pod still fits, those that would break a budget first.
fn select_victims<'a>(
    fit: Fit<'_>,
    priority: i32,
    usage: &NodeUsage,
    on_node: Vec<Bound<'a>>,
    budgets: &Budgets,
) -> Selection<'a> {
    let mut potential: Vec<Bound<'a>> = on_node
        .into_iter()
        .filter(|b| b.resident.priority < priority)
        .collect();
    if potential.is_empty() {
        return Selection::NoVictims;
    }
    let mut usage = usage.clone();
    for bound in &potential {
        usage.remove(bound.demand);
    }
    if let Err(rejection) = fit.fits(&usage) {
        return Selection::StillRejected(rejection);
    }
    potential.sort_by_key(importance);
    let (violating, fine) = budgets.split(potential);
    let mut victims = Vec::new();
    let mut violations = 0;
    for (breaks_budget, bound) in violating
        .into_iter()
        .map(|b| (true, b))
        .chain(fine.into_iter().map(|b| (false, b)))
    {
        usage.add(bound.demand);
        if fit.fits(&usage).is_err() {
            usage.remove(bound.demand);
            victims.push(bound);
            violations += usize::from(breaks_budget);
        }
    }
    victims.sort_by_key(importance);
    Selection::Victims {
        victims,
        violations,
    }
}

/// Upstream's `pickOneNodeForPreemption`: the fewest broken budgets, the lowest most
/// important victim, the smallest sum of priorities, the fewest victims, then the latest
/// start among the most important victims; the first in node order on a tie.
fn pick(candidates: &[Candidate<'_>]) -> Option<usize> {
    candidates
        .iter()
        .enumerate()
        .min_by_key(|(_, candidate)| {
            let victims = &candidate.victims;
            let highest = victims.first().map_or(i32::MIN, |b| b.resident.priority);
            // Offset so that negative priorities still add up to more for more pods.
            let sum: i64 = victims
                .iter()
                .map(|b| i64::from(b.resident.priority) + i64::from(i32::MAX) + 1)
                .sum();
            let earliest_top = victims
                .iter()
                .filter(|b| b.resident.priority == highest)
                .map(|b| b.resident.started.unwrap_or(Timestamp::MAX))
                .min()
                .unwrap_or(Timestamp::MAX);
            (
                candidate.violations,
                highest,
                sum,
                victims.len(),
                Reverse(earliest_top),
            )
        })
        .map(|(at, _)| at)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::{PodStatus, ResourceRequirements};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use kube::api::ObjectMeta;

    use super::*;
    use crate::scheduler::filters::tests::{node, pod as spec};

    /// A node with `foo` units of the extended resource `example.com/foo`.
    fn foo_node(name: &str, foo: &str) -> Node {
        let mut node = node(name, "8", "8Gi", "110");
        if let Some(allocatable) = node.status.as_mut().and_then(|s| s.allocatable.as_mut()) {
            allocatable.insert("example.com/foo".into(), Quantity(foo.into()));
        }
        node
    }

    fn foo_pod(name: &str, foo: &str, priority: i32, node: Option<&str>, started: i64) -> Pod {
        let mut spec = spec("0", "0");
        spec.containers[0].resources = Some(ResourceRequirements {
            requests: Some(BTreeMap::from([(
                "example.com/foo".to_owned(),
                Quantity(foo.into()),
            )])),
            ..Default::default()
        });
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                uid: Some(format!("uid-{name}")),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                priority: Some(priority),
                node_name: node.map(str::to_owned),
                ..spec
            }),
            status: Some(PodStatus {
                start_time: Some(Time(
                    Timestamp::from_second(1_700_000_000 + started).expect("time"),
                )),
                ..PodStatus::default()
            }),
        }
    }

    fn cache_with(nodes: Vec<Node>, pods: &[Pod]) -> Cache {
        let mut cache = Cache::default();
        for node in nodes {
            cache.apply_node(node);
        }
        for pod in pods {
            cache.apply_pod(&super::super::pod_key(pod), pod);
        }
        cache
    }

    /// Runs the filters for `pod` on every node, then decides.
    fn decide_for(
        pod: &Pod,
        cache: &Cache,
        nominations: &Nominations,
        budgets: &Budgets,
    ) -> Decision {
        let spec = pod.spec.as_ref().expect("spec");
        let demand = Demand::of(spec);
        let key = super::super::pod_key(pod);
        let priority = spec.priority.unwrap_or(0);
        let rejections: Vec<(String, Rejection)> = cache
            .nodes()
            .filter_map(|(node, usage)| {
                let name = node.metadata.name.clone().expect("name");
                let usage = nominations.usage_for(&name, usage, &key, priority);
                filters::run(spec, &demand, node, &usage)
                    .err()
                    .map(|r| (name, r))
            })
            .collect();
        assert_eq!(rejections.len(), cache.node_count(), "fits nowhere");
        decide(
            Preemptor {
                key: &key,
                pod,
                demand: &demand,
                priority,
            },
            View {
                cache,
                nominations,
                budgets,
            },
            &rejections,
        )
    }

    fn victim_keys(decision: &Decision) -> (String, Vec<String>) {
        match decision {
            Decision::Preempt { node, victims } => (
                node.clone(),
                victims.iter().map(|v| v.key.clone()).collect(),
            ),
            other => panic!("expected a preemption, got {other:?}"),
        }
    }

    #[test]
    fn the_node_whose_victims_matter_least_loses_only_what_must_go() {
        // As upstream's basic preemption spec: 5 units per node, two pods of 2 on each; one
        // low-priority pod on a, medium everywhere else.
        let pods = [
            foo_pod("a-low", "2", 1, Some("a"), 0),
            foo_pod("a-medium", "2", 100, Some("a"), 1),
            foo_pod("b-medium-1", "2", 100, Some("b"), 2),
            foo_pod("b-medium-2", "2", 100, Some("b"), 3),
        ];
        let cache = cache_with(vec![foo_node("a", "5"), foo_node("b", "5")], &pods);
        let high = foo_pod("high", "2", 1000, None, 9);
        let decision = decide_for(&high, &cache, &Nominations::default(), &Budgets::default());
        assert_eq!(
            victim_keys(&decision),
            ("a".into(), vec!["ns/a-low".into()]),
            "a-medium is reprieved: the pod fits beside it"
        );
        assert_eq!(
            decision.describe(2),
            "found a potential placement for pod on node a, preempting 1 victims"
        );
    }

    #[test]
    fn reprieve_keeps_the_most_important_pods_that_still_leave_room() {
        // As upstream's PreemptionExecutionPath spec: 1000 units; 200 (p1), 300 (p2),
        // 450 (p3) in use; a p4 pod asks 500: p3 stays, p2 and p1 go.
        let pods = [
            foo_pod("p1", "200", 1, Some("n"), 0),
            foo_pod("p2", "300", 2, Some("n"), 0),
            foo_pod("p3", "450", 3, Some("n"), 0),
        ];
        let cache = cache_with(vec![foo_node("n", "1000")], &pods);
        let p4 = foo_pod("p4", "500", 4, None, 0);
        assert_eq!(
            victim_keys(&decide_for(
                &p4,
                &cache,
                &Nominations::default(),
                &Budgets::default()
            )),
            ("n".into(), vec!["ns/p2".into(), "ns/p1".into()])
        );
    }

    #[test]
    fn ties_go_to_fewer_victims_then_to_the_most_recently_started() {
        let pods = [
            foo_pod("a-1", "1", 5, Some("a"), 0),
            foo_pod("a-2", "1", 5, Some("a"), 1),
            foo_pod("b-1", "2", 5, Some("b"), 2),
            foo_pod("c-1", "2", 5, Some("c"), 3),
        ];
        let cache = cache_with(
            vec![foo_node("a", "2"), foo_node("b", "2"), foo_node("c", "2")],
            &pods,
        );
        let pod = foo_pod("p", "2", 10, None, 9);
        // a needs two victims; b and c one each; c's started later.
        assert_eq!(
            victim_keys(&decide_for(
                &pod,
                &cache,
                &Nominations::default(),
                &Budgets::default()
            )),
            ("c".into(), vec!["ns/c-1".into()])
        );
    }

    fn labelled(mut pod: Pod, app: &str) -> Pod {
        pod.metadata.labels = Some(BTreeMap::from([("app".to_owned(), app.to_owned())]));
        pod
    }

    fn budget(app: &str, allowed: i32) -> Budgets {
        let pdb = serde_json::from_value(serde_json::json!({
            "metadata": { "name": app, "namespace": "ns" },
            "spec": { "selector": { "matchLabels": { "app": app } } },
            "status": {
                "disruptionsAllowed": allowed, "currentHealthy": 1, "desiredHealthy": 1,
                "expectedPods": 1,
            },
        }))
        .expect("pdb");
        let mut budgets = Budgets::default();
        budgets.on_event(kube::runtime::watcher::Event::Apply(pdb));
        budgets
    }

    #[test]
    fn victims_that_would_break_a_budget_are_spared_where_possible() {
        // On n, `guarded` (covered by a budget allowing no disruption) started later than
        // `free`, so by importance alone it would be the victim.
        let pods = [
            labelled(foo_pod("guarded", "1", 1, Some("n"), 5), "db"),
            labelled(foo_pod("free", "1", 1, Some("n"), 0), "web"),
        ];
        let cache = cache_with(vec![foo_node("n", "2")], &pods);
        let pod = foo_pod("p", "1", 10, None, 9);
        let nominations = Nominations::default();
        assert_eq!(
            victim_keys(&decide_for(&pod, &cache, &nominations, &Budgets::default())),
            ("n".into(), vec!["ns/guarded".into()])
        );
        assert_eq!(
            victim_keys(&decide_for(&pod, &cache, &nominations, &budget("db", 0))),
            ("n".into(), vec!["ns/free".into()])
        );

        // Across nodes: a's only victim breaks the budget, b's does not.
        let pods = [
            labelled(foo_pod("a-db", "1", 1, Some("a"), 0), "db"),
            labelled(foo_pod("b-web", "1", 5, Some("b"), 0), "web"),
        ];
        let cache = cache_with(vec![foo_node("a", "1"), foo_node("b", "1")], &pods);
        assert_eq!(
            victim_keys(&decide_for(&pod, &cache, &nominations, &budget("db", 0))),
            ("b".into(), vec!["ns/b-web".into()]),
            "a breaks a budget, although its victim matters less"
        );
        assert_eq!(
            victim_keys(&decide_for(&pod, &cache, &nominations, &budget("db", 1))),
            ("a".into(), vec!["ns/a-db".into()]),
            "a disruption the budget allows"
        );
    }

    #[test]
    fn equal_or_higher_priority_pods_are_never_victims() {
        let pods = [foo_pod("peer", "2", 10, Some("a"), 0)];
        let cache = cache_with(vec![foo_node("a", "2")], &pods);
        let decision = decide_for(
            &foo_pod("p", "2", 10, None, 1),
            &cache,
            &Nominations::default(),
            &Budgets::default(),
        );
        assert_eq!(
            decision,
            Decision::NoCandidate(vec![diagnosis::NO_VICTIMS.into()])
        );
        assert_eq!(
            decision.describe(1),
            "0/1 nodes are available: 1 No preemption victims found for incoming pod."
        );
    }

    #[test]
    fn a_node_that_cannot_take_the_pod_even_when_emptied_is_no_candidate() {
        // a: without `low` the pod still does not fit beside `peer` (higher priority); b is
        // smaller than the pod's request altogether (not helpful).
        let pods = [
            foo_pod("low", "1", 1, Some("a"), 0),
            foo_pod("peer", "2", 50, Some("a"), 0),
        ];
        let cache = cache_with(vec![foo_node("a", "3"), foo_node("b", "1")], &pods);
        let decision = decide_for(
            &foo_pod("p", "3", 10, None, 1),
            &cache,
            &Nominations::default(),
            &Budgets::default(),
        );
        assert_eq!(
            decision,
            Decision::NoCandidate(vec![
                "Insufficient example.com/foo".into(),
                diagnosis::NOT_HELPFUL.into()
            ])
        );
    }

    #[test]
    fn preemption_policy_never_and_terminating_victims_hold_the_pod_back() {
        let pods = [foo_pod("low", "2", 1, Some("a"), 0)];
        let cache = cache_with(vec![foo_node("a", "2")], &pods);
        let mut never = foo_pod("never", "2", 10, None, 1);
        if let Some(spec) = never.spec.as_mut() {
            spec.preemption_policy = Some("Never".into());
        }
        assert_eq!(
            decide_for(&never, &cache, &Nominations::default(), &Budgets::default()),
            Decision::NotEligible(NOT_ELIGIBLE_NEVER)
        );

        // Nominated after evicting `low`, which has not gone yet: no second round.
        let pod = foo_pod("p", "2", 10, None, 1);
        let mut nominations = Nominations::default();
        nominations.set(
            "ns/p",
            "a",
            10,
            Demand::of(pod.spec.as_ref().expect("spec")),
            vec!["ns/low".into()],
        );
        assert_eq!(
            decide_for(&pod, &cache, &nominations, &Budgets::default()),
            Decision::NotEligible(NOT_ELIGIBLE_TERMINATING)
        );
    }

    #[test]
    fn a_nominated_pod_of_higher_priority_keeps_its_room_from_lower_ones() {
        // `high` was nominated to a (its victim already gone); a p5 pod must not evict the
        // p1 pod for room `high` is promised.
        let pods = [foo_pod("p1", "1", 1, Some("a"), 0)];
        let cache = cache_with(vec![foo_node("a", "3")], &pods);
        let mut nominations = Nominations::default();
        nominations.set(
            "ns/high",
            "a",
            100,
            Demand::of(
                foo_pod("high", "2", 100, None, 0)
                    .spec
                    .as_ref()
                    .expect("spec"),
            ),
            Vec::new(),
        );
        let decision = decide_for(
            &foo_pod("p5", "2", 5, None, 1),
            &cache,
            &nominations,
            &Budgets::default(),
        );
        assert_eq!(
            decision,
            Decision::NoCandidate(vec!["Insufficient example.com/foo".into()])
        );
    }
}
