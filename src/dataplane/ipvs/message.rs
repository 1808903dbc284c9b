//! The IPVS generic netlink family (`include/uapi/linux/ip_vs.h`), on
//! `netlink-packet-generic`: its commands, the attribute layout of virtual services and
//! destinations (types, lengths, byte order, nesting), and the typed values wao-lb sends
//! and reads back. Pure encoding and decoding; the socket is `client`'s.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use netlink_packet_core::{
    parse_u16, parse_u16_be, parse_u32, parse_u64, DecodeError, Emitable, Nla, NlaBuffer,
    NlasIterator, ParseableParametrized, NLA_F_NESTED,
};
use netlink_packet_generic::{GenlFamily, GenlHeader};

pub const FAMILY_NAME: &str = "IPVS";
const FAMILY_VERSION: u8 = 1;

/// Commands (`IPVS_CMD_*`).
pub mod cmd {
    pub const NEW_SERVICE: u8 = 1;
    pub const SET_SERVICE: u8 = 2;
    pub const DEL_SERVICE: u8 = 3;
    pub const GET_SERVICE: u8 = 4;
    pub const NEW_DEST: u8 = 5;
    pub const SET_DEST: u8 = 6;
    pub const DEL_DEST: u8 = 7;
    pub const GET_DEST: u8 = 8;
}

/// Top-level attributes (`IPVS_CMD_ATTR_*`), both nested.
const CMD_ATTR_SERVICE: u16 = 1;
const CMD_ATTR_DEST: u16 = 2;

/// Service attributes (`IPVS_SVC_ATTR_*`).
mod svc {
    pub const AF: u16 = 1;
    pub const PROTOCOL: u16 = 2;
    pub const ADDR: u16 = 3;
    pub const PORT: u16 = 4;
    pub const SCHED_NAME: u16 = 6;
    pub const FLAGS: u16 = 7;
    pub const TIMEOUT: u16 = 8;
    pub const NETMASK: u16 = 9;
}

/// Destination attributes (`IPVS_DEST_ATTR_*`).
mod dest {
    pub const ADDR: u16 = 1;
    pub const PORT: u16 = 2;
    pub const FWD_METHOD: u16 = 3;
    pub const WEIGHT: u16 = 4;
    pub const U_THRESH: u16 = 5;
    pub const L_THRESH: u16 = 6;
    pub const ACTIVE_CONNS: u16 = 7;
    pub const INACT_CONNS: u16 = 8;
    pub const STATS: u16 = 10;
    pub const ADDR_FAMILY: u16 = 11;
    pub const STATS64: u16 = 12;
}

/// Inside `STATS`/`STATS64`: connections scheduled so far (`IPVS_STATS_ATTR_CONNS`).
const STATS_CONNS: u16 = 1;

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
/// `IP_VS_SVC_F_PERSISTENT`: ClientIP affinity, with the service's timeout.
const F_PERSISTENT: u32 = 0x1;
/// `IP_VS_CONN_F_MASQ`: forwarding by NAT.
const FWD_MASQ: u32 = 0;

/// The transport protocols IPVS balances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IpvsProtocol {
    Tcp,
    Udp,
    Sctp,
}

impl IpvsProtocol {
    fn number(self) -> u16 {
        match self {
            IpvsProtocol::Tcp => 6,
            IpvsProtocol::Udp => 17,
            IpvsProtocol::Sctp => 132,
        }
    }

    fn from_number(n: u16) -> Option<IpvsProtocol> {
        match n {
            6 => Some(IpvsProtocol::Tcp),
            17 => Some(IpvsProtocol::Udp),
            132 => Some(IpvsProtocol::Sctp),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            IpvsProtocol::Tcp => "TCP",
            IpvsProtocol::Udp => "UDP",
            IpvsProtocol::Sctp => "SCTP",
        }
    }
}

/// What identifies a virtual service: protocol, address and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VirtualId {
    pub protocol: IpvsProtocol,
    pub addr: SocketAddr,
}

