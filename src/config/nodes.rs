//! The `nodes:` section: each node's power inputs (CPU %, inlet °C, ΔP Pa, each from a
//! source with its own refresh interval, timeout and staleness limit) and its power model.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::Validator;
use crate::model::NodeName;
use crate::power::predict::CurveProfile;

/// CPU capacity assumed for a node whose `cores` is not given.
pub const DEFAULT_NODE_CORES: f64 = 16.0;

/// One node's power inputs and model.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeConfig {
    /// CPU capacity in cores; turns a per-connection cost in millicores into percent.
    pub cores: f64,
    pub cpu: Input,
    pub inlet: Input,
    pub delta_p: Input,
    pub weighting: NodeWeighting,
}

/// Where one input comes from and how often.
#[derive(Debug, Clone, PartialEq)]
pub struct Input {
    pub source: Source,
    pub timing: Timing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub interval: Duration,
    pub timeout: Duration,
    /// The last good value is used this long; after that the input counts as missing.
    pub stale_after: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(3),
            stale_after: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    Static(f64),
    /// A Prometheus node_exporter: CPU utilisation from `node_cpu_seconds_total` rates.
    NodeExporter {
        url: String,
    },
    /// A BMC's Redfish API: inlet temperature, vendor path detected automatically.
    /// `insecure` accepts the self-signed certificates BMCs usually have.
    Redfish {
        url: String,
        auth: Option<BasicAuth>,
        insecure: bool,
    },
    /// An ipmi_exporter: `ipmi_temperature_celsius{name="Ambient"}`.
    IpmiExporter {
        url: String,
    },
    /// WAO's DifferentialPressureAPI: `GET {url}/api/sensor/by_nodename/{node}`.
    Dpapi {
        url: String,
        node: String,
    },
}

#[derive(Clone, PartialEq, Eq)]
pub struct BasicAuth {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BasicAuth({}, ***)", self.username)
    }
}

