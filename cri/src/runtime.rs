//! Runtime: a connection to the CRI runtime and image services.
//!
//! The channel connects lazily and reconnects on its own, so a runtime restart needs no
//! action from the caller: calls fail with `Unavailable` while it is gone and work again
//! once it is back.

use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Uri};
use tower::service_fn;

use crate::api::image_service_client::ImageServiceClient;
use crate::api::runtime_service_client::RuntimeServiceClient;
use crate::api::{
    NetworkConfig, RuntimeConfig, StatusRequest, UpdateRuntimeConfigRequest, VersionRequest,
};
use crate::{Endpoint, Error};

/// The CRI API version nodus speaks.
const CRI_API_VERSION: &str = "v1";

/// Upper bound for calls that should answer at once (version, status): the kubelet uses
/// the same short deadline for its runtime health check.
const QUICK_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A CRI runtime: the runtime and image services behind one endpoint.
#[derive(Debug, Clone)]
pub struct Runtime {
    endpoint: Endpoint,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
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
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        }
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The image service, for callers that need calls this wrapper does not cover yet.
    pub fn images(&self) -> ImageServiceClient<Channel> {
        self.images.clone()
    }

    fn call_error(&self, method: &'static str) -> impl FnOnce(tonic::Status) -> Error + '_ {
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
