//! Cluster power scores, as WAO's multi-cluster endpoint proxy defines them: this
//! cluster's (the sum of the predicted watts of its nodes with a prediction, served as
//! `/score`) and the other clusters' that services list, each read from their `/score` by
//! one refresh task into an `InputCell` (fresh, last good until `staleAfter`, then missing).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::http;
use super::inputs::InputCell;
use super::weights::NodeWeights;
use crate::model::node::Timing;
use crate::model::url::HttpUrl;
use crate::model::NodeName;

/// The largest score taken as plausible: a million kilowatts.
const MAX_SCORE: f64 = 1e9;

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterScore {
    /// Σ predicted watts of the nodes with a prediction.
    pub score: f64,
    /// Nodes counted in the score.
    pub nodes: usize,
    /// Known nodes without a usable prediction now (model down past `staleAfter`, no
    /// inputs): not counted, as WAO counts only ready nodes.
    pub without_prediction: usize,
}

impl ClusterScore {
    /// The score of the nodes in `weights`. A node appears once per per-connection cost;
    /// its predicted watts now are the same under each, so it is counted once.
    pub fn of(weights: &NodeWeights) -> ClusterScore {
        let mut watts: BTreeMap<&NodeName, Option<f64>> = BTreeMap::new();
        for (node, report) in weights.by_cost.values().flatten() {
            watts
                .entry(node)
                .or_insert(report.watts.filter(|w| w.is_finite()));
        }
        let predicted: Vec<f64> = watts.values().flatten().copied().collect();
        ClusterScore {
            score: predicted.iter().sum(),
            nodes: predicted.len(),
            without_prediction: watts.len() - predicted.len(),
        }
    }

    /// The score, when it stands for at least one node.
    pub fn usable(&self) -> Option<f64> {
        (self.nodes > 0).then_some(self.score)
    }
}

/// The `score` of a `/score` answer: a finite number of watts from 0 to `MAX_SCORE`.
pub fn parse_score(doc: &serde_json::Value) -> Result<f64, String> {
    let score = doc
        .get("score")
        .and_then(serde_json::Value::as_f64)
        .ok_or("no number \"score\" in the answer")?;
    if score.is_finite() && (0.0..=MAX_SCORE).contains(&score) {
        Ok(score)
    } else {
        Err(format!("implausible score {score}"))
    }
}

/// One cluster score refreshed every `timing.interval` into the returned cell until `stop`.
pub fn spawn(
    url: HttpUrl,
    timing: Timing,
    client: reqwest::Client,
    stop: CancellationToken,
) -> Arc<InputCell> {
    let cell = Arc::new(InputCell::default());
    let c = cell.clone();
    tokio::spawn(async move {
        loop {
            let read = http::get_json(&client, &url, None, timing.timeout).await;
            match read.and_then(|doc| parse_score(&doc).map_err(|e| format!("{url}: {e}"))) {
                Ok(score) => c.store(score, Instant::now()),
                Err(e) => c.fail(e),
            }
            tokio::select! {
                _ = tokio::time::sleep(timing.interval) => {}
                _ = stop.cancelled() => return,
            }
        }
    });
    cell
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::power::inputs::Reading;
    use crate::power::weights::{NodeReport, RemoteScore};

    fn report(watts: Option<f64>) -> Arc<NodeReport> {
        Arc::new(NodeReport {
            watts,
            ..NodeReport::default()
        })
    }

    #[test]
    fn nodes_with_a_prediction_are_summed_once_across_costs() {
        let nodes = |a: f64| -> BTreeMap<NodeName, Arc<NodeReport>> {
            [
                (NodeName::from("a"), report(Some(a))),
                (NodeName::from("b"), report(Some(250.0))),
                (NodeName::from("c"), report(None)),
            ]
            .into_iter()
            .collect()
        };
        let weights = NodeWeights {
            by_cost: [(100, nodes(120.5)), (250, nodes(120.5))]
                .into_iter()
                .collect(),
            ..NodeWeights::default()
        };
        let score = ClusterScore::of(&weights);
        assert_eq!(
            score,
            ClusterScore {
                score: 370.5,
                nodes: 2,
                without_prediction: 1
            }
        );
        assert_eq!(score.usable(), Some(370.5));
        assert_eq!(ClusterScore::of(&NodeWeights::default()).usable(), None);
    }

    #[test]
    fn only_plausible_scores_are_taken() {
        assert_eq!(parse_score(&json!({"score": 412.5, "nodes": 3})), Ok(412.5));
        assert_eq!(parse_score(&json!({"score": 0})), Ok(0.0));
        for bad in [
            json!({"score": -1.0}),
            json!({"score": 1e12}),
            json!({"score": "412"}),
            json!({"watts": 412}),
            json!([412]),
        ] {
            assert!(parse_score(&bad).is_err(), "{bad} taken");
        }
    }

    #[test]
    fn a_reading_keeps_its_last_score_until_stale() {
        let last = RemoteScore::of(Reading::Last {
            value: 300.0,
            age: Duration::from_secs(7),
            error: "connection refused".into(),
        });
        assert_eq!(last.score, Some(300.0));
        assert!(
            last.reason.contains("7s old: connection refused"),
            "{}",
            last.reason
        );
        let gone = RemoteScore::of(Reading::Missing {
            reason: "last value 61s old (limit 60s)".into(),
        });
        assert_eq!(gone.score, None);
    }
}
