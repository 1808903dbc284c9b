//! `throughput`: bulk TCP into the built-in sink over 1 and 8 parallel streams. Reports
//! Gbit/s as counted by the sink, and the proxy's CPU seconds per GB relayed.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::measure::CpuMeter;
use crate::report::{Column, Row};

pub fn columns() -> Vec<Column> {
    vec![
        Column::charted("gbit_per_second", "Gbit/s"),
        Column::charted("proxy_cpu_seconds_per_gb", "proxy CPU s/GB"),
    ]
}

pub fn row(
    target: &str,
    streams: usize,
    bytes: u64,
    seconds: f64,
    proxy_cpu_seconds: Option<f64>,
) -> Row {
    let gb = bytes as f64 / 1e9;
    Row::new(target, &variant(streams))
        .set("gbit_per_second", Some(gb * 8.0 / seconds.max(1e-9)))
        .set(
            "proxy_cpu_seconds_per_gb",
            proxy_cpu_seconds.filter(|_| gb > 0.0).map(|c| c / gb),
        )
}

pub fn variant(streams: usize) -> String {
    match streams {
        1 => "1 stream".into(),
        n => format!("{n} streams"),
    }
}

/// Writes as fast as possible over `streams` connections for `duration`; the rate is what
/// the sink's counter received in that window.
pub async fn measure(
    target: &str,
    addr: SocketAddr,
    pid: Option<u32>,
    received: &Arc<AtomicU64>,
    streams: usize,
    duration: Duration,
) -> std::io::Result<Row> {
    let mut conns = Vec::new();
    for _ in 0..streams.max(1) {
        conns.push(TcpStream::connect(addr).await?);
    }
    let cpu = CpuMeter::start(pid);
    let before = received.load(Ordering::Relaxed);
    let started = Instant::now();
    let end = started + duration;
    let writers: Vec<_> = conns
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                let chunk = vec![0x5au8; 256 * 1024];
                while Instant::now() < end {
                    s.write_all(&chunk).await?;
                }
                Ok::<_, std::io::Error>(())
            })
        })
        .collect();
    tokio::time::sleep_until(end.into()).await;
    let bytes = received.load(Ordering::Relaxed) - before;
    let seconds = started.elapsed().as_secs_f64();
    let cpu_seconds = cpu.seconds();
    for w in writers {
        w.await.map_err(std::io::Error::other)??;
    }
    if bytes == 0 {
        return Err(std::io::Error::other(format!(
            "no bytes reached the sink through {addr}"
        )));
    }
    Ok(row(target, streams, bytes, seconds, cpu_seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_cpu_per_gb() {
        // 2.5 GB in 2 s is 10 Gbit/s; 0.5 s of proxy CPU over 2.5 GB is 0.2 s/GB.
        let r = row("wao-lb", 8, 2_500_000_000, 2.0, Some(0.5));
        assert_eq!(r.variant, "8 streams");
        assert!((r.get("gbit_per_second").unwrap() - 10.0).abs() < 1e-9);
        assert!((r.get("proxy_cpu_seconds_per_gb").unwrap() - 0.2).abs() < 1e-9);
        let direct = row("direct", 1, 1_000_000_000, 1.0, None);
        assert_eq!(direct.variant, "1 stream");
        assert_eq!(direct.get("proxy_cpu_seconds_per_gb"), None);
    }

    #[tokio::test]
    async fn bytes_are_counted_at_the_sink() {
        let (sink, received) = crate::backends::tcp_sink().await.unwrap();
        let r = measure(
            "direct",
            sink.addr,
            None,
            &received,
            2,
            Duration::from_millis(200),
        )
        .await
        .unwrap();
        assert!(r.get("gbit_per_second").unwrap() > 0.01, "{r:?}");
    }
}
