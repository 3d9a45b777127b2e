//! Two renderers of the same events: a live terminal screen (one indicatif row per phone,
//! logs printed above the rows, a summary table at the end) and an NDJSON stream.

use std::collections::HashMap;
use std::io::Write;
use std::sync::OnceLock;
use std::time::Duration;

use console::style;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::mpsc;

use super::events::{Event, EventKind, PhoneRef, Summary};
use crate::activation::Outcome;
use crate::render::wire_name;

/// The live screen, once there is one: log lines are printed above its rows.
static SCREEN: OnceLock<MultiProgress> = OnceLock::new();

/// A `tracing` writer that suspends the progress rows while a log line is printed.
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match SCREEN.get() {
            Some(screen) => screen.suspend(|| std::io::stderr().write_all(buf))?,
            None => std::io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Terminal,
    Ndjson,
}

/// Renders events until the channel closes.
pub async fn render(mut rx: mpsc::UnboundedReceiver<Event>, mode: Mode) {
    match mode {
        Mode::Ndjson => {
            while let Some(event) = rx.recv().await {
                let mut out = std::io::stdout().lock();
                if let Ok(line) = serde_json::to_string(&event) {
                    // A closed pipe ends the output, not the run.
                    let _ = writeln!(out, "{line}");
                    let _ = out.flush();
                }
            }
        }
        Mode::Terminal => {
            let mut screen = Screen::new();
            while let Some(event) = rx.recv().await {
                screen.show(&event);
            }
            screen.close();
        }
    }
}

struct Row {
    bar: ProgressBar,
    model: String,
    serial: String,
    /// Pulled out during this run: its final row says it was resumed.
    unplugged: bool,
}

struct Screen {
    multi: MultiProgress,
    rows: HashMap<String, Row>,
    order: Vec<String>,
    /// Printed below the rows once they stop drawing.
    summary: Option<String>,
}

const RUNNING: &str = "{spinner:.cyan} {prefix} {wide_msg} {elapsed:>4}";
const DONE: &str = "  {prefix} {wide_msg}";

fn running_style() -> ProgressStyle {
    ProgressStyle::with_template(RUNNING).unwrap_or_else(|_| ProgressStyle::default_spinner())
}

fn done_style() -> ProgressStyle {
    ProgressStyle::with_template(DONE).unwrap_or_else(|_| ProgressStyle::default_spinner())
}

impl Screen {
    fn new() -> Self {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
        let _ = SCREEN.set(multi.clone());
        Screen {
            multi,
            rows: HashMap::new(),
            order: Vec::new(),
            summary: None,
        }
    }

    fn row(&mut self, phone: &PhoneRef) -> &mut Row {
        if !self.rows.contains_key(&phone.udid) {
            let bar = self.multi.add(ProgressBar::new_spinner());
            bar.set_style(running_style());
            bar.enable_steady_tick(Duration::from_millis(120));
            self.order.push(phone.udid.clone());
            self.rows.insert(
                phone.udid.clone(),
                Row {
                    bar,
                    model: String::new(),
                    serial: String::new(),
                    unplugged: false,
                },
            );
        }
        let row = self.rows.get_mut(&phone.udid).expect("row inserted above");
        row.bar.set_prefix(prefix(phone, &row.model, &row.serial));
        row
    }

