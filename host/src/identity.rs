//! The station's own pairing identity: one root and one host certificate (RSA-2048 each)
//! for every phone it pairs with, kept in the data directory. Only the device certificate
//! and HostID are new per phone, so pairing costs a signature instead of two RSA key
//! generations (~150 ms each). The root key is parsed once, with the identity
//! ([`PairingSigner`]), not for every phone.

use std::path::PathBuf;
use std::sync::Arc;

use station_protocol::frame::{decode_plist, dict, encode_plist, PlistFormat};
use station_protocol::pairing::{HostIdentity, PairingSigner};
use tokio::sync::OnceCell;

use crate::error::StationError;

pub const IDENTITY_FILE: &str = "host-identity.plist";

const KEYS: [&str; 4] = [
    "RootCertificate",
    "RootPrivateKey",
    "HostCertificate",
    "HostPrivateKey",
];

/// Loaded or created on first use, its root key parsed; kept for the process.
pub struct IdentityStore {
    /// `None`: keep it in memory only (no data directory).
    path: Option<PathBuf>,
    cell: OnceCell<Arc<PairingSigner>>,
}

impl IdentityStore {
    pub fn new(path: Option<PathBuf>) -> Self {
        IdentityStore {
            path,
            cell: OnceCell::new(),
        }
    }

    pub async fn get(&self) -> Result<Arc<PairingSigner>, StationError> {
        self.cell
            .get_or_try_init(|| async {
                let path = self.path.clone();
                tokio::task::spawn_blocking(move || load_or_create(path))
                    .await
                    .map_err(|e| internal(format!("identity task failed: {e}")))?
                    .map(Arc::new)
            })
            .await
            .cloned()
    }
}

fn internal(message: String) -> StationError {
    StationError::HostIdentity(message)
}

fn load_or_create(path: Option<PathBuf>) -> Result<PairingSigner, StationError> {
    if let Some(path) = &path {
        if path.exists() {
            let text =
                station_config::read_private_file(path).map_err(|e| internal(e.to_string()))?;
            // A root key that does not parse makes the file as unusable as a missing key.
            return parse(text.as_bytes())
                .and_then(|identity| PairingSigner::new(identity).map_err(|e| e.to_string()))
                .map_err(|reason| {
                    internal(format!(
                        "{} is unusable ({reason}): delete it to make a new identity",
                        path.display()
                    ))
                });
        }
    }
    let identity = HostIdentity::generate()
        .map_err(|e| internal(format!("cannot generate the pairing identity: {e}")))?;
    if let Some(path) = &path {
        if let Err(e) = save(path, &identity) {
            // Pairing still works; the next process makes its own identity.
            tracing::warn!(path = %path.display(), "cannot keep the pairing identity: {e}");
        }
    }
    PairingSigner::new(identity)
        .map_err(|e| internal(format!("cannot use the new pairing identity: {e}")))
}

fn parse(bytes: &[u8]) -> Result<HostIdentity, String> {
    let value = decode_plist(bytes).map_err(|e| e.to_string())?;
    let d = value.as_dictionary().ok_or("not a dictionary")?;
    let field = |key: &str| -> Result<String, String> {
        d.get(key)
            .and_then(|v| v.as_data())
            .and_then(|b| String::from_utf8(b.to_vec()).ok())
            .ok_or_else(|| format!("no {key}"))
    };
    Ok(HostIdentity {
        root_cert_pem: field(KEYS[0])?,
        root_key_pem: field(KEYS[1])?,
        host_cert_pem: field(KEYS[2])?,
        host_key_pem: field(KEYS[3])?,
    })
}

fn save(path: &std::path::Path, identity: &HostIdentity) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let value = dict([
        (
            KEYS[0],
            plist::Value::Data(identity.root_cert_pem.clone().into_bytes()),
        ),
        (
            KEYS[1],
            plist::Value::Data(identity.root_key_pem.clone().into_bytes()),
        ),
        (
            KEYS[2],
            plist::Value::Data(identity.host_cert_pem.clone().into_bytes()),
        ),
        (
            KEYS[3],
            plist::Value::Data(identity.host_key_pem.clone().into_bytes()),
        ),
    ]);
    let bytes = encode_plist(&value, PlistFormat::Xml).map_err(std::io::Error::other)?;
    station_protocol::atomic_file::write(path, &bytes, station_protocol::atomic_file::PRIVATE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn identity_is_created_once_kept_private_and_reused() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("data").join(IDENTITY_FILE);
        let first = IdentityStore::new(Some(path.clone()))
            .get()
            .await
            .expect("create");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).expect("file").permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let again = IdentityStore::new(Some(path.clone()))
            .get()
            .await
            .expect("load");
        assert_eq!(
            first.identity().root_cert_pem,
            again.identity().root_cert_pem
        );
        assert_eq!(first.identity().host_key_pem, again.identity().host_key_pem);
        std::fs::write(&path, b"garbage").expect("write");
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod");
        let err = IdentityStore::new(Some(path.clone()))
            .get()
            .await
            .expect_err("unusable");
        assert!(err.to_string().contains("delete it"), "{err}");

        // A well-formed file whose root key does not parse is refused when it is loaded,
        // before any phone is paired with it.
        let mut broken = first.identity().clone();
        broken.root_key_pem =
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into();
        save(&path, &broken).expect("save");
        let err = IdentityStore::new(Some(path))
            .get()
            .await
            .expect_err("unusable root key");
        assert!(err.to_string().contains("RootPrivateKey"), "{err}");
        assert!(err.to_string().contains("delete it"), "{err}");
    }
}
