//! The core of the `planner` policy (pure): the split of wao-lb's demand that minimises the
//! nodes' total predicted watts, found exactly over their power curves instead of by
//! equalising marginal watts (which finds the optimum only where curves are convex; real
//! SPECpower curves step up from idle and then flatten, so the optimum often concentrates
//! load on fewer nodes).
//!
//! - `optimal_split`: dynamic programming over `CHUNKS` equal parts of the demand. Every
//!   node stays at or below the ceiling (a node already above it by its own load gets
//!   nothing) and gets at least the minimum share. When no split fits under the ceiling,
//!   the one with the least total overload is taken, then the fewest watts.
//! - Picks are random, so a node planned at share p of N connections carries p ± √(p(1−p)/N)
//!   of them. The plan is for that: a node's watts are its expected watts under the jitter
//!   (which costs most at the kinks of a curve); its mean stays at or under the ceiling,
//!   and `JITTER_MARGIN` deviations stay under the ceiling plus `JITTER_TOLERANCE`. With N
//!   unbounded (`Traffic::exact`) this is the plain optimum.
//! - `Mover`: re-plans near its target (moving a share costs `STICKINESS` of the node's
//!   watts), adopts a new plan as its target only when it relieves an overload or saves at
//!   least `HOLD_WATTS` over the target in use (hysteresis), and moves the split in use toward the target along the
//!   line between them, no share more than `MAX_STEP` per step (rate limit), so stale or
//!   noisy inputs cannot make it swing.

use crate::settings::Limits;

/// The demand is planned in this many equal parts (0.1 % each).
pub const CHUNKS: usize = 1000;
/// A share moves at most this much per step.
pub const MAX_STEP: f64 = 0.1;
/// A planned split that saves less than this (watts) over the target in use is not worth
/// moving to.
pub const HOLD_WATTS: f64 = 0.5;

/// A node's jitter may take it this many points over the ceiling, briefly...
pub const JITTER_TOLERANCE: f64 = 2.0;
/// ...as far as this many deviations of its jitter go: 4σ is passed once in 30,000
/// intervals per node, so over hours of picks a node's load stays within the tolerance
/// (at 2σ, one interval in 40 went over it).
pub const JITTER_MARGIN: f64 = 4.0;
/// A point of mean load over the ceiling weighs as much as this many points of jitter over
/// the tolerance.
const MEAN_FIRST: f64 = 1000.0;

/// What is split: wao-lb's demand in cores, made of `connections` connections picked at
/// random (unbounded: a split followed exactly).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Traffic {
    pub cores: f64,
    pub connections: f64,
}

impl Traffic {
    /// `cores` split exactly as planned.
    pub fn exact(cores: f64) -> Traffic {
        Traffic {
            cores,
            connections: f64::INFINITY,
        }
    }

    /// The standard deviation of a share `share` over the random picks.
    fn share_deviation(&self, share: f64) -> f64 {
        if self.connections.is_finite() && self.connections > 0.0 {
            (share * (1.0 - share)).max(0.0).sqrt() / self.connections.sqrt()
        } else {
            0.0
        }
    }
}

/// Up to this many connections, the count a node gets is taken as binomial exactly.
const EXACT_UP_TO: f64 = 32.0;

/// The binomial distribution of `n` picks with probability `p`: (count, probability).
fn binomial(n: u32, p: f64) -> impl Iterator<Item = (u32, f64)> {
    let p = p.clamp(0.0, 1.0);
    let mut pk = (1.0 - p).powi(n as i32);
    (0..=n).map(move |k| {
        let here = if p >= 1.0 {
            if k == n {
                1.0
            } else {
                0.0
            }
        } else {
            pk
        };
        pk *= f64::from(n - k) / f64::from(k + 1) * p / (1.0 - p);
        (k, here)
    })
}

/// Five-point Gauss–Hermite rule for a standard normal: (point, weight).
const NORMAL_RULE: [(f64, f64); 5] = [
    (0.0, 0.533_333_333_333_333_3),
    (-1.355_626_179_974_266, 0.222_075_922_005_612_6),
    (1.355_626_179_974_266, 0.222_075_922_005_612_6),
    (-2.856_970_013_872_805_6, 0.011_257_411_327_720_7),
    (2.856_970_013_872_805_6, 0.011_257_411_327_720_7),
];

