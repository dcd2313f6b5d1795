//! Node health: when the controller last saw each node report (a new Ready heartbeat or a
//! renewed Lease), and what the node's conditions become once it has been silent for longer
//! than the grace period.
//!
//! Invariants: a node is judged by when *this controller* saw its heartbeat or lease change
//! (the probe time), never by the node's own timestamps, so a node's clock skew cannot make
//! it look dead or alive; a node seen for the first time gets a full grace period from now,
//! except one that never reported Ready, which is timed from its creation with the startup
//! grace period; silence turns Ready, MemoryPressure, DiskPressure and PIDPressure Unknown
//! (NetworkUnavailable belongs to the network, not the kubelet), a missing one is added as
//! never updated, and an Unknown one is left as it is, transition time included. Upstream:
//! `pkg/controller/nodelifecycle/node_lifecycle_controller.go` (`tryUpdateNodeHealth`).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

pub const READY: &str = "Ready";
/// The conditions the kubelet posts and this controller turns Unknown.
pub const KUBELET_CONDITIONS: [&str; 4] = [READY, "MemoryPressure", "DiskPressure", "PIDPressure"];
pub const REASON_UNKNOWN: &str = "NodeStatusUnknown";
pub const MESSAGE_UNKNOWN: &str = "Kubelet stopped posting node status.";
pub const REASON_NEVER: &str = "NodeStatusNeverUpdated";
pub const MESSAGE_NEVER: &str = "Kubelet never posted node status.";

/// What the controller remembers of a node between passes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// The Ready condition's lastHeartbeatTime when last seen; None if it had no Ready
    /// condition.
    heartbeat: Option<Option<Timestamp>>,
    /// The node Lease's renewTime when last seen.
    renewed: Option<Timestamp>,
    /// When the controller last saw the node report.
    pub probe: Timestamp,
    /// The Ready status the last pass left, for the NodeNotReady event.
    pub ready: Option<String>,
}

pub fn condition<'a>(node: &'a Node, kind: &str) -> Option<&'a NodeCondition> {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default()
        .iter()
        .find(|c| c.type_ == kind)
}

/// The Ready condition's status, if the node has one.
pub fn ready_status(node: &Node) -> Option<&str> {
    condition(node, READY).map(|c| c.status.as_str())
}

fn created(node: &Node) -> Option<Timestamp> {
    node.metadata.creation_timestamp.as_ref().map(|t| t.0)
}

/// The node's health after this look at it, given what was remembered (`before`), its
/// Lease and the time.
pub fn observe(
    before: Option<Health>,
    node: &Node,
    lease: Option<&Lease>,
    now: Timestamp,
) -> Health {
    let heartbeat = condition(node, READY).map(|c| c.last_heartbeat_time.as_ref().map(|t| t.0));
    let renewed = lease
        .and_then(|l| l.spec.as_ref())
        .and_then(|s| s.renew_time.as_ref())
        .map(|t| t.0);
    let mut health = match before {
        // Never reported Ready: timed from its creation, so that the startup grace period
        // is not restarted by every restart of this controller.
        None if heartbeat.is_none() => Health {
            heartbeat: None,
            renewed: None,
            probe: created(node).unwrap_or(now),
            ready: None,
        },
        None => Health {
            heartbeat: None,
            renewed: None,
            probe: now,
            ready: None,
        },
        Some(mut before) => {
            // A heartbeat that changed, or a Ready condition that came or went.
            let changed = match (&before.heartbeat, &heartbeat) {
                (None, None) => false,
                (Some(a), Some(b)) => a != b,
                _ => true,
            };
            if changed {
                before.probe = now;
            }
            before
        }
    };
    health.heartbeat = heartbeat;
    // Only a renewal later than the one seen counts: an older Lease (a relist) is no sign
    // of life.
    if let Some(renewed) = renewed
        && health.renewed.is_none_or(|seen| seen < renewed)
    {
        health.renewed = Some(renewed);
        health.probe = now;
    }
    health
}

