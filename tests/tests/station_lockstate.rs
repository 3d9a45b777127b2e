//! Each phone's lock and management state end to end: a mixed bench with a Find-My phone, a
//! supervised one and a passcode-locked one. The line ends the Find-My phone `find_my_on`,
//! flags the others, and leaves every other outcome as it was; `station devices`, the
//! events and `station report` (with its filters) say the same.

use std::collections::BTreeMap;

use serde_json::Value;
use station_tests::fixtures::{self, Phone};
use station_tests::inproc::{ndjson, InProcBench};

const CLEAN: &str = "clean";
const FIND_MY: &str = "find-my";
const SUPERVISED: &str = "supervised";
const PLAIN_ACTIVATED: &str = "plain-activated";
const USER_LOCKED: &str = "user-locked";
const PASSCODE: &str = "passcode";
const ORGANIZATION: &str = "Acme Schools";

fn world() -> String {
    fixtures::world(
        31,
        &[
            Phone::unactivated(CLEAN),
            Phone::activated(FIND_MY).with("find_my", "true"),
            Phone::activated(SUPERVISED)
                .with("supervised", "true")
                .with("organization", &format!("{ORGANIZATION:?}"))
                .with("configuration_url", "\"https://mdm.example.org/enroll\"")
                .with("mdm_unremovable", "true"),
            Phone::activated(PLAIN_ACTIVATED),
            Phone::user_locked(USER_LOCKED),
            Phone::activated(PASSCODE).with("passcode_locked", "true"),
        ],
    )
}

/// How each phone ends: only the Find-My phone changes from what it would be without it.
const EXPECTED: [(&str, &str); 6] = [
    (CLEAN, "activated"),
    (FIND_MY, "find_my_on"),
    (SUPERVISED, "already_activated"),
    (PLAIN_ACTIVATED, "already_activated"),
    (USER_LOCKED, "user_locked"),
    (PASSCODE, "device_error"),
];

fn by_udid<'a>(rows: &'a [Value], udid: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["udid"] == udid)
        .unwrap_or_else(|| panic!("no row for {udid}"))
}

fn udids_of(rows: &[Value]) -> Vec<String> {
    let mut udids: Vec<String> = rows
        .iter()
        .filter_map(|r| r["udid"].as_str().map(str::to_string))
        .collect();
    udids.sort_unstable();
    udids
}