/// A virtual service as wao-lb programs it: `scheduler` (wrr), and ClientIP affinity as
/// the persistent flag with its timeout in seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualService {
    pub id: VirtualId,
    pub scheduler: String,
    pub persistence: Option<u32>,
}

/// A destination (real server) of a virtual service, with the kernel's connection counts
/// when read back (zero when sent): open now (`active`, `inactive`) and scheduled since it
/// was added (`connections`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Destination {
    pub addr: SocketAddr,
    pub weight: u32,
    pub active: u32,
    pub inactive: u32,
    pub connections: u64,
}

/// One attribute: its type and value; a value read back is `Bytes` until interpreted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub kind: u16,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    U16(u16),
    /// Network byte order (ports).
    Be16(u16),
    U32(u32),
    Bytes(Vec<u8>),
    Nested(Vec<Attr>),
}

impl Attr {
    fn new(kind: u16, value: Value) -> Attr {
        Attr { kind, value }
    }

    fn bytes(&self) -> &[u8] {
        match &self.value {
            Value::Bytes(b) => b,
            _ => &[],
        }
    }
}

impl Nla for Attr {
    fn value_len(&self) -> usize {
        match &self.value {
            Value::U16(_) | Value::Be16(_) => 2,
            Value::U32(_) => 4,
            Value::Bytes(b) => b.len(),
            Value::Nested(attrs) => attrs.as_slice().buffer_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self.value {
            Value::Nested(_) => self.kind | NLA_F_NESTED,
            _ => self.kind,
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match &self.value {
            Value::U16(v) => buffer[..2].copy_from_slice(&v.to_ne_bytes()),
            Value::Be16(v) => buffer[..2].copy_from_slice(&v.to_be_bytes()),
            Value::U32(v) => buffer[..4].copy_from_slice(&v.to_ne_bytes()),
            Value::Bytes(b) => buffer[..b.len()].copy_from_slice(b),
            Value::Nested(attrs) => attrs.as_slice().emit(buffer),
        }
    }
}

/// The attributes in `buf`; those of a `nested` kind are parsed one level further.
fn parse_attrs(buf: &[u8], nested: &[u16]) -> Result<Vec<Attr>, DecodeError> {
    NlasIterator::new(buf)
        .map(|nla| {
            let nla: NlaBuffer<&[u8]> = nla?;
            let kind = nla.kind();
            let value = if nested.contains(&kind) {
                Value::Nested(parse_attrs(nla.value(), &[])?)
            } else {
                Value::Bytes(nla.value().to_vec())
            };
            Ok(Attr { kind, value })
        })
        .collect()
}

/// One IPVS request or answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpvsMessage {
    pub cmd: u8,
    pub attrs: Vec<Attr>,
}

impl GenlFamily for IpvsMessage {
    fn family_name() -> &'static str {
        FAMILY_NAME
    }

    fn command(&self) -> u8 {
        self.cmd
    }

    fn version(&self) -> u8 {
        FAMILY_VERSION
    }
}

impl Emitable for IpvsMessage {
    fn buffer_len(&self) -> usize {
        self.attrs.as_slice().buffer_len()
    }

    fn emit(&self, buffer: &mut [u8]) {
        self.attrs.as_slice().emit(buffer)
    }
}

impl ParseableParametrized<[u8], GenlHeader> for IpvsMessage {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        Ok(IpvsMessage {
            cmd: header.cmd,
            attrs: parse_attrs(buf, &[CMD_ATTR_SERVICE, CMD_ATTR_DEST])?,
        })
    }
}

