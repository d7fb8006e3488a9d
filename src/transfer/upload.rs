//! Uploader: turns streams of writes (`ObjectUpload`, object_upload.rs) into parts
//! uploaded in the background by a bounded worker pool under a shared memory
//! budget; finish = CompleteMultipartUpload. Owns what all uploads share (store,
//! sizes, budget, workers); knows nothing of files, inodes or FUSE.

pub use super::budget::MemoryBudget;
pub use super::object_upload::ObjectUpload;

use super::pool::Pool;
use crate::store::{ObjectStore, StoreError};
use std::sync::Arc;

/// Sizes and bounds of the uploader.
#[derive(Debug, Clone, Copy)]
pub struct UploadConfig {
    /// Preferred part size; grows where 10,000 parts would not cover the object.
    pub part_size: u64,
    /// Bytes of part buffers held at once, across all uploads.
    pub memory: u64,
    /// Parts uploading at once.
    pub concurrency: usize,
}

impl Default for UploadConfig {
    fn default() -> Self {
        UploadConfig {
            part_size: 8 << 20,
            memory: 64 << 20,
            concurrency: 8,
        }
    }
}

/// The shared pool that uploads parts for every `ObjectUpload`.
pub struct Uploader {
    pub(super) store: Arc<dyn ObjectStore>,
    pub(super) cfg: UploadConfig,
    /// Where a part of a streamed file goes while memory is short (`None`:
    /// such a writer overdraws instead; fine for the one-file CLI).
    pub(super) spill_dir: Option<std::path::PathBuf>,
    pub(super) budget: Arc<MemoryBudget>,
    /// Buffers of sent parts, for the next parts to fill (object_upload.rs).
    pub(super) spares: Arc<Spares>,
    workers: Pool,
}

/// Buffers of parts already uploaded, lent to the next part that will fill.
/// Fresh memory costs a page fault and a zeroed page per 4 KiB, and memory
/// freed by one thread (an upload worker) and asked for by another (a FUSE
/// thread) mostly comes back fresh: for a streamed 1 GiB write, one fault per
/// page, a fifth of the FUSE threads' CPU. Bounded so that it costs at most
/// `KEPT + LENT` parts (3) of memory beyond the budget: a buffer kept here is
/// counted by no reservation, and a lent one is fully resident while its
/// writer's reservation still grows by doubling.
#[derive(Default)]
pub(super) struct Spares(std::sync::Mutex<SparesInner>);

#[derive(Default)]
struct SparesInner {
    kept: Vec<Vec<u8>>,
    lent: usize,
}

const KEPT: usize = 2;
const LENT: usize = 1;

impl Spares {
    fn lock(&self) -> std::sync::MutexGuard<'_, SparesInner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps the buffer of a part that was sent, when nobody else holds it.
    pub(super) fn give(&self, data: bytes::Bytes) {
        let Ok(m) = data.try_into_mut() else { return };
        let mut g = self.lock();
        if g.kept.len() < KEPT {
            let mut v = Vec::from(m);
            v.clear();
            g.kept.push(v);
        }
    }

    /// Lends an empty buffer of at least `cap` bytes, if one is kept and
    /// fewer than `LENT` are out; `returned` ends the loan.
    pub(super) fn lend(&self, cap: usize) -> Option<Vec<u8>> {
        let mut g = self.lock();
        if g.lent >= LENT {
            return None;
        }
        let i = g.kept.iter().position(|v| v.capacity() >= cap)?;
        g.lent += 1;
        Some(g.kept.swap_remove(i))
    }

    /// A lent buffer left its writer (sent as a part, or dropped).
    pub(super) fn returned(&self) {
        let mut g = self.lock();
        g.lent = g.lent.saturating_sub(1);
    }
}

impl Uploader {
    /// As `new`; a streamed part that finds no memory goes to a file in `dir`.
    pub fn with_spill_dir(
        store: Arc<dyn ObjectStore>,
        cfg: UploadConfig,
        dir: &std::path::Path,
    ) -> Arc<Uploader> {
        Uploader::build(store, cfg, Some(dir.to_path_buf()))
    }

    pub fn new(store: Arc<dyn ObjectStore>, cfg: UploadConfig) -> Arc<Uploader> {
        Uploader::build(store, cfg, None)
    }

    fn build(
        store: Arc<dyn ObjectStore>,
        cfg: UploadConfig,
        spill_dir: Option<std::path::PathBuf>,
    ) -> Arc<Uploader> {
        Arc::new(Uploader {
            store,
            spill_dir,
            budget: MemoryBudget::new(cfg.memory),
            spares: Arc::default(),
            workers: Pool::new("upload", cfg.concurrency),
            cfg,
        })
    }

