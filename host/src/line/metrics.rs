//! The line's numbers for Prometheus (`/metrics`, docs/dashboard.md), counted from the same
//! events as the NDJSON stream, so the numbers and the stream cannot disagree. Rendered in
//! the Prometheus text exposition format, version 0.0.4.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;

use super::board::Board;
use super::events::{AnswerClass, Event, EventKind};
use crate::output::wire_name;

/// Upper bounds (seconds) of the step and attempt histograms: a pairing takes a second,
/// waiting for Trust up to a minute or more.
const STEP_BUCKETS: [f64; 11] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];
/// Upper bounds (seconds) of the network latency histograms (code look-ups, Apple).
const LATENCY_BUCKETS: [f64; 11] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    /// Per bound, observations at or below it (not cumulative; summed when rendered).
    buckets: Vec<u64>,
    count: u64,
    sum: f64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: vec![0; bounds.len()],
            count: 0,
            sum: 0.0,
        }
    }

    fn observe_ms(&mut self, ms: u64) {
        let seconds = ms as f64 / 1000.0;
        if let Some(i) = self.bounds.iter().position(|b| seconds <= *b) {
            self.buckets[i] += 1;
        }
        self.count += 1;
        self.sum += seconds;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (bound, n) in self.bounds.iter().zip(&self.buckets) {
            cumulative += n;
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = |labels: &str| {
            if labels.is_empty() {
                String::new()
            } else {
                format!("{{{labels}}}")
            }
        };
        let _ = writeln!(out, "{name}_sum{} {}", braces(labels), self.sum);
        let _ = writeln!(out, "{name}_count{} {}", braces(labels), self.count);
    }
}

/// Counters and histograms over the run's events.
#[derive(Debug)]
pub struct Metrics {
    /// Per phone: the step it is in and since when (ms), to time the step when it ends.
    current: HashMap<String, (String, u64)>,
    steps: BTreeMap<String, Histogram>,
    attempts: Histogram,
    finished: BTreeMap<String, u64>,
    /// (source, kind, result) → look-ups.
    lookups: BTreeMap<(String, String, &'static str), u64>,
    lookup_latency: Histogram,
    /// (source, kind) → time each source took when asked (cached answers left out).
    source_latency: BTreeMap<(String, String), Histogram>,
    answers: BTreeMap<AnswerClass, u64>,
    answer_latency: Histogram,
    retries: u64,
    events: u64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            current: HashMap::new(),
            steps: BTreeMap::new(),
            attempts: Histogram::new(&STEP_BUCKETS),
            finished: BTreeMap::new(),
            lookups: BTreeMap::new(),
            lookup_latency: Histogram::new(&LATENCY_BUCKETS),
            source_latency: BTreeMap::new(),
            answers: BTreeMap::new(),
            answer_latency: Histogram::new(&LATENCY_BUCKETS),
            retries: 0,
            events: 0,
        }
    }
}

impl Metrics {
    /// The step a phone was in ends now (the next step, its outcome, an unplug).
    fn end_step(&mut self, udid: &str, ts_ms: u64) {
        if let Some((step, since)) = self.current.remove(udid) {
            self.steps
                .entry(step)
                .or_insert_with(|| Histogram::new(&STEP_BUCKETS))
                .observe_ms(ts_ms.saturating_sub(since));
        }
    }

    /// Events applied so far (the `/events` stream numbers its messages by it).
    pub fn events(&self) -> u64 {
        self.events
    }

