//! `station watch` end to end: watchers attached to a live `station run` (the real binary
//! against the in-process virtual bench) through the socket the run publishes.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use serde_json::Value;
use station_tests::fixtures::{self, Phone, CODE_A, CODE_A_MASKED};
use station_tests::inproc::InProcBench;

const CODE: &str = CODE_A;
const MASKED: &str = CODE_A_MASKED;

/// The locked phone of [`world`]; the others are clean.
const MDM: &str = "mdm";

fn world() -> String {
    fixtures::world(
        9,
        &[
            Phone::unactivated("clean-1"),
            Phone::mdm_locked(MDM, &[CODE]),
            Phone::unactivated("clean-2"),
            Phone::unactivated("clean-3"),
        ],
    )
}

/// `station run --once` on the bench, one phone at a time with slow answers so that it
/// lasts long enough to attach mid-way; returned once its first phone has finished.
async fn run_under_way() -> (InProcBench, String, station_tests::inproc::StreamingStation) {
    let f = InProcBench::start(&world()).await;
    let codes = f.codes_csv("codes.csv", &[(MDM, CODE, "device")]);
    let config = f.station_config(Some(&codes), 1, "");
    let config = config.to_str().expect("utf-8").to_string();
    f.bench.albert().set_latency(Duration::from_millis(400));
    let mut run = f.spawn_station(&["--config", &config, "run", "--once"]);
    run.wait_for(Duration::from_secs(60), |e| e["event"] == "finished")
        .await;
    (f, config, run)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_attached_mid_run_get_the_replay_and_the_live_events_to_the_summary() {
    let (f, config, run) = run_under_way().await;
    let config = config.as_str();

    let socket = f.path("data").join("station.sock");
    let mode = std::fs::metadata(&socket)
        .expect("the run publishes its socket in the data dir")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the socket is the station user's only");

    // A watcher that never reads must not hold the line up.
    let stalled = std::os::unix::net::UnixStream::connect(&socket).expect("stalled watcher");
    let first = f.spawn_station(&["--config", config, "--json", "watch"]);
    let second = f.spawn_station(&["--config", config, "--json", "watch"]);

    // A second run is refused by the ledger lock and leaves the live run's socket alone.
    let second_run = f
        .station(&["--config", config, "run", "--once"], false)
        .await;
    assert!(second_run.stderr.contains("ledger-in-use"), "{second_run}");
    assert!(socket.exists(), "the live run's socket is still there");

    let (events, status) = run.finish(Duration::from_secs(120)).await;
    assert_eq!(status.code(), Some(0), "every phone activated: {events:#?}");
    assert_eq!(
        events.last().map(|e| e["event"].clone()),
        Some("summary".into())
    );
    assert!(!socket.exists(), "the socket is removed when the run ends");

    for watcher in [first, second] {
        let (seen, status) = watcher.finish(Duration::from_secs(30)).await;
        assert_eq!(
            status.code(),
            Some(0),
            "a watcher ends with the summary: {seen:#?}"
        );
        // Attached after the first phone finished, it still gets the whole run, in order,
        // exactly as the run printed it: the replay, then the live events.
        assert_eq!(seen, events);
        assert!(seen.iter().all(|e| e["v"] == 2));
        let text = seen.iter().map(Value::to_string).collect::<String>();
        assert!(!text.contains(CODE), "no code in the clear on the socket");
        assert!(
            seen.iter()
                .any(|e| e["event"] == "finished" && e["released_by"]["code"] == MASKED),
            "the released phone's code appears masked"
        );
    }
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_without_a_live_run_says_so_and_fails() {
    let f = InProcBench::start(&world()).await;
    let config = f.station_config(None, 1, "");
    let config = config.to_str().expect("utf-8");
    // A socket file a killed run left behind is not a live run.
    std::fs::create_dir_all(f.path("data")).expect("data dir");
    let socket = f.path("data").join("station.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("stale socket"));
    for args in [
        ["--config", config, "watch"].as_slice(),
        &["--config", config, "--json", "watch"],
    ] {
        let out = f.station(args, false).await;
        out.assert_failure();
        assert_eq!(out.status.code(), Some(1), "{out}");
        assert!(
            out.stderr
                .contains(&format!("no station run is live at {}", socket.display()))
                && out.stderr.contains("systemctl start station"),
            "{out}"
        );
    }
}

/// The live screen on a real terminal (a private tmux server): `station watch` draws the
/// rows of the phones the run handled and the summary, then exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_draws_the_live_rows_on_a_terminal() {
    let tmux = station_tests::require_tool("tmux");
    let (f, config, run) = run_under_way().await;
    let config = config.as_str();

    // The watch as the operator's shell would start it, its exit status left on screen.
    let cmd = f.station_command(&["--config", config, "watch"], false);
    let mut script = String::from("#!/bin/sh\n");
    for (key, value) in cmd.get_envs() {
        let key = key.to_str().expect("utf-8");
        match value {
            Some(value) => script.push_str(&format!(
                "export {key}='{}'\n",
                value.to_str().expect("utf-8")
            )),
            None => script.push_str(&format!("unset {key}\n")),
        }
    }
    script.push_str(&format!(
        "'{}' --config '{config}' watch\necho \"watch exit=$?\"\nsleep 120\n",
        cmd.get_program().to_str().expect("utf-8")
    ));
    let script_path = f.path("watch.sh");
    std::fs::write(&script_path, script).expect("script");
    std::fs::set_permissions(&script_path, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let server = f.path("tmux.sock");
    let tmux_cmd = |args: &[&str]| {
        std::process::Command::new(&tmux)
            .arg("-S")
            .arg(&server)
            .args(args)
            .output()
            .expect("tmux")
    };
    let started = tmux_cmd(&[
        "new-session",
        "-d",
        "-x",
        "160",
        "-y",
        "40",
        script_path.to_str().expect("utf-8"),
    ]);
    assert!(started.status.success(), "{started:?}");

    let (_, status) = run.finish(Duration::from_secs(120)).await;
    assert_eq!(status.code(), Some(0));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let screen = loop {
        let shown = tmux_cmd(&["capture-pane", "-p"]);
        let text = String::from_utf8_lossy(&shown.stdout).to_string();
        if text.contains("watch exit=") || std::time::Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _ = tmux_cmd(&["kill-server"]);
    assert!(screen.contains("watch exit=0"), "{screen}");
    assert!(
        screen.contains("station test-bench"),
        "the run's header: {screen}"
    );
    // Every phone is on the watcher's screen: a finished row, or (a success older than a
    // few seconds) folded into the counts and the "recent" line, as on the run's own screen.
    let recent = screen
        .lines()
        .find(|l| l.starts_with("recent ✓"))
        .unwrap_or_default();
    let rows = screen
        .lines()
        .filter(|l| l.contains("activated") && f.serials.iter().any(|s| l.contains(s.as_str())))
        .count();
    let folded = recent.split_whitespace().skip(2).count();
    assert_eq!(
        rows + folded,
        f.serials.len(),
        "every phone shown: {screen}"
    );
    assert!(
        screen.contains(&format!(
            "{} phones · activated {}",
            f.serials.len(),
            f.serials.len()
        )),
        "the counts: {screen}"
    );
    assert!(
        screen.contains("every phone is done"),
        "the summary: {screen}"
    );
    assert!(!screen.contains(CODE));
}
