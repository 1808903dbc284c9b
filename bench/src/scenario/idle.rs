//! `idle`: N connections held open through the proxy, each having carried one byte each
//! way, then left idle. Reports the proxy's resident memory per connection, the growth of
//! its VmRSS over N divided by N, and its open files per connection.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::measure::{open_fds, rss_kib};
use crate::report::{Column, Row};

pub fn columns() -> Vec<Column> {
    vec![
        Column::new("connections", "connections"),
        Column::charted("rss_kib_per_connection", "proxy RSS KiB/conn"),
        Column::new("fds_per_connection", "proxy fds/conn"),
    ]
}

/// How many connections fit: the proxy holds two sockets per connection under one
/// open-files limit, and keeps `reserve` files for itself.
pub fn fitting_connections(wanted: usize, open_files_limit: u64, reserve: u64) -> usize {
    let fits = open_files_limit.saturating_sub(reserve) / 2;
    wanted.min(fits as usize)
}

pub fn row(target: &str, connections: usize, rss_growth_kib: i64, fds: usize) -> Row {
    let n = connections.max(1) as f64;
    Row::new(target, &format!("{connections} idle"))
        .set("connections", Some(connections as f64))
        .set("rss_kib_per_connection", Some(rss_growth_kib as f64 / n))
        .set("fds_per_connection", Some(fds as f64 / n))
}

/// One connection through the proxy that has echoed a byte, so the proxy has set up both
/// sides and its relay is in its idle state.
async fn open(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(b"i").await?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await?;
    Ok(s)
}

async fn open_many(addr: SocketAddr, n: usize) -> std::io::Result<Vec<TcpStream>> {
    let mut held = Vec::with_capacity(n);
    let mut batch = tokio::task::JoinSet::new();
    let mut opened = 0;
    while opened < n {
        for _ in 0..64.min(n - opened) {
            batch.spawn(open(addr));
            opened += 1;
        }
        while let Some(r) = batch.join_next().await {
            held.push(r.map_err(std::io::Error::other)??);
        }
    }
    Ok(held)
}

pub async fn measure(
    target: &str,
    addr: SocketAddr,
    pid: u32,
    connections: usize,
) -> std::io::Result<Row> {
    // Warm up first, so one-off allocations (thread buffers, first accept) are not
    // charted as per-connection memory.
    drop(open_many(addr, 64.min(connections)).await?);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_kib(pid).ok_or_else(|| std::io::Error::other("proxy exited"))?;
    let fds_before = open_fds(pid);
    let held = open_many(addr, connections).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kib(pid).ok_or_else(|| std::io::Error::other("proxy exited"))?;
    let fds = open_fds(pid).saturating_sub(fds_before);
    drop(held);
    Ok(row(target, connections, after as i64 - before as i64, fds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_capped_by_the_open_files_limit() {
        assert_eq!(fitting_connections(10_000, 20_000, 100), 9_950);
        assert_eq!(fitting_connections(500, 20_000, 100), 500);
        assert_eq!(fitting_connections(10, 50, 100), 0);
    }

    #[test]
    fn per_connection_values() {
        let r = row("wao-lb", 1000, 2600, 2000);
        assert_eq!(r.variant, "1000 idle");
        assert_eq!(r.get("rss_kib_per_connection"), Some(2.6));
        assert_eq!(r.get("fds_per_connection"), Some(2.0));
    }
}
