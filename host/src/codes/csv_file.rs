//! Bypass codes from an export file (docs/mdm.md §6, docs/code-sources.md "Export files").
//! Three layouts, told apart by the file's start:
//!
//! - the station's own CSV, `serial_number,udid,bypass_code,code_kind,source,retrieved_at`,
//!   one row per code, several rows per serial allowed, an empty `bypass_code` meaning "our
//!   device, no code escrowed";
//! - Kandji's device-secrets export (`device_secrets.py --albc`, kandji-inc/support): a CSV
//!   with, among other columns, `serial_number`, `user_based_albc` and `device_based_albc`;
//! - IntuneCD's activation-lock backup (`--activationlock`, almenscorner/IntuneCD): JSON, a
//!   list of `{"id", "deviceName", "serialNumber", "activationLockBypassCode"}` (or one such
//!   object), or the same as YAML in the block layout PyYAML writes.
//!
//! Every row is validated; errors name the line (or entry) and the column, never the code
//! itself.

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

/// Where a problem is: a CSV line (1-based, the header being line 1) or an entry of a JSON
/// list (1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    Line(u64),
    Entry(usize),
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Line(n) => write!(f, "line {n}"),
            Place::Entry(n) => write!(f, "entry {n}"),
        }
    }
}

/// One problem in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    pub place: Place,
    pub message: String,
}

/// The layout a codes file was read as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FileFormat {
    /// The station's own CSV ([`COLUMNS`]).
    #[default]
    Station,
    /// Kandji's device-secrets export (`device_secrets.py --albc`).
    KandjiSecrets,
    /// IntuneCD's activation-lock backup (JSON).
    IntuneCd,
}

impl FileFormat {
    pub fn describe(self) -> &'static str {
        match self {
            FileFormat::Station => "the station's CSV",
            FileFormat::KandjiSecrets => "a Kandji device-secrets export",
            FileFormat::IntuneCd => "an IntuneCD activation-lock backup",
        }
    }
}

/// Kandji's export: the device's serial and its two codes (docs/mdm.md §3.1).
const KANDJI_SERIAL: &str = "serial_number";
const KANDJI_USER_BASED: &str = "user_based_albc";
const KANDJI_DEVICE_BASED: &str = "device_based_albc";

