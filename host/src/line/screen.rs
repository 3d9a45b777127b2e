//! The live screen as a pure model: fed the line's events (`Screen::handle`), it lays out
//! a frame that fits the terminal (`Screen::frame`). Drawing it is `render.rs`'s job, so the
//! layout can be tested without a terminal and reused by any consumer of the events.
//!
//! Layout, top to bottom (docs/events.md, "The live screen"):
//! 1. a counts line: phones seen, working, queued, then every final outcome counted;
//! 2. phones that need attention (a final outcome other than activated/already_activated),
//!    one row each with the reason, until the phone is unplugged;
//! 3. phones in progress, one row each with their step and time;
//! 4. phones that just succeeded, for `RECENT_HOLD`; then they fold into the counts and
//!    the "recent" line, which lists the last few by slot.
//!
//! A finished phone that is unplugged leaves the rows at once but stays in the counts (a
//! success also on the recent line); plugged back, it has its row again.
//!
//! When that does not fit the height, phones in progress (then attention entries) become
//! compact cells, several to a line; a phone the frame still cannot hold is counted on a
//! last "+N more" line rather than silently left out.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use console::style;

use super::events::{Event, EventKind, PhoneRef};
use crate::activation::Outcome;
use crate::output::wire_name;

/// How long a success keeps its own row before it folds into the counts.
pub const RECENT_HOLD: Duration = Duration::from_secs(3);
/// Slots listed on the "recent" line (fewer when the width is short).
const RECENT_LISTED: usize = 8;

#[derive(Debug, Clone)]
enum State {
    Queued,
    Working(String, &'static str),
    Retrying(String),
    Unplugged,
    Done {
        outcome: Outcome,
        message: String,
        elapsed_ms: u64,
        resumed: bool,
        at: Instant,
    },
}

#[derive(Debug, Clone)]
struct Phone {
    phone: PhoneRef,
    model: String,
    serial: String,
    /// `FMI`, `PASSCODE`, `SUPERVISED:<org>`, as identified; empty when none.
    badges: String,
    state: State,
    /// When the current attempt (or wait) began: the clock of a row in progress.
    since: Instant,
    /// Pulled out during this run: a later success says it was resumed.
    unplugged: bool,
    /// Done and then unplugged: off the rows, still in the counts (and the recent line).
    gone: bool,
    /// First seen order, so rows do not jump around.
    seq: usize,
}

impl Phone {
    fn done(&self) -> Option<(Outcome, Instant)> {
        match &self.state {
            State::Done { outcome, at, .. } => Some((*outcome, *at)),
            _ => None,
        }
    }
}

/// The screen's model of the line.
#[derive(Debug)]
pub struct Screen {
    width: usize,
    height: usize,
    phones: HashMap<String, Phone>,
    next_seq: usize,
    /// Lines to print once above the frame (run notices), drained by the painter.
    notices: Vec<String>,
}

impl Screen {
    /// A screen for a terminal of `width` columns and `height` rows.
    pub fn new(width: usize, height: usize) -> Self {
        Screen {
            width,
            height,
            phones: HashMap::new(),
            next_seq: 0,
            notices: Vec::new(),
        }
    }

    pub fn resize(&mut self, width: usize, height: usize) {
        self.width = width;
        self.height = height;
    }

    /// Lines that belong above the frame, in the scrollback; each is returned once.
    pub fn take_notices(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notices)
    }

    /// Applies one event. Its age comes from its `ts_ms`, so a consumer that catches up on
    /// older events (a replayed stream) sees old successes folded and true clocks.
    pub fn handle(&mut self, event: &Event) {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let age = Duration::from_millis(now_ms.saturating_sub(event.ts_ms));
        let now = Instant::now();
        self.handle_at(&event.kind, now.checked_sub(age).unwrap_or(now));
    }

