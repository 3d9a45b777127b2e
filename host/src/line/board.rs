//! The line as the browser view shows it (docs/dashboard.md), as a pure model fed the same
//! events as the NDJSON stream: one tile per slot of the bench's layout, the counts per
//! outcome, the phones that need attention. `Board::snapshot` is what `/events` sends as
//! its `board` message, so the page only draws; nothing is worked out twice.
//!
//! Tiles: every label of `[slots]` has one, in bench order (`A1`, `A2`, …, `A10`, `B1`), even
//! while empty; a phone in a slot the map does not name gets a tile of its own after them,
//! in the order the phones came. A tile shows the phone in it now, or the last one that was
//! (greyed as unplugged) until another phone is plugged in there.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::events::{Attention, Event, EventKind, PhoneRef, Summary, SCHEMA_VERSION};
use crate::activation::Outcome;
use crate::output::wire_name;

/// Version of the `board` message; bumped on any incompatible change.
pub const BOARD_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TileState {
    /// No phone has been in this slot yet.
    Empty,
    Queued,
    Working,
    /// Waiting for its next attempt.
    Retrying,
    /// Pulled out mid-work: plugging it back in resumes it.
    Unplugged,
    Done,
}

#[derive(Debug, Clone, Serialize)]
pub struct Tile {
    pub slot: String,
    /// Named by `[slots]` (part of the bench's layout), or a port seen only at run time.
    pub configured: bool,
    pub udid: Option<String>,
    pub serial: Option<String>,
    pub model: Option<String>,
    pub state: TileState,
    /// The step in words (`pairing`, `building activation info`), while working.
    pub step: Option<String>,
    /// When the current step, wait or attempt began (ms since the Unix epoch): the page's
    /// clock counts from it.
    pub since_ms: u64,
    pub attempt: u32,
    /// The final outcome (wire name), once done.
    pub outcome: Option<String>,
    /// `ok` (done), `retry` (try again later), `attention` (the operator must act).
    pub tone: Option<&'static str>,
    /// The outcome's reason and next step, or the retry's reason.
    pub message: Option<String>,
    pub elapsed_ms: Option<u64>,
    /// `FMI`, `PASSCODE`, `SUPERVISED:<org>`, …
    pub badges: Vec<String>,
    /// The phone is plugged in now.
    pub present: bool,
}

impl Tile {
    fn empty(slot: &str, configured: bool) -> Tile {
        Tile {
            slot: slot.to_string(),
            configured,
            udid: None,
            serial: None,
            model: None,
            state: TileState::Empty,
            step: None,
            since_ms: 0,
            attempt: 0,
            outcome: None,
            tone: None,
            message: None,
            elapsed_ms: None,
            badges: Vec::new(),
            present: false,
        }
    }
}

/// What the page draws, whole.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot<'a> {
    pub board_v: u32,
    /// The NDJSON schema version of the events it was built from.
    pub v: u32,
    /// The station's clock when this was taken: the page corrects its own by it.
    pub now_ms: u64,
    pub run_id: Option<&'a str>,
    pub station_id: Option<&'a str>,
    /// Set once the run's `summary` came: the line is done.
    pub ended: bool,
    pub stopped_early: bool,
    pub phones: usize,
    pub working: usize,
    pub queued: usize,
    /// Final outcome → phones (the summary's counts once it came).
    pub counts: BTreeMap<String, usize>,
    pub tiles: Vec<&'a Tile>,
    pub attention: Vec<AttentionRow>,
    /// usbmuxd is away (the line waits for it).
    pub usbmuxd_lost: Option<&'a str>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AttentionRow {
    pub slot: String,
    pub udid: String,
    pub serial: Option<String>,
    pub outcome: String,
    pub message: String,
}

impl From<&Attention> for AttentionRow {
    fn from(a: &Attention) -> Self {
        AttentionRow {
            slot: a.phone.slot.clone(),
            udid: a.phone.udid.clone(),
            serial: a.serial.clone(),
            outcome: wire_name(&a.outcome),
            message: a.message.clone(),
        }
    }
}

/// Per phone: where it is and how it ended, for the counts and the attention list.
#[derive(Debug, Clone)]
struct PhoneEntry {
    slot: String,
    serial: Option<String>,
    /// The final outcome; cleared when the phone is worked on again.
    outcome: Option<Outcome>,
    message: String,
    /// Done and unplugged: off the attention list (still counted).
    gone: bool,
    seq: usize,
}

