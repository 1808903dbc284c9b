//! `energy`: a closed-loop simulation of heterogeneous clusters that proves the
//! energy saving. Nodes have the shipped SPECpower curves and different background loads;
//! traffic adds CPU to the node that receives it. Each tick the real policy code
//! (`wao_lb::power::weights::apply`) turns the nodes' current loads into weights, the real
//! selection table (`wao_lb::dataplane::proxy::table::Table`) picks backends for a batch of
//! connections, and the picks set the next loads. Reported: total cluster watts for uniform
//! (stock kube-proxy), `wao`, `marginal` (wao-lb's default), `planner` (the exact split over
//! the curves, `wao_lb::power::planner`, moved toward by its rate-limited mover) and the
//! optimum under the same ceiling.

use std::collections::BTreeMap;
use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::SeedableRng;
use serde::Serialize;
use wao_lb::dataplane::proxy::table::Table;
use wao_lb::model::curve::CurveProfile;
use wao_lb::model::NodeName;
use wao_lb::power::planner::{optimal_split, Curve, Mover, PlanNode};
use wao_lb::power::policy::Controller;
use wao_lb::power::weights::{apply, NodeReport};
use wao_lb::settings::{Limits, Policy};

/// CPU one connection costs (WAO's default `cpu-per-request`).
const COST_MILLICORES: f64 = 100.0;
/// Connections picked per tick through the real table.
const PICKS_PER_TICK: usize = 20_000;
const TICKS: usize = 120;
/// Ticks averaged at the end, after the loop settles.
const TAIL: usize = 40;

#[derive(Debug, Clone)]
pub struct SimNode {
    pub name: &'static str,
    pub profile: &'static str,
    pub cores: f64,
    pub background_percent: f64,
}

#[derive(Debug, Clone)]
pub struct Mix {
    pub name: &'static str,
    pub nodes: Vec<SimNode>,
    /// The traffic's CPU demand, in cores, spread over the cluster.
    pub demand_cores: f64,
}

fn node(name: &'static str, profile: &'static str, cores: f64, background_percent: f64) -> SimNode {
    SimNode {
        name,
        profile,
        cores,
        background_percent,
    }
}

/// The cluster mixes the report covers.
pub fn mixes() -> Vec<Mix> {
    vec![
        Mix {
            name: "mixed-generations",
            nodes: vec![
                node("x3550-m3", "x3550-m3", 12.0, 20.0),
                node("rs720a-e12", "rs720a-e12", 192.0, 30.0),
                node("altra", "anystor-altra", 80.0, 20.0),
                node("ml30-g11", "ml30-g11", 8.0, 20.0),
            ],
            demand_cores: 60.0,
        },
        Mix {
            name: "edge-and-datacentre",
            nodes: vec![
                node("se360-v2", "se360-v2", 16.0, 10.0),
                node("xr8620t", "xr8620t", 32.0, 40.0),
                node("rs720a-e13", "rs720a-e13", 384.0, 20.0),
            ],
            demand_cores: 80.0,
        },
        Mix {
            name: "old-and-new-x86",
            nodes: vec![
                node("rx300-s4", "rx300-s4", 8.0, 10.0),
                node("x3550-m3", "x3550-m3", 12.0, 10.0),
                node("rs720a-e12", "rs720a-e12", 192.0, 10.0),
            ],
            demand_cores: 30.0,
        },
        Mix {
            name: "two-arm-one-epyc",
            nodes: vec![
                node("altra-a", "anystor-altra", 80.0, 10.0),
                node("altra-b", "anystor-altra", 80.0, 50.0),
                node("rs720a-e13", "rs720a-e13", 384.0, 15.0),
            ],
            demand_cores: 100.0,
        },
        // Identical nodes, where equal marginal watts holds the uniform split and only a
        // plan over the (non-convex) curves finds the saving.
        Mix {
            name: "three-identical-e12",
            nodes: vec![
                node("e12-a", "rs720a-e12", 192.0, 20.0),
                node("e12-b", "rs720a-e12", 192.0, 20.0),
                node("e12-c", "rs720a-e12", 192.0, 20.0),
            ],
            demand_cores: 100.0,
        },
        Mix {
            name: "three-identical-x3550",
            nodes: vec![
                node("x3550-a", "x3550-m3", 12.0, 5.0),
                node("x3550-b", "x3550-m3", 12.0, 5.0),
                node("x3550-c", "x3550-m3", 12.0, 5.0),
            ],
            demand_cores: 3.0,
        },
    ]
}

