//! The direct commands (`put`, `get`, `ls`, `stat`, `uploads`): whole-object transfers
//! without a mount, the baseline of every benchmark. Printing happens here, parsing in main.rs.

use crate::client::{credentials, CdcsClient, ClientConfig};
use crate::protocol::{self as proto};
use crate::store::{ListAll, ObjectStore, StoreError};
use crate::transfer::download::{download, DownloadError};
use crate::transfer::upload::{UploadConfig, Uploader};
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Why a command failed; printed as one line.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Download(#[from] DownloadError),
    #[error("{0}")]
    Credentials(#[from] credentials::CredentialsError),
    #[error("{0}")]
    Usage(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CommandError + '_ {
    move |source| CommandError::Io {
        path: path.display().to_string(),
        source,
    }
}

pub use crate::options::Target;

impl Target {
    /// The client configuration these options describe.
    pub fn client_config(&self) -> Result<ClientConfig, CommandError> {
        let mut cfg = match (&self.endpoint, &self.region) {
            (Some(e), _) => ClientConfig::endpoint(e)?,
            (None, Some(r)) => ClientConfig::region(r)?,
            (None, None) => {
                return Err(CommandError::Usage(
                    "say where the coffer is: --endpoint URL or --region REGION".into(),
                ))
            }
        };
        cfg.credentials = credentials::load(self.credentials_file.as_deref())?;
        if let Some(t) = self.idle_timeout {
            cfg.idle_timeout = t;
        }
        Ok(cfg)
    }

    /// A client of `coffer`.
    pub fn client(&self, coffer: &str) -> Result<CdcsClient, CommandError> {
        Ok(CdcsClient::new(self.client_config()?, coffer)?)
    }
}

/// Splits `COFFER/KEY` (the key may be empty when `key_required` is false).
pub fn split_path(s: &str, key_required: bool) -> Result<(String, String), CommandError> {
    let (coffer, key) = s.split_once('/').unwrap_or((s, ""));
    if coffer.is_empty() || (key_required && key.is_empty()) {
        return Err(CommandError::Usage(format!(
            "{s:?}: expected COFFER/KEY, e.g. mycoffer-1250000000/backups/a.tar"
        )));
    }
    Ok((coffer.to_string(), key.to_string()))
}

/// Parses sizes such as `8MiB`, `64M`, `1g`, `4096` (binary units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("not a size: {s:?}"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => return Err(format!("unknown size unit {other:?} in {s:?}")),
    };
    let v = n * mult as f64;
    if !(0.0..=u64::MAX as f64).contains(&v) {
        return Err(format!("size out of range: {s:?}"));
    }
    Ok(v as u64)
}

pub fn progress_bar(len: u64, verb: &str, enabled: bool) -> indicatif::ProgressBar {
    if !enabled {
        return indicatif::ProgressBar::hidden();
    }
    // stderr target: hidden automatically when stderr is not a terminal.
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(verb.to_string());
    bar
}

/// What a transfer did.
#[derive(Debug, Clone)]
pub struct TransferReport {
    pub bytes: u64,
    pub elapsed: Duration,
    pub etag: String,
}

impl TransferReport {
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// `cofferfs put FILE COFFER/KEY`: multipart through the same uploader the mount uses.
pub fn put(
    store: Arc<dyn ObjectStore>,
    file: &Path,
    key: &str,
    cfg: UploadConfig,
    progress: bool,
) -> Result<TransferReport, CommandError> {
    let started = Instant::now();
    let mut f = std::fs::File::open(file).map_err(io_err(file))?;
    let size = f.metadata().map_err(io_err(file))?.len();
    let uploader = Uploader::new(store, cfg);
    let mut upload = uploader.begin(key, Some(size));
    let bar = progress_bar(size, "put", progress);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                upload.abort();
                return Err(io_err(file)(e));
            }
        };
        upload.write(&buf[..n])?;
        bar.inc(n as u64);
    }
    let bytes = upload.written();
    let etag = upload.finish()?;
    bar.finish_and_clear();
    uploader.shutdown();
    Ok(TransferReport {
        bytes,
        elapsed: started.elapsed(),
        etag,
    })
}

/// `cofferfs get COFFER/KEY FILE`: parallel ranged GETs into a temporary file
/// beside FILE, renamed into place only when every byte arrived.
pub fn get(
    store: Arc<dyn ObjectStore>,
    key: &str,
    file: &Path,
    chunk: u64,
    concurrency: usize,
    progress: bool,
) -> Result<TransferReport, CommandError> {
    let started = Instant::now();
    let meta = head_existing(store.as_ref(), key)?;
    let bar = progress_bar(meta.size, "get", progress);
    let result = download(store.as_ref(), &meta, file, chunk, concurrency, &|n| {
        bar.inc(n)
    });
    bar.finish_and_clear();
    result?;
    Ok(TransferReport {
        bytes: meta.size,
        elapsed: started.elapsed(),
        etag: meta.etag,
    })
}

fn show_time(t: Option<SystemTime>) -> String {
    t.map(proto::time::iso8601).unwrap_or_else(|| "-".into())
}

