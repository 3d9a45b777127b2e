//! The mux state machine (docs/protocol.md §2.6–2.8), one per USB device, for either end.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;

use super::wire::{
    self, control_text, decode_packet, encode_packet, tcp_body, version_body, MuxBody, MuxProtocol,
    MuxSeq, MuxVersion, TcpHeader, DEV_MRU, MAX_RECEIVE_BUFFER, RECEIVE_WINDOW, SEND_BUFFER,
    SETUP_BODY, SETUP_RX_SEQ, TCP_ACK, TCP_RST, TCP_SYN, USB_MRU, V1_HEADER_LEN, VERSION_MAJOR,
    WINDOW_SHIFT,
};
use super::UsbMuxError;

/// Which end of the cable this mux is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The computer: sends VERSION and SETUP, opens connections.
    Host,
    /// The phone: answers VERSION, accepts connections.
    Device,
}

/// A connection by its ports as this end sees them: the host's local port is the source
/// port it chose, the device's local port is the service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    pub local_port: u16,
    pub remote_port: u16,
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}->{}", self.local_port, self.remote_port)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MuxConfig {
    /// Size of the bulk-IN transfers the reader submits: a transfer shorter than this ends a
    /// packet (§2.4).
    pub in_transfer_size: usize,
    /// The version a device answers VERSION with (the host always asks for 2).
    pub device_version: MuxVersion,
}

impl Default for MuxConfig {
    fn default() -> Self {
        MuxConfig {
            in_transfer_size: USB_MRU,
            device_version: MuxVersion::V2,
        }
    }
}

/// What happened, for the layer above.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MuxEvent {
    /// Bring-up finished; connections can open.
    Ready { version: MuxVersion },
    /// The link is unusable (e.g. an unknown mux version); everything is closed.
    Failed(UsbMuxError),
    /// Host: the phone answered SYN with SYN|ACK.
    Connected(ConnId),
    /// Host: the phone answered SYN with anything else, usually a reset with a reason.
    Refused { id: ConnId, reason: Option<String> },
    /// Device: a SYN for `id.local_port`; answer with [`Mux::accept`] or [`Mux::refuse`].
    Incoming(ConnId),
    /// Bytes are waiting for [`Mux::recv`].
    Readable(ConnId),
    /// Bytes left the send buffer; [`Mux::send`] takes more.
    Writable(ConnId),
    /// The peer reset the connection, or it broke the protocol and we did; reads end after
    /// what is buffered.
    Reset { id: ConnId, reason: String },
    /// A CONTROL packet (§2.7): 3 error, 5 warning, 7 information.
    Control { kind: u8, text: String },
    /// A packet was thrown away; the link goes on.
    Dropped(UsbMuxError),
}

/// Result of [`Mux::recv`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recv {
    Data(usize),
    /// Open, nothing buffered.
    Empty,
    /// Closed or reset and drained: end of stream.
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    AwaitVersion,
    /// Device, version 2: VERSION answered, SETUP not yet seen.
    AwaitSetup,
    Active,
    Failed,
}

