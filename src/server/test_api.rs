//! The test API: `GET /-/stats` (requests per operation, bytes, faults) and
//! `POST /-/faults` (replace the fault rules). Without `test_api` it does not exist:
//! the 404 of any unknown coffer (`-` is none). With credentials it needs a signature
//! like any request. Must not count itself in the stats or draw faults.

use super::auth::check_auth;
use super::faults::Faults;
use super::http::{read_small, Body};
use super::op::{Call, Op};
use super::State;
use crate::protocol::ErrorCode;
use hyper::body::Incoming;
use hyper::{Request, Response};
use std::sync::atomic::Ordering;

pub async fn handle(state: &State, call: &Call, req: Request<Incoming>) -> Response<Body> {
    if !state.cfg.test_api {
        return call.error(ErrorCode::CofferNotFound, "no such coffer");
    }
    if let Err(e) = check_auth(state, call, &req) {
        log::info!("test API {:?}: authentication failed: {e}", call.resource());
        return call.error(ErrorCode::AuthFailed, "authentication failed");
    }
    match call.op {
        Op::TestStats => {
            let s = &state.stats;
            let requests = s.requests.lock().unwrap_or_else(|e| e.into_inner()).clone();
            call.json(&serde_json::json!({
                "requests": requests,
                "bytes_in": s.bytes_in.load(Ordering::Relaxed),
                "bytes_out": s.bytes_out.load(Ordering::Relaxed),
                "faults": s.faults.load(Ordering::Relaxed),
            }))
        }
        Op::TestFaults => {
            let body = match read_small(req).await {
                Ok(b) => b,
                Err(e) => return call.error(ErrorCode::InvalidArgument, &e),
            };
            let spec = String::from_utf8_lossy(&body).to_string();
            match Faults::parse(&spec, state.cfg.fault_seed) {
                Ok(f) => {
                    *state.faults.lock().unwrap_or_else(|e| e.into_inner()) = f;
                    log::info!("faults now {spec:?}");
                    call.json(&serde_json::json!({}))
                }
                Err(e) => call.error(ErrorCode::InvalidArgument, &e),
            }
        }
        _ => call.error(ErrorCode::CofferNotFound, "no such test endpoint"),
    }
}
