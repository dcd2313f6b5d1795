//! Events: Kubernetes events published by one background task per reporter, so that
//! recording an event never waits on the API server. A full queue drops the newest event
//! (with a log line) rather than blocking the caller.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Events waiting to be published; beyond this, new ones are dropped (and logged).
const QUEUE: usize = 1024;

#[derive(Debug)]
struct Pending {
    reference: ObjectReference,
    warning: bool,
    reason: String,
    note: String,
}

/// The event's `action`, which kube's recorder uses (with the reason and the object) to
/// fold repeats into one event with a count. The kubelet's own correlator folds only
/// repeats of the same message, so a changed message ("failed to connect", later
/// "NOT_SERVING") is a new event there; a digest of the note in the action keeps that.
fn action(reason: &str, note: &str) -> String {
    use std::hash::{Hash, Hasher};
    // SipHash with fixed keys: the same note gives the same action in every process.
    #[allow(deprecated)]
    let mut hasher = std::hash::SipHasher::new();
    note.hash(&mut hasher);
    format!("{reason}-{:016x}", hasher.finish())
}

/// Records events as one reporter (`kubelet`, `kube-proxy`). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Events {
    queue: mpsc::Sender<Pending>,
}

impl Events {
    /// Starts the publishing task, reporting as `controller` on `node`.
    pub fn start(client: Client, controller: &str, node: &str, cancel: CancellationToken) -> Self {
        let (queue, mut pending) = mpsc::channel::<Pending>(QUEUE);
        let recorder = Recorder::new(
            client,
            Reporter {
                controller: controller.into(),
                instance: Some(node.to_owned()),
            },
        );
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    _ = cancel.cancelled() => return,
                    next = pending.recv() => next,
                };
                let Some(event) = next else { return };
                let published = recorder
                    .publish(
                        &Event {
                            type_: if event.warning {
                                EventType::Warning
                            } else {
                                EventType::Normal
                            },
                            reason: event.reason.clone(),
                            action: action(&event.reason, &event.note),
                            note: Some(event.note),
                            secondary: None,
                        },
                        &event.reference,
                    )
                    .await;
                if let Err(err) = published {
                    debug!(reason = %event.reason, error = %err, "publishing an event failed");
                }
            }
        });
        Self { queue }
    }

    fn record(&self, reference: ObjectReference, warning: bool, reason: &str, note: String) {
        let pending = Pending {
            reference,
            warning,
            reason: reason.to_owned(),
            note,
        };
        if self.queue.try_send(pending).is_err() {
            warn!(reason, "event queue full; dropping an event");
        }
    }

    pub fn normal(&self, reference: ObjectReference, reason: &str, note: String) {
        self.record(reference, false, reason, note);
    }

    pub fn warning(&self, reference: ObjectReference, reason: &str, note: String) {
        self.record(reference, true, reason, note);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_share_an_action_and_new_messages_get_their_own() {
        let first = action("Unhealthy", "Readiness probe failed: connect");
        assert_eq!(
            first,
            action("Unhealthy", "Readiness probe failed: connect")
        );
        assert_ne!(
            first,
            action("Unhealthy", "Readiness probe failed: NOT_SERVING")
        );
        assert!(first.starts_with("Unhealthy-") && first.len() <= 128);
    }
}
