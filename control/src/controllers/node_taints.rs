//! Node taints: the taints that mirror a node's conditions (the node lifecycle
//! controller's "taint nodes by condition"), so that the scheduler keeps pods off nodes
//! that are not ready, under pressure or cordoned, and lets them on again when they
//! recover. The API server's admission taints every new node `not-ready`; this is what
//! lifts that taint once the node reports Ready.
//!
//! Level-triggered: each node's taints are recomputed from its current conditions; only
//! the taints listed in [`MANAGED`] are ever added or removed.

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use kube::{Api, Client};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

const NOT_READY: &str = "node.kubernetes.io/not-ready";
const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
const UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";

/// (condition type, status that sets the taint, taint key), all NoSchedule.
const BY_CONDITION: &[(&str, &str, &str)] = &[
    (
        "MemoryPressure",
        "True",
        "node.kubernetes.io/memory-pressure",
    ),
    ("DiskPressure", "True", "node.kubernetes.io/disk-pressure"),
    ("PIDPressure", "True", "node.kubernetes.io/pid-pressure"),
    (
        "NetworkUnavailable",
        "True",
        "node.kubernetes.io/network-unavailable",
    ),
];

/// The NoSchedule taints this controller owns.
pub const MANAGED: &[&str] = &[
    NOT_READY,
    UNREACHABLE,
    UNSCHEDULABLE,
    "node.kubernetes.io/memory-pressure",
    "node.kubernetes.io/disk-pressure",
    "node.kubernetes.io/pid-pressure",
    "node.kubernetes.io/network-unavailable",
];

fn no_schedule(key: &str) -> Taint {
    Taint {
        key: key.to_owned(),
        effect: "NoSchedule".to_owned(),
        value: None,
        time_added: None,
    }
}

/// The node's taints as they should be: its own taints, with the managed NoSchedule
/// taints set from its conditions. A taint that stays keeps its timeAdded.
pub fn desired(node: &Node, now: Timestamp) -> Vec<Taint> {
    let current = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let conditions = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let status = |kind: &str| {
        conditions
            .iter()
            .find(|c| c.type_ == kind)
            .map(|c| c.status.as_str())
    };
    let mut wanted = Vec::new();
    match status("Ready") {
        Some("True") => {}
        Some("False") => wanted.push(NOT_READY),
        // Never reported, or Unknown: the node is not known to be able to run pods.
        None => wanted.push(NOT_READY),
        Some(_) => wanted.push(UNREACHABLE),
    }
    for (kind, when, key) in BY_CONDITION {
        if status(kind) == Some(*when) {
            wanted.push(key);
        }
    }
    if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
        wanted.push(UNSCHEDULABLE);
    }
    let managed = |t: &Taint| t.effect == "NoSchedule" && MANAGED.contains(&t.key.as_str());
    let mut taints: Vec<Taint> = current.iter().filter(|t| !managed(t)).cloned().collect();
    for key in wanted {
        let kept = current.iter().find(|t| managed(t) && t.key == key).cloned();
        taints.push(kept.unwrap_or_else(|| Taint {
            time_added: Some(Time(now)),
            ..no_schedule(key)
        }));
    }
    taints
}

fn same_taints(a: &[Taint], b: &[Taint]) -> bool {
    let key = |t: &Taint| (t.key.clone(), t.effect.clone(), t.value.clone());
    let mut a: Vec<_> = a.iter().map(key).collect();
    let mut b: Vec<_> = b.iter().map(key).collect();
    a.sort();
    b.sort();
    a == b
}

