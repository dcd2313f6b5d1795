//! Taint-based eviction: when a pod bound to a node with NoExecute taints has to go. A pod
//! that does not tolerate one of them goes at once; one that tolerates each with
//! `tolerationSeconds` goes when the shortest of those has passed since its taint was
//! added; one that tolerates each without a limit stays.
//!
//! Invariants: only NoExecute taints count; each taint is matched by the first toleration
//! that tolerates it (upstream's `GetMatchingTolerations`); a `tolerationSeconds` of zero or
//! less means at once; time runs from the taint's `timeAdded`, or from when the controller
//! first saw the taint if it has none — so a restart of the controller does not restart the
//! clocks, unlike upstream, which times from when it saw the taint. Upstream:
//! `pkg/controller/tainteviction/taint_eviction.go` (`processPodOnNode`,
//! `getMinTolerationTime`).

use k8s_openapi::api::core::v1::{Node, Taint, Toleration};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use nodus_api::selection::tolerates;

/// When a pod must be deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It tolerates every taint for good (or there are none).
    Stays,
    /// It must go now.
    Now,
    /// It must go at this time, unless the taints change first.
    At(Timestamp),
}

/// The node's NoExecute taints.
pub fn no_execute(node: &Node) -> Vec<&Taint> {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default()
        .iter()
        .filter(|t| t.effect == "NoExecute")
        .collect()
}

/// The verdict for a pod with `tolerations` on a node with the NoExecute `taints`; `since`
/// says when each taint was added.
pub fn verdict(
    taints: &[&Taint],
    tolerations: &[Toleration],
    since: impl Fn(&Taint) -> Timestamp,
) -> Verdict {
    let mut deadline: Option<Timestamp> = None;
    for taint in taints {
        let Some(toleration) = tolerations.iter().find(|t| tolerates(t, taint)) else {
            return Verdict::Now;
        };
        let Some(seconds) = toleration.toleration_seconds else {
            continue;
        };
        if seconds <= 0 {
            return Verdict::Now;
        }
        let at = since(taint)
            .checked_add(SignedDuration::from_secs(seconds))
            .unwrap_or(Timestamp::MAX);
        deadline = Some(deadline.map_or(at, |d| d.min(at)));
    }
    deadline.map_or(Verdict::Stays, Verdict::At)
}

/// Upstream's event message when a pod is marked for deletion.
pub fn eviction_note(namespace: &str, name: &str) -> String {
    format!("Marking for deletion Pod {namespace}/{name}")
}

/// Upstream's event message when a scheduled deletion is called off.
pub fn cancel_note(namespace: &str, name: &str) -> String {
    format!("Cancelling deletion of Pod {namespace}/{name}")
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::super::health::tests::at;
    use super::*;

    fn taint(key: &str, added: Option<i64>) -> Taint {
        Taint {
            key: key.into(),
            effect: "NoExecute".into(),
            value: None,
            time_added: added.map(|s| Time(at(s))),
        }
    }

    fn toleration(
        key: Option<&str>,
        operator: &str,
        effect: Option<&str>,
        seconds: Option<i64>,
    ) -> Toleration {
        Toleration {
            key: key.map(Into::into),
            operator: Some(operator.into()),
            effect: effect.map(Into::into),
            toleration_seconds: seconds,
            value: None,
        }
    }

    const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
    const NOT_READY: &str = "node.kubernetes.io/not-ready";

    /// What the DefaultTolerationSeconds admission plugin gives every pod.
    fn defaults() -> Vec<Toleration> {
        vec![
            toleration(Some(NOT_READY), "Exists", Some("NoExecute"), Some(300)),
            toleration(Some(UNREACHABLE), "Exists", Some("NoExecute"), Some(300)),
        ]
    }

    #[test]
    fn when_each_pod_must_go() {
        let unreachable = taint(UNREACHABLE, Some(100));
        let not_ready = taint(NOT_READY, Some(200));
        let custom = taint("dedicated", Some(0));
        let daemon = vec![
            toleration(Some(NOT_READY), "Exists", Some("NoExecute"), None),
            toleration(Some(UNREACHABLE), "Exists", Some("NoExecute"), None),
        ];
        let cases: Vec<(&str, Vec<&Taint>, Vec<Toleration>, Verdict)> = vec![
            ("no taints", vec![], vec![], Verdict::Stays),
            ("no tolerations", vec![&unreachable], vec![], Verdict::Now),
            (
                "defaults: 300 s after the taint",
                vec![&unreachable],
                defaults(),
                Verdict::At(at(400)),
            ),
            (
                "a DaemonSet's pod stays",
                vec![&unreachable],
                daemon.clone(),
                Verdict::Stays,
            ),
            (
                "the shortest toleration counts",
                vec![&unreachable, &not_ready],
                vec![
                    toleration(Some(UNREACHABLE), "Exists", None, Some(600)),
                    toleration(Some(NOT_READY), "Exists", None, Some(60)),
                ],
                Verdict::At(at(260)),
            ),
            (
                "a forever toleration does not cover another taint",
                vec![&unreachable, &custom],
                daemon.clone(),
                Verdict::Now,
            ),
            (
                "tolerate everything",
                vec![&unreachable, &custom],
                vec![toleration(None, "Exists", None, None)],
                Verdict::Stays,
            ),
            (
                "zero seconds is at once",
                vec![&unreachable],
                vec![toleration(Some(UNREACHABLE), "Exists", None, Some(0))],
                Verdict::Now,
            ),
            (
                "the first matching toleration decides",
                vec![&unreachable],
                vec![
                    toleration(Some(UNREACHABLE), "Exists", None, None),
                    toleration(Some(UNREACHABLE), "Exists", None, Some(5)),
                ],
                Verdict::Stays,
            ),
            (
                "a NoSchedule toleration does not tolerate NoExecute",
                vec![&unreachable],
                vec![toleration(
                    Some(UNREACHABLE),
                    "Exists",
                    Some("NoSchedule"),
                    None,
                )],
                Verdict::Now,
            ),
        ];
        for (name, taints, tolerations, want) in cases {
            let got = verdict(&taints, &tolerations, |t| {
                t.time_added.as_ref().map_or(at(1000), |a| a.0)
            });
            assert_eq!(got, want, "{name}");
        }
        let untimed = taint(UNREACHABLE, None);
        assert_eq!(
            verdict(&[&untimed], &defaults(), |_| at(50)),
            Verdict::At(at(350)),
            "no timeAdded: from when it was first seen"
        );
    }

    #[test]
    fn only_no_execute_taints_count() {
        let node = Node {
            spec: Some(k8s_openapi::api::core::v1::NodeSpec {
                taints: Some(vec![
                    Taint {
                        effect: "NoSchedule".into(),
                        ..taint(UNREACHABLE, None)
                    },
                    taint(UNREACHABLE, Some(1)),
                ]),
                ..Default::default()
            }),
            ..Node::default()
        };
        assert_eq!(no_execute(&node), vec![&taint(UNREACHABLE, Some(1))]);
        assert_eq!(
            eviction_note("shop", "web-1"),
            "Marking for deletion Pod shop/web-1"
        );
    }
}
