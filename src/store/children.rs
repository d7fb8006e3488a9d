//! Delimiter emulation: GetCoffer has no `delimiter`, so the children of one
//! directory prefix (objects right under it, names of subdirectories) are
//! found by listing pages and moving `marker` past a subdirectory's keys once
//! they are known to be many. Also answers what one name is (`named`). Knows
//! nothing of the journal: the caller says, a page at a time, which keys it
//! shows. Holds one page and one pending subdirectory, no more.

use super::{ListPage, ObjectMeta, ObjectStore, StoreError};
use std::collections::VecDeque;
use std::time::SystemTime;

/// Keys per request (the service's maximum).
pub const PAGE: u32 = 1000;

/// Keys of the request after a jump past a subdirectory that filled a whole
/// page: the next is likely as big, and of a page that only says so, every
/// key but the first is wasted.
const AFTER_JUMP: u32 = 100;

/// Keys per request of a `named` lookup: enough to take a leaf directory
/// whole, few enough that names sharing the prefix (`file-1`, `file-10`, …)
/// cost little to pass over.
pub const NAMED_PAGE: u32 = 200;

/// Requests a `named` lookup sends at most.
pub const NAMED_REQUESTS: u32 = 2;

/// The highest character. `p` followed by it, as a marker, sorts after every
/// key that starts with `p`, except keys that go on with this very character
/// (a noncharacter nobody names files with): those are listed, not lost.
const LAST: char = '\u{10FFFF}';

/// What the caller's view makes of one listed key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyView {
    /// Shown at its own path.
    Shown,
    /// Not shown as an object (hidden, or the caller shows that path from
    /// elsewhere); keys beneath it may be.
    Skipped,
    /// Not shown, and neither is any key beneath `key[..n]` + `/`: a hide
    /// covers the path `key[..n]` (`n` is the key's length or a `/` in it).
    HiddenBelow(usize),
}

/// One name directly under the listed prefix.
#[derive(Debug, Clone, PartialEq)]
pub enum Child {
    /// An object at `prefix` + name.
    Object(ObjectMeta),
    /// Keys shown beneath `prefix` + `name` + `/`: a directory.
    Dir {
        name: String,
        /// The time of the first shown key beneath it.
        mtime: Option<SystemTime>,
        /// Every shown key beneath it when the pages listed held them all
        /// (the listing never jumped past any); `None` otherwise.
        keys: Option<Vec<ObjectMeta>>,
    },
}

/// The subdirectory whose keys are being read.
struct Pending {
    name: String,
    /// `prefix` + name + `/`.
    under: String,
    /// Keys read beneath it, shown or not.
    count: usize,
    shown: bool,
    mtime: Option<SystemTime>,
    keys: Option<Vec<ObjectMeta>>,
}

/// The children of a prefix, in key order: each object right under it, and
/// each subdirectory once (after its keys, or once the listing jumped past
/// them). A subdirectory whose keys fill half a page is jumped past at the
/// next request (`marker` = its prefix + U+10FFFF); one with fewer is read
/// through, so a page holding several small subdirectories costs no extra
/// request and hands them over whole. After a jump past a subdirectory that
/// filled a whole page the next request asks for `AFTER_JUMP` keys (one
/// filling all of them is jumped past again), and each other request asks
/// for four times more than the last, up to a page. So a listing costs at
/// most a request per subdirectory jumped past plus the pages of the rest;
/// without a subdirectory of a page or more, no more than listing every key.
pub struct ListChildren<'a, F> {
    store: &'a dyn ObjectStore,
    /// The directory prefix (`""` or ending in `/`).
    prefix: String,
    /// `named`: the one name asked for.
    only: Option<String>,
    page_size: u32,
    /// Keys of the page being read, and of the next request.
    size: u32,
    next_size: u32,
    max_requests: u32,
    view: F,
    marker: String,
    /// Whether a request may still show keys that matter.
    more: bool,
    page: std::vec::IntoIter<(ObjectMeta, KeyView)>,
    /// The last key of the page being read (where a plain next page starts).
    page_end: String,
    /// Keys starting with this are all hidden (`KeyView::HiddenBelow`).
    skip: Option<String>,
    cur: Option<Pending>,
    out: VecDeque<Child>,
    requests: u32,
}

