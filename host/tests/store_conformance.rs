//! The coordination-store conformance suite: one set of tests of the
//! [`KvStore`]/[`KvTxn`] contract (`host/src/store/kv.rs`), run against every
//! backend.
//!
//! - Each test is written once, as a function of a store (`&dyn KvStore`) or,
//!   for the tests that need several handles or processes on one store, of a
//!   [`Target`] that can open more handles on it.
//! - [`conformance_suite!`] generates the `#[test]`s of one backend, each on
//!   a fresh, empty store: `sqlite::*` on a new file in a temporary
//!   directory; `etcd::*` (cargo feature `etcd`, on by default) under a new
//!   key prefix of a three-member etcd cluster this binary starts
//!   (`common::etcd`); `fdb::*` (cargo feature `fdb`) in a new FoundationDB
//!   directory of the cluster named by `FDB_CLUSTER_FILE`, removed
//!   afterwards — without that variable they fail, saying why (a suite
//!   that passed without running would claim the backend works).
//! - The cross-process tests re-run this test binary as child processes
//!   (the [`cross_process_worker`] test, which does nothing unless spawned).
//! - The optimistic backends (etcd, FoundationDB) also run the conflict
//!   tests SQLite's writer lock makes impossible to stage: a transaction
//!   whose reads changed before its commit fails with a conflict and
//!   applies nothing.
//! - A property test checks SQLite and etcd against a `BTreeMap` model.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use logstream_host::store::kv::{
    prefix_end, KeyValue, MAX_KEY_BYTES, MAX_TXN_READ_BYTES, MAX_TXN_WRITE_BYTES, MAX_VALUE_BYTES,
};
use logstream_host::store::{
    transact, KvStore, KvTxn, RetryPolicy, SqliteStore, StoreError, TransactError, TxnAbort,
};
use proptest::prelude::*;

// ---------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------

/// Where one test's store lives: a fresh keyspace that more handles (in
/// this process or a child) can be opened on.
#[derive(Debug, Clone, PartialEq)]
enum Target {
    Sqlite(PathBuf),
    /// A store URL (`etcd:MEMBERS?prefix=…`).
    #[cfg(feature = "etcd")]
    Etcd(String),
    #[cfg(feature = "fdb")]
    Fdb {
        cluster_file: String,
        path: Vec<String>,
    },
}

impl Target {
    /// A new handle on the store (for SQLite: a new connection).
    fn open(&self) -> Box<dyn KvStore> {
        match self {
            Target::Sqlite(path) => {
                Box::new(SqliteStore::open(path).expect("open the SQLite store"))
            }
            #[cfg(feature = "etcd")]
            Target::Etcd(url) => common::etcd::EtcdCluster::open(url),
            #[cfg(feature = "fdb")]
            Target::Fdb { cluster_file, path } => {
                let path: Vec<&str> = path.iter().map(String::as_str).collect();
                Box::new(
                    logstream_host::store::fdb::FdbStore::open_at(Some(cluster_file), &path)
                        .expect("open the FoundationDB store"),
                )
            }
        }
    }

    /// The target as one line per field, to hand to a child process.
    fn encode(&self) -> String {
        match self {
            Target::Sqlite(path) => format!("sqlite\n{}", path.display()),
            #[cfg(feature = "etcd")]
            Target::Etcd(url) => format!("etcd\n{url}"),
            #[cfg(feature = "fdb")]
            Target::Fdb { cluster_file, path } => {
                format!("fdb\n{cluster_file}\n{}", path.join("\n"))
            }
        }
    }

    fn decode(encoded: &str) -> Target {
        let mut fields = encoded.split('\n');
        match fields.next() {
            Some("sqlite") => Target::Sqlite(PathBuf::from(fields.next().expect("a SQLite path"))),
            #[cfg(feature = "etcd")]
            Some("etcd") => Target::Etcd(fields.next().expect("an etcd URL").to_string()),
            #[cfg(feature = "fdb")]
            Some("fdb") => Target::Fdb {
                cluster_file: fields.next().expect("a cluster file").to_string(),
                path: fields.map(str::to_string).collect(),
            },
            other => panic!("unknown backend {other:?} in {CHILD_TARGET_ENV}"),
        }
    }
}

/// A test's store, removed when the test ends.
struct Fixture {
    target: Target,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        #[cfg(feature = "fdb")]
        if let Target::Fdb { cluster_file, path } = &self.target {
            let path: Vec<&str> = path.iter().map(String::as_str).collect();
            let removed = logstream_host::store::fdb::FdbStore::open_at(Some(cluster_file), &path)
                .and_then(|store| store.remove_directory());
            if let Err(error) = removed {
                eprintln!("could not remove the test directory {path:?}: {error}");
            }
        }
    }
}

/// A fresh SQLite store file in its own temporary directory.
fn sqlite_fixture(_test: &str) -> Option<Fixture> {
    let dir = tempfile::tempdir().expect("temporary directory");
    Some(Fixture {
        target: Target::Sqlite(dir.path().join("store.db")),
        _dir: Some(dir),
    })
}

/// A fresh key prefix on this binary's etcd cluster (left behind: the
/// cluster dies with the binary).
#[cfg(feature = "etcd")]
fn etcd_fixture(_test: &str) -> Option<Fixture> {
    Some(Fixture {
        target: Target::Etcd(common::etcd::shared().url()),
        _dir: None,
    })
}

/// The environment variable naming the cluster file of the FoundationDB run.
#[cfg(feature = "fdb")]
const FDB_CLUSTER_FILE_ENV: &str = "FDB_CLUSTER_FILE";

