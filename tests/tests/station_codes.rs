//! Bypass-code sources end to end: the real `station` binary against the virtual bench's
//! stand-in Entra ID, Graph and Kandji, configured by the ready-made station configuration
//! the bench writes. `station codes lookup` for every kind of record and fault, `station
//! activate` with only Intune configured, the `bypassActivationLock` action, and no secret,
//! token or code in any output (at trace level) unless `--reveal` asks for the codes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use station_sim::{ConfigSource, MdmOutcome, ReadyDevice};
use station_tests::fixtures::{self, toml_list, Phone, CODE_A, CODE_B, CODE_C, CODE_D, CODE_E};
use station_tests::inproc::InProcBench;
use station_tests::Output;

const INTUNE_CODE: &str = CODE_A;
const GOOD: &str = CODE_B;
const STALE: &str = CODE_C;
const KANDJI_A: &str = CODE_D;
const KANDJI_B: &str = CODE_E;

/// The phones of [`world`].
const SINGLE: &str = "single";
const TWO_RECORDS: &str = "two-records";
const NO_CODE: &str = "no-code";
const KANDJI: &str = "kandji";
const USER_LOCKED: &str = "user-locked";

fn world() -> String {
    fixtures::world(
        21,
        &[
            Phone::mdm_locked(SINGLE, &[INTUNE_CODE]),
            Phone::mdm_locked(TWO_RECORDS, &[GOOD]).with("stale_codes", &toml_list(&[STALE])),
            Phone::mdm_locked(NO_CODE, &[]),
            Phone::mdm_locked(KANDJI, &[KANDJI_A, KANDJI_B]).with("kandji", "true"),
            Phone::user_locked(USER_LOCKED),
        ],
    )
}

struct Fixture {
    inner: InProcBench,
    devices: Vec<ReadyDevice>,
}

impl std::ops::Deref for Fixture {
    type Target = InProcBench;
    fn deref(&self) -> &InProcBench {
        &self.inner
    }
}

impl Fixture {
    async fn start(sources: &[ConfigSource]) -> Fixture {
        Fixture::start_world(&world(), sources).await
    }

    async fn start_world(world: &str, sources: &[ConfigSource]) -> Fixture {
        let inner = InProcBench::start_with(world, |config| {
            config.station_config_sources = sources.to_vec();
        })
        .await;
        let devices = inner.bench.ready_info().devices;
        Fixture { inner, devices }
    }

    /// The phone named `name`, as the bench describes it.
    #[track_caller]
    fn device(&self, name: &str) -> &ReadyDevice {
        &self.devices[self.index_of(name)]
    }

    /// Whether the phone's lock was released on Apple's side (by an MDM), now.
    fn released(&self, name: &str) -> bool {
        self.bench.ready_info().devices[self.index_of(name)].lock_released
    }

    fn config(&self) -> PathBuf {
        self.bench.station_config().to_path_buf()
    }

    /// The bench's configuration with the Intune action turned on (its progress watched
    /// for up to 5 s).
    fn config_with_action(&self) -> PathBuf {
        let text = std::fs::read_to_string(self.config()).expect("read config");
        assert!(text.contains("bypass_action = false"), "{text}");
        let text = text.replace(
            "bypass_action = false",
            "bypass_action = true\nbypass_action_wait_secs = 5",
        );
        let path = self.path("station-action.toml");
        std::fs::write(&path, text).expect("write config");
        path
    }

    async fn station(&self, config: &Path, args: &[&str], trace: bool) -> Output {
        let config = config.display().to_string();
        let mut full = vec!["--config", config.as_str()];
        full.extend_from_slice(args);
        self.inner.station(&full, trace).await
    }

    /// `station --json codes lookup` for the phone named `phone`; its JSON.
    async fn lookup(&self, phone: &str) -> (Output, Value) {
        let d = self.device(phone);
        let out = self
            .station(
                &self.config(),
                &[
                    "--json", "codes", "lookup", "--serial", &d.serial, "--udid", &d.udid,
                ],
                false,
            )
            .await;
        let json = serde_json::from_str(out.stdout.trim())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {out}"));
        (out, json)
    }

