//! TTL after finished: a finished Job with `ttlSecondsAfterFinished` is deleted that long
//! after it finished.
//!
//! Invariants: a Job expires at the lastTransitionTime of its True Complete or Failed
//! condition plus its TTL; one not finished, without a TTL, without a finish time or being
//! deleted never expires; before deleting, a fresh read must still be the same Job and still
//! expired (the TTL may have been changed), and the delete is conditional on its uid. The
//! Job is deleted with propagationPolicy Background, so that it goes at once and the garbage
//! collector deletes its pods after; upstream's TTL controller uses Foreground (the Job stays,
//! being deleted, until its pods are gone). Upstream: `pkg/controller/ttlafterfinished`
//! (`processJob`, `processTTL`, `jobFinishTime`).

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::PropagationPolicy;

use super::plan::{COMPLETE, FAILED, condition};

/// How finished Jobs are deleted (see the module documentation).
pub const PROPAGATION: PropagationPolicy = PropagationPolicy::Background;

/// When the Job's TTL runs out; None if it never does.
pub fn expires_at(job: &Job) -> Option<Timestamp> {
    if job.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let ttl = job.spec.as_ref()?.ttl_seconds_after_finished?;
    let status = job.status.as_ref();
    let finished = [COMPLETE, FAILED]
        .into_iter()
        .filter_map(|type_| condition(status, type_))
        .find(|c| c.status == "True")?;
    finished
        .last_transition_time
        .as_ref()?
        .0
        .checked_add(SignedDuration::from_secs(i64::from(ttl)))
        .ok()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::super::pods::tests::job;
    use super::*;
    use crate::controllers::replicaset::pods::tests::{NOW, at};

    fn finished(type_: &str, ttl: Option<i32>, deleting: bool) -> Job {
        let mut j = job(Some(1), 1);
        if let Some(spec) = j.spec.as_mut() {
            spec.ttl_seconds_after_finished = ttl;
        }
        j.metadata.deletion_timestamp = deleting.then(|| Time(at(NOW)));
        j.status = Some(JobStatus {
            conditions: Some(vec![JobCondition {
                type_: type_.into(),
                status: "True".into(),
                last_transition_time: Some(Time(at(NOW))),
                ..JobCondition::default()
            }]),
            ..JobStatus::default()
        });
        j
    }

    #[test]
    fn finished_jobs_expire_their_ttl_after_finishing() {
        // (condition, ttl, being deleted, expiry)
        let cases = [
            (COMPLETE, Some(100), false, Some(at(NOW + 100))),
            (FAILED, Some(0), false, Some(at(NOW))),
            (COMPLETE, None, false, None),
            (COMPLETE, Some(100), true, None),
            ("SuccessCriteriaMet", Some(100), false, None),
        ];
        for (type_, ttl, deleting, want) in cases {
            assert_eq!(
                expires_at(&finished(type_, ttl, deleting)),
                want,
                "{type_} ttl {ttl:?} deleting {deleting}"
            );
        }
        assert_eq!(expires_at(&job(Some(1), 1)), None);
    }
}
