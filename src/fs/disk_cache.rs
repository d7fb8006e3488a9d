//! DiskTier: the block cache's second tier, files under `--cache-dir` that survive
//! remounts. Each file is named by (key, ETag, index) and carries the MD5 of its
//! bytes, so a stale or damaged file is never served. Knows blocks, not files.

use crate::protocol::{hex, md5};
use bytes::Bytes;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub struct DiskTier {
    dir: PathBuf,
    limit: u64,
    used: Mutex<u64>,
}

impl DiskTier {
    /// Opens (or makes) the tier in `dir`, holding at most `limit` bytes.
    pub fn open(dir: &Path, limit: u64) -> std::io::Result<DiskTier> {
        let dir = dir.join("cofferfs-blocks");
        std::fs::create_dir_all(&dir)?;
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

    /// The block if a valid copy is on disk.
    pub fn get(&self, key: &str, etag: &str, index: u64, len: usize) -> Option<Bytes> {
        let path = self.path(key, etag, index);
        let raw = std::fs::read(&path).ok()?;
        if raw.len() == len + 16 && raw[..16] == md5(&raw[16..]) {
            return Some(Bytes::from(raw).slice(16..));
        }
        log::warn!("disk cache: {} is damaged; removed", path.display());
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
        let mut buf = Vec::with_capacity(data.len() + 16);
        buf.extend_from_slice(&md5(data));
        buf.extend_from_slice(data);
        if let Err(e) = std::fs::write(&tmp, &buf).and_then(|()| std::fs::rename(&tmp, &path)) {
            log::warn!("disk cache: cannot write {}: {e}", path.display());
            let _ = std::fs::remove_file(&tmp);
            return;
        }
        let over = {
            let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
            *used += buf.len() as u64;
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
