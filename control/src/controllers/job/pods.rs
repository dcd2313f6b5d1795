//! Pods as the Job controller sees them: the pod a Job creates (its labels, the tracking
//! finalizer, the completion index of an Indexed Job), and when a pod counts as failed or
//! finished.
//!
//! Invariants: every pod a Job creates carries the `batch.kubernetes.io/job-tracking`
//! finalizer, so that it cannot vanish before the Job has counted it; it carries the Job's
//! labels (`batch.kubernetes.io/controller-uid`, `batch.kubernetes.io/job-name` and the legacy
//! `controller-uid`, `job-name`), which the API server puts on the template of a Job with a
//! generated selector and which are added here for one with a manual selector too; an Indexed
//! Job's pod carries its index as annotation and label, a hostname `<job>-<index>` and the
//! `JOB_COMPLETION_INDEX` variable. A pod is failed when its phase is Failed, or when it is
//! being deleted before succeeding — unless only failed pods are replaced, when it must
//! reach Failed. Upstream: `pkg/controller/job/job_controller.go` (`isPodFailed`,
//! `manageJob`), `pkg/controller/job/backoff_utils.go` (`getFinishedTime`) and the Job API
//! strategy (`pkg/registry/batch/job/strategy.go`, `generateSelector`).

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;

use super::indexes::{self, COMPLETION_INDEX};
use super::pod_control::from_template;

/// The finalizer that keeps a pod until its Job has counted it.
pub const FINALIZER: &str = "batch.kubernetes.io/job-tracking";
pub const CONTROLLER_UID: &str = "batch.kubernetes.io/controller-uid";
pub const JOB_NAME: &str = "batch.kubernetes.io/job-name";
pub const LEGACY_CONTROLLER_UID: &str = "controller-uid";
pub const LEGACY_JOB_NAME: &str = "job-name";

pub fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default()
}

pub fn has_finalizer(pod: &Pod) -> bool {
    pod.metadata
        .finalizers
        .as_ref()
        .is_some_and(|f| f.iter().any(|f| f == FINALIZER))
}

pub fn succeeded(pod: &Pod) -> bool {
    phase(pod) == "Succeeded"
}

/// Upstream's `isPodFailed`: Failed, or — when terminating pods are replaced at once, the
/// default — deleted before succeeding (an orphaned pod may never reach Failed).
pub fn is_failed(pod: &Pod, only_replace_failed: bool) -> bool {
    match phase(pod) {
        "Failed" => true,
        "Succeeded" => false,
        _ => !only_replace_failed && pod.metadata.deletion_timestamp.is_some(),
    }
}

/// Upstream's `getFinishedTime`, near enough: when the last container finished, else when
/// the pod stopped being ready, else when it was deleted; None if the pod does not say.
pub fn finished_at(pod: &Pod) -> Option<Timestamp> {
    let status = pod.status.as_ref()?;
    let from_containers = status
        .container_statuses
        .iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(|t| t.0)
        .max();
    let from_ready = || {
        status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Ready" && c.status == "False")
            .and_then(|c| c.last_transition_time.as_ref())
            .map(|t| t.0)
    };
    from_containers
        .or_else(from_ready)
        .or_else(|| pod.metadata.deletion_timestamp.as_ref().map(|t| t.0))
}

/// The pod `job` creates, before any completion index: its template with the Job's labels,
/// the tracking finalizer and, for an Indexed Job, the index variable. None for a Job not
/// read from the API server.
pub fn template(job: &Job) -> Option<Pod> {
    let mut template = job.spec.as_ref()?.template.clone();
    let indexed = super::plan::is_indexed(job);
    let meta = template.metadata.get_or_insert_with(Default::default);
    let labels = meta.labels.get_or_insert_with(BTreeMap::new);
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let name = job.metadata.name.clone().unwrap_or_default();
    for (key, value) in [
        (CONTROLLER_UID, &uid),
        (JOB_NAME, &name),
        (LEGACY_CONTROLLER_UID, &uid),
        (LEGACY_JOB_NAME, &name),
    ] {
        labels
            .entry(key.to_owned())
            .or_insert_with(|| value.clone());
    }
    let finalizers = meta.finalizers.get_or_insert_with(Vec::new);
    if !finalizers.iter().any(|f| f == FINALIZER) {
        finalizers.push(FINALIZER.to_owned());
    }
    if indexed && let Some(spec) = template.spec.as_mut() {
        indexes::add_env(spec);
    }
    from_template(job, &template)
}

/// The pod for one completion index: `base` (from [`template`]) with the index as
/// annotation and label, hostname `<job>-<index>` and name prefix `<job>-<index>-`.
pub fn for_index(base: &Pod, job: &str, index: i32) -> Pod {
    let mut pod = base.clone();
    let value = index.to_string();
    pod.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(COMPLETION_INDEX.to_owned(), value.clone());
    pod.metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(COMPLETION_INDEX.to_owned(), value);
    pod.metadata.generate_name = Some(indexes::generate_name(job, index));
    if let Some(spec) = pod.spec.as_mut() {
        spec.hostname = Some(format!("{job}-{index}"));
    }
    pod
}

