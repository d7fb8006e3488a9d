//! Moving whole objects between memory or local files and the store: the
//! multipart uploader (`upload`), used by the direct commands and by the
//! filesystem alike. Knows objects, parts and ranges, never files of the
//! mount, inodes or FUSE.

mod budget;
mod object_upload;
pub mod pool;
pub mod upload;
