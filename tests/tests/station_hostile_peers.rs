//! Hostile peers beyond usbmuxd (issue 13): the activation server, Graph (Intune) and Kandji
//! played by a peer on 127.0.0.1 that goes silent (after the accept, the request or the
//! headers: a TLS client meets the silent accept), drips, sends too much (announced or
//! chunked without end), breaks off, sends garbage or no HTTP, or answers only 503 / 429.
//! Every case must end in a named outcome or error within its time-out, with no panic and
//! the phone untouched by anything but the real workflow.
//!
//! The hostile phone is the sim's `[device.hostile]` (docs/world.md): lockdown and
//! mobileactivationd answering one request with an oversized or truncated frame, no plist,
//! the wrong plist types, silence, a drip, or silence after `StartSession` turned TLS on.

use std::path::Path;
use std::time::{Duration, Instant};

use station_sim::{ActivationState, ConfigSource};
use station_tests::fixtures::{self, Phone, CODE_A};
use station_tests::hostile::{Hostile, HostileServer};
use station_tests::inproc::InProcBench;
use station_tests::Output;

/// `[activation] timeout_secs` and `[retry] attempts` of the activation cases.
const ACTIVATION_TIMEOUT_S: u64 = 2;
const ATTEMPTS: u64 = 2;
/// The MDM sources' fixed per-request bound (`codes::MDM_REQUEST_TIMEOUT`).
const MDM_TIMEOUT_S: u64 = 30;
/// Process start, pairing and the phone's own steps on a loaded 2-core machine.
const SLACK: Duration = Duration::from_secs(20);

/// What the failure's message must say for each mode over plain HTTP: the cause, named.
fn expected_cause(mode: Hostile) -> &'static str {
    match mode {
        Hostile::SilentAfterAccept
        | Hostile::SilentAfterRequest
        | Hostile::SilentAfterHeaders
        | Hostile::SlowDrip => "operation timed out",
        Hostile::OversizedBody | Hostile::EndlessChunked => "sent more than 4194304 bytes",
        Hostile::TruncatedBody => "end of file before message length reached",
        Hostile::GarbageJson | Hostile::GarbageBytes => "answer",
        // hyper says "invalid HTTP version" or "unexpected message", by timing.
        Hostile::NotHttp => "unreachable at",
        Hostile::ServerError => "HTTP 503",
        Hostile::Throttled => "HTTP 429",
    }
}

fn name(mode: Hostile) -> String {
    format!("{mode:?}").to_lowercase()
}

struct Case {
    mode: Hostile,
    https: bool,
    out: Output,
    elapsed: Duration,
}

#[track_caller]
fn assert_no_panic(case: &Case) {
    assert!(
        !case.out.stderr.contains("panicked"),
        "{:?}: the station panicked: {}",
        case.mode,
        case.out
    );
}

fn write_config(f: &InProcBench, file: &str, text: &str) -> String {
    let path = f.path(file);
    std::fs::write(&path, text).expect("write config");
    path.to_str().expect("utf-8").to_string()
}

