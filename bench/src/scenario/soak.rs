//! The soak scenario: wao-lb under churn for a while. Clients open connections of random
//! sizes through it and check every byte that comes back, while the echo backends behind it
//! are killed (SIGKILL) and restarted and its config file is rewritten. Every connection
//! ends as one of: byte-exact; reset (the client saw an error); silently short (a clean
//! close before all bytes came back); corrupt (wrong bytes); stalled (no end within a
//! minute). The last three are defects and fail the run. Each second it samples wao-lb's
//! RSS and open descriptors.
//!
//! The backends reset their connections when they die (see `backends::Closing`), so a
//! clean close the client sees can only come from a backend that finished: any silently
//! short connection is the proxy's doing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::backends::{Closing, EchoProcess};
use crate::measure::{admin_get, open_fds, rss_kib};
use crate::targets::{free_addr, spawn, stop_gracefully, wait_serving, Proto, Setup};

/// How long and how hard the soak runs.
#[derive(Debug, Clone)]
pub struct Sizes {
    pub seconds: f64,
    /// Connections in flight at once.
    pub clients: usize,
    /// Payloads are log-uniform from 1 byte to this.
    pub max_bytes: u64,
    pub backends: usize,
    pub seed: u64,
}

impl Sizes {
    pub fn new(seconds: f64, clients: usize, seed: u64) -> Sizes {
        Sizes {
            seconds,
            clients: clients.max(1),
            max_bytes: 1 << 20,
            backends: 4,
            seed,
        }
    }

    /// A few seconds of everything, for CI.
    pub fn smoke() -> Sizes {
        Sizes {
            max_bytes: 256 << 10,
            ..Sizes::new(4.0, 8, 1)
        }
    }
}

/// How the connections ended.
#[derive(Debug, Default, Serialize)]
pub struct Outcomes {
    pub byte_exact: AtomicU64,
    pub reset: AtomicU64,
    pub silently_short: AtomicU64,
    pub corrupt: AtomicU64,
    pub stalled: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Exact,
    Reset,
    Short,
    Corrupt,
    Stalled,
}

