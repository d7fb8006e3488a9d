//! Extended attributes: which names a mount keeps (`user.`, `trusted.`,
//! `security.`, and the two POSIX ACL names), their limits, and the `xattr`
//! journal records that set and remove them. ACLs are not enforced (the kernel
//! checks the mode alone); as on ext4, an access ACL sets the mode's bits, and
//! one the mode says all of is not kept (`cp -a` copies a mode that way), while
//! any other is kept as given and a later `chmod` does not rewrite it. They live in the journal's
//! overlay by path; a rename moves them (`moved_xattrs`). Never touches the
//! coffer's objects; knows no FUSE.

use super::error::{FsError, FsResult};
use super::journal::{Attrs, Overlay, Record};
use super::{lock, touched_now, Fs, SetAttr};
use crate::protocol::{hex, unhex};
use std::ffi::OsStr;

/// The largest value (Linux's `XATTR_SIZE_MAX`): E2BIG beyond.
pub const MAX_VALUE: usize = 64 * 1024;
/// The longest name (Linux's `XATTR_NAME_MAX`): ERANGE beyond.
pub const MAX_NAME: usize = 255;
/// The names of one entry, NUL-terminated, at most (Linux's `XATTR_LIST_MAX`):
/// a set that would go beyond is ENOSPC, so a listing always fits.
pub const MAX_LIST: usize = 64 * 1024;

/// Namespaces kept as given; anything else is EOPNOTSUPP.
const PREFIXES: [&str; 3] = ["user.", "trusted.", "security."];
const ACL_NAMES: [&str; 2] = ["system.posix_acl_access", "system.posix_acl_default"];

/// `setxattr(2)` flags.
const XATTR_CREATE: i32 = 1;
const XATTR_REPLACE: i32 = 2;

/// ACL entry tags (linux/posix_acl_xattr.h) and the xattr format's version.
const ACL_USER_OBJ: u16 = 0x01;
const ACL_USER: u16 = 0x02;
const ACL_GROUP_OBJ: u16 = 0x04;
const ACL_GROUP: u16 = 0x08;
const ACL_MASK: u16 = 0x10;
const ACL_OTHER: u16 = 0x20;
const ACL_VERSION: u32 = 2;

/// What an access ACL makes of the mode: permission bits (owner, the mask or
/// else the owning group, others) and whether they say all of it (no named
/// users or groups). `None` when it is no ACL.
fn acl_mode(value: &[u8]) -> Option<(u32, bool)> {
    let (version, entries) = value.split_first_chunk::<4>()?;
    if u32::from_le_bytes(*version) != ACL_VERSION || entries.len() % 8 != 0 {
        return None;
    }
    let (mut user, mut group, mut mask, mut other) = (None, None, None, None);
    let mut named = false;
    for e in entries.chunks_exact(8) {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        let perm = u32::from(u16::from_le_bytes([e[2], e[3]]) & 0o7);
        match tag {
            ACL_USER_OBJ => user = Some(perm),
            ACL_GROUP_OBJ => group = Some(perm),
            ACL_MASK => mask = Some(perm),
            ACL_OTHER => other = Some(perm),
            ACL_USER | ACL_GROUP => named = true,
            _ => return None,
        }
    }
    let group = mask.or(group)?;
    Some((user? << 6 | group << 3 | other?, !named))
}

/// A name this mount keeps, or why not.
fn xattr_name(name: &OsStr) -> FsResult<&str> {
    let bytes = name.as_encoded_bytes().len();
    if bytes == 0 || bytes > MAX_NAME {
        return Err(FsError::new(
            libc::ERANGE,
            format!("xattr name of {bytes} bytes: 1 to {MAX_NAME}"),
        ));
    }
    let s = name.to_str().ok_or_else(|| {
        FsError::new(
            libc::EINVAL,
            format!("xattr {name:?}: the journal keeps UTF-8 names only"),
        )
    })?;
    let kept = ACL_NAMES.contains(&s)
        || PREFIXES
            .iter()
            .any(|p| s.len() > p.len() && s.starts_with(p));
    if !kept {
        return Err(FsError::new(
            libc::EOPNOTSUPP,
            format!("xattr {s:?}: only user., trusted., security. and POSIX ACLs are kept"),
        ));
    }
    Ok(s)
}

/// The records that give `to` (and what lies beneath it) the extended
/// attributes `from` has: a rename's bind does not carry them.
pub(super) fn moved_xattrs(o: &Overlay, from: &str, to: &str) -> Vec<Record> {
    let mut out = Vec::new();
    for (path, xattrs) in o.xattrs_under(from) {
        let at = format!("{to}{}", &path[from.len()..]);
        for (name, value) in xattrs {
            out.push(Record::Xattr {
                path: at.clone(),
                name: name.clone(),
                value: Some(value.clone()),
            });
        }
    }
    out
}

