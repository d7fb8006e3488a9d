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
    /// The credentials it was started with (signs the test API requests), if any.
    creds: Option<cofferfs::protocol::sign::Credentials>,
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
    /// arguments and environment; always with `--test-api` (stats, faults).
    pub fn start_at(root: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let mut s = Server::start_raw(root, &[&["--test-api"], extra].concat(), env);
        let var = |k: &str| {
            env.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        };
        if let (Some(secret_id), Some(secret_key)) = (
            var("TENCENTCLOUD_SECRET_ID"),
            var("TENCENTCLOUD_SECRET_KEY"),
        ) {
            s.creds = Some(cofferfs::protocol::sign::Credentials {
                secret_id,
                secret_key,
                session_token: var("TENCENTCLOUD_SESSION_TOKEN"),
            });
        }
        s
    }

    /// A server on `root` with exactly these extra arguments (no `--test-api`).
    pub fn start_raw(root: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
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
            creds: None,
            _tmp: None,
        }
    }

    /// The server's pid (for /proc and signals).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A request to the test API (`/-/NAME`), signed when the server has credentials.
    pub fn test_api(&self, method: &str, name: &str) -> reqwest::blocking::RequestBuilder {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let path = format!("/-/{name}");
        let mut rb = reqwest::blocking::Client::new()
            .request(method.clone(), format!("{}{path}", self.endpoint))
            .timeout(Duration::from_secs(10));
        if let Some(c) = &self.creds {
            // Signed as src/client signs: the host header (host:port) is in the list.
            let host = self
                .endpoint
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .to_string();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_secs() as i64;
            let auth = cofferfs::protocol::sign::authorization(
                &c.secret_id,
                &c.secret_key,
                now - 60,
                now + 3600,
                &cofferfs::protocol::sign::Signable {
                    method: method.as_str(),
                    path: &path,
                    params: &[],
                    headers: &[("host".into(), host)],
                },
            );
            rb = rb.header("authorization", auth);
            if let Some(t) = &c.session_token {
                rb = rb.header(cofferfs::protocol::SECURITY_TOKEN_HEADER, t);
            }
        }
        rb
    }

    /// `GET /-/stats` as JSON.
    pub fn stats(&self) -> serde_json::Value {
        let body = self
            .test_api("GET", "stats")
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
        self.test_api("POST", "faults")
            .body(spec.to_string())
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
        .env_remove("COFFERFS_ENDPOINT");
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_bounded(cmd, limit)
}

/// Runs a shell script (`bash -c`) with a bounded wait.
pub fn sh(script: &str, limit: Duration) -> CliOutput {
    let mut cmd = Command::new("bash");
    cmd.args(["-c", script]);
    run_bounded(cmd, limit)
}

/// Runs `cmd` to completion, collecting its output; kills it after `limit`.
pub fn run_bounded(mut cmd: Command, limit: Duration) -> CliOutput {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let what = format!("{cmd:?}");
    let mut child = cmd.spawn().expect("spawn");
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
            panic!("{what} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    CliOutput {
        ok: status.success(),
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    }
}