impl Outcomes {
    fn count(&self, o: Outcome) {
        let c = match o {
            Outcome::Exact => &self.byte_exact,
            Outcome::Reset => &self.reset,
            Outcome::Short => &self.silently_short,
            Outcome::Corrupt => &self.corrupt,
            Outcome::Stalled => &self.stalled,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    fn total(&self) -> u64 {
        [
            &self.byte_exact,
            &self.reset,
            &self.silently_short,
            &self.corrupt,
            &self.stalled,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
    }

    /// Connections that lost or changed data without the client seeing an error.
    pub fn defects(&self) -> u64 {
        self.silently_short.load(Ordering::Relaxed)
            + self.corrupt.load(Ordering::Relaxed)
            + self.stalled.load(Ordering::Relaxed)
    }
}

/// wao-lb's footprint at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub seconds: f64,
    pub connections: u64,
    pub rss_kib: u64,
    pub fds: usize,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub setup: String,
    pub outcomes: Outcomes,
    pub bytes_verified: u64,
    pub backend_kills: u64,
    pub config_rewrites: u64,
    pub reloads_applied: Option<f64>,
    pub reloads_refused: Option<f64>,
    pub samples: Vec<Sample>,
}

impl Report {
    pub fn table(&self) -> String {
        let o = &self.outcomes;
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let reloads = |v: Option<f64>| v.map_or("?".into(), |v| format!("{v}"));
        let mut out = format!(
            "== soak: {}\nconnections {}: byte-exact {}, reset {}, silently short {}, corrupt {}, stalled {}; {:.1} MB verified\n\
             backend kills {}, config rewrites {} (reloads applied {}, refused {})\n",
            self.setup,
            o.total(),
            n(&o.byte_exact),
            n(&o.reset),
            n(&o.silently_short),
            n(&o.corrupt),
            n(&o.stalled),
            self.bytes_verified as f64 / 1e6,
            self.backend_kills,
            self.config_rewrites,
            reloads(self.reloads_applied),
            reloads(self.reloads_refused),
        );
        out.push_str("      t  connections   RSS KiB    fds\n");
        for s in &self.samples {
            out.push_str(&format!(
                "{:>6.0}s {:>12} {:>9} {:>6}\n",
                s.seconds, s.connections, s.rss_kib, s.fds
            ));
        }
        out
    }

    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// The byte at offset `i` of payload `seed`: a keyed stream any chunking reproduces.
fn fill(seed: u64, offset: u64, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        let at = offset + i as u64;
        let word = splitmix(seed ^ (at >> 3).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        *b = word.to_le_bytes()[(at & 7) as usize];
    }
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One connection: send `size` bytes of payload `seed`, half-close, read the echo and check
/// it byte by byte.
async fn one_connection(
    frontend: SocketAddr,
    size: u64,
    seed: u64,
    verified: &AtomicU64,
) -> Outcome {
    let Ok(Ok(stream)) =
        tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(frontend)).await
    else {
        return Outcome::Reset;
    };
    let (mut r, mut w) = stream.into_split();
    let write = async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut sent = 0u64;
        while sent < size {
            let n = (size - sent).min(buf.len() as u64) as usize;
            fill(seed, sent, &mut buf[..n]);
            w.write_all(&buf[..n]).await?;
            sent += n as u64;
        }
        w.shutdown().await
    };
    let read = async move {
        let (mut buf, mut want) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
        let mut got = 0u64;
        loop {
            let n = r.read(&mut buf).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(if got == size {
                    Outcome::Exact
                } else {
                    Outcome::Short
                });
            }
            if got + n as u64 > size {
                return Ok(Outcome::Corrupt);
            }
            fill(seed, got, &mut want[..n]);
            if buf[..n] != want[..n] {
                return Ok(Outcome::Corrupt);
            }
            got += n as u64;
            verified.fetch_add(n as u64, Ordering::Relaxed);
        }
    };
    let both = async { tokio::join!(write, read) };
    match tokio::time::timeout(Duration::from_secs(60), both).await {
        Err(_) => Outcome::Stalled,
        Ok((_, Ok(Outcome::Corrupt))) => Outcome::Corrupt,
        Ok((Err(_), _)) | Ok((_, Err(_))) => Outcome::Reset,
        Ok((Ok(()), Ok(o))) => o,
    }
}

/// The config wao-lb runs with: the echo backends on their nodes with these weights.
fn config(admin: SocketAddr, frontend: SocketAddr, backends: &[(u16, f64)]) -> String {
    let mut text = format!(
        "admin: {{listen: \"{admin}\"}}\npower: {{interval: 1s}}\nproxy: {{connectTimeout: 1s}}\n\
         services:\n  - name: soak\n    address: \"{frontend}\"\n    backends:\n"
    );
    for (i, (port, _)) in backends.iter().enumerate() {
        text.push_str(&format!(
            "      - {{address: \"127.0.0.1:{port}\", node: n{i}}}\n"
        ));
    }
    text.push_str("nodes:\n");
    for (i, (_, weight)) in backends.iter().enumerate() {
        text.push_str(&format!("  n{i}: {{weight: {weight:.2}}}\n"));
    }
    text
}

/// Rewrites the config: in place (truncate, then write, as an editor may) or by rename.
fn rewrite(path: &Path, text: &str, in_place: bool) -> std::io::Result<()> {
    if in_place {
        return std::fs::write(path, text);
    }
    let next = path.with_extension("next");
    std::fs::write(&next, text)?;
    std::fs::rename(next, path)
}

/// Runs the soak against the wao-lb binary of `setup`.
pub async fn run(setup: &Setup, sizes: &Sizes) -> std::io::Result<Report> {
    let port = || free_addr(std::net::Ipv4Addr::LOCALHOST, Proto::Tcp);
    let (frontend, admin) = (port()?, port()?);
    let mut backends = Vec::new();
    for _ in 0..sizes.backends.max(2) {
        backends.push(Some(EchoProcess::start(0, Closing::ResetOnDeath)?));
    }
    let ports: Vec<u16> = backends.iter().flatten().map(|b| b.addr.port()).collect();
    let path: PathBuf = setup.work.join("soak.yaml");
    let all: Vec<(u16, f64)> = ports.iter().map(|p| (*p, 1.0)).collect();
    std::fs::write(&path, config(admin, frontend, &all))?;
    let log = setup.work.join("soak.log");
    let path_arg = path.to_string_lossy().into_owned();
    let mut child = spawn(
        setup,
        &setup.wao_lb.to_string_lossy(),
        &["run", "--config", &path_arg],
        &log,
    )
    .map_err(|s| std::io::Error::other(s.0))?;
    let pid = child.id();
    wait_serving(&mut Some(&mut child), frontend, Proto::Tcp, Some(&log))
        .await
        .map_err(|s| std::io::Error::other(s.0))?;

    let outcomes = Arc::new(Outcomes::default());
    let verified = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(sizes.seconds.max(1.0));
    let mut clients = Vec::new();
    for c in 0..sizes.clients {
        let (outcomes, verified) = (outcomes.clone(), verified.clone());
        let (max, seed) = (sizes.max_bytes.max(1) as f64, sizes.seed);
        clients.push(tokio::spawn(async move {
            let mut rng =
                SmallRng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(c as u64));
            while Instant::now() < deadline {
                // Log-uniform sizes: as many tiny requests as bulk transfers.
                let size = max.powf(rng.random::<f64>()).round().max(1.0) as u64;
                let o = one_connection(frontend, size, rng.random(), &verified).await;
                outcomes.count(o);
            }
        }));
    }

