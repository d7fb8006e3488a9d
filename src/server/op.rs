//! What a request asks for: method, path and query parsed once into an [`Op`] and the
//! [`Call`] that carries it (coffer, key, query parameters, request id) to a handler.
//! Owns the names of the operations (stats, logs and `--faults` use them). Must not
//! look at headers or bodies, touch the store, or decide whether a request is allowed.

use crate::protocol::encode::{parse_query, url_decode};
use hyper::{Method, Uri};
use std::fmt;
use std::str::FromStr;

/// One operation of the server: a CDCS operation (API.md §5–7), a test-API endpoint,
/// or a request that names none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
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
    /// A method the path has no operation for (the coffer has no delete of objects).
    MethodNotAllowed,
    /// `GET /-/stats`.
    TestStats,
    /// `POST /-/faults`.
    TestFaults,
    /// Any other request under `/-/`.
    TestUnknown,
    /// Path or query is not valid UTF-8 percent-encoding: nothing else can be read.
    Malformed,
}

impl Op {
    /// The CDCS operations: the ones a fault rule may name and stats count by name.
    pub const CDCS: [Op; 18] = [
        Op::GetService,
        Op::PutCoffer,
        Op::DeleteCoffer,
        Op::GetCoffer,
        Op::ListMultipartUploads,
        Op::PutCofferLifecycle,
        Op::GetCofferLifecycle,
        Op::PutCofferPolicy,
        Op::GetCofferPolicy,
        Op::DeleteCofferPolicy,
        Op::PutObject,
        Op::GetObject,
        Op::HeadObject,
        Op::InitiateMultipartUpload,
        Op::UploadPart,
        Op::ListParts,
        Op::CompleteMultipartUpload,
        Op::AbortMultipartUpload,
    ];

