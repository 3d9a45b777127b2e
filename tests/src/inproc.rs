//! An in-process virtual bench (`station_sim::Bench`) for tests that steer it while the real
//! `station` binary runs against it: unplug a phone at the right moment, slow the
//! activation server down, read what the server received.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use station_sim::{AlbertRequest, Bench, BenchConfig, Endpoint, World};

use crate::{require_tool, run_with_timeout, workspace_bin, Output, TOOL_TIMEOUT};

pub struct InProcBench {
    pub bench: Bench,
    pub dir: tempfile::TempDir,
    pub udids: Vec<String>,
    pub serials: Vec<String>,
    /// Each phone's name (`device_name` in the world; see `fixtures::Phone`).
    pub names: Vec<String>,
}

impl InProcBench {
    /// Starts a bench serving `world` (TOML) in a fresh temporary directory.
    pub async fn start(world: &str) -> InProcBench {
        Self::start_with(world, |_| {}).await
    }

    /// Like [`start`](Self::start), with the bench configuration adjusted first.
    pub async fn start_with(world: &str, configure: impl FnOnce(&mut BenchConfig)) -> InProcBench {
        let dir = tempfile::tempdir().expect("temp dir");
        let world = World::from_toml(world, "test world").expect("world");
        let mut config = BenchConfig::new(
            dir.path().join("usbmuxd.sock"),
            world,
            dir.path().join("state"),
        );
        configure(&mut config);
        let bench = tokio::time::timeout(Duration::from_secs(30), Bench::start(config))
            .await
            .expect("bench start in time")
            .expect("bench");
        let info = bench.ready_info();
        let udids = info.devices.iter().map(|d| d.udid.clone()).collect();
        let serials = info.devices.iter().map(|d| d.serial.clone()).collect();
        let names = info.devices.iter().map(|d| d.device_name.clone()).collect();
        InProcBench {
            bench,
            dir,
            udids,
            serials,
            names,
        }
    }

    /// Where the phone named `name` is in the world; fails the test when no phone has it.
    #[track_caller]
    pub fn index_of(&self, name: &str) -> usize {
        let found: Vec<usize> = (0..self.names.len())
            .filter(|i| self.names[*i] == name)
            .collect();
        match found[..] {
            [index] => index,
            [] => panic!("no phone named {name:?} in the world: {:?}", self.names),
            _ => panic!(
                "several phones named {name:?} in the world: {:?}",
                self.names
            ),
        }
    }

    /// The UDID of the phone named `name`.
    #[track_caller]
    pub fn udid(&self, name: &str) -> &str {
        &self.udids[self.index_of(name)]
    }

    /// The serial number of the phone named `name`.
    #[track_caller]
    pub fn serial(&self, name: &str) -> &str {
        &self.serials[self.index_of(name)]
    }

    /// What the stand-in activation server received from the phone named `name` at
    /// `endpoint`, oldest first.
    #[track_caller]
    pub fn albert_requests(&self, name: &str, endpoint: Endpoint) -> Vec<AlbertRequest> {
        self.bench
            .albert()
            .requests_for(self.udid(name))
            .into_iter()
            .filter(|r| r.endpoint == Some(endpoint))
            .collect()
    }

    /// The bench's usbmuxd exits as the real daemon does (socket removed, every
    /// connection closed); the phones stay plugged in.
    pub async fn stop_usbmuxd(&mut self) {
        tokio::time::timeout(Duration::from_secs(10), self.bench.stop_usbmuxd())
            .await
            .expect("usbmuxd stops in time");
    }

    /// usbmuxd starts again on the same socket, the phones numbered afresh.
    pub fn start_usbmuxd(&mut self) {
        self.bench.start_usbmuxd().expect("usbmuxd starts again");
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("usbmuxd.sock")
    }

    /// A fresh connection to the bench's usbmuxd, as a peer tool would open one.
    pub async fn usbmux_client(
        &self,
    ) -> station_protocol::usbmux::UsbmuxClient<station_protocol::usbmux::UsbmuxStream> {
        use station_protocol::usbmux::{connect_address, Address, UsbmuxClient};
        let address = Address::Unix(self.socket());
        let stream = connect_address(&address, HAND_STEP)
            .await
            .expect("bench socket");
        UsbmuxClient::new(stream).with_timeout(HAND_STEP)
    }

