//! WAO's NodeConfig (`node.waok8s.github.io/v1beta1`, namespaced): per node, where its
//! inlet temperature and ΔP come from and which model predicts its power. Translated into
//! the same `NodeSpec` a `nodes:` entry gives (pure). Several NodeConfigs for one node: the
//! newest wins and a note names the others. Where WAO's metrics adapter serves a node's
//! inlet temperature or ΔP on the custom metrics API, that replaces the collector, as in
//! WAO.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;

use crate::model::node::{
    BasicAuth, Input, ModelLocation, NodeSpec, NodeWeighting, Quantity, RemoteModelSpec,
    RemoteProtocol, Source, Timing, DEFAULT_NODE_CORES,
};
use crate::model::published;
use crate::model::units::parse_duration;
use crate::model::url::HttpUrl;
use crate::model::NodeName;

pub const GROUP: &str = "node.waok8s.github.io";
pub const VERSION: &str = "v1beta1";
pub const KIND: &str = "NodeConfig";
/// WAO's Fake collectors' values.
const FAKE_INLET_CELSIUS: f64 = 15.5;
const FAKE_DELTA_P_PASCAL: f64 = 7.5;
/// WAO's default fetch interval.
const WAO_FETCH_INTERVAL: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Deserialize)]
pub struct NodeConfig {
    pub metadata: ObjectMeta,
    pub spec: NodeConfigSpec,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeConfigSpec {
    pub node_name: String,
    pub metrics_collector: MetricsCollector,
    #[serde(default)]
    pub predictor: Predictor,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricsCollector {
    pub inlet_temp: EndpointTerm,
    pub delta_p: EndpointTerm,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Predictor {
    pub power_consumption: Option<EndpointTerm>,
    pub power_consumption_endpoint_provider: Option<EndpointTerm>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointTerm {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub endpoint: String,
    pub basic_auth_secret: Option<SecretRef>,
    pub fetch_interval: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SecretRef {
    pub name: String,
}

/// The node specs of the NodeConfigs, and what could not be used.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeConfigs {
    pub nodes: BTreeMap<NodeName, NodeSpec>,
    pub notes: Vec<String>,
}

/// `configs` as node specs; `secret(namespace, name)` resolves a `basicAuthSecret`;
/// `bmc_insecure` accepts the self-signed certificates of Redfish endpoints.
pub fn translate(
    configs: &[NodeConfig],
    secret: &dyn Fn(&str, &str) -> Option<BasicAuth>,
    bmc_insecure: bool,
) -> NodeConfigs {
    let mut by_node: BTreeMap<&str, Vec<&NodeConfig>> = BTreeMap::new();
    for c in configs {
        by_node
            .entry(c.spec.node_name.as_str())
            .or_default()
            .push(c);
    }
    let mut out = NodeConfigs::default();
    for (node, mut list) in by_node {
        // Newest first (creationTimestamp), then by name for a stable choice.
        list.sort_by(|a, b| {
            let t = |c: &NodeConfig| c.metadata.creation_timestamp.as_ref().map(|t| t.0);
            t(b).cmp(&t(a)).then(id(a).cmp(&id(b)))
        });
        let chosen = list[0];
        if list.len() > 1 {
            let others: Vec<String> = list[1..].iter().map(|c| id(c)).collect();
            out.notes.push(format!(
                "node {node}: NodeConfig {} is the newest and wins over {}",
                id(chosen),
                others.join(", ")
            ));
        }
        let namespace = chosen.metadata.namespace.as_deref().unwrap_or("");
        let auth = |t: &EndpointTerm| {
            t.basic_auth_secret
                .as_ref()
                .and_then(|s| secret(namespace, &s.name))
        };
        let mut note = |n: String| out.notes.push(format!("node {node} ({}): {n}", id(chosen)));
        let spec = &chosen.spec;
        let inlet = match spec.metrics_collector.inlet_temp.kind.as_str() {
            "Fake" => Some(Source::Static(FAKE_INLET_CELSIUS)),
            "Redfish" => {
                url(&spec.metrics_collector.inlet_temp, &mut note).map(|url| Source::Redfish {
                    url,
                    auth: auth(&spec.metrics_collector.inlet_temp),
                    insecure: bmc_insecure,
                })
            }
            other => {
                note(format!(
                    "inletTemp type {other} is not supported; inlet unset"
                ));
                None
            }
        };
        let delta_p = match spec.metrics_collector.delta_p.kind.as_str() {
            "Fake" => Some(Source::Static(FAKE_DELTA_P_PASCAL)),
            "DifferentialPressureAPI" => {
                url(&spec.metrics_collector.delta_p, &mut note).map(|url| Source::Dpapi {
                    url,
                    node: node.to_string(),
                })
            }
            other => {
                note(format!("deltaP type {other} is not supported; ΔP unset"));
                None
            }
        };
        let weighting = match (
            &spec.predictor.power_consumption,
            &spec.predictor.power_consumption_endpoint_provider,
        ) {
            (Some(t), _) if t.kind == "V2InferenceProtocol" => {
                v2_model(t, auth(t), &mut note).map(NodeWeighting::Remote)
            }
            (Some(t), _) if t.kind == "Fake" => {
                note("Fake predictor (a constant): weighted neutrally".into());
                None
            }
            (Some(t), _) => {
                note(format!("predictor type {} is not supported", t.kind));
                None
            }
            // The BMC names the model; WAO gives the model itself no credentials.
            (None, Some(t)) if t.kind == "Redfish" => url(t, &mut note).map(|url| {
                let location = ModelLocation::Redfish {
                    url,
                    auth: auth(t),
                    insecure: bmc_insecure,
                };
                NodeWeighting::Remote(wao_model(location, None))
            }),
            (None, Some(t)) => {
                note(format!(
                    "powerConsumptionEndpointProvider type {} is not supported (Redfish is)",
                    t.kind
                ));
                None
            }
            (None, None) => {
                note("no predictor: weighted neutrally".into());
                None
            }
        };
        // A node without a usable model gets no spec: it is weighted neutrally, with its
        // reason in the weights view.
        let Some(weighting) = weighting else { continue };
        let input = |source: Option<Source>, term: &EndpointTerm| Input {
            source: source.unwrap_or(Source::Static(0.0)),
            timing: timing(term),
        };
        // CPU as WAO reads it: the metrics API's usage over the Node's capacity, which
        // discovery publishes; `cores` is set from the Node when it is known.
        let node_spec = NodeSpec {
            cores: DEFAULT_NODE_CORES,
            cpu: Input {
                source: Source::Published {
                    key: published::key(Quantity::Cpu, node),
                },
                timing: Timing::default(),
            },
            inlet: input(inlet, &spec.metrics_collector.inlet_temp),
            delta_p: input(delta_p, &spec.metrics_collector.delta_p),
            weighting,
        };
        out.nodes.insert(NodeName::from(node), node_spec);
    }
    out
}

fn id(c: &NodeConfig) -> String {
    format!(
        "{}/{}",
        c.metadata.namespace.as_deref().unwrap_or(""),
        c.metadata.name.as_deref().unwrap_or("")
    )
}

fn url(t: &EndpointTerm, note: &mut dyn FnMut(String)) -> Option<HttpUrl> {
    HttpUrl::parse(&t.endpoint)
        .map_err(|e| note(format!("{} endpoint: {e}", t.kind)))
        .ok()
}

/// A term's fetch interval (WAO's 15 s by default).
fn timing(t: &EndpointTerm) -> Timing {
    let interval = t
        .fetch_interval
        .as_deref()
        .and_then(|i| parse_duration(i).ok())
        .filter(|d| !d.is_zero())
        .unwrap_or(WAO_FETCH_INTERVAL);
    timing_every(interval)
}

/// Fetched every `interval`, the last value used for four intervals.
fn timing_every(interval: Duration) -> Timing {
    Timing {
        interval,
        timeout: Duration::from_secs(3).min(interval),
        stale_after: interval.saturating_mul(4),
    }
}

/// A V2 inference endpoint as WAO writes it, the whole infer URL
/// (`{base}/v2/models/{model}[/versions/{version}]/infer`), split into base, model and
/// version.
fn v2_model(
    t: &EndpointTerm,
    auth: Option<BasicAuth>,
    note: &mut dyn FnMut(String),
) -> Option<RemoteModelSpec> {
    let text = t.endpoint.trim_end_matches('/');
    let Some((base, rest)) = text.split_once("/v2/models/") else {
        note(format!(
            "V2InferenceProtocol endpoint {:?} has no /v2/models/NAME/…/infer path",
            crate::model::url::redact(text)
        ));
        return None;
    };
    let rest = rest.strip_suffix("/infer").unwrap_or(rest);
    let (model, version) = match rest.split_once("/versions/") {
        Some((m, v)) => (m, Some(v.to_string())),
        None => (rest, None),
    };
    let url = url(
        &EndpointTerm {
            endpoint: base.to_string(),
            ..t.clone()
        },
        note,
    )?;
    let location = ModelLocation::At {
        url,
        model: model.to_string(),
        version,
    };
    Some(wao_model(location, auth))
}

/// A V2 inference model at `location` with WAO's timings: 3 s per request, its last
/// answer used for a minute, answers cached for 30 minutes.
fn wao_model(location: ModelLocation, auth: Option<BasicAuth>) -> RemoteModelSpec {
    RemoteModelSpec {
        protocol: RemoteProtocol::V2Inference,
        location,
        timeout: Duration::from_secs(3),
        stale_after: Duration::from_secs(60),
        cache_for: Duration::from_secs(1800),
        auth,
    }
}

/// Where the custom metrics API serves a node's inlet temperature or ΔP (`served` holds
/// the published keys), that becomes the node's source, as WAO reads it; elsewhere the
/// NodeConfig's collector stays.
pub fn prefer_custom_metrics(nodes: &mut BTreeMap<NodeName, NodeSpec>, served: &BTreeSet<String>) {
    for (name, spec) in nodes.iter_mut() {
        for (q, input) in [
            (Quantity::Inlet, &mut spec.inlet),
            (Quantity::DeltaP, &mut spec.delta_p),
        ] {
            let key = published::key(q, name);
            if served.contains(&key) {
                *input = Input {
                    source: Source::Published { key },
                    timing: timing_every(WAO_FETCH_INTERVAL),
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(name: &str, created: &str, spec: serde_json::Value) -> NodeConfig {
        serde_json::from_value(json!({
            "metadata": {"namespace": "wao-system", "name": name, "creationTimestamp": created},
            "spec": spec,
        }))
        .unwrap()
    }

    fn no_secrets(_: &str, _: &str) -> Option<BasicAuth> {
        None
    }

    /// The (server, model, version) of a node's model at a known URL.
    fn model_at(spec: &NodeSpec) -> (String, String, Option<String>) {
        match &spec.weighting {
            NodeWeighting::Remote(RemoteModelSpec {
                location:
                    ModelLocation::At {
                        url,
                        model,
                        version,
                    },
                ..
            }) => (url.full().to_string(), model.clone(), version.clone()),
            other => panic!("{other:?}"),
        }
    }

    fn fake_collectors(node: &str, predictor: serde_json::Value) -> serde_json::Value {
        json!({"nodeName": node,
            "metricsCollector": {"inletTemp": {"type": "Fake", "endpoint": ""}, "deltaP": {"type": "Fake", "endpoint": ""}},
            "predictor": predictor})
    }

    #[test]
    fn a_redfish_endpoint_provider_names_the_model() {
        let c = config(
            "n1",
            "2026-01-01T00:00:00Z",
            fake_collectors(
                "n1",
                json!({"powerConsumptionEndpointProvider": {"type": "Redfish",
                    "endpoint": "https://10.0.0.11", "basicAuthSecret": {"name": "bmc"}}}),
            ),
        );
        let secret = |_: &str, name: &str| {
            (name == "bmc").then(|| BasicAuth {
                username: "root".into(),
                password: "calvin".into(),
            })
        };
        let out = translate(std::slice::from_ref(&c), &secret, true);
        match &out.nodes["n1"].weighting {
            NodeWeighting::Remote(m) => {
                assert_eq!(m.protocol, RemoteProtocol::V2Inference);
                assert_eq!(m.auth, None, "the model itself gets no credentials");
                match &m.location {
                    ModelLocation::Redfish {
                        url,
                        auth,
                        insecure,
                    } => {
                        assert_eq!(url.full(), "https://10.0.0.11");
                        assert_eq!(auth.as_ref().map(|a| a.password.as_str()), Some("calvin"));
                        assert!(*insecure);
                    }
                    other => panic!("{other:?}"),
                }
            }
            other => panic!("{other:?}"),
        }
        let mut other_kind = c;
        other_kind
            .spec
            .predictor
            .power_consumption_endpoint_provider =
            serde_json::from_value(json!({"type": "Fake", "endpoint": ""})).unwrap();
        let out = translate(&[other_kind], &secret, false);
        assert!(out.nodes.is_empty());
        assert!(
            out.notes
                .iter()
                .any(|n| n.contains("type Fake is not supported (Redfish is)")),
            "{:?}",
            out.notes
        );
    }

    #[test]
    fn served_custom_metrics_replace_the_collectors_node_by_node() {
        let predictor = json!({"powerConsumption": {"type": "V2InferenceProtocol",
            "endpoint": "http://m:8080/v2/models/p/infer"}});
        let configs = [
            config(
                "a",
                "2026-01-01T00:00:00Z",
                fake_collectors("a", predictor.clone()),
            ),
            config("b", "2026-01-01T00:00:00Z", fake_collectors("b", predictor)),
        ];
        let mut nodes = translate(&configs, &no_secrets, false).nodes;
        let served: BTreeSet<String> = ["inlet_temp/a", "delta_p/a", "inlet_temp/b"]
            .map(String::from)
            .into();
        prefer_custom_metrics(&mut nodes, &served);
        let published = |key: &str| Source::Published { key: key.into() };
        assert_eq!(nodes["a"].inlet.source, published("inlet_temp/a"));
        assert_eq!(nodes["a"].delta_p.source, published("delta_p/a"));
        assert_eq!(nodes["b"].inlet.source, published("inlet_temp/b"));
        assert_eq!(
            nodes["b"].delta_p.source,
            Source::Static(7.5),
            "not served for b: its collector stays"
        );
        assert_eq!(nodes["a"].inlet.timing.stale_after, Duration::from_secs(60));
    }

    #[test]
    fn wao_terms_become_sources_and_a_model() {
        let c = config(
            "worker-1",
            "2026-01-01T00:00:00Z",
            json!({
                "nodeName": "worker-1",
                "metricsCollector": {
                    "inletTemp": {"type": "Redfish", "endpoint": "https://10.0.0.11", "basicAuthSecret": {"name": "bmc"}, "fetchInterval": "10s"},
                    "deltaP": {"type": "DifferentialPressureAPI", "endpoint": "http://dpapi:5000"}
                },
                "predictor": {"powerConsumption": {"type": "V2InferenceProtocol",
                    "endpoint": "http://mlserver:8080/v2/models/power/versions/v0.1.0/infer"}}
            }),
        );
        let secret = |ns: &str, name: &str| {
            (ns == "wao-system" && name == "bmc").then(|| BasicAuth {
                username: "root".into(),
                password: "calvin".into(),
            })
        };
        let out = translate(&[c], &secret, false);
        let spec = &out.nodes["worker-1"];
        match &spec.inlet.source {
            Source::Redfish { url, auth, .. } => {
                assert_eq!(url.full(), "https://10.0.0.11");
                assert_eq!(auth.as_ref().map(|a| a.username.as_str()), Some("root"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(spec.inlet.timing.interval, Duration::from_secs(10));
        assert_eq!(
            spec.delta_p.source,
            Source::Dpapi {
                url: HttpUrl::parse("http://dpapi:5000").unwrap(),
                node: "worker-1".into()
            }
        );
        assert_eq!(
            model_at(spec),
            (
                "http://mlserver:8080".into(),
                "power".into(),
                Some("v0.1.0".into())
            )
        );
        assert!(out.notes.is_empty(), "{:?}", out.notes);
    }

    #[test]
    fn fakes_the_newest_wins_and_unusable_models_stay_neutral() {
        let fake = json!({"nodeName": "n1",
            "metricsCollector": {"inletTemp": {"type": "Fake", "endpoint": ""}, "deltaP": {"type": "Fake", "endpoint": ""}},
            "predictor": {"powerConsumption": {"type": "V2InferenceProtocol", "endpoint": "http://m:8080/v2/models/p/infer"}}});
        let old = config("old", "2025-01-01T00:00:00Z", fake.clone());
        let mut newer_spec = fake.clone();
        newer_spec["predictor"]["powerConsumption"]["endpoint"] =
            json!("http://new:8080/v2/models/q/infer");
        let newer = config("new", "2026-01-01T00:00:00Z", newer_spec);
        let neutral = config(
            "n2",
            "2026-01-01T00:00:00Z",
            json!({"nodeName": "n2",
                "metricsCollector": {"inletTemp": {"type": "Fake", "endpoint": ""}, "deltaP": {"type": "Fake", "endpoint": ""}},
                "predictor": {"powerConsumption": {"type": "Fake", "endpoint": ""}}}),
        );
        let out = translate(&[old, newer, neutral], &no_secrets, false);
        let n1 = &out.nodes["n1"];
        assert_eq!(n1.inlet.source, Source::Static(15.5));
        assert_eq!(n1.delta_p.source, Source::Static(7.5));
        assert_eq!(model_at(n1), ("http://new:8080".into(), "q".into(), None));
        assert!(
            !out.nodes.contains_key("n2"),
            "a Fake predictor is weighted neutrally"
        );
        assert!(
            out.notes
                .iter()
                .any(|n| n.contains("wao-system/new is the newest and wins over wao-system/old")),
            "{:?}",
            out.notes
        );
        assert!(
            out.notes.iter().any(|n| n.contains("Fake predictor")),
            "{:?}",
            out.notes
        );
    }

    #[test]
    fn a_bad_endpoint_is_a_note_with_its_credentials_hidden() {
        let c = config(
            "n1",
            "2026-01-01T00:00:00Z",
            json!({"nodeName": "n1",
                "metricsCollector": {"inletTemp": {"type": "Fake", "endpoint": ""}, "deltaP": {"type": "Fake", "endpoint": ""}},
                "predictor": {"powerConsumption": {"type": "V2InferenceProtocol", "endpoint": "http://u:secret@m:8080/predict"}}}),
        );
        let out = translate(&[c], &no_secrets, false);
        assert!(out.nodes.is_empty());
        assert!(
            out.notes.iter().any(|n| n.contains("no /v2/models/")),
            "{:?}",
            out.notes
        );
        assert!(
            out.notes.iter().all(|n| !n.contains("secret")),
            "{:?}",
            out.notes
        );
    }
}
