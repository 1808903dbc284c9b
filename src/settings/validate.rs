//! Validation with key paths: a `Validator` collects every value error of a file as
//! `path: message`, so an operator fixes a file in one round. Structural errors (unknown
//! keys, wrong types) come from serde through `structural`, with the path of the first one.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use crate::model::units::{parse_duration, parse_millicores};

/// One problem in a config file: the path of the key and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
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
        ConfigErrors(vec![ConfigError {
            path: String::new(),
            message: message.into(),
        }])
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

/// Deserialises YAML text into `T`, turning a structural error into one `ConfigError` with
/// the full key path (`services[0].backends[0].adress`) and the line and column.
pub fn structural<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, ConfigErrors> {
    let de = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = strip_location(&inner);
        // serde_yaml puts its own (shorter) path in front; ours is the full one.
        let message = match message.split_once(": ") {
            Some((head, rest)) if path.starts_with(head) => rest.to_string(),
            _ => message,
        };
        ConfigErrors(vec![ConfigError {
            path: if path == "." { String::new() } else { path },
            message,
        }])
    })
}

/// serde_yaml appends "at line L column C"; keep the location, which helps, but put it last
/// behind the message so the path leads.
fn strip_location(e: &serde_yaml::Error) -> String {
    let msg = e.to_string();
    match e.location() {
        Some(loc) => {
            let suffix = format!(" at line {} column {}", loc.line(), loc.column());
            let base = msg.strip_suffix(&suffix).unwrap_or(&msg);
            format!("{base} (line {}, column {})", loc.line(), loc.column())
        }
        None => msg,
    }
}

/// Collects value errors; each check returns a usable value (the default on error) so that
/// validation goes on and reports everything.
#[derive(Default)]
pub struct Validator {
    errors: Vec<ConfigError>,
}

impl Validator {
    pub fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError {
            path: path.into(),
            message: message.into(),
        });
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
            self.err(path, format!("{value} is outside {lo}..{hi} {unit}"));
            value.clamp(lo, hi)
        }
    }
}
