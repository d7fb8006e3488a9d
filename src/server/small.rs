//! Small puts between their answer and the database: a small PutObject is
//! durable once its record in the small-put log (`wal.rs`) is synced, and is
//! answered then; it waits here, where reads find it, until a flusher thread
//! commits the waiting puts to the database in one durable transaction (every
//! `FLUSH_EVERY`, or sooner when `FLUSH_AT` wait). One commit per put cost
//! more CPU than everything else the put does.
//!
//! Lock order: a database write transaction, then `pending`; the flusher
//! never holds `pending` while it waits for a write transaction. A writer
//! that checks a key is free holds `pending` (`hold`) until it commits, so a
//! small put and another writer never both take one key.
//!
//! Owns the waiting puts and the flusher; must not know HTTP.

use super::disk::{insert_small, obj_key, DiskError, ObjectRec, META, OBJECTS};
use super::lock;
use super::wal::{Entry, Mark, Wal};
use crate::protocol::ErrorCode;
use redb::{Database, ReadableTable};
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// How long an answered small put may wait for the database at most.
const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// This many waiting puts wake the flusher at once.
const FLUSH_AT: usize = 512;
/// A put that finds the log full waits this long for a flush, then fails.
const ROOM_WAIT: Duration = Duration::from_secs(30);

macro_rules! io {
    ($e:expr) => {
        $e.map_err(|e| DiskError::Io(e.to_string()))
    };
}

/// One answered small put: its log entry and its record, parsed.
pub struct Put {
    pub entry: Entry,
    pub rec: ObjectRec,
}

/// The puts waiting for the database, by `coffer/key` and by bytes id.
#[derive(Default)]
pub struct Pending {
    objects: BTreeMap<String, Arc<Put>>,
    by_file: HashMap<String, Arc<Put>>,
}

impl Pending {
    pub fn has(&self, obj_key: &str) -> bool {
        self.objects.contains_key(obj_key)
    }

    fn remove(&mut self, obj_key: &str) {
        if let Some(p) = self.objects.remove(obj_key) {
            self.by_file.remove(&p.rec.file);
        }
    }
}

pub struct SmallPuts {
    db: Arc<Database>,
    wal: Wal,
    pending: Mutex<Pending>,
    /// Wakes the flusher (under `pending`).
    kick: Condvar,
    /// A flush ended: puts waiting for room in the log try again.
    flushed: Condvar,
    /// One flush at a time.
    flushing: Mutex<()>,
    stop: AtomicBool,
    flusher: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl SmallPuts {
    /// Opens the log at `path`, redoes in one durable commit the puts it
    /// holds after the database's last batch (a crash lost only unanswered
    /// work), and starts the flusher.
    pub fn open(db: Arc<Database>, path: &Path) -> Result<Arc<SmallPuts>, DiskError> {
        let mark = {
            let tx = io!(db.begin_read())?;
            let meta = io!(tx.open_table(META))?;
            let got = io!(meta.get("wal"))?;
            got.and_then(|v| Mark::from_bytes(v.value()))
                .unwrap_or_default()
        };
        let (wal, replayed) = io!(Wal::open(path, mark))?;
        if let Some(&(last, _)) = replayed.last() {
            let mark = Mark { seq: last, next: 0 };
            commit_batch(&db, replayed.iter().map(|(_, r)| &r.entry), mark)?;
            wal.restart(last);
            log::info!("small-put log: {} puts redone", replayed.len());
        }
        let small = Arc::new(SmallPuts {
            db,
            wal,
            pending: Mutex::new(Pending::default()),
            kick: Condvar::new(),
            flushed: Condvar::new(),
            flushing: Mutex::new(()),
            stop: AtomicBool::new(false),
            flusher: Mutex::new(None),
        });
        let it = Arc::clone(&small);
        let thread = io!(std::thread::Builder::new()
            .name("small-puts".into())
            .spawn(move || it.run()))?;
        *lock(&small.flusher) = Some(thread);
        Ok(small)
    }

    /// Stores a small put: free at `coffer/key` (here and, by `in_db`, in the
    /// database), logged, synced. Returns once it is durable.
    pub fn put(
        &self,
        entry: Entry,
        rec: ObjectRec,
        in_db: impl Fn() -> Result<bool, DiskError>,
    ) -> Result<(), DiskError> {
        let obj_key = obj_key(&entry.coffer, &entry.key);
        let mut p = lock(&self.pending);
        let seq = loop {
            if p.has(&obj_key) || in_db()? {
                return Err(DiskError::code(ErrorCode::ObjectAlreadyExists, entry.key));
            }
            if let Some(seq) = io!(self.wal.append(&entry))? {
                break seq;
            }
            // The log is full: a flush makes room.
            self.kick.notify_all();
            let (g, waited) = self
                .flushed
                .wait_timeout(p, ROOM_WAIT)
                .unwrap_or_else(|e| e.into_inner());
            p = g;
            if waited.timed_out() {
                return Err(DiskError::Io(
                    "the small-put log stays full: the database takes no batch".into(),
                ));
            }
        };
        let put = Arc::new(Put { entry, rec });
        p.by_file.insert(put.rec.file.clone(), Arc::clone(&put));
        p.objects.insert(obj_key, put);
        if p.objects.len() >= FLUSH_AT {
            self.kick.notify_all();
        }
        drop(p);
        io!(self.wal.sync(seq))
    }

    /// Holds the waiting puts still: for a writer that checks a key is free
    /// (`Pending::has`) until its commit.
    pub fn hold(&self) -> MutexGuard<'_, Pending> {
        lock(&self.pending)
    }

