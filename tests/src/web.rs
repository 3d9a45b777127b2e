//! Reading the station's live view (docs/dashboard.md) the way a browser and a Prometheus
//! do: plain HTTP requests, the `/events` stream, a strict Prometheus text-format parser, and
//! a headless Chromium driven over the DevTools protocol (a minimal WebSocket client).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long one plain request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The live view's address from the station's stderr: the `station: live view at URL` line.
pub fn live_view_url(stderr: &str) -> Option<String> {
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("station: live view at "))
        .map(|url| url.trim().trim_end_matches('/').to_string())
}

/// `host:port` of `http://host:port`.
fn authority(base: &str) -> &str {
    base.trim_start_matches("http://").trim_end_matches('/')
}

/// An answer: status, headers (lower-case names) and body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.1 request with `Connection: close` and an explicit `Host`; the body is read
/// by its `Content-Length` (Chromium's DevTools server keeps the connection open), else to
/// the end of the connection.
pub fn request(base: &str, method: &str, path: &str, host: Option<&str>) -> Answer {
    try_request(base, method, path, host).unwrap_or_else(|e| panic!("{method} {base}{path}: {e}"))
}

/// [`request`], with a connection that fails (the server is gone) as an error.
pub fn try_request(
    base: &str,
    method: &str,
    path: &str,
    host: Option<&str>,
) -> std::io::Result<Answer> {
    let mut stream = TcpStream::connect(authority(base))?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    let host = host.unwrap_or(authority(base));
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: station-tests\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let answer = parse_answer(&raw);
            if let Some(length) = answer
                .headers
                .get("content-length")
                .and_then(|l| l.parse::<usize>().ok())
            {
                if raw.len() >= end + 4 + length {
                    return Ok(parse_answer(&raw[..end + 4 + length]));
                }
            }
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            if !raw.windows(4).any(|w| w == b"\r\n\r\n") {
                return Err(std::io::Error::other("closed before an answer"));
            }
            return Ok(parse_answer(&raw));
        }
        raw.extend_from_slice(&chunk[..n]);
    }
}

pub fn get(base: &str, path: &str) -> Answer {
    request(base, "GET", path, None)
}

fn parse_answer(raw: &[u8]) -> Answer {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of the head");
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Answer {
        status,
        headers,
        body: raw[end + 4..].to_vec(),
    }
}

/// One server-sent event: its type (`message` when none was named) and data.
#[derive(Debug, Clone)]
pub struct Sse {
    pub event: String,
    pub data: String,
}

/// Reads `/events` until `stop` says so, the stream ends or `timeout` passes. Returns the
/// messages and every byte received.
pub fn read_events(
    base: &str,
    timeout: Duration,
    stop: impl Fn(&Sse) -> bool,
) -> (Vec<Sse>, Vec<u8>) {
    let mut stream = TcpStream::connect(authority(base)).expect("connect to /events");
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    write!(
        stream,
        "GET /events HTTP/1.0\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
        authority(base)
    )
    .expect("send");
    let deadline = Instant::now() + timeout;
    let mut reader = BufReader::new(stream);
    let mut raw = Vec::new();
    let mut messages = Vec::new();
    let (mut event, mut data) = (String::new(), Vec::<String>::new());
    let mut in_head = true;
    let mut line = String::new();
    while Instant::now() < deadline {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => panic!("reading /events: {e}"),
        }
        raw.extend_from_slice(line.as_bytes());
        let text = line.trim_end_matches(['\r', '\n']);
        if in_head {
            if text.is_empty() {
                in_head = false;
            } else if let Some(status) = text.strip_prefix("HTTP/1.") {
                assert!(status[2..].starts_with("200"), "/events answered {text}");
            }
            continue;
        }
        if text.is_empty() {
            if !data.is_empty() {
                let message = Sse {
                    event: if event.is_empty() {
                        "message".into()
                    } else {
                        event.clone()
                    },
                    data: data.join("\n"),
                };
                let done = stop(&message);
                messages.push(message);
                if done {
                    break;
                }
            }
            event.clear();
            data.clear();
        } else if let Some(value) = text.strip_prefix("event:") {
            event = value.trim_start().to_string();
        } else if let Some(value) = text.strip_prefix("data:") {
            data.push(value.strip_prefix(' ').unwrap_or(value).to_string());
        }
    }
    (messages, raw)
}

// ---------------------------------------------------------------------------------------------
// The Prometheus text format, read strictly

