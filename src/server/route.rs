//! Which CDCS operation a request is: method + raw path + which query parameters exist.
//! Decodes the coffer, key and query once; checks nothing about their validity or existence.

use crate::protocol::encode::{parse_query, url_decode};
use axum::http::Method;

macro_rules! operations {
    ($($name:ident),* $(,)?) => {
        /// The operations of API.md §5–7, named as `/-/stats` and the fault spec name them.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Op {
            $($name,)*
            /// A method/path combination the service does not have (405).
            MethodNotAllowed,
        }

        impl Op {
            /// Every real operation (not `MethodNotAllowed`).
            pub const ALL: &'static [Op] = &[$(Op::$name,)*];

            /// The operation's name, as the documents spell it.
            pub fn name(self) -> &'static str {
                match self {
                    $(Op::$name => stringify!($name),)*
                    Op::MethodNotAllowed => "MethodNotAllowed",
                }
            }
        }
    };
}

operations! {
    GetService,
    PutCoffer,
    DeleteCoffer,
    GetCoffer,
    ListMultipartUploads,
    PutCofferLifecycle,
    GetCofferLifecycle,
    PutCofferPolicy,
    GetCofferPolicy,
    DeleteCofferPolicy,
    PutObject,
    GetObject,
    HeadObject,
    InitiateMultipartUpload,
    UploadPart,
    ListParts,
    CompleteMultipartUpload,
    AbortMultipartUpload,
}

impl Op {
    /// Parses an operation name, ignoring case (fault specs are typed by hand).
    pub fn parse(name: &str) -> Option<Op> {
        Op::ALL
            .iter()
            .copied()
            .find(|op| op.name().eq_ignore_ascii_case(name))
    }
}

/// A request, located: the operation and its decoded coffer, key and query.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub op: Op,
    /// Empty for GetService.
    pub coffer: String,
    /// The decoded object key; empty for service and coffer operations.
    pub key: String,
    /// False when the path's key was not valid UTF-8 once decoded.
    pub key_decoded: bool,
    /// The decoded path the signature covers (`/coffer/key`).
    pub signed_path: String,
    /// Decoded query pairs in their order; `None` when undecodable.
    pub query: Option<Vec<(String, String)>>,
}

impl Route {
    /// The value of query parameter `name`, when present.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .as_ref()?
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// `coffer/key` for logs and error bodies.
    pub fn resource(&self) -> String {
        match (self.coffer.is_empty(), self.key.is_empty()) {
            (true, _) => "/".to_string(),
            (false, true) => self.coffer.clone(),
            (false, false) => format!("{}/{}", self.coffer, self.key),
        }
    }
}

