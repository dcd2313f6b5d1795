//! Observed: what the runtime holds for one pod, its sandboxes and containers, read
//! through CRI and reduced to the facts the lifecycle and status need.

use std::collections::HashMap;

use k8s_openapi::jiff::Timestamp;
use nodus_cri::Runtime;
use nodus_cri::api::{ContainerFilter, ContainerStatus, PodSandboxFilter};

use super::metadata::{CONTAINER_NAME, CONTAINER_RESOURCES, POD_UID, PodKey};

/// A pod sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    pub id: String,
    pub attempt: u32,
    pub ready: bool,
    pub created_at: i64,
    /// The pod's IPs, primary first; empty for host-network pods and until network setup.
    pub ips: Vec<String>,
}

/// The state of a container, as the kubelet distinguishes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunState {
    /// Created but not (yet) started.
    Created,
    Running {
        started_at: Option<Timestamp>,
    },
    Exited(Exit),
    Unknown,
}

/// How a container ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    pub code: i32,
    /// The runtime's reason, e.g. `OOMKilled`, `Completed`, `Error`.
    pub reason: String,
    pub message: String,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
}

/// One container of the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRecord {
    pub id: String,
    pub name: String,
    /// The restart count it was created with.
    pub attempt: u32,
    pub sandbox_id: String,
    pub state: RunState,
    pub created_at: i64,
    pub image: String,
    pub image_id: String,
    /// The requests and limits it was created with (JSON), when nodus recorded them.
    pub created_with: Option<String>,
}

/// Everything the runtime holds for one pod.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodRuntime {
    pub sandboxes: Vec<Sandbox>,
    pub containers: Vec<ContainerRecord>,
    /// Running containers (by ID) whose startup probe has not passed yet: the worker adds
    /// what its prober knows, and the lifecycle starts app containers only once every
    /// sidecar has started.
    pub startup_pending: std::collections::HashSet<String>,
}

impl PodRuntime {
    /// The newest sandbox.
    pub fn sandbox(&self) -> Option<&Sandbox> {
        self.sandboxes
            .iter()
            .max_by_key(|s| (s.attempt, s.created_at))
    }

    /// The newest container of that name.
    pub fn latest(&self, name: &str) -> Option<&ContainerRecord> {
        self.containers
            .iter()
            .filter(|c| c.name == name)
            .max_by_key(|c| (c.attempt, c.created_at))
    }

    /// The container before the newest one of that name (for `lastState`).
    pub fn previous(&self, name: &str) -> Option<&ContainerRecord> {
        let latest = self.latest(name)?;
        self.containers
            .iter()
            .filter(|c| c.name == name && c.id != latest.id)
            .max_by_key(|c| (c.attempt, c.created_at))
    }

    pub fn running(&self) -> impl Iterator<Item = &ContainerRecord> {
        self.containers
            .iter()
            .filter(|c| matches!(c.state, RunState::Running { .. } | RunState::Unknown))
    }

    pub fn is_empty(&self) -> bool {
        self.sandboxes.is_empty() && self.containers.is_empty()
    }
}

fn timestamp(nanos: i64) -> Option<Timestamp> {
    (nanos > 0)
        .then(|| Timestamp::from_nanosecond(i128::from(nanos)).ok())
        .flatten()
}

/// Converts a CRI container status.
pub fn container_record(status: ContainerStatus) -> ContainerRecord {
    use nodus_cri::api::ContainerState;
    let metadata = status.metadata.unwrap_or_default();
    let state = match ContainerState::try_from(status.state) {
        Ok(ContainerState::ContainerCreated) => RunState::Created,
        Ok(ContainerState::ContainerRunning) => RunState::Running {
            started_at: timestamp(status.started_at),
        },
        Ok(ContainerState::ContainerExited) => RunState::Exited(Exit {
            code: status.exit_code,
            reason: status.reason,
            message: status.message,
            started_at: timestamp(status.started_at),
            finished_at: timestamp(status.finished_at),
        }),
        _ => RunState::Unknown,
    };
    let name = status
        .labels
        .get(CONTAINER_NAME)
        .cloned()
        .unwrap_or(metadata.name);
    let created_with = status.annotations.get(CONTAINER_RESOURCES).cloned();
    ContainerRecord {
        id: status.id,
        name,
        attempt: metadata.attempt,
        sandbox_id: String::new(),
        state,
        created_at: status.created_at,
        image: status.image.map(|i| i.image).unwrap_or_default(),
        image_id: status.image_ref,
        created_with,
    }
}

