//! What the inode table costs per cached entry, counted by a global allocator:
//! every byte the table holds after a listing of 100,000 objects in a
//! backup-like tree (50 files per leaf directory), its maps included.

use cofferfs::fs::journal::Overlay;
use cofferfs::fs::view::{Table, ROOT};
use cofferfs::store::ObjectMeta;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Instant, SystemTime};

/// The system allocator, counting the bytes live.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: each call is passed straight to the system allocator; the counter
// only adds up the sizes asked for.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        System.realloc(p, l, new)
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

#[test]
fn a_cached_entry_costs_at_most_250_bytes_maps_included() {
    let objects: Vec<ObjectMeta> = (0..2)
        .flat_map(|h| (0..10).flat_map(move |a| (0..100).map(move |b| (h, a, b))))
        .flat_map(|(h, a, b)| {
            (0..50).map(move |k| ObjectMeta {
                key: format!("host-{h:02}/{a:03}/{b:03}/file-{k}"),
                size: 1234,
                etag: "0123456789abcdef0123456789abcdef".into(),
                last_modified: Some(SystemTime::UNIX_EPOCH),
            })
        })
        .collect();
    let overlay = Overlay::default();
    let before = LIVE.load(Ordering::Relaxed);
    let mut t = Table::new();
    t.apply_listing(ROOT, &objects, &overlay, Instant::now());
    let bytes = LIVE.load(Ordering::Relaxed) - before;
    let entries = t.len() as isize;
    assert_eq!(entries, 1 + 2 + 20 + 2000 + 100_000);
    let per_entry = bytes / entries;
    eprintln!("{entries} entries, {bytes} bytes: {per_entry} bytes per entry");
    // The issue asks for 300; 224 measured, the rest is room, not license.
    assert!(per_entry <= 250, "{per_entry} bytes per cached entry");
    drop(t);
}
