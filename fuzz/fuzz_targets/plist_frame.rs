#![no_main]
//! The length-prefixed plist channel (lockdownd and every lockdown service).
use libfuzzer_sys::fuzz_target;
use station_protocol::frame::{decode_plist, read_frame};

fuzz_target!(|data: &[u8]| {
    let mut reader = data;
    let _ = station_fuzz::run_now(read_frame(&mut reader));
    let _ = decode_plist(data);
});
