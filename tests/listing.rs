//! Listing without a delimiter, against a real `cofferfs serve`: the markers
//! the server accepts, `ListChildren` (pages, jumps past big subtrees, keys
//! with bytes below and above `/`, a prefix that is also a key, hidden keys),
//! and what a mount pays for `ls` of a big tree and for revalidating one
//! directory. Request counts come from the server's `/-/stats`.

mod common;

use bytes::Bytes;
use cofferfs::store::{Child, KeyView, ListChildren, ObjectMeta, ObjectStore};
use common::{client, put_all, sh, Mount, Server};
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

fn many(dir: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{dir}/{i:03}")).collect()
}

fn keys(list: &[&str]) -> Vec<String> {
    list.iter().map(|k| k.to_string()).collect()
}

/// Requests that read the coffer's names: listings and HEADs.
fn reads(server: &Server) -> u64 {
    server.requests("GetCoffer") + server.requests("HeadObject")
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
                root.map_or(KeyView::Shown, |r| KeyView::HiddenBelow(r.len()))
            })
            .collect()
    }
}

/// Objects as their name, directories as `name/N` (N keys handed over) or
/// `name/…` (jumped past).
fn show(
    prefix: &str,
    l: impl Iterator<Item = Result<Child, cofferfs::store::StoreError>>,
) -> Vec<String> {
    l.map(|c| match c.expect("listing") {
        Child::Object(m) => m.key[prefix.len()..].to_string(),
        Child::Dir {
            name,
            keys: Some(k),
            ..
        } => format!("{name}/{}", k.len()),
        Child::Dir {
            name, keys: None, ..
        } => format!("{name}/…"),
    })
    .collect()
}

#[test]
fn the_server_lists_keys_strictly_after_any_marker_in_byte_order() {
    let server = Server::start(&[]);
    let c = client(&server.endpoint);
    let all = keys(&[
        "d/c",
        "d/c!",
        "d/c-x",
        "d/c.x",
        "d/c/1",
        "d/c/é",
        "d/c/\u{10FFFF}x",
        "d/c0",
        "d/d",
    ]);
    put_all(&c, &all);
    c.put("e", Bytes::from_static(b"x")).expect("put");
    let after = |marker: &str| -> Vec<String> {
        let page = c.list("d/", marker, 1000).expect("list");
        assert!(page.next_marker.is_none());
        page.objects.into_iter().map(|o| o.key).collect()
    };
    assert_eq!(after(""), all);
    assert_eq!(after("a"), all, "a marker before the prefix starts it");
    assert_eq!(after("d/c"), all[1..], "an existing key: strictly after");
    assert_eq!(after("d/c/"), all[4..], "not a key: what sorts after it");
    assert_eq!(
        after("d/c.\u{10FFFF}"),
        all[4..],
        "past `c` + bytes below `/`"
    );
    assert_eq!(
        after("d/c/\u{10FFFF}"),
        all[6..],
        "a key that goes on is after"
    );
    assert_eq!(after("d/c/\u{10FFFF}y"), all[7..], "past a subtree");
    assert_eq!(after("d/d"), Vec::<String>::new());
    assert!(after("z").is_empty());
    // A page: NextMarker is its last key.
    let page = c.list("d/", "d/c!", 2).expect("list");
    let got: Vec<&str> = page.objects.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(got, ["d/c-x", "d/c.x"]);
    assert_eq!(page.next_marker.as_deref(), Some("d/c.x"));
}

