//! Per-index backoff (`backoffLimitPerIndex`, KEP-3850): the indexes of an Indexed Job fail
//! on their own. Each pod carries how often its index failed before it (an annotation its
//! replacement gets one more of); an index whose pod fails with that count at the limit, or
//! matching a `FailIndex` rule of the pod failure policy, is failed for good and never runs
//! again. The Job runs its other indexes and fails once all are done (`FailedIndexes`), or
//! at once when more indexes failed than `maxFailedIndexes`. A replacement waits out its
//! own index's backoff, not the Job's.
//!
//! Upstream: `pkg/controller/job/indexed_job_utils.go` (`calculateFailedIndexes`,
//! `isIndexFailed`, `getNewIndexFailureCounts`, `getPodsWithDelayedDeletionPerIndex`) and
//! `backoff_utils.go` (`getRemainingTimePerIndex`). Unlike upstream, a failed pod's tracking
//! finalizer is not held back until its replacement exists: the replacement's counts are
//! read from the failed pods of the index, which the Job keeps until it goes.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;

use super::backoff;
use super::failure_policy::{self, Verdict};
use super::indexes::{Intervals, completion_index};
use super::pods::{finished_at, has_finalizer, is_failed};

/// How often the pod's index failed before this pod.
pub const FAILURE_COUNT: &str = "batch.kubernetes.io/job-index-failure-count";
/// How often the pod's index failed before this pod in ways the failure policy ignores.
pub const IGNORED_FAILURE_COUNT: &str = "batch.kubernetes.io/job-index-ignored-failure-count";

pub const MAX_FAILED_INDEXES_EXCEEDED: &str = "MaxFailedIndexesExceeded";
pub const MAX_FAILED_INDEXES_MESSAGE: &str =
    "Job has exceeded the specified maximal number of failed indexes";
pub const FAILED_INDEXES: &str = "FailedIndexes";
pub const FAILED_INDEXES_MESSAGE: &str = "Job has failed indexes";

/// The Job's `backoffLimitPerIndex`; None when its indexes share the Job's backoff limit.
pub fn limit(job: &Job) -> Option<i32> {
    job.spec.as_ref()?.backoff_limit_per_index
}

pub fn max_failed(job: &Job) -> Option<i32> {
    job.spec.as_ref()?.max_failed_indexes
}

/// A count annotation; 0 when missing or not a count (as upstream reads a value a user
/// may have changed).
fn count_of(pod: &Pod, key: &str) -> i32 {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .and_then(|v| v.parse::<i32>().ok())
        .filter(|n| *n >= 0)
        .unwrap_or(0)
}

fn absolute_count(pod: &Pod) -> i32 {
    count_of(pod, FAILURE_COUNT).saturating_add(count_of(pod, IGNORED_FAILURE_COUNT))
}

/// Upstream's `isIndexFailed`: `pod` failed, and its index with it.
pub fn is_index_failed(job: &Job, pod: &Pod, only_replace_failed: bool) -> bool {
    let Some(limit) = limit(job) else {
        return false;
    };
    if !is_failed(pod, only_replace_failed) {
        return false;
    }
    match failure_policy::judge(job, pod) {
        Verdict::FailIndex => true,
        Verdict::Ignore => false,
        _ => count_of(pod, FAILURE_COUNT) >= limit,
    }
}

/// Upstream's `calculateFailedIndexes`: the failed indexes of the status, with those of
/// failed pods not counted yet (holding the tracking finalizer).
pub fn failed_indexes(
    job: &Job,
    recorded: Option<&str>,
    pods: &[&Pod],
    expected_removals: &HashSet<String>,
    completions: i32,
    only_replace_failed: bool,
) -> Intervals {
    let recorded = Intervals::parse(recorded.unwrap_or_default(), completions);
    let newly = pods.iter().filter_map(|p| {
        let uid = p.metadata.uid.as_deref().unwrap_or_default();
        if !has_finalizer(p) || expected_removals.contains(uid) {
            return None;
        }
        let ix = completion_index(p).filter(|ix| *ix < completions)?;
        is_index_failed(job, p, only_replace_failed).then_some(ix)
    });
    recorded.with(newly)
}

