#![no_main]
//! The USB mux (docs/protocol.md §2.5–2.8): packet decoding with both header versions, then
//! the same bytes as bulk-IN transfers into a host and a device mux that are up and have a
//! connection open, with reads and writes in between. Neither may panic or grow without end.
use libfuzzer_sys::fuzz_target;
use station_protocol::usb_mux::wire::{decode_packet, MuxVersion};
use station_protocol::usb_mux::{Mux, MuxConfig, MuxEvent};

fn pump(host: &mut Mux, device: &mut Mux) {
    for _ in 0..64 {
        let mut moved = false;
        while let Some(p) = host.poll_transmit() {
            device.handle_transfer(&p);
            moved = true;
        }
        while let Some(p) = device.poll_transmit() {
            host.handle_transfer(&p);
            moved = true;
        }
        if !moved {
            return;
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = decode_packet(data, MuxVersion::V1);
    let _ = decode_packet(data, MuxVersion::V2);

    let mut host = Mux::host(MuxConfig::default());
    let mut device = Mux::device(MuxConfig::default());
    pump(&mut host, &mut device);
    let Ok(hid) = host.connect(62078) else { return };
    pump(&mut host, &mut device);
    let did = std::iter::from_fn(|| device.poll_event()).find_map(|e| match e {
        MuxEvent::Incoming(id) => Some(id),
        _ => None,
    });
    let Some(did) = did else { return };
    let _ = device.accept(did);
    pump(&mut host, &mut device);

    // First byte picks the transfer size, the rest is cut into transfers of that size.
    let Some((&size, rest)) = data.split_first() else { return };
    let size = usize::from(size).max(1) * 64;
    let mut buf = [0u8; 512];
    for transfer in rest.chunks(size) {
        host.handle_transfer(transfer);
        device.handle_transfer(transfer);
        let _ = host.recv(hid, &mut buf);
        let _ = device.send(did, transfer);
        while host.poll_event().is_some() {}
        while device.poll_event().is_some() {}
        pump(&mut host, &mut device);
        if let Some((unread, unsent)) = host.buffered(hid) {
            assert!(unread <= station_protocol::usb_mux::wire::MAX_RECEIVE_BUFFER);
            assert!(unsent <= station_protocol::usb_mux::wire::SEND_BUFFER);
        }
    }
});
