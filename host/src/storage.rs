//! Whether the data directory can take the ledger's writes: free space and a writable
//! filesystem, read with `statvfs(3)` (one system call, cheap enough before every phone).
//!
//! SQLite fails a commit with "database or disk is full" (`SQLITE_FULL`) or an I/O error
//! once the filesystem is full or remounted read-only; a phone whose outcome cannot be
//! committed would be worked on without a record. So the line checks before it takes a
//! phone and stops taking new ones while the directory is short of space or read-only
//! (docs/errors.md, `ledger-full` and `ledger-read-only`), and `station run` refuses to
//! start on such a directory.

use std::fmt;
use std::path::{Path, PathBuf};

/// Free space below which no new phone is started: a phone's attempt writes a few kB (its
/// row, steps, SQLite's WAL frames); this leaves room for every phone in flight to commit
/// its outcome, and for the WAL to grow until its next checkpoint.
pub const MIN_FREE_BYTES: u64 = 4 * 1024 * 1024;

/// Why the data directory cannot take the ledger's writes now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageProblem {
    /// Less than [`MIN_FREE_BYTES`] left for this user.
    Full { dir: PathBuf, free_bytes: u64 },
    /// The filesystem is mounted read-only (or was remounted so after an error).
    ReadOnly { dir: PathBuf },
}

impl StorageProblem {
    pub fn dir(&self) -> &Path {
        match self {
            StorageProblem::Full { dir, .. } | StorageProblem::ReadOnly { dir } => dir,
        }
    }
}

impl fmt::Display for StorageProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageProblem::Full { dir, free_bytes } => write!(
                f,
                "the data directory {} is full: {} kB free, the ledger needs at least {} kB",
                dir.display(),
                free_bytes / 1024,
                MIN_FREE_BYTES / 1024
            ),
            StorageProblem::ReadOnly { dir } => write!(
                f,
                "the data directory {} is on a read-only filesystem",
                dir.display()
            ),
        }
    }
}

/// Checks the filesystem holding `dir` (or, while `dir` does not exist yet, its nearest
/// existing parent, where it would be created). A directory whose filesystem cannot be
/// asked is not judged here: opening the ledger reports that with its own error.
pub fn check(dir: &Path) -> Result<(), StorageProblem> {
    let mut existing = dir;
    while !existing.exists() {
        match existing.parent() {
            Some(parent) => existing = parent,
            None => return Ok(()),
        }
    }
    let Ok(stat) = rustix::fs::statvfs(existing) else {
        return Ok(());
    };
    if stat.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY) {
        return Err(StorageProblem::ReadOnly {
            dir: dir.to_path_buf(),
        });
    }
    // f_bavail counts the blocks an unprivileged user may still use; in f_frsize units.
    let free_bytes = stat.f_bavail.saturating_mul(stat.f_frsize);
    if free_bytes < MIN_FREE_BYTES {
        return Err(StorageProblem::Full {
            dir: dir.to_path_buf(),
            free_bytes,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ordinary_temporary_directory_passes() {
        let dir = tempfile::tempdir().expect("dir");
        assert_eq!(check(dir.path()), Ok(()));
        // Not created yet: its parent is asked.
        assert_eq!(check(&dir.path().join("a/b")), Ok(()));
    }

    #[test]
    fn problems_name_the_directory_and_the_cause() {
        let full = StorageProblem::Full {
            dir: PathBuf::from("/srv/station"),
            free_bytes: 2048,
        };
        assert_eq!(
            full.to_string(),
            "the data directory /srv/station is full: 2 kB free, the ledger needs at least 4096 kB"
        );
        let read_only = StorageProblem::ReadOnly {
            dir: PathBuf::from("/srv/station"),
        };
        assert!(read_only.to_string().contains("read-only"));
        assert_eq!(read_only.dir(), Path::new("/srv/station"));
    }
}
