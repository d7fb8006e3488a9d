//! Listing read-ahead for directory walkers, through a real mount of a real
//! `cofferfs serve`: a walk over sibling directories finds the next ones
//! listed before it gets there, a lone `ls` lists nothing it did not ask for,
//! and a directory is listed once however many callers want it at once.
//! Listings are counted by the server (`GetCoffer` in `/-/stats`).

mod common;

use common::{client, put_all, sh, wait_for, Mount, Server};
use std::time::Duration;

/// Sibling directories `s0`…`s5` at the root, each of `FILES` files.
const DIRS: usize = 6;
const FILES: usize = 2100;
/// Requests of one directory's listing: pages of 1000 keys.
const PAGES: u64 = FILES.div_ceil(1000) as u64;

/// A server holding the sibling directories.
fn siblings() -> Server {
    let server = Server::start(&[]);
    let keys: Vec<String> = (0..DIRS)
        .flat_map(|d| (0..FILES).map(move |f| format!("s{d}/f-{f:04}")))
        .collect();
    put_all(&client(&server.endpoint), &keys);
    server
}

/// Listing requests the server has answered.
fn lists(server: &Server) -> u64 {
    server.requests("GetCoffer")
}

/// A mount whose listings stay fresh through the test (and whose journal
/// reloads, one request each TTL, do not run meanwhile).
fn mount(server: &Server) -> Mount {
    Mount::start(server, &["--metadata-ttl", "300s"])
}

/// How many entries `ls` shows in `rel` of the mount.
fn ls(m: &Mount, rel: &str) -> usize {
    let out = sh(
        &format!("ls '{}'", m.path(rel).display()),
        Duration::from_secs(60),
    );
    assert!(out.ok, "ls {rel}: {}\n{}", out.stderr, m.log_text());
    out.stdout.lines().count()
}

/// Listings since `before` once they reach `want` (within 10 s) and then
/// stay put for a second: what the background added is in, and nothing more
/// is on its way.
/// `p0` (one file) and `p1` with `children` subdirectories of `FILES` files,
/// a mount, and `ls /` then `ls p0` through it: opening `p1` next is a walk.
fn walked_to_p1(server: &Server, children: usize) -> Mount {
    let mut keys = vec!["p0/x".to_string()];
    keys.extend((0..children).flat_map(|c| (0..FILES).map(move |f| format!("p1/c{c}/f-{f:04}"))));
    put_all(&client(&server.endpoint), &keys);
    let m = mount(server);
    assert_eq!(ls(&m, ""), 2);
    assert_eq!(ls(&m, "p0"), 1);
    m
}

fn settled(server: &Server, before: u64, want: u64) -> u64 {
    wait_for(Duration::from_secs(10), || lists(server) - before >= want);
    std::thread::sleep(Duration::from_secs(1));
    lists(server) - before
}

#[test]
fn a_walk_over_siblings_finds_the_next_two_listed_ahead() {
    let server = siblings();
    let m = mount(&server);
    assert_eq!(ls(&m, ""), DIRS);
    let before = lists(&server);
    assert_eq!(ls(&m, "s1"), FILES);
    assert_eq!(settled(&server, before, PAGES), PAGES, "s1 alone");
    // s2 right after s1: a walk. s3 and s4 are listed in the background;
    // s5, three ahead, is not.
    let before = lists(&server);
    assert_eq!(ls(&m, "s2"), FILES);
    assert_eq!(
        settled(&server, before, 3 * PAGES),
        3 * PAGES,
        "s2, then s3 and s4 ahead of the walk, and no more"
    );
    // The walk goes on: s3 and s4 cost nothing, s5 is listed ahead of them.
    let before = lists(&server);
    assert_eq!(ls(&m, "s3"), FILES);
    assert_eq!(ls(&m, "s4"), FILES);
    assert_eq!(
        settled(&server, before, PAGES),
        PAGES,
        "s3 and s4 were in the table; only s5 was listed"
    );
    let before = lists(&server);
    assert_eq!(ls(&m, "s5"), FILES);
    assert_eq!(settled(&server, before, 0), 0, "s5 was listed ahead");
    m.unmount();
}

#[test]
fn the_first_subdirectory_of_a_directory_just_listed_starts_a_walk() {
    let server = siblings();
    let m = mount(&server);
    assert_eq!(ls(&m, ""), DIRS);
    // Going down: s0 right after its parent, the root.
    let before = lists(&server);
    assert_eq!(ls(&m, "s0"), FILES);
    assert_eq!(
        settled(&server, before, 3 * PAGES),
        3 * PAGES,
        "s0, then s1 and s2 ahead"
    );
    let before = lists(&server);
    assert_eq!(ls(&m, "s1"), FILES);
    assert_eq!(
        settled(&server, before, PAGES),
        PAGES,
        "s1 was in the table; s3 was listed ahead of it"
    );
    m.unmount();
}

