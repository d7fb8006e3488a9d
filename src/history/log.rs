//! `cofferfs log COFFER`: the audit trail, one line per journal record with the
//! time and writer of its batch. A rename, stored as the new path's records
//! plus a hide of the old one, reads as one `rename OLD -> NEW`; a new name of
//! a hard-linked file as `link NAME -> NEW`. To tell these apart the walk
//! replays the overlay from the newest checkpoint before `--since`.

use super::{format_micros, write_err};
use crate::commands::CommandError;
use crate::fs::journal::history::{batch_micros, start_at_or_before, walk};
use crate::fs::journal::{Attrs, Batch, Overlay, Record, Shape, Timestamp, Writer};
use crate::store::ObjectStore;
use serde::Serialize;
use std::collections::HashMap;
use std::ops::ControlFlow;

/// Which records to show.
#[derive(Debug, Clone, Default)]
pub struct LogFilter {
    /// Batches stored at or after this time (microseconds).
    pub since: Option<u64>,
    /// ...and at or before this one.
    pub until: Option<u64>,
    /// Records about a path starting with this (either path of a rename).
    pub prefix: String,
}

/// One line of the log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LogEntry {
    /// The batch's time (microseconds) and key.
    pub micros: u64,
    pub batch: String,
    pub mount: String,
    pub writer: Option<Writer>,
    /// `mkdir`, `create`, `symlink`, `mknod`, `write`, `link`, `rename`,
    /// `remove`, `attr`, `setxattr`, `rmxattr`, or `unknown`.
    pub op: String,
    pub path: String,
    /// The new path of a rename or link.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// What else the record says, readably.
    pub detail: String,
}

