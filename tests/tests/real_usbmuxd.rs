//! The host's usbmuxd client and `station devices` against the real usbmuxd daemon
//! (libimobiledevice's, as Debian packages it) with no phone attached.
//!
//! The daemon is at `STATION_REAL_USBMUXD` (default `/var/run/usbmuxd`); `scripts/test` starts
//! it when none is running. Pair-record tests use a made-up UDID and delete it afterwards, even
//! when the test fails.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use station_protocol::usbmux::{connect_address, Address, UsbmuxClient, UsbmuxStream};
use station_tests::{block_on, run_station};

const TIMEOUT: Duration = Duration::from_secs(5);

fn daemon_path() -> PathBuf {
    std::env::var_os("STATION_REAL_USBMUXD")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/run/usbmuxd"))
}

fn daemon_address() -> Address {
    Address::Unix(daemon_path())
}

/// A client on a fresh connection to the real daemon; fails with a hint when it is not running.
async fn client() -> UsbmuxClient<UsbmuxStream> {
    let address = daemon_address();
    let stream = connect_address(&address, TIMEOUT)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot reach the real usbmuxd ({e}); run `scripts/test`, which starts it, or \
             start it as root with `usbmuxd -f -U root &` (or point STATION_REAL_USBMUXD at it)"
            )
        });
    UsbmuxClient::new(stream).with_timeout(TIMEOUT)
}

/// A UDID no phone has: `ffffffff` followed by 32 random hex digits (40 characters).
fn made_up_udid() -> String {
    format!("ffffffff{}", uuid::Uuid::new_v4().simple())
}

/// Deletes the made-up pair record when dropped, so a failing test leaves nothing behind.
struct DeleteOnDrop(String);

impl Drop for DeleteOnDrop {
    fn drop(&mut self) {
        let udid = self.0.clone();
        // Runs outside any runtime (the tests block_on their bodies before this guard drops).
        let _ = std::thread::spawn(move || {
            block_on(async move {
                let address = daemon_address();
                if let Ok(stream) = connect_address(&address, TIMEOUT).await {
                    let _ = UsbmuxClient::new(stream)
                        .with_timeout(TIMEOUT)
                        .delete_pair_record(&udid)
                        .await;
                }
            })
        })
        .join();
    }
}

fn is_uuid_shaped(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, len)| g.len() == len && g.chars().all(|c| c.is_ascii_hexdigit()))
}

#[test]
fn list_devices_is_empty_without_phones() {
    let devices = block_on(async { client().await.list_devices().await })
        .expect("ListDevices on the real usbmuxd");
    assert!(
        devices.is_empty(),
        "no phone is attached to this machine, yet usbmuxd lists {devices:?}"
    );
}

#[test]
fn listen_is_accepted_and_stays_quiet() {
    block_on(async {
        let mut events = client()
            .await
            .listen()
            .await
            .expect("Listen on the real usbmuxd answers Result 0");
        let next = tokio::time::timeout(Duration::from_millis(300), events.next_event()).await;
        assert!(
            next.is_err(),
            "with no phone attached, no event should arrive within 300 ms, got {next:?}"
        );
    });
}

#[test]
fn read_buid_is_a_uuid() {
    let buid = block_on(async { client().await.read_buid().await }).expect("ReadBUID");
    assert!(
        is_uuid_shaped(&buid),
        "ReadBUID returned {buid:?}, not a UUID"
    );
}

#[test]
fn pair_record_save_read_delete_with_a_made_up_udid() {
    let udid = made_up_udid();
    assert_eq!(udid.len(), 40);
    let _cleanup = DeleteOnDrop(udid.clone());

    let mut record = plist::Dictionary::new();
    record.insert(
        "HostID".into(),
        plist::Value::String(uuid::Uuid::new_v4().to_string().to_uppercase()),
    );
    record.insert(
        "SystemBUID".into(),
        plist::Value::String("station-tests".into()),
    );
    record.insert("UDID".into(), plist::Value::String(udid.clone()));
    record.insert("EscrowBag".into(), plist::Value::Data(vec![0x5a; 32]));
    let record = plist::Value::Dictionary(record);
    let mut bytes = Vec::new();
    record
        .to_writer_xml(&mut bytes)
        .expect("serialising a test pair record");

    block_on(async {
        assert_eq!(
            client()
                .await
                .read_pair_record(&udid)
                .await
                .expect("ReadPairRecord before saving"),
            None,
            "a record for the made-up UDID {udid} already exists"
        );

        client()
            .await
            .save_pair_record(&udid, bytes.clone(), None)
            .await
            .expect("SavePairRecord");

        let read = client()
            .await
            .read_pair_record(&udid)
            .await
            .expect("ReadPairRecord after saving")
            .expect("usbmuxd has no record right after SavePairRecord");
        let read = plist::Value::from_reader(std::io::Cursor::new(read))
            .expect("usbmuxd returned a record that is not a plist");
        assert_eq!(
            read, record,
            "usbmuxd returned another record than the one saved"
        );

        assert!(
            client()
                .await
                .delete_pair_record(&udid)
                .await
                .expect("DeletePairRecord"),
            "DeletePairRecord said there was no record"
        );
        assert_eq!(
            client()
                .await
                .read_pair_record(&udid)
                .await
                .expect("ReadPairRecord after deleting"),
            None,
            "the record is still there after DeletePairRecord"
        );
    });
}

