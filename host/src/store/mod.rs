//! The coordination store: one transactional key-value contract ([`kv`])
//! with three backends (SQLite by default, etcd across machines, and
//! FoundationDB behind the `fdb` feature), and everything failover stands
//! on written once above it.
//!
//! - [`kv`]: the contract, limits and the retry loop;
//! - [`sqlite`]: the embedded single-machine backend;
//! - `etcd`: the distributed backend (feature `etcd`, on by default);
//! - [`keys`]: the key layout (FoundationDB tuple encoding);
//! - [`key_range`]: key-range arithmetic for stores that track read and
//!   write sets (the optimistic test and simulator stores);
//! - [`clock`]: injectable monotonic time;
//! - [`election`]: lease election with epoch fencing;
//! - [`deployment`]: the deployment's name, one per store;
//! - [`membership`]: host registration, heartbeats and liveness;
//! - [`checkpoint`]: fenced, chunked checkpoints of processor state;
//! - [`producer_generation`]: which transactional id a unit produces as;
//! - [`registry`]: content-addressed modules and processor specs;
//! - `occ_memory` (tests only): an in-memory store with optimistic
//!   concurrency, to test the logic above against conflicts SQLite hides.

pub mod checkpoint;
pub mod clock;
pub mod deployment;
pub mod election;
pub mod key_range;
pub mod keys;
pub mod kv;
pub mod membership;
#[cfg(test)]
pub(crate) mod occ_memory;
pub mod producer_generation;
pub mod registry;
pub mod sqlite;

pub use kv::{
    transact, KvStore, KvTxn, RetryPolicy, StoreError, TransactError, TxnAbort, TxnResult,
};
pub use sqlite::SqliteStore;

use std::sync::Arc;

/// Open a store from its URL: `sqlite:PATH`, `etcd:MEMBER[,MEMBER…][?prefix=P]`,
/// or `fdb:CLUSTER_FILE` / `fdb:` (the default cluster file) when built with
/// the `fdb` feature.
pub fn open(url: &str) -> Result<Arc<dyn KvStore>, StoreError> {
    if let Some(path) = url.strip_prefix("sqlite:") {
        if path.is_empty() {
            return Err(StoreError::Other("the store URL `sqlite:` needs a file path, e.g. `sqlite:/var/lib/logstream/store.db`".into()));
        }
        return Ok(Arc::new(SqliteStore::open(path)?));
    }
    if let Some(members) = url.strip_prefix("etcd:") {
        return open_etcd(members);
    }
    if url.starts_with("fdb:") {
        return open_fdb(url.trim_start_matches("fdb:"));
    }
    Err(StoreError::Other(format!(
        "the store URL {url:?} is none of `sqlite:PATH`, `etcd:http://HOST:PORT[,…]` and `fdb:[CLUSTER_FILE]`"
    )))
}

#[cfg(not(feature = "etcd"))]
fn open_etcd(_members: &str) -> Result<Arc<dyn KvStore>, StoreError> {
    Err(StoreError::Other(
        "this logstream was built without etcd support (cargo feature `etcd`)".into(),
    ))
}

#[cfg(feature = "etcd")]
fn open_etcd(members: &str) -> Result<Arc<dyn KvStore>, StoreError> {
    Ok(Arc::new(etcd::EtcdStore::open_url(members)?))
}

#[cfg(feature = "etcd")]
pub mod etcd;

#[cfg(not(feature = "fdb"))]
fn open_fdb(_cluster_file: &str) -> Result<Arc<dyn KvStore>, StoreError> {
    Err(StoreError::Other(
        "this logstream was built without FoundationDB support (cargo feature `fdb`)".into(),
    ))
}

#[cfg(feature = "fdb")]
fn open_fdb(cluster_file: &str) -> Result<Arc<dyn KvStore>, StoreError> {
    let cluster_file = (!cluster_file.is_empty()).then_some(cluster_file);
    Ok(Arc::new(fdb::FdbStore::open(cluster_file)?))
}

#[cfg(feature = "fdb")]
pub mod fdb;
