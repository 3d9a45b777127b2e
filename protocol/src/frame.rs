//! Plist framing used by lockdownd and every lockdown service: a 4-byte big-endian length
//! followed by a plist (XML or binary).

use std::borrow::Cow;
use std::io::Cursor;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest frame body accepted, checked before any allocation. Lockdown messages are a few
/// KiB; activation-info with its `CollectionBlob` is ~30 KiB and activation records a few
/// KiB, so 4 MiB leaves a wide margin while bounding what a hostile peer can make us hold.
pub const MAX_FRAME_LEN: u32 = 4 * 1024 * 1024;

/// How a plist is serialised on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlistFormat {
    /// XML plist: what libimobiledevice sends to lockdownd.
    Xml,
    /// `bplist00`: what libimobiledevice sends to mobileactivationd.
    Binary,
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the {max}-byte cap")]
    TooLarge { len: u64, max: u32 },
    #[error("frame is empty")]
    Empty,
    #[error("invalid plist: {0}")]
    Plist(String),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// Serialises a plist without the length prefix.
pub fn encode_plist(value: &plist::Value, format: PlistFormat) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::new();
    let result = match format {
        PlistFormat::Xml => value.to_writer_xml(&mut out),
        PlistFormat::Binary => value.to_writer_binary(&mut out),
    };
    result.map_err(|e| FrameError::Plist(e.to_string()))?;
    Ok(out)
}

/// Serialises a plist with its 4-byte big-endian length prefix.
pub fn encode_frame(value: &plist::Value, format: PlistFormat) -> Result<Vec<u8>, FrameError> {
    let body = encode_plist(value, format)?;
    let len = checked_len(body.len())?;
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

fn checked_len(len: usize) -> Result<u32, FrameError> {
    match u32::try_from(len) {
        Ok(n) if n <= MAX_FRAME_LEN => Ok(n),
        _ => Err(FrameError::TooLarge {
            len: len as u64,
            max: MAX_FRAME_LEN,
        }),
    }
}

/// Parses an XML or binary plist. Control characters below 0x20 (other than tab, newline and
/// carriage return) are blanked in XML first: iOS has been seen to emit them in strings.
pub fn decode_plist(bytes: &[u8]) -> Result<plist::Value, FrameError> {
    if bytes.is_empty() {
        return Err(FrameError::Empty);
    }
    if bytes.starts_with(b"bplist00") {
        return plist::Value::from_reader(Cursor::new(bytes))
            .map_err(|e| FrameError::Plist(e.to_string()));
    }
    let stray_control = |b: u8| b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r');
    // Copied only when there is something to clean: lockdown replies (several KB for a
    // whole-domain GetValue) rarely carry stray control bytes.
    let cleaned: Cow<'_, [u8]> = if bytes.iter().any(|&b| stray_control(b)) {
        Cow::Owned(
            bytes
                .iter()
                .map(|&b| if stray_control(b) { b' ' } else { b })
                .collect(),
        )
    } else {
        Cow::Borrowed(bytes)
    };
    plist::Value::from_reader_xml(Cursor::new(cleaned.as_ref()))
        .map_err(|e| FrameError::Plist(e.to_string()))
}

/// How much of an announced body is allocated ahead of the bytes that fill it.
pub const BODY_CHUNK: usize = 64 * 1024;

/// Reads a body of `len` bytes (already checked against its cap) in chunks of at most
/// [`BODY_CHUNK`], growing the buffer as bytes arrive: a peer that announces a large body and
/// then sends little or nothing makes us allocate what it sent plus one chunk, not `len`
/// (seen profiling the `usbmux_message` fuzz target: a header announcing up to the cap cost
/// that much zeroed memory before any byte of the body came).
pub async fn read_body<R: AsyncRead + Unpin>(
    reader: &mut R,
    len: usize,
) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(next) = grow_body(&mut body, len) {
        reader.read_exact(next).await?;
    }
    Ok(body)
}

/// One step of reading a body of `len` bytes chunk by chunk: grows `body` by at most
/// [`BODY_CHUNK`] and returns the new part to fill, or `None` once `body` is `len` long. For
/// readers that are not an `AsyncRead` (the plist channel reads through TLS).
pub fn grow_body(body: &mut Vec<u8>, len: usize) -> Option<&mut [u8]> {
    let start = body.len();
    if start >= len {
        return None;
    }
    body.resize(start + (len - start).min(BODY_CHUNK), 0);
    Some(&mut body[start..])
}

/// Reads one length-prefixed plist. The cap is enforced before the body is read, and the body
/// buffer grows with the bytes that arrive ([`read_body`]).
pub async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R) -> Result<plist::Value, FrameError> {
    let mut len = [0u8; 4];
    reader.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len);
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge {
            len: u64::from(len),
            max: MAX_FRAME_LEN,
        });
    }
    let body = read_body(reader, len as usize).await?;
    decode_plist(&body)
}

