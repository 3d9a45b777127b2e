//! Timestamps as the ledger stores them: UTC RFC 3339 with exactly three fractional digits
//! and a `Z`, so that text order is time order and SQL can compare and index them.

use std::time::SystemTime;

use time::format_description::FormatItem;
use time::macros::format_description;
use time::{Duration, OffsetDateTime, UtcOffset};

use super::LedgerError;

const STAMP: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

/// `2026-11-27T14:03:12.345Z`.
pub fn format(at: OffsetDateTime) -> Result<String, LedgerError> {
    at.to_offset(UtcOffset::UTC)
        .format(STAMP)
        .map_err(|e| LedgerError::Timestamp {
            reason: e.to_string(),
        })
}

pub fn format_system(at: SystemTime) -> Result<String, LedgerError> {
    format(OffsetDateTime::from(at))
}

/// The smallest stored stamp strictly after every instant up to `at` (stamps keep
/// milliseconds only): turns an inclusive upper bound into an exclusive one.
pub fn after_millisecond(at: OffsetDateTime) -> OffsetDateTime {
    let truncated = at
        .replace_nanosecond(u32::from(at.millisecond()) * 1_000_000)
        .unwrap_or(at);
    truncated + Duration::milliseconds(1)
}

/// SQL for the milliseconds between two stamp columns (NULL when either is NULL).
pub fn sql_millis_between(from: &str, to: &str) -> String {
    format!("CAST(ROUND((julianday({to}) - julianday({from})) * 86400000.0) AS INTEGER)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn stamps_are_utc_with_milliseconds_and_sort_as_text() {
        let a = datetime!(2026-11-27 14:03:12.345678 +01:00);
        assert_eq!(format(a).ok().as_deref(), Some("2026-11-27T13:03:12.345Z"));
        let b = datetime!(2026-11-27 13:03:12.4 UTC);
        let (Ok(a), Ok(b)) = (format(a), format(b)) else {
            panic!("format failed");
        };
        assert!(a < b);
    }

    #[test]
    fn exclusive_bound_is_the_next_millisecond() {
        let at = datetime!(2026-11-27 13:03:12.345678 UTC);
        assert_eq!(
            after_millisecond(at),
            datetime!(2026-11-27 13:03:12.346 UTC)
        );
    }
}
