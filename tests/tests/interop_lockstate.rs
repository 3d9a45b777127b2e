//! Find My, passcode and the cloud configuration (docs/protocol.md §3.6–3.7): the peers' own
//! tools read the virtual phones as the world sets them, and the station's protocol client
//! (`station_protocol::mcinstall`) reads the same values.
//!
//! - `ideviceinfo -q com.apple.fmip -k IsAssociated`: true only on the activated phone with
//!   Find My on; false on the others, the erased Activation-Locked one included;
//! - `pymobiledevice3 profile cloud-configuration`: the supervised phone's `IsSupervised`,
//!   `OrganizationName` and `ConfigurationURL`; `null` for a phone without a configuration.

use std::time::Duration;

use serde_json::Value;
use station_protocol::channel::PlistChannel;
use station_protocol::lockdown::{LockdownClient, LockdownErrorKind};
use station_protocol::mcinstall::{self, CloudConfiguration, McInstallClient};
use station_protocol::pairing::{generate_pair_record, PairRecord};
use station_protocol::usbmux::UsbmuxStream;
use station_tests::fixtures::{self, Phone};
use station_tests::inproc::{HandLockdown, InProcBench};
use station_tests::{Bench, ReadyDevice};

const FIND_MY: &str = "find-my";
const ACTIVATED: &str = "activated";
const SUPERVISED: &str = "supervised";
/// Erased and Activation-Locked to a person: Find My still answers false (§3.6).
const USER_LOCKED: &str = "user-locked";
const PASSCODE: &str = "passcode";

const ORGANIZATION: &str = "Example School District";
const CONFIGURATION_URL: &str = "https://mdm.example.org/enroll";

const STEP: Duration = Duration::from_secs(20);

fn world() -> String {
    fixtures::world(
        31,
        &[
            Phone::activated(FIND_MY).with("find_my", "true"),
            Phone::activated(ACTIVATED),
            Phone::activated(SUPERVISED)
                .with("supervised", "true")
                .with("organization", &format!("{ORGANIZATION:?}"))
                .with("configuration_url", &format!("{CONFIGURATION_URL:?}"))
                .with("mdm_unremovable", "true"),
            Phone::user_locked(USER_LOCKED),
            Phone::activated(PASSCODE).with("passcode_locked", "true"),
        ],
    )
}

/// `station-sim serve --world` with [`world`], and the world file's directory.
fn bench() -> (Bench, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("lockstate.toml");
    std::fs::write(&path, world()).expect("write world");
    let bench = Bench::start_with(&["--world", &path.to_string_lossy()]);
    (bench, dir)
}

#[track_caller]
fn named<'a>(bench: &'a Bench, name: &str) -> &'a ReadyDevice {
    bench
        .ready
        .devices
        .iter()
        .find(|d| d.raw.get("device_name").and_then(Value::as_str) == Some(name))
        .unwrap_or_else(|| panic!("no phone named {name}: {}", bench.ready.raw))
}

#[test]
fn ideviceinfo_reads_find_my_as_the_world_sets_it() {
    let (bench, _dir) = bench();
    for (name, expected) in [
        (FIND_MY, "true"),
        (ACTIVATED, "false"),
        (SUPERVISED, "false"),
        (USER_LOCKED, "false"),
    ] {
        let udid = named(&bench, name).udid.clone();
        bench
            .idevice("idevicepair", &["-u", &udid, "pair"])
            .assert_success();
        let out = bench.idevice(
            "ideviceinfo",
            &["-u", &udid, "-q", "com.apple.fmip", "-k", "IsAssociated"],
        );
        out.assert_success();
        assert_eq!(out.stdout.trim(), expected, "{name}: {out}");
    }
}

#[test]
fn pymobiledevice3_reads_the_cloud_configuration() {
    let (bench, _dir) = bench();
    let supervised = named(&bench, SUPERVISED).udid.clone();
    let out = bench.pmd3(&["profile", "cloud-configuration", "--udid", &supervised]);
    out.assert_success();
    let config = out.json();
    assert_eq!(config["IsSupervised"], Value::Bool(true), "{out}");
    assert_eq!(config["OrganizationName"], ORGANIZATION, "{out}");
    assert_eq!(config["ConfigurationURL"], CONFIGURATION_URL, "{out}");
    assert_eq!(config["IsMDMUnremovable"], Value::Bool(true), "{out}");

    // No configuration: the answer holds the status alone, which pymobiledevice3 prints as null.
    let plain = named(&bench, ACTIVATED).udid.clone();
    let out = bench.pmd3(&["profile", "cloud-configuration", "--udid", &plain]);
    out.assert_success();
    assert_eq!(out.json(), Value::Null, "{out}");
}

