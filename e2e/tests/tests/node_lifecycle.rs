//! Node lifecycle as nodus-control runs it: a node whose agent stops is marked Unknown
//! ("Kubelet stopped posting node status.") and is Ready again once the agent is back; a
//! lost node gets the `unreachable` NoExecute taint and its pods leave according to their
//! tolerations (at once after `tolerationSeconds`, never without one).
//!
//! Upstream evicts nothing when every node of a zone is down (it takes that for a problem
//! of the control plane's own network), so the eviction test loses a fake node beside the
//! real one, which stays up.

use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use nodus_e2e::{Cluster, TestNamespace, fake, poll};
use serde_json::json;

/// The harness's grace period (40 s) with room for the monitor period and a taint pass.
const LOST: Duration = Duration::from_secs(90);

fn ready(node: &Node) -> Option<(String, Option<String>)> {
    let condition = node
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")?;
    Some((condition.status.clone(), condition.message.clone()))
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn a_stopped_agent_makes_the_node_unknown_until_it_returns() -> Result<()> {
    let cluster = Cluster::from_env()?;
    let nodes: Api<Node> = Api::all(cluster.admin().await?);
    let name = cluster.node_name();
    cluster.script(&["stop", "nodus"])?;
    let lost = poll(LOST, "the node to go Unknown", || async {
        let node = nodes.get(&name).await?;
        Ok(ready(&node).filter(|(status, _)| status == "Unknown"))
    })
    .await;
    cluster.script(&["start", "nodus"])?;
    let (_, message) = lost?;
    assert_eq!(
        message.as_deref(),
        Some("Kubelet stopped posting node status.")
    );
    // The only node of its zone is down: no NoExecute taint, nothing evicted.
    let node = nodes.get(&name).await?;
    let no_execute = node
        .spec
        .and_then(|s| s.taints)
        .unwrap_or_default()
        .into_iter()
        .filter(|t| t.effect == "NoExecute")
        .count();
    assert_eq!(
        no_execute, 0,
        "a fully disrupted zone is not tainted NoExecute"
    );
    poll(LOST, "the node to be Ready again", || async {
        let node = nodes.get(&name).await?;
        Ok(ready(&node)
            .filter(|(status, _)| status == "True")
            .map(|_| ()))
    })
    .await
}

fn bound(name: &str, node: &str, toleration_seconds: Option<i64>) -> Result<Pod> {
    let mut toleration = json!({ "key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute" });
    if let Some(seconds) = toleration_seconds {
        toleration["tolerationSeconds"] = seconds.into();
    }
    Ok(serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": {
            "nodeName": node,
            "automountServiceAccountToken": false,
            "tolerations": [toleration],
            "containers": [{ "name": "main", "image": "busybox:1.36" }],
        },
    }))?)
}

#[tokio::test]
#[ignore = "needs the local cluster: run e2e/test"]
async fn a_lost_nodes_pods_leave_by_their_tolerations() -> Result<()> {
    let cluster = Cluster::from_env()?;
    let client = cluster.admin().await?;
    let ns = TestNamespace::create(client.clone(), "lost").await?;
    let node = format!("lost-{}", ns.name);
    fake::create(&client, &node, &[], "10.99.0.0/24").await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    pods.create(&PostParams::default(), &bound("short", &node, Some(5))?)
        .await?;
    pods.create(&PostParams::default(), &bound("forever", &node, None)?)
        .await?;
    let nodes: Api<Node> = Api::all(client.clone());
    let outcome = async {
        poll(LOST, "the fake node to be tainted unreachable", || async {
            let n = nodes.get(&node).await?;
            let tainted = n
                .spec
                .and_then(|s| s.taints)
                .unwrap_or_default()
                .iter()
                .any(|t| t.key == "node.kubernetes.io/unreachable" && t.effect == "NoExecute");
            Ok(tainted.then_some(()))
        })
        .await?;
        let evicted = poll(
            Duration::from_secs(60),
            "the short-tolerating pod to be evicted",
            || async {
                let pod = pods.get("short").await?;
                let target = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .and_then(|c| {
                        c.iter()
                            .find(|c| c.type_ == "DisruptionTarget")
                            .and_then(|c| c.reason.clone())
                    });
                Ok(pod.metadata.deletion_timestamp.is_some().then_some(target))
            },
        )
        .await?;
        assert_eq!(evicted.as_deref(), Some("DeletionByTaintManager"));
        let forever = pods.get("forever").await?;
        anyhow::ensure!(
            forever.metadata.deletion_timestamp.is_none(),
            "a pod that tolerates the taint without a limit stays"
        );
        let events = nodus_e2e::pods::events_for(&ns, "short").await?;
        anyhow::ensure!(
            events
                .iter()
                .any(|(reason, message)| reason == "TaintManagerEviction"
                    && message == &format!("Marking for deletion Pod {}/short", ns.name)),
            "the eviction's event: {events:?}"
        );
        Ok(())
    }
    .await;
    // No agent confirms these pods' deletion: force it, then drop the node.
    let force = DeleteParams {
        grace_period_seconds: Some(0),
        ..DeleteParams::default()
    };
    pods.delete_collection(&force, &ListParams::default())
        .await?;
    fake::remove_all(&client)
        .await
        .context("removing the fake node")?;
    outcome
}
