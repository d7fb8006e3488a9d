//! `cofferfs versions COFFER/PATH`: every version ever bound to a path, oldest
//! first, and what ended each. A version is what the view showed at the path
//! (the path's own object, or what a journal record bound to it) from the
//! moment it appeared until something else took the path or it went: a new
//! version at the path (overwritten), a rename (renamed to X: the same bytes
//! bound elsewhere in the same batch), or a hide. Attribute changes are not
//! versions. Reads the whole journal; HEADs each version's object to mark the
//! expired ones.

use super::{format_micros, micros_of, write_err};
use crate::commands::CommandError;
use crate::fs::journal::history::{batch_micros, walk};
use crate::fs::journal::{Overlay, Record, Shape, Timestamp};
use crate::store::{ObjectMeta, ObjectStore};
use serde::Serialize;
use std::collections::HashMap;
use std::ops::ControlFlow;

/// What ended a version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "how", content = "to", rename_all = "lowercase")]
pub enum End {
    Current,
    Overwritten,
    Renamed(String),
    Hidden,
}

/// One version of a path.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Version {
    /// When it was bound (microseconds; the object's whole second for a
    /// path's own object); `None`: an own object that has expired, bound
    /// before the first batch that names it.
    pub since: Option<u64>,
    /// `file`, `empty`, `symlink`, `dir`, `fifo`, `socket`, `char`, `block`.
    pub kind: String,
    pub size: u64,
    pub etag: Option<String>,
    /// The object holding the bytes.
    pub key: Option<String>,
    /// A symlink's target.
    pub target: Option<String>,
    pub end: End,
    /// When it ended.
    pub until: Option<u64>,
    /// Its object is gone (expired by the coffer's lifecycle rule).
    pub expired: bool,
    /// The mount whose batch bound it (none for a path's own object).
    pub mount: Option<String>,
}

/// What the view shows at the path at one moment (versions compare by this).
#[derive(Debug, Clone, PartialEq)]
enum Now {
    Absent,
    Object {
        key: String,
        size: u64,
        etag: String,
    },
    Other {
        kind: String,
        target: Option<String>,
    },
}

/// The path's own object: `None` when it is not (or no longer) in the coffer.
struct Own {
    meta: Option<ObjectMeta>,
    /// Under the hypothesis that an own object existed though it is gone now.
    assumed: bool,
}

impl Own {
    fn there_at(&self, micros: u64) -> bool {
        match &self.meta {
            Some(m) => m.last_modified.is_none_or(|t| micros_of(t) <= micros),
            None => self.assumed,
        }
    }
}

fn now_at(o: &Overlay, path: &str, own: &Own, micros: u64) -> Now {
    match o.get(path).map(|e| &e.shape) {
        Some(Shape::AttrsOnly) | None => {
            if !o.hides_object(path) && own.there_at(micros) {
                let (size, etag) = own
                    .meta
                    .as_ref()
                    .map(|m| (m.size, m.etag.clone()))
                    .unwrap_or_default();
                Now::Object {
                    key: path.to_string(),
                    size,
                    etag,
                }
            } else {
                Now::Absent
            }
        }
        Some(Shape::Object { key, size, etag }) => Now::Object {
            key: key.clone(),
            size: *size,
            etag: etag.clone(),
        },
        Some(Shape::Dir) => other("dir", None),
        Some(Shape::Empty) => other("empty", None),
        Some(Shape::Symlink { target }) => other("symlink", Some(target.clone())),
        Some(Shape::Special { special, .. }) => other(
            &serde_json::to_value(special)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_else(|| "special".into()),
            None,
        ),
    }
}

fn other(kind: &str, target: Option<String>) -> Now {
    Now::Other {
        kind: kind.into(),
        target,
    }
}

/// Versions compare by identity: an object by key (a key's bytes never change).
fn same(a: &Now, b: &Now) -> bool {
    match (a, b) {
        (Now::Object { key: x, .. }, Now::Object { key: y, .. }) => x == y,
        _ => a == b,
    }
}

/// One hypothesis's versions as the walk goes.
struct Timeline {
    own: Own,
    now: Now,
    versions: Vec<Version>,
}

impl Timeline {
    fn new(own: Own) -> Timeline {
        Timeline {
            own,
            now: Now::Absent,
            versions: Vec::new(),
        }
    }

