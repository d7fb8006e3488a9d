//! `CdcsClient`: the `ObjectStore` over HTTP (reqwest::blocking) — signing, retries,
//! tolerant parsing, ETag checks. Knows nothing of files or FUSE.

pub mod credentials;
pub mod retry;
mod transport;

use crate::protocol::encode::{key_path, url_encode};
use crate::protocol::rules::{self, MAX_PART_SIZE, MAX_PUT_SIZE};
use crate::protocol::sign::{self, Credentials, Signable};
use crate::protocol::tolerant::from_body;
use crate::protocol::types::*;
use crate::protocol::{self as proto, ErrorBody, ErrorCode};
use crate::store::*;
use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::Method;
use retry::{is_retryable, RetryPolicy};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use transport::Http;

/// How to reach the service and how patiently.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Base URL for object and multipart operations (`https://cdcs.R.myqcloud.com`).
    pub object_endpoint: String,
    /// Base URL for coffer-level operations (`https://service.cdcs.myqcloud.com`).
    pub service_endpoint: String,
    /// Signs every request when set.
    pub credentials: Option<Credentials>,
    pub retry: RetryPolicy,
    /// A request fails when no byte has moved (sent or received) for this long.
    /// It bounds idle time, never total time: a Complete may stream spaces for
    /// minutes, a large part may go up slowly.
    pub idle_timeout: Duration,
    pub connect_timeout: Duration,
    /// How long a Complete waits for a merge already running (its own cut-off
    /// attempt, answered `AlreadyLock`) before it gives up.
    pub merge_wait: Duration,
}

impl ClientConfig {
    fn with_endpoints(object: String, service: String) -> ClientConfig {
        ClientConfig {
            object_endpoint: object,
            service_endpoint: service,
            credentials: None,
            retry: RetryPolicy::default(),
            idle_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            merge_wait: Duration::from_secs(30 * 60),
        }
    }

    /// Both host kinds at one URL (`cofferfs serve`, or a proxy).
    pub fn endpoint(url: &str) -> Result<ClientConfig, StoreError> {
        let base = url.trim_end_matches('/').to_string();
        match reqwest::Url::parse(&base) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {
                Ok(ClientConfig::with_endpoints(base.clone(), base))
            }
            _ => Err(StoreError::Invalid(format!(
                "endpoint {url:?} is not an http(s) URL"
            ))),
        }
    }

    /// The service's public hosts for a region (API.md §1).
    pub fn region(region: &str) -> Result<ClientConfig, StoreError> {
        if region.is_empty()
            || !region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(StoreError::Invalid(format!("invalid region {region:?}")));
        }
        Ok(ClientConfig::with_endpoints(
            format!("https://cdcs.{region}.myqcloud.com"),
            "https://service.cdcs.myqcloud.com".to_string(),
        ))
    }
}

#[derive(Clone, Copy)]
enum Host {
    Object,
    Service,
}

/// One request before signing.
struct Request<'a> {
    op: &'static str,
    method: Method,
    host: Host,
    /// None: a coffer-level request (`/<coffer>`).
    key: Option<&'a str>,
    params: Vec<(String, String)>,
    body: Option<Bytes>,
    md5: Option<[u8; 16]>,
    range: Option<Range>,
    /// The answer body is object data, never an error document, on success.
    data_answer: bool,
    /// `AlreadyLock` goes back to the caller at once instead of being retried
    /// (Complete waits for a running merge its own way).
    lock_to_caller: bool,
}

impl<'a> Request<'a> {
    fn new(op: &'static str, method: Method, host: Host, key: Option<&'a str>) -> Self {
        Request {
            op,
            method,
            host,
            key,
            params: Vec::new(),
            body: None,
            md5: None,
            range: None,
            data_answer: false,
            lock_to_caller: false,
        }
    }

    fn param(mut self, k: &str, v: impl Into<String>) -> Self {
        self.params.push((k.to_string(), v.into()));
        self
    }

    fn body(mut self, body: Bytes, md5: [u8; 16]) -> Self {
        self.body = Some(body);
        self.md5 = Some(md5);
        self
    }
}

/// A received answer, body read in full.
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
    request_id: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A CDCS coffer over HTTP. Cheap to clone; clones share the connection pool.
#[derive(Clone)]
pub struct CdcsClient {
    http: Arc<Http>,
    cfg: Arc<ClientConfig>,
    coffer: String,
}

