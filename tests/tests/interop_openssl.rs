//! The station's TLS client against the real `openssl s_server` (OpenSSL 3), standing in for a
//! phone (docs/protocol.md §4.6): TLS 1.2 with ECDHE-RSA-AES256-GCM-SHA384 and a required client
//! certificate, presenting a DeviceCertificate made by the station's pairing code, with a
//! SHA-256 and with a SHA-1-signed pair record; and a TLS 1.0-only server (an iOS 9 phone),
//! which the station must name as such at once instead of failing vaguely or hanging.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use station_protocol::channel::{ChannelError, PlistChannel};
use station_protocol::pairing::{generate_pair_record, DeviceKeyPair, PairRecord};
use station_protocol::tls_engine::{NegotiatedTls, TlsVersion, ECDHE_RSA_AES_256_GCM_SHA384};
use station_tests::sha1_records::sha1_signed;
use station_tests::{block_on, run_with_timeout};
use tokio::net::TcpStream;

const STEP: Duration = Duration::from_secs(10);

/// The `openssl` binary; installed by `scripts/test` (Debian package `openssl`).
fn openssl_bin() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("openssl"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("`openssl` is not on PATH: run `scripts/test` (or `apt-get install openssl`)")
        })
}

/// A pair record for a fresh phone key, plus the phone's private key (what s_server needs to
/// play the phone).
fn record_and_phone_key() -> (PairRecord, DeviceKeyPair) {
    let device = DeviceKeyPair::generate().expect("device key");
    let record = generate_pair_record(device.public_key_pem.as_bytes(), "BUID", None, None)
        .expect("pair record");
    (record, device)
}

/// `openssl s_server` on 127.0.0.1, a free port, one connection per `naccept`.
struct SServer {
    child: Child,
    port: u16,
    stdout: Arc<Mutex<String>>,
}

impl SServer {
    fn start(dir: &Path, args: &[&str]) -> SServer {
        let mut child = Command::new(openssl_bin())
            .arg("s_server")
            .args(["-accept", "127.0.0.1:0"])
            .args(args)
            .current_dir(dir)
            // An open stdin keeps s_server serving (EOF on stdin ends its session).
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn openssl s_server");
        let stdout = Arc::new(Mutex::new(String::new()));
        let (port_tx, port_rx) = mpsc::channel();
        let out = child.stdout.take().expect("stdout");
        let sink = Arc::clone(&stdout);
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                // "ACCEPT 127.0.0.1:PORT" once it listens.
                if let Some(port) = line
                    .strip_prefix("ACCEPT ")
                    .and_then(|a| a.rsplit(':').next())
                    .and_then(|p| p.trim().parse::<u16>().ok())
                {
                    let _ = port_tx.send(port);
                }
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&line);
                    s.push('\n');
                }
            }
        });
        let mut err = child.stderr.take().expect("stderr");
        let sink = Arc::clone(&stdout);
        thread::spawn(move || {
            let mut text = String::new();
            let _ = err.read_to_string(&mut text);
            if let Ok(mut s) = sink.lock() {
                s.push_str(&text);
            }
        });
        let port = match port_rx.recv_timeout(STEP) {
            Ok(port) => port,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "s_server did not listen: {:?}",
                    stdout.lock().map(|s| s.clone())
                );
            }
        };
        SServer {
            child,
            port,
            stdout,
        }
    }

    /// Everything s_server printed, after it exited (or was killed after `STEP`).
    fn finish(mut self) -> String {
        let deadline = Instant::now() + STEP;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Let the reader threads drain the pipes.
        thread::sleep(Duration::from_millis(100));
        self.stdout.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Drop for SServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The station's TLS client (as `station` builds it from a pair record) connecting to `port`.
async fn station_handshake(
    port: u16,
    record: &PairRecord,
) -> Result<(NegotiatedTls, PlistChannel<TcpStream>), ChannelError> {
    let stream = tokio::time::timeout(STEP, TcpStream::connect(("127.0.0.1", port)))
        .await
        .map_err(|_| ChannelError::Timeout(STEP))??;
    let mut channel = PlistChannel::new(stream);
    channel.set_timeout(Some(STEP));
    let config =
        station_protocol::tls::client_config(&record.host_certificate, &record.host_private_key)
            .expect("client config");
    channel.start_tls_client(config).await?;
    let negotiated = channel.negotiated_tls().expect("TLS is up");
    Ok((negotiated, channel))
}

/// The base64 body of a PEM certificate, for finding it in s_server's output.
fn pem_body(pem_bytes: &[u8]) -> String {
    String::from_utf8_lossy(pem_bytes)
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect()
}

/// Plays a phone on TLS 1.2 with `record`'s device certificate and checks the station's
/// client negotiates what a real phone does and presents the record's host certificate.
fn phone_like_server_accepts(record: &PairRecord, phone: &DeviceKeyPair, cipher: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("device.pem"), &record.device_certificate).expect("write");
    std::fs::write(dir.path().join("device.key"), &phone.private_key_pem).expect("write");
    let server = SServer::start(
        dir.path(),
        &[
            "-naccept",
            "1",
            "-tls1_2",
            "-cipher",
            cipher,
            // A client certificate is required. Its chain is not checked, as phones do not
            // check it (OpenSSL cannot build one to the empty-subject pairing root anyway):
            // the certificate itself is compared below.
            "-Verify",
            "1",
            "-cert",
            "device.pem",
            "-key",
            "device.key",
        ],
    );
    let port = server.port;
    let negotiated = block_on(async {
        let (negotiated, mut channel) = station_handshake(port, record).await.expect("handshake");
        channel.shutdown().await.expect("close_notify");
        negotiated
    });
    assert_eq!(negotiated.version, TlsVersion::Tls1_2);
    assert_eq!(negotiated.cipher_suite, ECDHE_RSA_AES_256_GCM_SHA384);
    let output = server.finish();
    assert!(
        output.contains("Client certificate"),
        "s_server saw no client certificate:\n{output}"
    );
    let printed: String = output.lines().map(str::trim).collect();
    assert!(
        printed.contains(&pem_body(&record.host_certificate)),
        "the station must present the record's HostCertificate:\n{output}"
    );
}

