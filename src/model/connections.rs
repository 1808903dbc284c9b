//! `OpenConnections`: wao-lb's own open connections (TCP connections, UDP sessions, or the
//! kernel's IPVS connections) per service backend. The data plane counts them; the power
//! side reads them per (node, cost) to know the demand it plans and each node's load
//! without wao-lb's traffic, and balance reads them per service to estimate what the split
//! saves. A plain shared value below all three: data still flows one way.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::NodeName;

/// One backend's count of open connections, and what it is charged to.
#[derive(Debug, Clone)]
pub struct Counted {
    pub service: Arc<str>,
    pub node: NodeName,
    /// What one connection costs its node, in millicores.
    pub cost: u32,
    pub open: Arc<AtomicI64>,
}

/// The data plane's counters, replaced whole on every Plan it programs.
#[derive(Debug, Clone, Default)]
pub struct OpenConnections {
    counted: Arc<ArcSwap<Vec<Counted>>>,
}

impl OpenConnections {
    /// The counters now in use (the previous ones are dropped from view).
    pub fn publish(&self, counted: Vec<Counted>) {
        self.counted.store(Arc::new(counted));
    }

    /// Open connections per node of the services whose connections cost `cost`.
    pub fn by_node(&self, cost: u32) -> BTreeMap<NodeName, u64> {
        let mut out: BTreeMap<NodeName, u64> = BTreeMap::new();
        for c in self.counted.load().iter().filter(|c| c.cost == cost) {
            *out.entry(c.node.clone()).or_default() += open(c);
        }
        out
    }

    /// Open connections per service.
    pub fn by_service(&self) -> HashMap<Arc<str>, u64> {
        let mut out: HashMap<Arc<str>, u64> = HashMap::new();
        for c in self.counted.load().iter() {
            *out.entry(c.service.clone()).or_default() += open(c);
        }
        out
    }
}

/// A counter's value; a count that raced below zero is none.
fn open(c: &Counted) -> u64 {
    u64::try_from(c.open.load(Ordering::Relaxed)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_per_node_and_per_service() {
        let counter = |service: &str, node: &str, cost, n| Counted {
            service: service.into(),
            node: node.into(),
            cost,
            open: Arc::new(AtomicI64::new(n)),
        };
        let open = OpenConnections::default();
        open.publish(vec![
            counter("web", "a", 100, 3),
            counter("web", "b", 100, 2),
            counter("api", "a", 100, 4),
            counter("db", "a", 250, 7),
            counter("odd", "b", 100, -1),
        ]);
        let by_node = open.by_node(100);
        assert_eq!(by_node[&NodeName::from("a")], 7);
        assert_eq!(by_node[&NodeName::from("b")], 2);
        assert_eq!(open.by_node(250)[&NodeName::from("a")], 7);
        let by_service = open.by_service();
        assert_eq!(by_service[&Arc::<str>::from("web")], 5);
        assert_eq!(by_service[&Arc::<str>::from("odd")], 0);
    }
}
