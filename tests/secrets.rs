//! Secrets stay secret: after a signed mount has worked at `RUST_LOG=trace`,
//! neither its log, nor its command line, nor any journal object it wrote holds
//! the secret key or a request signature. Real mount, real `cofferfs serve`.

mod common;

use cofferfs::client::{CdcsClient, ClientConfig};
use cofferfs::protocol::sign::Credentials;
use cofferfs::store::{ListAll, ObjectStore};
use common::{q, sh, Mount, Server, COFFER};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(120);
const ID: &str = "AKIDsecretstest";
const KEY: &str = "Sup3rS3cretK3yValue-never-print";

#[test]
fn the_secret_key_and_signatures_appear_in_no_log_command_line_or_journal_object() {
    let tmp = tempfile::tempdir().expect("tmp");
    let creds = [
        ("TENCENTCLOUD_SECRET_ID", ID),
        ("TENCENTCLOUD_SECRET_KEY", KEY),
    ];
    let server = Server::start_at(&tmp.path().join("root"), &[], &creds);
    let mut env = creds.to_vec();
    env.push(("RUST_LOG", "trace"));
    let m = Mount::start_env(&["--endpoint", &server.endpoint, COFFER], &[], &env);
    let big = tmp.path().join("big");
    std::fs::write(&big, common::random_bytes(3 << 20, 3)).expect("write");
    let out = sh(
        &format!(
            "cd {mnt} && mkdir d && echo hello > d/a && cp {big} d/big && mv d/a d/b && \
             ln -s b d/link && chmod 600 d/b && touch -d 2020-01-01 d/b && ls -lR . && \
             cat d/b d/big > /dev/null && sync",
            mnt = q(&m.dir),
            big = q(&big)
        ),
        LIMIT,
    );
    assert!(out.ok, "{}", out.stderr);
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", m.pid())).expect("cmdline");
    // A second name for the log, so it outlives the mount's own temporary dir.
    let log_path = tmp.path().join("mount.log");
    std::fs::hard_link(&m.log, &log_path).expect("link log");
    m.unmount();
    let log = std::fs::read(&log_path).expect("log");
    assert!(
        String::from_utf8_lossy(&log).contains("TRACE"),
        "the log is at trace level"
    );

    let mut cfg = ClientConfig::endpoint(&server.endpoint).expect("endpoint");
    cfg.credentials = Some(Credentials {
        secret_id: ID.into(),
        secret_key: KEY.into(),
        session_token: None,
    });
    let c = CdcsClient::new(cfg, COFFER).expect("client");
    let journal: Vec<String> = ListAll::new(&c, ".cofferfs/")
        .map(|o| o.expect("list").key)
        .collect();
    assert!(!journal.is_empty(), "the mount wrote journal objects");
    let mut places = vec![
        ("command line".to_string(), cmdline),
        ("mount log".to_string(), log),
    ];
    for key in journal {
        let body = c.get(&key, None).expect("get").data.to_vec();
        places.push((key, body));
    }
    for (what, bytes) in &places {
        let text = String::from_utf8_lossy(bytes);
        for secret in [KEY, "q-signature", "q-sign-time", "q-ak="] {
            assert!(!text.contains(secret), "{what} holds {secret:?}");
        }
    }
}
