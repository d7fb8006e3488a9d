//! The tools people run on backup targets, on the default mount: git, sqlite3,
//! 7z, zip and a vim-style save. Each must succeed as on a local disk, and its
//! result must check clean after a remount. scripts/test.sh installs them.

mod common;

use common::{q, run_in, Mount, Server};
use std::path::Path;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(300);

#[test]
fn git_clones_commits_gcs_and_fscks_also_after_a_remount() {
    let server = Server::start(&[]);
    let m = Mount::start(&server, &[]);
    let src = tempfile::tempdir().expect("tempdir");
    let repo = src.path().join("repo");
    let id = "-c user.email=t@example.com -c user.name=t";
    run_in(
        &m,
        "making the source repository",
        &format!(
            "git init -q {r}; cd {r}; for i in 1 2 3 4 5; do seq $i 9999 > f$i; \
             git add f$i; git {id} commit -qm c$i; done",
            r = q(&repo)
        ),
    );
    let clone = m.path("clone");
    let log = run_in(
        &m,
        "git clone, commit, gc, fsck",
        &format!(
            "git clone -q {r} {c}; cd {c}; echo more >> f1; git {id} commit -qam more; \
             git {id} tag v1; git gc -q; git fsck --strict; git status --porcelain; \
             git log --format=%s",
            r = q(&repo),
            c = q(&clone)
        ),
    );
    assert_eq!(
        log.lines().collect::<Vec<_>>(),
        ["more", "c5", "c4", "c3", "c2", "c1"]
    );
    m.unmount();
    let m = Mount::start(&server, &[]);
    let log = run_in(
        &m,
        "git after remount",
        &format!(
            "cd {c}; git fsck --strict; test -z \"$(git status --porcelain)\"; \
             echo again >> f2; git {id} commit -qam again; git gc -q; git fsck; \
             git log --format=%s -2",
            c = q(&m.path("clone"))
        ),
    );
    assert_eq!(log.lines().collect::<Vec<_>>(), ["again", "more"]);
}

#[test]
fn sqlite3_keeps_two_thousand_inserts_and_passes_integrity_check() {
    let server = Server::start(&[]);
    let m = Mount::start(&server, &[]);
    let db = m.path("data/app.db");
    std::fs::create_dir_all(m.path("data")).expect("mkdir");
    // 2,000 inserts: 1,500 in 15 transactions, then 500 on their own, each
    // with its own journal file and fsyncs.
    let mut sql = String::from("create table t(id integer primary key, v text);\n");
    for b in 0..15 {
        sql.push_str("begin;\n");
        for i in 0..100 {
            sql.push_str(&format!(
                "insert into t(v) values('row {b}-{i} {}');\n",
                "x".repeat(100)
            ));
        }
        sql.push_str("commit;\n");
    }
    for i in 0..500 {
        sql.push_str(&format!("insert into t(v) values('single {i}');\n"));
    }
    let file = tempfile::NamedTempFile::new().expect("sql file");
    std::fs::write(file.path(), sql).expect("write sql");
    run_in(
        &m,
        "sqlite3 inserts",
        &format!("sqlite3 {} < {}", q(&db), q(file.path())),
    );
    let check = format!(
        "sqlite3 {} 'pragma integrity_check; select count(*) from t;'",
        q(&db)
    );
    assert_eq!(run_in(&m, "sqlite3 reopen", &check), "ok\n2000\n");
    m.unmount();
    let m = Mount::start(&server, &[]);
    let check = format!(
        "sqlite3 {} \"pragma integrity_check; insert into t(v) values('after'); \
         select count(*) from t;\"",
        q(&m.path("data/app.db"))
    );
    assert_eq!(run_in(&m, "sqlite3 after remount", &check), "ok\n2001\n");
}

/// A tree of 25 MiB: 20 incompressible files and some text.
fn tree_of_25_mib(dir: &Path) {
    for i in 0..20u64 {
        let data = common::random_bytes(1_250_000 + i as usize, i);
        std::fs::write(dir.join(format!("blob{i}.bin")), data).expect("blob");
    }
    std::fs::create_dir(dir.join("text")).expect("mkdir");
    for i in 0..50 {
        std::fs::write(
            dir.join(format!("text/t{i}.txt")),
            format!("{i}\n").repeat(500),
        )
        .expect("text");
    }
}

