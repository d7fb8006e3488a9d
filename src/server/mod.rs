//! `cofferfs serve`: a CDCS-compatible server on local disk (hyper on tokio).
//! Write-once and as strict as the service's documents; a key never becomes a path.
//! This file owns starting and stopping, the shared state, and the order every
//! request goes through (parse, count, authenticate, validate, draw a fault, run the
//! operation's handler). It must not know how any one operation is carried out.

mod auth;
mod coffers;
mod conn;
mod disk;
mod error;
mod faults;
mod http;
mod listen;
mod multipart;
mod objects;
mod op;
mod small;
mod test_api;
mod wal;

pub use conn::{parse_conn_idle_timeout, parse_header_timeout, parse_max_connections, ConnLimits};

use crate::protocol::rules;
use crate::protocol::sign::Credentials;
use crate::protocol::ErrorCode;
use disk::{Disk, DiskError};
use faults::{Fault, Faults};
use http::{empty, random_hex, Body};
use hyper::body::Incoming;
use hyper::{Request, Response};
use op::{Call, Op};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

/// Everything `cofferfs serve` is started with.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Directory holding the data files and the metadata database.
    pub root: PathBuf,
    /// Address to listen on; port 0 picks a free one.
    pub listen: SocketAddr,
    /// Coffers (`name-appid`) created at start when missing.
    pub coffers: Vec<String>,
    /// How often CompleteMultipartUpload sends a space while it works.
    pub keepalive_interval: Duration,
    /// Fault-injection spec (`OPERATION:KIND:PROBABILITY,...`), empty for none.
    pub faults: String,
    /// Seed of the fault RNG, so a test's faults repeat.
    pub fault_seed: u64,
    /// When set, every request must be signed with these.
    pub credentials: Option<Credentials>,
    /// Length of a lifecycle "day" (86400 s; tests shorten it).
    pub lifecycle_day: Duration,
    /// Serve `/-/stats` and `/-/faults` (signed like any request when there are
    /// credentials). Implied by a non-empty `faults`. Never for an embedded server.
    pub test_api: bool,
    /// Header, idle and connection-count limits.
    pub limits: ConnLimits,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("storage at {root}: {detail}")]
    Storage { root: String, detail: String },
    #[error("invalid --faults: {0}")]
    Faults(String),
    #[error("invalid coffer {0:?}: expected NAME-APPID (lowercase letters, digits, '-')")]
    Coffer(String),
    #[error("{0}")]
    Runtime(std::io::Error),
}

#[derive(Default)]
struct Stats {
    /// Requests per operation name (`Op::name`).
    requests: Mutex<BTreeMap<&'static str, u64>>,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    faults: AtomicU64,
}

struct State {
    disk: Arc<Disk>,
    cfg: ServeConfig,
    faults: Mutex<Faults>,
    stats: Stats,
}

