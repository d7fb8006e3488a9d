//! `cofferfs serve` against hostile or broken clients: the test API exists only when
//! asked for (and is signed), slow clients cannot hold connections, and a body cut
//! short is the client's 400, with nothing stored.

mod common;

use bytes::Bytes;
use cofferfs::store::ObjectStore;
use common::{client, Mount, Server, COFFER};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// Status and parsed JSON body of an answer.
fn answer(r: reqwest::blocking::Response) -> (u16, serde_json::Value) {
    let status = r.status().as_u16();
    let text = r.text().unwrap();
    let v =
        serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"));
    (status, v)
}

/// The host:port of `http://host:port`.
fn host_of(endpoint: &str) -> String {
    endpoint.trim_start_matches("http://").to_string()
}

#[test]
fn test_api_is_a_plain_404_without_test_api() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start_raw(&tmp.path().join("root"), &[], &[]);
    let (status, body) = answer(
        http()
            .get(format!("{}/-/stats", server.endpoint))
            .send()
            .unwrap(),
    );
    assert_eq!(status, 404);
    assert_eq!(body["Code"], "CofferNotFound", "{body}");
    assert!(body["RequestId"].as_str().is_some_and(|s| !s.is_empty()));
    let (status, body) = answer(
        http()
            .post(format!("{}/-/faults", server.endpoint))
            .body("HeadObject:503:1,PutObject:503:1")
            .send()
            .unwrap(),
    );
    assert_eq!(status, 404);
    assert_eq!(body["Code"], "CofferNotFound", "{body}");
    // The faults were not switched on: ordinary requests still succeed.
    let c = client(&server.endpoint);
    c.put("after", Bytes::from_static(b"1")).unwrap();
    let r = http()
        .head(format!("{}/{COFFER}/after", server.endpoint))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

#[test]
fn test_api_needs_a_signature_when_the_server_has_credentials() {
    let tmp = tempfile::tempdir().unwrap();
    let env = [
        ("TENCENTCLOUD_SECRET_ID", "AKIDtestapi"),
        ("TENCENTCLOUD_SECRET_KEY", "testapi-secret"),
    ];
    let server = Server::start_at(&tmp.path().join("root"), &[], &env);
    let (status, body) = answer(
        http()
            .get(format!("{}/-/stats", server.endpoint))
            .send()
            .unwrap(),
    );
    assert_eq!((status, body["Code"].as_str()), (401, Some("AuthFailed")));
    let (status, body) = answer(
        http()
            .post(format!("{}/-/faults", server.endpoint))
            .body("GetCoffer:503:1")
            .send()
            .unwrap(),
    );
    assert_eq!((status, body["Code"].as_str()), (401, Some("AuthFailed")));
    // Signed, both work; the unsigned fault spec above was not applied.
    assert_eq!(server.stats()["faults"], 0);
    server.set_faults("HeadObject:503:1");
    let (status, body) = answer(
        server
            .test_api("POST", "faults")
            .body("HeadObject:explode:1")
            .send()
            .unwrap(),
    );
    assert_eq!(
        (status, body["Code"].as_str()),
        (400, Some("InvalidArgument"))
    );
}

/// Ports a process listens on, from its socket inodes and /proc/net/tcp.
fn listening_ports(pid: u32) -> Vec<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().to_string();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap();
    tcp.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address is HEXIP:HEXPORT, st 0A is LISTEN, inode is field 9.
            (f.len() > 9 && f[3] == "0A" && inodes.iter().any(|i| i == f[9]))
                .then(|| u16::from_str_radix(f[1].rsplit(':').next()?, 16).ok())
                .flatten()
        })
        .collect()
}

#[test]
fn a_local_mount_never_exposes_the_test_api() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("coffer");
    let data_s = data.to_str().unwrap().to_string();
    let m = Mount::start_with(&["--local", data_s.as_str(), "local-1250000000"], &[]);
    let ports = listening_ports(m.pid());
    assert_eq!(ports.len(), 1, "the embedded server's port: {ports:?}");
    let base = format!("http://127.0.0.1:{}", ports[0]);
    let (status, body) = answer(http().get(format!("{base}/-/stats")).send().unwrap());
    assert_eq!(
        (status, body["Code"].as_str()),
        (404, Some("CofferNotFound"))
    );
    let (status, _) = answer(
        http()
            .post(format!("{base}/-/faults"))
            .body("GetObject:reset:1")
            .send()
            .unwrap(),
    );
    assert_eq!(status, 404);
    std::fs::write(m.path("still-works"), b"x").unwrap();
    assert_eq!(std::fs::read(m.path("still-works")).unwrap(), b"x");
    // The coffer's bytes on disk are for the server alone.
    use std::os::unix::fs::PermissionsExt;
    for d in [data.clone(), data.join("data"), data.join("parts")] {
        let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", d.display());
    }
    m.unmount();
}

/// Sends a request head promising 1 MiB, 1000 bytes of body, then half-closes and
/// returns the status line and the JSON body of the answer.
fn cut_short(host: &str, path: &str) -> (String, serde_json::Value) {
    let mut s = TcpStream::connect(host).unwrap();
    write!(
        s,
        "PUT {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 1048576\r\n\r\n"
    )
    .unwrap();
    s.write_all(&[7u8; 1000]).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut text = Vec::new();
    s.read_to_end(&mut text).unwrap();
    let text = String::from_utf8_lossy(&text).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.lines().next().unwrap_or("").to_string();
    // The error body may come chunked: the JSON is between the outer braces.
    let json = body
        .find('{')
        .zip(body.rfind('}'))
        .map_or("", |(a, b)| &body[a..=b]);
    let json =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("no JSON body ({e}): {text:?}"));
    (status, json)
}

