//! Set-user-ID and set-group-ID bits a write by an unprivileged process takes
//! away, as the kernel's own `file_remove_privs` does on a local filesystem.
//! The kernel does this itself for buffered writes, truncates and chowns (it
//! sends a SETATTR of the mode); for direct-I/O writes (our write-only
//! handles) it only flags the WRITE request, so the mount must do it. Owns
//! that rule only: the mode change itself is `setattr`'s.

use super::error::FsResult;
use super::{Fs, SetAttr};

/// The process behind a write or truncate, as the request names it.
#[derive(Debug, Clone, Copy)]
pub struct Writer {
    /// Its filesystem user and group ids.
    pub uid: u32,
    pub gid: u32,
    /// The writing thread; 0 when the kernel could not name it.
    pub pid: u32,
}

/// CAP_FSETID's bit in /proc's capability masks (linux/capability.h).
const CAP_FSETID: u32 = 4;

impl Writer {
    /// Whether it may keep setuid/setgid through a write: CAP_FSETID in its
    /// effective set, from /proc (when that cannot be read, being root).
    pub fn may_keep_privs(self) -> bool {
        let status = match self.pid {
            0 => None,
            pid => std::fs::read_to_string(format!("/proc/{pid}/status")).ok(),
        };
        let caps = status.as_deref().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        });
        match caps {
            Some(caps) => caps & (1 << CAP_FSETID) != 0,
            None => self.uid == 0,
        }
    }
}

/// `perm` without the bits a write by a process lacking CAP_FSETID removes
/// (Linux's `setattr_should_drop_suidgid`): set-user-ID always; set-group-ID
/// with group execute, and without it (the mandatory-locking form) only when
/// the writer is not in the file's group (`in_group`, asked only then).
pub fn without_privs(perm: u32, in_group: impl FnOnce() -> bool) -> u32 {
    let mut out = perm & !libc::S_ISUID;
    if perm & libc::S_ISGID != 0 && (perm & libc::S_IXGRP != 0 || !in_group()) {
        out &= !libc::S_ISGID;
    }
    out
}

/// Whether `w` is in group `gid`: its own group or a supplementary one (from
/// /proc; when that cannot be read, its own group alone decides).
fn in_group(w: Writer, gid: u32) -> bool {
    if w.gid == gid {
        return true;
    }
    if w.pid == 0 {
        return false;
    }
    let Ok(status) = std::fs::read_to_string(format!("/proc/{}/status", w.pid)) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .is_some_and(|g| g.split_whitespace().any(|g| g.parse() == Ok(gid)))
}

impl Fs {
    /// Before a write the kernel flagged FUSE_WRITE_KILL_SUIDGID (its writer
    /// lacks CAP_FSETID), or an open(O_TRUNC) by such a writer: clears the
    /// bits a local filesystem would. False when none were set (nothing
    /// changed, nothing recorded).
    pub fn kill_suidgid(&self, ino: u64, by: Writer) -> FsResult<bool> {
        let a = self.getattr(ino)?;
        let perm = u32::from(a.perm);
        let kept = without_privs(perm, || in_group(by, a.gid));
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
    fn a_write_takes_setuid_always_and_setgid_as_linux_does() {
        for (before, member, after) in [
            (0o4777, true, 0o777),
            (0o2777, true, 0o777),
            (0o6777, true, 0o777),
            (0o6767, true, 0o2767),
            (0o6767, false, 0o767),
            (0o2747, true, 0o2747),
            (0o2747, false, 0o747),
            (0o1777, false, 0o1777),
            (0o644, false, 0o644),
        ] {
            assert_eq!(
                without_privs(before, || member),
                after,
                "{before:o}, in the group: {member}"
            );
        }
    }

    #[test]
    fn the_writers_supplementary_groups_count_as_its_groups() {
        let me = Writer {
            uid: 0,
            gid: u32::MAX,
            pid: std::process::id(),
        };
        let first_supplementary = std::fs::read_to_string("/proc/self/status")
            .expect("status")
            .lines()
            .find_map(|l| l.strip_prefix("Groups:"))
            .and_then(|g| g.split_whitespace().next().map(str::to_string))
            .and_then(|g| g.parse::<u32>().ok());
        if let Some(g) = first_supplementary {
            assert!(in_group(me, g));
        }
        assert!(in_group(me, u32::MAX), "its own group");
        assert!(!in_group(me, u32::MAX - 1));
        let nobody = Writer {
            uid: 65534,
            gid: 5,
            pid: 0,
        };
        assert!(!in_group(nobody, 6), "no pid: no lookup");
    }

    #[test]
    fn keeping_the_bits_takes_cap_fsetid_or_being_root_when_unknown() {
        let me = Writer {
            uid: 65534,
            gid: 65534,
            pid: std::process::id(),
        };
        let caps = std::fs::read_to_string("/proc/self/status")
            .expect("status")
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .map(|v| u64::from_str_radix(v.trim(), 16).expect("hex"))
            .expect("CapEff");
        // The uid does not decide while /proc answers.
        assert_eq!(me.may_keep_privs(), caps & (1 << CAP_FSETID) != 0);
        let unknown = |uid| Writer {
            uid,
            gid: 0,
            pid: 0,
        };
        assert!(unknown(0).may_keep_privs());
        assert!(!unknown(1000).may_keep_privs());
    }
}
