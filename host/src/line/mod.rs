//! Line mode: every phone plugged into the bench gets the activation workflow, under a
//! concurrency limit, with unplug/replug handled, transient failures retried, each outcome
//! committed to the ledger before it is shown, and a summary at the end.

pub mod events;
pub mod render;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use station_protocol::usbmux::{DeviceInfo, Event as UsbEvent};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

use crate::activation::http::RetryPolicy;
use crate::activation::{ActivationReport, ActivationServer, Activator, Observer, Outcome, Step};
use crate::codes::CodeLookup;
use crate::error::StationError;
use crate::models::marketing_name;
use crate::phone::Bench;
use events::{Attention, EventKind, EventSink, PhoneRef, Summary};

use crate::ledger::{AttemptId, AttemptStart, Ledger};

/// The durable record of attempts (the ledger). `finish` must be durable when it returns:
/// the line shows an outcome only after that.
pub trait AttemptLog: Send + Sync {
    fn begin<'a>(
        &'a self,
        phone: &'a PhoneRef,
        location_id: u32,
    ) -> BoxFuture<'a, Result<AttemptId, String>>;
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
    ) -> BoxFuture<'a, Result<(), String>>;
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
    /// `--once`: how long an unplugged phone may stay away before it counts as interrupted.
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
        cancel: Option<oneshot::Sender<()>>,
    },
    /// Retry after this instant.
    Waiting(tokio::time::Instant),
    /// Pulled out mid-way (or before its turn); resumes when plugged back.
    Unplugged {
        since: tokio::time::Instant,
    },
    Done(Outcome),
}

#[derive(Debug)]
struct PhoneState {
    device: DeviceInfo,
    phone: PhoneRef,
    status: Status,
    attempts: u32,
    serial: Option<String>,
    last: Option<ActivationReport>,
}

struct Finished {
    udid: String,
    report: ActivationReport,
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

        // The initial inventory, then the live event stream (whose first Attached events
        // repeat it; they are recognised by DeviceID).
        let initial = line.bench.usbmuxd.list_devices().await?;
        let mut usb_events = spawn_listener(&line.bench).await?;

        let mut phones: BTreeMap<String, PhoneState> = BTreeMap::new();
        let mut queue: VecDeque<String> = VecDeque::new();
        let mut workers: JoinSet<Finished> = JoinSet::new();
        let mut stop = Shutdown::Running;

        for device in initial {
            line.attach(device, &mut phones, &mut queue);
        }

