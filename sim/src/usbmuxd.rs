//! The usbmuxd side of the bench: one client connection of the unix socket, as
//! libimobiledevice's usbmuxd (`src/client.c`) handles it.
//!
//! A connection starts in command state. `Listen` turns it into an event stream and
//! `Connect` (result 0) into a raw stream to a port of a phone; after either, usbmuxd
//! accepts no further commands. Commands are read whole (length first, capped at 0x10000
//! bytes like usbmuxd) before they are parsed. Replies use the protocol of the request:
//! plist (v1) once a client sent a plist message, binary (v0) otherwise.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use plist::{Dictionary, Value};
use station_protocol::frame::dict;
use station_protocol::lockdown::LOCKDOWN_PORT;
use station_protocol::usbmux::{
    self, DeviceInfo, Event, MessageType, Packet, UsbmuxError, HEADER_LEN, MAX_COMMAND_LEN,
    PROTOCOL_BINARY, PROTOCOL_PLIST,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::broadcast;
use tracing::Instrument;

use crate::bench::Shared;
use crate::state::EINVAL;
use crate::stream::PhoneStream;

/// usbmuxd result codes (`usbmuxd-proto.h`).
const RESULT_OK: u32 = 0;
const RESULT_BADCOMMAND: u32 = 1;
const RESULT_BADDEV: u32 = 2;
const RESULT_CONNREFUSED: u32 = 3;
const RESULT_BADVERSION: u32 = 6;

/// Identity a client sends with each plist message (kept for `ListListeners`).
#[derive(Debug, Clone, Default)]
pub(crate) struct ClientInfo {
    pub prog_name: Option<String>,
    pub bundle_id: Option<String>,
    pub lib_version: u64,
}

/// Clients currently in Listen state, by client number.
#[derive(Debug, Default)]
pub(crate) struct Listeners {
    inner: Mutex<std::collections::BTreeMap<u64, ClientInfo>>,
}

impl Listeners {
    fn add(&self, number: u64, info: ClientInfo) {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(number, info);
    }

    fn remove(&self, number: u64) {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&number);
    }

    fn list(&self) -> Vec<(u64, ClientInfo)> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(n, i)| (*n, i.clone()))
            .collect()
    }
}

/// Removes a listener from the registry however its task ends.
struct ListenerGuard<'a> {
    listeners: &'a Listeners,
    number: u64,
}

impl Drop for ListenerGuard<'_> {
    fn drop(&mut self) {
        self.listeners.remove(self.number);
    }
}

static CLIENT_NUMBER: AtomicU64 = AtomicU64::new(1);

enum Next {
    Command,
    Listen,
    Connect { device_id: u32, port: u16 },
    Close,
}

struct Client {
    shared: Arc<Shared>,
    stream: UnixStream,
    number: u64,
    /// Protocol of replies: 1 once the client sent a plist message.
    proto: u32,
    info: ClientInfo,
}

/// Serves one client of the usbmuxd socket.
pub(crate) async fn serve_client(shared: Arc<Shared>, stream: UnixStream) {
    let number = CLIENT_NUMBER.fetch_add(1, Ordering::Relaxed);
    let span = tracing::debug_span!("usbmuxd-client", client = number);
    async move {
        let client = Client {
            shared,
            stream,
            number,
            proto: PROTOCOL_BINARY,
            info: ClientInfo::default(),
        };
        if let Err(e) = client.run().await {
            tracing::debug!(error = %e, "client connection ended");
        }
    }
    .instrument(span)
    .await
}

impl Client {
    async fn run(mut self) -> Result<(), UsbmuxError> {
        loop {
            let packet = match usbmux::read_packet_capped(&mut self.stream, MAX_COMMAND_LEN).await {
                Ok(p) => p,
                Err(UsbmuxError::Closed) => return Ok(()),
                // Too large or shorter than a header: usbmuxd drops the client.
                Err(e) => return Err(e),
            };
            match self.command(packet).await? {
                Next::Command => {}
                Next::Close => return Ok(()),
                Next::Listen => return self.listen().await,
                Next::Connect { device_id, port } => return self.connect(device_id, port).await,
            }
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), UsbmuxError> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await?;
        Ok(())
    }

