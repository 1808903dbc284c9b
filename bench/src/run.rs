//! Runs one load scenario against every selected target in turn: for each target enters a
//! fresh network namespace, starts a built-in backend and the target, measures, and stops
//! both, while the progress bar says where the run is. Failures and missing peers become
//! `skipped` lines.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use indicatif::ProgressBar;

use crate::backends;
use crate::netns;
use crate::report::{Column, Machine, Report, Row, Skipped};
use crate::scenario::{idle, rr, throughput, udp, Scenario};
use crate::targets::{Proto, Running, Setup, Skip, Target};

/// How long and how wide each scenario runs.
#[derive(Debug, Clone)]
pub struct Sizes {
    pub seconds: f64,
    pub connections: usize,
    /// The paced `rr` rate, requests per second over all connections.
    pub rate: f64,
    pub idle: usize,
    pub streams: Vec<usize>,
    /// Pause between targets, so one target's TIME_WAITs and buffers do not tax the next.
    pub settle: Duration,
}

impl Sizes {
    /// Tiny sizes for CI: every code path, no meaningful numbers.
    pub fn smoke() -> Self {
        Self {
            seconds: 0.3,
            connections: 2,
            rate: 200.0,
            idle: 50,
            streams: vec![1, 8],
            settle: Duration::ZERO,
        }
    }

    fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.seconds.max(0.05))
    }
}

/// The measurements a scenario makes, one step of the progress bar per target.
pub fn steps(scenario: Scenario, targets: &[Target]) -> u64 {
    match scenario {
        Scenario::Energy | Scenario::Soak | Scenario::KubeScale | Scenario::All => 0,
        _ => targets.len() as u64,
    }
}

enum Backend {
    Echo(backends::Served),
    Sink(backends::Served, Arc<AtomicU64>),
    UdpEcho(backends::Served),
    EchoProcess(backends::EchoProcess),
}

impl Backend {
    async fn start(scenario: Scenario) -> std::io::Result<Self> {
        Ok(match scenario {
            Scenario::Throughput => {
                let (addr, received) = backends::tcp_sink().await?;
                Backend::Sink(addr, received)
            }
            Scenario::Udp => Backend::UdpEcho(backends::udp_echo().await?),
            Scenario::Idle => {
                Backend::EchoProcess(backends::EchoProcess::start(0, backends::Closing::Plain)?)
            }
            _ => Backend::Echo(backends::tcp_echo().await?),
        })
    }

    fn addr(&self) -> SocketAddr {
        match self {
            Backend::Echo(s) | Backend::Sink(s, _) | Backend::UdpEcho(s) => s.addr,
            Backend::EchoProcess(p) => p.addr,
        }
    }
}

fn describe(scenario: Scenario, sizes: &Sizes, setup: &Setup) -> (String, Vec<Column>) {
    let pinning = match setup.proxy_core {
        Some(c) => format!("proxy alone on core {c}, load and backend on the other"),
        None if setup.workers > 1 => format!(
            "{} workers per proxy, proxies and load sharing the cores",
            setup.workers
        ),
        None => "no pinning (one core)".into(),
    };
    let s = sizes.seconds;
    match scenario {
        Scenario::Throughput => (
            format!("bulk TCP into a sink, {s} s per run; {pinning}"),
            throughput::columns(),
        ),
        Scenario::Rr => (
            format!(
                "1-byte ping-pong on {} kept-alive connections, {s} s at {} req/s and at max; {pinning}",
                sizes.connections, sizes.rate
            ),
            rr::rr_columns(),
        ),
        Scenario::Crr => (
            format!(
                "a new connection per 1-byte request, {} loops, {s} s; {pinning}",
                sizes.connections
            ),
            rr::crr_columns(),
        ),
        Scenario::Idle => (
            format!("idle connections held through the proxy; {pinning}"),
            idle::columns(),
        ),
        Scenario::Udp => (
            format!(
                "64-byte datagram ping-pong from {} sockets, {s} s; {pinning}",
                sizes.connections
            ),
            udp::columns(),
        ),
        Scenario::Energy | Scenario::Soak | Scenario::KubeScale | Scenario::All => {
            (String::new(), Vec::new())
        }
    }
}

