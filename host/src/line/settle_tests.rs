//! The line's memory over a long service run (issue 13): a phone done with and unplugged is
//! moved out of the full per-phone table into a compact record, so the table holds only
//! the phones at work or plugged in however many came and went; the summary, "already done"
//! on a replug and resuming an interrupted phone work as before.

use std::time::Duration;

use station_protocol::usbmux::DeviceInfo;

use super::events::PhoneRef;
use super::{interrupted_report, Cut, PhoneState, Phones, Status};
use crate::activation::{Outcome, Step};

fn device(i: usize) -> DeviceInfo {
    DeviceInfo {
        device_id: u32::try_from(i).expect("small") + 1,
        udid: format!("00008030-{i:016X}"),
        product_id: 0x12a8,
        location_id: 0x0001_0000 + u32::try_from(i).expect("small"),
        connection_speed: 480_000_000,
        connection_type: "USB".to_string(),
    }
}

fn phone_ref(device: &DeviceInfo) -> PhoneRef {
    PhoneRef {
        udid: device.udid.clone(),
        slot: format!("0x{:08x}", device.location_id),
    }
}

/// A phone as the line leaves it after its attempt ended `outcome`, still attached.
fn worked(i: usize, outcome: Outcome) -> PhoneState {
    let device = device(i);
    let mut report = interrupted_report(&device, Cut::Unplugged, Step::Verify, Duration::ZERO);
    report.outcome = outcome;
    report.message = format!("phone {i} ended {outcome:?}");
    report.serial = Some(format!("F2L{i:09}"));
    let status = if outcome == Outcome::Interrupted {
        Status::Unplugged {
            since: tokio::time::Instant::now(),
        }
    } else {
        Status::Done(outcome)
    };
    PhoneState {
        phone: phone_ref(&device),
        device,
        attached: true,
        plugs: 1,
        status,
        attempts: 1,
        serial: report.serial.clone(),
        last: Some(report),
    }
}

fn outcome_of(i: usize) -> Outcome {
    match i % 10 {
        3 => Outcome::LockedNoCode,
        7 => Outcome::Interrupted,
        _ => Outcome::Activated,
    }
}

#[tokio::test]
async fn phones_that_came_and_went_leave_only_a_compact_record() {
    let mut phones = Phones::default();
    const N: usize = 1000;
    let mut before = None;
    for i in 0..N {
        let state = worked(i, outcome_of(i));
        phones.insert(state.device.udid.clone(), state);
        if i == N - 1 {
            // Every phone in full: what the summary said before settling existed.
            before = Some(phones.tally());
        }
        // Unplugged once done (or mid-way, for the interrupted ones).
        if let Some(state) = phones.get_mut(&device(i).udid) {
            state.attached = false;
        }
        phones.settle(false);
        assert!(
            phones.live.is_empty(),
            "{} phones kept in full after {} came and went",
            phones.live.len(),
            i + 1
        );
    }
    assert_eq!(phones.count(), N);
    assert_eq!(phones.settled.len(), N);
    // Only the ones needing attention keep their slot, serial and message.
    let with_details = phones
        .settled
        .values()
        .filter(|s| s.attention.is_some())
        .count();
    assert_eq!(with_details, N / 10 * 2);
    let (counts, attention) = phones.tally();
    let (counts_before, attention_before) = before.expect("tallied");
    assert_eq!(counts.get("activated"), Some(&(N / 10 * 8)));
    assert_eq!(counts.get("locked_no_code"), Some(&(N / 10)));
    assert_eq!(counts.get("interrupted"), Some(&(N / 10)));
    // The last phone was tallied in full before: the same counts but for it.
    assert_eq!(
        counts.values().sum::<usize>(),
        counts_before.values().sum::<usize>()
    );
    assert_eq!(attention.len(), N / 10 * 2);
    assert_eq!(attention_before.len(), attention.len());
    for (a, b) in attention.iter().zip(&attention_before) {
        assert_eq!(a.phone, b.phone);
        assert_eq!(a.serial, b.serial);
        assert_eq!(a.outcome, b.outcome);
        assert_eq!(a.message, b.message);
    }
}

#[tokio::test]
async fn a_settled_phone_comes_back_as_it_was() {
    let mut phones = Phones::default();
    for i in 0..3 {
        let mut state = worked(
            i,
            [
                Outcome::Activated,
                Outcome::Interrupted,
                Outcome::CodeRejected,
            ][i],
        );
        state.attached = false;
        phones.insert(state.device.udid.clone(), state);
    }
    // With `--once` a phone pulled out mid-way stays (its replug grace is timed there).
    phones.settle(true);
    assert_eq!(phones.live.len(), 1);
    assert!(matches!(
        phones.live.values().next().map(|p| &p.status),
        Some(Status::Unplugged { .. })
    ));
    phones.settle(false);
    assert!(phones.live.is_empty());

    // Done well: back as done, so the line says "already done" instead of working on it.
    let d0 = device(0);
    phones.restore(&d0, phone_ref(&d0));
    let state = phones.get(&d0.udid).expect("restored");
    assert!(matches!(state.status, Status::Done(Outcome::Activated)));
    assert!(!state.attached);
    // Pulled out mid-way: back as unplugged, so it is resumed.
    let d1 = device(1);
    phones.restore(&d1, phone_ref(&d1));
    assert!(matches!(
        phones.get(&d1.udid).map(|p| &p.status),
        Some(Status::Unplugged { .. })
    ));
    // Needing attention: its serial and message come back for the summary.
    let d2 = device(2);
    phones.restore(&d2, phone_ref(&d2));
    let state = phones.get(&d2.udid).expect("restored");
    assert!(matches!(state.status, Status::Done(Outcome::CodeRejected)));
    assert_eq!(state.serial.as_deref(), Some("F2L000000002"));
    let (_, attention) = phones.tally();
    let a = attention
        .iter()
        .find(|a| a.phone.udid == d2.udid)
        .expect("listed");
    assert_eq!(a.message, "phone 2 ended CodeRejected");
    assert!(phones.settled.is_empty());
    assert_eq!(phones.count(), 3);
    // Restoring a phone that is not settled changes nothing.
    phones.restore(&d2, phone_ref(&d2));
    assert_eq!(phones.count(), 3);
}
