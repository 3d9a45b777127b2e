//! Activates one phone of a running `station-sim serve`, the way the station does, using the
//! codes its ready file lists (test data), so real tools can be pointed at the result:
//!
//! ```sh
//! station-sim serve --devices 4 --socket /tmp/bench.sock --ready /tmp/bench.json &
//! cargo run -p station-sim --example activate -- /tmp/bench.json [UDID]
//! USBMUXD_SOCKET_ADDRESS=UNIX:/tmp/bench.sock ideviceinfo -u UDID -k ActivationState
//! ```
//!
//! Without a UDID the first MDM-locked unactivated phone is taken, else the first
//! unactivated one.

#[path = "../tests/common/flow.rs"]
mod flow;

use std::path::PathBuf;
use std::process::ExitCode;

use flow::{BoxError, Driver};
use plist::Value;
use station_protocol::activation::{
    continue_form_submission, lock_form_submission, ActivationResponse, FormEncoding,
};
use station_sim::ReadyInfo;

/// Retries of a 5xx answer.
const RETRIES: usize = 3;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("activate: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), BoxError> {
    let mut args = std::env::args_os().skip(1);
    let ready = PathBuf::from(args.next().ok_or("usage: activate READY_FILE [UDID]")?);
    let wanted = args.next().map(|u| u.to_string_lossy().into_owned());
    let info = ReadyInfo::read(&ready)?;
    let device = info
        .devices
        .iter()
        .find(|d| wanted.as_deref() == Some(d.udid.as_str()))
        .or_else(|| {
            wanted.is_none().then(|| {
                let unactivated = || {
                    info.devices
                        .iter()
                        .filter(|d| d.activation_state == "Unactivated")
                };
                unactivated()
                    .find(|d| d.lock == "mdm")
                    .or_else(|| unactivated().next())
            })?
        })
        .ok_or("no such phone on the bench")?;
    println!("{} ({}, lock {})", device.udid, device.serial, device.lock);

    let mut d = Driver::connect(&info.socket, &device.udid, &info.activation_url).await?;
    if d.activation_state().await? != "Unactivated" {
        println!("already activated");
        return Ok(());
    }
    let mut activation_info = d.activation_info().await?;
    let mut answer = d
        .request_activation(&activation_info, FormEncoding::UrlEncoded)
        .await?;
    // Stale codes first, as an MDM may list them: the good one must still get its turn.
    let mut codes = device
        .stale_codes
        .iter()
        .chain(&device.codes)
        .cloned()
        .collect::<Vec<_>>()
        .into_iter();
    let mut retries = 0;
    loop {
        match answer.classify() {
            ActivationResponse::Record {
                raw_body, headers, ..
            } => {
                d.hand_over(raw_body, headers).await??;
                d.set_value("ActivationStateAcknowledged", Value::Boolean(true))
                    .await?;
                println!(
                    "activated: lockdown says {:?}",
                    d.get_value("ActivationState").await?
                );
                return Ok(());
            }
            ActivationResponse::ContinueForm(page) => {
                println!("a page of hidden fields: posting it back");
                let sub = continue_form_submission(&page);
                answer = d.post(&sub.to_request(FormEncoding::UrlEncoded)?).await?;
            }
            // An alert alone: that code was wrong, and the exchange starts over.
            ActivationResponse::AuthAlert { page, .. } if page.fields.is_empty() => {
                println!("code rejected: starting over");
                activation_info = d.activation_info().await?;
                answer = d
                    .request_activation(&activation_info, FormEncoding::UrlEncoded)
                    .await?;
            }
            ActivationResponse::LockForm(page) | ActivationResponse::AuthAlert { page, .. } => {
                let Some(code) = codes.next() else {
                    return Err("Activation Lock: no (more) codes to try".into());
                };
                println!("lock form: trying a code");
                let sub = lock_form_submission(&page, "", &code)?;
                answer = d.post(&sub.to_request(FormEncoding::UrlEncoded)?).await?;
            }
            ActivationResponse::ServerError { status } if retries < RETRIES => {
                retries += 1;
                println!("server error {status}, retrying");
                answer = d
                    .request_activation(&activation_info, FormEncoding::UrlEncoded)
                    .await?;
            }
            other => return Err(format!("activation server answered {other:?}").into()),
        }
    }
}
