//! The weight updater task. It keeps one input task per (node, input) running for the
//! current `Demand` and, on `power.interval` (and on every change of it), reads the inputs,
//! predicts each node's power now, with one more connection, and across its CPU range (its
//! curve, `CURVE_POINTS` predictions a node and interval at most, which a remote model's
//! cache answers while the inputs hold), reads wao-lb's own open connections per node,
//! applies the policy, and publishes `NodeWeights` when they changed. Every fallback is
//! counted and explained.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::clusters;
use super::inputs::{self, InputCell, Reading};
use super::metrics::PowerMetrics;
use super::planner::{background, Curve, Traffic};
use super::predict::Predictor;
use super::remote::RemotePredictor;
use super::weights::{apply, NodeReport, NodeWeights, PolicyState, RemoteScore};
use crate::model::connections::OpenConnections;
use crate::model::node::{
    Input, ModelLocation, NodeSpec, NodeWeighting, Quantity, RemoteModelSpec, Source, Timing,
};
use crate::model::published::Board;
use crate::model::url::HttpUrl;
use crate::model::{Desired, NodeName};
use crate::settings::PowerSettings;

/// What the updater weighs: the nodes, every per-connection cost (millicores) some service
/// uses, and the power settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Demand {
    pub nodes: BTreeMap<NodeName, NodeSpec>,
    pub costs: BTreeSet<u32>,
    /// The other clusters' score URLs that services list, read on their timing.
    pub clusters: BTreeMap<HttpUrl, Timing>,
    pub settings: PowerSettings,
}

impl Demand {
    pub fn new(desired: &Desired, settings: &PowerSettings) -> Demand {
        let mut costs: BTreeSet<u32> = desired
            .services
            .services
            .values()
            .filter_map(|s| s.cpu_per_connection)
            .collect();
        costs.insert(settings.cpu_per_connection);
        let mut clusters = BTreeMap::new();
        for c in desired.services.services.values().flat_map(|s| &s.clusters) {
            // A URL listed twice is read once, on the quicker timing.
            let timing: &mut Timing = clusters.entry(c.score_url.clone()).or_insert(c.timing);
            if c.timing.interval < timing.interval {
                *timing = c.timing;
            }
        }
        Demand {
            nodes: desired.nodes.clone(),
            costs,
            clusters,
            settings: settings.clone(),
        }
    }
}

/// One node's running inputs and model.
struct NodeState {
    spec: NodeSpec,
    /// The inputs' cells, in the order of `Quantity::ALL`.
    cells: [Arc<InputCell>; 3],
    predictor: Option<Predictor>,
    /// The last good (watts now, ΔW) per cost, and when it was predicted.
    last_good: HashMap<u32, (Prediction, Instant)>,
}

/// What the inputs read from: the normal HTTP client, one that accepts self-signed
/// certificates for Redfish sources that ask for it, and the board discovery publishes on.
struct Clients {
    normal: reqwest::Client,
    insecure: reqwest::Client,
    board: Board,
}

impl Clients {
    fn new(board: Board) -> Clients {
        let normal = reqwest::Client::new();
        let insecure = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .build()
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "no client for insecureSkipVerify; certificates will be checked");
                normal.clone()
            });
        Clients {
            normal,
            insecure,
            board,
        }
    }

    /// For asking a model's provider: a BMC may have asked to skip certificate checks.
    fn for_model(&self, model: &RemoteModelSpec) -> reqwest::Client {
        match model.location {
            ModelLocation::Redfish { insecure: true, .. } => self.insecure.clone(),
            _ => self.normal.clone(),
        }
    }

    fn for_input(&self, input: &Input) -> reqwest::Client {
        match input.source {
            Source::Redfish { insecure: true, .. } => self.insecure.clone(),
            _ => self.normal.clone(),
        }
    }
}

fn start_nodes(
    nodes: &BTreeMap<NodeName, NodeSpec>,
    clients: &Clients,
    stop: &CancellationToken,
) -> BTreeMap<NodeName, NodeState> {
    nodes
        .iter()
        .map(|(name, n)| {
            let cell = |q: Quantity| {
                let input = n.input(q);
                let (client, board) = (clients.for_input(input), clients.board.clone());
                inputs::spawn(input, q, client, board, stop.clone())
            };
            let predictor = match &n.weighting {
                NodeWeighting::Curve(c) => Some(Predictor::Curve(c.clone())),
                NodeWeighting::Remote(m) => Some(Predictor::Remote(Arc::new(
                    RemotePredictor::new(m.clone(), clients.normal.clone(), clients.for_model(m)),
                ))),
                NodeWeighting::Fixed(_) => None,
            };
            let state = NodeState {
                spec: n.clone(),
                cells: Quantity::ALL.map(cell),
                predictor,
                last_good: HashMap::new(),
            };
            (name.clone(), state)
        })
        .collect()
}

