//! DiskTier: the block cache's second tier, files under `--cache-dir` that survive
//! remounts. Each file is named by (key, ETag, index) and opens with a header
//! that repeats them, the length, and an MD5 over header and bytes, so a stale,
//! damaged or misplaced file is never served. Files are 0600 in a 0700
//! directory. Knows blocks, not files.

use super::private_dir;
use crate::protocol::{hex, md5};
use bytes::Bytes;
use md5::{Digest, Md5};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// First bytes of every block file (format 1).
const MAGIC: &[u8; 8] = b"CFBLK001";

/// The header a block file of `(key, etag, index)` holding `len` bytes starts
/// with, before its checksum.
fn header(key: &str, etag: &str, index: u64, len: usize) -> Vec<u8> {
    let mut h = Vec::with_capacity(32 + key.len() + etag.len());
    h.extend_from_slice(MAGIC);
    for field in [key.as_bytes(), etag.as_bytes()] {
        h.extend_from_slice(&(field.len() as u32).to_le_bytes());
        h.extend_from_slice(field);
    }
    h.extend_from_slice(&index.to_le_bytes());
    h.extend_from_slice(&(len as u64).to_le_bytes());
    h
}

fn checksum(header: &[u8], data: &[u8]) -> [u8; 16] {
    Md5::new()
        .chain_update(header)
        .chain_update(data)
        .finalize()
        .into()
}

pub struct DiskTier {
    dir: PathBuf,
    limit: u64,
    used: Mutex<u64>,
}

impl DiskTier {
    /// Opens (or makes) the tier in `dir`, holding at most `limit` bytes.
    pub fn open(dir: &Path, limit: u64) -> std::io::Result<DiskTier> {
        let dir = dir.join("cofferfs-blocks");
        private_dir::ensure(&dir)?;
        let used = std::fs::read_dir(&dir)?
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum();
        Ok(DiskTier {
            dir,
            limit,
            used: Mutex::new(used),
        })
    }

    fn path(&self, key: &str, etag: &str, index: u64) -> PathBuf {
        let name = hex(&md5(format!("{key}\0{etag}").as_bytes()));
        self.dir.join(format!("{name}-{index}"))
    }

    /// The block if a valid copy of exactly it is on disk.
    pub fn get(&self, key: &str, etag: &str, index: u64, len: usize) -> Option<Bytes> {
        let path = self.path(key, etag, index);
        let raw = std::fs::read(&path).ok()?;
        let head = header(key, etag, index, len);
        let body = head.len() + 16;
        if raw.len() == body + len
            && raw.starts_with(&head)
            && raw[head.len()..body] == checksum(&head, &raw[body..])
        {
            return Some(Bytes::from(raw).slice(body..));
        }
        log::warn!(
            "disk cache: {} is damaged or not this block; removed",
            path.display()
        );
        let _ = std::fs::remove_file(&path);
        None
    }

    /// Keeps a copy of a block; trims the oldest files beyond the limit.
    pub fn put(&self, key: &str, etag: &str, index: u64, data: &[u8]) {
        let path = self.path(key, etag, index);
        if path.exists() {
            return;
        }
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let head = header(key, etag, index, data.len());
        let sum = checksum(&head, data);
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| {
                f.write_all(&head)?;
                f.write_all(&sum)?;
                f.write_all(data)
            })
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            log::warn!("disk cache: cannot write {}: {e}", path.display());
            let _ = std::fs::remove_file(&tmp);
            return;
        }
        let size = (head.len() + sum.len() + data.len()) as u64;
        let over = {
            let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
            *used += size;
            *used > self.limit
        };
        if over {
            self.trim();
        }
    }

    /// Removes the least recently written files until 90% of the limit is used.
    fn trim(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut files: Vec<(std::time::SystemTime, u64, PathBuf)> = entries
            .flatten()
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                Some((m.modified().ok()?, m.len(), e.path()))
            })
            .collect();
        files.sort();
        let mut used: u64 = files.iter().map(|f| f.1).sum();
        let target = self.limit / 10 * 9;
        for (_, len, path) in files {
            if used <= target {
                break;
            }
            if std::fs::remove_file(&path).is_ok() {
                used -= len;
            }
        }
        *self.used.lock().unwrap_or_else(|p| p.into_inner()) = used;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_survive_and_damage_is_never_served() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = DiskTier::open(dir.path(), 1 << 20).expect("open");
        t.put("k", "e1", 3, b"block three");
        let again = DiskTier::open(dir.path(), 1 << 20).expect("reopen");
        assert_eq!(
            again.get("k", "e1", 3, 11).as_deref(),
            Some(&b"block three"[..])
        );
        assert!(again.get("k", "e2", 3, 11).is_none(), "another version");
        let path = again.path("k", "e1", 3);
        let mut raw = std::fs::read(&path).expect("read");
        raw[20] ^= 1;
        std::fs::write(&path, raw).expect("damage");
        assert!(again.get("k", "e1", 3, 11).is_none());
        assert!(!path.exists());
    }

    #[test]
    fn a_block_file_under_another_blocks_name_is_refused_and_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let t = DiskTier::open(dir.path(), 1 << 20).expect("open");
        t.put("k", "e", 1, b"first block");
        t.put("k", "e", 2, b"other block");
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&t.path("k", "e", 1)), 0o600);
        assert_eq!(mode(&dir.path().join("cofferfs-blocks")), 0o700);
        // A valid file copied (or planted) under another block's name: its MD5
        // is right, but its header names another block.
        std::fs::copy(t.path("k", "e", 1), t.path("k", "e", 2)).expect("copy");
        assert!(t.get("k", "e", 2, 11).is_none());
        std::fs::copy(t.path("k", "e", 1), t.path("k2", "e", 1)).expect("copy");
        assert!(t.get("k2", "e", 1, 11).is_none());
        // The old format (MD5 of the bytes, then the bytes) is not served either.
        let mut old = md5(b"first block").to_vec();
        old.extend_from_slice(b"first block");
        std::fs::write(t.path("k", "e", 3), old).expect("write");
        assert!(t.get("k", "e", 3, 11).is_none());
        assert_eq!(t.get("k", "e", 1, 11).as_deref(), Some(&b"first block"[..]));
    }

    #[test]
    fn the_tier_stays_within_its_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = DiskTier::open(dir.path(), 10_000).expect("open");
        for i in 0..20 {
            t.put("k", "e", i, &[7u8; 1000]);
        }
        let total: u64 = std::fs::read_dir(dir.path().join("cofferfs-blocks"))
            .expect("dir")
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum();
        assert!(total <= 10_000, "{total}");
    }
}
