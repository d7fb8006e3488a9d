//! One entry of the view: its inode number and place (parent, name, and the
//! parent's path, shared with its siblings), kind, size, where its bytes are,
//! attributes, and when the coffer last confirmed it; and `ViewEntry`, what the
//! coffer or the journal says a path is. Pure data: no locks, no network, no FUSE.

use crate::fs::journal::{Attrs, Record, Shape, SpecialKind};
use crate::fs::to_timestamp;
use crate::store::ObjectMeta;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

pub const ROOT: u64 = 1;

/// The prefix cofferfs keeps for itself; never shown in the mount.
pub const RESERVED: &str = ".cofferfs";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    /// A FIFO, socket or device node: only the journal holds it.
    Special {
        special: SpecialKind,
        rdev: u32,
    },
}

/// Where an entry's existence comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// In the view of the coffer: an object, a journal record, or implied by them.
    Stored,
    /// A file this mount is writing: not in the view until its close succeeds.
    Writing,
}

/// Where a file's bytes are. Boxed strings: a table holds one per file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Data {
    pub key: Box<str>,
    pub etag: Box<str>,
}

/// A node's recorded attributes: most entries (objects other tools wrote)
/// have none, and hold no allocation for them. Reads as an `Attrs`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeAttrs(Option<Box<Attrs>>);

static NO_ATTRS: Attrs = Attrs {
    mode: None,
    uid: None,
    gid: None,
    mtime: None,
    ctime: None,
    atime: None,
    link: None,
};

impl From<Attrs> for NodeAttrs {
    fn from(a: Attrs) -> NodeAttrs {
        NodeAttrs((a != Attrs::default()).then(|| Box::new(a)))
    }
}

impl std::ops::Deref for NodeAttrs {
    type Target = Attrs;
    fn deref(&self) -> &Attrs {
        self.0.as_deref().unwrap_or(&NO_ATTRS)
    }
}

impl std::ops::DerefMut for NodeAttrs {
    fn deref_mut(&mut self) -> &mut Attrs {
        self.0.get_or_insert_with(Box::default)
    }
}

#[derive(Debug, Clone)]
pub struct Node {
    pub ino: u64,
    pub parent: u64,
    /// The parent's path (see `path`), shared by every entry of the directory.
    pub dir: Arc<str>,
    /// Shared with the parent's map of names.
    pub name: Arc<str>,
    pub kind: Kind,
    pub origin: Origin,
    pub size: u64,
    /// Files: the object holding the bytes (`None`: empty file, or being written).
    pub data: Option<Data>,
    /// Symlinks: the target.
    pub target: Option<Box<str>>,
    /// Recorded attributes; unset fields show the mount's defaults.
    pub attrs: NodeAttrs,
    /// Shown when no mtime is recorded: the object's time, or creation here.
    pub mtime: SystemTime,
    /// When the coffer last confirmed this entry (listing or HEAD).
    pub seen: Instant,
    /// Directories: when a listing last filled this subtree.
    pub listed: Option<Instant>,
    /// Removed from the view while open: no path any more (`path` is where it
    /// was), kept for its handles, and nothing about it is recorded.
    pub unlinked: bool,
    /// Hard links: the file's other names, as (parent, name). `parent`,
    /// `name` and `path` are one of its names; the journal applies what is
    /// recorded at any of them to all.
    pub aliases: Vec<(u64, Arc<str>)>,
}

impl Node {
    /// The path in the mount, without a leading `/`; empty for the root.
    pub fn path(&self) -> String {
        if self.name.is_empty() {
            String::new()
        } else {
            join(&self.dir, &self.name)
        }
    }

    /// What the view says this entry is, without its place in the table.
    pub fn view(&self) -> ViewEntry {
        ViewEntry {
            kind: self.kind,
            size: self.size,
            data: self.data.clone(),
            target: self.target.as_deref().map(String::from),
            attrs: *self.attrs,
            mtime: self.mtime,
        }
    }

