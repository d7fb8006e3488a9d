//! `cofferfs serve`: a CDCS-compatible server on local disk (hyper on tokio).
//! Write-once and as strict as the service's documents; a key never becomes a path.
//! This file owns starting and stopping, the shared state, and the order every
//! request goes through (parse, count, authenticate, validate, draw a fault, run the
//! operation's handler). It must not know how any one operation is carried out.

mod auth;
mod conn;
mod disk;
mod error;
mod faults;
mod http;
mod listen;
mod op;
mod test_api;

pub use conn::{parse_conn_idle_timeout, parse_header_timeout, parse_max_connections, ConnLimits};

use crate::protocol::encode::url_encode;
use crate::protocol::rules;
use crate::protocol::sign::Credentials;
use crate::protocol::tolerant::from_body;
use crate::protocol::types::*;
use crate::protocol::ErrorCode;
use crate::protocol::{self as proto, time};
use bytes::Bytes;
use disk::ObjectRec;
use disk::{Disk, DiskError};
use error::{disk_error, error_json};
use faults::{Fault, Faults};
use http::{content_length, full, promised_md5, read_small, receive, stream};
use http::{empty, random_hex, Body};
use hyper::body::Incoming;
use hyper::StatusCode;
use hyper::{Request, Response};
use op::{Call, Op};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::UNIX_EPOCH;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
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

