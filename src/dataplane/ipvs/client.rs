//! A generic netlink socket to the kernel's IPVS: resolves the family, sends requests and
//! waits for their acknowledgement, and reads dumps (every service, a service's
//! destinations) into a `Table`. Blocking; the data plane calls it off the runtime.

use std::collections::BTreeMap;

use netlink_packet_core::{
    NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable,
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_generic::GenlMessage;
use netlink_sys::{protocols::NETLINK_GENERIC, Socket, SocketAddr};

use super::message::{IpvsMessage, FAMILY_NAME};
use super::reconcile::{Entry, Op, Table};

#[derive(Debug, thiserror::Error)]
pub enum IpvsError {
    #[error(
        "the kernel has no IPVS (generic netlink family {FAMILY_NAME} not found): load the \
         ip_vs and ip_vs_wrr modules (modprobe ip_vs_wrr)"
    )]
    NoIpvs,
    #[error(
        "the kernel has no wrr scheduler for IPVS: load the ip_vs_wrr module (modprobe ip_vs_wrr)"
    )]
    NoScheduler,
    #[error("netlink socket: {0}")]
    Socket(std::io::Error),
    #[error("{what}: {source}")]
    Refused {
        what: String,
        source: std::io::Error,
    },
    #[error("unreadable answer to {what}: {why}")]
    Answer { what: String, why: String },
}

/// An open socket with the IPVS family resolved.
pub struct IpvsClient {
    socket: Socket,
    family: u16,
    sequence: u32,
    buffer: Vec<u8>,
}

/// Answers are read into a buffer this large (a dump arrives in several).
const RECEIVE_BUFFER: usize = 64 * 1024;

impl IpvsClient {
    /// Opens a socket and resolves the IPVS family; `NoIpvs` when the kernel has none.
    pub fn connect() -> Result<IpvsClient, IpvsError> {
        let mut socket = Socket::new(NETLINK_GENERIC).map_err(IpvsError::Socket)?;
        socket.bind_auto().map_err(IpvsError::Socket)?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(IpvsError::Socket)?;
        let mut client = IpvsClient {
            socket,
            family: 0,
            sequence: 0,
            buffer: vec![0; RECEIVE_BUFFER],
        };
        client.family = client.resolve()?;
        Ok(client)
    }

    fn resolve(&mut self) -> Result<u16, IpvsError> {
        let request = GenlMessage::from_payload(GenlCtrl {
            cmd: GenlCtrlCmd::GetFamily,
            nlas: vec![GenlCtrlAttrs::FamilyName(FAMILY_NAME.into())],
        });
        let what = "resolving the IPVS family";
        let answers = match self.exchange(request, NLM_F_REQUEST | NLM_F_ACK, what) {
            Err(IpvsError::Refused { source, .. })
                if source.raw_os_error() == Some(libc::ENOENT) =>
            {
                return Err(IpvsError::NoIpvs)
            }
            other => other?,
        };
        answers
            .iter()
            .flat_map(|m| m.payload.nlas.iter())
            .find_map(|a| match a {
                GenlCtrlAttrs::FamilyId(id) => Some(*id),
                _ => None,
            })
            .ok_or(IpvsError::NoIpvs)
    }

    /// Runs `op`, waiting for the kernel's acknowledgement.
    pub fn run(&mut self, op: &Op) -> Result<(), IpvsError> {
        let what = format!("{op:?}");
        match self.ipvs(op.message(), NLM_F_REQUEST | NLM_F_ACK, &what) {
            Err(IpvsError::Refused { source, .. })
                if matches!(op, Op::NewService(_) | Op::SetService(_))
                    && source.raw_os_error() == Some(libc::ENOENT) =>
            {
                Err(IpvsError::NoScheduler)
            }
            other => other.map(|_| ()),
        }
    }

    /// Every virtual service with its destinations, as the kernel has them now.
    pub fn table(&mut self) -> Result<Table, IpvsError> {
        let flags = NLM_F_REQUEST | NLM_F_DUMP;
        let services = self.ipvs(IpvsMessage::get_services(), flags, "listing services")?;
        let mut table = BTreeMap::new();
        for answer in services {
            let service = answer.service().map_err(|e| IpvsError::Answer {
                what: "listing services".into(),
                why: e.to_string(),
            })?;
            let id = service.id;
            let what = format!("listing the destinations of {id:?}");
            let mut dests = BTreeMap::new();
            for d in self.ipvs(IpvsMessage::get_dests(&id), flags, &what)? {
                let d = d.destination(&id).map_err(|e| IpvsError::Answer {
                    what: what.clone(),
                    why: e.to_string(),
                })?;
                dests.insert(d.addr, d);
            }
            table.insert(id, Entry { service, dests });
        }
        Ok(table)
    }

    fn ipvs(
        &mut self,
        message: IpvsMessage,
        flags: u16,
        what: &str,
    ) -> Result<Vec<IpvsMessage>, IpvsError> {
        let mut request = GenlMessage::from_payload(message);
        request.set_resolved_family_id(self.family);
        Ok(self
            .exchange(request, flags, what)?
            .into_iter()
            .map(|m| m.payload)
            .collect())
    }

    /// Sends `payload` and reads the answers up to the acknowledgement or the end of the
    /// dump; an error answer is `Refused` with the kernel's errno.
    fn exchange<P>(
        &mut self,
        payload: GenlMessage<P>,
        flags: u16,
        what: &str,
    ) -> Result<Vec<GenlMessage<P>>, IpvsError>
    where
        GenlMessage<P>: NetlinkSerializable + NetlinkDeserializable + std::fmt::Debug,
    {
        self.sequence = self.sequence.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.sequence;
        let mut message = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(payload));
        message.finalize();
        let mut out = vec![0u8; message.buffer_len()];
        message.serialize(&mut out);
        self.socket.send(&out, 0).map_err(IpvsError::Socket)?;
        let mut answers = Vec::new();
        let unreadable = |why: String| IpvsError::Answer {
            what: what.to_string(),
            why,
        };
        loop {
            let n = self
                .socket
                .recv(&mut &mut self.buffer[..], 0)
                .map_err(IpvsError::Socket)?
                .min(self.buffer.len());
            let mut offset = 0;
            while offset < n {
                let bytes = &self.buffer[offset..n];
                let answer = NetlinkMessage::<GenlMessage<P>>::deserialize(bytes)
                    .map_err(|e| unreadable(e.to_string()))?;
                let length = answer.header.length as usize;
                if length == 0 {
                    return Err(unreadable("a message of length 0".into()));
                }
                offset += (length + 3) & !3;
                if answer.header.sequence_number != self.sequence {
                    continue;
                }
                match answer.payload {
                    // Data; an acknowledgement or the end of the dump follows.
                    NetlinkPayload::InnerMessage(m) => answers.push(m),
                    NetlinkPayload::Error(e) if e.code.is_none() => return Ok(answers),
                    NetlinkPayload::Error(e) => {
                        return Err(IpvsError::Refused {
                            what: what.to_string(),
                            source: e.to_io(),
                        })
                    }
                    NetlinkPayload::Done(_) => return Ok(answers),
                    _ => {}
                }
            }
        }
    }
}
