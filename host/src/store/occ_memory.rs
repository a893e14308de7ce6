//! An in-memory store with optimistic concurrency, for unit tests: the
//! conflict semantics of FoundationDB and etcd — which SQLite's single
//! writer lock hides — without either.
//!
//! - `begin` takes a snapshot at the version of the last commit; reads see
//!   it plus the transaction's own writes;
//! - every read is recorded as a key range: a point read as the range of
//!   that one key (so reading an absent key counts too), a range read as
//!   its whole `[begin, end)` whatever its limit (conservative);
//! - `commit` fails with [`StoreError::Conflict`], applying nothing, when a
//!   transaction that committed after this one began wrote into a range it
//!   read; otherwise its writes apply at once, at the next version.
//!   Read-only transactions never conflict (as on FoundationDB);
//! - limits are checked as on every backend (`kv::check_write`).
//!
//! To be deterministic where timing would decide, a test may run a hook
//! just before each commit is checked ([`OccStore::set_before_commit`]):
//! whatever the hook commits lands between the transaction's reads and its
//! commit — a slow transaction, without sleeping; or the hook waits for
//! another thread's commit. Commits the hook makes itself run without it.
//!
//! Snapshots share values (`Arc`) and conflict checks look only at the
//! commits after a transaction began, so a test may commit at full rate.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::key_range::{bounds, overlap, single_key, KeyRange};
use super::kv::{check_write, KeyValue, KvStore, KvTxn, StoreError, TxnBudget};

/// What runs before each commit is checked, on the committing thread: the
/// store, and the version the committing transaction read at.
pub(crate) type BeforeCommit = Arc<dyn Fn(&OccStore, u64) + Send + Sync>;

/// Stored values, shared between the store and its transactions' snapshots.
type Data = BTreeMap<Vec<u8>, Arc<[u8]>>;

thread_local! {
    /// Whether this thread is running the hook (its commits skip it).
    static IN_HOOK: Cell<bool> = const { Cell::new(false) };
}

/// Clears [`IN_HOOK`] when the hook returns or unwinds.
struct InHook;

impl Drop for InHook {
    fn drop(&mut self) {
        IN_HOOK.with(|flag| flag.set(false));
    }
}

/// See the module docs.
#[derive(Default)]
pub(crate) struct OccStore {
    state: Mutex<State>,
    before_commit: Mutex<Option<BeforeCommit>>,
    conflicts: AtomicU64,
}

#[derive(Default)]
struct State {
    /// The version of the last commit (0: none yet).
    version: u64,
    data: Data,
    /// The ranges each commit wrote: `history[v - 1]` those of version `v`.
    /// Kept whole: a test is short.
    history: Vec<Vec<KeyRange>>,
}

impl OccStore {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Run `hook` before every commit is checked, from now on.
    pub(crate) fn set_before_commit(&self, hook: BeforeCommit) {
        *lock(&self.before_commit) = Some(hook);
    }

    /// How many commits failed with a conflict so far.
    pub(crate) fn conflicts(&self) -> u64 {
        self.conflicts.load(Ordering::Relaxed)
    }

    /// The version of the last commit.
    pub(crate) fn version(&self) -> u64 {
        lock(&self.state).version
    }

    /// The committed value of `key`.
    pub(crate) fn value(&self, key: &[u8]) -> Option<Vec<u8>> {
        lock(&self.state).data.get(key).map(|v| v.to_vec())
    }

    /// Run the hook, if any, unless this thread is already running it.
    fn run_before_commit(&self, read_version: u64) {
        if IN_HOOK.with(Cell::get) {
            return;
        }
        let hook = lock(&self.before_commit).clone();
        if let Some(hook) = hook {
            IN_HOOK.with(|flag| flag.set(true));
            let _in_hook = InHook;
            hook(self, read_version);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl KvStore for OccStore {
    fn begin(&self) -> Result<Box<dyn KvTxn + '_>, StoreError> {
        let state = lock(&self.state);
        Ok(Box::new(OccTxn {
            store: self,
            read_version: state.version,
            view: state.data.clone(),
            reads: Vec::new(),
            writes: Vec::new(),
            budget: TxnBudget::default(),
        }))
    }

    fn describe(&self) -> String {
        "occ-memory:".to_string()
    }
}

/// One transaction: the snapshot with its own writes applied (`view`), what
/// it read and what it wrote.
struct OccTxn<'a> {
    store: &'a OccStore,
    read_version: u64,
    view: Data,
    reads: Vec<KeyRange>,
    writes: Vec<KeyRange>,
    budget: TxnBudget,
}

impl OccTxn<'_> {
    fn wrote(&mut self, range: KeyRange, bytes: usize) -> Result<(), StoreError> {
        self.budget.write(bytes)?;
        self.writes.push(range);
        Ok(())
    }
}