#[cfg(test)]
pub(crate) mod tests {
    use k8s_openapi::api::batch::v1::JobSpec;
    use k8s_openapi::api::core::v1::{
        Container, ContainerState, ContainerStateTerminated, ContainerStatus, PodSpec,
        PodTemplateSpec,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
    use kube::api::ObjectMeta;

    use super::*;
    use crate::controllers::replicaset::pods::tests::{at, pod};

    /// A Job as the API server stores it: generated selector and template labels.
    pub fn job(completions: Option<i32>, parallelism: i32) -> Job {
        let labels = BTreeMap::from([
            (CONTROLLER_UID.to_owned(), "uid-pi".to_owned()),
            (JOB_NAME.to_owned(), "pi".to_owned()),
        ]);
        Job {
            metadata: ObjectMeta {
                name: Some("pi".into()),
                namespace: Some("shop".into()),
                uid: Some("uid-pi".into()),
                generation: Some(1),
                resource_version: Some("7".into()),
                ..ObjectMeta::default()
            },
            spec: Some(JobSpec {
                completions,
                parallelism: Some(parallelism),
                backoff_limit: Some(6),
                selector: Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([(
                        CONTROLLER_UID.to_owned(),
                        "uid-pi".to_owned(),
                    )])),
                    ..LabelSelector::default()
                }),
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(labels),
                        ..ObjectMeta::default()
                    }),
                    spec: Some(PodSpec {
                        containers: vec![Container {
                            name: "pi".into(),
                            image: Some("perl".into()),
                            ..Container::default()
                        }],
                        restart_policy: Some("Never".into()),
                        ..PodSpec::default()
                    }),
                },
                ..JobSpec::default()
            }),
            status: None,
        }
    }

    #[test]
    fn created_pods_carry_the_labels_the_finalizer_and_the_index() {
        let mut indexed = job(Some(3), 2);
        if let Some(spec) = indexed.spec.as_mut() {
            spec.completion_mode = Some("Indexed".into());
        }
        let base = template(&indexed).expect("a uid");
        let labels = base.metadata.labels.clone().expect("labels");
        for (key, want) in [
            (CONTROLLER_UID, "uid-pi"),
            (JOB_NAME, "pi"),
            (LEGACY_CONTROLLER_UID, "uid-pi"),
            (LEGACY_JOB_NAME, "pi"),
        ] {
            assert_eq!(labels.get(key).map(String::as_str), Some(want), "{key}");
        }
        assert_eq!(base.metadata.finalizers, Some(vec![FINALIZER.to_owned()]));
        assert_eq!(base.metadata.generate_name.as_deref(), Some("pi-"));
        let env = base.spec.as_ref().expect("spec").containers[0]
            .env
            .clone()
            .expect("env");
        assert_eq!(env[0].name, indexes::ENV);

        let second = for_index(&base, "pi", 2);
        assert_eq!(second.metadata.generate_name.as_deref(), Some("pi-2-"));
        assert_eq!(
            second
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(COMPLETION_INDEX))
                .map(String::as_str),
            Some("2")
        );
        assert_eq!(
            second
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(COMPLETION_INDEX))
                .map(String::as_str),
            Some("2")
        );
        assert_eq!(
            second.spec.and_then(|s| s.hostname).as_deref(),
            Some("pi-2")
        );

        let plain = template(&job(Some(1), 1)).expect("a uid");
        assert!(plain.spec.expect("spec").containers[0].env.is_none());
    }

    #[test]
    fn failure_and_finish_times() {
        let mut deleting = pod("a", "n1", "Running", None, 0);
        deleting.metadata.deletion_timestamp = Some(Time(at(50)));
        // (pod, only failed pods replaced, failed)
        let cases = [
            (pod("f", "n1", "Failed", None, 0), false, true),
            (pod("s", "n1", "Succeeded", None, 0), false, false),
            (pod("r", "n1", "Running", None, 0), false, false),
            (deleting.clone(), false, true),
            (deleting.clone(), true, false),
        ];
        for (p, only_failed, want) in cases {
            assert_eq!(is_failed(&p, only_failed), want, "{:?}", p.metadata.name);
        }
        assert_eq!(finished_at(&deleting), Some(at(50)));
        let mut done = pod("d", "n1", "Failed", None, 0);
        if let Some(status) = done.status.as_mut() {
            status.container_statuses = Some(vec![ContainerStatus {
                name: "main".into(),
                state: Some(ContainerState {
                    terminated: Some(ContainerStateTerminated {
                        finished_at: Some(Time(at(70))),
                        ..ContainerStateTerminated::default()
                    }),
                    ..ContainerState::default()
                }),
                ..ContainerStatus::default()
            }]);
        }
        assert_eq!(finished_at(&done), Some(at(70)));
    }
}
