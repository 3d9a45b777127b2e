//! The `station-sim` binary: serve, the ready file, SIGUSR1/SIGUSR2 (usbmuxd away and back),
//! SIGTERM, `world`.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use plist::Value;
use station_sim::ReadyInfo;

const BIN: &str = env!("CARGO_BIN_EXE_station-sim");

/// Kills the child if a test fails half-way.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `station-sim serve` of `devices` generated phones (seed 5) on `socket`, writing `ready`.
fn serve(devices: u32, socket: &std::path::Path, ready: &std::path::Path) -> Child {
    Child(
        Command::new(BIN)
            .args(["serve", "--seed", "5", "-q", "--devices"])
            .arg(devices.to_string())
            .arg("--socket")
            .arg(socket)
            .arg("--ready")
            .arg(ready)
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn station-sim"),
    )
}

/// The ready file once the bench has written it (within [`STEP`]).
async fn ready_file(path: &std::path::Path) -> ReadyInfo {
    let started = Instant::now();
    loop {
        if let Ok(info) = ReadyInfo::read(path) {
            return info;
        }
        assert!(started.elapsed() < STEP, "no ready file {}", path.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A caller may signal the moment the ready file appears: by then the bench must answer
/// to SIGUSR1 (usbmuxd away), not die of its default action. Before the signals were
/// watched ahead of the ready file, about half of such starts were killed.
#[test]
fn a_signal_right_after_the_ready_file_finds_the_bench_listening() {
    for round in 0..6 {
        let dir = tempfile::tempdir().expect("tempdir");
        let ready = dir.path().join("ready.json");
        let mut child = serve(1, &dir.path().join("bench.sock"), &ready);
        let started = Instant::now();
        // No sleep between the file appearing and the signal: that is the window.
        while !ready.exists() {
            assert!(started.elapsed() < STEP, "no ready file");
            std::thread::yield_now();
        }
        // A direct kill(2): spawning `kill` would take long enough to hide the window.
        let pid = rustix::process::Pid::from_raw(child.0.id() as i32).expect("pid");
        rustix::process::kill_process(pid, rustix::process::Signal::USR1).expect("SIGUSR1");
        std::thread::sleep(Duration::from_millis(300));
        let exited = child.0.try_wait().expect("try_wait");
        assert_eq!(exited, None, "round {round}: SIGUSR1 killed the bench");
    }
}

/// The ready file names each phone's effective `leave_when_idle_ms`: the world's default
/// where the phone sets none, its own where it does; left out where neither does.
#[tokio::test]
async fn the_ready_file_names_each_phones_leave_when_idle_ms() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, world, want) in [
        (
            "default",
            "seed = 5\nleave_when_idle_ms = 60000\n[[device]]\n[[device]]\nleave_when_idle_ms = 5000\n",
            [Some(60000), Some(5000)],
        ),
        (
            "own",
            "seed = 5\n[[device]]\n[[device]]\nleave_when_idle_ms = 5000\n",
            [None, Some(5000)],
        ),
    ] {
        let world_file = dir.path().join(format!("{name}.toml"));
        std::fs::write(&world_file, world).expect("world file");
        let ready = dir.path().join(format!("{name}.json"));
        let _child = Child(
            Command::new(BIN)
                .args(["serve", "-q", "--world"])
                .arg(&world_file)
                .arg("--socket")
                .arg(dir.path().join(format!("{name}.sock")))
                .arg("--ready")
                .arg(&ready)
                .stdout(Stdio::null())
                .spawn()
                .expect("spawn station-sim"),
        );
        let info = ready_file(&ready).await;
        let got: Vec<Option<u64>> = info.devices.iter().map(|d| d.leave_when_idle_ms).collect();
        assert_eq!(got, want, "{name}");
        // In the file as written, not only as this crate reads it back.
        let text = std::fs::read_to_string(&ready).expect("ready file");
        let json: serde_json::Value = serde_json::from_str(&text).expect("json");
        let written: Vec<Option<u64>> = json["devices"]
            .as_array()
            .expect("devices")
            .iter()
            .map(|d| d.get("leave_when_idle_ms").map(|v| v.as_u64().expect("a number")))
            .collect();
        assert_eq!(written, want, "{name}: {text}");
    }
}

#[tokio::test]
async fn serve_writes_ready_file_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("bench.sock");
    let ready = dir.path().join("ready.json");
    std::fs::write(&ready, "stale").expect("stale ready file");
    let mut child = serve(2, &socket, &ready);

    let info = ready_file(&ready).await;
    assert_eq!(info.socket, socket);
    assert_eq!(info.devices.len(), 2);
    assert!(info
        .devices
        .iter()
        .all(|d| d.attached && d.device_id.is_some()));
    assert_eq!(info.state_dir, dir.path().join("bench.sock.state"));
    let expected: Vec<String> = station_sim::default_world(2, 5)
        .resolve()
        .expect("world")
        .into_iter()
        .map(|p| p.udid)
        .collect();
    let got: Vec<String> = info.devices.iter().map(|d| d.udid.clone()).collect();
    assert_eq!(
        got, expected,
        "--devices/--seed give default_world(n, seed)"
    );

    let p = mux_call(&socket, &request("ListDevices", vec![])).await;
    let n = p
        .plist()
        .expect("plist")
        .as_dictionary()
        .and_then(|d| d.get("DeviceList"))
        .and_then(Value::as_array)
        .map(Vec::len);
    assert_eq!(n, Some(2));

    // SIGUSR1: usbmuxd goes away like the real daemon exiting; SIGUSR2: it is back.
    let signal = |name: &str| {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(child.0.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    };
    signal("USR1");
    let started = Instant::now();
    while tokio::net::UnixStream::connect(&socket).await.is_ok() {
        assert!(started.elapsed() < STEP, "usbmuxd did not stop on SIGUSR1");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    signal("USR2");
    let started = Instant::now();
    while tokio::net::UnixStream::connect(&socket).await.is_err() {
        assert!(started.elapsed() < STEP, "usbmuxd did not start on SIGUSR2");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let p = mux_call(&socket, &request("ListDevices", vec![])).await;
    assert_eq!(
        p.plist()
            .expect("plist")
            .as_dictionary()
            .and_then(|d| d.get("DeviceList"))
            .and_then(Value::as_array)
            .map(Vec::len),
        Some(2),
        "the same phones after the restart"
    );

    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.0.id().to_string())
        .status()
        .expect("kill");
    assert!(status.success());
    let started = Instant::now();
    let exit = loop {
        if let Some(exit) = child.0.try_wait().expect("wait") {
            break exit;
        }
        assert!(started.elapsed() < STEP, "did not stop on SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exit.success(), "{exit}");
    assert!(!socket.exists(), "socket removed");
    assert!(!ready.exists(), "ready file removed");
}

#[test]
fn world_command_prints_a_loadable_world() {
    let out = Command::new(BIN)
        .args(["world", "--devices", "3", "--seed", "9"])
        .output()
        .expect("run");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("utf8");
    let world = station_sim::World::from_toml(&text, "stdout").expect("parses");
    assert_eq!(
        world.resolve().expect("resolves"),
        station_sim::default_world(3, 9)
            .resolve()
            .expect("resolves")
    );
}

#[test]
fn bad_world_file_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("w.toml");
    std::fs::write(&path, "[[device]]\ncolour = \"red\"\n").expect("write");
    let out = Command::new(BIN)
        .arg("world")
        .arg("--world")
        .arg(&path)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("colour"), "{err}");
}
