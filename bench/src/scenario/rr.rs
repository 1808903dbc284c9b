//! `rr` and `crr`: 1-byte request/response against the TCP echo. `rr` keeps its
//! connections open and runs twice, paced at a fixed moderate rate and as fast as it goes;
//! `crr` opens a new connection per request. Latency (hdrhistogram) runs from the request's
//! send, or from the connect under `crr`, to the reply's last byte.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::measure::{histogram, percentiles_us, CpuMeter};
use crate::report::{Column, Row};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Load {
    /// Kept-alive connections, each paced so that all together send `per_second`.
    Paced { per_second: f64 },
    /// Kept-alive connections, each sending its next request when the reply arrives.
    Max,
    /// A new connection per request, as fast as it goes.
    NewConnections,
}

pub fn rr_columns() -> Vec<Column> {
    let mut c = latency_columns("req/s");
    c.push(Column::new("added_p99_us", "added p99 µs"));
    c.push(Column::charted("proxy_cpu_us", "proxy CPU µs/req"));
    c
}

/// No "added p99" here: each latency includes the load generator's connect, and direct
/// connections' own tail (p99 about 35 ms on this machine, proxied ones about 5 ms) makes
/// a difference against direct meaningless.
pub fn crr_columns() -> Vec<Column> {
    let mut c = latency_columns("conn/s");
    c.push(Column::charted("proxy_cpu_us", "proxy CPU µs/conn"));
    c
}

fn latency_columns(rate: &'static str) -> Vec<Column> {
    vec![
        Column::charted("rate", rate),
        Column::new("p50_us", "p50 µs"),
        Column::new("p90_us", "p90 µs"),
        Column::charted("p99_us", "p99 µs"),
        Column::new("p999_us", "p99.9 µs"),
    ]
}

/// The row of one measurement: rate, percentiles and the proxy's CPU per request.
pub fn latency_row(
    target: &str,
    variant: &str,
    h: &Histogram<u64>,
    seconds: f64,
    proxy_cpu_seconds: Option<f64>,
) -> Row {
    let n = h.len();
    let [p50, p90, p99, p999] = percentiles_us(h);
    let row = Row::new(target, variant)
        .set("rate", Some(n as f64 / seconds.max(1e-9)))
        .set(
            "proxy_cpu_us",
            proxy_cpu_seconds.map(|c| c * 1e6 / n.max(1) as f64),
        );
    if n == 0 {
        return row;
    }
    row.set("p50_us", Some(p50))
        .set("p90_us", Some(p90))
        .set("p99_us", Some(p99))
        .set("p999_us", Some(p999))
}

async fn connect(target: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect(target).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Runs `connections` request loops for `duration` and returns every latency.
pub async fn drive(
    target: SocketAddr,
    load: Load,
    connections: usize,
    duration: Duration,
) -> std::io::Result<Histogram<u64>> {
    let end = Instant::now() + duration;
    let connections = connections.max(1);
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let mut kept = match load {
            Load::NewConnections => None,
            _ => Some(connect(target).await?),
        };
        let mut pace = match load {
            Load::Paced { per_second } => {
                let every = Duration::from_secs_f64(connections as f64 / per_second.max(1.0));
                let mut i = tokio::time::interval(every);
                i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                Some(i)
            }
            _ => None,
        };
        let mut h = histogram()?;
        tasks.push(tokio::spawn(async move {
            let mut b = [7u8; 1];
            while Instant::now() < end {
                if let Some(p) = pace.as_mut() {
                    p.tick().await;
                }
                let t = Instant::now();
                let mut fresh = match kept {
                    Some(_) => None,
                    None => Some(connect(target).await?),
                };
                let Some(s) = kept.as_mut().or(fresh.as_mut()) else {
                    break;
                };
                s.write_all(&b).await?;
                s.read_exact(&mut b).await?;
                let _ = h.record(t.elapsed().as_nanos() as u64);
            }
            Ok::<_, std::io::Error>(h)
        }));
    }
    let mut all = histogram()?;
    for t in tasks {
        let h = t.await.map_err(std::io::Error::other)??;
        all.add(&h).map_err(std::io::Error::other)?;
    }
    Ok(all)
}

/// One measurement of `load` against `addr`, with the proxy's CPU time over it.
pub async fn measure(
    target: &str,
    variant: &str,
    addr: SocketAddr,
    pid: Option<u32>,
    load: Load,
    connections: usize,
    duration: Duration,
) -> std::io::Result<Row> {
    let cpu = CpuMeter::start(pid);
    let started = Instant::now();
    let h = drive(addr, load, connections, duration).await?;
    Ok(latency_row(
        target,
        variant,
        &h,
        started.elapsed().as_secs_f64(),
        cpu.seconds(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_row_divides_cpu_by_requests() {
        let mut h = histogram().unwrap();
        for _ in 0..1000 {
            h.record(200_000).unwrap();
        }
        let row = latency_row("wao-lb", "max", &h, 2.0, Some(0.01));
        assert_eq!(row.get("rate"), Some(500.0));
        assert!((row.get("proxy_cpu_us").unwrap() - 10.0).abs() < 1e-9);
        assert!((row.get("p99_us").unwrap() - 200.0).abs() < 0.5);
        let direct = latency_row("direct", "max", &h, 2.0, None);
        assert_eq!(direct.get("proxy_cpu_us"), None);
        let empty = latency_row("x", "max", &histogram().unwrap(), 1.0, None);
        assert_eq!(empty.get("rate"), Some(0.0));
        assert_eq!(empty.get("p50_us"), None);
    }

    #[tokio::test]
    async fn paced_load_holds_its_rate() {
        let echo = crate::backends::tcp_echo().await.unwrap();
        let seconds = 1.0;
        let h = drive(
            echo.addr,
            Load::Paced { per_second: 400.0 },
            4,
            Duration::from_secs_f64(seconds),
        )
        .await
        .unwrap();
        let rate = h.len() as f64 / seconds;
        // Paced, not flat out: near 400/s (timer granularity allows some slack), far
        // from the tens of thousands an unpaced loop reaches on loopback.
        assert!((300.0..=440.0).contains(&rate), "{rate}");
    }
}
