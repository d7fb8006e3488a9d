//! CdcsClient against a real `cofferfs serve` on 127.0.0.1: typed errors,
//! write-once rules, ranges, paging, slow merges and faults.

mod common;

use bytes::Bytes;
use cofferfs::protocol::{hex, md5, ErrorCode};
use cofferfs::store::{CompletedPart, ListAll, ObjectStore, Range, StoreError};
use common::{client, random_bytes, Server, COFFER};
use std::time::Duration;

const MIB: usize = 1 << 20;

fn part(store: &dyn ObjectStore, key: &str, id: &str, n: u32, data: &[u8]) -> CompletedPart {
    let etag = store
        .upload_part(key, id, n, Bytes::copy_from_slice(data), md5(data))
        .expect("upload part");
    assert_eq!(etag, hex(&md5(data)));
    CompletedPart {
        part_number: n,
        etag,
    }
}

fn code(e: &StoreError) -> ErrorCode {
    e.code()
        .cloned()
        .unwrap_or_else(|| panic!("no service code in {e}"))
}

#[test]
fn every_complete_document_error_reaches_the_client_typed() {
    let server = Server::start(&[]);
    let c = client(&server.endpoint);
    let id = c.initiate("errs").unwrap();
    let small = part(&c, "errs", &id, 1, b"tiny");
    let big = part(&c, "errs", &id, 2, &random_bytes(MIB, 1));
    let third = part(&c, "errs", &id, 3, b"end");

    let e = c
        .complete("errs", &id, &[small.clone(), big.clone()], 0)
        .unwrap_err();
    assert_eq!(code(&e), ErrorCode::EntityTooSmall);
    assert_eq!(e.errno(), libc::EIO);

    let e = c
        .complete("errs", &id, &[big.clone(), small.clone()], 0)
        .unwrap_err();
    assert_eq!(code(&e), ErrorCode::InvalidPartOrder);

    let gap = CompletedPart {
        part_number: 3,
        ..third.clone()
    };
    let e = c
        .complete("errs", &id, &[small.clone(), gap], 0)
        .unwrap_err();
    assert_eq!(code(&e), ErrorCode::InvalidPart);

    let e = c
        .complete("errs", "no-such-upload", &[small], 0)
        .unwrap_err();
    assert_eq!(code(&e), ErrorCode::NoSuchUpload);
    assert_eq!(e.errno(), libc::ENOENT);
    assert!(
        !e.request_id().is_empty(),
        "errors carry the request id: {e}"
    );
    c.abort("errs", &id).unwrap();
}

#[test]
fn the_coffer_is_write_once() {
    let server = Server::start(&[]);
    let c = client(&server.endpoint);
    c.put("once", Bytes::from_static(b"first")).unwrap();
    let e = c.put("once", Bytes::from_static(b"second")).unwrap_err();
    assert_eq!(code(&e), ErrorCode::ObjectAlreadyExists);
    assert_eq!(e.errno(), libc::EEXIST);
    let e = c.initiate("once").unwrap_err();
    assert_eq!(code(&e), ErrorCode::ObjectAlreadyExists);

    let id = c.initiate("busy").unwrap();
    let e = c.initiate("busy").unwrap_err();
    assert_eq!(code(&e), ErrorCode::ObjectAlreadyUploading);
    assert_eq!(e.errno(), libc::EBUSY);
    let e = c.put("busy", Bytes::from_static(b"x")).unwrap_err();
    assert_eq!(code(&e), ErrorCode::ObjectAlreadyUploading);
    c.abort("busy", &id).unwrap();

    let e = c.put("empty", Bytes::new()).unwrap_err();
    assert!(e.to_string().contains("ObjectEmpty"), "{e}");
    assert!(c.head("empty").unwrap().is_none());
    assert_eq!(c.get("once", None).unwrap().data.as_ref(), b"first");
}

#[test]
fn parts_out_of_order_and_uploaded_twice_keep_the_last_bytes() {
    let server = Server::start(&[]);
    let c = client(&server.endpoint);
    let id = c.initiate("ooo").unwrap();
    let p1 = random_bytes(MIB, 11);
    let p2_old = random_bytes(MIB, 12);
    let p2 = random_bytes(MIB, 13);
    let p3 = random_bytes(1000, 14);
    let e3 = part(&c, "ooo", &id, 3, &p3);
    let _ = part(&c, "ooo", &id, 2, &p2_old);
    let e1 = part(&c, "ooo", &id, 1, &p1);
    let e2 = part(&c, "ooo", &id, 2, &p2);
    let listed = c.list_parts("ooo", &id, 0).unwrap();
    assert_eq!(
        listed
            .parts
            .iter()
            .map(|p| p.part_number)
            .collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    let total = (p1.len() + p2.len() + p3.len()) as u64;
    c.complete("ooo", &id, &[e1, e2, e3], total).unwrap();
    let got = c.get("ooo", None).unwrap().data;
    let want = [p1, p2, p3].concat();
    assert_eq!(got.len(), want.len());
    assert!(
        got.as_ref() == want.as_slice(),
        "object holds the last bytes of each part"
    );
}

#[test]
fn a_slow_merge_streaming_spaces_is_parsed() {
    let server = Server::start(&[
        "--keepalive-interval",
        "100ms",
        "--faults",
        "CompleteMultipartUpload:slow=3s:1",
    ]);
    let c = client(&server.endpoint);
    let id = c.initiate("slow").unwrap();
    let data = random_bytes(MIB + 5, 2);
    let p = part(&c, "slow", &id, 1, &data);
    let started = std::time::Instant::now();
    let etag = c.complete("slow", &id, &[p], data.len() as u64).unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "the merge was held"
    );
    assert!(etag.ends_with("-1"), "multipart ETag: {etag}");
    assert_eq!(c.head("slow").unwrap().unwrap().size, data.len() as u64);
}

