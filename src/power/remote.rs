//! Remote power models: the V2 inference protocol (KServe, Triton, MLServer), called exactly
//! as WAO calls it, and TF Serving's REST predict. Optional basic auth, a timeout, and a
//! cache of answers keyed by the rounded inputs, so a busy predictor is not hammered.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use reqwest::Client;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::{http, provider};
use crate::model::node::{ModelLocation, RemoteModelSpec, RemoteProtocol};
use crate::model::url::HttpUrl;

const CACHE_MAX: usize = 4096;
/// Predictions outside (0, this] watts are garbage.
pub const MAX_PLAUSIBLE_WATTS: f64 = 100_000.0;

/// A remote power model (V2 inference or TF Serving) with its answer cache.
pub struct RemotePredictor {
    config: RemoteModelSpec,
    client: Client,
    /// Asks a BMC where the model is (it may need to accept a self-signed certificate).
    bmc_client: Client,
    /// The URL predictions are posted to, once known, and when to ask the provider again.
    endpoint: Mutex<Endpoint>,
    /// How soon a provider is asked again after a failure (`PROVIDER_RETRY`).
    retry: Duration,
    cache: Mutex<HashMap<[i64; 3], (f64, Instant)>>,
}

/// Where predictions go, and for a provided model, when the provider was last asked and
/// how long its answer holds.
struct Endpoint {
    url: Option<HttpUrl>,
    asked: Option<Instant>,
    holds: Duration,
}

/// A provider's answer is trusted this long (a BMC's model changes with a firmware or
/// model update), and after a failed lookup it is asked again this soon.
const PROVIDER_REFRESH: Duration = Duration::from_secs(600);
const PROVIDER_RETRY: Duration = Duration::from_secs(30);

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

/// The URL predictions go to for a model at `url`.
fn infer_url(
    protocol: RemoteProtocol,
    url: &HttpUrl,
    model: &str,
    version: Option<&str>,
) -> HttpUrl {
    let path = match protocol {
        RemoteProtocol::V2Inference => match version {
            Some(v) => format!("/v2/models/{model}/versions/{v}/infer"),
            None => format!("/v2/models/{model}/infer"),
        },
        RemoteProtocol::TfServing => format!("/v1/models/{model}:predict"),
    };
    url.join(&path)
}

