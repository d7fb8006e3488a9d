//! Every option of where the coffer is and how it is mounted, defined once: the
//! clap structs `main.rs` parses, the parsers of their values (each with its
//! range), and the fstab form `-o a=b,c`, which is rewritten into the same flags
//! before parsing. Knows nothing of what the options do.

use crate::commands::parse_size;
use clap::Args;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

/// Where the service is: an endpoint URL or a region, and how to reach it.
#[derive(Args, Debug, Clone, Default)]
pub struct Target {
    /// Service URL for every operation (e.g. http://127.0.0.1:9000 for `cofferfs serve`).
    #[arg(
        long,
        global = true,
        env = "COFFERFS_ENDPOINT",
        conflicts_with = "region"
    )]
    pub endpoint: Option<String>,
    /// Region of the real service (e.g. ap-tianjin).
    #[arg(long, global = true, env = "COFFERFS_REGION")]
    pub region: Option<String>,
    /// File with secret_id/secret_key (mode 600); default: TENCENTCLOUD_SECRET_ID/_KEY.
    #[arg(long = "credentials", global = true, value_name = "FILE")]
    pub credentials_file: Option<PathBuf>,
    /// The coffer kept in DIR, no account needed: served by the mount that
    /// serves DIR, else by an embedded `cofferfs serve` for as long as needed.
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        conflicts_with_all = ["endpoint", "region"]
    )]
    pub local: Option<PathBuf>,
    /// A request fails after this long without a byte moving either way [default: 60s].
    /// Never a limit on a whole request: a merge may take minutes.
    #[arg(long, global = true, value_name = "DUR", value_parser = parse_idle_timeout)]
    pub idle_timeout: Option<Duration>,
}

/// A parsed `--abort-uploads-older-than` (`None`: never); a newtype so clap does
/// not read the `Option` as "the flag may be absent".
#[derive(Debug, Clone, Copy)]
pub struct Age(pub Option<Duration>);