/// Measures `scenario` (a load scenario, not `energy`) against every target.
pub async fn scenario(
    scenario: Scenario,
    targets: &[Target],
    setup: &Setup,
    sizes: &Sizes,
    bar: &ProgressBar,
) -> std::io::Result<Report> {
    let (description, columns) = describe(scenario, sizes, setup);
    let proto = match scenario {
        Scenario::Udp => Proto::Udp,
        _ => Proto::Tcp,
    };
    let idle = idle::fitting_connections(sizes.idle, setup.open_files, 100);
    // Every peer is sized for what the scenario holds at once.
    let hold = match scenario {
        Scenario::Idle => idle + 8,
        _ => 4096.max(sizes.connections + 64),
    };
    let mut rows = Vec::new();
    let mut skipped = Vec::new();
    for (i, &target) in targets.iter().enumerate() {
        bar.set_message(format!("{} · {}", scenario.name(), target.name()));
        if i > 0 {
            tokio::time::sleep(sizes.settle).await;
        }
        if let Err(e) = netns::enter_fresh() {
            if i == 0 {
                bar.println(format!(
                    "targets share one network namespace ({e}); run as root to isolate them"
                ));
            }
        }
        let outcome = if scenario == Scenario::Idle && !target.has_process() {
            Err(Skip(
                "no proxy process of its own whose memory could be read".into(),
            ))
        } else {
            let backend = Backend::start(scenario).await?;
            match target.start(proto, backend.addr(), hold, setup).await {
                Ok(running) => {
                    let measured = measure(scenario, target, &running, &backend, sizes, idle)
                        .await
                        .map_err(|e| Skip(format!("failed during the run: {e}")));
                    running.stop().await;
                    measured
                }
                Err(skip) => Err(skip),
            }
        };
        match outcome {
            Ok(r) => rows.extend(r),
            Err(Skip(reason)) => {
                bar.println(format!(
                    "skipped {} in {}: {reason}",
                    target.name(),
                    scenario.name()
                ));
                skipped.push(Skipped {
                    target: target.name().into(),
                    reason,
                });
            }
        }
        bar.inc(1);
    }
    if matches!(scenario, Scenario::Rr | Scenario::Udp) {
        added_p99(&mut rows);
    }
    let mut columns = columns;
    if cpu_over_floor(&mut rows, &columns) {
        columns.push(Column::new(CPU_OVER_FLOOR, "CPU ×floor"));
    }
    Ok(Report {
        scenario: scenario.name(),
        setup: description,
        machine: Machine::read(),
        columns,
        rows,
        skipped,
    })
}

/// The key of a row's proxy CPU as a multiple of the floor's under the same variant.
pub const CPU_OVER_FLOOR: &str = "cpu_over_floor";

/// Sets each row's `cpu_over_floor`: its proxy CPU (the scenario's `proxy_cpu*` column)
/// divided by its matching floor's under the same variant: the transparent floor's for the
/// transparent targets, the floor's for the others. False when no floor ran (or there is no
/// CPU column).
pub fn cpu_over_floor(rows: &mut [Row], columns: &[Column]) -> bool {
    let Some(key) = columns
        .iter()
        .map(|c| c.key)
        .find(|k| k.starts_with("proxy_cpu"))
    else {
        return false;
    };
    let floor_of = |target: &str| {
        if target.ends_with("-tproxy") {
            Target::FloorTproxy
        } else {
            Target::Floor
        }
    };
    relative_to(rows, floor_of, key, CPU_OVER_FLOOR, |cpu, floor| {
        (floor > 0.0).then(|| cpu / floor)
    })
}

/// Sets each row's `added_p99_us`: its p99 minus direct's p99 under the same variant, the
/// latency the target itself adds. Without a direct row there is nothing to subtract.
pub fn added_p99(rows: &mut [Row]) {
    relative_to(
        rows,
        |_| Target::Direct,
        "p99_us",
        "added_p99_us",
        |p99, direct| Some(p99 - direct),
    );
}

/// Sets `out` on each row that has `key`, from its value and that of its base's row
/// (`base_of` its target) under the same variant; whether any base row has `key`.
fn relative_to(
    rows: &mut [Row],
    base_of: impl Fn(&str) -> Target,
    key: &str,
    out: &'static str,
    combine: impl Fn(f64, f64) -> Option<f64>,
) -> bool {
    let bases: Vec<(String, String, f64)> = rows
        .iter()
        .filter_map(|r| Some((r.target.clone(), r.variant.clone(), r.get(key)?)))
        .collect();
    let mut any = false;
    for row in rows.iter_mut() {
        let base = base_of(&row.target).name();
        let of_variant = bases
            .iter()
            .find(|(t, v, _)| t == base && *v == row.variant);
        any |= of_variant.is_some();
        if let Some(value) = of_variant
            .zip(row.get(key))
            .and_then(|((_, _, b), own)| combine(own, *b))
        {
            row.values.insert(out, value);
        }
    }
    any
}

