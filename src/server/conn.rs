//! Connection limits of `cofferfs serve`: how long a connection may take to send a
//! request header, how long it may sit idle between requests, and how many may be open.
//! Owns the per-connection phase (header / busy / idle) and the cap; it never bounds a
//! request in progress (a slow upload, a long merge, a streamed answer) and never reads
//! a request.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Default of `--header-timeout`.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of `--conn-idle-timeout`.
pub const CONN_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default of `--max-connections`.
pub const MAX_CONNECTIONS: usize = 512;

/// The limits a server applies to its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// From a connection's first byte of a request (or its accept) to the end of the header.
    pub header_timeout: Duration,
    /// From the end of one answer to the first byte of the next request.
    pub idle_timeout: Duration,
    /// Open connections at most; at the cap the longest-waiting idle one is closed.
    pub max_connections: usize,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            header_timeout: HEADER_TIMEOUT,
            idle_timeout: CONN_IDLE_TIMEOUT,
            max_connections: MAX_CONNECTIONS,
        }
    }
}

fn parse_bounded(s: &str, what: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim()).map_err(|e| format!("{s:?}: {e}"))?;
    if !(Duration::from_millis(100)..=Duration::from_secs(3600)).contains(&d) {
        return Err(format!("{what} must be between 100ms and 1h"));
    }
    Ok(d)
}

/// Parses `--header-timeout` (100ms..=1h).
pub fn parse_header_timeout(s: &str) -> Result<Duration, String> {
    parse_bounded(s, "the header timeout")
}

/// Parses `--conn-idle-timeout` (100ms..=1h).
pub fn parse_conn_idle_timeout(s: &str) -> Result<Duration, String> {
    parse_bounded(s, "the connection idle timeout")
}

/// Parses `--max-connections` (1..=1000000).
pub fn parse_max_connections(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if (1..=1_000_000).contains(&n) => Ok(n),
        _ => Err(format!(
            "{s:?}: expected a number of connections, 1..=1000000"
        )),
    }
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Waiting for (the rest of) a request header since then.
    Head(Instant),
    /// A request is being served: never timed out here.
    Busy,
    /// Answered; nothing of the next request has arrived since then.
    Idle(Instant),
}

/// Which limit closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    Header,
    Idle,
}

/// One open connection, shared by its task, its socket wrapper and the registry.
pub struct Conn {
    id: u64,
    phase: Mutex<Phase>,
    evicted: AtomicBool,
    evict: Notify,
}

impl Conn {
    fn phase(&self) -> Phase {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, p: Phase) {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner()) = p;
    }

    /// Bytes arrived: on an idle connection they start the next request's header.
    fn arrived(&self) {
        let mut p = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        if let Phase::Idle(_) = *p {
            *p = Phase::Head(Instant::now());
        }
    }

    /// A request's header is complete: the connection is busy until the guard drops
    /// (with the answer's body, so a streamed answer keeps it busy to its end).
    pub fn busy(self: &Arc<Self>) -> BusyGuard {
        self.set(Phase::Busy);
        BusyGuard(Arc::clone(self))
    }

    /// Resolves when a limit has passed for this connection.
    pub async fn expired(&self, limits: &ConnLimits) -> Expired {
        loop {
            let now = Instant::now();
            let (deadline, which) = match self.phase() {
                Phase::Head(t) => (t + limits.header_timeout, Some(Expired::Header)),
                Phase::Idle(t) => (t + limits.idle_timeout, Some(Expired::Idle)),
                // Look again later: the request may be over by then.
                Phase::Busy => (now + limits.header_timeout.min(limits.idle_timeout), None),
            };
            if let Some(w) = which {
                if now >= deadline {
                    return w;
                }
            }
            tokio::time::sleep_until(deadline).await;
        }
    }

    /// Resolves when the cap chose this connection to make room for a new one.
    pub async fn evicted(&self) {
        self.evict.notified().await
    }
}

/// Marks its connection idle when dropped.
pub struct BusyGuard(Arc<Conn>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.set(Phase::Idle(Instant::now()));
    }
}

/// Every open connection, for the cap to choose from; and the once-only warnings.
#[derive(Default)]
pub struct Registry {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Conn>>>,
    warned_header: AtomicBool,
    warned_idle: AtomicBool,
    warned_cap: AtomicBool,
}

