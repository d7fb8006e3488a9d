//! Uploader: turns a stream of writes into parts uploaded in the background by a
//! bounded worker pool under a shared memory budget; finish = CompleteMultipartUpload.
//! Never reports success for bytes the store has not acknowledged.

use super::pool::Pool;
use crate::protocol::rules::{self, part_size_for, streaming_part_size};
use crate::protocol::{hex, md5};
use crate::store::{CompletedPart, ObjectStore, StoreError};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Condvar, Mutex};

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

/// A byte budget for part buffers. A taker never waits for bytes that only an
/// idle writer (and so only another FUSE request) could give back: it waits
/// only while parts are in flight, which free themselves; otherwise it is told
/// to spill to disk, or, when it cannot, it overdraws by one part at a time.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: u64,
    state: Mutex<BudgetState>,
    freed: Condvar,
}

#[derive(Debug, Default)]
struct BudgetState {
    /// Bytes held by all reservations (buffers filling and parts in flight).
    used: u64,
    /// Of those, bytes of parts handed to the workers.
    in_flight: u64,
    /// Whether the one overdraft (a reservation beyond the limit) is taken.
    overdraft: bool,
}

/// How a reservation was granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grant {
    Within,
    Overdraft,
}

impl MemoryBudget {
    pub fn new(limit: u64) -> Arc<MemoryBudget> {
        Arc::new(MemoryBudget {
            limit: limit.max(1),
            state: Mutex::new(BudgetState::default()),
            freed: Condvar::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BudgetState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes currently held.
    pub fn used(&self) -> u64 {
        self.lock().used
    }

    /// The budget's limit.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Takes `n` bytes. Waits only while parts are in flight. Then, when nothing
    /// is in flight and the budget is still spent (by buffers of writers that
    /// may never write again), returns `None` if the caller may spill to disk,
    /// else takes the single overdraft (waiting for its holder, an upload that
    /// progresses on its own, to give it back). A request larger than the
    /// whole budget is granted when nothing else is held.
    fn take(&self, n: u64, may_spill: bool) -> Option<Grant> {
        let mut s = self.lock();
        loop {
            if s.used == 0 || s.used + n <= self.limit {
                s.used += n;
                return Some(Grant::Within);
            }
            if s.in_flight == 0 {
                if may_spill {
                    return None;
                }
                if !s.overdraft {
                    s.overdraft = true;
                    s.used += n;
                    return Some(Grant::Overdraft);
                }
            }
            s = self.freed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn launch(&self, n: u64) {
        self.lock().in_flight += n;
    }

    fn give_back(&self, n: u64, launched: bool, overdraft: bool) {
        let mut s = self.lock();
        s.used = s.used.saturating_sub(n);
        if launched {
            s.in_flight = s.in_flight.saturating_sub(n);
        }
        if overdraft {
            s.overdraft = false;
        }
        self.freed.notify_all();
    }
}

/// Budget held by one part buffer; given back when dropped.
#[derive(Debug)]
struct Reservation {
    budget: Arc<MemoryBudget>,
    bytes: u64,
    /// Handed to a worker: counts as in flight.
    launched: bool,
    /// This reservation holds the overdraft; it grows without asking.
    overdraft: bool,
}

impl Reservation {
    fn new(budget: &Arc<MemoryBudget>) -> Reservation {
        Reservation {
            budget: Arc::clone(budget),
            bytes: 0,
            launched: false,
            overdraft: false,
        }
    }

    /// Grows by `n` bytes; `false` when the caller should spill instead.
    fn grow(&mut self, n: u64, may_spill: bool) -> bool {
        if self.overdraft {
            self.budget.lock().used += n;
        } else {
            match self.budget.take(n, may_spill) {
                Some(g) => self.overdraft = g == Grant::Overdraft,
                None => return false,
            }
        }
        self.bytes += n;
        true
    }

    /// The part leaves for a worker: its bytes will come back on their own.
    fn launch(&mut self) {
        if !self.launched {
            self.launched = true;
            self.budget.launch(self.bytes);
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget
            .give_back(self.bytes, self.launched, self.overdraft);
    }
}

/// The shared pool that uploads parts for every `ObjectUpload`.
pub struct Uploader {
    store: Arc<dyn ObjectStore>,
    cfg: UploadConfig,
    /// Where a part of a streamed file goes while memory is short (`None`:
    /// such a writer overdraws instead; fine for the one-file CLI).
    spill_dir: Option<std::path::PathBuf>,
    budget: Arc<MemoryBudget>,
    workers: Pool,
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
        ObjectUpload {
            uploader: Arc::clone(self),
            key: key.to_string(),
            fixed_part_size: size.map(|s| part_size_for(self.cfg.part_size, Some(s))),
            fixed_size: size,
            upload_id: None,
            spilled: None,
            fallback: None,
            buf: Vec::new(),
            reservation: None,
            next_part: 1,
            written: 0,
            state: Arc::new(PartsState::default()),
            finished: false,
        }
    }

    fn submit(&self, job: impl FnOnce() + Send + 'static) -> Result<(), StoreError> {
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

fn spill_error(key: &str, e: std::io::Error) -> StoreError {
    StoreError::Invalid(format!("{key:?}: keeping a part on disk: {e}"))
}

/// Whether the service says the key already has an object or an open upload.
fn key_taken(e: &StoreError) -> bool {
    use crate::protocol::ErrorCode as C;
    matches!(
        e.code(),
        Some(
            C::ObjectAlreadyExists
                | C::ObjectAlreadyExistsOwnedByYou
                | C::ObjectAlreadyUploading
                | C::AlreadyLock
        )
    )
}

/// Results of one upload's parts, shared with the workers.
#[derive(Default)]
struct PartsState {
    inner: Mutex<PartsInner>,
    changed: Condvar,
}

#[derive(Default)]
struct PartsInner {
    done: BTreeMap<u32, String>,
    outstanding: usize,
    error: Option<StoreError>,
}

impl PartsState {
    fn lock(&self) -> std::sync::MutexGuard<'_, PartsInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn first_error(&self) -> Option<StoreError> {
        self.lock().error.clone()
    }

    fn wait_idle(&self) {
        let mut g = self.lock();
        while g.outstanding > 0 {
            g = self.changed.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// One object being written. Dropped without `finish`, it aborts: no half-written
/// object ever appears, and no upload is left open.
pub struct ObjectUpload {
    uploader: Arc<Uploader>,
    key: String,
    fixed_part_size: Option<u64>,
    fixed_size: Option<u64>,
    upload_id: Option<String>,
    /// The current part, when memory was short: its bytes so far, on disk.
    spilled: Option<(std::fs::File, usize)>,
    /// Where the bytes go instead if `key` is taken when the upload starts.
    fallback: Option<String>,
    buf: Vec<u8>,
    reservation: Option<Reservation>,
    next_part: u32,
    written: u64,
    state: Arc<PartsState>,
    finished: bool,
}

impl ObjectUpload {
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Writes to `key` instead if the first key is taken when the upload starts
    /// (an orphan upload of a crashed client, or another client's object).
    pub fn with_fallback(mut self, key: String) -> ObjectUpload {
        self.fallback = Some(key);
        self
    }

    /// Bytes accepted so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The bytes written so far, when none has left as a part yet: the caller
    /// takes them elsewhere and this upload ends with nothing sent.
    pub fn take_unsent(&mut self) -> Option<Vec<u8>> {
        if self.upload_id.is_some() {
            return None;
        }
        self.reservation = None;
        Some(std::mem::take(&mut self.buf))
    }

    fn part_size(&self, n: u32) -> u64 {
        self.fixed_part_size
            .unwrap_or_else(|| streaming_part_size(self.uploader.cfg.part_size, n))
    }

    /// Appends bytes. Full parts go to the workers. Waits only while parts are
    /// in flight. Returns `false`, taking nothing, when the memory budget is
    /// spent by idle buffers and this upload has sent nothing yet: the caller
    /// takes the unsent bytes (`take_unsent`) and goes on from disk instead.
    /// Fails as soon as any earlier part has failed.
    pub fn write(&mut self, mut data: &[u8]) -> Result<bool, StoreError> {
        if let Some(e) = self.state.first_error() {
            return Err(e);
        }
        if self.written + data.len() as u64 > rules::MAX_OBJECT_SIZE {
            return Err(StoreError::Invalid(format!(
                "{:?}: objects cannot exceed {} bytes",
                self.key,
                rules::MAX_OBJECT_SIZE
            )));
        }
        let mut taken = false;
        // A streamed file never overdraws: an idle writer could hold the
        // overdraft for good. It hands its bytes back (nothing sent yet) or
        // keeps its current part on disk.
        let streamed = self.fixed_size.is_none();
        let can_spill = self.uploader.spill_dir.is_some();
        while !data.is_empty() {
            let part_size = self.part_size(self.next_part) as usize;
            // A full buffer goes out only once more bytes arrive, so a file of
            // exactly one part still becomes a single PutObject.
            let held = self.buffered();
            if held >= part_size {
                self.send_part()?;
                continue;
            }
            let n = data.len().min(part_size - held);
            if let Some((file, len)) = self.spilled.as_mut() {
                file.write_all_at(&data[..n], *len as u64)
                    .map_err(|e| spill_error(&self.key, e))?;
                *len += n;
            } else if self.reserve(
                held + n,
                part_size,
                streamed && (can_spill || (self.upload_id.is_none() && !taken)),
            ) {
                self.buf.extend_from_slice(&data[..n]);
            } else if self.upload_id.is_none() && !taken {
                return Ok(false);
            } else {
                self.spill_part()?;
                continue;
            }
            self.written += n as u64;
            data = &data[n..];
            taken = true;
        }
        Ok(true)
    }

    /// Bytes of the current part so far.
    fn buffered(&self) -> usize {
        self.spilled.as_ref().map_or(self.buf.len(), |(_, n)| *n)
    }

    /// Moves the current part's bytes to a file and gives its memory back.
    fn spill_part(&mut self) -> Result<(), StoreError> {
        let Some(dir) = self.uploader.spill_dir.as_deref() else {
            return Err(StoreError::Invalid(format!(
                "{:?}: no directory to keep a part on disk",
                self.key
            )));
        };
        let file = tempfile::tempfile_in(dir).map_err(|e| spill_error(&self.key, e))?;
        file.write_all_at(&self.buf, 0)
            .map_err(|e| spill_error(&self.key, e))?;
        log::debug!(
            "{:?}: part {} goes to disk while upload memory is short",
            self.key,
            self.next_part
        );
        self.spilled = Some((file, self.buf.len()));
        self.buf = Vec::new();
        self.reservation = None;
        Ok(())
    }

    /// Brings a spilled part back into memory to send it at once: it may
    /// overdraw, since it goes straight to a worker.
    fn unspill(&mut self) -> Result<(), StoreError> {
        let Some((file, len)) = self.spilled.take() else {
            return Ok(());
        };
        let mut r = Reservation::new(&self.uploader.budget);
        r.grow(len as u64, false);
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, 0)
            .map_err(|e| spill_error(&self.key, e))?;
        self.buf = buf;
        self.reservation = Some(r);
        Ok(())
    }

    /// Makes the part buffer's reservation (and capacity) cover `want` bytes.
    /// Capacity grows by doubling up to `part_size`, so a small file holds
    /// little of the budget; a known size reserves what is left of it at once.
    fn reserve(&mut self, want: usize, part_size: usize, may_spill: bool) -> bool {
        const FIRST: usize = 64 << 10;
        let have = self.reservation.as_ref().map_or(0, |r| r.bytes) as usize;
        if want <= have {
            return true;
        }
        let target = match self.fixed_size {
            Some(total) => {
                let part_start = self.written - self.buf.len() as u64;
                (total.saturating_sub(part_start) as usize).clamp(1, part_size)
            }
            None => (have * 2).max(FIRST).min(part_size),
        }
        .max(want);
        let budget = &self.uploader.budget;
        let r = self
            .reservation
            .get_or_insert_with(|| Reservation::new(budget));
        if !r.grow((target - have) as u64, may_spill) {
            return false;
        }
        self.buf
            .reserve_exact(target.saturating_sub(self.buf.len()));
        true
    }

    /// Runs `op` on the key; if the key turns out to be taken (by another
    /// client's object or open upload), moves once to the fallback key.
    fn on_free_key<T>(
        &mut self,
        op: impl Fn(&dyn ObjectStore, &str) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let store = Arc::clone(&self.uploader.store);
        match op(store.as_ref(), &self.key) {
            Err(e) if key_taken(&e) && self.fallback.is_some() => {
                let to = self.fallback.take().unwrap_or_default();
                log::info!(
                    "{:?} is taken in the coffer ({e}); writing to {to:?} instead",
                    self.key
                );
                self.key = to;
                op(store.as_ref(), &self.key)
            }
            r => r,
        }
    }

    fn ensure_initiated(&mut self) -> Result<String, StoreError> {
        if let Some(id) = &self.upload_id {
            return Ok(id.clone());
        }
        let id = self.on_free_key(|s, k| s.initiate(k))?;
        log::debug!("{:?}: multipart upload {id} initiated", self.key);
        self.upload_id = Some(id.clone());
        Ok(id)
    }

    /// Hands the current buffer to a worker as the next part.
    fn send_part(&mut self) -> Result<(), StoreError> {
        let upload_id = self.ensure_initiated()?;
        self.unspill()?;
        let data = Bytes::from(std::mem::take(&mut self.buf));
        let mut reservation = self.reservation.take();
        if let Some(r) = reservation.as_mut() {
            r.launch();
        }
        let part_number = self.next_part;
        if part_number > rules::MAX_PARTS {
            return Err(StoreError::Invalid(format!(
                "{:?}: more than {} parts",
                self.key,
                rules::MAX_PARTS
            )));
        }
        self.next_part += 1;
        self.state.lock().outstanding += 1;
        let state = Arc::clone(&self.state);
        let store = Arc::clone(&self.uploader.store);
        let key = self.key.clone();
        let job = move || {
            let digest = md5(&data);
            let result = store.upload_part(&key, &upload_id, part_number, data, digest);
            drop(reservation);
            let mut g = state.lock();
            match result {
                Ok(_) => {
                    g.done.insert(part_number, hex(&digest));
                }
                Err(e) => {
                    log::error!(
                        "UploadPart {key:?} part {part_number} failed (upload {upload_id}, request id {}): {e}",
                        e.request_id()
                    );
                    g.error.get_or_insert(e);
                }
            }
            g.outstanding -= 1;
            state.changed.notify_all();
        };
        if let Err(e) = self.uploader.submit(job) {
            let mut g = self.state.lock();
            g.outstanding -= 1;
            g.error.get_or_insert(e.clone());
            return Err(e);
        }
        Ok(())
    }

    /// Waits for every part and completes the object (or puts it in one request
    /// when it never filled a part). Returns the object's ETag. On failure the
    /// upload is aborted and the error returned.
    pub fn finish(self) -> Result<String, StoreError> {
        self.finish_at().map(|(_, etag)| etag)
    }

    /// As `finish`, with the key the object landed at (the fallback key when
    /// the first was taken).
    pub fn finish_at(mut self) -> Result<(String, String), StoreError> {
        self.finished = true;
        match self.finish_inner() {
            Ok(etag) => Ok((self.key.clone(), etag)),
            Err(e) => {
                self.abort_upload();
                Err(e)
            }
        }
    }

    fn finish_inner(&mut self) -> Result<String, StoreError> {
        if let Some(e) = self.state.first_error() {
            return Err(e);
        }
        let store = Arc::clone(&self.uploader.store);
        if self.upload_id.is_none() {
            self.unspill()?;
            if self.buf.is_empty() {
                return Err(StoreError::Invalid(format!(
                    "{:?}: the coffer cannot hold empty objects (ObjectEmpty)",
                    self.key
                )));
            }
            let data = Bytes::from(std::mem::take(&mut self.buf));
            // A put progresses on its own: writers short of budget may wait for it.
            if let Some(r) = self.reservation.as_mut() {
                r.launch();
            }
            let want = hex(&md5(&data));
            let result = match self.on_free_key(|s, k| s.put(k, data.clone())) {
                Err(e) if !key_taken(&e) => self.landed_anyway(e, data.len() as u64, Some(&want)),
                r => r,
            };
            self.reservation = None;
            return result;
        }
        if self.buffered() > 0 {
            self.send_part()?;
        }
        self.state.wait_idle();
        let (parts, error) = {
            let g = self.state.lock();
            let parts: Vec<CompletedPart> = g
                .done
                .iter()
                .map(|(n, etag)| CompletedPart {
                    part_number: *n,
                    etag: etag.clone(),
                })
                .collect();
            (parts, g.error.clone())
        };
        if let Some(e) = error {
            return Err(e);
        }
        let expected = self.next_part - 1;
        if parts.len() as u32 != expected {
            return Err(StoreError::Invalid(format!(
                "{:?}: {} of {expected} parts uploaded",
                self.key,
                parts.len()
            )));
        }
        let id = self.upload_id.clone().unwrap_or_default();
        let size = self.written;
        let etag = match store.complete(&self.key, &id, &parts, size) {
            Err(e) if !key_taken(&e) => self.landed_anyway(e, size, None)?,
            r => r?,
        };
        // Completed: nothing to abort any more.
        self.upload_id = None;
        Ok(etag)
    }

    /// After a put or complete that failed (the request may have landed and
    /// only its answer been lost): success if the key now holds these bytes
    /// (`store::landed`: the size, and the MD5 where both are MD5s), else `e`.
    fn landed_anyway(
        &self,
        e: StoreError,
        size: u64,
        md5: Option<&str>,
    ) -> Result<String, StoreError> {
        match crate::store::landed(self.uploader.store.as_ref(), &self.key, size, md5) {
            Ok(Some(etag)) => {
                log::info!(
                    "{:?}: its answer was lost ({e}), but the object is there",
                    self.key
                );
                Ok(etag)
            }
            _ => Err(e),
        }
    }

    /// Abandons the object: waits for in-flight parts, then aborts the upload.
    pub fn abort(mut self) {
        self.finished = true;
        self.abort_upload();
    }

    fn abort_upload(&mut self) {
        self.buf = Vec::new();
        self.spilled = None;
        self.reservation = None;
        self.state.wait_idle();
        if let Some(id) = self.upload_id.take() {
            match self.uploader.store.abort(&self.key, &id) {
                Ok(()) => log::info!("{:?}: upload {id} aborted", self.key),
                Err(e) => log::error!(
                    "{:?}: cannot abort upload {id} (request id {}): {e}; `cofferfs uploads abort` removes it",
                    self.key,
                    e.request_id()
                ),
            }
        }
    }
}

impl Drop for ObjectUpload {
    fn drop(&mut self) {
        if !self.finished {
            self.abort_upload();
        }
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
