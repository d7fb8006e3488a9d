//! One HTTP exchange bounded by idle time only: a request fails when no byte has
//! moved (body sent, header or body byte received) for the idle timeout, never
//! because it takes long in total, since a Complete may stream spaces for minutes
//! and a large part may go up slowly. Knows nothing of CDCS; never retries.

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use reqwest::header::HeaderMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Request bodies are handed to the connection in slices this big, so progress
/// is seen at this granularity.
const UPLOAD_SLICE: usize = 64 << 10;

/// What came back: status, headers and the whole body.
pub(crate) struct Exchange {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

/// When bytes last moved on one exchange.
struct Progress {
    origin: Instant,
    last_ms: AtomicU64,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            origin: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.origin.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    fn idle(&self) -> Duration {
        self.origin
            .elapsed()
            .saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// A request body that notes each slice the connection takes: hyper asks for the
/// next one only when it has room, so a peer that stops reading stops the clock.
struct Upload {
    data: Bytes,
    sent: usize,
    progress: Arc<Progress>,
}

impl HttpBody for Upload {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let len = self.data.len();
        if self.sent >= len {
            return Poll::Ready(None);
        }
        let end = (self.sent + UPLOAD_SLICE).min(len);
        let slice = self.data.slice(self.sent..end);
        self.sent = end;
        self.progress.touch();
        Poll::Ready(Some(Ok(Frame::data(slice))))
    }

    fn is_end_stream(&self) -> bool {
        self.sent >= self.data.len()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact((self.data.len() - self.sent) as u64)
    }
}

/// Runs `fut` until it ends, or fails with `None` once nothing has moved for `idle`.
async fn within_idle<F: std::future::Future>(
    idle: Duration,
    progress: &Progress,
    fut: F,
) -> Option<F::Output> {
    tokio::pin!(fut);
    loop {
        let left = idle.saturating_sub(progress.idle());
        if left.is_zero() {
            return None;
        }
        tokio::select! {
            out = &mut fut => return Some(out),
            _ = tokio::time::sleep(left) => {}
        }
    }
}

/// Words for a reqwest error with its cause chain. The URL is left out: the key
/// is logged separately.
fn describe(e: &reqwest::Error) -> String {
    let mut s = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "cannot connect".to_string()
    } else {
        "connection failed".to_string()
    };
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// The connection pool and the runtime that drives it. Callers block on their
/// exchange from any thread that is not itself async.
pub(crate) struct Http {
    client: reqwest::Client,
    rt: Option<tokio::runtime::Runtime>,
}

impl Http {
    pub fn new(connect_timeout: Duration) -> Result<Http, String> {
        // Two workers: TLS and copying for many parallel transfers, without
        // taking the cores the callers need.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("cofferfs-http")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the HTTP runtime: {e}"))?;
        let client = {
            let _in_rt = rt.enter();
            reqwest::Client::builder()
                .connect_timeout(connect_timeout)
                .pool_idle_timeout(Duration::from_secs(30))
                .tcp_nodelay(true)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| format!("cannot build HTTP client: {e}"))?
        };
        Ok(Http {
            client,
            rt: Some(rt),
        })
    }

    /// For building requests; send them with `exchange`.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Sends `req` with `upload` as its body (Content-Length must be set) and
    /// reads the whole answer (none for HEAD), failing when nothing moves for
    /// `idle`. The error is a one-line description.
    pub fn exchange(
        &self,
        mut req: reqwest::Request,
        upload: Option<Bytes>,
        idle: Duration,
    ) -> Result<Exchange, String> {
        let rt = self.rt.as_ref().ok_or("the HTTP runtime has stopped")?;
        let progress = Arc::new(Progress::new());
        if let Some(data) = upload {
            *req.body_mut() = Some(reqwest::Body::wrap(Upload {
                data,
                sent: 0,
                progress: Arc::clone(&progress),
            }));
        }
        let head = req.method() == reqwest::Method::HEAD;
        let client = self.client.clone();
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        // Spawned rather than block_on: works whatever runtime the caller's
        // thread may belong to, and the task ends by itself (idle-bounded).
        rt.spawn(async move {
            let _ = tx.send(run(client, req, head, idle, progress).await);
        });
        rx.recv()
            .unwrap_or_else(|_| Err("the HTTP task ended without an answer".into()))
    }
}

impl Drop for Http {
    fn drop(&mut self) {
        // Never block (or panic, inside another runtime) when the last client goes.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

async fn run(
    client: reqwest::Client,
    req: reqwest::Request,
    head: bool,
    idle: Duration,
    progress: Arc<Progress>,
) -> Result<Exchange, String> {
    let idle_words = |what: &str| format!("no byte moved for {idle:?} {what} (idle timeout)");
    let mut resp = match within_idle(idle, &progress, client.execute(req)).await {
        Some(Ok(r)) => r,
        Some(Err(e)) => return Err(describe(&e)),
        None => return Err(idle_words("while sending or awaiting the answer")),
    };
    progress.touch();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let announced = headers
        .get(reqwest::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if head {
        return Ok(Exchange {
            status,
            headers,
            body: Vec::new(),
        });
    }
    // Sized from Content-Length (capped), so a block's buffer is not left with
    // up to twice its length of spare capacity.
    let mut body = Vec::with_capacity(announced.unwrap_or(0).min(64 << 20));
    loop {
        match within_idle(idle, &progress, resp.chunk()).await {
            Some(Ok(Some(chunk))) => {
                progress.touch();
                body.extend_from_slice(&chunk);
            }
            Some(Ok(None)) => break,
            Some(Err(e)) => {
                return Err(format!(
                    "answer body broken after {} bytes: {}",
                    body.len(),
                    describe(&e)
                ))
            }
            None => {
                return Err(idle_words(&format!(
                    "reading the answer, after {} bytes",
                    body.len()
                )))
            }
        }
    }
    if let Some(expected) = announced {
        if expected != body.len() {
            return Err(format!(
                "answer body truncated: {} of {expected} bytes",
                body.len()
            ));
        }
    }
    Ok(Exchange {
        status,
        headers,
        body,
    })
}
