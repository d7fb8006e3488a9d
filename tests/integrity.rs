//! Never lose a byte, never hang: real mounts of a real `cofferfs serve` driven
//! by real tools, with faults, many writers and remounts. A call that returns
//! success stored exactly those bytes; one that fails leaves the old version.

mod common;

use common::{client, open_uploads, q, random_bytes, sh, stored, Mount, Server};
use std::os::unix::io::IntoRawFd;
use std::path::Path;
use std::time::{Duration, SystemTime};

const MIB: usize = 1 << 20;
const LIMIT: Duration = Duration::from_secs(300);

/// Remounts: unmounts `m` cleanly and mounts the same coffer again.
fn remount(server: &Server, m: Mount, extra: &[&str]) -> Mount {
    m.unmount();
    Mount::start(server, extra)
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

fn mtime(p: &Path) -> SystemTime {
    std::fs::symlink_metadata(p)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("stat {}: {e}", p.display()))
}

// ---- a failed write poisons its handle; the old version stands -------------

#[test]
fn an_append_beyond_the_staging_limit_fails_and_the_old_version_stands() {
    let server = Server::start(&[]);
    let old = random_bytes(20 * MIB, 1);
    let extra = ["--staging-limit", "10MiB", "--part-size", "1MiB"];
    let m = Mount::start(&server, &extra);
    std::fs::write(m.path("f"), &old).expect("put the old version");
    let m = remount(&server, m, &extra);
    let tries = [
        format!("echo x >> {}", q(&m.path("f"))),
        format!(
            "printf y | dd of={} bs=1 seek=5 conv=notrunc status=none",
            q(&m.path("f"))
        ),
        format!("truncate -s 15M {}", q(&m.path("f"))),
    ];
    for t in &tries {
        let out = sh(t, LIMIT);
        assert!(!out.ok, "{t:?} reported success without room to stage");
        assert_eq!(read(&m.path("f")), old, "after {t:?}");
    }
    let m = remount(&server, m, &extra);
    assert_eq!(read(&m.path("f")), old, "after remount");
}

#[test]
fn an_edit_whose_copy_in_meets_failed_gets_is_stored_whole_or_not_at_all() {
    let server = Server::start(&[]);
    let old = random_bytes(24 * MIB, 2);
    let extra = ["--retries", "1", "--part-size", "1MiB"];
    let m = Mount::start(&server, &extra);
    std::fs::write(m.path("f"), &old).expect("put the old version");
    let m = remount(&server, m, &extra);
    server.set_faults("GetObject:503:0.3");
    let mut want = old.clone();
    let mut failures = 0;
    for i in 0..4 {
        let out = sh(&format!("echo x{i} >> {}", q(&m.path("f"))), LIMIT);
        if out.ok {
            want.extend_from_slice(format!("x{i}\n").as_bytes());
        } else {
            failures += 1;
        }
        server.set_faults("");
        assert_eq!(
            read(&m.path("f")),
            want,
            "after append {i} (ok: {})",
            out.ok
        );
        server.set_faults("GetObject:503:0.3");
    }
    server.set_faults("");
    assert!(
        failures > 0,
        "no copy-in met a fault; the test proves nothing"
    );
    let m = remount(&server, m, &[]);
    assert_eq!(read(&m.path("f")), want, "after remount");
}

// ---- no number of writers hangs the mount ----------------------------------

#[test]
fn tee_to_256_files_finishes_with_default_options() {
    let server = Server::start(&[]);
    let m = Mount::start(&server, &[]);
    let out = sh(
        &format!(
            "cd {} && echo hello | tee $(seq -f 'b%g' 1 256) > /dev/null",
            q(&m.dir)
        ),
        Duration::from_secs(120),
    );
    assert!(out.ok, "{}\n{}", out.stderr, m.log_text());
    for i in 1..=256 {
        assert_eq!(read(&m.path(&format!("b{i}"))), b"hello\n", "b{i}");
    }
    let m = remount(&server, m, &[]);
    assert_eq!(read(&m.path("b256")), b"hello\n");
}

#[test]
fn ls_and_stat_answer_while_more_files_close_than_there_are_fuse_threads() {
    // Every PutObject (each small file's close, each journal batch) takes 8 s.
    let server = Server::start(&["--faults", "PutObject:slow=8s:1"]);
    let m = Mount::start(&server, &["--fuse-threads", "4"]);
    let script = format!(
        r#"
set -u
cd {mnt}
pids=""
for i in $(seq 1 12); do (echo "file $i" > f$i) & pids="$pids $!"; done
sleep 2
timeout 4 ls > /dev/null || {{ echo "ls did not answer while files close" >&2; exit 1; }}
timeout 4 stat . > /dev/null || {{ echo "stat did not answer while files close" >&2; exit 1; }}
rc=0
for p in $pids; do wait $p || rc=1; done
exit $rc
"#,
        mnt = q(&m.dir),
    );
    let out = sh(&script, Duration::from_secs(240));
    assert!(out.ok, "{}\n{}", out.stderr, m.log_text());
    for i in 1..=12 {
        assert_eq!(
            read(&m.path(&format!("f{i}"))),
            format!("file {i}\n").as_bytes()
        );
    }
}

