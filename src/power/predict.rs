//! Power models behind one interface, `predict(cpu %, inlet °C, ΔP Pa) -> watts`: the
//! embedded `curve` model (`model::curve`) and the remote models (`remote`).

use std::sync::Arc;

use super::remote::RemotePredictor;
use crate::model::curve::CurveProfile;

/// A node's power model.
#[derive(Clone)]
pub enum Predictor {
    Curve(Arc<CurveProfile>),
    Remote(Arc<RemotePredictor>),
}

impl Predictor {
    pub async fn predict(&self, cpu: f64, inlet: f64, delta_p: f64) -> Result<f64, String> {
        match self {
            Predictor::Curve(c) => Ok(c.predict(cpu, inlet, delta_p)),
            Predictor::Remote(m) => m.predict(cpu, inlet, delta_p).await,
        }
    }

    pub fn name(&self) -> String {
        match self {
            Predictor::Curve(c) => format!("curve {}", c.id),
            Predictor::Remote(m) => m.name(),
        }
    }
}
