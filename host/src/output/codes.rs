//! `station codes lookup` as text.

use std::fmt::Write as _;

use super::wire_name;
use crate::commands::codes::CodesLookup;

pub fn text(output: &CodesLookup) -> String {
    let answered = output
        .sources
        .iter()
        .filter(|s| s.status == "answered")
        .count();
    let mut text = format!(
        "serial {}: {} code(s) from {answered} of {} source(s)\n",
        output.serial,
        output.codes.len(),
        output.sources.len()
    );
    let width = output
        .sources
        .iter()
        .map(|s| s.source.len() + s.kind.len() + 3)
        .max()
        .unwrap_or(0);
    for source in &output.sources {
        let label = format!("{} ({})", source.source, source.kind);
        let status = match (source.codes, source.reason.as_deref()) {
            (Some(codes), _) => {
                let known = if source.known == Some(true) {
                    "device known"
                } else {
                    "device not known"
                };
                format!("{codes} code(s), {known}")
            }
            (None, Some(reason)) => format!("failed: {reason}"),
            (None, None) => "failed".to_string(),
        };
        let _ = writeln!(text, "  {label:<width$}  {status}");
    }
    if output.codes.is_empty() {
        text.push_str(if output.known {
            "no code: the device is known but no source holds a code (not supervised, or the code expired)\n"
        } else {
            "no code: no source knows this serial\n"
        });
        return text;
    }
    text.push_str("codes, in the order `station activate` tries them:\n");
    for code in &output.codes {
        let kind = wire_name(&code.kind);
        let _ = writeln!(text, "  {}  {kind:<7}  {}", code.code, code.source);
    }
    if !output.revealed {
        text.push_str("(masked; --reveal prints them whole)\n");
    }
    text
}