#[test]
fn sixty_four_pausing_writers_and_four_readers_all_finish_within_the_memory_bound() {
    let server = Server::start(&[]);
    let (upload_mib, cache_mib) = (64, 64);
    let m = Mount::start(
        &server,
        &[
            "--upload-memory",
            "64MiB",
            "--cache-size",
            "64MiB",
            "--part-size",
            "8MiB",
        ],
    );
    let src = tempfile::tempdir().expect("tempdir");
    let data = src.path().join("data");
    std::fs::write(&data, random_bytes(20 * MIB, 3)).expect("source");
    std::fs::write(m.path("shared"), random_bytes(30 * MIB, 4)).expect("shared");
    let shared = src.path().join("shared");
    std::fs::write(&shared, random_bytes(30 * MIB, 4)).expect("shared copy");
    // Each writer writes 1 MiB at a time with pauses, holding its file open,
    // so every writer holds a part buffer while others wait for memory.
    let script = format!(
        r#"
set -u
cd {mnt}
writer() {{
  exec 3> w$1 || exit 1
  for j in $(seq 0 19); do
    dd if={data} bs=1M skip=$j count=1 status=none >&3 || exit 1
    [ $((j % 5)) = 4 ] && sleep 0.2
  done
  exec 3>&- || exit 1
}}
reader() {{
  for k in 1 2 3; do cmp {shared} shared || exit 1; done
}}
pids=""
for i in $(seq 1 64); do writer $i & pids="$pids $!"; done
for i in 1 2 3 4; do reader & pids="$pids $!"; done
sleep 1
timeout 20 ls > /dev/null || {{ echo "ls did not answer while writers wait" >&2; exit 1; }}
rc=0
for p in $pids; do wait $p || rc=1; done
exit $rc
"#,
        mnt = q(&m.dir),
        data = q(&data),
        shared = q(&shared),
    );
    let out = sh(&script, Duration::from_secs(600));
    assert!(out.ok, "{}\n{}", out.stderr, m.log_text());
    let want = read(&data);
    for i in 1..=64 {
        assert!(read(&m.path(&format!("w{i}"))) == want, "w{i} differs");
    }
    let hwm_mib = m.vm_hwm_kib() / 1024;
    eprintln!("mount daemon VmHWM with 64 writers and 4 readers: {hwm_mib} MiB");
    assert!(hwm_mib > 0, "no VmHWM read");
    assert!(
        hwm_mib <= upload_mib + cache_mib + 64,
        "peak RSS {hwm_mib} MiB over --upload-memory + --cache-size + 64 MiB"
    );
    let m = remount(&server, m, &[]);
    assert!(read(&m.path("w64")) == want, "w64 after remount");
}

// ---- times ------------------------------------------------------------------

#[test]
fn files_made_overwritten_and_moved_keep_true_times_across_remounts() {
    let server = Server::start(&[]);
    let extra = ["--metadata-ttl", "1s"];
    let m = Mount::start(&server, &extra);
    let before = SystemTime::now() - Duration::from_secs(2);
    std::fs::write(m.path("old"), b"old").expect("old");
    let touched = sh(
        &format!("touch -d 2001-02-03T04:05:06Z {}", q(&m.path("old"))),
        LIMIT,
    );
    assert!(touched.ok, "{}", touched.stderr);
    let script = format!(
        "cd {} && echo a > echoed && : > empty && dd if=/dev/zero of=dd bs=1k count=3 \
         status=none && echo b > src && cp src old && echo c > tomove && \
         touch -d 2002-01-01T00:00:00Z tomove && mv tomove moved && \
         echo d > stamped && touch -d 2003-01-01T00:00:00Z stamped && echo e >> stamped",
        q(&m.dir)
    );
    let out = sh(&script, LIMIT);
    assert!(out.ok, "{}", out.stderr);
    let after = SystemTime::now() + Duration::from_secs(2);
    let check = |m: &Mount, when: &str| {
        for f in ["echoed", "empty", "dd", "old", "stamped"] {
            let t = mtime(&m.path(f));
            assert!(
                t >= before && t <= after,
                "{f} {when}: mtime {t:?} is not the time it was written"
            );
        }
        let moved = mtime(&m.path("moved"));
        assert_eq!(
            moved,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_009_843_200),
            "mv kept the mtime {when}"
        );
    };
    check(&m, "at once");
    std::thread::sleep(Duration::from_secs(2));
    check(&m, "after --metadata-ttl");
    let m = remount(&server, m, &extra);
    check(&m, "after remount");
    let newer = sh(
        &format!("cd {} && find . -newer moved -type f | sort", q(&m.dir)),
        LIMIT,
    );
    assert!(newer.ok);
    for f in ["echoed", "empty", "dd", "old", "stamped"] {
        assert!(
            newer.stdout.contains(&format!("./{f}\n")),
            "find -newer: {}",
            newer.stdout
        );
    }
}

