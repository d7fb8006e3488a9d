//! `cofferfs serve`: a CDCS-compatible server on local disk (hyper on tokio).
//! Write-once and as strict as the service's documents; a key never becomes a path.

mod conn;
mod disk;
mod faults;

pub use conn::{parse_conn_idle_timeout, parse_header_timeout, parse_max_connections, ConnLimits};

use crate::protocol::encode::{parse_query, url_decode, url_encode};
use crate::protocol::sign::{self, Credentials};
use crate::protocol::tolerant::from_body;
use crate::protocol::types::*;
use crate::protocol::{self as proto, rules, time, ErrorBody, ErrorCode};
use bytes::Bytes;
use disk::{Disk, DiskError, Incoming as DiskIncoming, ObjectRec};
use faults::{Fault, Faults};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, watch, Notify, Semaphore};

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

type Body = BoxBody<Bytes, std::io::Error>;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

fn empty() -> Body {
    full(Bytes::new())
}

fn stream(rx: mpsc::Receiver<Result<Bytes, std::io::Error>>) -> Body {
    let s = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item.map(Frame::data), rx))
    });
    StreamBody::new(s).boxed()
}

#[derive(Default)]
struct Stats {
    requests: Mutex<BTreeMap<String, u64>>,
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
        .spawn(move || runtime.block_on(serve(listener, state, stop_rx)))
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

async fn serve(
    listener: std::net::TcpListener,
    state: Arc<State>,
    mut stop: watch::Receiver<bool>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            log::error!("cannot listen: {e}");
            return;
        }
    };
    let mut limits = state.cfg.limits;
    limits.max_connections = limits.max_connections.max(1); // a library caller's 0
    let registry = Arc::new(conn::Registry::default());
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let expiry = tokio::spawn(expire_loop(Arc::clone(&state)));
    'accept: loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => break,
        };
        let (socket, _) = match accepted {
            Ok(x) => x,
            Err(e) => {
                log::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let permit = match Arc::clone(&slots).try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                // At the cap: make room by closing the connection idle longest (a slow
                // client's half header counts as idle), so a new client is served at
                // once; when all are busy, wait for one to end.
                registry.log_cap(&limits);
                loop {
                    registry.evict_oldest_idle();
                    tokio::select! {
                        p = Arc::clone(&slots).acquire_owned() => match p {
                            Ok(p) => break p,
                            Err(_) => break 'accept,
                        },
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                        _ = stop.changed() => break 'accept,
                    }
                }
            }
        };
        let _ = socket.set_nodelay(true);
        let fd = std::os::fd::AsRawFd::as_raw_fd(&socket);
        let state = Arc::clone(&state);
        let mut stop = stop.clone();
        let registry = Arc::clone(&registry);
        let conn = registry.add();
        tokio::spawn(async move {
            let kill = Arc::new(Notify::new());
            let k = Arc::clone(&kill);
            let c = Arc::clone(&conn);
            let svc = hyper::service::service_fn(move |req| {
                let state = Arc::clone(&state);
                let kill = Arc::clone(&k);
                let busy = c.busy();
                async move {
                    let resp = handle(state, kill, req).await;
                    // The guard rides in the answer's body: the connection stays busy
                    // until the last byte of a streamed answer is out.
                    Ok::<_, Infallible>(resp.map(|b| {
                        b.map_frame(move |f| {
                            let _ = &busy;
                            f
                        })
                        .boxed()
                    }))
                }
            });
            let io = hyper_util::rt::TokioIo::new(conn::Watched::new(socket, Arc::clone(&conn)));
            // No hyper timer: the header and idle limits are ours (`conn`), because
            // hyper's header timeout also runs between requests.
            let serving = hyper::server::conn::http1::Builder::new().serve_connection(io, svc);
            tokio::pin!(serving);
            tokio::select! {
                _ = serving.as_mut() => {}
                which = conn.expired(&limits) => registry.log_limit(which, &limits),
                _ = conn.evicted() => log::debug!("closed an idle connection to make room"),
                _ = kill.notified() => {
                    // A real abort: linger 0 makes the close an RST. The fd is still
                    // open here; the connection (and socket) drop right after.
                    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
                    // SAFETY: fd belongs to the socket owned by `serving`, alive until it drops below.
                    unsafe {
                        libc::setsockopt(
                            fd,
                            libc::SOL_SOCKET,
                            libc::SO_LINGER,
                            &linger as *const libc::linger as *const libc::c_void,
                            std::mem::size_of::<libc::linger>() as libc::socklen_t,
                        );
                    }
                }
                _ = stop.changed() => {
                    serving.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), serving.as_mut()).await;
                }
            }
            registry.remove(&conn);
            drop(permit);
        });
    }
    expiry.abort();
    let deadline = Instant::now() + Duration::from_secs(5);
    while slots.available_permits() < limits.max_connections && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

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

