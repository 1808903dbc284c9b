//! Measured server power curves: the SPECpower profiles shipped in `config/profiles/`, and
//! the embedded `curve` model over them (load interpolation plus fan power above an inlet
//! knee). Pure data and arithmetic; `power::predict` puts it behind the predictor interface.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

/// Inlet temperature assumed when none is known: at the knee, so it adds nothing.
pub const NEUTRAL_INLET_CELSIUS: f64 = 24.0;

/// Below this inlet temperature fans idle and power does not depend on it.
const INLET_KNEE_CELSIUS: f64 = 24.0;

/// A measured server power curve: watts at 0 %, 10 % … 100 % CPU load.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CurveProfile {
    pub id: String,
    pub server: String,
    pub spec_result: String,
    pub watts: [f64; 11],
}

const EMBEDDED: [&str; 8] = [
    include_str!("../../config/profiles/rx300-s4.yaml"),
    include_str!("../../config/profiles/x3550-m3.yaml"),
    include_str!("../../config/profiles/rs720a-e13.yaml"),
    include_str!("../../config/profiles/rs720a-e12.yaml"),
    include_str!("../../config/profiles/anystor-altra.yaml"),
    include_str!("../../config/profiles/se360-v2.yaml"),
    include_str!("../../config/profiles/ml30-g11.yaml"),
    include_str!("../../config/profiles/xr8620t.yaml"),
];

fn catalogue() -> &'static BTreeMap<String, Arc<CurveProfile>> {
    static CATALOGUE: OnceLock<BTreeMap<String, Arc<CurveProfile>>> = OnceLock::new();
    CATALOGUE.get_or_init(|| {
        EMBEDDED
            .iter()
            .filter_map(|text| serde_yaml::from_str::<CurveProfile>(text).ok())
            .map(|p| (p.id.clone(), Arc::new(p)))
            .collect()
    })
}

impl CurveProfile {
    /// The shipped profile with this id (see `config/profiles/`).
    pub fn embedded(id: &str) -> Option<Arc<CurveProfile>> {
        catalogue().get(id).cloned()
    }

    pub fn names() -> Vec<&'static str> {
        catalogue().keys().map(String::as_str).collect()
    }

    /// Predicted watts at `cpu` percent load and `inlet` °C. ΔP (static pressure difference) is
    /// accepted for interface compatibility with WAO's models; the measured curves carry no
    /// pressure data, so it does not change the result.
    pub fn predict(&self, cpu_percent: f64, inlet_celsius: f64, _delta_p_pascal: f64) -> f64 {
        self.at_load(cpu_percent) * inlet_factor(inlet_celsius)
    }

    /// Linear interpolation between the measured 10 % steps.
    fn at_load(&self, cpu_percent: f64) -> f64 {
        let x = cpu_percent.clamp(0.0, 100.0) / 10.0;
        let i = (x.floor() as usize).min(9);
        let frac = x - i as f64;
        self.watts[i] + (self.watts[i + 1] - self.watts[i]) * frac
    }
}

/// Fan power as a factor on the server's power: 1 up to the knee (24 °C), then rising by
/// 0.4 % per °C plus a quadratic fan term (0.06 %/°C²). That gives about +4 % from 27 to
/// 31 °C and +13 % from 27 to 37 °C, in line with the field data in
/// `shared/reference/power-curves.md` (+3 % and +12 %).
pub fn inlet_factor(inlet_celsius: f64) -> f64 {
    let over = (inlet_celsius - INLET_KNEE_CELSIUS).clamp(0.0, 30.0);
    1.0 + 0.004 * over + 0.0006 * over * over
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_profile_loads() {
        assert_eq!(CurveProfile::names().len(), EMBEDDED.len());
    }

    #[test]
    fn interpolates_measured_points() {
        let p = CurveProfile::embedded("x3550-m3").unwrap();
        assert_eq!(p.predict(0.0, 20.0, 0.0), 66.0);
        assert_eq!(p.predict(10.0, 20.0, 0.0), 107.0);
        assert_eq!(p.predict(100.0, 20.0, 0.0), 247.0);
        assert!((p.predict(15.0, 20.0, 0.0) - 113.5).abs() < 1e-9);
        // Out-of-range loads clamp instead of extrapolating.
        assert_eq!(p.predict(150.0, 20.0, 0.0), 247.0);
        assert_eq!(p.predict(-5.0, 20.0, 0.0), 66.0);
    }

    #[test]
    fn inlet_term_matches_field_data() {
        assert_eq!(inlet_factor(18.0), 1.0);
        assert_eq!(inlet_factor(24.0), 1.0);
        let rise_31 = inlet_factor(31.0) / inlet_factor(27.0) - 1.0;
        let rise_37 = inlet_factor(37.0) / inlet_factor(27.0) - 1.0;
        assert!((0.02..0.05).contains(&rise_31), "{rise_31}");
        assert!((0.10..0.15).contains(&rise_37), "{rise_37}");
    }
}
