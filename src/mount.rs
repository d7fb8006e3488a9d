//! `cofferfs mount`: checks the coffer, mounts `Fs` through FUSE, detaches once the
//! mount is live, and unmounts cleanly on SIGINT/SIGTERM. No filesystem logic here.

use crate::client::retry::RetryPolicy;
use crate::client::CdcsClient;
use crate::commands::CommandError;
use crate::fs::cache::CacheConfig;
use crate::fs::fuse::FuseFs;
use crate::fs::{private_dir, Fs, FsConfig};
use crate::options::{MountOptions, Target};
use crate::protocol::sign::Credentials;
use crate::protocol::ErrorCode;
use crate::server::{ServeConfig, ServerHandle};
use crate::store::{ObjectStore, StoreError};
use crate::transfer::upload::UploadConfig;
use std::io::{BufRead, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// Set in the detached child: its stdout carries one line, `ok` or `error: …`.
const READY_ENV: &str = "COFFERFS_MOUNT_READY_PIPE";

/// Everything a mount is started with.
#[derive(Debug, Clone)]
pub struct MountConfig {
    pub coffer: String,
    pub mountpoint: PathBuf,
    /// Where the coffer is; `target.local`: served from a directory.
    pub target: Target,
    pub foreground: bool,
    pub fs: FsConfig,
    pub allow_other: bool,
    /// FUSE options passed through to the kernel (`noatime`, `allow_root`, …).
    pub fuse_options: Vec<String>,
    pub log_file: Option<PathBuf>,
    pub fuse_threads: usize,
    /// Attempts per request (the first included); `None` keeps the default.
    pub retries: Option<u32>,
    /// At start, abort open uploads initiated longer ago than this (orphans of a
    /// mount that was killed); `None` never does.
    pub abort_uploads_older_than: Option<Duration>,
}

impl MountConfig {
    /// The configuration `cofferfs mount`'s options describe; the one place each
    /// option meets what it sets.
    pub fn from_options(target: Target, m: MountOptions) -> MountConfig {
        let mut fs = FsConfig {
            file_mode: m.file_mode,
            dir_mode: m.dir_mode,
            metadata_ttl: m.metadata_ttl,
            read_only: m.read_only || m.as_of.is_some(),
            as_of: m.as_of,
            allow_delete: !m.no_delete,
            cache_dir: m.cache_dir.unwrap_or_else(private_dir::default_base),
            staging_limit: m.staging_limit,
            cache_dir_size: m.cache_dir_size,
            cache: CacheConfig {
                capacity: m.cache_size,
                read_ahead: m.read_ahead,
                read_concurrency: m.read_concurrency,
                ..CacheConfig::default()
            },
            upload: UploadConfig {
                part_size: m.part_size,
                memory: m.upload_memory,
                concurrency: m.upload_concurrency,
            },
            ..FsConfig::default()
        };
        if let Some(u) = m.uid {
            fs.uid = u;
        }
        if let Some(g) = m.gid {
            fs.gid = g;
        }
        MountConfig {
            coffer: m.coffer,
            mountpoint: m.mountpoint,
            target,
            foreground: m.foreground,
            fs,
            allow_other: m.allow_other,
            fuse_options: m.fuse_options,
            log_file: m.log_file,
            fuse_threads: m.fuse_threads,
            retries: m.retries,
            abort_uploads_older_than: m.abort_uploads_older_than.0,
        }
    }
}

/// Mounts: detached by default (returns once the mount is live), or in the
/// foreground until it is unmounted.
pub fn mount(cfg: MountConfig) -> Result<(), CommandError> {
    if cfg.foreground || std::env::var_os(READY_ENV).is_some() {
        return run_foreground(cfg);
    }
    detach(&cfg)
}

/// Starts this same command again with `--foreground` in a new session and waits
/// for its one-line verdict.
fn detach(cfg: &MountConfig) -> Result<(), CommandError> {
    let exe = std::env::current_exe()
        .map_err(|e| CommandError::Usage(format!("cannot find own executable: {e}")))?;
    let log = match &cfg.log_file {
        Some(p) => p.clone(),
        None => default_log_file(),
    };
    if let Some(dir) = log.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    // Private: a log names the files people work on.
    let log_out = std::fs::OpenOptions::new()
        .create(true)
        .mode(0o600)
        .append(true)
        .open(&log)
        .map_err(|source| CommandError::Io {
            path: log.display().to_string(),
            source,
        })?;
    let mut cmd = Command::new(exe);
    cmd.args(std::env::args_os().skip(1))
        .env(READY_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_out));
    // SAFETY: setsid is one async-signal-safe system call; the child leaves our
    // terminal's session so a Ctrl-C there does not reach the mount.
    unsafe {
        cmd.pre_exec(|| {
            let _ = rustix::process::setsid();
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| CommandError::Usage(format!("cannot start the mount process: {e}")))?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = std::io::BufReader::new(out).read_line(&mut line);
    }
    match line.trim_end() {
        "ok" => Ok(()),
        l if l.starts_with("error: ") => {
            let _ = child.wait();
            Err(CommandError::Usage(l["error: ".len()..].to_string()))
        }
        _ => {
            let status = child.wait();
            Err(CommandError::Usage(format!(
                "the mount process ended before the mount was live ({}); see {}",
                status
                    .map(|s| s.to_string())
                    .unwrap_or_else(|e| e.to_string()),
                log.display()
            )))
        }
    }
}

fn default_log_file() -> PathBuf {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("cofferfs").join("mount.log")
}

/// Tells a waiting parent (if any) how the start went.
fn report_ready(result: &Result<(), CommandError>) {
    if std::env::var_os(READY_ENV).is_none() {
        return;
    }
    let line = match result {
        Ok(()) => "ok".to_string(),
        Err(e) => format!("error: {}", e.to_string().replace('\n', " ")),
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
    drop(out);
    // From now on stdout goes nowhere: the parent has gone.
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        let _ = rustix::stdio::dup2_stdout(&null);
    }
}

fn run_foreground(cfg: MountConfig) -> Result<(), CommandError> {
    // Caught from the start, so none of them can kill the process mid-start; the
    // signal thread below turns the first into an unmount.
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .map_err(|e| CommandError::Usage(format!("cannot catch signals: {e}")))?;
    // Part buffers are megabytes each and freed on other threads. With glibc's
    // sliding mmap threshold they would settle in per-thread arenas, and the
    // freed ones stay resident there: the upload budget would bound the live
    // buffers but not the process. A fixed threshold keeps them in mmap, given
    // back to the kernel when freed.
    // SAFETY: mallopt only sets an allocator parameter.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10) };
    crate::fs::memory::bound_arenas();
    let started = start(&cfg);
    let (session, fs, server) = match started {
        Ok(s) => s,
        Err(e) => {
            report_ready(&Err(CommandError::Usage(e.to_string())));
            return Err(e);
        }
    };
    report_ready(&Ok(()));
    log::info!(
        "mounted coffer {} at {}",
        cfg.coffer,
        cfg.mountpoint.display()
    );
    let mut session = session;
    let mut unmounter = session.unmount_callable();
    let mountpoint = cfg.mountpoint.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let Some(sig) = signals.forever().next() else {
                return;
            };
            log::info!("signal {sig}: unmounting {}", mountpoint.display());
            if let Err(e) = unmounter.unmount() {
                log::warn!("unmount {}: {e}; detaching it lazily", mountpoint.display());
                lazy_unmount(&mountpoint);
            }
        })
        .map_err(|e| CommandError::Usage(format!("cannot start the signal thread: {e}")))?;
    let result = session.run();
    // Open uploads are finished (or aborted) before the process goes.
    fs.shutdown();
    if let Some(s) = server {
        s.shutdown();
        if let Some(dir) = &cfg.target.local {
            LocalNote::remove(dir);
        }
    }
    log::info!("unmounted {}", cfg.mountpoint.display());
    result.map_err(|e| CommandError::Usage(format!("FUSE session ended: {e}")))
}