#[test]
fn a_body_cut_short_is_400_incomplete_body_and_stores_nothing() {
    let server = Server::start(&[]);
    let host = host_of(&server.endpoint);
    let c = client(&server.endpoint);
    let (status, body) = cut_short(&host, &format!("/{COFFER}/cut"));
    assert!(status.starts_with("HTTP/1.1 400"), "{status}");
    assert_eq!(body["Code"], "IncompleteBody", "{body}");
    assert!(c.head("cut").unwrap().is_none(), "a cut PutObject stored");
    // The key is free again: nothing half-stored blocks it.
    c.put("cut", Bytes::from_static(b"whole")).unwrap();

    let id = c.initiate("cut-part").unwrap();
    let (status, body) = cut_short(
        &host,
        &format!("/{COFFER}/cut-part?partNumber=1&uploadId={id}"),
    );
    assert!(status.starts_with("HTTP/1.1 400"), "{status}");
    assert_eq!(body["Code"], "IncompleteBody", "{body}");
    let parts = c.list_parts("cut-part", &id, 0).unwrap();
    assert!(parts.parts.is_empty(), "a cut part was stored: {parts:?}");
}

/// Raises this process's open-file soft limit (a thousand sockets need more than 1024).
fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
    assert!(lim.rlim_cur >= 4096, "open-file hard limit too low");
}

/// `n` connections that each send half a request header and nothing more.
fn half_open(host: &str, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|i| {
            let mut s = TcpStream::connect(host).unwrap_or_else(|e| panic!("connect {i}: {e}"));
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
            s
        })
        .collect()
}

/// Whether the server closed `s` (EOF or reset) before `deadline`.
fn closed_by(mut s: &TcpStream, deadline: Instant) -> bool {
    let mut buf = [0u8; 512];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return true,
            // An answer (e.g. 408) is fine as long as the close follows.
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false
            }
            Err(_) => return true,
        }
    }
}

/// A GET of the coffer that must be answered 200 within `limit`.
fn served_within(server: &Server, limit: Duration) {
    let t = Instant::now();
    let r = reqwest::blocking::Client::builder()
        .timeout(limit)
        .build()
        .unwrap()
        .get(format!("{}/{COFFER}", server.endpoint))
        .send()
        .unwrap_or_else(|e| panic!("a normal client was not served within {limit:?}: {e}"));
    assert_eq!(r.status().as_u16(), 200);
    assert!(t.elapsed() < limit);
}

#[test]
fn a_thousand_half_sent_headers_neither_block_others_nor_stay_open() {
    raise_nofile();
    let server = Server::start(&[]);
    let opened = Instant::now();
    let slow = half_open(&host_of(&server.endpoint), 1000);
    served_within(&server, Duration::from_secs(5));
    // The default --header-timeout is 10 s (and the cap of 512 closes older ones sooner).
    let deadline = opened + Duration::from_secs(20);
    let open = slow.iter().filter(|s| !closed_by(s, deadline)).count();
    assert_eq!(open, 0, "half-open connections the server kept");
    served_within(&server, Duration::from_secs(5));
}

#[test]
fn header_and_idle_timeouts_close_waiting_connections_but_not_slow_requests() {
    let server = Server::start(&["--header-timeout", "1s", "--conn-idle-timeout", "3s"]);
    let host = host_of(&server.endpoint);
    let opened = Instant::now();
    let slow = half_open(&host, 50);
    for s in &slow {
        assert!(closed_by(s, opened + Duration::from_secs(4)));
    }
    // One request answered, then silence: open past the header timeout, closed after
    // the idle timeout.
    let mut idle = TcpStream::connect(&host).unwrap();
    write!(idle, "GET /{COFFER} HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
    let mut buf = [0u8; 4096];
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let n = idle.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    std::thread::sleep(Duration::from_millis(200)); // the rest of the answer, if any
    idle.set_nonblocking(true).unwrap();
    while idle.read(&mut buf).map(|n| n > 0).unwrap_or(false) {}
    idle.set_nonblocking(false).unwrap();
    let answered = Instant::now();
    assert!(
        !closed_by(&idle, answered + Duration::from_millis(1500)),
        "closed by the header timeout while idle"
    );
    assert!(closed_by(&idle, answered + Duration::from_secs(7)));
    // A body trickling in for 4 s (past both timeouts) is a request in progress.
    let mut put = TcpStream::connect(&host).unwrap();
    write!(
        put,
        "PUT /{COFFER}/trickle HTTP/1.1\r\nHost: {host}\r\nContent-Length: 10\r\n\r\n"
    )
    .unwrap();
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(400));
        put.write_all(b"t").unwrap();
    }
    put.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let n = put.read(&mut buf).unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let c = client(&server.endpoint);
    assert_eq!(c.head("trickle").unwrap().map(|m| m.size), Some(10));
}

#[test]
fn at_the_connection_cap_the_longest_waiting_connection_makes_room() {
    let server = Server::start(&["--max-connections", "20", "--header-timeout", "60s"]);
    let host = host_of(&server.endpoint);
    let opened = Instant::now();
    let slow = half_open(&host, 100);
    // Far sooner than the 60 s header timeout: the cap closed the oldest ones.
    served_within(&server, Duration::from_secs(5));
    let closed = slow[..50]
        .iter()
        .filter(|s| closed_by(s, opened + Duration::from_secs(10)))
        .count();
    assert_eq!(closed, 50, "the oldest half-open connections were closed");
}