/// An address as IPVS carries it: 16 bytes, an IPv4 one in the first four.
fn addr_bytes(ip: IpAddr) -> Vec<u8> {
    let mut b = vec![0u8; 16];
    match ip {
        IpAddr::V4(v4) => b[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => b.copy_from_slice(&v6.octets()),
    }
    b
}

fn family(ip: IpAddr) -> u16 {
    if ip.is_ipv4() {
        AF_INET
    } else {
        AF_INET6
    }
}

fn ip_from(af: u16, b: &[u8]) -> Result<IpAddr, DecodeError> {
    match (af, b.len()) {
        (AF_INET, n) if n >= 4 => Ok(Ipv4Addr::new(b[0], b[1], b[2], b[3]).into()),
        (AF_INET6, 16) => {
            let mut o = [0u8; 16];
            o.copy_from_slice(b);
            Ok(Ipv6Addr::from(o).into())
        }
        _ => Err(DecodeError::from(format!(
            "address of family {af} in {} bytes",
            b.len()
        ))),
    }
}

/// A u32 attribute (or the first field of a larger one, as the service flags).
fn u32_of(b: &[u8]) -> Result<u32, DecodeError> {
    parse_u32(b.get(..4).unwrap_or(b))
}

/// The attribute of `kind` among `attrs`.
fn find(attrs: &[Attr], kind: u16) -> Option<&Attr> {
    attrs.iter().find(|a| a.kind == kind)
}

fn required<'a>(attrs: &'a [Attr], kind: u16, what: &str) -> Result<&'a [u8], DecodeError> {
    find(attrs, kind)
        .map(Attr::bytes)
        .ok_or_else(|| DecodeError::from(format!("no {what} attribute")))
}

impl VirtualId {
    /// The attributes that name the service.
    fn attrs(&self) -> Vec<Attr> {
        vec![
            Attr::new(svc::AF, Value::U16(family(self.addr.ip()))),
            Attr::new(svc::PROTOCOL, Value::U16(self.protocol.number())),
            Attr::new(svc::ADDR, Value::Bytes(addr_bytes(self.addr.ip()))),
            Attr::new(svc::PORT, Value::Be16(self.addr.port())),
        ]
    }

    fn from_attrs(attrs: &[Attr]) -> Result<VirtualId, DecodeError> {
        let af = parse_u16(required(attrs, svc::AF, "service AF")?)?;
        let number = parse_u16(required(attrs, svc::PROTOCOL, "service protocol")?)?;
        let protocol = IpvsProtocol::from_number(number)
            .ok_or_else(|| DecodeError::from(format!("protocol {number}")))?;
        let ip = ip_from(af, required(attrs, svc::ADDR, "service address")?)?;
        let port = parse_u16_be(required(attrs, svc::PORT, "service port")?)?;
        Ok(VirtualId {
            protocol,
            addr: SocketAddr::new(ip, port),
        })
    }

    fn nested(&self) -> Attr {
        Attr::new(CMD_ATTR_SERVICE, Value::Nested(self.attrs()))
    }
}

impl VirtualService {
    fn attrs(&self) -> Vec<Attr> {
        let mut attrs = self.id.attrs();
        let mut sched = self.scheduler.as_bytes().to_vec();
        sched.push(0);
        let flags = if self.persistence.is_some() {
            F_PERSISTENT
        } else {
            0
        };
        let mut flag_bytes = flags.to_ne_bytes().to_vec();
        flag_bytes.extend_from_slice(&u32::MAX.to_ne_bytes());
        let netmask = if self.id.addr.is_ipv4() {
            u32::MAX
        } else {
            128
        };
        attrs.extend([
            Attr::new(svc::SCHED_NAME, Value::Bytes(sched)),
            Attr::new(svc::FLAGS, Value::Bytes(flag_bytes)),
            Attr::new(svc::TIMEOUT, Value::U32(self.persistence.unwrap_or(0))),
            Attr::new(svc::NETMASK, Value::U32(netmask)),
        ]);
        attrs
    }

