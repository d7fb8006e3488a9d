//! One entry of the view: its inode number and place (parent, name, and the
//! parent's path, shared with its siblings), kind, size, where its bytes are,
//! attributes, and when the coffer last confirmed it; and `ViewEntry`, what the
//! coffer or the journal says a path is. Pure data: no locks, no network, no FUSE.

use crate::fs::journal::{Attrs, Record, Shape, SpecialKind};
use crate::fs::to_timestamp;
use crate::store::ObjectMeta;
use std::num::NonZeroU32;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

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

/// Where a file's bytes are. Compact: a table holds one per file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Data {
    pub key: Box<str>,
    pub etag: Etag,
}

/// An object's ETag as the service sent it; an MD5 in lowercase hex (most
/// ETags) is kept as its 16 bytes. `to_string` gives the text back.
#[derive(Clone, PartialEq, Eq)]
pub enum Etag {
    Md5([u8; 16]),
    Text(Box<str>),
}

impl From<&str> for Etag {
    fn from(s: &str) -> Etag {
        let hex = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        let b = s.as_bytes();
        if b.len() == 32 {
            let mut out = [0u8; 16];
            let all =
                out.iter_mut()
                    .enumerate()
                    .all(|(i, o)| match (hex(b[2 * i]), hex(b[2 * i + 1])) {
                        (Some(h), Some(l)) => {
                            *o = h << 4 | l;
                            true
                        }
                        _ => false,
                    });
            if all {
                return Etag::Md5(out);
            }
        }
        Etag::Text(s.into())
    }
}

impl From<String> for Etag {
    fn from(s: String) -> Etag {
        Etag::from(s.as_str())
    }
}

impl std::fmt::Display for Etag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Etag::Md5(d) => d.iter().try_for_each(|b| write!(f, "{b:02x}")),
            Etag::Text(t) => f.write_str(t),
        }
    }
}

impl std::fmt::Debug for Etag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.to_string())
    }
}

/// A hard-linked file's other names, as (parent, name); no allocation for
/// the files that have none (nearly all).
#[derive(Debug, Clone, Default)]
// Boxed: 8 bytes in every node, not a Vec's 24, for what few files have.
#[allow(clippy::box_collection)]
pub struct Aliases(Option<Box<Vec<Alias>>>);

/// One name of a hard-linked file: (parent, name).
pub type Alias = (u64, Arc<str>);

impl Aliases {
    pub fn push(&mut self, a: Alias) {
        self.0.get_or_insert_with(Box::default).push(a);
    }

    pub fn remove(&mut self, i: usize) -> Alias {
        let v = self.0.get_or_insert_with(Box::default);
        let a = v.remove(i);
        if v.is_empty() {
            self.0 = None;
        }
        a
    }

    pub fn retain(&mut self, keep: impl FnMut(&Alias) -> bool) {
        if let Some(v) = &mut self.0 {
            v.retain(keep);
            if v.is_empty() {
                self.0 = None;
            }
        }
    }
}

impl std::ops::Deref for Aliases {
    type Target = [Alias];
    fn deref(&self) -> &Self::Target {
        self.0.as_deref().map_or(&[], Vec::as_slice)
    }
}

impl std::ops::DerefMut for Aliases {
    fn deref_mut(&mut self) -> &mut Self::Target {
        match &mut self.0 {
            Some(v) => v.as_mut_slice(),
            None => &mut [],
        }
    }
}

impl IntoIterator for Aliases {
    type Item = Alias;
    type IntoIter = std::vec::IntoIter<Alias>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.map(|v| *v).unwrap_or_default().into_iter()
    }
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

/// A moment of the mount's monotonic clock in 4 bytes (a node holds two,
/// and a table a million nodes): 10 ms steps since the clock's first use,
/// enough for 497 days. A moment past that, or `LONG_AGO`, reads as long
/// ago: a TTL never trusts it, so the worst case is asking the coffer again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Tick(NonZeroU32);

const STEP_MS: u128 = 10;

fn clock_start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

impl Tick {
    /// A time no TTL trusts.
    pub const LONG_AGO: Tick = Tick(NonZeroU32::MIN);

    pub fn now() -> Tick {
        Tick::from(Instant::now())
    }

    /// How long ago it was; `Duration::MAX` for `LONG_AGO` and moments past
    /// the clock's range.
    pub fn elapsed(self) -> Duration {
        let now = Tick::now().0.get();
        let t = self.0.get();
        if t == 1 || t == u32::MAX || now == u32::MAX {
            return Duration::MAX;
        }
        Duration::from_millis(u64::from(now.saturating_sub(t)) * STEP_MS as u64)
    }
}

impl From<Instant> for Tick {
    fn from(t: Instant) -> Tick {
        // Moments before the clock's start count as its start.
        let steps = t.saturating_duration_since(clock_start()).as_millis() / STEP_MS;
        let v = u32::try_from(steps.saturating_add(2)).unwrap_or(u32::MAX);
        Tick(NonZeroU32::new(v).unwrap_or(NonZeroU32::MAX))
    }
}

