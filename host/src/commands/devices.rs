//! `station devices`: what is attached, who each phone is, and its activation state.

use std::time::Duration;

use serde::Serialize;
use station_protocol::models::marketing_name;
use station_protocol::usbmux::DeviceInfo;

use crate::error::StationError;
use crate::lockstate::{read_management_state, ActivationLock, ManagementState};
use crate::output::Output;
use crate::phone::Bench;
use crate::slots::{SlotBy, Slots};
use crate::station::Station;

/// Bound on identifying one phone, so one stuck phone cannot stall the listing.
const PER_DEVICE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DeviceRow {
    pub udid: String,
    pub serial: Option<String>,
    pub product_type: Option<String>,
    pub model: Option<String>,
    pub product_version: Option<String>,
    pub build_version: Option<String>,
    pub device_name: Option<String>,
    pub activation_state: Option<String>,
    /// Find My, passcode and management, as the phone tells them (`find_my`, …).
    #[serde(flatten)]
    pub management: ManagementState,
    /// Only Apple's answer during activation tells the lock (docs/protocol.md §3.6): listing a
    /// phone never asks Apple, so this is always `null` here.
    pub activation_lock: Option<ActivationLock>,
    pub paired: bool,
    pub connection: String,
    /// usbmuxd `LocationID` as hex: `(bus << 16) | address`; the address changes on replug.
    pub location: String,
    /// The USB port path on this machine (`1-1.4.2`), stable across replugs; `None` when
    /// no USB device here has this UDID as its serial (virtual bench, remote usbmuxd).
    pub port_path: Option<String>,
    /// The `[slots]` label of this phone's place, if the configuration names it.
    pub slot: Option<String>,
    /// What the slot is known by: `port_path`, or `location_id` (not stable).
    pub slot_by: SlotBy,
    pub device_id: u32,
    /// Why some fields are missing, and what to do about it.
    pub note: Option<String>,
}

impl DeviceRow {
    fn new(device: &DeviceInfo, slots: &Slots) -> Self {
        let slot = slots.slot(device);
        DeviceRow {
            udid: device.udid.clone(),
            serial: None,
            product_type: None,
            model: None,
            product_version: None,
            build_version: None,
            device_name: None,
            activation_state: None,
            management: ManagementState::default(),
            activation_lock: None,
            paired: false,
            connection: device.connection_type.clone(),
            location: format!("0x{:08x}", device.location_id),
            port_path: slot.port_path,
            slot: slot.configured.then_some(slot.label),
            slot_by: slot.by,
            device_id: device.device_id,
            note: None,
        }
    }

    fn absorb(&mut self, values: &plist::Value) {
        let Some(d) = values.as_dictionary() else {
            return;
        };
        let text = |key: &str| d.get(key).and_then(|v| v.as_string()).map(str::to_string);
        let keep = |slot: &mut Option<String>, key: &str| {
            if let Some(v) = text(key) {
                *slot = Some(v);
            }
        };
        keep(&mut self.serial, "SerialNumber");
        keep(&mut self.product_type, "ProductType");
        keep(&mut self.product_version, "ProductVersion");
        keep(&mut self.build_version, "BuildVersion");
        keep(&mut self.device_name, "DeviceName");
        keep(&mut self.activation_state, "ActivationState");
        self.model = self
            .product_type
            .as_deref()
            .map(|t| marketing_name(t).unwrap_or(t).to_string());
    }
}

/// Identifies one phone with as little intrusion as possible: values readable without
/// pairing first; a session when a pair record exists; and silent pairing for a phone at
/// Setup Assistant (it pairs without a trust prompt). An activated phone we are not paired
/// with is never asked to pair here, since that would pop the trust prompt.
pub async fn identify(bench: &Bench, slots: &Slots, device: &DeviceInfo) -> DeviceRow {
    let mut row = DeviceRow::new(device, slots);
    match tokio::time::timeout(PER_DEVICE_TIMEOUT, identify_into(bench, device, &mut row)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => row.note = Some(note_for(&e, &device.udid)),
        Err(_) => {
            row.note = Some(format!(
                "no answer within {PER_DEVICE_TIMEOUT:?}: replug the phone"
            ))
        }
    }
    row
}

/// The row names the phone already: its note says what is wrong without repeating the
/// UDID (the help keeps it where it is part of a command to copy).
fn note_for(e: &StationError, udid: &str) -> String {
    let full = e.to_string();
    let message = match full.strip_prefix(udid) {
        Some(rest) => format!("the phone{rest}").replacen("the phone: ", "", 1),
        None => full.replace(udid, "the phone"),
    };
    match e.help() {
        Some(help) => format!("{message}: {help}"),
        None => message,
    }
}

async fn identify_into(
    bench: &Bench,
    device: &DeviceInfo,
    row: &mut DeviceRow,
) -> Result<(), StationError> {
    let udid = device.udid.as_str();
    let mut lockdown = bench.lockdown(device).await?;
    let public = lockdown
        .get_value(None, None)
        .await
        .map_err(|e| StationError::from_lockdown(udid, e))?;
    row.absorb(&public);
    if row.activation_state.is_none() {
        // Not in the unpaired dump, but phones answer it when asked by key.
        if let Ok(state) = lockdown.get_value(None, Some("ActivationState")).await {
            row.absorb(&station_protocol::frame::dict([("ActivationState", state)]));
        }
    }
    drop(lockdown);

    let session = match bench.session(device).await {
        Ok(Some(session)) => Some(session),
        Ok(None) if row.activation_state.as_deref() == Some("Unactivated") => {
            let record = bench.pair(device, Duration::ZERO).await?;
            Some(bench.session_with(device, record).await?)
        }
        Ok(None) => {
            row.note = Some(note_for(&StationError::not_paired(udid), udid));
            None
        }
        Err(e) => return Err(e),
    };
    if let Some(mut session) = session {
        row.paired = true;
        let values = session
            .get_value(None, None)
            .await
            .map_err(|e| StationError::from_lockdown(udid, e))?;
        row.absorb(&values);
        row.management =
            read_management_state(bench, device, &mut session, row.activation_state.as_deref())
                .await;
        session.close().await;
    }
    Ok(())
}

pub async fn list(station: &Station) -> Result<Output, StationError> {
    let bench = station.bench()?;
    let slots = station.slots(&bench.transport)?;
    let devices = bench.transport.list_devices().await?;
    let rows =
        futures_util::future::join_all(devices.iter().map(|d| identify(&bench, &slots, d))).await;
    Ok(Output::Devices(rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UDID: &str = "00008030-001A2C3E0E90802E";

    #[test]
    fn notes_do_not_repeat_the_udid() {
        let note = note_for(&StationError::PasscodeLocked { udid: UDID.into() }, UDID);
        assert!(
            note.starts_with("the phone is locked with a passcode"),
            "{note}"
        );
        assert!(!note.contains(UDID), "{note}");
        let note = note_for(&StationError::not_paired(UDID), UDID);
        assert!(
            note.starts_with(
                "this station is not paired with the phone: run `station pair --udid "
            ),
            "{note}"
        );
        // Only the command to copy names it.
        assert_eq!(note.matches(UDID).count(), 1, "{note}");
    }
}
