//! Test harness shared by the integration tests: starts a real `cofferfs serve`
//! on 127.0.0.1, reads its address, and kills it on every path (Drop).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The coffer every test server creates.
pub const COFFER: &str = "test-1250000000";

/// Path of the binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_cofferfs")
}

/// A running `cofferfs serve`; killed when dropped.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    /// Its `--root`.
    pub root: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl Server {
    /// A server on a fresh temporary root with `COFFER` created.
    pub fn start(extra: &[&str]) -> Server {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("root");
        let mut s = Server::start_at(&root, extra, &[]);
        s._tmp = Some(tmp);
        s
    }

    /// A server on `root` (kept by the caller, e.g. for a restart), with extra
    /// arguments and environment.
    pub fn start_at(root: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(bin());
        cmd.args(["serve", "--root"])
            .arg(root)
            .args(["--listen", "127.0.0.1:0", "--coffer", COFFER])
            .args(extra)
            .env_remove("TENCENTCLOUD_SECRET_ID")
            .env_remove("TENCENTCLOUD_SECRET_KEY")
            .env_remove("TENCENTCLOUD_SESSION_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn cofferfs serve");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(first)) = lines.next() {
                let _ = tx.send(first);
            }
            // Keep draining so the server never blocks on a full pipe.
            for _ in lines {}
        });
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("cofferfs serve did not print its address within 30 s");
            }
        };
        let endpoint = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .trim()
            .to_string();
        Server {
            child,
            endpoint,
            root: root.to_path_buf(),
            _tmp: None,
        }
    }

    /// The server's pid (for /proc and signals).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `GET /-/stats` as JSON.
    pub fn stats(&self) -> serde_json::Value {
        let body = reqwest::blocking::Client::new()
            .get(format!("{}/-/stats", self.endpoint))
            .timeout(Duration::from_secs(10))
            .send()
            .and_then(|r| r.error_for_status())
            .and_then(|r| r.text())
            .expect("stats");
        serde_json::from_str(&body).expect("stats JSON")
    }

    /// Requests counted so far for one operation (e.g. "UploadPart").
    pub fn requests(&self, op: &str) -> u64 {
        self.stats()["requests"][op].as_u64().unwrap_or(0)
    }

    /// Replaces the fault spec at run time (empty clears).
    pub fn set_faults(&self, spec: &str) {
        reqwest::blocking::Client::new()
            .post(format!("{}/-/faults", self.endpoint))
            .body(spec.to_string())
            .timeout(Duration::from_secs(10))
            .send()
            .and_then(|r| r.error_for_status())
            .expect("set faults");
    }

    /// SIGKILL, and wait for it to be gone.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Output of a finished `cofferfs` command.
pub struct CliOutput {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the `cofferfs` binary with a bounded wait (killed after `limit`).
pub fn cli(args: &[&str], env: &[(&str, &str)], limit: Duration) -> CliOutput {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .env_remove("TENCENTCLOUD_SECRET_ID")
        .env_remove("TENCENTCLOUD_SECRET_KEY")
        .env_remove("TENCENTCLOUD_SESSION_TOKEN")
        .env_remove("COFFERFS_ENDPOINT")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn cofferfs");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut s);
        s
    });
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("cofferfs {args:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    CliOutput {
        ok: status.success(),
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    }
}

/// A client of the test coffer with quick retries.
pub fn client(endpoint: &str) -> cofferfs::client::CdcsClient {
    let mut cfg = cofferfs::client::ClientConfig::endpoint(endpoint).expect("endpoint");
    cfg.retry = cofferfs::client::retry::RetryPolicy {
        max_attempts: 12,
        base: Duration::from_millis(10),
        cap: Duration::from_millis(200),
        total: Duration::from_secs(60),
    };
    cfg.idle_timeout = Duration::from_secs(20);
    cofferfs::client::CdcsClient::new(cfg, COFFER).expect("client")
}
