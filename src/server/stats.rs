//! Request and byte counters behind `GET /-/stats`, and the per-request meter.
//! Counts only; never decides anything about a request.

use super::route::Op;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Server-wide counters.
#[derive(Default)]
pub struct Stats {
    requests: Mutex<BTreeMap<&'static str, u64>>,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

impl Stats {
    /// Counts one request of `op`, whatever its outcome.
    pub fn count(&self, op: Op) {
        let mut map = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *map.entry(op.name()).or_insert(0) += 1;
    }

    /// `{"requests": {...}, "bytes_in": n, "bytes_out": n, "faults": n}`.
    pub fn to_json(&self, faults: u64) -> serde_json::Value {
        let map = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        serde_json::json!({
            "requests": *map,
            "bytes_in": self.bytes_in.load(Ordering::Relaxed),
            "bytes_out": self.bytes_out.load(Ordering::Relaxed),
            "faults": faults,
        })
    }
}

/// Body bytes of one request, added to the server's totals as they pass.
#[derive(Clone)]
pub struct Meter {
    stats: Arc<Stats>,
    mine: Arc<(AtomicU64, AtomicU64)>,
}

impl Meter {
    pub fn new(stats: Arc<Stats>) -> Meter {
        Meter {
            stats,
            mine: Arc::default(),
        }
    }

    pub fn add_in(&self, n: u64) {
        self.mine.0.fetch_add(n, Ordering::Relaxed);
        self.stats.bytes_in.fetch_add(n, Ordering::Relaxed);
    }

    pub fn add_out(&self, n: u64) {
        self.mine.1.fetch_add(n, Ordering::Relaxed);
        self.stats.bytes_out.fetch_add(n, Ordering::Relaxed);
    }

    /// Bytes received for this request so far.
    pub fn bytes_in(&self) -> u64 {
        self.mine.0.load(Ordering::Relaxed)
    }

    /// Bytes sent for this request so far.
    pub fn bytes_out(&self) -> u64 {
        self.mine.1.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_json_has_the_documented_shape() {
        let stats = Arc::new(Stats::default());
        stats.count(Op::UploadPart);
        stats.count(Op::UploadPart);
        let m = Meter::new(stats.clone());
        m.add_in(5);
        m.add_out(7);
        let j = stats.to_json(3);
        assert_eq!(j["requests"]["UploadPart"], 2);
        assert_eq!(j["bytes_in"], 5);
        assert_eq!(j["bytes_out"], 7);
        assert_eq!(j["faults"], 3);
        assert_eq!(m.bytes_in(), 5);
    }
}
