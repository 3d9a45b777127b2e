//! Test helpers: start a bench on a temporary socket and talk to it with plain tokio and
//! `station_protocol` codecs. Every await goes through [`within`], so no test can hang.

#![allow(dead_code)]

pub mod flow;

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use plist::{Dictionary, Value};
use station_protocol::channel::PlistChannel;
use station_protocol::frame::dict;
use station_protocol::lockdown::LOCKDOWN_PORT;
use station_protocol::pairing::{generate_pair_record, HostIdentity, PairRecord};
use station_protocol::usbmux::{self, Packet};
use station_sim::{Bench, BenchConfig, DeviceSpec, World};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

/// Upper bound for any single step of a test.
pub const STEP: Duration = Duration::from_secs(20);

pub async fn within<F: Future>(fut: F) -> F::Output {
    tokio::time::timeout(STEP, fut)
        .await
        .expect("step timed out")
}

pub struct TestBench {
    pub bench: Bench,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub dir: tempfile::TempDir,
}

impl TestBench {
    pub fn udids(&self) -> Vec<String> {
        self.bench
            .ready_info()
            .devices
            .into_iter()
            .map(|d| d.udid)
            .collect()
    }

    pub fn device_id(&self, udid: &str) -> u32 {
        self.bench
            .ready_info()
            .devices
            .into_iter()
            .find(|d| d.udid == udid)
            .and_then(|d| d.device_id)
            .expect("device is plugged in")
    }

    pub async fn shutdown(self) -> tempfile::TempDir {
        within(self.bench.shutdown()).await;
        self.dir
    }
}

pub fn config(dir: &tempfile::TempDir, world: World) -> BenchConfig {
    BenchConfig::new(
        dir.path().join("usbmuxd.sock"),
        world,
        dir.path().join("state"),
    )
}

pub async fn start(world: World) -> TestBench {
    start_with(world, |_| {}).await
}

pub async fn start_with(world: World, tweak: impl FnOnce(&mut BenchConfig)) -> TestBench {
    let dir = tempfile::tempdir().expect("tempdir");
    start_in(dir, world, tweak).await
}

pub async fn start_in(
    dir: tempfile::TempDir,
    world: World,
    tweak: impl FnOnce(&mut BenchConfig),
) -> TestBench {
    let mut cfg = config(&dir, world);
    tweak(&mut cfg);
    let socket = cfg.socket.clone();
    let state_dir = cfg.state_dir.clone();
    let bench = within(Bench::start(cfg)).await.expect("bench starts");
    TestBench {
        bench,
        socket,
        state_dir,
        dir,
    }
}

/// A world of explicit device specs (the rest generated from `seed`).
pub fn world(seed: u64, devices: Vec<DeviceSpec>) -> World {
    World {
        seed,
        devices,
        ..World::default()
    }
}

pub async fn mux(socket: &std::path::Path) -> UnixStream {
    within(UnixStream::connect(socket))
        .await
        .expect("connect to bench socket")
}

pub async fn send_plist(stream: &mut UnixStream, tag: u32, value: &Value) {
    within(stream.write_all(&usbmux::plist_packet_bytes(tag, value)))
        .await
        .expect("write");
}

pub async fn read_packet(stream: &mut UnixStream) -> Packet {
    within(usbmux::read_packet(stream))
        .await
        .expect("read packet")
}

pub fn request(kind: &str, extra: Vec<(&str, Value)>) -> Value {
    let mut d = Dictionary::new();
    d.insert("MessageType".into(), kind.into());
    d.insert("ProgName".into(), "sim-tests".into());
    d.insert("kLibUSBMuxVersion".into(), Value::Integer(3u64.into()));
    for (k, v) in extra {
        d.insert(k.into(), v);
    }
    Value::Dictionary(d)
}

/// One plist request on a fresh connection; returns the reply packet.
pub async fn mux_call(socket: &std::path::Path, value: &Value) -> Packet {
    let mut s = mux(socket).await;
    send_plist(&mut s, 7, value).await;
    let p = read_packet(&mut s).await;
    assert_eq!(p.header.tag, 7, "reply echoes the tag");
    assert_eq!(p.header.version, 1, "plist replies use protocol 1");
    p
}

pub fn result_number(p: &Packet) -> Option<u64> {
    let v = p.plist().ok()?;
    let d = v.as_dictionary()?;
    (d.get("MessageType")?.as_string()? == "Result").then_some(())?;
    d.get("Number")?.as_unsigned_integer()
}