impl Fs {
    /// Removals of the xattrs the journal still holds for `path`, where nothing
    /// is: a file whose close failed after a setxattr leaves them. A new entry
    /// there starts without them.
    pub(super) fn stale_xattrs(&self, path: &str) -> Vec<Record> {
        self.journal.with_overlay(|o| {
            o.xattrs(path)
                .into_iter()
                .flat_map(|x| x.keys())
                .map(|name| Record::Xattr {
                    path: path.to_string(),
                    name: name.clone(),
                    value: None,
                })
                .collect()
        })
    }

    /// The value of `name`; ENODATA when it has none.
    pub fn getxattr(&self, ino: u64, name: &OsStr) -> FsResult<Vec<u8>> {
        let name = xattr_name(name)?;
        let path = self.node(ino)?.path();
        let value = self
            .journal
            .with_overlay(|o| o.xattrs(&path).and_then(|x| x.get(name)).cloned());
        let value = value.ok_or_else(|| {
            FsError::new(libc::ENODATA, format!("{path:?} has no xattr {name:?}"))
        })?;
        unhex(&value).ok_or_else(|| {
            FsError::new(
                libc::EIO,
                format!("{path:?}: the journal's value of xattr {name:?} is not hex"),
            )
        })
    }

    /// Every name, each followed by a NUL, as `listxattr(2)` answers.
    pub fn listxattr(&self, ino: u64) -> FsResult<Vec<u8>> {
        let path = self.node(ino)?.path();
        Ok(self.journal.with_overlay(|o| {
            let mut out = Vec::new();
            for name in o.xattrs(&path).into_iter().flat_map(|x| x.keys()) {
                out.extend_from_slice(name.as_bytes());
                out.push(0);
            }
            out
        }))
    }

    /// Sets `name` to `value`; `flags` may ask that it be new (XATTR_CREATE:
    /// EEXIST otherwise) or already there (XATTR_REPLACE: ENODATA otherwise).
    pub fn setxattr(&self, ino: u64, name: &OsStr, value: &[u8], flags: i32) -> FsResult<()> {
        let name = xattr_name(name)?;
        if value.len() > MAX_VALUE {
            return Err(FsError::new(
                libc::E2BIG,
                format!("xattr {name:?}: {} bytes; at most {MAX_VALUE}", value.len()),
            ));
        }
        if name == ACL_NAMES[0] {
            if let Some((perm, whole)) = acl_mode(value) {
                let special = u32::from(self.getattr(ino)?.perm) & 0o7000;
                let set = SetAttr {
                    mode: Some(special | perm),
                    ..SetAttr::default()
                };
                self.setattr(ino, None, set)?;
                if whole {
                    // The mode says it all: nothing to keep (ext4 keeps nothing).
                    return match self.removexattr(ino, OsStr::new(name)) {
                        Err(e) if e.errno == libc::ENODATA => Ok(()),
                        other => other,
                    };
                }
            }
        }
        // Under `ns`, the check and the record are one step, and a rename
        // cannot move the path in between.
        let _ns = lock(&self.ns);
        let path = self.node(ino)?.path();
        self.writable("setxattr", &path)?;
        let (exists, listed) = self.journal.with_overlay(|o| {
            let x = o.xattrs(&path);
            let listed: usize = x
                .into_iter()
                .flat_map(|x| x.keys())
                .filter(|k| k.as_str() != name)
                .map(|k| k.len() + 1)
                .sum();
            (x.is_some_and(|x| x.contains_key(name)), listed)
        });
        if flags & XATTR_CREATE != 0 && exists {
            return Err(FsError::new(
                libc::EEXIST,
                format!("{path:?}: xattr {name:?} exists"),
            ));
        }
        if flags & XATTR_REPLACE != 0 && !exists {
            return Err(FsError::new(
                libc::ENODATA,
                format!("{path:?} has no xattr {name:?} to replace"),
            ));
        }
        if listed + name.len() + 1 > MAX_LIST {
            return Err(FsError::new(
                libc::ENOSPC,
                format!("{path:?}: xattr names would take over {MAX_LIST} bytes"),
            ));
        }
        let mut records = vec![Record::Xattr {
            path,
            name: name.to_string(),
            value: Some(hex(value)),
        }];
        records.extend(self.xattr_changed(ino));
        self.journal.record(records);
        Ok(())
    }

    /// Removes `name`; ENODATA when it has none.
    pub fn removexattr(&self, ino: u64, name: &OsStr) -> FsResult<()> {
        let name = xattr_name(name)?;
        let _ns = lock(&self.ns);
        let path = self.node(ino)?.path();
        self.writable("removexattr", &path)?;
        let exists = self
            .journal
            .with_overlay(|o| o.xattrs(&path).is_some_and(|x| x.contains_key(name)));
        if !exists {
            return Err(FsError::new(
                libc::ENODATA,
                format!("{path:?} has no xattr {name:?}"),
            ));
        }
        let mut records = vec![Record::Xattr {
            path,
            name: name.to_string(),
            value: None,
        }];
        records.extend(self.xattr_changed(ino));
        self.journal.record(records);
        Ok(())
    }