#[test]
fn a_walker_entering_a_directory_finds_its_first_subdirectories_listed_ahead() {
    let server = Server::start(&[]);
    let m = walked_to_p1(&server, 3);
    // p1 after p0: a walk, which goes down into p1's first subdirectories
    // next. c0 and c1 are listed ahead; c2 is not.
    assert_eq!(ls(&m, "p1"), 3);
    let quiet = wait_for(Duration::from_secs(20), || {
        let before = lists(&server);
        std::thread::sleep(Duration::from_secs(1));
        lists(&server) == before
    });
    assert!(quiet, "listings went on for 20 s");
    let before = lists(&server);
    assert_eq!(ls(&m, "p1/c0"), FILES);
    assert_eq!(ls(&m, "p1/c1"), FILES);
    assert_eq!(
        settled(&server, before, PAGES),
        PAGES,
        "c0 and c1 were in the table; only c2 was listed, ahead of them"
    );
    m.unmount();
}

#[test]
fn an_unmount_ends_the_listings_ahead_after_their_current_page() {
    let server = Server::start(&[]);
    let m = walked_to_p1(&server, 2);
    // Each page takes 2 s from now on: c0 and c1, listed ahead once p1 is,
    // are on their first page when the mount is told to go.
    server.set_faults("GetCoffer:slow=2s:1");
    assert_eq!(ls(&m, "p1"), 2);
    let before = lists(&server);
    m.unmount();
    let after = settled(&server, before, 0);
    // The server counts a request as it comes: the pages in flight are in
    // `before`. Finished, each listing would send PAGES - 1 more.
    assert!(
        after <= 2,
        "{after} pages asked for after the unmount began, at most one more \
         of each listing ahead was expected (finished: {})",
        2 * (PAGES - 1)
    );
}

#[test]
fn a_lone_ls_lists_nothing_ahead() {
    let server = siblings();
    let m = mount(&server);
    let before = lists(&server);
    assert_eq!(ls(&m, ""), DIRS);
    let root = lists(&server) - before;
    assert!(root > 0, "the root was listed");
    assert_eq!(settled(&server, before, root), root, "ls / listed ahead");
    // Not the root's first subdirectory: no walk in sight.
    let before = lists(&server);
    assert_eq!(ls(&m, "s2"), FILES);
    assert_eq!(
        settled(&server, before, PAGES),
        PAGES,
        "ls of one directory costs its own pages, nothing ahead"
    );
    // The same directory again: listed within the TTL, and not a walk.
    let before = lists(&server);
    assert_eq!(ls(&m, "s2"), FILES);
    assert_eq!(settled(&server, before, 0), 0);
    m.unmount();
}

#[test]
fn callers_of_one_listing_at_once_share_it() {
    let server = siblings();
    // Each page takes 500 ms: every listing below is still running when the
    // other callers come.
    server.set_faults("GetCoffer:slow=500ms:1");
    let m = mount(&server);
    assert_eq!(ls(&m, ""), DIRS);
    // Two `ls` of one unlisted directory at once: one listing.
    let before = lists(&server);
    let s2 = m.path("s2");
    let both = sh(
        &format!("ls '{0}' | wc -l & ls '{0}' | wc -l & wait", s2.display()),
        Duration::from_secs(60),
    );
    assert!(both.ok, "{}", both.stderr);
    let counts: Vec<&str> = both.stdout.split_whitespace().collect();
    assert_eq!(counts, [FILES.to_string(), FILES.to_string()]);
    assert_eq!(
        settled(&server, before, PAGES),
        PAGES,
        "two concurrent ls of s2 listed it once"
    );
    // A walker that catches up with a listing ahead of it waits for it:
    // s3 after s2 lists s4 and s5 ahead, and `ls s4` while s4's listing
    // runs takes its result (or, had that not started yet, lists s4 itself
    // and the worker leaves it).
    let before = lists(&server);
    let walk = sh(
        &format!(
            "ls '{0}/s3' >/dev/null & sleep 0.5; ls '{0}/s4' | wc -l; wait",
            m.dir.display()
        ),
        Duration::from_secs(60),
    );
    assert!(walk.ok, "{}", walk.stderr);
    assert_eq!(walk.stdout.trim(), FILES.to_string());
    assert_eq!(
        settled(&server, before, 3 * PAGES),
        3 * PAGES,
        "s3, s4 and s5 listed once each"
    );
    m.unmount();
}