/// A fresh FoundationDB directory for `test`. Without a cluster the test
/// fails: a build with the `fdb` feature claims the backend works, and a
/// suite that passed without running would say so falsely.
#[cfg(feature = "fdb")]
fn fdb_fixture(test: &str) -> Option<Fixture> {
    let Some(cluster_file) = std::env::var_os(FDB_CLUSTER_FILE_ENV) else {
        panic!(
            "fdb::{test} cannot run: {FDB_CLUSTER_FILE_ENV} is not set; the FoundationDB conformance suite needs a live cluster (build without the `fdb` feature to run the other backends only)"
        );
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos());
    Some(Fixture {
        target: Target::Fdb {
            cluster_file: cluster_file.to_string_lossy().into_owned(),
            path: vec![
                "logstream-conformance".to_string(),
                format!("{test}-{}-{nanos}", std::process::id()),
            ],
        },
        _dir: None,
    })
}

/// The `#[test]`s of one backend: `conformance_suite!(module, fixture_fn)`.
/// Every test of the contract is listed here once, so each backend runs the
/// same set.
macro_rules! conformance_suite {
    ($backend:ident, $fixture:ident) => {
        mod $backend {
            conformance_suite!(@store $fixture;
                get_set_clear,
                get_range_is_ordered_limited_and_end_exclusive,
                clear_range_removes_exactly_the_range,
                a_transaction_reads_its_own_writes,
                dropping_a_transaction_rolls_it_back,
                values_over_the_limit_are_refused_and_not_written,
                keys_over_the_limit_are_refused_and_not_written,
                transactions_over_the_write_limit_are_refused_and_not_written,
                reads_past_the_read_limit_are_refused_and_paging_reads_everything,
                transact_does_not_retry_an_abort,
                transact_retries_retryable_errors_and_keeps_only_the_last_attempt,
                transact_gives_up_on_non_retryable_errors_and_when_out_of_attempts,
            );
            conformance_suite!(@shared $fixture;
                commits_are_visible_to_other_handles,
                concurrent_increments_on_separate_handles_lose_no_update,
                increments_from_several_processes_lose_no_update,
            );
        }
    };
    (@store $fixture:ident; $($test:ident),* $(,)?) => {$(
        #[test]
        fn $test() {
            if let Some(fixture) = super::$fixture(stringify!($test)) {
                let store = fixture.target.open();
                super::$test(&*store);
            }
        }
    )*};
    (@shared $fixture:ident; $($test:ident),* $(,)?) => {$(
        #[test]
        fn $test() {
            if let Some(fixture) = super::$fixture(stringify!($test)) {
                super::$test(&fixture.target);
            }
        }
    )*};
}

/// The conflict tests of the optimistic backends (see the module docs).
macro_rules! optimistic_suite {
    ($backend:ident, $fixture:ident) => {
        mod $backend {
            conformance_suite!(@shared $fixture;
                a_key_read_and_changed_before_commit_conflicts,
                a_key_read_as_absent_and_created_before_commit_conflicts,
                a_range_read_conflicts_with_a_key_inserted_modified_or_deleted_in_it,
                a_range_read_with_a_limit_ignores_changes_past_its_last_key,
                writes_to_keys_not_read_do_not_conflict,
                a_transaction_reads_one_snapshot,
                a_conflicted_commit_applies_nothing,
            );
        }
    };
}

conformance_suite!(sqlite, sqlite_fixture);
#[cfg(feature = "etcd")]
conformance_suite!(etcd, etcd_fixture);
#[cfg(feature = "etcd")]
optimistic_suite!(etcd_optimistic, etcd_fixture);
#[cfg(feature = "fdb")]
conformance_suite!(fdb, fdb_fixture);
#[cfg(feature = "fdb")]
optimistic_suite!(fdb_optimistic, fdb_fixture);

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// An end key above every key the tests write (none starts with 0xff).
const END_OF_ALL: &[u8] = &[0xff];

fn policy() -> RetryPolicy {
    RetryPolicy::default()
}

/// Commit `key = value` in a transaction of its own.
fn put(store: &dyn KvStore, key: &[u8], value: &[u8]) {
    let mut txn = store.begin().expect("begin");
    txn.set(key, value).expect("set");
    txn.commit().expect("commit");
}

/// Read `key` in a transaction of its own.
fn read(store: &dyn KvStore, key: &[u8]) -> Option<Vec<u8>> {
    let mut txn = store.begin().expect("begin");
    txn.get(key).expect("get")
}

/// Every key-value pair of the store.
fn scan(store: &dyn KvStore) -> Vec<KeyValue> {
    let mut txn = store.begin().expect("begin");
    txn.get_range(b"", END_OF_ALL, usize::MAX)
        .expect("get_range")
}

fn keys(pairs: &[KeyValue]) -> Vec<&[u8]> {
    pairs.iter().map(|(key, _)| key.as_slice()).collect()
}

fn is_too_large<T: std::fmt::Debug>(result: Result<T, StoreError>) -> bool {
    matches!(result, Err(StoreError::TooLarge(_)))
}

// ---------------------------------------------------------------------------
// Basic operations
// ---------------------------------------------------------------------------

fn get_set_clear(store: &dyn KvStore) {
    assert_eq!(read(store, b"k"), None, "a fresh store is empty");
    put(store, b"k", b"v1");
    assert_eq!(read(store, b"k"), Some(b"v1".to_vec()));
    put(store, b"k", b"v2");
    assert_eq!(read(store, b"k"), Some(b"v2".to_vec()), "set overwrites");

    // An empty value is a value, not an absence; keys are arbitrary bytes.
    put(store, b"empty", b"");
    assert_eq!(read(store, b"empty"), Some(Vec::new()));
    put(store, &[0x00, 0xfe, 0x00], &[0xff, 0x00]);
    assert_eq!(read(store, &[0x00, 0xfe, 0x00]), Some(vec![0xff, 0x00]));
    assert_eq!(read(store, &[0x00, 0xfe]), None, "no prefix matching");

    let mut txn = store.begin().expect("begin");
    txn.clear(b"k").expect("clear");
    txn.clear(b"never-written")
        .expect("clearing a missing key is harmless");
    txn.commit().expect("commit");
    assert_eq!(read(store, b"k"), None);
    assert_eq!(
        read(store, b"empty"),
        Some(Vec::new()),
        "clear removes only its key"
    );
}

