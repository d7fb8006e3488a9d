//! The metadata journal (docs/journal.md): how paths, renames, hides and
//! attributes the coffer's objects cannot hold are recorded in the coffer.
//! `format`: the records, batches and checkpoints as stored, and the overlay
//! their replay builds (pure). `committer`: appending and group commit in a
//! mount; `replay`: reading checkpoints and other mounts' batches; `fetch`:
//! getting batches in parallel, handed over in key order; `history`: the
//! journal as of a past time (as-of mounts, `cofferfs versions`/`log`);
//! `writer`: who stores a batch. Knows nothing of inodes, handles or FUSE.

mod committer;
mod fetch;
mod format;
pub mod history;
mod replay;
pub mod writer;

pub(crate) use committer::now_micros;
pub use committer::{
    CheckpointRule, Committer, Ticket, CHECKPOINT_AT_UNMOUNT, CHECKPOINT_EVERY, CHECKPOINT_RECORDS,
    CHECKPOINT_RECORDS_AT_UNMOUNT, COMMIT_INTERVAL,
};
pub use format::*;
pub use replay::Touched;

/// Record `i` of a synthetic journal for benchmarks (unit and integration
/// tests): binds, attributes and hides over 300,000 paths in 1000
/// directories, as a backup's journal looks.
#[doc(hidden)]
pub fn bench_record(i: usize) -> Record {
    let path = format!("d{:03}/f{}", i % 1000, i % 300_000);
    let attrs = Attrs {
        mode: Some(0o644),
        mtime: Some((1_700_000_000 + i as i64, 0).into()),
        ctime: Some((1_700_000_000 + i as i64, 0).into()),
        ..Attrs::default()
    };
    match i % 20 {
        0 => Record::Hide { path },
        1..=5 => Record::Attr { path, attrs },
        _ => Record::Bind {
            path,
            key: format!(".cofferfs/data/{i:020}"),
            size: i as u64,
            etag: format!("{i:032x}"),
            attrs,
        },
    }
}

/// Records for the journal's tests.
#[cfg(test)]
mod test_records {
    use super::{Attrs, Record};

    /// `mkdir p` with no attributes.
    pub fn mkdir(p: &str) -> Record {
        Record::Mkdir {
            path: p.into(),
            attrs: Attrs::default(),
        }
    }
}
