//! `cofferfs get COFFER/PATH FILE --as-of TIME`: one path as it was at a past
//! time, without a mount. The journal is replayed as of the time (as an as-of
//! mount does); the path's bytes come from the object the view then showed,
//! checked against the ETag the journal recorded, and FILE gets the recorded
//! mode and mtime. Never writes to the coffer.

use crate::commands::{CommandError, TransferReport};
use crate::fs::journal::history::replay_as_of;
use crate::fs::journal::{Attrs, Shape};
use crate::protocol::unquote_etag;
use crate::store::ObjectStore;
use crate::transfer::download::download;
use std::path::Path;
use std::time::Instant;

fn usage(msg: String) -> CommandError {
    CommandError::Usage(msg)
}

/// Restores `path` as of `until` (microseconds) into `file`.
pub fn get_as_of(
    store: &dyn ObjectStore,
    path: &str,
    until: u64,
    file: &Path,
    chunk: u64,
    concurrency: usize,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<TransferReport, CommandError> {
    let started = Instant::now();
    let path = path.trim_matches('/');
    let when = super::format_micros(until);
    let o = replay_as_of(store, until)?.overlay;
    let entry = o.get(path).filter(|e| e.shape != Shape::AttrsOnly);
    let attrs = o.attrs(path).unwrap_or_default();
    let (key, etag) = match entry.map(|e| &e.shape) {
        Some(Shape::Object { key, etag, .. }) => (key.clone(), Some(etag.clone())),
        Some(Shape::Empty) => {
            std::fs::write(file, b"").map_err(io(file))?;
            finish(file, &attrs, None)?;
            return Ok(report(0, started, String::new()));
        }
        Some(Shape::Symlink { target }) => {
            std::os::unix::fs::symlink(target, file).map_err(io(file))?;
            return Ok(report(0, started, String::new()));
        }
        Some(Shape::Dir) => {
            return Err(usage(format!(
                "{path:?} was a directory at {when}: mount with --as-of to copy a tree"
            )))
        }
        Some(Shape::Special { .. }) => {
            return Err(usage(format!(
                "{path:?} was a special file at {when}: it holds no bytes"
            )))
        }
        Some(Shape::AttrsOnly) | None => {
            let shown = !o.hides_object(path)
                && store
                    .head(path)?
                    .is_some_and(|m| m.last_modified.is_none_or(|t| super::micros_of(t) <= until));
            if !shown && o.has_entries_under(path) {
                return Err(usage(format!(
                    "{path:?} was a directory at {when}: mount with --as-of to copy a tree"
                )));
            }
            if !shown {
                return Err(usage(format!("no file at {path:?} as of {when}")));
            }
            (path.to_string(), None)
        }
    };
    let Some(meta) = store.head(&key)? else {
        return Err(usage(format!(
            "{path:?} as of {when} was object {key:?}, which is gone from the coffer \
             (expired by its lifecycle rule?)"
        )));
    };
    if let Some(want) = &etag {
        if !unquote_etag(&meta.etag).eq_ignore_ascii_case(unquote_etag(want)) {
            return Err(usage(format!(
                "object {key:?} has ETag {}, not the {want} the journal recorded for {path:?}",
                meta.etag
            )));
        }
    }
    download(store, &meta, file, chunk, concurrency, progress)?;
    finish(file, &attrs, meta.last_modified)?;
    Ok(report(meta.size, started, meta.etag))
}

fn io(file: &Path) -> impl FnOnce(std::io::Error) -> CommandError + '_ {
    move |source| CommandError::Io {
        path: file.display().to_string(),
        source,
    }
}

/// Gives `file` the recorded permission bits and mtime (else the object's).
fn finish(
    file: &Path,
    attrs: &Attrs,
    object_time: Option<std::time::SystemTime>,
) -> Result<(), CommandError> {
    let mtime = attrs.mtime.map(crate::fs::from_timestamp).or(object_time);
    if let Some(t) = mtime {
        // futimens through a read-only descriptor: the owner may.
        let f = std::fs::File::open(file).map_err(io(file))?;
        f.set_modified(t).map_err(io(file))?;
    }
    // Last, so a read-only mode cannot stand in the way.
    if let Some(mode) = attrs.mode {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(mode & 0o7777))
            .map_err(io(file))?;
    }
    Ok(())
}

fn report(bytes: u64, started: Instant, etag: String) -> TransferReport {
    TransferReport {
        bytes,
        elapsed: started.elapsed(),
        etag,
    }
}
