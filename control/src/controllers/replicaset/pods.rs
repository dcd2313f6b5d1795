//! Pods as the ReplicaSet controller sees them: active or terminating, ready, available
//! after `minReadySeconds`; the pod its template makes; and which surplus pods go first.
//!
//! Invariants: a pod is active until it is terminal (Succeeded, Failed) or being deleted, and
//! terminating while being deleted but not yet terminal; availability is readiness held for
//! longer than minReadySeconds, timed from the Ready condition's lastTransitionTime. Upstream:
//! `pkg/controller/controller_utils.go` (`IsPodActive`, `IsPodTerminating`,
//! `GetPodFromTemplate`, `ActivePodsWithRanks`), `pkg/api/v1/pod/util.go` (`IsPodAvailable`)
//! and `pkg/controller/replicaset/replica_set.go` (`getPodsToDelete`).

use std::cmp::Reverse;
use std::collections::HashMap;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Pod, PodCondition};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::ObjectMeta;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

/// The annotation that makes a pod cheaper (lower) or dearer to delete than its siblings.
pub const DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";
/// The longest object name the API server accepts (a DNS subdomain).
const MAX_NAME: usize = 253;

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default()
}

fn terminal(pod: &Pod) -> bool {
    matches!(phase(pod), "Succeeded" | "Failed")
}

/// Upstream's `IsPodActive`: neither finished nor being deleted.
pub fn is_active(pod: &Pod) -> bool {
    !terminal(pod) && pod.metadata.deletion_timestamp.is_none()
}

/// Upstream's `IsPodTerminating`: being deleted, not yet finished.
pub fn is_terminating(pod: &Pod) -> bool {
    !terminal(pod) && pod.metadata.deletion_timestamp.is_some()
}

fn ready_condition(pod: &Pod) -> Option<&PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

pub fn is_ready(pod: &Pod) -> bool {
    ready_condition(pod).is_some_and(|c| c.status == "True")
}

/// Since when a ready pod has been ready; None if it is not ready or does not say.
fn ready_since(pod: &Pod) -> Option<Timestamp> {
    ready_condition(pod)
        .filter(|c| c.status == "True")
        .and_then(|c| c.last_transition_time.as_ref())
        .map(|t| t.0)
}

/// When a ready pod counts as available: at once without minReadySeconds, else once it has
/// been ready for longer than that. None for a pod not ready, or ready since an unknown time
/// while minReadySeconds is set (it never becomes available then, as upstream).
pub fn available_after(pod: &Pod, min_ready_seconds: i32) -> Option<Timestamp> {
    if !is_ready(pod) {
        return None;
    }
    if min_ready_seconds <= 0 {
        return Some(Timestamp::MIN);
    }
    ready_since(pod)?
        .checked_add(SignedDuration::from_secs(i64::from(min_ready_seconds)))
        .ok()
}

/// Upstream's `IsPodAvailable`: ready for strictly longer than minReadySeconds.
pub fn is_available(pod: &Pod, min_ready_seconds: i32, now: Timestamp) -> bool {
    available_after(pod, min_ready_seconds).is_some_and(|at| at == Timestamp::MIN || at < now)
}

/// The pod `rs` creates: its template's labels, annotations, finalizers and spec, named
/// `<rs>-<random>` by the API server, controlled by `owner` (a reference to `rs`, or to the
/// ReplicationController it stands for). None for a ReplicaSet without a template.
pub fn from_template(rs: &ReplicaSet, owner: OwnerReference) -> Option<Pod> {
    let template = rs.spec.template.as_ref()?;
    let meta = template.metadata.clone().unwrap_or_default();
    let name = rs.metadata.name.as_deref().unwrap_or_default();
    // Upstream's getPodsPrefix: `<name>-`, or the bare name when the dash would make it too
    // long to be valid.
    let prefix = if name.len() < MAX_NAME {
        format!("{name}-")
    } else {
        name.to_owned()
    };
    Some(Pod {
        metadata: ObjectMeta {
            generate_name: Some(prefix),
            namespace: rs.metadata.namespace.clone(),
            labels: meta.labels,
            annotations: meta.annotations,
            finalizers: meta.finalizers,
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: template.spec.clone(),
        ..Pod::default()
    })
}

/// Upstream's `podPhaseToOrdinal`: Pending (and a pod without a phase) before Unknown before
/// Running.
fn phase_ordinal(pod: &Pod) -> u8 {
    match phase(pod) {
        "Unknown" => 1,
        "Running" => 2,
        _ => 0,
    }
}

fn deletion_cost(pod: &Pod) -> i32 {
    // The API server refuses unparsable values; upstream reads any that slip through as 0.
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DELETION_COST))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn max_restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .map(|c| c.restart_count)
        .max()
        .unwrap_or(0)
}

