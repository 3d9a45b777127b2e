//! The mux over real (or in-memory) bulk endpoints, on tokio: every mux connection is a
//! [`MuxStream`] (`AsyncRead + AsyncWrite`), so lockdown, pairing, TLS and the services run
//! over it as they run over a usbmuxd socket.
//!
//! Two tasks per device: the reader feeds completed bulk-IN transfers ([`BulkIn`]) into the
//! [`Mux`]; the writer sends what the mux has to send as bulk-OUT transfers ([`BulkOut`]),
//! each followed by a zero-length transfer when its length is a multiple of the endpoint's
//! packet size (docs/protocol.md §2.4). Streams read from and write into the mux's
//! per-connection buffers, which are bounded: a peer that stops reading stops the writer
//! (§2.8 flow control), never memory.
//!
//! The same driver serves both ends: [`MuxDriver::host`] for the station (nusb endpoints),
//! [`MuxDriver::device`] for the simulator (FunctionFS endpoints), [`memory::pipe`] for
//! tests.

pub mod memory;

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, oneshot, watch, Notify};

use super::wire::needs_zlp;
use super::{ConnId, Mux, MuxConfig, MuxEvent, MuxVersion, Recv, UsbMuxError};

/// The bulk-IN side of a mux interface.
pub trait BulkIn: Send + 'static {
    /// The next completed transfer. Implementations keep several transfers pending so the
    /// phone never waits for us (§2.4); a zero-length transfer is a valid result.
    fn read_transfer(&mut self) -> impl Future<Output = io::Result<Vec<u8>>> + Send;

    /// Size of each transfer buffer: a transfer shorter than this ended a packet.
    fn transfer_size(&self) -> usize;
}

/// The bulk-OUT side of a mux interface.
pub trait BulkOut: Send + 'static {
    /// Sends `data` as one transfer; an empty `data` is a zero-length packet.
    fn write_transfer(&mut self, data: Vec<u8>) -> impl Future<Output = io::Result<()>> + Send;

    /// `wMaxPacketSize` of the endpoint (512 high speed, 1024 super speed).
    fn max_packet_size(&self) -> usize;
}

#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// A bulk-OUT transfer that does not complete in this time means the device is gone or
    /// wedged: the link fails.
    pub transfer_timeout: Duration,
    /// Device end: the version to answer VERSION with.
    pub device_version: MuxVersion,
    /// Device end: connections waiting for the application before new ones are refused.
    pub accept_backlog: usize,
}

impl Default for DriverConfig {
    fn default() -> Self {
        DriverConfig {
            transfer_timeout: Duration::from_secs(5),
            device_version: MuxVersion::V2,
            accept_backlog: 32,
        }
    }
}

/// Why a mux operation failed. Cloneable: one link failure reaches every waiter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DriverError {
    #[error("USB transfer failed: {message}")]
    Transport {
        kind: io::ErrorKind,
        message: String,
    },
    #[error("mux protocol error: {0}")]
    Protocol(#[from] UsbMuxError),
    #[error("the device refused a connection to port {port}{}", reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
    Refused { port: u16, reason: Option<String> },
    #[error("{what} did not finish within {after:?}")]
    Timeout { what: &'static str, after: Duration },
    #[error("the mux driver was shut down")]
    Shutdown,
}

impl DriverError {
    fn transport(error: &io::Error) -> Self {
        DriverError::Transport {
            kind: error.kind(),
            message: error.to_string(),
        }
    }

    /// Whether the transport says the device went away (unplugged), as opposed to a fault.
    pub fn is_disconnect(&self) -> bool {
        matches!(
            self,
            DriverError::Transport {
                kind: io::ErrorKind::NotConnected,
                ..
            }
        )
    }

    fn to_io(&self) -> io::Error {
        let kind = match self {
            DriverError::Transport { kind, .. } => *kind,
            DriverError::Timeout { .. } => io::ErrorKind::TimedOut,
            DriverError::Refused { .. } => io::ErrorKind::ConnectionRefused,
            DriverError::Protocol(_) | DriverError::Shutdown => io::ErrorKind::ConnectionAborted,
        };
        io::Error::new(kind, self.clone())
    }
}

/// Counters for diagnostics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DriverStats {
    /// Packets thrown away as malformed (each also logged).
    pub dropped_packets: u64,
    pub open_connections: usize,
}

