//! Units as Kubernetes and Go write them: durations (`500ms`, `1m30s`, `3h`) and CPU
//! quantities (`100m`, `0.5`, `2`). Parsing is checked: a value too large to represent is an
//! error, never an overflow.

use std::time::Duration;

/// Durations above this are refused: a century is longer than any timeout means.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Parses a duration written as Go and Kubernetes do: `500ms`, `5s`, `1m30s`, `3h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {text:?} (expected e.g. 500ms, 5s, 1m30s, 3h)");
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (number, tail) = rest.split_at(digits);
        let value: f64 = number.parse().map_err(|_| bad())?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let seconds = match unit {
            "ms" => value / 1000.0,
            "s" => value,
            "m" => value * 60.0,
            "h" => value * 3600.0,
            _ => return Err(bad()),
        };
        let part = Duration::try_from_secs_f64(seconds).map_err(|_| bad())?;
        total = total
            .checked_add(part)
            .filter(|t| *t <= MAX_DURATION)
            .ok_or_else(|| format!("duration {text:?} is too long (at most 100 years)"))?;
        rest = tail;
    }
    Ok(total)
}

/// Parses a Kubernetes CPU quantity into millicores: `100m` → 100, `0.5` → 500, `2` → 2000.
pub fn parse_millicores(text: &str) -> Result<u32, String> {
    let bad = || format!("invalid CPU quantity {text:?} (expected e.g. 100m, 0.5, 2)");
    let t = text.trim();
    let millis = match t.strip_suffix('m') {
        Some(m) => m.parse::<f64>().map_err(|_| bad())?,
        None => t.parse::<f64>().map_err(|_| bad())? * 1000.0,
    };
    if !millis.is_finite() || !(0.0..=1_000_000.0).contains(&millis) {
        return Err(bad());
    }
    Ok(millis.round() as u32)
}

/// Parses a Kubernetes quantity as the metrics APIs write it: `22`, `-3500m`, `1234567n`,
/// `12u`, `2k`, `1Mi`. Signed; None for anything else or a non-finite value.
pub fn parse_quantity(text: &str) -> Option<f64> {
    let t = text.trim();
    const SUFFIXES: [(&str, f64); 10] = [
        ("Ki", 1024.0),
        ("Mi", 1_048_576.0),
        ("Gi", 1_073_741_824.0),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
    ];
    let (number, scale) = SUFFIXES
        .iter()
        .find_map(|(s, scale)| t.strip_suffix(s).map(|n| (n, *scale)))
        .unwrap_or((t, 1.0));
    let value = number.parse::<f64>().ok()? * scale;
    value.is_finite().then_some(value)
}

/// Parses a CPU quantity as the metrics API and Node capacity write it, into cores:
/// `16`, `3500m`, `1234567n`, `12u`. Never negative.
pub fn parse_cores(text: &str) -> Option<f64> {
    parse_quantity(text).filter(|c| *c >= 0.0)
}

/// Serialises a `Duration` as seconds (for JSON views).
pub mod duration_secs {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_quantities_in_cores() {
        assert_eq!(parse_cores("16"), Some(16.0));
        assert_eq!(parse_cores("3500m"), Some(3.5));
        assert_eq!(parse_cores("250000000n"), Some(0.25));
        assert_eq!(parse_cores("12u"), Some(12e-6));
        assert_eq!(parse_cores("-1"), None);
        assert_eq!(parse_cores("lots"), None);
        assert_eq!(parse_cores(""), None);
    }

    #[test]
    fn signed_quantities() {
        assert_eq!(parse_quantity("22"), Some(22.0));
        assert_eq!(parse_quantity("-3500m"), Some(-3.5));
        assert_eq!(parse_quantity("2k"), Some(2000.0));
        assert_eq!(parse_quantity("1Ki"), Some(1024.0));
        for bad in ["", "m", "1e999", "NaN", "inf", "twelve", "1 m"] {
            assert_eq!(parse_quantity(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("3h"), Ok(Duration::from_secs(10_800)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        for bad in ["", "5", "s", "5x", "-1s", "5 s", "1e400s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn a_sum_that_overflows_is_an_error_not_a_panic() {
        let huge = "10000000000000000000s10000000000000000000s";
        let e = parse_duration(huge).unwrap_err();
        assert!(e.contains("too long"), "{e}");
        assert!(parse_duration("876000h1s").is_err(), "just over 100 years");
        assert_eq!(parse_duration("876000h"), Ok(MAX_DURATION));
    }

    #[test]
    fn millicores() {
        assert_eq!(parse_millicores("100m"), Ok(100));
        assert_eq!(parse_millicores("0.5"), Ok(500));
        assert_eq!(parse_millicores("2"), Ok(2000));
        assert_eq!(parse_millicores("250m"), Ok(250));
        for bad in ["", "m", "-1", "abc", "1k", "NaN"] {
            assert!(parse_millicores(bad).is_err(), "{bad:?} should not parse");
        }
    }
}
