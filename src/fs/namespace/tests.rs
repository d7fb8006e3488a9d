//! The namespace's refusals, checked on an `Fs` over a `MemoryStore` (no HTTP,
//! no FUSE): each names the errno a caller sees and that nothing changed.

use super::*;
use crate::fs::error::FsResult;
use crate::fs::FsConfig;
use crate::store::memory::MemoryStore;
use std::sync::Arc;

/// An `Fs` over an empty in-memory coffer; its private directory lives as long
/// as the returned guard.
fn fs_with(allow_delete: bool, read_only: bool) -> (Arc<Fs>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = FsConfig {
        allow_delete,
        read_only,
        cache_dir: dir.path().join("cache"),
        ..FsConfig::default()
    };
    let fs = Fs::new(Arc::new(MemoryStore::new()), cfg).expect("Fs::new");
    (fs, dir)
}

fn me(fs: &Fs) -> Owner {
    Owner {
        uid: fs.cfg.uid,
        gid: fs.cfg.gid,
    }
}

fn errno<T: std::fmt::Debug>(r: FsResult<T>) -> i32 {
    r.expect_err("the call should fail").errno
}

fn name(s: &str) -> &OsStr {
    OsStr::new(s)
}

#[test]
fn mkdir_of_a_name_that_exists_is_eexist() {
    let (fs, _dir) = fs_with(false, false);
    fs.mkdir(ROOT, name("d"), 0o755, me(&fs)).expect("mkdir");
    assert_eq!(
        errno(fs.mkdir(ROOT, name("d"), 0o755, me(&fs))),
        libc::EEXIST
    );
    fs.shutdown();
}

#[test]
fn the_reserved_prefix_cannot_be_made_or_found() {
    let (fs, _dir) = fs_with(false, false);
    assert_eq!(
        errno(fs.mkdir(ROOT, name(".cofferfs"), 0o755, me(&fs))),
        libc::EPERM
    );
    assert_eq!(errno(fs.lookup(ROOT, name(".cofferfs"))), libc::ENOENT);
    fs.shutdown();
}

#[test]
fn a_read_only_mount_refuses_mkdir_and_create_with_erofs() {
    let (fs, _dir) = fs_with(false, true);
    assert_eq!(
        errno(fs.mkdir(ROOT, name("d"), 0o755, me(&fs))),
        libc::EROFS
    );
    let created = fs.create(ROOT, name("f"), 0o644, libc::O_WRONLY, 0, me(&fs));
    assert_eq!(errno(created), libc::EROFS);
    assert_eq!(errno(fs.lookup(ROOT, name("d"))), libc::ENOENT);
    fs.shutdown();
}

#[test]
fn create_with_o_excl_of_an_existing_file_is_eexist() {
    let (fs, _dir) = fs_with(false, false);
    let (_, fh) = fs
        .create(ROOT, name("f"), 0o644, libc::O_WRONLY, 0, me(&fs))
        .expect("create");
    fs.release(fh).expect("close stores the empty file");
    let again = fs.create(
        ROOT,
        name("f"),
        0o644,
        libc::O_WRONLY | libc::O_EXCL,
        0,
        me(&fs),
    );
    assert_eq!(errno(again), libc::EEXIST);
    fs.shutdown();
}

#[test]
fn with_no_delete_unlink_of_a_file_with_bytes_is_eperm_but_an_empty_file_goes() {
    let (fs, _dir) = fs_with(false, false);
    let (_, fh) = fs
        .create(ROOT, name("f"), 0o644, libc::O_WRONLY, 0, me(&fs))
        .expect("create");
    fs.write(fh, 0, b"bytes").expect("write");
    fs.flush(fh, 0).expect("close");
    fs.release(fh).expect("release");
    assert_eq!(errno(fs.unlink(ROOT, name("f"))), libc::EPERM);
    fs.lookup(ROOT, name("f")).expect("still there");
    let (_, fh) = fs
        .create(ROOT, name("empty"), 0o644, libc::O_WRONLY, 0, me(&fs))
        .expect("create");
    fs.release(fh).expect("close");
    fs.unlink(ROOT, name("empty"))
        .expect("an empty file holds no bytes");
    assert_eq!(errno(fs.lookup(ROOT, name("empty"))), libc::ENOENT);
    fs.shutdown();
}

#[test]
fn unlink_of_a_directory_is_eisdir_and_rmdir_of_a_file_is_enotdir() {
    let (fs, _dir) = fs_with(true, false);
    fs.mkdir(ROOT, name("d"), 0o755, me(&fs)).expect("mkdir");
    let (_, fh) = fs
        .create(ROOT, name("f"), 0o644, libc::O_WRONLY, 0, me(&fs))
        .expect("create");
    fs.release(fh).expect("close");
    assert_eq!(errno(fs.unlink(ROOT, name("d"))), libc::EISDIR);
    assert_eq!(errno(fs.rmdir(ROOT, name("f"))), libc::ENOTDIR);
    fs.rmdir(ROOT, name("d"))
        .expect("an empty directory can go");
    fs.unlink(ROOT, name("f")).expect("a closed file can go");
    assert_eq!(errno(fs.lookup(ROOT, name("f"))), libc::ENOENT);
    fs.shutdown();
}

