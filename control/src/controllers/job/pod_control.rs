//! Pod control: the pod writes of the Job and DaemonSet controllers and the events that say
//! so — the pod a template makes, creates in slow-start batches, deletes of one very pod.
//!
//! Invariants: a created pod is the ReplicaSet controller's recipe ([`rs_pods::from_template`]:
//! `<owner>-` name prefix, the template's labels, annotations, finalizers and spec) with the
//! caller as its controller; creates go in batches of 1, 2, 4, … and stop after the first
//! batch with a failure (a quota refusal costs one request, not hundreds); a delete is
//! conditional on the pod's uid, and one already gone or replaced is not an error; every
//! accepted or refused write is an event on the owner (SuccessfulCreate, FailedCreate,
//! SuccessfulDelete, FailedDelete, in upstream's words), each through its own recorder — kube's
//! shared recorder folds events of one reason into the first note. Upstream:
//! `pkg/controller/controller_utils.go` (`RealPodControl`, `GetPodFromTemplate`,
//! `SlowStartInitialBatchSize`).

use futures::future::join_all;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::{ObjectReference, Pod, PodTemplateSpec};
use kube::api::{DeleteParams, ObjectMeta, PostParams, Preconditions};
use kube::runtime::events::{Event as Note, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource, ResourceExt};
use tracing::debug;

use crate::controllers::owner::controller_ref;
use crate::controllers::replicaset::pods as rs_pods;
use crate::controllers::replicaset::{SLOW_START_INITIAL, api_message, slow_start};
use crate::controllers::{chain, namespace_terminating};

/// Records events for one controller.
#[derive(Clone)]
pub(crate) struct Notes {
    client: Client,
    reporter: Reporter,
}

impl std::fmt::Debug for Notes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notes")
            .field("reporter", &self.reporter)
            .finish()
    }
}

impl Notes {
    pub(crate) fn new(client: Client, reporter: &str) -> Self {
        Notes {
            client,
            reporter: Reporter::from(reporter),
        }
    }

    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// Records an event on `object`; a failure is logged, never retried.
    pub(crate) async fn record(
        &self,
        object: &ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let note = Note {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
        if let Err(err) = recorder.publish(&note, object).await {
            debug!(object = ?object.name, error = %chain(&err), "recording an event failed");
        }
    }
}

/// The pod `owner` makes from `template`; None for an owner not read from the API server
/// (no uid). The recipe is the ReplicaSet controller's, run on a stand-in that carries only
/// the owner's name, namespace and template; the controller reference is then the owner's.
pub(crate) fn from_template<K: Resource<DynamicType = ()>>(
    owner: &K,
    template: &PodTemplateSpec,
) -> Option<Pod> {
    let stand_in = ReplicaSet {
        metadata: ObjectMeta {
            name: owner.meta().name.clone(),
            namespace: owner.meta().namespace.clone(),
            uid: owner.meta().uid.clone(),
            ..ObjectMeta::default()
        },
        spec: ReplicaSetSpec {
            template: Some(template.clone()),
            ..ReplicaSetSpec::default()
        },
        status: None,
    };
    rs_pods::from_template(&stand_in, controller_ref(owner)?)
}

/// What a run of creates did: the pods made (by name) and the first refusal, if any.
#[derive(Debug, Default)]
pub(crate) struct Creation {
    pub created: Vec<String>,
    pub error: Option<kube::Error>,
}

/// Creates `pods` in slow-start batches, stopping after a batch with a refusal. Creates in
/// a namespace being deleted are dropped silently: the pods would go with it anyway.
pub(crate) async fn create_all(
    api: &Api<Pod>,
    notes: &Notes,
    owner: &ObjectReference,
    pods: Vec<Pod>,
) -> Creation {
    let mut out = Creation::default();
    let mut pods = pods.into_iter();
    for batch in slow_start(pods.len(), SLOW_START_INITIAL) {
        let chunk: Vec<Pod> = pods.by_ref().take(batch).collect();
        let results = join_all(chunk.iter().map(|pod| create(api, notes, owner, pod))).await;
        for result in results {
            match result {
                Ok(Some(name)) => out.created.push(name),
                Ok(None) => {}
                Err(err) => {
                    out.error.get_or_insert(err);
                }
            }
        }
        // The rest are not tried: they would most likely fail the same way.
        if out.error.is_some() {
            break;
        }
    }
    out
}

async fn create(
    api: &Api<Pod>,
    notes: &Notes,
    owner: &ObjectReference,
    pod: &Pod,
) -> Result<Option<String>, kube::Error> {
    match api.create(&PostParams::default(), pod).await {
        Ok(made) => {
            let name = made.name_any();
            let note = format!("Created pod: {name}");
            notes
                .record(owner, EventType::Normal, "SuccessfulCreate", "Create", note)
                .await;
            Ok(Some(name))
        }
        Err(err) if namespace_terminating(&err) => Ok(None),
        Err(err) => {
            let note = format!("Error creating: {}", api_message(&err));
            notes
                .record(owner, EventType::Warning, "FailedCreate", "Create", note)
                .await;
            Err(err)
        }
    }
}

/// Deletes that very pod (its uid): Ok(false) when it was gone or replaced already.
pub(crate) async fn delete(
    api: &Api<Pod>,
    notes: &Notes,
    owner: &ObjectReference,
    pod: &Pod,
) -> Result<bool, kube::Error> {
    let name = pod.name_any();
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: pod.metadata.uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(&name, &params).await {
        Ok(_) => {
            let note = format!("Deleted pod: {name}");
            notes
                .record(owner, EventType::Normal, "SuccessfulDelete", "Delete", note)
                .await;
            Ok(true)
        }
        Err(kube::Error::Api(s)) if s.is_not_found() || s.is_conflict() => Ok(false),
        Err(err) => {
            let note = format!("Error deleting: {}", api_message(&err));
            notes
                .record(owner, EventType::Warning, "FailedDelete", "Delete", note)
                .await;
            Err(err)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::batch::v1::Job;
    use k8s_openapi::api::core::v1::PodSpec;

    use super::*;

    #[test]
    fn a_template_makes_a_pod_controlled_by_its_owner() {
        let job = Job {
            metadata: ObjectMeta {
                name: Some("pi".into()),
                namespace: Some("batch".into()),
                uid: Some("uid-pi".into()),
                ..ObjectMeta::default()
            },
            ..Job::default()
        };
        let template = PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(BTreeMap::from([("app".to_owned(), "pi".to_owned())])),
                ..ObjectMeta::default()
            }),
            spec: Some(PodSpec::default()),
        };
        let pod = from_template(&job, &template).expect("a uid");
        assert_eq!(pod.metadata.generate_name.as_deref(), Some("pi-"));
        assert_eq!(pod.metadata.namespace.as_deref(), Some("batch"));
        assert_eq!(
            pod.metadata.labels,
            template.metadata.and_then(|m| m.labels)
        );
        let owner = &pod.metadata.owner_references.expect("controlled")[0];
        assert_eq!(
            (
                owner.api_version.as_str(),
                owner.kind.as_str(),
                owner.uid.as_str(),
                owner.controller,
                owner.block_owner_deletion,
            ),
            ("batch/v1", "Job", "uid-pi", Some(true), Some(true))
        );
        assert!(from_template(&Job::default(), &PodTemplateSpec::default()).is_none());
    }
}
