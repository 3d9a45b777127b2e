//! A data directory that fills up or is read-only (issue 13): the station's data directory
//! is a small tmpfs mounted for the test (root only; skipped with a message otherwise).
//!
//! - At start-up, full or read-only: `station run` refuses with `ledger-full` /
//!   `ledger-read-only` before it touches a phone (no ledger made, the phone untouched).
//! - Mid-run, full: the running line sends `ledger_paused` (`ledger-full`) instead of
//!   starting the phone plugged in meanwhile, keeps every committed row, and once the
//!   tmpfs is remounted larger sends `ledger_resumed` and handles the waiting phone.
//!
//! The shortened version runs in the suite; `STATION_FULL_DISK_ROUNDS=20` repeats the
//! fill/resume cycle by hand (docs/testing.md).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use station_sim::ActivationState;
use station_tests::fixtures::{self, Phone};
use station_tests::inproc::InProcBench;

const EVENT_WAIT: Duration = Duration::from_secs(30);

/// A tmpfs mounted at a directory for the test; unmounted when dropped.
struct Tmpfs {
    dir: std::path::PathBuf,
}

impl Tmpfs {
    /// `None` (with the reason) when this process may not mount one.
    fn mount(dir: &Path, size: &str) -> Result<Tmpfs, String> {
        if !is_root() {
            return Err("not running as root".into());
        }
        std::fs::create_dir_all(dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        mount(
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ],
            dir,
        )?;
        Ok(Tmpfs {
            dir: dir.to_path_buf(),
        })
    }

    fn remount(&self, options: &str) {
        mount(&["-o", &format!("remount,{options}")], &self.dir)
            .unwrap_or_else(|e| panic!("remount {options}: {e}"));
    }