    async fn result(&mut self, tag: u32, code: u32) -> Result<(), UsbmuxError> {
        let bytes = result_bytes(self.proto, tag, code);
        self.write(&bytes).await
    }

    async fn plist_reply(&mut self, tag: u32, value: Value) -> Result<(), UsbmuxError> {
        self.write(&usbmux::plist_packet_bytes(tag, &value)).await
    }

    async fn command(&mut self, packet: Packet) -> Result<Next, UsbmuxError> {
        let header = packet.header;
        if header.version != PROTOCOL_BINARY && header.version != PROTOCOL_PLIST {
            tracing::debug!(version = header.version, "unsupported protocol version");
            self.result(header.tag, RESULT_BADVERSION).await?;
            return Ok(Next::Command);
        }
        match MessageType::from_u32(header.message) {
            Some(MessageType::Plist) => {
                self.proto = PROTOCOL_PLIST;
                self.plist_command(header.tag, &packet).await
            }
            Some(MessageType::Listen) => {
                self.result(header.tag, RESULT_OK).await?;
                Ok(Next::Listen)
            }
            Some(MessageType::Connect) => {
                // Binary CONNECT: u32 device id (LE), u16 port in network order, u16 reserved.
                let p = &packet.payload;
                if p.len() < 6 {
                    self.result(header.tag, RESULT_BADCOMMAND).await?;
                    return Ok(Next::Command);
                }
                let device_id = u32::from_le_bytes([p[0], p[1], p[2], p[3]]);
                let port = u16::from_be_bytes([p[4], p[5]]);
                self.start_connect(header.tag, device_id, port).await
            }
            _ => {
                tracing::debug!(message = header.message, "invalid command");
                self.result(header.tag, RESULT_BADCOMMAND).await?;
                Ok(Next::Command)
            }
        }
    }

