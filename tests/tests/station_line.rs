//! `station run` end to end against the virtual bench: a mixed bench handled by `--once`,
//! unplug and replug, the concurrency limit, a crash and restart, and configuration errors.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use station_sim::Endpoint;
use station_tests::fixtures::{
    self, toml_list, Phone, CODE_A, CODE_A_MASKED, CODE_B, CODE_C, CODE_D,
};
use station_tests::inproc::{ndjson, InProcBench};

const GOOD: &str = CODE_A;
const STALE: &str = CODE_C;
const SECOND: &str = CODE_B;
const NO_CODE_KNOWN: &str = CODE_D;

/// The phones of [`mixed`].
const CLEAN: &str = "clean";
const MDM: &str = "mdm";
const STALE_AND_GOOD: &str = "stale-and-good";
const USER_LOCKED: &str = "user-locked";
const ACTIVATED: &str = "activated";
const SLOW_TRUST: &str = "slow-trust";
const MDM_NO_CODE: &str = "mdm-no-code";
const LAST_CLEAN: &str = "last-clean";

fn mixed() -> String {
    fixtures::world(
        21,
        &[
            Phone::unactivated(CLEAN),
            Phone::mdm_locked(MDM, &[GOOD]),
            Phone::mdm_locked(STALE_AND_GOOD, &[SECOND]).with("stale_codes", &toml_list(&[STALE])),
            Phone::user_locked(USER_LOCKED),
            Phone::activated(ACTIVATED),
            Phone::activated(SLOW_TRUST)
                .with("trust", "\"accept\"")
                .with("trust_delay_ms", "1500"),
            Phone::mdm_locked(MDM_NO_CODE, &[NO_CODE_KNOWN]),
            Phone::unactivated(LAST_CLEAN),
        ],
    )
}

/// The outcome each phone of [`mixed`] must end with.
const EXPECTED: [(&str, &str); 8] = [
    (CLEAN, "activated"),
    (MDM, "activated"),
    (STALE_AND_GOOD, "activated"),
    (USER_LOCKED, "user_locked"),
    (ACTIVATED, "already_activated"),
    (SLOW_TRUST, "already_activated"),
    (MDM_NO_CODE, "locked_no_code"),
    (LAST_CLEAN, "activated"),
];

async fn mixed_bench() -> (InProcBench, std::path::PathBuf) {
    let bench = InProcBench::start(&mixed()).await;
    let codes = bench.codes_csv(
        "codes.csv",
        &[
            (MDM, GOOD, "device"),
            (STALE_AND_GOOD, STALE, "device"),
            (STALE_AND_GOOD, SECOND, "server"),
            (MDM_NO_CODE, "", "unknown"),
        ],
    );
    let config = bench.station_config(Some(&codes), 3, "");
    (bench, config)
}

/// Final `finished` outcome per UDID.
fn outcomes(events: &[Value]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for e in events.iter().filter(|e| e["event"] == "finished") {
        out.insert(
            e["udid"].as_str().unwrap_or_default().to_string(),
            e["outcome"].as_str().unwrap_or_default().to_string(),
        );
    }
    out
}

