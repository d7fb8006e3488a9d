//! Extended attributes and special files on a real mount, made and checked by
//! the tools people use (setfattr/getfattr, cp, rsync, tar, mkfifo, mknod, a
//! unix socket), each compared again after a remount: the journal alone holds
//! them, so a remount is what proves they were recorded.

mod common;

use common::{q, sh, Mount, Server};
use std::path::Path;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(120);

/// Runs `script`, which must succeed; its stdout.
fn ok(script: &str) -> String {
    let out = sh(script, LIMIT);
    assert!(
        out.ok,
        "{script}\nstdout: {}\nstderr: {}",
        out.stdout, out.stderr
    );
    out.stdout
}

/// Every xattr beneath `dir`, hex values, one block per path in path order.
fn xattrs_of(dir: &Path) -> String {
    ok(&format!(
        "cd {} && find . -mindepth 1 | LC_ALL=C sort | xargs -r -d '\\n' getfattr -h -d -m - -e hex --",
        q(dir)
    ))
}

/// Type, mode and device numbers of every entry beneath `dir`, in path order.
fn types_of(dir: &Path) -> String {
    ok(&format!(
        "cd {} && find . -mindepth 1 | LC_ALL=C sort | xargs -r -d '\\n' stat -c '%n %F %a %t %T'",
        q(dir)
    ))
}

/// One line per check of the xattr system calls' answers on `f`.
const ERRNO_CHECKS: &str = r#"
import ctypes, errno, os, sys
f = sys.argv[1]
def tryit(what, call):
    try:
        r = call()
        print(what, "ok" if r is None else r)
    except OSError as e:
        print(what, errno.errorcode[e.errno])
tryit("create-existing", lambda: os.setxattr(f, "user.text", b"v", os.XATTR_CREATE))
tryit("create-new", lambda: os.setxattr(f, "user.new", b"v", os.XATTR_CREATE))
tryit("replace-absent", lambda: os.setxattr(f, "user.none", b"v", os.XATTR_REPLACE))
tryit("replace-existing", lambda: os.setxattr(f, "user.new", b"w", os.XATTR_REPLACE))
tryit("other-namespace", lambda: os.setxattr(f, "foo.bar", b"v"))
tryit("get-absent", lambda: os.getxattr(f, "user.none"))
tryit("remove-absent", lambda: os.removexattr(f, "user.none"))
tryit("too-big", lambda: os.setxattr(f, "user.big", b"x" * 65537))
libc = ctypes.CDLL(None, use_errno=True)
print("probe", libc.getxattr(f.encode(), b"user.text", None, 0))
buf = ctypes.create_string_buffer(2)
n = libc.getxattr(f.encode(), b"user.text", buf, 2)
print("small-buffer", n, errno.errorcode.get(ctypes.get_errno()))
"#;