/// A lock that a panic elsewhere does not poison: the state it guards is
/// kept consistent at every step.
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running server; `shutdown` stops it.
pub struct ServerHandle {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ServerHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets in-flight requests finish (a few seconds at most).
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// Opens the store, binds, and serves on a runtime of its own threads.
pub fn start(mut cfg: ServeConfig) -> Result<ServerHandle, ServerError> {
    cfg.test_api |= !cfg.faults.is_empty();
    let storage = |e: DiskError| ServerError::Storage {
        root: cfg.root.display().to_string(),
        detail: e.to_string(),
    };
    let faults = Faults::parse(&cfg.faults, cfg.fault_seed).map_err(ServerError::Faults)?;
    let disk = Disk::open(&cfg.root).map_err(storage)?;
    for c in &cfg.coffers {
        if !rules::validate_coffer_id(c) {
            return Err(ServerError::Coffer(c.clone()));
        }
        match disk.create_coffer(c, "ap-local") {
            Ok(()) | Err(DiskError::Code(ErrorCode::CofferAlreadyExists, _)) => {}
            Err(e) => return Err(storage(e)),
        }
    }
    if cfg.credentials.is_none() {
        log::warn!("no TENCENTCLOUD_SECRET_ID/KEY set: accepting unsigned requests");
    }
    let listener = std::net::TcpListener::bind(cfg.listen).map_err(|source| ServerError::Bind {
        addr: cfg.listen,
        source,
    })?;
    let addr = listener.local_addr().map_err(ServerError::Runtime)?;
    listener
        .set_nonblocking(true)
        .map_err(ServerError::Runtime)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .thread_name("serve")
        .build()
        .map_err(ServerError::Runtime)?;
    let state = Arc::new(State {
        disk: Arc::new(disk),
        cfg,
        faults: Mutex::new(faults),
        stats: Stats::default(),
    });
    let (stop, stop_rx) = watch::channel(false);
    let thread = std::thread::Builder::new()
        .name("serve-main".into())
        .spawn(move || {
            runtime.block_on(async move {
                let expiry = tokio::spawn(expire_loop(Arc::clone(&state)));
                listen::serve(listener, state, stop_rx).await;
                expiry.abort();
            })
        })
        .map_err(ServerError::Runtime)?;
    Ok(ServerHandle {
        addr,
        stop,
        thread: Some(thread),
    })
}

/// `cofferfs serve`: start, print the address as the first line, run until SIGTERM/SIGINT.
pub fn run(cfg: ServeConfig) -> Result<(), ServerError> {
    match conn::raise_nofile_limit() {
        Some(n) if n < cfg.limits.max_connections as u64 + 64 => log::warn!(
            "open-file limit {n} is below --max-connections {} plus headroom: \
             connections beyond it fail at accept",
            cfg.limits.max_connections
        ),
        _ => {}
    }
    let handle = start(cfg)?;
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on http://{}", handle.addr());
        let _ = out.flush();
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ServerError::Runtime)?;
    rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    });
    log::info!("shutting down");
    handle.shutdown();
    Ok(())
}

/// Removes what the coffers' lifecycle rules have expired, every tenth of a "day".
async fn expire_loop(state: Arc<State>) {
    let day = state.cfg.lifecycle_day;
    let every = (day / 10).clamp(Duration::from_millis(200), Duration::from_secs(60));
    loop {
        tokio::time::sleep(every).await;
        let disk = Arc::clone(&state.disk);
        let secs = day.as_secs().max(1);
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || disk.expire(secs)).await {
            log::warn!("lifecycle expiry: {e}");
        }
    }
}

/// One request, start to answer.
async fn handle(state: Arc<State>, kill: Arc<Notify>, req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let call = Call::parse(req.method(), req.uri(), random_hex(16));
    if call.op == Op::Malformed {
        return call.error(
            ErrorCode::InvalidArgument,
            "path or query is not valid UTF-8 percent-encoding",
        );
    }
    if call.op.is_test_api() {
        return test_api::handle(&state, &call, req).await;
    }
    {
        let mut r = state
            .stats
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *r.entry(call.op.name()).or_default() += 1;
    }
    let resp = dispatch(&state, &kill, &call, req).await;
    log::info!(
        "{} {:?} -> {} ({} ms, request id {})",
        call.op,
        call.resource(),
        resp.status().as_u16(),
        started.elapsed().as_millis(),
        call.request_id
    );
    resp
}

/// Waits forever: the connection is being killed and this request dies with it.
async fn die(kill: &Notify) -> Response<Body> {
    kill.notify_one();
    std::future::pending::<()>().await;
    Response::new(empty())
}

