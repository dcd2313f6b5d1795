//! Ephemeral containers (`kubectl debug`): added to a running pod through the API's
//! `ephemeralcontainers` subresource, started once in the pod's sandbox after its init
//! containers, never restarted, never probed, and reported in
//! `status.ephemeralContainerStatuses`. One that names a `targetContainerName` joins that
//! container's process namespace.

use k8s_openapi::api::core::v1::{Container, EphemeralContainer, PodSpec};

/// The pod's ephemeral containers as containers (the fields they share are the same).
pub fn of(spec: &PodSpec) -> Vec<Container> {
    spec.ephemeral_containers
        .iter()
        .flatten()
        .map(as_container)
        .collect()
}

/// The container an ephemeral container's process namespace joins.
pub fn target(spec: &PodSpec, name: &str) -> Option<String> {
    spec.ephemeral_containers
        .iter()
        .flatten()
        .find(|e| e.name == name)?
        .target_container_name
        .clone()
        .filter(|t| !t.is_empty())
}

fn as_container(e: &EphemeralContainer) -> Container {
    Container {
        name: e.name.clone(),
        image: e.image.clone(),
        image_pull_policy: e.image_pull_policy.clone(),
        command: e.command.clone(),
        args: e.args.clone(),
        working_dir: e.working_dir.clone(),
        env: e.env.clone(),
        env_from: e.env_from.clone(),
        volume_mounts: e.volume_mounts.clone(),
        volume_devices: e.volume_devices.clone(),
        security_context: e.security_context.clone(),
        stdin: e.stdin,
        stdin_once: e.stdin_once,
        tty: e.tty,
        termination_message_path: e.termination_message_path.clone(),
        termination_message_policy: e.termination_message_policy.clone(),
        // The API rejects ports, probes, lifecycle hooks and resources on ephemeral containers.
        ..Container::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ephemeral_containers_read_as_containers_with_their_target() {
        let spec: PodSpec = serde_json::from_value(serde_json::json!({
            "containers": [{ "name": "app", "image": "busybox" }],
            "ephemeralContainers": [
                { "name": "debugger", "image": "busybox", "command": ["sh"], "stdin": true,
                  "tty": true, "targetContainerName": "app" },
                { "name": "plain", "image": "busybox" },
            ],
        }))
        .expect("spec");
        let list = of(&spec);
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].name, "debugger");
        assert_eq!(list[0].command, Some(vec!["sh".to_owned()]));
        assert_eq!((list[0].stdin, list[0].tty), (Some(true), Some(true)));
        assert_eq!(target(&spec, "debugger").as_deref(), Some("app"));
        assert_eq!(target(&spec, "plain"), None);
    }
}