#[test]
fn xattrs_on_files_and_directories_survive_a_remount_and_move_with_renames() {
    let server = Server::start(&[]);
    let m = Mount::start(&server, &[]);
    // POSIX ACLs: one the mode says all of (user::rwx group::r-x other::---)
    // sets the mode and is not kept; one with a named user is kept as given
    // (user::rw- user:1000:rwx group::r-- mask::rwx other::---).
    let minimal = "0x0200000001000700ffffffff04000500ffffffff20000000ffffffff";
    let acl = "0x0200000001000600ffffffff02000700e803000004000400ffffffff10000700ffffffff20000000ffffffff";
    ok(&format!(
        "cd {mnt} && echo hi > f && : > empty && mkdir -p d/sub && echo x > d/sub/g && \
         setfattr -n user.bin -v 0x00ff10fe f && setfattr -n user.text -v hello f && \
         setfattr -n user.gone -v x f && setfattr -x user.gone f && \
         setfattr -n user.empty f && setfattr -n system.posix_acl_access -v {acl} f && \
         : > min && setfattr -n system.posix_acl_access -v {minimal} min && \
         setfattr -n trusted.t -v 0x01 empty && setfattr -n user.dir -v dv d && \
         setfattr -n user.deep -v deep d/sub/g && \
         python3 -c 'import os; os.setxattr(\"f\", \"user.max\", b\"y\" * 65536)' && \
         mv d e && mv empty e/sub/empty2",
        mnt = q(&m.dir)
    ));
    let checks = ok(&format!(
        "cd {} && python3 -c {} f",
        q(&m.dir),
        q(Path::new(ERRNO_CHECKS))
    ));
    let want = [
        "create-existing EEXIST",
        "create-new ok",
        "replace-absent ENODATA",
        "replace-existing ok",
        "other-namespace ENOTSUP",
        "get-absent ENODATA",
        "remove-absent ENODATA",
        "too-big E2BIG",
        "probe 5",
        "small-buffer -1 ERANGE",
    ];
    assert_eq!(checks.lines().collect::<Vec<_>>(), want, "{checks}");
    // The 64 KiB value is checked on its own, not printed.
    let dump = |dir: &Path| -> String {
        xattrs_of(dir)
            .lines()
            .filter(|l| !l.starts_with("user.max="))
            .map(|l| format!("{l}\n"))
            .collect()
    };
    let before = dump(&m.dir);
    for line in [
        "# file: f",
        "user.bin=0x00ff10fe",
        "user.text=0x68656c6c6f",
        "user.empty=0x",
        "user.new=0x77",
        &format!("system.posix_acl_access={acl}"),
        "# file: e",
        "user.dir=0x6476",
        "# file: e/sub/g",
        "user.deep=0x64656570",
        "# file: e/sub/empty2",
        "trusted.t=0x01",
    ] {
        assert!(before.lines().any(|l| l == line), "{line:?} in\n{before}");
    }
    assert!(!before.contains("user.gone"), "{before}");
    // An ACL sets the mode's bits, the group's from the mask.
    let modes = |m: &Mount| ok(&format!("cd {} && stat -c '%n %a' f min", q(&m.dir)));
    assert_eq!(modes(&m), "f 670\nmin 750\n");
    assert!(!before.contains("# file: min"), "{before}");
    m.unmount();

    let m = Mount::start(&server, &[]);
    assert_eq!(dump(&m.dir), before);
    assert_eq!(modes(&m), "f 670\nmin 750\n");
    assert!(!m.path("d").exists() && !m.path("empty").exists());
    let max = ok(&format!(
        "python3 -c 'import sys, os; print(os.getxattr(sys.argv[1], \"user.max\") == b\"y\" * 65536)' {}",
        q(&m.path("f"))
    ));
    assert_eq!(max.trim(), "True");
    // An overwrite keeps them; a removal stays removed.
    ok(&format!(
        "cd {} && echo again > f && setfattr -x user.bin f",
        q(&m.dir)
    ));
    m.unmount();
    let m = Mount::start(&server, &[]);
    let after = ok(&format!("getfattr -d -m user. -e hex {}", q(&m.path("f"))));
    assert!(after.contains("user.text=0x68656c6c6f"), "{after}");
    assert!(!after.contains("user.bin"), "{after}");
    assert_eq!(std::fs::read(m.path("f")).expect("read"), b"again\n");
}

/// A local tree with xattrs in every place a copy must carry them. (No empty
/// file: rsync's rename of an empty temporary file can meet EBUSY while its
/// close is still settling, a writer issue of its own.)
fn tree_with_xattrs(src: &Path) {
    ok(&format!(
        "mkdir -p {s}/a/b && cd {s} && printf 'one' > one && printf e > a/small && \
         head -c 300000 /dev/urandom > a/b/big && \
         setfattr -n user.bin -v 0x00010203fffe one && setfattr -n user.t -v text one && \
         setfattr -n user.dir -v 0x0a a && setfattr -n user.e -v e a/small && \
         setfattr -n user.big -v 0x$(head -c 300 /dev/urandom | od -An -tx1 | tr -d ' \\n') a/b/big && \
         chmod 600 one && chmod 711 a/b",
        s = q(src)
    ));
}

#[test]
fn cp_preserve_all_and_rsync_x_carry_xattrs_into_the_mount() {
    let server = Server::start(&[]);
    let local = tempfile::tempdir().expect("tempdir");
    let src = local.path().join("src");
    tree_with_xattrs(&src);
    let want = xattrs_of(&src);
    assert!(want.contains("user.big="), "{want}");
    let m = Mount::start(&server, &[]);
    ok(&format!(
        "cp -a --preserve=all {s} {mnt}/cp && rsync -aX {s}/ {mnt}/rs/",
        s = q(&src),
        mnt = q(&m.dir)
    ));
    assert_eq!(xattrs_of(&m.path("cp")), want);
    // cp sets modes through a POSIX ACL the mode says all of.
    assert_eq!(types_of(&m.path("cp")), types_of(&src));
    m.unmount();

    let m = Mount::start(&server, &[]);
    for copy in ["cp", "rs"] {
        assert_eq!(xattrs_of(&m.path(copy)), want, "{copy}");
        assert_eq!(types_of(&m.path(copy)), types_of(&src), "{copy}");
        ok(&format!("diff -r {} {}", q(&src), q(&m.path(copy))));
    }
    // rsync finds nothing left to change, xattrs included.
    let changes = ok(&format!("rsync -aXni {}/ {}/", q(&src), q(&m.path("rs"))));
    assert_eq!(changes, "", "rsync would still change:\n{changes}");
}

