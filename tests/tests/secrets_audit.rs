//! One audit over everything the station writes or serves (docs/security.md): a whole
//! `station run` at trace level on the virtual bench, with codes from every source kind (CSV,
//! Intune with a secret and with a certificate, Kandji, a command hook), Intune's
//! `bypassActivationLock`, retries (throttling and 5xx from Graph, Kandji and Apple) and
//! failures (a rejected code, a failing hook, a personal lock, a phone nobody knows). Then every byte the station wrote or served is
//! searched — the run's stdout (NDJSON) and stderr (logs), every file of the data directory
//! (the ledger's raw bytes included), `station report` in every format, the `station watch`
//! stream, the live view, `station config check`, `station codes lookup`, and the hook's arguments and
//! environment — for every code (dashed, compact, lower case), the client secret, the Kandji
//! token, a fake secret in the station's environment, any JWT (tokens, the signed client
//! assertion) and private-key material.
//!
//! The live view (`--http`) is audited too: its whole `/events` stream, and its page,
//! assets, `/metrics` and `/healthz` fetched every 100 ms while the run goes on.
//!
//! A new output channel (a fleet database) joins [`Audit`] when it is added.

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use station_sim::{ConfigSource, Endpoint, MdmOutcome};
use station_tests::inproc::{ndjson, InProcBench};
use station_tests::web;

/// The phones. Codes not written here are drawn from the seed; the audit reads every code
/// of the world from the bench's ready information.
const WORLD: &str = r#"
seed = 31

[intune]
bypass_action = "refreshes_code"

# released by Intune.
[[device]]
device_name = "intune-released"
lock = "mdm"

# only in the CSV file, after a superseded code the server rejects.
[[device]]
device_name = "csv-only"
lock = "mdm"
intune = false
stale_codes = ["TF27L-31WN1-E6FH-DMAM-52X5-NFV0"]

# a Kandji device (its code as device_based_albc).
[[device]]
device_name = "kandji"
lock = "mdm"
kandji = true

# only the command hook knows it.
[[device]]
device_name = "hook-only"
lock = "mdm"
intune = false

# in Intune with a code Apple no longer takes: bypassActivationLock puts the current one on
# the record (the bench's Intune reads the action as "refreshes the code").
[[device]]
device_name = "action-released"
lock = "mdm"
stale_codes = ["PXH8M-QYJZA-2H1J-H9CV-HN5U-KDN7"]
enrollments = [{ code = "PXH8M-QYJZA-2H1J-H9CV-HN5U-KDN7" }]

# a personal Apple Account: nothing releases it.
[[device]]
device_name = "personal"
lock = "user"

# nobody gives its code; the hook fails on it with the code in its stderr.
[[device]]
device_name = "hook-fails"
lock = "mdm"
intune = false

# a clean phone.
[[device]]
device_name = "clean"
activation_state = "Unactivated"
"#;

const CSV_PHONE: &str = "csv-only";
const HOOK_PHONE: &str = "hook-only";
const HOOK_FAILS: &str = "hook-fails";
const KANDJI_PHONE: &str = "kandji";
const STALE: &str = "TF27L-31WN1-E6FH-DMAM-52X5-NFV0";

/// A value in the station's environment that nothing may pass on.
const FAKE_SECRET: &str = "fake-station-secret-7f3a9c21e4";
/// A variable the hook is allowed to see (`pass_env`).
const JAMF_URL: &str = "https://jamf.example.invalid/api";

// ---------------------------------------------------------------------------------------------
// The matcher

/// What must never appear, each with a label that says what it is without repeating it.
struct Needles {
    items: Vec<(String, Vec<u8>)>,
    /// Labels of needles that may appear in a given file (a private key in the identity
    /// file, which holds it at 0600).
    allowed_in: Vec<(String, String)>,
}

impl Needles {
    fn new() -> Needles {
        Needles {
            items: Vec::new(),
            allowed_in: Vec::new(),
        }
    }

    /// A bypass code in every form a leak could take: dashed, compact, and both in lower
    /// case.
    fn code(&mut self, label: &str, code: &str) {
        let compact = code.replace('-', "");
        for (form, text) in [
            ("dashed", code.to_string()),
            ("compact", compact.clone()),
            ("dashed lower case", code.to_lowercase()),
            ("compact lower case", compact.to_lowercase()),
        ] {
            self.items
                .push((format!("code {label} ({form})"), text.into_bytes()));
        }
    }

