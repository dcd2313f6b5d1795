//! Deployment status: the counts summed from its ReplicaSets and the Available, Progressing
//! and ReplicaFailure conditions, as pure functions of the Deployment, its ReplicaSets and
//! the time.
//!
//! Invariants, as upstream (`kubectl rollout status` reads observedGeneration,
//! updatedReplicas, replicas, availableReplicas and the Progressing reason, so these are
//! exact): a condition is replaced only when its status or reason changes, keeping its
//! lastTransitionTime while the status stays; Progressing is refreshed (lastUpdateTime) on
//! every sign of progress and turns ProgressDeadlineExceeded when none came within
//! progressDeadlineSeconds; once NewReplicaSetAvailable it is left alone until a new rollout;
//! pausing and resuming set it Unknown so that a pause never counts against the deadline.
//! Upstream: `pkg/controller/deployment/sync.go` (`calculateStatus`), `progress.go`
//! (`syncRolloutStatus`, `requeueStuckDeployment`) and `util/deployment_util.go`
//! (`SetDeploymentCondition`, `DeploymentComplete`, `DeploymentProgressing`,
//! `DeploymentTimedOut`).

use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::arithmetic::{actual, available, max_unavailable, ready, replicas, size};

pub const AVAILABLE: &str = "Available";
pub const PROGRESSING: &str = "Progressing";
pub const REPLICA_FAILURE: &str = "ReplicaFailure";

pub const REPLICA_SET_UPDATED: &str = "ReplicaSetUpdated";
pub const FAILED_RS_CREATE: &str = "ReplicaSetCreateError";
pub const NEW_RS_CREATED: &str = "NewReplicaSetCreated";
pub const FOUND_NEW_RS: &str = "FoundNewReplicaSet";
pub const NEW_RS_AVAILABLE: &str = "NewReplicaSetAvailable";
pub const TIMED_OUT: &str = "ProgressDeadlineExceeded";
pub const PAUSED: &str = "DeploymentPaused";
pub const RESUMED: &str = "DeploymentResumed";
pub const MIN_AVAILABLE: &str = "MinimumReplicasAvailable";
pub const MIN_UNAVAILABLE: &str = "MinimumReplicasUnavailable";

/// API times have whole seconds; conditions made here do too, so that they compare equal to
/// what the API server gives back.
fn second(now: Timestamp) -> Time {
    Time(Timestamp::from_second(now.as_second()).unwrap_or(now))
}

/// Upstream's `NewDeploymentCondition`: both times now.
pub fn condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    now: Timestamp,
) -> DeploymentCondition {
    DeploymentCondition {
        type_: Some(type_.into()),
        status: Some(status.into()),
        reason: Some(reason.into()),
        message: Some(message),
        last_update_time: Some(second(now)),
        last_transition_time: Some(second(now)),
    }
}

pub fn get<'a>(status: &'a DeploymentStatus, type_: &str) -> Option<&'a DeploymentCondition> {
    status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_.as_deref() == Some(type_))
}

/// Upstream's `SetDeploymentCondition`: nothing if one of the same status and reason is
/// there; else it replaces its type's (moved last), keeping lastTransitionTime if the status
/// is the same.
pub fn set(status: &mut DeploymentStatus, mut new: DeploymentCondition) {
    let type_ = new.type_.clone().unwrap_or_default();
    if let Some(current) = get(status, &type_) {
        if current.status == new.status && current.reason == new.reason {
            return;
        }
        if current.status == new.status {
            new.last_transition_time = current.last_transition_time.clone();
        }
    }
    remove(status, &type_);
    status.conditions.get_or_insert_with(Vec::new).push(new);
}

pub fn remove(status: &mut DeploymentStatus, type_: &str) {
    if let Some(conditions) = status.conditions.as_mut() {
        conditions.retain(|c| c.type_.as_deref() != Some(type_));
    }
}

/// Upstream's `HasProgressDeadline`: set and not the "never" value.
pub fn has_progress_deadline(d: &Deployment) -> bool {
    d.spec
        .progress_deadline_seconds
        .is_some_and(|s| s != i32::MAX)
}

fn current(d: &Deployment) -> DeploymentStatus {
    d.status.clone().unwrap_or_default()
}

fn n(v: Option<i32>) -> i32 {
    v.unwrap_or(0)
}

