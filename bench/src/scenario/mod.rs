//! The scenarios. Each module measures one kind of load against one running target and
//! returns report rows; `run.rs` starts the backends and targets around them.

pub mod energy;
pub mod energy_mix;
pub mod idle;
pub mod kube_scale;
pub mod rr;
pub mod soak;
pub mod throughput;
pub mod udp;

/// The scenarios `wao-bench` can run, in the order `all` runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    Throughput,
    Rr,
    Crr,
    Idle,
    Udp,
    Energy,
    /// Not part of `all`: a minute of churn, run on its own.
    Soak,
    /// Not part of `all`: Kubernetes mode with many Services, against the tests' API server.
    KubeScale,
    All,
}

impl Scenario {
    pub const EACH: [Scenario; 6] = [
        Scenario::Throughput,
        Scenario::Rr,
        Scenario::Crr,
        Scenario::Idle,
        Scenario::Udp,
        Scenario::Energy,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Throughput => "throughput",
            Scenario::Rr => "rr",
            Scenario::Crr => "crr",
            Scenario::Idle => "idle",
            Scenario::Udp => "udp",
            Scenario::Energy => "energy",
            Scenario::Soak => "soak",
            Scenario::KubeScale => "kube-scale",
            Scenario::All => "all",
        }
    }
}