/// What a node holds beyond its attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Content {
    /// A directory, special file, empty file, or a file being written.
    None,
    /// A file's bytes. An empty key: the object at the path the node has now
    /// (most files), which is not stored twice.
    Object(Data),
    /// A symlink's target.
    Target(Box<str>),
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
    /// A file's object (`data()`) or a symlink's target (`target()`): one
    /// field, as no entry has both.
    pub(super) content: Content,
    /// Recorded attributes; unset fields show the mount's defaults.
    pub attrs: NodeAttrs,
    /// Shown when no mtime is recorded: the object's time, or creation here.
    pub mtime: SystemTime,
    /// When the coffer last confirmed this entry (listing or HEAD).
    pub seen: Tick,
    /// Directories: when a listing last filled this subtree.
    pub listed: Option<Tick>,
    /// The kernel's references to this entry (FUSE's lookup count; see
    /// `Table::remember`). Stuck at `u32::MAX` once there: never dropped.
    pub(super) kernel: u32,
    /// Removed from the view while open: no path any more (`path` is where it
    /// was), kept for its handles, and nothing about it is recorded.
    pub unlinked: bool,
    /// Hard links: the file's other names, as (parent, name). `parent`,
    /// `name` and `path` are one of its names; the journal applies what is
    /// recorded at any of them to all.
    pub aliases: Aliases,
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

    /// Files: the object holding the bytes (`None`: empty file, or being written).
    pub fn data(&self) -> Option<Data> {
        let Content::Object(d) = &self.content else {
            return None;
        };
        Some(Data {
            key: if d.key.is_empty() {
                self.path().into()
            } else {
                d.key.clone()
            },
            etag: d.etag.clone(),
        })
    }

    pub fn has_data(&self) -> bool {
        matches!(self.content, Content::Object(_))
    }

    /// Sets (or, with `None`, clears) a file's object.
    pub fn set_data(&mut self, data: Option<Data>) {
        match data {
            Some(d) => self.content = Content::Object(d),
            None if self.has_data() => self.content = Content::None,
            None => {}
        }
    }

    /// `set_data`, leaving out a key that is the node's own path.
    pub(super) fn set_data_here(&mut self, data: Option<Data>) {
        let path = self.path();
        self.set_data(data);
        if let Content::Object(d) = &mut self.content {
            if *d.key == *path {
                d.key = "".into();
            }
        }
    }

    /// Symlinks: the target.
    pub fn target(&self) -> Option<&str> {
        match &self.content {
            Content::Target(t) => Some(t),
            _ => None,
        }
    }

    /// Sets (or, with `None`, clears) a symlink's target.
    pub(super) fn set_target(&mut self, target: Option<Box<str>>) {
        match target {
            Some(t) => self.content = Content::Target(t),
            None if self.target().is_some() => self.content = Content::None,
            None => {}
        }
    }

    /// The node's path is about to change: a key left out becomes explicit.
    pub(super) fn keep_key(&mut self) {
        let path = self.path();
        if let Content::Object(d) = &mut self.content {
            if d.key.is_empty() {
                d.key = path.into();
            }
        }
    }

    /// What the view says this entry is, without its place in the table.
    pub fn view(&self) -> ViewEntry {
        ViewEntry {
            kind: self.kind,
            size: self.size,
            data: self.data(),
            target: self.target().map(String::from),
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

#[cfg(test)]
mod tests {
    use super::{Etag, Tick};
    use std::num::NonZeroU32;
    use std::time::Duration;

    #[test]
    fn an_etag_reads_back_as_the_service_sent_it() {
        let md5 = "0123456789abcdef0123456789abcdef";
        assert!(matches!(Etag::from(md5), Etag::Md5(_)));
        for e in [md5, "0123456789ABCDEF0123456789ABCDEF", "abc-2", "", "e"] {
            assert_eq!(Etag::from(e).to_string(), e);
        }
        assert_ne!(
            Etag::from(md5),
            Etag::from("0123456789abcdef0123456789abcdee")
        );
    }

    #[test]
    fn a_tick_tells_how_long_ago_and_long_ago_is_never_trusted() {
        let start = Tick::now();
        std::thread::sleep(Duration::from_millis(50));
        let e = start.elapsed();
        assert!(
            e >= Duration::from_millis(30) && e < Duration::from_secs(5),
            "{e:?}"
        );
        assert!(Tick::now().elapsed() < Duration::from_millis(20));
        assert_eq!(Tick::LONG_AGO.elapsed(), Duration::MAX);
        assert!(start < Tick::now() || start.elapsed() < Duration::from_millis(20));
        // Past the clock's range: long ago too.
        assert_eq!(Tick(NonZeroU32::MAX).elapsed(), Duration::MAX);
        assert_eq!(std::mem::size_of::<Option<Tick>>(), 4);
    }
}
