//! Timestamps in the forms the documents show: ISO 8601 with offset (listings),
//! RFC 1123 (headers) and C `ctime` (ListParts, ListMultipartUploads).

use chrono::{DateTime, NaiveDateTime, Utc};
use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch (0 before it): signatures, upload ages, expiry.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Microseconds since the Unix epoch (0 before it): the time part of keys.
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Parses any of the documented forms; `None` for anything else.
pub fn parse(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc).into());
    }
    if let Ok(t) = httpdate::parse_http_date(s) {
        return Some(t);
    }
    for fmt in [
        "%a %b %e %H:%M:%S %Y",
        "%a %b %d %H:%M:%S %Y",
        "%Y-%m-%dT%H:%M:%S%.f",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, fmt) {
            return Some(t.and_utc().into());
        }
    }
    None
}

/// ISO 8601 with offset, as GetCoffer shows `LastModified`.
pub fn iso8601(t: SystemTime) -> String {
    DateTime::<Utc>::from(t)
        .format("%Y-%m-%dT%H:%M:%S%:z")
        .to_string()
}

/// RFC 1123, as the `Last-Modified` header.
pub fn rfc1123(t: SystemTime) -> String {
    httpdate::fmt_http_date(t)
}

/// C `ctime` form, as ListParts and ListMultipartUploads show times.
pub fn ctime(t: SystemTime) -> String {
    DateTime::<Utc>::from(t)
        .format("%a %b %e %H:%M:%S %Y")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn parses_every_documented_form() {
        let t = UNIX_EPOCH + Duration::from_secs(1_592_034_015);
        assert_eq!(parse("2020-06-13T15:40:15+08:00"), Some(t));
        assert_eq!(parse("Sat, 13 Jun 2020 07:40:15 GMT"), Some(t));
        assert_eq!(parse("Sat Jun 13 07:40:15 2020"), Some(t));
        assert_eq!(parse(&iso8601(t)), Some(t));
        assert_eq!(parse(&ctime(t)), Some(t));
        assert_eq!(parse("yesterday"), None);
    }
}
