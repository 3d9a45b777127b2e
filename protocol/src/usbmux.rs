//! The usbmuxd client protocol (docs/protocol.md §1): a 16-byte little-endian header,
//! plist (v1) or binary (v0) payloads, device events, `Connect` that turns the socket into a
//! raw stream to a port on the phone, and pair-record storage.
//!
//! Codecs are plain functions so the simulator can speak the server side with them.

use std::fmt;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use crate::frame::{self, dict, PlistFormat};

pub const HEADER_LEN: usize = 16;
/// Largest packet the client accepts (a `ListDevices` reply for 64 phones is ~30 KiB).
pub const MAX_PACKET_LEN: u32 = 4 * 1024 * 1024;
/// Largest command usbmuxd itself accepts; the simulator enforces the same.
pub const MAX_COMMAND_LEN: u32 = 0x10000;
pub const PROTOCOL_BINARY: u32 = 0;
pub const PROTOCOL_PLIST: u32 = 1;
/// Where usbmuxd listens on Linux and macOS.
pub const DEFAULT_SOCKET_PATH: &str = "/var/run/usbmuxd";
pub const ADDRESS_ENV: &str = "USBMUXD_SOCKET_ADDRESS";
/// Size of a v0 DEVICE_ADD record: id, product id, 256-byte serial, padding, location.
pub const BINARY_DEVICE_RECORD_LEN: usize = 268;
/// Every libusbmuxd-compatible client sends this version.
const LIBUSBMUX_VERSION: u64 = 3;
const PROGRAM_NAME: &str = "station";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    Result = 1,
    Connect = 2,
    Listen = 3,
    DeviceAdd = 4,
    DeviceRemove = 5,
    DevicePaired = 6,
    Plist = 8,
}

impl MessageType {
    pub fn from_u32(value: u32) -> Option<Self> {
        Some(match value {
            1 => Self::Result,
            2 => Self::Connect,
            3 => Self::Listen,
            4 => Self::DeviceAdd,
            5 => Self::DeviceRemove,
            6 => Self::DevicePaired,
            8 => Self::Plist,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultCode {
    Ok,
    BadCommand,
    BadDevice,
    ConnectionRefused,
    NoSuchService,
    BadVersion,
    Other(u32),
}

impl ResultCode {
    pub fn from_u32(value: u32) -> Self {
        match value {
            0 => Self::Ok,
            1 => Self::BadCommand,
            2 => Self::BadDevice,
            3 => Self::ConnectionRefused,
            4 => Self::NoSuchService,
            6 => Self::BadVersion,
            n => Self::Other(n),
        }
    }

    pub fn to_u32(self) -> u32 {
        match self {
            Self::Ok => 0,
            Self::BadCommand => 1,
            Self::BadDevice => 2,
            Self::ConnectionRefused => 3,
            Self::NoSuchService => 4,
            Self::BadVersion => 6,
            Self::Other(n) => n,
        }
    }
}

impl fmt::Display for ResultCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ok => write!(f, "OK (0)"),
            Self::BadCommand => write!(f, "bad command (1)"),
            Self::BadDevice => write!(f, "no such device (2)"),
            Self::ConnectionRefused => write!(f, "connection refused by the device (3)"),
            Self::NoSuchService => write!(f, "no such service (4)"),
            Self::BadVersion => write!(f, "protocol version not supported (6)"),
            Self::Other(n) => write!(f, "result {n}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UsbmuxError {
    #[error("no usbmuxd is reachable at {address}: {source}")]
    Unreachable {
        address: Address,
        source: std::io::Error,
    },
    #[error("usbmuxd closed the connection")]
    Closed,
    #[error("usbmuxd did not answer within {0:?}")]
    Timeout(Duration),
    #[error("usbmuxd packet of {len} bytes exceeds the {max}-byte cap")]
    TooLarge { len: u32, max: u32 },
    #[error("malformed usbmuxd message: {0}")]
    Malformed(String),
    #[error("usbmuxd refused {request}: {code}")]
    Refused {
        request: &'static str,
        code: ResultCode,
    },
    #[error("invalid usbmuxd address {0:?}: expected UNIX:/path, /path or host:port")]
    BadAddress(String),
    #[error("i/o error talking to usbmuxd: {0}")]
    Io(std::io::Error),
}

impl From<std::io::Error> for UsbmuxError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            UsbmuxError::Closed
        } else {
            UsbmuxError::Io(e)
        }
    }
}

/// The 16-byte packet header; every field little-endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Whole packet length including these 16 bytes.
    pub length: u32,
    pub version: u32,
    pub message: u32,
    pub tag: u32,
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..4].copy_from_slice(&self.length.to_le_bytes());
        out[4..8].copy_from_slice(&self.version.to_le_bytes());
        out[8..12].copy_from_slice(&self.message.to_le_bytes());
        out[12..16].copy_from_slice(&self.tag.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8; HEADER_LEN]) -> Self {
        let word =
            |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        Header {
            length: word(0),
            version: word(4),
            message: word(8),
            tag: word(12),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub header: Header,
    pub payload: Vec<u8>,
}

impl Packet {
    /// The payload as a plist (v1 messages).
    pub fn plist(&self) -> Result<plist::Value, UsbmuxError> {
        frame::decode_plist(&self.payload).map_err(|e| UsbmuxError::Malformed(e.to_string()))
    }
}

/// Reads one packet, refusing lengths above `max` before allocating; the payload buffer grows
/// with the bytes that arrive (`frame::read_body`).
pub async fn read_packet_capped<R: AsyncRead + Unpin>(
    reader: &mut R,
    max: u32,
) -> Result<Packet, UsbmuxError> {
    let mut raw = [0u8; HEADER_LEN];
    reader.read_exact(&mut raw).await?;
    let header = Header::decode(&raw);
    if header.length > max {
        return Err(UsbmuxError::TooLarge {
            len: header.length,
            max,
        });
    }
    let body_len = (header.length as usize)
        .checked_sub(HEADER_LEN)
        .ok_or_else(|| {
            UsbmuxError::Malformed(format!("length {} below header size", header.length))
        })?;
    let payload = frame::read_body(reader, body_len).await?;
    Ok(Packet { header, payload })
}

pub async fn read_packet<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Packet, UsbmuxError> {
    read_packet_capped(reader, MAX_PACKET_LEN).await
}

pub fn packet_bytes(version: u32, message: u32, tag: u32, payload: &[u8]) -> Vec<u8> {
    let header = Header {
        length: (HEADER_LEN + payload.len()) as u32,
        version,
        message,
        tag,
    };
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(payload);
    out
}

pub async fn write_packet<W: AsyncWrite + Unpin>(
    writer: &mut W,
    version: u32,
    message: u32,
    tag: u32,
    payload: &[u8],
) -> Result<(), UsbmuxError> {
    writer
        .write_all(&packet_bytes(version, message, tag, payload))
        .await?;
    writer.flush().await?;
    Ok(())
}

/// A v1 PLIST packet holding `value` as XML.
pub fn plist_packet_bytes(tag: u32, value: &plist::Value) -> Vec<u8> {
    // Serialising an in-memory plist to a Vec cannot fail for the value types we build.
    let body = frame::encode_plist(value, PlistFormat::Xml).unwrap_or_default();
    packet_bytes(PROTOCOL_PLIST, MessageType::Plist as u32, tag, &body)
}

/// Ports travel in network byte order stored as a plain integer: 62078 is sent as 32498.
pub fn swap_port(port: u16) -> u16 {
    port.swap_bytes()
}

pub fn result_plist(code: u32) -> plist::Value {
    dict([
        ("MessageType", plist::Value::from("Result")),
        ("Number", plist::Value::from(u64::from(code))),
    ])
}

/// One phone as usbmuxd describes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeviceInfo {
    pub device_id: u32,
    /// The USB serial number, which is the UDID.
    pub udid: String,
    pub product_id: u32,
    /// `(bus << 16) | address`: which hub port the phone is on.
    pub location_id: u32,
    pub connection_speed: u64,
    pub connection_type: String,
}

