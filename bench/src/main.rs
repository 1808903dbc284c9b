//! `wao-bench`: the load-test harness. It runs scenarios (throughput, rr, crr, idle, udp,
//! energy; and `soak`, wao-lb alone under churn) against targets (direct, wao-lb bound or transparent, HAProxy, nginx stream,
//! nftables DNAT) in one
//! go, pinning each proxy alone on one core and the load on the other, and writes a table,
//! a JSON report and an SVG chart per scenario.

mod backends;
mod floor;
mod measure;
mod netns;
mod report;
mod run;
mod scenario;
mod targets;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};

use scenario::{energy, energy_mix, kube_scale, soak, Scenario};
use targets::{Setup, Target};

#[derive(Parser)]
#[command(
    name = "wao-bench",
    about = "Load tests for wao-lb against direct, HAProxy, nginx and the kernel's DNAT"
)]
struct Cli {
    /// Scenarios to run, in order (`all` runs each).
    #[arg(value_enum, default_value = "all")]
    scenarios: Vec<Scenario>,
    /// Targets to measure, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_values = ["direct", "floor", "floor-tproxy", "wao-lb", "wao-lb-tproxy", "haproxy", "nginx", "dnat"])]
    targets: Vec<Target>,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Threads (wao-lb, HAProxy) or worker processes (nginx) per proxy. Above 1, nothing is
    /// pinned: proxies and load share the cores.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// The floor's pipe size in bytes (F_SETPIPE_SZ; the default is the kernel's and
    /// tokio-splice's), to measure what larger pipes save in bulk transfers.
    #[arg(long, default_value_t = floor::PIPE_BYTES)]
    floor_pipe_bytes: usize,
    /// Connections (rr, crr, soak) or sockets (udp) in parallel.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// The paced rr rate, requests per second over all connections.
    #[arg(long, default_value_t = 5000.0)]
    rate: f64,
    /// Idle connections to hold (capped by the open-files limit, with a line saying so).
    #[arg(long, default_value_t = 10_000)]
    idle: usize,
    /// Tiny sizes that exercise every path in seconds (CI).
    #[arg(long)]
    smoke: bool,
    /// The wao-lb binary to measure.
    #[arg(long, default_value = "target/release/wao-lb")]
    wao_lb: PathBuf,
    /// Where the JSON and SVG files go.
    #[arg(long, default_value = "target/wao-bench")]
    out: PathBuf,
    /// Seed of the energy simulation (and of `--generate`).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// energy: simulate the cluster in this mix file (YAML or JSON) instead of the shipped
    /// mixes; repeatable.
    #[arg(long)]
    mix: Vec<PathBuf>,
    /// energy: simulate this many random clusters from the shipped curves and report the
    /// distribution of each policy's share of the optimal saving.
    #[arg(long)]
    generate: Option<usize>,
    /// energy: the policies see loads this many power intervals old (overrides the mixes').
    #[arg(long)]
    lag: Option<usize>,
    /// energy: multiplicative noise on the predictions the policies see, as standard
    /// deviations `SHARED,INDEPENDENT` (one draw per tick for every node, one per node).
    #[arg(long, value_delimiter = ',')]
    noise: Option<Vec<f64>>,
    /// energy: one pick per new connection, connections lasting 5 ticks on average,
    /// instead of 20,000 fresh picks per tick.
    #[arg(long)]
    realistic_picks: bool,
    /// energy: print one JSON object per mix instead of the table.
    #[arg(long)]
    json: bool,
    /// Opted-in Services in the kube-scale scenario (5 endpoints each).
    #[arg(long, default_value_t = 10_000)]
    services: usize,
    /// How long the soak runs, in seconds.
    #[arg(long, default_value_t = 60.0)]
    soak_seconds: f64,
    /// Serve a TCP echo and print its address (the idle and soak backends' process).
    #[arg(long, hide = true)]
    serve_echo: bool,
    /// The echo's port (0: any).
    #[arg(long, hide = true, default_value_t = 0)]
    echo_port: u16,
    /// The echo resets its connections when it dies.
    #[arg(long, hide = true)]
    echo_resets: bool,
    /// Run the floor proxy (`tcp` or `udp`) from `--floor-listen` to `--floor-backend`.
    #[arg(long, hide = true)]
    serve_floor: Option<String>,
    #[arg(long, hide = true)]
    floor_listen: Option<std::net::SocketAddr>,
    #[arg(long, hide = true)]
    floor_backend: Option<std::net::SocketAddr>,
    /// The floor sits behind the TPROXY rules.
    #[arg(long, hide = true)]
    floor_transparent: bool,
    /// SO_MARK of the floor's upstream (and reply) sockets.
    #[arg(long, hide = true)]
    floor_mark: Option<u32>,
}

