//! Rollout arithmetic: how many pods each of a Deployment's ReplicaSets should have next, as
//! pure functions of the Deployment and the ReplicaSets' sizes and availability.
//!
//! Invariants, as upstream: maxSurge rounds up and maxUnavailable down, and if both come to
//! zero maxUnavailable is 1; a RollingUpdate never plans more than `replicas + maxSurge` pods
//! nor fewer than `replicas - maxUnavailable` available ones; old ReplicaSets shed unhealthy
//! pods before healthy ones, oldest ReplicaSet first; a scaled Deployment spreads the
//! difference over its active ReplicaSets in proportion to their share of the size they were
//! sized for (the `max-replicas` annotation), larger ones first, leftovers to the first.
//! Plans name ReplicaSets and the size they get, in the order upstream writes them.
//! Upstream: `pkg/controller/deployment/util/deployment_util.go` (`ResolveFenceposts`,
//! `NewRSNewReplicas`, `GetProportion`, `IsSaturated`, `FindActiveOrLatest`),
//! `rolling.go` (`reconcileOldReplicaSets`, `cleanupUnhealthyReplicas`,
//! `scaleDownOldReplicaSetsForRollingUpdate`), `sync.go` (`scale`, `isScalingEvent`) and
//! `k8s.io/apimachinery/pkg/util/intstr` (`GetScaledValueFromIntOrPercent`).

use std::cmp::Ordering;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::revision::{DESIRED_REPLICAS, MAX_REPLICAS, int_annotation};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArithmeticError {
    #[error("invalid value for IntOrString {value:?}: a string must be a percentage")]
    NotPercent { value: String },
}

/// The API server's default for both fenceposts.
fn default_fencepost() -> IntOrString {
    IntOrString::String("25%".into())
}

/// Upstream's `GetScaledValueFromIntOrPercent`: a number as it is; a percentage of `total`,
/// rounded up or down.
pub fn scaled_value(
    value: &IntOrString,
    total: i32,
    round_up: bool,
) -> Result<i32, ArithmeticError> {
    let text = match value {
        IntOrString::Int(n) => return Ok(*n),
        IntOrString::String(text) => text,
    };
    let percent: i64 = text
        .strip_suffix('%')
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| ArithmeticError::NotPercent {
            value: text.clone(),
        })?;
    let product = percent * i64::from(total);
    let scaled = if round_up {
        product.div_euclid(100) + i64::from(product.rem_euclid(100) != 0)
    } else {
        product.div_euclid(100)
    };
    Ok(i32::try_from(scaled).unwrap_or(i32::MAX))
}

/// Upstream's `ResolveFenceposts`: (surge, unavailable) for `desired` pods; an absent value
/// is 0.
pub fn resolve_fenceposts(
    max_surge: Option<&IntOrString>,
    max_unavailable: Option<&IntOrString>,
    desired: i32,
) -> Result<(i32, i32), ArithmeticError> {
    let zero = IntOrString::Int(0);
    let surge = scaled_value(max_surge.unwrap_or(&zero), desired, true)?;
    let unavailable = scaled_value(max_unavailable.unwrap_or(&zero), desired, false)?;
    // Validation refuses both at zero, but rounding down can get there; surge might not work
    // (quota), so upstream allows one unavailable pod.
    if surge == 0 && unavailable == 0 {
        return Ok((0, 1));
    }
    Ok((surge, unavailable))
}

/// `spec.replicas`, 1 when unset as the API server defaults it.
pub fn replicas(d: &Deployment) -> i32 {
    d.spec.replicas.unwrap_or(1)
}

pub fn is_recreate(d: &Deployment) -> bool {
    d.spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate")
}

fn fenceposts(d: &Deployment) -> Result<(i32, i32), ArithmeticError> {
    let rolling = d
        .spec
        .strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref());
    let default = default_fencepost();
    match rolling {
        Some(r) => resolve_fenceposts(
            r.max_surge.as_ref(),
            r.max_unavailable.as_ref(),
            replicas(d),
        ),
        None => resolve_fenceposts(Some(&default), Some(&default), replicas(d)),
    }
}

