//! The `cofferfs` command line: parses arguments and calls into the library.
//! Nothing else lives here.

// Errors travel once, to the one line printed at exit; their size does not matter.
#![allow(clippy::result_large_err)]

use clap::{Args, CommandFactory, Parser, Subcommand};
use cofferfs::commands::{self, parse_size, split_path, CommandError, Target};
use cofferfs::fs::cache::CacheConfig;
use cofferfs::fs::{private_dir, FsConfig};
use cofferfs::mount::{self, MountConfig};
use cofferfs::protocol::sign::Credentials;
use cofferfs::server::{ConnLimits, ServeConfig};
use cofferfs::store::ObjectStore;
use cofferfs::transfer::upload::UploadConfig;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "cofferfs",
    version,
    about = "Mount a Tencent Cloud Data Coffer Service coffer as a local directory"
)]
struct Cli {
    #[command(flatten)]
    target: TargetArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct TargetArgs {
    /// Service URL for every operation (e.g. http://127.0.0.1:9000 for `cofferfs serve`).
    #[arg(
        long,
        global = true,
        env = "COFFERFS_ENDPOINT",
        conflicts_with = "region"
    )]
    endpoint: Option<String>,
    /// Region of the real service (e.g. ap-tianjin).
    #[arg(long, global = true, env = "COFFERFS_REGION")]
    region: Option<String>,
    /// File with secret_id/secret_key (mode 600); default: TENCENTCLOUD_SECRET_ID/_KEY.
    #[arg(long, global = true)]
    credentials: Option<PathBuf>,
    /// A request fails after this long without a byte moving either way [default: 60s].
    /// Never a limit on a whole request: a merge may take minutes.
    #[arg(long, global = true, value_name = "DUR", value_parser = mount::parse_idle_timeout)]
    idle_timeout: Option<Duration>,
}

/// A parsed `--abort-uploads-older-than` (`None`: never); a newtype so clap does
/// not read the `Option` as "the flag may be absent".
#[derive(Clone)]
struct Age(Option<Duration>);

fn parse_age(s: &str) -> Result<Age, String> {
    mount::parse_abort_age(s).map(Age)
}

#[derive(Args)]
struct TransferArgs {
    /// Preferred part (or range) size.
    #[arg(long, default_value = "8MiB", value_parser = mount::parse_part_size)]
    part_size: u64,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 8, value_parser = mount::parse_count)]
    concurrency: usize,
}

#[derive(Subcommand)]
enum UploadsCommand {
    /// List open multipart uploads.
    List {
        coffer: String,
        #[arg(long, default_value = "")]
        prefix: String,
        /// Only uploads started longer ago than this (e.g. 1h, 7d).
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: Option<Duration>,
    },
    /// Abort open multipart uploads (their parts are discarded).
    Abort {
        coffer: String,
        #[arg(long, default_value = "")]
        prefix: String,
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: Option<Duration>,
    },
}

