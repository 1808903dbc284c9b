//! Remote power models: the V2 inference protocol (KServe, Triton, MLServer), called exactly
//! as WAO calls it, and TF Serving's REST predict. Optional basic auth, a timeout, and a
//! cache of answers keyed by the rounded inputs, so a busy predictor is not hammered.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use reqwest::Client;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::http;
use crate::model::node::{RemoteModelSpec, RemoteProtocol};
use crate::model::url::HttpUrl;

const CACHE_MAX: usize = 4096;
/// Predictions outside (0, this] watts are garbage.
pub const MAX_PLAUSIBLE_WATTS: f64 = 100_000.0;

/// A remote power model (V2 inference or TF Serving) with its answer cache.
pub struct RemotePredictor {
    config: RemoteModelSpec,
    endpoint: HttpUrl,
    client: Client,
    cache: Mutex<HashMap<[i64; 3], (f64, Instant)>>,
}

/// Inputs rounded to 0.01 of their unit, so near-identical readings share an answer.
fn cache_key(cpu: f64, inlet: f64, delta_p: f64) -> [i64; 3] {
    [cpu, inlet, delta_p].map(|v| (v * 100.0).round() as i64)
}

/// The request body WAO sends: one row of [cpu %, inlet °C, ΔP Pa].
pub fn request_body(cpu: f64, inlet: f64, delta_p: f64) -> Value {
    json!({"inputs": [{"name": "predict-prob", "shape": [1, 3], "datatype": "FP32", "data": [[cpu, inlet, delta_p]]}]})
}

/// TF Serving's REST predict body: `{"inputs": [[cpu, inlet, ΔP]]}`.
pub fn tfserving_body(cpu: f64, inlet: f64, delta_p: f64) -> Value {
    json!({"inputs": [[cpu, inlet, delta_p]]})
}

/// Watts from a TF Serving answer: `{"outputs": [[150.6]]}`.
pub fn parse_tfserving(doc: &Value) -> Result<f64, String> {
    let first = doc
        .get("outputs")
        .and_then(|o| o.get(0))
        .ok_or("no outputs[0] in the answer")?;
    plausible(first)
}

/// Watts from a V2 answer: `outputs[0].data[0]` (a number, or a one-element row).
pub fn parse_answer(doc: &Value) -> Result<f64, String> {
    let first = doc
        .get("outputs")
        .and_then(|o| o.get(0))
        .and_then(|o| o.get("data"))
        .and_then(|d| d.get(0))
        .ok_or("no outputs[0].data[0] in the answer")?;
    plausible(first)
}

/// A number (or a one-element row) within (0, MAX_PLAUSIBLE_WATTS].
fn plausible(first: &Value) -> Result<f64, String> {
    let watts = first
        .as_f64()
        .or_else(|| first.get(0).and_then(Value::as_f64))
        .ok_or("outputs[0].data[0] is not a number")?;
    if watts.is_finite() && watts > 0.0 && watts <= MAX_PLAUSIBLE_WATTS {
        Ok(watts)
    } else {
        Err(format!("implausible prediction {watts} W"))
    }
}

impl RemotePredictor {
    pub fn new(config: RemoteModelSpec, client: Client) -> RemotePredictor {
        let path = match config.protocol {
            RemoteProtocol::V2Inference => match &config.version {
                Some(v) => format!("/v2/models/{}/versions/{v}/infer", config.model),
                None => format!("/v2/models/{}/infer", config.model),
            },
            RemoteProtocol::TfServing => format!("/v1/models/{}:predict", config.model),
        };
        let endpoint = config.url.join(&path);
        RemotePredictor {
            config,
            endpoint,
            client,
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub fn protocol_name(&self) -> &'static str {
        match self.config.protocol {
            RemoteProtocol::V2Inference => "v2-inference",
            RemoteProtocol::TfServing => "tfserving",
        }
    }

    pub fn stale_after(&self) -> Duration {
        self.config.stale_after
    }

    pub async fn predict(&self, cpu: f64, inlet: f64, delta_p: f64) -> Result<f64, String> {
        let key = cache_key(cpu, inlet, delta_p);
        let now = Instant::now();
        if let Some((w, at)) = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            if now.saturating_duration_since(*at) < self.config.cache_for {
                return Ok(*w);
            }
        }
        let mut req = self
            .client
            .post(self.endpoint.full())
            .json(&match self.config.protocol {
                RemoteProtocol::V2Inference => request_body(cpu, inlet, delta_p),
                RemoteProtocol::TfServing => tfserving_body(cpu, inlet, delta_p),
            });
        if let Some(a) = &self.config.auth {
            req = req.basic_auth(&a.username, Some(&a.password));
        }
        let body = http::exchange(req, "POST", &self.endpoint, self.config.timeout).await?;
        let doc: Value = serde_json::from_slice(&body)
            .map_err(|e| format!("POST {}: not JSON: {e}", self.endpoint))?;
        let watts = match self.config.protocol {
            RemoteProtocol::V2Inference => parse_answer(&doc)?,
            RemoteProtocol::TfServing => parse_tfserving(&doc)?,
        };
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(key, (watts, now));
        Ok(watts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_is_wao_format() {
        let b = request_body(12.5, 22.0, 5.0);
        assert_eq!(b["inputs"][0]["name"], "predict-prob");
        assert_eq!(b["inputs"][0]["shape"], json!([1, 3]));
        assert_eq!(b["inputs"][0]["datatype"], "FP32");
        assert_eq!(b["inputs"][0]["data"], json!([[12.5, 22.0, 5.0]]));
    }

    #[test]
    fn answers_and_garbage() {
        let ok = json!({"model_name": "m", "outputs": [{"name": "predict", "shape": [1, 1], "datatype": "FP64", "data": [94.76]}]});
        assert_eq!(parse_answer(&ok), Ok(94.76));
        assert_eq!(
            parse_answer(&json!({"outputs": [{"data": [[150.6]]}]})),
            Ok(150.6)
        );
        for bad in [
            json!({"outputs": []}),
            json!({"error": "boom"}),
            json!({"outputs": [{"data": ["NaN"]}]}),
            json!({"outputs": [{"data": [-3.0]}]}),
            json!({"outputs": [{"data": [1e12]}]}),
            json!({"outputs": [{"data": [0.0]}]}),
        ] {
            assert!(parse_answer(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tfserving_format() {
        assert_eq!(
            tfserving_body(10.0, 22.0, 5.0),
            json!({"inputs": [[10.0, 22.0, 5.0]]})
        );
        assert_eq!(parse_tfserving(&json!({"outputs": [[150.6]]})), Ok(150.6));
        assert!(parse_tfserving(&json!({"outputs": [["x"]]})).is_err());
        assert!(parse_tfserving(&json!({"error": "no model"})).is_err());
    }

    #[test]
    fn cache_key_rounds() {
        assert_eq!(cache_key(10.001, 22.0, 5.0), cache_key(10.004, 22.0, 5.0));
        assert_ne!(cache_key(10.0, 22.0, 5.0), cache_key(10.1, 22.0, 5.0));
    }
}
