//! `station report`: the attempts in the ledger, filtered, as an aligned table, CSV or
//! JSON. Field names and meanings: docs/report.md.

use std::path::PathBuf;

use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{Date, OffsetDateTime, Time};

use crate::error::StationError;
use crate::ledger::{after_millisecond, AttemptRecord, Filter, Status};
use crate::output::report::ReportFormat;
use crate::station::Station;

/// What `station report` takes.
#[derive(Debug, Clone, clap::Args)]
#[command(
    after_long_help = "Rows are attempts, oldest first. A DATE is a UTC day \
(2026-11-27) or an RFC 3339 timestamp (2026-11-27T14:00:00+01:00); --since and --until \
both include the day or instant they name and filter on when the attempt started.\n\n\
Formats: table (default on a terminal), csv (default otherwise; RFC 4180 with a header \
row), json (an array of objects; the same as --json). Fields: see docs/report.md.\n\n\
An empty result, or no ledger yet, is not an error: exit status 0."
)]
pub struct ReportArgs {
    /// Attempts started on or after DATE (UTC day or RFC 3339 timestamp).
    #[arg(long, value_name = "DATE", value_parser = since_bound)]
    pub since: Option<OffsetDateTime>,
    /// Attempts started on or before DATE (a day counts whole).
    #[arg(long, value_name = "DATE", value_parser = until_bound)]
    pub until: Option<OffsetDateTime>,
    /// Only attempts that ended so; repeat for several. `in_progress`: not ended.
    #[arg(long = "outcome", value_name = "OUTCOME", value_parser = outcome_arg)]
    pub outcomes: Vec<Status>,
    /// Only phones found Activation-Locked, with how each ended.
    #[arg(long)]
    pub locked: bool,
    /// Only phones whose Find My was read as on, or as off (phones that said nothing,
    /// e.g. unactivated ones, match neither).
    #[arg(long, value_name = "on|off", value_parser = on_off)]
    pub find_my: Option<bool>,
    /// Only phones that said they are supervised.
    #[arg(long)]
    pub supervised: bool,
    /// Only phones supervised by this organisation (case-insensitive).
    #[arg(long, value_name = "NAME")]
    pub organization: Option<String>,
    /// One row per phone: its newest matching attempt.
    #[arg(long)]
    pub latest: bool,
    /// Only the attempts of this run.
    #[arg(long, value_name = "RUN_ID")]
    pub run: Option<String>,
    /// Output format [default: table on a terminal, else csv; `--json` means json].
    #[arg(long, value_enum)]
    pub format: Option<ReportFormat>,
    /// Every station's attempts, from the fleet database ([fleet], docs/fleet.md), not
    /// this station's ledger. Shipped attempts only: finished ones.
    #[arg(long)]
    pub fleet: bool,
    /// With --fleet: only this station's attempts (its fleet station id).
    #[arg(long, value_name = "ID", requires = "fleet")]
    pub station: Option<String>,
}

/// `2026-11-27` (that UTC day from midnight) or an RFC 3339 timestamp; `true` for a day.
fn date_or_timestamp(text: &str) -> Result<(OffsetDateTime, bool), String> {
    let text = text.trim();
    if let Ok(at) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok((at, false));
    }
    Date::parse(text, format_description!("[year]-[month]-[day]"))
        .map(|day| (day.with_time(Time::MIDNIGHT).assume_utc(), true))
        .map_err(|_| {
            format!("expected a date (2026-11-27) or an RFC 3339 timestamp (2026-11-27T14:00:00Z), got {text:?}")
        })
}

fn since_bound(text: &str) -> Result<OffsetDateTime, String> {
    date_or_timestamp(text).map(|(at, _)| at)
}

/// The exclusive bound: the next midnight for a day, the next millisecond for an instant.
fn until_bound(text: &str) -> Result<OffsetDateTime, String> {
    let (at, day) = date_or_timestamp(text)?;
    Ok(if day {
        at + time::Duration::DAY
    } else {
        after_millisecond(at)
    })
}

fn on_off(text: &str) -> Result<bool, String> {
    match text.trim() {
        "on" => Ok(true),
        "off" => Ok(false),
        other => Err(format!("expected on or off, got {other:?}")),
    }
}

fn outcome_arg(text: &str) -> Result<Status, String> {
    Status::parse(text).ok_or_else(|| {
        format!(
            "unknown outcome {text:?}; valid outcomes: {}",
            Status::names().join(", ")
        )
    })
}

