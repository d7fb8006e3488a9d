//! The direct CLI (`put`, `get`, `ls`, `stat`, `uploads`) against a real server:
//! hostile keys, faults, total failure, clean errors.

mod common;

use cofferfs::store::ObjectStore;
use common::{cli, client, random_bytes, Server, COFFER};
use std::path::Path;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(120);

fn put(endpoint: &str, file: &Path, key: &str, extra: &[&str]) -> common::CliOutput {
    let dest = format!("{COFFER}/{key}");
    let mut args = vec!["--endpoint", endpoint, "put", file.to_str().unwrap(), &dest];
    args.extend_from_slice(extra);
    cli(&args, &[], LIMIT)
}

fn get(endpoint: &str, key: &str, file: &Path) -> common::CliOutput {
    let src = format!("{COFFER}/{key}");
    cli(
        &["--endpoint", endpoint, "get", &src, file.to_str().unwrap()],
        &[],
        LIMIT,
    )
}

#[test]
fn hostile_keys_round_trip_through_put_ls_and_get() {
    let server = Server::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let long = format!("long/{}", "k".repeat(845));
    assert_eq!(long.len(), 850);
    let keys = [
        "with space/file name.txt",
        "percent%20literal%",
        "plus+sign",
        "question?mark",
        "hash#tag",
        "amp&and=equals",
        "unicode/数据保险箱/ファイル.bin",
        "dots/../up",
        "..hidden",
        "double//slash",
        long.as_str(),
    ];
    for (i, key) in keys.iter().enumerate() {
        let src = dir.path().join(format!("src{i}"));
        std::fs::write(&src, random_bytes(1000 + i, i as u64)).unwrap();
        let out = put(&server.endpoint, &src, key, &[]);
        assert!(out.ok, "put {key:?}: {}", out.stderr);
        let back = dir.path().join(format!("back{i}"));
        let out = get(&server.endpoint, key, &back);
        assert!(out.ok, "get {key:?}: {}", out.stderr);
        assert_eq!(
            std::fs::read(&src).unwrap(),
            std::fs::read(&back).unwrap(),
            "{key:?}"
        );
    }
    let out = cli(&["--endpoint", &server.endpoint, "ls", COFFER], &[], LIMIT);
    assert!(out.ok, "{}", out.stderr);
    for key in keys {
        assert!(
            out.stdout.lines().any(|l| l.ends_with(&format!("  {key}"))),
            "ls lists {key:?}:\n{}",
            out.stdout
        );
    }
    let out = cli(
        &[
            "--endpoint",
            &server.endpoint,
            "stat",
            &format!("{COFFER}/plus+sign"),
        ],
        &[],
        LIMIT,
    );
    assert!(
        out.ok && out.stdout.contains("size: 1002"),
        "{}{}",
        out.stdout,
        out.stderr
    );

    let too_long = format!("{long}x");
    let src = dir.path().join("src0");
    let out = put(&server.endpoint, &src, &too_long, &[]);
    assert!(!out.ok, "an 851-byte key is refused");
    assert!(out.stderr.contains("851 bytes"), "{}", out.stderr);
    assert_eq!(
        out.stderr.trim().lines().count(),
        1,
        "one clear line: {}",
        out.stderr
    );
}

#[test]
fn put_lands_fifty_files_byte_identical_through_twenty_percent_faults() {
    let server = Server::start(&["--fault-seed", "42"]);
    server.set_faults(
        "UploadPart:503:0.1,UploadPart:reset:0.05,UploadPart:reset-after:0.05,\
         CompleteMultipartUpload:503:0.1,CompleteMultipartUpload:reset-after:0.1",
    );
    let dir = tempfile::tempdir().unwrap();
    let sizes = |i: usize| match i % 5 {
        0 => 1 + i,
        1 => (1 << 20) - 1,
        2 => (1 << 20) + 1,
        3 => 3 * (1 << 20) + i * 1000,
        _ => 5 * (1 << 20) + 7,
    };
    for i in 0..50 {
        let src = dir.path().join(format!("f{i}"));
        std::fs::write(&src, random_bytes(sizes(i), 100 + i as u64)).unwrap();
        let out = put(
            &server.endpoint,
            &src,
            &format!("faulty/f{i}"),
            &["--part-size", "1MiB"],
        );
        assert!(out.ok, "put f{i}: {}", out.stderr);
    }
    assert!(
        server.stats()["faults"].as_u64().unwrap_or(0) > 10,
        "faults were injected"
    );
    server.set_faults("");
    let c = client(&server.endpoint);
    for i in 0..50 {
        let got = c.get(&format!("faulty/f{i}"), None).unwrap().data;
        assert!(
            got.as_ref() == random_bytes(sizes(i), 100 + i as u64).as_slice(),
            "f{i} byte-identical"
        );
    }
    assert!(
        c.list_uploads("", "").unwrap().uploads.is_empty(),
        "no open upload left"
    );
}

