//! The metadata journal through real mounts: rsync, tar -p, cp -a, renames seen by a
//! second mount, a crash after tar -x; damaged and later-format batches, records
//! naming missing objects; fsync and unmount storing metadata. Every mount is
//! unmounted on every path and every wait is bounded.

mod common;

use bytes::Bytes;
use cofferfs::fs::journal;
use cofferfs::store::{ListAll, ObjectStore};
use common::{client, random_bytes, sh, wait_for, CliOutput, Mount, Server};
use std::path::Path;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(300);

fn q(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

fn ok(script: &str) -> CliOutput {
    let out = sh(script, LIMIT);
    assert!(out.ok, "{script}\n{}{}", out.stdout, out.stderr);
    out
}

/// A source tree with what backups meet: nested dirs, sizes across a part,
/// an empty file, an empty dir, a symlink, several modes, nanosecond mtimes.
fn source_tree(root: &Path) {
    let w = |rel: &str, data: &[u8]| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, data).expect("write");
    };
    w("a/one.txt", b"one\n");
    w("a/b/two.bin", &random_bytes(1_500_000, 2));
    w("a/b/c/three.bin", &random_bytes(40_000, 3));
    w("top.txt", b"top\n");
    w("empty", b"");
    w("secret/key", b"k");
    std::fs::create_dir_all(root.join("empty-dir")).expect("mkdir");
    ok(&format!(
        "cd {r} && ln -s a/one.txt link && chmod 0600 secret/key && chmod 0700 secret && \
         chmod 0755 a/b/two.bin && \
         touch -h -d '2020-01-02 03:04:05.123456789' a/one.txt link && \
         touch -d '2019-05-06 07:08:09.987654321' a/b top.txt empty empty-dir && \
         touch -d '2018-07-08 09:10:11.5' a/b/c secret a",
        r = q(root)
    ));
}

/// `path mode mtime(ns) size|target` for every entry, sorted.
fn inventory(root: &Path) -> String {
    ok(&format!(
        "cd {} && find . -mindepth 1 -printf '%P %m %T@ %y %s %l\\n' | \
         awk '$4 == \"d\" {{ $5 = \"-\" }} {{ print }}' | sort",
        q(root)
    ))
    .stdout
}

fn transferred(stats: &str) -> String {
    stats
        .lines()
        .find(|l| l.starts_with("Number of regular files transferred"))
        .unwrap_or("no stats line")
        .to_string()
}

#[test]
fn rsync_a_twice_transfers_nothing_the_second_time_even_after_remount() {
    let server = Server::start(&[]);
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    source_tree(&src);
    let m = Mount::start(&server, &[]);
    let dst = m.path("dst");
    let rsync = format!("rsync -a --stats {}/ {}/", q(&src), q(&dst));
    ok(&rsync);
    let second = ok(&rsync);
    assert_eq!(
        transferred(&second.stdout),
        "Number of regular files transferred: 0"
    );
    assert_eq!(inventory(&src), inventory(&dst));
    m.unmount();

    let m = Mount::start(&server, &[]);
    let dst = m.path("dst");
    let third = ok(&format!("rsync -a --stats {}/ {}/", q(&src), q(&dst)));
    assert_eq!(
        transferred(&third.stdout),
        "Number of regular files transferred: 0",
        "after remount"
    );
    let check = ok(&format!("rsync -a -c -n -i {}/ {}/", q(&src), q(&dst)));
    assert_eq!(check.stdout.trim(), "", "rsync -c sees differences");
    assert_eq!(inventory(&src), inventory(&dst));

    // A changed source file: the next rsync shows the new bytes; the old
    // version is still an object in the coffer.
    std::fs::write(src.join("top.txt"), b"new top\n").expect("change");
    ok(&format!("rsync -a {}/ {}/", q(&src), q(&dst)));
    assert_eq!(
        std::fs::read(dst.join("top.txt")).expect("read"),
        b"new top\n"
    );
    let c = client(&server.endpoint);
    let old_kept = ListAll::new(&c, "").map(|m| m.expect("list").key).any(|k| {
        c.get(&k, None)
            .map(|g| g.data == b"top\n"[..])
            .unwrap_or(false)
    });
    assert!(
        old_kept,
        "the old version of top.txt is gone from the coffer"
    );
}