#[test]
fn seven_zip_and_zip_archives_of_25_mib_test_clean_after_a_remount() {
    let server = Server::start(&[]);
    let m = Mount::start(&server, &[]);
    let src = tempfile::tempdir().expect("tempdir");
    tree_of_25_mib(src.path());
    run_in(
        &m,
        "7z a and zip -r",
        &format!(
            "cd {s}; 7z a -bd {a} . > /dev/null; zip -qr {z} .",
            s = q(src.path()),
            a = q(&m.path("backup.7z")),
            z = q(&m.path("backup.zip"))
        ),
    );
    m.unmount();
    let m = Mount::start(&server, &[]);
    let out = run_in(
        &m,
        "7z t and unzip -t",
        &format!(
            "7z t {} | grep -c 'Everything is Ok'; unzip -tq {}",
            q(&m.path("backup.7z")),
            q(&m.path("backup.zip"))
        ),
    );
    assert!(out.starts_with("1\nNo errors detected"), "{out}");
    // And the contents are the tree's.
    let x = tempfile::tempdir().expect("tempdir");
    let out = run_in(
        &m,
        "extracting",
        &format!(
            "cd {x}; 7z x -bd {a} > /dev/null; diff -r {s} {x} && echo same",
            x = q(x.path()),
            a = q(&m.path("backup.7z")),
            s = q(src.path())
        ),
    );
    assert!(out.contains("same"), "{out}");
}

#[test]
fn a_vim_style_save_and_vim_itself_exit_zero_and_leave_no_swap_file() {
    let server = Server::start(&[]);
    let m = Mount::start(&server, &[]);
    let dir = m.path("notes");
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::write(dir.join("todo.txt"), "one\ntwo\n").expect("write");
    // What vim does on :w, step by step: a swap file written in blocks and
    // rewritten in place, fsync'd; the file renamed to a backup, a new one
    // written and fsync'd, the backup and the swap file removed.
    let script = format!(
        r#"
import os
d = {d:?}
swp = os.open(os.path.join(d, ".todo.txt.swp"), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
os.write(swp, b"b0VIM 9.0" + bytes(4087))
os.write(swp, bytes(4096) * 2)
os.fsync(swp)
os.pwrite(swp, b"U", 1024)
os.pwrite(swp, b"data block", 8192)
os.fsync(swp)
assert os.pread(swp, 10, 8192) == b"data block"
f = os.path.join(d, "todo.txt")
os.rename(f, f + "~")
fd = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
os.write(fd, b"one\ntwo\nthree\n")
os.fsync(fd)
os.close(fd)
os.unlink(f + "~")
os.close(swp)
os.unlink(os.path.join(d, ".todo.txt.swp"))
"#,
        d = dir.display().to_string()
    );
    let mut c = std::process::Command::new("python3");
    c.arg("-c").arg(script);
    let out = common::run_bounded(c, LIMIT);
    assert!(out.ok, "{}{}\n{}", out.stdout, out.stderr, m.log_text());
    // vim itself, with its swap file in the mount's directory.
    run_in(
        &m,
        "vim",
        &format!(
            "cd {d}; vim -N -u NONE -i NONE -n -es -c 'set swapfile directory=.' \
             -c 'normal Gofour' -c 'wq' todo.txt < /dev/null",
            d = q(&dir)
        ),
    );
    m.unmount();
    let m = Mount::start(&server, &[]);
    assert_eq!(
        std::fs::read_to_string(m.path("notes/todo.txt")).expect("read"),
        "one\ntwo\nthree\nfour\n"
    );
    let mut names: Vec<String> = std::fs::read_dir(m.path("notes"))
        .expect("list")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["todo.txt"]);
}

#[test]
fn restic_and_borg_back_up_and_check_clean_also_after_a_remount() {
    let server = Server::start(&[]);
    let m = Mount::start(&server, &[]);
    let src = tempfile::tempdir().expect("tempdir");
    tree_of_25_mib(src.path());
    let env = "export RESTIC_PASSWORD=test BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes \
               BORG_BASE_DIR=\"$(mktemp -d)\" RESTIC_CACHE_DIR=\"$(mktemp -d)\"";
    run_in(&m,
        "restic and borg backups",
        &format!(
            "{env}; restic init -q -r {r}; restic -q -r {r} backup {s}; \
             borg init -e none {b}; borg create {b}::one {s}; \
             echo changed >> {s}/text/t1.txt; restic -q -r {r} backup {s}; borg create {b}::two {s}",
            r = q(&m.path("restic")),
            b = q(&m.path("borg")),
            s = q(src.path())
        ),
    );
    m.unmount();
    let m = Mount::start(&server, &[]);
    let out = run_in(
        &m,
        "restic check and borg check after remount",
        &format!(
            "{env}; restic -r {r} check --read-data 2>&1 | tail -1; \
             borg check --verify-data {b} && borg list --short {b}",
            r = q(&m.path("restic")),
            b = q(&m.path("borg"))
        ),
    );
    assert_eq!(out, "no errors were found\none\ntwo\n");
}
