//! Where pair records live (docs/protocol.md §4.1 "Storage").
//!
//! [`PairRecordStore`] is what the station's workflow talks to; [`DirPairStore`] is the
//! `/var/lib/lockdown` layout usbmuxd itself uses, so records we write are found by
//! usbmuxd, libimobiledevice and pymobiledevice3 and vice versa. A store backed by the
//! usbmuxd socket (`ReadPairRecord`/`SavePairRecord`/`DeletePairRecord`/`ReadBUID`) can
//! implement the same trait.

use std::fs;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::OnceLock;

use plist::{Dictionary, Value};

use super::record::SYSTEM_BUID;
use super::{type_name, PairRecord, PairingError};
use crate::atomic_file;
use crate::file_error::FileError;

/// A boxed `Send` future, so [`PairRecordStore`] stays usable as `Arc<dyn PairRecordStore>`
/// (`async fn` in traits is not dyn-compatible).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Persistent pair records, keyed by UDID, plus the host-wide SystemBUID.
///
/// Implementations must validate UDIDs (see [`validate_udid`]) before using them in a path
/// or request.
pub trait PairRecordStore: Send + Sync {
    /// The record for `udid`, or `None` if this host has never paired with it (or the
    /// record was deleted).
    fn read<'a>(&'a self, udid: &'a str)
        -> BoxFuture<'a, Result<Option<PairRecord>, PairingError>>;

    /// Stores (or replaces) the record for `udid`; durable when the future completes.
    fn save<'a>(
        &'a self,
        udid: &'a str,
        record: &'a PairRecord,
    ) -> BoxFuture<'a, Result<(), PairingError>>;

    /// Forgets the record for `udid` (after a phone was erased, its old record only yields
    /// `InvalidHostID`). `true` if there was one.
    fn delete<'a>(&'a self, udid: &'a str) -> BoxFuture<'a, Result<bool, PairingError>>;

    /// This host's SystemBUID, created on first use. Sent in `Pair` and `StartSession`.
    fn system_buid(&self) -> BoxFuture<'_, Result<String, PairingError>>;
}

/// Checks that `udid` is a UDID (24 to 40 characters of hex digits and `-`, covering both
/// the 40-hex legacy form and the `00008030-001A…` form) before it becomes a file name:
/// no `/`, no `.`, so no path traversal.
pub fn validate_udid(udid: &str) -> Result<(), PairingError> {
    let ok =
        (24..=40).contains(&udid.len()) && udid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(PairingError::InvalidUdid {
            udid: udid.to_owned(),
        })
    }
}

/// Pair records as files, in usbmuxd's layout: `<dir>/<UDID>.plist` (XML, mode 0600) and
/// `<dir>/SystemConfiguration.plist` holding `SystemBUID`.
///
/// Writes are atomic (temporary file, fsync, rename), so a crash or a concurrent reader
/// never sees half a record. The async trait methods run the file I/O on tokio's blocking
/// pool; the `*_blocking` methods are the same operations for synchronous callers.
#[derive(Debug)]
pub struct DirPairStore {
    dir: PathBuf,
    buid: OnceLock<String>,
}

const SYSTEM_CONFIGURATION: &str = "SystemConfiguration.plist";

