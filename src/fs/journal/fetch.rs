//! Fetching journal batches for replay: `FETCHERS` threads get and decode a
//! window of batches while the caller applies the window before it, and the
//! caller sees them in key order. Serves a mount's start and reloads
//! (`replay`) and the history walk (`history`). Reads only; applies nothing.

use super::format::{Batch, JournalError};
use crate::fs::error::{FsError, FsResult};
use crate::store::ObjectStore;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Batches fetched at once (each by one of `FETCHERS` threads).
pub(super) const WINDOW: usize = 256;
const FETCHERS: usize = 16;

/// One batch as fetched.
pub(super) enum Fetched {
    Batch(Batch),
    /// Damaged, or gone (expired) between listing and reading: logged, skipped.
    Skipped,
    /// Of a later format: replay stops before it.
    Newer(JournalError),
}

/// Calls `each` with every batch `keys` names and what its fetch found, in
/// `keys`' order, until it says to stop. The keys are read (a listing may
/// page on) and fetched on other threads, a window ahead of `each`: memory
/// holds at most three windows. A failed listing or a failed fetch other
/// than a missing batch ends the replay with that error.
pub(super) fn fetch_in_order<K>(
    store: &dyn ObjectStore,
    keys: K,
    mut each: impl FnMut(String, Fetched) -> ControlFlow<()>,
) -> FsResult<()>
where
    K: Iterator<Item = FsResult<String>> + Send,
{
    std::thread::scope(|s| {
        // One window waits while the next is fetched: bounded memory.
        let (tx, rx) = std::sync::mpsc::sync_channel::<FsResult<Vec<(String, Fetched)>>>(1);
        s.spawn(move || {
            let mut keys = keys;
            loop {
                let mut window = Vec::with_capacity(WINDOW);
                let mut end = false;
                while window.len() < WINDOW {
                    match keys.next() {
                        None => {
                            end = true;
                            break;
                        }
                        Some(Err(e)) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                        Some(Ok(k)) => window.push(k),
                    }
                }
                let fetched =
                    fetch_all(store, &window).map(|f| window.into_iter().zip(f).collect());
                // The caller has stopped reading: stop too.
                if tx.send(fetched).is_err() || end {
                    return;
                }
            }
        });
        for window in rx {
            for (key, got) in window? {
                if each(key, got).is_break() {
                    return Ok(());
                }
            }
        }
        Ok(())
    })
}

/// Fetches and decodes `keys` in parallel; the answers come in `keys`' order.
fn fetch_all(store: &dyn ObjectStore, keys: &[String]) -> FsResult<Vec<Fetched>> {
    let next = AtomicUsize::new(0);
    let slots: Vec<Mutex<Option<FsResult<Fetched>>>> =
        keys.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..FETCHERS.min(keys.len()) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(key) = keys.get(i) else { return };
                let got = fetch_one(store, key);
                *slots[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(got);
            });
        }
    });
    slots
        .into_iter()
        .map(|m| {
            m.into_inner()
                .unwrap_or_else(|p| p.into_inner())
                .unwrap_or_else(|| Err(FsError::new(libc::EIO, "a journal fetch did not finish")))
        })
        .collect()
}

fn fetch_one(store: &dyn ObjectStore, key: &str) -> FsResult<Fetched> {
    let got = match store.get(key, None) {
        Ok(g) => g,
        Err(e) if e.is_not_found() => {
            log::warn!("journal batch {key:?} is gone (expired?): {e}; skipped");
            return Ok(Fetched::Skipped);
        }
        Err(e) => return Err(FsError::io(&format!("reading journal batch {key:?}"), &e)),
    };
    Ok(match Batch::decode(key, &got.data) {
        Ok(b) => Fetched::Batch(b),
        Err(e @ JournalError::Version { .. }) => Fetched::Newer(e),
        Err(e) => {
            log::error!("{e}; skipped");
            Fetched::Skipped
        }
    })
}
