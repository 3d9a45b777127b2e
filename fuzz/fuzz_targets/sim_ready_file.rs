#![no_main]
//! The sim's `--ready` file as the station's demo and the tests read it; what parses writes
//! and parses back to the same value.
use libfuzzer_sys::fuzz_target;
use station_sim::ready::ReadyInfo;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(info) = ReadyInfo::from_json(text) {
            let again = ReadyInfo::from_json(&info.to_json()).expect("written ready file parses");
            assert_eq!(again, info);
        }
    }
});