#[test]
fn chmod_changes_ctime_but_not_mtime_and_both_survive_a_remount() {
    let server = Server::start(&[]);
    let m = Mount::start(&server, &[]);
    let f = q(&m.path("f"));
    let out = sh(
        &format!("echo x > {f} && touch -d 2020-01-02T03:04:05Z {f} && chmod 600 {f}"),
        LIMIT,
    );
    assert!(out.ok, "{}", out.stderr);
    let times = |m: &Mount| {
        let out = sh(&format!("stat -c '%Y %Z' {}", q(&m.path("f"))), LIMIT);
        assert!(out.ok, "{}", out.stderr);
        let v: Vec<i64> = out
            .stdout
            .split_whitespace()
            .map(|t| t.parse().expect("seconds"))
            .collect();
        (v[0], v[1])
    };
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let (mtime, ctime) = times(&m);
    assert_eq!(mtime, 1_577_934_245, "touch -d set the mtime");
    assert!(
        (ctime - now).abs() < 60,
        "chmod set ctime to now: {ctime} vs {now}"
    );
    let m = remount(&server, m, &[]);
    assert_eq!(times(&m), (mtime, ctime));
}

// ---- a failed close never lands later --------------------------------------

#[test]
fn an_overwrite_whose_metadata_fails_fails_close_and_the_old_version_stays() {
    let server = Server::start(&[]);
    let extra = ["--retries", "1", "--part-size", "1MiB"];
    let m = Mount::start(&server, &extra);
    let old = random_bytes(2 * MIB, 5);
    std::fs::write(m.path("f"), &old).expect("old");
    let src = tempfile::tempdir().expect("tempdir");
    let new = src.path().join("new");
    std::fs::write(&new, random_bytes(3 * MIB, 6)).expect("new");
    // The new bytes go up in parts; the journal batch binding them (a PutObject) fails.
    server.set_faults("PutObject:503:1");
    let out = sh(&format!("cp {} {}", q(&new), q(&m.path("f"))), LIMIT);
    assert!(!out.ok, "cp succeeded though its metadata was not stored");
    server.set_faults("");
    std::thread::sleep(Duration::from_secs(3));
    // Not stuck: the path opens, and shows the old version, now and later.
    assert_eq!(read(&m.path("f")), old);
    let m = remount(&server, m, &extra);
    assert_eq!(
        read(&m.path("f")),
        old,
        "the failed version landed after all"
    );
    // And the path takes a new version normally.
    let out = sh(&format!("cp {} {}", q(&new), q(&m.path("f"))), LIMIT);
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(read(&m.path("f")), read(&new));
}

#[test]
fn a_new_file_whose_last_close_fails_leaves_nothing() {
    let server = Server::start(&[]);
    let extra = ["--retries", "1"];
    let m = Mount::start(&server, &extra);
    let path = m.path("doomed");
    // As shells and dd do: a dup'd descriptor is closed while the file is
    // still empty (the empty file is recorded), then the bytes fail to land.
    let f = std::fs::File::create(&path).expect("create");
    let fd = f.into_raw_fd();
    // SAFETY: plain descriptor calls on a descriptor this test owns.
    let dup = unsafe { libc::dup(fd) };
    assert!(dup >= 0);
    assert_eq!(unsafe { libc::close(dup) }, 0, "closing the empty dup");
    server.set_faults("PutObject:503:1");
    let data = b"bytes that will not land";
    let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
    assert_eq!(n, data.len() as isize);
    let rc = unsafe { libc::close(fd) };
    assert_eq!(rc, -1, "close reported success for bytes that did not land");
    server.set_faults("");
    assert!(!path.exists(), "a failed new file is visible");
    let m = remount(&server, m, &extra);
    assert!(!m.path("doomed").exists(), "a failed new file came back");
}

// ---- another client's open upload never blocks a path ----------------------

