//! Harness for the cross-crate tests: runs the real `station-sim` and `station` binaries and
//! real peer tools (libimobiledevice, pymobiledevice3) as child processes.
//!
//! Rules every test relies on:
//! - every child process runs under a timeout and is killed when it expires: no test hangs;
//! - a virtual bench (`station-sim serve`) lives in its own temporary directory (socket, ready
//!   file, state, logs, and a private `HOME` for the tools) and is killed when dropped;
//! - a missing binary or tool fails the test with a message saying how to get it (never a
//!   silent skip): `cargo build --workspace` for ours, `scripts/test` for the peer tools.

use std::collections::BTreeSet;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

pub mod fixtures;
pub mod hostile;
pub mod inproc;
pub mod pg;
pub mod seeded;
pub mod sha1_records;
pub mod web;

use serde_json::Value;
use station_protocol::usbmux::{connect_address, Address, UsbmuxClient};

/// Time limit for one run of a libimobiledevice tool or of `station`.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(30);
/// Time limit for one run of pymobiledevice3 (a Python start-up plus RSA key generation).
pub const PMD3_TIMEOUT: Duration = Duration::from_secs(90);
/// How long `station-sim serve` may take to write its ready file.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Environment variables the harness removes from every child so that the developer's own
/// settings cannot point a tool at another daemon or device.
const SCRUBBED_ENV_PREFIXES: &[&str] = &["USBMUXD_SOCKET_ADDRESS", "PYMOBILEDEVICE3_"];

// ---------------------------------------------------------------------------------------------
// Locating binaries and tools

/// The workspace root (the directory holding the top-level Cargo.toml).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// A binary of this workspace, next to the test executable: the test runs from
/// `target/<profile>/deps/`, the binaries live in `target/<profile>/`.
/// `STATION_SIM_BIN` / `STATION_BIN` (`<NAME>_BIN`, upper-case, `-` → `_`) override the lookup.
pub fn workspace_bin(name: &str) -> PathBuf {
    let override_var = format!("{}_BIN", name.to_uppercase().replace('-', "_"));
    if let Some(path) = std::env::var_os(&override_var) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "{override_var}={} does not name a file",
            path.display()
        );
        return path;
    }
    let exe = std::env::current_exe().expect("the test executable's own path");
    let mut candidates = Vec::new();
    if let Some(dir) = exe.parent() {
        // target/<profile>/deps/<test> → target/<profile>/<name>
        if let Some(profile_dir) = dir.parent() {
            candidates.push(profile_dir.join(name));
        }
        candidates.push(dir.join(name));
    }
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "the `{name}` binary was not found (looked at {}); build it first with \
                 `cargo build --workspace` (scripts/test does this), or set {override_var}",
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// A tool found on `PATH` (libimobiledevice's `idevice_id`, `ideviceinfo`, `idevicepair`;
/// `tmux`). Fails the test when absent: the tools are installed by `scripts/test`.
pub fn require_tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not on PATH: run `scripts/test`, which installs the tools the \
                 tests run (or `apt-get install libimobiledevice-utils usbmuxd libusbmuxd-tools tmux`)"
            )
        })
}

/// pymobiledevice3: `STATION_PMD3`, else `.venv-interop/bin/pymobiledevice3` at the workspace root.
pub fn require_pmd3() -> PathBuf {
    let (path, from_env) = match std::env::var_os("STATION_PMD3") {
        Some(p) if !p.is_empty() => (PathBuf::from(p), true),
        _ => (
            workspace_root().join(".venv-interop/bin/pymobiledevice3"),
            false,
        ),
    };
    assert!(
        is_executable(&path),
        "pymobiledevice3 not found at {}{}: run `scripts/test`, which creates the \
         .venv-interop virtualenv with pymobiledevice3 from PyPI",
        path.display(),
        if from_env { " (from STATION_PMD3)" } else { "" }
    );
    path
}

// ---------------------------------------------------------------------------------------------
// Running commands with a timeout