fn get_range_is_ordered_limited_and_end_exclusive(store: &dyn KvStore) {
    // Written out of order; byte order puts "a" < "a\0" < "ab" < "b" < "b\xfe".
    let written: [&[u8]; 6] = [b"b", b"a\0", b"c", b"ab", b"a", b"b\xfe"];
    let mut txn = store.begin().expect("begin");
    for key in written {
        txn.set(key, &[key.len() as u8]).expect("set");
    }
    txn.commit().expect("commit");

    let mut txn = store.begin().expect("begin");
    let all = txn.get_range(b"", END_OF_ALL, usize::MAX).expect("range");
    let expected: [&[u8]; 6] = [b"a", b"a\0", b"ab", b"b", b"b\xfe", b"c"];
    assert_eq!(keys(&all), expected, "ascending byte order");
    assert_eq!(
        all[1],
        (b"a\0".to_vec(), vec![2]),
        "values come with their keys"
    );

    let range = |txn: &mut dyn KvTxn, begin: &[u8], end: &[u8], limit: usize| {
        txn.get_range(begin, end, limit).expect("range")
    };
    assert_eq!(
        keys(&range(&mut *txn, b"a", b"b", 10)),
        [b"a".as_slice(), b"a\0", b"ab"],
        "begin inclusive, end exclusive"
    );
    assert_eq!(
        keys(&range(&mut *txn, b"a\0", b"b\xfe", 10)),
        [b"a\0".as_slice(), b"ab", b"b"]
    );
    assert_eq!(
        keys(&range(&mut *txn, b"a", END_OF_ALL, 2)),
        [b"a".as_slice(), b"a\0"],
        "limit keeps the first keys"
    );
    assert_eq!(
        range(&mut *txn, b"a", END_OF_ALL, 6).len(),
        6,
        "a limit equal to the count"
    );
    assert_eq!(
        range(&mut *txn, b"a", END_OF_ALL, 0),
        Vec::new(),
        "limit 0 returns nothing"
    );
    assert_eq!(
        range(&mut *txn, b"b", b"b", 10),
        Vec::new(),
        "an empty range"
    );
    assert_eq!(
        range(&mut *txn, b"c", b"a", 10),
        Vec::new(),
        "an inverted range"
    );
    assert_eq!(
        range(&mut *txn, b"d", END_OF_ALL, 10),
        Vec::new(),
        "past the last key"
    );
    let under_a = range(&mut *txn, b"a", &prefix_end(b"a"), 10);
    assert_eq!(
        keys(&under_a),
        [b"a".as_slice(), b"a\0", b"ab"],
        "prefix_end bounds a prefix"
    );
}

fn clear_range_removes_exactly_the_range(store: &dyn KvStore) {
    let mut txn = store.begin().expect("begin");
    for key in [b"a".as_slice(), b"b", b"b\0", b"bz", b"c", b"d"] {
        txn.set(key, b"x").expect("set");
    }
    txn.commit().expect("commit");

    let mut txn = store.begin().expect("begin");
    txn.clear_range(b"b", b"c").expect("clear_range");
    txn.clear_range(b"d", b"a")
        .expect("an inverted range clears nothing");
    txn.clear_range(b"x", b"z")
        .expect("an empty range is harmless");
    txn.commit().expect("commit");
    assert_eq!(
        keys(&scan(store)),
        [b"a".as_slice(), b"c", b"d"],
        "[b, c) removed, c kept"
    );

    let mut txn = store.begin().expect("begin");
    txn.clear_range(b"", END_OF_ALL).expect("clear everything");
    txn.commit().expect("commit");
    assert_eq!(scan(store), Vec::new());
}

fn a_transaction_reads_its_own_writes(store: &dyn KvStore) {
    put(store, b"old", b"committed");
    put(store, b"gone", b"committed");
    put(store, b"r1", b"committed");
    put(store, b"r2", b"committed");

    let mut txn = store.begin().expect("begin");
    txn.set(b"new", b"pending").expect("set");
    txn.set(b"old", b"pending").expect("set");
    txn.clear(b"gone").expect("clear");
    txn.clear_range(b"r", b"s").expect("clear_range");
    assert_eq!(txn.get(b"new").expect("get"), Some(b"pending".to_vec()));
    assert_eq!(txn.get(b"old").expect("get"), Some(b"pending".to_vec()));
    assert_eq!(txn.get(b"gone").expect("get"), None);
    assert_eq!(txn.get(b"r1").expect("get"), None);
    let seen = txn.get_range(b"", END_OF_ALL, usize::MAX).expect("range");
    assert_eq!(
        seen,
        vec![
            (b"new".to_vec(), b"pending".to_vec()),
            (b"old".to_vec(), b"pending".to_vec())
        ],
        "a range read merges pending sets and clears"
    );
    txn.set(b"r1", b"again").expect("set after clear_range");
    assert_eq!(txn.get(b"r1").expect("get"), Some(b"again".to_vec()));
    txn.commit().expect("commit");

    assert_eq!(
        scan(store),
        vec![
            (b"new".to_vec(), b"pending".to_vec()),
            (b"old".to_vec(), b"pending".to_vec()),
            (b"r1".to_vec(), b"again".to_vec()),
        ]
    );
}

fn dropping_a_transaction_rolls_it_back(store: &dyn KvStore) {
    put(store, b"kept", b"before");
    {
        let mut txn = store.begin().expect("begin");
        txn.set(b"kept", b"after").expect("set");
        txn.set(b"new", b"value").expect("set");
        txn.clear_range(b"", END_OF_ALL).expect("clear_range");
        // Dropped without commit.
    }
    assert_eq!(scan(store), vec![(b"kept".to_vec(), b"before".to_vec())]);
    // The store is usable afterwards (the rollback released everything).
    put(store, b"new", b"value");
    assert_eq!(read(store, b"new"), Some(b"value".to_vec()));
}

