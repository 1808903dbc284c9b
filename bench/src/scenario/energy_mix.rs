//! The clusters the energy simulation runs: the shipped mixes, mix files (YAML or JSON, a
//! contract others script against), and generated clusters from the shipped curves.
//!
//! ```yaml
//! name: three-identical
//! demand: 100                 # cores of CPU that wao-lb's traffic adds to the cluster
//! cpuPerConnection: 100m      # optional, default 100m
//! lagIntervals: 0             # optional
//! nodes:
//!   - {name: a, profile: rs720a-e12, cores: 192, background: 20}
//!   - {name: b, curve: [128, 257, 300, 340, 378, 410, 442, 498, 577, 697, 817], cores: 192, background: 20}
//! ```

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use wao_lb::model::curve::CurveProfile;
use wao_lb::model::units::parse_millicores;
use wao_lb::power::planner::Curve;

/// The utilisation ceiling the simulation and its optimum obey (wao-lb's default).
pub const CEILING: f64 = 80.0;

#[derive(Debug, Clone, PartialEq)]
pub struct SimNode {
    pub name: String,
    /// Watts at 0, 10, …, 100 % utilisation.
    pub curve: Curve,
    pub cores: f64,
    /// Utilisation (%) without wao-lb's traffic.
    pub background_percent: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Mix {
    pub name: String,
    pub nodes: Vec<SimNode>,
    /// The traffic's CPU demand, in cores, spread over the cluster.
    pub demand_cores: f64,
    /// CPU one connection costs, in millicores.
    pub cpu_per_connection: f64,
    /// How many power intervals old the loads the policies see are.
    pub lag_intervals: usize,
    /// Standard deviations of the multiplicative noise on the predictions the policies
    /// see: one draw per tick for every node, and one per node.
    pub noise_shared: f64,
    pub noise_independent: f64,
    /// One pick per new connection, connections with a lifetime, instead of a fresh batch
    /// of picks per tick.
    pub realistic_picks: bool,
}

/// The shipped curve `profile`.
fn profile_curve(profile: &str) -> Result<Curve, String> {
    CurveProfile::embedded(profile)
        .map(|p| Curve { watts: p.watts })
        .ok_or_else(|| {
            format!(
                "unknown profile {profile:?}; known: {}",
                CurveProfile::names().join(", ")
            )
        })
}

fn node(name: &str, profile: &str, cores: f64, background_percent: f64) -> Result<SimNode, String> {
    Ok(SimNode {
        name: name.into(),
        curve: profile_curve(profile)?,
        cores,
        background_percent,
    })
}

/// A shipped mix: its name, demand (cores) and nodes as (name, profile, cores,
/// background %).
type Shipped = (
    &'static str,
    f64,
    &'static [(&'static str, &'static str, f64, f64)],
);

const SHIPPED_MIXES: [Shipped; 6] = [
    (
        "mixed-generations",
        60.0,
        &[
            ("x3550-m3", "x3550-m3", 12.0, 20.0),
            ("rs720a-e12", "rs720a-e12", 192.0, 30.0),
            ("altra", "anystor-altra", 80.0, 20.0),
            ("ml30-g11", "ml30-g11", 8.0, 20.0),
        ],
    ),
    (
        "edge-and-datacentre",
        80.0,
        &[
            ("se360-v2", "se360-v2", 16.0, 10.0),
            ("xr8620t", "xr8620t", 32.0, 40.0),
            ("rs720a-e13", "rs720a-e13", 384.0, 20.0),
        ],
    ),
    (
        "old-and-new-x86",
        30.0,
        &[
            ("rx300-s4", "rx300-s4", 8.0, 10.0),
            ("x3550-m3", "x3550-m3", 12.0, 10.0),
            ("rs720a-e12", "rs720a-e12", 192.0, 10.0),
        ],
    ),
    (
        "two-arm-one-epyc",
        100.0,
        &[
            ("altra-a", "anystor-altra", 80.0, 10.0),
            ("altra-b", "anystor-altra", 80.0, 50.0),
            ("rs720a-e13", "rs720a-e13", 384.0, 15.0),
        ],
    ),
    // Identical nodes, where equal marginal watts holds the uniform split and only a plan
    // over the (non-convex) curves finds the saving.
    (
        "three-identical-e12",
        100.0,
        &[
            ("e12-a", "rs720a-e12", 192.0, 20.0),
            ("e12-b", "rs720a-e12", 192.0, 20.0),
            ("e12-c", "rs720a-e12", 192.0, 20.0),
        ],
    ),
    (
        "three-identical-x3550",
        3.0,
        &[
            ("x3550-a", "x3550-m3", 12.0, 5.0),
            ("x3550-b", "x3550-m3", 12.0, 5.0),
            ("x3550-c", "x3550-m3", 12.0, 5.0),
        ],
    ),
];

/// The cluster mixes the report covers.
pub fn shipped() -> Result<Vec<Mix>, String> {
    SHIPPED_MIXES
        .iter()
        .map(|(name, demand_cores, nodes)| {
            Ok(Mix {
                name: name.to_string(),
                nodes: nodes
                    .iter()
                    .map(|(n, profile, cores, background)| node(n, profile, *cores, *background))
                    .collect::<Result<_, String>>()?,
                demand_cores: *demand_cores,
                cpu_per_connection: 100.0,
                lag_intervals: 0,
                noise_shared: 0.0,
                noise_independent: 0.0,
                realistic_picks: false,
            })
        })
        .collect()
}

/// A mix file as written.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMix {
    name: String,
    demand: f64,
    cpu_per_connection: Option<String>,
    lag_intervals: Option<usize>,
    nodes: Vec<RawNode>,
}

