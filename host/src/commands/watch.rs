//! `station watch`: attaches, read-only, to the run on this machine through the socket it
//! publishes (`<data_dir>/station.sock`, docs/events.md) and shows its live screen, or
//! with `--json` follows its NDJSON stream. Ends with the run's summary.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use crate::error::{exit, StationError};
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
    let shown = path.display();
    let no_run = || {
        StationError::new(
            "no-run",
            exit::FAILURE,
            format!("no station run is live at {shown}"),
        )
        .help("start it with `systemctl start station` (or `station run`), then watch again")
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, UnixStream::connect(path)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            Err(no_run())
        }
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(StationError::new(
            "watch-denied",
            exit::FAILURE,
            format!("cannot attach to the station run at {shown}: permission denied"),
        )
        .help("the socket is private to the user the station runs as: `sudo station watch`")),
        Ok(Err(e)) => Err(StationError::new(
            "watch-failed",
            exit::FAILURE,
            format!("cannot attach to the station run at {shown}: {e}"),
        )),
        Err(_) => Err(StationError::new(
            "watch-failed",
            exit::FAILURE,
            format!("the station run at {shown} did not answer in {CONNECT_TIMEOUT:?}"),
        )),
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
                return Err(StationError::new(
                    "run-gone",
                    exit::FAILURE,
                    format!("the station run at {} ended before its summary", path.display()),
                )
                .help("it was stopped, or this watcher fell behind and was dropped; `station report` shows what it recorded"))
            }
            Ok(_) if line.last() != Some(&b'\n') => {
                return Err(StationError::new(
                    "watch-failed",
                    exit::FAILURE,
                    format!("{} sent a line that is not an event", path.display()),
                ))
            }
            Ok(_) => {}
            Err(e) => {
                return Err(StationError::new(
                    "run-gone",
                    exit::FAILURE,
                    format!("lost the station run at {}: {e}", path.display()),
                ))
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
