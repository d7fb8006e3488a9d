//! POSIX file semantics on the default mount: open files outlive their names,
//! read-write handles read what they wrote, and any write pattern lands.
//! Each script runs the same operations on a local directory and on the
//! mount; the results must agree, before and after a remount.

mod common;

use common::{open_uploads, run_bounded, CliOutput, Mount, Server};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(300);

/// Runs python3 `script` with `D` set to directory `dir`.
fn py(dir: &Path, script: &str) -> CliOutput {
    let mut c = Command::new("python3");
    c.arg("-c").arg(format!(
        "import os, sys\nD = {:?}\n{script}",
        dir.display().to_string()
    ));
    run_bounded(c, LIMIT)
}

/// Runs `script` in a local directory and in the mount; both must succeed
/// and print the same.
fn agree(m: &Mount, sub: &str, script: &str) -> String {
    let local = tempfile::tempdir().expect("tempdir");
    let want = py(local.path(), script);
    assert!(want.ok, "local run failed: {}{}", want.stdout, want.stderr);
    let dir = m.path(sub);
    std::fs::create_dir_all(&dir).expect("mkdir in mount");
    let got = py(&dir, script);
    assert!(
        got.ok,
        "mount run failed: {}{}\nmount log:\n{}",
        got.stdout,
        got.stderr,
        m.log_text()
    );
    assert_eq!(got.stdout, want.stdout, "mount log:\n{}", m.log_text());
    got.stdout
}

#[test]
fn an_unlinked_open_file_keeps_working_for_fstat_read_and_write() {
    let server = Server::start(&[]);
    let m = Mount::start(&server, &["--part-size", "1MiB"]);
    let out = agree(
        &m,
        "u",
        r#"
p = os.path.join(D, "f")
with open(p, "wb") as f:
    f.write(b"stored " * 1000)
r = os.open(p, os.O_RDONLY)
os.unlink(p)
st = os.fstat(r)
print("reader", st.st_size, st.st_nlink, os.pread(r, 6, 0), os.path.exists(p))
os.close(r)
# A file open for writing can be unlinked; its writes go on, and store nothing visible.
w = os.open(os.path.join(D, "w"), os.O_RDWR | os.O_CREAT, 0o644)
os.write(w, os.urandom(3 * 1024 * 1024 + 7))
os.unlink(os.path.join(D, "w"))
os.write(w, b"after")
st = os.fstat(w)
print("writer", st.st_size, st.st_nlink, os.pread(w, 5, 3 * 1024 * 1024 + 7))
os.fsync(w)
os.close(w)
print(sorted(os.listdir(D)))
"#,
    );
    assert!(out.contains("reader 7000 0 b'stored' False"), "{out}");
    assert!(out.contains("writer 3145740 0 b'after'"), "{out}");
    // Nothing of the unlinked writer stays open or shows up, also after a remount.
    assert!(
        common::wait_for(Duration::from_secs(10), || open_uploads(&server) == 0),
        "an upload stayed open"
    );
    m.unmount();
    let m = Mount::start(&server, &[]);
    let left: Vec<_> = std::fs::read_dir(m.path("u"))
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn renaming_over_an_open_file_keeps_the_old_bytes_for_its_reader() {
    let server = Server::start(&[]);
    let m = Mount::start(&server, &[]);
    agree(
        &m,
        "r",
        r#"
a, b = os.path.join(D, "a"), os.path.join(D, "b")
open(a, "w").write("old version")
r = os.open(a, os.O_RDONLY)
w = os.open(a + ".new", os.O_WRONLY | os.O_CREAT, 0o644)
os.write(w, b"partly")
open(b, "w").write("new version")
os.rename(b, a)
print(os.pread(r, 100, 0), os.fstat(r).st_size, open(a).read())
# The file being written can itself be renamed; its close lands at the new name.
os.rename(a + ".new", os.path.join(D, "moved"))
os.write(w, b" written")
os.close(w)
os.close(r)
print(sorted(os.listdir(D)), open(os.path.join(D, "moved")).read())
"#,
    );
    m.unmount();
    let m = Mount::start(&server, &[]);
    assert_eq!(
        std::fs::read_to_string(m.path("r/moved")).expect("moved"),
        "partly written"
    );
    assert_eq!(
        std::fs::read_to_string(m.path("r/a")).expect("a"),
        "new version"
    );
}

/// The same operations on a file, whatever the part size: reads of what was
/// written, seeks back over bytes already uploaded, holes, truncates, writes
/// after fsync.
const ANY_PATTERN: &str = r#"
import hashlib
p = os.path.join(D, "f")
fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
data = bytes(range(256)) * (14 * 1024)   # 3.5 MiB, past several 1 MiB parts
os.write(fd, data)
print("tail", os.pread(fd, 4, len(data) - 4).hex())
print("head", os.pread(fd, 4, 0).hex())        # bytes that left as a part
os.pwrite(fd, b"HEADER", 0)                    # a header patched at the start
os.pwrite(fd, b"middle", 2 * 1024 * 1024 + 3)
print("patched", os.pread(fd, 6, 0), os.pread(fd, 6, 2 * 1024 * 1024 + 3))
os.pwrite(fd, b"hole", 5 * 1024 * 1024)        # a sparse stretch
print("size", os.fstat(fd).st_size, os.pread(fd, 4, 4 * 1024 * 1024).hex())
os.fsync(fd)
os.ftruncate(fd, 3 * 1024 * 1024)              # after fsync: a new version
os.lseek(fd, 0, os.SEEK_END)
os.write(fd, b"appended")
os.fdatasync(fd)
os.pwrite(fd, b"late", 10)
os.close(fd)
fd = os.open(p, os.O_RDONLY)
print("final", os.fstat(fd).st_size, hashlib.md5(os.read(fd, 1 << 24)).hexdigest())
os.close(fd)
# A second open reads what a writer holds while it writes.
w = os.open(os.path.join(D, "g"), os.O_WRONLY | os.O_CREAT, 0o644)
os.write(w, b"visible to readers")
r = os.open(os.path.join(D, "g"), os.O_RDONLY)
print("reader", os.read(r, 100))
os.close(r)
os.close(w)
"#;

#[test]
fn any_write_pattern_on_a_read_write_handle_lands_as_on_a_local_disk() {
    let server = Server::start(&[]);
    let m = Mount::start(&server, &["--part-size", "1MiB"]);
    let out = agree(&m, "p", ANY_PATTERN);
    let digest = out
        .lines()
        .find_map(|l| l.strip_prefix("final "))
        .expect("final line")
        .to_string();
    m.unmount();
    let m = Mount::start(&server, &[]);
    let got = std::fs::read(m.path("p/f")).expect("read after remount");
    let md5 = cofferfs::protocol::hex(&cofferfs::protocol::md5(&got));
    assert_eq!(format!("{} {md5}", got.len()), digest);
}