    // Churn until the deadline: a kill every second (the backend is back 0.2-1 s later)
    // and a config rewrite every 1.3 s, alternating between all backends at random
    // weights and one backend left out; then a sample of wao-lb each second.
    let mut rng = SmallRng::seed_from_u64(sizes.seed);
    let (mut kills, mut rewrites) = (0u64, 0u64);
    let mut samples = Vec::new();
    let mut next_kill = start + Duration::from_secs(1);
    let mut next_rewrite = start + Duration::from_millis(1300);
    let mut next_sample = start;
    let mut revive: Option<(usize, Instant)> = None;
    while Instant::now() < deadline {
        let now = Instant::now();
        if now >= next_sample {
            samples.push(Sample {
                seconds: now.duration_since(start).as_secs_f64(),
                connections: outcomes.total(),
                rss_kib: rss_kib(pid).unwrap_or(0),
                fds: open_fds(pid),
            });
            next_sample += Duration::from_secs(1);
        }
        if let Some((i, at)) = revive {
            if now >= at {
                backends[i] = Some(EchoProcess::start(ports[i], Closing::ResetOnDeath)?);
                revive = None;
            }
        } else if now >= next_kill {
            let i = rng.random_range(0..backends.len());
            if let Some(b) = backends[i].take() {
                b.kill();
                kills += 1;
            }
            revive = Some((i, now + Duration::from_millis(rng.random_range(200..1000))));
            next_kill = now + Duration::from_secs(1);
        }
        if now >= next_rewrite {
            let list: Vec<(u16, f64)> = if rewrites % 2 == 0 {
                ports
                    .iter()
                    .map(|p| (*p, rng.random_range(0.1..10.0)))
                    .collect()
            } else {
                let out = rng.random_range(0..ports.len());
                ports
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != out)
                    .map(|(_, p)| (*p, 1.0))
                    .collect()
            };
            rewrite(&path, &config(admin, frontend, &list), rng.random())?;
            rewrites += 1;
            next_rewrite = now + Duration::from_millis(1300);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for c in clients {
        let _ = c.await;
    }
    samples.push(Sample {
        seconds: start.elapsed().as_secs_f64(),
        connections: outcomes.total(),
        rss_kib: rss_kib(pid).unwrap_or(0),
        fds: open_fds(pid),
    });
    let metrics = admin_get(admin, "/metrics")
        .await
        .map(|(_, body)| body)
        .unwrap_or_default();
    stop_gracefully(&mut child);
    // A reload series that was never counted is absent from the text: zero, if the text came.
    let reloads = |result: &str| {
        let series = format!("wao_lb_config_reloads_total{{result=\"{result}\"}}");
        metric(&metrics, &series).or((!metrics.is_empty()).then_some(0.0))
    };
    let outcomes = Arc::try_unwrap(outcomes).unwrap_or_default();
    Ok(Report {
        setup: format!(
            "{:.0} s, {} clients, payloads 1 B-{} KiB log-uniform, {} echo backends (SIGKILL every 1 s, back 0.2-1 s later), the config rewritten every 1.3 s",
            sizes.seconds,
            sizes.clients,
            sizes.max_bytes >> 10,
            ports.len()
        ),
        outcomes,
        bytes_verified: verified.load(Ordering::Relaxed),
        backend_kills: kills,
        config_rewrites: rewrites,
        reloads_applied: reloads("success"),
        reloads_refused: reloads("failure"),
        samples,
    })
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_bytes_do_not_depend_on_chunking() {
        let mut whole = vec![0u8; 1000];
        fill(7, 0, &mut whole);
        let mut parts = vec![0u8; 1000];
        for (i, chunk) in parts.chunks_mut(333).enumerate() {
            fill(7, i as u64 * 333, chunk);
        }
        assert_eq!(whole, parts);
        let mut other = vec![0u8; 1000];
        fill(8, 0, &mut other);
        assert_ne!(whole, other, "another seed, another payload");
    }

    #[test]
    fn the_config_lists_every_backend_and_weight() {
        let text = config(
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
            &[(3000, 1.0), (3001, 2.5)],
        );
        let parsed = wao_lb::discovery::file::FileConfig::parse(&text).unwrap();
        let service = parsed.desired.services.services.values().next().unwrap();
        assert_eq!(service.backends.len(), 2);
        assert!(text.contains("n1: {weight: 2.50}"));
    }
}
