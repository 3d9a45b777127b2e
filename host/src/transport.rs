//! How the station reaches the phones: through the usbmuxd daemon, or straight over USB
//! (`[station] transport`, `--transport`). Both give the same `DeviceInfo`s, events and
//! streams, so everything above (lockdown, pairing, activation, the line) is one code path.

use std::collections::VecDeque;
use std::time::Duration;

use station_protocol::udid::normalise_udid;
use station_protocol::usb_mux::driver::DriverError;
use station_protocol::usbmux::{
    DeviceInfo, Event, EventStream, ResultCode, UsbmuxError, UsbmuxStream,
};
use tokio::sync::broadcast;

use crate::error::{StationError, Waiting};
use crate::usb::{UsbError, UsbTransport};
use crate::usbmuxd::Usbmuxd;

#[derive(Debug, Clone)]
pub enum Transport {
    Usbmuxd(Usbmuxd),
    Usb(UsbTransport),
}

/// Attach and detach events of either transport.
pub enum TransportEvents {
    Usbmuxd(EventStream<UsbmuxStream>),
    Usb {
        /// The phones attached when listening started, reported first as usbmuxd does.
        initial: VecDeque<Event>,
        events: broadcast::Receiver<Event>,
    },
}

impl TransportEvents {
    /// The next event (no timeout: callers bound it if they need to).
    pub async fn next_event(&mut self) -> Result<Event, StationError> {
        match self {
            TransportEvents::Usbmuxd(stream) => Ok(stream.next_event().await?),
            TransportEvents::Usb { initial, events } => {
                if let Some(event) = initial.pop_front() {
                    return Ok(event);
                }
                events.recv().await.map_err(|e| {
                    // A listener that fell behind lost events: like a closed usbmuxd
                    // stream, the line reconnects and lists the phones afresh.
                    tracing::warn!(error = %e, "USB event listener fell behind");
                    StationError::Usbmuxd(UsbmuxError::Closed)
                })
            }
        }
    }
}

impl Transport {
    pub fn timeout(&self) -> Duration {
        match self {
            Transport::Usbmuxd(u) => u.timeout(),
            Transport::Usb(u) => u.timeout(),
        }
    }

    pub async fn list_devices(&self) -> Result<Vec<DeviceInfo>, StationError> {
        match self {
            Transport::Usbmuxd(u) => u.list_devices().await,
            Transport::Usb(u) => Ok(u.list_devices().await?),
        }
    }

    /// Who knows the phones' port paths without searching sysfs: the `usb` transport
    /// opened them at one. usbmuxd does not say, so its phones are found by serial.
    pub fn known_ports(&self) -> Option<std::sync::Arc<dyn crate::slots::KnownPorts>> {
        match self {
            Transport::Usbmuxd(_) => None,
            Transport::Usb(u) => Some(std::sync::Arc::new(u.phones().clone())),
        }
    }

    /// Whether the phone's link is gone (USB: its mux link failed or it was detached), so a
    /// failure on it is an unplug, not the phone's fault. usbmuxd reports an unplug as the
    /// connection's end, which already reads as one.
    pub fn link_down(&self, device: &DeviceInfo) -> bool {
        match self {
            Transport::Usbmuxd(_) => false,
            Transport::Usb(u) => u.phones().link_down(device),
        }
    }

    /// The attached phones, the usbmuxd error kept typed so the line tells "the transport is
    /// gone" from other failures. USB phones never go away all at once that way.
    pub async fn probe(&self) -> Result<Vec<DeviceInfo>, UsbmuxError> {
        match self {
            Transport::Usbmuxd(u) => u.probe().await,
            Transport::Usb(u) => Ok(u.phones().list()),
        }
    }

    /// The attached phone with this UDID; dashes are ignored because some usbmuxd builds
    /// report the modern form without its dash.
    pub async fn find(&self, udid: &str) -> Result<DeviceInfo, StationError> {
        let wanted = normalise_udid(udid);
        self.list_devices()
            .await?
            .into_iter()
            .find(|d| normalise_udid(&d.udid) == wanted)
            .ok_or_else(|| StationError::device_not_found(udid))
    }

    /// Attach/detach events; the first ones repeat the phones attached now.
    pub async fn listen(&self) -> Result<TransportEvents, StationError> {
        match self {
            Transport::Usbmuxd(u) => Ok(TransportEvents::Usbmuxd(u.listen().await?)),
            Transport::Usb(u) => {
                let (now, events) = u.subscribe().await?;
                Ok(TransportEvents::Usb {
                    initial: now.into_iter().map(Event::Attached).collect(),
                    events,
                })
            }
        }
    }

    /// A raw stream to `port` on the phone.
    pub async fn connect(
        &self,
        device: &DeviceInfo,
        port: u16,
    ) -> Result<UsbmuxStream, StationError> {
        match self {
            Transport::Usbmuxd(u) => u.connect(device, port).await,
            Transport::Usb(u) => u
                .connect(device, port)
                .await
                .map_err(|e| usb_connect_error(&device.udid, e)),
        }
    }
}

/// A failed mux connection as the same station error usbmuxd's answer would give.
fn usb_connect_error(udid: &str, error: UsbError) -> StationError {
    match error {
        UsbError::Mux { error, location } => match error {
            DriverError::Refused { .. } => StationError::Usbmuxd(UsbmuxError::Refused {
                request: "Connect",
                code: ResultCode::ConnectionRefused,
            }),
            DriverError::Timeout { after, .. } => StationError::DeviceTimeout {
                udid: udid.to_string(),
                waiting: Waiting::Answer,
                after,
            },
            DriverError::Transport { .. } | DriverError::Shutdown => {
                StationError::DeviceDisconnected {
                    udid: udid.to_string(),
                }
            }
            error @ DriverError::Protocol(_) => {
                StationError::Usb(UsbError::Mux { location, error })
            }
        },
        other => StationError::Usb(other),
    }
}
