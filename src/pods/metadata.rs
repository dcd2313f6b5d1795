//! Metadata: the labels and annotations put on CRI sandboxes and containers.
//!
//! The keys are the kubelet's, so that `crictl` shows nodus's containers as it shows the
//! kubelet's and an agent restart can find every object of a pod again through the runtime.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::Pod;

pub const POD_NAME: &str = "io.kubernetes.pod.name";
pub const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const POD_UID: &str = "io.kubernetes.pod.uid";
pub const CONTAINER_NAME: &str = "io.kubernetes.container.name";
pub const CONTAINER_RESTART_COUNT: &str = "io.kubernetes.container.restartCount";
pub const TERMINATION_MESSAGE_PATH: &str = "io.kubernetes.container.terminationMessagePath";
pub const TERMINATION_MESSAGE_POLICY: &str = "io.kubernetes.container.terminationMessagePolicy";
pub const TERMINATION_GRACE_PERIOD: &str = "io.kubernetes.pod.terminationGracePeriod";
/// The requests and limits a container was created with, as JSON: where an in-place resize
/// starts from.
pub const CONTAINER_RESOURCES: &str = "nodus.dev/resources";
/// Marks the objects nodus created, so that garbage collection never touches others'.
pub const MANAGED_BY: &str = "nodus.dev/managed-by";
pub const MANAGED_BY_VALUE: &str = "nodus";

/// The identity of a pod as carried on its runtime objects.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodKey {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl PodKey {
    pub fn of(pod: &Pod) -> Self {
        Self {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
        }
    }

    /// From a runtime object's labels; `None` if it is not a pod object of ours.
    pub fn from_labels(labels: &HashMap<String, String>) -> Option<Self> {
        if labels.get(MANAGED_BY).map(String::as_str) != Some(MANAGED_BY_VALUE) {
            return None;
        }
        Some(Self {
            namespace: labels.get(POD_NAMESPACE)?.clone(),
            name: labels.get(POD_NAME)?.clone(),
            uid: labels.get(POD_UID)?.clone(),
        })
    }

    /// The labels every runtime object of this pod carries.
    pub fn labels(&self) -> HashMap<String, String> {
        HashMap::from([
            (POD_NAME.to_owned(), self.name.clone()),
            (POD_NAMESPACE.to_owned(), self.namespace.clone()),
            (POD_UID.to_owned(), self.uid.clone()),
            (MANAGED_BY.to_owned(), MANAGED_BY_VALUE.to_owned()),
        ])
    }

    /// The kubelet's log directory name: `<namespace>_<name>_<uid>`.
    pub fn log_dir_name(&self) -> String {
        format!("{}_{}_{}", self.namespace, self.name, self.uid)
    }
}

impl std::fmt::Display for PodKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_round_trip_and_foreign_objects_are_ignored() {
        let key = PodKey {
            namespace: "ns".into(),
            name: "web".into(),
            uid: "u1".into(),
        };
        assert_eq!(PodKey::from_labels(&key.labels()), Some(key.clone()));
        let mut foreign = key.labels();
        foreign.remove(MANAGED_BY);
        assert_eq!(PodKey::from_labels(&foreign), None);
        assert_eq!(key.log_dir_name(), "ns_web_u1");
    }
}
