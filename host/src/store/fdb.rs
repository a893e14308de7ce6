//! The production backend: a FoundationDB cluster (cargo feature `fdb`).
//!
//! This module owns the process's FoundationDB client network (booted once,
//! see [`open`](FdbStore::open)) and maps the [`KvStore`]/[`KvTxn`] contract
//! onto FoundationDB transactions:
//!
//! - every key lives under one directory-layer subspace (the directory
//!   [`DIRECTORY`] by default), so the store shares a cluster with other
//!   applications; keys given to and returned by the contract never include
//!   that prefix;
//! - serialisability, read-your-writes and rollback-on-drop are
//!   FoundationDB's own (a dropped transaction is destroyed uncommitted);
//! - errors are mapped so [`transact`](super::transact) retries exactly what
//!   FoundationDB says may succeed on retry: `commit_unknown_result` (and any
//!   other "maybe committed" error) is [`StoreError::CommitUnknown`], other
//!   retryable errors (`not_committed`, `transaction_too_old`, …) are
//!   [`StoreError::Conflict`], timeouts and a locked database are
//!   [`StoreError::Unavailable`], everything else [`StoreError::Other`];
//! - the contract's limits are enforced before anything reaches the cluster,
//!   with the same accounting as the SQLite backend, so both accept and
//!   refuse the same transactions — except keys, whose FoundationDB limit
//!   ([`FDB_MAX_KEY_BYTES`]) also counts the directory prefix;
//! - every transaction is cancelled after [`TRANSACTION_TIMEOUT`], so an
//!   unreachable cluster yields [`StoreError::Unavailable`] instead of
//!   blocking forever (FoundationDB retries connecting indefinitely).
//!
//! The contract is synchronous: every FoundationDB future is awaited with
//! [`futures::executor::block_on`] on the calling thread; the client's own
//! network thread completes them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use foundationdb::api::{FdbApiBuilder, NetworkAutoStop};
use foundationdb::directory::{Directory, DirectoryError, DirectoryLayer};
use foundationdb::options::{DatabaseOption, StreamingMode};
use foundationdb::{Database, FdbError, KeySelector, RangeOption, Transaction};
use futures::executor::block_on;

use super::kv::{check_write, KeyValue, KvStore, KvTxn, StoreError, TxnBudget};

/// The directory-layer path whose subspace holds every key of the store.
pub const DIRECTORY: &str = "logstream";

/// Largest key FoundationDB accepts, 10 000 bytes, counting the directory
/// prefix this backend adds in front of the contract's keys.
pub const FDB_MAX_KEY_BYTES: usize = 10_000;

/// Life of one transaction (and of opening the directory) before the client
/// cancels it: 5 s, FoundationDB's own transaction lifetime, which is also
/// the default time budget of [`transact`](super::transact).
pub const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(5);

/// Attempts at creating or opening the directory at open time (each within
/// [`TRANSACTION_TIMEOUT`]).
const DIRECTORY_ATTEMPTS: u32 = 10;

/// FoundationDB error codes that mean the cluster cannot serve us now.
const TIMED_OUT: i32 = 1004;
const TRANSACTION_TIMED_OUT: i32 = 1031;
const DATABASE_LOCKED: i32 = 1038;

/// The process's FoundationDB client network, booted by the first
/// [`FdbStore::open`] and stopped by [`stop_network`] before the process
/// exits.
///
/// - FoundationDB's client network can be set up and run only once per
///   process: once stopped it cannot start again, so it is stopped only at
///   exit (the binary's `main` calls [`stop_network`] after the command
///   returned), never when a store closes.
/// - Stopping it joins its thread, so commits the client still had in
///   flight are finished or abandoned by the client itself, not cut by the
///   process dying under it — the clean exit the crate asks for.
/// - A process that dies without stopping it (kill -9) is the crash case
///   the store contract already tolerates: committed transactions are
///   durable on the cluster, an in-flight commit is the
///   `commit_unknown_result` case every transaction body handles.
///
/// The `Result` keeps a failed boot (no usable `libfdb_c`): it cannot be
/// retried in the same process, so every open reports it. `None` after
/// [`stop_network`].
static NETWORK: Mutex<Option<Result<NetworkAutoStop, FdbError>>> = Mutex::new(None);
/// Set once the network was stopped: opening a store then fails.
static STOPPED: AtomicBool = AtomicBool::new(false);

fn boot_network() -> Result<(), StoreError> {
    let mut network = NETWORK.lock().unwrap_or_else(|p| p.into_inner());
    if STOPPED.load(Ordering::SeqCst) {
        return Err(StoreError::Unavailable(
            "the FoundationDB client network was stopped (the process is exiting)".into(),
        ));
    }
    let network = network.get_or_insert_with(|| {
        let builder = FdbApiBuilder::default().build()?;
        // SAFETY: `boot` requires the returned guard to be dropped before the
        // process exits; `stop_network` drops it, and a process killed
        // before is the crash case (see `NETWORK`).
        unsafe { builder.boot() }
    });
    match network {
        Ok(_) => Ok(()),
        Err(error) => Err(StoreError::Unavailable(format!(
            "cannot start the FoundationDB client: {error} (FoundationDB error {})",
            error.code()
        ))),
    }
}

