//! The process's own settings (admin, redirect, tproxy, dataplane, proxy, udp, power): the
//! shape of their sections in the YAML file, their defaults, and validation with key paths.
//! The services and nodes of the same file are discovery's (`discovery::file`); this module
//! only knows the knobs, and imports nothing but `model`.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

mod validate;
pub mod yaml;
pub use validate::{show_number, ConfigError, ConfigErrors, Validator};
pub use yaml::structural;

/// Where the admin HTTP server listens unless the config says otherwise (loopback only).
pub const DEFAULT_ADMIN: &str = "127.0.0.1:10349";

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

/// The validated process settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub admin: SocketAddr,
    pub redirect: RedirectMode,
    pub tproxy: TproxySettings,
    pub dataplane: DataplaneMode,
    pub ipvs: IpvsSettings,
    pub proxy: ProxySettings,
    pub udp: UdpSettings,
    pub power: PowerSettings,
    pub metrics: MetricsSettings,
}

/// `dataplane: ipvs`: how long a removed TCP backend keeps its open connections, and the
/// addresses whose virtual services are wao-lb's besides those of its own Plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpvsSettings {
    pub grace_period: Duration,
    pub owned_cidrs: Vec<crate::model::cidr::Cidr>,
}

impl Default for IpvsSettings {
    fn default() -> Self {
        IpvsSettings {
            grace_period: Duration::from_secs(300),
            owned_cidrs: Vec::new(),
        }
    }
}