/// Upstream's `MaxSurge`: 0 for Recreate (and for values validation refuses).
pub fn max_surge(d: &Deployment) -> i32 {
    if is_recreate(d) {
        return 0;
    }
    fenceposts(d).map_or(0, |(surge, _)| surge)
}

/// Upstream's `MaxUnavailable`: 0 for Recreate or no replicas, never more than replicas.
pub fn max_unavailable(d: &Deployment) -> i32 {
    if is_recreate(d) || replicas(d) == 0 {
        return 0;
    }
    fenceposts(d).map_or(0, |(_, unavailable)| unavailable.min(replicas(d)))
}

/// A ReplicaSet's `spec.replicas` (1 when unset, the API default).
pub fn size(rs: &ReplicaSet) -> i32 {
    rs.spec.replicas.unwrap_or(1)
}

/// Pods the ReplicaSet reports (its `status.replicas`).
pub fn actual(rs: &ReplicaSet) -> i32 {
    rs.status.as_ref().map_or(0, |s| s.replicas)
}

pub fn available(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
}

pub fn ready(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0)
}

pub fn name(rs: &ReplicaSet) -> String {
    rs.metadata.name.clone().unwrap_or_default()
}

/// Upstream's `ReplicaSetsByCreationTimestamp`: older first, then by name.
pub fn by_creation(a: &ReplicaSet, b: &ReplicaSet) -> Ordering {
    a.metadata
        .creation_timestamp
        .cmp(&b.metadata.creation_timestamp)
        .then_with(|| a.metadata.name.cmp(&b.metadata.name))
}

/// Upstream's `NewRSNewReplicas`: the size the new ReplicaSet may grow to now.
pub fn new_rs_replicas(
    d: &Deployment,
    all: &[&ReplicaSet],
    new: &ReplicaSet,
) -> Result<i32, ArithmeticError> {
    if is_recreate(d) {
        return Ok(replicas(d));
    }
    let (surge, _) = fenceposts(d)?;
    let current: i32 = all.iter().map(|rs| size(rs)).sum();
    let max_total = replicas(d) + surge;
    if current >= max_total {
        return Ok(size(new));
    }
    let up = (max_total - current).min(replicas(d) - size(new));
    Ok(size(new) + up)
}

/// Upstream's `reconcileOldReplicaSets` as a plan: first scale down old ReplicaSets' pods
/// that are not available (they hold no availability, so only the total caps it), then
/// healthy pods as far as minimum availability allows. `old` are the active old ReplicaSets.
/// A ReplicaSet may appear twice (cleaned up, then scaled down), as upstream writes it twice.
pub fn old_scale_down(d: &Deployment, new: &ReplicaSet, old: &[&ReplicaSet]) -> Vec<(String, i32)> {
    let old_count: i32 = old.iter().map(|rs| size(rs)).sum();
    if old_count == 0 {
        return Vec::new();
    }
    let all_count = old_count + size(new);
    let min_available = replicas(d) - max_unavailable(d);
    let new_unavailable = size(new) - available(new);
    let max_scaled_down = all_count - min_available - new_unavailable;
    if max_scaled_down <= 0 {
        return Vec::new();
    }
    let mut sorted: Vec<&ReplicaSet> = old.to_vec();
    sorted.sort_by(|a, b| by_creation(a, b));
    let mut sizes: Vec<i32> = sorted.iter().map(|rs| size(rs)).collect();
    let mut plan = Vec::new();

    // cleanupUnhealthyReplicas
    let mut cleaned = 0;
    for (i, rs) in sorted.iter().enumerate() {
        if cleaned >= max_scaled_down {
            break;
        }
        let unhealthy = sizes[i] - available(rs);
        if sizes[i] == 0 || unhealthy <= 0 {
            continue;
        }
        let down = (max_scaled_down - cleaned).min(unhealthy);
        sizes[i] -= down;
        cleaned += down;
        plan.push((name(rs), sizes[i]));
    }

    // scaleDownOldReplicaSetsForRollingUpdate: availability does not change with the sizes.
    let available_count: i32 = old.iter().map(|rs| available(rs)).sum::<i32>() + available(new);
    if available_count <= min_available {
        return plan;
    }
    let to_scale_down = available_count - min_available;
    let mut scaled = 0;
    for (i, rs) in sorted.iter().enumerate() {
        if scaled >= to_scale_down {
            break;
        }
        if sizes[i] == 0 {
            continue;
        }
        let down = sizes[i].min(to_scale_down - scaled);
        sizes[i] -= down;
        scaled += down;
        plan.push((name(rs), sizes[i]));
    }
    plan
}

