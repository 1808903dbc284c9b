//! The weight updater task. It keeps one input task per (node, input) running for the
//! current config and, on `power.interval` (and on every config change), reads the inputs,
//! predicts each node's power now and with one more connection, applies the policy, and
//! publishes `NodeWeights` when they changed. Every fallback is counted and explained.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::inputs::{self, InputCell, Quantity, Reading};
use super::policy::Controller;
use super::predict::Predictor;
use super::remote::V2Model;
use super::weights::{apply, NodeReport, NodeWeights};
use crate::config::{Config, NodeConfig, NodeWeighting, Timing};
use crate::model::NodeName;
use crate::telemetry::metrics::Metrics;

/// One node's running inputs and model.
struct NodeState {
    config: NodeConfig,
    cells: [(Quantity, Arc<InputCell>, Timing); 3],
    predictor: Option<Predictor>,
    /// The last good (watts now, ΔW) per cost, and when it was predicted.
    last_good: HashMap<u32, (f64, f64, Instant)>,
}

/// Every per-connection cost the config's services use.
fn costs(config: &Config) -> BTreeSet<u32> {
    let mut costs: BTreeSet<u32> = config
        .services
        .services
        .values()
        .filter_map(|s| s.cpu_per_connection)
        .collect();
    costs.insert(config.power.cpu_per_connection);
    costs
}

/// HTTP clients for the inputs: the normal one, and one that accepts self-signed
/// certificates for Redfish sources that ask for it.
struct Clients {
    normal: reqwest::Client,
    insecure: reqwest::Client,
}

impl Clients {
    fn new() -> Clients {
        let normal = reqwest::Client::new();
        let insecure = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .build()
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "no client for insecureSkipVerify; certificates will be checked");
                normal.clone()
            });
        Clients { normal, insecure }
    }

    fn for_input(&self, input: &crate::config::Input) -> reqwest::Client {
        match input.source {
            crate::config::Source::Redfish { insecure: true, .. } => self.insecure.clone(),
            _ => self.normal.clone(),
        }
    }
}

fn start_nodes(
    config: &Config,
    clients: &Clients,
    stop: &CancellationToken,
) -> BTreeMap<NodeName, NodeState> {
    config
        .nodes
        .iter()
        .map(|(name, n)| {
            let cell = |q, input: &crate::config::Input| {
                (
                    q,
                    inputs::spawn(input, q, clients.for_input(input), stop.clone()),
                    input.timing,
                )
            };
            let predictor = match &n.weighting {
                NodeWeighting::Curve(c) => Some(Predictor::Curve(c.clone())),
                NodeWeighting::Remote(m) => Some(Predictor::Remote(Arc::new(V2Model::new(
                    m.clone(),
                    clients.normal.clone(),
                )))),
                NodeWeighting::Fixed(_) => None,
            };
            let state = NodeState {
                config: n.clone(),
                cells: [
                    cell(Quantity::Cpu, &n.cpu),
                    cell(Quantity::Inlet, &n.inlet),
                    cell(Quantity::DeltaP, &n.delta_p),
                ],
                predictor,
                last_good: HashMap::new(),
            };
            (name.clone(), state)
        })
        .collect()
}

pub async fn run(
    mut config: watch::Receiver<Arc<Config>>,
    out: watch::Sender<Arc<NodeWeights>>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let clients = Clients::new();
    let mut current = config.borrow_and_update().clone();
    let mut inputs_stop = stop.child_token();
    let mut nodes = start_nodes(&current, &clients, &inputs_stop);
    let mut controllers: HashMap<u32, Controller> = HashMap::new();
    // Give freshly started inputs a moment to answer before the first weights.
    tokio::time::sleep(Duration::from_millis(200)).await;
    loop {
        let fresh = compute(&current, &mut nodes, &mut controllers, &metrics).await;
        out.send_if_modified(|w| {
            let changed = **w != fresh;
            if changed {
                *w = Arc::new(fresh);
            }
            changed
        });
        tokio::select! {
            _ = tokio::time::sleep(current.power.interval) => {}
            r = config.changed() => {
                if r.is_err() {
                    break;
                }
                let next = config.borrow_and_update().clone();
                if next.nodes != current.nodes {
                    inputs_stop.cancel();
                    inputs_stop = stop.child_token();
                    nodes = start_nodes(&next, &clients, &inputs_stop);
                    controllers.clear();
                }
                current = next;
            }
            _ = stop.cancelled() => break,
        }
    }
    inputs_stop.cancel();
}

