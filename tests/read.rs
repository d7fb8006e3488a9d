//! The read path through real mounts: exact bytes at every size, random preads,
//! the block cache, read-ahead under faults, metadata caching. Every mount is
//! unmounted on every path and every wait is bounded.

mod common;

use cofferfs::store::ObjectStore;
use common::{cli, client, random_bytes, sh, wait_for, Mount, Server, COFFER};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const MIB: usize = 1 << 20;
const LIMIT: Duration = Duration::from_secs(300);

fn q(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

/// Uploads `data` as `key` with `cofferfs put` (not through a mount).
fn put(server: &Server, dir: &Path, key: &str, data: &[u8]) -> std::path::PathBuf {
    let path = dir.join(key.replace('/', "_"));
    std::fs::write(&path, data).expect("write source");
    let out = cli(
        &[
            "--endpoint",
            &server.endpoint,
            "put",
            path.to_str().expect("utf-8"),
            &format!("{COFFER}/{key}"),
        ],
        &[],
        LIMIT,
    );
    assert!(out.ok, "put {key}: {}", out.stderr);
    path
}

/// Drops the kernel's page cache, so reads reach the mount again.
fn drop_page_cache() {
    let out = sh("sync && echo 1 > /proc/sys/vm/drop_caches", LIMIT);
    assert!(
        out.ok,
        "cannot drop the page cache (tests run as root): {}",
        out.stderr
    );
}

#[test]
fn cmp_reads_exact_bytes_from_one_byte_to_300_mib() {
    let server = Server::start(&[]);
    let tmp = tempfile::tempdir().expect("tempdir");
    let sizes = [1, 4095, MIB - 1, MIB, MIB + 1, 8 * MIB + 3, 300 * MIB];
    let mut sources = Vec::new();
    for (i, &size) in sizes.iter().enumerate() {
        let key = format!("sizes/f{size}");
        sources.push((
            key.clone(),
            put(&server, tmp.path(), &key, &random_bytes(size, i as u64)),
        ));
    }
    let m = Mount::start(&server, &[]);
    for (key, src) in &sources {
        let out = sh(&format!("cmp {} {}", q(src), q(&m.path(key))), LIMIT);
        assert!(
            out.ok,
            "{key}: {}{}\n{}",
            out.stdout,
            out.stderr,
            m.log_text()
        );
    }
}

#[test]
fn ten_thousand_random_preads_match_the_source() {
    let server = Server::start(&[]);
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = put(
        &server,
        tmp.path(),
        "random.bin",
        &random_bytes(37 * MIB + 123, 9),
    );
    let m = Mount::start(&server, &["--cache-size", "16MiB"]);
    let script = format!(
        r#"
import os, random
rnd = random.Random(1234)
a = os.open({src:?}, os.O_RDONLY)
b = os.open({mnt:?}, os.O_RDONLY)
size = os.fstat(a).st_size
for i in range(10000):
    off = rnd.randrange(0, size + 10)
    n = rnd.choice([1, 7, 512, 4096, 65536, 1 << 20, 3 << 20])
    x, y = os.pread(a, n, off), os.pread(b, n, off)
    if x != y:
        raise SystemExit(f"pread {{i}}: {{n}} bytes at {{off}} differ")
print("ok")
"#,
        src = src.display().to_string(),
        mnt = m.path("random.bin").display().to_string()
    );
    let mut cmd = Command::new("python3");
    cmd.args(["-c", &script]);
    let out = common::run_bounded(cmd, LIMIT);
    assert!(
        out.ok && out.stdout.trim() == "ok",
        "{}{}",
        out.stdout,
        out.stderr
    );
}

#[test]
fn a_re_read_is_served_from_the_block_cache_without_a_get() {
    let server = Server::start(&[]);
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = put(&server, tmp.path(), "warm.bin", &random_bytes(20 * MIB, 4));
    let m = Mount::start(&server, &[]);
    let out = sh(
        &format!("cmp {} {}", q(&src), q(&m.path("warm.bin"))),
        LIMIT,
    );
    assert!(out.ok, "{}", out.stderr);
    let gets = server.requests("GetObject");
    assert!(gets > 0);
    drop_page_cache();
    let out = sh(
        &format!("cmp {} {}", q(&src), q(&m.path("warm.bin"))),
        LIMIT,
    );
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(
        server.requests("GetObject"),
        gets,
        "the re-read went to the server"
    );
}

#[test]
fn cache_memory_stays_within_its_budget() {
    let server = Server::start(&[]);
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = put(&server, tmp.path(), "big.bin", &random_bytes(300 * MIB, 5));
    let m = Mount::start(&server, &["--cache-size", "64MiB", "--read-ahead", "32MiB"]);
    let out = sh(&format!("cmp {} {}", q(&src), q(&m.path("big.bin"))), LIMIT);
    assert!(out.ok, "{}", out.stderr);
    let hwm = m.vm_hwm_kib() / 1024;
    eprintln!("mount daemon VmHWM after reading 300 MiB with --cache-size 64MiB: {hwm} MiB");
    assert!(hwm > 0 && hwm <= 64 + 64, "VmHWM {hwm} MiB");
}

#[test]
fn truncated_and_reset_gets_are_retried_and_never_yield_wrong_bytes() {
    let server = Server::start(&["--fault-seed", "7"]);
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = put(
        &server,
        tmp.path(),
        "faulty.bin",
        &random_bytes(30 * MIB + 5, 6),
    );
    server.set_faults("GetObject:truncate:0.2,GetObject:reset:0.1");
    let m = Mount::start(&server, &[]);
    let out = sh(
        &format!("cmp {} {}", q(&src), q(&m.path("faulty.bin"))),
        LIMIT,
    );
    assert!(out.ok, "{}\n{}", out.stderr, m.log_text());
    assert!(
        server.stats()["faults"].as_u64().unwrap_or(0) > 0,
        "no fault injected"
    );
}

#[test]
fn a_read_that_keeps_failing_is_eio() {
    let server = Server::start(&[]);
    let tmp = tempfile::tempdir().expect("tempdir");
    put(&server, tmp.path(), "doomed.bin", &random_bytes(MIB, 8));
    let m = Mount::start(&server, &["--retries", "2"]);
    assert!(m.path("doomed.bin").exists());
    server.set_faults("GetObject:503:1.0");
    let out = sh(
        &format!("cat {} > /dev/null", q(&m.path("doomed.bin"))),
        LIMIT,
    );
    assert!(!out.ok);
    assert!(out.stderr.contains("Input/output error"), "{}", out.stderr);
    assert!(
        m.log_text().contains("doomed.bin"),
        "log does not name the key"
    );
}

#[test]
fn ls_l_of_a_thousand_files_costs_one_listing_and_no_heads() {
    let server = Server::start(&[]);
    let c = client(&server.endpoint);
    for i in 0..1000 {
        c.put(
            &format!("many/f{i:04}"),
            format!("file {i}").into_bytes().into(),
        )
        .expect("put");
    }
    let m = Mount::start(&server, &[]);
    let (heads, lists) = (server.requests("HeadObject"), server.requests("GetCoffer"));
    let out = sh(&format!("ls -l {} | wc -l", q(&m.path("many"))), LIMIT);
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(out.stdout.trim(), "1001"); // "total" and 1000 entries
    let heads = server.requests("HeadObject") - heads;
    let lists = server.requests("GetCoffer") - lists;
    eprintln!("ls -l of 1000 files: {heads} HEAD, {lists} listing requests");
    // Looking up "many" itself may HEAD it once; the entries cost nothing.
    assert!(heads <= 1, "{heads} HEADs");
    assert!(lists <= 4, "{lists} listing requests");
}

#[test]
fn objects_added_elsewhere_appear_and_new_versions_never_show_old_bytes() {
    let server = Server::start(&[]);
    let m = Mount::start(&server, &["--metadata-ttl", "1s"]);
    let other = Mount::start(&server, &["--metadata-ttl", "1s"]);
    std::fs::create_dir(m.path("d")).expect("mkdir");
    std::fs::write(m.path("d/v"), b"version one").expect("write");
    assert_eq!(std::fs::read(m.path("d/v")).expect("read"), b"version one");
    client(&server.endpoint)
        .put("d/added", b"from elsewhere".to_vec().into())
        .expect("put");
    assert!(
        wait_for(Duration::from_secs(20), || m.path("d/added").exists()),
        "an object added by another client did not appear"
    );
    // The other mount reads version one, then sees version two, never a mix.
    assert!(wait_for(Duration::from_secs(20), || std::fs::read(
        other.path("d/v")
    )
    .is_ok_and(|d| d == b"version one")));
    std::fs::write(m.path("d/v"), b"version two!").expect("overwrite");
    assert_eq!(std::fs::read(m.path("d/v")).expect("read"), b"version two!");
    assert!(
        wait_for(Duration::from_secs(20), || std::fs::read(other.path("d/v"))
            .is_ok_and(|d| d == b"version two!")),
        "the other mount kept serving the old version"
    );
}

#[test]
fn a_reader_of_a_file_being_written_sees_what_its_writer_wrote_so_far() {
    let server = Server::start(&[]);
    let m = Mount::start(&server, &["--part-size", "1MiB"]);
    let dst = m.path("growing");
    let data = random_bytes(3 * MIB + 200_000, 1);
    let (mut dd, stdin) = common::spawn_writer(&dst, &data);
    // dd writes in 64 KiB blocks: wait until all of them reached the mount.
    assert!(wait_for(LIMIT, || std::fs::metadata(&dst)
        .is_ok_and(|md| md.len() == data.len() as u64)));
    // A whole read covers bytes that went up as parts and bytes still buffered.
    let seen = std::fs::read(&dst).expect("read while being written");
    assert!(seen == data, "read {} bytes while written", seen.len());
    // The read completed what went up as an object, but another mount does
    // not see the file half-written: it shows what the last close stored (dd
    // closes its first descriptor at once: an empty file), or nothing.
    let other = Mount::start(&server, &[]);
    let shown = std::fs::metadata(other.path("growing")).map_or(0, |md| md.len());
    assert_eq!(shown, 0, "a half-written file shows in another mount");
    other.unmount();
    drop(stdin);
    assert!(wait_for(LIMIT, || matches!(dd.try_wait(), Ok(Some(_)))));
    assert!(std::fs::read(&dst).expect("read after close") == data);
    m.unmount();
    let m = Mount::start(&server, &[]);
    assert!(std::fs::read(m.path("growing")).expect("after remount") == data);
}

#[test]
fn the_disk_tier_serves_blocks_after_a_remount_without_a_get() {
    let server = Server::start(&[]);
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = put(
        &server,
        tmp.path(),
        "kept.bin",
        &random_bytes(6 * MIB + 11, 12),
    );
    let cache_dir = tmp.path().join("cache");
    let cache = cache_dir.to_str().expect("utf-8");
    let flags = ["--cache-dir", cache, "--cache-dir-size", "64MiB"];
    let m = Mount::start(&server, &flags);
    let out = sh(
        &format!("cmp {} {}", q(&src), q(&m.path("kept.bin"))),
        LIMIT,
    );
    assert!(out.ok, "{}", out.stderr);
    m.unmount();
    let gets = server.requests("GetObject");
    let m = Mount::start(&server, &flags);
    drop_page_cache();
    let out = sh(
        &format!("cmp {} {}", q(&src), q(&m.path("kept.bin"))),
        LIMIT,
    );
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(
        server.requests("GetObject"),
        gets,
        "blocks were fetched again"
    );
}
