//! `Board`: values discovery publishes for the power side to read as inputs (a node's CPU,
//! inlet temperature and ΔP from the cluster's metrics APIs), each with the moment it was
//! published. Discovery
//! writes, power reads: data still flows one way.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::node::Quantity;

#[derive(Debug, Clone, Default)]
pub struct Board {
    values: Arc<Mutex<HashMap<String, (f64, Instant)>>>,
}

impl Board {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (f64, Instant)>> {
        self.values.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn publish(&self, key: String, value: f64) {
        self.lock().insert(key, (value, Instant::now()));
    }

    /// Drops every value whose key `keep` rejects (nodes that went away).
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.lock().retain(|k, _| keep(k));
    }

    /// The value under `key` and how old it is.
    pub fn read(&self, key: &str) -> Option<(f64, Duration)> {
        self.lock().get(key).map(|(v, at)| (*v, at.elapsed()))
    }
}

/// The key of a node's reading of `quantity` (CPU: percent of its capacity).
pub fn key(quantity: Quantity, node: &str) -> String {
    format!("{}/{node}", quantity.label())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_values_are_read_with_their_age() {
        let b = Board::default();
        assert_eq!(b.read("cpu/a"), None);
        b.publish(key(Quantity::Cpu, "a"), 25.0);
        let (v, age) = b.read("cpu/a").unwrap();
        assert_eq!(v, 25.0);
        assert!(age < Duration::from_secs(60));
        b.retain(|k| k != "cpu/a");
        assert_eq!(b.read("cpu/a"), None);
    }
}