fn base_config(f: &InProcBench, data: &Path) -> String {
    format!(
        "[station]\nid = \"hostile\"\ndata_dir = \"{}\"\n\n[usbmuxd]\naddress = \"UNIX:{}\"\n\n",
        data.display(),
        f.socket().display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_activation_server_ends_in_server_error_in_time() {
    // One phone per mode, plus the TLS case (a silent peer behind an https URL).
    let mut modes: Vec<(Hostile, bool)> = Hostile::ALL.iter().map(|m| (*m, false)).collect();
    modes.push((Hostile::SilentAfterAccept, true));
    modes.push((Hostile::NotHttp, true));
    let phones: Vec<Phone> = (0..modes.len())
        .map(|i| Phone::unactivated(&format!("p{i}")))
        .collect();
    let f = InProcBench::start(&fixtures::world(31, &phones)).await;

    let mut runs = Vec::new();
    let mut servers = Vec::new();
    for (i, (mode, https)) in modes.iter().copied().enumerate() {
        let server = HostileServer::start(mode).await;
        let url = if https {
            server.https_url()
        } else {
            server.url.clone()
        };
        let config = format!(
            "{}[activation]\nurl = \"{url}\"\ntimeout_secs = {ACTIVATION_TIMEOUT_S}\n\n[retry]\nattempts = {ATTEMPTS}\ninitial_backoff_ms = 100\nmax_backoff_ms = 200\n",
            base_config(&f, &f.path(&format!("data{i}")))
        );
        let config = write_config(&f, &format!("activation-{i}.toml"), &config);
        let udid = f.udid(&format!("p{i}")).to_string();
        let cmd = f.station_command(
            &["--config", &config, "--json", "activate", "--udid", &udid],
            false,
        );
        servers.push(server);
        runs.push(tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let out = station_tests::run_with_timeout(cmd, Duration::from_secs(120));
            (mode, https, out, started.elapsed())
        }));
    }
    let mut cases = Vec::new();
    for run in runs {
        let (mode, https, out, elapsed) = run.await.expect("join");
        cases.push(Case {
            mode,
            https,
            out,
            elapsed,
        });
    }

    for (i, case) in cases.iter().enumerate() {
        assert_no_panic(case);
        let json: serde_json::Value = serde_json::from_str(case.out.stdout.trim())
            .unwrap_or_else(|e| panic!("{:?}: no JSON report ({e}): {}", case.mode, case.out));
        eprintln!(
            "activation {:<20} https={:<5} {:>6} ms exit {:?} outcome {} : {}",
            name(case.mode),
            case.https,
            case.elapsed.as_millis(),
            case.out.status.code(),
            json["outcome"],
            json["message"]
        );
        assert_eq!(
            json["outcome"], "server_error",
            "{:?} (https {}): {}",
            case.mode, case.https, case.out
        );
        assert_eq!(case.out.status.code(), Some(8), "{}", case.out);
        let message = json["message"].as_str().unwrap_or_default();
        let cause = match (case.https, case.mode) {
            (false, mode) => expected_cause(mode),
            (true, Hostile::NotHttp) => "received corrupt message",
            (true, _) => "operation timed out",
        };
        assert!(message.contains(cause), "{:?}: {message}", case.mode);
        // Each attempt is bounded by the time-out (the client's own retries included).
        let bound = Duration::from_secs(ATTEMPTS * ACTIVATION_TIMEOUT_S) + SLACK;
        assert!(
            case.elapsed < bound,
            "{:?}: {:?} is over {bound:?}",
            case.mode,
            case.elapsed
        );
        // The phone was not activated by anything a hostile server said.
        assert_eq!(
            f.bench
                .activation_state(f.udid(&format!("p{i}")))
                .expect("state"),
            ActivationState::Unactivated,
            "{:?}",
            case.mode
        );
    }
    for server in &servers {
        assert!(server.connections() >= 1, "the station never asked");
    }
}

