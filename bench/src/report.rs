//! One scenario's results and their three renderings: the terminal table, the JSON file and
//! the SVG chart. Every scenario reports rows of (target, variant, named values); a target
//! that could not run is listed under `skipped` with the reason, never as a zero.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

/// One measured quantity: its JSON key, its column label, and whether it is charted.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Column {
    pub key: &'static str,
    pub label: &'static str,
    #[serde(skip)]
    pub chart: bool,
}

impl Column {
    pub const fn new(key: &'static str, label: &'static str) -> Self {
        Self {
            key,
            label,
            chart: false,
        }
    }

    pub const fn charted(key: &'static str, label: &'static str) -> Self {
        Self {
            key,
            label,
            chart: true,
        }
    }
}

/// The measurements of one target under one variant (e.g. "8 streams", "max rate").
/// A value that does not apply (proxy CPU of `direct`) is absent, not zero.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Row {
    pub target: String,
    pub variant: String,
    pub values: BTreeMap<&'static str, f64>,
}

impl Row {
    pub fn new(target: &str, variant: &str) -> Self {
        Self {
            target: target.into(),
            variant: variant.into(),
            values: BTreeMap::new(),
        }
    }

    /// Sets `key` when `value` is known and finite.
    pub fn set(mut self, key: &'static str, value: Option<f64>) -> Self {
        if let Some(v) = value.filter(|v| v.is_finite()) {
            self.values.insert(key, v);
        }
        self
    }

