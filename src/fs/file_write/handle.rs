//! WriteHandle: one file being written through the mount. Sequential writes stream
//! into an `ObjectUpload`; anything else (seek back, append to or edit of an
//! existing file, a writer beyond the memory budget) goes through a local
//! staging file uploaded on close. A handle that failed once stays failed.
//! Knows nothing of inodes, the journal or FUSE.

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
    /// The object is stored at `key`; `etag` is its ETag.
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

    fn check_open(&self) -> FsResult<()> {
        match &self.state {
            State::Open => Ok(()),
            State::Completed { .. } => Err(FsError::new(
                libc::EPERM,
                format!(
                    "write {:?}: the object was already completed (by fsync or an earlier \
                     close) and the coffer is write-once; these bytes are not stored",
                    self.key
                ),
            )),
            State::Failed(e) => Err(e.clone()),
        }
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
                    return Ok(());
                }
                // The memory budget is held by other writers' buffers: go on from disk.
            }
            let Some(bytes) = u.take_unsent() else {
                return Err(FsError::new(
                    libc::EINVAL,
                    format!(
                        "write {:?} at offset {offset} after {} bytes already went up in \
                         parts: a file this large can only be written sequentially",
                        self.key, self.size
                    ),
                ));
            };
            *upload = None;
            self.start_staging(&bytes)?;
        }
        self.write_at(offset, data)
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
        if let Mode::Stream(upload) = &mut self.mode {
            let unsent = upload.as_mut().and_then(|u| u.take_unsent());
            let Some(bytes) = unsent else {
                return Err(FsError::new(
                    libc::EINVAL,
                    format!(
                        "truncate {:?}: its first parts are already uploaded",
                        self.key
                    ),
                ));
            };
            *upload = None;
            self.start_staging(&bytes)?;
        }
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
        if matches!(self.mode, Mode::Lazy(_)) {
            return Ok(Finished::Unchanged);
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