/// Writes one length-prefixed plist and flushes.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    value: &plist::Value,
    format: PlistFormat,
) -> Result<(), FrameError> {
    let bytes = encode_frame(value, format)?;
    writer.write_all(&bytes).await?;
    writer.flush().await?;
    Ok(())
}

/// Builds a plist dictionary from `(key, value)` pairs; keeps request construction terse.
pub fn dict<I, K>(entries: I) -> plist::Value
where
    I: IntoIterator<Item = (K, plist::Value)>,
    K: Into<String>,
{
    let mut d = plist::Dictionary::new();
    for (k, v) in entries {
        d.insert(k.into(), v);
    }
    plist::Value::Dictionary(d)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn sample() -> plist::Value {
        dict([
            ("Request", plist::Value::from("QueryType")),
            ("Label", plist::Value::from("station")),
        ])
    }

    #[test]
    fn frame_starts_with_big_endian_body_length() {
        let frame = encode_frame(&sample(), PlistFormat::Xml).expect("encode");
        let body_len = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
        assert_eq!(body_len as usize, frame.len() - 4);
        assert!(frame[4..].starts_with(b"<?xml"));
    }

    #[test]
    fn binary_frames_carry_bplist_magic() {
        let frame = encode_frame(&sample(), PlistFormat::Binary).expect("encode");
        assert!(frame[4..].starts_with(b"bplist00"));
    }

    #[tokio::test]
    async fn xml_and_binary_frames_decode_to_the_same_value() {
        for format in [PlistFormat::Xml, PlistFormat::Binary] {
            let bytes = encode_frame(&sample(), format).expect("encode");
            let value = read_frame(&mut Cursor::new(bytes)).await.expect("decode");
            assert_eq!(value, sample());
        }
    }

    #[tokio::test]
    async fn oversized_length_is_refused_before_reading_the_body() {
        let mut bytes = (MAX_FRAME_LEN + 1).to_be_bytes().to_vec();
        bytes.extend_from_slice(b"<plist>");
        let err = read_frame(&mut Cursor::new(bytes)).await.expect_err("cap");
        assert!(
            matches!(err, FrameError::TooLarge { len, .. } if len == u64::from(MAX_FRAME_LEN) + 1)
        );
    }

    #[tokio::test]
    async fn truncated_body_is_an_io_error() {
        let mut bytes = 100u32.to_be_bytes().to_vec();
        bytes.extend_from_slice(b"<?xml");
        let err = read_frame(&mut Cursor::new(bytes))
            .await
            .expect_err("short");
        assert!(matches!(err, FrameError::Io(_)));
    }

    /// A reader that serves `data` and then ends, recording the largest buffer it was asked
    /// to fill: how much the decoder allocated ahead of the bytes that arrived.
    pub(crate) struct LargestAsk {
        pub(crate) data: Cursor<Vec<u8>>,
        pub(crate) largest: usize,
    }

    impl AsyncRead for LargestAsk {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            self.largest = self.largest.max(buf.remaining());
            std::pin::Pin::new(&mut self.data).poll_read(cx, buf)
        }
    }

    /// Writes are dropped: the reader side is what is measured.
    impl AsyncWrite for LargestAsk {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            std::task::Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn an_announced_body_that_never_comes_is_not_allocated_up_front() {
        let mut bytes = MAX_FRAME_LEN.to_be_bytes().to_vec();
        bytes.extend_from_slice(b"<?xml");
        let mut reader = LargestAsk {
            data: Cursor::new(bytes),
            largest: 0,
        };
        let err = read_frame(&mut reader).await.expect_err("short");
        assert!(
            matches!(err, FrameError::Io(ref e) if e.kind() == std::io::ErrorKind::UnexpectedEof)
        );
        assert!(
            reader.largest <= BODY_CHUNK,
            "asked for {} bytes",
            reader.largest
        );
    }

    #[tokio::test]
    async fn a_body_longer_than_one_chunk_reads_whole() {
        let big = plist::Value::Data(vec![0x5a; 3 * BODY_CHUNK + 17]);
        let bytes = encode_frame(&big, PlistFormat::Binary).expect("encode");
        let value = read_frame(&mut Cursor::new(bytes)).await.expect("decode");
        assert_eq!(value, big);
    }

    #[test]
    fn control_characters_in_xml_are_tolerated() {
        let xml = b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><plist version=\"1.0\"><dict><key>DeviceName</key><string>Bob\x01s phone</string></dict></plist>";
        let value = decode_plist(xml).expect("decode");
        let name = value
            .as_dictionary()
            .and_then(|d| d.get("DeviceName"))
            .and_then(|v| v.as_string());
        assert_eq!(name, Some("Bob s phone"));
    }

    #[test]
    fn garbage_is_a_plist_error() {
        assert!(matches!(decode_plist(b"hello"), Err(FrameError::Plist(_))));
        assert!(matches!(decode_plist(b""), Err(FrameError::Empty)));
    }
}
