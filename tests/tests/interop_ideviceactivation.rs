//! libideviceactivation's `ideviceactivation`, unchanged, against the bench: clean phones on
//! iOS 9.3 (activation info without a session) and on iOS 10 and later (session mode), an
//! MDM-locked one answered with a blank Apple ID and its bypass code, a user-locked one it
//! cannot open, an activated one.
//!
//! Opt-in: Debian does not package libideviceactivation and CI reaches only package
//! registries, so these run when `STATION_IDEVICEACTIVATION` names a built `ideviceactivation`
//! (docs/testing.md says how to build one with scripts/build-ideviceactivation) and are
//! skipped with a printed reason otherwise.
//!
//! How the tool reaches the bench:
//! - usbmuxd: `USBMUXD_SOCKET_ADDRESS=UNIX:<socket>`, as for libimobiledevice's tools;
//! - Albert: through the bench's proxy (`https_proxy=<albert_proxy>`, read by libcurl). Its
//!   `-s URL` cannot be used: it sends the drmHandshake to that same URL, and posts the lock
//!   form's answer to the hard-coded `https://albert.apple.com/…/deviceActivation` whatever
//!   `-s` says (docs/protocol.md §5.6);
//! - the lock form's fields are asked on a terminal only (it checks `isatty` on stdin and
//!   stdout), so it runs under util-linux `script` with the pseudo-terminal's echo off and
//!   gets each answer once its prompt is shown, as an operator would type it.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use station_sim::{AlbertOutcome, Endpoint};
use station_tests::fixtures::{self, Phone, CODE_A, CODE_A_MASKED, CODE_B};
use station_tests::inproc::InProcBench;
use station_tests::require_tool;

/// One run of the tool: start-up, two lockdown sessions, two or three HTTP round trips.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// [`CODE_B`] as the stand-in's log masks it.
const CODE_B_MASKED: &str = "8LNYD-\u{2026}-CT86";
/// The User-Agent libideviceactivation sends since commit 75505b7 (docs/protocol.md §5.4).
const USER_AGENT: &str = "iOS Device Activator (MobileActivation-592.103.2)";

/// The tool named by `STATION_IDEVICEACTIVATION`, or `None` (the test is skipped, saying why).
fn ideviceactivation(test: &str) -> Option<PathBuf> {
    match std::env::var_os("STATION_IDEVICEACTIVATION") {
        Some(path) if !path.is_empty() => {
            let path = PathBuf::from(path);
            assert!(
                path.is_file(),
                "STATION_IDEVICEACTIVATION={} does not name a file",
                path.display()
            );
            Some(path)
        }
        _ => {
            println!(
                "skipped {test}: STATION_IDEVICEACTIVATION is not set (build the tool with \
                 scripts/build-ideviceactivation, see docs/testing.md)"
            );
            None
        }
    }
}

/// What a run on the terminal printed (stdout and stderr share the terminal) and how it ended.
#[derive(Debug)]
struct TerminalRun {
    command: String,
    code: Option<i32>,
    screen: String,
}

impl TerminalRun {
    fn success(&self) -> bool {
        self.code == Some(0)
    }
}

