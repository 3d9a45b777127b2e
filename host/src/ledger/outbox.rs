//! The fleet outbox: finished attempts waiting for the shared PostgreSQL database
//! (docs/fleet.md). `store::finish` and `store::recover` queue an attempt in the transaction
//! that gives it its outcome; the shipper reads the queue in order and removes what the
//! fleet database has committed. Between the two, a crash leaves the attempt queued, and
//! the database ignores an attempt it already has, so nothing is lost or counted twice.

use rusqlite::Connection;

use super::query::{attempts_by_id, AttemptRecord};
use super::{sqlite, LedgerError};

/// The head of the outbox: records in the order they were queued, and the last queue
/// position they cover.
#[derive(Debug, Clone, Default)]
pub struct Pending {
    pub records: Vec<AttemptRecord>,
    /// Hand this to `Ledger::outbox_shipped` once the records are in the fleet database.
    pub up_to: i64,
    /// Everything waiting, these records included.
    pub backlog: u64,
}

pub fn pending(conn: &Connection, limit: usize) -> Result<Pending, LedgerError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let queued: Vec<(i64, i64)> = conn
        .prepare_cached("SELECT seq, attempt_id FROM outbox ORDER BY seq LIMIT ?1")
        .and_then(|mut s| {
            s.query_map([limit], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect()
        })
        .map_err(sqlite("read the outbox"))?;
    let ids: Vec<i64> = queued.iter().map(|(_, id)| *id).collect();
    Ok(Pending {
        records: attempts_by_id(conn, &ids)?,
        up_to: queued.last().map_or(0, |(seq, _)| *seq),
        backlog: backlog(conn)?,
    })
}

pub fn shipped(conn: &Connection, up_to: i64) -> Result<u64, LedgerError> {
    conn.execute("DELETE FROM outbox WHERE seq <= ?1", [up_to])
        .map_err(sqlite("empty the outbox"))?;
    backlog(conn)
}

pub fn backlog(conn: &Connection) -> Result<u64, LedgerError> {
    let n: i64 = conn
        .query_row("SELECT COUNT(*) FROM outbox", [], |row| row.get(0))
        .map_err(sqlite("count the outbox"))?;
    Ok(u64::try_from(n).unwrap_or(0))
}
