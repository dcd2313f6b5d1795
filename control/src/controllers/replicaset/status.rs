//! ReplicaSet status: the counts of its pods and its ReplicaFailure condition, as a pure
//! function of the ReplicaSet, the pods it controls and how the last sync's writes went.
//!
//! Invariants: `replicas` counts active pods; `fullyLabeledReplicas` those also carrying every
//! template label; `readyReplicas` the ready ones; `availableReplicas` those ready for longer
//! than minReadySeconds; `terminatingReplicas` (upstream's `DeploymentReplicaSetTerminatingReplicas`,
//! on by default since 1.35) the pods being deleted; `observedGeneration` the generation synced.
//! ReplicaFailure is set when creating or deleting pods failed and it is not set yet (its first
//! message stays), and removed after a sync whose writes all succeeded. Upstream:
//! `pkg/controller/replicaset/replica_set_utils.go` (`calculateStatus`,
//! `updateReplicaSetStatus`).

use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetCondition, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::pods::{available_after, is_available, is_ready};

pub const REPLICA_FAILURE: &str = "ReplicaFailure";

pub fn spec_replicas(rs: &ReplicaSet) -> i32 {
    // The API server defaults an unset count to 1.
    rs.spec.replicas.unwrap_or(1)
}

pub fn min_ready_seconds(rs: &ReplicaSet) -> i32 {
    rs.spec.min_ready_seconds.unwrap_or(0)
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// The status `rs` should report, given the active pods it controls, how many of its pods are
/// terminating, and the message of the error that stopped this sync's creates or deletes.
pub fn calculate(
    rs: &ReplicaSet,
    active: &[&Pod],
    terminating: usize,
    failure: Option<&str>,
    now: Timestamp,
) -> ReplicaSetStatus {
    let mut status = rs.status.clone().unwrap_or_default();
    let template_labels = rs
        .spec
        .template
        .as_ref()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let fully_labeled = active
        .iter()
        .filter(|pod| {
            let labels = pod.metadata.labels.as_ref();
            template_labels
                .iter()
                .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
        })
        .count();
    let ready = active.iter().filter(|p| is_ready(p)).count();
    let min_ready = min_ready_seconds(rs);
    let available = active
        .iter()
        .filter(|p| is_available(p, min_ready, now))
        .count();

    let conditions = status.conditions.get_or_insert_with(Vec::new);
    let has_failure = conditions
        .iter()
        .any(|c| c.type_.as_deref() == Some(REPLICA_FAILURE));
    match failure {
        Some(message) if !has_failure => {
            let diff = count(active.len()) - spec_replicas(rs);
            let reason = match diff.signum() {
                -1 => "FailedCreate",
                1 => "FailedDelete",
                _ => "",
            };
            conditions.push(ReplicaSetCondition {
                type_: Some(REPLICA_FAILURE.into()),
                status: Some("True".into()),
                reason: Some(reason.into()),
                message: Some(message.into()),
                last_transition_time: Some(Time(
                    Timestamp::from_second(now.as_second()).unwrap_or(now),
                )),
            });
        }
        None if has_failure => conditions.retain(|c| c.type_.as_deref() != Some(REPLICA_FAILURE)),
        _ => {}
    }
    if conditions.is_empty() {
        status.conditions = None;
    }

    status.replicas = count(active.len());
    status.fully_labeled_replicas = Some(count(fully_labeled));
    status.ready_replicas = Some(count(ready));
    status.available_replicas = Some(count(available));
    status.terminating_replicas = Some(count(terminating));
    status.observed_generation = rs.metadata.generation;
    status
}

/// Whether `rs` already reports `new` (upstream's check before `UpdateStatus`): the API server
/// drops zero counts and empty lists, so those compare equal to absent ones.
pub fn unchanged(rs: &ReplicaSet, new: &ReplicaSetStatus) -> bool {
    let old = rs.status.clone().unwrap_or_default();
    let n = |v: Option<i32>| v.unwrap_or(0);
    old.replicas == new.replicas
        && n(old.fully_labeled_replicas) == n(new.fully_labeled_replicas)
        && n(old.ready_replicas) == n(new.ready_replicas)
        && n(old.available_replicas) == n(new.available_replicas)
        && old.terminating_replicas == new.terminating_replicas
        && old.observed_generation.unwrap_or(0) == rs.metadata.generation.unwrap_or(0)
        && old.conditions.unwrap_or_default() == new.conditions.clone().unwrap_or_default()
}

/// When the next of `active`'s ready pods becomes available, if any is waiting for
/// minReadySeconds: the ReplicaSet must be looked at again then, as no pod event will say so.
pub fn next_available(rs: &ReplicaSet, active: &[&Pod], now: Timestamp) -> Option<Timestamp> {
    let min_ready = min_ready_seconds(rs);
    active
        .iter()
        .filter_map(|p| available_after(p, min_ready))
        .filter(|at| *at >= now)
        .min()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::apps::v1::ReplicaSetSpec;
    use k8s_openapi::api::core::v1::PodTemplateSpec;
    use kube::api::ObjectMeta;

    use super::super::pods::tests::{NOW, at, pod};
    use super::*;

    fn rs(replicas: i32, min_ready: i32, status: Option<ReplicaSetStatus>) -> ReplicaSet {
        ReplicaSet {
            metadata: ObjectMeta {
                name: Some("web".into()),
                generation: Some(3),
                ..ObjectMeta::default()
            },
            spec: ReplicaSetSpec {
                replicas: Some(replicas),
                min_ready_seconds: Some(min_ready),
                template: Some(PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(BTreeMap::from([
                            ("app".to_owned(), "web".to_owned()),
                            ("tier".to_owned(), "front".to_owned()),
                        ])),
                        ..ObjectMeta::default()
                    }),
                    spec: None,
                }),
                ..ReplicaSetSpec::default()
            },
            status,
        }
    }

    #[test]
    fn counts_follow_readiness_availability_and_labels() {
        let now = at(NOW);
        let mut labeled = pod("full", "n1", "Running", Some(NOW - 100), 0);
        if let Some(l) = labeled.metadata.labels.as_mut() {
            l.insert("tier".into(), "front".into());
        }
        let fresh = pod("fresh", "n1", "Running", Some(NOW - 5), 0);
        let pending = pod("pending", "", "Pending", None, 0);
        let active = [&labeled, &fresh, &pending];
        let status = calculate(&rs(3, 10, None), &active, 2, None, now);
        assert_eq!(
            (
                status.replicas,
                status.fully_labeled_replicas,
                status.ready_replicas,
                status.available_replicas,
                status.terminating_replicas,
                status.observed_generation,
                status.conditions.clone(),
            ),
            (3, Some(1), Some(2), Some(1), Some(2), Some(3), None)
        );
        assert_eq!(
            next_available(&rs(3, 10, None), &active, now),
            Some(at(NOW + 5))
        );
        assert!(!unchanged(&rs(3, 10, None), &status));
        assert!(unchanged(&rs(3, 10, Some(status.clone())), &status));
    }

    #[test]
    fn a_failed_write_sets_replica_failure_once_and_success_clears_it() {
        let now = at(NOW);
        let one = pod("a", "n1", "Running", Some(NOW - 100), 0);
        let quota = "pods \"web-\" is forbidden: exceeded quota: q";
        let failed = calculate(&rs(3, 0, None), &[&one], 0, Some(quota), now);
        let conditions = failed.conditions.clone().expect("a condition");
        assert_eq!(conditions.len(), 1);
        assert_eq!(
            (
                conditions[0].type_.as_deref(),
                conditions[0].status.as_deref(),
                conditions[0].reason.as_deref(),
                conditions[0].message.as_deref()
            ),
            (
                Some(REPLICA_FAILURE),
                Some("True"),
                Some("FailedCreate"),
                Some(quota)
            )
        );
        // A later failure keeps the first condition as it is.
        let again = calculate(
            &rs(3, 0, Some(failed.clone())),
            &[&one],
            0,
            Some("other"),
            at(NOW + 60),
        );
        assert_eq!(again.conditions, failed.conditions);
        // Too many pods and a failed delete.
        let two = pod("b", "n1", "Running", Some(NOW - 100), 0);
        let surplus = calculate(&rs(1, 0, None), &[&one, &two], 0, Some("denied"), now);
        assert_eq!(
            surplus.conditions.expect("a condition")[0]
                .reason
                .as_deref(),
            Some("FailedDelete")
        );
        let cleared = calculate(&rs(3, 0, Some(failed)), &[&one], 0, None, now);
        assert_eq!(cleared.conditions, None);
    }
}