/// Stop FoundationDB's client network and join its thread, if it was
/// started. Call once, as the process exits: no store can open after it.
pub fn stop_network() {
    STOPPED.store(true, Ordering::SeqCst);
    let network = NETWORK.lock().unwrap_or_else(|p| p.into_inner()).take();
    drop(network);
}

/// Map a FoundationDB error onto the contract's errors (see the module docs).
fn store_error(error: FdbError) -> StoreError {
    let code = error.code();
    // `commit_unknown_result` is also retryable: test "maybe committed" first.
    if error.is_maybe_committed() {
        tracing::debug!(code, "FoundationDB commit outcome unknown: {error}");
        return StoreError::CommitUnknown;
    }
    if error.is_retryable() {
        tracing::debug!(code, "retryable FoundationDB error: {error}");
        return StoreError::Conflict;
    }
    let message = format!("{error} (FoundationDB error {code})");
    match code {
        TIMED_OUT | TRANSACTION_TIMED_OUT | DATABASE_LOCKED => StoreError::Unavailable(message),
        _ => StoreError::Other(message),
    }
}

fn directory_error(error: DirectoryError) -> StoreError {
    match error {
        DirectoryError::FdbError(error) => store_error(error),
        other => StoreError::Other(format!("FoundationDB directory layer: {other:?}")),
    }
}

/// A FoundationDB coordination store: one cluster, one directory.
pub struct FdbStore {
    database: Database,
    /// The directory's key prefix, in front of every contract key.
    prefix: Vec<u8>,
    cluster_file: Option<String>,
    path: Vec<String>,
}

impl FdbStore {
    /// Open the store in the directory [`DIRECTORY`] of the cluster named by
    /// `cluster_file` (or FoundationDB's default cluster file), creating the
    /// directory if needed. Boots the client network on first use.
    pub fn open(cluster_file: Option<&str>) -> Result<FdbStore, StoreError> {
        FdbStore::open_at(cluster_file, &[DIRECTORY])
    }

    /// Open the store in the directory at `path` (created if needed): a
    /// separate keyspace on the same cluster, as the conformance tests use.
    pub fn open_at(cluster_file: Option<&str>, path: &[&str]) -> Result<FdbStore, StoreError> {
        if path.is_empty() {
            return Err(StoreError::Other(
                "the FoundationDB store needs a non-empty directory path".into(),
            ));
        }
        boot_network()?;
        let database = Database::new(cluster_file).map_err(|error| {
            let where_ = cluster_file.unwrap_or("the default cluster file");
            StoreError::Unavailable(format!(
                "cannot open the FoundationDB cluster of {where_}: {error}"
            ))
        })?;
        let timeout_ms = i32::try_from(TRANSACTION_TIMEOUT.as_millis()).unwrap_or(i32::MAX);
        database
            .set_option(DatabaseOption::TransactionTimeout(timeout_ms))
            .map_err(store_error)?;
        let path: Vec<String> = path.iter().map(|part| part.to_string()).collect();
        let directory = DirectoryLayer::default();
        let prefix = run_directory_txn(&database, async |trx: &Transaction| {
            let output = directory.create_or_open(trx, &path, None, None).await?;
            Ok(output.bytes()?.to_vec())
        })?;
        Ok(FdbStore {
            database,
            prefix,
            cluster_file: cluster_file.map(str::to_string),
            path,
        })
    }

    /// Remove this store's directory and every key in it. For tests and
    /// tear-down only: on the default directory it erases the whole store.
    pub fn remove_directory(&self) -> Result<(), StoreError> {
        let directory = DirectoryLayer::default();
        run_directory_txn(&self.database, async |trx: &Transaction| {
            directory.remove_if_exists(trx, &self.path).await.map(drop)
        })
    }

    /// The directory-layer path of this store.
    pub fn path(&self) -> &[String] {
        &self.path
    }
}