impl ReportArgs {
    fn filter(&self) -> Result<Filter, StationError> {
        if let (Some(since), Some(before)) = (self.since, self.until) {
            if since >= before {
                return Err(StationError::ReportRange);
            }
        }
        Ok(Filter {
            since: self.since,
            before: self.until,
            statuses: self.outcomes.clone(),
            locked_only: self.locked,
            run_id: self.run.clone(),
            udid: None,
            find_my: self.find_my,
            supervised_only: self.supervised,
            organization: self.organization.clone(),
            latest_per_phone: self.latest,
        })
    }
}

/// The attempts the ledger holds, filtered, and how to show them.
#[derive(Debug)]
pub struct Report {
    pub records: Vec<AttemptRecord>,
    /// `--format`; `None`: JSON with `--json`, else a table on a terminal and CSV otherwise.
    pub format: Option<ReportFormat>,
    /// The ledger that does not exist yet: said on stderr, with an empty report (exit 0):
    /// nothing was processed, which is an answer, not a failure.
    pub missing_ledger: Option<PathBuf>,
}

/// `station report --fleet`: the same filters and rows, from the fleet database.
pub async fn fleet_report(args: &ReportArgs, station: &Station) -> Result<Report, StationError> {
    let filter = args.filter()?;
    let settings = crate::commands::fleet::settings(station)?;
    let client = crate::fleet::connect(&settings.target).await?;
    crate::fleet::schema::require_current(&client).await?;
    let records = crate::fleet::read::attempts(&client, &filter, args.station.as_deref()).await?;
    Ok(Report {
        records,
        format: args.format,
        missing_ledger: None,
    })
}

