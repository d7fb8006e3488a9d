//! Mount tests: a real FUSE mount of a real `cofferfs serve` on 127.0.0.1, driven by
//! real tools. Every mount is unmounted on every path (common::Mount's Drop) and
//! every wait is bounded.

mod common;

use cofferfs::store::ObjectStore;
use common::{client, open_uploads, q, random_bytes, sh, stored, wait_for, Mount, Server, COFFER};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const MIB: usize = 1 << 20;
const LIMIT: Duration = Duration::from_secs(300);

fn write_file(path: &Path, data: &[u8]) {
    std::fs::write(path, data).expect("write source file");
}

/// `cp SRC DST` then `cmp`, both bounded; panics with the mount log on failure.
fn cp_and_cmp(m: &Mount, src: &Path, rel: &str) {
    let dst = m.path(rel);
    let out = sh(
        &format!("cp {} {} && cmp {} {}", q(src), q(&dst), q(src), q(&dst)),
        LIMIT,
    );
    assert!(
        out.ok,
        "cp/cmp of {rel:?} failed: {}\nmount log:\n{}",
        out.stderr,
        m.log_text()
    );
}

#[test]
fn cp_then_cmp_round_trips_every_part_boundary() {
    let server = Server::start(&[]);
    let m = Mount::start(&server, &["--part-size", "1MiB"]);
    let src = tempfile::tempdir().expect("tempdir");
    let sizes = [1, MIB - 1, MIB, MIB + 1, 8 * MIB, 8 * MIB + 1, 100 * MIB];
    for (i, &size) in sizes.iter().enumerate() {
        let data = random_bytes(size, i as u64 + 1);
        let path = src.path().join(format!("f{size}"));
        write_file(&path, &data);
        cp_and_cmp(&m, &path, &format!("f{size}"));
        // Stored on the server byte for byte, not only visible in the mount.
        if size <= 8 * MIB + 1 {
            assert_eq!(
                stored(&server, &format!("f{size}")).as_deref(),
                Some(&data[..])
            );
        }
    }
    let listing = sh(&format!("ls -l {}", q(&m.dir)), LIMIT);
    assert!(
        listing.ok && listing.stdout.contains("104857600"),
        "{}",
        listing.stdout
    );
    m.unmount();
    assert_eq!(open_uploads(&server), 0);
}