#[test]
fn a_file_being_written_can_be_renamed_and_its_close_lands_at_the_new_name() {
    let (fs, _dir) = fs_with(false, false);
    let (a, fh) = fs
        .create(ROOT, name("f"), 0o644, libc::O_WRONLY, 0, me(&fs))
        .expect("create");
    fs.write(fh, 0, b"data").expect("write");
    fs.rename(ROOT, name("f"), ROOT, name("g"), false)
        .expect("rename while written");
    fs.flush(fh, 0).expect("close");
    fs.release(fh).expect("release");
    assert_eq!(errno(fs.lookup(ROOT, name("f"))), libc::ENOENT);
    let g = fs.lookup(ROOT, name("g")).expect("g");
    assert_eq!((g.ino, g.size), (a.ino, 4));
    fs.shutdown();
}

#[test]
fn a_second_writer_of_a_file_being_written_is_ebusy() {
    let (fs, _dir) = fs_with(false, false);
    let (a, fh) = fs
        .create(ROOT, name("f"), 0o644, libc::O_WRONLY, 0, me(&fs))
        .expect("create");
    assert_eq!(errno(fs.open(a.ino, libc::O_WRONLY, 0)), libc::EBUSY);
    let (r, _) = fs
        .open(a.ino, libc::O_RDONLY, 0)
        .expect("a reader may open it");
    fs.write(fh, 0, b"abc").expect("write");
    assert_eq!(&fs.read(r, 0, 10).expect("read")[..], b"abc");
    fs.release(r).expect("release reader");
    fs.release(fh).expect("release");
    fs.shutdown();
}

#[test]
fn rename_of_a_directory_into_itself_is_einval() {
    let (fs, _dir) = fs_with(false, false);
    let a = fs.mkdir(ROOT, name("a"), 0o755, me(&fs)).expect("a");
    let b = fs.mkdir(a.ino, name("b"), 0o755, me(&fs)).expect("a/b");
    let r = fs.rename(ROOT, name("a"), b.ino, name("c"), false);
    assert_eq!(errno(r), libc::EINVAL);
    fs.shutdown();
}

#[test]
fn rename_over_a_directory_that_is_not_empty_is_enotempty() {
    let (fs, _dir) = fs_with(false, false);
    fs.mkdir(ROOT, name("src"), 0o755, me(&fs)).expect("src");
    let dst = fs.mkdir(ROOT, name("dst"), 0o755, me(&fs)).expect("dst");
    fs.mkdir(dst.ino, name("inside"), 0o755, me(&fs))
        .expect("dst/inside");
    let r = fs.rename(ROOT, name("src"), ROOT, name("dst"), false);
    assert_eq!(errno(r), libc::ENOTEMPTY);
    let r = fs.rename(ROOT, name("src"), ROOT, name("dst"), true);
    assert_eq!(errno(r), libc::EEXIST, "RENAME_NOREPLACE");
    fs.lookup(ROOT, name("src")).expect("src stays");
    fs.shutdown();
}

#[test]
fn a_directory_gaining_many_entries_costs_one_times_record_per_batch() {
    use crate::fs::journal::{Batch, JOURNAL_PREFIX};
    use crate::store::ListAll;
    let (fs, _dir) = fs_with(true, false);
    let d = fs.mkdir(ROOT, name("d"), 0o755, me(&fs)).expect("mkdir");
    for i in 0..300 {
        fs.mkdir(d.ino, name(&format!("s{i}")), 0o755, me(&fs))
            .expect("mkdir");
    }
    fs.sync_metadata().expect("stored");
    let keys: Vec<String> = ListAll::new(fs.store.as_ref(), JOURNAL_PREFIX)
        .map(|m| m.expect("list").key)
        .collect();
    let mut times_of_d = 0;
    for k in &keys {
        let body = fs.store.get(k, None).expect("get").data;
        let b = Batch::decode(k, &body).expect("batch");
        times_of_d += b
            .records
            .iter()
            .filter(|r| matches!(r, Record::Attr { path, .. } if path == "d"))
            .count();
    }
    assert!(
        (1..=keys.len()).contains(&times_of_d),
        "{times_of_d} time records of d in {} batches",
        keys.len()
    );
    let shown = fs.getattr(d.ino).expect("d");
    assert_eq!(shown.nlink, 302);
    assert!(shown.mtime >= d.mtime && shown.ctime > d.ctime);
    fs.shutdown();
}
