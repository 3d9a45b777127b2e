//! The virtual phones as USB gadgets (`station-sim gadget`, Linux only): each phone of a
//! bench becomes a configfs gadget on a UDC of its own (with `dummy_hcd num=N`, N of them),
//! served through FunctionFS as a real iPhone presents itself (docs/protocol.md §2.1–2.3):
//! Apple's vendor id, the phone's product id, its UDID as `iSerialNumber`, four
//! configurations with the mux interface in 3 and 4, and the mode requests of §2.2 answered
//! on ep0. The bench's plug schedule binds and unbinds the gadgets, which the host sees as
//! real connects and disconnects.
//!
//! Layout: [`descriptors`] (the FunctionFS blobs and events; pure, tested on exact bytes),
//! `configfs` (the gadget directories, UDC binding), `ffs` (ep0 and the bulk pipe threads),
//! and here the bench around them.

pub mod descriptors;

#[cfg(target_os = "linux")]
mod configfs;
#[cfg(target_os = "linux")]
mod ffs;
#[cfg(target_os = "linux")]
mod run;

#[cfg(target_os = "linux")]
pub use configfs::{iphone_configurations, MuxPort, PhoneShape, APPLE_VENDOR_ID};
#[cfg(target_os = "linux")]
pub use ffs::{BulkWriter, PipeEvent};
#[cfg(target_os = "linux")]
pub use run::{GadgetBench, GadgetOptions};

use std::path::Path;

use station_protocol::file_error::FileError;

/// Product ids of iOS devices in normal mode (docs/protocol.md §2.1).
pub const IOS_PRODUCT_IDS: std::ops::RangeInclusive<u32> = 0x1290..=0x12af;

#[derive(Debug, thiserror::Error)]
pub enum GadgetError {
    #[error(transparent)]
    Io(FileError),
    #[error("{0}")]
    Setup(String),
}

impl GadgetError {
    pub(crate) fn io(op: &'static str, path: &Path, source: std::io::Error) -> Self {
        GadgetError::Io(FileError::new(op, path, source))
    }
}
