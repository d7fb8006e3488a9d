//! WriteHandle: one file being written through the mount. Sequential writes stream
//! into an `ObjectUpload`; anything else (seek back, append to or edit of an
//! existing file) goes through a local staging file uploaded on close.
//! Knows nothing of inodes, the journal or FUSE.

use super::error::{FsError, FsResult};
use super::upload::{ObjectUpload, Uploader};
use crate::protocol::rules;
use crate::store::{ObjectStore, Range};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Taking bytes.
    Open,
    /// The object is stored; `etag` is its ETag.
    Completed { etag: String },
    /// The object did not land and never will from this handle.
    Failed,
}

/// What finishing a handle did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finished {
    /// The bytes are stored (now or earlier) under the handle's key.
    Stored { etag: String, size: u64 },
    /// Nothing was written: there is no object (the journal records an empty file).
    Empty,
    /// An edit that changed nothing: the old bytes stand.
    Unchanged,
}

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
    fn take(&self, n: u64) -> FsResult<()> {
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

    fn give_back(&self, n: u64) {
        self.used.fetch_sub(n, Ordering::SeqCst);
    }
}

enum Mode {
    /// An edit not yet begun: the old bytes are copied at the first change.
    Lazy {
        from: Option<String>,
        size: u64,
    },
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
    /// A new, empty file whose bytes go to `key`.
    pub fn new(uploader: &Arc<Uploader>, staging: &Arc<Staging>, key: &str) -> WriteHandle {
        WriteHandle {
            uploader: Arc::clone(uploader),
            staging: Arc::clone(staging),
            key: key.to_string(),
            mode: Mode::Stream(Some(uploader.begin(key, None))),
            state: State::Open,
            size: 0,
        }
    }

    /// An edit of existing bytes (object `from`, `size` bytes): at the first
    /// change they are copied to a staging file; the result goes to `key` on
    /// close. Opened and closed without a change (touch), nothing is uploaded.
    pub fn edit(
        uploader: &Arc<Uploader>,
        staging: &Arc<Staging>,
        key: &str,
        from: Option<&str>,
        size: u64,
    ) -> WriteHandle {
        WriteHandle {
            uploader: Arc::clone(uploader),
            staging: Arc::clone(staging),
            key: key.to_string(),
            mode: Mode::Lazy {
                from: from.map(str::to_string),
                size,
            },
            state: State::Open,
            size,
        }
    }

    /// Copies the old bytes of a lazy edit into a staging file.
    fn begin_edit(&mut self) -> FsResult<()> {
        let Mode::Lazy { from, size } = &self.mode else {
            return Ok(());
        };
        let (from, size) = (from.clone(), *size);
        self.size = 0;
        self.start_staging(&[])?;
        if let Some(src) = from {
            let store = Arc::clone(self.uploader.store());
            self.copy_in(store.as_ref(), &src, size)?;
        }
        Ok(())
    }

    fn copy_in(&mut self, store: &dyn ObjectStore, src: &str, size: u64) -> FsResult<()> {
        const CHUNK: u64 = 8 << 20;
        let mut at = 0;
        while at < size {
            let end = (at + CHUNK).min(size) - 1;
            let got = store
                .get(src, Some(Range::Bounded(at, end)))
                .map_err(|e| FsError::io(&format!("reading {src:?} to edit it"), &e))?;
            if got.start != at || got.data.len() as u64 != end + 1 - at {
                return Err(FsError::new(
                    libc::EIO,
                    format!("{src:?}: short read at {at}"),
                ));
            }
            self.write_at(at, &got.data)?;
            at = end + 1;
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
            State::Failed => Err(FsError::new(
                libc::EIO,
                format!(
                    "write {:?}: an earlier failure aborted this upload",
                    self.key
                ),
            )),
        }
    }

