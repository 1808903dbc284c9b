//! URLs of power inputs and models. A URL may carry credentials (`http://user:pass@host`);
//! `HttpUrl` shows itself (Display and Debug) without them, so they never reach a log line,
//! an error, `/weights` or `check`'s output. Only the request itself sees `full()`.

use std::fmt;

/// An `http://` or `https://` URL, without a trailing slash.
#[derive(Clone, PartialEq, Eq)]
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

impl fmt::Debug for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", redact(&self.0))
    }
}

/// `scheme://user:pass@host/…` → `scheme://***@host/…`; anything else unchanged.
pub fn redact(text: &str) -> String {
    let Some((scheme, rest)) = text.split_once("://") else {
        return text.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://***@{host}{tail}"),
        None => text.to_string(),
    }
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
        let e = HttpUrl::parse("ftp://u:pw@host").unwrap_err();
        assert!(!e.contains("pw"), "{e}");
    }
}
