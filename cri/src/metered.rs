//! Metered: the CRI channel wrapped so that every call is timed and counted by operation,
//! for the kubelet's `kubelet_runtime_operations_*` figures. The crate only measures; the
//! agent decides how to keep and show the figures through an [`Observer`].
//!
//! A call counts as failed when the transport fails or the runtime answers with a non-OK
//! `grpc-status` in its headers: unary errors come back as trailers-only responses, so the
//! status is known without reading the body.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tonic::body::Body;
use tonic::transport::Channel;

/// Receives one record per finished CRI call.
pub trait Observer: Send + Sync {
    /// `operation` is upstream's `operation_type` label, e.g. `run_podsandbox`.
    fn observe(&self, operation: &str, took: Duration, failed: bool);
}

/// A channel that reports each call to its observer.
#[derive(Clone)]
pub(crate) struct Metered {
    inner: Channel,
    observer: Option<Arc<dyn Observer>>,
}

impl fmt::Debug for Metered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metered")
            .field("observed", &self.observer.is_some())
            .finish_non_exhaustive()
    }
}

impl Metered {
    pub(crate) fn new(inner: Channel, observer: Option<Arc<dyn Observer>>) -> Self {
        Metered { inner, observer }
    }
}

type Reply = Result<http::Response<Body>, tonic::transport::Error>;

impl tower::Service<http::Request<Body>> for Metered {
    type Response = http::Response<Body>;
    type Error = tonic::transport::Error;
    type Future = Pin<Box<dyn Future<Output = Reply> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let observer = self.observer.clone();
        let operation = operation_type(request.uri().path());
        let started = Instant::now();
        let reply = self.inner.call(request);
        Box::pin(async move {
            let reply = reply.await;
            if let Some(observer) = observer {
                observer.observe(&operation, started.elapsed(), failed(&reply));
            }
            reply
        })
    }
}

fn failed(reply: &Reply) -> bool {
    match reply {
        Err(_) => true,
        Ok(response) => {
            !response.status().is_success()
                || response
                    .headers()
                    .get("grpc-status")
                    .is_some_and(|code| code.as_bytes() != b"0")
        }
    }
}

/// Upstream's label for a CRI method: `/runtime.v1.RuntimeService/RunPodSandbox` →
/// `run_podsandbox` (the kubelet writes "podsandbox" as one word).
pub fn operation_type(path: &str) -> String {
    let method = path.rsplit('/').next().unwrap_or(path);
    let mut snake = String::with_capacity(method.len() + 4);
    for (i, c) in method.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                snake.push('_');
            }
            snake.push(c.to_ascii_lowercase());
        } else {
            snake.push(c);
        }
    }
    snake.replace("pod_sandbox", "podsandbox")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_get_the_kubelets_operation_names() {
        for (path, name) in [
            ("/runtime.v1.RuntimeService/RunPodSandbox", "run_podsandbox"),
            (
                "/runtime.v1.RuntimeService/ListPodSandbox",
                "list_podsandbox",
            ),
            (
                "/runtime.v1.RuntimeService/PodSandboxStatus",
                "podsandbox_status",
            ),
            (
                "/runtime.v1.RuntimeService/ListContainers",
                "list_containers",
            ),
            ("/runtime.v1.RuntimeService/ExecSync", "exec_sync"),
            ("/runtime.v1.ImageService/PullImage", "pull_image"),
            (
                "/runtime.v1.RuntimeService/UpdateRuntimeConfig",
                "update_runtime_config",
            ),
        ] {
            assert_eq!(operation_type(path), name, "{path}");
        }
    }
}
