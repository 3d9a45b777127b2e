//! The soak of issue 13: `station run` (a service run, not `--once`) against the virtual
//! bench served by the `station-sim` binary (`station-sim serve --world FILE`, its own
//! process, as `scripts/bench-line` runs it) with N phones arriving over time and faults at
//! every step, all written into the world file (docs/world.md) except usbmuxd's outage:
//!
//! - phones plugged in over the first 70 % of the run (`plug_at_ms`); until 80 % of the run
//!   one phone in four is pulled out 0.2–3 s after it arrived (mostly mid-work, sometimes
//!   after it was done) and plugged back 0.3–3 s later (`plug_periods`); once the station
//!   has let go of a phone (no connection to it for a while), it leaves the bench as an
//!   operator takes a finished phone off (`leave_when_idle_ms`), so the station's live
//!   rows are the phones on the bench, not every phone that ever came;
//! - trust: one in twenty activated phones denies it, the world's slow-trust phones (2.5 s);
//! - hostile phones (`[device.hostile]`): one in forty answers one lockdown request or
//!   mobileactivationd command with silence, a drip, the wrong types or a broken frame;
//! - the activation server: 50 ms latency, 5 % of each endpoint's requests answered 503; a
//!   stretch answering slower than the station's request timeout (`answer = "slow"`) and a
//!   stretch answering garbage (`answer = "garbage"`), `[[activation_server.window]]`;
//! - Graph and Kandji: latency, 5 % 503, 5 % 429 with `Retry-After: 1`; Entra's token
//!   endpoint 2 % 503; Kandji failing every request for a fifth of the run (minutes, in
//!   the long run) in the middle (`[[kandji.api.window]]`);
//! - usbmuxd going away once mid-run, after the slow stretch's requests timed out, and
//!   coming back 2 s later (SIGUSR1/SIGUSR2 to `station-sim`, the one fault the driver
//!   times itself).
//!
//! Checks, printed as it goes: every phone ended in a named outcome (its last `finished`;
//! phones that left the bench count with it), and some left once done; the slow stretch
//! made a request time out;
//! the ledger holds exactly one row per `started` attempt, each with an outcome, nothing
//! left open; nothing stuck (every phone done at the end of the drain); resident memory and
//! open descriptors, sampled every few seconds, flat after warm-up (the series is printed,
//! its anonymous part too: the file-backed part is the binary's pages); the time per phone
//! does not grow with the count (medians per fifth of the arrivals). The bounds on the
//! station's per-phone state are asserted deterministically by unit tests (host/src/line,
//! host/src/codes/chain.rs, host/src/slots.rs); the series here shows them at scale.
//!
//! The suite runs a smoke version (`soak_with_faults` with its defaults: 30 phones, about a
//! minute). `scripts/soak --phones 1000 --minutes 15` runs the long one by hand
//! (`STATION_SOAK_*`, docs/testing.md).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use station_sim::hostile::{HostileHow, HostileSpec};
use station_sim::{default_world, ActivationState, FaultWindow, PlugPeriod, Trust, WindowAnswer};
use station_tests::inproc::StreamingStation;
use station_tests::seeded::SeededRng;
use station_tests::Bench;

/// How often memory and descriptors are sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(3);
/// Concurrency of the run.
const CONCURRENCY: u32 = 16;
/// The station's activation-server request timeout in the soak (`[activation]
/// timeout_secs`), and how late the server's slow stretch answers: past it.
const ACTIVATION_TIMEOUT_SECS: u64 = 4;
const SLOW_ANSWER_MS: u64 = 6_000;
/// The MDMs' `Retry-After` on their 429s.
const RETRY_AFTER_SECS: u64 = 1;
/// The station's longest pause before retrying a phone (`[retry] max_backoff_ms`).
const MAX_BACKOFF_MS: u64 = 2_000;

