//! Job tracking with finalizers: a finished pod is counted by putting its uid in
//! `status.uncountedTerminatedPods`, then losing its `batch.kubernetes.io/job-tracking`
//! finalizer, then moving from the uncounted list to `succeeded` or `failed` — so that a pod
//! deleted at any moment is counted exactly once.
//!
//! Invariants: a uid enters the uncounted lists before its pod loses the finalizer (the
//! status write comes first), and leaves them, adding to a counter, only once its pod no
//! longer holds the finalizer (or is gone); a finalizer removal the pod watch has not shown
//! yet is expected ([`Removals`]), and such a pod is treated as already without it — else a
//! stale store would count it twice. An orphan (no Job controls it, or its Job is gone or
//! finished) loses the finalizer without being counted. Upstream:
//! `pkg/controller/job/job_controller.go` (`trackJobStatusAndRemoveFinalizers`,
//! `cleanUncountedPodsWithoutFinalizers`, `removeTrackingFinalizerPatch`, `syncOrphanPod`)
//! and `tracking_utils.go` (`uidTrackingExpectations`).

use std::collections::{HashMap, HashSet};

use k8s_openapi::api::batch::v1::{Job, JobStatus, UncountedTerminatedPods};
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

use super::plan::{is_finished, managed_here};
use super::pods::{FINALIZER, has_finalizer};
use crate::controllers::owner::{ObjectKey, controller_of};

/// The strategic merge patch that removes the tracking finalizer; the pod's uid makes it
/// apply only to the very pod read (a recreated one is refused as invalid).
pub fn remove_patch(pod_uid: &str) -> Value {
    json!({
        "metadata": {
            "$deleteFromPrimitiveList/finalizers": [FINALIZER],
            "uid": pod_uid,
        }
    })
}

/// The strategic merge patch that adds the tracking finalizer to an adopted pod.
pub fn add_patch(pod_uid: &str) -> Value {
    json!({ "metadata": { "finalizers": [FINALIZER], "uid": pod_uid } })
}

/// Upstream's `cleanUncountedPodsWithoutFinalizers`: uids in the uncounted lists whose pod
/// no longer holds the finalizer (not in `with_finalizer`) move to the counters. Returns
/// whether anything moved.
pub fn clean_uncounted(status: &mut JobStatus, with_finalizer: &HashSet<String>) -> bool {
    let uncounted = status
        .uncounted_terminated_pods
        .get_or_insert_with(UncountedTerminatedPods::default);
    let mut moved = false;
    for (list, counter) in [
        (&mut uncounted.succeeded, &mut status.succeeded),
        (&mut uncounted.failed, &mut status.failed),
    ] {
        let before = list.as_ref().map_or(0, Vec::len);
        if let Some(uids) = list.as_mut() {
            uids.retain(|uid| with_finalizer.contains(uid));
        }
        let after = list.as_ref().map_or(0, Vec::len);
        if after < before {
            let gone = i32::try_from(before - after).unwrap_or(i32::MAX);
            *counter = Some(counter.unwrap_or(0).saturating_add(gone));
            moved = true;
        }
        if list.as_ref().is_some_and(Vec::is_empty) {
            *list = None;
        }
    }
    moved
}

/// The uncounted uids as sets.
#[derive(Debug, Default, Clone)]
pub struct Uncounted {
    pub succeeded: HashSet<String>,
    pub failed: HashSet<String>,
}

impl Uncounted {
    pub fn of(status: Option<&JobStatus>) -> Self {
        let lists = status.and_then(|s| s.uncounted_terminated_pods.as_ref());
        let set = |l: Option<&Vec<String>>| l.into_iter().flatten().cloned().collect();
        Uncounted {
            succeeded: set(lists.and_then(|u| u.succeeded.as_ref())),
            failed: set(lists.and_then(|u| u.failed.as_ref())),
        }
    }