impl Link {
    fn name(self) -> &'static str {
        match self {
            Link::AwaitVersion => "awaiting VERSION",
            Link::AwaitSetup => "awaiting SETUP",
            Link::Active => "active",
            Link::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnState {
    /// Host: SYN sent.
    SynSent,
    /// Device: SYN received, the application has not answered.
    SynReceived {
        peer_seq: u32,
        peer_window: u32,
    },
    Established,
    /// The application let go; the rest of the send buffer goes out, then RST.
    Closing,
    /// Reset by the peer or by a protocol violation; buffered bytes can still be read.
    Closed,
}

#[derive(Debug)]
struct Conn {
    state: ConnState,
    /// Sequence number of our next byte.
    tx_seq: u32,
    /// What we acknowledge: 1 + bytes the application has taken (§2.8: flow control).
    tx_ack: u32,
    /// Highest acknowledgement from the peer.
    peer_ack: u32,
    /// The peer's window in bytes.
    peer_window: u32,
    recv: VecDeque<u8>,
    send: VecDeque<u8>,
    ack_owed: bool,
}

impl Conn {
    fn new(state: ConnState) -> Self {
        Conn {
            state,
            tx_seq: 0,
            tx_ack: 0,
            peer_ack: 0,
            peer_window: 0,
            recv: VecDeque::new(),
            send: VecDeque::new(),
            ack_owed: false,
        }
    }

    fn established(&mut self, peer_ack: u32, peer_window: u32) {
        // §2.8: both initial sequence numbers are taken as 0, so after the SYNs both sides
        // start at 1.
        self.state = ConnState::Established;
        self.tx_seq = 1;
        self.tx_ack = 1;
        self.peer_ack = peer_ack;
        self.peer_window = peer_window;
    }

    fn sendable(&self) -> usize {
        let in_flight = self.tx_seq.wrapping_sub(self.peer_ack);
        let room = self.peer_window.saturating_sub(in_flight) as usize;
        room.min(self.send.len())
    }
}

/// One USB device's mux, either end. Feed it completed bulk-IN transfers
/// ([`Mux::handle_transfer`]); send what [`Mux::poll_transmit`] returns, one bulk-OUT
/// transfer each (plus a zero-length one when [`wire::needs_zlp`] says so); act on
/// [`Mux::poll_event`].
#[derive(Debug)]
pub struct Mux {
    role: Role,
    config: MuxConfig,
    link: Link,
    /// Header version of what we send and expect; v1 until bring-up says otherwise.
    version: MuxVersion,
    tx_seq: u16,
    rx_seq: u16,
    conns: BTreeMap<ConnId, Conn>,
    next_port: u16,
    /// Serves connections' data in turn.
    cursor: Option<ConnId>,
    transmit: VecDeque<Vec<u8>>,
    events: VecDeque<MuxEvent>,
    /// Bytes of a packet spread over several full bulk-IN transfers.
    partial: Vec<u8>,
}

impl Mux {
    /// The station's end: VERSION is queued at once (§2.6 step 1).
    pub fn host(config: MuxConfig) -> Self {
        let mut mux = Mux::new(Role::Host, config);
        let packet = encode_packet(MuxProtocol::Version, None, &version_body(VERSION_MAJOR, 0));
        mux.transmit.push_back(packet);
        mux
    }

    /// The phone's end: waits for the host's VERSION.
    pub fn device(config: MuxConfig) -> Self {
        Mux::new(Role::Device, config)
    }

    fn new(role: Role, config: MuxConfig) -> Self {
        Mux {
            role,
            config,
            link: Link::AwaitVersion,
            version: MuxVersion::V1,
            tx_seq: 0,
            rx_seq: SETUP_RX_SEQ,
            conns: BTreeMap::new(),
            next_port: 1,
            cursor: None,
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            partial: Vec::new(),
        }
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn is_ready(&self) -> bool {
        self.link == Link::Active
    }

    pub fn is_failed(&self) -> bool {
        self.link == Link::Failed
    }

    /// The header version in use (V1 until bring-up finished).
    pub fn version(&self) -> MuxVersion {
        self.version
    }

    /// Unread and unsent bytes of a connection (for tests and diagnostics).
    pub fn buffered(&self, id: ConnId) -> Option<(usize, usize)> {
        self.conns.get(&id).map(|c| (c.recv.len(), c.send.len()))
    }

    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    pub fn poll_event(&mut self) -> Option<MuxEvent> {
        self.events.pop_front()
    }

    // ---- input -------------------------------------------------------------------------

    /// One completed bulk-IN transfer. Usually one whole packet; a packet over the transfer
    /// size arrives as full transfers followed by a short one (§2.4). Bad packets become
    /// [`MuxEvent::Dropped`] and the reader resynchronises at the next transfer.
    pub fn handle_transfer(&mut self, data: &[u8]) {
        if self.link == Link::Failed {
            return;
        }
        let short = data.len() < self.config.in_transfer_size;
        if self.partial.is_empty() {
            // Usual case: the transfer holds whole packets, no copy.
            self.split_packets(data, short);
        } else {
            let mut joined = std::mem::take(&mut self.partial);
            joined.extend_from_slice(data);
            self.split_packets(&joined, short);
        }
    }

    /// Hands each whole packet of `bytes` on; keeps an incomplete tail for the next
    /// transfer unless this one was short (then the packet can never complete).
    fn split_packets(&mut self, bytes: &[u8], short: bool) {
        let mut rest = bytes;
        while !rest.is_empty() {
            if rest.len() < V1_HEADER_LEN {
                if short {
                    self.drop_packet(UsbMuxError::Truncated {
                        what: "mux header",
                        needed: V1_HEADER_LEN,
                        got: rest.len(),
                    });
                } else {
                    self.partial = rest.to_vec();
                }
                return;
            }
            let length = u32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]);
            let len = length as usize;
            if len < self.version.header_len() || len > DEV_MRU {
                // The framing is lost; whatever else this transfer holds is unreadable.
                self.drop_packet(UsbMuxError::BadLength(length));
                return;
            }
            if rest.len() < len {
                if short {
                    self.drop_packet(UsbMuxError::LengthMismatch {
                        announced: length,
                        received: rest.len(),
                    });
                } else {
                    self.partial = rest.to_vec();
                }
                return;
            }
            let (packet, tail) = rest.split_at(len);
            self.handle_packet(packet);
            if self.link == Link::Failed {
                return;
            }
            rest = tail;
        }
    }

    fn drop_packet(&mut self, error: UsbMuxError) {
        self.events.push_back(MuxEvent::Dropped(error));
    }

    fn fail(&mut self, error: UsbMuxError) {
        self.link = Link::Failed;
        self.transmit.clear();
        self.partial.clear();
        for (id, conn) in self.conns.iter_mut() {
            if conn.state != ConnState::Closed {
                conn.state = ConnState::Closed;
                self.events.push_back(MuxEvent::Reset {
                    id: *id,
                    reason: "the mux link failed".into(),
                });
            }
        }
        self.events.push_back(MuxEvent::Failed(error));
    }

    /// One whole packet.
    pub fn handle_packet(&mut self, bytes: &[u8]) {
        if self.link == Link::Failed {
            return;
        }
        let packet = match decode_packet(bytes, self.version) {
            Ok(p) => p,
            Err(e) => return self.drop_packet(e),
        };
        if let Some(seq) = packet.header.seq {
            // §2.6 step 4: rx_seq names the last packet received (usbmuxd2's meaning).
            self.rx_seq = seq.tx_seq;
        }
        match packet.body {
            MuxBody::Version { major, minor } => self.on_version(major, minor),
            MuxBody::Setup(_) => self.on_setup(),
            MuxBody::Control { kind, text } => self.events.push_back(MuxEvent::Control {
                kind,
                text: control_text(text),
            }),
            MuxBody::Tcp { header, payload } => {
                if self.link != Link::Active {
                    return self.drop_packet(UsbMuxError::NotReady { what: "TCP" });
                }
                self.on_tcp(header, payload);
            }
        }
    }

    fn on_version(&mut self, major: u32, minor: u32) {
        match (self.role, self.link) {
            (Role::Host, Link::AwaitVersion) => match major {
                1 => {
                    self.link = Link::Active;
                    self.events.push_back(MuxEvent::Ready {
                        version: MuxVersion::V1,
                    });
                }
                2 => {
                    self.version = MuxVersion::V2;
                    // §2.6 step 3: counters reset, SETUP carries tx_seq 0, rx_seq 0xFFFF.
                    self.tx_seq = 0;
                    self.rx_seq = SETUP_RX_SEQ;
                    self.queue(MuxProtocol::Setup, &[SETUP_BODY]);
                    self.link = Link::Active;
                    self.events.push_back(MuxEvent::Ready {
                        version: MuxVersion::V2,
                    });
                }
                _ => self.fail(UsbMuxError::UnsupportedVersion { major, minor }),
            },
            (Role::Device, Link::AwaitVersion) => {
                let major = match self.config.device_version {
                    MuxVersion::V1 => 1,
                    MuxVersion::V2 => 2,
                };
                // The answer goes with a v1 header: the host reads it with one (§2.6 step 2).
                let reply = encode_packet(MuxProtocol::Version, None, &version_body(major, 0));
                self.transmit.push_back(reply);
                match self.config.device_version {
                    MuxVersion::V1 => {
                        self.link = Link::Active;
                        self.events.push_back(MuxEvent::Ready {
                            version: MuxVersion::V1,
                        });
                    }
                    MuxVersion::V2 => {
                        self.version = MuxVersion::V2;
                        self.link = Link::AwaitSetup;
                    }
                }
            }
            (_, link) => self.drop_packet(UsbMuxError::Unexpected {
                what: "VERSION",
                state: link.name(),
            }),
        }
    }

    fn on_setup(&mut self) {
        if self.role == Role::Device && self.link == Link::AwaitSetup {
            self.tx_seq = 0;
            self.link = Link::Active;
            self.events.push_back(MuxEvent::Ready {
                version: MuxVersion::V2,
            });
        } else {
            self.drop_packet(UsbMuxError::Unexpected {
                what: "SETUP",
                state: self.link.name(),
            });
        }
    }

    fn on_tcp(&mut self, header: TcpHeader, payload: &[u8]) {
        let id = ConnId {
            local_port: header.dest_port,
            remote_port: header.source_port,
        };
        let Some(conn) = self.conns.get_mut(&id) else {
            return self.on_tcp_unknown(id, header);
        };
        match conn.state {
            ConnState::SynSent => {
                if header.flags == TCP_SYN | TCP_ACK {
                    conn.established(header.ack, header.window_bytes());
                    self.send_tcp(id, TCP_ACK, &[]);
                    self.events.push_back(MuxEvent::Connected(id));
                } else {
                    // §2.8: anything but SYN|ACK is a refusal; a reset may carry a reason.
                    let reason = (!payload.is_empty()).then(|| control_text(payload));
                    if header.flags & TCP_RST == 0 {
                        self.send_tcp(id, TCP_RST, &[]);
                    }
                    self.conns.remove(&id);
                    self.events.push_back(MuxEvent::Refused { id, reason });
                }
            }
            ConnState::SynReceived { .. } => {
                if header.flags & TCP_RST != 0 {
                    conn.state = ConnState::Closed;
                    self.events.push_back(MuxEvent::Reset {
                        id,
                        reason: "reset before it was accepted".into(),
                    });
                }
                // A repeated SYN or anything else waits for the application's answer.
            }
            ConnState::Established | ConnState::Closing => {
                if header.flags & TCP_RST != 0 {
                    let reason = if payload.is_empty() {
                        "connection reset by peer".to_string()
                    } else {
                        control_text(payload)
                    };
                    let released = conn.state == ConnState::Closing;
                    conn.state = ConnState::Closed;
                    conn.send.clear();
                    if released {
                        self.conns.remove(&id);
                    }
                    self.events.push_back(MuxEvent::Reset { id, reason });
                    return;
                }
                if header.flags != TCP_ACK {
                    // §2.8: once connected only ACK is allowed; anything else ends it.
                    let flags = header.flags;
                    self.reset_conn(id, UsbMuxError::BadFlags { id, flags });
                    return;
                }
                // Only acknowledgements of bytes we sent move the window edge.
                let advance = header.ack.wrapping_sub(conn.peer_ack);
                let in_flight = conn.tx_seq.wrapping_sub(conn.peer_ack);
                if advance <= in_flight {
                    conn.peer_ack = header.ack;
                }
                conn.peer_window = header.window_bytes();
                if payload.is_empty() {
                    return;
                }
                if conn.state == ConnState::Closing {
                    // Nobody will read it; the RST follows once the send buffer is out.
                    return;
                }
                if conn.recv.len() + payload.len() > MAX_RECEIVE_BUFFER {
                    let max = MAX_RECEIVE_BUFFER;
                    self.reset_conn(id, UsbMuxError::ReceiveOverflow { id, max });
                    return;
                }
                let was_empty = conn.recv.is_empty();
                conn.recv.extend(payload);
                if was_empty {
                    self.events.push_back(MuxEvent::Readable(id));
                }
            }
            ConnState::Closed => {}
        }
    }

    fn on_tcp_unknown(&mut self, id: ConnId, header: TcpHeader) {
        if self.role == Role::Device && header.flags == TCP_SYN {
            self.conns.insert(
                id,
                Conn::new(ConnState::SynReceived {
                    peer_seq: header.seq,
                    peer_window: header.window_bytes(),
                }),
            );
            self.events.push_back(MuxEvent::Incoming(id));
            return;
        }
        if header.flags & TCP_RST != 0 {
            return;
        }
        // §2.8: an anonymous RST whose ack is the incoming seq.
        let rst = TcpHeader {
            source_port: id.local_port,
            dest_port: id.remote_port,
            seq: 0,
            ack: header.seq,
            flags: TCP_RST,
            window: 0,
        };
        self.queue(MuxProtocol::Tcp, &tcp_body(&rst, &[]));
    }

    /// We end a connection for a protocol violation: RST out, the application told.
    fn reset_conn(&mut self, id: ConnId, error: UsbMuxError) {
        self.send_tcp(id, TCP_RST, &[]);
        let released = match self.conns.get_mut(&id) {
            Some(conn) => {
                let released = conn.state == ConnState::Closing;
                conn.state = ConnState::Closed;
                conn.send.clear();
                released
            }
            None => return,
        };
        if released {
            self.conns.remove(&id);
        }
        self.events.push_back(MuxEvent::Reset {
            id,
            reason: error.to_string(),
        });
    }

    // ---- requests from the application -------------------------------------------------

    /// Host: opens a connection to `port` on the phone (SYN, §2.8). The answer comes as
    /// [`MuxEvent::Connected`] or [`MuxEvent::Refused`].
    pub fn connect(&mut self, port: u16) -> Result<ConnId, UsbMuxError> {
        match (self.role, self.link) {
            (_, Link::Failed) => return Err(UsbMuxError::LinkFailed),
            (Role::Host, Link::Active) => {}
            (Role::Host, _) => return Err(UsbMuxError::NotReady { what: "connect" }),
            (Role::Device, link) => {
                return Err(UsbMuxError::Unexpected {
                    what: "connect on the device side",
                    state: link.name(),
                })
            }
        }
        let id = self.free_port(port)?;
        self.conns.insert(id, Conn::new(ConnState::SynSent));
        let syn = TcpHeader {
            source_port: id.local_port,
            dest_port: id.remote_port,
            seq: 0,
            ack: 0,
            flags: TCP_SYN,
            window: window_field(),
        };
        self.queue(MuxProtocol::Tcp, &tcp_body(&syn, &[]));
        Ok(id)
    }

    /// §2.8: source ports start at 1 and go up, skipping ports in use.
    fn free_port(&mut self, remote_port: u16) -> Result<ConnId, UsbMuxError> {
        for _ in 0..u16::MAX {
            let port = self.next_port;
            self.next_port = if port == u16::MAX { 1 } else { port + 1 };
            let in_use = self.conns.keys().any(|id| id.local_port == port);
            if !in_use {
                return Ok(ConnId {
                    local_port: port,
                    remote_port,
                });
            }
        }
        Err(UsbMuxError::NoFreePort)
    }

    /// Device: takes an [`MuxEvent::Incoming`] connection (SYN|ACK).
    pub fn accept(&mut self, id: ConnId) -> Result<(), UsbMuxError> {
        let conn = self
            .conns
            .get_mut(&id)
            .ok_or(UsbMuxError::UnknownConnection(id))?;
        let ConnState::SynReceived {
            peer_seq,
            peer_window,
        } = conn.state
        else {
            return Err(UsbMuxError::Unexpected {
                what: "accept",
                state: "a connection that is not waiting",
            });
        };
        let syn_ack = TcpHeader {
            source_port: id.local_port,
            dest_port: id.remote_port,
            seq: 0,
            ack: peer_seq.wrapping_add(1),
            flags: TCP_SYN | TCP_ACK,
            window: window_field(),
        };
        conn.established(1, peer_window);
        self.queue(MuxProtocol::Tcp, &tcp_body(&syn_ack, &[]));
        Ok(())
    }

    /// Device: turns an [`MuxEvent::Incoming`] connection down (RST), as a phone does for a
    /// port nobody listens on.
    pub fn refuse(&mut self, id: ConnId) -> Result<(), UsbMuxError> {
        let conn = self
            .conns
            .remove(&id)
            .ok_or(UsbMuxError::UnknownConnection(id))?;
        let ack = match conn.state {
            ConnState::SynReceived { peer_seq, .. } => peer_seq.wrapping_add(1),
            _ => conn.tx_ack,
        };
        let rst = TcpHeader {
            source_port: id.local_port,
            dest_port: id.remote_port,
            seq: 0,
            ack,
            flags: TCP_RST,
            window: 0,
        };
        self.queue(MuxProtocol::Tcp, &tcp_body(&rst, &[]));
        Ok(())
    }

    /// Takes unread bytes; what is taken is acknowledged, which opens the peer's window.
    pub fn recv(&mut self, id: ConnId, buf: &mut [u8]) -> Result<Recv, UsbMuxError> {
        let conn = self
            .conns
            .get_mut(&id)
            .ok_or(UsbMuxError::UnknownConnection(id))?;
        if conn.recv.is_empty() {
            return Ok(match conn.state {
                ConnState::Closed | ConnState::Closing => Recv::Closed,
                _ => Recv::Empty,
            });
        }
        if buf.is_empty() {
            return Ok(Recv::Data(0));
        }
        let n = buf.len().min(conn.recv.len());
        for (slot, byte) in buf.iter_mut().zip(conn.recv.drain(..n)) {
            *slot = byte;
        }
        if conn.state == ConnState::Established {
            conn.tx_ack = conn.tx_ack.wrapping_add(n as u32);
            conn.ack_owed = true;
        }
        Ok(Recv::Data(n))
    }

    /// Queues bytes to send; returns how many were taken (0: the send buffer is full,
    /// wait for [`MuxEvent::Writable`]).
    pub fn send(&mut self, id: ConnId, data: &[u8]) -> Result<usize, UsbMuxError> {
        let conn = self
            .conns
            .get_mut(&id)
            .ok_or(UsbMuxError::UnknownConnection(id))?;
        match conn.state {
            ConnState::Established => {}
            ConnState::SynSent | ConnState::SynReceived { .. } => {
                return Err(UsbMuxError::Unexpected {
                    what: "send",
                    state: "connecting",
                })
            }
            ConnState::Closing | ConnState::Closed => {
                return Err(UsbMuxError::ConnectionClosed(id))
            }
        }
        let n = data.len().min(SEND_BUFFER.saturating_sub(conn.send.len()));
        conn.send.extend(&data[..n]);
        Ok(n)
    }

    /// Bytes accepted by [`Mux::send`] and not yet put into packets.
    pub fn unsent(&self, id: ConnId) -> usize {
        self.conns.get(&id).map_or(0, |c| c.send.len())
    }

    /// Whether the connection is established (not connecting, closing or closed).
    pub fn is_open(&self, id: ConnId) -> bool {
        self.conns
            .get(&id)
            .is_some_and(|c| c.state == ConnState::Established)
    }

    /// The application is done with the connection: what it sent still goes out, then RST
    /// (§2.8: never FIN). A connection not yet up is reset at once.
    pub fn close(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        match conn.state {
            ConnState::Established => conn.state = ConnState::Closing,
            ConnState::Closing => {}
            ConnState::Closed => {
                self.conns.remove(&id);
            }
            ConnState::SynReceived { .. } => {
                let _ = self.refuse(id);
            }
            ConnState::SynSent => {
                self.send_tcp(id, TCP_RST, &[]);
                self.conns.remove(&id);
            }
        }
    }

    /// Resets the connection now, dropping unsent bytes.
    pub fn abort(&mut self, id: ConnId) {
        if let Some(conn) = self.conns.get_mut(&id) {
            if matches!(conn.state, ConnState::SynReceived { .. }) {
                let _ = self.refuse(id);
                return;
            }
            if conn.state != ConnState::Closed {
                self.send_tcp(id, TCP_RST, &[]);
            }
            self.conns.remove(&id);
        }
    }

    /// Device: a CONTROL packet to the host (§2.7), e.g. kind 7 information.
    pub fn send_control(&mut self, kind: u8, text: &str) -> Result<(), UsbMuxError> {
        if self.link != Link::Active {
            return Err(UsbMuxError::NotReady { what: "CONTROL" });
        }
        let mut body = Vec::with_capacity(1 + text.len());
        body.push(kind);
        body.extend(text.bytes().take(wire::MAX_CONTROL_TEXT));
        self.queue(MuxProtocol::Control, &body);
        Ok(())
    }

    // ---- output ------------------------------------------------------------------------

    /// The next bulk-OUT transfer, if any: bring-up and control packets first, then data
    /// within each connection's window (taking connections in turn), owed ACKs, and the
    /// RSTs of connections whose last bytes went out.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        if let Some(packet) = self.transmit.pop_front() {
            return Some(packet);
        }
        if self.link != Link::Active {
            return None;
        }
        if let Some(id) = self.next_with_data() {
            return Some(self.data_packet(id));
        }
        let owed = self
            .conns
            .iter()
            .find(|(_, c)| c.ack_owed)
            .map(|(id, _)| *id);
        if let Some(id) = owed {
            self.send_tcp(id, TCP_ACK, &[]);
            return self.transmit.pop_front();
        }
        let finished = self
            .conns
            .iter()
            .find(|(_, c)| c.state == ConnState::Closing && c.send.is_empty())
            .map(|(id, _)| *id);
        if let Some(id) = finished {
            self.send_tcp(id, TCP_RST, &[]);
            self.conns.remove(&id);
            return self.transmit.pop_front();
        }
        None
    }

    fn next_with_data(&self) -> Option<ConnId> {
        let ready = |(_, c): &(&ConnId, &Conn)| {
            matches!(c.state, ConnState::Established | ConnState::Closing) && c.sendable() > 0
        };
        let after = match self.cursor {
            Some(cursor) => self
                .conns
                .range((
                    std::ops::Bound::Excluded(cursor),
                    std::ops::Bound::Unbounded,
                ))
                .find(ready),
            None => None,
        };
        after
            .or_else(|| self.conns.iter().find(ready))
            .map(|(id, _)| *id)
    }

    fn data_packet(&mut self, id: ConnId) -> Vec<u8> {
        let max = self.version.max_tcp_payload();
        let mut chunk = Vec::new();
        if let Some(conn) = self.conns.get_mut(&id) {
            let n = conn.sendable().min(max);
            chunk.extend(conn.send.drain(..n));
        }
        self.cursor = Some(id);
        self.send_tcp(id, TCP_ACK, &chunk);
        self.events.push_back(MuxEvent::Writable(id));
        self.transmit.pop_front().unwrap_or_default()
    }

    /// Queues a TCP packet of a known connection with its current counters.
    fn send_tcp(&mut self, id: ConnId, flags: u8, payload: &[u8]) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let header = TcpHeader {
            source_port: id.local_port,
            dest_port: id.remote_port,
            seq: conn.tx_seq,
            ack: conn.tx_ack,
            flags,
            window: window_field(),
        };
        conn.tx_seq = conn.tx_seq.wrapping_add(payload.len() as u32);
        conn.ack_owed = false;
        self.queue(MuxProtocol::Tcp, &tcp_body(&header, payload));
    }

    /// Frames a packet with the current header version; the v2 counters advance (§2.6).
    fn queue(&mut self, protocol: MuxProtocol, body: &[u8]) {
        let seq = match self.version {
            MuxVersion::V1 => None,
            MuxVersion::V2 => {
                let seq = MuxSeq {
                    tx_seq: self.tx_seq,
                    rx_seq: self.rx_seq,
                };
                self.tx_seq = self.tx_seq.wrapping_add(1);
                Some(seq)
            }
        };
        self.transmit.push_back(encode_packet(protocol, seq, body));
    }
}

/// The window we announce, in units of 256 bytes (§2.8: 131072 >> 8 = 512).
fn window_field() -> u16 {
    u16::try_from(RECEIVE_WINDOW >> WINDOW_SHIFT).unwrap_or(u16::MAX)
}