    /// The budget every part buffer draws from.
    pub fn budget(&self) -> &Arc<MemoryBudget> {
        &self.budget
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Begins writing `key`. With `size` known, parts are sized for it; without,
    /// they grow with the part number so 10,000 parts cover over 5 TiB.
    pub fn begin(self: &Arc<Self>, key: &str, size: Option<u64>) -> ObjectUpload {
        ObjectUpload::new(Arc::clone(self), key, size)
    }

    pub(super) fn submit(&self, job: impl FnOnce() + Send + 'static) -> Result<(), StoreError> {
        self.workers
            .submit(job)
            .map_err(|_| StoreError::Invalid("uploader has stopped".into()))
    }

    /// Stops the workers after the queued parts are done.
    pub fn shutdown(&self) {
        self.workers.shutdown();
    }
}

impl Drop for Uploader {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    const MIB: u64 = 1 << 20;

    fn uploader(store: &Arc<MemoryStore>, memory: u64, concurrency: usize) -> Arc<Uploader> {
        let dyn_store: Arc<dyn ObjectStore> = store.clone();
        Uploader::new(
            dyn_store,
            UploadConfig {
                part_size: MIB,
                memory,
                concurrency,
            },
        )
    }

    fn bytes(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn a_file_smaller_than_a_part_is_one_put() {
        let store = Arc::new(MemoryStore::new());
        let up = uploader(&store, 8 * MIB, 2);
        for len in [1, MIB as usize - 1, MIB as usize] {
            let key = format!("k{len}");
            let mut u = up.begin(&key, None);
            u.write(&bytes(len)).unwrap();
            u.finish().unwrap();
            assert_eq!(store.object(&key).unwrap().as_ref(), bytes(len).as_slice());
        }
        assert_eq!(store.calls("PutObject"), 3);
        assert_eq!(store.calls("InitiateMultipartUpload"), 0);
    }

    #[test]
    fn a_larger_file_goes_up_in_parts_and_completes_in_order() {
        let store = Arc::new(MemoryStore::new());
        let up = uploader(&store, 4 * MIB, 3);
        let data = bytes(5 * MIB as usize + 17);
        let mut u = up.begin("big", None);
        for chunk in data.chunks(100_000) {
            u.write(chunk).unwrap();
        }
        let etag = u.finish().unwrap();
        assert!(etag.ends_with("-6"), "{etag}");
        assert_eq!(store.object("big").unwrap().as_ref(), data.as_slice());
        assert_eq!(store.calls("UploadPart"), 6);
        assert_eq!(store.open_uploads(), 0);
    }

    #[test]
    fn a_failed_part_fails_finish_and_aborts_the_upload() {
        let store = Arc::new(MemoryStore::new());
        store.fail_parts.lock().unwrap().push(2);
        let up = uploader(&store, 8 * MIB, 2);
        let mut u = up.begin("bad", None);
        let _ = u.write(&bytes(3 * MIB as usize));
        assert!(u.finish().is_err());
        assert!(store.object("bad").is_none());
        assert_eq!(store.open_uploads(), 0);
        assert_eq!(store.calls("AbortMultipartUpload"), 1);
    }

    #[test]
    fn a_sent_parts_buffer_is_filled_again_and_every_loan_ends() {
        let store = Arc::new(MemoryStore::new());
        let up = uploader(&store, 4 * MIB, 1);
        let data = bytes(5 * MIB as usize + 17);
        let mut u = up.begin("big", None);
        for chunk in data.chunks(100_000) {
            u.write(chunk).unwrap();
        }
        u.finish().unwrap();
        assert!(store.object("big").unwrap().as_ref() == data.as_slice());
        let (kept, lent) = {
            let g = up.spares.lock();
            (g.kept.len(), g.lent)
        };
        assert_eq!((kept, lent), (KEPT, 0), "a buffer came back, none is out");
        // Lent, then dropped mid-part by an abort: the loan ends.
        let mut u = up.begin("aborted", None);
        u.write(&bytes(MIB as usize + MIB as usize / 2)).unwrap();
        assert_eq!(up.spares.lock().lent, 1, "the second part fills a spare");
        u.abort();
        assert_eq!(up.spares.lock().lent, 0);
        // A known size borrows too, and its bytes are its own, not a spare's old ones.
        let other = vec![3u8; 2 * MIB as usize + 5];
        let mut u = up.begin("known", Some(other.len() as u64));
        u.write(&other).unwrap();
        u.finish().unwrap();
        assert!(store.object("known").unwrap().as_ref() == other.as_slice());
        assert_eq!(up.spares.lock().lent, 0);
    }

    #[test]
    fn an_empty_file_is_refused_not_faked() {
        let store = Arc::new(MemoryStore::new());
        let up = uploader(&store, 8 * MIB, 2);
        let e = up.begin("empty", None).finish().unwrap_err();
        assert!(e.to_string().contains("ObjectEmpty"));
        assert_eq!(store.calls("PutObject"), 0);
    }

    #[test]
    fn dropping_an_unfinished_upload_aborts_it() {
        let store = Arc::new(MemoryStore::new());
        let up = uploader(&store, 8 * MIB, 2);
        let mut u = up.begin("dropped", None);
        u.write(&bytes(2 * MIB as usize + 1)).unwrap();
        drop(u);
        assert_eq!(store.open_uploads(), 0);
        assert!(store.object("dropped").is_none());
    }

    #[test]
    fn buffered_bytes_never_exceed_the_memory_budget() {
        let store = Arc::new(MemoryStore::new());
        store
            .part_delay_ms
            .store(20, std::sync::atomic::Ordering::Relaxed);
        let up = uploader(&store, 3 * MIB, 4);
        let budget = Arc::clone(up.budget());
        let peak = Arc::new(AtomicPeak::default());
        let watcher = {
            let (budget, peak) = (Arc::clone(&budget), Arc::clone(&peak));
            std::thread::spawn(move || {
                for _ in 0..400 {
                    peak.see(budget.used());
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            })
        };
        std::thread::scope(|s| {
            for w in 0..3 {
                let up = Arc::clone(&up);
                s.spawn(move || {
                    let mut u = up.begin(&format!("w{w}"), None);
                    for _ in 0..40 {
                        u.write(&bytes(256 * 1024)).unwrap();
                    }
                    u.finish().unwrap();
                });
            }
        });
        let _ = watcher.join();
        assert!(peak.get() <= 3 * MIB, "peak {} over budget", peak.get());
        assert_eq!(budget.used(), 0);
        for w in 0..3 {
            assert_eq!(
                store.object(&format!("w{w}")).unwrap().len(),
                10 * MIB as usize
            );
        }
    }

    #[test]
    fn a_streamed_part_short_of_memory_goes_to_disk_instead_of_waiting() {
        let store = Arc::new(MemoryStore::new());
        let dyn_store: Arc<dyn ObjectStore> = store.clone();
        let dir = tempfile::tempdir().unwrap();
        let cfg = UploadConfig {
            part_size: MIB,
            memory: 2 * MIB,
            concurrency: 1,
        };
        let up = Uploader::with_spill_dir(dyn_store, cfg, dir.path());
        let (tx, rx) = std::sync::mpsc::channel();
        let worker = std::thread::spawn(move || {
            let mut a = up.begin("a", None);
            let mut b = up.begin("b", None);
            assert!(a.write(&bytes(MIB as usize + 1)).unwrap());
            assert!(b.write(&bytes(MIB as usize + 1)).unwrap());
            // Idle writers that never filled a part hold most of the budget.
            while up.budget().used() > 2 * 64 * 1024 {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            let mut idle: Vec<ObjectUpload> = (0..2)
                .map(|i| up.begin(&format!("idle{i}"), None))
                .collect();
            for u in idle.iter_mut() {
                assert!(u.write(&bytes(900 * 1024)).unwrap());
            }
            // Writers with parts sent go on; nothing waits for the idle ones.
            assert!(a.write(&bytes(MIB as usize)).unwrap());
            assert!(b.write(&bytes(MIB as usize)).unwrap());
            a.finish().unwrap();
            b.finish().unwrap();
            for u in idle {
                u.finish().unwrap();
            }
            tx.send(up.budget().used()).unwrap();
        });
        let used = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("writers hung on the memory budget");
        worker.join().unwrap();
        assert_eq!(used, 0);
        let want = [bytes(MIB as usize + 1), bytes(MIB as usize)].concat();
        assert_eq!(store.object("a").unwrap().as_ref(), want.as_slice());
        assert_eq!(store.object("b").unwrap().as_ref(), want.as_slice());
        assert_eq!(store.object("idle1").unwrap().len(), 900 * 1024);
    }

    #[derive(Default)]
    struct AtomicPeak(std::sync::atomic::AtomicU64);
    impl AtomicPeak {
        fn see(&self, v: u64) {
            self.0.fetch_max(v, std::sync::atomic::Ordering::Relaxed);
        }
        fn get(&self) -> u64 {
            self.0.load(std::sync::atomic::Ordering::Relaxed)
        }
    }
}
