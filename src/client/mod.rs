//! The CDCS client: `CdcsClient` (the `ObjectStore` over HTTP, `store.rs`) on an
//! HTTP engine (`engine.rs`: signing, retries, idle timeouts, error answers).
//! This file holds only how to reach the service. Knows nothing of files or FUSE.

pub mod credentials;
mod engine;
pub mod retry;
mod store;
mod transport;

pub use store::CdcsClient;

use crate::protocol::sign::Credentials;
use crate::store::StoreError;
use retry::RetryPolicy;
use std::time::Duration;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_must_be_http_urls() {
        assert!(ClientConfig::endpoint("http://127.0.0.1:9000/").is_ok());
        assert!(ClientConfig::endpoint("ftp://x").is_err());
        let r = ClientConfig::region("ap-tianjin").unwrap();
        assert_eq!(r.object_endpoint, "https://cdcs.ap-tianjin.myqcloud.com");
        assert!(ClientConfig::region("x/../y").is_err());
    }
}