/// What the board keeps of a phone done with and unplugged.
#[derive(Debug)]
struct GonePhone {
    /// Its tile's slot: freed if it comes back in another.
    slot: String,
    outcome: Outcome,
    seq: usize,
    serial: Option<String>,
    /// Kept for an outcome needing attention only (shown again if it comes back).
    message: String,
}

#[derive(Debug, Default)]
pub struct Board {
    run_id: Option<String>,
    station_id: Option<String>,
    tiles: Vec<Tile>,
    /// Tile index by slot label.
    index: HashMap<String, usize>,
    phones: HashMap<String, PhoneEntry>,
    /// Phones done and unplugged, compact: counted, off the attention list, and taken back
    /// into `phones` if they come back (a long service run sees thousands, issue 13).
    settled: HashMap<String, GonePhone>,
    next_seq: usize,
    summary: Option<Summary>,
    usbmuxd_lost: Option<String>,
}

/// `A2` before `A10`: labels compared by their runs of digits as numbers.
fn natural_key(label: &str) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut digits = String::new();
    for c in label.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
        } else {
            if !digits.is_empty() {
                out.push((
                    std::mem::take(&mut text),
                    digits.parse().unwrap_or(u64::MAX),
                ));
                digits.clear();
            }
            text.push(c);
        }
    }
    out.push((text, digits.parse().unwrap_or(0)));
    out
}