struct State {
    mux: Mux,
    readers: HashMap<ConnId, Waker>,
    writers: HashMap<ConnId, Waker>,
    connecting: HashMap<ConnId, oneshot::Sender<Result<(), DriverError>>>,
    resets: HashMap<ConnId, String>,
    incoming: Option<mpsc::Sender<IncomingConnection>>,
    failure: Option<DriverError>,
    dropped_packets: u64,
}

struct Shared {
    state: Mutex<State>,
    /// The writer task has something to send.
    wake_writer: Notify,
    ready: watch::Sender<Option<Result<MuxVersion, DriverError>>>,
    shutdown: watch::Sender<bool>,
    /// Handed to incoming connections so they keep the driver alive.
    lifetime: Mutex<Weak<Lifetime>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Acts on every event the last mux call produced.
    fn dispatch(self: &Arc<Self>, state: &mut State) {
        while let Some(event) = state.mux.poll_event() {
            match event {
                MuxEvent::Ready { version } => {
                    self.ready.send_replace(Some(Ok(version)));
                }
                MuxEvent::Failed(error) => self.fail(state, DriverError::Protocol(error)),
                MuxEvent::Connected(id) => {
                    if let Some(tx) = state.connecting.remove(&id) {
                        let _ = tx.send(Ok(()));
                    }
                }
                MuxEvent::Refused { id, reason } => {
                    if let Some(tx) = state.connecting.remove(&id) {
                        let _ = tx.send(Err(DriverError::Refused {
                            port: id.remote_port,
                            reason,
                        }));
                    }
                }
                MuxEvent::Incoming(id) => self.offer(state, id),
                MuxEvent::Readable(id) => wake(&mut state.readers, id),
                MuxEvent::Writable(id) => wake(&mut state.writers, id),
                MuxEvent::Reset { id, reason } => {
                    tracing::debug!(conn = %id, %reason, "mux connection reset");
                    state.resets.insert(id, reason);
                    wake(&mut state.readers, id);
                    wake(&mut state.writers, id);
                }
                MuxEvent::Control { kind, text } => match kind {
                    3 => tracing::warn!(%text, "device mux error"),
                    5 => tracing::info!(%text, "device mux warning"),
                    _ => tracing::debug!(kind, %text, "device mux information"),
                },
                MuxEvent::Dropped(error) => {
                    state.dropped_packets += 1;
                    tracing::warn!(%error, "dropped a malformed mux packet");
                }
            }
        }
    }

    /// Device end: hands a new connection to the application, or refuses it when nobody
    /// takes connections or too many wait.
    fn offer(self: &Arc<Self>, state: &mut State, id: ConnId) {
        let lifetime = self
            .lifetime
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .upgrade();
        let (Some(tx), Some(lifetime)) = (state.incoming.as_ref(), lifetime) else {
            let _ = state.mux.refuse(id);
            return;
        };
        let conn = IncomingConnection {
            id,
            shared: self.clone(),
            lifetime: Some(lifetime),
        };
        if let Err(err) = tx.try_send(conn) {
            // Dropping the connection refuses it, but we hold the lock: refuse here and
            // disarm the drop.
            let mut conn = match err {
                mpsc::error::TrySendError::Full(c) | mpsc::error::TrySendError::Closed(c) => c,
            };
            conn.lifetime = None;
            tracing::warn!(
                port = id.local_port,
                "no room for another connection; refused"
            );
            let _ = state.mux.refuse(id);
        }
    }

    fn fail(&self, state: &mut State, error: DriverError) {
        if state.failure.is_none() {
            // Our own shutdown and an unplugged phone are how links end, not failures worth
            // a warning.
            if matches!(error, DriverError::Shutdown) {
                tracing::debug!("mux link shut down");
            } else if error.is_disconnect() {
                tracing::info!(%error, "mux link ended: the device is gone");
            } else {
                tracing::warn!(%error, "mux link failed");
            }
            state.failure = Some(error.clone());
        }
        for (_, tx) in state.connecting.drain() {
            let _ = tx.send(Err(error.clone()));
        }
        for (_, waker) in state.readers.drain().chain(state.writers.drain()) {
            waker.wake();
        }
        state.incoming = None;
        self.ready.send_if_modified(|ready| {
            if ready.is_none() {
                *ready = Some(Err(error.clone()));
                true
            } else {
                false
            }
        });
        self.shutdown.send_replace(true);
    }
}

fn wake(wakers: &mut HashMap<ConnId, Waker>, id: ConnId) {
    if let Some(waker) = wakers.remove(&id) {
        waker.wake();
    }
}