// ---------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------

fn values_over_the_limit_are_refused_and_not_written(store: &dyn KvStore) {
    let largest = vec![7u8; MAX_VALUE_BYTES];
    put(store, b"largest", &largest);
    assert_eq!(
        read(store, b"largest"),
        Some(largest),
        "a value of exactly the limit round-trips"
    );

    put(store, b"existing", b"before");
    let mut txn = store.begin().expect("begin");
    assert!(is_too_large(
        txn.set(b"fresh", &vec![0u8; MAX_VALUE_BYTES + 1])
    ));
    assert!(is_too_large(
        txn.set(b"existing", &vec![0u8; MAX_VALUE_BYTES + 1])
    ));
    // Even committing the rest of the transaction writes neither.
    txn.set(b"other", b"fine")
        .expect("a small write in the same transaction");
    txn.commit().expect("commit");
    assert_eq!(read(store, b"fresh"), None);
    assert_eq!(read(store, b"existing"), Some(b"before".to_vec()));
    assert_eq!(read(store, b"other"), Some(b"fine".to_vec()));
}

/// The largest key the contract allows: every backend must accept it
/// (`MAX_KEY_BYTES` leaves room for FoundationDB's directory prefix).
const LARGE_KEY_BYTES: usize = MAX_KEY_BYTES;

fn keys_over_the_limit_are_refused_and_not_written(store: &dyn KvStore) {
    let large_key = vec![b'k'; LARGE_KEY_BYTES];
    put(store, &large_key, b"v");
    assert_eq!(read(store, &large_key), Some(b"v".to_vec()));

    let too_long = vec![b'k'; MAX_KEY_BYTES + 1];
    let mut txn = store.begin().expect("begin");
    assert!(is_too_large(txn.set(&too_long, b"v")));
    txn.commit().expect("commit");
    assert_eq!(read(store, &too_long), None);
    assert_eq!(scan(store).len(), 1, "only the accepted key is stored");
}

/// A transaction reads at most `MAX_TXN_READ_BYTES` (FoundationDB's
/// 5 s lifetime): one range read or a run of point reads past it is
/// refused with `TooLarge` on every backend; the same data read in pages of
/// one transaction each comes back whole.
fn reads_past_the_read_limit_are_refused_and_paging_reads_everything(store: &dyn KvStore) {
    let value = vec![7u8; MAX_VALUE_BYTES];
    let key = |i: usize| format!("wide/{i:04}").into_bytes();
    // Just over the read budget, written within the write budget.
    let count = MAX_TXN_READ_BYTES / MAX_VALUE_BYTES + 1;
    let per_txn = MAX_TXN_WRITE_BYTES / (MAX_VALUE_BYTES + 16);
    for first in (0..count).step_by(per_txn) {
        let mut txn = store.begin().expect("begin");
        for i in first..(first + per_txn).min(count) {
            txn.set(&key(i), &value).expect("set");
        }
        txn.commit().expect("commit");
    }

    let mut txn = store.begin().expect("begin");
    assert!(is_too_large(txn.get_range(
        b"wide/",
        &prefix_end(b"wide/"),
        usize::MAX
    )));
    drop(txn);
    let mut txn = store.begin().expect("begin");
    let refused = (0..count)
        .map(|i| txn.get(&key(i)))
        .find(|read| read.is_err());
    assert!(
        matches!(refused, Some(Err(StoreError::TooLarge(_)))),
        "point reads add up to the same budget"
    );
    drop(txn);

    let page = 8;
    let mut read = 0;
    let mut from = key(0);
    loop {
        let mut txn = store.begin().expect("begin");
        let rows = txn
            .get_range(&from, &prefix_end(b"wide/"), page)
            .expect("a page within the read budget");
        let Some((last, _)) = rows.last() else { break };
        assert!(rows.iter().all(|(_, v)| *v == value));
        read += rows.len();
        from = [last.as_slice(), &[0]].concat();
    }
    assert_eq!(read, count);
}

fn transactions_over_the_write_limit_are_refused_and_not_written(store: &dyn KvStore) {
    let value = vec![1u8; MAX_VALUE_BYTES];
    // Keys and values both count; `per_write` rounds up so `fits` stays under.
    let per_write = MAX_VALUE_BYTES + 8;
    let fits = MAX_TXN_WRITE_BYTES / per_write;
    let key = |i: usize| format!("big/{i:04}").into_bytes();

    // Up to the limit: accepted and committed.
    let mut txn = store.begin().expect("begin");
    for i in 0..fits {
        txn.set(&key(i), &value)
            .expect("a write within the transaction limit");
    }
    txn.commit().expect("commit");
    assert_eq!(scan(store).len(), fits);

    // The write that crosses the limit is refused and not applied…
    let mut txn = store.begin().expect("begin");
    txn.clear_range(b"big/", &prefix_end(b"big/"))
        .expect("clear_range");
    for i in 0..fits {
        txn.set(&key(1000 + i), &value)
            .expect("a write within the transaction limit");
    }
    assert!(is_too_large(txn.set(&key(1000 + fits), &value)));
    assert!(
        is_too_large(txn.set(b"small", b"x")),
        "the budget stays spent"
    );
    assert!(txn.get(&key(1000 + fits)).expect("get").is_none());
    drop(txn);
    assert_eq!(
        scan(store).len(),
        fits,
        "the abandoned transaction wrote nothing"
    );

    // …and a body hitting the limit under `transact` fails without retry
    // and writes nothing at all.
    let mut calls = 0;
    let outcome = transact(store, &policy(), |txn| {
        calls += 1;
        txn.clear_range(b"big/", &prefix_end(b"big/"))?;
        for i in 0..=fits {
            txn.set(&key(2000 + i), &value)?;
        }
        Ok(())
    });
    let error = outcome.expect_err("over the transaction limit");
    assert!(
        matches!(error.store_error(), Some(StoreError::TooLarge(_))),
        "{error}"
    );
    assert_eq!(calls, 1, "TooLarge is not retried");
    let stored = scan(store);
    assert_eq!(stored.len(), fits);
    assert!(
        stored.iter().all(|(key, _)| key.starts_with(b"big/0")),
        "only the first commit's keys remain"
    );
}

