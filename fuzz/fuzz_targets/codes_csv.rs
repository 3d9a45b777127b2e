#![no_main]
//! The codes file (`[[codes.sources]] type = "csv"`: the station's CSV, a Kandji device-secrets
//! export, an IntuneCD backup) as the station reads it: what parses
//! answers lookups, and every code it holds reveals and parses to itself.
use libfuzzer_sys::fuzz_target;
use station::codes::csv_file::CsvCodes;
use station_protocol::bypass_code::BypassCode;

fuzz_target!(|data: &[u8]| {
    let Ok(codes) = CsvCodes::parse(data, "codes.csv") else {
        return;
    };
    // Look up the serials and UDIDs the file itself names, and one it cannot.
    let text = String::from_utf8_lossy(data);
    let mut fields = text.split([',', '\n']).map(str::trim).take(64);
    let first = fields.next().unwrap_or("");
    for field in fields.chain(["NOSUCHSERIAL"]) {
        let lookup = codes.lookup_now(field, first);
        for sourced in &lookup.codes {
            let again = BypassCode::parse(&sourced.code.reveal()).expect("a held code parses");
            assert_eq!(again.reveal(), sourced.code.reveal());
        }
    }
});
