//! Files open for writing. `handle`: one file's bytes on their way to the
//! coffer (streamed, or through a staging file), knowing nothing of inodes or
//! the journal; `staging`: the mount-wide staging budget; `writer`: the Fs
//! side — records, view entries, and what a failure gives back.

mod handle;
mod staging;
mod writer;

pub use handle::WriteHandle;
pub use staging::Staging;
pub(super) use writer::{End, Writer};