/// For each index that is neither done (`done`) nor running (`running`), the failed pod a
/// replacement follows: the one with the most failures of its index, the latest to finish
/// among equals (upstream's `getPodsWithDelayedDeletionPerIndex`).
pub fn replaced<'a>(
    job: &Job,
    pods: &[&'a Pod],
    done: &Intervals,
    running: &HashSet<i32>,
    completions: i32,
    only_replace_failed: bool,
    now: Timestamp,
) -> BTreeMap<i32, &'a Pod> {
    let mut out: BTreeMap<i32, &Pod> = BTreeMap::new();
    if limit(job).is_none() {
        return out;
    }
    let finished = |p: &Pod| finished_at(p).unwrap_or(now);
    for pod in pods.iter().copied() {
        if !is_failed(pod, only_replace_failed) {
            continue;
        }
        let Some(ix) = completion_index(pod).filter(|ix| *ix < completions) else {
            continue;
        };
        if done.has(ix) || running.contains(&ix) {
            continue;
        }
        let later = out.get(&ix).is_none_or(|last| {
            absolute_count(last) <= absolute_count(pod) && finished(pod) >= finished(last)
        });
        if later {
            out.insert(ix, pod);
        }
    }
    out
}

/// Upstream's `getNewIndexFailureCounts`: the (failure, ignored failure) counts of the pod
/// that replaces `replaced`.
pub fn new_counts(job: &Job, replaced: Option<&Pod>) -> (i32, i32) {
    let Some(pod) = replaced else {
        return (0, 0);
    };
    let (failures, ignored) = (
        count_of(pod, FAILURE_COUNT),
        count_of(pod, IGNORED_FAILURE_COUNT),
    );
    if failure_policy::judge(job, pod) == Verdict::Ignore {
        (failures, ignored.saturating_add(1))
    } else {
        (failures.saturating_add(1), ignored)
    }
}

/// Upstream's `getRemainingTimePerIndex`: how long the replacement of `replaced` still waits.
pub fn remaining(replaced: Option<&Pod>, now: Timestamp) -> Duration {
    let Some(pod) = replaced else {
        return Duration::ZERO;
    };
    let failures = u32::try_from(absolute_count(pod).saturating_add(1)).unwrap_or(u32::MAX);
    backoff::wait(failures, finished_at(pod).unwrap_or(now), now)
}

