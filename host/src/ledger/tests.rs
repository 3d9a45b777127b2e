//! The ledger end to end through its public handle: round trips, crash recovery (including
//! a real process abort), durability settings, secrets, concurrency.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use time::macros::datetime;

use super::*;
use crate::activation::{Release, Step};
use crate::codes::CodeKind;

const CODE: &str = "3UM43-PUYVY-QYD1-UVCC-HEHJ-FKA4";
const COMPACT: &str = "3UM43PUYVYQYD1UVCCHEHJFKA4";
const MASKED: &str = "3UM43-\u{2026}-FKA4";

/// 2026-11-27T00:00:00Z plus `secs`.
pub(crate) fn at(secs: u64) -> SystemTime {
    let day = datetime!(2026-11-27 00:00 UTC).unix_timestamp();
    UNIX_EPOCH + Duration::from_secs(u64::try_from(day).unwrap_or(0) + secs)
}

pub(crate) fn report(udid: &str, outcome: Outcome) -> ActivationReport {
    ActivationReport {
        udid: udid.to_string(),
        serial: Some(format!("SER-{udid}")),
        product_type: Some("iPhone14,5".into()),
        product_version: Some("18.1".into()),
        outcome,
        message: format!("{} for {udid}", wire_name(&outcome)),
        activation_state: Some("Activated".into()),
        activation_locked: false,
        management: Default::default(),
        activation_lock: None,
        codes_tried: 0,
        released_by: None,
        remote_release: None,
        step: (!outcome.is_success()).then_some(Step::ActivationRequest),
        retryable: false,
        elapsed_ms: 1234,
    }
}

fn start(run_id: &str, udid: &str, started_at: SystemTime) -> AttemptStart {
    AttemptStart {
        run_id: run_id.to_string(),
        udid: udid.to_string(),
        slot: Some(format!("S-{udid}")),
        location_id: 0x0001_0002,
        started_at,
    }
}

fn masked_release() -> Release {
    Release {
        source: "intune".into(),
        kind: CodeKind::Server,
        code: MASKED.into(),
    }
}

/// One row of [`sample_ledger`]'s table: an attempt of `udid` in `run`, finished with
/// `outcome` (`None`: left in progress) on a phone that was (`locked`) Activation Locked.
struct SampleAttempt {
    run: &'static str,
    udid: &'static str,
    started: SystemTime,
    outcome: Option<Outcome>,
    locked: bool,
}

impl SampleAttempt {
    fn new(
        run: &'static str,
        udid: &'static str,
        started: SystemTime,
        outcome: Option<Outcome>,
        locked: bool,
    ) -> Self {
        SampleAttempt {
            run,
            udid,
            started,
            outcome,
            locked,
        }
    }
}

/// A ledger with two runs and a spread of outcomes, closed again; one attempt is left in
/// progress. Returns the data directory's contents as a reader sees them.
///
/// | udid | started (2026-11-…) | outcome           | locked | released by |
/// |------|---------------------|-------------------|--------|-------------|
/// | a    | 26 10:00            | activated         | yes    | intune      |
/// | b    | 26 10:05            | locked_no_code    | yes    |             |
/// | c    | 27 09:00            | already_activated | no     |             |
/// | d    | 27 09:30            | code_rejected     | yes    |             |
/// | b    | 27 11:00            | user_locked       | yes    |             |
/// | f    | 27 12:00            | (in progress)     | no     |             |
pub(crate) async fn sample_ledger(dir: &Path) {
    let (ledger, _) = Ledger::open(dir, "bench-1").expect("open");
    let day_before = |secs: u64| at(secs) - Duration::from_secs(86_400);
    // One line per row of the table above.
    #[rustfmt::skip]
    let rows = [
        SampleAttempt::new("r1", "a", day_before(10 * 3600),       Some(Outcome::Activated),        true),
        SampleAttempt::new("r1", "b", day_before(10 * 3600 + 300), Some(Outcome::LockedNoCode),     true),
        SampleAttempt::new("r2", "c", at(9 * 3600),                Some(Outcome::AlreadyActivated), false),
        SampleAttempt::new("r2", "d", at(9 * 3600 + 1800),         Some(Outcome::CodeRejected),     true),
        SampleAttempt::new("r2", "b", at(11 * 3600),               Some(Outcome::UserLocked),       true),
        SampleAttempt::new("r2", "f", at(12 * 3600),               None,                            false),
    ];
    ledger
        .start_run("r1", day_before(10 * 3600))
        .await
        .expect("run");
    ledger.start_run("r2", at(9 * 3600)).await.expect("run");
    for SampleAttempt {
        run,
        udid,
        started,
        outcome,
        locked,
    } in rows
    {
        let id = begin(&ledger, run, udid, started).await;
        ledger
            .record_step(id, "pair", started + Duration::from_millis(100))
            .await
            .expect("step");
        ledger
            .record_step(
                id,
                "activation_request",
                started + Duration::from_millis(600),
            )
            .await
            .expect("step");
        let Some(outcome) = outcome else { continue };
        let mut r = report(udid, outcome);
        r.activation_locked = locked;
        if outcome == Outcome::Activated && locked {
            r.released_by = Some(masked_release());
            r.codes_tried = 1;
            r.message =
                format!("activated: Activation Lock released with code {MASKED} from intune");
        }
        if outcome == Outcome::CodeRejected {
            r.codes_tried = 2;
        }
        ledger
            .finish(id, &r, started + Duration::from_secs(2))
            .await
            .expect("finish");
    }
    ledger.close().await;
}

