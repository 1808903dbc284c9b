//! `wao-bench`: the load-test harness. Scenarios so far: `energy` (closed-loop power
//! simulation against uniform, WAO and the optimum) and `rr` (1-byte request/response
//! latency over kept-alive or, with `--new-connections`, new connections: direct, wao-lb,
//! HAProxy).

mod energy;
mod rr;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "wao-bench", about = "Benchmarks and proofs for wao-lb")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Closed-loop energy simulation: total watts of uniform, wao, marginal and the optimum.
    Energy {
        /// Where to write energy.json and energy.svg.
        #[arg(long, default_value = "target/wao-bench")]
        out: PathBuf,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// 1-byte request/response over kept-alive connections: rate, p50–p99.9, proxy CPU.
    Rr {
        /// A new connection per request (the crr scenario) instead of kept-alive ones.
        #[arg(long)]
        new_connections: bool,
        #[arg(long, default_value_t = 16)]
        connections: usize,
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// The wao-lb binary to measure.
        #[arg(long, default_value = "target/release/wao-lb")]
        wao_lb: PathBuf,
        #[arg(long, default_value = "target/wao-bench")]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    match Cli::parse().scenario {
        Scenario::Rr {
            new_connections,
            connections,
            seconds,
            wao_lb,
            out,
        } => {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let duration = std::time::Duration::from_secs_f64(seconds.max(0.1));
            let result = std::fs::create_dir_all(&out)
                .and_then(|_| {
                    let mode = if new_connections {
                        rr::Mode::NewConnection
                    } else {
                        rr::Mode::KeepAlive
                    };
                    runtime.block_on(rr::run(&wao_lb, mode, connections, duration, &out))
                })
                .and_then(|results| {
                    print!("{}", rr::table(&results));
                    let json =
                        serde_json::to_string_pretty(&results).map_err(std::io::Error::other)?;
                    let name = if new_connections {
                        "crr.json"
                    } else {
                        "rr.json"
                    };
                    std::fs::write(out.join(name), json)
                });
            match result {
                Ok(()) => {
                    println!("wrote a JSON report to {}", out.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: rr: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Scenario::Energy { out, seed } => {
            let mut reports = Vec::new();
            for mix in energy::mixes() {
                match energy::run_mix(&mix, seed) {
                    Ok(r) => reports.push(r),
                    Err(e) => {
                        eprintln!("error: {}: {e}", mix.name);
                        return ExitCode::FAILURE;
                    }
                }
            }
            print!("{}", energy::table(&reports));
            let written = std::fs::create_dir_all(&out)
                .and_then(|_| {
                    let json =
                        serde_json::to_string_pretty(&reports).map_err(std::io::Error::other)?;
                    std::fs::write(out.join("energy.json"), json)
                })
                .and_then(|_| std::fs::write(out.join("energy.svg"), energy::svg(&reports)));
            match written {
                Ok(()) => {
                    println!("wrote {0}/energy.json and {0}/energy.svg", out.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: writing {}: {e}", out.display());
                    ExitCode::FAILURE
                }
            }
        }
    }
}
