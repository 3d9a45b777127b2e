//! A virtual phone's end of the USB mux (docs/protocol.md §2.5–2.8): the device side of
//! [`station_protocol::usb_mux::driver`] on a pair of bulk endpoints, each connection routed
//! as the usbmuxd socket routes it (`usbmuxd::Client::connect`): port 62078 to lockdownd, a
//! port opened by `StartService` to its service, anything else refused with a reset, as a
//! phone does.
//!
//! The endpoints come from whoever presents the phone on a bus: FunctionFS for the gadget,
//! [`station_protocol::usb_mux::driver::memory::pipe`] in tests.

use std::sync::Arc;

use station_protocol::lockdown::LOCKDOWN_PORT;
use station_protocol::usb_mux::driver::{
    BulkIn, BulkOut, DriverConfig, DriverError, IncomingConnection, MuxDriver,
};
use tracing::Instrument;

use crate::bench::Shared;
use crate::error::SimError;
use crate::phone::Phone;
use crate::stream::PhoneStream;

/// How one phone's USB mux session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsbDeviceEnd {
    /// The bench unplugged the phone (its plug schedule, or [`crate::Bench::unplug`]).
    Unplugged,
    /// The link went down: the host went away, the endpoints failed, or bad bring-up.
    LinkDown(DriverError),
}

/// One plugged phone, ready to be served on bulk endpoints ([`crate::Bench::usb_device`]).
pub struct UsbDevice {
    pub(crate) shared: Arc<Shared>,
    pub(crate) phone: Arc<Phone>,
    pub(crate) unplug: tokio::sync::watch::Receiver<bool>,
    pub(crate) config: DriverConfig,
}

impl std::fmt::Debug for UsbDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsbDevice")
            .field("udid", &self.phone.udid())
            .finish()
    }
}

impl UsbDevice {
    pub fn udid(&self) -> &str {
        self.phone.udid()
    }

    /// Driver settings (bulk-OUT timeout, mux version answered).
    pub fn with_config(mut self, config: DriverConfig) -> Self {
        self.config = config;
        self
    }

    /// Serves the mux until the phone is unplugged or the link goes down. Connections
    /// already open end with it.
    pub async fn serve<I: BulkIn, O: BulkOut>(self, bulk_in: I, bulk_out: O) -> UsbDeviceEnd {
        let span = tracing::info_span!("usb_device", udid = %self.phone.udid());
        async move {
            let bulk_out = SilentOnceUnplugged {
                inner: bulk_out,
                unplug: self.unplug.clone(),
            };
            let (handle, mut incoming) = MuxDriver::device(bulk_in, bulk_out, self.config.clone());
            let gone = crate::lockdownd::unplugged(self.unplug.clone());
            tokio::pin!(gone);
            let end = loop {
                tokio::select! {
                    // An unplug also breaks the link (nothing more is sent): it is the cause.
                    biased;
                    _ = &mut gone => break UsbDeviceEnd::Unplugged,
                    conn = incoming.next() => match conn {
                        Some(conn) => self.route(conn),
                        None => break UsbDeviceEnd::LinkDown(
                            handle.failure().unwrap_or(DriverError::Shutdown),
                        ),
                    },
                }
            };
            tracing::info!(?end, "USB mux session ended");
            handle.shutdown();
            end
        }
        .instrument(span)
        .await
    }

    fn route(&self, conn: IncomingConnection) {
        let port = conn.port();
        let phone = self.phone.clone();
        let unplug = self.unplug.clone();
        let lockdown = self.shared.lockdown.clone();
        if port == LOCKDOWN_PORT {
            let Ok(stream) = conn.accept() else { return };
            // Counted while it is open: `leave_when_idle_ms` waits for the host to let go.
            let in_use = phone.host_connection();
            tokio::spawn(async move {
                let _in_use = in_use;
                crate::lockdownd::serve(phone, PhoneStream::Usb(stream), lockdown, unplug).await;
            });
        } else if let Some(pending) = phone.take_service_port(port) {
            let Ok(stream) = conn.accept() else { return };
            let timeout = lockdown.idle_timeout;
            let in_use = phone.host_connection();
            tokio::spawn(async move {
                let _in_use = in_use;
                tokio::select! {
                    _ = crate::services::run(phone, pending, PhoneStream::Usb(stream), timeout) => {}
                    _ = crate::lockdownd::unplugged(unplug) => {}
                }
            });
        } else {
            tracing::debug!(port, "no service on this port; refused");
            conn.refuse();
        }
    }
}

/// The phone's bulk-IN side (what the host reads). A phone pulled out sends nothing more:
/// no closing packet for its open connections reaches the host, which learns of the unplug
/// from the USB link alone, as with a real phone. Without this, the connections' own
/// endings (they watch the same unplug) could reach the host before the gadget is unbound
/// and read as the phone closing them.
struct SilentOnceUnplugged<O> {
    inner: O,
    unplug: tokio::sync::watch::Receiver<bool>,
}

impl<O: BulkOut> BulkOut for SilentOnceUnplugged<O> {
    async fn write_transfer(&mut self, data: Vec<u8>) -> std::io::Result<()> {
        if *self.unplug.borrow() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "the phone is unplugged",
            ));
        }
        self.inner.write_transfer(data).await
    }

    fn max_packet_size(&self) -> usize {
        self.inner.max_packet_size()
    }
}

impl crate::Bench {
    /// `udid`'s device side of the USB mux, to serve on bulk endpoints
    /// ([`UsbDevice::serve`]). The phone must be plugged in; after an unplug and replug,
    /// ask again.
    pub fn usb_device(&self, udid: &str) -> Result<UsbDevice, SimError> {
        UsbDevice::plugged(self.shared().clone(), udid)
    }
}

impl UsbDevice {
    /// [`crate::Bench::usb_device`] for those that keep the bench's shared state (the
    /// gadget bench's per-interface tasks).
    pub(crate) fn plugged(shared: Arc<Shared>, udid: &str) -> Result<UsbDevice, SimError> {
        let unknown = || SimError::UnknownDevice {
            udid: udid.to_string(),
        };
        let device_id = shared.hub.device_id(udid).ok_or_else(unknown)?;
        let (phone, unplug) = shared.hub.connect(device_id).ok_or_else(unknown)?;
        Ok(UsbDevice {
            shared,
            phone,
            unplug,
            config: DriverConfig::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what reaches the host.
    struct Recorded(Arc<std::sync::Mutex<Vec<Vec<u8>>>>);

    impl BulkOut for Recorded {
        async fn write_transfer(&mut self, data: Vec<u8>) -> std::io::Result<()> {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).push(data);
            Ok(())
        }

        fn max_packet_size(&self) -> usize {
            512
        }
    }

    #[tokio::test]
    async fn a_pulled_out_phone_sends_nothing_more() {
        let sent = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (unplug, watching) = tokio::sync::watch::channel(false);
        let mut out = SilentOnceUnplugged {
            inner: Recorded(sent.clone()),
            unplug: watching,
        };
        out.write_transfer(b"before".to_vec())
            .await
            .expect("plugged in");
        unplug.send_replace(true);
        let refused = out.write_transfer(b"after".to_vec()).await;
        assert_eq!(
            refused.map_err(|e| e.kind()),
            Err(std::io::ErrorKind::NotConnected)
        );
        assert_eq!(*sent.lock().expect("lock"), vec![b"before".to_vec()]);
    }
}
