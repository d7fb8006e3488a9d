//! Ownership tests: on a mount shared with `--allow-other`, new entries belong
//! to the user who made them, the kernel enforces their modes against other
//! users, and owners and modes survive a remount. Real FUSE, real tools, run as
//! other users through `setpriv` (the tests run as root).

mod common;

use cofferfs::fs::journal::{Attrs, Batch, Record, JOURNAL_PREFIX};
use cofferfs::store::{ListAll, ObjectStore};
use common::{client, q, run_bounded, sh, CliOutput, Mount, Server};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(120);

/// The user who creates files; also in group 2000.
const OWNER: u32 = 1000;
/// Another user, in no group but its own.
const OTHER: u32 = 65534;

/// Runs `script` under bash as `uid` (gid the same), in the supplementary
/// `groups` given (none when empty).
fn as_user(uid: u32, groups: &[u32], script: &str) -> CliOutput {
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"));
    if groups.is_empty() {
        cmd.arg("--clear-groups");
    } else {
        let list: Vec<String> = groups.iter().map(u32::to_string).collect();
        cmd.arg(format!("--groups={}", list.join(",")));
    }
    // The test's own directory may be closed to other users.
    cmd.current_dir("/").args(["bash", "-c", script]);
    run_bounded(cmd, LIMIT)
}

fn owner(script: &str) -> CliOutput {
    // A known umask, whatever the test's own.
    as_user(OWNER, &[OWNER, 2000], &format!("umask 022; {script}"))
}

fn other(script: &str) -> CliOutput {
    as_user(OTHER, &[], script)
}

/// A mount shared with every user; the directories above its mountpoint are
/// opened so other users can reach it.
fn shared_mount(server: &Server) -> Mount {
    let m = Mount::start(server, &["--allow-other"]);
    let mut p = m.dir.parent();
    while let Some(dir) = p {
        if dir == Path::new("/") || dir == std::env::temp_dir() {
            break;
        }
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .expect("open the mountpoint's parent");
        p = dir.parent();
    }
    m
}

/// `uid:gid:mode` of `rel` (not following a symlink), as root sees it.
fn stat(m: &Mount, rel: &str) -> String {
    let out = sh(&format!("stat -c %u:%g:%a {}", q(&m.path(rel))), LIMIT);
    assert!(out.ok, "stat {rel}: {}", out.stderr);
    out.stdout.trim().to_string()
}

/// The owner fields of every journal record naming `path`, in order.
fn recorded_owners(server: &Server, path: &str) -> Vec<(Option<u32>, Option<u32>)> {
    let c = client(&server.endpoint);
    let mut keys: Vec<String> = ListAll::new(&c, JOURNAL_PREFIX)
        .map(|o| o.expect("list").key)
        .collect();
    keys.sort();
    let mut owners = Vec::new();
    for key in keys {
        let body = c.get(&key, None).expect("get batch").data;
        let batch = Batch::decode(&key, &body).expect("decode batch");
        for r in batch.records {
            let (p, a): (&str, Attrs) = match &r {
                Record::Attr { path, attrs }
                | Record::Mkdir { path, attrs }
                | Record::File { path, attrs }
                | Record::Symlink { path, attrs, .. }
                | Record::Bind { path, attrs, .. } => (path, *attrs),
                _ => continue,
            };
            if p == path {
                owners.push((a.uid, a.gid));
            }
        }
    }
    owners
}

fn ok(what: &str, out: &CliOutput, m: &Mount) {
    assert!(
        out.ok,
        "{what} failed: {}\nmount log:\n{}",
        out.stderr,
        m.log_text()
    );
}

#[test]
fn new_entries_belong_to_their_creator_who_alone_may_change_them_across_remounts() {
    let server = Server::start(&[]);
    let m = shared_mount(&server);
    let shared = m.path("shared");
    ok(
        "mkdir shared",
        &sh(&format!("mkdir {0} && chmod 777 {0}", q(&shared)), LIMIT),
        &m,
    );
    let s = q(&shared);

    // The creator owns what it makes, and may chmod, touch and chgrp it.
    let made = owner(&format!(
        "set -e; cd {s}
         echo secret > f
         chmod 600 f
         touch -d '2001-02-03 04:05:06 UTC' f
         chgrp 2000 f
         chgrp {OWNER} f
         touch empty
         mkdir d
         ln -s f link
         umask 077; echo x > g"
    ));
    ok("the owner's changes", &made, &m);
    let ours = format!("{OWNER}:{OWNER}");
    assert_eq!(stat(&m, "shared/f"), format!("{ours}:600"));
    assert_eq!(stat(&m, "shared/g"), format!("{ours}:600"), "umask 077");
    assert_eq!(stat(&m, "shared/empty"), format!("{ours}:644"));
    assert_eq!(stat(&m, "shared/d"), format!("{ours}:755"));
    assert_eq!(stat(&m, "shared/link"), format!("{ours}:777"));
    let mtime = sh(&format!("stat -c %Y {s}/f"), LIMIT);
    assert_eq!(mtime.stdout.trim(), "981173106", "touch -d by the owner");
    // Root reads through the modes; nothing else changed hands.
    let root_reads = sh(&format!("cat {s}/f"), LIMIT);
    assert_eq!(root_reads.stdout, "secret\n");
    assert_eq!(stat(&m, "shared"), "0:0:777", "made by root");

    // Another user is held to the modes.
    let read = other(&format!("cat {s}/f"));
    assert!(!read.ok, "another user read a 0600 file");
    assert!(read.stderr.contains("Permission denied"), "{}", read.stderr);
    let write = other(&format!("echo no > {s}/d/x"));
    assert!(!write.ok, "another user wrote into a 0755 directory");
    assert!(
        write.stderr.contains("Permission denied"),
        "{}",
        write.stderr
    );
    let chmod = other(&format!("chmod 666 {s}/f"));
    assert!(!chmod.ok, "another user changed the owner's mode");
    // Nor may the owner give a file away.
    let give = owner(&format!("chown {OTHER} {s}/f"));
    assert!(!give.ok, "a user gave a file away");
    assert_eq!(stat(&m, "shared/f"), format!("{ours}:600"));

    // Owners and modes are in the journal: a fresh mount shows them.
    m.unmount();
    let ours_recorded = (Some(OWNER), Some(OWNER));
    for path in ["shared/empty", "shared/d", "shared/link"] {
        assert_eq!(
            recorded_owners(&server, path).first(),
            Some(&ours_recorded),
            "{path}: the creator is recorded with the entry"
        );
    }
    // What the mount's own user makes records no owner: it shows as whoever
    // mounts the coffer, here or on another machine.
    let roots = recorded_owners(&server, "shared");
    assert!(
        !roots.is_empty() && roots.iter().all(|o| *o == (None, None)),
        "{roots:?}"
    );
    let m = shared_mount(&server);
    for (rel, want) in [
        ("shared/f", "600"),
        ("shared/g", "600"),
        ("shared/empty", "644"),
        ("shared/d", "755"),
        ("shared/link", "777"),
    ] {
        assert_eq!(
            stat(&m, rel),
            format!("{ours}:{want}"),
            "{rel} after remount"
        );
    }
    let read = other(&format!("cat {}", q(&m.path("shared/f"))));
    assert!(!read.ok, "another user read a 0600 file after a remount");
    let reread = owner(&format!("cat {}", q(&m.path("shared/f"))));
    assert_eq!(reread.stdout, "secret\n", "{}", reread.stderr);
}

