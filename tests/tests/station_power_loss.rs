//! Power loss on the ledger (issue 13): `station run` killed with SIGKILL at random moments
//! against the virtual bench and restarted, again and again. After every kill the ledger
//! passes `PRAGMA integrity_check`, every outcome committed before is still there as it was,
//! no attempt is recorded twice, and the attempts a kill left open are closed as
//! `interrupted` by a later start (and by nothing else). A last `station run --once` then
//! handles every phone.
//!
//! The suite runs 10 kills; `scripts/killloop` runs 100 (`STATION_KILLS`). The moments come
//! from a seed printed at the start (`STATION_KILL_SEED` replays one).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use station_sim::ActivationState;
use station_tests::fixtures::{self, Phone, CODE_A};
use station_tests::inproc::{InProcBench, StreamingStation};
use station_tests::seeded::SeededRng;

const DEFAULT_KILLS: u64 = 10;
/// The longest a station runs before it is killed: long enough for a whole pass over the
/// bench at the activation server's latency below, so kills land in every phase.
const MAX_LIFETIME_MS: u64 = 2500;
const SERVER_LATENCY: Duration = Duration::from_millis(150);

/// One attempt row as the checks compare it.
#[derive(Debug, Clone, PartialEq)]
struct Attempt {
    run_id: String,
    udid: String,
    started_at: String,
    outcome: Option<String>,
    finished_at: Option<String>,
    message: Option<String>,
    recovered_at: Option<String>,
}

/// The ledger as read after a kill (the station is dead: nothing else writes).
struct Snapshot {
    attempts: BTreeMap<i64, Attempt>,
    runs_running: usize,
}

fn read_ledger(data_dir: &Path) -> Option<Snapshot> {
    let path = data_dir.join("ledger.sqlite3");
    if !path.exists() {
        // Killed before the first start got as far as creating it.
        return None;
    }
    let conn = station_tests::open_checked_ledger(data_dir);
    let has_tables: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE name IN ('attempts', 'runs')",
            [],
            |row| row.get(0),
        )
        .expect("sqlite_master");
    if has_tables < 2 {
        // Killed while the schema was being made: its transaction never committed.
        return None;
    }
    let mut statement = conn
        .prepare(
            "SELECT id, run_id, udid, started_at, outcome, finished_at, message, recovered_at \
             FROM attempts ORDER BY id",
        )
        .expect("prepare");
    let attempts = statement
        .query_map([], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                Attempt {
                    run_id: row.get(1)?,
                    udid: row.get(2)?,
                    started_at: row.get(3)?,
                    outcome: row.get(4)?,
                    finished_at: row.get(5)?,
                    message: row.get(6)?,
                    recovered_at: row.get(7)?,
                },
            ))
        })
        .expect("query attempts")
        .collect::<Result<BTreeMap<_, _>, _>>()
        .expect("read attempts");
    let runs_running: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM runs WHERE status = 'running'",
            [],
            |row| row.get(0),
        )
        .expect("runs");
    Some(Snapshot {
        attempts,
        runs_running: usize::try_from(runs_running).expect("count"),
    })
}

/// What every snapshot must satisfy against the one before it.
fn check(before: &Snapshot, now: &Snapshot, kill: u64, ever_open: &BTreeSet<i64>) {
    for (id, earlier) in &before.attempts {
        let later = now
            .attempts
            .get(id)
            .unwrap_or_else(|| panic!("kill {kill}: attempt {id} vanished: {earlier:?}"));
        if earlier.outcome.is_some() {
            assert_eq!(
                later, earlier,
                "kill {kill}: committed attempt {id} changed"
            );
        }
    }
    for id in ever_open {
        if let Some(attempt) = now.attempts.get(id) {
            assert!(
                matches!(attempt.outcome.as_deref(), None | Some("interrupted")),
                "kill {kill}: attempt {id}, open at a kill, closed as {:?} (only recovery may close it): {attempt:?}",
                attempt.outcome
            );
            if attempt.outcome.is_some() {
                assert!(
                    attempt.recovered_at.is_some(),
                    "kill {kill}: {id} interrupted without recovered_at"
                );
            }
        }
    }
    // No attempt recorded twice, and one phone has at most one open attempt per run.
    let mut seen = BTreeSet::new();
    let mut open = BTreeSet::new();
    for attempt in now.attempts.values() {
        assert!(
            seen.insert((&attempt.run_id, &attempt.udid, &attempt.started_at)),
            "kill {kill}: attempt recorded twice: {attempt:?}"
        );
        if attempt.outcome.is_none() {
            assert!(
                open.insert((&attempt.run_id, &attempt.udid)),
                "kill {kill}: two open attempts of {} in run {}",
                attempt.udid,
                attempt.run_id
            );
        }
    }
    // The killed run, at most, is still marked running (recovery closes the ones before).
    assert!(
        now.runs_running <= 1,
        "kill {kill}: {} runs still marked running",
        now.runs_running
    );
}

