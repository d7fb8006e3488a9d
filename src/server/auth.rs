//! Request authentication: checks a request's signature (and session token) against
//! the server's credentials; with none, every request passes. Must not know which
//! operation a request is or answer it: callers turn a failure into `AuthFailed`.

use super::op::Call;
use super::State;
use crate::protocol::{self as proto, sign};
use hyper::body::Incoming;
use hyper::Request;

pub fn check_auth(
    state: &State,
    call: &Call,
    req: &Request<Incoming>,
) -> Result<(), sign::AuthError> {
    let Some(creds) = &state.cfg.credentials else {
        return Ok(());
    };
    let header = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .ok_or(sign::AuthError::Missing)?;
    let auth = sign::parse_authorization(header)?;
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .filter_map(|(k, v)| {
            v.to_str()
                .ok()
                .map(|v| (k.as_str().to_string(), v.to_string()))
        })
        .collect();
    let path = match (&call.coffer, &call.key) {
        (c, _) if c.is_empty() => "/".to_string(),
        (c, Some(k)) => format!("/{c}/{k}"),
        (c, None) => format!("/{c}"),
    };
    sign::verify(
        &auth,
        &creds.secret_id,
        &creds.secret_key,
        crate::protocol::time::now_unix() as i64,
        &sign::Signable {
            method: req.method().as_str(),
            path: &path,
            params: &call.params,
            headers: &headers,
        },
    )?;
    if let Some(token) = &creds.session_token {
        let sent = req
            .headers()
            .get(proto::SECURITY_TOKEN_HEADER)
            .and_then(|v| v.to_str().ok());
        if sent != Some(token.as_str()) {
            return Err(sign::AuthError::Token);
        }
    }
    Ok(())
}