impl DirPairStore {
    /// A store rooted at `dir` (normally `/var/lib/lockdown`). Nothing is touched until
    /// first use; the directory is created on the first write.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            buid: OnceLock::new(),
        }
    }

    /// The directory this store reads and writes.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of the record file for `udid`, after validating it.
    pub fn record_path(&self, udid: &str) -> Result<PathBuf, PairingError> {
        validate_udid(udid)?;
        Ok(self.dir.join(format!("{udid}.plist")))
    }

    /// Blocking form of [`PairRecordStore::read`].
    pub fn read_blocking(&self, udid: &str) -> Result<Option<PairRecord>, PairingError> {
        let path = self.record_path(udid)?;
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(io_error("read", &path, source)),
        };
        PairRecord::from_bytes(&bytes)
            .map(Some)
            .map_err(|source| PairingError::StoredFile {
                path,
                source: Box::new(source),
            })
    }

    /// Blocking form of [`PairRecordStore::save`].
    pub fn save_blocking(&self, udid: &str, record: &PairRecord) -> Result<(), PairingError> {
        let path = self.record_path(udid)?;
        self.create_dir()?;
        write_atomic(&path, &record.to_xml(), atomic_file::PRIVATE)
    }

    /// Blocking form of [`PairRecordStore::delete`].
    pub fn delete_blocking(&self, udid: &str) -> Result<bool, PairingError> {
        let path = self.record_path(udid)?;
        match fs::remove_file(&path) {
            Ok(()) => {
                atomic_file::sync_dir(&self.dir);
                Ok(true)
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(io_error("delete", &path, source)),
        }
    }

    /// Blocking form of [`PairRecordStore::system_buid`].
    ///
    /// Reads `SystemBUID` from `SystemConfiguration.plist`; if the file is absent it is
    /// created with a new uppercase UUID (without clobbering one another process creates at
    /// the same moment); if the file exists without the key, the key is added and the
    /// file's other keys are kept. An unreadable file is an error, never overwritten: it
    /// belongs to usbmuxd as much as to us.
    pub fn system_buid_blocking(&self) -> Result<String, PairingError> {
        if let Some(buid) = self.buid.get() {
            return Ok(buid.clone());
        }
        let buid = self.load_or_create_buid()?;
        Ok(self.buid.get_or_init(|| buid).clone())
    }

    fn load_or_create_buid(&self) -> Result<String, PairingError> {
        let path = self.dir.join(SYSTEM_CONFIGURATION);
        match read_config(&path)? {
            Some(mut config) => match config.remove(SYSTEM_BUID) {
                Some(Value::String(buid)) => Ok(buid),
                Some(other) => Err(PairingError::StoredFile {
                    path,
                    source: Box::new(PairingError::WrongType {
                        key: SYSTEM_BUID,
                        expected: "a string",
                        found: type_name(&other),
                    }),
                }),
                None => {
                    let buid = new_buid();
                    config.insert(SYSTEM_BUID.into(), Value::String(buid.clone()));
                    write_atomic(&path, &config_xml(config)?, 0o644)?;
                    Ok(buid)
                }
            },
            None => {
                self.create_dir()?;
                let buid = new_buid();
                let mut config = Dictionary::new();
                config.insert(SYSTEM_BUID.into(), Value::String(buid.clone()));
                if create_atomic(&path, &config_xml(config)?, 0o644)? {
                    Ok(buid)
                } else {
                    // Lost a race with another creator: use theirs.
                    match read_config(&path)?.and_then(|mut c| c.remove(SYSTEM_BUID)) {
                        Some(Value::String(buid)) => Ok(buid),
                        _ => Err(PairingError::StoredFile {
                            path,
                            source: Box::new(PairingError::MissingKey { key: SYSTEM_BUID }),
                        }),
                    }
                }
            }
        }
    }

    fn create_dir(&self) -> Result<(), PairingError> {
        fs::create_dir_all(&self.dir)
            .map_err(|source| io_error("create directory", &self.dir, source))
    }

    /// Runs a blocking operation on a clone of this store's configuration and keeps the
    /// SystemBUID cache coherent.
    async fn blocking<T, F>(&self, op: F) -> Result<T, PairingError>
    where
        T: Send + 'static,
        F: FnOnce(&DirPairStore) -> Result<T, PairingError> + Send + 'static,
    {
        let store = DirPairStore {
            dir: self.dir.clone(),
            buid: self.buid.clone(),
        };
        let dir = self.dir.clone();
        let (result, buid) = tokio::task::spawn_blocking(move || {
            let result = op(&store);
            (result, store.buid.into_inner())
        })
        .await
        .map_err(|join| io_error("run blocking I/O on", &dir, io::Error::other(join)))?;
        if let Some(buid) = buid {
            let _ = self.buid.set(buid);
        }
        result
    }
}

