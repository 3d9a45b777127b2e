//! The `usb` transport end to end without a bus: the station's host-side mux driver and a
//! virtual phone's device-side mux (station-sim) joined by in-memory bulk endpoints that
//! behave like USB. Over it the station's own code lists the phone, reads lockdown values,
//! pairs, opens a TLS session and activates — the same code as over usbmuxd.

use std::collections::BTreeMap;
use std::time::Duration;

use station::activation::{ActivationServer, Activator, Outcome, Quiet};
use station::codes::NoSources;
use station::http::RetryPolicy;
use station::phone::{Bench as StationBench, PairStore};
use station::slots::{PortPaths, SlotBy, Slots};
use station::transport::Transport;
use station::usb::{UsbPhones, UsbTransport};
use station_config::SlotKey;
use station_protocol::pairing::DirPairStore;
use station_protocol::usb_mux::driver::memory::pipe;
use station_protocol::usb_mux::driver::{DriverConfig, MuxDriver, MuxHandle};
use station_protocol::usb_mux::wire::USB_MRU;
use station_sim::{Bench, BenchConfig, UsbDeviceEnd, World};

const TIMEOUT: Duration = Duration::from_secs(10);
/// Where the rig's phone is on its (pretend) bus.
const PORT_PATH: &str = "1-1.3";

struct Rig {
    sim: Bench,
    udid: String,
    phones: UsbPhones,
    serving: tokio::task::JoinHandle<UsbDeviceEnd>,
    _dir: tempfile::TempDir,
    station: StationBench,
}

/// One phone at Setup Assistant, served over an in-memory USB pipe.
async fn rig(activation_state: &str) -> Rig {
    let dir = tempfile::tempdir().expect("tempdir");
    let world = World::from_toml(
        &format!("seed = 5\n\n[[device]]\ndevice_name = \"usb\"\nactivation_state = \"{activation_state}\"\n"),
        "usb world",
    )
    .expect("world");
    let sim = Bench::start(BenchConfig::new(
        dir.path().join("usbmuxd.sock"),
        world,
        dir.path().join("state"),
    ))
    .await
    .expect("bench");
    let udid = sim.ready_info().devices[0].udid.clone();
    let (host_end, device_end) = pipe(512, USB_MRU);
    let device = sim.usb_device(&udid).expect("plugged phone");
    let serving = tokio::spawn(device.serve(device_end.bulk_in, device_end.bulk_out));
    let mux: MuxHandle =
        MuxDriver::host(host_end.bulk_in, host_end.bulk_out, DriverConfig::default());
    mux.ready(TIMEOUT).await.expect("mux bring-up");
    let phones = UsbPhones::default();
    let serial = udid.replace('-', "");
    // Bus 1, address 2, in port 3 of the root hub's port 1.
    phones.attach(
        &udid,
        0x12a8,
        0x0001_0002,
        480_000_000,
        Some(PORT_PATH),
        mux,
    );
    assert_eq!(serial.len(), 24, "a modern UDID");
    let station = StationBench::new(
        Transport::Usb(UsbTransport::with_phones(phones.clone(), TIMEOUT)),
        PairStore::Dir(DirPairStore::new(dir.path().join("lockdown"))),
        None,
    );
    Rig {
        sim,
        udid,
        phones,
        serving,
        _dir: dir,
        station,
    }
}

