//! `FaultyStore`: an `ObjectStore` wrapper for tests that fails chosen calls on
//! demand, can play dead (a crashed mount's store), and keeps a ledger shared by
//! every wrapper of one coffer: which keys were written, and every attempt to
//! write a key twice. It also stamps Last-Modified as the service does.
//! It decides nothing about the filesystem and never retries.

use super::*;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// The operations a fault can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoreOp {
    Head,
    Get,
    Put,
    List,
    Initiate,
    UploadPart,
    Complete,
    Abort,
    ListParts,
    ListUploads,
}

/// Which keys a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Any,
    /// Keys outside `.cofferfs/` and under `.cofferfs/data/`: file bytes.
    Data,
    /// `.cofferfs/journal/` and `.cofferfs/checkpoint/`: metadata batches.
    Journal,
}

impl Scope {
    fn covers(self, key: &str) -> bool {
        let journal =
            key.starts_with(".cofferfs/journal/") || key.starts_with(".cofferfs/checkpoint/");
        match self {
            Scope::Any => true,
            Scope::Data => !journal,
            Scope::Journal => journal,
        }
    }
}

/// How a call fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// The service answers 503 ServiceUnavailable; nothing happened.
    Unavailable,
    /// The connection breaks before the request arrives; nothing happened.
    Transport,
    /// The request takes effect but its answer is lost (connection reset after
    /// the server committed): the caller sees a transport error.
    LostAnswer,
}

/// `count` next calls of `op` on keys in `scope` fail as `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    pub op: StoreOp,
    pub scope: Scope,
    pub kind: FaultKind,
    pub count: u32,
}

/// What all wrappers of one coffer saw written.
#[derive(Debug, Default)]
pub struct Ledger {
    inner: Mutex<LedgerInner>,
}

#[derive(Debug, Default)]
struct LedgerInner {
    /// Every key that became an object, in order.
    written: Vec<String>,
    /// When each object landed (what HEAD and listings report).
    stamped: HashMap<String, SystemTime>,
    /// Attempts to write a key that already holds an object, and objects
    /// written twice.
    violations: Vec<String>,
}

impl Ledger {
    pub fn new() -> Arc<Ledger> {
        Arc::new(Ledger::default())
    }

    fn lock(&self) -> MutexGuard<'_, LedgerInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many objects were written so far (a mark for `written_since`).
    pub fn mark(&self) -> usize {
        self.lock().written.len()
    }

    /// Keys written since `mark`.
    pub fn written_since(&self, mark: usize) -> Vec<String> {
        self.lock().written.get(mark..).unwrap_or_default().to_vec()
    }

    /// Every write-twice attempt so far.
    pub fn violations(&self) -> Vec<String> {
        self.lock().violations.clone()
    }

    fn landed(&self, key: &str) {
        let mut l = self.lock();
        if l.stamped.contains_key(key) {
            l.violations.push(format!("object {key:?} written twice"));
        }
        // HTTP dates have whole seconds.
        let now = SystemTime::now();
        let secs = now
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        l.stamped.insert(
            key.to_string(),
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs),
        );
        l.written.push(key.to_string());
    }

    fn stamp(&self, key: &str) -> Option<SystemTime> {
        self.lock().stamped.get(key).copied()
    }

    fn violation(&self, what: String) {
        self.lock().violations.push(what);
    }
}

/// A wrapper around one mount's view of the coffer.
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    ledger: Arc<Ledger>,
    faults: Mutex<Vec<Fault>>,
    dead: AtomicBool,
    /// Called after each put lands, before its answer returns (tests of races).
    after_put: Mutex<Option<PutHook>>,
}

type PutHook = Arc<dyn Fn(&str) + Send + Sync>;

impl FaultyStore {
    pub fn new(inner: Arc<dyn ObjectStore>, ledger: Arc<Ledger>) -> Arc<FaultyStore> {
        Arc::new(FaultyStore {
            inner,
            ledger,
            faults: Mutex::new(Vec::new()),
            dead: AtomicBool::new(false),
            after_put: Mutex::new(None),
        })
    }

