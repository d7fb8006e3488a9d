//! The `Range` header of GetObject: `bytes=a-b`, `bytes=a-`, `bytes=-n` against an object size.
//! Pure parsing; one range only (the service documents no multi-range answers).

/// Why a `Range` header cannot be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeError {
    /// Not `bytes=…` of one of the three forms: 400 InvalidArgument.
    Malformed,
    /// Starts at or beyond the end, or asks for the last 0 bytes: 416 InvalidRange.
    Unsatisfiable,
}

/// The inclusive byte range `(first, last)` a header selects in an object of `size`
/// bytes. The end is clamped to the object; `size` is never 0 (no empty objects).
pub fn parse(header: &str, size: u64) -> Result<(u64, u64), RangeError> {
    let spec = header
        .trim()
        .strip_prefix("bytes=")
        .ok_or(RangeError::Malformed)?
        .trim();
    let (a, b) = spec.split_once('-').ok_or(RangeError::Malformed)?;
    let num = |s: &str| -> Result<u64, RangeError> {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            return Err(RangeError::Malformed);
        }
        s.parse().map_err(|_| RangeError::Malformed)
    };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        let n = num(b)?;
        if n == 0 || size == 0 {
            return Err(RangeError::Unsatisfiable);
        }
        return Ok((size.saturating_sub(n), size - 1));
    }
    let first = num(a)?;
    let last = if b.is_empty() { None } else { Some(num(b)?) };
    if last.is_some_and(|l| l < first) {
        return Err(RangeError::Malformed);
    }
    if first >= size {
        return Err(RangeError::Unsatisfiable);
    }
    Ok((first, last.unwrap_or(u64::MAX).min(size - 1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_forms_select_inclusive_ranges() {
        assert_eq!(parse("bytes=0-9", 100), Ok((0, 9)));
        assert_eq!(parse("bytes=90-200", 100), Ok((90, 99)));
        assert_eq!(parse("bytes=10-", 100), Ok((10, 99)));
        assert_eq!(parse("bytes=-10", 100), Ok((90, 99)));
        assert_eq!(parse("bytes=-1000", 100), Ok((0, 99)));
    }

    #[test]
    fn unsatisfiable_and_malformed_ranges_differ() {
        assert_eq!(parse("bytes=100-", 100), Err(RangeError::Unsatisfiable));
        assert_eq!(parse("bytes=-0", 100), Err(RangeError::Unsatisfiable));
        assert_eq!(parse("bytes=5-1", 100), Err(RangeError::Malformed));
        assert_eq!(parse("items=0-1", 100), Err(RangeError::Malformed));
        assert_eq!(parse("bytes=0-1,3-4", 100), Err(RangeError::Malformed));
        assert_eq!(parse("bytes=-", 100), Err(RangeError::Malformed));
        assert_eq!(parse("bytes=a-b", 100), Err(RangeError::Malformed));
        assert_eq!(parse("bytes=+1-2", 100), Err(RangeError::Malformed));
    }
}