/// `cofferfs mount`'s arguments; `-o` items arrive here as the flags they name.
#[derive(Args, Debug, Clone)]
pub struct MountOptions {
    /// The coffer (NAME-APPID).
    pub coffer: String,
    /// An existing, empty directory.
    pub mountpoint: PathBuf,
    /// Stay attached; SIGINT/SIGTERM unmount.
    #[arg(short, long)]
    pub foreground: bool,
    /// Preferred part size (grows for very large files).
    #[arg(long, default_value = "8MiB", value_parser = parse_part_size)]
    pub part_size: u64,
    /// Bytes of part buffers held at once across all open files; writers wait beyond it.
    #[arg(long, default_value = "64MiB", value_parser = parse_size)]
    pub upload_memory: u64,
    /// Parts uploading at once.
    #[arg(long, default_value_t = 8, value_parser = parse_count)]
    pub upload_concurrency: usize,
    /// Mount read-only.
    #[arg(long, alias = "ro")]
    pub read_only: bool,
    /// Show the coffer as it stood at TIME, read-only: RFC 3339
    /// (2026-11-29T10:00:00Z) or an age (90m, 2d).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub as_of: Option<u64>,
    /// rm of a file that holds coffer bytes fails with EPERM, instead of hiding
    /// the path (the default; the bytes stay in the coffer either way). Empty
    /// files, symlinks and empty directories can always be removed.
    #[arg(long)]
    pub no_delete: bool,
    /// Accepted for one release: hiding is now the default.
    #[arg(long, hide = true, conflicts_with = "no_delete")]
    pub allow_delete: bool,
    /// Private directory (0700, yours) for staging files of appends and edits
    /// (cleaned up at unmount) and, with --cache-dir-size, file blocks kept
    /// across mounts; one subdirectory per coffer [default: $XDG_CACHE_HOME/cofferfs,
    /// else ~/.cache/cofferfs].
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Bytes of staging files at once; beyond it writes fail with ENOSPC.
    #[arg(long, default_value = "16GiB", value_parser = parse_size)]
    pub staging_limit: u64,
    /// Bytes of file blocks kept on disk in --cache-dir across mounts (0: none).
    #[arg(long, default_value = "0", value_parser = parse_size)]
    pub cache_dir_size: u64,
    /// Bytes of file blocks cached in memory (LRU, shared by all open files).
    #[arg(long, default_value = "256MiB", value_parser = parse_size)]
    pub cache_size: u64,
    /// Largest read-ahead window of a sequential reader.
    #[arg(long, default_value = "64MiB", value_parser = parse_size)]
    pub read_ahead: u64,
    /// Ranged GETs of read-ahead in flight at once.
    #[arg(long, default_value_t = 8, value_parser = parse_count)]
    pub read_concurrency: usize,
    /// Let other users use the mount (needs user_allow_other in /etc/fuse.conf unless root).
    #[arg(long)]
    pub allow_other: bool,
    /// Owner shown for entries with no recorded owner: objects from other tools, and
    /// what the mounting user creates (default: the mounting user). With
    /// --allow-other, other users' new entries are theirs.
    #[arg(long, value_parser = parse_id)]
    pub uid: Option<u32>,
    #[arg(long, value_parser = parse_id)]
    pub gid: Option<u32>,
    /// Permission bits of files, in octal.
    #[arg(long, default_value = "644", value_parser = parse_mode)]
    pub file_mode: u16,
    /// Permission bits of directories, in octal.
    #[arg(long, default_value = "755", value_parser = parse_mode)]
    pub dir_mode: u16,
    /// How long listings and lookups are trusted before asking the coffer again.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub metadata_ttl: Duration,
    /// Log here instead of stderr (detached mounts default to ~/.local/state/cofferfs/mount.log).
    #[arg(long)]
    pub log_file: Option<PathBuf>,
    /// Threads serving FUSE requests.
    #[arg(long, default_value_t = 8, value_parser = parse_count)]
    pub fuse_threads: usize,
    /// Attempts per request before an operation fails (the first included).
    #[arg(long, value_parser = parse_retries)]
    pub retries: Option<u32>,
    /// At start, abort open multipart uploads started longer ago than this
    /// (orphans of a killed mount, which block their path); 0: never.
    #[arg(long, value_name = "DUR", default_value = "1d", value_parser = parse_age)]
    pub abort_uploads_older_than: Age,
    /// Options in fstab form, each the name of a flag: endpoint=URL,part_size=16MiB,
    /// ro,allow_other,noatime,...
    #[arg(short = 'o', value_name = "OPT,...")]
    pub options: Vec<String>,
    /// A FUSE option handed to the kernel as it is (from -o: noatime, fsname=…).
    #[arg(long = "fuse-option", hide = true, value_name = "OPT")]
    pub fuse_options: Vec<String>,
}

/// Options that mount(8) and fstab add and that mean nothing here.
const IGNORED: &[&str] = &[
    "rw", "defaults", "auto", "noauto", "user", "users", "nouser", "owner", "_netdev", "nofail",
    "dev", "suid", "exec",
];

/// FUSE options handed to the kernel as they are.
pub const PASSED: &[&str] = &[
    "allow_root",
    "noatime",
    "atime",
    "nodev",
    "nosuid",
    "noexec",
    "sync",
    "async",
    "dirsync",
    "default_permissions",
];

/// Rewrites every `-o a=b,c` (or `-oa=b,c`) in `args` into the flags it names
/// (`--a=b --c`), so one clap definition parses both forms. Options fstab adds
/// are dropped; FUSE options become `--fuse-option`.
pub fn expand_fstab_options(args: Vec<OsString>) -> Vec<OsString> {
    let mut out = Vec::with_capacity(args.len());
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let items = match a.to_str() {
            Some("-o") => match it.next() {
                Some(v) => v,
                None => {
                    out.push(a);
                    continue;
                }
            },
            Some(s) if s.starts_with("-o") && s.len() > 2 => OsString::from(&s[2..]),
            _ => {
                out.push(a);
                continue;
            }
        };
        let items = items.to_string_lossy().into_owned();
        out.extend(items.split(',').filter_map(fstab_item).map(OsString::from));
    }
    out
}

