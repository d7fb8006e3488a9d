//! `cofferfs serve` itself, over raw HTTP: strictness the client never exercises
//! (raw keys, forged signatures), crash safety, lifecycle expiry, test endpoints.

mod common;

use bytes::Bytes;
use cofferfs::protocol::sign::{self, Signable};
use cofferfs::store::ObjectStore;
use common::{client, random_bytes, Server, COFFER};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

fn code_of(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body.trim()).unwrap()["Code"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

#[test]
fn keys_over_850_bytes_are_refused_by_the_server_itself() {
    let server = Server::start(&[]);
    let put = |key: &str| {
        let r = http()
            .put(format!("{}/{COFFER}/{key}", server.endpoint))
            .body("x")
            .send()
            .unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };
    let (status, body) = put(&"k".repeat(851));
    assert_eq!((status, code_of(&body).as_str()), (400, "InvalidObjectKey"));
    let (status, _) = put(&"k".repeat(850));
    assert_eq!(status, 200);
    let (status, body) = put("%0Acontrol");
    assert_eq!((status, code_of(&body).as_str()), (400, "InvalidObjectKey"));
    let r = http()
        .put(format!("{}/{COFFER}/empty", server.endpoint))
        .body(Vec::new())
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(code_of(&r.text().unwrap()), "ObjectEmpty");
}

#[test]
fn head_of_a_missing_object_is_404_without_a_body_and_there_is_no_delete() {
    let server = Server::start(&[]);
    let r = http()
        .head(format!("{}/{COFFER}/missing", server.endpoint))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    assert!(r.headers().contains_key("x-cdcs-request-id"));
    assert!(r.bytes().unwrap().is_empty());
    let r = http()
        .delete(format!("{}/{COFFER}/missing", server.endpoint))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    let r = http()
        .get(format!("{}/nosuch-1/x", server.endpoint))
        .send()
        .unwrap();
    assert_eq!(code_of(&r.text().unwrap()), "CofferNotFound");
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[test]
fn forged_expired_and_tampered_signatures_are_auth_failed() {
    let tmp = tempfile::tempdir().unwrap();
    let env = [
        ("TENCENTCLOUD_SECRET_ID", "AKIDserve"),
        ("TENCENTCLOUD_SECRET_KEY", "serve-secret"),
    ];
    let server = Server::start_at(&tmp.path().join("root"), &[], &env);
    let host = server.endpoint.trim_start_matches("http://").to_string();
    let signed_get = |secret: &str, signed_path: &str, sent_path: &str, start: i64, end: i64| {
        let headers = vec![("host".to_string(), host.clone())];
        let auth = sign::authorization(
            "AKIDserve",
            secret,
            start,
            end,
            &Signable {
                method: "GET",
                path: signed_path,
                params: &[],
                headers: &headers,
            },
        );
        let r = http()
            .get(format!("{}{sent_path}", server.endpoint))
            .header("authorization", auth)
            .send()
            .unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };
    let path = format!("/{COFFER}");
    let t = now();
    let (status, _) = signed_get("serve-secret", &path, &path, t - 10, t + 600);
    assert_eq!(status, 200, "a good signature lists the coffer");
    let (status, body) = signed_get("wrong-secret", &path, &path, t - 10, t + 600);
    assert_eq!((status, code_of(&body).as_str()), (401, "AuthFailed"));
    let (status, body) = signed_get("serve-secret", &path, &path, t - 7200, t - 3600);
    assert_eq!(
        (status, code_of(&body).as_str()),
        (401, "AuthFailed"),
        "expired"
    );
    let (status, body) = signed_get("serve-secret", &path, "/other-1", t - 10, t + 600);
    assert_eq!(
        (status, code_of(&body).as_str()),
        (401, "AuthFailed"),
        "tampered path"
    );
    let r = http()
        .get(format!("{}{path}", server.endpoint))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401, "unsigned");
}

/// Files directly in `root/dir`.
fn files_in(root: &std::path::Path, dir: &str) -> usize {
    std::fs::read_dir(root.join(dir)).unwrap().count()
}

#[test]
fn kill_during_a_complete_leaves_no_object_or_the_whole_one() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let data = random_bytes(3 << 20, 77);
    let mut earlier = None;
    for attempt in 0..3u64 {
        let mut server = Server::start_at(
            &root,
            &[
                "--keepalive-interval",
                "50ms",
                "--faults",
                "CompleteMultipartUpload:slow=2s:1",
            ],
            &[],
        );
        let c = client(&server.endpoint);
        if earlier.is_none() {
            c.put("acknowledged", Bytes::from_static(b"kept")).unwrap();
            earlier = Some(());
        }
        let key = format!("complete{attempt}");
        let id = c.initiate(&key).unwrap();
        let mut parts = Vec::new();
        for (i, chunk) in data.chunks(1 << 20).enumerate() {
            let n = i as u32 + 1;
            let md5 = cofferfs::protocol::md5(chunk);
            let etag = c
                .upload_part(&key, &id, n, Bytes::copy_from_slice(chunk), md5)
                .unwrap();
            parts.push(cofferfs::store::CompletedPart {
                part_number: n,
                etag,
            });
        }
        // A part the Complete leaves out: its file must not outlive the upload.
        let extra = cofferfs::protocol::md5(b"extra");
        c.upload_part(&key, &id, 4, Bytes::from_static(b"extra"), extra)
            .unwrap();
        let endpoint = server.endpoint.clone();
        let (k2, id2, parts2) = (key.clone(), id.clone(), parts.clone());
        let completer = std::thread::spawn(move || {
            let c = client(&endpoint);
            let _ = c.complete(&k2, &id2, &parts2, 3 << 20);
        });
        // The Complete holds 2 s before its commit: kill before, around, after it.
        std::thread::sleep(Duration::from_millis(500 + attempt * 900));
        server.kill9();
        let _ = completer.join();

        let server = Server::start_at(&root, &[], &[]);
        let c = client(&server.endpoint);
        match c.head(&key).unwrap() {
            None => {
                // The upload survived whole (the restart's sweep kept its parts).
                c.complete(&key, &id, &parts, 3 << 20).unwrap();
            }
            Some(meta) => assert_eq!(meta.size, data.len() as u64, "never a torn object"),
        }
        assert!(c.get(&key, None).unwrap().data.as_ref() == data.as_slice());
        assert_eq!(c.get("acknowledged", None).unwrap().data.as_ref(), b"kept");
        drop(server);
        // Restart once more: nothing leaked, nothing live swept.
        let server = Server::start_at(&root, &[], &[]);
        let c = client(&server.endpoint);
        assert_eq!(files_in(&root, "parts"), 3 * (attempt as usize + 1));
        // The one PutObject is small: its bytes are in the database, not in data/.
        assert_eq!(files_in(&root, "data"), 0);
        assert_eq!(files_in(&root, "tmp"), 0);
        assert!(c.get(&key, None).unwrap().data.as_ref() == data.as_slice());
    }
}

