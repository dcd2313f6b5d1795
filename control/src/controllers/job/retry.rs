//! Retry: how a key goes back to its queue after a sync, for the Job and DaemonSet
//! controllers — the pod writes it made are expected, and it comes back when they show (or
//! are given up on), at a time the sync asked for, soon after a stale read, or after its
//! backoff when the sync failed.
//!
//! Invariants: a success forgets the key's failures; a stale read (the object changed under
//! a write) retries after [`STALE_RETRY`] without counting as a failure; any other failure,
//! or a task that panicked, waits out the key's exponential backoff. Upstream: the
//! `processNextWorkItem` of each controller (`queue.Forget` / `queue.AddRateLimited`).

use std::fmt::Display;
use std::hash::Hash;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::controllers::chain;
use crate::controllers::owner::ObjectKey;
use crate::controllers::queue::Queue;
use crate::controllers::replicaset::expectations::{self, Expectations};

/// How soon a key whose object changed under a write is looked at again (its watch event
/// usually brings it back sooner).
pub const STALE_RETRY: Duration = Duration::from_secs(1);

/// Records a sync's accepted pod writes for `owner`; while they are not all seen, the key
/// comes back once they would be given up on (a relist can miss a pod that came and went).
pub fn expect_writes<K: Ord + Hash + Clone>(
    queue: &mut Queue<K>,
    expected: &mut Expectations<ObjectKey>,
    (owner, key): (&ObjectKey, &K),
    (created, deleted): (Vec<String>, Vec<(String, String)>),
    now: Instant,
) {
    expected.expect(owner.clone(), created, deleted, now);
    if expected.is_pending(owner) {
        queue.add_after(
            key.clone(),
            now + expectations::TTL + Duration::from_secs(1),
        );
    }
}

/// Asks for the key again at the wall-clock time `at` (plus `slack`).
pub fn recheck<K: Ord + Hash + Clone>(
    queue: &mut Queue<K>,
    key: &K,
    at: Timestamp,
    slack: Duration,
    now: Instant,
) {
    let left = Duration::try_from(at.duration_since(Timestamp::now())).unwrap_or(Duration::ZERO);
    queue.add_after(key.clone(), now + left + slack);
}

/// Requeues the key as its sync's result says; `stale` tells the errors that retry without
/// backing off.
pub fn after_sync<K, E>(
    queue: &mut Queue<K>,
    key: K,
    result: Result<(), E>,
    stale: impl Fn(&E) -> bool,
    now: Instant,
) where
    K: Ord + Hash + Clone + Display,
    E: std::error::Error,
{
    match result {
        Ok(()) => queue.forget(&key),
        Err(err) if stale(&err) => {
            debug!(key = %key, error = %chain(&err), "retrying");
            queue.add_after(key, now + STALE_RETRY);
        }
        Err(err) => {
            let delay = queue.backoff(&key);
            warn!(key = %key, error = %chain(&err), retry_in = ?delay, "sync failed");
            queue.add_after(key, now + delay);
        }
    }
}

/// The task syncing the key panicked or was cancelled: it backs off like a failure.
pub fn after_panic<K>(queue: &mut Queue<K>, key: K, err: &tokio::task::JoinError, now: Instant)
where
    K: Ord + Hash + Clone + Display,
{
    warn!(key = %key, error = %err, "sync task failed");
    queue.done(&key);
    let delay = queue.backoff(&key);
    queue.add_after(key, now + delay);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::queue::Backoff;

    #[derive(Debug, thiserror::Error)]
    #[error("boom")]
    struct Boom {
        stale: bool,
    }

    #[tokio::test(start_paused = true)]
    async fn keys_come_back_as_their_result_says() {
        let mut q = Queue::new(Backoff {
            base: Duration::from_secs(2),
            max: Duration::from_secs(60),
        });
        let mut now = Instant::now();
        let key = ObjectKey::new("shop", "pi");
        // (result, how long until the key is due again)
        let rows = [
            (Err(Boom { stale: true }), STALE_RETRY),
            (Err(Boom { stale: false }), Duration::from_secs(2)),
            (Err(Boom { stale: false }), Duration::from_secs(4)),
        ];
        for (i, (result, wait)) in rows.into_iter().enumerate() {
            after_sync(&mut q, key.clone(), result, |e: &Boom| e.stale, now);
            assert_eq!(q.next_wakeup(), Some(now + wait), "row {i}");
            now += wait;
            assert_eq!(q.pop(now), Some(key.clone()));
            q.done(&key);
        }
        after_sync(
            &mut q,
            key.clone(),
            Ok::<(), Boom>(()),
            |e: &Boom| e.stale,
            now,
        );
        assert!(q.is_empty());
        assert_eq!(
            q.backoff(&key),
            Duration::from_secs(2),
            "failures forgotten"
        );

        let mut expected = Expectations::default();
        expect_writes(
            &mut q,
            &mut expected,
            (&key, &key),
            (vec!["pi-a".to_owned()], Vec::new()),
            now,
        );
        assert_eq!(
            q.next_wakeup(),
            Some(now + expectations::TTL + Duration::from_secs(1))
        );
    }
}