    fn phone(&mut self, phone: &PhoneRef, now: Instant) -> &mut Phone {
        let seq = self.next_seq;
        let entry = self
            .phones
            .entry(phone.udid.clone())
            .or_insert_with(|| Phone {
                phone: phone.clone(),
                model: String::new(),
                serial: String::new(),
                badges: String::new(),
                state: State::Queued,
                since: now,
                unplugged: false,
                gone: false,
                seq,
            });
        if entry.seq == seq {
            self.next_seq += 1;
        }
        entry.phone.slot.clone_from(&phone.slot);
        entry
    }

    /// Applies one event as of `now` (the tests pass their own clock).
    pub fn handle_at(&mut self, kind: &EventKind, now: Instant) {
        match kind {
            EventKind::RunStarted {
                station_id,
                concurrency,
                ..
            } => self.notices.push(format!(
                "{} station {station_id}: up to {concurrency} phones at once",
                style("▶").cyan()
            )),
            EventKind::Recovered { phone, step } => self.notices.push(format!(
                "{} {} {} was left in progress by the last run{}: recorded as interrupted",
                style("!").yellow(),
                phone.slot,
                phone.udid,
                step.as_deref()
                    .map(|s| format!(" (at {s})"))
                    .unwrap_or_default()
            )),
            EventKind::Attached { phone, .. } | EventKind::Queued { phone } => {
                let p = self.phone(phone, now);
                p.state = State::Queued;
                p.since = now;
                p.gone = false;
            }
            EventKind::Started { phone, attempt, .. } => {
                let p = self.phone(phone, now);
                let text = if *attempt > 1 {
                    format!("attempt {attempt}")
                } else {
                    "starting".into()
                };
                p.state = State::Working(text, "starting");
                p.since = now;
            }
            EventKind::Identified {
                phone,
                serial,
                model,
                management,
                ..
            } => {
                let p = self.phone(phone, now);
                p.serial.clone_from(serial);
                p.model = model.clone().unwrap_or_default();
                p.badges = management.badges().join(" ");
            }
            EventKind::Step { phone, step } => {
                let p = self.phone(phone, now);
                p.state = State::Working(step.describe().into(), step.short());
            }
            EventKind::Retrying {
                phone,
                wait_ms,
                reason,
                ..
            } => {
                let p = self.phone(phone, now);
                p.state = State::Retrying(format!(
                    "retry in {:.1} s: {reason}",
                    *wait_ms as f64 / 1000.0
                ));
            }
            EventKind::Detached { phone } => {
                let p = self.phone(phone, now);
                let finished = p.done().map(|(outcome, _)| outcome);
                if finished.is_some() && finished != Some(Outcome::Interrupted) {
                    // The operator took a finished phone away: its row has done its job.
                    p.gone = true;
                } else {
                    // Still working, or its attempt already ended `interrupted` because the
                    // cable went before usbmuxd's Detached reached us: either way, unplugged.
                    p.unplugged = true;
                    p.state = State::Unplugged;
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
                let p = self.phone(phone, now);
                let badges = management.badges();
                if !badges.is_empty() {
                    p.badges = badges.join(" ");
                }
                if let Some(serial) = serial {
                    p.serial.clone_from(serial);
                }
                if let Some(model) = model {
                    p.model.clone_from(model);
                }
                p.state = State::Done {
                    outcome: *outcome,
                    message: message.clone(),
                    elapsed_ms: *elapsed_ms,
                    resumed: p.unplugged && *outcome != Outcome::Interrupted,
                    at: now,
                };
            }
            EventKind::Skipped { phone, outcome, .. } => {
                let p = self.phone(phone, now);
                let elapsed_ms = match p.state {
                    State::Done { elapsed_ms, .. } => elapsed_ms,
                    _ => 0,
                };
                p.state = State::Done {
                    outcome: *outcome,
                    message: "done earlier in this run (replugged)".into(),
                    elapsed_ms,
                    resumed: false,
                    at: now,
                };
            }
            EventKind::UsbmuxdLost { reason, retry_ms } => self.notices.push(format!(
                "{} usbmuxd is gone ({reason}); the line waits for it, retrying in {:.1} s",
                style("!").yellow(),
                *retry_ms as f64 / 1000.0
            )),
            EventKind::UsbmuxdBack { phones, outage_ms } => self.notices.push(format!(
                "{} usbmuxd is back after {:.1} s with {phones} phone(s)",
                style("▶").cyan(),
                *outage_ms as f64 / 1000.0
            )),
            EventKind::LedgerPaused { code, reason, .. } => self.notices.push(format!(
                "{} error[{code}]: {reason}: no new phones until the ledger takes writes again",
                style("!").red()
            )),
            EventKind::LedgerResumed { paused_ms } => self.notices.push(format!(
                "{} the ledger takes writes again after {:.1} s: new phones are taken",
                style("▶").cyan(),
                *paused_ms as f64 / 1000.0
            )),
            // Counted by the metrics; the screen has nothing to show for them.
            EventKind::Summary(_)
            | EventKind::CodeLookup { .. }
            | EventKind::ServerAnswer { .. } => {}
        }
    }

    /// The frame as of `now`: at most `height - 1` lines (the cursor's line stays free, so
    /// the frame never scrolls), none wider than `width - 1`.
    pub fn frame(&self, now: Instant) -> Vec<String> {
        let width = self.width.max(20) - 1;
        let budget = self.height.max(4) - 1;
        let mut phones: Vec<&Phone> = self.phones.values().collect();
        phones.sort_by_key(|p| p.seq);
        let attention: Vec<&Phone> = phones
            .iter()
            .copied()
            .filter(|p| !p.gone && p.done().is_some_and(|(o, _)| !o.is_success()))
            .collect();
        let mut working: Vec<&Phone> = phones
            .iter()
            .copied()
            .filter(|p| p.done().is_none())
            .collect();
        // Phones at work before queued ones: if the frame must cut, it cuts the queue.
        working.sort_by_key(|p| (matches!(p.state, State::Queued), p.seq));
        let fresh = |p: &&Phone| {
            !p.gone
                && p.done()
                    .is_some_and(|(o, at)| o.is_success() && now.duration_since(at) < RECENT_HOLD)
        };
        let recent_rows: Vec<&Phone> = phones.iter().copied().filter(fresh).collect();
        let mut folded: Vec<&Phone> = phones
            .iter()
            .copied()
            .filter(|p| p.done().is_some_and(|(o, _)| o.is_success()) && !fresh(p))
            .collect();
        folded.sort_by_key(|p| std::cmp::Reverse(p.done().map(|(_, at)| at)));

        let cols = Cols {
            width,
            slot: phones
                .iter()
                .map(|p| p.phone.slot.chars().count())
                .max()
                .unwrap_or(0)
                .clamp(2, 12),
        };
        let mut lines = self.counts_lines(&phones, width);
        let recent_line = usize::from(!folded.is_empty());
        let full = attention.len() + working.len() + recent_rows.len() + recent_line;
        if lines.len() + full <= budget {
            lines.extend(attention.iter().map(|p| row(p, now, &cols)));
            lines.extend(working.iter().map(|p| row(p, now, &cols)));
            lines.extend(recent_rows.iter().map(|p| row(p, now, &cols)));
        } else {
            // Compact: fresh successes go straight to the recent line.
            folded.splice(0..0, recent_rows.iter().rev().copied());
            let sep = SEP.chars().count();
            let per_line = ((width + sep) / (cols.cell() + sep)).max(1);
            let cells = |n: usize| n.div_ceil(per_line);
            let left = budget.saturating_sub(lines.len() + usize::from(!folded.is_empty()));
            let mut body = Vec::new();
            if attention.len() + cells(working.len()) <= left {
                body.extend(attention.iter().map(|p| row(p, now, &cols)));
                body.extend(cell_lines(&working, now, per_line, &cols));
            } else {
                let all: Vec<&Phone> = attention.iter().chain(&working).copied().collect();
                body.extend(cell_lines(&all, now, per_line, &cols));
            }
            if body.len() > left {
                // Honest about what does not fit rather than silently dropping it.
                let shown = left.saturating_sub(1);
                let hidden: usize = body[shown..]
                    .iter()
                    .map(|l| l.matches(SEP).count() + 1)
                    .sum();
                body.truncate(shown);
                body.push(fit(
                    &format!("+{hidden} more phones: enlarge the terminal"),
                    width,
                ));
            }
            lines.extend(body);
        }
        if !folded.is_empty() {
            lines.push(recent(&folded, width));
        }
        lines
    }

    /// Phones seen, working, waiting, then each final outcome counted; on a second line
    /// when one is too short, so no count is ever cut off.
    fn counts_lines(&self, phones: &[&Phone], width: usize) -> Vec<String> {
        let working = phones
            .iter()
            .filter(|p| matches!(p.state, State::Working(..) | State::Retrying(_)))
            .count();
        let waiting = phones
            .iter()
            .filter(|p| matches!(p.state, State::Queued | State::Unplugged))
            .count();
        let mut outcomes: BTreeMap<(bool, String), usize> = BTreeMap::new();
        for (outcome, _) in phones.iter().filter_map(|p| p.done()) {
            *outcomes
                .entry((!outcome.is_success(), wire_name(&outcome)))
                .or_default() += 1;
        }
        let noun = if phones.len() == 1 { "phone" } else { "phones" };
        let mut parts = vec![format!("{} {noun}", phones.len())];
        if working > 0 {
            parts.push(format!("{working} working"));
        }
        if waiting > 0 {
            parts.push(format!("{waiting} waiting"));
        }
        parts.extend(outcomes.iter().map(|((_, name), n)| format!("{name} {n}")));
        let mut lines = vec![String::new()];
        for part in parts {
            let full = lines.len() == 2;
            let last = lines.last_mut().expect("one line at least");
            if last.is_empty() {
                *last = part;
            } else if last.chars().count() + 3 + part.chars().count() <= width || full {
                last.push_str(" · ");
                last.push_str(&part);
            } else {
                lines.push(part);
            }
        }
        lines.into_iter().map(|l| fit(&l, width)).collect()
    }
}

/// Between two compact cells.
const SEP: &str = " ▏";
/// A cell's state column: a short step with its clock, or an outcome that needs attention.
const CELL_STATE: usize = 14;

/// Column widths of one frame.
struct Cols {
    width: usize,
    /// The longest slot label on screen (bench labels like "A12", or a LocationID in hex).
    slot: usize,
}

impl Cols {
    /// Slot, a space, the state with its clock.
    fn cell(&self) -> usize {
        self.slot + 1 + CELL_STATE
    }
}

/// One full-width row: slot, model (in progress, when wide enough), serial, then the state.
fn row(p: &Phone, now: Instant, cols: &Cols) -> String {
    let serial = if p.serial.is_empty() {
        p.phone.udid.chars().take(12).collect()
    } else {
        p.serial.clone()
    };
    let width = cols.width;
    let slot = format!("{:<w$} ", p.phone.slot, w = cols.slot);
    let badges = if p.badges.is_empty() {
        String::new()
    } else {
        format!("{} ", p.badges)
    };
    if let State::Done {
        outcome,
        message,
        elapsed_ms,
        resumed,
        ..
    } = &p.state
    {
        // A final row keeps its room for the reason: no model column.
        // Badges after the outcome: a final row reads "slot serial outcome …".
        let head = format!("{slot}{serial:<14} ");
        let resumed = if *resumed {
            " (resumed after replug)"
        } else {
            ""
        };
        let name = format!("{:<14}", wire_name(outcome));
        let clock = format!("{:>6} ", format!("{:.1}s", *elapsed_ms as f64 / 1000.0));
        let used =
            head.chars().count() + name.chars().count() + clock.len() + badges.chars().count();
        let msg = fit(&format!("{message}{resumed}"), width.saturating_sub(used));
        return fit_line(
            format!(
                "{head}{}{clock}{badges}{}",
                coloured(*outcome, &name),
                style(msg).dim()
            ),
            width,
        );
    }
    let model = if width >= 70 {
        format!("{:<16} ", fit(&p.model, 16))
    } else {
        String::new()
    };
    let head = format!("{slot}{model}{serial:<14} {badges}");
    let room = width.saturating_sub(head.chars().count());
    let (mark, text, tail) = match &p.state {
        State::Queued => ("·", style("queued").dim().to_string(), elapsed(p, now)),
        State::Working(text, _) => ("›", text.clone(), elapsed(p, now)),
        State::Retrying(text) => ("↻", style(text).yellow().to_string(), elapsed(p, now)),
        State::Unplugged | State::Done { .. } => (
            "!",
            style("unplugged: plug it back in to resume")
                .yellow()
                .to_string(),
            String::new(),
        ),
    };
    let plain = console::strip_ansi_codes(&text).into_owned();
    let rest = room.saturating_sub(tail.len() + 3);
    let text = if plain.chars().count() > rest {
        fit(&plain, rest)
    } else {
        text
    };
    let pad = rest.saturating_sub(console::measure_text_width(&text));
    fit_line(
        format!(
            "{head}{} {text}{} {tail}",
            style(mark).cyan(),
            " ".repeat(pad)
        ),
        width,
    )
}

/// A last guard for very narrow terminals: a line that would wrap is cut instead.
fn fit_line(line: String, width: usize) -> String {
    if console::measure_text_width(&line) <= width {
        line
    } else {
        let plain = console::strip_ansi_codes(&line).into_owned();
        fit(&plain, width)
    }
}

fn elapsed(p: &Phone, now: Instant) -> String {
    format!("{:>4}s", now.duration_since(p.since).as_secs())
}

/// Phones as narrow cells, `per_line` to a line: slot and step, or slot and outcome.
fn cell_lines(phones: &[&Phone], now: Instant, per_line: usize, cols: &Cols) -> Vec<String> {
    phones
        .chunks(per_line)
        .map(|chunk| {
            let line = chunk
                .iter()
                .map(|p| cell(p, now, cols))
                .collect::<Vec<_>>()
                .join(SEP);
            fit_line(line.trim_end().to_string(), cols.width)
        })
        .collect()
}

fn cell(p: &Phone, now: Instant, cols: &Cols) -> String {
    let slot = format!("{:<w$} ", p.phone.slot, w = cols.slot);
    let text = CELL_STATE - 5;
    match &p.state {
        State::Done { outcome, .. } => {
            let name = format!("{:<w$}", wire_name(outcome), w = CELL_STATE);
            format!("{slot}{}", coloured(*outcome, &name))
        }
        State::Queued => format!("{slot}{:<w$}", "queued", w = CELL_STATE),
        State::Working(_, short) => format!("{slot}{short:<text$}{}", elapsed(p, now)),
        State::Retrying(_) => format!("{slot}{:<text$}{}", "retry", elapsed(p, now)),
        State::Unplugged => format!("{slot}{:<w$}", "unplugged", w = CELL_STATE),
    }
}

/// "recent ✓ A1 A7 …": the slots of the latest folded successes, newest first.
fn recent(folded: &[&Phone], width: usize) -> String {
    let slots: Vec<&str> = folded
        .iter()
        .take(RECENT_LISTED)
        .map(|p| p.phone.slot.as_str())
        .collect();
    let more = if folded.len() > RECENT_LISTED {
        " …"
    } else {
        ""
    };
    fit(
        &format!("recent {} {}{more}", style("✓").green(), slots.join(" ")),
        width,
    )
}

/// The outcome name in its colour: green done, yellow retry-later, red attention.
fn coloured(outcome: Outcome, text: &str) -> String {
    match outcome {
        Outcome::Activated | Outcome::AlreadyActivated => style(text).green().bold().to_string(),
        Outcome::Interrupted | Outcome::ServerError => style(text).yellow().bold().to_string(),
        _ => style(text).red().bold().to_string(),
    }
}

/// `text` in at most `width` columns: cut at a word boundary with "…", so a serial or a
/// masked code is shown whole or not at all. Colour codes are kept only when nothing is cut.
pub fn fit(text: &str, width: usize) -> String {
    if console::measure_text_width(text) <= width {
        return text.to_string();
    }
    let plain = console::strip_ansi_codes(text);
    let words: Vec<&str> = plain.split(' ').collect();
    let mut out = String::new();
    for word in words {
        let next = if out.is_empty() {
            word.to_string()
        } else {
            format!("{out} {word}")
        };
        if next.chars().count() + 1 > width {
            break;
        }
        out = next;
    }
    if width == 0 {
        return String::new();
    }
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activation::Step;
    use crate::lockstate::ManagementState;

    fn phone(i: usize) -> PhoneRef {
        PhoneRef {
            udid: format!("00008101-{i:016X}"),
            slot: format!("S{i:02}"),
        }
    }

    fn finished(i: usize, outcome: Outcome, message: &str) -> EventKind {
        EventKind::Finished {
            phone: phone(i),
            outcome,
            message: message.into(),
            serial: Some(format!("F2LX{i:08}")),
            model: Some("iPhone 12".into()),
            activation_locked: false,
            codes_tried: 0,
            released_by: None,
            step: None,
            elapsed_ms: 1200,
            management: ManagementState::default(),
        }
    }

    fn plain(frame: &[String]) -> String {
        frame
            .iter()
            .map(|l| console::strip_ansi_codes(l).into_owned())
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn assert_fits(frame: &[String], width: usize, height: usize) {
        assert!(
            frame.len() < height,
            "{} lines:\n{}",
            frame.len(),
            plain(frame)
        );
        for line in frame {
            assert!(
                console::measure_text_width(line) < width,
                "too wide: {line:?}"
            );
        }
    }

    /// A 30-slot bench mid-shift: some done, some locked, the rest at work.
    fn thirty(now: Instant) -> Screen {
        let mut s = Screen::new(80, 24);
        for i in 0..30 {
            s.handle_at(
                &EventKind::Attached {
                    phone: phone(i),
                    location_id: 0,
                },
                now,
            );
            s.handle_at(
                &EventKind::Step {
                    phone: phone(i),
                    step: Step::ActivationInfo,
                },
                now,
            );
        }
        for i in 0..10 {
            s.handle_at(&finished(i, Outcome::Activated, "activated"), now);
        }
        s.handle_at(
            &finished(
                10,
                Outcome::UserLocked,
                "locked to a personal Apple Account: the customer has to remove it from Find My",
            ),
            now,
        );
        s.handle_at(
            &finished(11, Outcome::CodeRejected, "code 3UM43-…-FKA4 rejected"),
            now,
        );
        s
    }

    #[test]
    fn thirty_phones_fit_80_by_24_with_every_phone_accounted_for() {
        let now = Instant::now();
        let s = thirty(now);
        for at in [now, now + RECENT_HOLD + Duration::from_millis(1)] {
            let frame = s.frame(at);
            assert_fits(&frame, 80, 24);
            let text = plain(&frame);
            assert!(text.starts_with("30 phones · 18 working"), "{text}");
            assert!(text.contains("activated 10"), "{text}");
            for i in 12..30 {
                assert!(
                    text.contains(&format!("S{i:02}")),
                    "S{i:02} missing:\n{text}"
                );
            }
            assert!(text.contains("user_locked"), "{text}");
            assert!(text.contains("F2LX00000011"), "{text}");
            assert!(!text.contains("more phones"), "{text}");
        }
    }

    #[test]
    fn successes_fold_into_the_counts_and_attention_stays_until_unplugged() {
        let now = Instant::now();
        let mut s = Screen::new(100, 40);
        s.handle_at(&finished(1, Outcome::Activated, "activated"), now);
        s.handle_at(&finished(2, Outcome::UserLocked, "locked"), now);
        let text = plain(&s.frame(now));
        assert!(text.contains("F2LX00000001"), "a fresh success has its row");
        let later = now + RECENT_HOLD + Duration::from_secs(600);
        let text = plain(&s.frame(later));
        assert!(!text.contains("F2LX00000001"), "{text}");
        assert!(text.contains("recent ✓ S01"), "{text}");
        assert!(text.contains("activated 1"), "{text}");
        assert!(text.contains("F2LX00000002"), "attention stays:\n{text}");
        s.handle_at(&EventKind::Detached { phone: phone(2) }, later);
        let text = plain(&s.frame(later));
        assert!(!text.contains("F2LX00000002"), "{text}");
        assert!(text.contains("user_locked 1"), "still counted:\n{text}");
    }

    #[test]
    fn a_success_unplugged_at_once_is_on_the_recent_line_and_back_on_replug() {
        let now = Instant::now();
        let mut s = Screen::new(100, 40);
        s.handle_at(&finished(4, Outcome::Activated, "activated"), now);
        s.handle_at(&EventKind::Detached { phone: phone(4) }, now);
        let text = plain(&s.frame(now));
        assert!(!text.contains("F2LX00000004"), "{text}");
        assert!(text.contains("recent ✓ S04"), "{text}");
        let mut moved = phone(4);
        moved.slot = "S09".into();
        s.handle_at(
            &EventKind::Attached {
                phone: moved.clone(),
                location_id: 9,
            },
            now,
        );
        s.handle_at(
            &EventKind::Skipped {
                phone: moved,
                outcome: Outcome::Activated,
                reason: "already activated in this run".into(),
            },
            now,
        );
        let text = plain(&s.frame(now));
        assert!(
            text.lines()
                .any(|l| l.starts_with("S09 F2LX00000004") && l.contains("activated")),
            "{text}"
        );
        assert!(text.starts_with("1 phone · activated 1"), "{text}");
    }

    #[test]
    fn an_attempt_interrupted_before_usbmuxd_says_detached_still_resumes_after_replug() {
        // The station sees the closed connection (attempt `interrupted`) before usbmuxd's
        // Detached arrives: the replugged phone's row must still say it resumed.
        let now = Instant::now();
        let mut s = Screen::new(120, 40);
        s.handle_at(&finished(3, Outcome::Interrupted, "unplugged"), now);
        s.handle_at(&EventKind::Detached { phone: phone(3) }, now);
        s.handle_at(&finished(3, Outcome::Activated, "activated"), now);
        let text = plain(&s.frame(now));
        assert!(text.contains("resumed after replug"), "{text}");
    }

    #[test]
    fn an_old_event_is_placed_at_its_own_time() {
        let mut s = Screen::new(100, 40);
        let ten_minutes_ago = SystemTime::now() - Duration::from_secs(600);
        let ts_ms = ten_minutes_ago
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        for kind in [
            finished(1, Outcome::Activated, "activated"),
            EventKind::Started {
                phone: phone(2),
                attempt: 1,
                in_flight: 1,
            },
        ] {
            s.handle(&Event { v: 1, ts_ms, kind });
        }
        let text = plain(&s.frame(Instant::now()));
        assert!(!text.contains("F2LX00000001"), "folded already:\n{text}");
        assert!(text.contains("recent ✓ S01"), "{text}");
        assert!(
            text.contains(" 600s"),
            "its clock counts from its start:\n{text}"
        );
    }

    #[test]
    fn a_finished_row_never_keeps_its_step() {
        let now = Instant::now();
        let mut s = Screen::new(80, 24);
        s.handle_at(
            &EventKind::Step {
                phone: phone(3),
                step: Step::ActivationInfo,
            },
            now,
        );
        assert!(plain(&s.frame(now)).contains("building activation info"));
        s.handle_at(&finished(3, Outcome::UserLocked, "locked"), now);
        let text = plain(&s.frame(now));
        assert!(!text.contains("building activation info"), "{text}");
        assert!(text.contains("user_locked"), "{text}");
    }

    #[test]
    fn more_phones_than_fit_are_counted_not_dropped() {
        let now = Instant::now();
        let mut s = Screen::new(80, 10);
        for i in 0..60 {
            s.handle_at(
                &EventKind::Step {
                    phone: phone(i),
                    step: Step::Pair,
                },
                now,
            );
        }
        for i in 60..90 {
            s.handle_at(&EventKind::Queued { phone: phone(i) }, now);
        }
        // The phone that arrived first now waits in the queue: the ones at work go first.
        s.handle_at(&EventKind::Queued { phone: phone(0) }, now);
        let frame = s.frame(now);
        assert_fits(&frame, 80, 10);
        let text = plain(&frame);
        assert!(text.contains("S01 pairing"), "{text}");
        assert!(
            !text.contains("queued"),
            "the queue is what is cut:\n{text}"
        );
        let shown = (0..90)
            .filter(|i| text.contains(&format!("S{i:02} ")))
            .count();
        assert!(
            text.contains(&format!("+{} more phones", 90 - shown)),
            "{text}"
        );
    }

    #[test]
    fn long_reasons_are_cut_at_a_word_never_inside_a_serial_or_code() {
        let reason = "code 3UM43-…-FKA4 for serial F2LXQ0A1B2C3 was rejected by the server";
        for width in 5..reason.chars().count() {
            let cut = fit(reason, width);
            assert!(cut.chars().count() <= width, "{cut:?} at {width}");
            // What is kept ends where a word of the reason ends.
            let kept = cut.strip_suffix('…').expect("a cut is marked");
            assert!(
                kept.is_empty() || reason[kept.len()..].starts_with(' '),
                "cut inside a word at {width}: {cut:?}"
            );
            assert!(reason.starts_with(kept), "{cut:?}");
        }
        assert_eq!(fit("short", 10), "short");
        assert_eq!(fit("three words here", 12), "three words…");
    }

    #[test]
    fn rows_carry_the_lock_and_management_badges() {
        let now = Instant::now();
        let mut s = Screen::new(120, 24);
        for i in 0..3 {
            s.handle_at(
                &EventKind::Attached {
                    phone: phone(i),
                    location_id: 0,
                },
                now,
            );
        }
        s.handle_at(
            &EventKind::Identified {
                phone: phone(0),
                serial: "F2LXFINDMY00".into(),
                product_type: None,
                model: None,
                product_version: None,
                management: ManagementState {
                    find_my: Some(true),
                    ..ManagementState::default()
                },
            },
            now,
        );
        s.handle_at(
            &EventKind::Identified {
                phone: phone(1),
                serial: "F2LXSUPERV00".into(),
                product_type: None,
                model: None,
                product_version: None,
                management: ManagementState {
                    find_my: Some(false),
                    supervised: Some(true),
                    organization: Some("Acme".into()),
                    ..ManagementState::default()
                },
            },
            now,
        );
        let text = plain(&s.frame(now));
        let line_of = |serial: &str, text: &str| {
            text.lines()
                .find(|l| l.contains(serial))
                .unwrap_or_else(|| panic!("{serial} missing:\n{text}"))
                .to_string()
        };
        assert!(line_of("F2LXFINDMY00", &text).contains("FMI"), "{text}");
        assert!(
            line_of("F2LXSUPERV00", &text).contains("SUPERVISED:Acme"),
            "{text}"
        );
        assert!(!line_of("F2LXSUPERV00", &text).contains("FMI"), "{text}");

        let mut done = finished(0, Outcome::FindMyOn, "still signed in to Find My");
        if let EventKind::Finished { serial, .. } = &mut done {
            *serial = Some("F2LXFINDMY00".into());
        }
        s.handle_at(&done, now);
        let mut refused = finished(
            2,
            Outcome::DeviceError,
            "the phone is locked with a passcode",
        );
        if let EventKind::Finished {
            serial, management, ..
        } = &mut refused
        {
            *serial = Some("F2LXPASSCODE".into());
            management.passcode_set = Some(true);
        }
        s.handle_at(&refused, now);
        let text = plain(&s.frame(now));
        let row = line_of("F2LXFINDMY00", &text);
        assert!(row.contains("FMI") && row.contains("find_my_on"), "{text}");
        let tokens: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            tokens.get(2),
            Some(&"find_my_on"),
            "slot serial outcome …: {row}"
        );
        assert!(
            line_of("F2LXPASSCODE", &text).contains("PASSCODE"),
            "{text}"
        );
    }
}