    fn secret(&mut self, label: &str, value: &str) {
        let value = value.trim();
        assert!(value.len() >= 8, "{label} is too short to search for");
        self.items
            .push((label.to_string(), value.as_bytes().to_vec()));
    }

    /// The labels of the needles found in `haystack` (a channel called `channel`).
    fn found_in(&self, channel: &str, haystack: &[u8]) -> Vec<String> {
        let mut found: Vec<String> = self
            .items
            .iter()
            .filter(|(_, needle)| contains(haystack, needle))
            .map(|(label, _)| label.clone())
            .collect();
        if let Some(at) = find_jwt(haystack) {
            found.push(format!("a JWT at byte {at}"));
        }
        if contains(haystack, b"PRIVATE KEY") {
            found.push("a PEM private key".into());
        }
        found.retain(|label| {
            !self
                .allowed_in
                .iter()
                .any(|(allowed, file)| allowed == label && channel.ends_with(file.as_str()))
        });
        found
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// A JWT: `eyJ` (base64url of `{"`), then header and payload in base64url, dot-separated.
fn find_jwt(haystack: &[u8]) -> Option<usize> {
    let base64url = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    (0..haystack.len()).find(|&start| {
        let Some(rest) = haystack.get(start..) else {
            return false;
        };
        if !rest.starts_with(b"eyJ") {
            return false;
        }
        let header = rest.iter().take_while(|b| base64url(**b)).count();
        let Some(after) = rest.get(header..) else {
            return false;
        };
        let payload = after
            .strip_prefix(b".")
            .map_or(0, |p| p.iter().take_while(|b| base64url(**b)).count());
        header >= 10 && payload >= 10
    })
}

/// Every channel's bytes, by name.
struct Audit {
    channels: Vec<(String, Vec<u8>)>,
}

impl Audit {
    fn add(&mut self, name: impl Into<String>, bytes: impl Into<Vec<u8>>) {
        self.channels.push((name.into(), bytes.into()));
    }

    fn add_file(&mut self, path: &Path) {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        self.add(path.display().to_string(), bytes);
    }

    /// Every regular file under `dir`, recursively.
    fn add_dir(&mut self, dir: &Path) {
        let mut stack = vec![dir.to_path_buf()];
        while let Some(dir) = stack.pop() {
            let entries =
                std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("list {}: {e}", dir.display()));
            for entry in entries {
                let path = entry.expect("dir entry").path();
                let kind = std::fs::symlink_metadata(&path)
                    .expect("metadata")
                    .file_type();
                if kind.is_dir() {
                    stack.push(path);
                } else if kind.is_file() {
                    self.add_file(&path);
                }
            }
        }
    }

    /// Panics naming every channel that shows a needle (never the needle itself).
    #[track_caller]
    fn assert_clean(&self, needles: &Needles) {
        let leaks: Vec<String> = self
            .channels
            .iter()
            .flat_map(|(channel, bytes)| {
                needles
                    .found_in(channel, bytes)
                    .into_iter()
                    .map(move |label| format!("{channel}: {label}"))
            })
            .collect();
        assert!(
            leaks.is_empty(),
            "secrets or codes leaked:\n{}",
            leaks.join("\n")
        );
    }
}

#[test]
fn the_matcher_finds_planted_codes_secrets_jwts_and_keys() {
    const CODE: &str = "3UM43-PUYVY-QYD1-UVCC-HEHJ-FKA4";
    let mut needles = Needles::new();
    needles.code("planted", CODE);
    needles.secret("client secret", "s3cr3t-value-0123");
    let clean = b"released by 3UM43-\xe2\x80\xa6-FKA4 (intune) \x00\x01 eyJ not a token";
    assert_eq!(needles.found_in("clean", clean), Vec::<String>::new());
    for (planted, label) in [
        (CODE.to_string(), "code planted (dashed)"),
        (CODE.replace('-', ""), "code planted (compact)"),
        (CODE.to_lowercase(), "code planted (dashed lower case)"),
        (
            CODE.replace('-', "").to_lowercase(),
            "code planted (compact lower case)",
        ),
        ("x=s3cr3t-value-0123;".to_string(), "client secret"),
    ] {
        let mut haystack = clean.to_vec();
        haystack.extend_from_slice(b"\x00binary\xff");
        haystack.extend_from_slice(planted.as_bytes());
        assert!(
            needles
                .found_in("planted", &haystack)
                .contains(&label.to_string()),
            "{label} not found"
        );
    }
    let jwt = b"Authorization: Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzdGF0aW9uIn0.c2ln";
    assert_eq!(find_jwt(jwt), Some(22));
    let key = b"-----BEGIN PRIVATE KEY-----\nMIIE";
    assert_eq!(needles.found_in("key", key), vec!["a PEM private key"]);
    // A needle allowed in one file is still found in every other.
    needles.secret("identity key", "MIIEvQIBADANBgkq");
    needles
        .allowed_in
        .push(("identity key".into(), "host-identity.plist".into()));
    assert!(needles
        .found_in("/d/host-identity.plist", b"MIIEvQIBADANBgkq")
        .is_empty());
    assert_eq!(
        needles.found_in("/d/ledger.sqlite3", b"MIIEvQIBADANBgkq"),
        vec!["identity key"]
    );
}

// ---------------------------------------------------------------------------------------------
// The bench

/// Every bypass code the world holds: locked phones' codes, superseded ones, and what the
/// MDM stand-ins hold (dashed strings of the ready information).
fn world_codes(bench: &InProcBench) -> Vec<String> {
    let info: Value = serde_json::from_str(&bench.bench.ready_info().to_json()).expect("ready");
    let mut codes = Vec::new();
    let mut stack = vec![&info];
    while let Some(value) = stack.pop() {
        match value {
            Value::String(text) if looks_like_code(text) => codes.push(text.to_uppercase()),
            Value::Array(items) => stack.extend(items),
            Value::Object(map) => stack.extend(map.values()),
            _ => {}
        }
    }
    codes.sort();
    codes.dedup();
    codes
}

/// `XXXXX-XXXXX-XXXX-XXXX-XXXX-XXXX`.
fn looks_like_code(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.iter().map(|g| g.len()).eq([5, 5, 4, 4, 4, 4])
        && groups
            .iter()
            .all(|g| g.chars().all(|c| c.is_ascii_alphanumeric()))
}

fn codes_of(bench: &InProcBench, phone: &str) -> Vec<String> {
    bench.bench.ready_info().devices[bench.index_of(phone)]
        .codes
        .clone()
}

/// The hook: dumps its arguments and its start-up environment (exactly as given, from
/// /proc) into the directory named by its first argument, then answers the hook phone's
/// code (compact, lower case: the station must accept it and never echo it), fails on
/// another phone with a code in its stderr, and knows no other phone.
fn write_hook(bench: &InProcBench) -> PathBuf {
    let serial = |phone: &str| bench.serial(phone).to_string();
    let hook_code = codes_of(bench, HOOK_PHONE)[0]
        .replace('-', "")
        .to_lowercase();
    let failing_code = codes_of(bench, HOOK_FAILS)[0].clone();
    let script = format!(
        r#"#!/bin/sh
n=$$
printf '%s\n' "$@" > "$1/args.$n"
tr '\000' '\n' < /proc/$$/environ > "$1/environ.$n"
case "$STATION_SERIAL" in
  {hook_serial}) echo '{{"codes": [{{"code": "{hook_code}", "kind": "device"}}]}}' ;;
  {failing_serial}) echo "jamf: lookup failed for {failing_code}" >&2; exit 1 ;;
  *) exit 0 ;;
