//! A table of virtual services and destinations in `ipvsadm -Ln`'s layout, for
//! `wao-lb ipvs` (what would be programmed) and for comparing with the kernel's.

use std::fmt::Write;

use super::reconcile::Table;

/// `table` as `ipvsadm -Ln` prints it (without its version line).
pub fn render(table: &Table) -> String {
    let mut out = String::from(
        "Prot LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n",
    );
    for (id, entry) in table {
        let _ = write!(
            out,
            "{}  {} {}",
            id.protocol.name(),
            id.addr,
            entry.service.scheduler
        );
        if let Some(timeout) = entry.service.persistence {
            let _ = write!(out, " persistent {timeout}");
        }
        out.push('\n');
        for d in entry.dests.values() {
            let _ = writeln!(
                out,
                "  -> {:<28} Masq    {:<6} {:<10} {}",
                d.addr.to_string(),
                d.weight,
                d.active,
                d.inactive
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::message::{Destination, IpvsProtocol, VirtualId, VirtualService};
    use super::super::reconcile::Entry;
    use super::*;

    #[test]
    fn ipvsadm_layout() {
        let id = VirtualId {
            protocol: IpvsProtocol::Tcp,
            addr: "10.96.0.1:80".parse().unwrap(),
        };
        let d = Destination::new("10.244.1.5:8080".parse().unwrap(), 2500);
        let table = Table::from([(
            id,
            Entry {
                service: VirtualService {
                    id,
                    scheduler: "wrr".into(),
                    persistence: Some(10_800),
                },
                dests: [(d.addr, d)].into(),
            },
        )]);
        let text = render(&table);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[2], "TCP  10.96.0.1:80 wrr persistent 10800");
        assert_eq!(
            lines[3],
            "  -> 10.244.1.5:8080              Masq    2500   0          0"
        );
    }
}
