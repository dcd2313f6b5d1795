//! Job plan: what one sync decides, as pure functions of the Job, its pods and the clock —
//! the counts, whether the Job is done and why, which pods to create or delete, which
//! finalizers to remove and what the status says before and after.
//!
//! Invariants, as upstream's 1.37 controller (JobManagedBy, JobPodReplacementPolicy and
//! JobSuccessPolicy on): a Job that is done first gets an interim condition — FailureTarget
//! (PodFailurePolicy, BackoffLimitExceeded, DeadlineExceeded) or SuccessCriteriaMet
//! (SuccessPolicy, CompletionsReached) — and
//! only once its uncounted pods are counted and none is terminating the terminal one, Failed
//! or Complete, copying the interim reason and message: the API server refuses Failed
//! without FailureTarget and Complete without SuccessCriteriaMet. A terminal Job has
//! `active` 0, no uncounted pods, no terminating pods, a startTime, and Complete a
//! completionTime. A done Job's active pods are deleted keeping their finalizers (they count
//! as failed); a suspended Job's, or surplus ones, lose the finalizer first (they count as
//! nothing). At most [`MAX_WRITES`] pods are created or deleted per sync and at most
//! [`MAX_UNCOUNTED`] pods counted. A suspended Job has no startTime (cleared since 1.35, so
//! that resuming may set it again); a resumed one starts its activeDeadlineSeconds anew.
//! Upstream: `pkg/controller/job/job_controller.go` (`syncJob`, `manageJob`,
//! `trackJobStatusAndRemoveFinalizers`, `enactJobFinished`, `pastBackoffLimitOnFailure`,
//! `pastActiveDeadline`, `ensureJobConditionStatus`) and `pkg/apis/batch/validation`
//! (`validateJobStatus`, `ValidateJobStatusUpdate`).

use std::collections::HashSet;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus, UncountedTerminatedPods};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::backoff::Record;
use super::failure_policy::{self, Verdict};
use super::indexes::{self, Intervals, completion_index};
use super::per_index;
use super::pods::{self, has_finalizer, is_failed, succeeded};
use super::tracking::{Uncounted, clean_uncounted};
use crate::controllers::replicaset::pods::{is_active, is_ready, is_terminating, to_delete};

/// The `spec.managedBy` value of Jobs this controller manages (also what an unset one means).
pub const MANAGER: &str = "kubernetes.io/job-controller";
/// Upstream's `MaxPodCreateDeletePerSync`.
pub const MAX_WRITES: usize = 500;
/// Upstream's `MaxUncountedPods`: keeps `uncountedTerminatedPods` near 20 KB.
pub const MAX_UNCOUNTED: usize = 500;

pub const COMPLETE: &str = "Complete";
pub const FAILED: &str = "Failed";
pub const FAILURE_TARGET: &str = "FailureTarget";
pub const SUCCESS_CRITERIA_MET: &str = "SuccessCriteriaMet";
pub const SUSPENDED: &str = "Suspended";

pub const BACKOFF_LIMIT_EXCEEDED: &str = "BackoffLimitExceeded";
pub const BACKOFF_LIMIT_MESSAGE: &str = "Job has reached the specified backoff limit";
pub const DEADLINE_EXCEEDED: &str = "DeadlineExceeded";
pub const DEADLINE_MESSAGE: &str = "Job was active longer than specified deadline";
pub const COMPLETIONS_REACHED: &str = "CompletionsReached";
pub const COMPLETIONS_MESSAGE: &str = "Reached expected number of succeeded pods";
pub const SUCCESS_POLICY: &str = "SuccessPolicy";

fn spec_of(job: &Job) -> Option<&k8s_openapi::api::batch::v1::JobSpec> {
    job.spec.as_ref()
}

pub fn is_indexed(job: &Job) -> bool {
    spec_of(job).and_then(|s| s.completion_mode.as_deref()) == Some("Indexed")
}

/// Whether the completion mode is one this controller knows (unset is NonIndexed).
pub fn known_completion_mode(job: &Job) -> bool {
    matches!(
        spec_of(job).and_then(|s| s.completion_mode.as_deref()),
        None | Some("NonIndexed" | "Indexed")
    )
}

/// Whether this controller manages the Job (`spec.managedBy` unset or ours).
pub fn managed_here(job: &Job) -> bool {
    spec_of(job)
        .and_then(|s| s.managed_by.as_deref())
        .is_none_or(|m| m == MANAGER)
}

pub fn suspended(job: &Job) -> bool {
    spec_of(job).and_then(|s| s.suspend).unwrap_or(false)
}

/// Upstream's `onlyReplaceFailedPods`: podReplacementPolicy Failed, which a pod failure
/// policy implies.
pub fn only_replace_failed(job: &Job) -> bool {
    spec_of(job).is_some_and(|s| {
        s.pod_replacement_policy.as_deref() == Some("Failed") || s.pod_failure_policy.is_some()
    })
}

pub fn completions(job: &Job) -> Option<i32> {
    spec_of(job).and_then(|s| s.completions)
}

fn parallelism(job: &Job) -> i32 {
    // The API server defaults both.
    spec_of(job).and_then(|s| s.parallelism).unwrap_or(1)
}

fn backoff_limit(job: &Job) -> i32 {
    spec_of(job).and_then(|s| s.backoff_limit).unwrap_or(6)
}

pub fn condition<'a>(status: Option<&'a JobStatus>, type_: &str) -> Option<&'a JobCondition> {
    status?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

fn is_true(status: Option<&JobStatus>, type_: &str) -> bool {
    condition(status, type_).is_some_and(|c| c.status == "True")
}

