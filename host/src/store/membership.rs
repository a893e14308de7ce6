//! Host membership: every host registers under `("host", HOST_ID)` and bumps
//! a heartbeat counter there, so any host (or `logstream status`) can tell
//! who is alive.
//!
//! Liveness follows the election's timing model: an observer calls a host
//! alive while its `(incarnation, heartbeat)` keeps changing, judged on the
//! observer's own monotonic clock ([`LivenessView`]); wall-clock fields are
//! for display only and never compared across machines.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::keys;
use super::kv::{prefix_end, transact, KvStore, RetryPolicy, TransactError, TxnAbort};

/// Hosts listed per read, at most.
pub const MAX_HOSTS: usize = 10_000;

/// What a host publishes about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    pub host_id: String,
    /// The process incarnation currently registered under this host id.
    pub incarnation: String,
    /// Bumped by every heartbeat.
    pub heartbeat: u64,
    /// When this incarnation started, ms since the Unix epoch (display only).
    pub started_at_unix_ms: u64,
    /// The host's `logstream` version.
    pub version: String,
    /// How many units the host may run, and runs (absent from probes and
    /// older hosts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<HostCapacity>,
    /// Whether the host reaches its brokers (`pipeline::broker_health`);
    /// absent from probes and older hosts, which count as reaching them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_reachable: Option<bool>,
}

impl HostRecord {
    /// Whether the host says it reaches its brokers (absent: yes).
    pub fn reaches_brokers(&self) -> bool {
        self.broker_reachable != Some(false)
    }
}

/// A host's unit capacity, as it last published it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostCapacity {
    /// `logstream host --max-units`.
    pub max_units: u32,
    /// Units it runs now.
    pub units: u32,
}

/// Why membership failed.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("the membership record of host '{host_id}' is unreadable: {reason}")]
    Corrupt { host_id: String, reason: String },
    #[error(transparent)]
    Store(#[from] TransactError),
}

fn corrupt(host_id: &str, error: serde_json::Error) -> TxnAbort {
    TxnAbort::with(MembershipError::Corrupt {
        host_id: host_id.to_string(),
        reason: error.to_string(),
    })
}

/// Register (or re-register) this incarnation, or bump its heartbeat.
/// Returns the heartbeat written. Idempotent under retry: it writes the
/// stored counter plus one, read in the same transaction.
pub fn heartbeat(
    store: &dyn KvStore,
    policy: &RetryPolicy,
    host_id: &str,
    incarnation: &str,
    started_at_unix_ms: u64,
    capacity: Option<HostCapacity>,
    broker_reachable: Option<bool>,
) -> Result<u64, MembershipError> {
    let key = keys::host(host_id);
    let result = transact(store, policy, |txn| {
        let previous = match txn.get(&key)? {
            Some(bytes) => Some(
                serde_json::from_slice::<HostRecord>(&bytes).map_err(|e| corrupt(host_id, e))?,
            ),
            None => None,
        };
        let record = HostRecord {
            host_id: host_id.to_string(),
            incarnation: incarnation.to_string(),
            heartbeat: previous.map_or(0, |p| p.heartbeat + 1),
            started_at_unix_ms,
            version: env!("CARGO_PKG_VERSION").to_string(),
            capacity,
            broker_reachable,
        };
        txn.set(&key, &serde_json::to_vec(&record).expect("serialises"))?;
        Ok(record.heartbeat)
    });
    unwrap_abort(result)
}

/// Remove a host's record (graceful shutdown), if this incarnation owns it.
pub fn deregister(
    store: &dyn KvStore,
    policy: &RetryPolicy,
    host_id: &str,
    incarnation: &str,
) -> Result<(), MembershipError> {
    let key = keys::host(host_id);
    let result = transact(store, policy, |txn| {
        if let Some(bytes) = txn.get(&key)? {
            let record: HostRecord =
                serde_json::from_slice(&bytes).map_err(|e| corrupt(host_id, e))?;
            if record.incarnation == incarnation {
                txn.clear(&key)?;
            }
        }
        Ok(())
    });
    unwrap_abort(result)
}