/// The flag one fstab item stands for, if any.
fn fstab_item(item: &str) -> Option<String> {
    let o = item.trim();
    if o.is_empty() || IGNORED.contains(&o) || o.starts_with("x-") || o.starts_with("comment=") {
        return None;
    }
    let (k, v) = match o.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (o, None),
    };
    let key = k.replace('-', "_");
    if (v.is_none() && PASSED.contains(&key.as_str())) || key == "fsname" || key == "subtype" {
        return Some(format!(
            "--fuse-option={key}{}",
            v.map(|v| format!("={v}")).unwrap_or_default()
        ));
    }
    let flag = key.replace('_', "-");
    Some(match v {
        Some(v) => format!("--{flag}={v}"),
        None => format!("--{flag}"),
    })
}

/// A point in time (`--as-of`, `--since`, `--until`), in microseconds since
/// the Unix epoch: RFC 3339 with an offset or `Z` (fractions of a second
/// kept), or an age back from now (`90m`, `2d`, `1h 30m`).
pub fn parse_time(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if let Ok(age) = humantime::parse_duration(t) {
        let now = crate::protocol::time::now_micros();
        return Ok(now.saturating_sub(u64::try_from(age.as_micros()).unwrap_or(u64::MAX)));
    }
    match chrono::DateTime::parse_from_rfc3339(t) {
        Ok(d) => u64::try_from(d.timestamp_micros()).map_err(|_| format!("{s:?} is before 1970")),
        Err(_) => Err(format!(
            "{s:?}: expected RFC 3339 (2026-11-29T10:00:00Z) or an age (90m, 2d)"
        )),
    }
}

/// The default of `--abort-uploads-older-than`: one day.
pub const ABORT_UPLOADS_DEFAULT: Duration = Duration::from_secs(86400);

fn parse_age(s: &str) -> Result<Age, String> {
    parse_abort_age(s).map(Age)
}

/// `--abort-uploads-older-than`: a duration (`1d`, `2h`, `30m`); `0` means never.
pub fn parse_abort_age(s: &str) -> Result<Option<Duration>, String> {
    if s.trim() == "0" {
        return Ok(None);
    }
    let d = humantime::parse_duration(s.trim()).map_err(|e| format!("{s:?}: {e}"))?;
    Ok((!d.is_zero()).then_some(d))
}

/// `--idle-timeout`: a duration above zero.
pub fn parse_idle_timeout(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s.trim()) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err("the idle timeout must be above zero".into()),
        Err(e) => Err(format!("{s:?}: {e}")),
    }
}

/// A uid or gid: any `u32` but `4294967295`, which chown(2) reads as "no change".
/// Without the check, `uid=4294967296` wrapped to 0: root.
pub fn parse_id(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(id) if id != u32::MAX => Ok(id),
        _ => Err(format!("not a user or group id (0–4294967294): {s:?}")),
    }
}

/// A count of threads or requests in flight: 1 to 1024.
pub fn parse_count(s: &str) -> Result<usize, String> {
    parse_in(s, 1, 1024)
}

/// Attempts per request, the first included: 1 to 100.
pub fn parse_retries(s: &str) -> Result<u32, String> {
    parse_in(s, 1, 100)
}

/// A whole number from `min` to `max`.
pub fn parse_in<T>(s: &str, min: T, max: T) -> Result<T, String>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
{
    match s.trim().parse::<T>() {
        Ok(n) if n >= min && n <= max => Ok(n),
        _ => Err(format!("{s:?} is not a whole number from {min} to {max}")),
    }
}

