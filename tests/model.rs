//! Model-based property test of `Fs` without FUSE (issue 10; after
//! mountpoint-s3's reftests). proptest generates sequences of filesystem
//! operations, remounts, crashes, second mounts and store faults; each runs
//! against `Fs` over a `MemoryStore` behind a fault-injecting `FaultyStore` and
//! against a plain in-memory model (tests/model/reference.rs). After every step
//! the whole mount is walked and must agree with the model; after a remount to
//! the nanosecond, after a crash with some view the rules allow. Invariants:
//! close Ok ⇒ the bytes are stored; close Err ⇒ the path shows its previous
//! version; no object is ever written twice; `.cofferfs` is never visible.
//!
//! `PROPTEST_CASES=n` changes the number of cases (default 256);
//! `MODEL_SHRINK_SECS` bounds shrinking (default 30); faults include requests
//! that take effect but whose answer is lost (`MODEL_NO_LOST_ANSWERS=1` leaves
//! those out); `MODEL_STATS=1`
//! prints how often each operation succeeded or failed.

#[path = "model/harness.rs"]
mod harness;
#[path = "model/reference.rs"]
mod reference;

use cofferfs::store::faulty::{Fault, FaultKind, Scope, StoreOp};
use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// Where a write goes.
#[derive(Debug, Clone)]
pub enum At {
    /// At the end: sequential, or an append.
    End,
    Offset(usize),
}

/// A path: a name, or one of the entries the model shows (picked by `Index`
/// among them in path order), so that most steps meet something that exists.
#[derive(Clone)]
pub enum P {
    Name(String),
    Existing(Index),
}

impl std::fmt::Debug for P {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            P::Name(n) => write!(f, "{n:?}"),
            P::Existing(i) => write!(f, "existing#{}", i.index(1 << 16)),
        }
    }
}

/// One step. Handles are picked among the open ones by `Index`.
#[derive(Debug, Clone)]
pub enum Op {
    /// open(O_CREAT|O_EXCL|O_WRONLY)
    Create {
        path: P,
        mode: u32,
    },
    /// open(O_WRONLY|O_TRUNC) of an existing file
    OpenTrunc {
        path: P,
    },
    /// open(O_RDWR) of an existing file
    OpenEdit {
        path: P,
    },
    Write {
        h: Index,
        at: At,
        len: usize,
        seed: u8,
    },
    Ftruncate {
        h: Index,
        size: usize,
    },
    /// close(2): flush, then release
    Close {
        h: Index,
    },
    Fsync {
        h: Index,
    },
    /// truncate(2) of a file not open
    Truncate {
        path: P,
        size: usize,
    },
    Rename {
        from: P,
        to: P,
        noreplace: bool,
    },
    Mkdir {
        path: P,
        mode: u32,
    },
    Symlink {
        path: P,
        target: String,
    },
    Chmod {
        path: P,
        mode: u32,
    },
    Utimens {
        path: P,
        secs: u64,
        nanos: u32,
    },
    Unlink {
        path: P,
    },
    Rmdir {
        path: P,
    },
    /// link(2): `to` becomes another name of the file at `from`.
    Link {
        from: P,
        to: P,
    },
    Read {
        path: P,
        offset: usize,
        len: usize,
    },
    /// Unmount (closing open files) and mount again.
    Remount,
    /// The mount dies without unmounting, then mounts again.
    Crash,
    /// Another mount of the coffer, after this one stored its metadata.
    SecondMount,
    /// `op` with these faults armed; any outcome is allowed, then held to.
    Faulty {
        faults: Vec<Fault>,
        op: Box<Op>,
    },
}

/// The bytes a write puts at `offset`: position-dependent, so misplaced bytes show.
pub fn pattern(offset: usize, len: usize, seed: u8) -> Vec<u8> {
    (offset..offset + len)
        .map(|i| ((i as u64).wrapping_mul(2_654_435_761) >> 11) as u8 ^ seed)
        .collect()
}

fn name() -> impl Strategy<Value = String> {
    let name = prop_oneof![12 => select(vec!["a", "b", "c", "d"]), 1 => Just(".cofferfs")];
    prop_oneof![
        3 => name.prop_map(String::from),
        2 => (select(vec!["c", "d"]), select(vec!["a", "b", "c"])).prop_map(|(d, n)| format!("{d}/{n}")),
    ]
}

