#![no_main]
//! The activation server's answer classification (plist, buddyml, HTML). Header part before the
//! first NUL: byte 0 picks the content type, bytes 1–2 the status.
use libfuzzer_sys::fuzz_target;
use station_protocol::activation::classify_response;

const TYPES: [&str; 5] = [
    "application/xml",
    "text/xml",
    "application/x-buddyml",
    "text/html",
    "application/octet-stream",
];

fuzz_target!(|data: &[u8]| {
    let (head, body) = station_fuzz::split_nul(data);
    let ct = TYPES[usize::from(head.first().copied().unwrap_or(0)) % TYPES.len()];
    let status = match head.get(1..3) {
        Some(b) => 100 + u16::from_le_bytes([b[0], b[1]]) % 500,
        None => 200,
    };
    let headers = vec![("Content-Type".to_string(), ct.to_string())];
    let _ = classify_response(status, &headers, body);
});
