//! The weights view: one row per (service, backend) with the node's power inputs, the weight
//! and the reason for it, the configured share and the share of picks observed. Served as JSON
//! by `/weights` and printed as an aligned table by `wao-lb weights` and the demo.

use std::fmt::Write;

use serde::{Deserialize, Serialize};

use crate::balance::plan::Plan;
use crate::balance::saving::Saving;
use crate::dataplane::PickCounts;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WeightRow {
    pub service: String,
    /// What made the service: `static`, `Service`, `LocalRedirectPolicy`, `BalancingPolicy`.
    #[serde(default)]
    pub kind: String,
    /// What chose this backend: the service, a policy, its fallback, or another cluster.
    #[serde(default)]
    pub selected_by: String,
    pub frontend: String,
    pub backend: String,
    pub node: String,
    pub cpu_percent: Option<f64>,
    pub inlet_celsius: Option<f64>,
    pub delta_p_pascal: Option<f64>,
    pub watts: Option<f64>,
    pub delta_watts: Option<f64>,
    pub weight: f64,
    /// Fraction of new connections the table gives this backend.
    pub share: f64,
    pub picks: u64,
    /// Fraction of this service's picks that went to this backend so far.
    pub picked_share: f64,
    pub reason: String,
    /// `ClientIP` session affinity and its timeout in seconds; then picks follow clients,
    /// not shares, and one client's connections all go to one backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity_seconds: Option<u64>,
    /// `starting`, `up` or `down` when the service has health checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
}

/// The rows of `plan`, with the picks the data plane counted (0 where it counts none).
pub fn rows(plan: &Plan, picks: Option<&dyn PickCounts>) -> Vec<WeightRow> {
    let mut entries: Vec<_> = plan.services.iter().collect();
    entries.sort_by(|(fa, a), (fb, b)| (&a.service.name, *fa).cmp(&(&b.service.name, *fb)));
    let mut out = Vec::new();
    for (frontend, e) in entries {
        let counts: Vec<u64> = e
            .backends
            .iter()
            .map(|b| {
                picks
                    .and_then(|p| p.picks(frontend, b.backend.address))
                    .unwrap_or(0)
            })
            .collect();
        let total: u64 = counts.iter().sum();
        for (b, &picks) in e.backends.iter().zip(&counts) {
            let r = b.report.as_ref();
            out.push(WeightRow {
                service: e.service.name.to_string(),
                kind: e.service.kind.to_string(),
                selected_by: b.selected_by.to_string(),
                frontend: frontend.to_string(),
                backend: b.backend.address.to_string(),
                node: b.backend.node.to_string(),
                cpu_percent: r.and_then(|r| r.cpu_percent),
                inlet_celsius: r.and_then(|r| r.inlet_celsius),
                delta_p_pascal: r.and_then(|r| r.delta_p_pascal),
                watts: r.and_then(|r| r.watts),
                delta_watts: r.and_then(|r| r.delta_watts),
                weight: b.weight,
                share: b.share,
                picks,
                picked_share: if total == 0 {
                    0.0
                } else {
                    picks as f64 / total as f64
                },
                reason: b.reason.to_string(),
                affinity_seconds: e.service.affinity.map(|a| a.timeout.as_secs()),
                health: b.health.as_ref().map(|h| h.label().to_string()),
            });
        }
    }
    out
}

fn opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "-".to_string(), |x| format!("{x:.decimals$}"))
}

/// An aligned, readable table of `rows`.
pub fn render_table(rows: &[WeightRow]) -> String {
    let header = [
        "SERVICE",
        "KIND",
        "BACKEND",
        "NODE",
        "CPU%",
        "INLET°C",
        "ΔP Pa",
        "WATTS",
        "ΔW",
        "WEIGHT",
        "SHARE",
        "PICKS",
        "PICKED",
        "HEALTH",
        "SELECTED BY",
        "REASON",
    ];
    let cells: Vec<[String; 16]> = rows
        .iter()
        .map(|r| {
            [
                r.service.clone(),
                r.kind.clone(),
                r.backend.clone(),
                r.node.clone(),
                opt(r.cpu_percent, 1),
                opt(r.inlet_celsius, 1),
                opt(r.delta_p_pascal, 1),
                opt(r.watts, 1),
                opt(r.delta_watts, 3),
                format!("{:.3}", r.weight),
                format!("{:.1}%", r.share * 100.0),
                r.picks.to_string(),
                format!("{:.1}%", r.picked_share * 100.0),
                r.health.clone().unwrap_or_else(|| "-".into()),
                r.selected_by.clone(),
                match r.affinity_seconds {
                    Some(secs) => format!(
                        "{} (ClientIP affinity {secs}s: picks follow clients)",
                        r.reason
                    ),
                    None => r.reason.clone(),
                },
            ]
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, row: &[String]| {
        let last = row.len() - 1;
        for (i, (c, w)) in row.iter().zip(&widths).enumerate() {
            let pad = w - c.chars().count();
            // Text columns left-aligned, numbers right-aligned, no trailing blanks.
            let numeric = (4..=12).contains(&i);
            if i == last {
                out.push_str(c);
            } else if numeric {
                let _ = write!(out, "{}{}  ", " ".repeat(pad), c);
            } else {
                let _ = write!(out, "{}{}  ", c, " ".repeat(pad));
            }
        }
        out.push('\n');
    };
    let header: Vec<String> = header.iter().map(|s| s.to_string()).collect();
    line(&mut out, &header);
    for row in &cells {
        line(&mut out, row);
    }
    out
}

/// The weights table's footer: what the split saves against uniform picks.
pub fn saving_footer(s: &Saving) -> String {
    match s.total_watts {
        None => "estimated saving: unknown (no node's power curve is known)\n".to_string(),
        Some(total) => {
            let each: Vec<String> = s
                .services
                .iter()
                .map(|(name, w)| format!("{name} {w:.1} W"))
                .collect();
            format!(
                "estimated saving: {total:.1} W against uniform picks, for the connections open now ({})\n",
                each.join(", ")
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_footer_says_what_the_split_saves() {
        let s = Saving {
            total_watts: Some(12.34),
            services: [("web".to_string(), 10.0), ("db".to_string(), 2.34)]
                .into_iter()
                .collect(),
        };
        assert_eq!(
            saving_footer(&s),
            "estimated saving: 12.3 W against uniform picks, for the connections open now (db 2.3 W, web 10.0 W)\n"
        );
        assert!(saving_footer(&Saving::default()).contains("unknown"));
    }

    #[test]
    fn table_columns_align() {
        let row = |service: &str, backend: &str, weight: f64| WeightRow {
            service: service.into(),
            kind: "static".into(),
            selected_by: format!("service {service}"),
            frontend: "127.0.0.1:80/tcp".into(),
            backend: backend.into(),
            node: "n".into(),
            cpu_percent: Some(20.0),
            inlet_celsius: None,
            delta_p_pascal: None,
            watts: Some(120.0),
            delta_watts: Some(0.25),
            weight,
            share: 0.5,
            picks: 10,
            picked_share: 0.5,
            reason: "static inputs".into(),
            affinity_seconds: None,
            health: None,
        };
        let text = render_table(&[
            row("web", "127.0.0.1:9001", 1.0),
            row("database", "[::1]:9002", 0.25),
        ]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        let col = |l: &str| l.find("static").unwrap_or(0);
        assert_eq!(
            col(lines[1]),
            col(lines[2]),
            "reason column aligned:\n{text}"
        );
        assert!(
            lines[2].starts_with("database  static  [::1]:9002"),
            "{text}"
        );
    }
}
