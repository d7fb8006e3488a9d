//! The metadata journal's format and replay (docs/journal.md): records, batch keys,
//! and the overlay they build. Pure: no network, no inode numbers, no clocks.

use serde::{Deserialize, Serialize};
use std::collections::btree_map::Entry as Slot;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;

pub const FORMAT: &str = "cofferfs-journal";
/// The latest version this code reads and writes: 2 adds `special` and
/// `xattr` records, and hard links (`link` in a record's attributes), and
/// their shapes in checkpoints.
pub const VERSION: u32 = 2;
/// The version written when nothing of a later one is in a batch or
/// checkpoint: mounts of cofferfs before version 2 keep reading and writing
/// such a coffer. They turn read-only at the first version-2 object instead of
/// skipping its records, since a checkpoint they wrote would drop them for good.
pub const BASE_VERSION: u32 = 1;
pub const JOURNAL_PREFIX: &str = ".cofferfs/journal/";
pub const CHECKPOINT_PREFIX: &str = ".cofferfs/checkpoint/";
pub const DATA_PREFIX: &str = ".cofferfs/data/";

/// `[seconds, nanoseconds]` since the Unix epoch. Nanoseconds are below a
/// second (more reads as 999,999,999), which leaves `Option<Timestamp>` room
/// for its tag: 16 bytes, not 24, three times in every recorded entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Timestamp {
    secs: i64,
    /// Nanoseconds + 1.
    nanos: std::num::NonZeroU32,
}

impl Timestamp {
    pub fn new(secs: i64, nanos: u32) -> Timestamp {
        let n = nanos.min(999_999_999) + 1;
        Timestamp {
            secs,
            nanos: std::num::NonZeroU32::new(n).unwrap_or(std::num::NonZeroU32::MIN),
        }
    }

    pub fn secs(self) -> i64 {
        self.secs
    }

    pub fn nanos(self) -> u32 {
        self.nanos.get() - 1
    }
}

impl From<(i64, u32)> for Timestamp {
    fn from((secs, nanos): (i64, u32)) -> Timestamp {
        Timestamp::new(secs, nanos)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (self.secs(), self.nanos()).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        <(i64, u32)>::deserialize(d).map(Timestamp::from)
    }
}

/// Attributes a record may set; `None` keeps what was there.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attrs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime: Option<Timestamp>,
    /// When the entry's data or attributes last changed (stat's ctime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctime: Option<Timestamp>,
    /// Last access as set by `touch -a`/utimensat; reads never set it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub atime: Option<Timestamp>,
    /// The file's identity when it has hard links (version 2): every path
    /// with the same `link` is one file. A record that shapes a path states
    /// it (absent: a file of its own); attributes, xattrs and new versions
    /// recorded at any of its paths apply to all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<u64>,
}

impl Attrs {
    /// `self` with every field `newer` sets replaced.
    pub fn merged(self, newer: Attrs) -> Attrs {
        Attrs {
            mode: newer.mode.or(self.mode),
            uid: newer.uid.or(self.uid),
            gid: newer.gid.or(self.gid),
            mtime: newer.mtime.or(self.mtime),
            ctime: newer.ctime.or(self.ctime),
            atime: newer.atime.or(self.atime),
            link: newer.link.or(self.link),
        }
    }
}

/// One journal record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Record {
    Attr {
        path: String,
        #[serde(flatten)]
        attrs: Attrs,
    },
    Mkdir {
        path: String,
        #[serde(flatten)]
        attrs: Attrs,
    },
    File {
        path: String,
        #[serde(flatten)]
        attrs: Attrs,
    },
    Symlink {
        path: String,
        target: String,
        #[serde(flatten)]
        attrs: Attrs,
    },
    Bind {
        path: String,
        key: String,
        size: u64,
        etag: String,
        #[serde(flatten)]
        attrs: Attrs,
    },
    Hide {
        path: String,
    },
    /// A FIFO, socket or device node (version 2).
    Special {
        path: String,
        #[serde(rename = "type")]
        special: SpecialKind,
        /// Devices: the number as Linux encodes it in 32 bits.
        #[serde(default, skip_serializing_if = "is_zero")]
        rdev: u32,
        #[serde(flatten)]
        attrs: Attrs,
    },
    /// Sets extended attribute `name` of `path` to `value` (lowercase hex of
    /// its bytes); without `value`, removes it (version 2).
    Xattr {
        path: String,
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        value: Option<String>,
    },
    /// A record of a later form of this version: skipped on replay.
    #[serde(other)]
    Unknown,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The kinds of special file a `special` record makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpecialKind {
    Fifo,
    Socket,
    Char,
    Block,
}

impl Record {
    /// The path the record is about (empty for an unknown record).
    pub fn path(&self) -> &str {
        match self {
            Record::Attr { path, .. }
            | Record::Mkdir { path, .. }
            | Record::File { path, .. }
            | Record::Symlink { path, .. }
            | Record::Bind { path, .. }
            | Record::Hide { path }
            | Record::Special { path, .. }
            | Record::Xattr { path, .. } => path,
            Record::Unknown => "",
        }
    }

    /// Whether a mount of a version-1 cofferfs must not read this record:
    /// it would skip it, and a checkpoint it wrote would lose it for good.
    pub fn needs_version_2(&self) -> bool {
        match self {
            Record::Special { .. } | Record::Xattr { .. } => true,
            Record::Attr { attrs, .. }
            | Record::Mkdir { attrs, .. }
            | Record::File { attrs, .. }
            | Record::Symlink { attrs, .. }
            | Record::Bind { attrs, .. } => attrs.link.is_some(),
            Record::Hide { .. } | Record::Unknown => false,
        }
    }
}

/// One batch object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    pub format: String,
    pub version: u32,
    pub mount: String,
    pub seq: u64,
    pub records: Vec<Record>,
    /// Who stored the batch (`cofferfs log`). Optional in every version:
    /// batches before it have none, and mounts before it ignore it as they
    /// ignore any field they do not know.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writer: Option<Writer>,
}

/// The writer of a batch: the machine, the user the mount runs as, and the
/// cofferfs release (the mount's id is the batch's `mount`). Fields a reader
/// does not know are ignored; absent ones read as empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Writer {
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default)]
    pub version: String,
}