    async fn activate(&self, config: &Path, phone: &str, trace: bool) -> (Output, Value) {
        let url = self.bench.activation_url().to_string();
        let out = self
            .station(
                config,
                &[
                    "--json",
                    "activate",
                    "--udid",
                    &self.device(phone).udid,
                    "--activation-url",
                    &url,
                ],
                trace,
            )
            .await;
        let json = serde_json::from_str(out.stdout.trim())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {out}"));
        (out, json)
    }

    /// Everything no output may show: the client secret, the Kandji token, any JWT (the
    /// stand-in's tokens are JWT-shaped) and every code of the world, whole or compact.
    fn secrets(&self) -> Vec<String> {
        let state = self.dir.path().join("state").join("secrets");
        let mut secrets = vec![
            std::fs::read_to_string(state.join("intune.secret")).expect("intune secret"),
            std::fs::read_to_string(state.join("kandji.token")).expect("kandji token"),
            "eyJ".to_string(),
        ];
        for code in [INTUNE_CODE, GOOD, STALE, KANDJI_A, KANDJI_B] {
            secrets.push(code.to_string());
            secrets.push(code.replace('-', ""));
            // The middle groups alone: a masked code shows only the first and last.
            secrets.push(code[6..11].to_string());
        }
        secrets
    }
}

#[track_caller]
fn assert_no_secrets(out: &Output, secrets: &[String]) {
    for secret in secrets {
        assert!(!secret.trim().is_empty());
        for (stream, text) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
            assert!(
                !text.contains(secret.trim()),
                "{stream} of `{}` shows a secret or a code ({} chars, starting {:?})",
                out.command,
                secret.len(),
                &secret[..3.min(secret.len())]
            );
        }
    }
}