fn random_hex(n: usize) -> String {
    let bytes: Vec<u8> = (0..n).map(|_| rand::random::<u8>()).collect();
    proto::hex(&bytes)
}

/// The request, parsed far enough to dispatch.
struct Call {
    op: &'static str,
    coffer: String,
    key: Option<String>,
    params: Vec<(String, String)>,
    request_id: String,
    head: bool,
}

impl Call {
    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name || k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn key(&self) -> &str {
        self.key.as_deref().unwrap_or("")
    }

    fn resource(&self) -> String {
        match &self.key {
            Some(k) => format!("{}/{k}", self.coffer),
            None => self.coffer.clone(),
        }
    }

    fn base(&self, status: StatusCode) -> hyper::http::response::Builder {
        Response::builder()
            .status(status)
            .header(proto::REQUEST_ID_HEADER, &self.request_id)
            .header("server", "tencent-cdcs")
    }

    fn error(&self, code: ErrorCode, message: &str) -> Response<Body> {
        let trace = random_hex(12);
        let status =
            StatusCode::from_u16(code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = ErrorBody {
            code: code.as_str().to_string(),
            message: message.to_string(),
            resource: self.resource(),
            request_id: self.request_id.clone(),
            trace_id: trace.clone(),
        };
        let b = self
            .base(status)
            .header(proto::TRACE_ID_HEADER, trace)
            .header("content-type", "application/json");
        let body = if self.head {
            empty()
        } else {
            full(serde_json::to_vec(&body).unwrap_or_default())
        };
        b.body(body).unwrap_or_else(|_| Response::new(empty()))
    }

    fn json<T: serde::Serialize>(&self, v: &T) -> Response<Body> {
        let bytes = serde_json::to_vec(v).unwrap_or_default();
        self.base(StatusCode::OK)
            .header("content-type", "application/json")
            .header("content-length", bytes.len())
            .body(full(bytes))
            .unwrap_or_else(|_| Response::new(empty()))
    }

    fn ok(&self, status: StatusCode) -> Response<Body> {
        self.base(status)
            .header("content-length", 0)
            .body(empty())
            .unwrap_or_else(|_| Response::new(empty()))
    }

    fn fail(&self, e: DiskError) -> Response<Body> {
        match e {
            DiskError::Code(c, m) => self.error(c, &m),
            DiskError::Io(m) => {
                log::error!("{} {:?}: {m}", self.op, self.resource());
                self.error(ErrorCode::InternalError, "storage failure")
            }
        }
    }
}

fn operation(
    method: &Method,
    coffer: Option<&str>,
    has_key: bool,
    q: &dyn Fn(&str) -> bool,
) -> &'static str {
    match (coffer, has_key) {
        (None, _) => match *method {
            Method::GET => "GetService",
            _ => "MethodNotAllowed",
        },
        (Some(_), false) => match *method {
            Method::PUT if q("lifecycle") => "PutCofferLifecycle",
            Method::PUT if q("policy") => "PutCofferPolicy",
            Method::PUT => "PutCoffer",
            Method::GET if q("uploads") => "ListMultipartUploads",
            Method::GET if q("lifecycle") => "GetCofferLifecycle",
            Method::GET if q("policy") => "GetCofferPolicy",
            Method::GET => "GetCoffer",
            Method::DELETE if q("policy") => "DeleteCofferPolicy",
            Method::DELETE => "DeleteCoffer",
            _ => "MethodNotAllowed",
        },
        (Some(_), true) => match *method {
            Method::PUT if q("partNumber") || q("uploadId") => "UploadPart",
            Method::PUT => "PutObject",
            Method::GET if q("uploadId") => "ListParts",
            Method::GET => "GetObject",
            Method::HEAD => "HeadObject",
            Method::POST if q("uploads") => "InitiateMultipartUpload",
            Method::POST if q("uploadId") => "CompleteMultipartUpload",
            Method::DELETE if q("uploadId") => "AbortMultipartUpload",
            _ => "MethodNotAllowed",
        },
    }
}