#[test]
fn tar_xp_and_cp_a_keep_modes_times_empties_and_symlinks_across_remounts() {
    let server = Server::start(&[]);
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    source_tree(&src);
    let m = Mount::start(&server, &[]);
    ok(&format!(
        "cd {} && tar --format=posix -cf - . | (cd {} && tar -xpf -)",
        q(&src),
        q(&m.dir)
    ));
    let archive = tmp.path().join("src.tar");
    ok(&format!(
        "cd {} && tar --format=posix -cf {} .",
        q(&src),
        q(&archive)
    ));
    ok(&format!("cd {} && tar -df {}", q(&m.dir), q(&archive)));
    ok(&format!("cp -a {} {}", q(&src), q(&m.path("cpa"))));
    assert_eq!(inventory(&src), inventory(&m.path("cpa")));
    m.unmount();

    let m = Mount::start(&server, &[]);
    let diff = ok(&format!("cd {} && tar -df {}", q(&m.dir), q(&archive)));
    assert_eq!(diff.stdout.trim(), "");
    assert_eq!(inventory(&src), inventory(&m.path("cpa")));
    let ns = ok(&format!("stat -c %y {}", q(&m.path("a/one.txt"))));
    assert!(ns.stdout.contains("03:04:05.123456789"), "{}", ns.stdout);
    assert_eq!(
        std::fs::read_link(m.path("link")).expect("readlink"),
        Path::new("a/one.txt")
    );
    assert_eq!(std::fs::metadata(m.path("empty")).expect("empty").len(), 0);
    assert!(m.path("empty-dir").is_dir());
}

#[test]
fn a_second_mount_sees_renames_and_times_after_its_metadata_ttl() {
    let server = Server::start(&[]);
    let a = Mount::start(&server, &["--metadata-ttl", "1s"]);
    let b = Mount::start(&server, &["--metadata-ttl", "1s"]);
    ok(&format!(
        "mkdir {d} && echo data > {d}/f && mv {d}/f {d}/g && touch -d '2021-03-04 05:06:07' {d}/g \
         && mv {d} {e}",
        d = q(&a.path("dir")),
        e = q(&a.path("moved"))
    ));
    let seen = wait_for(Duration::from_secs(30), || {
        let out = sh(
            &format!("stat -c '%y' {} 2>/dev/null", q(&b.path("moved/g"))),
            LIMIT,
        );
        out.ok && out.stdout.contains("2021-03-04 05:06:07") && !b.path("dir").exists()
    });
    assert!(seen, "mount b did not see a's rename and times");
    assert_eq!(std::fs::read(b.path("moved/g")).expect("read"), b"data\n");
    assert!(!b.path("moved/f").exists());
}

#[test]
fn after_kill_9_following_tar_x_a_remount_has_every_byte_and_the_metadata() {
    let server = Server::start(&[]);
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    source_tree(&src);
    let archive = tmp.path().join("src.tar");
    ok(&format!(
        "cd {} && tar --format=posix -cf {} .",
        q(&src),
        q(&archive)
    ));
    let mut m = Mount::start(&server, &[]);
    ok(&format!("cd {} && tar -xpf {}", q(&m.dir), q(&archive)));
    // Metadata goes up within a second of the change.
    std::thread::sleep(Duration::from_millis(2500));
    m.kill9();
    drop(m);
    let m = Mount::start(&server, &[]);
    let diff = ok(&format!("cd {} && tar -df {}", q(&m.dir), q(&archive)));
    assert_eq!(diff.stdout.trim(), "");
}

#[test]
fn tar_x_of_a_thousand_small_files_costs_few_requests_beyond_the_data() {
    let server = Server::start(&[]);
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    for i in 0..1000u64 {
        let p = src.join(format!("d{}/f{i}", i % 10));
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, random_bytes(100 + i as usize, i)).expect("write");
    }
    ok(&format!(
        "chmod -R go-w {} && find {} -type f -exec chmod 0640 {{}} +",
        q(&src),
        q(&src)
    ));
    let archive = tmp.path().join("small.tar");
    ok(&format!("cd {} && tar -cf {} .", q(&src), q(&archive)));
    let m = Mount::start(&server, &[]);
    let total = |s: &Server| -> u64 {
        s.stats()["requests"]
            .as_object()
            .map(|o| o.values().filter_map(|v| v.as_u64()).sum())
            .unwrap_or(0)
    };
    let before = total(&server);
    ok(&format!("cd {} && tar -xpf {}", q(&m.dir), q(&archive)));
    m.unmount();
    let requests = total(&server) - before;
    eprintln!(
        "tar -x of 1000 files with modes and times: {requests} requests: {}",
        server.stats()["requests"]
    );
    assert!(
        requests <= 1100,
        "{requests} requests for 1000 data uploads (limit 1100)"
    );
    let m = Mount::start(&server, &[]);
    ok(&format!("cd {} && tar -df {}", q(&m.dir), q(&archive)));
}