/// Why a batch or checkpoint cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JournalError {
    #[error("journal object {key:?} is not JSON cofferfs understands: {detail}")]
    Unreadable { key: String, detail: String },
    /// Written by a later cofferfs: readable only by it.
    #[error("journal object {key:?} has format version {version}; this cofferfs reads versions up to {VERSION}")]
    Version { key: String, version: u64 },
}

/// The fields every version keeps: a later version may change everything
/// else, and must be told apart from a damaged object.
#[derive(Deserialize)]
struct Header {
    format: String,
    version: u64,
}

/// A batch or checkpoint as read: its own format name and version.
trait Versioned {
    fn header(&self) -> (&str, u64);
}

impl Versioned for Batch {
    fn header(&self) -> (&str, u64) {
        (&self.format, u64::from(self.version))
    }
}

impl Versioned for Checkpoint {
    fn header(&self) -> (&str, u64) {
        (&self.format, u64::from(self.version))
    }
}

/// Reads `bytes` as a `T` of `format`, judged by its format name and version
/// before anything else. One pass when the whole reads (its header fields
/// then decide); only when it does not is the header read alone, to tell a
/// later version, which may reshape the rest, from a damaged object.
fn decode_versioned<T: serde::de::DeserializeOwned + Versioned>(
    key: &str,
    bytes: &[u8],
    format: &str,
) -> Result<T, JournalError> {
    let unreadable = |detail: String| JournalError::Unreadable {
        key: key.into(),
        detail,
    };
    let check = |f: &str, version: u64| {
        if f != format {
            return Err(unreadable(format!("format {f:?}")));
        }
        if version > u64::from(VERSION) {
            return Err(JournalError::Version {
                key: key.into(),
                version,
            });
        }
        if version < u64::from(BASE_VERSION) {
            return Err(unreadable(format!("version {version}")));
        }
        Ok(())
    };
    match serde_json::from_slice::<T>(bytes) {
        Ok(whole) => {
            let (f, version) = whole.header();
            check(f, version)?;
            Ok(whole)
        }
        Err(e) => {
            let h: Header = serde_json::from_slice(bytes).map_err(|e| unreadable(e.to_string()))?;
            check(&h.format, h.version)?;
            Err(unreadable(e.to_string()))
        }
    }
}

impl Batch {
    /// A batch of the lowest version that holds `records`.
    pub fn new(mount: &str, seq: u64, records: Vec<Record>) -> Batch {
        let later = records.iter().any(Record::needs_version_2);
        Batch {
            format: FORMAT.into(),
            version: if later { VERSION } else { BASE_VERSION },
            mount: mount.into(),
            seq,
            records,
            writer: None,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain data with string keys cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(key: &str, bytes: &[u8]) -> Result<Batch, JournalError> {
        decode_versioned(key, bytes, FORMAT)
    }
}

pub const CHECKPOINT_FORMAT: &str = "cofferfs-checkpoint";

/// The whole overlay as of batch `upto` (inclusive): replay starts here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub format: String,
    pub version: u32,
    pub upto: String,
    pub overlay: Overlay,
}

impl Checkpoint {
    /// A checkpoint of the lowest version that holds `overlay`.
    pub fn new(upto: &str, overlay: Overlay) -> Checkpoint {
        Checkpoint {
            format: CHECKPOINT_FORMAT.into(),
            version: if overlay.needs_version_2() {
                VERSION
            } else {
                BASE_VERSION
            },
            upto: upto.into(),
            overlay,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        Checkpoint::encode_of(&self.upto, &self.overlay)
    }

    /// `Checkpoint::new(upto, overlay).encode()` without copying `overlay`.
    pub fn encode_of(upto: &str, overlay: &Overlay) -> Vec<u8> {
        #[derive(Serialize)]
        struct Borrowed<'a> {
            format: &'a str,
            version: u32,
            upto: &'a str,
            overlay: &'a Overlay,
        }
        let version = if overlay.needs_version_2() {
            VERSION
        } else {
            BASE_VERSION
        };
        serde_json::to_vec(&Borrowed {
            format: CHECKPOINT_FORMAT,
            version,
            upto,
            overlay,
        })
        .unwrap_or_default()
    }

    pub fn decode(key: &str, bytes: &[u8]) -> Result<Checkpoint, JournalError> {
        decode_versioned(key, bytes, CHECKPOINT_FORMAT)
    }
}

/// The key of a checkpoint covering batches up to `upto`: checkpoints sort as
/// their batches do.
pub fn checkpoint_key(upto: &str, mount: &str) -> String {
    let stem = upto
        .strip_prefix(JOURNAL_PREFIX)
        .and_then(|r| r.strip_suffix(".json"))
        .unwrap_or(upto);
    format!("{CHECKPOINT_PREFIX}{stem}-{mount}.json")
}

/// The key of a batch: sorts by time, then mount, then sequence.
pub fn batch_key(micros: u64, mount: &str, seq: u64) -> String {
    format!("{JOURNAL_PREFIX}{micros:020}-{mount}-{seq:010}.json")
}

/// What the overlay says a path is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Shape {
    Dir,
    /// An empty regular file.
    Empty,
    Symlink {
        target: String,
    },
    /// A regular file with the bytes of `key`.
    Object {
        key: String,
        size: u64,
        etag: String,
    },
    /// A FIFO, socket or device node (version 2).
    Special {
        #[serde(rename = "type")]
        special: SpecialKind,
        #[serde(default, skip_serializing_if = "is_zero")]
        rdev: u32,
    },
    /// Attributes only: the path's own object (or implied directory) gives the kind.
    AttrsOnly,
}

/// Extended attributes: name → value in lowercase hex.
pub type Xattrs = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub shape: Shape,
    pub attrs: Attrs,
    /// Extended attributes (version 2); they stay through a new shape at the
    /// path (an overwrite) and go with a `hide`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub xattrs: Xattrs,
}

/// Paths the journal speaks of, and which object-derived paths it hides.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(from = "OverlayData")]
pub struct Overlay {
    entries: BTreeMap<String, Entry>,
    hidden: std::collections::BTreeSet<String>,
    /// The paths of each hard-linked file (`Attrs::link`), from `entries`.
    members: HashMap<u64, BTreeSet<String>>,
}

/// What a checkpoint stores of an overlay; `members` follows from it.
#[derive(Serialize, Deserialize)]
struct OverlayData {
    entries: BTreeMap<String, Entry>,
    hidden: BTreeSet<String>,
}

