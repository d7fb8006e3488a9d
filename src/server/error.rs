//! Error answers: the one place the CDCS error JSON (Code, Message, Resource, RequestId,
//! TraceId) is built, and how a storage error becomes one without leaking its detail.
//! Must not decide which error a request gets: the handlers do.

use super::disk::DiskError;
use super::http::{empty, full, random_hex, Body};
use super::op::Call;
use crate::protocol::{self as proto, ErrorBody, ErrorCode};
use hyper::{Response, StatusCode};

/// The JSON body of an error about `resource`, and the fresh trace id it carries.
pub fn error_json(
    code: &ErrorCode,
    message: &str,
    resource: &str,
    request_id: &str,
) -> (String, Vec<u8>) {
    let trace_id = random_hex(12);
    let body = ErrorBody {
        code: code.as_str().to_string(),
        message: message.to_string(),
        resource: resource.to_string(),
        request_id: request_id.to_string(),
        trace_id: trace_id.clone(),
    };
    (trace_id, serde_json::to_vec(&body).unwrap_or_default())
}

/// The code and message a storage error answers with. An I/O failure is logged
/// (after `context`) and answered `InternalError` with `generic`: paths stay inside.
pub fn disk_error(e: DiskError, context: &str, generic: &str) -> (ErrorCode, String) {
    match e {
        DiskError::Code(c, m) => (c, m),
        DiskError::Io(m) => {
            log::error!("{context}: {m}");
            (ErrorCode::InternalError, generic.to_string())
        }
    }
}

impl Call {
    /// The error answer: status of `code`, JSON body (none for HEAD).
    pub fn error(&self, code: ErrorCode, message: &str) -> Response<Body> {
        let status =
            StatusCode::from_u16(code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let (trace, json) = error_json(&code, message, &self.resource(), &self.request_id);
        let b = self
            .base(status)
            .header(proto::TRACE_ID_HEADER, trace)
            .header("content-type", "application/json");
        let body = if self.head { empty() } else { full(json) };
        b.body(body).unwrap_or_else(|_| Response::new(empty()))
    }

    /// The error answer for a storage error.
    pub fn fail(&self, e: DiskError) -> Response<Body> {
        let context = format!("{} {:?}", self.op, self.resource());
        let (code, message) = disk_error(e, &context, "storage failure");
        self.error(code, &message)
    }
}
