//! Which bench slot a phone is in. usbmuxd's `LocationID` on Linux is `(bus << 16) |
//! address`, and the address changes whenever a phone re-enumerates, so a label keyed by it
//! is lost on a replug (or lands on another phone). The physical port path (`1-1.4.2`) does
//! not change: it is found on this machine by matching the phone's UDID against the USB
//! serial numbers in sysfs (the UDID is the USB serial, docs/protocol.md §1.9, §2.9).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use station_config::SlotKey;
use station_protocol::udid::normalise_udid;
use station_protocol::usbmux::DeviceInfo;

use crate::bounded::BoundedMap;

/// Points the port-path look-up at another directory of `<port>/serial` entries (tests).
pub const SYSFS_ROOT_ENV: &str = "STATION_SYSFS_ROOT";
const SYSFS_USB_DEVICES: &str = "/sys/bus/usb/devices";

/// What a phone's slot label was found by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SlotBy {
    /// Its USB port path (stable across replugs).
    PortPath,
    /// Its usbmuxd LocationID: no port path was found on this machine, or only a
    /// LocationID key of `[slots]` names it.
    LocationId,
}

/// A phone's place on the bench.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub port_path: Option<String>,
    /// The configured label, or the port path, or the LocationID in hex.
    pub label: String,
    /// Whether `[slots]` names this phone's place.
    pub configured: bool,
    pub by: SlotBy,
}

/// A transport that knows each phone's port path itself: the `usb` transport reads it from
/// the bus (bus number and port chain of the device it opened), so no search by serial is
/// needed and two phones with one serial cannot be confused.
pub trait KnownPorts: Send + Sync {
    /// The port path of an attached phone; `None` when the transport does not know it.
    fn port_path(&self, device: &DeviceInfo) -> Option<String>;
}

/// Port paths of attached phones, from the transport when it knows them, else read from
/// sysfs. A scan lists a few dozen small files; an answer is kept per (UDID, LocationID), so
/// the Listen replay and repeated events of the same attachment cost nothing, and a replug
/// (a new LocationID) looks again, since the phone may now be in another port.
pub struct PortPaths {
    root: PathBuf,
    known: Option<Arc<dyn KnownPorts>>,
    /// The answers by (UDID, LocationID).
    cache: Mutex<BoundedMap<(String, u32), Option<String>>>,
}

/// Attachments whose port path is kept; past it the oldest goes. Every attachment (each
/// replug gets a new LocationID) adds one, so a service run would otherwise keep one per
/// plug-in for good (issue 13). A phone that has just gone is among the newest, so it keeps
/// the slot it had for its last events.
pub const PORT_CACHE_LIMIT: usize = 256;

impl PortPaths {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        PortPaths {
            root: root.into(),
            known: None,
            cache: Mutex::new(BoundedMap::new(PORT_CACHE_LIMIT)),
        }
    }

    /// Asks `known` first. Its answer is kept like a scan's, so a phone that has just gone
    /// (its `detached` and `interrupted` events) keeps the slot it had.
    pub fn knowing(mut self, known: Arc<dyn KnownPorts>) -> Self {
        self.known = Some(known);
        self
    }

    /// `STATION_SYSFS_ROOT`, else `/sys/bus/usb/devices`.
    pub fn from_env() -> Self {
        let root = std::env::var_os(SYSFS_ROOT_ENV)
            .filter(|v| !v.is_empty())
            .map_or_else(|| PathBuf::from(SYSFS_USB_DEVICES), PathBuf::from);
        PortPaths::new(root)
    }

    pub fn port_path(&self, device: &DeviceInfo) -> Option<String> {
        let key = (normalise_udid(&device.udid), device.location_id);
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = cache.get(&key) {
            return found.clone();
        }
        let found = self
            .known
            .as_ref()
            .and_then(|known| known.port_path(device))
            .or_else(|| scan(&self.root, &key.0));
        cache.insert(key, found.clone());
        found
    }

    /// Attachments whose port path is kept now (for the bound's test).
    #[cfg(test)]
    fn cached(&self) -> usize {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// The port path whose USB serial is `udid` (normalised: no dash, upper case). Modern UDIDs
/// appear in the descriptor without usbmuxd's dash, legacy ones as they are.
fn scan(root: &Path, udid: &str) -> Option<String> {
    let entries = match std::fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) => {
            tracing::debug!(root = %root.display(), "no USB devices directory: {e}");
            return None;
        }
    };
    let mut found: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            // Devices only: not `usb1` (root hubs) nor `1-1.4:1.0` (interfaces).
            matches!(SlotKey::parse(&name), Some(SlotKey::PortPath(_))).then_some(())?;
            let serial = std::fs::read_to_string(entry.path().join("serial")).ok()?;
            (normalise_udid(serial.trim()) == udid).then_some(name)
        })
        .collect();
    // Two ports with one serial cannot both be the phone: trust neither.
    if found.len() > 1 {
        tracing::warn!(%udid, ports = ?found, "one USB serial on several ports: slot not known");
        return None;
    }
    found.pop()
}