/// Upstream's `IsSaturated`: the ReplicaSet has all the Deployment's pods, all available,
/// and was sized for this very count.
pub fn is_saturated(d: &Deployment, rs: &ReplicaSet) -> bool {
    int_annotation(rs, DESIRED_REPLICAS) == Some(replicas(d))
        && size(rs) == replicas(d)
        && available(rs) == replicas(d)
}

/// Upstream's `FindActiveOrLatest`: the one ReplicaSet with pods, or, if none has any, the
/// new one or else the newest old one; None when several have pods.
pub fn find_active_or_latest<'a>(
    new: Option<&'a ReplicaSet>,
    old: &[&'a ReplicaSet],
) -> Option<&'a ReplicaSet> {
    let mut all: Vec<&ReplicaSet> = old
        .iter()
        .copied()
        .chain(new)
        .filter(|rs| size(rs) > 0)
        .collect();
    match all.len() {
        0 => new.or_else(|| old.iter().copied().max_by(|a, b| by_creation(a, b))),
        1 => all.pop(),
        _ => None,
    }
}

/// Upstream's `isScalingEvent`: an active ReplicaSet was sized for another replica count.
pub fn is_scaling_event(d: &Deployment, all: &[&ReplicaSet]) -> bool {
    all.iter()
        .filter(|rs| size(rs) > 0)
        .filter_map(|rs| int_annotation(rs, DESIRED_REPLICAS))
        .any(|desired| desired != replicas(d))
}

/// How a scaled (or paused) Deployment's ReplicaSets change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scaling {
    /// These sizes, each written only if the size differs (`scaleReplicaSetAndRecordEvent`).
    Resize(Vec<(String, i32)>),
    /// Every active ReplicaSet at these sizes, each written if its size or replica
    /// annotations differ (`scaleReplicaSet`).
    Proportional(Vec<(String, i32)>),
}

/// Upstream's `scale`: the one active (or latest) ReplicaSet gets every pod; else a
/// saturated new one leaves the old ones none; else a RollingUpdate spreads the difference
/// proportionally. None when there is nothing to do.
pub fn scaling(d: &Deployment, new: Option<&ReplicaSet>, old: &[&ReplicaSet]) -> Option<Scaling> {
    if let Some(rs) = find_active_or_latest(new, old) {
        if size(rs) == replicas(d) {
            return None;
        }
        return Some(Scaling::Resize(vec![(name(rs), replicas(d))]));
    }
    if new.is_some_and(|rs| is_saturated(d, rs)) {
        let old = old.iter().filter(|rs| size(rs) > 0).map(|rs| (name(rs), 0));
        return Some(Scaling::Resize(old.collect()));
    }
    if is_recreate(d) {
        return None;
    }
    let mut active: Vec<&ReplicaSet> = old
        .iter()
        .copied()
        .chain(new)
        .filter(|rs| size(rs) > 0)
        .collect();
    let current: i32 = active.iter().map(|rs| size(rs)).sum();
    let allowed = if replicas(d) > 0 {
        replicas(d) + max_surge(d)
    } else {
        0
    };
    let to_add = allowed - current;
    // Larger first; among equals, newer first when growing and older first when shrinking.
    match to_add.cmp(&0) {
        Ordering::Greater => {
            active.sort_by(|a, b| size(b).cmp(&size(a)).then_with(|| by_creation(b, a)))
        }
        Ordering::Less => {
            active.sort_by(|a, b| size(b).cmp(&size(a)).then_with(|| by_creation(a, b)))
        }
        Ordering::Equal => {}
    }
    let mut added = 0;
    let mut sizes: Vec<(String, i32)> = Vec::with_capacity(active.len());
    for rs in &active {
        let share = if to_add == 0 {
            0
        } else {
            proportion(rs, d, to_add, added)
        };
        added += share;
        sizes.push((name(rs), size(rs) + share));
    }
    if to_add != 0
        && let Some(first) = sizes.first_mut()
    {
        first.1 = (first.1 + to_add - added).max(0);
    }
    Some(Scaling::Proportional(sizes))
}

