//! The line's typed events: what the terminal UI and the NDJSON stream render.
//! The NDJSON form is a contract, versioned by `v` (docs/events.md).

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::activation::{Outcome, Release, Step};
use crate::codes::chain::ChainError;
use crate::codes::{Lookup, LookupError};
use crate::lockstate::ManagementState;

/// Version of the event schema; bumped on any incompatible change.
pub const SCHEMA_VERSION: u32 = 2;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    pub v: u32,
    /// Milliseconds since the Unix epoch.
    pub ts_ms: u64,
    #[serde(flatten)]
    pub kind: EventKind,
}

impl Event {
    /// One NDJSON line of the stream back into the event: how `station watch` hands what
    /// a run publishes to the same renderer. An event kind this build does not know is an
    /// error the caller may skip (readers ignore kinds they do not know).
    pub fn from_json(line: &str) -> Result<Event, serde_json::Error> {
        serde_json::from_str(line)
    }
}

/// A phone as every event names it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PhoneRef {
    pub udid: String,
    /// The bench label from the slot map, else the usbmuxd LocationID in hex.
    pub slot: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    RunStarted {
        run_id: String,
        station_id: String,
        concurrency: usize,
        once: bool,
    },
    /// An attempt the previous station process left unfinished, now recorded `interrupted`.
    Recovered {
        #[serde(flatten)]
        phone: PhoneRef,
        step: Option<String>,
    },
    Attached {
        #[serde(flatten)]
        phone: PhoneRef,
        location_id: u32,
    },
    Detached {
        #[serde(flatten)]
        phone: PhoneRef,
    },
    /// Waiting for a free worker (the concurrency limit).
    Queued {
        #[serde(flatten)]
        phone: PhoneRef,
    },
    Started {
        #[serde(flatten)]
        phone: PhoneRef,
        attempt: u32,
        /// Phones being worked on now, this one included.
        in_flight: usize,
    },
    Identified {
        #[serde(flatten)]
        phone: PhoneRef,
        serial: String,
        product_type: Option<String>,
        model: Option<String>,
        product_version: Option<String>,
        /// Find My, passcode and management (`find_my`, `passcode_set`, …; since `v` 2).
        #[serde(flatten)]
        management: ManagementState,
    },
    Step {
        #[serde(flatten)]
        phone: PhoneRef,
        step: Step,
    },
    Retrying {
        #[serde(flatten)]
        phone: PhoneRef,
        attempt: u32,
        wait_ms: u64,
        reason: String,
    },
    /// The attempt's outcome, committed to the ledger before this event is sent.
    Finished {
        #[serde(flatten)]
        phone: PhoneRef,
        outcome: Outcome,
        message: String,
        serial: Option<String>,
        model: Option<String>,
        activation_locked: bool,
        codes_tried: usize,
        released_by: Option<Release>,
        step: Option<Step>,
        elapsed_ms: u64,
        /// Find My, passcode and management as known at the end (since `v` 2): a phone
        /// that refused pairing for its passcode says `passcode_set` here only.
        #[serde(flatten)]
        management: ManagementState,
    },
    /// The phone's bypass-code look-up came back (docs/events.md; added within `v` 2).
    CodeLookup {
        #[serde(flatten)]
        phone: PhoneRef,
        /// The whole look-up. The sources are asked at once, so this is the slowest
        /// source's time (or the cache's, when every answer was kept from earlier).
        elapsed_ms: u64,
        /// Each configured source's answer, in configuration order.
        sources: Vec<SourceResult>,
    },
    /// Apple's activation server answered one request (docs/events.md; added within `v` 2).
    ServerAnswer {
        #[serde(flatten)]
        phone: PhoneRef,
        /// What the answer was, by [`AnswerClass`].
        class: AnswerClass,
        /// From the request to the classified answer, the client's own retries included.
        elapsed_ms: u64,
    },
    /// Replugged after it was already done (activated) in this run.
    Skipped {
        #[serde(flatten)]
        phone: PhoneRef,
        outcome: Outcome,
        reason: String,
    },
    /// The connection to usbmuxd was lost or refused (the daemon exited or is not
    /// running yet). Phones mid-exchange end `interrupted`; the station keeps retrying.
    UsbmuxdLost {
        reason: String,
        /// Milliseconds until the next connection attempt.
        retry_ms: u64,
    },
    /// usbmuxd answers again; the phones it lists are picked up (resumed if interrupted).
    UsbmuxdBack {
        /// Phones usbmuxd lists now.
        phones: usize,
        /// How long it was away.
        outage_ms: u64,
    },
    /// The ledger cannot take writes (the data directory is full or read-only, or a
    /// commit failed): no new phone is started; the ones in flight finish. Queued phones
    /// wait; the station looks again every `recheck_ms`.
    LedgerPaused {
        /// The error code: `ledger-full`, `ledger-read-only` or `ledger-error`.
        code: String,
        reason: String,
        recheck_ms: u64,
    },
    /// The ledger takes writes again (outcomes kept meanwhile are committed): the line
    /// takes new phones.
    LedgerResumed {
        /// How long no phone was started.
        paused_ms: u64,
    },
    Summary(Summary),
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Summary {
    pub run_id: String,
    pub phones: usize,
    /// Final outcome per phone, counted.
    pub counts: BTreeMap<String, usize>,
    /// Phones that need the operator (anything but activated / already activated).
    pub attention: Vec<Attention>,
    /// The operator stopped the run (Ctrl-C) before every phone was done.
    pub stopped_early: bool,
    /// Stopped at once (a second Ctrl-C/SIGTERM): phones in flight were cut short.
    pub aborted: bool,
    pub elapsed_ms: u64,
}