#[test]
fn an_orphan_upload_on_a_path_does_not_block_writing_it() {
    use cofferfs::store::ObjectStore;
    let server = Server::start(&[]);
    // A mount killed mid-copy leaves its multipart upload open.
    client(&server.endpoint).initiate("f").expect("initiate");
    client(&server.endpoint).initiate("big").expect("initiate");
    let extra = ["--part-size", "1MiB"];
    let m = Mount::start(&server, &extra);
    let src = tempfile::tempdir().expect("tempdir");
    for (name, size) in [("f", 1000), ("big", 3 * MIB)] {
        let p = src.path().join(name);
        std::fs::write(&p, random_bytes(size, size as u64)).expect("src");
        let out = sh(&format!("cp {} {}", q(&p), q(&m.path(name))), LIMIT);
        assert!(out.ok, "cp {name}: {}\n{}", out.stderr, m.log_text());
        assert_eq!(read(&m.path(name)), read(&p));
    }
    let m = remount(&server, m, &extra);
    assert_eq!(read(&m.path("big")).len(), 3 * MIB);
    assert_eq!(stored(&server, "f"), None, "the orphan's key is left alone");
    assert_eq!(open_uploads(&server), 2, "the orphans are another client's");
}

// ---- rename of a directory and files made in it meanwhile ------------------

#[test]
fn a_directory_renamed_while_files_are_written_in_it_keeps_them_all() {
    let server = Server::start(&[]);
    let m = Mount::start(&server, &[]);
    std::fs::create_dir(m.path("dir")).expect("mkdir");
    std::fs::write(m.path("dir/old"), b"old").expect("old");
    std::fs::write(m.path("dir/over"), b"before").expect("over");
    // Writers hold files open in the directory across the rename.
    let (mut dd, stdin) = common::spawn_writer(&m.path("dir/new"), b"first ");
    let (mut dd2, stdin2) = common::spawn_writer(&m.path("dir/over"), b"after ");
    let out = sh(
        &format!("mv {} {}", q(&m.path("dir")), q(&m.path("dir2"))),
        LIMIT,
    );
    assert!(out.ok, "mv: {}", out.stderr);
    drop(stdin);
    drop(stdin2);
    assert!(dd.wait().expect("dd").success());
    assert!(dd2.wait().expect("dd").success());
    // Files created in the directory while it moves land in one place, whole.
    let race = sh(
        &format!(
            "cd {} || exit 1; (for i in $(seq 1 40); do echo $i > dir2/r$i 2>/dev/null; done) & \
             mv dir2 dir3; rc=$?; wait; exit $rc",
            q(&m.dir)
        ),
        LIMIT,
    );
    assert!(race.ok, "mv dir2 dir3: {}", race.stderr);
    let check = |m: &Mount| {
        let root: Vec<_> = std::fs::read_dir(&m.dir)
            .expect("ls")
            .map(|e| e.expect("e").file_name())
            .collect();
        assert!(
            !m.path("dir").exists() && !m.path("dir2").exists(),
            "{root:?}\n{}",
            m.log_text()
        );
        assert_eq!(read(&m.path("dir3/old")), b"old");
        assert_eq!(read(&m.path("dir3/new")), b"first ");
        assert_eq!(read(&m.path("dir3/over")), b"after ");
        let mut names: Vec<String> = std::fs::read_dir(m.path("dir3"))
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let seen = check(&m);
    for n in seen.iter().filter(|n| n.starts_with('r')) {
        let want = format!("{}\n", &n[1..]);
        assert_eq!(read(&m.path(&format!("dir3/{n}"))), want.as_bytes(), "{n}");
    }
    let m = remount(&server, m, &[]);
    assert_eq!(check(&m), seen, "entries differ after remount");
}

// ---- descriptors shared with child processes -------------------------------

#[test]
fn a_file_written_by_several_children_of_one_shell_is_whole() {
    let server = Server::start(&[]);
    let m = Mount::start(&server, &["--part-size", "1MiB"]);
    let src = tempfile::tempdir().expect("tempdir");
    let (a, b) = (src.path().join("a"), src.path().join("b"));
    std::fs::write(&a, random_bytes(3 * MIB, 7)).expect("a");
    std::fs::write(&b, random_bytes(100, 8)).expect("b");
    // Each cat closes its inherited copy of the shell's descriptor.
    let out = sh(
        &format!(
            "{{ cat {a}; cat {b}; cat {a}; }} > {f}",
            a = q(&a),
            b = q(&b),
            f = q(&m.path("f"))
        ),
        LIMIT,
    );
    assert!(out.ok, "{}\n{}", out.stderr, m.log_text());
    let want = [read(&a), read(&b), read(&a)].concat();
    assert!(read(&m.path("f")) == want, "f differs");
    let m = remount(&server, m, &[]);
    assert!(read(&m.path("f")) == want, "f differs after remount");
}