fn codes(json: &Value) -> Vec<(String, String, String)> {
    json["codes"]
        .as_array()
        .expect("codes")
        .iter()
        .map(|c| {
            (
                c["code"].as_str().unwrap_or_default().to_string(),
                c["kind"].as_str().unwrap_or_default().to_string(),
                c["source"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn masked(code: &str) -> String {
    format!("{}-…-{}", &code[..5], &code[code.len() - 4..])
}

fn graph_outcomes(f: &Fixture) -> Vec<MdmOutcome> {
    f.bench
        .graph()
        .graph_requests()
        .into_iter()
        .map(|r| r.outcome)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_of_every_kind_of_record() {
    let f = Fixture::start(&[ConfigSource::Intune, ConfigSource::Kandji]).await;

    // A single Intune record.
    let (out, json) = f.lookup(SINGLE).await;
    out.assert_success();
    assert_eq!(
        codes(&json),
        vec![(masked(INTUNE_CODE), "device".into(), "intune".into())]
    );
    assert_eq!(json["known"], true);
    assert_eq!(json["sources"][0]["status"], "answered");
    assert_eq!(json["sources"][0]["codes"], 1);
    assert_eq!(json["sources"][1]["source"], "kandji");
    assert_eq!(json["sources"][1]["known"], false);

    // Two records for one serial: both codes, this phone's record first.
    let (out, json) = f.lookup(TWO_RECORDS).await;
    out.assert_success();
    let found: Vec<String> = codes(&json).into_iter().map(|c| c.0).collect();
    assert_eq!(found, vec![masked(GOOD), masked(STALE)]);

    // A record without a code: known, no code.
    let (out, json) = f.lookup(NO_CODE).await;
    out.assert_success();
    assert_eq!(json["known"], true);
    assert!(codes(&json).is_empty());

    // Kandji: both kinds, from the Kandji source.
    let (out, json) = f.lookup(KANDJI).await;
    out.assert_success();
    let mut kandji = codes(&json);
    kandji.sort();
    let mut expected = vec![masked(KANDJI_A), masked(KANDJI_B)];
    expected.sort();
    assert_eq!(
        kandji.iter().map(|c| c.0.clone()).collect::<Vec<_>>(),
        expected
    );
    assert!(kandji.iter().all(|c| c.2 == "kandji"));
    let kinds: Vec<&str> = kandji.iter().map(|c| c.1.as_str()).collect();
    assert!(
        kinds.contains(&"device") && kinds.contains(&"server"),
        "{kinds:?}"
    );

    // A serial the filter does not match: nobody knows it.
    let (out, json) = f.lookup(USER_LOCKED).await;
    out.assert_success();
    assert_eq!(json["known"], false);
    assert!(codes(&json).is_empty());

    // --reveal prints the whole code, for the operator to type.
    let d = f.device(SINGLE);
    let out = f
        .station(
            &f.config(),
            &["codes", "lookup", "--serial", &d.serial, "--reveal"],
            false,
        )
        .await;
    out.assert_success();
    assert!(out.stdout.contains(INTUNE_CODE), "{out}");
    let out = f
        .station(
            &f.config(),
            &["codes", "lookup", "--serial", &d.serial],
            false,
        )
        .await;
    assert!(out.stdout.contains(&masked(INTUNE_CODE)), "{out}");
    assert!(!out.stdout.contains(INTUNE_CODE), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_faults_ignored_filters_paging_throttling_and_tokens() {
    let f = Fixture::start(&[ConfigSource::Intune]).await;
    let graph = f.bench.graph();

    // Graph ignores the filter and pages one record at a time: every record of the tenant
    // is listed, only this serial's are read.
    graph.set_ignore_filters(true);
    graph.set_page_size(1);
    graph.clear_requests();
    let (out, json) = f.lookup(TWO_RECORDS).await;
    out.assert_success();
    let found: Vec<String> = codes(&json).into_iter().map(|c| c.0).collect();
    assert_eq!(found, vec![masked(GOOD), masked(STALE)]);
    let requests = graph.graph_requests();
    let pages = requests
        .iter()
        .filter(|r| r.path.ends_with("/managedDevices"))
        .count();
    let singles = requests.len() - pages;
    // The world holds four Intune records: one a page.
    assert_eq!(pages, 4, "{pages} pages");
    assert_eq!(singles, 2, "one GET per record of this serial");
    graph.set_ignore_filters(false);
    graph.set_page_size(3);

    // 429 with Retry-After: honoured, never asked again early.
    graph.clear_requests();
    graph.set_throttle_next(2, Duration::from_secs(1));
    let (out, json) = f.lookup(SINGLE).await;
    out.assert_success();
    assert_eq!(codes(&json).len(), 1);
    let outcomes = graph_outcomes(&f);
    assert!(
        outcomes.contains(&MdmOutcome::Throttled { early: false }),
        "{outcomes:?}"
    );
    assert!(
        !outcomes.contains(&MdmOutcome::Throttled { early: true }),
        "asked before Retry-After ran out: {outcomes:?}"
    );

    // 5xx, then success.
    graph.clear_faults();
    graph.clear_requests();
    graph.set_fail_next(2);
    let (out, json) = f.lookup(SINGLE).await;
    out.assert_success();
    assert_eq!(codes(&json).len(), 1);
    assert!(graph_outcomes(&f).contains(&MdmOutcome::InjectedFailure));

    // A token about to expire is renewed within one run.
    graph.clear_faults();
    graph.set_token_lifetime(Duration::from_secs(1));
    graph.set_latency(Duration::from_millis(400));
    graph.clear_requests();
    let (out, json) = f.lookup(TWO_RECORDS).await;
    out.assert_success();
    assert_eq!(codes(&json).len(), 2);
    assert!(
        graph.token_requests().len() >= 2,
        "token not renewed: {:?}",
        graph.token_requests().len()
    );
    assert!(!graph_outcomes(&f)
        .iter()
        .any(|o| matches!(o, MdmOutcome::Unauthorized { .. })));
    graph.clear_faults();
    graph.set_latency(Duration::ZERO);
    graph.set_token_lifetime(Duration::from_secs(3599));

    // A bad secret: the lookup fails (Intune is the only source) naming the reason, not the
    // secret.
    let real = graph.client_secret();
    graph.set_client_secret("a-different-secret-0123456789");
    let (out, json) = f.lookup(SINGLE).await;
    assert_eq!(out.status.code(), Some(1), "{out}");
    assert_eq!(json["error"]["code"], "codes-sources-failed");
    let message = json["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("invalid_client"), "{message}");
    assert_no_secrets(&out, &f.secrets());
    graph.set_client_secret(&real);

    // A missing permission is named.
    graph.set_permissions(&[]);
    let (out, json) = f.lookup(SINGLE).await;
    assert_eq!(out.status.code(), Some(1), "{out}");
    let message = json["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("DeviceManagementManagedDevices.Read.All"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activate_with_only_intune_and_with_the_remote_action() {
    let f = Fixture::start(&[ConfigSource::Intune]).await;

    // The chain stands in for --codes: a locked phone with its code in Intune activates.
    let (out, json) = f.activate(&f.config(), SINGLE, false).await;
    assert_eq!(json["outcome"], "activated", "{out}");
    assert_eq!(json["released_by"]["source"], "intune");
    assert_eq!(json["released_by"]["code"], masked(INTUNE_CODE).as_str());

    // Two records: this phone's (good) code is tried first.
    let (out, json) = f.activate(&f.config(), TWO_RECORDS, false).await;
    assert_eq!(json["outcome"], "activated", "{out}");
    assert_eq!(json["codes_tried"], 1);

    // No code and no action: locked_no_code, nothing sent to Intune.
    let (out, json) = f.activate(&f.config(), NO_CODE, false).await;
    assert_eq!(json["outcome"], "locked_no_code", "{out}");
    assert_eq!(out.status.code(), Some(7));
    assert!(json["remote_release"].is_null());
    let message = json["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("in Intune (intune) without a code: the code was removed by a reset"),
        "{message}"
    );

    // With the action enabled: Intune's bypassActivationLock is sent and watched, but a
    // record without a code gives the action nothing to hand Apple: the phone stays locked
    // and the report says what the action needs and can do.
    let (out, json) = f.activate(&f.config_with_action(), NO_CODE, true).await;
    assert_eq!(json["outcome"], "locked_no_code", "{out}");
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(json["remote_release"]["source"], "intune");
    assert_eq!(json["remote_release"]["action"], "bypassActivationLock");
    assert_eq!(json["remote_release"]["action_state"], "failed");
    assert_eq!(json["remote_release"]["record_has_code"], false);
    assert_eq!(json["codes_tried"], 0);
    let message = json["message"].as_str().unwrap_or_default();
    assert!(message.contains("Intune holds no bypass code"), "{message}");
    assert!(message.contains("Automated Device Enrollment"), "{message}");
    assert!(
        out.stderr
            .contains("asked the MDM to release the Activation Lock"),
        "{out}"
    );
    let posts: Vec<_> = f
        .bench
        .graph()
        .graph_requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect();
    assert_eq!(posts.len(), 1);
    assert!(posts[0].path.ends_with("/bypassActivationLock"));
    assert!(!f.released(NO_CODE));
    assert_no_secrets(&out, &f.secrets());

    // A personal Apple Account: no source knows it, the action has nothing to act on.
    let (out, json) = f
        .activate(&f.config_with_action(), USER_LOCKED, false)
        .await;
    assert_eq!(json["outcome"], "user_locked", "{out}");
    let message = json["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("not in Intune (intune): no record of the serial")
            && message.contains("personal Apple Account"),
        "the reason says the code may have vanished, not only a personal account: {message}"
    );
}

/// The phones of [`action_world`].
const STALE_IN_INTUNE: &str = "stale-in-intune";
const NOT_ADE: &str = "not-ade";

/// A world for `bypassActivationLock`: a record without a code, a record whose code Apple
/// no longer takes (the phone's current code is `GOOD`), and a phone not supervised through
/// ADE; `reading` is the stand-in's reading of the action (docs/mdm.md §1.3).
fn action_world(reading: &str) -> String {
    fixtures::world_with(
        22,
        &format!("[intune]\nbypass_action = \"{reading}\""),
        &[
            Phone::mdm_locked(NO_CODE, &[]),
            Phone::mdm_locked(STALE_IN_INTUNE, &[GOOD])
                .with("stale_codes", &toml_list(&[STALE]))
                .with("enrollments", &format!("[{{ code = \"{STALE}\" }}]")),
            Phone::mdm_locked(NOT_ADE, &[]).with("enrollments", "[{ ade_supervised = false }]"),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_action_submits_the_stored_code_and_cannot_help_without_one() {
    let f = Fixture::start_world(
        &action_world("submits_stored_code"),
        &[ConfigSource::Intune],
    )
    .await;
    let config = f.config_with_action();

    // No code on the record: nothing to submit.
    let (out, json) = f.activate(&config, NO_CODE, false).await;
    assert_eq!(json["outcome"], "locked_no_code", "{out}");
    assert_eq!(json["remote_release"]["action_state"], "failed");
    let message = json["message"].as_str().unwrap_or_default();
    assert!(message.contains("Intune holds no bypass code"), "{message}");
    assert!(
        message.contains("can only hand Apple a code Intune holds"),
        "{message}"
    );

    // A stale code: Apple rejects it from the station, and again from Intune.
    let (out, json) = f.activate(&config, STALE_IN_INTUNE, false).await;
    assert_eq!(json["outcome"], "locked_no_code", "{out}");
    assert_eq!(json["codes_tried"], 1);
    assert_eq!(json["remote_release"]["record_has_code"], true);
    let message = json["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("Apple rejected the code Intune holds"),
        "{message}"
    );

    // Not supervised through ADE: accepted, no effect, and the precondition is named.
    let (out, json) = f.activate(&config, NOT_ADE, false).await;
    assert_eq!(json["outcome"], "locked_no_code", "{out}");
    assert_eq!(json["remote_release"]["action_state"], "not_supported");
    let message = json["message"].as_str().unwrap_or_default();
    assert!(message.contains("had no effect"), "{message}");
    assert!(
        message.contains("supervised through Automated Device Enrollment (ADE)")
            && message.contains("Activation Lock Allowed While Supervised"),
        "{message}"
    );
    for phone in [NO_CODE, STALE_IN_INTUNE, NOT_ADE] {
        assert!(!f.released(phone), "{phone}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_action_that_refreshes_the_code_is_followed_by_the_new_code() {
    let f = Fixture::start_world(&action_world("refreshes_code"), &[ConfigSource::Intune]).await;
    let config = f.config_with_action();

    // The stale code is rejected, the action puts the phone's current code on the record,
    // the station reads it again and that code releases the lock.
    let (out, json) = f.activate(&config, STALE_IN_INTUNE, true).await;
    assert_eq!(json["outcome"], "activated", "{out}");
    assert_eq!(json["codes_tried"], 2);
    assert_eq!(json["released_by"]["code"], masked(GOOD).as_str());
    assert_eq!(json["released_by"]["source"], "intune");
    assert_eq!(json["remote_release"]["action"], "bypassActivationLock");
    assert_eq!(json["remote_release"]["action_state"], "done");
    let reads = f
        .bench
        .graph()
        .graph_requests()
        .into_iter()
        .filter(|r| {
            r.query_value("$select")
                .is_some_and(|q| q.contains("deviceActionResults"))
        })
        .count();
    assert!(reads >= 2, "the record is read before and after the action");
    assert_no_secrets(&out, &f.secrets());

    // A record that never held a code gets none: the phone stays locked.
    let (out, json) = f.activate(&config, NO_CODE, false).await;
    assert_eq!(json["outcome"], "locked_no_code", "{out}");
    assert_eq!(json["remote_release"]["record_has_code"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_credential_instead_of_a_secret() {
    use std::os::unix::fs::PermissionsExt;
    let f = Fixture::start(&[ConfigSource::Intune]).await;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("RSA key");
    let cert = rcgen::CertificateParams::new(vec!["station".to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("certificate");
    f.bench
        .graph()
        .add_certificate_pem(&cert.pem())
        .expect("the stand-in takes the certificate");
    let cert_file = f.dir.path().join("intune.pem");
    let key_file = f.dir.path().join("intune.key");
    std::fs::write(&cert_file, cert.pem()).expect("write cert");
    std::fs::write(&key_file, key.serialize_pem()).expect("write key");

    // A key file others can read is refused before any request.
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let text = std::fs::read_to_string(f.config()).expect("config");
    let secret_line = text
        .lines()
        .find(|l| l.starts_with("client_secret"))
        .expect("client_secret line")
        .to_string();
    let config = f.dir.path().join("station-cert.toml");
    std::fs::write(
        &config,
        text.replace(
            &secret_line,
            &format!(
                "certificate = {{ cert_file = {:?}, key_file = {:?} }}",
                cert_file.display().to_string(),
                key_file.display().to_string()
            ),
        ),
    )
    .expect("write config");
    let d = f.device(SINGLE);
    let args = ["--json", "codes", "lookup", "--serial", &d.serial];
    let out = f.station(&config, &args, false).await;
    assert_eq!(out.status.code(), Some(2), "{out}");
    assert!(out.stdout.contains("chmod 600"), "{out}");

    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    // The station's default (PS256, `x5t#S256`) passes a tenant that refuses RS256.
    f.bench.graph().set_strict_assertions(true);
    let out = f.station(&config, &args, true).await;
    f.bench.graph().set_strict_assertions(false);
    out.assert_success();
    let json: Value =
        serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"));
    assert_eq!(
        codes(&json),
        vec![(masked(INTUNE_CODE), "device".into(), "intune".into())]
    );
    let token = &f.bench.graph().token_requests()[0];
    assert!(token.fields.iter().any(|n| n == "client_assertion"));
    assert!(!token.fields.iter().any(|n| n == "client_secret"));
    let mut secrets = f.secrets();
    secrets.push(
        key.serialize_pem()
            .lines()
            .nth(1)
            .expect("a key line")
            .to_string(),
    );
    assert_no_secrets(&out, &secrets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_token_or_code_in_any_output_at_trace_level() {
    let f = Fixture::start(&[ConfigSource::Intune, ConfigSource::Kandji]).await;
    let secrets = f.secrets();
    for phone in [SINGLE, TWO_RECORDS, KANDJI, USER_LOCKED] {
        let d = f.device(phone);
        for json in [true, false] {
            let mut args = vec!["codes", "lookup", "--serial", &d.serial, "--udid", &d.udid];
            if json {
                args.insert(0, "--json");
            }
            let out = f.station(&f.config(), &args, true).await;
            out.assert_success();
            assert!(out.stderr.contains("TRACE"), "not at trace level: {out}");
            assert_no_secrets(&out, &secrets);
        }
    }
    // Activations release locks with the codes: still nothing in the output.
    for phone in [SINGLE, TWO_RECORDS, KANDJI] {
        let (out, json) = f.activate(&f.config(), phone, true).await;
        assert_eq!(json["outcome"], "activated", "{out}");
        assert_no_secrets(&out, &secrets);
    }
    // The check would catch a leak: --reveal shows the code.
    let d = f.device(SINGLE);
    let out = f
        .station(
            &f.config(),
            &["codes", "lookup", "--serial", &d.serial, "--reveal"],
            true,
        )
        .await;
    assert!(out.stdout.contains(INTUNE_CODE));
    assert!(
        !out.stderr.contains(INTUNE_CODE),
        "a revealed code was logged"
    );
}

/// Two phones whose handshake sessions end 4 s after they began, their codes in Intune, and
/// a clean phone.
fn short_session_world() -> String {
    fixtures::world(
        22,
        &[
            Phone::mdm_locked(FIRST, &[CODE_A]).with("activation_session_lifetime_ms", "4000"),
            Phone::mdm_locked(SECOND, &[CODE_B]).with("activation_session_lifetime_ms", "4000"),
            Phone::named(CLEAN).with("intune", "true"),
        ],
    )
}

/// The phones of [`short_session_world`].
const FIRST: &str = "first";
const SECOND: &str = "second";
const CLEAN: &str = "clean";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_mdm_never_leaves_the_phone_with_a_stale_session() {
    let bench = InProcBench::start_with(&short_session_world(), |config| {
        config.station_config_sources = vec![ConfigSource::Intune];
    })
    .await;
    let config_with = |max_age: u64| {
        let text = std::fs::read_to_string(bench.bench.station_config()).expect("read config");
        let text = text.replacen(
            "[activation]\n",
            &format!("[activation]\nsession_max_age_secs = {max_age}\n"),
            1,
        );
        let path = bench.path(&format!("station-{max_age}.toml"));
        std::fs::write(&path, text).expect("write config");
        path.display().to_string()
    };
    let activate = |config: String, phone: &'static str| {
        let bench = &bench;
        async move {
            bench
                .activate_json(bench.udid(phone), Some(&config), &[])
                .await
        }
    };
    let handshakes = |phone: &str| {
        bench
            .albert_requests(phone, station_sim::Endpoint::DrmHandshake)
            .len()
    };
    let graph = bench.bench.graph();

    // Intune throttles twice for 3 s: the code arrives ~6 s after the look-up began, and
    // the look-up began before the handshake. Older than 2 s, the session is started
    // again before the code goes out, and the phone takes the record.
    graph.set_throttle_next(2, Duration::from_secs(3));
    let (out, json) = activate(config_with(2), FIRST).await;
    assert_eq!(json["outcome"], "activated", "{out}");
    assert_eq!(json["codes_tried"], 1);
    assert_eq!(handshakes(FIRST), 2, "the handshake was redone");
    let outcomes: Vec<MdmOutcome> = graph
        .graph_requests()
        .into_iter()
        .map(|r| r.outcome)
        .collect();
    assert!(
        outcomes.contains(&MdmOutcome::Throttled { early: false }),
        "{outcomes:?}"
    );
    assert!(
        !outcomes.contains(&MdmOutcome::Throttled { early: true }),
        "{outcomes:?}"
    );
    // The look-up began alongside the exchange, not at the lock form: the MDM heard from
    // the station (its token request) before Apple got the activation request. (Which of
    // the token and the handshake goes out first is a race between two tasks.)
    let first_mdm_contact = graph.requests()[0].at;
    let first_activation = bench
        .albert_requests(FIRST, station_sim::Endpoint::DeviceActivation)
        .into_iter()
        .next()
        .expect("a deviceActivation request");
    assert!(
        first_mdm_contact < first_activation.at,
        "look-up started only at the lock form"
    );
    assert_eq!(bench.ideviceinfo_state(FIRST).await, "Activated");

    // The same wait with a bound above it: the code answers the old session, and the
    // phone, whose session has ended meanwhile, refuses the record.
    graph.set_throttle_next(2, Duration::from_secs(3));
    let (out, json) = activate(config_with(60), SECOND).await;
    assert_eq!(json["outcome"], "device_error", "{out}");
    assert_eq!(json["step"], "apply_record", "{out}");
    assert_eq!(handshakes(SECOND), 1);
    assert_eq!(bench.ideviceinfo_state(SECOND).await, "Unactivated");

    // A clean phone never waits on the MDM: its look-up is dropped with the record.
    graph.set_throttle_next(2, Duration::from_secs(3));
    let (out, json) = activate(config_with(2), CLEAN).await;
    assert_eq!(json["outcome"], "activated", "{out}");
    let elapsed = json["elapsed_ms"].as_u64().unwrap_or(u64::MAX);
    assert!(elapsed < 3000, "waited {elapsed} ms on a throttled MDM");
}
