#![no_main]
//! The MCInstall `GetCloudConfiguration` reply.
use libfuzzer_sys::fuzz_target;
use station_protocol::frame::decode_plist;
use station_protocol::mcinstall::CloudConfiguration;

fuzz_target!(|data: &[u8]| {
    if let Ok(plist::Value::Dictionary(reply)) = decode_plist(data) {
        let _ = CloudConfiguration::from_reply(&reply);
    }
});
