//! Text and JSON building blocks: plist values for people (ideviceinfo-style text) and
//! machines (JSON), aligned tables, the serde name of a value.

use base64::Engine;

/// JSON for a plist value: data becomes base64, dates RFC 3339 strings.
pub fn to_json(value: &plist::Value) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        plist::Value::Array(items) => J::Array(items.iter().map(to_json).collect()),
        plist::Value::Dictionary(d) => {
            J::Object(d.iter().map(|(k, v)| (k.clone(), to_json(v))).collect())
        }
        plist::Value::Boolean(b) => J::Bool(*b),
        plist::Value::Data(bytes) => {
            J::String(base64::engine::general_purpose::STANDARD.encode(bytes))
        }
        plist::Value::Date(date) => J::String(date.to_xml_format()),
        plist::Value::Real(r) => serde_json::Number::from_f64(*r).map_or(J::Null, J::Number),
        plist::Value::Integer(i) => i
            .as_unsigned()
            .map(J::from)
            .or_else(|| i.as_signed().map(J::from))
            .unwrap_or(J::Null),
        plist::Value::String(s) => J::String(s.clone()),
        plist::Value::Uid(uid) => J::from(uid.get()),
        _ => J::Null,
    }
}

/// A scalar as text; containers are handled by [`to_text`].
fn scalar_text(value: &plist::Value) -> String {
    match value {
        plist::Value::Boolean(b) => b.to_string(),
        plist::Value::Data(bytes) => base64::engine::general_purpose::STANDARD.encode(bytes),
        plist::Value::Date(date) => date.to_xml_format(),
        plist::Value::Real(r) => r.to_string(),
        plist::Value::Integer(i) => i.to_string(),
        plist::Value::String(s) => s.clone(),
        plist::Value::Uid(uid) => uid.get().to_string(),
        _ => String::new(),
    }
}

/// `Key: value` lines like ideviceinfo, nested containers indented.
pub fn to_text(value: &plist::Value) -> String {
    let mut out = String::new();
    write_text(&mut out, value, 0);
    out
}

fn write_text(out: &mut String, value: &plist::Value, depth: usize) {
    let indent = "  ".repeat(depth);
    match value {
        plist::Value::Dictionary(d) => {
            for (key, item) in d {
                match item {
                    plist::Value::Dictionary(_) | plist::Value::Array(_) => {
                        out.push_str(&format!("{indent}{key}:\n"));
                        write_text(out, item, depth + 1);
                    }
                    scalar => out.push_str(&format!("{indent}{key}: {}\n", scalar_text(scalar))),
                }
            }
        }
        plist::Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                match item {
                    plist::Value::Dictionary(_) | plist::Value::Array(_) => {
                        out.push_str(&format!("{indent}[{i}]:\n"));
                        write_text(out, item, depth + 1);
                    }
                    scalar => out.push_str(&format!("{indent}{}\n", scalar_text(scalar))),
                }
            }
        }
        scalar => out.push_str(&format!("{indent}{}\n", scalar_text(scalar))),
    }
}

/// The serde name of a unit enum variant (`activated`, `activation_request`, `server`).
pub fn wire_name<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        _ => String::new(),
    }
}

/// Left-aligned columns separated by two spaces, header first, trailing blanks trimmed.
/// A line break or tab inside a cell (a server's reason, say) becomes a space, so one cell
/// never breaks the rows below it.
pub fn aligned_table<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let one_line = |cell: &String| -> String {
        cell.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect()
    };
    let rows: Vec<[String; N]> = rows
        .iter()
        .map(|row| row.each_ref().map(one_line))
        .collect();
    let rows = rows.as_slice();
    let mut widths = header.map(|h| h.chars().count());
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String; N]| {
        let mut text = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ");
        text.truncate(text.trim_end().len());
        text.push('\n');
        text
    };
    let mut out = line(&header.map(str::to_string));
    for row in rows {
        out.push_str(&line(row));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use station_protocol::frame::dict;

    fn sample() -> plist::Value {
        dict([
            ("ActivationState", plist::Value::from("Unactivated")),
            ("BrickState", plist::Value::Boolean(true)),
            ("UniqueChipID", plist::Value::from(1234u64)),
            ("Blob", plist::Value::Data(vec![0xde, 0xad])),
            ("Nested", dict([("Inner", plist::Value::from("x"))])),
        ])
    }

    #[test]
    fn a_line_break_in_a_cell_does_not_break_the_table() {
        let rows = [
            ["a".to_string(), "first line\nsecond\tline".to_string()],
            ["bb".to_string(), "ok".to_string()],
        ];
        let table = aligned_table(["X", "REASON"], &rows);
        assert_eq!(table.lines().count(), 3, "{table}");
        assert_eq!(table.lines().nth(1), Some("a   first line second line"));
        assert_eq!(table.lines().nth(2), Some("bb  ok"));
    }

    #[test]
    fn tables_align_on_the_widest_cell() {
        let rows = [
            ["a".to_string(), "longer".to_string()],
            ["bbb".to_string(), String::new()],
        ];
        assert_eq!(
            aligned_table(["X", "Y"], &rows),
            "X    Y\na    longer\nbbb\n"
        );
    }

    #[test]
    fn json_keeps_types_and_encodes_data_as_base64() {
        let json = to_json(&sample());
        assert_eq!(json["ActivationState"], "Unactivated");
        assert_eq!(json["BrickState"], true);
        assert_eq!(json["UniqueChipID"], 1234);
        assert_eq!(json["Blob"], "3q0=");
        assert_eq!(json["Nested"]["Inner"], "x");
    }

    #[test]
    fn text_is_key_colon_value_with_nesting_indented() {
        let text = to_text(&sample());
        assert!(text.contains("ActivationState: Unactivated\n"));
        assert!(text.contains("BrickState: true\n"));
        assert!(text.contains("Nested:\n  Inner: x\n"));
        assert_eq!(to_text(&plist::Value::from("Activated")), "Activated\n");
    }
}