/// Locates a request. `raw_path` is the path as received (percent-encoded).
pub fn route(method: &Method, raw_path: &str, raw_query: Option<&str>) -> Route {
    let query = parse_query(raw_query.unwrap_or(""));
    // Parameter names decide the operation; when the query cannot be decoded,
    // the raw names still say which operation was meant.
    let names: Vec<String> = match &query {
        Some(q) => q.iter().map(|(k, _)| k.clone()).collect(),
        None => raw_query
            .unwrap_or("")
            .split('&')
            .map(|p| p.split_once('=').map_or(p, |(k, _)| k).to_string())
            .collect(),
    };
    let has = |n: &str| names.iter().any(|k| k == n);

    let trimmed = raw_path.strip_prefix('/').unwrap_or(raw_path);
    let (raw_coffer, raw_key) = match trimmed.split_once('/') {
        Some((c, k)) => (c, k),
        None => (trimmed, ""),
    };
    let coffer = url_decode(raw_coffer).unwrap_or_else(|| raw_coffer.to_string());
    // The key is data: `//`, `..` and `%2F` are kept exactly as decoded.
    let decoded_key = url_decode(raw_key);
    let key_decoded = decoded_key.is_some();
    let key = decoded_key.unwrap_or_else(|| raw_key.to_string());
    let signed_path = url_decode(raw_path).unwrap_or_else(|| raw_path.to_string());

    let op = if coffer.is_empty() {
        match *method {
            Method::GET => Op::GetService,
            _ => Op::MethodNotAllowed,
        }
    } else if raw_key.is_empty() {
        match *method {
            Method::PUT if has("lifecycle") => Op::PutCofferLifecycle,
            Method::PUT if has("policy") => Op::PutCofferPolicy,
            Method::PUT => Op::PutCoffer,
            Method::GET if has("uploads") => Op::ListMultipartUploads,
            Method::GET if has("lifecycle") => Op::GetCofferLifecycle,
            Method::GET if has("policy") => Op::GetCofferPolicy,
            Method::GET => Op::GetCoffer,
            Method::DELETE if has("policy") => Op::DeleteCofferPolicy,
            // No DeleteCofferLifecycle exists in the documents.
            Method::DELETE if has("lifecycle") => Op::MethodNotAllowed,
            Method::DELETE => Op::DeleteCoffer,
            _ => Op::MethodNotAllowed,
        }
    } else {
        match *method {
            Method::PUT if has("partNumber") || has("uploadId") => Op::UploadPart,
            Method::PUT => Op::PutObject,
            Method::GET if has("uploadId") => Op::ListParts,
            Method::GET => Op::GetObject,
            Method::HEAD => Op::HeadObject,
            Method::POST if has("uploads") => Op::InitiateMultipartUpload,
            Method::POST if has("uploadId") => Op::CompleteMultipartUpload,
            Method::DELETE if has("uploadId") => Op::AbortMultipartUpload,
            // There is no DeleteObject: the coffer is write-once.
            _ => Op::MethodNotAllowed,
        }
    };
    Route {
        op,
        coffer,
        key,
        key_decoded,
        signed_path,
        query,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(method: Method, path: &str, query: Option<&str>) -> Op {
        route(&method, path, query).op
    }

    #[test]
    fn operations_are_chosen_by_method_path_and_parameters() {
        assert_eq!(op(Method::GET, "/", None), Op::GetService);
        assert_eq!(op(Method::PUT, "/c-1", None), Op::PutCoffer);
        assert_eq!(op(Method::GET, "/c-1", Some("uploads")), Op::ListMultipartUploads);
        assert_eq!(op(Method::GET, "/c-1/", Some("uploads")), Op::ListMultipartUploads);
        assert_eq!(op(Method::PUT, "/c-1", Some("lifecycle")), Op::PutCofferLifecycle);
        assert_eq!(op(Method::DELETE, "/c-1", Some("policy")), Op::DeleteCofferPolicy);
        assert_eq!(op(Method::DELETE, "/c-1", None), Op::DeleteCoffer);
        assert_eq!(
            op(Method::PUT, "/c-1/k", Some("partNumber=1&uploadId=x")),
            Op::UploadPart
        );
        assert_eq!(op(Method::POST, "/c-1/k", Some("uploads")), Op::InitiateMultipartUpload);
        assert_eq!(op(Method::POST, "/c-1/k", Some("uploadId=x")), Op::CompleteMultipartUpload);
        assert_eq!(op(Method::DELETE, "/c-1/k", Some("uploadId=x")), Op::AbortMultipartUpload);
        assert_eq!(op(Method::DELETE, "/c-1/k", None), Op::MethodNotAllowed);
        assert_eq!(op(Method::PATCH, "/c-1/k", None), Op::MethodNotAllowed);
        assert_eq!(op(Method::HEAD, "/c-1/k", None), Op::HeadObject);
    }

    #[test]
    fn keys_are_decoded_but_never_normalised() {
        let r = route(&Method::GET, "/c-1/a%2F..%2Fb", None);
        assert_eq!(r.key, "a/../b");
        assert_eq!(r.signed_path, "/c-1/a/../b");
        let r = route(&Method::GET, "/c-1/a//b/%20+%25", None);
        assert_eq!(r.key, "a//b/ +%");
        let r = route(&Method::GET, "/c-1/%FF", None);
        assert!(!r.key_decoded);
    }

    #[test]
    fn operation_names_parse_ignoring_case() {
        assert_eq!(Op::parse("uploadpart"), Some(Op::UploadPart));
        assert_eq!(Op::parse("MethodNotAllowed"), None);
        assert_eq!(Op::ALL.len(), 18);
    }
}