/// The annotations of a replacement pod with these counts (the ignored count only when
/// there is one, as upstream).
pub fn annotate(pod: &mut Pod, (failures, ignored): (i32, i32)) {
    let annotations = pod.metadata.annotations.get_or_insert_with(BTreeMap::new);
    annotations.insert(FAILURE_COUNT.to_owned(), failures.to_string());
    if ignored > 0 {
        annotations.insert(IGNORED_FAILURE_COUNT.to_owned(), ignored.to_string());
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::batch::v1::{
        PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement, PodFailurePolicyRule,
    };
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateTerminated, ContainerStatus, PodStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::super::indexes::COMPLETION_INDEX;
    use super::super::pods::FINALIZER;
    use super::super::pods::tests::job;
    use super::*;
    use crate::controllers::replicaset::pods::tests::{NOW, at, pod};

    fn per_index(limit: i32, fail_index_on: Option<i32>) -> Job {
        let mut j = job(Some(4), 2);
        let spec = j.spec.as_mut().expect("spec");
        spec.completion_mode = Some("Indexed".into());
        spec.backoff_limit_per_index = Some(limit);
        spec.pod_failure_policy = fail_index_on.map(|code| PodFailurePolicy {
            rules: vec![PodFailurePolicyRule {
                action: "FailIndex".into(),
                on_exit_codes: Some(PodFailurePolicyOnExitCodesRequirement {
                    operator: "In".into(),
                    values: vec![code],
                    ..Default::default()
                }),
                ..Default::default()
            }],
        });
        j
    }

    /// A failed pod of index `ix` with `failures` before it, exiting with `code` at `secs`.
    fn failed(name: &str, ix: i32, failures: i32, code: i32, secs: i64) -> Pod {
        let mut p = pod(name, "n1", "Failed", None, 0);
        p.metadata.uid = Some(name.into());
        p.metadata.annotations = Some(BTreeMap::from([
            (COMPLETION_INDEX.to_owned(), ix.to_string()),
            (FAILURE_COUNT.to_owned(), failures.to_string()),
        ]));
        p.metadata.finalizers = Some(vec![FINALIZER.into()]);
        p.status = Some(PodStatus {
            phase: Some("Failed".into()),
            container_statuses: Some(vec![ContainerStatus {
                name: "c".into(),
                state: Some(ContainerState {
                    terminated: Some(ContainerStateTerminated {
                        exit_code: code,
                        finished_at: Some(Time(at(secs))),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        });
        p
    }

    #[test]
    fn an_index_fails_once_its_count_reaches_the_limit() {
        let j = per_index(1, None);
        let first = failed("a", 1, 0, 2, 0);
        let second = failed("b", 1, 1, 2, 20);
        assert!(!is_index_failed(&j, &first, false));
        assert!(is_index_failed(&j, &second, false));
        let none = HashSet::new();
        let failed = failed_indexes(&j, Some("3"), &[&first, &second], &none, 4, false);
        assert_eq!(failed.to_string(), "1,3");
        // A counted pod (finalizer gone) adds nothing the status does not say.
        let mut counted = second.clone();
        counted.metadata.finalizers = None;
        let failed = failed_indexes(&j, None, &[&counted], &none, 4, false);
        assert!(failed.is_empty());
    }

    #[test]
    fn a_fail_index_rule_fails_the_index_at_its_first_failure() {
        let j = per_index(3, Some(1));
        assert!(is_index_failed(&j, &failed("a", 0, 0, 1, 0), false));
        assert!(!is_index_failed(&j, &failed("b", 0, 0, 2, 0), false));
    }

    #[test]
    fn replacements_count_one_more_failure_and_wait_their_own_backoff() {
        let j = per_index(2, None);
        let (a, b) = (failed("a", 0, 0, 1, 0), failed("b", 0, 1, 1, 30));
        let other = failed("c", 2, 0, 1, 40);
        let running = HashSet::from([3]);
        let done = Intervals::parse("1", 4);
        let pods = [
            &a,
            &b,
            &other,
            &failed("d", 1, 0, 1, 0),
            &failed("e", 3, 0, 1, 0),
        ];
        let map = replaced(&j, &pods, &done, &running, 4, false, at(0));
        assert_eq!(
            map.iter()
                .map(|(ix, p)| (*ix, p.metadata.name.clone().unwrap_or_default()))
                .collect::<Vec<_>>(),
            vec![(0, "b".to_owned()), (2, "c".to_owned())]
        );
        assert_eq!(new_counts(&j, map.get(&0).copied()), (2, 0));
        assert_eq!(new_counts(&j, None), (0, 0));
        // The second failure of index 0 waits 20 s from when it finished.
        let now = at(35);
        assert_eq!(
            remaining(map.get(&0).copied(), now),
            Duration::from_secs(15)
        );
        assert_eq!(remaining(None, at(NOW)), Duration::ZERO);
    }

    #[test]
    fn replacement_annotations_carry_the_counts() {
        let mut p = pod("p", "n1", "Pending", None, 0);
        annotate(&mut p, (2, 0));
        assert_eq!(count_of(&p, FAILURE_COUNT), 2);
        assert_eq!(
            p.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(IGNORED_FAILURE_COUNT)),
            None
        );
        annotate(&mut p, (2, 1));
        assert_eq!(count_of(&p, IGNORED_FAILURE_COUNT), 1);
    }
}