    async fn plist_command(&mut self, tag: u32, packet: &Packet) -> Result<Next, UsbmuxError> {
        let Ok(Value::Dictionary(d)) = packet.plist() else {
            // usbmuxd cannot answer a message it cannot parse; closing beats a hung client.
            tracing::debug!("unparseable plist command");
            return Ok(Next::Close);
        };
        let Some(kind) = d
            .get("MessageType")
            .and_then(Value::as_string)
            .map(str::to_string)
        else {
            tracing::debug!("plist command without MessageType");
            return Ok(Next::Close);
        };
        self.update_info(&d);
        tracing::debug!(message = %kind, tag, "command");
        let record_id = d
            .get("PairRecordID")
            .and_then(Value::as_string)
            .map(str::to_string);
        match kind.as_str() {
            "Listen" => {
                self.result(tag, RESULT_OK).await?;
                Ok(Next::Listen)
            }
            "Connect" => {
                let Some(device_id) = d.get("DeviceID").and_then(Value::as_unsigned_integer) else {
                    self.result(tag, RESULT_BADDEV).await?;
                    return Ok(Next::Command);
                };
                let Some(wire_port) = d.get("PortNumber").and_then(Value::as_unsigned_integer)
                else {
                    self.result(tag, RESULT_BADCOMMAND).await?;
                    return Ok(Next::Command);
                };
                // The port arrives byte-swapped (htons stored as a plain integer).
                let port = usbmux::swap_port(wire_port as u16);
                let device_id = u32::try_from(device_id).unwrap_or(0);
                self.start_connect(tag, device_id, port).await
            }
            "ListDevices" => {
                let list: Vec<Value> = self
                    .shared
                    .hub
                    .list()
                    .iter()
                    .map(DeviceInfo::to_attached_plist)
                    .collect();
                self.plist_reply(tag, dict([("DeviceList", Value::Array(list))]))
                    .await?;
                Ok(Next::Command)
            }
            "ListListeners" => {
                let list = self
                    .shared
                    .listeners
                    .list()
                    .into_iter()
                    .map(|(n, info)| listener_plist(n, &info))
                    .collect();
                self.plist_reply(tag, dict([("ListenerList", Value::Array(list))]))
                    .await?;
                Ok(Next::Command)
            }
            "ReadBUID" => {
                let buid = self.shared.system_buid.clone();
                self.plist_reply(tag, dict([("BUID", Value::String(buid))]))
                    .await?;
                Ok(Next::Command)
            }
            "ReadPairRecord" => {
                let Some(id) = record_id else {
                    self.result(tag, EINVAL).await?;
                    return Ok(Next::Command);
                };
                match self.shared.state.read_pair_record(&id).await {
                    Ok(data) => {
                        self.plist_reply(tag, dict([("PairRecordData", Value::Data(data))]))
                            .await?
                    }
                    Err(code) => self.result(tag, code).await?,
                }
                Ok(Next::Command)
            }
            "SavePairRecord" => {
                let data = d.get("PairRecordData").and_then(Value::as_data);
                let (Some(id), Some(data)) = (record_id, data) else {
                    self.result(tag, EINVAL).await?;
                    return Ok(Next::Command);
                };
                match self.shared.state.save_pair_record(&id, data).await {
                    Ok(()) => {
                        let device_id = d
                            .get("DeviceID")
                            .and_then(Value::as_unsigned_integer)
                            .and_then(|n| u32::try_from(n).ok())
                            .unwrap_or(0);
                        if device_id > 0 && !self.shared.hub.paired(&id, device_id) {
                            tracing::debug!(device_id, record = %id, "SavePairRecord: device not connected");
                        }
                        self.result(tag, RESULT_OK).await?;
                    }
                    Err(code) => self.result(tag, code).await?,
                }
                Ok(Next::Command)
            }
            "DeletePairRecord" => {
                let Some(id) = record_id else {
                    self.result(tag, EINVAL).await?;
                    return Ok(Next::Command);
                };
                let code = match self.shared.state.delete_pair_record(&id).await {
                    Ok(()) => RESULT_OK,
                    Err(code) => code,
                };
                self.result(tag, code).await?;
                Ok(Next::Command)
            }
            other => {
                tracing::debug!(message = other, "unknown command");
                self.result(tag, RESULT_BADCOMMAND).await?;
                Ok(Next::Command)
            }
        }
    }

    fn update_info(&mut self, d: &Dictionary) {
        let s = |k: &str| d.get(k).and_then(Value::as_string).map(str::to_string);
        self.info = ClientInfo {
            prog_name: s("ProgName"),
            bundle_id: s("BundleID"),
            lib_version: d
                .get("kLibUSBMuxVersion")
                .and_then(Value::as_unsigned_integer)
                .unwrap_or(0),
        };
    }

    /// Answers a Connect: BADDEV for an unknown or unplugged phone, CONNREFUSED for a
    /// port nothing listens on (the phone answers the SYN with RST), else OK.
    async fn start_connect(
        &mut self,
        tag: u32,
        device_id: u32,
        port: u16,
    ) -> Result<Next, UsbmuxError> {
        let Some((phone, _)) = self.shared.hub.connect(device_id) else {
            tracing::debug!(device_id, "Connect to a device that is not attached");
            self.result(tag, RESULT_BADDEV).await?;
            return Ok(Next::Command);
        };
        let open = port == LOCKDOWN_PORT || phone.has_service_port(port);
        if !open {
            tracing::debug!(device_id, port, "Connect to a closed port");
            self.result(tag, RESULT_CONNREFUSED).await?;
            return Ok(Next::Command);
        }
        self.result(tag, RESULT_OK).await?;
        Ok(Next::Connect { device_id, port })
    }

    /// The socket is now a raw stream to `port` on the phone.
    async fn connect(self, device_id: u32, port: u16) -> Result<(), UsbmuxError> {
        let Some((phone, unplug)) = self.shared.hub.connect(device_id) else {
            // Unplugged between the result and now: like a cable pull, just close.
            return Ok(());
        };
        // Counted while it is open: `leave_when_idle_ms` waits for the host to let go.
        let _in_use = phone.host_connection();
        let lockdown = self.shared.lockdown.clone();
        if port == LOCKDOWN_PORT {
            crate::lockdownd::serve(phone, PhoneStream::Usbmuxd(self.stream), lockdown, unplug)
                .await;
        } else if let Some(pending) = phone.take_service_port(port) {
            let timeout = lockdown.idle_timeout;
            tokio::select! {
                _ = crate::services::run(phone, pending, PhoneStream::Usbmuxd(self.stream), timeout) => {}
                _ = crate::lockdownd::unplugged(unplug) => {}
            }
        }
        Ok(())
    }