/// Predicted watts at utilisation 0, 10, …, 100 %: linear in between, extended with the
/// last segment's slope beyond 100 % (an overloaded node only costs more).
#[derive(Debug, Clone, PartialEq)]
pub struct Curve {
    pub watts: [f64; 11],
}

impl Curve {
    pub fn at(&self, utilisation: f64) -> f64 {
        let x = utilisation.max(0.0) / 10.0;
        let i = (x.floor() as usize).min(9);
        let frac = x - i as f64;
        self.watts[i] + (self.watts[i + 1] - self.watts[i]) * frac
    }
}

/// One node as the planner sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanNode {
    pub curve: Curve,
    /// Utilisation (%) without wao-lb's traffic.
    pub background: f64,
    pub cores: f64,
}

impl PlanNode {
    /// Utilisation (%) when it carries `cores` of wao-lb's demand.
    pub fn utilisation(&self, cores: f64) -> f64 {
        self.background + 100.0 * cores / self.cores
    }

    /// Its mean utilisation (%) and the deviation (points) when planned at `share`.
    fn spread(&self, traffic: Traffic, share: f64) -> (f64, f64) {
        let deviation = 100.0 * traffic.cores * traffic.share_deviation(share) / self.cores;
        (self.utilisation(share * traffic.cores), deviation)
    }

    /// Expected watts when planned at `share` of `traffic`: over the binomial count of its
    /// connections for a few, over its normal approximation for more.
    pub fn expected_watts(&self, traffic: Traffic, share: f64) -> f64 {
        let (mean, deviation) = self.spread(traffic, share);
        if deviation == 0.0 {
            return self.curve.at(mean);
        }
        if traffic.connections <= EXACT_UP_TO {
            let n = traffic.connections.round() as u32;
            let per = 100.0 * traffic.cores / traffic.connections / self.cores;
            return binomial(n, share)
                .map(|(k, pk)| pk * self.curve.at(self.background + per * f64::from(k)))
                .sum();
        }
        NORMAL_RULE
            .iter()
            .map(|(z, w)| w * self.curve.at(mean + z * deviation))
            .sum()
    }

    /// How far it is over its limit when planned at `share`: the points its mean is over the
    /// ceiling (or over its own background load if that is higher), each counting
    /// `MEAN_FIRST` times, plus the points its jitter is over the tolerance. Where no split
    /// keeps the jitter within the tolerance (few large connections on small nodes), means
    /// still stay under the ceiling, and the jitter is spread rather than piled up.
    fn overload(&self, traffic: Traffic, share: f64, ceiling: f64) -> f64 {
        let (mean, deviation) = self.spread(traffic, share);
        let limit = ceiling.max(self.background);
        let jitter = mean + JITTER_MARGIN * deviation - (limit + JITTER_TOLERANCE);
        MEAN_FIRST * (mean - limit).max(0.0) + jitter.max(0.0)
    }
}

/// A node's utilisation (%) without wao-lb's traffic: what it measures (`cpu_percent`)
/// less what wao-lb's own connections to it add (`own_cores`), to 0.01 points (no reading
/// is finer, and a plan on unchanged inputs is reused).
pub fn background(cpu_percent: f64, own_cores: f64, cores: f64) -> f64 {
    let own = if cores > 0.0 {
        100.0 * own_cores / cores
    } else {
        0.0
    };
    ((cpu_percent - own).max(0.0) * 100.0).round() / 100.0
}

/// A split of the demand: each node's share, the expected total watts, and how far the
/// nodes are over their limits.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    pub shares: Vec<f64>,
    pub watts: f64,
    /// Points over the nodes' limits, summed (0: every node fits).
    pub overload: f64,
}

impl Split {
    pub fn feasible(&self) -> bool {
        self.overload <= 1e-9
    }
}

/// Total expected watts of `nodes` when they carry `shares` of `traffic`.
pub fn total_watts(nodes: &[PlanNode], traffic: Traffic, shares: &[f64]) -> f64 {
    nodes
        .iter()
        .zip(shares)
        .map(|(n, s)| n.expected_watts(traffic, *s))
        .sum()
}