impl Board {
    /// A board with a tile for each slot label of the bench's layout (`[slots]`).
    pub fn new<'a>(layout: impl IntoIterator<Item = &'a str>) -> Board {
        let mut labels: Vec<&str> = layout.into_iter().collect();
        labels.sort_by_key(|l| natural_key(l));
        labels.dedup();
        let mut board = Board::default();
        for label in labels {
            board.tile_index(label, true);
        }
        board
    }

    fn tile_index(&mut self, slot: &str, configured: bool) -> usize {
        if let Some(i) = self.index.get(slot) {
            return *i;
        }
        self.tiles.push(Tile::empty(slot, configured));
        let i = self.tiles.len() - 1;
        self.index.insert(slot.to_string(), i);
        i
    }

    /// The phone's tile, taking the slot over for it (a new phone plugged in there).
    fn tile(&mut self, phone: &PhoneRef, ts_ms: u64) -> &mut Tile {
        if let Some(gone) = self.settled.remove(&phone.udid) {
            self.phones.insert(
                phone.udid.clone(),
                PhoneEntry {
                    slot: gone.slot,
                    serial: gone.serial,
                    outcome: Some(gone.outcome),
                    message: gone.message,
                    gone: true,
                    seq: gone.seq,
                },
            );
        }
        let seq = self.next_seq;
        let entry = self
            .phones
            .entry(phone.udid.clone())
            .or_insert_with(|| PhoneEntry {
                slot: phone.slot.clone(),
                serial: None,
                outcome: None,
                message: String::new(),
                gone: false,
                seq,
            });
        if entry.seq == seq {
            self.next_seq += 1;
        }
        // Moved to another slot: its old tile no longer holds it.
        if entry.slot != phone.slot {
            let old = entry.slot.clone();
            entry.slot.clone_from(&phone.slot);
            if let Some(i) = self.index.get(&old).copied() {
                if self.tiles[i].udid.as_deref() == Some(phone.udid.as_str()) {
                    let configured = self.tiles[i].configured;
                    self.tiles[i] = Tile::empty(&old, configured);
                }
            }
        }
        let i = self.tile_index(&phone.slot, false);
        let tile = &mut self.tiles[i];
        if tile.udid.as_deref() != Some(phone.udid.as_str()) {
            let configured = tile.configured;
            *tile = Tile::empty(&phone.slot, configured);
            tile.udid = Some(phone.udid.clone());
            tile.state = TileState::Queued;
            tile.since_ms = ts_ms;
            if let Some(p) = self.phones.get(&phone.udid) {
                tile.serial.clone_from(&p.serial);
            }
        }
        tile.present = true;
        tile
    }

    fn entry(&mut self, udid: &str) -> Option<&mut PhoneEntry> {
        self.phones.get_mut(udid)
    }

    /// Applies one event of the stream.
    pub fn apply(&mut self, event: &Event) {
        let ts = event.ts_ms;
        match &event.kind {
            EventKind::RunStarted {
                run_id, station_id, ..
            } => {
                self.run_id = Some(run_id.clone());
                self.station_id = Some(station_id.clone());
            }
            EventKind::Recovered { .. }
            | EventKind::CodeLookup { .. }
            | EventKind::ServerAnswer { .. } => {}
            EventKind::Attached { phone, .. } | EventKind::Queued { phone } => {
                let tile = self.tile(phone, ts);
                if tile.state != TileState::Done || matches!(event.kind, EventKind::Queued { .. }) {
                    tile.state = TileState::Queued;
                    tile.step = None;
                    tile.since_ms = ts;
                }
                if let Some(p) = self.entry(&phone.udid) {
                    p.gone = false;
                }
            }
            EventKind::Started { phone, attempt, .. } => {
                let tile = self.tile(phone, ts);
                tile.state = TileState::Working;
                tile.step = Some("starting".into());
                tile.attempt = *attempt;
                tile.since_ms = ts;
                tile.outcome = None;
                tile.tone = None;
                tile.message = None;
                tile.elapsed_ms = None;
                if let Some(p) = self.entry(&phone.udid) {
                    p.outcome = None;
                }
            }
            EventKind::Identified {
                phone,
                serial,
                model,
                management,
                ..
            } => {
                let tile = self.tile(phone, ts);
                tile.serial = Some(serial.clone());
                tile.model.clone_from(model);
                tile.badges = management.badges();
                if let Some(p) = self.entry(&phone.udid) {
                    p.serial = Some(serial.clone());
                }
            }
            EventKind::Step { phone, step } => {
                let tile = self.tile(phone, ts);
                tile.state = TileState::Working;
                tile.step = Some(step.describe().to_string());
                tile.since_ms = ts;
            }
            EventKind::Retrying {
                phone,
                wait_ms,
                reason,
                ..
            } => {
                let tile = self.tile(phone, ts);
                tile.state = TileState::Retrying;
                tile.step = Some(format!("retry in {:.1} s", *wait_ms as f64 / 1000.0));
                tile.message = Some(reason.clone());
                tile.outcome = None;
                tile.tone = Some("retry");
                tile.since_ms = ts;
                if let Some(p) = self.entry(&phone.udid) {
                    p.outcome = None;
                }
            }
            EventKind::Detached { phone } => {
                let tile = self.tile(phone, ts);
                tile.present = false;
                if tile.state != TileState::Done {
                    tile.state = TileState::Unplugged;
                    tile.step = None;
                    tile.since_ms = ts;
                }
                let gone = self.entry(&phone.udid).is_some_and(|p| {
                    p.gone = p.outcome.is_some();
                    p.gone
                });
                if gone {
                    self.settle(&phone.udid);
                }
            }
            EventKind::Finished {
                phone,
                outcome,
                message,
                serial,
                model,
                elapsed_ms,
                management,
                ..
            } => {
                let tile = self.tile(phone, ts);
                tile.state = TileState::Done;
                tile.step = None;
                tile.outcome = Some(wire_name(outcome));
                tile.tone = Some(tone(*outcome));
                tile.message = Some(message.clone());
                tile.elapsed_ms = Some(*elapsed_ms);
                if serial.is_some() {
                    tile.serial.clone_from(serial);
                }
                if model.is_some() {
                    tile.model.clone_from(model);
                }
                let badges = management.badges();
                if !badges.is_empty() {
                    tile.badges = badges;
                }
                if let Some(p) = self.entry(&phone.udid) {
                    p.outcome = Some(*outcome);
                    p.message.clone_from(message);
                    if serial.is_some() {
                        p.serial.clone_from(serial);
                    }
                }
            }
            EventKind::Skipped { phone, outcome, .. } => {
                let tile = self.tile(phone, ts);
                tile.state = TileState::Done;
                tile.step = None;
                tile.outcome = Some(wire_name(outcome));
                tile.tone = Some(tone(*outcome));
                tile.message = Some("done earlier in this run (replugged)".into());
                if let Some(p) = self.entry(&phone.udid) {
                    p.outcome = Some(*outcome);
                }
            }
            EventKind::UsbmuxdLost { reason, .. } => self.usbmuxd_lost = Some(reason.clone()),
            EventKind::UsbmuxdBack { .. } => self.usbmuxd_lost = None,
            // The log and the terminal say why; the tiles keep showing the phones queued.
            EventKind::LedgerPaused { .. } | EventKind::LedgerResumed { .. } => {}
            EventKind::Summary(summary) => self.summary = Some(summary.clone()),
        }
    }

    /// Moves a phone that is done and unplugged into the compact `settled` map.
    fn settle(&mut self, udid: &str) {
        if let Some((udid, p)) = self.phones.remove_entry(udid) {
            let Some(outcome) = p.outcome else {
                self.phones.insert(udid, p);
                return;
            };
            let message = if outcome.is_success() {
                String::new()
            } else {
                p.message
            };
            self.settled.insert(
                udid,
                GonePhone {
                    slot: p.slot,
                    outcome,
                    seq: p.seq,
                    serial: p.serial,
                    message,
                },
            );
        }
    }

    /// Phones held in full and compact (for the bound's test).
    #[cfg(test)]
    fn held(&self) -> (usize, usize) {
        (self.phones.len(), self.settled.len())
    }

    /// Phones queued for a worker, and phones being worked on (retry waits are neither).
    pub fn queue_and_in_flight(&self) -> (usize, usize) {
        let mut queued = 0;
        let mut working = 0;
        for tile in self.tiles.iter().filter(|t| t.present) {
            match tile.state {
                TileState::Queued => queued += 1,
                TileState::Working => working += 1,
                _ => {}
            }
        }
        (queued, working)
    }

    /// Final outcome → phones: the summary's counts once the run ended, until then every
    /// phone's latest final outcome (a phone worked on again is not counted meanwhile).
    pub fn counts(&self) -> BTreeMap<String, usize> {
        if let Some(summary) = &self.summary {
            return summary.counts.clone();
        }
        let mut counts = BTreeMap::new();
        let settled = self.settled.values().map(|g| g.outcome);
        for outcome in self
            .phones
            .values()
            .filter_map(|p| p.outcome)
            .chain(settled)
        {
            *counts.entry(wire_name(&outcome)).or_default() += 1;
        }
        counts
    }

    pub fn summary(&self) -> Option<&Summary> {
        self.summary.as_ref()
    }

    pub fn run_id(&self) -> Option<&str> {
        self.run_id.as_deref()
    }

    pub fn station_id(&self) -> Option<&str> {
        self.station_id.as_deref()
    }

    pub fn tiles(&self) -> &[Tile] {
        &self.tiles
    }

    /// Phones whose final outcome is not a success, until they are unplugged; at the end
    /// of the run, the summary's list.
    pub fn attention(&self) -> Vec<AttentionRow> {
        if let Some(summary) = &self.summary {
            return summary.attention.iter().map(AttentionRow::from).collect();
        }
        let mut rows: Vec<(&String, &PhoneEntry)> = self
            .phones
            .iter()
            .filter(|(_, p)| !p.gone && p.outcome.is_some_and(|o| !o.is_success()))
            .collect();
        rows.sort_by_key(|(_, p)| p.seq);
        rows.into_iter()
            .map(|(udid, p)| AttentionRow {
                slot: p.slot.clone(),
                udid: udid.clone(),
                serial: p.serial.clone(),
                outcome: p.outcome.map(|o| wire_name(&o)).unwrap_or_default(),
                message: p.message.clone(),
            })
            .collect()
    }

    pub fn snapshot(&self, now_ms: u64) -> Snapshot<'_> {
        let (queued, working) = self.queue_and_in_flight();
        Snapshot {
            board_v: BOARD_VERSION,
            v: SCHEMA_VERSION,
            now_ms,
            run_id: self.run_id.as_deref(),
            station_id: self.station_id.as_deref(),
            ended: self.summary.is_some(),
            stopped_early: self.summary.as_ref().is_some_and(|s| s.stopped_early),
            phones: self
                .summary
                .as_ref()
                .map_or(self.phones.len() + self.settled.len(), |s| s.phones),
            working,
            queued,
            counts: self.counts(),
            tiles: self.tiles.iter().collect(),
            attention: self.attention(),
            usbmuxd_lost: self.usbmuxd_lost.as_deref(),
        }
    }
}

