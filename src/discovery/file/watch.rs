//! Re-reads the config file when asked (SIGHUP, or the `reload` sender of a running
//! balancer) or when its bytes change (polled each second). Every re-read is handed on,
//! valid or not; the receiver decides what to apply and keeps the running one on error.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::FileConfig;
use crate::settings::ConfigErrors;

/// How often the file is checked for changes.
const POLL: Duration = Duration::from_secs(1);

/// One re-read of the file and why it happened.
pub struct Reread {
    pub why: &'static str,
    pub loaded: Result<FileConfig, ConfigErrors>,
}

/// Watches `path` until `stop`: each request on `requests`, and each change of the file's
/// bytes, sends one `Reread`.
pub fn spawn(
    path: PathBuf,
    mut requests: mpsc::Receiver<()>,
    stop: CancellationToken,
) -> mpsc::Receiver<Reread> {
    let (tx, rx) = mpsc::channel(4);
    let mut seen = fingerprint(&path);
    tokio::spawn(async move {
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let why = tokio::select! {
                _ = stop.cancelled() => return,
                Some(()) = requests.recv() => "signal",
                _ = poll.tick() => {
                    let now = fingerprint(&path);
                    if now.is_none() || now == seen {
                        continue;
                    }
                    "file changed"
                }
            };
            seen = fingerprint(&path).or(seen);
            let loaded = FileConfig::load(&path);
            if tx.send(Reread { why, loaded }).await.is_err() {
                return;
            }
        }
    });
    rx
}

/// A hash of the file's bytes, or None if it cannot be read.
fn fingerprint(path: &Path) -> Option<u64> {
    let bytes = std::fs::read(path).ok()?;
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    Some(h.finish())
}
