//! Point-in-time mounts (`--as-of`): the coffer as it stood at a past time.
//! `AsOfStore` hides the objects that came later (their `LastModified` is
//! after the time) wherever the view finds objects, and refuses every write;
//! `Fs::check_version` turns a file whose bound version the coffer has since
//! expired into ENOENT at lookup. The journal part is
//! `journal::Committer::open_as_of`. Must not change the view's rules for
//! mounts of the present.

use super::error::{FsError, FsResult};
use super::view::{Kind, RESERVED};
use super::{lock, Fs};
use crate::store::{
    CompletedPart, GetResult, ListPage, ObjectMeta, ObjectStore, PartsPage, Range, StoreError,
    UploadsPage,
};
use bytes::Bytes;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A store as of `until`: objects outside `.cofferfs/` whose `LastModified` is
/// after it are not there; `.cofferfs/` is read as it is (the journal is cut by
/// its keys' times, and data keys are reached only through records). Writes
/// fail: nothing may land from an as-of mount.
pub struct AsOfStore {
    inner: std::sync::Arc<dyn ObjectStore>,
    until: SystemTime,
}

impl AsOfStore {
    /// `until`: microseconds since the Unix epoch.
    pub fn new(inner: std::sync::Arc<dyn ObjectStore>, until: u64) -> AsOfStore {
        AsOfStore {
            inner,
            until: UNIX_EPOCH + Duration::from_micros(until),
        }
    }

    /// Whether the object existed at the time. `LastModified` has whole
    /// seconds; an object without one is shown.
    fn was_there(&self, m: &ObjectMeta) -> bool {
        m.key.starts_with(&format!("{RESERVED}/"))
            || m.last_modified.is_none_or(|t| t <= self.until)
    }

    fn refuse(&self, op: &str, key: &str) -> StoreError {
        StoreError::Invalid(format!(
            "{op} {key:?}: a mount as of a past time is read-only"
        ))
    }
}

impl ObjectStore for AsOfStore {
    fn coffer(&self) -> &str {
        self.inner.coffer()
    }

    fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        Ok(self.inner.head(key)?.filter(|m| self.was_there(m)))
    }

    fn get(&self, key: &str, range: Option<Range>) -> Result<GetResult, StoreError> {
        self.inner.get(key, range)
    }

    fn put(&self, key: &str, _data: Bytes) -> Result<String, StoreError> {
        Err(self.refuse("PutObject", key))
    }

    /// A page without the later objects; pages left empty by that are skipped,
    /// so an answer is empty only at the end of the listing.
    fn list(&self, prefix: &str, marker: &str, max_keys: u32) -> Result<ListPage, StoreError> {
        let mut marker = marker.to_string();
        loop {
            let mut page = self.inner.list(prefix, &marker, max_keys)?;
            page.objects.retain(|m| self.was_there(m));
            match &page.next_marker {
                Some(next) if page.objects.is_empty() && *next > marker => marker = next.clone(),
                _ => return Ok(page),
            }
        }
    }

    fn initiate(&self, key: &str) -> Result<String, StoreError> {
        Err(self.refuse("InitiateMultipartUpload", key))
    }

    fn upload_part(
        &self,
        key: &str,
        _upload_id: &str,
        _part_number: u32,
        _data: Bytes,
        _md5: [u8; 16],
    ) -> Result<String, StoreError> {
        Err(self.refuse("UploadPart", key))
    }

    fn list_parts(&self, key: &str, upload_id: &str, marker: u32) -> Result<PartsPage, StoreError> {
        self.inner.list_parts(key, upload_id, marker)
    }

    fn complete(
        &self,
        key: &str,
        _upload_id: &str,
        _parts: &[CompletedPart],
        _size: u64,
    ) -> Result<String, StoreError> {
        Err(self.refuse("CompleteMultipartUpload", key))
    }

    fn abort(&self, key: &str, _upload_id: &str) -> Result<(), StoreError> {
        Err(self.refuse("AbortMultipartUpload", key))
    }

    fn list_uploads(&self, prefix: &str, marker: &str) -> Result<UploadsPage, StoreError> {
        self.inner.list_uploads(prefix, marker)
    }
}

