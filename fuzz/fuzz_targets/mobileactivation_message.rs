#![no_main]
//! A mobileactivationd message as the sim parses it.
use libfuzzer_sys::fuzz_target;
use station_protocol::frame::decode_plist;
use station_protocol::mobileactivation::Command;

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = decode_plist(data) {
        if let Ok(command) = Command::from_plist(&value) {
            let _ = command.to_plist();
        }
    }
});
