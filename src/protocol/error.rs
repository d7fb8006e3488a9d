//! The service's error codes with their HTTP statuses, and the JSON error body.
//! One table, used by the server to answer and by the client to classify.

use serde::{Deserialize, Serialize};

macro_rules! codes {
    ($($name:ident => $status:expr),* $(,)?) => {
        /// An error code of the service (API.md §4, §9), or one this table does not know.
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $($name,)*
            /// A code not in the documents: kept verbatim.
            Other(String),
        }

        impl ErrorCode {
            /// The code as it appears in `Code`.
            pub fn as_str(&self) -> &str {
                match self {
                    $(ErrorCode::$name => stringify!($name),)*
                    ErrorCode::Other(s) => s,
                }
            }

            /// Parses a `Code` string; unknown codes become `Other`.
            pub fn parse(s: &str) -> ErrorCode {
                match s {
                    $(stringify!($name) => ErrorCode::$name,)*
                    other => ErrorCode::Other(other.to_string()),
                }
            }

            /// The HTTP status the documents give this code (500 for unknown ones).
            pub fn status(&self) -> u16 {
                match self {
                    $(ErrorCode::$name => $status,)*
                    ErrorCode::Other(_) => 500,
                }
            }
        }
    };
}

codes! {
    InternalError => 500,
    ServiceUnavailable => 503,
    MethodNotAllowed => 405,
    CofferNotFound => 404,
    NoSuchCoffer => 404,
    ObjectNotExists => 404,
    MultipartNotExists => 404,
    NoSuchUpload => 404,
    NoSuchLifecycleConfiguration => 404,
    NoSuchCofferPolicy => 404,
    EntityTooSmall => 400,
    EntityTooLarge => 400,
    InvalidPart => 400,
    InvalidPartOrder => 400,
    InvalidArgument => 400,
    InvalidDigest => 400,
    BadDigest => 400,
    InvalidCofferName => 400,
    InvalidObjectKey => 400,
    InvalidObjectPrefix => 400,
    InvalidLifeCycle => 400,
    ObjectEmpty => 400,
    MalformedXML => 400,
    // Not in the service's documents (COS has it): `cofferfs serve` answers it when a
    // request body ends before its Content-Length.
    IncompleteBody => 400,
    InvalidRange => 416,
    CofferAlreadyExists => 409,
    CofferAlreadyOwnedByYou => 409,
    CofferNotEmpty => 409,
    CofferCountExceedsLimit => 409,
    MultipartAlreadyCompleted => 409,
    ObjectAlreadyUploading => 409,
    ObjectAlreadyExists => 409,
    ObjectAlreadyExistsOwnedByYou => 409,
    DataSynchronization => 409,
    AlreadyLock => 409,
    PolicyFormatCheckFailed => 409,
    AssumeRoleFailed => 409,
    KMSFailed => 409,
    AuthFailed => 401,
    PolicyCheckFailed => 401,
    ServiceNotOpen => 401,
    ConsoleAuthFailed => 401,
}

impl ErrorCode {
    /// Codes that say "try again later" rather than "this request is wrong".
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ErrorCode::InternalError
                | ErrorCode::ServiceUnavailable
                | ErrorCode::DataSynchronization
                | ErrorCode::AlreadyLock
                // The body was cut short on the way; sending it again may arrive whole.
                | ErrorCode::IncompleteBody
        )
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The flat JSON error body (API.md §4).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub resource: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub request_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub trace_id: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_with_their_status() {
        for c in [
            ErrorCode::EntityTooSmall,
            ErrorCode::NoSuchUpload,
            ErrorCode::AuthFailed,
            ErrorCode::ObjectAlreadyExists,
        ] {
            assert_eq!(ErrorCode::parse(c.as_str()), c);
        }
        assert_eq!(ErrorCode::NoSuchUpload.status(), 404);
        assert_eq!(ErrorCode::AuthFailed.status(), 401);
        assert_eq!(ErrorCode::parse("Weird"), ErrorCode::Other("Weird".into()));
    }
}
