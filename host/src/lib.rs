//! The provisioning station as a library; `src/main.rs` is the `station` program over it.
//!
//! A command runs in three steps: [`Station`] (the context built from the command line and
//! the configuration), [`commands::dispatch`] (the command, returning an
//! [`output::Output`]) and [`output::write`] (text or JSON on stdout, and the exit code).

// No unsafe code: memory safety of what we parse rests on the compiler (docs/testing.md, fuzzing).
#![forbid(unsafe_code)]

pub mod activation;
pub mod bounded;
pub mod cli;
pub mod codes;
pub mod commands;
pub mod error;
pub mod fleet;
pub mod http;
pub mod identity;
pub mod ledger;
pub mod line;
pub mod lockstate;
pub mod logging;
pub mod output;
pub mod phone;
pub mod preflight;
pub mod redact;
pub mod slots;
pub mod station;
pub mod storage;
#[cfg(test)]
mod test_server;
pub mod transport;
pub mod usb;
pub mod usbmuxd;
pub mod web;

pub use station::{Options, Station};
