//! The driver over in-memory bulk endpoints: both ends, streams, resets, flow control,
//! garbage and timeouts.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::memory::{pipe, MemoryEnd};
use super::*;
use crate::usb_mux::wire::{self, USB_MRU};

const WAIT: Duration = Duration::from_secs(5);

fn config() -> DriverConfig {
    DriverConfig {
        transfer_timeout: Duration::from_millis(500),
        ..DriverConfig::default()
    }
}

fn start() -> (MuxHandle, MuxHandle, Incoming) {
    let (host_end, device_end) = pipe(512, USB_MRU);
    let host = MuxDriver::host(host_end.bulk_in, host_end.bulk_out, config());
    let (device, incoming) = MuxDriver::device(device_end.bulk_in, device_end.bulk_out, config());
    (host, device, incoming)
}

/// Device end that echoes every connection to `port` and refuses the others.
fn echo_on(mut incoming: Incoming, port: u16) {
    tokio::spawn(async move {
        while let Some(conn) = incoming.next().await {
            if conn.port() != port {
                conn.refuse();
                continue;
            }
            let Ok(stream) = conn.accept() else { return };
            tokio::spawn(async move {
                let (mut r, mut w) = tokio::io::split(stream);
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("{what} took longer than {WAIT:?}"))
}

#[tokio::test]
async fn streams_carry_bytes_both_ways_including_exact_packet_multiples() {
    let (host, _device, incoming) = start();
    echo_on(incoming, 62078);
    assert_eq!(host.ready(WAIT).await, Ok(MuxVersion::V2));
    // 476 + 36 bytes of headers = 512: stuck without the zero-length packet after it.
    for size in [1usize, 476, 988, 49_116, 300_000] {
        // Two connections at once, so their packets interleave.
        let (a, b) = within("two echoes", async {
            tokio::join!(
                echo_round_trip(&host, size, 3),
                echo_round_trip(&host, size, 11)
            )
        })
        .await;
        assert_eq!((a, b), (size, size), "size {size}");
    }
    assert_eq!(host.stats().dropped_packets, 0);
}

/// Connects, writes `size` bytes, reads them back; returns how many came back equal.
async fn echo_round_trip(host: &MuxHandle, size: usize, step: usize) -> usize {
    let data: Vec<u8> = (0..size).map(|i| (i * step % 256) as u8).collect();
    let stream = host.connect(62078, WAIT).await.expect("connect");
    let (mut r, mut w) = tokio::io::split(stream);
    let mut back = vec![0u8; size];
    let (written, read) = tokio::join!(w.write_all(&data), r.read_exact(&mut back));
    written.expect("write");
    read.expect("read");
    assert!(back == data, "echo of {size} bytes differs");
    back.len()
}

#[tokio::test]
async fn refused_port_is_a_typed_error() {
    let (host, _device, incoming) = start();
    echo_on(incoming, 62078);
    let error = host.connect(1234, WAIT).await.expect_err("refused");
    assert_eq!(
        error,
        DriverError::Refused {
            port: 1234,
            reason: None
        }
    );
    // The link is fine.
    host.connect(62078, WAIT)
        .await
        .expect("connect after a refusal");
}

#[tokio::test]
async fn phone_reset_ends_the_stream_after_its_data() {
    let (host, _device, mut incoming) = start();
    tokio::spawn(async move {
        let conn = incoming.next().await.expect("incoming");
        let mut stream = conn.accept().expect("accept");
        stream.write_all(b"goodbye").await.expect("write");
        // Dropping the stream sends the rest, then RST.
        drop(stream);
        std::future::pending::<()>().await;
    });
    let mut stream = host.connect(62078, WAIT).await.expect("connect");
    let mut got = Vec::new();
    within("read to end", stream.read_to_end(&mut got))
        .await
        .expect("read");
    assert_eq!(got, b"goodbye");
    let error = stream.write_all(b"x").await.expect_err("write after reset");
    assert_eq!(error.kind(), io::ErrorKind::ConnectionReset);
}

#[tokio::test]
async fn a_peer_that_stops_reading_holds_the_writer_within_bounds() {
    let (host, _device, mut incoming) = start();
    let (hold_tx, hold_rx) = oneshot::channel::<MuxStream>();
    tokio::spawn(async move {
        let conn = incoming.next().await.expect("incoming");
        let stream = conn.accept().expect("accept");
        // Keeps the stream open and never reads.
        let _ = hold_tx.send(stream);
        std::future::pending::<()>().await;
    });
    let mut stream = host.connect(62078, WAIT).await.expect("connect");
    let device_stream = within("device stream", hold_rx).await.expect("stream");
    let chunk = vec![0xA5u8; 8192];
    let mut accepted = 0usize;
    loop {
        match tokio::time::timeout(Duration::from_millis(300), stream.write(&chunk)).await {
            Ok(Ok(n)) => accepted += n,
            Ok(Err(e)) => panic!("write failed: {e}"),
            Err(_) => break,
        }
        assert!(accepted < 10 * 1024 * 1024, "writer never held back");
    }
    let window = wire::RECEIVE_WINDOW as usize;
    assert_eq!(accepted, window + wire::SEND_BUFFER);
    assert_eq!(device_stream.buffered().0, window);
    assert_eq!(stream.buffered().1, wire::SEND_BUFFER);
}

#[tokio::test]
async fn garbage_from_the_device_is_dropped_and_other_connections_go_on() {
    let (host_end, device_end) = pipe(512, USB_MRU);
    let inject = device_end.bulk_out.clone();
    let host = MuxDriver::host(host_end.bulk_in, host_end.bulk_out, config());
    let (_device, incoming) = MuxDriver::device(device_end.bulk_in, device_end.bulk_out, config());
    echo_on(incoming, 62078);
    let mut stream = host.connect(62078, WAIT).await.expect("connect");
    let mut inject = inject;
    for garbage in [
        vec![0xFFu8; 40],
        b"\x00\x00\x00\x06\x00\x00\x00\x10\xde\xad\xbe\xef\x00\x00\x00\x00".to_vec(),
        vec![0, 0, 0, 6, 0, 0, 0, 3],
    ] {
        inject.write_transfer(garbage).await.expect("inject");
    }
    stream.write_all(b"still works").await.expect("write");
    let mut back = [0u8; 11];
    within("echo", stream.read_exact(&mut back))
        .await
        .expect("read");
    assert_eq!(&back, b"still works");
    assert_eq!(host.stats().dropped_packets, 3);
    assert_eq!(host.failure(), None);
}

#[tokio::test]
async fn an_unknown_mux_version_fails_the_link_with_a_named_error() {
    let (host_end, device_end) = pipe(512, USB_MRU);
    let host = MuxDriver::host(host_end.bulk_in, host_end.bulk_out, config());
    let MemoryEnd {
        mut bulk_in,
        mut bulk_out,
    } = device_end;
    let version = bulk_in.read_transfer().await.expect("VERSION");
    assert_eq!(version.len(), 20);
    let reply = wire::encode_packet(wire::MuxProtocol::Version, None, &wire::version_body(7, 0));
    bulk_out.write_transfer(reply).await.expect("reply");
    let error = host.connect(62078, WAIT).await.expect_err("no link");
    assert_eq!(
        error,
        DriverError::Protocol(UsbMuxError::UnsupportedVersion { major: 7, minor: 0 })
    );
    assert_eq!(within("closed", host.closed()).await, error);
}

#[tokio::test]
async fn a_silent_device_times_out_bring_up_and_the_handshake() {
    let (host_end, device_end) = pipe(512, USB_MRU);
    let host = MuxDriver::host(host_end.bulk_in, host_end.bulk_out, config());
    let short = Duration::from_millis(200);
    assert_eq!(
        host.connect(62078, short).await.expect_err("silent"),
        DriverError::Timeout {
            what: "mux bring-up (VERSION)",
            after: short
        }
    );
    // Bring-up answered by hand, then silence: the SYN is never answered.
    let MemoryEnd {
        mut bulk_in,
        mut bulk_out,
    } = device_end;
    bulk_in.read_transfer().await.expect("VERSION");
    let reply = wire::encode_packet(wire::MuxProtocol::Version, None, &wire::version_body(2, 0));
    bulk_out.write_transfer(reply).await.expect("reply");
    assert_eq!(
        host.connect(62078, short).await.expect_err("no SYN|ACK"),
        DriverError::Timeout {
            what: "the connection handshake (SYN)",
            after: short
        }
    );
    assert_eq!(
        host.stats().open_connections,
        0,
        "the half-open connection is gone"
    );
    // Nobody reads the host's bulk-OUT any more: a transfer stalls and fails the link.
    for _ in 0..8 {
        let _ = host.connect(62078, short).await;
    }
    assert_eq!(
        within("stall", host.closed()).await,
        DriverError::Timeout {
            what: "a bulk-OUT transfer",
            after: config().transfer_timeout
        }
    );
    drop(bulk_in);
}

#[tokio::test]
async fn a_vanished_device_fails_every_stream() {
    let (host_end, device_end) = pipe(512, USB_MRU);
    let host = MuxDriver::host(host_end.bulk_in, host_end.bulk_out, config());
    let (device, incoming) = MuxDriver::device(device_end.bulk_in, device_end.bulk_out, config());
    echo_on(incoming, 62078);
    let mut stream = host.connect(62078, WAIT).await.expect("connect");
    device.shutdown();
    drop(device);
    let mut buf = [0u8; 4];
    let error = within("read", stream.read(&mut buf))
        .await
        .expect_err("gone");
    assert_eq!(error.kind(), io::ErrorKind::BrokenPipe);
    assert!(matches!(
        host.failure(),
        Some(DriverError::Transport {
            kind: io::ErrorKind::BrokenPipe,
            ..
        })
    ));
}

#[test]
fn only_a_transport_saying_not_connected_is_a_disconnect() {
    let transport = |kind| DriverError::Transport {
        kind,
        message: String::new(),
    };
    assert!(transport(io::ErrorKind::NotConnected).is_disconnect());
    assert!(!transport(io::ErrorKind::BrokenPipe).is_disconnect());
    assert!(!DriverError::Shutdown.is_disconnect());
    assert!(!DriverError::Timeout {
        what: "a bulk-OUT transfer",
        after: WAIT,
    }
    .is_disconnect());
}