// ---------------------------------------------------------------------------
// The retry loop
// ---------------------------------------------------------------------------

fn transact_does_not_retry_an_abort(store: &dyn KvStore) {
    let mut calls = 0;
    let outcome: Result<(), TransactError> = transact(store, &policy(), |txn| {
        calls += 1;
        txn.set(b"written-before-abort", b"x")?;
        Err(TxnAbort::Abort(anyhow::anyhow!("the body gives up")))
    });
    match outcome {
        Err(TransactError::Aborted(error)) => assert_eq!(error.to_string(), "the body gives up"),
        other => panic!("expected an abort, got {other:?}"),
    }
    assert_eq!(calls, 1, "an abort is never retried");
    assert_eq!(
        read(store, b"written-before-abort"),
        None,
        "an aborted body writes nothing"
    );
}

fn transact_retries_retryable_errors_and_keeps_only_the_last_attempt(store: &dyn KvStore) {
    let retryable = [
        StoreError::Conflict,
        StoreError::CommitUnknown,
        StoreError::Unavailable("simulated".into()),
    ];
    let mut calls = 0;
    let value = transact(store, &policy(), |txn| {
        calls += 1;
        txn.set(format!("attempt/{calls}").as_bytes(), b"x")?;
        match retryable.get(calls - 1) {
            Some(error) => Err(TxnAbort::Store(error.clone())),
            None => Ok(calls * 10),
        }
    })
    .expect("succeeds on the fourth attempt");
    assert_eq!(
        (calls, value),
        (4, 40),
        "each retryable error is retried; the value is returned"
    );
    assert_eq!(
        keys(&scan(store)),
        [b"attempt/4".as_slice()],
        "failed attempts were rolled back"
    );
}

fn transact_gives_up_on_non_retryable_errors_and_when_out_of_attempts(store: &dyn KvStore) {
    let mut calls = 0;
    let outcome = transact(store, &policy(), |txn| -> Result<(), TxnAbort> {
        calls += 1;
        txn.set(b"k", b"x")?;
        Err(StoreError::Other("simulated corruption".into()).into())
    });
    let error = outcome.expect_err("a non-retryable error");
    assert!(
        matches!(
            error,
            TransactError::Store {
                source: StoreError::Other(_),
                attempts: 1
            }
        ),
        "{error}"
    );
    assert_eq!(calls, 1);

    let tight = RetryPolicy {
        max_attempts: 3,
        initial_backoff: Duration::from_micros(100),
        ..RetryPolicy::default()
    };
    let mut calls = 0;
    let outcome = transact(store, &tight, |txn| -> Result<(), TxnAbort> {
        calls += 1;
        txn.set(b"k", b"x")?;
        Err(StoreError::Conflict.into())
    });
    let error = outcome.expect_err("out of attempts");
    assert!(
        matches!(
            error,
            TransactError::Store {
                source: StoreError::Conflict,
                attempts: 3
            }
        ),
        "{error}"
    );
    assert_eq!(calls, 3);
    assert_eq!(scan(store), Vec::new(), "no attempt was committed");
}

// ---------------------------------------------------------------------------
// Several handles, threads and processes
// ---------------------------------------------------------------------------

const COUNTER: &[u8] = b"counter";
const MARKERS: &[u8] = b"increment/";
/// Increments per thread or process in the lost-update tests.
const INCREMENTS: u32 = 200;
/// Threads (each with its own store handle) in the concurrent test.
const THREADS: u32 = 4;
/// Child processes in the cross-process test.
const PROCESSES: u32 = 3;

/// The retry budget of the lost-update tests: every worker hammers one key,
/// far more contention than the default budget is sized for (FoundationDB
/// reports it as conflicts, SQLite as lock waits). What these tests check is
/// that no committed update is lost, not how long a contended key takes.
fn contended_policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 1_000,
        max_elapsed: Duration::from_secs(120),
        ..RetryPolicy::default()
    }
}

fn decode_counter(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(bytes.try_into().expect("an 8-byte counter"))
}

/// `INCREMENTS` read-increment-write transactions of [`COUNTER`], each
/// idempotent as the contract requires (a retry after an applied commit whose
/// outcome was unknown finds its marker and does nothing).
fn increment_counter(store: &dyn KvStore, worker: &str) {
    for i in 0..INCREMENTS {
        let marker = [MARKERS, format!("{worker}/{i:04}").as_bytes()].concat();
        transact(store, &contended_policy(), |txn| {
            if txn.get(&marker)?.is_some() {
                return Ok(());
            }
            let current = txn.get(COUNTER)?.map_or(0, |bytes| decode_counter(&bytes));
            txn.set(COUNTER, &(current + 1).to_le_bytes())?;
            txn.set(&marker, b"")?;
            Ok(())
        })
        .unwrap_or_else(|error| {
            panic!("increment {i} of {worker} on {}: {error}", store.describe())
        });
    }
}

fn assert_counter(store: &dyn KvStore, expected: u64) {
    let mut txn = store.begin().expect("begin");
    let counter = txn
        .get(COUNTER)
        .expect("get")
        .map_or(0, |bytes| decode_counter(&bytes));
    let markers = txn
        .get_range(MARKERS, &prefix_end(MARKERS), usize::MAX)
        .expect("range");
    assert_eq!(
        markers.len() as u64,
        expected,
        "every increment committed once"
    );
    assert_eq!(counter, expected, "no lost update");
}

