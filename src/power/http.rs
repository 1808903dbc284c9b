//! One HTTP exchange with a power input or model: the answer read in chunks up to
//! `MAX_BODY` (a larger one is refused before it is held, and is a failure like any other),
//! and errors worded for an operator ("timed out after 3000ms", "connection refused"), with
//! the URL shown without its credentials.

use std::time::Duration;

use reqwest::{RequestBuilder, Response};

use crate::model::node::BasicAuth;
use crate::model::url::HttpUrl;

/// The largest answer read from an input or a model. Real ones are kilobytes; a
/// node_exporter page with hundreds of CPUs is well under a megabyte.
pub const MAX_BODY: usize = 4 << 20;

/// Sends `request` (a `method` to `url`) and returns the body of a 2xx answer.
pub async fn exchange(
    request: RequestBuilder,
    method: &str,
    url: &HttpUrl,
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    let fail = |what: String| format!("{method} {url}: {what}");
    let response = request
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| fail(describe(&e, timeout)))?;
    if !response.status().is_success() {
        return Err(fail(format!("HTTP {}", response.status())));
    }
    bounded_body(response, timeout).await.map_err(fail)
}

/// GETs `url`, with basic `auth` if given, and returns the body of a 2xx answer.
pub async fn get(
    client: &reqwest::Client,
    url: &HttpUrl,
    auth: Option<&BasicAuth>,
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    let mut request = client.get(url.full());
    if let Some(a) = auth {
        request = request.basic_auth(&a.username, Some(&a.password));
    }
    exchange(request, "GET", url, timeout).await
}

/// As `get`, the answer parsed as JSON.
pub async fn get_json(
    client: &reqwest::Client,
    url: &HttpUrl,
    auth: Option<&BasicAuth>,
    timeout: Duration,
) -> Result<serde_json::Value, String> {
    let body = get(client, url, auth, timeout).await?;
    serde_json::from_slice(&body).map_err(|e| format!("GET {url}: not JSON: {e}"))
}

/// The body, refused as soon as it passes `MAX_BODY`.
async fn bounded_body(mut response: Response, timeout: Duration) -> Result<Vec<u8>, String> {
    let too_large = || format!("answer larger than {} MiB refused", MAX_BODY >> 20);
    if response
        .content_length()
        .is_some_and(|n| n > MAX_BODY as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| describe(&e, timeout))? {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// What went wrong, without reqwest's "error sending request for url (…)" wrapper (which
/// would repeat the URL with its credentials): the timeout, or the innermost cause.
fn describe(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        return format!("timed out after {}ms", timeout.as_millis());
    }
    let mut cause: &dyn std::error::Error = e;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    let text = cause.to_string();
    if e.is_connect() {
        format!("cannot connect: {text}")
    } else {
        crate::model::url::redact(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A one-shot HTTP server answering every request with `head` and then `body_len` bytes.
    async fn server(head: String, body_len: usize) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let head = head.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf).await;
                    let _ = s.write_all(head.as_bytes()).await;
                    let chunk = vec![b'1'; 64 * 1024];
                    let mut left = body_len;
                    while left > 0 {
                        let n = left.min(chunk.len());
                        if s.write_all(&chunk[..n]).await.is_err() {
                            return;
                        }
                        left -= n;
                    }
                });
            }
        });
        addr
    }

    async fn get(addr: std::net::SocketAddr) -> Result<Vec<u8>, String> {
        let url = HttpUrl::parse(&format!("http://user:hunter2@{addr}/x")).unwrap();
        let client = reqwest::Client::new();
        exchange(client.get(url.full()), "GET", &url, Duration::from_secs(20)).await
    }

    #[tokio::test]
    async fn answers_past_the_cap_are_refused_with_or_without_a_length() {
        let big = MAX_BODY + 1;
        let with_length = server(
            format!("HTTP/1.1 200 OK\r\ncontent-length: {big}\r\n\r\n"),
            big,
        )
        .await;
        let without = server(
            "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n".to_string(),
            64 * MAX_BODY,
        )
        .await;
        for addr in [with_length, without] {
            let e = get(addr).await.unwrap_err();
            assert!(e.contains("larger than 4 MiB"), "{e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
        let fits = server(
            "HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n".to_string(),
            1000,
        )
        .await;
        assert_eq!(get(fits).await.unwrap().len(), 1000);
    }

    #[tokio::test]
    async fn errors_name_the_cause_without_credentials() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let e = get(addr).await.unwrap_err();
        assert!(e.contains("cannot connect"), "{e}");
        assert!(e.contains("http://***@127.0.0.1"), "{e}");
        assert!(!e.contains("hunter2") && !e.contains("user"), "{e}");
    }
}