/// A name for something new.
fn fresh() -> impl Strategy<Value = P> {
    name().prop_map(P::Name)
}

/// Mostly something that exists.
fn path() -> impl Strategy<Value = P> {
    prop_oneof![3 => any::<Index>().prop_map(P::Existing), 1 => fresh()]
}

fn mode() -> impl Strategy<Value = u32> {
    select(vec![0o644, 0o600, 0o755, 0o640])
}

/// Mostly small; sometimes past the 1 MiB part size, so parts go up while writing.
fn len() -> impl Strategy<Value = usize> {
    prop_oneof![8 => 1usize..300, 3 => 300usize..70_000, 1 => 1_000_000usize..1_200_000]
}

fn offset() -> impl Strategy<Value = usize> {
    prop_oneof![3 => 0usize..400, 1 => 0usize..1_300_000]
}

fn fault() -> impl Strategy<Value = Fault> {
    (
        select(vec![
            StoreOp::Put,
            StoreOp::Put,
            StoreOp::Initiate,
            StoreOp::UploadPart,
            StoreOp::Complete,
            StoreOp::Get,
            StoreOp::List,
            StoreOp::Head,
        ]),
        prop_oneof![4 => Just(Scope::Data), 1 => Just(Scope::Journal)],
        select(if std::env::var_os("MODEL_NO_LOST_ANSWERS").is_some() {
            vec![FaultKind::Unavailable, FaultKind::Transport]
        } else {
            vec![
                FaultKind::Unavailable,
                FaultKind::Transport,
                FaultKind::LostAnswer,
            ]
        }),
        1u32..3,
    )
        .prop_map(|(op, scope, kind, count)| Fault {
            op,
            scope,
            kind,
            count,
        })
}

/// Operations on files and names (what a fault may hit).
fn fs_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (fresh(), mode()).prop_map(|(path, mode)| Op::Create { path, mode }),
        2 => path().prop_map(|path| Op::OpenTrunc { path }),
        2 => path().prop_map(|path| Op::OpenEdit { path }),
        8 => (any::<Index>(), len(), any::<u8>()).prop_map(|(h, len, seed)| Op::Write { h, at: At::End, len, seed }),
        3 => (any::<Index>(), offset(), len(), any::<u8>())
            .prop_map(|(h, o, len, seed)| Op::Write { h, at: At::Offset(o), len, seed }),
        2 => (any::<Index>(), prop_oneof![Just(0usize), 1usize..500, 500usize..1_100_000])
            .prop_map(|(h, size)| Op::Ftruncate { h, size }),
        6 => any::<Index>().prop_map(|h| Op::Close { h }),
        2 => any::<Index>().prop_map(|h| Op::Fsync { h }),
        1 => (path(), prop_oneof![Just(0usize), 1usize..500]).prop_map(|(path, size)| Op::Truncate { path, size }),
        3 => (path(), prop_oneof![2 => fresh(), 1 => path()], any::<bool>()).prop_map(|(from, to, noreplace)| Op::Rename { from, to, noreplace }),
        3 => (fresh(), mode()).prop_map(|(path, mode)| Op::Mkdir { path, mode }),
        1 => (fresh(), select(vec!["t", "../x/y", "a"])).prop_map(|(path, t)| Op::Symlink { path, target: t.into() }),
        1 => (path(), mode()).prop_map(|(path, mode)| Op::Chmod { path, mode }),
        1 => (path(), 1_000_000_000u64..1_900_000_000, 0u32..1_000_000_000)
            .prop_map(|(path, secs, nanos)| Op::Utimens { path, secs, nanos }),
        2 => path().prop_map(|path| Op::Unlink { path }),
        1 => path().prop_map(|path| Op::Rmdir { path }),
        4 => (any::<Index>().prop_map(P::Existing), prop_oneof![3 => fresh(), 1 => path()])
            .prop_map(|(from, to)| Op::Link { from, to }),
        2 => (path(), offset(), 1usize..2_000_000).prop_map(|(path, offset, len)| Op::Read { path, offset, len }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        40 => fs_op(),
        1 => Just(Op::Remount),
        1 => Just(Op::Crash),
        1 => Just(Op::SecondMount),
        4 => (proptest::collection::vec(fault(), 1..3), fs_op())
            .prop_map(|(faults, op)| Op::Faulty { faults, op: Box::new(op) }),
    ]
}

