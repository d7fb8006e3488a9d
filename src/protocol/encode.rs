//! Percent-encoding as the signature document defines it, and object keys in URL paths.
//! Owns the one definition of "unreserved"; knows nothing of HTTP clients or servers.

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// Everything but the unreserved set `A-Z a-z 0-9 - . _ ~` is encoded (API.md §2).
const SIGN_SET: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The same set, keeping `/` so ordinary keys read naturally in URLs and logs.
const PATH_SET: &AsciiSet = &SIGN_SET.remove(b'/');

/// UrlEncode of the signature document: UTF-8, uppercase hex, unreserved kept.
pub fn url_encode(s: &str) -> String {
    utf8_percent_encode(s, SIGN_SET).to_string()
}

/// Percent-decodes; `None` when the result is not UTF-8.
pub fn url_decode(s: &str) -> Option<String> {
    percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

/// Why a key cannot be carried in a URL path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnaddressableKey;

/// Encodes an object key for the URL path after `/<coffer>/`.
///
/// URL parsers remove `.` and `..` segments (even percent-encoded ones), so a key
/// holding such a segment is sent with every `/` encoded: it then travels as one
/// segment and arrives intact. The keys `.` and `..` themselves cannot travel.
pub fn key_path(key: &str) -> Result<String, UnaddressableKey> {
    if key == "." || key == ".." {
        return Err(UnaddressableKey);
    }
    let dotted = key.split('/').any(|seg| seg == "." || seg == "..");
    let set = if dotted { SIGN_SET } else { PATH_SET };
    Ok(utf8_percent_encode(key, set).to_string())
}

/// Splits a raw query string into decoded `(key, value)` pairs in their order.
/// `+` is kept as a plus: the signature scheme encodes spaces as `%20`.
pub fn parse_query(raw: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    for piece in raw.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = piece.split_once('=').unwrap_or((piece, ""));
        out.push((url_decode(k)?, url_decode(v)?));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_everything_but_unreserved() {
        assert_eq!(url_encode("a b/c+d~e"), "a%20b%2Fc%2Bd~e");
        assert_eq!(url_encode("腾"), "%E8%85%BE");
    }

    #[test]
    fn key_paths_keep_slashes_unless_a_segment_is_dotted() {
        assert_eq!(key_path("a b/c?#").unwrap(), "a%20b/c%3F%23");
        assert_eq!(key_path("a/../b").unwrap(), "a%2F..%2Fb");
        assert_eq!(key_path("a//b").unwrap(), "a//b");
        assert_eq!(key_path(".."), Err(UnaddressableKey));
    }

    #[test]
    fn query_is_decoded_and_plus_kept() {
        let q = parse_query("uploads&prefix=a%20b+c&max-keys=5").unwrap();
        assert_eq!(
            q,
            vec![
                ("uploads".into(), "".into()),
                ("prefix".into(), "a b+c".into()),
                ("max-keys".into(), "5".into())
            ]
        );
    }
}
