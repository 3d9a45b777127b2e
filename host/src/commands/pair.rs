//! `station pair` / `station unpair`.

use std::time::Duration;

use crate::error::StationError;
use crate::output::Output;
use crate::station::Station;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PairOutcome {
    /// A new pairing was made (and its record stored).
    Paired,
    /// The stored record still opens a session.
    AlreadyPaired,
}

pub async fn pair(station: &Station, udid: &str, wait: Duration) -> Result<Output, StationError> {
    let bench = station.bench()?;
    let device = bench.transport.find(udid).await?;
    if let Some(record) = bench.pair_record(&device.udid).await? {
        match bench.session_with(&device, record).await {
            Ok(session) => {
                session.close().await;
                return Ok(paired(udid, PairOutcome::AlreadyPaired));
            }
            // The phone forgot us (erased): pair again below.
            Err(StationError::PairRecordStale { .. }) => {
                tracing::info!(udid, "stored pair record is stale; pairing again");
            }
            Err(e) => return Err(e),
        }
    }
    let record = bench.pair(&device, wait).await?;
    // Prove the new record works before saying so.
    bench.session_with(&device, record).await?.close().await;
    Ok(paired(udid, PairOutcome::Paired))
}

fn paired(udid: &str, outcome: PairOutcome) -> Output {
    Output::Paired {
        udid: udid.to_string(),
        outcome,
    }
}

pub async fn unpair(station: &Station, udid: &str) -> Result<Output, StationError> {
    let bench = station.bench()?;
    let device = bench.transport.find(udid).await?;
    Ok(Output::Unpaired {
        udid: udid.to_string(),
        existed: bench.unpair(&device).await?,
    })
}
