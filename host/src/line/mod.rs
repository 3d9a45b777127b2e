//! Line mode: every phone plugged into the bench gets the activation workflow, under a
//! concurrency limit, with unplug/replug handled, transient failures retried, each outcome
//! committed to the ledger before it is shown, and a summary at the end.

pub mod board;
pub mod events;
#[cfg(test)]
mod ledger_pause_tests;
pub mod metrics;
pub mod publish;
pub mod render;
pub mod runner;
pub mod screen;
#[cfg(test)]
mod settle_tests;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use station_protocol::usbmux::{DeviceInfo, Event as UsbEvent};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

use crate::activation::{ActivationReport, ActivationServer, Activator, Observer, Outcome, Step};
use crate::codes::CodeLookup;
use crate::error::StationError;
use crate::http::RetryPolicy;
use crate::lockstate::ManagementState;
use crate::phone::Bench;
use events::{Attention, EventKind, EventSink, PhoneRef, Summary};
use station_protocol::models::marketing_name;

use crate::ledger::{AttemptId, AttemptStart, Ledger, LedgerError};
use crate::storage::StorageProblem;

/// While the ledger cannot take writes, the line looks again this often.
const LEDGER_RECHECK: Duration = Duration::from_secs(2);

/// While usbmuxd is away the line retries after this, doubling up to [`RECONNECT_MAX`].
const RECONNECT_FIRST: Duration = Duration::from_millis(500);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// The durable record of attempts (the ledger). `finish` must be durable when it returns:
/// the line shows an outcome only after that.
pub trait AttemptLog: Send + Sync {
    fn begin<'a>(
        &'a self,
        phone: &'a PhoneRef,
        location_id: u32,
    ) -> BoxFuture<'a, Result<AttemptId, LedgerError>>;
    /// Fire-and-forget progress (current step, identity); losing one is harmless.
    fn step(&self, id: AttemptId, step: Step);
    fn identified(
        &self,
        id: AttemptId,
        serial: &str,
        product_type: Option<&str>,
        product_version: Option<&str>,
    );
    fn finish<'a>(
        &'a self,
        id: AttemptId,
        report: &'a ActivationReport,
    ) -> BoxFuture<'a, Result<(), LedgerError>>;
    /// Whether the ledger's storage can take a new attempt now (free space, a writable
    /// filesystem); asked before every phone is started.
    fn storage(&self) -> Result<(), StorageProblem> {
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct LineOptions {
    pub run_id: String,
    pub station_id: String,
    /// Handle the phones attached now and stop.
    pub once: bool,
    /// Work on a phone again when it is replugged after it was handled in this run.
    pub redo: bool,
    pub concurrency: usize,
    /// Attempts per phone for retryable failures, and the backoff between them.
    pub retry: RetryPolicy,
    pub trust_wait: Duration,
    /// `--once`: how long an unplugged phone (or usbmuxd) may stay away before its phones
    /// count as interrupted.
    pub replug_grace: Duration,
}

/// Ctrl-C once: finish what is in flight, take nothing new. Twice: stop now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Shutdown {
    Running,
    Drain,
    Abort,
}

pub struct Line {
    pub bench: Arc<Bench>,
    pub server: Arc<ActivationServer>,
    pub codes: Arc<dyn CodeLookup>,
    pub log: Arc<dyn AttemptLog>,
    pub slots: Arc<crate::slots::Slots>,
    pub events: EventSink,
    pub options: LineOptions,
}

#[derive(Debug)]
enum Status {
    Queued,
    Running {
        cancel: Option<oneshot::Sender<Cut>>,
    },
    /// Retry after this instant.
    Waiting(tokio::time::Instant),
    /// Pulled out mid-way (or before its turn); resumes when plugged back.
    Unplugged {
        since: tokio::time::Instant,
    },
    Done(Outcome),
}

/// Why a worker was cut short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    Unplugged,
    UsbmuxdGone,
    /// The operator stopped the run at once.
    Aborted,
}

/// The line's connection to usbmuxd.
enum Usb {
    Connected(mpsc::UnboundedReceiver<Result<UsbEvent, StationError>>),
    /// Gone since `since`; the next attempt is at `retry_at`, the one after `backoff` later.
    Lost {
        since: tokio::time::Instant,
        retry_at: tokio::time::Instant,
        backoff: Duration,
    },
}

#[derive(Debug)]
struct PhoneState {
    device: DeviceInfo,
    /// usbmuxd lists it now (`device.device_id` is only meaningful then: a new daemon
    /// numbers its phones afresh).
    attached: bool,
    /// Counts its attachments: a worker that ends `interrupted` while the phone is
    /// attached again under a newer one has its phone resumed.
    plugs: u64,
    phone: PhoneRef,
    status: Status,
    attempts: u32,
    serial: Option<String>,
    last: Option<ActivationReport>,
}

