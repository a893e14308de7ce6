//! A simulated coordination store: the `KvStore`/`KvTxn` contract of
//! `logstream_host::store::kv`, single-threaded and deterministic, with
//! every latency and failure decided by the simulator.
//!
//! # What it owns
//!
//! A [`SimDb`] holds the committed history: every version's data (shared
//! snapshots), the key ranges its commit wrote and the simulated instant it
//! committed. A [`SimStore`] is one client's connection to it (one host
//! process), and implements [`KvStore`]: each of its operations asks a
//! [`StoreEnv`] — the scheduler — how long it takes and whether it fails.
//! Letting time pass ([`StoreEnv::pass`]) is where the scheduler runs the
//! other hosts' events, so their commits land *between* this transaction's
//! operations, as they would on a real cluster.
//!
//! # What it models
//!
//! [`Semantics::Optimistic`] is FoundationDB's optimistic concurrency
//! (and etcd's, as `host/src/store/etcd` maps the contract onto it):
//! - `begin` takes the snapshot (FoundationDB's read version, after a GRV
//!   latency during which other commits may land). The scheduler may serve
//!   an *older* snapshot ([`StoreEnv::snapshot_age`]): the version that was
//!   current that long before. That is a stronger adversary than either
//!   backend: FoundationDB's read version includes every commit
//!   acknowledged before the transaction began (only its
//!   `CAUSAL_READ_RISKY` option relaxes that), and the etcd backend's
//!   first read is linearizable; a serializable read from a lagging etcd
//!   member would be this stale. What the election must survive here it
//!   survives there;
//! - reads see the snapshot plus the transaction's own writes; every read is
//!   recorded as a key range (a point read as that key's range, so reading
//!   an absent key counts; a range read as its whole `[begin, end)`, as
//!   `occ_memory` does), and each read takes its own latency;
//! - writes are buffered (no latency, as on both systems);
//! - `commit` of a transaction that wrote nothing succeeds at once (nothing
//!   is sent; FoundationDB and the etcd backend both do so). Otherwise it
//!   takes a latency, then fails with [`StoreError::Conflict`], applying
//!   nothing, when any commit after the snapshot wrote into a range it read;
//!   otherwise the scheduler picks its fate ([`CommitFate`]): committed,
//!   `CommitUnknown` with the writes **applied**, `CommitUnknown` with them
//!   **not applied**, or `Unavailable` (not applied). The reply takes a
//!   latency of its own, after the writes became visible;
//! - a transaction whose snapshot is more than [`TRANSACTION_LIFETIME`]
//!   old at a read or at commit fails with a conflict, as FoundationDB's
//!   `transaction_too_old` (and etcd's compacted revision, which the backend
//!   maps to a conflict);
//! - `begin` and reads fail with `Unavailable` while the scheduler says so
//!   (an outage of the store, or of one host's link to it).
//!
//! [`Semantics::Serial`] is the SQLite backend: `BEGIN IMMEDIATE` takes the
//! single writer lock, so a transaction reads the latest state and never
//! conflicts. Waiting for the lock is the `begin` latency (others may
//! commit meanwhile); once it is held, latencies pass *exclusively* (the
//! scheduler runs no other host's round until the commit), and the commit
//! applies. It can still be unavailable at `begin` (the lock wait timed
//! out).
//!
//! # What it leaves out
//!
//! - Limits (value, key, transaction sizes and etcd's operation count):
//!   the election writes two small records per unit; the backends' own
//!   tests check the limits.
//! - etcd's snapshot is fixed by the first read rather than at `begin`;
//!   with a latency at `begin` and one per read, the interleavings are the
//!   same.
//! - Watches, leases of etcd, FoundationDB's read-your-writes options and
//!   versionstamps; `clear_range` is recorded as a write of its range.
//! - SQLite's busy timeout as a wait: a lock held longer than the wait is
//!   an `Unavailable` at `begin`, decided by the scheduler.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use logstream_host::store::key_range::{bounds, overlap, single_key, KeyRange};
use logstream_host::store::kv::KeyValue;
use logstream_host::store::{KvStore, KvTxn, StoreError};

/// Simulated time, in microseconds since the start of a schedule.
pub type Micros = u64;

/// Most a transaction's snapshot may age before its reads and commit fail:
/// 5 s (5,000,000 µs), FoundationDB's transaction lifetime.
pub const TRANSACTION_LIFETIME: Micros = 5_000_000;