/// Which metric series exist beyond the per-node and process-wide ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsSettings {
    /// Series per service and per backend (connections, bytes, picks, weights…). Off, every
    /// service counts into one series with `service=""`, so `/metrics` does not grow with
    /// the number of services. On by default for a config file's services, off with
    /// Kubernetes discovery (thousands of Services on every node).
    pub per_service: bool,
    /// With `per_service`, at most this many services (the first by name) get their own
    /// series; the rest count into `service=""`.
    pub max_services: usize,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        MetricsSettings {
            per_service: true,
            max_services: 100,
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            admin: SocketAddr::from(([127, 0, 0, 1], 10349)),
            redirect: RedirectMode::default(),
            tproxy: TproxySettings::default(),
            dataplane: DataplaneMode::default(),
            ipvs: IpvsSettings::default(),
            proxy: ProxySettings::default(),
            udp: UdpSettings::default(),
            power: PowerSettings::default(),
            metrics: MetricsSettings::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProxySettings {
    pub connect_timeout: Duration,
    /// How many backends one connection may try before it is refused; None: every backend
    /// (the data plane bounds it).
    pub connect_attempts: Option<u32>,
    /// A connection with no bytes either way for this long is closed.
    pub idle_timeout: Duration,
    /// How long a stop waits for open connections to finish.
    pub drain_timeout: Duration,
    /// Bytes a connection relays by copying before it switches to splice(2); idle and small
    /// connections so never hold pipes.
    pub splice_after_bytes: u64,
    /// The fraction of connections logged when they close (target `wao_lb::connections`);
    /// 0, the default, logs none.
    pub connection_log_sample: f64,
    /// Threads that serve connections; None: as many CPUs as the process may use (its
    /// cgroup's CPU quota and affinity, else the cores). Read at start only.
    pub workers: Option<usize>,
}

impl Default for ProxySettings {
    fn default() -> Self {
        ProxySettings {
            connect_timeout: Duration::from_secs(2),
            connect_attempts: None,
            idle_timeout: Duration::from_secs(3600),
            drain_timeout: Duration::from_secs(30),
            splice_after_bytes: 64 * 1024,
            connection_log_sample: 0.0,
            workers: None,
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
    /// A controller that equalises marginal watts (`power/policy.rs`).
    Marginal,
    /// wao-lb's default: the split with the least predicted watts over the nodes' power
    /// curves, moved toward step by step (`power/planner.rs`).
    #[default]
    Planner,
}

/// Safety limits every power policy obeys.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Traffic must not push a node above this utilisation (%).
    pub ceiling_percent: f64,
    /// Every node keeps at least this share of new connections (0..1).
    pub min_share: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            ceiling_percent: 80.0,
            min_share: 0.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct PowerSettings {
    pub interval: Duration,
    /// Utilisation ceiling and minimum share every policy obeys.
    pub limits: Limits,
    pub policy: Policy,
    /// Millicores one more connection costs a node (WAO's `cpu-per-request`, default 100m).
    pub cpu_per_connection: u32,
}

impl Default for PowerSettings {
    fn default() -> Self {
        PowerSettings {
            interval: Duration::from_secs(5),
            limits: Limits::default(),
            policy: Policy::default(),
            cpu_per_connection: 100,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The sections' shape (serde). Values that need checking stay strings here.

/// The settings' sections of a config file, as written.
#[derive(Debug, Default)]
pub struct RawSettings {
    pub admin: RawAdmin,
    pub redirect: RedirectMode,
    pub tproxy: RawTproxy,
    pub dataplane: DataplaneMode,
    pub ipvs: RawIpvs,
    pub proxy: RawProxy,
    pub udp: RawUdp,
    pub power: RawPower,
    pub metrics: RawMetrics,
    /// Whether services come from Kubernetes (per-service series default off then).
    pub discovered: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawIpvs {
    grace_period: Option<String>,
    #[serde(default)]
    owned_cidrs: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawMetrics {
    per_service: Option<bool>,
    max_services: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawTproxy {
    port: Option<u16>,
    local_port: Option<u16>,
    mark: Option<u32>,
    upstream_mark: Option<u32>,
    route_table: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawAdmin {
    listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawProxy {
    connect_timeout: Option<String>,
    connect_attempts: Option<u32>,
    idle_timeout: Option<String>,
    drain_timeout: Option<String>,
    splice_after_bytes: Option<u64>,
    connection_log_sample: Option<f64>,
    workers: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawUdp {
    session_timeout: Option<String>,
    max_sessions: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawPower {
    interval: Option<String>,
    ceiling_percent: Option<f64>,
    min_share: Option<f64>,
    policy: Option<Policy>,
    cpu_per_connection: Option<String>,
}

impl Settings {
    /// Validates the sections; every value error goes to `v`.
    pub fn validate(raw: &RawSettings, v: &mut Validator) -> Settings {
        let admin_text = raw.admin.listen.as_deref().unwrap_or(DEFAULT_ADMIN);
        let admin = v
            .socket_addr("admin.listen", admin_text)
            .unwrap_or(Settings::default().admin);
        if !admin.ip().is_loopback() {
            v.warn(
                "admin.listen",
                format!(
                    "{admin} is reachable from other hosts, and the admin API has no \
                     authentication: anyone who reaches it reads every service, backend and metric"
                ),
            );
        }
        Settings {
            admin,
            redirect: raw.redirect,
            tproxy: tproxy(v, &raw.tproxy),
            dataplane: raw.dataplane,
            ipvs: ipvs(v, &raw.ipvs),
            proxy: proxy(v, &raw.proxy),
            udp: udp(v, &raw.udp),
            power: power(v, &raw.power),
            metrics: MetricsSettings {
                per_service: raw.metrics.per_service.unwrap_or(!raw.discovered),
                max_services: match raw.metrics.max_services {
                    Some(n @ 1..=10_000) => n,
                    Some(n) => {
                        v.err("metrics.maxServices", format!("{n} is outside 1..10000"));
                        MetricsSettings::default().max_services
                    }
                    None => MetricsSettings::default().max_services,
                },
            },
        }
    }
}

fn tproxy(v: &mut Validator, raw: &RawTproxy) -> TproxySettings {
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
            v.err(format!("tproxy.{key}"), "must not be 0");
        }
    }
    if t.port == t.local_port {
        v.err("tproxy.localPort", "must differ from tproxy.port");
    }
    for (key, mark) in [("mark", t.mark), ("upstreamMark", t.upstream_mark)] {
        if mark == 0 {
            v.err(format!("tproxy.{key}"), "must not be 0");
        } else if mark & KUBE_PROXY_MARKS != 0 {
            v.err(
                format!("tproxy.{key}"),
                format!("{mark:#x} overlaps kube-proxy's marks 0x4000/0x8000"),
            );
        }
    }
    if t.mark & t.upstream_mark != 0 {
        v.err(
            "tproxy.upstreamMark",
            "must not share bits with tproxy.mark",
        );
    }
    if matches!(t.route_table, 0 | 253..=255) {
        v.err(
            "tproxy.routeTable",
            format!("{} is a reserved routing table", t.route_table),
        );
    }
    t
}

/// More threads than this is a typo, not a machine.
const MAX_WORKERS: u64 = 1024;

fn proxy(v: &mut Validator, raw: &RawProxy) -> ProxySettings {
    let d = ProxySettings::default();
    let connect_attempts = match raw.connect_attempts {
        None => d.connect_attempts,
        Some(n @ 1..=16) => Some(n),
        Some(n) => {
            v.err("proxy.connectAttempts", format!("{n} is outside 1..16"));
            d.connect_attempts
        }
    };
    ProxySettings {
        connect_timeout: v.duration(
            "proxy.connectTimeout",
            raw.connect_timeout.as_deref(),
            d.connect_timeout,
        ),
        connect_attempts,
        idle_timeout: v.duration(
            "proxy.idleTimeout",
            raw.idle_timeout.as_deref(),
            d.idle_timeout,
        ),
        drain_timeout: v.duration(
            "proxy.drainTimeout",
            raw.drain_timeout.as_deref(),
            d.drain_timeout,
        ),
        splice_after_bytes: raw.splice_after_bytes.unwrap_or(d.splice_after_bytes),
        connection_log_sample: raw
            .connection_log_sample
            .map_or(d.connection_log_sample, |f| {
                v.number_in("proxy.connectionLogSample", f, 0.0, 1.0, "")
            }),
        workers: match raw.workers {
            None => d.workers,
            Some(n @ 1..=MAX_WORKERS) => Some(n as usize),
            Some(n) => {
                v.err("proxy.workers", format!("{n} is outside 1..{MAX_WORKERS}"));
                d.workers
            }
        },
    }
}

fn ipvs(v: &mut Validator, raw: &RawIpvs) -> IpvsSettings {
    let d = IpvsSettings::default();
    let owned_cidrs = raw
        .owned_cidrs
        .iter()
        .enumerate()
        .filter_map(|(i, c)| {
            c.parse()
                .map_err(|e| v.err(format!("ipvs.ownedCidrs[{i}]"), format!("{c:?}: {e}")))
                .ok()
        })
        .collect();
    IpvsSettings {
        grace_period: v.duration(
            "ipvs.gracePeriod",
            raw.grace_period.as_deref(),
            d.grace_period,
        ),
        owned_cidrs,
    }
}

fn udp(v: &mut Validator, raw: &RawUdp) -> UdpSettings {
    let d = UdpSettings::default();
    let max_sessions = match raw.max_sessions {
        None => d.max_sessions,
        Some(0) => {
            v.err("udp.maxSessions", "must be at least 1");
            d.max_sessions
        }
        Some(n) => n,
    };
    UdpSettings {
        session_timeout: v.duration(
            "udp.sessionTimeout",
            raw.session_timeout.as_deref(),
            d.session_timeout,
        ),
        max_sessions,
    }
}

fn power(v: &mut Validator, raw: &RawPower) -> PowerSettings {
    let d = PowerSettings::default();
    let interval = v.duration("power.interval", raw.interval.as_deref(), d.interval);
    if interval < Duration::from_millis(100) {
        v.err("power.interval", "must be at least 100ms");
    }
    let limits = Limits {
        ceiling_percent: v.number_in(
            "power.ceilingPercent",
            raw.ceiling_percent.unwrap_or(d.limits.ceiling_percent),
            1.0,
            100.0,
            "%",
        ),
        min_share: v.number_in(
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
        cpu_per_connection: v
            .millicores("power.cpuPerConnection", raw.cpu_per_connection.as_deref())
            .unwrap_or(d.cpu_per_connection),
    }
}
