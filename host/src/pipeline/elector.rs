//! A host's elector: one thread that renews (or contends for) the leases of
//! all the host's units, whatever their workers are doing — a slow takeover
//! or flush must not cost a lease.
//!
//! Every round reads the leader and renewal records of many units in one
//! store transaction, and writes what changed ([`election::step_many`], at
//! most [`MAX_UNITS_PER_TRANSACTION`] each): a renewal writes only the
//! unit's renewal record, never the leader record its fenced writes read
//! (see `store::election`). A leader's lease is renewed once
//! per heartbeat, a passive looks four times per heartbeat (so a released
//! lease is claimed within a quarter of one). A host with a thousand units
//! makes a few dozen store transactions per heartbeat, not thousands, and
//! runs one elector thread, not one per unit.
//!
//! Guarantee (crash-only): a unit's [`UnitLease`] lives exactly as long as
//! its worker's unit. Dropping it — the worker returning, failing or
//! unwinding from a panic — takes the unit out of the rounds and releases a
//! held lease at once, so a unit whose worker is gone is never renewed: a
//! passive elsewhere claims it at once (or within a lease, if the release
//! cannot reach the store).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result};

use super::stoppable::StoppableThread;
use super::wake::Wake;
use crate::store::clock::{Clock, SystemClock};
use crate::store::election::{self, Election, ElectionEvent, ElectionTiming};
use crate::store::{KvStore, RetryPolicy};

/// How many times per heartbeat a passive unit's leader record is read:
/// the delay between a graceful release and the claim is at most
/// heartbeat / this. (Expiry is judged on elapsed time, not on the number
/// of observations, so this does not shorten the lease.)
const PASSIVE_OBSERVATIONS_PER_HEARTBEAT: u32 = 4;
/// Most units one election transaction reads and writes: well within
/// FoundationDB's transaction size and etcd's 128 operations per
/// transaction (each unit costs [`election::KEYS_PER_ROUND`] compares —
/// its leader and renewal records — and at most as many puts, a claim).
pub const MAX_UNITS_PER_TRANSACTION: usize = 50;
// Each unit of a round reads and writes at most `KEYS_PER_ROUND` keys.
const _: () = assert!(
    MAX_UNITS_PER_TRANSACTION * election::KEYS_PER_ROUND <= crate::store::kv::MAX_TXN_OPERATIONS
);

/// One unit's place in the rounds.
struct Slot {
    election: Mutex<Election>,
    /// The epoch an operator asked to hand over (`logstream step-down`),
    /// seen in the leader record every round reads (renewals too); 0 when none
    /// (epochs start at 1).
    step_down_asked: AtomicU64,
    /// When (elector clock) the unit's next round is due.
    next_round: Mutex<Duration>,
    /// Counts the rounds that changed what the unit should do (it became
    /// leader, was fenced, was asked to step down); its worker waits on it.
    changes: Mutex<u64>,
    changed: Condvar,
    /// Called after every change: the unit's worker-pool job, which holds
    /// no thread while it waits.
    wake: Mutex<Option<Wake>>,
}

impl Slot {
    fn election(&self) -> MutexGuard<'_, Election> {
        // The election is plain data: a panicked holder leaves it usable.
        self.election.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wake the unit's worker: its role may have to change.
    fn notify(&self) {
        *self.changes.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.changed.notify_all();
        let wake = self.wake.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(wake) = wake {
            wake();
        }
    }
}

/// What the elector thread and the units' handles share.
struct Shared {
    store: Arc<dyn KvStore>,
    policy: RetryPolicy,
    clock: SystemClock,
    host_id: String,
    incarnation: String,
    timing: ElectionTiming,
    units: Mutex<BTreeMap<String, Arc<Slot>>>,
    /// Set while the host yields its units to a peer (its brokers are
    /// unreachable, a live peer's are not): rounds release held leases and
    /// claim none.
    yielding: AtomicBool,
}

