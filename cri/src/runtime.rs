//! Runtime: a connection to the CRI runtime and image services.
//!
//! The channel connects lazily and reconnects on its own, so a runtime restart needs no
//! action from the caller: calls fail with `Unavailable` while it is gone and work again
//! once it is back.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Uri};
use tower::service_fn;

use crate::api::image_service_client::ImageServiceClient;
use crate::api::runtime_service_client::RuntimeServiceClient;
use crate::api::{
    AttachRequest, AuthConfig, Container, ContainerConfig, ContainerFilter, ContainerState,
    ContainerStats, ContainerStatsFilter, ContainerStatus, ContainerStatusRequest,
    CreateContainerRequest, ExecRequest, ExecSyncRequest, FilesystemUsage, Image,
    ImageFsInfoRequest, ImageSpec, ImageStatusRequest, LinuxContainerResources,
    ListContainerStatsRequest, ListContainersRequest, ListPodSandboxRequest, NetworkConfig,
    PodSandbox, PodSandboxConfig, PodSandboxFilter, PodSandboxStatus, PodSandboxStatusRequest,
    PortForwardRequest, PullImageRequest, RemoveContainerRequest, RemovePodSandboxRequest,
    ReopenContainerLogRequest, RunPodSandboxRequest, RuntimeConfig, StartContainerRequest,
    StatusRequest, StopContainerRequest, StopPodSandboxRequest, UpdateContainerResourcesRequest,
    UpdateRuntimeConfigRequest, VersionRequest,
};
use crate::metered::{Metered, Observer};
use crate::{Endpoint, Error};

/// The CRI API version nodus speaks.
const CRI_API_VERSION: &str = "v1";

/// Upper bound for calls that should answer at once (version, status): the kubelet uses
/// the same short deadline for its runtime health check.
const QUICK_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Upper bound for ordinary calls: the kubelet's default `--runtime-request-timeout`.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// The output of a command run in a container with `ExecSync`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// A CRI runtime: the runtime and image services behind one endpoint.
#[derive(Debug, Clone)]
pub struct Runtime {
    endpoint: Endpoint,
    channel: Channel,
    runtime: RuntimeServiceClient<Metered>,
    images: ImageServiceClient<Metered>,
}

/// What `Version` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeVersion {
    pub runtime_name: String,
    pub runtime_version: String,
    pub runtime_api_version: String,
}

impl RuntimeVersion {
    /// The form the kubelet reports in `nodeInfo.containerRuntimeVersion`, e.g. `containerd://1.6.20`.
    pub fn node_info(&self) -> String {
        format!("{}://{}", self.runtime_name, self.runtime_version)
    }
}

/// One condition of the runtime's `Status`, e.g. `RuntimeReady` or `NetworkReady`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeCondition {
    pub kind: String,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

/// What `Status` reports.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RuntimeStatus {
    pub conditions: Vec<RuntimeCondition>,
}

impl RuntimeStatus {
    pub const RUNTIME_READY: &'static str = "RuntimeReady";
    pub const NETWORK_READY: &'static str = "NetworkReady";

    /// The named condition, if the runtime reported it.
    pub fn condition(&self, kind: &str) -> Option<&RuntimeCondition> {
        self.conditions.iter().find(|c| c.kind == kind)
    }
}

impl Runtime {
    /// Prepares a connection to `endpoint`. Nothing is dialled until the first call, so
    /// this succeeds even while the runtime is down.
    pub fn connect(endpoint: Endpoint) -> Self {
        Self::connect_observed(endpoint, None)
    }