/// How a node's weight is decided.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeWeighting {
    /// The embedded curve model with this profile.
    Curve(Arc<CurveProfile>),
    /// A remote model: V2 inference protocol (KServe/Triton/MLServer) or TF Serving REST.
    Remote(RemoteModel),
    /// Fixed by the operator (`weight:`), e.g. 0 to drain a node for maintenance.
    Fixed(f64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteProtocol {
    V2Inference,
    TfServing,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RemoteModel {
    pub protocol: RemoteProtocol,
    pub url: String,
    pub model: String,
    pub version: Option<String>,
    pub timeout: Duration,
    /// The last good prediction is used this long after the model stops answering.
    pub stale_after: Duration,
    /// Answers are reused this long for the same (rounded) inputs; WAO uses 30 minutes.
    pub cache_for: Duration,
    pub auth: Option<BasicAuth>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawNode {
    cores: Option<f64>,
    cpu: Option<RawInput>,
    inlet_temp: Option<RawInput>,
    delta_p: Option<RawInput>,
    model: Option<RawModel>,
    weight: Option<f64>,
}

/// Every key any source takes; which ones a source needs is checked in validation, so the
/// error can say `nodes.a.cpu.url: required for source node-exporter`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawInput {
    source: String,
    percent: Option<f64>,
    celsius: Option<f64>,
    pascal: Option<f64>,
    url: Option<String>,
    node: Option<String>,
    username: Option<String>,
    password: Option<String>,
    insecure_skip_verify: Option<bool>,
    interval: Option<String>,
    timeout: Option<String>,
    stale_after: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawModel {
    #[serde(rename = "type")]
    kind: String,
    profile: Option<String>,
    url: Option<String>,
    model: Option<String>,
    version: Option<String>,
    username: Option<String>,
    password: Option<String>,
    timeout: Option<String>,
    stale_after: Option<String>,
    cache_for: Option<String>,
}

/// Which quantity an input measures: its static key, its range, and its sources.
struct Quantity {
    key: &'static str,
    static_key: &'static str,
    range: (f64, f64),
    unit: &'static str,
    sources: &'static [&'static str],
    /// The value assumed when the input is not configured at all.
    unset: f64,
}

const CPU: Quantity = Quantity {
    key: "cpu",
    static_key: "percent",
    range: (0.0, 100.0),
    unit: "%",
    sources: &["static", "node-exporter"],
    unset: 0.0,
};
const INLET: Quantity = Quantity {
    key: "inletTemp",
    static_key: "celsius",
    range: (-40.0, 80.0),
    unit: "°C",
    sources: &["static", "redfish", "ipmi-exporter"],
    unset: crate::power::predict::NEUTRAL_INLET_CELSIUS,
};
const DELTA_P: Quantity = Quantity {
    key: "deltaP",
    static_key: "pascal",
    range: (-1000.0, 1000.0),
    unit: "Pa",
    sources: &["static", "dpapi"],
    unset: 0.0,
};

impl Validator {
    pub(super) fn nodes(
        &mut self,
        raw: &BTreeMap<String, RawNode>,
    ) -> BTreeMap<NodeName, NodeConfig> {
        let mut out = BTreeMap::new();
        for (name, n) in raw {
            let at = format!("nodes.{name}");
            let cpu = self.input(&at, name, &CPU, n.cpu.as_ref());
            let inlet = self.input(&at, name, &INLET, n.inlet_temp.as_ref());
            let delta_p = self.input(&at, name, &DELTA_P, n.delta_p.as_ref());
            let weighting = match (&n.model, n.weight) {
                (Some(_), Some(w)) => {
                    self.err(
                        format!("{at}.weight"),
                        format!("{w}: give either weight or model, not both"),
                    );
                    None
                }
                (None, Some(w)) => Some(NodeWeighting::Fixed(self.number_in(
                    &format!("{at}.weight"),
                    w,
                    0.0,
                    1e6,
                    "",
                ))),
                (Some(m), None) => self.model(&format!("{at}.model"), m),
                (None, None) => {
                    self.err(
                        format!("{at}.model"),
                        "missing: give a power model or a fixed weight",
                    );
                    None
                }
            };
            let cores = match n.cores {
                Some(c) => self.number_in(&format!("{at}.cores"), c, 0.1, 4096.0, "cores"),
                None => DEFAULT_NODE_CORES,
            };
            if let (Some(cpu), Some(inlet), Some(delta_p), Some(weighting)) =
                (cpu, inlet, delta_p, weighting)
            {
                out.insert(
                    Arc::from(name.as_str()),
                    NodeConfig {
                        cores,
                        cpu,
                        inlet,
                        delta_p,
                        weighting,
                    },
                );
            }
        }
        out
    }

    fn timing(
        &mut self,
        at: &str,
        interval: Option<&str>,
        timeout: Option<&str>,
        stale: Option<&str>,
    ) -> Timing {
        let d = Timing::default();
        let t = Timing {
            interval: self.duration(&format!("{at}.interval"), interval, d.interval),
            timeout: self.duration(&format!("{at}.timeout"), timeout, d.timeout),
            stale_after: self.duration(&format!("{at}.staleAfter"), stale, d.stale_after),
        };
        if t.stale_after < t.interval {
            self.err(format!("{at}.staleAfter"), "must be at least the interval");
        }
        t
    }

    fn required<'a>(
        &mut self,
        at: &str,
        key: &str,
        value: Option<&'a String>,
        source: &str,
    ) -> Option<&'a String> {
        if value.is_none() {
            self.err(
                format!("{at}.{key}"),
                format!("required for source {source}"),
            );
        }
        value
    }

    fn url(&mut self, at: &str, value: Option<&String>, what: &str) -> Option<String> {
        let url = self.required(at, "url", value, what)?;
        if url.starts_with("http://") || url.starts_with("https://") {
            Some(url.trim_end_matches('/').to_string())
        } else {
            self.err(
                format!("{at}.url"),
                format!("{url:?} is not an http:// or https:// URL"),
            );
            None
        }
    }

    fn auth(
        &mut self,
        at: &str,
        username: Option<&String>,
        password: Option<&String>,
    ) -> Option<BasicAuth> {
        match (username, password) {
            (Some(u), Some(p)) => Some(BasicAuth {
                username: u.clone(),
                password: p.clone(),
            }),
            (None, None) => None,
            (Some(_), None) => {
                self.err(format!("{at}.password"), "required with username");
                None
            }
            (None, Some(_)) => {
                self.err(format!("{at}.username"), "required with password");
                None
            }
        }
    }

    fn input(
        &mut self,
        node_at: &str,
        node: &str,
        q: &Quantity,
        raw: Option<&RawInput>,
    ) -> Option<Input> {
        let at = format!("{node_at}.{}", q.key);
        let Some(r) = raw else {
            return Some(Input {
                source: Source::Static(q.unset),
                timing: Timing::default(),
            });
        };
        if !q.sources.contains(&r.source.as_str()) {
            self.err(
                format!("{at}.source"),
                format!(
                    "unknown source {:?}; known: {}",
                    r.source,
                    q.sources.join(", ")
                ),
            );
            return None;
        }
        // Keys that belong to other quantities or sources are mistakes worth naming.
        let statics = [
            ("percent", r.percent),
            ("celsius", r.celsius),
            ("pascal", r.pascal),
        ];
        for (key, value) in statics {
            if value.is_some() && (key != q.static_key || r.source != "static") {
                self.err(
                    format!("{at}.{key}"),
                    format!("not used by source {}", r.source),
                );
            }
        }
        if r.insecure_skip_verify.is_some() && r.source != "redfish" {
            self.err(
                format!("{at}.insecureSkipVerify"),
                format!("not used by source {}", r.source),
            );
        }
        let timing = self.timing(
            &at,
            r.interval.as_deref(),
            r.timeout.as_deref(),
            r.stale_after.as_deref(),
        );
        let source = match r.source.as_str() {
            "static" => {
                let value = match q.static_key {
                    "percent" => r.percent,
                    "celsius" => r.celsius,
                    _ => r.pascal,
                };
                let Some(v) = value else {
                    self.err(
                        format!("{at}.{}", q.static_key),
                        "required for source static",
                    );
                    return None;
                };
                Source::Static(self.number_in(
                    &format!("{at}.{}", q.static_key),
                    v,
                    q.range.0,
                    q.range.1,
                    q.unit,
                ))
            }
            "node-exporter" => Source::NodeExporter {
                url: self.url(&at, r.url.as_ref(), "node-exporter")?,
            },
            "ipmi-exporter" => Source::IpmiExporter {
                url: self.url(&at, r.url.as_ref(), "ipmi-exporter")?,
            },
            "redfish" => Source::Redfish {
                url: self.url(&at, r.url.as_ref(), "redfish")?,
                auth: self.auth(&at, r.username.as_ref(), r.password.as_ref()),
                insecure: r.insecure_skip_verify.unwrap_or(false),
            },
            "dpapi" => Source::Dpapi {
                url: self.url(&at, r.url.as_ref(), "dpapi")?,
                node: r.node.clone().unwrap_or_else(|| node.to_string()),
            },
            _ => return None,
        };
        Some(Input { source, timing })
    }

    fn model(&mut self, at: &str, m: &RawModel) -> Option<NodeWeighting> {
        match m.kind.as_str() {
            "curve" => {
                let profile = self.required(at, "profile", m.profile.as_ref(), "curve")?;
                match CurveProfile::embedded(profile) {
                    Some(p) => Some(NodeWeighting::Curve(p)),
                    None => {
                        self.err(
                            format!("{at}.profile"),
                            format!(
                                "unknown profile {profile:?}; known: {}",
                                CurveProfile::names().join(", ")
                            ),
                        );
                        None
                    }
                }
            }
            kind @ ("v2-inference" | "tfserving") => {
                let protocol = if kind == "tfserving" {
                    RemoteProtocol::TfServing
                } else {
                    RemoteProtocol::V2Inference
                };
                let url = self.url(at, m.url.as_ref(), kind);
                let model = self.required(at, "model", m.model.as_ref(), kind).cloned();
                let d = Timing::default();
                let timeout =
                    self.duration(&format!("{at}.timeout"), m.timeout.as_deref(), d.timeout);
                let stale_after = self.duration(
                    &format!("{at}.staleAfter"),
                    m.stale_after.as_deref(),
                    d.stale_after,
                );
                let auth = self.auth(at, m.username.as_ref(), m.password.as_ref());
                let cache_for = self.duration(
                    &format!("{at}.cacheFor"),
                    m.cache_for.as_deref(),
                    Duration::from_secs(1800),
                );
                Some(NodeWeighting::Remote(RemoteModel {
                    protocol,
                    url: url?,
                    model: model?,
                    version: m.version.clone(),
                    timeout,
                    stale_after,
                    cache_for,
                    auth,
                }))
            }
            other => {
                self.err(
                    format!("{at}.type"),
                    format!("unknown model type {other:?}; known: curve, v2-inference, tfserving"),
                );
                None
            }
        }
    }
}
