//! Bind: the scheduler's writes to the API server — the `pods/binding` subresource that
//! places a pod, the Scheduled event after it, for a pod that fits nowhere the
//! PodScheduled=False condition (and the node it was nominated to after preempting) and the
//! FailedScheduling warning, and for each pod preempted the DisruptionTarget condition, the
//! deletion and the Preempted event, with upstream's reasons, actions and messages. Events report as the scheduler's name (`default-scheduler`), as
//! upstream's do. The request bodies are built by pure functions, tested without a server.

use std::fmt;

use k8s_openapi::api::core::v1::{Binding, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource};
use serde_json::{Value, json};
use tracing::{debug, info, warn};

use super::cache::REASON_PREEMPTED;
use super::preemption::Victim;

/// Upstream's PodScheduled reasons.
pub const REASON_UNSCHEDULABLE: &str = "Unschedulable";
pub const REASON_SCHEDULER_ERROR: &str = "SchedulerError";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("binding pod {pod} to node {node}")]
    Bind {
        pod: String,
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("setting the PodScheduled condition of pod {pod}")]
    Condition {
        pod: String,
        #[source]
        source: kube::Error,
    },
    #[error("preempting pod {pod}")]
    Preempt {
        pod: String,
        #[source]
        source: kube::Error,
    },
}

impl Error {
    fn status(&self) -> Option<u16> {
        match self {
            Error::Bind {
                source: kube::Error::Api(status),
                ..
            }
            | Error::Condition {
                source: kube::Error::Api(status),
                ..
            }
            | Error::Preempt {
                source: kube::Error::Api(status),
                ..
            } => Some(status.code),
            _ => None,
        }
    }

    /// The pod no longer exists (or was replaced by one with another UID: the binding
    /// carries the UID, and the API server answers a mismatch with a conflict too, but only
    /// a 404 is certain).
    pub fn pod_gone(&self) -> bool {
        self.status() == Some(404)
    }

    /// The pod is already bound (by another scheduler, or an earlier attempt of ours whose
    /// reply was lost); the watcher will show where.
    pub fn already_bound(&self) -> bool {
        self.status() == Some(409)
    }
}

/// The binding for `pod` onto `node`. It carries the pod's UID so that a pod deleted and
/// recreated under the same name is not bound by a decision made for its predecessor.
pub fn binding(pod: &Pod, node: &str) -> Binding {
    Binding {
        metadata: ObjectMeta {
            name: pod.metadata.name.clone(),
            namespace: pod.metadata.namespace.clone(),
            uid: pod.metadata.uid.clone(),
            ..ObjectMeta::default()
        },
        target: ObjectReference {
            kind: Some("Node".into()),
            name: Some(node.to_owned()),
            ..ObjectReference::default()
        },
    }
}

/// The Scheduled event's message, as upstream writes it.
pub fn scheduled_message(pod: &Pod, node: &str) -> String {
    format!(
        "Successfully assigned {}/{} to {node}",
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

/// The strategic-merge patch that sets PodScheduled=False (and `status.nominatedNodeName`
/// when the pod has just preempted on that node), or `None` when the pod already says
/// exactly that (so a parked pod retried every few seconds does not rewrite its status each
/// time). The transition time moves only when the status changes.
pub fn condition_patch(
    pod: &Pod,
    reason: &str,
    message: &str,
    nominated: Option<&str>,
    now: Timestamp,
) -> Option<Value> {
    let status = pod.status.as_ref();
    let existing = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled"));
    let nominated_already = nominated
        .is_none_or(|node| status.and_then(|s| s.nominated_node_name.as_deref()) == Some(node));
    if let Some(c) = existing
        && c.status == "False"
        && c.reason.as_deref() == Some(reason)
        && c.message.as_deref() == Some(message)
        && nominated_already
    {
        return None;
    }
    let transition = existing
        .filter(|c| c.status == "False")
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    let mut patch = json!({
        "status": {
            "conditions": [{
                "type": "PodScheduled",
                "status": "False",
                "reason": reason,
                "message": message,
                "lastProbeTime": null,
                "lastTransitionTime": transition,
            }]
        }
    });
    if let Some(node) = nominated {
        patch["status"]["nominatedNodeName"] = json!(node);
    }
    Some(patch)
}

/// The strategic-merge patch that marks a pod DisruptionTarget=True because `scheduler`
/// preempts it (upstream's condition, word for word).
pub fn disruption_patch(scheduler: &str, generation: Option<i64>, now: Timestamp) -> Value {
    let mut condition = json!({
        "type": "DisruptionTarget",
        "status": "True",
        "reason": REASON_PREEMPTED,
        "message": format!("{scheduler}: preempting to accommodate a higher priority pod"),
        "lastTransitionTime": Time(now),
    });
    if let Some(generation) = generation {
        condition["observedGeneration"] = json!(generation);
    }
    json!({"status": {"conditions": [condition]}})
}

/// The Preempted event's message on a victim, as upstream writes it.
pub fn preempted_message(preemptor: &Pod, node: &str) -> String {
    format!(
        "Preempted by pod {} on node {node}",
        preemptor.metadata.uid.as_deref().unwrap_or_default()
    )
}

/// Writes bindings, conditions and events. Cheap to clone.
#[derive(Clone)]
pub struct Writer {
    client: Client,
    recorder: Recorder,
    scheduler: String,
}

impl fmt::Debug for Writer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Writer").finish_non_exhaustive()
    }
}