    /// The record of a waiting put at `coffer/key`.
    pub fn object(&self, obj_key: &str) -> Option<ObjectRec> {
        lock(&self.pending)
            .objects
            .get(obj_key)
            .map(|p| p.rec.clone())
    }

    /// The bytes of a waiting put, by the id in its record.
    pub fn bytes(&self, file: &str) -> Option<Vec<u8>> {
        lock(&self.pending)
            .by_file
            .get(file)
            .map(|p| p.entry.bytes.clone())
    }

    /// Waiting puts with `coffer/key` after `start` (exclusive when `after`)
    /// and starting with `within`, in key order, at most `max`.
    pub fn range(
        &self,
        start: &str,
        after: bool,
        within: &str,
        max: usize,
    ) -> Vec<(String, ObjectRec)> {
        let p = lock(&self.pending);
        let from = if after {
            Bound::Excluded(start)
        } else {
            Bound::Included(start)
        };
        p.objects
            .range::<str, _>((from, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(within))
            .take(max)
            .map(|(k, put)| (k.clone(), put.rec.clone()))
            .collect()
    }

    /// Commits every waiting put to the database, durably, with the log's
    /// mark; the log starts again when nothing came in meanwhile.
    pub fn flush(&self) -> Result<(), DiskError> {
        let _one = lock(&self.flushing);
        let (batch, mark) = {
            let p = lock(&self.pending);
            if p.objects.is_empty() {
                return Ok(());
            }
            let batch: Vec<(String, Arc<Put>)> = p
                .objects
                .iter()
                .map(|(k, v)| (k.clone(), Arc::clone(v)))
                .collect();
            (batch, self.wal.mark())
        };
        commit_batch(&self.db, batch.iter().map(|(_, put)| &put.entry), mark)?;
        let mut p = lock(&self.pending);
        for (key, _) in &batch {
            p.remove(key);
        }
        self.wal.restart(mark.seq);
        self.flushed.notify_all();
        Ok(())
    }

    fn run(&self) {
        loop {
            {
                let p = lock(&self.pending);
                if p.objects.len() < FLUSH_AT && !self.stop.load(Ordering::SeqCst) {
                    drop(
                        self.kick
                            .wait_timeout(p, FLUSH_EVERY)
                            .unwrap_or_else(|e| e.into_inner()),
                    );
                }
            }
            let stopping = self.stop.load(Ordering::SeqCst);
            if let Err(e) = self.flush() {
                log::error!("committing small puts to the database: {e}");
                if !stopping {
                    std::thread::sleep(FLUSH_EVERY);
                }
            }
            if stopping {
                return;
            }
        }
    }

    /// Ends the flusher after a last flush (what it leaves, the log keeps),
    /// and waits for it: then the database is closed with the `Disk`.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        drop(lock(&self.pending));
        self.kick.notify_all();
        if let Some(t) = lock(&self.flusher).take() {
            if t.join().is_err() {
                log::error!("the small-puts flusher panicked");
            }
        }
    }
}

/// Commits small puts to the database in one durable transaction, with the
/// log's `mark` (the last record they cover, where the next goes).
fn commit_batch<'a>(
    db: &Database,
    entries: impl Iterator<Item = &'a Entry>,
    mark: Mark,
) -> Result<(), DiskError> {
    let tx = io!(db.begin_write())?;
    for e in entries {
        let key = obj_key(&e.coffer, &e.key);
        if io!(io!(tx.open_table(OBJECTS))?.get(key.as_str()))?.is_some() {
            // Every writer checks waiting puts too, and the log holds only
            // puts after the database's mark: never expected.
            log::error!("small put {key}: the key is taken; this put is not stored again");
            continue;
        }
        insert_small(&tx, e)?;
    }
    io!(io!(tx.open_table(META))?.insert("wal", mark.to_bytes().as_slice()))?;
    io!(tx.commit())
}
