#![no_main]
//! Bypass-code parsing and the look-alike suggestions.
use libfuzzer_sys::fuzz_target;
use station_protocol::bypass_code::{suggest_lookalike_fix, BypassCode};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(code) = BypassCode::parse(&text) {
        let again = BypassCode::parse(&code.reveal()).expect("a revealed code parses");
        assert_eq!(again.reveal(), code.reveal());
    }
    let _ = BypassCode::is_masked(&text);
    let _ = suggest_lookalike_fix(&text);
});