    /// Moves to a staging file, keeping `bytes` as its start.
    fn start_staging(&mut self, bytes: &[u8]) -> FsResult<()> {
        self.staging.take(bytes.len() as u64)?;
        let file = tempfile::tempfile_in(&self.staging.dir).map_err(|e| {
            io(
                &format!("staging file in {}", self.staging.dir.display()),
                e,
            )
        })?;
        file.write_all_at(bytes, 0)
            .map_err(|e| io("writing the staging file", e))?;
        self.mode = Mode::Staged {
            file,
            held: bytes.len() as u64,
        };
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

    /// Takes `data` at `offset`. Sequential writes stream; the first other write
    /// moves the file to staging when no part has left yet, and fails otherwise.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> FsResult<()> {
        self.check_open()?;
        let end = offset + data.len() as u64;
        if end > rules::MAX_OBJECT_SIZE {
            return Err(FsError::new(
                libc::EFBIG,
                format!(
                    "write {:?}: objects cannot exceed {} bytes",
                    self.key,
                    rules::MAX_OBJECT_SIZE
                ),
            ));
        }
        self.begin_edit()?;
        if let Mode::Stream(upload) = &mut self.mode {
            if offset == self.size {
                let Some(u) = upload.as_mut() else {
                    return Err(FsError::new(libc::EIO, "write: no upload"));
                };
                if let Err(e) = u.write(data) {
                    self.fail();
                    return Err(FsError::io(&format!("UploadPart {:?}", self.key), &e));
                }
                self.size = end;
                return Ok(());
            }
            let unsent = upload.as_mut().and_then(|u| u.take_unsent());
            let Some(bytes) = unsent else {
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
    pub fn truncate(&mut self, size: u64) -> FsResult<()> {
        self.check_open()?;
        if size == self.size {
            return Ok(());
        }
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
    /// failure aborts the upload and is `EIO`.
    pub fn finish(&mut self) -> FsResult<Finished> {
        match &self.state {
            State::Completed { etag } => {
                return Ok(Finished::Stored {
                    etag: etag.clone(),
                    size: self.size,
                })
            }
            State::Failed => {
                return Err(FsError::new(
                    libc::EIO,
                    format!("{:?}: an earlier failure aborted this upload", self.key),
                ))
            }
            State::Open => {}
        }
        if matches!(self.mode, Mode::Lazy { .. }) {
            return Ok(Finished::Unchanged);
        }
        if self.size == 0 {
            return Ok(Finished::Empty);
        }
        let result = match &mut self.mode {
            Mode::Lazy { .. } => return Ok(Finished::Unchanged),
            Mode::Stream(upload) => match upload.take() {
                Some(u) => u.finish(),
                None => return Err(FsError::new(libc::EIO, "finish: no upload")),
            },
            Mode::Staged { file, .. } => upload_file(&self.uploader, &self.key, file, self.size),
        };
        match result {
            Ok(etag) => {
                self.state = State::Completed { etag: etag.clone() };
                self.release_staging();
                Ok(Finished::Stored {
                    etag,
                    size: self.size,
                })
            }
            Err(e) => {
                self.fail();
                Err(FsError::io(
                    &format!("storing {:?} ({} bytes)", self.key, self.size),
                    &e,
                ))
            }
        }
    }

    fn release_staging(&mut self) {
        if let Mode::Staged { held, .. } = &mut self.mode {
            self.staging.give_back(*held);
            *held = 0;
        }
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
            self.state = State::Failed;
        }
    }

    fn fail(&mut self) {
        self.abandon();
        self.state = State::Failed;
    }
}

impl Drop for WriteHandle {
    fn drop(&mut self) {
        self.release_staging();
    }
}

/// Uploads a staging file of `size` bytes as `key`.
fn upload_file(
    uploader: &Arc<Uploader>,
    key: &str,
    file: &File,
    size: u64,
) -> Result<String, crate::store::StoreError> {
    let mut up = uploader.begin(key, Some(size));
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while at < size {
        let n = ((size - at) as usize).min(buf.len());
        file.read_exact_at(&mut buf[..n], at).map_err(|e| {
            crate::store::StoreError::Invalid(format!("reading the staging file of {key:?}: {e}"))
        })?;
        up.write(&buf[..n])?;
        at += n as u64;
    }
    up.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::upload::UploadConfig;
    use crate::store::memory::MemoryStore;

    fn setup() -> (
        Arc<MemoryStore>,
        Arc<Uploader>,
        Arc<Staging>,
        tempfile::TempDir,
    ) {
        let store = Arc::new(MemoryStore::new());
        let dyn_store: Arc<dyn ObjectStore> = store.clone();
        let up = Uploader::new(
            dyn_store,
            UploadConfig {
                part_size: 1 << 20,
                memory: 4 << 20,
                concurrency: 2,
            },
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let staging = Staging::new(dir.path(), 64 << 20);
        (store, up, staging, dir)
    }

    #[test]
    fn a_write_after_completion_is_refused_not_dropped() {
        let (store, up, st, _d) = setup();
        let mut h = WriteHandle::new(&up, &st, "k");
        h.write(0, b"abc").expect("write");
        assert!(matches!(h.finish(), Ok(Finished::Stored { size: 3, .. })));
        let e = h.write(3, b"d").expect_err("write after fsync");
        assert_eq!(e.errno, libc::EPERM);
        assert_eq!(store.object("k").as_deref(), Some(&b"abc"[..]));
    }

    #[test]
    fn a_seek_back_in_a_small_file_moves_it_to_staging() {
        let (store, up, st, _d) = setup();
        let mut h = WriteHandle::new(&up, &st, "k");
        h.write(0, b"hello world").expect("write");
        h.write(0, b"J").expect("seek back");
        h.write(20, b"!").expect("hole");
        assert!(matches!(h.finish(), Ok(Finished::Stored { size: 21, .. })));
        let mut want = b"Jello world".to_vec();
        want.resize(20, 0);
        want.push(b'!');
        assert_eq!(store.object("k").as_deref(), Some(&want[..]));
    }

    #[test]
    fn a_seek_back_after_parts_left_is_refused() {
        let (_store, up, st, _d) = setup();
        let mut h = WriteHandle::new(&up, &st, "k");
        h.write(0, &vec![1u8; 3 << 20]).expect("write");
        assert_eq!(h.write(1, b"x").map_err(|e| e.errno), Err(libc::EINVAL));
    }

    #[test]
    fn an_edit_appends_to_a_copy_of_the_old_bytes() {
        let (store, up, st, _d) = setup();
        store
            .put("old", bytes::Bytes::from_static(b"abc"))
            .expect("put");
        let mut h = WriteHandle::edit(&up, &st, "new", Some("old"), 3);
        h.write(3, b"def").expect("append");
        assert!(matches!(h.finish(), Ok(Finished::Stored { size: 6, .. })));
        assert_eq!(store.object("new").as_deref(), Some(&b"abcdef"[..]));
        assert_eq!(store.object("old").as_deref(), Some(&b"abc"[..]));
    }

    #[test]
    fn an_edit_without_changes_uploads_nothing() {
        let (store, up, st, _d) = setup();
        store
            .put("old", bytes::Bytes::from_static(b"abc"))
            .expect("put");
        let mut h = WriteHandle::edit(&up, &st, "new", Some("old"), 3);
        assert_eq!(h.finish(), Ok(Finished::Unchanged));
        assert!(store.object("new").is_none());
    }

    #[test]
    fn an_empty_file_is_reported_for_the_journal() {
        let (_store, up, st, _d) = setup();
        let mut h = WriteHandle::new(&up, &st, "k");
        assert_eq!(h.finish(), Ok(Finished::Empty));
        // Still open: a later write through another descriptor is kept.
        h.write(0, b"x").expect("write");
        assert!(matches!(h.finish(), Ok(Finished::Stored { size: 1, .. })));
    }

    #[test]
    fn a_failed_part_makes_finish_eio_and_leaves_no_object() {
        let (store, up, st, _d) = setup();
        *store.fail_parts.lock().unwrap() = (1..100).collect();
        let mut h = WriteHandle::new(&up, &st, "k");
        let _ = h.write(0, &vec![7u8; 3 << 20]);
        let e = h.finish().expect_err("must fail");
        assert_eq!(e.errno, libc::EIO);
        assert!(store.object("k").is_none());
        assert_eq!(store.open_uploads(), 0);
    }

    #[test]
    fn staging_beyond_its_limit_is_enospc() {
        let (_store, up, _st, d) = setup();
        let small = Staging::new(d.path(), 10);
        let mut h = WriteHandle::new(&up, &small, "k");
        h.write(0, b"12345").expect("write");
        h.write(0, b"x").expect("staged");
        assert_eq!(
            h.write(5, b"678901").map_err(|e| e.errno),
            Err(libc::ENOSPC)
        );
    }
}