impl<'a, F> ListChildren<'a, F>
where
    F: FnMut(&[ObjectMeta]) -> Vec<KeyView>,
{
    /// The children of directory prefix `prefix` (`""` or ending in `/`).
    /// `view` classifies each page's keys (one call per page).
    pub fn new(store: &'a dyn ObjectStore, prefix: &str, view: F) -> ListChildren<'a, F> {
        ListChildren {
            store,
            prefix: prefix.to_string(),
            only: None,
            page_size: PAGE,
            size: PAGE,
            next_size: PAGE,
            max_requests: u32::MAX,
            view,
            marker: String::new(),
            more: true,
            page: Vec::new().into_iter(),
            page_end: String::new(),
            skip: None,
            cur: None,
            out: VecDeque::new(),
            requests: 0,
        }
    }

    /// Only `name` under `prefix`: its object and its directory, from one
    /// request with prefix `prefix` + `name` (`NAMED_PAGE` keys). A second is sent only when the
    /// first page holds nothing decisive: it is full of keys that sort before
    /// `name/` (`name-1`, `name.bak`, …) or of hidden keys beneath `name/`.
    /// If that is still not enough, keys beneath `name/` that are hidden
    /// under some deeper hide are taken to hide visible ones after them.
    pub fn named(
        store: &'a dyn ObjectStore,
        prefix: &str,
        name: &str,
        view: F,
    ) -> ListChildren<'a, F> {
        let mut l = ListChildren::new(store, prefix, view).page_size(NAMED_PAGE);
        l.only = Some(name.to_string());
        l.max_requests = NAMED_REQUESTS;
        l
    }

    /// Keys per request, 1..=1000 (tests use small pages).
    pub fn page_size(mut self, n: u32) -> Self {
        self.page_size = n.clamp(1, PAGE);
        self.next_size = self.page_size;
        self
    }

    /// GetCoffer requests sent so far.
    pub fn requests(&self) -> u32 {
        self.requests
    }

    fn request_prefix(&self) -> String {
        match &self.only {
            Some(n) => format!("{}{n}", self.prefix),
            None => self.prefix.clone(),
        }
    }

    /// Stops asking: nothing later in key order can matter.
    fn stop(&mut self) {
        self.more = false;
        self.page = Vec::new().into_iter();
    }

    fn finish(&mut self) {
        if let Some(p) = self.cur.take() {
            if p.shown {
                self.out.push_back(Child::Dir {
                    name: p.name,
                    mtime: p.mtime,
                    keys: p.keys,
                });
            }
        }
    }

    /// Takes one listed key.
    fn take(&mut self, meta: ObjectMeta, view: KeyView) {
        let Some(rest) = meta.key.strip_prefix(self.prefix.as_str()) else {
            return;
        };
        if let Some(s) = &self.skip {
            if meta.key.starts_with(s.as_str()) {
                return;
            }
            if meta.key > *s {
                self.skip = None;
            }
        }
        let (child, below) = match rest.find('/') {
            Some(i) => (&rest[..i], true),
            None => (rest, false),
        };
        if let Some(name) = self.only.as_deref().filter(|n| *n != child) {
            // `name` followed by a byte below `/` sorts before `name/`; one
            // above, after all of it: then nothing more matters.
            let past = matches!(
                rest.strip_prefix(name).map(str::as_bytes),
                Some([b, ..]) if *b > b'/'
            );
            if past {
                self.stop();
            }
            return;
        }
        if self
            .cur
            .as_ref()
            .is_some_and(|p| !(below && p.name == child))
        {
            self.finish();
        }
        if !below {
            match view {
                KeyView::Shown => self.out.push_back(Child::Object(meta)),
                KeyView::Skipped => {}
                KeyView::HiddenBelow(n) => self.hide_below(&meta.key, n),
            }
            return;
        }
        if self.cur.is_none() {
            let under = format!("{}{child}/", self.prefix);
            self.cur = Some(Pending {
                name: child.to_string(),
                under,
                count: 0,
                shown: false,
                mtime: None,
                keys: Some(Vec::new()),
            });
        }
        match view {
            KeyView::Shown => {
                if let Some(p) = &mut self.cur {
                    p.count += 1;
                    p.shown = true;
                    if p.mtime.is_none() {
                        p.mtime = meta.last_modified;
                    }
                    // A `name/` key made by other tools says only "directory".
                    if let Some(keys) = p.keys.as_mut().filter(|_| meta.key != p.under) {
                        keys.push(meta);
                    }
                }
            }
            KeyView::Skipped => {
                if let Some(p) = &mut self.cur {
                    p.count += 1;
                }
            }
            KeyView::HiddenBelow(n) => self.hide_below(&meta.key, n),
        }
    }

    /// Every key beneath `key[..n]` is hidden: skip them.
    fn hide_below(&mut self, key: &str, n: usize) {
        let root = key.get(..n).unwrap_or(key);
        let below = format!("{root}/");
        let whole = match &self.only {
            // The name asked for is hidden whole: nothing beneath it shows.
            Some(name) => format!("{}{name}/", self.prefix).starts_with(&below),
            // The listed directory itself is hidden: no key shows.
            None => self.prefix.starts_with(&below),
        };
        if whole {
            self.stop();
        }
        self.skip = Some(below);
    }

    /// Where the next request starts, once the page read ended truncated.
    fn next_marker(&mut self) -> String {
        let mut m = self.page_end.clone();
        if let Some(s) = &self.skip {
            if m.starts_with(s.as_str()) {
                m = m.max(format!("{s}{LAST}"));
            }
        }
        // Big: half a full page, or all of a page shrunk after a jump.
        let big = if self.size >= self.page_size {
            self.size.div_ceil(2)
        } else {
            self.size
        };
        // Whether a subdirectory filled the whole page and was jumped past.
        let mut filled = false;
        if let Some(p) = &mut self.cur {
            if m.starts_with(p.under.as_str()) && p.shown && p.count >= big as usize {
                m = m.max(format!("{}{LAST}", p.under));
                p.keys = None;
                filled = p.count >= self.size as usize;
            }
        }
        self.next_size = if filled {
            AFTER_JUMP.min(self.page_size)
        } else {
            self.size.saturating_mul(4).min(self.page_size)
        };
        if let Some(name) = &self.only {
            // Past `name` + bytes below `/`, straight to `name/`.
            let dir = format!("{}{name}/", self.prefix);
            if m < dir {
                m = m.max(format!("{}{name}.{LAST}", self.prefix));
            }
        }
        m
    }

    /// Fetches the next page; `Err` ends the listing.
    fn fetch(&mut self) -> Result<(), StoreError> {
        if self.requests > 0 {
            let m = self.next_marker();
            if m <= self.marker {
                self.more = false;
                return Err(StoreError::BadAnswer {
                    op: "GetCoffer",
                    key: self.prefix.clone(),
                    detail: "truncated listing did not advance its marker".into(),
                    request_id: String::new(),
                });
            }
            self.marker = m;
        }
        let prefix = self.request_prefix();
        let ListPage {
            objects,
            next_marker,
        } = self.store.list(&prefix, &self.marker, self.next_size)?;
        self.requests += 1;
        self.size = self.next_size;
        let views = (self.view)(&objects);
        self.more = next_marker.is_some();
        self.page_end = next_marker
            .filter(|m| !m.is_empty())
            .or_else(|| objects.last().map(|o| o.key.clone()))
            .unwrap_or_default();
        let views = views.into_iter().chain(std::iter::repeat(KeyView::Shown));
        self.page = objects
            .into_iter()
            .zip(views)
            .collect::<Vec<_>>()
            .into_iter();
        Ok(())
    }

    /// A `named` lookup out of requests with the question open.
    fn give_up(&mut self) {
        if let (Some(p), Some(name)) = (&mut self.cur, &self.only) {
            if p.name == *name {
                // Hidden keys beneath the name, and more after them: as
                // before delimiter emulation, they are taken to hide visible
                // keys rather than a whole directory.
                p.shown = true;
                p.keys = None;
            }
        }
        self.more = false;
    }
}

