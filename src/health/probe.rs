//! One check: a TCP connect to a backend within a timeout, and what its outcome says about
//! the backend. A connect that fails for lack of local resources says nothing about it.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

/// What one check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure(String),
    /// The check could not be made here (out of files, memory or buffers): no verdict.
    Inconclusive(String),
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure(_) => "failure",
            Outcome::Inconclusive(_) => "inconclusive",
        }
    }
}

/// Connects to `backend` and closes at once.
pub async fn probe(backend: SocketAddr, timeout: Duration) -> Outcome {
    match tokio::time::timeout(timeout, TcpStream::connect(backend)).await {
        Ok(Ok(_stream)) => Outcome::Success,
        Ok(Err(e)) if is_resource_exhaustion(&e) => Outcome::Inconclusive(e.to_string()),
        Ok(Err(e)) => Outcome::Failure(format!("connect: {e}")),
        Err(_) => Outcome::Failure(format!("connect timed out after {}ms", timeout.as_millis())),
    }
}

/// Whether an error means this process or host ran out of something (files, memory,
/// buffers) rather than that the peer failed.
pub fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_listener_passes_and_a_closed_port_fails() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        assert_eq!(probe(addr, Duration::from_secs(5)).await, Outcome::Success);
        drop(listener);
        match probe(addr, Duration::from_secs(5)).await {
            Outcome::Failure(why) => assert!(why.contains("refused"), "{why}"),
            other => panic!("a closed port must fail: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_backend_that_drops_syns_times_out() {
        // A listener whose accept queue is full and never drained: the kernel drops new SYNs.
        let socket = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )
        .unwrap();
        socket
            .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        socket.listen(0).unwrap();
        let addr = socket.local_addr().unwrap().as_socket().unwrap();
        // Fill the queue; connects that complete while it has room do not count.
        let mut held = Vec::new();
        loop {
            match probe_keep(addr, Duration::from_secs(2)).await {
                Some(s) => held.push(s),
                None => break,
            }
            assert!(held.len() < 64, "the accept queue never filled");
        }
        match probe(addr, Duration::from_millis(300)).await {
            Outcome::Failure(why) => assert!(why.contains("timed out after 300ms"), "{why}"),
            other => panic!("a full accept queue must time out: {other:?}"),
        }
    }

    async fn probe_keep(addr: SocketAddr, timeout: Duration) -> Option<TcpStream> {
        tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .ok()?
            .ok()
    }

    #[test]
    fn local_exhaustion_is_not_the_peers_fault() {
        assert!(is_resource_exhaustion(&io::Error::from_raw_os_error(
            libc::EMFILE
        )));
        assert!(!is_resource_exhaustion(&io::Error::from_raw_os_error(
            libc::ECONNREFUSED
        )));
    }
}