async fn handle(state: Arc<State>, kill: Arc<Notify>, req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let path = req.uri().path().to_string();
    let request_id = random_hex(16);
    let head = req.method() == Method::HEAD;
    let trimmed = path.strip_prefix('/').unwrap_or(&path);
    let (raw_coffer, raw_key) = match trimmed.split_once('/') {
        Some((c, k)) => (c, Some(k)),
        None => (trimmed, None),
    };
    let params = parse_query(req.uri().query().unwrap_or(""));
    let coffer = url_decode(raw_coffer);
    let key = raw_key.map(url_decode);
    let mut call = Call {
        op: "Unknown",
        coffer: coffer.clone().unwrap_or_default(),
        key: key.clone().flatten(),
        params: params.clone().unwrap_or_default(),
        request_id,
        head,
    };
    let (Some(params), Some(coffer), Some(key)) =
        (params, coffer, key.map_or(Some(None), |k| k.map(Some)))
    else {
        return call.error(
            ErrorCode::InvalidArgument,
            "path or query is not valid UTF-8 percent-encoding",
        );
    };
    let coffer_opt = (!coffer.is_empty()).then_some(coffer.as_str());
    let q = |n: &str| {
        params
            .iter()
            .any(|(k, _)| k == n || k.eq_ignore_ascii_case(n))
    };
    if coffer == "-" {
        return test_endpoint(&state, &mut call, req).await;
    }
    call.op = operation(req.method(), coffer_opt, key.is_some(), &q);
    {
        let mut r = state
            .stats
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *r.entry(call.op.to_string()).or_default() += 1;
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

/// `/-/stats` and `/-/faults`. Without `test_api` they do not exist: the 404 of any
/// unknown coffer (`-` is none). With credentials they need a signature like any request.
async fn test_endpoint(state: &State, call: &mut Call, req: Request<Incoming>) -> Response<Body> {
    if !state.cfg.test_api {
        return call.error(ErrorCode::CofferNotFound, "no such coffer");
    }
    call.op = "TestApi";
    if let Err(e) = check_auth(state, call, &req) {
        log::info!("test API {:?}: authentication failed: {e}", call.resource());
        return call.error(ErrorCode::AuthFailed, "authentication failed");
    }
    match (req.method(), call.key()) {
        (&Method::GET, "stats") => {
            let s = &state.stats;
            let requests = s.requests.lock().unwrap_or_else(|e| e.into_inner()).clone();
            call.json(&serde_json::json!({
                "requests": requests,
                "bytes_in": s.bytes_in.load(Ordering::Relaxed),
                "bytes_out": s.bytes_out.load(Ordering::Relaxed),
                "faults": s.faults.load(Ordering::Relaxed),
            }))
        }
        (&Method::POST, "faults") => {
            let body = match read_small(req).await {
                Ok(b) => b,
                Err(e) => return call.error(ErrorCode::InvalidArgument, &e),
            };
            let spec = String::from_utf8_lossy(&body).to_string();
            match Faults::parse(&spec, state.cfg.fault_seed) {
                Ok(f) => {
                    *state.faults.lock().unwrap_or_else(|e| e.into_inner()) = f;
                    log::info!("faults now {spec:?}");
                    call.json(&serde_json::json!({}))
                }
                Err(e) => call.error(ErrorCode::InvalidArgument, &e),
            }
        }
        _ => call.error(ErrorCode::CofferNotFound, "no such test endpoint"),
    }
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn check_auth(state: &State, call: &Call, req: &Request<Incoming>) -> Result<(), sign::AuthError> {
    let Some(creds) = &state.cfg.credentials else {
        return Ok(());
    };
    let header = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .ok_or(sign::AuthError::Missing)?;
    let auth = sign::parse_authorization(header)?;
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .filter_map(|(k, v)| {
            v.to_str()
                .ok()
                .map(|v| (k.as_str().to_string(), v.to_string()))
        })
        .collect();
    let path = match (&call.coffer, &call.key) {
        (c, _) if c.is_empty() => "/".to_string(),
        (c, Some(k)) => format!("/{c}/{k}"),
        (c, None) => format!("/{c}"),
    };
    sign::verify(
        &auth,
        &creds.secret_id,
        &creds.secret_key,
        now_unix(),
        &sign::Signable {
            method: req.method().as_str(),
            path: &path,
            params: &call.params,
            headers: &headers,
        },
    )?;
    if let Some(token) = &creds.session_token {
        let sent = req
            .headers()
            .get(proto::SECURITY_TOKEN_HEADER)
            .and_then(|v| v.to_str().ok());
        if sent != Some(token.as_str()) {
            return Err(sign::AuthError::Token);
        }
    }
    Ok(())
}

/// Waits forever: the connection is being killed and this request dies with it.
async fn die(kill: &Notify) -> Response<Body> {
    kill.notify_one();
    std::future::pending::<()>().await;
    Response::new(empty())
}

async fn dispatch(
    state: &Arc<State>,
    kill: &Arc<Notify>,
    call: &Call,
    req: Request<Incoming>,
) -> Response<Body> {
    if call.op == "MethodNotAllowed" {
        return call.error(
            ErrorCode::MethodNotAllowed,
            "no such operation (the coffer has no delete)",
        );
    }
    if let Err(e) = check_auth(state, call, &req) {
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
    if !call.coffer.is_empty() && call.op != "PutCoffer" {
        match state.disk.coffer(&call.coffer) {
            Ok(Some(_)) => {}
            Ok(None) => {
                let code = if matches!(call.op, "DeleteCoffer" | "PutCofferLifecycle") {
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
        Some(Fault::Slow(d)) if call.op != "CompleteMultipartUpload" => {
            tokio::time::sleep(*d).await
        }
        _ => {}
    }
    let resp = match call.op {
        "GetService" => get_service(state, call),
        "PutCoffer" => put_coffer(state, call, req).await,
        "DeleteCoffer" => match state.disk.delete_coffer(&call.coffer) {
            Ok(()) => call.ok(StatusCode::NO_CONTENT),
            Err(e) => call.fail(e),
        },
        "GetCoffer" => get_coffer(state, call),
        "ListMultipartUploads" => list_uploads(state, call),
        "PutCofferLifecycle" => put_lifecycle(state, call, req).await,
        "GetCofferLifecycle" | "GetCofferPolicy" => {
            let lifecycle = call.op == "GetCofferLifecycle";
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
        "PutCofferPolicy" => match read_small(req).await {
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
        },
        "DeleteCofferPolicy" => match state.disk.update_coffer(&call.coffer, |c| c.policy = None) {
            Ok(()) => call.ok(StatusCode::OK),
            Err(e) => call.fail(e),
        },
        "PutObject" => put_object(state, call, req).await,
        "UploadPart" => upload_part(state, call, req).await,
        "GetObject" => get_object(state, kill, call, &req, fault == Some(Fault::Truncate)).await,
        "HeadObject" => head_object(state, call),
        "InitiateMultipartUpload" => {
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
        "ListParts" => list_parts(state, call),
        "CompleteMultipartUpload" => complete(state, kill, call, req, fault).await,
        "AbortMultipartUpload" => {
            let id = call.param("uploadId").unwrap_or("");
            match state.disk.abort(&call.coffer, call.key(), id) {
                Ok(()) => call.ok(StatusCode::NO_CONTENT),
                Err(e) => call.fail(e),
            }
        }
        _ => call.error(ErrorCode::MethodNotAllowed, "no such operation"),
    };
    if fault == Some(Fault::ResetAfter) && call.op != "CompleteMultipartUpload" {
        return die(kill).await;
    }
    resp
}

async fn read_small(req: Request<Incoming>) -> Result<Bytes, String> {
    let limited = http_body_util::Limited::new(req.into_body(), 1 << 20);
    limited
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|e| e.to_string())
}

fn ctime_of(secs: u64) -> String {
    time::ctime(UNIX_EPOCH + Duration::from_secs(secs))
}

fn iso_of(secs: u64) -> String {
    time::iso8601(UNIX_EPOCH + Duration::from_secs(secs))
}

fn owner(coffer: &str) -> Owner {
    let appid = coffer.rsplit('-').next().unwrap_or("").to_string();
    Owner {
        id: appid.clone(),
        display_name: appid,
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

fn url_encoding(call: &Call) -> Result<bool, Response<Body>> {
    match call.param("encoding-type") {
        None => Ok(false),
        Some("url") => Ok(true),
        Some(_) => Err(call.error(ErrorCode::InvalidArgument, "encoding-type must be url")),
    }
}

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

fn content_length(req: &Request<Incoming>) -> Option<u64> {
    req.headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// The `Content-MD5` a request promises: Ok(None) when absent, Err on a malformed one.
fn promised_md5(call: &Call, req: &Request<Incoming>) -> Result<Option<[u8; 16]>, Response<Body>> {
    match req.headers().get("content-md5") {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(proto::parse_content_md5)
            .map(Some)
            .ok_or_else(|| {
                call.error(
                    ErrorCode::InvalidDigest,
                    "Content-MD5 is not base64 of 16 bytes",
                )
            }),
    }
}

/// Streams a request body into a temp file, hashing as it goes. A body that breaks
/// off (the client went away before Content-Length bytes) is the client's fault:
/// 400 `IncompleteBody`, and the temp file goes with `inc`, so nothing is stored.
async fn receive(state: &State, call: &Call, body: Incoming) -> Result<DiskIncoming, DiskError> {
    let mut inc = tokio::task::block_in_place(|| state.disk.incoming())?;
    let mut body = body;
    let mut got = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            log::warn!(
                "{} {:?}: request body broke off after {got} bytes: {e}",
                call.op,
                call.resource()
            );
            DiskError::code(
                ErrorCode::IncompleteBody,
                format!("the request body ended after {got} bytes, before its Content-Length"),
            )
        })?;
        if let Ok(data) = frame.into_data() {
            got += data.len() as u64;
            state
                .stats
                .bytes_in
                .fetch_add(data.len() as u64, Ordering::Relaxed);
            tokio::task::block_in_place(|| inc.write(&data))?;
        }
    }
    Ok(inc)
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
            }),
            Ok(Err(e)) => {
                let (code, msg) = match e {
                    DiskError::Code(c, m) => (c, m),
                    DiskError::Io(m) => {
                        log::error!("complete of {resource:?} failed: {m}");
                        (ErrorCode::InternalError, "complete failed".to_string())
                    }
                };
                serde_json::to_vec(&ErrorBody {
                    code: code.as_str().into(),
                    message: msg,
                    resource: resource.clone(),
                    request_id: request_id.clone(),
                    trace_id: random_hex(12),
                })
            }
            Err(join) => serde_json::to_vec(&ErrorBody {
                code: "InternalError".into(),
                message: format!("complete task failed: {join}"),
                resource: resource.clone(),
                request_id: request_id.clone(),
                trace_id: random_hex(12),
            }),
        };
        if fault == Some(Fault::ResetAfter) {
            kill.notify_one();
        } else {
            let _ = tx.send(Ok(Bytes::from(body.unwrap_or_default()))).await;
        }
    });
    call.base(StatusCode::OK)
        .header("content-type", "application/json")
        .body(stream(rx))
        .unwrap_or_else(|_| Response::new(empty()))
}
