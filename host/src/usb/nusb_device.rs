//! Phones on this machine's USB bus through nusb (docs/protocol.md §2.10 checklist): match
//! vendor and product, pick the mux configuration, detach kernel drivers, claim the
//! interface, keep bulk-IN transfers in flight, read the UDID, bring the mux up, and follow
//! hotplug. A USB error on one phone is recorded for it and never stops the others.

use std::io;
use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use nusb::descriptors::TransferType;
use nusb::hotplug::HotplugEvent;
use nusb::transfer::{Buffer, Bulk, ControlIn, ControlType, In, Out, Recipient};
use nusb::{DeviceInfo, Endpoint, ErrorKind, Speed};
use station_protocol::usb_mux::driver::{BulkIn, BulkOut, DriverConfig, MuxDriver};

use super::select::{
    choose_mux, describe_mode, is_phone, location_id, port_path, udid_from_serial, ConfigDesc,
    Direction, EndpointDesc, InterfaceDesc, TransferKind, GET_MODE_LENGTH, GET_MODE_REQUEST,
};
use super::{UsbError, UsbPhones};

/// Bulk-IN transfers kept pending per phone (§2.4: usbmuxd keeps 3).
const IN_FLIGHT: usize = 3;
/// One 64 KiB transfer holds any mux packet (§2.4: DEV_MRU) and is a multiple of every
/// packet size.
const IN_TRANSFER_SIZE: usize = 65536;
/// Where Linux lists USB devices; without it the kernel has no USB.
const SYSFS_USB: &str = "/sys/bus/usb/devices";

/// Scans the bus, brings every phone up, then follows hotplug in the background.
pub(super) async fn start(phones: UsbPhones, timeout: Duration) -> Result<(), UsbError> {
    if cfg!(target_os = "linux") && !Path::new(SYSFS_USB).exists() {
        return Err(UsbError::NoBus {
            reason: format!("{SYSFS_USB} does not exist: this kernel has no USB support"),
        });
    }
    // Watch before listing so a phone plugged during the scan is not missed.
    let watch = nusb::watch_devices().map_err(|e| UsbError::NoBus {
        reason: format!("cannot watch for USB hotplug: {e}"),
    })?;
    let devices = nusb::list_devices().await.map_err(|e| UsbError::NoBus {
        reason: format!("cannot list USB devices: {e}"),
    })?;
    let mut opening = tokio::task::JoinSet::new();
    for info in devices.filter(|d| is_phone(d.vendor_id(), d.product_id())) {
        opening.spawn(attach(phones.clone(), info, timeout));
    }
    while opening.join_next().await.is_some() {}
    tokio::spawn(async move {
        let mut watch = watch;
        while let Some(event) = watch.next().await {
            if let HotplugEvent::Connected(info) = event {
                if is_phone(info.vendor_id(), info.product_id()) {
                    tokio::spawn(attach(phones.clone(), info, timeout));
                }
            }
            // Disconnected: the phone's transfers fail, its mux goes down and detaches it.
        }
    });
    Ok(())
}

/// Opens one phone; on failure records why under its port path.
async fn attach(phones: UsbPhones, info: DeviceInfo, timeout: Duration) {
    let location = port_path(info.busnum(), info.port_chain());
    match open(&phones, &info, &location, timeout).await {
        Ok(()) => phones.clear_problem(&location),
        Err(error) => {
            tracing::warn!(%location, %error, "USB phone not usable");
            phones.problem(&location, error);
        }
    }
}

async fn open(
    phones: &UsbPhones,
    info: &DeviceInfo,
    location: &str,
    timeout: Duration,
) -> Result<(), UsbError> {
    let fail = |e: nusb::Error| usb_error(location, &e);
    let serial = info.serial_number().ok_or_else(|| UsbError::Device {
        location: location.to_string(),
        reason: "no iSerialNumber (the UDID)".into(),
    })?;
    let udid = udid_from_serial(serial);
    let device = info.open().await.map_err(fail)?;
    ask_mode(&device, location).await;
    let configs: Vec<ConfigDesc> = device.configurations().map(|c| config_desc(&c)).collect();
    let choice = choose_mux(&configs).ok_or_else(|| UsbError::NoMuxInterface {
        location: location.to_string(),
    })?;
    let active = device
        .active_configuration()
        .ok()
        .map(|c| c.configuration_value());
    if active != Some(choice.configuration) {
        // §2.3: ipheth or cdc_ncm may hold interfaces of the current configuration.
        if let Ok(current) = device.active_configuration() {
            for interface in current.interfaces() {
                let _ = device.detach_kernel_driver(interface.interface_number());
            }
        }
        device
            .set_configuration(choice.configuration)
            .await
            .map_err(fail)?;
    }
    let interface = device
        .detach_and_claim_interface(choice.interface)
        .await
        .map_err(fail)?;
    let bulk_in = interface
        .endpoint::<Bulk, In>(choice.endpoint_in)
        .map_err(fail)?;
    let bulk_out = interface
        .endpoint::<Bulk, Out>(choice.endpoint_out)
        .map_err(fail)?;
    let mux = MuxDriver::host(
        NusbIn::new(bulk_in),
        NusbOut { endpoint: bulk_out },
        DriverConfig {
            transfer_timeout: timeout,
            ..DriverConfig::default()
        },
    );
    mux.ready(timeout).await.map_err(|error| UsbError::Mux {
        location: location.to_string(),
        error,
    })?;
    let speed = match info.speed() {
        Some(Speed::Low) => 1_500_000,
        Some(Speed::Full) => 12_000_000,
        Some(Speed::High) => 480_000_000,
        Some(Speed::Super) => 5_000_000_000,
        Some(_) => 10_000_000_000,
        None => 0,
    };
    let attached = phones.attach(
        &udid,
        u32::from(info.product_id()),
        location_id(info.busnum(), info.device_address()),
        speed,
        Some(location),
        mux,
    );
    tracing::info!(udid = %attached.udid, %location, device_id = attached.device_id, "USB phone attached");
    // The device and interface stay open as long as the endpoints (held by the mux) do.
    drop(interface);
    drop(device);
    Ok(())
}