/// The curve is predicted at 0, 10, …, 100 % CPU.
const CURVE_POINTS: usize = 11;

pub async fn run(
    mut demand: watch::Receiver<Arc<Demand>>,
    out: watch::Sender<Arc<NodeWeights>>,
    metrics: Arc<PowerMetrics>,
    board: Board,
    open: OpenConnections,
    stop: CancellationToken,
) {
    let clients = Clients::new(board);
    let mut current = demand.borrow_and_update().clone();
    let mut inputs_stop = stop.child_token();
    let mut nodes = start_nodes(&current.nodes, &clients, &inputs_stop);
    let mut scores_stop = stop.child_token();
    let mut scores = start_scores(&current.clusters, &clients, &scores_stop);
    let mut states: HashMap<u32, PolicyState> = HashMap::new();
    // Give freshly started inputs a moment to answer before the first weights.
    tokio::time::sleep(Duration::from_millis(200)).await;
    loop {
        let mut fresh = compute(&current, &mut nodes, &mut states, &open, &metrics).await;
        fresh.clusters = read_scores(&current.clusters, &scores);
        out.send_if_modified(|w| {
            let changed = **w != fresh;
            if changed {
                *w = Arc::new(fresh);
            }
            changed
        });
        tokio::select! {
            _ = tokio::time::sleep(current.settings.interval) => {}
            r = demand.changed() => {
                if r.is_err() {
                    break;
                }
                let next = demand.borrow_and_update().clone();
                if next.nodes != current.nodes {
                    inputs_stop.cancel();
                    inputs_stop = stop.child_token();
                    nodes = start_nodes(&next.nodes, &clients, &inputs_stop);
                    states.clear();
                }
                if next.clusters != current.clusters {
                    scores_stop.cancel();
                    scores_stop = stop.child_token();
                    scores = start_scores(&next.clusters, &clients, &scores_stop);
                }
                current = next;
            }
            _ = stop.cancelled() => break,
        }
    }
    inputs_stop.cancel();
    scores_stop.cancel();
}

/// One refresh task per other cluster's score URL.
fn start_scores(
    clusters: &BTreeMap<HttpUrl, Timing>,
    clients: &Clients,
    stop: &CancellationToken,
) -> BTreeMap<HttpUrl, Arc<InputCell>> {
    clusters
        .iter()
        .map(|(url, timing)| {
            let cell = clusters::spawn(url.clone(), *timing, clients.normal.clone(), stop.clone());
            (url.clone(), cell)
        })
        .collect()
}

/// Every other cluster's score as read now.
fn read_scores(
    clusters: &BTreeMap<HttpUrl, Timing>,
    cells: &BTreeMap<HttpUrl, Arc<InputCell>>,
) -> BTreeMap<HttpUrl, RemoteScore> {
    let now = Instant::now();
    clusters
        .iter()
        .filter_map(|(url, timing)| {
            let cell = cells.get(url)?;
            Some((url.clone(), RemoteScore::of(cell.read(now, timing))))
        })
        .collect()
}