/// What the line keeps of a phone that is done with and gone (its outcome committed, the
/// phone unplugged): enough for the summary, for "already done" when it comes back and for
/// resuming it, and no more. A phone's full state (its `DeviceInfo`, last report, …) is about
/// a kilobyte; this is a tenth of it for a phone that ended well, so a long service run's
/// memory no longer grows with every phone it ever saw (issue 13, docs/testing.md "Soak").
#[derive(Debug)]
struct Settled {
    /// `Some`: it was done; `None`: it was pulled out before it was, and resumes when it is
    /// plugged back.
    done: Option<Outcome>,
    /// The outcome the summary gives it.
    outcome: Outcome,
    /// For an outcome that needs attention: what the summary's attention list shows.
    attention: Option<Box<SettledAttention>>,
}

#[derive(Debug)]
struct SettledAttention {
    slot: String,
    serial: Option<String>,
    message: String,
}

/// The line's phones: those it is working on, waiting for or that are still plugged in
/// (`live`, in full), and those done with and gone (`settled`, compact).
#[derive(Debug, Default)]
struct Phones {
    live: BTreeMap<String, PhoneState>,
    settled: BTreeMap<String, Settled>,
}

impl std::ops::Deref for Phones {
    type Target = BTreeMap<String, PhoneState>;
    fn deref(&self) -> &Self::Target {
        &self.live
    }
}

impl std::ops::DerefMut for Phones {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.live
    }
}

impl Phones {
    /// Moves the phones that are done with and unplugged out of `live`. A phone pulled out
    /// mid-way is settled too in a service run (it resumes when plugged back); with `--once`
    /// it stays, as its replug grace is timed from `live`.
    fn settle(&mut self, once: bool) {
        let gone: Vec<String> = self
            .live
            .iter()
            .filter(|(_, p)| {
                !p.attached
                    && match p.status {
                        Status::Done(_) => true,
                        Status::Unplugged { .. } => !once,
                        _ => false,
                    }
            })
            .map(|(udid, _)| udid.clone())
            .collect();
        for udid in gone {
            if let Some(state) = self.live.remove(&udid) {
                let (outcome, message) = summary_outcome(&state);
                let done = match state.status {
                    Status::Done(outcome) => Some(outcome),
                    _ => None,
                };
                let attention = (!outcome.is_success()).then(|| {
                    Box::new(SettledAttention {
                        slot: state.phone.slot,
                        serial: state.serial,
                        message,
                    })
                });
                self.settled.insert(
                    udid,
                    Settled {
                        done,
                        outcome,
                        attention,
                    },
                );
            }
        }
    }

    /// A settled phone seen again (plugged back, or listed by usbmuxd once it is back): its
    /// full state again, detached, as it was when it was settled.
    fn restore(&mut self, device: &DeviceInfo, phone: PhoneRef) {
        let Some(settled) = self.settled.remove(&device.udid) else {
            return;
        };
        let (serial, message) = match settled.attention {
            Some(a) => (a.serial, a.message),
            None => (None, String::new()),
        };
        let mut last = interrupted_report(device, Cut::Unplugged, Step::Pair, Duration::ZERO);
        last.outcome = settled.outcome;
        last.message = message;
        last.serial.clone_from(&serial);
        last.step = None;
        self.live.insert(
            device.udid.clone(),
            PhoneState {
                device: device.clone(),
                attached: false,
                plugs: 0,
                phone,
                status: match settled.done {
                    Some(outcome) => Status::Done(outcome),
                    None => Status::Unplugged {
                        since: tokio::time::Instant::now(),
                    },
                },
                attempts: 0,
                serial,
                last: Some(last),
            },
        );
    }

    /// Every phone of the run, live or settled.
    fn count(&self) -> usize {
        self.live.len() + self.settled.len()
    }

    /// Phones per outcome, and the attention list in UDID order, as the summary gives them.
    fn tally(&self) -> (BTreeMap<String, usize>, Vec<Attention>) {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        let mut attention = Vec::new();
        for (udid, settled) in &self.settled {
            *counts
                .entry(crate::output::wire_name(&settled.outcome))
                .or_default() += 1;
            if let Some(a) = &settled.attention {
                attention.push(Attention {
                    phone: PhoneRef {
                        udid: udid.clone(),
                        slot: a.slot.clone(),
                    },
                    serial: a.serial.clone(),
                    outcome: settled.outcome,
                    message: a.message.clone(),
                });
            }
        }
        for state in self.live.values() {
            let (outcome, message) = summary_outcome(state);
            *counts
                .entry(crate::output::wire_name(&outcome))
                .or_default() += 1;
            if !outcome.is_success() {
                attention.push(Attention {
                    phone: state.phone.clone(),
                    serial: state.serial.clone(),
                    outcome,
                    message,
                });
            }
        }
        // In UDID order, as one map of every phone gave it.
        attention.sort_by(|a, b| a.phone.udid.cmp(&b.phone.udid));
        (counts, attention)
    }
}

