//! The live view of the line (docs/dashboard.md) as its users see it: `station demo --http
//! 127.0.0.1:0` with a headless Chromium on the page from the start (live updates over
//! `/events`, no reload), `/events` read as a browser reads it, `/metrics` through a strict
//! Prometheus text-format parser, `/healthz`; everything checked against the NDJSON stream
//! the same run printed. A screenshot of the page is saved under
//! `target/test-artefacts/` (docs/testing.md).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use station_tests::web::{self, Browser};
use station_tests::workspace_bin;

const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// Final outcome per UDID, from the `finished` events (the last one counts).
fn finals(events: &[Value]) -> BTreeMap<String, String> {
    events
        .iter()
        .filter(|e| e["event"] == "finished")
        .map(|e| {
            (
                e["udid"].as_str().unwrap_or_default().to_string(),
                e["outcome"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// The value of the one sample named `name` with `labels`.
fn sample(samples: &[web::Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let labels: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    samples
        .iter()
        .find(|s| s.name == name && s.labels == labels)
        .map(|s| s.value)
}

#[test]
fn the_demo_live_view_shows_every_phone_as_the_stream_reports_it() {
    let chromium = web::require_chromium();
    let tmp = tempfile::tempdir().expect("tmp");
    let mut child = Command::new(workspace_bin("station"))
        .args([
            "--json",
            "demo",
            "--devices",
            "8",
            "--latency-ms",
            "300",
            "--http",
            "127.0.0.1:0",
        ])
        .env_remove("RUST_LOG")
        .env_remove("STATION_CONFIG")
        .env("TMPDIR", tmp.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start station demo");
    let mut killer = KillOnDrop(Some(child.id()));
    let (out_tx, out_rx) = mpsc::channel::<String>();
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = out_tx.send(line);
        }
    });
    let (err_tx, err_rx) = mpsc::channel::<String>();
    let stderr = child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = err_tx.send(line);
        }
    });

    // The bound address is announced on stderr before the first phone is touched.
    let mut stderr_text = String::new();
    let base = loop {
        let line = err_rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no live-view address on stderr:\n{stderr_text}"));
        stderr_text.push_str(&line);
        stderr_text.push('\n');
        if let Some(url) = web::live_view_url(&stderr_text) {
            break url;
        }
    };
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");

    // A browser and an /events reader from the start: they see the line move.
    let events_reader = {
        let base = base.clone();
        std::thread::spawn(move || {
            web::read_events(&base, RUN_TIMEOUT, |m| {
                m.event == "message" && m.data.contains("\"event\":\"summary\"")
            })
        })
    };
    let mut browser = Browser::open(&format!("{base}/"), 1280, 900);
    eprintln!("chromium: {}", chromium.display());

    // The NDJSON stream up to its summary.
    let deadline = Instant::now() + RUN_TIMEOUT;
    let mut events: Vec<Value> = Vec::new();
    let mut boards_while_running = 0;
    while events.last().is_none_or(|e| e["event"] != "summary") {
        assert!(Instant::now() < deadline, "no summary: {events:#?}");
        if let Ok(line) = out_rx.recv_timeout(Duration::from_millis(200)) {
            events.push(serde_json::from_str(&line).expect("NDJSON line"));
        } else if events.iter().any(|e| e["event"] == "started") {
            let boards = browser.eval("Number(document.body.dataset.boards || 0)");
            boards_while_running = boards.as_u64().unwrap_or(0);
        }
    }
    let summary = events.last().expect("summary").clone();
    let finals = finals(&events);
    assert_eq!(finals.len(), 8, "{events:#?}");

    // The page, updated live, shows every phone's outcome as the stream reported it.
    let tiles_js = "JSON.stringify({state: document.body.dataset.state, tiles: Array.from(document.querySelectorAll('.tile')).map(t => ({slot: t.dataset.slot, udid: t.dataset.udid || null, state: t.dataset.state, outcome: t.dataset.outcome || null, text: t.innerText})), attention: Array.from(document.querySelectorAll('#attention li')).map(li => li.dataset.udid), counts: Object.fromEntries(Array.from(document.querySelectorAll('.count')).map(c => [c.dataset.count, Number(c.querySelector('b').textContent)]))})";
    let page_deadline = Instant::now() + Duration::from_secs(30);
    let page = loop {
        let page: Value =
            serde_json::from_str(browser.eval(tiles_js).as_str().unwrap_or("null")).expect("page");
        let shown: BTreeMap<String, String> = page["tiles"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| {
                Some((
                    t["udid"].as_str()?.to_string(),
                    t["outcome"].as_str()?.to_string(),
                ))
            })
            .collect();
        if page["state"] == "ended" && shown == finals {
            break page;
        }
        assert!(
            Instant::now() < page_deadline,
            "the page does not show the stream's outcomes:\nstream {finals:#?}\npage {page:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        boards_while_running > 0,
        "the page drew nothing while the line was running"
    );
    let labels: Vec<&str> = page["tiles"]
        .as_array()
        .expect("tiles")
        .iter()
        .filter_map(|t| t["slot"].as_str())
        .collect();
    assert_eq!(
        &labels[..8],
        ["A1", "A2", "A3", "A4", "B1", "B2", "B3", "B4"],
        "the bench's layout, in order"
    );
    for tile in page["tiles"].as_array().expect("tiles") {
        if let Some(outcome) = tile["outcome"].as_str() {
            assert!(
                tile["text"].as_str().is_some_and(|t| t.contains(outcome)),
                "the tile says its outcome: {tile}"
            );
        }
    }
    let attention: Vec<String> = summary["attention"]
        .as_array()
        .expect("attention")
        .iter()
        .filter_map(|a| a["udid"].as_str().map(str::to_string))
        .collect();
    assert!(
        !attention.is_empty(),
        "the demo has phones needing attention"
    );
    assert_eq!(page["attention"], serde_json::json!(attention));
    for (outcome, n) in summary["counts"].as_object().expect("counts") {
        assert_eq!(page["counts"][outcome], *n, "count of {outcome}: {page:#}");
    }
    assert_eq!(page["counts"]["phones"], summary["phones"]);

    // The screenshot, a test artefact (and what docs/dashboard.png was taken from).
    let artefacts = station_tests::workspace_root().join("target/test-artefacts");
    std::fs::create_dir_all(&artefacts).expect("artefact dir");
    let png = browser.screenshot();
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    std::fs::write(artefacts.join("dashboard.png"), &png).expect("save screenshot");
    // A phone's browser: the same page in 390 px, nothing wider than the screen.
    browser.call(
        "Emulation.setDeviceMetricsOverride",
        serde_json::json!({"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": true}),
    );
    std::thread::sleep(Duration::from_millis(300));
    let overflow = browser.eval("document.documentElement.scrollWidth - window.innerWidth");
    assert!(
        overflow.as_i64().is_some_and(|o| o <= 0),
        "the page is wider than a phone by {overflow}"
    );
    std::fs::write(artefacts.join("dashboard-phone.png"), browser.screenshot())
        .expect("save screenshot");
    drop(browser);

    // /events: a board first, then the stream's own events, byte for byte the NDJSON ones.
    let (messages, _) = events_reader.join().expect("events reader");
    assert_eq!(messages.first().map(|m| m.event.as_str()), Some("board"));
    let streamed: Vec<Value> = messages
        .iter()
        .filter(|m| m.event == "message")
        .map(|m| serde_json::from_str(&m.data).expect("event JSON"))
        .collect();
    assert!(!streamed.is_empty());
    let first = events
        .iter()
        .position(|e| *e == streamed[0])
        .expect("the first streamed event is in the NDJSON stream");
    assert_eq!(
        streamed,
        events[first..],
        "/events carries the NDJSON stream from where it joined"
    );
    let last_board: Value = messages
        .iter()
        .rev()
        .find(|m| m.event == "board")
        .map(|m| serde_json::from_str(&m.data).expect("board JSON"))
        .expect("a board");
    assert_eq!(last_board["v"], summary["v"]);

    // /metrics parses, and its counts are the summary's.
    let metrics = web::get(&base, "/metrics");
    assert_eq!(metrics.status, 200);
    assert!(metrics.headers["content-type"].starts_with("text/plain; version=0.0.4"));
    let samples = web::parse_prometheus(&metrics.text())
        .unwrap_or_else(|e| panic!("{e}\n{}", metrics.text()));
    for (outcome, n) in summary["counts"].as_object().expect("counts") {
        assert_eq!(
            sample(&samples, "station_phones", &[("outcome", outcome)]),
            n.as_f64(),
            "station_phones{{outcome={outcome}}}"
        );
    }
    let phones: f64 = samples
        .iter()
        .filter(|s| s.name == "station_phones")
        .map(|s| s.value)
        .sum();
    assert_eq!(Some(phones), summary["phones"].as_f64());
    assert_eq!(sample(&samples, "station_phones_in_flight", &[]), Some(0.0));
    assert_eq!(sample(&samples, "station_queue_length", &[]), Some(0.0));
    assert_eq!(sample(&samples, "station_run_ended", &[]), Some(1.0));
    let attempts: f64 = samples
        .iter()
        .filter(|s| s.name == "station_attempts_total")
        .map(|s| s.value)
        .sum();
    let finished = events.iter().filter(|e| e["event"] == "finished").count();
    assert_eq!(attempts, finished as f64);
    assert_eq!(
        sample(&samples, "station_attempt_duration_seconds_count", &[]),
        Some(finished as f64)
    );
    // Apple answered every activation request, and the MDM look-ups were counted.
    let answers = events
        .iter()
        .filter(|e| e["event"] == "server_answer")
        .count();
    assert!(answers > 0, "no server_answer events");
    let answered: f64 = samples
        .iter()
        .filter(|s| s.name == "station_activation_answers_total")
        .map(|s| s.value)
        .sum();
    assert_eq!(answered, answers as f64);
    let lookups = events
        .iter()
        .filter(|e| e["event"] == "code_lookup")
        .count();
    assert!(lookups > 0, "no code_lookup events");
    assert_eq!(
        sample(&samples, "station_code_lookup_duration_seconds_count", &[]),
        Some(lookups as f64)
    );
    assert!(
        samples
            .iter()
            .any(|s| s.name == "station_step_duration_seconds_count"
                && s.labels.get("step").is_some_and(|v| v == "handshake")),
        "step histograms"
    );

    // /healthz, and what the server refuses.
    let health = web::get(&base, "/healthz");
    assert_eq!((health.status, health.text().as_str()), (200, "ok\n"));
    assert_eq!(
        web::request(&base, "GET", "/", Some("attacker.example:80")).status,
        421,
        "a foreign Host is refused (DNS rebinding)"
    );
    assert_eq!(web::request(&base, "POST", "/", None).status, 405);
    assert_eq!(web::get(&base, "/nothing").status, 404);
    let page = web::get(&base, "/");
    assert!(page.headers["content-security-policy"].contains("default-src 'none'"));
    for asset in ["/app.js", "/app.css"] {
        assert_eq!(web::get(&base, asset).status, 200, "{asset}");
    }
    for text in [page.text(), web::get(&base, "/app.js").text()] {
        assert!(
            !text.contains("http://") && !text.contains("https://"),
            "no outside assets"
        );
    }

    // The view stays up after the demo until Ctrl-C (SIGTERM alike); then the demo ends.
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "the demo did not end on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    // Reaped: its pid may be reused, so it is nobody's to kill any more.
    killer.0 = None;
    assert_eq!(status.code(), Some(0));
    while let Ok(line) = err_rx.try_recv() {
        stderr_text.push_str(&line);
        stderr_text.push('\n');
    }
    assert!(
        stderr_text.contains("stays up at"),
        "the demo says the view stays up:\n{stderr_text}"
    );
}

#[test]
fn a_live_view_beyond_this_machine_is_refused_unless_allowed() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let config = dir.path().join("station.toml");
    std::fs::write(
        &config,
        format!(
            "[usbmuxd]\naddress = \"UNIX:{}\"\n",
            dir.path().join("no-usbmuxd.sock").display()
        ),
    )
    .expect("config");
    let (config, data) = (
        config.to_str().expect("utf-8"),
        data.to_str().expect("utf-8"),
    );
    let out = station_tests::run_station(
        &[
            "--config",
            config,
            "--data-dir",
            data,
            "run",
            "--once",
            "--http",
            "0.0.0.0:0",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{out}");
    assert!(
        out.stderr.contains("error[http-view]") && out.stderr.contains("allow_remote = true"),
        "{out}"
    );
    // Allowed: it gets as far as usbmuxd (absent here: exit 3), with a warning first.
    std::fs::write(
        dir.path().join("remote.toml"),
        format!(
            "[usbmuxd]\naddress = \"UNIX:{}\"\n\n[ui]\nallow_remote = true\n",
            dir.path().join("no-usbmuxd.sock").display()
        ),
    )
    .expect("config");
    let remote = dir.path().join("remote.toml");
    let out = station_tests::run_station(
        &[
            "--config",
            remote.to_str().expect("utf-8"),
            "--data-dir",
            data,
            "run",
            "--once",
            "--http",
            "0.0.0.0:0",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(3), "{out}");
    assert!(out.stderr.contains("without a log-in"), "{out}");
    assert!(
        out.stderr.contains("station: live view at http://0.0.0.0:"),
        "{out}"
    );
}

/// Kills the demo if the test fails before it ended it.
struct KillOnDrop(Option<u32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }
}