/// Points over the limits of `nodes` carrying `shares` of `traffic`, summed.
pub fn total_overload(nodes: &[PlanNode], traffic: Traffic, shares: &[f64], ceiling: f64) -> f64 {
    nodes
        .iter()
        .zip(shares)
        .map(|(n, s)| n.overload(traffic, *s, ceiling))
        .sum()
}

/// The split of `traffic` over `nodes` with the least expected watts under `limits`.
pub fn optimal_split(nodes: &[PlanNode], traffic: Traffic, limits: Limits) -> Split {
    split_near(nodes, traffic, limits, None)
}

/// As `optimal_split`, but moving a node's share away from `anchor` costs `STICKINESS` of
/// that node's watts per whole share moved: of plans that differ by less than their inputs'
/// noise, the one nearest the split in use wins (identical nodes do not trade places).
fn split_near(
    nodes: &[PlanNode],
    traffic: Traffic,
    limits: Limits,
    anchor: Option<&[f64]>,
) -> Split {
    let n = nodes.len();
    if n == 0 {
        return Split {
            shares: Vec::new(),
            watts: 0.0,
            overload: 0.0,
        };
    }
    let chunk = 1.0 / CHUNKS as f64;
    // The minimum share in chunks, if every node can have it.
    let least =
        ((limits.min_share.clamp(0.0, 1.0) * CHUNKS as f64).ceil() as usize).min(CHUNKS / n);
    // (overload, watts) of node i carrying k chunks; compared overload first.
    let cost = |i: usize, k: usize| -> (f64, f64) {
        let share = k as f64 * chunk;
        let node = &nodes[i];
        let watts = node.expected_watts(traffic, share);
        let moving = anchor.and_then(|a| a.get(i)).map_or(0.0, |a| {
            STICKINESS * node.curve.at(node.utilisation(a * traffic.cores)) * (share - a).abs()
        });
        (
            node.overload(traffic, share, limits.ceiling_percent),
            watts + moving,
        )
    };
    let add = |a: (f64, f64), b: (f64, f64)| (a.0 + b.0, a.1 + b.1);
    let better = |a: (f64, f64), b: (f64, f64)| {
        const EPS: f64 = 1e-9;
        a.0 < b.0 - EPS || (a.0 <= b.0 + EPS && a.1 < b.1)
    };
    let none = (f64::INFINITY, f64::INFINITY);
    // best[k]: the least cost of the nodes so far carrying k chunks; part[i][k]: node i's.
    let mut best: Vec<(f64, f64)> = (0..=CHUNKS)
        .map(|k| if k >= least { cost(0, k) } else { none })
        .collect();
    let mut part = vec![vec![0usize; CHUNKS + 1]; n];
    for (k, p) in part[0].iter_mut().enumerate() {
        *p = k;
    }
    for (i, parts) in part.iter_mut().enumerate().skip(1) {
        let own: Vec<(f64, f64)> = (0..=CHUNKS).map(|k| cost(i, k)).collect();
        let mut next = vec![none; CHUNKS + 1];
        for k in 0..=CHUNKS {
            for j in least..=k {
                if best[k - j].0.is_infinite() {
                    continue;
                }
                let v = add(best[k - j], own[j]);
                if better(v, next[k]) {
                    next[k] = v;
                    parts[k] = j;
                }
            }
        }
        best = next;
    }
    let mut shares = vec![0.0; n];
    let mut k = CHUNKS;
    for i in (0..n).rev() {
        let j = part[i][k];
        shares[i] = j as f64 * chunk;
        k -= j;
    }
    Split {
        watts: total_watts(nodes, traffic, &shares),
        overload: best[CHUNKS].0,
        shares,
    }
}

/// Moving a whole share away from the split in use costs this fraction of the node's
/// watts when re-planning (see `split_near`).
pub const STICKINESS: f64 = 0.1;