/// The slot map of the configuration together with the port-path look-up.
pub struct Slots {
    map: BTreeMap<SlotKey, String>,
    ports: PortPaths,
}

impl Slots {
    pub fn new(map: BTreeMap<SlotKey, String>, ports: PortPaths) -> Self {
        Slots { map, ports }
    }

    pub fn slot(&self, device: &DeviceInfo) -> Slot {
        let port_path = self.ports.port_path(device);
        let by_port = port_path
            .as_ref()
            .and_then(|p| self.map.get(&SlotKey::PortPath(p.clone())));
        let by_location = self.map.get(&SlotKey::Location(device.location_id));
        // A LocationID key keeps working (config check warns that it is not stable).
        let (configured, by) = match (by_port, &port_path) {
            (Some(label), _) => (Some(label), SlotBy::PortPath),
            (None, Some(_)) if by_location.is_none() => (None, SlotBy::PortPath),
            (None, _) => (by_location, SlotBy::LocationId),
        };
        let label = configured.cloned().unwrap_or_else(|| match &port_path {
            Some(path) => path.clone(),
            None => format!("0x{:08x}", device.location_id),
        });
        Slot {
            configured: configured.is_some(),
            port_path,
            label,
            by,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(udid: &str, location_id: u32) -> DeviceInfo {
        DeviceInfo {
            device_id: 1,
            udid: udid.to_string(),
            product_id: 0x12a8,
            location_id,
            connection_speed: 480_000_000,
            connection_type: "USB".to_string(),
        }
    }

    fn sysfs(entries: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("dir");
        for (port, serial) in entries {
            let at = dir.path().join(port);
            std::fs::create_dir_all(&at).expect("mkdir");
            std::fs::write(at.join("serial"), format!("{serial}\n")).expect("serial");
        }
        dir
    }

    /// Issue 13: a thousand attachments later the cache holds its limit, the newest.
    #[test]
    fn port_cache_is_bounded() {
        let dir = sysfs(&[("1-1.4.2", "00008030001A2C3E0E90802E")]);
        let ports = PortPaths::new(dir.path());
        for i in 0..1000u32 {
            ports.port_path(&device(&format!("00008030-{i:016X}"), 0x0001_0000 + i));
        }
        assert_eq!(ports.cached(), PORT_CACHE_LIMIT);
        // The phone that is there is found, and kept, like any other.
        assert_eq!(
            ports.port_path(&device("00008030-001A2C3E0E90802E", 7)),
            Some("1-1.4.2".to_string())
        );
        assert_eq!(ports.cached(), PORT_CACHE_LIMIT);
    }

    #[test]
    fn udids_are_found_by_usb_serial_in_both_forms() {
        let legacy = "3a5f8bc2e7d1094f6b2c8e0a1d7f3b9c5e2a4d60";
        let dir = sysfs(&[
            ("usb1", "0000:00:14.0"),
            ("1-1", "HUBSERIAL"),
            ("1-1.4.2", "00008030001A2C3E0E90802E"),
            ("1-1.4.3", legacy),
            ("1-1.4.2:1.0", "00008030001A2C3E0E90802E"),
        ]);
        let ports = PortPaths::new(dir.path());
        assert_eq!(
            ports.port_path(&device("00008030-001A2C3E0E90802E", 0x0001_0005)),
            Some("1-1.4.2".to_string())
        );
        assert_eq!(
            ports.port_path(&device(legacy, 0x0001_0006)),
            Some("1-1.4.3".to_string())
        );
        assert_eq!(
            ports.port_path(&device("00008101-0000000000000001", 7)),
            None
        );
        assert_eq!(
            PortPaths::new("/nonexistent/sysfs").port_path(&device(legacy, 1)),
            None
        );
    }

    #[test]
    fn answers_are_cached_per_attachment_and_a_replug_looks_again() {
        let udid = "00008030-001A2C3E0E90802E";
        let dir = sysfs(&[("1-1.4.2", "00008030001A2C3E0E90802E")]);
        let ports = PortPaths::new(dir.path());
        assert_eq!(
            ports.port_path(&device(udid, 0x0001_0005)).as_deref(),
            Some("1-1.4.2")
        );
        // Moved to another port: the same attachment keeps its answer (no rescan per
        // event), a new attachment (new LocationID) finds the new port.
        std::fs::remove_dir_all(dir.path().join("1-1.4.2")).expect("rm");
        let moved = dir.path().join("1-1.3");
        std::fs::create_dir_all(&moved).expect("mkdir");
        std::fs::write(moved.join("serial"), "00008030001A2C3E0E90802E").expect("serial");
        assert_eq!(
            ports.port_path(&device(udid, 0x0001_0005)).as_deref(),
            Some("1-1.4.2")
        );
        assert_eq!(
            ports.port_path(&device(udid, 0x0001_0009)).as_deref(),
            Some("1-1.3")
        );
    }

    #[test]
    fn labels_follow_the_port_and_fall_back_to_the_location() {
        let dir = sysfs(&[("1-1.4.2", "00008030001A2C3E0E90802E")]);
        let map = BTreeMap::from([
            (SlotKey::PortPath("1-1.4.2".into()), "A1".to_string()),
            (SlotKey::Location(0x0001_0005), "OLD".to_string()),
            (SlotKey::Location(0x0001_0007), "C3".to_string()),
        ]);
        let slots = Slots::new(map.clone(), PortPaths::new(dir.path()));
        let here = slots.slot(&device("00008030-001A2C3E0E90802E", 0x0001_0005));
        assert_eq!(
            (
                here.label.as_str(),
                here.port_path.as_deref(),
                here.by,
                here.configured
            ),
            ("A1", Some("1-1.4.2"), SlotBy::PortPath, true)
        );
        let virtual_phone = slots.slot(&device("00008101-0000000000000001", 0x0001_0007));
        assert_eq!(
            (virtual_phone.label.as_str(), virtual_phone.by),
            ("C3", SlotBy::LocationId)
        );
        let unknown = slots.slot(&device("00008101-0000000000000002", 0x0001_0008));
        assert_eq!(
            (unknown.label.as_str(), unknown.configured),
            ("0x00010008", false)
        );
        // A bench still keyed by LocationID keeps its labels where a port path is known.
        let mut legacy_map = map;
        legacy_map.remove(&SlotKey::PortPath("1-1.4.2".into()));
        let legacy = Slots::new(legacy_map, PortPaths::new(dir.path()));
        let here = legacy.slot(&device("00008030-001A2C3E0E90802E", 0x0001_0005));
        assert_eq!(
            (here.label.as_str(), here.port_path.as_deref(), here.by),
            ("OLD", Some("1-1.4.2"), SlotBy::LocationId)
        );
    }
}
