#![no_main]
//! A Microsoft Graph (or Entra ID error) answer body as the Intune source decodes it: the
//! device list, a device record with its bypass code, and the error of a refused request.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    station::codes::intune::decode_answer_for_fuzzing(data);
});
