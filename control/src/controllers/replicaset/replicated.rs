//! Replicated kinds: what the ReplicaSet controller keeps at a number of pods — ReplicaSets,
//! and ReplicationControllers, the core kind they replaced, seen as the ReplicaSet they stand
//! for (upstream runs its ReplicaSet controller over converted ReplicationControllers too,
//! `pkg/controller/replication/conversion.go`).
//!
//! Invariant: the conversion keeps the metadata (name, uid, generation, resourceVersion,
//! owners, deletion) as it is, so that owner references, claims and conditional writes made
//! from the converted object name the real one; a ReplicationController's map selector is the
//! ReplicaSet's `matchLabels`.

use std::fmt::Debug;

use k8s_openapi::api::apps::v1::{
    ReplicaSet, ReplicaSetCondition, ReplicaSetSpec, ReplicaSetStatus,
};
use k8s_openapi::api::core::v1::{
    ReplicationController, ReplicationControllerCondition, ReplicationControllerStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::Resource;
use kube::core::NamespaceResourceScope;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A kind the ReplicaSet controller runs.
pub trait Replicated:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Serialize
    + DeserializeOwned
    + Debug
    + Send
    + Sync
    + 'static
{
    /// The name its controller reports events under, as upstream's.
    const REPORTER: &'static str;
    /// Its kind, as logs and errors name it.
    const KIND: &'static str;

    /// The ReplicaSet it stands for: the same metadata, selector, template, replicas and
    /// status.
    fn replica_set(&self) -> ReplicaSet;

    /// Itself with the status computed for its ReplicaSet.
    fn with_status(&self, status: ReplicaSetStatus) -> Self;
}

impl Replicated for ReplicaSet {
    const REPORTER: &'static str = "replicaset-controller";
    const KIND: &'static str = "ReplicaSet";

    fn replica_set(&self) -> ReplicaSet {
        self.clone()
    }

    fn with_status(&self, status: ReplicaSetStatus) -> Self {
        let mut updated = self.clone();
        updated.status = Some(status);
        updated
    }
}

impl Replicated for ReplicationController {
    const REPORTER: &'static str = "replication-controller";
    const KIND: &'static str = "ReplicationController";

    fn replica_set(&self) -> ReplicaSet {
        let spec = self.spec.clone().unwrap_or_default();
        let status = self.status.clone().map(|s| ReplicaSetStatus {
            replicas: s.replicas,
            fully_labeled_replicas: s.fully_labeled_replicas,
            ready_replicas: s.ready_replicas,
            available_replicas: s.available_replicas,
            observed_generation: s.observed_generation,
            conditions: s.conditions.map(|all| {
                all.into_iter()
                    .map(|c| ReplicaSetCondition {
                        type_: Some(c.type_),
                        status: Some(c.status),
                        reason: c.reason,
                        message: c.message,
                        last_transition_time: c.last_transition_time,
                    })
                    .collect()
            }),
            // Not a field of ReplicationControllers: never compared, never written.
            terminating_replicas: None,
        });
        ReplicaSet {
            metadata: self.metadata.clone(),
            spec: ReplicaSetSpec {
                replicas: spec.replicas,
                min_ready_seconds: spec.min_ready_seconds,
                selector: LabelSelector {
                    match_labels: spec.selector,
                    match_expressions: None,
                },
                template: spec.template,
            },
            status,
        }
    }

    fn with_status(&self, status: ReplicaSetStatus) -> Self {
        let mut updated = self.clone();
        updated.status = Some(ReplicationControllerStatus {
            replicas: status.replicas,
            fully_labeled_replicas: status.fully_labeled_replicas,
            ready_replicas: status.ready_replicas,
            available_replicas: status.available_replicas,
            observed_generation: status.observed_generation,
            conditions: status.conditions.map(|all| {
                all.into_iter()
                    .map(|c| ReplicationControllerCondition {
                        type_: c.type_.unwrap_or_default(),
                        status: c.status.unwrap_or_default(),
                        reason: c.reason,
                        message: c.message,
                        last_transition_time: c.last_transition_time,
                    })
                    .collect()
            }),
        });
        updated
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::ReplicationControllerSpec;
    use kube::api::ObjectMeta;

    use super::*;

    #[test]
    fn a_replication_controller_converts_and_takes_its_status_back() {
        let labels = BTreeMap::from([("app".to_owned(), "web".to_owned())]);
        let rc = ReplicationController {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("shop".into()),
                uid: Some("uid-web".into()),
                generation: Some(3),
                resource_version: Some("7".into()),
                ..ObjectMeta::default()
            },
            spec: Some(ReplicationControllerSpec {
                replicas: Some(2),
                min_ready_seconds: Some(5),
                selector: Some(labels.clone()),
                template: None,
            }),
            status: None,
        };
        let rs = rc.replica_set();
        assert_eq!(
            rs.metadata, rc.metadata,
            "the same object, by uid and version"
        );
        assert_eq!(rs.spec.replicas, Some(2));
        assert_eq!(rs.spec.min_ready_seconds, Some(5));
        assert_eq!(rs.spec.selector.match_labels, Some(labels));

        let status = ReplicaSetStatus {
            replicas: 2,
            ready_replicas: Some(1),
            terminating_replicas: Some(1),
            observed_generation: Some(3),
            conditions: Some(vec![ReplicaSetCondition {
                type_: Some("ReplicaFailure".into()),
                status: Some("True".into()),
                reason: Some("FailedCreate".into()),
                message: Some("exceeded quota".into()),
                last_transition_time: None,
            }]),
            ..ReplicaSetStatus::default()
        };
        let updated = rc.with_status(status.clone());
        let written = updated.status.clone().expect("a status");
        assert_eq!((written.replicas, written.ready_replicas), (2, Some(1)));
        let condition = &written.conditions.expect("conditions")[0];
        assert_eq!(condition.reason.as_deref(), Some("FailedCreate"));
        // Read back, it is the same status but for the field RCs lack.
        let back = updated.replica_set().status.expect("a status");
        assert_eq!(
            back,
            ReplicaSetStatus {
                terminating_replicas: None,
                ..status
            }
        );
    }
}
