//! One FunctionFS function: its `ep0` (descriptors, strings, then events and SETUP
//! requests) and, for the mux interface, the two bulk endpoints as a pipe.
//!
//! FunctionFS files block (a read on an endpoint waits until the host sends, or until the
//! function is enabled), so each runs on a thread of its own and talks to the async side
//! through channels.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::descriptors::{self, flags, Direction, Event, Interface, EVENT_SIZE};
use super::GadgetError;

/// What the mux side of a gadget phone sees of its USB connection.
#[derive(Debug, PartialEq, Eq)]
pub enum PipeEvent {
    /// The host chose a configuration holding the mux interface: a new session starts.
    Connected,
    /// One bulk OUT transfer as the host sent it (one mux packet, docs/protocol.md §2.4).
    Transfer(Vec<u8>),
    /// The configuration went away (unplug, reset, another configuration): the session
    /// is over.
    Disconnected,
}

/// A mounted FunctionFS instance with its descriptors written.
pub struct FunctionFs {
    pub instance: String,
    pub mount: PathBuf,
    /// Set before an unbind that is meant to end the function: its threads stop.
    stopping: Arc<AtomicBool>,
}

/// Largest bulk OUT transfer read at once: usbmuxd's largest packet (`USB_MTU`, §2.4).
pub const MAX_TRANSFER: usize = 49152;

impl FunctionFs {
    /// Mounts FunctionFS instance `instance` at `mount`, writes the descriptors and strings
    /// of `interface`, and starts answering ep0. `events` (for the mux interface) gets
    /// Connected/Disconnected from ep0 and the transfers from the OUT endpoint.
    pub fn start(
        instance: &str,
        mount: &Path,
        interface: Interface,
        events: Option<mpsc::Sender<PipeEvent>>,
        udc_speed_file: PathBuf,
    ) -> Result<(FunctionFs, Option<BulkWriter>), GadgetError> {
        std::fs::create_dir_all(mount).map_err(|e| GadgetError::io("create", mount, e))?;
        rustix::mount::mount(
            instance,
            mount,
            "functionfs",
            rustix::mount::MountFlags::empty(),
            None,
        )
        .map_err(|e| GadgetError::io("mount functionfs on", mount, e.into()))?;
        let ep0_path = mount.join("ep0");
        let mut ep0 = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&ep0_path)
            .map_err(|e| GadgetError::io("open", &ep0_path, e))?;
        // Each blob must arrive in one write: FunctionFS parses per write.
        let blob =
            descriptors::descriptors_blob(&interface, flags::ALL_CTRL_RECIP | flags::CONFIG0_SETUP);
        write_once(&mut ep0, &blob)
            .map_err(|e| GadgetError::io("write descriptors to", &ep0_path, e))?;
        let strings = descriptors::strings_blob(&[interface.name.as_str()]);
        write_once(&mut ep0, &strings)
            .map_err(|e| GadgetError::io("write strings to", &ep0_path, e))?;

        let stopping = Arc::new(AtomicBool::new(false));
        let mut writer = None;
        if let Some(events) = &events {
            let (out_name, in_name) = match (
                interface.endpoint_file(Direction::Out),
                interface.endpoint_file(Direction::In),
            ) {
                (Some(o), Some(i)) => (o, i),
                _ => {
                    return Err(GadgetError::Setup(format!(
                        "{instance}: the mux interface needs a bulk IN and a bulk OUT endpoint"
                    )))
                }
            };
            let out_path = mount.join(out_name);
            let from_host =
                File::open(&out_path).map_err(|e| GadgetError::io("open", &out_path, e))?;
            let in_path = mount.join(in_name);
            // O_NONBLOCK: a write while the host has the interface disabled (unplugged,
            // unbound) fails with EAGAIN instead of waiting in the kernel for the next enable
            // and then sending the ended session's bytes to a new host session, which a real
            // phone, starting its mux afresh on every enumeration, never does. A write on an
            // enabled endpoint still waits for the host to take it (FunctionFS applies the
            // flag only to the wait for the endpoint, ffs_epfile_io in drivers/usb/gadget/
            // function/f_fs.c).
            let to_host = OpenOptions::new()
                .write(true)
                .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
                .open(&in_path)
                .map_err(|e| GadgetError::io("open", &in_path, e))?;
            spawn_reader(instance, from_host, events.clone(), stopping.clone())?;
            writer = Some(BulkWriter {
                to_host: Arc::new(to_host),
                udc_speed_file: Arc::new(udc_speed_file),
            });
        }
        spawn_ep0(instance, ep0, events, stopping.clone())?;
        Ok((
            FunctionFs {
                instance: instance.to_string(),
                mount: mount.to_path_buf(),
                stopping,
            },
            writer,
        ))
    }

    /// Tells the threads to end at their next wake-up (the unbind that follows wakes them).
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }
}

