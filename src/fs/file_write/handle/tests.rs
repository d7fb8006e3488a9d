//! WriteHandle's own tests: streaming, staging, edits, poisoning, fallback keys.

use super::*;
use crate::store::memory::MemoryStore;
use crate::transfer::upload::UploadConfig;

fn setup() -> (
    Arc<MemoryStore>,
    Arc<Uploader>,
    Arc<Staging>,
    tempfile::TempDir,
) {
    setup_with(4 << 20)
}

/// A store, an uploader of 1 MiB parts with `memory` for part buffers,
/// and 64 MiB of staging.
fn setup_with(
    memory: u64,
) -> (
    Arc<MemoryStore>,
    Arc<Uploader>,
    Arc<Staging>,
    tempfile::TempDir,
) {
    let store = Arc::new(MemoryStore::new());
    let dyn_store: Arc<dyn ObjectStore> = store.clone();
    let up = Uploader::new(
        dyn_store,
        UploadConfig {
            part_size: 1 << 20,
            memory,
            concurrency: 2,
        },
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let staging = Staging::new(dir.path(), 64 << 20);
    (store, up, staging, dir)
}

/// The stored version at `key` holding `data`, as an edit starts from it.
fn source(key: &str, data: &[u8]) -> Source {
    Source {
        key: key.into(),
        etag: hex(&crate::protocol::md5(data)),
        size: data.len() as u64,
    }
}

#[test]
fn a_write_after_completion_begins_a_new_version_from_the_stored_one() {
    let (store, up, st, _d) = setup();
    let mut h = WriteHandle::new(&up, &st, "k", None);
    h.write(0, b"abc").expect("write");
    assert!(matches!(h.finish(), Ok(Finished::Stored { size: 3, .. })));
    assert!(h.is_completed());
    h.reopen();
    h.write(3, b"d").expect("write after fsync");
    h.write(0, b"A").expect("and an edit");
    let Ok(Finished::Stored { key, size: 4, .. }) = h.finish() else {
        panic!("not stored");
    };
    assert_ne!(key, "k", "the coffer is write-once: a new key");
    assert_eq!(store.object("k").as_deref(), Some(&b"abc"[..]));
    assert_eq!(store.object(&key).as_deref(), Some(&b"Abcd"[..]));
}

#[test]
fn a_staged_file_goes_on_from_its_staging_file_after_fsync() {
    let (store, up, st, _d) = setup();
    let mut h = WriteHandle::new(&up, &st, "k", None);
    h.write(5, b"abc").expect("a hole first: staged");
    assert!(matches!(h.finish(), Ok(Finished::Stored { size: 8, .. })));
    let gets = store.calls("GetObject");
    h.reopen();
    h.write(0, b"xy").expect("write after fsync");
    let Ok(Finished::Stored { key, .. }) = h.finish() else {
        panic!("not stored");
    };
    assert_eq!(
        store.calls("GetObject"),
        gets,
        "no copy-in: the staging file is the base"
    );
    assert_eq!(store.object(&key).as_deref(), Some(&b"xy\0\0\0abc"[..]));
}

#[test]
fn a_seek_back_in_a_small_file_moves_it_to_staging() {
    let (store, up, st, _d) = setup();
    let mut h = WriteHandle::new(&up, &st, "k", None);
    h.write(0, b"hello world").expect("write");
    h.write(0, b"J").expect("seek back");
    h.write(20, b"!").expect("hole");
    assert!(matches!(h.finish(), Ok(Finished::Stored { size: 21, .. })));
    let mut want = b"Jello world".to_vec();
    want.resize(20, 0);
    want.push(b'!');
    assert_eq!(store.object("k").as_deref(), Some(&want[..]));
}

#[test]
fn a_seek_back_after_parts_left_edits_a_version_of_what_went_up() {
    let (store, up, st, _d) = setup();
    let mut h = WriteHandle::new(&up, &st, "k", None);
    let mut want = vec![1u8; 3 << 20];
    h.write(0, &want).expect("write");
    h.write(1, b"x").expect("seek back");
    want[1] = b'x';
    h.write(want.len() as u64, b"tail").expect("append");
    want.extend_from_slice(b"tail");
    let Ok(Finished::Stored { key, size, .. }) = h.finish() else {
        panic!("not stored");
    };
    assert_eq!(size, want.len() as u64);
    assert_eq!(store.object(&key).as_deref(), Some(&want[..]));
    assert!(h.landed().any(|k| k == "k"), "the version of what went up");
}

#[test]
fn reads_see_what_the_handle_wrote_wherever_it_is() {
    let (store, up, st, _d) = setup();
    let mut h = WriteHandle::new(&up, &st, "k", None);
    let data: Vec<u8> = (0..(3u32 << 20)).map(|i| (i % 251) as u8).collect();
    h.write(0, &data).expect("write");
    // The last bytes are still in the part buffer.
    let end = data.len() as u64;
    assert_eq!(
        h.read(end - 10, 10).expect("read tail"),
        ReadFrom::Bytes(data[data.len() - 10..].to_vec())
    );
    assert_eq!(
        h.read(end, 10).expect("read at end"),
        ReadFrom::Bytes(vec![])
    );
    // The first ones left as a part: they become a version to read.
    let ReadFrom::Object(src) = h.read(0, 10).expect("read head") else {
        panic!("not an object");
    };
    assert_eq!(store.object(&src.key).as_deref(), Some(&data[..]));
    h.write(0, b"Z").expect("edit");
    assert_eq!(
        h.read(0, 2).expect("read staged"),
        ReadFrom::Bytes(vec![b'Z', 1])
    );
}

#[test]
fn an_edit_appends_to_a_copy_of_the_old_bytes() {
    let (store, up, st, _d) = setup();
    store
        .put("old", bytes::Bytes::from_static(b"abc"))
        .expect("put");
    let mut h = WriteHandle::edit(&up, &st, "new", Some(source("old", b"abc")));
    h.write(3, b"def").expect("append");
    assert!(matches!(h.finish(), Ok(Finished::Stored { size: 6, .. })));
    assert_eq!(store.object("new").as_deref(), Some(&b"abcdef"[..]));
    assert_eq!(store.object("old").as_deref(), Some(&b"abc"[..]));
}

#[test]
fn an_edit_without_changes_uploads_nothing() {
    let (store, up, st, _d) = setup();
    store
        .put("old", bytes::Bytes::from_static(b"abc"))
        .expect("put");
    let mut h = WriteHandle::edit(&up, &st, "new", Some(source("old", b"abc")));
    assert_eq!(h.finish(), Ok(Finished::Unchanged));
    assert!(store.object("new").is_none());
}

#[test]
fn an_empty_file_is_reported_for_the_journal() {
    let (_store, up, st, _d) = setup();
    let mut h = WriteHandle::new(&up, &st, "k", None);
    assert_eq!(h.finish(), Ok(Finished::Empty));
    // Still open: a later write through another descriptor is kept.
    h.write(0, b"x").expect("write");
    assert!(matches!(h.finish(), Ok(Finished::Stored { size: 1, .. })));
}

#[test]
fn a_failed_part_makes_finish_eio_and_leaves_no_object() {
    let (store, up, st, _d) = setup();
    *store.fail_parts.lock().unwrap() = (1..100).collect();
    let mut h = WriteHandle::new(&up, &st, "k", None);
    let _ = h.write(0, &vec![7u8; 3 << 20]);
    let e = h.finish().expect_err("must fail");
    assert_eq!(e.errno, libc::EIO);
    assert!(store.object("k").is_none());
    assert_eq!(store.open_uploads(), 0);
}

#[test]
fn staging_beyond_its_limit_is_enospc() {
    let (_store, up, _st, d) = setup();
    let small = Staging::new(d.path(), 10);
    let mut h = WriteHandle::new(&up, &small, "k", None);
    h.write(0, b"12345").expect("write");
    h.write(0, b"x").expect("staged");
    assert_eq!(
        h.write(5, b"678901").map_err(|e| e.errno),
        Err(libc::ENOSPC)
    );
}

#[test]
fn a_failed_write_poisons_the_handle_with_its_first_errno() {
    let (store, up, _st, d) = setup();
    let small = Staging::new(d.path(), 10);
    let mut h = WriteHandle::new(&up, &small, "k", None);
    h.write(0, b"12345").expect("write");
    h.write(0, b"x").expect("staged");
    assert_eq!(
        h.write(5, b"678901").map_err(|e| e.errno),
        Err(libc::ENOSPC)
    );
    // Even a write that would fit, and the close, fail the same way.
    assert_eq!(h.write(5, b"6").map_err(|e| e.errno), Err(libc::ENOSPC));
    assert_eq!(h.truncate(1).map_err(|e| e.errno), Err(libc::ENOSPC));
    assert_eq!(h.finish().map_err(|e| e.errno), Err(libc::ENOSPC));
    assert!(store.object("k").is_none());
}

#[test]
fn an_edit_whose_copy_fails_stores_nothing() {
    let (store, up, st, _d) = setup();
    // The old version's bytes are not where the journal says.
    let mut h = WriteHandle::edit(&up, &st, "new", Some(source("gone", b"abc")));
    assert_eq!(h.write(3, b"def").map_err(|e| e.errno), Err(libc::EIO));
    assert!(h.write(3, b"def").is_err(), "poisoned");
    assert!(h.finish().is_err());
    assert!(store.object("new").is_none());
}

#[test]
fn an_edit_whose_copy_does_not_match_its_etag_stores_nothing() {
    let (store, up, st, _d) = setup();
    store
        .put("old", bytes::Bytes::from_static(b"abc"))
        .expect("put");
    let mut wrong = source("old", b"abc");
    wrong.etag = hex(&crate::protocol::md5(b"abd"));
    let mut h = WriteHandle::edit(&up, &st, "new", Some(wrong));
    assert_eq!(h.write(3, b"d").map_err(|e| e.errno), Err(libc::EIO));
    assert_eq!(h.finish().map_err(|e| e.errno), Err(libc::EIO));
    assert!(store.object("new").is_none());
    // A shorter object than the journal says is refused too.
    let mut longer = source("old", b"abcdef");
    longer.etag = "x-2".into();
    let mut h = WriteHandle::edit(&up, &st, "new2", Some(longer));
    assert!(h.truncate(1).is_err());
    assert!(h.finish().is_err());
    assert!(store.object("new2").is_none());
}

#[test]
fn a_new_file_whose_key_is_taken_lands_at_its_fallback() {
    let (store, up, st, _d) = setup();
    // An orphan upload of a crashed client holds the key.
    store.initiate("k").expect("initiate");
    let mut h = WriteHandle::new(&up, &st, "k", Some("alt".into()));
    h.write(0, b"abc").expect("write");
    match h.finish() {
        Ok(Finished::Stored { key, size: 3, .. }) => assert_eq!(key, "alt"),
        other => panic!("{other:?}"),
    }
    assert_eq!(store.object("alt").as_deref(), Some(&b"abc"[..]));
}

#[test]
fn writers_beyond_the_memory_budget_go_on_through_staging() {
    let (store, up, st, _dir) = setup_with(1 << 20);
    // Many open writers, each holding a little, none ever filling a part:
    // none may wait for another.
    let mut hs: Vec<WriteHandle> = (0..40)
        .map(|i| WriteHandle::new(&up, &st, &format!("k{i}"), None))
        .collect();
    for round in 0..3u8 {
        for h in hs.iter_mut() {
            let at = h.size();
            h.write(at, &[round; 40_000]).expect("write");
        }
    }
    assert!(up.budget().used() <= up.budget().limit());
    for (i, h) in hs.iter_mut().enumerate() {
        assert!(matches!(
            h.finish(),
            Ok(Finished::Stored { size: 120_000, .. })
        ));
        let got = store.object(&format!("k{i}")).expect("stored");
        assert_eq!(
            &got[..],
            &[[0u8; 40_000], [1; 40_000], [2; 40_000]].concat()[..]
        );
    }
    assert_eq!(up.budget().used(), 0);
}