impl RemotePredictor {
    pub fn new(config: RemoteModelSpec, client: Client, bmc_client: Client) -> RemotePredictor {
        let url = match &config.location {
            ModelLocation::At {
                url,
                model,
                version,
            } => Some(infer_url(config.protocol, url, model, version.as_deref())),
            ModelLocation::Redfish { .. } => None,
        };
        let endpoint = Endpoint {
            url,
            asked: None,
            holds: PROVIDER_REFRESH,
        };
        RemotePredictor {
            config,
            client,
            bmc_client,
            endpoint: Mutex::new(endpoint),
            retry: PROVIDER_RETRY,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Where predictions go: the known URL, or the one the provider last named (asked
    /// again when its answer no longer holds; if it cannot answer, its last URL is kept).
    async fn endpoint(&self) -> Result<HttpUrl, String> {
        let (known, due) = {
            let e = self.endpoint.lock().unwrap_or_else(|p| p.into_inner());
            let due = e.asked.is_none_or(|at| at.elapsed() >= e.holds);
            (e.url.clone(), due)
        };
        let ModelLocation::Redfish { url, auth, .. } = &self.config.location else {
            return known.ok_or_else(|| "no model URL".to_string());
        };
        if !due {
            return known.ok_or_else(|| format!("model provider {url}: no answer yet"));
        }
        let found =
            provider::locate(&self.bmc_client, url, auth.as_ref(), self.config.timeout).await;
        let mut e = self.endpoint.lock().unwrap_or_else(|p| p.into_inner());
        e.asked = Some(Instant::now());
        match found {
            Ok(m) => {
                let at = infer_url(self.config.protocol, &m.url, &m.model, Some(&m.version));
                if e.url.as_ref() != Some(&at) {
                    tracing::info!(provider = %url, model = %at, "the model provider names a model");
                    // Answers of the model named before are not this one's.
                    self.cache.lock().unwrap_or_else(|p| p.into_inner()).clear();
                }
                e.url = Some(at.clone());
                e.holds = PROVIDER_REFRESH;
                Ok(at)
            }
            Err(error) => {
                e.holds = self.retry;
                e.url
                    .clone()
                    .ok_or_else(|| format!("model provider {url}: {error}"))
            }
        }
    }

    /// After a failed prediction, a provider is asked again soon: the BMC may name a new model.
    fn ask_provider_again(&self) {
        let mut e = self.endpoint.lock().unwrap_or_else(|p| p.into_inner());
        e.holds = e.holds.min(self.retry);
    }

    /// The protocol, and where the model was found if a provider named it.
    pub fn name(&self) -> String {
        let protocol = match self.config.protocol {
            RemoteProtocol::V2Inference => "v2-inference",
            RemoteProtocol::TfServing => "tfserving",
        };
        match &self.config.location {
            ModelLocation::At { .. } => protocol.to_string(),
            ModelLocation::Redfish { url, .. } => format!("{protocol} named by Redfish at {url}"),
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
        let endpoint = self.endpoint().await?;
        let watts = self.ask(&endpoint, cpu, inlet, delta_p).await;
        if watts.is_err() {
            self.ask_provider_again();
        }
        let watts = watts?;
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(key, (watts, now));
        Ok(watts)
    }

    /// One prediction from the model at `endpoint`.
    async fn ask(
        &self,
        endpoint: &HttpUrl,
        cpu: f64,
        inlet: f64,
        delta_p: f64,
    ) -> Result<f64, String> {
        let mut req = self
            .client
            .post(endpoint.full())
            .json(&match self.config.protocol {
                RemoteProtocol::V2Inference => request_body(cpu, inlet, delta_p),
                RemoteProtocol::TfServing => tfserving_body(cpu, inlet, delta_p),
            });
        if let Some(a) = &self.config.auth {
            req = req.basic_auth(&a.username, Some(&a.password));
        }
        let body = http::exchange(req, "POST", endpoint, self.config.timeout).await?;
        let doc: Value =
            serde_json::from_slice(&body).map_err(|e| format!("POST {endpoint}: not JSON: {e}"))?;
        match self.config.protocol {
            RemoteProtocol::V2Inference => parse_answer(&doc),
            RemoteProtocol::TfServing => parse_tfserving(&doc),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A V2 model server answering `watts`, or HTTP 500 once `down` is set.
    async fn model_server(watts: f64, down: Arc<std::sync::atomic::AtomicBool>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route(
            "/v2/models/power/versions/v1/infer",
            axum::routing::post(move || async move {
                if down.load(std::sync::atomic::Ordering::Relaxed) {
                    Err(axum::http::StatusCode::INTERNAL_SERVER_ERROR)
                } else {
                    Ok(axum::Json(json!({"outputs": [{"data": [watts]}]})))
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    /// A BMC naming the model at the URL in `names` (it answers 503 while that is empty).
    async fn bmc(names: Arc<Mutex<String>>) -> HttpUrl {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .route(
                "/redfish/v1/Systems",
                axum::routing::get(|| async {
                    axum::Json(json!({"Members": [{"@odata.id": "/redfish/v1/Systems/1"}]}))
                }),
            )
            .route(
                "/redfish/v1/Systems/1/MachineLearningModel",
                axum::routing::get(move || async move {
                    let url = names.lock().unwrap().clone();
                    if url.is_empty() {
                        return Err(axum::http::StatusCode::SERVICE_UNAVAILABLE);
                    }
                    Ok(axum::Json(
                        json!({"PowerConsumptionModel": {"Name": "power",
                        "Url": url, "Type": "V2InferenceProtocol", "Version": "v1"}}),
                    ))
                }),
            );
        tokio::spawn(async move { axum::serve(listener, app).await });
        HttpUrl::parse(&format!("http://{addr}")).unwrap()
    }

    /// A V2 model that the BMC at `url` names.
    fn provided(url: HttpUrl) -> RemotePredictor {
        let spec = RemoteModelSpec {
            protocol: RemoteProtocol::V2Inference,
            location: ModelLocation::Redfish {
                url,
                auth: None,
                insecure: false,
            },
            timeout: Duration::from_secs(5),
            stale_after: Duration::from_secs(60),
            cache_for: Duration::from_secs(1800),
            auth: None,
        };
        RemotePredictor::new(spec, Client::new(), Client::new())
    }

    /// The BMC names model A, then B: predictions follow once A fails; while the BMC is
    /// down, the model it named last keeps answering.
    #[tokio::test]
    async fn a_provided_model_follows_the_bmc() {
        let a_down = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let a = model_server(100.0, a_down.clone()).await;
        let b = model_server(200.0, Arc::default()).await;
        let names = Arc::new(Mutex::new(a));
        let mut p = provided(bmc(names.clone()).await);
        p.retry = Duration::ZERO;
        assert_eq!(p.predict(10.0, 20.0, 0.0).await, Ok(100.0));
        assert!(p.name().contains("named by Redfish"), "{}", p.name());
        *names.lock().unwrap() = b;
        a_down.store(true, std::sync::atomic::Ordering::Relaxed);
        let failed = p.predict(11.0, 20.0, 0.0).await;
        assert!(failed.is_err_and(|e| e.contains("HTTP 500")));
        assert_eq!(
            p.predict(11.0, 20.0, 0.0).await,
            Ok(200.0),
            "asked again: B"
        );
        names.lock().unwrap().clear();
        p.endpoint.lock().unwrap().holds = Duration::ZERO;
        assert_eq!(
            p.predict(12.0, 20.0, 0.0).await,
            Ok(200.0),
            "the BMC is down: B, which it named last"
        );
    }

    #[tokio::test]
    async fn a_provider_that_never_answered_is_an_error_naming_it() {
        let names = Arc::new(Mutex::new(String::new()));
        let url = bmc(names).await;
        let p = provided(url.clone());
        let e = p.predict(10.0, 20.0, 0.0).await.unwrap_err();
        assert!(e.starts_with(&format!("model provider {url}")), "{e}");
        assert!(e.contains("HTTP 503"), "{e}");
    }

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