impl Shared {
    fn units(&self) -> MutexGuard<'_, BTreeMap<String, Arc<Slot>>> {
        self.units.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One round for `units` (name and slot), in transactions of at most
    /// [`MAX_UNITS_PER_TRANSACTION`]; each slot's next round is scheduled.
    fn round(&self, units: &[(String, Arc<Slot>)]) {
        let releasing;
        let units = if self.yielding.load(Ordering::Relaxed) {
            releasing = self.to_release(units);
            &releasing[..]
        } else {
            units
        };
        for batch in units.chunks(MAX_UNITS_PER_TRANSACTION) {
            let started = self.clock.now();
            let mut guards: Vec<MutexGuard<'_, Election>> =
                batch.iter().map(|(_, slot)| slot.election()).collect();
            let mut elections: Vec<(&str, &mut Election)> = batch
                .iter()
                .zip(guards.iter_mut())
                .map(|((name, _), guard)| (name.as_str(), &mut **guard))
                .collect();
            let outcomes = election::step_many(
                self.store.as_ref(),
                &self.policy,
                &mut elections,
                &self.clock,
                false,
            );
            drop(elections);
            match outcomes {
                Ok(outcomes) => {
                    for (((name, slot), election), outcome) in
                        batch.iter().zip(&guards).zip(outcomes)
                    {
                        // Every event changes what the unit should do (a
                        // renewal after a lapse: a paused unit acts again).
                        if outcome.event.is_some() {
                            slot.notify();
                        }
                        log_event(name, outcome.event);
                        let asked = outcome
                            .state
                            .map(|s| s.record)
                            .filter(|r| {
                                r.step_down_requested() && r.holder == election.incarnation()
                            })
                            .map(|r| r.epoch)
                            .filter(|epoch| election.held_epoch() == Some(*epoch));
                        if let Some(epoch) = asked {
                            if slot.step_down_asked.swap(epoch, Ordering::Relaxed) != epoch {
                                slot.notify();
                            }
                        }
                    }
                }
                Err(error) => tracing::warn!(
                    %error,
                    units = batch.len(),
                    "election round failed"
                ),
            }
            for ((_, slot), election) in batch.iter().zip(&guards) {
                let period = if election.held_epoch().is_some() {
                    self.timing.heartbeat
                } else {
                    self.timing.heartbeat / PASSIVE_OBSERVATIONS_PER_HEARTBEAT
                };
                *slot.next_round.lock().unwrap_or_else(|p| p.into_inner()) = started + period;
            }
        }
    }

    /// While the host yields: the held leases among `units`, each asked to
    /// step down, so the round releases them. The others sit the round out
    /// (put off a heartbeat): not observed, they cannot be claimed.
    fn to_release(&self, units: &[(String, Arc<Slot>)]) -> Vec<(String, Arc<Slot>)> {
        let next = self.clock.now() + self.timing.heartbeat;
        let mut held = Vec::new();
        for (name, slot) in units {
            *slot.next_round.lock().unwrap_or_else(|p| p.into_inner()) = next;
            let mut election = slot.election();
            if election.held_epoch().is_some() {
                election.request_step_down();
                held.push((name.clone(), slot.clone()));
            }
        }
        held
    }

