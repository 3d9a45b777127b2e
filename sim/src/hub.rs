//! The USB side of the bench: which phones are plugged in, under which usbmuxd DeviceID,
//! and the Attached/Detached/Paired events listeners see.
//!
//! State changes and event broadcasts happen under one lock, and a new listener takes its
//! snapshot and subscribes under the same lock, so it never misses nor doubles an event.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use station_protocol::usbmux::{DeviceInfo, Event};
use tokio::sync::{broadcast, watch};

use crate::error::SimError;
use crate::phone::Phone;
use crate::world::USB2_SPEED;

/// Events a slow listener may fall behind by before it is dropped.
const EVENT_BACKLOG: usize = 4096;

struct Attachment {
    phone: usize,
    /// Dropped (or set) on unplug: every open connection to the phone ends.
    unplugged: watch::Sender<bool>,
}

struct HubState {
    next_device_id: u32,
    attached: BTreeMap<u32, Attachment>,
    /// Each phone's LocationID now: its profile's until it is replugged.
    locations: HashMap<usize, u32>,
    /// The last USB address handed out per bus.
    last_address: HashMap<u32, u32>,
}

/// Whether a phone is plugged in, as the hub publishes it: one watch a phone, sent under
/// the hub's lock whenever its list of plugged phones changes, so `leave_when_idle_ms`
/// (crate::plugs) and [`crate::phone::HostUse`] read the hub's own answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct PlugState {
    pub plugged_in: bool,
    /// How many times it has been plugged in since the bench started: a replug is a new
    /// plug-in even to a reader that missed the unplug before it.
    pub plug_ins: u64,
}

/// Linux hands out USB addresses 1..=127 per bus (1 is the root hub), round-robin.
const MAX_USB_ADDRESS: u32 = 127;

pub(crate) struct Hub {
    phones: Vec<Arc<Phone>>,
    by_udid: HashMap<String, usize>,
    state: Mutex<HubState>,
    /// Indexed like `phones`; changed only under `state`'s lock, to match `attached`.
    plug_states: Vec<watch::Sender<PlugState>>,
    events: broadcast::Sender<Event>,
}

