//! Runtime health: a task that checks the CRI runtime every few seconds and publishes
//! what it found on a `watch` channel, so that node status reacts to a runtime going away
//! or coming back without ever blocking on the runtime itself.

use std::time::Duration;

use nodus_cri::{Runtime, RuntimeVersion};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::conditions::RuntimeHealth;

/// How often the runtime is checked; the kubelet's runtime state check runs at this pace.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// The runtime as last seen.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RuntimeState {
    pub health: RuntimeHealth,
    /// Known once the runtime has answered `Version`; kept while it is down.
    pub version: Option<RuntimeVersion>,
}

/// Checks the runtime until cancelled, publishing each change.
pub async fn monitor(
    runtime: Runtime,
    state: watch::Sender<RuntimeState>,
    cancel: CancellationToken,
) {
    let mut ticker = tokio::time::interval(CHECK_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let health = match runtime.status().await {
            Ok(status) => RuntimeHealth::Reported(status),
            Err(err) => RuntimeHealth::Unreachable(error_chain(&err)),
        };
        let known = state.borrow().version.clone();
        let version = match (&health, known) {
            (RuntimeHealth::Reported(_), None) => match runtime.version().await {
                Ok(version) => {
                    info!(endpoint = %runtime.endpoint(), runtime = %version.node_info(), api = %version.runtime_api_version, "container runtime answered");
                    Some(version)
                }
                Err(err) => {
                    warn!(error = %error_chain(&err), "container runtime did not report its version");
                    None
                }
            },
            (_, known) => known,
        };
        state.send_if_modified(|current| {
            if current.health == health && current.version == version {
                return false;
            }
            match (&current.health, &health) {
                (RuntimeHealth::Unreachable(_), RuntimeHealth::Unreachable(_)) => {}
                (_, RuntimeHealth::Unreachable(error)) => {
                    warn!(endpoint = %runtime.endpoint(), %error, "container runtime is down; retrying every {CHECK_INTERVAL:?}")
                }
                (RuntimeHealth::Unreachable(_), RuntimeHealth::Reported(_)) => {
                    info!(endpoint = %runtime.endpoint(), "container runtime is back")
                }
                _ => {}
            }
            current.health = health;
            current.version = version;
            true
        });
    }
}

/// An error and its sources on one line, for logs and condition messages.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    line
}
