//! The HTTP engine under `CdcsClient`: builds a request's URL and headers, signs
//! it, sends it (one idle-bounded exchange, `transport`), retries what is worth
//! retrying (`retry`), reads the whole answer and turns error answers into
//! `StoreError`. Knows requests and answers, not what an operation means: which
//! operation sends what, and what its answer says, is `store.rs`'s.

use super::retry::is_retryable;
use super::transport::{self, Http};
use super::ClientConfig;
use crate::protocol::encode::{key_path, url_encode};
use crate::protocol::sign::{self, Signable};
use crate::protocol::tolerant::from_body;
use crate::protocol::{self as proto, ErrorBody, ErrorCode};
use crate::store::{Range, StoreError};
use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::Method;
use std::time::Instant;

/// Which of the two base URLs a request goes to.
#[derive(Clone, Copy)]
pub(super) enum Host {
    Object,
    Service,
}

/// One request before signing.
pub(super) struct Request<'a> {
    pub op: &'static str,
    method: Method,
    host: Host,
    coffer: &'a str,
    /// None: a coffer-level request (`/<coffer>`).
    pub key: Option<&'a str>,
    params: Vec<(String, String)>,
    body: Option<Bytes>,
    md5: Option<[u8; 16]>,
    pub range: Option<Range>,
    /// The answer body is object data, never an error document, on success.
    pub data_answer: bool,
    /// `AlreadyLock` goes back to the caller at once instead of being retried
    /// (Complete waits for a running merge its own way).
    pub lock_to_caller: bool,
}

impl<'a> Request<'a> {
    pub fn new(
        op: &'static str,
        method: Method,
        host: Host,
        coffer: &'a str,
        key: Option<&'a str>,
    ) -> Self {
        Request {
            op,
            method,
            host,
            coffer,
            key,
            params: Vec::new(),
            body: None,
            md5: None,
            range: None,
            data_answer: false,
            lock_to_caller: false,
        }
    }

    pub fn param(mut self, k: &str, v: impl Into<String>) -> Self {
        self.params.push((k.to_string(), v.into()));
        self
    }

    pub fn body(mut self, body: Bytes, md5: [u8; 16]) -> Self {
        self.body = Some(body);
        self.md5 = Some(md5);
        self
    }
}

/// A received answer, body read in full.
pub(super) struct Answer {
    pub status: u16,
    headers: HeaderMap,
    pub body: Vec<u8>,
    pub request_id: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends requests for every clone of one client: the connection pool and the
/// configuration they share.
pub(super) struct Engine {
    http: Http,
    cfg: ClientConfig,
}

impl Engine {
    pub fn new(cfg: ClientConfig) -> Result<Engine, StoreError> {
        let http = Http::new(cfg.connect_timeout).map_err(StoreError::Invalid)?;
        Ok(Engine { http, cfg })
    }

    pub fn cfg(&self) -> &ClientConfig {
        &self.cfg
    }

    /// Path as sent (encoded) and as signed (decoded).
    fn paths(req: &Request) -> Result<(String, String), StoreError> {
        let coffer = req.coffer;
        match (req.host, req.key) {
            (_, Some(key)) => {
                let enc = key_path(key).map_err(|_| {
                    StoreError::Invalid(format!("object key {key:?} cannot be sent in a URL"))
                })?;
                Ok((
                    format!("/{}/{}", coffer, enc),
                    format!("/{}/{}", coffer, key),
                ))
            }
            (Host::Service, None) if req.op == "GetService" => Ok(("/".into(), "/".into())),
            (_, None) => Ok((format!("/{}", coffer), format!("/{}", coffer))),
        }
    }

