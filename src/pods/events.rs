//! Events: the kubelet's pod events (Pulling, Created, Started, Killing, BackOff, ...),
//! published by one background task so that recording an event never delays pod work.

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
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

/// Records events for pods. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Events {
    queue: mpsc::Sender<Pending>,
}

/// Where in a pod an event happened: the pod itself or one of its containers.
pub fn reference(pod: &Pod, container: Option<&str>) -> ObjectReference {
    let field_path = container.map(|name| {
        let spec = pod.spec.as_ref();
        let is_init = spec
            .and_then(|s| s.init_containers.as_ref())
            .is_some_and(|list| list.iter().any(|c| c.name == name));
        if is_init {
            format!("spec.initContainers{{{name}}}")
        } else {
            format!("spec.containers{{{name}}}")
        }
    });
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: pod.metadata.name.clone(),
        namespace: pod.metadata.namespace.clone(),
        uid: pod.metadata.uid.clone(),
        resource_version: pod.metadata.resource_version.clone(),
        field_path,
    }
}

impl Events {
    /// Starts the publishing task, reporting as the kubelet of `node` does.
    pub fn start(client: Client, node: &str, cancel: CancellationToken) -> Self {
        let (queue, mut pending) = mpsc::channel::<Pending>(QUEUE);
        let recorder = Recorder::new(
            client,
            Reporter {
                controller: "kubelet".into(),
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
                            note: Some(event.note),
                            action: event.reason.clone(),
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
