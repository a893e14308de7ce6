//! The transactional key-value contract every coordination-store backend
//! implements, and the retry loop everything above it uses.
//!
//! The contract (what the election, checkpoint and registry logic rely on):
//! - a [`KvTxn`] sees one consistent snapshot plus its own writes, and that
//!   snapshot includes every commit acknowledged before the transaction
//!   began (strict serializability: FoundationDB's read versions, the etcd
//!   backend's linearizable first read, SQLite's lock). A takeover relies on
//!   it: it reads the newest checkpoint in one transaction and writes its
//!   output marks in another, so a stale "no checkpoint yet" would mark the
//!   outputs above what an earlier leader produced (the pipeline simulator,
//!   `tests/sim`, shows that under stale snapshots);
//! - `commit` is serialisable: if anything the transaction read was changed
//!   by another committed transaction, commit fails with
//!   [`StoreError::Conflict`] and nothing of it is applied;
//! - a commit may fail with [`StoreError::CommitUnknown`] (FoundationDB's
//!   `commit_unknown_result`): it may or may not have been applied, so every
//!   transaction body given to [`transact`] must be idempotent — re-running
//!   it after an applied commit must be harmless (check-then-write);
//! - values are at most [`MAX_VALUE_BYTES`] and one transaction writes at
//!   most [`MAX_TXN_WRITE_BYTES`] (FoundationDB's limits, with headroom);
//!   backends refuse more with [`StoreError::TooLarge`].

use std::time::{Duration, Instant};

/// Largest value one key may hold: 100 kB, FoundationDB's limit.
pub const MAX_VALUE_BYTES: usize = 100_000;
/// Largest total of keys and values one transaction may write: 1 MB,
/// well under FoundationDB's 10 MB hard limit.
pub const MAX_TXN_WRITE_BYTES: usize = 1_000_000;
/// Largest key: 9,900 bytes, under FoundationDB's 10 kB limit with room for
/// the backend's directory prefix (which FoundationDB counts).
pub const MAX_KEY_BYTES: usize = 9_900;
/// Most bytes (keys and values) one transaction may read: 10 MB.
/// FoundationDB cancels a transaction after 5 s and advises keeping reads
/// well under 10 MB; a transaction within this budget reads in well under a
/// second on a healthy cluster, leaving the rest of the 5 s for its writes,
/// commit and a retry. Wider reads page across transactions, as checkpoints
/// and modules do (`checkpoint::MAX_CHUNKS_PER_TXN` chunks per
/// transaction).
pub const MAX_TXN_READ_BYTES: usize = 10_000_000;

/// Most keys and ranges a transaction that writes may read, and most keys
/// and ranges it may write: 128, etcd's `--max-txn-ops` default (each read
/// becomes a compare of its one `Txn`, each write an operation). The etcd
/// backend refuses more with [`StoreError::TooLarge`]; logic above the
/// contract keeps its batches within it so every backend accepts them.
pub const MAX_TXN_OPERATIONS: usize = 128;

/// A key and its value.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// Another transaction changed what this one read; retry.
    #[error("transaction conflict")]
    Conflict,
    /// The commit may or may not have been applied.
    #[error("the commit outcome is unknown")]
    CommitUnknown,
    /// The store could not be reached or is locked for longer than the wait.
    #[error("the coordination store is unavailable: {0}")]
    Unavailable(String),
    /// A key, value or transaction over the limits.
    #[error("{0}")]
    TooLarge(String),
    /// Anything else (corrupt file, bad URL, I/O).
    #[error("coordination store error: {0}")]
    Other(String),
}

impl StoreError {
    /// Whether running the transaction again may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StoreError::Conflict | StoreError::CommitUnknown | StoreError::Unavailable(_)
        )
    }
}

/// One transaction. Dropping it without `commit` rolls it back.
pub trait KvTxn {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Keys in `[begin, end)`, ascending, at most `limit` of them.
    fn get_range(
        &mut self,
        begin: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError>;
    fn set(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError>;
    fn clear(&mut self, key: &[u8]) -> Result<(), StoreError>;
    /// Remove every key in `[begin, end)`.
    fn clear_range(&mut self, begin: &[u8], end: &[u8]) -> Result<(), StoreError>;
    fn commit(self: Box<Self>) -> Result<(), StoreError>;
}

/// A coordination-store backend.
pub trait KvStore: Send + Sync {
    /// Start a transaction that may write.
    fn begin(&self) -> Result<Box<dyn KvTxn + '_>, StoreError>;
    /// A short description for logs and status (`sqlite:/path`, `fdb:…`).
    fn describe(&self) -> String;
}

/// How [`transact`] retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Give up after this many attempts.
    pub max_attempts: u32,
    /// Give up once this much time has passed since the first attempt.
    pub max_elapsed: Duration,
    /// Pause before the second attempt; doubles after each retry.
    pub initial_backoff: Duration,
    /// Upper bound of the pause between attempts.
    pub max_backoff: Duration,
}

/// Default attempts of one transaction.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 20;
/// Default time budget of one transaction with its retries: 5 s, the life
/// of a FoundationDB transaction.
pub const DEFAULT_MAX_ELAPSED: Duration = Duration::from_secs(5);

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            max_elapsed: DEFAULT_MAX_ELAPSED,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(50),
        }
    }
}

/// What a transaction body returns: its value, or why it gives up.
pub type TxnResult<T> = Result<T, TxnAbort>;

/// A transaction body's reason to stop: a store error (retried when
/// retryable) or a decision of the body itself (never retried).
#[derive(Debug, thiserror::Error)]
pub enum TxnAbort {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Abort(anyhow::Error),
}