/// A part size: what the service accepts for one part (1 MiB to 5 GiB).
pub fn parse_part_size(s: &str) -> Result<u64, String> {
    use crate::protocol::rules::{MAX_PART_SIZE, MIN_PART_SIZE};
    match parse_size(s)? {
        n if (MIN_PART_SIZE..=MAX_PART_SIZE).contains(&n) => Ok(n),
        _ => Err(format!("{s:?}: a part is 1MiB to 5GiB")),
    }
}

/// An octal permission such as `644` or `0755`.
pub fn parse_mode(s: &str) -> Result<u16, String> {
    match u16::from_str_radix(s.trim_start_matches("0o"), 8) {
        Ok(m) if m <= 0o7777 => Ok(m),
        _ => Err(format!("not an octal mode: {s:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct T {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        mount: MountOptions,
    }

    fn parse(args: &[&str]) -> Result<T, clap::Error> {
        let argv = ["cofferfs", "c-1", "/mnt"]
            .iter()
            .chain(args)
            .map(OsString::from);
        T::try_parse_from(expand_fstab_options(argv.collect()))
    }

    #[test]
    fn fstab_options_set_the_same_things_as_flags() {
        let t = parse(&[
            "-o",
            "rw,_netdev,endpoint=http://127.0.0.1:9000,part_size=16MiB",
            "-oupload-memory=128MiB,file_mode=0600,ro,noatime,x-systemd.automount",
            "-o",
            "idle_timeout=5m,abort-uploads-older-than=2h,fsname=coffer",
        ])
        .expect("options");
        assert_eq!(t.target.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(t.mount.part_size, 16 << 20);
        assert_eq!(t.mount.upload_memory, 128 << 20);
        assert_eq!(t.mount.file_mode, 0o600);
        assert!(t.mount.read_only);
        assert_eq!(t.mount.fuse_options, ["noatime", "fsname=coffer"]);
        assert_eq!(t.target.idle_timeout, Some(Duration::from_secs(300)));
        assert_eq!(
            t.mount.abort_uploads_older_than.0,
            Some(Duration::from_secs(7200))
        );
        let t = parse(&["-o", "abort_uploads_older_than=0"]).expect("options");
        assert_eq!(t.mount.abort_uploads_older_than.0, None, "0 means never");
        let t = parse(&["--part-size", "2MiB", "--ro"]).expect("flags");
        assert_eq!(t.mount.part_size, 2 << 20);
        assert!(t.mount.read_only);
    }

    #[test]
    fn times_are_rfc_3339_or_ages_back_from_now() {
        assert_eq!(
            parse_time("2026-11-29T10:00:00.123456Z"),
            Ok(1_795_946_400_123_456)
        );
        assert_eq!(
            parse_time("2026-11-29T18:00:00+08:00"),
            parse_time("2026-11-29T10:00:00Z")
        );
        let t = parse_time("90m").expect("age");
        let now = crate::protocol::time::now_micros();
        let back = now - t;
        assert!((5_400_000_000..5_460_000_000).contains(&back), "{back}");
        assert!(parse_time("2d").is_ok_and(|t| t < now - 172_000_000_000));
        for bad in ["yesterday", "2026-11-29", "1969-12-31T23:59:59Z", ""] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
        let t = parse(&["-o", "ro,as_of=2026-11-29T10:00:00Z"]).expect("options");
        assert_eq!(t.mount.as_of, Some(1_795_946_400_000_000));
    }

    #[test]
    fn unknown_valueless_or_out_of_range_options_are_refused() {
        for bad in [
            "bogus",
            "endpoint",
            "file_mode=999",
            "idle_timeout=0",
            "abort_uploads_older_than=soon",
            "uid=4294967296",
            "retries=0",
            "part_size=1KiB",
        ] {
            assert!(parse(&["-o", bad]).is_err(), "{bad}");
        }
    }
}