    /// A service from the kernel's answer (its nested service attributes).
    pub fn from_attrs(attrs: &[Attr]) -> Result<VirtualService, DecodeError> {
        let id = VirtualId::from_attrs(attrs)?;
        let scheduler = find(attrs, svc::SCHED_NAME)
            .map(|a| {
                let b = a.bytes();
                let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
                String::from_utf8_lossy(&b[..end]).into_owned()
            })
            .unwrap_or_default();
        let flags = find(attrs, svc::FLAGS)
            .map(|a| u32_of(a.bytes()))
            .transpose()?
            .unwrap_or(0);
        let timeout = find(attrs, svc::TIMEOUT)
            .map(|a| u32_of(a.bytes()))
            .transpose()?
            .unwrap_or(0);
        Ok(VirtualService {
            id,
            scheduler,
            persistence: (flags & F_PERSISTENT != 0).then_some(timeout),
        })
    }
}

impl Destination {
    /// A destination to send, with `weight`.
    pub fn new(addr: SocketAddr, weight: u32) -> Destination {
        Destination {
            addr,
            weight,
            active: 0,
            inactive: 0,
            connections: 0,
        }
    }

    fn id_attrs(addr: SocketAddr) -> Vec<Attr> {
        vec![
            Attr::new(dest::ADDR, Value::Bytes(addr_bytes(addr.ip()))),
            Attr::new(dest::PORT, Value::Be16(addr.port())),
        ]
    }

    fn attrs(&self) -> Vec<Attr> {
        let mut attrs = Destination::id_attrs(self.addr);
        attrs.extend([
            Attr::new(dest::FWD_METHOD, Value::U32(FWD_MASQ)),
            Attr::new(dest::WEIGHT, Value::U32(self.weight)),
            Attr::new(dest::U_THRESH, Value::U32(0)),
            Attr::new(dest::L_THRESH, Value::U32(0)),
            Attr::new(dest::ADDR_FAMILY, Value::U16(family(self.addr.ip()))),
        ]);
        attrs
    }

    /// A destination from the kernel's answer; `service_af` when it names no family.
    pub fn from_attrs(attrs: &[Attr], service_af: u16) -> Result<Destination, DecodeError> {
        let af = find(attrs, dest::ADDR_FAMILY)
            .map(|a| parse_u16(a.bytes()))
            .transpose()?
            .unwrap_or(service_af);
        let ip = ip_from(af, required(attrs, dest::ADDR, "destination address")?)?;
        let port = parse_u16_be(required(attrs, dest::PORT, "destination port")?)?;
        let number = |kind| {
            find(attrs, kind)
                .map(|a| u32_of(a.bytes()))
                .transpose()
                .map(|v| v.unwrap_or(0))
        };
        Ok(Destination {
            addr: SocketAddr::new(ip, port),
            weight: number(dest::WEIGHT)?,
            active: number(dest::ACTIVE_CONNS)?,
            inactive: number(dest::INACT_CONNS)?,
            connections: scheduled(attrs)?,
        })
    }
}

/// Connections scheduled to a destination, from its 64-bit statistics (or the 32-bit ones
/// of older kernels); 0 when it has none.
fn scheduled(attrs: &[Attr]) -> Result<u64, DecodeError> {
    if let Some(stats) = find(attrs, dest::STATS64) {
        let inner = parse_attrs(stats.bytes(), &[])?;
        if let Some(c) = find(&inner, STATS_CONNS) {
            return parse_u64(c.bytes());
        }
    }
    if let Some(stats) = find(attrs, dest::STATS) {
        let inner = parse_attrs(stats.bytes(), &[])?;
        if let Some(c) = find(&inner, STATS_CONNS) {
            return u32_of(c.bytes()).map(u64::from);
        }
    }
    Ok(0)
}

impl IpvsMessage {
    pub fn new_service(s: &VirtualService) -> IpvsMessage {
        IpvsMessage::with_service(cmd::NEW_SERVICE, s)
    }

    pub fn set_service(s: &VirtualService) -> IpvsMessage {
        IpvsMessage::with_service(cmd::SET_SERVICE, s)
    }

