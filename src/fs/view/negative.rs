//! Names the coffer was recently asked for and did not have, so that a burst of
//! lookups of a missing name (shells, editors, `$PATH` searches) costs one probe.
//! Knows nothing of the table or the coffer: the caller decides what to record.

use crate::fs::lock;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a name the coffer does not have is believed absent.
const NEGATIVE_TTL: Duration = Duration::from_secs(1);

/// Entries kept before the stale ones are swept out.
const SWEEP_ABOVE: usize = 100_000;

#[derive(Default)]
pub struct NegativeCache {
    /// (parent inode, name) found absent, with when.
    absent: Mutex<HashMap<(u64, String), Instant>>,
}

impl NegativeCache {
    /// Whether `name` in `parent` was found absent within `ttl` (and within
    /// the negative cache's own, shorter, lifetime).
    pub fn absent(&self, parent: u64, name: &str, ttl: Duration) -> bool {
        lock(&self.absent)
            .get(&(parent, name.to_string()))
            .is_some_and(|t| t.elapsed() < NEGATIVE_TTL.min(ttl))
    }

    /// Remembers that `name` in `parent` was absent at `now`.
    pub fn insert(&self, parent: u64, name: &str, now: Instant) {
        let mut neg = lock(&self.absent);
        if neg.len() > SWEEP_ABOVE {
            neg.retain(|_, t| t.elapsed() < NEGATIVE_TTL);
        }
        neg.insert((parent, name.to_string()), now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_absent_name_is_believed_absent_only_within_the_shorter_ttl() {
        let n = NegativeCache::default();
        assert!(!n.absent(1, "x", Duration::from_secs(10)));
        n.insert(1, "x", Instant::now());
        assert!(n.absent(1, "x", Duration::from_secs(10)));
        assert!(!n.absent(2, "x", Duration::from_secs(10)), "per parent");
        assert!(
            !n.absent(1, "x", Duration::ZERO),
            "a zero metadata TTL trusts nothing"
        );
        n.insert(1, "old", Instant::now() - NEGATIVE_TTL);
        assert!(!n.absent(1, "old", Duration::from_secs(10)), "expired");
    }
}
