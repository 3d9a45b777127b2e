//! Two renderers of the same events: a live terminal screen (the `Screen` model drawn by a
//! `Painter`, logs printed above it, a summary table at the end) and an NDJSON stream.

use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::mpsc;

use super::events::{Event, Summary};
use super::screen::Screen;
use crate::output::wire_name;

/// How often the live screen is laid out again even when no event arrives: clocks move,
/// successes fold, the window may have been resized. A changed frame is always drawn.
pub const REDRAW: Duration = Duration::from_millis(200);

/// The live screen's painter while there is one: log lines go above its frame.
static LIVE: Mutex<Option<Painter>> = Mutex::new(None);

/// A `tracing` writer that lifts the live frame, prints the log line and puts the frame back.
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut live = LIVE
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match live.as_mut() {
            Some(painter) => painter.above(|| std::io::stderr().write_all(buf))?,
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
        Mode::Terminal => live(rx).await,
    }
}

/// The live screen: every batch of events is drawn at once, and the frame is laid out again
/// every `REDRAW` besides. Drawing is not rate limited, so the last state is always on screen.
async fn live(mut rx: mpsc::UnboundedReceiver<Event>) {
    let (width, height) = term_size();
    let mut screen = Screen::new(width, height);
    set_live(Some(Painter {
        frame: Vec::new(),
        cols: width,
    }));
    let mut summary = None;
    let mut tick = tokio::time::interval(REDRAW);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            event = rx.recv() => {
                let Some(event) = event else { break };
                let mut next = Some(event);
                // Everything already queued goes into the same frame.
                while let Some(event) = next {
                    if let super::events::EventKind::Summary(s) = &event.kind {
                        summary = Some(summary_table(s));
                    }
                    screen.handle(&event);
                    next = rx.try_recv().ok();
                }
            }
            _ = tick.tick() => {}
        }
        paint(&mut screen);
    }
    paint(&mut screen);
    // The last frame stays on screen, as drawn; the summary goes below it.
    if let Some(painter) = set_live(None) {
        painter.release();
    }
    if let Some(summary) = summary {
        println!("\n{}", summary.trim_end());
    }
}

fn term_size() -> (usize, usize) {
    let (rows, cols) = console::Term::stdout().size();
    (usize::from(cols), usize::from(rows))
}

fn set_live(painter: Option<Painter>) -> Option<Painter> {
    let mut live = LIVE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    std::mem::replace(&mut *live, painter)
}

fn paint(screen: &mut Screen) {
    // Laid out for the terminal as it is now, so a narrowed window never wraps a line.
    let (width, height) = term_size();
    screen.resize(width, height);
    let notices = screen.take_notices();
    let frame = screen.frame(std::time::Instant::now());
    let mut live = LIVE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(painter) = live.as_mut() {
        // What is on screen already needs no redraw (no flicker on a slow link).
        if notices.is_empty() && painter.cols == width && painter.frame == frame {
            return;
        }
        painter.cols = width;
        for notice in notices {
            let _ = painter.above(|| writeln!(std::io::stdout(), "{notice}"));
        }
        let _ = painter.draw(frame);
    }
}

/// Draws a frame over the previous one with plain ANSI cursor movement. A frame is never
/// taller than the terminal nor wider than it (`Screen::frame`), so going up its rows less
/// one lands on its first line (counting the rows a narrowed window wrapped it into).
#[derive(Debug, Default)]
struct Painter {
    /// The frame on screen now, to clear it and to put it back after a log line.
    frame: Vec<String>,
    /// The terminal's width now: a frame drawn before the window narrowed has wrapped.
    cols: usize,
}

impl Painter {
    fn clear(&self, out: &mut impl Write) -> std::io::Result<()> {
        let rows: usize = self
            .frame
            .iter()
            .map(|line| {
                console::measure_text_width(line)
                    .div_ceil(self.cols.max(1))
                    .max(1)
            })
            .sum();
        match rows {
            0 => Ok(()),
            1 => write!(out, "\r\x1b[J"),
            n => write!(out, "\r\x1b[{}A\x1b[J", n - 1),
        }
    }

    fn draw(&mut self, frame: Vec<String>) -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        self.clear(&mut out)?;
        write!(out, "{}", frame.join("\n"))?;
        out.flush()?;
        self.frame = frame;
        Ok(())
    }

    /// Prints something above the frame: the frame is lifted and drawn again below it.
    fn above(&mut self, print: impl FnOnce() -> std::io::Result<()>) -> std::io::Result<()> {
        {
            let mut out = std::io::stdout().lock();
            self.clear(&mut out)?;
            out.flush()?;
        }
        print()?;
        let frame = std::mem::take(&mut self.frame);
        self.draw(frame)
    }

    /// Leaves the frame where it is and moves below it.
    fn release(self) {
        if !self.frame.is_empty() {
            println!();
        }
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