pub fn report(args: &ReportArgs, station: &Station) -> Result<Report, StationError> {
    let filter = args.filter()?;
    let (records, missing_ledger) = match station.ledger_reader()? {
        Some(reader) => (reader.attempts(&filter)?, None),
        None => (
            Vec::new(),
            Some(crate::ledger::ledger_path(station.data_dir()?)),
        ),
    };
    Ok(Report {
        records,
        format: args.format,
        missing_ledger,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activation::Outcome;
    use crate::ledger::LedgerReader;
    use crate::output::report::{render, CSV_COLUMNS};
    use clap::Parser;
    use std::path::Path;
    use time::macros::datetime;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: ReportArgs,
    }

    fn parse(args: &[&str]) -> Result<ReportArgs, String> {
        Cli::try_parse_from(std::iter::once("report").chain(args.iter().copied()))
            .map(|c| c.args)
            .map_err(|e| e.to_string())
    }

    fn rows(dir: &Path, args: &[&str]) -> Vec<AttemptRecord> {
        let args = parse(args).expect("arguments");
        LedgerReader::open(dir)
            .expect("reader")
            .expect("ledger")
            .attempts(&args.filter().expect("filter"))
            .expect("attempts")
    }

    fn udids(records: &[AttemptRecord]) -> Vec<String> {
        records
            .iter()
            .map(|r| format!("{}:{}", r.udid, r.outcome.name()))
            .collect()
    }

    #[test]
    fn dates_and_timestamps_bound_the_start() {
        let args = parse(&["--since", "2026-11-27", "--until", "2026-11-27"]).expect("parse");
        assert_eq!(args.since, Some(datetime!(2026-11-27 00:00 UTC)));
        assert_eq!(args.until, Some(datetime!(2026-11-28 00:00 UTC)));
        let args = parse(&["--until", "2026-11-27T14:00:00+01:00"]).expect("parse");
        assert_eq!(args.until, Some(datetime!(2026-11-27 13:00:00.001 UTC)));
        let error = parse(&["--since", "27/11/2026"]).expect_err("refused");
        assert!(error.contains("expected a date (2026-11-27)"), "{error}");
        let args = parse(&["--since", "2026-11-28", "--until", "2026-11-27"]).expect("parse");
        assert!(args.filter().is_err());
    }

    #[test]
    fn unknown_outcomes_are_refused_with_the_valid_names() {
        let error = parse(&["--outcome", "locked"]).expect_err("refused");
        assert!(error.contains("unknown outcome \"locked\""), "{error}");
        assert!(
            error.contains("activated, already_activated, locked_no_code"),
            "{error}"
        );
        let args = parse(&["--outcome", "user_locked", "--outcome", "in_progress"]).expect("parse");
        assert_eq!(
            args.outcomes,
            [Status::Finished(Outcome::UserLocked), Status::InProgress]
        );
    }

    #[tokio::test]
    async fn filters_from_the_command_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        crate::ledger::tests::sample_ledger(dir.path()).await;
        assert_eq!(
            udids(&rows(
                dir.path(),
                &["--since", "2026-11-27", "--until", "2026-11-27T10:59:59Z"]
            )),
            ["c:already_activated", "d:code_rejected"]
        );
        assert_eq!(
            udids(&rows(dir.path(), &["--until", "2026-11-26"])),
            ["a:activated", "b:locked_no_code"]
        );
        assert_eq!(
            udids(&rows(
                dir.path(),
                &["--outcome", "activated", "--outcome", "user_locked"]
            )),
            ["a:activated", "b:user_locked"]
        );
        assert_eq!(
            udids(&rows(dir.path(), &["--locked"])),
            [
                "a:activated",
                "b:locked_no_code",
                "d:code_rejected",
                "b:user_locked"
            ]
        );
        assert_eq!(
            udids(&rows(dir.path(), &["--locked", "--latest", "--run", "r2"])),
            ["d:code_rejected", "b:user_locked"]
        );
    }

    #[tokio::test]
    async fn csv_parses_back_with_a_header_and_one_row_per_attempt() {
        let dir = tempfile::tempdir().expect("tempdir");
        crate::ledger::tests::sample_ledger(dir.path()).await;
        let records = rows(dir.path(), &[]);
        let text = render(&records, ReportFormat::Csv).expect("csv");
        let mut reader = csv::Reader::from_reader(text.as_bytes());
        let header: Vec<String> = reader
            .headers()
            .expect("header")
            .iter()
            .map(str::to_string)
            .collect();
        assert_eq!(header, CSV_COLUMNS);
        let parsed: Vec<csv::StringRecord> =
            reader.records().collect::<Result<_, _>>().expect("rows");
        assert_eq!(parsed.len(), records.len());
        let column = |name: &str| CSV_COLUMNS.iter().position(|c| *c == name).expect("column");
        let a = &parsed[0];
        assert_eq!(&a[column("udid")], "a");
        assert_eq!(&a[column("outcome")], "activated");
        assert_eq!(&a[column("released_by_source")], "intune");
        assert_eq!(&a[column("released_code")], "3UM43-\u{2026}-FKA4");
        assert_eq!(&a[column("activation_locked")], "true");
        assert_eq!(&a[column("steps")], "pair=500;activation_request=1400");
        // The reason has a comma and a colon: quoting keeps it one field.
        assert!(a[column("reason")].starts_with("activated: Activation Lock released"));
        assert_eq!(&parsed[5][column("outcome")], "in_progress");
        assert_eq!(&parsed[5][column("finished_at")], "");

        let empty = render(&[], ReportFormat::Csv).expect("csv");
        assert_eq!(empty.lines().count(), 1, "just the header");
    }

    #[tokio::test]
    async fn json_is_an_array_of_objects_with_stable_fields() {
        let dir = tempfile::tempdir().expect("tempdir");
        crate::ledger::tests::sample_ledger(dir.path()).await;
        let records = rows(dir.path(), &["--locked"]);
        let text = render(&records, ReportFormat::Json).expect("json");
        let value: serde_json::Value = serde_json::from_str(&text).expect("parses");
        let array = value.as_array().expect("an array");
        assert_eq!(array.len(), 4);
        let first = &array[0];
        for field in [
            "attempt_id",
            "run_id",
            "station_id",
            "udid",
            "serial",
            "product_type",
            "model",
            "product_version",
            "slot",
            "location_id",
            "started_at",
            "finished_at",
            "duration_ms",
            "outcome",
            "reason",
            "stopped_at",
            "activation_state",
            "activation_locked",
            "codes_tried",
            "released_by",
            "remote_release",
            "recovered_at",
            "steps",
            "find_my",
            "passcode_set",
            "supervised",
            "organization",
            "mdm_enrolled",
            "mdm_unremovable",
            "activation_lock",
        ] {
            assert!(first.get(field).is_some(), "missing {field}");
        }
        assert_eq!(first["find_my"], serde_json::Value::Null, "never read");
        assert_eq!(first["activation_lock"]["state"], "released");
        assert_eq!(first["activation_lock"]["source"], "intune");
        assert_eq!(first["outcome"], "activated");
        assert_eq!(first["released_by"]["source"], "intune");
        assert_eq!(first["released_by"]["code"], "3UM43-\u{2026}-FKA4");
        assert_eq!(first["steps"][0]["step"], "pair");
        assert_eq!(first["steps"][0]["duration_ms"], 500);
        assert_eq!(array[1]["outcome"], "locked_no_code");
        assert_eq!(array[1]["released_by"], serde_json::Value::Null);
        assert_eq!(render(&[], ReportFormat::Json).expect("json").trim(), "[]");
    }

    #[tokio::test]
    async fn the_table_aligns_its_columns() {
        let dir = tempfile::tempdir().expect("tempdir");
        crate::ledger::tests::sample_ledger(dir.path()).await;
        let text = render(&rows(dir.path(), &[]), ReportFormat::Table).expect("table");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 7);
        assert!(lines[0].starts_with("FINISHED (UTC)"));
        // Each cell starts where its header does.
        let column = |name: &str| {
            let byte = lines[0].find(name).expect("column");
            lines[0][..byte].chars().count()
        };
        let cell = |line: &str, at: usize| line.chars().skip(at).collect::<String>();
        for line in &lines[1..] {
            assert!(cell(line, column("SLOT")).starts_with("S-"), "{line}");
            let outcome = cell(line, column("OUTCOME"));
            assert!(
                Status::names()
                    .iter()
                    .any(|n| outcome.starts_with(n.as_str())),
                "{line}"
            );
        }
        assert!(lines[1].contains("released by intune with 3UM43-\u{2026}-FKA4"));
        assert!(lines[1].starts_with("2026-11-26 10:00:02  S-a"));
        assert!(lines[6].starts_with("—"), "in progress: not finished");
        assert!(lines[6].ends_with("in progress at step activation_request"));
        assert_eq!(
            render(&[], ReportFormat::Table).expect("table"),
            "No attempts match.\n"
        );
    }

    #[tokio::test]
    async fn the_table_lists_attempts_in_the_order_they_finished() {
        let dir = tempfile::tempdir().expect("tempdir");
        crate::ledger::tests::sample_ledger(dir.path()).await;
        let mut records = rows(dir.path(), &[]);
        // Two phones of one bench: the one started first finished last.
        let (first, second) = (
            records[0].finished_at.clone(),
            records[1].finished_at.clone(),
        );
        records[0].finished_at = second;
        records[1].finished_at = first;
        let text = render(&records, ReportFormat::Table).expect("table");
        let finished: Vec<String> = text
            .lines()
            .skip(1)
            .map(|l| l.chars().take(19).collect())
            .collect();
        let done: Vec<&String> = finished.iter().filter(|f| !f.starts_with('—')).collect();
        let mut sorted = done.clone();
        sorted.sort();
        assert_eq!(done, sorted, "{text}");
        assert!(
            finished.last().is_some_and(|f| f.starts_with('—')),
            "still running comes last: {text}"
        );
    }

    #[test]
    fn a_missing_ledger_is_an_empty_report() {
        let dir = tempfile::tempdir().expect("tempdir");
        let args = parse(&["--format", "json"]).expect("parse");
        let station = Station::with_config(
            crate::station::Options {
                data_dir: Some(dir.path().to_path_buf()),
                ..Default::default()
            },
            station_config::StationConfig::default(),
        );
        let found = report(&args, &station).expect("report");
        assert_eq!(
            found.missing_ledger,
            Some(crate::ledger::ledger_path(dir.path()))
        );
        let shown = crate::output::render(&crate::output::Output::Report(found), false);
        assert_eq!(shown.expect("rendered").trim(), "[]");
        assert!(
            !crate::ledger::ledger_path(dir.path()).exists(),
            "report creates nothing"
        );
    }

    #[test]
    fn lock_and_management_filters_parse() {
        let filter = parse(&["--find-my", "on", "--supervised", "--organization", "Acme"])
            .expect("arguments")
            .filter()
            .expect("filter");
        assert_eq!(filter.find_my, Some(true));
        assert!(filter.supervised_only);
        assert_eq!(filter.organization.as_deref(), Some("Acme"));
        let off = parse(&["--find-my", "off"]).expect("arguments");
        assert_eq!(off.filter().expect("filter").find_my, Some(false));
        let none = parse(&[]).expect("arguments").filter().expect("filter");
        assert_eq!((none.find_my, none.supervised_only), (None, false));
        let error = parse(&["--find-my", "maybe"]).expect_err("refused");
        assert!(error.contains("expected on or off"), "{error}");
    }
}
