//! The YAML configuration: its schema, its defaults, and validation that reports every error
//! with the path of the bad key (`services[1].backends[0].address: invalid socket address "x"`).
//!
//! Parsing happens in two steps. serde (through serde_path_to_error) checks the shape: unknown
//! keys and wrong types stop there with the path of the first one. Everything that has a shape
//! but a bad value (addresses, durations, quantities, ranges, duplicates) is then checked in
//! one pass that collects every error, so an operator fixes a file in one round.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

mod nodes;
pub use nodes::{
    BasicAuth, Input, NodeConfig, NodeWeighting, RemoteModel, RemoteProtocol, Source, Timing,
    DEFAULT_NODE_CORES,
};

use crate::model::{Affinity, Backend, Frontend, NodeName, Protocol, Service, ServiceTable};

/// Where the admin HTTP server listens unless the config says otherwise (loopback only).
pub const DEFAULT_ADMIN: &str = "127.0.0.1:10349";

/// One problem in a config file: the path of the key and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in one config file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// How traffic reaches wao-lb.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RedirectMode {
    /// Bind every service address directly (VMs, no kernel rules).
    #[default]
    Listen,
    /// nftables TPROXY hands VIP traffic to transparent listeners.
    Tproxy,
}

/// Who moves the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DataplaneMode {
    #[default]
    Proxy,
    Ipvs,
}

/// Marks kube-proxy uses (masquerade 0x4000, drop 0x8000); ours must not overlap them.
pub const KUBE_PROXY_MARKS: u32 = 0x4000 | 0x8000;

/// Transparent mode: where the transparent listeners are and which marks and routing table
/// the kernel rules use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TproxySettings {
    /// TCP and UDP transparent listeners on 127.0.0.1 and [::1].
    pub port: u16,
    /// TCP listener for connections the node itself makes to a VIP (nat redirect).
    pub local_port: u16,
    /// Marks packets TPROXY hands to wao-lb; policy routing delivers them locally.
    pub mark: u32,
    /// Carried by wao-lb's own upstream sockets; the rules let them pass untouched.
    pub upstream_mark: u32,
    /// Policy routing table holding `local default dev lo`.
    pub route_table: u32,
}

impl Default for TproxySettings {
    fn default() -> Self {
        TproxySettings {
            port: 15001,
            local_port: 15002,
            mark: 0x1000,
            upstream_mark: 0x2000,
            route_table: 1349,
        }
    }
}

/// The validated configuration the rest of the program runs on.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub admin: SocketAddr,
    pub redirect: RedirectMode,
    pub tproxy: TproxySettings,
    pub dataplane: DataplaneMode,
    pub proxy: ProxySettings,
    pub udp: UdpSettings,
    pub services: ServiceTable,
    pub nodes: BTreeMap<NodeName, NodeConfig>,
    pub power: PowerSettings,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxySettings {
    pub connect_timeout: Duration,
    /// How many backends one connection may try before it is refused.
    pub connect_attempts: u32,
    /// A connection with no bytes either way for this long is closed.
    pub idle_timeout: Duration,
    /// How long a stop waits for open connections to finish.
    pub drain_timeout: Duration,
    /// Bytes a connection relays by copying before it switches to splice(2); idle and small
    /// connections so never hold pipes.
    pub splice_after_bytes: u64,
}

