//! Bypass codes from a CSV export (docs/mdm.md §6):
//! `serial_number,udid,bypass_code,code_kind,source,retrieved_at`, one row per code, several
//! rows per serial allowed, an empty `bypass_code` meaning "our device, no code escrowed".
//! Every row is validated; errors name the line and the column, never the code itself.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use station_protocol::bypass_code::BypassCode;

use station_config::CsvSource;

use super::registry::{BuildContext, CodeSource, Description};
use super::{CodeKind, CodeLookup, Lookup, LookupError, SourcedCode};

pub const COLUMNS: [&str; 6] = [
    "serial_number",
    "udid",
    "bypass_code",
    "code_kind",
    "source",
    "retrieved_at",
];

/// One problem in the file; `line` is 1-based, counting the header as line 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    pub line: u64,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CsvError {
    #[error("cannot read codes file {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path}: header must be `{}`", COLUMNS.join(","))]
    Header { path: PathBuf },
    #[error("{path}: {} bad row(s): {}", .errors.len(), summarise(.errors))]
    Rows {
        path: PathBuf,
        errors: Vec<RowError>,
    },
}

fn summarise(errors: &[RowError]) -> String {
    errors
        .iter()
        .take(10)
        .map(|e| format!("line {}: {}", e.line, e.message))
        .collect::<Vec<_>>()
        .join("; ")
}

#[derive(Debug, Clone)]
struct Row {
    udid: Option<String>,
    code: Option<SourcedCode>,
}

/// The parsed file, indexed by upper-case serial.
#[derive(Debug, Default)]
pub struct CsvCodes {
    by_serial: HashMap<String, Vec<Row>>,
    rows: usize,
    /// The file's name, in reasons.
    label: String,
}

