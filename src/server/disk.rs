//! The server's storage: object and part bytes in files named by random ids, and
//! metadata in redb, so every commit is one transaction. Keys are data, never paths.
//! Must not know HTTP or operations: it answers with `DiskError` codes, never responses.

use super::small::{Pending, SmallPuts};
use super::wal;
use crate::protocol::ErrorCode;
use crate::protocol::{hex, multipart_etag, rules, unhex};
use md5::{Digest, Md5};
use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::{Arc, MutexGuard};

const COFFERS: TableDefinition<&str, &[u8]> = TableDefinition::new("coffers");
pub(super) const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
const UPLOADS: TableDefinition<&str, &[u8]> = TableDefinition::new("uploads");
const PARTS: TableDefinition<&str, &[u8]> = TableDefinition::new("parts");
const COMPLETED: TableDefinition<&str, &str> = TableDefinition::new("completed");
/// The bytes of small PutObjects, by the id in their record's `file`.
const INLINE: TableDefinition<&str, &[u8]> = TableDefinition::new("inline");
/// The server's own state: `wal`, the small-put log's `Mark`.
pub(super) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// A PutObject this small is kept in the database, not in a file of its own:
/// then storing it takes one sync of the small-put log (`wal.rs`) instead of
/// three fsyncs (its file, the directory it is renamed into, the commit), and
/// no inode.
pub const INLINE_MAX: u64 = 64 << 10;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CofferRec {
    pub created: u64,
    pub location: String,
    pub lifecycle: Option<String>,
    pub policy: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ObjectRec {
    pub size: u64,
    pub etag: String,
    pub mtime: u64,
    pub content_type: String,
    /// The data file under `data/` (PutObject, or a multipart object stored by
    /// an older version that merged parts); empty when `parts` holds the bytes;
    /// with `inline`, the id of the bytes in the INLINE table instead.
    #[serde(default)]
    pub file: String,
    /// A small PutObject whose bytes are in the database (`INLINE_MAX`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inline: bool,
    /// A multipart object: its part files under `parts/`, in order. Complete
    /// hands the (already fsync'd) part files to the object instead of copying.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<Piece>,
}

/// One part file of a multipart object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Piece {
    pub file: String,
    pub size: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UploadRec {
    pub coffer: String,
    pub key: String,
    pub initiated: u64,
    pub content_type: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartRec {
    pub size: u64,
    pub md5: String,
    pub file: String,
    pub mtime: u64,
}

/// A failure: a protocol error code, or a local I/O or database problem (500).
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("{0}")]
    Code(ErrorCode, String),
    #[error("storage: {0}")]
    Io(String),
}

impl DiskError {
    pub fn code(c: ErrorCode, msg: impl Into<String>) -> DiskError {
        DiskError::Code(c, msg.into())
    }
}

macro_rules! io {
    ($e:expr) => {
        $e.map_err(|e| DiskError::Io(e.to_string()))
    };
}

// One clock for the whole crate.
use crate::protocol::time::now_unix as now;

pub(super) fn obj_key(coffer: &str, key: &str) -> String {
    format!("{coffer}/{key}")
}

fn part_key(upload: &str, n: u32) -> String {
    format!("{upload}/{n:05}")
}

fn random_id() -> String {
    hex(&rand::random::<[u8; 16]>())
}

fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>, DiskError> {
    io!(serde_json::to_vec(v))
}

pub(super) fn from_json<T: for<'a> Deserialize<'a>>(b: &[u8]) -> Result<T, DiskError> {
    io!(serde_json::from_slice(b))
}

/// The server's whole state on disk.
pub struct Disk {
    root: PathBuf,
    db: Arc<Database>,
    /// Small puts: durable by their log record, in the database by batches.
    small: Arc<SmallPuts>,
    /// Keys with a PutObject streaming in (one writer per key).
    putting: Mutex<HashSet<String>>,
    /// Uploads with a Complete in progress.
    completing: Mutex<HashSet<String>>,
}

