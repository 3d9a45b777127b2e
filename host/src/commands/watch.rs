//! `station watch`: attaches, read-only, to the run on this machine through the socket it
//! publishes (`<data_dir>/station.sock`, docs/events.md) and shows its live screen, or
//! with `--json` follows its NDJSON stream. Ends with the run's summary.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use crate::error::{RunLoss, StationError, WatchFailure};
use crate::line::events::{Event, EventKind};
use crate::line::publish::socket_path;
use crate::line::render::{self, Mode};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Far above any event; a longer line means the peer is not a station.
const MAX_LINE: u64 = 1 << 20;

pub async fn watch(data_dir: &Path, mode: Mode) -> Result<u8, StationError> {
    let path = socket_path(data_dir);
    let stream = connect(&path).await?;
    let (tx, rx) = mpsc::unbounded_channel();
    let screen = match mode {
        Mode::Terminal => Some(tokio::spawn(render::render(rx, Mode::Terminal))),
        Mode::Ndjson => None,
    };
    let followed = follow(stream, &path, mode, &tx).await;
    drop(tx);
    if let Some(screen) = screen {
        let _ = screen.await;
    }
    followed
}

async fn connect(path: &Path) -> Result<UnixStream, StationError> {
    let socket = path.to_path_buf();
    match tokio::time::timeout(CONNECT_TIMEOUT, UnixStream::connect(path)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            Err(StationError::NoRun { socket })
        }
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            Err(StationError::WatchDenied { socket })
        }
        Ok(Err(e)) => Err(StationError::WatchFailed {
            socket,
            failure: WatchFailure::Connect(e),
        }),
        Err(_) => Err(StationError::WatchFailed {
            socket,
            failure: WatchFailure::NoAnswer(CONNECT_TIMEOUT),
        }),
    }
}

/// Reads the stream until the summary. Waiting for the next event has no timeout: a
/// service run may be quiet for hours. Ctrl-C ends the watch (never the run).
async fn follow(
    stream: UnixStream,
    path: &Path,
    mode: Mode,
    screen: &mpsc::UnboundedSender<Event>,
) -> Result<u8, StationError> {
    let mut reader = BufReader::new(stream);
    let mut stop = std::pin::pin!(tokio::signal::ctrl_c());
    let mut line = Vec::new();
    loop {
        line.clear();
        let mut limited = (&mut reader).take(MAX_LINE);
        let read = tokio::select! {
            read = limited.read_until(b'\n', &mut line) => read,
            _ = &mut stop => return Ok(0),
        };
        match read {
            Ok(0) => {
                return Err(StationError::RunGone {
                    socket: path.to_path_buf(),
                    loss: RunLoss::EndedEarly,
                })
            }
            Ok(_) if line.last() != Some(&b'\n') => {
                return Err(StationError::WatchFailed {
                    socket: path.to_path_buf(),
                    failure: WatchFailure::NotAnEvent,
                })
            }
            Ok(_) => {}
            Err(e) => {
                return Err(StationError::RunGone {
                    socket: path.to_path_buf(),
                    loss: RunLoss::Read(e),
                })
            }
        }
        let text = String::from_utf8_lossy(&line);
        let event = Event::from_json(text.trim_end());
        if mode == Mode::Ndjson {
            // The stream as the run wrote it, kinds this build does not know included.
            let mut out = std::io::stdout().lock();
            let written = out.write_all(text.as_bytes()).and_then(|()| out.flush());
            if written.is_err() {
                // A closed pipe (`station watch --json | head`) ends the watch quietly.
                return Ok(0);
            }
        }
        match event {
            Ok(event) => {
                let end = matches!(event.kind, EventKind::Summary(_));
                if mode == Mode::Terminal {
                    let _ = screen.send(event);
                }
                if end {
                    return Ok(0);
                }
            }
            // Readers ignore kinds they do not know (docs/events.md).
            Err(e) => tracing::debug!("event skipped: {e}"),
        }
    }
}
