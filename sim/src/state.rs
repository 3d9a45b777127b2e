//! The bench's state directory: what survives a restart, like a real host and real phones.
//!
//! ```text
//! <state_dir>/lockdown/SystemConfiguration.plist   SystemBUID (usbmuxd's file, same format)
//! <state_dir>/lockdown/<UDID>.plist                host pair records stored via SavePairRecord
//! <state_dir>/keys/<UDID>.pem                      each phone's RSA key (cache, optional)
//! <state_dir>/phones/<UDID>.plist                  the pairings each phone remembers
//! ```
//!
//! The `lockdown` directory has exactly usbmuxd's `/var/lib/lockdown` layout.

use std::path::PathBuf;

use station_protocol::atomic_file;
use station_protocol::pairing::DirPairStore;

use crate::error::SimError;

/// errno values usbmuxd answers pair-record requests with.
pub const ENOENT: u32 = 2;
pub const EINVAL: u32 = 22;
pub const EIO: u32 = 5;

/// Largest pair record accepted (real ones are ~5 KiB).
const MAX_RECORD_LEN: usize = 256 * 1024;

#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        StateDir { root: root.into() }
    }

    pub fn lockdown_dir(&self) -> PathBuf {
        self.root.join("lockdown")
    }

    pub fn keys_dir(&self) -> PathBuf {
        self.root.join("keys")
    }

    pub fn phones_dir(&self) -> PathBuf {
        self.root.join("phones")
    }

    /// Creates the directories (at bench start, so later writes cannot fail on that).
    pub fn create(&self) -> Result<(), SimError> {
        for dir in [self.lockdown_dir(), self.keys_dir(), self.phones_dir()] {
            std::fs::create_dir_all(&dir).map_err(|e| SimError::io("create directory", &dir, e))?;
        }
        Ok(())
    }

    /// The bench's SystemBUID, created once and kept in usbmuxd's own file format.
    pub fn system_buid(&self) -> Result<String, SimError> {
        DirPairStore::new(self.lockdown_dir())
            .system_buid_blocking()
            .map_err(|e| SimError::State {
                path: self.lockdown_dir(),
                reason: e.to_string(),
            })
    }

    fn record_path(&self, record_id: &str) -> Result<PathBuf, u32> {
        if !record_id_is_safe(record_id) {
            return Err(EINVAL);
        }
        Ok(self.lockdown_dir().join(format!("{record_id}.plist")))
    }

    /// `ReadPairRecord`: the stored file's bytes (XML), or the errno usbmuxd would answer.
    pub async fn read_pair_record(&self, record_id: &str) -> Result<Vec<u8>, u32> {
        let path = self.record_path(record_id)?;
        match tokio::fs::read(&path).await {
            Ok(bytes) => Ok(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(ENOENT),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read pair record");
                Err(EIO)
            }
        }
    }

    /// `SavePairRecord`: like usbmuxd, accepts an XML or binary plist dictionary and stores
    /// it as XML.
    pub async fn save_pair_record(&self, record_id: &str, data: &[u8]) -> Result<(), u32> {
        let path = self.record_path(record_id)?;
        if data.len() < 8 || data.len() > MAX_RECORD_LEN {
            return Err(EINVAL);
        }
        let value = match plist::Value::from_reader(std::io::Cursor::new(data)) {
            Ok(v @ plist::Value::Dictionary(_)) => v,
            _ => return Err(EINVAL),
        };
        let mut xml = Vec::new();
        value.to_writer_xml(&mut xml).map_err(|_| EINVAL)?;
        atomic_file::write_async(path, xml, atomic_file::SHARED)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "cannot store pair record");
                EIO
            })
    }

    /// `DeletePairRecord`: Ok, ENOENT when absent.
    pub async fn delete_pair_record(&self, record_id: &str) -> Result<(), u32> {
        let path = self.record_path(record_id)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(ENOENT),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot delete pair record");
                Err(EIO)
            }
        }
    }
}

/// A record id becomes a file name: letters, digits, `-`, `_` only, so no path tricks.
fn record_id_is_safe(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_ids() {
        assert!(record_id_is_safe("00008030-001A2C3E0E90802E"));
        assert!(record_id_is_safe(
            "0123456789abcdef0123456789abcdef01234567"
        ));
        assert!(!record_id_is_safe(""));
        assert!(!record_id_is_safe("../etc/passwd"));
        assert!(!record_id_is_safe("a/b"));
        assert!(!record_id_is_safe(".hidden"));
        assert!(!record_id_is_safe(&"a".repeat(65)));
    }

    #[tokio::test]
    async fn pair_records_round_trip_as_xml() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::new(dir.path());
        state.create().expect("create");
        let id = "00008030-001A2C3E0E90802E";
        assert_eq!(state.read_pair_record(id).await, Err(ENOENT));
        assert_eq!(state.delete_pair_record(id).await, Err(ENOENT));

        let mut d = plist::Dictionary::new();
        d.insert("HostID".into(), "ABC".into());
        let mut binary = Vec::new();
        plist::Value::Dictionary(d)
            .to_writer_binary(&mut binary)
            .expect("encode");
        state.save_pair_record(id, &binary).await.expect("save");
        let stored = state.read_pair_record(id).await.expect("read");
        assert!(stored.starts_with(b"<?xml"), "stored as XML");
        let back = plist::Value::from_reader(std::io::Cursor::new(&stored)).expect("parse");
        assert_eq!(
            back.as_dictionary()
                .and_then(|d| d.get("HostID"))
                .and_then(|v| v.as_string()),
            Some("ABC")
        );
        assert_eq!(
            state.save_pair_record(id, b"not a plist at all").await,
            Err(EINVAL)
        );
        assert_eq!(state.save_pair_record("../x", &binary).await, Err(EINVAL));
        state.delete_pair_record(id).await.expect("delete");
        assert_eq!(state.read_pair_record(id).await, Err(ENOENT));
    }

    #[test]
    fn system_buid_is_stable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::new(dir.path());
        state.create().expect("create");
        let a = state.system_buid().expect("buid");
        let b = StateDir::new(dir.path()).system_buid().expect("buid again");
        assert_eq!(a, b);
        assert_eq!(a.len(), 36);
    }
}