/// A body being received: in memory while it is at most `INLINE_MAX` bytes,
/// then in a file under `tmp/`, moved into place by `commit_*`.
pub struct Incoming {
    mem: Vec<u8>,
    file: Option<std::fs::File>,
    path: PathBuf,
    hasher: Md5,
    pub size: u64,
}

impl Incoming {
    pub fn write(&mut self, data: &[u8]) -> Result<(), DiskError> {
        self.hasher.update(data);
        self.size += data.len() as u64;
        if self.file.is_none() && self.size <= INLINE_MAX {
            self.mem.extend_from_slice(data);
            return Ok(());
        }
        let file = self.spill()?;
        io!(file.write_all(data))
    }

    /// Whether writing `n` more bytes touches the disk (else it only copies).
    pub fn blocks_on(&self, n: usize) -> bool {
        self.file.is_some() || self.size + n as u64 > INLINE_MAX
    }

    /// The temp file, created (with the bytes held in memory) at the first need.
    fn spill(&mut self) -> Result<&mut std::fs::File, DiskError> {
        if self.file.is_none() {
            let mut f = io!(std::fs::File::create(&self.path))?;
            io!(f.write_all(&self.mem))?;
            self.mem = Vec::new();
            self.file = Some(f);
        }
        self.file
            .as_mut()
            .ok_or_else(|| DiskError::Io("temp file missing".into()))
    }

    fn finish(mut self, dest_dir: &Path) -> Result<(String, [u8; 16]), DiskError> {
        io!(self.spill()?.sync_all())?;
        let name = random_id();
        io!(std::fs::rename(&self.path, dest_dir.join(&name)))?;
        io!(std::fs::File::open(dest_dir).and_then(|d| d.sync_all()))?;
        let digest: [u8; 16] = std::mem::take(&mut self.hasher).finalize().into();
        Ok((name, digest))
    }

    /// The bytes and their MD5, when they are still all in memory.
    fn take_small(&mut self) -> Option<(Vec<u8>, [u8; 16])> {
        if self.file.is_some() {
            return None;
        }
        let digest: [u8; 16] = std::mem::take(&mut self.hasher).finalize().into();
        Some((std::mem::take(&mut self.mem), digest))
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        // Only an abandoned temp file is still at `path`; a finished one was renamed.
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        self.small.stop();
    }
}

impl Disk {
    /// Opens (or creates) the store at `root`, clearing what a crash left behind.
    pub fn open(root: &Path) -> Result<Disk, DiskError> {
        // Made 0700: the files hold every coffer's bytes, for the server alone.
        use std::os::unix::fs::DirBuilderExt;
        let mut private = std::fs::DirBuilder::new();
        private.recursive(true).mode(0o700);
        io!(private.create(root))?;
        for d in ["data", "parts", "tmp"] {
            io!(private.create(root.join(d)))?;
        }
        let db = io!(Database::create(root.join("meta.redb")))?;
        {
            let tx = io!(db.begin_write())?;
            io!(tx.open_table(COFFERS))?;
            io!(tx.open_table(OBJECTS))?;
            io!(tx.open_table(UPLOADS))?;
            io!(tx.open_table(PARTS))?;
            io!(tx.open_table(COMPLETED))?;
            io!(tx.open_table(INLINE))?;
            io!(tx.open_table(META))?;
            io!(tx.commit())?;
        }
        let db = Arc::new(db);
        let small = SmallPuts::open(Arc::clone(&db), &root.join("wal"))?;
        let disk = Disk {
            root: root.to_path_buf(),
            db,
            small,
            putting: Mutex::new(HashSet::new()),
            completing: Mutex::new(HashSet::new()),
        };
        disk.sweep()?;
        Ok(disk)
    }

