//! BlockCache: fixed-size blocks of objects, keyed by (key, ETag, index), in an LRU
//! under a byte budget; one fetch per block however many readers wait for it;
//! read-ahead on a bounded pool. Knows objects and ranges, not files or FUSE.

use super::disk_cache::DiskTier;
use super::error::{FsError, FsResult};
use crate::store::{ObjectStore, Range};
use crate::transfer::pool::Pool;
use bytes::{Bytes, BytesMut};
use lru::LruCache;
use std::collections::HashSet;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};

/// One object version's identity: a new ETag is a new object to the cache.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectId {
    pub key: Arc<str>,
    pub etag: Arc<str>,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct BlockId {
    object: ObjectId,
    index: u64,
}

#[derive(Debug, Clone, Copy)]
pub struct CacheConfig {
    pub block_size: u64,
    /// Bytes of blocks kept.
    pub capacity: u64,
    /// Parallel read-ahead fetches.
    pub read_concurrency: usize,
    /// Largest read-ahead window of a sequential reader.
    pub read_ahead: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            block_size: 1 << 20,
            capacity: 256 << 20,
            read_concurrency: 8,
            read_ahead: 64 << 20,
        }
    }
}

struct Inner {
    blocks: LruCache<BlockId, Bytes>,
    bytes: u64,
    loading: HashSet<BlockId>,
    /// Blocks handed to the read-ahead workers and not yet begun: each read
    /// of a sequential reader asks for its whole window again, and a block
    /// must not wait in the queue once per ask.
    queued: HashSet<BlockId>,
}

pub struct BlockCache {
    store: Arc<dyn ObjectStore>,
    disk: Option<DiskTier>,
    cfg: CacheConfig,
    inner: Mutex<Inner>,
    loaded: Condvar,
    /// Read-ahead workers.
    prefetch: Pool,
    /// This cache, for read-ahead jobs: they must not keep it alive.
    me: Weak<BlockCache>,
}

/// A reader's position and read-ahead window.
#[derive(Debug, Default)]
pub struct ReadState {
    /// The end of the furthest read so far.
    next: u64,
    window: u64,
}

impl ReadState {
    /// Notes a read of `offset..end`; gives the window to read ahead of `end`
    /// (0: a random reader). The kernel's read-ahead sends a sequential
    /// reader's requests on several FUSE threads at once, so they arrive
    /// slightly out of order: a read within `slack` of the furthest one so far
    /// keeps the window (and the furthest end), rather than starting its ramp
    /// again from one block.
    fn advance(&mut self, offset: u64, end: u64, block: u64, max: u64) -> u64 {
        let slack = 2 * block.max(end - offset);
        if offset.abs_diff(self.next) <= slack && (self.window > 0 || offset == self.next) {
            self.window = (self.window * 2).clamp(block, max.max(block));
            self.next = self.next.max(end);
        } else {
            self.window = 0;
            self.next = end;
        }
        self.window
    }
}

