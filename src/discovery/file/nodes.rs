//! The `nodes:` section of a config file: its shape and its translation into `NodeSpec`s,
//! each value checked with its key path (`nodes.a.cpu.url: required for source node-exporter`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::model::curve::CurveProfile;
use crate::model::node::{
    BasicAuth, Input, ModelLocation, NodeSpec, NodeWeighting, Quantity, RemoteModelSpec,
    RemoteProtocol, Source, Timing, DEFAULT_NODE_CORES,
};
use crate::model::url::HttpUrl;
use crate::model::NodeName;
use crate::settings::Validator;

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

pub(super) fn validate(
    v: &mut Validator,
    raw: &BTreeMap<String, RawNode>,
) -> BTreeMap<NodeName, NodeSpec> {
    let mut out = BTreeMap::new();
    for (name, n) in raw {
        let at = format!("nodes.{name}");
        let cpu = input(v, &at, name, Quantity::Cpu, n.cpu.as_ref());
        let inlet = input(v, &at, name, Quantity::Inlet, n.inlet_temp.as_ref());
        let delta_p = input(v, &at, name, Quantity::DeltaP, n.delta_p.as_ref());
        let weighting = match (&n.model, n.weight) {
            (Some(_), Some(w)) => {
                v.err(
                    format!("{at}.weight"),
                    format!("{w}: give either weight or model, not both"),
                );
                None
            }
            (None, Some(w)) => Some(NodeWeighting::Fixed(v.number_in(
                &format!("{at}.weight"),
                w,
                0.0,
                1e6,
                "",
            ))),
            (Some(m), None) => model(v, &format!("{at}.model"), m),
            (None, None) => {
                v.err(
                    format!("{at}.model"),
                    "missing: give a power model or a fixed weight",
                );
                None
            }
        };
        let cores = match n.cores {
            Some(c) => v.number_in(&format!("{at}.cores"), c, 0.1, 4096.0, "cores"),
            None => DEFAULT_NODE_CORES,
        };
        if let (Some(cpu), Some(inlet), Some(delta_p), Some(weighting)) =
            (cpu, inlet, delta_p, weighting)
        {
            out.insert(
                Arc::from(name.as_str()),
                NodeSpec {
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
    v: &mut Validator,
    at: &str,
    interval: Option<&str>,
    timeout: Option<&str>,
    stale: Option<&str>,
) -> Timing {
    let d = Timing::default();
    let t = Timing {
        interval: v.duration(&format!("{at}.interval"), interval, d.interval),
        timeout: v.duration(&format!("{at}.timeout"), timeout, d.timeout),
        stale_after: v.duration(&format!("{at}.staleAfter"), stale, d.stale_after),
    };
    if t.stale_after < t.interval {
        v.err(format!("{at}.staleAfter"), "must be at least the interval");
    }
    t
}

fn required<'a>(
    v: &mut Validator,
    at: &str,
    key: &str,
    value: Option<&'a String>,
    source: &str,
) -> Option<&'a String> {
    if value.is_none() {
        v.err(
            format!("{at}.{key}"),
            format!("required for source {source}"),
        );
    }
    value
}

fn url(v: &mut Validator, at: &str, value: Option<&String>, what: &str) -> Option<HttpUrl> {
    let url = required(v, at, "url", value, what)?;
    HttpUrl::parse(url)
        .map_err(|e| v.err(format!("{at}.url"), e))
        .ok()
}

fn auth(
    v: &mut Validator,
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
            v.err(format!("{at}.password"), "required with username");
            None
        }
        (None, Some(_)) => {
            v.err(format!("{at}.username"), "required with password");
            None
        }
    }
}