fn lazy_unmount(path: &Path) {
    if rustix::mount::unmount(path, rustix::mount::UnmountFlags::DETACH).is_ok() {
        return;
    }
    let _ = Command::new("fusermount3")
        .arg("-u")
        .arg("-z")
        .arg(path)
        .status();
}

type Started = (fuser::Session<FuseFs>, Arc<Fs>, Option<ServerHandle>);

/// Everything up to a live mount: checks, the embedded server, the coffer probe.
fn start(cfg: &MountConfig) -> Result<Started, CommandError> {
    check_mountpoint(&cfg.mountpoint)?;
    if let Some(t) = cfg.fs.as_of {
        let when = crate::history::format_micros(t);
        if t > crate::protocol::time::now_micros() {
            return Err(CommandError::Usage(format!(
                "--as-of {when} is in the future"
            )));
        }
        log::info!("showing the coffer as of {when}, read-only");
    }
    let (client_cfg, server) = match &cfg.target.local {
        Some(dir) => {
            if cfg.target.endpoint.is_some() || cfg.target.region.is_some() {
                return Err(CommandError::Usage(
                    "--local serves the coffer itself: drop --endpoint/--region".into(),
                ));
            }
            local_client(dir, &cfg.coffer, true)?
        }
        None => (cfg.target.client_config()?, None),
    };
    let mut client_cfg = client_cfg;
    if let Some(n) = cfg.retries {
        client_cfg.retry.max_attempts = n.max(1);
    }
    // The probe gives up quickly: a wrong endpoint should not take minutes to say so.
    let mut probe_cfg = client_cfg.clone();
    probe_cfg.retry = RetryPolicy {
        max_attempts: 3,
        base: Duration::from_millis(200),
        cap: Duration::from_secs(1),
        total: Duration::from_secs(10),
    };
    // One private directory per coffer under the (private) cache directory.
    let mut fs_cfg = cfg.fs.clone();
    fs_cfg.cache_dir = cfg.fs.cache_dir.join(&cfg.coffer);
    for dir in [&cfg.fs.cache_dir, &fs_cfg.cache_dir] {
        private_dir::ensure(dir)
            .map_err(|e| CommandError::Usage(format!("cache directory {e}")))?;
    }
    let probe = CdcsClient::new(probe_cfg, &cfg.coffer)?;
    check_coffer(&probe, &cfg.coffer)?;
    let store: Arc<dyn ObjectStore> = Arc::new(CdcsClient::new(client_cfg, &cfg.coffer)?);
    // A mount as of a past time changes nothing in the coffer.
    if let (Some(age), None) = (cfg.abort_uploads_older_than, cfg.fs.as_of) {
        abort_orphans(store.as_ref(), age);
    }
    let fs = Fs::new(store, fs_cfg).map_err(|e| {
        CommandError::Usage(format!(
            "reading the coffer's metadata journal: {}",
            e.message
        ))
    })?;
    let mut options = vec![
        fuser::MountOption::FSName(format!("cofferfs:{}", cfg.coffer)),
        fuser::MountOption::Subtype("cofferfs".into()),
        fuser::MountOption::DefaultPermissions,
    ];
    if fs.read_only() {
        options.push(fuser::MountOption::RO);
    }
    options.extend(cfg.fuse_options.iter().filter_map(|o| fuse_option(o)));
    let mut fuse_cfg = fuser::Config::default();
    fuse_cfg.mount_options = options;
    fuse_cfg.acl = if cfg.allow_other {
        fuser::SessionACL::All
    } else if cfg.fuse_options.iter().any(|o| o == "allow_root") {
        fuser::SessionACL::RootAndOwner
    } else {
        fuser::SessionACL::Owner
    };
    fuse_cfg.n_threads = Some(cfg.fuse_threads.max(1));
    fuse_cfg.clone_fd = true;
    let fuse = FuseFs::new(Arc::clone(&fs));
    let kernel = fuse.kernel();
    let session = fuser::Session::new(fuse, &cfg.mountpoint, &fuse_cfg).map_err(|e| {
        CommandError::Usage(format!("cannot mount at {}: {e}", cfg.mountpoint.display()))
    })?;
    // Set once, here: nothing else can have set it.
    let _ = kernel.set(session.notifier());
    Ok((session, fs, server))
}