/// Reconciles every node's condition taints until cancelled.
pub async fn run(client: Client, cancel: CancellationToken) {
    let nodes: Api<Node> = Api::all(client);
    let mut stream = watcher::watcher(nodes.clone(), watcher::Config::default())
        .default_backoff()
        .applied_objects()
        .boxed();
    loop {
        let node = tokio::select! {
            _ = cancel.cancelled() => return,
            next = stream.next() => match next {
                Some(Ok(node)) => node,
                Some(Err(err)) => {
                    warn!(error = %err, "watching nodes failed; retrying");
                    continue;
                }
                None => return,
            },
        };
        let name = node.metadata.name.clone().unwrap_or_default();
        let current = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        let wanted = desired(&node, Timestamp::now());
        if same_taints(&current, &wanted) {
            continue;
        }
        // The resourceVersion makes the write conditional: if the node changed meanwhile,
        // the next watch event brings it back here with fresh taints.
        let patch = json!({
            "metadata": { "resourceVersion": node.metadata.resource_version },
            "spec": { "taints": wanted },
        });
        match nodes
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                info!(node = %name, taints = ?wanted.iter().map(|t| t.key.as_str()).collect::<Vec<_>>(), "node taints follow its conditions")
            }
            // A newer version comes with its own event; a deleted node needs no taints.
            Err(kube::Error::Api(status)) if status.is_conflict() || status.is_not_found() => {}
            Err(err) => warn!(node = %name, error = %err, "updating node taints failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{NodeCondition, NodeSpec, NodeStatus};

    use super::*;

    fn node(conditions: &[(&str, &str)], taints: Vec<Taint>, unschedulable: bool) -> Node {
        Node {
            spec: Some(NodeSpec {
                taints: Some(taints),
                unschedulable: Some(unschedulable),
                ..NodeSpec::default()
            }),
            status: Some(NodeStatus {
                conditions: Some(
                    conditions
                        .iter()
                        .map(|(kind, status)| NodeCondition {
                            type_: (*kind).into(),
                            status: (*status).into(),
                            ..NodeCondition::default()
                        })
                        .collect(),
                ),
                ..NodeStatus::default()
            }),
            ..Node::default()
        }
    }

    fn keys(taints: &[Taint]) -> Vec<&str> {
        taints.iter().map(|t| t.key.as_str()).collect()
    }

    #[test]
    fn a_ready_node_loses_the_not_ready_taint_and_keeps_its_own() {
        let own = Taint {
            key: "dedicated".into(),
            value: Some("infra".into()),
            effect: "NoSchedule".into(),
            time_added: None,
        };
        let n = node(
            &[("Ready", "True")],
            vec![no_schedule(NOT_READY), own.clone()],
            false,
        );
        assert_eq!(desired(&n, Timestamp::now()), vec![own]);
    }

    #[test]
    fn conditions_add_their_taints() {
        let now = Timestamp::now();
        assert_eq!(
            keys(&desired(&node(&[("Ready", "False")], vec![], false), now)),
            vec![NOT_READY]
        );
        assert_eq!(
            keys(&desired(&node(&[("Ready", "Unknown")], vec![], false), now)),
            vec![UNREACHABLE]
        );
        assert_eq!(
            keys(&desired(&node(&[], vec![], false), now)),
            vec![NOT_READY]
        );
        let pressed = node(
            &[
                ("Ready", "True"),
                ("DiskPressure", "True"),
                ("MemoryPressure", "False"),
            ],
            vec![],
            true,
        );
        assert_eq!(
            keys(&desired(&pressed, now)),
            vec!["node.kubernetes.io/disk-pressure", UNSCHEDULABLE]
        );
    }

    #[test]
    fn a_taint_that_stays_keeps_its_time_and_unmanaged_effects_are_left_alone() {
        let since = Taint {
            time_added: Some(Time(Timestamp::from_second(1_700_000_000).expect("time"))),
            ..no_schedule(NOT_READY)
        };
        let execute = Taint {
            effect: "NoExecute".into(),
            ..no_schedule(NOT_READY)
        };
        let n = node(
            &[("Ready", "False")],
            vec![since.clone(), execute.clone()],
            false,
        );
        let taints = desired(&n, Timestamp::now());
        assert_eq!(taints, vec![execute, since]);
        assert!(same_taints(
            &taints,
            &n.spec.and_then(|s| s.taints).unwrap_or_default()
        ));
    }
}
