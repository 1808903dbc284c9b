//! ClientIP session affinity, as kube-proxy does it: a client IP sticks to the backend it was
//! last sent to until `timeout` passes without a new connection. Checked before the pick.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Expired entries are swept after this many new entries, bounding memory without a timer.
const SWEEP_EVERY: usize = 1024;

#[derive(Debug)]
pub struct AffinityTable {
    timeout: Duration,
    inner: Mutex<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    by_client: HashMap<IpAddr, (SocketAddr, Instant)>,
    inserts_since_sweep: usize,
}

impl AffinityTable {
    pub fn new(timeout: Duration) -> AffinityTable {
        AffinityTable {
            timeout,
            inner: Mutex::new(Entries::default()),
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The backend this client is stuck to, if the stickiness has not expired.
    pub fn lookup(&self, client: IpAddr, now: Instant) -> Option<SocketAddr> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        self.sticky(&mut inner, client, now)
    }

    /// The backend for `client` at `now`, decided under the table's lock so that concurrent
    /// first connections of one client agree: `choose` gets the sticky backend (if any, not
    /// expired) and returns the one to use, which is recorded.
    pub fn decide(
        &self,
        client: IpAddr,
        now: Instant,
        choose: impl FnOnce(Option<SocketAddr>) -> Option<SocketAddr>,
    ) -> Option<SocketAddr> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let sticky = self.sticky(&mut inner, client, now);
        let chosen = choose(sticky)?;
        self.insert(&mut inner, client, chosen, now);
        Some(chosen)
    }

    /// The client's unexpired backend; an expired entry is removed.
    fn sticky(&self, inner: &mut Entries, client: IpAddr, now: Instant) -> Option<SocketAddr> {
        let (backend, last) = *inner.by_client.get(&client)?;
        if now.saturating_duration_since(last) < self.timeout {
            return Some(backend);
        }
        inner.by_client.remove(&client);
        None
    }

    /// Remembers (or refreshes) that `client` was sent to `backend` at `now`.
    pub fn record(&self, client: IpAddr, backend: SocketAddr, now: Instant) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        self.insert(&mut inner, client, backend, now);
    }

    fn insert(&self, inner: &mut Entries, client: IpAddr, backend: SocketAddr, now: Instant) {
        if inner.by_client.insert(client, (backend, now)).is_none() {
            inner.inserts_since_sweep += 1;
            if inner.inserts_since_sweep >= SWEEP_EVERY {
                inner.inserts_since_sweep = 0;
                let timeout = self.timeout;
                inner
                    .by_client
                    .retain(|_, (_, last)| now.saturating_duration_since(*last) < timeout);
            }
        }
    }

    /// Forgets a client, e.g. after its sticky backend failed.
    pub fn forget(&self, client: IpAddr) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.by_client.remove(&client);
    }

    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_client
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sticks_until_timeout() {
        let t = AffinityTable::new(Duration::from_secs(10));
        let now = Instant::now();
        let client: IpAddr = "10.0.0.1".parse().unwrap();
        let backend: SocketAddr = "10.1.0.1:80".parse().unwrap();
        assert_eq!(t.lookup(client, now), None);
        t.record(client, backend, now);
        assert_eq!(
            t.lookup(client, now + Duration::from_secs(9)),
            Some(backend)
        );
        assert_eq!(t.lookup(client, now + Duration::from_secs(10)), None);
        assert!(t.is_empty(), "expired entry is removed on lookup");
    }

    #[test]
    fn decide_offers_the_sticky_backend_and_records_the_choice() {
        let t = AffinityTable::new(Duration::from_secs(10));
        let now = Instant::now();
        let client: IpAddr = "10.0.0.1".parse().unwrap();
        let (a, b): (SocketAddr, SocketAddr) = (
            "10.1.0.1:80".parse().unwrap(),
            "10.1.0.2:80".parse().unwrap(),
        );
        assert_eq!(t.decide(client, now, |sticky| sticky.or(Some(a))), Some(a));
        let mut offered = None;
        let second = t.decide(client, now, |sticky| {
            offered = sticky;
            sticky.or(Some(b))
        });
        assert_eq!((offered, second), (Some(a), Some(a)));
        let later = now + Duration::from_secs(11);
        assert_eq!(
            t.decide(client, later, |sticky| sticky.or(Some(b))),
            Some(b)
        );
        assert_eq!(t.lookup(client, later), Some(b));
    }

    #[test]
    fn sweep_bounds_memory() {
        let t = AffinityTable::new(Duration::from_secs(1));
        let start = Instant::now();
        let backend: SocketAddr = "10.1.0.1:80".parse().unwrap();
        for i in 0..SWEEP_EVERY as u32 * 3 {
            let client = IpAddr::from(i.to_be_bytes());
            t.record(
                client,
                backend,
                start + Duration::from_secs(u64::from(i) / 100),
            );
        }
        assert!(
            t.len() < SWEEP_EVERY,
            "expired entries swept, {} left",
            t.len()
        );
    }
}
