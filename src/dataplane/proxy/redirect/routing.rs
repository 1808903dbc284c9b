//! Policy routing for transparent mode: packets carrying wao-lb's mark look up a table whose
//! only route is `local default dev lo`, so TPROXYed packets are delivered to the local
//! listeners (IPv4 and, where the kernel has it, IPv6). Install is idempotent; remove
//! leaves nothing behind.

use crate::dataplane::command::{run, CommandError};
use crate::dataplane::proxy::socket::ipv6_enabled;
use crate::settings::TproxySettings;

fn families() -> Vec<(&'static str, &'static str)> {
    let mut f = vec![("-4", "0.0.0.0/0")];
    if ipv6_enabled() {
        f.push(("-6", "::/0"));
    }
    f
}

/// The `ip` commands that install the rules (shown by `wao-lb nft` too).
pub fn install_commands(t: &TproxySettings) -> Vec<Vec<String>> {
    let (mark, table) = (
        format!("{:#x}/{:#x}", t.mark, t.mark),
        t.route_table.to_string(),
    );
    families()
        .into_iter()
        .flat_map(|(fam, any)| {
            [
                vec![
                    fam.into(),
                    "rule".into(),
                    "add".into(),
                    "fwmark".into(),
                    mark.clone(),
                    "lookup".into(),
                    table.clone(),
                ],
                vec![
                    fam.into(),
                    "route".into(),
                    "replace".into(),
                    "local".into(),
                    any.into(),
                    "dev".into(),
                    "lo".into(),
                    "table".into(),
                    table.clone(),
                ],
            ]
        })
        .collect()
}

/// Installs the rule and route for each family, replacing leftovers of an earlier run.
pub async fn install(t: &TproxySettings) -> Result<(), CommandError> {
    remove(t).await;
    for cmd in install_commands(t) {
        let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
        run("ip", &args, None).await?;
    }
    Ok(())
}

/// Removes every copy of the rule and flushes the table. Missing pieces are fine.
pub async fn remove(t: &TproxySettings) {
    let (mark, table) = (
        format!("{:#x}/{:#x}", t.mark, t.mark),
        t.route_table.to_string(),
    );
    for (fam, _) in families() {
        // A crashed instance may have left the rule more than once.
        for _ in 0..16 {
            if run(
                "ip",
                &[fam, "rule", "del", "fwmark", &mark, "lookup", &table],
                None,
            )
            .await
            .is_err()
            {
                break;
            }
        }
        let _ = run("ip", &[fam, "route", "flush", "table", &table], None).await;
    }
}
