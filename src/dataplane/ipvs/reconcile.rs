//! From the Plan to IPVS, as the fewest netlink operations: the desired table (virtual
//! services × destinations × integer weights) against the kernel's, with kube-proxy's
//! graceful removal. Pure: the kernel's table and the clock come in, operations go out.
//!
//! - A weight change is one `SET_DEST`; a weight that rounds the same sends nothing.
//! - A removed TCP destination with connections is quiesced (weight 0) and deleted when its
//!   connections are gone or its grace period ends; UDP and SCTP ones, and idle ones, are
//!   deleted at once. One that comes back leaves the pending deletes.
//! - Only services `owned` may be deleted; every other tool's are never touched.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::message::{Destination, IpvsMessage, IpvsProtocol, VirtualId, VirtualService};
use crate::balance::plan::Plan;
use crate::model::{Frontend, Protocol};

/// Integer weight of a share of 1: IPVS weights are integers, so a share is kept to
/// 1/RESOLUTION (0.01 %; WAO used 0–100, 1 %). A positive share never rounds to 0.
pub const RESOLUTION: f64 = 10_000.0;

/// Virtual services with their destinations, by id.
pub type Table = BTreeMap<VirtualId, Entry>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub service: VirtualService,
    pub dests: BTreeMap<SocketAddr, Destination>,
}

/// One netlink operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    NewService(VirtualService),
    SetService(VirtualService),
    DelService(VirtualId),
    NewDest(VirtualId, Destination),
    SetDest(VirtualId, Destination),
    DelDest(VirtualId, SocketAddr),
}

impl Op {
    pub fn message(&self) -> IpvsMessage {
        match self {
            Op::NewService(s) => IpvsMessage::new_service(s),
            Op::SetService(s) => IpvsMessage::set_service(s),
            Op::DelService(id) => IpvsMessage::del_service(id),
            Op::NewDest(id, d) => IpvsMessage::new_dest(id, d),
            Op::SetDest(id, d) => IpvsMessage::set_dest(id, d),
            Op::DelDest(id, a) => IpvsMessage::del_dest(id, *a),
        }
    }
}

/// The integer weights of `shares`.
pub fn scaled(shares: &[f64]) -> Vec<u32> {
    shares
        .iter()
        .map(|s| {
            if !s.is_finite() || *s <= 0.0 {
                0
            } else {
                ((s * RESOLUTION).round() as u32).max(1)
            }
        })
        .collect()
}

/// The virtual service id of a frontend.
pub fn id_of(frontend: &Frontend) -> VirtualId {
    VirtualId {
        protocol: match frontend.protocol {
            Protocol::Tcp => IpvsProtocol::Tcp,
            Protocol::Udp => IpvsProtocol::Udp,
        },
        addr: frontend.address,
    }
}

/// The table the Plan asks for: a `wrr` service per frontend (persistent with its timeout
/// under ClientIP affinity), its backends weighted by their shares.
pub fn desired(plan: &Plan) -> Table {
    plan.services
        .iter()
        .map(|(frontend, planned)| {
            let id = id_of(frontend);
            let service = VirtualService {
                id,
                scheduler: "wrr".into(),
                persistence: planned.service.affinity.map(|a| {
                    u32::try_from(a.timeout.as_secs())
                        .unwrap_or(u32::MAX)
                        .max(1)
                }),
            };
            let shares: Vec<f64> = planned.backends.iter().map(|b| b.share).collect();
            let dests = planned
                .backends
                .iter()
                .zip(scaled(&shares))
                .map(|(b, w)| (b.backend.address, Destination::new(b.backend.address, w)))
                .collect();
            (id, Entry { service, dests })
        })
        .collect()
}

/// What is sent of a destination: its address and weight (counts are the kernel's).
fn sent(d: &Destination) -> Destination {
    Destination::new(d.addr, d.weight)
}

/// Remembers the destinations being removed gracefully, between syncs.
#[derive(Debug, Default)]
pub struct Reconciler {
    /// Quiesced destinations and when they are deleted even with connections left.
    pending: BTreeMap<(VirtualId, SocketAddr), Instant>,
}

