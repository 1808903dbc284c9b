//! Warnings for events that come in floods (a failed accept, a dropped datagram): at most
//! one line per period per site, carrying how many events it stands for, so a flood is
//! visible in the log without filling it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// One warning per this period at most.
pub const PERIOD: Duration = Duration::from_secs(10);

/// The state of one warning site.
#[derive(Debug)]
pub struct WarnLimit {
    epoch: Instant,
    /// Milliseconds after `epoch` when a warning may be written next (0: now).
    next_ms: AtomicU64,
    /// Events since the last warning written.
    pending: AtomicU64,
}

impl Default for WarnLimit {
    fn default() -> Self {
        WarnLimit {
            epoch: Instant::now(),
            next_ms: AtomicU64::new(0),
            pending: AtomicU64::new(0),
        }
    }
}

impl WarnLimit {
    /// Records one event; returns how many events the warning to write now stands for, or
    /// None while the period since the last one runs.
    pub fn event(&self) -> Option<u64> {
        self.pending.fetch_add(1, Ordering::Relaxed);
        let now = self.epoch.elapsed().as_millis() as u64;
        let next = self.next_ms.load(Ordering::Relaxed);
        if now < next {
            return None;
        }
        let until = now.saturating_add(PERIOD.as_millis() as u64);
        self.next_ms
            .compare_exchange(next, until, Ordering::Relaxed, Ordering::Relaxed)
            .ok()?;
        Some(self.pending.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_warning_per_period_counting_the_rest() {
        let w = WarnLimit::default();
        assert_eq!(w.event(), Some(1));
        assert_eq!((0..99).filter_map(|_| w.event()).count(), 0);
        tokio::time::advance(PERIOD).await;
        assert_eq!(w.event(), Some(100), "99 held back plus this one");
        assert_eq!(w.event(), None);
    }
}