#[test]
fn listing_children_jumps_past_big_subtrees_and_reads_small_ones_whole() {
    let server = Server::start(&[]);
    let c = client(&server.endpoint);
    let mut k = many("d/a", 3);
    k.extend(many("d/big", 200));
    k.extend(many("d/c", 3));
    k.extend(keys(&["d/c", "d/c-x", "d/c.x", "d/c0", "d/z", "d0"]));
    put_all(&c, &k);
    let count = |f: &mut dyn FnMut() -> Vec<String>| {
        let before = server.requests("GetCoffer");
        let got = f();
        (got, server.requests("GetCoffer") - before)
    };

    let (got, requests) =
        count(&mut || show("d/", ListChildren::new(&c, "d/", hiding(&[])).page_size(10)));
    assert_eq!(
        got,
        ["a/3", "big/…", "c", "c-x", "c.x", "c/3", "c0", "z"],
        "a name that is both a key and a prefix is both"
    );
    assert_eq!(requests, 2, "every key would take 22 pages of 10");

    // One name: one request, whatever lies beneath it.
    for (name, want) in [
        ("c", vec!["c", "c/3"]),
        ("big", vec!["big/…"]),
        ("c-x", vec!["c-x"]),
        ("nothing", vec![]),
    ] {
        let (got, requests) = count(&mut || {
            show(
                "d/",
                ListChildren::named(&c, "d/", name, hiding(&[])).page_size(10),
            )
        });
        assert_eq!((got, requests), (keys(&want), 1), "{name}");
    }

    // Hidden keys: a hidden subtree is jumped past and makes no directory;
    // one hidden key beneath `c` leaves the rest of it.
    let hidden = ["d/big", "d/c/001"];
    let (got, requests) = count(&mut || {
        show(
            "d/",
            ListChildren::new(&c, "d/", hiding(&hidden)).page_size(10),
        )
    });
    assert_eq!(got, ["a/3", "c", "c-x", "c.x", "c/2", "c0", "z"]);
    assert_eq!(requests, 2);
    let (got, requests) = count(&mut || {
        show(
            "d/",
            ListChildren::named(&c, "d/", "big", hiding(&hidden)).page_size(10),
        )
    });
    assert_eq!((got, requests), (vec![], 1));
}

/// `host-H/NNN/MMM/file-K` for these hosts and NNN: 25 leaves of 50 files
/// in each NNN (1,250 keys).
fn backup_tree(hosts: &[usize], nnn: std::ops::Range<usize>) -> Vec<String> {
    let mut k = Vec::new();
    for h in hosts {
        for n in nnn.clone() {
            for m in 0..25 {
                for f in 0..50 {
                    k.push(format!("host-{h}/{n:03}/{m:03}/file-{f}"));
                }
            }
        }
    }
    k
}

/// An open directory: the kernel holds it, so it never forgets it (as it
/// would on a drop_caches anywhere on the machine, and the table would let go
/// of its listing). Opening lists it, unless listed within the TTL.
fn hold(dir: &std::path::Path) -> std::fs::File {
    std::fs::File::open(dir).expect("open the directory")
}

fn sleep_until(t: Instant) {
    std::thread::sleep(t.saturating_duration_since(Instant::now()));
}

fn ls(dir: &std::path::Path, flags: &str) -> Vec<String> {
    let out = sh(
        &format!("ls {flags} '{}'", dir.display()),
        Duration::from_secs(60),
    );
    assert!(out.ok, "ls {}: {}", dir.display(), out.stderr);
    out.stdout.lines().map(str::to_string).collect()
}