    pub fn apply(&mut self, event: &Event) {
        self.events += 1;
        let ts = event.ts_ms;
        match &event.kind {
            EventKind::Step { phone, step } => {
                self.end_step(&phone.udid, ts);
                self.current
                    .insert(phone.udid.clone(), (wire_name(step), ts));
            }
            EventKind::Finished {
                phone,
                outcome,
                elapsed_ms,
                ..
            } => {
                self.end_step(&phone.udid, ts);
                self.attempts.observe_ms(*elapsed_ms);
                *self.finished.entry(wire_name(outcome)).or_default() += 1;
            }
            EventKind::Detached { phone } => self.end_step(&phone.udid, ts),
            EventKind::Retrying { .. } => self.retries += 1,
            EventKind::CodeLookup {
                elapsed_ms,
                sources,
                ..
            } => {
                self.lookup_latency.observe_ms(*elapsed_ms);
                for s in sources {
                    *self
                        .lookups
                        .entry((s.source.clone(), s.kind.clone(), s.result.as_str()))
                        .or_default() += 1;
                    if let Some(ms) = s.elapsed_ms {
                        self.source_latency
                            .entry((s.source.clone(), s.kind.clone()))
                            .or_insert_with(|| Histogram::new(&LATENCY_BUCKETS))
                            .observe_ms(ms);
                    }
                }
            }
            EventKind::ServerAnswer {
                class, elapsed_ms, ..
            } => {
                *self.answers.entry(*class).or_default() += 1;
                self.answer_latency.observe_ms(*elapsed_ms);
            }
            _ => {}
        }
    }

    /// The exposition text, with the board's gauges (phones by outcome, queue, in flight).
    pub fn render(&self, board: &Board) -> String {
        let mut out = String::new();
        let family = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
        };

        family(
            &mut out,
            "station_run_info",
            "gauge",
            "The run being served (always 1).",
        );
        let _ = writeln!(
            out,
            "station_run_info{{run_id=\"{}\",station_id=\"{}\"}} 1",
            escape(board.run_id().unwrap_or_default()),
            escape(board.station_id().unwrap_or_default())
        );
        family(
            &mut out,
            "station_run_ended",
            "gauge",
            "1 once the run's summary was sent (the line is done).",
        );
        let _ = writeln!(
            out,
            "station_run_ended {}",
            u8::from(board.summary().is_some())
        );

        family(
            &mut out,
            "station_phones",
            "gauge",
            "Phones by final outcome (the summary's counts once the run ended).",
        );
        for (outcome, n) in board.counts() {
            let _ = writeln!(
                out,
                "station_phones{{outcome=\"{}\"}} {n}",
                escape(&outcome)
            );
        }
        let (queued, in_flight) = board.queue_and_in_flight();
        family(
            &mut out,
            "station_queue_length",
            "gauge",
            "Phones waiting for a free worker.",
        );
        let _ = writeln!(out, "station_queue_length {queued}");
        family(
            &mut out,
            "station_phones_in_flight",
            "gauge",
            "Phones being worked on now.",
        );
        let _ = writeln!(out, "station_phones_in_flight {in_flight}");

        family(
            &mut out,
            "station_attempts_total",
            "counter",
            "Attempts finished, by outcome (a retried phone counts once per attempt).",
        );
        for (outcome, n) in &self.finished {
            let _ = writeln!(
                out,
                "station_attempts_total{{outcome=\"{}\"}} {n}",
                escape(outcome)
            );
        }
        family(
            &mut out,
            "station_retries_total",
            "counter",
            "Attempts scheduled again after a transient failure.",
        );
        let _ = writeln!(out, "station_retries_total {}", self.retries);

        family(
            &mut out,
            "station_attempt_duration_seconds",
            "histogram",
            "Duration of one attempt on one phone, start to outcome.",
        );
        self.attempts
            .render(&mut out, "station_attempt_duration_seconds", "");
        family(
            &mut out,
            "station_step_duration_seconds",
            "histogram",
            "Time phones spent in each step of the workflow.",
        );
        for (step, histogram) in &self.steps {
            histogram.render(
                &mut out,
                "station_step_duration_seconds",
                &format!("step=\"{}\"", escape(step)),
            );
        }

        family(
            &mut out,
            "station_code_lookups_total",
            "counter",
            "Bypass-code look-ups, by source and result (codes, no_code, unknown, failed).",
        );
        for ((source, kind, result), n) in &self.lookups {
            let _ = writeln!(
                out,
                "station_code_lookups_total{{source=\"{}\",kind=\"{}\",result=\"{result}\"}} {n}",
                escape(source),
                escape(kind)
            );
        }
        family(
            &mut out,
            "station_code_lookup_duration_seconds",
            "histogram",
            "Duration of a phone's whole code look-up (its sources are asked at once).",
        );
        self.lookup_latency
            .render(&mut out, "station_code_lookup_duration_seconds", "");
        family(
            &mut out,
            "station_code_source_duration_seconds",
            "histogram",
            "Time each code source took to answer or fail, by source (cached answers left out).",
        );
        for ((source, kind), histogram) in &self.source_latency {
            histogram.render(
                &mut out,
                "station_code_source_duration_seconds",
                &format!("source=\"{}\",kind=\"{}\"", escape(source), escape(kind)),
            );
        }