/// Upstream's `GetProportion`: the ReplicaSet's share of `to_add`, never past what is left.
fn proportion(rs: &ReplicaSet, d: &Deployment, to_add: i32, added: i32) -> i32 {
    if size(rs) == 0 || to_add == 0 || to_add == added {
        return 0;
    }
    let fraction = fraction(rs, d);
    let allowed = to_add - added;
    if to_add > 0 {
        fraction.min(allowed)
    } else {
        fraction.max(allowed)
    }
}

/// Upstream's `getReplicaSetFraction`: how much the ReplicaSet grows or shrinks if it keeps
/// its share of the Deployment's maximum size.
fn fraction(rs: &ReplicaSet, d: &Deployment) -> i32 {
    if replicas(d) == 0 {
        return -size(rs);
    }
    let max_now = replicas(d) + max_surge(d);
    let max_before = match int_annotation(rs, MAX_REPLICAS).filter(|m| *m != 0) {
        Some(max) => max,
        // Made by something else, or the annotation removed: the Deployment's size then.
        None => match d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0) {
            0 => return 0,
            reported => reported,
        },
    };
    // Rounded half away from zero, as upstream's RoundToInt32 (the value is never negative).
    let scaled = f64::from(size(rs)) * f64::from(max_now) / f64::from(max_before);
    let rounded = (scaled + 0.5).floor();
    // In range: a ReplicaSet's size times a ratio of two replica counts.
    rounded as i32 - size(rs)
}