/// usbmuxd `Connect`: the stream on success, the result code on refusal.
pub async fn connect(
    socket: &std::path::Path,
    device_id: u32,
    port: u16,
) -> Result<UnixStream, u64> {
    let mut s = mux(socket).await;
    let req = request(
        "Connect",
        vec![
            ("DeviceID", Value::Integer(u64::from(device_id).into())),
            (
                "PortNumber",
                Value::Integer(u64::from(usbmux::swap_port(port)).into()),
            ),
        ],
    );
    send_plist(&mut s, 3, &req).await;
    let p = read_packet(&mut s).await;
    match result_number(&p).expect("Connect answers a Result") {
        0 => Ok(s),
        n => Err(n),
    }
}

pub async fn lockdown(bench: &TestBench, udid: &str) -> PlistChannel<UnixStream> {
    let stream = connect(&bench.socket, bench.device_id(udid), LOCKDOWN_PORT)
        .await
        .expect("lockdown port is open");
    PlistChannel::new(stream)
}

/// Sends a lockdown request and returns the reply dictionary.
pub async fn call(
    ch: &mut PlistChannel<UnixStream>,
    request: &str,
    extra: Vec<(&str, Value)>,
) -> Dictionary {
    let mut d = Dictionary::new();
    d.insert("Label".into(), "sim-tests".into());
    d.insert("Request".into(), request.into());
    for (k, v) in extra {
        d.insert(k.into(), v);
    }
    within(ch.send(&Value::Dictionary(d))).await.expect("send");
    let reply = within(ch.recv()).await.expect("reply");
    let reply = reply.into_dictionary().expect("reply is a dictionary");
    assert_eq!(
        reply.get("Request").and_then(Value::as_string),
        Some(request),
        "reply echoes Request: {reply:?}"
    );
    reply
}

pub fn error_of(reply: &Dictionary) -> Option<&str> {
    reply.get("Error").and_then(Value::as_string)
}

/// One host identity for the whole test binary: only device certificates are per phone.
pub async fn host_identity() -> Arc<HostIdentity> {
    static IDENTITY: OnceLock<Arc<HostIdentity>> = OnceLock::new();
    if let Some(id) = IDENTITY.get() {
        return id.clone();
    }
    let id = within(tokio::task::spawn_blocking(HostIdentity::generate))
        .await
        .expect("join")
        .expect("host identity");
    IDENTITY.get_or_init(|| Arc::new(id)).clone()
}

/// Reads the phone's key over lockdown and makes a pair record for it, as a host does.
pub async fn make_record(ch: &mut PlistChannel<UnixStream>, system_buid: &str) -> PairRecord {
    let reply = call(ch, "GetValue", vec![("Key", "DevicePublicKey".into())]).await;
    let key = reply
        .get("Value")
        .and_then(Value::as_data)
        .expect("DevicePublicKey is data")
        .to_vec();
    let identity = host_identity().await;
    let buid = system_buid.to_string();
    within(tokio::task::spawn_blocking(move || {
        generate_pair_record(&key, &buid, None, Some(&identity))
    }))
    .await
    .expect("join")
    .expect("pair record")
}

pub async fn pair(ch: &mut PlistChannel<UnixStream>, record: &PairRecord) -> Dictionary {
    call(
        ch,
        "Pair",
        vec![
            ("PairRecord", record.pair_request_value()),
            ("ProtocolVersion", "2".into()),
            (
                "PairingOptions",
                dict([("ExtendedPairingErrors", Value::Boolean(true))]),
            ),
        ],
    )
    .await
}

/// StartSession up to (not including) the TLS handshake; returns the SessionID.
pub async fn request_session(ch: &mut PlistChannel<UnixStream>, record: &PairRecord) -> String {
    let reply = call(
        ch,
        "StartSession",
        vec![
            ("HostID", record.host_id.clone().into()),
            ("SystemBUID", record.system_buid.clone().into()),
        ],
    )
    .await;
    assert_eq!(error_of(&reply), None, "{reply:?}");
    assert_eq!(
        reply.get("EnableSessionSSL").and_then(Value::as_boolean),
        Some(true)
    );
    reply
        .get("SessionID")
        .and_then(Value::as_string)
        .expect("SessionID")
        .to_string()
}

/// StartSession and the TLS handshake with the host certificate (or the root one).
pub async fn start_session(
    ch: &mut PlistChannel<UnixStream>,
    record: &PairRecord,
    use_root: bool,
) -> String {
    let session_id = request_session(ch, record).await;
    let (cert, key) = if use_root {
        (&record.root_certificate, &record.root_private_key)
    } else {
        (&record.host_certificate, &record.host_private_key)
    };
    let cfg = station_protocol::tls::client_config(cert, key).expect("client TLS config");
    within(ch.start_tls_client(cfg))
        .await
        .expect("TLS handshake");
    session_id
}