/// `station report --format json` with `extra` arguments, as rows.
async fn report(f: &InProcBench, config: &str, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["--config", config, "report", "--format", "json"];
    args.extend_from_slice(extra);
    let out = f.station(&args, false).await;
    out.assert_success();
    serde_json::from_str(&out.stdout).expect("report json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_bench_reports_find_my_passcode_and_supervision() {
    let f = InProcBench::start(&world()).await;
    // A code source that knows only the clean phone: the user-locked one is unknown to it.
    let codes = f.codes_csv("codes.csv", &[(CLEAN, fixtures::CODE_A, "device")]);
    let config = f.station_config(Some(&codes), 3, "");
    let config = config.to_str().expect("utf-8");

    // Before the run: `station devices` reads what the paired or pairable phones tell.
    let devices = f
        .station(&["--config", config, "devices", "--json"], false)
        .await;
    devices.assert_success();
    let listed: Vec<Value> = serde_json::from_str(&devices.stdout).expect("devices json");
    let clean = by_udid(&listed, f.udid(CLEAN));
    assert_eq!(clean["find_my"], Value::Null, "unactivated: says nothing");
    for field in [
        "passcode_set",
        "supervised",
        "organization",
        "mdm_enrolled",
        "mdm_unremovable",
        "activation_lock",
    ] {
        assert!(clean.get(field).is_some(), "missing {field}: {clean}");
    }

    let out = f
        .station(
            &["--config", config, "run", "--once", "--trust-wait", "2"],
            false,
        )
        .await;
    assert_eq!(out.status.code(), Some(1), "phones need attention: {out}");
    let events = ndjson(&out.stdout);
    let finals: BTreeMap<&str, &Value> = events
        .iter()
        .filter(|e| e["event"] == "finished")
        .filter_map(|e| Some((e["udid"].as_str()?, e)))
        .collect();
    for (phone, expected) in EXPECTED {
        let finished = finals.get(f.udid(phone)).expect("finished");
        assert_eq!(finished["outcome"], expected, "{phone}: {finished}");
    }
    let find_my = finals[f.udid(FIND_MY)];
    assert!(
        find_my["message"]
            .as_str()
            .is_some_and(|m| m.contains("remove it from Find My")),
        "the next step: {find_my}"
    );
    assert_eq!(finals[f.udid(PASSCODE)]["passcode_set"], true);

    let identified: BTreeMap<&str, &Value> = events
        .iter()
        .filter(|e| e["event"] == "identified")
        .filter_map(|e| Some((e["udid"].as_str()?, e)))
        .collect();
    let supervised = identified[f.udid(SUPERVISED)];
    assert_eq!(supervised["v"], 2);
    assert_eq!(supervised["supervised"], true, "{supervised}");
    assert_eq!(supervised["organization"], ORGANIZATION, "{supervised}");
    assert_eq!(supervised["mdm_enrolled"], true, "{supervised}");
    assert_eq!(supervised["mdm_unremovable"], true, "{supervised}");
    assert_eq!(supervised["find_my"], false, "{supervised}");
    assert_eq!(identified[f.udid(FIND_MY)]["find_my"], true);
    assert_eq!(identified[f.udid(CLEAN)]["find_my"], Value::Null);

    let summary = events.last().expect("summary");
    let attention: Vec<&str> = summary["attention"]
        .as_array()
        .expect("attention")
        .iter()
        .filter_map(|a| a["udid"].as_str())
        .collect();
    assert!(attention.contains(&f.udid(FIND_MY)), "{summary}");
    assert!(!attention.contains(&f.udid(SUPERVISED)), "{summary}");

    // The ledger and its report say the same, and the filters pick exactly those phones.
    let rows = report(&f, config, &[]).await;
    for (phone, expected) in EXPECTED {
        assert_eq!(
            by_udid(&rows, f.udid(phone))["outcome"],
            expected,
            "{phone}"
        );
    }
    let supervised_row = by_udid(&rows, f.udid(SUPERVISED));
    assert_eq!(supervised_row["organization"], ORGANIZATION);
    assert_eq!(
        by_udid(&rows, f.udid(USER_LOCKED))["activation_lock"],
        serde_json::json!({"state": "locked", "locked_to": "personal"})
    );
    assert_eq!(
        by_udid(&rows, f.udid(CLEAN))["activation_lock"],
        serde_json::json!({"state": "none"})
    );
    assert_eq!(by_udid(&rows, f.udid(PASSCODE))["passcode_set"], true);

    assert_eq!(
        udids_of(&report(&f, config, &["--find-my", "on"]).await),
        vec![f.udid(FIND_MY).to_string()]
    );
    assert_eq!(
        udids_of(&report(&f, config, &["--supervised"]).await),
        vec![f.udid(SUPERVISED).to_string()]
    );
    assert_eq!(
        udids_of(&report(&f, config, &["--organization", "acme schools"]).await),
        vec![f.udid(SUPERVISED).to_string()]
    );
    let mut off = vec![
        f.udid(SUPERVISED).to_string(),
        f.udid(PLAIN_ACTIVATED).to_string(),
    ];
    off.sort_unstable();
    assert_eq!(
        udids_of(&report(&f, config, &["--find-my", "off"]).await),
        off
    );

    // The table shows the columns.
    let table = f
        .station(&["--config", config, "report", "--format", "table"], false)
        .await;
    table.assert_success();
    for column in [
        "FIND MY",
        "PASSCODE",
        "SUPERVISED",
        "find_my_on",
        ORGANIZATION,
    ] {
        assert!(table.stdout.contains(column), "{column}: {table}");
    }

    // After the run every activated phone is paired: `station devices` shows them all.
    let devices = f
        .station(&["--config", config, "devices", "--json"], false)
        .await;
    devices.assert_success();
    let listed: Vec<Value> = serde_json::from_str(&devices.stdout).expect("devices json");
    assert_eq!(by_udid(&listed, f.udid(FIND_MY))["find_my"], true);
    assert_eq!(
        by_udid(&listed, f.udid(SUPERVISED))["organization"],
        ORGANIZATION
    );
    let text = f.station(&["--config", config, "devices"], false).await;
    text.assert_success();
    assert!(text.stdout.contains(ORGANIZATION), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_find_my_policy_off_the_phone_ends_already_activated_and_still_says_so() {
    let f = InProcBench::start(&fixtures::world(
        32,
        &[Phone::activated(FIND_MY).with("find_my", "true")],
    ))
    .await;
    let config = f.station_config(None, 1, "");
    // `station_config` writes `[activation]` itself: the policy goes into that table.
    let text = std::fs::read_to_string(&config).expect("config");
    let text = text.replacen(
        "[activation]\n",
        "[activation]\nstop_on_find_my = false\n",
        1,
    );
    assert!(text.contains("stop_on_find_my = false"), "{text}");
    std::fs::write(&config, text).expect("write config");
    let config = config.to_str().expect("utf-8");
    let out = f
        .station(&["--config", config, "run", "--once"], false)
        .await;
    out.assert_success();
    let events = ndjson(&out.stdout);
    let finished = events
        .iter()
        .find(|e| e["event"] == "finished")
        .expect("finished");
    assert_eq!(finished["outcome"], "already_activated", "{finished}");
    assert_eq!(finished["find_my"], true, "{finished}");
    assert_eq!(
        udids_of(&report(&f, config, &["--find-my", "on"]).await),
        vec![f.udid(FIND_MY).to_string()]
    );
}