#[test]
fn a_cold_ls_costs_requests_per_child_not_per_key() {
    let server = Server::start(&[]);
    let c = client(&server.endpoint);
    put_all(&c, &backup_tree(&[0, 1], 0..2));

    // The root of 5,000 keys: a page into each host, then past it.
    let m = Mount::start(&server, &[]);
    let before = reads(&server);
    assert_eq!(ls(&m.dir, ""), ["host-0", "host-1"]);
    let first_ls = reads(&server) - before;
    assert!(
        first_ls <= 3,
        "ls / took {first_ls} requests; every key is 5 pages"
    );
    // Listed (and held, see `hold`), a directory counts its subdirectories.
    let _held = hold(&m.path("host-0"));
    let nlink = || std::fs::metadata(m.path("host-0")).expect("stat").nlink();
    // The kernel keeps the attributes it read for up to 1 s.
    assert!(
        common::wait_for(Duration::from_secs(5), || nlink() == 4),
        "links of a listed host: {}",
        nlink()
    );

    // A leaf of a cold mount: one request a level, the last fills the leaf.
    let cold = Mount::start(&server, &[]);
    let before = reads(&server);
    let leaf = ls(&cold.path("host-1/001/017"), "-l");
    let leaf_cost = reads(&server) - before;
    assert_eq!(leaf.len(), 51, "total line and 50 files: {leaf:?}");
    let sizes = leaf.iter().skip(1).map(|l| l.split_whitespace().nth(4));
    assert!(sizes.clone().all(|s| s == Some("1")), "sizes: {leaf:?}");
    assert!(
        leaf_cost <= 3,
        "cold ls -l of a leaf took {leaf_cost} requests"
    );

    // Half as many keys again: the root costs the same.
    put_all(&c, &backup_tree(&[0, 1], 2..3));
    let grown = Mount::start(&server, &[]);
    let before = reads(&server);
    assert_eq!(ls(&grown.dir, ""), ["host-0", "host-1"]);
    assert_eq!(reads(&server) - before, first_ls);
}

#[test]
fn each_directory_expires_on_its_own() {
    let server = Server::start(&[]);
    let c = client(&server.endpoint);
    // `top` holds more than a page: no lookup's page lists it whole.
    let mut k = many("top/x", 1000);
    k.extend(keys(&["top/y/f", "top/g", "other"]));
    put_all(&c, &k);
    let ttl = Duration::from_secs(6);
    let m = Mount::start(&server, &["--metadata-ttl", "6s"]);
    let t0 = Instant::now();
    assert_eq!(ls(&m.dir, ""), ["other", "top"]);
    std::thread::sleep(Duration::from_secs(3));
    let listed = Instant::now();
    assert_eq!(ls(&m.path("top"), ""), ["g", "x", "y"]);
    // Held, so that the kernel never forgets it (a drop_caches anywhere on
    // the machine would): the table would let go of its listing.
    let _held = hold(&m.path("top"));
    // The root's listing has expired, `top`'s has not.
    sleep_until(t0 + ttl + Duration::from_millis(500));
    let before = reads(&server);
    assert_eq!(ls(&m.path("top"), ""), ["g", "x", "y"]);
    let cost = reads(&server) - before;
    assert!(
        listed.elapsed() < ttl,
        "the machine was too slow for this test's timing"
    );
    // One request to confirm `top` itself (its confirmation came from the
    // root's listing), none to list it; at most one more from the journal
    // reload that runs every TTL. Were `top` listed as part of the root's
    // subtree, it would have expired with it: two more.
    assert!(
        cost <= 2,
        "ls of a directory listed within the TTL took {cost} requests"
    );
    // Expired, it is listed again: its two children's pages.
    sleep_until(listed + ttl + Duration::from_millis(500));
    c.put("top/new", Bytes::from_static(b"x")).expect("put");
    let before = reads(&server);
    assert_eq!(ls(&m.path("top"), ""), ["g", "new", "x", "y"]);
    let cost = reads(&server) - before;
    assert!(
        (2..=3).contains(&cost),
        "relisting top took {cost} requests"
    );
}