        loop {
            if stop == Shutdown::Running {
                line.start_ready(&mut phones, &mut queue, &mut workers);
            }
            let in_flight = workers.len();
            if in_flight == 0
                && (stop != Shutdown::Running || (options.once && line.once_done(&phones)))
            {
                break;
            }
            let next_timer = line.next_deadline(&phones);
            tokio::select! {
                event = usb_events.recv(), if stop == Shutdown::Running => match event {
                    Some(Ok(UsbEvent::Attached(device))) => line.attach(device, &mut phones, &mut queue),
                    Some(Ok(UsbEvent::Detached { device_id })) => line.detach(device_id, &mut phones, &mut queue),
                    Some(Ok(UsbEvent::Paired { .. })) => {}
                    Some(Err(e)) => {
                        tracing::error!("usbmuxd event stream failed: {e}");
                        return Err(e);
                    }
                    None => return Err(StationError::new("usbmuxd-error", crate::error::exit::FAILURE, "usbmuxd closed the event stream")),
                },
                Some(joined) = workers.join_next(), if in_flight > 0 => match joined {
                    Ok(finished) => line.finished(finished, &mut phones, stop),
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

        let summary = line.summary(&phones, stop != Shutdown::Running, started.elapsed());
        line.events.send(EventKind::Summary(summary.clone()));
        Ok(summary)
    }

    fn attach(
        &self,
        device: DeviceInfo,
        phones: &mut BTreeMap<String, PhoneState>,
        queue: &mut VecDeque<String>,
    ) {
        let phone = self.phone_ref(&device);
        if let Some(state) = phones.get_mut(&device.udid) {
            if state.device.device_id == device.device_id
                && !matches!(state.status, Status::Unplugged { .. })
            {
                return; // the Listen replay of a phone we already know
            }
            self.events.send(EventKind::Attached {
                phone: phone.clone(),
                location_id: device.location_id,
            });
            state.device = device;
            state.phone = phone.clone();
            match &state.status {
                Status::Done(outcome) if *outcome != Outcome::Interrupted && !self.options.redo => {
                    self.events.send(EventKind::Skipped {
                        phone,
                        outcome: *outcome,
                        reason: "already handled in this run (run with --redo to work on it again)"
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
                phone,
                status: Status::Queued,
                attempts: 0,
                serial: None,
                last: None,
            },
        );
    }

    fn detach(
        &self,
        device_id: u32,
        phones: &mut BTreeMap<String, PhoneState>,
        queue: &mut VecDeque<String>,
    ) {
        let Some(state) = phones
            .values_mut()
            .find(|p| p.device.device_id == device_id)
        else {
            return;
        };
        self.events.send(EventKind::Detached {
            phone: state.phone.clone(),
        });
        let now = tokio::time::Instant::now();
        match &mut state.status {
            Status::Running { cancel } => {
                // The worker records `interrupted` and reports back; it stays Unplugged then.
                if let Some(cancel) = cancel.take() {
                    let _ = cancel.send(());
                }
            }
            Status::Queued | Status::Waiting(_) => {
                queue.retain(|u| u != &state.device.udid);
                state.status = Status::Unplugged { since: now };
            }
            Status::Unplugged { .. } | Status::Done(_) => {}
        }
    }

    fn start_ready(
        self: &Arc<Self>,
        phones: &mut BTreeMap<String, PhoneState>,
        queue: &mut VecDeque<String>,
        workers: &mut JoinSet<Finished>,
    ) {
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
            workers.spawn(async move { line.work(device, phone, cancel_rx).await });
        }
    }

    /// One attempt on one phone: ledger entry first, the workflow (cut short by an unplug),
    /// the outcome committed, then announced.
    async fn work(
        self: Arc<Self>,
        device: DeviceInfo,
        phone: PhoneRef,
        cancel: oneshot::Receiver<()>,
    ) -> Finished {
        let attempt = match self.log.begin(&phone, device.location_id).await {
            Ok(id) => Some(id),
            Err(e) => {
                tracing::error!(udid = %device.udid, "ledger refused the attempt: {e}");
                None
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
            _ = cancel => {
                let step = observer.last_step().unwrap_or(Step::Pair);
                interrupted_report(&device, step, started.elapsed())
            }
        };
        if report.outcome == Outcome::Interrupted {
            report.retryable = false;
        }
        match attempt {
            Some(id) => {
                if let Err(e) = self.log.finish(id, &report).await {
                    tracing::error!(udid = %device.udid, "could not commit the outcome to the ledger: {e}");
                }
            }
            None => tracing::error!(udid = %device.udid, "outcome not recorded (no ledger entry)"),
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
        });
        Finished {
            udid: device.udid,
            report,
        }
    }

    fn finished(
        &self,
        finished: Finished,
        phones: &mut BTreeMap<String, PhoneState>,
        stop: Shutdown,
    ) {
        let Some(state) = phones.get_mut(&finished.udid) else {
            return;
        };
        let report = finished.report;
        if report.serial.is_some() {
            state.serial.clone_from(&report.serial);
        }
        let now = tokio::time::Instant::now();
        state.status = if report.outcome == Outcome::Interrupted {
            Status::Unplugged { since: now }
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
    fn next_deadline(&self, phones: &BTreeMap<String, PhoneState>) -> Option<tokio::time::Instant> {
        phones
            .values()
            .filter_map(|p| match p.status {
                Status::Waiting(at) => Some(at),
                Status::Unplugged { since } if self.options.once => {
                    Some(since + self.options.replug_grace)
                }
                _ => None,
            })
            .min()
    }

    fn wake(&self, phones: &mut BTreeMap<String, PhoneState>, queue: &mut VecDeque<String>) {
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

    fn once_done(&self, phones: &BTreeMap<String, PhoneState>) -> bool {
        phones.values().all(|p| matches!(p.status, Status::Done(_)))
    }

    fn stopping(
        &self,
        level: Shutdown,
        phones: &mut BTreeMap<String, PhoneState>,
        queue: &mut VecDeque<String>,
    ) {
        queue.clear();
        for state in phones.values_mut() {
            match &mut state.status {
                Status::Running { cancel } if level == Shutdown::Abort => {
                    if let Some(cancel) = cancel.take() {
                        let _ = cancel.send(());
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

    fn summary(
        &self,
        phones: &BTreeMap<String, PhoneState>,
        stopped_early: bool,
        elapsed: Duration,
    ) -> Summary {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        let mut attention = Vec::new();
        for state in phones.values() {
            let (outcome, message) = match (&state.status, &state.last) {
                (_, Some(report)) => (report.outcome, report.message.clone()),
                (Status::Done(outcome), None) => {
                    (*outcome, "not started: the run was stopped".to_string())
                }
                _ => (
                    Outcome::Interrupted,
                    "not started: the run was stopped".to_string(),
                ),
            };
            let outcome = match state.status {
                Status::Done(done) => done,
                _ => outcome,
            };
            *counts
                .entry(crate::render::wire_name(&outcome))
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
        Summary {
            run_id: self.options.run_id.clone(),
            phones: phones.len(),
            counts,
            attention,
            stopped_early,
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
    ) -> BoxFuture<'a, Result<AttemptId, String>> {
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
                .map_err(|e| e.to_string())
        })
    }

    fn step(&self, id: AttemptId, step: Step) {
        // Queued now, committed in order; the write does not need awaiting.
        drop(self.ledger.record_step(
            id,
            &crate::render::wire_name(&step),
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
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            self.ledger
                .finish(id, report, std::time::SystemTime::now())
                .await
                .map_err(|e| e.to_string())
        })
    }
}

fn interrupted_report(device: &DeviceInfo, step: Step, elapsed: Duration) -> ActivationReport {
    ActivationReport {
        udid: device.udid.clone(),
        serial: None,
        product_type: None,
        product_version: None,
        outcome: Outcome::Interrupted,
        message: format!(
            "unplugged during {}: plug it back in to resume",
            step.describe()
        ),
        activation_state: None,
        activation_locked: false,
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

/// usbmuxd events on a channel (reading a packet is not cancel-safe, so a task owns it).
async fn spawn_listener(
    bench: &Bench,
) -> Result<mpsc::UnboundedReceiver<Result<UsbEvent, StationError>>, StationError> {
    let mut stream = bench.usbmuxd.listen().await?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let event = stream.next_event().await.map_err(StationError::from);
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
        });
    }
}
