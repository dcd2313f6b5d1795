//! Expectations: the pods a ReplicaSet's last sync created and deleted that the pod watch
//! has not shown yet. Until it shows them (or [`TTL`] passes), the ReplicaSet's pods are not
//! managed again: counting from a store that lags its own writes would create or delete twice.
//!
//! Invariants: only writes the API server accepted are expected (a refused create never shows
//! up); a create is seen once the store holds a pod of that name; a delete once the store no
//! longer holds that pod (by uid) or shows it terminating; a pod the watch reports deleted
//! settles any create of it too (it came and went between two looks); seen writes are dropped
//! as they are seen, and a key with nothing left pending is satisfied. A pod the watch
//! reports deleted before its sync's writes were recorded (another controller deleted it
//! while the sync was still creating) is remembered for [`TTL`], so that its create is not
//! awaited in vain. Upstream:
//! `pkg/controller/controller_utils.go` (`ControllerExpectations`,
//! `UIDTrackingControllerExpectations`, `ExpectationsTimeout`), which counts watch events
//! instead of naming pods; names make the check a pure function of the store.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::Hash;
use std::time::Duration;

use tokio::time::Instant;

/// Upstream's `ExpectationsTimeout`: after this, a write the watch never showed (a relist can
/// skip a pod that came and went) is given up on and the store trusted.
pub const TTL: Duration = Duration::from_secs(5 * 60);

/// What the pod store shows under a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    Absent,
    Present { uid: String, terminating: bool },
}

#[derive(Debug)]
struct Pending {
    since: Instant,
    creates: BTreeSet<String>,
    /// Pod name to the uid that was deleted.
    deletes: BTreeMap<String, String>,
}

#[derive(Debug)]
pub struct Expectations<K> {
    pending: HashMap<K, Pending>,
    /// Pods the watch reported deleted, by owner: name and when, for [`TTL`].
    gone: HashMap<K, Vec<(String, Instant)>>,
}

