//! Where credentials come from: the environment or a private file.
//! Never logs, prints or passes a secret on a command line.

use crate::protocol::sign::Credentials;
use std::path::Path;

/// Why credentials could not be loaded. Messages name files, never secrets.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot read credentials file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("credentials file {0} is readable by group or others; run chmod 600 on it")]
    TooOpen(String),
    #[error("credentials file {path} has no {field}")]
    Missing { path: String, field: &'static str },
}

/// Reads `KEY = value` lines (`secret_id`, `secret_key`, `session_token`, or the
/// `TENCENTCLOUD_*` names; `#` comments). Refused when group/world-readable.
pub fn from_file(path: &Path) -> Result<Credentials, CredentialsError> {
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|source| CredentialsError::Read {
        path: shown.clone(),
        source,
    })?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(CredentialsError::TooOpen(shown));
    }
    let text = std::fs::read_to_string(path).map_err(|source| CredentialsError::Read {
        path: shown.clone(),
        source,
    })?;
    let (mut id, mut key, mut token) = (None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim().trim_matches('"').to_string();
        match k.trim().to_ascii_lowercase().as_str() {
            "secret_id" | "tencentcloud_secret_id" => id = Some(v),
            "secret_key" | "tencentcloud_secret_key" => key = Some(v),
            "session_token" | "tencentcloud_session_token" => token = Some(v),
            _ => {}
        }
    }
    Ok(Credentials {
        secret_id: id.ok_or_else(|| CredentialsError::Missing {
            path: shown.clone(),
            field: "secret_id",
        })?,
        secret_key: key.ok_or_else(|| CredentialsError::Missing {
            path: shown.clone(),
            field: "secret_key",
        })?,
        session_token: token.filter(|t| !t.is_empty()),
    })
}

/// The file when given, else the environment, else none (unsigned requests).
pub fn load(file: Option<&Path>) -> Result<Option<Credentials>, CredentialsError> {
    match file {
        Some(p) => from_file(p).map(Some),
        None => Ok(Credentials::from_env()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_private_file_is_read_and_an_open_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("creds");
        std::fs::write(
            &p,
            "# mine\nsecret_id = AKIDx\nSECRET_KEY=\"zq-secret-qz\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = from_file(&p).unwrap();
        assert_eq!(c.secret_id, "AKIDx");
        assert_eq!(c.secret_key, "zq-secret-qz");
        assert!(!format!("{c:?}").contains("zq-secret-qz"));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = from_file(&p).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        assert!(!err.contains("zq-secret-qz"), "{err}");
    }
}