impl From<OverlayData> for Overlay {
    fn from(d: OverlayData) -> Overlay {
        let mut members: HashMap<u64, BTreeSet<String>> = HashMap::new();
        for (p, e) in &d.entries {
            if let Some(g) = e.attrs.link {
                members.entry(g).or_default().insert(p.clone());
            }
        }
        Overlay {
            entries: d.entries,
            hidden: d.hidden,
            members,
        }
    }
}

/// `OverlayData` by reference: a checkpoint is encoded without a copy.
#[derive(Serialize)]
struct OverlayRef<'a> {
    entries: &'a BTreeMap<String, Entry>,
    hidden: &'a BTreeSet<String>,
}

impl Serialize for Overlay {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        OverlayRef {
            entries: &self.entries,
            hidden: &self.hidden,
        }
        .serialize(s)
    }
}

impl PartialEq for Overlay {
    fn eq(&self, other: &Overlay) -> bool {
        self.entries == other.entries && self.hidden == other.hidden
    }
}

fn under(path: &str, prefix: &str) -> bool {
    path == prefix
        || (path.len() > prefix.len()
            && path.starts_with(prefix)
            && path.as_bytes()[prefix.len()] == b'/')
}

impl Overlay {
    /// Replays batches; the caller passes them in key order.
    pub fn replay<'a>(batches: impl IntoIterator<Item = &'a Batch>) -> Overlay {
        let mut o = Overlay::default();
        for b in batches {
            for r in &b.records {
                o.apply(r);
            }
        }
        o
    }

    /// Applies one record (see `apply_owned`; this copies its strings).
    pub fn apply(&mut self, r: &Record) {
        self.apply_owned(r.clone());
    }

    /// Applies one record, moving its strings into the overlay: replay of
    /// fetched batches copies nothing. A record costs one lookup of its path
    /// in the ordered map (found or made there); hard links, whose every name
    /// gets the entry, and hides, which remove a subtree, cost more.
    pub fn apply_owned(&mut self, r: Record) {
        let (path, shape, attrs, mkdir) = match r {
            Record::Attr { path, attrs } => {
                match self.entries.entry(path) {
                    Slot::Occupied(mut o) => {
                        let e = o.get_mut();
                        // Attributes never change which file a path names.
                        let link = e.attrs.link;
                        e.attrs = e.attrs.merged(attrs);
                        e.attrs.link = link;
                        if link.is_some() {
                            let path = o.key().clone();
                            self.share(&path);
                        }
                    }
                    Slot::Vacant(v) => {
                        v.insert(Entry {
                            shape: Shape::AttrsOnly,
                            attrs: Attrs {
                                link: None,
                                ..attrs
                            },
                            xattrs: Xattrs::new(),
                        });
                    }
                }
                return;
            }
            Record::Xattr { path, name, value } => {
                let mut o = match self.entries.entry(path) {
                    Slot::Occupied(o) => o,
                    Slot::Vacant(slot) => {
                        // Made even by a removal, as an `attr` makes one.
                        let xattrs = value.map(|v| (name, v)).into_iter().collect();
                        slot.insert(Entry {
                            shape: Shape::AttrsOnly,
                            attrs: Attrs::default(),
                            xattrs,
                        });
                        return;
                    }
                };
                let e = o.get_mut();
                match value {
                    Some(v) => e.xattrs.insert(name, v),
                    None => e.xattrs.remove(&name),
                };
                if e.attrs.link.is_some() {
                    let path = o.key().clone();
                    self.share(&path);
                }
                return;
            }
            Record::Hide { path } => {
                let doomed: Vec<String> = self
                    .entries
                    .range::<str, _>((Bound::Included(path.as_str()), Bound::Unbounded))
                    .take_while(|(k, _)| k.starts_with(path.as_str()))
                    .filter(|(k, _)| under(k, &path))
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in doomed {
                    if let Some(g) = self.entries.remove(&k).and_then(|e| e.attrs.link) {
                        self.leave(g, &k);
                    }
                }
                self.hidden.insert(path);
                return;
            }
            Record::Unknown => {
                log::warn!("journal: skipping a record of a later format");
                return;
            }
            Record::Mkdir { path, attrs } => (path, Shape::Dir, attrs, true),
            Record::File { path, attrs } => (path, Shape::Empty, attrs, false),
            Record::Symlink {
                path,
                target,
                attrs,
            } => (path, Shape::Symlink { target }, attrs, false),
            Record::Bind {
                path,
                key,
                size,
                etag,
                attrs,
            } => (path, Shape::Object { key, size, etag }, attrs, false),
            Record::Special {
                path,
                special,
                rdev,
                attrs,
            } => (path, Shape::Special { special, rdev }, attrs, false),
        };
        if attrs.link.is_none() {
            // No hard link on either side (most records): in place.
            match self.entries.entry(path) {
                Slot::Occupied(mut o) => match o.get().attrs.link {
                    None => {
                        let e = o.get_mut();
                        e.shape = shape;
                        e.attrs = e.attrs.merged(attrs);
                    }
                    Some(g) => {
                        // The path leaves a hard-linked file (a rename over
                        // it): it takes nothing of that file's attributes.
                        *o.get_mut() = Entry {
                            shape,
                            attrs,
                            xattrs: Xattrs::new(),
                        };
                        let path = o.key().clone();
                        self.leave(g, &path);
                    }
                },
                Slot::Vacant(v) => {
                    v.insert(Entry {
                        shape,
                        attrs,
                        xattrs: Xattrs::new(),
                    });
                }
            }
            return;
        }
        self.apply_linked(path, shape, attrs, mkdir);
    }

    /// A shape record that names a hard-linked file (`attrs.link` is set).
    fn apply_linked(&mut self, path: String, shape: Shape, attrs: Attrs, mkdir: bool) {
        // A new shape replaces what was there, keeping attributes not restated
        // and extended attributes (an overwrite keeps them). It says which
        // file the path names: a path that leaves a hard-linked file (a rename
        // over it) takes nothing of that file's attributes.
        let (old, xattrs) = match self.entries.remove(&path) {
            Some(e) if e.attrs.link.is_some() && e.attrs.link != attrs.link => {
                if let Some(g) = e.attrs.link {
                    self.leave(g, &path);
                }
                Default::default()
            }
            Some(e) => (e.attrs, e.xattrs),
            None => Default::default(),
        };
        let mut attrs = old.merged(attrs);
        if mkdir {
            attrs.link = None;
        }
        // A new name of a hard-linked file takes its extended attributes.
        let mut xattrs = xattrs;
        if let Some(g) = attrs.link {
            let names = self.members.entry(g).or_default();
            let other = names.iter().find(|p| **p != path);
            if let Some(e) = other.and_then(|o| self.entries.get(o)) {
                xattrs = e.xattrs.clone();
            }
            names.insert(path.clone());
        }
        self.entries.insert(
            path.clone(),
            Entry {
                shape,
                attrs,
                xattrs,
            },
        );
        self.share(&path);
    }

    /// Copies `path`'s entry to every other path of its hard-linked file.
    fn share(&mut self, path: &str) {
        let Some(e) = self
            .entries
            .get(path)
            .filter(|e| e.attrs.link.is_some())
            .cloned()
        else {
            return;
        };
        let Some(others) = e.attrs.link.and_then(|g| self.members.get(&g)) else {
            return;
        };
        let others: Vec<String> = others.iter().filter(|p| *p != path).cloned().collect();
        for p in others {
            self.entries.insert(p, e.clone());
        }
    }

    /// `path` no longer names hard-linked file `g`.
    fn leave(&mut self, g: u64, path: &str) {
        if let Some(m) = self.members.get_mut(&g) {
            m.remove(path);
            if m.is_empty() {
                self.members.remove(&g);
            }
        }
    }

    /// How many paths name the hard-linked file `g`.
    pub fn links(&self, g: u64) -> usize {
        self.members.get(&g).map_or(0, BTreeSet::len)
    }

    /// What the journal says of `path`, if anything.
    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.entries.get(path)
    }

    /// Whether the object at key `key` (shown at the same path) is hidden: some
    /// hide covers it and the overlay does not name the path again.
    pub fn hides_object(&self, key: &str) -> bool {
        if self
            .entries
            .get(key)
            .is_some_and(|e| e.shape != Shape::AttrsOnly)
        {
            return false;
        }
        let mut p = key;
        loop {
            if self.hidden.contains(p) {
                return true;
            }
            match p.rfind('/') {
                Some(i) => p = &p[..i],
                None => return false,
            }
        }
    }

    /// Every path the overlay makes visible, with its entry, in path order.
    pub fn entries(&self) -> impl Iterator<Item = (&String, &Entry)> {
        self.entries
            .iter()
            .filter(|(_, e)| e.shape != Shape::AttrsOnly)
    }

    /// `entries` whose path starts with `prefix` (a directory's listing
    /// prefix, `dir/`, or "" for all): a range of the ordered map, not a scan.
    pub fn entries_under<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = (&'a String, &'a Entry)> + 'a {
        self.entries
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(move |(k, _)| k.starts_with(prefix))
            .filter(|(_, e)| e.shape != Shape::AttrsOnly)
    }

    /// The names directly beneath `prefix` (a directory's listing prefix,
    /// `dir/`, or "" for the root) that the overlay shows, in order, each
    /// with the entry it names itself (if any) and whether the overlay shows
    /// anything beneath it. Past a child's first path beneath it the rest
    /// of its subtree is skipped, not scanned: a directory's cost follows its
    /// children, not the journal paths under it.
    pub fn children_under<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = (&'a str, Option<&'a Entry>, bool)> + 'a {
        use std::ops::Bound;
        let mut from: Bound<String> = Bound::Included(prefix.to_string());
        std::iter::from_fn(move || loop {
            let (k, _) = self
                .entries
                .range::<str, _>((from.as_ref().map(String::as_str), Bound::Unbounded))
                .take_while(|(k, _)| k.starts_with(prefix))
                .find(|(_, e)| e.shape != Shape::AttrsOnly)?;
            let rest = &k[prefix.len()..];
            let Some(slash) = rest.find('/') else {
                // The child's own entry: its subtree comes later in order.
                from = Bound::Excluded(k.clone());
                let below =
                    self.get(k).is_some_and(|e| e.shape != Shape::Dir) && self.has_entries_under(k);
                return Some((rest, self.get(k), below));
            };
            let path = &k[..prefix.len() + slash];
            // Next: the first path after every one beneath `path/` ('0'
            // follows '/').
            from = Bound::Included(format!("{path}0"));
            let named = self
                .entries
                .get(path)
                .is_some_and(|e| e.shape != Shape::AttrsOnly);
            if !named {
                return Some((&rest[..slash], None, true));
            }
        })
    }

    /// Whether the overlay shows anything beneath `path/`.
    pub fn has_entries_under(&self, path: &str) -> bool {
        let prefix = format!("{path}/");
        self.entries
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .any(|(_, e)| e.shape != Shape::AttrsOnly)
    }

    /// Attributes recorded for `path` (of any shape).
    pub fn attrs(&self, path: &str) -> Option<Attrs> {
        self.entries.get(path).map(|e| e.attrs)
    }

    /// Extended attributes recorded for `path`.
    pub fn xattrs(&self, path: &str) -> Option<&Xattrs> {
        self.entries.get(path).map(|e| &e.xattrs)
    }

    /// Every path at or beneath `path` with extended attributes, and them.
    pub fn xattrs_under(&self, path: &str) -> Vec<(&String, &Xattrs)> {
        self.entries
            .range(path.to_string()..)
            .take_while(|(k, _)| k.starts_with(path))
            .filter(|(k, e)| under(k, path) && !e.xattrs.is_empty())
            .map(|(k, e)| (k, &e.xattrs))
            .collect()
    }

    /// Whether a version-1 reader would lose something of this overlay.
    pub fn needs_version_2(&self) -> bool {
        self.entries.values().any(|e| {
            matches!(e.shape, Shape::Special { .. })
                || !e.xattrs.is_empty()
                || e.attrs.link.is_some()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn attrs(mode: u32) -> Attrs {
        Attrs {
            mode: Some(mode),
            ..Attrs::default()
        }
    }

    #[test]
    fn a_batch_round_trips_and_reads_the_documented_example() {
        let doc = r#"{"format":"cofferfs-journal","version":1,"mount":"9f2c4e1a7b3d5f60","seq":7,
          "records":[
            {"op":"mkdir","path":"photos/2026","mode":493,"uid":1000,"gid":1000,"mtime":[1764000000,123456789]},
            {"op":"attr","path":"photos/2026/a.jpg","mode":420,"mtime":[1764000001,5]},
            {"op":"file","path":"photos/2026/empty.txt","mode":384},
            {"op":"symlink","path":"latest","target":"photos/2026"},
            {"op":"bind","path":"notes.txt","key":".cofferfs/data/x","size":12,"etag":"6f5902ac237024bdd0c176cb93063dc4"},
            {"op":"hide","path":"old"},
            {"op":"someday","path":"x"}
          ]}"#;
        let b = Batch::decode("k", doc.as_bytes()).expect("decode");
        assert_eq!(b.records.len(), 7);
        assert_eq!(
            b.records[0],
            Record::Mkdir {
                path: "photos/2026".into(),
                attrs: Attrs {
                    mode: Some(0o755),
                    uid: Some(1000),
                    gid: Some(1000),
                    mtime: Some((1764000000, 123456789).into()),
                    ctime: None,
                    atime: None,
                    link: None,
                },
            }
        );
        assert_eq!(b.records[6], Record::Unknown);
        let known = Batch::new("m", 1, b.records[..6].to_vec());
        assert_eq!(Batch::decode("k", &known.encode()), Ok(known.clone()));
        let cp = Checkpoint::new("k", Overlay::replay([&known]));
        assert_eq!(Checkpoint::decode("c", &cp.encode()), Ok(cp));
    }

    #[test]
    fn atime_is_kept_apart_and_fields_unknown_to_a_mount_are_ignored() {
        let r = Record::Attr {
            path: "f".into(),
            attrs: Attrs {
                atime: Some((1, 2).into()),
                ..Attrs::default()
            },
        };
        let b = Batch::new("m", 1, vec![r.clone()]);
        let text = String::from_utf8(b.encode()).expect("utf-8");
        assert!(text.contains(r#""atime":[1,2]"#), "{text}");
        assert_eq!(Batch::decode("k", text.as_bytes()), Ok(b));
        // A field a later cofferfs adds (as `atime` was added) is skipped by
        // a mount that does not know it, in batches and checkpoints alike.
        let doc = br#"{"format":"cofferfs-journal","version":1,"mount":"m","seq":1,
          "records":[{"op":"attr","path":"f","mode":420,"someday":[3,4]}]}"#;
        let b = Batch::decode("k", doc).expect("decode");
        assert_eq!(
            b.records,
            [Record::Attr {
                path: "f".into(),
                attrs: attrs(0o644)
            }]
        );
        let cp = br#"{"format":"cofferfs-checkpoint","version":1,"upto":"k","overlay":{
          "entries":{"f":{"shape":{"kind":"empty"},"attrs":{"mode":420,"someday":1}}},
          "hidden":[]}}"#;
        let cp = Checkpoint::decode("c", cp).expect("decode");
        assert_eq!(cp.overlay.attrs("f"), Some(attrs(0o644)));
    }

    #[test]
    fn a_batchs_writer_is_optional_and_unknown_batch_fields_are_ignored() {
        let mut b = Batch::new("m", 1, vec![Record::Hide { path: "x".into() }]);
        b.writer = Some(Writer {
            host: "h".into(),
            user: "u".into(),
            uid: Some(7),
            version: "0.1.0".into(),
        });
        assert_eq!(b.version, BASE_VERSION, "a writer needs no later version");
        let text = String::from_utf8(b.encode()).expect("utf-8");
        assert!(
            text.contains(r#""writer":{"host":"h","user":"u","uid":7,"version":"0.1.0"}"#),
            "{text}"
        );
        assert_eq!(Batch::decode("k", text.as_bytes()), Ok(b));
        // Written before the writer existed: none.
        let old = br#"{"format":"cofferfs-journal","version":1,"mount":"m","seq":1,"records":[]}"#;
        assert_eq!(Batch::decode("k", old).expect("decode").writer, None);
        // A batch field a mount does not know (as `writer` is to mounts before
        // it) is skipped, as are a writer's unknown fields.
        let later = br#"{"format":"cofferfs-journal","version":1,"mount":"m","seq":1,"records":[],
          "someday":{"a":1},"writer":{"host":"h","pid":3}}"#;
        let b = Batch::decode("k", later).expect("decode");
        assert_eq!(
            b.writer.map(|w| (w.host, w.user, w.uid)),
            Some(("h".into(), String::new(), None))
        );
    }

    #[test]
    fn a_later_version_is_refused_not_misread() {
        let doc = br#"{"format":"cofferfs-journal","version":3,"mount":"m","seq":1,"records":[]}"#;
        assert!(matches!(
            Batch::decode("k", doc),
            Err(JournalError::Version { version: 3, .. })
        ));
        // A later version may drop or reshape every other field: still "newer".
        let reshaped = br#"{"format":"cofferfs-journal","version":3,"ops":{"a":1}}"#;
        assert!(matches!(
            Batch::decode("k", reshaped),
            Err(JournalError::Version { version: 3, .. })
        ));
        let cp = br#"{"format":"cofferfs-checkpoint","version":3,"tree":[]}"#;
        assert!(matches!(
            Checkpoint::decode("c", cp),
            Err(JournalError::Version { version: 3, .. })
        ));
        for damaged in [
            &b"not json"[..],
            br#"{"format":"cofferfs-journal","version":1,"records":7}"#,
            br#"{"format":"something-else","version":9}"#,
            br#"{"format":"cofferfs-journal","version":0,"mount":"m","seq":1,"records":[]}"#,
        ] {
            assert!(
                matches!(
                    Batch::decode("k", damaged),
                    Err(JournalError::Unreadable { .. })
                ),
                "{}",
                String::from_utf8_lossy(damaged)
            );
        }
    }

    #[test]
    fn batch_keys_sort_by_time_then_mount_then_sequence() {
        let a = batch_key(999, "ffff000000000000", 9);
        let b = batch_key(1000, "0000000000000000", 1);
        let c = batch_key(1000, "0000000000000000", 2);
        let d = batch_key(1000, "0000000000000001", 0);
        assert!(a < b && b < c && c < d, "{a} {b} {c} {d}");
        assert!(a.starts_with(JOURNAL_PREFIX));
    }

    #[test]
    fn rename_over_an_existing_path_binds_the_new_name_and_hides_the_old() {
        // rsync: write .f.XXXX, then rename it over f.
        let mut o = Overlay::default();
        o.apply(&Record::Attr {
            path: ".f.tmp".into(),
            attrs: attrs(0o600),
        });
        o.apply(&Record::Bind {
            path: "f".into(),
            key: ".f.tmp".into(),
            size: 3,
            etag: "e".into(),
            attrs: attrs(0o600),
        });
        o.apply(&Record::Hide {
            path: ".f.tmp".into(),
        });
        assert!(o.hides_object(".f.tmp"));
        assert!(!o.hides_object("f"));
        let e = o.get("f").expect("f");
        assert_eq!(e.attrs.mode, Some(0o600));
        assert!(matches!(&e.shape, Shape::Object { key, .. } if key == ".f.tmp"));
    }

    #[test]
    fn a_timestamp_is_seconds_and_nanoseconds_in_json_and_16_bytes_as_an_option() {
        let t = Timestamp::new(-5, 7);
        assert_eq!(serde_json::to_string(&t).expect("json"), "[-5,7]");
        let back: Timestamp = serde_json::from_str("[1764000000,999999999]").expect("read");
        assert_eq!((back.secs(), back.nanos()), (1764000000, 999_999_999));
        // Out of range nanoseconds (no writer makes them) read as the most.
        let over: Timestamp = serde_json::from_str("[1,4294967295]").expect("read");
        assert_eq!(over.nanos(), 999_999_999);
        assert_eq!(std::mem::size_of::<Option<Timestamp>>(), 16);
    }

    #[test]
    fn children_under_a_prefix_name_each_child_once_and_skip_subtrees() {
        let mut o = Overlay::default();
        let empty = |p: &str| Record::File {
            path: p.into(),
            attrs: Attrs::default(),
        };
        // `d` is a file with paths beneath it too; `e` has only paths
        // beneath it; `f` only attributes beneath it; `d-x` and `d.y` sort
        // between `d` and `d/…`.
        for r in [
            empty("top/d"),
            empty("top/d-x"),
            empty("top/d.y"),
            empty("top/d/1"),
            empty("top/d/2/3"),
            empty("top/e/1"),
            empty("top/e/2"),
            empty("top/e0"),
            Record::Mkdir {
                path: "top/g".into(),
                attrs: Attrs::default(),
            },
            empty("top/g/1"),
            empty("other"),
        ] {
            o.apply(&r);
        }
        o.apply(&Record::Attr {
            path: "top/f/1".into(),
            attrs: attrs(0o600),
        });
        let kids: Vec<(&str, Option<bool>, bool)> = o
            .children_under("top/")
            .map(|(n, e, below)| (n, e.map(|e| e.shape == Shape::Dir), below))
            .collect();
        assert_eq!(
            kids,
            [
                ("d", Some(false), true),
                ("d-x", Some(false), false),
                ("d.y", Some(false), false),
                ("e", None, true),
                ("e0", Some(false), false),
                ("g", Some(true), false),
            ]
        );
        let root: Vec<&str> = o.children_under("").map(|(n, _, _)| n).collect();
        assert_eq!(root, ["other", "top"]);
    }

    #[test]
    fn entries_under_a_prefix_are_a_range_of_the_ordered_map() {
        let mut o = Overlay::default();
        for p in ["a", "a-b", "a/x", "a/y/z", "ab", "b"] {
            o.apply(&Record::Mkdir {
                path: p.into(),
                attrs: Attrs::default(),
            });
        }
        o.apply(&Record::Attr {
            path: "a/only-attrs".into(),
            attrs: attrs(0o600),
        });
        let under: Vec<&str> = o.entries_under("a/").map(|(p, _)| p.as_str()).collect();
        assert_eq!(under, ["a/x", "a/y/z"]);
        assert_eq!(o.entries_under("").count(), o.entries().count());
        assert_eq!(o.entries_under("c/").count(), 0);
        // A checkpoint encoded from a borrowed overlay is the one `new` makes.
        let by_ref = Checkpoint::encode_of("k", &o);
        assert_eq!(by_ref, Checkpoint::new("k", o.clone()).encode());
        let back = Checkpoint::decode("k", &by_ref).expect("decode");
        assert_eq!(back.overlay, o);
    }

    #[test]
    fn a_hide_covers_the_subtree_until_something_is_recorded_there_again() {
        let mut o = Overlay::default();
        o.apply(&Record::Mkdir {
            path: "d/e".into(),
            attrs: Attrs::default(),
        });
        o.apply(&Record::Hide { path: "d".into() });
        assert!(o.hides_object("d/x"));
        assert!(o.get("d/e").is_none());
        assert!(!o.hides_object("dd/x"), "a sibling with a longer name");
        o.apply(&Record::Bind {
            path: "d/new".into(),
            key: "d/new".into(),
            size: 1,
            etag: "e".into(),
            attrs: Attrs::default(),
        });
        assert!(!o.hides_object("d/new"));
        assert!(o.hides_object("d/old"));
    }

    #[test]
    fn hard_linked_paths_share_versions_attributes_and_xattrs_until_one_leaves() {
        let linked = Attrs {
            link: Some(7),
            ..Attrs::default()
        };
        let bind = |path: &str, key: &str, attrs: Attrs| Record::Bind {
            path: path.into(),
            key: key.into(),
            size: 1,
            etag: "e".into(),
            attrs,
        };
        let key_of = |o: &Overlay, p: &str| match o.get(p).map(|e| &e.shape) {
            Some(Shape::Object { key, .. }) => key.clone(),
            other => panic!("{p}: {other:?}"),
        };
        let mut o = Overlay::default();
        o.apply(&bind("a", "k1", linked));
        o.apply(&Record::Xattr {
            path: "a".into(),
            name: "user.x".into(),
            value: Some("01".into()),
        });
        o.apply(&bind("d/b", "k1", linked));
        assert_eq!(o.links(7), 2);
        assert_eq!(
            o.xattrs("d/b")
                .and_then(|x| x.get("user.x"))
                .map(String::as_str),
            Some("01")
        );
        // A new version or a chmod through either name is the file's.
        o.apply(&bind("a", "k2", linked));
        o.apply(&Record::Attr {
            path: "d/b".into(),
            attrs: Attrs {
                mode: Some(0o600),
                ..Attrs::default()
            },
        });
        assert_eq!(key_of(&o, "d/b"), "k2");
        assert_eq!(o.attrs("a").and_then(|a| a.mode), Some(0o600));
        // A file renamed over one name takes it away from the others.
        o.apply(&bind("d/b", "k3", Attrs::default()));
        assert_eq!(
            (key_of(&o, "a"), key_of(&o, "d/b")),
            ("k2".into(), "k3".into())
        );
        assert_eq!(o.attrs("d/b").and_then(|a| a.mode), None);
        assert_eq!(o.links(7), 1);
        // Identity survives a checkpoint, which needs version 2.
        o.apply(&bind("c", "k2", linked));
        o.apply(&Record::Hide { path: "a".into() });
        let c = Checkpoint::new("u", o.clone());
        assert_eq!(c.version, VERSION);
        let back = Checkpoint::decode("k", &c.encode()).expect("decode");
        assert_eq!(back.overlay.links(7), 1);
        let mut back = back.overlay;
        back.apply(&bind("e", "k2", linked));
        back.apply(&bind("c", "k4", linked));
        assert_eq!(key_of(&back, "e"), "k4");
    }

    #[test]
    fn attributes_merge_field_by_field() {
        let mut o = Overlay::default();
        o.apply(&Record::File {
            path: "f".into(),
            attrs: Attrs {
                mode: Some(0o644),
                uid: Some(1),
                gid: Some(2),
                mtime: Some((5, 6).into()),
                ctime: None,
                atime: None,
                link: None,
            },
        });
        o.apply(&Record::Attr {
            path: "f".into(),
            attrs: Attrs {
                mtime: Some((7, 8).into()),
                ..Attrs::default()
            },
        });
        let e = o.get("f").expect("f");
        assert_eq!(e.shape, Shape::Empty);
        assert_eq!(
            e.attrs,
            Attrs {
                mode: Some(0o644),
                uid: Some(1),
                gid: Some(2),
                mtime: Some((7, 8).into()),
                ctime: None,
                atime: None,
                link: None,
            }
        );
    }

    #[test]
    fn special_and_xattr_records_read_as_documented_and_need_version_2() {
        // The example of docs/journal.md.
        let doc = r#"{"format":"cofferfs-journal","version":2,"mount":"9f2c4e1a7b3d5f60","seq":8,
         "records":[
          {"op":"special","path":"dev/null","type":"char","rdev":259,"mode":438,"mtime":[1764000003,0],"ctime":[1764000003,0]},
          {"op":"special","path":"run/pipe","type":"fifo","mode":420,"mtime":[1764000003,0],"ctime":[1764000003,0]},
          {"op":"xattr","path":"notes.txt","name":"user.origin","value":"00ff6869"},
          {"op":"xattr","path":"notes.txt","name":"user.old"}
         ]}"#;
        let b = Batch::decode("k", doc.as_bytes()).expect("decode");
        let t = Some((1764000003, 0).into());
        assert_eq!(
            b.records[0],
            Record::Special {
                path: "dev/null".into(),
                special: SpecialKind::Char,
                rdev: 259,
                attrs: Attrs {
                    mode: Some(0o666),
                    mtime: t,
                    ctime: t,
                    ..Attrs::default()
                },
            }
        );
        assert!(matches!(
            &b.records[1],
            Record::Special {
                special: SpecialKind::Fifo,
                rdev: 0,
                ..
            }
        ));
        assert_eq!(
            b.records[3],
            Record::Xattr {
                path: "notes.txt".into(),
                name: "user.old".into(),
                value: None,
            }
        );
        assert_eq!(Batch::new("m", 1, b.records.clone()).version, 2);
        assert_eq!(
            Batch::new("m", 1, vec![Record::Hide { path: "x".into() }]).version,
            1
        );
        let o = Overlay::replay([&b]);
        assert_eq!(Checkpoint::new("k", o.clone()).version, 2);
        assert_eq!(Checkpoint::new("k", Overlay::default()).version, 1);
        let cp = Checkpoint::new("k", o);
        assert_eq!(Checkpoint::decode("c", &cp.encode()), Ok(cp));
    }

    #[test]
    fn xattrs_stay_through_an_overwrite_and_go_with_a_hide() {
        let mut o = Overlay::default();
        let set = |v: Option<&str>| Record::Xattr {
            path: "f".into(),
            name: "user.a".into(),
            value: v.map(String::from),
        };
        o.apply(&set(Some("6869")));
        assert_eq!(o.get("f").map(|e| &e.shape), Some(&Shape::AttrsOnly));
        assert_eq!(o.entries().count(), 0, "xattrs alone show nothing");
        o.apply(&Record::Bind {
            path: "f".into(),
            key: ".cofferfs/data/1".into(),
            size: 1,
            etag: "e".into(),
            attrs: Attrs::default(),
        });
        assert_eq!(
            o.xattrs("f")
                .and_then(|x| x.get("user.a"))
                .map(String::as_str),
            Some("6869")
        );
        assert_eq!(o.xattrs_under("f").len(), 1);
        assert!(o.xattrs_under("g").is_empty() && o.xattrs_under("").is_empty());
        o.apply(&set(None));
        assert!(o.xattrs("f").is_some_and(|x| x.is_empty()));
        assert!(!o.needs_version_2());
        o.apply(&set(Some("")));
        assert!(o.needs_version_2());
        o.apply(&Record::Hide { path: "f".into() });
        assert!(o.xattrs("f").is_none());
    }

    /// `Overlay::apply` as it was before it worked in place: the reference
    /// the faster one must agree with.
    fn reference_apply(o: &mut Overlay, r: &Record) {
        let (path, shape, attrs) = match r {
            Record::Attr { path, attrs } => {
                let e = o.entries.entry(path.clone()).or_insert(Entry {
                    shape: Shape::AttrsOnly,
                    attrs: Attrs::default(),
                    xattrs: Xattrs::new(),
                });
                // Attributes never change which file a path names.
                let link = e.attrs.link;
                e.attrs = e.attrs.merged(*attrs);
                e.attrs.link = link;
                o.share(path);
                return;
            }
            Record::Xattr { path, name, value } => {
                let e = o.entries.entry(path.clone()).or_insert(Entry {
                    shape: Shape::AttrsOnly,
                    attrs: Attrs::default(),
                    xattrs: Xattrs::new(),
                });
                match value {
                    Some(v) => e.xattrs.insert(name.clone(), v.clone()),
                    None => e.xattrs.remove(name),
                };
                o.share(path);
                return;
            }
            Record::Hide { path } => {
                let doomed: Vec<String> = o
                    .entries
                    .range(path.clone()..)
                    .take_while(|(k, _)| k.starts_with(path.as_str()))
                    .filter(|(k, _)| under(k, path))
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in doomed {
                    if let Some(g) = o.entries.remove(&k).and_then(|e| e.attrs.link) {
                        o.leave(g, &k);
                    }
                }
                o.hidden.insert(path.clone());
                return;
            }
            Record::Unknown => {
                log::warn!("journal: skipping a record of a later format");
                return;
            }
            Record::Mkdir { path, attrs } => (path, Shape::Dir, attrs),
            Record::File { path, attrs } => (path, Shape::Empty, attrs),
            Record::Symlink {
                path,
                target,
                attrs,
            } => (
                path,
                Shape::Symlink {
                    target: target.clone(),
                },
                attrs,
            ),
            Record::Bind {
                path,
                key,
                size,
                etag,
                attrs,
            } => (
                path,
                Shape::Object {
                    key: key.clone(),
                    size: *size,
                    etag: etag.clone(),
                },
                attrs,
            ),
            Record::Special {
                path,
                special,
                rdev,
                attrs,
            } => (
                path,
                Shape::Special {
                    special: *special,
                    rdev: *rdev,
                },
                attrs,
            ),
        };
        // A new shape replaces what was there, keeping attributes not restated
        // and extended attributes (an overwrite keeps them). It says which
        // file the path names: a path that leaves a hard-linked file (a rename
        // over it) takes nothing of that file's attributes.
        let (old, xattrs) = match o.entries.remove(path) {
            Some(e) if e.attrs.link.is_some() && e.attrs.link != attrs.link => {
                if let Some(g) = e.attrs.link {
                    o.leave(g, path);
                }
                Default::default()
            }
            Some(e) => (e.attrs, e.xattrs),
            None => Default::default(),
        };
        let mut attrs = old.merged(*attrs);
        attrs.link = match r {
            Record::Mkdir { .. } => None,
            _ => attrs.link,
        };
        // A new name of a hard-linked file takes its extended attributes.
        let mut xattrs = xattrs;
        if let Some(g) = attrs.link {
            let names = o.members.entry(g).or_default();
            let other = names.iter().find(|p| *p != path);
            if let Some(e) = other.and_then(|p| o.entries.get(p)) {
                xattrs = e.xattrs.clone();
            }
            names.insert(path.clone());
        }
        o.entries.insert(
            path.clone(),
            Entry {
                shape,
                attrs,
                xattrs,
            },
        );
        o.share(path);
    }

    fn record() -> impl Strategy<Value = Record> {
        let path =
            prop::sample::select(vec!["a", "a/b", "a/b/c", "d", "d/e"]).prop_map(String::from);
        prop_oneof![
            (path.clone(), 0u32..0o777).prop_map(|(p, m)| Record::Attr {
                path: p,
                attrs: attrs(m)
            }),
            path.clone().prop_map(|p| Record::Mkdir {
                path: p,
                attrs: Attrs::default()
            }),
            path.clone().prop_map(|p| Record::File {
                path: p,
                attrs: Attrs::default()
            }),
            (path.clone(), 1u64..100).prop_map(|(p, s)| Record::Bind {
                key: format!("{DATA_PREFIX}{s}"),
                path: p,
                size: s,
                etag: "e".into(),
                attrs: Attrs::default()
            }),
            (path.clone(), 0u32..3).prop_map(|(p, r)| Record::Special {
                path: p,
                special: SpecialKind::Char,
                rdev: r,
                attrs: attrs(0o600)
            }),
            (path.clone(), prop::option::of("[0-9a-f]{0,4}")).prop_map(|(p, v)| Record::Xattr {
                path: p,
                name: "user.k".into(),
                value: v
            }),
            path.prop_map(|p| Record::Hide { path: p }),
        ]
    }

    /// `record()`, some of them naming hard-linked file 1 or 2.
    fn linked_record() -> impl Strategy<Value = Record> {
        (record(), prop::option::of(1u64..3)).prop_map(|(mut r, link)| {
            match &mut r {
                Record::Attr { attrs, .. }
                | Record::Mkdir { attrs, .. }
                | Record::File { attrs, .. }
                | Record::Symlink { attrs, .. }
                | Record::Bind { attrs, .. }
                | Record::Special { attrs, .. } => attrs.link = link,
                Record::Hide { .. } | Record::Xattr { .. } | Record::Unknown => {}
            }
            r
        })
    }

    proptest! {
        /// Every mount that reads the same batches in key order builds the same
        /// overlay, and a round trip through JSON changes nothing.
        #[test]
        fn replay_is_deterministic_and_survives_encoding(
            batches in prop::collection::vec(prop::collection::vec(record(), 0..8), 0..6)
        ) {
            let batches: Vec<Batch> = batches
                .into_iter()
                .enumerate()
                .map(|(i, r)| Batch::new("0123456789abcdef", i as u64, r))
                .collect();
            let decoded: Vec<Batch> = batches
                .iter()
                .map(|b| Batch::decode("k", &b.encode()).expect("decode"))
                .collect();
            prop_assert_eq!(Overlay::replay(&batches), Overlay::replay(&decoded));
            // Applying record by record equals replaying batch by batch.
            let mut one = Overlay::default();
            for r in batches.iter().flat_map(|b| &b.records) {
                one.apply(r);
            }
            prop_assert_eq!(one, Overlay::replay(&batches));
        }

        /// Applying in place (one lookup for most records) builds what the
        /// remove-and-insert reference built, hard links included.
        #[test]
        fn apply_in_place_agrees_with_the_reference(
            records in prop::collection::vec(linked_record(), 0..40)
        ) {
            let (mut fast, mut reference) = (Overlay::default(), Overlay::default());
            for r in &records {
                fast.apply(r);
                reference_apply(&mut reference, r);
                prop_assert_eq!(&fast.members, &reference.members);
            }
            prop_assert_eq!(fast, reference);
        }
    }
}