    fn with_service(cmd: u8, s: &VirtualService) -> IpvsMessage {
        IpvsMessage {
            cmd,
            attrs: vec![Attr::new(CMD_ATTR_SERVICE, Value::Nested(s.attrs()))],
        }
    }

    pub fn del_service(id: &VirtualId) -> IpvsMessage {
        IpvsMessage {
            cmd: cmd::DEL_SERVICE,
            attrs: vec![id.nested()],
        }
    }

    /// A dump request for every service.
    pub fn get_services() -> IpvsMessage {
        IpvsMessage {
            cmd: cmd::GET_SERVICE,
            attrs: Vec::new(),
        }
    }

    /// A dump request for the destinations of `id`.
    pub fn get_dests(id: &VirtualId) -> IpvsMessage {
        IpvsMessage {
            cmd: cmd::GET_DEST,
            attrs: vec![id.nested()],
        }
    }

    pub fn new_dest(id: &VirtualId, d: &Destination) -> IpvsMessage {
        IpvsMessage::with_dest(cmd::NEW_DEST, id, d.attrs())
    }

    pub fn set_dest(id: &VirtualId, d: &Destination) -> IpvsMessage {
        IpvsMessage::with_dest(cmd::SET_DEST, id, d.attrs())
    }

    pub fn del_dest(id: &VirtualId, addr: SocketAddr) -> IpvsMessage {
        IpvsMessage::with_dest(cmd::DEL_DEST, id, Destination::id_attrs(addr))
    }

    fn with_dest(cmd: u8, id: &VirtualId, dest_attrs: Vec<Attr>) -> IpvsMessage {
        IpvsMessage {
            cmd,
            attrs: vec![
                id.nested(),
                Attr::new(CMD_ATTR_DEST, Value::Nested(dest_attrs)),
            ],
        }
    }

    fn nested(&self, kind: u16) -> Option<&[Attr]> {
        find(&self.attrs, kind).and_then(|a| match &a.value {
            Value::Nested(n) => Some(n.as_slice()),
            _ => None,
        })
    }

    /// The service this answer describes.
    pub fn service(&self) -> Result<VirtualService, DecodeError> {
        let attrs = self
            .nested(CMD_ATTR_SERVICE)
            .ok_or_else(|| DecodeError::from("no service in the answer"))?;
        VirtualService::from_attrs(attrs)
    }