#[derive(Debug, thiserror::Error)]
pub enum CsvError {
    #[error("cannot read codes file {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path}: header must be `{}` (the station's format), or a Kandji device-secrets export's (with `serial_number`, `user_based_albc`, `device_based_albc`); or the file an IntuneCD activation-lock backup (JSON or YAML)", COLUMNS.join(","))]
    Header { path: PathBuf },
    #[error("{path}: not an IntuneCD activation-lock backup: {reason}")]
    Json { path: PathBuf, reason: String },
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
        .map(|e| format!("{}: {}", e.place, e.message))
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
    format: FileFormat,
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
            ParseError::Json(reason) => CsvError::Json {
                path: path.to_path_buf(),
                reason,
            },
            ParseError::Rows(errors) => CsvError::Rows {
                path: path.to_path_buf(),
                errors,
            },
        })
    }

    /// Parses the file's bytes; `label` names the file in each code's source tag. A file
    /// whose first character (after a byte order mark and blanks) is `[` or `{` is read as
    /// an IntuneCD backup in JSON, one that looks like YAML (`looks_like_yaml`) as one in
    /// YAML, any other as CSV, its header telling the layout.
    pub fn parse(bytes: &[u8], label: &str) -> Result<Self, ParseError> {
        let bytes = bytes.strip_prefix("\u{feff}".as_bytes()).unwrap_or(bytes);
        if matches!(
            bytes.iter().find(|b| !b.is_ascii_whitespace()),
            Some(b'[' | b'{')
        ) {
            return Self::parse_intunecd(bytes, label);
        }
        if let Some(text) = std::str::from_utf8(bytes)
            .ok()
            .filter(|t| looks_like_yaml(t))
        {
            return Self::parse_intunecd_yaml(text, label);
        }
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .trim(csv::Trim::All)
            .flexible(true)
            .from_reader(bytes);
        let header = reader.headers().map_err(|_| ParseError::Header)?.clone();
        let names: Vec<String> = header.iter().map(str::to_ascii_lowercase).collect();
        let layout = if names == COLUMNS {
            Layout::Station
        } else {
            let column = |name: &str| names.iter().position(|n| n == name);
            match (
                column(KANDJI_SERIAL),
                column(KANDJI_USER_BASED),
                column(KANDJI_DEVICE_BASED),
            ) {
                (Some(serial), user_based, device_based)
                    if user_based.is_some() || device_based.is_some() =>
                {
                    Layout::Kandji {
                        columns: names.len(),
                        serial,
                        user_based,
                        device_based,
                    }
                }
                _ => return Err(ParseError::Header),
            }
        };
        let mut codes = CsvCodes {
            label: label.to_string(),
            format: layout.format(),
            ..CsvCodes::default()
        };
        let mut errors = Vec::new();
        for (index, record) in reader.records().enumerate() {
            let line = record
                .as_ref()
                .ok()
                .and_then(|r| r.position())
                .map_or(index as u64 + 2, |p| line_at(bytes, p.byte()));
            let place = Place::Line(line);
            match record {
                Ok(record) => {
                    let parsed = match layout {
                        Layout::Station => parse_row(&record, label).map(|row| vec![row]),
                        Layout::Kandji {
                            columns,
                            serial,
                            user_based,
                            device_based,
                        } => parse_kandji_row(
                            &record,
                            label,
                            columns,
                            serial,
                            user_based,
                            device_based,
                        ),
                    };
                    match parsed {
                        Ok(rows) => codes.add(rows),
                        Err(message) => errors.push(RowError { place, message }),
                    }
                }
                // The csv error text can quote the row; say only where it is.
                Err(_) => errors.push(RowError {
                    place,
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

    /// IntuneCD's backup: a list of devices (its `backup_activationLock.py`), or one device
    /// (its later `ActivationLockBackupModule` writes each device to the same file name).
    fn parse_intunecd(bytes: &[u8], label: &str) -> Result<Self, ParseError> {
        // serde_json's messages can quote the text they choke on (a code): only the place.
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
            ParseError::Json(format!(
                "expected a JSON list of devices with `serialNumber` and \
                 `activationLockBypassCode` (line {}, column {})",
                e.line(),
                e.column()
            ))
        })?;
        let entries = match value {
            serde_json::Value::Array(entries) => entries,
            one => vec![one],
        };
        let devices = entries
            .into_iter()
            .map(|entry| {
                serde_json::from_value::<IntuneCdDevice>(entry).map_err(|_| {
                    "expected an object with `serialNumber` and `activationLockBypassCode` strings"
                        .to_string()
                })
            })
            .collect();
        Self::from_intunecd_devices(devices, label)
    }

    /// IntuneCD's `-o yaml` form (see [`intunecd_yaml_devices`]).
    fn parse_intunecd_yaml(text: &str, label: &str) -> Result<Self, ParseError> {
        let devices = intunecd_yaml_devices(text).map_err(ParseError::Json)?;
        Self::from_intunecd_devices(devices.into_iter().map(Ok).collect(), label)
    }

    fn from_intunecd_devices(
        devices: Vec<Result<IntuneCdDevice, String>>,
        label: &str,
    ) -> Result<Self, ParseError> {
        let mut codes = CsvCodes {
            label: label.to_string(),
            format: FileFormat::IntuneCd,
            ..CsvCodes::default()
        };
        let mut errors = Vec::new();
        for (index, device) in devices.into_iter().enumerate() {
            let place = Place::Entry(index + 1);
            let row = device.and_then(|device| {
                let serial = checked_serial(device.serial_number.as_deref().unwrap_or_default())
                    .map_err(|e| format!("serialNumber: {e}"))?;
                let code = match device.code.as_deref().map(str::trim) {
                    None | Some("") => None,
                    Some(text) => Some(SourcedCode {
                        code: BypassCode::parse(text)
                            .map_err(|e| format!("activationLockBypassCode: {e}"))?,
                        // Intune's property holds the code it escrowed (docs/mdm.md §1.1).
                        kind: CodeKind::Device,
                        source: format!("csv:{label}:intune"),
                    }),
                };
                Ok((serial, Row { udid: None, code }))
            });
            match row {
                Ok(row) => codes.add(vec![row]),
                Err(message) => errors.push(RowError { place, message }),
            }
        }
        if errors.is_empty() {
            Ok(codes)
        } else {
            Err(ParseError::Rows(errors))
        }
    }

    fn add(&mut self, rows: Vec<(String, Row)>) {
        for (serial, row) in rows {
            self.by_serial.entry(serial).or_default().push(row);
            self.rows += 1;
        }
    }

    /// The layout the file was read as.
    pub fn format(&self) -> FileFormat {
        self.format
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
    /// An IntuneCD backup that is not the expected JSON or YAML; the reason never quotes
    /// the file.
    Json(String),
    Rows(Vec<RowError>),
}

/// The CSV layout a header names.
#[derive(Debug, Clone, Copy)]
enum Layout {
    Station,
    /// Column indexes in a Kandji device-secrets export; other columns (device name,
    /// blueprint, platform, other secrets, an `error` for a device without secrets) are
    /// not read.
    Kandji {
        columns: usize,
        serial: usize,
        user_based: Option<usize>,
        device_based: Option<usize>,
    },
}

impl Layout {
    fn format(self) -> FileFormat {
        match self {
            Layout::Station => FileFormat::Station,
            Layout::Kandji { .. } => FileFormat::KandjiSecrets,
        }
    }
}

/// One device of IntuneCD's backup: Graph's `managedDevice` with `$select=id,deviceName,
/// serialNumber,activationLockBypassCode`; only the serial and the code are read.
#[derive(serde::Deserialize)]
struct IntuneCdDevice {
    #[serde(rename = "serialNumber")]
    serial_number: Option<String>,
    #[serde(rename = "activationLockBypassCode")]
    code: Option<String>,
}

/// The 1-based line of byte `offset`: the csv crate's own line count does not count CRLF
/// line ends (Python's `csv` module, and so Kandji's export, ends rows with CRLF).
fn line_at(bytes: &[u8], offset: u64) -> u64 {
    let end = usize::try_from(offset).map_or(bytes.len(), |o| o.min(bytes.len()));
    let before = &bytes[..end];
    let breaks = before
        .iter()
        .enumerate()
        .filter(|&(i, &b)| b == b'\n' || (b == b'\r' && before.get(i + 1) != Some(&b'\n')))
        .count();
    breaks as u64 + 1
}

/// The first line that holds something starts a YAML block list (`- `), is a document
/// marker (`---`), or is a `key: value` line: no CSV header looks like that.
fn looks_like_yaml(text: &str) -> bool {
    let Some(first) = text
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .find(|l| !l.trim().is_empty() && !l.starts_with('#'))
    else {
        return false;
    };
    first.starts_with("- ")
        || first == "-"
        || first.starts_with("---")
        || yaml_key_value(first).is_some_and(|(key, _)| {
            !key.is_empty()
                && key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '@' || c == '.')
        })
}

/// `key: value` (or `key:` with nothing after it).
fn yaml_key_value(line: &str) -> Option<(&str, &str)> {
    if let Some(key) = line.strip_suffix(':') {
        return Some((key, ""));
    }
    line.split_once(": ")
}

/// A plain or quoted YAML scalar as PyYAML writes one on a line; `None` for null.
fn yaml_scalar(value: &str) -> Result<Option<String>, &'static str> {
    let value = value.trim();
    match value {
        "" | "~" | "null" | "Null" | "NULL" => return Ok(None),
        _ => {}
    }
    if let Some(rest) = value.strip_prefix('\'') {
        let inner = rest
            .strip_suffix('\'')
            .ok_or("a quoted value that goes on over several lines")?;
        return Ok(Some(inner.replace("''", "'")));
    }
    if let Some(rest) = value.strip_prefix('"') {
        let inner = rest
            .strip_suffix('"')
            .ok_or("a quoted value that goes on over several lines")?;
        if inner.contains('\\') {
            return Err("a quoted value with escapes");
        }
        return Ok(Some(inner.to_string()));
    }
    Ok(Some(value.to_string()))
}

/// The devices of IntuneCD's `-o yaml` backup, which PyYAML writes with
/// `yaml.dump(…, sort_keys=False, default_flow_style=False)`: a block list, each device
/// starting with `- key: value` and its other keys on lines indented by two spaces
/// (`  key: value`), or (the later module's single device) the keys at the start of the
/// line. Only that layout is read, and of it only `serialNumber` and
/// `activationLockBypassCode`; a value PyYAML folded onto further, deeper-indented lines
/// (a long `deviceName`) is skipped. Errors give the line, never its text.
fn intunecd_yaml_devices(text: &str) -> Result<Vec<IntuneCdDevice>, String> {
    let mut devices: Vec<IntuneCdDevice> = Vec::new();
    let mut list: Option<bool> = None;
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim_end_matches('\r');
        let number = index + 1;
        if line.trim().is_empty() || line.starts_with('#') || line.starts_with("---") {
            continue;
        }
        let (starts_device, key_line) = if let Some(rest) = line.strip_prefix("- ") {
            (true, rest)
        } else if let Some(rest) = line.strip_prefix("  ") {
            if rest.starts_with(' ') || list != Some(true) {
                // A folded value's continuation (or nested text): not a key of ours.
                continue;
            }
            (false, rest)
        } else {
            (devices.is_empty(), line)
        };
        let is_list = line.starts_with("- ");
        match list {
            None => list = Some(is_list),
            Some(was) if was != is_list && (is_list || !line.starts_with("  ")) => {
                return Err(format!(
                    "line {number}: expected IntuneCD's YAML list of devices (`- serialNumber: …`)"
                ));
            }
            Some(_) => {}
        }
        if starts_device {
            devices.push(IntuneCdDevice {
                serial_number: None,
                code: None,
            });
        }
        let Some((key, value)) = yaml_key_value(key_line) else {
            return Err(format!("line {number}: expected `key: value`"));
        };
        let Some(device) = devices.last_mut() else {
            return Err(format!("line {number}: a key before the first device"));
        };
        let slot = match key.trim() {
            "serialNumber" => &mut device.serial_number,
            "activationLockBypassCode" => &mut device.code,
            _ => continue,
        };
        *slot = yaml_scalar(value).map_err(|why| format!("line {number}: {key}: {why}"))?;
    }
    Ok(devices)
}

