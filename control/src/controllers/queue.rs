//! Work queue: the keys a controller still has to reconcile, kept the way upstream's
//! rate-limited workqueue keeps them (`k8s.io/client-go/util/workqueue`).
//!
//! Invariants: a key is queued at most once, now or at one instant later (the earliest
//! asked for); a key handed out by [`Queue::pop`] is not handed out again until
//! [`Queue::done`] (it may be queued meanwhile, and then runs once more); failures of a key
//! count until [`Queue::forget`], and each doubles its next delay up to the cap.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::hash::Hash;
use std::time::Duration;

use tokio::task::{Id, JoinError, JoinSet};
use tokio::time::Instant;

/// Exponential per-key backoff: `base`, doubled per failure, capped at `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

/// Reconciles in flight, each under its key: a task that panics still hands its key back,
/// so that the key is settled (and retried) instead of staying busy for ever.
#[derive(Debug)]
pub struct Tasks<K, T> {
    set: JoinSet<T>,
    running: HashMap<Id, K>,
}

impl<K, T: Send + 'static> Default for Tasks<K, T> {
    fn default() -> Self {
        Tasks {
            set: JoinSet::new(),
            running: HashMap::new(),
        }
    }
}

impl<K, T: Send + 'static> Tasks<K, T> {
    pub fn spawn(&mut self, key: K, task: impl Future<Output = T> + Send + 'static) {
        let handle = self.set.spawn(task);
        self.running.insert(handle.id(), key);
    }

    /// The next task to end, with its key; None when none runs.
    pub async fn next(&mut self) -> Option<(K, Result<T, JoinError>)> {
        loop {
            let (id, result) = match self.set.join_next_with_id().await? {
                Ok((id, value)) => (id, Ok(value)),
                Err(err) => (err.id(), Err(err)),
            };
            if let Some(key) = self.running.remove(&id) {
                return Some((key, result));
            }
        }
    }

    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// Waits for the tasks still running at shutdown, as [`super::drain`] does.
    pub async fn drain(&mut self, what: &str) {
        super::drain(&mut self.set, what).await;
    }
}

/// How a reconcile ended, for [`Queue::settle`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    Done { recheck: Option<Duration> },
    Stale { retry: Duration },
    Failed,
}

#[derive(Debug)]
pub struct Queue<K> {
    dirty: BTreeSet<K>,
    later: HashMap<K, Instant>,
    busy: HashSet<K>,
    failures: HashMap<K, u32>,
    backoff: Backoff,
}

impl<K: Ord + Hash + Clone> Queue<K> {
    pub fn new(backoff: Backoff) -> Self {
        Queue {
            dirty: BTreeSet::new(),
            later: HashMap::new(),
            busy: HashSet::new(),
            failures: HashMap::new(),
            backoff,
        }
    }

    /// Now: an event overrides a pending delay, as upstream's workqueue `Add` does.
    pub fn add(&mut self, key: K) {
        self.later.remove(&key);
        self.dirty.insert(key);
    }

    /// At `at`, or sooner if the key is already due sooner.
    pub fn add_after(&mut self, key: K, at: Instant) {
        if self.dirty.contains(&key) {
            return;
        }
        let when = self.later.entry(key).or_insert(at);
        if at < *when {
            *when = at;
        }
    }

