//! The wire formats of the input sources, as pure parsers: node_exporter's CPU counters,
//! ipmi_exporter's ambient temperature, the three Redfish vendor documents, and WAO's
//! DifferentialPressureAPI answer. Each returns the value or why there is none.

use serde_json::Value;

/// Cumulative CPU seconds over all CPUs from one node_exporter scrape.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuCounters {
    /// idle + iowait seconds.
    pub idle: f64,
    pub total: f64,
}

/// Sums `node_cpu_seconds_total` over all CPUs and modes.
pub fn node_exporter_cpu(text: &str) -> Result<CpuCounters, String> {
    let mut c = CpuCounters {
        idle: 0.0,
        total: 0.0,
    };
    let mut seen = false;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("node_cpu_seconds_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once('}') else {
            continue;
        };
        let v: f64 = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("bad sample: {line}"))?;
        if !v.is_finite() || v < 0.0 {
            return Err(format!("bad sample: {line}"));
        }
        seen = true;
        c.total += v;
        if labels.contains("mode=\"idle\"") || labels.contains("mode=\"iowait\"") {
            c.idle += v;
        }
    }
    if seen {
        Ok(c)
    } else {
        Err("no node_cpu_seconds_total samples".into())
    }
}

/// CPU utilisation in percent between two scrapes.
pub fn cpu_percent(before: CpuCounters, after: CpuCounters) -> Result<f64, String> {
    let total = after.total - before.total;
    let idle = after.idle - before.idle;
    if total <= 0.0 || idle < 0.0 || idle > total {
        return Err("CPU counters did not advance (or were reset)".into());
    }
    Ok((100.0 * (1.0 - idle / total)).clamp(0.0, 100.0))
}

/// `ipmi_temperature_celsius{name="Ambient",...} 22` from an ipmi_exporter scrape.
pub fn ipmi_ambient(text: &str) -> Result<f64, String> {
    text.lines()
        .filter(|l| l.starts_with("ipmi_temperature_celsius{") && l.contains("name=\"Ambient\""))
        .find_map(|l| {
            l.rsplit_once('}')
                .and_then(|(_, v)| v.split_whitespace().next()?.parse().ok())
        })
        .ok_or_else(|| "no ipmi_temperature_celsius{name=\"Ambient\"} sample".into())
}

/// A Redfish vendor layout for the inlet temperature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedfishVendor {
    Idrac,
    Lenovo,
    Supermicro,
}

impl RedfishVendor {
    pub const ALL: [RedfishVendor; 3] = [
        RedfishVendor::Idrac,
        RedfishVendor::Lenovo,
        RedfishVendor::Supermicro,
    ];

    pub fn path(self) -> &'static str {
        match self {
            RedfishVendor::Idrac => {
                "/redfish/v1/Chassis/System.Embedded.1/Sensors/SystemBoardInletTemp"
            }
            RedfishVendor::Lenovo => "/redfish/v1/Chassis/1/Sensors/128L0",
            RedfishVendor::Supermicro => "/redfish/v1/Chassis/1/Thermal",
        }
    }

    /// The inlet temperature from this vendor's document.
    pub fn parse(self, doc: &Value) -> Result<f64, String> {
        let v = match self {
            RedfishVendor::Idrac | RedfishVendor::Lenovo => doc.get("Reading"),
            RedfishVendor::Supermicro => doc
                .get("Temperatures")
                .and_then(Value::as_array)
                .and_then(|t| {
                    t.iter()
                        .find(|e| e.get("Name").and_then(Value::as_str) == Some("System Temp"))
                })
                .and_then(|e| e.get("ReadingCelsius")),
        };
        v.and_then(Value::as_f64)
            .ok_or_else(|| format!("{self:?} document has no numeric reading"))
    }
}

/// `{"code":200,"sensor":[{"pressure":0.01,...}]}` → `sensor[0].pressure`.
pub fn dpapi_pressure(doc: &Value) -> Result<f64, String> {
    doc.get("sensor")
        .and_then(Value::as_array)
        .and_then(|s| s.first())
        .and_then(|s| s.get("pressure"))
        .and_then(Value::as_f64)
        .ok_or_else(|| "no sensor[0].pressure in DifferentialPressureAPI answer".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SCRAPE: &str = "# HELP node_cpu_seconds_total Seconds the CPUs spent in each mode.\n\
        # TYPE node_cpu_seconds_total counter\n\
        node_cpu_seconds_total{cpu=\"0\",mode=\"idle\"} 100\n\
        node_cpu_seconds_total{cpu=\"0\",mode=\"iowait\"} 10\n\
        node_cpu_seconds_total{cpu=\"0\",mode=\"user\"} 30\n\
        node_cpu_seconds_total{cpu=\"1\",mode=\"idle\"} 150\n\
        node_cpu_seconds_total{cpu=\"1\",mode=\"system\"} 10\n\
        node_cpu_guest_seconds_total{cpu=\"0\",mode=\"user\"} 999\n";

    #[test]
    fn node_exporter_counters_and_rate() {
        let a = node_exporter_cpu(SCRAPE).unwrap();
        assert_eq!(
            a,
            CpuCounters {
                idle: 260.0,
                total: 300.0
            }
        );
        let b = CpuCounters {
            idle: 290.0,
            total: 400.0,
        };
        assert!((cpu_percent(a, b).unwrap() - 70.0).abs() < 1e-9);
        assert!(cpu_percent(b, a).is_err(), "counter reset is not a reading");
        assert!(node_exporter_cpu("up 1\n").is_err());
        assert!(
            node_exporter_cpu("node_cpu_seconds_total{cpu=\"0\",mode=\"idle\"} NaN\n").is_err()
        );
    }

    #[test]
    fn ipmi() {
        let t = "ipmi_temperature_celsius{id=\"1\",name=\"CPU1\"} 50\nipmi_temperature_celsius{id=\"4\",name=\"Ambient\"} 22.5\n";
        assert_eq!(ipmi_ambient(t), Ok(22.5));
        assert!(ipmi_ambient("ipmi_up 1\n").is_err());
    }

    #[test]
    fn redfish_vendor_documents() {
        assert_eq!(
            RedfishVendor::Idrac.parse(&json!({"Reading": 23.0, "ReadingUnits": "Cel"})),
            Ok(23.0)
        );
        assert_eq!(
            RedfishVendor::Lenovo.parse(&json!({"Name": "Ambient Temp", "Reading": 21})),
            Ok(21.0)
        );
        let smc = json!({"Temperatures": [
            {"Name": "CPU Temp", "ReadingCelsius": 60},
            {"Name": "System Temp", "ReadingCelsius": 27}
        ]});
        assert_eq!(RedfishVendor::Supermicro.parse(&smc), Ok(27.0));
        assert!(RedfishVendor::Idrac
            .parse(&json!({"Reading": "hot"}))
            .is_err());
        assert!(RedfishVendor::Supermicro
            .parse(&json!({"Temperatures": []}))
            .is_err());
    }

    #[test]
    fn dpapi() {
        let doc = json!({"code": 200, "sensor": [{"pressure": 0.01, "sensorid": "101037B", "temperature": 26.02}]});
        assert_eq!(dpapi_pressure(&doc), Ok(0.01));
        assert!(dpapi_pressure(&json!({"code": 404, "sensor": []})).is_err());
        assert!(dpapi_pressure(&json!({"sensor": [{"pressure": "x"}]})).is_err());
    }
}