#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub policy: String,
    pub watts: f64,
    pub max_load_percent: f64,
    pub shares: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MixReport {
    pub mix: String,
    pub demand_cores: f64,
    pub outcomes: Vec<Outcome>,
    /// Share of the optimum's saving over uniform that `marginal` reaches (1 = optimal).
    pub marginal_of_optimum: f64,
    pub wao_of_optimum: f64,
    pub planner_of_optimum: f64,
}

struct Loaded {
    profile: Arc<CurveProfile>,
    spec: SimNode,
}

fn load(mix: &Mix) -> Result<Vec<Loaded>, String> {
    mix.nodes
        .iter()
        .map(|n| {
            CurveProfile::embedded(n.profile)
                .map(|profile| Loaded {
                    profile,
                    spec: n.clone(),
                })
                .ok_or_else(|| format!("unknown profile {}", n.profile))
        })
        .collect()
}

/// Utilisation of each node when it gets `share` of the demand.
fn load_percent(n: &Loaded, share: f64, demand: f64) -> f64 {
    n.spec.background_percent + 100.0 * share * demand / n.spec.cores
}

fn total_watts(nodes: &[Loaded], shares: &[f64], demand: f64) -> f64 {
    nodes
        .iter()
        .zip(shares)
        .map(|(n, s)| n.profile.predict(load_percent(n, *s, demand), 24.0, 0.0))
        .sum()
}

/// What decides the weights in a closed loop.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Sim {
    /// Every node the same (stock kube-proxy).
    Uniform,
    /// A policy of `wao_lb::power::weights::apply`.
    Policy(Policy),
    /// `wao_lb::power::planner`: the exact split over the curves, approached by its mover.
    Planner,
}

impl Sim {
    fn name(self) -> &'static str {
        match self {
            Sim::Uniform => "uniform",
            Sim::Policy(Policy::Wao) => "wao",
            Sim::Policy(Policy::Marginal) => "marginal",
            Sim::Planner => "planner",
        }
    }
}

/// The planner's view of the nodes: their curves (at the bench's 24 °C inlet), background
/// loads and cores.
fn plan_nodes(nodes: &[Loaded]) -> Vec<PlanNode> {
    nodes
        .iter()
        .map(|n| PlanNode {
            curve: Curve {
                watts: std::array::from_fn(|i| n.profile.predict(10.0 * i as f64, 24.0, 0.0)),
            },
            background: n.spec.background_percent,
            cores: n.spec.cores,
        })
        .collect()
}

