//! Passive ejection: a backend whose connect fails (refused, timed out, or for UDP an ICMP
//! unreachable) is skipped by new picks for a back-off that doubles with each consecutive
//! failure, from `FIRST` up to `LONGEST`; its first success ends it. A dead backend so costs
//! one failed connect per back-off, not one per connection. When every backend is ejected,
//! picks ignore ejection: traffic is never black-holed.
//!
//! The state lives per backend of a service and carries over when routes are rebuilt.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// The back-off after a first failure.
pub const FIRST: Duration = Duration::from_secs(1);
/// The longest back-off.
pub const LONGEST: Duration = Duration::from_secs(30);

/// One backend's recent connect outcomes.
#[derive(Debug)]
pub struct Ejection {
    epoch: Instant,
    failures: AtomicU32,
    /// Milliseconds after `epoch` until which the backend is skipped.
    until_ms: AtomicU64,
}

impl Default for Ejection {
    fn default() -> Self {
        Ejection {
            epoch: Instant::now(),
            failures: AtomicU32::new(0),
            until_ms: AtomicU64::new(0),
        }
    }
}

impl Ejection {
    /// Whether new picks skip the backend now. A healthy backend (no deadline) costs one
    /// atomic load and no clock read: this runs on every pick.
    pub fn is_ejected(&self) -> bool {
        let until = self.until_ms.load(Ordering::Relaxed);
        until != 0 && self.now_ms() < until
    }

    /// Records a failed connect; returns true when this starts an ejection (it was not
    /// ejected), so the caller counts ejections, not failures.
    pub fn failed(&self) -> bool {
        let was_ejected = self.is_ejected();
        let n = self
            .failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        let until = self.now_ms().saturating_add(back_off(n).as_millis() as u64);
        self.until_ms.fetch_max(until, Ordering::Relaxed);
        !was_ejected
    }

    /// Records a successful connect: the backend is healthy again.
    pub fn succeeded(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
            self.until_ms.store(0, Ordering::Relaxed);
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

/// The back-off after `failures` consecutive failures: FIRST, doubling, at most LONGEST.
pub fn back_off(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    FIRST.saturating_mul(1 << doublings).min(LONGEST)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_off_doubles_up_to_the_longest() {
        let secs: Vec<u64> = (1..=8).map(|n| back_off(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(back_off(u32::MAX), LONGEST);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_ejects_until_the_back_off_passes_and_a_success_ends_it() {
        let e = Ejection::default();
        assert!(!e.is_ejected());
        assert!(e.failed(), "the first failure starts an ejection");
        assert!(!e.failed(), "a second one extends it");
        assert!(e.is_ejected());
        tokio::time::advance(Duration::from_millis(2100)).await;
        assert!(!e.is_ejected(), "two failures: 2 s");
        e.failed();
        assert!(e.is_ejected());
        e.succeeded();
        assert!(!e.is_ejected());
        assert!(e.failed(), "after a success the count starts over");
    }
}