/// Phones in flight at once, replayed from started/finished events.
fn max_in_flight(events: &[Value]) -> usize {
    let (mut now, mut max) = (0usize, 0usize);
    for e in events {
        match e["event"].as_str() {
            Some("started") => {
                now += 1;
                max = max.max(now);
                assert!(
                    e["in_flight"].as_u64().is_some_and(|n| n as usize <= 3),
                    "{e}"
                );
            }
            Some("finished") => now = now.saturating_sub(1),
            _ => {}
        }
    }
    max
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_bench_ends_with_the_right_outcome_everywhere() {
    let (f, config) = mixed_bench().await;
    // Slow answers make the phones overlap, so the limit is exercised.
    f.bench.albert().set_latency(Duration::from_millis(150));
    let config = config.to_str().expect("utf-8");
    let out = f
        .station(
            &["--config", config, "run", "--once", "--trust-wait", "20"],
            false,
        )
        .await;
    let events = ndjson(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "two phones need attention: {out}"
    );

    assert_eq!(
        events.first().map(|e| e["event"].clone()),
        Some(Value::from("run_started"))
    );
    for e in &events {
        assert_eq!(e["v"], 2, "{e}");
        if e["event"] != "run_started" && e["event"] != "summary" {
            assert!(
                e["udid"].is_string() && e["slot"].is_string(),
                "every phone event names udid and slot: {e}"
            );
        }
    }
    let finals = outcomes(&events);
    for (phone, expected) in EXPECTED {
        assert_eq!(
            finals.get(f.udid(phone)).map(String::as_str),
            Some(expected),
            "phone {phone}: {}",
            out.stdout
        );
    }
    let in_flight = max_in_flight(&events);
    assert!(
        (1..=3).contains(&in_flight),
        "in flight at most 3, saw {in_flight}"
    );

    let summary = events.last().expect("summary");
    assert_eq!(summary["event"], "summary");
    assert_eq!(summary["phones"], 8);
    assert_eq!(summary["counts"]["activated"], 4);
    assert_eq!(summary["counts"]["already_activated"], 2);
    let attention: Vec<&str> = summary["attention"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|a| a["udid"].as_str())
        .collect();
    assert_eq!(attention.len(), 2, "{summary}");
    assert!(attention.contains(&f.udid(USER_LOCKED)) && attention.contains(&f.udid(MDM_NO_CODE)));

    // The ledger says the same, and the locked report lists the four locked phones.
    let report = f
        .station(&["--config", config, "report", "--format", "json"], false)
        .await;
    report.assert_success();
    let rows: Vec<Value> = serde_json::from_str(&report.stdout).expect("report json");
    for (phone, expected) in EXPECTED {
        let row = rows
            .iter()
            .find(|r| r["udid"] == f.udid(phone))
            .expect("row per phone");
        assert_eq!(row["outcome"], expected, "{row}");
        assert_eq!(row["station_id"], "test-bench");
        // Find My is only believed on a phone that arrived activated (docs/report.md).
        let arrived_activated = [ACTIVATED, SLOW_TRUST].contains(&phone);
        assert_eq!(
            row["find_my"],
            if arrived_activated {
                Value::from(false)
            } else {
                Value::Null
            },
            "{row}"
        );
    }
    let find_my_off = f
        .station(
            &[
                "--config",
                config,
                "report",
                "--find-my",
                "off",
                "--format",
                "json",
            ],
            false,
        )
        .await;
    find_my_off.assert_success();
    let find_my_off: Vec<Value> = serde_json::from_str(&find_my_off.stdout).expect("json");
    let mut off: Vec<&str> = find_my_off
        .iter()
        .filter_map(|r| r["udid"].as_str())
        .collect();
    off.sort_unstable();
    let mut want_off = vec![f.udid(ACTIVATED), f.udid(SLOW_TRUST)];
    want_off.sort_unstable();
    assert_eq!(off, want_off);
    let locked = f
        .station(
            &["--config", config, "report", "--locked", "--format", "json"],
            false,
        )
        .await;
    let locked: Vec<Value> = serde_json::from_str(&locked.stdout).expect("locked json");
    let mut locked_udids: Vec<&str> = locked.iter().filter_map(|r| r["udid"].as_str()).collect();
    locked_udids.sort_unstable();
    let mut want: Vec<&str> = [MDM, STALE_AND_GOOD, USER_LOCKED, MDM_NO_CODE]
        .iter()
        .map(|phone| f.udid(phone))
        .collect();
    want.sort_unstable();
    assert_eq!(locked_udids, want);
    let released = locked
        .iter()
        .find(|r| r["udid"] == f.udid(MDM))
        .expect("released row");
    assert_eq!(released["released_by"]["code"], CODE_A_MASKED, "{released}");

    // No code whole anywhere the station wrote.
    let ledger = std::fs::read(f.path("data").join("ledger.sqlite3")).unwrap_or_default();
    let written = format!(
        "{}{}{}",
        out.stdout,
        out.stderr,
        String::from_utf8_lossy(&ledger)
    );
    for code in [GOOD, STALE, SECOND, NO_CODE_KNOWN] {
        assert!(
            !written.contains(code) && !written.contains(&code.replace('-', "")),
            "a code leaked"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unplugged_phone_is_interrupted_and_resumes_when_plugged_back() {
    let (f, _) = mixed_bench().await;
    // The phone sits on port 1-1.4.2, labelled A7; its replug takes a new LocationID.
    f.usb_port(CLEAN, "1-1.4.2");
    let config = f.station_config(
        Some(&f.path("codes.csv")),
        3,
        "\n[slots]\n\"1-1.4.2\" = \"A7\"\n",
    );
    f.bench.albert().set_latency(Duration::from_millis(600));
    let udid = f.udid(CLEAN).to_string();
    let mut station = f.spawn_station(&[
        "--config",
        config.to_str().expect("utf-8"),
        "run",
        "--once",
        "--trust-wait",
        "20",
        "--replug-grace",
        "20",
    ]);
    station
        .wait_for(Duration::from_secs(30), |e| {
            e["event"] == "step" && e["udid"] == udid.as_str() && e["step"] == "handshake"
        })
        .await;
    f.bench.unplug(&udid).expect("unplug");
    station
        .wait_for(Duration::from_secs(30), |e| {
            e["event"] == "finished" && e["udid"] == udid.as_str()
        })
        .await;
    f.bench.plug(&udid).expect("plug back");
    let (events, status) = station.finish(Duration::from_secs(90)).await;
    assert_eq!(
        status.code(),
        Some(1),
        "the user-locked and no-code phones need attention"
    );
    let mine: Vec<&Value> = events
        .iter()
        .filter(|e| e["udid"] == udid.as_str() && e["event"] == "finished")
        .collect();
    assert_eq!(mine.len(), 2, "{mine:#?}");
    assert_eq!(mine[0]["outcome"], "interrupted");
    assert!(mine[0]["message"]
        .as_str()
        .unwrap_or_default()
        .contains("plug it back in"));
    assert_eq!(mine[1]["outcome"], "activated");
    assert!(events
        .iter()
        .any(|e| e["event"] == "detached" && e["udid"] == udid.as_str()));
    // Every event about the phone carries its port's label, before and after the replug,
    // though usbmuxd's LocationID changed.
    let attached: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "attached" && e["udid"] == udid.as_str())
        .collect();
    assert_eq!(attached.len(), 2, "{attached:#?}");
    assert_ne!(attached[0]["location_id"], attached[1]["location_id"]);
    assert!(
        events
            .iter()
            .filter(|e| e["udid"] == udid.as_str())
            .all(|e| e["slot"] == "A7"),
        "{events:#?}"
    );
    assert_eq!(f.ideviceinfo_state(CLEAN).await, "Activated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_show_the_port_path_and_its_label_across_a_replug() {
    let f = InProcBench::start(&fixtures::world(
        3,
        &[Phone::named("on-port"), Phone::named("other")],
    ))
    .await;
    f.usb_port("on-port", "1-1.4.2");
    let config = f.station_config(None, 2, "\n[slots]\n\"1-1.4.2\" = \"A1\"\n");
    let config = config.to_str().expect("utf-8");
    let rows = |out: &station_tests::Output| -> Vec<Value> {
        out.assert_success();
        serde_json::from_str(&out.stdout).expect("json rows")
    };
    let before = rows(
        &f.station(&["--config", config, "--json", "devices"], false)
            .await,
    );
    let row = |rows: &[Value], udid: &str| -> Value {
        rows.iter()
            .find(|r| r["udid"] == udid)
            .cloned()
            .expect("row")
    };
    let phone = row(&before, f.udid("on-port"));
    assert_eq!(phone["port_path"], "1-1.4.2");
    assert_eq!(phone["slot"], "A1");
    assert_eq!(phone["slot_by"], "port_path");
    // The other phone has no USB device here (virtual bench): no port, said so.
    let other = row(&before, f.udid("other"));
    assert_eq!(other["port_path"], Value::Null);
    assert_eq!(other["slot_by"], "location_id");

    f.bench.unplug(f.udid("on-port")).expect("unplug");
    f.bench.plug(f.udid("on-port")).expect("plug");
    let after = rows(
        &f.station(&["--config", config, "--json", "devices"], false)
            .await,
    );
    let replugged = row(&after, f.udid("on-port"));
    assert_ne!(replugged["location"], phone["location"]);
    assert_eq!(replugged["port_path"], "1-1.4.2");
    assert_eq!(replugged["slot"], "A1");

    let table = f.station(&["--config", config, "devices"], false).await;
    table.assert_success();
    assert!(table.stdout.contains("PORT"), "{table}");
    assert!(table.stdout.contains("1-1.4.2"), "{table}");
    assert!(table.stdout.contains("known by LOCATION only"), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_station_loses_no_committed_outcome() {
    let (f, config) = mixed_bench().await;
    let config = config.to_str().expect("utf-8").to_string();
    // Phone 4 (already activated) finishes fast; the server is slow for the others.
    f.bench.albert().set_latency(Duration::from_millis(2500));
    let mut station =
        f.spawn_station(&["--config", &config, "run", "--once", "--trust-wait", "20"]);
    let first = station
        .wait_for(Duration::from_secs(30), |e| e["event"] == "finished")
        .await;
    station
        .wait_for(Duration::from_secs(30), |e| {
            e["event"] == "step" && e["step"] == "handshake"
        })
        .await;
    station.kill(); // SIGKILL: no chance to clean up
    let committed: Vec<(String, String)> = station
        .seen
        .iter()
        .filter(|e| e["event"] == "finished")
        .map(|e| {
            (
                e["udid"].as_str().unwrap_or_default().to_string(),
                e["outcome"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert!(!committed.is_empty(), "{first}");
    let in_progress: Vec<String> = station
        .seen
        .iter()
        .filter(|e| e["event"] == "started")
        .filter_map(|e| e["udid"].as_str().map(str::to_string))
        .filter(|u| !committed.iter().any(|(c, _)| c == u))
        .collect();
    assert!(!in_progress.is_empty());

    // Restart: the unfinished attempts are recovered as interrupted, then the phones are done.
    f.bench.albert().set_latency(Duration::from_millis(0));
    let out = f
        .station(
            &["--config", &config, "run", "--once", "--trust-wait", "20"],
            false,
        )
        .await;
    let events = ndjson(&out.stdout);
    let recovered: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "recovered")
        .filter_map(|e| e["udid"].as_str())
        .collect();
    for udid in &in_progress {
        assert!(
            recovered.contains(&udid.as_str()),
            "{udid} not recovered: {}",
            out.stdout
        );
    }

    let report = f
        .station(&["--config", &config, "report", "--format", "json"], false)
        .await;
    let rows: Vec<Value> = serde_json::from_str(&report.stdout).expect("json");
    for (udid, outcome) in &committed {
        assert!(
            rows.iter()
                .any(|r| r["udid"] == udid.as_str() && r["outcome"] == outcome.as_str()),
            "committed outcome of {udid} lost: {}",
            report.stdout
        );
    }
    for udid in &in_progress {
        let row = rows
            .iter()
            .find(|r| r["udid"] == udid.as_str() && r["outcome"] == "interrupted")
            .expect("interrupted row");
        assert!(
            row["reason"]
                .as_str()
                .unwrap_or_default()
                .contains("station stopped"),
            "{row}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_by_the_line() {
    let f = InProcBench::start(&fixtures::world(3, &[Phone::unactivated(CLEAN)])).await;
    let config = f.station_config(None, 2, "");
    f.bench.albert().set_failures(Endpoint::DrmHandshake, 5);
    let out = f
        .station(
            &["--config", config.to_str().expect("utf-8"), "run", "--once"],
            false,
        )
        .await;
    let events = ndjson(&out.stdout);
    assert!(
        events.iter().any(|e| e["event"] == "retrying"),
        "{}",
        out.stdout
    );
    assert_eq!(
        outcomes(&events).get(f.udid(CLEAN)).map(String::as_str),
        Some("activated"),
        "{}",
        out.stdout
    );
    out.assert_success();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_errors_point_at_the_line() {
    let f = InProcBench::start("seed = 3\n[[device]]\n").await;
    let path = f.path("bad.toml");
    std::fs::write(&path, "[station]\nid = \"x\"\nconcurency = 4\n").expect("write");
    let out = f
        .station(
            &["--config", path.to_str().expect("utf-8"), "run", "--once"],
            false,
        )
        .await;
    assert_eq!(out.status.code(), Some(2), "{out}");
    assert!(
        out.stderr
            .contains("bad.toml:3:1: unknown key `concurency`: did you mean `concurrency`?"),
        "{out}"
    );

    std::fs::write(&path, "[station]\nconcurrency = 0\n").expect("write");
    let out = f
        .station(
            &["--config", path.to_str().expect("utf-8"), "config", "check"],
            false,
        )
        .await;
    assert_eq!(out.status.code(), Some(2), "{out}");
    assert!(
        out.stderr.contains("bad.toml:2:15:") && out.stderr.contains("out of range"),
        "{out}"
    );

    let example = f.station(&["config", "example"], false).await;
    example.assert_success();
    std::fs::write(&path, &example.stdout).expect("write");
    let check = f
        .station(
            &["--config", path.to_str().expect("utf-8"), "config", "check"],
            false,
        )
        .await;
    check.assert_success();
    assert!(check.stdout.contains(": valid"), "{check}");
    assert!(!check.stdout.contains("warning"), "{check}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_lets_phones_in_flight_finish_and_writes_the_summary() {
    let (f, config) = mixed_bench().await;
    f.bench.albert().set_latency(Duration::from_millis(800));
    // Line mode without --once: it would run until stopped.
    let mut station = f.spawn_station(&[
        "--config",
        config.to_str().expect("utf-8"),
        "run",
        "--trust-wait",
        "20",
    ]);
    station
        .wait_for(Duration::from_secs(30), |e| {
            e["event"] == "step" && e["step"] == "handshake"
        })
        .await;
    let pid = station.child.id().to_string();
    let kill = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill");
    assert!(kill.success());
    let (events, status) = station.finish(Duration::from_secs(60)).await;
    let summary = events.last().expect("summary");
    assert_eq!(summary["event"], "summary", "{events:#?}");
    assert_eq!(summary["stopped_early"], true);
    // Every phone that had started got its outcome recorded, none was cut off mid-step.
    let started: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "started")
        .filter_map(|e| e["udid"].as_str())
        .collect();
    for udid in started {
        assert!(
            events.iter().any(|e| e["event"] == "finished"
                && e["udid"] == udid
                && e["outcome"] != "interrupted"),
            "{udid} did not finish its steps"
        );
    }
    // A stop that was asked for and drained cleanly is a clean end for a service.
    assert_eq!(status.code(), Some(0), "{events:#?}");
}

/// Clean phones; all but the first are plugged in by the test.
fn outages() -> String {
    let later = |name| Phone::unactivated(name).with("plug_at_ms", "3600000");
    fixtures::world(
        33,
        &[
            Phone::unactivated(PLUGGED),
            later(LATER[0]),
            later(LATER[1]),
            later(LATER[2]),
            later(LATER[3]),
        ],
    )
}

/// The phones of [`outages`]: one plugged in from the start, four the test plugs in.
const PLUGGED: &str = "plugged";
const LATER: [&str; 4] = ["later-1", "later-2", "later-3", "later-4"];

const EVENT_WAIT: Duration = Duration::from_secs(30);

fn finished_as(udid: &str, outcome: &'static str) -> impl Fn(&Value) -> bool {
    let udid = udid.to_string();
    move |e| e["event"] == "finished" && e["udid"] == udid.as_str() && e["outcome"] == outcome
}

fn is_event(kind: &'static str) -> impl Fn(&Value) -> bool {
    move |e| e["event"] == kind
}

fn run_rows(f: &InProcBench) -> Vec<(String, Option<String>)> {
    let conn = rusqlite::Connection::open_with_flags(
        f.path("data").join("ledger.sqlite3"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("ledger");
    let mut stmt = conn
        .prepare("SELECT status, error FROM runs ORDER BY started_at, rowid")
        .expect("runs query");
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("runs")
        .collect::<Result<Vec<_>, _>>()
        .expect("rows");
    rows
}

/// Debian's usbmuxd exits whenever the bench empties and is started again by udev: the
/// line keeps its run through three such outages, a phone cut off mid-exchange resumes,
/// and a requested stop (SIGTERM, as from `systemctl stop`) ends cleanly.
#[tokio::test]
async fn the_line_outlives_usbmuxd_going_away_and_coming_back() {
    let mut f = InProcBench::start(&outages()).await;
    let config = f.station_config(None, 2, "");
    let config = config.to_str().expect("utf-8").to_string();
    let plugged = f.udid(PLUGGED).to_string();
    let later: Vec<String> = LATER
        .iter()
        .map(|phone| f.udid(phone).to_string())
        .collect();
    let mut station = f.spawn_station(&["--config", &config, "run"]);
    station
        .wait_for(EVENT_WAIT, finished_as(&plugged, "activated"))
        .await;

    // Outage 1: phone 1 is mid-exchange (the activation server is slow) when usbmuxd exits.
    f.bench.albert().set_latency(Duration::from_millis(1500));
    f.bench.plug(&later[0]).expect("plug");
    station
        .wait_for(EVENT_WAIT, |e| {
            e["event"] == "step" && e["udid"] == later[0].as_str() && e["step"] == "handshake"
        })
        .await;
    f.stop_usbmuxd().await;
    // The worker's outcome and the line's `usbmuxd_lost` race each other.
    let cut = station
        .wait_for(EVENT_WAIT, |e| {
            e["event"] == "finished" && e["udid"] == later[0].as_str()
        })
        .await;
    assert_eq!(cut["outcome"], "interrupted", "{cut}");
    assert!(
        cut["message"]
            .as_str()
            .is_some_and(|m| m.contains("usbmuxd")),
        "{cut}"
    );
    station
        .seen_or_wait(EVENT_WAIT, is_event("usbmuxd_lost"))
        .await;
    f.bench.albert().set_latency(Duration::ZERO);
    f.start_usbmuxd();
    station.wait_for(EVENT_WAIT, is_event("usbmuxd_back")).await;
    station
        .wait_for(EVENT_WAIT, finished_as(&later[0], "activated"))
        .await;

    // Outage 2: the bench empties, usbmuxd exits; a phone plugged in meanwhile is seen
    // when usbmuxd is back (udev starts it on the plug).
    f.stop_usbmuxd().await;
    station.wait_for(EVENT_WAIT, is_event("usbmuxd_lost")).await;
    f.bench.plug(&later[1]).expect("plug");
    f.start_usbmuxd();
    station.wait_for(EVENT_WAIT, is_event("usbmuxd_back")).await;
    station
        .wait_for(EVENT_WAIT, finished_as(&later[1], "activated"))
        .await;

    // Outage 3: long enough for several refused reconnection attempts.
    f.stop_usbmuxd().await;
    station.wait_for(EVENT_WAIT, is_event("usbmuxd_lost")).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    f.bench.plug(&later[2]).expect("plug");
    f.bench.plug(&later[3]).expect("plug");
    f.start_usbmuxd();
    station.wait_for(EVENT_WAIT, is_event("usbmuxd_back")).await;
    // Either may finish first.
    station
        .seen_or_wait(EVENT_WAIT, finished_as(&later[2], "activated"))
        .await;
    station
        .seen_or_wait(EVENT_WAIT, finished_as(&later[3], "activated"))
        .await;
    assert!(
        matches!(station.child.try_wait(), Ok(None)),
        "the station is still running"
    );

    station.signal("TERM");
    let (events, status) = station.finish(Duration::from_secs(60)).await;
    assert_eq!(status.code(), Some(0), "{events:#?}");
    let summary = events.last().expect("events");
    assert_eq!(summary["event"], "summary", "{events:#?}");
    assert_eq!(summary["phones"], 5);
    assert_eq!(summary["counts"]["activated"], 5, "{summary}");
    assert_eq!(summary["attention"].as_array().map(Vec::len), Some(0));
    let count = |kind| events.iter().filter(|e| e["event"] == kind).count();
    assert_eq!(count("usbmuxd_lost"), 3);
    assert_eq!(count("usbmuxd_back"), 3);
    assert_eq!(count("summary"), 1);
    // Phone 0, handled before the outages, was not worked on again.
    assert_eq!(
        events
            .iter()
            .filter(|e| e["event"] == "started" && e["udid"] == plugged.as_str())
            .count(),
        1
    );
    assert_eq!(run_rows(&f), vec![("finished".to_string(), None)]);
    let report = f
        .station(&["--config", &config, "report", "--format", "json"], false)
        .await;
    report.assert_success();
    let rows: Vec<Value> = serde_json::from_str(&report.stdout).expect("report json");
    let phone1: Vec<&str> = rows
        .iter()
        .filter(|r| r["udid"] == later[0].as_str())
        .filter_map(|r| r["outcome"].as_str())
        .collect();
    assert!(
        phone1.contains(&"interrupted") && phone1.contains(&"activated"),
        "{phone1:?}"
    );
}

/// `station run` as a service starts before usbmuxd (Debian's only runs while a phone is
/// attached) and waits for it; Ctrl-C then ends it cleanly.
#[tokio::test]
async fn the_line_waits_for_usbmuxd_at_start() {
    let mut f = InProcBench::start(&outages()).await;
    let config = f.station_config(None, 2, "");
    let config = config.to_str().expect("utf-8").to_string();
    f.stop_usbmuxd().await;
    let mut station = f.spawn_station(&["--config", &config, "run"]);
    station.wait_for(EVENT_WAIT, is_event("usbmuxd_lost")).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    f.start_usbmuxd();
    station.wait_for(EVENT_WAIT, is_event("usbmuxd_back")).await;
    station
        .wait_for(EVENT_WAIT, finished_as(f.udid(PLUGGED), "activated"))
        .await;
    station.signal("INT");
    let (events, status) = station.finish(Duration::from_secs(60)).await;
    assert_eq!(status.code(), Some(0), "{events:#?}");
    assert_eq!(
        events.last().map(|e| e["event"].clone()),
        Some("summary".into())
    );
    assert_eq!(run_rows(&f), vec![("finished".to_string(), None)]);
}

/// `--once` needs usbmuxd at start: without it the run fails (exit 3), is recorded
/// `failed` in an existing ledger, and creates no ledger where there was none.
#[tokio::test]
async fn a_once_run_without_usbmuxd_fails_and_is_recorded_failed() {
    let mut f = InProcBench::start(&outages()).await;
    let config = f.station_config(None, 2, "");
    let config = config.to_str().expect("utf-8").to_string();
    let ledger = f.path("data").join("ledger.sqlite3");

    f.stop_usbmuxd().await;
    let out = f
        .station(&["--config", &config, "run", "--once"], false)
        .await;
    assert_eq!(out.status.code(), Some(3), "{out}");
    assert!(out.stderr.contains("usbmuxd"), "{out}");
    assert!(!ledger.exists(), "no ledger for a run that never started");

    f.start_usbmuxd();
    let out = f
        .station(&["--config", &config, "run", "--once"], false)
        .await;
    assert_eq!(out.status.code(), Some(0), "{out}");
    f.stop_usbmuxd().await;
    let out = f
        .station(&["--config", &config, "run", "--once"], false)
        .await;
    assert_eq!(out.status.code(), Some(3), "{out}");
    let runs = run_rows(&f);
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(runs[0], ("finished".to_string(), None));
    assert_eq!(runs[1].0, "failed");
    assert!(
        runs[1]
            .1
            .as_deref()
            .is_some_and(|e| e.starts_with("usbmuxd-unreachable")),
        "{runs:?}"
    );
}

/// `--once` waits for usbmuxd at most the replug grace: back in time, the phone it cut off
/// resumes and the run ends clean; not back in time, the run ends with the phone
/// `interrupted` and needing attention.
#[tokio::test]
async fn once_waits_for_usbmuxd_up_to_the_replug_grace() {
    for back_in_time in [true, false] {
        let mut f = InProcBench::start(&outages()).await;
        let config = f.station_config(None, 2, "");
        let config = config.to_str().expect("utf-8").to_string();
        let udid = f.udid(PLUGGED).to_string();
        let grace = if back_in_time { "4" } else { "1" };
        f.bench.albert().set_latency(Duration::from_millis(1500));
        let mut station = f.spawn_station(&[
            "--config",
            &config,
            "run",
            "--once",
            "--replug-grace",
            grace,
        ]);
        station
            .wait_for(EVENT_WAIT, |e| {
                e["event"] == "step" && e["udid"] == udid.as_str() && e["step"] == "handshake"
            })
            .await;
        f.stop_usbmuxd().await;
        station
            .wait_for(EVENT_WAIT, finished_as(&udid, "interrupted"))
            .await;
        f.bench.albert().set_latency(Duration::ZERO);
        if back_in_time {
            tokio::time::sleep(Duration::from_millis(300)).await;
            f.start_usbmuxd();
        }
        let (events, status) = station.finish(Duration::from_secs(60)).await;
        let summary = events.last().expect("events");
        assert_eq!(summary["event"], "summary", "{events:#?}");
        if back_in_time {
            assert_eq!(status.code(), Some(0), "{events:#?}");
            assert!(events.iter().any(finished_as(&udid, "activated")));
            assert_eq!(summary["counts"]["activated"], 1, "{summary}");
        } else {
            assert_eq!(status.code(), Some(1), "{events:#?}");
            assert_eq!(summary["counts"]["interrupted"], 1, "{summary}");
            let attention = &summary["attention"][0];
            assert!(
                attention["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("usbmuxd")),
                "{summary}"
            );
            assert!(!events.iter().any(is_event("usbmuxd_back")));
        }
        assert_eq!(run_rows(&f), vec![("finished".to_string(), None)]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_check_fails_exactly_when_run_refuses() {
    use std::os::unix::fs::PermissionsExt;
    let f = InProcBench::start("seed = 3\n[[device]]\n").await;
    let kandji = |token: &str| {
        format!("\n[[codes.sources]]\ntype = \"kandji\"\napi_url = \"https://acme.api.kandji.io\"\ntoken = {token}\n")
    };
    let open_token = f.path("open.token");
    std::fs::write(&open_token, "kandji-token-value\n").expect("token");
    std::fs::set_permissions(&open_token, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let refused = [
        (
            format!(
                "\n[[codes.sources]]\ntype = \"csv\"\npath = \"{}\"\n",
                f.path("missing.csv").display()
            ),
            "missing.csv",
        ),
        (
            kandji("{ env = \"STATION_TEST_TOKEN_SURELY_UNSET_7\" }"),
            "environment variable STATION_TEST_TOKEN_SURELY_UNSET_7 is not set",
        ),
        (
            kandji(&format!("{{ file = \"{}\" }}", open_token.display())),
            "is readable by others",
        ),
    ];
    for (extra, why) in refused {
        let config = f.station_config(None, 2, &extra);
        let config = config.to_str().expect("utf-8");
        let check = f
            .station(&["--config", config, "config", "check"], false)
            .await;
        assert_eq!(check.status.code(), Some(2), "{check}");
        assert!(check.stdout.contains("would refuse"), "{check}");
        assert!(check.stderr.contains(why), "{check}");
        let run = f
            .station(&["--config", config, "run", "--once"], false)
            .await;
        assert_eq!(run.status.code(), Some(2), "{run}");
        assert!(run.stderr.contains(why), "{run}");
        assert!(
            !run.stdout.contains("\"finished\""),
            "refused before any phone: {run}"
        );
    }

    // The service's env file resolves the secret for the check; its value is never shown.
    let env_file = f.path("secrets.env");
    std::fs::write(
        &env_file,
        "# as in /etc/station/secrets.env\nSTATION_TEST_TOKEN_SURELY_UNSET_7=kandji-secret-4711\n",
    )
    .expect("env file");
    std::fs::set_permissions(&env_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let config = f.station_config(
        None,
        2,
        &kandji("{ env = \"STATION_TEST_TOKEN_SURELY_UNSET_7\" }"),
    );
    let config = config.to_str().expect("utf-8");
    let env_arg = env_file.to_str().expect("utf-8");
    for json in [false, true] {
        let mut args = vec!["--config", config, "config", "check", "--env-file", env_arg];
        if json {
            args.insert(0, "--json");
        }
        let check = f.station(&args, false).await;
        check.assert_success();
        assert!(!check.stdout.contains("kandji-secret-4711"), "{check}");
        assert!(!check.stderr.contains("kandji-secret-4711"), "{check}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn location_id_slots_warn_in_the_check_and_at_start() {
    let f = InProcBench::start("seed = 3\n[[device]]\n").await;
    let config = f.station_config(None, 2, "\n[slots]\n\"0x00010002\" = \"A1\"\n");
    let config = config.to_str().expect("utf-8");
    let check = f
        .station(&["--config", config, "config", "check"], false)
        .await;
    check.assert_success();
    assert!(
        check.stdout.contains("station.toml:18:1: slot `0x00010002` (A1) is keyed by usbmuxd LocationID, which is not stable"),
        "{check}"
    );
    let run = f
        .station(&["--config", config, "run", "--once"], false)
        .await;
    run.assert_success();
    assert!(
        run.stderr.contains("is keyed by usbmuxd LocationID"),
        "{run}"
    );
    // It still labels the phone (no port path on the virtual bench).
    assert!(run.stdout.contains("\"slot\":\"A1\""), "{run}");
}

/// A locked phone whose MDM first holds only a superseded code, and a clean phone.
fn replug() -> String {
    fixtures::world(
        41,
        &[Phone::mdm_locked(MDM, &[GOOD]), Phone::unactivated(CLEAN)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replugged_phone_that_is_not_done_is_worked_on_again_with_fresh_codes() {
    use std::os::unix::fs::PermissionsExt;

    let f = InProcBench::start(&replug()).await;
    let (locked, clean) = (f.udid(MDM).to_string(), f.udid(CLEAN).to_string());
    // The customer's MDM, as a hook that prints whatever code it holds right now.
    let held = f.path("held-code");
    std::fs::write(&held, format!("{STALE}\n")).expect("stale code");
    let hook = f.path("mdm-hook");
    std::fs::write(&hook, format!("#!/bin/sh\ncat '{}'\n", held.display())).expect("hook");
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let config = f.station_config(
        None,
        2,
        &format!(
            "\n[[codes.sources]]\ntype = \"command\"\nname = \"mdm\"\nprogram = \"{}\"\n",
            hook.display()
        ),
    );
    let mut station = f.spawn_station(&["--config", config.to_str().expect("utf-8"), "run"]);
    station
        .seen_or_wait(EVENT_WAIT, finished_as(&locked, "code_rejected"))
        .await;
    station
        .seen_or_wait(EVENT_WAIT, finished_as(&clean, "activated"))
        .await;

    // The customer issues a fresh code; the operator replugs both phones.
    std::fs::write(&held, format!("{GOOD}\n")).expect("fresh code");
    for udid in [&locked, &clean] {
        f.bench.unplug(udid).expect("unplug");
    }
    for udid in [&locked, &clean] {
        f.bench.plug(udid).expect("plug");
    }
    station
        .wait_for(EVENT_WAIT, finished_as(&locked, "activated"))
        .await;
    station
        .seen_or_wait(EVENT_WAIT, |e| {
            e["event"] == "skipped" && e["udid"] == clean.as_str()
        })
        .await;
    station.signal("INT");
    let (events, status) = station.finish(EVENT_WAIT).await;
    assert_eq!(status.code(), Some(0), "a requested stop that drained");
    let clean_runs = events
        .iter()
        .filter(|e| e["event"] == "started" && e["udid"] == clean.as_str())
        .count();
    assert_eq!(clean_runs, 1, "a phone that is done is not worked on again");
    assert_eq!(f.ideviceinfo_state(MDM).await, "Activated");
}