/// Runs one policy in closed loop and returns the settled outcome.
fn closed_loop(nodes: &[Loaded], demand: f64, sim: Sim, seed: u64) -> Outcome {
    let n = nodes.len();
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut controller = Controller::default();
    let limits = Limits::default();
    let planning = plan_nodes(nodes);
    // The inputs hold still here (no lag, no noise), so one plan serves every tick.
    let planned = (sim == Sim::Planner).then(|| optimal_split(&planning, demand, limits));
    let mut mover = Mover::default();
    let mut shares = vec![1.0 / n as f64; n];
    let (mut watts_sum, mut max_load, mut share_sum) = (0.0, 0.0f64, vec![0.0; n]);
    for tick in 0..TICKS {
        let weights: Vec<f64> = match sim {
            Sim::Uniform => vec![1.0; n],
            Sim::Planner => match &planned {
                Some(p) => mover.step(&planning, demand, p),
                None => vec![1.0; n],
            },
            Sim::Policy(policy) => {
                let mut reports: BTreeMap<NodeName, NodeReport> = BTreeMap::new();
                for (i, node) in nodes.iter().enumerate() {
                    let cpu = load_percent(node, shares[i], demand);
                    let step = COST_MILLICORES / (node.spec.cores * 1000.0) * 100.0;
                    let before = node.profile.predict(cpu, 24.0, 0.0);
                    let after = node.profile.predict(cpu + step, 24.0, 0.0);
                    let report = NodeReport {
                        cpu_percent: Some(cpu),
                        watts: Some(before),
                        delta_watts: Some(after - before),
                        ..NodeReport::default()
                    };
                    reports.insert(NodeName::from(format!("{i:03}")), report);
                }
                apply(policy, &mut reports, &mut controller, limits);
                reports.values().map(|r| r.weight.unwrap_or(0.0)).collect()
            }
        };
        // The real selection table decides where this tick's connections go.
        let table = Table::new(&weights);
        let mut picks = vec![0usize; n];
        for _ in 0..PICKS_PER_TICK {
            if let Some(i) = table.pick(&mut rng) {
                picks[i] += 1;
            }
        }
        shares = picks
            .iter()
            .map(|p| *p as f64 / PICKS_PER_TICK as f64)
            .collect();
        if tick >= TICKS - TAIL {
            watts_sum += total_watts(nodes, &shares, demand);
            for (i, node) in nodes.iter().enumerate() {
                max_load = max_load.max(load_percent(node, shares[i], demand));
                share_sum[i] += shares[i];
            }
        }
    }
    Outcome {
        policy: sim.name().into(),
        watts: watts_sum / TAIL as f64,
        max_load_percent: max_load,
        shares: nodes
            .iter()
            .zip(share_sum)
            .map(|(n, s)| (n.spec.name.to_string(), s / TAIL as f64))
            .collect(),
    }
}

/// The split of the demand that minimises total watts with every node at or below the
/// ceiling: the planner's exact dynamic programming (`wao_lb::power::planner`).
fn optimum(nodes: &[Loaded], demand: f64, ceiling: f64) -> Outcome {
    let limits = Limits {
        ceiling_percent: ceiling,
        min_share: 0.0,
    };
    let shares = optimal_split(&plan_nodes(nodes), demand, limits).shares;
    let max_load = nodes
        .iter()
        .zip(&shares)
        .map(|(n, s)| load_percent(n, *s, demand))
        .fold(0.0, f64::max);
    Outcome {
        policy: "optimum".into(),
        watts: total_watts(nodes, &shares, demand),
        max_load_percent: max_load,
        shares: nodes
            .iter()
            .zip(shares)
            .map(|(n, s)| (n.spec.name.to_string(), s))
            .collect(),
    }
}

pub fn run_mix(mix: &Mix, seed: u64) -> Result<MixReport, String> {
    let nodes = load(mix)?;
    let uniform = closed_loop(&nodes, mix.demand_cores, Sim::Uniform, seed);
    let wao = closed_loop(&nodes, mix.demand_cores, Sim::Policy(Policy::Wao), seed);
    let marginal = closed_loop(
        &nodes,
        mix.demand_cores,
        Sim::Policy(Policy::Marginal),
        seed,
    );
    let planner = closed_loop(&nodes, mix.demand_cores, Sim::Planner, seed);
    let best = optimum(&nodes, mix.demand_cores, Limits::default().ceiling_percent);
    let saving = |o: &Outcome| uniform.watts - o.watts;
    let of_optimum = |o: &Outcome| {
        let s = saving(&best);
        if s.abs() < 1e-9 {
            1.0
        } else {
            saving(o) / s
        }
    };
    Ok(MixReport {
        mix: mix.name.into(),
        demand_cores: mix.demand_cores,
        marginal_of_optimum: of_optimum(&marginal),
        wao_of_optimum: of_optimum(&wao),
        planner_of_optimum: of_optimum(&planner),
        outcomes: vec![uniform, wao, marginal, planner, best],
    })
}