fn get_uint(d: &plist::Dictionary, key: &str) -> Option<u64> {
    d.get(key).and_then(|v| v.as_unsigned_integer())
}

fn get_u32(d: &plist::Dictionary, key: &str) -> Result<u32, UsbmuxError> {
    get_uint(d, key)
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| UsbmuxError::Malformed(format!("missing or invalid {key}")))
}

impl DeviceInfo {
    pub fn to_attached_plist(&self) -> plist::Value {
        let properties = dict([
            ("ConnectionSpeed", plist::Value::from(self.connection_speed)),
            (
                "ConnectionType",
                plist::Value::from(self.connection_type.clone()),
            ),
            ("DeviceID", plist::Value::from(u64::from(self.device_id))),
            (
                "LocationID",
                plist::Value::from(u64::from(self.location_id)),
            ),
            ("ProductID", plist::Value::from(u64::from(self.product_id))),
            ("SerialNumber", plist::Value::from(self.udid.clone())),
        ]);
        dict([
            ("MessageType", plist::Value::from("Attached")),
            ("DeviceID", plist::Value::from(u64::from(self.device_id))),
            ("Properties", properties),
        ])
    }

    pub fn from_attached_plist(value: &plist::Value) -> Result<Self, UsbmuxError> {
        let outer = value
            .as_dictionary()
            .ok_or_else(|| UsbmuxError::Malformed("device entry is not a dictionary".into()))?;
        let props = outer
            .get("Properties")
            .and_then(|p| p.as_dictionary())
            .ok_or_else(|| UsbmuxError::Malformed("device entry without Properties".into()))?;
        let device_id = get_u32(props, "DeviceID").or_else(|_| get_u32(outer, "DeviceID"))?;
        let udid = props
            .get("SerialNumber")
            .and_then(|v| v.as_string())
            .ok_or_else(|| UsbmuxError::Malformed("device entry without SerialNumber".into()))?;
        Ok(DeviceInfo {
            device_id,
            udid: udid.to_string(),
            product_id: get_uint(props, "ProductID")
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(0),
            location_id: get_uint(props, "LocationID")
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(0),
            connection_speed: get_uint(props, "ConnectionSpeed").unwrap_or(0),
            connection_type: props
                .get("ConnectionType")
                .and_then(|v| v.as_string())
                .unwrap_or("USB")
                .to_string(),
        })
    }

    /// The 268-byte v0 DEVICE_ADD record.
    pub fn to_binary_record(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(BINARY_DEVICE_RECORD_LEN);
        out.extend_from_slice(&self.device_id.to_le_bytes());
        out.extend_from_slice(&(self.product_id as u16).to_le_bytes());
        let mut serial = [0u8; 256];
        let udid = self.udid.as_bytes();
        let n = udid.len().min(255);
        serial[..n].copy_from_slice(&udid[..n]);
        out.extend_from_slice(&serial);
        out.extend_from_slice(&[0u8; 2]);
        out.extend_from_slice(&self.location_id.to_le_bytes());
        out
    }