/// How long a phone stays on the bench once the station has let go of it
/// (`leave_when_idle_ms`): the world's operator takes a phone off when no connection to it
/// has been open this long. Far above the station's retry pause (`MAX_BACKOFF_MS`, and
/// `Retry-After: 1` from the MDMs) and above how long a phone that was worked on waits
/// for a free worker when the slow stretch backs the queue up, so only phones that are
/// done leave; a tenth of the run, at least 8 s (the short run: some phones leave before
/// its end) and at most 90 s (the long run: ~150 phones on the bench at a time instead of
/// every phone that ever arrived).
fn leave_when_idle(run_for: Duration) -> Duration {
    (run_for / 10).clamp(
        Duration::from_millis(4 * MAX_BACKOFF_MS),
        Duration::from_secs(90),
    )
}

struct Knobs {
    phones: usize,
    minutes: f64,
    seed: u64,
}

fn knob<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a number")),
        Err(_) => default,
    }
}

const HOSTILE: [(&str, HostileHow); 5] = [
    ("GetValue", HostileHow::Silent),
    ("GetValue", HostileHow::WrongFieldTypes),
    ("QueryType", HostileHow::TruncatedFrame),
    (
        "CreateTunnel1SessionInfoRequest",
        HostileHow::OversizedFrame,
    ),
    ("CreateTunnel1ActivationInfoRequest", HostileHow::SlowDrip),
];

/// A stretch of the run, as fractions of it, in milliseconds since the bench started; at
/// least `at_least` long, so the short run meets it too.
fn window(
    run_for: Duration,
    from: f64,
    until: f64,
    at_least: Duration,
    answer: WindowAnswer,
) -> FaultWindow {
    let ms = |f: f64| run_for.mul_f64(f).as_millis() as u64;
    FaultWindow {
        from_ms: ms(from),
        until_ms: ms(until).max(ms(from) + at_least.as_millis() as u64),
        answer,
        latency_ms: if answer == WindowAnswer::Slow {
            SLOW_ANSWER_MS
        } else {
            0
        },
    }
}

/// The world: the generated phones (every activation and MDM case in turn), arriving over
/// the first 70 % of `run_for`, with unplugs and replugs, denied trust and hostile phones
/// mixed in, and the services' faults.
fn world(knobs: &Knobs, run_for: Duration) -> Soak {
    let arrival = run_for.mul_f64(0.7);
    let faults_end = run_for.mul_f64(0.8).as_millis() as u64;
    let mut world = default_world(knobs.phones, knobs.seed);
    world.leave_when_idle_ms = Some(leave_when_idle(run_for).as_millis() as u64);
    let step_ms = arrival.as_millis() as u64 / knobs.phones.max(1) as u64;
    let mut rng = SeededRng::new(knobs.seed ^ 0x50a4);
    let mut unplugs = 0;
    for (i, device) in world.devices.iter_mut().enumerate() {
        let plug_at = 1 + i as u64 * step_ms + rng.below(step_ms.max(1));
        device.plug_at_ms = Some(plug_at);
        if device.activation_state == Some(ActivationState::Activated) && i % 20 == 11 {
            device.trust = Some(Trust::Deny);
        }
        if i % 40 == 23 {
            let (at, how) = HOSTILE[(i / 40) % HOSTILE.len()];
            device.hostile = Some(HostileSpec { at: at.into(), how });
        }
        // Pulled out shortly after it arrived (at work, or done already) and put back.
        let unplug_at = plug_at + 200 + rng.below(2800);
        let replug_at = unplug_at + 300 + rng.below(2700);
        if rng.below(4) == 0 && replug_at < faults_end {
            device.plug_at_ms = None;
            device.plug_periods = Some(vec![
                PlugPeriod {
                    plug_at_ms: Some(plug_at),
                    unplug_at_ms: Some(unplug_at),
                },
                PlugPeriod {
                    plug_at_ms: Some(replug_at),
                    unplug_at_ms: None,
                },
            ]);
            unplugs += 1;
        }
    }
    let text = format!(
        "seed = {}\n\n[activation_server]\nlatency_ms = 50\n[activation_server.drm_handshake]\nfail_rate = 0.05\n[activation_server.device_activation]\nfail_rate = 0.05\n\n[intune.graph]\nlatency_ms = 30\nfail_rate = 0.05\nthrottle_rate = 0.05\nretry_after_secs = {RETRY_AFTER_SECS}\n[intune.token]\nfail_rate = 0.02\n\n[kandji.api]\nlatency_ms = 30\nfail_rate = 0.05\nthrottle_rate = 0.05\nretry_after_secs = {RETRY_AFTER_SECS}\n",
        knobs.seed
    );
    let faults = station_sim::World::from_toml(&text, "soak faults").expect("fault tables");
    world.activation_server = faults.activation_server;
    world.intune = faults.intune;
    world.kandji = faults.kandji;
    // The activation server: too slow for the station's timeout for a while, then garbage
    // for a while; a code source down for a fifth of the run.
    // Long enough for a few requests to run into the timeout in the short run too.
    let slow = window(
        run_for,
        0.20,
        0.26,
        Duration::from_secs(ACTIVATION_TIMEOUT_SECS + 4),
        WindowAnswer::Slow,
    );
    world.activation_server.windows = vec![
        slow,
        window(
            run_for,
            0.55,
            0.60,
            Duration::from_secs(2),
            WindowAnswer::Garbage,
        ),
    ];
    world.kandji.api.windows = vec![window(
        run_for,
        0.3,
        0.5,
        Duration::ZERO,
        WindowAnswer::Fail,
    )];
    // usbmuxd goes away at 40 % of the run, but not before the slow stretch's last
    // requests have timed out and been asked again (a slow answer's latency after its
    // end): the outage cuts every phone's work short, so in the short run, where the slow
    // stretch is stretched to its minimum length and reaches past 40 %, an outage inside
    // it would cut off the very requests that are to time out (it did: no timeout in
    // the suite's runs).
    let usbmuxd_away_at = run_for
        .mul_f64(0.4)
        .max(Duration::from_millis(slow.until_ms + SLOW_ANSWER_MS));
    Soak {
        world,
        unplugs,
        usbmuxd_away_at,
    }
}