/// Stops the tasks when the last handle, stream or pending connection is gone.
struct Lifetime {
    shared: Arc<Shared>,
}

impl Drop for Lifetime {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        self.shared.fail(&mut state, DriverError::Shutdown);
    }
}

/// Starts mux drivers on a pair of bulk endpoints.
pub struct MuxDriver;

impl MuxDriver {
    /// The station's end: sends VERSION at once; [`MuxHandle::connect`] opens connections.
    /// Must be called inside a tokio runtime.
    pub fn host<I: BulkIn, O: BulkOut>(input: I, output: O, config: DriverConfig) -> MuxHandle {
        let mux = Mux::host(MuxConfig {
            in_transfer_size: input.transfer_size(),
            device_version: config.device_version,
        });
        Self::start(mux, None, input, output, config)
    }

    /// The phone's end: answers bring-up; connections arrive through [`Incoming`].
    pub fn device<I: BulkIn, O: BulkOut>(
        input: I,
        output: O,
        config: DriverConfig,
    ) -> (MuxHandle, Incoming) {
        let mux = Mux::device(MuxConfig {
            in_transfer_size: input.transfer_size(),
            device_version: config.device_version,
        });
        let (tx, rx) = mpsc::channel(config.accept_backlog.max(1));
        let handle = Self::start(mux, Some(tx), input, output, config);
        let incoming = Incoming {
            rx,
            _lifetime: handle.lifetime.clone(),
        };
        (handle, incoming)
    }

    fn start<I: BulkIn, O: BulkOut>(
        mux: Mux,
        incoming: Option<mpsc::Sender<IncomingConnection>>,
        input: I,
        output: O,
        config: DriverConfig,
    ) -> MuxHandle {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                mux,
                readers: HashMap::new(),
                writers: HashMap::new(),
                connecting: HashMap::new(),
                resets: HashMap::new(),
                incoming,
                failure: None,
                dropped_packets: 0,
            }),
            wake_writer: Notify::new(),
            ready: watch::channel(None).0,
            shutdown: watch::channel(false).0,
            lifetime: Mutex::new(Weak::new()),
        });
        let lifetime = Arc::new(Lifetime {
            shared: shared.clone(),
        });
        *shared.lifetime.lock().unwrap_or_else(|p| p.into_inner()) = Arc::downgrade(&lifetime);
        tokio::spawn(read_loop(shared.clone(), input));
        tokio::spawn(write_loop(shared.clone(), output, config.transfer_timeout));
        MuxHandle { shared, lifetime }
    }
}

async fn read_loop<I: BulkIn>(shared: Arc<Shared>, mut input: I) {
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        let transfer = tokio::select! {
            transfer = input.read_transfer() => transfer,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let mut state = shared.lock();
        match transfer {
            Ok(data) => {
                state.mux.handle_transfer(&data);
                shared.dispatch(&mut state);
            }
            Err(error) => {
                shared.fail(&mut state, DriverError::transport(&error));
                return;
            }
        }
        drop(state);
        // Bring-up answers, ACKs and window updates may be due.
        shared.wake_writer.notify_one();
    }
}

async fn write_loop<O: BulkOut>(shared: Arc<Shared>, mut output: O, timeout: Duration) {
    let mut shutdown = shared.shutdown.subscribe();
    let max_packet_size = output.max_packet_size();
    loop {
        let packet = {
            let mut state = shared.lock();
            let packet = state.mux.poll_transmit();
            shared.dispatch(&mut state);
            packet
        };
        let Some(packet) = packet else {
            tokio::select! {
                _ = shared.wake_writer.notified() => continue,
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        };
        let zlp = needs_zlp(packet.len(), max_packet_size);
        let mut sent = send_within(&mut output, packet, timeout).await;
        if sent.is_ok() && zlp {
            sent = send_within(&mut output, Vec::new(), timeout).await;
        }
        if let Err(error) = sent {
            let mut state = shared.lock();
            shared.fail(&mut state, error);
            return;
        }
    }
}

async fn send_within<O: BulkOut>(
    output: &mut O,
    data: Vec<u8>,
    timeout: Duration,
) -> Result<(), DriverError> {
    match tokio::time::timeout(timeout, output.write_transfer(data)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(DriverError::transport(&error)),
        Err(_) => Err(DriverError::Timeout {
            what: "a bulk-OUT transfer",
            after: timeout,
        }),
    }
}

/// A running mux driver. Cheap to clone; when every handle, stream and incoming
/// connection is gone, the tasks stop and the endpoints are released.
#[derive(Clone)]
pub struct MuxHandle {
    shared: Arc<Shared>,
    lifetime: Arc<Lifetime>,
}

impl std::fmt::Debug for MuxHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MuxHandle")
            .field("stats", &self.stats())
            .finish()
    }
}

