//! The `q-sign-algorithm=sha1` request signature (API.md §2): signer and verifier.
//! Pure functions of their inputs; the caller supplies the clock and the request.

use super::encode::url_encode;
use super::{hex, unhex};
use hmac::{Hmac, Mac};
use sha1::{Digest, Sha1};

type HmacSha1 = Hmac<Sha1>;

/// What the signature covers of one request. `path` and `params` are decoded
/// (the signature is over the plain path, e.g. `/coffer/a b`), header names
/// in any case.
#[derive(Debug, Clone, Copy)]
pub struct Signable<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub params: &'a [(String, String)],
    pub headers: &'a [(String, String)],
}

/// Why a request's signature is refused. Messages never contain secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing Authorization")]
    Missing,
    #[error("malformed Authorization: {0}")]
    Malformed(&'static str),
    #[error("unknown secret id")]
    UnknownSecretId,
    #[error("sign time does not cover the present")]
    Expired,
    #[error("the host header is not signed")]
    HostNotSigned,
    #[error("signed header {0} is missing from the request")]
    MissingHeader(String),
    #[error("query parameter {0} is not signed")]
    UnsignedParam(String),
    #[error("signature mismatch")]
    Mismatch,
    #[error("security token mismatch")]
    Token,
}

/// HMAC-SHA1 of `msg` under `key`, ready to finalize or verify.
fn mac(key: &[u8], msg: &[u8]) -> HmacSha1 {
    // HMAC accepts keys of any length; new_from_slice cannot fail for it.
    let mut mac = match HmacSha1::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    mac.update(msg);
    mac
}

fn hmac_hex(key: &[u8], msg: &[u8]) -> String {
    hex(&mac(key, msg).finalize().into_bytes())
}

/// `KeyTime = "<start>;<end>"`.
pub fn key_time(start: i64, end: i64) -> String {
    format!("{start};{end}")
}

/// `SignKey = hex(HMAC-SHA1(SecretKey, KeyTime))`.
pub fn sign_key(secret_key: &str, key_time: &str) -> String {
    hmac_hex(secret_key.as_bytes(), key_time.as_bytes())
}

/// Canonical form of query parameters (§2 step 3): `(list "a;b", string "a=1&b=2")`.
/// Keys are lowercased, encoded and lowercased again; values are encoded exactly
/// as sent (a prefix or marker may begin or end with a space); sorted.
pub fn canonical_params(pairs: &[(String, String)]) -> (String, String) {
    canonical(pairs, |v| v)
}

/// Canonical form of headers (§2 step 4): as the parameters, but values lose the
/// surrounding whitespace that HTTP parsing drops on the way anyway.
pub fn canonical_headers(pairs: &[(String, String)]) -> (String, String) {
    canonical(pairs, str::trim)
}

fn canonical(pairs: &[(String, String)], value: fn(&str) -> &str) -> (String, String) {
    let mut enc: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| {
            (
                url_encode(&k.to_lowercase()).to_lowercase(),
                url_encode(value(v)),
            )
        })
        .collect();
    enc.sort();
    let list = enc
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let joined = enc
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    (list, joined)
}

/// `HttpString` of step 5, with the lists it used.
pub fn http_string(req: &Signable) -> (String, String, String) {
    let (param_list, params) = canonical_params(req.params);
    let (header_list, headers) = canonical_headers(req.headers);
    let s = format!(
        "{}\n{}\n{}\n{}\n",
        req.method.to_lowercase(),
        req.path,
        params,
        headers
    );
    (s, param_list, header_list)
}

/// `StringToSign = "sha1\n" + KeyTime + "\n" + hex(SHA1(HttpString)) + "\n"`.
pub fn string_to_sign(key_time: &str, http_string: &str) -> String {
    format!(
        "sha1\n{key_time}\n{}\n",
        hex(&Sha1::digest(http_string.as_bytes()))
    )
}

/// The signature over `req` valid from `start` to `end` (unix seconds).
pub fn signature(secret_key: &str, key_time: &str, req: &Signable) -> String {
    let (hs, _, _) = http_string(req);
    let sk = sign_key(secret_key, key_time);
    hmac_hex(sk.as_bytes(), string_to_sign(key_time, &hs).as_bytes())
}