    /// One attempt: build, sign, send, read the whole answer, classify errors.
    fn send_once(&self, req: &Request) -> Result<Answer, StoreError> {
        let key_for_log = req.key.unwrap_or("").to_string();
        let transport = |detail: String| StoreError::Transport {
            op: req.op,
            key: key_for_log.clone(),
            detail,
        };
        let base = match req.host {
            Host::Object => &self.cfg.object_endpoint,
            Host::Service => &self.cfg.service_endpoint,
        };
        let (path, signed_path) = Self::paths(req)?;
        let query = req
            .params
            .iter()
            .map(|(k, v)| {
                if v.is_empty() && (k == "uploads" || k == "lifecycle" || k == "policy") {
                    url_encode(k)
                } else {
                    format!("{}={}", url_encode(k), url_encode(v))
                }
            })
            .collect::<Vec<_>>()
            .join("&");
        let url_text = if query.is_empty() {
            format!("{base}{path}")
        } else {
            format!("{base}{path}?{query}")
        };
        let url = reqwest::Url::parse(&url_text)
            .map_err(|e| StoreError::Invalid(format!("bad request URL: {e}")))?;
        let host = match (url.host_str(), url.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            (None, _) => return Err(StoreError::Invalid("endpoint has no host".into())),
        };

        let mut signed: Vec<(String, String)> = vec![("host".into(), host.clone())];
        let mut headers = HeaderMap::new();
        let body_len = req.body.as_ref().map(|b| b.len()).unwrap_or(0);
        if req.body.is_some() {
            signed.push(("content-length".into(), body_len.to_string()));
        }
        if let Some(md5) = &req.md5 {
            let v = proto::content_md5(md5);
            signed.push(("content-md5".into(), v.clone()));
            if let Ok(h) = HeaderValue::from_str(&v) {
                headers.insert("content-md5", h);
            }
        }
        if let Some(creds) = &self.cfg.credentials {
            let now = crate::protocol::time::now_unix() as i64;
            let auth = sign::authorization(
                &creds.secret_id,
                &creds.secret_key,
                now - 60,
                now + 3600,
                &Signable {
                    method: req.method.as_str(),
                    path: &signed_path,
                    params: &req.params,
                    headers: &signed,
                },
            );
            let mut value = HeaderValue::from_str(&auth)
                .map_err(|_| StoreError::Invalid("secret id is not a valid header".into()))?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
            if let Some(token) = &creds.session_token {
                let mut value = HeaderValue::from_str(token).map_err(|_| {
                    StoreError::Invalid("session token is not a valid header".into())
                })?;
                value.set_sensitive(true);
                headers.insert(proto::SECURITY_TOKEN_HEADER, value);
            }
        }
        if let Ok(h) = HeaderValue::from_str(&host) {
            headers.insert(reqwest::header::HOST, h);
        }
        if let Some(r) = req.range {
            if let Ok(h) = HeaderValue::from_str(&r.header()) {
                headers.insert(reqwest::header::RANGE, h);
            }
        }
        if let Some(body) = &req.body {
            let json = matches!(req.op, "CompleteMultipartUpload" | "PutCoffer");
            let content_type = if json {
                "application/json"
            } else {
                "application/octet-stream"
            };
            headers.insert(
                reqwest::header::CONTENT_TYPE,
                HeaderValue::from_static(content_type),
            );
            headers.insert(
                reqwest::header::CONTENT_LENGTH,
                HeaderValue::from(body.len()),
            );
        }
        let http_req = self
            .http
            .client()
            .request(req.method.clone(), url)
            .headers(headers)
            .build()
            .map_err(|e| StoreError::Invalid(format!("cannot build the request: {e}")))?;
        let started = Instant::now();
        let transport::Exchange {
            status,
            headers,
            body,
        } = self
            .http
            .exchange(http_req, req.body.clone(), self.cfg.idle_timeout)
            .map_err(transport)?;
        let request_id = headers
            .get(proto::REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        log::debug!(
            "{} {:?} -> {status} ({} bytes, {} ms, request id {request_id})",
            req.op,
            key_for_log,
            body.len(),
            started.elapsed().as_millis()
        );
        let answer = Answer {
            status,
            headers,
            body,
            request_id,
        };
        self.classify(req, answer)
    }

    /// Turns an answer that carries an error (by status, or by a `Code` in a JSON
    /// body whatever the status) into `StoreError::Service`.
    fn classify(&self, req: &Request, a: Answer) -> Result<Answer, StoreError> {
        let ok_status = (200..300).contains(&a.status);
        if ok_status && req.data_answer {
            return Ok(a);
        }
        // Whether the top level names a `Code`, skipping the rest unbuilt (a
        // listing page is 1000 objects): only an error body is read whole.
        #[derive(serde::Deserialize)]
        struct CodeProbe {
            #[serde(rename = "Code")]
            code: Option<serde::de::IgnoredAny>,
        }
        let parsed: Option<ErrorBody> = from_body::<CodeProbe>(&a.body)
            .ok()
            .filter(|p| p.code.is_some())
            .and_then(|_| from_body::<ErrorBody>(&a.body).ok());
        if ok_status && parsed.is_none() {
            return Ok(a);
        }
        let body = parsed.unwrap_or_default();
        let code = if !body.code.is_empty() {
            ErrorCode::parse(&body.code)
        } else {
            match (a.status, req.key.is_some()) {
                (404, true) => ErrorCode::ObjectNotExists,
                (404, false) => ErrorCode::CofferNotFound,
                (401 | 403, _) => ErrorCode::AuthFailed,
                (409, _) => ErrorCode::ObjectAlreadyExists,
                (416, _) => ErrorCode::InvalidRange,
                (503, _) => ErrorCode::ServiceUnavailable,
                (s, _) if s >= 500 => ErrorCode::InternalError,
                (s, _) => ErrorCode::Other(format!("HTTP{s}")),
            }
        };
        let header = |n: &str| a.header(n).unwrap_or("").to_string();
        Err(StoreError::Service {
            op: req.op,
            key: req.key.unwrap_or("").to_string(),
            code,
            status: a.status,
            message: body.message,
            request_id: if body.request_id.is_empty() {
                a.request_id.clone()
            } else {
                body.request_id
            },
            trace_id: if body.trace_id.is_empty() {
                header(proto::TRACE_ID_HEADER)
            } else {
                body.trace_id
            },
        })
    }

    /// Sends with retries. `check` validates a successful answer; its failure
    /// counts as a broken answer and is retried. Returns the outcome and how
    /// many attempts it took.
    pub fn execute(
        &self,
        req: &Request,
        check: &dyn Fn(&Answer) -> Result<(), String>,
    ) -> (Result<Answer, StoreError>, u32) {
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = self.send_once(req).and_then(|a| match check(&a) {
                Ok(()) => Ok(a),
                Err(detail) => Err(StoreError::BadAnswer {
                    op: req.op,
                    key: req.key.unwrap_or("").to_string(),
                    detail,
                    request_id: a.request_id.clone(),
                }),
            });
            match result {
                Ok(a) => return (Ok(a), attempt),
                Err(e) if !is_retryable(&e) => return (Err(e), attempt),
                Err(e) if req.lock_to_caller && e.code() == Some(&ErrorCode::AlreadyLock) => {
                    return (Err(e), attempt)
                }
                Err(e) => {
                    if !self.cfg.retry.wait_before_retry(attempt, started) {
                        log::warn!("{}: giving up after {attempt} attempts: {e}", req.op);
                        return (
                            Err(StoreError::GaveUp {
                                attempts: attempt,
                                last: Box::new(e),
                            }),
                            attempt,
                        );
                    }
                    log::info!("{}: attempt {attempt} failed, retrying: {e}", req.op);
                }
            }
        }
    }