/// Every registered host, by host id.
pub fn list_hosts(
    store: &dyn KvStore,
    policy: &RetryPolicy,
) -> Result<Vec<HostRecord>, MembershipError> {
    let subspace = keys::hosts();
    let begin = subspace.bytes().to_vec();
    let end = prefix_end(&begin);
    let result = transact(store, policy, |txn| {
        txn.get_range(&begin, &end, MAX_HOSTS)?
            .into_iter()
            .map(|(_, value)| {
                serde_json::from_slice::<HostRecord>(&value).map_err(|e| corrupt("(listing)", e))
            })
            .collect::<Result<Vec<_>, _>>()
    });
    unwrap_abort(result)
}

fn unwrap_abort<T>(result: Result<T, TransactError>) -> Result<T, MembershipError> {
    result.map_err(|error| error.into_typed(MembershipError::Store))
}

/// One observer's view of which hosts are alive.
#[derive(Debug, Default)]
pub struct LivenessView {
    /// host id -> (incarnation, heartbeat) last seen and when it changed.
    seen: BTreeMap<String, ((String, u64), Duration)>,
}

impl LivenessView {
    /// Take in a listing read at `now` (observer's monotonic clock).
    pub fn observe(&mut self, now: Duration, hosts: &[HostRecord]) {
        self.seen
            .retain(|id, _| hosts.iter().any(|h| &h.host_id == id));
        for host in hosts {
            let value = (host.incarnation.clone(), host.heartbeat);
            match self.seen.get(&host.host_id) {
                Some((seen, _)) if *seen == value => {}
                _ => {
                    self.seen.insert(host.host_id.clone(), (value, now));
                }
            }
        }
    }

    /// Whether `host_id` changed its record within `lease` before `now`.
    /// A host seen for the first time counts as alive until a lease passes.
    pub fn is_alive(&self, host_id: &str, now: Duration, lease: Duration) -> bool {
        self.seen
            .get(host_id)
            .is_some_and(|(_, changed_at)| now < *changed_at + lease)
    }

    /// How long since `host_id`'s record last changed, if known.
    pub fn silent_for(&self, host_id: &str, now: Duration) -> Option<Duration> {
        self.seen
            .get(host_id)
            .map(|(_, changed_at)| now.saturating_sub(*changed_at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;

    #[test]
    fn hosts_register_heartbeat_list_and_leave() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("s.db")).unwrap();
        let policy = RetryPolicy::default();
        assert_eq!(
            heartbeat(&store, &policy, "a", "a:1", 5, None, None).unwrap(),
            0
        );
        assert_eq!(
            heartbeat(&store, &policy, "a", "a:1", 5, None, None).unwrap(),
            1
        );
        heartbeat(&store, &policy, "b", "b:1", 6, None, None).unwrap();
        let hosts = list_hosts(&store, &policy).unwrap();
        assert_eq!(
            hosts.iter().map(|h| h.host_id.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        // Another incarnation's deregistration does not remove a's record.
        deregister(&store, &policy, "a", "a:0").unwrap();
        assert_eq!(list_hosts(&store, &policy).unwrap().len(), 2);
        deregister(&store, &policy, "a", "a:1").unwrap();
        assert_eq!(list_hosts(&store, &policy).unwrap().len(), 1);
    }

    #[test]
    fn liveness_is_judged_on_the_observers_clock() {
        let lease = Duration::from_millis(500);
        let record = |beat| HostRecord {
            host_id: "a".into(),
            incarnation: "a:1".into(),
            heartbeat: beat,
            started_at_unix_ms: 0,
            version: "x".into(),
            capacity: None,
            broker_reachable: None,
        };
        let mut view = LivenessView::default();
        view.observe(Duration::from_secs(1), &[record(1)]);
        assert!(view.is_alive("a", Duration::from_millis(1400), lease));
        // Same heartbeat seen again: the clock keeps running from the change.
        view.observe(Duration::from_millis(1400), &[record(1)]);
        assert!(!view.is_alive("a", Duration::from_millis(1500), lease));
        view.observe(Duration::from_millis(1600), &[record(2)]);
        assert!(view.is_alive("a", Duration::from_millis(1700), lease));
        assert!(!view.is_alive("nobody", Duration::from_millis(1700), lease));
        view.observe(Duration::from_millis(1800), &[]);
        assert!(!view.is_alive("a", Duration::from_millis(1800), lease));
    }
}