/// A `dd` writing `path` from a pipe: the test feeds it and holds the file open
/// until it drops the returned stdin.
pub fn spawn_writer(path: &Path, first: &[u8]) -> (Child, std::process::ChildStdin) {
    use std::io::Write;
    let mut dd = Command::new("dd")
        .arg(format!("of={}", path.display()))
        .args(["bs=64k", "status=none"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("dd");
    let mut stdin = dd.stdin.take().expect("stdin");
    stdin.write_all(first).expect("write");
    stdin.flush().expect("flush");
    assert!(
        wait_for(Duration::from_secs(30), || path.exists()),
        "{} did not appear",
        path.display()
    );
    (dd, stdin)
}

/// Polls `cond` every 50 ms until it holds or `limit` passes.
pub fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether something is mounted at `path` (from /proc/self/mountinfo).
pub fn is_mounted(path: &Path) -> bool {
    cofferfs::mount::is_mounted(path)
}

/// A `cofferfs mount --foreground` of the test coffer on a fresh directory.
/// Dropping it unmounts (`fusermount3 -u -z`) and stops the process, on every path.
pub struct Mount {
    child: Child,
    /// The mountpoint.
    pub dir: PathBuf,
    /// The mount's log (stderr).
    pub log: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Mount {
    /// Mounts the coffer of `server` with extra `cofferfs mount` arguments.
    pub fn start(server: &Server, extra: &[&str]) -> Mount {
        Mount::start_with(&["--endpoint", &server.endpoint, COFFER], extra)
    }

    /// Mounts with `args` (target and coffer) before the mountpoint, `extra` after.
    pub fn start_with(args: &[&str], extra: &[&str]) -> Mount {
        Mount::start_env(args, extra, &[])
    }

    /// As [`Mount::start_with`], with extra environment for the mount process.
    pub fn start_env(args: &[&str], extra: &[&str], env: &[(&str, &str)]) -> Mount {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("mnt");
        std::fs::create_dir(&dir).expect("mkdir mnt");
        let log = tmp.path().join("mount.log");
        let err = std::fs::File::create(&log).expect("log file");
        // Quick failure for tests that inject permanent faults, unless they choose.
        let retries: &[&str] = if extra.contains(&"--retries") {
            &[]
        } else {
            &["--retries", "6"]
        };
        let child = Command::new(bin())
            .arg("mount")
            .args(args)
            .arg(&dir)
            .arg("--foreground")
            .args(retries)
            .args(extra)
            .env_remove("TENCENTCLOUD_SECRET_ID")
            .env_remove("TENCENTCLOUD_SECRET_KEY")
            .env_remove("COFFERFS_ENDPOINT")
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(err))
            .spawn()
            .expect("spawn cofferfs mount");
        let mut m = Mount {
            child,
            dir,
            log,
            _tmp: tmp,
        };
        let live = wait_for(Duration::from_secs(30), || {
            is_mounted(&m.dir) || matches!(m.child.try_wait(), Ok(Some(_)))
        });
        if !live || !is_mounted(&m.dir) {
            panic!("mount did not come up within 30 s; log:\n{}", m.log_text());
        }
        m
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A path inside the mount.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Peak resident memory of the mount process, in KiB.
    pub fn vm_hwm_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// SIGKILL the mount process (the kernel mount stays until Drop detaches it).
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Clean unmount: `fusermount3 -u`, then the process must exit 0 within 60 s.
    pub fn unmount(mut self) {
        self.unmount_now();
    }

    /// `unmount`, then the mount's log, with what it wrote while unmounting.
    pub fn unmount_log(mut self) -> String {
        self.unmount_now();
        self.log_text()
    }

    fn unmount_now(&mut self) {
        let out = run_bounded(
            {
                let mut c = Command::new("fusermount3");
                c.arg("-u").arg(&self.dir);
                c
            },
            Duration::from_secs(30),
        );
        assert!(out.ok, "fusermount3 -u failed: {}", out.stderr);
        let exited = wait_for(Duration::from_secs(60), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        });
        assert!(exited, "mount process still running 60 s after unmount");
        let status = self.child.wait().expect("wait");
        assert!(
            status.success(),
            "mount exited with {status}; log:\n{}",
            self.log_text()
        );
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if is_mounted(&self.dir) {
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg(&self.dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
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

/// Puts a one-byte object at each key, eight at a time.
pub fn put_all(c: &cofferfs::client::CdcsClient, keys: &[String]) {
    use cofferfs::store::ObjectStore;
    std::thread::scope(|s| {
        for t in 0..8 {
            let c = c.clone();
            s.spawn(move || {
                for k in keys.iter().skip(t).step_by(8) {
                    c.put(k, bytes::Bytes::from_static(b"x")).expect("put");
                }
            });
        }
    });
}

/// Shell-quotes a path.
pub fn q(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

/// The bytes the server holds for `key`, read directly (not through the mount).
pub fn stored(server: &Server, key: &str) -> Option<Vec<u8>> {
    use cofferfs::store::ObjectStore;
    let c = client(&server.endpoint);
    c.head(key).expect("head")?;
    Some(c.get(key, None).expect("get").data.to_vec())
}

/// Multipart uploads open on the server.
pub fn open_uploads(server: &Server) -> usize {
    use cofferfs::store::ObjectStore;
    client(&server.endpoint)
        .list_uploads("", "")
        .expect("list uploads")
        .uploads
        .len()
}

/// Runs `script` with `bash -e`, bounded; panics with its output and the
/// mount log when it fails. Its stdout.
pub fn run_in(m: &Mount, what: &str, script: &str) -> String {
    let out = sh(&format!("set -e\n{script}"), Duration::from_secs(300));
    assert!(
        out.ok,
        "{what} failed:\n{}{}\nmount log:\n{}",
        out.stdout,
        out.stderr,
        m.log_text()
    );
    out.stdout
}