/// Which real backend's concurrency the store has (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Semantics {
    /// FoundationDB and etcd: snapshots, read-set validation at commit.
    Optimistic,
    /// SQLite: one writer at a time, reads of the latest state.
    Serial,
}

/// A store operation that takes time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Getting the snapshot (FoundationDB's GRV) or SQLite's lock.
    Begin,
    /// One read.
    Read,
    /// The commit's way to the store, before it is checked and applied.
    Commit,
    /// The commit's reply, after it was applied.
    Reply,
}

/// How a commit that passed the conflict check ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitFate {
    Commit,
    /// Applied, but the client hears `CommitUnknown`.
    UnknownApplied,
    /// Not applied, and the client hears `CommitUnknown`.
    UnknownNotApplied,
    /// Not applied: `Unavailable`.
    Unavailable,
}

/// The scheduler, as the store sees it: time and faults.
pub trait StoreEnv: Sync {
    /// The simulated time now.
    fn now(&self) -> Micros;
    /// Let `op` of `client`'s transaction take its latency. Unless
    /// `exclusive`, other hosts may run meanwhile (and commit).
    fn pass(&self, client: usize, op: Op, exclusive: bool);
    /// Whether `client` cannot reach the store now.
    fn unavailable(&self, client: usize) -> bool;
    /// How far back to serve the snapshot of a transaction beginning now,
    /// µs (0: the latest version).
    fn snapshot_age(&self, client: usize) -> Micros;
    /// The fate of a commit that passed its conflict check.
    fn commit_fate(&self, client: usize) -> CommitFate;
    /// Whether `client`'s process is gone (crashed): its operations fail
    /// at once and for good ([`StoreError::Other`], not retried), so the
    /// code it was running unwinds without waiting out retries — a dead
    /// process does nothing observable.
    fn gone(&self, _client: usize) -> bool {
        false
    }
}

/// Stored values.
type Data = BTreeMap<Vec<u8>, Vec<u8>>;
/// One committed version.
struct Version {
    /// When it committed, µs.
    at: Micros,
    data: Arc<Data>,
    /// What its commit wrote.
    wrote: Vec<KeyRange>,
}

/// Counts of what the store did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub commits: u64,
    pub conflicts: u64,
    /// Of the conflicts, those of a transaction older than
    /// [`TRANSACTION_LIFETIME`].
    pub too_old: u64,
}

/// The simulated database: its committed history (module docs).
pub struct SimDb {
    semantics: Semantics,
    state: Mutex<DbState>,
}

struct DbState {
    /// `versions[0]` is the empty store at time 0.
    versions: Vec<Version>,
    stats: StoreStats,
}

impl SimDb {
    pub fn new(semantics: Semantics) -> Self {
        SimDb {
            semantics,
            state: Mutex::new(DbState {
                versions: vec![Version {
                    at: 0,
                    data: Arc::new(Data::new()),
                    wrote: Vec::new(),
                }],
                stats: StoreStats::default(),
            }),
        }
    }

    pub fn semantics(&self) -> Semantics {
        self.semantics
    }

    pub fn stats(&self) -> StoreStats {
        self.lock().stats
    }

    /// The latest committed value of `key`.
    pub fn value(&self, key: &[u8]) -> Option<Vec<u8>> {
        let state = self.lock();
        state.versions.last().and_then(|v| v.data.get(key).cloned())
    }

    fn lock(&self) -> MutexGuard<'_, DbState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One client's connection to a [`SimDb`]; see the module docs.
pub struct SimStore<'a> {
    db: DbRef<'a>,
    env: EnvRef<'a>,
    client: usize,
}

/// The database a connection reaches: borrowed by a scheduler that owns
/// it (the election simulator), or shared (the pipeline simulator, whose
/// units hold their store as `Arc<dyn KvStore>`).
enum DbRef<'a> {
    Borrowed(&'a SimDb),
    Shared(Arc<SimDb>),
}

/// The scheduler a connection asks, borrowed or shared as [`DbRef`].
enum EnvRef<'a> {
    Borrowed(&'a dyn StoreEnv),
    Shared(Arc<dyn StoreEnv + Send + Sync>),
}

impl<'a> SimStore<'a> {
    /// The connection of `client` (a host index, passed to `env`).
    pub fn new(db: &'a SimDb, env: &'a dyn StoreEnv, client: usize) -> Self {
        SimStore {
            db: DbRef::Borrowed(db),
            env: EnvRef::Borrowed(env),
            client,
        }
    }

