//! The `services:` section of a config file: its shape and its translation into the
//! `ServiceTable`, each value checked with its key path.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::model::node::Timing;
use crate::model::url::HttpUrl;
use crate::model::{
    Affinity, Backend, Frontend, HealthCheck, Protocol, Redirect, RemoteCluster, Service,
    ServiceKind, ServiceTable, WhenEmpty,
};
use crate::settings::Validator;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawService {
    name: String,
    #[serde(default = "default_protocol")]
    protocol: RawProtocol,
    address: String,
    #[serde(default)]
    backends: Vec<RawBackend>,
    session_affinity: Option<RawAffinity>,
    cpu_per_connection: Option<String>,
    udp: Option<RawUdp>,
    health_check: Option<RawHealthCheck>,
    local_redirect: Option<RawLocalRedirect>,
    #[serde(default)]
    clusters: Vec<RawCluster>,
}

/// Node-local backends that take every connection while any is up (`backends` are then
/// the fallback).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawLocalRedirect {
    backends: Vec<RawBackend>,
}

/// Another cluster as a backend group, weighted by the score at `scoreUrl`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawCluster {
    cluster: String,
    score_url: String,
    address: String,
    interval: Option<String>,
    timeout: Option<String>,
    stale_after: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawHealthCheck {
    interval: Option<String>,
    timeout: Option<String>,
    rise: Option<u32>,
    fall: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawUdp {
    /// End a flow after this many replies.
    responses: Option<u32>,
}

fn default_protocol() -> RawProtocol {
    RawProtocol::Tcp
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawProtocol {
    Tcp,
    Udp,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawBackend {
    address: String,
    node: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawAffinity {
    #[serde(rename = "type")]
    kind: RawAffinityKind,
    timeout: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
enum RawAffinityKind {
    None,
    #[serde(rename = "ClientIP")]
    ClientIp,
}

pub(super) fn validate(v: &mut Validator, raw: &[RawService]) -> ServiceTable {
    let mut table = ServiceTable::default();
    let mut names = BTreeSet::new();
    for (i, s) in raw.iter().enumerate() {
        let at = format!("services[{i}]");
        if s.name.trim().is_empty() {
            v.err(format!("{at}.name"), "must not be empty");
        } else if !names.insert(s.name.clone()) {
            v.err(
                format!("{at}.name"),
                format!("duplicate service name {:?}", s.name),
            );
        }
        let protocol = match s.protocol {
            RawProtocol::Tcp => Protocol::Tcp,
            RawProtocol::Udp => Protocol::Udp,
        };
        let address = v.socket_addr(&format!("{at}.address"), &s.address);
        let listed = backends(v, &at, &s.backends);
        let affinity = affinity(v, &at, s.session_affinity.as_ref());
        let cpu_per_connection = v.millicores(
            &format!("{at}.cpuPerConnection"),
            s.cpu_per_connection.as_deref(),
        );
        let udp_responses = s.udp.as_ref().and_then(|u| u.responses);
        if s.udp.is_some() && matches!(protocol, Protocol::Tcp) {
            v.err(format!("{at}.udp"), "only for protocol udp");
        }
        if udp_responses == Some(0) {
            v.err(format!("{at}.udp.responses"), "must be at least 1");
        }
        let health_check = health_check(v, &at, protocol, s.health_check.as_ref());
        let redirect = s.local_redirect.as_ref().map(|r| {
            let at = format!("{at}.localRedirect");
            if r.backends.is_empty() {
                v.err(format!("{at}.backends"), "must name at least one backend");
            }
            if health_check.is_none() && !s.backends.is_empty() {
                v.warn(
                    at.clone(),
                    "without a healthCheck the local backends never count as down, so the fallback backends are never used",
                );
            }
            Redirect {
                by: Arc::from("localRedirect"),
                backends: backends(v, &at, &r.backends),
                fallback: format!("service {}", s.name).into(),
            }
        });
        let clusters = clusters(v, &at, &s.clusters);
        let Some(address) = address else { continue };
        let frontend = Frontend { protocol, address };
        if table.services.contains_key(&frontend) {
            v.err(
                format!("{at}.address"),
                format!("{frontend} is already used by another service"),
            );
            continue;
        }
        let service = Service {
            key: Arc::from(s.name.as_str()),
            name: Arc::from(s.name.as_str()),
            frontend,
            backends: listed,
            affinity,
            cpu_per_connection,
            udp_responses,
            health_check,
            when_empty: WhenEmpty::Reject,
            source_ranges: Vec::new(),
            kind: ServiceKind::Static,
            policy: None,
            redirect,
            clusters,
        };
        table.services.insert(frontend, Arc::new(service));
    }
    table
}

/// A backend on a node with no entry under `nodes:` is legal (it is weighted neutrally) but
/// usually a typo; each one is named once per service.
pub(super) fn warn_unconfigured_nodes<T>(
    v: &mut Validator,
    raw: &[RawService],
    nodes: &BTreeMap<String, T>,
) {
    for (i, s) in raw.iter().enumerate() {
        let mut named = BTreeSet::new();
        let local = s.local_redirect.iter().flat_map(|r| {
            r.backends
                .iter()
                .enumerate()
                .map(move |(j, b)| (format!("services[{i}].localRedirect.backends[{j}]"), b))
        });
        let listed = s
            .backends
            .iter()
            .enumerate()
            .map(|(j, b)| (format!("services[{i}].backends[{j}]"), b));
        for (at, b) in local.chain(listed) {
            if !b.node.trim().is_empty() && !nodes.contains_key(&b.node) && named.insert(&b.node) {
                v.warn(
                    format!("{at}.node"),
                    format!(
                        "{:?} has no entry under nodes:, so it has no power model and is weighted neutrally",
                        b.node
                    ),
                );
            }
        }
    }
}

fn backends(v: &mut Validator, at: &str, raw: &[RawBackend]) -> Vec<Backend> {
    let mut out: Vec<Backend> = Vec::with_capacity(raw.len());
    for (j, b) in raw.iter().enumerate() {
        let bat = format!("{at}.backends[{j}]");
        if b.node.trim().is_empty() {
            v.err(format!("{bat}.node"), "must not be empty");
        }
        let Some(address) = v.socket_addr(&format!("{bat}.address"), &b.address) else {
            continue;
        };
        if address.port() == 0 || address.ip().is_unspecified() {
            v.err(
                format!("{bat}.address"),
                format!("{address} is not a connectable address"),
            );
            continue;
        }
        if out.iter().any(|o| o.address == address) {
            v.err(
                format!("{bat}.address"),
                format!("duplicate backend {address}"),
            );
            continue;
        }
        out.push(Backend {
            address,
            node: Arc::from(b.node.as_str()),
            pod: None,
        });
    }
    out
}

/// `clusters`: each names another cluster once, with a usable score URL and address.
fn clusters(v: &mut Validator, at: &str, raw: &[RawCluster]) -> Vec<RemoteCluster> {
    let mut out: Vec<RemoteCluster> = Vec::with_capacity(raw.len());
    for (j, c) in raw.iter().enumerate() {
        let cat = format!("{at}.clusters[{j}]");
        let name = c.cluster.trim();
        if name.is_empty() || name == "local" {
            v.err(
                format!("{cat}.cluster"),
                "must name the other cluster (not empty, not \"local\")",
            );
        } else if out.iter().any(|o| &*o.name == name) {
            v.err(
                format!("{cat}.cluster"),
                format!("duplicate cluster {name:?}"),
            );
        }
        let score_url = HttpUrl::parse(&c.score_url)
            .map_err(|e| v.err(format!("{cat}.scoreUrl"), e))
            .ok();
        let address = v.socket_addr(&format!("{cat}.address"), &c.address);
        if address.is_some_and(|a| a.port() == 0 || a.ip().is_unspecified()) {
            v.err(format!("{cat}.address"), "is not a connectable address");
        }
        let default = Timing::default();
        let interval = v.duration(
            &format!("{cat}.interval"),
            c.interval.as_deref(),
            default.interval,
        );
        let timeout = v.duration(
            &format!("{cat}.timeout"),
            c.timeout.as_deref(),
            default.timeout.min(interval),
        );
        let stale_after = v.duration(
            &format!("{cat}.staleAfter"),
            c.stale_after.as_deref(),
            default.stale_after.max(interval),
        );
        if interval < Duration::from_millis(100) {
            v.err(format!("{cat}.interval"), "must be at least 100ms");
        }
        if timeout > interval {
            v.err(format!("{cat}.timeout"), "must be at most the interval");
        }
        if stale_after < interval {
            v.err(format!("{cat}.staleAfter"), "must be at least the interval");
        }
        if let (Some(score_url), Some(address)) = (score_url, address) {
            out.push(RemoteCluster {
                name: Arc::from(name),
                score_url,
                address,
                timing: Timing {
                    interval,
                    timeout,
                    stale_after,
                },
            });
        }
    }
    out
}

/// `healthCheck`: TCP connect checks, for TCP services. Defaults as HAProxy's: every 2s,
/// down after 3 failures, up after 2 successes; a check times out after 1s.
fn health_check(
    v: &mut Validator,
    at: &str,
    protocol: Protocol,
    raw: Option<&RawHealthCheck>,
) -> Option<HealthCheck> {
    let raw = raw?;
    let at = format!("{at}.healthCheck");
    if protocol != Protocol::Tcp {
        v.err(at.clone(), "checks are TCP connects: only for protocol tcp");
    }
    let interval = v.duration(
        &format!("{at}.interval"),
        raw.interval.as_deref(),
        Duration::from_secs(2),
    );
    let timeout = v.duration(
        &format!("{at}.timeout"),
        raw.timeout.as_deref(),
        Duration::from_secs(1).min(interval),
    );
    if interval < Duration::from_millis(100) {
        v.err(format!("{at}.interval"), "must be at least 100ms");
    }
    if timeout > interval {
        v.err(format!("{at}.timeout"), "must be at most the interval");
    }
    let mut count = |key: &str, value: Option<u32>, default: u32| {
        let n = value.unwrap_or(default);
        if !(1..=100).contains(&n) {
            v.err(format!("{at}.{key}"), "must be from 1 to 100");
        }
        n
    };
    let rise = count("rise", raw.rise, 2);
    let fall = count("fall", raw.fall, 3);
    Some(HealthCheck {
        interval,
        timeout,
        rise,
        fall,
    })
}

fn affinity(v: &mut Validator, at: &str, raw: Option<&RawAffinity>) -> Option<Affinity> {
    let raw = raw?;
    let path = format!("{at}.sessionAffinity.timeout");
    // kube-proxy's default and limit: 3 hours, at most one day.
    let timeout = v.duration(&path, raw.timeout.as_deref(), Duration::from_secs(10_800));
    if timeout > Duration::from_secs(86_400) {
        v.err(path, "must be at most 24h");
    }
    (raw.kind == RawAffinityKind::ClientIp).then_some(Affinity { timeout })
}
