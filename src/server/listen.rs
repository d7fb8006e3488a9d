//! The accept loop: takes connections up to the cap (closing the longest-idle one to
//! make room), serves each with hyper under the `conn` limits, hands every request to
//! `handle`, and kills a connection with an RST when a handler asks. Must not know
//! what a request asks for.

use super::{conn, handle, State};
use http_body_util::BodyExt;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify, Semaphore};

/// Serves `listener` until `stop`, then waits (5 s at most) for open connections.
pub async fn serve(
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
                    // SAFETY: fd belongs to the socket owned by `serving`, alive until it drops below.
                    let sock = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
                    let _ = rustix::net::sockopt::set_socket_linger(sock, Some(Duration::ZERO));
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
    let deadline = Instant::now() + Duration::from_secs(5);
    while slots.available_permits() < limits.max_connections && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
