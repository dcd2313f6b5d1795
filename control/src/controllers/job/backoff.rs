//! Pod failure backoff: how long a Job waits before replacing a failed pod — 10 s after one
//! failure since the last success, doubling with each further one up to 10 minutes, timed
//! from when the latest failed pod finished.
//!
//! Invariants: a record only moves on pods counted for the first time (newly succeeded or
//! failed); a success resets it, and only failures that finished after the latest success
//! count again; the wait is the backoff less the time since the latest failure, never
//! negative. Upstream: `pkg/controller/job/backoff_utils.go` (`backoffRecord`,
//! `newBackoffRecord`, `getRemainingTimeForFailuresCount`; `DefaultJobPodFailureBackOff`,
//! `MaxJobPodFailureBackOff` in `job_controller.go`). Like upstream's store, records live in
//! memory: a restarted controller forgets them and replaces failed pods at once.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;

use super::pods::finished_at;

/// Upstream's `DefaultJobPodFailureBackOff`.
pub const BASE: Duration = Duration::from_secs(10);
/// Upstream's `MaxJobPodFailureBackOff` (the Job documentation still says six minutes; the
/// controller's constant is ten).
pub const MAX: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Record {
    pub failures_after_success: u32,
    pub last_failure: Option<Timestamp>,
}

fn when(pod: &Pod, now: Timestamp) -> Timestamp {
    finished_at(pod).unwrap_or(now)
}

impl Record {
    /// Upstream's `newBackoffRecord`: the record after these newly counted pods.
    pub fn update(self, succeeded: &[&Pod], failed: &[&Pod], now: Timestamp) -> Record {
        let latest = |pods: &[&Pod]| pods.iter().map(|p| when(p, now)).max();
        let count = |pods: &[&Pod]| u32::try_from(pods.len()).unwrap_or(u32::MAX);
        let Some(last_success) = latest(succeeded) else {
            if failed.is_empty() {
                return self;
            }
            return Record {
                failures_after_success: self.failures_after_success.saturating_add(count(failed)),
                last_failure: latest(failed).max(self.last_failure),
            };
        };
        let after: Vec<&Pod> = failed
            .iter()
            .copied()
            .filter(|p| when(p, now) > last_success)
            .collect();
        Record {
            failures_after_success: count(&after),
            last_failure: latest(&after),
        }
    }

    /// How long pod creation still waits at `now`.
    pub fn remaining(&self, now: Timestamp) -> Duration {
        let Some(last) = self.last_failure else {
            return Duration::ZERO;
        };
        wait(self.failures_after_success, last, now)
    }
}

/// Upstream's `getRemainingTimeForFailuresCount`: the wait left at `now` after `failures`
/// failures, the last at `last`.
pub fn wait(failures: u32, last: Timestamp, now: Timestamp) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let mut backoff = BASE;
    for _ in 1..failures {
        backoff = backoff.saturating_mul(2);
        if backoff >= MAX {
            backoff = MAX;
            break;
        }
    }
    let elapsed = Duration::try_from(now.duration_since(last)).unwrap_or(Duration::ZERO);
    backoff.saturating_sub(elapsed)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{ContainerState, ContainerStateTerminated, ContainerStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::controllers::replicaset::pods::tests::{at, pod};

    fn finished(name: &str, phase: &str, second: i64) -> Pod {
        let mut p = pod(name, "n1", phase, None, 0);
        if let Some(status) = p.status.as_mut() {
            status.container_statuses = Some(vec![ContainerStatus {
                name: "main".into(),
                state: Some(ContainerState {
                    terminated: Some(ContainerStateTerminated {
                        finished_at: Some(Time(at(second))),
                        ..ContainerStateTerminated::default()
                    }),
                    ..ContainerState::default()
                }),
                ..ContainerStatus::default()
            }]);
        }
        p
    }

    #[test]
    fn failures_double_the_wait_and_a_success_resets_it() {
        let f1 = finished("f1", "Failed", 100);
        let f2 = finished("f2", "Failed", 200);
        let s = finished("s", "Succeeded", 150);
        let now = at(205);
        let one = Record::default().update(&[], &[&f1], now);
        assert_eq!(one.failures_after_success, 1);
        assert_eq!(one.last_failure, Some(at(100)));
        let two = one.update(&[], &[&f2], now);
        // Two failures: 20 s from the latest, 5 s of which have passed.
        assert_eq!(two.remaining(now), Duration::from_secs(15));
        // A success between them keeps only the later failure.
        let mixed = one.update(&[&s], &[&f2], now);
        assert_eq!(
            mixed,
            Record {
                failures_after_success: 1,
                last_failure: Some(at(200))
            }
        );
        assert_eq!(
            mixed.update(&[&finished("s2", "Succeeded", 204)], &[], now),
            Record::default()
        );
        assert_eq!(two.update(&[], &[], now), two, "nothing new, nothing moves");
    }

    #[test]
    fn the_wait_is_capped_and_never_negative() {
        // (failures, seconds since the last, remaining seconds)
        let cases = [
            (0, 0, 0),
            (1, 0, 10),
            (1, 4, 6),
            (1, 30, 0),
            (3, 0, 40),
            (7, 0, 600),
            (40, 100, 500),
        ];
        for (failures, since, want) in cases {
            let record = Record {
                failures_after_success: failures,
                last_failure: Some(at(1000)),
            };
            assert_eq!(
                record.remaining(at(1000 + since)),
                Duration::from_secs(want),
                "{failures} failures, {since} s ago"
            );
        }
    }
}