fn write_once(file: &mut File, bytes: &[u8]) -> std::io::Result<()> {
    let n = file.write(bytes)?;
    if n != bytes.len() {
        return Err(std::io::Error::other(format!(
            "short write: {n} of {} bytes",
            bytes.len()
        )));
    }
    Ok(())
}

fn spawn_ep0(
    instance: &str,
    mut ep0: File,
    events: Option<mpsc::Sender<PipeEvent>>,
    stopping: Arc<AtomicBool>,
) -> Result<(), GadgetError> {
    let name = instance.to_string();
    std::thread::Builder::new()
        .name(format!("ep0-{instance}"))
        .spawn(move || {
            let mut buf = [0u8; EVENT_SIZE * 4];
            loop {
                // Wait in poll(), not in read(): a read waiting for events holds the
                // function's mutex, which the kernel's unbind needs after it queued the
                // UNBIND event, so a read issued right after an event deadlocks the unbind
                // (and with it the UDC write of an unplug).
                match wait_readable(&ep0) {
                    Ok(true) => {}
                    Ok(false) if stopping.load(Ordering::SeqCst) => return,
                    Ok(false) => continue,
                    Err(e) => {
                        if !stopping.load(Ordering::SeqCst) {
                            tracing::warn!(function = %name, error = %e, "ep0 poll failed; function stops");
                        }
                        return;
                    }
                }
                let n = match ep0.read(&mut buf) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        if !stopping.load(Ordering::SeqCst) {
                            tracing::warn!(function = %name, error = %e, "ep0 read failed; function stops");
                        }
                        return;
                    }
                };
                for chunk in buf[..n].chunks_exact(EVENT_SIZE) {
                    let mut raw = [0u8; EVENT_SIZE];
                    raw.copy_from_slice(chunk);
                    let event = Event::parse(&raw);
                    tracing::debug!(function = %name, ?event, "FunctionFS event");
                    match event {
                        Event::Enable => send(&events, PipeEvent::Connected),
                        Event::Disable | Event::Unbind => {
                            send(&events, PipeEvent::Disconnected);
                            if stopping.load(Ordering::SeqCst) && event == Event::Unbind {
                                return;
                            }
                        }
                        Event::Setup(req) => answer_setup(&name, &mut ep0, &req),
                        _ => {}
                    }
                }
            }
        })
        .map_err(|e| GadgetError::Setup(format!("cannot start a thread for {instance}: {e}")))?;
    Ok(())
}