    /// A plain lockdown connection to the phone with this UDID, opened by hand through the
    /// bench's usbmuxd, with the bench's SystemBUID: where a test that pairs by hand starts.
    pub async fn lockdown_by_hand(&self, udid: &str, label: &str) -> HandLockdown {
        use station_protocol::lockdown::{LockdownClient, LOCKDOWN_PORT};
        let device = self
            .usbmux_client()
            .await
            .list_devices()
            .await
            .expect("devices")
            .into_iter()
            .find(|d| d.udid == udid)
            .expect("the phone is attached");
        let buid = self.usbmux_client().await.read_buid().await.expect("BUID");
        let stream = self
            .usbmux_client()
            .await
            .connect(device.device_id, LOCKDOWN_PORT)
            .await
            .expect("lockdown");
        HandLockdown {
            lockdown: LockdownClient::new(stream, label),
            buid,
            device_id: device.device_id,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a codes CSV: `(phone name, code, kind)` rows.
    pub fn codes_csv(&self, name: &str, rows: &[(&str, &str, &str)]) -> PathBuf {
        let mut text =
            String::from("serial_number,udid,bypass_code,code_kind,source,retrieved_at\n");
        for (phone, code, kind) in rows {
            text.push_str(&format!(
                "{},,{code},{kind},intune,2026-11-01T10:00:00Z\n",
                self.serial(phone)
            ));
        }
        let path = self.path(name);
        std::fs::write(&path, text).expect("write csv");
        path
    }

    /// Puts the phone named `phone` on USB port `port` (`1-1.4.2`) in the fake sysfs the station
    /// reads: `<port>/serial` holds its UDID as the USB descriptor does (no dash).
    pub fn usb_port(&self, phone: &str, port: &str) {
        let dir = self.path("sysfs").join(port);
        std::fs::create_dir_all(&dir).expect("fake sysfs");
        let serial = self.udid(phone).replace('-', "");
        std::fs::write(dir.join("serial"), format!("{serial}\n")).expect("fake serial");
    }

    /// A station configuration for this bench: its socket, its activation server, the
    /// given codes file, a ledger in `data`, quick retries. `extra` is appended.
    pub fn station_config(&self, codes: Option<&Path>, concurrency: u32, extra: &str) -> PathBuf {
        let mut text = format!(
            "[station]\nid = \"test-bench\"\ndata_dir = \"{}\"\nconcurrency = {concurrency}\n\n[usbmuxd]\naddress = \"UNIX:{}\"\n\n[activation]\nurl = \"{}\"\n\n[retry]\nattempts = 3\ninitial_backoff_ms = 100\nmax_backoff_ms = 400\n",
            self.path("data").display(),
            self.socket().display(),
            self.bench.activation_url(),
        );
        if let Some(codes) = codes {
            text.push_str(&format!(
                "\n[[codes.sources]]\ntype = \"csv\"\npath = \"{}\"\n",
                codes.display()
            ));
        }
        text.push_str(extra);
        let path = self.path("station.toml");
        std::fs::write(&path, text).expect("write config");
        path
    }

    /// The `station` binary pointed at this bench (and nothing of the developer's own).
    pub fn station_command(&self, args: &[&str], trace: bool) -> Command {
        let mut cmd = Command::new(workspace_bin("station"));
        cmd.args(args)
            .env(
                "USBMUXD_SOCKET_ADDRESS",
                format!("UNIX:{}", self.socket().display()),
            )
            .env("HOME", self.dir.path())
            .env_remove("STATION_CONFIG")
            .env("STATION_DATA_DIR", self.path("data"))
            // A fake sysfs of USB devices (empty unless `usb_port` wrote one): the
            // machine's own USB devices stay out of the tests.
            .env("STATION_SYSFS_ROOT", self.path("sysfs"))
            .env("NO_COLOR", "1");
        if trace {
            cmd.env("RUST_LOG", "trace");
        } else {
            cmd.env_remove("RUST_LOG");
        }
        cmd
    }

    pub async fn station(&self, args: &[&str], trace: bool) -> Output {
        let cmd = self.station_command(args, trace);
        tokio::task::spawn_blocking(move || run_with_timeout(cmd, TOOL_TIMEOUT * 2))
            .await
            .expect("join")
    }

    /// `station [config...] --json activate --udid UDID --activation-url <this bench>
    /// [extra...]`: the output and its JSON report (panics when it is not JSON).
    pub async fn activate_json(
        &self,
        udid: &str,
        config: Option<&str>,
        extra: &[&str],
    ) -> (Output, serde_json::Value) {
        let url = self.bench.activation_url().to_string();
        let mut args: Vec<&str> = Vec::new();
        if let Some(config) = config {
            args.extend(["--config", config]);
        }
        args.extend([
            "--json",
            "activate",
            "--udid",
            udid,
            "--activation-url",
            &url,
        ]);
        args.extend_from_slice(extra);
        let out = self.station(&args, false).await;
        let json = serde_json::from_str(out.stdout.trim())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {out}"));
        (out, json)
    }

    /// What libimobiledevice's ideviceinfo reads as the ActivationState of the phone named
    /// `phone`.
    pub async fn ideviceinfo_state(&self, phone: &str) -> String {
        let mut cmd = Command::new(require_tool("ideviceinfo"));
        cmd.args(["-u", self.udid(phone), "-k", "ActivationState"])
            .env(
                "USBMUXD_SOCKET_ADDRESS",
                format!("UNIX:{}", self.socket().display()),
            )
            .env("HOME", self.dir.path());
        let out = tokio::task::spawn_blocking(move || run_with_timeout(cmd, TOOL_TIMEOUT))
            .await
            .expect("join");
        out.assert_success();
        out.stdout.trim().to_string()
    }
}

/// The JSON lines of an NDJSON stream; panics on a line that is not JSON.
pub fn ndjson(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not an NDJSON line ({e}): {l}"))
        })
        .collect()
}