/// Every mix with the same seed.
pub fn run_all(seed: u64) -> Result<Vec<MixReport>, String> {
    mixes()
        .iter()
        .map(|m| run_mix(m, seed).map_err(|e| format!("{}: {e}", m.name)))
        .collect()
}

/// The terminal table.
pub fn table(reports: &[MixReport]) -> String {
    let mut out = format!(
        "{:<22} {:>10} {:>10} {:>10} {:>10} {:>10}   {:>9} {:>9} {:>9}  {}\n",
        "mix",
        "uniform W",
        "wao W",
        "marginal W",
        "planner W",
        "optimum W",
        "wao/opt",
        "marg/opt",
        "plan/opt",
        "max load (marginal)"
    );
    for r in reports {
        let w = |p: &str| {
            r.outcomes
                .iter()
                .find(|o| o.policy == p)
                .map_or(f64::NAN, |o| o.watts)
        };
        let load = r
            .outcomes
            .iter()
            .find(|o| o.policy == "marginal")
            .map_or(f64::NAN, |o| o.max_load_percent);
        out.push_str(&format!(
            "{:<22} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1}   {:>8.1}% {:>8.1}% {:>8.1}%  {:.1}%\n",
            r.mix,
            w("uniform"),
            w("wao"),
            w("marginal"),
            w("planner"),
            w("optimum"),
            100.0 * r.wao_of_optimum,
            100.0 * r.marginal_of_optimum,
            100.0 * r.planner_of_optimum,
            load
        ));
    }
    out
}