/// The latest attempt of `udid`; fails the test when the ledger has none.
async fn latest(ledger: &Ledger, udid: &str) -> AttemptRecord {
    ledger
        .latest_for(udid)
        .await
        .expect("latest")
        .unwrap_or_else(|| panic!("no attempt of {udid} in the ledger"))
}

/// Begins an attempt of `udid` in `run` at `started`.
async fn begin(ledger: &Ledger, run: &str, udid: &str, started: SystemTime) -> AttemptId {
    ledger
        .begin(&start(run, udid, started))
        .await
        .expect("begin")
}

fn reader(dir: &Path) -> LedgerReader {
    LedgerReader::open(dir)
        .expect("reader")
        .expect("ledger exists")
}

#[tokio::test]
async fn begin_and_finish_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ledger, recovered) = Ledger::open(dir.path(), "bench-1").expect("open");
    assert!(recovered.is_empty());
    assert!(ledger.path().ends_with(LEDGER_FILE));

    ledger.start_run("run-1", at(0)).await.expect("start run");
    let id = begin(&ledger, "run-1", "udid-1", at(1)).await;
    ledger
        .update_identity(id, "F2LX1", Some("iPhone14,5"), Some("18.1"))
        .await
        .expect("identity");
    for (i, step) in ["pair", "identify", "bypass"].iter().enumerate() {
        ledger
            .record_step(id, step, at(1) + Duration::from_millis(250 * i as u64))
            .await
            .expect("step");
    }
    assert_eq!(
        ledger
            .handled_in_run("run-1", "udid-1")
            .await
            .expect("handled"),
        None,
        "an attempt in progress has not handled the phone"
    );

    let mut r = report("udid-1", Outcome::Activated);
    r.serial = None; // the identity recorded earlier stays
    r.activation_locked = true;
    r.codes_tried = 1;
    r.released_by = Some(masked_release());
    ledger.finish(id, &r, at(2)).await.expect("finish");

    let record = latest(&ledger, "udid-1").await;
    assert_eq!(record.attempt_id, id);
    assert_eq!(record.station_id, "bench-1");
    assert_eq!(record.run_id, "run-1");
    assert_eq!(record.serial.as_deref(), Some("F2LX1"));
    assert_eq!(record.model.as_deref(), Some("iPhone 13"));
    assert_eq!(record.product_version.as_deref(), Some("18.1"));
    assert_eq!(record.slot.as_deref(), Some("S-udid-1"));
    assert_eq!(record.location_id, "0x00010002");
    assert_eq!(record.started_at, "2026-11-27T00:00:01.000Z");
    assert_eq!(
        record.finished_at.as_deref(),
        Some("2026-11-27T00:00:02.000Z")
    );
    assert_eq!(record.outcome, Status::Finished(Outcome::Activated));
    assert_eq!(record.stopped_at, None);
    assert!(record.activation_locked);
    assert_eq!(record.codes_tried, 1);
    assert_eq!(
        record.released_by,
        Some(ReleaseRecord {
            source: "intune".into(),
            kind: Some("server".into()),
            code: Some(MASKED.into()),
        })
    );
    assert_eq!(record.duration_ms, Some(1234));
    let timings: Vec<(&str, Option<u64>)> = record
        .steps
        .iter()
        .map(|s| (s.step.as_str(), s.duration_ms))
        .collect();
    assert_eq!(
        timings,
        [
            ("pair", Some(250)),
            ("identify", Some(250)),
            ("bypass", Some(500))
        ]
    );
    assert_eq!(
        ledger
            .handled_in_run("run-1", "udid-1")
            .await
            .expect("handled"),
        Some(Outcome::Activated)
    );
    assert_eq!(
        ledger
            .handled_in_run("run-2", "udid-1")
            .await
            .expect("handled"),
        None
    );

    let summary = ledger.finish_run("run-1", at(3)).await.expect("finish run");
    assert_eq!(summary.attempts, 1);
    assert_eq!(summary.phones, 1);
    assert_eq!(
        summary.outcomes,
        [OutcomeCount {
            outcome: Outcome::Activated,
            phones: 1
        }]
    );
    ledger.close().await;
}