/// A case: the metadata TTL (0: every lookup asks the coffer; 10 s: the table
/// answers) and the steps.
fn case() -> impl Strategy<Value = (bool, Vec<Op>)> {
    (any::<bool>(), proptest::collection::vec(op(), 1..50))
}

/// No progress for this long is a hang (a writer waiting forever).
const STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs one case on its own thread, so a hang fails the case instead of the run.
fn run_case(ttl_zero: bool, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let progress = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel();
    let p = Arc::clone(&progress);
    let ops2 = ops.clone();
    std::thread::Builder::new()
        .name("model-case".into())
        .spawn(move || {
            let ttl = if ttl_zero {
                Duration::ZERO
            } else {
                Duration::from_secs(10)
            };
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                harness::Harness::new(ttl).and_then(|mut h| {
                    let r = h.run(&ops2, &p);
                    // Dropping the harness closes what is still open.
                    p.store(ops2.len() + 1, Ordering::SeqCst);
                    drop(h);
                    r
                })
            }));
            let _ = tx.send(r);
        })
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let mut last = (0, Instant::now());
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(Ok(Ok(()))) => return Ok(()),
            Ok(Ok(Err(e))) => return Err(TestCaseError::fail(e)),
            Ok(Err(_)) => return Err(TestCaseError::fail("the harness panicked")),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(TestCaseError::fail("the harness thread vanished"))
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let now = progress.load(Ordering::SeqCst);
                if now != last.0 {
                    last = (now, Instant::now());
                } else if last.1.elapsed() > STEP_TIMEOUT {
                    // The stuck thread is left behind; the case fails.
                    let what = match now.checked_sub(1).and_then(|i| ops.get(i)) {
                        Some(op) => format!("step {} {op:?}", now - 1),
                        None => "closing the files left open at the end".into(),
                    };
                    return Err(TestCaseError::fail(format!(
                        "{what} hung for over {STEP_TIMEOUT:?}"
                    )));
                }
            }
        }
    }
}