fn input(
    v: &mut Validator,
    node_at: &str,
    node: &str,
    q: Quantity,
    raw: Option<&RawInput>,
) -> Option<Input> {
    let at = format!("{node_at}.{}", q.key());
    let Some(r) = raw else {
        return Some(Input {
            source: Source::Static(q.unset()),
            timing: Timing::default(),
        });
    };
    if !q.sources().contains(&r.source.as_str()) {
        v.err(
            format!("{at}.source"),
            format!(
                "unknown source {:?}; known: {}",
                r.source,
                q.sources().join(", ")
            ),
        );
        return None;
    }
    // Keys that belong to other quantities or sources are mistakes worth naming.
    let statics = [
        (Quantity::Cpu, r.percent),
        (Quantity::Inlet, r.celsius),
        (Quantity::DeltaP, r.pascal),
    ];
    for (sq, value) in statics {
        if value.is_some() && (sq != q || r.source != "static") {
            v.err(
                format!("{at}.{}", sq.static_key()),
                format!("not used by source {}", r.source),
            );
        }
    }
    let keys = [
        ("url", r.url.is_some()),
        ("node", r.node.is_some()),
        ("username", r.username.is_some()),
        ("password", r.password.is_some()),
        ("insecureSkipVerify", r.insecure_skip_verify.is_some()),
    ];
    for (key, given) in keys {
        if given && !source_takes(&r.source, key) {
            v.err(
                format!("{at}.{key}"),
                format!("not used by source {}", r.source),
            );
        }
    }
    let timing = timing(
        v,
        &at,
        r.interval.as_deref(),
        r.timeout.as_deref(),
        r.stale_after.as_deref(),
    );
    let source = match r.source.as_str() {
        "static" => {
            let value = statics
                .iter()
                .find(|(sq, _)| *sq == q)
                .and_then(|(_, v)| *v);
            let Some(value) = value else {
                v.err(
                    format!("{at}.{}", q.static_key()),
                    "required for source static",
                );
                return None;
            };
            Source::Static(v.number_in(
                &format!("{at}.{}", q.static_key()),
                value,
                q.range().0,
                q.range().1,
                q.unit(),
            ))
        }
        "node-exporter" => Source::NodeExporter {
            url: url(v, &at, r.url.as_ref(), "node-exporter")?,
        },
        "ipmi-exporter" => Source::IpmiExporter {
            url: url(v, &at, r.url.as_ref(), "ipmi-exporter")?,
        },
        "redfish" => Source::Redfish {
            url: url(v, &at, r.url.as_ref(), "redfish")?,
            auth: auth(v, &at, r.username.as_ref(), r.password.as_ref()),
            insecure: r.insecure_skip_verify.unwrap_or(false),
        },
        "dpapi" => Source::Dpapi {
            url: url(v, &at, r.url.as_ref(), "dpapi")?,
            node: r.node.clone().unwrap_or_else(|| node.to_string()),
        },
        _ => return None,
    };
    Some(Input { source, timing })
}

/// Whether `source` reads `key` (beyond `source` and the timing keys every source takes).
fn source_takes(source: &str, key: &str) -> bool {
    match source {
        "node-exporter" | "ipmi-exporter" => key == "url",
        "dpapi" => matches!(key, "url" | "node"),
        "redfish" => matches!(key, "url" | "username" | "password" | "insecureSkipVerify"),
        _ => false,
    }
}

fn model(v: &mut Validator, at: &str, m: &RawModel) -> Option<NodeWeighting> {
    match m.kind.as_str() {
        "curve" => {
            let profile = required(v, at, "profile", m.profile.as_ref(), "curve")?;
            match CurveProfile::embedded(profile) {
                Some(p) => Some(NodeWeighting::Curve(p)),
                None => {
                    v.err(
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
            let url = url(v, at, m.url.as_ref(), kind);
            let model = required(v, at, "model", m.model.as_ref(), kind).cloned();
            let d = Timing::default();
            let timeout = v.duration(&format!("{at}.timeout"), m.timeout.as_deref(), d.timeout);
            let stale_after = v.duration(
                &format!("{at}.staleAfter"),
                m.stale_after.as_deref(),
                d.stale_after,
            );
            let auth = auth(v, at, m.username.as_ref(), m.password.as_ref());
            let cache_for = v.duration(
                &format!("{at}.cacheFor"),
                m.cache_for.as_deref(),
                Duration::from_secs(1800),
            );
            Some(NodeWeighting::Remote(RemoteModelSpec {
                protocol,
                location: ModelLocation::At {
                    url: url?,
                    model: model?,
                    version: m.version.clone(),
                },
                timeout,
                stale_after,
                cache_for,
                auth,
            }))
        }
        other => {
            v.err(
                format!("{at}.type"),
                format!("unknown model type {other:?}; known: curve, v2-inference, tfserving"),
            );
            None
        }
    }
}
