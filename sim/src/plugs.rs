//! The phones' comings and goings on the bench, in one place: the world's plug schedule
//! (`plug_at_ms`, `unplug_at_ms`, `plug_periods`) and leaving once the host is done with a
//! phone (`leave_when_idle_ms`), both through the hub's plug and unplug (docs/world.md
//! "USB").

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::error::SimError;
use crate::hub::Hub;
use crate::phone::Phone;

/// Plugs in the phones plugged in at start, then starts one task per phone that walks its
/// schedule in order (a replug must not overtake the unplug before it) and one per phone
/// that leaves when idle. The world's times count from `started`.
pub(crate) fn start(
    hub: &Arc<Hub>,
    started: Instant,
    tasks: &mut JoinSet<()>,
) -> Result<(), SimError> {
    for phone in hub.phones() {
        let p = phone.profile();
        if p.plugged_at_start() {
            hub.plug(&p.udid)?;
        }
        if let Some(ms) = p.leave_when_idle_ms {
            tasks.spawn(leave_when_idle(
                hub.clone(),
                phone.clone(),
                Duration::from_millis(ms),
            ));
        }
        let schedule = p.plug_schedule();
        if schedule.is_empty() {
            continue;
        }
        let hub = hub.clone();
        let udid = p.udid.clone();
        tasks.spawn(async move {
            for (at, plug) in schedule {
                // A time past what the clock can hold never comes.
                let Some(when) = started.checked_add(Duration::from_millis(at)) else {
                    return;
                };
                tokio::time::sleep_until(when).await;
                let result = if plug {
                    hub.plug(&udid).map(|_| ())
                } else {
                    // A phone that left when idle is out already: nothing to do.
                    hub.unplug(&udid).map(|_| ())
                };
                if let Err(e) = result {
                    tracing::warn!(%udid, at_ms = at, plug, error = %e, "scheduled plug/unplug failed");
                }
            }
        });
    }
    Ok(())
}

