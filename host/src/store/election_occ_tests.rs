//! The election and fenced checkpoints over a store with optimistic
//! concurrency (`store::occ_memory`): the conflicts FoundationDB and etcd
//! raise and SQLite's writer lock hides.
//!
//! - A checkpoint whose every transaction spans a renewal of its own leader
//!   commits without a single conflict, and the leader keeps its lease:
//!   renewals write only the renewal record, never the leader record the
//!   fence reads. Shown with the renewal interleaved explicitly, and with
//!   renewals at full rate on another thread.
//! - The control: an older host's heartbeat, which rewrites the leader
//!   record, makes the same checkpoint conflict on every attempt — the
//!   self-fencing the renewal record removes (and proof that the store
//!   would catch it).
//! - A claim and a renewal that race never both commit, whichever commits
//!   first; nor do two claims of a vacant unit.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::Instant;

use super::*;
use crate::store::checkpoint::{
    read_current, write_checkpoint_with, CheckpointError, CheckpointMeta, CheckpointOptions, Fence,
    CHUNK_BYTES, MAX_CHUNKS_PER_TXN,
};
use crate::store::clock::ManualClock;
use crate::store::occ_memory::OccStore;

/// The unit checkpointed; its leader also leads [`OTHER_UNITS`].
const UNIT: &str = "orders/0";
/// Units renewed in the same transaction as [`UNIT`], as a host's elector
/// batches them (`pipeline::elector`).
const OTHER_UNITS: [&str; 2] = ["orders/1", "orders/2"];
/// A state two and a half chunk transactions long, so each checkpoint is
/// an allocation, three chunk transactions, a commit and garbage collection.
const STATE_BYTES: usize = CHUNK_BYTES * MAX_CHUNKS_PER_TXN * 5 / 2;
/// Fenced transactions of one checkpoint, at least (allocation, chunks,
/// commit).
const MIN_TXNS_PER_CHECKPOINT: u64 = 5;
/// Checkpoints each scenario writes: enough that garbage collection runs
/// (three generations are kept).
const CHECKPOINTS: u64 = 4;
/// Bound of a wait for the other thread (a hang, not a measurement).
const WAIT_BOUND: Duration = Duration::from_secs(30);

/// One attempt per transaction: a checkpoint transaction that conflicts
/// fails its checkpoint, so "every checkpoint was written" means "no
/// checkpoint transaction conflicted".
fn one_attempt() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 1,
        ..RetryPolicy::default()
    }
}

fn state(n: u64) -> Vec<u8> {
    (0..STATE_BYTES as u64)
        .map(|i| (i.wrapping_mul(31) ^ n) as u8)
        .collect()
}