    /// An xattr set or removed changes the entry: its ctime moves, as on ext4.
    /// Called under `ns`; the record that keeps the new ctime, to go in the
    /// same batch as the xattr's. None for a file being written (its close
    /// records its attributes) or one already unlinked.
    fn xattr_changed(&self, ino: u64) -> Option<Record> {
        let attrs = Attrs {
            ctime: touched_now().ctime,
            ..Attrs::default()
        };
        let (path, unlinked) = {
            let mut t = lock(&self.table);
            let n = t.get_mut(ino)?;
            n.attrs = n.attrs.merged(attrs).into();
            (n.path(), n.unlinked)
        };
        (!unlinked && !self.being_written(ino)).then_some(Record::Attr { path, attrs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_outside_the_kept_namespaces_are_not_supported() {
        for ok in [
            "user.a",
            "trusted.b",
            "security.selinux",
            "system.posix_acl_access",
            "system.posix_acl_default",
        ] {
            assert_eq!(xattr_name(OsStr::new(ok)).map_err(|e| e.errno), Ok(ok));
        }
        for (bad, errno) in [
            ("foo.bar", libc::EOPNOTSUPP),
            ("user.", libc::EOPNOTSUPP),
            ("system.other", libc::EOPNOTSUPP),
            ("", libc::ERANGE),
        ] {
            assert_eq!(
                xattr_name(OsStr::new(bad)).map_err(|e| e.errno),
                Err(errno),
                "{bad:?}"
            );
        }
        let long = format!("user.{}", "x".repeat(251));
        assert_eq!(
            xattr_name(OsStr::new(&long)).map_err(|e| e.errno),
            Err(libc::ERANGE)
        );
    }

    #[test]
    fn an_access_acl_gives_the_mode_bits_and_says_whether_it_says_more() {
        let acl = |entries: &[(u16, u16)]| {
            let mut v = ACL_VERSION.to_le_bytes().to_vec();
            for (tag, perm) in entries {
                v.extend_from_slice(&tag.to_le_bytes());
                v.extend_from_slice(&perm.to_le_bytes());
                v.extend_from_slice(&u32::MAX.to_le_bytes());
            }
            v
        };
        let minimal = acl(&[(ACL_USER_OBJ, 6), (ACL_GROUP_OBJ, 4), (ACL_OTHER, 0)]);
        assert_eq!(acl_mode(&minimal), Some((0o640, true)));
        let named = acl(&[
            (ACL_USER_OBJ, 7),
            (ACL_USER, 7),
            (ACL_GROUP_OBJ, 0),
            (ACL_MASK, 5),
            (ACL_OTHER, 1),
        ]);
        assert_eq!(acl_mode(&named), Some((0o751, false)));
        assert_eq!(acl_mode(b"junk"), None);
        assert_eq!(acl_mode(&acl(&[(ACL_USER_OBJ, 6)])), None, "incomplete");
    }

    #[test]
    fn a_new_entry_starts_without_xattrs_a_failed_close_left_at_its_path() {
        use crate::fs::{FsConfig, Owner};
        use crate::store::memory::MemoryStore;
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = FsConfig {
            cache_dir: dir.path().join("cache"),
            ..FsConfig::default()
        };
        let fs = Fs::new(std::sync::Arc::new(MemoryStore::new()), cfg).expect("Fs::new");
        let me = Owner {
            uid: fs.cfg.uid,
            gid: fs.cfg.gid,
        };
        // What a setxattr on a file whose close then failed leaves behind.
        for path in ["f", "p"] {
            fs.journal.record(vec![Record::Xattr {
                path: path.into(),
                name: "user.stale".into(),
                value: Some("01".into()),
            }]);
        }
        let stale = OsStr::new("user.stale");
        let (a, fh) = fs
            .create(1, OsStr::new("f"), 0o644, libc::O_WRONLY, 0, me)
            .expect("create");
        fs.release(fh).expect("close");
        assert_eq!(
            fs.getxattr(a.ino, stale).map_err(|e| e.errno),
            Err(libc::ENODATA)
        );
        let p = fs
            .mknod(1, OsStr::new("p"), libc::S_IFIFO | 0o644, 0, me)
            .expect("mknod");
        assert_eq!(fs.listxattr(p.ino).map_err(|e| e.errno), Ok(Vec::new()));
        fs.setxattr(p.ino, OsStr::new("user.new"), b"v", XATTR_CREATE)
            .expect("setxattr");
        assert_eq!(
            fs.listxattr(p.ino).map_err(|e| e.errno),
            Ok(b"user.new\0".to_vec())
        );
        fs.shutdown();
    }

    #[test]
    fn a_rename_gives_the_new_paths_every_xattr_beneath_the_old() {
        let mut o = Overlay::default();
        for (path, name) in [("d", "user.top"), ("d/f", "user.a"), ("dd", "user.no")] {
            o.apply(&Record::Xattr {
                path: path.into(),
                name: name.into(),
                value: Some("01".into()),
            });
        }
        let moved = moved_xattrs(&o, "d", "e/x");
        let paths: Vec<_> = moved
            .iter()
            .map(|r| match r {
                Record::Xattr { path, name, .. } => format!("{path} {name}"),
                _ => String::new(),
            })
            .collect();
        assert_eq!(paths, ["e/x user.top", "e/x/f user.a"]);
    }
}
