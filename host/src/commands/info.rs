//! `station info`: lockdown values through a paired TLS session, like `ideviceinfo`.

use std::time::Duration;

use crate::error::StationError;
use crate::output::Output;
use crate::station::Station;

pub async fn values(
    station: &Station,
    udid: &str,
    domain: Option<&str>,
    key: Option<&str>,
    trust_wait: Duration,
) -> Result<Output, StationError> {
    let bench = station.bench()?;
    let device = bench.transport.find(udid).await?;
    let mut session = bench.session_or_pair(&device, trust_wait).await?;
    let value = session
        .get_value(domain, key)
        .await
        .map_err(|e| StationError::from_lockdown(&device.udid, e));
    session.close().await;
    value.map(Output::Values)
}

/// `--summary`: the phone as `station devices` lists it, with its lock and management
/// state; pairs first (waiting up to `trust_wait` for Trust) when no record exists, as the
/// raw `info` does, since most of the state needs a session.
pub async fn summary(
    station: &Station,
    udid: &str,
    trust_wait: Duration,
) -> Result<Output, StationError> {
    let bench = station.bench()?;
    let slots = station.slots(&bench.transport)?;
    let device = bench.transport.find(udid).await?;
    if bench.pair_record(&device.udid).await?.is_none() {
        bench.pair(&device, trust_wait).await?;
    }
    let row = crate::commands::devices::identify(&bench, &slots, &device).await;
    Ok(Output::Summary(Box::new(row)))
}
