//! WriteHandle: one file being written through the mount. Sequential writes stream
//! into an `ObjectUpload`; anything else (seek back, append to or edit of an
//! existing file, a writer beyond the memory budget) goes through a local
//! staging file uploaded on close. A write out of order after parts went up
//! completes what they hold as a version of its own, which becomes the base of
//! a staged edit; so does a write after fsync or close. Reads see what the
//! handle wrote. A handle that failed once stays failed. Knows nothing of
//! inodes, the journal or FUSE.

use super::staging::Staging;
use crate::fs::error::{FsError, FsResult};
use crate::protocol::rules;
use crate::protocol::{etag_is_md5, hex, unquote_etag};
use crate::store::{ObjectStore, Range};
use crate::transfer::upload::{ObjectUpload, Uploader};
use md5::{Digest, Md5};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Taking bytes.
    Open,
    /// The object is stored at `key`; `etag` is its ETag. An empty `key`:
    /// stored as an empty file, which needs no object.
    Completed { key: String, etag: String },
    /// Poisoned: a write, truncate, copy-in or upload failed. Every later call
    /// fails with this first error, and nothing from this handle is stored.
    Failed(FsError),
}

/// What finishing a handle did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finished {
    /// The bytes are stored (now or earlier) at `key`.
    Stored {
        key: String,
        etag: String,
        size: u64,
    },
    /// Nothing was written: there is no object (the journal records an empty file).
    Empty,
    /// An edit that changed nothing: the old bytes stand.
    Unchanged,
}

/// The stored version an edit starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub key: String,
    pub etag: String,
    pub size: u64,
}

/// Where a read of a handle finds its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadFrom {
    /// In this stored version (read it through the block cache).
    Object(Source),
    /// These.
    Bytes(Vec<u8>),
}

enum Mode {
    /// An edit not yet begun: the old bytes are copied at the first change.
    Lazy(Option<Source>),
    Stream(Option<ObjectUpload>),
    Staged {
        file: File,
        held: u64,
    },
}

pub struct WriteHandle {
    uploader: Arc<Uploader>,
    staging: Arc<Staging>,
    /// Where the bytes go.
    key: String,
    /// Where they go instead if `key` is taken in the coffer.
    fallback: Option<String>,
    mode: Mode,
    state: State,
    /// Size of the file as written so far.
    size: u64,
    /// The base of a `Lazy` edit is a version this handle stored (out of order
    /// writes after parts went up, or a read of them): finished unchanged, that
    /// version is the file.
    made_base: bool,
    /// Keys this handle completed objects at, besides its last version's: the
    /// versions a later edit started from.
    landed: Vec<String>,
}

fn io(what: &str, e: std::io::Error) -> FsError {
    FsError::new(
        e.raw_os_error().unwrap_or(libc::EIO),
        format!("{what}: {e}"),
    )
}

impl WriteHandle {
    /// A new, empty file whose bytes go to `key` (or to `fallback`, if given,
    /// when `key` turns out to be taken in the coffer).
    pub fn new(
        uploader: &Arc<Uploader>,
        staging: &Arc<Staging>,
        key: &str,
        fallback: Option<String>,
    ) -> WriteHandle {
        let mut w = WriteHandle {
            uploader: Arc::clone(uploader),
            staging: Arc::clone(staging),
            key: key.to_string(),
            fallback,
            mode: Mode::Stream(None),
            state: State::Open,
            size: 0,
            made_base: false,
            landed: Vec::new(),
        };
        w.mode = Mode::Stream(Some(w.begin_upload(None)));
        w
    }

    /// An edit of existing bytes (`from`; `None` for an empty file): at the
    /// first change they are copied to a staging file; the result goes to `key`
    /// on close. Opened and closed without a change (touch), nothing is uploaded.
    pub fn edit(
        uploader: &Arc<Uploader>,
        staging: &Arc<Staging>,
        key: &str,
        from: Option<Source>,
    ) -> WriteHandle {
        WriteHandle {
            uploader: Arc::clone(uploader),
            staging: Arc::clone(staging),
            key: key.to_string(),
            fallback: None,
            size: from.as_ref().map_or(0, |s| s.size),
            mode: Mode::Lazy(from),
            state: State::Open,
            made_base: false,
            landed: Vec::new(),
        }
    }

