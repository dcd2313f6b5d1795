//! Pod events: the kubelet's events about pods (Pulling, Created, Started, Killing,
//! BackOff, ...), addressed to the pod or to one of its containers.

use k8s_openapi::api::core::v1::{ObjectReference, Pod};

pub use crate::events::Events;

/// Where in a pod an event happened: the pod itself or one of its containers.
pub fn reference(pod: &Pod, container: Option<&str>) -> ObjectReference {
    let field_path = container.map(|name| {
        let spec = pod.spec.as_ref();
        let is_init = spec
            .and_then(|s| s.init_containers.as_ref())
            .is_some_and(|list| list.iter().any(|c| c.name == name));
        if is_init {
            format!("spec.initContainers{{{name}}}")
        } else {
            format!("spec.containers{{{name}}}")
        }
    });
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: pod.metadata.name.clone(),
        namespace: pod.metadata.namespace.clone(),
        uid: pod.metadata.uid.clone(),
        resource_version: pod.metadata.resource_version.clone(),
        field_path,
    }
}