/// §2.2: current usbmuxd asks a phone its mode before choosing a configuration; so do we,
/// for the log (a bench phone stays in the initial mode: the station never switches). An
/// old phone may stall the request: that is fine.
async fn ask_mode(device: &nusb::Device, location: &str) {
    let query = ControlIn {
        control_type: ControlType::Vendor,
        recipient: Recipient::Device,
        request: GET_MODE_REQUEST,
        value: 0,
        index: 0,
        length: GET_MODE_LENGTH,
    };
    // usbmuxd's own limit for this request.
    match device.control_in(query, Duration::from_secs(1)).await {
        Ok(answer) => {
            tracing::info!(%location, mode = %describe_mode(&answer), "USB mode query answered")
        }
        Err(e) => tracing::debug!(%location, error = %e, "USB mode query not answered"),
    }
}

fn config_desc(config: &nusb::descriptors::ConfigurationDescriptor<'_>) -> ConfigDesc {
    ConfigDesc {
        value: config.configuration_value(),
        interfaces: config
            .interface_alt_settings()
            .map(|alt| InterfaceDesc {
                number: alt.interface_number(),
                alternate_setting: alt.alternate_setting(),
                class: alt.class(),
                subclass: alt.subclass(),
                protocol: alt.protocol(),
                endpoints: alt
                    .endpoints()
                    .map(|ep| EndpointDesc {
                        address: ep.address(),
                        direction: if ep.address() & 0x80 != 0 {
                            Direction::In
                        } else {
                            Direction::Out
                        },
                        kind: match ep.transfer_type() {
                            TransferType::Control => TransferKind::Control,
                            TransferType::Isochronous => TransferKind::Isochronous,
                            TransferType::Bulk => TransferKind::Bulk,
                            TransferType::Interrupt => TransferKind::Interrupt,
                        },
                        max_packet_size: ep.max_packet_size(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// Names the error for the operator; a busy interface names the likely holder.
fn usb_error(location: &str, error: &nusb::Error) -> UsbError {
    let location = location.to_string();
    let reason = error.to_string();
    match error.kind() {
        ErrorKind::Busy => UsbError::Busy {
            location,
            holder: likely_holder(),
            reason,
        },
        ErrorKind::PermissionDenied => UsbError::Access { location, reason },
        _ => UsbError::Device { location, reason },
    }
}

/// A running usbmuxd is the usual holder of a phone's mux interface.
fn likely_holder() -> String {
    let running = std::fs::read_dir("/proc").ok().and_then(|entries| {
        entries.flatten().find_map(|entry| {
            let comm = std::fs::read_to_string(entry.path().join("comm")).ok()?;
            (comm.trim() == "usbmuxd").then(|| entry.file_name().to_string_lossy().into_owned())
        })
    });
    match running {
        Some(pid) => format!("usbmuxd, running as pid {pid}"),
        None => "usbmuxd or another station".into(),
    }
}

/// A bulk-IN endpoint with `IN_FLIGHT` transfers always pending.
/// A failed bulk transfer as the mux driver sees it: an unplugged phone is `NotConnected` (the
/// normal end of a phone's link, not a fault); anything else broke the link.
fn transfer_error(error: nusb::transfer::TransferError) -> io::Error {
    let kind = match error {
        nusb::transfer::TransferError::Disconnected => io::ErrorKind::NotConnected,
        _ => io::ErrorKind::BrokenPipe,
    };
    io::Error::new(kind, error)
}

struct NusbIn {
    endpoint: Endpoint<Bulk, In>,
}

impl NusbIn {
    fn new(endpoint: Endpoint<Bulk, In>) -> Self {
        NusbIn { endpoint }
    }
}

impl BulkIn for NusbIn {
    async fn read_transfer(&mut self) -> io::Result<Vec<u8>> {
        while self.endpoint.pending() < IN_FLIGHT {
            let buffer = self.endpoint.allocate(IN_TRANSFER_SIZE);
            self.endpoint.submit(buffer);
        }
        let completion = self.endpoint.next_complete().await;
        let buffer = completion.into_result().map_err(transfer_error)?;
        Ok(buffer.into_vec())
    }

    fn transfer_size(&self) -> usize {
        IN_TRANSFER_SIZE
    }
}

struct NusbOut {
    endpoint: Endpoint<Bulk, Out>,
}

impl BulkOut for NusbOut {
    async fn write_transfer(&mut self, data: Vec<u8>) -> io::Result<()> {
        self.endpoint.submit(Buffer::from(data));
        self.endpoint
            .next_complete()
            .await
            .into_result()
            .map(|_| ())
            .map_err(transfer_error)
    }

    fn max_packet_size(&self) -> usize {
        self.endpoint.max_packet_size()
    }
}

impl Drop for NusbOut {
    fn drop(&mut self) {
        // A transfer cut short by a timeout must not complete into a dropped future.
        self.endpoint.cancel_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nusb::transfer::TransferError;

    #[test]
    fn an_unplugged_phone_is_not_connected_and_other_transfer_errors_break_the_link() {
        assert_eq!(
            transfer_error(TransferError::Disconnected).kind(),
            io::ErrorKind::NotConnected
        );
        for other in [
            TransferError::Stall,
            TransferError::Fault,
            TransferError::Cancelled,
        ] {
            assert_eq!(transfer_error(other).kind(), io::ErrorKind::BrokenPipe);
        }
    }
}