    fn begin_upload(&self, size: Option<u64>) -> ObjectUpload {
        let up = self.uploader.begin(&self.key, size);
        match &self.fallback {
            Some(k) => up.with_fallback(k.clone()),
            None => up,
        }
    }

    /// Copies the old bytes of a lazy edit into a staging file.
    fn begin_edit(&mut self) -> FsResult<()> {
        let Mode::Lazy(from) = &self.mode else {
            return Ok(());
        };
        let from = from.clone();
        self.size = 0;
        self.start_staging(&[])?;
        if let Some(src) = from {
            let store = Arc::clone(self.uploader.store());
            self.copy_in(store.as_ref(), &src)?;
        }
        Ok(())
    }

    /// Copies `src` whole into the staging file, checking that every byte
    /// arrived: the length, and the MD5 where the ETag gives it.
    fn copy_in(&mut self, store: &dyn ObjectStore, src: &Source) -> FsResult<()> {
        const CHUNK: u64 = 8 << 20;
        let key = &src.key;
        let mut digest = Md5::new();
        let mut at = 0;
        while at < src.size {
            let end = (at + CHUNK).min(src.size) - 1;
            let got = store
                .get(key, Some(Range::Bounded(at, end)))
                .map_err(|e| FsError::io(&format!("reading {key:?} to edit it"), &e))?;
            if got.start != at
                || got.data.len() as u64 != end + 1 - at
                || got.object_size != src.size
            {
                return Err(FsError::new(
                    libc::EIO,
                    format!(
                        "{key:?}: copy for an edit got {} bytes at {} of an object of {} \
                         (wanted {} at {at} of {})",
                        got.data.len(),
                        got.start,
                        got.object_size,
                        end + 1 - at,
                        src.size
                    ),
                ));
            }
            digest.update(&got.data);
            self.write_at(at, &got.data)?;
            at = end + 1;
        }
        // A multipart ETag (`…-N`) is not the object's MD5; the length must do.
        if etag_is_md5(&src.etag) {
            let want = unquote_etag(&src.etag);
            let have = hex(&digest.finalize());
            if !have.eq_ignore_ascii_case(want) {
                return Err(FsError::new(
                    libc::EIO,
                    format!("{key:?}: copy for an edit has MD5 {have}, its ETag says {want}"),
                ));
            }
        }
        Ok(())
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// Size of the file as written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn is_open(&self) -> bool {
        self.state == State::Open
    }

    /// An fsync or close stored the bytes and the handle is still open.
    pub fn is_completed(&self) -> bool {
        matches!(self.state, State::Completed { .. })
    }

    /// Keys this handle stored earlier versions at (before a write after
    /// fsync, or one out of order after parts went up).
    pub fn landed(&self) -> impl Iterator<Item = &str> {
        self.landed.iter().map(String::as_str)
    }

    /// After an fsync or close stored the bytes, a write or truncate begins a
    /// new version: an edit of the stored one, to a fresh key (the coffer is
    /// write-once). The edit copies it in at its first change.
    pub fn reopen(&mut self) {
        let State::Completed { key, etag } = &self.state else {
            return;
        };
        if key.is_empty() {
            // Stored empty: nothing went anywhere, so the bytes stream to the
            // same key as a new file's.
            self.state = State::Open;
            self.mode = Mode::Stream(Some(self.begin_upload(None)));
            return;
        }
        let from = Source {
            key: key.clone(),
            etag: etag.clone(),
            size: self.size,
        };
        self.landed
            .push(std::mem::replace(&mut self.key, crate::fs::data_key()));
        self.fallback = None;
        self.made_base = false;
        self.state = State::Open;
        // A staging file still holds the stored bytes: go on from it.
        if let Mode::Staged { held, .. } = &mut self.mode {
            if *held == 0 && self.staging.take(self.size).is_ok() {
                *held = self.size;
                return;
            }
        }
        self.release_staging();
        self.mode = Mode::Lazy(Some(from));
    }

    fn check_open(&self) -> FsResult<()> {
        match &self.state {
            State::Open => Ok(()),
            State::Completed { .. } => Err(FsError::new(
                libc::EIO,
                format!("{:?}: stored already; reopen for a new version", self.key),
            )),
            State::Failed(e) => Err(e.clone()),
        }
    }