/// The weights for every cost from the nodes' inputs and models, now.
async fn compute(
    demand: &Demand,
    nodes: &mut BTreeMap<NodeName, NodeState>,
    states: &mut HashMap<u32, PolicyState>,
    open: &OpenConnections,
    metrics: &PowerMetrics,
) -> NodeWeights {
    let costs = &demand.costs;
    let now = Instant::now();
    // Predict every node concurrently: a slow predictor delays only its own node.
    let mut tasks = JoinSet::new();
    for (name, node) in nodes.iter() {
        let readings: Vec<(Quantity, Reading)> = Quantity::ALL
            .into_iter()
            .zip(&node.cells)
            .map(|(q, c)| (q, c.read(now, &node.spec.input(q).timing)))
            .collect();
        let (predictor, cores, costs) = (node.predictor.clone(), node.spec.cores, costs.clone());
        let name = name.clone();
        tasks.spawn(async move {
            let predicted = predict_node(&readings, predictor.as_ref(), cores, &costs).await;
            (name, readings, predicted)
        });
    }
    let mut by_cost: BTreeMap<u32, BTreeMap<NodeName, NodeReport>> =
        costs.iter().map(|c| (*c, BTreeMap::new())).collect();
    let open_by_cost: BTreeMap<u32, BTreeMap<NodeName, u64>> =
        costs.iter().map(|c| (*c, open.by_node(*c))).collect();
    while let Some(joined) = tasks.join_next().await {
        let Ok((name, readings, predicted)) = joined else {
            continue;
        };
        let Some(node) = nodes.get_mut(&name) else {
            continue;
        };
        for cost in costs {
            let mut report = node_report(&name, node, &readings, &predicted, *cost, now, metrics);
            let own = open_by_cost
                .get(cost)
                .and_then(|o| o.get(&name))
                .map_or(0.0, |n| *n as f64 * f64::from(*cost) / 1000.0);
            report.background_percent = report
                .cpu_percent
                .map(|cpu| background(cpu, own, node.spec.cores));
            if let Some(reports) = by_cost.get_mut(cost) {
                reports.insert(name.clone(), report);
            }
        }
    }
    for (cost, reports) in by_cost.iter_mut() {
        let connections = open_by_cost.get(cost).map_or(0, |o| o.values().sum());
        apply(
            demand.settings.policy,
            reports,
            states.entry(*cost).or_default(),
            demand.settings.limits,
            traffic(connections, *cost),
        );
    }
    if let Some(reports) = by_cost.get(&demand.settings.cpu_per_connection) {
        metrics.publish(reports);
    }
    let by_cost = by_cost
        .into_iter()
        .map(|(cost, reports)| {
            let shared = reports.into_iter().map(|(n, r)| (n, Arc::new(r))).collect();
            (cost, shared)
        })
        .collect();
    NodeWeights {
        by_cost,
        clusters: BTreeMap::new(),
    }
}

/// What wao-lb's `connections` of `cost` millicores add: planned as at least one, so a
/// quiet service is placed where its first connection costs least.
fn traffic(connections: u64, cost: u32) -> Traffic {
    let connections = connections.max(1) as f64;
    Traffic {
        cores: connections * f64::from(cost) / 1000.0,
        connections,
    }
}

/// A node's usable prediction for one cost: watts now, ΔW, and its curve when sampled.
#[derive(Clone)]
struct Prediction {
    watts: f64,
    delta: f64,
    curve: Option<Arc<Curve>>,
}

/// What a node's model says: for each cost Ok((watts now, ΔW)) or why not, and its curve.
#[derive(Default)]
struct Predicted {
    by_cost: BTreeMap<u32, Result<(f64, f64), String>>,
    curve: Option<Arc<Curve>>,
}

/// (watts now, ΔW) from predictions at `cpu` and `next` %. A model whose answer does not
/// move when the CPU does is broken (a stub, or one fed the wrong input) and would win every
/// connection with ΔW = 0: it counts as a failed prediction.
fn changes_with_cpu(before: f64, after: f64, cpu: f64, next: f64) -> Result<(f64, f64), String> {
    if after == before && next > cpu {
        Err(format!(
            "implausible: the prediction stays at {before} W from {cpu:.1}% to {next:.1}% CPU"
        ))
    } else {
        Ok((before, after - before))
    }
}

async fn predict_node(
    readings: &[(Quantity, Reading)],
    predictor: Option<&Predictor>,
    cores: f64,
    costs: &BTreeSet<u32>,
) -> Predicted {
    let Some(predictor) = predictor else {
        return Predicted::default();
    };
    let value = |q: Quantity| {
        readings
            .iter()
            .find(|(rq, _)| *rq == q)
            .and_then(|(_, r)| match r {
                Reading::Fresh(v) | Reading::Last { value: v, .. } => Some(*v),
                Reading::Missing { .. } => None,
            })
    };
    let (Some(cpu), Some(inlet), Some(dp)) = (
        value(Quantity::Cpu),
        value(Quantity::Inlet),
        value(Quantity::DeltaP),
    ) else {
        let by_cost = costs
            .iter()
            .map(|c| (*c, Err("inputs missing".to_string())))
            .collect();
        return Predicted {
            by_cost,
            curve: None,
        };
    };
    let before = predictor.predict(cpu, inlet, dp).await;
    let mut out = Predicted {
        curve: match &before {
            Ok(_) => sample_curve(predictor, inlet, dp).await.map(Arc::new),
            Err(_) => None,
        },
        ..Predicted::default()
    };
    for cost in costs {
        let step = f64::from(*cost) / (cores * 1000.0) * 100.0;
        let r = match &before {
            Ok(b) => {
                let next = (cpu + step).min(100.0);
                predictor
                    .predict(next, inlet, dp)
                    .await
                    .and_then(|after| changes_with_cpu(*b, after, cpu, next))
            }
            Err(e) => Err(e.clone()),
        };
        out.by_cost.insert(*cost, r);
    }
    out
}

