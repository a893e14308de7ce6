//! A host's watch over its units' checkpoint pointers: one thread reads the
//! current-checkpoint pointer of every unit that follows one, in a few
//! read-only store transactions per heartbeat, and counts for each unit how
//! often the pointer changed. A passive unit re-reads its checkpoint (and
//! re-positions its connections) only when that count moved, instead of
//! every heartbeat: at a thousand passive units that is a few transactions
//! per heartbeat instead of a thousand, while the checkpoints themselves
//! change about once a second.
//!
//! Guarantee: after a pointer changes in the store, the unit's count moves
//! within about one heartbeat plus one round's transactions. A round that
//! fails moves every count it covered (the units fall back to reading for
//! themselves), so a store error never leaves a standby behind silently.
//! The watch is an optimisation only: a takeover reads the checkpoint
//! itself, so a late count costs a colder standby, never a wrong state.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::stoppable::StoppableThread;
use crate::store::checkpoint;
use crate::store::{KvStore, RetryPolicy};

/// Most pointers one transaction reads: well within etcd's 128 operations
/// and FoundationDB's transaction size, as the elector's batches are.
pub const MAX_POINTERS_PER_TRANSACTION: usize = 100;

/// One watched unit: the pointer bytes last seen and the change count.
struct Watched {
    last: Mutex<Option<Option<Vec<u8>>>>,
    changes: AtomicU64,
    /// Off while the unit leads: an active writes its checkpoints and
    /// reads none, so the rounds skip it.
    following: AtomicBool,
}

struct Shared {
    store: Arc<dyn KvStore>,
    policy: RetryPolicy,
    period: Duration,
    units: Mutex<BTreeMap<String, Arc<Watched>>>,
}

impl Shared {
    fn units(&self) -> MutexGuard<'_, BTreeMap<String, Arc<Watched>>> {
        self.units.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Read every watched pointer once and count the changes.
    fn round(&self) {
        let units: Vec<(String, Arc<Watched>)> = self
            .units()
            .iter()
            .filter(|(_, watched)| watched.following.load(Ordering::Relaxed))
            .map(|(name, watched)| (name.clone(), watched.clone()))
            .collect();
        for batch in units.chunks(MAX_POINTERS_PER_TRANSACTION) {
            let names: Vec<&str> = batch.iter().map(|(name, _)| name.as_str()).collect();
            match checkpoint::read_current_pointers(self.store.as_ref(), &self.policy, &names) {
                Ok(pointers) => {
                    for ((_, watched), pointer) in batch.iter().zip(pointers) {
                        let mut last = watched.last.lock().unwrap_or_else(|p| p.into_inner());
                        if last.as_ref() != Some(&pointer) {
                            *last = Some(pointer);
                            watched.changes.fetch_add(1, Ordering::Release);
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, units = batch.len(), "checkpoint watch round failed");
                    // Unknown now: every unit reads for itself until a round
                    // succeeds again.
                    for (_, watched) in batch {
                        *watched.last.lock().unwrap_or_else(|p| p.into_inner()) = None;
                        watched.changes.fetch_add(1, Ordering::Release);
                    }
                }
            }
        }
    }
}

/// The host's checkpoint watch; cheap to clone. The thread stops when the
/// last clone is dropped.
#[derive(Clone)]
pub struct CheckpointWatch {
    shared: Arc<Shared>,
    _thread: Arc<StoppableThread>,
}

impl std::fmt::Debug for CheckpointWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointWatch")
            .field("period", &self.shared.period)
            .field("units", &self.shared.units().len())
            .finish()
    }
}

