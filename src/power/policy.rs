//! wao-lb's default policy (`marginal`): a controller that moves traffic shares toward the
//! split where every node's marginal watts are equal, which is where total power is lowest
//! for the same traffic. It works in closed loop: shifting traffic changes each node's load,
//! which changes its marginal watts, which the next step sees.
//!
//! Each step multiplies a node's share by `exp(-GAIN · (ΔW_i / ΔW̄ − 1))`, bounded to
//! [1/2, 2], ignores differences inside a dead band (hysteresis), and blends the result with
//! the previous shares (smoothing), so shares settle instead of oscillating. Fractions of a
//! watt count: unlike WAO it never rounds ΔW to whole watts. Safety limits apply last: a node
//! at or above the utilisation ceiling only gives traffic away, and every node keeps at least
//! the minimum share.
//!
//! The controller moves only on new information: when the signals and limits are exactly
//! those of its last step (static inputs, or inputs that kept their last value), it holds
//! its shares. Without feedback the step would integrate the same small difference forever
//! and drift everything onto one node.

use std::collections::BTreeMap;

use crate::model::NodeName;
use crate::settings::Limits;

/// How strongly one step reacts to a marginal-watts difference.
const GAIN: f64 = 0.8;
/// Relative marginal differences below this do not move shares (hysteresis).
const DEAD_BAND: f64 = 0.01;
/// Weight of the new shares against the previous ones.
const BLEND: f64 = 0.5;
/// A node over the ceiling is aimed this much below it.
const CEILING_MARGIN: f64 = 0.97;
/// Within this many percentage points under the ceiling a node's share may not grow.
const NEAR_CEILING: f64 = 3.0;

/// What the controller needs to know about a node.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Signal {
    /// Extra watts of one more connection at the node's current load.
    pub delta_watts: f64,
    pub cpu_percent: f64,
}

/// The controller's memory: the shares it gave last step and what it saw then.
#[derive(Debug, Clone, Default)]
pub struct Controller {
    shares: BTreeMap<NodeName, f64>,
    seen: Option<(BTreeMap<NodeName, Signal>, Limits)>,
}

impl Controller {
    /// The next shares (summing to 1) for the nodes in `signals`.
    pub fn step(
        &mut self,
        signals: &BTreeMap<NodeName, Signal>,
        limits: Limits,
    ) -> BTreeMap<NodeName, f64> {
        if signals.is_empty() {
            self.shares.clear();
            self.seen = None;
            return BTreeMap::new();
        }
        let now = Some((signals.clone(), limits));
        if self.seen == now {
            return self.shares.clone();
        }
        self.seen = now;
        let marginal = |s: &Signal| s.delta_watts.max(1e-9);
        // Nodes seen for the first time start from inverse-marginal shares.
        let fresh = inverse(signals);
        let mut previous: BTreeMap<NodeName, f64> = signals
            .keys()
            .map(|n| (n.clone(), self.shares.get(n).copied().unwrap_or(fresh[n])))
            .collect();
        normalise(&mut previous);
        let mean: f64 = signals.iter().map(|(n, s)| previous[n] * marginal(s)).sum();
        let hot = |s: &Signal| s.cpu_percent >= limits.ceiling_percent;
        let all_hot = signals.values().all(hot);
        // A node over the ceiling gets the share that would bring it just under, were all of
        // its load ours; it never grows. The others split the rest.
        let mut next: BTreeMap<NodeName, f64> = BTreeMap::new();
        let mut hot_total = 0.0;
        for (n, s) in signals {
            if hot(s) && !all_hot {
                let v = previous[n] * (limits.ceiling_percent / s.cpu_percent) * CEILING_MARGIN;
                hot_total += v;
                next.insert(n.clone(), v);
            }
        }
        let cool: Vec<(&NodeName, &Signal)> =
            signals.iter().filter(|(_, s)| all_hot || !hot(s)).collect();
        let mut moved: BTreeMap<NodeName, f64> = cool
            .iter()
            .map(|(n, s)| {
                let ratio = marginal(s) / mean.max(1e-12) - 1.0;
                let mut factor = if ratio.abs() < DEAD_BAND {
                    1.0
                } else {
                    (-GAIN * ratio).exp().clamp(0.5, 2.0)
                };
                // Close to the ceiling a node may shrink but not grow.
                if s.cpu_percent >= limits.ceiling_percent - NEAR_CEILING {
                    factor = factor.min(1.0);
                }
                ((*n).clone(), previous[*n] * factor)
            })
            .collect();
        let mut kept: BTreeMap<NodeName, f64> = cool
            .iter()
            .map(|(n, _)| ((*n).clone(), previous[*n]))
            .collect();
        normalise(&mut moved);
        normalise(&mut kept);
        // Smoothing: the cool nodes move only part of the way.
        for (n, m) in moved {
            let v = BLEND * m + (1.0 - BLEND) * kept[&n];
            next.insert(n, v * (1.0 - hot_total));
        }
        apply_floor(&mut next, limits.min_share);
        self.shares = next.clone();
        next
    }
}

/// Shares inversely proportional to marginal watts.
pub fn inverse(signals: &BTreeMap<NodeName, Signal>) -> BTreeMap<NodeName, f64> {
    let mut s: BTreeMap<NodeName, f64> = signals
        .iter()
        .map(|(n, x)| (n.clone(), 1.0 / x.delta_watts.max(1e-9)))
        .collect();
    normalise(&mut s);
    s
}