impl MuxHandle {
    /// Waits for bring-up (VERSION, SETUP).
    pub async fn ready(&self, timeout: Duration) -> Result<MuxVersion, DriverError> {
        let mut ready = self.shared.ready.subscribe();
        let waited = tokio::time::timeout(timeout, ready.wait_for(|r| r.is_some())).await;
        match waited {
            Ok(Ok(result)) => result.clone().unwrap_or(Err(DriverError::Shutdown)),
            Ok(Err(_)) => Err(DriverError::Shutdown),
            Err(_) => Err(DriverError::Timeout {
                what: "mux bring-up (VERSION)",
                after: timeout,
            }),
        }
    }

    /// Host end: a stream to `port` on the phone. `timeout` covers bring-up and the
    /// SYN/SYN|ACK exchange.
    pub async fn connect(&self, port: u16, timeout: Duration) -> Result<MuxStream, DriverError> {
        let started = tokio::time::Instant::now();
        self.ready(timeout).await?;
        let (id, answer) = {
            let mut state = self.shared.lock();
            if let Some(failure) = &state.failure {
                return Err(failure.clone());
            }
            let id = state.mux.connect(port)?;
            let (tx, rx) = oneshot::channel();
            state.connecting.insert(id, tx);
            (id, rx)
        };
        self.shared.wake_writer.notify_one();
        let left = timeout.saturating_sub(started.elapsed());
        let answer = tokio::time::timeout(left, answer).await;
        match answer {
            Ok(Ok(Ok(()))) => Ok(MuxStream::new(
                id,
                self.shared.clone(),
                self.lifetime.clone(),
            )),
            Ok(Ok(Err(error))) => Err(error),
            Ok(Err(_)) => Err(self.failure().unwrap_or(DriverError::Shutdown)),
            Err(_) => {
                let mut state = self.shared.lock();
                state.connecting.remove(&id);
                state.mux.abort(id);
                drop(state);
                self.shared.wake_writer.notify_one();
                Err(DriverError::Timeout {
                    what: "the connection handshake (SYN)",
                    after: timeout,
                })
            }
        }
    }

    /// Why the link is down, if it is.
    pub fn failure(&self) -> Option<DriverError> {
        self.shared.lock().failure.clone()
    }

    /// Resolves when the link is down (device gone, protocol failure, shut down).
    pub async fn closed(&self) -> DriverError {
        let mut shutdown = self.shared.shutdown.subscribe();
        let _ = shutdown.wait_for(|stop| *stop).await;
        self.failure().unwrap_or(DriverError::Shutdown)
    }

    pub fn stats(&self) -> DriverStats {
        let state = self.shared.lock();
        DriverStats {
            dropped_packets: state.dropped_packets,
            open_connections: state.mux.connection_count(),
        }
    }

    /// Stops the driver now: every stream fails, the endpoints are released.
    pub fn shutdown(&self) {
        let mut state = self.shared.lock();
        self.shared.fail(&mut state, DriverError::Shutdown);
    }
}

/// Device end: connections the host opens.
pub struct Incoming {
    rx: mpsc::Receiver<IncomingConnection>,
    _lifetime: Arc<Lifetime>,
}

impl Incoming {
    /// The next connection; `None` once the link is down.
    pub async fn next(&mut self) -> Option<IncomingConnection> {
        self.rx.recv().await
    }
}

/// A SYN waiting for an answer; dropping it refuses (RST), as a phone does for a port
/// nobody listens on.
pub struct IncomingConnection {
    id: ConnId,
    shared: Arc<Shared>,
    lifetime: Option<Arc<Lifetime>>,
}

impl std::fmt::Debug for IncomingConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IncomingConnection")
            .field("id", &self.id)
            .finish()
    }
}

impl IncomingConnection {
    /// The device port the host wants (62078 for lockdownd, or a service's port).
    pub fn port(&self) -> u16 {
        self.id.local_port
    }