    fn show(&mut self, event: &Event) {
        match &event.kind {
            EventKind::RunStarted {
                station_id,
                concurrency,
                ..
            } => {
                let _ = self.multi.println(format!(
                    "{} station {station_id}: up to {concurrency} phones at once",
                    style("▶").cyan()
                ));
            }
            EventKind::Recovered { phone, step } => {
                let _ = self.multi.println(format!(
                    "{} {} {} was left in progress by the last run{}: recorded as interrupted",
                    style("!").yellow(),
                    phone.slot,
                    phone.udid,
                    step.as_deref()
                        .map(|s| format!(" (at {s})"))
                        .unwrap_or_default()
                ));
            }
            EventKind::Attached { phone, .. } | EventKind::Queued { phone } => {
                let row = self.row(phone);
                row.bar.set_style(running_style());
                row.bar.reset_elapsed();
                row.bar.set_message(style("queued").dim().to_string());
            }
            EventKind::Started { phone, attempt, .. } => {
                let row = self.row(phone);
                row.bar.set_style(running_style());
                row.bar.enable_steady_tick(Duration::from_millis(120));
                let text = if *attempt > 1 {
                    format!("attempt {attempt}")
                } else {
                    "starting".into()
                };
                row.bar.set_message(text);
            }
            EventKind::Identified {
                phone,
                serial,
                model,
                ..
            } => {
                let row = self.row(phone);
                row.serial.clone_from(serial);
                row.model = model.clone().unwrap_or_default();
                row.bar.set_prefix(prefix(phone, &row.model, &row.serial));
            }
            EventKind::Step { phone, step } => {
                let row = self.row(phone);
                row.bar.set_message(step.describe().to_string());
            }
            EventKind::Retrying {
                phone,
                wait_ms,
                reason,
                ..
            } => {
                let row = self.row(phone);
                row.bar.set_message(format!(
                    "{} in {:.1} s: {reason}",
                    style("retry").yellow(),
                    *wait_ms as f64 / 1000.0
                ));
            }
            EventKind::Detached { phone } => {
                let row = self.row(phone);
                row.unplugged = true;
                row.bar.set_message(
                    style("unplugged: plug it back in to resume")
                        .yellow()
                        .to_string(),
                );
            }
            EventKind::Finished {
                phone,
                outcome,
                message,
                serial,
                model,
                elapsed_ms,
                ..
            } => {
                let row = self.row(phone);
                if let Some(serial) = serial {
                    row.serial.clone_from(serial);
                }
                if let Some(model) = model {
                    row.model.clone_from(model);
                }
                row.bar.set_prefix(prefix(phone, &row.model, &row.serial));
                row.bar.set_style(done_style());
                row.bar.disable_steady_tick();
                let resumed = if row.unplugged && *outcome != Outcome::Interrupted {
                    " (resumed after replug)"
                } else {
                    ""
                };
                row.bar.set_message(format!(
                    "{} {:>6} {}{resumed}",
                    coloured(*outcome),
                    format!("{:.1}s", *elapsed_ms as f64 / 1000.0),
                    style(message).dim()
                ));
                row.bar.tick();
            }
            EventKind::Skipped { phone, outcome, .. } => {
                let row = self.row(phone);
                row.bar.set_style(done_style());
                row.bar.disable_steady_tick();
                row.bar
                    .set_message(format!("{} (already handled)", coloured(*outcome)));
            }
            EventKind::UsbmuxdLost { reason, retry_ms } => {
                let _ = self.multi.println(format!(
                    "{} usbmuxd is gone ({reason}); the line waits for it, retrying in {:.1} s",
                    style("!").yellow(),
                    *retry_ms as f64 / 1000.0
                ));
            }
            EventKind::UsbmuxdBack { phones, outage_ms } => {
                let _ = self.multi.println(format!(
                    "{} usbmuxd is back after {:.1} s with {phones} phone(s)",
                    style("▶").cyan(),
                    *outage_ms as f64 / 1000.0
                ));
            }
            EventKind::Summary(summary) => self.summary = Some(summary_table(summary)),
        }
    }

    /// Leaves the rows on screen as they are and prints the summary below them.
    fn close(self) {
        for udid in &self.order {
            if let Some(row) = self.rows.get(udid) {
                row.bar.disable_steady_tick();
                row.bar.abandon();
            }
        }
        drop(self.rows);
        drop(self.multi);
        if let Some(summary) = self.summary {
            println!("\n{}", summary.trim_end());
        }
    }
}

fn prefix(phone: &PhoneRef, model: &str, serial: &str) -> String {
    let serial = if serial.is_empty() {
        &phone.udid[..phone.udid.len().min(12)]
    } else {
        serial
    };
    format!(
        "{:<6} {:<18} {:<14}",
        phone.slot,
        truncate(model, 18),
        serial
    )
}

fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        let mut t: String = text.chars().take(max - 1).collect();
        t.push('…');
        t
    }
}

/// The outcome name, padded before colouring so columns stay aligned.
fn coloured(outcome: Outcome) -> String {
    let name = format!("{:<17}", wire_name(&outcome));
    match outcome {
        Outcome::Activated | Outcome::AlreadyActivated => style(name).green().bold().to_string(),
        Outcome::Interrupted | Outcome::ServerError => style(name).yellow().bold().to_string(),
        _ => style(name).red().bold().to_string(),
    }
}

/// The end-of-run table: counts per outcome, then the phones that need attention and why.
pub fn summary_table(summary: &Summary) -> String {
    let mut out = format!(
        "{} phones in {:.1} s{}\n",
        summary.phones,
        summary.elapsed_ms as f64 / 1000.0,
        if summary.stopped_early {
            " (stopped early)"
        } else {
            ""
        }
    );
    for (outcome, count) in &summary.counts {
        out.push_str(&format!("  {outcome:<18} {count:>4}\n"));
    }
    if summary.attention.is_empty() {
        out.push_str("every phone is done\n");
    } else {
        out.push_str(&format!("{} need attention:\n", summary.attention.len()));
        for a in &summary.attention {
            out.push_str(&format!(
                "  {:<6} {:<14} {:<16} {}\n",
                a.phone.slot,
                a.serial.as_deref().unwrap_or(&a.phone.udid),
                wire_name(&a.outcome),
                a.message
            ));
        }
    }
    out
}