/// A serial as the files give it, upper-cased, or why it is not one.
fn checked_serial(text: &str) -> Result<String, &'static str> {
    let serial = text.trim().to_ascii_uppercase();
    if (8..=20).contains(&serial.len()) && serial.chars().all(|c| c.is_ascii_alphanumeric()) {
        Ok(serial)
    } else {
        Err("expected 8 to 20 letters and digits")
    }
}

/// A row of Kandji's export: one row per device, its `user_based_albc` a device-generated
/// code and its `device_based_albc` a server-generated one; both empty is a device Kandji
/// knows without a code (its `secrets/bypasscode` answered without one, or 404).
fn parse_kandji_row(
    record: &csv::StringRecord,
    label: &str,
    columns: usize,
    serial: usize,
    user_based: Option<usize>,
    device_based: Option<usize>,
) -> Result<Vec<(String, Row)>, String> {
    if record.len() != columns {
        return Err(format!(
            "expected {columns} columns, found {}",
            record.len()
        ));
    }
    let field = |i: usize| record.get(i).unwrap_or_default();
    let serial = checked_serial(field(serial)).map_err(|e| format!("serial_number: {e}"))?;
    let source = format!("csv:{label}:kandji");
    let mut rows = Vec::new();
    for (column, name, kind) in [
        (user_based, KANDJI_USER_BASED, CodeKind::Device),
        (device_based, KANDJI_DEVICE_BASED, CodeKind::Server),
    ] {
        let Some(text) = column.map(field).filter(|t| !t.is_empty()) else {
            continue;
        };
        let code = BypassCode::parse(text).map_err(|e| format!("{name}: {e}"))?;
        rows.push((
            serial.clone(),
            Row {
                udid: None,
                code: Some(SourcedCode {
                    code,
                    kind,
                    source: source.clone(),
                }),
            },
        ));
    }
    if rows.is_empty() {
        rows.push((
            serial,
            Row {
                udid: None,
                code: None,
            },
        ));
    }
    Ok(rows)
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
    let serial = checked_serial(field(0)).map_err(|e| format!("serial_number: {e}"))?;
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
        tracing::info!(
            source = %context.name,
            rows = codes.rows(),
            format = codes.format().describe(),
            "bypass codes loaded"
        );
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
        let lines: Vec<Place> = errors.iter().map(|e| e.place).collect();
        assert_eq!(lines, [3, 4, 5, 6, 7].map(Place::Line));
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

    /// Kandji's `device_secrets.py --albc --all-devices` report, shaped as the script writes
    /// it (kandji-inc/support `api-tools/device-secrets/device_secrets.py` 0.0.8): one row
    /// per device, `serial_number` first, the device's list fields (its `user` object
    /// flattened to `user_email`, `user_name`, `user_id`, `user_is_archived`), then the two
    /// codes; a device whose `secrets/bypasscode` answered 404 has empty codes and the
    /// script's `error` and `api resp` columns. Macs are in it too.
    const KANDJI_EXPORT: &str = "serial_number,device_id,device_name,blueprint_name,user_email,user_name,user_id,user_is_archived,platform,user_based_albc,device_based_albc,error,api resp\r\n\
C8TJ500QF1MN,9f5b3a62-1c4e-4d7a-8e2b-5a6c7d8e9f01,Loaner 14,Bench returns,sam@example.com,Sam Doe,7,False,iPhone,3UM43-PUYVY-QYD1-UVCC-HEHJ-FKA4,8LNYD-DVNKU-GYRC-E6GU-3YFD-CT86,,\r\n\
F2LXK0AAJC67,0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0,iPad 3,Bench returns,,,,,iPad,,,,\r\n\
C02ZK0AAMD6T,1c2d3e4f-5061-7283-94a5-b6c7d8e9f0a1,Sam's MacBook,\"Macs, staff\",,,,,Mac,,,404,404 Client Error: Not Found for url: https://acme.api.kandji.io/api/v1/devices/1c2d3e4f-5061-7283-94a5-b6c7d8e9f0a1/secrets/bypasscode\r\n";

    #[test]
    fn a_kandji_device_secrets_export_is_read() {
        let codes = parse(KANDJI_EXPORT).expect("Kandji's export parses");
        assert_eq!(codes.format(), FileFormat::KandjiSecrets);
        let lookup = codes.lookup_now("C8TJ500QF1MN", "00008030-001A2B3C4D5E802E");
        let found: Vec<(String, CodeKind, &str)> = lookup
            .codes
            .iter()
            .map(|c| (c.code.reveal(), c.kind, c.source.as_str()))
            .collect();
        assert_eq!(
            found,
            [
                (GOOD.to_string(), CodeKind::Device, "csv:codes.csv:kandji"),
                (OTHER.to_string(), CodeKind::Server, "csv:codes.csv:kandji"),
            ]
        );
        // Both codes empty (no secrets, or secrets/bypasscode 404): known, no code.
        for serial in ["F2LXK0AAJC67", "C02ZK0AAMD6T"] {
            let lookup = codes.lookup_now(serial, "x");
            assert!(lookup.known && lookup.codes.is_empty(), "{serial}");
            assert_eq!(
                lookup.absent,
                ["in codes.csv without a code: the serial's row has an empty code"]
            );
        }
        assert!(!codes.lookup_now("F2LNOTKNOWN1", "x").known);
        // Only one of the two code columns is enough to recognise it.
        let one = parse(
            "device_id,serial_number,user_based_albc\nd1,C8TJ500QF1MN,3UM43PUYVYQYD1UVCCHEHJFKA4\n",
        )
        .expect("parse");
        assert_eq!(one.lookup_now("C8TJ500QF1MN", "x").codes.len(), 1);
    }

    #[test]
    fn a_bad_code_in_a_kandji_export_names_its_column_not_the_code() {
        let text = KANDJI_EXPORT.replace(OTHER, "8LNYD-DVNKU-GYRC-E6GU-3YFD-CT8O");
        let Err(ParseError::Rows(errors)) = parse(&text) else {
            panic!("expected row errors");
        };
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].place, Place::Line(2));
        assert!(
            errors[0].message.starts_with("device_based_albc:"),
            "{}",
            errors[0].message
        );
        assert!(!errors[0].message.contains("DVNKU"));
    }

    /// IntuneCD's `--activationlock` backup as its `backup_activationLock.py` writes it
    /// (`json.dump(…, indent=5)` of Graph's answers without `@odata.context`), and as its
    /// later `ActivationLockBackupModule` leaves it (one device object).
    #[test]
    fn an_intunecd_activation_lock_backup_is_read() {
        let list = format!(
            "[\n     {{\n          \"id\": \"5f2c1e0a-7b3d-4c8e-9a1f-2b3c4d5e6f70\",\n          \"deviceName\": \"Loaner 14\",\n          \"serialNumber\": \"C8TJ500QF1MN\",\n          \"activationLockBypassCode\": \"{GOOD}\"\n     }},\n     {{\n          \"id\": \"6a3d2f1b-8c4e-4d9f-0b2a-3c4d5e6f7081\",\n          \"deviceName\": \"iPad 3\",\n          \"serialNumber\": \"F2LXK0AAJC67\",\n          \"activationLockBypassCode\": null\n     }}\n]"
        );
        let codes = parse(&list).expect("IntuneCD's list parses");
        assert_eq!(codes.format(), FileFormat::IntuneCd);
        assert_eq!(codes.rows(), 2);
        let lookup = codes.lookup_now("c8tj500qf1mn", "x");
        assert_eq!(lookup.codes.len(), 1);
        assert_eq!(lookup.codes[0].code.reveal(), GOOD);
        assert_eq!(lookup.codes[0].kind, CodeKind::Device);
        assert_eq!(lookup.codes[0].source, "csv:codes.csv:intune");
        let none = codes.lookup_now("F2LXK0AAJC67", "x");
        assert!(none.known && none.codes.is_empty());

        let one = format!(
            "\u{feff}{{\n     \"deviceName\": \"Loaner 14\",\n     \"serialNumber\": \"C8TJ500QF1MN\",\n     \"activationLockBypassCode\": \"{OTHER}\"\n}}"
        );
        let codes = parse(&one).expect("one device parses");
        assert_eq!(
            codes.lookup_now("C8TJ500QF1MN", "x").codes[0].code.reveal(),
            OTHER
        );
    }

    /// The same backup with `-o yaml`, as PyYAML's `yaml.dump(…, sort_keys=False,
    /// default_flow_style=False)` writes it: a block list, a long device name folded onto
    /// a deeper-indented line, an all-digit value quoted, a missing code `null`.
    #[test]
    fn an_intunecd_yaml_backup_is_read() {
        let list = format!(
            "- id: 5f2c1e0a-7b3d-4c8e-9a1f-2b3c4d5e6f70\n  deviceName: Loaner 14 with a very long name that PyYAML folds onto the next line\n    because it is longer than eighty characters\n  serialNumber: C8TJ500QF1MN\n  activationLockBypassCode: {GOOD}\n- id: 6a3d2f1b-8c4e-4d9f-0b2a-3c4d5e6f7081\n  deviceName: 'iPad: 3'\n  serialNumber: '123456789012'\n  activationLockBypassCode: '{OTHER}'\n- id: 7b4e3a2c-9d5f-4e0a-1c3b-4d5e6f708192\n  deviceName: iPad 4\n  serialNumber: F2LXK0AAJC67\n  activationLockBypassCode: null\n"
        );
        let codes = parse(&list).expect("IntuneCD's YAML parses");
        assert_eq!(codes.format(), FileFormat::IntuneCd);
        assert_eq!(codes.rows(), 3);
        let first = codes.lookup_now("C8TJ500QF1MN", "x");
        assert_eq!(first.codes.len(), 1);
        assert_eq!(first.codes[0].code.reveal(), GOOD);
        assert_eq!(first.codes[0].source, "csv:codes.csv:intune");
        assert_eq!(
            codes.lookup_now("123456789012", "x").codes[0].code.reveal(),
            OTHER
        );
        let none = codes.lookup_now("F2LXK0AAJC67", "x");
        assert!(none.known && none.codes.is_empty());

        // The later module's single device: its keys at the start of the line.
        let one = format!(
            "deviceName: Loaner 14\nserialNumber: C8TJ500QF1MN\nactivationLockBypassCode: {OTHER}\n"
        );
        let codes = parse(&one).expect("one device parses");
        assert_eq!(
            codes.lookup_now("C8TJ500QF1MN", "x").codes[0].code.reveal(),
            OTHER
        );

        // A bad code names its entry; layouts it does not read name their line.
        let bad = "- serialNumber: C8TJ500QF1MN\n  activationLockBypassCode: 3UM43-PUYVY-QYD1-UVCC-HEHJ-FKAO\n";
        let Err(ParseError::Rows(errors)) = parse(bad) else {
            panic!("expected an entry error");
        };
        assert_eq!(errors[0].place, Place::Entry(1));
        assert!(!errors[0].message.contains("PUYVY"));
        let Err(ParseError::Json(reason)) =
            parse("- serialNumber: C8TJ500QF1MN\nserialNumber: F2LXK0AAJC67\n")
        else {
            panic!("expected a layout error");
        };
        assert!(reason.starts_with("line 2:"), "{reason}");
        let Err(ParseError::Json(reason)) = parse(&format!(
            "- serialNumber: C8TJ500QF1MN\n  activationLockBypassCode: \"{GOOD}\\n\"\n"
        )) else {
            panic!("expected a quoting error");
        };
        assert!(
            reason.starts_with("line 2: activationLockBypassCode:"),
            "{reason}"
        );
        assert!(!reason.contains("PUYVY"), "{reason}");
    }

    #[test]
    fn a_broken_intunecd_backup_is_refused_without_quoting_it() {
        let bad_code = format!(
            "[{{\"serialNumber\": \"C8TJ500QF1MN\", \"activationLockBypassCode\": \"{GOOD}\"}}, {{\"serialNumber\": \"C8TJ500QF1MN\", \"activationLockBypassCode\": \"3UM43-PUYVY-QYD1-UVCC-HEHJ-FKAO\"}}, {{\"deviceName\": \"x\"}}]"
        );
        let Err(ParseError::Rows(errors)) = parse(&bad_code) else {
            panic!("expected entry errors");
        };
        let places: Vec<Place> = errors.iter().map(|e| e.place).collect();
        assert_eq!(places, [Place::Entry(2), Place::Entry(3)]);
        assert!(errors[0].message.starts_with("activationLockBypassCode:"));
        assert!(errors[1].message.starts_with("serialNumber:"));
        assert!(errors.iter().all(|e| !e.message.contains("PUYVY")));
        // An entry that is not a device object.
        let Err(ParseError::Rows(errors)) = parse(&format!("[\"{GOOD}\"]")) else {
            panic!("expected an entry error");
        };
        assert_eq!(errors[0].place, Place::Entry(1));
        assert!(!errors[0].message.contains("PUYVY"));
        // Not JSON at all (cut short): the reason gives the place, never the text.
        let Err(ParseError::Json(reason)) = parse(&format!(
            "[\n{{\"serialNumber\": \"C8TJ500QF1MN\",\n\"activationLockBypassCode\": \"{GOOD}"
        )) else {
            panic!("expected a JSON error");
        };
        assert!(reason.contains("line 3"), "{reason}");
        assert!(!reason.contains("PUYVY"), "{reason}");
    }

    #[test]
    fn wrong_header_is_refused() {
        assert!(matches!(
            parse("serial,code\nA,B\n"),
            Err(ParseError::Header)
        ));
        // A Kandji export without the codes (another secret asked for) is not a codes file.
        assert!(matches!(
            parse("serial_number,device_id,unlock_pin\nC8TJ500QF1MN,d1,123456\n"),
            Err(ParseError::Header)
        ));
        // A UTF-8 byte order mark (Excel exports) is fine.
        assert!(parse(&format!("\u{feff}{}\n", header())).is_ok());
    }
}