    /// Whether a write (or truncate) at `offset..end`, or a read of it, would
    /// complete what went up as parts as an object of its own first.
    pub fn would_complete(&self, offset: u64, end: u64, read: bool) -> bool {
        let Mode::Stream(Some(u)) = &self.mode else {
            return false;
        };
        if !u.sent_any() || self.state != State::Open {
            return false;
        }
        if read {
            let end = end.min(self.size);
            offset < end && !u.tail_covers(offset, end)
        } else {
            offset != self.size
        }
    }

    /// An empty file's close stored it (as a journal record): the handle is
    /// done until a write begins a new version.
    pub fn complete_empty(&mut self) {
        if self.state != State::Open || self.size != 0 {
            return;
        }
        if let Mode::Stream(upload) = &mut self.mode {
            // Nothing was sent: dropping it aborts nothing.
            upload.take();
        }
        self.release_staging();
        self.state = State::Completed {
            key: String::new(),
            etag: String::new(),
        };
    }

    /// What `offset..offset + len` holds, as this handle wrote it.
    pub fn read(&mut self, offset: u64, len: u32) -> FsResult<ReadFrom> {
        match &self.state {
            State::Failed(e) => return Err(e.clone()),
            State::Completed { key, .. } if key.is_empty() => {
                return Ok(ReadFrom::Bytes(Vec::new()))
            }
            State::Completed { key, etag } => {
                return Ok(ReadFrom::Object(Source {
                    key: key.clone(),
                    etag: etag.clone(),
                    size: self.size,
                }))
            }
            State::Open => {}
        }
        let len = u64::from(len).min(self.size.saturating_sub(offset)) as usize;
        if len == 0 {
            return Ok(ReadFrom::Bytes(Vec::new()));
        }
        match &self.mode {
            Mode::Lazy(Some(src)) => return Ok(ReadFrom::Object(src.clone())),
            Mode::Lazy(None) => return Ok(ReadFrom::Bytes(Vec::new())),
            Mode::Staged { file, .. } => {
                let mut buf = vec![0u8; len];
                let n = read_full_at(file, &mut buf, offset)
                    .map_err(|e| io("reading the staging file", e))?;
                buf.truncate(n);
                return Ok(ReadFrom::Bytes(buf));
            }
            Mode::Stream(Some(u)) => {
                let mut buf = vec![0u8; len];
                let tail = u
                    .read_tail(offset, &mut buf)
                    .map_err(|e| FsError::io(&format!("reading back {:?}", self.key), &e));
                match tail {
                    Ok(true) => return Ok(ReadFrom::Bytes(buf)),
                    Ok(false) => {}
                    Err(e) => return Err(self.poison(e)),
                }
            }
            Mode::Stream(None) => {}
        }
        // Some of it already left as parts, which cannot be read back: what
        // they hold becomes a version to read (and to edit from).
        self.convert().map_err(|e| self.poison(e))?;
        match &self.mode {
            Mode::Lazy(Some(src)) => Ok(ReadFrom::Object(src.clone())),
            _ => Err(self.poison(FsError::new(libc::EIO, "read: no version to read"))),
        }
    }

    /// A streamed file whose parts went up: completes the object (the parts
    /// cannot be read back or replaced) and makes it the base of a lazy edit
    /// to a fresh key.
    fn convert(&mut self) -> FsResult<()> {
        let Mode::Stream(upload) = &mut self.mode else {
            return Ok(());
        };
        let Some(u) = upload.take() else {
            return Err(FsError::new(libc::EIO, "no upload"));
        };
        let (key, etag) = u.finish_at().map_err(|e| {
            FsError::io(
                &format!("storing the first {} bytes of {:?}", self.size, self.key),
                &e,
            )
        })?;
        log::info!(
            "{key:?}: written out of order after {} bytes went up; they are stored as a \
             version of their own and the file goes on from a local copy",
            self.size
        );
        self.mode = Mode::Lazy(Some(Source {
            key: key.clone(),
            etag,
            size: self.size,
        }));
        self.made_base = true;
        self.landed.push(key);
        self.key = crate::fs::data_key();
        self.fallback = None;
        Ok(())
    }

