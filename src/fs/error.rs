//! The filesystem's error: an errno for the kernel and a message for the log.
//! Built from store errors in one place so every errno mapping agrees.

use crate::store::StoreError;

/// An operation's failure: what the caller sees (`errno`) and why (`message`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsError {
    pub errno: i32,
    pub message: String,
}

pub type FsResult<T> = Result<T, FsError>;

impl FsError {
    pub fn new(errno: i32, message: impl Into<String>) -> FsError {
        FsError {
            errno,
            message: message.into(),
        }
    }

    pub fn not_found() -> FsError {
        FsError::new(libc::ENOENT, "no such file or directory")
    }

    /// An operation the write-once coffer cannot do; the message says so plainly.
    pub fn write_once(op: &str, path: &str) -> FsError {
        FsError::new(
            libc::EPERM,
            format!(
                "{op} {path:?}: the coffer is write-once (no delete, overwrite, rename or \
                 metadata change of stored objects)"
            ),
        )
    }

    /// A store failure where the caller must see `EIO` whatever the cause
    /// (close and fsync: "the object did not land").
    pub fn io(context: &str, e: &StoreError) -> FsError {
        FsError::new(libc::EIO, format!("{context}: {e}"))
    }
}

impl From<StoreError> for FsError {
    fn from(e: StoreError) -> FsError {
        FsError::new(e.errno(), e.to_string())
    }
}

impl std::fmt::Display for FsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (errno {})", self.message, self.errno)
    }
}