#[test]
fn acknowledged_small_puts_survive_kills_of_the_server() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let body = |i: usize| format!("small object {i}").repeat(i % 300 + 1);
    let mut next = 0;
    // Three rounds, each killed at once after its last answer: the puts'
    // database commits are not synced, only the small-put log is.
    for round in 0..3 {
        let mut server = Server::start_at(&root, &[], &[]);
        let c = client(&server.endpoint);
        for i in 0..next {
            let got = c.get(&format!("k{i}"), None).unwrap();
            assert_eq!(
                got.data.as_ref(),
                body(i).as_bytes(),
                "k{i} after round {round}"
            );
        }
        for _ in 0..700 {
            c.put(&format!("k{next}"), Bytes::from(body(next))).unwrap();
            next += 1;
        }
        server.kill9();
    }
    let server = Server::start_at(&root, &[], &[]);
    let c = client(&server.endpoint);
    for i in 0..next {
        assert_eq!(
            c.get(&format!("k{i}"), None).unwrap().data.as_ref(),
            body(i).as_bytes()
        );
    }
    let page = c.list("", "", 1000).unwrap();
    assert_eq!(page.objects.len(), 1000.min(next));
    assert!(
        c.put("k0", Bytes::from_static(b"again")).is_err(),
        "still write-once"
    );
}

