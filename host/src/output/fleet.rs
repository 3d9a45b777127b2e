//! `station fleet status` and `station fleet migrate` as text.

use super::aligned_table;
use crate::commands::fleet::{FleetMigrated, FleetStatus};

/// `3m12s ago`, `2h05m ago`, `1d04h ago`.
fn ago(secs: i64) -> String {
    let secs = secs.max(0);
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m{:02}s ago", secs / 60, secs % 60),
        3600..86_400 => format!("{}h{:02}m ago", secs / 3600, (secs % 3600) / 60),
        _ => format!("{}d{:02}h ago", secs / 86_400, (secs % 86_400) / 3600),
    }
}

pub fn status(s: &FleetStatus) -> String {
    let mut out = format!(
        "{} (schema version {}): {} station(s)\n",
        s.database,
        s.schema_version,
        s.stations.len()
    );
    if s.stations.is_empty() {
        out.push_str("No station has shipped yet.\n");
        return out;
    }
    let rows: Vec<[String; 5]> = s
        .stations
        .iter()
        .map(|st| {
            [
                st.station_id.clone(),
                format!("{} ({})", st.last_seen, ago(st.seen_secs_ago)),
                st.outbox_backlog.to_string(),
                st.attempts.to_string(),
                st.last_error.clone().unwrap_or_else(|| "—".into()),
            ]
        })
        .collect();
    out.push_str(&aligned_table(
        [
            "STATION",
            "LAST SEEN (UTC)",
            "BACKLOG",
            "SHIPPED",
            "LAST ERROR",
        ],
        &rows,
    ));
    out
}

pub fn migrated(m: &FleetMigrated) -> String {
    if m.from == m.to {
        format!("{}: schema version {} is current\n", m.database, m.to)
    } else {
        format!(
            "{}: schema migrated from version {} to {}\n",
            m.database, m.from, m.to
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_at_a_glance() {
        assert_eq!(ago(5), "5s ago");
        assert_eq!(ago(192), "3m12s ago");
        assert_eq!(ago(7500), "2h05m ago");
        assert_eq!(ago(100_800), "1d04h ago");
        assert_eq!(ago(-3), "0s ago");
    }
}