/// Graph and Kandji played by the hostile peer: `station codes lookup` ends in
/// `codes-sources-failed`, naming the source and why, within the MDM time-out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_mdms_end_in_a_named_failure_in_time() {
    let f = InProcBench::start_with(
        &fixtures::world(32, &[Phone::mdm_locked("locked", &[CODE_A])]),
        |config| config.station_config_sources = vec![ConfigSource::Intune, ConfigSource::Kandji],
    )
    .await;
    let secrets = f.dir.path().join("state").join("secrets");
    let graph = f.bench.graph();
    let serial = f.serial("locked").to_string();
    let udid = f.udid("locked").to_string();

    let mut runs = Vec::new();
    let mut servers = Vec::new();
    for (i, mode) in Hostile::ALL.iter().copied().enumerate() {
        let server = HostileServer::start(mode).await;
        let data = f.path(&format!("mdm-data{i}"));
        let sources = [
            (
                "intune",
                format!(
                    "[[codes.sources]]\ntype = \"intune\"\ntenant = \"{}\"\nclient_id = \"{}\"\nclient_secret = {{ file = \"{}\" }}\ntoken_url = \"{}\"\ngraph_url = \"{}\"\n",
                    graph.tenant(),
                    graph.client_id(),
                    secrets.join("intune.secret").display(),
                    graph.token_url(),
                    server.url
                ),
            ),
            (
                "kandji",
                format!(
                    "[[codes.sources]]\ntype = \"kandji\"\napi_url = \"{}/\"\ntoken = {{ file = \"{}\" }}\n",
                    server.url,
                    secrets.join("kandji.token").display()
                ),
            ),
        ];
        for (kind, source) in sources {
            let config = format!(
                "{}[activation]\nurl = \"{}\"\n\n[retry]\nattempts = 1\ninitial_backoff_ms = 100\nmax_backoff_ms = 200\n\n{source}",
                base_config(&f, &data),
                f.bench.activation_url()
            );
            let config = write_config(&f, &format!("{kind}-{i}.toml"), &config);
            let cmd = f.station_command(
                &[
                    "--config", &config, "--json", "codes", "lookup", "--serial", &serial,
                    "--udid", &udid,
                ],
                false,
            );
            runs.push(tokio::task::spawn_blocking(move || {
                let started = Instant::now();
                let out = station_tests::run_with_timeout(cmd, Duration::from_secs(180));
                (kind, mode, out, started.elapsed())
            }));
        }
        servers.push(server);
    }
    for run in runs {
        let (kind, mode, out, elapsed) = run.await.expect("join");
        let case = Case {
            mode,
            https: false,
            out,
            elapsed,
        };
        assert_no_panic(&case);
        let stderr = case.out.stderr.trim();
        eprintln!(
            "{kind:<6} {:<20} {:>6} ms exit {:?}: {}",
            name(mode),
            elapsed.as_millis(),
            case.out.status.code(),
            stderr
                .lines()
                .find(|l| l.contains("error["))
                .unwrap_or_default()
        );
        assert_eq!(
            case.out.status.code(),
            Some(1),
            "{kind} {mode:?}: {}",
            case.out
        );
        assert!(
            stderr.contains("error[codes-sources-failed]"),
            "{kind} {mode:?}: {}",
            case.out
        );
        assert!(stderr.contains(kind), "{kind} {mode:?}: {stderr}");
        let cause = match mode {
            Hostile::GarbageJson | Hostile::GarbageBytes => "not JSON",
            mode => expected_cause(mode),
        };
        assert!(stderr.contains(cause), "{kind} {mode:?}: {stderr}");
        let bound = Duration::from_secs(MDM_TIMEOUT_S) + SLACK;
        assert!(
            elapsed < bound,
            "{kind} {mode:?}: {elapsed:?} is over {bound:?}"
        );
    }
}

/// `[station] timeout_secs` and `[activation] command_timeout_secs` of the hostile phones.
const PHONE_TIMEOUT_S: u64 = 2;

