//! Queue: the pods waiting for this scheduler, each in one state — active (ready now, taken
//! by priority then arrival), backing off (after a failed attempt: 1 s doubling to 10 s, as
//! upstream's podInitialBackoff/podMaxBackoff), unschedulable (no node fits; parked until a
//! cluster event may change that, or 5 minutes pass, as upstream's
//! podMaxInUnschedulablePodsDuration) or in flight (being scheduled or bound).
//! Invariant: a key is in `active` exactly when its entry's state is `Active`.
//!
//! Time comes in as an argument (`tokio::time::Instant`), so tests drive it with a paused
//! clock. Simpler than upstream: every relevant event moves every parked pod (no per-plugin
//! queueing hints).

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use tokio::time::{Duration, Instant};

pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
pub const MAX_UNSCHEDULABLE: Duration = Duration::from_secs(5 * 60);

/// Whether a pod is this scheduler's to place: asks for it by name (unset means
/// `default-scheduler`, the API default), is not bound, not finished and not being deleted.
pub fn wants(pod: &Pod, scheduler_name: &str) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return false;
    };
    let asked = spec
        .scheduler_name
        .as_deref()
        .unwrap_or("default-scheduler");
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    asked == scheduler_name
        && spec.node_name.as_deref().is_none_or(str::is_empty)
        && !matches!(phase, Some("Succeeded" | "Failed"))
        && pod.metadata.deletion_timestamp.is_none()
}

/// Upstream's backoff: 1 s for the first failed attempt, doubling, at most 10 s.
pub fn backoff(attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(16);
    INITIAL_BACKOFF
        .saturating_mul(1 << doublings)
        .min(MAX_BACKOFF)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Active,
    Backoff {
        until: Instant,
    },
    Unschedulable {
        since: Instant,
    },
    /// Popped during move cycle `cycle`; an event since then means the attempt saw stale
    /// state, so a failure backs off instead of parking.
    InFlight {
        cycle: u64,
    },
}

#[derive(Debug)]
struct Entry {
    pod: Arc<Pod>,
    attempts: u32,
    failed_at: Option<Instant>,
    state: State,
    /// Position in `active`: (higher priority first, then arrival).
    order: (Reverse<i32>, u64),
}

#[derive(Debug, Default)]
pub struct Queue {
    entries: HashMap<String, Entry>,
    active: BTreeSet<(Reverse<i32>, u64, String)>,
    seq: u64,
    move_cycle: u64,
}

/// The fields whose change may make an unschedulable pod fit; status writes (ours
/// included) are not among them.
fn pod_changed(old: &Pod, new: &Pod) -> bool {
    old.spec != new.spec
        || old.metadata.labels != new.metadata.labels
        || old.metadata.annotations != new.metadata.annotations
}

impl Queue {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn activate(&mut self, key: &str) {
        self.seq += 1;
        let seq = self.seq;
        if let Some(entry) = self.entries.get_mut(key) {
            if entry.state == State::Active {
                return;
            }
            entry.state = State::Active;
            entry.order.1 = seq;
            self.active.insert((entry.order.0, seq, key.to_owned()));
        }
    }

    fn deactivate(&mut self, key: &str) {
        if let Some(entry) = self.entries.get(key)
            && entry.state == State::Active
        {
            self.active
                .remove(&(entry.order.0, entry.order.1, key.to_owned()));
        }
    }