#[tokio::test]
async fn an_outcome_is_final_and_unknown_attempts_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ledger, _) = Ledger::open(dir.path(), "bench-1").expect("open");
    let id = begin(&ledger, "r", "u", at(0)).await;
    let r = report("u", Outcome::DeviceError);
    ledger.finish(id, &r, at(1)).await.expect("finish");
    assert!(matches!(
        ledger.finish(id, &r, at(2)).await,
        Err(LedgerError::AlreadyFinished { .. })
    ));
    assert!(matches!(
        ledger.record_step(id, "verify", at(2)).await,
        Err(LedgerError::AlreadyFinished { .. })
    ));
    assert!(matches!(
        ledger.record_step(AttemptId(999), "verify", at(2)).await,
        Err(LedgerError::UnknownAttempt { .. })
    ));
    assert!(matches!(
        ledger.record_step(id, "no spaces; please", at(2)).await,
        Err(LedgerError::InvalidStep { .. })
    ));
    // A failed job in a batch leaves the others alone.
    let stored = latest(&ledger, "u").await;
    assert_eq!(stored.outcome, Status::Finished(Outcome::DeviceError));
    assert_eq!(stored.stopped_at.as_deref(), Some("activation_request"));
    ledger.close().await;
}

#[tokio::test]
async fn a_remote_release_is_recorded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ledger, _) = Ledger::open(dir.path(), "bench-1").expect("open");
    let id = begin(&ledger, "r", "u", at(0)).await;
    let mut r = report("u", Outcome::Activated);
    r.activation_locked = true;
    r.remote_release = Some(crate::codes::RemoteRelease {
        source: "intune".into(),
        action: "bypassActivationLock".into(),
        wait: Duration::from_secs(30),
        ..Default::default()
    });
    ledger.finish(id, &r, at(1)).await.expect("finish");
    let stored = latest(&ledger, "u").await;
    assert_eq!(stored.released_by, None);
    assert_eq!(
        stored.remote_release,
        Some(RemoteReleaseRecord {
            source: "intune".into(),
            action: Some("bypassActivationLock".into()),
        })
    );
    ledger.close().await;
}

#[tokio::test]
async fn durability_settings_of_the_open_ledger() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ledger, _) = Ledger::open(dir.path(), "bench-1").expect("open");
    let (mode, synchronous) = ledger
        .call(|c| {
            let pragma = |name| -> Result<String, LedgerError> {
                c.pragma_query_value(None, name, |r| r.get::<_, rusqlite::types::Value>(0))
                    .map(|v| match v {
                        rusqlite::types::Value::Text(t) => t,
                        rusqlite::types::Value::Integer(i) => i.to_string(),
                        other => format!("{other:?}"),
                    })
                    .map_err(|source| LedgerError::Sqlite {
                        context: "test",
                        source,
                    })
            };
            Ok((pragma("journal_mode")?, pragma("synchronous")?))
        })
        .await
        .expect("pragmas");
    assert_eq!(mode, "wal");
    assert_eq!(synchronous, "2", "synchronous=FULL");
    ledger.close().await;
}

#[tokio::test]
async fn one_writer_per_data_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ledger, _) = Ledger::open(dir.path(), "bench-1").expect("open");
    assert!(matches!(
        Ledger::open(dir.path(), "bench-1"),
        Err(LedgerError::InUse { .. })
    ));
    // Readers are welcome while the line runs.
    assert!(reader(dir.path()).attempts(&Filter::default()).is_ok());
    let clone = ledger.clone();
    ledger.close().await;
    assert!(matches!(
        clone.begin(&start("r", "u", at(0))).await,
        Err(LedgerError::Closed)
    ));
    assert!(Ledger::open(dir.path(), "bench-1").is_ok());
}

