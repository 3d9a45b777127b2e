//! The mux that usbmuxd speaks to a phone over USB bulk endpoints (docs/protocol.md §2),
//! both ends, sans-IO: [`Mux`] consumes completed bulk-IN transfers and hands out the bulk-OUT
//! transfers to send and the events they caused. No clock, no sockets, no tokio.
//!
//! - [`wire`]: headers, bodies, size limits, the zero-length-packet rule.
//! - [`Mux`]: bring-up (VERSION, SETUP) and the TCP emulation, as the host
//!   ([`Mux::host`], the station: opens connections to ports on the phone) or as the device
//!   ([`Mux::device`], the simulator: accepts connections).
//! - [`driver`]: the same over tokio, each connection an `AsyncRead + AsyncWrite` stream, on
//!   any pair of bulk endpoints ([`driver::BulkIn`], [`driver::BulkOut`]).

pub mod driver;
mod mux;
pub mod wire;

pub use mux::{ConnId, Mux, MuxConfig, MuxEvent, Recv, Role};
pub use wire::MuxVersion;

/// What can be wrong with mux input or with a request to the state machine. Every variant
/// is about one packet or one call; [`MuxEvent::Failed`] says when the link as a whole is
/// unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsbMuxError {
    #[error("truncated {what}: {needed} bytes needed, {got} present")]
    Truncated {
        what: &'static str,
        needed: usize,
        got: usize,
    },
    #[error("mux packet length {0} is outside the header size..65536 range")]
    BadLength(u32),
    #[error("mux packet announces {announced} bytes but {received} arrived")]
    LengthMismatch { announced: u32, received: usize },
    #[error("mux v2 header without the 0xFEEDFACE magic (found {0:#010x})")]
    BadMagic(u32),
    #[error("unknown mux protocol {0}")]
    UnknownProtocol(u32),
    #[error("TCP header with an impossible data offset byte {0:#04x}")]
    BadTcpOffset(u8),
    #[error("the device speaks mux version {major}.{minor}; only 1 and 2 are known")]
    UnsupportedVersion { major: u32, minor: u32 },
    #[error("{what} arrived before the mux was up")]
    NotReady { what: &'static str },
    #[error("unexpected {what} in the mux state {state}")]
    Unexpected {
        what: &'static str,
        state: &'static str,
    },
    #[error("every source port is in use")]
    NoFreePort,
    #[error("no mux connection {0}")]
    UnknownConnection(ConnId),
    #[error("mux connection {0} is closed")]
    ConnectionClosed(ConnId),
    #[error("mux connection {id} received more than {max} unread bytes")]
    ReceiveOverflow { id: ConnId, max: usize },
    #[error("mux connection {id} got TCP flags {flags:#04x} where only ACK is allowed")]
    BadFlags { id: ConnId, flags: u8 },
    #[error("the mux link failed earlier")]
    LinkFailed,
}

#[cfg(test)]
mod tests;
