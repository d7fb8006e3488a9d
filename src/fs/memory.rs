//! What the mount keeps in memory follows what the kernel holds: the entries
//! it was given (`remember`), those it forgot (`forget`), and giving freed
//! memory back to the system after large evictions. Decides nothing about
//! what exists; the table (`view::Table`) decides what may leave.

use super::{lock, Fs};
use std::sync::atomic::Ordering;

/// Entries evicted since the last trim past which a `forget` trims at once;
/// fewer wait for the periodic `settle_memory`.
const TRIM_AFTER: usize = 50_000;

impl Fs {
    /// The kernel was given entry `ino` in a reply (lookup, create, mkdir,
    /// mknod, symlink, link): it holds it until it forgets it.
    pub fn remember(&self, ino: u64) {
        lock(&self.table).remember(ino);
    }

    /// The kernel forgot entries, as (inode, references) pairs: those it no
    /// longer holds at all may leave the table, and its cached pages of them
    /// went with them.
    pub fn forget(&self, forgotten: &[(u64, u64)]) {
        let (gone, evicted) = {
            let mut t = lock(&self.table);
            let gone: Vec<u64> = forgotten
                .iter()
                .filter(|&&(ino, n)| t.forget(ino, n))
                .map(|&(ino, _)| ino)
                .collect();
            (gone, t.take_evicted())
        };
        if !gone.is_empty() {
            let mut cached = lock(&self.kernel_cached);
            for ino in gone {
                cached.remove(&ino);
            }
        }
        if evicted > 0 {
            let total = self.evicted.fetch_add(evicted, Ordering::Relaxed) + evicted;
            if total >= TRIM_AFTER {
                self.settle_memory();
            }
        }
    }

    /// After evictions: says how many entries left and how many stay, and
    /// gives the freed memory back (glibc keeps freed small blocks in its
    /// arenas otherwise); after listings, what their pages held. Called
    /// periodically and after large evictions.
    pub(crate) fn settle_memory(&self) {
        let evicted = self.evicted.swap(0, Ordering::Relaxed);
        let pages = self.listed_pages.swap(0, Ordering::Relaxed);
        if evicted > 0 {
            let held = {
                let mut t = lock(&self.table);
                t.shrink();
                t.len()
            };
            log::info!(
                "memory: {evicted} entries the kernel forgot left the table; it holds {held}"
            );
        }
        if evicted > 0 || pages > 0 {
            trim();
        }
    }

    /// Entries in the inode table (the root included).
    pub fn table_len(&self) -> usize {
        lock(&self.table).len()
    }
}

/// While it lives nothing leaves the table (`Table::hold`). Dropped after
/// any guard of the table's lock it was taken before.
pub(in crate::fs) struct TableHold<'a>(&'a Fs);

impl Fs {
    /// Keeps every entry in the table until the guard goes: an operation
    /// that lists a subtree and then records all of it must find all of it.
    pub(in crate::fs) fn hold_table(&self) -> TableHold<'_> {
        lock(&self.table).hold();
        TableHold(self)
    }
}

impl Drop for TableHold<'_> {
    fn drop(&mut self) {
        let evicted = {
            let mut t = lock(&self.0.table);
            t.release();
            t.take_evicted()
        };
        self.0.evicted.fetch_add(evicted, Ordering::Relaxed);
    }
}

/// Returns free heap memory to the system.
fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Bounds glibc's per-thread arenas: each FUSE, upload and finisher thread
/// would otherwise get its own, and memory freed into one stays resident
/// there. Two arenas keep contention low on the machines this runs on.
pub fn bound_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter, before threads start.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