/// A grouped bar chart of watts saved against uniform, per mix and policy.
pub fn svg(reports: &[MixReport]) -> String {
    let policies = [
        ("wao", "#d95f02"),
        ("marginal", "#1b9e77"),
        ("planner", "#e7298a"),
        ("optimum", "#7570b3"),
    ];
    let (width, height, left, bottom) = (760.0, 360.0, 60.0, 300.0);
    let max = reports
        .iter()
        .flat_map(|r| {
            let u = r.outcomes[0].watts;
            r.outcomes.iter().map(move |o| u - o.watts)
        })
        .fold(1.0, f64::max);
    let group = (width - left - 20.0) / reports.len().max(1) as f64;
    let bar = group / 5.0;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <text x=\"{left}\" y=\"16\" font-size=\"14\">Watts saved against uniform (stock kube-proxy)</text>\n\
         <line x1=\"{left}\" y1=\"{bottom}\" x2=\"{}\" y2=\"{bottom}\" stroke=\"black\"/>\n",
        width - 20.0
    );
    for (g, r) in reports.iter().enumerate() {
        let u = r.outcomes[0].watts;
        let x0 = left + g as f64 * group + bar / 2.0;
        for (k, (p, color)) in policies.iter().enumerate() {
            let saved = r
                .outcomes
                .iter()
                .find(|o| o.policy == *p)
                .map_or(0.0, |o| u - o.watts);
            let h = (saved.max(0.0) / max) * (bottom - 40.0);
            let x = x0 + k as f64 * bar;
            s.push_str(&format!(
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"{color}\"/>\n\
                 <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{saved:.0}</text>\n",
                bottom - h,
                bar - 2.0,
                x + bar / 2.0,
                bottom - h - 3.0
            ));
        }
        s.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\n",
            x0 + 2.0 * bar,
            bottom + 16.0,
            r.mix
        ));
    }
    for (k, (p, color)) in policies.iter().enumerate() {
        let y = 40.0 + 16.0 * k as f64;
        s.push_str(&format!(
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"10\" height=\"10\" fill=\"{color}\"/><text x=\"{:.1}\" y=\"{:.1}\">{p}</text>\n",
            width - 140.0,
            y - 9.0,
            width - 125.0,
            y
        ));
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The mixes `marginal` was built on (it reaches the optimum there, not on identical nodes).
    const MARGINAL_MIXES: [&str; 4] = [
        "mixed-generations",
        "edge-and-datacentre",
        "old-and-new-x86",
        "two-arm-one-epyc",
    ];

    #[test]
    fn optimum_is_no_worse_than_any_policy_and_respects_the_ceiling() {
        for mix in mixes() {
            let r = run_mix(&mix, 1).unwrap();
            let best = r.outcomes.iter().find(|o| o.policy == "optimum").unwrap();
            assert!(
                best.max_load_percent <= 80.0 + 1e-9,
                "{}: {best:?}",
                mix.name
            );
            for o in &r.outcomes {
                // The closed-loop policies may exceed the ceiling slightly; compare only those
                // that respect it.
                if o.max_load_percent <= 80.0 {
                    assert!(
                        best.watts <= o.watts + 1e-6,
                        "{}: {} beats the optimum",
                        mix.name,
                        o.policy
                    );
                }
            }
        }
    }

    #[test]
    fn optimum_fills_the_cheapest_node_first() {
        // Two identical-curve nodes but one already busy: on a concave-then-convex curve the
        // optimum is not uniform; at least it never costs more than uniform.
        let mix = Mix {
            name: "t",
            nodes: vec![
                node("a", "anystor-altra", 80.0, 10.0),
                node("b", "x3550-m3", 12.0, 10.0),
            ],
            demand_cores: 5.0,
        };
        let nodes = load(&mix).unwrap();
        let best = optimum(&nodes, 5.0, 80.0);
        assert!(
            best.shares["a"] > 0.9,
            "the Arm node is far cheaper per core: {best:?}"
        );
    }

    #[test]
    fn the_planner_reaches_95_percent_of_the_optimum_on_every_mix() {
        for mix in mixes() {
            let r = run_mix(&mix, 1).unwrap();
            assert!(
                r.planner_of_optimum >= 0.95,
                "{}: {:.3} of the optimum",
                mix.name,
                r.planner_of_optimum
            );
        }
    }

    #[test]
    fn the_planner_beats_marginal_on_identical_nodes() {
        for mix in mixes()
            .iter()
            .filter(|m| m.name.starts_with("three-identical"))
        {
            let r = run_mix(mix, 7).unwrap();
            let w = |p: &str| r.outcomes.iter().find(|o| o.policy == p).unwrap().watts;
            assert!(
                w("planner") < w("marginal") - 1.0,
                "{}: planner {} W vs marginal {} W",
                mix.name,
                w("planner"),
                w("marginal")
            );
        }
    }

    #[test]
    fn marginal_reaches_95_percent_of_the_optimum_and_beats_wao_on_its_mixes() {
        for mix in mixes().iter().filter(|m| MARGINAL_MIXES.contains(&m.name)) {
            let r = run_mix(mix, 1).unwrap();
            let w = |p: &str| r.outcomes.iter().find(|o| o.policy == p).unwrap().watts;
            assert!(
                r.marginal_of_optimum >= 0.95,
                "{}: {:.3} of the optimum",
                mix.name,
                r.marginal_of_optimum
            );
            assert!(
                w("marginal") < w("wao"),
                "{}: marginal {} W vs wao {} W",
                mix.name,
                w("marginal"),
                w("wao")
            );
        }
    }

    #[test]
    fn shares_sum_to_one() {
        let r = run_mix(&mixes()[0], 3).unwrap();
        for o in &r.outcomes {
            let s: f64 = o.shares.values().sum();
            assert!((s - 1.0).abs() < 1e-6, "{o:?}");
        }
    }
}