#[test]
fn ranges_of_a_multipart_object_cross_its_parts() {
    let server = Server::start(&[]);
    let c = client(&server.endpoint);
    let sizes = [(1 << 20) + 3, (1 << 20) + 5, 7];
    let data = random_bytes(sizes.iter().sum(), 5);
    let id = c.initiate("mp").unwrap();
    let mut parts = Vec::new();
    let mut at = 0;
    for (i, size) in sizes.iter().enumerate() {
        let chunk = &data[at..at + size];
        at += size;
        let n = i as u32 + 1;
        let etag = c
            .upload_part(
                "mp",
                &id,
                n,
                Bytes::copy_from_slice(chunk),
                cofferfs::protocol::md5(chunk),
            )
            .unwrap();
        parts.push(cofferfs::store::CompletedPart {
            part_number: n,
            etag,
        });
    }
    c.complete("mp", &id, &parts, data.len() as u64).unwrap();
    use cofferfs::store::Range;
    let len = data.len() as u64;
    let p1 = sizes[0] as u64;
    let p2 = p1 + sizes[1] as u64;
    for (range, want) in [
        (None, &data[..]),
        (Some(Range::Bounded(0, 0)), &data[..1]),
        (
            Some(Range::Bounded(p1 - 2, p1 + 2)),
            &data[p1 as usize - 2..p1 as usize + 3],
        ),
        (
            Some(Range::Bounded(p1, p2 - 1)),
            &data[p1 as usize..p2 as usize],
        ),
        (Some(Range::Bounded(10, len + 100)), &data[10..]),
        (Some(Range::From(p2 - 1)), &data[p2 as usize - 1..]),
        (Some(Range::Suffix(9)), &data[data.len() - 9..]),
    ] {
        let got = c.get("mp", range).unwrap();
        assert!(got.data.as_ref() == want, "range {range:?}");
    }
}

#[test]
fn lifecycle_expiry_removes_old_objects() {
    let server = Server::start(&["--lifecycle-day", "1s"]);
    let c = client(&server.endpoint);
    c.put("old", Bytes::from_static(b"bye")).unwrap();
    let body = br#"{"Rule":[{"Expiration":{"Days":1}}]}"#;
    let md5 = cofferfs::protocol::content_md5(&cofferfs::protocol::md5(body));
    let r = http()
        .put(format!("{}/{COFFER}?lifecycle", server.endpoint))
        .header("content-md5", md5)
        .body(body.to_vec())
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while c.head("old").unwrap().is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "object did not expire"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let r = http()
        .put(format!("{}/{COFFER}?lifecycle", server.endpoint))
        .body(body.to_vec())
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 400, "Content-MD5 is required");
}

#[test]
fn stats_count_requests_and_faults_switch_at_run_time() {
    let server = Server::start(&[]);
    let c = client(&server.endpoint);
    c.put("s", Bytes::from_static(b"1")).unwrap();
    let _ = c.head("s").unwrap();
    assert_eq!(server.requests("PutObject"), 1);
    assert_eq!(server.requests("HeadObject"), 1);
    server.set_faults("HeadObject:503:1");
    let r = http()
        .head(format!("{}/{COFFER}/s", server.endpoint))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    server.set_faults("");
    let r = http()
        .head(format!("{}/{COFFER}/s", server.endpoint))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = http()
        .post(format!("{}/-/faults", server.endpoint))
        .body("HeadObject:explode:1")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 400, "a bad spec is refused");
}

#[test]
fn an_early_refusal_reaches_a_client_still_sending_its_body() {
    use std::io::{Read, Write};
    let server = Server::start(&["--faults", "PutObject:503:1"]);
    let host = server.endpoint.trim_start_matches("http://").to_string();
    let mut s = std::net::TcpStream::connect(&host).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let len = 8 << 20;
    write!(
        s,
        "PUT /{COFFER}/early HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len}\r\n\r\n"
    )
    .unwrap();
    // The body follows slowly, well after the server has decided to refuse.
    let chunk = vec![7u8; 1 << 20];
    for _ in 0..8 {
        std::thread::sleep(Duration::from_millis(50));
        s.write_all(&chunk)
            .expect("the server took the body instead of resetting the connection");
    }
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&answer).contains("}") {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) => panic!("reading the answer: {e}"),
        }
    }
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("ServiceUnavailable"), "{text}");
}
