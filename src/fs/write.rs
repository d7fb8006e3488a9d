//! WriteHandle: one file being written through the mount — sequential bytes into an
//! `ObjectUpload`; flush/fsync complete it. Knows nothing of inodes or FUSE.

use super::error::{FsError, FsResult};
use super::upload::{ObjectUpload, Uploader};
use crate::protocol::rules;
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
    /// The object is stored (now or earlier) with this ETag and size.
    Stored { etag: String, size: u64 },
    /// Nothing was written: the coffer cannot hold an empty object.
    Empty,
}

pub struct WriteHandle {
    key: String,
    upload: Option<ObjectUpload>,
    state: State,
    written: u64,
}

impl WriteHandle {
    pub fn new(uploader: &Arc<Uploader>, key: &str) -> WriteHandle {
        WriteHandle {
            key: key.to_string(),
            upload: Some(uploader.begin(key, None)),
            state: State::Open,
            written: 0,
        }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// Bytes accepted so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    pub fn is_open(&self) -> bool {
        self.state == State::Open
    }

    /// Takes `data` at `offset`; only sequential writes are possible on a
    /// write-once store without staging.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> FsResult<()> {
        match &self.state {
            State::Open => {}
            State::Completed { .. } => {
                return Err(FsError::new(
                    libc::EPERM,
                    format!(
                        "write {:?}: the object was already completed (by fsync or an earlier \
                         close) and the coffer is write-once; these bytes are not stored",
                        self.key
                    ),
                ))
            }
            State::Failed => {
                return Err(FsError::new(
                    libc::EIO,
                    format!(
                        "write {:?}: an earlier failure aborted this upload",
                        self.key
                    ),
                ))
            }
        }
        if offset != self.written {
            return Err(FsError::new(
                libc::EINVAL,
                format!(
                    "write {:?} at offset {offset}, but {} bytes were written: only sequential \
                     writes can go to a write-once coffer",
                    self.key, self.written
                ),
            ));
        }
        if self.written + data.len() as u64 > rules::MAX_OBJECT_SIZE {
            return Err(FsError::new(
                libc::EFBIG,
                format!(
                    "write {:?}: objects cannot exceed {} bytes",
                    self.key,
                    rules::MAX_OBJECT_SIZE
                ),
            ));
        }
        let Some(upload) = self.upload.as_mut() else {
            return Err(FsError::new(libc::EIO, "write: no upload"));
        };
        if let Err(e) = upload.write(data) {
            self.fail();
            return Err(FsError::io(&format!("UploadPart {:?}", self.key), &e));
        }
        self.written += data.len() as u64;
        Ok(())
    }

    /// Waits for every part and completes the object. An empty file stays open
    /// (a later write may still come through a dup'd descriptor) and reports
    /// `Empty`. Any failure aborts the upload and is `EIO`.
    pub fn finish(&mut self) -> FsResult<Finished> {
        match &self.state {
            State::Completed { etag } => {
                return Ok(Finished::Stored {
                    etag: etag.clone(),
                    size: self.written,
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
        if self.written == 0 {
            return Ok(Finished::Empty);
        }
        let Some(upload) = self.upload.take() else {
            return Err(FsError::new(libc::EIO, "finish: no upload"));
        };
        match upload.finish() {
            Ok(etag) => {
                self.state = State::Completed { etag: etag.clone() };
                Ok(Finished::Stored {
                    etag,
                    size: self.written,
                })
            }
            Err(e) => {
                self.state = State::Failed;
                Err(FsError::io(
                    &format!("storing {:?} ({} bytes)", self.key, self.written),
                    &e,
                ))
            }
        }
    }

    /// Gives up: aborts any multipart upload. Nothing becomes visible.
    pub fn abandon(&mut self) {
        if let Some(u) = self.upload.take() {
            u.abort();
        }
        if self.state == State::Open {
            self.state = State::Failed;
        }
    }

    fn fail(&mut self) {
        self.abandon();
        self.state = State::Failed;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::upload::UploadConfig;
    use crate::store::memory::MemoryStore;
    use crate::store::ObjectStore;

    fn uploader(store: &Arc<MemoryStore>) -> Arc<Uploader> {
        let dyn_store: Arc<dyn ObjectStore> = store.clone();
        Uploader::new(
            dyn_store,
            UploadConfig {
                part_size: 1 << 20,
                memory: 4 << 20,
                concurrency: 2,
            },
        )
    }

    #[test]
    fn a_write_after_completion_is_refused_not_dropped() {
        let store = Arc::new(MemoryStore::new());
        let mut h = WriteHandle::new(&uploader(&store), "k");
        h.write(0, b"abc").expect("write");
        assert!(matches!(h.finish(), Ok(Finished::Stored { size: 3, .. })));
        let e = h.write(3, b"d").expect_err("write after fsync");
        assert_eq!(e.errno, libc::EPERM);
        assert_eq!(store.object("k").as_deref(), Some(&b"abc"[..]));
    }

    #[test]
    fn a_seek_back_is_refused() {
        let store = Arc::new(MemoryStore::new());
        let mut h = WriteHandle::new(&uploader(&store), "k");
        h.write(0, b"abc").expect("write");
        assert_eq!(h.write(1, b"x").map_err(|e| e.errno), Err(libc::EINVAL));
    }

    #[test]
    fn an_empty_file_is_reported_not_faked() {
        let store = Arc::new(MemoryStore::new());
        let mut h = WriteHandle::new(&uploader(&store), "k");
        assert_eq!(h.finish(), Ok(Finished::Empty));
        // Still open: a later write through another descriptor is kept.
        h.write(0, b"x").expect("write");
        assert!(matches!(h.finish(), Ok(Finished::Stored { size: 1, .. })));
    }

    #[test]
    fn a_failed_part_makes_finish_eio_and_leaves_no_object() {
        let store = Arc::new(MemoryStore::new());
        *store.fail_parts.lock().unwrap() = (1..100).collect();
        let mut h = WriteHandle::new(&uploader(&store), "k");
        let data = vec![7u8; 3 << 20];
        let _ = h.write(0, &data);
        let e = h.finish().expect_err("must fail");
        assert_eq!(e.errno, libc::EIO);
        assert!(store.object("k").is_none());
        assert_eq!(store.open_uploads(), 0);
    }
}