/// The outcome and message the summary gives a phone in its current state.
fn summary_outcome(state: &PhoneState) -> (Outcome, String) {
    let (outcome, message) = match (&state.status, &state.last) {
        (_, Some(report)) => (report.outcome, report.message.clone()),
        (Status::Done(outcome), None) => (*outcome, "not started: the run was stopped".to_string()),
        _ => (
            Outcome::Interrupted,
            "not started: the run was stopped".to_string(),
        ),
    };
    let outcome = match state.status {
        Status::Done(done) => done,
        _ => outcome,
    };
    (outcome, message)
}

struct Finished {
    udid: String,
    /// `PhoneState::plugs` when the worker started.
    plug: u64,
    report: ActivationReport,
    ledger: LedgerFate,
}

/// What the ledger made of a worker's attempt.
enum LedgerFate {
    Committed,
    /// The attempt could not be begun: the phone was not touched and goes back to the
    /// queue.
    NotBegun(LedgerError),
    /// The outcome could not be committed: it is kept and committed once the ledger
    /// takes writes again.
    Uncommitted(AttemptId, LedgerError),
}

/// The line takes no new phone while the ledger cannot take writes (docs/errors.md,
/// `ledger-full`, `ledger-read-only`).
struct LedgerPause {
    since: tokio::time::Instant,
    recheck_at: tokio::time::Instant,
    /// Outcomes to commit before the line resumes.
    uncommitted: Vec<(AttemptId, ActivationReport)>,
}

impl Line {
    fn phone_ref(&self, device: &DeviceInfo) -> PhoneRef {
        PhoneRef {
            udid: device.udid.clone(),
            slot: self.slots.slot(device).label,
        }
    }

    /// Runs until `--once` is done or the operator stops it; returns the summary (also
    /// sent as the last event).
    pub async fn run(
        self,
        mut shutdown: watch::Receiver<Shutdown>,
    ) -> Result<Summary, StationError> {
        let started = Instant::now();
        let line = Arc::new(self);
        let options = &line.options;
        line.events.send(EventKind::RunStarted {
            run_id: options.run_id.clone(),
            station_id: options.station_id.clone(),
            concurrency: options.concurrency,
            once: options.once,
        });

        let mut phones = Phones::default();
        let mut queue: VecDeque<String> = VecDeque::new();
        let mut workers: JoinSet<Finished> = JoinSet::new();
        let mut stop = Shutdown::Running;
        let mut pause: Option<LedgerPause> = None;

        // The initial inventory, then the live event stream (whose first Attached events
        // repeat it; they are recognised by DeviceID). `--once` needs usbmuxd at start; a
        // service waits for it (Debian's usbmuxd only runs while a phone is attached).
        let mut usb = match connect_usbmuxd(&line.bench).await {
            Ok((initial, events)) => {
                for device in initial {
                    line.attach(device, &mut phones, &mut queue);
                }
                Usb::Connected(events)
            }
            Err(e) if options.once => return Err(e),
            Err(e) => line.usbmuxd_lost(&e.to_string(), &mut phones, &mut queue),
        };

        loop {
            phones.settle(options.once);
            if pause
                .as_ref()
                .is_some_and(|p| p.recheck_at <= tokio::time::Instant::now())
            {
                pause = line.recheck_ledger(pause).await;
            }
            if stop == Shutdown::Running && pause.is_none() {
                pause = line.start_ready(&mut phones, &mut queue, &mut workers);
            }
            let in_flight = workers.len();
            if in_flight == 0
                && (stop != Shutdown::Running || (options.once && line.once_done(&phones, &usb)))
            {
                break;
            }
            let next_timer = line
                .next_deadline(&phones, &usb)
                .into_iter()
                .chain(pause.as_ref().map(|p| p.recheck_at))
                .min();
            let (listening, retry_at) = match &usb {
                Usb::Connected(_) => (true, None),
                Usb::Lost { retry_at, .. } => (false, Some(*retry_at)),
            };
            let reconnect = async {
                sleep_until(retry_at).await;
                connect_usbmuxd(&line.bench).await
            };
            tokio::select! {
                event = next_usb_event(&mut usb), if listening && stop == Shutdown::Running => match event {
                    Ok(UsbEvent::Attached(device)) => line.attach(device, &mut phones, &mut queue),
                    Ok(UsbEvent::Detached { device_id }) => line.detach(device_id, &mut phones, &mut queue),
                    Ok(UsbEvent::Paired { .. }) => {}
                    Err(e) => usb = line.usbmuxd_lost(&e.to_string(), &mut phones, &mut queue),
                },
                attempt = reconnect, if !listening && stop == Shutdown::Running => {
                    let Usb::Lost { since, backoff, .. } = usb else { continue };
                    match attempt {
                        Ok((devices, events)) => {
                            line.usbmuxd_back(devices, since.elapsed(), &mut phones, &mut queue);
                            usb = Usb::Connected(events);
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, ?backoff, "usbmuxd still away");
                            usb = Usb::Lost {
                                since,
                                retry_at: tokio::time::Instant::now() + backoff,
                                backoff: (backoff * 2).min(RECONNECT_MAX),
                            };
                        }
                    }
                },
                Some(joined) = workers.join_next(), if in_flight > 0 => match joined {
                    Ok(finished) => line.finished(finished, &mut phones, &mut queue, stop, &mut pause),
                    Err(e) => tracing::error!("a phone worker failed: {e}"),
                },
                () = sleep_until(next_timer) => line.wake(&mut phones, &mut queue),
                changed = shutdown.changed() => {
                    let level = if changed.is_ok() { *shutdown.borrow() } else { Shutdown::Abort };
                    if level > stop {
                        stop = level;
                        line.stopping(stop, &mut phones, &mut queue);
                    }
                }
            }
        }

