//! The deployment's name: one per coordination store, shared by every host
//! of that store, and part of every id the hosts put on the broker
//! ([`crate::unit_id`]).
//!
//! This module owns the key `("meta", "deployment")` (the name, UTF-8).
//!
//! Guarantees:
//! - **One name per store.** The first host to start writes it (the name
//!   its configuration gives, or a generated one) in a transaction that
//!   checks no other was written first; every later host reads it. A host
//!   configured with another name is refused ([`DeploymentError::Mismatch`])
//!   rather than run under two names, which would make its units' ids
//!   differ from its peers' and break suppression at takeover.
//! - **Unique by default.** A generated name is `ls-` and 10 hex digits of
//!   a hash of the store's description, the time and the process id, so two
//!   stores sharing a broker get different names without any configuration.

use sha2::{Digest, Sha256};

use super::keys;
use super::kv::{transact, KvStore, RetryPolicy, TransactError, TxnAbort};
use crate::unit_id::Deployment;

/// Why the deployment name could not be settled.
#[derive(Debug, thiserror::Error)]
pub enum DeploymentError {
    #[error("this store belongs to deployment {stored:?}, but this host is configured for {configured:?}; use the store's name or another store")]
    Mismatch { stored: String, configured: String },
    #[error("the deployment name stored in the store is unusable: {0}")]
    Corrupt(String),
    #[error("the coordination store failed: {0}")]
    Store(#[source] TransactError),
}

/// The store's deployment name, if a host has settled one.
pub fn read(store: &dyn KvStore) -> Result<Option<Deployment>, DeploymentError> {
    transact(store, &RetryPolicy::default(), |txn| {
        txn.get(&keys::deployment()).map_err(TxnAbort::Store)
    })
    .map_err(|e| e.into_typed(DeploymentError::Store))?
    .map(|bytes| parse(&bytes))
    .transpose()
}

/// The store's deployment name, settled now if it is not yet: `configured`
/// if given, a generated one otherwise. Refused when the store already has
/// another name than `configured`.
pub fn settle(
    store: &dyn KvStore,
    configured: Option<&Deployment>,
) -> Result<Deployment, DeploymentError> {
    let proposed = configured
        .cloned()
        .unwrap_or_else(|| generated(&store.describe()));
    let stored = transact(store, &RetryPolicy::default(), |txn| {
        // Check-then-write: a retry after an applied commit reads our own
        // name back and writes nothing.
        if let Some(stored) = txn.get(&keys::deployment())? {
            return Ok(stored);
        }
        txn.set(&keys::deployment(), proposed.as_str().as_bytes())?;
        Ok(proposed.as_str().as_bytes().to_vec())
    })
    .map_err(|e| e.into_typed(DeploymentError::Store))?;
    let stored = parse(&stored)?;
    match configured {
        Some(configured) if *configured != stored => Err(DeploymentError::Mismatch {
            stored: stored.to_string(),
            configured: configured.to_string(),
        }),
        _ => Ok(stored),
    }
}

fn parse(bytes: &[u8]) -> Result<Deployment, DeploymentError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| DeploymentError::Corrupt("it is not UTF-8".into()))?;
    Deployment::new(text).map_err(DeploymentError::Corrupt)
}

/// A fresh name for a store described as `description`.
fn generated(description: &str) -> Deployment {
    let mut hash = Sha256::new();
    hash.update(description.as_bytes());
    hash.update(crate::probe::unix_micros().to_le_bytes());
    hash.update(std::process::id().to_le_bytes());
    let digest = hex::encode(hash.finalize());
    Deployment::new(&format!("ls-{}", &digest[..10])).expect("a generated name is valid")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;

    fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("s.db")).unwrap();
        (dir, store)
    }

    #[test]
    fn the_first_host_settles_the_name_and_the_others_read_it() {
        let (_dir, store) = store();
        assert!(read(&store).unwrap().is_none());
        let first = settle(&store, None).unwrap();
        assert!(first.as_str().starts_with("ls-"), "{first}");
        assert_eq!(settle(&store, None).unwrap(), first);
        assert_eq!(settle(&store, Some(&first)).unwrap(), first);
        assert_eq!(read(&store).unwrap(), Some(first));
    }

    #[test]
    fn a_configured_name_is_kept_and_another_is_refused() {
        let (_dir, store) = store();
        let prod = Deployment::new("prod").unwrap();
        assert_eq!(settle(&store, Some(&prod)).unwrap(), prod);
        let error = settle(&store, Some(&Deployment::new("staging").unwrap())).unwrap_err();
        assert!(
            matches!(&error, DeploymentError::Mismatch { stored, configured }
                if stored == "prod" && configured == "staging"),
            "{error}"
        );
        assert_eq!(settle(&store, None).unwrap(), prod);
    }

    #[test]
    fn generated_names_differ_between_stores() {
        let (_a_dir, a) = store();
        let (_b_dir, b) = store();
        assert_ne!(settle(&a, None).unwrap(), settle(&b, None).unwrap());
    }
}