#[derive(Args)]
struct MountArgs {
    /// The coffer (NAME-APPID).
    coffer: String,
    /// An existing, empty directory.
    mountpoint: PathBuf,
    /// Serve the coffer from DIR with an embedded `cofferfs serve` (no account needed).
    #[arg(long, value_name = "DIR")]
    local: Option<PathBuf>,
    /// Stay attached; SIGINT/SIGTERM unmount.
    #[arg(short, long)]
    foreground: bool,
    /// Preferred part size (grows for very large files).
    #[arg(long, default_value = "8MiB", value_parser = mount::parse_part_size)]
    part_size: u64,
    /// Bytes of part buffers held at once across all open files; writers wait beyond it.
    #[arg(long, default_value = "64MiB", value_parser = parse_size)]
    upload_memory: u64,
    /// Parts uploading at once.
    #[arg(long, default_value_t = 8, value_parser = mount::parse_count)]
    upload_concurrency: usize,
    /// Mount read-only.
    #[arg(long)]
    read_only: bool,
    /// unlink and rmdir hide paths (their bytes stay in the coffer until its
    /// lifecycle rule expires them); without it they fail with EPERM.
    #[arg(long)]
    allow_delete: bool,
    /// Private directory (0700, yours) for staging files of appends and edits
    /// (cleaned up at unmount) and, with --cache-dir-size, file blocks kept
    /// across mounts; one subdirectory per coffer [default: $XDG_CACHE_HOME/cofferfs,
    /// else ~/.cache/cofferfs].
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Bytes of staging files at once; beyond it writes fail with ENOSPC.
    #[arg(long, default_value = "16GiB", value_parser = parse_size)]
    staging_limit: u64,
    /// Bytes of file blocks kept on disk in --cache-dir across mounts (0: none).
    #[arg(long, default_value = "0", value_parser = parse_size)]
    cache_dir_size: u64,
    /// Bytes of file blocks cached in memory (LRU, shared by all open files).
    #[arg(long, default_value = "256MiB", value_parser = parse_size)]
    cache_size: u64,
    /// Largest read-ahead window of a sequential reader.
    #[arg(long, default_value = "64MiB", value_parser = parse_size)]
    read_ahead: u64,
    /// Ranged GETs of read-ahead in flight at once.
    #[arg(long, default_value_t = 8, value_parser = mount::parse_count)]
    read_concurrency: usize,
    /// Let other users use the mount (needs user_allow_other in /etc/fuse.conf unless root).
    #[arg(long)]
    allow_other: bool,
    /// Owner shown for entries with no recorded owner: objects from other tools, and
    /// what the mounting user creates (default: the mounting user). With
    /// --allow-other, other users' new entries are theirs.
    #[arg(long, value_parser = mount::parse_id)]
    uid: Option<u32>,
    #[arg(long, value_parser = mount::parse_id)]
    gid: Option<u32>,
    /// Permission bits of files, in octal.
    #[arg(long, default_value = "644", value_parser = mount::parse_mode)]
    file_mode: u16,
    /// Permission bits of directories, in octal.
    #[arg(long, default_value = "755", value_parser = mount::parse_mode)]
    dir_mode: u16,
    /// How long listings and lookups are trusted before asking the coffer again.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    metadata_ttl: Duration,
    /// Log here instead of stderr (detached mounts default to ~/.local/state/cofferfs/mount.log).
    #[arg(long)]
    log_file: Option<PathBuf>,
    /// Threads serving FUSE requests.
    #[arg(long, default_value_t = 8, value_parser = mount::parse_count)]
    fuse_threads: usize,
    /// Attempts per request before an operation fails (the first included).
    #[arg(long, value_parser = mount::parse_retries)]
    retries: Option<u32>,
    /// At start, abort open multipart uploads started longer ago than this
    /// (orphans of a killed mount, which block their path); 0: never.
    #[arg(long, value_name = "DUR", default_value = "1d", value_parser = parse_age)]
    abort_uploads_older_than: Age,
    /// Options in fstab form: endpoint=URL,part_size=16MiB,ro,allow_other,...
    #[arg(short = 'o', value_name = "OPT,...")]
    options: Vec<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Mount COFFER at MOUNTPOINT (detaches once the mount is live).
    Mount(MountArgs),
    /// Upload FILE as COFFER/KEY (multipart, parts in parallel).
    Put {
        file: PathBuf,
        /// COFFER/KEY
        dest: String,
        #[command(flatten)]
        transfer: TransferArgs,
    },
    /// Download COFFER/KEY into FILE (parallel ranged GETs).
    Get {
        /// COFFER/KEY
        src: String,
        file: PathBuf,
        #[command(flatten)]
        transfer: TransferArgs,
    },
    /// List objects: size, time, ETag, key.
    Ls {
        /// COFFER or COFFER/PREFIX
        path: String,
    },
    /// Show one object.
    Stat {
        /// COFFER/KEY
        path: String,
    },
    /// Open multipart uploads.
    Uploads {
        #[command(subcommand)]
        command: UploadsCommand,
    },
    /// Run a CDCS-compatible server on local disk.
    Serve {
        /// Directory for data and metadata.
        #[arg(long)]
        root: PathBuf,
        /// Address to listen on (port 0 picks a free port).
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: SocketAddr,
        /// Create this coffer (NAME-APPID) at start if missing; repeatable.
        #[arg(long = "coffer")]
        coffers: Vec<String>,
        /// Interval of keep-alive spaces while CompleteMultipartUpload merges.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        keepalive_interval: Duration,
        /// Fault injection for tests, e.g. "UploadPart:503:0.2,CompleteMultipartUpload:reset:0.1".
        #[arg(long, default_value = "")]
        faults: String,
        /// Seed of the fault injector.
        #[arg(long, default_value_t = 0)]
        fault_seed: u64,
        /// Length of one lifecycle day (for tests).
        #[arg(long, default_value = "86400s", value_parser = humantime::parse_duration, hide = true)]
        lifecycle_day: Duration,
        /// Serve the test endpoints /-/stats and /-/faults (implied by --faults); they
        /// need a signature like any request when credentials are set.
        #[arg(long)]
        test_api: bool,
        /// Close a connection that takes longer than this to send a request header.
        #[arg(long, value_name = "DUR", default_value = "10s", value_parser = cofferfs::server::parse_header_timeout)]
        header_timeout: Duration,
        /// Close a connection idle this long between requests.
        #[arg(long, value_name = "DUR", default_value = "60s", value_parser = cofferfs::server::parse_conn_idle_timeout)]
        conn_idle_timeout: Duration,
        /// Open connections at most; at the cap the longest-idle one is closed for a new one.
        #[arg(long, value_name = "N", default_value = "512", value_parser = cofferfs::server::parse_max_connections)]
        max_connections: usize,
    },
}

