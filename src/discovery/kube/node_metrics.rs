//! The node readings the cluster serves, as WAO reads them, published on the `Board` for
//! the power inputs: CPU usage from `metrics.k8s.io` as a percentage of each Node's
//! capacity (from a store of every Node slimmed to its CPU capacity, kept by a watch: no
//! instance lists all Nodes periodically), and WAO's metrics adapter's `inlet_temp` and
//! `delta_p` from `custom.metrics.k8s.io`. An API that is not served is said once; its
//! nodes then keep the sources the config file or their NodeConfig gives.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, NodeStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::runtime::reflector::Store;
use kube::{Api, Client};
use serde::Deserialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::model::node::Quantity;
use crate::model::published::{self, Board};
use crate::model::units::{parse_cores, parse_quantity};

/// How often node metrics are read (metrics-server and WAO's collectors refresh every 15 s).
const PERIOD: Duration = Duration::from_secs(15);
/// WAO's custom metrics, by the quantity they measure.
const CUSTOM_METRICS: [Quantity; 2] = [Quantity::Inlet, Quantity::DeltaP];

/// What the poller shares with the sync loop.
#[derive(Debug, Default)]
pub struct NodeMetrics {
    /// Each Node's CPU capacity in cores.
    pub capacity: BTreeMap<String, f64>,
    /// The Board keys the custom metrics API served last time.
    pub custom: BTreeSet<String>,
}

