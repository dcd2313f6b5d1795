//! Status: a PodDisruptionBudget's counts as a pure function of the budget, the pods it
//! selects and the scale of their controllers — upstream's `getExpectedPodCount`,
//! `buildDisruptedPodMap`, `countHealthyPods` and `updatePdbStatus`
//! (`pkg/controller/disruption/disruption.go`).

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::controllers::owner::controller_of;
use crate::controllers::replicaset::pods::is_ready;

/// Upstream's `DeletionTimeout`: how long a pod the eviction API admitted may take to be
/// deleted before it counts as healthy again.
pub const DELETION_TIMEOUT: SignedDuration = SignedDuration::from_secs(120);
pub const CONDITION: &str = "DisruptionAllowed";

/// How many pods the budget expects and wants healthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub expected: i32,
    pub desired_healthy: i32,
}

/// Why the counts cannot be computed (the budget then allows no disruption).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("found no controllers for pod {0:?}")]
    NoController(String),
    #[error("invalid value for IntOrString: invalid value {0:?}")]
    Percent(String),
    #[error("minAvailable and maxUnavailable are both unset")]
    Unset,
}

/// Whether counting needs the scale of the pods' controllers.
pub fn needs_scale(pdb: &PodDisruptionBudget) -> bool {
    let spec = pdb.spec.as_ref();
    let max_unavailable = spec.and_then(|s| s.max_unavailable.as_ref());
    let min_available = spec.and_then(|s| s.min_available.as_ref());
    max_unavailable.is_some() || matches!(min_available, Some(IntOrString::String(_)))
}

/// Upstream's `GetScaledValueFromIntOrPercent` rounding up.
fn scaled(value: &IntOrString, total: i32) -> Result<i32, Error> {
    match value {
        IntOrString::Int(n) => Ok(*n),
        IntOrString::String(text) => {
            let percent: i64 = text
                .strip_suffix('%')
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| Error::Percent(text.clone()))?;
            let value = (percent * i64::from(total) + 99).div_euclid(100);
            Ok(i32::try_from(value).unwrap_or(i32::MAX))
        }
    }
}

/// The pods without a controller, which a percentage or maxUnavailable cannot count.
pub fn unmanaged<'a>(pods: &[&'a Pod]) -> Vec<&'a Pod> {
    pods.iter()
        .copied()
        .filter(|p| controller_of(&p.metadata).is_none())
        .collect()
}

/// What scales a pod's controller: the object whose replicas count (a Deployment for its
/// ReplicaSets), by uid, and its replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scale {
    pub uid: String,
    pub replicas: i32,
}

/// The expected and desired counts; `scales` holds, by the uid of each pod controller, what
/// scales it (for the budgets that [`needs_scale`]). A Deployment's ReplicaSets count its
/// replicas once.
pub fn counts(
    pdb: &PodDisruptionBudget,
    pods: &[&Pod],
    scales: &HashMap<String, Scale>,
) -> Result<Counts, Error> {
    let spec = pdb.spec.clone().unwrap_or_default();
    let expected_scale = || -> Result<i32, Error> {
        let mut seen = Vec::new();
        let mut total = 0i32;
        for pod in pods {
            let Some(owner) = controller_of(&pod.metadata) else {
                continue;
            };
            let scale = scales.get(&owner.uid).ok_or_else(|| {
                Error::NoController(pod.metadata.name.clone().unwrap_or_default())
            })?;
            if seen.contains(&scale.uid) {
                continue;
            }
            seen.push(scale.uid.clone());
            total = total.saturating_add(scale.replicas);
        }
        Ok(total)
    };
    if let Some(max_unavailable) = &spec.max_unavailable {
        let expected = expected_scale()?;
        let unavailable = scaled(max_unavailable, expected)?;
        return Ok(Counts {
            expected,
            desired_healthy: (expected - unavailable).max(0),
        });
    }
    match &spec.min_available {
        Some(IntOrString::Int(n)) => Ok(Counts {
            expected: i32::try_from(pods.len()).unwrap_or(i32::MAX),
            desired_healthy: *n,
        }),
        Some(percent @ IntOrString::String(_)) => {
            let expected = expected_scale()?;
            Ok(Counts {
                expected,
                desired_healthy: scaled(percent, expected)?,
            })
        }
        None => Err(Error::Unset),
    }
}

