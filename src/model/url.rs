//! URLs of power inputs and models. A URL may carry credentials (`http://user:pass@host`);
//! `HttpUrl` shows itself (Display and Debug) without them, so they never reach a log line,
//! an error, `/weights` or `check`'s output. Only the request itself sees `full()`.

use std::fmt;

/// An `http://` or `https://` URL, without a trailing slash.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HttpUrl(String);

impl HttpUrl {
    /// Checks the scheme; the error shows the text redacted.
    pub fn parse(text: &str) -> Result<HttpUrl, String> {
        if text.starts_with("http://") || text.starts_with("https://") {
            Ok(HttpUrl(text.trim_end_matches('/').to_string()))
        } else {
            Err(format!(
                "{:?} is not an http:// or https:// URL",
                redact(text)
            ))
        }
    }

    /// This URL with `path` appended (`path` starts with `/`).
    pub fn join(&self, path: &str) -> HttpUrl {
        HttpUrl(format!("{}{path}", self.0))
    }

    /// The URL with its credentials, for the request only.
    pub fn full(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(&self.0))
    }
}

impl serde::Serialize for HttpUrl {
    /// Shown as Display shows it: without credentials.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl fmt::Debug for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", redact(&self.0))
    }
}

/// Every `//user:pass@host` in `text` → `//***@host`; the rest unchanged. Works on any text
/// (an error quoting a mangled config value, say), not only on a well-formed URL.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("//") {
        let (head, after) = rest.split_at(at + 2);
        out.push_str(head);
        let end = after
            .find(|c: char| matches!(c, '/' | '?' | '#' | '"' | '\'') || c.is_whitespace())
            .unwrap_or(after.len());
        let (authority, tail) = after.split_at(end);
        match authority.rsplit_once('@') {
            Some((_, host)) => {
                out.push_str("***@");
                out.push_str(host);
            }
            None => out.push_str(authority),
        }
        rest = tail;
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_show() {
        let u = HttpUrl::parse("http://admin:s3cret@10.0.0.1:9100/").unwrap();
        assert_eq!(u.full(), "http://admin:s3cret@10.0.0.1:9100");
        assert_eq!(u.to_string(), "http://***@10.0.0.1:9100");
        assert_eq!(format!("{u:?}"), "\"http://***@10.0.0.1:9100\"");
        assert_eq!(
            u.join("/metrics").to_string(),
            "http://***@10.0.0.1:9100/metrics"
        );
        assert_eq!(
            redact("https://a:b@c@host/p?q=x@y"),
            "https://***@host/p?q=x@y"
        );
        assert_eq!(redact("http://host/a@b"), "http://host/a@b");
        assert_eq!(redact("1e300//u:p@h/m"), "1e300//***@h/m");
        assert_eq!(
            redact("unknown source \"x \\\"http://u:p@h:1/m\\\"\" and ftp://a@b c"),
            "unknown source \"x \\\"http://***@h:1/m\\\"\" and ftp://***@b c"
        );
        let e = HttpUrl::parse("ftp://u:pw@host").unwrap_err();
        assert!(!e.contains("pw"), "{e}");
    }
}