    pub fn get(&self, key: &str) -> Option<f64> {
        self.values.get(key).copied()
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Skipped {
    pub target: String,
    pub reason: String,
}

/// Where a run happened, so a table can be compared with the right machine.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub kernel: String,
    pub date: String,
}

impl Machine {
    pub fn read() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or("unknown".into(), |(_, v)| v.trim().to_string());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or("unknown".into(), |s| s.trim().to_string());
        let date = std::process::Command::new("date")
            .arg("-u")
            .arg("+%Y-%m-%dT%H:%M:%SZ")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map_or("unknown".into(), |s| s.trim().to_string());
        Self {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel,
            date,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: &'static str,
    /// What was measured and how, in one sentence.
    pub setup: String,
    pub machine: Machine,
    pub columns: Vec<Column>,
    pub rows: Vec<Row>,
    pub skipped: Vec<Skipped>,
}

impl Report {
    /// The terminal table: one line per (target, variant), `-` where a value does not apply.
    pub fn table(&self) -> String {
        let mut headers = vec!["target".to_string(), "variant".to_string()];
        headers.extend(self.columns.iter().map(|c| c.label.to_string()));
        let mut lines = vec![headers];
        for r in &self.rows {
            let mut line = vec![r.target.clone(), r.variant.clone()];
            line.extend(
                self.columns
                    .iter()
                    .map(|c| r.get(c.key).map_or("-".into(), format_value)),
            );
            lines.push(line);
        }
        let widths: Vec<usize> = (0..lines[0].len())
            .map(|i| {
                lines
                    .iter()
                    .map(|l| l[i].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = format!("== {}: {}\n", self.scenario, self.setup);
        for line in &lines {
            for (i, cell) in line.iter().enumerate() {
                let pad = widths[i] - cell.chars().count();
                if i < 2 {
                    let _ = write!(out, "{cell}{}  ", " ".repeat(pad));
                } else {
                    let _ = write!(out, "{}{cell}  ", " ".repeat(pad));
                }
            }
            out.truncate(out.trim_end().len());
            out.push('\n');
        }
        for s in &self.skipped {
            let _ = writeln!(out, "skipped {}: {}", s.target, s.reason);
        }
        out
    }

    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    /// One horizontal bar panel per charted column; bars grouped by variant, one colour
    /// per target, each labelled with its value.
    pub fn svg(&self) -> String {
        const COLORS: [&str; 6] = [
            "#666666", "#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e",
        ];
        let charted: Vec<&Column> = self.columns.iter().filter(|c| c.chart).collect();
        let targets: Vec<&str> = unique(self.rows.iter().map(|r| r.target.as_str()));
        let variants: Vec<&str> = unique(self.rows.iter().map(|r| r.variant.as_str()));
        let (width, left, bar, gap) = (820.0, 170.0, 14.0, 10.0);
        let panel_height = 30.0 + variants.len() as f64 * (targets.len() as f64 * bar + gap) + 10.0;
        let height = 50.0 + charted.len() as f64 * panel_height + 20.0;
        let mut s = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
             font-family=\"sans-serif\" font-size=\"11\">\n\
             <text x=\"10\" y=\"18\" font-size=\"14\">wao-bench {}: {}</text>\n\
             <text x=\"10\" y=\"34\" fill=\"#555\">{}, {} cores, {}</text>\n",
            self.scenario,
            escape(&self.setup),
            escape(&self.machine.cpu),
            self.machine.cores,
            self.machine.date
        );
        for (p, column) in charted.iter().enumerate() {
            let top = 50.0 + p as f64 * panel_height;
            let max = self
                .rows
                .iter()
                .filter_map(|r| r.get(column.key))
                .fold(0.0, f64::max)
                .max(f64::MIN_POSITIVE);
            let _ = writeln!(
                s,
                "<text x=\"10\" y=\"{:.1}\" font-weight=\"bold\">{}</text>",
                top + 16.0,
                escape(column.label)
            );
            let mut y = top + 26.0;
            for variant in &variants {
                let _ = writeln!(
                    s,
                    "<text x=\"10\" y=\"{:.1}\">{}</text>",
                    y + bar,
                    escape(variant)
                );
                for (t, target) in targets.iter().enumerate() {
                    let color = COLORS[t % COLORS.len()];
                    let row = self
                        .rows
                        .iter()
                        .find(|r| r.target == *target && r.variant == *variant);
                    if let Some(v) = row.and_then(|r| r.get(column.key)) {
                        let w = (v / max) * (width - left - 90.0);
                        let _ = writeln!(
                            s,
                            "<rect x=\"{left}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{:.1}\" fill=\"{color}\"/>\
                             <text x=\"{:.1}\" y=\"{:.1}\">{} {}</text>",
                            bar - 2.0,
                            left + w + 4.0,
                            y + bar - 4.0,
                            escape(target),
                            format_value(v)
                        );
                    }
                    y += bar;
                }
                y += gap;
            }
        }
        s.push_str("</svg>\n");
        s
    }
}

/// Values with about four significant digits, without scientific notation.
pub fn format_value(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 || (v.fract() == 0.0 && a < 1e15) {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn unique<'a>(items: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for i in items {
        if !out.contains(&i) {
            out.push(i);
        }
    }
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        Report {
            scenario: "rr",
            setup: "1-byte ping-pong <loopback>".into(),
            machine: Machine {
                cpu: "test cpu".into(),
                cores: 2,
                kernel: "6.1".into(),
                date: "2026-11-23T00:00:00Z".into(),
            },
            columns: vec![
                Column::charted("rate", "req/s"),
                Column::new("cpu_us", "proxy CPU µs/req"),
            ],
            rows: vec![
                Row::new("direct", "max")
                    .set("rate", Some(80000.0))
                    .set("cpu_us", None),
                Row::new("wao-lb", "max")
                    .set("rate", Some(40000.0))
                    .set("cpu_us", Some(12.5)),
                Row::new("haproxy", "max").set("rate", Some(f64::NAN)),
            ],
            skipped: vec![Skipped {
                target: "nginx".into(),
                reason: "not installed (apt-get install nginx)".into(),
            }],
        }
    }

    #[test]
    fn result_json_keeps_absent_values_absent() {
        let v: serde_json::Value = serde_json::from_str(&sample().json()).unwrap();
        assert_eq!(v["scenario"], "rr");
        assert_eq!(v["machine"]["cores"], 2);
        assert_eq!(v["rows"][1]["target"], "wao-lb");
        assert_eq!(v["rows"][1]["values"]["rate"], 40000.0);
        assert_eq!(v["rows"][1]["values"]["cpu_us"], 12.5);
        // direct has no proxy CPU and haproxy's NaN is dropped: absent, never 0 or null.
        assert!(v["rows"][0]["values"].get("cpu_us").is_none());
        assert!(v["rows"][2]["values"].get("rate").is_none());
        assert_eq!(v["skipped"][0]["target"], "nginx");
        assert_eq!(v["columns"][0]["key"], "rate");
    }

    #[test]
    fn table_aligns_and_marks_missing_values() {
        let t = sample().table();
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("== rr:"));
        assert!(lines[1].starts_with("target") && lines[1].contains("proxy CPU µs/req"));
        assert!(lines[2].starts_with("direct") && lines[2].ends_with('-'));
        assert!(lines[3].contains("40000") && lines[3].ends_with("12.50"));
        assert_eq!(
            lines[5],
            "skipped nginx: not installed (apt-get install nginx)"
        );
        // Value columns are right-aligned: each row's last cell ends at the same column.
        let ends: Vec<usize> = lines[1..5].iter().map(|l| l.chars().count()).collect();
        assert!(ends.iter().all(|e| *e == ends[0]), "{t}");
    }

    #[test]
    fn svg_has_one_bar_per_measured_value_and_escapes_text() {
        let svg = sample().svg();
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        // Only `rate` is charted; haproxy's NaN was never stored: two bars.
        assert_eq!(svg.matches("<rect").count(), 2);
        assert!(svg.contains("&lt;loopback&gt;") && !svg.contains("<loopback>"));
        // The largest value spans the full bar width; half the rate is half as wide.
        assert!(svg.contains("width=\"560.0\"") && svg.contains("width=\"280.0\""));
    }

    #[test]
    fn values_format_to_about_four_digits() {
        assert_eq!(format_value(12345.678), "12346");
        assert_eq!(format_value(123.456), "123.5");
        assert_eq!(format_value(1.23456), "1.23");
        assert_eq!(format_value(0.31549), "0.315");
        assert_eq!(format_value(50.0), "50");
        assert_eq!(format_value(0.0), "0");
    }
}
