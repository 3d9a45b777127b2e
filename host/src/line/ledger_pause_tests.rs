//! The line while the ledger cannot take writes (issue 13), against the simulator's bench
//! with a stand-in [`AttemptLog`]: a read-only data directory pauses the line before any
//! phone is touched; a refused `begin` gives the phone's turn back untouched; a refused
//! `finish` keeps the outcome and commits it before the line resumes. The real ledger on a
//! full tmpfs is `tests/tests/station_full_disk.rs`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use station_protocol::pairing::UsbmuxdPairStore;
use station_protocol::usbmux::Address;
use tokio::sync::watch;

use super::events::{EventKind, EventSink, PhoneRef};
use super::{AttemptLog, Line, LineOptions, Shutdown};
use crate::activation::{ActivationReport, ActivationServer, Outcome, Step};
use crate::codes::NoSources;
use crate::http::RetryPolicy;
use crate::ledger::{AttemptId, LedgerError};
use crate::phone::{Bench, PairStore};
use crate::slots::{PortPaths, Slots};
use crate::storage::StorageProblem;
use crate::transport::Transport;
use crate::usbmuxd::Usbmuxd;

/// An attempt log whose storage and writes fail on demand.
#[derive(Default)]
struct FlakyLog {
    read_only: AtomicBool,
    /// `begin`s to refuse, from the first.
    refuse_begins: AtomicUsize,
    /// `finish`es to refuse, from the first.
    refuse_finishes: AtomicUsize,
    next_id: AtomicUsize,
    begun: Mutex<Vec<(AttemptId, String)>>,
    /// Committed outcomes, in commit order.
    finished: Mutex<Vec<(AttemptId, Outcome)>>,
}

fn refused() -> LedgerError {
    LedgerError::Commit {
        reason: "disk I/O error".into(),
    }
}

/// Takes one from `counter` if it is above zero.
fn take_one(counter: &AtomicUsize) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

impl AttemptLog for FlakyLog {
    fn begin<'a>(
        &'a self,
        phone: &'a PhoneRef,
        _location_id: u32,
    ) -> BoxFuture<'a, Result<AttemptId, LedgerError>> {
        Box::pin(async move {
            if take_one(&self.refuse_begins) {
                return Err(refused());
            }
            let id = crate::ledger::test_attempt_id(self.next_id.fetch_add(1, Ordering::SeqCst));
            if let Ok(mut begun) = self.begun.lock() {
                begun.push((id, phone.udid.clone()));
            }
            Ok(id)
        })
    }

    fn step(&self, _id: AttemptId, _step: Step) {}

    fn identified(&self, _: AttemptId, _: &str, _: Option<&str>, _: Option<&str>) {}

    fn finish<'a>(
        &'a self,
        id: AttemptId,
        report: &'a ActivationReport,
    ) -> BoxFuture<'a, Result<(), LedgerError>> {
        Box::pin(async move {
            if take_one(&self.refuse_finishes) {
                return Err(refused());
            }
            if let Ok(mut finished) = self.finished.lock() {
                finished.push((id, report.outcome));
            }
            Ok(())
        })
    }

    fn storage(&self) -> Result<(), StorageProblem> {
        if self.read_only.load(Ordering::SeqCst) {
            Err(StorageProblem::ReadOnly {
                dir: PathBuf::from("/srv/station"),
            })
        } else {
            Ok(())
        }
    }
}

struct Fixture {
    sim: station_sim::Bench,
    _dir: tempfile::TempDir,
    line: Line,
    events: tokio::sync::mpsc::UnboundedReceiver<super::events::Event>,
}