/// The colour class of an outcome, as on the terminal: done, try later, operator.
pub fn tone(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Activated | Outcome::AlreadyActivated => "ok",
        Outcome::Interrupted | Outcome::ServerError => "retry",
        _ => "attention",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activation::Step;
    use crate::lockstate::ManagementState;

    fn at(ts_ms: u64, kind: EventKind) -> Event {
        Event {
            v: SCHEMA_VERSION,
            ts_ms,
            kind,
        }
    }

    fn phone(udid: &str, slot: &str) -> PhoneRef {
        PhoneRef {
            udid: udid.into(),
            slot: slot.into(),
        }
    }

    fn finished(p: PhoneRef, outcome: Outcome, message: &str) -> EventKind {
        EventKind::Finished {
            phone: p,
            outcome,
            message: message.into(),
            serial: Some("F2LX0001".into()),
            model: Some("iPhone 12".into()),
            activation_locked: false,
            codes_tried: 0,
            released_by: None,
            step: None,
            elapsed_ms: 4200,
            management: ManagementState::default(),
        }
    }

    fn tile<'a>(board: &'a Board, slot: &str) -> &'a Tile {
        board
            .tiles()
            .iter()
            .find(|t| t.slot == slot)
            .unwrap_or_else(|| panic!("no tile {slot}"))
    }

    #[test]
    fn the_layout_gives_every_slot_a_tile_in_bench_order_and_strangers_come_after() {
        let mut board = Board::new(["B1", "A10", "A2", "A1"]);
        let order: Vec<&str> = board.tiles().iter().map(|t| t.slot.as_str()).collect();
        assert_eq!(order, ["A1", "A2", "A10", "B1"]);
        assert!(board.tiles().iter().all(|t| t.state == TileState::Empty));
        board.apply(&at(
            1,
            EventKind::Attached {
                phone: phone("U9", "1-1.9"),
                location_id: 9,
            },
        ));
        let last = board.tiles().last().expect("tile");
        assert_eq!(
            (last.slot.as_str(), last.configured, last.state),
            ("1-1.9", false, TileState::Queued)
        );
        assert_eq!(board.queue_and_in_flight(), (1, 0));
    }

    #[test]
    fn a_tile_follows_its_phone_through_the_steps_to_its_outcome() {
        let mut board = Board::new(["A1", "A2"]);
        let a1 = phone("U1", "A1");
        board.apply(&at(
            10,
            EventKind::Started {
                phone: a1.clone(),
                attempt: 1,
                in_flight: 1,
            },
        ));
        board.apply(&at(
            20,
            EventKind::Identified {
                phone: a1.clone(),
                serial: "F2LX0001".into(),
                product_type: Some("iPhone13,2".into()),
                model: Some("iPhone 12".into()),
                product_version: Some("17.5".into()),
                management: ManagementState {
                    find_my: Some(true),
                    ..ManagementState::default()
                },
            },
        ));
        board.apply(&at(
            30,
            EventKind::Step {
                phone: a1.clone(),
                step: Step::Handshake,
            },
        ));
        let t = tile(&board, "A1");
        assert_eq!(t.state, TileState::Working);
        assert_eq!(t.step.as_deref(), Some(Step::Handshake.describe()));
        assert_eq!(t.since_ms, 30, "the clock counts from the step");
        assert_eq!(t.serial.as_deref(), Some("F2LX0001"));
        assert_eq!(t.badges, ["FMI"]);
        assert_eq!(board.queue_and_in_flight(), (0, 1));

        board.apply(&at(
            40,
            finished(a1.clone(), Outcome::UserLocked, "locked: ask the owner"),
        ));
        let t = tile(&board, "A1");
        assert_eq!(
            (t.state, t.outcome.as_deref(), t.tone),
            (TileState::Done, Some("user_locked"), Some("attention"))
        );
        assert_eq!(t.step, None, "a finished tile never keeps its step");
        assert_eq!(board.counts().get("user_locked"), Some(&1));
        let attention = board.attention();
        assert_eq!(attention.len(), 1);
        assert_eq!(attention[0].message, "locked: ask the owner");
        assert_eq!(tile(&board, "A2").state, TileState::Empty);

        // Unplugged: off the attention list, still counted, the tile keeps the outcome.
        board.apply(&at(50, EventKind::Detached { phone: a1 }));
        assert!(board.attention().is_empty());
        assert_eq!(board.counts().get("user_locked"), Some(&1));
        let t = tile(&board, "A1");
        assert_eq!((t.state, t.present), (TileState::Done, false));

        // Another phone in the same slot takes the tile over.
        board.apply(&at(
            60,
            EventKind::Attached {
                phone: phone("U2", "A1"),
                location_id: 2,
            },
        ));
        let t = tile(&board, "A1");
        assert_eq!(t.udid.as_deref(), Some("U2"));
        assert_eq!((t.state, t.outcome.as_deref()), (TileState::Queued, None));
    }

    #[test]
    fn a_retry_is_not_a_final_outcome_and_the_summary_has_the_last_word() {
        let mut board = Board::new([]);
        let p = phone("U1", "A1");
        board.apply(&at(
            1,
            finished(p.clone(), Outcome::ServerError, "HTTP 503: retry later"),
        ));
        assert_eq!(board.counts().get("server_error"), Some(&1));
        board.apply(&at(
            2,
            EventKind::Retrying {
                phone: p.clone(),
                attempt: 2,
                wait_ms: 1500,
                reason: "HTTP 503".into(),
            },
        ));
        assert!(board.counts().is_empty(), "{:?}", board.counts());
        assert_eq!(tile(&board, "A1").state, TileState::Retrying);
        board.apply(&at(3, finished(p, Outcome::Activated, "activated")));
        assert_eq!(board.counts().get("activated"), Some(&1));
        let summary = Summary {
            run_id: "r".into(),
            phones: 1,
            counts: BTreeMap::from([("activated".to_string(), 1)]),
            ..Summary::default()
        };
        board.apply(&at(4, EventKind::Summary(summary)));
        let snap = board.snapshot(5);
        assert!(snap.ended);
        assert_eq!(snap.counts.get("activated"), Some(&1));
        let json = serde_json::to_value(&snap).expect("json");
        assert_eq!(json["tiles"][0]["outcome"], "activated");
        assert_eq!(json["tiles"][0]["tone"], "ok");
        assert_eq!(json["board_v"], BOARD_VERSION);
    }

    /// Issue 13: after a thousand phones came and went through four slots, the board holds
    /// none of them in full, still counts every one, and takes one back when it returns.
    #[test]
    fn phones_that_came_and_went_are_counted_but_not_kept_in_full() {
        let mut board = Board::new(["A1", "A2", "A3", "A4"]);
        let mut ts = 0;
        let mut next = |kind| {
            ts += 1;
            at(ts, kind)
        };
        for i in 0..1000 {
            let p = phone(&format!("U{i}"), &format!("A{}", i % 4 + 1));
            let outcome = if i % 10 == 3 {
                Outcome::CodeRejected
            } else {
                Outcome::Activated
            };
            board.apply(&next(EventKind::Attached {
                phone: p.clone(),
                location_id: i,
            }));
            board.apply(&next(finished(p.clone(), outcome, "ended")));
            board.apply(&next(EventKind::Detached { phone: p }));
            let (full, compact) = board.held();
            assert_eq!(full, 0, "phones kept in full after {}", i + 1);
            assert_eq!(compact, i as usize + 1);
        }
        let counts = board.counts();
        assert_eq!(counts.get("activated"), Some(&900));
        assert_eq!(counts.get("code_rejected"), Some(&100));
        assert_eq!(board.snapshot(0).phones, 1000);
        assert!(board.attention().is_empty(), "gone phones are off the list");
        // U3 (code rejected) comes back in another slot: listed again, counted once.
        board.apply(&next(EventKind::Attached {
            phone: phone("U3", "A1"),
            location_id: 5000,
        }));
        assert_eq!(board.held(), (1, 999));
        assert_eq!(board.counts().get("code_rejected"), Some(&100));
        let rows = board.attention();
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (rows[0].udid.as_str(), rows[0].message.as_str()),
            ("U3", "ended")
        );
        assert_eq!(rows[0].serial.as_deref(), Some("F2LX0001"));
        assert_eq!(tile(&board, "A1").udid.as_deref(), Some("U3"));
    }

    #[test]
    fn a_phone_moved_to_another_slot_leaves_its_old_tile() {
        let mut board = Board::new(["A1", "A2"]);
        board.apply(&at(
            1,
            EventKind::Step {
                phone: phone("U1", "A1"),
                step: Step::Pair,
            },
        ));
        board.apply(&at(
            2,
            EventKind::Detached {
                phone: phone("U1", "A1"),
            },
        ));
        assert_eq!(tile(&board, "A1").state, TileState::Unplugged);
        board.apply(&at(
            3,
            EventKind::Attached {
                phone: phone("U1", "A2"),
                location_id: 2,
            },
        ));
        let old = tile(&board, "A1");
        assert_eq!((old.state, old.udid.as_deref()), (TileState::Empty, None));
        let t = tile(&board, "A2");
        assert_eq!((t.udid.as_deref(), t.present), (Some("U1"), true));
        assert_eq!(board.queue_and_in_flight(), (1, 0));
    }
}