fn knob(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a whole number")),
        Err(_) => default,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_keeps_the_ledger_whole() {
    let kills = knob("STATION_KILLS", DEFAULT_KILLS);
    let seed = knob(
        "STATION_KILL_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(13, |d| d.as_secs()),
    );
    eprintln!("sigkill loop: {kills} kills, STATION_KILL_SEED={seed}");
    let mut moments = SeededRng::new(seed);

    let f = InProcBench::start(&fixtures::world(
        13,
        &[
            Phone::unactivated("a"),
            Phone::unactivated("b"),
            Phone::unactivated("c"),
            Phone::mdm_locked("mdm", &[CODE_A]),
            Phone::activated("done"),
        ],
    ))
    .await;
    let codes = f.codes_csv("codes.csv", &[("mdm", CODE_A, "device")]);
    let config = f.station_config(Some(&codes), 4, "");
    let config = config.to_str().expect("utf-8").to_string();
    let data_dir = f.path("data");
    f.bench.albert().set_latency(SERVER_LATENCY);

    let mut before = Snapshot {
        attempts: BTreeMap::new(),
        runs_running: 0,
    };
    let mut ever_open = BTreeSet::new();
    let mut mid_attempt_kills = 0;
    for kill in 1..=kills {
        let mut station = f.spawn_station(&["--config", &config, "run"]);
        let spawned = Instant::now();
        // Half of the kills wait for a phone's step first (so they land inside an attempt);
        // the others land anywhere, start-up and ledger opening included.
        if moments.below(2) == 0 {
            let _ = wait_for_step(&mut station, Duration::from_secs(5)).await;
            tokio::time::sleep(Duration::from_millis(moments.below(400))).await;
        } else {
            let at = Duration::from_millis(moments.below(MAX_LIFETIME_MS));
            tokio::time::sleep(at.saturating_sub(spawned.elapsed())).await;
        }
        station.kill();

        let Some(now) = read_ledger(&data_dir) else {
            assert!(
                before.attempts.is_empty(),
                "kill {kill}: the ledger vanished"
            );
            continue;
        };
        check(&before, &now, kill, &ever_open);
        let open: Vec<i64> = now
            .attempts
            .iter()
            .filter(|(_, a)| a.outcome.is_none())
            .map(|(id, _)| *id)
            .collect();
        if !open.is_empty() {
            mid_attempt_kills += 1;
        }
        ever_open.extend(open);
        before = now;

        // Now and then the clean phones are reset, so later runs activate again instead of
        // only finding them activated.
        if moments.below(3) == 0 {
            for name in ["a", "b", "c"] {
                f.bench
                    .set_activation_state(f.udid(name), ActivationState::Unactivated)
                    .await
                    .expect("reset a phone");
            }
        }
    }
    eprintln!(
        "sigkill loop: {kills} kills, {mid_attempt_kills} left attempts open, {} attempts open at a kill in all",
        ever_open.len()
    );

    // A last run to the end: it recovers what the last kill left open and handles every phone.
    f.bench.albert().set_latency(Duration::ZERO);
    let station = f.spawn_station(&["--config", &config, "run", "--once"]);
    let (events, status) = station.finish(Duration::from_secs(120)).await;
    assert!(
        status.success(),
        "the last run failed ({status}): {events:#?}"
    );
    let last = read_ledger(&data_dir).expect("a ledger after the last run");
    check(&before, &last, kills + 1, &ever_open);
    for id in &ever_open {
        let attempt = &last.attempts[id];
        assert_eq!(
            attempt.outcome.as_deref(),
            Some("interrupted"),
            "attempt {id}, open at a kill, not recovered: {attempt:?}"
        );
        assert!(
            attempt
                .message
                .as_deref()
                .is_some_and(|m| m.contains("station stopped")),
            "{attempt:?}"
        );
    }
    assert!(
        last.attempts.values().all(|a| a.outcome.is_some()),
        "attempts still open after a clean run"
    );
    assert_eq!(last.runs_running, 0, "a run still marked running");
    let finished: BTreeMap<&str, &str> = events
        .iter()
        .filter(|e| e["event"] == "finished")
        .filter_map(|e| Some((e["udid"].as_str()?, e["outcome"].as_str()?)))
        .collect();
    for name in ["a", "b", "c", "mdm", "done"] {
        let outcome = finished.get(f.udid(name)).copied();
        assert!(
            matches!(outcome, Some("activated" | "already_activated")),
            "{name} ended {outcome:?} in the last run: {events:#?}"
        );
    }
}

/// Waits for the first `step` event; `None` if the station ends or `timeout` passes first
/// (a kill then lands wherever the station is).
async fn wait_for_step(station: &mut StreamingStation, timeout: Duration) -> Option<()> {
    let deadline = Instant::now() + timeout;
    loop {
        match station.lines.try_recv() {
            Ok(line) => {
                let event: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                if event["event"] == "step" {
                    return Some(());
                }
            }
            Err(std::sync::mpsc::TryRecvError::Empty) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(_) => return None,
        }
    }
}