    pub fn from_binary_record(bytes: &[u8]) -> Result<Self, UsbmuxError> {
        if bytes.len() < BINARY_DEVICE_RECORD_LEN {
            return Err(UsbmuxError::Malformed(format!(
                "binary device record of {} bytes, expected {BINARY_DEVICE_RECORD_LEN}",
                bytes.len()
            )));
        }
        let device_id = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let product_id = u16::from_le_bytes([bytes[4], bytes[5]]);
        let serial = &bytes[6..262];
        let end = serial.iter().position(|&b| b == 0).unwrap_or(serial.len());
        let udid = String::from_utf8_lossy(&serial[..end]).into_owned();
        let location_id = u32::from_le_bytes([bytes[264], bytes[265], bytes[266], bytes[267]]);
        Ok(DeviceInfo {
            device_id,
            udid,
            product_id: u32::from(product_id),
            location_id,
            connection_speed: 0,
            connection_type: "USB".into(),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Attached(DeviceInfo),
    Detached { device_id: u32 },
    Paired { device_id: u32 },
}

impl Event {
    pub fn to_plist(&self) -> plist::Value {
        match self {
            Event::Attached(info) => info.to_attached_plist(),
            Event::Detached { device_id } => dict([
                ("MessageType", plist::Value::from("Detached")),
                ("DeviceID", plist::Value::from(u64::from(*device_id))),
            ]),
            Event::Paired { device_id } => dict([
                ("MessageType", plist::Value::from("Paired")),
                ("DeviceID", plist::Value::from(u64::from(*device_id))),
            ]),
        }
    }

    /// Decodes an event packet, plist (v1) or binary (v0).
    pub fn from_packet(packet: &Packet) -> Result<Self, UsbmuxError> {
        let id_payload = || -> Result<u32, UsbmuxError> {
            packet
                .payload
                .get(0..4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or_else(|| UsbmuxError::Malformed("short event payload".into()))
        };
        match MessageType::from_u32(packet.header.message) {
            Some(MessageType::DeviceAdd) => Ok(Event::Attached(DeviceInfo::from_binary_record(
                &packet.payload,
            )?)),
            Some(MessageType::DeviceRemove) => Ok(Event::Detached {
                device_id: id_payload()?,
            }),
            Some(MessageType::DevicePaired) => Ok(Event::Paired {
                device_id: id_payload()?,
            }),
            Some(MessageType::Plist) => {
                let value = packet.plist()?;
                let d = value
                    .as_dictionary()
                    .ok_or_else(|| UsbmuxError::Malformed("event is not a dictionary".into()))?;
                match d.get("MessageType").and_then(|v| v.as_string()) {
                    Some("Attached") => {
                        Ok(Event::Attached(DeviceInfo::from_attached_plist(&value)?))
                    }
                    Some("Detached") => Ok(Event::Detached {
                        device_id: get_u32(d, "DeviceID")?,
                    }),
                    Some("Paired") => Ok(Event::Paired {
                        device_id: get_u32(d, "DeviceID")?,
                    }),
                    other => Err(UsbmuxError::Malformed(format!(
                        "unexpected event {other:?}"
                    ))),
                }
            }
            _ => Err(UsbmuxError::Malformed(format!(
                "unexpected message type {} in event stream",
                packet.header.message
            ))),
        }
    }
}

/// A usbmuxd request (plist protocol).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    ListDevices,
    Listen,
    /// `port` in host order; it is byte-swapped on the wire.
    Connect {
        device_id: u32,
        port: u16,
    },
    ReadBuid,
    ReadPairRecord {
        udid: String,
    },
    SavePairRecord {
        udid: String,
        data: Vec<u8>,
        device_id: Option<u32>,
    },
    DeletePairRecord {
        udid: String,
    },
    ListListeners,
    Unknown(String),
}

impl Request {
    pub fn name(&self) -> &'static str {
        match self {
            Request::ListDevices => "ListDevices",
            Request::Listen => "Listen",
            Request::Connect { .. } => "Connect",
            Request::ReadBuid => "ReadBUID",
            Request::ReadPairRecord { .. } => "ReadPairRecord",
            Request::SavePairRecord { .. } => "SavePairRecord",
            Request::DeletePairRecord { .. } => "DeletePairRecord",
            Request::ListListeners => "ListListeners",
            Request::Unknown(_) => "unknown request",
        }
    }

    pub fn to_plist(&self) -> plist::Value {
        let message_type = match self {
            Request::Unknown(name) => name.clone(),
            other => other.name().to_string(),
        };
        let mut d = plist::Dictionary::new();
        d.insert("MessageType".into(), message_type.into());
        d.insert(
            "ClientVersionString".into(),
            format!("station {}", env!("CARGO_PKG_VERSION")).into(),
        );
        d.insert("ProgName".into(), PROGRAM_NAME.into());
        d.insert("kLibUSBMuxVersion".into(), LIBUSBMUX_VERSION.into());
        match self {
            Request::Connect { device_id, port } => {
                d.insert("DeviceID".into(), u64::from(*device_id).into());
                d.insert("PortNumber".into(), u64::from(swap_port(*port)).into());
            }
            Request::ReadPairRecord { udid } | Request::DeletePairRecord { udid } => {
                d.insert("PairRecordID".into(), udid.clone().into());
            }
            Request::SavePairRecord {
                udid,
                data,
                device_id,
            } => {
                d.insert("PairRecordID".into(), udid.clone().into());
                d.insert("PairRecordData".into(), plist::Value::Data(data.clone()));
                if let Some(id) = device_id {
                    d.insert("DeviceID".into(), u64::from(*id).into());
                }
            }
            _ => {}
        }
        plist::Value::Dictionary(d)
    }

    pub fn from_plist(value: &plist::Value) -> Result<Self, UsbmuxError> {
        let d = value
            .as_dictionary()
            .ok_or_else(|| UsbmuxError::Malformed("request is not a dictionary".into()))?;
        let kind = d
            .get("MessageType")
            .and_then(|v| v.as_string())
            .ok_or_else(|| UsbmuxError::Malformed("request without MessageType".into()))?;
        let udid = || -> Result<String, UsbmuxError> {
            d.get("PairRecordID")
                .and_then(|v| v.as_string())
                .map(str::to_string)
                .ok_or_else(|| UsbmuxError::Malformed("missing PairRecordID".into()))
        };
        Ok(match kind {
            "ListDevices" => Request::ListDevices,
            "Listen" => Request::Listen,
            "Connect" => {
                let wire_port = get_u32(d, "PortNumber")?;
                let wire_port = u16::try_from(wire_port).map_err(|_| {
                    UsbmuxError::Malformed(format!("PortNumber {wire_port} out of range"))
                })?;
                Request::Connect {
                    device_id: get_u32(d, "DeviceID")?,
                    port: swap_port(wire_port),
                }
            }
            "ReadBUID" => Request::ReadBuid,
            "ReadPairRecord" => Request::ReadPairRecord { udid: udid()? },
            "SavePairRecord" => Request::SavePairRecord {
                udid: udid()?,
                data: d
                    .get("PairRecordData")
                    .and_then(|v| v.as_data())
                    .map(<[u8]>::to_vec)
                    .ok_or_else(|| UsbmuxError::Malformed("missing PairRecordData".into()))?,
                device_id: get_uint(d, "DeviceID").and_then(|n| u32::try_from(n).ok()),
            },
            "DeletePairRecord" => Request::DeletePairRecord { udid: udid()? },
            "ListListeners" => Request::ListListeners,
            other => Request::Unknown(other.to_string()),
        })
    }
}

/// Where to find usbmuxd, in the forms libusbmuxd accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Unix(PathBuf),
    Tcp { host: String, port: u16 },
}

impl Address {
    /// `UNIX:/path` (libusbmuxd), a bare path, `host:port` or `[v6]:port`.
    pub fn parse(text: &str) -> Result<Self, UsbmuxError> {
        let text = text.trim();
        let bad = || UsbmuxError::BadAddress(text.to_string());
        if let Some(path) = text.strip_prefix("UNIX:") {
            if path.is_empty() {
                return Err(bad());
            }
            return Ok(Address::Unix(PathBuf::from(path)));
        }
        if text.starts_with('/') || !text.contains(':') {
            if text.is_empty() {
                return Err(bad());
            }
            return Ok(Address::Unix(PathBuf::from(text)));
        }
        let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        if port == 0 || host.is_empty() {
            return Err(bad());
        }
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        Ok(Address::Tcp { host, port })
    }

