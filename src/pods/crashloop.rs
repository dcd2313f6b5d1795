//! Crash loop: the kubelet's restart backoff for a container that keeps exiting, and the
//! same schedule for retrying a container that could not be started (image pull, config).
//!
//! A restart is allowed at once the first time; after that each restart waits twice as
//! long as the previous one (10 s, 20 s, 40 s, ... up to 5 minutes). A container that
//! stays up for 10 minutes starts over at no delay.

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

pub const INITIAL: Duration = Duration::from_secs(10);
pub const MAX: Duration = Duration::from_secs(300);
/// A container that ran this long without a restart has its backoff forgotten.
pub const RESET_AFTER: Duration = Duration::from_secs(600);

/// The backoff of one container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// When the last restart (or retry) happened.
    pub last: Timestamp,
    /// The wait before the next one.
    pub delay: Duration,
}

fn add(t: Timestamp, d: Duration) -> Timestamp {
    t.saturating_add(SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX))
        .unwrap_or(Timestamp::MAX)
}

impl Backoff {
    /// When the next restart may happen, if that is still ahead of `now`.
    pub fn blocked_until(this: Option<&Backoff>, now: Timestamp) -> Option<Timestamp> {
        let backoff = this?;
        let until = add(backoff.last, backoff.delay);
        (until > now && now < add(backoff.last, RESET_AFTER)).then_some(until)
    }

    /// Records a restart at `now`, giving the backoff for the next one.
    pub fn record(this: Option<&Backoff>, now: Timestamp) -> Backoff {
        let delay = match this {
            Some(previous) if now < add(previous.last, RESET_AFTER) => {
                (previous.delay * 2).min(MAX)
            }
            _ => INITIAL,
        };
        Backoff { last: now, delay }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).expect("valid time")
    }

    #[test]
    fn first_restart_is_immediate_then_delays_double_up_to_five_minutes() {
        let mut backoff = None;
        let mut now = 0;
        let mut waits = Vec::new();
        for _ in 0..8 {
            let until = Backoff::blocked_until(backoff.as_ref(), at(now));
            let wait = until.map_or(0, |u| u.as_second() - at(now).as_second());
            waits.push(wait);
            now += wait;
            backoff = Some(Backoff::record(backoff.as_ref(), at(now)));
        }
        assert_eq!(waits, vec![0, 10, 20, 40, 80, 160, 300, 300]);
    }

    #[test]
    fn ten_minutes_without_a_restart_forgets_the_backoff() {
        let long = Backoff {
            last: at(0),
            delay: MAX,
        };
        assert_eq!(
            Backoff::blocked_until(Some(&long), at(599)),
            None,
            "300 s have passed"
        );
        let short = Backoff {
            last: at(0),
            delay: INITIAL,
        };
        assert_eq!(Backoff::blocked_until(Some(&short), at(5)), Some(at(10)));
        assert_eq!(Backoff::record(Some(&long), at(601)).delay, INITIAL);
        assert_eq!(Backoff::record(Some(&long), at(30)).delay, MAX);
    }
}