impl Hub {
    pub fn new(phones: Vec<Arc<Phone>>) -> Hub {
        let by_udid = phones
            .iter()
            .enumerate()
            .map(|(i, p)| (p.udid().to_string(), i))
            .collect();
        let (events, _) = broadcast::channel(EVENT_BACKLOG);
        let plug_states = phones
            .iter()
            .map(|phone| {
                let (sender, receiver) = watch::channel(PlugState::default());
                phone.plugged_into_hub(receiver);
                sender
            })
            .collect();
        Hub {
            phones,
            by_udid,
            state: Mutex::new(HubState {
                next_device_id: 1,
                attached: BTreeMap::new(),
                locations: HashMap::new(),
                last_address: HashMap::new(),
            }),
            plug_states,
            events,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn phones(&self) -> &[Arc<Phone>] {
        &self.phones
    }

    fn index(&self, udid: &str) -> Result<usize, SimError> {
        self.by_udid
            .get(udid)
            .copied()
            .ok_or_else(|| SimError::UnknownDevice {
                udid: udid.to_string(),
            })
    }

    fn info(&self, state: &HubState, device_id: u32, phone: usize) -> DeviceInfo {
        let p = self.phones[phone].profile();
        DeviceInfo {
            device_id,
            udid: p.udid.clone(),
            product_id: p.product_id,
            location_id: state
                .locations
                .get(&phone)
                .copied()
                .unwrap_or(p.location_id),
            connection_speed: USB2_SPEED,
            connection_type: "USB".to_string(),
        }
    }

    /// A phone's LocationID: where it is (or was last) plugged, else its first.
    pub fn location_id(&self, udid: &str) -> Option<u32> {
        let index = self.by_udid.get(udid).copied()?;
        let first = self.phones[index].profile().location_id;
        Some(self.lock().locations.get(&index).copied().unwrap_or(first))
    }

    /// The DeviceID of a plugged phone.
    pub fn device_id(&self, udid: &str) -> Option<u32> {
        let index = self.by_udid.get(udid).copied()?;
        self.lock()
            .attached
            .iter()
            .find(|(_, a)| a.phone == index)
            .map(|(id, _)| *id)
    }

    /// The LocationID of a phone being plugged in. The first time: its profile's. Again (a
    /// replug): same bus, the next free USB address, as Linux re-enumerates a device, so
    /// usbmuxd's `(bus << 16) | address` changes (docs/protocol.md §1.4).
    fn enumerate(&self, s: &mut HubState, phone: usize) -> u32 {
        let first = self.phones[phone].profile().location_id;
        let Some(previous) = s.locations.get(&phone).copied() else {
            return first;
        };
        let bus = previous >> 16;
        // Taken: the phones attached now, and the first addresses of phones not plugged yet.
        let attached = s
            .attached
            .values()
            .filter_map(|a| s.locations.get(&a.phone));
        let planned = (0..self.phones.len())
            .filter(|i| !s.locations.contains_key(i))
            .map(|i| &self.phones[i].profile().location_id);
        let in_use: Vec<u32> = attached
            .chain(planned)
            .filter(|l| **l >> 16 == bus)
            .map(|l| *l & 0xffff)
            .collect();
        let highest_profile = self
            .phones
            .iter()
            .map(|p| p.profile().location_id)
            .filter(|l| *l >> 16 == bus)
            .map(|l| l & 0xffff)
            .max()
            .unwrap_or(1);
        let mut address = *s.last_address.get(&bus).unwrap_or(&highest_profile);
        for _ in 0..MAX_USB_ADDRESS {
            address = if address >= MAX_USB_ADDRESS {
                2
            } else {
                address + 1
            };
            if !in_use.contains(&address) && address != (previous & 0xffff) {
                break;
            }
        }
        s.last_address.insert(bus, address);
        (bus << 16) | address
    }

    /// Plugs a phone in: it gets the next DeviceID (a replugged phone gets a new one, as
    /// with usbmuxd) and a new USB address on its bus, and listeners see `Attached`.
    /// Plugging a plugged phone is a no-op.
    pub fn plug(&self, udid: &str) -> Result<u32, SimError> {
        let index = self.index(udid)?;
        let mut s = self.lock();
        if let Some((id, _)) = s.attached.iter().find(|(_, a)| a.phone == index) {
            return Ok(*id);
        }
        let id = s.next_device_id;
        s.next_device_id = s.next_device_id.wrapping_add(1).max(1);
        let location = self.enumerate(&mut s, index);
        s.locations.insert(index, location);
        let (unplugged, _) = watch::channel(false);
        s.attached.insert(
            id,
            Attachment {
                phone: index,
                unplugged,
            },
        );
        self.plug_states[index].send_modify(|p| {
            p.plugged_in = true;
            p.plug_ins += 1;
        });
        let _ = self.events.send(Event::Attached(self.info(&s, id, index)));
        tracing::info!(%udid, device_id = id, "plugged in");
        Ok(id)
    }

    /// Pulls a phone out: listeners see `Detached`, its connections are closed.
    /// `Ok(false)` if it was not plugged.
    pub fn unplug(&self, udid: &str) -> Result<bool, SimError> {
        let index = self.index(udid)?;
        let mut s = self.lock();
        Ok(self.unplug_locked(&mut s, index))
    }

    /// Whether a phone is plugged in now and every later change of that.
    pub fn watch_plug_state(&self, udid: &str) -> Result<watch::Receiver<PlugState>, SimError> {
        Ok(self.plug_states[self.index(udid)?].subscribe())
    }

    /// Pulls a phone out if it is still in the plug-in numbered `plug_ins` (see
    /// [`PlugState`]), nothing changed in how the host uses it since `changes` (see
    /// [`crate::phone::HostUse`]) and no host connection is open: checked and done under
    /// the hub's lock, so a plug or unplug in between is not undone. `Ok(true)`: it left.
    pub fn leave_if_idle(&self, udid: &str, plug_ins: u64, changes: u64) -> Result<bool, SimError> {
        let index = self.index(udid)?;
        let mut s = self.lock();
        let plug = *self.plug_states[index].borrow();
        let now = self.phones[index].host_use().connections;
        if !plug.plugged_in || plug.plug_ins != plug_ins || now.open > 0 || now.changes != changes {
            return Ok(false);
        }
        Ok(self.unplug_locked(&mut s, index))
    }

    fn unplug_locked(&self, s: &mut HubState, index: usize) -> bool {
        let udid = self.phones[index].udid();
        let Some(id) = s
            .attached
            .iter()
            .find(|(_, a)| a.phone == index)
            .map(|(id, _)| *id)
        else {
            return false;
        };
        if let Some(a) = s.attached.remove(&id) {
            let _ = a.unplugged.send(true);
        }
        self.phones[index].unplugged();
        self.plug_states[index].send_modify(|p| p.plugged_in = false);
        let _ = self.events.send(Event::Detached { device_id: id });
        tracing::info!(%udid, device_id = id, "unplugged");
        true
    }

    /// Sends `Paired` when a record was saved for a plugged phone with that DeviceID.
    pub fn paired(&self, udid: &str, device_id: u32) -> bool {
        let Some(&index) = self.by_udid.get(udid) else {
            return false;
        };
        let s = self.lock();
        match s.attached.get(&device_id) {
            Some(a) if a.phone == index => {
                let _ = self.events.send(Event::Paired { device_id });
                true
            }
            _ => false,
        }
    }

    /// The plugged phones, in DeviceID order.
    pub fn list(&self) -> Vec<DeviceInfo> {
        let s = self.lock();
        s.attached
            .iter()
            .map(|(id, a)| self.info(&s, *id, a.phone))
            .collect()
    }

    /// The current devices and a subscription to every later event, atomically.
    pub fn subscribe(&self) -> (Vec<DeviceInfo>, broadcast::Receiver<Event>) {
        let s = self.lock();
        let rx = self.events.subscribe();
        let list = s
            .attached
            .iter()
            .map(|(id, a)| self.info(&s, *id, a.phone))
            .collect();
        (list, rx)
    }

    /// The phone behind a DeviceID and a receiver that fires when it is unplugged.
    pub fn connect(&self, device_id: u32) -> Option<(Arc<Phone>, watch::Receiver<bool>)> {
        let s = self.lock();
        let a = s.attached.get(&device_id)?;
        Some((self.phones[a.phone].clone(), a.unplugged.subscribe()))
    }

    /// The daemon went away: every open connection to a phone ends (the phones drop
    /// their mux sessions), and the next daemon numbers the phones still attached afresh
    /// from DeviceID 1, as a new usbmuxd process does. No events: nobody is listening.
    pub fn daemon_restarted(&self) {
        let mut s = self.lock();
        let attached = std::mem::take(&mut s.attached);
        s.next_device_id = 1;
        for (_, a) in attached {
            let _ = a.unplugged.send(true);
            self.phones[a.phone].unplugged();
            let id = s.next_device_id;
            s.next_device_id += 1;
            let (unplugged, _) = watch::channel(false);
            s.attached.insert(
                id,
                Attachment {
                    phone: a.phone,
                    unplugged,
                },
            );
        }
    }

    /// Unplugs everything (bench shutdown).
    pub fn unplug_all(&self) {
        let mut s = self.lock();
        for (_, a) in std::mem::take(&mut s.attached) {
            let _ = a.unplugged.send(true);
            self.plug_states[a.phone].send_modify(|p| p.plugged_in = false);
        }
    }
}
