//! `CdcsClient`: the `ObjectStore` over HTTP, one method per operation — what
//! each sends, which answers count as broken, how a retried operation whose
//! first attempt landed is recognised. Sending, signing, retries and error
//! answers are the engine's (`engine.rs`); knows nothing of files or FUSE.

use super::engine::{header_etag, parse_content_range, Answer, Engine, Host, Request};
use super::ClientConfig;
use crate::protocol::rules::{self, MAX_PART_SIZE, MAX_PUT_SIZE};
use crate::protocol::tolerant::from_body;
use crate::protocol::types::*;
use crate::protocol::{self as proto, ErrorCode};
use crate::store::*;
use bytes::Bytes;
use reqwest::Method;
use std::sync::Arc;
use std::time::Instant;

/// A CDCS coffer over HTTP. Cheap to clone; clones share the connection pool.
#[derive(Clone)]
pub struct CdcsClient {
    engine: Arc<Engine>,
    coffer: String,
}

impl std::fmt::Debug for CdcsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CdcsClient")
            .field("endpoint", &self.engine.cfg().object_endpoint)
            .field("coffer", &self.coffer)
            .finish()
    }
}

impl CdcsClient {
    /// A client of `coffer` (`name-appid`).
    pub fn new(cfg: ClientConfig, coffer: &str) -> Result<CdcsClient, StoreError> {
        if !rules::validate_coffer_id(coffer) {
            return Err(StoreError::Invalid(format!(
                "invalid coffer {coffer:?}: expected NAME-APPID (lowercase letters, digits, '-')"
            )));
        }
        Ok(CdcsClient {
            engine: Arc::new(Engine::new(cfg)?),
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

    /// A request of `op` addressed to this client's coffer.
    fn request<'a>(
        &'a self,
        op: &'static str,
        method: Method,
        host: Host,
        key: Option<&'a str>,
    ) -> Request<'a> {
        Request::new(op, method, host, &self.coffer, key)
    }

    fn check_key(key: &str) -> Result<(), StoreError> {
        rules::validate_key(key).map_err(|reason| StoreError::InvalidKey {
            key: key.to_string(),
            reason,
        })
    }

    /// GetService: the coffers of this account.
    pub fn get_service(&self) -> Result<ServiceResult, StoreError> {
        let req = self.request("GetService", Method::GET, Host::Service, None);
        self.engine.run_json(&req).0
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
        let req = self
            .request("PutCoffer", Method::PUT, Host::Service, None)
            .body(Bytes::from(body), md5);
        self.engine.run(&req).map(|_| ())
    }
}

impl ObjectStore for CdcsClient {
    fn coffer(&self) -> &str {
        &self.coffer
    }

    fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        Self::check_key(key)?;
        let req = self.request("HeadObject", Method::HEAD, Host::Object, Some(key));
        match self.engine.run(&req) {
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
        let mut req = self.request("GetObject", Method::GET, Host::Object, Some(key));
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
        let a = self.engine.execute(&req, &check).0?;
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
        let req = self
            .request("PutObject", Method::PUT, Host::Object, Some(key))
            .body(data, md5);
        let check = |a: &Answer| match header_etag(a) {
            Some(e) if proto::etag_is_md5(&e) && !e.eq_ignore_ascii_case(&md5_hex) => Err(format!(
                "ETag {e} is not the MD5 {md5_hex} of what was sent"
            )),
            _ => Ok(()),
        };
        match self.engine.execute(&req, &check) {
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
        let mut req = self
            .request("GetCoffer", Method::GET, Host::Service, None)
            .param(
                "max-keys",
                max_keys.clamp(1, rules::MAX_LIST_ENTRIES).to_string(),
            );
        if !prefix.is_empty() {
            req = req.param("prefix", prefix);
        }
        if !marker.is_empty() {
            req = req.param("marker", marker);
        }
        let r: ListCofferResult = self.engine.run_json(&req).0?;
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
        let req = self
            .request(
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
        match self.engine.execute(&req, &check) {
            (Ok(a), _) => {
                Ok(Engine::parse::<InitiateResult>("InitiateMultipartUpload", key, &a)?.upload_id)
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
        let req = self
            .request("UploadPart", Method::PUT, Host::Object, Some(key))
            .param("partNumber", part_number.to_string())
            .param("uploadId", upload_id)
            .body(data, md5);
        let check = |a: &Answer| match header_etag(a) {
            Some(e) if proto::etag_is_md5(&e) && !e.eq_ignore_ascii_case(&md5_hex) => Err(format!(
                "part {part_number} ETag {e} is not the MD5 {md5_hex} of what was sent"
            )),
            _ => Ok(()),
        };
        self.engine.execute(&req, &check).0?;
        // Complete wants each part's MD5 (the Complete document), whatever form the
        // service's ETag header takes.
        Ok(md5_hex)
    }

    fn list_parts(&self, key: &str, upload_id: &str, marker: u32) -> Result<PartsPage, StoreError> {
        Self::check_key(key)?;
        let mut req = self
            .request("ListParts", Method::GET, Host::Object, Some(key))
            .param("uploadId", upload_id);
        if marker > 0 {
            req = req.param("part-number-marker", marker.to_string());
        }
        let r: ListPartsResult = self.engine.run_json(&req).0?;
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
        let mut req = self
            .request(
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
            let (result, attempts) = self.engine.run_json::<CompleteResult>(&req);
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
                    let pause = self.engine.cfg().retry.backoff(waits);
                    if started.elapsed() + pause > self.engine.cfg().merge_wait {
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
        let req = self
            .request(
                "AbortMultipartUpload",
                Method::DELETE,
                Host::Object,
                Some(key),
            )
            .param("uploadId", upload_id);
        match self.engine.execute(&req, &|_| Ok(())) {
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
        let mut req = self
            .request("ListMultipartUploads", Method::GET, Host::Object, None)
            .param("uploads", "");
        if !prefix.is_empty() {
            req = req.param("prefix", prefix);
        }
        if !marker.is_empty() {
            req = req.param("upload-id-marker", marker);
        }
        let r: ListUploadsResult = self.engine.run_json(&req).0?;
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
