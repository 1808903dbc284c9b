//! The `services:` section of a config file: its shape and its translation into the
//! `ServiceTable`, each value checked with its key path.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::model::{Affinity, Backend, Frontend, Protocol, Service, ServiceTable};
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
        let backends = backends(v, &at, &s.backends);
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
            backends,
            affinity,
            cpu_per_connection,
            udp_responses,
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
        for (j, b) in s.backends.iter().enumerate() {
            if !b.node.trim().is_empty() && !nodes.contains_key(&b.node) && named.insert(&b.node) {
                v.warn(
                    format!("services[{i}].backends[{j}].node"),
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
        });
    }
    out
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