/// A hostile phone (the sim's `[device.hostile]`, docs/world.md): at one lockdown request or
/// mobileactivationd command it sends an oversized or truncated frame, no plist, the wrong
/// plist types, nothing, a reply dripped byte by byte, or takes the session and never does
/// the TLS handshake. `station activate` ends each in a named outcome within its time-out,
/// and the phone stays unactivated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_phone_ends_in_a_named_error_in_time() {
    // (request or command, how, the outcome, what the message must say)
    let cases: [(&str, &str, &str, &str); 14] = [
        (
            "QueryType",
            "oversized_frame",
            "device_error",
            "exceeds the 4194304-byte cap",
        ),
        (
            "QueryType",
            "truncated_frame",
            "device_error",
            "closed the connection",
        ),
        ("QueryType", "not_a_plist", "device_error", "invalid plist"),
        (
            "GetValue",
            "wrong_type",
            "device_error",
            "reply is not a dictionary",
        ),
        (
            "GetValue",
            "wrong_field_types",
            "device_error",
            "is not data",
        ),
        (
            "GetValue",
            "silent",
            "device_error",
            "did not answer within 2s",
        ),
        (
            "GetValue",
            "slow_drip",
            "device_error",
            "did not answer within 2s",
        ),
        (
            "StartSession",
            "silent_after_tls",
            "device_error",
            "did not finish the TLS handshake within 2s",
        ),
        (
            "StartSession",
            "wrong_field_types",
            "device_error",
            "no SessionID",
        ),
        (
            "CreateTunnel1SessionInfoRequest",
            "oversized_frame",
            "device_error",
            "exceeds the 4194304-byte cap",
        ),
        (
            "CreateTunnel1SessionInfoRequest",
            "wrong_field_types",
            "device_error",
            "did not answer a dictionary",
        ),
        (
            "CreateTunnel1ActivationInfoRequest",
            "silent",
            "device_error",
            "no answer to CreateTunnel1ActivationInfoRequest within 2 s",
        ),
        (
            "CreateTunnel1ActivationInfoRequest",
            "slow_drip",
            "device_error",
            "no answer to CreateTunnel1ActivationInfoRequest within 2 s",
        ),
        (
            "HandleActivationInfoWithSessionRequest",
            "truncated_frame",
            "device_error",
            "connection closed by peer",
        ),
    ];
    let phones: Vec<Phone> = cases
        .iter()
        .enumerate()
        .map(|(i, (at, how, _, _))| {
            Phone::unactivated(&format!("h{i}"))
                .with("hostile", &format!("{{ at = \"{at}\", how = \"{how}\" }}"))
        })
        .collect();
    let f = InProcBench::start(&fixtures::world(33, &phones)).await;
    let config = format!(
        "[station]\nid = \"hostile\"\ndata_dir = \"{}\"\ntimeout_secs = {PHONE_TIMEOUT_S}\n\n[usbmuxd]\naddress = \"UNIX:{}\"\n\n[activation]\nurl = \"{}\"\ncommand_timeout_secs = {PHONE_TIMEOUT_S}\n\n[retry]\nattempts = 2\ninitial_backoff_ms = 100\nmax_backoff_ms = 200\n",
        f.path("data").display(),
        f.socket().display(),
        f.bench.activation_url()
    );
    let config = write_config(&f, "phone.toml", &config);

    let mut runs = Vec::new();
    for (i, case) in cases.iter().copied().enumerate() {
        let udid = f.udid(&format!("h{i}")).to_string();
        let cmd = f.station_command(
            &["--config", &config, "--json", "activate", "--udid", &udid],
            false,
        );
        runs.push(tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let out = station_tests::run_with_timeout(cmd, Duration::from_secs(120));
            (i, case, out, started.elapsed())
        }));
    }
    for run in runs {
        let (i, (at, how, outcome, says), out, elapsed) = run.await.expect("join");
        assert!(!out.stderr.contains("panicked"), "{at} {how}: {out}");
        let json: serde_json::Value = serde_json::from_str(out.stdout.trim())
            .unwrap_or_else(|e| panic!("{at} {how}: no JSON report ({e}): {out}"));
        eprintln!(
            "phone {at:<40} {how:<18} {:>6} ms exit {:?} outcome {} step {} : {}",
            elapsed.as_millis(),
            out.status.code(),
            json["outcome"],
            json["step"],
            json["message"]
        );
        assert_eq!(json["outcome"], outcome, "{at} {how}: {out}");
        let message = json["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{at} {how}: {message}");
        // One command's bound per phone answer, a few answers, plus process start-up.
        let bound = Duration::from_secs(4 * PHONE_TIMEOUT_S) + SLACK;
        assert!(elapsed < bound, "{at} {how}: {elapsed:?} is over {bound:?}");
        assert_eq!(
            f.bench
                .activation_state(f.udid(&format!("h{i}")))
                .expect("state"),
            ActivationState::Unactivated,
            "{at} {how}"
        );
    }
}