/// The checks every CDCS operation passes, its fault, then its handler.
async fn dispatch(
    state: &Arc<State>,
    kill: &Arc<Notify>,
    call: &Call,
    req: Request<Incoming>,
) -> Response<Body> {
    if call.op == Op::MethodNotAllowed {
        return call.error(
            ErrorCode::MethodNotAllowed,
            "no such operation (the coffer has no delete)",
        );
    }
    if let Err(e) = auth::check_auth(state, call, &req) {
        log::info!(
            "{} {:?}: authentication failed: {e}",
            call.op,
            call.resource()
        );
        return call.error(ErrorCode::AuthFailed, "authentication failed");
    }
    if let Some(k) = &call.key {
        if let Err(e) = rules::validate_key(k) {
            return call.error(ErrorCode::InvalidObjectKey, &e.to_string());
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
                return call.error(code, "no such coffer");
            }
            Err(e) => return call.fail(e),
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
            return call.error(ErrorCode::ServiceUnavailable, "injected fault")
        }
        Some(Fault::Internal) => return call.error(ErrorCode::InternalError, "injected fault"),
        Some(Fault::Reset) => return die(kill).await,
        Some(Fault::Slow(d)) if call.op != Op::CompleteMultipartUpload => {
            tokio::time::sleep(*d).await
        }
        _ => {}
    }
    let resp = match call.op {
        Op::GetService => get_service(state, call),
        Op::PutCoffer => put_coffer(state, call, req).await,
        Op::DeleteCoffer => delete_coffer(state, call),
        Op::GetCoffer => get_coffer(state, call),
        Op::PutCofferLifecycle => put_lifecycle(state, call, req).await,
        Op::GetCofferLifecycle => get_document(state, call, true),
        Op::PutCofferPolicy => put_policy(state, call, req).await,
        Op::GetCofferPolicy => get_document(state, call, false),
        Op::DeleteCofferPolicy => delete_policy(state, call),
        Op::PutObject => put_object(state, call, req).await,
        Op::GetObject => {
            let truncate = fault == Some(Fault::Truncate);
            get_object(state, kill, call, &req, truncate).await
        }
        Op::HeadObject => head_object(state, call),
        Op::ListMultipartUploads => list_uploads(state, call),
        Op::InitiateMultipartUpload => initiate(state, call, &req),
        Op::UploadPart => upload_part(state, call, req).await,
        Op::ListParts => list_parts(state, call),
        Op::CompleteMultipartUpload => complete(state, kill, call, req, fault).await,
        Op::AbortMultipartUpload => abort(state, call),
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

fn iso_of(secs: u64) -> String {
    time::iso8601(UNIX_EPOCH + Duration::from_secs(secs))
}

/// The owner of everything in `coffer`: its APPID.
fn owner(coffer: &str) -> Owner {
    let appid = coffer.rsplit('-').next().unwrap_or("").to_string();
    Owner {
        id: appid.clone(),
        display_name: appid,
    }
}

/// A listing's `max-*` parameter: 1..=1000, 1000 when absent.
fn max_param(call: &Call, name: &str) -> Result<usize, Response<Body>> {
    match call.param(name) {
        None => Ok(rules::MAX_LIST_ENTRIES as usize),
        Some(v) => match v.parse::<u32>() {
            Ok(n) if (1..=rules::MAX_LIST_ENTRIES).contains(&n) => Ok(n as usize),
            _ => Err(call.error(
                ErrorCode::InvalidArgument,
                &format!("{name} must be 1..=1000"),
            )),
        },
    }
}

/// Whether a listing's keys go out URL-encoded (`encoding-type=url`).
fn url_encoding(call: &Call) -> Result<bool, Response<Body>> {
    match call.param("encoding-type") {
        None => Ok(false),
        Some("url") => Ok(true),
        Some(_) => Err(call.error(ErrorCode::InvalidArgument, "encoding-type must be url")),
    }
}

fn get_service(state: &State, call: &Call) -> Response<Body> {
    match state.disk.coffers() {
        Ok(list) => call.json(&ServiceResult {
            owner: Owner {
                id: "qcs::cam::uin/1:uin/1".into(),
                display_name: "1".into(),
            },
            coffers: CofferList {
                coffer: list
                    .into_iter()
                    .map(|(name, c)| CofferEntry {
                        name,
                        locations: Locations {
                            location: vec![c.location],
                        },
                        creation_date: iso_of(c.created),
                    })
                    .collect(),
            },
        }),
        Err(e) => call.fail(e),
    }
}

async fn put_coffer(state: &State, call: &Call, req: Request<Incoming>) -> Response<Body> {
    if !rules::validate_coffer_id(&call.coffer) {
        return call.error(ErrorCode::InvalidCofferName, "expected NAME-APPID");
    }
    let body = match read_small(req).await {
        Ok(b) => b,
        Err(e) => return call.error(ErrorCode::InvalidArgument, &e),
    };
    let location = if body.iter().all(|b| b.is_ascii_whitespace()) {
        "ap-local".to_string()
    } else {
        match from_body::<PutCofferRequest>(&body) {
            Ok(r) => r
                .locations
                .location
                .first()
                .cloned()
                .unwrap_or_else(|| "ap-local".into()),
            Err(e) => return call.error(ErrorCode::InvalidArgument, &format!("bad JSON: {e}")),
        }
    };
    match state.disk.create_coffer(&call.coffer, &location) {
        Ok(()) => call.ok(StatusCode::OK),
        Err(e) => call.fail(e),
    }
}

fn delete_coffer(state: &State, call: &Call) -> Response<Body> {
    match state.disk.delete_coffer(&call.coffer) {
        Ok(()) => call.ok(StatusCode::NO_CONTENT),
        Err(e) => call.fail(e),
    }
}

async fn put_lifecycle(state: &State, call: &Call, req: Request<Incoming>) -> Response<Body> {
    let md5 = req
        .headers()
        .get("content-md5")
        .and_then(|v| v.to_str().ok())
        .map(|s| s.to_string());
    let body = match read_small(req).await {
        Ok(b) => b,
        Err(e) => return call.error(ErrorCode::InvalidArgument, &e),
    };
    let Some(md5) = md5 else {
        return call.error(ErrorCode::InvalidArgument, "Content-MD5 is required");
    };
    match proto::parse_content_md5(&md5) {
        None => {
            return call.error(
                ErrorCode::InvalidDigest,
                "Content-MD5 is not base64 of 16 bytes",
            )
        }
        Some(d) if d != proto::md5(&body) => {
            return call.error(ErrorCode::BadDigest, "Content-MD5 mismatch")
        }
        _ => {}
    }
    let cfg: LifecycleConfig = match from_body(&body) {
        Ok(c) => c,
        Err(e) => return call.error(ErrorCode::InvalidArgument, &format!("bad JSON: {e}")),
    };
    if cfg.rule.is_empty()
        || cfg
            .rule
            .iter()
            .any(|r| !(1..=3650).contains(&r.expiration.days))
    {
        return call.error(ErrorCode::InvalidLifeCycle, "Days must be 1..=3650");
    }
    let text = serde_json::to_string(&cfg).unwrap_or_default();
    match state
        .disk
        .update_coffer(&call.coffer, |c| c.lifecycle = Some(text))
    {
        Ok(()) => call.ok(StatusCode::OK),
        Err(e) => call.fail(e),
    }
}

/// GetCofferLifecycle (`lifecycle`) or GetCofferPolicy: the stored document as sent.
fn get_document(state: &State, call: &Call, lifecycle: bool) -> Response<Body> {
    match state.disk.coffer(&call.coffer) {
        Ok(Some(c)) => match if lifecycle { c.lifecycle } else { c.policy } {
            Some(body) => call
                .base(StatusCode::OK)
                .header("content-type", "application/json")
                .body(full(body))
                .unwrap_or_else(|_| Response::new(empty())),
            None if lifecycle => {
                call.error(ErrorCode::NoSuchLifecycleConfiguration, "no lifecycle")
            }
            None => call.error(ErrorCode::NoSuchCofferPolicy, "no policy"),
        },
        Ok(None) => call.error(ErrorCode::CofferNotFound, "no such coffer"),
        Err(e) => call.fail(e),
    }
}

async fn put_policy(state: &State, call: &Call, req: Request<Incoming>) -> Response<Body> {
    match read_small(req).await {
        Ok(b) if serde_json::from_slice::<serde_json::Value>(&b).is_ok() => {
            let text = String::from_utf8_lossy(&b).to_string();
            match state
                .disk
                .update_coffer(&call.coffer, |c| c.policy = Some(text))
            {
                Ok(()) => call.ok(StatusCode::OK),
                Err(e) => call.fail(e),
            }
        }
        _ => call.error(ErrorCode::PolicyFormatCheckFailed, "policy is not JSON"),
    }
}

fn delete_policy(state: &State, call: &Call) -> Response<Body> {
    match state.disk.update_coffer(&call.coffer, |c| c.policy = None) {
        Ok(()) => call.ok(StatusCode::OK),
        Err(e) => call.fail(e),
    }
}

/// GetCoffer: one page of the coffer's objects.
fn get_coffer(state: &State, call: &Call) -> Response<Body> {
    let max = match max_param(call, "max-keys") {
        Ok(m) => m,
        Err(r) => return r,
    };
    let encode = match url_encoding(call) {
        Ok(e) => e,
        Err(r) => return r,
    };
    let prefix = call.param("prefix").unwrap_or("");
    if let Err(e) = rules::validate_prefix(prefix) {
        return call.error(ErrorCode::InvalidObjectPrefix, &e.to_string());
    }
    let marker = call.param("marker").unwrap_or("");
    let (objs, truncated) = match state.disk.list(&call.coffer, prefix, marker, max) {
        Ok(x) => x,
        Err(e) => return call.fail(e),
    };
    let enc = |s: &str| if encode { url_encode(s) } else { s.to_string() };
    let next_marker = if truncated {
        objs.last().map(|(k, _)| enc(k)).unwrap_or_default()
    } else {
        String::new()
    };
    call.json(&ListCofferResult {
        name: call.coffer.clone(),
        encoding_type: if encode { "url".into() } else { String::new() },
        prefix: enc(prefix),
        marker: enc(marker),
        max_keys: max as u32,
        is_truncated: truncated,
        next_marker,
        locations: Locations {
            location: vec!["ap-local".into()],
        },
        contents: objs
            .into_iter()
            .map(|(k, o)| ObjectEntry {
                key: enc(&k),
                last_modified: iso_of(o.mtime),
                etag: o.etag,
                size: o.size,
                owner: owner(&call.coffer),
            })
            .collect(),
        ..Default::default()
    })
}

async fn put_object(state: &State, call: &Call, req: Request<Incoming>) -> Response<Body> {
    let Some(len) = content_length(&req) else {
        return call.error(ErrorCode::InvalidArgument, "Content-Length is required");
    };
    if len == 0 {
        return call.error(ErrorCode::ObjectEmpty, "the object is empty");
    }
    if len > rules::MAX_PUT_SIZE {
        return call.error(ErrorCode::EntityTooLarge, "PutObject is limited to 5 GiB");
    }
    let md5 = match promised_md5(call, &req) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let ct = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_string();
    if let Err(e) = state.disk.begin_put(&call.coffer, call.key()) {
        return call.fail(e);
    }
    let result = match receive(state, call, req.into_body()).await {
        Ok(inc) => tokio::task::block_in_place(|| {
            state
                .disk
                .commit_put(&call.coffer, call.key(), inc, &ct, md5)
        }),
        Err(e) => Err(e),
    };
    state.disk.end_put(&call.coffer, call.key());
    match result {
        Ok(rec) => call
            .base(StatusCode::OK)
            .header("etag", rec.etag)
            .header("content-length", 0)
            .body(empty())
            .unwrap_or_else(|_| Response::new(empty())),
        Err(e) => call.fail(e),
    }
}

/// Parses a Range header against an object of `size` bytes: `(first, last)` inclusive.
fn parse_range(h: &str, size: u64) -> Result<(u64, u64), ErrorCode> {
    let spec = h
        .trim()
        .strip_prefix("bytes=")
        .ok_or(ErrorCode::InvalidArgument)?;
    if spec.contains(',') {
        return Err(ErrorCode::InvalidArgument);
    }
    let (a, b) = spec.split_once('-').ok_or(ErrorCode::InvalidArgument)?;
    let num = |s: &str| {
        s.trim()
            .parse::<u64>()
            .map_err(|_| ErrorCode::InvalidArgument)
    };
    match (a.trim().is_empty(), b.trim().is_empty()) {
        (true, true) => Err(ErrorCode::InvalidArgument),
        (true, false) => {
            let n = num(b)?;
            if n == 0 || size == 0 {
                return Err(ErrorCode::InvalidRange);
            }
            Ok((size.saturating_sub(n), size - 1))
        }
        (false, true) => {
            let first = num(a)?;
            if first >= size {
                return Err(ErrorCode::InvalidRange);
            }
            Ok((first, size - 1))
        }
        (false, false) => {
            let (first, last) = (num(a)?, num(b)?);
            if last < first {
                return Err(ErrorCode::InvalidArgument);
            }
            if first >= size {
                return Err(ErrorCode::InvalidRange);
            }
            Ok((first, last.min(size - 1)))
        }
    }
}

fn object_headers(
    call: &Call,
    status: StatusCode,
    o: &ObjectRec,
) -> hyper::http::response::Builder {
    call.base(status)
        .header("etag", &o.etag)
        .header(
            "last-modified",
            time::rfc1123(UNIX_EPOCH + Duration::from_secs(o.mtime)),
        )
        .header("content-type", &o.content_type)
}

fn head_object(state: &State, call: &Call) -> Response<Body> {
    match state.disk.object(&call.coffer, call.key()) {
        Ok(Some(o)) => object_headers(call, StatusCode::OK, &o)
            .header("content-length", o.size)
            .body(empty())
            .unwrap_or_else(|_| Response::new(empty())),
        Ok(None) => call.error(ErrorCode::ObjectNotExists, "no such object"),
        Err(e) => call.fail(e),
    }
}

async fn get_object(
    state: &Arc<State>,
    kill: &Arc<Notify>,
    call: &Call,
    req: &Request<Incoming>,
    truncate: bool,
) -> Response<Body> {
    let o = match state.disk.object(&call.coffer, call.key()) {
        Ok(Some(o)) => o,
        Ok(None) => return call.error(ErrorCode::ObjectNotExists, "no such object"),
        Err(e) => return call.fail(e),
    };
    let range = match req.headers().get("range").map(|v| v.to_str().unwrap_or("")) {
        None => None,
        Some(h) => match parse_range(h, o.size) {
            Ok(r) => Some(r),
            Err(code) => return call.error(code, "unsatisfiable or malformed Range"),
        },
    };
    let (first, last) = range.unwrap_or((0, o.size.saturating_sub(1)));
    let len = if o.size == 0 { 0 } else { last - first + 1 };
    let send_len = if truncate { len / 2 } else { len };
    let pieces = state.disk.pieces(&o);
    let (tx, rx) = mpsc::channel(4);
    let stats_state = Arc::clone(state);
    let kill2 = Arc::clone(kill);
    let resource = call.resource();
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Seek, SeekFrom};
        // `first..first+send_len` of the object, across its files in order.
        let result = (|| -> std::io::Result<()> {
            let mut skip = first;
            let mut left = send_len;
            for (path, size) in &pieces {
                if left == 0 {
                    break;
                }
                if skip >= *size {
                    skip -= size;
                    continue;
                }
                let at = |e: std::io::Error| {
                    std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
                };
                let mut f = std::fs::File::open(path).map_err(at)?;
                f.seek(SeekFrom::Start(skip)).map_err(at)?;
                let mut here = (size - skip).min(left);
                skip = 0;
                while here > 0 {
                    let mut buf = vec![0u8; here.min(256 * 1024) as usize];
                    f.read_exact(&mut buf).map_err(at)?;
                    here -= buf.len() as u64;
                    left -= buf.len() as u64;
                    stats_state
                        .stats
                        .bytes_out
                        .fetch_add(buf.len() as u64, Ordering::Relaxed);
                    if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                        return Ok(());
                    }
                }
            }
            if left > 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the object's files are shorter than its record",
                ));
            }
            Ok(())
        })();
        if let Err(e) = result {
            log::error!("reading {resource:?}: {e}");
            let _ = tx.blocking_send(Err(e));
        }
        if truncate {
            std::thread::sleep(Duration::from_millis(50));
            kill2.notify_one();
        }
    });
    let mut b = object_headers(
        call,
        if range.is_some() {
            StatusCode::PARTIAL_CONTENT
        } else {
            StatusCode::OK
        },
        &o,
    )
    .header("content-length", len);
    if range.is_some() {
        b = b.header("content-range", format!("bytes {first}-{last}/{}", o.size));
    }
    b.body(stream(rx))
        .unwrap_or_else(|_| Response::new(empty()))
}