impl std::fmt::Display for TerminalRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` exited with {:?}\n--- terminal ---\n{}\n----------------",
            self.command,
            self.code,
            self.screen.trim_end()
        )
    }
}

fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// Runs `tool ARGS` on a pseudo-terminal against `bench`, typing each answer (and Enter)
/// once its prompt has appeared, in order. Killed after [`RUN_TIMEOUT`].
fn run_on_terminal(
    bench: &InProcBench,
    tool: &Path,
    args: &[&str],
    answers: &[(&str, &str)],
) -> TerminalRun {
    let command = std::iter::once(tool.display().to_string())
        .chain(args.iter().map(|a| a.to_string()))
        .map(|w| shell_quote(&w))
        .collect::<Vec<_>>()
        .join(" ");
    let proxy = bench.bench.albert_proxy().url();
    let mut cmd = Command::new(require_tool("script"));
    // -E never: the terminal does not echo what is typed (the code stays off the screen).
    cmd.args(["-q", "-e", "-E", "never", "-c", &command, "/dev/null"])
        .env(
            "USBMUXD_SOCKET_ADDRESS",
            format!("UNIX:{}", bench.socket().display()),
        )
        .env("HOME", bench.dir.path())
        .env("SHELL", "/bin/sh")
        .env("https_proxy", &proxy)
        .env("HTTPS_PROXY", &proxy);
    for var in [
        "no_proxy",
        "NO_PROXY",
        "all_proxy",
        "ALL_PROXY",
        "http_proxy",
    ] {
        cmd.env_remove(var);
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("could not start `script -c {command}`: {e}"));
    let screen = Arc::new(Mutex::new(Vec::<u8>::new()));
    let mut readers = Vec::new();
    for pipe in [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let screen = Arc::clone(&screen);
        readers.push(std::thread::spawn(move || {
            let mut pipe = pipe;
            let mut chunk = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                if let Ok(mut s) = screen.lock() {
                    s.extend_from_slice(&chunk[..n]);
                }
            }
        }));
    }
    let text = |screen: &Arc<Mutex<Vec<u8>>>| {
        screen
            .lock()
            .map(|s| String::from_utf8_lossy(&s).into_owned())
            .unwrap_or_default()
    };
    let mut stdin = child.stdin.take();
    let mut pending = answers.iter();
    let mut next = pending.next();
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        if let Some((prompt, answer)) = next {
            if text(&screen).contains(prompt) {
                if let Some(stdin) = stdin.as_mut() {
                    stdin
                        .write_all(format!("{answer}\n").as_bytes())
                        .and_then(|()| stdin.flush())
                        .unwrap_or_else(|e| panic!("typing into `{command}`: {e}"));
                }
                next = pending.next();
            }
        }
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("waiting for `{command}`: {e}"),
        }
    };
    drop(stdin);
    for reader in readers {
        let _ = reader.join();
    }
    let run = TerminalRun {
        command,
        code: status.and_then(|s| s.code()),
        screen: text(&screen),
    };
    assert!(
        status.is_some(),
        "timed out after {RUN_TIMEOUT:?} and was killed: {run}"
    );
    run
}

/// `ideviceactivation -u UDID activate` for the phone named `phone`.
async fn activate(
    bench: &Arc<InProcBench>,
    tool: &Path,
    phone: &str,
    answers: &'static [(&'static str, &'static str)],
) -> TerminalRun {
    let (bench, tool, udid) = (
        Arc::clone(bench),
        tool.to_path_buf(),
        bench.udid(phone).to_string(),
    );
    tokio::task::spawn_blocking(move || {
        run_on_terminal(&bench, &tool, &["-u", &udid, "activate"], answers)
    })
    .await
    .expect("join")
}

/// The tool went the session way through the proxy to the stand-in: one drmHandshake as an
/// XML plist, then `activation-info` as multipart, both with libideviceactivation's
/// User-Agent.
fn assert_session_requests(bench: &InProcBench, phone: &str, run: &TerminalRun) {
    let handshakes = bench.albert_requests(phone, Endpoint::DrmHandshake);
    assert_eq!(handshakes.len(), 1, "{handshakes:?}\n{run}");
    assert_eq!(
        handshakes[0].outcome,
        AlbertOutcome::HandshakeReply,
        "{run}"
    );
    assert_eq!(
        handshakes[0].content_type.as_deref(),
        Some("application/x-apple-plist")
    );
    let first = bench
        .albert_requests(phone, Endpoint::DeviceActivation)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no deviceActivation request for {phone}: {run}"));
    assert!(
        first
            .content_type
            .as_deref()
            .is_some_and(|ct| ct.starts_with("multipart/form-data")),
        "{first:?}"
    );
    assert_eq!(
        first.fields.first().map(String::as_str),
        Some("activation-info")
    );
    for request in handshakes.iter().chain([&first]) {
        assert_eq!(
            request.user_agent.as_deref(),
            Some(USER_AGENT),
            "{request:?}"
        );
    }
}

const CLEAN: &str = "clean";
const CLEAN_IOS_10: &str = "clean-ios10";
const CLEAN_IOS_9: &str = "clean-ios9";
const MDM: &str = "mdm";
const USER_LOCKED: &str = "user-locked";
const ACTIVATED: &str = "activated";

async fn bench() -> Arc<InProcBench> {
    let world = fixtures::world(
        23,
        &[
            Phone::unactivated(CLEAN),
            // iOS 10: session mode from its first version on, and the TLS 1.0-1.2 phone.
            Phone::unactivated(CLEAN_IOS_10)
                .with("product_type", "\"iPhone9,3\"")
                .with("product_version", "\"10.3.3\""),
            // iOS 9.3: mobileactivationd without a session, over TLS 1.0.
            Phone::unactivated(CLEAN_IOS_9)
                .with("product_type", "\"iPhone8,1\"")
                .with("product_version", "\"9.3.5\""),
            Phone::mdm_locked(MDM, &[CODE_A]),
            Phone::user_locked(USER_LOCKED),
            Phone::activated(ACTIVATED),
        ],
    );
    Arc::new(InProcBench::start(&world).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ideviceactivation_activates_clean_phones_from_ios_9_on() {
    let Some(tool) = ideviceactivation("ideviceactivation_activates_clean_phones_from_ios_9_on")
    else {
        return;
    };
    let b = bench().await;
    for phone in [CLEAN, CLEAN_IOS_10] {
        let run = activate(&b, &tool, phone, &[]).await;
        assert!(run.success(), "{phone}: {run}");
        assert!(
            run.screen.contains("Successfully activated device."),
            "{run}"
        );
        assert_eq!(b.ideviceinfo_state(phone).await, "Activated", "{run}");
        assert_session_requests(&b, phone, &run);
        let answers = b.albert_requests(phone, Endpoint::DeviceActivation);
        assert_eq!(answers.len(), 1, "{answers:?}");
        assert_eq!(answers[0].outcome, AlbertOutcome::Record);
    }

    // Before iOS 10 the tool asks CreateActivationInfoRequest first and, given the info,
    // skips the drmHandshake (docs/protocol.md §5.3 B).
    let run = activate(&b, &tool, CLEAN_IOS_9, &[]).await;
    assert!(run.success(), "{run}");
    assert_eq!(b.ideviceinfo_state(CLEAN_IOS_9).await, "Activated", "{run}");
    assert!(
        b.albert_requests(CLEAN_IOS_9, Endpoint::DrmHandshake)
            .is_empty(),
        "{run}"
    );
    let posts = b.albert_requests(CLEAN_IOS_9, Endpoint::DeviceActivation);
    assert_eq!(posts.len(), 1, "{posts:?}");
    assert_eq!(posts[0].outcome, AlbertOutcome::Record);
    assert_eq!(posts[0].user_agent.as_deref(), Some(USER_AGENT));
    assert_eq!(
        posts[0].fields.first().map(String::as_str),
        Some("activation-info")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ideviceactivation_opens_an_mdm_lock_with_a_blank_apple_id_and_the_code() {
    let Some(tool) =
        ideviceactivation("ideviceactivation_opens_an_mdm_lock_with_a_blank_apple_id_and_the_code")
    else {
        return;
    };
    let b = bench().await;
    let run = activate(
        &b,
        &tool,
        MDM,
        &[("input Apple ID", ""), ("input Password", CODE_A)],
    )
    .await;
    assert!(run.success(), "{run}");
    // It showed the lock page's title and asked for the page's two rows by their labels.
    assert!(run.screen.contains("Activation Lock"), "{run}");
    assert!(run.screen.contains("input Password (Required)"), "{run}");
    assert!(
        !run.screen.contains(CODE_A),
        "the code reached the screen: {run}"
    );
    assert!(
        run.screen.contains("Successfully activated device."),
        "{run}"
    );
    assert_eq!(b.ideviceinfo_state(MDM).await, "Activated");
    assert_session_requests(&b, MDM, &run);

    let posts = b.albert_requests(MDM, Endpoint::DeviceActivation);
    assert_eq!(posts.len(), 2, "{posts:?}");
    assert_eq!(posts[0].outcome, AlbertOutcome::LockForm);
    let answer = &posts[1];
    assert_eq!(answer.login.as_deref(), Some(""), "{answer:?}");
    assert_eq!(
        answer.password.as_deref(),
        Some(CODE_A_MASKED),
        "{answer:?}"
    );
    assert_eq!(answer.outcome, AlbertOutcome::Record, "{answer:?}");
    // Every hidden field of the page went back, URL-encoded, without `activation-info`.
    assert_eq!(
        answer.content_type.as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(
        answer.fields.first().map(String::as_str),
        Some("activation-info-base64")
    );
    for field in ["isAuthRequired", "challenge", "login", "password"] {
        assert!(
            answer.fields.iter().any(|f| f == field),
            "{field} not sent: {answer:?}"
        );
    }
    assert!(!answer.fields.iter().any(|f| f == "activation-info"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ideviceactivation_cannot_open_a_user_lock_with_a_code() {
    let Some(tool) = ideviceactivation("ideviceactivation_cannot_open_a_user_lock_with_a_code")
    else {
        return;
    };
    let b = bench().await;
    let run = activate(
        &b,
        &tool,
        USER_LOCKED,
        &[("input Apple ID", ""), ("input Password", CODE_B)],
    )
    .await;
    assert!(!run.success(), "{run}");
    assert!(run.screen.contains("Activation Lock"), "{run}");
    assert!(!run.screen.contains("Successfully activated"), "{run}");
    assert_eq!(b.ideviceinfo_state(USER_LOCKED).await, "Unactivated");
    let posts = b.albert_requests(USER_LOCKED, Endpoint::DeviceActivation);
    assert_eq!(posts.len(), 2, "{posts:?}");
    assert_eq!(posts[0].outcome, AlbertOutcome::LockForm);
    assert_eq!(posts[1].login.as_deref(), Some(""));
    assert_eq!(posts[1].password.as_deref(), Some(CODE_B_MASKED));
    // The bench's default answer to wrong credentials: an alert alone. The tool cannot read
    // a page without footers ("Failed to send request or retrieve response."; fidelity.md).
    assert_eq!(posts[1].outcome, AlbertOutcome::AuthAlert, "{run}");
    assert!(
        b.bench
            .albert()
            .requests_for(b.udid(USER_LOCKED))
            .iter()
            .all(|r| r.outcome != AlbertOutcome::Record),
        "a record was issued for a user-locked phone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ideviceactivation_reports_device_unknown_for_an_activated_phone() {
    let Some(tool) =
        ideviceactivation("ideviceactivation_reports_device_unknown_for_an_activated_phone")
    else {
        return;
    };
    let b = bench().await;
    let run = activate(&b, &tool, ACTIVATED, &[]).await;
    assert!(!run.success(), "{run}");
    // Its own warning for iOS 10.2 and later, then the server's error page's title.
    assert!(
        run.screen.contains("appears to be already activated"),
        "{run}"
    );
    assert!(
        run.screen.contains("Activation server reports errors."),
        "{run}"
    );
    assert!(run.screen.contains("Device Unknown"), "{run}");
    assert_eq!(b.ideviceinfo_state(ACTIVATED).await, "Activated");
}