impl Default for ProxySettings {
    fn default() -> Self {
        ProxySettings {
            connect_timeout: Duration::from_secs(2),
            connect_attempts: 3,
            idle_timeout: Duration::from_secs(3600),
            drain_timeout: Duration::from_secs(30),
            splice_after_bytes: 64 * 1024,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpSettings {
    pub session_timeout: Duration,
    pub max_sessions: usize,
}

impl Default for UdpSettings {
    fn default() -> Self {
        UdpSettings {
            session_timeout: Duration::from_secs(60),
            max_sessions: 10_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// WAO v1.31's exact scoring: whole-watt ΔW, score = 100·min/ΔW.
    Wao,
    /// wao-lb's default: a controller that equalises marginal watts (`power/policy.rs`).
    #[default]
    Marginal,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PowerSettings {
    pub interval: Duration,
    /// Utilisation ceiling and minimum share every policy obeys.
    pub limits: crate::power::policy::Limits,
    pub policy: Policy,
    /// Millicores one more connection costs a node (WAO's `cpu-per-request`, default 100m).
    pub cpu_per_connection: u32,
}

impl Default for PowerSettings {
    fn default() -> Self {
        PowerSettings {
            interval: Duration::from_secs(5),
            limits: crate::power::policy::Limits::default(),
            policy: Policy::default(),
            cpu_per_connection: 100,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The file's shape (serde). Values that need checking stay strings here.

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawConfig {
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    redirect: RedirectMode,
    #[serde(default)]
    tproxy: RawTproxy,
    #[serde(default)]
    dataplane: DataplaneMode,
    #[serde(default)]
    proxy: RawProxy,
    #[serde(default)]
    udp: RawUdp,
    #[serde(default)]
    services: Vec<RawService>,
    #[serde(default)]
    nodes: BTreeMap<String, nodes::RawNode>,
    #[serde(default)]
    power: RawPower,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawTproxy {
    port: Option<u16>,
    local_port: Option<u16>,
    mark: Option<u32>,
    upstream_mark: Option<u32>,
    route_table: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawAdmin {
    listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawProxy {
    connect_timeout: Option<String>,
    connect_attempts: Option<u32>,
    idle_timeout: Option<String>,
    drain_timeout: Option<String>,
    splice_after_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawUdp {
    session_timeout: Option<String>,
    max_sessions: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawService {
    name: String,
    #[serde(default = "default_protocol")]
    protocol: RawProtocol,
    address: String,
    #[serde(default)]
    backends: Vec<RawBackend>,
    session_affinity: Option<RawAffinity>,
    cpu_per_connection: Option<String>,
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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawPower {
    interval: Option<String>,
    ceiling_percent: Option<f64>,
    min_share: Option<f64>,
    policy: Option<Policy>,
    cpu_per_connection: Option<String>,
}

// ---------------------------------------------------------------------------------------------

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                path: String::new(),
                message: format!("cannot read {}: {e}", path.display()),
            }])
        })?;
        Config::parse(&text)
    }

    /// Parses and validates YAML text.
    pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
        let raw: RawConfig = if text.trim().is_empty() {
            RawConfig::default()
        } else {
            let de = serde_yaml::Deserializer::from_str(text);
            serde_path_to_error::deserialize(de).map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner();
                let message = strip_location(&inner);
                // serde_yaml puts its own (shorter) path in front; ours is the full one.
                let message = match message.split_once(": ") {
                    Some((head, rest)) if path.starts_with(head) => rest.to_string(),
                    _ => message,
                };
                ConfigErrors(vec![ConfigError {
                    path: if path == "." { String::new() } else { path },
                    message,
                }])
            })?
        };
        let mut v = Validator::default();
        let config = v.config(raw);
        if v.errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(v.errors))
        }
    }
}

/// serde_yaml appends "at line L column C"; keep the location, which helps, but put it last
/// behind the message so the path leads.
fn strip_location(e: &serde_yaml::Error) -> String {
    let msg = e.to_string();
    match e.location() {
        Some(loc) => {
            let suffix = format!(" at line {} column {}", loc.line(), loc.column());
            let base = msg.strip_suffix(&suffix).unwrap_or(&msg);
            format!("{base} (line {}, column {})", loc.line(), loc.column())
        }
        None => msg,
    }
}

#[derive(Default)]
pub(crate) struct Validator {
    errors: Vec<ConfigError>,
}

impl Validator {
    pub(crate) fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError {
            path: path.into(),
            message: message.into(),
        });
    }

    pub(crate) fn socket_addr(&mut self, path: &str, text: &str) -> Option<SocketAddr> {
        match text.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.err(path, format!("invalid socket address {text:?}"));
                None
            }
        }
    }

    pub(crate) fn duration(
        &mut self,
        path: &str,
        text: Option<&str>,
        default: Duration,
    ) -> Duration {
        match text.map(parse_duration) {
            None => default,
            Some(Ok(d)) if !d.is_zero() => d,
            Some(Ok(_)) => {
                self.err(path, "must be greater than zero");
                default
            }
            Some(Err(e)) => {
                self.err(path, e);
                default
            }
        }
    }

    pub(crate) fn millicores(&mut self, path: &str, text: Option<&str>) -> Option<u32> {
        match text.map(parse_millicores)? {
            Ok(m) => Some(m),
            Err(e) => {
                self.err(path, e);
                None
            }
        }
    }

    pub(crate) fn number_in(
        &mut self,
        path: &str,
        value: f64,
        lo: f64,
        hi: f64,
        unit: &str,
    ) -> f64 {
        if value.is_finite() && (lo..=hi).contains(&value) {
            value
        } else {
            self.err(path, format!("{value} is outside {lo}..{hi} {unit}"));
            value.clamp(lo, hi)
        }
    }

    fn config(&mut self, raw: RawConfig) -> Config {
        let admin_text = raw.admin.listen.as_deref().unwrap_or(DEFAULT_ADMIN);
        let admin = self
            .socket_addr("admin.listen", admin_text)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 10349)));
        let tproxy = self.tproxy(&raw.tproxy);
        if raw.dataplane == DataplaneMode::Ipvs {
            self.err(
                "dataplane",
                "ipvs is not available in this build yet; use `proxy`",
            );
        }
        let proxy = self.proxy(&raw.proxy);
        let udp = self.udp(&raw.udp);
        let power = self.power(&raw.power);
        let services = self.services(&raw.services);
        let nodes = self.nodes(&raw.nodes);
        Config {
            admin,
            redirect: raw.redirect,
            tproxy,
            dataplane: raw.dataplane,
            proxy,
            udp,
            services,
            nodes,
            power,
        }
    }

    fn tproxy(&mut self, raw: &RawTproxy) -> TproxySettings {
        let d = TproxySettings::default();
        let t = TproxySettings {
            port: raw.port.unwrap_or(d.port),
            local_port: raw.local_port.unwrap_or(d.local_port),
            mark: raw.mark.unwrap_or(d.mark),
            upstream_mark: raw.upstream_mark.unwrap_or(d.upstream_mark),
            route_table: raw.route_table.unwrap_or(d.route_table),
        };
        for (key, port) in [("port", t.port), ("localPort", t.local_port)] {
            if port == 0 {
                self.err(format!("tproxy.{key}"), "must not be 0");
            }
        }
        if t.port == t.local_port {
            self.err("tproxy.localPort", "must differ from tproxy.port");
        }
        for (key, mark) in [("mark", t.mark), ("upstreamMark", t.upstream_mark)] {
            if mark == 0 {
                self.err(format!("tproxy.{key}"), "must not be 0");
            } else if mark & KUBE_PROXY_MARKS != 0 {
                self.err(
                    format!("tproxy.{key}"),
                    format!("{mark:#x} overlaps kube-proxy's marks 0x4000/0x8000"),
                );
            }
        }
        if t.mark & t.upstream_mark != 0 {
            self.err(
                "tproxy.upstreamMark",
                "must not share bits with tproxy.mark",
            );
        }
        if matches!(t.route_table, 0 | 253..=255) {
            self.err(
                "tproxy.routeTable",
                format!("{} is a reserved routing table", t.route_table),
            );
        }
        t
    }

    fn proxy(&mut self, raw: &RawProxy) -> ProxySettings {
        let d = ProxySettings::default();
        let connect_attempts = match raw.connect_attempts {
            None => d.connect_attempts,
            Some(n @ 1..=16) => n,
            Some(n) => {
                self.err("proxy.connectAttempts", format!("{n} is outside 1..16"));
                d.connect_attempts
            }
        };
        ProxySettings {
            connect_timeout: self.duration(
                "proxy.connectTimeout",
                raw.connect_timeout.as_deref(),
                d.connect_timeout,
            ),
            connect_attempts,
            idle_timeout: self.duration(
                "proxy.idleTimeout",
                raw.idle_timeout.as_deref(),
                d.idle_timeout,
            ),
            drain_timeout: self.duration(
                "proxy.drainTimeout",
                raw.drain_timeout.as_deref(),
                d.drain_timeout,
            ),
            splice_after_bytes: raw.splice_after_bytes.unwrap_or(d.splice_after_bytes),
        }
    }

    fn udp(&mut self, raw: &RawUdp) -> UdpSettings {
        let d = UdpSettings::default();
        let max_sessions = match raw.max_sessions {
            None => d.max_sessions,
            Some(0) => {
                self.err("udp.maxSessions", "must be at least 1");
                d.max_sessions
            }
            Some(n) => n,
        };
        UdpSettings {
            session_timeout: self.duration(
                "udp.sessionTimeout",
                raw.session_timeout.as_deref(),
                d.session_timeout,
            ),
            max_sessions,
        }
    }

    fn power(&mut self, raw: &RawPower) -> PowerSettings {
        let d = PowerSettings::default();
        let interval = self.duration("power.interval", raw.interval.as_deref(), d.interval);
        if interval < Duration::from_millis(100) {
            self.err("power.interval", "must be at least 100ms");
        }
        let limits = crate::power::policy::Limits {
            ceiling_percent: self.number_in(
                "power.ceilingPercent",
                raw.ceiling_percent.unwrap_or(d.limits.ceiling_percent),
                1.0,
                100.0,
                "%",
            ),
            min_share: self.number_in(
                "power.minShare",
                raw.min_share.unwrap_or(d.limits.min_share),
                0.0,
                0.5,
                "",
            ),
        };
        PowerSettings {
            interval,
            limits,
            policy: raw.policy.unwrap_or(d.policy),
            cpu_per_connection: self
                .millicores("power.cpuPerConnection", raw.cpu_per_connection.as_deref())
                .unwrap_or(d.cpu_per_connection),
        }
    }

    fn services(&mut self, raw: &[RawService]) -> ServiceTable {
        let mut table = ServiceTable::default();
        let mut names = BTreeSet::new();
        for (i, s) in raw.iter().enumerate() {
            let at = format!("services[{i}]");
            if s.name.trim().is_empty() {
                self.err(format!("{at}.name"), "must not be empty");
            } else if !names.insert(s.name.clone()) {
                self.err(
                    format!("{at}.name"),
                    format!("duplicate service name {:?}", s.name),
                );
            }
            let protocol = match s.protocol {
                RawProtocol::Tcp => Protocol::Tcp,
                RawProtocol::Udp => Protocol::Udp,
            };
            let address = self.socket_addr(&format!("{at}.address"), &s.address);
            let backends = self.backends(&at, &s.backends);
            let affinity = self.affinity(&at, s.session_affinity.as_ref());
            let cpu_per_connection = self.millicores(
                &format!("{at}.cpuPerConnection"),
                s.cpu_per_connection.as_deref(),
            );
            let Some(address) = address else { continue };
            let frontend = Frontend { protocol, address };
            if table.services.contains_key(&frontend) {
                self.err(
                    format!("{at}.address"),
                    format!("{frontend} is already used by another service"),
                );
                continue;
            }
            let service = Service {
                name: Arc::from(s.name.as_str()),
                frontend,
                backends,
                affinity,
                cpu_per_connection,
            };
            table.services.insert(frontend, Arc::new(service));
        }
        table
    }

    fn backends(&mut self, at: &str, raw: &[RawBackend]) -> Vec<Backend> {
        let mut out: Vec<Backend> = Vec::with_capacity(raw.len());
        for (j, b) in raw.iter().enumerate() {
            let bat = format!("{at}.backends[{j}]");
            if b.node.trim().is_empty() {
                self.err(format!("{bat}.node"), "must not be empty");
            }
            let Some(address) = self.socket_addr(&format!("{bat}.address"), &b.address) else {
                continue;
            };
            if address.port() == 0 || address.ip().is_unspecified() {
                self.err(
                    format!("{bat}.address"),
                    format!("{address} is not a connectable address"),
                );
                continue;
            }
            if out.iter().any(|o| o.address == address) {
                self.err(
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

    fn affinity(&mut self, at: &str, raw: Option<&RawAffinity>) -> Option<Affinity> {
        let raw = raw?;
        let path = format!("{at}.sessionAffinity.timeout");
        // kube-proxy's default and limit: 3 hours, at most one day.
        let timeout = self.duration(&path, raw.timeout.as_deref(), Duration::from_secs(10_800));
        if timeout > Duration::from_secs(86_400) {
            self.err(path, "must be at most 24h");
        }
        (raw.kind == RawAffinityKind::ClientIp).then_some(Affinity { timeout })
    }
}

/// Parses a duration written as Go and Kubernetes do: `500ms`, `5s`, `1m30s`, `3h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {text:?} (expected e.g. 500ms, 5s, 1m30s, 3h)");
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (number, tail) = rest.split_at(digits);
        let value: f64 = number.parse().map_err(|_| bad())?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let seconds = match unit {
            "ms" => value / 1000.0,
            "s" => value,
            "m" => value * 60.0,
            "h" => value * 3600.0,
            _ => return Err(bad()),
        };
        total += Duration::try_from_secs_f64(seconds).map_err(|_| bad())?;
        rest = tail;
    }
    Ok(total)
}

/// Parses a Kubernetes CPU quantity into millicores: `100m` → 100, `0.5` → 500, `2` → 2000.
pub fn parse_millicores(text: &str) -> Result<u32, String> {
    let bad = || format!("invalid CPU quantity {text:?} (expected e.g. 100m, 0.5, 2)");
    let t = text.trim();
    let millis = match t.strip_suffix('m') {
        Some(m) => m.parse::<f64>().map_err(|_| bad())?,
        None => t.parse::<f64>().map_err(|_| bad())? * 1000.0,
    };
    if !millis.is_finite() || !(0.0..=1_000_000.0).contains(&millis) {
        return Err(bad());
    }
    Ok(millis.round() as u32)
}

/// Serialises a `Duration` as seconds (for JSON views).
pub mod duration_secs {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("3h"), Ok(Duration::from_secs(10_800)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        for bad in ["", "5", "s", "5x", "-1s", "5 s", "1e400s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    pub(crate) fn millicores() {
        assert_eq!(parse_millicores("100m"), Ok(100));
        assert_eq!(parse_millicores("0.5"), Ok(500));
        assert_eq!(parse_millicores("2"), Ok(2000));
        assert_eq!(parse_millicores("250m"), Ok(250));
        for bad in ["", "m", "-1", "abc", "1k", "NaN"] {
            assert!(parse_millicores(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn empty_file_is_defaults() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.admin, DEFAULT_ADMIN.parse().unwrap());
        assert!(c.admin.ip().is_loopback());
        assert!(c.services.services.is_empty());
    }

    #[test]
    fn collects_every_value_error() {
        let yaml = r#"
services:
  - name: a
    address: 127.0.0.1:80
    backends:
      - {address: x, node: n}
  - name: a
    address: nope
"#;
        let errs = Config::parse(yaml).unwrap_err().0;
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            text,
            vec![
                "services[0].backends[0].address: invalid socket address \"x\"".to_string(),
                "services[1].name: duplicate service name \"a\"".to_string(),
                "services[1].address: invalid socket address \"nope\"".to_string(),
            ]
        );
    }

    #[test]
    fn tproxy_settings_take_hex_marks_and_refuse_kube_proxy_bits() {
        let c = Config::parse(
            "redirect: tproxy\ntproxy: {mark: 0x100, upstreamMark: 0x200, routeTable: 77}\n",
        )
        .unwrap();
        assert_eq!(c.redirect, RedirectMode::Tproxy);
        assert_eq!(
            (c.tproxy.mark, c.tproxy.upstream_mark, c.tproxy.route_table),
            (0x100, 0x200, 77)
        );
        let errs = Config::parse("tproxy: {mark: 0x4000, upstreamMark: 0x4000, routeTable: 254}\n")
            .unwrap_err()
            .0;
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert!(
            text.contains(
                &"tproxy.mark: 0x4000 overlaps kube-proxy's marks 0x4000/0x8000".to_string()
            ),
            "{text:?}"
        );
        assert!(
            text.contains(&"tproxy.upstreamMark: must not share bits with tproxy.mark".to_string()),
            "{text:?}"
        );
        assert!(
            text.contains(&"tproxy.routeTable: 254 is a reserved routing table".to_string()),
            "{text:?}"
        );
    }

    #[test]
    fn unknown_key_has_its_path() {
        let yaml = "services:\n  - name: a\n    address: 127.0.0.1:80\n    backends:\n      - {adress: 1.2.3.4:5, node: n}\n";
        let errs = Config::parse(yaml).unwrap_err().0;
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].path, "services[0].backends[0].adress");
        assert!(
            errs[0].message.contains("unknown field `adress`"),
            "{}",
            errs[0].message
        );
    }
}