    fn db(&self) -> &SimDb {
        match &self.db {
            DbRef::Borrowed(db) => db,
            DbRef::Shared(db) => db,
        }
    }

    fn env(&self) -> &dyn StoreEnv {
        match &self.env {
            EnvRef::Borrowed(env) => *env,
            EnvRef::Shared(env) => env.as_ref(),
        }
    }

    fn optimistic(&self) -> bool {
        self.db().semantics == Semantics::Optimistic
    }

    fn check_gone(&self) -> Result<(), StoreError> {
        if self.env().gone(self.client) {
            return Err(StoreError::Other("simulated: the process is gone".into()));
        }
        Ok(())
    }
}

impl SimStore<'static> {
    /// The connection of `client` to a shared database and scheduler.
    pub fn shared(db: Arc<SimDb>, env: Arc<dyn StoreEnv + Send + Sync>, client: usize) -> Self {
        SimStore {
            db: DbRef::Shared(db),
            env: EnvRef::Shared(env),
            client,
        }
    }
}

impl KvStore for SimStore<'_> {
    fn begin(&self) -> Result<Box<dyn KvTxn + '_>, StoreError> {
        // Getting the read version, or waiting for SQLite's lock: others
        // may commit meanwhile in both cases.
        self.env().pass(self.client, Op::Begin, false);
        self.check_gone()?;
        if self.env().unavailable(self.client) {
            return Err(StoreError::Unavailable(
                "simulated: the store is unreachable".into(),
            ));
        }
        let age = if self.optimistic() {
            self.env().snapshot_age(self.client)
        } else {
            0
        };
        let now = self.env().now();
        let served_at = now.saturating_sub(age);
        let state = self.db().lock();
        // The latest version committed at or before `served_at`.
        let version = state
            .versions
            .iter()
            .rposition(|v| v.at <= served_at)
            .unwrap_or(0);
        let data = state.versions[version].data.clone();
        drop(state);
        Ok(Box::new(SimTxn {
            store: self,
            version,
            snapshot_at: served_at,
            view: Data::clone(&data),
            reads: Vec::new(),
            writes: Vec::new(),
        }))
    }

    fn describe(&self) -> String {
        format!("sim:{:?}", self.db().semantics)
    }
}

/// One transaction: the snapshot with its own writes (`view`), what it
/// read and what it wrote.
struct SimTxn<'s> {
    store: &'s SimStore<'s>,
    /// Index of the snapshot's version.
    version: usize,
    /// The instant the snapshot stands for, µs.
    snapshot_at: Micros,
    view: Data,
    reads: Vec<KeyRange>,
    writes: Vec<KeyRange>,
}

impl SimTxn<'_> {
    /// The latency of a read and the checks before it is served.
    fn before_read(&mut self) -> Result<(), StoreError> {
        let store = self.store;
        let exclusive = !store.optimistic();
        store.env().pass(store.client, Op::Read, exclusive);
        store.check_gone()?;
        if store.optimistic() && store.env().unavailable(store.client) {
            return Err(StoreError::Unavailable(
                "simulated: the store is unreachable".into(),
            ));
        }
        self.check_age()
    }

    /// FoundationDB's `transaction_too_old`, as a conflict.
    fn check_age(&self) -> Result<(), StoreError> {
        let store = self.store;
        if store.optimistic() && store.env().now() > self.snapshot_at + TRANSACTION_LIFETIME {
            let mut state = store.db().lock();
            state.stats.conflicts += 1;
            state.stats.too_old += 1;
            return Err(StoreError::Conflict);
        }
        Ok(())
    }
}