/// Upstream's logarithmic time rank (`LogarithmicScaleDown`): log2 of the nanoseconds since
/// `t`, so that pods of about the same age rank alike; an unknown time ranks first, a time in
/// the future next.
fn age_rank(t: Option<Timestamp>, now: Timestamp) -> i64 {
    let Some(t) = t else {
        return i64::MIN;
    };
    let nanos = now.duration_since(t).as_nanos();
    if nanos <= 0 {
        return -1;
    }
    // The floor of log2 of a positive integer: its highest set bit.
    i64::from(127 - nanos.leading_zeros())
}

/// The order in which surplus pods are deleted, as a sort key (smallest first): unassigned
/// before assigned; Pending before Unknown before Running; not ready before ready; lower
/// pod-deletion-cost first; more active related pods on the same node first; ready for less
/// time first; more container restarts first; newer first; then by uid.
///
/// Upstream sorts with a comparator that breaks ties within one logarithmic time bucket by
/// uid at once; that comparator is not transitive (pods ready at the very same second fall
/// through to later rules), which Rust's sort may reject, so this is the nearest total order:
/// it differs only among pods whose ready times share a bucket, where upstream's order is
/// pseudorandom by design.
type DeletionKey = (
    bool,
    u8,
    bool,
    i32,
    Reverse<usize>,
    i64,
    Reverse<i32>,
    i64,
    String,
);

fn deletion_key(pod: &Pod, rank: usize, now: Timestamp) -> DeletionKey {
    let assigned = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty());
    let ready = is_ready(pod);
    let ready_rank = if ready {
        age_rank(ready_since(pod), now)
    } else {
        i64::MIN
    };
    let created = pod.metadata.creation_timestamp.as_ref().map(|t| t.0);
    (
        assigned,
        phase_ordinal(pod),
        ready,
        deletion_cost(pod),
        Reverse(rank),
        ready_rank,
        Reverse(max_restarts(pod)),
        age_rank(created, now),
        pod.metadata.uid.clone().unwrap_or_default(),
    )
}

fn node(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or_default()
}