/// Upstream's `calculateStatus`: the counts of `all` (the new one among them) and the
/// Available condition; other conditions as they are.
pub fn calculate(
    d: &Deployment,
    all: &[&ReplicaSet],
    new: Option<&ReplicaSet>,
    now: Timestamp,
) -> DeploymentStatus {
    let sum = |f: fn(&ReplicaSet) -> i32| all.iter().map(|rs| f(rs)).sum::<i32>();
    let available_count = sum(available);
    let unavailable = (sum(size) - available_count).max(0);
    // Upstream's GetTerminatingReplicaCountForReplicaSets: unknown if any ReplicaSet does not
    // report it.
    let terminating = all
        .iter()
        .map(|rs| rs.status.as_ref().and_then(|s| s.terminating_replicas))
        .sum::<Option<i32>>();
    let mut status = DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: Some(sum(actual)),
        updated_replicas: Some(new.map_or(0, actual)),
        ready_replicas: Some(sum(ready)),
        available_replicas: Some(available_count),
        unavailable_replicas: Some(unavailable),
        terminating_replicas: terminating,
        collision_count: d.status.as_ref().and_then(|s| s.collision_count),
        conditions: d.status.as_ref().and_then(|s| s.conditions.clone()),
    };
    let minimum = if available_count >= replicas(d) - max_unavailable(d) {
        condition(
            AVAILABLE,
            "True",
            MIN_AVAILABLE,
            "Deployment has minimum availability.".into(),
            now,
        )
    } else {
        condition(
            AVAILABLE,
            "False",
            MIN_UNAVAILABLE,
            "Deployment does not have minimum availability.".into(),
            now,
        )
    };
    set(&mut status, minimum);
    status
}

/// Upstream's `DeploymentComplete`: every pod updated and available, no old ones, the latest
/// spec observed.
pub fn complete(d: &Deployment, status: &DeploymentStatus) -> bool {
    let want = replicas(d);
    n(status.updated_replicas) == want
        && n(status.replicas) == want
        && n(status.available_replicas) == want
        && status.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0)
}

/// Upstream's `DeploymentProgressing`: more updated, ready or available pods, or fewer old
/// ones, than the Deployment reports now.
fn progressing(d: &Deployment, new: &DeploymentStatus) -> bool {
    let old = current(d);
    let old_old = n(old.replicas) - n(old.updated_replicas);
    let new_old = n(new.replicas) - n(new.updated_replicas);
    n(new.updated_replicas) > n(old.updated_replicas)
        || new_old < old_old
        || n(new.ready_replicas) > n(old.ready_replicas)
        || n(new.available_replicas) > n(old.available_replicas)
}

fn deadline(d: &Deployment) -> SignedDuration {
    SignedDuration::from_secs(i64::from(d.spec.progress_deadline_seconds.unwrap_or(0)))
}

/// Upstream's `DeploymentTimedOut`: no progress recorded within the deadline since the
/// Progressing condition was last updated.
fn timed_out(d: &Deployment, new: &DeploymentStatus, now: Timestamp) -> bool {
    if !has_progress_deadline(d) {
        return false;
    }
    let Some(progressing) = get(new, PROGRESSING) else {
        return false;
    };
    match progressing.reason.as_deref() {
        Some(NEW_RS_AVAILABLE) => false,
        Some(TIMED_OUT) => true,
        _ => progressing
            .last_update_time
            .as_ref()
            .is_some_and(|t| t.0.checked_add(deadline(d)).is_ok_and(|end| end < now)),
    }
}

fn replicaset_name(new: Option<&ReplicaSet>) -> Option<&str> {
    new.and_then(|rs| rs.metadata.name.as_deref())
}

/// Upstream's progress messages: about the new ReplicaSet if there is one.
fn progress_message(d: &Deployment, new: Option<&ReplicaSet>, what: &str) -> String {
    match replicaset_name(new) {
        Some(name) => format!("ReplicaSet \"{name}\" {what}."),
        None => format!(
            "Deployment \"{}\" {what}.",
            d.metadata.name.as_deref().unwrap_or_default()
        ),
    }
}

