//! The run's event stream on a local socket, for `station watch` (docs/events.md,
//! "Watching a run"): `<data_dir>/station.sock`, mode 0600 in the private data directory.
//! A watcher first gets a replay of the run so far (bounded), then the live events, as the
//! same NDJSON lines `station run --json` prints. Watchers never slow the line down: each
//! has a bounded queue filled without waiting, and one that falls behind is dropped.

use std::collections::VecDeque;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::events::{Event, EventKind};

/// The socket's name in the data directory; `station watch` finds it the same way.
pub const SOCKET_FILE: &str = "station.sock";
/// Lines kept for a watcher that attaches mid-run (plus `run_started`, always kept).
pub const REPLAY_LINES: usize = 4096;
/// Lines queued per watcher; a watcher this far behind is dropped.
pub const WATCHER_QUEUE: usize = 1024;
/// A watcher whose socket takes no data for this long is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// At the end of a run, how long watchers get to take the last lines.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_FILE)
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("cannot publish the event stream at {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What every watcher is fed from: the replay and the live queues.
#[derive(Default)]
struct Hub {
    /// `run_started`, once it fell out of `recent`: a watcher needs it to draw the header.
    started: Option<Arc<str>>,
    recent: VecDeque<(Arc<str>, bool)>,
    watchers: Vec<mpsc::Sender<Arc<str>>>,
    writers: Vec<JoinHandle<()>>,
    closed: bool,
}

impl Hub {
    fn replay(&self) -> Vec<Arc<str>> {
        self.started
            .iter()
            .cloned()
            .chain(self.recent.iter().map(|(line, _)| line.clone()))
            .collect()
    }
}

fn lock(hub: &Mutex<Hub>) -> std::sync::MutexGuard<'_, Hub> {
    // The hub's data stays consistent under a panic elsewhere: carry on with it.
    hub.lock().unwrap_or_else(PoisonError::into_inner)
}

pub struct Publisher {
    path: PathBuf,
    hub: Arc<Mutex<Hub>>,
    accept: JoinHandle<()>,
}

impl Publisher {
    /// Binds `<data_dir>/station.sock`. The caller holds the ledger's writer lock, so a
    /// socket file already there is a dead run's leftover and is replaced.
    pub fn bind(data_dir: &Path) -> Result<Publisher, PublishError> {
        let path = socket_path(data_dir);
        let err = |source| PublishError::Bind {
            path: path.clone(),
            source,
        };
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(err(e)),
            _ => {}
        }
        let listener = UnixListener::bind(&path).map_err(err)?;
        // The data directory is private already; the socket is too, on its own.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
        let hub = Arc::new(Mutex::new(Hub::default()));
        let accept = tokio::spawn(accept(listener, hub.clone()));
        tracing::info!(socket = %path.display(), "event stream published for `station watch`");
        Ok(Publisher { path, hub, accept })
    }

    /// Hands an event to every watcher without waiting for any of them.
    pub fn publish(&self, event: &Event) {
        let Ok(mut line) = serde_json::to_string(event) else {
            return;
        };
        line.push('\n');
        let line: Arc<str> = line.into();
        let is_start = matches!(event.kind, EventKind::RunStarted { .. });
        let mut hub = lock(&self.hub);
        hub.recent.push_back((line.clone(), is_start));
        if hub.recent.len() > REPLAY_LINES {
            if let Some((oldest, true)) = hub.recent.pop_front() {
                hub.started = Some(oldest);
            }
        }
        hub.watchers.retain(|tx| match tx.try_send(line.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(
                    "a `station watch` fell {WATCHER_QUEUE} events behind and was dropped"
                );
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
    }

    /// The run is over: watchers get what is queued (for a short while), the socket goes.
    pub async fn close(self) {
        let writers = {
            let mut hub = lock(&self.hub);
            hub.closed = true;
            hub.watchers.clear();
            std::mem::take(&mut hub.writers)
        };
        self.accept.abort();
        let deadline = tokio::time::Instant::now() + CLOSE_GRACE;
        for mut writer in writers {
            if tokio::time::timeout_at(deadline, &mut writer)
                .await
                .is_err()
            {
                writer.abort();
            }
        }
        // Dropping self removes the socket file.
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.accept.abort();
        // Removed while this run still holds the ledger lock: never a successor's socket.
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn accept(listener: UnixListener, hub: Arc<Mutex<Hub>>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: try again later, never spin.
                tracing::warn!("`station watch` connection not accepted: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let mut hub = lock(&hub);
        if hub.closed {
            return;
        }
        // Under the lock: the replay and the live queue meet without a gap or a repeat.
        let (tx, rx) = mpsc::channel(WATCHER_QUEUE);
        let replay = hub.replay();
        hub.watchers.push(tx);
        hub.writers.retain(|w| !w.is_finished());
        hub.writers.push(tokio::spawn(serve(stream, replay, rx)));
    }
}

/// Writes one watcher's lines; any write that stalls drops the watcher.
async fn serve(mut stream: UnixStream, replay: Vec<Arc<str>>, mut rx: mpsc::Receiver<Arc<str>>) {
    for line in replay {
        if !write(&mut stream, &line).await {
            return;
        }
    }
    while let Some(line) = rx.recv().await {
        if !write(&mut stream, &line).await {
            return;
        }
    }
    let _ = tokio::time::timeout(WRITE_TIMEOUT, stream.shutdown()).await;
}

async fn write(stream: &mut UnixStream, line: &str) -> bool {
    match tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(line.as_bytes())).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::debug!("a `station watch` went away: {e}");
            false
        }
        Err(_) => {
            tracing::warn!("a `station watch` stopped reading and was dropped");
            false
        }
    }
}