async fn measure(
    scenario: Scenario,
    target: Target,
    running: &Running,
    backend: &Backend,
    sizes: &Sizes,
    idle_connections: usize,
) -> std::io::Result<Vec<Row>> {
    let name = target.name();
    let (addr, pid, d) = (running.addr, running.pid, sizes.duration());
    Ok(match (scenario, backend) {
        (Scenario::Throughput, Backend::Sink(_, received)) => {
            let mut rows = Vec::new();
            for &streams in &sizes.streams {
                rows.push(throughput::measure(name, addr, pid, received, streams, d).await?);
                tokio::time::sleep(sizes.settle / 4).await;
            }
            rows
        }
        (Scenario::Rr, _) => {
            let paced = rr::Load::Paced {
                per_second: sizes.rate,
            };
            let fixed = format!("{} req/s", sizes.rate);
            vec![
                rr::measure(name, &fixed, addr, pid, paced, sizes.connections, d).await?,
                rr::measure(name, "max", addr, pid, rr::Load::Max, sizes.connections, d).await?,
            ]
        }
        (Scenario::Crr, _) => {
            let load = rr::Load::NewConnections;
            vec![rr::measure(name, "max", addr, pid, load, sizes.connections, d).await?]
        }
        (Scenario::Idle, _) => {
            let pid = pid.ok_or_else(|| std::io::Error::other("no proxy process"))?;
            vec![idle::measure(name, addr, pid, idle_connections).await?]
        }
        (Scenario::Udp, _) => vec![udp::measure(name, addr, pid, sizes.connections, d).await?],
        _ => Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn added_p99_subtracts_direct_of_the_same_variant() {
        let mut rows = vec![
            Row::new("direct", "max").set("p99_us", Some(200.0)),
            Row::new("direct", "5000 req/s").set("p99_us", Some(100.0)),
            Row::new("wao-lb", "max").set("p99_us", Some(250.0)),
            Row::new("wao-lb", "5000 req/s").set("p99_us", Some(130.0)),
            Row::new("haproxy", "other").set("p99_us", Some(999.0)),
        ];
        added_p99(&mut rows);
        assert_eq!(rows[0].get("added_p99_us"), Some(0.0));
        assert_eq!(rows[2].get("added_p99_us"), Some(50.0));
        assert_eq!(rows[3].get("added_p99_us"), Some(30.0));
        assert_eq!(rows[4].get("added_p99_us"), None);
        let mut alone = vec![Row::new("wao-lb", "max").set("p99_us", Some(1.0))];
        added_p99(&mut alone);
        assert_eq!(alone[0].get("added_p99_us"), None);
    }

    #[test]
    fn cpu_is_given_over_the_floor_of_the_same_variant() {
        let columns = [Column::new("rate", "r"), Column::new("proxy_cpu_us", "c")];
        let mut rows = vec![
            Row::new("floor", "max").set("proxy_cpu_us", Some(8.0)),
            Row::new("wao-lb", "max").set("proxy_cpu_us", Some(10.0)),
            Row::new("wao-lb", "paced").set("proxy_cpu_us", Some(10.0)),
            Row::new("direct", "max"),
        ];
        assert!(cpu_over_floor(&mut rows, &columns));
        assert_eq!(rows[0].get(CPU_OVER_FLOOR), Some(1.0));
        assert_eq!(rows[1].get(CPU_OVER_FLOOR), Some(1.25));
        assert_eq!(rows[2].get(CPU_OVER_FLOOR), None);
        assert_eq!(rows[3].get(CPU_OVER_FLOOR), None);
        // The transparent path against the transparent floor only.
        let mut transparent = vec![
            Row::new("floor", "max").set("proxy_cpu_us", Some(8.0)),
            Row::new("floor-tproxy", "max").set("proxy_cpu_us", Some(10.0)),
            Row::new("wao-lb-tproxy", "max").set("proxy_cpu_us", Some(11.0)),
        ];
        assert!(cpu_over_floor(&mut transparent, &columns));
        assert_eq!(transparent[1].get(CPU_OVER_FLOOR), Some(1.0));
        assert_eq!(transparent[2].get(CPU_OVER_FLOOR), Some(1.1));
        let mut no_floor = vec![Row::new("wao-lb", "max").set("proxy_cpu_us", Some(1.0))];
        assert!(!cpu_over_floor(&mut no_floor, &columns));
        assert_eq!(no_floor[0].get(CPU_OVER_FLOOR), None);
    }
}