    /// The operation's name, as in API.md; the key of `/-/stats` "requests".
    pub fn name(self) -> &'static str {
        match self {
            Op::GetService => "GetService",
            Op::PutCoffer => "PutCoffer",
            Op::DeleteCoffer => "DeleteCoffer",
            Op::GetCoffer => "GetCoffer",
            Op::ListMultipartUploads => "ListMultipartUploads",
            Op::PutCofferLifecycle => "PutCofferLifecycle",
            Op::GetCofferLifecycle => "GetCofferLifecycle",
            Op::PutCofferPolicy => "PutCofferPolicy",
            Op::GetCofferPolicy => "GetCofferPolicy",
            Op::DeleteCofferPolicy => "DeleteCofferPolicy",
            Op::PutObject => "PutObject",
            Op::GetObject => "GetObject",
            Op::HeadObject => "HeadObject",
            Op::InitiateMultipartUpload => "InitiateMultipartUpload",
            Op::UploadPart => "UploadPart",
            Op::ListParts => "ListParts",
            Op::CompleteMultipartUpload => "CompleteMultipartUpload",
            Op::AbortMultipartUpload => "AbortMultipartUpload",
            Op::MethodNotAllowed => "MethodNotAllowed",
            Op::TestStats => "TestStats",
            Op::TestFaults => "TestFaults",
            Op::TestUnknown => "TestApi",
            Op::Malformed => "Unknown",
        }
    }

    /// Whether this is an endpoint of the test API (`/-/…`), which has rules of its own.
    pub fn is_test_api(self) -> bool {
        matches!(self, Op::TestStats | Op::TestFaults | Op::TestUnknown)
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is no CDCS operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownOp;

impl FromStr for Op {
    type Err = UnknownOp;

    /// A CDCS operation by name, any case (`uploadpart` is `UploadPart`).
    fn from_str(s: &str) -> Result<Op, UnknownOp> {
        Op::CDCS
            .into_iter()
            .find(|op| op.name().eq_ignore_ascii_case(s))
            .ok_or(UnknownOp)
    }
}

/// The request, parsed far enough to dispatch.
pub struct Call {
    pub op: Op,
    /// Decoded first path segment; empty for `/`.
    pub coffer: String,
    /// Decoded rest of the path after the coffer's `/`, if there is one.
    pub key: Option<String>,
    /// Decoded query parameters, in order.
    pub params: Vec<(String, String)>,
    pub request_id: String,
    /// A HEAD request: error answers carry no body.
    pub head: bool,
}

impl Call {
    /// Parses method, path and query. A path or query that does not decode gives
    /// [`Op::Malformed`] with whatever did decode, for the error's `Resource`.
    pub fn parse(method: &Method, uri: &Uri, request_id: String) -> Call {
        let path = uri.path();
        let trimmed = path.strip_prefix('/').unwrap_or(path);
        let (raw_coffer, raw_key) = match trimmed.split_once('/') {
            Some((c, k)) => (c, Some(k)),
            None => (trimmed, None),
        };
        let params = parse_query(uri.query().unwrap_or(""));
        let coffer = url_decode(raw_coffer);
        let key = raw_key.map(url_decode);
        let mut call = Call {
            op: Op::Malformed,
            coffer: coffer.clone().unwrap_or_default(),
            key: key.clone().flatten(),
            params: params.clone().unwrap_or_default(),
            request_id,
            head: *method == Method::HEAD,
        };
        if params.is_none() || coffer.is_none() || key.is_some_and(|k| k.is_none()) {
            return call;
        }
        call.op = if call.coffer == "-" {
            match (method, call.key()) {
                (&Method::GET, "stats") => Op::TestStats,
                (&Method::POST, "faults") => Op::TestFaults,
                _ => Op::TestUnknown,
            }
        } else {
            operation(method, !call.coffer.is_empty(), call.key.is_some(), |n| {
                call.params
                    .iter()
                    .any(|(k, _)| k == n || k.eq_ignore_ascii_case(n))
            })
        };
        call
    }

    /// A query parameter's value; names match in any case.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name || k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The key, empty when the path has none.
    pub fn key(&self) -> &str {
        self.key.as_deref().unwrap_or("")
    }

    /// `coffer/key` (or the coffer alone): the `Resource` of an error and of logs.
    pub fn resource(&self) -> String {
        match &self.key {
            Some(k) => format!("{}/{k}", self.coffer),
            None => self.coffer.clone(),
        }
    }
}

/// The operation of a request on `/`, `/coffer` or `/coffer/key`, by method and
/// which query parameters are present.
fn operation(method: &Method, coffer: bool, key: bool, q: impl Fn(&str) -> bool) -> Op {
    match (coffer, key) {
        (false, _) => match *method {
            Method::GET => Op::GetService,
            _ => Op::MethodNotAllowed,
        },
        (true, false) => match *method {
            Method::PUT if q("lifecycle") => Op::PutCofferLifecycle,
            Method::PUT if q("policy") => Op::PutCofferPolicy,
            Method::PUT => Op::PutCoffer,
            Method::GET if q("uploads") => Op::ListMultipartUploads,
            Method::GET if q("lifecycle") => Op::GetCofferLifecycle,
            Method::GET if q("policy") => Op::GetCofferPolicy,
            Method::GET => Op::GetCoffer,
            Method::DELETE if q("policy") => Op::DeleteCofferPolicy,
            Method::DELETE => Op::DeleteCoffer,
            _ => Op::MethodNotAllowed,
        },
        (true, true) => match *method {
            Method::PUT if q("partNumber") || q("uploadId") => Op::UploadPart,
            Method::PUT => Op::PutObject,
            Method::GET if q("uploadId") => Op::ListParts,
            Method::GET => Op::GetObject,
            Method::HEAD => Op::HeadObject,
            Method::POST if q("uploads") => Op::InitiateMultipartUpload,
            Method::POST if q("uploadId") => Op::CompleteMultipartUpload,
            Method::DELETE if q("uploadId") => Op::AbortMultipartUpload,
            _ => Op::MethodNotAllowed,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(method: Method, uri: &str) -> Op {
        Call::parse(&method, &uri.parse().unwrap(), String::new()).op
    }

    #[test]
    fn requests_parse_to_their_operations() {
        assert_eq!(op(Method::GET, "/"), Op::GetService);
        assert_eq!(op(Method::PUT, "/c-1"), Op::PutCoffer);
        assert_eq!(op(Method::GET, "/c-1?UPLOADS"), Op::ListMultipartUploads);
        assert_eq!(op(Method::PUT, "/c-1?lifecycle"), Op::PutCofferLifecycle);
        assert_eq!(op(Method::DELETE, "/c-1?policy"), Op::DeleteCofferPolicy);
        assert_eq!(op(Method::PUT, "/c-1/a/b"), Op::PutObject);
        assert_eq!(
            op(Method::PUT, "/c-1/k?partNumber=1&uploadId=u"),
            Op::UploadPart
        );
        assert_eq!(
            op(Method::POST, "/c-1/k?uploads"),
            Op::InitiateMultipartUpload
        );
        assert_eq!(
            op(Method::POST, "/c-1/k?uploadId=u"),
            Op::CompleteMultipartUpload
        );
        assert_eq!(op(Method::DELETE, "/c-1/k"), Op::MethodNotAllowed);
        assert_eq!(op(Method::HEAD, "/c-1"), Op::MethodNotAllowed);
        assert_eq!(op(Method::GET, "/-/stats"), Op::TestStats);
        assert_eq!(op(Method::POST, "/-/faults"), Op::TestFaults);
        assert_eq!(op(Method::GET, "/-/faults"), Op::TestUnknown);
        assert_eq!(op(Method::GET, "/c-1/%ff"), Op::Malformed);
    }

    #[test]
    fn only_cdcs_operations_parse_from_their_names() {
        for op in Op::CDCS {
            assert_eq!(op.name().to_lowercase().parse::<Op>(), Ok(op));
        }
        assert_eq!("MethodNotAllowed".parse::<Op>(), Err(UnknownOp));
        assert_eq!("TestStats".parse::<Op>(), Err(UnknownOp));
        assert_eq!("Nope".parse::<Op>(), Err(UnknownOp));
    }
}