/// Whether old ReplicaSets may still run pods, so that Recreate must not start new ones.
/// Upstream reads the pods; this reads what each ReplicaSet reports of them (`replicas`,
/// `terminatingReplicas`), trusting only a status that has seen its latest spec.
pub fn old_pods_running(old: &[&ReplicaSet]) -> bool {
    old.iter().any(|rs| {
        let status = rs.status.clone().unwrap_or_default();
        status.replicas > 0
            || status.terminating_replicas.unwrap_or(0) > 0
            || status.observed_generation.unwrap_or(0) < rs.metadata.generation.unwrap_or(0)
    })
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{annotated, deployment, intstr, recreate, rs};
    use super::*;

    #[test]
    fn percentages_round_as_upstream() {
        // (value, total, round up, want)
        let cases = [
            ("25%", 10, true, Ok(3)),
            ("25%", 10, false, Ok(2)),
            ("25%", 4, true, Ok(1)),
            ("0%", 10, true, Ok(0)),
            ("100%", 7, false, Ok(7)),
            ("1%", 1, true, Ok(1)),
            ("1%", 1, false, Ok(0)),
            ("5", 10, true, Ok(5)),
            (
                "half",
                10,
                true,
                Err(ArithmeticError::NotPercent {
                    value: "half".into(),
                }),
            ),
        ];
        for (value, total, up, want) in cases {
            assert_eq!(
                scaled_value(&intstr(value), total, up),
                want,
                "{value} of {total}, up {up}"
            );
        }
        // A number written as a string is not a percentage either.
        assert!(scaled_value(&IntOrString::String("5".into()), 10, true).is_err());
    }

    #[test]
    fn fenceposts_resolve_and_never_both_zero() {
        // (surge, unavailable, desired, want)
        let cases = [
            ("25%", "25%", 10, (3, 2)),
            ("25%", "25%", 1, (1, 0)),
            ("0%", "25%", 3, (0, 1)),
            ("0", "10%", 5, (0, 1)),
            ("1", "0", 5, (1, 0)),
            ("50%", "2", 3, (2, 2)),
        ];
        for (surge, unavailable, desired, want) in cases {
            let got = resolve_fenceposts(Some(&intstr(surge)), Some(&intstr(unavailable)), desired);
            assert_eq!(
                got,
                Ok(want),
                "surge {surge}, unavailable {unavailable}, {desired} desired"
            );
        }
        assert_eq!(resolve_fenceposts(None, None, 5), Ok((0, 1)));
        assert_eq!(
            max_unavailable(&deployment(2, "0", "5")),
            2,
            "capped at replicas"
        );
        assert_eq!(max_unavailable(&deployment(0, "1", "1")), 0);
        assert_eq!(
            (max_surge(&recreate(3)), max_unavailable(&recreate(3))),
            (0, 0)
        );
    }

    #[test]
    fn the_new_replicaset_grows_within_the_surge() {
        // (deployment replicas, surge, new size, old sizes, want)
        let cases = [
            (10, "25%", 0, vec![10], 3),
            (10, "25%", 3, vec![10], 3),
            (10, "25%", 8, vec![4], 9),
            (10, "25%", 10, vec![], 10),
            (3, "0", 0, vec![3], 0),
            (3, "1", 2, vec![1], 3),
        ];
        for (replicas, surge, new_size, old_sizes, want) in cases {
            let d = deployment(replicas, surge, "1");
            let new = rs("new", new_size, 0, 10);
            let old: Vec<_> = old_sizes.iter().map(|s| rs("old", *s, *s, 1)).collect();
            let mut all: Vec<&ReplicaSet> = old.iter().collect();
            all.push(&new);
            assert_eq!(
                new_rs_replicas(&d, &all, &new),
                Ok(want),
                "{replicas} replicas, surge {surge}, new {new_size}, old {old_sizes:?}"
            );
        }
        let d = recreate(4);
        let new = rs("new", 0, 0, 10);
        assert_eq!(new_rs_replicas(&d, &[&new], &new), Ok(4));
    }

    #[test]
    fn old_replicasets_shed_unhealthy_pods_first_then_as_availability_allows() {
        let d = deployment(10, "25%", "25%"); // surge 3, unavailable 2
        let plan = |new: ReplicaSet, old: Vec<ReplicaSet>| {
            let old: Vec<&ReplicaSet> = old.iter().collect();
            old_scale_down(&d, &new, &old)
        };
        let named = |pairs: &[(&str, i32)]| -> Vec<(String, i32)> {
            pairs.iter().map(|(n, s)| ((*n).to_owned(), *s)).collect()
        };
        // Rollout start: 13 pods, 10 available, 8 must stay available.
        assert_eq!(
            plan(rs("new", 3, 0, 10), vec![rs("old", 10, 10, 1)]),
            named(&[("old", 8)])
        );
        // New pods not available yet: nothing more may go.
        assert_eq!(
            plan(rs("new", 5, 0, 10), vec![rs("old", 8, 8, 1)]),
            named(&[])
        );
        // An unhealthy old ReplicaSet goes first, cleaned up then scaled down.
        assert_eq!(
            plan(
                rs("new", 3, 3, 10),
                vec![rs("b", 5, 5, 2), rs("a", 5, 2, 1)]
            ),
            named(&[("a", 2), ("a", 0)])
        );
        // Unhealthy pods are cleaned up even when availability allows no scale-down.
        assert_eq!(
            plan(rs("new", 3, 0, 10), vec![rs("old", 10, 7, 1)]),
            named(&[("old", 8)])
        );
        assert_eq!(plan(rs("new", 10, 10, 10), vec![]), named(&[]));
    }

    #[test]
    fn a_scaled_deployment_spreads_pods_in_proportion() {
        // The upstream documentation's example: 10 replicas, surge 3, a blocked rollout with
        // 8 old and 5 new pods, scaled to 15: 3 more old pods and 2 more new ones.
        let sized_for =
            |r: ReplicaSet| annotated(r, &[(DESIRED_REPLICAS, "10"), (MAX_REPLICAS, "13")]);
        let new = sized_for(rs("new", 5, 0, 10));
        let old = sized_for(rs("old", 8, 8, 1));
        let d = deployment(15, "3", "2");
        assert_eq!(
            scaling(&d, Some(&new), &[&old]),
            Some(Scaling::Proportional(vec![
                ("old".into(), 11),
                ("new".into(), 7)
            ]))
        );
        // Scaled back to 10: back to the sizes it had.
        let new15 = annotated(rs("new", 7, 0, 10), &[(MAX_REPLICAS, "18")]);
        let old15 = annotated(rs("old", 11, 11, 1), &[(MAX_REPLICAS, "18")]);
        assert_eq!(
            scaling(&deployment(10, "3", "2"), Some(&new15), &[&old15]),
            Some(Scaling::Proportional(vec![
                ("old".into(), 8),
                ("new".into(), 5)
            ]))
        );
        // Scaled to zero: everything goes.
        assert_eq!(
            scaling(&deployment(0, "3", "2"), Some(&new), &[&old]),
            Some(Scaling::Proportional(vec![
                ("old".into(), 0),
                ("new".into(), 0)
            ]))
        );
    }

    #[test]
    fn one_active_replicaset_takes_every_pod_and_a_saturated_new_one_ends_the_old() {
        let d = deployment(5, "25%", "25%");
        let old = rs("old", 3, 3, 1);
        let empty_new = rs("new", 0, 0, 10);
        assert_eq!(
            scaling(&d, Some(&empty_new), &[&old]),
            Some(Scaling::Resize(vec![("old".into(), 5)]))
        );
        // None active: the new one, else the newest old one.
        let idle = rs("idle", 0, 0, 5);
        let older = rs("older", 0, 0, 1);
        assert_eq!(
            find_active_or_latest(Some(&empty_new), &[&idle]).map(name),
            Some("new".into())
        );
        assert_eq!(
            find_active_or_latest(None, &[&older, &idle]).map(name),
            Some("idle".into())
        );
        assert_eq!(scaling(&d, None, &[&rs("done", 5, 5, 1)]), None);

        let saturated = annotated(rs("new", 5, 5, 10), &[(DESIRED_REPLICAS, "5")]);
        assert!(is_saturated(&d, &saturated));
        assert!(!is_saturated(&d, &rs("new", 5, 5, 10)), "not sized for 5");
        assert_eq!(
            scaling(&d, Some(&saturated), &[&old, &idle]),
            Some(Scaling::Resize(vec![("old".into(), 0)]))
        );
    }

    #[test]
    fn scaling_events_and_old_pods_are_told_from_the_replicasets() {
        let d = deployment(5, "25%", "25%");
        let sized = |desired: &str, size: i32| {
            annotated(rs("x", size, size, 1), &[(DESIRED_REPLICAS, desired)])
        };
        assert!(!is_scaling_event(&d, &[&sized("5", 5)]));
        assert!(is_scaling_event(&d, &[&sized("3", 3)]));
        assert!(
            !is_scaling_event(&d, &[&sized("3", 0)]),
            "inactive ones do not count"
        );

        let mut gone = rs("old", 0, 0, 1);
        assert!(!old_pods_running(&[&gone]));
        if let Some(s) = gone.status.as_mut() {
            s.terminating_replicas = Some(2);
        }
        assert!(old_pods_running(&[&gone]), "terminating pods still run");
        let mut unseen = rs("old", 0, 0, 1);
        unseen.metadata.generation = Some(2);
        assert!(
            old_pods_running(&[&unseen]),
            "its status predates the scale-down"
        );
    }
}
