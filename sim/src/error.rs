//! Errors of the bench as a whole (starting, state directory, runtime control).

use std::path::PathBuf;

use station_protocol::file_error::FileError;

use crate::world::WorldError;

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error(transparent)]
    World(#[from] WorldError),
    #[error(transparent)]
    Io(FileError),
    #[error("another usbmuxd (or bench) already listens on {}", path.display())]
    SocketInUse { path: PathBuf },
    #[error("state directory {}: {reason}", path.display())]
    State { path: PathBuf, reason: String },
    #[error("no device with UDID {udid} on this bench")]
    UnknownDevice { udid: String },
    #[error("device key for {udid}: {reason}")]
    DeviceKey { udid: String, reason: String },
    #[error("cannot serve the stand-in {service} on 127.0.0.1: {source}")]
    MdmServer {
        service: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("certificate {}: {reason}", path.display())]
    Certificate { path: PathBuf, reason: String },
    #[error("cannot serve the proxy to the activation server: {0}")]
    AlbertProxy(String),
    #[error("cannot serve the activation server on 127.0.0.1:{port}: {source}")]
    ActivationServer {
        port: u16,
        #[source]
        source: std::io::Error,
    },
}

impl SimError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        SimError::Io(FileError::new(op, path, source))
    }
}
