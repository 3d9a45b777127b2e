//! Old phones as a line meets them (issue 8 §1): iOS 9 is refused before pairing with a
//! reason naming the version and the way out; iOS 11 and iOS 12 phones, each speaking the
//! TLS of its version, activate.

use std::time::{Duration, Instant};

use serde_json::Value;
use station_tests::fixtures::{self, Phone, CODE_A, CODE_A_MASKED};
use station_tests::inproc::InProcBench;
use station_tests::Output;

/// The phones of [`world`].
const IOS_9: &str = "ios-9";
const IOS_11: &str = "ios-11";
const IOS_12_LOCKED: &str = "ios-12-locked";
const IOS_10_OLD_TLS: &str = "ios-10-old-tls";

fn world() -> String {
    fixtures::world(
        31,
        &[
            Phone::unactivated(IOS_9)
                .with("product_type", "\"iPhone8,1\"")
                .with("product_version", "\"9.3.5\""),
            Phone::unactivated(IOS_11)
                .with("product_type", "\"iPhone9,1\"")
                .with("product_version", "\"11.4.1\""),
            Phone::mdm_locked(IOS_12_LOCKED, &[CODE_A])
                .with("product_type", "\"iPhone8,1\"")
                .with("product_version", "\"12.4.1\""),
            // An iOS 10 phone whose TLS stops at 1.0, as some reports for iOS 10–11 describe.
            Phone::unactivated(IOS_10_OLD_TLS)
                .with("product_type", "\"iPhone9,3\"")
                .with("product_version", "\"10.3.3\"")
                .with("tls", "\"tls1.0\""),
        ],
    )
}

/// The exit code of an `unsupported` phone.
const UNSUPPORTED: i32 = 10;

async fn activate(bench: &InProcBench, phone: &str, codes: Option<&str>) -> (Output, Value) {
    let extra: Vec<&str> = codes.map(|c| vec!["--codes", c]).unwrap_or_default();
    bench.activate_json(bench.udid(phone), None, &extra).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ios_9_phone_is_refused_before_pairing_and_newer_ones_activate() {
    let bench = InProcBench::start(&world()).await;

    let started = Instant::now();
    let (out, json) = activate(&bench, IOS_9, None).await;
    assert_eq!(json["outcome"], "unsupported", "{out}");
    assert_eq!(out.status.code(), Some(UNSUPPORTED), "{out}");
    let message = json["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("iOS 9.3.5"),
        "names the version: {message}"
    );
    assert!(
        message.contains("Finder") && message.contains("Apple Configurator"),
        "names the way out: {message}"
    );
    assert_eq!(json["product_version"], "9.3.5", "{out}");
    assert_eq!(json["product_type"], "iPhone8,1", "{out}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "refused at once, not after a timeout"
    );
    let record = bench
        .dir
        .path()
        .join("state/lockdown")
        .join(format!("{}.plist", bench.udid(IOS_9)));
    assert!(!record.exists(), "nothing was written: no pairing");
    assert!(
        bench
            .bench
            .albert()
            .requests_for(bench.udid(IOS_9))
            .is_empty(),
        "the activation server was never asked"
    );
    assert_eq!(bench.ideviceinfo_state(IOS_9).await, "Unactivated");

    // iOS 11 is tried: its phone offers TLS 1.0–1.2 and the station gets TLS 1.2.
    let (out, json) = activate(&bench, IOS_11, None).await;
    assert_eq!(json["outcome"], "activated", "{out}");
    assert_eq!(bench.ideviceinfo_state(IOS_11).await, "Activated");

    // An iOS 12 iPhone 6s speaks TLS 1.2 only, and its lock is released by its code.
    let csv = bench.codes_csv("codes.csv", &[(IOS_12_LOCKED, CODE_A, "device")]);
    let csv = csv.display().to_string();
    // Without --json: one line, the outcome named once.
    let udid = bench.udid(IOS_12_LOCKED);
    let url = bench.bench.activation_url().to_string();
    let out = bench
        .station(
            &[
                "activate",
                "--udid",
                udid,
                "--activation-url",
                &url,
                "--codes",
                &csv,
            ],
            false,
        )
        .await;
    out.assert_success();
    assert!(
        out.stdout.starts_with(&format!(
            "{udid}: activated: Activation Lock released with code {CODE_A_MASKED}"
        )),
        "{out}"
    );
    assert_eq!(out.stdout.matches("activated").count(), 1, "{out}");
    assert_eq!(bench.ideviceinfo_state(IOS_12_LOCKED).await, "Activated");

    // iOS 10 is tried; when its handshake fails the reason names the version.
    let (out, json) = activate(&bench, IOS_10_OLD_TLS, None).await;
    assert_eq!(json["outcome"], "unsupported", "{out}");
    assert_eq!(out.status.code(), Some(UNSUPPORTED), "{out}");
    let message = json["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("iOS 10.3.3"),
        "names the version: {message}"
    );
    assert!(message.contains("TLS"), "says what failed: {message}");
    assert!(
        bench
            .bench
            .albert()
            .requests_for(bench.udid(IOS_10_OLD_TLS))
            .is_empty(),
        "the activation server was never asked"
    );
}
