//! Pair records kept by usbmuxd itself (`ReadPairRecord` / `SavePairRecord` /
//! `DeletePairRecord` / `ReadBUID`), the way libimobiledevice stores them: a record saved
//! here is the one `ideviceinfo` and `idevicepair` use, and the other way round.

use std::time::Duration;

use super::store::{validate_udid, BoxFuture, PairRecordStore};
use super::{PairRecord, PairingError};
use crate::usbmux::{connect_address, Address, UsbmuxClient, UsbmuxError, UsbmuxStream};

/// A [`PairRecordStore`] that talks to usbmuxd; every operation uses a fresh connection, as
/// usbmuxd wants one purpose per socket.
#[derive(Debug, Clone)]
pub struct UsbmuxdPairStore {
    address: Address,
    timeout: Duration,
}

impl UsbmuxdPairStore {
    pub fn new(address: Address, timeout: Duration) -> Self {
        UsbmuxdPairStore { address, timeout }
    }

    async fn client(&self) -> Result<UsbmuxClient<UsbmuxStream>, PairingError> {
        let stream = connect_address(&self.address, self.timeout)
            .await
            .map_err(store_error)?;
        Ok(UsbmuxClient::new(stream).with_timeout(self.timeout))
    }

    /// Saves with the phone's usbmuxd `DeviceID`, so usbmuxd tells its listeners `Paired`,
    /// as libimobiledevice does.
    pub async fn save_for_device(
        &self,
        udid: &str,
        record: &PairRecord,
        device_id: Option<u32>,
    ) -> Result<(), PairingError> {
        validate_udid(udid)?;
        let mut client = self.client().await?;
        client
            .save_pair_record(udid, record.to_binary(), device_id)
            .await
            .map_err(store_error)
    }
}

fn store_error(e: UsbmuxError) -> PairingError {
    PairingError::Store {
        store: "usbmuxd",
        source: Box::new(e),
    }
}

impl PairRecordStore for UsbmuxdPairStore {
    fn read<'a>(
        &'a self,
        udid: &'a str,
    ) -> BoxFuture<'a, Result<Option<PairRecord>, PairingError>> {
        Box::pin(async move {
            validate_udid(udid)?;
            let mut client = self.client().await?;
            match client.read_pair_record(udid).await.map_err(store_error)? {
                Some(bytes) => PairRecord::from_bytes(&bytes).map(Some),
                None => Ok(None),
            }
        })
    }

    fn save<'a>(
        &'a self,
        udid: &'a str,
        record: &'a PairRecord,
    ) -> BoxFuture<'a, Result<(), PairingError>> {
        Box::pin(self.save_for_device(udid, record, None))
    }

    fn delete<'a>(&'a self, udid: &'a str) -> BoxFuture<'a, Result<bool, PairingError>> {
        Box::pin(async move {
            validate_udid(udid)?;
            let mut client = self.client().await?;
            client.delete_pair_record(udid).await.map_err(store_error)
        })
    }

    fn system_buid(&self) -> BoxFuture<'_, Result<String, PairingError>> {
        Box::pin(async move {
            let mut client = self.client().await?;
            client.read_buid().await.map_err(store_error)
        })
    }
}