    /// Event stream: Result 0 was sent; now one Attached per phone, then live events.
    async fn listen(mut self) -> Result<(), UsbmuxError> {
        let shared = self.shared.clone();
        let (devices, mut events) = shared.hub.subscribe();
        shared.listeners.add(self.number, self.info.clone());
        let _guard = ListenerGuard {
            listeners: &shared.listeners,
            number: self.number,
        };
        for info in devices {
            let bytes = self.event_bytes(&Event::Attached(info));
            self.write(&bytes).await?;
        }
        let proto = self.proto;
        let (mut reader, mut writer) = self.stream.split();
        let mut pending = Vec::new();
        let mut buf = [0u8; 512];
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Ok(event) => {
                        writer.write_all(&event_bytes(proto, &event)).await?;
                        writer.flush().await?;
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "listener too slow; dropping it");
                        return Ok(());
                    }
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                },
                read = reader.read(&mut buf) => {
                    let n = read?;
                    if n == 0 {
                        return Ok(());
                    }
                    // A listening socket takes no more commands: usbmuxd answers
                    // BADCOMMAND and closes it.
                    pending.extend_from_slice(&buf[..n]);
                    if pending.len() >= HEADER_LEN {
                        let tag = u32::from_le_bytes([pending[12], pending[13], pending[14], pending[15]]);
                        let bytes = result_bytes(proto, tag, RESULT_BADCOMMAND);
                        writer.write_all(&bytes).await?;
                        writer.flush().await?;
                        return Ok(());
                    }
                }
            }
        }
    }

    fn event_bytes(&self, event: &Event) -> Vec<u8> {
        event_bytes(self.proto, event)
    }
}

fn result_bytes(proto: u32, tag: u32, code: u32) -> Vec<u8> {
    if proto == PROTOCOL_PLIST {
        usbmux::plist_packet_bytes(tag, &usbmux::result_plist(code))
    } else {
        usbmux::packet_bytes(
            PROTOCOL_BINARY,
            MessageType::Result as u32,
            tag,
            &code.to_le_bytes(),
        )
    }
}

/// An event as usbmuxd sends it to a listener (tag 0), in the listener's protocol.
fn event_bytes(proto: u32, event: &Event) -> Vec<u8> {
    if proto == PROTOCOL_PLIST {
        return usbmux::plist_packet_bytes(0, &event.to_plist());
    }
    let (message, payload) = match event {
        Event::Attached(info) => (MessageType::DeviceAdd, info.to_binary_record()),
        Event::Detached { device_id } => {
            (MessageType::DeviceRemove, device_id.to_le_bytes().to_vec())
        }
        Event::Paired { device_id } => {
            (MessageType::DevicePaired, device_id.to_le_bytes().to_vec())
        }
    };
    usbmux::packet_bytes(PROTOCOL_BINARY, message as u32, 0, &payload)
}

fn listener_plist(number: u64, info: &ClientInfo) -> Value {
    let prog = info
        .prog_name
        .clone()
        .unwrap_or_else(|| "unknown".to_string());
    let mut d = Dictionary::new();
    d.insert("Blacklisted".into(), Value::Boolean(false));
    if let Some(bundle) = &info.bundle_id {
        d.insert("BundleID".into(), bundle.clone().into());
    }
    d.insert("ConnType".into(), Value::Integer(0u64.into()));
    d.insert("ID String".into(), format!("{number}-{prog}").into());
    d.insert("ProgName".into(), prog.into());
    d.insert(
        "kLibUSBMuxVersion".into(),
        Value::Integer(info.lib_version.into()),
    );
    Value::Dictionary(d)
}