        if let Some(pause) = pause.filter(|p| !p.uncommitted.is_empty()) {
            // One last try; what still fails is named in the log (the phones' rows stay
            // open and a later start closes them as `interrupted`).
            if let Some(left) = line.recheck_ledger(Some(pause)).await {
                for (id, report) in &left.uncommitted {
                    tracing::error!(
                        udid = %report.udid,
                        attempt = %id,
                        outcome = %crate::output::wire_name(&report.outcome),
                        "the outcome could not be committed to the ledger before the run ended"
                    );
                }
            }
        }
        let summary = line.summary(&phones, stop, started.elapsed());
        line.events.send(EventKind::Summary(summary.clone()));
        Ok(summary)
    }

    fn attach(&self, device: DeviceInfo, phones: &mut Phones, queue: &mut VecDeque<String>) {
        let phone = self.phone_ref(&device);
        phones.restore(&device, phone.clone());
        if let Some(state) = phones.get_mut(&device.udid) {
            if state.attached && state.device.device_id == device.device_id {
                return; // the Listen replay of a phone we already know
            }
            self.events.send(EventKind::Attached {
                phone: phone.clone(),
                location_id: device.location_id,
            });
            state.device = device;
            state.attached = true;
            state.plugs += 1;
            state.phone = phone.clone();
            match &state.status {
                // A phone that is done needs nothing more; one that is not is replugged on
                // purpose (a fresh code was issued, Trust was tapped): work on it again.
                Status::Done(outcome) if outcome.is_success() && !self.options.redo => {
                    self.events.send(EventKind::Skipped {
                        phone,
                        outcome: *outcome,
                        reason: "already done in this run (run with --redo to work on it again)"
                            .into(),
                    });
                }
                Status::Running { .. } | Status::Queued | Status::Waiting(_) => {}
                _ => {
                    // Plugged back: resume.
                    state.status = Status::Queued;
                    state.attempts = 0;
                    queue.push_back(state.device.udid.clone());
                    self.events.send(EventKind::Queued { phone });
                }
            }
            return;
        }
        self.events.send(EventKind::Attached {
            phone: phone.clone(),
            location_id: device.location_id,
        });
        self.events.send(EventKind::Queued {
            phone: phone.clone(),
        });
        queue.push_back(device.udid.clone());
        phones.insert(
            device.udid.clone(),
            PhoneState {
                device,
                attached: true,
                plugs: 1,
                phone,
                status: Status::Queued,
                attempts: 0,
                serial: None,
                last: None,
            },
        );
    }

    fn detach(&self, device_id: u32, phones: &mut Phones, queue: &mut VecDeque<String>) {
        let Some(state) = phones
            .values_mut()
            .find(|p| p.attached && p.device.device_id == device_id)
        else {
            return;
        };
        self.events.send(EventKind::Detached {
            phone: state.phone.clone(),
        });
        Self::cut(state, Cut::Unplugged, queue);
    }

    /// The phone is gone (unplugged, or usbmuxd with it): its work is cut short, its turn
    /// given up; it resumes when it is attached again.
    fn cut(state: &mut PhoneState, why: Cut, queue: &mut VecDeque<String>) {
        state.attached = false;
        match &mut state.status {
            Status::Running { cancel } => {
                // The worker records `interrupted` and reports back; it stays Unplugged then.
                if let Some(cancel) = cancel.take() {
                    let _ = cancel.send(why);
                }
            }
            Status::Queued | Status::Waiting(_) => {
                queue.retain(|u| u != &state.device.udid);
                state.status = Status::Unplugged {
                    since: tokio::time::Instant::now(),
                };
            }
            Status::Unplugged { .. } | Status::Done(_) => {}
        }
    }

    /// usbmuxd's connection broke or was refused: every phone is cut off as if unplugged,
    /// and the line retries the connection with a bounded backoff.
    fn usbmuxd_lost(&self, reason: &str, phones: &mut Phones, queue: &mut VecDeque<String>) -> Usb {
        tracing::warn!(
            "usbmuxd is gone ({reason}); phones in flight are recorded as interrupted; retrying the connection"
        );
        self.events.send(EventKind::UsbmuxdLost {
            reason: reason.to_string(),
            retry_ms: u64::try_from(RECONNECT_FIRST.as_millis()).unwrap_or(u64::MAX),
        });
        for state in phones.values_mut() {
            Self::cut(state, Cut::UsbmuxdGone, queue);
        }
        let now = tokio::time::Instant::now();
        Usb::Lost {
            since: now,
            retry_at: now + RECONNECT_FIRST,
            backoff: (RECONNECT_FIRST * 2).min(RECONNECT_MAX),
        }
    }

    /// usbmuxd answers again: what it lists is attached anew (interrupted phones resume).
    /// A phone already handled is taken back quietly: whether it was replugged while
    /// usbmuxd was away cannot be known, so it is not worked on again.
    fn usbmuxd_back(
        &self,
        devices: Vec<DeviceInfo>,
        outage: Duration,
        phones: &mut Phones,
        queue: &mut VecDeque<String>,
    ) {
        tracing::info!(
            phones = devices.len(),
            outage_ms = outage.as_millis(),
            "usbmuxd is back"
        );
        self.events.send(EventKind::UsbmuxdBack {
            phones: devices.len(),
            outage_ms: u64::try_from(outage.as_millis()).unwrap_or(u64::MAX),
        });
        for device in devices {
            phones.restore(&device, self.phone_ref(&device));
            match phones.get_mut(&device.udid) {
                Some(state) if matches!(state.status, Status::Done(_)) && !state.attached => {
                    state.phone = self.phone_ref(&device);
                    state.device = device;
                    state.attached = true;
                    state.plugs += 1;
                }
                _ => self.attach(device, phones, queue),
            }
        }
    }

    /// Starts queued phones up to the concurrency limit, unless the ledger's storage
    /// cannot take them: then nothing is started and the line pauses.
    fn start_ready(
        self: &Arc<Self>,
        phones: &mut Phones,
        queue: &mut VecDeque<String>,
        workers: &mut JoinSet<Finished>,
    ) -> Option<LedgerPause> {
        if queue.is_empty() || workers.len() >= self.options.concurrency {
            return None;
        }
        if let Err(problem) = self.log.storage() {
            return Some(self.pause_for(StationError::Storage(problem)));
        }
        while workers.len() < self.options.concurrency {
            let Some(udid) = queue.pop_front() else { break };
            let Some(state) = phones.get_mut(&udid) else {
                continue;
            };
            if !matches!(state.status, Status::Queued) {
                continue;
            }
            state.attempts += 1;
            let (cancel_tx, cancel_rx) = oneshot::channel();
            state.status = Status::Running {
                cancel: Some(cancel_tx),
            };
            self.events.send(EventKind::Started {
                phone: state.phone.clone(),
                attempt: state.attempts,
                in_flight: workers.len() + 1,
            });
            let line = Arc::clone(self);
            let device = state.device.clone();
            let phone = state.phone.clone();
            let plug = state.plugs;
            workers.spawn(async move { line.work(device, plug, phone, cancel_rx).await });
        }
        None
    }

    /// Stops taking phones and says why: the storage's problem when `statvfs` shows one,
    /// else the ledger's own error.
    fn pause_for(&self, error: StationError) -> LedgerPause {
        let error = match (self.log.storage(), error) {
            (Err(problem), StationError::Ledger(_)) => StationError::Storage(problem),
            (_, error) => error,
        };
        let help = error.help().map(|h| format!("; {h}")).unwrap_or_default();
        tracing::error!(
            "error[{}]: {error}: no new phones are started until the ledger takes writes again{help}",
            error.code()
        );
        self.events.send(EventKind::LedgerPaused {
            code: error.code().to_string(),
            reason: error.to_string(),
            recheck_ms: u64::try_from(LEDGER_RECHECK.as_millis()).unwrap_or(u64::MAX),
        });
        let now = tokio::time::Instant::now();
        LedgerPause {
            since: now,
            recheck_at: now + LEDGER_RECHECK,
            uncommitted: Vec::new(),
        }
    }

    /// Looks at the ledger's storage again; once it is fine and the kept outcomes are
    /// committed, the line resumes (`None`).
    async fn recheck_ledger(&self, pause: Option<LedgerPause>) -> Option<LedgerPause> {
        let mut pause = pause?;
        let now = tokio::time::Instant::now();
        pause.recheck_at = now + LEDGER_RECHECK;
        if let Err(problem) = self.log.storage() {
            tracing::debug!("the ledger still cannot take writes: {problem}");
            return Some(pause);
        }
        while let Some((id, report)) = pause.uncommitted.first() {
            if let Err(e) = self.log.finish(*id, report).await {
                tracing::warn!("the ledger still refuses a kept outcome: {e}");
                return Some(pause);
            }
            tracing::info!(udid = %report.udid, attempt = %id, "kept outcome committed");
            pause.uncommitted.remove(0);
        }
        let paused = now - pause.since;
        tracing::info!(
            paused_ms = paused.as_millis(),
            "the ledger takes writes again: the line takes new phones"
        );
        self.events.send(EventKind::LedgerResumed {
            paused_ms: u64::try_from(paused.as_millis()).unwrap_or(u64::MAX),
        });
        None
    }

    /// One attempt on one phone: ledger entry first, the workflow (cut short by an unplug),
    /// the outcome committed, then announced.
    async fn work(
        self: Arc<Self>,
        device: DeviceInfo,
        plug: u64,
        phone: PhoneRef,
        cancel: oneshot::Receiver<Cut>,
    ) -> Finished {
        let attempt = match self.log.begin(&phone, device.location_id).await {
            Ok(id) => Some(id),
            Err(e) => {
                // No record, no work: the phone is not touched and waits in the queue.
                tracing::error!(udid = %device.udid, "ledger refused the attempt: {e}");
                let report = not_begun_report(&device);
                return Finished {
                    udid: device.udid,
                    plug,
                    report,
                    ledger: LedgerFate::NotBegun(e),
                };
            }
        };
        let observer = WorkerObserver {
            phone: phone.clone(),
            events: self.events.clone(),
            log: Arc::clone(&self.log),
            attempt,
            last: std::sync::Mutex::new(None),
        };
        let activator = Activator {
            bench: &self.bench,
            server: &self.server,
            codes: self.codes.as_ref(),
            observer: &observer,
            trust_wait: self.options.trust_wait,
        };
        let started = Instant::now();
        let mut report = tokio::select! {
            report = activator.activate(&device) => report,
            why = cancel => {
                let step = observer.last_step().unwrap_or(Step::Pair);
                interrupted_report(&device, why.unwrap_or(Cut::Aborted), step, started.elapsed())
            }
        };
        // Over USB a transfer can fail (EPROTO, EPIPE) before the unplug is seen: a device
        // error on a phone whose link is down is the unplug.
        if report.outcome == Outcome::DeviceError && self.bench.transport.link_down(&device) {
            let step = observer.last_step().unwrap_or(Step::Pair);
            report = interrupted_report(&device, Cut::Unplugged, step, started.elapsed());
        }
        if report.outcome == Outcome::Interrupted {
            report.retryable = false;
        }
        let mut ledger = LedgerFate::Committed;
        if let Some(id) = attempt {
            match self.log.finish(id, &report).await {
                // The moment the screen is measured against (tests/tests/station_screen.rs).
                Ok(()) => tracing::debug!(
                    udid = %device.udid,
                    slot = %phone.slot,
                    outcome = %crate::output::wire_name(&report.outcome),
                    "outcome committed"
                ),
                Err(e) => {
                    tracing::error!(udid = %device.udid, "could not commit the outcome to the ledger (kept until it can): {e}");
                    ledger = LedgerFate::Uncommitted(id, e);
                }
            }
        }
        self.events.send(EventKind::Finished {
            phone,
            outcome: report.outcome,
            message: report.message.clone(),
            serial: report.serial.clone(),
            model: report
                .product_type
                .as_deref()
                .map(|t| marketing_name(t).unwrap_or(t).to_string()),
            activation_locked: report.activation_locked,
            codes_tried: report.codes_tried,
            released_by: report.released_by.clone(),
            step: report.step,
            elapsed_ms: report.elapsed_ms,
            management: report.management.clone(),
        });
        Finished {
            udid: device.udid,
            plug,
            report,
            ledger,
        }
    }

    fn finished(
        &self,
        finished: Finished,
        phones: &mut Phones,
        queue: &mut VecDeque<String>,
        stop: Shutdown,
        pause: &mut Option<LedgerPause>,
    ) {
        let Some(state) = phones.get_mut(&finished.udid) else {
            return;
        };
        let report = finished.report;
        match finished.ledger {
            LedgerFate::Committed => {}
            LedgerFate::NotBegun(e) => {
                // Its turn is given back: first in line once the ledger takes writes.
                state.attempts = state.attempts.saturating_sub(1);
                if matches!(state.status, Status::Running { .. }) && state.attached {
                    state.status = Status::Queued;
                    queue.push_front(finished.udid.clone());
                    self.events.send(EventKind::Queued {
                        phone: state.phone.clone(),
                    });
                } else {
                    state.status = Status::Unplugged {
                        since: tokio::time::Instant::now(),
                    };
                }
                if pause.is_none() {
                    *pause = Some(self.pause_for(StationError::Ledger(e)));
                }
                return;
            }
            LedgerFate::Uncommitted(id, e) => {
                let paused = pause.get_or_insert_with(|| self.pause_for(StationError::Ledger(e)));
                paused.uncommitted.push((id, report.clone()));
            }
        }
        if report.serial.is_some() {
            state.serial.clone_from(&report.serial);
        }
        let now = tokio::time::Instant::now();
        state.status = if report.outcome == Outcome::Interrupted {
            if state.attached && state.plugs != finished.plug && stop == Shutdown::Running {
                // Back already (replugged, or usbmuxd returned) while the worker wound down.
                state.attempts = 0;
                queue.push_back(state.device.udid.clone());
                self.events.send(EventKind::Queued {
                    phone: state.phone.clone(),
                });
                Status::Queued
            } else {
                Status::Unplugged { since: now }
            }
        } else if report.retryable
            && state.attempts < self.options.retry.attempts
            && stop == Shutdown::Running
        {
            let wait = self.options.retry.backoff(state.attempts);
            self.events.send(EventKind::Retrying {
                phone: state.phone.clone(),
                attempt: state.attempts + 1,
                wait_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                reason: report.message.clone(),
            });
            Status::Waiting(now + wait)
        } else {
            Status::Done(report.outcome)
        };
        state.last = Some(report);
    }

    /// The earliest retry or replug deadline.
    fn next_deadline(&self, phones: &Phones, usb: &Usb) -> Option<tokio::time::Instant> {
        let usbmuxd_grace = match usb {
            Usb::Lost { since, .. } if self.options.once => {
                Some(*since + self.options.replug_grace)
            }
            _ => None,
        };
        phones
            .values()
            .filter_map(|p| match p.status {
                Status::Waiting(at) => Some(at),
                Status::Unplugged { since } if self.options.once => {
                    Some(since + self.options.replug_grace)
                }
                _ => None,
            })
            .chain(usbmuxd_grace)
            .min()
    }

    fn wake(&self, phones: &mut Phones, queue: &mut VecDeque<String>) {
        let now = tokio::time::Instant::now();
        for state in phones.values_mut() {
            match state.status {
                Status::Waiting(at) if at <= now => {
                    state.status = Status::Queued;
                    queue.push_back(state.device.udid.clone());
                }
                Status::Unplugged { since }
                    if self.options.once && since + self.options.replug_grace <= now =>
                {
                    state.status = Status::Done(Outcome::Interrupted);
                }
                _ => {}
            }
        }
    }

    /// `--once` ends when every phone is done and usbmuxd is there (or has been away for
    /// longer than the replug grace: its phones then count as interrupted).
    fn once_done(&self, phones: &Phones, usb: &Usb) -> bool {
        let usbmuxd_settled = match usb {
            Usb::Connected(_) => true,
            Usb::Lost { since, .. } => since.elapsed() >= self.options.replug_grace,
        };
        usbmuxd_settled && phones.values().all(|p| matches!(p.status, Status::Done(_)))
    }

    fn stopping(&self, level: Shutdown, phones: &mut Phones, queue: &mut VecDeque<String>) {
        queue.clear();
        for state in phones.values_mut() {
            match &mut state.status {
                Status::Running { cancel } if level == Shutdown::Abort => {
                    if let Some(cancel) = cancel.take() {
                        let _ = cancel.send(Cut::Aborted);
                    }
                }
                Status::Queued | Status::Waiting(_) => {
                    state.status = Status::Done(Outcome::Interrupted)
                }
                _ => {}
            }
        }
        tracing::warn!(
            "{}",
            if level == Shutdown::Abort {
                "stopping now: phones in flight are recorded as interrupted"
            } else {
                "stopping: no new phones; waiting for the ones in flight (Ctrl-C again to stop now)"
            }
        );
    }

    fn summary(&self, phones: &Phones, stop: Shutdown, elapsed: Duration) -> Summary {
        let (counts, attention) = phones.tally();
        Summary {
            run_id: self.options.run_id.clone(),
            phones: phones.count(),
            counts,
            attention,
            stopped_early: stop != Shutdown::Running,
            aborted: stop == Shutdown::Abort,
            elapsed_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

/// The ledger, as the durable record of one run.
pub struct RunLog {
    pub ledger: Ledger,
    pub run_id: String,
}

impl AttemptLog for RunLog {
    fn begin<'a>(
        &'a self,
        phone: &'a PhoneRef,
        location_id: u32,
    ) -> BoxFuture<'a, Result<AttemptId, LedgerError>> {
        Box::pin(async move {
            self.ledger
                .begin(&AttemptStart {
                    run_id: self.run_id.clone(),
                    udid: phone.udid.clone(),
                    slot: Some(phone.slot.clone()),
                    location_id,
                    started_at: std::time::SystemTime::now(),
                })
                .await
        })
    }

    fn step(&self, id: AttemptId, step: Step) {
        // Queued now, committed in order; the write does not need awaiting.
        drop(self.ledger.record_step(
            id,
            &crate::output::wire_name(&step),
            std::time::SystemTime::now(),
        ));
    }

    fn identified(
        &self,
        id: AttemptId,
        serial: &str,
        product_type: Option<&str>,
        product_version: Option<&str>,
    ) {
        drop(
            self.ledger
                .update_identity(id, serial, product_type, product_version),
        );
    }

    fn finish<'a>(
        &'a self,
        id: AttemptId,
        report: &'a ActivationReport,
    ) -> BoxFuture<'a, Result<(), LedgerError>> {
        Box::pin(async move {
            self.ledger
                .finish(id, report, std::time::SystemTime::now())
                .await
        })
    }

    fn storage(&self) -> Result<(), StorageProblem> {
        match self.ledger.path().parent() {
            Some(dir) => crate::storage::check(dir),
            None => Ok(()),
        }
    }
}