fn pod_name(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

impl Writer {
    /// `instance` tells replicas apart in events (upstream: `<scheduler>-<hostname>`).
    pub fn new(client: Client, scheduler_name: &str, instance: Option<String>) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: scheduler_name.to_owned(),
                instance,
            },
        );
        Self {
            client,
            recorder,
            scheduler: scheduler_name.to_owned(),
        }
    }

    fn pods(&self, pod: &Pod) -> Api<Pod> {
        Api::namespaced(
            self.client.clone(),
            pod.metadata.namespace.as_deref().unwrap_or("default"),
        )
    }

    /// Binds the pod to the node through `pods/binding`.
    pub async fn bind(&self, pod: &Pod, node: &str) -> Result<(), Error> {
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        // The reply is a Status, not a Binding; nothing in it is needed.
        self.pods(pod)
            .create_subresource::<_, Value>(
                "binding",
                name,
                &PostParams::default(),
                &binding(pod, node),
            )
            .await
            .map(drop)
            .map_err(|source| Error::Bind {
                pod: pod_name(pod),
                node: node.to_owned(),
                source,
            })
    }

    /// The Scheduled event; a failure to record it is logged, never retried.
    pub async fn scheduled(&self, pod: &Pod, node: &str) {
        self.event(
            pod,
            EventType::Normal,
            "Scheduled",
            "Binding",
            scheduled_message(pod, node),
        )
        .await;
    }

    /// PodScheduled=False with `reason` (and the nominated node, if any) and the
    /// FailedScheduling warning with `message`.
    pub async fn failed(&self, pod: &Pod, reason: &str, message: &str, nominated: Option<&str>) {
        if let Some(patch) = condition_patch(pod, reason, message, nominated, Timestamp::now()) {
            let name = pod.metadata.name.as_deref().unwrap_or_default();
            let result = self
                .pods(pod)
                .patch_status(name, &PatchParams::default(), &Patch::Strategic(patch))
                .await
                .map_err(|source| Error::Condition {
                    pod: pod_name(pod),
                    source,
                });
            match result {
                Ok(_) => {}
                Err(err) if err.pod_gone() => {
                    debug!(pod = %pod_name(pod), "pod gone before its condition was set")
                }
                Err(err) => warn!(error = %err, "not retried: the next attempt writes it again"),
            }
        }
        self.event(
            pod,
            EventType::Warning,
            "FailedScheduling",
            "Scheduling",
            message.to_owned(),
        )
        .await;
    }

    /// Evicts a victim for `preemptor`: DisruptionTarget first (so whoever sees it go knows
    /// why), then the deletion, only of that very pod (its UID), then the Preempted event. A
    /// victim already gone is not an error.
    pub async fn preempt(&self, victim: &Victim, preemptor: &Pod, node: &str) -> Result<(), Error> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), victim.namespace());
        let failed = |source| Error::Preempt {
            pod: victim.key.clone(),
            source,
        };
        let patch = disruption_patch(&self.scheduler, victim.generation, Timestamp::now());
        let marked = pods
            .patch_status(
                victim.name(),
                &PatchParams::default(),
                &Patch::Strategic(patch),
            )
            .await
            .map_err(failed);
        match marked {
            Err(err) if err.pod_gone() => return Ok(()),
            other => other.map(drop)?,
        }
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: victim.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match pods.delete(victim.name(), &params).await.map_err(failed) {
            // Gone, or replaced by a pod of the same name (the UID precondition): done.
            Err(err) if err.pod_gone() || err.status() == Some(409) => return Ok(()),
            other => other.map(drop)?,
        }
        info!(victim = %victim.key, preemptor = %pod_name(preemptor), %node, "preempted");
        let reference = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            namespace: Some(victim.namespace().to_owned()),
            name: Some(victim.name().to_owned()),
            uid: victim.uid.clone(),
            ..ObjectReference::default()
        };
        let event = Event {
            type_: EventType::Normal,
            reason: "Preempted".into(),
            note: Some(preempted_message(preemptor, node)),
            action: "Preempting".into(),
            secondary: Some(preemptor.object_ref(&())),
        };
        if let Err(err) = self.recorder.publish(&event, &reference).await {
            warn!(pod = %victim.key, error = %err, "recording event failed");
        }
        Ok(())
    }

    async fn event(&self, pod: &Pod, type_: EventType, reason: &str, action: &str, note: String) {
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: action.to_owned(),
            secondary: None,
        };
        if let Err(err) = self.recorder.publish(&event, &pod.object_ref(&())).await {
            warn!(pod = %pod_name(pod), reason, error = %err, "recording event failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};

    use super::*;

    fn pod() -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("shop".into()),
                uid: Some("u-1".into()),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        }
    }

    #[test]
    fn binding_targets_the_node_and_carries_the_uid() {
        let value = serde_json::to_value(binding(&pod(), "n1")).expect("serialises");
        assert_eq!(
            value,
            json!({
                "apiVersion": "v1",
                "kind": "Binding",
                "metadata": {"name": "web", "namespace": "shop", "uid": "u-1"},
                "target": {"kind": "Node", "name": "n1"},
            })
        );
        assert_eq!(
            scheduled_message(&pod(), "n1"),
            "Successfully assigned shop/web to n1"
        );
    }

    #[test]
    fn condition_is_written_only_when_it_changes() {
        let now = Timestamp::from_second(1_000).expect("valid");
        let earlier = Timestamp::from_second(10).expect("valid");
        let patch = condition_patch(
            &pod(),
            REASON_UNSCHEDULABLE,
            "0/1 nodes are available",
            None,
            now,
        )
        .expect("first write");
        assert_eq!(
            patch["status"]["conditions"][0],
            json!({
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/1 nodes are available",
                "lastProbeTime": null,
                "lastTransitionTime": "1970-01-01T00:16:40Z",
            })
        );

        let mut parked = pod();
        parked.status = Some(PodStatus {
            conditions: Some(vec![PodCondition {
                type_: "PodScheduled".into(),
                status: "False".into(),
                reason: Some(REASON_UNSCHEDULABLE.into()),
                message: Some("0/1 nodes are available".into()),
                last_transition_time: Some(Time(earlier)),
                ..PodCondition::default()
            }]),
            ..PodStatus::default()
        });
        assert_eq!(
            condition_patch(
                &parked,
                REASON_UNSCHEDULABLE,
                "0/1 nodes are available",
                None,
                now
            ),
            None
        );
        // A new message keeps the time the pod became unschedulable.
        let patch = condition_patch(
            &parked,
            REASON_UNSCHEDULABLE,
            "0/2 nodes are available",
            None,
            now,
        )
        .expect("message changed");
        assert_eq!(
            patch["status"]["conditions"][0]["lastTransitionTime"],
            json!("1970-01-01T00:00:10Z")
        );
        assert!(patch["status"].get("nominatedNodeName").is_none());

        // Nominated after preempting: written although the condition says the same.
        let patch = condition_patch(
            &parked,
            REASON_UNSCHEDULABLE,
            "0/1 nodes are available",
            Some("n1"),
            now,
        )
        .expect("nomination is new");
        assert_eq!(patch["status"]["nominatedNodeName"], "n1");
        if let Some(status) = parked.status.as_mut() {
            status.nominated_node_name = Some("n1".into());
        }
        assert_eq!(
            condition_patch(
                &parked,
                REASON_UNSCHEDULABLE,
                "0/1 nodes are available",
                Some("n1"),
                now
            ),
            None
        );
    }

    #[test]
    fn a_victim_is_told_who_preempted_it_and_why() {
        let now = Timestamp::from_second(1_000).expect("valid");
        assert_eq!(
            disruption_patch("default-scheduler", Some(3), now),
            json!({"status": {"conditions": [{
                "type": "DisruptionTarget",
                "status": "True",
                "reason": "PreemptionByScheduler",
                "message": "default-scheduler: preempting to accommodate a higher priority pod",
                "lastTransitionTime": "1970-01-01T00:16:40Z",
                "observedGeneration": 3,
            }]}})
        );
        assert_eq!(
            preempted_message(&pod(), "n1"),
            "Preempted by pod u-1 on node n1"
        );
    }
}
