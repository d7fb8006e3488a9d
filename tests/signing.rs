//! Request signatures over query values that HTTP would happily trim: keys,
//! prefixes and markers that begin or end with spaces or hold `+ % & =`. Signed
//! by the client and, independently, by a from-the-document signer (API.md §2),
//! against a real `cofferfs serve` that holds credentials.

mod common;

use bytes::Bytes;
use cofferfs::client::{CdcsClient, ClientConfig};
use cofferfs::protocol::sign::Credentials;
use cofferfs::store::{ListAll, ObjectStore};
use common::{Server, COFFER};
use hmac::{Hmac, Mac};
use sha1::{Digest, Sha1};
use std::time::Duration;

const ID: &str = "AKIDsigning";
const KEY: &str = "signing-secret-key";

/// Keys a careless canonicalization would confuse with one another.
const KEYS: &[&str] = &[
    " lead",
    "  lead2",
    "trail ",
    "trail  ",
    " both ",
    "a+b",
    "a b",
    "p%q",
    "p%25q",
    "x&y=z",
    "k=v",
    "dir /file ",
];

fn signed_server() -> (tempfile::TempDir, Server) {
    let tmp = tempfile::tempdir().unwrap();
    let env = [
        ("TENCENTCLOUD_SECRET_ID", ID),
        ("TENCENTCLOUD_SECRET_KEY", KEY),
    ];
    let server = Server::start_at(&tmp.path().join("root"), &[], &env);
    (tmp, server)
}

fn signed_client(server: &Server) -> CdcsClient {
    let mut cfg = ClientConfig::endpoint(&server.endpoint).unwrap();
    cfg.credentials = Some(Credentials {
        secret_id: ID.into(),
        secret_key: KEY.into(),
        session_token: None,
    });
    CdcsClient::new(cfg, COFFER).unwrap()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn listings_with_spaced_and_reserved_prefixes_and_markers_pass_a_strict_verifier() {
    let (_tmp, server) = signed_server();
    let c = signed_client(&server);
    for k in KEYS {
        c.put(k, Bytes::from(k.to_string()))
            .unwrap_or_else(|e| panic!("put {k:?}: {e}"));
    }
    for k in KEYS {
        assert_eq!(c.get(k, None).unwrap().data.as_ref(), k.as_bytes(), "{k:?}");
    }
    let all = sorted(KEYS.iter().map(|k| k.to_string()).collect());

    // Paging one key at a time: every marker is a key, spaces and all.
    let mut marker = String::new();
    let mut paged = Vec::new();
    loop {
        let page = c
            .list("", &marker, 1)
            .unwrap_or_else(|e| panic!("list after {marker:?}: {e}"));
        paged.extend(page.objects.iter().map(|o| o.key.clone()));
        match page.next_marker {
            Some(m) => marker = m,
            None => break,
        }
    }
    assert_eq!(paged, all, "one-key pages walk every key once, in order");

    // Prefixes that begin or end with a space, or hold reserved characters.
    for prefix in [" ", "  ", " lead", "trail ", "a+", "p%", "x&y=", "dir /"] {
        let got: Vec<String> = ListAll::new(&c, prefix).map(|o| o.unwrap().key).collect();
        let want: Vec<String> = all
            .iter()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect();
        assert_eq!(got, want, "prefix {prefix:?}");
    }
    // A marker with a trailing space lies after the key without it.
    let page = c.list("trail", "trail ", 1000).unwrap();
    let keys: Vec<&str> = page.objects.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(keys, ["trail  "]);
}

/// API.md §2 UrlEncode: everything but `A-Z a-z 0-9 - . _ ~`, uppercase hex.
fn doc_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn hmac_hex(key: &[u8], msg: &[u8]) -> String {
    let mut m = Hmac::<Sha1>::new_from_slice(key).unwrap();
    m.update(msg);
    hex(&m.finalize().into_bytes())
}

/// The Authorization of §2, written from the document alone: values are encoded,
/// never trimmed.
fn doc_authorization(method: &str, path: &str, params: &[(&str, &str)], host: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let key_time = format!("{};{}", now - 60, now + 600);
    let mut p: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (doc_encode(&k.to_lowercase()).to_lowercase(), doc_encode(v)))
        .collect();
    p.sort();
    let param_list: Vec<&str> = p.iter().map(|(k, _)| k.as_str()).collect();
    let http_params: Vec<String> = p.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let http_string = format!(
        "{}\n{}\n{}\nhost={}\n",
        method.to_lowercase(),
        path,
        http_params.join("&"),
        doc_encode(host)
    );
    let string_to_sign = format!(
        "sha1\n{key_time}\n{}\n",
        hex(&Sha1::digest(http_string.as_bytes()))
    );
    let sign_key = hmac_hex(KEY.as_bytes(), key_time.as_bytes());
    let signature = hmac_hex(sign_key.as_bytes(), string_to_sign.as_bytes());
    format!(
        "q-sign-algorithm=sha1&q-ak={ID}&q-sign-time={key_time}&q-key-time={key_time}\
         &q-header-list=host&q-url-param-list={}&q-signature={signature}",
        param_list.join(";")
    )
}

#[test]
fn the_server_verifies_query_values_exactly_as_the_document_signs_them() {
    let (_tmp, server) = signed_server();
    let c = signed_client(&server);
    for k in KEYS {
        c.put(k, Bytes::from_static(b"x")).unwrap();
    }
    let host = server.endpoint.trim_start_matches("http://").to_string();
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    for (prefix, marker) in [
        (" lead", ""),
        ("trail ", ""),
        ("trail", "trail "),
        (" both ", ""),
        ("a+", ""),
        ("p%", "p%25"),
        ("x&y=", ""),
        ("", " both "),
    ] {
        let mut params = vec![("prefix", prefix)];
        if !marker.is_empty() {
            params.push(("marker", marker));
        }
        let query: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("{k}={}", doc_encode(v)))
            .collect();
        let url = format!("{}/{COFFER}?{}", server.endpoint, query.join("&"));
        let auth = doc_authorization("GET", &format!("/{COFFER}"), &params, &host);
        let resp = http.get(&url).header("Authorization", auth).send().unwrap();
        let status = resp.status();
        let body = resp.text().unwrap();
        assert_eq!(
            status, 200,
            "prefix {prefix:?} marker {marker:?}: a §2 signature is refused: {body}"
        );
        let listed: serde_json::Value = serde_json::from_str(&body).unwrap();
        let n = listed["Contents"].as_array().map(|a| a.len()).unwrap_or(0);
        let want = KEYS
            .iter()
            .filter(|k| k.starts_with(prefix) && **k > marker)
            .count();
        assert_eq!(n, want, "prefix {prefix:?} marker {marker:?}: {body}");
    }
}