#[derive(Debug, Deserialize)]
struct RawNode {
    name: String,
    profile: Option<String>,
    curve: Option<Vec<f64>>,
    cores: f64,
    background: f64,
}

/// The mix in `text` (YAML or JSON), every problem named with its key.
pub fn parse(text: &str) -> Result<Mix, String> {
    let raw: RawMix = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
    if !(raw.demand.is_finite() && raw.demand > 0.0) {
        return Err(format!(
            "demand: {} is not a positive number of cores",
            raw.demand
        ));
    }
    let cpu_per_connection = match &raw.cpu_per_connection {
        Some(c) => f64::from(parse_millicores(c).map_err(|e| format!("cpuPerConnection: {e}"))?),
        None => 100.0,
    };
    if raw.nodes.is_empty() {
        return Err("nodes: at least one node".into());
    }
    let nodes = raw
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let at = format!("nodes[{i}]");
            let curve = match (&n.profile, &n.curve) {
                (Some(p), None) => profile_curve(p).map_err(|e| format!("{at}.profile: {e}"))?,
                (None, Some(c)) => {
                    let watts: [f64; 11] = c.as_slice().try_into().map_err(|_| {
                        format!(
                            "{at}.curve: {} values; 11 are needed (0, 10, …, 100 %)",
                            c.len()
                        )
                    })?;
                    if watts.iter().any(|w| !w.is_finite() || *w < 0.0) {
                        return Err(format!("{at}.curve: watts must be finite and not negative"));
                    }
                    Curve { watts }
                }
                _ => return Err(format!("{at}: give either profile or curve")),
            };
            if !(n.cores.is_finite() && n.cores > 0.0) {
                return Err(format!("{at}.cores: {} is not a positive number", n.cores));
            }
            if !(0.0..=100.0).contains(&n.background) {
                return Err(format!(
                    "{at}.background: {} is outside 0..100 %",
                    n.background
                ));
            }
            Ok(SimNode {
                name: n.name.clone(),
                curve,
                cores: n.cores,
                background_percent: n.background,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Mix {
        name: raw.name,
        nodes,
        demand_cores: raw.demand,
        cpu_per_connection,
        lag_intervals: raw.lag_intervals.unwrap_or(0),
        noise_shared: 0.0,
        noise_independent: 0.0,
        realistic_picks: false,
    })
}

/// The cores of a typical server of each shipped profile.
const SHIPPED: [(&str, f64); 8] = [
    ("rx300-s4", 8.0),
    ("x3550-m3", 12.0),
    ("rs720a-e13", 384.0),
    ("rs720a-e12", 192.0),
    ("anystor-altra", 80.0),
    ("se360-v2", 16.0),
    ("ml30-g11", 8.0),
    ("xr8620t", 32.0),
];

/// `count` random clusters from the shipped curves: 2–12 nodes (a third of the clusters of
/// identical nodes), background 5–70 %, demand 5–95 % of the spare capacity under the
/// ceiling.
pub fn generate(count: usize, seed: u64) -> Result<Vec<Mix>, String> {
    let mut rng = SmallRng::seed_from_u64(seed);
    (0..count)
        .map(|i| {
            let size = rng.random_range(2..=12);
            let identical = rng.random_bool(1.0 / 3.0);
            let first = SHIPPED[rng.random_range(0..SHIPPED.len())];
            let nodes = (0..size)
                .map(|k| {
                    let (profile, cores) = if identical {
                        first
                    } else {
                        SHIPPED[rng.random_range(0..SHIPPED.len())]
                    };
                    let background = if identical && k > 0 {
                        None
                    } else {
                        Some(rng.random_range(5.0..70.0))
                    };
                    (profile, cores, background)
                })
                .collect::<Vec<_>>();
            // Identical clusters share one background, as identical nodes under one load.
            let shared = nodes[0].2.unwrap_or(20.0);
            let nodes = nodes
                .into_iter()
                .enumerate()
                .map(|(k, (p, c, b))| node(&format!("n{k}"), p, c, b.unwrap_or(shared)))
                .collect::<Result<Vec<_>, String>>()?;
            let spare: f64 = nodes
                .iter()
                .map(|n| (CEILING - n.background_percent).max(0.0) * n.cores / 100.0)
                .sum();
            let demand = (spare * rng.random_range(0.05..0.95)).max(0.01);
            Ok(Mix {
                name: format!("generated-{seed}-{i}"),
                nodes,
                demand_cores: demand,
                cpu_per_connection: 100.0,
                lag_intervals: 0,
                noise_shared: 0.0,
                noise_independent: 0.0,
                realistic_picks: false,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mix_file_in_yaml_or_json() {
        let yaml = "name: three-identical\ndemand: 100\ncpuPerConnection: 250m\nlagIntervals: 3\nnodes:\n\
                    \x20 - {name: a, profile: rs720a-e12, cores: 192, background: 20}\n\
                    \x20 - {name: b, curve: [128, 257, 300, 340, 378, 410, 442, 498, 577, 697, 817], cores: 192, background: 20, rack: r1}\n";
        let m = parse(yaml).unwrap();
        assert_eq!(m.nodes.len(), 2);
        assert_eq!(
            m.nodes[0].curve, m.nodes[1].curve,
            "the profile is that curve"
        );
        assert_eq!((m.cpu_per_connection, m.lag_intervals), (250.0, 3));
        let json = r#"{"name": "j", "demand": 3, "nodes": [{"name": "a", "profile": "x3550-m3", "cores": 12, "background": 5}]}"#;
        assert_eq!(parse(json).unwrap().cpu_per_connection, 100.0);
        for (bad, says) in [
            ("name: x\ndemand: 0\nnodes: [{name: a, profile: x3550-m3, cores: 1, background: 1}]", "demand"),
            ("name: x\ndemand: 1\nnodes: [{name: a, profile: nope, cores: 1, background: 1}]", "nodes[0].profile"),
            ("name: x\ndemand: 1\nnodes: [{name: a, curve: [1, 2], cores: 1, background: 1}]", "nodes[0].curve: 2 values"),
            ("name: x\ndemand: 1\nnodes: [{name: a, cores: 1, background: 1}]", "either profile or curve"),
            ("name: x\ndemand: 1\nnodes: [{name: a, profile: x3550-m3, cores: 1, background: 120}]", "nodes[0].background"),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn generated_clusters_are_in_range_and_reproducible() {
        let a = generate(50, 9).unwrap();
        assert_eq!(a, generate(50, 9).unwrap());
        for m in &a {
            assert!((2..=12).contains(&m.nodes.len()));
            let spare: f64 = m
                .nodes
                .iter()
                .map(|n| (CEILING - n.background_percent).max(0.0) * n.cores / 100.0)
                .sum();
            assert!(m.demand_cores <= 0.95 * spare + 0.01, "{}", m.name);
            assert!(m
                .nodes
                .iter()
                .all(|n| (5.0..70.0).contains(&n.background_percent)));
        }
        assert!(a
            .iter()
            .any(|m| m.nodes.windows(2).all(|w| w[0].curve == w[1].curve)));
    }
}
