//! Moving whole objects between memory or local files and the store: the
//! multipart uploader (`upload`, with `object_upload` and its memory `budget`),
//! the ranged-GET downloader (`download`) and the worker `pool` of the uploads
//! and the read-ahead; used by the direct commands and by the filesystem alike.
//! Knows objects, parts and ranges, never files of the mount, inodes or FUSE.

mod budget;
pub mod download;
mod object_upload;
pub mod pool;
pub mod upload;
