//! Timeouts bound idle time, never a whole request (issue 10, item 6): slow merges
//! that stream spaces succeed, silent servers and stalled uploads fail in bounded
//! time, and a Complete whose connection is cut resolves to the truth (§9).

mod common;

use bytes::Bytes;
use cofferfs::client::retry::RetryPolicy;
use cofferfs::client::{CdcsClient, ClientConfig};
use cofferfs::protocol::{hex, md5, ErrorCode};
use cofferfs::store::{CompletedPart, ObjectStore, StoreError};
use common::{cli, random_bytes, Server, COFFER};
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;
const IDLE: Duration = Duration::from_secs(2);

/// A client with a short idle timeout and few, quick retries: a busy answer
/// (AlreadyLock) survives the ordinary retries for well under a second.
fn quick_client(endpoint: &str, merge_wait: Duration) -> CdcsClient {
    let mut cfg = ClientConfig::endpoint(endpoint).expect("endpoint");
    cfg.retry = RetryPolicy {
        max_attempts: 4,
        base: Duration::from_millis(20),
        cap: Duration::from_millis(200),
        total: Duration::from_secs(30),
    };
    cfg.idle_timeout = IDLE;
    cfg.merge_wait = merge_wait;
    CdcsClient::new(cfg, COFFER).expect("client")
}

/// Initiates `key` and uploads one part of `len` bytes.
fn one_part(c: &CdcsClient, key: &str, len: usize) -> (String, CompletedPart) {
    let id = c.initiate(key).expect("initiate");
    let data = random_bytes(len, 7);
    let etag = c
        .upload_part(key, &id, 1, Bytes::from(data.clone()), md5(&data))
        .expect("part");
    assert_eq!(etag, hex(&md5(&data)));
    (
        id,
        CompletedPart {
            part_number: 1,
            etag,
        },
    )
}

#[test]
fn a_merge_five_times_the_idle_timeout_succeeds_while_spaces_stream() {
    let server = Server::start(&[
        "--keepalive-interval",
        "200ms",
        "--faults",
        "CompleteMultipartUpload:slow=10s:1",
    ]);
    let c = quick_client(&server.endpoint, Duration::from_secs(60));
    let (id, p) = one_part(&c, "slow", MIB + 3);
    let started = Instant::now();
    let etag = c
        .complete("slow", &id, &[p], (MIB + 3) as u64)
        .expect("a slow merge that streams spaces succeeds");
    assert!(
        started.elapsed() >= Duration::from_secs(10),
        "merge was held"
    );
    assert!(etag.ends_with("-1"), "the merge's own answer: {etag}");
    assert_eq!(
        server.requests("CompleteMultipartUpload"),
        1,
        "one request, never cut"
    );
    assert_eq!(c.head("slow").unwrap().unwrap().size, (MIB + 3) as u64);
}

#[test]
fn a_merge_that_sends_nothing_fails_within_bounded_time() {
    let server = Server::start(&["--faults", "CompleteMultipartUpload:stall=120s:1"]);
    let c = quick_client(&server.endpoint, Duration::from_secs(4));
    let (id, p) = one_part(&c, "silent", 1000);
    let started = Instant::now();
    let e = c
        .complete("silent", &id, &[p], 1000)
        .expect_err("a silent server fails the Complete");
    let took = started.elapsed();
    // One idle timeout, then the merge wait (the stalled merge holds the lock).
    assert!(
        took >= IDLE && took < Duration::from_secs(20),
        "failed after {took:?}: {e}"
    );
    assert_eq!(e.code(), Some(&ErrorCode::AlreadyLock), "{e}");
    assert!(c.head("silent").unwrap().is_none());
}

#[test]
fn a_stalled_part_upload_fails_on_idle_time() {
    // The server sleeps before reading the body: once the socket buffers are
    // full, no byte moves. 32 MiB is more than loopback buffers hold.
    let server = Server::start(&["--faults", "UploadPart:slow=120s:1"]);
    let mut cfg = ClientConfig::endpoint(&server.endpoint).expect("endpoint");
    cfg.retry.max_attempts = 2;
    cfg.idle_timeout = IDLE;
    let c = CdcsClient::new(cfg, COFFER).expect("client");
    let id = c.initiate("stalled").unwrap();
    let data = random_bytes(32 * MIB, 9);
    let started = Instant::now();
    let e = c
        .upload_part("stalled", &id, 1, Bytes::from(data.clone()), md5(&data))
        .expect_err("a stalled upload fails");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(30), "failed after {took:?}: {e}");
    assert!(
        matches!(&e, StoreError::GaveUp { last, .. } if matches!(**last, StoreError::Transport { .. })),
        "{e}"
    );
    assert!(e.to_string().contains("idle timeout"), "{e}");
}