/// Scales shares to sum to 1; all-zero or garbage becomes uniform.
pub fn normalise(shares: &mut BTreeMap<NodeName, f64>) {
    for v in shares.values_mut() {
        if !v.is_finite() || *v < 0.0 {
            *v = 0.0;
        }
    }
    let sum: f64 = shares.values().sum();
    let n = shares.len() as f64;
    for v in shares.values_mut() {
        *v = if sum > 0.0 { *v / sum } else { 1.0 / n };
    }
}

/// Raises every share to at least `floor` and takes the difference from the others in
/// proportion, so shares still sum to 1.
pub fn apply_floor(shares: &mut BTreeMap<NodeName, f64>, floor: f64) {
    let n = shares.len() as f64;
    let floor = floor.clamp(0.0, 1.0 / n.max(1.0));
    if floor <= 0.0 {
        return;
    }
    // Iterate: lifting some nodes can push others below the floor.
    for _ in 0..shares.len() {
        let low: f64 = shares
            .values()
            .filter(|s| **s < floor)
            .map(|s| floor - s)
            .sum();
        if low <= 1e-15 {
            break;
        }
        let spare: f64 = shares
            .values()
            .filter(|s| **s > floor)
            .map(|s| s - floor)
            .sum();
        for s in shares.values_mut() {
            if *s < floor {
                *s = floor;
            } else if spare > 0.0 {
                *s -= (*s - floor) * (low / spare).min(1.0);
            }
        }
    }
    normalise(shares);
}

/// Applies the safety limits to another policy's weights: nodes at or above the ceiling get
/// nothing new (unless every node is), then the minimum share.
pub fn limit_weights(
    weights: &mut BTreeMap<NodeName, f64>,
    cpu: &BTreeMap<NodeName, f64>,
    limits: Limits,
) {
    let over = |n: &NodeName| cpu.get(n).is_some_and(|c| *c >= limits.ceiling_percent);
    if !weights.keys().all(over) {
        for (n, w) in weights.iter_mut() {
            if over(n) {
                *w = 0.0;
            }
        }
    }
    normalise(weights);
    apply_floor(weights, limits.min_share);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signals(list: &[(&str, f64, f64)]) -> BTreeMap<NodeName, Signal> {
        list.iter()
            .map(|(n, d, c)| {
                (
                    NodeName::from(*n),
                    Signal {
                        delta_watts: *d,
                        cpu_percent: *c,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn cheaper_node_gains_share_step_by_step() {
        let mut c = Controller::default();
        let first = c.step(
            &signals(&[("cheap", 0.2, 30.0), ("dear", 0.6, 30.0)]),
            Limits::default(),
        );
        let second = c.step(
            &signals(&[("cheap", 0.2, 31.0), ("dear", 0.6, 29.0)]),
            Limits::default(),
        );
        assert!(second["cheap"] > first["cheap"], "{first:?} → {second:?}");
        assert!((second.values().sum::<f64>() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn equal_marginals_hold_still() {
        let mut c = Controller::default();
        let s = signals(&[("a", 0.5, 30.0), ("b", 0.5, 40.0)]);
        let first = c.step(&s, Limits::default());
        let second = c.step(&s, Limits::default());
        assert_eq!(first, second);
    }

    #[test]
    fn static_inputs_hold_still() {
        // Nodes 0.02 W apart, inputs that never change: one step, then no drift.
        let mut c = Controller::default();
        let s = signals(&[("a", 0.50, 30.0), ("b", 0.52, 30.0)]);
        let first = c.step(&s, Limits::default());
        for _ in 0..1_000 {
            assert_eq!(c.step(&s, Limits::default()), first);
        }
        // New information moves it again: the same inputs under a new limit, or new inputs.
        let floor = Limits {
            min_share: 0.5,
            ..Limits::default()
        };
        assert_eq!(
            c.step(&s, floor).values().copied().collect::<Vec<_>>(),
            [0.5, 0.5]
        );
        let before = c.step(&s, Limits::default());
        let moved = c.step(
            &signals(&[("a", 0.50, 31.0), ("b", 0.52, 30.0)]),
            Limits::default(),
        );
        assert!(moved["a"] > before["a"], "{before:?} → {moved:?}");
    }

    #[test]
    fn a_node_over_the_ceiling_only_gives_traffic_away() {
        let mut c = Controller::default();
        let first = c.step(
            &signals(&[("hot", 0.1, 85.0), ("cool", 0.5, 30.0)]),
            Limits::default(),
        );
        let second = c.step(
            &signals(&[("hot", 0.1, 84.0), ("cool", 0.5, 31.0)]),
            Limits::default(),
        );
        assert!(second["hot"] < first["hot"], "{first:?} → {second:?}");
    }

    #[test]
    fn floor_keeps_every_node_warm() {
        let mut shares: BTreeMap<NodeName, f64> =
            [("a".into(), 0.98), ("b".into(), 0.01), ("c".into(), 0.01)]
                .into_iter()
                .collect();
        apply_floor(&mut shares, 0.05);
        assert!(shares.values().all(|s| *s >= 0.05 - 1e-12), "{shares:?}");
        assert!((shares.values().sum::<f64>() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn limits_on_other_policies() {
        let mut w: BTreeMap<NodeName, f64> = [("a".into(), 100.0), ("b".into(), 50.0)]
            .into_iter()
            .collect();
        let cpu: BTreeMap<NodeName, f64> = [("a".into(), 90.0), ("b".into(), 20.0)]
            .into_iter()
            .collect();
        limit_weights(&mut w, &cpu, Limits::default());
        assert_eq!(w["a"], 0.0);
        assert_eq!(w["b"], 1.0);
    }
}
