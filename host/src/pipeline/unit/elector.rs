//! A unit's elector: the thread that renews (or contends for) the unit's
//! lease every heartbeat, whatever the unit's worker is doing — a slow
//! takeover or flush must not cost the lease.
//!
//! Guarantee (crash-only): the elector lives exactly as long as its
//! [`Elector`] handle. Dropping the handle — the worker returning, failing
//! or unwinding from a panic — stops the thread, joins it and releases a
//! held lease, so a unit whose worker is gone never renews: a passive
//! elsewhere claims it at once (or within a lease, if the release cannot
//! reach the store).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::store::clock::{Clock, SystemClock};
use crate::store::election::{self, Election, ElectionEvent, ElectionTiming};
use crate::store::{KvStore, RetryPolicy};

/// How many times per heartbeat a passive unit reads the leader record:
/// the delay between a graceful release and the claim is at most
/// heartbeat / this. (Expiry is judged on elapsed time, not on the number
/// of observations, so this does not shorten the lease.)
const PASSIVE_OBSERVATIONS_PER_HEARTBEAT: u32 = 4;

/// What the elector thread and the worker share.
struct Shared {
    store: Arc<dyn KvStore>,
    policy: RetryPolicy,
    unit: String,
    clock: SystemClock,
    election: Mutex<Election>,
    stop: AtomicBool,
    /// The epoch an operator asked to hand over (`logstream step-down`),
    /// seen in the leader record read every round anyway; 0 when none
    /// (epochs start at 1).
    step_down_asked: AtomicU64,
}

impl Shared {
    fn election(&self) -> MutexGuard<'_, Election> {
        // The election is plain data: a panicked holder leaves it usable.
        self.election.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One round now, logging role changes.
    fn round(&self) {
        let mut election = self.election();
        match election::step(
            self.store.as_ref(),
            &self.policy,
            &mut election,
            &self.unit,
            &self.clock,
            false,
        ) {
            Ok(outcome) => {
                log_event(outcome.event);
                let asked = outcome
                    .record
                    .filter(|r| r.step_down_requested() && r.holder == election.incarnation())
                    .map(|r| r.epoch)
                    .filter(|epoch| election.held_epoch() == Some(*epoch));
                if let Some(epoch) = asked {
                    self.step_down_asked.store(epoch, Ordering::Relaxed);
                }
            }
            Err(error) => tracing::warn!(%error, "election round failed"),
        }
    }
}

/// The handle of a unit's elector thread; see the module docs.
pub struct Elector {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Elector {
    /// Start contending for `unit` as `incarnation` of `host_id`.
    pub fn start(
        store: Arc<dyn KvStore>,
        unit: &str,
        host_id: &str,
        incarnation: &str,
        timing: ElectionTiming,
    ) -> Self {
        let shared = Arc::new(Shared {
            store,
            policy: RetryPolicy {
                max_elapsed: timing.heartbeat,
                ..RetryPolicy::default()
            },
            unit: unit.to_string(),
            clock: SystemClock::default(),
            election: Mutex::new(Election::new(host_id, incarnation, timing)),
            stop: AtomicBool::new(false),
            step_down_asked: AtomicU64::new(0),
        });
        let thread = {
            let shared = shared.clone();
            let span = tracing::Span::current();
            std::thread::Builder::new()
                .name(format!("elect-{unit}"))
                .spawn(move || {
                    let _entered = span.enter();
                    elect(&shared, timing.heartbeat)
                })
                .expect("starting an elector thread")
        };
        Elector {
            shared,
            thread: Some(thread),
        }
    }

    /// The epoch this host may act for now, if any.
    pub fn acting_epoch(&self) -> Option<u64> {
        self.shared.election().acting_epoch(self.shared.clock.now())
    }

    /// Whether an operator asked the holder of `epoch` to step down.
    pub fn step_down_asked(&self, epoch: u64) -> bool {
        self.shared.step_down_asked.load(Ordering::Relaxed) == epoch
    }

    /// Release the held epoch (`only`: if it is that one) in one round now.
    /// Should the round fail, the elector's next one releases (the request
    /// stays set until a release commits).
    pub fn release(&self, only: Option<u64>) {
        {
            let mut election = self.shared.election();
            let held = election
                .held_epoch()
                .is_some_and(|h| only.is_none_or(|o| o == h));
            if !held {
                return;
            }
            election.request_step_down();
        }
        self.shared.step_down_asked.store(0, Ordering::Relaxed);
        self.shared.round();
    }
}

impl Drop for Elector {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
        self.release(None);
    }
}

/// The elector thread: a round every heartbeat while leading, more often
/// while passive (so a released lease is claimed within a fraction of one).
fn elect(shared: &Shared, heartbeat: Duration) {
    while !shared.stop.load(Ordering::Relaxed) {
        let started = shared.clock.now();
        shared.round();
        let leading = shared.election().held_epoch().is_some();
        let period = if leading {
            heartbeat
        } else {
            heartbeat / PASSIVE_OBSERVATIONS_PER_HEARTBEAT
        };
        // Parked, so a stop wakes it at once (`unpark`).
        std::thread::park_timeout(period.saturating_sub(shared.clock.now() - started));
    }
}

fn log_event(event: Option<ElectionEvent>) {
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
        Some(ElectionEvent::Fenced { epoch, by_epoch }) => {
            tracing::warn!(
                epoch,
                by_epoch,
                "fenced at epoch {epoch} by epoch {by_epoch}; now passive"
            )
        }
        Some(ElectionEvent::SteppedDown { epoch }) => tracing::info!(epoch, "stepped down"),
        None => {}
    }
}
