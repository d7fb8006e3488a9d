//! Times, identity and space as local-disk tools see them (issue 13): atime,
//! mtime and ctime each move only when they should and survive a remount; a
//! directory's times follow its entries; link counts, inode numbers, `df` and
//! `fallocate`. Real mounts of a real `cofferfs serve`, driven by coreutils.

mod common;

use common::{q, sh, Mount, Server};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

const LIMIT: Duration = Duration::from_secs(120);
const MIB: u64 = 1 << 20;

/// Remounts: unmounts `m` cleanly and mounts the same coffer again.
fn remount(server: &Server, m: Mount) -> Mount {
    m.unmount();
    Mount::start(server, &[])
}

/// Runs a shell script that must succeed; returns its stdout.
fn ok(script: &str) -> String {
    let out = sh(script, LIMIT);
    assert!(out.ok, "{script}: {}", out.stderr);
    out.stdout
}

/// (seconds, nanoseconds)
type Time = (i64, i64);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Times {
    atime: Time,
    mtime: Time,
    ctime: Time,
}

fn times(p: &Path) -> Times {
    let m = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("stat {}: {e}", p.display()));
    Times {
        atime: (m.atime(), m.atime_nsec()),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// A time set during this test (not one a `touch -d` gave).
fn fresh(t: Time) -> bool {
    (t.0 - now_secs()).abs() < 120
}

const Y2019: i64 = 1_546_300_800; // 2019-01-01T00:00:00Z
const Y2020: i64 = 1_577_836_800;
const Y2021: i64 = 1_609_459_200;

#[test]
fn touch_a_and_touch_m_each_move_only_their_time_and_chmod_moves_only_ctime() {
    let server = Server::start(&[]);
    let m = Mount::start(&server, &[]);
    let f = m.path("f");
    ok(&format!("echo x > {f} && touch -d @{Y2020} {f}", f = q(&f)));
    let t = times(&f);
    assert_eq!(
        (t.atime, t.mtime),
        ((Y2020, 0), (Y2020, 0)),
        "touch -d sets both"
    );

    ok(&format!("touch -a -d @{Y2021} {}", q(&f)));
    let a = times(&f);
    assert_eq!(a.atime, (Y2021, 0), "touch -a sets the atime");
    assert_eq!(a.mtime, (Y2020, 0), "touch -a leaves the mtime");
    assert!(a.ctime > t.ctime || fresh(a.ctime), "{a:?}");

    ok(&format!("touch -m -d @{Y2019} {}", q(&f)));
    let b = times(&f);
    assert_eq!(b.mtime, (Y2019, 0), "touch -m sets the mtime");
    assert_eq!(b.atime, (Y2021, 0), "touch -m leaves the atime");

    // Reading moves no time (as with noatime).
    ok(&format!("cat {} > /dev/null", q(&f)));
    std::thread::sleep(Duration::from_millis(20));
    ok(&format!("chmod 600 {}", q(&f)));
    let c = times(&f);
    assert_eq!(
        (c.atime, c.mtime),
        (b.atime, b.mtime),
        "chmod moves neither"
    );
    assert!(c.ctime > b.ctime, "chmod moves the ctime: {b:?} then {c:?}");
    assert!(fresh(c.ctime));

    let m = remount(&server, m);
    assert_eq!(times(&m.path("f")), c, "after a remount");
}

#[test]
fn a_directorys_mtime_and_ctime_follow_its_entries_and_survive_a_remount() {
    let server = Server::start(&[]);
    let m = Mount::start(&server, &[]);
    let d = m.path("d");
    ok(&format!("mkdir {d} && echo x > {d}/keep", d = q(&d)));
    let steps = [
        ("create", "echo x > d/f"),
        ("mkdir", "mkdir d/s"),
        ("symlink", "ln -s keep d/l"),
        ("unlink", "rm d/f"),
        ("rmdir", "rmdir d/s"),
        ("rename within", "mv d/l d/l2"),
        ("rename out", "mv d/l2 out"),
        ("rename in", "mv out d/back"),
    ];
    for (what, step) in steps {
        ok(&format!("touch -d @{Y2020} {}", q(&d)));
        let before = times(&d);
        assert_eq!(before.mtime, (Y2020, 0));
        ok(&format!("cd {} && {step}", q(&m.dir)));
        let after = times(&d);
        assert!(
            fresh(after.mtime) && fresh(after.ctime),
            "{what} ({step}) left the directory's times at {after:?}"
        );
        assert!(
            after.ctime >= before.ctime,
            "{what}: {before:?} then {after:?}"
        );
    }
    // The root's times move the same way.
    ok(&format!("echo x > {}", q(&m.path("top"))));
    let root = times(&m.dir);
    assert!(fresh(root.mtime), "{root:?}");
    let dir = times(&d);

    let m = remount(&server, m);
    assert_eq!(
        times(&m.path("d")),
        dir,
        "the directory's times after a remount"
    );
    assert_eq!(times(&m.dir), root, "the root's times after a remount");
}

#[test]
fn a_directory_links_two_plus_its_subdirectories() {
    let server = Server::start(&[]);
    let m = Mount::start(&server, &[]);
    ok(&format!(
        "mkdir {d} {d}/a {d}/b {d}/c && echo x > {d}/f && ln -s f {d}/l",
        d = q(&m.path("d"))
    ));
    let nlink = |p: &Path| std::fs::metadata(p).expect("stat").nlink();
    assert_eq!(nlink(&m.path("d")), 5);
    assert_eq!(nlink(&m.path("d/a")), 2);
    assert_eq!(
        std::fs::symlink_metadata(m.path("d/f")).expect("f").nlink(),
        1
    );

    // After a remount nothing is listed yet: a stat does not list a subtree
    // to count, and shows 1 ("unknown" to find and fts). A listing counts.
    let m = remount(&server, m);
    assert_eq!(nlink(&m.path("d")), 1);
    ok(&format!("ls {} > /dev/null", q(&m.path("d"))));
    // The kernel keeps the attributes it read for up to 1 s.
    assert!(
        common::wait_for(Duration::from_secs(5), || nlink(&m.path("d")) == 5),
        "links after a listing: {}",
        nlink(&m.path("d"))
    );
}

#[test]
fn a_file_and_a_directory_keep_their_inode_numbers_across_remounts_and_mounts() {
    let server = Server::start(&[]);
    let m = Mount::start(&server, &[]);
    ok(&format!(
        "mkdir -p {d}/e && echo x > {d}/e/g && echo y > {f}",
        d = q(&m.path("d")),
        f = q(&m.path("f"))
    ));
    let ino = |m: &Mount, p: &str| std::fs::symlink_metadata(m.path(p)).expect(p).ino();
    let paths = ["d", "d/e", "d/e/g", "f"];
    let before: Vec<u64> = paths.iter().map(|p| ino(&m, p)).collect();
    let m = remount(&server, m);
    // Asked for in the reverse order: numbers handed out in order of
    // appearance would differ.
    for (p, want) in paths.iter().zip(&before).rev() {
        assert_eq!(ino(&m, p), *want, "{p} after a remount");
    }
    // A second mount of the same coffer shows the same numbers.
    let other = Mount::start(&server, &[]);
    assert_eq!(ino(&other, "f"), before[3]);
    assert_eq!(ino(&other, "d/e/g"), before[2]);
    // A rename keeps the entry's number within the mount.
    ok(&format!("mv {} {}", q(&m.path("f")), q(&m.path("f2"))));
    assert_eq!(ino(&m, "f2"), before[3]);
}

/// `df -B1` of the mount: (size, used, available) in bytes.
fn df(m: &Mount) -> (u64, u64, u64) {
    let out = ok(&format!(
        "df -B1 --output=size,used,avail {} | tail -1",
        q(&m.dir)
    ));
    let v: Vec<u64> = out
        .split_whitespace()
        .map(|n| n.parse().expect("a number"))
        .collect();
    (v[0], v[1], v[2])
}

#[test]
fn df_and_stat_f_look_sane_and_used_grows_by_a_written_file() {
    let server = Server::start(&[]);
    let m = Mount::start(&server, &[]);
    let out = ok(&format!(
        "stat -f -c '%s %S %l %b %f %a %c %d' {}",
        q(&m.dir)
    ));
    let v: Vec<u64> = out
        .split_whitespace()
        .map(|n| n.parse().expect("a number"))
        .collect();
    let [bsize, frsize, namelen, blocks, bfree, bavail, files, ffree] = v[..] else {
        panic!("stat -f: {out}");
    };
    assert_eq!((bsize, frsize, namelen), (4096, 4096, 255), "{out}");
    assert!(blocks * 4096 >= 1 << 50, "at least 1 PiB: {out}");
    assert!(bfree <= blocks && bavail == bfree, "{out}");
    assert!(
        ffree > 0 && files > ffree,
        "known entries count as used: {out}"
    );

    let (size, used, avail) = df(&m);
    assert_eq!(size, used + avail);
    ok(&format!(
        "head -c {MIB} /dev/urandom > {}",
        q(&m.path("one-mib"))
    ));
    let (size2, used2, avail2) = df(&m);
    assert!(used2 >= used + MIB, "used {used} then {used2}");
    assert_eq!(size2, used2 + avail2);
    assert!(avail2 < avail, "available {avail} then {avail2}");
}

#[test]
fn fallocate_extends_with_zeros_and_other_modes_are_not_supported() {
    let server = Server::start(&[]);
    let m = Mount::start(&server, &[]);
    let f = m.path("f");
    ok(&format!("fallocate -l 1M {}", q(&f)));
    assert_eq!(std::fs::read(&f).expect("read"), vec![0u8; MIB as usize]);
    // An existing file grows, keeping its bytes; mode 0 never shrinks.
    let g = m.path("g");
    ok(&format!(
        "printf abc > {g} && fallocate -l 8192 {g}",
        g = q(&g)
    ));
    ok(&format!("fallocate -o 0 -l 10 {}", q(&g)));
    let mut want = b"abc".to_vec();
    want.resize(8192, 0);
    assert_eq!(std::fs::read(&g).expect("read"), want);
    for flag in ["-p", "-c", "-z", "-n"] {
        let out = sh(&format!("fallocate {flag} -o 0 -l 4096 {}", q(&f)), LIMIT);
        assert!(!out.ok, "fallocate {flag} succeeded");
        // util-linux says EOPNOTSUPP in its own words for modes with
        // FALLOC_FL_KEEP_SIZE (-p, -n), and only for that errno.
        assert!(
            out.stderr.contains("Operation not supported")
                || out.stderr.contains("keep size mode is unsupported"),
            "fallocate {flag}: {}",
            out.stderr
        );
    }
    let m = remount(&server, m);
    assert_eq!(
        std::fs::read(m.path("f")).expect("read"),
        vec![0u8; MIB as usize]
    );
    assert_eq!(std::fs::read(m.path("g")).expect("read"), want);
}

#[test]
fn setting_or_removing_an_xattr_moves_only_the_ctime_and_it_survives_a_remount() {
    let server = Server::start(&[]);
    let m = Mount::start(&server, &[]);
    ok(&format!(
        "cd {} && echo x > f && mkdir d && touch -d @{Y2020} f d",
        q(&m.dir)
    ));
    let mut last = Vec::new();
    for rel in ["f", "d"] {
        let p = m.path(rel);
        let before = times(&p);
        std::thread::sleep(Duration::from_millis(20));
        ok(&format!("setfattr -n user.k -v v {}", q(&p)));
        let set = times(&p);
        assert!(
            set.ctime > before.ctime,
            "{rel}: setxattr moves the ctime: {before:?} then {set:?}"
        );
        assert_eq!((set.atime, set.mtime), ((Y2020, 0), (Y2020, 0)), "{rel}");
        std::thread::sleep(Duration::from_millis(20));
        ok(&format!("setfattr -x user.k {}", q(&p)));
        let removed = times(&p);
        assert!(
            removed.ctime > set.ctime,
            "{rel}: removexattr moves the ctime: {set:?} then {removed:?}"
        );
        assert_eq!((removed.atime, removed.mtime), ((Y2020, 0), (Y2020, 0)));
        last.push(removed);
    }
    let m = remount(&server, m);
    assert_eq!(vec![times(&m.path("f")), times(&m.path("d"))], last);
}
