//! Reading YAML from outside: the size, nesting and alias limits checked before serde sees
//! the text, and serde's first structural error (unknown key, wrong type, duplicate key)
//! turned into one `ConfigError` with the full key path and the line of the bad value.
//!
//! The limits keep a hostile or broken file cheap: aliases would let a 1 MB file expand to
//! gigabytes, and deep nesting makes parsing slow. A config file needs neither.

use std::collections::HashSet;

use yaml_rust2::parser::{Event, Parser};

use super::validate::{ConfigError, ConfigErrors};

/// The largest config text accepted (4 MiB holds tens of thousands of services).
pub const MAX_BYTES: usize = 4 << 20;

/// The deepest nesting of mappings and sequences accepted.
pub const MAX_DEPTH: usize = 32;

/// Deserialises YAML text into `T`, after `check_limits`.
pub fn structural<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, ConfigErrors> {
    check_limits(text)?;
    let de = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let inner = e.into_inner();
        let mut message = inner.to_string();
        if let Some(loc) = inner.location() {
            let suffix = format!(" at line {} column {}", loc.line(), loc.column());
            message = message
                .strip_suffix(&suffix)
                .unwrap_or(&message)
                .to_string();
        }
        // serde_yaml puts its own (shorter) path in front; ours is the full one.
        if let Some((head, rest)) = message.split_once(": ") {
            if path.starts_with(head) {
                message = rest.to_string();
            }
        }
        // serde_yaml places errors raised for a whole mapping (a missing field, say) at the
        // mapping's start, often line 1; the line of the path is the one to fix.
        let line = Some(path.as_str())
            .filter(|p| !p.is_empty())
            .and_then(|p| line_of(text, p))
            .or_else(|| inner.location().map(|l| l.line()));
        if let Some(line) = line {
            message = format!("{message} (line {line})");
        }
        ConfigErrors(vec![ConfigError::new(path, message)])
    })
}

/// Refuses text that is too large, nested too deeply, uses aliases or repeats a key, at the
/// first offence and with its line; the scan stops there, so refusing costs microseconds.
pub fn check_limits(text: &str) -> Result<(), ConfigErrors> {
    if text.len() > MAX_BYTES {
        return Err(ConfigErrors::whole_file(format!(
            "the config is {} bytes; at most {MAX_BYTES} are accepted",
            text.len()
        )));
    }
    walk(text, None).map(|_| ())
}

/// The line where the key or value at `path` (`services[0].backends[1].address`) starts.
fn line_of(text: &str, path: &str) -> Option<usize> {
    walk(text, Some(path)).ok().flatten()
}

/// Where the walk is inside one mapping or sequence.
enum Frame {
    Seq {
        index: usize,
    },
    Map {
        keys: HashSet<String>,
        key: Option<String>,
    },
}

/// Walks the YAML events, enforcing the limits; with a `target` path, returns the line of
/// the first node at it. Paths are built only for a target or a duplicate key, so the
/// limits alone cost no allocation per node.
fn walk(text: &str, target: Option<&str>) -> Result<Option<usize>, ConfigErrors> {
    let mut parser = Parser::new_from_str(text);
    let mut stack: Vec<Frame> = Vec::new();
    loop {
        let (event, mark) = parser.next_token().map_err(|e| {
            let line = e.marker().line();
            ConfigErrors::whole_file(if e.info().contains("recursion limit") {
                format!("nested deeper than {MAX_DEPTH} levels (line {line})")
            } else {
                format!("not valid YAML: {} (line {line})", e.info())
            })
        })?;
        let line = mark.line();
        let scalar = match &event {
            Event::Scalar(value, ..) => Some(value.as_str()),
            Event::SequenceStart(..) | Event::MappingStart(..) => Some("?"),
            _ => None,
        };
        if let Some(name) = scalar {
            if let Some(Frame::Map { keys, key: None }) = stack.last_mut() {
                // This node is a key.
                if !keys.insert(name.to_string()) {
                    return Err(ConfigErrors(vec![ConfigError::new(
                        join(&path_of(&stack), name),
                        format!("duplicate key {name:?} (line {line})"),
                    )]));
                }
            }
            if target.is_some_and(|t| node_path(&stack, name) == t) {
                return Ok(Some(line));
            }
        }
        match event {
            Event::StreamEnd => return Ok(None),
            Event::Alias(_) => {
                return Err(ConfigErrors::whole_file(format!(
                    "YAML aliases (*name) are not accepted (line {line})"
                )))
            }
            Event::SequenceStart(..) | Event::MappingStart(..) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(ConfigErrors::whole_file(format!(
                        "nested deeper than {MAX_DEPTH} levels (line {line})"
                    )));
                }
                stack.push(match event {
                    Event::SequenceStart(..) => Frame::Seq { index: 0 },
                    _ => Frame::Map {
                        keys: HashSet::new(),
                        key: None,
                    },
                });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                stack.pop();
                node_done(&mut stack, "?");
            }
            Event::Scalar(value, ..) => node_done(&mut stack, &value),
            _ => {}
        }
    }
}