fn target(t: &TargetArgs) -> Target {
    Target {
        endpoint: t.endpoint.clone(),
        region: t.region.clone(),
        credentials_file: t.credentials.clone(),
        idle_timeout: t.idle_timeout,
    }
}

fn store(t: &TargetArgs, coffer: &str) -> Result<Arc<dyn ObjectStore>, CommandError> {
    Ok(Arc::new(target(t).client(coffer)?))
}

fn mount_config(t: &TargetArgs, m: MountArgs) -> Result<MountConfig, CommandError> {
    let mut cfg = MountConfig {
        coffer: m.coffer,
        mountpoint: m.mountpoint,
        target: target(t),
        local: m.local,
        foreground: m.foreground,
        fs: FsConfig {
            file_mode: m.file_mode,
            dir_mode: m.dir_mode,
            metadata_ttl: m.metadata_ttl,
            read_only: m.read_only,
            allow_delete: m.allow_delete,
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
        },
        allow_other: m.allow_other,
        fuse_options: Vec::new(),
        log_file: m.log_file,
        fuse_threads: m.fuse_threads,
        retries: m.retries,
        abort_uploads_older_than: m.abort_uploads_older_than.0,
    };
    if let Some(u) = m.uid {
        cfg.fs.uid = u;
    }
    if let Some(g) = m.gid {
        cfg.fs.gid = g;
    }
    cfg.apply_options(&m.options)?;
    Ok(cfg)
}