#[tokio::test]
async fn attempts_left_in_progress_are_recovered_as_interrupted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ledger, _) = Ledger::open(dir.path(), "bench-1").expect("open");
    ledger.start_run("r", at(0)).await.expect("run");
    let done = begin(&ledger, "r", "done", at(1)).await;
    ledger
        .finish(done, &report("done", Outcome::Activated), at(2))
        .await
        .expect("finish");
    let open = begin(&ledger, "r", "open", at(1)).await;
    ledger.record_step(open, "pair", at(3)).await.expect("step");
    ledger
        .record_step(open, "bypass", at(4))
        .await
        .expect("step");
    let early = begin(&ledger, "r", "early", at(5)).await;
    // The process goes away without finishing them.
    ledger.close().await;

    // A reader does not touch them: the station may still be running.
    let before = reader(dir.path())
        .attempts(&Filter::default())
        .expect("read");
    assert_eq!(
        before
            .iter()
            .filter(|r| r.outcome == Status::InProgress)
            .count(),
        2
    );

    let (ledger, recovered) = Ledger::open(dir.path(), "bench-1").expect("reopen");
    let summary: Vec<(AttemptId, Option<&str>)> = recovered
        .iter()
        .map(|r| (r.attempt_id, r.step.as_deref()))
        .collect();
    assert_eq!(summary, [(open, Some("bypass")), (early, None)]);
    assert!(recovered[0].message.contains("during step `bypass`"));
    assert!(recovered[1].message.contains("before its first step"));

    let record = latest(&ledger, "open").await;
    assert_eq!(record.outcome, Status::Finished(Outcome::Interrupted));
    assert_eq!(record.stopped_at.as_deref(), Some("bypass"));
    assert_eq!(
        record.finished_at.as_deref(),
        Some("2026-11-27T00:00:04.000Z")
    );
    assert_eq!(record.duration_ms, Some(3000));
    assert!(record.recovered_at.is_some());
    assert_eq!(record.steps.last().and_then(|s| s.duration_ms), None);
    let kept = latest(&ledger, "done").await;
    assert_eq!(kept.outcome, Status::Finished(Outcome::Activated));
    ledger.close().await;

    let (ledger, again) = Ledger::open(dir.path(), "bench-1").expect("reopen");
    assert!(again.is_empty(), "recovery happens once");
    ledger.close().await;
}

#[tokio::test]
async fn a_connection_that_vanishes_mid_attempt_is_recovered() {
    let dir = tempfile::tempdir().expect("tempdir");
    schema::create_private_dir(dir.path()).expect("dir");
    let conn = schema::open(&ledger_path(dir.path()), schema::Create::Yes).expect("open");
    let id = store::begin(&conn, "bench-1", &start("r", "u", at(0))).expect("begin");
    store::record_step(&conn, id, "verify", at(1)).expect("step");
    // No close, no checkpoint: the WAL is left as a killed process leaves it.
    std::mem::forget(conn);

    let (ledger, recovered) = Ledger::open(dir.path(), "bench-1").expect("reopen");
    assert_eq!(recovered.len(), 1);
    assert_eq!(recovered[0].step.as_deref(), Some("verify"));
    ledger.close().await;
}

const CRASH_DIR: &str = "STATION_LEDGER_CRASH_DIR";

/// Run by `a_killed_process_loses_no_committed_outcome` in a child process: commits one
/// outcome, leaves one attempt mid-step, and aborts (no destructors, no close).
#[test]
#[ignore = "helper, run in a child process by a_killed_process_loses_no_committed_outcome"]
fn crash_child() {
    let Some(dir) = std::env::var_os(CRASH_DIR) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let (ledger, _) = Ledger::open(Path::new(&dir), "bench-1").expect("open");
        ledger.start_run("r", at(0)).await.expect("run");
        let done = begin(&ledger, "r", "done", at(1)).await;
        ledger.record_step(done, "pair", at(1)).await.expect("step");
        ledger
            .finish(done, &report("done", Outcome::Activated), at(2))
            .await
            .expect("finish");
        let open = begin(&ledger, "r", "open", at(1)).await;
        ledger
            .record_step(open, "activation_request", at(3))
            .await
            .expect("step");
        std::process::abort();
    });
}

