//! Generated inputs against everything that parses outside text: the config loader, the
//! input sources' parsers and the model-answer parsers. None may panic; the loader must
//! reject with an error that names a key path or a line. Case counts are fixed, so a run
//! is bounded; proptest shrinks and prints any failing input.

use proptest::prelude::*;
use serde_json::Value;
use wao_lb::discovery::file::FileConfig;
use wao_lb::power::remote::{parse_answer, parse_tfserving};
use wao_lb::power::sources::{dpapi_pressure, ipmi_ambient, node_exporter_cpu, RedfishVendor};

const VALID: &str = "admin: {listen: 127.0.0.1:10349}
proxy: {connectTimeout: 2s, idleTimeout: 1h}
udp: {sessionTimeout: 60s, maxSessions: 100}
power: {interval: 5s, ceilingPercent: 80, cpuPerConnection: 100m}
services:
  - name: web
    protocol: tcp
    address: 127.0.0.1:18080
    sessionAffinity: {type: ClientIP, timeout: 3h}
    backends:
      - {address: 127.0.0.1:19001, node: a}
      - {address: 127.0.0.1:19002, node: b}
  - name: dns
    protocol: udp
    address: 127.0.0.1:18053
    udp: {responses: 1}
    backends:
      - {address: 127.0.0.1:19053, node: a}
nodes:
  a:
    cores: 8
    cpu: {source: node-exporter, url: \"http://u:p@10.0.0.1:9100/metrics\", interval: 1s}
    inletTemp: {source: redfish, url: \"https://10.0.0.2\", username: u, password: p}
    model: {type: v2-inference, url: \"http://10.0.0.3\", model: m, timeout: 1s}
  b:
    cpu: {source: static, percent: 20}
    model: {type: curve, profile: x3550-m3}
";

/// Bytes YAML cares about, so mutations hit structure and values, not only letters.
fn yaml_fragment() -> impl Strategy<Value = String> {
    const SIGNIFICANT: [&str; 13] = [
        ":",
        "- ",
        "\n",
        "  ",
        "{",
        "}",
        "[",
        "&a ",
        "*a",
        "1e300",
        "-1",
        "99999999999999999999s",
        "\"",
    ];
    prop_oneof![
        prop::sample::select(&SIGNIFICANT[..]).prop_map(str::to_string),
        "[a-zA-Z0-9:./@]{0,12}",
    ]
}

/// The valid file with a few byte ranges replaced by fragments.
fn mutated_config() -> impl Strategy<Value = String> {
    prop::collection::vec(
        (any::<prop::sample::Index>(), 0usize..12, yaml_fragment()),
        1..6,
    )
    .prop_map(|edits| {
        let mut text = VALID.to_string();
        for (at, len, with) in edits {
            let start = at.index(text.len() + 1);
            let start = (0..=start)
                .rev()
                .find(|i| text.is_char_boundary(*i))
                .unwrap_or(0);
            let end = (start + len).min(text.len());
            let end = (end..=text.len())
                .find(|i| text.is_char_boundary(*i))
                .unwrap_or(text.len());
            text.replace_range(start..end, &with);
        }
        text
    })
}

fn check_rejection(text: &str) -> Result<(), TestCaseError> {
    if let Err(errors) = FileConfig::parse(text) {
        prop_assert!(!errors.0.is_empty());
        for e in &errors.0 {
            let placed =
                !e.path.is_empty() || e.message.contains("line") || e.message.contains("empty");
            prop_assert!(placed, "an error with neither a key path nor a line: {e}");
            prop_assert!(!e.to_string().contains("u:p@"), "credentials shown: {e}");
            prop_assert!(
                e.to_string().len() < 2_000,
                "an error of {} bytes",
                e.to_string().len()
            );
        }
    }
    Ok(())
}

/// Any JSON document up to a few levels deep.
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        any::<i64>().prop_map(|i| Value::Number(i.into())),
        "[a-zA-Z ]{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        const KNOWN: [&str; 8] = [
            "outputs",
            "data",
            "sensor",
            "pressure",
            "Reading",
            "Temperatures",
            "Name",
            "ReadingCelsius",
        ];
        let keys = prop_oneof![
            prop::sample::select(&KNOWN[..]).prop_map(str::to_string),
            "[a-z]{1,6}",
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(keys, inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Prometheus-like text: lines of the series the parsers look for, with garbage values.
fn exposition() -> impl Strategy<Value = String> {
    let line = prop_oneof![
        (
            "[0-9]{1,2}",
            "idle|user|iowait|system|x",
            "-?[0-9.eE+]{0,8}|NaN|Inf"
        )
            .prop_map(|(c, m, v)| format!(
                "node_cpu_seconds_total{{cpu=\"{c}\",mode=\"{m}\"}} {v}"
            )),
        ("Ambient|CPU", "-?[0-9.]{0,6}|x")
            .prop_map(|(n, v)| format!("ipmi_temperature_celsius{{name=\"{n}\"}} {v}")),
        "[ -~]{0,40}",
    ];
    prop::collection::vec(line, 0..20).prop_map(|l| l.join("\n"))
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 300,
        failure_persistence: None,
        rng_seed: proptest::test_runner::RngSeed::Fixed(20_261_123),
        ..ProptestConfig::default()
    })]

    #[test]
    fn mutated_configs_never_panic_and_say_where(text in mutated_config()) {
        check_rejection(&text)?;
    }

    #[test]
    fn arbitrary_text_never_panics_the_loader(text in "[ -~\n]{0,200}") {
        check_rejection(&text)?;
    }

    #[test]
    fn source_parsers_never_panic(text in exposition(), doc in json()) {
        if let Ok(c) = node_exporter_cpu(&text) {
            prop_assert!(c.idle.is_finite() && c.total.is_finite() && c.idle >= 0.0);
        }
        let _ = ipmi_ambient(&text);
        for vendor in RedfishVendor::ALL {
            let _ = vendor.parse(&doc);
        }
        let _ = dpapi_pressure(&doc);
    }

    #[test]
    fn model_answers_are_plausible_watts_or_errors(doc in json()) {
        for w in [parse_answer(&doc), parse_tfserving(&doc)].into_iter().flatten() {
            prop_assert!(w.is_finite() && w > 0.0 && w <= 100_000.0, "{w}");
        }
    }
}
