//! What a node is to the power side: its power inputs (CPU %, inlet °C, ΔP Pa, each from a
//! source with its own refresh interval, timeout and staleness limit), the plausible range
//! of each quantity, and its power model. Discovery fills these in; power runs them.

use super::url::HttpUrl;
use std::sync::Arc;
use std::time::Duration;

use super::curve::CurveProfile;

/// CPU capacity assumed for a node whose `cores` is not given.
pub const DEFAULT_NODE_CORES: f64 = 16.0;

/// One node's power inputs and model.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSpec {
    /// CPU capacity in cores; turns a per-connection cost in millicores into percent.
    pub cores: f64,
    pub cpu: Input,
    pub inlet: Input,
    pub delta_p: Input,
    pub weighting: NodeWeighting,
}

/// Where one input comes from and how often.
#[derive(Debug, Clone, PartialEq)]
pub struct Input {
    pub source: Source,
    pub timing: Timing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Timing {
    pub interval: Duration,
    pub timeout: Duration,
    /// The last good value is used this long; after that the input counts as missing.
    pub stale_after: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(3),
            stale_after: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    Static(f64),
    /// A Prometheus node_exporter: CPU utilisation from `node_cpu_seconds_total` rates.
    NodeExporter {
        url: HttpUrl,
    },
    /// A BMC's Redfish API: inlet temperature, vendor path detected automatically.
    /// `insecure` accepts the self-signed certificates BMCs usually have.
    Redfish {
        url: HttpUrl,
        auth: Option<BasicAuth>,
        insecure: bool,
    },
    /// An ipmi_exporter: `ipmi_temperature_celsius{name="Ambient"}`.
    IpmiExporter {
        url: HttpUrl,
    },
    /// WAO's DifferentialPressureAPI: `GET {url}/api/sensor/by_nodename/{node}`.
    Dpapi {
        url: HttpUrl,
        node: String,
    },
    /// A value discovery publishes on the `published::Board` under `key` (a node's CPU
    /// from the cluster's metrics API).
    Published {
        key: String,
    },
}

#[derive(Clone, PartialEq, Eq)]
pub struct BasicAuth {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BasicAuth({}, ***)", self.username)
    }
}

/// How a node's weight is decided.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeWeighting {
    /// The embedded curve model with this profile.
    Curve(Arc<CurveProfile>),
    /// A remote model: V2 inference protocol (KServe/Triton/MLServer) or TF Serving REST.
    Remote(RemoteModelSpec),
    /// Fixed by the operator (`weight:`), e.g. 0 to drain a node for maintenance.
    Fixed(f64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteProtocol {
    V2Inference,
    TfServing,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RemoteModelSpec {
    pub protocol: RemoteProtocol,
    pub location: ModelLocation,
    pub timeout: Duration,
    /// The last good prediction is used this long after the model stops answering.
    pub stale_after: Duration,
    /// Answers are reused this long for the same (rounded) inputs; WAO uses 30 minutes.
    pub cache_for: Duration,
    pub auth: Option<BasicAuth>,
}

/// Where a remote model is served.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelLocation {
    /// At a known server (`url` is scheme://host:port[/prefix]), by name and version.
    At {
        url: HttpUrl,
        model: String,
        version: Option<String>,
    },
    /// WAO's `powerConsumptionEndpointProvider`: the BMC's Redfish `MachineLearningModel`
    /// resource names the server, model and version of a V2 inference model.
    Redfish {
        url: HttpUrl,
        auth: Option<BasicAuth>,
        insecure: bool,
    },
}

/// Which quantity an input measures: its key in the config, its unit, its plausible range
/// (a reading outside it is garbage) and the value assumed when it is not configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Quantity {
    Cpu,
    Inlet,
    DeltaP,
}

impl Quantity {
    pub const ALL: [Quantity; 3] = [Quantity::Cpu, Quantity::Inlet, Quantity::DeltaP];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Quantity::Cpu => "cpu",
            Quantity::Inlet => "inlet_temp",
            Quantity::DeltaP => "delta_p",
        }
    }

    /// The key under `nodes.<name>`.
    pub fn key(self) -> &'static str {
        match self {
            Quantity::Cpu => "cpu",
            Quantity::Inlet => "inletTemp",
            Quantity::DeltaP => "deltaP",
        }
    }

    /// The key a `static` source gives its value under.
    pub fn static_key(self) -> &'static str {
        match self {
            Quantity::Cpu => "percent",
            Quantity::Inlet => "celsius",
            Quantity::DeltaP => "pascal",
        }
    }

    pub fn unit(self) -> &'static str {
        match self {
            Quantity::Cpu => "%",
            Quantity::Inlet => "°C",
            Quantity::DeltaP => "Pa",
        }
    }

    /// Values outside this range are garbage, in a config file or from a source.
    pub fn range(self) -> (f64, f64) {
        match self {
            Quantity::Cpu => (0.0, 100.0),
            Quantity::Inlet => (-40.0, 80.0),
            Quantity::DeltaP => (-1000.0, 1000.0),
        }
    }

    /// The sources that can measure it.
    pub fn sources(self) -> &'static [&'static str] {
        match self {
            Quantity::Cpu => &["static", "node-exporter"],
            Quantity::Inlet => &["static", "redfish", "ipmi-exporter"],
            Quantity::DeltaP => &["static", "dpapi"],
        }
    }

    /// The value assumed when the input is not configured at all.
    pub fn unset(self) -> f64 {
        match self {
            Quantity::Inlet => super::curve::NEUTRAL_INLET_CELSIUS,
            Quantity::Cpu | Quantity::DeltaP => 0.0,
        }
    }
}

impl NodeSpec {
    /// The input for `q`.
    pub fn input(&self, q: Quantity) -> &Input {
        match q {
            Quantity::Cpu => &self.cpu,
            Quantity::Inlet => &self.inlet,
            Quantity::DeltaP => &self.delta_p,
        }
    }
}