    /// A pod this scheduler wants, new or updated.
    pub fn upsert(&mut self, key: &str, pod: Pod, now: Instant) {
        let priority = pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0);
        let Some(entry) = self.entries.get_mut(key) else {
            self.entries.insert(
                key.to_owned(),
                Entry {
                    pod: Arc::new(pod),
                    attempts: 0,
                    failed_at: None,
                    state: State::Backoff { until: now },
                    order: (Reverse(priority), 0),
                },
            );
            self.activate(key);
            return;
        };
        let changed = pod_changed(&entry.pod, &pod);
        entry.pod = Arc::new(pod);
        if changed && matches!(entry.state, State::Unschedulable { .. }) {
            self.wake(key, now);
        }
    }

    /// The pod is bound, deleted or no longer this scheduler's.
    pub fn remove(&mut self, key: &str) {
        self.deactivate(key);
        self.entries.remove(key);
    }

    /// The next pod to schedule, if one is ready; it stays in flight until `unschedulable`,
    /// `retry` or `remove`.
    pub fn pop(&mut self, now: Instant) -> Option<(String, Arc<Pod>)> {
        self.flush(now);
        let first = self.active.pop_first()?;
        let key = first.2;
        let entry = self
            .entries
            .get_mut(&key)
            .expect("every active key has an entry");
        entry.state = State::InFlight {
            cycle: self.move_cycle,
        };
        Some((key, Arc::clone(&entry.pod)))
    }

    /// No node fits: park the pod until an event (or the leftover flush) moves it.
    pub fn unschedulable(&mut self, key: &str, now: Instant) {
        let move_cycle = self.move_cycle;
        let Some(entry) = self.entries.get_mut(key) else {
            return;
        };
        entry.attempts += 1;
        entry.failed_at = Some(now);
        match entry.state {
            State::InFlight { cycle } if cycle < move_cycle => {
                entry.state = State::Backoff {
                    until: now + backoff(entry.attempts),
                };
            }
            _ => entry.state = State::Unschedulable { since: now },
        }
    }

    /// The attempt failed for another reason (binding error): try again after backoff.
    pub fn retry(&mut self, key: &str, now: Instant) {
        let Some(entry) = self.entries.get_mut(key) else {
            return;
        };
        self.active
            .remove(&(entry.order.0, entry.order.1, key.to_owned()));
        entry.attempts += 1;
        entry.failed_at = Some(now);
        entry.state = State::Backoff {
            until: now + backoff(entry.attempts),
        };
    }

    /// A cluster event that may let parked pods fit (a node added or changed, a bound pod
    /// deleted): each goes back, through the rest of its backoff.
    pub fn move_all(&mut self, now: Instant) {
        self.move_cycle += 1;
        let parked: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| matches!(e.state, State::Unschedulable { .. }))
            .map(|(k, _)| k.clone())
            .collect();
        for key in parked {
            self.wake(&key, now);
        }
    }

    fn wake(&mut self, key: &str, now: Instant) {
        let Some(entry) = self.entries.get_mut(key) else {
            return;
        };
        let until = entry
            .failed_at
            .map(|at| at + backoff(entry.attempts))
            .unwrap_or(now);
        if until > now {
            entry.state = State::Backoff { until };
        } else {
            self.activate(key);
        }
    }

    /// Moves pods whose backoff is over, and pods parked too long, to active.
    fn flush(&mut self, now: Instant) {
        let ready: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| match e.state {
                State::Backoff { until } => until <= now,
                State::Unschedulable { since } => since + MAX_UNSCHEDULABLE <= now,
                _ => false,
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in ready {
            self.activate(&key);
        }
    }

    /// The latest copy of a queued pod.
    pub fn pod(&self, key: &str) -> Option<Arc<Pod>> {
        self.entries.get(key).map(|e| Arc::clone(&e.pod))
    }

    /// Drops every pod for which `keep` is false (after a relist).
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        let gone: Vec<String> = self.entries.keys().filter(|k| !keep(k)).cloned().collect();
        for key in gone {
            self.remove(&key);
        }
    }

    /// Whether `pop` would return a pod now.
    pub fn has_ready(&self, now: Instant) -> bool {
        !self.active.is_empty() || self.next_wakeup().is_some_and(|at| at <= now)
    }

    /// When a waiting pod next becomes ready, if any is waiting.
    pub fn next_wakeup(&self) -> Option<Instant> {
        self.entries
            .values()
            .filter_map(|e| match e.state {
                State::Backoff { until } => Some(until),
                State::Unschedulable { since } => Some(since + MAX_UNSCHEDULABLE),
                _ => None,
            })
            .min()
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use kube::api::ObjectMeta;
    use tokio::time::advance;

    use super::*;

    fn pod(name: &str, priority: i32) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                priority: Some(priority),
                ..PodSpec::default()
            }),
            status: None,
        }
    }

    fn popped(queue: &mut Queue) -> Option<String> {
        queue.pop(Instant::now()).map(|(key, _)| key)
    }

    #[test]
    fn wants_only_its_own_pending_pods() {
        let mut other = pod("p", 0);
        other.spec.as_mut().expect("spec").scheduler_name = Some("other".into());
        let mut bound = pod("p", 0);
        bound.spec.as_mut().expect("spec").node_name = Some("n".into());
        let mut done = pod("p", 0);
        done.status = Some(PodStatus {
            phase: Some("Succeeded".into()),
            ..PodStatus::default()
        });
        let mut deleting = pod("p", 0);
        deleting.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        let mut named = pod("p", 0);
        named.spec.as_mut().expect("spec").scheduler_name = Some("default-scheduler".into());
        let cases = [
            (
                "unset name means default-scheduler",
                pod("p", 0),
                "default-scheduler",
                true,
            ),
            ("explicit default", named, "default-scheduler", true),
            (
                "another scheduler's pod",
                other.clone(),
                "default-scheduler",
                false,
            ),
            ("matches a custom name", other, "other", true),
            (
                "unset name with a custom scheduler",
                pod("p", 0),
                "other",
                false,
            ),
            ("already bound", bound, "default-scheduler", false),
            ("terminal", done, "default-scheduler", false),
            ("being deleted", deleting, "default-scheduler", false),
        ];
        for (name, pod, scheduler, want) in cases {
            assert_eq!(wants(&pod, scheduler), want, "{name}");
        }
    }

    #[test]
    fn backoff_doubles_from_one_to_ten_seconds() {
        let got: Vec<u64> = (1..=7).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(got, vec![1, 2, 4, 8, 10, 10, 10]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    #[tokio::test(start_paused = true)]
    async fn higher_priority_first_then_arrival() {
        let mut queue = Queue::default();
        let now = Instant::now();
        queue.upsert("default/low", pod("low", 0), now);
        queue.upsert("default/high", pod("high", 100), now);
        queue.upsert("default/low2", pod("low2", 0), now);
        assert_eq!(popped(&mut queue).as_deref(), Some("default/high"));
        assert_eq!(popped(&mut queue).as_deref(), Some("default/low"));
        assert_eq!(popped(&mut queue).as_deref(), Some("default/low2"));
        assert_eq!(popped(&mut queue), None);
        assert_eq!(queue.len(), 3, "popped pods stay in flight");
    }

    #[tokio::test(start_paused = true)]
    async fn unschedulable_pods_wait_for_an_event_then_their_backoff() {
        let mut queue = Queue::default();
        queue.upsert("default/p", pod("p", 0), Instant::now());
        assert!(popped(&mut queue).is_some());
        queue.unschedulable("default/p", Instant::now());
        // Parked: nothing happens without an event, however long the backoff is over.
        advance(Duration::from_secs(60)).await;
        assert_eq!(popped(&mut queue), None);

        // An event after the backoff: ready at once.
        queue.move_all(Instant::now());
        assert_eq!(popped(&mut queue).as_deref(), Some("default/p"));

        // Second failure: 2 s backoff; an event half-way leaves it backing off.
        queue.unschedulable("default/p", Instant::now());
        advance(Duration::from_secs(1)).await;
        queue.move_all(Instant::now());
        assert_eq!(popped(&mut queue), None);
        let wake = queue.next_wakeup().expect("backing off");
        tokio::time::sleep_until(wake).await;
        assert_eq!(popped(&mut queue).as_deref(), Some("default/p"));
    }

    #[tokio::test(start_paused = true)]
    async fn retries_back_off_up_to_ten_seconds() {
        let mut queue = Queue::default();
        queue.upsert("default/p", pod("p", 0), Instant::now());
        for want in [1, 2, 4, 8, 10, 10] {
            assert!(popped(&mut queue).is_some());
            let failed = Instant::now();
            queue.retry("default/p", failed);
            advance(Duration::from_millis(want * 1000 - 1)).await;
            assert_eq!(popped(&mut queue), None, "still backing off at {want} s");
            advance(Duration::from_millis(1)).await;
            assert_eq!(
                queue.next_wakeup(),
                Some(failed + Duration::from_secs(want))
            );
            assert!(queue.has_ready(Instant::now()));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_event_during_the_attempt_backs_off_instead_of_parking() {
        let mut queue = Queue::default();
        queue.upsert("default/p", pod("p", 0), Instant::now());
        assert!(popped(&mut queue).is_some());
        // A node was added while the pod was being filtered against the old node list.
        queue.move_all(Instant::now());
        queue.unschedulable("default/p", Instant::now());
        advance(INITIAL_BACKOFF).await;
        assert_eq!(popped(&mut queue).as_deref(), Some("default/p"));
    }

    #[tokio::test(start_paused = true)]
    async fn parked_pods_are_retried_after_five_minutes() {
        let mut queue = Queue::default();
        queue.upsert("default/p", pod("p", 0), Instant::now());
        assert!(popped(&mut queue).is_some());
        queue.unschedulable("default/p", Instant::now());
        advance(MAX_UNSCHEDULABLE - Duration::from_secs(1)).await;
        assert_eq!(popped(&mut queue), None);
        advance(Duration::from_secs(1)).await;
        assert_eq!(popped(&mut queue).as_deref(), Some("default/p"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_spec_change_requeues_a_parked_pod_but_a_status_write_does_not() {
        let mut queue = Queue::default();
        queue.upsert("default/p", pod("p", 0), Instant::now());
        assert!(popped(&mut queue).is_some());
        queue.unschedulable("default/p", Instant::now());
        advance(Duration::from_secs(5)).await;

        let mut status_only = pod("p", 0);
        status_only.status = Some(PodStatus {
            message: Some("0/1 nodes are available".into()),
            ..PodStatus::default()
        });
        queue.upsert("default/p", status_only, Instant::now());
        assert_eq!(popped(&mut queue), None);

        let mut relabelled = pod("p", 0);
        relabelled.spec.as_mut().expect("spec").node_selector =
            Some([("disk".to_owned(), "ssd".to_owned())].into());
        queue.upsert("default/p", relabelled, Instant::now());
        let (_, pod) = queue.pop(Instant::now()).expect("requeued");
        assert!(
            pod.spec
                .as_ref()
                .and_then(|s| s.node_selector.as_ref())
                .is_some()
        );

        queue.remove("default/p");
        assert!(queue.is_empty());
        assert_eq!(queue.next_wakeup(), None);
    }
}
