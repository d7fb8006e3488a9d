//! The staging budget: bytes of local staging files (non-sequential writes,
//! edits, writers beyond the memory budget) in use across the mount, and their
//! limit. Owns only the count; the files themselves belong to their handles.

use crate::fs::error::{FsError, FsResult};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Bytes of staging files in use across the mount, and their limit.
#[derive(Debug)]
pub struct Staging {
    pub dir: std::path::PathBuf,
    pub limit: u64,
    used: AtomicU64,
}

impl Staging {
    pub fn new(dir: &Path, limit: u64) -> Arc<Staging> {
        Arc::new(Staging {
            dir: dir.to_path_buf(),
            limit,
            used: AtomicU64::new(0),
        })
    }

    /// Accounts `n` more staged bytes, or says there is no room.
    pub(super) fn take(&self, n: u64) -> FsResult<()> {
        let before = self.used.fetch_add(n, Ordering::SeqCst);
        if before + n > self.limit {
            self.used.fetch_sub(n, Ordering::SeqCst);
            return Err(FsError::new(
                libc::ENOSPC,
                format!(
                    "staging files would exceed {} bytes (--staging-limit) in {}",
                    self.limit,
                    self.dir.display()
                ),
            ));
        }
        Ok(())
    }

    pub(super) fn give_back(&self, n: u64) {
        self.used.fetch_sub(n, Ordering::SeqCst);
    }
}
