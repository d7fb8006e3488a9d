//! Property tests: the signer's canonical form and verifier, query encoding, and
//! JSON round trips of the wire types.

use cofferfs::protocol::encode::{parse_query, url_encode};
use cofferfs::protocol::sign::{self, Signable};
use cofferfs::protocol::tolerant::from_body;
use cofferfs::protocol::types::*;
use proptest::prelude::*;

fn pairs() -> impl Strategy<Value = Vec<(String, String)>> {
    proptest::collection::vec(("[a-zA-Z][a-zA-Z0-9-]{0,11}", "\\PC{0,16}"), 0..6).prop_map(
        |mut v| {
            // Keys are unique in a request (case-insensitively, as the scheme lowercases).
            v.sort_by_key(|(k, _)| k.to_lowercase());
            v.dedup_by_key(|(k, _)| k.to_lowercase());
            v
        },
    )
}

proptest! {
    #[test]
    fn canonical_form_is_sorted_lowercase_and_encoded(p in pairs(), header in any::<bool>()) {
        // Parameters are signed as sent; headers lose surrounding whitespace.
        let (list, joined) = if header { sign::canonical_headers(&p) } else { sign::canonical_params(&p) };
        let keys: Vec<&str> = if list.is_empty() { vec![] } else { list.split(';').collect() };
        let mut sorted = keys.clone();
        sorted.sort();
        prop_assert_eq!(&keys, &sorted);
        prop_assert_eq!(keys.len(), p.len());
        for k in &keys {
            prop_assert_eq!(k.to_string(), k.to_lowercase());
        }
        for (k, v) in &p {
            let item = format!("{}={}", url_encode(&k.to_lowercase()).to_lowercase(), url_encode(if header { v.trim() } else { v }));
            prop_assert!(joined.split('&').any(|x| x == item));
        }
    }

    #[test]
    fn verifier_accepts_whatever_the_signer_signs(
        params in pairs(),
        extra in pairs(),
        path in "/[a-z0-9-]{1,10}(/\\PC{0,20})?",
        method in prop::sample::select(vec!["GET", "PUT", "POST", "DELETE", "HEAD"]),
        start in 0i64..2_000_000_000,
    ) {
        let mut headers = vec![("Host".to_string(), "cdcs.ap-tianjin.myqcloud.com".to_string())];
        headers.extend(extra.into_iter().filter(|(k, _)| !k.eq_ignore_ascii_case("host")));
        let req = Signable { method, path: &path, params: &params, headers: &headers };
        let auth = sign::authorization("AKIDx", "key", start, start + 60, &req);
        let parsed = sign::parse_authorization(&auth).unwrap();
        prop_assert_eq!(
            sign::verify(&parsed, "AKIDx", "key", start + 30, &req),
            Ok(())
        );
        let other = format!("{path}x");
        let tampered = Signable { path: &other, ..req };
        prop_assert!(sign::verify(&parsed, "AKIDx", "key", start + 30, &tampered).is_err());
    }

    #[test]
    fn query_strings_decode_to_what_was_encoded(p in pairs()) {
        let raw = p.iter().map(|(k, v)| format!("{}={}", url_encode(k), url_encode(v))).collect::<Vec<_>>().join("&");
        prop_assert_eq!(parse_query(&raw).unwrap(), p);
    }

    #[test]
    fn listing_json_round_trips(
        keys in proptest::collection::vec(("\\PC{1,30}", any::<u64>(), "[0-9a-f]{32}"), 0..5),
        truncated in any::<bool>(),
        max in 1u32..=1000,
    ) {
        let r = ListCofferResult {
            name: "c-1".into(),
            max_keys: max,
            is_truncated: truncated,
            next_marker: if truncated { "m".into() } else { String::new() },
            contents: keys.iter().map(|(k, s, e)| ObjectEntry {
                key: k.clone(), size: *s, etag: format!("\"{e}\""),
                last_modified: "2020-06-13T15:40:15+08:00".into(),
                owner: Owner { id: "1".into(), display_name: "1".into() },
            }).collect(),
            ..Default::default()
        };
        let json = serde_json::to_vec(&r).unwrap();
        let back: ListCofferResult = from_body(&json).unwrap();
        prop_assert_eq!(back, r);
    }

    #[test]
    fn complete_and_parts_json_round_trip(
        parts in proptest::collection::vec((1u32..=10000, "[0-9a-f]{32}", any::<u64>()), 0..5),
        truncated in any::<bool>(),
    ) {
        let req = CompleteRequest { part: parts.iter().map(|(n, e, _)| CompletePart { part_number: *n, etag: e.clone() }).collect() };
        let back: CompleteRequest = from_body(&serde_json::to_vec(&req).unwrap()).unwrap();
        prop_assert_eq!(back, req);
        let lp = ListPartsResult {
            coffer: "c-1".into(), key: "k".into(), upload_id: "u".into(),
            is_truncated: truncated, part_number_marker: "0".into(), max_parts: 1000,
            part: parts.iter().map(|(n, e, s)| PartEntry { part_number: *n, etag: e.clone(), size: *s, last_modified: "Tue Jan 17 16:43:37 2017".into() }).collect(),
            ..Default::default()
        };
        let back: ListPartsResult = from_body(&serde_json::to_vec(&lp).unwrap()).unwrap();
        prop_assert_eq!(back, lp);
        let ups = ListUploadsResult {
            coffer: "c-1".into(), is_truncated: truncated, max_uploads: 1000,
            upload: parts.iter().map(|(n, e, _)| UploadEntry { key: format!("k{n}"), upload_id: e.clone(), initiated: "Wed Jan 18 16:12:38 2017".into(), ..Default::default() }).collect(),
            ..Default::default()
        };
        let back: ListUploadsResult = from_body(&serde_json::to_vec(&ups).unwrap()).unwrap();
        prop_assert_eq!(back, ups);
    }
}