fn run(cli: Cli) -> Result<(), CommandError> {
    let progress = std::io::stderr().is_terminal();
    let mut out = std::io::stdout().lock();
    match cli.command {
        Command::Mount(m) => {
            let cfg = mount_config(&cli.target, m)?;
            // A foreground mount writes its own log file (flag or -o); a detached
            // one's stderr is already the log file.
            init_logging(cfg.log_file.as_deref().filter(|_| cfg.foreground));
            mount::mount(cfg)?
        }
        Command::Put {
            file,
            dest,
            transfer,
        } => {
            let (coffer, key) = split_path(&dest, true)?;
            let cfg = UploadConfig {
                part_size: transfer.part_size,
                concurrency: transfer.concurrency.max(1),
                memory: transfer.part_size * (transfer.concurrency.max(1) as u64 + 1),
            };
            let r = commands::put(store(&cli.target, &coffer)?, &file, &key, cfg, progress)?;
            log::info!(
                "put {} bytes in {:?} ({:.1} MB/s)",
                r.bytes,
                r.elapsed,
                r.mb_per_s()
            );
        }
        Command::Get {
            src,
            file,
            transfer,
        } => {
            let (coffer, key) = split_path(&src, true)?;
            let r = commands::get(
                store(&cli.target, &coffer)?,
                &key,
                &file,
                transfer.part_size,
                transfer.concurrency,
                progress,
            )?;
            log::info!(
                "got {} bytes in {:?} ({:.1} MB/s)",
                r.bytes,
                r.elapsed,
                r.mb_per_s()
            );
        }
        Command::Ls { path } => {
            let (coffer, prefix) = split_path(&path, false)?;
            commands::ls(store(&cli.target, &coffer)?.as_ref(), &prefix, &mut out)?;
        }
        Command::Stat { path } => {
            let (coffer, key) = split_path(&path, true)?;
            commands::stat(store(&cli.target, &coffer)?.as_ref(), &key, &mut out)?;
        }
        Command::Uploads { command } => match command {
            UploadsCommand::List {
                coffer,
                prefix,
                older_than,
            } => {
                commands::uploads_list(
                    store(&cli.target, &coffer)?.as_ref(),
                    &prefix,
                    older_than,
                    &mut out,
                )?;
            }
            UploadsCommand::Abort {
                coffer,
                prefix,
                older_than,
            } => {
                commands::uploads_abort(
                    store(&cli.target, &coffer)?.as_ref(),
                    &prefix,
                    older_than,
                    &mut out,
                )?;
            }
        },
        Command::Serve {
            root,
            listen,
            coffers,
            keepalive_interval,
            faults,
            fault_seed,
            lifecycle_day,
            test_api,
            header_timeout,
            conn_idle_timeout,
            max_connections,
        } => cofferfs::server::run(ServeConfig {
            root,
            listen,
            coffers,
            keepalive_interval,
            faults,
            fault_seed,
            credentials: Credentials::from_env(),
            lifecycle_day,
            test_api,
            limits: ConnLimits {
                header_timeout,
                idle_timeout: conn_idle_timeout,
                max_connections,
            },
        })
        .map_err(|e| CommandError::Usage(e.to_string()))?,
    }
    Ok(())
}

/// mount(8) runs `cofferfs COFFER MOUNTPOINT -o OPTIONS` for fstab entries of type
/// `fuse.cofferfs`: that is the `mount` subcommand.
fn args() -> Vec<std::ffi::OsString> {
    let mut args: Vec<_> = std::env::args_os().collect();
    let first = args.get(1).and_then(|a| a.to_str()).unwrap_or("-");
    let known = Cli::command()
        .get_subcommands()
        .any(|c| c.get_name() == first)
        || first == "help";
    if !known && !first.starts_with('-') && args.len() >= 3 {
        args.insert(1, "mount".into());
    }
    args
}

fn init_logging(log_file: Option<&std::path::Path>) {
    let mut b = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"));
    b.format_timestamp_micros();
    if let Some(path) = log_file {
        match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            Ok(f) => {
                b.target(env_logger::Target::Pipe(Box::new(f)));
            }
            Err(e) => eprintln!(
                "cofferfs: log file {}: {e}; logging to stderr",
                path.display()
            ),
        }
    }
    b.init();
}

fn main() -> ExitCode {
    let cli = Cli::parse_from(args());
    if !matches!(cli.command, Command::Mount(_)) {
        init_logging(None);
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cofferfs: {e}");
            ExitCode::FAILURE
        }
    }
}