/// The disrupted pods still to count as such: admitted for eviction, not yet being deleted,
/// and within [`DELETION_TIMEOUT`]; and when the first of them expires.
pub fn disrupted(
    pdb: &PodDisruptionBudget,
    pods: &[&Pod],
    now: Timestamp,
) -> (BTreeMap<String, Time>, Option<Timestamp>) {
    let listed = pdb
        .status
        .as_ref()
        .and_then(|s| s.disrupted_pods.clone())
        .unwrap_or_default();
    let mut kept = BTreeMap::new();
    let mut recheck: Option<Timestamp> = None;
    for pod in pods {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let Some(at) = listed.get(&name) else {
            continue;
        };
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let expires = at.0 + DELETION_TIMEOUT;
        if expires < now {
            continue;
        }
        recheck = Some(recheck.map_or(expires, |r| r.min(expires)));
        kept.insert(name, at.clone());
    }
    (kept, recheck)
}

/// Ready pods that are neither being deleted nor disrupted.
pub fn healthy(pods: &[&Pod], disrupted: &BTreeMap<String, Time>) -> i32 {
    let n = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| !disrupted.contains_key(p.metadata.name.as_deref().unwrap_or_default()))
        .filter(|p| is_ready(p))
        .count();
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// The status the budget should show; the condition keeps its transition time while its
/// status holds. `failure` (why counting failed) makes it allow nothing, as upstream's
/// fail-safe.
pub fn status(
    pdb: &PodDisruptionBudget,
    counts: Option<Counts>,
    current_healthy: i32,
    disrupted: BTreeMap<String, Time>,
    failure: Option<&str>,
    now: Timestamp,
) -> PodDisruptionBudgetStatus {
    let before = pdb.status.clone().unwrap_or_default();
    let generation = pdb.metadata.generation;
    let (expected, desired, allowed) = match (counts, failure) {
        (Some(c), None) => {
            let allowed = current_healthy - c.desired_healthy;
            let allowed = if c.expected <= 0 || allowed <= 0 {
                0
            } else {
                allowed
            };
            (Some(c.expected), Some(c.desired_healthy), allowed)
        }
        _ => (before.expected_pods, before.desired_healthy, 0),
    };
    let (state, reason, message) = match failure {
        Some(why) => ("False", "SyncFailed", why.to_owned()),
        None if allowed > 0 => ("True", "SufficientPods", String::new()),
        None => ("False", "InsufficientPods", String::new()),
    };
    let previous = before
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == CONDITION);
    let since = previous.filter(|c| c.status == state).map_or(
        Time(Timestamp::from_second(now.as_second()).unwrap_or(now)),
        |c| c.last_transition_time.clone(),
    );
    let mut conditions: Vec<Condition> = before
        .conditions
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.type_ != CONDITION)
        .collect();
    conditions.push(Condition {
        type_: CONDITION.into(),
        status: state.into(),
        reason: reason.into(),
        message,
        last_transition_time: since,
        observed_generation: generation,
    });
    PodDisruptionBudgetStatus {
        current_healthy: if failure.is_some() {
            before.current_healthy
        } else {
            Some(current_healthy)
        },
        desired_healthy: desired,
        expected_pods: expected,
        disruptions_allowed: Some(allowed),
        disrupted_pods: (!disrupted.is_empty()).then_some(disrupted),
        observed_generation: generation,
        conditions: Some(conditions),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
    use k8s_openapi::api::policy::v1::PodDisruptionBudgetSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    use super::*;

    fn pod(name: &str, owner: Option<&str>, ready: bool) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                owner_references: owner.map(|uid| {
                    vec![OwnerReference {
                        api_version: "apps/v1".into(),
                        kind: "ReplicaSet".into(),
                        name: uid.into(),
                        uid: uid.into(),
                        controller: Some(true),
                        ..OwnerReference::default()
                    }]
                }),
                ..ObjectMeta::default()
            },
            status: Some(PodStatus {
                phase: Some("Running".into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..PodCondition::default()
                }]),
                ..PodStatus::default()
            }),
            ..Pod::default()
        }
    }

    fn budget(min: Option<IntOrString>, max: Option<IntOrString>) -> PodDisruptionBudget {
        PodDisruptionBudget {
            metadata: ObjectMeta {
                generation: Some(3),
                ..ObjectMeta::default()
            },
            spec: Some(PodDisruptionBudgetSpec {
                min_available: min,
                max_unavailable: max,
                ..PodDisruptionBudgetSpec::default()
            }),
            status: None,
        }
    }

    #[test]
    fn counts_follow_min_available_or_max_unavailable_against_the_controllers_scale() {
        // Two ReplicaSets of one Deployment of 4: counted once.
        let pods = [pod("a", Some("rs1"), true), pod("b", Some("rs2"), true)];
        let pods: Vec<&Pod> = pods.iter().collect();
        let deployment = Scale {
            uid: "deploy".into(),
            replicas: 4,
        };
        let scales = HashMap::from([
            ("rs1".to_owned(), deployment.clone()),
            ("rs2".to_owned(), deployment),
        ]);
        let cases = [
            (budget(Some(IntOrString::Int(1)), None), Ok((2, 1))),
            (
                budget(Some(IntOrString::String("50%".into())), None),
                Ok((4, 2)),
            ),
            (budget(None, Some(IntOrString::Int(1))), Ok((4, 3))),
            (
                budget(None, Some(IntOrString::String("30%".into()))),
                Ok((4, 2)),
            ),
            (budget(None, Some(IntOrString::Int(9))), Ok((4, 0))),
            (
                budget(None, Some(IntOrString::String("x".into()))),
                Err(Error::Percent("x".into())),
            ),
        ];
        for (pdb, want) in cases {
            let got = counts(&pdb, &pods, &scales).map(|c| (c.expected, c.desired_healthy));
            assert_eq!(got, want, "{:?}", pdb.spec);
        }
        let unknown = counts(
            &budget(None, Some(IntOrString::Int(1))),
            &pods,
            &HashMap::new(),
        );
        assert_eq!(unknown, Err(Error::NoController("a".into())));
        assert!(!needs_scale(&budget(Some(IntOrString::Int(1)), None)));
    }

    #[test]
    fn disruptions_allowed_are_the_healthy_beyond_the_desired() {
        let now: Timestamp = "2026-11-27T04:00:00Z".parse().expect("time");
        let pods = [
            pod("a", Some("rs1"), true),
            pod("b", Some("rs1"), true),
            pod("c", Some("rs1"), false),
        ];
        let pods: Vec<&Pod> = pods.iter().collect();
        let mut pdb = budget(Some(IntOrString::Int(1)), None);
        // "b" was admitted for eviction a minute ago: not healthy for another minute.
        pdb.status = Some(PodDisruptionBudgetStatus {
            disrupted_pods: Some(BTreeMap::from([
                ("b".to_owned(), Time(now - SignedDuration::from_secs(60))),
                ("gone".to_owned(), Time(now)),
            ])),
            ..PodDisruptionBudgetStatus::default()
        });
        let (kept, recheck) = disrupted(&pdb, &pods, now);
        assert_eq!(kept.keys().collect::<Vec<_>>(), ["b"]);
        assert_eq!(recheck, Some(now + SignedDuration::from_secs(60)));
        let current = healthy(&pods, &kept);
        assert_eq!(current, 1);
        let c = counts(&pdb, &pods, &HashMap::new()).ok();
        let s = status(&pdb, c, current, kept.clone(), None, now);
        assert_eq!(
            (s.expected_pods, s.desired_healthy, s.disruptions_allowed),
            (Some(3), Some(1), Some(0))
        );
        let condition = &s.conditions.as_ref().expect("conditions")[0];
        assert_eq!(
            (condition.status.as_str(), condition.reason.as_str()),
            ("False", "InsufficientPods")
        );
        assert_eq!(s.observed_generation, Some(3));

        let later = now + SignedDuration::from_secs(61);
        let (kept, _) = disrupted(&pdb, &pods, later);
        let s = status(&pdb, c, healthy(&pods, &kept), kept, None, later);
        assert_eq!(s.disruptions_allowed, Some(1));
        assert_eq!(
            s.conditions.expect("conditions")[0].reason,
            "SufficientPods"
        );

        let failed = status(
            &pdb,
            None,
            2,
            BTreeMap::new(),
            Some("found no controllers"),
            now,
        );
        assert_eq!(failed.disruptions_allowed, Some(0));
        assert_eq!(
            failed.conditions.expect("conditions")[0].reason,
            "SyncFailed"
        );
    }
}
