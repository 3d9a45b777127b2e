//! Reading the fleet database: attempts across stations for `station report --fleet`
//! (the same filters, rows and formats as the local report), and each station's heartbeat
//! for `station fleet status`.

use serde::Serialize;
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use super::{query, timed, FleetError, QUERY_TIMEOUT};
use crate::ledger::{format_stamp, keep_latest_per_phone, AttemptRecord, Filter, Status};
use crate::output::wire_name;

type Param = Box<dyn ToSql + Sync + Send>;

/// The attempts matching `filter` (and `station`, when given), oldest first like the local
/// report; attempts of one instant are ordered by station, then attempt.
pub async fn attempts(
    client: &Client,
    filter: &Filter,
    station: Option<&str>,
) -> Result<Vec<AttemptRecord>, FleetError> {
    let mut clauses: Vec<String> = Vec::new();
    let mut params: Vec<Param> = Vec::new();
    let bind = |clause: &str, value: Param, params: &mut Vec<Param>| {
        params.push(value);
        clause.replace('?', &format!("${}", params.len()))
    };
    if let Some(since) = filter.since {
        clauses.push(bind(
            "started_at >= ?",
            Box::new(format_stamp(since)?),
            &mut params,
        ));
    }
    if let Some(before) = filter.before {
        clauses.push(bind(
            "started_at < ?",
            Box::new(format_stamp(before)?),
            &mut params,
        ));
    }
    if let Some(run_id) = &filter.run_id {
        clauses.push(bind("run_id = ?", Box::new(run_id.clone()), &mut params));
    }
    if let Some(udid) = &filter.udid {
        clauses.push(bind("udid = ?", Box::new(udid.clone()), &mut params));
    }
    if let Some(station) = station {
        clauses.push(bind(
            "station_id = ?",
            Box::new(station.to_string()),
            &mut params,
        ));
    }
    if filter.locked_only {
        clauses.push("activation_locked".to_string());
    }
    if let Some(find_my) = filter.find_my {
        clauses.push(bind("find_my = ?", Box::new(find_my), &mut params));
    }
    if filter.supervised_only {
        clauses.push("supervised".to_string());
    }
    if let Some(organization) = &filter.organization {
        clauses.push(bind(
            "lower(organization) = lower(?)",
            Box::new(organization.clone()),
            &mut params,
        ));
    }
    if !filter.statuses.is_empty() {
        let any: Vec<String> = filter
            .statuses
            .iter()
            .map(|status| match status {
                // Only finished attempts are shipped.
                Status::InProgress => "false".to_string(),
                Status::Finished(o) => bind("outcome = ?", Box::new(wire_name(o)), &mut params),
            })
            .collect();
        clauses.push(format!("({})", any.join(" OR ")));
    }
    let filter_sql = if clauses.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", clauses.join(" AND "))
    };
    let sql = format!(
        "SELECT record::text FROM station_attempts {filter_sql} \
         ORDER BY started_at, station_id, attempt_id"
    );
    let rows = timed("reading attempts", QUERY_TIMEOUT, async {
        let refs: Vec<&(dyn ToSql + Sync)> = params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
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