/// `leave_when_idle_ms`: once the host has talked to the phone, it is pulled out (its plug
/// period ends early; a later one of `plug_periods` still plugs it back) whenever it has
/// been plugged in without any host connection open for `idle`, counted from the plug-in
/// or the last connection's close, whichever is later. So a phone the station is done
/// with leaves, as an operator unplugs it, while one still at work (a connection open)
/// or never looked at stays; one waiting for a retry stays as long as the pause is
/// shorter than `idle`.
pub(crate) async fn leave_when_idle(hub: Arc<Hub>, phone: Arc<Phone>, idle: Duration) {
    let udid = phone.udid();
    // Whether it is plugged in is the hub's; how the host uses it, the phone's.
    let mut plug_states = match hub.watch_plug_state(udid) {
        Ok(plug_states) => plug_states,
        Err(e) => {
            tracing::warn!(%udid, error = %e, "leaving when idle: not on this hub");
            return;
        }
    };
    let mut connections = phone.watch_connections();
    loop {
        // Marked seen before the check, so a change after it wakes the select below.
        let plug = *plug_states.borrow_and_update();
        let used = *connections.borrow_and_update();
        let idle_since = (plug.plugged_in && used.talked_to && used.open == 0)
            .then_some((plug.plug_ins, used.changes));
        let sleep = async {
            match idle_since {
                Some(_) => tokio::time::sleep(idle).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = sleep => {
                let Some((plug_ins, changes)) = idle_since else { continue };
                match hub.leave_if_idle(udid, plug_ins, changes) {
                    Ok(true) => tracing::info!(%udid, idle_ms = idle.as_millis(), "left the bench: no host connection for leave_when_idle_ms"),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(%udid, error = %e, "leaving when idle failed");
                        return;
                    }
                }
            }
            changed = plug_states.changed() => {
                // Closed: nothing about this phone changes any more.
                if changed.is_err() {
                    return;
                }
            }
            changed = connections.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::StateDir;
    use crate::world::{default_world, PlugPeriod};
    use station_protocol::usbmux::Event;

    /// Well above a scheduler hiccup, well below the tests' patience.
    const IDLE: Duration = Duration::from_millis(150);

    /// A hub of `world`'s phones (not plugged in yet) and the plug tasks running.
    fn bench(world: crate::World, dir: &std::path::Path) -> (Arc<Hub>, JoinSet<()>) {
        let state = StateDir::new(dir);
        let phones = world
            .resolve()
            .expect("world")
            .into_iter()
            .map(|p| Phone::new(p, &state, false).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()
            .expect("phones");
        let hub = Arc::new(Hub::new(phones));
        let mut tasks = JoinSet::new();
        start(&hub, Instant::now(), &mut tasks).expect("plug tasks");
        (hub, tasks)
    }

    fn one_phone(leave_ms: Option<u64>) -> crate::World {
        let mut world = default_world(1, 7);
        world.leave_when_idle_ms = leave_ms;
        world
    }

    /// Waits (at most 5 s) for the phone to be pulled out; how long it took.
    async fn left_after(hub: &Hub, udid: &str) -> Option<Duration> {
        let from = Instant::now();
        while from.elapsed() < Duration::from_secs(5) {
            if hub.device_id(udid).is_none() {
                return Some(from.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    }

    /// Plugged in at start, out at `unplug_at_ms`, back at `plug_at_ms` for good.
    fn out_then_back(unplug_at_ms: u64, plug_at_ms: u64) -> Vec<PlugPeriod> {
        vec![
            PlugPeriod {
                plug_at_ms: None,
                unplug_at_ms: Some(unplug_at_ms),
            },
            PlugPeriod {
                plug_at_ms: Some(plug_at_ms),
                unplug_at_ms: None,
            },
        ]
    }

    /// Waits (at most 5 s after `started`) for the phone to be plugged in again; when it
    /// was, counted from `started`.
    async fn plugged_back(hub: &Hub, udid: &str, started: Instant) -> Duration {
        while hub.device_id(udid).is_none() {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "never plugged back"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        started.elapsed()
    }

    #[tokio::test]
    async fn a_phone_idle_past_the_limit_leaves_and_one_talked_to_stays() {
        let dir = tempfile::tempdir().expect("dir");
        let (hub, _tasks) = bench(one_phone(Some(IDLE.as_millis() as u64)), dir.path());
        let phone = hub.phones()[0].clone();
        let (_, mut events) = hub.subscribe();
        let device_id = hub.device_id(phone.udid()).expect("plugged in at start");

        // Talked to for three times the limit: a connection open keeps it on the bench.
        let connection = phone.host_connection();
        tokio::time::sleep(IDLE * 3).await;
        assert_eq!(
            hub.device_id(phone.udid()),
            Some(device_id),
            "left while a host connection was open"
        );
        // A second connection closing while the first is open changes nothing either.
        drop(phone.host_connection());
        tokio::time::sleep(IDLE * 2).await;
        assert!(hub.device_id(phone.udid()).is_some());

        drop(connection);
        let took = left_after(&hub, phone.udid())
            .await
            .expect("left when idle");
        assert!(
            took >= IDLE,
            "left {took:?} after the last connection closed"
        );
        let use_now = phone.host_use();
        assert!(
            !use_now.attached && use_now.connections.open == 0 && use_now.connections.talked_to
        );
        // Listeners saw it go, as with any unplug.
        let mut detached = false;
        while let Ok(event) = events.try_recv() {
            detached |= event == Event::Detached { device_id };
        }
        assert!(detached, "no Detached for DeviceID {device_id}");
    }

    #[tokio::test]
    async fn a_phone_never_talked_to_stays() {
        let dir = tempfile::tempdir().expect("dir");
        let (hub, _tasks) = bench(one_phone(Some(IDLE.as_millis() as u64)), dir.path());
        let udid = hub.phones()[0].udid().to_string();
        tokio::time::sleep(IDLE * 4).await;
        assert!(
            hub.device_id(&udid).is_some(),
            "left without being talked to"
        );
        assert!(!hub.phones()[0].host_use().connections.talked_to);
    }

    #[tokio::test]
    async fn without_the_option_a_phone_stays() {
        let dir = tempfile::tempdir().expect("dir");
        let (hub, _tasks) = bench(one_phone(None), dir.path());
        let phone = hub.phones()[0].clone();
        drop(phone.host_connection());
        tokio::time::sleep(IDLE * 4).await;
        assert!(hub.device_id(phone.udid()).is_some());
    }

    /// A phone that left is plugged back by its next plug period and, talked to before,
    /// leaves again once idle from the replug on (the operator sees "already done" and pulls
    /// it); the scheduled unplug of the period it left early changes nothing.
    #[tokio::test]
    async fn a_replugged_phone_leaves_again_and_the_schedule_goes_on() {
        let dir = tempfile::tempdir().expect("dir");
        let mut world = one_phone(None);
        world.devices[0].leave_when_idle_ms = Some(IDLE.as_millis() as u64);
        world.devices[0].plug_periods = Some(out_then_back(400, 700));
        let started = Instant::now();
        let (hub, _tasks) = bench(world, dir.path());
        let phone = hub.phones()[0].clone();
        drop(phone.host_connection());
        // Leaves at about 150 ms, before its scheduled unplug at 400 ms.
        left_after(&hub, phone.udid())
            .await
            .expect("left when idle");
        assert!(started.elapsed() < Duration::from_millis(400));
        // Back at 700 ms with a new DeviceID, then out again about 150 ms later.
        let back_at = plugged_back(&hub, phone.udid(), started).await;
        assert!(back_at >= Duration::from_millis(700), "back at {back_at:?}");
        let took = left_after(&hub, phone.udid()).await.expect("left again");
        assert!(
            took + Duration::from_millis(20) >= IDLE,
            "left {took:?} after the replug"
        );
    }

    /// Whether it is plugged in comes from the hub, how it is used from the phone: a
    /// connection that closes while the schedule has the phone out starts no clock; the
    /// replug does, so the phone stays for the whole limit after it.
    #[tokio::test]
    async fn a_connection_closed_while_out_starts_the_clock_at_the_replug() {
        let dir = tempfile::tempdir().expect("dir");
        let mut world = one_phone(Some(IDLE.as_millis() as u64));
        world.devices[0].plug_periods = Some(out_then_back(300, 700));
        let started = Instant::now();
        let (hub, _tasks) = bench(world, dir.path());
        let phone = hub.phones()[0].clone();
        let connection = phone.host_connection();
        // Out by the schedule at 300 ms with the connection still open.
        left_after(&hub, phone.udid())
            .await
            .expect("unplugged by the schedule");
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(phone.host_use().connections.open, 1);
        assert!(!phone.host_use().attached);
        drop(connection);
        let closed_at = started.elapsed();
        assert!(
            closed_at < Duration::from_millis(700),
            "closed at {closed_at:?}"
        );
        // Back at 700 ms, well over IDLE after the close: it must stay IDLE from the replug.
        let back_at = plugged_back(&hub, phone.udid(), started).await;
        assert!(phone.host_use().attached);
        let took = left_after(&hub, phone.udid())
            .await
            .expect("left when idle");
        assert!(
            took + Duration::from_millis(10) >= IDLE,
            "left {took:?} after the replug at {back_at:?}"
        );
        let use_now = phone.host_use();
        assert!(
            !use_now.attached && use_now.connections.open == 0 && use_now.connections.talked_to
        );
    }

    /// Pulled out and put back by hand while idle: the clock starts again at the replug.
    #[tokio::test]
    async fn a_replug_while_idle_restarts_the_clock() {
        let dir = tempfile::tempdir().expect("dir");
        let (hub, _tasks) = bench(one_phone(Some(IDLE.as_millis() as u64)), dir.path());
        let phone = hub.phones()[0].clone();
        drop(phone.host_connection());
        tokio::time::sleep(IDLE / 2).await;
        assert!(hub.unplug(phone.udid()).expect("unplug"));
        hub.plug(phone.udid()).expect("plug");
        let replugged = Instant::now();
        left_after(&hub, phone.udid())
            .await
            .expect("left when idle");
        let took = replugged.elapsed();
        assert!(
            took + Duration::from_millis(10) >= IDLE,
            "left {took:?} after the replug"
        );
    }

    #[test]
    fn the_option_is_checked() {
        let world =
            crate::World::from_toml("leave_when_idle_ms = 0\n[[device]]\n", "t").expect("parses");
        let err = world.resolve().expect_err("zero");
        assert!(
            matches!(
                err,
                crate::WorldError::InvalidWorld {
                    field: "leave_when_idle_ms",
                    ..
                }
            ),
            "{err}"
        );
        for value in ["0", "3600001"] {
            let text = format!("[[device]]\nleave_when_idle_ms = {value}\n");
            let err = crate::World::from_toml(&text, "t")
                .expect("parses")
                .resolve()
                .expect_err(value);
            assert!(
                matches!(
                    err,
                    crate::WorldError::Invalid {
                        field: "leave_when_idle_ms",
                        ..
                    }
                ),
                "{value}: {err}"
            );
        }
        // The world's value is every device's default; a device's own wins.
        let world = crate::World::from_toml(
            "leave_when_idle_ms = 9000\n[[device]]\n[[device]]\nleave_when_idle_ms = 500\n",
            "t",
        )
        .expect("parses");
        let phones = world.resolve().expect("resolves");
        assert_eq!(phones[0].leave_when_idle_ms, Some(9000));
        assert_eq!(phones[1].leave_when_idle_ms, Some(500));
        // Pinned, printed and read back: the same.
        let again = crate::World::from_toml(&world.pinned().expect("pinned").to_toml(), "p")
            .expect("reparse");
        assert_eq!(again.resolve().expect("resolve"), phones);
        let text = crate::World::from_toml("leave_when_idle_ms = 9000\n", "t")
            .expect("parses")
            .to_toml();
        assert!(text.contains("leave_when_idle_ms = 9000"), "{text}");
    }
}
