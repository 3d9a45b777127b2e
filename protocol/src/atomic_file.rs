//! The one way this workspace replaces a file on disk: a reader (or a crash) sees either the
//! old contents or the new, never half a file, and once the call returns the new contents
//! survive a power cut.
//!
//! The steps: write a fresh temporary file beside the target (same directory, so the move is
//! a rename on one file system) with the caller's permission bits, fsync it, move it into
//! place, fsync the directory so the move itself is durable.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Permission bits for a file only its owner may read (secrets, pair records, identities).
pub const PRIVATE: u32 = 0o600;
/// Permission bits for a file anyone may read (before the umask, as `File::create` uses).
pub const SHARED: u32 = 0o666;

/// Replaces `path` with `bytes` atomically and durably; a new file gets `mode` (unix).
pub fn write(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let temp = write_temp(path, bytes, mode)?;
    if let Err(error) = fs::rename(&temp, path) {
        let _ = fs::remove_file(&temp);
        return Err(error);
    }
    sync_parent(path);
    Ok(())
}

/// Creates `path` with `bytes` atomically unless it already exists: `Ok(false)` if it did
/// (the existing file is left as it was). A hard link, unlike rename, refuses to replace.
pub fn create(path: &Path, bytes: &[u8], mode: u32) -> io::Result<bool> {
    let temp = write_temp(path, bytes, mode)?;
    let linked = fs::hard_link(&temp, path);
    let _ = fs::remove_file(&temp);
    match linked {
        Ok(()) => {
            sync_parent(path);
            Ok(true)
        }
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(error) => Err(error),
    }
}

/// [`write`] off the async runtime's worker threads.
pub async fn write_async(path: PathBuf, bytes: Vec<u8>, mode: u32) -> io::Result<()> {
    tokio::task::spawn_blocking(move || write(&path, &bytes, mode))
        .await
        .map_err(io::Error::other)?
}

/// Writes `bytes` to a fresh, uniquely named temporary file beside `path` with `mode`, fsyncs
/// it and returns its path. On failure the temporary file is removed.
fn write_temp(path: &Path, bytes: &[u8], mode: u32) -> io::Result<PathBuf> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Unique per call, so concurrent writers (threads or processes) never share a temp file.
    let temp = path.with_file_name(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()));
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let written = options.open(&temp).and_then(|mut file| {
        file.write_all(bytes)?;
        file.sync_all()
    });
    match written {
        Ok(()) => Ok(temp),
        Err(error) => {
            let _ = fs::remove_file(&temp);
            Err(error)
        }
    }
}

/// Makes a rename or link in `path`'s directory durable.
fn sync_parent(path: &Path) {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => sync_dir(dir),
        _ => sync_dir(Path::new(".")),
    }
}

/// Makes a rename, link or unlink in `dir` durable. Best effort: the data itself is already
/// synced, and some file systems refuse to fsync a directory.
pub fn sync_dir(dir: &Path) {
    if let Err(error) = File::open(dir).and_then(|d| d.sync_all()) {
        tracing::debug!(dir = %dir.display(), %error, "cannot fsync directory");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn leftovers(dir: &Path) -> io::Result<Vec<String>> {
        Ok(fs::read_dir(dir)?
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect())
    }

    #[test]
    fn write_replaces_the_file_and_leaves_no_temporary() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("state.json");
        write(&path, b"first", SHARED)?;
        write(&path, b"second", SHARED)?;
        assert_eq!(fs::read(&path)?, b"second");
        assert!(leftovers(dir.path())?.is_empty());
        Ok(())
    }

    #[cfg(unix)]
    #[test]
    fn write_gives_a_new_file_the_mode_asked_for() -> TestResult {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("secret");
        write(&path, b"token", PRIVATE)?;
        assert_eq!(fs::metadata(&path)?.permissions().mode() & 0o777, 0o600);
        Ok(())
    }

    #[test]
    fn create_keeps_an_existing_file() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("config.plist");
        assert!(create(&path, b"one", SHARED)?);
        assert!(!create(&path, b"two", SHARED)?);
        assert_eq!(fs::read(&path)?, b"one");
        assert!(leftovers(dir.path())?.is_empty());
        Ok(())
    }

    #[test]
    fn a_failed_write_leaves_nothing_behind() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("missing").join("file");
        assert!(write(&path, b"x", SHARED).is_err());
        assert!(leftovers(dir.path())?.is_empty());
        Ok(())
    }
}