async fn fixture(log: Arc<FlakyLog>, phones: usize) -> Fixture {
    let dir = tempfile::tempdir().expect("dir");
    let mut world = String::from("seed = 5\n");
    for i in 0..phones {
        world.push_str(&format!(
            "\n[[device]]\ndevice_name = \"p{i}\"\nactivation_state = \"Unactivated\"\n"
        ));
    }
    let world = station_sim::World::from_toml(&world, "test").expect("world");
    let socket = dir.path().join("usbmuxd.sock");
    let sim = station_sim::Bench::start(station_sim::BenchConfig::new(
        &socket,
        world,
        dir.path().join("state"),
    ))
    .await
    .expect("bench");
    let address = Address::parse(&format!("UNIX:{}", socket.display())).expect("address");
    let timeout = Duration::from_secs(10);
    let bench = Bench::new(
        Transport::Usbmuxd(Usbmuxd::new(address.clone(), timeout)),
        PairStore::Usbmuxd(UsbmuxdPairStore::new(address, timeout)),
        None,
    );
    let server = ActivationServer::new(sim.activation_url(), timeout, RetryPolicy::default())
        .expect("server");
    let (events, rx) = EventSink::channel();
    let line = Line {
        bench: Arc::new(bench),
        server: Arc::new(server),
        codes: Arc::new(NoSources),
        log,
        slots: Arc::new(Slots::new(
            BTreeMap::new(),
            PortPaths::new(dir.path().join("sysfs")),
        )),
        events,
        options: LineOptions {
            run_id: "run-test".into(),
            station_id: "test".into(),
            once: true,
            redo: false,
            concurrency: 2,
            retry: RetryPolicy::default(),
            trust_wait: Duration::from_secs(5),
            replug_grace: Duration::from_secs(5),
        },
    };
    Fixture {
        sim,
        _dir: dir,
        line,
        events: rx,
    }
}

fn kinds(rx: &mut tokio::sync::mpsc::UnboundedReceiver<super::events::Event>) -> Vec<EventKind> {
    let mut out = Vec::new();
    while let Ok(event) = rx.try_recv() {
        out.push(event.kind);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_data_directory_pauses_the_line_before_any_phone() {
    let log = Arc::new(FlakyLog::default());
    log.read_only.store(true, Ordering::SeqCst);
    let mut f = fixture(Arc::clone(&log), 2).await;
    let (_tx, shutdown) = watch::channel(Shutdown::Running);
    let run = tokio::spawn(f.line.run(shutdown));
    // Two rechecks while read-only: nothing may start.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let early = kinds(&mut f.events);
    let paused: Vec<&EventKind> = early
        .iter()
        .filter(|k| matches!(k, EventKind::LedgerPaused { .. }))
        .collect();
    assert_eq!(paused.len(), 1, "one notice per pause: {early:#?}");
    match paused[0] {
        EventKind::LedgerPaused { code, reason, .. } => {
            assert_eq!(code, "ledger-read-only");
            assert!(reason.contains("read-only"), "{reason}");
        }
        _ => unreachable!(),
    }
    assert!(
        !early.iter().any(|k| matches!(k, EventKind::Started { .. })),
        "a phone was started on a read-only disk: {early:#?}"
    );
    assert!(log.begun.lock().expect("lock").is_empty());

    log.read_only.store(false, Ordering::SeqCst);
    let summary = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the run ends")
        .expect("join")
        .expect("summary");
    let late = kinds(&mut f.events);
    assert!(late
        .iter()
        .any(|k| matches!(k, EventKind::LedgerResumed { .. })));
    assert_eq!(summary.counts.get("activated"), Some(&2), "{summary:?}");
    assert_eq!(log.finished.lock().expect("lock").len(), 2);
    f.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_begin_leaves_the_phone_untouched_and_a_refused_finish_is_kept() {
    let log = Arc::new(FlakyLog::default());
    log.refuse_begins.store(1, Ordering::SeqCst);
    log.refuse_finishes.store(1, Ordering::SeqCst);
    let mut f = fixture(Arc::clone(&log), 1).await;
    let udid = f.sim.ready_info().devices[0].udid.clone();
    let (_tx, shutdown) = watch::channel(Shutdown::Running);
    let summary = tokio::time::timeout(Duration::from_secs(60), f.line.run(shutdown))
        .await
        .expect("the run ends")
        .expect("summary");
    let events = kinds(&mut f.events);
    let pauses = events
        .iter()
        .filter(|k| matches!(k, EventKind::LedgerPaused { code, .. } if code == "ledger-error"))
        .count();
    let resumes = events
        .iter()
        .filter(|k| matches!(k, EventKind::LedgerResumed { .. }))
        .count();
    assert_eq!((pauses, resumes), (2, 2), "{events:#?}");
    // The refused begin touched nothing: the phone was worked on once, by the one attempt
    // the log took, whose outcome was committed once (after the retry of its commit).
    let begun = log.begun.lock().expect("lock").clone();
    assert_eq!(begun.len(), 1, "{begun:?}");
    assert_eq!(begun[0].1, udid);
    let finished = log.finished.lock().expect("lock").clone();
    assert_eq!(finished, vec![(begun[0].0, Outcome::Activated)]);
    assert_eq!(summary.counts.get("activated"), Some(&1), "{summary:?}");
    let albert_asked = f.sim.albert().requests_for(&udid).len();
    assert!(albert_asked > 0);
    f.sim.shutdown().await;
}