fn ctime_of(secs: u64) -> String {
    time::ctime(UNIX_EPOCH + Duration::from_secs(secs))
}

/// InitiateMultipartUpload: a new upload id for the key.
fn initiate(state: &State, call: &Call, req: &Request<Incoming>) -> Response<Body> {
    let ct = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_string();
    match state.disk.initiate(&call.coffer, call.key(), &ct) {
        Ok(id) => call.json(&InitiateResult {
            coffer: call.coffer.clone(),
            key: call.key().to_string(),
            upload_id: id,
        }),
        Err(e) => call.fail(e),
    }
}

/// AbortMultipartUpload: the upload and its parts go.
fn abort(state: &State, call: &Call) -> Response<Body> {
    let id = call.param("uploadId").unwrap_or("");
    match state.disk.abort(&call.coffer, call.key(), id) {
        Ok(()) => call.ok(StatusCode::NO_CONTENT),
        Err(e) => call.fail(e),
    }
}

async fn upload_part(state: &State, call: &Call, req: Request<Incoming>) -> Response<Body> {
    let n = match call.param("partNumber").map(|v| v.parse::<u32>()) {
        Some(Ok(n)) if rules::valid_part_number(n) => n,
        _ => return call.error(ErrorCode::InvalidArgument, "partNumber must be 1..=10000"),
    };
    let id = call.param("uploadId").unwrap_or("").to_string();
    let Some(len) = content_length(&req) else {
        return call.error(ErrorCode::InvalidArgument, "Content-Length is required");
    };
    if len > rules::MAX_PART_SIZE {
        return call.error(ErrorCode::EntityTooLarge, "parts are limited to 5 GiB");
    }
    let md5 = match promised_md5(call, &req) {
        Ok(m) => m,
        Err(r) => return r,
    };
    if let Err(e) = state.disk.upload(&call.coffer, call.key(), &id) {
        return call.fail(e);
    }
    let result = match receive(state, call, req.into_body()).await {
        Ok(inc) => tokio::task::block_in_place(|| {
            state
                .disk
                .commit_part(&call.coffer, call.key(), &id, n, inc, md5)
        }),
        Err(e) => Err(e),
    };
    match result {
        Ok(p) => call
            .base(StatusCode::OK)
            .header("etag", format!("\"{}\"", p.md5))
            .header("content-length", 0)
            .body(empty())
            .unwrap_or_else(|_| Response::new(empty())),
        Err(e) => call.fail(e),
    }
}