/// The `Authorization` header value for `req`.
pub fn authorization(
    secret_id: &str,
    secret_key: &str,
    start: i64,
    end: i64,
    req: &Signable,
) -> String {
    let kt = key_time(start, end);
    let (_, param_list, header_list) = http_string(req);
    let sig = signature(secret_key, &kt, req);
    format!(
        "q-sign-algorithm=sha1&q-ak={secret_id}&q-sign-time={kt}&q-key-time={kt}\
         &q-header-list={header_list}&q-url-param-list={param_list}&q-signature={sig}"
    )
}

/// The fields of a received `Authorization` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    pub secret_id: String,
    pub sign_time: (i64, i64),
    pub key_time: String,
    pub header_list: Vec<String>,
    pub param_list: Vec<String>,
    pub signature: String,
}

fn parse_time_range(s: &str) -> Option<(i64, i64)> {
    let (a, b) = s.split_once(';')?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
}

fn split_list(s: &str) -> Vec<String> {
    s.split(';')
        .filter(|x| !x.is_empty())
        .map(|x| x.to_lowercase())
        .collect()
}

/// Parses `q-sign-algorithm=sha1&q-ak=…&…`.
pub fn parse_authorization(value: &str) -> Result<Authorization, AuthError> {
    let mut fields = std::collections::HashMap::new();
    for piece in value.trim().split('&') {
        let (k, v) = piece
            .split_once('=')
            .ok_or(AuthError::Malformed("field without '='"))?;
        fields.insert(k.trim(), v.trim());
    }
    let get = |k: &'static str| fields.get(k).copied().ok_or(AuthError::Malformed(k));
    if !get("q-sign-algorithm")?.eq_ignore_ascii_case("sha1") {
        return Err(AuthError::Malformed("q-sign-algorithm"));
    }
    let key_time = get("q-key-time")?.to_string();
    Ok(Authorization {
        secret_id: get("q-ak")?.to_string(),
        sign_time: parse_time_range(get("q-sign-time")?)
            .ok_or(AuthError::Malformed("q-sign-time"))?,
        header_list: split_list(get("q-header-list")?),
        param_list: split_list(fields.get("q-url-param-list").copied().unwrap_or("")),
        signature: get("q-signature")?.to_lowercase(),
        key_time,
    })
}