/// The weights for every cost from the nodes' inputs and models, now.
async fn compute(
    config: &Config,
    nodes: &mut BTreeMap<NodeName, NodeState>,
    controllers: &mut HashMap<u32, Controller>,
    metrics: &Metrics,
) -> NodeWeights {
    let costs = costs(config);
    let now = Instant::now();
    // Predict every node concurrently: a slow predictor delays only its own node.
    let mut tasks = JoinSet::new();
    for (name, node) in nodes.iter() {
        let readings: Vec<(Quantity, Reading)> = node
            .cells
            .iter()
            .map(|(q, c, t)| (*q, c.read(now, t)))
            .collect();
        let (predictor, cores, costs) = (node.predictor.clone(), node.config.cores, costs.clone());
        let name = name.clone();
        tasks.spawn(async move {
            let predicted = predict_node(&readings, predictor.as_ref(), cores, &costs).await;
            (name, readings, predicted)
        });
    }
    let mut by_cost: BTreeMap<u32, BTreeMap<NodeName, NodeReport>> =
        costs.iter().map(|c| (*c, BTreeMap::new())).collect();
    while let Some(joined) = tasks.join_next().await {
        let Ok((name, readings, predicted)) = joined else {
            continue;
        };
        let Some(node) = nodes.get_mut(&name) else {
            continue;
        };
        for cost in &costs {
            let report = node_report(
                &name,
                node,
                &readings,
                predicted.get(cost),
                *cost,
                now,
                metrics,
            );
            if let Some(reports) = by_cost.get_mut(cost) {
                reports.insert(name.clone(), report);
            }
        }
    }
    for (cost, reports) in by_cost.iter_mut() {
        let controller = controllers.entry(*cost).or_default();
        apply(
            config.power.policy,
            reports,
            controller,
            config.power.limits,
        );
    }
    if let Some(reports) = by_cost.get(&config.power.cpu_per_connection) {
        publish_gauges(metrics, reports);
    }
    NodeWeights { by_cost }
}

/// What a node's model says for each cost: Ok((watts now, ΔW)) or why not.
type Predicted = BTreeMap<u32, Result<(f64, f64), String>>;

async fn predict_node(
    readings: &[(Quantity, Reading)],
    predictor: Option<&Predictor>,
    cores: f64,
    costs: &BTreeSet<u32>,
) -> Predicted {
    let Some(predictor) = predictor else {
        return Predicted::new();
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
        return costs
            .iter()
            .map(|c| (*c, Err("inputs missing".to_string())))
            .collect();
    };
    let before = predictor.predict(cpu, inlet, dp).await;
    let mut out = Predicted::new();
    for cost in costs {
        let step = f64::from(*cost) / (cores * 1000.0) * 100.0;
        let r = match &before {
            Ok(b) => predictor
                .predict((cpu + step).min(100.0), inlet, dp)
                .await
                .map(|after| (*b, after - b)),
            Err(e) => Err(e.clone()),
        };
        out.insert(*cost, r);
    }
    out
}

fn node_report(
    name: &str,
    node: &mut NodeState,
    readings: &[(Quantity, Reading)],
    predicted: Option<&Result<(f64, f64), String>>,
    cost: u32,
    now: Instant,
    metrics: &Metrics,
) -> NodeReport {
    let mut report = NodeReport::default();
    let mut notes: Vec<String> = Vec::new();
    let mut missing = false;
    for (q, r) in readings {
        let (value, age) = match r {
            Reading::Fresh(v) => (Some(*v), 0.0),
            Reading::Last { value, age, error } => {
                metrics
                    .power_fallbacks
                    .with_label_values(&[name, q.label(), "stale_input"])
                    .inc();
                notes.push(format!(
                    "stale {}, using last value {}s old ({error})",
                    q.label(),
                    age.as_secs()
                ));
                (Some(*value), age.as_secs_f64())
            }
            Reading::Missing { reason } => {
                metrics
                    .power_fallbacks
                    .with_label_values(&[name, q.label(), "missing_input"])
                    .inc();
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
        if let NodeWeighting::Fixed(w) = node.config.weighting {
            report.fixed = Some(w);
        }
        report.reason = "fixed weight from config".into();
        return report;
    };
    match predicted {
        Some(Ok((watts, delta))) if !missing => {
            node.last_good.insert(cost, (*watts, *delta, now));
            report.watts = Some(*watts);
            report.delta_watts = Some(*delta);
        }
        other => {
            let why = match other {
                Some(Err(e)) if !missing => {
                    metrics
                        .power_fallbacks
                        .with_label_values(&[name, "model", "predictor_failed"])
                        .inc();
                    format!("{} failed: {e}", predictor.name())
                }
                _ => "inputs missing".to_string(),
            };
            let limit = match predictor {
                Predictor::Remote(m) => m.stale_after(),
                Predictor::Curve(_) => Duration::ZERO,
            };
            match node.last_good.get(&cost) {
                Some((w, d, at)) if !missing && now.saturating_duration_since(*at) <= limit => {
                    notes.push(format!(
                        "{why}; using last prediction {}s old",
                        now.saturating_duration_since(*at).as_secs()
                    ));
                    report.watts = Some(*w);
                    report.delta_watts = Some(*d);
                }
                _ => {
                    metrics
                        .power_fallbacks
                        .with_label_values(&[name, "model", "neutral"])
                        .inc();
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
    };
    report
}

fn publish_gauges(metrics: &Metrics, reports: &BTreeMap<NodeName, NodeReport>) {
    for (node, r) in reports {
        let set = |gauge: &prometheus::GaugeVec, v: Option<f64>| {
            gauge.with_label_values(&[node]).set(v.unwrap_or(f64::NAN));
        };
        set(&metrics.node_cpu_percent, r.cpu_percent);
        set(&metrics.node_inlet_celsius, r.inlet_celsius);
        set(&metrics.node_delta_p_pascal, r.delta_p_pascal);
        set(&metrics.node_watts, r.watts);
        set(&metrics.node_delta_watts, r.delta_watts);
        set(&metrics.node_weight, r.weight);
        set(&metrics.node_input_age_seconds, Some(r.input_age_seconds));
    }
}