    /// Moves to a staging file, keeping `bytes` as its start.
    fn start_staging(&mut self, bytes: &[u8]) -> FsResult<()> {
        self.staging.take(bytes.len() as u64)?;
        // Accounted from here on, so that a failure below gives it back.
        self.mode = Mode::Staged {
            file: tempfile::tempfile_in(&self.staging.dir).map_err(|e| {
                self.staging.give_back(bytes.len() as u64);
                io(
                    &format!("staging file in {}", self.staging.dir.display()),
                    e,
                )
            })?,
            held: bytes.len() as u64,
        };
        if let Mode::Staged { file, .. } = &self.mode {
            file.write_all_at(bytes, 0)
                .map_err(|e| io("writing the staging file", e))?;
        }
        Ok(())
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> FsResult<()> {
        let end = offset + data.len() as u64;
        let Mode::Staged { file, held } = &mut self.mode else {
            return Err(FsError::new(libc::EIO, "write_at: not staged"));
        };
        if end > *held {
            self.staging.take(end - *held)?;
            *held = end;
        }
        file.write_all_at(data, offset)
            .map_err(|e| io("writing the staging file", e))?;
        self.size = self.size.max(end);
        Ok(())
    }

    /// Records the first failure: the handle is poisoned and gives up its
    /// upload and staging file. Returns the error for the caller.
    fn poison(&mut self, e: FsError) -> FsError {
        if let State::Failed(first) = &self.state {
            return first.clone();
        }
        self.abandon();
        self.state = State::Failed(e.clone());
        e
    }

    /// Takes `data` at `offset`. Sequential writes stream; the first other write
    /// moves the file to staging when no part has left yet, and fails otherwise.
    /// Any failure poisons the handle.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> FsResult<()> {
        self.check_open()?;
        let end = offset + data.len() as u64;
        if end > rules::MAX_OBJECT_SIZE {
            return Err(self.poison(FsError::new(
                libc::EFBIG,
                format!(
                    "write {:?}: objects cannot exceed {} bytes",
                    self.key,
                    rules::MAX_OBJECT_SIZE
                ),
            )));
        }
        self.write_inner(offset, data).map_err(|e| self.poison(e))
    }

    fn write_inner(&mut self, offset: u64, data: &[u8]) -> FsResult<()> {
        self.begin_edit()?;
        if !self.streams(offset, data)? {
            self.begin_edit()?;
            self.write_at(offset, data)?;
        }
        Ok(())
    }

    /// Takes a write into the stream when it continues it; else moves the
    /// handle off the stream (to staging, or to an edit of what went up) and
    /// says false.
    fn streams(&mut self, offset: u64, data: &[u8]) -> FsResult<bool> {
        if let Mode::Stream(upload) = &mut self.mode {
            let Some(u) = upload.as_mut() else {
                return Err(FsError::new(libc::EIO, "write: no upload"));
            };
            if offset == self.size {
                let taken = u
                    .write(data)
                    .map_err(|e| FsError::io(&format!("UploadPart {:?}", self.key), &e))?;
                if taken {
                    self.size = end_of(offset, data);
                    return Ok(true);
                }
                // The memory budget is held by other writers' buffers: go on from disk.
            }
            self.leave_stream()?;
        }
        Ok(false)
    }

    /// Goes on from a staging file (nothing went up yet) or from a version of
    /// what went up.
    fn leave_stream(&mut self) -> FsResult<()> {
        let Mode::Stream(upload) = &mut self.mode else {
            return Ok(());
        };
        match upload.as_mut().and_then(|u| u.take_unsent()) {
            Some(bytes) => {
                *upload = None;
                self.start_staging(&bytes)
            }
            None => self.convert(),
        }
    }

    /// Sets the size (ftruncate): the same size is a no-op; anything else stages.
    /// A failure poisons the handle.
    pub fn truncate(&mut self, size: u64) -> FsResult<()> {
        self.check_open()?;
        if size == self.size {
            return Ok(());
        }
        self.truncate_inner(size).map_err(|e| self.poison(e))
    }

    fn truncate_inner(&mut self, size: u64) -> FsResult<()> {
        self.begin_edit()?;
        self.leave_stream()?;
        self.begin_edit()?;
        let Mode::Staged { file, held } = &mut self.mode else {
            return Err(FsError::new(libc::EIO, "truncate: not staged"));
        };
        if size > *held {
            self.staging.take(size - *held)?;
            *held = size;
        }
        file.set_len(size)
            .map_err(|e| io("resizing the staging file", e))?;
        self.size = size;
        Ok(())
    }

