//! `station demo`, the README's first command: the live screen in a pseudo-terminal, the
//! NDJSON stream when piped, nothing left behind, and no bypass code in anything it writes
//! at any log level.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use station_sim::world::demo;
use station_sim::World;
use station_tests::inproc::ndjson;
use station_tests::{run_with_timeout, workspace_bin, Output};

const DEMO_TIMEOUT: Duration = Duration::from_secs(90);

fn demo(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(workspace_bin("station"));
    cmd.arg("demo")
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("STATION_CONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_with_timeout(cmd, DEMO_TIMEOUT)
}

/// Every station-demo temporary directory currently in the temp dir.
fn leftovers(tmp: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(tmp)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("station-demo-"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn piped_demo_is_an_ndjson_stream_with_every_kind_of_phone() {
    let tmp = tempfile::tempdir().expect("tmp");
    let tmp_path = tmp.path().display().to_string();
    let out = demo(
        &["--devices", "8", "--latency-ms", "100", "--seed", "7"],
        &[("TMPDIR", &tmp_path)],
    );
    out.assert_success();
    let events = ndjson(&out.stdout);
    let finals: std::collections::BTreeMap<String, String> = events
        .iter()
        .filter(|e| e["event"] == "finished")
        .map(|e| {
            (
                e["udid"].as_str().unwrap_or_default().to_string(),
                e["outcome"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let mut counts = std::collections::BTreeMap::new();
    for outcome in finals.values() {
        *counts.entry(outcome.as_str()).or_insert(0) += 1;
    }
    assert_eq!(counts.get("activated"), Some(&4), "{counts:?}");
    // The demo's activated phone is still signed in to Find My; its supervised one is
    // activated already and only flagged.
    assert_eq!(counts.get("already_activated"), Some(&1), "{counts:?}");
    assert_eq!(counts.get("find_my_on"), Some(&1), "{counts:?}");
    assert_eq!(counts.get("code_rejected"), Some(&1), "{counts:?}");
    assert_eq!(counts.get("user_locked"), Some(&1), "{counts:?}");
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "step" && e["step"] == "waiting_for_trust"),
        "a phone waits for Trust"
    );
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "finished" && e["outcome"] == "interrupted"),
        "a phone is unplugged mid-run"
    );
    assert!(events.iter().any(|e| e["event"] == "detached"));
    let released: Vec<&Value> = events
        .iter()
        .filter(|e| e["released_by"]["source"] == "intune")
        .collect();
    assert!(
        released.len() >= 2,
        "codes from the stand-in Intune release locks"
    );
    assert_eq!(
        events.last().map(|e| e["event"].clone()),
        Some(Value::from("summary"))
    );
    assert!(
        leftovers(tmp.path()).is_empty(),
        "the demo leaves nothing behind: {:?}",
        leftovers(tmp.path())
    );
}

#[test]
fn demo_in_a_terminal_shows_live_rows_and_the_report() {
    let tmp = tempfile::tempdir().expect("tmp");
    let station = workspace_bin("station");
    // `script` gives the demo a pseudo-terminal, as an operator's shell would.
    let mut cmd = Command::new("script");
    cmd.args(["-q", "-e", "-c"])
        // A wide screen, so the rows' messages are not cut.
        .arg(format!(
            "stty cols 220 rows 50; {} demo --devices 8 --latency-ms 100 --seed 7",
            station.display()
        ))
        .arg("/dev/null")
        .env("TMPDIR", tmp.path())
        .env("TERM", "xterm-256color")
        .env("COLUMNS", "160")
        .env_remove("NO_COLOR")
        .env_remove("RUST_LOG");
    let out = run_with_timeout(cmd, DEMO_TIMEOUT);
    out.assert_success();
    let screen = out.stdout;
    assert!(
        screen.contains('\u{1b}'),
        "a terminal gets colour and cursor control"
    );
    assert!(!screen.contains("\"event\""), "no NDJSON on a terminal");
    for text in [
        "activated",
        "already_activated",
        "code_rejected",
        "user_locked",
        "need attention",
        "Report",
        "resumed after replug",
    ] {
        assert!(
            screen.contains(text),
            "{text:?} missing from the screen:\n{screen}"
        );
    }
    assert!(leftovers(tmp.path()).is_empty());
}

#[test]
fn no_bypass_code_appears_at_any_log_level() {
    let tmp = tempfile::tempdir().expect("tmp");
    let tmp_path = tmp.path().display().to_string();
    let out = demo(
        &[
            "--devices",
            "8",
            "--latency-ms",
            "50",
            "--seed",
            "11",
            "-vvv",
        ],
        &[("TMPDIR", &tmp_path), ("RUST_LOG", "trace")],
    );
    out.assert_success();
    let written = format!("{}{}", out.stdout, out.stderr);
    assert!(written.contains("TRACE"), "trace logging was on");
    // The same phones the demo served: every code its MDM stand-ins and Apple know.
    let world = World::from_toml(&demo::world_toml(8, 11, 50), "demo").expect("world");
    let codes: Vec<String> = world
        .resolve()
        .expect("phones")
        .into_iter()
        .flat_map(|p| p.codes.into_iter().chain(p.stale_codes))
        .collect();
    assert!(codes.len() >= 5, "the demo has codes: {}", codes.len());
    for code in &codes {
        let compact = code.replace('-', "");
        for form in [
            code.clone(),
            compact.clone(),
            code.to_lowercase(),
            compact.to_lowercase(),
        ] {
            assert!(!written.contains(&form), "a bypass code appeared whole");
        }
    }
    assert!(written.contains("-…-"), "codes appear masked");
}