    /// As [`Runtime::connect`], reporting every runtime and image call to `observer`.
    pub fn connect_observed(endpoint: Endpoint, observer: Option<Arc<dyn Observer>>) -> Self {
        let socket = endpoint.socket().to_path_buf();
        // The URI is required by tonic but unused: every connection goes to the socket.
        let channel = Channel::from_static("http://[::1]:0")
            .connect_timeout(QUICK_CALL_TIMEOUT)
            .connect_with_connector_lazy(service_fn(move |_: Uri| {
                let socket = socket.clone();
                async move { UnixStream::connect(socket).await.map(TokioIo::new) }
            }));
        Self {
            endpoint,
            runtime: RuntimeServiceClient::new(Metered::new(channel.clone(), observer.clone())),
            images: ImageServiceClient::new(Metered::new(channel.clone(), observer)),
            channel,
        }
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The connection, for the runtime's own (non-CRI) services.
    pub(crate) fn channel(&self) -> Channel {
        self.channel.clone()
    }

    pub(crate) fn call_error(
        &self,
        method: &'static str,
    ) -> impl FnOnce(tonic::Status) -> Error + '_ {
        move |status| Error::Call {
            method,
            endpoint: self.endpoint.to_string(),
            code: status.code(),
            message: transport_message(&status),
        }
    }

    pub async fn version(&self) -> Result<RuntimeVersion, Error> {
        let mut request = tonic::Request::new(VersionRequest {
            version: CRI_API_VERSION.to_owned(),
        });
        request.set_timeout(QUICK_CALL_TIMEOUT);
        let reply = self
            .runtime
            .clone()
            .version(request)
            .await
            .map_err(self.call_error("Version"))?
            .into_inner();
        Ok(RuntimeVersion {
            runtime_name: reply.runtime_name,
            runtime_version: reply.runtime_version,
            runtime_api_version: reply.runtime_api_version,
        })
    }

    pub async fn status(&self) -> Result<RuntimeStatus, Error> {
        let mut request = tonic::Request::new(StatusRequest { verbose: false });
        request.set_timeout(QUICK_CALL_TIMEOUT);
        let reply = self
            .runtime
            .clone()
            .status(request)
            .await
            .map_err(self.call_error("Status"))?
            .into_inner();
        let conditions = reply
            .status
            .map(|status| status.conditions)
            .unwrap_or_default()
            .into_iter()
            .map(|c| RuntimeCondition {
                kind: c.r#type,
                status: c.status,
                reason: c.reason,
                message: c.message,
            })
            .collect();
        Ok(RuntimeStatus { conditions })
    }

    /// Tells the runtime the node's pod CIDR, as the kubelet does once it knows it.
    pub async fn update_pod_cidr(&self, pod_cidr: &str) -> Result<(), Error> {
        let mut request = tonic::Request::new(UpdateRuntimeConfigRequest {
            runtime_config: Some(RuntimeConfig {
                network_config: Some(NetworkConfig {
                    pod_cidr: pod_cidr.to_owned(),
                }),
            }),
        });
        request.set_timeout(QUICK_CALL_TIMEOUT);
        self.runtime
            .clone()
            .update_runtime_config(request)
            .await
            .map_err(self.call_error("UpdateRuntimeConfig"))?;
        Ok(())
    }