    pub fn accept(mut self) -> Result<MuxStream, DriverError> {
        let Some(lifetime) = self.lifetime.take() else {
            return Err(DriverError::Shutdown);
        };
        let accepted = {
            let mut state = self.shared.lock();
            if let Some(failure) = &state.failure {
                Err(failure.clone())
            } else {
                state.mux.accept(self.id).map_err(DriverError::from)
            }
        };
        self.shared.wake_writer.notify_one();
        accepted.map(|()| MuxStream::new(self.id, self.shared.clone(), lifetime))
    }

    pub fn refuse(self) {
        // Drop does it.
    }
}

impl Drop for IncomingConnection {
    fn drop(&mut self) {
        if self.lifetime.take().is_some() {
            let mut state = self.shared.lock();
            let _ = state.mux.refuse(self.id);
            drop(state);
            self.shared.wake_writer.notify_one();
        }
    }
}

/// One mux connection as a byte stream. A reset by the peer reads as the end of the stream
/// (usbmuxd closes its client socket then); writing after it fails with
/// `ConnectionReset`. Dropping or shutting it down sends what is buffered, then RST.
pub struct MuxStream {
    id: ConnId,
    shared: Arc<Shared>,
    _lifetime: Arc<Lifetime>,
}

impl std::fmt::Debug for MuxStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MuxStream").field("id", &self.id).finish()
    }
}

impl MuxStream {
    fn new(id: ConnId, shared: Arc<Shared>, lifetime: Arc<Lifetime>) -> Self {
        MuxStream {
            id,
            shared,
            _lifetime: lifetime,
        }
    }

    pub fn id(&self) -> ConnId {
        self.id
    }

    /// Unread and unsent bytes held for this connection.
    pub fn buffered(&self) -> (usize, usize) {
        self.shared.lock().mux.buffered(self.id).unwrap_or((0, 0))
    }

    fn closed_error(&self, state: &State) -> io::Error {
        if let Some(failure) = &state.failure {
            return failure.to_io();
        }
        let reason = state
            .resets
            .get(&self.id)
            .cloned()
            .unwrap_or_else(|| "connection closed".into());
        io::Error::new(io::ErrorKind::ConnectionReset, reason)
    }
}

impl AsyncRead for MuxStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let mut state = this.shared.lock();
        let received = state.mux.recv(this.id, buf.initialize_unfilled());
        match received {
            Ok(Recv::Data(n)) => {
                buf.advance(n);
                drop(state);
                // What was read is acknowledged: the peer may send more.
                this.shared.wake_writer.notify_one();
                Poll::Ready(Ok(()))
            }
            Ok(Recv::Empty) => {
                if state.failure.is_some() {
                    return Poll::Ready(Err(this.closed_error(&state)));
                }
                state.readers.insert(this.id, cx.waker().clone());
                Poll::Pending
            }
            Ok(Recv::Closed) | Err(_) => match &state.failure {
                Some(failure) => Poll::Ready(Err(failure.to_io())),
                None => Poll::Ready(Ok(())),
            },
        }
    }
}

impl AsyncWrite for MuxStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let mut state = this.shared.lock();
        if state.failure.is_some() {
            return Poll::Ready(Err(this.closed_error(&state)));
        }
        match state.mux.send(this.id, data) {
            Ok(0) => {
                state.writers.insert(this.id, cx.waker().clone());
                Poll::Pending
            }
            Ok(n) => {
                drop(state);
                this.shared.wake_writer.notify_one();
                Poll::Ready(Ok(n))
            }
            Err(_) => Poll::Ready(Err(this.closed_error(&state))),
        }
    }

    /// Done when every byte written went into a packet.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let mut state = this.shared.lock();
        if state.mux.unsent(this.id) == 0 {
            return Poll::Ready(Ok(()));
        }
        if state.failure.is_some() || !state.mux.is_open(this.id) {
            return Poll::Ready(Err(this.closed_error(&state)));
        }
        state.writers.insert(this.id, cx.waker().clone());
        drop(state);
        this.shared.wake_writer.notify_one();
        Poll::Pending
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.as_mut().poll_flush(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) if e.kind() != io::ErrorKind::ConnectionReset => {
                return Poll::Ready(Err(e))
            }
            Poll::Ready(_) => {}
        }
        let this = self.get_mut();
        this.shared.lock().mux.close(this.id);
        this.shared.wake_writer.notify_one();
        Poll::Ready(Ok(()))
    }
}

impl Drop for MuxStream {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.mux.close(self.id);
        state.readers.remove(&self.id);
        state.writers.remove(&self.id);
        state.resets.remove(&self.id);
        drop(state);
        self.shared.wake_writer.notify_one();
    }
}

#[cfg(test)]
mod tests;