/// Reads the pod's sandboxes and containers from the runtime.
pub async fn observe(runtime: &Runtime, key: &PodKey) -> Result<PodRuntime, nodus_cri::Error> {
    let selector = HashMap::from([(POD_UID.to_owned(), key.uid.clone())]);
    let listed = runtime
        .list_pod_sandboxes(Some(PodSandboxFilter {
            label_selector: selector.clone(),
            ..PodSandboxFilter::default()
        }))
        .await?;
    let mut sandboxes = Vec::with_capacity(listed.len());
    for sandbox in listed {
        let ready = sandbox.state == nodus_cri::api::PodSandboxState::SandboxReady as i32;
        // The IP is only in the sandbox's status; a sandbox that has gone since the list
        // is simply left out.
        let ips = if ready {
            match runtime.pod_sandbox_status(&sandbox.id).await {
                Ok(status) => status
                    .network
                    .map(|n| {
                        std::iter::once(n.ip)
                            .chain(n.additional_ips.into_iter().map(|ip| ip.ip))
                            .filter(|ip| !ip.is_empty())
                            .collect()
                    })
                    .unwrap_or_default(),
                Err(err) if err.is_not_found() => continue,
                Err(err) => return Err(err),
            }
        } else {
            Vec::new()
        };
        sandboxes.push(Sandbox {
            id: sandbox.id,
            attempt: sandbox.metadata.map_or(0, |m| m.attempt),
            ready,
            created_at: sandbox.created_at,
            ips,
        });
    }
    let listed = runtime
        .list_containers(Some(ContainerFilter {
            label_selector: selector,
            ..ContainerFilter::default()
        }))
        .await?;
    let mut containers = Vec::with_capacity(listed.len());
    for container in listed {
        match runtime.container_status(&container.id).await {
            Ok(status) => {
                let mut record = container_record(status);
                record.sandbox_id = container.pod_sandbox_id;
                containers.push(record);
            }
            Err(err) if err.is_not_found() => continue,
            Err(err) => return Err(err),
        }
    }
    Ok(PodRuntime {
        sandboxes,
        containers,
        ..PodRuntime::default()
    })
}

#[cfg(test)]
mod tests {
    use nodus_cri::api::{ContainerMetadata, ContainerState};

    use super::*;

    #[test]
    fn exited_container_status_keeps_code_reason_and_times() {
        let status = ContainerStatus {
            id: "c1".into(),
            metadata: Some(ContainerMetadata {
                name: "app".into(),
                attempt: 3,
            }),
            state: ContainerState::ContainerExited as i32,
            started_at: 1_700_000_000_000_000_000,
            finished_at: 1_700_000_005_000_000_000,
            exit_code: 137,
            reason: "OOMKilled".into(),
            ..ContainerStatus::default()
        };
        let record = container_record(status);
        assert_eq!((record.name.as_str(), record.attempt), ("app", 3));
        let RunState::Exited(exit) = record.state else {
            panic!("exited");
        };
        assert_eq!((exit.code, exit.reason.as_str()), (137, "OOMKilled"));
        assert_eq!(exit.finished_at.map(|t| t.as_second()), Some(1_700_000_005));
    }

    #[test]
    fn latest_and_previous_follow_attempts() {
        let record = |id: &str, attempt| ContainerRecord {
            id: id.into(),
            name: "app".into(),
            attempt,
            sandbox_id: "s".into(),
            state: RunState::Created,
            created_at: i64::from(attempt),
            image: String::new(),
            image_id: String::new(),
            created_with: None,
        };
        let runtime = PodRuntime {
            sandboxes: vec![],
            containers: vec![record("a", 0), record("c", 2), record("b", 1)],
            ..PodRuntime::default()
        };
        assert_eq!(runtime.latest("app").map(|c| c.id.as_str()), Some("c"));
        assert_eq!(runtime.previous("app").map(|c| c.id.as_str()), Some("b"));
        assert!(runtime.latest("other").is_none());
    }
}
