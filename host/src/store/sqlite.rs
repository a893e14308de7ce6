//! The embedded default backend: one SQLite file shared by the host
//! processes of one machine.
//!
//! Every transaction is `BEGIN IMMEDIATE`: it holds the database's write lock
//! from its first read to its commit, so transactions are serial (hence
//! serialisable) across processes and never conflict; waiting for the lock is
//! bounded by [`BUSY_TIMEOUT`], after which the store reports itself
//! unavailable (retryable). WAL mode lets the file survive kill -9 of any
//! process at any point; `synchronous=NORMAL` in WAL mode is durable across
//! process crashes, which is the failure this single-machine store exists
//! for (a power loss takes every host of the machine down with it).
//!
//! A file on a network filesystem (NFS, SMB/CIFS, FUSE, 9p, Ceph, …) is
//! refused at open: SQLite's locks are not reliable there, and hosts on
//! several machines need a distributed store (etcd, FoundationDB) anyway.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension};

use super::kv::{check_write, KeyValue, KvStore, KvTxn, StoreError, TxnBudget};

/// How long a transaction waits for another process's write lock.
pub const BUSY_TIMEOUT: Duration = Duration::from_millis(250);
/// How long opening the store keeps retrying while other processes hold
/// the file's lock (switching to WAL and creating the table need it).
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// A SQLite-file coordination store.
pub struct SqliteStore {
    path: PathBuf,
    connection: Mutex<Connection>,
}