/// The checks every CDCS operation passes before its handler, and its fault:
/// `Err` is the answer when one refuses.
async fn admit(
    state: &Arc<State>,
    kill: &Arc<Notify>,
    call: &Call,
    req: &Request<Incoming>,
) -> Result<Option<Fault>, Response<Body>> {
    if call.op == Op::MethodNotAllowed {
        return Err(call.error(
            ErrorCode::MethodNotAllowed,
            "no such operation (the coffer has no delete)",
        ));
    }
    if let Err(e) = auth::check_auth(state, call, req) {
        log::info!(
            "{} {:?}: authentication failed: {e}",
            call.op,
            call.resource()
        );
        return Err(call.error(ErrorCode::AuthFailed, "authentication failed"));
    }
    if let Some(k) = &call.key {
        if let Err(e) = rules::validate_key(k) {
            return Err(call.error(ErrorCode::InvalidObjectKey, &e.to_string()));
        }
    }
    if !call.coffer.is_empty() && call.op != Op::PutCoffer {
        match state.disk.coffer(&call.coffer) {
            Ok(Some(_)) => {}
            Ok(None) => {
                let code = if matches!(call.op, Op::DeleteCoffer | Op::PutCofferLifecycle) {
                    ErrorCode::NoSuchCoffer
                } else {
                    ErrorCode::CofferNotFound
                };
                return Err(call.error(code, "no such coffer"));
            }
            Err(e) => return Err(call.fail(e)),
        }
    }
    let fault = state
        .faults
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .roll(call.op);
    if let Some(f) = &fault {
        state.stats.faults.fetch_add(1, Ordering::Relaxed);
        log::info!("{} {:?}: injecting fault {f:?}", call.op, call.resource());
    }
    match &fault {
        Some(Fault::Unavailable) => {
            Err(call.error(ErrorCode::ServiceUnavailable, "injected fault"))
        }
        Some(Fault::Internal) => Err(call.error(ErrorCode::InternalError, "injected fault")),
        Some(Fault::Reset) => Err(die(kill).await),
        Some(Fault::Slow(d)) if call.op != Op::CompleteMultipartUpload => {
            tokio::time::sleep(*d).await;
            Ok(fault)
        }
        _ => Ok(fault),
    }
}

/// Bodies up to this size are read and dropped before an early answer.
const EARLY_DRAIN: u64 = 64 << 20;

/// An answer given before the request's body was read. The body (up to
/// `EARLY_DRAIN`) is read and dropped first: closing a connection with unread
/// bytes resets it, and a client still sending would see the reset instead
/// of the answer (a 503 it would retry on, an error it should report).
async fn answer_early(req: Request<Incoming>, answer: Response<Body>) -> Response<Body> {
    use http_body_util::BodyExt;
    let declared = http::content_length(&req).unwrap_or(0);
    if declared > 0 && declared <= EARLY_DRAIN {
        let mut body = req.into_body();
        let drain = async { while let Some(Ok(_)) = body.frame().await {} };
        let _ = tokio::time::timeout(Duration::from_secs(30), drain).await;
    }
    answer
}

/// One CDCS operation: admitted (or answered early), then its handler.
async fn dispatch(
    state: &Arc<State>,
    kill: &Arc<Notify>,
    call: &Call,
    req: Request<Incoming>,
) -> Response<Body> {
    let fault = match admit(state, kill, call, &req).await {
        Ok(f) => f,
        Err(early) => return answer_early(req, early).await,
    };
    let resp = match call.op {
        Op::GetService => coffers::get_service(state, call),
        Op::PutCoffer => coffers::put_coffer(state, call, req).await,
        Op::DeleteCoffer => coffers::delete_coffer(state, call),
        Op::GetCoffer => coffers::get_coffer(state, call),
        Op::PutCofferLifecycle => coffers::put_lifecycle(state, call, req).await,
        Op::GetCofferLifecycle => coffers::get_document(state, call, true),
        Op::PutCofferPolicy => coffers::put_policy(state, call, req).await,
        Op::GetCofferPolicy => coffers::get_document(state, call, false),
        Op::DeleteCofferPolicy => coffers::delete_policy(state, call),
        Op::PutObject => objects::put_object(state, call, req).await,
        Op::GetObject => {
            let truncate = fault == Some(Fault::Truncate);
            objects::get_object(state, kill, call, &req, truncate).await
        }
        Op::HeadObject => objects::head_object(state, call),
        Op::ListMultipartUploads => multipart::list_uploads(state, call),
        Op::InitiateMultipartUpload => multipart::initiate(state, call, &req),
        Op::UploadPart => multipart::upload_part(state, call, req).await,
        Op::ListParts => multipart::list_parts(state, call),
        Op::CompleteMultipartUpload => multipart::complete(state, kill, call, req, fault).await,
        Op::AbortMultipartUpload => multipart::abort(state, call),
        // Answered above (MethodNotAllowed) or before dispatch (the rest).
        Op::MethodNotAllowed | Op::TestStats | Op::TestFaults | Op::TestUnknown | Op::Malformed => {
            call.error(ErrorCode::MethodNotAllowed, "no such operation")
        }
    };
    if fault == Some(Fault::ResetAfter) && call.op != Op::CompleteMultipartUpload {
        return die(kill).await;
    }
    resp
}
