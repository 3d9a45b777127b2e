#![no_main]
//! A Kandji API answer body as the Kandji source decodes it: the device list (bare or
//! wrapped), the device secrets with both bypass codes, and the error of a refused request.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    station::codes::kandji::decode_answer_for_fuzzing(data);
});
