//! The journal as of a past time: the newest checkpoint whose batches all come
//! at or before it, then the batches up to it, fetched in parallel. A batch is
//! in the view as of `T` when its key's time (when its mount stored it) is at
//! or before `T`. Serves as-of mounts (`Committer::open_as_of`, which never
//! writes) and the history commands (`walk`). Reads only; knows no inodes.

use super::committer::{CheckpointRule, Committer, State};
use super::fetch::{fetch_in_order, Fetched};
use super::format::{Batch, Checkpoint, JournalError, Overlay, CHECKPOINT_PREFIX, JOURNAL_PREFIX};
use crate::fs::error::{FsError, FsResult};
use crate::store::{ListAll, ObjectStore};
use std::ops::ControlFlow;
use std::sync::{Arc, Condvar, Mutex};

/// The time of a batch key (`.cofferfs/journal/<T>-…`), in microseconds.
pub fn batch_micros(key: &str) -> Option<u64> {
    leading_micros(key.strip_prefix(JOURNAL_PREFIX)?)
}

/// The time of the last batch a checkpoint key covers (its `upto`).
pub fn checkpoint_micros(key: &str) -> Option<u64> {
    leading_micros(key.strip_prefix(CHECKPOINT_PREFIX)?)
}

fn leading_micros(rest: &str) -> Option<u64> {
    let t = rest.split('-').next()?;
    if t.len() != 20 || !t.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    t.parse().ok()
}

/// Calls `each` with every batch whose key sorts after `after` and whose time
/// is at most `until`, in key order, until it says to stop. Stops at a batch
/// of a later format and returns why (later batches may build on it).
/// Listing and fetching run on other threads, a window ahead of `each`.
pub fn walk(
    store: &dyn ObjectStore,
    after: &str,
    until: u64,
    mut each: impl FnMut(&str, Batch) -> ControlFlow<()>,
) -> FsResult<Option<JournalError>> {
    let keys = ListAll::after(store, JOURNAL_PREFIX, after)
        .map(|r| {
            r.map(|m| m.key)
                .map_err(|e| FsError::io("listing the journal", &e))
        })
        .filter(|r| {
            r.as_ref().map_or(true, |k| {
                let batch = batch_micros(k).is_some();
                if !batch {
                    log::debug!("not a batch key: {k:?}");
                }
                batch
            })
        })
        // Keys sort by time: nothing later can be wanted.
        .take_while(|r| {
            r.as_ref()
                .map_or(true, |k| batch_micros(k).is_some_and(|t| t <= until))
        });
    let mut newer = None;
    fetch_in_order(store, keys, |key, got| match got {
        Fetched::Batch(b) => each(&key, b),
        Fetched::Skipped => ControlFlow::Continue(()),
        Fetched::Newer(e) => {
            newer = Some(e);
            ControlFlow::Break(())
        }
    })?;
    Ok(newer)
}

/// Where replay as of a time starts.
pub struct Start {
    pub overlay: Overlay,
    /// The last batch key the checkpoint covers ("" without one).
    pub floor: String,
    /// The checkpoint used.
    pub checkpoint: Option<String>,
    /// A newer checkpoint of a later format was passed over.
    pub newer: Option<JournalError>,
}

/// The newest readable checkpoint covering only batches at or before `until`
/// (their keys say so without reading them), or an empty start.
pub fn start_at_or_before(store: &dyn ObjectStore, until: u64) -> FsResult<Start> {
    let keys: Vec<String> = ListAll::new(store, CHECKPOINT_PREFIX)
        .map(|r| r.map(|m| m.key))
        .collect::<Result<_, _>>()
        .map_err(|e| FsError::io("listing checkpoints", &e))?;
    let mut newer = None;
    for key in keys.iter().rev() {
        if checkpoint_micros(key).is_none_or(|t| t > until) {
            continue;
        }
        let got = match store.get(key, None) {
            Ok(g) => g,
            Err(e) => {
                log::warn!("reading checkpoint {key:?}: {e}; trying an older one");
                continue;
            }
        };
        match Checkpoint::decode(key, &got.data) {
            Ok(c) => {
                return Ok(Start {
                    overlay: c.overlay,
                    floor: c.upto,
                    checkpoint: Some(key.clone()),
                    newer,
                })
            }
            Err(e @ JournalError::Version { .. }) => {
                newer.get_or_insert(e);
            }
            Err(e) => log::warn!("{e}; trying an older checkpoint"),
        }
    }
    Ok(Start {
        overlay: Overlay::default(),
        floor: String::new(),
        checkpoint: None,
        newer,
    })
}