fn env_u32(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn fs_agrees_with_the_reference_model_through_remounts_crashes_and_faults() {
    let config = Config {
        cases: env_u32("PROPTEST_CASES", 256),
        max_shrink_time: env_u32("MODEL_SHRINK_SECS", 30) * 1000,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let result = runner.run(&case(), |(ttl_zero, ops)| run_case(ttl_zero, ops));
    if std::env::var_os("MODEL_STATS").is_some() {
        for (what, n) in harness::STATS.lock().unwrap().iter() {
            eprintln!("{n:8} {what}");
        }
    }
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Cases the model once found, replayed every run.
#[test]
fn found_cases_still_agree_with_the_model() {
    use proptest::strategy::ValueTree;
    // Any index: with one handle open, every index picks it.
    let any = || {
        any::<Index>()
            .new_tree(&mut TestRunner::deterministic())
            .expect("index")
            .current()
    };
    // An fsync stored a new file's bytes under its own key but not its journal
    // record; the close after it said ok without storing the record, so a crash
    // then lost the file's mode and time.
    let cases: Vec<Vec<Op>> = vec![
        vec![
            Op::Create {
                path: P::Name("a".into()),
                mode: 0o755,
            },
            Op::Write {
                h: any(),
                at: At::End,
                len: 1202,
                seed: 36,
            },
            Op::Faulty {
                faults: vec![
                    Fault {
                        op: StoreOp::Get,
                        scope: Scope::Data,
                        kind: FaultKind::Unavailable,
                        count: 2,
                    },
                    Fault {
                        op: StoreOp::Put,
                        scope: Scope::Journal,
                        kind: FaultKind::Unavailable,
                        count: 1,
                    },
                ],
                op: Box::new(Op::Fsync { h: any() }),
            },
            Op::Crash,
        ],
        // The same, but the close cannot store the record either: it fails, and
        // the new file is gone from the view (its object stays in the coffer).
        vec![
            Op::Create {
                path: P::Name("c".into()),
                mode: 0o640,
            },
            Op::Write {
                h: any(),
                at: At::End,
                len: 8446,
                seed: 100,
            },
            Op::Faulty {
                faults: vec![
                    Fault {
                        op: StoreOp::List,
                        scope: Scope::Data,
                        kind: FaultKind::Unavailable,
                        count: 1,
                    },
                    Fault {
                        op: StoreOp::Put,
                        scope: Scope::Journal,
                        kind: FaultKind::Transport,
                        count: 2,
                    },
                ],
                op: Box::new(Op::Fsync { h: any() }),
            },
            Op::Crash,
        ],
        // A new file fsynced empty inside a directory that is then renamed,
        // still open: the rename must move the stored empty file too.
        vec![
            Op::Mkdir {
                path: P::Name("c".into()),
                mode: 0o755,
            },
            Op::Create {
                path: P::Name("c/a".into()),
                mode: 0o644,
            },
            Op::Fsync { h: any() },
            Op::Rename {
                from: P::Name("c".into()),
                to: P::Name("a".into()),
                noreplace: false,
            },
            Op::SecondMount,
        ],
        // Reading a new file being written completes what went up at its own
        // key: it must be hidden first, not undo an empty version fsync stored.
        vec![
            Op::Create {
                path: P::Name("a".into()),
                mode: 0o644,
            },
            Op::Fsync { h: any() },
            Op::Write {
                h: any(),
                at: At::End,
                len: 1048577,
                seed: 0,
            },
            Op::Crash,
        ],
        // A write after fsync begins a new version, taking a chmod made since.
        vec![
            Op::Create {
                path: P::Name("a".into()),
                mode: 0o755,
            },
            Op::Write {
                h: any(),
                at: At::End,
                len: 1,
                seed: 0,
            },
            Op::Fsync { h: any() },
            Op::Chmod {
                path: P::Name("a".into()),
                mode: 0o644,
            },
            Op::Write {
                h: any(),
                at: At::End,
                len: 1,
                seed: 0,
            },
            Op::Remount,
        ],
        // A file being written, renamed: the version it had moves with only
        // its ctime changed.
        vec![
            Op::Create {
                path: P::Name("a".into()),
                mode: 0o644,
            },
            Op::Fsync { h: any() },
            Op::Write {
                h: any(),
                at: At::End,
                len: 1,
                seed: 0,
            },
            Op::Rename {
                from: P::Name("a".into()),
                to: P::Name("b".into()),
                noreplace: false,
            },
            Op::SecondMount,
        ],
        // Two names of one file in a second mount; one is removed here: the
        // other mount's next listing drops that name, keeping the other.
        vec![
            Op::Create {
                path: P::Name("a".into()),
                mode: 0o644,
            },
            Op::Close { h: any() },
            Op::Rename {
                from: P::Name("a".into()),
                to: P::Name("d".into()),
                noreplace: false,
            },
            Op::Link {
                from: P::Name("d".into()),
                to: P::Name("a".into()),
            },
            Op::SecondMount,
            Op::Unlink {
                path: P::Name("a".into()),
            },
            Op::SecondMount,
        ],
        // A directory only its file implies after a crash lost its mkdir: a
        // rename of the file out of it keeps the directory.
        vec![
            Op::Mkdir {
                path: P::Name("d".into()),
                mode: 0o644,
            },
            Op::Create {
                path: P::Name("d/a".into()),
                mode: 0o644,
            },
            Op::Write {
                h: any(),
                at: At::End,
                len: 1,
                seed: 0,
            },
            Op::Close { h: any() },
            Op::Crash,
            Op::Rename {
                from: P::Name("d/a".into()),
                to: P::Name("a".into()),
                noreplace: false,
            },
        ],
        // A file being written under one name reads the same under another.
        vec![
            Op::Create {
                path: P::Name("a".into()),
                mode: 0o644,
            },
            Op::Close { h: any() },
            Op::Mkdir {
                path: P::Name("c".into()),
                mode: 0o755,
            },
            Op::Link {
                from: P::Name("a".into()),
                to: P::Name("c/a".into()),
            },
            Op::OpenTrunc {
                path: P::Name("c/a".into()),
            },
            Op::Write {
                h: any(),
                at: At::End,
                len: 118,
                seed: 0,
            },
            Op::Read {
                path: P::Name("a".into()),
                offset: 0,
                len: 10,
            },
            Op::Remount,
        ],
    ];
    for ops in cases {
        if let Err(e) = run_case(false, ops.clone()) {
            panic!("{ops:?}: {e}");
        }
    }
}