/// Upstream's `IsJobFinished`: Complete or Failed is True.
pub fn is_finished(job: &Job) -> bool {
    let status = job.status.as_ref();
    is_true(status, COMPLETE) || is_true(status, FAILED)
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Condition times, like everything the API server stores, have whole seconds.
pub fn whole_seconds(now: Timestamp) -> Time {
    Time(Timestamp::from_second(now.as_second()).unwrap_or(now))
}

fn new_condition(type_: &str, reason: &str, message: &str, now: Timestamp) -> JobCondition {
    JobCondition {
        type_: type_.into(),
        status: "True".into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(whole_seconds(now)),
        last_transition_time: Some(whole_seconds(now)),
    }
}

/// Upstream's `ensureJobConditionStatus`: sets the condition of that type, appending it only
/// if its status is not False; returns whether anything changed.
pub fn ensure_condition(
    status: &mut JobStatus,
    type_: &str,
    value: &str,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> bool {
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    if let Some(existing) = conditions.iter_mut().find(|c| c.type_ == type_) {
        if existing.status == value
            && existing.reason.as_deref() == Some(reason)
            && existing.message.as_deref() == Some(message)
        {
            return false;
        }
        *existing = JobCondition {
            status: value.into(),
            ..new_condition(type_, reason, message, now)
        };
        return true;
    }
    if value == "False" {
        if conditions.is_empty() {
            status.conditions = None;
        }
        return false;
    }
    conditions.push(new_condition(type_, reason, message, now));
    true
}

/// Why a Job is done, before its terminal condition can be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    /// FailureTarget, leading to Failed.
    Failure {
        reason: String,
        message: String,
        /// Whether FailureTarget is already in the status.
        written: bool,
    },
    /// SuccessCriteriaMet, leading to Complete.
    Success {
        reason: String,
        message: String,
        written: bool,
    },
}

impl Finish {
    fn failure(reason: &str, message: &str) -> Self {
        Finish::Failure {
            reason: reason.into(),
            message: message.into(),
            written: false,
        }
    }

    pub fn success() -> Self {
        Finish::Success {
            reason: COMPLETIONS_REACHED.into(),
            message: COMPLETIONS_MESSAGE.into(),
            written: false,
        }
    }

    pub fn is_failure(&self) -> bool {
        matches!(self, Finish::Failure { .. })
    }

    /// The interim condition, if it still has to be written.
    fn interim(&self, now: Timestamp) -> Option<JobCondition> {
        match self {
            Finish::Failure {
                reason,
                message,
                written: false,
            } => Some(new_condition(FAILURE_TARGET, reason, message, now)),
            Finish::Success {
                reason,
                message,
                written: false,
            } => Some(new_condition(SUCCESS_CRITERIA_MET, reason, message, now)),
            _ => None,
        }
    }

    /// The terminal condition, with the interim one's words.
    pub fn terminal(&self, now: Timestamp) -> JobCondition {
        match self {
            Finish::Failure {
                reason, message, ..
            } => new_condition(FAILED, reason, message, now),
            Finish::Success {
                reason, message, ..
            } => new_condition(COMPLETE, reason, message, now),
        }
    }
}

/// What a sync reads: the Job, the pods it controls (all phases), the finalizer removals
/// not yet seen, and the clock.
#[derive(Debug)]
pub struct View<'a> {
    pub job: &'a Job,
    pub pods: &'a [&'a Pod],
    pub expected_removals: &'a HashSet<String>,
    pub now: Timestamp,
}

/// The state of a Job's pods and whether it is done, before any write.
#[derive(Debug)]
pub struct Assessment<'a> {
    /// The status as read, with startTime set if the Job starts now.
    pub status: JobStatus,
    pub active: Vec<&'a Pod>,
    pub ready: i32,
    pub terminating: i32,
    /// Finished pods with the finalizer that are not counted or uncounted yet.
    pub new_succeeded: Vec<&'a Pod>,
    pub new_failed: Vec<&'a Pod>,
    pub succeeded: i32,
    pub failed: i32,
    /// Indexed Jobs: completed indexes as the status says, and with newly succeeded pods.
    pub prev_indexes: Intervals,
    pub indexes: Intervals,
    /// Indexed Jobs with `backoffLimitPerIndex`: the failed indexes, with newly failed ones.
    pub failed_indexes: Option<Intervals>,
    pub finish: Option<Finish>,
    /// When activeDeadlineSeconds runs out, for a Job not done yet.
    pub deadline_in: Option<Duration>,
    pub backoff: Record,
}

impl View<'_> {
    fn counts_as_new(&self, pod: &Pod, uncounted: &HashSet<String>) -> bool {
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        if !has_finalizer(pod) || uncounted.contains(uid) || self.expected_removals.contains(uid) {
            return false;
        }
        !is_indexed(self.job)
            || completion_index(pod)
                .is_some_and(|ix| ix < completions(self.job).unwrap_or_default())
    }
}

/// Upstream's `pastBackoffLimitOnFailure`: with restartPolicy OnFailure, failures are
/// container restarts of running and pending pods.
fn past_backoff_limit_on_failure(job: &Job, pods: &[&Pod]) -> bool {
    let restart_policy = spec_of(job)
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.restart_policy.as_deref());
    if restart_policy != Some("OnFailure") {
        return false;
    }
    let restarts: i64 = pods
        .iter()
        .filter(|p| matches!(pods::phase(p), "Running" | "Pending"))
        .filter_map(|p| p.status.as_ref())
        .flat_map(|s| {
            s.init_container_statuses
                .iter()
                .flatten()
                .chain(s.container_statuses.iter().flatten())
        })
        .map(|c| i64::from(c.restart_count))
        .sum();
    let limit = i64::from(backoff_limit(job));
    if limit == 0 {
        restarts > 0
    } else {
        restarts >= limit
    }
}

/// Time left of activeDeadlineSeconds (zero once past); None without a deadline, a start
/// or while suspended.
fn deadline_left(job: &Job, start: Option<&Time>, now: Timestamp) -> Option<Duration> {
    let seconds = spec_of(job)?.active_deadline_seconds?;
    if suspended(job) {
        return None;
    }
    let end = start?
        .0
        .checked_add(SignedDuration::from_secs(seconds))
        .ok()?;
    Some(Duration::try_from(end.duration_since(now)).unwrap_or(Duration::ZERO))
}

/// Upstream's `matchSuccessPolicy`: the first rule of an Indexed Job's `successPolicy` that
/// its succeeded indexes meet — enough of the named indexes (all of them without a count),
/// or enough indexes at all.
fn success_rule(job: &Job, succeeded: &Intervals) -> Option<usize> {
    let policy = spec_of(job)?.success_policy.as_ref()?;
    if succeeded.is_empty() {
        return None;
    }
    let total = completions(job).unwrap_or_default();
    policy
        .rules
        .iter()
        .position(|rule| match &rule.succeeded_indexes {
            Some(text) => {
                let required = Intervals::parse(text, total);
                if required.is_empty() {
                    return false;
                }
                let met = (0..total)
                    .filter(|ix| required.has(*ix) && succeeded.has(*ix))
                    .count();
                let met = i32::try_from(met).unwrap_or(i32::MAX);
                match rule.succeeded_count {
                    Some(n) => met >= n,
                    None => met == required.total(),
                }
            }
            None => rule.succeeded_count.is_some_and(|n| succeeded.total() >= n),
        })
}

