//! Memory follows what the kernel holds: a real mount of a tree populated
//! straight into `cofferfs serve`, walked, then `drop_caches` makes the kernel
//! forget its inodes, and the mount's table and RSS must fall.

mod common;

use bytes::Bytes;
use cofferfs::store::ObjectStore;
use common::{client, q, run_in, wait_for, Mount, Server};
use std::sync::Arc;
use std::time::Duration;

/// `tops` × `subs` × `files` objects at `tTT/sSS/fFF`, put by 8 threads.
fn populate(server: &Server, tops: usize, subs: usize, files: usize) {
    let c = Arc::new(client(&server.endpoint));
    let keys: Vec<String> = (0..tops)
        .flat_map(|t| {
            (0..subs).flat_map(move |s| (0..files).map(move |f| format!("t{t:02}/s{s:02}/f{f:02}")))
        })
        .collect();
    let keys = Arc::new(keys);
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let (c, keys) = (Arc::clone(&c), Arc::clone(&keys));
            std::thread::spawn(move || {
                for k in keys.iter().skip(w).step_by(8) {
                    c.put(k, Bytes::from(k.clone())).expect("put");
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("populating thread");
    }
}

/// Entries the mount knows of, from statfs: its inode count is the entries
/// it holds plus the free ones (see `Fs::statfs`).
fn known_entries(m: &Mount) -> u64 {
    let out = run_in(m, "stat -f", &format!("stat -f -c '%c %d' {}", q(&m.dir)));
    let v: Vec<u64> = out
        .split_whitespace()
        .map(|s| s.parse().expect("number"))
        .collect();
    v[0] - v[1]
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(u64::MAX)
}

fn drop_caches() {
    std::fs::write("/proc/sys/vm/drop_caches", "2")
        .expect("echo 2 > /proc/sys/vm/drop_caches (the tests run as root)");
}

#[test]
fn the_mount_lets_go_of_entries_the_kernel_forgets_and_gives_the_memory_back() {
    let server = Server::start(&[]);
    populate(&server, 20, 20, 50);
    let m = Mount::start(&server, &["--metadata-ttl", "2s"]);
    // A walk that stats every file: the kernel looks up all 20,420 entries.
    let walked = run_in(
        &m,
        "walk",
        &format!("find {} -type f -printf '%s\\n' | wc -l", q(&m.dir)),
    );
    assert_eq!(walked.trim(), "20000");
    let before = known_entries(&m);
    assert!(before > 20_000, "the walk filled the table: {before}");
    let rss_before = rss_kib(m.pid());
    drop_caches();
    // The kernel forgets every entry but the top directories it still
    // holds through the root's dentries (those go too once unused).
    let fell = wait_for(Duration::from_secs(60), || {
        drop_caches();
        known_entries(&m) <= 21 + 20 * 21
    });
    let after = known_entries(&m);
    assert!(
        fell,
        "the table still holds {after} entries of {before} 60 s after drop_caches; log:\n{}",
        m.log_text()
    );
    let rss = wait_for(Duration::from_secs(60), || rss_kib(m.pid()) <= 64 << 10);
    let rss_after = rss_kib(m.pid());
    assert!(
        rss,
        "RSS {rss_after} KiB (before {rss_before} KiB) is above 64 MiB"
    );
    eprintln!("entries {before} -> {after}; RSS {rss_before} KiB -> {rss_after} KiB");
    // Said in the log, within a tick of the periodic settling (2 s here).
    assert!(
        wait_for(Duration::from_secs(30), || m
            .log_text()
            .contains("entries the kernel forgot left the table")),
        "the mount did not log its evictions:\n{}",
        m.log_text()
    );
    // What left comes back on demand, with the same inode numbers.
    let ino = |p: &str| {
        run_in(&m, "stat", &format!("stat -c %i {}", q(&m.path(p))))
            .trim()
            .to_string()
    };
    let first = ino("t03/s04/f05");
    drop_caches();
    assert!(wait_for(Duration::from_secs(30), || {
        drop_caches();
        known_entries(&m) <= 21 + 20 * 21
    }));
    assert_eq!(ino("t03/s04/f05"), first);
    let listed = run_in(&m, "ls", &format!("ls {} | wc -l", q(&m.path("t07/s08"))));
    assert_eq!(listed.trim(), "50");
    m.unmount();
}
