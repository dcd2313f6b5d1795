//! Stale tasks: containerd 1.6 can keep a container's task after CRI has reported the
//! container exited — a task created but never started, when the StartContainer call that
//! made it was cut off (its caller went away, the agent restarted). CRI then refuses to
//! remove the container or its sandbox ("cannot delete running task"), for good. The fix
//! is what `ctr task kill` and `ctr task delete` would do, through containerd's own tasks
//! service, and only for containers CRI already calls exited.

use std::time::Duration;

use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{DeleteTaskRequest, GetRequest, KillRequest};
use containerd_client::types::v1::Status;
use tokio::time::Instant;
use tracing::info;

use crate::api::{ContainerFilter, ContainerState};
use crate::events::CRI_NAMESPACE;
use crate::{Error, Runtime};

/// How long a killed task may take to stop before the removal is left to the next try.
const STOP_WAIT: Duration = Duration::from_secs(5);
const STOP_POLL: Duration = Duration::from_millis(50);
const SIGKILL: u32 = 9;

impl Error {
    /// Whether a removal failed on a task containerd kept for a container CRI calls exited.
    pub(crate) fn is_stale_task(&self) -> bool {
        matches!(
            self,
            Error::Call { code: tonic::Code::FailedPrecondition, message, .. }
                if message.contains("cannot delete running task")
        )
    }
}

impl Runtime {
    /// Deletes the stale tasks of a sandbox's exited containers.
    pub(crate) async fn delete_stale_tasks_of_sandbox(
        &self,
        sandbox_id: &str,
    ) -> Result<(), Error> {
        let filter = ContainerFilter {
            pod_sandbox_id: sandbox_id.to_owned(),
            ..ContainerFilter::default()
        };
        for container in self.list_containers(Some(filter)).await? {
            if container.state == ContainerState::ContainerExited as i32 {
                self.delete_stale_task(&container.id).await?;
            }
        }
        Ok(())
    }

    /// Kills and deletes the task of a container CRI reports exited; nothing when it has
    /// none or it runs (then CRI's view is only behind, not stale).
    pub(crate) async fn delete_stale_task(&self, container_id: &str) -> Result<(), Error> {
        let Some(status) = self.task_status(container_id).await? else {
            return Ok(());
        };
        if status == Status::Created {
            info!(
                container = container_id,
                "killing a task left created by an interrupted start"
            );
            let kill = KillRequest {
                container_id: container_id.to_owned(),
                exec_id: String::new(),
                signal: SIGKILL,
                all: true,
            };
            match self.tasks().kill(namespaced(kill)).await {
                Ok(_) => {}
                Err(status) if status.code() == tonic::Code::NotFound => return Ok(()),
                Err(status) => return Err(self.call_error("Tasks.Kill")(status)),
            }
            let deadline = Instant::now() + STOP_WAIT;
            loop {
                match self.task_status(container_id).await? {
                    Some(Status::Stopped) => break,
                    None => return Ok(()),
                    // Still going: the next removal tries again.
                    _ if Instant::now() >= deadline => return Ok(()),
                    _ => tokio::time::sleep(STOP_POLL).await,
                }
            }
        } else if status != Status::Stopped {
            return Ok(());
        }
        info!(container = container_id, "deleting a stale task");
        let delete = DeleteTaskRequest {
            container_id: container_id.to_owned(),
        };
        match self.tasks().delete(namespaced(delete)).await {
            Ok(_) => Ok(()),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(()),
            Err(status) => Err(self.call_error("Tasks.Delete")(status)),
        }
    }

    async fn task_status(&self, container_id: &str) -> Result<Option<Status>, Error> {
        let get = GetRequest {
            container_id: container_id.to_owned(),
            exec_id: String::new(),
        };
        match self.tasks().get(namespaced(get)).await {
            Ok(reply) => Ok(reply
                .into_inner()
                .process
                .map(|p| Status::try_from(p.status).unwrap_or(Status::Unknown))),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
            Err(status) => Err(self.call_error("Tasks.Get")(status)),
        }
    }

    fn tasks(&self) -> TasksClient<tonic::transport::Channel> {
        TasksClient::new(self.channel())
    }
}

fn namespaced<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "containerd-namespace",
        tonic::metadata::MetadataValue::from_static(CRI_NAMESPACE),
    );
    request
}