impl PairRecordStore for DirPairStore {
    fn read<'a>(
        &'a self,
        udid: &'a str,
    ) -> BoxFuture<'a, Result<Option<PairRecord>, PairingError>> {
        let udid = udid.to_owned();
        Box::pin(self.blocking(move |store| store.read_blocking(&udid)))
    }

    fn save<'a>(
        &'a self,
        udid: &'a str,
        record: &'a PairRecord,
    ) -> BoxFuture<'a, Result<(), PairingError>> {
        let udid = udid.to_owned();
        let record = record.clone();
        Box::pin(self.blocking(move |store| store.save_blocking(&udid, &record)))
    }

    fn delete<'a>(&'a self, udid: &'a str) -> BoxFuture<'a, Result<bool, PairingError>> {
        let udid = udid.to_owned();
        Box::pin(self.blocking(move |store| store.delete_blocking(&udid)))
    }

    fn system_buid(&self) -> BoxFuture<'_, Result<String, PairingError>> {
        Box::pin(self.blocking(|store| store.system_buid_blocking()))
    }
}

/// usbmuxd's SystemBUID shape: an uppercase UUID.
fn new_buid() -> String {
    uuid::Uuid::new_v4().to_string().to_uppercase()
}

fn io_error(op: &'static str, path: &Path, source: io::Error) -> PairingError {
    PairingError::Io(FileError::new(op, path, source))
}

/// `SystemConfiguration.plist` as a dictionary, `None` if it does not exist.
fn read_config(path: &Path) -> Result<Option<Dictionary>, PairingError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(io_error("read", path, source)),
    };
    let stored = |source| PairingError::StoredFile {
        path: path.to_owned(),
        source: Box::new(source),
    };
    match Value::from_reader(io::Cursor::new(bytes)) {
        Ok(Value::Dictionary(dict)) => Ok(Some(dict)),
        Ok(_) => Err(stored(PairingError::NotADictionary)),
        Err(source) => Err(stored(PairingError::Plist { source })),
    }
}

fn config_xml(config: Dictionary) -> Result<Vec<u8>, PairingError> {
    let mut out = Vec::new();
    Value::Dictionary(config)
        .to_writer_xml(&mut out)
        .map_err(|source| PairingError::Plist { source })?;
    Ok(out)
}

/// Replaces `path` atomically with `bytes`.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PairingError> {
    atomic_file::write(path, bytes, mode).map_err(|source| io_error("write", path, source))
}

