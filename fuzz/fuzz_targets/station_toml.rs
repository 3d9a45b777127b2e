#![no_main]
//! station.toml.
use libfuzzer_sys::fuzz_target;
use station_config::StationConfig;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = StationConfig::parse(text, std::path::Path::new("station.toml"));
    }
});
