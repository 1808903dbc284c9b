//! Redirect: the kernel side of transparent mode. `nftables` derives wao-lb's own table
//! from the Plan's frontends and applies it as one atomic `nft -f` transaction; `routing`
//! owns the policy-routing rules that deliver marked packets locally. `Redirect` is what
//! the proxy holds: install once, sync on every Plan, remove at stop.

pub mod nftables;
pub mod routing;

use crate::dataplane::command::CommandError;
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
    pub async fn install(tproxy: TproxySettings) -> Result<Redirect, CommandError> {
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
    pub async fn sync(&mut self, entries: &[Entry]) -> Result<(), CommandError> {
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
