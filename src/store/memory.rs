//! `MemoryStore`: an in-memory `ObjectStore` with the service's write-once rules, for
//! unit tests of filesystem logic. Not a substitute for tests against `cofferfs serve`.

use super::*;
use crate::protocol::{hex, md5, rules};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Default)]
struct State {
    objects: BTreeMap<String, (Bytes, String)>,
    uploads: HashMap<String, (String, BTreeMap<u32, Bytes>)>,
    next_id: u64,
}

/// In-memory coffer. `fail_parts` makes UploadPart fail for the given part numbers.
#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<State>,
    /// Part numbers whose upload fails with ServiceUnavailable.
    pub fail_parts: Mutex<Vec<u32>>,
    /// Requests per operation name.
    pub calls: Mutex<HashMap<&'static str, u64>>,
    /// Simulated latency of UploadPart, in milliseconds.
    pub part_delay_ms: AtomicU64,
}

fn err(op: &'static str, key: &str, code: ErrorCode) -> StoreError {
    StoreError::Service {
        op,
        key: key.to_string(),
        status: code.status(),
        code,
        message: String::new(),
        request_id: "mem".into(),
        trace_id: String::new(),
    }
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn count(&self, op: &'static str) {
        *self
            .calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(op)
            .or_default() += 1;
    }

    /// Requests made of `op` so far.
    pub fn calls(&self, op: &str) -> u64 {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(op)
            .copied()
            .unwrap_or(0)
    }

    /// Open uploads.
    pub fn open_uploads(&self) -> usize {
        self.lock().uploads.len()
    }

    /// An object's bytes.
    pub fn object(&self, key: &str) -> Option<Bytes> {
        self.lock().objects.get(key).map(|(b, _)| b.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn busy(s: &State, key: &str) -> bool {
        s.uploads.values().any(|(k, _)| k == key)
    }
}

impl ObjectStore for MemoryStore {
    fn coffer(&self) -> &str {
        "memory-1"
    }

    fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        self.count("HeadObject");
        Ok(self.lock().objects.get(key).map(|(b, e)| ObjectMeta {
            key: key.to_string(),
            size: b.len() as u64,
            etag: e.clone(),
            last_modified: None,
        }))
    }

    fn get(&self, key: &str, range: Option<Range>) -> Result<GetResult, StoreError> {
        self.count("GetObject");
        let s = self.lock();
        let (b, etag) = s
            .objects
            .get(key)
            .ok_or_else(|| err("GetObject", key, ErrorCode::ObjectNotExists))?;
        let len = b.len() as u64;
        let (start, end) = match range {
            None => (0, len),
            Some(Range::Bounded(a, z)) => (a, (z + 1).min(len)),
            Some(Range::From(a)) => (a, len),
            Some(Range::Suffix(n)) => (len.saturating_sub(n), len),
        };
        if start >= len {
            return Err(err("GetObject", key, ErrorCode::InvalidRange));
        }
        Ok(GetResult {
            data: b.slice(start as usize..end as usize),
            start,
            object_size: len,
            etag: etag.clone(),
        })
    }

    fn put(&self, key: &str, data: Bytes) -> Result<String, StoreError> {
        self.count("PutObject");
        if data.is_empty() {
            return Err(err("PutObject", key, ErrorCode::ObjectEmpty));
        }
        let mut s = self.lock();
        if s.objects.contains_key(key) {
            return Err(err("PutObject", key, ErrorCode::ObjectAlreadyExists));
        }
        if Self::busy(&s, key) {
            return Err(err("PutObject", key, ErrorCode::ObjectAlreadyUploading));
        }
        let etag = hex(&md5(&data));
        s.objects.insert(key.to_string(), (data, etag.clone()));
        Ok(etag)
    }

    fn list(&self, prefix: &str, marker: &str, max_keys: u32) -> Result<ListPage, StoreError> {
        self.count("GetCoffer");
        let s = self.lock();
        let mut objects = Vec::new();
        let mut truncated = false;
        for (k, (b, e)) in s.objects.range(marker.to_string()..) {
            if k.as_str() <= marker || !k.starts_with(prefix) {
                continue;
            }
            if objects.len() as u32 == max_keys {
                truncated = true;
                break;
            }
            objects.push(ObjectMeta {
                key: k.clone(),
                size: b.len() as u64,
                etag: e.clone(),
                last_modified: None,
            });
        }
        let next_marker =
            truncated.then(|| objects.last().map(|o| o.key.clone()).unwrap_or_default());
        Ok(ListPage {
            objects,
            next_marker,
        })
    }

    fn initiate(&self, key: &str) -> Result<String, StoreError> {
        self.count("InitiateMultipartUpload");
        let mut s = self.lock();
        if s.objects.contains_key(key) {
            return Err(err(
                "InitiateMultipartUpload",
                key,
                ErrorCode::ObjectAlreadyExists,
            ));
        }
        if Self::busy(&s, key) {
            return Err(err(
                "InitiateMultipartUpload",
                key,
                ErrorCode::ObjectAlreadyUploading,
            ));
        }
        s.next_id += 1;
        let id = format!("up{}", s.next_id);
        s.uploads
            .insert(id.clone(), (key.to_string(), BTreeMap::new()));
        Ok(id)
    }

    fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        data: Bytes,
        md5_digest: [u8; 16],
    ) -> Result<String, StoreError> {
        self.count("UploadPart");
        let delay = self.part_delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            std::thread::sleep(std::time::Duration::from_millis(delay));
        }
        if self
            .fail_parts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&part_number)
        {
            return Err(err("UploadPart", key, ErrorCode::ServiceUnavailable));
        }
        if md5(&data) != md5_digest {
            return Err(err("UploadPart", key, ErrorCode::BadDigest));
        }
        let mut s = self.lock();
        let up = s
            .uploads
            .get_mut(upload_id)
            .filter(|(k, _)| k == key)
            .ok_or_else(|| err("UploadPart", key, ErrorCode::NoSuchUpload))?;
        // A copy, as a real store's is: the caller may reuse its buffer.
        up.1.insert(part_number, Bytes::copy_from_slice(&data));
        Ok(hex(&md5_digest))
    }

    fn list_parts(&self, key: &str, upload_id: &str, marker: u32) -> Result<PartsPage, StoreError> {
        self.count("ListParts");
        let s = self.lock();
        let up = s
            .uploads
            .get(upload_id)
            .ok_or_else(|| err("ListParts", key, ErrorCode::NoSuchUpload))?;
        Ok(PartsPage {
            parts: up
                .1
                .range(marker + 1..)
                .map(|(n, b)| PartMeta {
                    part_number: *n,
                    etag: hex(&md5(b)),
                    size: b.len() as u64,
                })
                .collect(),
            next_marker: None,
        })
    }

    fn complete(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
        _size: u64,
    ) -> Result<String, StoreError> {
        self.count("CompleteMultipartUpload");
        let mut s = self.lock();
        let up = s
            .uploads
            .get(upload_id)
            .filter(|(k, _)| k == key)
            .ok_or_else(|| err("CompleteMultipartUpload", key, ErrorCode::NoSuchUpload))?;
        let sizes: Vec<(u32, Option<u64>)> = parts
            .iter()
            .map(|p| {
                let stored = up.1.get(&p.part_number);
                let ok = stored.is_some_and(|b| hex(&md5(b)) == p.etag);
                (
                    p.part_number,
                    if ok {
                        stored.map(|b| b.len() as u64)
                    } else {
                        None
                    },
                )
            })
            .collect();
        rules::check_complete(&sizes).map_err(|c| err("CompleteMultipartUpload", key, c))?;
        let mut all = Vec::new();
        for p in parts {
            if let Some(b) = up.1.get(&p.part_number) {
                all.extend_from_slice(b);
            }
        }
        s.uploads.remove(upload_id);
        let etag = format!("{}-{}", hex(&md5(&all)), parts.len());
        s.objects
            .insert(key.to_string(), (Bytes::from(all), etag.clone()));
        Ok(etag)
    }

    fn abort(&self, key: &str, upload_id: &str) -> Result<(), StoreError> {
        self.count("AbortMultipartUpload");
        self.lock()
            .uploads
            .remove(upload_id)
            .map(|_| ())
            .ok_or_else(|| err("AbortMultipartUpload", key, ErrorCode::NoSuchUpload))
    }

    fn list_uploads(&self, prefix: &str, _marker: &str) -> Result<UploadsPage, StoreError> {
        self.count("ListMultipartUploads");
        Ok(UploadsPage {
            uploads: self
                .lock()
                .uploads
                .iter()
                .filter(|(_, (k, _))| k.starts_with(prefix))
                .map(|(id, (k, _))| UploadMeta {
                    key: k.clone(),
                    upload_id: id.clone(),
                    initiated: None,
                })
                .collect(),
            next_marker: None,
        })
    }
}
