//! The `cofferfs` command line: parses arguments and calls into the library.
//! Nothing else lives here.

// Errors travel once, to the one line printed at exit; their size does not matter.
#![allow(clippy::result_large_err)]

use clap::{Args, CommandFactory, Parser, Subcommand};
use cofferfs::commands::{self, split_path, CommandError};
use cofferfs::history;
use cofferfs::mount::{self, MountConfig};
use cofferfs::options::{self, parse_count, parse_part_size, MountOptions, Target};
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
    target: Target,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct TransferArgs {
    /// Preferred part (or range) size.
    #[arg(long, default_value = "8MiB", value_parser = parse_part_size)]
    part_size: u64,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 8, value_parser = parse_count)]
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

#[derive(Subcommand)]
enum Command {
    /// Mount COFFER at MOUNTPOINT (detaches once the mount is live).
    Mount(MountOptions),
    /// Upload FILE as COFFER/KEY (multipart, parts in parallel).
    Put {
        file: PathBuf,
        /// COFFER/KEY
        dest: String,
        #[command(flatten)]
        transfer: TransferArgs,
    },
    /// Download COFFER/KEY into FILE (parallel ranged GETs); with --as-of,
    /// the file at COFFER/PATH as the mount showed it then.
    Get {
        /// COFFER/KEY, or COFFER/PATH with --as-of
        src: String,
        file: PathBuf,
        #[command(flatten)]
        transfer: TransferArgs,
        /// Restore PATH as it was at TIME: RFC 3339 or an age (90m, 2d).
        #[arg(long, value_name = "TIME", value_parser = options::parse_time)]
        as_of: Option<u64>,
    },
    /// Every version ever bound to COFFER/PATH, oldest first: time, size,
    /// ETag, the key that holds it, and what ended it.
    Versions {
        /// COFFER/PATH
        path: String,
        /// One JSON object a line.
        #[arg(long)]
        json: bool,
    },
    /// The audit trail: one line per journal record (time, writer, operation,
    /// path or paths).
    Log {
        coffer: String,
        /// Only records stored at or after TIME (RFC 3339 or an age).
        #[arg(long, value_name = "TIME", value_parser = options::parse_time)]
        since: Option<u64>,
        /// Only records stored at or before TIME.
        #[arg(long, value_name = "TIME", value_parser = options::parse_time)]
        until: Option<u64>,
        /// Only records about paths starting with PREFIX.
        #[arg(long, value_name = "PREFIX", default_value = "")]
        path: String,
        /// One JSON object a line.
        #[arg(long)]
        json: bool,
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

/// The embedded server of a command's `--local DIR`, while the command runs.
static LOCAL_SERVER: std::sync::Mutex<Option<cofferfs::server::ServerHandle>> =
    std::sync::Mutex::new(None);

fn store(t: &Target, coffer: &str) -> Result<Arc<dyn ObjectStore>, CommandError> {
    if let Some(dir) = &t.local {
        let (mut cfg, server) = cofferfs::mount::local_client(dir, coffer, false)?;
        if let Some(d) = t.idle_timeout {
            cfg.idle_timeout = d;
        }
        if let Some(s) = server {
            *LOCAL_SERVER.lock().unwrap_or_else(|e| e.into_inner()) = Some(s);
        }
        return Ok(Arc::new(cofferfs::client::CdcsClient::new(cfg, coffer)?));
    }
    Ok(Arc::new(t.client(coffer)?))
}

fn run(cli: Cli) -> Result<(), CommandError> {
    let progress = std::io::stderr().is_terminal();
    let mut out = std::io::stdout().lock();
    match cli.command {
        Command::Mount(m) => {
            let cfg = MountConfig::from_options(cli.target.clone(), m);
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
            as_of: Some(t),
        } => {
            let (coffer, path) = split_path(&src, true)?;
            let bar = commands::progress_bar(0, "get", progress);
            let r = history::get_as_of(
                store(&cli.target, &coffer)?.as_ref(),
                &path,
                t,
                &file,
                transfer.part_size,
                transfer.concurrency,
                &|n| bar.inc(n),
            )?;
            bar.finish_and_clear();
            log::info!(
                "got {} bytes of {path} as of {}",
                r.bytes,
                history::format_micros(t)
            );
        }
        Command::Versions { path, json } => {
            let (coffer, path) = split_path(&path, true)?;
            let v = history::versions(store(&cli.target, &coffer)?.as_ref(), &path)?;
            if v.is_empty() {
                return Err(CommandError::Usage(format!(
                    "{path:?}: no version in the coffer's journal or objects"
                )));
            }
            history::versions::print(&path, &v, json, &mut out)?;
        }
        Command::Log {
            coffer,
            since,
            until,
            path,
            json,
        } => {
            let filter = history::LogFilter {
                since,
                until,
                prefix: path,
            };
            history::log(store(&cli.target, &coffer)?.as_ref(), &filter, &mut |e| {
                history::log::print(e, json, &mut out)
            })?;
        }
        Command::Get {
            src,
            file,
            transfer,
            as_of: None,
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
    if args.iter().any(|a| a == "mount") {
        args = options::expand_fstab_options(args);
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
    let result = run(cli);
    // A command's embedded server stops before the process does.
    if let Some(s) = LOCAL_SERVER
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
    {
        s.shutdown();
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cofferfs: {e}");
            ExitCode::FAILURE
        }
    }
}
