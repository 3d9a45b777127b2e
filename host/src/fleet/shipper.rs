//! The shipper: a background task of `station run` that moves finished attempts from the
//! local ledger's outbox to the fleet database, in the order they finished. It never holds
//! up the line: phones commit to the local ledger and go on; the shipper reads what they
//! queued. While the database is unreachable it retries with a capped exponential backoff;
//! each success removes what the database committed from the outbox.

use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::Client;

use super::{connect, query, schema, timed, FleetError, Settings, QUERY_TIMEOUT};
use crate::ledger::{AttemptRecord, Ledger};

/// Attempts per transaction: one round trip for many phones after an outage.
pub const BATCH: usize = 200;
/// How often an idle shipper looks at the outbox (a commit does not wake it).
const IDLE_POLL: Duration = Duration::from_millis(500);
/// How often the station writes its heartbeat while nothing is shipped.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(10);
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The running shipper of a `station run`.
pub struct Shipper {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// Starts shipping `ledger`'s outbox as `settings` say.
pub fn spawn(settings: Settings, ledger: Ledger) -> Shipper {
    let (stop, stopping) = watch::channel(false);
    let task = tokio::spawn(run(settings, ledger, stopping));
    Shipper { stop, task }
}

impl Shipper {
    /// Asks the shipper to send what is left and stop; gives it up to `drain` (what it
    /// could not send stays in the outbox for the next run).
    pub async fn stop(self, drain: Duration) {
        let _ = self.stop.send(true);
        let mut task = self.task;
        if tokio::time::timeout(drain, &mut task).await.is_err() {
            task.abort();
            tracing::warn!(
                "the fleet shipper did not finish in {}s; what is left ships on the next start",
                drain.as_secs()
            );
        }
    }
}

/// Doubling waits from [`FIRST_BACKOFF`] up to [`MAX_BACKOFF`].
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: FIRST_BACKOFF,
        }
    }
}

impl Backoff {
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(MAX_BACKOFF);
        wait
    }

    pub fn reset(&mut self) {
        self.next = FIRST_BACKOFF;
    }
}

/// What the shipper keeps between rounds.
struct State {
    client: Option<Client>,
    last_error: Option<String>,
    last_heartbeat: Option<Instant>,
}