impl<K> Default for Expectations<K> {
    fn default() -> Self {
        Expectations {
            pending: HashMap::new(),
            gone: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq> Expectations<K> {
    /// Records a sync's accepted writes: pods created (by name) and deleted (name, uid).
    pub fn expect(
        &mut self,
        key: K,
        creates: impl IntoIterator<Item = String>,
        deletes: impl IntoIterator<Item = (String, String)>,
        now: Instant,
    ) {
        let mut pending = Pending {
            since: now,
            creates: creates.into_iter().collect(),
            deletes: deletes.into_iter().collect(),
        };
        // Writes the watch already reported gone are not awaited.
        if let Some(gone) = self.gone.get(&key) {
            for (name, _) in gone {
                pending.creates.remove(name);
                pending.deletes.remove(name);
            }
        }
        if pending.creates.is_empty() && pending.deletes.is_empty() {
            return;
        }
        self.pending.insert(key, pending);
    }

    /// Whether the key's pods may be managed: everything expected has been seen through
    /// `seen`, or waited for longer than [`TTL`]. Forgets what it no longer waits for.
    pub fn satisfied(&mut self, key: &K, now: Instant, seen: impl Fn(&str) -> Seen) -> bool {
        let Some(pending) = self.pending.get_mut(key) else {
            return true;
        };
        pending.creates.retain(|name| seen(name) == Seen::Absent);
        pending.deletes.retain(|name, uid| match seen(name) {
            Seen::Absent => false,
            Seen::Present {
                uid: present,
                terminating,
            } => present == *uid && !terminating,
        });
        let done = pending.creates.is_empty() && pending.deletes.is_empty();
        if done || now >= pending.since + TTL {
            self.pending.remove(key);
            return true;
        }
        false
    }

    /// The watch reported the pod deleted: neither its create nor its delete is awaited,
    /// also by a sync whose writes are recorded later.
    pub fn observe_gone(&mut self, key: &K, name: &str)
    where
        K: Clone,
    {
        if let Some(pending) = self.pending.get_mut(key) {
            pending.creates.remove(name);
            pending.deletes.remove(name);
        }
        let now = Instant::now();
        let gone = self.gone.entry(key.clone()).or_default();
        gone.retain(|(_, at)| now < *at + TTL);
        gone.push((name.to_owned(), now));
    }

    /// The ReplicaSet is gone.
    pub fn forget(&mut self, key: &K) {
        self.pending.remove(key);
        self.gone.remove(key);
    }

    /// Whether writes of the key are still awaited.
    pub fn is_pending(&self, key: &K) -> bool {
        self.pending.contains_key(key)
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn present(uid: &str, terminating: bool) -> Seen {
        Seen::Present {
            uid: uid.into(),
            terminating,
        }
    }

    /// A store lookup over (name, what is seen) pairs; anything else is absent.
    fn store(pods: &[(&str, Seen)]) -> impl Fn(&str) -> Seen {
        let pods: Vec<(String, Seen)> = pods
            .iter()
            .map(|(n, s)| ((*n).to_owned(), s.clone()))
            .collect();
        move |name| {
            pods.iter()
                .find(|(n, _)| n == name)
                .map_or(Seen::Absent, |(_, s)| s.clone())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_sync_waits_until_the_store_shows_its_writes() {
        let now = Instant::now();
        let mut e = Expectations::default();
        assert!(e.satisfied(&"rs", now, store(&[])), "nothing expected");
        e.expect(
            "rs",
            ["web-a".to_owned(), "web-b".to_owned()],
            [("web-old".to_owned(), "uid-old".to_owned())],
            now,
        );
        // (store contents, satisfied): each row is what the watch has shown by then.
        let rows = [
            (vec![("web-old", present("uid-old", false))], false),
            (
                vec![
                    ("web-a", present("uid-a", false)),
                    ("web-old", present("uid-old", true)),
                ],
                false,
            ),
            (vec![("web-b", present("uid-b", false))], true),
        ];
        for (i, (pods, want)) in rows.into_iter().enumerate() {
            assert_eq!(e.satisfied(&"rs", now, store(&pods)), want, "row {i}");
        }
        assert!(e.is_empty(), "satisfied keys are forgotten");
    }

    #[tokio::test(start_paused = true)]
    async fn a_pod_replaced_under_the_same_name_counts_as_deleted() {
        let now = Instant::now();
        let mut e = Expectations::default();
        e.expect("rs", [], [("web-x".to_owned(), "uid-1".to_owned())], now);
        assert!(!e.satisfied(&"rs", now, store(&[("web-x", present("uid-1", false))])));
        assert!(e.satisfied(&"rs", now, store(&[("web-x", present("uid-2", false))])));
    }

    #[tokio::test(start_paused = true)]
    async fn unseen_writes_are_given_up_on_after_the_ttl_and_gone_pods_settle_creates() {
        let now = Instant::now();
        let mut e = Expectations::default();
        e.expect("rs", ["web-a".to_owned()], [], now);
        assert!(!e.satisfied(&"rs", now + TTL - Duration::from_secs(1), store(&[])));
        assert!(e.satisfied(&"rs", now + TTL, store(&[])));

        e.expect("rs", ["web-a".to_owned(), "web-b".to_owned()], [], now);
        e.observe_gone(&"rs", "web-a");
        assert!(e.satisfied(&"rs", now, store(&[("web-b", present("uid-b", false))])));

        e.expect("rs", ["web-c".to_owned()], [], now);
        e.forget(&"rs");
        assert!(e.is_empty());

        // Created and already deleted by someone else before the sync recorded its writes.
        e.observe_gone(&"rs", "web-d");
        e.expect("rs", ["web-d".to_owned(), "web-e".to_owned()], [], now);
        assert!(e.satisfied(&"rs", now, store(&[("web-e", present("uid-e", false))])));
        e.forget(&"rs");
        assert!(e.is_empty());
        e.expect("rs", [], [], now);
        assert!(e.is_empty(), "nothing written, nothing expected");
    }
}
