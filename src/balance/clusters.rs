//! Splitting a service across clusters by WAO's multi-cluster rule: each cluster's weight
//! is the sum of every cluster's score minus its own (`weight_c = Σs − s_c`), so the one
//! that draws the least power gets the most. This cluster's group keeps its per-node split
//! inside its share; each other cluster is one backend, its frontend address. Pure.

use std::collections::BTreeMap;

use super::plan::{shares, PlannedBackend};
use crate::model::url::HttpUrl;
use crate::model::{Backend, RemoteCluster};
use crate::power::weights::RemoteScore;

/// WAO's weights for clusters with these `scores`. A cluster without a score counts at the
/// mean of the known ones (neither favoured nor shunned, as a node without a prediction);
/// with none known every cluster weighs the same.
pub fn weights(scores: &[Option<f64>]) -> Vec<f64> {
    let known: Vec<f64> = scores
        .iter()
        .flatten()
        .copied()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .collect();
    if known.is_empty() {
        return vec![1.0; scores.len()];
    }
    let mean = known.iter().sum::<f64>() / known.len() as f64;
    let filled: Vec<f64> = scores
        .iter()
        .map(|s| s.filter(|s| s.is_finite() && *s >= 0.0).unwrap_or(mean))
        .collect();
    let total: f64 = filled.iter().sum();
    filled.iter().map(|s| total - s).collect()
}

/// `local` (this cluster's planned backends, shares summing to 1) and the `clusters`
/// as one list whose shares sum to 1: each group's share by `weights`, the local group's
/// spread over its backends as planned.
pub fn split(
    local: Vec<PlannedBackend>,
    local_score: Option<f64>,
    clusters: &[RemoteCluster],
    scores: &BTreeMap<HttpUrl, RemoteScore>,
) -> Vec<PlannedBackend> {
    let has_local = !local.is_empty();
    let remote: Vec<Option<&RemoteScore>> =
        clusters.iter().map(|c| scores.get(&c.score_url)).collect();
    let group_scores: Vec<Option<f64>> = has_local
        .then_some(local_score)
        .into_iter()
        .chain(remote.iter().map(|r| r.and_then(|r| r.score)))
        .collect();
    let group_weights = weights(&group_scores);
    let group_shares = shares(&group_weights);
    let (local_share, remote_shares) = if has_local {
        (group_shares[0], &group_shares[1..])
    } else {
        (0.0, &group_shares[..])
    };
    let remote_weights = &group_weights[usize::from(has_local)..];
    let mut out: Vec<PlannedBackend> = local
        .into_iter()
        .map(|mut b| {
            b.share *= local_share;
            b
        })
        .collect();
    for (((c, read), share), weight) in clusters
        .iter()
        .zip(remote)
        .zip(remote_shares)
        .zip(remote_weights)
    {
        let score = match read {
            Some(RemoteScore {
                score: Some(s),
                reason,
            }) => format!("score {s:.1} W ({reason})"),
            Some(RemoteScore {
                score: None,
                reason,
            }) => format!("no score ({reason}): mean of the others"),
            None => "no score yet: mean of the others".into(),
        };
        out.push(PlannedBackend {
            backend: Backend {
                address: c.address,
                node: c.node(),
                pod: None,
            },
            weight: *weight,
            share: *share,
            reason: format!("cluster {}: {score}; weight Σs − s = {weight:.1}", c.name).into(),
            report: None,
            health: None,
            selected_by: format!("cluster {}", c.name).into(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_that_draws_less_gets_more() {
        // Two clusters: each gets the other's score.
        assert_eq!(weights(&[Some(300.0), Some(100.0)]), vec![100.0, 300.0]);
        // Three: Σs = 600.
        assert_eq!(
            weights(&[Some(100.0), Some(200.0), Some(300.0)]),
            vec![500.0, 400.0, 300.0]
        );
    }

    #[test]
    fn a_cluster_without_a_score_counts_at_the_mean() {
        // Known 100 and 300: the unknown counts as 200; Σs = 600.
        assert_eq!(
            weights(&[Some(100.0), None, Some(300.0)]),
            vec![500.0, 400.0, 300.0]
        );
        assert_eq!(weights(&[None, None]), vec![1.0, 1.0]);
        assert_eq!(weights(&[Some(f64::NAN), Some(-5.0)]), vec![1.0, 1.0]);
    }

    #[test]
    fn one_cluster_alone_takes_everything() {
        // Σs − s = 0: shares() makes an all-zero list equal, so it gets all.
        assert_eq!(shares(&weights(&[Some(250.0)])), vec![1.0]);
        assert_eq!(shares(&weights(&[Some(0.0), Some(0.0)])), vec![0.5, 0.5]);
    }

    fn local(node: &str, share: f64) -> PlannedBackend {
        PlannedBackend {
            backend: Backend {
                address: "10.0.0.1:80".parse().unwrap(),
                node: node.into(),
                pod: None,
            },
            weight: 1.0,
            share,
            reason: "planned".into(),
            report: None,
            health: None,
            selected_by: "service web".into(),
        }
    }

    fn cluster(name: &str, url: &str) -> RemoteCluster {
        RemoteCluster {
            name: name.into(),
            score_url: HttpUrl::parse(url).unwrap(),
            address: "10.9.0.1:80".parse().unwrap(),
            timing: Default::default(),
        }
    }

    #[test]
    fn the_local_split_is_kept_inside_its_share() {
        let clusters = [cluster("east", "http://east/score")];
        let scores = [(
            clusters[0].score_url.clone(),
            RemoteScore {
                score: Some(100.0),
                reason: "score read".into(),
            },
        )]
        .into_iter()
        .collect();
        let out = split(
            vec![local("a", 0.75), local("b", 0.25)],
            Some(300.0),
            &clusters,
            &scores,
        );
        let got: Vec<(String, f64)> = out
            .iter()
            .map(|b| (b.backend.node.to_string(), b.share))
            .collect();
        // Local 300 W, east 100 W: local gets 100/400, east 300/400.
        assert_eq!(
            got,
            vec![
                ("a".into(), 0.1875),
                ("b".into(), 0.0625),
                ("cluster/east".into(), 0.75)
            ]
        );
        assert_eq!(&*out[2].selected_by, "cluster east");
        assert!(out[2].reason.contains("score 100.0 W"), "{}", out[2].reason);
    }

    #[test]
    fn without_local_backends_the_clusters_share_it_all() {
        let clusters = [
            cluster("east", "http://east/score"),
            cluster("west", "http://west/score"),
        ];
        let out = split(Vec::new(), Some(500.0), &clusters, &BTreeMap::new());
        let got: Vec<f64> = out.iter().map(|b| b.share).collect();
        assert_eq!(got, vec![0.5, 0.5], "no scores: equal");
        assert!(out[0].reason.contains("no score yet"), "{}", out[0].reason);
    }
}
