//! The bytes of the mux as it runs over USB bulk endpoints: the v1/v2 mux header
//! (docs/protocol.md §2.5), VERSION/SETUP/CONTROL bodies (§2.6, §2.7), the bare TCP header
//! (§2.8) and the size limits and zero-length-packet rule of the endpoints (§2.4).
//!
//! Plain functions and values, no state: [`super::Mux`] builds on them, the fuzz target calls
//! them directly.

use super::UsbMuxError;

/// Version 1 header: `u32 protocol, u32 length` (§2.5).
pub const V1_HEADER_LEN: usize = 8;
/// Version 2 header: v1 plus `u32 magic, u16 tx_seq, u16 rx_seq` (§2.5).
pub const V2_HEADER_LEN: usize = 16;
pub const V2_MAGIC: u32 = 0xFEED_FACE;
/// Bare BSD TCP header without options (§2.8).
pub const TCP_HEADER_LEN: usize = 20;
/// Size of each bulk-IN transfer usbmuxd keeps pending (§2.4).
pub const USB_MRU: usize = 16384;
/// Largest outgoing mux packet, headers included (§2.4).
pub const USB_MTU: usize = 49152;
/// Largest incoming mux packet we reassemble (§2.4).
pub const DEV_MRU: usize = 65536;
/// Largest TCP payload in one packet: `USB_MTU` − v2 header − TCP header = 49116 (§2.4).
pub const MAX_TCP_PAYLOAD: usize = USB_MTU - V2_HEADER_LEN - TCP_HEADER_LEN;
/// Windows go on the wire in units of 256 bytes, both ways (§2.8).
pub const WINDOW_SHIFT: u32 = 8;
/// The receive window we announce: 131072 bytes, i.e. 512 on the wire (§2.8).
pub const RECEIVE_WINDOW: u32 = 131_072;
/// A connection holding more unread bytes than this is reset, as usbmuxd does (§2.8).
pub const MAX_RECEIVE_BUFFER: usize = 262_144;
/// Bytes a connection accepts from its writer before the writer has to wait (§2.8: usbmuxd's
/// 65536-byte buffer).
pub const SEND_BUFFER: usize = 65_536;
/// SETUP's one-byte body (§2.6).
pub const SETUP_BODY: u8 = 0x07;
/// The mux version the host asks for in VERSION (§2.6).
pub const VERSION_MAJOR: u32 = 2;
/// The `rx_seq` of SETUP, after usbmuxd reset its counters (§2.6).
pub const SETUP_RX_SEQ: u16 = 0xFFFF;
/// Longest CONTROL text we keep for a log line.
pub const MAX_CONTROL_TEXT: usize = 1024;

pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;
/// Data offset byte of a header without options: 5 words (§2.8).
const TCP_OFFSET_5_WORDS: u8 = 0x50;

/// Which mux header is on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MuxVersion {
    V1,
    V2,
}

impl MuxVersion {
    pub fn header_len(self) -> usize {
        match self {
            MuxVersion::V1 => V1_HEADER_LEN,
            MuxVersion::V2 => V2_HEADER_LEN,
        }
    }

    /// The largest TCP payload that keeps a packet within `USB_MTU`.
    pub fn max_tcp_payload(self) -> usize {
        USB_MTU - self.header_len() - TCP_HEADER_LEN
    }
}

/// The `protocol` field of the mux header (§2.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MuxProtocol {
    Version,
    Control,
    Setup,
    Tcp,
}

impl MuxProtocol {
    pub fn code(self) -> u32 {
        match self {
            MuxProtocol::Version => 0,
            MuxProtocol::Control => 1,
            MuxProtocol::Setup => 2,
            MuxProtocol::Tcp => 6,
        }
    }

    pub fn from_code(code: u32) -> Option<Self> {
        Some(match code {
            0 => MuxProtocol::Version,
            1 => MuxProtocol::Control,
            2 => MuxProtocol::Setup,
            6 => MuxProtocol::Tcp,
            _ => return None,
        })
    }
}