/// Stands in for the report of a phone whose attempt the ledger refused: never shown,
/// never recorded (the phone goes back to the queue).
fn not_begun_report(device: &DeviceInfo) -> ActivationReport {
    let mut report = interrupted_report(device, Cut::Aborted, Step::Pair, Duration::ZERO);
    report.message = "not started: the ledger refused the attempt".into();
    report
}

fn interrupted_report(
    device: &DeviceInfo,
    why: Cut,
    step: Step,
    elapsed: Duration,
) -> ActivationReport {
    ActivationReport {
        udid: device.udid.clone(),
        serial: None,
        product_type: None,
        product_version: None,
        outcome: Outcome::Interrupted,
        message: match why {
            Cut::Unplugged => format!(
                "unplugged during {}: plug it back in to resume",
                step.describe()
            ),
            Cut::UsbmuxdGone => format!(
                "usbmuxd went away during {}: it resumes when usbmuxd is back",
                step.describe()
            ),
            Cut::Aborted => format!("stopped during {}: the run was stopped", step.describe()),
        },
        activation_state: None,
        activation_locked: false,
        management: Default::default(),
        activation_lock: None,
        codes_tried: 0,
        released_by: None,
        remote_release: None,
        step: Some(step),
        retryable: false,
        elapsed_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The phones attached now and the live event stream after them.
async fn connect_usbmuxd(
    bench: &Bench,
) -> Result<
    (
        Vec<DeviceInfo>,
        mpsc::UnboundedReceiver<Result<UsbEvent, StationError>>,
    ),
    StationError,
> {
    let initial = bench.transport.list_devices().await?;
    let events = spawn_listener(bench).await?;
    Ok((initial, events))
}

/// The next event, or why there will be none (usbmuxd closed the stream or it failed).
async fn next_usb_event(usb: &mut Usb) -> Result<UsbEvent, StationError> {
    match usb {
        Usb::Connected(events) => match events.recv().await {
            Some(event) => event,
            None => Err(StationError::from(
                station_protocol::usbmux::UsbmuxError::Closed,
            )),
        },
        Usb::Lost { .. } => std::future::pending().await,
    }
}

/// usbmuxd events on a channel (reading a packet is not cancel-safe, so a task owns it).
async fn spawn_listener(
    bench: &Bench,
) -> Result<mpsc::UnboundedReceiver<Result<UsbEvent, StationError>>, StationError> {
    let mut stream = bench.transport.listen().await?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let event = stream.next_event().await;
            let failed = event.is_err();
            if tx.send(event).is_err() || failed {
                break;
            }
        }
    });
    Ok(rx)
}