impl Registry {
    /// A new connection, waiting for its first header from now.
    pub fn add(&self) -> Arc<Conn> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let c = Arc::new(Conn {
            id,
            phase: Mutex::new(Phase::Head(Instant::now())),
            evicted: AtomicBool::new(false),
            evict: Notify::new(),
        });
        self.lock().insert(id, Arc::clone(&c));
        c
    }

    pub fn remove(&self, c: &Conn) {
        self.lock().remove(&c.id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Closes the connection that has waited longest without a request in progress;
    /// false when every connection is busy.
    pub fn evict_oldest_idle(&self) -> bool {
        let victim = self
            .lock()
            .values()
            .filter(|c| !c.evicted.load(Ordering::Relaxed))
            .filter_map(|c| match c.phase() {
                Phase::Head(t) | Phase::Idle(t) => Some((t, Arc::clone(c))),
                Phase::Busy => None,
            })
            .min_by_key(|(t, _)| *t);
        match victim {
            Some((_, c)) => {
                c.evicted.store(true, Ordering::Relaxed);
                c.evict.notify_one();
                true
            }
            None => false,
        }
    }

    /// Logs the first time a limit closes a connection (at warn), then only at debug:
    /// a slow-client attack must not flood the log.
    pub fn log_limit(&self, what: Expired, limits: &ConnLimits) {
        let (flag, msg) = match what {
            Expired::Header => (
                &self.warned_header,
                format!(
                    "closing a connection that sent no complete request header within {:?} \
                     (--header-timeout; logged once)",
                    limits.header_timeout
                ),
            ),
            Expired::Idle => (
                &self.warned_idle,
                format!(
                    "closing a connection idle for {:?} between requests \
                     (--conn-idle-timeout; logged once)",
                    limits.idle_timeout
                ),
            ),
        };
        once(flag, &msg);
    }

    /// Logs the first time the cap is reached.
    pub fn log_cap(&self, limits: &ConnLimits) {
        once(
            &self.warned_cap,
            &format!(
                "{} connections open (--max-connections): closing the longest-idle one for \
                 each new one, or holding new ones until one ends (logged once)",
                limits.max_connections
            ),
        );
    }
}

fn once(flag: &AtomicBool, msg: &str) {
    if flag.swap(true, Ordering::Relaxed) {
        log::debug!("{msg}");
    } else {
        log::warn!("{msg}");
    }
}

/// A connection's socket, telling its `Conn` when request bytes arrive.
pub struct Watched {
    io: TcpStream,
    conn: Arc<Conn>,
}

impl Watched {
    pub fn new(io: TcpStream, conn: Arc<Conn>) -> Watched {
        Watched { io, conn }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.conn.arrived();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Raises this process's open-file soft limit to its hard limit, so the connection cap,
/// not EMFILE, is what bounds connections. Returns the soft limit now in force.
pub fn raise_nofile_limit() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let lim = getrlimit(Resource::Nofile);
    match (lim.current, lim.maximum) {
        (Some(cur), Some(max)) if cur < max => {
            let want = Rlimit {
                current: Some(max),
                maximum: Some(max),
            };
            match setrlimit(Resource::Nofile, want) {
                Ok(()) => Some(max),
                Err(_) => Some(cur),
            }
        }
        // None is unlimited.
        (cur, _) => Some(cur.unwrap_or(u64::MAX)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_flags_are_range_checked() {
        assert_eq!(parse_header_timeout("1s"), Ok(Duration::from_secs(1)));
        assert!(parse_header_timeout("0s").is_err());
        assert!(parse_conn_idle_timeout("2h").is_err());
        assert!(parse_conn_idle_timeout("soon").is_err());
        assert_eq!(parse_max_connections("512"), Ok(512));
        assert!(parse_max_connections("0").is_err());
        assert!(parse_max_connections("-3").is_err());
    }

    #[tokio::test]
    async fn eviction_picks_the_longest_waiting_connection_that_is_not_busy() {
        let r = Registry::default();
        let old = r.add();
        tokio::time::sleep(Duration::from_millis(5)).await;
        let busy = r.add();
        let _g = busy.busy();
        let young = r.add();
        assert!(r.evict_oldest_idle());
        assert!(old.evicted.load(Ordering::Relaxed));
        assert!(!young.evicted.load(Ordering::Relaxed));
        assert!(r.evict_oldest_idle());
        assert!(young.evicted.load(Ordering::Relaxed));
        assert!(!r.evict_oldest_idle(), "the busy one is never chosen");
    }
}
