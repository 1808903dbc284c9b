//! The proxy's listening sockets: one per frontend when it binds service addresses
//! (`redirect: listen`), kept across Plans while the frontend stays; or the transparent
//! listeners of TPROXY mode (TCP and UDP on `tproxy.port`, TCP on `tproxy.localPort` for the
//! node's own connections), IPv4 and, where the kernel has it, IPv6.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{socket, tcp, udp, Destination, ProxyContext};
use crate::balance::plan::Plan;
use crate::dataplane::DataplaneError;
use crate::model::{Frontend, Protocol};
use crate::settings::TproxySettings;

#[derive(Default)]
pub struct Listeners {
    bound: BTreeMap<Frontend, CancellationToken>,
    /// Transparent mode's listeners, one token per address family.
    transparent: Vec<CancellationToken>,
}

impl Listeners {
    /// Binds listeners for new frontends and stops those of removed ones; unchanged ones are
    /// kept, so their connections are untouched. Returns the first bind error, after
    /// binding everything else it could.
    pub fn reconcile(
        &mut self,
        plan: &Plan,
        ctx: &Arc<ProxyContext>,
    ) -> Result<(), DataplaneError> {
        self.bound.retain(|f, token| {
            let keep = plan.services.contains_key(f);
            if !keep {
                token.cancel();
            }
            keep
        });
        let mut first_error = None;
        for &frontend in plan.services.keys() {
            if self.bound.contains_key(&frontend) {
                continue;
            }
            match bind(frontend, ctx) {
                Ok(token) => {
                    self.bound.insert(frontend, token);
                }
                Err(source) => {
                    tracing::error!(%frontend, error = %source, "cannot bind");
                    first_error.get_or_insert(DataplaneError::Bind { frontend, source });
                }
            }
        }
        ctx.metrics.listeners.set(self.bound.len() as i64);
        first_error.map_or(Ok(()), Err)
    }

    /// Binds the transparent listeners; the first failure is returned.
    pub fn start_transparent(
        &mut self,
        t: &TproxySettings,
        ctx: &Arc<ProxyContext>,
    ) -> Result<(), DataplaneError> {
        let mut hosts: Vec<IpAddr> = vec![Ipv4Addr::LOCALHOST.into()];
        if socket::ipv6_enabled() {
            hosts.push(Ipv6Addr::LOCALHOST.into());
        }
        for host in hosts {
            let err = |what, addr, source| DataplaneError::Transparent { what, addr, source };
            let at = SocketAddr::new(host, t.port);
            let local = SocketAddr::new(host, t.local_port);
            let tcp_l = socket::transparent_tcp_listener(at)
                .map_err(|e| err("transparent TCP listener", at, e))?;
            let udp_l = socket::transparent_udp_listener(at)
                .map_err(|e| err("transparent UDP listener", at, e))?;
            let local_l =
                socket::tcp_listener(local).map_err(|e| err("local TCP listener", local, e))?;
            let token = CancellationToken::new();
            tokio::spawn(tcp::serve(
                tcp_l,
                Destination::Transparent,
                ctx.clone(),
                token.clone(),
            ));
            tokio::spawn(udp::serve(
                udp_l,
                Destination::Transparent,
                ctx.clone(),
                token.clone(),
            ));
            tokio::spawn(tcp::serve(
                local_l,
                Destination::Redirected,
                ctx.clone(),
                token.clone(),
            ));
            self.transparent.push(token);
            tracing::info!(%at, %local, "transparent listeners up");
        }
        ctx.metrics.listeners.set(self.transparent.len() as i64 * 3);
        Ok(())
    }

    pub fn is_transparent(&self) -> bool {
        !self.transparent.is_empty()
    }

    /// Stops accepting everywhere; open connections go on.
    pub fn stop(&mut self, ctx: &ProxyContext) {
        for (_, token) in std::mem::take(&mut self.bound) {
            token.cancel();
        }
        for token in std::mem::take(&mut self.transparent) {
            token.cancel();
        }
        ctx.metrics.listeners.set(0);
    }
}

fn bind(frontend: Frontend, ctx: &Arc<ProxyContext>) -> std::io::Result<CancellationToken> {
    let token = CancellationToken::new();
    let destination = Destination::Bound(frontend);
    match frontend.protocol {
        Protocol::Tcp => {
            let listener = socket::tcp_listener(frontend.address)?;
            tokio::spawn(tcp::serve(
                listener,
                destination,
                ctx.clone(),
                token.clone(),
            ));
        }
        Protocol::Udp => {
            let sock = socket::udp_listener(frontend.address)?;
            tokio::spawn(udp::serve(sock, destination, ctx.clone(), token.clone()));
        }
    }
    tracing::info!(%frontend, "listening");
    Ok(token)
}