fn commits_are_visible_to_other_handles(target: &Target) {
    let writer = target.open();
    let reader = target.open();
    put(&*writer, b"k", b"v1");
    assert_eq!(read(&*reader, b"k"), Some(b"v1".to_vec()));
    put(&*reader, b"k", b"v2");
    assert_eq!(read(&*writer, b"k"), Some(b"v2".to_vec()));
    drop((writer, reader));
    assert_eq!(
        read(&*target.open(), b"k"),
        Some(b"v2".to_vec()),
        "durable across reopening"
    );
}

fn concurrent_increments_on_separate_handles_lose_no_update(target: &Target) {
    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            let store = target.open();
            scope.spawn(move || increment_counter(&*store, &format!("thread-{thread}")));
        }
    });
    assert_counter(&*target.open(), u64::from(THREADS * INCREMENTS));
}

/// The target of a [`cross_process_worker`] child.
const CHILD_TARGET_ENV: &str = "LOGSTREAM_CONFORMANCE_CHILD_TARGET";
/// The worker name of a [`cross_process_worker`] child.
const CHILD_WORKER_ENV: &str = "LOGSTREAM_CONFORMANCE_CHILD_WORKER";

fn increments_from_several_processes_lose_no_update(target: &Target) {
    let exe = std::env::current_exe().expect("the test binary");
    let children: Vec<_> = (0..PROCESSES)
        .map(|process| {
            let worker = format!("process-{process}");
            let child = Command::new(&exe)
                .args([
                    "--exact",
                    "cross_process_worker",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD_TARGET_ENV, target.encode())
                .env(CHILD_WORKER_ENV, &worker)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn a child test process");
            (worker, child)
        })
        .collect();
    for (worker, child) in children {
        let output = child.wait_with_output().expect("wait for a child");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "{worker} failed:\n{stdout}\n{stderr}"
        );
        assert!(
            stdout.contains(&format!("{worker}: {INCREMENTS} increments done")),
            "{worker} did not run the worker:\n{stdout}\n{stderr}"
        );
    }
    assert_counter(&*target.open(), u64::from(PROCESSES * INCREMENTS));
}

/// The body of a child process of `increments_from_several_processes_lose_no_update`;
/// does nothing (and passes) when not spawned by it.
#[test]
fn cross_process_worker() {
    let Ok(target) = std::env::var(CHILD_TARGET_ENV) else {
        return;
    };
    let worker = std::env::var(CHILD_WORKER_ENV).expect("a worker name");
    let store = Target::decode(&target).open();
    increment_counter(&*store, &worker);
    println!("{worker}: {INCREMENTS} increments done");
}

// ---------------------------------------------------------------------------
// Optimistic concurrency (etcd, FoundationDB)
// ---------------------------------------------------------------------------

/// Commit `txn` after writing a marker, expecting a conflict.
fn assert_conflicts(mut txn: Box<dyn KvTxn + '_>, what: &str) {
    txn.set(b"marker", b"x").expect("set");
    assert_eq!(txn.commit(), Err(StoreError::Conflict), "{what}");
}

fn a_key_read_and_changed_before_commit_conflicts(target: &Target) {
    let (ours, theirs) = (target.open(), target.open());
    put(&*ours, b"k", b"1");
    let mut txn = ours.begin().expect("begin");
    assert_eq!(txn.get(b"k").expect("get"), Some(b"1".to_vec()));
    put(&*theirs, b"k", b"2");
    assert_conflicts(txn, "a key changed since it was read");

    let mut txn = ours.begin().expect("begin");
    txn.get(b"k").expect("get");
    let mut other = theirs.begin().expect("begin");
    other.clear(b"k").expect("clear");
    other.commit().expect("commit");
    assert_conflicts(txn, "a key deleted since it was read");
}

fn a_key_read_as_absent_and_created_before_commit_conflicts(target: &Target) {
    let (ours, theirs) = (target.open(), target.open());
    let mut txn = ours.begin().expect("begin");
    assert_eq!(txn.get(b"new").expect("get"), None);
    put(&*theirs, b"new", b"1");
    assert_conflicts(txn, "a key created since it was read as absent");
}

fn a_range_read_conflicts_with_a_key_inserted_modified_or_deleted_in_it(target: &Target) {
    let (ours, theirs) = (target.open(), target.open());
    put(&*ours, b"r/b", b"1");
    put(&*ours, b"r/d", b"1");
    type Change<'a> = &'a dyn Fn(&mut dyn KvTxn);
    let changes: [(&str, Change); 3] = [
        ("inserted", &|txn| txn.set(b"r/c", b"new").expect("set")),
        ("modified", &|txn| txn.set(b"r/d", b"2").expect("set")),
        ("deleted", &|txn| txn.clear(b"r/b").expect("clear")),
    ];
    for (what, change) in changes {
        let mut txn = ours.begin().expect("begin");
        txn.get_range(b"r/", b"r/~", usize::MAX).expect("range");
        let mut other = theirs.begin().expect("begin");
        change(&mut *other);
        other.commit().expect("commit");
        assert_conflicts(txn, &format!("a key {what} inside a range read"));
    }
}

fn a_range_read_with_a_limit_ignores_changes_past_its_last_key(target: &Target) {
    let (ours, theirs) = (target.open(), target.open());
    for key in [&b"r/a"[..], b"r/b", b"r/c"] {
        put(&*ours, key, b"1");
    }
    let mut txn = ours.begin().expect("begin");
    let read = txn.get_range(b"r/", b"r/~", 2).expect("range");
    assert_eq!(keys(&read), vec![&b"r/a"[..], b"r/b"]);
    put(&*theirs, b"r/c", b"2");
    put(&*theirs, b"r/d", b"2");
    txn.set(b"marker", b"x").expect("set");
    txn.commit()
        .expect("changes past the last key a limited range returned are not in its read set");
}