    /// `USBMUXD_SOCKET_ADDRESS` when set, else `/var/run/usbmuxd`.
    pub fn from_env() -> Result<Self, UsbmuxError> {
        match std::env::var(ADDRESS_ENV) {
            Ok(value) if !value.trim().is_empty() => Address::parse(&value),
            _ => Ok(Address::Unix(PathBuf::from(DEFAULT_SOCKET_PATH))),
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Unix(path) => write!(f, "UNIX:{}", path.display()),
            Address::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Address::Tcp { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// A connection to usbmuxd, over a unix socket or TCP, or, with no daemon in between, a
/// mux connection straight over USB (`usb_mux::driver`): after `Connect` all three carry a
/// phone port's bytes the same way.
#[derive(Debug)]
pub enum UsbmuxStream {
    Unix(UnixStream),
    Tcp(TcpStream),
    Usb(crate::usb_mux::driver::MuxStream),
}

impl AsyncRead for UsbmuxStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UsbmuxStream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            UsbmuxStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            UsbmuxStream::Usb(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UsbmuxStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UsbmuxStream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            UsbmuxStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            UsbmuxStream::Usb(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UsbmuxStream::Unix(s) => Pin::new(s).poll_flush(cx),
            UsbmuxStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            UsbmuxStream::Usb(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UsbmuxStream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            UsbmuxStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            UsbmuxStream::Usb(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// The first pause before connecting again to a usbmuxd whose listen backlog is full; it
/// doubles up to [`BUSY_RETRY_MAX`].
const BUSY_RETRY_INITIAL: Duration = Duration::from_millis(10);
const BUSY_RETRY_MAX: Duration = Duration::from_millis(200);

/// Opens a connection to usbmuxd at `address`, bounded by `timeout`.
///
/// usbmuxd listens with a backlog of 5 and accepts only between the other work of its
/// single-threaded main loop (docs/protocol.md §1.10); while it is busy, a connect to its
/// socket fails at once with `EAGAIN` (tokio's sockets are non-blocking). That is a busy
/// daemon, not a gone one: we connect again, with growing pauses, until `timeout`.
pub async fn connect_address(
    address: &Address,
    timeout: Duration,
) -> Result<UsbmuxStream, UsbmuxError> {
    let attempt = async {
        match address {
            Address::Unix(path) => {
                let mut pause = BUSY_RETRY_INITIAL;
                loop {
                    match UnixStream::connect(path).await {
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            tracing::debug!(path = %path.display(), "usbmuxd's listen backlog is full; connecting again");
                            tokio::time::sleep(pause).await;
                            pause = (pause * 2).min(BUSY_RETRY_MAX);
                        }
                        other => break other.map(UsbmuxStream::Unix),
                    }
                }
            }
            Address::Tcp { host, port } => TcpStream::connect((host.as_str(), *port))
                .await
                .map(UsbmuxStream::Tcp),
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(source)) => Err(UsbmuxError::Unreachable {
            address: address.clone(),
            source,
        }),
        Err(_) => Err(UsbmuxError::Unreachable {
            address: address.clone(),
            source: std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"),
        }),
    }
}

/// A usbmuxd client over any stream. One connection serves one purpose: after `listen` it
/// carries events, after `connect` it is the raw stream to the phone (usbmuxd's rule).
#[derive(Debug)]
pub struct UsbmuxClient<S> {
    stream: S,
    next_tag: u32,
    timeout: Duration,
}

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

impl<S: AsyncRead + AsyncWrite + Unpin> UsbmuxClient<S> {
    pub fn new(stream: S) -> Self {
        UsbmuxClient {
            stream,
            next_tag: 1,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends a request and returns the reply's plist; binary RESULT replies become
    /// `{MessageType: Result, Number: n}`.
    pub async fn request(&mut self, request: &Request) -> Result<plist::Value, UsbmuxError> {
        let tag = self.next_tag;
        self.next_tag = self.next_tag.wrapping_add(1).max(1);
        let bytes = plist_packet_bytes(tag, &request.to_plist());
        let timeout = self.timeout;
        let exchange = async {
            self.stream.write_all(&bytes).await?;
            self.stream.flush().await?;
            loop {
                let packet = read_packet(&mut self.stream).await?;
                if packet.header.tag != tag {
                    // An event that raced the reply (tag 0); not ours.
                    continue;
                }
                return reply_value(&packet);
            }
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| UsbmuxError::Timeout(timeout))?
    }

    async fn expect_ok(&mut self, request: &Request) -> Result<(), UsbmuxError> {
        let reply = self.request(request).await?;
        match result_number(&reply) {
            Some(0) => Ok(()),
            Some(n) => Err(UsbmuxError::Refused {
                request: request.name(),
                code: ResultCode::from_u32(n),
            }),
            None => Err(UsbmuxError::Malformed(format!(
                "{} reply without Number",
                request.name()
            ))),
        }
    }

    pub async fn list_devices(&mut self) -> Result<Vec<DeviceInfo>, UsbmuxError> {
        let reply = self.request(&Request::ListDevices).await?;
        if let Some(n) = result_number(&reply) {
            return Err(UsbmuxError::Refused {
                request: "ListDevices",
                code: ResultCode::from_u32(n),
            });
        }
        let list = reply
            .as_dictionary()
            .and_then(|d| d.get("DeviceList"))
            .and_then(|v| v.as_array())
            .ok_or_else(|| UsbmuxError::Malformed("ListDevices reply without DeviceList".into()))?;
        list.iter().map(DeviceInfo::from_attached_plist).collect()
    }

    pub async fn read_buid(&mut self) -> Result<String, UsbmuxError> {
        let reply = self.request(&Request::ReadBuid).await?;
        if let Some(n) = result_number(&reply) {
            return Err(UsbmuxError::Refused {
                request: "ReadBUID",
                code: ResultCode::from_u32(n),
            });
        }
        reply
            .as_dictionary()
            .and_then(|d| d.get("BUID"))
            .and_then(|v| v.as_string())
            .map(str::to_string)
            .ok_or_else(|| UsbmuxError::Malformed("ReadBUID reply without BUID".into()))
    }

    /// The stored pair record bytes, or `None` when usbmuxd has none (ENOENT).
    pub async fn read_pair_record(&mut self, udid: &str) -> Result<Option<Vec<u8>>, UsbmuxError> {
        let reply = self
            .request(&Request::ReadPairRecord {
                udid: udid.to_string(),
            })
            .await?;
        if let Some(data) = reply
            .as_dictionary()
            .and_then(|d| d.get("PairRecordData"))
            .and_then(|v| v.as_data())
        {
            return Ok(Some(data.to_vec()));
        }
        match result_number(&reply) {
            // usbmuxd answers errno values here: ENOENT when there is no record.
            Some(ERRNO_ENOENT) => Ok(None),
            Some(n) => Err(UsbmuxError::Refused {
                request: "ReadPairRecord",
                code: ResultCode::from_u32(n),
            }),
            None => Err(UsbmuxError::Malformed(
                "ReadPairRecord reply without data".into(),
            )),
        }
    }

    pub async fn save_pair_record(
        &mut self,
        udid: &str,
        data: Vec<u8>,
        device_id: Option<u32>,
    ) -> Result<(), UsbmuxError> {
        self.expect_ok(&Request::SavePairRecord {
            udid: udid.to_string(),
            data,
            device_id,
        })
        .await
    }

    /// Deletes a record; returns false when there was none.
    pub async fn delete_pair_record(&mut self, udid: &str) -> Result<bool, UsbmuxError> {
        let request = Request::DeletePairRecord {
            udid: udid.to_string(),
        };
        let reply = self.request(&request).await?;
        match result_number(&reply) {
            Some(0) => Ok(true),
            Some(ERRNO_ENOENT) => Ok(false),
            Some(n) => Err(UsbmuxError::Refused {
                request: "DeletePairRecord",
                code: ResultCode::from_u32(n),
            }),
            None => Err(UsbmuxError::Malformed(
                "DeletePairRecord reply without Number".into(),
            )),
        }
    }

    /// Turns this connection into a stream to `port` on the phone.
    pub async fn connect(mut self, device_id: u32, port: u16) -> Result<S, UsbmuxError> {
        self.expect_ok(&Request::Connect { device_id, port })
            .await?;
        Ok(self.stream)
    }

    /// Turns this connection into an event stream.
    pub async fn listen(mut self) -> Result<EventStream<S>, UsbmuxError> {
        self.expect_ok(&Request::Listen).await?;
        Ok(EventStream {
            stream: self.stream,
        })
    }
}

/// errno ENOENT, which usbmuxd returns for a missing pair record.
pub const ERRNO_ENOENT: u32 = 2;

fn reply_value(packet: &Packet) -> Result<plist::Value, UsbmuxError> {
    match MessageType::from_u32(packet.header.message) {
        Some(MessageType::Plist) => packet.plist(),
        Some(MessageType::Result) => {
            let code = packet
                .payload
                .get(0..4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or_else(|| UsbmuxError::Malformed("short RESULT payload".into()))?;
            Ok(result_plist(code))
        }
        _ => Err(UsbmuxError::Malformed(format!(
            "unexpected reply message type {}",
            packet.header.message
        ))),
    }
}

/// The `Number` of a `Result` reply, if the reply is one.
pub fn result_number(value: &plist::Value) -> Option<u32> {
    let d = value.as_dictionary()?;
    if d.get("MessageType").and_then(|v| v.as_string()) != Some("Result") {
        return None;
    }
    d.get("Number")
        .and_then(|v| v.as_unsigned_integer())
        .and_then(|n| u32::try_from(n).ok())
}

/// Attach/detach/paired events after `Listen`.
#[derive(Debug)]
pub struct EventStream<S> {
    stream: S,
}

impl<S: AsyncRead + Unpin> EventStream<S> {
    /// Waits for the next event (no timeout: callers bound it if they need to).
    pub async fn next_event(&mut self) -> Result<Event, UsbmuxError> {
        let packet = read_packet(&mut self.stream).await?;
        Event::from_packet(&packet)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_device() -> DeviceInfo {
        DeviceInfo {
            device_id: 7,
            udid: "00008030-001A2B3C4D5E802E".into(),
            product_id: 0x12a8,
            location_id: 0x0003_0002,
            connection_speed: 480_000_000,
            connection_type: "USB".into(),
        }
    }

    #[test]
    fn header_is_sixteen_little_endian_bytes() {
        let h = Header {
            length: 0x0102_0304,
            version: 1,
            message: 8,
            tag: 0xAABB_CCDD,
        };
        let bytes = h.encode();
        assert_eq!(
            bytes,
            [4, 3, 2, 1, 1, 0, 0, 0, 8, 0, 0, 0, 0xDD, 0xCC, 0xBB, 0xAA]
        );
        assert_eq!(Header::decode(&bytes), h);
    }

    #[test]
    fn lockdown_port_is_sent_byte_swapped() {
        assert_eq!(swap_port(62078), 32498);
        let value = Request::Connect {
            device_id: 3,
            port: 62078,
        }
        .to_plist();
        let d = value.as_dictionary().expect("dict");
        assert_eq!(
            d.get("PortNumber").and_then(|v| v.as_unsigned_integer()),
            Some(32498)
        );
        assert_eq!(
            d.get("DeviceID").and_then(|v| v.as_unsigned_integer()),
            Some(3)
        );
        assert_eq!(
            Request::from_plist(&value).expect("parse"),
            Request::Connect {
                device_id: 3,
                port: 62078
            }
        );
    }

    #[test]
    fn plist_packet_length_counts_the_header() {
        let bytes = plist_packet_bytes(5, &Request::ListDevices.to_plist());
        let mut raw = [0u8; HEADER_LEN];
        raw.copy_from_slice(&bytes[..HEADER_LEN]);
        let header = Header::decode(&raw);
        assert_eq!(header.length as usize, bytes.len());
        assert_eq!(header.version, PROTOCOL_PLIST);
        assert_eq!(header.message, MessageType::Plist as u32);
        assert_eq!(header.tag, 5);
        assert!(bytes[HEADER_LEN..].starts_with(b"<?xml"));
    }

    #[test]
    fn requests_carry_client_identity_and_round_trip() {
        let requests = [
            Request::ListDevices,
            Request::Listen,
            Request::ReadBuid,
            Request::ReadPairRecord { udid: "abc".into() },
            Request::SavePairRecord {
                udid: "abc".into(),
                data: vec![1, 2, 3],
                device_id: Some(4),
            },
            Request::DeletePairRecord { udid: "abc".into() },
            Request::ListListeners,
        ];
        for request in requests {
            let value = request.to_plist();
            let d = value.as_dictionary().expect("dict");
            assert_eq!(
                d.get("kLibUSBMuxVersion")
                    .and_then(|v| v.as_unsigned_integer()),
                Some(3)
            );
            assert_eq!(
                d.get("ProgName").and_then(|v| v.as_string()),
                Some("station")
            );
            assert_eq!(Request::from_plist(&value).expect("parse"), request);
        }
    }

    #[test]
    fn attached_plist_round_trips() {
        let device = sample_device();
        let value = device.to_attached_plist();
        assert_eq!(
            DeviceInfo::from_attached_plist(&value).expect("parse"),
            device
        );
        let event = Event::from_packet(&Packet {
            header: Header {
                length: 0,
                version: 1,
                message: MessageType::Plist as u32,
                tag: 0,
            },
            payload: frame::encode_plist(&value, PlistFormat::Xml).expect("xml"),
        })
        .expect("event");
        assert_eq!(event, Event::Attached(device));
    }

    #[test]
    fn binary_device_record_is_268_bytes_and_round_trips() {
        let device = sample_device();
        let record = device.to_binary_record();
        assert_eq!(record.len(), BINARY_DEVICE_RECORD_LEN);
        assert_eq!(&record[0..4], &7u32.to_le_bytes());
        assert_eq!(&record[4..6], &0x12a8u16.to_le_bytes());
        assert_eq!(&record[264..268], &0x0003_0002u32.to_le_bytes());
        let parsed = DeviceInfo::from_binary_record(&record).expect("parse");
        assert_eq!(parsed.udid, device.udid);
        assert_eq!(parsed.location_id, device.location_id);
        assert!(DeviceInfo::from_binary_record(&record[..100]).is_err());
    }

    #[test]
    fn binary_events_decode() {
        let packet = |message: MessageType, payload: Vec<u8>| Packet {
            header: Header {
                length: (HEADER_LEN + payload.len()) as u32,
                version: 0,
                message: message as u32,
                tag: 0,
            },
            payload,
        };
        assert_eq!(
            Event::from_packet(&packet(
                MessageType::DeviceRemove,
                9u32.to_le_bytes().to_vec()
            ))
            .expect("rm"),
            Event::Detached { device_id: 9 }
        );
        assert_eq!(
            Event::from_packet(&packet(
                MessageType::DevicePaired,
                9u32.to_le_bytes().to_vec()
            ))
            .expect("pair"),
            Event::Paired { device_id: 9 }
        );
        assert!(Event::from_packet(&packet(MessageType::DeviceRemove, vec![1])).is_err());
    }

    #[tokio::test]
    async fn packet_cap_is_checked_before_allocating() {
        let header = Header {
            length: MAX_PACKET_LEN + 1,
            version: 1,
            message: 8,
            tag: 1,
        };
        let mut reader = std::io::Cursor::new(header.encode().to_vec());
        let err = read_packet(&mut reader).await.expect_err("cap");
        assert!(matches!(err, UsbmuxError::TooLarge { .. }));
        let short = Header {
            length: 3,
            version: 1,
            message: 8,
            tag: 1,
        };
        let mut reader = std::io::Cursor::new(short.encode().to_vec());
        assert!(matches!(
            read_packet(&mut reader).await,
            Err(UsbmuxError::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn an_announced_payload_that_never_comes_is_not_allocated_up_front() {
        let header = Header {
            length: MAX_PACKET_LEN,
            version: 1,
            message: 8,
            tag: 1,
        };
        let mut bytes = header.encode().to_vec();
        bytes.extend_from_slice(b"<?xml");
        let mut reader = crate::frame::tests::LargestAsk {
            data: std::io::Cursor::new(bytes),
            largest: 0,
        };
        let err = read_packet(&mut reader).await.expect_err("short");
        assert!(matches!(err, UsbmuxError::Closed), "{err:?}");
        assert!(
            reader.largest <= frame::BODY_CHUNK,
            "asked for {} bytes",
            reader.largest
        );
    }

    #[test]
    fn addresses_parse_like_libusbmuxd() {
        assert_eq!(
            Address::parse("UNIX:/tmp/x.sock").expect("unix"),
            Address::Unix("/tmp/x.sock".into())
        );
        assert_eq!(
            Address::parse("/tmp/x.sock").expect("bare"),
            Address::Unix("/tmp/x.sock".into())
        );
        assert_eq!(
            Address::parse("127.0.0.1:27015").expect("tcp"),
            Address::Tcp {
                host: "127.0.0.1".into(),
                port: 27015
            }
        );
        assert_eq!(
            Address::parse("[::1]:27015").expect("v6"),
            Address::Tcp {
                host: "::1".into(),
                port: 27015
            }
        );
        assert!(Address::parse("UNIX:").is_err());
        assert!(Address::parse("host:0").is_err());
        assert!(Address::parse("host:99999").is_err());
        assert_eq!(Address::parse("UNIX:/a").expect("a").to_string(), "UNIX:/a");
        assert_eq!(
            Address::parse("[::1]:5").expect("v6").to_string(),
            "[::1]:5"
        );
    }

    /// A scripted usbmuxd: answers each request of the client with a canned packet and
    /// records what the client wrote.
    async fn scripted(
        replies: Vec<Vec<u8>>,
    ) -> (
        UsbmuxClient<tokio::io::DuplexStream>,
        tokio::task::JoinHandle<Vec<Packet>>,
    ) {
        let (client_side, mut server_side) = tokio::io::duplex(1 << 20);
        let server = tokio::spawn(async move {
            let mut seen = Vec::new();
            for reply in replies {
                let Ok(packet) = read_packet(&mut server_side).await else {
                    break;
                };
                let tag = packet.header.tag;
                seen.push(packet);
                let mut reply = reply;
                reply[12..16].copy_from_slice(&tag.to_le_bytes());
                if server_side.write_all(&reply).await.is_err() {
                    break;
                }
            }
            seen
        });
        (
            UsbmuxClient::new(client_side).with_timeout(Duration::from_secs(5)),
            server,
        )
    }

    #[tokio::test]
    async fn list_devices_parses_the_device_list() {
        let reply = dict([(
            "DeviceList",
            plist::Value::Array(vec![sample_device().to_attached_plist()]),
        )]);
        let (mut client, server) = scripted(vec![plist_packet_bytes(0, &reply)]).await;
        let devices = client.list_devices().await.expect("list");
        assert_eq!(devices, vec![sample_device()]);
        let seen = server.await.expect("server");
        let request = seen[0].plist().expect("plist");
        assert_eq!(
            Request::from_plist(&request).expect("req"),
            Request::ListDevices
        );
        assert_eq!(seen[0].header.version, PROTOCOL_PLIST);
        assert_eq!(seen[0].header.message, MessageType::Plist as u32);
    }

    #[tokio::test]
    async fn missing_pair_record_is_none_and_refusals_are_named() {
        let (mut client, _server) = scripted(vec![
            plist_packet_bytes(0, &result_plist(ERRNO_ENOENT)),
            plist_packet_bytes(0, &result_plist(22)),
        ])
        .await;
        assert_eq!(client.read_pair_record("X").await.expect("read"), None);
        let err = client.read_pair_record("X").await.expect_err("einval");
        assert!(matches!(
            err,
            UsbmuxError::Refused {
                request: "ReadPairRecord",
                code: ResultCode::Other(22)
            }
        ));
    }

    #[tokio::test]
    async fn binary_result_reply_is_understood() {
        let reply = packet_bytes(
            PROTOCOL_BINARY,
            MessageType::Result as u32,
            0,
            &3u32.to_le_bytes(),
        );
        let (client, _server) = scripted(vec![reply]).await;
        let err = client.connect(1, 62078).await.expect_err("refused");
        assert!(matches!(
            err,
            UsbmuxError::Refused {
                request: "Connect",
                code: ResultCode::ConnectionRefused
            }
        ));
    }

    #[tokio::test]
    async fn connect_hands_back_the_raw_stream() {
        let (client_side, mut server_side) = tokio::io::duplex(1 << 16);
        let server = tokio::spawn(async move {
            let packet = read_packet(&mut server_side).await.expect("request");
            let mut reply = plist_packet_bytes(0, &result_plist(0));
            reply[12..16].copy_from_slice(&packet.header.tag.to_le_bytes());
            server_side.write_all(&reply).await.expect("reply");
            let mut raw = [0u8; 3];
            server_side.read_exact(&mut raw).await.expect("raw bytes");
            (packet, raw)
        });
        let client = UsbmuxClient::new(client_side).with_timeout(Duration::from_secs(5));
        let mut stream = client.connect(2, 62078).await.expect("connect");
        stream.write_all(b"raw").await.expect("write");
        let (packet, raw) = server.await.expect("server");
        let request = Request::from_plist(&packet.plist().expect("plist")).expect("req");
        assert_eq!(
            request,
            Request::Connect {
                device_id: 2,
                port: 62078
            }
        );
        assert_eq!(&raw, b"raw");
    }

    #[tokio::test]
    async fn a_full_listen_backlog_is_waited_out_not_taken_for_a_gone_daemon() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("usbmuxd");
        // A daemon that does not accept for now, with the smallest backlog.
        let socket = tokio::net::UnixSocket::new_stream().expect("socket");
        socket.bind(&path).expect("bind");
        let listener = socket.listen(0).expect("listen");
        let mut queued = Vec::new();
        let full = loop {
            match UnixStream::connect(&path).await {
                Ok(stream) => queued.push(stream),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break true,
                Err(e) => panic!("connect: {e}"),
            }
            if queued.len() > 64 {
                break false;
            }
        };
        assert!(full, "the backlog never filled");
        let address = Address::Unix(path.clone());
        let connecting =
            tokio::spawn(async move { connect_address(&address, Duration::from_secs(10)).await });
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(!connecting.is_finished(), "gave up on a busy daemon");
        // The daemon takes the waiting connections: ours gets in.
        for _ in 0..=queued.len() {
            let (_conn, _) = tokio::time::timeout(Duration::from_secs(5), listener.accept())
                .await
                .expect("accept in time")
                .expect("accept");
        }
        let stream = tokio::time::timeout(Duration::from_secs(5), connecting)
            .await
            .expect("connected in time")
            .expect("join");
        assert!(matches!(stream, Ok(UsbmuxStream::Unix(_))), "{stream:?}");
    }

    #[tokio::test]
    async fn a_socket_nobody_listens_on_is_unreachable_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("usbmuxd");
        drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
        // Refused, not retried until the time limit (which would end as TimedOut).
        let result = connect_address(&Address::Unix(path), Duration::from_secs(10)).await;
        assert!(
            matches!(&result, Err(UsbmuxError::Unreachable { source, .. }) if source.kind() == std::io::ErrorKind::ConnectionRefused),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn silent_usbmuxd_times_out() {
        let (client_side, _server_side) = tokio::io::duplex(1024);
        let mut client = UsbmuxClient::new(client_side).with_timeout(Duration::from_millis(50));
        assert!(matches!(
            client.read_buid().await,
            Err(UsbmuxError::Timeout(_))
        ));
    }
}