/// `cofferfs ls COFFER[/PREFIX]`: size, time, ETag and key, one object a line.
pub fn ls(
    store: &dyn ObjectStore,
    prefix: &str,
    out: &mut dyn std::io::Write,
) -> Result<u64, CommandError> {
    let mut count = 0;
    for o in ListAll::new(store, prefix) {
        let o = o?;
        writeln!(
            out,
            "{:>14}  {}  {}  {}",
            o.size,
            show_time(o.last_modified),
            o.etag,
            o.key
        )
        .map_err(io_err(Path::new("stdout")))?;
        count += 1;
    }
    Ok(count)
}

/// HEAD that treats a missing object as the error `ObjectNotExists`.
fn head_existing(
    store: &dyn ObjectStore,
    key: &str,
) -> Result<crate::store::ObjectMeta, StoreError> {
    store.head(key)?.ok_or_else(|| StoreError::Service {
        op: "HeadObject",
        key: key.to_string(),
        code: proto::ErrorCode::ObjectNotExists,
        status: 404,
        message: "no such object".into(),
        request_id: String::new(),
        trace_id: String::new(),
    })
}

/// `cofferfs stat COFFER/KEY`.
pub fn stat(
    store: &dyn ObjectStore,
    key: &str,
    out: &mut dyn std::io::Write,
) -> Result<(), CommandError> {
    let m = head_existing(store, key)?;
    writeln!(
        out,
        "key: {}\nsize: {}\netag: {}\nlast-modified: {}",
        m.key,
        m.size,
        m.etag,
        show_time(m.last_modified)
    )
    .map_err(io_err(Path::new("stdout")))
}

/// Open uploads under `prefix` started more than `older_than` ago.
pub fn open_uploads(
    store: &dyn ObjectStore,
    prefix: &str,
    older_than: Option<Duration>,
) -> Result<Vec<crate::store::UploadMeta>, CommandError> {
    let cutoff = older_than.and_then(|d| SystemTime::now().checked_sub(d));
    let mut out = Vec::new();
    let mut marker = String::new();
    loop {
        let page = store.list_uploads(prefix, &marker)?;
        out.extend(
            page.uploads
                .into_iter()
                .filter(|u| match (cutoff, u.initiated) {
                    (Some(c), Some(t)) => t <= c,
                    (Some(_), None) => false,
                    (None, _) => true,
                }),
        );
        match page.next_marker {
            Some(m) if m > marker => marker = m,
            _ => return Ok(out),
        }
    }
}

/// `cofferfs uploads list`.
pub fn uploads_list(
    store: &dyn ObjectStore,
    prefix: &str,
    older_than: Option<Duration>,
    out: &mut dyn std::io::Write,
) -> Result<usize, CommandError> {
    let ups = open_uploads(store, prefix, older_than)?;
    for u in &ups {
        writeln!(
            out,
            "{}  {}  {}",
            show_time(u.initiated),
            u.upload_id,
            u.key
        )
        .map_err(io_err(Path::new("stdout")))?;
    }
    Ok(ups.len())
}

/// Aborts the open uploads under `prefix` started more than `older_than` ago
/// (all when `None`), telling `each` how every abort went. Returns how many were
/// aborted and the first failure; an error only when they cannot be listed.
/// `uploads abort` and a starting mount share it.
pub fn abort_uploads(
    store: &dyn ObjectStore,
    prefix: &str,
    older_than: Option<Duration>,
    each: &mut dyn FnMut(&crate::store::UploadMeta, &Result<(), StoreError>),
) -> Result<(usize, Option<StoreError>), CommandError> {
    let mut first_error = None;
    let mut aborted = 0;
    for u in open_uploads(store, prefix, older_than)? {
        let outcome = store.abort(&u.key, &u.upload_id);
        each(&u, &outcome);
        match outcome {
            Ok(()) => aborted += 1,
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Ok((aborted, first_error))
}

/// `cofferfs uploads abort`: aborts each matching upload; fails if any abort failed.
pub fn uploads_abort(
    store: &dyn ObjectStore,
    prefix: &str,
    older_than: Option<Duration>,
    out: &mut dyn std::io::Write,
) -> Result<usize, CommandError> {
    let mut write_error = None;
    let (aborted, first_error) =
        abort_uploads(store, prefix, older_than, &mut |u, outcome| match outcome {
            Ok(()) => {
                if let Err(e) = writeln!(out, "aborted {}  {}", u.upload_id, u.key) {
                    write_error.get_or_insert(e);
                }
            }
            Err(e) => log::error!("cannot abort {} ({:?}): {e}", u.upload_id, u.key),
        })?;
    if let Some(e) = write_error {
        return Err(io_err(Path::new("stdout"))(e));
    }
    match first_error {
        Some(e) => Err(e.into()),
        None => Ok(aborted),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("8MiB"), Ok(8 << 20));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1.5KiB"), Ok(1536));
        assert!(parse_size("8 parsecs").is_err());
    }

    #[test]
    fn paths_split_into_coffer_and_key() {
        assert_eq!(
            split_path("c-1/a/b c", true).unwrap(),
            ("c-1".to_string(), "a/b c".to_string())
        );
        assert_eq!(
            split_path("c-1", false).unwrap(),
            ("c-1".to_string(), String::new())
        );
        assert!(split_path("c-1", true).is_err());
        assert!(split_path("/k", true).is_err());
    }
}