// ---- a fragile journal: damaged batches, later formats, missing objects ----

/// Stores `body` as a journal batch of a foreign mount, keyed at the current time.
fn put_batch(server: &Server, body: &str) -> String {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_micros() as u64;
    let key = journal::batch_key(micros, "00000000000000fe", 1);
    client(&server.endpoint)
        .put(&key, Bytes::from(body.to_string()))
        .expect("put batch");
    key
}

/// Lines of the mount's log that mention `needle`.
fn log_lines(m: &Mount, needle: &str) -> Vec<String> {
    m.log_text()
        .lines()
        .filter(|l| l.contains(needle))
        .map(String::from)
        .collect()
}

/// A shell command's stderr, requiring it to fail.
fn fails(script: &str) -> String {
    let out = sh(script, LIMIT);
    assert!(!out.ok, "{script} succeeded:\n{}", out.stdout);
    out.stderr
}

#[test]
fn a_batch_of_a_later_format_mounts_read_only_with_one_log_line() {
    let server = Server::start(&[]);
    let m = Mount::start(&server, &[]);
    ok(&format!(
        "echo kept > {f} && chmod 0640 {f} && mkdir {d}",
        f = q(&m.path("kept.txt")),
        d = q(&m.path("dir"))
    ));
    m.unmount();
    let key = put_batch(
        &server,
        r#"{"format":"cofferfs-journal","version":3,"mount":"00000000000000fe","seq":1,"records":[]}"#,
    );

    let m = Mount::start(&server, &["--metadata-ttl", "1s"]);
    assert_eq!(std::fs::read(m.path("kept.txt")).expect("read"), b"kept\n");
    let mode = ok(&format!("stat -c %a {}", q(&m.path("kept.txt"))));
    assert_eq!(mode.stdout.trim(), "640");
    assert!(m.path("dir").is_dir());
    for script in [
        format!("echo new > {}", q(&m.path("new.txt"))),
        format!("mkdir {}", q(&m.path("dir2"))),
        format!("chmod 0600 {}", q(&m.path("kept.txt"))),
        format!("mv {} {}", q(&m.path("kept.txt")), q(&m.path("moved.txt"))),
    ] {
        let err = fails(&script);
        assert!(err.contains("Read-only file system"), "{script}: {err}");
    }
    // Reloads come and go without a word more.
    std::thread::sleep(Duration::from_millis(2500));
    let lines = log_lines(&m, &key);
    assert_eq!(lines.len(), 1, "{}", m.log_text());
    assert!(
        lines[0].contains("version 3") && lines[0].contains("read-only"),
        "{}",
        lines[0]
    );
}