impl KvTxn for SimTxn<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.before_read()?;
        self.reads.push(single_key(key));
        Ok(self.view.get(key).cloned())
    }

    fn get_range(
        &mut self,
        begin: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        self.before_read()?;
        if begin >= end {
            return Ok(Vec::new());
        }
        self.reads.push((begin.to_vec(), end.to_vec()));
        Ok(self
            .view
            .range(bounds(begin, end))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn set(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.writes.push(single_key(key));
        self.view.insert(key.to_vec(), value.to_vec());
        Ok(())
    }

    fn clear(&mut self, key: &[u8]) -> Result<(), StoreError> {
        self.writes.push(single_key(key));
        self.view.remove(key);
        Ok(())
    }

    fn clear_range(&mut self, begin: &[u8], end: &[u8]) -> Result<(), StoreError> {
        if begin >= end {
            return Ok(());
        }
        self.writes.push((begin.to_vec(), end.to_vec()));
        let doomed: Vec<Vec<u8>> = self
            .view
            .range(bounds(begin, end))
            .map(|(k, _)| k.clone())
            .collect();
        for key in doomed {
            self.view.remove(&key);
        }
        Ok(())
    }

    fn commit(self: Box<Self>) -> Result<(), StoreError> {
        if self.writes.is_empty() {
            return Ok(());
        }
        let store = self.store;
        let exclusive = !store.optimistic();
        store.env().pass(store.client, Op::Commit, exclusive);
        store.check_gone()?;
        let fate = if store.optimistic() {
            self.check_age()?;
            let state = store.db().lock();
            let conflict = state.versions[self.version + 1..]
                .iter()
                .flat_map(|v| &v.wrote)
                .any(|written| self.reads.iter().any(|read| overlap(read, written)));
            drop(state);
            if conflict {
                store.db().lock().stats.conflicts += 1;
                return Err(StoreError::Conflict);
            }
            store.env().commit_fate(store.client)
        } else {
            CommitFate::Commit
        };
        match fate {
            CommitFate::Unavailable => {
                return Err(StoreError::Unavailable(
                    "simulated: the commit could not reach the store".into(),
                ))
            }
            CommitFate::UnknownNotApplied => return Err(StoreError::CommitUnknown),
            CommitFate::Commit | CommitFate::UnknownApplied => {}
        }
        {
            let mut state = store.db().lock();
            let mut data = Data::clone(&state.versions.last().expect("version 0").data);
            // Apply just our writes: others may have committed other keys
            // since the snapshot.
            for (begin, end) in &self.writes {
                let doomed: Vec<Vec<u8>> = data
                    .range(bounds(begin, end))
                    .map(|(k, _)| k.clone())
                    .collect();
                for key in doomed {
                    data.remove(&key);
                }
                for (key, value) in self.view.range(bounds(begin, end)) {
                    data.insert(key.clone(), value.clone());
                }
            }
            let at = store.env().now();
            state.versions.push(Version {
                at,
                data: Arc::new(data),
                wrote: self.writes,
            });
            state.stats.commits += 1;
        }
        store.env().pass(store.client, Op::Reply, exclusive);
        match fate {
            CommitFate::UnknownApplied => Err(StoreError::CommitUnknown),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// An environment whose every operation takes `step` µs and whose
    /// faults are set by the test; `during` runs (once) at the first
    /// non-exclusive `pass` of client 0 after it is armed: another
    /// client's transaction landing inside client 0's.
    struct TestEnv {
        now: AtomicU64,
        step: Micros,
        age: Micros,
        fate: Mutex<CommitFate>,
        down: Mutex<bool>,
        during: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    }

    impl TestEnv {
        fn new(step: Micros) -> Self {
            TestEnv {
                now: AtomicU64::new(1),
                step,
                age: 0,
                fate: Mutex::new(CommitFate::Commit),
                down: Mutex::new(false),
                during: Mutex::new(None),
            }
        }
    }

    impl StoreEnv for TestEnv {
        fn now(&self) -> Micros {
            self.now.load(Ordering::Relaxed)
        }
        fn pass(&self, client: usize, _op: Op, exclusive: bool) {
            self.now.fetch_add(self.step, Ordering::Relaxed);
            if client == 0 && !exclusive {
                let hook = self.during.lock().unwrap().take();
                if let Some(hook) = hook {
                    hook();
                }
            }
        }
        fn unavailable(&self, _client: usize) -> bool {
            *self.down.lock().unwrap()
        }
        fn snapshot_age(&self, _client: usize) -> Micros {
            self.age
        }
        fn commit_fate(&self, _client: usize) -> CommitFate {
            *self.fate.lock().unwrap()
        }
    }

    fn put(db: &SimDb, env: &TestEnv, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let store = SimStore::new(db, env, 1);
        let mut txn = store.begin()?;
        txn.set(key, value)?;
        txn.commit()
    }

    /// A transaction of client 0 that reads `key` and writes `out`, with
    /// `other` committed by client 1 at its first operation that lets
    /// others run: its first read under optimistic concurrency (after the
    /// snapshot), its wait for the lock under serial.
    fn read_then_write(
        db: &'static SimDb,
        env: &'static TestEnv,
        key: &'static [u8],
        other: &'static [u8],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let arm = move || {
            *env.during.lock().unwrap() =
                Some(Box::new(move || put(db, env, other, b"x").unwrap()));
        };
        let store = SimStore::new(db, env, 0);
        if db.semantics() == Semantics::Serial {
            arm();
        }
        let mut txn = store.begin()?;
        if db.semantics() == Semantics::Optimistic {
            arm();
        }
        let seen = txn.get(key)?;
        txn.set(b"out", b"1")?;
        txn.commit()?;
        Ok(seen)
    }

    fn leak<T>(value: T) -> &'static T {
        Box::leak(Box::new(value))
    }

    #[test]
    fn optimistic_commits_conflict_when_a_key_read_changed_after_the_snapshot() {
        let db = leak(SimDb::new(Semantics::Optimistic));
        let env = leak(TestEnv::new(10));
        put(db, env, b"k", b"0").unwrap();
        // Another key changed meanwhile: committed, and unseen.
        assert_eq!(
            read_then_write(db, env, b"k", b"other"),
            Ok(Some(b"0".to_vec()))
        );
        // The key read changed meanwhile: the snapshot does not show it, and
        // the commit conflicts, applying nothing.
        assert_eq!(
            read_then_write(db, env, b"k", b"k"),
            Err(StoreError::Conflict)
        );
        assert_eq!(db.value(b"k"), Some(b"x".to_vec()));
        assert_eq!(db.stats().conflicts, 1);
    }

    #[test]
    fn serial_transactions_read_the_latest_state_and_never_conflict() {
        let db = leak(SimDb::new(Semantics::Serial));
        let env = leak(TestEnv::new(10));
        put(db, env, b"k", b"0").unwrap();
        // The other commit lands while client 0 waits for the lock: it sees it.
        assert_eq!(
            read_then_write(db, env, b"k", b"k"),
            Ok(Some(b"x".to_vec()))
        );
        assert_eq!(db.stats().conflicts, 0);
    }

    #[test]
    fn a_stale_snapshot_hides_recent_commits_and_conflicts_on_them() {
        let db = SimDb::new(Semantics::Optimistic);
        let mut env = TestEnv::new(10);
        put(&db, &env, b"k", b"old").unwrap();
        env.now.fetch_add(1_000, Ordering::Relaxed);
        put(&db, &env, b"k", b"new").unwrap();
        env.age = 500;
        let store = SimStore::new(&db, &env, 0);
        let mut txn = store.begin().unwrap();
        assert_eq!(txn.get(b"k").unwrap(), Some(b"old".to_vec()));
        txn.set(b"k", b"mine").unwrap();
        assert_eq!(txn.commit(), Err(StoreError::Conflict));
        // Read-only transactions never conflict.
        let mut look = store.begin().unwrap();
        look.get(b"k").unwrap();
        assert_eq!(look.commit(), Ok(()));
    }

    #[test]
    fn a_transaction_older_than_its_lifetime_fails_with_a_conflict() {
        let db = SimDb::new(Semantics::Optimistic);
        let env = TestEnv::new(TRANSACTION_LIFETIME / 2 + 1);
        let store = SimStore::new(&db, &env, 0);
        let mut txn = store.begin().unwrap();
        txn.get(b"a").unwrap();
        assert_eq!(txn.get(b"b"), Err(StoreError::Conflict));
        assert_eq!(db.stats().too_old, 1);
    }

    #[test]
    fn commit_unknown_is_applied_or_not_as_the_scheduler_says() {
        let db = SimDb::new(Semantics::Optimistic);
        let env = TestEnv::new(10);
        *env.fate.lock().unwrap() = CommitFate::UnknownApplied;
        assert_eq!(put(&db, &env, b"a", b"1"), Err(StoreError::CommitUnknown));
        assert_eq!(db.value(b"a"), Some(b"1".to_vec()));
        *env.fate.lock().unwrap() = CommitFate::UnknownNotApplied;
        assert_eq!(put(&db, &env, b"b", b"1"), Err(StoreError::CommitUnknown));
        assert_eq!(db.value(b"b"), None);
        *env.fate.lock().unwrap() = CommitFate::Unavailable;
        assert!(matches!(
            put(&db, &env, b"c", b"1"),
            Err(StoreError::Unavailable(_))
        ));
        assert_eq!(db.value(b"c"), None);
        *env.down.lock().unwrap() = true;
        assert!(matches!(
            put(&db, &env, b"d", b"1"),
            Err(StoreError::Unavailable(_))
        ));
    }
}