    /// The path shows `next` from `at` on; `gone` says how a version that
    /// leaves the path without a successor ended.
    fn observe(
        &mut self,
        next: Now,
        at: Option<u64>,
        mount: Option<&str>,
        gone: impl FnOnce() -> End,
    ) {
        if same(&self.now, &next) {
            // The same object, maybe with its size and ETag now known.
            if let (Some(v), Now::Object { size, etag, .. }) = (self.versions.last_mut(), &next) {
                if v.etag.as_deref().is_none_or(str::is_empty) && !etag.is_empty() {
                    v.size = *size;
                    v.etag = Some(etag.clone());
                }
            }
            return;
        }
        if self.now != Now::Absent {
            if let Some(v) = self.versions.last_mut() {
                v.end = if next == Now::Absent {
                    gone()
                } else {
                    End::Overwritten
                };
                v.until = at;
            }
        }
        match &next {
            Now::Absent => {}
            Now::Object { key, size, etag } => self.versions.push(Version {
                since: at,
                kind: "file".into(),
                size: *size,
                etag: Some(etag.clone()).filter(|e| !e.is_empty()),
                key: Some(key.clone()),
                target: None,
                end: End::Current,
                until: None,
                expired: false,
                mount: mount.map(String::from),
            }),
            Now::Other { kind, target } => self.versions.push(Version {
                since: at,
                kind: kind.clone(),
                size: target.as_ref().map_or(0, |t| t.len() as u64),
                etag: None,
                key: None,
                target: target.clone(),
                end: End::Current,
                until: None,
                expired: false,
                mount: mount.map(String::from),
            }),
        }
        self.now = next;
    }
}

/// Where a path's version went when a hide took it: the path that a record
/// earlier in the same batch bound to the same bytes (a rename), if any.
/// `top` is the hidden path, `path` at or beneath it.
fn renamed_to(
    records: &[Record],
    hide_at: usize,
    top: &str,
    path: &str,
    was: &Now,
    mtime: Option<Timestamp>,
) -> Option<String> {
    let suffix = &path[top.len()..];
    records[..hide_at].iter().find_map(|r| {
        let q = r.path();
        if q == path || !q.ends_with(suffix) {
            return None;
        }
        let hit = match (r, was) {
            (Record::Bind { key, .. }, Now::Object { key: k, .. }) => key == k,
            (Record::Bind { .. }, _) => false,
            (
                Record::Mkdir { attrs, .. }
                | Record::File { attrs, .. }
                | Record::Symlink { attrs, .. }
                | Record::Special { attrs, .. },
                Now::Other { .. },
            ) => {
                let mut probe = Overlay::default();
                probe.apply(r);
                let shown = now_at(
                    &probe,
                    q,
                    &Own {
                        meta: None,
                        assumed: false,
                    },
                    0,
                );
                shown == *was && attrs.mtime == mtime
            }
            _ => false,
        };
        hit.then(|| q.to_string())
    })
}

/// Every version of `path`, oldest first; the objects of versions are HEADed
/// to mark the expired ones.
pub fn versions(store: &dyn ObjectStore, path: &str) -> Result<Vec<Version>, CommandError> {
    let path = path.trim_matches('/');
    let own = store.head(path)?;
    let own_there = own.is_some();
    // Two accounts in one walk: with an own object that expired (some record
    // binds its key, so it existed), and without one.
    let mut with_own = Timeline::new(Own {
        meta: own.clone(),
        assumed: true,
    });
    let mut without = Timeline::new(Own {
        meta: own,
        assumed: false,
    });
    let mut named: Option<(u64, String)> = None;
    let mut o = Overlay::default();
    let stopped = walk(store, "", u64::MAX, |key, b| {
        let t = batch_micros(key).unwrap_or(0);
        // The own object may have appeared since the last batch.
        let since = |tl: &Timeline| {
            tl.own
                .meta
                .as_ref()
                .and_then(|m| m.last_modified)
                .map(micros_of)
        };
        for tl in [&mut with_own, &mut without] {
            let next = now_at(&o, path, &tl.own, t.saturating_sub(1));
            let at = since(tl);
            tl.observe(next, at, None, || End::Hidden);
        }
        for (i, r) in b.records.iter().enumerate() {
            if let Record::Bind {
                key, size, etag, ..
            } = r
            {
                if key == path && named.is_none() {
                    named = Some((*size, etag.clone()));
                }
            }
            let before = o.attrs(path).and_then(|a| a.mtime);
            o.apply(r);
            for tl in [&mut with_own, &mut without] {
                let next = now_at(&o, path, &tl.own, t);
                let was = tl.now.clone();
                let hide_top = match r {
                    Record::Hide { path: h } => Some(h.as_str()),
                    _ => None,
                };
                tl.observe(next, Some(t), Some(&b.mount), || match hide_top {
                    Some(h) if is_under(path, h) => {
                        match renamed_to(&b.records, i, h, path, &was, before) {
                            Some(q) => End::Renamed(q),
                            None => End::Hidden,
                        }
                    }
                    _ => End::Hidden,
                });
            }
        }
        ControlFlow::Continue(())
    })?;
    if let Some(e) = stopped {
        log::warn!("{e}: versions after it are not shown");
    }
    for tl in [&mut with_own, &mut without] {
        let at = tl
            .own
            .meta
            .as_ref()
            .and_then(|m| m.last_modified)
            .map(micros_of);
        let next = now_at(&o, path, &tl.own, u64::MAX);
        tl.observe(next, at, None, || End::Hidden);
    }
    let mut chosen = if own_there || named.is_some() {
        with_own
    } else {
        without
    };
    // An own object that expired: what the records that bound its key say.
    if !own_there {
        if let Some((size, etag)) = &named {
            for v in &mut chosen.versions {
                if v.key.as_deref() == Some(path) {
                    v.size = *size;
                    v.etag = Some(etag.clone());
                }
            }
        }
    }
    let mut versions = tidy(chosen.versions);
    let mut there: HashMap<String, bool> = HashMap::new();
    for v in &mut versions {
        let Some(key) = v.key.clone() else { continue };
        let ok = match there.get(&key) {
            Some(&ok) => ok,
            None => {
                let ok = store.head(&key)?.is_some();
                there.insert(key, ok);
                ok
            }
        };
        v.expired = !ok;
    }
    Ok(versions)
}