/// The path of a node starting now: a key's own path is its mapping's path and its name, a
/// value's is its key's, an item's its sequence index.
fn node_path(stack: &[Frame], name: &str) -> String {
    let path = path_of(stack);
    match stack.last() {
        Some(Frame::Map { key: None, .. }) => join(&path, name),
        Some(Frame::Map { key: Some(k), .. }) => join(&path, k),
        _ => path,
    }
}

/// A node of the innermost mapping or sequence is complete: a key awaits its value, a value
/// (or item) is finished.
fn node_done(stack: &mut [Frame], scalar: &str) {
    match stack.last_mut() {
        Some(Frame::Seq { index }) => *index += 1,
        Some(Frame::Map { key, .. }) => {
            *key = match key {
                None => Some(scalar.to_string()),
                Some(_) => None,
            }
        }
        None => {}
    }
}

/// The path of the node the innermost frame is about to hold, without its own key.
fn path_of(stack: &[Frame]) -> String {
    let mut path = String::new();
    let Some((_, outer)) = stack.split_last() else {
        return path;
    };
    for frame in outer {
        match frame {
            Frame::Seq { index } => path.push_str(&format!("[{index}]")),
            Frame::Map { key, .. } => path = join(&path, key.as_deref().unwrap_or("?")),
        }
    }
    if let Some(Frame::Seq { index }) = stack.last() {
        path.push_str(&format!("[{index}]"));
    }
    path
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Doc {
        a: Option<serde_yaml::Value>,
        b: Option<serde_yaml::Value>,
    }

    fn error_of(text: &str) -> String {
        structural::<Doc>(text).unwrap_err().to_string()
    }

    #[test]
    fn aliases_are_refused_with_their_line() {
        let e = error_of("a: &x [1, 2]\nb: [*x, *x]\n");
        assert!(e.contains("aliases") && e.contains("line 2"), "{e}");
    }

    #[test]
    fn deep_nesting_is_refused_fast() {
        for text in [
            "[".repeat(100_000) + &"]".repeat(100_000),
            "- ".repeat(100_000) + "x\n",
            format!("a: {}1{}", "{b: ".repeat(50_000), "}".repeat(50_000)),
        ] {
            let e = error_of(&text);
            assert!(e.contains("nested deeper than 32 levels (line 1)"), "{e}");
        }
        assert!(structural::<Doc>(&format!("a: {}1{}", "[".repeat(20), "]".repeat(20))).is_ok());
    }

    #[test]
    fn oversized_text_is_refused_before_parsing() {
        let text = format!("a: \"{}\"\n", "x".repeat(MAX_BYTES));
        let e = error_of(&text);
        assert!(e.contains("at most 4194304 are accepted"), "{e}");
    }

    #[test]
    fn duplicate_keys_have_their_path() {
        let e = error_of("a: 1\na: 2\n");
        assert_eq!(e, "a: duplicate key \"a\" (line 2)");
        let e = error_of("a:\n  - {x: 1}\n  - {x: 1, y: 2, x: 3}\n");
        assert_eq!(e, "a[1].x: duplicate key \"x\" (line 3)");
    }

    #[test]
    fn errors_carry_the_line_of_their_path() {
        let text = "a:\n  - 1\n  - {x: 1}\nb: 2\nc: 3\n";
        assert_eq!(line_of(text, "a[1].x"), Some(3));
        assert_eq!(line_of(text, "b"), Some(4));
        let e = error_of(text);
        assert_eq!(e, "c: unknown field `c`, expected `a` or `b` (line 5)");
    }
}