fn writes_to_keys_not_read_do_not_conflict(target: &Target) {
    let (ours, theirs) = (target.open(), target.open());
    put(&*ours, b"mine", b"1");
    let mut txn = ours.begin().expect("begin");
    txn.get(b"mine").expect("get");
    put(&*theirs, b"theirs", b"1");
    txn.set(b"theirs-too", b"1").expect("set");
    txn.commit()
        .expect("a blind write elsewhere does not conflict");
    // Writing a key we did not read, that another transaction wrote since
    // we began, is a blind write: last committer wins, no conflict.
    let mut txn = ours.begin().expect("begin");
    txn.get(b"mine").expect("get");
    put(&*theirs, b"shared", b"theirs");
    txn.set(b"shared", b"ours").expect("set");
    txn.commit().expect("a blind write does not conflict");
    assert_eq!(read(&*theirs, b"shared"), Some(b"ours".to_vec()));
}

fn a_transaction_reads_one_snapshot(target: &Target) {
    let (ours, theirs) = (target.open(), target.open());
    put(&*ours, b"a", b"1");
    put(&*ours, b"b", b"1");
    let mut txn = ours.begin().expect("begin");
    assert_eq!(txn.get(b"a").expect("get"), Some(b"1".to_vec()));
    let mut other = theirs.begin().expect("begin");
    other.set(b"a", b"2").expect("set");
    other.set(b"b", b"2").expect("set");
    other.set(b"c", b"2").expect("set");
    other.commit().expect("commit");
    assert_eq!(
        txn.get(b"b").expect("get"),
        Some(b"1".to_vec()),
        "a read after another commit still sees the snapshot"
    );
    assert_eq!(
        keys(&txn.get_range(b"", END_OF_ALL, usize::MAX).expect("range")),
        vec![&b"a"[..], b"b"]
    );
    txn.commit()
        .expect("a transaction that wrote nothing commits: its reads were one snapshot");
}

fn a_conflicted_commit_applies_nothing(target: &Target) {
    let (ours, theirs) = (target.open(), target.open());
    put(&*ours, b"k", b"1");
    let mut txn = ours.begin().expect("begin");
    txn.get(b"k").expect("get");
    txn.set(b"k", b"ours").expect("set");
    txn.set(b"other", b"ours").expect("set");
    txn.clear_range(b"x", b"y").expect("clear_range");
    put(&*theirs, b"x/1", b"theirs");
    put(&*theirs, b"k", b"theirs");
    assert_eq!(txn.commit(), Err(StoreError::Conflict));
    assert_eq!(read(&*theirs, b"k"), Some(b"theirs".to_vec()));
    assert_eq!(read(&*theirs, b"other"), None);
    assert_eq!(read(&*theirs, b"x/1"), Some(b"theirs".to_vec()));
}

// ---------------------------------------------------------------------------
// Model-based property test (SQLite)
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Set(Vec<u8>, Vec<u8>),
    Clear(Vec<u8>),
    ClearRange(Vec<u8>, Vec<u8>),
    Get(Vec<u8>),
    GetRange(Vec<u8>, Vec<u8>, usize),
}

/// Short keys over a small alphabet, so operations collide often.
fn small_key() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![Just(0u8), Just(1), Just(b'a'), Just(0xfe)],
        0..3,
    )
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (small_key(), prop::collection::vec(any::<u8>(), 0..4)).prop_map(|(k, v)| Op::Set(k, v)),
        2 => small_key().prop_map(Op::Clear),
        1 => (small_key(), small_key()).prop_map(|(b, e)| Op::ClearRange(b, e)),
        2 => small_key().prop_map(Op::Get),
        2 => (small_key(), small_key(), 0usize..5).prop_map(|(b, e, n)| Op::GetRange(b, e, n)),
    ]
}

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

fn model_range(model: &Model, begin: &[u8], end: &[u8], limit: usize) -> Vec<KeyValue> {
    if begin >= end {
        return Vec::new();
    }
    model
        .range(begin.to_vec()..end.to_vec())
        .take(limit)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Random transactions of random operations, each committed or dropped,
    /// behave like a `BTreeMap` that applies only the committed ones; reads
    /// inside a transaction see its own pending writes.
    #[test]
    fn sqlite_matches_a_btreemap_model(
        txns in prop::collection::vec((prop::collection::vec(op(), 1..8), any::<bool>()), 1..10)
    ) {
        let fixture = sqlite_fixture("model").expect("a SQLite fixture");
        check_against_model(&*fixture.target.open(), txns)?;
    }

    /// The same on etcd: its reads overlay the transaction's buffered
    /// writes on the snapshot, which this checks against the model.
    #[cfg(feature = "etcd")]
    #[test]
    fn etcd_matches_a_btreemap_model(
        txns in prop::collection::vec((prop::collection::vec(op(), 1..8), any::<bool>()), 1..10)
    ) {
        let fixture = etcd_fixture("model").expect("an etcd fixture");
        check_against_model(&*fixture.target.open(), txns)?;
    }
}

/// How many times the model check runs one transaction when the store
/// answers a read or the commit with a conflict — which the contract allows
/// at any read (a snapshot compacted away; on etcd, also a member too far
/// behind) — before it fails the test.
const MODEL_TXN_ATTEMPTS: usize = 5;

fn check_against_model(
    store: &dyn KvStore,
    txns: Vec<(Vec<Op>, bool)>,
) -> Result<(), TestCaseError> {
    let mut model = Model::new();
    for (ops, commit) in txns {
        let mut attempt = 0;
        let pending = loop {
            attempt += 1;
            match run_against_model(store, &model, &ops, commit)? {
                Ok(pending) => break pending,
                Err(StoreError::Conflict) if attempt < MODEL_TXN_ATTEMPTS => continue,
                Err(error) => panic!("transaction failed on attempt {attempt}: {error}"),
            }
        };
        if commit {
            model = pending;
        }
        prop_assert_eq!(
            scan(store),
            model_range(&model, b"", END_OF_ALL, usize::MAX)
        );
    }
    Ok(())
}