/// Whether the node has been silent for longer than its grace period: `startup` for a node
/// that never reported Ready, `grace` otherwise.
pub fn silent(
    health: &Health,
    node: &Node,
    grace: Duration,
    startup: Duration,
    now: Timestamp,
) -> bool {
    let period = if condition(node, READY).is_some() {
        grace
    } else {
        startup
    };
    match health.probe.checked_add(period) {
        Ok(deadline) => now > deadline,
        Err(_) => false,
    }
}

/// The conditions of a silent node that change, as they become: each kubelet condition
/// Unknown with upstream's reason and message, a transition at `now` for those that were
/// not Unknown, the heartbeat kept; missing ones added as never updated. Empty when all
/// are Unknown already.
pub fn unknown(node: &Node, now: Timestamp) -> Vec<NodeCondition> {
    let mut changed = Vec::new();
    for kind in KUBELET_CONDITIONS {
        match condition(node, kind) {
            None => changed.push(NodeCondition {
                type_: kind.into(),
                status: "Unknown".into(),
                reason: Some(REASON_NEVER.into()),
                message: Some(MESSAGE_NEVER.into()),
                last_heartbeat_time: node.metadata.creation_timestamp.clone(),
                last_transition_time: Some(Time(now)),
            }),
            Some(current) if current.status != "Unknown" => changed.push(NodeCondition {
                status: "Unknown".into(),
                reason: Some(REASON_UNKNOWN.into()),
                message: Some(MESSAGE_UNKNOWN.into()),
                last_transition_time: Some(Time(now)),
                ..current.clone()
            }),
            Some(_) => {}
        }
    }
    changed
}

#[cfg(test)]
pub(crate) mod tests {
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::api::core::v1::NodeStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    use kube::api::ObjectMeta;

    use super::*;

