//! HTTP plumbing shared by the handlers: the body type, answer builders, reading
//! request bodies (small JSON ones whole, uploads streamed to the store) and their
//! promised length and MD5, and random ids. Must not know what any operation means.

use super::disk::{DiskError, Incoming as DiskIncoming};
use super::op::Call;
use super::State;
use crate::protocol::{self as proto, ErrorCode};
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use std::sync::atomic::Ordering;
use tokio::sync::mpsc;

pub type Body = BoxBody<Bytes, std::io::Error>;

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

pub fn empty() -> Body {
    full(Bytes::new())
}

/// A body streamed from a channel: a handler's task sends it piece by piece.
pub fn stream(rx: mpsc::Receiver<Result<Bytes, std::io::Error>>) -> Body {
    let s = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item.map(Frame::data), rx))
    });
    StreamBody::new(s).boxed()
}

/// `n` random bytes in hex: request and trace ids.
pub fn random_hex(n: usize) -> String {
    let bytes: Vec<u8> = (0..n).map(|_| rand::random::<u8>()).collect();
    proto::hex(&bytes)
}

impl Call {
    /// An answer with the headers every answer carries.
    pub fn base(&self, status: StatusCode) -> hyper::http::response::Builder {
        Response::builder()
            .status(status)
            .header(proto::REQUEST_ID_HEADER, &self.request_id)
            .header("server", "tencent-cdcs")
    }

    /// 200 with `v` as its JSON body.
    pub fn json<T: serde::Serialize>(&self, v: &T) -> Response<Body> {
        let bytes = serde_json::to_vec(v).unwrap_or_default();
        self.base(StatusCode::OK)
            .header("content-type", "application/json")
            .header("content-length", bytes.len())
            .body(full(bytes))
            .unwrap_or_else(|_| Response::new(empty()))
    }

    /// `status` with an empty body.
    pub fn ok(&self, status: StatusCode) -> Response<Body> {
        self.base(status)
            .header("content-length", 0)
            .body(empty())
            .unwrap_or_else(|_| Response::new(empty()))
    }
}

/// A small (≤ 1 MiB) request body, whole.
pub async fn read_small(req: Request<Incoming>) -> Result<Bytes, String> {
    let limited = http_body_util::Limited::new(req.into_body(), 1 << 20);
    limited
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|e| e.to_string())
}

pub fn content_length(req: &Request<Incoming>) -> Option<u64> {
    req.headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// The `Content-MD5` a request promises: Ok(None) when absent, Err on a malformed one.
pub fn promised_md5(
    call: &Call,
    req: &Request<Incoming>,
) -> Result<Option<[u8; 16]>, Response<Body>> {
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
pub async fn receive(
    state: &State,
    call: &Call,
    body: Incoming,
) -> Result<DiskIncoming, DiskError> {
    // Off the runtime's worker only for what touches the disk: a small body
    // stays in memory, and handing a worker's place over costs a thread wake
    // per call, a visible part of a 4 KiB PutObject's time.
    let mut inc = state.disk.incoming()?;
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
            if inc.blocks_on(data.len()) {
                tokio::task::block_in_place(|| inc.write(&data))?;
            } else {
                inc.write(&data)?;
            }
        }
    }
    Ok(inc)
}
