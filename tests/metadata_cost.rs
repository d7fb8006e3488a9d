//! What metadata operations cost in requests, counted by the server: records
//! go up by group commit, an empty file's close waits for a batch it shares
//! with concurrent closers, fsync forces a batch. Names in a fresh listing
//! cost nothing.

mod common;

use common::{q, run_in, Mount, Server};

/// Requests of every kind the server has answered.
fn total(server: &Server) -> u64 {
    server.stats()["requests"]
        .as_object()
        .map(|m| m.values().filter_map(|v| v.as_u64()).sum())
        .unwrap_or(0)
}

#[test]
fn metadata_operations_are_group_committed_and_empty_files_share_batches() {
    const N: usize = 400;
    let server = Server::start(&[]);
    // Listings stay fresh for the whole test: this measures what the
    // operations cost, not how often a directory is revalidated.
    let m = Mount::start(&server, &["--metadata-ttl", "300s"]);
    let d = q(&m.path("d"));
    run_in(&m, "mkdir", &format!("mkdir {d}"));
    let mut costs = Vec::new();
    let mut run = |what: &str, script: String| {
        let before = total(&server);
        run_in(&m, what, &script);
        let cost = total(&server) - before;
        eprintln!("{what}: {cost} requests for {N} operations");
        costs.push((what.to_string(), cost));
        cost
    };
    let each = |verb: &str| format!("for i in $(seq {N}); do {verb}; done");
    let mkdir = run("mkdir", each(&format!("mkdir {d}/m$i")));
    let touch = run("touch", each(&format!("touch {d}/f$i")));
    let chmod = run("chmod", each(&format!("chmod 600 {d}/f$i")));
    let mv = run("mv", each(&format!("mv {d}/f$i {d}/g$i")));
    let ln = run("ln -s", each(&format!("ln -s g$i {d}/l$i")));
    let utimens = run("touch -d", each(&format!("touch -d @$i {d}/g$i")));
    let parallel = run(
        "touch, 16 at once",
        format!(
            "seq {N} | sed 's|^|{}/p|' | xargs -P 16 -n 5 touch",
            m.path("d").display()
        ),
    );
    let all: u64 = costs.iter().map(|(_, c)| c).sum();
    let ops = (costs.len() * N) as u64;
    // Records wait for the group commit: a batch a second, not one per op.
    for (what, cost) in [
        ("mkdir", mkdir),
        ("chmod", chmod),
        ("mv", mv),
        ("ln -s", ln),
        ("touch -d", utimens),
    ] {
        assert!(
            cost * 20 <= N as u64,
            "{what}: {cost} requests for {N} operations"
        );
    }
    // An empty file's close waits until its record is stored: one shared
    // batch per close at most, and fewer when closes overlap.
    assert!(
        touch <= N as u64 + 5,
        "touch: {touch} requests for {N} files"
    );
    assert!(
        parallel * 10 <= N as u64 * 9,
        "16 touches at once: {parallel} requests for {N} files: no batch was shared"
    );
    assert!(
        all * 5 <= ops * 2,
        "{all} requests for {ops} operations: {costs:?}"
    );
    // fsync of a directory stores what waits, before it returns.
    let puts = server.requests("PutObject");
    run_in(&m, "chmod, sync", &format!("chmod 640 {d}/g1 && sync {d}"));
    assert_eq!(
        server.requests("PutObject"),
        puts + 1,
        "sync DIR stored the batch"
    );
    m.unmount();
}