esac
"#,
        hook_serial = serial(HOOK_PHONE),
        failing_serial = serial(HOOK_FAILS),
    );
    let path = bench.path("jamf-hook");
    std::fs::write(&path, script).expect("write hook");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    path
}

/// The bench's configuration with the Intune secret read from the environment, the action
/// on, two phones at once, quick retries, and a CSV and a hook source after the MDMs.
fn write_config(
    bench: &InProcBench,
    csv: &Path,
    hook: &Path,
    dump: &Path,
    (cert_file, key_file): (&Path, &Path),
) -> PathBuf {
    let graph = bench.bench.graph();
    let text = std::fs::read_to_string(bench.bench.station_config()).expect("bench config");
    let mut lines: Vec<String> = Vec::new();
    for line in text.lines() {
        if line.starts_with("client_secret") {
            lines.push("client_secret = { env = \"STATION_INTUNE_SECRET\" }".into());
        } else if line == "bypass_action = false" {
            lines.push("bypass_action = true".into());
            lines.push("bypass_action_wait_secs = 1".into());
        } else {
            lines.push(line.to_string());
            if line == "[station]" {
                lines.push("concurrency = 2".into());
            }
        }
    }
    let mut text = lines.join("\n");
    text.push_str(&format!(
        "\n\n[retry]\nattempts = 4\ninitial_backoff_ms = 100\nmax_backoff_ms = 400\n\n\
         [[codes.sources]]\ntype = \"csv\"\npath = {csv:?}\n\n\
         [[codes.sources]]\ntype = \"command\"\nname = \"jamf\"\nprogram = {hook:?}\n\
         args = [{dump:?}, \"--format\", \"json\"]\n\
         pass_env = [\"JAMF_URL\", \"STATION_INTUNE_SECRET\"]\n\n\
         [[codes.sources]]\ntype = \"intune\"\nname = \"intune-cert\"\ntenant = {tenant:?}\n\
         client_id = {client_id:?}\n\
         certificate = {{ cert_file = {cert_file:?}, key_file = {key_file:?} }}\n\
         token_url = {token_url:?}\ngraph_url = {graph_url:?}\n",
        tenant = graph.tenant(),
        client_id = graph.client_id(),
        cert_file = cert_file.display().to_string(),
        key_file = key_file.display().to_string(),
        token_url = graph.token_url(),
        graph_url = graph.url(),
        csv = csv.display().to_string(),
        hook = hook.display().to_string(),
        dump = dump.display().to_string(),
    ));
    let path = bench.path("station-audit.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// What the station is started with: the bench's environment, the Intune secret as a
/// variable, a fake secret and a variable the hook may see.
fn station(bench: &InProcBench, secret: &str, args: &[&str]) -> Command {
    let mut cmd = bench.station_command(args, true);
    cmd.env("STATION_INTUNE_SECRET", secret)
        .env("STATION_FAKE_SECRET", FAKE_SECRET)
        .env("JAMF_URL", JAMF_URL)
        .env("LC_TIME", "C");
    cmd
}

/// Runs `cmd` to the end (bounded), stdout and stderr into files; their bytes and status.
fn run_to_files(
    mut cmd: Command,
    out: &Path,
    err: &Path,
    timeout: Duration,
) -> (Vec<u8>, Vec<u8>, i32) {
    cmd.stdin(Stdio::null())
        .stdout(File::create(out).expect("stdout file"))
        .stderr(File::create(err).expect("stderr file"));
    let mut child = cmd.spawn().expect("spawn station");
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "station did not finish in {timeout:?}; stderr ends:\n{}",
                tail(&std::fs::read(err).unwrap_or_default())
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        std::fs::read(out).expect("stdout"),
        std::fs::read(err).expect("stderr"),
        status.code().unwrap_or(-1),
    )
}

fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_the_station_writes_or_serves_holds_a_code_or_a_secret() {
    let bench = InProcBench::start_with(WORLD, |config| {
        config.station_config_sources = vec![ConfigSource::Intune, ConfigSource::Kandji];
    })
    .await;
    let state = bench.path("state").join("secrets");
    let client_secret = std::fs::read_to_string(state.join("intune.secret")).expect("secret");
    let kandji_token = std::fs::read_to_string(state.join("kandji.token")).expect("token");

    let dump = bench.path("hook-dump");
    std::fs::create_dir_all(&dump).expect("dump dir");
    let hook = write_hook(&bench);
    let csv_code = codes_of(&bench, CSV_PHONE)[0].clone();
    // The superseded code first, in lower case: rejected, then the good one.
    let csv = bench.codes_csv(
        "codes.csv",
        &[
            (CSV_PHONE, &STALE.to_lowercase(), "device"),
            (CSV_PHONE, &csv_code, "device"),
        ],
    );
    // A second Intune source signs its token requests with a certificate's private key.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("RSA key");
    let cert = rcgen::CertificateParams::new(vec!["station".to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("certificate");
    bench
        .bench
        .graph()
        .add_certificate_pem(&cert.pem())
        .expect("the stand-in takes the certificate");
    let (cert_file, key_file) = (bench.path("intune.pem"), bench.path("intune.key"));
    std::fs::write(&cert_file, cert.pem()).expect("write cert");
    std::fs::write(&key_file, key.serialize_pem()).expect("write key");
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let config = write_config(&bench, &csv, &hook, &dump, (&cert_file, &key_file));
    let config = config.to_str().expect("utf-8").to_string();
    let out_dir = bench.path("out");
    std::fs::create_dir_all(&out_dir).expect("out dir");

    // Retries everywhere: Graph throttles and fails, Kandji fails, Apple fails a handshake;
    // slow answers keep the run live long enough for the watchers.
    let graph = bench.bench.graph();
    graph.set_throttle_next(1, Duration::from_secs(1));
    graph.set_fail_next(1);
    graph.set_token_fail_next(1);
    bench.bench.kandji().set_fail_next(1);
    bench.bench.albert().set_failures(Endpoint::DrmHandshake, 1);
    bench.bench.albert().set_latency(Duration::from_millis(250));

    // The line, at trace level, with two watchers attached through the socket.
    let run = station(
        &bench,
        &client_secret,
        &[
            "--config",
            &config,
            "--json",
            "-vvv",
            "run",
            "--once",
            "--http",
            "127.0.0.1:0",
        ],
    );
    let run_out = out_dir.join("run.stdout");
    let run_err = out_dir.join("run.stderr");
    let runner = std::thread::spawn({
        let (run_out, run_err) = (run_out.clone(), run_err.clone());
        move || run_to_files(run, &run_out, &run_err, Duration::from_secs(240))
    });
    let socket = bench.path("data").join("station.sock");
    let waited = Instant::now();
    while !socket.exists() && !runner.is_finished() {
        assert!(waited.elapsed() < Duration::from_secs(60), "no socket");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The live view: its /events stream read whole, and every page and number it serves
    // fetched again and again while the run goes on.
    let base = loop {
        let err = std::fs::read_to_string(&run_err).unwrap_or_default();
        if let Some(url) = web::live_view_url(&err) {
            break url;
        }
        assert!(
            !runner.is_finished() && waited.elapsed() < Duration::from_secs(60),
            "no live-view address on stderr"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let live_events = std::thread::spawn({
        let base = base.clone();
        move || web::read_events(&base, Duration::from_secs(240), |_| false)
    });
    let live_pages = std::thread::spawn({
        let base = base.clone();
        move || {
            let mut served: Vec<(String, Vec<u8>)> = Vec::new();
            'polling: loop {
                for path in [
                    "/", "/app.js", "/app.css", "/metrics", "/healthz", "/nothing",
                ] {
                    match web::try_request(&base, "GET", path, None) {
                        Ok(answer) => served.push((path.to_string(), answer.body)),
                        // The run is over: the view went with it.
                        Err(_) => break 'polling,
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            served
        }
    });
    let mut watchers = Vec::new();
    for (name, json) in [("watch-json", true), ("watch-screen", false)] {
        let mut args = vec!["--config", config.as_str()];
        if json {
            args.push("--json");
        }
        args.push("watch");
        let cmd = station(&bench, &client_secret, &args);
        let (out, err) = (
            out_dir.join(format!("{name}.stdout")),
            out_dir.join(format!("{name}.stderr")),
        );
        watchers.push((
            name,
            std::thread::spawn(move || run_to_files(cmd, &out, &err, Duration::from_secs(240))),
        ));
    }
    let (stdout, stderr, status) = runner.join().expect("run thread");
    let events = ndjson(&String::from_utf8_lossy(&stdout));
    assert_eq!(
        status,
        1,
        "some phones need attention; stderr:\n{}",
        tail(&stderr)
    );
    assert!(
        String::from_utf8_lossy(&stderr).contains("TRACE"),
        "not at trace level"
    );

    // The bench did what the audit is about: every source kind released a phone, the
    // action ran, codes were rejected and retried, phones failed.
    let finished: Vec<&Value> = events.iter().filter(|e| e["event"] == "finished").collect();
    let phones: std::collections::BTreeSet<&str> = finished
        .iter()
        .filter_map(|e| e["serial"].as_str())
        .collect();
    assert_eq!(phones.len(), 8, "{events:#?}");
    let released_by: Vec<String> = finished
        .iter()
        .filter_map(|e| e["released_by"]["source"].as_str().map(str::to_string))
        .collect();
    for source in ["intune", "kandji", "csv", "jamf"] {
        assert!(
            released_by
                .iter()
                .any(|s| s == source || (source == "intune" && s == "intune-cert")),
            "no phone released by {source}: {released_by:?}\n{events:#?}"
        );
    }
    let outcome = |phone: &str| {
        finished
            .iter()
            .rev()
            .find(|e| e["serial"] == bench.serial(phone))
            .map(|e| e["outcome"].as_str().unwrap_or_default().to_string())
            .unwrap_or_default()
    };
    assert_eq!(
        outcome("action-released"),
        "activated",
        "the action released it: {events:#?}"
    );
    assert_eq!(outcome("personal"), "user_locked", "{events:#?}");
    assert_ne!(outcome(HOOK_FAILS), "activated", "{events:#?}");
    let actions = graph
        .graph_requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/bypassActivationLock"))
        .count();
    assert_eq!(actions, 1, "one bypassActivationLock");
    let outcomes: Vec<MdmOutcome> = graph
        .requests()
        .into_iter()
        .chain(bench.bench.kandji().requests())
        .map(|r| r.outcome)
        .collect();
    assert!(
        outcomes.contains(&MdmOutcome::Throttled { early: false })
            && outcomes
                .iter()
                .filter(|o| **o == MdmOutcome::InjectedFailure)
                .count()
                >= 3,
        "the MDMs' retries were not exercised: {outcomes:?}"
    );
    let log = String::from_utf8_lossy(&stderr);
    assert!(
        log.contains("(stderr withheld: it may hold a code)"),
        "the failing hook was not run or its stderr was shown"
    );
    assert!(
        log.contains("pass_env lists STATION_INTUNE_SECRET"),
        "the withheld pass_env name is not warned about at start"
    );

    let mut audit = Audit {
        channels: Vec::new(),
    };
    audit.add("run stdout (NDJSON)", stdout);
    audit.add("run stderr (trace log)", stderr);
    for (name, watcher) in watchers {
        let (out, err, status) = watcher.join().expect("watch thread");
        if name == "watch-json" {
            assert_eq!(status, 0, "the JSON watcher got the whole run");
            let seen = ndjson(&String::from_utf8_lossy(&out));
            assert_eq!(seen.len(), events.len(), "the watcher saw the whole run");
        }
        audit.add(format!("{name} stdout"), out);
        audit.add(format!("{name} stderr"), err);
    }

    let (messages, stream_bytes) = live_events.join().expect("/events reader");
    assert!(
        messages
            .iter()
            .any(|m| m.event == "message" && m.data.contains("\"event\":\"summary\"")),
        "/events carried the run to its summary"
    );
    assert!(
        messages
            .iter()
            .any(|m| m.data.contains("\"event\":\"code_lookup\"")),
        "/events carried the code look-ups"
    );
    audit.add("live view /events", stream_bytes);
    let served = live_pages.join().expect("live view poller");
    let metrics_fetched = served.iter().filter(|(path, _)| path == "/metrics").count();
    assert!(
        metrics_fetched >= 3,
        "/metrics fetched {metrics_fetched} times"
    );
    assert!(
        served.iter().any(|(path, body)| path == "/metrics"
            && String::from_utf8_lossy(body).contains("station_code_lookups_total{")),
        "/metrics counted code look-ups while the run was on"
    );
    for (index, (path, body)) in served.into_iter().enumerate() {
        audit.add(format!("live view {path} (fetch {index})"), body);
    }

    // Everything the station reads back or prints afterwards.
    let after = |args: &[&str]| {
        let mut full = vec!["--config", config.as_str(), "-vvv"];
        full.extend_from_slice(args);
        station(&bench, &client_secret, &full)
    };
    let mut commands: Vec<(String, Command)> = Vec::new();
    for format in ["table", "csv", "json"] {
        let extras: [&[&str]; 3] = [&[], &["--locked"], &["--latest"]];
        for extra in extras {
            let mut args = vec!["report", "--format", format];
            args.extend_from_slice(extra);
            commands.push((args.join(" "), after(&args)));
        }
    }
    commands.push(("--json report".into(), after(&["--json", "report"])));
    commands.push(("config check".into(), after(&["config", "check"])));
    commands.push((
        "--json config check".into(),
        after(&["--json", "config", "check"]),
    ));
    for phone in [CSV_PHONE, HOOK_PHONE, HOOK_FAILS, KANDJI_PHONE] {
        let (serial, udid) = (
            bench.serial(phone).to_string(),
            bench.udid(phone).to_string(),
        );
        for json in [true, false] {
            let mut args = vec!["codes", "lookup", "--serial", &serial, "--udid", &udid];
            if json {
                args.insert(0, "--json");
            }
            commands.push((format!("{} ({phone})", args.join(" ")), after(&args)));
        }
    }
    for (index, (name, cmd)) in commands.into_iter().enumerate() {
        let (out, err, status) = tokio::task::spawn_blocking({
            let (o, e) = (
                out_dir.join(format!("{index}.stdout")),
                out_dir.join(format!("{index}.stderr")),
            );
            move || run_to_files(cmd, &o, &e, Duration::from_secs(60))
        })
        .await
        .expect("join");
        assert!(
            !out.is_empty() || !err.is_empty(),
            "`{name}` printed nothing (exit {status})"
        );
        if name.starts_with("report") || name.contains("config check") {
            assert_eq!(status, 0, "`{name}`: {}", tail(&err));
        }
        audit.add(format!("`station {name}` stdout"), out);
        audit.add(format!("`station {name}` stderr"), err);
    }

    // Every file the station keeps: the ledger (raw bytes, -wal and -shm too), its lock,
    // the pairing identity.
    let data = bench.path("data");
    audit.add_dir(&data);
    assert!(
        audit
            .channels
            .iter()
            .any(|(name, bytes)| name.ends_with("ledger.sqlite3") && !bytes.is_empty()),
        "no ledger in {}",
        data.display()
    );

    // The hook's arguments and environment, every time it ran.
    let dumps: Vec<PathBuf> = std::fs::read_dir(&dump)
        .expect("dump dir")
        .map(|e| e.expect("entry").path())
        .collect();
    let environs: Vec<&PathBuf> = dumps
        .iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("environ."))
        })
        .collect();
    assert!(
        environs.len() >= 8,
        "the hook ran for every locked phone: {dumps:?}"
    );
    for environ in &environs {
        let text = std::fs::read_to_string(environ).expect("environ");
        if text.is_empty() {
            continue; // a look-up dropped (a clean phone) killed the hook before its dump
        }
        let mut names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.split_once('=').map(|(k, _)| k))
            .collect();
        names.sort_unstable();
        let allowed = [
            "HOME",
            "JAMF_URL",
            "LC_TIME",
            "PATH",
            "STATION_SERIAL",
            "STATION_SOURCE_NAME",
            "STATION_UDID",
        ];
        let extra: Vec<&&str> = names
            .iter()
            .filter(|n| {
                !allowed.contains(n) && !["LANG", "TZ"].contains(n) && !n.starts_with("LC_")
            })
            .collect();
        assert!(extra.is_empty(), "the hook saw {extra:?}");
        for wanted in [
            "PATH",
            "HOME",
            "JAMF_URL",
            "LC_TIME",
            "STATION_SERIAL",
            "STATION_UDID",
        ] {
            assert!(
                names.contains(&wanted),
                "the hook did not get {wanted}: {names:?}"
            );
        }
        assert!(text.contains(&format!("JAMF_URL={JAMF_URL}\n")), "{text}");
        assert!(text.contains("STATION_SOURCE_NAME=jamf\n"), "{text}");
    }
    for path in &dumps {
        audit.add_file(path);
    }

    // What must never appear.
    let mut needles = Needles::new();
    let codes = world_codes(&bench);
    assert!(codes.len() >= 6, "{codes:?}");
    assert!(codes.iter().any(|c| c == STALE), "{codes:?}");
    for (index, code) in codes.iter().enumerate() {
        needles.code(&format!("#{index} of the world"), code);
    }
    needles.secret("the Intune client secret", &client_secret);
    needles.secret("the Kandji token", &kandji_token);
    needles.secret("the fake secret in the station's environment", FAKE_SECRET);
    for (index, line) in key.serialize_pem().lines().skip(1).take(3).enumerate() {
        needles.secret(
            &format!("the Intune certificate's private key (line {index})"),
            line,
        );
    }
    assert!(
        graph
            .token_requests()
            .iter()
            .any(|r| r.fields.iter().any(|f| f == "client_assertion")),
        "the certificate source signed a client assertion"
    );
    // The pairing identity's private keys: only in their own 0600 file.
    let identity = plist::Value::from_file(data.join("host-identity.plist")).expect("identity");
    for key in ["RootPrivateKey", "HostPrivateKey"] {
        let pem = identity
            .as_dictionary()
            .and_then(|d| d.get(key))
            .and_then(plist::Value::as_data)
            .map(|d| String::from_utf8_lossy(d).into_owned())
            .expect("a PEM key");
        let body = pem.lines().nth(1).expect("a key line").to_string();
        let label = format!("the identity's {key}");
        needles.secret(&label, &body);
        needles
            .allowed_in
            .push((label, "host-identity.plist".into()));
    }

    // The search can fail: the inputs the test wrote hold the codes it looks for.
    let planted = needles.found_in("codes.csv", &std::fs::read(&csv).expect("csv"));
    assert!(
        planted.iter().any(|l| l.contains("(dashed)")),
        "{planted:?}"
    );
    assert!(
        planted.iter().any(|l| l.contains("(dashed lower case)")),
        "{planted:?}"
    );
    let planted = needles.found_in("hook", &std::fs::read(&hook).expect("hook"));
    assert!(
        planted.iter().any(|l| l.contains("(compact lower case)")),
        "{planted:?}"
    );

    assert!(
        audit.channels.len() > 40,
        "{} channels",
        audit.channels.len()
    );
    audit.assert_clean(&needles);
}

#[test]
fn plain_http_to_another_host_is_refused_unless_allowed_and_then_warned_at_start() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let data = data.to_str().expect("utf-8");
    let write = |name: &str, activation: &str| {
        let path = dir.path().join(name);
        let text = format!(
            "[usbmuxd]\naddress = \"UNIX:{}\"\n\n[activation]\n{activation}\n",
            dir.path().join("no-usbmuxd.sock").display()
        );
        std::fs::write(&path, text).expect("config");
        path.to_str().expect("utf-8").to_string()
    };
    let refused = write("refused.toml", "url = \"http://albert.example.invalid\"");
    for args in [
        vec!["--config", &refused, "--data-dir", data, "config", "check"],
        vec!["--config", &refused, "--data-dir", data, "run", "--once"],
    ] {
        let out = station_tests::run_station(&args, &[]);
        assert_eq!(out.status.code(), Some(2), "{out}");
        assert!(
            out.combined()
                .contains("activation.url is plain http:// to albert.example.invalid"),
            "{out}"
        );
    }
    // A URL on the command line replaces the checked one: it is held to the same rule,
    // before any phone is touched.
    let https = write("https.toml", "url = \"https://albert.example.invalid\"");
    for env in [
        &[][..],
        &[("STATION_ACTIVATION_URL", "http://albert.example.invalid")][..],
    ] {
        let mut args = vec![
            "--config",
            &https,
            "--data-dir",
            data,
            "activate",
            "--udid",
            "00008030-000A1B2C3D4E5F60",
        ];
        if env.is_empty() {
            args.extend(["--activation-url", "http://albert.example.invalid"]);
        }
        let out = station_tests::run_station(&args, env);
        assert!(
            out.stderr.contains("error[activation-url]")
                && out
                    .stderr
                    .contains("--activation-url is plain http:// to albert.example.invalid"),
            "{out}"
        );
    }
    // Loopback: the virtual bench's stand-ins.
    let local = write("local.toml", "url = \"http://127.0.0.1:9/deviceservices\"");
    let out = station_tests::run_station(
        &["--config", &local, "--data-dir", data, "config", "check"],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{out}");
    assert!(!out.combined().contains("plain http"), "{out}");
    // Allowed: the check prints the warning and the run logs it before it starts.
    let allowed = write(
        "allowed.toml",
        "url = \"http://albert.example.invalid\"\nallow_insecure_http = true",
    );
    let out = station_tests::run_station(
        &["--config", &allowed, "--data-dir", data, "config", "check"],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{out}");
    assert!(
        out.stdout.contains("warning: ")
            && out
                .stdout
                .contains("activation.url is plain http:// to albert.example.invalid")
            && out.stdout.contains("allowed by allow_insecure_http = true"),
        "{out}"
    );
    let out = station_tests::run_station(
        &["--config", &allowed, "--data-dir", data, "run", "--once"],
        &[],
    );
    assert_eq!(out.status.code(), Some(3), "usbmuxd is not running: {out}");
    assert!(
        out.stderr
            .contains("activation.url is plain http:// to albert.example.invalid"),
        "{out}"
    );
}