fn list_uploads(state: &State, call: &Call) -> Response<Body> {
    let max = match max_param(call, "max-uploads") {
        Ok(m) => m,
        Err(r) => return r,
    };
    let encode = match url_encoding(call) {
        Ok(e) => e,
        Err(r) => return r,
    };
    let prefix = call.param("prefix").unwrap_or("");
    let marker = call.param("upload-id-marker").unwrap_or("");
    let all = match state.disk.uploads(&call.coffer) {
        Ok(u) => u,
        Err(e) => return call.fail(e),
    };
    let mut matching: Vec<_> = all
        .into_iter()
        .filter(|(_, u)| {
            u.key.starts_with(prefix) && (marker.is_empty() || u.key.as_str() > marker)
        })
        .collect();
    let truncated = matching.len() > max;
    matching.truncate(max);
    let enc = |s: &str| if encode { url_encode(s) } else { s.to_string() };
    call.json(&ListUploadsResult {
        coffer: call.coffer.clone(),
        encoding_type: if encode { "url".into() } else { String::new() },
        upload_id_marker: enc(marker),
        is_truncated: truncated,
        next_upload_id_marker: if truncated {
            matching
                .last()
                .map(|(_, u)| enc(&u.key))
                .unwrap_or_default()
        } else {
            String::new()
        },
        prefix: enc(prefix),
        max_uploads: max as u32,
        upload: matching
            .into_iter()
            .map(|(id, u)| UploadEntry {
                key: enc(&u.key),
                upload_id: id,
                initiator: owner(&call.coffer),
                owner: owner(&call.coffer),
                initiated: ctime_of(u.initiated),
            })
            .collect(),
    })
}

