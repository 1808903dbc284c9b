//! `udp`: 64-byte request/response datagrams against the UDP echo, each client socket
//! sending its next datagram when the reply arrives. A reply that does not come within
//! 100 ms counts as lost and the socket goes on.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

use crate::measure::{histogram, CpuMeter};
use crate::report::{Column, Row};
use crate::scenario::rr::latency_row;

const LOST_AFTER: Duration = Duration::from_millis(100);

pub fn columns() -> Vec<Column> {
    vec![
        Column::charted("rate", "req/s"),
        Column::new("p50_us", "p50 µs"),
        Column::new("p90_us", "p90 µs"),
        Column::charted("p99_us", "p99 µs"),
        Column::new("p999_us", "p99.9 µs"),
        Column::new("added_p99_us", "added p99 µs"),
        Column::new("lost_percent", "lost %"),
        Column::charted("proxy_cpu_us", "proxy CPU µs/req"),
    ]
}

pub fn lost_percent(sent: u64, lost: u64) -> f64 {
    if sent == 0 {
        0.0
    } else {
        100.0 * lost as f64 / sent as f64
    }
}

pub async fn measure(
    target: &str,
    addr: SocketAddr,
    pid: Option<u32>,
    clients: usize,
    duration: Duration,
) -> std::io::Result<Row> {
    let mut sockets = Vec::new();
    for _ in 0..clients.max(1) {
        let s = UdpSocket::bind("127.0.0.1:0").await?;
        s.connect(addr).await?;
        sockets.push(s);
    }
    let cpu = CpuMeter::start(pid);
    let started = Instant::now();
    let end = started + duration;
    let tasks: Vec<_> = sockets
        .into_iter()
        .map(|s| {
            tokio::spawn(async move {
                let mut h = histogram()?;
                let (mut sent, mut lost) = (0u64, 0u64);
                let request = [0x42u8; 64];
                let mut reply = [0u8; 2048];
                while Instant::now() < end {
                    let t = Instant::now();
                    s.send(&request).await?;
                    sent += 1;
                    match tokio::time::timeout(LOST_AFTER, s.recv(&mut reply)).await {
                        Ok(Ok(64)) => {
                            let _ = h.record(t.elapsed().as_nanos() as u64);
                        }
                        Ok(Ok(_)) | Err(_) => lost += 1,
                        Ok(Err(e)) => return Err(e),
                    }
                }
                Ok::<_, std::io::Error>((h, sent, lost))
            })
        })
        .collect();
    let mut all = histogram()?;
    let (mut sent, mut lost) = (0, 0);
    for t in tasks {
        let (h, s, l) = t.await.map_err(std::io::Error::other)??;
        all.add(&h).map_err(std::io::Error::other)?;
        sent += s;
        lost += l;
    }
    let seconds = started.elapsed().as_secs_f64();
    if all.is_empty() {
        return Err(std::io::Error::other(format!(
            "no datagram came back through {addr}"
        )));
    }
    Ok(latency_row(target, "max", &all, seconds, cpu.seconds())
        .set("lost_percent", Some(lost_percent(sent, lost))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_is_a_share_of_sent() {
        assert_eq!(lost_percent(0, 0), 0.0);
        assert_eq!(lost_percent(200, 1), 0.5);
    }

    #[tokio::test]
    async fn echoed_datagrams_are_counted() {
        let echo = crate::backends::udp_echo().await.unwrap();
        let r = measure("direct", echo.addr, None, 2, Duration::from_millis(200))
            .await
            .unwrap();
        assert!(r.get("rate").unwrap() > 100.0, "{r:?}");
        assert_eq!(r.get("lost_percent"), Some(0.0));
    }
}
