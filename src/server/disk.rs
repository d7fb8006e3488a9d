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

fn obj_key(coffer: &str, key: &str) -> String {
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

    // ---- multipart ----

    pub fn initiate(
        &self,
        coffer: &str,
        key: &str,
        content_type: &str,
    ) -> Result<String, DiskError> {
        let id = random_id();
        let tx = io!(self.db.begin_write())?;
        let _held = self.check_free(coffer, key, &tx)?;
        {
            let mut t = io!(tx.open_table(UPLOADS))?;
            for item in io!(t.iter())? {
                let (_, v) = io!(item)?;
                let u: UploadRec = from_json(v.value())?;
                if u.coffer == coffer && u.key == key {
                    return Err(DiskError::code(ErrorCode::ObjectAlreadyUploading, key));
                }
            }
            if self
                .putting
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&obj_key(coffer, key))
            {
                return Err(DiskError::code(ErrorCode::ObjectAlreadyUploading, key));
            }
            let rec = UploadRec {
                coffer: coffer.to_string(),
                key: key.to_string(),
                initiated: now(),
                content_type: content_type.to_string(),
            };
            io!(t.insert(id.as_str(), to_json(&rec)?.as_slice()))?;
        }
        io!(tx.commit())?;
        Ok(id)
    }

    /// The open upload `id` of `coffer/key`, or NoSuchUpload.
    pub fn upload(&self, coffer: &str, key: &str, id: &str) -> Result<UploadRec, DiskError> {
        let tx = io!(self.db.begin_read())?;
        let t = io!(tx.open_table(UPLOADS))?;
        match io!(t.get(id))? {
            Some(v) => {
                let u: UploadRec = from_json(v.value())?;
                if u.coffer == coffer && u.key == key {
                    return Ok(u);
                }
                Err(DiskError::code(ErrorCode::NoSuchUpload, id))
            }
            None => Err(DiskError::code(ErrorCode::NoSuchUpload, id)),
        }
    }

    /// Whether `id` completed into an object that still exists.
    pub fn completed(&self, coffer: &str, key: &str, id: &str) -> Result<bool, DiskError> {
        let done = {
            let tx = io!(self.db.begin_read())?;
            let t = io!(tx.open_table(COMPLETED))?;
            let r = io!(t.get(id))?.map(|v| v.value().to_string());
            r
        };
        Ok(done.as_deref() == Some(obj_key(coffer, key).as_str())
            && self.object(coffer, key)?.is_some())
    }

    pub fn uploads(&self, coffer: &str) -> Result<Vec<(String, UploadRec)>, DiskError> {
        let tx = io!(self.db.begin_read())?;
        let t = io!(tx.open_table(UPLOADS))?;
        let mut out = Vec::new();
        for item in io!(t.iter())? {
            let (k, v) = io!(item)?;
            let u: UploadRec = from_json(v.value())?;
            if u.coffer == coffer {
                out.push((k.value().to_string(), u));
            }
        }
        out.sort_by(|a, b| a.1.key.cmp(&b.1.key));
        Ok(out)
    }

    pub fn commit_part(
        &self,
        coffer: &str,
        key: &str,
        id: &str,
        n: u32,
        inc: Incoming,
        expect_md5: Option<[u8; 16]>,
    ) -> Result<PartRec, DiskError> {
        let size = inc.size;
        let (file, digest) = inc.finish(&self.root.join("parts"))?;
        let remove = |f: &str| {
            let _ = std::fs::remove_file(self.root.join("parts").join(f));
        };
        if expect_md5.is_some_and(|m| m != digest) {
            remove(&file);
            return Err(DiskError::code(
                ErrorCode::BadDigest,
                "Content-MD5 mismatch",
            ));
        }
        let rec = PartRec {
            size,
            md5: hex(&digest),
            file: file.clone(),
            mtime: now(),
        };
        let old = (|| {
            self.upload(coffer, key, id)?;
            let tx = io!(self.db.begin_write())?;
            let old = {
                let mut t = io!(tx.open_table(PARTS))?;
                let old = io!(t.insert(part_key(id, n).as_str(), to_json(&rec)?.as_slice()))?
                    .map(|v| from_json::<PartRec>(v.value()));
                old
            };
            // Re-check inside the transaction: an Abort may have raced this part.
            {
                let t = io!(tx.open_table(UPLOADS))?;
                if io!(t.get(id))?.is_none() {
                    return Err(DiskError::code(ErrorCode::NoSuchUpload, id));
                }
            }
            io!(tx.commit())?;
            old.transpose()
        })();
        match old {
            Ok(Some(prev)) => remove(&prev.file),
            Ok(None) => {}
            Err(e) => {
                remove(&file);
                return Err(e);
            }
        }
        Ok(rec)
    }

    pub fn parts(&self, id: &str) -> Result<Vec<(u32, PartRec)>, DiskError> {
        let tx = io!(self.db.begin_read())?;
        let t = io!(tx.open_table(PARTS))?;
        parts_in(&t, id)
    }

    /// Validates a Complete request against the parts stored now (before the
    /// `200`, so rule violations get their own status codes).
    pub fn check_complete(
        &self,
        coffer: &str,
        key: &str,
        id: &str,
        listed: &[(u32, String)],
    ) -> Result<(), DiskError> {
        if self.upload(coffer, key, id).is_err() {
            if self.completed(coffer, key, id)? {
                return Err(DiskError::code(ErrorCode::MultipartAlreadyCompleted, id));
            }
            return Err(DiskError::code(ErrorCode::NoSuchUpload, id));
        }
        select_parts(listed, self.parts(id)?).map(|_| ())
    }

    /// Marks `id` completing; AlreadyLock when another Complete holds it.
    pub fn lock_complete(&self, id: &str) -> Result<(), DiskError> {
        if !self
            .completing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string())
        {
            return Err(DiskError::code(ErrorCode::AlreadyLock, id));
        }
        Ok(())
    }

    pub fn unlock_complete(&self, id: &str) {
        self.completing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// Makes the listed parts the object, in one transaction and without copying
    /// a byte: the object record takes over the part files, which UploadPart
    /// fsync'd before answering. The upload and the parts are re-read inside the
    /// transaction, so a racing UploadPart or Abort either lands before (and is
    /// seen) or fails after. A crash before the commit leaves the upload as it
    /// was; after it, the object whole.
    pub fn complete(
        &self,
        coffer: &str,
        key: &str,
        id: &str,
        listed: &[(u32, String)],
    ) -> Result<ObjectRec, DiskError> {
        let tx = io!(self.db.begin_write())?;
        // Held to the commit: no small put takes the key meanwhile.
        let held = self.small.hold();
        let (rec, unused) = {
            let mut uploads = io!(tx.open_table(UPLOADS))?;
            let up = take_upload(&mut uploads, coffer, key, id)?;
            let mut objects = io!(tx.open_table(OBJECTS))?;
            let okey = obj_key(coffer, key);
            if io!(objects.get(okey.as_str()))?.is_some() || held.has(&okey) {
                return Err(DiskError::code(ErrorCode::ObjectAlreadyExists, key));
            }
            let mut parts = io!(tx.open_table(PARTS))?;
            let stored = parts_in(&parts, id)?;
            for (n, _) in &stored {
                io!(parts.remove(part_key(id, *n).as_str()))?;
            }
            let (chosen, unused) = select_parts(listed, stored)?;
            let digests: Vec<[u8; 16]> = chosen.iter().map(|p| unhex16(&p.md5)).collect();
            let rec = ObjectRec {
                size: chosen.iter().map(|p| p.size).sum(),
                etag: multipart_etag(&digests),
                mtime: now(),
                content_type: up.content_type,
                file: String::new(),
                inline: false,
                parts: chosen
                    .into_iter()
                    .map(|p| Piece {
                        file: p.file,
                        size: p.size,
                    })
                    .collect(),
            };
            io!(objects.insert(okey.as_str(), to_json(&rec)?.as_slice()))?;
            let mut c = io!(tx.open_table(COMPLETED))?;
            io!(c.insert(id, okey.as_str()))?;
            (rec, unused)
        };
        io!(tx.commit())?;
        drop(held);
        // Parts uploaded but not listed belong to nothing now.
        for p in unused {
            let _ = std::fs::remove_file(self.root.join("parts").join(p.file));
        }
        Ok(rec)
    }

    pub fn abort(&self, coffer: &str, key: &str, id: &str) -> Result<(), DiskError> {
        // One transaction: a Complete that committed first owns the part files,
        // and then this finds no upload and removes nothing.
        let tx = io!(self.db.begin_write())?;
        let stored = {
            let mut uploads = io!(tx.open_table(UPLOADS))?;
            take_upload(&mut uploads, coffer, key, id)?;
            let mut parts = io!(tx.open_table(PARTS))?;
            let stored = parts_in(&parts, id)?;
            for (n, _) in &stored {
                io!(parts.remove(part_key(id, *n).as_str()))?;
            }
            stored
        };
        io!(tx.commit())?;
        for (_, p) in stored {
            let _ = std::fs::remove_file(self.root.join("parts").join(p.file));
        }
        Ok(())
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

fn take_upload(
    uploads: &mut redb::Table<&str, &[u8]>,
    coffer: &str,
    key: &str,
    id: &str,
) -> Result<UploadRec, DiskError> {
    let up: UploadRec = match io!(uploads.get(id))? {
        Some(v) => from_json(v.value())?,
        None => return Err(DiskError::code(ErrorCode::NoSuchUpload, id)),
    };
    if up.coffer != coffer || up.key != key {
        return Err(DiskError::code(ErrorCode::NoSuchUpload, id));
    }
    io!(uploads.remove(id))?;
    Ok(up)
}

fn parts_in(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    id: &str,
) -> Result<Vec<(u32, PartRec)>, DiskError> {
    let start = format!("{id}/");
    let mut out = Vec::new();
    for item in io!(t.range(start.as_str()..))? {
        let (k, v) = io!(item)?;
        let Some(n) = k.value().strip_prefix(&start) else {
            break;
        };
        let n = n
            .parse()
            .map_err(|_| DiskError::Io(format!("bad part key {:?}", k.value())))?;
        out.push((n, from_json(v.value())?));
    }
    Ok(out)
}

/// Checks a Complete's list against the stored parts (each listed part stored
/// with that MD5, plus the numbering and size rules); returns the listed parts
/// in order, and the stored ones the list leaves out.
fn select_parts(
    listed: &[(u32, String)],
    stored: Vec<(u32, PartRec)>,
) -> Result<(Vec<PartRec>, Vec<PartRec>), DiskError> {
    let mut stored: std::collections::HashMap<u32, PartRec> = stored.into_iter().collect();
    let sizes: Vec<(u32, Option<u64>)> = listed
        .iter()
        .map(|(n, etag)| {
            let p = stored.get(n).filter(|p| p.md5.eq_ignore_ascii_case(etag));
            (*n, p.map(|p| p.size))
        })
        .collect();
    rules::check_complete(&sizes).map_err(|c| DiskError::code(c, "parts do not form an object"))?;
    let chosen = listed
        .iter()
        .filter_map(|(n, _)| stored.remove(n))
        .collect();
    Ok((chosen, stored.into_values().collect()))
}

/// The 16 bytes of a 32-digit hex MD5 this store wrote itself.
fn unhex16(s: &str) -> [u8; 16] {
    unhex(s).and_then(|d| d.try_into().ok()).unwrap_or([0; 16])
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::ReadableTableMetadata;

    const C: &str = "t-1";

    fn part(disk: &Disk, id: &str, n: u32, data: &[u8]) -> PartRec {
        let mut inc = disk.incoming().unwrap();
        inc.write(data).unwrap();
        disk.commit_part(C, "k", id, n, inc, None).unwrap()
    }

    fn files(root: &Path, dir: &str) -> usize {
        std::fs::read_dir(root.join(dir)).unwrap().count()
    }

    #[test]
    fn complete_hands_the_part_files_to_the_object_and_a_restart_keeps_them() {
        let tmp = tempfile::tempdir().unwrap();
        let disk = Disk::open(tmp.path()).unwrap();
        disk.create_coffer(C, "ap-local").unwrap();
        let id = disk.initiate(C, "k", "text/plain").unwrap();
        let big = vec![1u8; 1 << 20];
        let p1 = part(&disk, &id, 1, &big);
        let p2 = part(&disk, &id, 2, b"tail");
        part(&disk, &id, 3, b"not listed");
        assert_eq!(files(tmp.path(), "parts"), 3);
        let listed = vec![(1, p1.md5.clone()), (2, p2.md5.clone())];
        disk.check_complete(C, "k", &id, &listed).unwrap();
        let rec = disk.complete(C, "k", &id, &listed).unwrap();
        assert_eq!(rec.size, (1 << 20) + 4);
        assert!(rec.file.is_empty());
        assert_eq!(rec.parts.len(), 2);
        assert_eq!(files(tmp.path(), "parts"), 2, "the unlisted part is gone");
        assert!(matches!(
            disk.abort(C, "k", &id),
            Err(DiskError::Code(ErrorCode::NoSuchUpload, _))
        ));
        assert!(matches!(
            disk.check_complete(C, "k", &id, &listed),
            Err(DiskError::Code(ErrorCode::MultipartAlreadyCompleted, _))
        ));
        drop(disk);
        let disk = Disk::open(tmp.path()).unwrap();
        assert_eq!(files(tmp.path(), "parts"), 2, "the sweep keeps live parts");
        let rec = disk.object(C, "k").unwrap().unwrap();
        let pieces = disk.pieces(&rec);
        assert_eq!(pieces.len(), 2);
        assert_eq!(std::fs::read(&pieces[1].0).unwrap(), b"tail");
        assert_eq!(pieces.iter().map(|p| p.1).sum::<u64>(), rec.size);
    }

    #[test]
    fn a_part_replaced_after_the_check_fails_the_complete_and_keeps_the_upload() {
        let tmp = tempfile::tempdir().unwrap();
        let disk = Disk::open(tmp.path()).unwrap();
        disk.create_coffer(C, "ap-local").unwrap();
        let id = disk.initiate(C, "k", "").unwrap();
        let p1 = part(&disk, &id, 1, b"first");
        let listed = vec![(1, p1.md5.clone())];
        disk.check_complete(C, "k", &id, &listed).unwrap();
        part(&disk, &id, 1, b"other bytes");
        assert!(matches!(
            disk.complete(C, "k", &id, &listed),
            Err(DiskError::Code(ErrorCode::InvalidPart, _))
        ));
        assert!(disk.object(C, "k").unwrap().is_none());
        assert_eq!(disk.parts(&id).unwrap().len(), 1);
        assert_eq!(files(tmp.path(), "parts"), 1);
        disk.abort(C, "k", &id).unwrap();
        assert_eq!(files(tmp.path(), "parts"), 0);
    }

    fn put(disk: &Disk, key: &str, data: &[u8]) -> ObjectRec {
        disk.begin_put(C, key).unwrap();
        let mut inc = disk.incoming().unwrap();
        for chunk in data.chunks(10_000) {
            inc.write(chunk).unwrap();
        }
        let rec = disk.commit_put(C, key, inc, "", None).unwrap();
        disk.end_put(C, key);
        rec
    }

    /// The bytes of an object, as GetObject reads them.
    fn bytes_of(disk: &Disk, rec: &ObjectRec) -> Vec<u8> {
        if let Some(b) = disk.inline_bytes(rec).unwrap() {
            return b;
        }
        let pieces = disk.pieces(rec);
        pieces
            .iter()
            .flat_map(|p| std::fs::read(&p.0).unwrap())
            .collect()
    }

    #[test]
    fn listings_and_reads_see_small_puts_waiting_for_the_database_as_stored_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let disk = Disk::open(tmp.path()).unwrap();
        disk.create_coffer(C, "ap-local").unwrap();
        // Even keys committed to the database, odd ones still waiting (the
        // flusher commits every 50 ms: stop it to keep them waiting).
        disk.small.stop();
        for i in (0..20).step_by(2) {
            put(&disk, &format!("d/k{i:02}"), format!("v{i}").as_bytes());
        }
        disk.small.flush().unwrap();
        for i in (1..20).step_by(2) {
            put(&disk, &format!("d/k{i:02}"), format!("v{i}").as_bytes());
        }
        put(&disk, "e", b"outside");
        assert!(disk.small.object(&obj_key(C, "d/k01")).is_some());
        assert!(disk.small.object(&obj_key(C, "d/k00")).is_none());
        let mut seen = Vec::new();
        let mut marker = String::new();
        loop {
            let (page, more) = disk.list(C, "d/", &marker, 3).unwrap();
            assert!(page.len() <= 3);
            for (k, rec) in &page {
                let i: usize = k[3..].parse().unwrap();
                assert_eq!(bytes_of(&disk, rec), format!("v{i}").as_bytes());
                seen.push(i);
            }
            if !more {
                break;
            }
            marker = page.last().unwrap().0.clone();
        }
        assert_eq!(seen, (0..20).collect::<Vec<_>>());
        // Taken whichever side it is on: a put, a multipart upload.
        for key in ["d/k00", "d/k01"] {
            assert!(matches!(
                disk.initiate(C, key, ""),
                Err(DiskError::Code(ErrorCode::ObjectAlreadyExists, _))
            ));
            disk.begin_put(C, key).unwrap_err();
        }
        drop(disk);
        // What waited is redone from the log at the next open.
        let disk = Disk::open(tmp.path()).unwrap();
        let (page, more) = disk.list(C, "", "", 100).unwrap();
        assert_eq!((page.len(), more), (21, false));
    }

    #[test]
    fn a_small_put_lives_in_the_database_and_a_large_one_in_a_file() {
        let tmp = tempfile::tempdir().unwrap();
        let disk = Disk::open(tmp.path()).unwrap();
        disk.create_coffer(C, "ap-local").unwrap();
        disk.update_coffer(C, |c| {
            c.lifecycle = Some(r#"{"Rule":[{"Expiration":{"Days":1}}]}"#.into())
        })
        .unwrap();
        let small = vec![7u8; INLINE_MAX as usize];
        let large = vec![9u8; INLINE_MAX as usize + 1];
        let s = put(&disk, "small", &small);
        let l = put(&disk, "large", &large);
        assert!(s.inline && !l.inline);
        assert_eq!(
            s.etag,
            format!("\"{}\"", hex(&crate::protocol::md5(&small)))
        );
        assert_eq!(
            (files(tmp.path(), "data"), files(tmp.path(), "tmp")),
            (1, 0)
        );
        drop(disk);
        let disk = Disk::open(tmp.path()).unwrap();
        let s = disk.object(C, "small").unwrap().unwrap();
        let l = disk.object(C, "large").unwrap().unwrap();
        assert!(
            bytes_of(&disk, &s) == small,
            "the small object after a restart"
        );
        assert!(
            bytes_of(&disk, &l) == large,
            "the large object after a restart"
        );
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert_eq!(disk.expire(1).unwrap(), 2);
        assert_eq!(files(tmp.path(), "data"), 0);
        let tx = disk.db.begin_read().unwrap();
        assert_eq!(
            tx.open_table(INLINE).unwrap().len().unwrap(),
            0,
            "inline bytes expired too"
        );
    }

    #[test]
    fn a_small_put_with_a_wrong_md5_stores_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let disk = Disk::open(tmp.path()).unwrap();
        disk.create_coffer(C, "ap-local").unwrap();
        let mut inc = disk.incoming().unwrap();
        inc.write(b"abc").unwrap();
        assert!(matches!(
            disk.commit_put(C, "k", inc, "", Some([0u8; 16])),
            Err(DiskError::Code(ErrorCode::BadDigest, _))
        ));
        assert!(disk.object(C, "k").unwrap().is_none());
    }

    #[test]
    fn expiry_removes_a_multipart_objects_part_files() {
        let tmp = tempfile::tempdir().unwrap();
        let disk = Disk::open(tmp.path()).unwrap();
        disk.create_coffer(C, "ap-local").unwrap();
        disk.update_coffer(C, |c| {
            c.lifecycle = Some(r#"{"Rule":[{"Expiration":{"Days":1}}]}"#.into())
        })
        .unwrap();
        let id = disk.initiate(C, "k", "").unwrap();
        let p1 = part(&disk, &id, 1, b"only part");
        disk.complete(C, "k", &id, &[(1, p1.md5)]).unwrap();
        assert_eq!(files(tmp.path(), "parts"), 1);
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert_eq!(disk.expire(1).unwrap(), 1);
        assert!(disk.object(C, "k").unwrap().is_none());
        assert_eq!(files(tmp.path(), "parts"), 0);
    }
}