#[test]
fn an_error_after_the_200_is_an_error() {
    let server = Server::start(&["--keepalive-interval", "100ms"]);
    let c = client(&server.endpoint);
    let id = c.initiate("late").unwrap();
    let data = random_bytes(2000, 3);
    let p = part(&c, "late", &id, 1, &data);
    server.set_faults("CompleteMultipartUpload:after200:1");
    let e = c
        .complete("late", &id, std::slice::from_ref(&p), 2000)
        .unwrap_err();
    assert_eq!(code(&e), ErrorCode::InternalError, "{e}");
    assert!(c.head("late").unwrap().is_none(), "nothing landed");
    server.set_faults("");
    c.complete("late", &id, &[p], 2000).unwrap();
    assert_eq!(c.get("late", None).unwrap().data.as_ref(), data.as_slice());
}

#[test]
fn ranges_of_every_form_and_unsatisfiable_ones() {
    let server = Server::start(&[]);
    let c = client(&server.endpoint);
    let data = random_bytes(1000, 4);
    c.put("r", Bytes::from(data.clone())).unwrap();
    let g = c.get("r", Some(Range::Bounded(10, 19))).unwrap();
    assert_eq!(
        (g.start, g.object_size, g.data.as_ref()),
        (10, 1000, &data[10..20])
    );
    let g = c.get("r", Some(Range::From(990))).unwrap();
    assert_eq!((g.start, g.data.as_ref()), (990, &data[990..]));
    let g = c.get("r", Some(Range::Suffix(5))).unwrap();
    assert_eq!((g.start, g.data.as_ref()), (995, &data[995..]));
    let g = c.get("r", Some(Range::Bounded(998, 5000))).unwrap();
    assert_eq!(g.data.as_ref(), &data[998..]);
    let e = c.get("r", Some(Range::Bounded(1000, 1001))).unwrap_err();
    assert_eq!(code(&e), ErrorCode::InvalidRange);
    let e = c.get("missing", None).unwrap_err();
    assert_eq!(e.errno(), libc::ENOENT);
}

#[test]
fn listing_over_2500_keys_pages_in_order() {
    let server = Server::start(&[]);
    let c = client(&server.endpoint);
    let n = 2_600;
    std::thread::scope(|s| {
        for t in 0..4 {
            let c = c.clone();
            s.spawn(move || {
                for i in (t..n).step_by(4) {
                    c.put(&format!("many/{i:05}"), Bytes::from(format!("{i}")))
                        .unwrap();
                }
            });
        }
    });
    c.put("other", Bytes::from_static(b"x")).unwrap();
    let before = server.requests("GetCoffer");
    let keys: Vec<String> = ListAll::new(&c, "many/").map(|o| o.unwrap().key).collect();
    assert_eq!(server.requests("GetCoffer") - before, 3, "1000 keys a page");
    assert_eq!(keys.len(), n);
    let want: Vec<String> = (0..n).map(|i| format!("many/{i:05}")).collect();
    assert_eq!(keys, want);
}

#[test]
fn truncated_get_bodies_are_retried_and_never_yield_wrong_bytes() {
    let server = Server::start(&["--faults", "GetObject:truncate:0.5", "--fault-seed", "7"]);
    let c = client(&server.endpoint);
    let data = random_bytes(3 * MIB, 5);
    server.set_faults("");
    c.put("t", Bytes::from(data.clone())).unwrap();
    server.set_faults("GetObject:truncate:0.5");
    for i in 0..10u64 {
        let start = i * 300_000;
        let g = c
            .get("t", Some(Range::Bounded(start, start + 299_999)))
            .unwrap();
        assert!(g.data.as_ref() == &data[start as usize..start as usize + 300_000]);
    }
    assert!(
        server.stats()["faults"].as_u64().unwrap_or(0) > 0,
        "faults were injected"
    );
}

#[test]
fn signed_requests_pass_and_bad_credentials_fail_with_auth_failed() {
    let tmp = tempfile::tempdir().unwrap();
    let env = [
        ("TENCENTCLOUD_SECRET_ID", "AKIDtestid"),
        ("TENCENTCLOUD_SECRET_KEY", "test-secret-key"),
    ];
    let server = Server::start_at(&tmp.path().join("root"), &[], &env);
    let mut cfg = cofferfs::client::ClientConfig::endpoint(&server.endpoint).unwrap();
    cfg.credentials = Some(cofferfs::protocol::sign::Credentials {
        secret_id: "AKIDtestid".into(),
        secret_key: "test-secret-key".into(),
        session_token: None,
    });
    let good = cofferfs::client::CdcsClient::new(cfg.clone(), COFFER).unwrap();
    good.put("signed/a b+c", Bytes::from_static(b"ok")).unwrap();
    assert_eq!(good.get("signed/a b+c", None).unwrap().data.as_ref(), b"ok");
    assert_eq!(ListAll::new(&good, "signed/").count(), 1);

    if let Some(c) = cfg.credentials.as_mut() {
        c.secret_key = "wrong-key".into();
    }
    let bad = cofferfs::client::CdcsClient::new(cfg, COFFER).unwrap();
    let e = bad.put("x", Bytes::from_static(b"no")).unwrap_err();
    assert_eq!(code(&e), ErrorCode::AuthFailed);
    assert_eq!(e.errno(), libc::EACCES);
    assert!(
        !e.to_string().contains("wrong-key"),
        "secrets stay out of errors"
    );

    let unsigned = client(&server.endpoint);
    let e = unsigned.head("signed/a b+c").unwrap_err();
    assert_eq!(e.errno(), libc::EACCES, "{e}");
}