/// Whether `path` is `top` or beneath it.
fn is_under(path: &str, top: &str) -> bool {
    path.strip_prefix(top)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Whether shape record `r` (at `r.path()`) gives the same thing `o` has at
/// `from`: a rename's record of a moved entry (same object, or same shape and
/// mtime: a rename keeps the mtime).
fn moves(o: &Overlay, from: &str, r: &Record) -> bool {
    let entry = o.get(from);
    match r {
        Record::Bind { key, .. } => match entry.map(|e| &e.shape) {
            Some(Shape::Object { key: k, .. }) => k == key,
            Some(Shape::AttrsOnly) | None => key == from && !o.hides_object(from),
            _ => false,
        },
        Record::Mkdir { attrs, .. }
        | Record::File { attrs, .. }
        | Record::Symlink { attrs, .. }
        | Record::Special { attrs, .. } => {
            let Some(e) = entry else { return false };
            let mut probe = Overlay::default();
            probe.apply(r);
            probe.get(r.path()).map(|p| &p.shape) == Some(&e.shape) && attrs.mtime == e.attrs.mtime
        }
        _ => false,
    }
}

/// A hide of `top` that ends a rename: the new path, and the records before
/// it in the batch (`records[..at]`) that belong to the rename.
fn rename_of(
    o: &Overlay,
    records: &[Record],
    at: usize,
    top: &str,
    used: &[bool],
) -> Option<(String, Vec<usize>)> {
    let target = records[..at].iter().enumerate().find_map(|(j, r)| {
        if used[j]
            || matches!(
                r,
                Record::Attr { .. } | Record::Xattr { .. } | Record::Hide { .. }
            )
        {
            return None;
        }
        let q = r.path();
        // q = new + suffix, where top + suffix was the moved entry.
        let cuts = std::iter::once(q.len()).chain(q.match_indices('/').map(|(i, _)| i));
        cuts.filter_map(|cut| {
            let (new, suffix) = q.split_at(cut);
            (!new.is_empty() && new != top && moves(o, &format!("{top}{suffix}"), r))
                .then(|| new.to_string())
        })
        .next()
    })?;
    let mut parts = Vec::new();
    for (j, r) in records[..at].iter().enumerate() {
        if used[j] || !is_under(r.path(), &target) {
            continue;
        }
        let from = format!("{top}{}", &r.path()[target.len()..]);
        let belongs = match r {
            Record::Xattr { name, value, .. } => {
                value.is_some() && o.xattrs(&from).and_then(|x| x.get(name)) == value.as_ref()
            }
            Record::Attr { .. } | Record::Hide { .. } | Record::Unknown => false,
            _ => moves(o, &from, r),
        };
        if belongs {
            parts.push(j);
        }
    }
    Some((target, parts))
}

fn attrs_detail(a: &Attrs) -> String {
    let t = |t: Timestamp| match chrono::DateTime::from_timestamp(t.secs(), t.nanos()) {
        Some(d) => d.format("%Y-%m-%dT%H:%M:%S%.9fZ").to_string(),
        None => format!("{}.{:09}", t.secs(), t.nanos()),
    };
    let mut d = Vec::new();
    if let Some(m) = a.mode {
        d.push(format!("mode={m:04o}"));
    }
    if let Some(u) = a.uid {
        d.push(format!("uid={u}"));
    }
    if let Some(g) = a.gid {
        d.push(format!("gid={g}"));
    }
    if let Some(m) = a.mtime {
        d.push(format!("mtime={}", t(m)));
    }
    if let Some(c) = a.ctime {
        d.push(format!("ctime={}", t(c)));
    }
    if let Some(x) = a.atime {
        d.push(format!("atime={}", t(x)));
    }
    if let Some(l) = a.link {
        d.push(format!("link={l:016x}"));
    }
    d.join(" ")
}

/// The lines of one batch, given the overlay before it (left after it).
/// `linked`: for each hard-link identity, a path last recorded with it.
fn batch_lines(
    key: &str,
    b: &Batch,
    o: &mut Overlay,
    linked: &mut HashMap<u64, String>,
) -> Vec<LogEntry> {
    let micros = batch_micros(key).unwrap_or(0);
    let mut lines: Vec<Option<LogEntry>> = Vec::with_capacity(b.records.len());
    let mut used = vec![false; b.records.len()];
    let line = |op: &str, path: &str, to: Option<String>, detail: String| {
        Some(LogEntry {
            micros,
            batch: key.to_string(),
            mount: b.mount.clone(),
            writer: b.writer.clone(),
            op: op.into(),
            path: path.into(),
            to,
            detail,
        })
    };
    for (i, r) in b.records.iter().enumerate() {
        let here = r.path();
        let mut entry = match r {
            Record::Hide { path } => match rename_of(o, &b.records, i, path, &used) {
                Some((to, parts)) => {
                    for j in parts {
                        used[j] = true;
                        lines[j] = None;
                    }
                    line("rename", path, Some(to), String::new())
                }
                None => line("remove", path, None, String::new()),
            },
            Record::Attr { path, attrs } => line("attr", path, None, attrs_detail(attrs)),
            Record::Xattr {
                path,
                name,
                value: Some(v),
            } => line("setxattr", path, None, format!("{name}={v}")),
            Record::Xattr {
                path,
                name,
                value: None,
            } => line("rmxattr", path, None, name.clone()),
            Record::Unknown => line("unknown", "", None, String::new()),
            Record::Mkdir { attrs, .. }
            | Record::File { attrs, .. }
            | Record::Symlink { attrs, .. }
            | Record::Bind { attrs, .. }
            | Record::Special { attrs, .. } => {
                let detail = attrs_detail(attrs);
                let other = attrs
                    .link
                    .and_then(|g| linked.get(&g))
                    .filter(|p| *p != here && moves(o, p, r))
                    .cloned();
                if moves(o, here, r) && o.get(here).is_some_and(|e| e.attrs.link != attrs.link) {
                    // The same thing again, now with a hard-link identity.
                    line("attr", here, None, detail)
                } else if let Some(from) = other {
                    line("link", &from, Some(here.to_string()), detail)
                } else {
                    match r {
                        Record::Mkdir { .. } => line("mkdir", here, None, detail),
                        Record::File { .. } => line("create", here, None, detail),
                        Record::Symlink { target, .. } => {
                            line("symlink", here, None, format!("-> {target} {detail}"))
                        }
                        Record::Bind {
                            key, size, etag, ..
                        } => line(
                            "write",
                            here,
                            None,
                            format!("{size} bytes {key} etag={etag} {detail}"),
                        ),
                        Record::Special { special, rdev, .. } => line(
                            "mknod",
                            here,
                            None,
                            format!(
                                "{} rdev={rdev} {detail}",
                                serde_json::to_value(special)
                                    .ok()
                                    .and_then(|v| v.as_str().map(String::from))
                                    .unwrap_or_default()
                            ),
                        ),
                        _ => None,
                    }
                }
            }
        };
        if let Some(e) = &mut entry {
            e.detail = e.detail.trim().to_string();
        }
        lines.push(entry);
        o.apply(r);
        if let Some(g) = match r {
            Record::Mkdir { .. } | Record::Hide { .. } | Record::Attr { .. } => None,
            Record::Xattr { .. } | Record::Unknown => None,
            Record::File { attrs, .. }
            | Record::Symlink { attrs, .. }
            | Record::Bind { attrs, .. }
            | Record::Special { attrs, .. } => attrs.link,
        } {
            linked.insert(g, here.to_string());
        }
    }
    lines.into_iter().flatten().collect()
}

/// The audit trail: every record the filter lets through, oldest first,
/// handed to `each` as its batch is read.
pub fn log(
    store: &dyn ObjectStore,
    filter: &LogFilter,
    each: &mut dyn FnMut(&LogEntry) -> Result<(), CommandError>,
) -> Result<(), CommandError> {
    let since = filter.since.unwrap_or(0);
    let until = filter.until.unwrap_or(u64::MAX);
    let start = start_at_or_before(store, since.saturating_sub(1))?;
    let mut o = start.overlay;
    let mut linked = HashMap::new();
    let mut failed = None;
    let stopped = walk(store, &start.floor, until, |key, b| {
        let lines = batch_lines(key, &b, &mut o, &mut linked);
        if batch_micros(key).unwrap_or(0) < since {
            return ControlFlow::Continue(());
        }
        for l in lines.iter().filter(|l| {
            l.path.starts_with(&filter.prefix)
                || l.to
                    .as_deref()
                    .is_some_and(|t| t.starts_with(&filter.prefix))
        }) {
            if let Err(e) = each(l) {
                // Printing failed (a closed pipe): read no further.
                failed = Some(e);
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    if let Some(e) = stopped {
        log::warn!("{e}: the log stops before it");
    }
    Ok(())
}

/// Prints one line: time, writer, operation, path or paths, details.
pub fn print(e: &LogEntry, json: bool, out: &mut dyn std::io::Write) -> Result<(), CommandError> {
    if json {
        let mut j = serde_json::to_value(e).unwrap_or_default();
        j["time"] = format_micros(e.micros).into();
        return writeln!(out, "{j}").map_err(write_err);
    }
    let writer = match &e.writer {
        Some(w) => format!("{}@{}", w.user, w.host),
        None => "-".into(),
    };
    // The root's path is empty.
    let shown = |p: &str| {
        if p.is_empty() {
            ".".to_string()
        } else {
            p.to_string()
        }
    };
    let paths = match &e.to {
        Some(to) => format!("{} -> {}", shown(&e.path), shown(to)),
        None => shown(&e.path),
    };
    let detail = if e.detail.is_empty() {
        String::new()
    } else {
        format!("  {}", e.detail)
    };
    writeln!(
        out,
        "{}  {writer}  {:<8} {paths}{detail}",
        format_micros(e.micros),
        e.op
    )
    .map_err(write_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind(path: &str, key: &str, link: Option<u64>) -> Record {
        Record::Bind {
            path: path.into(),
            key: key.into(),
            size: 3,
            etag: "e".into(),
            attrs: Attrs {
                mtime: Some((5, 0).into()),
                link,
                ..Attrs::default()
            },
        }
    }

    fn ops(lines: &[LogEntry]) -> Vec<String> {
        lines
            .iter()
            .map(|l| match &l.to {
                Some(to) => format!("{} {} {to}", l.op, l.path),
                None => format!("{} {}", l.op, l.path),
            })
            .collect()
    }

    #[test]
    fn a_line_names_the_writer_or_a_dash_for_batches_from_before_writers() {
        let mut o = Overlay::default();
        let mut b = Batch::new("m", 1, vec![Record::Hide { path: "".into() }]);
        let old = batch_lines("k", &b, &mut o, &mut HashMap::new());
        b.writer = Some(Writer {
            host: "nas".into(),
            user: "alice".into(),
            uid: Some(1000),
            version: "0.1.0".into(),
        });
        let new = batch_lines("k", &b, &mut o, &mut HashMap::new());
        let text = |e: &LogEntry| {
            let mut out = Vec::new();
            print(e, false, &mut out).expect("print");
            String::from_utf8(out).expect("utf-8")
        };
        assert!(
            text(&old[0]).ends_with("  -  remove   .\n"),
            "{}",
            text(&old[0])
        );
        assert!(text(&new[0]).ends_with("  alice@nas  remove   .\n"));
        let mut json = Vec::new();
        print(&new[0], true, &mut json).expect("print");
        let v: serde_json::Value = serde_json::from_slice(&json).expect("JSON");
        assert_eq!(v["writer"]["host"], "nas");
        assert_eq!(v["op"], "remove");
    }

    #[test]
    fn renames_and_links_read_as_one_line_each() {
        let mut o = Overlay::default();
        let mut linked = HashMap::new();
        let first = Batch::new(
            "m",
            1,
            vec![
                bind("d/a", ".cofferfs/data/1", None),
                Record::Mkdir {
                    path: "e".into(),
                    attrs: Attrs {
                        mtime: Some((7, 0).into()),
                        ..Attrs::default()
                    },
                },
            ],
        );
        let lines = batch_lines("k1", &first, &mut o, &mut linked);
        assert_eq!(ops(&lines), ["write d/a", "mkdir e"]);
        let second = Batch::new(
            "m",
            2,
            vec![
                // mv d x: the moved file, an own object under d, then the hide.
                bind("x/a", ".cofferfs/data/1", None),
                bind("x/own", "d/own", None),
                Record::Hide { path: "d".into() },
                // mv e f: an empty directory keeps its mtime.
                Record::Mkdir {
                    path: "f".into(),
                    attrs: Attrs {
                        mtime: Some((7, 0).into()),
                        ..Attrs::default()
                    },
                },
                Record::Hide { path: "e".into() },
                // ln x/a y: x/a again with an identity, then y.
                bind("x/a", ".cofferfs/data/1", Some(9)),
                bind("y", ".cofferfs/data/1", Some(9)),
                Record::Hide {
                    path: "gone".into(),
                },
            ],
        );
        let lines = batch_lines("k2", &second, &mut o, &mut linked);
        assert_eq!(
            ops(&lines),
            [
                "rename d x",
                "rename e f",
                "attr x/a",
                "link x/a y",
                "remove gone"
            ]
        );
    }
}
