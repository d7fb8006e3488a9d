//! Serde types for every JSON body in API.md: what the server writes (one fixed
//! form, §9) and what the client reads (every form the documents show).

use super::tolerant;
use serde::{Deserialize, Serialize};

/// `{"ID": ..., "DisplayName": ...}`
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Owner {
    #[serde(rename = "ID", deserialize_with = "tolerant::string")]
    pub id: String,
    #[serde(rename = "DisplayName", deserialize_with = "tolerant::string")]
    pub display_name: String,
}

/// `{"Location": ["ap-tianjin"]}`
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Locations {
    #[serde(rename = "Location", deserialize_with = "tolerant::vec")]
    pub location: Vec<String>,
}

/// InitiateMultipartUpload answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct InitiateResult {
    pub coffer: String,
    pub key: String,
    #[serde(alias = "UploadID")]
    pub upload_id: String,
}

/// One entry of a CompleteMultipartUpload request body.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CompletePart {
    #[serde(rename = "PartNumber", deserialize_with = "tolerant::u32")]
    pub part_number: u32,
    #[serde(rename = "ETag")]
    pub etag: String,
}

/// CompleteMultipartUpload request body: `{"Part": [...]}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CompleteRequest {
    #[serde(rename = "Part", deserialize_with = "tolerant::vec", default)]
    pub part: Vec<CompletePart>,
}

/// CompleteMultipartUpload answer (after any keep-alive spaces).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct CompleteResult {
    pub locations: Locations,
    pub coffer: String,
    pub key: String,
    #[serde(rename = "ETag")]
    pub etag: String,
}

/// One part in a ListParts answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct PartEntry {
    #[serde(rename = "PartNumber", deserialize_with = "tolerant::u32")]
    pub part_number: u32,
    #[serde(rename = "LastModified")]
    pub last_modified: String,
    #[serde(rename = "ETag")]
    pub etag: String,
    #[serde(rename = "Size", deserialize_with = "tolerant::u64")]
    pub size: u64,
}

/// ListParts answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct ListPartsResult {
    pub coffer: String,
    pub key: String,
    #[serde(alias = "UploadID")]
    pub upload_id: String,
    #[serde(alias = "Encoding-Type", skip_serializing_if = "String::is_empty")]
    pub encoding_type: String,
    pub initiator: Owner,
    pub owner: Owner,
    #[serde(deserialize_with = "tolerant::string")]
    pub part_number_marker: String,
    #[serde(deserialize_with = "tolerant::bool", serialize_with = "bool_as_string")]
    pub is_truncated: bool,
    #[serde(deserialize_with = "tolerant::string")]
    pub next_part_number_marker: String,
    #[serde(deserialize_with = "tolerant::u32", alias = "MaxCount")]
    pub max_parts: u32,
    #[serde(deserialize_with = "tolerant::vec")]
    pub part: Vec<PartEntry>,
}

/// One object in a GetCoffer listing.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ObjectEntry {
    #[serde(rename = "Key")]
    pub key: String,
    #[serde(rename = "LastModified")]
    pub last_modified: String,
    #[serde(rename = "ETag")]
    pub etag: String,
    #[serde(rename = "Size", deserialize_with = "tolerant::u64")]
    pub size: u64,
    #[serde(rename = "Owner")]
    pub owner: Owner,
}

/// GetCoffer (list objects) answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct ListCofferResult {
    pub name: String,
    #[serde(alias = "Encoding-Type", skip_serializing_if = "String::is_empty")]
    pub encoding_type: String,
    pub prefix: String,
    pub marker: String,
    #[serde(deserialize_with = "tolerant::u32", alias = "MaxCount")]
    pub max_keys: u32,
    #[serde(deserialize_with = "tolerant::bool", serialize_with = "bool_as_string")]
    pub is_truncated: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub next_marker: String,
    #[serde(deserialize_with = "tolerant::u32")]
    pub encrypt_type: u32,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub key_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub key_region: String,
    pub locations: Locations,
    #[serde(deserialize_with = "tolerant::vec")]
    pub contents: Vec<ObjectEntry>,
}

/// One open upload in a ListMultipartUploads answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct UploadEntry {
    pub key: String,
    #[serde(alias = "UploadID")]
    pub upload_id: String,
    pub initiator: Owner,
    pub owner: Owner,
    pub initiated: String,
}