impl Summary {
    pub fn failed(&self) -> usize {
        self.attention.len()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attention {
    #[serde(flatten)]
    pub phone: PhoneRef,
    pub serial: Option<String>,
    pub outcome: Outcome,
    pub message: String,
}

/// One code source's part in a look-up: never a code, only how many.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SourceResult {
    /// The source's name (`intune`, `csv:codes.csv`, …).
    pub source: String,
    /// Its type: `csv`, `intune`, `kandji`, `command`.
    pub kind: String,
    pub result: SourceOutcome,
    /// Codes it gave (duplicates of earlier sources included).
    pub codes: usize,
    /// Answered from this run's cache, without asking the source again.
    pub cached: bool,
    /// Time spent asking this source; none for a cached answer or when the chain itself
    /// failed (added within `v` 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elapsed_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum SourceOutcome {
    /// It knows the device and gave at least one code.
    Codes,
    /// It knows the device but has no code for it.
    NoCode,
    /// It does not know the device.
    Unknown,
    /// It could not answer (unreachable, refused, throttled, a failing hook).
    Failed,
}

impl SourceOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceOutcome::Codes => "codes",
            SourceOutcome::NoCode => "no_code",
            SourceOutcome::Unknown => "unknown",
            SourceOutcome::Failed => "failed",
        }
    }
}

/// Each source's part in a look-up, from the chain's report. When every source failed the
/// chain answers an error that names them; any other error counts as one failed `codes`.
pub fn source_results(result: &Result<Lookup, LookupError>) -> Vec<SourceResult> {
    let failed = |source: &str, kind: &str, elapsed_ms: Option<u64>| SourceResult {
        source: source.to_string(),
        kind: kind.to_string(),
        result: SourceOutcome::Failed,
        codes: 0,
        cached: false,
        elapsed_ms,
    };
    match result {
        Ok(lookup) => {
            let mut out: Vec<SourceResult> = lookup
                .answered
                .iter()
                .map(|a| SourceResult {
                    source: a.source.clone(),
                    kind: a.kind.to_string(),
                    result: if a.codes > 0 {
                        SourceOutcome::Codes
                    } else if a.known {
                        SourceOutcome::NoCode
                    } else {
                        SourceOutcome::Unknown
                    },
                    codes: a.codes,
                    cached: a.cached,
                    elapsed_ms: (!a.cached).then_some(a.elapsed_ms),
                })
                .collect();
            out.extend(
                lookup
                    .failures
                    .iter()
                    .map(|f| failed(&f.source, f.kind, Some(f.elapsed_ms))),
            );
            out
        }
        Err(LookupError::Chain(ChainError::AllFailed { failures })) => failures
            .iter()
            .map(|f| failed(&f.source, f.kind, Some(f.elapsed_ms)))
            .collect(),
        Err(_) => vec![failed("codes", "chain", None)],
    }
}

