//! Validation with key paths: a `Validator` collects every value error of a file as
//! `path: message`, so an operator fixes a file in one round. Structural errors (unknown
//! keys, wrong types) come from `yaml::structural`, with the path of the first one.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use crate::model::units::{parse_duration, parse_millicores};
use crate::model::url::redact;

/// One problem in a config file: the path of the key and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl ConfigError {
    /// An error at `path`. Both may quote what the file says (a mangled key or value);
    /// any credentials in a URL there are redacted here, once for every error and warning.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            path: redact(&path.into()),
            message: redact(&message.into()),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in one config file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// A single error that belongs to no key (e.g. the file cannot be read).
    pub fn whole_file(message: impl Into<String>) -> ConfigErrors {
        ConfigErrors(vec![ConfigError::new(String::new(), message)])
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Collects value errors; each check returns a usable value (the default on error) so that
/// validation goes on and reports everything.
#[derive(Default)]
pub struct Validator {
    errors: Vec<ConfigError>,
    warnings: Vec<ConfigError>,
}

impl Validator {
    /// Something legal but probably not meant; shown by `check` and logged at start.
    pub fn warn(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(ConfigError::new(path, message));
    }

    /// The warnings so far.
    pub fn warnings(&self) -> &[ConfigError] {
        &self.warnings
    }

    pub fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError::new(path, message));
    }

    /// `value` if no error was found, else every error.
    pub fn finish<T>(self, value: T) -> Result<T, ConfigErrors> {
        if self.errors.is_empty() {
            Ok(value)
        } else {
            Err(ConfigErrors(self.errors))
        }
    }

    pub fn socket_addr(&mut self, path: &str, text: &str) -> Option<SocketAddr> {
        match text.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.err(path, format!("invalid socket address {text:?}"));
                None
            }
        }
    }

    pub fn duration(&mut self, path: &str, text: Option<&str>, default: Duration) -> Duration {
        match text.map(parse_duration) {
            None => default,
            Some(Ok(d)) if !d.is_zero() => d,
            Some(Ok(_)) => {
                self.err(path, "must be greater than zero");
                default
            }
            Some(Err(e)) => {
                self.err(path, e);
                default
            }
        }
    }

    pub fn millicores(&mut self, path: &str, text: Option<&str>) -> Option<u32> {
        match text.map(parse_millicores)? {
            Ok(m) => Some(m),
            Err(e) => {
                self.err(path, e);
                None
            }
        }
    }

    pub fn number_in(&mut self, path: &str, value: f64, lo: f64, hi: f64, unit: &str) -> f64 {
        if value.is_finite() && (lo..=hi).contains(&value) {
            value
        } else {
            self.err(
                path,
                format!("{} is outside {lo}..{hi} {unit}", show_number(value)),
            );
            value.clamp(lo, hi)
        }
    }
}

/// A number as an operator wrote it, short: `1e300` stays `1e300`, not 301 digits.
pub fn show_number(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude != 0.0 && !(1e-4..1e9).contains(&magnitude) {
        format!("{value:e}")
    } else {
        format!("{value}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_print_short() {
        assert_eq!(show_number(1e300), "1e300");
        assert_eq!(show_number(-2.5e-9), "-2.5e-9");
        assert_eq!(show_number(80.5), "80.5");
        assert_eq!(show_number(0.0), "0");
        let mut v = Validator::default();
        v.number_in("power.ceilingPercent", 1e300, 1.0, 100.0, "%");
        let errs = v.finish(()).unwrap_err().0;
        assert_eq!(
            errs[0].to_string(),
            "power.ceilingPercent: 1e300 is outside 1..100 %"
        );
    }
}
