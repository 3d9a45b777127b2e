#![no_main]
//! The `deviceActivation` request body (urlencoded or multipart), as the sim parses it; the
//! content type is the part before the first NUL.
use libfuzzer_sys::fuzz_target;
use station_protocol::activation::parse_device_activation_form;

fuzz_target!(|data: &[u8]| {
    let (head, body) = station_fuzz::split_nul(data);
    let content_type = String::from_utf8_lossy(head);
    let _ = parse_device_activation_form(&content_type, body);
});