impl Reconciler {
    /// The destinations waiting for their connections to end.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The operations that take `current` to `desired` at `now`; a removed destination
    /// with connections waits up to `grace`. Only services `owned` are deleted.
    pub fn ops(
        &mut self,
        current: &Table,
        desired: &Table,
        owned: &dyn Fn(&VirtualId) -> bool,
        now: Instant,
        grace: Duration,
    ) -> Vec<Op> {
        let mut ops = Vec::new();
        for (id, want) in desired {
            let Some(have) = current.get(id) else {
                ops.push(Op::NewService(want.service.clone()));
                ops.extend(want.dests.values().map(|d| Op::NewDest(*id, sent(d))));
                continue;
            };
            if have.service != want.service {
                ops.push(Op::SetService(want.service.clone()));
            }
            for (addr, d) in &want.dests {
                self.pending.remove(&(*id, *addr));
                match have.dests.get(addr) {
                    None => ops.push(Op::NewDest(*id, sent(d))),
                    Some(h) if h.weight != d.weight => ops.push(Op::SetDest(*id, sent(d))),
                    Some(_) => {}
                }
            }
            for (_, h) in have
                .dests
                .iter()
                .filter(|(a, _)| !want.dests.contains_key(a))
            {
                ops.extend(self.removal(*id, h, now, grace));
            }
        }
        for id in current.keys().filter(|id| !desired.contains_key(id)) {
            if owned(id) {
                ops.push(Op::DelService(*id));
            }
        }
        // Forget what no longer exists (its service went, or it was deleted before).
        self.pending.retain(|(id, addr), _| {
            desired.contains_key(id) && current.get(id).is_some_and(|e| e.dests.contains_key(addr))
        });
        ops
    }

