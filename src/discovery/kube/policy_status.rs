//! Policy status: how many backends this node uses for each policy, written into the
//! policy's `status.nodes.<node>` by merge patch, so the nodes never overwrite each other.
//! One task writes what the latest translation says and remembers what it wrote. A state
//! is written once. A patch that fails (API server away, a conflict) is tried again with
//! back-off until it lands or a newer state replaces it.

use std::time::Duration;

use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::policies::PolicyUse;
use super::policy_types::{BalancingPolicy, LocalRedirectPolicy};
use crate::model::ServiceKind;

/// The pause before the first retry; each failed round doubles it, up to `LAST_RETRY`.
const FIRST_RETRY: Duration = Duration::from_secs(1);
const LAST_RETRY: Duration = Duration::from_secs(60);

/// Writes each state `wanted` publishes, until `stop` or until its sender is gone.
pub async fn write(
    client: Client,
    node: String,
    mut wanted: watch::Receiver<Vec<PolicyUse>>,
    stop: CancellationToken,
) {
    let mut written: Vec<PolicyUse> = Vec::new();
    let mut retry = FIRST_RETRY;
    loop {
        let now = wanted.borrow_and_update().clone();
        // A policy whose count changed, or that is gone, is no longer written as it is.
        written.retain(|w| now.contains(w));
        let mut failed = false;
        for u in &now {
            if written.contains(u) {
                continue;
            }
            if patch(&client, &node, u).await {
                written.push(u.clone());
            } else {
                failed = true;
            }
        }
        let pause = failed.then_some(retry);
        retry = next_retry(retry, failed);
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = wanted.changed() => if changed.is_err() { return },
            _ = sleep_for(pause) => {}
        }
    }
}

/// The pause after a round: doubled (up to `LAST_RETRY`) after a failure, back to the
/// first after a round that wrote everything.
fn next_retry(retry: Duration, failed: bool) -> Duration {
    if failed {
        (retry * 2).min(LAST_RETRY)
    } else {
        FIRST_RETRY
    }
}

/// Sleeps for `pause`; without one, forever.
async fn sleep_for(pause: Option<Duration>) {
    match pause {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// One merge patch of `status.nodes.<node>.backends`; false when it failed (logged at
/// debug: without the RBAC grant it fails on every try).
async fn patch(client: &Client, node: &str, u: &PolicyUse) -> bool {
    let patch = Patch::Merge(serde_json::json!({
        "status": {"nodes": {node: {"backends": u.backends}}}
    }));
    let params = PatchParams::default();
    let result = match u.kind {
        ServiceKind::LocalRedirectPolicy => {
            Api::<LocalRedirectPolicy>::namespaced(client.clone(), &u.namespace)
                .patch_status(&u.name, &params, &patch)
                .await
                .map(|_| ())
        }
        _ => Api::<BalancingPolicy>::namespaced(client.clone(), &u.namespace)
            .patch_status(&u.name, &params, &patch)
            .await
            .map(|_| ()),
    };
    if let Err(e) = &result {
        tracing::debug!(kind = %u.kind, namespace = %u.namespace, name = %u.name, error = %e,
            "cannot write the policy's status; trying again later");
    }
    result.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_to_a_ceiling_and_reset_after_success() {
        let mut r = FIRST_RETRY;
        let mut seen = Vec::new();
        for _ in 0..8 {
            seen.push(r.as_secs());
            r = next_retry(r, true);
        }
        assert_eq!(seen, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(next_retry(r, false), FIRST_RETRY);
    }
}
