//! Reading the fleet database: attempts across stations for `station report --fleet`
//! (the same filters, rows and formats as the local report), and each station's heartbeat
//! for `station fleet status`.

use serde::Serialize;
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use super::{query, timed, FleetError, QUERY_TIMEOUT};
use crate::ledger::{keep_latest_per_phone, AttemptRecord, Dialect, Filter, FilterValue};

/// The attempts matching `filter` (and `station`, when given), oldest first like the local
/// report; attempts of one instant are ordered by station, then attempt.
pub async fn attempts(
    client: &Client,
    filter: &Filter,
    station: Option<&str>,
) -> Result<Vec<AttemptRecord>, FleetError> {
    let mut filter_sql = filter.to_sql(Dialect::Postgres)?;
    if let Some(station) = station {
        filter_sql.push("station_id = ?", FilterValue::Text(station.to_string()));
    }
    let sql = format!(
        "SELECT record::text FROM station_attempts {} \
         ORDER BY started_at, station_id, attempt_id",
        filter_sql.where_sql()
    );
    let rows = timed("reading attempts", QUERY_TIMEOUT, async {
        let refs: Vec<&(dyn ToSql + Sync)> = filter_sql
            .params
            .iter()
            .map(|value| match value {
                FilterValue::Text(text) => text as &(dyn ToSql + Sync),
                FilterValue::Bool(flag) => flag,
            })
            .collect();
        client
            .query(&sql, &refs)
            .await
            .map_err(query("read attempts"))
    })
    .await?;
    let mut records = rows
        .iter()
        .map(|row| {
            let text: String = row.get(0);
            serde_json::from_str::<AttemptRecord>(&text).map_err(|e| FleetError::Corrupt {
                what: "station_attempts.record",
                reason: e.to_string(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if filter.latest_per_phone {
        keep_latest_per_phone(&mut records);
    }
    Ok(records)
}

/// One station as its heartbeats tell it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StationStatus {
    pub station_id: String,
    /// The last heartbeat (UTC).
    pub last_seen: String,
    /// Seconds since, by the database's clock.
    pub seen_secs_ago: i64,
    /// Attempts waiting in its outbox when it last wrote.
    pub outbox_backlog: i64,
    pub last_shipped_at: Option<String>,
    pub attempts: i64,
    /// Its last failure to ship, with when it happened.
    pub last_error: Option<String>,
    pub version: String,
}

/// Every station that has written a heartbeat, by name.
pub async fn stations(client: &Client) -> Result<Vec<StationStatus>, FleetError> {
    const STAMP: &str = "'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'";
    let sql = format!(
        "SELECT h.station_id, to_char(h.last_seen AT TIME ZONE 'UTC', {STAMP}), \
         CAST(floor(extract(epoch FROM now() - h.last_seen)) AS bigint), h.outbox_backlog, \
         to_char(h.last_shipped_at AT TIME ZONE 'UTC', {STAMP}), \
         (SELECT count(*) FROM station_attempts a WHERE a.station_id = h.station_id), \
         h.last_error, h.version \
         FROM station_heartbeats h ORDER BY h.station_id"
    );
    let rows = timed("reading heartbeats", QUERY_TIMEOUT, async {
        client
            .query(&sql, &[])
            .await
            .map_err(query("read heartbeats"))
    })
    .await?;
    Ok(rows
        .iter()
        .map(|row| StationStatus {
            station_id: row.get(0),
            last_seen: row.get(1),
            seen_secs_ago: row.get(2),
            outbox_backlog: row.get(3),
            last_shipped_at: row.get(4),
            attempts: row.get(5),
            last_error: row.get(6),
            version: row.get(7),
        })
        .collect())
}
