//! Re-reads the config file when asked (SIGHUP, or the `reload` sender of a running
//! balancer) or when its bytes change (polled each second, and read once they have held
//! still, so a truncate-then-write is not read half-way). Every re-read of new bytes is
//! handed on, valid or not; the receiver decides what to apply and keeps the running one on
//! error. A request for bytes already re-read is answered from the log, not counted twice.
//! Parsing runs on a blocking thread, never on the data path's workers.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::FileConfig;
use crate::settings::ConfigErrors;

/// How often the file is checked for changes.
const POLL: Duration = Duration::from_secs(1);

/// How long changed bytes must hold still before they are read.
const SETTLE: Duration = Duration::from_millis(100);

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
                    if fingerprint(&path) == seen {
                        continue;
                    }
                    "file changed"
                }
            };
            let now = settled(&path).await;
            if now.is_some() && now == seen {
                if why == "signal" {
                    tracing::info!(
                        "reload requested; the config file has not changed since it was last read"
                    );
                }
                continue;
            }
            if now.is_none() && why != "signal" {
                continue; // gone for now (being replaced); a signal reports why
            }
            seen = now;
            let file = path.clone();
            let loaded = match tokio::task::spawn_blocking(move || FileConfig::load(&file)).await {
                Ok(loaded) => loaded,
                Err(e) => Err(ConfigErrors::whole_file(format!(
                    "reading the config failed: {e}"
                ))),
            };
            if tx.send(Reread { why, loaded }).await.is_err() {
                return;
            }
        }
    });
    rx
}

/// The fingerprint of the file once two reads `SETTLE` apart agree.
async fn settled(path: &Path) -> Option<Fingerprint> {
    let mut last = fingerprint(path);
    loop {
        tokio::time::sleep(SETTLE).await;
        let now = fingerprint(path);
        if now == last {
            return now;
        }
        last = now;
    }
}

/// What identifies the file's current bytes without reading them: its inode, size and
/// status-change time (which every write moves, as it does the modification time). A
/// rewrite with the same bytes reads again and applies nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    inode: u64,
    len: u64,
    changed: (i64, i64),
}

/// The file's fingerprint, or None if it cannot be read.
fn fingerprint(path: &Path) -> Option<Fingerprint> {
    let m = std::fs::metadata(path).ok()?;
    Some(Fingerprint {
        inode: m.ino(),
        len: m.len(),
        changed: (m.ctime(), m.ctime_nsec()),
    })
}