    fn promote(&mut self, now: Instant) {
        let due: Vec<K> = self
            .later
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            self.later.remove(&key);
            self.dirty.insert(key);
        }
    }

    pub fn has_ready(&self, now: Instant) -> bool {
        self.dirty.iter().any(|k| !self.busy.contains(k))
            || self
                .later
                .iter()
                .any(|(k, at)| *at <= now && !self.busy.contains(k))
    }

    pub fn pop(&mut self, now: Instant) -> Option<K> {
        self.promote(now);
        let key = self
            .dirty
            .iter()
            .find(|k| !self.busy.contains(*k))
            .cloned()?;
        self.dirty.remove(&key);
        self.busy.insert(key.clone());
        Some(key)
    }

    pub fn done(&mut self, key: &K) {
        self.busy.remove(key);
    }

    /// When a delayed key that is not busy comes due (a busy one is looked at when it is
    /// done).
    pub fn next_wakeup(&self) -> Option<Instant> {
        self.later
            .iter()
            .filter(|(k, _)| !self.busy.contains(*k))
            .map(|(_, at)| *at)
            .min()
    }

    /// The delay before the key's next try, counting this failure.
    pub fn backoff(&mut self, key: &K) -> Duration {
        let failures = self.failures.entry(key.clone()).or_insert(0);
        let delay = self
            .backoff
            .base
            .saturating_mul(2u32.saturating_pow(*failures))
            .min(self.backoff.max);
        *failures = failures.saturating_add(1);
        delay
    }

    /// The key succeeded: its next failure starts from the base delay again.
    pub fn forget(&mut self, key: &K) {
        self.failures.remove(key);
    }

    /// Ends a reconcile of `key` (handed out by [`Queue::pop`]) by how it went: a success
    /// forgets its failures and comes back after `recheck` if asked; a write that met a
    /// newer object comes back after `stale` without counting as a failure; a failure backs
    /// off, and the delay is returned for the log.
    pub fn settle(&mut self, key: K, ending: Ending, now: Instant) -> Option<Duration> {
        self.done(&key);
        match ending {
            Ending::Done { recheck } => {
                self.forget(&key);
                if let Some(wait) = recheck {
                    self.add_after(key, now + wait);
                }
                None
            }
            Ending::Stale { retry } => {
                self.add_after(key, now + retry);
                None
            }
            Ending::Failed => {
                let delay = self.backoff(&key);
                self.add_after(key, now + delay);
                Some(delay)
            }
        }
    }

    /// The key's object is gone: nothing of it stays queued (a running reconcile still ends
    /// with [`Queue::done`]).
    pub fn remove(&mut self, key: &K) {
        self.dirty.remove(key);
        self.later.remove(key);
        self.failures.remove(key);
    }

    /// Keys queued or running, for tests and logs.
    pub fn len(&self) -> usize {
        let mut keys: HashSet<&K> = self.dirty.iter().collect();
        keys.extend(self.later.keys());
        keys.extend(self.busy.iter());
        keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BACKOFF: Backoff = Backoff {
        base: Duration::from_secs(1),
        max: Duration::from_secs(60),
    };

    #[tokio::test(start_paused = true)]
    async fn keys_are_deduplicated_delayed_and_never_handed_out_while_busy() {
        let mut q = Queue::new(BACKOFF);
        let now = Instant::now();
        q.add("a");
        q.add("a");
        q.add_after("b", now + Duration::from_secs(5));
        q.add_after("b", now + Duration::from_secs(9));
        assert_eq!(q.len(), 2);
        assert_eq!(q.pop(now), Some("a"));
        assert_eq!(q.pop(now), None, "b is not due, a is busy");
        q.add("a");
        assert!(!q.has_ready(now), "a is queued again but still busy");
        assert_eq!(q.next_wakeup(), Some(now + Duration::from_secs(5)));
        q.done(&"a");
        assert_eq!(q.pop(now), Some("a"));
        q.done(&"a");
        assert_eq!(q.pop(now + Duration::from_secs(5)), Some("b"));
        q.done(&"b");
        assert!(q.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_removed_key_is_gone_and_an_event_overrides_a_delay() {
        let mut q = Queue::new(BACKOFF);
        let now = Instant::now();
        q.add_after("a", now + Duration::from_secs(5));
        q.add("a");
        assert_eq!(q.next_wakeup(), None);
        q.backoff(&"a");
        q.remove(&"a");
        assert!(q.is_empty());
        assert_eq!(
            q.backoff(&"a"),
            Duration::from_secs(1),
            "failures forgotten"
        );
    }

    #[test]
    fn backoff_doubles_is_capped_and_forgotten_on_success() {
        let mut q = Queue::new(BACKOFF);
        let delays: Vec<u64> = (0..8).map(|_| q.backoff(&"a").as_secs()).collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 32, 60, 60]);
        q.forget(&"a");
        assert_eq!(q.backoff(&"a"), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn settling_a_sync_rechecks_retries_or_backs_off() {
        let mut q = Queue::new(BACKOFF);
        let now = Instant::now();
        q.add("a");
        assert_eq!(q.pop(now), Some("a"));
        assert_eq!(
            q.settle("a", Ending::Failed, now),
            Some(Duration::from_secs(1))
        );
        assert_eq!(q.next_wakeup(), Some(now + Duration::from_secs(1)));
        assert_eq!(q.pop(now + Duration::from_secs(1)), Some("a"));
        let stale = Ending::Stale {
            retry: Duration::from_millis(10),
        };
        assert_eq!(q.settle("a", stale, now), None, "no failure counted");
        assert_eq!(q.pop(now + Duration::from_secs(1)), Some("a"));
        assert_eq!(
            q.settle("a", Ending::Failed, now),
            Some(Duration::from_secs(2))
        );
        assert_eq!(q.pop(now + Duration::from_secs(2)), Some("a"));
        let done = Ending::Done {
            recheck: Some(Duration::from_secs(30)),
        };
        assert_eq!(q.settle("a", done, now), None);
        assert_eq!(q.next_wakeup(), Some(now + Duration::from_secs(30)));
        assert_eq!(
            q.backoff(&"a"),
            Duration::from_secs(1),
            "failures forgotten"
        );
    }
}
