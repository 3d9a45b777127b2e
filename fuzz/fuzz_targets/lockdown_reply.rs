#![no_main]
//! A lockdownd reply as the client checks it.
use libfuzzer_sys::fuzz_target;
use station_protocol::frame::decode_plist;
use station_protocol::lockdown::check_reply;

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = decode_plist(data) {
        let _ = check_reply("GetValue", value);
    }
});
