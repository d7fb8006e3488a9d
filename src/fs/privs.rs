//! Set-user-ID and set-group-ID bits a write by an unprivileged process takes
//! away, as the kernel's own `file_remove_privs` does on a local filesystem.
//! The kernel does this itself for buffered writes, truncates and chowns (it
//! sends a SETATTR of the mode); for direct-I/O writes (our write-only
//! handles) it only flags the WRITE request, so the mount must do it. Owns
//! that rule only: the mode change itself is `setattr`'s.

use super::error::FsResult;
use super::{Fs, SetAttr};

/// `perm` without the bits a write by a process lacking CAP_FSETID removes:
/// set-user-ID always; set-group-ID only with group execute (without it the
/// bit means mandatory locking, which a write keeps).
pub fn without_privs(perm: u32) -> u32 {
    let sgid_exec = libc::S_ISGID | libc::S_IXGRP;
    let mut out = perm & !libc::S_ISUID;
    if perm & sgid_exec == sgid_exec {
        out &= !libc::S_ISGID;
    }
    out
}

impl Fs {
    /// Before a write the kernel flagged FUSE_WRITE_KILL_SUIDGID (its writer
    /// lacks CAP_FSETID): clears the bits a local filesystem would. False
    /// when none were set (nothing changed, nothing recorded).
    pub fn kill_suidgid(&self, ino: u64) -> FsResult<bool> {
        let perm = u32::from(self.getattr(ino)?.perm);
        let kept = without_privs(perm);
        if kept == perm {
            return Ok(false);
        }
        let set = SetAttr {
            mode: Some(kept),
            ..SetAttr::default()
        };
        self.setattr(ino, None, set).map(|_| true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_takes_setuid_always_and_setgid_only_with_group_execute() {
        for (before, after) in [
            (0o4777, 0o777),
            (0o2777, 0o777),
            (0o6777, 0o777),
            (0o6767, 0o2767),
            (0o2745, 0o2745),
            (0o1777, 0o1777),
            (0o644, 0o644),
        ] {
            assert_eq!(without_privs(before), after, "{before:o}");
        }
    }
}