    pub(crate) fn at(second: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + second).expect("time")
    }

    /// A node created at 0 whose Ready condition has `status` and a heartbeat at
    /// `heartbeat` (None: no Ready condition).
    pub(crate) fn node(name: &str, ready: Option<(&str, i64)>) -> Node {
        let conditions = ready.map(|(status, heartbeat)| {
            vec![NodeCondition {
                type_: READY.into(),
                status: status.into(),
                reason: Some("KubeletReady".into()),
                message: Some("kubelet is posting ready status".into()),
                last_heartbeat_time: Some(Time(at(heartbeat))),
                last_transition_time: Some(Time(at(0))),
            }]
        });
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                creation_timestamp: Some(Time(at(0))),
                resource_version: Some("10".into()),
                ..ObjectMeta::default()
            },
            spec: None,
            status: Some(NodeStatus {
                conditions,
                ..NodeStatus::default()
            }),
        }
    }

    pub(crate) fn lease(renewed: i64) -> Lease {
        Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                renew_time: Some(MicroTime(at(renewed))),
                ..LeaseSpec::default()
            }),
        }
    }

    const GRACE: Duration = Duration::from_secs(50);
    const STARTUP: Duration = Duration::from_secs(60);

    /// One look at a node: (now, Ready heartbeat, lease renewal).
    type Step = (i64, Option<i64>, Option<i64>);

    /// Plays a node's history: each step is (now, Ready heartbeat, lease renewal), and the
    /// result is whether the node counts as silent after each.
    fn play(steps: &[Step]) -> Vec<bool> {
        let mut health = None;
        steps
            .iter()
            .map(|(now, heartbeat, renewed)| {
                let n = node("n1", heartbeat.map(|h| ("True", h)));
                let l = renewed.map(lease);
                let h = observe(health.take(), &n, l.as_ref(), at(*now));
                let silent = silent(&h, &n, GRACE, STARTUP, at(*now));
                health = Some(h);
                silent
            })
            .collect()
    }

    #[test]
    fn silence_is_timed_from_the_last_change_the_controller_saw() {
        type Case = (&'static str, Vec<Step>, Vec<bool>);
        let cases: [Case; 6] = [
            (
                "heartbeats keep it alive",
                vec![
                    (100, Some(90), None),
                    (140, Some(130), None),
                    (180, Some(170), None),
                ],
                vec![false, false, false],
            ),
            (
                "a frozen heartbeat times out after the grace period",
                vec![
                    (100, Some(90), None),
                    (150, Some(90), None),
                    (151, Some(90), None),
                ],
                vec![false, false, true],
            ),
            (
                "lease renewals keep it alive without heartbeats",
                vec![
                    (100, Some(0), Some(95)),
                    (149, Some(0), Some(140)),
                    (198, Some(0), Some(190)),
                ],
                vec![false, false, false],
            ),
            (
                "an old heartbeat seen first counts from the first sight (restart)",
                vec![
                    (1000, Some(0), Some(0)),
                    (1049, Some(0), Some(0)),
                    (1051, Some(0), Some(0)),
                ],
                vec![false, false, true],
            ),
            (
                "a lease that goes back in time is no renewal",
                vec![
                    (100, Some(0), Some(95)),
                    (140, Some(0), Some(50)),
                    (151, Some(0), Some(50)),
                ],
                vec![false, false, true],
            ),
            (
                "never ready: the startup grace from creation",
                vec![(30, None, None), (60, None, None), (61, None, None)],
                vec![false, false, true],
            ),
        ];
        for (name, steps, want) in cases {
            assert_eq!(play(&steps), want, "{name}");
        }
    }

    #[test]
    fn a_silent_node_turns_unknown_keeping_heartbeats_and_unknown_transitions() {
        let mut n = node("n1", Some(("True", 10)));
        let conditions = n
            .status
            .as_mut()
            .and_then(|s| s.conditions.as_mut())
            .expect("conditions");
        conditions.push(NodeCondition {
            type_: "MemoryPressure".into(),
            status: "False".into(),
            last_heartbeat_time: Some(Time(at(10))),
            last_transition_time: Some(Time(at(0))),
            ..NodeCondition::default()
        });
        conditions.push(NodeCondition {
            type_: "DiskPressure".into(),
            status: "Unknown".into(),
            last_transition_time: Some(Time(at(5))),
            ..NodeCondition::default()
        });
        conditions.push(NodeCondition {
            type_: "NetworkUnavailable".into(),
            status: "False".into(),
            ..NodeCondition::default()
        });
        let changed = unknown(&n, at(100));
        type Summary<'a> = (
            &'a str,
            &'a str,
            Option<&'a str>,
            Option<Timestamp>,
            Option<Timestamp>,
        );
        let summary: Vec<Summary<'_>> = changed
            .iter()
            .map(|c| {
                (
                    c.type_.as_str(),
                    c.status.as_str(),
                    c.reason.as_deref(),
                    c.last_heartbeat_time.as_ref().map(|t| t.0),
                    c.last_transition_time.as_ref().map(|t| t.0),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (
                    "Ready",
                    "Unknown",
                    Some(REASON_UNKNOWN),
                    Some(at(10)),
                    Some(at(100))
                ),
                (
                    "MemoryPressure",
                    "Unknown",
                    Some(REASON_UNKNOWN),
                    Some(at(10)),
                    Some(at(100))
                ),
                (
                    "PIDPressure",
                    "Unknown",
                    Some(REASON_NEVER),
                    Some(at(0)),
                    Some(at(100))
                ),
            ]
        );
        assert_eq!(changed[0].message.as_deref(), Some(MESSAGE_UNKNOWN));
        assert_eq!(changed[2].message.as_deref(), Some(MESSAGE_NEVER));
        assert!(unknown(&node("n1", Some(("Unknown", 10))), at(100)).len() == 3);
    }
}