async fn run(settings: Settings, ledger: Ledger, mut stopping: watch::Receiver<bool>) {
    tracing::info!(
        database = settings.target.shown(),
        station_id = settings.station_id,
        "shipping finished attempts to the fleet database"
    );
    let mut state = State {
        client: None,
        last_error: None,
        last_heartbeat: None,
    };
    let mut backoff = Backoff::default();
    loop {
        let stop = *stopping.borrow();
        let wait = match round(&settings, &ledger, &mut state).await {
            Ok(0) if stop => break,
            Ok(0) => {
                backoff.reset();
                IDLE_POLL
            }
            Ok(_) => {
                backoff.reset();
                continue;
            }
            Err(e) => {
                tracing::warn!("fleet database: {e}; the attempts wait in the outbox");
                state.last_error = Some(format!("{}: {e}", now_stamp()));
                state.client = None;
                if stop || matches!(e, FleetError::Ledger(crate::ledger::LedgerError::Closed)) {
                    break;
                }
                backoff.next_wait()
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            changed = stopping.changed() => {
                // The run that owned this shipper is gone without stopping it: so is it.
                if changed.is_err() {
                    break;
                }
            }
        }
    }
}

/// One round: connect if needed, ship one batch, write the heartbeat when due. Returns how
/// many attempts it shipped.
async fn round(
    settings: &Settings,
    ledger: &Ledger,
    state: &mut State,
) -> Result<usize, FleetError> {
    let client = match &mut state.client {
        Some(client) if !client.is_closed() => client,
        slot => {
            let mut client = connect(&settings.target).await?;
            let migrated = schema::migrate(&mut client).await?;
            if migrated.from != migrated.to {
                tracing::info!(
                    from = migrated.from,
                    to = migrated.to,
                    "fleet database migrated"
                );
            }
            slot.insert(client)
        }
    };
    let pending = ledger.outbox_pending(BATCH).await?;
    let shipped = pending.records.len();
    let mut backlog = pending.backlog;
    if shipped > 0 {
        let inserted = insert(client, &settings.station_id, &pending.records).await?;
        if inserted < shipped {
            // Shipped before, and the station stopped before it heard so; unless the
            // rows there are another ledger's under the same name.
            if let Err(e) = same_attempts(client, &settings.station_id, &pending.records).await {
                let said = format!("{}: {e}", now_stamp());
                // Said in the heartbeat too, for `station fleet status`.
                let _ = heartbeat(client, &settings.station_id, backlog, false, Some(&said)).await;
                return Err(e);
            }
            tracing::info!(
                already_there = shipped - inserted,
                "the fleet database already had some attempts"
            );
        }
        backlog = ledger.outbox_shipped(pending.up_to).await?;
    }
    let due = state
        .last_heartbeat
        .is_none_or(|at| at.elapsed() >= HEARTBEAT_EVERY);
    if shipped > 0 || due {
        heartbeat(
            client,
            &settings.station_id,
            backlog,
            shipped > 0,
            state.last_error.as_deref(),
        )
        .await?;
        state.last_heartbeat = Some(Instant::now());
    }
    Ok(shipped)
}

fn now_stamp() -> String {
    crate::ledger::format_stamp(time::OffsetDateTime::now_utc()).unwrap_or_default()
}

/// Checks that the rows the database kept for this batch's ids are these attempts (same
/// phone, same start), not another ledger's that reused the station's name.
async fn same_attempts(
    client: &Client,
    station_id: &str,
    records: &[AttemptRecord],
) -> Result<(), FleetError> {
    let ids: Vec<i64> = records.iter().map(|r| r.attempt_id.get()).collect();
    let rows = timed("checking shipped attempts", QUERY_TIMEOUT, async {
        client
            .query(
                "SELECT attempt_id, udid, started_at FROM station_attempts \
                 WHERE station_id = $1 AND attempt_id = ANY($2)",
                &[&station_id, &ids],
            )
            .await
            .map_err(query("check shipped attempts"))
    })
    .await?;
    for row in rows {
        let (id, udid, started_at): (i64, String, String) = (row.get(0), row.get(1), row.get(2));
        let ours = records.iter().find(|r| r.attempt_id.get() == id);
        if ours.is_some_and(|r| r.udid != udid || r.started_at != started_at) {
            return Err(FleetError::StationIdTaken {
                station_id: station_id.to_string(),
                attempt_id: id,
            });
        }
    }
    Ok(())
}

/// Inserts a batch in one statement (one transaction); an attempt the database has
/// already is left as it is. Returns how many were new.
async fn insert(
    client: &Client,
    station_id: &str,
    records: &[AttemptRecord],
) -> Result<usize, FleetError> {
    let mut ids = Vec::with_capacity(records.len());
    let mut runs = Vec::with_capacity(records.len());
    let mut udids = Vec::with_capacity(records.len());
    let mut serials = Vec::with_capacity(records.len());
    let mut started = Vec::with_capacity(records.len());
    let mut finished = Vec::with_capacity(records.len());
    let mut outcomes = Vec::with_capacity(records.len());
    let mut locked = Vec::with_capacity(records.len());
    let mut find_my = Vec::with_capacity(records.len());
    let mut supervised = Vec::with_capacity(records.len());
    let mut organizations = Vec::with_capacity(records.len());
    let mut documents = Vec::with_capacity(records.len());
    for record in records {
        // The fleet's name for the station: reports across stations tell them apart by it.
        let mut record = record.clone();
        record.station_id = station_id.to_string();
        ids.push(record.attempt_id.get());
        runs.push(record.run_id.clone());
        udids.push(record.udid.clone());
        serials.push(record.serial.clone());
        started.push(record.started_at.clone());
        finished.push(record.finished_at.clone());
        outcomes.push(record.outcome.name());
        locked.push(record.activation_locked);
        find_my.push(record.management.find_my);
        supervised.push(record.management.supervised);
        organizations.push(record.management.organization.clone());
        documents.push(
            serde_json::to_string(&record).map_err(|e| FleetError::Corrupt {
                what: "attempt",
                reason: e.to_string(),
            })?,
        );
    }
    timed("shipping attempts", QUERY_TIMEOUT, async {
        let inserted = client
            .execute(
                "INSERT INTO station_attempts (station_id, attempt_id, run_id, udid, serial, \
                 started_at, finished_at, outcome, activation_locked, find_my, supervised, \
                 organization, record) \
                 SELECT $1, a, r, u, s, st, f, o, l, fm, sv, org, doc::jsonb \
                 FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], \
                      $7::text[], $8::text[], $9::boolean[], $10::boolean[], $11::boolean[], \
                      $12::text[], $13::text[]) \
                      AS t(a, r, u, s, st, f, o, l, fm, sv, org, doc) \
                 ON CONFLICT (station_id, attempt_id) DO NOTHING",
                &[
                    &station_id,
                    &ids,
                    &runs,
                    &udids,
                    &serials,
                    &started,
                    &finished,
                    &outcomes,
                    &locked,
                    &find_my,
                    &supervised,
                    &organizations,
                    &documents,
                ],
            )
            .await
            .map_err(query("ship attempts"))?;
        Ok(usize::try_from(inserted).unwrap_or(usize::MAX))
    })
    .await
}

/// The station's row in `station_heartbeats`: seen now, with its backlog and last error.
async fn heartbeat(
    client: &Client,
    station_id: &str,
    backlog: u64,
    shipped: bool,
    last_error: Option<&str>,
) -> Result<(), FleetError> {
    let backlog = i64::try_from(backlog).unwrap_or(i64::MAX);
    timed("writing the heartbeat", QUERY_TIMEOUT, async {
        client
            .execute(
                "INSERT INTO station_heartbeats (station_id, last_seen, outbox_backlog, \
                 last_shipped_at, last_error, version) \
                 VALUES ($1, now(), $2, CASE WHEN $3 THEN now() END, $4, $5) \
                 ON CONFLICT (station_id) DO UPDATE SET last_seen = EXCLUDED.last_seen, \
                 outbox_backlog = EXCLUDED.outbox_backlog, \
                 last_shipped_at = COALESCE(EXCLUDED.last_shipped_at, station_heartbeats.last_shipped_at), \
                 last_error = COALESCE(EXCLUDED.last_error, station_heartbeats.last_error), \
                 version = EXCLUDED.version",
                &[
                    &station_id,
                    &backlog,
                    &shipped,
                    &last_error,
                    &env!("CARGO_PKG_VERSION"),
                ],
            )
            .await
            .map_err(query("heartbeat"))?;
        Ok(())
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_up_to_its_cap_and_resets() {
        let mut backoff = Backoff::default();
        let waits: Vec<u64> = (0..9)
            .map(|_| backoff.next_wait().as_millis() as u64)
            .collect();
        assert_eq!(
            waits,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        backoff.reset();
        assert_eq!(backoff.next_wait(), FIRST_BACKOFF);
    }
}