/// What a finished child process left behind.
#[derive(Debug)]
pub struct Output {
    /// The command line, for messages.
    pub command: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Panics with the whole story unless the command exited 0.
    #[track_caller]
    pub fn assert_success(&self) -> &Self {
        assert!(self.success(), "command failed: {self}");
        self
    }

    /// Panics with the whole story if the command exited 0.
    #[track_caller]
    pub fn assert_failure(&self) -> &Self {
        assert!(!self.success(), "command unexpectedly succeeded: {self}");
        self
    }

    /// stdout followed by stderr.
    pub fn combined(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    /// stdout parsed as JSON; panics with the output when it is not JSON.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self}"))
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` exited with {}\n--- stdout ---\n{}\n--- stderr ---\n{}\n--------------",
            self.command,
            self.status,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

fn describe(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    let envs: Vec<String> = cmd
        .get_envs()
        .filter(|(k, _)| {
            let k = k.to_string_lossy();
            k == "USBMUXD_SOCKET_ADDRESS" || k == "HOME"
        })
        .filter_map(|(k, v)| Some(format!("{}={}", k.to_string_lossy(), v?.to_string_lossy())))
        .collect();
    if envs.is_empty() {
        parts.join(" ")
    } else {
        format!("{} {}", envs.join(" "), parts.join(" "))
    }
}

/// A child's output pipe read on a thread into a shared buffer, so that what a killed (or
/// still-running grandchild) process printed is available even if the pipe never closes.
struct PipeReader {
    buf: Arc<Mutex<Vec<u8>>>,
    done: mpsc::Receiver<()>,
}

impl PipeReader {
    fn spawn<R: Read + Send + 'static>(mut pipe: R) -> Self {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let (tx, done) = mpsc::channel();
        let shared = Arc::clone(&buf);
        thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            loop {
                match pipe.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if let Ok(mut b) = shared.lock() {
                            b.extend_from_slice(&chunk[..n]);
                        }
                    }
                }
            }
            let _ = tx.send(());
        });
        PipeReader { buf, done }
    }

    /// Waits for end of file until `deadline`, then returns what was read.
    fn finish(self, deadline: Instant) -> String {
        let _ = self
            .done
            .recv_timeout(deadline.saturating_duration_since(Instant::now()));
        let bytes = self.buf.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// Runs `cmd` with stdin closed and output captured; kills it if it outlives `timeout` and
/// then fails the test with what it had printed.
#[track_caller]
pub fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Output {
    let command = describe(&cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("could not start `{command}`: {e}"));
    let stdout = child.stdout.take().map(PipeReader::spawn);
    let stderr = child.stderr.take().map(PipeReader::spawn);
    let deadline = Instant::now() + timeout;
    let (status, timed_out) = loop {
        match child.try_wait() {
            Ok(Some(status)) => break (status, false),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let status = child.wait().expect("waiting for a killed child");
                break (status, true);
            }
            Ok(None) => thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("waiting for `{command}`: {e}"),
        }
    };
    // A grandchild may still hold the pipes open: never wait long for them.
    let drain_deadline = Instant::now() + Duration::from_secs(2);
    let collect =
        |reader: Option<PipeReader>| reader.map(|r| r.finish(drain_deadline)).unwrap_or_default();
    let output = Output {
        command,
        status,
        stdout: collect(stdout),
        stderr: collect(stderr),
    };
    assert!(
        !timed_out,
        "timed out after {timeout:?} and was killed: {output}"
    );
    output
}

/// A `Command` with the harness's scrubbed environment.
fn scrubbed_command(program: &Path) -> Command {
    let mut cmd = Command::new(program);
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if SCRUBBED_ENV_PREFIXES.iter().any(|p| k.starts_with(p)) {
            cmd.env_remove(&key);
        }
    }
    cmd
}

/// Runs the `station` binary with `args` and extra `env` (e.g. `USBMUXD_SOCKET_ADDRESS`), under
/// [`TOOL_TIMEOUT`]. Inherited `USBMUXD_SOCKET_ADDRESS` is removed first, so pass it in `env`.
#[track_caller]
pub fn run_station(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = scrubbed_command(&workspace_bin("station"));
    cmd.args(args).env("NO_COLOR", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_with_timeout(cmd, TOOL_TIMEOUT)
}

// ---------------------------------------------------------------------------------------------
// The virtual bench

/// One phone as the ready file describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadyDevice {
    pub udid: String,
    pub serial: String,
    pub product_type: String,
    pub product_version: String,
    pub activation_state: String,
    /// The trust behaviour as the simulator reports it (free-form; see [`ReadyDevice::pairs_without_prompt`]).
    pub trust: Option<Value>,
    /// The whole entry, for fields added later.
    pub raw: Value,
}

impl ReadyDevice {
    fn from_json(v: &Value) -> Result<Self, String> {
        let s = |key: &str| {
            v.get(key)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| format!("device entry without string `{key}`: {v}"))
        };
        Ok(ReadyDevice {
            udid: s("udid")?,
            serial: s("serial")?,
            product_type: s("product_type")?,
            product_version: s("product_version")?,
            activation_state: s("activation_state")?,
            trust: v.get("trust").cloned(),
            raw: v.clone(),
        })
    }

    /// The phone's name (`device_name` in the world).
    pub fn name(&self) -> Option<&str> {
        self.raw.get("device_name").and_then(Value::as_str)
    }

    /// How long the phone stays plugged in once the host let go of it (its effective
    /// `leave_when_idle_ms`, docs/world.md "USB"); `None`: it never leaves by itself.
    pub fn leave_when_idle_ms(&self) -> Option<u64> {
        self.raw.get("leave_when_idle_ms").and_then(Value::as_u64)
    }

    /// True when the phone accepts `Pair` at once, with nobody tapping Trust: a phone at Setup
    /// Assistant (`Unactivated`), or one whose virtual user taps Trust with no delay; never a
    /// passcode-locked one.
    pub fn pairs_without_prompt(&self) -> bool {
        let flag = |key: &str| self.raw.get(key).and_then(Value::as_bool).unwrap_or(false);
        let delay_ms = self
            .raw
            .get("trust_delay_ms")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        if flag("passcode_locked") {
            return false;
        }
        self.activation_state == "Unactivated"
            || (self.trust.as_ref().and_then(Value::as_str) == Some("accept") && delay_ms == 0)
    }
}

/// The ready file `station-sim serve --ready FILE` writes once it listens.
#[derive(Debug, Clone)]
pub struct Ready {
    pub socket: PathBuf,
    pub devices: Vec<ReadyDevice>,
    pub state_dir: Option<PathBuf>,
    pub raw: Value,
}

impl Ready {
    pub fn parse(text: &str) -> Result<Self, String> {
        let raw: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let socket = raw
            .get("socket")
            .and_then(Value::as_str)
            .map(PathBuf::from)
            .ok_or("no `socket` string")?;
        let devices = raw
            .get("devices")
            .and_then(Value::as_array)
            .ok_or("no `devices` array")?
            .iter()
            .map(ReadyDevice::from_json)
            .collect::<Result<Vec<_>, _>>()?;
        let state_dir = raw
            .get("state_dir")
            .and_then(Value::as_str)
            .map(PathBuf::from);
        Ok(Ready {
            socket,
            devices,
            state_dir,
            raw,
        })
    }
}

/// A running `station-sim serve` in its own temporary directory; killed on drop.
pub struct Bench {
    child: Child,
    dir: tempfile::TempDir,
    pub ready: Ready,
}

impl Bench {
    /// `station-sim serve --devices N` with the default seeded world.
    #[track_caller]
    pub fn start(devices: usize) -> Bench {
        Bench::start_with(&["--devices", &devices.to_string()])
    }

    /// `station-sim serve ARGS --socket … --ready … --state-dir …`, waiting for the ready file.
    #[track_caller]
    pub fn start_with(args: &[&str]) -> Bench {
        let sim = workspace_bin("station-sim");
        let dir = tempfile::Builder::new()
            .prefix("station-bench-")
            .tempdir()
            .expect("a temporary directory for the bench");
        let socket = dir.path().join("usbmuxd.sock");
        let ready_file = dir.path().join("ready.json");
        let state_dir = dir.path().join("state");
        let home = dir.path().join("home");
        std::fs::create_dir_all(&home).expect("bench home directory");
        let log =
            |name: &str| std::fs::File::create(dir.path().join(name)).expect("bench log file");
        let mut cmd = scrubbed_command(&sim);
        cmd.arg("serve")
            .args(args)
            .arg("--socket")
            .arg(&socket)
            .arg("--ready")
            .arg(&ready_file)
            .arg("--state-dir")
            .arg(&state_dir)
            .env("HOME", &home)
            .stdin(Stdio::null())
            .stdout(log("sim.stdout.log"))
            .stderr(log("sim.stderr.log"));
        let command = describe(&cmd);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("could not start `{command}`: {e}"));
        let mut bench = Bench {
            child,
            dir,
            // Replaced below once the file is there.
            ready: Ready {
                socket: socket.clone(),
                devices: Vec::new(),
                state_dir: None,
                raw: Value::Null,
            },
        };
        bench.ready = bench.wait_ready(&command, &ready_file);
        assert_eq!(
            bench.ready.socket, socket,
            "the ready file names another socket than --socket: {}",
            bench.ready.raw
        );
        bench
    }

    #[track_caller]
    fn wait_ready(&mut self, command: &str, ready_file: &Path) -> Ready {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last_error = String::from("no ready file yet");
        loop {
            if let Ok(text) = std::fs::read_to_string(ready_file) {
                // The file may be caught half-written: retry until it parses.
                match Ready::parse(&text) {
                    Ok(ready) => return ready,
                    Err(e) => last_error = format!("ready file does not parse yet: {e}: {text}"),
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "`{command}` exited with {status} before writing its ready file\n{}",
                    self.logs()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "`{command}` wrote no usable ready file within {READY_TIMEOUT:?} ({last_error})\n{}",
                    self.logs()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The bench's temporary directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The private HOME every tool run against this bench gets (pair records of pymobiledevice3
    /// and friends land here, not in the real home).
    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    pub fn socket(&self) -> &Path {
        &self.ready.socket
    }

    /// `UNIX:<socket>`, the form libusbmuxd (and the station) read from `USBMUXD_SOCKET_ADDRESS`.
    pub fn libusbmuxd_address(&self) -> String {
        format!("UNIX:{}", self.socket().display())
    }

    /// The UDIDs of the phones plugged in when the bench became ready (a world can schedule
    /// later plug-ins: those are listed with `"attached": false`).
    pub fn udids(&self) -> BTreeSet<String> {
        self.ready
            .devices
            .iter()
            .filter(|d| d.raw.get("attached").and_then(Value::as_bool) != Some(false))
            .map(|d| d.udid.clone())
            .collect()
    }

    pub fn device(&self, udid: &str) -> &ReadyDevice {
        self.ready
            .devices
            .iter()
            .find(|d| d.udid == udid)
            .unwrap_or_else(|| panic!("no device {udid} in the ready file: {}", self.ready.raw))
    }

    /// The phone the world names `name` (its `device_name`; see [`fixtures::Phone`]).
    #[track_caller]
    pub fn device_named(&self, name: &str) -> &ReadyDevice {
        self.ready
            .devices
            .iter()
            .find(|d| d.name() == Some(name))
            .unwrap_or_else(|| {
                panic!(
                    "no phone named {name:?} in the ready file: {}",
                    self.ready.raw
                )
            })
    }

    /// The first phone that pairs without a trust prompt; fails the test when the world has none.
    #[track_caller]
    pub fn pairable_device(&self) -> &ReadyDevice {
        self.pairable_devices()
            .into_iter()
            .next()
            .unwrap_or_else(|| {
                panic!(
                    "no phone in the bench pairs without a trust prompt: {}",
                    self.ready.raw
                )
            })
    }

    /// Every attached phone that pairs without a trust prompt.
    pub fn pairable_devices(&self) -> Vec<&ReadyDevice> {
        let attached = self.udids();
        self.ready
            .devices
            .iter()
            .filter(|d| attached.contains(&d.udid) && d.pairs_without_prompt())
            .collect()
    }

    /// The simulator's stdout and stderr so far.
    pub fn logs(&self) -> String {
        let read =
            |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!(
            "--- station-sim stdout ---\n{}\n--- station-sim stderr ---\n{}\n--------------------------",
            read("sim.stdout.log").trim_end(),
            read("sim.stderr.log").trim_end()
        )
    }

    fn tool_command(&self, program: &Path, address: String) -> Command {
        let home = self.home();
        let mut cmd = scrubbed_command(program);
        cmd.env("USBMUXD_SOCKET_ADDRESS", address)
            .env("HOME", &home)
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("XDG_CACHE_HOME", home.join(".cache"))
            .env("XDG_DATA_HOME", home.join(".local/share"))
            .env("NO_COLOR", "1");
        cmd
    }

    /// A libimobiledevice tool (found on PATH) against this bench (`USBMUXD_SOCKET_ADDRESS=UNIX:<socket>`).
    #[track_caller]
    pub fn idevice(&self, tool: &str, args: &[&str]) -> Output {
        let mut cmd = self.tool_command(&require_tool(tool), self.libusbmuxd_address());
        cmd.args(args);
        self.annotate(run_with_timeout(cmd, TOOL_TIMEOUT))
    }

    /// pymobiledevice3 against this bench (`USBMUXD_SOCKET_ADDRESS=<bare socket path>`).
    #[track_caller]
    pub fn pmd3(&self, args: &[&str]) -> Output {
        let mut cmd = self.tool_command(&require_pmd3(), self.socket().display().to_string());
        cmd.arg("--no-color").args(args);
        self.annotate(run_with_timeout(cmd, PMD3_TIMEOUT))
    }

    /// A Python script run by pymobiledevice3's own interpreter (its virtualenv), with the
    /// same environment as [`Bench::pmd3`]: for library calls the command line does not offer.
    #[track_caller]
    pub fn pmd3_python(&self, script: &str, args: &[&str]) -> Output {
        let pmd3 = require_pmd3();
        let python = pmd3.with_file_name("python");
        assert!(
            is_executable(&python),
            "no python next to {}: run `scripts/test`",
            pmd3.display()
        );
        let mut cmd = self.tool_command(&python, self.socket().display().to_string());
        cmd.arg("-c").arg(script).args(args);
        self.annotate(run_with_timeout(cmd, PMD3_TIMEOUT))
    }

    /// The `station` binary against this bench (`USBMUXD_SOCKET_ADDRESS=UNIX:<socket>`, private HOME).
    #[track_caller]
    pub fn station(&self, args: &[&str]) -> Output {
        let home = self.home().display().to_string();
        let address = self.libusbmuxd_address();
        let data = self.station_data_dir().display().to_string();
        self.annotate(run_station(
            args,
            &[
                ("USBMUXD_SOCKET_ADDRESS", &address),
                ("HOME", &home),
                ("STATION_DATA_DIR", &data),
            ],
        ))
    }

    /// A long-running `station` command against this bench, not yet started (for
    /// [`inproc::StreamingStation::spawn`]): the bench's socket, the private HOME, its own data
    /// directory (`<bench dir>/station-data`) and an empty sysfs, so the machine's own USB
    /// devices stay out.
    pub fn station_command(&self, args: &[&str]) -> Command {
        let sysfs = self.dir().join("sysfs");
        std::fs::create_dir_all(&sysfs).expect("an empty sysfs for the station");
        let mut cmd = scrubbed_command(&workspace_bin("station"));
        cmd.args(args)
            .env("USBMUXD_SOCKET_ADDRESS", self.libusbmuxd_address())
            .env("HOME", self.home())
            .env_remove("STATION_CONFIG")
            .env_remove("RUST_LOG")
            .env("STATION_DATA_DIR", self.station_data_dir())
            .env("STATION_SYSFS_ROOT", sysfs)
            .env("NO_COLOR", "1");
        cmd
    }

    /// Where [`Bench::station`] and [`Bench::station_command`] keep the station's data.
    pub fn station_data_dir(&self) -> PathBuf {
        self.dir().join("station-data")
    }

    /// The station configuration the simulator wrote (`station_config` of the ready file).
    pub fn station_config(&self) -> PathBuf {
        self.ready
            .raw
            .get("station_config")
            .and_then(Value::as_str)
            .map(PathBuf::from)
            .unwrap_or_else(|| panic!("no `station_config` in the ready file: {}", self.ready.raw))
    }

    /// Sends a signal to the simulator (`"USR1"`: its usbmuxd goes away; `"USR2"`: back).
    #[track_caller]
    pub fn signal(&self, name: &str) {
        send_signal(&self.child, name);
    }

    /// Whether the simulator is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Appends the simulator's log to a failed command's stderr, so a failure shows both sides.
    fn annotate(&self, mut output: Output) -> Output {
        if !output.success() {
            output.stderr.push('\n');
            output.stderr.push_str(&self.logs());
        }
        output
    }

    /// The pair record the bench's usbmuxd holds for `udid` (`ReadPairRecord`), parsed.
    pub fn pair_record(&self, udid: &str) -> Option<plist::Dictionary> {
        let address = Address::Unix(self.socket().to_path_buf());
        let udid = udid.to_string();
        let bytes = block_on(async move {
            let stream = connect_address(&address, Duration::from_secs(5)).await?;
            UsbmuxClient::new(stream).read_pair_record(&udid).await
        })
        .unwrap_or_else(|e| panic!("ReadPairRecord on the bench failed: {e}"))?;
        let value = plist::Value::from_reader(std::io::Cursor::new(bytes))
            .unwrap_or_else(|e| panic!("the bench's pair record is not a plist: {e}"));
        Some(
            value
                .into_dictionary()
                .expect("the bench's pair record is a dictionary"),
        )
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

/// Runs a future to completion on a fresh single-threaded runtime (call from sync code only).
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(future)
}

// ---------------------------------------------------------------------------------------------
// Parsing tool output

/// `ideviceinfo`'s dump: top-level `Key: Value` lines (nested dictionaries and arrays, which
/// it prints indented, are left out).
/// The non-empty lines of a tool's output, trimmed (`idevice_id -l`: one UDID a line).
pub fn output_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

pub fn parse_ideviceinfo(text: &str) -> std::collections::BTreeMap<String, String> {
    text.lines()
        .filter(|line| !line.starts_with(char::is_whitespace))
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .filter(|(k, _)| !k.is_empty() && !k.contains(' '))
        .collect()
}

/// The first value under `key` anywhere in a JSON document (depth first).
pub fn json_find<'a>(value: &'a Value, key: &str) -> Option<&'a Value> {
    match value {
        Value::Object(map) => map
            .get(key)
            .or_else(|| map.values().find_map(|v| json_find(v, key))),
        Value::Array(items) => items.iter().find_map(|v| json_find(v, key)),
        _ => None,
    }
}

/// Every string anywhere in a JSON document.
pub fn json_strings(value: &Value) -> Vec<String> {
    match value {
        Value::String(s) => vec![s.clone()],
        Value::Object(map) => map.values().flat_map(json_strings).collect(),
        Value::Array(items) => items.iter().flat_map(json_strings).collect(),
        _ => vec![],
    }
}

/// A JSON value as plain text (`"x"` → `x`, numbers and booleans as printed).
pub fn json_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Opens a station's ledger in `data_dir` and checks it with `PRAGMA integrity_check`.
#[track_caller]
pub fn open_checked_ledger(data_dir: &Path) -> rusqlite::Connection {
    let path = data_dir.join("ledger.sqlite3");
    let conn = rusqlite::Connection::open(&path).expect("open the ledger");
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .expect("integrity_check");
    assert_eq!(
        integrity,
        "ok",
        "PRAGMA integrity_check of {}",
        path.display()
    );
    conn
}

/// Sends signal `name` (`"TERM"`, `"USR1"`, ...) to a child process through `kill`.
#[track_caller]
pub fn send_signal(child: &std::process::Child, name: &str) {
    let pid = child.id().to_string();
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{name} {pid}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_that_outlives_its_timeout_is_killed_and_fails_the_test() {
        let started = Instant::now();
        // The shell's child keeps the pipes open after the shell is killed: still no hang.
        let result = std::panic::catch_unwind(|| {
            let mut cmd = Command::new("sh");
            cmd.args(["-c", "echo started; sleep 30; true"]);
            run_with_timeout(cmd, Duration::from_millis(300))
        });
        let message = result
            .expect_err("a command past its timeout fails the test")
            .downcast::<String>()
            .map(|s| *s)
            .unwrap_or_default();
        assert!(message.contains("timed out"), "{message}");
        assert!(
            message.contains("started"),
            "what it printed is kept: {message}"
        );
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn output_and_status_are_captured() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo out; echo err >&2; exit 3"]);
        let out = run_with_timeout(cmd, TOOL_TIMEOUT);
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout, "out\n");
        assert_eq!(out.stderr, "err\n");
        assert!(!out.success());
    }

    #[test]
    fn ideviceinfo_dump_keeps_top_level_keys() {
        let dump = parse_ideviceinfo(
            "ActivationState: Unactivated\nSupportedDeviceFamilies[1]:\n 0: 1\nUniqueDeviceID: 00008030-001A2C3E0E90802E\n",
        );
        assert_eq!(
            dump.get("ActivationState").map(String::as_str),
            Some("Unactivated")
        );
        assert_eq!(
            dump.get("UniqueDeviceID").map(String::as_str),
            Some("00008030-001A2C3E0E90802E")
        );
        assert!(!dump.contains_key("0"));
    }

    #[test]
    fn leave_when_idle_ms_is_read_where_the_bench_sets_it() {
        let device = |extra: Value| {
            let mut entry = serde_json::json!({
                "udid": "u", "serial": "s", "product_type": "iPhone12,1", "product_version": "17.7",
                "activation_state": "Activated",
            });
            if let (Some(entry), Value::Object(extra)) = (entry.as_object_mut(), extra) {
                entry.extend(extra);
            }
            ReadyDevice::from_json(&entry).expect("a valid ready entry")
        };
        assert_eq!(device(serde_json::json!({})).leave_when_idle_ms(), None);
        assert_eq!(
            device(serde_json::json!({ "leave_when_idle_ms": 30000 })).leave_when_idle_ms(),
            Some(30000)
        );
    }

    #[test]
    fn pairable_means_setup_assistant_or_immediate_trust() {
        let device = |state: &str, trust: &str, delay: u64, locked: bool| {
            ReadyDevice::from_json(&serde_json::json!({
                "udid": "u", "serial": "s", "product_type": "iPhone12,1", "product_version": "17.7",
                "activation_state": state, "trust": trust, "trust_delay_ms": delay,
                "passcode_locked": locked,
            }))
            .expect("a valid ready entry")
        };
        assert!(device("Unactivated", "accept", 0, false).pairs_without_prompt());
        assert!(device("Activated", "accept", 0, false).pairs_without_prompt());
        assert!(!device("Activated", "accept", 2500, false).pairs_without_prompt());
        assert!(!device("Activated", "deny", 0, false).pairs_without_prompt());
        assert!(!device("Activated", "pending", 0, false).pairs_without_prompt());
        assert!(!device("Activated", "accept", 0, true).pairs_without_prompt());
    }
}