    pub fn run(&self, req: &Request) -> Result<Answer, StoreError> {
        self.execute(req, &|_| Ok(())).0
    }

    /// Sends with retries and parses the JSON answer; an answer that does not
    /// parse (cut short, garbled) counts as broken and is retried.
    pub fn run_json<T: serde::de::DeserializeOwned>(
        &self,
        req: &Request,
    ) -> (Result<T, StoreError>, u32) {
        let check = |a: &Answer| {
            from_body::<T>(&a.body)
                .map(|_| ())
                .map_err(|e| format!("unparseable JSON answer: {e}"))
        };
        let (result, attempts) = self.execute(req, &check);
        (
            result.and_then(|a| Self::parse(req.op, req.key.unwrap_or(""), &a)),
            attempts,
        )
    }

    pub fn parse<T: serde::de::DeserializeOwned>(
        req_op: &'static str,
        key: &str,
        a: &Answer,
    ) -> Result<T, StoreError> {
        from_body(&a.body).map_err(|e| StoreError::BadAnswer {
            op: req_op,
            key: key.to_string(),
            detail: format!("unparseable JSON: {e}"),
            request_id: a.request_id.clone(),
        })
    }
}

/// The answer's ETag, unquoted.
pub(super) fn header_etag(a: &Answer) -> Option<String> {
    a.header("etag").map(|e| proto::unquote_etag(e).to_string())
}

/// Parses `Content-Range: bytes a-b/size`.
pub(super) fn parse_content_range(v: &str) -> Option<(u64, u64, u64)> {
    let rest = v.trim().strip_prefix("bytes")?.trim_start();
    let (range, size) = rest.split_once('/')?;
    let (a, b) = range.trim().split_once('-')?;
    Some((
        a.trim().parse().ok()?,
        b.trim().parse().ok()?,
        size.trim().parse().ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_is_parsed() {
        assert_eq!(parse_content_range("bytes 0-9/100"), Some((0, 9, 100)));
        assert_eq!(parse_content_range("bytes 5-5/6"), Some((5, 5, 6)));
        assert_eq!(parse_content_range("bytes */100"), None);
    }
}
