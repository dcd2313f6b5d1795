//! Images: making sure a container's image is present, by its pull policy, with at most
//! one pull of an image in flight however many containers wait for it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use nodus_cri::Runtime;
use nodus_cri::api::{AuthConfig, PodSandboxConfig};
use tokio::sync::Mutex;

/// How an image became present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presence {
    AlreadyPresent,
    Pulled { took: Duration, size: u64 },
}

/// Why an image is not there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("Container image \"{image}\" is not present with pull policy of Never")]
    NeverPull { image: String },
    #[error("{message}")]
    Pull { image: String, message: String },
}

type Pull = Shared<BoxFuture<'static, Result<(), Arc<nodus_cri::Error>>>>;

#[derive(Debug, Clone)]
pub struct Images {
    runtime: Runtime,
    inflight: Arc<Mutex<HashMap<String, Pull>>>,
}

/// The pull policy the API server defaults to when a pod leaves it out.
pub fn default_policy(image: &str) -> &'static str {
    let name = image.split('@').next().unwrap_or(image);
    let last = name.rsplit('/').next().unwrap_or(name);
    match last.split_once(':') {
        Some((_, "latest")) | None if !image.contains('@') => "Always",
        _ => "IfNotPresent",
    }
}

impl Images {
    pub fn new(runtime: Runtime) -> Self {
        Self {
            runtime,
            inflight: Arc::default(),
        }
    }

    /// The image's size and the user it runs as, if present.
    pub async fn inspect(
        &self,
        image: &str,
    ) -> Result<Option<nodus_cri::api::Image>, nodus_cri::Error> {
        self.runtime.image_status(image).await
    }

    /// Ensures `image` is present under `policy` (Always, IfNotPresent, Never). `pulling`
    /// is called when a pull is about to start (for the Pulling event).
    pub async fn ensure(
        &self,
        image: &str,
        policy: &str,
        auth: Option<AuthConfig>,
        sandbox: &PodSandboxConfig,
        pulling: impl FnOnce(),
    ) -> Result<Presence, Error> {
        let pull_error = |err: &nodus_cri::Error| Error::Pull {
            image: image.to_owned(),
            message: err.runtime_message(),
        };
        if policy != "Always" {
            let present = self.inspect(image).await.map_err(|e| pull_error(&e))?;
            match (present, policy) {
                (Some(_), _) => return Ok(Presence::AlreadyPresent),
                (None, "Never") => {
                    return Err(Error::NeverPull {
                        image: image.to_owned(),
                    });
                }
                _ => {}
            }
        }
        pulling();
        let started = Instant::now();
        let pull = {
            let mut inflight = self.inflight.lock().await;
            inflight
                .entry(image.to_owned())
                .or_insert_with(|| {
                    let runtime = self.runtime.clone();
                    let (image, sandbox) = (image.to_owned(), sandbox.clone());
                    async move {
                        runtime
                            .pull_image(&image, auth, Some(sandbox))
                            .await
                            .map(|_| ())
                            .map_err(Arc::new)
                    }
                    .boxed()
                    .shared()
                })
                .clone()
        };
        let result = pull.await;
        self.inflight.lock().await.remove(image);
        result.map_err(|e| pull_error(&e))?;
        let size = self
            .inspect(image)
            .await
            .ok()
            .flatten()
            .map_or(0, |i| i.size);
        Ok(Presence::Pulled {
            took: started.elapsed(),
            size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policy_is_always_for_latest_or_untagged() {
        assert_eq!(default_policy("busybox"), "Always");
        assert_eq!(default_policy("busybox:latest"), "Always");
        assert_eq!(default_policy("registry:5000/team/app"), "Always");
        assert_eq!(default_policy("busybox:1.36"), "IfNotPresent");
        assert_eq!(default_policy("registry:5000/app:v1"), "IfNotPresent");
        assert_eq!(default_policy("busybox@sha256:abc"), "IfNotPresent");
    }
}