    pub fn len(&self) -> usize {
        self.succeeded.len() + self.failed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Finalizer removals written but not yet shown by the pod watch, by Job.
#[derive(Debug, Default)]
pub struct Removals {
    by_job: HashMap<ObjectKey, HashSet<String>>,
    job_of: HashMap<String, ObjectKey>,
}

impl Removals {
    pub fn expect(&mut self, job: &ObjectKey, uids: impl IntoIterator<Item = String>) {
        for uid in uids {
            self.job_of.insert(uid.clone(), job.clone());
            self.by_job.entry(job.clone()).or_default().insert(uid);
        }
    }

    /// The watch showed the pod without the finalizer, or gone.
    pub fn observe(&mut self, uid: &str) {
        let Some(job) = self.job_of.remove(uid) else {
            return;
        };
        if let Some(uids) = self.by_job.get_mut(&job) {
            uids.remove(uid);
            if uids.is_empty() {
                self.by_job.remove(&job);
            }
        }
    }

    pub fn of(&self, job: &ObjectKey) -> HashSet<String> {
        self.by_job.get(job).cloned().unwrap_or_default()
    }

    /// The Job is gone.
    pub fn forget(&mut self, job: &ObjectKey) {
        for uid in self.by_job.remove(job).unwrap_or_default() {
            self.job_of.remove(&uid);
        }
    }
}

/// Upstream's `syncOrphanPod` decision: whether the pod's tracking finalizer should go
/// because no live Job counts it — it has no controller, or its controller is a batch/v1
/// Job that is gone (`job` None or another uid) or finished. A Job managed by another
/// controller keeps its pods' finalizers; a pod with another kind of controller is not ours.
pub fn is_orphan(pod: &Pod, job: Option<&Job>) -> bool {
    if !has_finalizer(pod) {
        return false;
    }
    let Some(reference) = controller_of(&pod.metadata) else {
        return true;
    };
    if reference.kind != "Job" || reference.api_version != "batch/v1" {
        return false;
    }
    match job.filter(|j| j.metadata.uid.as_deref() == Some(reference.uid.as_str())) {
        None => true,
        Some(job) if !managed_here(job) => false,
        Some(job) => is_finished(job),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::batch::v1::JobCondition;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    use super::super::pods::tests::job;
    use super::*;
    use crate::controllers::replicaset::pods::tests::pod;

    fn uids(list: &[&str]) -> Option<Vec<String>> {
        Some(list.iter().map(|s| (*s).to_owned()).collect())
    }

    #[test]
    fn uncounted_uids_move_to_the_counters_once_their_finalizer_is_gone() {
        let mut status = JobStatus {
            succeeded: Some(2),
            failed: None,
            uncounted_terminated_pods: Some(UncountedTerminatedPods {
                succeeded: uids(&["s1", "s2"]),
                failed: uids(&["f1"]),
            }),
            ..JobStatus::default()
        };
        let with: HashSet<String> = ["s2".to_owned()].into();
        assert!(clean_uncounted(&mut status, &with));
        assert_eq!((status.succeeded, status.failed), (Some(3), Some(1)));
        let uncounted = status.uncounted_terminated_pods.clone().expect("lists");
        assert_eq!(
            (uncounted.succeeded, uncounted.failed),
            (uids(&["s2"]), None)
        );
        assert!(!clean_uncounted(&mut status, &with), "nothing more to move");
    }

    #[test]
    fn removals_are_expected_until_observed() {
        let pi = ObjectKey::new("shop", "pi");
        let mut r = Removals::default();
        r.expect(&pi, ["a".to_owned(), "b".to_owned()]);
        r.observe("a");
        assert_eq!(r.of(&pi), HashSet::from(["b".to_owned()]));
        r.observe("zzz");
        r.forget(&pi);
        assert!(r.of(&pi).is_empty());
        r.observe("b");
    }

    #[test]
    fn orphans_lose_the_finalizer_and_counted_pods_keep_it() {
        let with_finalizer = |controller: Option<(&str, &str)>| {
            let mut p = pod("p", "n1", "Succeeded", None, 0);
            p.metadata.finalizers = Some(vec![FINALIZER.to_owned()]);
            p.metadata.owner_references = controller.map(|(kind, uid)| {
                vec![OwnerReference {
                    api_version: if kind == "Job" { "batch/v1" } else { "apps/v1" }.into(),
                    kind: kind.into(),
                    name: "pi".into(),
                    uid: uid.into(),
                    controller: Some(true),
                    block_owner_deletion: Some(true),
                }]
            });
            p
        };
        let live = job(Some(1), 1);
        let mut finished = live.clone();
        finished.status = Some(JobStatus {
            conditions: Some(vec![JobCondition {
                type_: "Complete".into(),
                status: "True".into(),
                ..JobCondition::default()
            }]),
            ..JobStatus::default()
        });
        let mut elsewhere = live.clone();
        if let Some(spec) = elsewhere.spec.as_mut() {
            spec.managed_by = Some("example.com/batch".into());
        }
        // (pod, job in the store, orphan)
        let cases = [
            (with_finalizer(None), None, true),
            (with_finalizer(Some(("Job", "uid-pi"))), Some(&live), false),
            (
                with_finalizer(Some(("Job", "uid-pi"))),
                Some(&finished),
                true,
            ),
            (with_finalizer(Some(("Job", "uid-pi"))), None, true),
            (with_finalizer(Some(("Job", "uid-old"))), Some(&live), true),
            (
                with_finalizer(Some(("Job", "uid-pi"))),
                Some(&elsewhere),
                false,
            ),
            (with_finalizer(Some(("ReplicaSet", "uid-rs"))), None, false),
            (pod("bare", "n1", "Running", None, 0), None, false),
        ];
        for (i, (p, j, want)) in cases.into_iter().enumerate() {
            assert_eq!(is_orphan(&p, j), want, "case {i}");
        }
        assert_eq!(
            remove_patch("uid-p"),
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": [FINALIZER], "uid": "uid-p"}})
        );
    }
}
