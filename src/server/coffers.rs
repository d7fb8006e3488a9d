//! Coffer operations: the service's coffer list, create and delete, lifecycle and
//! policy documents, and listing a coffer's objects (plus the listing parameters the
//! multipart listings share). Must not touch object data or uploads in progress.

use super::http::{empty, full, read_small, Body};
use super::op::Call;
use super::State;
use crate::protocol::encode::url_encode;
use crate::protocol::tolerant::from_body;
use crate::protocol::types::*;
use crate::protocol::{self as proto, rules, time, ErrorCode};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use std::time::{Duration, UNIX_EPOCH};

fn iso_of(secs: u64) -> String {
    time::iso8601(UNIX_EPOCH + Duration::from_secs(secs))
}

/// The owner of everything in `coffer`: its APPID.
pub fn owner(coffer: &str) -> Owner {
    let appid = coffer.rsplit('-').next().unwrap_or("").to_string();
    Owner {
        id: appid.clone(),
        display_name: appid,
    }
}

/// A listing's `max-*` parameter: 1..=1000, 1000 when absent.
pub fn max_param(call: &Call, name: &str) -> Result<usize, Response<Body>> {
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

/// A key listing's page size (from the parameter `max_name`) and encoding.
pub fn page(call: &Call, max_name: &str) -> Result<(usize, bool), Response<Body>> {
    Ok((max_param(call, max_name)?, url_encoding(call)?))
}

pub fn get_service(state: &State, call: &Call) -> Response<Body> {
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

pub async fn put_coffer(state: &State, call: &Call, req: Request<Incoming>) -> Response<Body> {
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

pub fn delete_coffer(state: &State, call: &Call) -> Response<Body> {
    match state.disk.delete_coffer(&call.coffer) {
        Ok(()) => call.ok(StatusCode::NO_CONTENT),
        Err(e) => call.fail(e),
    }
}

pub async fn put_lifecycle(state: &State, call: &Call, req: Request<Incoming>) -> Response<Body> {
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
pub fn get_document(state: &State, call: &Call, lifecycle: bool) -> Response<Body> {
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

pub async fn put_policy(state: &State, call: &Call, req: Request<Incoming>) -> Response<Body> {
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

pub fn delete_policy(state: &State, call: &Call) -> Response<Body> {
    match state.disk.update_coffer(&call.coffer, |c| c.policy = None) {
        Ok(()) => call.ok(StatusCode::OK),
        Err(e) => call.fail(e),
    }
}

/// GetCoffer: one page of the coffer's objects.
pub fn get_coffer(state: &State, call: &Call) -> Response<Body> {
    let (max, encode) = match page(call, "max-keys") {
        Ok(p) => p,
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