/// The v2 header's packet counters (§2.6 step 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MuxSeq {
    pub tx_seq: u16,
    pub rx_seq: u16,
}

/// A mux header; `seq` is `None` for version 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MuxHeader {
    pub protocol: MuxProtocol,
    /// The whole packet, header included.
    pub length: u32,
    pub seq: Option<MuxSeq>,
}

impl MuxHeader {
    pub fn version(&self) -> MuxVersion {
        match self.seq {
            None => MuxVersion::V1,
            Some(_) => MuxVersion::V2,
        }
    }

    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.protocol.code().to_be_bytes());
        out.extend_from_slice(&self.length.to_be_bytes());
        if let Some(seq) = self.seq {
            out.extend_from_slice(&V2_MAGIC.to_be_bytes());
            out.extend_from_slice(&seq.tx_seq.to_be_bytes());
            out.extend_from_slice(&seq.rx_seq.to_be_bytes());
        }
    }

    /// Reads a header of `version` from the start of `bytes` (the length is not checked
    /// against `bytes` here; [`decode_packet`] does).
    pub fn decode(bytes: &[u8], version: MuxVersion) -> Result<Self, UsbMuxError> {
        let needed = version.header_len();
        if bytes.len() < needed {
            return Err(UsbMuxError::Truncated {
                what: "mux header",
                needed,
                got: bytes.len(),
            });
        }
        let code = be32(bytes, 0);
        let length = be32(bytes, 4);
        let protocol = MuxProtocol::from_code(code).ok_or(UsbMuxError::UnknownProtocol(code))?;
        let seq = match version {
            MuxVersion::V1 => None,
            MuxVersion::V2 => {
                let magic = be32(bytes, 8);
                if magic != V2_MAGIC {
                    return Err(UsbMuxError::BadMagic(magic));
                }
                Some(MuxSeq {
                    tx_seq: be16(bytes, 12),
                    rx_seq: be16(bytes, 14),
                })
            }
        };
        Ok(MuxHeader {
            protocol,
            length,
            seq,
        })
    }
}

/// The TCP header of §2.8 (checksum and urgent pointer are always zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpHeader {
    pub source_port: u16,
    pub dest_port: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    /// On the wire: in units of 256 bytes.
    pub window: u16,
}

impl TcpHeader {
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.source_port.to_be_bytes());
        out.extend_from_slice(&self.dest_port.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.ack.to_be_bytes());
        out.push(TCP_OFFSET_5_WORDS);
        out.push(self.flags);
        out.extend_from_slice(&self.window.to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 0]);
    }

    /// The header and the payload after it. A data offset other than 5 words is skipped
    /// over as TCP would (options), but never past the packet.
    pub fn decode(bytes: &[u8]) -> Result<(Self, &[u8]), UsbMuxError> {
        if bytes.len() < TCP_HEADER_LEN {
            return Err(UsbMuxError::Truncated {
                what: "TCP header",
                needed: TCP_HEADER_LEN,
                got: bytes.len(),
            });
        }
        let offset = usize::from(bytes[12] >> 4) * 4;
        if offset < TCP_HEADER_LEN || offset > bytes.len() {
            return Err(UsbMuxError::BadTcpOffset(bytes[12]));
        }
        let header = TcpHeader {
            source_port: be16(bytes, 0),
            dest_port: be16(bytes, 2),
            seq: be32(bytes, 4),
            ack: be32(bytes, 8),
            flags: bytes[13],
            window: be16(bytes, 14),
        };
        Ok((header, &bytes[offset..]))
    }

    /// The window in bytes.
    pub fn window_bytes(&self) -> u32 {
        u32::from(self.window) << WINDOW_SHIFT
    }
}