fn list_parts(state: &State, call: &Call) -> Response<Body> {
    let id = call.param("uploadId").unwrap_or("");
    if let Err(e) = state.disk.upload(&call.coffer, call.key(), id) {
        return call.fail(e);
    }
    let max = match max_param(call, "max-parts") {
        Ok(m) => m,
        Err(r) => return r,
    };
    let marker: u32 = match call.param("part-number-marker").map(|m| m.parse::<u32>()) {
        None => 0,
        Some(Ok(m)) => m,
        Some(Err(_)) => return call.error(ErrorCode::InvalidArgument, "part-number-marker"),
    };
    let mut parts: Vec<_> = match state.disk.parts(id) {
        Ok(p) => p.into_iter().filter(|(n, _)| *n > marker).collect(),
        Err(e) => return call.fail(e),
    };
    let truncated = parts.len() > max;
    parts.truncate(max);
    call.json(&ListPartsResult {
        coffer: call.coffer.clone(),
        key: call.key().to_string(),
        upload_id: id.to_string(),
        initiator: owner(&call.coffer),
        owner: owner(&call.coffer),
        part_number_marker: marker.to_string(),
        is_truncated: truncated,
        next_part_number_marker: parts.last().map(|(n, _)| n.to_string()).unwrap_or_default(),
        max_parts: max as u32,
        part: parts
            .into_iter()
            .map(|(n, p)| PartEntry {
                part_number: n,
                last_modified: ctime_of(p.mtime),
                etag: format!("\"{}\"", p.md5),
                size: p.size,
            })
            .collect(),
        ..Default::default()
    })
}