impl TxnAbort {
    /// Abort a transaction body with the caller's own error (never retried).
    pub fn with<E: std::error::Error + Send + Sync + 'static>(error: E) -> Self {
        TxnAbort::Abort(anyhow::Error::new(error))
    }
}

/// What [`transact`] returns when it gives up.
#[derive(Debug, thiserror::Error)]
pub enum TransactError {
    #[error("{source} (after {attempts} attempts)")]
    Store { source: StoreError, attempts: u32 },
    #[error(transparent)]
    Aborted(anyhow::Error),
}

impl TransactError {
    /// The body's own error of type `E` when it aborted with one, else this
    /// error wrapped by `wrap` (how callers get back their typed errors).
    pub fn into_typed<E>(self, wrap: impl FnOnce(TransactError) -> E) -> E
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        match self {
            TransactError::Aborted(abort) => match abort.downcast::<E>() {
                Ok(typed) => typed,
                Err(other) => wrap(TransactError::Aborted(other)),
            },
            store => wrap(store),
        }
    }

    /// The store error, if the store (not the body) made it fail.
    pub fn store_error(&self) -> Option<&StoreError> {
        match self {
            TransactError::Store { source, .. } => Some(source),
            TransactError::Aborted(_) => None,
        }
    }
}

/// Run `body` in a transaction and commit, retrying conflicts, unknown
/// commit results and unavailability within `policy`. `body` must be
/// idempotent (see the module docs).
pub fn transact<T>(
    store: &dyn KvStore,
    policy: &RetryPolicy,
    mut body: impl FnMut(&mut dyn KvTxn) -> TxnResult<T>,
) -> Result<T, TransactError> {
    let started = Instant::now();
    let mut backoff = policy.initial_backoff;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let outcome = store.begin().map_err(TxnAbort::Store).and_then(|mut txn| {
            let value = body(&mut *txn)?;
            txn.commit()?;
            Ok(value)
        });
        match outcome {
            Ok(value) => return Ok(value),
            Err(TxnAbort::Abort(error)) => return Err(TransactError::Aborted(error)),
            Err(TxnAbort::Store(error)) => {
                let out_of_budget = attempts >= policy.max_attempts
                    || started.elapsed() + backoff > policy.max_elapsed;
                if !error.is_retryable() || out_of_budget {
                    return Err(TransactError::Store {
                        source: error,
                        attempts,
                    });
                }
                tracing::debug!(attempt = attempts, "retrying transaction after {error}");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(policy.max_backoff);
            }
        }
    }
}

/// The end of the range of all keys that start with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (or empty): everything from `prefix` on.
    vec![0xff; prefix.len() + 1]
}

/// What a transaction has written and read so far, against
/// [`MAX_TXN_WRITE_BYTES`] and [`MAX_TXN_READ_BYTES`]. Writes count keys
/// and values of sets, keys of clears, both ends of cleared ranges; reads
/// count the keys and values returned — the same way on every backend, so
/// all accept and refuse the same transactions.
#[derive(Debug, Default)]
pub(crate) struct TxnBudget {
    written: usize,
    read: usize,
}

impl TxnBudget {
    /// Count `bytes` more written; refuse once the total passes the limit
    /// (and go on refusing: the budget stays spent).
    pub(crate) fn write(&mut self, bytes: usize) -> Result<(), StoreError> {
        self.written += bytes;
        if self.written > MAX_TXN_WRITE_BYTES {
            return Err(StoreError::TooLarge(format!(
                "the transaction writes more than {MAX_TXN_WRITE_BYTES} bytes"
            )));
        }
        Ok(())
    }

    /// Count the pairs a read returned; refuse once the total passes the
    /// limit. Backends that fetch a range in pages count each page as it
    /// comes, so a read too wide stops early instead of running into
    /// FoundationDB's transaction lifetime.
    pub(crate) fn read<'a>(
        &mut self,
        pairs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    ) -> Result<(), StoreError> {
        self.read += pairs
            .into_iter()
            .map(|(key, value)| key.len() + value.len())
            .sum::<usize>();
        if self.read > MAX_TXN_READ_BYTES {
            return Err(StoreError::TooLarge(format!(
                "the transaction reads more than {MAX_TXN_READ_BYTES} bytes: page the read across transactions"
            )));
        }
        Ok(())
    }
}

/// Check a write against the limits.
pub(crate) fn check_write(key: &[u8], value: &[u8]) -> Result<(), StoreError> {
    if key.len() > MAX_KEY_BYTES {
        return Err(StoreError::TooLarge(format!(
            "a key of {} bytes exceeds the {MAX_KEY_BYTES}-byte limit",
            key.len()
        )));
    }
    if value.len() > MAX_VALUE_BYTES {
        return Err(StoreError::TooLarge(format!(
            "a value of {} bytes exceeds the {MAX_VALUE_BYTES}-byte limit",
            value.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_bounds_the_prefix() {
        assert_eq!(prefix_end(b"ab"), b"ac".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), b"\xff\xff".to_vec());
    }

    #[test]
    fn limits_are_checked() {
        assert!(check_write(&[0; 10], &[0; MAX_VALUE_BYTES]).is_ok());
        assert!(matches!(
            check_write(&[0; 10], &[0; MAX_VALUE_BYTES + 1]),
            Err(StoreError::TooLarge(_))
        ));
        assert!(matches!(
            check_write(&[0; MAX_KEY_BYTES + 1], &[]),
            Err(StoreError::TooLarge(_))
        ));
    }
}
