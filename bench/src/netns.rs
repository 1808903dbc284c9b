//! A fresh network namespace for each target. Without it every target inherits the
//! TIME_WAIT sockets of the ones before: a crr run leaves up to the kernel's
//! `tcp_max_tw_buckets` (131,072 here) of them, and whether that table is empty, filling or
//! full changed the next target's connection rate by 2× on this machine. Needs root (as the
//! DNAT and transparent targets do); otherwise the targets share the caller's namespace.

use std::io;
use std::process::Command;

/// Moves the calling thread into a new network namespace with loopback up. The harness's
/// runtime is single-threaded, so its sockets and the peers it spawns from now on live
/// there; the previous namespace goes away with its last socket.
pub fn enter_fresh() -> io::Result<()> {
    // SAFETY: unshare(2) takes no pointers; it only changes the calling thread's namespaces.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let out = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "ip link set lo up: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_namespace_has_its_own_loopback() {
        // In a thread of its own, so the test harness's other threads stay where they are.
        std::thread::spawn(|| {
            let outside = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = outside.local_addr().unwrap().port();
            if enter_fresh().is_err() {
                // Not root: nothing to check here.
                return;
            }
            // The listener of the old namespace is not reachable from the new one, and the
            // same port is free again.
            assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
            let inside = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
            assert!(std::net::TcpStream::connect(inside.local_addr().unwrap()).is_ok());
        })
        .join()
        .unwrap();
    }
}