impl SqliteStore {
    /// Open (creating if needed) the store file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
        if let Some(parent) = parent {
            std::fs::create_dir_all(parent).map_err(|e| {
                StoreError::Other(format!(
                    "cannot create the directory {}: {e}",
                    parent.display()
                ))
            })?;
        }
        if let Some(kind) = network_filesystem(parent.unwrap_or(Path::new("."))) {
            return Err(StoreError::Other(format!(
                "the SQLite store {} is on a network filesystem ({kind}), where SQLite's locks are not reliable: use a local disk, or etcd (`etcd:http://…`) or FoundationDB for hosts on several machines",
                path.display()
            )));
        }
        let deadline = std::time::Instant::now() + OPEN_TIMEOUT;
        loop {
            match Self::open_once(&path) {
                Err(StoreError::Unavailable(_)) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(BUSY_TIMEOUT);
                }
                result => return result,
            }
        }
    }

    fn open_once(path: &Path) -> Result<Self, StoreError> {
        let path = path.to_path_buf();
        let connection = Connection::open(&path).map_err(|e| open_error(&path, e))?;
        connection
            .busy_timeout(BUSY_TIMEOUT)
            .and_then(|_| {
                connection.execute_batch(
                    "PRAGMA journal_mode = WAL;
                     PRAGMA synchronous = NORMAL;
                     CREATE TABLE IF NOT EXISTS kv (key BLOB PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;",
                )
            })
            .map_err(|e| open_error(&path, e))?;
        Ok(SqliteStore {
            path,
            connection: Mutex::new(connection),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The kind of network filesystem `directory` is on, if it is one.
fn network_filesystem(directory: &Path) -> Option<&'static str> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(directory.as_os_str().as_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: a valid NUL-terminated path and a buffer of the right type.
    let result = unsafe { libc::statfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if result != 0 {
        // Not knowing is not a reason to refuse: SQLite reports what is wrong.
        return None;
    }
    // SAFETY: statfs succeeded and filled the buffer.
    let magic = unsafe { stat.assume_init() }.f_type as u64;
    network_filesystem_kind(magic)
}

/// Network and cluster filesystems by their statfs(2) magic number.
fn network_filesystem_kind(magic: u64) -> Option<&'static str> {
    Some(match magic {
        0x6969 => "nfs",
        0x517b => "smb",
        0xff53_4d42 => "cifs",
        0xfe53_4d42 => "smb2",
        0x6573_5546 => "fuse",
        0x0102_1997 => "9p",
        0x00c3_6400 => "ceph",
        0x5346_414f => "afs",
        0x7375_7245 => "coda",
        0x0116_1970 => "gfs2",
        0x7461_636f => "ocfs2",
        0x0bd0_0bd0 => "lustre",
        _ => return None,
    })
}

fn open_error(path: &Path, error: rusqlite::Error) -> StoreError {
    if is_busy(&error) {
        return StoreError::Unavailable(format!("{} is locked: {error}", path.display()));
    }
    StoreError::Other(format!(
        "cannot open the SQLite store {}: {error}",
        path.display()
    ))
}

fn is_busy(error: &rusqlite::Error) -> bool {
    matches!(
        error.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

fn store_error(error: rusqlite::Error) -> StoreError {
    if is_busy(&error) {
        StoreError::Unavailable(format!(
            "the SQLite store is locked by another process ({error})"
        ))
    } else {
        StoreError::Other(error.to_string())
    }
}

impl KvStore for SqliteStore {
    fn begin(&self) -> Result<Box<dyn KvTxn + '_>, StoreError> {
        // A poisoned mutex only means another thread panicked mid-transaction;
        // its transaction was rolled back when its guard dropped.
        let connection = self.connection.lock().unwrap_or_else(|p| p.into_inner());
        connection
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(store_error)?;
        Ok(Box::new(SqliteTxn {
            connection,
            finished: false,
            budget: TxnBudget::default(),
        }))
    }

    fn describe(&self) -> String {
        format!("sqlite:{}", self.path.display())
    }
}

struct SqliteTxn<'a> {
    connection: MutexGuard<'a, Connection>,
    finished: bool,
    budget: TxnBudget,
}

impl KvTxn for SqliteTxn<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let value: Option<Vec<u8>> = self
            .connection
            .prepare_cached("SELECT value FROM kv WHERE key = ?1")
            .and_then(|mut statement| statement.query_row([key], |row| row.get(0)).optional())
            .map_err(store_error)?;
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
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut statement = self
            .connection
            .prepare_cached(
                "SELECT key, value FROM kv WHERE key >= ?1 AND key < ?2 ORDER BY key LIMIT ?3",
            )
            .map_err(store_error)?;
        let rows = statement
            .query_map(rusqlite::params![begin, end, limit], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .map_err(store_error)?;
        let pairs: Vec<KeyValue> = rows.collect::<Result<_, _>>().map_err(store_error)?;
        self.budget
            .read(pairs.iter().map(|(k, v)| (k.as_slice(), v.as_slice())))?;
        Ok(pairs)
    }

    fn set(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        check_write(key, value)?;
        self.budget.write(key.len() + value.len())?;
        self.connection
            .prepare_cached("INSERT INTO kv (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
            .and_then(|mut statement| statement.execute([key, value]))
            .map(drop)
            .map_err(store_error)
    }

    fn clear(&mut self, key: &[u8]) -> Result<(), StoreError> {
        self.budget.write(key.len())?;
        self.connection
            .prepare_cached("DELETE FROM kv WHERE key = ?1")
            .and_then(|mut statement| statement.execute([key]))
            .map(drop)
            .map_err(store_error)
    }

    fn clear_range(&mut self, begin: &[u8], end: &[u8]) -> Result<(), StoreError> {
        self.budget.write(begin.len() + end.len())?;
        self.connection
            .prepare_cached("DELETE FROM kv WHERE key >= ?1 AND key < ?2")
            .and_then(|mut statement| statement.execute([begin, end]))
            .map(drop)
            .map_err(store_error)
    }

    fn commit(mut self: Box<Self>) -> Result<(), StoreError> {
        self.finished = true;
        if let Err(error) = self.connection.execute_batch("COMMIT") {
            let _ = self.connection.execute_batch("ROLLBACK");
            return Err(store_error(error));
        }
        Ok(())
    }
}

impl Drop for SqliteTxn<'_> {
    fn drop(&mut self) {
        if !self.finished {
            // Nothing to report to: a failed rollback leaves the transaction
            // to be rolled back when the connection next begins or closes.
            let _ = self.connection.execute_batch("ROLLBACK");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_filesystems_are_named_and_local_ones_are_not() {
        assert_eq!(network_filesystem_kind(0x6969), Some("nfs"));
        assert_eq!(network_filesystem_kind(0xff53_4d42), Some("cifs"));
        assert_eq!(network_filesystem_kind(0x6573_5546), Some("fuse"));
        // ext4 and tmpfs.
        assert_eq!(network_filesystem_kind(0xef53), None);
        assert_eq!(network_filesystem_kind(0x0102_1994), None);
        let local = tempfile::tempdir().unwrap();
        assert_eq!(network_filesystem(local.path()), None);
    }
}