    /// The destination this answer describes (of a service of family `service_af`).
    pub fn destination(&self, service: &VirtualId) -> Result<Destination, DecodeError> {
        let attrs = self
            .nested(CMD_ATTR_DEST)
            .ok_or_else(|| DecodeError::from("no destination in the answer"))?;
        Destination::from_attrs(attrs, family(service.addr.ip()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NLM_F_ACK, NLM_F_REQUEST};
    use netlink_packet_generic::GenlMessage;

    /// An attribute as the kernel lays it out: u16 length (header included), u16 type,
    /// the value, padding to four bytes. Written out by hand, independent of `Attr`.
    fn nla(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        b.extend_from_slice(&kind.to_ne_bytes());
        b.extend_from_slice(value);
        while b.len() % 4 != 0 {
            b.push(0);
        }
        b
    }

    fn emitted(m: &IpvsMessage) -> Vec<u8> {
        let mut b = vec![0u8; m.buffer_len()];
        m.emit(&mut b);
        b
    }

    fn tcp(addr: &str) -> VirtualId {
        VirtualId {
            protocol: IpvsProtocol::Tcp,
            addr: addr.parse().unwrap(),
        }
    }

    /// Decodes what was emitted, as the kernel's answer would be.
    fn round_trip(m: &IpvsMessage) -> IpvsMessage {
        let header = GenlHeader {
            cmd: m.cmd,
            version: FAMILY_VERSION,
        };
        IpvsMessage::parse_with_param(&emitted(m), header).unwrap()
    }

    #[test]
    fn del_dest_byte_for_byte() {
        let m = IpvsMessage::del_dest(&tcp("10.0.0.1:80"), "192.168.1.2:8080".parse().unwrap());
        // Literal bytes (little-endian host): nested service (type 1 | NLA_F_NESTED 0x8000)
        // of AF 2, protocol 6, a 16-byte address, port 80 big-endian; nested dest (type 2)
        // of a 16-byte address and port 8080 big-endian.
        #[rustfmt::skip]
        let want: Vec<u8> = vec![
            48, 0, 0x01, 0x80,
              6, 0, 1, 0,  2, 0, 0, 0,
              6, 0, 2, 0,  6, 0, 0, 0,
              20, 0, 3, 0,  10, 0, 0, 1,  0, 0, 0, 0,  0, 0, 0, 0,  0, 0, 0, 0,
              6, 0, 4, 0,  0, 80, 0, 0,
            32, 0, 0x02, 0x80,
              20, 0, 1, 0,  192, 168, 1, 2,  0, 0, 0, 0,  0, 0, 0, 0,  0, 0, 0, 0,
              6, 0, 2, 0,  0x1f, 0x90, 0, 0,
        ];
        if cfg!(target_endian = "little") {
            assert_eq!(emitted(&m), want);
        }
    }

    #[test]
    fn a_service_with_affinity_in_the_kernels_layout() {
        let s = VirtualService {
            id: VirtualId {
                protocol: IpvsProtocol::Udp,
                addr: "[fd00::10]:53".parse().unwrap(),
            },
            scheduler: "wrr".into(),
            persistence: Some(10_800),
        };
        let m = IpvsMessage::new_service(&s);
        let mut inner = Vec::new();
        inner.extend(nla(1, &AF_INET6.to_ne_bytes()));
        inner.extend(nla(2, &17u16.to_ne_bytes()));
        inner.extend(nla(3, &"fd00::10".parse::<Ipv6Addr>().unwrap().octets()));
        inner.extend(nla(4, &53u16.to_be_bytes()));
        inner.extend(nla(6, b"wrr\0"));
        let mut flags = 1u32.to_ne_bytes().to_vec();
        flags.extend(u32::MAX.to_ne_bytes());
        inner.extend(nla(7, &flags));
        inner.extend(nla(8, &10_800u32.to_ne_bytes()));
        inner.extend(nla(9, &128u32.to_ne_bytes()));
        assert_eq!(emitted(&m), nla(1 | NLA_F_NESTED, &inner));
        let back = round_trip(&m);
        assert_eq!(back.cmd, cmd::NEW_SERVICE);
        assert_eq!(back.service().unwrap(), s);
    }

    #[test]
    fn destinations_round_trip_with_their_counts() {
        let id = tcp("10.0.0.1:80");
        for addr in ["192.168.1.2:8080", "[fd00::2]:8080"] {
            let d = Destination::new(addr.parse().unwrap(), 2500);
            let m = IpvsMessage::set_dest(&id, &d);
            assert_eq!(m.cmd, cmd::SET_DEST);
            let back = round_trip(&m);
            assert_eq!(back.destination(&id).unwrap(), d);
            let dest_part = &emitted(&m)[48..];
            let mut inner = Vec::new();
            inner.extend(nla(1, &addr_bytes(d.addr.ip())));
            inner.extend(nla(2, &8080u16.to_be_bytes()));
            inner.extend(nla(3, &0u32.to_ne_bytes()));
            inner.extend(nla(4, &2500u32.to_ne_bytes()));
            inner.extend(nla(5, &0u32.to_ne_bytes()));
            inner.extend(nla(6, &0u32.to_ne_bytes()));
            inner.extend(nla(11, &family(d.addr.ip()).to_ne_bytes()));
            assert_eq!(dest_part, nla(2 | NLA_F_NESTED, &inner));
        }
        // The kernel's answer carries connection counts (and may omit the family).
        let mut inner = Vec::new();
        inner.extend(nla(1, &addr_bytes("10.1.1.1".parse().unwrap())));
        inner.extend(nla(2, &80u16.to_be_bytes()));
        inner.extend(nla(4, &7u32.to_ne_bytes()));
        inner.extend(nla(7, &3u32.to_ne_bytes()));
        inner.extend(nla(8, &5u32.to_ne_bytes()));
        let stats64 = [nla(1, &1234u64.to_ne_bytes()), nla(4, &99u64.to_ne_bytes())].concat();
        inner.extend(nla(12 | NLA_F_NESTED, &stats64));
        let answer = IpvsMessage::parse_with_param(
            &nla(2, &inner),
            GenlHeader {
                cmd: cmd::NEW_DEST,
                version: 1,
            },
        )
        .unwrap();
        assert_eq!(
            answer.destination(&id).unwrap(),
            Destination {
                addr: "10.1.1.1:80".parse().unwrap(),
                weight: 7,
                active: 3,
                inactive: 5,
                connections: 1234,
            }
        );
    }

    #[test]
    fn every_request_names_its_command_and_service() {
        let id = tcp("10.0.0.1:80");
        let s = VirtualService {
            id,
            scheduler: "wrr".into(),
            persistence: None,
        };
        let d = Destination::new("10.1.1.1:80".parse().unwrap(), 1);
        for (m, command) in [
            (IpvsMessage::new_service(&s), cmd::NEW_SERVICE),
            (IpvsMessage::set_service(&s), cmd::SET_SERVICE),
            (IpvsMessage::del_service(&id), cmd::DEL_SERVICE),
            (IpvsMessage::get_dests(&id), cmd::GET_DEST),
            (IpvsMessage::new_dest(&id, &d), cmd::NEW_DEST),
            (IpvsMessage::del_dest(&id, d.addr), cmd::DEL_DEST),
        ] {
            assert_eq!(m.cmd, command);
            let back = round_trip(&m);
            assert_eq!(back, round_trip(&back), "stable");
            assert_eq!(back.service().unwrap().id, id, "cmd {command}");
        }
        assert!(IpvsMessage::get_services().attrs.is_empty());
    }

    #[test]
    fn the_whole_message_has_netlink_and_genl_headers() {
        let mut genl = GenlMessage::from_payload(IpvsMessage::del_service(&tcp("10.0.0.1:80")));
        genl.set_resolved_family_id(0x1d);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK;
        header.sequence_number = 7;
        let mut msg = NetlinkMessage::new(header, genl.into());
        msg.finalize();
        let mut buf = vec![0u8; msg.buffer_len()];
        msg.serialize(&mut buf);
        assert_eq!(buf.len(), 16 + 4 + 48);
        assert_eq!(
            u32::from_ne_bytes(buf[0..4].try_into().unwrap()),
            68,
            "length"
        );
        assert_eq!(
            u16::from_ne_bytes(buf[4..6].try_into().unwrap()),
            0x1d,
            "family id"
        );
        assert_eq!(
            u16::from_ne_bytes(buf[6..8].try_into().unwrap()),
            NLM_F_REQUEST | NLM_F_ACK
        );
        assert_eq!(
            u32::from_ne_bytes(buf[8..12].try_into().unwrap()),
            7,
            "sequence"
        );
        assert_eq!(
            &buf[16..20],
            &[cmd::DEL_SERVICE, 1, 0, 0],
            "cmd, version, reserved"
        );
    }

    #[test]
    fn garbage_answers_are_errors_not_panics() {
        let header = GenlHeader {
            cmd: cmd::NEW_SERVICE,
            version: 1,
        };
        for buf in [
            vec![0xff, 0xff, 1, 0],
            nla(1, &nla(1, &[1])),
            nla(
                1,
                &[nla(1, &2u16.to_ne_bytes()), nla(2, &99u16.to_ne_bytes())].concat(),
            ),
        ] {
            let parsed = IpvsMessage::parse_with_param(&buf, header);
            assert!(parsed.is_err() || parsed.unwrap().service().is_err());
        }
    }
}