impl CsvCodes {
    pub fn load(path: &Path) -> Result<Self, CsvError> {
        let text = std::fs::read(path).map_err(|e| CsvError::Read {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let label = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "codes.csv".into());
        Self::parse(&text, &label).map_err(|e| match e {
            ParseError::Header => CsvError::Header {
                path: path.to_path_buf(),
            },
            ParseError::Rows(errors) => CsvError::Rows {
                path: path.to_path_buf(),
                errors,
            },
        })
    }

    /// Parses the file's bytes; `label` names the file in each code's source tag.
    pub fn parse(bytes: &[u8], label: &str) -> Result<Self, ParseError> {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .trim(csv::Trim::All)
            .flexible(true)
            .from_reader(bytes);
        let header = reader.headers().map_err(|_| ParseError::Header)?.clone();
        let names: Vec<String> = header
            .iter()
            .map(|h| h.trim_start_matches('\u{feff}').to_ascii_lowercase())
            .collect();
        if names != COLUMNS {
            return Err(ParseError::Header);
        }
        let mut codes = CsvCodes {
            label: label.to_string(),
            ..CsvCodes::default()
        };
        let mut errors = Vec::new();
        for (index, record) in reader.records().enumerate() {
            let line = record
                .as_ref()
                .ok()
                .and_then(|r| r.position())
                .map_or(index as u64 + 2, |p| p.line());
            match record {
                Ok(record) => match parse_row(&record, label) {
                    Ok((serial, row)) => {
                        codes.by_serial.entry(serial).or_default().push(row);
                        codes.rows += 1;
                    }
                    Err(message) => errors.push(RowError { line, message }),
                },
                // The csv error text can quote the row; say only where it is.
                Err(_) => errors.push(RowError {
                    line,
                    message: "unreadable row (bad quoting or encoding)".into(),
                }),
            }
        }
        if errors.is_empty() {
            Ok(codes)
        } else {
            Err(ParseError::Rows(errors))
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The codes for this phone. Rows naming another UDID are skipped (a re-used serial
    /// in a stale export must not feed codes to the wrong phone).
    pub fn lookup_now(&self, serial: &str, udid: &str) -> Lookup {
        let mut lookup = Lookup::default();
        let label = &self.label;
        let Some(rows) = self.by_serial.get(&serial.trim().to_ascii_uppercase()) else {
            lookup.explain_absence(|| format!("not in {label}: the serial is not in the file"));
            return lookup;
        };
        let wanted = station_protocol::udid::normalise_udid(udid);
        for row in rows {
            if row
                .udid
                .as_deref()
                .is_some_and(|u| station_protocol::udid::normalise_udid(u) != wanted)
            {
                continue;
            }
            lookup.known = true;
            if let Some(code) = &row.code {
                lookup.push(code.clone());
            }
        }
        let known = lookup.known;
        lookup.explain_absence(|| {
            if known {
                format!("in {label} without a code: the serial's row has an empty code")
            } else {
                format!("not in {label}: the serial's rows name another UDID")
            }
        });
        lookup
    }
}

#[derive(Debug)]
pub enum ParseError {
    Header,
    Rows(Vec<RowError>),
}

fn parse_row(record: &csv::StringRecord, label: &str) -> Result<(String, Row), String> {
    if record.len() != COLUMNS.len() {
        return Err(format!(
            "expected {} columns, found {}",
            COLUMNS.len(),
            record.len()
        ));
    }
    let field = |i: usize| record.get(i).unwrap_or_default();
    let serial = field(0).to_ascii_uppercase();
    if serial.is_empty() || serial.len() > 20 || !serial.chars().all(|c| c.is_ascii_alphanumeric())
    {
        return Err("serial_number: expected 8 to 20 letters and digits".into());
    }
    if serial.len() < 8 {
        return Err("serial_number: expected 8 to 20 letters and digits".into());
    }
    let udid = match field(1) {
        "" => None,
        u if (24..=40).contains(&u.len())
            && u.chars().all(|c| c.is_ascii_hexdigit() || c == '-') =>
        {
            Some(u.to_string())
        }
        _ => return Err("udid: expected 40 hex digits or the 00008030-… form".into()),
    };
    let kind = CodeKind::parse(field(3)).ok_or("code_kind: expected device, server or unknown")?;
    let source = match field(4) {
        "" => format!("csv:{label}"),
        s => format!("csv:{label}:{s}"),
    };
    let retrieved_at = field(5);
    if !retrieved_at.is_empty() && !looks_like_timestamp(retrieved_at) {
        return Err("retrieved_at: expected an ISO 8601 date such as 2026-01-31T10:00:00Z".into());
    }
    let code = match field(2) {
        "" => None,
        text => Some(SourcedCode {
            // BypassCodeError never contains the code itself, only a position.
            code: BypassCode::parse(text).map_err(|e| format!("bypass_code: {e}"))?,
            kind,
            source,
        }),
    };
    Ok((serial, Row { udid, code }))
}

/// `YYYY-MM-DD`, optionally followed by a time: enough to catch swapped columns.
fn looks_like_timestamp(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() >= 10
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[5..7].iter().all(u8::is_ascii_digit)
        && b[7] == b'-'
        && b[8..10].iter().all(u8::is_ascii_digit)
}

impl CodeLookup for CsvCodes {
    fn lookup<'a>(
        &'a self,
        serial: &'a str,
        udid: &'a str,
    ) -> futures_util::future::BoxFuture<'a, Result<Lookup, LookupError>> {
        Box::pin(async move { Ok(self.lookup_now(serial, udid)) })
    }
}

impl CodeSource for CsvCodes {
    type Config = CsvSource;

    fn from_config(config: &CsvSource, context: &BuildContext<'_>) -> Result<Self, String> {
        let codes = CsvCodes::load(&config.path).map_err(|e| e.to_string())?;
        tracing::info!(source = %context.name, rows = codes.rows(), "bypass codes loaded");
        Ok(codes)
    }

    fn describe(config: &CsvSource) -> Description {
        Description {
            detail: format!("file {}", config.path.display()),
            warning: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "3UM43-PUYVY-QYD1-UVCC-HEHJ-FKA4";
    const OTHER: &str = "8LNYD-DVNKU-GYRC-E6GU-3YFD-CT86";

    fn parse(text: &str) -> Result<CsvCodes, ParseError> {
        CsvCodes::parse(text.as_bytes(), "codes.csv")
    }

    fn header() -> String {
        COLUMNS.join(",")
    }

    #[test]
    fn several_rows_per_serial_in_file_order_without_duplicates() {
        let text = format!(
            "{}\nC8TJ500QF1MN,,{GOOD},device,intune,2026-01-31T10:00:00Z\nc8tj500qf1mn,,{},server,,\nC8TJ500QF1MN,,{GOOD},device,,\n",
            header(),
            OTHER.to_lowercase().replace('-', "")
        );
        let codes = parse(&text).expect("parse");
        assert_eq!(codes.rows(), 3);
        let lookup = codes.lookup_now("C8TJ500QF1MN", "00008030-001A2B3C4D5E802E");
        assert!(lookup.known);
        let found: Vec<String> = lookup.codes.iter().map(|c| c.code.reveal()).collect();
        assert_eq!(found, vec![GOOD.to_string(), OTHER.to_string()]);
        assert_eq!(lookup.codes[0].kind, CodeKind::Device);
        assert_eq!(lookup.codes[0].source, "csv:codes.csv:intune");
        assert_eq!(lookup.codes[1].kind, CodeKind::Server);
    }

    #[test]
    fn empty_code_marks_a_known_device_without_code() {
        let codes =
            parse(&format!("{}\nC8TJ500QF1MN,,,unknown,intune,\n", header())).expect("parse");
        let lookup = codes.lookup_now("C8TJ500QF1MN", "x");
        assert!(lookup.known);
        assert!(lookup.codes.is_empty());
        assert_eq!(
            lookup.absent,
            ["in codes.csv without a code: the serial's row has an empty code"]
        );
        let unknown = codes.lookup_now("F2LXXXXXXXXX", "x");
        assert!(!unknown.known && unknown.codes.is_empty());
        assert_eq!(
            unknown.absent,
            ["not in codes.csv: the serial is not in the file"]
        );
    }

    #[test]
    fn rows_for_another_udid_are_skipped() {
        let codes = parse(&format!(
            "{}\nC8TJ500QF1MN,00008030-00000000000000AA,{GOOD},device,,\n",
            header()
        ))
        .expect("parse");
        assert!(
            codes
                .lookup_now("C8TJ500QF1MN", "00008030-00000000000000AA")
                .known
        );
        let other = codes.lookup_now("C8TJ500QF1MN", "00008030-00000000000000BB");
        assert!(!other.known && other.codes.is_empty());
        assert_eq!(
            other.absent,
            ["not in codes.csv: the serial's rows name another UDID"]
        );
    }

    #[test]
    fn bad_rows_are_reported_by_line_without_echoing_codes() {
        let bad_code = "3UM43-PUYVY-QYD1-UVCC-HEHJ-FKAO";
        let text = format!(
            "{}\nC8TJ500QF1MN,,{GOOD},device,,\nC8TJ500QF1MN,,{bad_code},device,,\n!!,,{GOOD},device,,\nC8TJ500QF1MN,,{GOOD},sideways,,\nC8TJ500QF1MN,,{GOOD},device,,yesterday\nC8TJ500QF1MN,{GOOD}\n",
            header()
        );
        let Err(ParseError::Rows(errors)) = parse(&text) else {
            panic!("expected row errors");
        };
        let lines: Vec<u64> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![3, 4, 5, 6, 7]);
        assert!(
            errors[0].message.starts_with("bypass_code:"),
            "{}",
            errors[0].message
        );
        assert!(errors[1].message.starts_with("serial_number:"));
        assert!(errors[2].message.starts_with("code_kind:"));
        assert!(errors[3].message.starts_with("retrieved_at:"));
        for e in &errors {
            assert!(
                !e.message.contains("PUYVY"),
                "row error echoes a code: {}",
                e.message
            );
        }
        let err = CsvError::Rows {
            path: "codes.csv".into(),
            errors,
        };
        assert!(!err.to_string().contains("PUYVY"));
    }

    #[test]
    fn wrong_header_is_refused() {
        assert!(matches!(
            parse("serial,code\nA,B\n"),
            Err(ParseError::Header)
        ));
        // A UTF-8 byte order mark (Excel exports) is fine.
        assert!(parse(&format!("\u{feff}{}\n", header())).is_ok());
    }
}