/// One attempt at one transaction: every read checked against the model
/// with the transaction's own pending writes, then committed or dropped.
/// The store's error, if any, is returned for the caller to retry.
fn run_against_model(
    store: &dyn KvStore,
    model: &Model,
    ops: &[Op],
    commit: bool,
) -> Result<Result<Model, StoreError>, TestCaseError> {
    let mut pending = model.clone();
    let mut txn = store.begin().expect("begin");
    for op in ops {
        match op {
            Op::Set(key, value) => {
                txn.set(key, value).expect("set");
                pending.insert(key.clone(), value.clone());
            }
            Op::Clear(key) => {
                txn.clear(key).expect("clear");
                pending.remove(key);
            }
            Op::ClearRange(begin, end) => {
                txn.clear_range(begin, end).expect("clear_range");
                if begin < end {
                    pending.retain(|key, _| !(begin <= key && key < end));
                }
            }
            Op::Get(key) => match txn.get(key) {
                Ok(value) => prop_assert_eq!(value, pending.get(key).cloned()),
                Err(error) => return Ok(Err(error)),
            },
            Op::GetRange(begin, end, limit) => match txn.get_range(begin, end, *limit) {
                Ok(pairs) => prop_assert_eq!(pairs, model_range(&pending, begin, end, *limit)),
                Err(error) => return Ok(Err(error)),
            },
        }
    }
    if commit {
        if let Err(error) = txn.commit() {
            return Ok(Err(error));
        }
    } else {
        drop(txn);
    }
    Ok(Ok(pending))
}

// ---------------------------------------------------------------------------
// etcd security: TLS with client certificates, password authentication
// ---------------------------------------------------------------------------

/// Every security option of the `etcd:` URL against a secure cluster (TLS
/// with required client certificates, authentication on): the right ones
/// give a working store, each wrong one is refused with one sentence naming
/// what to fix — by the library and by the binary (non-zero exit, one
/// line, the store untouched).
#[cfg(feature = "etcd")]
#[test]
fn etcd_security_options_reach_a_secure_cluster_and_wrong_ones_say_what_to_fix() {
    use common::etcd::EtcdCluster;
    use logstream_host::store::etcd::EtcdStore;

    let cluster = EtcdCluster::start_secure_on("127.0.0.1", 1);
    let url = cluster.url();
    let open = |url: &str| EtcdStore::open_url(url.strip_prefix("etcd:").unwrap());
    let refusal = |url: &str| match open(url) {
        Err(error) => {
            eprintln!("refused as it should be: {error}");
            error.to_string()
        }
        Ok(_) => panic!("{url} was not refused"),
    };

    // The hosts' URL: a working store.
    let store = open(&url).expect("the hosts' URL opens the secure store");
    let mut txn = store.begin().unwrap();
    txn.set(b"k", b"v").unwrap();
    txn.commit().unwrap();
    assert_eq!(
        store.begin().unwrap().get(b"k").unwrap(),
        Some(b"v".to_vec())
    );
    assert!(store.describe().contains("password_file="));

    // A wrong password.
    let wrong = cluster.add_user("somebody", "right", None);
    std::fs::write(&wrong, "wrong\n").unwrap();
    let (members, options) = url.split_once('?').unwrap();
    let prefix = options.split('&').next().unwrap();
    let tls: Vec<&str> = options
        .split('&')
        .filter(|o| {
            ["ca_file", "cert_file", "key_file"]
                .iter()
                .any(|n| o.starts_with(n))
        })
        .collect();
    let tls = tls.join("&");
    let wrong_password = format!(
        "{members}?{prefix}&{tls}&user=somebody&password_file={}",
        wrong.display()
    );
    let said = refusal(&wrong_password);
    assert!(
        said.contains("password") && said.contains("is wrong"),
        "{said}"
    );

    // A user whose role does not cover the prefix.
    let outsider = cluster.add_user("outsider", "theirs", None);
    let said = refusal(&format!(
        "{members}?{prefix}&{tls}&user=outsider&password_file={}",
        outsider.display()
    ));
    assert!(said.contains("denied") && said.contains("grant"), "{said}");

    // No user on a cluster with authentication on: the member takes the
    // client certificate's common name ("hosts", no such user) instead.
    let said = refusal(&format!("{members}?{prefix}&{tls}"));
    assert!(
        said.contains("denied this client") && said.contains("user=NAME"),
        "{said}"
    );

    // No client certificate: the member refuses the handshake (its alert
    // may or may not arrive before it closes the connection).
    let ca_only = tls.split('&').next().unwrap();
    let said = refusal(&format!("{members}?{prefix}&{ca_only}"));
    assert!(
        said.contains("refused our TLS client certificate")
            || said.contains("name one with `cert_file=PATH&key_file=PATH`"),
        "{said}"
    );

    // A CA that did not sign the members' certificates.
    let stranger = common::tls::TestCa::new(&tempfile::tempdir().unwrap().keep());
    let said = refusal(&format!(
        "{members}?{prefix}&ca_file={}",
        stranger.ca_file().display()
    ));
    assert!(said.contains("not signed by the CA"), "{said}");

    // Plain http:// to a TLS member.
    let plain = members.replace("https://", "http://");
    let said = refusal(&format!("{plain}?{prefix}"));
    assert!(
        said.contains("cannot connect") || said.contains("did not answer"),
        "{said}"
    );

    // A user named to a cluster without authentication.
    let said = refusal(&format!(
        "{}&user=somebody&password_file={}",
        common::etcd::shared().url(),
        wrong.display()
    ));
    assert!(said.contains("authentication off"), "{said}");

    // The binary: one line, non-zero, and the store untouched.
    let output = common::run(
        common::logstream()
            .args(["status", "--store"])
            .arg(&wrong_password),
    );
    assert!(!output.status.success());
    let stderr = common::stderr(&output);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("is wrong"), "{stderr}");
    assert_eq!(
        store.begin().unwrap().get(b"k").unwrap(),
        Some(b"v".to_vec())
    );
}