/// Runs [`crash_child`] in a child process of this test binary, its ledger in `dir`.
fn run_crash_child(dir: &std::path::Path) -> std::process::ExitStatus {
    let exe = std::env::current_exe().expect("test binary");
    std::process::Command::new(exe)
        .args([
            "ledger::tests::crash_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CRASH_DIR, dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run the child")
}

#[tokio::test]
async fn a_killed_process_loses_no_committed_outcome() {
    let dir = tempfile::tempdir().expect("tempdir");
    let status = run_crash_child(dir.path());
    assert!(!status.success(), "the child must die, not exit cleanly");

    let (ledger, recovered) =
        Ledger::open(dir.path(), "bench-1").expect("the lock died with the child");
    assert_eq!(recovered.len(), 1);
    assert_eq!(recovered[0].udid, "open");
    assert_eq!(recovered[0].step.as_deref(), Some("activation_request"));
    let done = latest(&ledger, "done").await;
    assert_eq!(done.outcome, Status::Finished(Outcome::Activated));
    let runs = ledger
        .call(|c| {
            c.query_row("SELECT status FROM runs WHERE run_id = 'r'", [], |r| {
                r.get::<_, String>(0)
            })
            .map_err(|source| LedgerError::Sqlite {
                context: "test",
                source,
            })
        })
        .await
        .expect("run status");
    assert_eq!(runs, "interrupted");
    ledger.close().await;
}

/// Every byte the ledger wrote, main file and WAL.
fn ledger_bytes(dir: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        if let Ok(bytes) = std::fs::read(entry.path()) {
            all.extend(bytes);
        }
    }
    all
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

#[tokio::test]
async fn a_whole_bypass_code_cannot_get_in() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ledger, _) = Ledger::open(dir.path(), "bench-1").expect("open");

    // Through the public path: a release carrying the whole code, and the code in the
    // reason and the source name.
    let id = begin(&ledger, "r", "u", at(0)).await;
    let mut r = report("u", Outcome::Activated);
    r.activation_locked = true;
    r.released_by = Some(Release {
        source: format!("csv:{COMPACT}.csv"),
        kind: CodeKind::Device,
        code: CODE.into(),
    });
    r.message = format!("activated with {CODE}");
    ledger
        .finish(id, &r, at(1))
        .await
        .expect("the outcome is kept");
    let stored = latest(&ledger, "u").await;
    assert_eq!(stored.outcome, Status::Finished(Outcome::Activated));
    let release = stored.released_by.expect("the source is kept");
    assert_eq!(release.code, None, "the code is dropped");
    assert_eq!(release.source, format!("csv:{MASKED}.csv"));
    assert_eq!(stored.reason, Some(format!("activated with {MASKED}")));

    // Around the type, straight in SQL: the schema refuses it too.
    let direct = ledger
        .call(move |c| {
            c.execute(
                "UPDATE attempts SET released_code = ?2 WHERE id = ?1",
                rusqlite::params![id.get(), CODE],
            )
            .map_err(|source| LedgerError::Sqlite {
                context: "test",
                source,
            })
        })
        .await;
    assert!(
        direct.is_err(),
        "the CHECK constraint must refuse a whole code"
    );
    ledger.close().await;

    let bytes = ledger_bytes(dir.path());
    assert!(!bytes.is_empty());
    for needle in [CODE, COMPACT, "PUYVY"] {
        assert!(
            !contains(&bytes, needle),
            "{needle} reached the ledger files"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_phones_at_once_all_land() {
    const PHONES: usize = 64;
    let dir = tempfile::tempdir().expect("tempdir");
    let (ledger, _) = Ledger::open(dir.path(), "bench-1").expect("open");
    ledger.start_run("r", at(0)).await.expect("run");
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..PHONES {
        let ledger = ledger.clone();
        tasks.spawn(async move {
            let udid = format!("udid-{n:02}");
            let id = ledger.begin(&start("r", &udid, at(1))).await?;
            // Progress is fire-and-forget; the outcome is awaited.
            drop(ledger.update_identity(id, &format!("SER{n}"), None, None));
            for step in ["pair", "identify", "handshake", "verify"] {
                drop(ledger.record_step(id, step, at(2)));
            }
            let outcome = if n % 4 == 0 {
                Outcome::LockedNoCode
            } else {
                Outcome::Activated
            };
            ledger.finish(id, &report(&udid, outcome), at(3)).await
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.expect("task").expect("ledger");
    }
    let summary = ledger.finish_run("r", at(4)).await.expect("finish run");
    assert_eq!(summary.attempts, PHONES as u64);
    assert_eq!(summary.phones, PHONES as u64);
    assert_eq!(summary.in_progress, 0);
    assert_eq!(
        summary.outcomes,
        [
            OutcomeCount {
                outcome: Outcome::Activated,
                phones: 48
            },
            OutcomeCount {
                outcome: Outcome::LockedNoCode,
                phones: 16
            }
        ]
    );
    let records = ledger.attempts(Filter::default()).await.expect("attempts");
    assert!(records
        .iter()
        .all(|r| r.steps.len() == 4 && r.serial.is_some()));
    ledger.close().await;
}

#[tokio::test]
async fn filters_select_by_time_outcome_lock_run_and_phone() {
    let dir = tempfile::tempdir().expect("tempdir");
    sample_ledger(dir.path()).await;
    let reader = reader(dir.path());
    let udids = |filter: Filter| -> Vec<String> {
        reader
            .attempts(&filter)
            .expect("attempts")
            .into_iter()
            .map(|r| format!("{}:{}", r.udid, r.outcome.name()))
            .collect()
    };
    assert_eq!(
        udids(Filter::default()),
        [
            "a:activated",
            "b:locked_no_code",
            "c:already_activated",
            "d:code_rejected",
            "b:user_locked",
            "f:in_progress"
        ],
        "oldest first"
    );
    let nov27 = datetime!(2026-11-27 00:00 UTC);
    assert_eq!(
        udids(Filter {
            since: Some(nov27),
            before: Some(datetime!(2026-11-27 11:00 UTC)),
            ..Filter::default()
        }),
        ["c:already_activated", "d:code_rejected"]
    );
    assert_eq!(
        udids(Filter {
            before: Some(nov27),
            ..Filter::default()
        }),
        ["a:activated", "b:locked_no_code"]
    );
    assert_eq!(
        udids(Filter {
            statuses: vec![Status::Finished(Outcome::CodeRejected), Status::InProgress],
            ..Filter::default()
        }),
        ["d:code_rejected", "f:in_progress"]
    );
    assert_eq!(
        udids(Filter {
            locked_only: true,
            ..Filter::default()
        }),
        [
            "a:activated",
            "b:locked_no_code",
            "d:code_rejected",
            "b:user_locked"
        ]
    );
    assert_eq!(
        udids(Filter {
            locked_only: true,
            latest_per_phone: true,
            ..Filter::default()
        }),
        ["a:activated", "d:code_rejected", "b:user_locked"]
    );
    assert_eq!(
        udids(Filter {
            run_id: Some("r1".into()),
            ..Filter::default()
        }),
        ["a:activated", "b:locked_no_code"]
    );
    let records = reader.attempts(&Filter::default()).expect("attempts");
    let f = records.iter().find(|r| r.udid == "f").expect("f");
    assert_eq!(
        f.stopped_at.as_deref(),
        Some("activation_request"),
        "its current step"
    );
    assert_eq!(f.finished_at, None);
}

#[test]
fn a_missing_ledger_reads_as_none() {
    let dir = tempfile::tempdir().expect("tempdir");
    assert!(LedgerReader::open(&dir.path().join("nope"))
        .expect("no error")
        .is_none());
}

#[tokio::test]
async fn a_run_that_could_not_start_is_failed_with_its_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ledger, _) = Ledger::open(dir.path(), "station-1").expect("open");
    ledger.start_run("ok", at(1)).await.expect("start");
    ledger.finish_run("ok", at(2)).await.expect("finish");
    ledger.start_run("broken", at(3)).await.expect("start");
    ledger
        .fail_run("broken", at(3), "usbmuxd-unreachable: no usbmuxd")
        .await
        .expect("fail");
    let runs = ledger
        .call(|c| {
            let mut stmt = c
                .prepare("SELECT run_id, status, error, finished_at IS NOT NULL FROM runs ORDER BY started_at")
                .map_err(crate::ledger::sqlite("test"))?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Option<String>>(2)?,
                        r.get::<_, bool>(3)?,
                    ))
                })
                .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                .map_err(crate::ledger::sqlite("test"))?;
            Ok(rows)
        })
        .await
        .expect("runs");
    assert_eq!(
        runs,
        [
            ("ok".to_string(), "finished".to_string(), None, true),
            (
                "broken".to_string(),
                "failed".to_string(),
                Some("usbmuxd-unreachable: no usbmuxd".to_string()),
                true
            ),
        ]
    );
    assert!(matches!(
        ledger.fail_run("nope", at(4), "x").await,
        Err(LedgerError::UnknownRun { .. })
    ));
    ledger.close().await;
}