impl CheckpointWatch {
    /// Start a watch reading every pointer once per `period` (the
    /// heartbeat). Each round's reads retry for at most one period.
    pub fn start(store: Arc<dyn KvStore>, period: Duration) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            store,
            policy: RetryPolicy {
                max_elapsed: period,
                ..RetryPolicy::default()
            },
            period,
            units: Mutex::new(BTreeMap::new()),
        });
        let thread = {
            let shared = shared.clone();
            StoppableThread::spawn("checkpoint-watch", move |stop| {
                while !stop.load(Ordering::Relaxed) {
                    let started = std::time::Instant::now();
                    shared.round();
                    std::thread::park_timeout(shared.period.saturating_sub(started.elapsed()));
                }
            })?
        };
        Ok(Self {
            _thread: Arc::new(thread),
            shared,
        })
    }

    /// Watch unit `name`'s pointer while the returned handle lives.
    pub fn watch(&self, name: &str) -> WatchedCheckpoint {
        let watched = Arc::new(Watched {
            last: Mutex::new(None),
            changes: AtomicU64::new(0),
            following: AtomicBool::new(true),
        });
        self.shared
            .units()
            .insert(name.to_string(), watched.clone());
        WatchedCheckpoint {
            watch: self.clone(),
            name: name.to_string(),
            watched,
        }
    }
}

/// One unit's place in the watch; dropping it stops watching the unit.
pub struct WatchedCheckpoint {
    watch: CheckpointWatch,
    name: String,
    watched: Arc<Watched>,
}

impl WatchedCheckpoint {
    /// How often the pointer changed (or could not be read) since the
    /// watch began: read it before reading the checkpoint, and read again
    /// only once it moved.
    pub fn changes(&self) -> u64 {
        self.watched.changes.load(Ordering::Acquire)
    }

    /// Whether the rounds read this unit's pointer: on while it is passive,
    /// off while it leads. (A change while off moves the count at the first
    /// round after it is back on.)
    pub fn set_following(&self, following: bool) {
        self.watched.following.store(following, Ordering::Relaxed);
    }
}

impl Drop for WatchedCheckpoint {
    fn drop(&mut self) {
        let mut units = self.watch.shared.units();
        // A unit restarted under the same name registers a new entry first.
        if units
            .get(&self.name)
            .is_some_and(|w| Arc::ptr_eq(w, &self.watched))
        {
            units.remove(&self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;

    fn write_pointer(store: &dyn KvStore, name: &str, value: &[u8]) {
        let mut txn = store.begin().unwrap();
        txn.set(
            &crate::store::keys::checkpoints(name).pack(&"current"),
            value,
        )
        .unwrap();
        txn.commit().unwrap();
    }

    fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !condition() {
            assert!(std::time::Instant::now() < deadline, "timed out: {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_changed_pointer_moves_only_its_units_count() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn KvStore> =
            Arc::new(SqliteStore::open(dir.path().join("store.db")).unwrap());
        let watch = CheckpointWatch::start(store.clone(), Duration::from_millis(10)).unwrap();
        // More units than one transaction reads: the rounds batch them.
        let names: Vec<String> = (0..MAX_POINTERS_PER_TRANSACTION + 5)
            .map(|i| format!("p/{i}"))
            .collect();
        let watched: Vec<WatchedCheckpoint> = names.iter().map(|n| watch.watch(n)).collect();
        // The first round records what is there (no checkpoint) as a change.
        wait_for("the first round", || {
            watched.iter().all(|w| w.changes() == 1)
        });
        let last = names.len() - 1;
        write_pointer(store.as_ref(), &names[last], b"{\"generation\":1}");
        wait_for("the change", || watched[last].changes() == 2);
        // Rounds go on; nothing else changed.
        std::thread::sleep(Duration::from_millis(50));
        assert!(watched[..last].iter().all(|w| w.changes() == 1));
        assert_eq!(watched[last].changes(), 2);
        // A unit that leads is not read; back to following, it sees what
        // changed meanwhile.
        watched[0].set_following(false);
        std::thread::sleep(Duration::from_millis(30));
        write_pointer(store.as_ref(), &names[0], b"{\"generation\":1}");
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(watched[0].changes(), 1);
        watched[0].set_following(true);
        wait_for("the change after following again", || {
            watched[0].changes() == 2
        });
        // A dropped handle leaves the rounds.
        drop(watched);
        wait_for("units unwatched", || watch.shared.units().is_empty());
    }
}