/// A passed-through `-o` option as fuser spells it: flags are mount flags, not
/// FUSE data options, and access options become the session's ACL.
fn fuse_option(o: &str) -> Option<fuser::MountOption> {
    use fuser::MountOption as M;
    Some(match o {
        "noatime" => M::NoAtime,
        "atime" => M::Atime,
        "nodev" => M::NoDev,
        "nosuid" => M::NoSuid,
        "noexec" => M::NoExec,
        "sync" => M::Sync,
        "async" => M::Async,
        "dirsync" => M::DirSync,
        "allow_root" | "default_permissions" => return None,
        _ => match o.split_once('=') {
            Some(("fsname", v)) => M::FSName(v.to_string()),
            Some(("subtype", v)) => M::Subtype(v.to_string()),
            _ => M::CUSTOM(o.to_string()),
        },
    })
}

/// A client of the coffer kept in `dir` (`--local`): through the server of
/// the mount that serves `dir`, else through an embedded one, returned to be
/// kept running (a directory's database admits one server). A mount's
/// server (`for_mount`) is noted in `dir` for other mounts; a command's,
/// which ends with it, is not.
pub fn local_client(
    dir: &Path,
    coffer: &str,
    for_mount: bool,
) -> Result<(crate::client::ClientConfig, Option<ServerHandle>), CommandError> {
    let creds = local_credentials();
    let started = crate::server::start(ServeConfig {
        root: dir.to_path_buf(),
        listen: ([127, 0, 0, 1], 0).into(),
        coffers: vec![coffer.to_string()],
        keepalive_interval: Duration::from_secs(1),
        faults: String::new(),
        fault_seed: 0,
        credentials: Some(creds.clone()),
        lifecycle_day: Duration::from_secs(86400),
        test_api: false,
        limits: crate::server::ConnLimits::default(),
    });
    match started {
        Ok(server) => {
            let endpoint = format!("http://{}", server.addr());
            if for_mount {
                LocalNote::write(dir, &endpoint, &creds);
            }
            let mut c = crate::client::ClientConfig::endpoint(&endpoint)?;
            c.credentials = Some(creds);
            Ok((c, Some(server)))
        }
        // Another mount serves this directory (an as-of mount beside
        // the live one): use its server while it runs.
        Err(e) => match LocalNote::read(dir) {
            Some(note) => {
                log::info!(
                    "--local {}: served by another mount at {}; using its server",
                    dir.display(),
                    note.endpoint
                );
                let mut c = crate::client::ClientConfig::endpoint(&note.endpoint)?;
                c.credentials = Some(Credentials {
                    secret_id: note.secret_id,
                    secret_key: note.secret_key,
                    session_token: None,
                });
                Ok((c, None))
            }
            None => Err(CommandError::Usage(format!(
                "--local {}: {e}",
                dir.display()
            ))),
        },
    }
}

