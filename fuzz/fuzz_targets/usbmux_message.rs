#![no_main]
//! usbmuxd packets: header, plist (v1) and binary (v0) payloads, as the client reads replies and
//! events and as the sim reads requests.
use libfuzzer_sys::fuzz_target;
use station_protocol::usbmux::{
    read_packet_capped, result_number, DeviceInfo, Event, Request,
};

fuzz_target!(|data: &[u8]| {
    let mut reader = data;
    let Some(Ok(packet)) = station_fuzz::run_now(read_packet_capped(&mut reader, 1 << 20)) else {
        return;
    };
    let _ = Event::from_packet(&packet);
    let _ = DeviceInfo::from_binary_record(&packet.payload);
    if let Ok(value) = packet.plist() {
        let _ = Request::from_plist(&value);
        let _ = DeviceInfo::from_attached_plist(&value);
        let _ = result_number(&value);
    }
});