/// One sample: metric name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses the text exposition format 0.0.4, strictly: `# HELP`/`# TYPE` at most once per
/// family and before its samples, known types only, well-formed names, quoted and escaped
/// label values, numeric values, histogram buckets cumulative with `+Inf` equal to
/// `_count`. `Err` says which line is wrong.
pub fn parse_prometheus(text: &str) -> Result<Vec<Sample>, String> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut helped = std::collections::BTreeSet::new();
    let mut samples = Vec::new();
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    for (index, line) in text.lines().enumerate() {
        let at = |why: &str| format!("line {}: {why}: {line:?}", index + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or_default();
            if !valid_name(name) || !helped.insert(name.to_string()) {
                return Err(at("bad or repeated HELP"));
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let (name, kind) = (
                parts.next().unwrap_or_default(),
                parts.next().unwrap_or_default(),
            );
            if !valid_name(name)
                || !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind)
                || parts.next().is_some()
            {
                return Err(at("bad TYPE"));
            }
            if samples
                .iter()
                .any(|s: &Sample| family_of(&s.name, &types) == name)
            {
                return Err(at("TYPE after the family's samples"));
            }
            if types.insert(name.to_string(), kind.to_string()).is_some() {
                return Err(at("repeated TYPE"));
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (name_labels, value) = line.rsplit_once(' ').ok_or_else(|| at("no value"))?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v.parse().map_err(|_| at("value is not a number"))?,
        };
        let (name, labels) = match name_labels.split_once('{') {
            None => (name_labels, BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .ok_or_else(|| at("unclosed labels"))?;
                (name, parse_labels(body).map_err(|why| at(&why))?)
            }
        };
        if !valid_name(name) {
            return Err(at("bad metric name"));
        }
        let family = family_of(name, &types);
        if !types.contains_key(&family) {
            return Err(at("sample without a TYPE"));
        }
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    check_histograms(&samples, &types)?;
    Ok(samples)
}

/// The family a sample belongs to (`x_bucket` → `x` for a histogram `x`).
fn family_of(name: &str, types: &BTreeMap<String, String>) -> String {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if types
                .get(base)
                .is_some_and(|t| t == "histogram" || t == "summary")
            {
                return base.to_string();
            }
        }
    }
    name.to_string()
}

fn parse_labels(body: &str) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    let mut chars = body.chars().peekable();
    loop {
        let mut name = String::new();
        while let Some(c) = chars.peek().copied() {
            if c == '=' {
                break;
            }
            name.push(c);
            chars.next();
        }
        if name.is_empty() && chars.peek().is_none() {
            break;
        }
        if chars.next() != Some('=') || chars.next() != Some('"') {
            return Err(format!("label {name:?} has no quoted value"));
        }
        let mut value = String::new();
        loop {
            match chars.next() {
                Some('\\') => match chars.next() {
                    Some('\\') => value.push('\\'),
                    Some('"') => value.push('"'),
                    Some('n') => value.push('\n'),
                    other => return Err(format!("bad escape \\{other:?}")),
                },
                Some('"') => break,
                Some(c) => value.push(c),
                None => return Err("unterminated label value".into()),
            }
        }
        if labels.insert(name.clone(), value).is_some() {
            return Err(format!("label {name} twice"));
        }
        match chars.next() {
            Some(',') => continue,
            None => break,
            Some(c) => return Err(format!("unexpected {c:?} after a label")),
        }
    }
    Ok(labels)
}

/// A sample's labels, `le` left out: one series of a histogram.
type Labels = BTreeMap<String, String>;
/// A histogram series: its (`le`, value) buckets in order, and its `_count`.
type Series = (Vec<(f64, f64)>, Option<f64>);

fn check_histograms(samples: &[Sample], types: &BTreeMap<String, String>) -> Result<(), String> {
    for (family, _) in types.iter().filter(|(_, t)| *t == "histogram") {
        // Per label set (without `le`): the buckets in order, and the count.
        let mut series: BTreeMap<Labels, Series> = BTreeMap::new();
        for s in samples
            .iter()
            .filter(|s| family_of(&s.name, types) == *family)
        {
            let mut key = s.labels.clone();
            if s.name.ends_with("_bucket") {
                let le = key.remove("le").ok_or(format!("{} without le", s.name))?;
                let le: f64 = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().map_err(|_| format!("{} le={le}", s.name))?
                };
                series.entry(key).or_default().0.push((le, s.value));
            } else if s.name.ends_with("_count") {
                series.entry(key).or_default().1 = Some(s.value);
            }
        }
        for (labels, (buckets, count)) in series {
            let cumulative = buckets
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1);
            let inf = buckets.last().filter(|(le, _)| le.is_infinite());
            if !cumulative || inf.map(|(_, v)| *v) != count {
                return Err(format!(
                    "histogram {family} {labels:?}: buckets {buckets:?}, count {count:?}"
                ));
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Headless Chromium

/// Chromium: `STATION_CHROMIUM`, else `chromium` (Debian) or `chromium-browser` on PATH. A
/// missing browser fails the test with how to get it, like every other tool the tests run.
pub fn require_chromium() -> PathBuf {
    if let Some(path) = std::env::var_os("STATION_CHROMIUM").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "STATION_CHROMIUM points at {}, which is not a file",
            path.display()
        );
        return path;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .flat_map(|dir| [dir.join("chromium"), dir.join("chromium-browser")])
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`chromium` is not on PATH: run `scripts/test`, which installs it (or \
                 `apt-get install chromium`), or point STATION_CHROMIUM at a Chromium binary"
            )
        })
}