/// How other mounts of a `--local` directory reach the mount that serves it
/// (its database admits one server): a file in the directory, private like
/// it (0600 in 0700), there while the server runs.
#[derive(serde::Serialize, serde::Deserialize)]
struct LocalNote {
    endpoint: String,
    secret_id: String,
    secret_key: String,
}

impl LocalNote {
    const FILE: &'static str = "serving.json";

    fn write(dir: &Path, endpoint: &str, creds: &Credentials) {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let note = LocalNote {
            endpoint: endpoint.to_string(),
            secret_id: creds.secret_id.clone(),
            secret_key: creds.secret_key.clone(),
        };
        let written = serde_json::to_vec(&note)
            .map_err(std::io::Error::other)
            .and_then(|b| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(dir.join(Self::FILE))?
                    .write_all(&b)
            });
        if let Err(e) = written {
            // Only other mounts of this directory need it.
            log::warn!(
                "--local {}: cannot note the server for other mounts: {e}",
                dir.display()
            );
        }
    }

    fn read(dir: &Path) -> Option<LocalNote> {
        let b = std::fs::read(dir.join(Self::FILE)).ok()?;
        serde_json::from_slice(&b).ok()
    }

    fn remove(dir: &Path) {
        let _ = std::fs::remove_file(dir.join(Self::FILE));
    }
}