        family(
            &mut out,
            "station_activation_answers_total",
            "counter",
            "Answers of the activation server, by class (transport: no answer at all).",
        );
        for (class, n) in &self.answers {
            let _ = writeln!(
                out,
                "station_activation_answers_total{{class=\"{}\"}} {n}",
                class.as_str()
            );
        }
        family(
            &mut out,
            "station_activation_answer_duration_seconds",
            "histogram",
            "Time from a request to the activation server to its classified answer.",
        );
        self.answer_latency
            .render(&mut out, "station_activation_answer_duration_seconds", "");

        family(
            &mut out,
            "station_events_total",
            "counter",
            "Events of the line's stream so far.",
        );
        let _ = writeln!(out, "station_events_total {}", self.events);
        out
    }
}

/// A label value as the text format wants it: backslash, double quote and newline escaped.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activation::{Outcome, Step};
    use crate::line::events::{PhoneRef, SourceOutcome, SourceResult, Summary, SCHEMA_VERSION};
    use crate::lockstate::ManagementState;

    fn at(ts_ms: u64, kind: EventKind) -> Event {
        Event {
            v: SCHEMA_VERSION,
            ts_ms,
            kind,
        }
    }

    fn phone(n: u32) -> PhoneRef {
        PhoneRef {
            udid: format!("U{n}"),
            slot: format!("A{n}"),
        }
    }

    fn finished(n: u32, outcome: Outcome) -> EventKind {
        EventKind::Finished {
            phone: phone(n),
            outcome,
            message: "m".into(),
            serial: None,
            model: None,
            activation_locked: false,
            codes_tried: 0,
            released_by: None,
            step: None,
            elapsed_ms: 3000,
            management: ManagementState::default(),
        }
    }

    /// The lines of a rendered family that start with `prefix`, as (line, value).
    fn samples<'a>(text: &'a str, prefix: &str) -> Vec<(&'a str, f64)> {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .map(|l| {
                let (name, value) = l.rsplit_once(' ').expect("sample");
                (name, value.parse().expect("number"))
            })
            .collect()
    }

    #[test]
    fn counts_histograms_and_gauges_come_from_the_events() {
        let mut board = Board::new(["A1", "A2", "A3"]);
        let mut metrics = Metrics::default();
        let events = [
            at(0, EventKind::Queued { phone: phone(3) }),
            at(
                1000,
                EventKind::Step {
                    phone: phone(1),
                    step: Step::Pair,
                },
            ),
            at(
                1400,
                EventKind::Step {
                    phone: phone(1),
                    step: Step::Handshake,
                },
            ),
            at(
                1500,
                EventKind::CodeLookup {
                    phone: phone(1),
                    elapsed_ms: 20,
                    sources: vec![
                        SourceResult {
                            source: "intune".into(),
                            kind: "intune".into(),
                            result: SourceOutcome::Codes,
                            codes: 1,
                            cached: false,
                            elapsed_ms: Some(20),
                        },
                        SourceResult {
                            source: "csv:\"odd\\name\"".into(),
                            kind: "csv".into(),
                            result: SourceOutcome::Failed,
                            codes: 0,
                            cached: false,
                            elapsed_ms: Some(7),
                        },
                    ],
                },
            ),
            at(
                1600,
                EventKind::ServerAnswer {
                    phone: phone(1),
                    class: AnswerClass::LockForm,
                    elapsed_ms: 300,
                },
            ),
            at(4000, finished(1, Outcome::Activated)),
            at(
                4100,
                EventKind::Step {
                    phone: phone(2),
                    step: Step::Pair,
                },
            ),
        ];
        for e in &events {
            board.apply(e);
            metrics.apply(e);
        }
        let text = metrics.render(&board);
        assert_eq!(
            samples(&text, "station_phones{"),
            [("station_phones{outcome=\"activated\"}", 1.0)]
        );
        assert_eq!(
            samples(&text, "station_queue_length"),
            [("station_queue_length", 1.0)]
        );
        assert_eq!(
            samples(&text, "station_phones_in_flight"),
            [("station_phones_in_flight", 1.0)]
        );
        // Pair took 0.4 s, the handshake (to the outcome) 2.6 s; phone 2's pairing is open.
        let pair = samples(&text, "station_step_duration_seconds_bucket{step=\"pair\"");
        assert!(
            pair.contains(&(
                "station_step_duration_seconds_bucket{step=\"pair\",le=\"0.25\"}",
                0.0
            )),
            "{text}"
        );
        assert!(
            pair.contains(&(
                "station_step_duration_seconds_bucket{step=\"pair\",le=\"0.5\"}",
                1.0
            )),
            "{text}"
        );
        assert!(
            pair.contains(&(
                "station_step_duration_seconds_bucket{step=\"pair\",le=\"+Inf\"}",
                1.0
            )),
            "{text}"
        );
        assert_eq!(
            samples(
                &text,
                "station_step_duration_seconds_sum{step=\"handshake\"}"
            ),
            [("station_step_duration_seconds_sum{step=\"handshake\"}", 2.6)]
        );
        assert!(
            text.contains(
                "station_code_lookups_total{source=\"intune\",kind=\"intune\",result=\"codes\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "station_code_lookups_total{source=\"csv:\\\"odd\\\\name\\\"\",kind=\"csv\",result=\"failed\"} 1"
            ),
            "label values are escaped: {text}"
        );
        assert!(text.contains("station_activation_answers_total{class=\"lock_form\"} 1"));
        assert!(text.contains("station_activation_answer_duration_seconds_bucket{le=\"0.25\"} 0"));
        assert!(text.contains("station_activation_answer_duration_seconds_bucket{le=\"0.5\"} 1"));
        assert!(text.contains("station_activation_answer_duration_seconds_count 1"));
        assert!(text.contains("station_code_lookup_duration_seconds_count 1"));
        // Each source has its own latency, failures included.
        assert!(text.contains(
            "station_code_source_duration_seconds_bucket{source=\"intune\",kind=\"intune\",le=\"0.025\"} 1"
        ));
        assert!(text.contains(
            "station_code_source_duration_seconds_sum{source=\"csv:\\\"odd\\\\name\\\"\",kind=\"csv\"} 0.007"
        ));
        assert!(text.contains("station_attempts_total{outcome=\"activated\"} 1"));
        assert!(text.contains("station_run_ended 0"));
        // Every family is declared once, before its samples.
        let mut declared = std::collections::BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().expect("name");
                assert!(declared.insert(name.to_string()), "{name} twice");
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().expect("name");
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|b| declared.contains(*b)))
                    .unwrap_or(name);
                assert!(declared.contains(base), "{name} before its TYPE");
            }
        }
    }

    #[test]
    fn at_the_end_the_phones_gauge_is_the_summary() {
        let mut board = Board::new([]);
        let mut metrics = Metrics::default();
        for e in [
            at(1, finished(1, Outcome::Activated)),
            at(2, finished(2, Outcome::LockedNoCode)),
            at(
                3,
                EventKind::Summary(Summary {
                    run_id: "r".into(),
                    phones: 2,
                    counts: BTreeMap::from([
                        ("activated".to_string(), 1),
                        ("locked_no_code".to_string(), 1),
                    ]),
                    ..Summary::default()
                }),
            ),
        ] {
            board.apply(&e);
            metrics.apply(&e);
        }
        let text = metrics.render(&board);
        assert!(text.contains("station_phones{outcome=\"activated\"} 1"));
        assert!(text.contains("station_phones{outcome=\"locked_no_code\"} 1"));
        assert!(text.contains("station_run_ended 1"));
        assert!(text.contains("station_events_total 3"));
    }
}
