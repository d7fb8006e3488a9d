//! Files open for reading: a read handle holds the object version it opened
//! and reads it through the block cache; `kernel_cached` says whether the
//! kernel's pages from an earlier open are of the same version. Must not
//! change the view, the journal or the coffer.

use super::cache::{ObjectId, ReadState};
use super::error::{FsError, FsResult};
use super::handles::Handle;
use super::view::{Node, Origin};
use super::{lock, Fs};
use bytes::Bytes;
use std::sync::Mutex;

impl Fs {
    /// Opens `n` for reading; the flag says whether the kernel may keep pages
    /// it cached from an earlier open (the same object version).
    pub(super) fn open_read(&self, n: &Node) -> (u64, bool) {
        let object = n.data().map(|d| ObjectId {
            key: (*d.key).into(),
            etag: d.etag.to_string().into(),
            size: n.size,
        });
        let keep = match &object {
            // Pages of a file being written may be out of date at once.
            _ if n.origin == Origin::Writing => false,
            Some(o) => lock(&self.kernel_cached).insert(n.ino, o.clone()).as_ref() == Some(o),
            None => false,
        };
        let fh = self.add_file_handle(
            n.ino,
            Handle::Read {
                ino: n.ino,
                object,
                state: Mutex::new(ReadState::default()),
            },
        );
        (fh, keep)
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Bytes> {
        let h = self.handles.get(fh)?;
        let (ino, object, state) = match &*h {
            Handle::Read { ino, object, state } => (*ino, object, state),
            Handle::Write(w) => return self.read_written(w, offset, size),
            Handle::Dir(_) => return Err(FsError::new(libc::EISDIR, "read: a directory")),
        };
        // Another handle is writing the file: it holds what the file is now.
        if lock(&self.table).get(ino).map(|n| n.origin) == Some(Origin::Writing) {
            if let Some(w) = self.handles.writer_of(ino, None) {
                if let Handle::Write(w) = &*w {
                    return self.read_written(w, offset, size);
                }
            }
        }
        match object {
            Some(o) => self.cache.read(o, state, offset, size),
            None => Ok(Bytes::new()),
        }
    }
}