/// Upstream's `syncRolloutStatus` without the write: the status after a rollout step.
pub fn rollout(
    d: &Deployment,
    all: &[&ReplicaSet],
    new: Option<&ReplicaSet>,
    now: Timestamp,
) -> DeploymentStatus {
    let mut status = calculate(d, all, new, now);
    if !has_progress_deadline(d) {
        remove(&mut status, PROGRESSING);
    }
    let old = current(d);
    let current_progress = get(&old, PROGRESSING);
    // A finished rollout that is only resynced: nothing to estimate.
    let finished = n(status.replicas) == n(status.updated_replicas)
        && current_progress.is_some_and(|c| c.reason.as_deref() == Some(NEW_RS_AVAILABLE));
    if has_progress_deadline(d) && !finished {
        if complete(d, &status) {
            let message = progress_message(d, new, "has successfully progressed");
            set(
                &mut status,
                condition(PROGRESSING, "True", NEW_RS_AVAILABLE, message, now),
            );
        } else if progressing(d, &status) {
            let message = progress_message(d, new, "is progressing");
            let mut update = condition(PROGRESSING, "True", REPLICA_SET_UPDATED, message, now);
            // Unlike other conditions, this one is refreshed with the same reason: its
            // lastUpdateTime is when progress was last seen.
            if let Some(current) = current_progress {
                if current.status.as_deref() == Some("True") {
                    update.last_transition_time = current.last_transition_time.clone();
                }
                remove(&mut status, PROGRESSING);
            }
            set(&mut status, update);
        } else if timed_out(d, &status, now) {
            let message = progress_message(d, new, "has timed out progressing");
            set(
                &mut status,
                condition(PROGRESSING, "False", TIMED_OUT, message, now),
            );
        }
    }
    match replica_failure(all, new) {
        Some(failure) => set(&mut status, failure),
        None => remove(&mut status, REPLICA_FAILURE),
    }
    status
}

/// Upstream's `getReplicaFailures`: the new ReplicaSet's ReplicaFailure condition, else any
/// old one's, as a Deployment condition.
fn replica_failure(all: &[&ReplicaSet], new: Option<&ReplicaSet>) -> Option<DeploymentCondition> {
    let failure = |rs: &ReplicaSet| {
        rs.status
            .as_ref()?
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_.as_deref() == Some(REPLICA_FAILURE))
            .map(|c| DeploymentCondition {
                type_: c.type_.clone(),
                status: c.status.clone(),
                reason: c.reason.clone(),
                message: c.message.clone(),
                last_transition_time: c.last_transition_time.clone(),
                last_update_time: c.last_transition_time.clone(),
            })
    };
    new.and_then(failure)
        .or_else(|| all.iter().find_map(|rs| failure(rs)))
}

/// Upstream's `requeueStuckDeployment`: when to look again for the deadline to pass, for a
/// rollout that is neither complete nor timed out yet.
pub fn requeue_after(
    d: &Deployment,
    status: &DeploymentStatus,
    now: Timestamp,
) -> Option<Duration> {
    let progressing = get(status, PROGRESSING)?;
    if !has_progress_deadline(d)
        || complete(d, status)
        || progressing.reason.as_deref() == Some(TIMED_OUT)
    {
        return None;
    }
    let since = progressing.last_update_time.as_ref()?.0;
    let left = since.checked_add(deadline(d)).ok()?.duration_since(now);
    // Upstream looks again a second after the deadline (at once, rate-limited, if it is
    // less than a second away).
    let left = Duration::try_from(left).unwrap_or(Duration::ZERO);
    Some(left.max(Duration::from_secs(1)) + Duration::from_secs(1))
}

/// Upstream's `checkPausedConditions`: the status to write when the Deployment was paused or
/// resumed since its Progressing condition was set (never over a timeout).
pub fn paused(d: &Deployment, now: Timestamp) -> Option<DeploymentStatus> {
    if !has_progress_deadline(d) {
        return None;
    }
    let mut status = current(d);
    let reason = get(&status, PROGRESSING).and_then(|c| c.reason.clone());
    if reason.as_deref() == Some(TIMED_OUT) {
        return None;
    }
    let shown = reason.as_deref() == Some(PAUSED);
    let update = match (d.spec.paused == Some(true), shown) {
        (true, false) => condition(
            PROGRESSING,
            "Unknown",
            PAUSED,
            "Deployment is paused".into(),
            now,
        ),
        (false, true) => condition(
            PROGRESSING,
            "Unknown",
            RESUMED,
            "Deployment is resumed".into(),
            now,
        ),
        _ => return None,
    };
    set(&mut status, update);
    Some(status)
}