    /// Waits for every part and completes the object (close, fsync). Any
    /// failure poisons the handle (the upload is aborted).
    pub fn finish(&mut self) -> FsResult<Finished> {
        match &self.state {
            State::Completed { key, .. } if key.is_empty() => return Ok(Finished::Empty),
            State::Completed { key, etag } => {
                return Ok(Finished::Stored {
                    key: key.clone(),
                    etag: etag.clone(),
                    size: self.size,
                })
            }
            State::Failed(e) => return Err(e.clone()),
            State::Open => {}
        }
        if let Mode::Lazy(from) = &self.mode {
            // A base this handle made is the file as written.
            return match from {
                Some(src) if self.made_base => {
                    self.key = src.key.clone();
                    self.landed.retain(|k| *k != src.key);
                    self.state = State::Completed {
                        key: src.key.clone(),
                        etag: src.etag.clone(),
                    };
                    Ok(Finished::Stored {
                        key: src.key.clone(),
                        etag: src.etag.clone(),
                        size: self.size,
                    })
                }
                _ => Ok(Finished::Unchanged),
            };
        }
        if self.size == 0 {
            return Ok(Finished::Empty);
        }
        let staged = matches!(self.mode, Mode::Staged { .. });
        let up = staged.then(|| self.begin_upload(Some(self.size)));
        let result = match (&mut self.mode, up) {
            (Mode::Stream(upload), _) => match upload.take() {
                Some(u) => u.finish_at(),
                None => return Err(self.poison(FsError::new(libc::EIO, "finish: no upload"))),
            },
            (Mode::Staged { file, .. }, Some(up)) => upload_file(up, file, self.size),
            _ => return Ok(Finished::Unchanged),
        };
        match result {
            Ok((key, etag)) => {
                self.key = key.clone();
                self.state = State::Completed {
                    key: key.clone(),
                    etag: etag.clone(),
                };
                self.release_staging();
                Ok(Finished::Stored {
                    key,
                    etag,
                    size: self.size,
                })
            }
            Err(e) => {
                let e = FsError::io(&format!("storing {:?} ({} bytes)", self.key, self.size), &e);
                Err(self.poison(e))
            }
        }
    }

    fn release_staging(&mut self) {
        if let Mode::Staged { held, .. } = &mut self.mode {
            self.staging.give_back(*held);
            *held = 0;
        }
    }

    /// Poisons the handle with `e` even after its object was completed: what
    /// the object was for (its record) failed, so nothing of it stands.
    pub fn fail_with(&mut self, e: FsError) {
        self.abandon();
        self.state = State::Failed(e);
    }

    /// Gives up: aborts any multipart upload, drops the staging file.
    pub fn abandon(&mut self) {
        if let Mode::Stream(upload) = &mut self.mode {
            if let Some(u) = upload.take() {
                u.abort();
            }
        }
        self.release_staging();
        if self.state == State::Open {
            self.state = State::Failed(FsError::new(
                libc::EIO,
                format!("{:?}: this write was abandoned", self.key),
            ));
        }
    }
}

/// Reads into `buf` from `at` until it is full or the file ends; the count read.
fn read_full_at(file: &File, buf: &mut [u8], at: u64) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], at + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn end_of(offset: u64, data: &[u8]) -> u64 {
    offset + data.len() as u64
}

impl Drop for WriteHandle {
    fn drop(&mut self) {
        self.release_staging();
    }
}

/// Uploads a staging file of `size` bytes through `up`; returns the key it
/// landed at and its ETag.
fn upload_file(
    mut up: ObjectUpload,
    file: &File,
    size: u64,
) -> Result<(String, String), crate::store::StoreError> {
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while at < size {
        let n = ((size - at) as usize).min(buf.len());
        file.read_exact_at(&mut buf[..n], at).map_err(|e| {
            crate::store::StoreError::Invalid(format!(
                "reading the staging file of {:?}: {e}",
                up.key()
            ))
        })?;
        // A known size never spills: it waits for parts in flight or overdraws.
        up.write(&buf[..n])?;
        at += n as u64;
    }
    up.finish_at()
}

#[cfg(test)]
mod tests;