#[test]
fn station_devices_prints_an_empty_list_against_the_real_daemon() {
    let address = format!("UNIX:{}", daemon_path().display());
    let env = [("USBMUXD_SOCKET_ADDRESS", address.as_str())];

    let out = run_station(&["devices"], &env);
    out.assert_success();
    assert!(!out.combined().contains("panicked"), "{out}");

    let out = run_station(&["devices", "--json"], &env);
    out.assert_success();
    let json = out.json();
    let empty = match &json {
        Value::Array(items) => items.is_empty(),
        // An envelope object: every list in it is empty.
        Value::Object(map) => map.values().filter_map(Value::as_array).all(Vec::is_empty),
        _ => false,
    };
    assert!(empty, "station devices --json should list no phone: {out}");
}

#[test]
fn station_devices_says_no_usbmuxd_is_reachable() {
    let out = run_station(
        &["devices"],
        &[("USBMUXD_SOCKET_ADDRESS", "UNIX:/nonexistent.sock")],
    );
    out.assert_failure();
    let text = out.combined();
    assert!(
        text.contains("/nonexistent.sock"),
        "the message should name the address it tried: {out}"
    );
    let lower = text.to_lowercase();
    assert!(
        lower.contains("usbmuxd") && (lower.contains("reach") || lower.contains("no usbmuxd")),
        "the message should say no usbmuxd is reachable there: {out}"
    );
    assert!(!text.contains("panicked"), "{out}");
}

/// Debian's usbmuxd (1.1.1) has no socket option: it always listens on /var/run/usbmuxd. A
/// daemon of the test's own runs in a private mount namespace with a temporary directory
/// bound over /var/run, so its socket is `<dir>/usbmuxd` for everyone else and the shared
/// daemon is left alone. Needs root (as starting usbmuxd does) and util-linux `unshare`.
struct PrivateDaemon {
    dir: PathBuf,
    child: Option<std::process::Child>,
}

impl PrivateDaemon {
    fn socket(&self) -> PathBuf {
        self.dir.join("usbmuxd")
    }

    fn start(&mut self) {
        let usbmuxd = [
            "/usr/sbin/usbmuxd",
            "/usr/local/sbin/usbmuxd",
            "/sbin/usbmuxd",
        ]
        .into_iter()
        .find(|p| std::path::Path::new(p).is_file())
        .expect("usbmuxd installed (scripts/test installs it)");
        let script = format!(
            "mount --bind '{}' /var/run && exec {usbmuxd} -f -U root",
            self.dir.display()
        );
        let child = std::process::Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("unshare (util-linux) to start a private usbmuxd");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + TIMEOUT;
        while std::os::unix::net::UnixStream::connect(self.socket()).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the private usbmuxd did not come up (needs root for the mount namespace)"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, as `systemctl stop usbmuxd` sends: the daemon closes its clients and exits
    /// (1.1.1 leaves its socket file behind, refusing connections).
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateDaemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn station_run_outlives_the_real_daemon_stopping_and_starting() {
    use station_tests::inproc::StreamingStation;
    let temp = tempfile::tempdir().expect("temp dir");
    let run_dir = temp.path().join("run");
    std::fs::create_dir(&run_dir).expect("run dir");
    let mut daemon = PrivateDaemon {
        dir: run_dir,
        child: None,
    };
    daemon.start();
    let config = temp.path().join("station.toml");
    std::fs::write(
        &config,
        format!(
            "[station]\nid = \"real-usbmuxd\"\ndata_dir = \"{}\"\n\n[usbmuxd]\naddress = \"UNIX:{}\"\n",
            temp.path().join("data").display(),
            daemon.socket().display()
        ),
    )
    .expect("config");
    let mut cmd = std::process::Command::new(station_tests::workspace_bin("station"));
    cmd.args(["--config", &config.to_string_lossy(), "--json", "run"])
        .env(
            "USBMUXD_SOCKET_ADDRESS",
            format!("UNIX:{}", daemon.socket().display()),
        )
        .env("HOME", temp.path())
        .env_remove("STATION_CONFIG")
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1");
    let mut station = StreamingStation::spawn(cmd);
    let wait = Duration::from_secs(30);
    block_on(async {
        station
            .wait_for(wait, |e| e["event"] == "run_started")
            .await;
        for _ in 0..3 {
            daemon.stop();
            station
                .wait_for(wait, |e| e["event"] == "usbmuxd_lost")
                .await;
            daemon.start();
            let back = station
                .wait_for(wait, |e| e["event"] == "usbmuxd_back")
                .await;
            assert_eq!(back["phones"], 0, "{back}");
        }
        assert!(
            matches!(station.child.try_wait(), Ok(None)),
            "still running"
        );
        station.signal("TERM");
        let (events, status) = station.finish(wait).await;
        assert_eq!(status.code(), Some(0), "{events:#?}");
        assert_eq!(
            events.last().map(|e| e["event"].clone()),
            Some(Value::from("summary"))
        );
    });
}
