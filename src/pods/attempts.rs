//! Attempts: what a pod's worker remembers between syncs about starting each container —
//! its restart backoff and why the last try to start it failed. The runtime cannot tell
//! these (a failed pull leaves no container behind), so they live with the worker.

use std::collections::HashMap;

use k8s_openapi::jiff::Timestamp;

use super::crashloop::Backoff;

/// Why a container could not be started, in the kubelet's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFailure {
    /// The image could not be pulled (`ErrImagePull`, then `ImagePullBackOff`).
    Pull,
    /// The image is absent and the policy forbids pulling (`ErrImageNeverPull`).
    NeverPull,
    /// The container's configuration could not be built, e.g. a missing ConfigMap
    /// (`CreateContainerConfigError`).
    Config,
    /// The runtime refused to create or start it (`CreateContainerError`, `RunContainerError`).
    Create,
    Run,
}

impl StartFailure {
    /// The waiting reason right after the failure.
    pub fn reason(self) -> &'static str {
        match self {
            StartFailure::Pull => "ErrImagePull",
            StartFailure::NeverPull => "ErrImageNeverPull",
            StartFailure::Config => "CreateContainerConfigError",
            StartFailure::Create => "CreateContainerError",
            StartFailure::Run => "RunContainerError",
        }
    }
}

/// The last failure to start one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: StartFailure,
    pub message: String,
    /// The image involved, for pull failures' messages.
    pub image: String,
}

/// Per container name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContainerAttempts {
    /// Restarts after the container exited (CrashLoopBackOff).
    pub restarts: Option<Backoff>,
    /// Retries after failing to start (ImagePullBackOff and the like).
    pub retries: Option<Backoff>,
    pub failure: Option<Failure>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Attempts(HashMap<String, ContainerAttempts>);

/// How long a fresh pull failure shows as ErrImagePull.
const ERR_IMAGE_PULL_SHOWN: k8s_openapi::jiff::SignedDuration =
    k8s_openapi::jiff::SignedDuration::from_secs(1);

fn shown_until(failed_at: Timestamp) -> Timestamp {
    failed_at
        .saturating_add(ERR_IMAGE_PULL_SHOWN)
        .unwrap_or(failed_at)
}

impl Attempts {
    pub fn get(&self, name: &str) -> Option<&ContainerAttempts> {
        self.0.get(name)
    }

    fn entry(&mut self, name: &str) -> &mut ContainerAttempts {
        self.0.entry(name.to_owned()).or_default()
    }

    /// A container was started; `restart` when it replaced one that had exited.
    pub fn started(&mut self, name: &str, restart: bool, now: Timestamp) {
        let entry = self.entry(name);
        if restart {
            entry.restarts = Some(Backoff::record(entry.restarts.as_ref(), now));
        }
        entry.retries = None;
        entry.failure = None;
    }

    /// A try to start a container failed.
    pub fn failed(&mut self, name: &str, failure: Failure, now: Timestamp) {
        let entry = self.entry(name);
        entry.retries = Some(match failure.kind {
            // A missing ConfigMap or Secret may appear any moment: retry at the kubelet's
            // steady pod-worker pace instead of backing off further and further.
            StartFailure::Config => Backoff {
                last: now,
                delay: super::crashloop::INITIAL,
            },
            _ => Backoff::record(entry.retries.as_ref(), now),
        });
        entry.failure = Some(failure);
    }

    /// Whether a failed pull is old enough to show as ImagePullBackOff: right after a
    /// failure the status says ErrImagePull, as the kubelet's does until its next sync.
    pub fn in_pull_back_off(&self, name: &str, now: Timestamp) -> bool {
        self.get(name).and_then(|e| e.retries).is_some_and(|b| {
            now >= shown_until(b.last) && Backoff::blocked_until(Some(&b), now).is_some()
        })
    }

    /// When some container's reported reason changes by time alone (ErrImagePull turning
    /// into ImagePullBackOff), if that is still ahead.
    pub fn status_changes_at(&self, now: Timestamp) -> Option<Timestamp> {
        self.0
            .values()
            .filter(|e| {
                e.failure
                    .as_ref()
                    .is_some_and(|f| f.kind == StartFailure::Pull)
            })
            .filter_map(|e| e.retries.map(|b| shown_until(b.last)))
            .filter(|t| *t > now)
            .min()
    }

    /// When the next try to start `name` may happen, if not now: the later of the two backoffs.
    pub fn blocked_until(&self, name: &str, restart: bool, now: Timestamp) -> Option<Timestamp> {
        let entry = self.get(name)?;
        let retry = Backoff::blocked_until(entry.retries.as_ref(), now);
        let crash = if restart {
            Backoff::blocked_until(entry.restarts.as_ref(), now)
        } else {
            None
        };
        retry.max(crash)
    }
}