#[tokio::test]
async fn lock_and_management_state_round_trips_and_filters() {
    use crate::lockstate::{ActivationLock, LockedTo, ManagementState};
    let dir = tempfile::tempdir().expect("tempdir");
    let (ledger, _) = Ledger::open(dir.path(), "bench-1").expect("open");
    ledger.start_run("r", at(0)).await.expect("run");
    let phones = [
        (
            "fmi",
            Outcome::FindMyOn,
            ManagementState {
                find_my: Some(true),
                passcode_set: Some(true),
                ..ManagementState::default()
            },
        ),
        (
            "supervised",
            Outcome::Activated,
            ManagementState {
                find_my: Some(false),
                supervised: Some(true),
                organization: Some("Acme Corp".into()),
                mdm_enrolled: Some(true),
                mdm_unremovable: Some(false),
                ..ManagementState::default()
            },
        ),
        ("fresh", Outcome::UserLocked, ManagementState::default()),
    ];
    for (i, (udid, outcome, management)) in phones.iter().enumerate() {
        let started = at(60 * i as u64);
        let id = begin(&ledger, "r", udid, started).await;
        let mut r = report(udid, *outcome);
        r.management = management.clone();
        r.activation_locked = *outcome == Outcome::UserLocked;
        ledger
            .finish(id, &r, started + Duration::from_secs(1))
            .await
            .expect("finish");
    }
    ledger.close().await;
    let reader = reader(dir.path());
    let udids = |filter: Filter| -> Vec<String> {
        reader
            .attempts(&filter)
            .expect("attempts")
            .into_iter()
            .map(|r| r.udid)
            .collect()
    };
    let all = reader.attempts(&Filter::default()).expect("attempts");
    for (udid, _, management) in &phones {
        let row = all.iter().find(|r| r.udid == *udid).expect("row");
        assert_eq!(&row.management, management, "{udid}");
    }
    let lock = |udid: &str| {
        all.iter()
            .find(|r| r.udid == udid)
            .and_then(|r| r.activation_lock.clone())
    };
    assert_eq!(lock("fmi"), None, "Apple was not asked");
    assert_eq!(lock("supervised"), Some(ActivationLock::None));
    assert_eq!(
        lock("fresh"),
        Some(ActivationLock::Locked {
            locked_to: LockedTo::Personal
        })
    );
    assert_eq!(
        udids(Filter {
            find_my: Some(true),
            ..Filter::default()
        }),
        ["fmi"]
    );
    assert_eq!(
        udids(Filter {
            find_my: Some(false),
            ..Filter::default()
        }),
        ["supervised"],
        "a phone that said nothing is neither on nor off"
    );
    assert_eq!(
        udids(Filter {
            supervised_only: true,
            ..Filter::default()
        }),
        ["supervised"]
    );
    assert_eq!(
        udids(Filter {
            organization: Some("acme corp".into()),
            ..Filter::default()
        }),
        ["supervised"]
    );
    assert!(udids(Filter {
        organization: Some("Other".into()),
        ..Filter::default()
    })
    .is_empty());
}

