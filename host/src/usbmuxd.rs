//! The station's view of usbmuxd: one short-lived connection per request, as usbmuxd wants.

use std::time::Duration;

use station_protocol::usbmux::{
    connect_address, Address, DeviceInfo, EventStream, UsbmuxClient, UsbmuxError, UsbmuxStream,
};

use crate::error::StationError;

#[derive(Debug, Clone)]
pub struct Usbmuxd {
    address: Address,
    timeout: Duration,
}

impl Usbmuxd {
    pub fn new(address: Address, timeout: Duration) -> Self {
        Usbmuxd { address, timeout }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    async fn client(&self) -> Result<UsbmuxClient<UsbmuxStream>, UsbmuxError> {
        let stream = connect_address(&self.address, self.timeout).await?;
        Ok(UsbmuxClient::new(stream).with_timeout(self.timeout))
    }

    pub async fn list_devices(&self) -> Result<Vec<DeviceInfo>, StationError> {
        Ok(self.probe().await?)
    }

    /// The attached phones, with the protocol error kept typed: the line tells "usbmuxd is
    /// gone" (`Unreachable`, `Closed`) from other failures.
    pub async fn probe(&self) -> Result<Vec<DeviceInfo>, UsbmuxError> {
        let mut devices = self.client().await?.list_devices().await?;
        devices.sort_by_key(|d| d.device_id);
        Ok(devices)
    }

    /// Attach/detach events; the first ones repeat the phones attached now.
    pub async fn listen(&self) -> Result<EventStream<UsbmuxStream>, StationError> {
        Ok(self.client().await?.listen().await?)
    }

    /// A raw stream to `port` on the phone.
    pub async fn connect(
        &self,
        device: &DeviceInfo,
        port: u16,
    ) -> Result<UsbmuxStream, StationError> {
        Ok(self.client().await?.connect(device.device_id, port).await?)
    }
}