/// The soak's world and the driver's own fault.
struct Soak {
    world: station_sim::World,
    /// Phones the world pulls out and plugs back.
    unplugs: usize,
    /// When the driver makes usbmuxd go away (since the station started, which is a little
    /// after the bench: later in the world's time, never earlier).
    usbmuxd_away_at: Duration,
}

/// One sample of the station process.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at_s: f64,
    rss_kb: u64,
    /// The anonymous part of the RSS (heap, stacks): what grows with retained state. The
    /// file-backed rest is mostly the binary's pages, touched as code paths run.
    anon_kb: u64,
    file_kb: u64,
    fds: usize,
}

fn sample(pid: u32, started: Instant) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    Some(Sample {
        at_s: started.elapsed().as_secs_f64(),
        rss_kb: field("VmRSS:")?,
        anon_kb: field("RssAnon:").unwrap_or(0),
        file_kb: field("RssFile:").unwrap_or(0),
        fds,
    })
}

fn median(values: &mut [u64]) -> u64 {
    if values.is_empty() {
        return 0;
    }
    values.sort_unstable();
    values[values.len() / 2]
}

/// What the driver knows of each phone from the events.
#[derive(Debug, Default)]
struct Seen {
    started: BTreeMap<String, usize>,
    finished: BTreeMap<String, usize>,
    last_outcome: BTreeMap<String, String>,
    /// elapsed_ms of each `activated` finish, of attempts that waited out no injected delay.
    activated_ms: BTreeMap<String, u64>,
    /// Phones whose current attempt waited out an injected delay: an activation-server
    /// request that timed out (the slow stretch), or a code look-up that took as long as
    /// an MDM's `Retry-After` (a 429 pauses the whole client, every phone looking up).
    slowed_in_attempt: BTreeSet<String>,
    /// `activated` finishes of such attempts: left out of "time per phone", where a few of
    /// them in the short run's handful of phones per fifth would decide the median.
    activated_slowed: usize,
    in_flight: BTreeSet<String>,
    run_id: Option<String>,
    paused: usize,
    /// How the activation server answered (`server_answer`'s class), counted.
    answers: BTreeMap<String, usize>,
    /// Code-source results (`code_lookup`), counted per source and result.
    lookups: BTreeMap<String, usize>,
    /// Attempts retried.
    retries: usize,
    /// Retries and outcomes that say a request timed out (the server's slow stretch).
    timeouts: usize,
    /// Activation-server answers that took longer than the station's request timeout: a
    /// request timed out and the HTTP client asked again.
    late_answers: usize,
    /// Phones plugged in now, as the station saw them (`attached` / `detached`).
    plugged: BTreeMap<String, bool>,
    /// Phones the station has worked on that wait for it again (a retry's pause, or a
    /// free worker after a replug): an operator would not take them off.
    waiting: BTreeSet<String>,
    /// Phones pulled out while in `waiting` (by the world's schedule, or leaving when idle
    /// because the wait outlasted `leave_when_idle_ms`).
    pulled_while_waiting: usize,
}

