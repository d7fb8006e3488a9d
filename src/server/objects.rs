//! Object operations: PutObject (a whole object in one body), GetObject (whole or a
//! Range, streamed from the object's files) and HeadObject. Must not know about
//! uploads in progress, coffer documents, or which fault a request drew (only
//! whether its answer is to be cut short).

use super::disk::ObjectRec;
use super::http::{content_length, empty, promised_md5, receive, stream, Body};
use super::op::Call;
use super::State;
use crate::protocol::{rules, time, ErrorCode};
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};
use tokio::sync::{mpsc, Notify};

pub async fn put_object(state: &State, call: &Call, req: Request<Incoming>) -> Response<Body> {
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

pub fn head_object(state: &State, call: &Call) -> Response<Body> {
    match state.disk.object(&call.coffer, call.key()) {
        Ok(Some(o)) => object_headers(call, StatusCode::OK, &o)
            .header("content-length", o.size)
            .body(empty())
            .unwrap_or_else(|_| Response::new(empty())),
        Ok(None) => call.error(ErrorCode::ObjectNotExists, "no such object"),
        Err(e) => call.fail(e),
    }
}

pub async fn get_object(
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
    let inline = match tokio::task::block_in_place(|| state.disk.inline_bytes(&o)) {
        Ok(b) => b,
        Err(e) => return call.fail(e),
    };
    let (tx, rx) = mpsc::channel(4);
    let stats_state = Arc::clone(state);
    let kill2 = Arc::clone(kill);
    let resource = call.resource();
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Seek, SeekFrom};
        // `first..first+send_len` of the object, across its files in order.
        let result = (|| -> std::io::Result<()> {
            if let Some(bytes) = inline {
                let from = (first as usize).min(bytes.len());
                let to = (from + send_len as usize).min(bytes.len());
                stats_state
                    .stats
                    .bytes_out
                    .fetch_add((to - from) as u64, Ordering::Relaxed);
                let _ = tx.blocking_send(Ok(Bytes::copy_from_slice(&bytes[from..to])));
                return Ok(());
            }
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
