//! The protocol's limits and validity rules, written once: the client refuses
//! early with them and the server rejects with them. No I/O.

use super::error::ErrorCode;

/// Longest object key, in bytes of UTF-8 (API.md §9).
pub const MAX_KEY_BYTES: usize = 850;
/// Smallest part but the last (1 MiB).
pub const MIN_PART_SIZE: u64 = 1 << 20;
/// Largest part (5 GiB).
pub const MAX_PART_SIZE: u64 = 5 << 30;
/// Largest PutObject (5 GiB).
pub const MAX_PUT_SIZE: u64 = 5 << 30;
/// Highest part number.
pub const MAX_PARTS: u32 = 10_000;
/// Most entries one list request returns.
pub const MAX_LIST_ENTRIES: u32 = 1000;
/// Largest object a multipart upload can build.
pub const MAX_OBJECT_SIZE: u64 = MAX_PARTS as u64 * MAX_PART_SIZE;

/// Why a key is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("empty object key")]
    Empty,
    #[error("object key is {0} bytes; the limit is {MAX_KEY_BYTES}")]
    TooLong(usize),
    #[error("object key holds a control character")]
    ControlChar,
    #[error("object key starts with '/'")]
    LeadingSlash,
}

/// Key rules of §9: 1–850 bytes of UTF-8, no control characters, no leading `/`.
pub fn validate_key(key: &str) -> Result<(), KeyError> {
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(KeyError::TooLong(key.len()));
    }
    if key.chars().any(char::is_control) {
        return Err(KeyError::ControlChar);
    }
    if key.starts_with('/') {
        return Err(KeyError::LeadingSlash);
    }
    Ok(())
}

/// A listing prefix follows the key rules but may be empty.
pub fn validate_prefix(prefix: &str) -> Result<(), KeyError> {
    if prefix.is_empty() {
        Ok(())
    } else {
        validate_key(prefix)
    }
}

/// Coffer ids are `<name>-<appid>`: name 1–35 of `[a-z0-9-]`, appid digits.
pub fn validate_coffer_id(id: &str) -> bool {
    let Some((name, appid)) = id.rsplit_once('-') else {
        return false;
    };
    !name.is_empty()
        && name.len() <= 35
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !appid.is_empty()
        && appid.bytes().all(|b| b.is_ascii_digit())
}

/// Part numbers run 1..=10000.
pub fn valid_part_number(n: u32) -> bool {
    (1..=MAX_PARTS).contains(&n)
}

/// Checks a Complete request against the parts the server holds, in the order
/// the Complete document gives its errors. `parts` is the request's
/// `(PartNumber, size of the stored part)`, `None` where no such part exists.
pub fn check_complete(parts: &[(u32, Option<u64>)]) -> Result<(), ErrorCode> {
    if parts.is_empty() {
        return Err(ErrorCode::InvalidArgument);
    }
    if parts.windows(2).any(|w| w[0].0 >= w[1].0) {
        return Err(ErrorCode::InvalidPartOrder);
    }
    let contiguous = parts
        .iter()
        .enumerate()
        .all(|(i, (n, _))| *n as usize == i + 1);
    if !contiguous || parts.iter().any(|(_, size)| size.is_none()) {
        return Err(ErrorCode::InvalidPart);
    }
    let last = parts.len() - 1;
    if parts[..last]
        .iter()
        .any(|(_, size)| size.unwrap_or(0) < MIN_PART_SIZE)
    {
        return Err(ErrorCode::EntityTooSmall);
    }
    Ok(())
}

/// The part size for an object of `expected_size` bytes (5 TiB when unknown):
/// at least `preferred`, doubled until 10,000 parts cover the size, never over
/// the 5 GiB part limit.
pub fn part_size_for(preferred: u64, expected_size: Option<u64>) -> u64 {
    const FIVE_TIB: u64 = 5 << 40;
    let target = expected_size.unwrap_or(FIVE_TIB);
    let mut size = preferred.clamp(MIN_PART_SIZE, MAX_PART_SIZE);
    while size.saturating_mul(MAX_PARTS as u64) < target && size < MAX_PART_SIZE {
        size = (size * 2).min(MAX_PART_SIZE);
    }
    size
}

/// Part size when writing as a stream whose final size is unknown: parts start at
/// `preferred` and grow for later part numbers so that 10,000 parts still cover
/// more than 5 TiB. Part `n` (1-based) has this size.
pub fn streaming_part_size(preferred: u64, part_number: u32) -> u64 {
    // Every 1000 parts the size doubles: 8 MiB parts give 8 MiB × 1000 × (1+2+…+512)
    // ≈ 8 TiB over 10,000 parts.
    let base = preferred.clamp(MIN_PART_SIZE, MAX_PART_SIZE);
    let doublings = (part_number.saturating_sub(1) / 1000).min(20);
    base.saturating_mul(1u64 << doublings).min(MAX_PART_SIZE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_section_nine_rules() {
        assert!(validate_key("a b/%+?#&=/腾讯/..//x").is_ok());
        assert_eq!(validate_key(&"k".repeat(850)), Ok(()));
        assert_eq!(validate_key(&"k".repeat(851)), Err(KeyError::TooLong(851)));
        assert_eq!(validate_key(""), Err(KeyError::Empty));
        assert_eq!(validate_key("/a"), Err(KeyError::LeadingSlash));
        assert_eq!(validate_key("a\nb"), Err(KeyError::ControlChar));
    }

    #[test]
    fn coffer_ids_need_name_and_appid() {
        assert!(validate_coffer_id("examplecoffer-1250000000"));
        assert!(validate_coffer_id("my-coffer-1"));
        assert!(!validate_coffer_id("Example-1"));
        assert!(!validate_coffer_id("nodash"));
        assert!(!validate_coffer_id("x-abc"));
    }

    #[test]
    fn complete_errors_come_in_document_order() {
        let mib = MIN_PART_SIZE;
        assert_eq!(check_complete(&[(1, Some(mib)), (2, Some(5))]), Ok(()));
        assert_eq!(
            check_complete(&[(2, Some(mib)), (1, Some(mib))]),
            Err(ErrorCode::InvalidPartOrder)
        );
        assert_eq!(
            check_complete(&[(1, Some(mib)), (1, Some(mib))]),
            Err(ErrorCode::InvalidPartOrder)
        );
        assert_eq!(
            check_complete(&[(1, Some(mib)), (3, Some(mib))]),
            Err(ErrorCode::InvalidPart)
        );
        assert_eq!(
            check_complete(&[(1, Some(mib)), (2, None)]),
            Err(ErrorCode::InvalidPart)
        );
        assert_eq!(
            check_complete(&[(1, Some(mib - 1)), (2, Some(mib))]),
            Err(ErrorCode::EntityTooSmall)
        );
        assert_eq!(check_complete(&[]), Err(ErrorCode::InvalidArgument));
    }

    #[test]
    fn part_sizes_grow_to_cover_five_tib() {
        assert_eq!(part_size_for(8 << 20, Some(1 << 30)), 8 << 20);
        assert_eq!(part_size_for(8 << 20, Some(200 << 30)), 32 << 20);
        let s = part_size_for(8 << 20, None);
        assert!(s * MAX_PARTS as u64 >= 5 << 40);
        let total: u64 = (1..=MAX_PARTS)
            .map(|n| streaming_part_size(8 << 20, n))
            .sum();
        assert!(total >= 5 << 40, "{total}");
        assert_eq!(streaming_part_size(8 << 20, 1), 8 << 20);
    }
}
