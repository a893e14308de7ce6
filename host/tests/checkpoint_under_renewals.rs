//! A leader never fences itself: fenced checkpoint transactions must not
//! conflict with the leader's own lease renewals (issue 12, part 2). On an
//! optimistic store (etcd, FoundationDB) a checkpoint transaction that read
//! the key renewals rewrite would conflict with every heartbeat, retry, run
//! out and demote the leader; SQLite's writer lock hides it.
//!
//! Each test renews the lease back to back on one thread — the heartbeat at
//! full rate, far above the 10 a second a host makes — while another writes
//! 16 MiB checkpoints (chunked over many transactions) of that epoch, with
//! the store's default retry budget. No checkpoint may fail, every renewal
//! must keep the leadership, and the renewals must really overlap the
//! checkpoints.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use logstream_host::store::checkpoint::{self, Fence};
use logstream_host::store::clock::{Clock, SystemClock};
use logstream_host::store::election::{step, Election, ElectionEvent, ElectionTiming};
use logstream_host::store::{KvStore, RetryPolicy, SqliteStore};

/// Size of each checkpoint: 16 MiB, 256 chunks.
const STATE_BYTES: usize = 16 << 20;
/// Checkpoints written while the lease is renewed.
const CHECKPOINTS: usize = 3;
const UNIT: &str = "big/0";

fn incompressible(size: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn checkpoints_under_full_rate_renewals(store: &dyn KvStore) {
    let clock = SystemClock::default();
    let policy = RetryPolicy {
        max_elapsed: ElectionTiming::default().heartbeat,
        ..RetryPolicy::default()
    };
    let mut election = Election::new("leader", "leader:1:0", ElectionTiming::default());
    step(store, &policy, &mut election, UNIT, &clock, false).expect("the first claim");
    let epoch = election
        .held_epoch()
        .expect("a leader after claiming a vacant unit");
    let stop = AtomicBool::new(false);
    let renewals = AtomicUsize::new(0);
    let started = Instant::now();
    let (written, renewer) = std::thread::scope(|scope| {
        let renewer = scope.spawn(|| {
            let mut failed_rounds = 0;
            while !stop.load(Ordering::Relaxed) {
                match step(store, &policy, &mut election, UNIT, &clock, false) {
                    Ok(outcome) => {
                        assert!(
                            !matches!(outcome.event, Some(ElectionEvent::Fenced { .. })),
                            "the leader was fenced: {:?}",
                            outcome.event
                        );
                        renewals.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => failed_rounds += 1,
                }
                assert_eq!(
                    election.acting_epoch(clock.now()),
                    Some(epoch),
                    "the leader stopped acting after {} renewals",
                    renewals.load(Ordering::Relaxed)
                );
            }
            failed_rounds
        });
        // Stops the renewer however this thread ends (a failed checkpoint
        // panics here; the scope would otherwise wait for the renewer).
        struct StopOnDrop<'a>(&'a AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let _stop = StopOnDrop(&stop);
        let fence = Fence::new(UNIT, epoch);
        let mut written = Vec::new();
        for n in 0..CHECKPOINTS {
            let state = incompressible(STATE_BYTES, n as u64 + 1);
            let before = renewals.load(Ordering::Relaxed);
            let meta = checkpoint::write_checkpoint(
                store,
                &fence,
                &state,
                1,
                BTreeMap::from([(0, n as i64)]),
                BTreeMap::new(),
            )
            .unwrap_or_else(|e| panic!("checkpoint {n} on {}: {e}", store.describe()));
            written.push((meta.generation, renewals.load(Ordering::Relaxed) - before));
        }
        stop.store(true, Ordering::Relaxed);
        (written, renewer.join().expect("the renewer"))
    });
    let current = checkpoint::read_current(store, UNIT)
        .unwrap()
        .expect("a checkpoint");
    assert_eq!(
        current.state,
        incompressible(STATE_BYTES, CHECKPOINTS as u64)
    );
    eprintln!(
        "{}: {CHECKPOINTS} checkpoints of {STATE_BYTES} bytes in {:?}, renewals during each: {:?}, failed renewal rounds: {renewer}",
        store.describe(),
        started.elapsed(),
        written.iter().map(|(_, r)| r).collect::<Vec<_>>()
    );
    assert!(
        written.iter().all(|(_, renewed)| *renewed >= 2),
        "the renewals did not overlap every checkpoint: {written:?}"
    );
    assert_eq!(renewer, 0, "renewal rounds failed");
}

#[test]
fn on_etcd_checkpoints_never_conflict_with_the_leaders_renewals() {
    let cluster = common::etcd::EtcdCluster::start(3);
    let store = common::etcd::EtcdCluster::open(&cluster.url());
    checkpoints_under_full_rate_renewals(store.as_ref());
}

#[test]
fn on_sqlite_checkpoints_never_conflict_with_the_leaders_renewals() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("store.db")).unwrap();
    checkpoints_under_full_rate_renewals(&store);
}