    /// The path of a child called `name`.
    pub fn child_path(&self, name: &str) -> String {
        join(&self.path(), name)
    }

    /// The listing prefix of this directory's subtree.
    pub fn prefix(&self) -> String {
        if self.name.is_empty() {
            String::new()
        } else {
            format!("{}/", self.path())
        }
    }
}

/// `dir/name`, or `name` at the root (`dir` empty).
pub fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// One entry of the view (objects ∪ journal), as a listing or lookup finds it.
#[derive(Debug, Clone)]
pub struct ViewEntry {
    pub kind: Kind,
    pub size: u64,
    pub data: Option<Data>,
    pub target: Option<String>,
    pub attrs: Attrs,
    pub mtime: SystemTime,
}

impl ViewEntry {
    /// The journal record that recreates this entry at `path`, with its times
    /// (the object's own time when none was recorded).
    pub fn record_at(&self, path: &str) -> Record {
        let path = path.to_string();
        let attrs = Attrs {
            mtime: Some(self.attrs.mtime.unwrap_or_else(|| to_timestamp(self.mtime))),
            ..self.attrs
        };
        match (self.kind, &self.data, &self.target) {
            (Kind::Dir, _, _) => Record::Mkdir { path, attrs },
            (Kind::Symlink, _, t) => Record::Symlink {
                path,
                target: t.clone().unwrap_or_default(),
                attrs,
            },
            (Kind::File, Some(d), _) => Record::Bind {
                path,
                key: d.key.to_string(),
                size: self.size,
                etag: d.etag.to_string(),
                attrs,
            },
            (Kind::File, None, _) => Record::File { path, attrs },
            (Kind::Special { special, rdev }, _, _) => Record::Special {
                path,
                special,
                rdev,
                attrs,
            },
        }
    }

    pub fn dir(attrs: Attrs, mtime: SystemTime) -> ViewEntry {
        ViewEntry {
            kind: Kind::Dir,
            size: 0,
            data: None,
            target: None,
            attrs,
            mtime,
        }
    }

    /// An object shown at its own key.
    pub fn object(meta: &ObjectMeta, attrs: Attrs) -> ViewEntry {
        ViewEntry {
            kind: Kind::File,
            size: meta.size,
            data: Some(Data {
                key: meta.key.as_str().into(),
                etag: meta.etag.as_str().into(),
            }),
            target: None,
            attrs,
            mtime: meta.last_modified.unwrap_or(SystemTime::UNIX_EPOCH),
        }
    }

    /// What a journal entry shows; `None` for attributes alone.
    pub fn from_journal(shape: &Shape, attrs: Attrs) -> Option<ViewEntry> {
        let epoch = SystemTime::UNIX_EPOCH;
        Some(match shape {
            Shape::Dir => ViewEntry::dir(attrs, epoch),
            Shape::Empty => ViewEntry {
                kind: Kind::File,
                size: 0,
                data: None,
                target: None,
                attrs,
                mtime: epoch,
            },
            Shape::Symlink { target: t } => ViewEntry {
                kind: Kind::Symlink,
                size: t.len() as u64,
                data: None,
                target: Some(t.clone()),
                attrs,
                mtime: epoch,
            },
            Shape::Object { key, size, etag } => ViewEntry {
                kind: Kind::File,
                size: *size,
                data: Some(Data {
                    key: key.as_str().into(),
                    etag: etag.as_str().into(),
                }),
                target: None,
                attrs,
                mtime: epoch,
            },
            Shape::Special { special, rdev } => ViewEntry {
                kind: Kind::Special {
                    special: *special,
                    rdev: *rdev,
                },
                size: 0,
                data: None,
                target: None,
                attrs,
                mtime: epoch,
            },
            Shape::AttrsOnly => return None,
        })
    }
}

/// A key segment that can be a file name here.
pub fn usable_name(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && s.len() <= 255 && !s.contains('\0')
}