impl<F> Iterator for ListChildren<'_, F>
where
    F: FnMut(&[ObjectMeta]) -> Vec<KeyView>,
{
    type Item = Result<Child, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(c) = self.out.pop_front() {
                return Some(Ok(c));
            }
            if let Some((meta, view)) = self.page.next() {
                self.take(meta, view);
                continue;
            }
            if !self.more {
                self.cur.as_ref()?;
                self.finish();
                continue;
            }
            if let (Some(p), Some(_)) = (&mut self.cur, &self.only) {
                if p.shown && self.requests > 0 {
                    // The name is a directory, and its keys go on: decided.
                    p.keys = None;
                    self.more = false;
                    continue;
                }
            }
            if self.requests >= self.max_requests {
                self.give_up();
                continue;
            }
            if let Err(e) = self.fetch() {
                self.more = false;
                self.cur = None;
                return Some(Err(e));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use bytes::Bytes;

    fn store(keys: &[String]) -> MemoryStore {
        let s = MemoryStore::default();
        for k in keys {
            s.put(k, Bytes::from_static(b"x")).expect("put");
        }
        s
    }

    fn keys(list: &[&str]) -> Vec<String> {
        list.iter().map(|k| k.to_string()).collect()
    }

    fn many(dir: &str, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{dir}/{i:03}")).collect()
    }

    /// A view hiding every key at or beneath the given paths.
    fn hiding<'h>(roots: &'h [&str]) -> impl FnMut(&[ObjectMeta]) -> Vec<KeyView> + 'h {
        move |page| {
            page.iter()
                .map(|m| {
                    let root = roots
                        .iter()
                        .filter(|r| m.key == **r || m.key.starts_with(&format!("{r}/")))
                        .min_by_key(|r| r.len());
                    match root {
                        Some(r) => KeyView::HiddenBelow(r.len()),
                        None => KeyView::Shown,
                    }
                })
                .collect()
        }
    }

    /// Objects as their name, directories as `name/N` (N keys handed over)
    /// or `name/…` (jumped past); and the requests sent.
    fn show<F: FnMut(&[ObjectMeta]) -> Vec<KeyView>>(l: ListChildren<'_, F>) -> (Vec<String>, u32) {
        let prefix = l.prefix.clone();
        let mut l = l;
        let mut out = Vec::new();
        for c in l.by_ref() {
            out.push(match c.expect("listing") {
                Child::Object(m) => m.key[prefix.len()..].to_string(),
                Child::Dir {
                    name,
                    keys: Some(k),
                    ..
                } => format!("{name}/{}", k.len()),
                Child::Dir {
                    name, keys: None, ..
                } => format!("{name}/…"),
            });
        }
        (out, l.requests())
    }

    #[test]
    fn a_directory_lists_its_objects_and_subdirectories_in_key_order() {
        let s = store(&keys(&[
            "c", "d/a", "d/c", "d/c!", "d/c-x", "d/c.x", "d/c/1", "d/c/2", "d/c0", "d/e/f/g",
            "d/m/", "d0",
        ]));
        let (got, requests) = show(ListChildren::new(&s, "d/", hiding(&[])));
        assert_eq!(
            got,
            ["a", "c", "c!", "c-x", "c.x", "c/2", "c0", "e/1", "m/0"],
            "a name both an object and a prefix is both; `m/` alone is a directory"
        );
        assert_eq!(requests, 1);
    }

    #[test]
    fn a_big_subdirectory_is_jumped_past_and_small_ones_come_whole() {
        let mut k = many("d/a", 3);
        k.extend(many("d/big", 100));
        k.extend(many("d/c", 3));
        k.push("d/z".into());
        let s = store(&k);
        let (got, requests) = show(ListChildren::new(&s, "d/", hiding(&[])).page_size(10));
        assert_eq!(got, ["a/3", "big/…", "c/3", "z"]);
        assert_eq!(requests, 2, "listing every key would take 11");
        // A small one across a page boundary is read through, not jumped.
        let mut k = many("d/a", 8);
        k.extend(many("d/b", 4));
        k.push("d/c".into());
        let s = store(&k);
        let (got, requests) = show(ListChildren::new(&s, "d/", hiding(&[])).page_size(10));
        assert_eq!((got, requests), (keys(&["a/8", "b/4", "c"]), 2));
    }

    /// A store that remembers each listing's `max-keys`.
    struct Sizes(MemoryStore, std::sync::Mutex<Vec<u32>>);

    impl ObjectStore for Sizes {
        fn coffer(&self) -> &str {
            self.0.coffer()
        }
        fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
            self.0.head(key)
        }
        fn get(
            &self,
            key: &str,
            range: Option<crate::store::Range>,
        ) -> Result<crate::store::GetResult, StoreError> {
            self.0.get(key, range)
        }
        fn put(&self, key: &str, data: Bytes) -> Result<String, StoreError> {
            self.0.put(key, data)
        }
        fn list(&self, prefix: &str, marker: &str, max: u32) -> Result<ListPage, StoreError> {
            self.1.lock().expect("sizes").push(max);
            self.0.list(prefix, marker, max)
        }
        fn initiate(&self, key: &str) -> Result<String, StoreError> {
            self.0.initiate(key)
        }
        fn upload_part(
            &self,
            key: &str,
            id: &str,
            n: u32,
            data: Bytes,
            md5: [u8; 16],
        ) -> Result<String, StoreError> {
            self.0.upload_part(key, id, n, data, md5)
        }
        fn list_parts(
            &self,
            key: &str,
            id: &str,
            marker: u32,
        ) -> Result<crate::store::PartsPage, StoreError> {
            self.0.list_parts(key, id, marker)
        }
        fn complete(
            &self,
            key: &str,
            id: &str,
            parts: &[crate::store::CompletedPart],
            size: u64,
        ) -> Result<String, StoreError> {
            self.0.complete(key, id, parts, size)
        }
        fn abort(&self, key: &str, id: &str) -> Result<(), StoreError> {
            self.0.abort(key, id)
        }
        fn list_uploads(
            &self,
            prefix: &str,
            marker: &str,
        ) -> Result<crate::store::UploadsPage, StoreError> {
            self.0.list_uploads(prefix, marker)
        }
    }

    #[test]
    fn after_a_jump_past_a_whole_page_pages_shrink_and_grow_back_over_small_children() {
        let mut k = Vec::new();
        for big in ["d/a", "d/b", "d/c"] {
            k.extend(many(big, 1100));
        }
        for leaf in 0..30 {
            k.extend(many(&format!("d/leaf{leaf:02}"), 40));
        }
        let s = Sizes(store(&k), Default::default());
        let (got, requests) = show(ListChildren::new(&s, "d/", hiding(&[])));
        assert_eq!(got.len(), 33);
        assert!(got[..3].iter().all(|g| g.ends_with("/…")), "{got:?}");
        assert!(got[3..].iter().all(|g| g.ends_with("/40")), "{got:?}");
        // a: a full page; b, c: a small one each; then the leaves, growing.
        let sizes = s.1.lock().expect("sizes").clone();
        assert_eq!(sizes, [1000, 100, 100, 100, 400, 1000]);
        assert_eq!(requests, 6);
        // Subdirectories of half a page: jumped past, but pages stay full,
        // and no more requests than listing every key.
        let mut k = Vec::new();
        for mid in ["d/a", "d/b", "d/c", "d/e"] {
            k.extend(many(mid, 500));
        }
        k.push("d/f".into());
        let s = Sizes(store(&k), Default::default());
        let (got, requests) = show(ListChildren::new(&s, "d/", hiding(&[])));
        assert_eq!(got, ["a/500", "b/…", "c/500", "e/…", "f"]);
        assert_eq!(*s.1.lock().expect("sizes"), [1000, 1000, 1000]);
        assert_eq!(requests, 3);
    }

    #[test]
    fn a_name_is_a_file_a_directory_both_or_nothing_after_one_request() {
        let mut k = keys(&["d/n", "d/n-1", "d/n.x", "d/n/a", "d/n/b", "d/n0"]);
        k.extend(many("d/big", 100));
        let s = store(&k);
        let named = |name| ListChildren::named(&s, "d/", name, hiding(&[])).page_size(10);
        assert_eq!(show(named("n")), (keys(&["n", "n/2"]), 1));
        assert_eq!(show(named("m")), (vec![], 1));
        assert_eq!(show(named("big")), (keys(&["big/…"]), 1));
        assert_eq!(show(named("n-1")), (keys(&["n-1"]), 1));
        // A page full of names that sort before `x/`: one more request.
        let mut k: Vec<String> = (0..10).map(|i| format!("d/x-{i}")).collect();
        k.push("d/x/a".into());
        let s = store(&k);
        let (got, requests) = show(ListChildren::named(&s, "d/", "x", hiding(&[])).page_size(5));
        assert_eq!((got, requests), (keys(&["x/1"]), 2));
    }

    #[test]
    fn hidden_keys_never_make_a_directory_but_do_not_hide_visible_ones() {
        let mut k = many("d/h", 30);
        k.extend(many("d/p/x", 30));
        k.push("d/p/y".into());
        k.push("d/q".into());
        let s = store(&k);
        let hidden = ["d/h", "d/p/x"];
        let (got, requests) = show(ListChildren::new(&s, "d/", hiding(&hidden)).page_size(5));
        assert_eq!(got, ["p/1", "q"]);
        assert_eq!(
            requests, 3,
            "one page into each hidden subtree, then past it"
        );
        let named = |name| ListChildren::named(&s, "d/", name, hiding(&hidden)).page_size(5);
        assert_eq!(
            show(named("h")),
            (vec![], 1),
            "hidden whole: decided at once"
        );
        assert_eq!(show(named("p")), (keys(&["p/1"]), 2));
        // The listed directory itself hidden: nothing shows, nothing more is asked.
        let (got, requests) = show(ListChildren::new(&s, "d/h/", hiding(&hidden)).page_size(5));
        assert_eq!((got, requests), (vec![], 1));
    }

    #[test]
    fn a_name_with_hidden_keys_beyond_two_pages_is_taken_as_a_directory() {
        let mut k = many("d/n/a", 10);
        k.extend(many("d/n/b", 10));
        k.extend(many("d/n/c", 10));
        let s = store(&k);
        let hidden = ["d/n/a", "d/n/b", "d/n/c"];
        let (got, requests) =
            show(ListChildren::named(&s, "d/", "n", hiding(&hidden)).page_size(5));
        assert_eq!((got, requests), (keys(&["n/…"]), NAMED_REQUESTS));
        // A full listing reads on and finds nothing shown.
        let (got, _) = show(ListChildren::new(&s, "d/", hiding(&hidden)).page_size(5));
        assert!(got.is_empty());
    }
}