/// A `station` child whose stdout lines arrive on a channel as they are written; killed
/// when dropped.
pub struct StreamingStation {
    pub child: std::process::Child,
    pub lines: std::sync::mpsc::Receiver<String>,
    pub seen: Vec<serde_json::Value>,
}

impl InProcBench {
    pub fn spawn_station(&self, args: &[&str]) -> StreamingStation {
        StreamingStation::spawn(self.station_command(args, false))
    }
}

impl StreamingStation {
    /// Spawns `cmd` (a `station` command line) with its stdout streamed.
    pub fn spawn(mut cmd: Command) -> StreamingStation {
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        let mut child = cmd.spawn().expect("spawn station");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        StreamingStation {
            child,
            lines,
            seen: Vec::new(),
        }
    }
}

impl StreamingStation {
    /// Sends a signal (`"INT"`, `"TERM"`) to the station.
    pub fn signal(&self, name: &str) {
        crate::send_signal(&self.child, name);
    }

    /// Waits (up to `timeout`) for an event matching `pred`; every event read is kept in
    /// `seen`. Panics on timeout with what was seen.
    pub async fn wait_for(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            match self.lines.try_recv() {
                Ok(line) => {
                    let event: serde_json::Value = serde_json::from_str(&line)
                        .unwrap_or_else(|e| panic!("not NDJSON ({e}): {line}"));
                    self.seen.push(event.clone());
                    if pred(&event) {
                        return event;
                    }
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "event not seen in {timeout:?}; saw {:#?}",
                        self.seen
                    );
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    panic!("station ended before the event; saw {:#?}", self.seen)
                }
            }
        }
    }

    /// Like [`wait_for`](Self::wait_for), but an event already read counts too: for events
    /// whose order among themselves is not fixed (two phones finishing).
    pub async fn seen_or_wait(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        if let Some(event) = self.seen.iter().find(|e| pred(e)) {
            return event.clone();
        }
        self.wait_for(timeout, pred).await
    }

    /// Reads the rest of the stream and the exit status (bounded by `timeout`).
    pub async fn finish(
        mut self,
        timeout: Duration,
    ) -> (Vec<serde_json::Value>, std::process::ExitStatus) {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            match self.lines.try_recv() {
                Ok(line) => self.seen.push(
                    serde_json::from_str(&line)
                        .unwrap_or_else(|e| panic!("not NDJSON ({e}): {line}")),
                ),
                Err(std::sync::mpsc::TryRecvError::Disconnected) => break,
                Err(std::sync::mpsc::TryRecvError::Empty) => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "station did not finish in {timeout:?}; saw {:#?}",
                        self.seen
                    );
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return (std::mem::take(&mut self.seen), status);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "station did not exit in {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for StreamingStation {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill();
        }
    }
}

/// How long one usbmuxd request may take in the tests that talk to the bench by hand.
const HAND_STEP: Duration = Duration::from_secs(10);

/// See [`InProcBench::lockdown_by_hand`].
pub struct HandLockdown {
    pub lockdown:
        station_protocol::lockdown::LockdownClient<station_protocol::usbmux::UsbmuxStream>,
    pub buid: String,
    /// usbmuxd's DeviceID of the phone, for connecting to its service ports.
    pub device_id: u32,
}