/// Whether the Deployment already reports `new`: the API server drops zero counts and empty
/// lists, so those compare equal to absent ones.
pub fn same(d: &Deployment, new: &DeploymentStatus) -> bool {
    let old = current(d);
    n(old.replicas) == n(new.replicas)
        && n(old.updated_replicas) == n(new.updated_replicas)
        && n(old.ready_replicas) == n(new.ready_replicas)
        && n(old.available_replicas) == n(new.available_replicas)
        && n(old.unavailable_replicas) == n(new.unavailable_replicas)
        && old.terminating_replicas == new.terminating_replicas
        && old.observed_generation.unwrap_or(0) == new.observed_generation.unwrap_or(0)
        && old.collision_count == new.collision_count
        && old.conditions.unwrap_or_default() == new.conditions.clone().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::ReplicaSetCondition;

    use super::super::fixtures::{NOW, at, deployment, rs};
    use super::*;

    fn reason(status: &DeploymentStatus, type_: &str) -> Option<String> {
        get(status, type_).and_then(|c| c.reason.clone())
    }

    /// A Deployment of 3 (surge 1, unavailable 0) whose status is `status`.
    fn reporting(status: DeploymentStatus) -> Deployment {
        let mut d = deployment(3, "1", "0");
        d.status = Some(status);
        d
    }

    #[test]
    fn counts_come_from_the_replicasets_and_availability_from_max_unavailable() {
        let d = deployment(4, "1", "1");
        let new = rs("new", 2, 1, 10);
        let old = rs("old", 3, 3, 1);
        let status = calculate(&d, &[&old, &new], Some(&new), at(NOW));
        assert_eq!(
            (
                status.replicas,
                status.updated_replicas,
                status.ready_replicas,
                status.available_replicas,
                status.unavailable_replicas,
                status.observed_generation,
            ),
            (Some(5), Some(2), Some(4), Some(4), Some(1), Some(1))
        );
        assert_eq!(reason(&status, AVAILABLE).as_deref(), Some(MIN_AVAILABLE));
        let short = calculate(&d, &[&rs("old", 4, 2, 1)], None, at(NOW));
        assert_eq!(reason(&short, AVAILABLE).as_deref(), Some(MIN_UNAVAILABLE));
        assert_eq!(
            get(&short, AVAILABLE)
                .and_then(|c| c.message.clone())
                .as_deref(),
            Some("Deployment does not have minimum availability.")
        );
        assert_eq!(
            short.terminating_replicas, None,
            "the fixtures do not report it"
        );
    }

    #[test]
    fn conditions_change_only_with_their_status_or_reason() {
        let mut status = DeploymentStatus::default();
        set(
            &mut status,
            condition(AVAILABLE, "False", MIN_UNAVAILABLE, "a".into(), at(10)),
        );
        set(
            &mut status,
            condition(AVAILABLE, "False", MIN_UNAVAILABLE, "b".into(), at(20)),
        );
        assert_eq!(
            get(&status, AVAILABLE)
                .and_then(|c| c.message.clone())
                .as_deref(),
            Some("a")
        );
        set(
            &mut status,
            condition(PROGRESSING, "True", NEW_RS_CREATED, "c".into(), at(30)),
        );
        set(
            &mut status,
            condition(AVAILABLE, "False", "Other", "d".into(), at(40)),
        );
        let available = get(&status, AVAILABLE).cloned().expect("set");
        assert_eq!(
            available.last_transition_time,
            Some(Time(at(10))),
            "same status: transition kept"
        );
        assert_eq!(available.last_update_time, Some(Time(at(40))));
        set(
            &mut status,
            condition(AVAILABLE, "True", MIN_AVAILABLE, "e".into(), at(50)),
        );
        assert_eq!(
            get(&status, AVAILABLE).and_then(|c| c.last_transition_time.clone()),
            Some(Time(at(50)))
        );
        let order: Vec<_> = status
            .conditions
            .iter()
            .flatten()
            .filter_map(|c| c.type_.clone())
            .collect();
        assert_eq!(
            order,
            vec![PROGRESSING.to_owned(), AVAILABLE.to_owned()],
            "replaced ones move last"
        );
    }

    #[test]
    fn a_rollout_progresses_completes_and_times_out_as_upstream() {
        let new = rs("web-5d4b8c9f7", 3, 3, 10);
        let started = condition(
            PROGRESSING,
            "True",
            NEW_RS_CREATED,
            "Created new replica set \"web-5d4b8c9f7\"".into(),
            at(NOW - 100),
        );

        // Progress since the last look: ReplicaSetUpdated, transition time kept.
        let half = rs("web-5d4b8c9f7", 2, 1, 10);
        let old = rs("web-old", 2, 2, 1);
        let d = reporting(DeploymentStatus {
            conditions: Some(vec![started.clone()]),
            ..DeploymentStatus::default()
        });
        let status = rollout(&d, &[&old, &half], Some(&half), at(NOW));
        let progress = get(&status, PROGRESSING).cloned().expect("set");
        assert_eq!(progress.reason.as_deref(), Some(REPLICA_SET_UPDATED));
        assert_eq!(
            progress.message.as_deref(),
            Some("ReplicaSet \"web-5d4b8c9f7\" is progressing.")
        );
        assert_eq!(progress.last_transition_time, Some(Time(at(NOW - 100))));
        assert_eq!(progress.last_update_time, Some(Time(at(NOW))));
        assert_eq!(
            requeue_after(&d, &status, at(NOW)),
            Some(Duration::from_secs(601))
        );

        // Everything updated and available: NewReplicaSetAvailable, and no more requeues.
        let status = rollout(&d, &[&new], Some(&new), at(NOW));
        assert_eq!(
            reason(&status, PROGRESSING).as_deref(),
            Some(NEW_RS_AVAILABLE)
        );
        assert_eq!(
            get(&status, PROGRESSING)
                .and_then(|c| c.message.clone())
                .as_deref(),
            Some("ReplicaSet \"web-5d4b8c9f7\" has successfully progressed.")
        );
        assert_eq!(requeue_after(&d, &status, at(NOW)), None);

        // No progress past the deadline: ProgressDeadlineExceeded.
        let stuck = reporting(DeploymentStatus {
            replicas: Some(4),
            updated_replicas: Some(2),
            ready_replicas: Some(3),
            available_replicas: Some(3),
            conditions: Some(vec![started.clone()]),
            ..DeploymentStatus::default()
        });
        let status = rollout(&stuck, &[&old, &half], Some(&half), at(NOW - 100 + 601));
        assert_eq!(reason(&status, PROGRESSING).as_deref(), Some(TIMED_OUT));
        assert_eq!(
            get(&status, PROGRESSING)
                .and_then(|c| c.status.clone())
                .as_deref(),
            Some("False")
        );
        assert_eq!(
            get(&status, PROGRESSING)
                .and_then(|c| c.message.clone())
                .as_deref(),
            Some("ReplicaSet \"web-5d4b8c9f7\" has timed out progressing.")
        );
        let before = rollout(&stuck, &[&old, &half], Some(&half), at(NOW - 100 + 599));
        assert_eq!(
            reason(&before, PROGRESSING).as_deref(),
            Some(NEW_RS_CREATED)
        );
        assert_eq!(
            requeue_after(&stuck, &before, at(NOW - 100 + 599)),
            Some(Duration::from_secs(2))
        );
    }

    #[test]
    fn replica_failures_surface_and_pauses_show_in_progressing() {
        let mut failing = rs("new", 3, 0, 10);
        if let Some(s) = failing.status.as_mut() {
            s.replicas = 0;
            s.conditions = Some(vec![ReplicaSetCondition {
                type_: Some(REPLICA_FAILURE.into()),
                status: Some("True".into()),
                reason: Some("FailedCreate".into()),
                message: Some("pods \"new-\" is forbidden: exceeded quota".into()),
                last_transition_time: Some(Time(at(NOW - 5))),
            }]);
        }
        let d = reporting(DeploymentStatus::default());
        let status = rollout(&d, &[&failing], Some(&failing), at(NOW));
        let failure = get(&status, REPLICA_FAILURE).cloned().expect("surfaced");
        assert_eq!(failure.reason.as_deref(), Some("FailedCreate"));
        assert_eq!(failure.last_update_time, Some(Time(at(NOW - 5))));
        let fixed = rollout(&reporting(status), &[&rs("new", 3, 0, 10)], None, at(NOW));
        assert!(get(&fixed, REPLICA_FAILURE).is_none());

        let mut paused_d = deployment(3, "1", "0");
        paused_d.spec.paused = Some(true);
        let status = paused(&paused_d, at(NOW)).expect("newly paused");
        assert_eq!(reason(&status, PROGRESSING).as_deref(), Some(PAUSED));
        assert_eq!(
            get(&status, PROGRESSING)
                .and_then(|c| c.status.clone())
                .as_deref(),
            Some("Unknown")
        );
        paused_d.status = Some(status.clone());
        assert_eq!(paused(&paused_d, at(NOW)), None, "already shown");
        paused_d.spec.paused = Some(false);
        let resumed = paused(&paused_d, at(NOW)).expect("resumed");
        assert_eq!(reason(&resumed, PROGRESSING).as_deref(), Some(RESUMED));
        assert!(same(&reporting(resumed.clone()), &resumed));
        assert!(!same(&reporting(DeploymentStatus::default()), &resumed));
    }
}
