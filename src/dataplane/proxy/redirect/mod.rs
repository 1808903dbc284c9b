//! Redirect: the kernel side of transparent mode. `nftables` derives wao-lb's own table
//! from the Plan's frontends and applies it as one atomic `nft -f` transaction; `routing`
//! owns the policy-routing rules that deliver marked packets locally. `Redirect` is what
//! the proxy holds: install once, sync on every Plan, remove at stop.

pub mod nftables;
pub mod routing;

use crate::settings::TproxySettings;
use nftables::Entry;

/// The installed redirect rules of one running proxy.
pub struct Redirect {
    tproxy: TproxySettings,
    /// The nftables ruleset last applied, so unchanged ones are not re-applied.
    applied: Option<String>,
}

impl Redirect {
    /// Installs policy routing; the nftables table follows with the first `sync`.
    pub async fn install(tproxy: TproxySettings) -> Result<Redirect, RedirectError> {
        if let Err(e) = routing::install(&tproxy).await {
            routing::remove(&tproxy).await;
            return Err(e);
        }
        Ok(Redirect {
            tproxy,
            applied: None,
        })
    }

    /// Applies the ruleset for `entries` when it differs from the one in place.
    pub async fn sync(&mut self, entries: &[Entry]) -> Result<(), RedirectError> {
        let ruleset = nftables::render(entries, &self.tproxy);
        if self.applied.as_deref() == Some(ruleset.as_str()) {
            return Ok(());
        }
        nftables::apply(&ruleset).await?;
        self.applied = Some(ruleset);
        Ok(())
    }

    /// Removes the table and the routing rules.
    pub async fn remove(self) {
        if let Err(e) = nftables::remove().await {
            tracing::warn!(error = %e, "could not remove the nftables table");
        }
        routing::remove(&self.tproxy).await;
    }
}

/// What went wrong talking to the kernel's tools, with the command and its words.
#[derive(Debug, thiserror::Error)]
pub enum RedirectError {
    #[error("`{command}` could not run: {source} (is it installed?)")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed: {stderr}")]
    Failed { command: String, stderr: String },
}

/// Runs `program args…` with `stdin`; an error names the command and what it printed.
pub(crate) async fn run(
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<(), RedirectError> {
    use tokio::io::AsyncWriteExt;
    let command = format!("{program} {}", args.join(" "));
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|source| RedirectError::Spawn {
            command: command.clone(),
            source,
        })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let _ = pipe.write_all(text.as_bytes()).await;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|source| RedirectError::Spawn {
            command: command.clone(),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(RedirectError::Failed {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}