/// Waits up to a second for ep0 to have events; `Ok(false)` when none came (so a stopping
/// function notices its flag).
fn wait_readable(ep0: &File) -> std::io::Result<bool> {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let mut fds = [PollFd::new(ep0, PollFlags::IN)];
    let timeout = Timespec {
        tv_sec: 1,
        tv_nsec: 0,
    };
    match poll(&mut fds, Some(&timeout)) {
        Ok(n) => Ok(n > 0 && fds[0].revents().contains(PollFlags::IN)),
        Err(rustix::io::Errno::INTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn send(events: &Option<mpsc::Sender<PipeEvent>>, event: PipeEvent) {
    if let Some(tx) = events {
        // The receiver gone means the gadget is being taken down: nothing to tell.
        let _ = tx.blocking_send(event);
    }
}

/// The data stage (or the stall) of a SETUP request that reached the function.
fn answer_setup(name: &str, ep0: &mut File, req: &descriptors::ControlRequest) {
    let answer = descriptors::vendor_answer(req);
    tracing::info!(function = %name, request_type = format_args!("{:#04x}", req.request_type),
        request = format_args!("{:#04x}", req.request), index = req.index, length = req.length,
        answered = answer.is_some(), "control request");
    let result = match (answer, req.is_in()) {
        (Some(data), true) => ep0.write(&data).map(drop),
        // An OUT request we accept: reading its (empty) data stage acknowledges it.
        (Some(_), false) => ep0.read(&mut []).map(drop),
        // Stall: the opposite direction of the request's own (functionfs.h: "for a
        // stall, do a read for IN and a write for OUT").
        (None, true) => ep0.read(&mut []).map(drop),
        (None, false) => ep0.write(&[]).map(drop),
    };
    if let Err(e) = result {
        // A stall reports EL2HLT: that is the stall happening, not a failure.
        if e.raw_os_error() != Some(rustix::io::Errno::L2HLT.raw_os_error()) {
            tracing::debug!(function = %name, error = %e, "answering a control request failed");
        }
    }
}

fn spawn_reader(
    instance: &str,
    mut from_host: File,
    events: mpsc::Sender<PipeEvent>,
    stopping: Arc<AtomicBool>,
) -> Result<(), GadgetError> {
    let name = instance.to_string();
    std::thread::Builder::new()
        .name(format!("out-{instance}"))
        .spawn(move || {
            let mut buf = vec![0u8; MAX_TRANSFER];
            loop {
                // Blocks until the host sends, or until the function is enabled.
                match from_host.read(&mut buf) {
                    Ok(n) => {
                        if events
                            .blocking_send(PipeEvent::Transfer(buf[..n].to_vec()))
                            .is_err()
                        {
                            return;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        if stopping.load(Ordering::SeqCst) {
                            return;
                        }
                        // ESHUTDOWN when the configuration goes away mid-read: the session
                        // ends; the next read waits for the function to be enabled again.
                        tracing::debug!(function = %name, error = %e, "bulk OUT read ended");
                        if events.blocking_send(PipeEvent::Disconnected).is_err() {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
        })
        .map_err(|e| GadgetError::Setup(format!("cannot start a thread for {instance}: {e}")))?;
    Ok(())
}

/// The bulk IN side of the mux interface (device to host): each
/// [`BulkWriter::write_transfer`] is one USB transfer; an empty one is a zero-length packet
/// (the mux driver adds those where docs/protocol.md §2.4 wants them).
#[derive(Debug, Clone)]
pub struct BulkWriter {
    to_host: Arc<File>,
    /// sysfs `current_speed` of the UDC the gadget is on.
    udc_speed_file: Arc<PathBuf>,
}

/// How long one bulk IN transfer may wait for the host to take it (the mux driver has a
/// shorter limit of its own; this one frees the caller if the kernel never answers).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

impl BulkWriter {
    /// The bulk packet size at the speed the UDC runs now.
    pub fn max_packet_size(&self) -> usize {
        let speed = std::fs::read_to_string(&*self.udc_speed_file).unwrap_or_default();
        match speed.trim() {
            "full-speed" => usize::from(descriptors::FULL_SPEED_BULK_PACKET),
            _ => usize::from(descriptors::HIGH_SPEED_BULK_PACKET),
        }
    }

    /// Sends `data` as one transfer (empty: a zero-length packet).
    pub async fn write_transfer(&self, data: Vec<u8>) -> std::io::Result<()> {
        let file = self.to_host.clone();
        let job = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            // One write() is one transfer; FunctionFS never splits or merges them.
            let n = (&*file).write(&data)?;
            if n != data.len() {
                return Err(std::io::Error::other(format!(
                    "short bulk write: {n} of {}",
                    data.len()
                )));
            }
            Ok(())
        });
        match tokio::time::timeout(WRITE_TIMEOUT, job).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(std::io::Error::other(join.to_string())),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the host took no bulk IN transfer in time",
            )),
        }
    }
}
