//! The fleet ledger on PostgreSQL (issue 14, docs/fleet.md), against a real server: a
//! throw-away cluster of Debian's `postgresql` (tests/src/pg.rs) and `station` processes on
//! in-process virtual benches.
//!
//! - Two stations with their own data directories handle phones while the database is
//!   stopped and started again; afterwards every attempt is in PostgreSQL exactly once and
//!   `report --fleet` agrees row for row with the two local reports.
//! - A station killed with SIGKILL before it could ship keeps the attempts in its outbox and
//!   ships them on the next start; a crash after the database committed but before the
//!   outbox was emptied ships them again without duplicates.
//! - Several stations migrating a fresh database at once apply each migration once.
//! - The bypass codes of the world never reach the database whole (pg_dump is searched).
//! - `station config check` says what it found, never the URL's password.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use station_tests::fixtures::{self, Phone, CODE_A, CODE_A_MASKED, CODE_B, CODE_C};
use station_tests::inproc::{InProcBench, StreamingStation};
use station_tests::pg::{Cluster, PASSWORD};
use station_tests::{run_with_timeout, Output};

const URL_ENV: &str = "STATION_FLEET_URL";
const SHIP_TIMEOUT: Duration = Duration::from_secs(90);

/// A bench, its station configuration (with `[fleet]`) and the fleet URL for its env.
struct Station {
    bench: InProcBench,
    config: PathBuf,
    url: String,
}

impl Station {
    async fn start(
        id: &str,
        seed: u64,
        phones: &[Phone],
        codes: &[(&str, &str, &str)],
        url: String,
    ) -> Station {
        let bench = InProcBench::start(&fixtures::world(seed, phones)).await;
        let codes = (!codes.is_empty()).then(|| bench.codes_csv("codes.csv", codes));
        let config = bench.station_config(
            codes.as_deref(),
            4,
            &format!("\n[fleet]\ndatabase_url = {{ env = \"{URL_ENV}\" }}\n"),
        );
        // Each station its own name in the fleet.
        let text = std::fs::read_to_string(&config)
            .expect("config")
            .replace("id = \"test-bench\"", &format!("id = \"{id}\""));
        std::fs::write(&config, text).expect("config");
        Station { bench, config, url }
    }

    fn config(&self) -> &str {
        self.config.to_str().expect("utf-8")
    }

    fn command(&self, args: &[&str]) -> std::process::Command {
        let mut full = vec!["--config", self.config()];
        full.extend_from_slice(args);
        let mut cmd = self.bench.station_command(&full, false);
        cmd.env(URL_ENV, &self.url);
        cmd
    }

    fn spawn_run(&self) -> StreamingStation {
        StreamingStation::spawn(self.command(&["--json", "run"]))
    }

    async fn station(&self, args: &[&str]) -> Output {
        let cmd = self.command(args);
        tokio::task::spawn_blocking(move || run_with_timeout(cmd, Duration::from_secs(60)))
            .await
            .expect("join")
    }

    fn data_dir(&self) -> PathBuf {
        self.bench.path("data")
    }

    async fn local_report(&self, format: &str) -> String {
        let out = self.station(&["report", "--format", format]).await;
        out.assert_success();
        out.stdout
    }
}

/// Waits until the station reported an outcome for each of its bench's phones.
async fn wait_all_finished(run: &mut StreamingStation, bench: &InProcBench) {
    for udid in &bench.udids {
        run.seen_or_wait(SHIP_TIMEOUT, |e| {
            e["event"] == "finished" && e["udid"] == udid.as_str()
        })
        .await;
    }
}

fn ledger_counts(data_dir: &Path) -> (i64, i64) {
    let conn = rusqlite::Connection::open(data_dir.join("ledger.sqlite3")).expect("ledger");
    let finished: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM attempts WHERE outcome IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .expect("attempts");
    let queued: i64 = conn
        .query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))
        .expect("outbox");
    (finished, queued)
}