/// ListMultipartUploads answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct ListUploadsResult {
    pub coffer: String,
    #[serde(alias = "Encoding-Type", skip_serializing_if = "String::is_empty")]
    pub encoding_type: String,
    #[serde(alias = "UploadIDMarker")]
    pub upload_id_marker: String,
    #[serde(deserialize_with = "tolerant::bool", serialize_with = "bool_as_string")]
    pub is_truncated: bool,
    #[serde(alias = "NextUploadIDMarker")]
    pub next_upload_id_marker: String,
    pub prefix: String,
    #[serde(deserialize_with = "tolerant::u32")]
    pub max_uploads: u32,
    #[serde(deserialize_with = "tolerant::vec")]
    pub upload: Vec<UploadEntry>,
}

/// One coffer in a GetService answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct CofferEntry {
    pub name: String,
    pub locations: Locations,
    pub creation_date: String,
}

/// `{"Coffer": [...]}` inside GetService.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct CofferList {
    #[serde(rename = "Coffer", deserialize_with = "tolerant::vec")]
    pub coffer: Vec<CofferEntry>,
}

/// GetService answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceResult {
    pub owner: Owner,
    pub coffers: CofferList,
}

/// PutCoffer request body.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct PutCofferRequest {
    pub locations: Locations,
    #[serde(deserialize_with = "tolerant::u32")]
    pub encrypt_type: u32,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub key_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub key_region: String,
}

/// `{"Days": 30}`
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Expiration {
    #[serde(rename = "Days", deserialize_with = "tolerant::u32")]
    pub days: u32,
}

/// One lifecycle rule.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct LifecycleRule {
    #[serde(rename = "Expiration")]
    pub expiration: Expiration,
}

/// Put/GetCofferLifecycle body: `{"Rule": [{"Expiration": {"Days": 30}}]}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct LifecycleConfig {
    #[serde(rename = "Rule", deserialize_with = "tolerant::vec")]
    pub rule: Vec<LifecycleRule>,
}

/// The server writes booleans as `"true"`/`"false"`, as the examples show (§9).
fn bool_as_string<S: serde::Serializer>(b: &bool, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(if *b { "true" } else { "false" })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::tolerant::from_body;

    #[test]
    fn reads_the_documented_list_example() {
        let body = br#"{"Name":"examplecoffer-1250000000","EncodingType":"","Prefix":"","Marker":"","MaxKeys":1000,
   "IsTruncated":"false","NextMarker":"","EncryptType":0,"KeyId":"","KeyRegion":"",
   "Locations":{"Location":["ap-tianjin"]},
   "Contents":[{"Key":"test1.html","LastModified":"2020-06-13T15:40:15+08:00",
                "ETag":"\"f797031f3210ce6494466d619610926c\"","Size":20,
                "Owner":{"ID":"1250000000","DisplayName":"1250000000"}}]}"#;
        let r: ListCofferResult = from_body(body).unwrap();
        assert!(!r.is_truncated);
        assert_eq!(r.contents.len(), 1);
        assert_eq!(r.contents[0].size, 20);
    }

    #[test]
    fn reads_list_parts_with_string_markers_and_bool_truncation() {
        let body = br#"  {"Coffer":"c-1","Key":"k","UploadId":"u","PartNumberMarker":"1","IsTruncated":true,
            "NextPartNumberMarker":2,"MaxParts":"0","Part":{"PartNumber":"2","LastModified":"x","ETag":"e","Size":"5242880"}}"#;
        let r: ListPartsResult = from_body(body).unwrap();
        assert!(r.is_truncated);
        assert_eq!(r.next_part_number_marker, "2");
        assert_eq!(r.part[0].part_number, 2);
        assert_eq!(r.part[0].size, 5242880);
    }

    #[test]
    fn reads_upload_id_under_its_misspelling() {
        let r: ListUploadsResult = from_body(
            br#"{"Upload":[{"Key":"k","UploadID":"x","Initiated":"t"}],"IsTruncated":"False"}"#,
        )
        .unwrap();
        assert_eq!(r.upload[0].upload_id, "x");
        assert!(!r.is_truncated);
    }
}
