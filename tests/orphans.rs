//! Orphan uploads (issue 10, item 5): a mount killed mid-write leaves an open
//! multipart upload that blocks its key; the next mount aborts uploads older than
//! `--abort-uploads-older-than` at start, logs each, and leaves fresh ones alone.

mod common;

use bytes::Bytes;
use cofferfs::protocol::md5;
use cofferfs::store::ObjectStore;
use common::{client, random_bytes, spawn_writer, wait_for, Mount, Server, COFFER};
use std::time::Duration;

/// Initiates `key` and uploads one part, never completing it.
fn orphan(c: &dyn ObjectStore, key: &str) -> String {
    let id = c.initiate(key).expect("initiate");
    let data = random_bytes(1 << 20, 3);
    c.upload_part(key, &id, 1, Bytes::from(data.clone()), md5(&data))
        .expect("part");
    id
}

fn open_ids(c: &dyn ObjectStore) -> Vec<String> {
    c.list_uploads("", "")
        .expect("list uploads")
        .uploads
        .into_iter()
        .map(|u| u.upload_id)
        .collect()
}

#[test]
fn mount_start_aborts_uploads_older_than_the_threshold_and_logs_each() {
    let server = Server::start(&[]);
    let c = client(&server.endpoint);
    let old = orphan(&c, "orphan.bin");
    // Initiated times have one-second resolution: leave a clear gap.
    std::thread::sleep(Duration::from_secs(5));
    let fresh = orphan(&c, "fresh.bin");
    let m = Mount::start(&server, &["--abort-uploads-older-than", "3s"]);
    let ids = open_ids(&c);
    assert!(!ids.contains(&old), "the old upload is aborted: {ids:?}");
    assert!(ids.contains(&fresh), "the fresh upload is kept: {ids:?}");
    let log = m.log_text();
    assert!(
        log.lines().any(|l| l.contains("aborted orphan upload")
            && l.contains(&old)
            && l.contains("orphan.bin")),
        "log names the aborted upload:\n{log}"
    );
    assert!(
        !log.contains(&fresh),
        "nothing said of the fresh one:\n{log}"
    );
    // The path the orphan blocked takes a new file again.
    let data = random_bytes(3 << 20, 4);
    std::fs::write(m.path("orphan.bin"), &data).expect("write the freed path");
    assert!(std::fs::read(m.path("orphan.bin")).unwrap() == data);
    m.unmount();
}

#[test]
fn by_default_and_with_zero_fresh_uploads_are_left_alone() {
    let server = Server::start(&[]);
    let c = client(&server.endpoint);
    let id = orphan(&c, "kept.bin");
    std::thread::sleep(Duration::from_secs(2));
    // Default: one day.
    let m = Mount::start(&server, &[]);
    assert!(open_ids(&c).contains(&id), "younger than 1d: kept");
    assert!(!m.log_text().contains("aborted orphan"), "{}", m.log_text());
    m.unmount();
    // 0 means never (fstab form).
    let m = Mount::start(&server, &["-o", "abort_uploads_older_than=0"]);
    assert!(open_ids(&c).contains(&id), "0: never aborted");
    m.unmount();
}

#[test]
fn a_local_mount_killed_mid_copy_frees_the_path_at_the_next_start() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let local = data_dir.to_str().unwrap();
    let mut first = Mount::start_with(&["--local", local, COFFER], &["--part-size", "1MiB"]);
    // More than one part, held open: the upload is initiated, never completed.
    let (mut dd, stdin) = spawn_writer(&first.path("big.bin"), &random_bytes(3 << 20, 5));
    std::thread::sleep(Duration::from_secs(1));
    first.kill9();
    drop(stdin);
    let _ = dd.kill();
    let _ = dd.wait();
    drop(first);
    std::thread::sleep(Duration::from_secs(2));
    let second = Mount::start_with(
        &["--local", local, COFFER],
        &["--abort-uploads-older-than", "1s"],
    );
    assert!(
        wait_for(Duration::from_secs(5), || second
            .log_text()
            .contains("aborted orphan upload")),
        "the killed mount's upload is aborted at start:\n{}",
        second.log_text()
    );
    assert!(
        second.log_text().contains("big.bin"),
        "{}",
        second.log_text()
    );
    let data = random_bytes(2 << 20, 6);
    std::fs::write(second.path("big.bin"), &data).expect("cp to the same path works");
    assert!(std::fs::read(second.path("big.bin")).unwrap() == data);
    second.unmount();
}