/// Turns workflow progress into events and ledger updates, remembering the last step for
/// an unplug.
struct WorkerObserver {
    phone: PhoneRef,
    events: EventSink,
    log: Arc<dyn AttemptLog>,
    attempt: Option<AttemptId>,
    last: std::sync::Mutex<Option<Step>>,
}

impl WorkerObserver {
    fn last_step(&self) -> Option<Step> {
        self.last.lock().ok().and_then(|s| *s)
    }
}

impl Observer for WorkerObserver {
    fn step(&self, _udid: &str, step: Step) {
        if let Ok(mut last) = self.last.lock() {
            *last = Some(step);
        }
        if let Some(id) = self.attempt {
            self.log.step(id, step);
        }
        self.events.send(EventKind::Step {
            phone: self.phone.clone(),
            step,
        });
    }

    fn identified(
        &self,
        _udid: &str,
        serial: &str,
        product_type: Option<&str>,
        product_version: Option<&str>,
        management: &ManagementState,
    ) {
        if let Some(id) = self.attempt {
            self.log
                .identified(id, serial, product_type, product_version);
        }
        self.events.send(EventKind::Identified {
            phone: self.phone.clone(),
            serial: serial.to_string(),
            product_type: product_type.map(str::to_string),
            model: product_type.map(|t| marketing_name(t).unwrap_or(t).to_string()),
            product_version: product_version.map(str::to_string),
            management: management.clone(),
        });
    }

    fn code_lookup(
        &self,
        result: &Result<crate::codes::Lookup, crate::codes::LookupError>,
        elapsed: Duration,
    ) {
        self.events.send(EventKind::CodeLookup {
            phone: self.phone.clone(),
            elapsed_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            sources: events::source_results(result),
        });
    }

    fn server_answer(&self, class: events::AnswerClass, elapsed: Duration) {
        self.events.send(EventKind::ServerAnswer {
            phone: self.phone.clone(),
            class,
            elapsed_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
        });
    }
}