    /// What to do with `have`, a destination `id` no longer wants.
    fn removal(
        &mut self,
        id: VirtualId,
        have: &Destination,
        now: Instant,
        grace: Duration,
    ) -> Option<Op> {
        let key = (id, have.addr);
        let connected = have.active + have.inactive > 0;
        let datagrams = id.protocol != IpvsProtocol::Tcp;
        let deadline = *self.pending.entry(key).or_insert(now + grace);
        if datagrams || !connected || now >= deadline {
            self.pending.remove(&key);
            return Some(Op::DelDest(id, have.addr));
        }
        (have.weight != 0).then(|| Op::SetDest(id, Destination::new(have.addr, 0)))
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An IPVS in memory that refuses what the kernel refuses (a service that exists, a
    /// destination of a missing service, deleting what is not there).
    fn apply(table: &mut Table, op: &Op) -> Result<(), String> {
        match op {
            Op::NewService(s) => {
                if table.contains_key(&s.id) {
                    return Err(format!("{:?} exists", s.id));
                }
                table.insert(
                    s.id,
                    Entry {
                        service: s.clone(),
                        dests: BTreeMap::new(),
                    },
                );
            }
            Op::SetService(s) => {
                table.get_mut(&s.id).ok_or("no service")?.service = s.clone();
            }
            Op::DelService(id) => {
                table.remove(id).ok_or("no service")?;
            }
            Op::NewDest(id, d) => {
                let e = table.get_mut(id).ok_or("no service")?;
                if e.dests.insert(d.addr, *d).is_some() {
                    return Err("destination exists".into());
                }
            }
            Op::SetDest(id, d) => {
                let e = table.get_mut(id).ok_or("no service")?;
                let have = e.dests.get_mut(&d.addr).ok_or("no destination")?;
                have.weight = d.weight;
            }
            Op::DelDest(id, a) => {
                let e = table.get_mut(id).ok_or("no service")?;
                e.dests.remove(a).ok_or("no destination")?;
            }
        }
        Ok(())
    }

    pub fn id(protocol: IpvsProtocol, host: u8, port: u16) -> VirtualId {
        VirtualId {
            protocol,
            addr: SocketAddr::from(([10, 96, 0, host], port)),
        }
    }

    /// A service in compact form: (protocol, host, port, persistent, destinations as
    /// (backend host, weight, connections)).
    /// A service: protocol, last octet of its 10.96.0.x address, port, persistence, and
    /// its destinations (last octet of 10.1.0.x:8080, weight, active connections).
    pub type Part = (IpvsProtocol, u8, u16, bool, Vec<(u8, u32, u32)>);

    /// A table of `parts`.
    pub fn table(parts: &[Part]) -> Table {
        parts
            .iter()
            .map(|(p, host, port, persistent, dests)| {
                let id = id(*p, *host, *port);
                let dests = dests
                    .iter()
                    .map(|(b, w, conns)| {
                        let addr = SocketAddr::from(([10, 1, 0, *b], 8080));
                        let d = Destination {
                            addr,
                            weight: *w,
                            active: *conns,
                            inactive: 0,
                            connections: 0,
                        };
                        (addr, d)
                    })
                    .collect();
                let service = VirtualService {
                    id,
                    scheduler: "wrr".into(),
                    persistence: persistent.then_some(10_800),
                };
                (id, Entry { service, dests })
            })
            .collect()
    }

    fn parts() -> impl Strategy<Value = Vec<Part>> {
        let protocol = prop_oneof![
            Just(IpvsProtocol::Tcp),
            Just(IpvsProtocol::Udp),
            Just(IpvsProtocol::Sctp)
        ];
        let dests = proptest::collection::vec((1u8..6, 0u32..4, 0u32..3), 0..5);
        proptest::collection::vec((protocol, 1u8..6, 80u16..82, any::<bool>(), dests), 0..6)
    }

    /// Services on hosts 4 and 5 belong to another tool.
    fn owned(id: &VirtualId) -> bool {
        match id.addr.ip() {
            std::net::IpAddr::V4(v4) => v4.octets()[3] < 4,
            std::net::IpAddr::V6(_) => false,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn any_state_reaches_any_desired_state_minimally(current in parts(), wanted in parts()) {
            let current = table(&current);
            // The desired state never names another tool's service.
            let desired: Table = table(&wanted).into_iter().filter(|(id, _)| owned(id)).collect();
            let mut r = Reconciler::default();
            let now = Instant::now();
            let ops = r.ops(&current, &desired, &owned, now, Duration::from_secs(60));
            let mut after = current.clone();
            for op in &ops {
                prop_assert!(apply(&mut after, op).is_ok(), "{op:?} refused");
            }
            // Foreign services are untouched.
            for (id, e) in current.iter().filter(|(id, _)| !owned(id)) {
                prop_assert_eq!(after.get(id), Some(e));
            }
            // Owned services not desired are gone; desired ones are exactly as desired,
            // but for TCP destinations quiesced while their connections finish.
            for id in current.keys().filter(|id| owned(id) && !desired.contains_key(id)) {
                prop_assert!(!after.contains_key(id));
            }
            let mut expected_ops = 0;
            for (id, want) in &desired {
                let got = &after[id];
                prop_assert_eq!(&got.service, &want.service);
                for (addr, d) in &want.dests {
                    prop_assert_eq!(got.dests[addr].weight, d.weight);
                }
                for (addr, d) in got.dests.iter().filter(|(a, _)| !want.dests.contains_key(a)) {
                    prop_assert_eq!(id.protocol, IpvsProtocol::Tcp);
                    prop_assert_eq!(d.weight, 0);
                    prop_assert!(d.active + d.inactive > 0, "{addr} idle but kept");
                }
                // Minimal: one operation per difference.
                match current.get(id) {
                    None => expected_ops += 1 + want.dests.len(),
                    Some(have) => {
                        expected_ops += usize::from(have.service != want.service);
                        expected_ops += want.dests.iter().filter(|(a, d)| {
                            have.dests.get(*a).is_none_or(|h| h.weight != d.weight)
                        }).count();
                        expected_ops += have.dests.iter().filter(|(a, h)| {
                            !want.dests.contains_key(*a)
                                && (id.protocol != IpvsProtocol::Tcp
                                    || h.active + h.inactive == 0
                                    || h.weight != 0)
                        }).count();
                    }
                }
            }
            expected_ops += current.keys().filter(|id| owned(id) && !desired.contains_key(id)).count();
            prop_assert_eq!(ops.len(), expected_ops, "{:?}", ops);
            // Converged: the same desired state asks for nothing more.
            prop_assert_eq!(r.ops(&after, &desired, &owned, now, Duration::from_secs(60)), vec![]);
        }
    }

    #[test]
    fn a_removed_backend_is_quiesced_then_deleted_and_one_that_returns_is_kept() {
        let grace = Duration::from_secs(60);
        let t0 = Instant::now();
        let a = SocketAddr::from(([10, 1, 0, 1], 8080));
        let current = table(&[(
            IpvsProtocol::Tcp,
            1,
            80,
            false,
            vec![(1, 5000, 2), (2, 5000, 0)],
        )]);
        let id = id(IpvsProtocol::Tcp, 1, 80);
        let mut only_b = current.clone();
        only_b.get_mut(&id).unwrap().dests.remove(&a);
        only_b
            .get_mut(&id)
            .unwrap()
            .dests
            .get_mut(&SocketAddr::from(([10, 1, 0, 2], 8080)))
            .unwrap()
            .weight = 10_000;
        let mut r = Reconciler::default();
        let ops = r.ops(&current, &only_b, &owned, t0, grace);
        assert!(
            ops.contains(&Op::SetDest(id, Destination::new(a, 0))),
            "{ops:?}"
        );
        assert_eq!(r.pending(), 1);
        let mut quiesced = current.clone();
        for op in &ops {
            apply(&mut quiesced, op).unwrap();
        }
        // Connections still open: nothing more until they end or the grace passes.
        let later = |secs| t0 + Duration::from_secs(secs);
        assert_eq!(r.ops(&quiesced, &only_b, &owned, later(1), grace), vec![]);
        let mut idle = quiesced.clone();
        idle.get_mut(&id).unwrap().dests.get_mut(&a).unwrap().active = 0;
        assert_eq!(
            r.ops(&idle, &only_b, &owned, later(2), grace),
            vec![Op::DelDest(id, a)]
        );
        assert_eq!(r.pending(), 0);
        // Or the grace period ends with connections left.
        let mut r = Reconciler::default();
        r.ops(&current, &only_b, &owned, t0, grace);
        let ops = r.ops(&quiesced, &only_b, &owned, t0 + grace, grace);
        assert_eq!(ops, vec![Op::DelDest(id, a)]);
        // It comes back before that: weighted again, no longer pending.
        let mut r = Reconciler::default();
        r.ops(&current, &only_b, &owned, t0, grace);
        let ops = r.ops(&quiesced, &current, &owned, later(5), grace);
        assert!(
            ops.contains(&Op::SetDest(id, Destination::new(a, 5000))),
            "{ops:?}"
        );
        assert_eq!(r.pending(), 0);
    }

    #[test]
    fn udp_backends_go_at_once() {
        let current = table(&[(
            IpvsProtocol::Udp,
            1,
            53,
            false,
            vec![(1, 5000, 2), (2, 5000, 0)],
        )]);
        let id = id(IpvsProtocol::Udp, 1, 53);
        let mut desired = current.clone();
        let a = SocketAddr::from(([10, 1, 0, 1], 8080));
        desired.get_mut(&id).unwrap().dests.remove(&a);
        let ops = Reconciler::default().ops(
            &current,
            &desired,
            &owned,
            Instant::now(),
            Duration::from_secs(60),
        );
        assert_eq!(ops, vec![Op::DelDest(id, a)]);
    }

    #[test]
    fn scaled_weights_keep_positive_shares_positive() {
        assert_eq!(scaled(&[0.25, 0.75]), vec![2500, 7500]);
        assert_eq!(scaled(&[0.00001, 0.99999]), vec![1, 9_999 + 1]);
        assert_eq!(scaled(&[0.0, f64::NAN, 1.0]), vec![0, 0, 10_000]);
        // A change below the resolution is the same weight, so nothing is sent.
        assert_eq!(scaled(&[0.33331]), scaled(&[0.33334]));
    }
}