#[test]
fn a_later_format_met_by_a_reload_turns_a_mount_read_only() {
    let server = Server::start(&[]);
    let m = Mount::start(&server, &["--metadata-ttl", "1s"]);
    ok(&format!("echo before > {}", q(&m.path("before.txt"))));
    let key = put_batch(&server, r#"{"format":"cofferfs-journal","version":3}"#);
    let mut n = 0;
    let turned = wait_for(Duration::from_secs(30), || {
        // A fresh name each time: the kernel answers EEXIST itself for a name
        // it knows.
        n += 1;
        sh(
            &format!("mkdir {}", q(&m.path(&format!("probe{n}")))),
            LIMIT,
        )
        .stderr
        .contains("Read-only file system")
    });
    assert!(turned, "the mount still takes writes:\n{}", m.log_text());
    let err = fails(&format!("echo x > {}", q(&m.path("after.txt"))));
    assert!(err.contains("Read-only file system"), "{err}");
    assert_eq!(
        std::fs::read(m.path("before.txt")).expect("read"),
        b"before\n"
    );
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(log_lines(&m, &key).len(), 1, "{}", m.log_text());
}

#[test]
fn a_damaged_batch_is_reported_once_and_the_mount_works_on() {
    let server = Server::start(&[]);
    let key = put_batch(&server, "{this is not a batch");
    let m = Mount::start(&server, &["--metadata-ttl", "1s"]);
    ok(&format!(
        "echo fine > {f} && chmod 0600 {f}",
        f = q(&m.path("f.txt"))
    ));
    assert_eq!(std::fs::read(m.path("f.txt")).expect("read"), b"fine\n");
    let gets = server.requests("GetObject");
    // Several reloads (one a second).
    std::thread::sleep(Duration::from_secs(4));
    let lines = log_lines(&m, &key);
    assert_eq!(lines.len(), 1, "{}", m.log_text());
    assert_eq!(
        server.requests("GetObject"),
        gets,
        "the damaged batch was fetched again"
    );
    let mode = ok(&format!("stat -c %a {}", q(&m.path("f.txt"))));
    assert_eq!(mode.stdout.trim(), "600");
}

#[test]
fn a_record_naming_a_missing_object_reads_enoent_and_logs_the_key() {
    let server = Server::start(&[]);
    let batch = journal::Batch::new(
        "00000000000000fe",
        1,
        vec![journal::Record::Bind {
            path: "ghost.txt".into(),
            key: ".cofferfs/data/never-stored".into(),
            size: 5,
            etag: "0123456789abcdef0123456789abcdef".into(),
            attrs: journal::Attrs::default(),
        }],
    );
    put_batch(
        &server,
        std::str::from_utf8(&batch.encode()).expect("utf-8"),
    );
    let m = Mount::start(&server, &[]);
    // Listed (the mount does not HEAD every bound key), but not readable.
    let ls = ok(&format!("ls {}", q(&m.dir)));
    assert!(ls.stdout.contains("ghost.txt"), "{}", ls.stdout);
    let err = fails(&format!("cat {}", q(&m.path("ghost.txt"))));
    assert!(err.contains("No such file or directory"), "{err}");
    assert!(
        !log_lines(&m, ".cofferfs/data/never-stored").is_empty(),
        "{}",
        m.log_text()
    );
}

// ---- metadata durability: fsync and unmount store it ----

/// Makes `f.txt` and waits until its own records are stored, so what follows
/// starts a fresh group-commit window.
fn settled_file(server: &Server) -> Mount {
    let m = Mount::start(server, &[]);
    ok(&format!("echo data > {}", q(&m.path("f.txt"))));
    std::thread::sleep(Duration::from_millis(1500));
    m
}

/// Kills the mount at once, remounts, and gives the mode of `f.txt`.
fn mode_after_kill_9(server: &Server, mut m: Mount) -> String {
    m.kill9();
    drop(m);
    let m = Mount::start(server, &[]);
    ok(&format!("stat -c %a {}", q(&m.path("f.txt"))))
        .stdout
        .trim()
        .to_string()
}

#[test]
fn fsync_of_a_directory_stores_a_chmod_before_returning() {
    let server = Server::start(&[]);
    let m = settled_file(&server);
    // coreutils `sync DIR` is open(DIR, O_RDONLY) + fsync: FUSE_FSYNCDIR. The
    // kill follows well within the one-second group commit.
    ok(&format!(
        "chmod 0600 {} && sync {}",
        q(&m.path("f.txt")),
        q(&m.dir)
    ));
    assert_eq!(mode_after_kill_9(&server, m), "600");
}

#[test]
fn fsync_of_a_file_stores_a_chmod_before_returning() {
    let server = Server::start(&[]);
    let m = settled_file(&server);
    // `sync FILE` is open(FILE, O_RDONLY) + fsync: FUSE_FSYNC.
    ok(&format!(
        "chmod 0600 {f} && sync {f}",
        f = q(&m.path("f.txt"))
    ));
    assert_eq!(mode_after_kill_9(&server, m), "600");
}

#[test]
fn unmount_stores_a_chmod_made_just_before() {
    let server = Server::start(&[]);
    let m = settled_file(&server);
    ok(&format!("chmod 0600 {}", q(&m.path("f.txt"))));
    m.unmount();
    let m = Mount::start(&server, &[]);
    let mode = ok(&format!("stat -c %a {}", q(&m.path("f.txt"))));
    assert_eq!(mode.stdout.trim(), "600");
}