fn write(
    store: &dyn KvStore,
    retry: RetryPolicy,
    n: u64,
) -> Result<CheckpointMeta, CheckpointError> {
    let options = CheckpointOptions {
        retry,
        ..CheckpointOptions::default()
    };
    let offsets = BTreeMap::from([(0, n as i64 * 100)]);
    let fence = Fence::new(UNIT, 1);
    write_checkpoint_with(
        store,
        &options,
        &fence,
        &state(n),
        1,
        offsets,
        BTreeMap::new(),
    )
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// A host leading [`UNIT`] and [`OTHER_UNITS`] at epoch 1, its clock, and
/// how many heartbeats it renewed.
struct Leader {
    units: Vec<(&'static str, Election)>,
    clock: ManualClock,
    renewals: u64,
}

impl Leader {
    /// Claim every unit on `store`.
    fn claim(store: &dyn KvStore) -> Self {
        let units = std::iter::once(UNIT).chain(OTHER_UNITS);
        let mut leader = Leader {
            units: units
                .map(|u| (u, Election::new("a", "a#1", ElectionTiming::default())))
                .collect(),
            clock: ManualClock::default(),
            renewals: 0,
        };
        for outcome in leader.round(store) {
            assert_eq!(
                outcome.event,
                Some(ElectionEvent::BecameLeader { epoch: 1 })
            );
        }
        leader
    }

    fn round(&mut self, store: &dyn KvStore) -> Vec<StepOutcome> {
        let mut batch: Vec<(&str, &mut Election)> =
            self.units.iter_mut().map(|(u, e)| (*u, e)).collect();
        step_many(store, &one_attempt(), &mut batch, &self.clock, false)
            .expect("the leader's round commits at its first attempt")
    }

    /// One heartbeat later, renew every unit in one transaction (one
    /// attempt); panics unless it committed and the leader still acts.
    fn renew(&mut self, store: &dyn KvStore) {
        self.clock.advance(DEFAULT_HEARTBEAT);
        for outcome in self.round(store) {
            assert_eq!(outcome.event, None, "the leader's role changed");
        }
        for (unit, election) in &self.units {
            assert_eq!(election.acting_epoch(self.clock.now()), Some(1), "{unit}");
        }
        self.renewals += 1;
    }
}

fn renewal_record(store: &OccStore, unit: &str) -> RenewalRecord {
    serde_json::from_slice(&store.value(&keys::renewal(unit)).unwrap()).unwrap()
}

#[test]
fn a_checkpoint_spanning_its_leaders_renewals_never_conflicts() {
    let store = OccStore::new();
    let leader = Arc::new(Mutex::new(Leader::claim(&store)));
    let fence_record = store.value(&keys::leader(UNIT));
    // Every checkpoint transaction is slow: its leader renews between its
    // reads (the fence among them) and its commit.
    let renewing = leader.clone();
    store.set_before_commit(Arc::new(move |store: &OccStore, _: u64| {
        lock(&renewing).renew(store)
    }));
    for n in 0..CHECKPOINTS {
        write(&store, one_attempt(), n).expect("a checkpoint with its leader renewing");
    }
    let renewals = lock(&leader).renewals;
    assert_eq!(store.conflicts(), 0);
    assert!(
        renewals >= CHECKPOINTS * MIN_TXNS_PER_CHECKPOINT,
        "only {renewals} renewals"
    );
    // The fence's key never changed; the renewal record counted every beat.
    assert_eq!(store.value(&keys::leader(UNIT)), fence_record);
    assert_eq!(renewal_record(&store, UNIT).renewal, renewals);
    let current = read_current(&store, UNIT).unwrap().unwrap();
    assert!(current.state == state(CHECKPOINTS - 1));
}

#[test]
fn renewals_at_full_rate_on_another_thread_never_fail_a_checkpoint() {
    let store = Arc::new(OccStore::new());
    let mut leader = Leader::claim(&*store);
    // Each checkpoint transaction commits only after a renewal committed
    // since it began (the renewer is the only other writer): a transaction
    // longer than a heartbeat, waiting for the renewer, not for time.
    let checkpointer = thread::current().id();
    store.set_before_commit(Arc::new(move |store: &OccStore, read_version: u64| {
        if thread::current().id() != checkpointer {
            return;
        }
        let deadline = Instant::now() + WAIT_BOUND;
        while store.version() == read_version {
            assert!(Instant::now() < deadline, "no renewal in {WAIT_BOUND:?}");
            thread::yield_now();
        }
    }));
    let stop = Arc::new(AtomicBool::new(false));
    let renewer = {
        let (store, stop) = (store.clone(), stop.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                leader.renew(&*store);
            }
            leader
        })
    };
    let written: Vec<_> = (0..CHECKPOINTS)
        .map(|n| write(&*store, one_attempt(), n))
        .collect();
    stop.store(true, Ordering::Relaxed);
    let leader = renewer
        .join()
        .expect("every renewal committed and the leader kept acting");
    for (n, result) in written.into_iter().enumerate() {
        result.unwrap_or_else(|e| panic!("checkpoint {n}: {e}"));
    }
    assert_eq!(store.conflicts(), 0);
    assert!(leader.renewals >= CHECKPOINTS * MIN_TXNS_PER_CHECKPOINT);
}

/// What a host of the previous version did every heartbeat: bump the
/// renewal counter inside the leader record.
fn renew_the_old_way(store: &dyn KvStore) {
    transact(store, &one_attempt(), |txn| {
        let record = read_leader(txn, UNIT)?.expect("a leader record");
        let renewed = LeaderRecord {
            legacy_renewal: Some(record.legacy_renewal.unwrap_or(0) + 1),
            ..record
        };
        txn.set(&keys::leader(UNIT), &serde_json::to_vec(&renewed).unwrap())?;
        Ok(())
    })
    .expect("an old-style renewal commits");
}

#[test]
fn the_old_heartbeat_rewriting_the_leader_record_fails_the_same_checkpoint() {
    let store = OccStore::new();
    let old_record = br#"{"epoch":1,"holder":"old#1","renewal":0,"lease_ms":500}"#;
    transact(&store, &one_attempt(), |txn| {
        Ok(txn.set(&keys::leader(UNIT), old_record)?)
    })
    .unwrap();
    store.set_before_commit(Arc::new(|store: &OccStore, _: u64| {
        renew_the_old_way(store)
    }));
    let attempts = 5;
    let retry = RetryPolicy {
        max_attempts: attempts,
        ..RetryPolicy::default()
    };
    let error = write(&store, retry, 0).unwrap_err();
    let CheckpointError::Store(error) = error else {
        panic!("not a store failure: {error:?}")
    };
    // Every attempt of the first (allocation) transaction conflicted with
    // its leader's heartbeat: under load, the leader fences itself.
    assert!(
        matches!(
            error,
            TransactError::Store {
                source: StoreError::Conflict,
                attempts: a,
            } if a == attempts
        ),
        "{error:?}"
    );
    assert_eq!(store.conflicts(), u64::from(attempts));
}

