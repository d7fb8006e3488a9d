//! The one seam between the filesystem and the network: the `ObjectStore` trait,
//! its value types and its error (with the one errno mapping). No I/O here.

use crate::protocol::rules::KeyError;
use crate::protocol::ErrorCode;
use bytes::Bytes;
use std::time::SystemTime;

mod children;
#[cfg(any(test, feature = "test-stores"))]
pub mod faulty;
#[cfg(any(test, feature = "test-stores"))]
pub mod memory;

pub use children::{Child, KeyView, ListChildren, NAMED_PAGE, NAMED_REQUESTS, PAGE};

/// What a listing or HEAD tells about an object.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
    /// As the service sent it (quotes removed).
    pub etag: String,
    pub last_modified: Option<SystemTime>,
}

/// One page of a GetCoffer listing.
#[derive(Debug, Clone, Default)]
pub struct ListPage {
    pub objects: Vec<ObjectMeta>,
    /// Where the next page starts, when the listing is truncated.
    pub next_marker: Option<String>,
}

/// A part already uploaded (ListParts).
#[derive(Debug, Clone, PartialEq)]
pub struct PartMeta {
    pub part_number: u32,
    pub etag: String,
    pub size: u64,
}

/// One page of ListParts.
#[derive(Debug, Clone, Default)]
pub struct PartsPage {
    pub parts: Vec<PartMeta>,
    pub next_marker: Option<u32>,
}

/// An open multipart upload (ListMultipartUploads).
#[derive(Debug, Clone, PartialEq)]
pub struct UploadMeta {
    pub key: String,
    pub upload_id: String,
    pub initiated: Option<SystemTime>,
}

/// One page of ListMultipartUploads.
#[derive(Debug, Clone, Default)]
pub struct UploadsPage {
    pub uploads: Vec<UploadMeta>,
    pub next_marker: Option<String>,
}

/// A byte range of GetObject, as RFC 7233 spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    /// `bytes=a-b`, both inclusive.
    Bounded(u64, u64),
    /// `bytes=a-`
    From(u64),
    /// `bytes=-n`: the last n bytes.
    Suffix(u64),
}

impl Range {
    /// The `Range` header value.
    pub fn header(&self) -> String {
        match self {
            Range::Bounded(a, b) => format!("bytes={a}-{b}"),
            Range::From(a) => format!("bytes={a}-"),
            Range::Suffix(n) => format!("bytes=-{n}"),
        }
    }
}

/// The bytes of a GetObject answer.
#[derive(Debug, Clone)]
pub struct GetResult {
    pub data: Bytes,
    /// Offset of `data[0]` in the object.
    pub start: u64,
    /// Size of the whole object.
    pub object_size: u64,
    pub etag: String,
}

/// A part listed in CompleteMultipartUpload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletedPart {
    pub part_number: u32,
    /// MD5 hex of the part, without quotes.
    pub etag: String,
}

/// Operations of one coffer. Implemented over HTTP by `client::CdcsClient`.
pub trait ObjectStore: Send + Sync {
    /// The coffer id (`name-appid`).
    fn coffer(&self) -> &str;
    /// HeadObject; `Ok(None)` when there is no such object.
    fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError>;
    /// GetObject, whole or a range.
    fn get(&self, key: &str, range: Option<Range>) -> Result<GetResult, StoreError>;
    /// PutObject (one request, ≤ 5 GiB, never empty); returns the ETag.
    fn put(&self, key: &str, data: Bytes) -> Result<String, StoreError>;
    /// One GetCoffer page: keys after `marker` starting with `prefix`.
    fn list(&self, prefix: &str, marker: &str, max_keys: u32) -> Result<ListPage, StoreError>;
    /// InitiateMultipartUpload; returns the upload id.
    fn initiate(&self, key: &str) -> Result<String, StoreError>;
    /// UploadPart with its precomputed MD5; returns the ETag (checked against the MD5).
    fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        data: Bytes,
        md5: [u8; 16],
    ) -> Result<String, StoreError>;
    /// One ListParts page, parts after `marker`.
    fn list_parts(&self, key: &str, upload_id: &str, marker: u32) -> Result<PartsPage, StoreError>;
    /// CompleteMultipartUpload; `size` is the object's expected total size (used
    /// to decide a retried Complete, API.md §9). Returns the object's ETag.
    fn complete(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
        size: u64,
    ) -> Result<String, StoreError>;
    /// AbortMultipartUpload.
    fn abort(&self, key: &str, upload_id: &str) -> Result<(), StoreError>;
    /// One ListMultipartUploads page, keys after `marker`.
    fn list_uploads(&self, prefix: &str, marker: &str) -> Result<UploadsPage, StoreError>;
}

