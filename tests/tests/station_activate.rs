//! `station activate` end to end against the virtual bench: every outcome of issue 3,
//! asserted through the station's JSON, the stand-in activation server's request log and
//! libimobiledevice's view of the phone afterwards.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use station_sim::{AlbertOutcome, Endpoint};
use station_tests::fixtures::{
    self, toml_list, Phone, CODE_A, CODE_A_MASKED, CODE_B, CODE_C, CODE_D, CODE_E, CODE_F,
};
use station_tests::inproc::InProcBench;
use station_tests::Output;

const GOOD: &str = CODE_A;
const STALE: &str = CODE_C;
const SECOND_GOOD: &str = CODE_B;
const UNKNOWN_TO_CSV: &str = CODE_D;
const WRONG: &str = CODE_F;
const FOR_WRONG_TEST: &str = CODE_E;

/// The phones of [`world`], one per case.
const CLEAN: &str = "clean";
const MDM: &str = "mdm";
const STALE_AND_GOOD: &str = "stale-and-good";
const MDM_NO_CODE: &str = "mdm-no-code";
const USER_LOCKED: &str = "user-locked";
const ACTIVATED: &str = "activated";
const MDM_WRONG_CODE: &str = "mdm-wrong-code";

fn world() -> String {
    fixtures::world(
        11,
        &[
            Phone::unactivated(CLEAN),
            Phone::mdm_locked(MDM, &[GOOD]),
            Phone::mdm_locked(STALE_AND_GOOD, &[SECOND_GOOD])
                .with("stale_codes", &toml_list(&[STALE])),
            Phone::mdm_locked(MDM_NO_CODE, &[UNKNOWN_TO_CSV]),
            Phone::user_locked(USER_LOCKED),
            Phone::activated(ACTIVATED),
            Phone::mdm_locked(MDM_WRONG_CODE, &[FOR_WRONG_TEST]),
        ],
    )
}

/// The bench of these tests plus `station activate --json` against it.
struct Fixture(InProcBench);

impl std::ops::Deref for Fixture {
    type Target = InProcBench;
    fn deref(&self) -> &InProcBench {
        &self.0
    }
}

impl Fixture {
    async fn start(world: &str) -> Fixture {
        Fixture(InProcBench::start(world).await)
    }

    fn codes_csv(&self, rows: &[(&str, &str, &str)]) -> PathBuf {
        self.0
            .codes_csv(&format!("codes-{}.csv", next_suffix()), rows)
    }

