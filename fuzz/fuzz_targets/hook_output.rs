#![no_main]
//! A command hook's standard output (`[[codes.sources]] type = "command"`): lines of codes or
//! JSON. Every code of a lookup reveals and parses to itself.
use libfuzzer_sys::fuzz_target;
use station::codes::hook::parse_output;
use station_protocol::bypass_code::BypassCode;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match parse_output(&text, "hook") {
        Ok(lookup) => {
            for sourced in &lookup.codes {
                let again =
                    BypassCode::parse(&sourced.code.reveal()).expect("a returned code parses");
                assert_eq!(again.reveal(), sourced.code.reveal());
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