/// Whether `key` holds an object of `size` bytes and, where its ETag is an
/// MD5, of `md5` (hex): how a write whose answer was lost, or whose retry was
/// told the key is taken, learns that its first try landed (API.md §9). The
/// object's ETag when it did.
pub fn landed(
    store: &dyn ObjectStore,
    key: &str,
    size: u64,
    md5: Option<&str>,
) -> Result<Option<String>, StoreError> {
    let Some(meta) = store.head(key)? else {
        return Ok(None);
    };
    let etag_ok = match md5 {
        Some(m) if crate::protocol::etag_is_md5(&meta.etag) => {
            crate::protocol::unquote_etag(&meta.etag).eq_ignore_ascii_case(m)
        }
        _ => true,
    };
    Ok((meta.size == size && etag_ok).then_some(meta.etag))
}

/// Every object under `prefix`, page by page (1000 per request).
pub struct ListAll<'a> {
    store: &'a dyn ObjectStore,
    prefix: String,
    marker: Option<String>,
    page: std::vec::IntoIter<ObjectMeta>,
    done: bool,
}

impl<'a> ListAll<'a> {
    pub fn new(store: &'a dyn ObjectStore, prefix: &str) -> ListAll<'a> {
        ListAll::after(store, prefix, "")
    }

    /// Keys under `prefix` that sort after `marker`.
    pub fn after(store: &'a dyn ObjectStore, prefix: &str, marker: &str) -> ListAll<'a> {
        ListAll {
            store,
            prefix: prefix.to_string(),
            marker: Some(marker.to_string()),
            page: Vec::new().into_iter(),
            done: false,
        }
    }
}

impl Iterator for ListAll<'_> {
    type Item = Result<ObjectMeta, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(o) = self.page.next() {
                return Some(Ok(o));
            }
            if self.done {
                return None;
            }
            let marker = self.marker.take()?;
            match self.store.list(&self.prefix, &marker, 1000) {
                Ok(page) => {
                    // A truncated page must move the marker forward, or we would loop forever.
                    match page.next_marker {
                        Some(m) if m > marker => self.marker = Some(m),
                        Some(_) => {
                            self.done = true;
                            return Some(Err(StoreError::BadAnswer {
                                op: "GetCoffer",
                                key: self.prefix.clone(),
                                detail: "truncated listing did not advance its marker".into(),
                                request_id: String::new(),
                            }));
                        }
                        None => self.done = true,
                    }
                    self.page = page.objects.into_iter();
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// Why an operation on the coffer failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The service answered with an error code.
    #[error("{op} {key:?}: {code} (HTTP {status}): {message} [request id {request_id}, trace id {trace_id}]")]
    Service {
        op: &'static str,
        key: String,
        code: ErrorCode,
        status: u16,
        message: String,
        request_id: String,
        trace_id: String,
    },
    /// No usable answer: connection refused or reset, timeout, truncated body.
    #[error("{op} {key:?}: {detail}")]
    Transport {
        op: &'static str,
        key: String,
        detail: String,
    },
    /// An answer that breaks the protocol (unparseable, wrong ETag, wrong length).
    #[error("{op} {key:?}: bad answer: {detail} [request id {request_id}]")]
    BadAnswer {
        op: &'static str,
        key: String,
        detail: String,
        request_id: String,
    },
    /// A key the protocol cannot carry; refused before any request.
    #[error("invalid object key {key:?}: {reason}")]
    InvalidKey { key: String, reason: KeyError },
    /// Arguments the protocol refuses (sizes, part numbers); no request was sent.
    #[error("{0}")]
    Invalid(String),
    /// Retries ran out of time or count; wraps the last failure.
    #[error("{last} (gave up after {attempts} attempts)")]
    GaveUp {
        attempts: u32,
        last: Box<StoreError>,
    },
}

impl StoreError {
    /// The service's error code, when the service answered with one.
    pub fn code(&self) -> Option<&ErrorCode> {
        match self {
            StoreError::Service { code, .. } => Some(code),
            StoreError::GaveUp { last, .. } => last.code(),
            _ => None,
        }
    }

    /// The request id of the failed request, if any.
    pub fn request_id(&self) -> &str {
        match self {
            StoreError::Service { request_id, .. } | StoreError::BadAnswer { request_id, .. } => {
                request_id
            }
            StoreError::GaveUp { last, .. } => last.request_id(),
            _ => "",
        }
    }

    /// True when the service said the object, upload or coffer is not there.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self.code(),
            Some(
                ErrorCode::ObjectNotExists
                    | ErrorCode::NoSuchUpload
                    | ErrorCode::MultipartNotExists
                    | ErrorCode::CofferNotFound
                    | ErrorCode::NoSuchCoffer
            )
        )
    }

    /// The errno a filesystem caller reports for this error.
    pub fn errno(&self) -> i32 {
        use ErrorCode as C;
        match self {
            StoreError::InvalidKey {
                reason: KeyError::TooLong(_),
                ..
            } => libc::ENAMETOOLONG,
            StoreError::InvalidKey { .. } => libc::EINVAL,
            StoreError::Invalid(_) => libc::EINVAL,
            StoreError::Transport { .. } | StoreError::BadAnswer { .. } => libc::EIO,
            StoreError::GaveUp { last, .. } => last.errno(),
            StoreError::Service { code, .. } => match code {
                C::ObjectNotExists
                | C::NoSuchUpload
                | C::MultipartNotExists
                | C::CofferNotFound
                | C::NoSuchCoffer => libc::ENOENT,
                C::ObjectAlreadyExists | C::ObjectAlreadyExistsOwnedByYou => libc::EEXIST,
                C::ObjectAlreadyUploading | C::AlreadyLock => libc::EBUSY,
                C::AuthFailed | C::PolicyCheckFailed | C::ServiceNotOpen | C::ConsoleAuthFailed => {
                    libc::EACCES
                }
                C::InvalidObjectKey | C::InvalidObjectPrefix | C::InvalidArgument => libc::EINVAL,
                C::EntityTooLarge => libc::EFBIG,
                C::InvalidRange => libc::EINVAL,
                _ => libc::EIO,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(code: ErrorCode) -> StoreError {
        StoreError::Service {
            op: "PutObject",
            key: "k".into(),
            status: code.status(),
            code,
            message: String::new(),
            request_id: "r".into(),
            trace_id: "t".into(),
        }
    }

    #[test]
    fn errors_map_to_errnos_tools_understand() {
        assert_eq!(
            service(ErrorCode::ObjectAlreadyExists).errno(),
            libc::EEXIST
        );
        assert_eq!(
            service(ErrorCode::ObjectAlreadyUploading).errno(),
            libc::EBUSY
        );
        assert_eq!(service(ErrorCode::ObjectNotExists).errno(), libc::ENOENT);
        assert_eq!(service(ErrorCode::AuthFailed).errno(), libc::EACCES);
        assert_eq!(service(ErrorCode::ServiceUnavailable).errno(), libc::EIO);
        let long = StoreError::InvalidKey {
            key: "x".into(),
            reason: KeyError::TooLong(900),
        };
        assert_eq!(long.errno(), libc::ENAMETOOLONG);
        let gave_up = StoreError::GaveUp {
            attempts: 3,
            last: Box::new(service(ErrorCode::NoSuchUpload)),
        };
        assert_eq!(gave_up.errno(), libc::ENOENT);
        assert_eq!(gave_up.request_id(), "r");
    }
}