    async fn activate(&self, phone: &str, codes: Option<&Path>, trace: bool) -> (Output, Value) {
        let udid = self.udid(phone).to_string();
        let url = self.bench.activation_url().to_string();
        let mut args = vec![
            "--json".to_string(),
            "activate".into(),
            "--udid".into(),
            udid,
            "--activation-url".into(),
            url,
        ];
        if let Some(path) = codes {
            args.push("--codes".into());
            args.push(path.display().to_string());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.station(&args, trace).await;
        let json: Value = serde_json::from_str(out.stdout.trim())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {out}"));
        (out, json)
    }
}

fn next_suffix() -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn outcome(json: &Value) -> &str {
    json["outcome"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_outcome_of_a_single_phone() {
    let f = Fixture::start(&world()).await;
    let csv = f.codes_csv(&[
        (MDM, GOOD, "device"),
        (STALE_AND_GOOD, STALE, "device"),
        (STALE_AND_GOOD, SECOND_GOOD, "server"),
        (MDM_NO_CODE, "", "unknown"),
        (MDM_WRONG_CODE, WRONG, "device"),
    ]);

    // A clean phone activates; no lock form, no code.
    let (out, json) = f.activate(CLEAN, Some(&csv), false).await;
    assert_eq!(outcome(&json), "activated", "{out}");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(json["activation_locked"], false);
    assert_eq!(json["serial"], f.serial(CLEAN));
    assert_eq!(f.ideviceinfo_state(CLEAN).await, "Activated");

    // A locked phone with its code in the CSV: blank username, the code as password.
    let (out, json) = f.activate(MDM, Some(&csv), false).await;
    assert_eq!(outcome(&json), "activated", "{out}");
    assert_eq!(json["activation_locked"], true);
    assert_eq!(json["codes_tried"], 1);
    assert_eq!(json["released_by"]["code"], CODE_A_MASKED);
    assert_eq!(json["released_by"]["kind"], "device");
    assert_eq!(f.ideviceinfo_state(MDM).await, "Activated");
    let submissions: Vec<_> = f
        .bench
        .albert()
        .requests_for(f.udid(MDM))
        .into_iter()
        .filter(|r| r.endpoint == Some(Endpoint::DeviceActivation) && r.password.is_some())
        .collect();
    assert_eq!(submissions.len(), 1, "{submissions:?}");
    assert_eq!(
        submissions[0].login.as_deref(),
        Some(""),
        "username must be blank"
    );
    assert_eq!(submissions[0].password.as_deref(), Some(CODE_A_MASKED));
    assert!(
        !submissions[0].fields.iter().any(|f| f == "activation-info"),
        "resubmission must not resend activation-info: {:?}",
        submissions[0].fields
    );
    assert!(submissions[0]
        .fields
        .iter()
        .any(|f| f == "activation-info-base64"));
    for request in f.bench.albert().requests() {
        assert_eq!(
            request.user_agent.as_deref(),
            Some("iOS Device Activator (MobileActivation-592.103.2)")
        );
    }

    // A stale and a good code: both tried, each once, in file order.
    let (out, json) = f.activate(STALE_AND_GOOD, Some(&csv), false).await;
    assert_eq!(outcome(&json), "activated", "{out}");
    assert_eq!(json["codes_tried"], 2);
    assert_eq!(json["released_by"]["code"], "8LNYD-…-CT86");
    let tried: Vec<String> = f
        .bench
        .albert()
        .requests_for(f.udid(STALE_AND_GOOD))
        .into_iter()
        .filter_map(|r| r.password)
        .filter(|p| !p.is_empty())
        .collect();
    assert_eq!(
        tried,
        vec!["TF27L-…-NFV0".to_string(), "8LNYD-…-CT86".to_string()]
    );

    // Known to the MDM export, but no code: locked_no_code, and the phone stays locked.
    let (out, json) = f.activate(MDM_NO_CODE, Some(&csv), false).await;
    assert_eq!(outcome(&json), "locked_no_code", "{out}");
    assert_eq!(out.status.code(), Some(7));
    assert!(json["message"]
        .as_str()
        .unwrap_or_default()
        .contains(f.serial(MDM_NO_CODE)));
    assert_eq!(f.ideviceinfo_state(MDM_NO_CODE).await, "Unactivated");

    // A wrong code: code_rejected after one try.
    let (out, json) = f.activate(MDM_WRONG_CODE, Some(&csv), false).await;
    assert_eq!(outcome(&json), "code_rejected", "{out}");
    assert_eq!(json["codes_tried"], 1);
    let message = json["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("stale in csv"),
        "names where the stale code came from: {message}"
    );
    assert_eq!(f.ideviceinfo_state(MDM_WRONG_CODE).await, "Unactivated");

    // Locked to a personal account no source knows: user_locked, nothing submitted.
    let (out, json) = f.activate(USER_LOCKED, Some(&csv), false).await;
    assert_eq!(outcome(&json), "user_locked", "{out}");
    assert_eq!(json["codes_tried"], 0);

    // Already activated: nothing asked of the server.
    let before = f.bench.albert().requests_for(f.udid(ACTIVATED)).len();
    let (out, json) = f.activate(ACTIVATED, Some(&csv), false).await;
    assert_eq!(outcome(&json), "already_activated", "{out}");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        f.bench.albert().requests_for(f.udid(ACTIVATED)).len(),
        before
    );

    // No codes file at all: the lock cannot be released, and the message says why.
    let (out, json) = f.activate(MDM_WRONG_CODE, None, false).await;
    assert_eq!(outcome(&json), "locked_no_code", "{out}");
    assert!(
        json["message"]
            .as_str()
            .unwrap_or_default()
            .contains("--codes"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_then_reported() {
    let f = Fixture::start(&world()).await;
    let csv = f.codes_csv(&[(MDM, GOOD, "device")]);

    // Two 503s on each endpoint, then success.
    f.bench.albert().set_failures(Endpoint::DrmHandshake, 2);
    f.bench.albert().set_failures(Endpoint::DeviceActivation, 2);
    let (out, json) = f.activate(MDM, Some(&csv), false).await;
    assert_eq!(outcome(&json), "activated", "{out}");

    // A server that keeps failing: server_error after bounded retries, phone untouched.
    f.bench
        .albert()
        .set_fail_always(Endpoint::DrmHandshake, true);
    let before = f.bench.albert().requests().len();
    let (out, json) = f.activate(CLEAN, Some(&csv), false).await;
    assert_eq!(outcome(&json), "server_error", "{out}");
    assert_eq!(out.status.code(), Some(8));
    assert!(
        json["message"].as_str().unwrap_or_default().contains("503"),
        "{out}"
    );
    let attempts = f.bench.albert().requests().len() - before;
    assert_eq!(attempts, 4, "bounded retries");
    assert_eq!(f.ideviceinfo_state(CLEAN).await, "Unactivated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unplugging_during_the_exchange_ends_interrupted() {
    let f = Fixture::start(&world()).await;
    // Slow server: the phone is pulled while the station waits for it.
    f.bench.albert().set_latency(Duration::from_millis(1500));
    let udid = f.udid(CLEAN).to_string();
    let run = f.activate(CLEAN, None, false);
    let unplug = async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        // The log fills as answers go out: after the handshake answer the station still has
        // the deviceActivation round trip (another 1.5 s) ahead of it.
        while f.bench.albert().requests().is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the station never reached the server"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        f.bench.unplug(&udid).expect("unplug");
    };
    let ((out, json), ()) = tokio::join!(run, unplug);
    assert_eq!(outcome(&json), "interrupted", "{out}");
    assert_eq!(out.status.code(), Some(9));
    assert!(
        json["message"]
            .as_str()
            .unwrap_or_default()
            .contains("plug it back in"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_bypass_code_is_ever_printed_whole() {
    let f = Fixture::start(&world()).await;
    let csv = f.codes_csv(&[
        (MDM, GOOD, "device"),
        (STALE_AND_GOOD, STALE, "device"),
        (STALE_AND_GOOD, SECOND_GOOD, "server"),
        (MDM_WRONG_CODE, WRONG, "device"),
    ]);
    let mut written = String::new();
    for phone in [MDM, STALE_AND_GOOD, MDM_WRONG_CODE, USER_LOCKED] {
        let (out, _) = f.activate(phone, Some(&csv), true).await;
        written.push_str(&out.stdout);
        written.push_str(&out.stderr);
    }
    // A codes file with a bad row: the error names the line, not the code.
    let bad = f.dir.path().join("bad.csv");
    std::fs::write(
        &bad,
        format!(
            "serial_number,udid,bypass_code,code_kind,source,retrieved_at\n{},,{}O,device,,\n",
            f.serial(MDM),
            &GOOD[..30]
        ),
    )
    .expect("write");
    let out = f
        .station(
            &[
                "activate",
                "--udid",
                f.udid(MDM),
                "--codes",
                bad.to_str().expect("utf-8"),
            ],
            true,
        )
        .await;
    assert_eq!(out.status.code(), Some(2), "{out}");
    assert!(out.stderr.contains("line 2"), "{out}");
    written.push_str(&out.stdout);
    written.push_str(&out.stderr);

    assert!(
        written.contains("TRACE") || written.contains("trace"),
        "trace logging was on"
    );
    for code in [
        GOOD,
        STALE,
        SECOND_GOOD,
        WRONG,
        UNKNOWN_TO_CSV,
        FOR_WRONG_TEST,
    ] {
        let compact = code.replace('-', "");
        for form in [
            code.to_string(),
            compact.clone(),
            code.to_lowercase(),
            compact.to_lowercase(),
            code[..30].to_string(),
        ] {
            assert!(
                !written.contains(&form),
                "a bypass code appeared whole ({form})"
            );
        }
    }
}

/// `station --json activate` of the phone named `phone` with a configuration of its own: the bench's
/// server and socket, `codes` as the CSV source, and `activation` appended to `[activation]`.
async fn activate_configured(
    bench: &InProcBench,
    phone: &str,
    codes: Option<&Path>,
    activation: &str,
) -> (Output, Value) {
    let config = bench.station_config(codes, 1, "");
    let text = std::fs::read_to_string(&config).expect("read config");
    let text = text.replacen("\n\n[retry]", &format!("\n{activation}\n\n[retry]"), 1);
    std::fs::write(&config, text).expect("write config");
    let config = config.display().to_string();
    let out = bench
        .station(
            &[
                "--config",
                &config,
                "--json",
                "activate",
                "--udid",
                bench.udid(phone),
            ],
            false,
        )
        .await;
    let json: Value =
        serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"));
    (out, json)
}

fn outcomes_of(bench: &InProcBench, phone: &str, endpoint: Endpoint) -> Vec<AlbertOutcome> {
    bench
        .albert_requests(phone, endpoint)
        .into_iter()
        .map(|r| r.outcome)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_slow_to_build_its_activation_info_is_released_and_activated() {
    // FairPlay on a real phone can take many seconds: 20 s here, twice lockdown's idle
    // timeout and the station's general reply timeout.
    let b = InProcBench::start(&fixtures::world(
        12,
        &[Phone::mdm_locked("slow", &[GOOD]).with("activation_info_delay_ms", "20000")],
    ))
    .await;
    let csv = b.codes_csv("codes.csv", &[("slow", GOOD, "device")]);
    let (out, json) = activate_configured(&b, "slow", Some(&csv), "").await;
    assert_eq!(outcome(&json), "activated", "{out}");
    assert_eq!(json["activation_locked"], true);
    assert!(json["elapsed_ms"].as_u64().unwrap_or_default() >= 20_000);
    assert_eq!(b.ideviceinfo_state("slow").await, "Activated");

    // With a bound below the phone's time the command times out, retryably.
    let b = InProcBench::start(&fixtures::world(
        13,
        &[Phone::named("slow").with("activation_info_delay_ms", "3000")],
    ))
    .await;
    let (out, json) = activate_configured(&b, "slow", None, "command_timeout_secs = 1").await;
    assert_eq!(outcome(&json), "device_error", "{out}");
    assert_eq!(json["retryable"], true, "{out}");
    assert_eq!(json["step"], "activation_info", "{out}");
    assert!(
        json["message"]
            .as_str()
            .unwrap_or_default()
            .contains("command_timeout_secs"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_says_ack_received_is_applied_and_the_state_polled() {
    // The record comes with ack-received; the phone takes 1.5 s over it and says
    // Activated 2 s after that. A second phone never says so within the station's wait.
    let b = InProcBench::start(&fixtures::world_with(
        14,
        "[activation_server]\nrecord_ack = true",
        &[
            Phone::named("slow")
                .with("handle_record_delay_ms", "1500")
                .with("activated_after_ms", "2000"),
            Phone::named("never").with("activated_after_ms", "30000"),
        ],
    ))
    .await;
    let (out, json) = activate_configured(&b, "slow", None, "").await;
    assert_eq!(outcome(&json), "activated", "{out}");
    assert_eq!(json["activation_state"], "Activated");
    assert_eq!(b.ideviceinfo_state("slow").await, "Activated");
    assert_eq!(
        outcomes_of(&b, "slow", Endpoint::DeviceActivation),
        [AlbertOutcome::Record]
    );

    // Success only when the phone says so.
    let (out, json) = activate_configured(&b, "never", None, "").await;
    assert_eq!(outcome(&json), "device_error", "{out}");
    assert_eq!(json["step"], "verify", "{out}");
    assert_eq!(json["activation_state"], "Unactivated", "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_code_answered_by_an_alert_alone_starts_over_with_the_next() {
    let b = InProcBench::start(&fixtures::world(15, &[Phone::mdm_locked(MDM, &[GOOD])])).await;
    let csv = b.codes_csv(
        "codes.csv",
        &[(MDM, WRONG, "device"), (MDM, GOOD, "server")],
    );
    let (out, json) = activate_configured(&b, MDM, Some(&csv), "").await;
    assert_eq!(outcome(&json), "activated", "{out}");
    assert_eq!(json["codes_tried"], 2);
    assert_eq!(json["released_by"]["code"], CODE_A_MASKED);
    // Lock form, alert alone, a new exchange from the handshake on, the lock form, a record.
    assert_eq!(
        outcomes_of(&b, MDM, Endpoint::DeviceActivation),
        [
            AlbertOutcome::LockForm,
            AlbertOutcome::AuthAlert,
            AlbertOutcome::LockForm,
            AlbertOutcome::Record
        ]
    );
    assert_eq!(outcomes_of(&b, MDM, Endpoint::DrmHandshake).len(), 2);
    assert_eq!(b.ideviceinfo_state(MDM).await, "Activated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_code_answered_by_the_alert_over_the_form_tries_the_next_on_that_form() {
    // What Albert sends for wrong credentials is not recorded (docs/protocol.md §7); a form
    // that comes back under the alert is answered again, without a new exchange.
    let b = InProcBench::start(&fixtures::world_with(
        17,
        "[activation_server]\nwrong_credentials = \"alert_over_form\"",
        &[Phone::mdm_locked(MDM, &[GOOD])],
    ))
    .await;
    let csv = b.codes_csv(
        "codes.csv",
        &[(MDM, WRONG, "device"), (MDM, GOOD, "server")],
    );
    let (out, json) = activate_configured(&b, MDM, Some(&csv), "").await;
    assert_eq!(outcome(&json), "activated", "{out}");
    assert_eq!(json["codes_tried"], 2);
    assert_eq!(json["released_by"]["code"], CODE_A_MASKED);
    assert_eq!(
        outcomes_of(&b, MDM, Endpoint::DeviceActivation),
        [
            AlbertOutcome::LockForm,
            AlbertOutcome::AuthAlert,
            AlbertOutcome::Record
        ]
    );
    assert_eq!(outcomes_of(&b, MDM, Endpoint::DrmHandshake).len(), 1);
    // The second answer went to the form the alert came with: blank login, every hidden
    // field again, no activation-info.
    let answers = b.bench.albert().requests_for(b.udid(MDM));
    let last = answers.last().expect("the answer that released the phone");
    assert_eq!(last.login.as_deref(), Some(""));
    assert!(
        !last.fields.iter().any(|f| f == "activation-info"),
        "{:?}",
        last.fields
    );
    assert!(
        last.fields.iter().any(|f| f == "activation-info-base64"),
        "{:?}",
        last.fields
    );
    assert_eq!(b.ideviceinfo_state(MDM).await, "Activated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_hidden_fields_is_posted_back_and_the_user_agent_is_configurable() {
    let b = InProcBench::start(&fixtures::world_with(
        16,
        "[activation_server]\ncontinue_page = true",
        &[Phone::named(CLEAN), Phone::mdm_locked(MDM, &[GOOD])],
    ))
    .await;
    let csv = b.codes_csv("codes.csv", &[(MDM, GOOD, "device")]);
    let legacy = "iOS Device Activator (MobileActivation-20 built on Jan 15 2012 at 19:07:28)";
    for phone in [CLEAN, MDM] {
        let (out, json) =
            activate_configured(&b, phone, Some(&csv), &format!("user_agent = \"{legacy}\"")).await;
        assert_eq!(outcome(&json), "activated", "{out}");
        assert_eq!(b.ideviceinfo_state(phone).await, "Activated");
    }
    assert_eq!(
        outcomes_of(&b, CLEAN, Endpoint::DeviceActivation),
        [AlbertOutcome::ContinuePage, AlbertOutcome::Record]
    );
    assert_eq!(
        outcomes_of(&b, MDM, Endpoint::DeviceActivation),
        [
            AlbertOutcome::ContinuePage,
            AlbertOutcome::LockForm,
            AlbertOutcome::Record
        ]
    );
    // The page was echoed as it was: its hidden fields, no rows, no activation-info.
    let echo = &b.bench.albert().requests_for(b.udid(CLEAN))[2];
    assert_eq!(echo.fields, ["activation-info-base64", "challenge"]);
    for request in b.bench.albert().requests() {
        assert_eq!(request.user_agent.as_deref(), Some(legacy));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_lockdown_session_serves_the_activation_and_one_the_phone_closed_is_replaced() {
    // As pymobiledevice3 does (docs/protocol.md §5.3): the session opened after pairing
    // starts every mobileactivationd command (each on a service connection of its own) and
    // takes the acknowledgement; before, each command and the verification opened one more
    // (five TLS handshakes with the phone instead of one).
    let b = InProcBench::start(&fixtures::world(
        16,
        &[Phone::mdm_locked(MDM, &[GOOD]), Phone::unactivated(CLEAN)],
    ))
    .await;
    let csv = b.codes_csv("codes.csv", &[(MDM, GOOD, "device")]);
    for phone in [MDM, CLEAN] {
        let (out, json) = activate_configured(&b, phone, Some(&csv), "").await;
        assert_eq!(outcome(&json), "activated", "{out}");
        let stats = b.bench.lockdown_stats(b.udid(phone)).expect("stats");
        assert_eq!(stats.sessions_started, 1, "{phone}: {stats:?}\n{out}");
        assert_eq!(stats.idle_closed, 0, "{phone}: {stats:?}\n{out}");
    }

    // A phone that drops a lockdown connection idle for 1 s, and a server that takes 2.5 s
    // per answer: the session kept across each answer is found closed at the next command
    // and replaced by a new one; the phone is activated all the same.
    let b = InProcBench::start_with(
        &fixtures::world_with(
            17,
            "[activation_server]\nlatency_ms = 2500",
            &[Phone::mdm_locked(MDM, &[GOOD])],
        ),
        |config| config.idle_timeout = Duration::from_secs(1),
    )
    .await;
    let csv = b.codes_csv("codes.csv", &[(MDM, GOOD, "device")]);
    let (out, json) = activate_configured(&b, MDM, Some(&csv), "").await;
    assert_eq!(outcome(&json), "activated", "{out}");
    assert_eq!(b.ideviceinfo_state(MDM).await, "Activated");
    let stats = b.bench.lockdown_stats(b.udid(MDM)).expect("stats");
    assert!(stats.idle_closed >= 1, "{stats:?}\n{out}");
    assert!(stats.sessions_started >= 2, "{stats:?}\n{out}");
}
