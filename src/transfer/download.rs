//! The ranged-GET downloader behind `cofferfs get`: an object into a local file
//! by parallel ranged GETs, written to a temporary file beside the target and
//! renamed into place only when every byte arrived. Knows objects, ranges and
//! the one file it writes; never prints (progress goes to a callback).

use crate::store::{ObjectMeta, ObjectStore, Range, StoreError};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{key:?} changed during the download (ETag {before} then {after})")]
    Changed {
        key: String,
        before: String,
        after: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DownloadError + '_ {
    move |source| DownloadError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Downloads the object `meta` describes into `file`, `chunk` bytes per GET,
/// `concurrency` GETs at once. Every range must come back whole and of the
/// same version (ETag) as `meta`. `progress` hears of each range written.
/// On failure `file` is untouched and the temporary file removed.
pub fn download(
    store: &dyn ObjectStore,
    meta: &ObjectMeta,
    file: &Path,
    chunk: u64,
    concurrency: usize,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(), DownloadError> {
    let key = meta.key.as_str();
    let dir = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".cofferfs-get-")
        .tempfile_in(&dir)
        .map_err(io_err(&dir))?;
    tmp.as_file().set_len(meta.size).map_err(io_err(file))?;
    let chunk = chunk.max(1);
    let chunks = meta.size.div_ceil(chunk);
    let next = AtomicU64::new(0);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<DownloadError>> = Mutex::new(None);
    // Workers claim the next range until none is left or one has failed; a
    // scoped set rather than a `Pool`, since they borrow the file and counters.
    std::thread::scope(|s| {
        for _ in 0..concurrency.max(1) {
            s.spawn(|| {
                while !failed.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= chunks {
                        return;
                    }
                    let start = i * chunk;
                    let end = (start + chunk).min(meta.size) - 1;
                    let result = store
                        .get(key, Some(Range::Bounded(start, end)))
                        .map_err(DownloadError::from)
                        .and_then(|r| {
                            if r.start != start || r.data.len() as u64 != end - start + 1 {
                                return Err(DownloadError::Store(StoreError::BadAnswer {
                                    op: "GetObject",
                                    key: key.to_string(),
                                    detail: format!(
                                        "asked for {start}-{end}, got {} bytes at {}",
                                        r.data.len(),
                                        r.start
                                    ),
                                    request_id: String::new(),
                                }));
                            }
                            if !meta.etag.is_empty() && !r.etag.is_empty() && r.etag != meta.etag {
                                return Err(DownloadError::Changed {
                                    key: key.to_string(),
                                    before: meta.etag.clone(),
                                    after: r.etag,
                                });
                            }
                            tmp.as_file()
                                .write_all_at(&r.data, start)
                                .map_err(io_err(file))?;
                            progress(r.data.len() as u64);
                            Ok(())
                        });
                    if let Err(e) = result {
                        failed.store(true, Ordering::Relaxed);
                        first_error
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get_or_insert(e);
                        return;
                    }
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    tmp.as_file().sync_all().map_err(io_err(file))?;
    tmp.persist(file).map_err(|e| DownloadError::Io {
        path: file.display().to_string(),
        source: e.error,
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use bytes::Bytes;

    fn object(store: &MemoryStore, key: &str, len: usize) -> (ObjectMeta, Vec<u8>) {
        let data: Vec<u8> = (0..len).map(|i| (i * 13 % 251) as u8).collect();
        store.put(key, Bytes::from(data.clone())).expect("put");
        let meta = store.head(key).expect("head").expect("exists");
        (meta, data)
    }

    #[test]
    fn ranges_land_at_their_offsets_and_the_file_appears_whole() {
        let store = MemoryStore::new();
        let (meta, data) = object(&store, "k", 10_000 + 7);
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("out");
        let seen = AtomicU64::new(0);
        download(&store, &meta, &file, 1000, 3, &|n| {
            seen.fetch_add(n, Ordering::Relaxed);
        })
        .expect("download");
        assert_eq!(std::fs::read(&file).expect("read"), data);
        assert_eq!(seen.load(Ordering::Relaxed), data.len() as u64);
        assert_eq!(store.calls("GetObject"), 11);
    }

    #[test]
    fn a_changed_object_fails_and_leaves_no_file() {
        let store = MemoryStore::new();
        let (mut meta, _) = object(&store, "k", 5000);
        meta.etag = "0123456789abcdef0123456789abcdef".into();
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("out");
        let e = download(&store, &meta, &file, 1000, 2, &|_| {}).expect_err("changed");
        assert!(e.to_string().contains("changed during the download"), "{e}");
        assert!(!file.exists());
        let left: Vec<_> = std::fs::read_dir(dir.path()).expect("ls").collect();
        assert!(left.is_empty(), "temporary file left behind");
    }
}