/// The journal's overlay as of `until`.
pub struct AsOf {
    pub overlay: Overlay,
    pub checkpoint: Option<String>,
    /// Batches applied after the checkpoint, and the last of them.
    pub batches: usize,
    pub last: Option<String>,
    /// Why the view may lack something: an object of a later format.
    pub newer: Option<String>,
}

/// Replays the journal as of `until` (microseconds since the epoch).
pub fn replay_as_of(store: &dyn ObjectStore, until: u64) -> FsResult<AsOf> {
    let start = start_at_or_before(store, until)?;
    let mut overlay = start.overlay;
    let (mut batches, mut last) = (0, None);
    let stopped = walk(store, &start.floor, until, |key, b| {
        for r in b.records {
            overlay.apply_owned(r);
        }
        batches += 1;
        last = Some(key.to_string());
        ControlFlow::Continue(())
    })?;
    Ok(AsOf {
        overlay,
        checkpoint: start.checkpoint,
        batches,
        last,
        newer: stopped.or(start.newer).map(|e| e.to_string()),
    })
}

impl Committer {
    /// A committer showing the journal as of `until`, for a read-only mount:
    /// no thread, no reloads (`halted`), no checkpoint; it never writes.
    pub fn open_as_of(store: Arc<dyn ObjectStore>, until: u64) -> FsResult<Arc<Committer>> {
        let started = std::time::Instant::now();
        let r = replay_as_of(store.as_ref(), until)?;
        log::info!(
            "journal as of {until} µs: checkpoint {:?}, then {} batches up to {:?} ({:?})",
            r.checkpoint,
            r.batches,
            r.last,
            started.elapsed()
        );
        if let Some(why) = &r.newer {
            log::warn!(
                "{why}: the view as of this time shows the journal up to the first object of \
                 the later format"
            );
        }
        // `base` stays empty: it only matters to a rebuild of `overlay`
        // (after a reload or a withdrawn record), and this journal has no
        // reloads, no thread and no records. A second copy of a large
        // overlay would cost time and memory.
        let state = State {
            overlay: r.overlay,
            halted: true,
            newer: r.newer,
            ..State::default()
        };
        Ok(Arc::new(Committer {
            store,
            mount_id: "0".repeat(16),
            checkpoints: CheckpointRule::NEVER,
            state: Mutex::new(state),
            changed: Condvar::new(),
            thread: Mutex::new(None),
            checkpointer: Mutex::new(None),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::super::fetch::WINDOW;
    use super::super::test_records::mkdir;
    use super::*;
    use crate::fs::journal::{batch_key, checkpoint_key, Record};
    use crate::store::memory::MemoryStore;
    use bytes::Bytes;

    const M: &str = "00000000000000aa";

    fn put_batch(store: &MemoryStore, micros: u64, seq: u64, records: Vec<Record>) -> String {
        let key = batch_key(micros, M, seq);
        let body = Batch::new(M, seq, records).encode();
        store.put(&key, Bytes::from(body)).expect("put");
        key
    }

    fn has(o: &Overlay, p: &str) -> bool {
        o.get(p).is_some()
    }

    #[test]
    fn a_batch_is_in_the_view_from_its_own_time_on() {
        let store = MemoryStore::new();
        put_batch(&store, 1_000, 1, vec![mkdir("a")]);
        put_batch(&store, 2_000, 2, vec![mkdir("b")]);
        put_batch(&store, 3_000, 3, vec![Record::Hide { path: "a".into() }]);
        let at = |t| replay_as_of(&store, t).expect("replay").overlay;
        assert!(!has(&at(999), "a"));
        assert!(has(&at(1_000), "a") && !has(&at(1_000), "b"));
        assert!(has(&at(2_999), "a") && has(&at(2_999), "b"));
        assert!(!has(&at(3_000), "a"), "the hide at exactly 3000 applies");
        assert!(at(3_000).hides_object("a/x"));
    }

    #[test]
    fn a_checkpoint_is_used_only_when_it_covers_nothing_after_the_time() {
        let store = MemoryStore::new();
        let k1 = put_batch(&store, 1_000, 1, vec![mkdir("a")]);
        let k2 = put_batch(&store, 2_000, 2, vec![mkdir("b")]);
        put_batch(&store, 3_000, 3, vec![mkdir("c")]);
        for (upto, dirs) in [(&k1, vec!["a"]), (&k2, vec!["a", "b"])] {
            let mut o = Overlay::default();
            for d in dirs {
                o.apply(&mkdir(d));
            }
            let cp = Checkpoint::new(upto, o);
            store
                .put(&checkpoint_key(upto, "ee"), Bytes::from(cp.encode()))
                .expect("put");
        }
        let r = replay_as_of(&store, 2_500).expect("replay");
        assert!(r.checkpoint.as_deref().is_some_and(|c| c.contains("2000")));
        assert_eq!(r.batches, 0);
        let r = replay_as_of(&store, 1_500).expect("replay");
        assert!(r.checkpoint.as_deref().is_some_and(|c| c.contains("1000")));
        assert!(has(&r.overlay, "a") && !has(&r.overlay, "b"));
        let r = replay_as_of(&store, 900).expect("replay");
        assert_eq!(r.checkpoint, None);
        assert!(!has(&r.overlay, "a"));
        let r = replay_as_of(&store, 5_000).expect("replay");
        assert_eq!((r.batches, has(&r.overlay, "c")), (1, true));
    }

    #[test]
    fn a_later_format_before_the_time_stops_replay_and_says_why() {
        let store = MemoryStore::new();
        put_batch(&store, 1_000, 1, vec![mkdir("a")]);
        let v3 = batch_key(2_000, M, 2);
        store
            .put(
                &v3,
                Bytes::from(r#"{"format":"cofferfs-journal","version":3}"#),
            )
            .expect("put");
        put_batch(&store, 3_000, 3, vec![mkdir("c")]);
        let r = replay_as_of(&store, 1_500).expect("replay");
        assert_eq!(r.newer, None, "the later batch is after the time");
        let r = replay_as_of(&store, 9_000).expect("replay");
        assert!(r.newer.is_some_and(|w| w.contains(&v3)));
        assert!(has(&r.overlay, "a") && !has(&r.overlay, "c"));
    }

    #[test]
    fn many_batches_replay_in_key_order_across_fetch_windows() {
        let store = MemoryStore::new();
        for i in 0..(WINDOW as u64 * 2 + 7) {
            let r = Record::Attr {
                path: "f".into(),
                attrs: crate::fs::journal::Attrs {
                    mode: Some(i as u32),
                    ..Default::default()
                },
            };
            put_batch(&store, 10 + i, i, vec![r]);
        }
        let r = replay_as_of(&store, u64::MAX).expect("replay");
        assert_eq!(r.batches, WINDOW * 2 + 7);
        assert_eq!(
            r.overlay.attrs("f").and_then(|a| a.mode),
            Some(WINDOW as u32 * 2 + 6)
        );
        let j = Committer::open_as_of(Arc::new(store), 10 + 5).expect("open");
        assert_eq!(
            j.with_overlay(|o| o.attrs("f").and_then(|a| a.mode)),
            Some(5)
        );
        assert!(
            !j.reload().expect("reload"),
            "an as-of journal never reloads"
        );
        j.shutdown(false);
    }
}

#[cfg(test)]
mod bench {
    use super::*;

    fn batch(b: usize) -> Batch {
        let records = (0..1000)
            .map(|j| crate::fs::journal::bench_record(b * 1000 + j))
            .collect();
        Batch::new("m", b as u64, records)
    }

    /// CPU time of this thread: wall time on a busy machine says little.
    fn cpu() -> std::time::Duration {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid timespec to fill.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }

    /// `cargo test --release --lib replay_costs -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn replay_costs() {
        let n: usize = std::env::var("BATCHES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(100);
        let bodies: Vec<Vec<u8>> = (0..n).map(|b| batch(b).encode()).collect();
        let t = cpu();
        let batches: Vec<Batch> = bodies
            .iter()
            .map(|b| Batch::decode("k", b).expect("decode"))
            .collect();
        eprintln!("decode {n}k records: {:?} CPU", cpu() - t);
        let t = cpu();
        let o = Overlay::replay(&batches);
        eprintln!("apply {n}k records: {:?} CPU", cpu() - t);
        let t = cpu();
        let mut owned = Overlay::default();
        for r in batches.into_iter().flat_map(|b| b.records) {
            owned.apply_owned(r);
        }
        eprintln!("apply {n}k records, moving them: {:?} CPU", cpu() - t);
        assert_eq!(owned, o);
        let t = cpu();
        let c = o.clone();
        eprintln!("clone overlay: {:?} CPU", cpu() - t);
        let t = cpu();
        let body = Checkpoint::encode_of("k", &c);
        eprintln!("encode checkpoint: {:?} CPU", cpu() - t);
        let t = cpu();
        let back = Checkpoint::decode("c", &body).expect("decode");
        eprintln!(
            "decode checkpoint ({} bytes, {} entries): {:?} CPU",
            body.len(),
            back.overlay.entries().count(),
            cpu() - t
        );
    }
}