    pub fn ledger(&self) -> &Arc<Ledger> {
        &self.ledger
    }

    /// Adds faults for the next calls.
    pub fn arm(&self, f: Fault) {
        self.lock_faults().push(f);
    }

    /// Runs `hook` with the key after every put lands, before it answers.
    pub fn after_put(&self, hook: impl Fn(&str) + Send + Sync + 'static) {
        *self.after_put.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(hook));
    }

    /// Drops faults not yet used.
    pub fn disarm(&self) {
        self.lock_faults().clear();
    }

    /// From now on every call fails and changes nothing (the mount has died).
    pub fn kill(&self) {
        self.dead.store(true, Ordering::SeqCst);
    }

    fn lock_faults(&self) -> MutexGuard<'_, Vec<Fault>> {
        self.faults.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The fault this call meets, if any (using one count of it).
    fn fault(&self, op: StoreOp, name: &'static str, key: &str) -> Result<(), StoreError> {
        if self.dead.load(Ordering::SeqCst) {
            return Err(transport(name, key, "the mount has died"));
        }
        let mut faults = self.lock_faults();
        let Some(i) = faults
            .iter()
            .position(|f| f.op == op && f.count > 0 && f.scope.covers(key))
        else {
            return Ok(());
        };
        let f = &mut faults[i];
        f.count -= 1;
        let kind = f.kind;
        if f.count == 0 {
            faults.remove(i);
        }
        match kind {
            FaultKind::Unavailable => Err(StoreError::Service {
                op: name,
                key: key.to_string(),
                code: ErrorCode::ServiceUnavailable,
                status: ErrorCode::ServiceUnavailable.status(),
                message: "injected".into(),
                request_id: "faulty".into(),
                trace_id: String::new(),
            }),
            FaultKind::Transport => Err(transport(name, key, "injected: connection reset")),
            // Handled by the caller: the request goes through first.
            FaultKind::LostAnswer => Err(StoreError::Invalid(LOST.into())),
        }
    }

    /// Runs a call, applying a fault if one is due.
    fn call<T>(
        &self,
        op: StoreOp,
        name: &'static str,
        key: &str,
        f: impl FnOnce() -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match self.fault(op, name, key) {
            Ok(()) => f(),
            Err(StoreError::Invalid(m)) if m == LOST => {
                f()?;
                Err(transport(
                    name,
                    key,
                    "injected: answer lost after the request took effect",
                ))
            }
            Err(e) => Err(e),
        }
    }

    fn stamp_meta(&self, mut m: ObjectMeta) -> ObjectMeta {
        m.last_modified = m.last_modified.or_else(|| self.ledger.stamp(&m.key));
        m
    }

    /// Records a write-twice attempt before it is sent.
    fn check_fresh(&self, op: &str, key: &str) {
        if let Ok(Some(_)) = self.inner.head(key) {
            self.ledger
                .violation(format!("{op} on {key:?}, which already holds an object"));
        }
    }
}

const LOST: &str = "faulty: lost answer";

fn transport(op: &'static str, key: &str, detail: &str) -> StoreError {
    StoreError::Transport {
        op,
        key: key.to_string(),
        detail: detail.to_string(),
    }
}

impl ObjectStore for FaultyStore {
    fn coffer(&self) -> &str {
        self.inner.coffer()
    }

    fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        self.call(StoreOp::Head, "HeadObject", key, || {
            Ok(self.inner.head(key)?.map(|m| self.stamp_meta(m)))
        })
    }

    fn get(&self, key: &str, range: Option<Range>) -> Result<GetResult, StoreError> {
        self.call(StoreOp::Get, "GetObject", key, || {
            self.inner.get(key, range)
        })
    }

    fn put(&self, key: &str, data: Bytes) -> Result<String, StoreError> {
        self.call(StoreOp::Put, "PutObject", key, || {
            self.check_fresh("PutObject", key);
            let etag = self.inner.put(key, data)?;
            self.ledger.landed(key);
            // Called unlocked: a hook that waits holds up only its own put.
            let hook = self
                .after_put
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            if let Some(hook) = hook {
                hook(key);
            }
            Ok(etag)
        })
    }

    fn list(&self, prefix: &str, marker: &str, max_keys: u32) -> Result<ListPage, StoreError> {
        self.call(StoreOp::List, "GetCoffer", prefix, || {
            let mut page = self.inner.list(prefix, marker, max_keys)?;
            page.objects = page
                .objects
                .into_iter()
                .map(|m| self.stamp_meta(m))
                .collect();
            Ok(page)
        })
    }

    fn initiate(&self, key: &str) -> Result<String, StoreError> {
        self.call(StoreOp::Initiate, "InitiateMultipartUpload", key, || {
            self.check_fresh("InitiateMultipartUpload", key);
            self.inner.initiate(key)
        })
    }

    fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        data: Bytes,
        md5: [u8; 16],
    ) -> Result<String, StoreError> {
        self.call(StoreOp::UploadPart, "UploadPart", key, || {
            self.inner
                .upload_part(key, upload_id, part_number, data, md5)
        })
    }

    fn list_parts(&self, key: &str, upload_id: &str, marker: u32) -> Result<PartsPage, StoreError> {
        self.call(StoreOp::ListParts, "ListParts", key, || {
            self.inner.list_parts(key, upload_id, marker)
        })
    }

    fn complete(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[CompletedPart],
        size: u64,
    ) -> Result<String, StoreError> {
        self.call(StoreOp::Complete, "CompleteMultipartUpload", key, || {
            let etag = self.inner.complete(key, upload_id, parts, size)?;
            self.ledger.landed(key);
            Ok(etag)
        })
    }

    fn abort(&self, key: &str, upload_id: &str) -> Result<(), StoreError> {
        self.call(StoreOp::Abort, "AbortMultipartUpload", key, || {
            self.inner.abort(key, upload_id)
        })
    }

    fn list_uploads(&self, prefix: &str, marker: &str) -> Result<UploadsPage, StoreError> {
        self.call(StoreOp::ListUploads, "ListMultipartUploads", prefix, || {
            self.inner.list_uploads(prefix, marker)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    #[test]
    fn armed_faults_fail_the_next_matching_calls_only() {
        let ledger = Ledger::new();
        let s = FaultyStore::new(Arc::new(MemoryStore::new()), ledger.clone());
        s.arm(Fault {
            op: StoreOp::Put,
            scope: Scope::Data,
            kind: FaultKind::Unavailable,
            count: 1,
        });
        s.put(".cofferfs/journal/x", Bytes::from_static(b"j"))
            .expect("journal keys are out of scope");
        let e = s.put("a", Bytes::from_static(b"1")).expect_err("fault");
        assert_eq!(e.code(), Some(&ErrorCode::ServiceUnavailable));
        s.put("a", Bytes::from_static(b"1")).expect("used up");
        assert!(s
            .head("a")
            .expect("head")
            .and_then(|m| m.last_modified)
            .is_some());
        assert_eq!(ledger.written_since(0), vec![".cofferfs/journal/x", "a"]);
        assert!(ledger.violations().is_empty());
        let _ = s.put("a", Bytes::from_static(b"2"));
        assert_eq!(
            ledger.violations().len(),
            1,
            "a second PutObject on a key is noted"
        );
    }

    #[test]
    fn a_lost_answer_takes_effect_and_a_dead_store_refuses_everything() {
        let s = FaultyStore::new(Arc::new(MemoryStore::new()), Ledger::new());
        s.arm(Fault {
            op: StoreOp::Put,
            scope: Scope::Any,
            kind: FaultKind::LostAnswer,
            count: 1,
        });
        assert!(matches!(
            s.put("a", Bytes::from_static(b"1")),
            Err(StoreError::Transport { .. })
        ));
        assert!(s.head("a").expect("head").is_some());
        s.kill();
        assert!(s.head("a").is_err());
        assert!(s.put("b", Bytes::from_static(b"1")).is_err());
    }
}
