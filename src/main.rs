//! The `wao-lb` command line: run, check, nft, weights, demo.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use wao_lb::balance::plan::Plan;
use wao_lb::balance::saving::Saving;
use wao_lb::dataplane::ipvs::client::IpvsClient;
use wao_lb::dataplane::ipvs::reconcile;
use wao_lb::dataplane::ipvs::render::render as ipvs_render;
use wao_lb::dataplane::proxy::redirect::nftables::{self, Entry};
use wao_lb::dataplane::proxy::redirect::routing;
use wao_lb::discovery::file::FileConfig;
use wao_lb::health::HealthTable;
use wao_lb::power::weights::NodeWeights;
use wao_lb::settings::DataplaneMode;
use wao_lb::settings::DEFAULT_ADMIN;
use wao_lb::telemetry::logging::{self, LogFormat};
use wao_lb::telemetry::weights_view::{render_table, saving_footer, WeightRow};

#[derive(Parser)]
#[command(
    name = "wao-lb",
    version,
    about = "Energy-aware L4 (TCP/UDP) load balancer"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the balancer (SIGHUP or a change to the file reloads; SIGTERM drains and stops).
    Run {
        /// The YAML config file (see README for its keys).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file: exit 0 (warnings on stderr), or print every error with its
    /// path and exit 2.
    Check {
        /// The YAML config file to validate.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print the nftables ruleset and routing commands transparent mode would apply.
    Nft {
        /// The YAML config file whose services the rules would redirect.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print the IPVS virtual services and destinations `dataplane: ipvs` would program,
    /// in `ipvsadm -Ln`'s layout, without touching the kernel.
    Ipvs {
        /// The YAML config file whose services would be programmed.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print the live weights table of a running wao-lb.
    Weights {
        /// The admin address of the running wao-lb.
        #[arg(long, default_value = DEFAULT_ADMIN)]
        admin: String,
        /// Print the raw JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// A self-contained demo on loopback: three backends, a short load, the weighted split.
    Demo {
        /// How many connections the demo's load sends through the balancer.
        #[arg(long, default_value_t = 3000)]
        connections: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo prints its own story; its logs would only clutter it.
    let level = match cli.command {
        Command::Demo { .. } => "warn",
        _ => "info",
    };
    logging::init(cli.log_format, level);
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Nft { config } => nft(&config),
        Command::Ipvs { config } => ipvs(&config),
        command => {
            let workers = runtime_workers(&command);
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(async_main(command))
        }
    }
}

async fn async_main(command: Command) -> ExitCode {
    match command {
        Command::Run { config } => match wao_lb::app::run(config).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(wao_lb::app::StartError::Config(errors)) => {
                eprintln!("{errors}");
                ExitCode::from(2)
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Weights { admin, json } => weights(&admin, json).await,
        Command::Demo { connections } => match wao_lb::demo::run(connections).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Check { .. } | Command::Nft { .. } | Command::Ipvs { .. } => ExitCode::FAILURE,
    }
}

/// The runtime's worker threads: `proxy.workers` when `run`'s config sets it, else as
/// many CPUs as this process may use (std reads the cgroup's CPU quota, v1 or v2, and the
/// affinity mask), so a DaemonSet with a CPU limit of 2 runs 2 on a 64-core node. A
/// config that cannot be read here gets the default; `run` then reports its errors.
fn runtime_workers(command: &Command) -> usize {
    let available = std::thread::available_parallelism().map_or(1, |n| n.get());
    let configured = match command {
        Command::Run { config } => FileConfig::load(config)
            .ok()
            .and_then(|c| c.settings.proxy.workers),
        _ => None,
    };
    let workers = configured.unwrap_or(available);
    let source = if configured.is_some() {
        "proxy.workers"
    } else {
        "the CPUs this process may use"
    };
    if matches!(command, Command::Run { .. }) {
        tracing::info!(workers, available, "runtime workers from {source}");
    }
    workers
}

fn check(path: &std::path::Path) -> ExitCode {
    match FileConfig::load(path) {
        Ok(c) => {
            for w in &c.warnings {
                eprintln!("warning: {w}");
            }
            if c.settings.dataplane == DataplaneMode::Ipvs {
                if let Err(e) = IpvsClient::connect() {
                    eprintln!("warning: dataplane: ipvs: {e}; `run` would stop at once");
                }
            }
            println!(
                "{}: ok ({} services, {} nodes)",
                path.display(),
                c.desired.services.services.len(),
                c.desired.nodes.len()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            ExitCode::from(2)
        }
    }
}

/// The config at `path`, or exit code 2 after printing its errors.
fn load(path: &std::path::Path) -> Result<FileConfig, ExitCode> {
    FileConfig::load(path).map_err(|errors| {
        eprintln!("{errors}");
        ExitCode::from(2)
    })
}

fn nft(path: &std::path::Path) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let entries: Vec<Entry> = config
        .desired
        .services
        .services
        .values()
        .map(|s| Entry::of(s))
        .collect();
    print!("{}", nftables::render(&entries, &config.settings.tproxy));
    println!("# policy routing:");
    for cmd in routing::install_commands(&config.settings.tproxy) {
        println!("#   ip {}", cmd.join(" "));
    }
    ExitCode::SUCCESS
}

fn ipvs(path: &std::path::Path) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let plan = Plan::build(
        &config.desired.services,
        &NodeWeights::default(),
        &HealthTable::default(),
        config.settings.power.cpu_per_connection,
        config.settings.metrics,
    );
    println!("# before any power reading every backend weighs the same; `wao-lb weights` shows live ones");
    print!("{}", ipvs_render(&reconcile::desired(&plan)));
    ExitCode::SUCCESS
}

async fn weights(admin: &str, json: bool) -> ExitCode {
    let url = format!("http://{admin}/weights");
    let response = match reqwest::get(&url).await {
        Ok(r) if r.status().is_success() => r,
        Ok(r) => {
            eprintln!("error: {url} answered {}", r.status());
            return ExitCode::FAILURE;
        }
        Err(e) => {
            let mut cause: &dyn std::error::Error = &e;
            while let Some(inner) = cause.source() {
                cause = inner;
            }
            eprintln!(
                "error: no wao-lb admin API at {admin} ({cause}).\n\
                 Is wao-lb running? If its admin.listen is elsewhere, pass --admin HOST:PORT."
            );
            return ExitCode::FAILURE;
        }
    };
    let rows: Vec<WeightRow> = match response.json().await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {url} did not return a weights table: {e}");
            return ExitCode::FAILURE;
        }
    };
    if json {
        match serde_json::to_string_pretty(&rows) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", render_table(&rows));
        // The footer: what the split saves. An older wao-lb without `/saving` has none.
        let saving = format!("http://{admin}/saving");
        if let Ok(r) = reqwest::get(&saving).await {
            if let Ok(s) = r.json::<Saving>().await {
                print!("{}", saving_footer(&s));
            }
        }
    }
    ExitCode::SUCCESS
}
