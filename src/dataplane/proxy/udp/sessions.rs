//! The UDP sessions of one listener by (client, frontend address), in shards with a lock
//! each: a datagram locks only its flow's shard, so flows served on different workers do
//! not wait on one lock.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// A flow: the client and the frontend address it sent to.
pub type Flow = (SocketAddr, SocketAddr);

const SHARDS: usize = 16;

type Shard<S> = HashMap<Flow, Arc<S>>;

pub struct Sessions<S> {
    shards: Box<[Mutex<Shard<S>>]>,
    /// Sessions in all shards: a new flow checks the limit without locking each shard.
    count: AtomicUsize,
}

impl<S> Default for Sessions<S> {
    fn default() -> Self {
        Sessions {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            count: AtomicUsize::new(0),
        }
    }
}

/// A panic elsewhere cannot leave a shard half-changed: each call is one operation.
fn locked<S>(shard: &Mutex<Shard<S>>) -> MutexGuard<'_, Shard<S>> {
    shard.lock().unwrap_or_else(|p| p.into_inner())
}

impl<S> Sessions<S> {
    fn shard(&self, flow: &Flow) -> MutexGuard<'_, Shard<S>> {
        let mut h = DefaultHasher::new();
        flow.hash(&mut h);
        let i = (h.finish() as usize) % self.shards.len();
        locked(&self.shards[i])
    }

    pub fn get(&self, flow: &Flow) -> Option<Arc<S>> {
        self.shard(flow).get(flow).cloned()
    }

    pub fn insert(&self, flow: Flow, session: Arc<S>) {
        if self.shard(&flow).insert(flow, session).is_none() {
            self.count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Removes `flow` if it still maps to `session` (an evicted session's flow may already
    /// hold a new one).
    pub fn remove(&self, flow: &Flow, session: &Arc<S>) {
        let mut shard = self.shard(flow);
        if shard.get(flow).is_some_and(|s| Arc::ptr_eq(s, session)) {
            shard.remove(flow);
            self.count.fetch_sub(1, Ordering::Relaxed);
        }
    }

    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Removes and returns the session idle longest (by `idle_for`), if it has idled at
    /// least `min_idle`. Walks every shard: only a new flow at the session limit does this.
    pub fn evict_idlest(
        &self,
        min_idle: Duration,
        idle_for: impl Fn(&S) -> Duration,
    ) -> Option<Arc<S>> {
        let (idle, flow) = self
            .shards
            .iter()
            .filter_map(|s| {
                locked(s)
                    .iter()
                    .map(|(flow, session)| (idle_for(session), *flow))
                    .max_by_key(|(idle, _)| *idle)
            })
            .max_by_key(|(idle, _)| *idle)?;
        if idle < min_idle {
            return None;
        }
        // Between the walk and here the flow may have been replaced or removed.
        let mut shard = self.shard(&flow);
        let session = shard.get(&flow)?;
        if idle_for(session) < min_idle {
            return None;
        }
        let evicted = shard.remove(&flow);
        self.count.fetch_sub(1, Ordering::Relaxed);
        evicted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(port: u16) -> Flow {
        (
            SocketAddr::from(([10, 0, 0, 1], port)),
            SocketAddr::from(([10, 96, 0, 1], 53)),
        )
    }

    #[test]
    fn flows_map_to_their_sessions_across_shards() {
        let sessions = Sessions::default();
        for p in 0..200 {
            sessions.insert(flow(p), Arc::new(p));
        }
        assert_eq!(sessions.len(), 200);
        for p in 0..200 {
            assert_eq!(sessions.get(&flow(p)).as_deref(), Some(&p));
        }
        // Removing needs the session the flow holds, not another of the same flow.
        sessions.remove(&flow(7), &Arc::new(7));
        assert!(sessions.get(&flow(7)).is_some());
        let held = sessions.get(&flow(7)).unwrap();
        sessions.remove(&flow(7), &held);
        assert!(sessions.get(&flow(7)).is_none());
        assert_eq!(sessions.len(), 199);
    }

    #[test]
    fn the_idlest_session_is_evicted_only_past_the_minimum() {
        let sessions = Sessions::default();
        // A session's value is its idle time in seconds.
        for (p, idle) in [(1, 5u64), (2, 30), (3, 1)] {
            sessions.insert(flow(p), Arc::new(idle));
        }
        let idle = |s: &u64| Duration::from_secs(*s);
        assert_eq!(sessions.evict_idlest(Duration::from_secs(60), idle), None);
        assert_eq!(
            sessions
                .evict_idlest(Duration::from_secs(2), idle)
                .as_deref(),
            Some(&30)
        );
        assert_eq!(
            sessions
                .evict_idlest(Duration::from_secs(2), idle)
                .as_deref(),
            Some(&5)
        );
        assert_eq!(sessions.evict_idlest(Duration::from_secs(2), idle), None);
        assert_eq!(sessions.len(), 1);
    }
}