/// Upstream's `syncJob` up to managing pods: counts, startTime, and whether the Job is done.
pub fn assess<'a>(view: &View<'a>, backoff: Record) -> Assessment<'a> {
    let job = view.job;
    let mut status = job.status.clone().unwrap_or_default();
    status
        .uncounted_terminated_pods
        .get_or_insert_with(UncountedTerminatedPods::default);
    let uncounted = Uncounted::of(Some(&status));
    let active: Vec<&Pod> = view.pods.iter().copied().filter(|p| is_active(p)).collect();
    let ready = count(active.iter().filter(|p| is_ready(p)).count());
    let terminating = count(view.pods.iter().filter(|p| is_terminating(p)).count());
    let only_failed = only_replace_failed(job);
    let new_succeeded: Vec<&Pod> = view
        .pods
        .iter()
        .copied()
        .filter(|p| view.counts_as_new(p, &uncounted.succeeded) && succeeded(p))
        .collect();
    // Failures the pod failure policy ignores count for nothing.
    let new_failed: Vec<&Pod> = view
        .pods
        .iter()
        .copied()
        .filter(|p| view.counts_as_new(p, &uncounted.failed) && is_failed(p, only_failed))
        .filter(|p| failure_policy::judge(job, p) != Verdict::Ignore)
        .collect();
    let mut succeeded_count = status.succeeded.unwrap_or(0)
        + count(new_succeeded.len())
        + count(uncounted.succeeded.len());
    let failed_count =
        status.failed.unwrap_or(0) + count(new_failed.len()) + count(uncounted.failed.len());

    if status.start_time.is_none() && !suspended(job) {
        status.start_time = Some(whole_seconds(view.now));
    }
    let backoff = backoff.update(&new_succeeded, &new_failed, view.now);

    let status_ref = Some(&status);
    let mut deadline_in = None;
    let written = |type_: &str| {
        condition(status_ref, type_)
            .filter(|c| c.status == "True")
            .map(|c| {
                let reason = c.reason.clone().unwrap_or_default();
                (reason, c.message.clone().unwrap_or_default())
            })
    };
    let mut finish = if let Some((reason, message)) = written(SUCCESS_CRITERIA_MET) {
        Some(Finish::Success {
            reason,
            message,
            written: true,
        })
    } else {
        written(FAILURE_TARGET).map(|(reason, message)| Finish::Failure {
            reason,
            message,
            written: true,
        })
    };
    if finish.is_none() {
        let deadline = deadline_left(job, status.start_time.as_ref(), view.now);
        let fail_job = view
            .pods
            .iter()
            .filter(|p| is_failed(p, only_failed))
            .find_map(|p| match failure_policy::judge(job, p) {
                Verdict::FailJob(message) => Some(message),
                _ => None,
            });
        if let Some(message) = fail_job {
            finish = Some(Finish::failure(failure_policy::REASON, &message));
        } else if failed_count > backoff_limit(job) || past_backoff_limit_on_failure(job, view.pods)
        {
            finish = Some(Finish::failure(
                BACKOFF_LIMIT_EXCEEDED,
                BACKOFF_LIMIT_MESSAGE,
            ));
        } else if deadline == Some(Duration::ZERO) {
            finish = Some(Finish::failure(DEADLINE_EXCEEDED, DEADLINE_MESSAGE));
        } else {
            deadline_in = deadline;
        }
    }

    let (mut prev_indexes, mut indexes) = (Intervals::default(), Intervals::default());
    let mut failed_indexes = None;
    if is_indexed(job) {
        let total = completions(job).unwrap_or_default();
        prev_indexes = Intervals::parse(
            status.completed_indexes.as_deref().unwrap_or_default(),
            total,
        );
        let newly = view.pods.iter().filter_map(|p| {
            completion_index(p).filter(|ix| succeeded(p) && *ix < total && has_finalizer(p))
        });
        indexes = prev_indexes.with(newly);
        succeeded_count = indexes.total();
        if per_index::limit(job).is_some() {
            let failed = per_index::failed_indexes(
                job,
                status.failed_indexes.as_deref(),
                view.pods,
                view.expected_removals,
                total,
                only_failed,
            );
            if finish.is_none() {
                if per_index::max_failed(job).is_some_and(|max| failed.total() > max) {
                    finish = Some(Finish::failure(
                        per_index::MAX_FAILED_INDEXES_EXCEEDED,
                        per_index::MAX_FAILED_INDEXES_MESSAGE,
                    ));
                } else if !failed.is_empty() && failed.total() + indexes.total() >= total {
                    finish = Some(Finish::failure(
                        per_index::FAILED_INDEXES,
                        per_index::FAILED_INDEXES_MESSAGE,
                    ));
                }
            }
            failed_indexes = Some(failed);
        }
        if finish.is_none()
            && let Some(rule) = success_rule(job, &indexes)
        {
            finish = Some(Finish::Success {
                reason: SUCCESS_POLICY.into(),
                message: format!("Matched rules at index {rule}"),
                written: false,
            });
        }
    }

    Assessment {
        status,
        active,
        ready,
        terminating,
        new_succeeded,
        new_failed,
        succeeded: succeeded_count,
        failed: failed_count,
        prev_indexes,
        indexes,
        failed_indexes,
        finish,
        deadline_in,
        backoff,
    }
}

/// What `manageJob` does with the pods of a Job that is not done.
#[derive(Debug, PartialEq)]
pub enum Manage<'a> {
    Nothing,
    /// Remove the finalizer and delete: the Job is suspended, or has too many pods.
    Delete(Vec<&'a Pod>),
    /// Create pods: `count` of them, for these completion indexes if Indexed, with these
    /// (failure, ignored failure) counts of their index under `backoffLimitPerIndex`.
    Create {
        count: usize,
        indexes: Vec<i32>,
        failure_counts: Vec<(i32, i32)>,
    },
    /// Too few pods, but the pod failure backoff holds creation for this long.
    Wait(Duration),
}

/// Upstream's `activePodsForRemoval`: an Indexed Job's pods without a valid index or
/// sharing one go first, then as many more as needed in the deletion order of surplus pods.
fn for_removal<'a>(job: &Job, active: &[&'a Pod], at_least: usize, now: Timestamp) -> Vec<&'a Pod> {
    let (mut remove, left) = if is_indexed(job) {
        indexes::for_removal(active, completions(job).unwrap_or_default(), now)
    } else {
        (Vec::new(), active.to_vec())
    };
    if remove.len() < at_least {
        remove.extend(to_delete(&left, &[], at_least - remove.len(), now));
    }
    remove
}

