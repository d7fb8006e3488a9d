//! Directory handles: opendir takes a snapshot of the directory's entries
//! (listing it from the coffer when the view is stale), readdir hands it out
//! by offset. Must not change the view beyond filling it, nor the journal.

use super::error::{FsError, FsResult};
use super::handles::Handle;
use super::view::Kind;
use super::{lock, Attr, DirEntry, Fs};

impl Fs {
    pub fn opendir(&self, ino: u64) -> FsResult<u64> {
        let dir = self.dir(ino)?;
        // Before its own listing, so that what it starts overlaps that.
        let walk = self.walking(&dir);
        self.ensure_listed(&dir)?;
        if walk {
            self.walked_into(&dir);
        }
        let t = lock(&self.table);
        let me = t.get(ino).ok_or_else(FsError::not_found)?;
        let mut entries = vec![
            DirEntry {
                ino,
                kind: Kind::Dir,
                name: ".".into(),
            },
            DirEntry {
                ino: me.parent,
                kind: Kind::Dir,
                name: "..".into(),
            },
        ];
        entries.extend(t.entries(ino).into_iter().map(|(name, n)| DirEntry {
            ino: n.ino,
            kind: n.kind,
            name: name.to_string(),
        }));
        drop(t);
        Ok(self.handles.add(Handle::Dir(entries)))
    }

    /// Hands the entries from `offset` on to `add` (with the offset of the next
    /// one) until it says its buffer is full.
    pub fn readdir(
        &self,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(&DirEntry, u64) -> bool,
    ) -> FsResult<()> {
        let h = self.handles.get(fh)?;
        let Handle::Dir(entries) = &*h else {
            return Err(FsError::new(libc::EBADF, "readdir: not a directory handle"));
        };
        for (i, e) in entries.iter().enumerate().skip(offset as usize) {
            if add(e, i as u64 + 1) {
                break;
            }
        }
        Ok(())
    }

    /// `readdir` with each entry's attributes (READDIRPLUS): a stat of every
    /// entry after it (`du`, `ls -l`) then needs no LOOKUP each. The kernel
    /// holds every entry it is given, "." and ".." aside, so each one is
    /// remembered as it goes into the reply. An entry gone since opendir is
    /// left out.
    pub fn readdirplus(
        &self,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(&DirEntry, u64, &Attr) -> bool,
    ) -> FsResult<()> {
        let h = self.handles.get(fh)?;
        let Handle::Dir(entries) = &*h else {
            return Err(FsError::new(
                libc::EBADF,
                "readdirplus: not a directory handle",
            ));
        };
        let mut t = lock(&self.table);
        for (i, e) in entries.iter().enumerate().skip(offset as usize) {
            let Some(a) = t.get(e.ino).map(|n| self.shown(&t, n)) else {
                continue;
            };
            if add(e, i as u64 + 1, &a) {
                break;
            }
            if i >= 2 {
                t.remember(e.ino);
            }
        }
        Ok(())
    }

    /// Whether the kernel may ask for READDIRPLUS: not as of a past time,
    /// where each file's version is checked at its lookup.
    pub fn wants_readdirplus(&self) -> bool {
        self.cfg.as_of.is_none()
    }

    pub fn releasedir(&self, fh: u64) {
        self.handles.remove(fh);
    }
}