#[test]
fn put_that_cannot_succeed_exits_non_zero_and_leaves_nothing() {
    let server = Server::start(&[]);
    server.set_faults("UploadPart:503:1,CompleteMultipartUpload:503:1,PutObject:503:1");
    let dir = tempfile::tempdir().unwrap();
    let c = client(&server.endpoint);
    for (name, size) in [("big", 3 << 20), ("small", 1000)] {
        let src = dir.path().join(name);
        std::fs::write(&src, random_bytes(size, 9)).unwrap();
        let out = put(&server.endpoint, &src, name, &["--part-size", "1MiB"]);
        assert!(!out.ok, "{name}: put must fail");
        assert!(out.stderr.contains("ServiceUnavailable"), "{}", out.stderr);
        assert!(c.head(name).unwrap().is_none(), "no object under {name}");
    }
    server.set_faults("CompleteMultipartUpload:after200:1");
    let src = dir.path().join("big");
    let out = put(&server.endpoint, &src, "late", &["--part-size", "1MiB"]);
    assert!(!out.ok);
    assert!(c.head("late").unwrap().is_none());
    assert!(
        c.list_uploads("", "").unwrap().uploads.is_empty(),
        "no open upload left"
    );
}

#[test]
fn uploads_list_and_abort_find_open_uploads() {
    let server = Server::start(&[]);
    let c = client(&server.endpoint);
    let id = c.initiate("pending/one").unwrap();
    let out = cli(
        &["--endpoint", &server.endpoint, "uploads", "list", COFFER],
        &[],
        LIMIT,
    );
    assert!(
        out.ok && out.stdout.contains(&id),
        "{}{}",
        out.stdout,
        out.stderr
    );
    let out = cli(
        &[
            "--endpoint",
            &server.endpoint,
            "uploads",
            "list",
            COFFER,
            "--older-than",
            "1h",
        ],
        &[],
        LIMIT,
    );
    assert!(
        out.ok && !out.stdout.contains(&id),
        "a fresh upload is not older than 1h"
    );
    let out = cli(
        &["--endpoint", &server.endpoint, "uploads", "abort", COFFER],
        &[],
        LIMIT,
    );
    assert!(
        out.ok && out.stdout.contains("aborted"),
        "{}{}",
        out.stdout,
        out.stderr
    );
    assert!(c.list_uploads("", "").unwrap().uploads.is_empty());
}

#[test]
fn failures_are_one_clear_line_and_never_show_secrets() {
    let server = Server::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let out = get(&server.endpoint, "nothing-here", &dir.path().join("x"));
    assert!(!out.ok);
    assert!(out.stderr.contains("ObjectNotExists"), "{}", out.stderr);
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    assert!(!dir.path().join("x").exists(), "no partial file");

    let out = cli(&["ls", COFFER], &[], LIMIT);
    assert!(
        !out.ok && out.stderr.contains("--endpoint"),
        "{}",
        out.stderr
    );

    let creds = dir.path().join("creds");
    std::fs::write(
        &creds,
        "secret_id = AKIDx\nsecret_key = very-secret-value\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = cli(
        &[
            "--endpoint",
            &server.endpoint,
            "--credentials",
            creds.to_str().unwrap(),
            "ls",
            COFFER,
        ],
        &[],
        LIMIT,
    );
    assert!(
        !out.ok && out.stderr.contains("chmod 600"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("very-secret-value"));

    let out = cli(
        &["--endpoint", "http://127.0.0.1:9", "ls", COFFER],
        &[],
        LIMIT,
    );
    assert!(!out.ok && out.stderr.contains("connect"), "{}", out.stderr);
}

#[test]
fn out_of_range_numbers_in_mount_options_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().to_str().unwrap();
    let mount = |extra: &[&str]| {
        let mut args = vec!["--endpoint", "http://127.0.0.1:9", "mount", COFFER, mnt];
        args.extend_from_slice(extra);
        cli(&args, &[], LIMIT)
    };
    for bad in [
        &["-o", "uid=4294967296"][..],
        &["-o", "gid=4294967295"],
        &["-o", "uid=-1"],
        &["--uid", "4294967296"],
        &["-o", "upload_concurrency=0"],
        &["-o", "read_concurrency=18446744073709551616"],
        &["--fuse-threads", "0"],
        &["-o", "retries=0"],
        &["-o", "retries=4294967297"],
        &["-o", "part_size=1KiB"],
        &["--part-size", "6GiB"],
        &["-o", "file_mode=17777"],
    ] {
        let out = mount(bad);
        assert!(!out.ok, "{bad:?} was accepted");
        let line = format!("{}{}", out.stdout, out.stderr);
        assert!(
            !line.contains("connect") && !line.contains("127.0.0.1"),
            "{bad:?} must fail as a usage error before any request: {line}"
        );
        let name = match bad[0] {
            // An -o item is reported as the flag it names.
            "-o" => bad[1].split('=').next().unwrap_or(bad[1]),
            flag => flag,
        };
        assert!(
            line.contains(&name.replace('_', "-")),
            "{bad:?}: the error names the option: {line}"
        );
    }
    let mounted = common::sh(&format!("findmnt {mnt}"), LIMIT);
    assert!(!mounted.ok, "nothing was mounted");
}