impl Seen {
    fn take(&mut self, event: &serde_json::Value) {
        let udid = event["udid"].as_str().unwrap_or_default().to_string();
        match event["event"].as_str().unwrap_or_default() {
            "run_started" => self.run_id = event["run_id"].as_str().map(str::to_string),
            "started" => {
                *self.started.entry(udid.clone()).or_default() += 1;
                self.waiting.remove(&udid);
                self.slowed_in_attempt.remove(&udid);
                self.in_flight.insert(udid);
            }
            "attached" => {
                self.plugged.insert(udid, true);
            }
            "detached" => {
                if self.waiting.remove(&udid) {
                    self.pulled_while_waiting += 1;
                }
                self.plugged.insert(udid, false);
            }
            "queued" if self.started.contains_key(&udid) => {
                self.waiting.insert(udid);
            }
            "finished" => {
                *self.finished.entry(udid.clone()).or_default() += 1;
                let outcome = event["outcome"].as_str().unwrap_or_default().to_string();
                if outcome == "activated" {
                    if self.slowed_in_attempt.contains(&udid) {
                        self.activated_slowed += 1;
                    } else {
                        self.activated_ms
                            .insert(udid.clone(), event["elapsed_ms"].as_u64().unwrap_or(0));
                    }
                }
                if event["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("timed out"))
                {
                    self.timeouts += 1;
                }
                self.last_outcome.insert(udid.clone(), outcome);
                self.in_flight.remove(&udid);
            }
            "ledger_paused" => self.paused += 1,
            "retrying" => {
                self.retries += 1;
                self.waiting.insert(udid);
                if event["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("timed out"))
                {
                    self.timeouts += 1;
                }
            }
            "server_answer" => {
                let class = event["class"].as_str().unwrap_or_default().to_string();
                if event["elapsed_ms"]
                    .as_u64()
                    .is_some_and(|ms| ms >= ACTIVATION_TIMEOUT_SECS * 1000)
                {
                    self.late_answers += 1;
                    self.slowed_in_attempt.insert(udid.clone());
                }
                *self.answers.entry(class).or_default() += 1;
            }
            "code_lookup" => {
                if event["elapsed_ms"]
                    .as_u64()
                    .is_some_and(|ms| ms >= RETRY_AFTER_SECS * 1000)
                {
                    self.slowed_in_attempt.insert(udid.clone());
                }
                for source in event["sources"].as_array().into_iter().flatten() {
                    let key = format!(
                        "{}:{}",
                        source["source"].as_str().unwrap_or_default(),
                        source["result"].as_str().unwrap_or_default()
                    );
                    *self.lookups.entry(key).or_default() += 1;
                }
            }
            _ => {}
        }
    }
}

fn drain(station: &mut StreamingStation, seen: &mut Seen) {
    while let Ok(line) = station.lines.try_recv() {
        let event: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not NDJSON ({e}): {line}"));
        seen.take(&event);
    }
}

async fn soak(knobs: Knobs) {
    let run_for = Duration::from_secs_f64(knobs.minutes * 60.0);
    eprintln!(
        "soak: {} phones over {:.1} min (arrivals in the first {:.0} s), seed {}, concurrency {CONCURRENCY}",
        knobs.phones,
        knobs.minutes,
        run_for.mul_f64(0.7).as_secs_f64(),
        knobs.seed
    );
    let Soak {
        world,
        unplugs,
        usbmuxd_away_at,
    } = world(&knobs, run_for);
    let dir = tempfile::tempdir().expect("temporary directory");
    let world_path = dir.path().join("soak-world.toml");
    std::fs::write(&world_path, world.to_toml()).expect("world file");
    let mut bench = Bench::start_with(&[
        "--world",
        world_path.to_str().expect("utf-8"),
        "--station-config-sources",
        "intune,kandji",
        "-q",
    ]);
    let udids: Vec<String> = bench.ready.devices.iter().map(|d| d.udid.clone()).collect();
    assert_eq!(
        udids.len(),
        knobs.phones,
        "the bench serves the world's phones"
    );
    let config = std::fs::read_to_string(bench.station_config()).expect("bench config");
    let config = config
        .replacen(
            "[station]\n",
            &format!("[station]\nconcurrency = {CONCURRENCY}\n"),
            1,
        )
        .replacen(
            "[activation]\n",
            &format!("[activation]\ntimeout_secs = {ACTIVATION_TIMEOUT_SECS}\n"),
            1,
        )
        + &format!(
            "\n[retry]\nattempts = 3\ninitial_backoff_ms = 200\nmax_backoff_ms = {MAX_BACKOFF_MS}\n"
        );
    let config_path = dir.path().join("soak.toml");
    std::fs::write(&config_path, config).expect("config");
    let config_path = config_path.to_str().expect("utf-8").to_string();
    // `station_command` points STATION_DATA_DIR here, over the file's `data_dir`.
    let data_dir = bench.station_data_dir();

    let mut command = bench.station_command(&["--config", &config_path, "--json", "run"]);
    // Extra environment for the station alone, to profile it (docs/testing.md, "Soak"):
    // `STATION_SOAK_STATION_ENV="LD_PRELOAD=… DUMP_HEAPTRACK_OUTPUT=…"`.
    if let Ok(extra) = std::env::var("STATION_SOAK_STATION_ENV") {
        for pair in extra.split_whitespace() {
            let (key, value) = pair
                .split_once('=')
                .unwrap_or_else(|| panic!("STATION_SOAK_STATION_ENV: {pair:?} is not KEY=VALUE"));
            command.env(key, value);
        }
    }
    let started = Instant::now();
    let mut station = StreamingStation::spawn(command);
    let pid = station.child.id();
    let mut seen = Seen::default();
    let mut samples = Vec::new();
    let mut next_sample = Instant::now();
    let mut usbmuxd_gone: Option<Instant> = None;
    let mut usbmuxd_done = false;

    while started.elapsed() < run_for {
        drain(&mut station, &mut seen);
        assert!(
            matches!(station.child.try_wait(), Ok(None)),
            "the station exited mid-run"
        );
        let now = started.elapsed();
        if Instant::now() >= next_sample {
            if let Some(s) = sample(pid, started) {
                eprintln!(
                    "soak: t={:>6.1}s rss={:>6.1} MB (anon {:>5.1}, file {:>5.1}) fds={:>3} started={} finished={} in_flight={}",
                    s.at_s,
                    s.rss_kb as f64 / 1024.0,
                    s.anon_kb as f64 / 1024.0,
                    s.file_kb as f64 / 1024.0,
                    s.fds,
                    seen.started.values().sum::<usize>(),
                    seen.finished.values().sum::<usize>(),
                    seen.in_flight.len()
                );
                samples.push(s);
            }
            next_sample += SAMPLE_EVERY;
        }
        // usbmuxd away once, back 2 s later.
        if !usbmuxd_done && usbmuxd_gone.is_none() && now >= usbmuxd_away_at {
            bench.signal("USR1");
            usbmuxd_gone = Some(Instant::now());
            eprintln!("soak: t={:.1}s usbmuxd gone", now.as_secs_f64());
        }
        if usbmuxd_gone.is_some_and(|at| at.elapsed() >= Duration::from_secs(2)) {
            bench.signal("USR2");
            usbmuxd_gone = None;
            usbmuxd_done = true;
            eprintln!(
                "soak: t={:.1}s usbmuxd back",
                started.elapsed().as_secs_f64()
            );
        }
        assert!(bench.running(), "station-sim exited mid-run");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Drain: every phone must come to an end (retries and back-offs included).
    let drain_limit = Duration::from_secs(180);
    let drain_started = Instant::now();
    loop {
        drain(&mut station, &mut seen);
        let done = udids.iter().all(|u| {
            seen.finished.get(u).copied().unwrap_or(0) >= seen.started.get(u).copied().unwrap_or(1)
                && seen.finished.contains_key(u)
                && seen.last_outcome.get(u).is_some_and(|o| o != "interrupted")
        });
        if done {
            break;
        }
        if drain_started.elapsed() > drain_limit {
            let stuck: Vec<(&String, Option<&String>, usize, usize)> = udids
                .iter()
                .filter(|u| {
                    !seen.finished.contains_key(*u)
                        || seen.in_flight.contains(*u)
                        || seen
                            .last_outcome
                            .get(*u)
                            .is_some_and(|o| o == "interrupted")
                })
                .map(|u| {
                    (
                        u,
                        seen.last_outcome.get(u),
                        seen.started.get(u).copied().unwrap_or(0),
                        seen.finished.get(u).copied().unwrap_or(0),
                    )
                })
                .collect();
            panic!(
                "{} phone(s) stuck after {drain_limit:?} of drain: {stuck:#?}",
                stuck.len()
            );
        }
        if Instant::now() >= next_sample {
            if let Some(s) = sample(pid, started) {
                samples.push(s);
            }
            next_sample += SAMPLE_EVERY;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let total = started.elapsed();
    station.signal("TERM");
    let (rest, status) = station.finish(Duration::from_secs(60)).await;
    for event in &rest {
        seen.take(event);
    }
    assert!(status.success(), "the run ended {status}");

    // Every phone: a named final outcome.
    let mut outcomes: BTreeMap<&str, usize> = BTreeMap::new();
    for udid in &udids {
        let outcome = seen
            .last_outcome
            .get(udid)
            .map(String::as_str)
            .unwrap_or("");
        assert!(!outcome.is_empty(), "{udid} has no outcome");
        *outcomes.entry(outcome).or_default() += 1;
    }
    eprintln!("soak: outcomes {outcomes:?}");
    // Phones the world's operator took off once the station was done with them: they
    // count with the outcome they ended in (above).
    let left: BTreeMap<&str, usize> = udids
        .iter()
        .filter(|u| seen.plugged.get(*u) == Some(&false))
        .fold(BTreeMap::new(), |mut by, u| {
            *by.entry(seen.last_outcome[u].as_str()).or_default() += 1;
            by
        });
    eprintln!(
        "soak: {} phones off the bench at the end (leave_when_idle_ms = {} ms), by outcome {left:?}; {} pulled out while waiting for a retry or a worker",
        left.values().sum::<usize>(),
        leave_when_idle(run_for).as_millis(),
        seen.pulled_while_waiting
    );
    assert!(
        !left.is_empty(),
        "no phone left the bench once the station was done with it"
    );
    eprintln!("soak: activation server answers {:?}", seen.answers);
    eprintln!("soak: code look-ups {:?}", seen.lookups);
    eprintln!(
        "soak: {} retries; {} retries or outcomes after a request timed out; {} activation-server answers after one timed out",
        seen.retries, seen.timeouts, seen.late_answers
    );
    // The slow stretch reached the station: some request timed out (an attempt ended or was
    // retried for it, or an answer came only after the HTTP client asked again).
    assert!(
        seen.timeouts + seen.late_answers > 0,
        "no activation-server request timed out in the slow stretch"
    );
    eprintln!(
        "soak: {} attempts, {unplugs} phones pulled out and put back by the world, {} ledger pauses",
        seen.started.values().sum::<usize>(),
        seen.paused
    );

    // The ledger: one row per attempt, each closed, the same count per phone as `started`.
    let run_id = seen.run_id.clone().expect("run_started");
    let conn = station_tests::open_checked_ledger(&data_dir);
    let mut statement = conn
        .prepare("SELECT udid, COUNT(*), SUM(outcome IS NULL) FROM attempts WHERE run_id = ?1 GROUP BY udid")
        .expect("prepare");
    let rows: BTreeMap<String, (usize, usize)> = statement
        .query_map([&run_id], |row| {
            Ok((
                row.get::<_, String>(0)?,
                (
                    row.get::<_, i64>(1)? as usize,
                    row.get::<_, i64>(2)? as usize,
                ),
            ))
        })
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    for udid in &udids {
        let (count, open) = rows.get(udid).copied().unwrap_or((0, 0));
        let attempts = seen.started.get(udid).copied().unwrap_or(0);
        assert_eq!(
            count, attempts,
            "{udid}: {count} ledger rows for {attempts} attempts"
        );
        assert_eq!(open, 0, "{udid}: {open} attempts left open");
    }
    assert_eq!(
        rows.len(),
        udids.len(),
        "ledger rows for phones not in the world"
    );

    // Memory and descriptors flat after warm-up: the first fifth of the run is warm-up; the
    // last quarter may not be above the second quarter by more than the margins.
    eprintln!("soak: samples (t s, RSS MB, fds):");
    for s in &samples {
        eprintln!(
            "soak:   {:>7.1} {:>7.1} {:>4}",
            s.at_s,
            s.rss_kb as f64 / 1024.0,
            s.fds
        );
    }
    let warm: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.at_s >= total.as_secs_f64() * 0.2)
        .collect();
    if warm.len() >= 8 {
        let quarter = warm.len() / 4;
        let early = &warm[quarter..2 * quarter];
        let late = &warm[warm.len() - quarter..];
        let mut early_rss: Vec<u64> = early.iter().map(|s| s.rss_kb).collect();
        let mut late_rss: Vec<u64> = late.iter().map(|s| s.rss_kb).collect();
        let (early_rss, late_rss) = (median(&mut early_rss), median(&mut late_rss));
        let early_fds = early.iter().map(|s| s.fds).max().unwrap_or(0);
        let late_fds = late.iter().map(|s| s.fds).max().unwrap_or(0);
        eprintln!(
            "soak: RSS median {:.1} MB (after warm-up) -> {:.1} MB (end); fds max {early_fds} -> {late_fds}",
            early_rss as f64 / 1024.0,
            late_rss as f64 / 1024.0
        );
        assert!(
            late_rss <= early_rss + early_rss / 4 + 8 * 1024,
            "resident memory grows: {early_rss} kB -> {late_rss} kB"
        );
        assert!(
            late_fds <= early_fds + 2 * CONCURRENCY as usize,
            "descriptors grow: {early_fds} -> {late_fds}"
        );
    }

    // Time per phone by arrival order, in fifths: the last no slower than the first.
    let mut fifths: Vec<Vec<u64>> = vec![Vec::new(); 5];
    for (i, udid) in udids.iter().enumerate() {
        if let Some(ms) = seen.activated_ms.get(udid) {
            fifths[i * 5 / udids.len().max(1)].push(*ms);
        }
    }
    let medians: Vec<u64> = fifths.iter_mut().map(|v| median(v)).collect();
    eprintln!(
        "soak: median ms per activated phone, by fifth of the arrivals: {medians:?} (phones per fifth {:?}; {} activations slowed by a timeout or a Retry-After left out)",
        fifths.iter().map(Vec::len).collect::<Vec<_>>(),
        seen.activated_slowed
    );
    // The first and the last fifth are compared; a fifth without an activation (a short
    // run's) has no median.
    if medians[0] > 0 && medians[4] > 0 {
        assert!(
            medians[4] <= medians[0] * 2 + 1000,
            "time per phone grows with the count: {medians:?}"
        );
    }
    eprintln!(
        "soak: passed: {} phones in {:.1} s",
        udids.len(),
        total.as_secs_f64()
    );
}

/// The suite's smoke version: 30 phones in about 55 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_with_faults() {
    soak(Knobs {
        phones: knob("STATION_SOAK_PHONES", 30),
        minutes: knob("STATION_SOAK_MINUTES", 0.4),
        seed: knob("STATION_SOAK_SEED", 13),
    })
    .await;
}