/// Upstream's `manageJob`.
pub fn manage<'a>(job: &Job, a: &Assessment<'a>, pods: &[&'a Pod], now: Timestamp) -> Manage<'a> {
    let active = count(a.active.len());
    if suspended(job) {
        let all = for_removal(job, &a.active, a.active.len(), now);
        return if all.is_empty() {
            Manage::Nothing
        } else {
            Manage::Delete(all)
        };
    }
    let want = match completions(job) {
        // Without completions any success ends the Job: what runs then may finish.
        None if a.succeeded > 0 => active,
        None => parallelism(job),
        Some(total) => (total - a.succeeded).min(parallelism(job)).max(0),
    };
    let at_least = usize::try_from(active - want).unwrap_or(0);
    let mut doomed = for_removal(job, &a.active, at_least, now);
    if !doomed.is_empty() {
        doomed.truncate(MAX_WRITES);
        return Manage::Delete(doomed);
    }
    let terminating = if only_replace_failed(job) {
        a.terminating
    } else {
        0
    };
    let diff = want - terminating - active;
    if diff <= 0 {
        return Manage::Nothing;
    }
    // Indexes with their own backoff limit wait out their own backoff, below.
    let wait = a.backoff.remaining(now);
    if !wait.is_zero() && per_index::limit(job).is_none() {
        return Manage::Wait(wait);
    }
    let diff = usize::try_from(diff).unwrap_or(0).min(MAX_WRITES);
    if !is_indexed(job) {
        return Manage::Create {
            count: diff,
            indexes: Vec::new(),
            failure_counts: Vec::new(),
        };
    }
    let total = completions(job).unwrap_or_default();
    let running: HashSet<i32> = a
        .active
        .iter()
        .filter_map(|p| completion_index(p))
        .collect();
    let mut taken = a.indexes.with(running.iter().copied());
    if only_replace_failed(job) {
        taken = taken.with(
            pods.iter()
                .filter(|p| is_terminating(p))
                .filter_map(|p| completion_index(p)),
        );
    }
    if let Some(failed) = &a.failed_indexes {
        taken = taken.merge(failed);
    }
    let mut pending = indexes::first_pending(&taken, diff, total);
    let mut failure_counts = Vec::new();
    if let Some(failed) = &a.failed_indexes {
        let done = a.indexes.merge(failed);
        let replaced = per_index::replaced(
            job,
            pods,
            &done,
            &running,
            total,
            only_replace_failed(job),
            now,
        );
        let wait_of = |ix: &i32| per_index::remaining(replaced.get(ix).copied(), now);
        let soonest = pending.iter().map(wait_of).min();
        pending.retain(|ix| wait_of(ix).is_zero());
        if pending.is_empty() {
            return soonest.map_or(Manage::Nothing, Manage::Wait);
        }
        failure_counts = pending
            .iter()
            .map(|ix| per_index::new_counts(job, replaced.get(ix).copied()))
            .collect();
    }
    if pending.is_empty() {
        return Manage::Nothing;
    }
    Manage::Create {
        count: pending.len(),
        indexes: pending,
        failure_counts,
    }
}

/// Whether the Job has succeeded: without completions, once any pod succeeded and none is
/// active; with them, once that many succeeded and none is active.
pub fn complete(job: &Job, succeeded: i32, active: i32) -> bool {
    active == 0
        && match completions(job) {
            None => succeeded > 0,
            Some(total) => succeeded >= total,
        }
}

/// A change of a Job's suspension, for its event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suspension {
    Suspended,
    Resumed,
}

/// The Suspended condition of a Job whose pods were just managed: True while suspended
/// (and no startTime, so that resuming may set it), False once resumed (and startTime
/// now: activeDeadlineSeconds counts time continuously active).
pub fn suspension(status: &mut JobStatus, suspended: bool, now: Timestamp) -> Option<Suspension> {
    if suspended {
        status.start_time = None;
        ensure_condition(
            status,
            SUSPENDED,
            "True",
            "JobSuspended",
            "Job suspended",
            now,
        )
        .then_some(Suspension::Suspended)
    } else if ensure_condition(status, SUSPENDED, "False", "JobResumed", "Job resumed", now) {
        status.start_time = Some(whole_seconds(now));
        Some(Suspension::Resumed)
    } else {
        None
    }
}

/// The finalizer work of one sync.
#[derive(Debug)]
pub struct Tracking<'a> {
    /// Pods whose finalizer goes now (their uids are in the status to write first).
    pub remove: Vec<&'a Pod>,
    /// Uids of pods holding the finalizer (removals still expected excepted).
    pub with_finalizer: HashSet<String>,
    /// More pods wait to be counted than one sync counts: the Job is not finished yet.
    pub reached_max: bool,
}

/// Upstream's `trackJobStatusAndRemoveFinalizers` up to the first status write: counts
/// what lost its finalizer, adds newly finished pods to the uncounted lists (or, Indexed,
/// their indexes to completedIndexes), and writes the interim condition of a done Job.
pub fn track<'a>(
    view: &View<'a>,
    status: &mut JobStatus,
    a: &Assessment<'a>,
    finish: Option<&Finish>,
) -> Tracking<'a> {
    let job = view.job;
    let indexed = is_indexed(job);
    let total = completions(job).unwrap_or_default();
    let only_failed = only_replace_failed(job);
    let uid_of = |p: &Pod| p.metadata.uid.clone().unwrap_or_default();
    let mut pods: Vec<&Pod> = view.pods.to_vec();
    if indexed {
        pods.sort_by_key(|p| completion_index(p).unwrap_or(-1));
    }
    let with_finalizer: HashSet<String> = pods
        .iter()
        .filter(|p| has_finalizer(p))
        .map(|p| uid_of(p))
        .filter(|uid| !view.expected_removals.contains(uid))
        .collect();
    clean_uncounted(status, &with_finalizer);
    let uncounted = Uncounted::of(Some(status));
    let mut new_succeeded: Vec<String> = Vec::new();
    let mut new_failed: Vec<String> = Vec::new();
    let mut new_indexes: Vec<i32> = Vec::new();
    let mut remove = Vec::new();
    let mut reached_max = false;
    let job_deleting = job.metadata.deletion_timestamp.is_some();
    let failing = finish.is_some_and(Finish::is_failure);
    for pod in pods {
        let uid = uid_of(pod);
        if !has_finalizer(pod) || view.expected_removals.contains(&uid) {
            continue;
        }
        let failed = is_failed(pod, only_failed);
        if !(job_deleting || finish.is_some() || succeeded(pod) || failed) {
            continue;
        }
        remove.push(pod);
        let index = completion_index(pod).filter(|ix| *ix < total);
        if succeeded(pod) && !uncounted.failed.contains(&uid) {
            if indexed {
                if let Some(ix) = index.filter(|ix| !a.prev_indexes.has(*ix)) {
                    new_indexes.push(ix);
                }
            } else if !uncounted.succeeded.contains(&uid) {
                new_succeeded.push(uid);
            }
        } else if (failed || failing)
            && !uncounted.failed.contains(&uid)
            && (!indexed || index.is_some())
            && !(failed && failure_policy::judge(job, pod) == Verdict::Ignore)
        {
            // A pod of a failing Job that did not finish counts as failed.
            new_failed.push(uid);
        }
        if new_indexes.len() + uncounted.len() + new_succeeded.len() + new_failed.len()
            >= MAX_UNCOUNTED
        {
            reached_max = true;
            break;
        }
    }
    let lists = status
        .uncounted_terminated_pods
        .get_or_insert_with(UncountedTerminatedPods::default);
    for (list, new) in [
        (&mut lists.succeeded, new_succeeded),
        (&mut lists.failed, new_failed),
    ] {
        if !new.is_empty() {
            list.get_or_insert_with(Vec::new).extend(new);
        }
    }
    if indexed {
        let indexes = a.indexes.with(new_indexes);
        status.succeeded = Some(indexes.total());
        let text = indexes.to_string();
        status.completed_indexes = (!text.is_empty()).then_some(text);
        // Written whenever the Job has per-index limits, empty too, as upstream.
        if let Some(failed) = &a.failed_indexes {
            status.failed_indexes = Some(failed.to_string());
        }
    }
    if let Some(interim) = finish.and_then(|f| f.interim(view.now)) {
        status.conditions.get_or_insert_with(Vec::new).push(interim);
    }
    Tracking {
        remove,
        with_finalizer,
        reached_max,
    }
}