/// Checks a received request: `headers` and `params` are everything the request
/// carried (decoded); the signed lists pick from them. Every query parameter must
/// be signed and `host` must be among the signed headers.
pub fn verify(
    auth: &Authorization,
    secret_id: &str,
    secret_key: &str,
    now: i64,
    received: &Signable,
) -> Result<(), AuthError> {
    let Signable {
        method,
        path,
        params,
        headers,
    } = *received;
    if auth.secret_id != secret_id {
        return Err(AuthError::UnknownSecretId);
    }
    let (start, end) = auth.sign_time;
    if now < start || now > end {
        return Err(AuthError::Expired);
    }
    if parse_time_range(&auth.key_time) != Some(auth.sign_time) {
        return Err(AuthError::Malformed("q-key-time"));
    }
    if !auth.header_list.iter().any(|h| h == "host") {
        return Err(AuthError::HostNotSigned);
    }
    let canon_key = |k: &str| url_encode(&k.to_lowercase()).to_lowercase();
    let mut signed_headers = Vec::new();
    for name in &auth.header_list {
        let found = headers
            .iter()
            .find(|(k, _)| canon_key(k) == *name)
            .ok_or_else(|| AuthError::MissingHeader(name.clone()))?;
        signed_headers.push(found.clone());
    }
    for (k, _) in params {
        if !auth.param_list.contains(&canon_key(k)) {
            return Err(AuthError::UnsignedParam(k.clone()));
        }
    }
    let req = Signable {
        method,
        path,
        params,
        headers: &signed_headers,
    };
    let (hs, _, _) = http_string(&req);
    let sk = sign_key(secret_key, &auth.key_time);
    let sent = unhex(&auth.signature).ok_or(AuthError::Mismatch)?;
    // verify_slice compares in constant time: the signature is secret-derived.
    mac(
        sk.as_bytes(),
        string_to_sign(&auth.key_time, &hs).as_bytes(),
    )
    .verify_slice(&sent)
    .map_err(|_| AuthError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "AKIDQjz3ltompVjBni5LitkWHFlFpwkn9U5q";
    const KEY: &str = "BQYIM75p8x0iWVFSIgqEKwFprpRSVHlz";

    fn doc_headers() -> Vec<(String, String)> {
        [
            ("Content-Length", "13"),
            ("Content-MD5", "mQ/fVh815F3k6TAUm8m0eg=="),
            ("Content-Type", "text/plain"),
            ("Date", "Thu, 16 May 2019 06:45:51 GMT"),
            ("Host", "cdcs.ap-beijing.myqcloud.com"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    #[test]
    fn reproduces_the_sign_key_test_vector() {
        assert_eq!(
            sign_key(KEY, "1557989151;1557996351"),
            "eb2519b498b02ac213cb1f3d1a3d27a3b3c9bc5f"
        );
    }

    #[test]
    fn reproduces_the_documented_cdcs_request_signature() {
        let headers = doc_headers();
        let req = Signable {
            method: "PUT",
            path: "/example-coffer/example-file",
            params: &[],
            headers: &headers,
        };
        let (hs, params, hl) = http_string(&req);
        assert_eq!(params, "");
        assert_eq!(hl, "content-length;content-md5;content-type;date;host");
        assert_eq!(
            hex(&Sha1::digest(hs.as_bytes())),
            "52a76400e4d27fdb9ef8884c696698c066414257"
        );
        assert_eq!(
            signature(KEY, "1557989151;1557996351", &req),
            "49d2b740b0ee65bdaca51d8b90a4ddb89ced4a5d"
        );
    }

    #[test]
    fn query_values_are_signed_as_sent_and_header_values_trimmed() {
        let params = vec![
            ("prefix".to_string(), " a+b ".to_string()),
            ("marker".to_string(), "x&y=%z ".to_string()),
        ];
        let headers = vec![("Host".to_string(), " h.example ".to_string())];
        let (hs, _, _) = http_string(&Signable {
            method: "GET",
            path: "/c",
            params: &params,
            headers: &headers,
        });
        assert_eq!(
            hs,
            "get\n/c\nmarker=x%26y%3D%25z%20&prefix=%20a%2Bb%20\nhost=h.example\n"
        );
    }

    #[test]
    fn verifier_accepts_its_signer_and_refuses_tampering() {
        let headers = doc_headers();
        let params = vec![("uploadId".to_string(), "abc".to_string())];
        let req = Signable {
            method: "POST",
            path: "/c-1/k",
            params: &params,
            headers: &headers,
        };
        let a = parse_authorization(&authorization(ID, KEY, 100, 200, &req)).unwrap();
        let ok = verify(
            &a,
            ID,
            KEY,
            150,
            &Signable {
                method: "POST",
                path: "/c-1/k",
                params: &params,
                headers: &headers,
            },
        );
        assert_eq!(ok, Ok(()));
        assert_eq!(
            verify(
                &a,
                ID,
                KEY,
                150,
                &Signable {
                    method: "POST",
                    path: "/c-1/k2",
                    params: &params,
                    headers: &headers
                }
            ),
            Err(AuthError::Mismatch)
        );
        assert_eq!(
            verify(
                &a,
                ID,
                KEY,
                201,
                &Signable {
                    method: "POST",
                    path: "/c-1/k",
                    params: &params,
                    headers: &headers
                }
            ),
            Err(AuthError::Expired)
        );
        assert_eq!(
            verify(
                &a,
                ID,
                "wrong",
                150,
                &Signable {
                    method: "POST",
                    path: "/c-1/k",
                    params: &params,
                    headers: &headers
                }
            ),
            Err(AuthError::Mismatch)
        );
        let mut more = params.clone();
        more.push(("prefix".into(), "x".into()));
        assert_eq!(
            verify(
                &a,
                ID,
                KEY,
                150,
                &Signable {
                    method: "POST",
                    path: "/c-1/k",
                    params: &more,
                    headers: &headers
                }
            ),
            Err(AuthError::UnsignedParam("prefix".into()))
        );
    }
}

/// A secret id/key pair, with the session token of temporary keys.
/// `Debug` never prints the secret key or the token.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub secret_id: String,
    pub secret_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("secret_id", &self.secret_id)
            .field("secret_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl Credentials {
    /// From `TENCENTCLOUD_SECRET_ID`/`TENCENTCLOUD_SECRET_KEY` (+ `TENCENTCLOUD_SESSION_TOKEN`).
    pub fn from_env() -> Option<Credentials> {
        let id = std::env::var("TENCENTCLOUD_SECRET_ID").ok()?;
        let key = std::env::var("TENCENTCLOUD_SECRET_KEY").ok()?;
        if id.is_empty() || key.is_empty() {
            return None;
        }
        Some(Credentials {
            secret_id: id,
            secret_key: key,
            session_token: std::env::var("TENCENTCLOUD_SESSION_TOKEN")
                .ok()
                .filter(|t| !t.is_empty()),
        })
    }
}