impl Fs {
    /// In a mount as of a past time: ENOENT for a file whose bytes are an
    /// object other than its own path's (an overwrite, a rename) that is gone
    /// now, expired by the coffer's lifecycle rule; logged once per object.
    /// Its own path's object was found by a listing or HEAD, so it is there.
    pub(in crate::fs) fn check_version(&self, ino: u64) -> FsResult<()> {
        if self.cfg.as_of.is_none() {
            return Ok(());
        }
        let (path, key) = {
            let t = lock(&self.table);
            match t.get(ino) {
                Some(n) if n.kind == Kind::File => {
                    let path = n.path();
                    match n.data() {
                        Some(d) if *d.key != *path => (path, String::from(d.key)),
                        _ => return Ok(()),
                    }
                }
                _ => return Ok(()),
            }
        };
        if let Some(&there) = lock(&self.versions_there).get(&key) {
            return if there {
                Ok(())
            } else {
                Err(FsError::not_found())
            };
        }
        let there = match self.store.head(&key) {
            Ok(m) => m.is_some(),
            Err(e) if e.is_not_found() => false,
            Err(e) => return Err(FsError::io(&format!("checking {key:?}"), &e)),
        };
        let mut known = lock(&self.versions_there);
        if known.len() >= 1 << 20 {
            known.clear();
        }
        if known.insert(key.clone(), there).is_none() && !there {
            log::warn!(
                "{path:?} as of this time is object {key:?}, which is gone from the coffer \
                 (expired by its lifecycle rule?): shown as absent"
            );
        }
        if there {
            Ok(())
        } else {
            Err(FsError::not_found())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use crate::store::ListAll;
    use std::sync::Arc;

    /// A store whose objects were all last modified at `at` (whole seconds).
    struct Dated {
        inner: MemoryStore,
        at: SystemTime,
    }

    impl Dated {
        fn date(&self, mut m: ObjectMeta) -> ObjectMeta {
            m.last_modified = Some(self.at);
            m
        }
    }

    impl ObjectStore for Dated {
        fn coffer(&self) -> &str {
            self.inner.coffer()
        }
        fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
            Ok(self.inner.head(key)?.map(|m| self.date(m)))
        }
        fn get(&self, key: &str, range: Option<Range>) -> Result<GetResult, StoreError> {
            self.inner.get(key, range)
        }
        fn put(&self, key: &str, data: Bytes) -> Result<String, StoreError> {
            self.inner.put(key, data)
        }
        fn list(&self, prefix: &str, marker: &str, max: u32) -> Result<ListPage, StoreError> {
            let mut p = self.inner.list(prefix, marker, max)?;
            p.objects = p.objects.into_iter().map(|m| self.date(m)).collect();
            Ok(p)
        }
        fn initiate(&self, key: &str) -> Result<String, StoreError> {
            self.inner.initiate(key)
        }
        fn upload_part(
            &self,
            key: &str,
            id: &str,
            n: u32,
            data: Bytes,
            md5: [u8; 16],
        ) -> Result<String, StoreError> {
            self.inner.upload_part(key, id, n, data, md5)
        }
        fn list_parts(&self, key: &str, id: &str, marker: u32) -> Result<PartsPage, StoreError> {
            self.inner.list_parts(key, id, marker)
        }
        fn complete(
            &self,
            key: &str,
            id: &str,
            parts: &[CompletedPart],
            size: u64,
        ) -> Result<String, StoreError> {
            self.inner.complete(key, id, parts, size)
        }
        fn abort(&self, key: &str, id: &str) -> Result<(), StoreError> {
            self.inner.abort(key, id)
        }
        fn list_uploads(&self, prefix: &str, marker: &str) -> Result<UploadsPage, StoreError> {
            self.inner.list_uploads(prefix, marker)
        }
    }

    #[test]
    fn objects_after_the_time_are_not_there_and_nothing_can_be_written() {
        let at = UNIX_EPOCH + Duration::from_secs(1_000);
        let dated = Arc::new(Dated {
            inner: MemoryStore::new(),
            at,
        });
        for k in ["a", "b/c", ".cofferfs/journal/x"] {
            dated.put(k, Bytes::from_static(b"1")).expect("put");
        }
        let micros = |s: u64| s * 1_000_000;
        let before = AsOfStore::new(dated.clone(), micros(1_000) - 1);
        assert_eq!(before.head("a").expect("head"), None);
        assert!(before.head(".cofferfs/journal/x").expect("head").is_some());
        let keys: Vec<String> = ListAll::new(&before, "")
            .map(|m| m.expect("list").key)
            .collect();
        assert_eq!(keys, [".cofferfs/journal/x"]);
        // Pages of one key left empty are skipped: an empty answer is the end.
        let page = before.list("", ".cofferfs/journal/x", 1).expect("list");
        assert!(page.objects.is_empty() && page.next_marker.is_none());
        let at_time = AsOfStore::new(dated, micros(1_000));
        assert!(at_time.head("a").expect("head").is_some());
        assert_eq!(ListAll::new(&at_time, "").count(), 3);
        assert!(at_time.put("n", Bytes::from_static(b"1")).is_err());
        assert!(at_time.initiate("n").is_err());
    }
}
