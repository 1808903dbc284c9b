//! The process's one Prometheus registry. Each subsystem registers its own metrics in it;
//! this module only renders the text exposition.

use prometheus::{Encoder, Registry, TextEncoder};

/// The Prometheus text exposition of every registered metric.
pub fn render(registry: &Registry) -> String {
    let mut buf = Vec::new();
    let families = registry.gather();
    if TextEncoder::new().encode(&families, &mut buf).is_err() {
        return String::new();
    }
    String::from_utf8(buf).unwrap_or_default()
}