#[test]
fn parts_reach_the_server_while_the_writer_is_still_writing() {
    let server = Server::start(&[]);
    let m = Mount::start(&server, &["--part-size", "1MiB"]);
    let data = random_bytes(24 * MIB, 7);
    let dst = m.path("streamed.bin");
    let mut dd = Command::new("dd")
        .arg(format!("of={}", dst.display()))
        .args(["bs=1M", "iflag=fullblock", "status=none"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("dd");
    let mut stdin = dd.stdin.take().expect("stdin");
    stdin.write_all(&data[..12 * MIB]).expect("first half");
    stdin.flush().expect("flush");
    // The file is still open and half written: parts must already be stored.
    let uploading = wait_for(Duration::from_secs(60), || {
        server.requests("UploadPart") >= 8
    });
    let completes_so_far = server.requests("CompleteMultipartUpload");
    assert!(
        uploading,
        "no parts uploaded while writing; log:\n{}",
        m.log_text()
    );
    assert_eq!(completes_so_far, 0, "completed before close");
    stdin.write_all(&data[12 * MIB..]).expect("second half");
    drop(stdin);
    let ok = wait_for(LIMIT, || matches!(dd.try_wait(), Ok(Some(_))));
    assert!(ok, "dd did not finish");
    assert!(dd.wait().expect("dd status").success());
    assert_eq!(server.requests("CompleteMultipartUpload"), 1);
    assert_eq!(stored(&server, "streamed.bin").as_deref(), Some(&data[..]));
}

#[test]
fn tar_extract_of_a_nested_tree_matches_the_source() {
    let server = Server::start(&[]);
    let m = Mount::start(&server, &["--part-size", "1MiB"]);
    let src = tempfile::tempdir().expect("tempdir");
    let tree = src.path().join("tree");
    for i in 0..300u64 {
        let dir = tree.join(format!("d{}/e{}", i % 7, i % 3));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let size = match i % 50 {
            0 => 2 * MIB + 17,
            _ => 1 + (i as usize * 997) % 40_000,
        };
        write_file(&dir.join(format!("file {i}.dat")), &random_bytes(size, i));
    }
    let tarball = src.path().join("tree.tar");
    let out = sh(&format!("tar -C {} -cf {} .", q(&tree), q(&tarball)), LIMIT);
    assert!(out.ok, "{}", out.stderr);
    let out = sh(&format!("tar -C {} -xf {}", q(&m.dir), q(&tarball)), LIMIT);
    assert!(
        out.ok,
        "tar -x failed: {}\nlog:\n{}",
        out.stderr,
        m.log_text()
    );
    let out = sh(&format!("diff -r {} {}", q(&tree), q(&m.dir)), LIMIT);
    assert!(out.ok, "diff: {}{}", out.stdout, out.stderr);
    let files = sh(&format!("find {} -type f | wc -l", q(&m.dir)), LIMIT);
    assert_eq!(files.stdout.trim(), "300");
    // After a remount the tree comes from the coffer alone.
    m.unmount();
    let m = Mount::start(&server, &[]);
    let out = sh(&format!("diff -r {} {}", q(&tree), q(&m.dir)), LIMIT);
    assert!(out.ok, "diff after remount: {}{}", out.stdout, out.stderr);
}

#[test]
fn eight_parallel_copies_land_intact() {
    let server = Server::start(&[]);
    let m = Mount::start(&server, &[]);
    let src = tempfile::tempdir().expect("tempdir");
    let mut script = String::new();
    for i in 0..8u64 {
        let p = src.path().join(format!("p{i}"));
        write_file(&p, &random_bytes(20 * MIB, 100 + i));
        script += &format!("cp {} {} & ", q(&p), q(&m.path(&format!("p{i}"))));
    }
    script += "wait";
    let out = sh(&script, LIMIT);
    assert!(out.ok, "{}", out.stderr);
    for i in 0..8 {
        let p = src.path().join(format!("p{i}"));
        let out = sh(
            &format!("cmp {} {}", q(&p), q(&m.path(&format!("p{i}")))),
            LIMIT,
        );
        assert!(out.ok, "p{i}: {}", out.stderr);
    }
}

#[test]
fn copies_succeed_through_twenty_percent_503s_and_resets() {
    let server = Server::start(&[
        "--faults",
        "UploadPart:503:0.1,UploadPart:reset:0.1,CompleteMultipartUpload:503:0.1,\
         CompleteMultipartUpload:reset:0.1,PutObject:503:0.1,PutObject:reset:0.1",
        "--fault-seed",
        "42",
    ]);
    let m = Mount::start(&server, &["--part-size", "1MiB"]);
    let src = tempfile::tempdir().expect("tempdir");
    for i in 0..12u64 {
        let size = if i % 3 == 0 {
            300_000
        } else {
            3 * MIB + i as usize
        };
        let p = src.path().join(format!("f{i}"));
        write_file(&p, &random_bytes(size, 200 + i));
        cp_and_cmp(&m, &p, &format!("f{i}"));
    }
    let faults = server.stats()["faults"].as_u64().unwrap_or(0);
    assert!(faults > 0, "no faults were injected");
    server.set_faults("");
    for i in 0..12u64 {
        let p = src.path().join(format!("f{i}"));
        assert_eq!(
            stored(&server, &format!("f{i}")),
            Some(std::fs::read(&p).expect("read")),
            "f{i}"
        );
    }
    assert_eq!(open_uploads(&server), 0);
}

fn failing_complete_leaves_nothing(fault: &str) {
    let server = Server::start(&["--faults", fault]);
    let m = Mount::start(&server, &["--part-size", "1MiB", "--retries", "3"]);
    let src = tempfile::tempdir().expect("tempdir");
    let p = src.path().join("doomed");
    write_file(&p, &random_bytes(3 * MIB, 9));
    let out = sh(&format!("cp {} {}", q(&p), q(&m.path("doomed"))), LIMIT);
    assert!(
        !out.ok,
        "cp reported success for an object that did not land"
    );
    assert!(out.stderr.contains("Input/output error"), "{}", out.stderr);
    assert!(m.log_text().contains("doomed"), "log does not name the key");
    server.set_faults("");
    assert_eq!(stored(&server, "doomed"), None);
    assert!(
        !m.path("doomed").exists(),
        "a failed file is visible in the mount"
    );
    assert_eq!(open_uploads(&server), 0, "upload left open");
}

#[test]
fn a_complete_that_always_fails_makes_cp_fail_and_leaves_nothing() {
    failing_complete_leaves_nothing("CompleteMultipartUpload:503:1.0");
}

#[test]
fn an_error_after_200_on_complete_makes_cp_fail_and_leaves_nothing() {
    failing_complete_leaves_nothing("CompleteMultipartUpload:after200:1.0");
}

#[test]
fn writing_one_gib_keeps_memory_within_the_upload_budget() {
    let server = Server::start(&[]);
    let m = Mount::start(&server, &["--upload-memory", "64MiB"]);
    let out = sh(
        &format!(
            "head -c 1073741824 /dev/zero | dd of={} bs=1M iflag=fullblock status=none",
            q(&m.path("big.bin"))
        ),
        Duration::from_secs(900),
    );
    assert!(out.ok, "{}\n{}", out.stderr, m.log_text());
    let hwm_mib = m.vm_hwm_kib() / 1024;
    eprintln!("mount daemon VmHWM after writing 1 GiB: {hwm_mib} MiB");
    assert!(hwm_mib > 0, "no VmHWM read");
    assert!(
        hwm_mib <= 64 + 64,
        "mount daemon peaked at {hwm_mib} MiB with --upload-memory 64MiB"
    );
    let meta = client(&server.endpoint).head("big.bin").expect("head");
    assert_eq!(meta.map(|m| m.size), Some(1 << 30));
}

#[test]
fn with_no_delete_files_holding_bytes_stay_but_what_holds_none_can_go() {
    let server = Server::start(&[]);
    let m = Mount::start(&server, &["--no-delete"]);
    let out = sh(
        &format!(
            "mkdir {d} && echo hello > {d}/f && : > {d}/empty && ln -s f {d}/link && \
             mkdir {d}/sub && mkfifo {d}/fifo",
            d = q(&m.path("dir"))
        ),
        LIMIT,
    );
    assert!(out.ok, "{}", out.stderr);
    let f = q(&m.path("dir/f"));
    let d = q(&m.path("dir"));
    // A hard link adds a name without deleting anything; removing either
    // name of a file with bytes is refused.
    let out = sh(&format!("ln {f} {d}/hard"), LIMIT);
    assert!(out.ok, "ln: {}", out.stderr);
    for cmd in [format!("rm {f}"), format!("rm {d}/hard")] {
        let out = sh(&cmd, LIMIT);
        assert!(!out.ok, "{cmd:?} succeeded");
        assert!(
            out.stderr.contains("Operation not permitted"),
            "{cmd:?}: {}",
            out.stderr
        );
    }
    assert!(m.log_text().contains("--no-delete"), "no log line says why");
    assert_eq!(stored(&server, "dir/f").as_deref(), Some(&b"hello\n"[..]));
    // An empty file, a symlink, a FIFO and an empty directory hold no coffer bytes.
    let out = sh(
        &format!("rm {d}/empty {d}/link {d}/fifo && rmdir {d}/sub && ! rmdir {d}"),
        LIMIT,
    );
    assert!(out.ok, "{}", out.stderr);
    let out = sh(&format!("ls -A {d}"), LIMIT);
    assert_eq!(
        out.stdout.split_whitespace().collect::<Vec<_>>(),
        ["f", "hard"]
    );
    // O_EXCL on an existing name.
    let out = sh(&format!("set -C; echo x > {f}"), LIMIT);
    assert!(!out.ok);
}

#[test]
fn by_default_rm_hides_the_path_but_the_bytes_stay() {
    let server = Server::start(&[]);
    let m = Mount::start(&server, &[]);
    let out = sh(
        &format!(
            "mkdir -p {d}/sub && echo one > {d}/sub/f && rm {d}/sub/f && rmdir {d}/sub && \
             echo two > {d}/sub2 && ! rmdir {d}",
            d = q(&m.path("d"))
        ),
        LIMIT,
    );
    assert!(out.ok, "{}\n{}", out.stderr, m.log_text());
    assert!(!m.path("d/sub").exists());
    assert_eq!(stored(&server, "d/sub/f").as_deref(), Some(&b"one\n"[..]));
    m.unmount();
    // --allow-delete is still accepted (hiding is the default now).
    let m = Mount::start(&server, &["--allow-delete"]);
    assert!(
        !m.path("d/sub").exists(),
        "hidden path is back after remount"
    );
    assert_eq!(std::fs::read(m.path("d/sub2")).expect("read"), b"two\n");
    // A new file at a hidden path is a new version, not a clash.
    std::fs::create_dir(m.path("d/sub")).expect("mkdir again");
    std::fs::write(m.path("d/sub/f"), b"three").expect("write again");
    assert_eq!(std::fs::read(m.path("d/sub/f")).expect("read"), b"three");
}

#[test]
fn a_second_writer_of_a_file_being_written_gets_ebusy() {
    let server = Server::start(&[]);
    let m = Mount::start(&server, &[]);
    let dst = m.path("busy");
    let (mut dd, stdin) = common::spawn_writer(&dst, &random_bytes(100_000, 3));
    let out = sh(&format!("echo x > {}", q(&dst)), LIMIT);
    assert!(!out.ok);
    assert!(
        out.stderr.contains("Device or resource busy"),
        "{}",
        out.stderr
    );
    drop(stdin);
    assert!(wait_for(LIMIT, || matches!(dd.try_wait(), Ok(Some(_)))));
    assert!(dd.wait().expect("dd").success());
    assert_eq!(stored(&server, "busy").map(|d| d.len()), Some(100_000));
}

#[test]
fn hostile_names_round_trip() {
    let server = Server::start(&[]);
    let m = Mount::start(&server, &[]);
    let src = tempfile::tempdir().expect("tempdir");
    let long = "L".repeat(255);
    let names = [
        "with space",
        "100%",
        "a+b",
        "what?",
        "#hash",
        "数据保险箱",
        "ünï cödé ✓",
        "semi;colon&amp",
        long.as_str(),
    ];
    for (i, name) in names.iter().enumerate() {
        let data = random_bytes(1000 + i, 50 + i as u64);
        let p = src.path().join(format!("src{i}"));
        write_file(&p, &data);
        cp_and_cmp(&m, &p, name);
        assert_eq!(
            stored(&server, name).as_deref(),
            Some(&data[..]),
            "{name:?}"
        );
    }
    let listed: Vec<String> = std::fs::read_dir(&m.dir)
        .expect("readdir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    for name in names {
        assert!(listed.iter().any(|l| l == name), "{name:?} not listed");
    }
    // A 256-byte name cannot exist.
    let out = sh(&format!("echo x > {}", q(&m.path(&"N".repeat(256)))), LIMIT);
    assert!(
        !out.ok && out.stderr.contains("File name too long"),
        "{}",
        out.stderr
    );
}

#[test]
fn paths_beyond_the_key_limit_are_refused_by_every_operation_before_anything_is_recorded() {
    let server = Server::start(&[]);
    let (a, b, c) = ("a".repeat(200), "b".repeat(200), "c".repeat(200));
    // 602 bytes of directories and a 200-byte name: 803, under the 850 of a key.
    let deep = format!("{a}/{b}/{c}");
    let file = format!("{deep}/{}", "f".repeat(200));
    let before = {
        let m = Mount::start(&server, &[]);
        let out = sh(
            &format!(
                "mkdir -p {} && echo data > {}",
                q(&m.path(&deep)),
                q(&m.path(&file))
            ),
            LIMIT,
        );
        assert!(out.ok, "{}", out.stderr);
        let long = "n".repeat(250); // 602 + 1 + 250 = 853
        for cmd in [
            format!("mkdir {}", q(&m.path(&format!("{deep}/{long}")))),
            format!("touch {}", q(&m.path(&format!("{deep}/{long}")))),
            format!("ln -s x {}", q(&m.path(&format!("{deep}/{long}")))),
            // The directory's new name is short enough; a file beneath it is not.
            format!("mv {} {}", q(&m.path(&a)), q(&m.path(&"r".repeat(255)))),
            format!(
                "mv {} {}",
                q(&m.path(&format!("{a}/{b}"))),
                q(&m.path(&format!("{a}/{}", "r".repeat(255))))
            ),
        ] {
            let out = sh(&cmd, LIMIT);
            assert!(
                !out.ok && out.stderr.contains("File name too long"),
                "{cmd}: {}",
                out.stderr
            );
        }
        let out = sh(&format!("cd {} && find . | sort", q(&m.dir)), LIMIT);
        assert!(out.ok, "{}", out.stderr);
        out.stdout
    };
    // Nothing of the refused operations reached the journal.
    let m = Mount::start(&server, &[]);
    let out = sh(&format!("cd {} && find . | sort", q(&m.dir)), LIMIT);
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(out.stdout, before);
    assert_eq!(out.stdout.lines().count(), 5, "{}", out.stdout);
    assert_eq!(std::fs::read(m.path(&file)).expect("read"), b"data\n");
}

#[test]
fn the_mount_shows_objects_written_by_others_and_hides_its_own_records() {
    let server = Server::start(&[]);
    let c = client(&server.endpoint);
    c.put("x/y/z.txt", b"deep".to_vec().into()).expect("put");
    c.put("top", b"top".to_vec().into()).expect("put");
    c.put(".cofferfs/journal/0001", b"{}".to_vec().into())
        .expect("put");
    let m = Mount::start(&server, &[]);
    let out = sh(&format!("ls -a {}", q(&m.dir)), LIMIT);
    assert!(out.ok, "{}", out.stderr);
    let names: Vec<&str> = out.stdout.split_whitespace().collect();
    assert_eq!(names, [".", "..", "top", "x"]);
    assert_eq!(std::fs::read(m.path("x/y/z.txt")).expect("read"), b"deep");
    assert!(!m.path(".cofferfs").exists());
    // Lookups of names that were never listed (HEAD + LIST side by side).
    let m2 = Mount::start(&server, &[]);
    assert_eq!(std::fs::read(m2.path("x/y/z.txt")).expect("read"), b"deep");
    assert!(m2.path("x/y").is_dir());
    assert!(!m2.path("nothing").exists());
    let out = sh(&format!("df {}", q(&m.dir)), LIMIT);
    assert!(out.ok, "df: {}", out.stderr);
}

#[test]
fn mount_fails_with_one_clear_line() {
    let server = Server::start(&[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let mnt = dir.path().to_str().expect("utf-8 path");
    let cases: [(&[&str], &str); 3] = [
        (
            &[
                "mount",
                "--endpoint",
                &server.endpoint,
                "nosuch-1250000000",
                mnt,
            ],
            "not found",
        ),
        (
            &["mount", "--endpoint", "http://127.0.0.1:1", COFFER, mnt],
            "unreachable",
        ),
        (
            &[
                "mount",
                "--endpoint",
                &server.endpoint,
                COFFER,
                "/nonexistent/mnt",
            ],
            "/nonexistent/mnt",
        ),
    ];
    for (args, want) in cases {
        let out = common::cli(args, &[], Duration::from_secs(120));
        assert!(!out.ok, "{args:?} succeeded");
        assert!(out.stderr.contains(want), "{args:?}: {}", out.stderr);
        assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    }
    // Busy: something is mounted there already.
    let m = Mount::start(&server, &[]);
    let busy = m.dir.to_str().expect("utf-8");
    let out = common::cli(
        &["mount", "--endpoint", &server.endpoint, COFFER, busy],
        &[],
        Duration::from_secs(60),
    );
    assert!(!out.ok && out.stderr.contains("busy"), "{}", out.stderr);
    // Authentication: a server that checks signatures, a client with the wrong key.
    let tmp = tempfile::tempdir().expect("tempdir");
    let signed = Server::start_at(
        &tmp.path().join("root"),
        &[],
        &[
            ("TENCENTCLOUD_SECRET_ID", "AKIDtest"),
            ("TENCENTCLOUD_SECRET_KEY", "right-key"),
        ],
    );
    let out = common::cli(
        &["mount", "--endpoint", &signed.endpoint, COFFER, mnt],
        &[
            ("TENCENTCLOUD_SECRET_ID", "AKIDtest"),
            ("TENCENTCLOUD_SECRET_KEY", "wrong-key"),
        ],
        Duration::from_secs(60),
    );
    assert!(!out.ok);
    assert!(
        out.stderr.contains("authentication failed"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("wrong-key"), "secret in output");
}

#[test]
fn a_detached_mount_is_live_on_return_and_sigterm_unmounts_it() {
    let server = Server::start(&[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    let log = dir.path().join("log");
    let guard = Unmount(mnt.clone());
    let out = common::cli(
        &[
            "mount",
            "--endpoint",
            &server.endpoint,
            COFFER,
            mnt.to_str().expect("utf-8"),
            "--log-file",
            log.to_str().expect("utf-8"),
        ],
        &[],
        Duration::from_secs(60),
    );
    assert!(out.ok, "{}", out.stderr);
    assert!(
        common::is_mounted(&mnt),
        "not mounted when the command returned"
    );
    std::fs::write(mnt.join("after-detach"), b"kept").expect("write");
    let pid = daemon_of(&mnt).expect("daemon pid");
    let out = sh(&format!("kill -TERM {pid}"), LIMIT);
    assert!(out.ok);
    assert!(
        wait_for(Duration::from_secs(30), || !common::is_mounted(&mnt)),
        "still mounted 30 s after SIGTERM"
    );
    assert!(wait_for(Duration::from_secs(30), || !Path::new(&format!(
        "/proc/{pid}"
    ))
    .exists()
        || std::fs::read_to_string(format!("/proc/{pid}/status"))
            .map(|s| s.contains("zombie"))
            .unwrap_or(true)));
    assert_eq!(
        stored(&server, "after-detach").as_deref(),
        Some(&b"kept"[..])
    );
    drop(guard);
}

#[test]
fn an_fstab_line_mounts_with_mount_t() {
    let server = Server::start(&[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    let fstab = dir.path().join("fstab");
    let log = dir.path().join("log");
    // The form README documents: prog#coffer, type fuse, options as -o.
    std::fs::write(
        &fstab,
        format!(
            "{}#{COFFER} {} fuse endpoint={},log_file={},noatime,_netdev 0 0\n",
            common::bin(),
            mnt.display(),
            server.endpoint,
            log.display()
        ),
    )
    .expect("fstab");
    let guard = Unmount(mnt.clone());
    let out = sh(
        &format!("mount -T {} {}", q(&fstab), q(&mnt)),
        Duration::from_secs(60),
    );
    assert!(out.ok, "mount -T: {}{}", out.stdout, out.stderr);
    assert!(common::is_mounted(&mnt));
    std::fs::write(mnt.join("via-fstab"), b"fstab").expect("write");
    let out = sh(&format!("umount {}", q(&mnt)), Duration::from_secs(60));
    assert!(out.ok, "umount: {}", out.stderr);
    assert_eq!(stored(&server, "via-fstab").as_deref(), Some(&b"fstab"[..]));
    drop(guard);
}

#[test]
fn local_mounts_need_no_server_and_keep_their_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("coffer");
    let data_s = data.to_str().expect("utf-8").to_string();
    let bytes = random_bytes(3 * MIB, 77);
    let src = dir.path().join("src");
    write_file(&src, &bytes);
    let args = ["--local", data_s.as_str(), "local-1250000000"];
    let m = Mount::start_with(&args, &[]);
    cp_and_cmp(&m, &src, "kept.bin");
    m.unmount();
    let m = Mount::start_with(&args, &[]);
    assert_eq!(std::fs::read(m.path("kept.bin")).expect("read"), bytes);
}

/// Lazily unmounts a path on drop (for mounts the test did not start itself).
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        if common::is_mounted(&self.0) {
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg(&self.0)
                .status();
        }
    }
}

/// The pid of the `cofferfs mount` process serving `mnt`.
fn daemon_of(mnt: &Path) -> Option<u32> {
    let want = mnt.to_str()?;
    std::fs::read_dir("/proc").ok()?.find_map(|e| {
        let e = e.ok()?;
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        let is_mount = args.contains(&&b"mount"[..]) && args.contains(&want.as_bytes());
        is_mount.then_some(pid)
    })
}

#[test]
fn fsync_stores_the_object_and_a_later_write_stores_a_new_version_at_close() {
    let server = Server::start(&[]);
    let m = Mount::start(&server, &["--part-size", "1MiB"]);
    let path = m.path("synced.bin");
    // Python's os module gives plain open/write/fsync/close with their errnos.
    let script = format!(
        r#"
import os
fd = os.open({p:?}, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
os.write(fd, b"a" * (3 * 1024 * 1024 + 5))
os.fsync(fd)
print("synced", flush=True)
os.write(fd, b"more")
os.close(fd)
"#,
        p = path.display().to_string()
    );
    let out = common::run_bounded(
        {
            let mut c = Command::new("python3");
            c.args(["-c", &script]);
            c
        },
        LIMIT,
    );
    assert!(out.ok, "{}{}\n{}", out.stdout, out.stderr, m.log_text());
    // The synced version stays in the write-once coffer at its own key ...
    assert_eq!(
        stored(&server, "synced.bin").map(|d| d.len()),
        Some(3 * MIB + 5)
    );
    // ... and the path shows the version the close stored, also after remount.
    let mut want = vec![b'a'; 3 * MIB + 5];
    want.extend_from_slice(b"more");
    assert!(
        std::fs::read(&path).expect("read") == want,
        "{}",
        m.log_text()
    );
    m.unmount();
    let m = Mount::start(&server, &[]);
    assert!(std::fs::read(m.path("synced.bin")).expect("read") == want);
    // A file smaller than one part is a single PutObject, no multipart upload.
    let initiates = server.requests("InitiateMultipartUpload");
    std::fs::write(m.path("small"), random_bytes(100_000, 5)).expect("write small");
    assert_eq!(server.requests("InitiateMultipartUpload"), initiates);
    assert_eq!(stored(&server, "small").map(|d| d.len()), Some(100_000));
}

#[test]
fn owner_modes_and_read_only_are_as_mounted() {
    let server = Server::start(&[]);
    client(&server.endpoint)
        .put("d/f", b"data".to_vec().into())
        .expect("put");
    let m = Mount::start(
        &server,
        &[
            "--read-only",
            "--uid",
            "1234",
            "--gid",
            "4321",
            "--file-mode",
            "0640",
            "--dir-mode",
            "0750",
        ],
    );
    let out = sh(
        &format!(
            "stat -c '%u %g %a %F' {} {}",
            q(&m.path("d")),
            q(&m.path("d/f"))
        ),
        LIMIT,
    );
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(
        out.stdout.lines().collect::<Vec<_>>(),
        ["1234 4321 750 directory", "1234 4321 640 regular file"]
    );
    let out = sh(&format!("echo x > {}", q(&m.path("new"))), LIMIT);
    assert!(
        !out.ok && out.stderr.contains("Read-only file system"),
        "{}",
        out.stderr
    );
    assert_eq!(std::fs::read(m.path("d/f")).expect("read"), b"data");
}