/// What Apple's activation server answered, as the workflow classifies it
/// (`classify_response`, docs/protocol.md §5).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum AnswerClass {
    Record,
    HandshakeReply,
    Acknowledged,
    LockForm,
    ContinueForm,
    AuthAlert,
    ErrorPage,
    HtmlAuthRequired,
    /// HTTP 5xx after the client's retries.
    ServerError,
    Malformed,
    Unknown,
    /// No HTTP answer at all: connection refused, time-out, TLS.
    Transport,
}

impl AnswerClass {
    pub const ALL: [AnswerClass; 12] = [
        AnswerClass::Record,
        AnswerClass::HandshakeReply,
        AnswerClass::Acknowledged,
        AnswerClass::LockForm,
        AnswerClass::ContinueForm,
        AnswerClass::AuthAlert,
        AnswerClass::ErrorPage,
        AnswerClass::HtmlAuthRequired,
        AnswerClass::ServerError,
        AnswerClass::Malformed,
        AnswerClass::Unknown,
        AnswerClass::Transport,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AnswerClass::Record => "record",
            AnswerClass::HandshakeReply => "handshake_reply",
            AnswerClass::Acknowledged => "acknowledged",
            AnswerClass::LockForm => "lock_form",
            AnswerClass::ContinueForm => "continue_form",
            AnswerClass::AuthAlert => "auth_alert",
            AnswerClass::ErrorPage => "error_page",
            AnswerClass::HtmlAuthRequired => "html_auth_required",
            AnswerClass::ServerError => "server_error",
            AnswerClass::Malformed => "malformed",
            AnswerClass::Unknown => "unknown",
            AnswerClass::Transport => "transport",
        }
    }
}

/// Where events go. Cloned into every worker; sending never blocks.
#[derive(Debug, Clone)]
pub struct EventSink {
    tx: mpsc::UnboundedSender<Event>,
}

impl EventSink {
    pub fn channel() -> (EventSink, mpsc::UnboundedReceiver<Event>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (EventSink { tx }, rx)
    }

