//! Apple's wire protocols as the provisioning station needs them: plist framing, the usbmuxd
//! client protocol, lockdown, pairing certificates and TLS sessions. No policy and no
//! configuration live here; the station (`host/`) and the simulator (`sim/`) both build on it.

// No unsafe code: memory safety of what we parse rests on the compiler (docs/testing.md, fuzzing).
#![forbid(unsafe_code)]

pub mod activation;
pub mod atomic_file;
pub mod bypass_code;
pub mod channel;
pub mod file_error;
pub mod frame;
pub mod ios;
pub mod lockdown;
pub mod mcinstall;
pub mod mobileactivation;
pub mod models;
pub mod pairing;
pub mod tls;
pub mod tls_engine;
pub mod udid;
pub mod usb_mux;
pub mod usbmux;