async fn complete(
    state: &Arc<State>,
    kill: &Arc<Notify>,
    call: &Call,
    req: Request<Incoming>,
    fault: Option<Fault>,
) -> Response<Body> {
    let id = call.param("uploadId").unwrap_or("").to_string();
    if content_length(&req).is_none() {
        return call.error(ErrorCode::InvalidArgument, "Content-Length is required");
    }
    let body = match read_small(req).await {
        Ok(b) => b,
        Err(e) => return call.error(ErrorCode::InvalidArgument, &e),
    };
    let parsed: CompleteRequest = match from_body(&body) {
        Ok(r) => r,
        Err(e) => return call.error(ErrorCode::InvalidArgument, &format!("bad JSON: {e}")),
    };
    let listed: Vec<(u32, String)> = parsed
        .part
        .iter()
        .map(|p| (p.part_number, proto::unquote_etag(&p.etag).to_string()))
        .collect();
    if let Err(e) = state
        .disk
        .check_complete(&call.coffer, call.key(), &id, &listed)
    {
        return call.fail(e);
    }
    if let Err(e) = state.disk.lock_complete(&id) {
        return call.fail(e);
    }
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    let disk = Arc::clone(&state.disk);
    let unlock = Arc::clone(&state.disk);
    let (coffer, key) = (call.coffer.clone(), call.key().to_string());
    let interval = state.cfg.keepalive_interval.max(Duration::from_millis(10));
    let kill = Arc::clone(kill);
    let resource = call.resource();
    let request_id = call.request_id.clone();
    tokio::spawn(async move {
        let hold = match fault {
            Some(Fault::Slow(d) | Fault::Stall(d)) => d,
            Some(Fault::Cut(d)) => d * 2,
            _ => Duration::ZERO,
        };
        let silent = matches!(fault, Some(Fault::Stall(_)));
        let cut_at = match fault {
            Some(Fault::Cut(d)) => Some(tokio::time::Instant::now() + d),
            _ => None,
        };
        let after200 = fault == Some(Fault::After200);
        let (c2, k2, id2) = (coffer.clone(), key.clone(), id.clone());
        let work = tokio::task::spawn_blocking(move || {
            std::thread::sleep(hold);
            if after200 {
                return Err(DiskError::code(
                    ErrorCode::InternalError,
                    "injected fault after 200",
                ));
            }
            disk.complete(&c2, &k2, &id2, &listed)
        });
        tokio::pin!(work);
        let mut tick = tokio::time::interval(interval);
        let cut = tokio::time::sleep_until(
            cut_at
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(365 * 86400)),
        );
        tokio::pin!(cut);
        let mut cutting = cut_at.is_some();
        let result = loop {
            tokio::select! {
                r = &mut work => break r,
                _ = tick.tick() => {
                    if !silent {
                        let _ = tx.send(Ok(Bytes::from_static(b" "))).await;
                    }
                }
                // The connection goes; the merge (spawn_blocking) goes on.
                _ = &mut cut, if cutting => {
                    cutting = false;
                    kill.notify_one();
                }
            }
        };
        unlock.unlock_complete(&id);
        let body = match result {
            Ok(Ok(rec)) => serde_json::to_vec(&CompleteResult {
                locations: Locations {
                    location: vec!["ap-local".into()],
                },
                coffer: coffer.clone(),
                key: key.clone(),
                etag: rec.etag,
            })
            .unwrap_or_default(),
            Ok(Err(e)) => {
                let context = format!("complete of {resource:?} failed");
                let (code, msg) = disk_error(e, &context, "complete failed");
                error_json(&code, &msg, &resource, &request_id).1
            }
            Err(join) => {
                let msg = format!("complete task failed: {join}");
                error_json(&ErrorCode::InternalError, &msg, &resource, &request_id).1
            }
        };
        if fault == Some(Fault::ResetAfter) {
            kill.notify_one();
        } else {
            let _ = tx.send(Ok(Bytes::from(body))).await;
        }
    });
    call.base(StatusCode::OK)
        .header("content-type", "application/json")
        .body(stream(rx))
        .unwrap_or_else(|_| Response::new(empty()))
}