impl KvTxn for OccTxn<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.reads.push(single_key(key));
        let value = self.view.get(key).map(|v| v.to_vec());
        if let Some(value) = &value {
            self.budget.read([(key, value.as_slice())])?;
        }
        Ok(value)
    }

    fn get_range(
        &mut self,
        begin: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        if begin >= end {
            return Ok(Vec::new());
        }
        self.reads.push((begin.to_vec(), end.to_vec()));
        let pairs: Vec<KeyValue> = self
            .view
            .range(bounds(begin, end))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.to_vec()))
            .collect();
        self.budget
            .read(pairs.iter().map(|(k, v)| (k.as_slice(), v.as_slice())))?;
        Ok(pairs)
    }

    fn set(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        check_write(key, value)?;
        self.wrote(single_key(key), key.len() + value.len())?;
        self.view.insert(key.to_vec(), value.into());
        Ok(())
    }

    fn clear(&mut self, key: &[u8]) -> Result<(), StoreError> {
        self.wrote(single_key(key), key.len())?;
        self.view.remove(key);
        Ok(())
    }

    fn clear_range(&mut self, begin: &[u8], end: &[u8]) -> Result<(), StoreError> {
        if begin >= end {
            return Ok(());
        }
        self.wrote((begin.to_vec(), end.to_vec()), begin.len() + end.len())?;
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
        self.store.run_before_commit(self.read_version);
        if self.writes.is_empty() {
            return Ok(());
        }
        let mut state = lock(&self.store.state);
        let since_begin = usize::try_from(self.read_version).expect("a test's version fits");
        let conflict = state.history[since_begin..]
            .iter()
            .flatten()
            .any(|written| self.reads.iter().any(|read| overlap(read, written)));
        if conflict {
            self.store.conflicts.fetch_add(1, Ordering::Relaxed);
            return Err(StoreError::Conflict);
        }
        // The view is the snapshot plus our writes; apply just our writes
        // (others may have committed other keys since the snapshot).
        for (begin, end) in &self.writes {
            let doomed: Vec<Vec<u8>> = state
                .data
                .range(bounds(begin, end))
                .map(|(k, _)| k.clone())
                .collect();
            for key in doomed {
                state.data.remove(&key);
            }
            for (key, value) in self.view.range(bounds(begin, end)) {
                state.data.insert(key.clone(), value.clone());
            }
        }
        state.version += 1;
        state.history.push(self.writes);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(store: &OccStore, key: &[u8], value: &[u8]) {
        let mut txn = store.begin().unwrap();
        txn.set(key, value).unwrap();
        txn.commit().unwrap();
    }

    #[test]
    fn a_commit_conflicts_only_when_something_it_read_changed_since_it_began() {
        let store = OccStore::new();
        set(&store, b"a", b"1");
        let mut reader = store.begin().unwrap();
        assert_eq!(reader.get(b"a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(reader.get(b"absent").unwrap(), None);
        reader.set(b"out", b"x").unwrap();
        // A write of a key it did not read does not conflict...
        set(&store, b"b", b"2");
        let mut other = store.begin().unwrap();
        other.get(b"b").unwrap();
        other.set(b"c", b"3").unwrap();
        other.commit().unwrap();
        // ...nor does its own snapshot see it.
        assert_eq!(reader.get(b"b").unwrap(), None);
        // A write of an absent key it read does.
        set(&store, b"absent", b"now");
        assert_eq!(reader.commit(), Err(StoreError::Conflict));
        assert_eq!(store.value(b"out"), None);
        assert_eq!(store.conflicts(), 1);
    }

    #[test]
    fn range_reads_conflict_with_writes_anywhere_in_the_range() {
        let store = OccStore::new();
        let mut scan = store.begin().unwrap();
        assert!(scan.get_range(b"k0", b"k9", 1).unwrap().is_empty());
        scan.set(b"z", b"1").unwrap();
        set(&store, b"k5", b"x");
        assert_eq!(scan.commit(), Err(StoreError::Conflict));
        // Read-only transactions never conflict.
        let mut look = store.begin().unwrap();
        look.get(b"k5").unwrap();
        set(&store, b"k5", b"y");
        look.commit().unwrap();
    }

    #[test]
    fn commits_apply_only_their_own_writes_and_clears() {
        let store = OccStore::new();
        set(&store, b"k1", b"1");
        set(&store, b"k2", b"2");
        let mut txn = store.begin().unwrap();
        txn.clear_range(b"k0", b"k2").unwrap();
        txn.set(b"k3", b"3").unwrap();
        // Committed meanwhile, not read by txn: kept.
        set(&store, b"k4", b"4");
        txn.commit().unwrap();
        let mut check = store.begin().unwrap();
        let keys: Vec<Vec<u8>> = check
            .get_range(b"k", b"l", usize::MAX)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, vec![b"k2".to_vec(), b"k3".to_vec(), b"k4".to_vec()]);
    }

    #[test]
    fn the_hook_commits_between_a_transactions_reads_and_its_commit() {
        let store = OccStore::new();
        store.set_before_commit(Arc::new(|store: &OccStore, _: u64| {
            set(store, b"bumped", b"1")
        }));
        let mut txn = store.begin().unwrap();
        txn.get(b"bumped").unwrap();
        txn.set(b"mine", b"1").unwrap();
        // The hook's own commit ran without the hook (no recursion); ours
        // then conflicts with it.
        assert_eq!(txn.commit(), Err(StoreError::Conflict));
        assert_eq!(store.value(b"bumped"), Some(b"1".to_vec()));
    }
}
