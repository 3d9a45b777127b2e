//! A failed file-system operation on a named path: the one error shape the pair-record
//! store, the simulator's bench and its USB gadgets share, so each names what it was doing
//! and where in the same words ("cannot read /var/lib/lockdown/X.plist: No such file").

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[error("cannot {op} {}: {source}", path.display())]
pub struct FileError {
    /// What was being done, as a verb phrase: `read`, `create directory`, `write ready file`.
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl FileError {
    pub fn new(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> FileError {
        FileError {
            op,
            path: path.into(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn names_the_operation_and_the_path_and_keeps_the_cause() {
        let err = FileError::new(
            "read",
            "/tmp/x.plist",
            io::Error::new(io::ErrorKind::NotFound, "gone"),
        );
        assert_eq!(err.to_string(), "cannot read /tmp/x.plist: gone");
        let cause = err.source().expect("the io::Error underneath");
        assert_eq!(cause.to_string(), "gone");
    }
}