impl std::fmt::Debug for CdcsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CdcsClient")
            .field("endpoint", &self.cfg.object_endpoint)
            .field("coffer", &self.coffer)
            .finish()
    }
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl CdcsClient {
    /// A client of `coffer` (`name-appid`).
    pub fn new(cfg: ClientConfig, coffer: &str) -> Result<CdcsClient, StoreError> {
        if !rules::validate_coffer_id(coffer) {
            return Err(StoreError::Invalid(format!(
                "invalid coffer {coffer:?}: expected NAME-APPID (lowercase letters, digits, '-')"
            )));
        }
        let http = Http::new(cfg.connect_timeout).map_err(StoreError::Invalid)?;
        Ok(CdcsClient {
            http: Arc::new(http),
            cfg: Arc::new(cfg),
            coffer: coffer.to_string(),
        })
    }

    /// The same endpoint and credentials, another coffer.
    pub fn with_coffer(&self, coffer: &str) -> Result<CdcsClient, StoreError> {
        if !rules::validate_coffer_id(coffer) {
            return Err(StoreError::Invalid(format!("invalid coffer {coffer:?}")));
        }
        Ok(CdcsClient {
            coffer: coffer.to_string(),
            ..self.clone()
        })
    }

    fn check_key(key: &str) -> Result<(), StoreError> {
        rules::validate_key(key).map_err(|reason| StoreError::InvalidKey {
            key: key.to_string(),
            reason,
        })
    }

    /// Path as sent (encoded) and as signed (decoded).
    fn paths(&self, req: &Request) -> Result<(String, String), StoreError> {
        match (req.host, req.key) {
            (_, Some(key)) => {
                let enc = key_path(key).map_err(|_| {
                    StoreError::Invalid(format!("object key {key:?} cannot be sent in a URL"))
                })?;
                Ok((
                    format!("/{}/{}", self.coffer, enc),
                    format!("/{}/{}", self.coffer, key),
                ))
            }
            (Host::Service, None) if req.op == "GetService" => Ok(("/".into(), "/".into())),
            (_, None) => Ok((format!("/{}", self.coffer), format!("/{}", self.coffer))),
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
        let (path, signed_path) = self.paths(req)?;
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
            let now = now_unix();
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
        let parsed: Option<ErrorBody> = from_body::<serde_json::Value>(&a.body)
            .ok()
            .filter(|v| v.get("Code").is_some())
            .and_then(|v| serde_json::from_value(v).ok());
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
    fn execute(
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

    fn run(&self, req: &Request) -> Result<Answer, StoreError> {
        self.execute(req, &|_| Ok(())).0
    }

    /// Sends with retries and parses the JSON answer; an answer that does not
    /// parse (cut short, garbled) counts as broken and is retried.
    fn run_json<T: serde::de::DeserializeOwned>(
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

    fn parse<T: serde::de::DeserializeOwned>(
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

    /// GetService: the coffers of this account.
    pub fn get_service(&self) -> Result<ServiceResult, StoreError> {
        let req = Request::new("GetService", Method::GET, Host::Service, None);
        self.run_json(&req).0
    }

    /// PutCoffer: creates this client's coffer in `location`.
    pub fn put_coffer(&self, location: &str) -> Result<(), StoreError> {
        let body = serde_json::to_vec(&PutCofferRequest {
            locations: Locations {
                location: vec![location.to_string()],
            },
            ..Default::default()
        })
        .map_err(|e| StoreError::Invalid(e.to_string()))?;
        let md5 = proto::md5(&body);
        let req = Request::new("PutCoffer", Method::PUT, Host::Service, None)
            .body(Bytes::from(body), md5);
        self.run(&req).map(|_| ())
    }
}

fn header_etag(a: &Answer) -> Option<String> {
    a.header("etag").map(|e| proto::unquote_etag(e).to_string())
}

/// Parses `Content-Range: bytes a-b/size`.
fn parse_content_range(v: &str) -> Option<(u64, u64, u64)> {
    let rest = v.trim().strip_prefix("bytes")?.trim_start();
    let (range, size) = rest.split_once('/')?;
    let (a, b) = range.trim().split_once('-')?;
    Some((
        a.trim().parse().ok()?,
        b.trim().parse().ok()?,
        size.trim().parse().ok()?,
    ))
}

impl ObjectStore for CdcsClient {
    fn coffer(&self) -> &str {
        &self.coffer
    }

    fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        Self::check_key(key)?;
        let req = Request::new("HeadObject", Method::HEAD, Host::Object, Some(key));
        match self.run(&req) {
            Ok(a) => {
                let size = a
                    .header("content-length")
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| StoreError::BadAnswer {
                        op: "HeadObject",
                        key: key.to_string(),
                        detail: "no Content-Length".into(),
                        request_id: a.request_id.clone(),
                    })?;
                Ok(Some(ObjectMeta {
                    key: key.to_string(),
                    size,
                    etag: header_etag(&a).unwrap_or_default(),
                    last_modified: a.header("last-modified").and_then(proto::time::parse),
                }))
            }
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn get(&self, key: &str, range: Option<Range>) -> Result<GetResult, StoreError> {
        Self::check_key(key)?;
        let mut req = Request::new("GetObject", Method::GET, Host::Object, Some(key));
        req.range = range;
        req.data_answer = true;
        // A range answer must say which bytes it holds, and hold exactly those.
        let check = |a: &Answer| -> Result<(), String> {
            if range.is_some() && a.status == 206 {
                let (s, e, _) = a
                    .header("content-range")
                    .and_then(parse_content_range)
                    .ok_or("206 without a valid Content-Range")?;
                if e < s || (e - s + 1) as usize != a.body.len() {
                    return Err(format!("Content-Range {s}-{e} but {} bytes", a.body.len()));
                }
            }
            Ok(())
        };
        let a = self.execute(&req, &check).0?;
        let etag = header_etag(&a).unwrap_or_default();
        let len = a.body.len() as u64;
        let (start, object_size) = if a.status == 206 {
            match a.header("content-range").and_then(parse_content_range) {
                Some((s, _, total)) => (s, total),
                None => (0, len),
            }
        } else {
            (0, len)
        };
        Ok(GetResult {
            data: Bytes::from(a.body),
            start,
            object_size,
            etag,
        })
    }

    fn put(&self, key: &str, data: Bytes) -> Result<String, StoreError> {
        Self::check_key(key)?;
        if data.is_empty() {
            return Err(StoreError::Invalid(
                "the coffer cannot hold empty objects (ObjectEmpty)".into(),
            ));
        }
        if data.len() as u64 > MAX_PUT_SIZE {
            return Err(StoreError::Invalid(format!(
                "PutObject of {} bytes exceeds the 5 GiB limit",
                data.len()
            )));
        }
        let md5 = proto::md5(&data);
        let md5_hex = proto::hex(&md5);
        let size = data.len() as u64;
        let req = Request::new("PutObject", Method::PUT, Host::Object, Some(key)).body(data, md5);
        let check = |a: &Answer| match header_etag(a) {
            Some(e) if proto::etag_is_md5(&e) && !e.eq_ignore_ascii_case(&md5_hex) => Err(format!(
                "ETag {e} is not the MD5 {md5_hex} of what was sent"
            )),
            _ => Ok(()),
        };
        match self.execute(&req, &check) {
            (Ok(a), _) => Ok(header_etag(&a).unwrap_or(md5_hex)),
            // An earlier attempt may have landed with its answer lost.
            (Err(e), attempts)
                if attempts > 1 && e.code() == Some(&ErrorCode::ObjectAlreadyExists) =>
            {
                match crate::store::landed(self, key, size, Some(&md5_hex))? {
                    Some(etag) => {
                        log::info!("PutObject {key:?}: an earlier attempt landed; object matches");
                        Ok(etag)
                    }
                    None => Err(e),
                }
            }
            (Err(e), _) => Err(e),
        }
    }

    fn list(&self, prefix: &str, marker: &str, max_keys: u32) -> Result<ListPage, StoreError> {
        rules::validate_prefix(prefix).map_err(|reason| StoreError::InvalidKey {
            key: prefix.to_string(),
            reason,
        })?;
        let mut req = Request::new("GetCoffer", Method::GET, Host::Service, None).param(
            "max-keys",
            max_keys.clamp(1, rules::MAX_LIST_ENTRIES).to_string(),
        );
        if !prefix.is_empty() {
            req = req.param("prefix", prefix);
        }
        if !marker.is_empty() {
            req = req.param("marker", marker);
        }
        let r: ListCofferResult = self.run_json(&req).0?;
        let url_encoded = r.encoding_type.eq_ignore_ascii_case("url");
        let mut objects = Vec::with_capacity(r.contents.len());
        for o in r.contents {
            let key = if url_encoded {
                crate::protocol::encode::url_decode(&o.key).unwrap_or(o.key)
            } else {
                o.key
            };
            objects.push(ObjectMeta {
                key,
                size: o.size,
                etag: proto::unquote_etag(&o.etag).to_string(),
                last_modified: proto::time::parse(&o.last_modified),
            });
        }
        let next_marker = if r.is_truncated {
            Some(if r.next_marker.is_empty() {
                objects.last().map(|o| o.key.clone()).unwrap_or_default()
            } else {
                r.next_marker
            })
        } else {
            None
        };
        Ok(ListPage {
            objects,
            next_marker,
        })
    }

    fn initiate(&self, key: &str) -> Result<String, StoreError> {
        Self::check_key(key)?;
        let req = Request::new(
            "InitiateMultipartUpload",
            Method::POST,
            Host::Object,
            Some(key),
        )
        .param("uploads", "");
        let check = |a: &Answer| match from_body::<InitiateResult>(&a.body) {
            Ok(r) if !r.upload_id.is_empty() => Ok(()),
            _ => Err("no UploadId in the answer".to_string()),
        };
        match self.execute(&req, &check) {
            (Ok(a), _) => {
                Ok(Self::parse::<InitiateResult>("InitiateMultipartUpload", key, &a)?.upload_id)
            }
            // Our earlier attempt created the upload and its answer was lost:
            // adopt it rather than leave it orphaned.
            (Err(e), attempts)
                if attempts > 1 && e.code() == Some(&ErrorCode::ObjectAlreadyUploading) =>
            {
                let page = self.list_uploads(key, "")?;
                match page.uploads.into_iter().find(|u| u.key == key) {
                    Some(u) => {
                        log::info!("InitiateMultipartUpload {key:?}: adopting upload {} from an earlier attempt", u.upload_id);
                        Ok(u.upload_id)
                    }
                    None => Err(e),
                }
            }
            (Err(e), _) => Err(e),
        }
    }

    fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        data: Bytes,
        md5: [u8; 16],
    ) -> Result<String, StoreError> {
        Self::check_key(key)?;
        if !rules::valid_part_number(part_number) {
            return Err(StoreError::Invalid(format!(
                "part number {part_number} outside 1..=10000"
            )));
        }
        if data.len() as u64 > MAX_PART_SIZE {
            return Err(StoreError::Invalid(format!(
                "part of {} bytes exceeds the 5 GiB limit",
                data.len()
            )));
        }
        let md5_hex = proto::hex(&md5);
        let req = Request::new("UploadPart", Method::PUT, Host::Object, Some(key))
            .param("partNumber", part_number.to_string())
            .param("uploadId", upload_id)
            .body(data, md5);
        let check = |a: &Answer| match header_etag(a) {
            Some(e) if proto::etag_is_md5(&e) && !e.eq_ignore_ascii_case(&md5_hex) => Err(format!(
                "part {part_number} ETag {e} is not the MD5 {md5_hex} of what was sent"
            )),
            _ => Ok(()),
        };
        self.execute(&req, &check).0?;
        // Complete wants each part's MD5 (the Complete document), whatever form the
        // service's ETag header takes.
        Ok(md5_hex)
    }

    fn list_parts(&self, key: &str, upload_id: &str, marker: u32) -> Result<PartsPage, StoreError> {
        Self::check_key(key)?;
        let mut req = Request::new("ListParts", Method::GET, Host::Object, Some(key))
            .param("uploadId", upload_id);
        if marker > 0 {
            req = req.param("part-number-marker", marker.to_string());
        }
        let r: ListPartsResult = self.run_json(&req).0?;
        let parts: Vec<PartMeta> = r
            .part
            .into_iter()
            .map(|p| PartMeta {
                part_number: p.part_number,
                etag: proto::unquote_etag(&p.etag).to_string(),
                size: p.size,
            })
            .collect();
        let next_marker = if r.is_truncated {
            r.next_part_number_marker
                .parse()
                .ok()
                .or(parts.last().map(|p| p.part_number))
        } else {
            None
        };
        Ok(PartsPage { parts, next_marker })
    }

    fn complete(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
        size: u64,
    ) -> Result<String, StoreError> {
        Self::check_key(key)?;
        if parts.is_empty() {
            return Err(StoreError::Invalid(
                "Complete needs at least one part".into(),
            ));
        }
        let body = serde_json::to_vec(&CompleteRequest {
            part: parts
                .iter()
                .map(|p| CompletePart {
                    part_number: p.part_number,
                    etag: proto::unquote_etag(&p.etag).to_string(),
                })
                .collect(),
        })
        .map_err(|e| StoreError::Invalid(e.to_string()))?;
        let md5 = proto::md5(&body);
        let mut req = Request::new(
            "CompleteMultipartUpload",
            Method::POST,
            Host::Object,
            Some(key),
        )
        .param("uploadId", upload_id)
        .body(Bytes::from(body), md5);
        req.lock_to_caller = true;
        let started = Instant::now();
        // Whether an attempt before the last may have reached the server (and
        // merged): then "already completed" or "no such upload" are not final.
        let mut earlier = false;
        let mut waits = 0;
        loop {
            let (result, attempts) = self.run_json::<CompleteResult>(&req);
            earlier |= attempts > 1;
            let e = match result {
                Ok(r) => return Ok(proto::unquote_etag(&r.etag).to_string()),
                Err(e) => e,
            };
            match e.code() {
                // A merge of this upload is running: our own attempt whose
                // connection was cut, most likely. Wait for it (bounded), then
                // ask again: the answer then says how it ended.
                Some(ErrorCode::AlreadyLock) => {
                    earlier = true;
                    waits += 1;
                    let pause = self.cfg.retry.backoff(waits);
                    if started.elapsed() + pause > self.cfg.merge_wait {
                        log::warn!(
                            "CompleteMultipartUpload {key:?}: still merging after {:?}; giving up",
                            started.elapsed()
                        );
                        return Err(StoreError::GaveUp {
                            attempts: waits,
                            last: Box::new(e),
                        });
                    }
                    if waits == 1 {
                        log::info!(
                            "CompleteMultipartUpload {key:?}: a merge is already running; waiting for it"
                        );
                    }
                    std::thread::sleep(pause);
                }
                // API.md §9: an earlier attempt may have finished the object;
                // the key's size decides.
                Some(ErrorCode::MultipartAlreadyCompleted | ErrorCode::NoSuchUpload) if earlier => {
                    return match crate::store::landed(self, key, size, None)? {
                        Some(etag) => {
                            log::info!(
                                "CompleteMultipartUpload {key:?}: an earlier attempt completed it"
                            );
                            Ok(etag)
                        }
                        None => Err(e),
                    };
                }
                _ => return Err(e),
            }
        }
    }

    fn abort(&self, key: &str, upload_id: &str) -> Result<(), StoreError> {
        Self::check_key(key)?;
        let req = Request::new(
            "AbortMultipartUpload",
            Method::DELETE,
            Host::Object,
            Some(key),
        )
        .param("uploadId", upload_id);
        match self.execute(&req, &|_| Ok(())) {
            (Ok(_), _) => Ok(()),
            (Err(e), attempts) if attempts > 1 && e.code() == Some(&ErrorCode::NoSuchUpload) => {
                Ok(())
            }
            (Err(e), _) => Err(e),
        }
    }

    fn list_uploads(&self, prefix: &str, marker: &str) -> Result<UploadsPage, StoreError> {
        rules::validate_prefix(prefix).map_err(|reason| StoreError::InvalidKey {
            key: prefix.to_string(),
            reason,
        })?;
        let mut req = Request::new("ListMultipartUploads", Method::GET, Host::Object, None)
            .param("uploads", "");
        if !prefix.is_empty() {
            req = req.param("prefix", prefix);
        }
        if !marker.is_empty() {
            req = req.param("upload-id-marker", marker);
        }
        let r: ListUploadsResult = self.run_json(&req).0?;
        let uploads: Vec<UploadMeta> = r
            .upload
            .into_iter()
            .map(|u| UploadMeta {
                key: u.key,
                upload_id: u.upload_id,
                initiated: proto::time::parse(&u.initiated),
            })
            .collect();
        let next_marker = if r.is_truncated {
            Some(if r.next_upload_id_marker.is_empty() {
                uploads.last().map(|u| u.key.clone()).unwrap_or_default()
            } else {
                r.next_upload_id_marker
            })
        } else {
            None
        };
        Ok(UploadsPage {
            uploads,
            next_marker,
        })
    }
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

    #[test]
    fn endpoints_must_be_http_urls() {
        assert!(ClientConfig::endpoint("http://127.0.0.1:9000/").is_ok());
        assert!(ClientConfig::endpoint("ftp://x").is_err());
        let r = ClientConfig::region("ap-tianjin").unwrap();
        assert_eq!(r.object_endpoint, "https://cdcs.ap-tianjin.myqcloud.com");
        assert!(ClientConfig::region("x/../y").is_err());
    }
}