/// What the station's protocol client reads from one phone: Find My and the passcode from
/// lockdown, the cloud configuration from MCInstall (its TLS as lockdown asks).
struct Read {
    find_my: Option<bool>,
    passcode_set: Option<bool>,
    cloud: CloudConfiguration,
}

async fn read_with_the_protocol_client(bench: &InProcBench, udid: &str) -> Read {
    let HandLockdown {
        mut lockdown,
        buid,
        device_id,
    } = bench.lockdown_by_hand(udid, "lockstate-test").await;
    let record = pair(&mut lockdown, &buid).await;
    let tls =
        station_protocol::tls::client_config(&record.host_certificate, &record.host_private_key)
            .expect("client config");
    lockdown
        .start_session(&record.host_id, &record.system_buid, tls.clone())
        .await
        .expect("session");
    let find_my = lockdown
        .get_value(Some("com.apple.fmip"), Some("IsAssociated"))
        .await
        .expect("IsAssociated")
        .as_boolean();
    let passcode_set = lockdown
        .get_value(None, Some("PasswordProtected"))
        .await
        .expect("PasswordProtected")
        .as_boolean();
    let service = lockdown
        .start_service(mcinstall::SERVICE, None)
        .await
        .expect("StartService MCInstall");
    assert!(service.ssl, "a phone asks for TLS on MCInstall");
    let stream = bench
        .usbmux_client()
        .await
        .connect(device_id, service.port)
        .await
        .expect("service port");
    let mut channel = PlistChannel::new(stream);
    channel.set_timeout(Some(STEP));
    channel.start_tls_client(tls).await.expect("service TLS");
    let mut client = McInstallClient::new(channel);
    // The order go-ios uses before it reads the configuration.
    client.flush().await.expect("Flush");
    let cloud = client.cloud_configuration().await.expect("configuration");
    client
        .hello_host_identifier()
        .await
        .expect("HelloHostIdentifier");
    client.close().await;
    let _ = lockdown.stop_session().await;
    let _ = lockdown.goodbye().await;
    Read {
        find_my,
        passcode_set,
        cloud,
    }
}

async fn pair(lockdown: &mut LockdownClient<UsbmuxStream>, buid: &str) -> PairRecord {
    let key = lockdown
        .get_value(None, Some("DevicePublicKey"))
        .await
        .expect("DevicePublicKey");
    let key = key.as_data().expect("key is data").to_vec();
    let buid = buid.to_string();
    let mut record =
        tokio::task::spawn_blocking(move || generate_pair_record(&key, &buid, None, None))
            .await
            .expect("join")
            .expect("pair record");
    record.escrow_bag = lockdown
        .pair(record.pair_request_value())
        .await
        .expect("Pair");
    record
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_protocol_client_reads_what_the_peers_read() {
    let bench = InProcBench::start(&world()).await;
    let read = |name: &'static str| {
        let udid = bench.udid(name).to_string();
        let bench = &bench;
        async move {
            tokio::time::timeout(STEP * 2, read_with_the_protocol_client(bench, &udid))
                .await
                .unwrap_or_else(|_| panic!("{name} read in time"))
        }
    };

    let r = read(FIND_MY).await;
    assert_eq!(r.find_my, Some(true));
    assert_eq!(r.passcode_set, Some(false));
    assert_eq!(r.cloud, CloudConfiguration::default(), "no configuration");
    assert!(!r.cloud.is_present());

    let r = read(SUPERVISED).await;
    assert_eq!(r.find_my, Some(false));
    assert_eq!(
        r.cloud,
        CloudConfiguration {
            supervised: Some(true),
            organization: Some(ORGANIZATION.into()),
            mdm_enrolled: Some(true),
            mdm_unremovable: Some(true),
        }
    );

    // Erased and Activation-Locked: Find My says false, and there is no configuration.
    let r = read(USER_LOCKED).await;
    assert_eq!(r.find_my, Some(false));
    assert_eq!(r.cloud.supervised, None);

    // A passcode-locked phone cannot show the Trust prompt: Pair is refused as such.
    let udid = bench.udid(PASSCODE).to_string();
    let HandLockdown {
        mut lockdown, buid, ..
    } = bench.lockdown_by_hand(&udid, "lockstate-test").await;
    let key = lockdown
        .get_value(None, Some("DevicePublicKey"))
        .await
        .expect("DevicePublicKey")
        .as_data()
        .expect("data")
        .to_vec();
    let record = tokio::task::spawn_blocking(move || generate_pair_record(&key, &buid, None, None))
        .await
        .expect("join")
        .expect("pair record");
    let err = lockdown
        .pair(record.pair_request_value())
        .await
        .expect_err("a passcode-locked phone refuses to pair");
    assert_eq!(
        err.kind(),
        Some(&LockdownErrorKind::PasswordProtected),
        "{err}"
    );
}
