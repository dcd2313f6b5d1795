//! Events: containerd's own event stream, for noticing container starts, exits and OOM
//! kills within milliseconds instead of at the next relist.
//!
//! CRI's `GetContainerEvents` would be the portable way, but containerd 1.6 does not
//! implement it; its events service carries the same facts. Only task events of the CRI
//! namespace (`k8s.io`) are asked for.

use futures::{Stream, StreamExt};

use crate::{Error, Runtime};

/// The containerd namespace the CRI plugin keeps its containers in.
pub(crate) const CRI_NAMESPACE: &str = "k8s.io";

/// A change to a container's task, e.g. `/tasks/exit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeEvent {
    pub topic: String,
}

impl Runtime {
    /// Subscribes to task events. The stream ends when the runtime goes away; callers
    /// subscribe again (and relist, since events may have been missed meanwhile).
    pub async fn task_events(
        &self,
    ) -> Result<impl Stream<Item = Result<RuntimeEvent, Error>> + use<>, Error> {
        use containerd_client::services::v1::SubscribeRequest;
        use containerd_client::services::v1::events_client::EventsClient;

        let request = SubscribeRequest {
            filters: vec![format!("namespace=={CRI_NAMESPACE},topic~=\"^/tasks/\"")],
        };
        let stream = EventsClient::new(self.channel())
            .subscribe(request)
            .await
            .map_err(self.call_error("Events.Subscribe"))?
            .into_inner();
        let endpoint = self.endpoint().to_string();
        Ok(stream.map(move |envelope| match envelope {
            Ok(envelope) => Ok(RuntimeEvent {
                topic: envelope.topic,
            }),
            Err(status) => Err(Error::Call {
                method: "Events.Subscribe",
                endpoint: endpoint.clone(),
                code: status.code(),
                message: status.message().to_owned(),
            }),
        }))
    }
}