/// Passes the line's events on to the renderer, publishing each on the way; closes the
/// socket once the line is done. Await the handle before the ledger lock is released.
pub fn tee(
    mut rx: mpsc::UnboundedReceiver<Event>,
    publisher: Publisher,
) -> (mpsc::UnboundedReceiver<Event>, JoinHandle<()>) {
    let (tx, out) = mpsc::unbounded_channel();
    let handle = tokio::spawn(async move {
        while let Some(event) = rx.recv().await {
            publisher.publish(&event);
            // A renderer gone means the process is ending; the watchers still get the end.
            let _ = tx.send(event);
        }
        drop(tx);
        publisher.close().await;
    });
    (out, handle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::line::events::{EventSink, PhoneRef};
    use tokio::io::AsyncBufReadExt;

    fn step(n: usize) -> EventKind {
        EventKind::Queued {
            phone: PhoneRef {
                udid: format!("U{n}"),
                slot: "A1".into(),
            },
        }
    }

    async fn lines(stream: UnixStream) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        let mut reader = tokio::io::BufReader::new(stream).lines();
        while let Ok(Ok(Some(line))) =
            tokio::time::timeout(Duration::from_secs(10), reader.next_line()).await
        {
            out.push(serde_json::from_str(&line).expect("json line"));
        }
        out
    }

    #[tokio::test]
    async fn a_watcher_that_never_reads_is_dropped_and_the_others_get_everything() {
        let dir = tempfile::tempdir().expect("dir");
        // A dead run's socket file is replaced.
        drop(std::os::unix::net::UnixListener::bind(socket_path(dir.path())).expect("stale"));
        let publisher = Publisher::bind(dir.path()).expect("bind");
        let mode = std::fs::metadata(socket_path(dir.path()))
            .expect("socket")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        let (sink, rx) = EventSink::channel();
        let (mut out, tee) = tee(rx, publisher);
        sink.send(EventKind::RunStarted {
            run_id: "r".into(),
            station_id: "s".into(),
            concurrency: 1,
            once: true,
        });
        sink.send(step(0));
        out.recv().await.expect("start");
        out.recv().await.expect("step");

        let path = socket_path(dir.path());
        let stalled = UnixStream::connect(&path).await.expect("stalled watcher");
        let reader = tokio::spawn(lines(UnixStream::connect(&path).await.expect("watcher")));
        // Let both be accepted before the flood.
        tokio::time::sleep(Duration::from_millis(200)).await;

        // Far more than a socket buffer and a queue hold: the line never waits for the
        // stalled watcher.
        let total = 2 + 20 * WATCHER_QUEUE;
        let flood = tokio::time::timeout(Duration::from_secs(20), async {
            for n in 1..total - 1 {
                sink.send(step(n));
                out.recv().await.expect("passed on");
                if n % 64 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        });
        flood.await.expect("the line is not held up by a watcher");
        drop(sink);
        tee.await.expect("tee");
        assert!(!path.exists(), "the socket is removed when the run ends");

        let seen = reader.await.expect("reader");
        assert_eq!(
            seen.first().map(|e| e["event"].clone()),
            Some("run_started".into())
        );
        let last = seen.last().expect("events");
        assert_eq!(last["udid"], format!("U{}", total - 2), "{last}");

        let stalled = lines(stalled).await;
        assert!(
            stalled.len() < total,
            "the stalled watcher was cut off ({} of {total})",
            stalled.len()
        );
    }

    #[tokio::test]
    async fn a_late_watcher_gets_run_started_even_after_the_replay_overflowed() {
        let dir = tempfile::tempdir().expect("dir");
        let publisher = Publisher::bind(dir.path()).expect("bind");
        let (sink, rx) = EventSink::channel();
        let (mut out, tee) = tee(rx, publisher);
        sink.send(EventKind::RunStarted {
            run_id: "r".into(),
            station_id: "s".into(),
            concurrency: 1,
            once: true,
        });
        for n in 0..REPLAY_LINES + 10 {
            sink.send(step(n));
        }
        for _ in 0..REPLAY_LINES + 11 {
            out.recv().await.expect("passed on");
        }
        let reader = tokio::spawn(lines(
            UnixStream::connect(socket_path(dir.path()))
                .await
                .expect("watcher"),
        ));
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(sink);
        tee.await.expect("tee");
        let seen = reader.await.expect("reader");
        assert_eq!(seen.len(), REPLAY_LINES + 1);
        assert_eq!(seen[0]["event"], "run_started");
        assert_eq!(seen[1]["udid"], "U10", "the oldest events went first");
    }
}