/// Every period, until `stop`: CPU usage and, when served, WAO's custom metrics onto
/// `board`; the capacities in `nodes` and the set of served custom metrics into `into`,
/// waking `changed` when either changes.
pub async fn poll(
    client: Client,
    nodes: Store<Node>,
    board: Board,
    into: Arc<Mutex<NodeMetrics>>,
    changed: Arc<Notify>,
    stop: CancellationToken,
) {
    let gvk = GroupVersionKind::gvk("metrics.k8s.io", "v1beta1", "NodeMetrics");
    let usage: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &ApiResource::from_gvk_with_plural(&gvk, "nodes"),
    );
    // Usage is a percentage of capacity: give the Nodes' first list a moment.
    tokio::select! {
        _ = stop.cancelled() => return,
        _ = tokio::time::timeout(Duration::from_secs(10), nodes.wait_until_ready()) => {}
    }
    let mut said_usage = None;
    let mut said_custom = [None; CUSTOM_METRICS.len()];
    loop {
        {
            let now = capacities(&nodes.state());
            let mut current = lock(&into);
            if current.capacity != now {
                current.capacity = now;
                changed.notify_one();
            }
        }
        let absent =
            "metrics.k8s.io is not served (no metrics-server); node CPU comes from the config file";
        let listed = usage.list(&ListParams::default()).await;
        if let Some(items) = saying(listed, &mut said_usage, absent, "node metrics") {
            let capacity = lock(&into).capacity.clone();
            for m in &items {
                let name = m.metadata.name.as_deref().unwrap_or_default();
                let used = m.data["usage"]["cpu"].as_str().and_then(parse_cores);
                if let (Some(used), Some(cores)) = (used, capacity.get(name)) {
                    let percent = (used / cores * 100.0).clamp(0.0, 100.0);
                    board.publish(published::key(Quantity::Cpu, name), percent);
                }
            }
        }
        let mut served = BTreeSet::new();
        for (q, said) in CUSTOM_METRICS.into_iter().zip(&mut said_custom) {
            let absent = format!(
                "custom.metrics.k8s.io does not serve {} (no WAO metrics adapter); it comes from NodeConfigs",
                q.label()
            );
            if let Some(values) = saying(custom_metric(&client, q).await, said, &absent, q.label())
            {
                for (node, value) in values {
                    let key = published::key(q, &node);
                    board.publish(key.clone(), value);
                    served.insert(key);
                }
            }
        }
        {
            let mut current = lock(&into);
            if current.custom != served {
                current.custom = served;
                changed.notify_one();
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(PERIOD) => {}
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the store of every Node keeps of one: its name and CPU capacity (a Node's status
/// lists its images and more, tens of kilobytes on a busy node).
pub fn slim_to_capacity(node: &mut Node) {
    let cpu = node
        .status
        .as_mut()
        .and_then(|s| s.capacity.as_mut())
        .and_then(|c| c.remove("cpu"));
    *node = Node {
        metadata: ObjectMeta {
            name: node.metadata.name.take(),
            ..ObjectMeta::default()
        },
        spec: None,
        status: cpu.map(|cpu| NodeStatus {
            capacity: Some([("cpu".to_string(), cpu)].into()),
            ..NodeStatus::default()
        }),
    };
}

/// Each Node's CPU capacity in cores (Nodes without a valid positive one are left out).
fn capacities(nodes: &[Arc<Node>]) -> BTreeMap<String, f64> {
    nodes
        .iter()
        .filter_map(|n| {
            let cpu = n.status.as_ref()?.capacity.as_ref()?.get("cpu")?;
            let cores = parse_cores(&cpu.0).filter(|c| *c > 0.0)?;
            Some((n.metadata.name.clone()?, cores))
        })
        .collect()
}

/// `GET /apis/custom.metrics.k8s.io/v1beta2/nodes/*/<metric>`: every node's value.
async fn custom_metric(client: &Client, q: Quantity) -> Result<Vec<(String, f64)>, kube::Error> {
    let path = format!("/apis/custom.metrics.k8s.io/v1beta2/nodes/*/{}", q.label());
    let request = http::Request::get(path)
        .body(Vec::new())
        .map_err(kube::Error::HttpError)?;
    let list: MetricValueList = client.request(request).await?;
    Ok(node_values(&list, q))
}

/// The custom metrics API's answer (only what is read of it).
#[derive(Debug, Deserialize)]
struct MetricValueList {
    #[serde(default)]
    items: Vec<MetricValue>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MetricValue {
    described_object: DescribedObject,
    value: String,
}

#[derive(Debug, Deserialize)]
struct DescribedObject {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    name: String,
}

/// The Nodes' plausible values of `q` in `list` (a value outside the quantity's range is
/// garbage and left out, so the node's NodeConfig collector is used instead).
fn node_values(list: &MetricValueList, q: Quantity) -> Vec<(String, f64)> {
    let (lo, hi) = q.range();
    list.items
        .iter()
        .filter(|m| m.described_object.kind == "Node" && !m.described_object.name.is_empty())
        .filter_map(|m| {
            let v = parse_quantity(&m.value).filter(|v| (lo..=hi).contains(v))?;
            Some((m.described_object.name.clone(), v))
        })
        .collect()
}

/// What a periodic read found last time, so that each state is logged once, when it begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    Listed,
    Absent,
    Failing,
}

/// The value of a periodic read, or None: when the API is not served (`absent` is logged)
/// or the read fails (a warning about `what`), each said once per stretch.
pub fn saying<T>(
    result: Result<T, kube::Error>,
    said: &mut Option<Listing>,
    absent: &str,
    what: &str,
) -> Option<T> {
    let (state, value) = match result {
        Ok(v) => (Listing::Listed, Some(v)),
        Err(kube::Error::Api(status)) if status.is_not_found() => {
            if *said != Some(Listing::Absent) {
                tracing::info!("{absent}");
            }
            (Listing::Absent, None)
        }
        Err(e) => {
            if *said != Some(Listing::Failing) {
                tracing::warn!(error = %e, "cannot read {what}; keeping the last values");
            }
            (Listing::Failing, None)
        }
    };
    *said = Some(state);
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn wao_metrics_adapter_answers() {
        let list: MetricValueList = serde_json::from_value(json!({
            "kind": "MetricValueList", "apiVersion": "custom.metrics.k8s.io/v1beta2", "metadata": {},
            "items": [
                {"describedObject": {"kind": "Node", "name": "n1", "apiVersion": "/v1"},
                 "metric": {"name": "inlet_temp", "selector": null},
                 "timestamp": "2026-11-24T10:00:00Z", "value": "22500m"},
                {"describedObject": {"kind": "Node", "name": "n2", "apiVersion": "/v1"},
                 "metric": {"name": "inlet_temp"}, "timestamp": "2026-11-24T10:00:00Z", "value": "19"},
                {"describedObject": {"kind": "Node", "name": "n3"}, "metric": {"name": "inlet_temp"}, "value": "900"},
                {"describedObject": {"kind": "Node", "name": "n4"}, "metric": {"name": "inlet_temp"}, "value": "warm"},
                {"describedObject": {"kind": "Pod", "name": "p"}, "metric": {"name": "inlet_temp"}, "value": "20"}
            ]}))
        .unwrap();
        assert_eq!(
            node_values(&list, Quantity::Inlet),
            vec![("n1".to_string(), 22.5), ("n2".to_string(), 19.0)],
            "implausible, unparsable and non-Node values are left out"
        );
        let dp: MetricValueList = serde_json::from_value(json!({"items": [
            {"describedObject": {"kind": "Node", "name": "n1"}, "value": "-3500m"}]}))
        .unwrap();
        assert_eq!(
            node_values(&dp, Quantity::DeltaP),
            vec![("n1".to_string(), -3.5)]
        );
    }

    #[test]
    fn node_capacities_from_slimmed_nodes() {
        let node = |name: &str, cpu: &str| -> Arc<Node> {
            let mut n: Node = serde_json::from_value(json!({
                "metadata": {"name": name, "labels": {"kubernetes.io/os": "linux"}},
                "status": {"capacity": {"cpu": cpu, "memory": "64Gi"},
                    "images": [{"names": ["registry.example/app:1"], "sizeBytes": 1000}]}}))
            .unwrap();
            slim_to_capacity(&mut n);
            Arc::new(n)
        };
        let a = node("a", "16");
        assert_eq!(a.metadata.labels, None);
        let status = a.status.as_ref().unwrap();
        assert_eq!(status.images, None);
        assert_eq!(status.capacity.as_ref().map(|c| c.len()), Some(1));
        let got = capacities(&[a, node("b", "3500m"), node("c", "0"), node("d", "x")]);
        assert_eq!(got, BTreeMap::from([("a".into(), 16.0), ("b".into(), 3.5)]));
    }
}