#[test]
fn station_client_speaks_tls_1_2_to_openssl_with_a_sha256_pair_record() {
    let (record, phone) = record_and_phone_key();
    phone_like_server_accepts(&record, &phone, "ECDHE-RSA-AES256-GCM-SHA384");
}

#[test]
fn station_client_speaks_tls_1_2_to_openssl_with_a_sha1_pair_record() {
    let (record, phone) = record_and_phone_key();
    let record = sha1_signed(&record).expect("SHA-1 record");
    // OpenSSL 3 refuses SHA-1 certificate signatures above security level 0; phones accept
    // them (go-ios signs every pairing certificate with SHA-1).
    phone_like_server_accepts(&record, &phone, "ECDHE-RSA-AES256-GCM-SHA384:@SECLEVEL=0");
}

#[test]
fn station_client_names_a_tls_1_0_only_server_at_once() {
    let (record, phone) = record_and_phone_key();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("device.pem"), &record.device_certificate).expect("write");
    std::fs::write(dir.path().join("device.key"), &phone.private_key_pem).expect("write");
    let server = SServer::start(
        dir.path(),
        &[
            "-naccept",
            "2",
            "-tls1",
            // TLS 1.0 needs security level 0 in OpenSSL 3.
            "-cipher",
            "DEFAULT:@SECLEVEL=0",
            "-cert",
            "device.pem",
            "-key",
            "device.key",
        ],
    );
    let port = server.port;
    let started = Instant::now();
    let err = block_on(station_handshake(port, &record))
        .map(|(n, _)| n)
        .expect_err("the station does not speak TLS 1.0");
    let elapsed = started.elapsed();
    assert!(
        matches!(err, ChannelError::PeerTlsTooOld { .. }),
        "expected the old-TLS error, got {err:?}"
    );
    assert!(elapsed < Duration::from_secs(2), "fails fast: {elapsed:?}");

    // The same server does complete a TLS 1.0 handshake with a TLS 1.0 client: the failure
    // above is about the version, not a broken server.
    let mut client = Command::new(openssl_bin());
    client
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(["-tls1", "-cipher", "DEFAULT:@SECLEVEL=0"])
        .stdin(Stdio::null());
    let out = run_with_timeout(client, STEP);
    let text = out.combined();
    assert!(
        text.contains("Protocol  : TLSv1\n") || text.contains("New, TLSv1, Cipher"),
        "TLS 1.0 client against the TLS 1.0 server:\n{text}"
    );
    drop(server);
}