    /// The units whose round is due at `now`, and when the next one after
    /// them is.
    fn due(&self, now: Duration) -> (Vec<(String, Arc<Slot>)>, Option<Duration>) {
        let mut due = Vec::new();
        let mut next: Option<Duration> = None;
        for (name, slot) in self.units().iter() {
            let at = *slot.next_round.lock().unwrap_or_else(|p| p.into_inner());
            if at <= now {
                due.push((name.clone(), slot.clone()));
            } else {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        (due, next)
    }
}

/// The host's elector; cheap to clone. The thread stops when the last
/// clone is dropped.
#[derive(Clone)]
pub struct HostElector {
    shared: Arc<Shared>,
    thread: Arc<StoppableThread>,
}

impl HostElector {
    /// Start the elector of host `host_id`, incarnation `incarnation`.
    pub fn start(
        store: Arc<dyn KvStore>,
        host_id: &str,
        incarnation: &str,
        timing: ElectionTiming,
    ) -> Result<Self> {
        let shared = Arc::new(Shared {
            store,
            policy: RetryPolicy {
                max_elapsed: timing.heartbeat,
                ..RetryPolicy::default()
            },
            clock: SystemClock::default(),
            host_id: host_id.to_string(),
            incarnation: incarnation.to_string(),
            timing,
            units: Mutex::new(BTreeMap::new()),
            yielding: AtomicBool::new(false),
        });
        let thread = {
            let shared = shared.clone();
            StoppableThread::spawn("elector", move |stop| elect(&shared, stop))
                .context("starting the elector thread")?
        };
        Ok(HostElector {
            thread: Arc::new(thread),
            shared,
        })
    }

    /// Yield every unit to other hosts (`true`: release held leases, claim
    /// none) or contend again (`false`); see [`super::broker_health`].
    pub fn set_yielding(&self, yielding: bool) {
        if self.shared.yielding.swap(yielding, Ordering::Relaxed) != yielding {
            if yielding {
                tracing::warn!("yielding every unit to a host that reaches the brokers");
            } else {
                tracing::info!("contending for units again");
            }
        }
    }

    /// Contend for unit `name` from now on, until the lease is dropped.
    pub fn join(&self, name: &str) -> UnitLease {
        let slot = Arc::new(Slot {
            election: Mutex::new(Election::new(
                &self.shared.host_id,
                &self.shared.incarnation,
                self.shared.timing,
            )),
            step_down_asked: AtomicU64::new(0),
            next_round: Mutex::new(Duration::ZERO),
            changes: Mutex::new(0),
            changed: Condvar::new(),
            wake: Mutex::new(None),
        });
        self.shared.units().insert(name.to_string(), slot.clone());
        // A new unit's first round need not wait for the next tick.
        self.thread.unpark();
        UnitLease {
            elector: self.clone(),
            name: name.to_string(),
            slot,
        }
    }
}

/// One unit's lease, as its worker sees it; see the module docs.
pub struct UnitLease {
    elector: HostElector,
    name: String,
    slot: Arc<Slot>,
}

impl UnitLease {
    /// The epoch this host may act for now, if any.
    pub fn acting_epoch(&self) -> Option<u64> {
        self.slot
            .election()
            .acting_epoch(self.elector.shared.clock.now())
    }

    /// The epoch this host holds, acting or not (see
    /// [`Election::held_epoch`]).
    pub fn held_epoch(&self) -> Option<u64> {
        self.slot.election().held_epoch()
    }

    /// How many rounds changed what the unit should do so far (see
    /// [`wait_for_change`](Self::wait_for_change)).
    pub fn changes(&self) -> u64 {
        *self.slot.changes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wait until a round changes what the unit should do (it became
    /// leader, was fenced or asked to step down), or `timeout` passed. A
    /// passive worker sleeps here instead of polling its lease, so it starts
    /// its takeover the moment its claim commits.
    /// `seen` is [`changes`](Self::changes) read before the worker last
    /// looked at its lease: a change since then returns at once.
    pub fn wait_for_change(&self, seen: u64, timeout: Duration) {
        let changes = self.slot.changes.lock().unwrap_or_else(|p| p.into_inner());
        let _ = self
            .slot
            .changed
            .wait_timeout_while(changes, timeout, |now| *now == seen);
    }

    /// Call `wake` after every change from now on (what
    /// [`wait_for_change`](Self::wait_for_change) waits for), for a unit
    /// that holds no thread while it waits.
    pub fn on_change(&self, wake: Wake) {
        *self.slot.wake.lock().unwrap_or_else(|p| p.into_inner()) = Some(wake);
    }

    /// Whether an operator asked the holder of `epoch` to step down.
    pub fn step_down_asked(&self, epoch: u64) -> bool {
        self.slot.step_down_asked.load(Ordering::Relaxed) == epoch
    }

    /// Release the held epoch (`only`: if it is that one) in a round now.
    /// Should the round fail, the next one releases (the request stays set
    /// until a release commits).
    pub fn release(&self, only: Option<u64>) {
        {
            let mut election = self.slot.election();
            let held = election
                .held_epoch()
                .is_some_and(|h| only.is_none_or(|o| o == h));
            if !held {
                return;
            }
            election.request_step_down();
        }
        self.slot.step_down_asked.store(0, Ordering::Relaxed);
        self.elector
            .shared
            .round(&[(self.name.clone(), self.slot.clone())]);
    }
}

impl Drop for UnitLease {
    fn drop(&mut self) {
        self.elector.shared.units().remove(&self.name);
        self.release(None);
    }
}

/// The elector thread: rounds for the units due, then sleep until the next
/// is (woken early when a unit joins or the elector stops).
fn elect(shared: &Shared, stop: &AtomicBool) {
    let tick = shared.timing.heartbeat / PASSIVE_OBSERVATIONS_PER_HEARTBEAT;
    while !stop.load(Ordering::Relaxed) {
        let now = shared.clock.now();
        let (due, next) = shared.due(now);
        if !due.is_empty() {
            shared.round(&due);
        }
        let wait = next
            .map_or(tick, |at| at.saturating_sub(shared.clock.now()))
            .min(tick);
        std::thread::park_timeout(wait);
    }
}

fn log_event(unit: &str, event: Option<ElectionEvent>) {
    let span = tracing::info_span!("unit", unit);
    let _entered = span.enter();
    match event {
        Some(ElectionEvent::BecameLeader { epoch }) => {
            // The wall-clock field lets benchmarks on one machine time
            // the takeover from the claim.
            tracing::info!(
                epoch,
                claimed_at_unix_ms = crate::probe::unix_micros() / 1000,
                "became leader"
            )
        }
        Some(ElectionEvent::Fenced { epoch, by_epoch }) => tracing::warn!(
            epoch,
            by_epoch,
            "fenced at epoch {epoch} by epoch {by_epoch}; now passive"
        ),
        Some(ElectionEvent::SteppedDown { epoch }) => tracing::info!(epoch, "stepped down"),
        // The unit logs its pause and its resumption.
        Some(ElectionEvent::Resumed { epoch }) => {
            tracing::debug!(epoch, "lease renewed after it lapsed")
        }
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;
    use std::time::Instant;

    fn timing() -> ElectionTiming {
        ElectionTiming {
            lease: Duration::from_millis(300),
            heartbeat: Duration::from_millis(50),
            margin: Duration::from_millis(60),
        }
    }

    fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn one_elector_leads_many_units_and_a_dropped_lease_is_released_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn KvStore> = Arc::new(SqliteStore::open(dir.path().join("s.db")).unwrap());
        let a = HostElector::start(store.clone(), "a", "a:1:0", timing()).unwrap();
        // More units than one transaction takes.
        let units = MAX_UNITS_PER_TRANSACTION * 2 + 3;
        let leases: Vec<UnitLease> = (0..units).map(|i| a.join(&format!("p/{i}"))).collect();
        wait_for("a to lead every unit", || {
            leases.iter().all(|l| l.acting_epoch() == Some(1))
        });
        let b = HostElector::start(store.clone(), "b", "b:1:0", timing()).unwrap();
        let contender = b.join("p/0");
        // Renewals keep a leading for several leases.
        std::thread::sleep(timing().lease * 3);
        assert!(leases.iter().all(|l| l.acting_epoch() == Some(1)));
        assert_eq!(contender.acting_epoch(), None);
        // Dropping a's lease of p/0 (its worker gone) releases it: b claims
        // well within a lease.
        let mut leases = leases;
        let dropped_at = Instant::now();
        drop(leases.remove(0));
        wait_for("b to claim p/0", || contender.acting_epoch() == Some(2));
        assert!(
            dropped_at.elapsed() < timing().lease,
            "{:?}",
            dropped_at.elapsed()
        );
        assert!(leases.iter().all(|l| l.acting_epoch() == Some(1)));
    }
}