/// Run a directory-layer operation in its own transaction and commit it,
/// with FoundationDB's retry loop (`on_error`), at most
/// [`DIRECTORY_ATTEMPTS`] times. `operation` must be idempotent (the
/// directory layer's create-or-open and remove-if-exists are).
fn run_directory_txn<T>(
    database: &Database,
    operation: impl AsyncFn(&Transaction) -> Result<T, DirectoryError>,
) -> Result<T, StoreError> {
    let mut trx = database.create_trx().map_err(store_error)?;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let error = match block_on(operation(&trx)) {
            Ok(value) => match block_on(trx.commit()) {
                Ok(_) => return Ok(value),
                Err(commit_error) => {
                    let error = *commit_error;
                    if attempts >= DIRECTORY_ATTEMPTS {
                        return Err(store_error(error));
                    }
                    trx = block_on(commit_error.on_error()).map_err(store_error)?;
                    continue;
                }
            },
            Err(DirectoryError::FdbError(error)) => error,
            Err(other) => return Err(directory_error(other)),
        };
        if attempts >= DIRECTORY_ATTEMPTS {
            return Err(store_error(error));
        }
        // Resets the transaction and backs off if `error` is retryable;
        // fails with `error` otherwise.
        trx = block_on(trx.on_error(error)).map_err(store_error)?;
    }
}

impl KvStore for FdbStore {
    fn begin(&self) -> Result<Box<dyn KvTxn + '_>, StoreError> {
        let trx = self.database.create_trx().map_err(store_error)?;
        Ok(Box::new(FdbTxn {
            trx,
            prefix: &self.prefix,
            budget: TxnBudget::default(),
        }))
    }

    fn describe(&self) -> String {
        format!(
            "fdb:{} (directory /{})",
            self.cluster_file.as_deref().unwrap_or(""),
            self.path.join("/")
        )
    }
}

/// One FoundationDB transaction; dropping it uncommitted destroys it, which
/// discards its writes.
struct FdbTxn<'a> {
    trx: Transaction,
    prefix: &'a [u8],
    /// Bytes of keys and values written and read so far, counted like the
    /// SQLite backend counts them (contract keys, without the prefix).
    budget: TxnBudget,
}

impl FdbTxn<'_> {
    fn key(&self, key: &[u8]) -> Vec<u8> {
        let mut full = Vec::with_capacity(self.prefix.len() + key.len());
        full.extend_from_slice(self.prefix);
        full.extend_from_slice(key);
        full
    }
}

impl KvTxn for FdbTxn<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let value = block_on(self.trx.get(&self.key(key), false)).map_err(store_error)?;
        let value = value.map(|slice| slice.to_vec());
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
        // FoundationDB reads a limit of 0 as "no limit", and an inverted range
        // as an error; the contract wants nothing for both.
        if limit == 0 || begin >= end {
            return Ok(Vec::new());
        }
        let mut range = RangeOption {
            begin: KeySelector::first_greater_or_equal(self.key(begin)),
            end: KeySelector::first_greater_or_equal(self.key(end)),
            limit: Some(limit),
            mode: StreamingMode::WantAll,
            ..RangeOption::default()
        };
        let mut pairs = Vec::new();
        // One read may return fewer rows than asked (byte limits) and say
        // there are more: continue after its last key until the limit.
        // Each batch is counted as it comes, so a read wider than the
        // budget stops at the batch that passes it, well inside the
        // transaction's 5 s, rather than fetching on until FoundationDB
        // cancels the transaction (and every retry of it).
        for iteration in 1.. {
            let batch =
                block_on(self.trx.get_range(&range, iteration, false)).map_err(store_error)?;
            let first = pairs.len();
            for pair in batch.iter() {
                let key = pair.key().strip_prefix(self.prefix).ok_or_else(|| {
                    StoreError::Other(
                        "FoundationDB returned a key outside the store's directory".into(),
                    )
                })?;
                pairs.push((key.to_vec(), pair.value().to_vec()));
            }
            self.budget.read(
                pairs[first..]
                    .iter()
                    .map(|(k, v): &KeyValue| (k.as_slice(), v.as_slice())),
            )?;
            match range.next_range(&batch) {
                Some(next) => range = next,
                None => break,
            }
        }
        Ok(pairs)
    }

    fn set(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        check_write(key, value)?;
        if self.prefix.len() + key.len() > FDB_MAX_KEY_BYTES {
            return Err(StoreError::TooLarge(format!(
                "a key of {} bytes exceeds FoundationDB's {FDB_MAX_KEY_BYTES}-byte limit with the \
                 {}-byte directory prefix",
                key.len(),
                self.prefix.len()
            )));
        }
        self.budget.write(key.len() + value.len())?;
        self.trx.set(&self.key(key), value);
        Ok(())
    }

    fn clear(&mut self, key: &[u8]) -> Result<(), StoreError> {
        self.budget.write(key.len())?;
        self.trx.clear(&self.key(key));
        Ok(())
    }

    fn clear_range(&mut self, begin: &[u8], end: &[u8]) -> Result<(), StoreError> {
        self.budget.write(begin.len() + end.len())?;
        // An inverted range is an error in FoundationDB, and removes nothing
        // in the contract.
        if begin < end {
            self.trx.clear_range(&self.key(begin), &self.key(end));
        }
        Ok(())
    }

    fn commit(self: Box<Self>) -> Result<(), StoreError> {
        block_on(self.trx.commit())
            .map(drop)
            .map_err(|error| store_error(*error))
    }
}