    /// Writes a filler file until the filesystem has no block left.
    fn fill(&self) {
        use std::io::Write;
        let mut file = std::fs::File::create(self.dir.join("filler")).expect("filler");
        let block = vec![0x5a_u8; 64 * 1024];
        loop {
            match file.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
                Err(e) => panic!("filling the tmpfs: {e}"),
            }
        }
        // A partial last block: the remainder, byte by byte.
        while let Ok(n) = file.write(&block[..512]) {
            if n == 0 {
                break;
            }
        }
    }

    fn empty(&self) {
        let _ = std::fs::remove_file(self.dir.join("filler"));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

fn mount(args: &[&str], dir: &Path) -> Result<(), String> {
    let out = Command::new("mount")
        .args(args)
        .arg(dir)
        .output()
        .map_err(|e| format!("mount: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "mount {args:?} {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn is_root() -> bool {
    // `id -u` keeps the test crate free of a libc dependency.
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn rounds() -> u32 {
    std::env::var("STATION_FULL_DISK_ROUNDS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(1)
}

/// Every attempt row: (udid, outcome), in id order, after `PRAGMA integrity_check`.
fn ledger_rows(data_dir: &Path) -> Vec<(String, Option<String>)> {
    let conn = station_tests::open_checked_ledger(data_dir);
    let mut statement = conn
        .prepare("SELECT udid, outcome FROM attempts ORDER BY id")
        .expect("prepare");
    statement
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .expect("query")
        .collect::<Result<Vec<_>, _>>()
        .expect("rows")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_or_read_only_data_directory_stops_new_phones_and_recovers() {
    let mut names: Vec<String> = vec!["a".into(), "b".into()];
    let rounds = rounds();
    names.extend((0..rounds).map(|i| format!("late{i}")));
    let phones: Vec<Phone> = names.iter().map(|n| Phone::unactivated(n)).collect();
    let f = InProcBench::start(&fixtures::world(21, &phones)).await;
    let data_dir = f.path("data");
    let tmpfs = match Tmpfs::mount(&data_dir, "8m") {
        Ok(tmpfs) => tmpfs,
        Err(reason) => {
            eprintln!("SKIPPED: the full-disk test needs to mount a tmpfs as root: {reason}");
            return;
        }
    };
    // The late phones are plugged in only while the disk is full.
    for i in 0..rounds {
        f.bench.unplug(f.udid(&format!("late{i}"))).expect("unplug");
    }
    let config = f.station_config(None, 2, "");
    let config = config.to_str().expect("utf-8").to_string();

    // Full at start: refused by name, nothing touched, no ledger made.
    tmpfs.fill();
    let out = f
        .station(&["--config", &config, "run", "--once"], false)
        .await;
    assert_eq!(out.status.code(), Some(1), "{out}");
    assert!(out.stderr.contains("error[ledger-full]"), "{out}");
    assert!(out.stderr.contains("is full"), "{out}");
    assert!(!data_dir.join("ledger.sqlite3").exists());
    assert_eq!(
        f.bench.activation_state(f.udid("a")).expect("state"),
        ActivationState::Unactivated
    );
    tmpfs.empty();

    // Read-only at start: the same, by its own code.
    tmpfs.remount("ro");
    let out = f
        .station(&["--config", &config, "run", "--once"], false)
        .await;
    tmpfs.remount("rw");
    assert_eq!(out.status.code(), Some(1), "{out}");
    assert!(out.stderr.contains("error[ledger-read-only]"), "{out}");
    assert!(!data_dir.join("ledger.sqlite3").exists());
    assert_eq!(
        f.bench.activation_state(f.udid("a")).expect("state"),
        ActivationState::Unactivated
    );

    // Mid-run: the line handles a and b, then the disk fills.
    let mut station = f.spawn_station(&["--config", &config, "run"]);
    for name in ["a", "b"] {
        let udid = f.udid(name).to_string();
        let done = station
            .seen_or_wait(EVENT_WAIT, |e| {
                e["event"] == "finished" && e["udid"] == udid
            })
            .await;
        assert_eq!(done["outcome"], "activated", "{done}");
    }
    let committed = ledger_rows(&data_dir);
    assert_eq!(committed.len(), 2, "{committed:?}");

    let mut size_mb = 8;
    for round in 0..rounds {
        let late = f.udid(&format!("late{round}")).to_string();
        tmpfs.fill();
        f.bench.plug(&late).expect("plug");
        let paused = station
            .wait_for(EVENT_WAIT, |e| e["event"] == "ledger_paused")
            .await;
        assert_eq!(paused["code"], "ledger-full", "{paused}");
        assert!(
            paused["reason"]
                .as_str()
                .is_some_and(|r| r.contains("is full")),
            "{paused}"
        );
        // Two rechecks later the phone still waits, untouched.
        tokio::time::sleep(Duration::from_secs(5)).await;
        while let Ok(line) = station.lines.try_recv() {
            station
                .seen
                .push(serde_json::from_str(&line).expect("NDJSON"));
        }
        assert!(
            !station
                .seen
                .iter()
                .any(|e| e["event"] == "started" && e["udid"] == late),
            "a phone was started on a full disk: {:#?}",
            station.seen
        );
        assert_eq!(
            f.bench.activation_state(&late).expect("state"),
            ActivationState::Unactivated
        );

        // Room again: a larger tmpfs (the filler stays), and the line carries on.
        size_mb += 16;
        tmpfs.remount(&format!("size={size_mb}m"));
        station
            .wait_for(EVENT_WAIT, |e| e["event"] == "ledger_resumed")
            .await;
        let done = station
            .wait_for(EVENT_WAIT, |e| {
                e["event"] == "finished" && e["udid"] == late
            })
            .await;
        assert_eq!(done["outcome"], "activated", "{done}");
        tmpfs.empty();
    }
    station.signal("TERM");
    let (_, status) = station.finish(EVENT_WAIT).await;
    assert!(status.success(), "{status}");

    // Every committed row is there as it was, one per attempt, none left open.
    let rows = ledger_rows(&data_dir);
    assert_eq!(&rows[..2], &committed[..], "committed rows changed");
    assert_eq!(rows.len(), 2 + rounds as usize, "{rows:?}");
    for (udid, outcome) in &rows {
        assert_eq!(outcome.as_deref(), Some("activated"), "{udid}: {rows:?}");
    }
    drop(tmpfs);
}