/// How long an empty file may stand before its writer fills it and still be
/// only the start of that write.
const WRITE_START: u64 = 2_000_000;

/// Drops the empty file a write starts with: a shell's `>` opens, stores the
/// empty file at its first close (of the descriptor it then dups), and binds
/// the bytes at the last. An empty version that the same mount overwrote
/// within `WRITE_START` is that, not a version of its own; the versions
/// around it that are then one object again become one.
fn tidy(versions: Vec<Version>) -> Vec<Version> {
    let mut out: Vec<Version> = Vec::with_capacity(versions.len());
    let mut it = versions.into_iter().peekable();
    while let Some(v) = it.next() {
        let brief =
            matches!((v.since, v.until), (Some(a), Some(b)) if b.saturating_sub(a) < WRITE_START);
        let filled = it
            .peek()
            .is_some_and(|n| n.mount.is_some() && n.mount == v.mount && n.since == v.until);
        if v.kind == "empty" && v.end == End::Overwritten && brief && filled {
            if let (Some(p), Some(n)) = (out.last_mut(), it.peek()) {
                if p.end == End::Overwritten && p.key.is_some() && p.key == n.key {
                    // The same object before and after: one version.
                    if let Some(n) = it.next() {
                        p.end = n.end;
                        p.until = n.until;
                        p.mount = p.mount.take().or(n.mount);
                    }
                }
            }
            continue;
        }
        out.push(v);
    }
    out
}