/// The node's predicted watts at 0, 10, …, 100 % CPU under its inputs now; None when a
/// point cannot be predicted or is not a finite number of watts.
async fn sample_curve(predictor: &Predictor, inlet: f64, delta_p: f64) -> Option<Curve> {
    let mut watts = [0.0; CURVE_POINTS];
    for (i, w) in watts.iter_mut().enumerate() {
        let cpu = 100.0 * i as f64 / (CURVE_POINTS - 1) as f64;
        *w = predictor
            .predict(cpu, inlet, delta_p)
            .await
            .ok()
            .filter(|v| v.is_finite())?;
    }
    Some(Curve { watts })
}

/// The node's report for `cost`: its inputs, and its prediction (with its curve) fresh,
/// else the last good one until the model's `staleAfter`, else none (neutral).
fn node_report(
    name: &str,
    node: &mut NodeState,
    readings: &[(Quantity, Reading)],
    predicted: &Predicted,
    cost: u32,
    now: Instant,
    metrics: &PowerMetrics,
) -> NodeReport {
    let mut report = NodeReport {
        cores: node.spec.cores,
        ..NodeReport::default()
    };
    let mut notes: Vec<String> = Vec::new();
    let mut missing = false;
    for (q, r) in readings {
        let (value, age) = match r {
            Reading::Fresh(v) => (Some(*v), 0.0),
            Reading::Last { value, age, error } => {
                metrics.fallback(name, q.label(), "stale_input");
                notes.push(format!(
                    "stale {}, using last value {}s old ({error})",
                    q.label(),
                    age.as_secs()
                ));
                (Some(*value), age.as_secs_f64())
            }
            Reading::Missing { reason } => {
                metrics.fallback(name, q.label(), "missing_input");
                notes.push(format!("no {} ({reason})", q.label()));
                missing = true;
                (None, 0.0)
            }
        };
        report.input_age_seconds = report.input_age_seconds.max(age);
        match q {
            Quantity::Cpu => report.cpu_percent = value,
            Quantity::Inlet => report.inlet_celsius = value,
            Quantity::DeltaP => report.delta_p_pascal = value,
        }
    }
    let Some(predictor) = &node.predictor else {
        if let NodeWeighting::Fixed(w) = node.spec.weighting {
            report.fixed = Some(w);
        }
        report.reason = "fixed weight from config".into();
        return report;
    };
    let usable = |p: &Prediction, report: &mut NodeReport| {
        report.watts = Some(p.watts);
        report.delta_watts = Some(p.delta);
        report.curve = p.curve.clone();
    };
    match predicted.by_cost.get(&cost) {
        Some(Ok((watts, delta))) if !missing => {
            let p = Prediction {
                watts: *watts,
                delta: *delta,
                curve: predicted.curve.clone(),
            };
            usable(&p, &mut report);
            node.last_good.insert(cost, (p, now));
        }
        other => {
            let why = match other {
                Some(Err(e)) if !missing => {
                    metrics.fallback(name, "model", "predictor_failed");
                    format!("{} failed: {e}", predictor.name())
                }
                _ => "inputs missing".to_string(),
            };
            let limit = match predictor {
                Predictor::Remote(m) => m.stale_after(),
                Predictor::Curve(_) => Duration::ZERO,
            };
            match node.last_good.get(&cost) {
                Some((p, at)) if !missing && now.saturating_duration_since(*at) <= limit => {
                    notes.push(format!(
                        "{why}; using last prediction {}s old",
                        now.saturating_duration_since(*at).as_secs()
                    ));
                    usable(p, &mut report);
                }
                _ => {
                    metrics.fallback(name, "model", "neutral");
                    if !missing {
                        notes.push(why);
                    }
                    notes.push("neutral weight".into());
                }
            }
        }
    }
    report.reason = if notes.is_empty() {
        format!("ok, model {}", predictor.name())
    } else {
        notes.join("; ")
    }
    .into();
    report
}
