//! Multipart uploads: initiate, upload a part, list parts and uploads, complete
//! (the long merge, answered 200 at once with keep-alive spaces, then the result,
//! including the faults only Complete has) and abort. Must not know about
//! whole-object puts or reads, or coffer documents.

use super::coffers::{max_param, owner, page};
use super::disk::DiskError;
use super::error::{disk_error, error_json};
use super::faults::Fault;
use super::http::{content_length, empty, promised_md5, read_small, receive, stream, Body};
use super::op::Call;
use super::State;
use crate::protocol::encode::url_encode;
use crate::protocol::tolerant::from_body;
use crate::protocol::types::*;
use crate::protocol::{self as proto, rules, time, ErrorCode};
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};
use tokio::sync::{mpsc, Notify};

fn ctime_of(secs: u64) -> String {
    time::ctime(UNIX_EPOCH + Duration::from_secs(secs))
}

/// InitiateMultipartUpload: a new upload id for the key.
pub fn initiate(state: &State, call: &Call, req: &Request<Incoming>) -> Response<Body> {
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
pub fn abort(state: &State, call: &Call) -> Response<Body> {
    let id = call.param("uploadId").unwrap_or("");
    match state.disk.abort(&call.coffer, call.key(), id) {
        Ok(()) => call.ok(StatusCode::NO_CONTENT),
        Err(e) => call.fail(e),
    }
}

pub async fn upload_part(state: &State, call: &Call, req: Request<Incoming>) -> Response<Body> {
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

pub fn list_uploads(state: &State, call: &Call) -> Response<Body> {
    let (max, encode) = match page(call, "max-uploads") {
        Ok(p) => p,
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

pub fn list_parts(state: &State, call: &Call) -> Response<Body> {
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

pub async fn complete(
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