fn local_credentials() -> Credentials {
    use rand::Rng;
    let mut rng = rand::rng();
    let mut token = |n: usize| -> String {
        (0..n)
            .map(|_| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[rng.random_range(0..36)]))
            .collect()
    };
    Credentials {
        secret_id: format!("AKIDlocal{}", token(24)),
        secret_key: token(32),
        session_token: None,
    }
}

fn check_mountpoint(path: &Path) -> Result<(), CommandError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| CommandError::Usage(format!("mountpoint {}: {e}", path.display())))?;
    if !meta.is_dir() {
        return Err(CommandError::Usage(format!(
            "mountpoint {}: not a directory",
            path.display()
        )));
    }
    let canon = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    if is_mounted(&canon) {
        return Err(CommandError::Usage(format!(
            "mountpoint {} is busy: something is already mounted there",
            path.display()
        )));
    }
    Ok(())
}

/// Whether `path` is a mount point, from /proc/self/mountinfo.
pub fn is_mounted(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| unescape_mountinfo(m) == want)
}

/// mountinfo writes space, tab, newline and backslash as octal escapes.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Aborts uploads older than `age`: orphans of a mount killed mid-write, which
/// would block their key for good. Logs each; failures are warnings only.
fn abort_orphans(store: &dyn ObjectStore, age: Duration) {
    let result = crate::commands::abort_uploads(store, "", Some(age), &mut |u, outcome| {
        let old = u
            .initiated
            .and_then(|t| std::time::SystemTime::now().duration_since(t).ok())
            .map(|d| humantime::format_duration(Duration::from_secs(d.as_secs())).to_string())
            .unwrap_or_else(|| "?".into());
        match outcome {
            // At warn: the default filter shows it, since the parts are gone.
            Ok(()) => log::warn!(
                "aborted orphan upload {} of {:?} (started {old} ago)",
                u.upload_id,
                u.key
            ),
            Err(e) => log::warn!(
                "cannot abort orphan upload {} of {:?} (started {old} ago): {e}",
                u.upload_id,
                u.key
            ),
        }
    });
    if let Err(e) = result {
        log::warn!("cannot list open uploads to abort orphans: {e}");
    }
}

/// One listing request: the coffer exists, the credentials work, the endpoint answers.
fn check_coffer(client: &CdcsClient, coffer: &str) -> Result<(), CommandError> {
    match client.list("", "", 1) {
        Ok(_) => Ok(()),
        Err(e) => {
            let what = match e.code() {
                Some(ErrorCode::CofferNotFound | ErrorCode::NoSuchCoffer) => {
                    format!("coffer {coffer} not found")
                }
                Some(
                    ErrorCode::AuthFailed
                    | ErrorCode::ConsoleAuthFailed
                    | ErrorCode::PolicyCheckFailed,
                ) => "authentication failed: check the secret id and key".to_string(),
                _ if matches!(root_cause(&e), StoreError::Transport { .. }) => {
                    "endpoint unreachable".to_string()
                }
                _ => "the coffer cannot be listed".to_string(),
            };
            Err(CommandError::Usage(format!("{what} ({e})")))
        }
    }
}

fn root_cause(e: &StoreError) -> &StoreError {
    match e {
        StoreError::GaveUp { last, .. } => root_cause(last),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mountinfo(r"/mnt/a\040b"), "/mnt/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }
}