    /// Removes temp files and data/part files no record references.
    fn sweep(&self) -> Result<(), DiskError> {
        for e in io!(std::fs::read_dir(self.root.join("tmp")))?.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
        let tx = io!(self.db.begin_read())?;
        let mut live = HashSet::new();
        for item in io!(io!(tx.open_table(OBJECTS))?.iter())? {
            let (_, v) = io!(item)?;
            let rec = from_json::<ObjectRec>(v.value())?;
            live.insert(rec.file);
            live.extend(rec.parts.into_iter().map(|p| p.file));
        }
        for item in io!(io!(tx.open_table(PARTS))?.iter())? {
            let (_, v) = io!(item)?;
            live.insert(from_json::<PartRec>(v.value())?.file);
        }
        for dir in ["data", "parts"] {
            for e in io!(std::fs::read_dir(self.root.join(dir)))?.flatten() {
                if !live.contains(&e.file_name().to_string_lossy().to_string()) {
                    log::info!("removing unreferenced {}", e.path().display());
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(())
    }

    /// The files holding an object's bytes, in order, with their sizes.
    pub fn pieces(&self, rec: &ObjectRec) -> Vec<(PathBuf, u64)> {
        if rec.parts.is_empty() {
            return vec![(self.root.join("data").join(&rec.file), rec.size)];
        }
        rec.parts
            .iter()
            .map(|p| (self.root.join("parts").join(&p.file), p.size))
            .collect()
    }

    /// The bytes of an `inline` object (`None`: its bytes are in files).
    pub fn inline_bytes(&self, rec: &ObjectRec) -> Result<Option<Vec<u8>>, DiskError> {
        if !rec.inline {
            return Ok(None);
        }
        if let Some(b) = self.small.bytes(&rec.file) {
            return Ok(Some(b));
        }
        let tx = io!(self.db.begin_read())?;
        let t = io!(tx.open_table(INLINE))?;
        match io!(t.get(rec.file.as_str()))? {
            Some(v) => Ok(Some(v.value().to_vec())),
            None => Err(DiskError::Io(format!(
                "the bytes of inline object {} are missing",
                rec.file
            ))),
        }
    }

    /// Removes an object's files (after its record is gone; an inline
    /// object's bytes went with it, in the same transaction).
    fn remove_files(&self, rec: &ObjectRec) {
        if !rec.file.is_empty() && !rec.inline {
            let _ = std::fs::remove_file(self.root.join("data").join(&rec.file));
        }
        for p in &rec.parts {
            let _ = std::fs::remove_file(self.root.join("parts").join(&p.file));
        }
    }

    /// A body to receive; no file is made until it outgrows `INLINE_MAX`.
    pub fn incoming(&self) -> Result<Incoming, DiskError> {
        let path = self.root.join("tmp").join(random_id());
        Ok(Incoming {
            mem: Vec::new(),
            file: None,
            path,
            hasher: Md5::new(),
            size: 0,
        })
    }

    // ---- coffers ----

    pub fn coffer(&self, name: &str) -> Result<Option<CofferRec>, DiskError> {
        let tx = io!(self.db.begin_read())?;
        let t = io!(tx.open_table(COFFERS))?;
        match io!(t.get(name))? {
            Some(v) => Ok(Some(from_json(v.value())?)),
            None => Ok(None),
        }
    }

    pub fn coffers(&self) -> Result<Vec<(String, CofferRec)>, DiskError> {
        let tx = io!(self.db.begin_read())?;
        let t = io!(tx.open_table(COFFERS))?;
        let mut out = Vec::new();
        for item in io!(t.iter())? {
            let (k, v) = io!(item)?;
            out.push((k.value().to_string(), from_json(v.value())?));
        }
        Ok(out)
    }

    pub fn create_coffer(&self, name: &str, location: &str) -> Result<(), DiskError> {
        let tx = io!(self.db.begin_write())?;
        {
            let mut t = io!(tx.open_table(COFFERS))?;
            if io!(t.get(name))?.is_some() {
                return Err(DiskError::code(ErrorCode::CofferAlreadyExists, name));
            }
            let rec = CofferRec {
                created: now(),
                location: location.to_string(),
                lifecycle: None,
                policy: None,
            };
            io!(t.insert(name, to_json(&rec)?.as_slice()))?;
        }
        io!(tx.commit())
    }

    pub fn update_coffer(
        &self,
        name: &str,
        f: impl FnOnce(&mut CofferRec),
    ) -> Result<(), DiskError> {
        let tx = io!(self.db.begin_write())?;
        {
            let mut t = io!(tx.open_table(COFFERS))?;
            let mut rec: CofferRec = match io!(t.get(name))? {
                Some(v) => from_json(v.value())?,
                None => return Err(DiskError::code(ErrorCode::NoSuchCoffer, name)),
            };
            f(&mut rec);
            io!(t.insert(name, to_json(&rec)?.as_slice()))?;
        }
        io!(tx.commit())
    }

    pub fn delete_coffer(&self, name: &str) -> Result<(), DiskError> {
        let prefix = format!("{name}/");
        if !self.list(name, "", "", 1)?.0.is_empty() || self.uploads(name).map(|u| !u.is_empty())? {
            return Err(DiskError::code(ErrorCode::CofferNotEmpty, name));
        }
        let _ = prefix;
        let tx = io!(self.db.begin_write())?;
        {
            let mut t = io!(tx.open_table(COFFERS))?;
            if io!(t.remove(name))?.is_none() {
                return Err(DiskError::code(ErrorCode::NoSuchCoffer, name));
            }
        }
        io!(tx.commit())
    }

    // ---- objects ----

    pub fn object(&self, coffer: &str, key: &str) -> Result<Option<ObjectRec>, DiskError> {
        if let Some(rec) = self.small.object(&obj_key(coffer, key)) {
            return Ok(Some(rec));
        }
        // A put moves from waiting to the database in one commit before it
        // stops waiting: looked for after, it is found in one of the two.
        self.object_in_db(coffer, key)
    }

    fn object_in_db(&self, coffer: &str, key: &str) -> Result<Option<ObjectRec>, DiskError> {
        let tx = io!(self.db.begin_read())?;
        let t = io!(tx.open_table(OBJECTS))?;
        match io!(t.get(obj_key(coffer, key).as_str()))? {
            Some(v) => Ok(Some(from_json(v.value())?)),
            None => Ok(None),
        }
    }

    /// Keys after `marker` starting with `prefix`, at most `max`; and whether more follow.
    pub fn list(
        &self,
        coffer: &str,
        prefix: &str,
        marker: &str,
        max: usize,
    ) -> Result<(Vec<(String, ObjectRec)>, bool), DiskError> {
        let base = format!("{coffer}/");
        let after_marker = !marker.is_empty() && marker >= prefix;
        let start = if after_marker {
            format!("{base}{marker}")
        } else {
            format!("{base}{prefix}")
        };
        // Waiting puts first, then the database: a put leaves the first only
        // once committed to the second, so it is seen in one of them.
        let waiting = self.small.range(
            &start,
            after_marker,
            &format!("{base}{prefix}"),
            max.saturating_add(1),
        );
        let tx = io!(self.db.begin_read())?;
        let t = io!(tx.open_table(OBJECTS))?;
        let mut stored = Vec::new();
        for item in io!(t.range(start.as_str()..))? {
            let (k, v) = io!(item)?;
            let Some(key) = k.value().strip_prefix(&base) else {
                break;
            };
            if !key.starts_with(prefix) {
                break;
            }
            if after_marker && key <= marker {
                continue;
            }
            if stored.len() > max {
                break;
            }
            stored.push((key.to_string(), from_json(v.value())?));
        }
        // Each source gave up to max + 1 keys: the first `max` of both, in
        // order, are the page, and a key beyond them means more follow.
        let mut all: BTreeMap<String, ObjectRec> = stored.into_iter().collect();
        for (k, rec) in waiting {
            if let Some(key) = k.strip_prefix(&base) {
                all.entry(key.to_string()).or_insert(rec);
            }
        }
        let more = all.len() > max;
        Ok((all.into_iter().take(max).collect(), more))
    }

    /// `ObjectAlreadyExists` when `key` is taken, in `tx` or by a small put
    /// waiting for the database. Hold the guard until `tx` commits: no small
    /// put takes the key meanwhile.
    fn check_free(
        &self,
        coffer: &str,
        key: &str,
        tx: &redb::WriteTransaction,
    ) -> Result<MutexGuard<'_, Pending>, DiskError> {
        let okey = obj_key(coffer, key);
        let objects = io!(tx.open_table(OBJECTS))?;
        let held = self.small.hold();
        if held.has(&okey) || io!(objects.get(okey.as_str()))?.is_some() {
            return Err(DiskError::code(ErrorCode::ObjectAlreadyExists, key));
        }
        Ok(held)
    }

    fn upload_of(&self, coffer: &str, key: &str) -> Result<Option<String>, DiskError> {
        Ok(self
            .uploads(coffer)?
            .into_iter()
            .find(|(_, u)| u.key == key)
            .map(|(id, _)| id))
    }

    /// Claims `key` for a PutObject streaming in; refused when taken.
    pub fn begin_put(&self, coffer: &str, key: &str) -> Result<(), DiskError> {
        if self.object(coffer, key)?.is_some() {
            return Err(DiskError::code(ErrorCode::ObjectAlreadyExists, key));
        }
        if self.upload_of(coffer, key)?.is_some() {
            return Err(DiskError::code(ErrorCode::ObjectAlreadyUploading, key));
        }
        let mut p = self.putting.lock().unwrap_or_else(|e| e.into_inner());
        if !p.insert(obj_key(coffer, key)) {
            return Err(DiskError::code(ErrorCode::ObjectAlreadyUploading, key));
        }
        Ok(())
    }

    pub fn end_put(&self, coffer: &str, key: &str) {
        self.putting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&obj_key(coffer, key));
    }

    /// Makes a fully received PutObject the object at `key`.
    pub fn commit_put(
        &self,
        coffer: &str,
        key: &str,
        inc: Incoming,
        content_type: &str,
        expect_md5: Option<[u8; 16]>,
    ) -> Result<ObjectRec, DiskError> {
        let mut inc = inc;
        if let Some((bytes, digest)) = inc.take_small() {
            return self.commit_small_put(coffer, key, bytes, digest, content_type, expect_md5);
        }
        let size = inc.size;
        let (file, digest) = inc.finish(&self.root.join("data"))?;
        let cleanup = |e: DiskError| {
            let _ = std::fs::remove_file(self.root.join("data").join(&file));
            e
        };
        if expect_md5.is_some_and(|m| m != digest) {
            return Err(cleanup(DiskError::code(
                ErrorCode::BadDigest,
                "Content-MD5 mismatch",
            )));
        }
        let rec = ObjectRec {
            size,
            etag: format!("\"{}\"", hex(&digest)),
            mtime: now(),
            content_type: content_type.to_string(),
            file: file.clone(),
            inline: false,
            parts: Vec::new(),
        };
        let result = (|| {
            let tx = io!(self.db.begin_write())?;
            let _held = self.check_free(coffer, key, &tx)?;
            {
                let mut t = io!(tx.open_table(OBJECTS))?;
                io!(t.insert(obj_key(coffer, key).as_str(), to_json(&rec)?.as_slice()))?;
            }
            io!(tx.commit())
        })();
        result.map_err(cleanup)?;
        Ok(rec)
    }

    /// `commit_put` of a body small enough for the database: the record and
    /// the bytes in one transaction.
    fn commit_small_put(
        &self,
        coffer: &str,
        key: &str,
        bytes: Vec<u8>,
        digest: [u8; 16],
        content_type: &str,
        expect_md5: Option<[u8; 16]>,
    ) -> Result<ObjectRec, DiskError> {
        if expect_md5.is_some_and(|m| m != digest) {
            return Err(DiskError::code(
                ErrorCode::BadDigest,
                "Content-MD5 mismatch",
            ));
        }
        let rec = ObjectRec {
            size: bytes.len() as u64,
            etag: format!("\"{}\"", hex(&digest)),
            mtime: now(),
            content_type: content_type.to_string(),
            file: random_id(),
            inline: true,
            parts: Vec::new(),
        };
        let entry = wal::Entry {
            coffer: coffer.to_string(),
            key: key.to_string(),
            rec: to_json(&rec)?,
            bytes,
            md5: digest,
        };
        self.small.put(entry, rec.clone(), || {
            self.object_in_db(coffer, key).map(|o| o.is_some())
        })?;
        Ok(rec)
    }

    /// Removes objects older than their coffer's lifecycle allows.
    pub fn expire(&self, day_secs: u64) -> Result<usize, DiskError> {
        let mut expired = Vec::new();
        for (name, c) in self.coffers()? {
            let Some(days) = c
                .lifecycle
                .as_deref()
                .and_then(|l| {
                    serde_json::from_str::<crate::protocol::types::LifecycleConfig>(l).ok()
                })
                .and_then(|l| {
                    l.rule
                        .iter()
                        .map(|r| r.expiration.days)
                        .filter(|d| *d > 0)
                        .min()
                })
            else {
                continue;
            };
            let cutoff = now().saturating_sub(days as u64 * day_secs);
            let (objs, _) = self.list(&name, "", "", usize::MAX)?;
            for (k, o) in objs {
                if o.mtime <= cutoff {
                    expired.push((obj_key(&name, &k), cutoff));
                }
            }
        }
        if expired.is_empty() {
            return Ok(0);
        }
        let tx = io!(self.db.begin_write())?;
        let mut removed = Vec::new();
        {
            let mut t = io!(tx.open_table(OBJECTS))?;
            for (k, cutoff) in &expired {
                // Re-read in the transaction: the files removed are those of the
                // record removed.
                let rec: Option<ObjectRec> = match io!(t.get(k.as_str()))? {
                    Some(v) => Some(from_json(v.value())?),
                    None => None,
                };
                if let Some(rec) = rec.filter(|r| r.mtime <= *cutoff) {
                    io!(t.remove(k.as_str()))?;
                    removed.push((k, rec));
                }
            }
            let mut inline = io!(tx.open_table(INLINE))?;
            for (_, rec) in removed.iter().filter(|(_, r)| r.inline) {
                io!(inline.remove(rec.file.as_str()))?;
            }
        }
        io!(tx.commit())?;
        for (k, rec) in &removed {
            log::info!("lifecycle expired {k}");
            self.remove_files(rec);
        }
        Ok(removed.len())
    }
}

/// The stored parts of upload `id`, in part-number order.
/// Removes upload `id` of `coffer/key` from the table (inside the caller's
/// transaction), or says NoSuchUpload.
/// Adds a small put's object and bytes to `tx`.
pub(super) fn insert_small(tx: &redb::WriteTransaction, e: &wal::Entry) -> Result<(), DiskError> {
    let rec: ObjectRec = from_json(&e.rec)?;
    let mut t = io!(tx.open_table(OBJECTS))?;
    io!(t.insert(obj_key(&e.coffer, &e.key).as_str(), e.rec.as_slice()))?;
    let mut t = io!(tx.open_table(INLINE))?;
    io!(t.insert(rec.file.as_str(), e.bytes.as_slice()))?;
    Ok(())
}

/// The 16 bytes of a 32-digit hex MD5 this store wrote itself.
fn unhex16(s: &str) -> [u8; 16] {
    unhex(s).and_then(|d| d.try_into().ok()).unwrap_or([0; 16])
}

mod multipart;
#[cfg(test)]
mod tests;