#[tokio::test]
async fn finished_attempts_are_queued_for_the_fleet_with_their_outcome() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ledger, _) = Ledger::open(dir.path(), "bench-1").expect("open");
    ledger.start_run("r", at(0)).await.expect("run");
    let first = begin(&ledger, "r", "a", at(1)).await;
    let second = begin(&ledger, "r", "b", at(2)).await;
    let pending = ledger.outbox_pending(10).await.expect("outbox");
    assert!(
        pending.records.is_empty(),
        "nothing queued while in progress"
    );
    // Finished in the other order: the outbox keeps the order they finished in.
    ledger
        .finish(second, &report("b", Outcome::Activated), at(3))
        .await
        .expect("finish");
    ledger
        .finish(first, &report("a", Outcome::UserLocked), at(4))
        .await
        .expect("finish");
    let pending = ledger.outbox_pending(10).await.expect("outbox");
    let ids: Vec<AttemptId> = pending.records.iter().map(|r| r.attempt_id).collect();
    assert_eq!(ids, [second, first]);
    assert_eq!(pending.backlog, 2);
    assert_eq!(
        pending.records[1].outcome,
        Status::Finished(Outcome::UserLocked)
    );
    // A batch of one, then the rest.
    let head = ledger.outbox_pending(1).await.expect("outbox");
    assert_eq!(head.records.len(), 1);
    assert_eq!(ledger.outbox_shipped(head.up_to).await.expect("shipped"), 1);
    let rest = ledger.outbox_pending(10).await.expect("outbox");
    assert_eq!(
        rest.records
            .iter()
            .map(|r| r.attempt_id)
            .collect::<Vec<_>>(),
        [first]
    );
    assert_eq!(ledger.outbox_shipped(rest.up_to).await.expect("shipped"), 0);
    // A refused outcome queues nothing: the finish and its queueing are one transaction.
    assert!(ledger
        .finish(first, &report("a", Outcome::Activated), at(5))
        .await
        .is_err());
    assert_eq!(reader(dir.path()).outbox_backlog().expect("backlog"), 0);
    ledger.close().await;
}