/// A virtual phone's server TLS (exactly what its lockdown uses) on a loopback port, for one
/// connection; resolves to what the handshake negotiated.
async fn serve_phone_tls_once(
    tls: station_sim::phone::tls::ServerTls,
) -> (
    u16,
    tokio::task::JoinHandle<Result<NegotiatedTls, ChannelError>>,
) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .expect("bind 127.0.0.1:0");
    let port = listener.local_addr().expect("local address").port();
    let task = tokio::spawn(async move {
        let (stream, _) = tokio::time::timeout(STEP, listener.accept())
            .await
            .map_err(|_| ChannelError::Timeout(STEP))??;
        let mut channel = PlistChannel::new(stream);
        channel.set_timeout(Some(STEP));
        channel.start_tls(tls.engine()?).await?;
        channel.negotiated_tls().ok_or(ChannelError::Closed)
    });
    (port, task)
}

/// `openssl s_client` presenting the record's host certificate; returns what it printed.
async fn s_client(dir: &Path, port: u16, extra: &[&str]) -> String {
    let mut cmd = Command::new(openssl_bin());
    cmd.args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(["-cert", "host.pem", "-key", "host.key"])
        .args(extra)
        .current_dir(dir)
        .stdin(Stdio::null());
    tokio::task::spawn_blocking(move || run_with_timeout(cmd, STEP).combined())
        .await
        .expect("join")
}

fn phone_tls_fixture(
    generation: station_sim::phone::tls::TlsGeneration,
) -> (tempfile::TempDir, station_sim::phone::tls::ServerTls) {
    let (record, phone) = record_and_phone_key();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("host.pem"), &record.host_certificate).expect("write");
    std::fs::write(dir.path().join("host.key"), &record.host_private_key).expect("write");
    let device_der = pem::parse(&record.device_certificate)
        .expect("PEM")
        .into_contents();
    let host_der = pem::parse(&record.host_certificate)
        .expect("PEM")
        .into_contents();
    let tls = station_sim::phone::tls::ServerTls::build(
        generation,
        &device_der,
        phone.private_key_pem.as_bytes(),
        vec![host_der],
    )
    .expect("phone TLS");
    (dir, tls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_client_sees_what_a_real_modern_phone_offers() {
    use station_sim::phone::tls::TlsGeneration;
    let (dir, tls) = phone_tls_fixture(TlsGeneration::Tls12);
    let (port, phone) = serve_phone_tls_once(tls).await;
    // s_client offers TLS 1.3 and 1.2, every group and many suites, like any modern host.
    let out = s_client(dir.path(), port, &[]).await;
    let negotiated = phone.await.expect("join").expect("phone handshake");
    assert_eq!(negotiated.version, TlsVersion::Tls1_2);
    assert_eq!(negotiated.cipher_suite, ECDHE_RSA_AES_256_GCM_SHA384);
    for seen in [
        "New, TLSv1.2, Cipher is ECDHE-RSA-AES256-GCM-SHA384",
        "Server Temp Key: ECDH, prime256v1, 256 bits",
        // The CertificateRequest of a real phone, in its order.
        "Requested Signature Algorithms: RSA+SHA256:RSA+SHA1:RSA+SHA384:RSA+SHA512:\
         ECDSA+SHA256:ECDSA+SHA384:ECDSA+SHA512",
    ] {
        assert!(
            out.contains(seen),
            "s_client did not print {seen:?}:\n{out}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_tls_1_0_client_completes_a_handshake_with_an_ios_9_phone() {
    use station_sim::phone::tls::TlsGeneration;
    let (dir, tls) = phone_tls_fixture(TlsGeneration::Tls10Only);
    let (port, phone) = serve_phone_tls_once(tls).await;
    let out = s_client(
        dir.path(),
        port,
        &["-tls1", "-cipher", "DEFAULT:@SECLEVEL=0"],
    )
    .await;
    let negotiated = phone.await.expect("join").expect("phone handshake");
    assert_eq!(negotiated.version, TlsVersion::Tls1_0, "{out}");
    assert!(out.contains("Protocol  : TLSv1\n"), "{out}");
}