#[test]
fn a_batch_from_another_mount_relists_only_the_directories_it_touched() {
    let server = Server::start(&[]);
    let c = client(&server.endpoint);
    let mut k = many("big", 1500);
    k.push("a/old".into());
    put_all(&c, &k);
    let writer = Mount::start(&server, &[]);
    let ttl = Duration::from_secs(6);
    let m = Mount::start(&server, &["--metadata-ttl", "6s"]);
    // Its journal reloads run every TTL from its start: list shortly before
    // the first, look after it, well within the listings' TTL.
    let t0 = Instant::now();
    sleep_until(t0 + Duration::from_secs(4));
    let listed = Instant::now();
    assert_eq!(ls(&m.dir, ""), ["a", "big"]);
    assert_eq!(ls(&m.path("big"), "").len(), 1500);
    let _held = hold(&m.path("big"));
    assert_eq!(ls(&m.path("a"), ""), ["old"]);
    let made = sh(
        &format!("mkdir '{}' && sync", writer.path("a/sub").display()),
        Duration::from_secs(30),
    );
    assert!(made.ok, "mkdir: {}", made.stderr);
    sleep_until(t0 + ttl + Duration::from_millis(1500));
    let before = reads(&server);
    assert_eq!(ls(&m.path("big"), "").len(), 1500);
    let cost = reads(&server) - before;
    assert_eq!(
        ls(&m.path("a"), ""),
        ["old", "sub"],
        "the reload relisted a"
    );
    assert!(
        listed.elapsed() < ttl,
        "the machine was too slow for this test's timing"
    );
    assert_eq!(
        cost, 0,
        "big was relisted after a reload that did not touch it"
    );
}

/// READDIRPLUS: a listing carries each entry's attributes, so `ls -l` (and
/// `du`) stat every entry without one LOOKUP each, and what they show is
/// what each entry is, journal-held shapes included.
#[test]
fn a_listing_carries_the_attributes_so_stats_after_it_need_no_lookups() {
    let server = Server::start(&[]);
    let c = client(&server.endpoint);
    for i in 0..120 {
        c.put(&format!("d/f-{i:03}"), Bytes::from(vec![b'x'; i + 1]))
            .expect("put");
    }
    let writer = Mount::start(&server, &[]);
    let out = sh(
        &format!(
            "cd '{}' && chmod 600 f-003 && ln -s f-001 link && mkdir sub \
             && ln f-004 hard && touch -d @1000000000 f-005",
            writer.path("d").display()
        ),
        Duration::from_secs(30),
    );
    assert!(out.ok, "{}", out.stderr);
    // Its records are stored by the time it has unmounted.
    writer.unmount();
    // A second mount: nothing of `d` in its kernel's caches.
    let m = Mount::start_env(
        &["--endpoint", &server.endpoint, common::COFFER],
        &[],
        &[("RUST_LOG", "info,cofferfs::fs::fuse=trace")],
    );
    let lines = ls(&m.path("d"), "-ln --time-style=+%s");
    let log = m.log_text();
    let lookups: Vec<&str> = log.lines().filter(|l| l.contains("LOOKUP ")).collect();
    assert!(
        log.contains("READDIRPLUS "),
        "the kernel never asked for READDIRPLUS:\n{log}"
    );
    // `d` itself, and nothing beneath it.
    assert!(lookups.len() <= 1, "ls -l looked up entries: {lookups:?}");
    assert_eq!(lines.len(), 1 + 123, "total line and entries: {lines:?}");
    // (mode, links, size, mtime, name) of an `ls -ln` line.
    let entry = |name: &str| -> Vec<String> {
        let l = lines
            .iter()
            .find(|l| l.split_whitespace().nth(6) == Some(name))
            .unwrap_or_else(|| panic!("{name} missing: {lines:?}"));
        let f: Vec<&str> = l.split_whitespace().collect();
        [f[0], f[1], f[4], f[5]]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    assert_eq!(entry("f-003")[0], "-rw-------");
    assert_eq!(entry("f-119")[2], "120");
    assert_eq!(entry("f-005")[3], "1000000000");
    assert_eq!(&entry("hard")[1..3], ["2", "5"]);
    assert_eq!(&entry("f-004")[1..3], ["2", "5"]);
    assert!(entry("link")[0].starts_with('l'), "{lines:?}");
    assert!(entry("sub")[0].starts_with('d'), "{lines:?}");
    // Stats right after agree with the listing (the kernel's cached attributes).
    let stat = sh(
        &format!("stat -c '%s %h' '{}'", m.path("d/hard").display()),
        Duration::from_secs(30),
    );
    assert_eq!(stat.stdout.trim(), "5 2");
}
