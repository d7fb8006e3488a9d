//! The CDCS wire protocol: JSON shapes, error codes, key and part rules, signing.
//! Shared by client and server; no I/O lives here.

pub mod encode;
pub mod error;
pub mod rules;
pub mod sign;
pub mod time;
pub mod tolerant;
pub mod types;

pub use error::{ErrorBody, ErrorCode};

/// Response header carrying the service's request id (every answer).
pub const REQUEST_ID_HEADER: &str = "x-cdcs-request-id";
/// Response header carrying the trace id (error answers).
pub const TRACE_ID_HEADER: &str = "x-cdcs-trace-id";
/// Request header carrying a temporary credential's session token.
pub const SECURITY_TOKEN_HEADER: &str = "x-cdcs-security-token";

/// Lowercase hex of bytes (MD5 digests, signatures).
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Bytes of a hex string (either case); `None` when it is not one.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// MD5 of a byte slice.
pub fn md5(data: &[u8]) -> [u8; 16] {
    use md5::{Digest, Md5};
    Md5::digest(data).into()
}

/// `Content-MD5` header value: base64 of the 16-byte digest.
pub fn content_md5(digest: &[u8; 16]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(digest)
}

/// Decodes a `Content-MD5` header; `None` unless it is base64 of exactly 16 bytes.
pub fn parse_content_md5(value: &str) -> Option<[u8; 16]> {
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .ok()?;
    raw.try_into().ok()
}

/// An ETag without surrounding quotes (the service sends both forms).
pub fn unquote_etag(etag: &str) -> &str {
    let t = etag.trim();
    t.strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(t)
}

/// True when an ETag has the form of an MD5 digest (32 hex digits, quotes optional).
pub fn etag_is_md5(etag: &str) -> bool {
    let t = unquote_etag(etag);
    t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The ETag `cofferfs serve` gives a completed multipart object (API.md §9):
/// MD5 of the concatenated binary part digests, a dash, and the part count.
pub fn multipart_etag(part_md5s: &[[u8; 16]]) -> String {
    let mut cat = Vec::with_capacity(part_md5s.len() * 16);
    for d in part_md5s {
        cat.extend_from_slice(d);
    }
    format!("\"{}-{}\"", hex(&md5(&cat)), part_md5s.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_are_compared_without_quotes() {
        assert_eq!(unquote_etag("\"abc\""), "abc");
        assert_eq!(unquote_etag("abc"), "abc");
        assert!(etag_is_md5("\"827ccb0eea8a706c4c34a16891f84e7b\""));
        assert!(!etag_is_md5("\"e1e5b4965bc7d30880ed6d226f78a5390f1c09fc\""));
    }

    #[test]
    fn content_md5_round_trips() {
        let d = md5(b"hello");
        assert_eq!(parse_content_md5(&content_md5(&d)), Some(d));
        assert_eq!(parse_content_md5("bm90IDE2IGJ5dGVz"), None);
    }
}
