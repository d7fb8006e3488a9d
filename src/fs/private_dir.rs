//! Private directories for file contents kept on local disk (staging files, the
//! block cache): where they live by default, made 0700, and refused when another
//! user owns them or they are open to group or other. Knows nothing of what is
//! kept inside.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

/// `$XDG_CACHE_HOME/cofferfs`, else `~/.cache/cofferfs`; without a home, a
/// per-user directory under the system's temporary directory.
pub fn default_base() -> PathBuf {
    let absolute = |v: std::ffi::OsString| Some(PathBuf::from(v)).filter(|p| p.is_absolute());
    if let Some(p) = std::env::var_os("XDG_CACHE_HOME").and_then(absolute) {
        return p.join("cofferfs");
    }
    if let Some(home) = std::env::var_os("HOME").and_then(absolute) {
        return home.join(".cache").join("cofferfs");
    }
    std::env::temp_dir().join(format!("cofferfs-{}", euid()))
}

fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Makes `dir` (and missing parents) with mode 0700, then checks that it is a
/// directory of this user that nobody else can enter. Another user's directory,
/// or one open to group/other, could hand out or accept file contents: refused.
pub fn ensure(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
    check(dir)
}

/// The check of [`ensure`] alone, for a directory that must already exist.
pub fn check(dir: &Path) -> io::Result<()> {
    let refuse = |why: String| {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{}: {why}", dir.display()),
        ))
    };
    let meta = std::fs::metadata(dir)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
    if !meta.is_dir() {
        return refuse("not a directory".into());
    }
    if meta.uid() != euid() {
        return refuse(format!(
            "owned by uid {}, not by this user (uid {}); refusing to keep file contents \
             there — choose another --cache-dir",
            meta.uid(),
            euid()
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return refuse(format!(
            "open to other users (mode {mode:04o}); refusing to keep file contents there \
             — chmod 700 it, or choose another --cache-dir"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn made_private_and_refused_when_open() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        ensure(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = ensure(&dir).unwrap_err();
        assert!(e.to_string().contains("mode 0755"), "{e}");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(ensure(&dir).is_err());
        let file = tmp.path().join("f");
        std::fs::write(&file, b"").unwrap();
        assert!(check(&file).is_err());
    }
}