/// Upstream's `getPodsToDelete`: the `count` of `pods` to delete first. A pod's rank is how
/// many active `related` pods (those of every ReplicaSet with the same controller, so that a
/// Deployment's rollout spreads its pods) share its node.
pub fn to_delete<'a>(
    pods: &[&'a Pod],
    related: &[&Pod],
    count: usize,
    now: Timestamp,
) -> Vec<&'a Pod> {
    if count >= pods.len() {
        return pods.to_vec();
    }
    let mut on_node: HashMap<&str, usize> = HashMap::new();
    for pod in related.iter().filter(|p| is_active(p)) {
        *on_node.entry(node(pod)).or_default() += 1;
    }
    let mut ranked: Vec<(DeletionKey, &'a Pod)> = pods
        .iter()
        .map(|pod| {
            let rank = on_node.get(node(pod)).copied().unwrap_or(0);
            (deletion_key(pod, rank, now), *pod)
        })
        .collect();
    ranked.sort_by(|a, b| a.0.cmp(&b.0));
    ranked.into_iter().take(count).map(|(_, pod)| pod).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::apps::v1::ReplicaSetSpec;
    use k8s_openapi::api::core::v1::{ContainerStatus, PodSpec, PodStatus, PodTemplateSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;

    pub const NOW: i64 = 1_000_000;

    pub fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).expect("in range")
    }

    /// A pod named `name` (uid `uid-<name>`), created at `created`, on `node` (none if
    /// empty), in `phase`, ready since `ready` if given.
    pub fn pod(name: &str, node: &str, phase: &str, ready: Option<i64>, created: i64) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("shop".into()),
                uid: Some(format!("uid-{name}")),
                labels: Some(BTreeMap::from([("app".to_owned(), "web".to_owned())])),
                creation_timestamp: Some(Time(at(created))),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                node_name: (!node.is_empty()).then(|| node.to_owned()),
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready.is_some() { "True" } else { "False" }.into(),
                    last_transition_time: ready.map(|s| Time(at(s))),
                    ..PodCondition::default()
                }]),
                ..PodStatus::default()
            }),
        }
    }

    fn restarted(mut pod: Pod, count: i32) -> Pod {
        if let Some(status) = pod.status.as_mut() {
            status.container_statuses = Some(vec![ContainerStatus {
                name: "main".into(),
                restart_count: count,
                ..ContainerStatus::default()
            }]);
        }
        pod
    }

    fn costing(mut pod: Pod, cost: &str) -> Pod {
        pod.metadata.annotations = Some(BTreeMap::from([(
            DELETION_COST.to_owned(),
            cost.to_owned(),
        )]));
        pod
    }

    fn deleting(mut pod: Pod) -> Pod {
        pod.metadata.deletion_timestamp = Some(Time(at(NOW)));
        pod
    }

    #[test]
    fn activity_readiness_and_availability() {
        let now = at(NOW);
        let running = pod("a", "n1", "Running", Some(NOW - 10), 0);
        assert!(is_active(&running) && !is_terminating(&running));
        assert!(
            !is_active(&deleting(running.clone())) && is_terminating(&deleting(running.clone()))
        );
        let done = pod("b", "n1", "Succeeded", None, 0);
        assert!(!is_active(&done) && !is_terminating(&deleting(done)));

        // (min ready seconds, available): ready for 10 s, strictly longer is needed.
        for (min_ready, want) in [(0, true), (5, true), (9, true), (10, false), (30, false)] {
            assert_eq!(
                is_available(&running, min_ready, now),
                want,
                "minReadySeconds {min_ready}"
            );
        }
        assert_eq!(available_after(&running, 30), Some(at(NOW + 20)));
        let not_ready = pod("c", "n1", "Running", None, 0);
        assert!(!is_available(&not_ready, 0, now));
        assert_eq!(available_after(&not_ready, 0), None);
    }

    #[test]
    fn the_template_makes_a_controlled_pod_named_after_the_replicaset() {
        let mut labels = BTreeMap::new();
        labels.insert("app".to_owned(), "web".to_owned());
        let rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some("web-5d4b8c9f7".into()),
                namespace: Some("shop".into()),
                uid: Some("uid-rs".into()),
                ..ObjectMeta::default()
            },
            spec: ReplicaSetSpec {
                template: Some(PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(labels.clone()),
                        finalizers: Some(vec!["example.com/keep".into()]),
                        ..ObjectMeta::default()
                    }),
                    spec: Some(PodSpec::default()),
                }),
                ..ReplicaSetSpec::default()
            },
            status: None,
        };
        let reference = crate::controllers::owner::controller_ref(&rs).expect("a uid");
        let made = from_template(&rs, reference).expect("a template");
        assert_eq!(
            made.metadata.generate_name.as_deref(),
            Some("web-5d4b8c9f7-")
        );
        assert_eq!(made.metadata.labels, Some(labels));
        assert_eq!(
            made.metadata.finalizers,
            Some(vec!["example.com/keep".to_owned()])
        );
        let owner = made.metadata.owner_references.expect("controlled")[0].clone();
        assert_eq!(
            (
                owner.kind.as_str(),
                owner.uid.as_str(),
                owner.controller,
                owner.block_owner_deletion
            ),
            ("ReplicaSet", "uid-rs", Some(true), Some(true))
        );
        assert_eq!(made.spec, Some(PodSpec::default()));
    }

    #[test]
    fn surplus_pods_go_in_upstreams_order() {
        let now = at(NOW);
        // Each row must be deleted before every row below it.
        let ordered = vec![
            pod("unassigned", "", "Pending", None, NOW - 100),
            pod("pending", "n1", "Pending", None, NOW - 100),
            pod("unknown", "n1", "Unknown", None, NOW - 100),
            pod("not-ready", "n1", "Running", None, NOW - 100),
            costing(
                pod("cheap", "n1", "Running", Some(NOW - 50), NOW - 100),
                "-10",
            ),
            // n2 holds three related pods: doubled-up pods go first.
            pod("crowded", "n2", "Running", Some(NOW - 50), NOW - 100),
            // Alone on their nodes: ready for a second before ready for an hour, then more
            // restarts, then newer.
            pod("just-ready", "n3", "Running", Some(NOW - 1), NOW - 100_000),
            restarted(
                pod("restarts", "n4", "Running", Some(NOW - 3600), NOW - 100_000),
                5,
            ),
            pod("newer", "n5", "Running", Some(NOW - 3600), NOW - 100),
            pod("older", "n6", "Running", Some(NOW - 3600), NOW - 100_000),
        ];
        let related = [
            pod("r1", "n2", "Running", None, 0),
            pod("r2", "n2", "Running", None, 0),
            deleting(pod("r3", "n1", "Running", None, 0)),
        ];
        let mut related_refs: Vec<&Pod> = related.iter().collect();
        related_refs.extend(ordered.iter());
        let names = |pods: Vec<&Pod>| -> Vec<String> {
            pods.iter()
                .map(|p| p.metadata.name.clone().unwrap_or_default())
                .collect()
        };
        let want = names(ordered.iter().collect());
        // Whatever the input order, the same pods come first.
        let mut shuffled: Vec<&Pod> = ordered.iter().rev().collect();
        shuffled.rotate_left(3);
        for count in 1..ordered.len() {
            assert_eq!(
                names(to_delete(&shuffled, &related_refs, count, now)),
                want[..count],
                "{count} to delete"
            );
        }
        assert_eq!(
            to_delete(&shuffled, &related_refs, 20, now).len(),
            ordered.len()
        );
    }

    #[test]
    fn pods_of_about_the_same_age_rank_alike() {
        let now = at(NOW);
        assert_eq!(
            age_rank(Some(at(NOW - 100)), now),
            age_rank(Some(at(NOW - 110)), now)
        );
        assert!(age_rank(Some(at(NOW - 100)), now) < age_rank(Some(at(NOW - 300)), now));
        assert_eq!(age_rank(Some(at(NOW + 5)), now), -1);
        assert_eq!(age_rank(None, now), i64::MIN);
    }
}
