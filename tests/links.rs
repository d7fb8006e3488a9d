//! Hard links, and the archivers and copiers that make them, on the default
//! mount: one file under several names, the same after a remount.

mod common;

use common::{q, run_in, sh, Mount, Server};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(300);

/// (inode, links, size) of `p`.
fn id(p: &Path) -> (u64, u64, u64) {
    let md = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (md.ino(), md.nlink(), md.len())
}

#[test]
fn a_hard_link_is_the_same_file_under_both_names_also_after_a_remount() {
    let server = Server::start(&[]);
    let m = Mount::start(&server, &["--part-size", "1MiB"]);
    std::fs::create_dir(m.path("d")).expect("mkdir");
    std::fs::write(m.path("a"), b"first\n").expect("write a");
    std::fs::hard_link(m.path("a"), m.path("d/b")).expect("ln a d/b");
    std::fs::hard_link(m.path("d/b"), m.path("c")).expect("ln d/b c");
    let (ino, links, _) = id(&m.path("a"));
    assert_eq!(links, 3);
    assert_eq!(id(&m.path("d/b")), id(&m.path("a")));
    // Written through one name, read through the others; chmod through one.
    run_in(
        &m,
        "append and chmod",
        &format!(
            "echo second >> {b}; chmod 600 {c}; setfattr -n user.k -v v {b}",
            b = q(&m.path("d/b")),
            c = q(&m.path("c"))
        ),
    );
    assert_eq!(
        std::fs::read_to_string(m.path("a")).expect("a"),
        "first\nsecond\n"
    );
    // Removing one name keeps the others (and changes the file's ctime);
    // renaming one moves only that name.
    let ctime = |p: &Path| {
        let md = std::fs::symlink_metadata(p).expect("stat");
        (md.ctime(), md.ctime_nsec())
    };
    let before = ctime(&m.path("d/b"));
    std::thread::sleep(Duration::from_millis(20));
    std::fs::remove_file(m.path("a")).expect("rm a");
    assert!(ctime(&m.path("d/b")) > before, "ctime of the other name");
    std::fs::rename(m.path("c"), m.path("d/e")).expect("mv c d/e");
    assert_eq!(id(&m.path("d/b")), (ino, 2, 13));
    // A name renamed over is a file of its own again; the other keeps the bytes.
    std::fs::write(m.path("other"), b"other").expect("other");
    std::fs::hard_link(m.path("d/b"), m.path("f")).expect("ln d/b f");
    std::fs::rename(m.path("other"), m.path("f")).expect("mv other f");
    assert_eq!(id(&m.path("d/e")).1, 2);
    m.unmount();
    let m = Mount::start(&server, &[]);
    let b = id(&m.path("d/b"));
    assert_eq!((b.1, b.2), (2, 13), "links and size after remount");
    assert_eq!(id(&m.path("d/e")), b, "both names, one file");
    assert_eq!(
        std::fs::read_to_string(m.path("d/e")).expect("e"),
        "first\nsecond\n"
    );
    assert_eq!(std::fs::read_to_string(m.path("f")).expect("f"), "other");
    assert!(!m.path("a").exists() && !m.path("c").exists());
    let out = run_in(
        &m,
        "stat",
        &format!(
            "stat -c %a {}; getfattr --only-values -n user.k {}",
            q(&m.path("d/e")),
            q(&m.path("d/b"))
        ),
    );
    assert_eq!(out, "600\nv");
    // And a write after the remount reaches both names.
    run_in(
        &m,
        "append",
        &format!("echo third >> {}", q(&m.path("d/e"))),
    );
    assert_eq!(
        std::fs::read_to_string(m.path("d/b")).expect("b"),
        "first\nsecond\nthird\n"
    );
}

/// A tree with what archives carry: hard links, absolute and `../` symlinks,
/// a FIFO, a device node, xattrs and odd modes.
fn rich_tree(dir: &Path) {
    let script = format!(
        "set -e; cd {d}; mkdir -p sub/deep; seq 1 20000 > big; echo small > sub/small; \
         ln big sub/big-link; ln sub/small sub/deep/small-link; \
         ln -s /etc/hostname abs-link; ln -s ../../big sub/deep/up-link; \
         mkfifo fifo; mknod null-dev c 1 3; chmod 751 sub; chmod 640 sub/small; \
         setfattr -n user.note -v hello big; setfattr -n user.bin -v 0x00ff00 sub/small; \
         touch -d '2001-02-03 04:05:06' sub/deep",
        d = q(dir)
    );
    let out = sh(&script, LIMIT);
    assert!(out.ok, "making the tree: {}", out.stderr);
}

#[test]
fn tar_extracts_hard_links_symlinks_specials_and_xattrs_and_compares_clean_after_a_remount() {
    let server = Server::start(&[]);
    let m = Mount::start(&server, &[]);
    let src = tempfile::tempdir().expect("tempdir");
    rich_tree(src.path());
    let tar = src.path().join("../").join(format!(
        "{}.tar",
        src.path()
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    let _cleanup = scopeguard(tar.clone());
    run_in(
        &m,
        "tar -x into the mount",
        &format!(
            "tar --xattrs -C {s} -cf {t} .; mkdir {x}; tar --xattrs -xpf {t} -C {x}",
            s = q(src.path()),
            t = q(&tar),
            x = q(&m.path("x"))
        ),
    );
    m.unmount();
    let m = Mount::start(&server, &[]);
    let out = run_in(
        &m,
        "tar -d after remount",
        &format!(
            "cd {x}; tar --xattrs -df {t} && echo clean; stat -c '%h %n' big sub/big-link",
            x = q(&m.path("x")),
            t = q(&tar)
        ),
    );
    assert!(out.starts_with("clean\n2 big\n2 sub/big-link"), "{out}");
    assert_eq!(id(&m.path("x/big")), id(&m.path("x/sub/big-link")));
}

/// Removes a file when dropped.
fn scopeguard(p: std::path::PathBuf) -> impl Drop {
    struct G(std::path::PathBuf);
    impl Drop for G {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    G(p)
}

#[test]
fn rsync_ahax_twice_transfers_nothing_the_second_time_and_cp_a_keeps_links() {
    let server = Server::start(&[]);
    let m = Mount::start(&server, &[]);
    let src = tempfile::tempdir().expect("tempdir");
    rich_tree(src.path());
    let dst = m.path("r");
    let first = run_in(
        &m,
        "rsync -aHAX",
        &format!(
            "rsync -aHAX --specials --devices --stats {}/ {}/",
            q(src.path()),
            q(&dst)
        ),
    );
    assert!(
        first.contains("Number of regular files transferred: 2"),
        "{first}"
    );
    m.unmount();
    let m = Mount::start(&server, &[]);
    let second = run_in(
        &m,
        "rsync -aHAX again",
        &format!(
            "rsync -aHAX --specials --devices --stats -i {}/ {}/",
            q(src.path()),
            q(&m.path("r"))
        ),
    );
    assert!(
        second.contains("Number of regular files transferred: 0"),
        "{second}"
    );
    assert_eq!(id(&m.path("r/big")), id(&m.path("r/sub/big-link")));
    // cp -a keeps the links too.
    run_in(
        &m,
        "cp -a",
        &format!("cp -a {}/. {}", q(src.path()), q(&m.path("c"))),
    );
    assert_eq!(
        id(&m.path("c/sub/small")),
        id(&m.path("c/sub/deep/small-link"))
    );
    assert_eq!(id(&m.path("c/sub/small")).1, 2);
}
