//! `ObjectUpload`: one object being written through the `Uploader` — its part
//! buffer (in memory under the budget, or spilled to disk), part numbering,
//! the results of its parts, and how it ends: one PutObject, a
//! CompleteMultipartUpload, or an abort. Never reports success for bytes the
//! store has not acknowledged. Knows objects and parts, not files or FUSE.

use super::budget::Reservation;
use super::upload::Uploader;
use crate::protocol::rules::{self, part_size_for, streaming_part_size};
use crate::protocol::{hex, md5};
use crate::store::{CompletedPart, ObjectStore, StoreError};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Condvar, Mutex};

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
    /// `buf` is on loan from the uploader's spares.
    lent: bool,
    reservation: Option<Reservation>,
    next_part: u32,
    written: u64,
    state: Arc<PartsState>,
    finished: bool,
}

impl ObjectUpload {
    /// Begins writing `key` (`Uploader::begin`).
    pub(super) fn new(uploader: Arc<Uploader>, key: &str, size: Option<u64>) -> ObjectUpload {
        ObjectUpload {
            key: key.to_string(),
            fixed_part_size: size.map(|s| part_size_for(uploader.cfg.part_size, Some(s))),
            uploader,
            fixed_size: size,
            upload_id: None,
            spilled: None,
            fallback: None,
            buf: Vec::new(),
            lent: false,
            reservation: None,
            next_part: 1,
            written: 0,
            state: Arc::new(PartsState::default()),
            finished: false,
        }
    }

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
        Some(self.take_buf())
    }

    /// Whether parts already went up: what they hold cannot be read back or
    /// changed, only completed.
    pub fn sent_any(&self) -> bool {
        self.upload_id.is_some()
    }

    /// Whether bytes `at..end` are all still in the current part.
    pub fn tail_covers(&self, at: u64, end: u64) -> bool {
        at >= self.written - self.buffered() as u64 && end <= self.written
    }

    /// Copies bytes `at..at + out.len()` into `out` when all of them are still
    /// in the current part (in memory or spilled): a read-back of what was
    /// just written. False when some of them already left as a part.
    pub fn read_tail(&self, at: u64, out: &mut [u8]) -> Result<bool, StoreError> {
        if !self.tail_covers(at, at + out.len() as u64) {
            return Ok(false);
        }
        let off = at - (self.written - self.buffered() as u64);
        match &self.spilled {
            Some((file, _)) => file
                .read_exact_at(out, off)
                .map_err(|e| spill_error(&self.key, e))?,
            None => {
                let off = off as usize;
                out.copy_from_slice(&self.buf[off..off + out.len()]);
            }
        }
        Ok(true)
    }

    /// Takes the part buffer out (ending its loan, if it was lent).
    fn take_buf(&mut self) -> Vec<u8> {
        if std::mem::take(&mut self.lent) {
            self.uploader.spares.returned();
        }
        std::mem::take(&mut self.buf)
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
        self.take_buf();
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
        // A part that will fill (a known size's whole part, a streamed file's
        // after its first) starts in a spare buffer when one is free.
        let fills = match self.fixed_size {
            Some(_) => target == part_size,
            None => self.next_part > 1,
        };
        if fills && self.buf.capacity() == 0 {
            if let Some(v) = self.uploader.spares.lend(part_size) {
                self.buf = v;
                self.lent = true;
            }
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
        let data = Bytes::from(self.take_buf());
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
        let spares = Arc::clone(&self.uploader.spares);
        let key = self.key.clone();
        let job = move || {
            let digest = md5(&data);
            let result = store.upload_part(&key, &upload_id, part_number, data.clone(), digest);
            spares.give(data);
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
            let data = Bytes::from(self.take_buf());
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
        self.take_buf();
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