#[test]
fn a_setgid_directory_gives_new_entries_its_group() {
    let server = Server::start(&[]);
    let m = shared_mount(&server);
    let team = m.path("team");
    ok(
        "mkdir team",
        &sh(
            &format!("mkdir {0} && chgrp 3000 {0} && chmod 2777 {0}", q(&team)),
            LIMIT,
        ),
        &m,
    );
    let t = q(&team);
    ok(
        "the owner's entries",
        &owner(&format!("set -e; cd {t}; echo x > f; mkdir sub")),
        &m,
    );
    assert_eq!(stat(&m, "team/f"), format!("{OWNER}:3000:644"));
    // A new subdirectory passes the group on in turn.
    assert_eq!(stat(&m, "team/sub"), format!("{OWNER}:3000:2755"));
    ok(
        "an entry two levels down",
        &owner(&format!("echo y > {t}/sub/g")),
        &m,
    );
    assert_eq!(stat(&m, "team/sub/g"), format!("{OWNER}:3000:644"));
    m.unmount();
    let m = shared_mount(&server);
    assert_eq!(stat(&m, "team/sub"), format!("{OWNER}:3000:2755"));
    assert_eq!(stat(&m, "team/sub/g"), format!("{OWNER}:3000:644"));
}

#[test]
fn a_write_by_an_unprivileged_user_clears_setuid_and_setgid_as_ext4_does() {
    let server = Server::start(&[]);
    let m = shared_mount(&server);
    let d = q(&m.path("d"));
    ok(
        "root's setuid files",
        &sh(
            &format!(
                "set -e; mkdir {d}; chmod 777 {d}; cd {d}
                 for f in wo rdwr both root lock member trunc; do echo data > $f; done
                 chmod 4777 wo; chmod 4777 rdwr; chmod 6777 both; chmod 4777 root
                 chmod 2767 lock; chgrp 2000 member; chmod 2767 member; chmod 6777 trunc"
            ),
            LIMIT,
        ),
        &m,
    );
    // `>>` opens write-only (a direct-I/O handle), `<>` read-write (the
    // page cache): the kernel clears the bits itself only for the latter.
    ok(
        "another user's writes",
        &other(&format!(
            "set -e; cd {d}; printf x >> wo; printf x 1<> rdwr; printf x >> both"
        )),
        &m,
    );
    // open(O_TRUNC) with no write after it: the open alone must clear them.
    ok(
        "another user's truncating open",
        &other(&format!(": > {d}/trunc")),
        &m,
    );
    // Setgid without group execute goes only when the writer is not in the
    // file's group; OWNER is in group 2000 as a supplementary group.
    ok(
        "a group member's write",
        &owner(&format!("printf x >> {d}/member")),
        &m,
    );
    ok(
        "another user's write",
        &other(&format!("printf x >> {d}/lock")),
        &m,
    );
    ok(
        "root's write",
        &sh(&format!("printf x >> {d}/root"), LIMIT),
        &m,
    );
    let want = [
        ("d/wo", "0:0:777"),
        ("d/rdwr", "0:0:777"),
        ("d/both", "0:0:777"),
        // Root has CAP_FSETID: its writes keep the bits, as on ext4.
        ("d/root", "0:0:4777"),
        ("d/lock", "0:0:767"),
        ("d/member", "0:2000:2767"),
        ("d/trunc", "0:0:777"),
    ];
    for (rel, mode) in want {
        assert_eq!(stat(&m, rel), mode, "{rel}");
    }
    let data = sh(&format!("cat {d}/wo"), LIMIT);
    assert_eq!(data.stdout, "data\nx", "the write itself went through");
    // The cleared mode is recorded, not only shown.
    m.unmount();
    let m = shared_mount(&server);
    for (rel, mode) in want {
        assert_eq!(stat(&m, rel), mode, "{rel} after a remount");
    }
}