    fn request<T>(message: T, timeout: Option<Duration>) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(timeout) = timeout {
            request.set_timeout(timeout);
        }
        request
    }

    /// Creates and starts a pod sandbox; returns its ID.
    pub async fn run_pod_sandbox(
        &self,
        config: PodSandboxConfig,
        runtime_handler: &str,
    ) -> Result<String, Error> {
        let request = Self::request(
            RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: runtime_handler.to_owned(),
            },
            Some(CALL_TIMEOUT),
        );
        let reply = self.runtime.clone().run_pod_sandbox(request).await;
        Ok(reply
            .map_err(self.call_error("RunPodSandbox"))?
            .into_inner()
            .pod_sandbox_id)
    }

    /// Stops a sandbox's containers and tears down its network. Idempotent.
    pub async fn stop_pod_sandbox(&self, id: &str) -> Result<(), Error> {
        let request = Self::request(
            StopPodSandboxRequest {
                pod_sandbox_id: id.to_owned(),
            },
            Some(CALL_TIMEOUT),
        );
        self.runtime
            .clone()
            .stop_pod_sandbox(request)
            .await
            .map_err(self.call_error("StopPodSandbox"))?;
        Ok(())
    }

    /// Removes a sandbox and all its containers. Idempotent.
    pub async fn remove_pod_sandbox(&self, id: &str) -> Result<(), Error> {
        match self.remove_pod_sandbox_once(id).await {
            Err(err) if err.is_stale_task() => {
                self.delete_stale_tasks_of_sandbox(id).await?;
                self.remove_pod_sandbox_once(id).await
            }
            other => other,
        }
    }

    async fn remove_pod_sandbox_once(&self, id: &str) -> Result<(), Error> {
        let request = Self::request(
            RemovePodSandboxRequest {
                pod_sandbox_id: id.to_owned(),
            },
            Some(CALL_TIMEOUT),
        );
        self.runtime
            .clone()
            .remove_pod_sandbox(request)
            .await
            .map_err(self.call_error("RemovePodSandbox"))?;
        Ok(())
    }

    pub async fn pod_sandbox_status(&self, id: &str) -> Result<PodSandboxStatus, Error> {
        let request = Self::request(
            PodSandboxStatusRequest {
                pod_sandbox_id: id.to_owned(),
                verbose: false,
            },
            Some(CALL_TIMEOUT),
        );
        let reply = self.runtime.clone().pod_sandbox_status(request).await;
        reply
            .map_err(self.call_error("PodSandboxStatus"))?
            .into_inner()
            .status
            .ok_or_else(|| self.missing("PodSandboxStatus", id))
    }

    pub async fn list_pod_sandboxes(
        &self,
        filter: Option<PodSandboxFilter>,
    ) -> Result<Vec<PodSandbox>, Error> {
        let request = Self::request(ListPodSandboxRequest { filter }, Some(CALL_TIMEOUT));
        let reply = self.runtime.clone().list_pod_sandbox(request).await;
        Ok(reply
            .map_err(self.call_error("ListPodSandbox"))?
            .into_inner()
            .items)
    }

    /// Creates a container in a sandbox; returns its ID.
    pub async fn create_container(
        &self,
        sandbox_id: &str,
        config: ContainerConfig,
        sandbox_config: PodSandboxConfig,
    ) -> Result<String, Error> {
        let request = Self::request(
            CreateContainerRequest {
                pod_sandbox_id: sandbox_id.to_owned(),
                config: Some(config),
                sandbox_config: Some(sandbox_config),
            },
            Some(CALL_TIMEOUT),
        );
        let reply = self.runtime.clone().create_container(request).await;
        Ok(reply
            .map_err(self.call_error("CreateContainer"))?
            .into_inner()
            .container_id)
    }

    pub async fn start_container(&self, id: &str) -> Result<(), Error> {
        let request = Self::request(
            StartContainerRequest {
                container_id: id.to_owned(),
            },
            Some(CALL_TIMEOUT),
        );
        self.runtime
            .clone()
            .start_container(request)
            .await
            .map_err(self.call_error("StartContainer"))?;
        Ok(())
    }

    /// Stops a container: SIGTERM (or the image's stop signal), then SIGKILL after `grace`.
    pub async fn stop_container(&self, id: &str, grace: Duration) -> Result<(), Error> {
        let request = Self::request(
            StopContainerRequest {
                container_id: id.to_owned(),
                timeout: grace.as_secs() as i64,
            },
            Some(grace + CALL_TIMEOUT),
        );
        self.runtime
            .clone()
            .stop_container(request)
            .await
            .map_err(self.call_error("StopContainer"))?;
        Ok(())
    }

    /// Changes a running container's cpu and memory in place (an in-place pod resize). Zero
    /// fields are left as they are; -1 lifts a limit.
    pub async fn update_container_resources(
        &self,
        id: &str,
        linux: LinuxContainerResources,
    ) -> Result<(), Error> {
        let request = Self::request(
            UpdateContainerResourcesRequest {
                container_id: id.to_owned(),
                linux: Some(linux),
                ..UpdateContainerResourcesRequest::default()
            },
            Some(CALL_TIMEOUT),
        );
        self.runtime
            .clone()
            .update_container_resources(request)
            .await
            .map_err(self.call_error("UpdateContainerResources"))?;
        Ok(())
    }

    /// Removes a container. Idempotent.
    pub async fn remove_container(&self, id: &str) -> Result<(), Error> {
        match self.remove_container_once(id).await {
            Err(err) if err.is_stale_task() => {
                let status = self.container_status(id).await?;
                if status.state == ContainerState::ContainerExited as i32 {
                    self.delete_stale_task(id).await?;
                }
                self.remove_container_once(id).await
            }
            other => other,
        }
    }

    async fn remove_container_once(&self, id: &str) -> Result<(), Error> {
        let request = Self::request(
            RemoveContainerRequest {
                container_id: id.to_owned(),
            },
            Some(CALL_TIMEOUT),
        );
        self.runtime
            .clone()
            .remove_container(request)
            .await
            .map_err(self.call_error("RemoveContainer"))?;
        Ok(())
    }

    pub async fn list_containers(
        &self,
        filter: Option<ContainerFilter>,
    ) -> Result<Vec<Container>, Error> {
        let request = Self::request(ListContainersRequest { filter }, Some(CALL_TIMEOUT));
        let reply = self.runtime.clone().list_containers(request).await;
        Ok(reply
            .map_err(self.call_error("ListContainers"))?
            .into_inner()
            .containers)
    }

    pub async fn container_status(&self, id: &str) -> Result<ContainerStatus, Error> {
        let request = Self::request(
            ContainerStatusRequest {
                container_id: id.to_owned(),
                verbose: false,
            },
            Some(CALL_TIMEOUT),
        );
        let reply = self.runtime.clone().container_status(request).await;
        reply
            .map_err(self.call_error("ContainerStatus"))?
            .into_inner()
            .status
            .ok_or_else(|| self.missing("ContainerStatus", id))
    }

    /// Runs a command in a running container and waits for it, up to `timeout`.
    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout: Duration,
    ) -> Result<ExecOutput, Error> {
        let request = Self::request(
            ExecSyncRequest {
                container_id: id.to_owned(),
                cmd,
                timeout: timeout.as_secs() as i64,
            },
            Some(timeout + QUICK_CALL_TIMEOUT),
        );
        let reply = self.runtime.clone().exec_sync(request).await;
        let reply = reply.map_err(self.call_error("ExecSync"))?.into_inner();
        Ok(ExecOutput {
            exit_code: reply.exit_code,
            stdout: reply.stdout,
            stderr: reply.stderr,
        })
    }

    /// Asks the runtime to reopen a container's log file (after it was rotated away).
    pub async fn reopen_container_log(&self, id: &str) -> Result<(), Error> {
        let request = ReopenContainerLogRequest {
            container_id: id.to_owned(),
        };
        let reply = self
            .runtime
            .clone()
            .reopen_container_log(Self::request(request, Some(CALL_TIMEOUT)))
            .await;
        reply.map_err(self.call_error("ReopenContainerLog"))?;
        Ok(())
    }

    /// Prepares a streaming exec in a container; returns the URL of the runtime's streaming
    /// server that serves it (the caller proxies the client's upgraded connection there).
    pub async fn exec(&self, request: ExecRequest) -> Result<String, Error> {
        let reply = self
            .runtime
            .clone()
            .exec(Self::request(request, Some(CALL_TIMEOUT)))
            .await;
        Ok(reply.map_err(self.call_error("Exec"))?.into_inner().url)
    }

    /// Prepares a streaming attach to a container's main process; returns the streaming URL.
    pub async fn attach(&self, request: AttachRequest) -> Result<String, Error> {
        let reply = self
            .runtime
            .clone()
            .attach(Self::request(request, Some(CALL_TIMEOUT)))
            .await;
        Ok(reply.map_err(self.call_error("Attach"))?.into_inner().url)
    }

    /// Prepares port forwarding into a sandbox's network namespace; returns the streaming URL.
    pub async fn port_forward(&self, sandbox_id: &str, ports: Vec<i32>) -> Result<String, Error> {
        let request = PortForwardRequest {
            pod_sandbox_id: sandbox_id.to_owned(),
            port: ports,
        };
        let reply = self
            .runtime
            .clone()
            .port_forward(Self::request(request, Some(CALL_TIMEOUT)))
            .await;
        Ok(reply
            .map_err(self.call_error("PortForward"))?
            .into_inner()
            .url)
    }

    /// The image if the runtime has it, `None` if not.
    pub async fn image_status(&self, image: &str) -> Result<Option<Image>, Error> {
        let request = Self::request(
            ImageStatusRequest {
                image: Some(image_spec(image)),
                verbose: false,
            },
            Some(CALL_TIMEOUT),
        );
        let reply = self.images.clone().image_status(request).await;
        Ok(reply
            .map_err(self.call_error("ImageStatus"))?
            .into_inner()
            .image)
    }

    /// Pulls an image; returns its reference (ID). Not bounded by a deadline: large
    /// images take long, and the caller cancels a pull it no longer needs.
    pub async fn pull_image(
        &self,
        image: &str,
        auth: Option<AuthConfig>,
        sandbox_config: Option<PodSandboxConfig>,
    ) -> Result<String, Error> {
        let request = Self::request(
            PullImageRequest {
                image: Some(image_spec(image)),
                auth,
                sandbox_config,
            },
            None,
        );
        let reply = self.images.clone().pull_image(request).await;
        Ok(reply
            .map_err(self.call_error("PullImage"))?
            .into_inner()
            .image_ref)
    }

    /// Usage figures of the containers the filter selects (CPU, memory, writable layer).
    pub async fn list_container_stats(
        &self,
        filter: Option<ContainerStatsFilter>,
    ) -> Result<Vec<ContainerStats>, Error> {
        let request = Self::request(ListContainerStatsRequest { filter }, Some(CALL_TIMEOUT));
        let reply = self.runtime.clone().list_container_stats(request).await;
        Ok(reply
            .map_err(self.call_error("ListContainerStats"))?
            .into_inner()
            .stats)
    }

    /// The filesystems that hold images and writable layers, with their usage.
    pub async fn image_fs_info(&self) -> Result<Vec<FilesystemUsage>, Error> {
        let request = Self::request(ImageFsInfoRequest {}, Some(CALL_TIMEOUT));
        let reply = self.images.clone().image_fs_info(request).await;
        let reply = reply.map_err(self.call_error("ImageFsInfo"))?.into_inner();
        Ok(reply
            .image_filesystems
            .into_iter()
            .chain(reply.container_filesystems)
            .collect())
    }

    fn missing(&self, method: &'static str, id: &str) -> Error {
        Error::Call {
            method,
            endpoint: self.endpoint.to_string(),
            code: tonic::Code::NotFound,
            message: format!("no status returned for {id}"),
        }
    }
}

/// The most specific explanation a status carries: for transport failures tonic's own
/// message is only "transport error", and the cause (socket missing, refused) is its source.
fn transport_message(status: &tonic::Status) -> String {
    let mut message = status.message().to_owned();
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !message.contains(&cause_text) {
            message.push_str(": ");
            message.push_str(&cause_text);
        }
        source = cause.source();
    }
    message
}

fn image_spec(image: &str) -> ImageSpec {
    ImageSpec {
        image: image.to_owned(),
        ..ImageSpec::default()
    }
}