#[tokio::test]
async fn recovered_attempts_are_queued_and_a_kill_keeps_the_queue() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The child finishes one attempt and aborts inside another (see crash_child).
    let status = run_crash_child(dir.path());
    assert!(!status.success());
    assert_eq!(
        reader(dir.path()).outbox_backlog().expect("backlog"),
        1,
        "the committed outcome was queued before the kill"
    );
    let (ledger, recovered) = Ledger::open(dir.path(), "bench-1").expect("open");
    assert_eq!(recovered.len(), 1);
    let pending = ledger.outbox_pending(10).await.expect("outbox");
    let queued: Vec<(&str, Status)> = pending
        .records
        .iter()
        .map(|r| (r.udid.as_str(), r.outcome))
        .collect();
    assert_eq!(
        queued,
        [
            ("done", Status::Finished(Outcome::Activated)),
            ("open", Status::Finished(Outcome::Interrupted))
        ]
    );
    ledger.close().await;
}

#[test]
fn version_3_ledgers_queue_their_finished_history() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = ledger_path(dir.path());
    {
        let conn = Connection::open(&path).expect("create");
        for sql in &schema::MIGRATIONS[..3] {
            conn.execute_batch(sql).expect("v3 schema");
        }
        conn.execute_batch(
            "INSERT INTO runs (run_id, station_id, started_at) VALUES ('r', 's', 't');
             INSERT INTO attempts (id, run_id, station_id, udid, location_id, started_at, finished_at, outcome)
                 VALUES (1, 'r', 's', 'late', 1, '2026-11-27T00:00:01.000Z', '2026-11-27T00:00:09.000Z', 'activated'),
                        (2, 'r', 's', 'early', 1, '2026-11-27T00:00:02.000Z', '2026-11-27T00:00:03.000Z', 'user_locked'),
                        (3, 'r', 's', 'open', 1, '2026-11-27T00:00:04.000Z', NULL, NULL);",
        )
        .expect("v3 rows");
        conn.pragma_update(None, "user_version", 3).expect("v3");
    }
    let conn = schema::open(&path, schema::Create::No).expect("migrate");
    let queued: Vec<i64> = conn
        .prepare("SELECT attempt_id FROM outbox ORDER BY seq")
        .expect("prepare")
        .query_map([], |r| r.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert_eq!(queued, [2, 1], "finished ones, in the order they finished");
}

#[tokio::test]
async fn records_read_back_from_their_json_unchanged() {
    // The fleet database keeps each attempt as the report's JSON; `report --fleet` reads it
    // back into the same record, so both reports render alike.
    let dir = tempfile::tempdir().expect("tempdir");
    sample_ledger(dir.path()).await;
    let records = reader(dir.path())
        .attempts(&Filter::default())
        .expect("read");
    assert!(records.iter().any(|r| r.released_by.is_some()));
    for record in &records {
        let text = serde_json::to_string(record).expect("json");
        let back: AttemptRecord = serde_json::from_str(&text).expect("parses back");
        assert_eq!(&back, record);
    }
}