/// Creates `path` atomically with `bytes` unless it already exists; `false` if it did.
fn create_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<bool, PairingError> {
    atomic_file::create(path, bytes, mode).map_err(|source| io_error("create", path, source))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    const UDID: &str = "00008030-001A2B3C4D5E6F70";

    fn record() -> PairRecord {
        PairRecord {
            device_certificate: b"device cert".to_vec(),
            host_certificate: b"host cert".to_vec(),
            host_private_key: b"host key".to_vec(),
            root_certificate: b"root cert".to_vec(),
            root_private_key: b"root key".to_vec(),
            host_id: "2A5F3C1E-7B4D-4E8A-9C0F-1D2E3F405162".into(),
            system_buid: "8C1F0D2E-3A4B-4C5D-8E6F-708192A3B4C5".into(),
            wifi_mac_address: None,
            escrow_bag: Some(vec![1, 2, 3]),
            udid: None,
            extra: Dictionary::new(),
        }
    }

    #[test]
    fn udid_validation() {
        for good in [
            UDID,
            "0123456789abcdef0123456789ABCDEF01234567",
            "00008101-000A1B2C3D4E5F60",
        ] {
            assert!(validate_udid(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "../x",
            "../../etc/passwd",
            "00008030/001A2B3C4D5E6F70",
            "00008030-001A2B3C4D5E6F7.",
            "0123456789abcdef0123456",
            "0123456789abcdef0123456789ABCDEF012345678",
            "SystemConfiguration",
            "00008030-001A2B3C4D5E6F7G",
        ] {
            assert!(
                matches!(validate_udid(bad), Err(PairingError::InvalidUdid { .. })),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn save_read_delete_round_trip() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = DirPairStore::new(dir.path().join("lockdown"));
        assert_eq!(store.read(UDID).await?, None);

        let record = record();
        store.save(UDID, &record).await?;
        let path = dir.path().join("lockdown").join(format!("{UDID}.plist"));
        let bytes = fs::read(&path)?;
        assert!(bytes.starts_with(b"<?xml"), "usbmuxd writes XML");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(fs::metadata(&path)?.permissions().mode() & 0o777, 0o600);
        }
        assert_eq!(store.read(UDID).await?, Some(record.clone()));

        // Replacing keeps exactly one file, no temporaries left behind.
        let mut changed = record.clone();
        changed.wifi_mac_address = Some("a4:c3:61:00:11:22".into());
        store.save(UDID, &changed).await?;
        assert_eq!(store.read(UDID).await?, Some(changed));
        assert_eq!(fs::read_dir(dir.path().join("lockdown"))?.count(), 1);

        assert!(store.delete(UDID).await?);
        assert!(!store.delete(UDID).await?);
        assert_eq!(store.read(UDID).await?, None);
        Ok(())
    }

    #[tokio::test]
    async fn usable_as_trait_object() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store: Arc<dyn PairRecordStore> = Arc::new(DirPairStore::new(dir.path()));
        let task = {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.save(UDID, &record()).await })
        };
        task.await??;
        assert!(store.read(UDID).await?.is_some());
        Ok(())
    }

    #[tokio::test]
    async fn bad_udid_is_refused_everywhere() -> TestResult {
        let dir = tempfile::tempdir()?;
        let inner = dir.path().join("lockdown");
        let store = DirPairStore::new(&inner);
        for bad in ["../x", "../../../../tmp/evil-0000000000000000"] {
            assert!(matches!(
                store.read(bad).await,
                Err(PairingError::InvalidUdid { .. })
            ));
            assert!(matches!(
                store.save(bad, &record()).await,
                Err(PairingError::InvalidUdid { .. })
            ));
            assert!(matches!(
                store.delete(bad).await,
                Err(PairingError::InvalidUdid { .. })
            ));
        }
        assert!(!inner.exists(), "nothing may be written for a refused UDID");
        assert!(!dir.path().join("x.plist").exists());
        Ok(())
    }

    #[tokio::test]
    async fn system_buid_is_created_once_and_persists() -> TestResult {
        let dir = tempfile::tempdir()?;
        let first = DirPairStore::new(dir.path()).system_buid().await?;
        assert_eq!(first.len(), 36);
        assert_eq!(first, first.to_uppercase());
        assert!(uuid::Uuid::parse_str(&first).is_ok());

        let again = DirPairStore::new(dir.path());
        assert_eq!(again.system_buid().await?, first);
        assert_eq!(again.system_buid_blocking()?, first);

        let config = read_config(&dir.path().join(SYSTEM_CONFIGURATION))?;
        assert_eq!(
            config.and_then(|c| c.get(SYSTEM_BUID).cloned()),
            Some(Value::String(first))
        );
        Ok(())
    }

    #[test]
    fn existing_configuration_is_respected() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join(SYSTEM_CONFIGURATION);

        // usbmuxd's own BUID wins.
        let mut config = Dictionary::new();
        config.insert(SYSTEM_BUID.into(), Value::String("USBMUXD-BUID".into()));
        fs::write(&path, config_xml(config)?)?;
        assert_eq!(
            DirPairStore::new(dir.path()).system_buid_blocking()?,
            "USBMUXD-BUID"
        );

        // A file without the key gains one and keeps its other keys.
        let mut config = Dictionary::new();
        config.insert("OtherSetting".into(), Value::Boolean(true));
        fs::write(&path, config_xml(config)?)?;
        let buid = DirPairStore::new(dir.path()).system_buid_blocking()?;
        let config = read_config(&path)?.unwrap_or_default();
        assert_eq!(config.get("OtherSetting"), Some(&Value::Boolean(true)));
        assert_eq!(config.get(SYSTEM_BUID), Some(&Value::String(buid)));

        // A corrupt file is reported, not replaced.
        fs::write(&path, b"garbage")?;
        assert!(matches!(
            DirPairStore::new(dir.path()).system_buid_blocking(),
            Err(PairingError::StoredFile { .. })
        ));
        assert_eq!(fs::read(&path)?, b"garbage");
        Ok(())
    }

    #[test]
    fn corrupt_record_names_the_file() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = DirPairStore::new(dir.path());
        let path = store.record_path(UDID)?;
        fs::write(&path, b"<plist><dict></dict></plist>")?;
        match store.read_blocking(UDID) {
            Err(PairingError::StoredFile {
                path: reported,
                source,
            }) => {
                assert_eq!(reported, path);
                assert!(matches!(*source, PairingError::MissingKey { .. }));
            }
            other => panic!("expected StoredFile, got {other:?}"),
        }
        Ok(())
    }
}