/// A headless Chromium with one page, driven over the DevTools protocol; killed when
/// dropped.
pub struct Browser {
    child: Child,
    socket: TcpStream,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium on `url` with a `width`×`height` window.
    pub fn open(url: &str, width: u32, height: u32) -> Browser {
        let profile = tempfile::tempdir().expect("profile dir");
        let mut child = Command::new(require_chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--remote-debugging-port=0",
                "--hide-scrollbars",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(format!("--window-size={width},{height}"))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start chromium");
        // "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/…" on stderr.
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(at) = line.find("ws://") {
                    let _ = tx.send(line[at..].trim().to_string());
                }
            }
        });
        let browser_ws = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("chromium printed no DevTools address");
        let port = browser_ws
            .trim_start_matches("ws://")
            .split(['/', ':'])
            .nth(1)
            .expect("port")
            .to_string();
        // The page's own endpoint, from the target list.
        let deadline = Instant::now() + Duration::from_secs(30);
        let page_ws = loop {
            let list = get(&format!("http://127.0.0.1:{port}"), "/json/list");
            let targets: Value = serde_json::from_slice(&list.body).unwrap_or(Value::Null);
            let found = targets.as_array().and_then(|t| {
                t.iter()
                    .find(|t| t["type"] == "page")
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(str::to_string))
            });
            if let Some(ws) = found {
                break ws;
            }
            assert!(Instant::now() < deadline, "no page target: {targets}");
            std::thread::sleep(Duration::from_millis(100));
        };
        let socket = websocket_connect(&page_ws);
        Browser {
            child,
            socket,
            next_id: 0,
            _profile: profile,
        }
    }

    /// Sends a DevTools command and returns its `result`.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let message = serde_json::json!({"id": id, "method": method, "params": params});
        websocket_send(&mut self.socket, message.to_string().as_bytes());
        loop {
            let frame = websocket_receive(&mut self.socket);
            let reply: Value = serde_json::from_slice(&frame).expect("DevTools JSON");
            if reply["id"] == id {
                assert!(reply["error"].is_null(), "{method}: {reply}");
                return reply["result"].clone();
            }
        }
    }

    /// Evaluates `expression` in the page; its value as JSON.
    pub fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            serde_json::json!({"expression": expression, "returnByValue": true}),
        );
        result["result"]["value"].clone()
    }

    /// A PNG of the page as it is drawn now.
    pub fn screenshot(&mut self) -> Vec<u8> {
        use base64::Engine;
        let result = self.call(
            "Page.captureScreenshot",
            serde_json::json!({"format": "png", "captureBeyondViewport": true}),
        );
        base64::engine::general_purpose::STANDARD
            .decode(result["data"].as_str().expect("data"))
            .expect("base64 PNG")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Opens a WebSocket (RFC 6455) to `ws://host:port/path`; the answer's accept key is not
/// checked (the peer is the Chromium this test started).
fn websocket_connect(url: &str) -> TcpStream {
    let rest = url.trim_start_matches("ws://");
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut socket = TcpStream::connect(host).expect("connect to DevTools");
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    write!(
        socket,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: c3RhdGlvbi10ZXN0cy1rZXk=\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .expect("handshake");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        socket.read_exact(&mut byte).expect("handshake answer");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    socket
}

/// One masked text frame (a client must mask).
fn websocket_send(socket: &mut TcpStream, payload: &[u8]) {
    let mask = [0x5a, 0x17, 0xc3, 0x88];
    let mut frame = vec![0x81];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= 0xffff => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    socket.write_all(&frame).expect("send a frame");
}

/// The next whole text message (continuation frames joined; control frames skipped).
fn websocket_receive(socket: &mut TcpStream) -> Vec<u8> {
    let mut message = Vec::new();
    loop {
        let mut head = [0u8; 2];
        socket.read_exact(&mut head).expect("frame head");
        let fin = head[0] & 0x80 != 0;
        let opcode = head[0] & 0x0f;
        let len = match head[1] & 0x7f {
            126 => {
                let mut n = [0u8; 2];
                socket.read_exact(&mut n).expect("length");
                u64::from(u16::from_be_bytes(n))
            }
            127 => {
                let mut n = [0u8; 8];
                socket.read_exact(&mut n).expect("length");
                u64::from_be_bytes(n)
            }
            n => u64::from(n),
        };
        assert!(len < 64 << 20, "a {len}-byte DevTools frame");
        let mut payload = vec![0u8; usize::try_from(len).expect("length")];
        socket.read_exact(&mut payload).expect("payload");
        match opcode {
            0x8 => panic!("DevTools closed the connection"),
            0x9 | 0xa => continue,
            _ => message.extend_from_slice(&payload),
        }
        if fin {
            return message;
        }
    }
}