/// Moves the split in use toward a planned one, rate-limited and hysteretic: the first plan
/// is taken as it is; a later one is adopted as the target only when it relieves an
/// overload or saves at least the hold over the current target; the split then moves
/// toward the target until it is reached, at most `MAX_STEP` per share and step.
#[derive(Debug, Clone, Default)]
pub struct Mover {
    shares: Vec<f64>,
    target: Option<Vec<f64>>,
    /// The last plan and what it was made from: unchanged inputs reuse it.
    last: Option<(Vec<PlanNode>, Traffic, Limits, Split)>,
}

impl Mover {
    /// Plans for `nodes` (near the target in use, so noise cannot make identical choices
    /// trade places) and steps toward the plan: the split to use now.
    pub fn plan_and_step(
        &mut self,
        nodes: &[PlanNode],
        traffic: Traffic,
        limits: Limits,
    ) -> Vec<f64> {
        let planned = match &self.last {
            Some((n, t, l, split)) if n == nodes && *t == traffic && *l == limits => split.clone(),
            _ => split_near(nodes, traffic, limits, self.target.as_deref()),
        };
        self.last = Some((nodes.to_vec(), traffic, limits, planned.clone()));
        self.step(nodes, traffic, limits, &planned)
    }

    /// The split to use now, toward `planned` for `nodes` carrying `traffic`. The first
    /// plan is taken as it is; after that, a plan that overloads the nodes less is always
    /// adopted, one that overloads them as much only when it saves the hold.
    pub fn step(
        &mut self,
        nodes: &[PlanNode],
        traffic: Traffic,
        limits: Limits,
        planned: &Split,
    ) -> Vec<f64> {
        let n = nodes.len();
        if planned.shares.len() != n {
            // A plan for other nodes: equal shares until there is one for these.
            self.shares = vec![1.0 / n.max(1) as f64; n];
            self.target = None;
            return self.shares.clone();
        }
        if self.shares.len() != n {
            // No split in use yet, nothing to protect from a swing: the first plan is
            // taken as it is.
            self.shares = planned.shares.clone();
            self.target = Some(planned.shares.clone());
            return self.shares.clone();
        }
        let held = self.target.as_deref().unwrap_or(&self.shares);
        let over = total_overload(nodes, traffic, held, limits.ceiling_percent);
        let relieves = planned.overload < over - 1e-6;
        let same = planned.overload <= over + 1e-6;
        if relieves || (same && total_watts(nodes, traffic, held) - planned.watts >= HOLD_WATTS) {
            self.target = Some(planned.shares.clone());
        }
        let Some(target) = &self.target else {
            return self.shares.clone();
        };
        // Along the line to the target, no share moving more than MAX_STEP: still a split.
        let furthest = self
            .shares
            .iter()
            .zip(target)
            .map(|(s, t)| (t - s).abs())
            .fold(0.0, f64::max);
        let fraction = if furthest > MAX_STEP {
            MAX_STEP / furthest
        } else {
            1.0
        };
        for (s, t) in self.shares.iter_mut().zip(target) {
            *s += (t - *s) * fraction;
        }
        self.shares.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// SPECpower-like: a step from idle to 10 %, then flatter, then steeper near full load.
    fn spec_like(idle: f64, step: f64, slope: f64, top: f64) -> Curve {
        let mut watts = [0.0; 11];
        watts[0] = idle;
        watts[1] = idle + step;
        for (i, w) in watts.iter_mut().enumerate().skip(2) {
            let x = i as f64 - 1.0;
            *w = idle + step + slope * x + top * (x / 9.0).powi(3);
        }
        Curve { watts }
    }

    /// The least expected watts over a grid of splits of three nodes (step 1/400), with
    /// the ceiling.
    fn brute_force(nodes: &[PlanNode], traffic: Traffic, ceiling: f64) -> Option<f64> {
        let steps = 400;
        let mut best: Option<f64> = None;
        for a in 0..=steps {
            for b in 0..=steps - a {
                let shares = [
                    a as f64 / steps as f64,
                    b as f64 / steps as f64,
                    (steps - a - b) as f64 / steps as f64,
                ];
                let fits = nodes
                    .iter()
                    .zip(&shares)
                    .all(|(n, s)| n.overload(traffic, *s, ceiling) <= 0.0);
                if fits {
                    let w = total_watts(nodes, traffic, &shares);
                    best = Some(best.map_or(w, |b: f64| b.min(w)));
                }
            }
        }
        best
    }

    #[test]
    fn exact_against_brute_force_on_small_clusters() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(14);
        let limits = Limits::default();
        for case in 0..40 {
            let nodes: Vec<PlanNode> = (0..3)
                .map(|_| PlanNode {
                    curve: spec_like(
                        rng.random_range(40.0..200.0),
                        rng.random_range(10.0..120.0),
                        rng.random_range(2.0..30.0),
                        rng.random_range(0.0..150.0),
                    ),
                    background: rng.random_range(0.0..70.0),
                    cores: [8.0, 16.0, 64.0, 192.0][rng.random_range(0..4)],
                })
                .collect();
            let spare: f64 = nodes
                .iter()
                .map(|n| (limits.ceiling_percent - n.background).max(0.0) * n.cores / 100.0)
                .sum();
            let cores = spare * rng.random_range(0.05..0.95);
            // Half the cases split exactly, half over a few hundred random picks.
            let traffic = if case % 2 == 0 {
                Traffic::exact(cores)
            } else {
                Traffic {
                    cores,
                    connections: rng.random_range(50.0..2000.0),
                }
            };
            let split = optimal_split(&nodes, traffic, limits);
            let brute = brute_force(&nodes, traffic, limits.ceiling_percent);
            assert_eq!(split.feasible(), brute.is_some(), "case {case}");
            if let Some(b) = brute {
                assert!(
                    split.watts <= b + 0.5,
                    "case {case}: planner {} W, brute force {b} W",
                    split.watts
                );
            }
            for (n, s) in nodes.iter().zip(&split.shares) {
                let over = n.overload(traffic, *s, limits.ceiling_percent);
                assert!(!split.feasible() || over <= 1e-9, "case {case}");
            }
            assert!((split.shares.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        }
    }

    /// SPECpower's ASUS RS720A-E12 (2× EPYC 9654), as `config/profiles/rs720a-e12.yaml`.
    const RS720A_E12: [f64; 11] = [
        128.0, 257.0, 300.0, 340.0, 378.0, 410.0, 442.0, 498.0, 577.0, 697.0, 817.0,
    ];

    /// Three identical RS720A-E12 nodes with 192 cores, each 20 % busy.
    fn three_e12() -> Vec<PlanNode> {
        let node = PlanNode {
            curve: Curve { watts: RS720A_E12 },
            background: 20.0,
            cores: 192.0,
        };
        vec![node; 3]
    }

    #[test]
    fn identical_nodes_concentrate_where_the_curve_is_not_convex() {
        // Three identical 192-core nodes, each 20 % busy, 100 cores of demand: equal
        // marginal watts holds the uniform split, but the curve is concave from 30 to 60 %,
        // so loading fewer nodes further costs less.
        let nodes = three_e12();
        let demand = Traffic::exact(100.0);
        let split = optimal_split(&nodes, demand, Limits::default());
        let uniform = total_watts(&nodes, demand, &[1.0 / 3.0; 3]);
        assert!(
            split.watts < uniform - 5.0,
            "{} vs uniform {uniform}",
            split.watts
        );
        let max = split.shares.iter().cloned().fold(0.0, f64::max);
        assert!(max > 0.45, "{:?}", split.shares);
    }

    #[test]
    fn a_plan_near_the_split_in_use_wins_over_an_equal_one() {
        // Identical nodes: loading any one of them is as good. With node 2 a little
        // cheaper (1 %), the plain optimum moves the load there; anchored at a split that
        // loads node 0, the plan stays.
        let mut nodes = three_e12();
        nodes[2].curve.watts = RS720A_E12.map(|w| w * 0.99);
        let free = optimal_split(&nodes, Traffic::exact(100.0), Limits::default());
        let busiest = |s: &[f64]| (0..3).max_by(|a, b| s[*a].total_cmp(&s[*b])).unwrap_or(0);
        assert_eq!(busiest(&free.shares), 2, "{:?}", free.shares);
        let mut anchored = free.shares.clone();
        anchored.swap(0, 2);
        let near = split_near(
            &nodes,
            Traffic::exact(100.0),
            Limits::default(),
            Some(&anchored),
        );
        assert_eq!(busiest(&near.shares), 0, "{:?}", near.shares);
    }

    #[test]
    fn minimum_share_and_overload() {
        let curve = spec_like(100.0, 50.0, 10.0, 50.0);
        let node = |background| PlanNode {
            curve: curve.clone(),
            background,
            cores: 10.0,
        };
        let limits = Limits {
            ceiling_percent: 80.0,
            min_share: 0.2,
        };
        let three = [node(10.0), node(10.0), node(10.0)];
        let split = optimal_split(&three, Traffic::exact(3.0), limits);
        assert!(
            split.shares.iter().all(|s| *s >= 0.2 - 1e-9),
            "{:?}",
            split.shares
        );
        // More demand than the spare capacity: the least overload, no node idle.
        let two = [node(70.0), node(10.0)];
        let split = optimal_split(&two, Traffic::exact(10.0), Limits::default());
        assert!(!split.feasible());
        let loads: Vec<f64> = [70.0, 10.0]
            .iter()
            .zip(&split.shares)
            .map(|(b, s)| b + 100.0 * s * 10.0 / 10.0)
            .collect();
        assert!(loads.iter().all(|l| *l > 80.0 - 1e-6), "{loads:?}");
    }

    #[test]
    fn the_mover_is_rate_limited_and_holds_small_gains() {
        let nodes = three_e12();
        let d = Traffic::exact(60.0);
        let planned = optimal_split(&nodes, d, Limits::default());
        assert!(planned.watts < total_watts(&nodes, d, &[1.0 / 3.0; 3]) - 5.0);
        // The first plan is taken as it is (no split in use yet); a later one is moved
        // toward at most MAX_STEP a share per step.
        let mut mover = Mover::default();
        let uniform = Split {
            shares: vec![1.0 / 3.0; 3],
            watts: total_watts(&nodes, d, &[1.0 / 3.0; 3]),
            overload: 0.0,
        };
        let mut last = mover.step(&nodes, d, Limits::default(), &uniform);
        assert_eq!(last, uniform.shares);
        for _ in 0..20 {
            let now = mover.step(&nodes, d, Limits::default(), &planned);
            for (a, b) in now.iter().zip(&last) {
                assert!((a - b).abs() <= MAX_STEP + 1e-9);
            }
            last = now;
        }
        assert!(total_watts(&nodes, d, &last) <= planned.watts + HOLD_WATTS + 1.0);
        // A plan that saves next to nothing over the target is not adopted.
        let tiny = Split {
            shares: vec![0.34, 0.33, 0.33],
            watts: total_watts(&nodes, d, &last) - 0.01,
            overload: 0.0,
        };
        assert_eq!(mover.step(&nodes, d, Limits::default(), &tiny), last);
    }

    #[test]
    fn random_picks_are_planned_for() {
        // Nine RS720A-E13 at 13 %, 1,900 cores of demand in 20,000 connections (a generated
        // cluster of the bench): the exact optimum puts seven nodes just under the 80 %
        // kink, where jitter of a point costs the steep segment above it. The plan for
        // random picks expects fewer watts under that jitter and keeps every node's mean
        // under the ceiling and four deviations under the ceiling's tolerance.
        let e13 = [
            157.0, 265.0, 314.0, 362.0, 412.0, 461.0, 503.0, 544.0, 587.0, 661.0, 800.0,
        ];
        let node = PlanNode {
            curve: Curve { watts: e13 },
            background: 13.2,
            cores: 384.0,
        };
        let nodes = vec![node; 9];
        let exact = optimal_split(&nodes, Traffic::exact(1900.0), Limits::default());
        let picks = Traffic {
            cores: 1900.0,
            connections: 20_000.0,
        };
        let planned = optimal_split(&nodes, picks, Limits::default());
        assert!(planned.feasible());
        for (n, s) in nodes.iter().zip(&planned.shares) {
            let (mean, deviation) = n.spread(picks, *s);
            assert!(mean <= 80.0 + 1e-9, "{mean} ± {deviation}");
            let peak = mean + JITTER_MARGIN * deviation;
            assert!(
                peak <= 80.0 + JITTER_TOLERANCE + 1e-9,
                "{mean} ± {deviation}"
            );
        }
        let under_jitter = total_watts(&nodes, picks, &exact.shares);
        assert!(
            planned.watts < under_jitter - 2.0,
            "{} vs {under_jitter}",
            planned.watts
        );
        // The jitter shrinks with the number of connections.
        let (_, few) = nodes[0].spread(picks, 0.5);
        let many = Traffic {
            connections: 2e9,
            ..picks
        };
        let (_, more) = nodes[0].spread(many, 0.5);
        assert!(few > 1.0 && more < 1e-2, "{few} {more}");
    }

    #[test]
    fn where_no_split_tames_the_jitter_means_still_keep_the_ceiling() {
        // Eight 8-core nodes at 9 %, 33 cores in 328 connections (a generated cluster of
        // the bench with realistic picks): a connection is 1.25 points, so any node with
        // a share jitters far past the tolerance. Summed jitter is least with the load on
        // one node, but no node's mean may pass the ceiling for it.
        let node = PlanNode {
            curve: Curve {
                watts: [
                    166.0, 179.0, 191.0, 200.0, 212.0, 224.0, 235.0, 245.0, 252.0, 259.0, 265.0,
                ],
            },
            background: 8.8,
            cores: 8.0,
        };
        let nodes = vec![node; 8];
        let picks = Traffic {
            cores: 32.8,
            connections: 328.0,
        };
        let planned = optimal_split(&nodes, picks, Limits::default());
        assert!(!planned.feasible());
        for (n, s) in nodes.iter().zip(&planned.shares) {
            let (mean, _) = n.spread(picks, *s);
            assert!(mean <= 80.0 + 1e-9, "{:?}", planned.shares);
        }
    }

    #[test]
    fn few_connections_are_counted_exactly() {
        let total: f64 = binomial(10, 0.3).map(|(_, p)| p).sum();
        assert!((total - 1.0).abs() < 1e-12);
        let mean: f64 = binomial(10, 0.3).map(|(k, p)| f64::from(k) * p).sum();
        assert!((mean - 3.0).abs() < 1e-12);
        assert_eq!(
            binomial(3, 1.0).map(|(_, p)| p).collect::<Vec<_>>(),
            [0.0, 0.0, 0.0, 1.0]
        );
        // One connection on two nodes: expected watts are linear in the share, so the plan
        // gives the node where it costs less all of it.
        let mut nodes = three_e12();
        nodes.truncate(2);
        nodes[0].background = 45.0;
        let one = Traffic {
            cores: 0.1,
            connections: 1.0,
        };
        let split = optimal_split(&nodes, one, Limits::default());
        assert_eq!(split.shares, [1.0, 0.0]);
    }

    #[test]
    fn a_plan_that_relieves_an_overload_is_adopted_whatever_it_costs() {
        // Uniform overloads the small node; the plan that relieves it costs more watts.
        let small = PlanNode {
            curve: Curve {
                watts: [
                    10.0, 10.1, 10.2, 10.3, 10.4, 10.5, 10.6, 10.7, 10.8, 10.9, 11.0,
                ],
            },
            background: 60.0,
            cores: 8.0,
        };
        let big = PlanNode {
            curve: Curve { watts: RS720A_E12 },
            background: 10.0,
            cores: 192.0,
        };
        let nodes = [small, big];
        let traffic = Traffic::exact(4.0);
        let limits = Limits::default();
        let planned = optimal_split(&nodes, traffic, limits);
        let uniform = [0.5, 0.5];
        assert!(total_overload(&nodes, traffic, &uniform, 80.0) > 0.0);
        assert!(planned.feasible());
        assert!(planned.watts > total_watts(&nodes, traffic, &uniform));
        let mut mover = Mover::default();
        let held = Split {
            shares: uniform.to_vec(),
            watts: total_watts(&nodes, traffic, &uniform),
            overload: total_overload(&nodes, traffic, &uniform, 80.0),
        };
        assert_eq!(mover.step(&nodes, traffic, limits, &held), uniform);
        let next = mover.step(&nodes, traffic, limits, &planned);
        assert!(next[0] < 0.5, "{next:?}");
    }
}