/// The clusters the energy scenario runs: the mix files given, else generated ones, else
/// the shipped mixes.
fn energy_mixes(cli: &Cli) -> Result<Vec<energy::Mix>, String> {
    if !cli.mix.is_empty() {
        return cli
            .mix
            .iter()
            .map(|path| {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                energy_mix::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
            })
            .collect();
    }
    match cli.generate {
        Some(n) => energy_mix::generate(n, cli.seed),
        None => energy_mix::shipped(),
    }
}

/// Pins the calling thread, and every thread it later starts, to `core`.
fn pin_to_core(core: usize) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_ZERO/CPU_SET only write into our local set and
    // sched_setaffinity only reads it. pid 0 is the calling thread.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Prints `text` on stdout. A stdout that was closed (`wao-bench | head`) loses the tables,
/// not the run: the measurements go on, their JSON files are written and every peer is
/// stopped, where `print!` would panic at the first line.
fn show(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(proto) = &cli.serve_floor {
        let (Some(listen), Some(backend)) = (cli.floor_listen, cli.floor_backend) else {
            eprintln!("--serve-floor needs --floor-listen and --floor-backend");
            return ExitCode::FAILURE;
        };
        let served = match proto.as_str() {
            "tcp" => floor::serve_tcp(listen, backend, cli.floor_mark, cli.floor_pipe_bytes),
            "udp" => floor::serve_udp(listen, backend, cli.floor_transparent, cli.floor_mark),
            other => Err(std::io::Error::other(format!("no floor for {other}"))),
        };
        if let Err(e) = served {
            eprintln!("floor: {e}");
        }
        return ExitCode::FAILURE;
    }
    if cli.serve_echo {
        let closing = if cli.echo_resets {
            backends::Closing::ResetOnDeath
        } else {
            backends::Closing::Plain
        };
        let served = runtime()
            .and_then(|rt| rt.block_on(backends::serve_echo_forever(cli.echo_port, closing)));
        if let Err(e) = served {
            eprintln!("error: echo backend: {e}");
            return ExitCode::FAILURE;
        }
        return ExitCode::SUCCESS;
    }
    match bench(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bench(cli: Cli) -> std::io::Result<()> {
    let mut scenarios: Vec<Scenario> = Vec::new();
    for s in &cli.scenarios {
        let each: &[Scenario] = if *s == Scenario::All {
            &Scenario::EACH
        } else {
            std::slice::from_ref(s)
        };
        for s in each {
            if !scenarios.contains(s) {
                scenarios.push(*s);
            }
        }
    }
    let mut targets: Vec<Target> = Vec::new();
    for t in &cli.targets {
        if !targets.contains(t) {
            targets.push(*t);
        }
    }
    let sizes = if cli.smoke {
        run::Sizes::smoke()
    } else {
        run::Sizes {
            seconds: cli.seconds,
            connections: cli.connections,
            rate: cli.rate,
            idle: cli.idle,
            streams: vec![1, 8],
            settle: Duration::from_secs(1),
        }
    };
    std::fs::create_dir_all(&cli.out)?;
    // Absolute: nginx resolves relative paths against its own prefix.
    let work = cli.out.join("work");
    std::fs::create_dir_all(&work)?;
    let work = std::fs::canonicalize(work)?;

    // Fairness on two cores: the proxy alone on core 1, the harness (load and backends)
    // on core 0. Children started with taskset move; everything else inherits core 0.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = cli.workers.max(1);
    let proxy_core = if workers > 1 {
        show(&format!(
            "{workers} workers per proxy: proxies and load share every core, unpinned\n"
        ));
        None
    } else if cores >= 2 {
        pin_to_core(0)?;
        Some(1)
    } else {
        show("one core: the proxy and the load share it, so rates are lower bounds\n");
        None
    };
    let open_files = wao_lb::dataplane::proxy::socket::raise_nofile_limit()?;
    if scenarios.contains(&Scenario::Idle) {
        let fits = scenario::idle::fitting_connections(sizes.idle, open_files, 100);
        if fits < sizes.idle {
            show(&format!(
                "idle: {} connections need two sockets each in the proxy; the open-files limit is {open_files}, so the run holds {fits}\n",
                sizes.idle
            ));
        }
    }
    let setup = Setup {
        wao_lb: cli.wao_lb.clone(),
        work,
        proxy_core,
        open_files,
        workers,
        floor_pipe_bytes: cli.floor_pipe_bytes,
    };

    let total: u64 = scenarios.iter().map(|s| run::steps(*s, &targets)).sum();
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .map_err(std::io::Error::other)?,
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    let rt = runtime()?;
    let mut written = Vec::new();
    let mut failed = None;
    for s in scenarios {
        if s == Scenario::KubeScale {
            bar.set_message("kube-scale");
            let _ = netns::enter_fresh();
            let sizes = if cli.smoke {
                kube_scale::Sizes::smoke()
            } else {
                kube_scale::Sizes::new(cli.services)
            };
            let report = rt.block_on(kube_scale::run(&setup, &sizes))?;
            bar.suspend(|| show(&report.table()));
            std::fs::write(cli.out.join("kube-scale.json"), report.json())?;
        } else if s == Scenario::Soak {
            bar.set_message("soak");
            let _ = netns::enter_fresh();
            let sizes = if cli.smoke {
                soak::Sizes::smoke()
            } else {
                soak::Sizes::new(cli.soak_seconds, cli.connections, cli.seed)
            };
            let report = rt.block_on(soak::run(&setup, &sizes))?;
            bar.suspend(|| show(&report.table()));
            std::fs::write(cli.out.join("soak.json"), report.json())?;
            if report.outcomes.defects() > 0 {
                failed = Some(format!(
                    "soak: {} connections lost or changed data without an error",
                    report.outcomes.defects()
                ));
            }
        } else if s == Scenario::Energy {
            bar.set_message("energy simulation");
            let mut mixes = energy_mixes(&cli).map_err(std::io::Error::other)?;
            if cli
                .noise
                .as_ref()
                .is_some_and(|n| n.len() != 2 || n.iter().any(|v| !(0.0..=1.0).contains(v)))
            {
                return Err(std::io::Error::other(
                    "--noise takes SHARED,INDEPENDENT: two standard deviations in 0..1, e.g. 0.05,0.02",
                ));
            }
            for m in &mut mixes {
                if let Some(lag) = cli.lag {
                    m.lag_intervals = lag;
                }
                m.realistic_picks |= cli.realistic_picks;
                if let Some(noise) = &cli.noise {
                    m.noise_shared = noise.first().copied().unwrap_or(0.0);
                    m.noise_independent = noise.get(1).copied().unwrap_or(0.0);
                }
            }
            let reports = energy::run_all(&mixes, cli.seed);
            bar.suspend(|| {
                if cli.json {
                    for r in &reports {
                        show(&format!("{}\n", energy::json_line(r)));
                    }
                } else if cli.generate.is_some() {
                    show(&energy::distribution(&reports));
                } else {
                    show(&energy::table(&reports));
                }
            });
            let json = serde_json::to_string_pretty(&reports).map_err(std::io::Error::other)?;
            std::fs::write(cli.out.join("energy.json"), json)?;
            std::fs::write(cli.out.join("energy.svg"), energy::svg(&reports))?;
        } else {
            let report = rt.block_on(run::scenario(s, &targets, &setup, &sizes, &bar))?;
            bar.suspend(|| show(&format!("{}\n", report.table())));
            std::fs::write(cli.out.join(format!("{}.json", s.name())), report.json())?;
            std::fs::write(cli.out.join(format!("{}.svg", s.name())), report.svg())?;
        }
        written.push(s.name());
    }
    bar.finish_and_clear();
    let wrote = format!(
        "wrote {} .json (and .svg) to {}",
        written.join(", "),
        cli.out.display()
    );
    // With --json, stdout carries only the JSON lines others script against.
    if cli.json {
        eprintln!("{wrote}");
    } else {
        show(&format!("{wrote}\n"));
    }
    match failed {
        Some(why) => Err(std::io::Error::other(why)),
        None => Ok(()),
    }
}
