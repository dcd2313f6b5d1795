//! Pod helpers shared by the e2e test files: JSON builders for busybox pods, waiting on a pod's
//! state, and reading its events.

use std::time::Duration;

use anyhow::Result;
use k8s_openapi::api::core::v1::{ContainerStatus, Event, Pod};
use kube::Api;
use kube::api::ListParams;
use serde_json::json;

use crate::{Cluster, TestNamespace, poll};

pub const IMAGE: &str = "busybox:1.36";

pub async fn setup(prefix: &str) -> Result<(Cluster, TestNamespace, String)> {
    let cluster = Cluster::from_env()?;
    let ns = TestNamespace::create(cluster.admin().await?, prefix).await?;
    let node = cluster.node_name();
    Ok((cluster, ns, node))
}

pub fn pod(name: &str, policy: &str, containers: serde_json::Value) -> serde_json::Value {
    json!({
        "metadata": { "name": name },
        "spec": { "restartPolicy": policy, "terminationGracePeriodSeconds": 5, "containers": containers },
    })
}

pub fn sh(name: &str, script: &str) -> serde_json::Value {
    json!({ "name": name, "image": IMAGE, "command": ["sh", "-c", script] })
}

pub async fn wait_pod<T>(
    ns: &TestNamespace,
    name: &str,
    timeout: Duration,
    what: &str,
    check: impl Fn(&Pod) -> Option<T>,
) -> Result<T> {
    let pods = ns.pods();
    poll(timeout, what, || async {
        Ok(check(&pods.get(name).await?))
    })
    .await
}

pub fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default()
}

pub fn container<'a>(pod: &'a Pod, name: &str) -> Option<&'a ContainerStatus> {
    let status = pod.status.as_ref()?;
    status
        .container_statuses
        .iter()
        .flatten()
        .chain(status.init_container_statuses.iter().flatten())
        .find(|c| c.name == name)
}

/// The message a container left when it terminated (`None` while it has not).
pub fn terminated_message(pod: &Pod, name: &str) -> Option<String> {
    container(pod, name)?
        .state
        .as_ref()?
        .terminated
        .as_ref()?
        .message
        .clone()
}

pub fn waiting_reason(pod: &Pod, name: &str) -> Option<String> {
    container(pod, name)?
        .state
        .as_ref()?
        .waiting
        .as_ref()?
        .reason
        .clone()
}

pub async fn events_for(ns: &TestNamespace, pod: &str) -> Result<Vec<(String, String)>> {
    let events: Api<Event> = Api::namespaced(ns.pods().into_client(), &ns.name);
    Ok(events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(pod))
        .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
        .collect())
}

/// Waits until the pod has an event with `reason` whose message satisfies `message`;
/// events are published in the background, so they may trail the status a little.
pub async fn wait_event(
    ns: &TestNamespace,
    pod: &str,
    reason: &str,
    message: impl Fn(&str) -> bool,
) -> Result<()> {
    let what = format!("a {reason} event for {pod}");
    poll(Duration::from_secs(15), &what, || async {
        let events = events_for(ns, pod).await?;
        Ok(events
            .iter()
            .any(|(r, m)| r == reason && message(m))
            .then_some(()))
    })
    .await
    .map_err(|err| anyhow::anyhow!("{err}"))
}