#[test]
fn fifos_sockets_and_device_nodes_stat_the_same_after_a_remount() {
    let server = Server::start(&[]);
    let m = Mount::start(&server, &[]);
    ok(&format!(
        "cd {} && mkdir d && mkfifo p && mknod c c 1 3 && mknod b b 7 0 && \
         mkfifo -m 600 d/p2 && mknod d/c2 c 4 64 && \
         python3 -c 'import socket; s = socket.socket(socket.AF_UNIX); s.bind(\"sock\")' && \
         chmod 640 c && mv b b2 && mv d e",
        q(&m.dir)
    ));
    let before = types_of(&m.dir);
    for line in [
        "./p fifo 644 0 0",
        "./c character special file 640 1 3",
        "./b2 block special file 644 7 0",
        "./sock socket 755 0 0",
        "./e/p2 fifo 600 0 0",
        "./e/c2 character special file 644 4 40",
    ] {
        assert!(before.lines().any(|l| l == line), "{line:?} in\n{before}");
    }
    // The kernel carries a FIFO's bytes; the mount never sees them.
    let through = ok(&format!(
        "cd {} && (echo through > p &) && timeout 20 cat p",
        q(&m.dir)
    ));
    assert_eq!(through, "through\n");
    m.unmount();

    // Even where files that hold bytes cannot go, special files can.
    let m = Mount::start(&server, &["--no-delete"]);
    assert_eq!(types_of(&m.dir), before);
    ok(&format!("rm {} {}", q(&m.path("p")), q(&m.path("e/c2"))));
    m.unmount();
    let m = Mount::start(&server, &[]);
    let after = types_of(&m.dir);
    assert!(
        !after.contains("./p ") && !after.contains("./e/c2 "),
        "{after}"
    );
    assert!(
        after.contains("./c character special file 640 1 3"),
        "{after}"
    );
}

/// A local tree of a file, a FIFO and device nodes, with xattrs.
fn tree_with_specials(src: &Path) {
    tree_with_xattrs(src);
    ok(&format!(
        "cd {} && mkfifo a/fifo && mknod a/null c 1 3 && mknod a/loop b 7 0 && \
         chmod 600 a/loop",
        q(src)
    ));
}

#[test]
fn tar_extracts_fifos_devices_and_xattrs_into_the_mount_and_compares_clean() {
    let server = Server::start(&[]);
    let local = tempfile::tempdir().expect("tempdir");
    let src = local.path().join("src");
    tree_with_specials(&src);
    let archive = local.path().join("t.tar");
    let tar = "tar --xattrs --xattrs-include='*'";
    ok(&format!("{tar} -cf {} -C {} .", q(&archive), q(&src)));
    let m = Mount::start(&server, &[]);
    ok(&format!(
        "mkdir {x} && {tar} -xpf {a} -C {x}",
        x = q(&m.path("x")),
        a = q(&archive)
    ));
    m.unmount();

    let m = Mount::start(&server, &[]);
    let diff = ok(&format!(
        "{tar} -df {} -C {} 2>&1",
        q(&archive),
        q(&m.path("x"))
    ));
    assert_eq!(diff, "", "tar -d found differences");
    assert_eq!(types_of(&m.path("x")), types_of(&src));
    assert_eq!(xattrs_of(&m.path("x")), xattrs_of(&src));
}

#[test]
fn rsync_copies_specials_and_devices_into_the_mount() {
    let server = Server::start(&[]);
    let local = tempfile::tempdir().expect("tempdir");
    let src = local.path().join("src");
    tree_with_specials(&src);
    ok(&format!(
        "cd {}/a && python3 -c 'import socket; s = socket.socket(socket.AF_UNIX); s.bind(\"sock\")'",
        q(&src)
    ));
    let m = Mount::start(&server, &[]);
    let rsync = "rsync -a --specials --devices";
    ok(&format!("{rsync} {}/ {}/", q(&src), q(&m.path("r"))));
    m.unmount();

    let m = Mount::start(&server, &[]);
    assert_eq!(types_of(&m.path("r")), types_of(&src));
    let changes = ok(&format!("{rsync} -ni {}/ {}/", q(&src), q(&m.path("r"))));
    assert_eq!(changes, "", "rsync would still change:\n{changes}");
}