#[test]
fn a_complete_cut_after_the_commit_resolves_through_head() {
    let server = Server::start(&["--faults", "CompleteMultipartUpload:reset-after:1"]);
    let c = quick_client(&server.endpoint, Duration::from_secs(60));
    let (id, p) = one_part(&c, "cut-after", 5000);
    let etag = c
        .complete("cut-after", &id, &[p], 5000)
        .expect("the object landed: success");
    assert!(server.requests("CompleteMultipartUpload") >= 2, "retried");
    let meta = c.head("cut-after").unwrap().expect("object");
    assert_eq!((meta.size, meta.etag), (5000, etag));
}

#[test]
fn a_complete_cut_mid_merge_waits_for_the_merge_and_succeeds() {
    // The connection drops after 2 s; the merge goes on 2 s more. Retries meet
    // AlreadyLock for longer than the ordinary retry policy tolerates.
    let server = Server::start(&[
        "--keepalive-interval",
        "200ms",
        "--faults",
        "CompleteMultipartUpload:cut=2s:1",
    ]);
    let c = quick_client(&server.endpoint, Duration::from_secs(60));
    let (id, p) = one_part(&c, "cut-mid", 7000);
    let started = Instant::now();
    let etag = c
        .complete("cut-mid", &id, &[p], 7000)
        .expect("the merge landed: success");
    assert!(started.elapsed() >= Duration::from_secs(4), "waited for it");
    assert!(server.requests("CompleteMultipartUpload") >= 3, "retried");
    let meta = c.head("cut-mid").unwrap().expect("object");
    assert_eq!((meta.size, meta.etag), (7000, etag));
}

#[test]
fn a_complete_cut_mid_merge_that_never_lands_is_an_error() {
    let server = Server::start(&[
        "--keepalive-interval",
        "200ms",
        "--faults",
        "CompleteMultipartUpload:cut=1s:1",
    ]);
    let c = quick_client(&server.endpoint, Duration::from_secs(60));
    let (id, p) = one_part(&c, "cut-lost", 3000);
    // The connection drops at 1 s; at 1.5 s, while it still merges (until 2 s)
    // and retries meet AlreadyLock, someone aborts the upload: the merge fails.
    let other = quick_client(&server.endpoint, Duration::from_secs(60));
    let id2 = id.clone();
    let aborter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        other.abort("cut-lost", &id2).map_err(|e| e.to_string())
    });
    let e = c
        .complete("cut-lost", &id, &[p], 3000)
        .expect_err("nothing landed: an error");
    aborter.join().unwrap().expect("abort");
    assert_eq!(e.code(), Some(&ErrorCode::NoSuchUpload), "{e}");
    assert!(c.head("cut-lost").unwrap().is_none());
}

#[test]
fn cli_put_survives_a_merge_longer_than_its_idle_timeout() {
    let server = Server::start(&[
        "--keepalive-interval",
        "200ms",
        "--faults",
        "CompleteMultipartUpload:slow=8s:1",
    ]);
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("three-parts");
    let data = random_bytes(3 * MIB + 11, 5);
    std::fs::write(&file, &data).unwrap();
    let dest = format!("{COFFER}/big");
    let out = cli(
        &[
            "--endpoint",
            &server.endpoint,
            "--idle-timeout",
            "2s",
            "put",
            file.to_str().unwrap(),
            &dest,
            "--part-size",
            "1MiB",
        ],
        &[],
        Duration::from_secs(120),
    );
    assert!(out.ok, "{}{}", out.stdout, out.stderr);
    assert_eq!(server.requests("CompleteMultipartUpload"), 1);
    let c = common::client(&server.endpoint);
    let got = c.get("big", None).unwrap();
    assert!(got.data.as_ref() == data.as_slice(), "same bytes");
}

#[test]
fn close_in_a_mount_succeeds_through_a_merge_longer_than_the_idle_timeout() {
    let server = Server::start(&[
        "--keepalive-interval",
        "200ms",
        "--faults",
        "CompleteMultipartUpload:slow=8s:1",
    ]);
    let m = common::Mount::start(&server, &["--idle-timeout", "2s", "--part-size", "1MiB"]);
    let data = random_bytes(3 * MIB + 1, 8);
    let started = Instant::now();
    std::fs::write(m.path("merged.bin"), &data).expect("close succeeds");
    assert!(
        started.elapsed() >= Duration::from_secs(8),
        "the merge was held"
    );
    assert!(std::fs::read(m.path("merged.bin")).unwrap() == data);
    let c = common::client(&server.endpoint);
    assert_eq!(
        c.head("merged.bin").unwrap().map(|o| o.size),
        Some(data.len() as u64)
    );
    m.unmount();
}