#[tokio::test]
async fn lockdown_values_and_pairing_over_usb() {
    let rig = rig("Unactivated").await;
    let devices = rig.station.transport.list_devices().await.expect("devices");
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].udid, rig.udid);
    assert_eq!(devices[0].connection_type, "USB");
    let device = rig.station.transport.find(&rig.udid).await.expect("find");

    let mut lockdown = rig.station.lockdown(&device).await.expect("lockdown");
    let udid = lockdown
        .get_value(None, Some("UniqueDeviceID"))
        .await
        .expect("UniqueDeviceID");
    assert_eq!(udid.as_string(), Some(rig.udid.as_str()));
    drop(lockdown);

    let record = rig.station.pair(&device, TIMEOUT).await.expect("pair");
    assert!(!record.host_id.is_empty());
    assert!(rig.sim.ready_info().devices.len() == 1);
    let session = rig
        .station
        .session(&device)
        .await
        .expect("session")
        .expect("paired");
    let mut lockdown = session.lockdown;
    let state = lockdown
        .get_value(None, Some("ActivationState"))
        .await
        .expect("ActivationState in session");
    assert_eq!(state.as_string(), Some("Unactivated"));
    // A refused port is the same typed error as through usbmuxd.
    let refused = rig
        .station
        .transport
        .connect(&device, 1)
        .await
        .expect_err("no service");
    assert_eq!(refused.kind(), station::error::ErrorCode::UsbmuxdError);
}

#[tokio::test]
async fn activation_over_usb() {
    let rig = rig("Unactivated").await;
    let device = rig.station.transport.find(&rig.udid).await.expect("find");
    let server = ActivationServer::new(rig.sim.activation_url(), TIMEOUT, RetryPolicy::default())
        .expect("server");
    let activator = Activator {
        bench: &rig.station,
        server: &server,
        codes: &NoSources,
        observer: &Quiet,
        trust_wait: TIMEOUT,
    };
    let report = tokio::time::timeout(Duration::from_secs(60), activator.activate(&device))
        .await
        .expect("activation in time");
    assert_eq!(report.outcome, Outcome::Activated, "{}", report.message);
    assert_eq!(
        rig.sim.activation_state(&rig.udid).expect("state"),
        station_sim::ActivationState::Activated
    );
}

#[tokio::test]
async fn unplugging_the_phone_detaches_it() {
    let rig = rig("Activated").await;
    let (now, mut events) = rig.phones.subscribe();
    assert_eq!(now.len(), 1);
    // The slot comes from the port the transport opened the phone at, not from sysfs (an
    // empty directory here), and stays with the phone once it is gone.
    let empty_sysfs = tempfile::tempdir().expect("tempdir");
    let known = rig
        .station
        .transport
        .known_ports()
        .expect("the usb transport knows ports");
    let slots = Slots::new(
        BTreeMap::from([(SlotKey::PortPath(PORT_PATH.into()), "B3".to_string())]),
        PortPaths::new(empty_sysfs.path()).knowing(known),
    );
    let slot = slots.slot(&now[0]);
    assert_eq!((slot.label.as_str(), slot.by), ("B3", SlotBy::PortPath));
    assert_eq!(slot.port_path.as_deref(), Some(PORT_PATH));
    rig.sim.unplug(&rig.udid).expect("unplug");
    assert_eq!(
        tokio::time::timeout(TIMEOUT, rig.serving)
            .await
            .expect("ends")
            .expect("task"),
        UsbDeviceEnd::Unplugged
    );
    let event = tokio::time::timeout(TIMEOUT, events.recv())
        .await
        .expect("event in time")
        .expect("event");
    assert!(matches!(
        event,
        station_protocol::usbmux::Event::Detached { device_id } if device_id == now[0].device_id
    ));
    assert!(rig
        .station
        .transport
        .list_devices()
        .await
        .expect("list")
        .is_empty());
    assert_eq!(
        slots.slot(&now[0]).label,
        "B3",
        "the slot outlives the phone's detach"
    );
    // A transport that does not know the phone leaves it to sysfs, which has nothing.
    let unknown = Slots::new(
        BTreeMap::from([(SlotKey::PortPath(PORT_PATH.into()), "B3".to_string())]),
        PortPaths::new(empty_sysfs.path())
            .knowing(rig.station.transport.known_ports().expect("usb")),
    );
    assert_eq!(unknown.slot(&now[0]).port_path, None);
}