fn shipped(cluster: &Cluster, db: &str, station: &str) -> i64 {
    let out = cluster.psql(
        db,
        &format!("SELECT count(*) FROM station_attempts WHERE station_id = '{station}'"),
    );
    if !out.success() {
        return -1; // no schema yet
    }
    out.stdout.trim().parse().unwrap_or(-1)
}

/// Polls until the database holds `expected` attempts of `station`.
async fn wait_shipped(cluster: &Cluster, db: &str, station: &str, expected: i64) {
    let deadline = Instant::now() + SHIP_TIMEOUT;
    loop {
        let found = shipped(cluster, db, station);
        if found == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{station}: {found} of {expected} attempts shipped in {SHIP_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls until the station's outbox is empty and the database has all its finished attempts.
async fn wait_drained(cluster: &Cluster, station: &Station) {
    let id = std::fs::read_to_string(&station.config)
        .expect("config")
        .lines()
        .find_map(|l| {
            l.strip_prefix("id = \"")
                .map(|r| r.trim_end_matches('"').to_string())
        })
        .expect("station id");
    let deadline = Instant::now() + SHIP_TIMEOUT;
    loop {
        let (finished, queued) = ledger_counts(&station.data_dir());
        if queued == 0 && shipped(cluster, "fleet", &id) == finished {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{id}: {queued} still queued, {} of {finished} shipped",
            shipped(cluster, "fleet", &id)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn by_station(rows: &[Value]) -> BTreeMap<String, Vec<Value>> {
    let mut grouped: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for row in rows {
        grouped
            .entry(row["station_id"].as_str().expect("station_id").to_string())
            .or_default()
            .push(row.clone());
    }
    grouped
}

fn json_rows(text: &str) -> Vec<Value> {
    serde_json::from_str::<Value>(text)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
        .as_array()
        .expect("an array")
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stations_through_a_database_outage_ship_every_attempt_once() {
    let mut cluster = Cluster::start();
    cluster.create_database("fleet");
    let url = cluster.url("fleet");
    let phones_a = [
        Phone::unactivated("a1"),
        Phone::unactivated("a2"),
        Phone::mdm_locked("a-mdm", &[CODE_A]),
        Phone::activated("a-done"),
        Phone::user_locked("a-user"),
    ];
    let phones_b = [
        Phone::unactivated("b1"),
        Phone::mdm_locked("b-mdm", &[CODE_B]),
        Phone::unactivated("b2"),
        Phone::activated("b-done"),
    ];
    let a = Station::start(
        "bench-a",
        21,
        &phones_a,
        &[("a-mdm", CODE_A, "device")],
        url.clone(),
    )
    .await;
    let b = Station::start(
        "bench-b",
        22,
        &phones_b,
        &[("b-mdm", CODE_B, "device")],
        url.clone(),
    )
    .await;
    // Slow enough that the phones finish while the database is down.
    for station in [&a, &b] {
        station
            .bench
            .bench
            .albert()
            .set_latency(Duration::from_millis(1500));
    }

    let mut run_a = a.spawn_run();
    let mut run_b = b.spawn_run();
    // Both stations reach the database (schema made, heartbeats written), then it goes.
    let deadline = Instant::now() + SHIP_TIMEOUT;
    loop {
        let seen = cluster.psql("fleet", "SELECT count(*) FROM station_heartbeats");
        if seen.success() && seen.stdout.trim() == "2" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no heartbeats: {}",
            seen.combined()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.stop();

    wait_all_finished(&mut run_a, &a.bench).await;
    wait_all_finished(&mut run_b, &b.bench).await;
    let (finished_a, queued_a) = ledger_counts(&a.data_dir());
    let (finished_b, queued_b) = ledger_counts(&b.data_dir());
    assert_eq!(finished_a, phones_a.len() as i64);
    assert_eq!(finished_b, phones_b.len() as i64);
    assert_eq!(
        (queued_a, queued_b),
        (finished_a, finished_b),
        "with the database down every finished attempt waits in its outbox"
    );

    // Back up: each station ships by itself, without a restart.
    cluster.start_server();
    wait_shipped(&cluster, "fleet", "bench-a", finished_a).await;
    wait_shipped(&cluster, "fleet", "bench-b", finished_b).await;
    // The heartbeat after the last batch says the outbox is empty.
    let deadline = Instant::now() + SHIP_TIMEOUT;
    loop {
        let backlog = cluster.query(
            "fleet",
            "SELECT sum(outbox_backlog) FROM station_heartbeats",
        );
        if backlog == ["0"] {
            break;
        }
        assert!(Instant::now() < deadline, "backlog still {backlog:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for run in [&run_a, &run_b] {
        run.signal("TERM");
    }
    let (_, status_a) = run_a.finish(SHIP_TIMEOUT).await;
    let (_, status_b) = run_b.finish(SHIP_TIMEOUT).await;
    assert!(
        status_a.success() && status_b.success(),
        "{status_a} {status_b}"
    );
    assert_eq!(
        ledger_counts(&a.data_dir()).1,
        0,
        "bench-a's outbox emptied"
    );
    assert_eq!(
        ledger_counts(&b.data_dir()).1,
        0,
        "bench-b's outbox emptied"
    );

    // Exactly once: one row per (station, attempt), as many as the ledgers hold.
    let rows = cluster.query(
        "fleet",
        "SELECT station_id, count(*), count(DISTINCT attempt_id) FROM station_attempts GROUP BY station_id ORDER BY station_id",
    );
    assert_eq!(
        rows,
        [
            format!("bench-a|{finished_a}|{finished_a}"),
            format!("bench-b|{finished_b}|{finished_b}")
        ]
    );

    // `report --fleet` agrees row for row with the two local reports.
    let fleet = a.station(&["report", "--fleet", "--format", "json"]).await;
    fleet.assert_success();
    let fleet = by_station(&json_rows(&fleet.stdout));
    let local_a = json_rows(&a.local_report("json").await);
    let local_b = json_rows(&b.local_report("json").await);
    assert_eq!(fleet.get("bench-a"), Some(&local_a), "bench-a");
    assert_eq!(fleet.get("bench-b"), Some(&local_b), "bench-b");
    assert_eq!(fleet.len(), 2);
    // The same filters and formats: one station, CSV, byte for byte.
    let fleet_csv = b
        .station(&[
            "report",
            "--fleet",
            "--station",
            "bench-b",
            "--format",
            "csv",
        ])
        .await;
    fleet_csv.assert_success();
    assert_eq!(fleet_csv.stdout, b.local_report("csv").await);
    for filter in [
        &["--outcome", "activated"][..],
        &["--locked"][..],
        &["--latest"][..],
        &["--outcome", "user_locked", "--outcome", "already_activated"][..],
    ] {
        let local = a
            .station(&[&["report", "--format", "json"][..], filter].concat())
            .await;
        let fleet = a
            .station(
                &[
                    &[
                        "report",
                        "--fleet",
                        "--station",
                        "bench-a",
                        "--format",
                        "json",
                    ][..],
                    filter,
                ]
                .concat(),
            )
            .await;
        assert_eq!(
            json_rows(&fleet.assert_success().stdout),
            json_rows(&local.assert_success().stdout),
            "{filter:?}"
        );
    }

    // `fleet status`: both stations, nothing waiting, the outage as their last error.
    let status = a.station(&["--json", "fleet", "status"]).await;
    let status = status.assert_success().json();
    let stations = status["stations"].as_array().expect("stations");
    assert_eq!(stations.len(), 2, "{status}");
    for (station, expected) in stations.iter().zip([finished_a, finished_b]) {
        assert_eq!(station["outbox_backlog"], 0, "{station}");
        assert_eq!(station["attempts"], expected, "{station}");
        assert!(
            station["last_error"]
                .as_str()
                .is_some_and(|e| !e.is_empty()),
            "the outage is remembered: {station}"
        );
    }
    let text = a.station(&["fleet", "status"]).await;
    let text = text.assert_success();
    assert!(
        text.stdout.contains("bench-a") && text.stdout.contains("LAST SEEN"),
        "{text}"
    );
    assert!(!text.combined().contains(PASSWORD), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_survives_sigkill_and_a_crash_after_shipping_ships_nothing_twice() {
    let mut cluster = Cluster::start();
    cluster.create_database("fleet");
    cluster.stop();
    let phones = [
        Phone::unactivated("k1"),
        Phone::mdm_locked("k-mdm", &[CODE_C]),
        Phone::activated("k-done"),
    ];
    let station = Station::start(
        "bench-k",
        31,
        &phones,
        &[("k-mdm", CODE_C, "device")],
        cluster.url("fleet"),
    )
    .await;
    // The database is down: the attempts commit locally and wait; then SIGKILL.
    let mut run = station.spawn_run();
    wait_all_finished(&mut run, &station.bench).await;
    run.kill();
    let (finished, queued) = ledger_counts(&station.data_dir());
    assert_eq!((finished, queued), (3, 3), "committed and queued together");

    // Next start, database up: the outbox ships (with the new run's own attempts: a new
    // run handles the phones again).
    cluster.start_server();
    let mut run = station.spawn_run();
    wait_all_finished(&mut run, &station.bench).await;
    wait_drained(&cluster, &station).await;
    assert_eq!(
        cluster.query(
            "fleet",
            "SELECT count(*) FROM station_attempts WHERE attempt_id <= 3"
        ),
        ["3"],
        "the attempts of the killed run are there"
    );
    run.kill();

    // As a crash between the database's commit and the outbox's delete leaves it: every
    // attempt queued again. The next start ships them again; the database keeps one each.
    {
        let conn =
            rusqlite::Connection::open(station.data_dir().join("ledger.sqlite3")).expect("ledger");
        conn.execute(
            "INSERT INTO outbox (attempt_id) SELECT id FROM attempts WHERE outcome IS NOT NULL ORDER BY id",
            [],
        )
        .expect("requeue");
    }
    let mut run = station.spawn_run();
    wait_all_finished(&mut run, &station.bench).await;
    wait_drained(&cluster, &station).await;
    run.signal("TERM");
    let (_, status) = run.finish(SHIP_TIMEOUT).await;
    assert!(status.success(), "{status}");
    let total = ledger_counts(&station.data_dir()).0;
    let rows = cluster.query(
        "fleet",
        "SELECT count(*), count(DISTINCT attempt_id) FROM station_attempts",
    );
    assert_eq!(rows, [format!("{total}|{total}")], "every attempt once");
    let local = json_rows(&station.local_report("json").await);
    let fleet = station
        .station(&["report", "--fleet", "--format", "json"])
        .await;
    assert_eq!(json_rows(&fleet.assert_success().stdout), local);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stations_migrating_a_fresh_database_at_once_apply_each_migration_once() {
    let cluster = Cluster::start();
    cluster.create_database("fleet");
    let station = Station::start(
        "bench-m",
        41,
        &[Phone::activated("m")],
        &[],
        cluster.url("fleet"),
    )
    .await;
    let runs: Vec<std::process::Child> = (0..6)
        .map(|_| {
            let mut cmd = station.command(&["--json", "fleet", "migrate"]);
            cmd.stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            cmd.spawn().expect("spawn")
        })
        .collect();
    let mut migrated_from_zero = 0;
    for child in runs {
        let out = tokio::task::spawn_blocking(move || child.wait_with_output())
            .await
            .expect("join")
            .expect("wait");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let answer: Value = serde_json::from_str(&stdout).expect("json");
        assert_eq!(answer["to"], 1, "{answer}");
        if answer["from"] == 0 {
            migrated_from_zero += 1;
        }
        assert!(!stdout.contains(PASSWORD));
    }
    assert_eq!(
        migrated_from_zero, 1,
        "one station migrated, the others found it done"
    );
    assert_eq!(
        cluster.query(
            "fleet",
            "SELECT version FROM station_schema_migrations ORDER BY version"
        ),
        ["1"]
    );
    assert_eq!(
        cluster.query(
            "fleet",
            "SELECT count(*) FROM information_schema.tables WHERE table_name IN ('station_attempts', 'station_heartbeats')"
        ),
        ["2"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bypass_codes_never_reach_the_database_whole() {
    let cluster = Cluster::start();
    cluster.create_database("fleet");
    let phones = [
        Phone::mdm_locked("s-mdm", &[CODE_A]),
        Phone::mdm_locked("s-two", &[CODE_B, CODE_C]),
        Phone::unactivated("s-plain"),
    ];
    let station = Station::start(
        "bench-s",
        51,
        &phones,
        &[
            ("s-mdm", CODE_A, "device"),
            ("s-two", CODE_B, "device"),
            ("s-two", CODE_C, "device"),
        ],
        cluster.url("fleet"),
    )
    .await;
    let mut run = station.spawn_run();
    wait_all_finished(&mut run, &station.bench).await;
    wait_shipped(&cluster, "fleet", "bench-s", 3).await;
    run.signal("TERM");
    let _ = run.finish(SHIP_TIMEOUT).await;
    let dump = cluster.dump("fleet");
    assert!(
        dump.contains(CODE_A_MASKED),
        "the masked code is shipped: {dump}"
    );
    for code in [
        CODE_A,
        CODE_B,
        CODE_C,
        fixtures::CODE_D,
        fixtures::CODE_E,
        fixtures::CODE_F,
    ] {
        assert!(!dump.contains(code), "{code} whole in the fleet database");
        // Nor its middle, in any other shape.
        let middle = &code[6..17];
        assert!(
            !dump.contains(middle),
            "{code}'s middle in the fleet database"
        );
    }
    assert!(!dump.contains(PASSWORD));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_check_says_what_it_found_and_never_the_password() {
    let mut cluster = Cluster::start();
    cluster.create_database("fleet");
    let station = Station::start(
        "bench-c",
        61,
        &[Phone::activated("c")],
        &[],
        cluster.url("fleet"),
    )
    .await;

    let out = station.station(&["config", "check"]).await;
    let text = out.assert_success().combined();
    assert!(!text.contains(PASSWORD), "{text}");
    assert!(text.contains("postgres:***@127.0.0.1"), "{text}");
    assert!(
        text.contains("PostgreSQL 1"),
        "the server's version: {text}"
    );
    assert!(text.contains("no station schema yet"), "{text}");

    station
        .station(&["fleet", "migrate"])
        .await
        .assert_success();
    let out = station.station(&["--json", "config", "check"]).await;
    let check = out.assert_success().json();
    assert!(!out.combined().contains(PASSWORD));
    assert_eq!(check["fleet"]["schema_version"], 1, "{check}");
    assert_eq!(check["fleet"]["station_id"], "bench-c");
    assert_eq!(check["fleet"]["error"], Value::Null);
    assert!(check["fleet"]["server_version"]
        .as_str()
        .is_some_and(|v| v.starts_with("1")));

    // Down: said, not refused (the line runs; attempts wait in the outbox).
    cluster.stop();
    let out = station.station(&["config", "check"]).await;
    let text = out.assert_success().combined();
    assert!(text.contains("error: cannot connect"), "{text}");
    assert!(!text.contains(PASSWORD), "{text}");

    // A wrong password: the server's refusal, not the password.
    cluster.start_server();
    let mut wrong =
        Station::start("bench-w", 62, &[Phone::activated("w")], &[], String::new()).await;
    wrong.url = cluster
        .url("fleet")
        .replace(PASSWORD, "not-the-password-77");
    let out = wrong.station(&["config", "check"]).await;
    let text = out.combined();
    assert!(text.contains("password authentication failed"), "{text}");
    assert!(!text.contains("not-the-password-77"), "{text}");

    // No URL in the environment: `station run` would refuse, and says which variable.
    let mut missing = wrong;
    missing.url = String::new();
    let mut cmd = missing.command(&["config", "check"]);
    cmd.env_remove(URL_ENV);
    let out = tokio::task::spawn_blocking(move || run_with_timeout(cmd, Duration::from_secs(60)))
        .await
        .expect("join");
    let text = out.assert_failure().combined();
    assert!(text.contains(URL_ENV), "{text}");

    // Fleet commands without [fleet] say so.
    let plain = InProcBench::start(&fixtures::world(63, &[Phone::activated("p")])).await;
    let config = plain.station_config(None, 1, "");
    let out = plain
        .station(
            &[
                "--config",
                config.to_str().expect("utf-8"),
                "fleet",
                "status",
            ],
            false,
        )
        .await;
    assert!(
        out.assert_failure().stderr.contains("fleet-config"),
        "{out}"
    );
}

/// docs/fleet.md's grants for the stations' role, word for word.
const STATION_ROLE_GRANTS: &str = "
GRANT CONNECT ON DATABASE fleet TO station;
GRANT USAGE ON SCHEMA public TO station;
GRANT SELECT, INSERT ON station_attempts TO station;
GRANT SELECT, INSERT, UPDATE ON station_heartbeats TO station;
GRANT SELECT ON station_schema_migrations TO station;
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_that_may_only_insert_and_select_is_enough_for_a_station() {
    let cluster = Cluster::start();
    cluster.create_database("fleet");
    // The owner migrates once; the stations then run as `station`.
    let owner = Station::start(
        "bench-r",
        71,
        &[Phone::unactivated("r1"), Phone::activated("r2")],
        &[],
        cluster.url("fleet"),
    )
    .await;
    owner.station(&["fleet", "migrate"]).await.assert_success();
    cluster.query(
        "fleet",
        "CREATE ROLE station LOGIN PASSWORD 'station-pw-4411'",
    );
    cluster.query("fleet", STATION_ROLE_GRANTS);
    let mut station = owner;
    station.url = format!(
        "postgresql://station:station-pw-4411@127.0.0.1:{}/fleet",
        cluster.port
    );

    let mut run = station.spawn_run();
    wait_all_finished(&mut run, &station.bench).await;
    wait_drained(&cluster, &station).await;
    run.signal("TERM");
    let (_, status) = run.finish(SHIP_TIMEOUT).await;
    assert!(status.success(), "{status}");
    assert_eq!(
        cluster.query("fleet", "SELECT station_id FROM station_heartbeats"),
        ["bench-r"]
    );
    // What the role may not do.
    for forbidden in [
        "DELETE FROM station_attempts",
        "UPDATE station_attempts SET outcome = 'activated'",
        "CREATE TABLE sneaky (x int)",
        "DROP TABLE station_heartbeats",
    ] {
        let out = cluster.psql("fleet", &format!("SET ROLE station; {forbidden}"));
        assert!(!out.success(), "{forbidden} was allowed");
        assert!(
            out.stderr.contains("permission denied") || out.stderr.contains("must be owner"),
            "{out}"
        );
    }
    // `report --fleet` and `fleet status` work with it too.
    let fleet = station
        .station(&["report", "--fleet", "--format", "json"])
        .await;
    assert_eq!(
        json_rows(&fleet.assert_success().stdout),
        json_rows(&station.local_report("json").await)
    );
    station.station(&["fleet", "status"]).await.assert_success();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuilt_station_under_its_old_name_is_refused_and_ships_under_a_new_one() {
    let cluster = Cluster::start();
    cluster.create_database("fleet");
    let mut station = Station::start(
        "bench-d",
        81,
        &[Phone::unactivated("d1")],
        &[],
        cluster.url("fleet"),
    )
    .await;
    let mut run = station.spawn_run();
    wait_all_finished(&mut run, &station.bench).await;
    wait_drained(&cluster, &station).await;
    run.signal("TERM");
    let _ = run.finish(SHIP_TIMEOUT).await;
    let before = cluster.query(
        "fleet",
        "SELECT attempt_id, udid, started_at FROM station_attempts",
    );

    // The disk died: a fresh ledger, whose attempt ids start again at 1.
    std::fs::remove_dir_all(station.data_dir()).expect("wipe the data directory");
    let mut run = station.spawn_run();
    wait_all_finished(&mut run, &station.bench).await;
    let deadline = Instant::now() + SHIP_TIMEOUT;
    loop {
        let error = cluster.query(
            "fleet",
            "SELECT coalesce(last_error, '') FROM station_heartbeats WHERE station_id = 'bench-d'",
        );
        if error
            .first()
            .is_some_and(|e| e.contains("another ledger shipped under this name"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the collision was not reported: {error:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    run.signal("TERM");
    let _ = run.finish(SHIP_TIMEOUT).await;
    assert_eq!(
        cluster.query(
            "fleet",
            "SELECT attempt_id, udid, started_at FROM station_attempts"
        ),
        before,
        "the old ledger's rows are kept as they were"
    );
    assert_eq!(
        ledger_counts(&station.data_dir()).1,
        1,
        "the new attempt waits in the outbox"
    );

    // The documented recovery: a new station id. The waiting attempt ships under it.
    let text = std::fs::read_to_string(&station.config).expect("config");
    std::fs::write(
        &station.config,
        text.replace("id = \"bench-d\"", "id = \"bench-d2\""),
    )
    .expect("config");
    station.url = cluster.url("fleet");
    let mut run = station.spawn_run();
    wait_all_finished(&mut run, &station.bench).await;
    wait_drained(&cluster, &station).await;
    run.signal("TERM");
    let _ = run.finish(SHIP_TIMEOUT).await;
    assert_eq!(
        cluster.query("fleet", "SELECT station_id, count(*) FROM station_attempts GROUP BY station_id ORDER BY station_id"),
        ["bench-d|1".to_string(), format!("bench-d2|{}", ledger_counts(&station.data_dir()).0)]
    );
}

/// A CA and a server certificate it signed for 127.0.0.1 and localhost: (CA PEM, server
/// certificate PEM, server key PEM).
fn test_pki(name: &str) -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let ca = ca_params.self_signed(&ca_key).expect("CA");
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let key = rcgen::KeyPair::generate().expect("server key");
    let params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("server params");
    let cert = params.signed_by(&key, &issuer).expect("server certificate");
    (ca.pem(), cert.pem(), key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_the_database_checks_the_server_certificate() {
    let mut cluster = Cluster::start();
    cluster.create_database("fleet");
    let (ca, cert, key) = test_pki("fleet test CA");
    cluster.require_tls(&cert, &key);
    let (other_ca, _, _) = test_pki("some other CA");
    let mut station = Station::start(
        "bench-t",
        91,
        &[Phone::unactivated("t1")],
        &[],
        String::new(),
    )
    .await;
    let ca_file = station.bench.path("fleet-ca.pem");
    std::fs::write(&ca_file, ca).expect("CA file");
    let other_file = station.bench.path("other-ca.pem");
    std::fs::write(&other_file, other_ca).expect("CA file");
    let tls_url = |root: &Path| {
        format!(
            "{}?sslmode=verify-full&sslrootcert={}",
            cluster.url("fleet"),
            root.display()
        )
    };

    // Verified TLS: connects, migrates, ships.
    station.url = tls_url(&ca_file);
    let check = station.station(&["--json", "config", "check"]).await;
    let check = check.assert_success().json();
    assert_eq!(check["fleet"]["tls"], true, "{check}");
    assert_eq!(check["fleet"]["error"], Value::Null, "{check}");
    let mut run = station.spawn_run();
    wait_all_finished(&mut run, &station.bench).await;
    wait_drained(&cluster, &station).await;
    run.signal("TERM");
    let _ = run.finish(SHIP_TIMEOUT).await;

    // A server certificate from a CA the station does not trust: refused.
    station.url = tls_url(&other_file);
    let out = station.station(&["fleet", "status"]).await;
    let text = out.assert_failure().combined();
    assert!(
        text.contains("fleet-database") && text.to_lowercase().contains("certificate"),
        "{text}"
    );
    assert!(!text.contains(PASSWORD), "{text}");

    // Without TLS this server lets nobody in over TCP: the first connection was TLS.
    station.url = cluster.url("fleet");
    let out = station.station(&["fleet", "status"]).await;
    let text = out.assert_failure().combined();
    assert!(text.contains("no pg_hba.conf entry"), "{text}");
}
