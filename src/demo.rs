//! `wao-lb demo`: a self-contained run on loopback. Three echo servers stand for three nodes
//! with different power curves; the balancer runs in this process on the embedded
//! `config/demo.yaml.in`; a short load goes through it; then the weights and the share of
//! connections each backend really received are printed.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use rand::Rng;
use rand_distr::{Distribution, LogNormal};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::app;
use crate::discovery::file::FileConfig;
use crate::telemetry::weights_view::render_table;

const TEMPLATE: &str = include_str!("../config/demo.yaml.in");
const CONCURRENCY: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("demo setup: {0}")]
    Io(#[from] std::io::Error),
    #[error("demo config: {0}")]
    Config(#[from] crate::settings::ConfigErrors),
    #[error("{0}")]
    Start(#[from] app::StartError),
    #[error("{failed} of {total} demo connections failed")]
    Failed { failed: u64, total: u64 },
}

/// Runs the demo with `connections` connections and prints the result.
pub async fn run(connections: u64) -> Result<(), DemoError> {
    let mut ports = Vec::new();
    let mut counters = Vec::new();
    for _ in 0..3 {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        ports.push(listener.local_addr()?.port());
        let count = Arc::new(AtomicU64::new(0));
        counters.push(count.clone());
        tokio::spawn(echo_server(listener, count));
    }
    let frontend_port = free_port().await?;
    let yaml = TEMPLATE
        .replace("{FRONTEND_PORT}", &frontend_port.to_string())
        .replace("{PORT_A}", &ports[0].to_string())
        .replace("{PORT_B}", &ports[1].to_string())
        .replace("{PORT_C}", &ports[2].to_string());
    let config = FileConfig::parse(&yaml)?;
    let running = app::start(config, None).await?;
    let frontend: SocketAddr = ([127, 0, 0, 1], frontend_port).into();

    println!(
        "wao-lb demo: 3 backends on loopback, balancer at {frontend}, admin at http://{}",
        running.admin_addr
    );
    let started = Instant::now();
    let failed = drive(frontend, connections).await;
    let elapsed = started.elapsed();

    println!();
    println!(
        "Weights (from the power model; SHARE is what the table gives, PICKED what it chose):"
    );
    print!("{}", render_table(&running.weights()));
    println!();
    println!("Connections each backend actually received:");
    let total: u64 = counters.iter().map(|c| c.load(Ordering::Relaxed)).sum();
    let table = running.weights();
    for (row, count) in table.iter().zip(&counters) {
        let n = count.load(Ordering::Relaxed);
        let got = if total == 0 {
            0.0
        } else {
            n as f64 / total as f64 * 100.0
        };
        println!(
            "  {:<10} {:>6} connections  {:>5.1}%  (weight share {:>5.1}%)",
            row.node,
            n,
            got,
            row.share * 100.0
        );
    }
    println!(
        "\n{connections} connections in {:.2}s ({:.0}/s), {failed} failed.",
        elapsed.as_secs_f64(),
        connections as f64 / elapsed.as_secs_f64().max(1e-9)
    );
    running.stop().await;
    if failed > 0 {
        return Err(DemoError::Failed {
            failed,
            total: connections,
        });
    }
    Ok(())
}

async fn free_port() -> std::io::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    Ok(l.local_addr()?.port())
}

/// An echo server that counts the connections it accepts.
async fn echo_server(listener: TcpListener, count: Arc<AtomicU64>) {
    while let Ok((mut stream, _)) = listener.accept().await {
        count.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let (mut r, mut w) = stream.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
        });
    }
}

/// Opens `total` connections, `CONCURRENCY` at a time, each sending a request of a
/// log-normal size and checking the echo. Returns how many failed.
async fn drive(frontend: SocketAddr, total: u64) -> u64 {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} connections {per_sec} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let next = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..CONCURRENCY {
        let (next, failed, bar) = (next.clone(), failed.clone(), bar.clone());
        workers.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < total {
                if one_request(frontend).await.is_err() {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                bar.inc(1);
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    bar.finish_with_message("done");
    failed.load(Ordering::Relaxed)
}

async fn one_request(frontend: SocketAddr) -> std::io::Result<()> {
    let size = {
        let mut rng = rand::rng();
        let dist = LogNormal::new(7.0, 1.0).map_err(std::io::Error::other)?;
        (dist.sample(&mut rng) as usize).clamp(1, 256 * 1024)
    };
    let payload: Vec<u8> = {
        let mut rng = rand::rng();
        (0..size).map(|_| rng.random()).collect()
    };
    let mut s = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(frontend))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect"))??;
    let (mut r, mut w) = s.split();
    let write = async {
        w.write_all(&payload).await?;
        w.shutdown().await
    };
    let mut echoed = Vec::with_capacity(size);
    let read = r.read_to_end(&mut echoed);
    let (wr, rd) = tokio::join!(write, read);
    wr?;
    rd?;
    if echoed != payload {
        return Err(std::io::Error::other("echo mismatch"));
    }
    Ok(())
}