/// Two contenders for [`UNIT`] on an OCC store and a shared clock; `a`
/// has claimed epoch 1 and `b` seen it, a lease ago.
struct Race {
    store: OccStore,
    clock: ManualClock,
    a: Election,
    b: Election,
}

impl Race {
    fn new() -> Self {
        let mut race = Race {
            store: OccStore::new(),
            clock: ManualClock::default(),
            a: Election::new("a", "a#1", ElectionTiming::default()),
            b: Election::new("b", "b#1", ElectionTiming::default()),
        };
        assert_eq!(
            round(&race.store, &mut race.a, &race.clock).event,
            Some(ElectionEvent::BecameLeader { epoch: 1 })
        );
        assert_eq!(round(&race.store, &mut race.b, &race.clock).event, None);
        race.clock.advance(DEFAULT_LEASE);
        race
    }
}

/// A whole round of `election` for [`UNIT`], committed at once.
fn round(store: &OccStore, election: &mut Election, clock: &ManualClock) -> StepOutcome {
    step(store, &one_attempt(), election, UNIT, clock, false).unwrap()
}

/// Begin a round of `election` in a transaction of `store` and leave it
/// uncommitted.
fn begin_round<'s>(
    store: &'s OccStore,
    election: &mut Election,
    clock: &ManualClock,
) -> (Box<dyn KvTxn + 's>, Decision) {
    let mut txn = store.begin().unwrap();
    let mut round = round_in(&mut *txn, &mut [(UNIT, election)], clock, false).unwrap();
    (txn, round.decisions.pop().unwrap())
}

#[test]
fn a_renewal_that_commits_first_fails_a_racing_claim() {
    let mut race = Race::new();
    // b has seen nothing change for a lease and claims...
    let (claim, decision) = begin_round(&race.store, &mut race.b, &race.clock);
    assert!(matches!(decision, Decision::Claim { ref record, .. } if record.epoch == 2));
    // ...while a renews: only the renewal record is written, which b read.
    // (A lease has passed, so a had stopped acting: the renewal resumes it.)
    assert_eq!(
        round(&race.store, &mut race.a, &race.clock).event,
        Some(ElectionEvent::Resumed { epoch: 1 })
    );
    assert_eq!(claim.commit(), Err(StoreError::Conflict));
    // b's next round sees the renewal and goes on watching.
    assert_eq!(round(&race.store, &mut race.b, &race.clock).event, None);
    assert_eq!(race.b.held_epoch(), None);
    assert_eq!(race.a.acting_epoch(race.clock.now()), Some(1));
}

#[test]
fn a_claim_that_commits_first_fails_a_racing_renewal() {
    let mut race = Race::new();
    // a renews (late: its lease ran out on b's clock)...
    let (renewal, decision) = begin_round(&race.store, &mut race.a, &race.clock);
    assert!(matches!(decision, Decision::Renew(ref r) if r.epoch == 1));
    // ...while b claims: both records are written, a read the leader record.
    assert_eq!(
        round(&race.store, &mut race.b, &race.clock).event,
        Some(ElectionEvent::BecameLeader { epoch: 2 })
    );
    assert_eq!(renewal.commit(), Err(StoreError::Conflict));
    // a's next round finds itself fenced.
    assert_eq!(
        round(&race.store, &mut race.a, &race.clock).event,
        Some(ElectionEvent::Fenced {
            epoch: 1,
            by_epoch: 2
        })
    );
    assert_eq!(race.store.conflicts(), 1);
}

#[test]
fn two_claims_of_a_vacant_unit_cannot_both_commit() {
    let store = OccStore::new();
    let clock = ManualClock::default();
    let mut a = Election::new("a", "a#1", ElectionTiming::default());
    let mut b = Election::new("b", "b#1", ElectionTiming::default());
    let (first, _) = begin_round(&store, &mut a, &clock);
    let (second, decision) = begin_round(&store, &mut b, &clock);
    assert!(matches!(decision, Decision::Claim { ref record, .. } if record.epoch == 1));
    first.commit().unwrap();
    assert_eq!(second.commit(), Err(StoreError::Conflict));
}