impl BlockCache {
    pub fn new(
        store: Arc<dyn ObjectStore>,
        cfg: CacheConfig,
        disk: Option<DiskTier>,
    ) -> Arc<BlockCache> {
        Arc::new_cyclic(|me| BlockCache {
            store,
            disk,
            cfg: CacheConfig {
                block_size: cfg.block_size.max(4096),
                ..cfg
            },
            inner: Mutex::new(Inner {
                blocks: LruCache::unbounded(),
                bytes: 0,
                loading: HashSet::new(),
                queued: HashSet::new(),
            }),
            loaded: Condvar::new(),
            prefetch: Pool::new("read-ahead", cfg.read_concurrency),
            me: me.clone(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes held now.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    /// One block: from the cache, from a fetch already under way, or fetched now.
    fn block(&self, id: &BlockId) -> FsResult<Bytes> {
        let mut g = self.lock();
        loop {
            if let Some(b) = g.blocks.get(id) {
                return Ok(b.clone());
            }
            if !g.loading.contains(id) {
                break;
            }
            g = self.loaded.wait(g).unwrap_or_else(|p| p.into_inner());
        }
        g.loading.insert(id.clone());
        drop(g);
        let result = self.fetch(id);
        let mut g = self.lock();
        g.loading.remove(id);
        if let Ok(b) = &result {
            g.bytes += b.len() as u64;
            if let Some(old) = g.blocks.put(id.clone(), b.clone()) {
                g.bytes -= old.len() as u64;
            }
            while g.bytes > self.cfg.capacity {
                match g.blocks.pop_lru() {
                    Some((_, old)) => g.bytes -= old.len() as u64,
                    None => break,
                }
            }
        }
        drop(g);
        self.loaded.notify_all();
        result
    }

    fn fetch(&self, id: &BlockId) -> FsResult<Bytes> {
        let bs = self.cfg.block_size;
        let start = id.index * bs;
        let end = (start + bs).min(id.object.size);
        let key = &id.object.key;
        let etag = &id.object.etag;
        if let Some(b) = self
            .disk
            .as_ref()
            .and_then(|d| d.get(key, etag, id.index, (end - start) as usize))
        {
            return Ok(b);
        }
        let got = self
            .store
            .get(key, Some(Range::Bounded(start, end - 1)))
            .map_err(|e| {
                if e.is_not_found() {
                    // Expired by the coffer's lifecycle rule, or a record names
                    // an object never stored: the bytes are not there (ENOENT),
                    // not unreadable (EIO).
                    FsError::new(
                        libc::ENOENT,
                        format!("GetObject {key:?}: the object is not in the coffer: {e}"),
                    )
                } else {
                    FsError::io(&format!("GetObject {key:?}"), &e)
                }
            })?;
        if got.etag != *id.object.etag {
            return Err(FsError::new(
                libc::EIO,
                format!(
                    "GetObject {key:?}: ETag {} but the file is version {}",
                    got.etag, id.object.etag
                ),
            ));
        }
        if got.start != start || got.data.len() as u64 != end - start {
            return Err(FsError::new(
                libc::EIO,
                format!(
                    "GetObject {key:?}: asked for bytes {start}..{end}, got {} at {}",
                    got.data.len(),
                    got.start
                ),
            ));
        }
        if let Some(d) = &self.disk {
            d.put(key, etag, id.index, &got.data);
        }
        Ok(got.data)
    }

    fn queue(&self, id: BlockId) {
        {
            let mut g = self.lock();
            if g.loading.contains(&id) || g.queued.contains(&id) || g.blocks.peek(&id).is_some() {
                return;
            }
            g.queued.insert(id.clone());
        }
        let me = self.me.clone();
        let job_id = id.clone();
        let submitted = self.prefetch.submit(move || {
            let id = job_id;
            let Some(cache) = me.upgrade() else { return };
            cache.lock().queued.remove(&id);
            if let Err(e) = cache.block(&id) {
                log::debug!(
                    "read-ahead of {:?} block {}: {}",
                    id.object.key,
                    id.index,
                    e.message
                );
            }
        });
        // Refused only after shutdown: then nobody needs the block.
        if submitted.is_err() {
            self.lock().queued.remove(&id);
        }
    }

    /// Reads `len` bytes at `offset` of `object` for a reader at `state`:
    /// a sequential reader's window grows and is fetched ahead in parallel; a
    /// random one fetches only what it asked for. `state` is held only to
    /// note the read: a reader's requests wait for their blocks side by side.
    pub fn read(
        &self,
        object: &ObjectId,
        state: &Mutex<ReadState>,
        offset: u64,
        len: u32,
    ) -> FsResult<Bytes> {
        if offset >= object.size || len == 0 {
            return Ok(Bytes::new());
        }
        let end = (offset + u64::from(len)).min(object.size);
        let bs = self.cfg.block_size;
        let window = state.lock().unwrap_or_else(|p| p.into_inner()).advance(
            offset,
            end,
            bs,
            self.cfg.read_ahead,
        );
        if window > 0 {
            let first = end.div_ceil(bs);
            let last = (end + window).min(object.size).div_ceil(bs);
            for index in first..last {
                self.queue(BlockId {
                    object: object.clone(),
                    index,
                });
            }
        }
        self.read_blocks(object, offset, end).inspect_err(|e| {
            if e.errno == libc::ENOENT {
                // The FUSE layer logs ENOENT quietly (lookups miss all the time);
                // a file whose bytes are gone deserves a line.
                log::warn!("read: {}", e.message);
            }
        })
    }

    /// Bytes `offset..end` of `object`, block by block.
    fn read_blocks(&self, object: &ObjectId, offset: u64, end: u64) -> FsResult<Bytes> {
        let bs = self.cfg.block_size;
        let (first, last) = (offset / bs, (end - 1) / bs);
        if first == last {
            let b = self.block(&BlockId {
                object: object.clone(),
                index: first,
            })?;
            let at = (offset - first * bs) as usize;
            return Ok(b.slice(at..at + (end - offset) as usize));
        }
        let mut out = BytesMut::with_capacity((end - offset) as usize);
        for index in first..=last {
            let b = self.block(&BlockId {
                object: object.clone(),
                index,
            })?;
            let from = offset.max(index * bs) - index * bs;
            let to = end.min((index + 1) * bs) - index * bs;
            out.extend_from_slice(&b[from as usize..to as usize]);
        }
        Ok(out.freeze())
    }

    /// Stops the read-ahead workers: they take no more blocks and end on
    /// their own; nothing waits for them.
    pub fn shutdown(&self) {
        self.prefetch.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    fn setup(capacity: u64) -> (Arc<MemoryStore>, Arc<BlockCache>, ObjectId, Vec<u8>) {
        let store = Arc::new(MemoryStore::new());
        let data: Vec<u8> = (0..(10 * 4096 + 7)).map(|i| (i * 7 % 251) as u8).collect();
        let etag = store.put("k", Bytes::from(data.clone())).expect("put");
        let dyn_store: Arc<dyn ObjectStore> = store.clone();
        let cache = BlockCache::new(
            dyn_store,
            CacheConfig {
                block_size: 4096,
                capacity,
                read_concurrency: 2,
                read_ahead: 4 * 4096,
            },
            None,
        );
        let id = ObjectId {
            key: "k".into(),
            etag: etag.into(),
            size: data.len() as u64,
        };
        (store, cache, id, data)
    }

    #[test]
    fn reads_across_blocks_return_the_exact_bytes() {
        let (_s, cache, id, data) = setup(1 << 20);
        let st = Mutex::new(ReadState::default());
        for (off, len) in [
            (0u64, 1u32),
            (4095, 2),
            (100, 9000),
            (40_955, 100),
            (40_966, 10),
        ] {
            let got = cache.read(&id, &st, off, len).expect("read");
            let end = ((off + len as u64) as usize).min(data.len());
            assert_eq!(&got[..], &data[off as usize..end], "{off}+{len}");
        }
    }

    #[test]
    fn a_re_read_is_served_from_the_cache() {
        let (store, cache, id, _data) = setup(1 << 20);
        let st = Mutex::new(ReadState::default());
        cache.read(&id, &st, 5000, 100).expect("read");
        let gets = store.calls("GetObject");
        cache.read(&id, &Mutex::default(), 5000, 100).expect("read");
        assert_eq!(store.calls("GetObject"), gets);
    }

    #[test]
    fn the_cache_stays_within_its_budget() {
        let (_s, cache, id, _data) = setup(3 * 4096);
        let st = Mutex::new(ReadState::default());
        for off in (0..40_000).step_by(4096) {
            cache.read(&id, &st, off, 4096).expect("read");
        }
        assert!(cache.bytes() <= 3 * 4096);
    }

    #[test]
    fn a_missing_object_reads_enoent_not_eio() {
        let (_s, cache, id, _data) = setup(1 << 20);
        let gone = ObjectId {
            key: "never-stored".into(),
            ..id
        };
        let e = cache
            .read(&gone, &Mutex::default(), 0, 10)
            .expect_err("missing");
        assert_eq!(e.errno, libc::ENOENT, "{}", e.message);
        assert!(e.message.contains("never-stored"), "{}", e.message);
    }

    #[test]
    fn a_different_etag_is_a_different_object() {
        let (_s, cache, id, _data) = setup(1 << 20);
        let stale = ObjectId {
            etag: "0123456789abcdef0123456789abcdef".into(),
            ..id
        };
        let e = cache
            .read(&stale, &Mutex::default(), 0, 10)
            .expect_err("stale");
        assert_eq!(e.errno, libc::EIO);
    }
}