    pub fn send(&self, kind: EventKind) {
        let ts_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        // A closed renderer means the process is ending; nothing to do about it.
        let _ = self.tx.send(Event {
            v: SCHEMA_VERSION,
            ts_ms,
            kind,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialise_flat_with_version_and_phone() {
        let (sink, mut rx) = EventSink::channel();
        sink.send(EventKind::Step {
            phone: PhoneRef {
                udid: "U".into(),
                slot: "A1".into(),
            },
            step: Step::Handshake,
        });
        let event = rx.try_recv().expect("event");
        let json = serde_json::to_value(&event).expect("json");
        assert_eq!(json["v"], SCHEMA_VERSION);
        assert_eq!(json["event"], "step");
        assert_eq!(json["udid"], "U");
        assert_eq!(json["slot"], "A1");
        assert_eq!(json["step"], "handshake");
        assert!(json["ts_ms"].as_u64().is_some_and(|t| t > 0));
    }

    #[test]
    fn an_event_reads_back_from_its_ndjson_line() {
        let (sink, mut rx) = EventSink::channel();
        sink.send(EventKind::Finished {
            phone: PhoneRef {
                udid: "U".into(),
                slot: "A1".into(),
            },
            outcome: Outcome::Activated,
            message: "activated".into(),
            serial: Some("F2L".into()),
            model: None,
            activation_locked: true,
            codes_tried: 1,
            released_by: Some(Release {
                source: "intune".into(),
                kind: crate::codes::CodeKind::Device,
                code: "3UM43-…-FKA4".into(),
            }),
            step: None,
            elapsed_ms: 12,
            management: ManagementState::default(),
        });
        sink.send(EventKind::Identified {
            phone: PhoneRef {
                udid: "U".into(),
                slot: "A1".into(),
            },
            serial: "F2L".into(),
            product_type: None,
            model: None,
            product_version: None,
            management: ManagementState {
                find_my: Some(true),
                supervised: Some(true),
                organization: Some("Acme".into()),
                ..ManagementState::default()
            },
        });
        for _ in 0..2 {
            let event = rx.try_recv().expect("event");
            let line = serde_json::to_string(&event).expect("json");
            let back = Event::from_json(&line).expect("reads back");
            assert_eq!(serde_json::to_string(&back).expect("json"), line);
        }
        let identified: serde_json::Value = serde_json::from_str(
            r#"{"v":2,"ts_ms":1,"event":"identified","udid":"U","slot":"A1","serial":"F","find_my":true,"passcode_set":null,"organization":"Acme"}"#,
        )
        .expect("json");
        let Ok(Event {
            kind: EventKind::Identified { management, .. },
            ..
        }) = serde_json::from_value::<Event>(identified)
        else {
            panic!("identified reads back");
        };
        assert_eq!(management.find_my, Some(true));
        assert_eq!(management.passcode_set, None);
        assert_eq!(management.organization.as_deref(), Some("Acme"));
        assert!(
            Event::from_json(r#"{"v":1,"ts_ms":1,"event":"from_the_future"}"#).is_err(),
            "an unknown kind is the caller's to skip"
        );
    }

    #[test]
    fn each_source_of_a_look_up_is_reported_by_result_never_by_code() {
        use crate::codes::{SourceAnswer, SourceFailure};
        let answer = |source: &str, known: bool, codes: usize| SourceAnswer {
            source: source.into(),
            kind: "csv",
            known,
            codes,
            cached: source == "c",
            elapsed_ms: 40,
            absent: None,
        };
        let failure = SourceFailure {
            source: "kandji".into(),
            kind: "kandji",
            reason: "HTTP 503".into(),
            elapsed_ms: 30_000,
        };
        let lookup = Lookup {
            known: true,
            codes: Vec::new(),
            answered: vec![
                answer("a", true, 2),
                answer("b", true, 0),
                answer("c", false, 0),
            ],
            failures: vec![failure.clone()],
            absent: Vec::new(),
        };
        let results: Vec<(String, SourceOutcome, usize, Option<u64>)> = source_results(&Ok(lookup))
            .into_iter()
            .map(|r| (r.source, r.result, r.codes, r.elapsed_ms))
            .collect();
        // A cached answer took no time of the source's: it has no duration.
        assert_eq!(
            results,
            [
                ("a".to_string(), SourceOutcome::Codes, 2, Some(40)),
                ("b".to_string(), SourceOutcome::NoCode, 0, Some(40)),
                ("c".to_string(), SourceOutcome::Unknown, 0, None),
                ("kandji".to_string(), SourceOutcome::Failed, 0, Some(30_000)),
            ]
        );
        let all_failed = Err(LookupError::Chain(ChainError::AllFailed {
            failures: vec![failure],
        }));
        let results = source_results(&all_failed);
        assert_eq!(results.len(), 1);
        assert_eq!(
            (results[0].source.as_str(), results[0].result),
            ("kandji", SourceOutcome::Failed)
        );
        assert_eq!(
            source_results(&Err(LookupError::NotConfigured))[0].kind,
            "chain"
        );
    }

    #[test]
    fn summary_is_an_event_too() {
        let summary = Summary {
            run_id: "r".into(),
            phones: 2,
            ..Summary::default()
        };
        let json = serde_json::to_value(Event {
            v: 1,
            ts_ms: 1,
            kind: EventKind::Summary(summary),
        })
        .expect("json");
        assert_eq!(json["event"], "summary");
        assert_eq!(json["phones"], 2);
    }
}