/// A received packet's body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MuxBody<'a> {
    Version {
        major: u32,
        minor: u32,
    },
    /// First byte: 3 error, 5 warning, 7 information; then ASCII text (§2.7).
    Control {
        kind: u8,
        text: &'a [u8],
    },
    Setup(&'a [u8]),
    Tcp {
        header: TcpHeader,
        payload: &'a [u8],
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MuxPacket<'a> {
    pub header: MuxHeader,
    pub body: MuxBody<'a>,
}

/// Decodes one whole packet (exactly `header.length` bytes) with a header of `version`.
pub fn decode_packet(bytes: &[u8], version: MuxVersion) -> Result<MuxPacket<'_>, UsbMuxError> {
    let header = MuxHeader::decode(bytes, version)?;
    let header_len = version.header_len();
    let length = header.length as usize;
    if length < header_len || length > DEV_MRU {
        return Err(UsbMuxError::BadLength(header.length));
    }
    if length != bytes.len() {
        return Err(UsbMuxError::LengthMismatch {
            announced: header.length,
            received: bytes.len(),
        });
    }
    let body = &bytes[header_len..];
    let body = match header.protocol {
        MuxProtocol::Version => {
            if body.len() < 8 {
                return Err(UsbMuxError::Truncated {
                    what: "VERSION body",
                    needed: 8,
                    got: body.len(),
                });
            }
            MuxBody::Version {
                major: be32(body, 0),
                minor: be32(body, 4),
            }
        }
        MuxProtocol::Control => match body.split_first() {
            Some((&kind, text)) => MuxBody::Control { kind, text },
            None => {
                return Err(UsbMuxError::Truncated {
                    what: "CONTROL body",
                    needed: 1,
                    got: 0,
                })
            }
        },
        MuxProtocol::Setup => MuxBody::Setup(body),
        MuxProtocol::Tcp => {
            let (header, payload) = TcpHeader::decode(body)?;
            MuxBody::Tcp { header, payload }
        }
    };
    Ok(MuxPacket { header, body })
}

/// Frames `body` (already encoded) as one packet.
pub fn encode_packet(protocol: MuxProtocol, seq: Option<MuxSeq>, body: &[u8]) -> Vec<u8> {
    let header_len = match seq {
        None => V1_HEADER_LEN,
        Some(_) => V2_HEADER_LEN,
    };
    let mut out = Vec::with_capacity(header_len + body.len());
    let header = MuxHeader {
        protocol,
        // Callers keep bodies within USB_MTU; saturate rather than wrap if one did not.
        length: u32::try_from(header_len + body.len()).unwrap_or(u32::MAX),
        seq,
    };
    header.encode_into(&mut out);
    out.extend_from_slice(body);
    out
}

/// VERSION body: `u32 major, u32 minor, u32 padding` (§2.6).
pub fn version_body(major: u32, minor: u32) -> Vec<u8> {
    let mut body = Vec::with_capacity(12);
    body.extend_from_slice(&major.to_be_bytes());
    body.extend_from_slice(&minor.to_be_bytes());
    body.extend_from_slice(&0u32.to_be_bytes());
    body
}

/// TCP header plus payload, the body of a protocol-6 packet.
pub fn tcp_body(header: &TcpHeader, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(TCP_HEADER_LEN + payload.len());
    header.encode_into(&mut body);
    body.extend_from_slice(payload);
    body
}

/// Whether a bulk transfer of `len` bytes must be followed by a zero-length one: when it
/// ends exactly on a packet boundary the receiver cannot tell it ended (§2.4).
pub fn needs_zlp(len: usize, max_packet_size: usize) -> bool {
    max_packet_size > 0 && len > 0 && len.is_multiple_of(max_packet_size)
}

/// CONTROL text for a log line: ASCII kept, anything else `?`, capped.
pub fn control_text(text: &[u8]) -> String {
    text.iter()
        .take(MAX_CONTROL_TEXT)
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                char::from(b)
            } else {
                '?'
            }
        })
        .collect::<String>()
        .trim_end_matches(['?', ' '])
        .to_string()
}

fn be32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn be16(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([bytes[at], bytes[at + 1]])
}
