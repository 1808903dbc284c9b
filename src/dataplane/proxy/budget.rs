//! The descriptor budget: how the process's open-files limit is shared so that no part of
//! wao-lb can take the descriptors another needs. A reserve stays free for the listeners,
//! the admin API (itself capped at 64 connections), HTTP to power inputs and models, and
//! files. The rest is one pool: a TCP connection takes two descriptors (its two sockets),
//! a splicing connection four more (its pipes), a UDP session two (its upstream socket and,
//! in transparent mode, its reply socket). UDP sessions may hold at most a quarter of the
//! pool, so a flood of flows cannot starve TCP. A part that finds the pool empty waits (TCP:
//! new connections stay in the listen backlog), falls back (a connection keeps copying
//! instead of splicing) or evicts (UDP), but never takes the reserve.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Descriptors kept out of the pool (at most a quarter of a small limit).
pub const RESERVED: u64 = 128;

/// Descriptors one TCP connection holds.
pub const PER_CONNECTION: u32 = 2;
/// Descriptors splicing adds to a connection (two pipes).
pub const PER_SPLICE: u32 = 4;
/// Descriptors one UDP session may hold.
pub const PER_SESSION: u32 = 2;

/// The split of the open-files limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdBudget {
    /// Descriptors connections and sessions share.
    pub pool: usize,
    /// The most UDP sessions open at once, over all services.
    pub udp_sessions: usize,
}

impl FdBudget {
    /// The split of `limit` open files.
    pub fn split(limit: u64) -> FdBudget {
        let reserve = RESERVED.min(limit / 4);
        let pool = usize::try_from(limit - reserve).unwrap_or(usize::MAX);
        FdBudget {
            pool,
            udp_sessions: pool / 4 / PER_SESSION as usize,
        }
    }
}

/// The budget as permits taken and given back by connections and sessions.
#[derive(Debug)]
pub struct Slots {
    pub budget: FdBudget,
    pool: Arc<Semaphore>,
    udp: Arc<Semaphore>,
}

/// What a UDP session holds of the budget: its place in the UDP share and its
/// descriptors. Dropping it gives both back.
#[derive(Debug)]
pub struct SessionSlot {
    _share: OwnedSemaphorePermit,
    _fds: OwnedSemaphorePermit,
}

impl Slots {
    pub fn new(budget: FdBudget) -> Slots {
        Slots {
            budget,
            pool: Arc::new(Semaphore::new(budget.pool)),
            udp: Arc::new(Semaphore::new(budget.udp_sessions)),
        }
    }

    /// A TCP connection's descriptors, once the pool has them.
    pub async fn connection(&self) -> Option<OwnedSemaphorePermit> {
        let p = self.pool.clone().acquire_many_owned(PER_CONNECTION).await;
        p.ok()
    }

    /// A splicing connection's pipes, if the pool has them now.
    pub fn splice(&self) -> Option<OwnedSemaphorePermit> {
        self.pool.clone().try_acquire_many_owned(PER_SPLICE).ok()
    }

    /// A UDP session's descriptors, if the pool and the UDP share both have them now.
    pub fn session(&self) -> Option<SessionSlot> {
        Some(SessionSlot {
            _share: self.udp.clone().try_acquire_owned().ok()?,
            _fds: self.pool.clone().try_acquire_many_owned(PER_SESSION).ok()?,
        })
    }

    /// The pool's descriptors not in use now.
    pub fn free(&self) -> usize {
        self.pool.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_split_keeps_a_reserve() {
        assert_eq!(
            FdBudget::split(20_000),
            FdBudget {
                pool: 19_872,
                udp_sessions: 2_484
            }
        );
        assert_eq!(FdBudget::split(64).pool, 48);
        assert_eq!(FdBudget::split(0).pool, 0);
    }

    #[tokio::test]
    async fn parts_share_the_pool_and_udp_keeps_to_its_quarter() {
        let slots = Slots::new(FdBudget::split(80)); // pool 60, 7 sessions
        let sessions: Vec<SessionSlot> = std::iter::from_fn(|| slots.session()).collect();
        assert_eq!(sessions.len(), 7, "a quarter of the pool");
        assert_eq!(slots.free(), 60 - 14);
        let splice = slots.splice().expect("pipes");
        let mut connections = Vec::new();
        while slots.free() >= PER_CONNECTION as usize {
            connections.push(slots.connection().await.expect("connection"));
        }
        assert_eq!(connections.len(), (60 - 14 - 4) / 2);
        assert!(slots.splice().is_none(), "no pipes left");
        drop(splice);
        drop(sessions);
        assert_eq!(slots.free(), 18);
    }
}