/// Whether `path` is `top` or beneath it.
fn is_under(path: &str, top: &str) -> bool {
    path.strip_prefix(top)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Prints `versions`: one line each, or one JSON object a line.
pub fn print(
    path: &str,
    versions: &[Version],
    json: bool,
    out: &mut dyn std::io::Write,
) -> Result<(), CommandError> {
    let time = |t: Option<u64>| t.map(format_micros).unwrap_or_else(|| "-".into());
    for v in versions {
        if json {
            let mut j = serde_json::to_value(v).unwrap_or_default();
            j["path"] = path.into();
            j["time"] = v.since.map(format_micros).into();
            j["until_time"] = v.until.map(format_micros).into();
            writeln!(out, "{j}").map_err(write_err)?;
            continue;
        }
        let what = match (&v.key, &v.target) {
            (Some(k), _) => k.clone(),
            (None, Some(t)) => format!("{} -> {t}", v.kind),
            (None, None) => v.kind.clone(),
        };
        let end = match &v.end {
            End::Current => "current".to_string(),
            End::Overwritten => format!("overwritten {}", time(v.until)),
            End::Renamed(to) => format!("renamed to {to} {}", time(v.until)),
            End::Hidden => format!("hidden {}", time(v.until)),
        };
        writeln!(
            out,
            "{}  {:>12}  {}  {}  {}{}",
            time(v.since),
            v.size,
            v.etag.as_deref().unwrap_or("-"),
            what,
            end,
            if v.expired { "  expired" } else { "" }
        )
        .map_err(write_err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::journal::{batch_key, Attrs, Batch};
    use crate::store::memory::MemoryStore;
    use bytes::Bytes;

    fn put_batch(store: &MemoryStore, micros: u64, records: Vec<Record>) {
        let key = batch_key(micros, "00000000000000aa", micros);
        let body = Batch::new("00000000000000aa", micros, records).encode();
        store.put(&key, Bytes::from(body)).expect("put");
    }

    fn bind(path: &str, key: &str) -> Record {
        Record::Bind {
            path: path.into(),
            key: key.into(),
            size: 2,
            etag: format!("etag-{key}"),
            attrs: Attrs::default(),
        }
    }

    fn hide(path: &str) -> Record {
        Record::Hide { path: path.into() }
    }

    fn summary(v: &[Version]) -> Vec<(Option<u64>, Option<String>, End, bool)> {
        v.iter()
            .map(|v| (v.since, v.key.clone(), v.end.clone(), v.expired))
            .collect()
    }

    #[test]
    fn each_binding_of_a_path_is_a_version_ended_by_what_came_next() {
        let store = MemoryStore::new();
        store.put("f", Bytes::from_static(b"v1")).expect("put");
        store
            .put(".cofferfs/data/1", Bytes::from_static(b"v2"))
            .expect("put");
        // .cofferfs/data/2 was never stored, or has expired.
        put_batch(
            &store,
            1_000,
            vec![Record::Attr {
                path: "f".into(),
                attrs: Attrs {
                    mode: Some(0o600),
                    ..Attrs::default()
                },
            }],
        );
        put_batch(&store, 2_000, vec![bind("f", ".cofferfs/data/1")]);
        put_batch(
            &store,
            3_000,
            vec![bind("d/g", ".cofferfs/data/1"), hide("f")],
        );
        put_batch(&store, 4_000, vec![bind("f", ".cofferfs/data/2")]);
        put_batch(&store, 5_000, vec![hide("f")]);
        put_batch(
            &store,
            6_000,
            vec![bind("e/g", ".cofferfs/data/1"), hide("d")],
        );
        let k = |s: &str| Some(s.to_string());
        assert_eq!(
            summary(&versions(&store, "f").expect("versions")),
            [
                (None, k("f"), End::Overwritten, false),
                (
                    Some(2_000),
                    k(".cofferfs/data/1"),
                    End::Renamed("d/g".into()),
                    false
                ),
                (Some(4_000), k(".cofferfs/data/2"), End::Hidden, true),
            ]
        );
        let g = versions(&store, "d/g").expect("versions");
        assert_eq!(
            summary(&g),
            [(
                Some(3_000),
                k(".cofferfs/data/1"),
                End::Renamed("e/g".into()),
                false
            )]
        );
        assert_eq!(g[0].until, Some(6_000));
        assert_eq!(g[0].etag.as_deref(), Some("etag-.cofferfs/data/1"));
        assert_eq!(
            summary(&versions(&store, "e/g").expect("versions")),
            [(Some(6_000), k(".cofferfs/data/1"), End::Current, false)]
        );
        assert!(versions(&store, "nothing").expect("versions").is_empty());
    }

    #[test]
    fn the_empty_file_a_write_starts_with_is_not_a_version() {
        let store = MemoryStore::new();
        store.put("f", Bytes::from_static(b"v1")).expect("put");
        store
            .put(".cofferfs/data/1", Bytes::from_static(b"v2"))
            .expect("put");
        let empty = || Record::File {
            path: "f".into(),
            attrs: Attrs::default(),
        };
        // `echo v1 > f` then `echo v2 > f`: empty at the first close each time.
        put_batch(&store, 1_000, vec![empty()]);
        put_batch(&store, 1_002, vec![bind("f", "f")]);
        put_batch(&store, 5_000, vec![empty()]);
        put_batch(&store, 5_002, vec![bind("f", ".cofferfs/data/1")]);
        // An empty file that stood for a while is a version.
        put_batch(&store, 9_000_000, vec![empty()]);
        put_batch(&store, 19_000_000, vec![bind("f", ".cofferfs/data/1")]);
        let k = |s: &str| Some(s.to_string());
        let v = versions(&store, "f").expect("versions");
        assert_eq!(
            summary(&v),
            [
                (None, k("f"), End::Overwritten, false),
                (Some(5_002), k(".cofferfs/data/1"), End::Overwritten, false),
                (Some(9_000_000), None, End::Overwritten, false),
                (Some(19_000_000), k(".cofferfs/data/1"), End::Current, false),
            ]
        );
        assert_eq!(v[0].until, Some(5_000));
    }

    #[test]
    fn an_own_object_that_expired_is_known_from_the_records_that_name_its_key() {
        let store = MemoryStore::new();
        // "old" was an object, renamed to "new", then expired.
        put_batch(&store, 1_000, vec![bind("new", "old"), hide("old")]);
        let v = versions(&store, "old").expect("versions");
        assert_eq!(
            summary(&v),
            [(None, Some("old".into()), End::Renamed("new".into()), true)]
        );
        assert_eq!((v[0].size, v[0].etag.as_deref()), (2, Some("etag-old")));
        let v = versions(&store, "new").expect("versions");
        assert_eq!(
            summary(&v),
            [(Some(1_000), Some("old".into()), End::Current, true)]
        );
    }
}
