//! The coffer's history, from its immutable, timestamped journal: every
//! version of a path (`versions`), the audit trail of records (`log`), and one
//! path restored as of a past time (`restore`, `cofferfs get --as-of`). Reads
//! the coffer only; walks the journal through `fs::journal::history`. Printing
//! happens here, parsing in main.rs.

pub mod log;
mod restore;
pub mod versions;

pub use self::log::{log, LogEntry, LogFilter};
pub use restore::get_as_of;
pub use versions::{versions, End, Version};

use crate::commands::CommandError;
use crate::fs::error::FsError;

/// A time in microseconds since the epoch as RFC 3339 in UTC with
/// microseconds, which `--as-of`, `--since` and `--until` read back exactly.
pub fn format_micros(micros: u64) -> String {
    let secs = i64::try_from(micros / 1_000_000).unwrap_or(i64::MAX);
    let nanos = u32::try_from(micros % 1_000_000).unwrap_or(0) * 1_000;
    match chrono::DateTime::from_timestamp(secs, nanos) {
        Some(t) => t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
        None => format!("{micros}µs"),
    }
}

/// A `SystemTime` in microseconds since the epoch (0 before it).
pub(crate) fn micros_of(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl From<FsError> for CommandError {
    fn from(e: FsError) -> CommandError {
        CommandError::Usage(e.message)
    }
}

fn write_err(e: std::io::Error) -> CommandError {
    CommandError::Io {
        path: "stdout".into(),
        source: e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_as_rfc_3339_that_parses_back_to_the_microsecond() {
        let t = 1_795_946_400_123_456;
        assert_eq!(format_micros(t), "2026-11-29T10:00:00.123456Z");
        assert_eq!(crate::options::parse_time(&format_micros(t)), Ok(t));
    }
}
