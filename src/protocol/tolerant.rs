//! Lenient serde readers for fields the documents show in more than one form:
//! booleans as strings, numbers as strings, arrays as a single object or null.

use serde::de::{self, Deserializer};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(untagged)]
enum BoolLike {
    Bool(bool),
    Str(String),
    Num(i64),
}

/// `true`, `"true"`, `"True"`, `1` → true; null or absent → false.
pub fn bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    match Option::<BoolLike>::deserialize(d)? {
        None => Ok(false),
        Some(BoolLike::Bool(b)) => Ok(b),
        Some(BoolLike::Num(n)) => Ok(n != 0),
        Some(BoolLike::Str(s)) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" => Ok(true),
            "false" | "0" | "" => Ok(false),
            other => Err(de::Error::custom(format!("not a boolean: {other:?}"))),
        },
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumLike {
    Num(u64),
    Str(String),
}

/// `5`, `"5"` → 5; null, absent or `""` → 0.
pub fn u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match Option::<NumLike>::deserialize(d)? {
        None => Ok(0),
        Some(NumLike::Num(n)) => Ok(n),
        Some(NumLike::Str(s)) if s.trim().is_empty() => Ok(0),
        Some(NumLike::Str(s)) => s
            .trim()
            .parse()
            .map_err(|_| de::Error::custom(format!("not a number: {s:?}"))),
    }
}

/// As [`u64`], for 32-bit fields (part numbers, page sizes).
pub fn u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let n = u64(d)?;
    u32::try_from(n).map_err(|_| de::Error::custom(format!("number out of range: {n}")))
}

/// A number or a string, kept as the string (markers that may be either).
pub fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(match Option::<NumLike>::deserialize(d)? {
        None => String::new(),
        Some(NumLike::Num(n)) => n.to_string(),
        Some(NumLike::Str(s)) => s,
    })
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany<T> {
    Many(Vec<T>),
    One(T),
}

/// An array, a lone object (XML-to-JSON converters emit that for one entry), or null.
pub fn vec<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    Ok(match Option::<OneOrMany<T>>::deserialize(d)? {
        None => Vec::new(),
        Some(OneOrMany::Many(v)) => v,
        Some(OneOrMany::One(t)) => vec![t],
    })
}

/// Parses a JSON body the way the service may send it: after leading whitespace
/// (Complete streams spaces while merging), whatever the Content-Type.
pub fn from_body<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, serde_json::Error> {
    let start = body
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(body.len());
    serde_json::from_slice(&body[start..])
}