/// Upstream's `enactJobFinished`: the terminal condition, once every finished pod is
/// counted and none is terminating; Complete also sets completionTime. Returns whether the
/// Job is finished now.
pub fn enact(status: &mut JobStatus, finish: &Finish, terminating: i32, now: Timestamp) -> bool {
    if !Uncounted::of(Some(status)).is_empty() || terminating > 0 {
        return false;
    }
    let terminal = finish.terminal(now);
    ensure_condition(
        status,
        &terminal.type_,
        "True",
        terminal.reason.as_deref().unwrap_or_default(),
        terminal.message.as_deref().unwrap_or_default(),
        now,
    );
    if terminal.type_ == COMPLETE {
        status.completion_time = terminal.last_transition_time;
    }
    // The API server refuses a finished Job without one (one suspended since creation).
    if status.start_time.is_none() {
        status.start_time = Some(whole_seconds(now));
    }
    true
}

/// The status as the API server stores it: zero counts, empty strings and lists dropped
/// (`omitempty`), so that a status read back compares equal to the one written.
pub fn normalized(status: &JobStatus) -> JobStatus {
    let mut s = status.clone();
    for counter in [&mut s.active, &mut s.succeeded, &mut s.failed] {
        if *counter == Some(0) {
            *counter = None;
        }
    }
    if s.completed_indexes.as_deref() == Some("") {
        s.completed_indexes = None;
    }
    if s.conditions.as_ref().is_some_and(Vec::is_empty) {
        s.conditions = None;
    }
    let lists = s
        .uncounted_terminated_pods
        .get_or_insert_with(UncountedTerminatedPods::default);
    for list in [&mut lists.succeeded, &mut lists.failed] {
        if list.as_ref().is_some_and(Vec::is_empty) {
            *list = None;
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{ContainerStatus, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    use super::super::indexes::COMPLETION_INDEX;
    use super::super::pods::FINALIZER;
    use super::super::pods::tests::job;
    use super::*;
    use crate::controllers::replicaset::pods::tests::{NOW, at, pod};

    /// A pod of the Job, with the tracking finalizer, in `phase`.
    fn tracked(name: &str, phase: &str) -> Pod {
        let mut p = pod(name, "n1", phase, None, 0);
        p.metadata.finalizers = Some(vec![FINALIZER.to_owned()]);
        p.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "batch/v1".into(),
            kind: "Job".into(),
            name: "pi".into(),
            uid: "uid-pi".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }]);
        p
    }

    fn at_index(mut p: Pod, ix: i32) -> Pod {
        p.metadata.annotations = Some(
            [(COMPLETION_INDEX.to_owned(), ix.to_string())]
                .into_iter()
                .collect(),
        );
        p
    }

    fn untracked(mut p: Pod) -> Pod {
        p.metadata.finalizers = None;
        p
    }

    fn view<'a>(j: &'a Job, pods: &'a [&'a Pod], expected: &'a HashSet<String>) -> View<'a> {
        View {
            job: j,
            pods,
            expected_removals: expected,
            now: at(NOW),
        }
    }

    fn with_status(mut j: Job, status: JobStatus) -> Job {
        j.status = Some(status);
        j
    }

    fn names(pods: &[&Pod]) -> Vec<String> {
        pods.iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect()
    }

    #[test]
    fn counts_and_the_finish_follow_upstream() {
        let none = HashSet::new();
        let limited = |limit: i32| {
            let mut j = job(Some(3), 2);
            if let Some(spec) = j.spec.as_mut() {
                spec.backoff_limit = Some(limit);
            }
            j
        };
        let ok = tracked("ok", "Succeeded");
        let bad = tracked("bad", "Failed");
        let running = tracked("run", "Running");
        let counted = untracked(tracked("old", "Failed"));
        // (job, pods, succeeded, failed, active, finish reason)
        type Case<'a> = (Job, Vec<&'a Pod>, i32, i32, usize, Option<&'a str>);
        let cases: Vec<Case> = vec![
            (limited(6), vec![&ok, &bad, &running], 1, 1, 1, None),
            (
                limited(0),
                vec![&ok, &bad, &running],
                1,
                1,
                1,
                Some(BACKOFF_LIMIT_EXCEEDED),
            ),
            (limited(1), vec![&bad], 0, 1, 0, None),
            // A pod without the finalizer is counted in the status already.
            (limited(0), vec![&counted], 0, 0, 0, None),
            (
                with_status(
                    limited(0),
                    JobStatus {
                        failed: Some(1),
                        ..JobStatus::default()
                    },
                ),
                vec![&running],
                0,
                1,
                1,
                Some(BACKOFF_LIMIT_EXCEEDED),
            ),
        ];
        for (i, (j, pods, succeeded, failed, active, reason)) in cases.into_iter().enumerate() {
            let a = assess(&view(&j, &pods, &none), Record::default());
            assert_eq!(
                (a.succeeded, a.failed, a.active.len()),
                (succeeded, failed, active),
                "case {i}"
            );
            let got = a.finish.as_ref().map(|f| match f {
                Finish::Failure { reason, .. } | Finish::Success { reason, .. } => reason.clone(),
            });
            assert_eq!(got.as_deref(), reason, "case {i}");
        }
    }

    #[test]
    fn the_pod_failure_policy_ignores_a_disruption_and_fails_the_job_on_an_exit_code() {
        use k8s_openapi::api::batch::v1::{
            PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement,
            PodFailurePolicyOnPodConditionsPattern, PodFailurePolicyRule,
        };
        use k8s_openapi::api::core::v1::{ContainerState, ContainerStateTerminated, PodCondition};
        let none = HashSet::new();
        let mut j = job(Some(3), 2);
        if let Some(spec) = j.spec.as_mut() {
            spec.backoff_limit = Some(0);
            spec.pod_failure_policy = Some(PodFailurePolicy {
                rules: vec![
                    PodFailurePolicyRule {
                        action: "Ignore".into(),
                        on_exit_codes: None,
                        on_pod_conditions: Some(vec![PodFailurePolicyOnPodConditionsPattern {
                            type_: "DisruptionTarget".into(),
                            status: Some("True".into()),
                        }]),
                    },
                    PodFailurePolicyRule {
                        action: "FailJob".into(),
                        on_exit_codes: Some(PodFailurePolicyOnExitCodesRequirement {
                            container_name: None,
                            operator: "In".into(),
                            values: vec![42],
                        }),
                        on_pod_conditions: None,
                    },
                ],
            });
        }
        let mut evicted = tracked("evicted", "Failed");
        if let Some(status) = evicted.status.as_mut() {
            status.conditions = Some(vec![PodCondition {
                type_: "DisruptionTarget".into(),
                status: "True".into(),
                ..PodCondition::default()
            }]);
        }
        let pods = [&evicted];
        let a = assess(&view(&j, &pods, &none), Record::default());
        assert_eq!(a.failed, 0, "ignored, not counted against backoffLimit 0");
        assert!(a.finish.is_none());
        let mut status = a.status.clone();
        let t = track(&view(&j, &pods, &none), &mut status, &a, None);
        assert_eq!(names(&t.remove), ["evicted"], "its finalizer still goes");
        assert!(
            Uncounted::of(Some(&status)).is_empty(),
            "and it is not counted"
        );

        let mut crashed = tracked("crashed", "Failed");
        if let Some(status) = crashed.status.as_mut() {
            status.container_statuses = Some(vec![ContainerStatus {
                name: "main".into(),
                state: Some(ContainerState {
                    terminated: Some(ContainerStateTerminated {
                        exit_code: 42,
                        ..ContainerStateTerminated::default()
                    }),
                    ..ContainerState::default()
                }),
                ..ContainerStatus::default()
            }]);
        }
        let pods = [&crashed];
        let a = assess(&view(&j, &pods, &none), Record::default());
        match &a.finish {
            Some(Finish::Failure {
                reason, message, ..
            }) => {
                assert_eq!(reason, failure_policy::REASON);
                assert!(message.contains("failed with exit code 42"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_success_policy_completes_an_indexed_job_by_its_first_met_rule() {
        use k8s_openapi::api::batch::v1::{SuccessPolicy, SuccessPolicyRule};
        let mut j = job(Some(5), 5);
        let rule = |indexes: Option<&str>, count: Option<i32>| SuccessPolicyRule {
            succeeded_indexes: indexes.map(str::to_owned),
            succeeded_count: count,
        };
        if let Some(spec) = j.spec.as_mut() {
            spec.completion_mode = Some("Indexed".into());
            spec.success_policy = Some(SuccessPolicy {
                rules: vec![
                    rule(Some("0,4"), None),
                    rule(Some("1-3"), Some(2)),
                    rule(None, Some(4)),
                ],
            });
        }
        let met = |text: &str| success_rule(&j, &Intervals::parse(text, 5));
        assert_eq!(met(""), None);
        assert_eq!(met("0"), None, "index 4 is needed too");
        assert_eq!(met("0,4"), Some(0));
        assert_eq!(met("1,3"), Some(1), "two of 1-3");
        assert_eq!(met("0-1,4"), Some(0), "the first met rule");
        assert_eq!(met("0,1,3"), Some(1));
    }

    #[test]
    fn the_deadline_fails_a_job_and_is_rechecked_before() {
        let none = HashSet::new();
        let mut j = job(Some(1), 1);
        if let Some(spec) = j.spec.as_mut() {
            spec.active_deadline_seconds = Some(30);
        }
        let started = |ago: i64| {
            with_status(
                j.clone(),
                JobStatus {
                    start_time: Some(Time(at(NOW - ago))),
                    ..JobStatus::default()
                },
            )
        };
        let fresh = started(10);
        let a = assess(&view(&fresh, &[], &none), Record::default());
        assert_eq!(
            (a.finish, a.deadline_in),
            (None, Some(Duration::from_secs(20)))
        );
        let late = started(30);
        let a = assess(&view(&late, &[], &none), Record::default());
        assert_eq!(
            a.finish,
            Some(Finish::Failure {
                reason: DEADLINE_EXCEEDED.into(),
                message: DEADLINE_MESSAGE.into(),
                written: false
            })
        );
        // A new Job starts now; a suspended one does not start.
        let a = assess(&view(&j, &[], &none), Record::default());
        assert_eq!(a.status.start_time, Some(Time(at(NOW))));
        if let Some(spec) = j.spec.as_mut() {
            spec.suspend = Some(true);
        }
        let a = assess(&view(&j, &[], &none), Record::default());
        assert_eq!((a.status.start_time, a.deadline_in), (None, None));
    }

    #[test]
    fn restarts_count_against_the_backoff_limit_with_on_failure() {
        let mut j = job(Some(1), 1);
        if let Some(spec) = j.spec.as_mut() {
            spec.backoff_limit = Some(2);
            if let Some(pod_spec) = spec.template.spec.as_mut() {
                pod_spec.restart_policy = Some("OnFailure".into());
            }
        }
        let mut restarting = tracked("r", "Running");
        restarting.status = Some(PodStatus {
            phase: Some("Running".into()),
            container_statuses: Some(vec![ContainerStatus {
                name: "pi".into(),
                restart_count: 2,
                ..ContainerStatus::default()
            }]),
            ..PodStatus::default()
        });
        assert!(past_backoff_limit_on_failure(&j, &[&restarting]));
        if let Some(spec) = j.spec.as_mut() {
            spec.backoff_limit = Some(3);
        }
        assert!(!past_backoff_limit_on_failure(&j, &[&restarting]));
    }

    #[test]
    fn manage_creates_deletes_and_waits_as_upstream() {
        let none = HashSet::new();
        let now = at(NOW);
        let r1 = tracked("r1", "Running");
        let r2 = tracked("r2", "Running");
        let r3 = tracked("r3", "Running");
        let ok = tracked("ok", "Succeeded");
        let mut gone = tracked("gone", "Running");
        gone.metadata.deletion_timestamp = Some(Time(now));
        let suspended_job = {
            let mut j = job(Some(5), 2);
            if let Some(spec) = j.spec.as_mut() {
                spec.suspend = Some(true);
            }
            j
        };
        let replace_failed = {
            let mut j = job(Some(5), 2);
            if let Some(spec) = j.spec.as_mut() {
                spec.pod_replacement_policy = Some("Failed".into());
            }
            j
        };
        // (job, pods, what manage does)
        let cases: Vec<(Job, Vec<&Pod>, &str)> = vec![
            (job(Some(5), 2), vec![], "create 2"),
            (job(Some(5), 2), vec![&r1], "create 1"),
            (job(Some(2), 4), vec![&ok], "create 1"),
            (job(Some(5), 2), vec![&r1, &r2, &r3], "delete 1"),
            (job(None, 3), vec![&ok, &r1], "nothing"),
            (job(None, 3), vec![&r1], "create 2"),
            (suspended_job, vec![&r1, &r2], "delete 2"),
            // A pod deleted before it finished counts as failed, so its replacement waits
            // out the failure backoff; with podReplacementPolicy Failed it is not replaced
            // before it has failed at all.
            (job(Some(5), 2), vec![&r1, &gone], "wait 10"),
            (replace_failed, vec![&r1, &gone], "nothing"),
        ];
        for (i, (j, pods, want)) in cases.into_iter().enumerate() {
            let a = assess(&view(&j, &pods, &none), Record::default());
            let got = match manage(&j, &a, &pods, now) {
                Manage::Nothing => "nothing".to_owned(),
                Manage::Delete(p) => format!("delete {}", p.len()),
                Manage::Create { count, .. } => format!("create {count}"),
                Manage::Wait(d) => format!("wait {}", d.as_secs()),
            };
            assert_eq!(got, want, "case {i}");
        }
        let j = job(Some(5), 2);
        let failed = Record {
            failures_after_success: 2,
            last_failure: Some(at(NOW - 5)),
        };
        let a = assess(&view(&j, &[], &none), failed);
        assert_eq!(
            manage(&j, &a, &[], now),
            Manage::Wait(Duration::from_secs(15))
        );
    }

    #[test]
    fn per_index_limits_fail_indexes_alone_and_then_the_job() {
        let none = HashSet::new();
        let mut j = job(Some(4), 2);
        {
            let spec = j.spec.as_mut().expect("spec");
            spec.completion_mode = Some("Indexed".into());
            spec.backoff_limit = Some(i32::MAX);
            spec.backoff_limit_per_index = Some(1);
        }
        let failed = |name: &str, ix: i32, count: i32| {
            let mut p = at_index(tracked(name, "Failed"), ix);
            p.metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(per_index::FAILURE_COUNT.to_owned(), count.to_string());
            p.status
                .get_or_insert_with(Default::default)
                .container_statuses = Some(vec![k8s_openapi::api::core::v1::ContainerStatus {
                state: Some(k8s_openapi::api::core::v1::ContainerState {
                    terminated: Some(k8s_openapi::api::core::v1::ContainerStateTerminated {
                        exit_code: 1,
                        finished_at: Some(Time(at(NOW - 5))),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }]);
            p
        };
        // Index 1 failed once: its replacement counts one failure and waits 10 s from
        // when it failed; index 0 starts now.
        let first = failed("first", 1, 0);
        let pods = [&first];
        let a = assess(&view(&j, &pods, &none), Record::default());
        assert_eq!(
            a.failed_indexes.as_ref().map(ToString::to_string),
            Some(String::new())
        );
        assert_eq!(a.finish, None);
        assert_eq!(
            manage(&j, &a, &pods, at(NOW)),
            Manage::Create {
                count: 1,
                indexes: vec![0],
                failure_counts: vec![(0, 0)]
            }
        );
        assert_eq!(
            manage(&j, &a, &pods, at(NOW + 6)),
            Manage::Create {
                count: 2,
                indexes: vec![0, 1],
                failure_counts: vec![(0, 0), (1, 0)]
            }
        );
        // Its second failure reaches the limit: index 1 fails for good and is not run again.
        let second = failed("second", 1, 1);
        let pods = [&first, &second];
        let a = assess(&view(&j, &pods, &none), Record::default());
        assert_eq!(
            a.failed_indexes.as_ref().map(ToString::to_string),
            Some("1".into())
        );
        assert_eq!(
            manage(&j, &a, &pods, at(NOW + 60)),
            Manage::Create {
                count: 2,
                indexes: vec![0, 2],
                failure_counts: vec![(0, 0), (0, 0)]
            }
        );
        let mut status = a.status.clone();
        track(&view(&j, &pods, &none), &mut status, &a, None);
        assert_eq!(status.failed_indexes.as_deref(), Some("1"));
        // Once every other index succeeded, the Job fails for its failed index.
        let done = with_status(
            j.clone(),
            JobStatus {
                completed_indexes: Some("0,2,3".into()),
                succeeded: Some(3),
                failed_indexes: Some("1".into()),
                ..JobStatus::default()
            },
        );
        let a = assess(&view(&done, &[], &none), Record::default());
        assert_eq!(
            a.finish,
            Some(Finish::failure(
                per_index::FAILED_INDEXES,
                per_index::FAILED_INDEXES_MESSAGE
            ))
        );
        // With maxFailedIndexes 0 the first failed index ends it at once.
        let mut strict = j.clone();
        strict.spec.as_mut().expect("spec").max_failed_indexes = Some(0);
        let only_second = [&second];
        let a = assess(&view(&strict, &only_second, &none), Record::default());
        assert_eq!(
            a.finish,
            Some(Finish::failure(
                per_index::MAX_FAILED_INDEXES_EXCEEDED,
                per_index::MAX_FAILED_INDEXES_MESSAGE
            ))
        );
    }

    #[test]
    fn indexed_jobs_fill_the_lowest_free_indexes_and_drop_duplicates() {
        let none = HashSet::new();
        let now = at(NOW);
        let mut j = job(Some(4), 3);
        if let Some(spec) = j.spec.as_mut() {
            spec.completion_mode = Some("Indexed".into());
        }
        let j = with_status(
            j,
            JobStatus {
                completed_indexes: Some("0".into()),
                succeeded: Some(1),
                ..JobStatus::default()
            },
        );
        let done2 = at_index(tracked("done2", "Succeeded"), 2);
        let run1 = at_index(tracked("run1", "Running"), 1);
        let pods = [&done2, &run1];
        let a = assess(&view(&j, &pods, &none), Record::default());
        assert_eq!((a.succeeded, a.indexes.to_string()), (2, "0,2".to_owned()));
        assert_eq!(
            manage(&j, &a, &pods, now),
            Manage::Create {
                count: 1,
                indexes: vec![3],
                failure_counts: vec![]
            }
        );
        let twin = at_index(tracked("twin", "Pending"), 1);
        let pods = [&done2, &run1, &twin];
        let a = assess(&view(&j, &pods, &none), Record::default());
        match manage(&j, &a, &pods, now) {
            Manage::Delete(doomed) => assert_eq!(names(&doomed), vec!["twin"]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tracking_counts_through_the_uncounted_lists() {
        let j = job(Some(3), 3);
        let ok = tracked("ok", "Succeeded");
        let bad = tracked("bad", "Failed");
        let running = tracked("run", "Running");
        let pods = [&ok, &bad, &running];
        let none = HashSet::new();
        let v = view(&j, &pods, &none);
        let a = assess(&v, Record::default());
        let mut status = a.status.clone();
        let t = track(&v, &mut status, &a, None);
        assert_eq!(names(&t.remove), vec!["ok", "bad"]);
        let lists = status.uncounted_terminated_pods.clone().expect("lists");
        assert_eq!(lists.succeeded, Some(vec!["uid-ok".to_owned()]));
        assert_eq!(lists.failed, Some(vec!["uid-bad".to_owned()]));

        // Next sync: the finalizers are gone (removal expected, or seen): the uids count.
        let j = with_status(j, status);
        let expected: HashSet<String> = ["uid-ok".to_owned(), "uid-bad".to_owned()].into();
        let v = view(&j, &pods, &expected);
        let a = assess(&v, Record::default());
        assert_eq!((a.succeeded, a.failed), (1, 1), "counted once");
        let mut status = a.status.clone();
        let t = track(&v, &mut status, &a, None);
        assert!(t.remove.is_empty());
        assert_eq!((status.succeeded, status.failed), (Some(1), Some(1)));
        assert!(Uncounted::of(Some(&status)).is_empty());
    }

    #[test]
    fn a_failing_job_counts_its_unfinished_pods_and_fails_in_two_steps() {
        let mut j = job(Some(3), 2);
        if let Some(spec) = j.spec.as_mut() {
            spec.backoff_limit = Some(0);
        }
        let bad = tracked("bad", "Failed");
        let running = tracked("run", "Running");
        let pods = [&bad, &running];
        let none = HashSet::new();
        let v = view(&j, &pods, &none);
        let a = assess(&v, Record::default());
        let finish = a.finish.clone().expect("over the limit");
        let mut status = a.status.clone();
        let t = track(&v, &mut status, &a, Some(&finish));
        assert_eq!(names(&t.remove), vec!["bad", "run"]);
        let types: Vec<&str> = status
            .conditions
            .iter()
            .flatten()
            .map(|c| c.type_.as_str())
            .collect();
        assert_eq!(types, vec![FAILURE_TARGET]);
        assert_eq!(
            status
                .uncounted_terminated_pods
                .as_ref()
                .and_then(|u| u.failed.clone()),
            Some(vec!["uid-bad".to_owned(), "uid-run".to_owned()])
        );
        // Not while pods are uncounted or terminating.
        assert!(!enact(&mut status.clone(), &finish, 0, at(NOW)));
        let removed: HashSet<String> = HashSet::new();
        clean_uncounted(&mut status, &removed);
        assert!(!enact(&mut status.clone(), &finish, 1, at(NOW)));
        assert!(enact(&mut status, &finish, 0, at(NOW)));
        let failed = condition(Some(&status), FAILED).expect("Failed");
        assert_eq!(
            (failed.reason.as_deref(), failed.message.as_deref()),
            (Some(BACKOFF_LIMIT_EXCEEDED), Some(BACKOFF_LIMIT_MESSAGE))
        );
        assert_eq!(status.failed, Some(2));
        assert_eq!(status.completion_time, None);
    }

    #[test]
    fn success_is_criteria_met_then_complete_with_a_completion_time() {
        let j = job(Some(1), 1);
        let ok = untracked(tracked("ok", "Succeeded"));
        let pods = [&ok];
        let none = HashSet::new();
        let j2 = with_status(
            j,
            JobStatus {
                succeeded: Some(1),
                start_time: Some(Time(at(NOW - 60))),
                ..JobStatus::default()
            },
        );
        let v2 = view(&j2, &pods, &none);
        let a = assess(&v2, Record::default());
        assert!(complete(&j2, a.succeeded, 0));
        let finish = Finish::success();
        let mut status = a.status.clone();
        track(&v2, &mut status, &a, Some(&finish));
        let interim = condition(Some(&status), SUCCESS_CRITERIA_MET).expect("interim");
        assert_eq!(interim.reason.as_deref(), Some(COMPLETIONS_REACHED));
        assert!(
            condition(Some(&status), COMPLETE).is_none(),
            "not in the same write"
        );
        assert!(enact(&mut status, &finish, 0, at(NOW)));
        let done = condition(Some(&status), COMPLETE).expect("Complete");
        assert_eq!(done.reason.as_deref(), Some(COMPLETIONS_REACHED));
        assert_eq!(status.completion_time, Some(Time(at(NOW))));
        assert_eq!(status.start_time, Some(Time(at(NOW - 60))));
    }

    #[test]
    fn suspending_clears_the_start_and_resuming_restarts_it() {
        let mut status = JobStatus {
            start_time: Some(Time(at(NOW - 100))),
            ..JobStatus::default()
        };
        assert_eq!(
            suspension(&mut status, false, at(NOW)),
            None,
            "never suspended"
        );
        assert_eq!(
            suspension(&mut status, true, at(NOW)),
            Some(Suspension::Suspended)
        );
        assert_eq!(status.start_time, None);
        assert_eq!(suspension(&mut status, true, at(NOW)), None);
        assert_eq!(
            suspension(&mut status, false, at(NOW + 5)),
            Some(Suspension::Resumed)
        );
        assert_eq!(status.start_time, Some(Time(at(NOW + 5))));
        let c = condition(Some(&status), SUSPENDED).expect("kept");
        assert_eq!(
            (c.status.as_str(), c.reason.as_deref()),
            ("False", Some("JobResumed"))
        );
    }

    #[test]
    fn statuses_compare_as_the_api_server_stores_them() {
        let written = JobStatus {
            active: Some(0),
            succeeded: Some(0),
            ready: Some(0),
            uncounted_terminated_pods: Some(UncountedTerminatedPods {
                succeeded: Some(Vec::new()),
                failed: None,
            }),
            ..JobStatus::default()
        };
        let read = JobStatus {
            ready: Some(0),
            uncounted_terminated_pods: Some(UncountedTerminatedPods::default()),
            ..JobStatus::default()
        };
        assert_eq!(normalized(&written), normalized(&read));
        assert!(known_completion_mode(&job(None, 1)));
        let mut odd = job(None, 1);
        if let Some(spec) = odd.spec.as_mut() {
            spec.completion_mode = Some("Weird".into());
        }
        assert!(!known_completion_mode(&odd));
    }
}
