//! Lease election of one active host per processor, with epochs as fencing
//! tokens (design: guarantee 1 and the timing model).
//!
//! Each unit has two records (`store::keys`):
//!
//! - the **leader record** at `("unit", UNIT, "leader")`: the epoch, the
//!   holder (a host *incarnation*: host id plus a per-process nonce, so a
//!   restarted process never mistakes an old epoch for its own), whether it
//!   was released, a pending step-down request and a preferred host. Every
//!   fenced write reads it ([`check_fence`], `checkpoint::check_fence`), so
//!   it is written only when leadership changes or is asked to: claims,
//!   releases, step-down requests and preferred-host changes;
//! - the **renewal record** at `("unit", UNIT, "renewal")`: `{epoch,
//!   renewal, lease_ms}`, the heartbeat of the leader record's holder, who
//!   bumps `renewal` every heartbeat and writes nothing else. Under
//!   optimistic concurrency (FoundationDB, etcd) a fenced write that spans
//!   several heartbeats — a large checkpoint — therefore never conflicts
//!   with its own leader's renewals; were the counter in the leader record,
//!   such a write would conflict, retry, run out of budget and the leader
//!   would fence itself under load.
//!
//! The election stays serialisable through what each round reads: a
//! renewal reads both records (the leader record, to check it still holds
//! the epoch) and writes the renewal record; a claim reads both and writes
//! both. Of a racing claim and renewal, whichever commits second read a key
//! the first wrote, and fails with a conflict.
//!
//! - A contender reads both records every heartbeat and decides the leader
//!   is dead when `(epoch, renewal)` has not changed for the lease, measured
//!   on its **own monotonic clock** from when it first saw that value — a
//!   clock reading taken *after* the read returned, so a read delayed by the
//!   store (a lock wait, throttling) never dates the value earlier than it
//!   was seen. It then claims `epoch + 1` in the same serialisable
//!   transaction as the read, which makes the claim a compare-and-set.
//! - The lease a contender waits is the longer of its own and the one the
//!   holder wrote into its renewal record (`lease_ms`): hosts with different
//!   timings never depose a leader that renews within its own lease.
//! - The leader may act only until `start of its last successful renewal +
//!   lease - margin` ([`Election::acting_epoch`]); it is quiet before any
//!   contender can have waited out the lease.
//! - A leader that reads a record it no longer holds is fenced: it becomes a
//!   follower at once.
//! - A graceful step-down marks the leader record released; contenders
//!   claim a released record at once.
//! - `logstream step-down` marks the epoch to hand over in the leader
//!   record; the holder sees it in the record its renewals read.
//! - A preferred host may be named; other contenders wait
//!   [`ElectionTiming::preference_delay`] longer before claiming, and a
//!   leader that is not the preferred host steps down when the preferred
//!   host is alive (the driver checks membership).
//!
//! **Records of older hosts.** Before the renewal record existed the leader
//! record itself carried `renewal` and `lease_ms` and its holder rewrote it
//! every heartbeat. A renewal record counts only when its epoch is the
//! leader record's ([`LeaderState`]); otherwise — absent, or left behind by
//! an earlier epoch — contenders watch the leader record's own `renewal`
//! and `lease_ms`, so a live old-format leader is neither deposed nor
//! misread. This version never writes `renewal` into the leader record: an
//! older host then fails to read a new record (its rounds fail loudly and it
//! claims nothing) instead of watching a counter that never moves and
//! deposing a live leader. Rewriting an old record (a step-down request, a
//! preferred host) keeps those fields, so its older holder still reads it.
//!
//! [`Election`] is a pure state machine over injected time; [`step`] runs
//! one round of it in a store transaction.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::clock::Clock;
use super::keys;
use super::kv::{
    transact, KvStore, KvTxn, RetryPolicy, StoreError, TransactError, TxnAbort, TxnResult,
};

/// Default lease: a silent leader is replaced after this long.
pub const DEFAULT_LEASE: Duration = Duration::from_millis(500);
/// Default heartbeat: renewal and observation period.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_millis(100);
/// Default margin: the leader stops acting this long before its lease ends.
pub const DEFAULT_MARGIN: Duration = Duration::from_millis(100);
/// Fewest heartbeats a lease must span, so one lost renewal never costs
/// the leadership.
pub const MIN_HEARTBEATS_PER_LEASE: u32 = 3;
/// Keys one unit's round reads (its leader and renewal records), and the
/// most it writes (a claim writes both): what a batch of rounds costs in a
/// store's per-transaction operation limit.
pub const KEYS_PER_ROUND: usize = 2;

/// The timing of an election; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElectionTiming {
    pub lease: Duration,
    pub heartbeat: Duration,
    pub margin: Duration,
}

impl Default for ElectionTiming {
    fn default() -> Self {
        ElectionTiming {
            lease: DEFAULT_LEASE,
            heartbeat: DEFAULT_HEARTBEAT,
            margin: DEFAULT_MARGIN,
        }
    }
}

impl ElectionTiming {
    /// Check the timing is safe and live; one sentence on what is not.
    pub fn validate(&self) -> Result<(), String> {
        if self.heartbeat.is_zero() {
            return Err("the heartbeat must be longer than zero".into());
        }
        if self.lease < self.heartbeat * MIN_HEARTBEATS_PER_LEASE {
            return Err(format!(
                "the lease ({:?}) must be at least {MIN_HEARTBEATS_PER_LEASE} heartbeats ({:?})",
                self.lease,
                self.heartbeat * MIN_HEARTBEATS_PER_LEASE
            ));
        }
        if self.margin.is_zero() || self.margin + self.heartbeat >= self.lease {
            return Err(format!(
                "the margin ({:?}) must be above zero and leave at least one heartbeat ({:?}) of the lease ({:?})",
                self.margin, self.heartbeat, self.lease
            ));
        }
        Ok(())
    }

    /// Extra wait of non-preferred contenders.
    pub fn preference_delay(&self) -> Duration {
        self.heartbeat * 2
    }

    /// How long a leader may act after the start of a successful renewal.
    pub fn validity(&self) -> Duration {
        self.lease - self.margin
    }
}

/// The stored leader record of one unit: who holds which epoch. Written
/// only by claims, releases, step-down requests and preferred-host changes
/// (see the module docs), never by a renewal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderRecord {
    pub epoch: u64,
    /// The holder's incarnation id.
    pub holder: String,
    /// Set by a graceful step-down: claim at once.
    #[serde(default)]
    pub released: bool,
    /// A host id (not incarnation) that should lead when alive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_host: Option<String>,
    /// Set by `logstream step-down` to the epoch it asks to hand over: the
    /// holder of that epoch checkpoints and releases. It stays until then;
    /// a claim (a new epoch) writes a record without it, so a stale request
    /// never applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_down_requested_epoch: Option<u64>,
    /// The renewal counter of a record written by an older host, which
    /// renews by rewriting this record (module docs). This version never
    /// sets it; it keeps it when rewriting such a record.
    #[serde(rename = "renewal", default, skip_serializing_if = "Option::is_none")]
    pub legacy_renewal: Option<u64>,
    /// An older holder's lease, in milliseconds; as `legacy_renewal`.
    #[serde(rename = "lease_ms", default, skip_serializing_if = "Option::is_none")]
    pub legacy_lease_ms: Option<u64>,
}

impl LeaderRecord {
    /// Whether a step-down of this record's current epoch was requested.
    pub fn step_down_requested(&self) -> bool {
        !self.released && self.step_down_requested_epoch == Some(self.epoch)
    }
}

/// The stored renewal record of one unit: the heartbeat of the holder of
/// `epoch`, the only thing a renewal writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewalRecord {
    /// The epoch whose holder wrote it. One of another epoch than the
    /// leader record's is stale and ignored ([`LeaderState::new`]).
    pub epoch: u64,
    /// Bumped by every renewal; a contender watches it change.
    pub renewal: u64,
    /// The holder's lease, in milliseconds: contenders wait at least this
    /// long (see the module docs).
    pub lease_ms: u64,
}

/// A unit's leader record and the renewal record of its epoch, as one
/// round reads them (in one transaction).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderState {
    pub record: LeaderRecord,
    /// `None` when there is none of the record's epoch: none yet, a stale
    /// one, or the holder is an older host renewing the record itself.
    pub renewal: Option<RenewalRecord>,
}

impl LeaderState {
    /// The state of `record`, with `renewal` if it is of the same epoch.
    pub fn new(record: LeaderRecord, renewal: Option<RenewalRecord>) -> Self {
        let renewal = renewal.filter(|r| r.epoch == record.epoch);
        LeaderState { record, renewal }
    }

    /// The renewal counter contenders watch: the renewal record's, else
    /// the one an older holder keeps in the leader record, else 0.
    pub fn renewal(&self) -> u64 {
        match &self.renewal {
            Some(r) => r.renewal,
            None => self.record.legacy_renewal.unwrap_or(0),
        }
    }

    /// The holder's lease in milliseconds, wherever it wrote it.
    pub fn lease_ms(&self) -> Option<u64> {
        match &self.renewal {
            Some(r) => Some(r.lease_ms),
            None => self.record.legacy_lease_ms,
        }
    }
}

/// What a round of the election wants written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing to write (follower watching a live leader).
    Observe,
    /// Claim: write a fresh leader record of the next epoch and its
    /// renewal record.
    Claim {
        record: LeaderRecord,
        renewal: RenewalRecord,
    },
    /// Renew: write this renewal record (renewal bumped); the leader record
    /// is only read.
    Renew(RenewalRecord),
    /// Step down: write this leader record (released).
    Release(LeaderRecord),
}

impl Decision {
    /// The state after this decision committed over `current` (what the
    /// round read).
    pub fn outcome(&self, current: Option<&LeaderState>) -> Option<LeaderState> {
        match self {
            Decision::Observe => current.cloned(),
            Decision::Claim { record, renewal } => Some(LeaderState {
                record: record.clone(),
                renewal: Some(renewal.clone()),
            }),
            Decision::Renew(renewal) => current.map(|c| LeaderState {
                record: c.record.clone(),
                renewal: Some(renewal.clone()),
            }),
            Decision::Release(record) => Some(LeaderState::new(
                record.clone(),
                current.and_then(|c| c.renewal.clone()),
            )),
        }
    }

    /// Write what this decision changes of unit `name` in `txn`.
    fn write(&self, txn: &mut dyn KvTxn, name: &str) -> Result<(), StoreError> {
        let (record, renewal) = match self {
            Decision::Observe => (None, None),
            Decision::Claim { record, renewal } => (Some(record), Some(renewal)),
            Decision::Renew(renewal) => (None, Some(renewal)),
            Decision::Release(record) => (Some(record), None),
        };
        if let Some(record) = record {
            let value = serde_json::to_vec(record).expect("a leader record always serialises");
            txn.set(&keys::leader(name), &value)?;
        }
        if let Some(renewal) = renewal {
            let value = serde_json::to_vec(renewal).expect("a renewal record always serialises");
            txn.set(&keys::renewal(name), &value)?;
        }
        Ok(())
    }
}

/// A change of role, for logs and the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ElectionEvent {
    BecameLeader {
        epoch: u64,
    },
    /// Another holder took over (`by_epoch`) while we thought we led.
    Fenced {
        epoch: u64,
        by_epoch: u64,
    },
    SteppedDown {
        epoch: u64,
    },
    /// Our lease had lapsed when the round started (the last renewal too
    /// old to act on) and this round renewed it at the same epoch: nobody
    /// claimed meanwhile, and we may act again.
    Resumed {
        epoch: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Follower,
    Leader { epoch: u64, valid_until: Duration },
}

/// The value a follower watches and since when (its own clock).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Observed {
    epoch: u64,
    renewal: u64,
    since: Duration,
}

/// The election state machine of one contender for one processor.
#[derive(Debug)]
pub struct Election {
    host_id: String,
    incarnation: String,
    timing: ElectionTiming,
    role: Role,
    observed: Option<Observed>,
    step_down_requested: bool,
}

impl Election {
    /// `incarnation` must be unique per process start (see module docs).
    pub fn new(host_id: &str, incarnation: &str, timing: ElectionTiming) -> Self {
        Election {
            host_id: host_id.to_string(),
            incarnation: incarnation.to_string(),
            timing,
            role: Role::Follower,
            observed: None,
            step_down_requested: false,
        }
    }

    pub fn incarnation(&self) -> &str {
        &self.incarnation
    }

    pub fn timing(&self) -> &ElectionTiming {
        &self.timing
    }

    /// The epoch this contender may act for at `now`, if any: it leads and
    /// its last successful renewal started less than `lease - margin` ago.
    pub fn acting_epoch(&self, now: Duration) -> Option<u64> {
        match self.role {
            Role::Leader { epoch, valid_until } if now < valid_until => Some(epoch),
            _ => None,
        }
    }

    /// Until when (this contender's clock) it may act, while it leads.
    pub fn acting_until(&self) -> Option<Duration> {
        match self.role {
            Role::Leader { valid_until, .. } => Some(valid_until),
            Role::Follower => None,
        }
    }

    /// The epoch it believes it holds, acting or not.
    pub fn held_epoch(&self) -> Option<u64> {
        match self.role {
            Role::Leader { epoch, .. } => Some(epoch),
            Role::Follower => None,
        }
    }

    /// Ask to hand over at the next round.
    pub fn request_step_down(&mut self) {
        self.step_down_requested = true;
    }

    /// Decide a round, given the state read in a transaction whose read
    /// returned at `read_at` (this contender's clock): a contender dates what
    /// it saw by it, the conservative side (a leader counts its validity
    /// from the start of the transaction instead, in [`Election::apply`]).
    /// `preferred_alive` says whether the record's preferred host (if any,
    /// and not us) is alive.
    pub fn decide(
        &mut self,
        read_at: Duration,
        current: Option<&LeaderState>,
        preferred_alive: bool,
    ) -> Decision {
        let Some(current) = current else {
            return self.claim(0, None);
        };
        let record = &current.record;
        if record.holder == self.incarnation && !record.released {
            // We hold it (also after a commit whose outcome was unknown).
            let prefers_other = record
                .preferred_host
                .as_ref()
                .is_some_and(|p| *p != self.host_id && preferred_alive);
            if self.step_down_requested || prefers_other {
                return Decision::Release(LeaderRecord {
                    released: true,
                    ..record.clone()
                });
            }
            return Decision::Renew(RenewalRecord {
                epoch: record.epoch,
                renewal: current.renewal() + 1,
                lease_ms: self.lease_ms(),
            });
        }
        // Someone else's record (or our own released one).
        let seen = (record.epoch, current.renewal());
        let since = match &self.observed {
            Some(o) if (o.epoch, o.renewal) == seen => o.since,
            _ => {
                self.observed = Some(Observed {
                    epoch: seen.0,
                    renewal: seen.1,
                    since: read_at,
                });
                read_at
            }
        };
        let lease = self
            .timing
            .lease
            .max(Duration::from_millis(current.lease_ms().unwrap_or(0)));
        let other_preferred = record
            .preferred_host
            .as_ref()
            .is_some_and(|p| *p != self.host_id);
        let delay = if other_preferred {
            self.timing.preference_delay()
        } else {
            Duration::ZERO
        };
        let own_release = record.released && record.holder == self.incarnation;
        let claimable = if record.released && !own_release {
            read_at >= since + delay
        } else {
            read_at >= since + lease + delay
        };
        if claimable && !self.step_down_requested {
            self.claim(record.epoch, record.preferred_host.clone())
        } else {
            Decision::Observe
        }
    }

    /// Claim the epoch after `previous_epoch`: a fresh leader record (no
    /// step-down request, no legacy fields) and its first renewal.
    fn claim(&self, previous_epoch: u64, preferred_host: Option<String>) -> Decision {
        let epoch = previous_epoch + 1;
        Decision::Claim {
            record: LeaderRecord {
                epoch,
                holder: self.incarnation.clone(),
                released: false,
                preferred_host,
                step_down_requested_epoch: None,
                legacy_renewal: None,
                legacy_lease_ms: None,
            },
            renewal: RenewalRecord {
                epoch,
                renewal: 0,
                lease_ms: self.lease_ms(),
            },
        }
    }

    fn lease_ms(&self) -> u64 {
        u64::try_from(self.timing.lease.as_millis()).unwrap_or(u64::MAX)
    }

    /// Apply the outcome of the round's commit. `committed` is false when
    /// the transaction failed; `current` is the state it had read.
    pub fn apply(
        &mut self,
        started: Duration,
        current: Option<&LeaderState>,
        decision: &Decision,
        committed: bool,
    ) -> Option<ElectionEvent> {
        let previous = self.role;
        if !committed {
            // Keep the role; validity runs out on its own (acting_epoch).
            return None;
        }
        let held = match decision {
            Decision::Claim { record, .. } => Some(record.epoch),
            Decision::Renew(renewal) => Some(renewal.epoch),
            Decision::Release(_) | Decision::Observe => None,
        };
        if let Some(epoch) = held {
            self.role = Role::Leader {
                epoch,
                valid_until: started + self.timing.validity(),
            };
            self.observed = None;
            return match previous {
                Role::Leader {
                    epoch: was,
                    valid_until,
                } if was == epoch => {
                    (started >= valid_until).then_some(ElectionEvent::Resumed { epoch })
                }
                _ => Some(ElectionEvent::BecameLeader { epoch }),
            };
        }
        match decision {
            Decision::Release(record) => {
                self.role = Role::Follower;
                self.step_down_requested = false;
                self.observed = None;
                Some(ElectionEvent::SteppedDown {
                    epoch: record.epoch,
                })
            }
            _ => match previous {
                Role::Leader { epoch, .. } => {
                    self.role = Role::Follower;
                    // Fenced: there is nothing left to step down from,
                    // and a pending request must not stop us claiming
                    // again later.
                    self.step_down_requested = false;
                    let by_epoch = current.map_or(epoch, |c| c.record.epoch);
                    Some(ElectionEvent::Fenced { epoch, by_epoch })
                }
                Role::Follower => None,
            },
        }
    }
}

/// Why a round failed.
#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    #[error("the {record} of '{processor}' is unreadable: {reason}")]
    Corrupt {
        processor: String,
        /// Which record: "leader record" or "renewal record".
        record: &'static str,
        reason: String,
    },
    #[error(transparent)]
    Store(#[from] TransactError),
}

/// Read and decode the JSON record at `key` inside a transaction.
fn read_json<T: serde::de::DeserializeOwned>(
    txn: &mut dyn KvTxn,
    key: &[u8],
    processor: &str,
    record: &'static str,
) -> Result<Option<T>, TxnAbort> {
    let Some(bytes) = txn.get(key)? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        TxnAbort::with(ElectionError::Corrupt {
            processor: processor.to_string(),
            record,
            reason: e.to_string(),
        })
    })
}

/// Read a processor's leader record inside a transaction (the renewal
/// record is not read: what the leader record says does not need it).
pub fn read_leader(txn: &mut dyn KvTxn, processor: &str) -> Result<Option<LeaderRecord>, TxnAbort> {
    read_json(txn, &keys::leader(processor), processor, "leader record")
}

/// Read a processor's leader state — both records — inside a transaction.
/// Both keys are read even when there is no leader record, so every round
/// conflicts with any claim or renewal committed while it ran.
pub fn read_leader_state(
    txn: &mut dyn KvTxn,
    processor: &str,
) -> Result<Option<LeaderState>, TxnAbort> {
    let record = read_leader(txn, processor)?;
    let renewal: Option<RenewalRecord> =
        read_json(txn, &keys::renewal(processor), processor, "renewal record")?;
    Ok(record.map(|record| LeaderState::new(record, renewal)))
}

/// The outcome of one [`step`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepOutcome {
    pub event: Option<ElectionEvent>,
    /// The state as it stands after the round.
    pub state: Option<LeaderState>,
}

/// Run one round for `processor`: read the records, decide, write, apply,
/// reading `clock` just before the transaction begins and again right
/// after the records were read (see [`Election::decide`]); `preferred_alive`
/// as there. A store failure leaves the role as it was (validity runs out
/// by itself) and is returned.
pub fn step(
    store: &dyn KvStore,
    policy: &RetryPolicy,
    election: &mut Election,
    processor: &str,
    clock: &dyn Clock,
    preferred_alive: bool,
) -> Result<StepOutcome, ElectionError> {
    let mut outcomes = step_many(
        store,
        policy,
        &mut [(processor, election)],
        clock,
        preferred_alive,
    )?;
    Ok(outcomes.pop().expect("one outcome per election"))
}

/// [`step`] for several elections (each `(name, election)`) in one
/// transaction: every unit's records are read, then the clock (so each
/// contender dates what it saw no earlier than its read), then each decides
/// and the writes commit together — a host renews all its units in one
/// transaction per heartbeat. A store failure leaves every role as it was.
/// Keep the batch within the store's limits (each unit reads and at most
/// writes [`KEYS_PER_ROUND`] keys).
pub fn step_many(
    store: &dyn KvStore,
    policy: &RetryPolicy,
    elections: &mut [(&str, &mut Election)],
    clock: &dyn Clock,
    preferred_alive: bool,
) -> Result<Vec<StepOutcome>, ElectionError> {
    let started = clock.now();
    let result = transact(store, policy, |txn| {
        round_in(txn, elections, clock, preferred_alive)
    });
    match result {
        Ok(round) => Ok(round.apply(elections, started)),
        Err(error) => Err(error.into_typed(ElectionError::Store)),
    }
}

/// What one round read and decided, per election, until its commit is
/// known.
#[derive(Debug)]
struct Round {
    current: Vec<Option<LeaderState>>,
    decisions: Vec<Decision>,
}

impl Round {
    /// Apply the committed round to its elections (in the same order).
    fn apply(self, elections: &mut [(&str, &mut Election)], started: Duration) -> Vec<StepOutcome> {
        elections
            .iter_mut()
            .zip(self.current)
            .zip(self.decisions)
            .map(|(((_, election), current), decision)| {
                let event = election.apply(started, current.as_ref(), &decision, true);
                let state = decision.outcome(current.as_ref());
                StepOutcome { event, state }
            })
            .collect()
    }
}

/// The body of one round's transaction: read every unit's records, read the
/// clock, decide and write. Tests interleave it with other transactions.
fn round_in(
    txn: &mut dyn KvTxn,
    elections: &mut [(&str, &mut Election)],
    clock: &dyn Clock,
    preferred_alive: bool,
) -> TxnResult<Round> {
    let mut current = Vec::with_capacity(elections.len());
    for (name, _) in elections.iter() {
        current.push(read_leader_state(txn, name)?);
    }
    let read_at = clock.now();
    let mut decisions = Vec::with_capacity(elections.len());
    for ((name, election), current) in elections.iter_mut().zip(&current) {
        let decision = election.decide(read_at, current.as_ref(), preferred_alive);
        decision.write(txn, name)?;
        decisions.push(decision);
    }
    Ok(Round { current, decisions })
}

/// Name a preferred host for a processor (or clear it with `None`).
pub fn set_preferred_host(
    store: &dyn KvStore,
    policy: &RetryPolicy,
    processor: &str,
    host_id: Option<&str>,
) -> Result<(), ElectionError> {
    let key = keys::leader(processor);
    transact(store, policy, |txn| {
        let record = read_leader(txn, processor)?.unwrap_or(LeaderRecord {
            epoch: 0,
            holder: String::new(),
            released: true,
            preferred_host: None,
            step_down_requested_epoch: None,
            legacy_renewal: None,
            legacy_lease_ms: None,
        });
        // `..record` keeps an older holder's fields (module docs).
        let record = LeaderRecord {
            preferred_host: host_id.map(str::to_string),
            ..record
        };
        txn.set(&key, &serde_json::to_vec(&record).expect("serialises"))?;
        Ok(())
    })
    .map_err(|error| error.into_typed(ElectionError::Store))
}

/// Ask the leader of `unit` to hand over (`logstream step-down`): mark its
/// current epoch in the leader record, in one transaction with the read, so
/// the request names exactly the epoch that was leading. Only when the
/// record has a live (unreleased) leader and, if `only_holder` is given,
/// that incarnation holds it. Returns the record as read when a request was
/// made (or was already pending), `None` otherwise. Idempotent: re-marking
/// the same epoch writes the same record.
pub fn request_step_down(
    store: &dyn KvStore,
    policy: &RetryPolicy,
    unit: &str,
    only_holder: Option<&str>,
) -> Result<Option<LeaderRecord>, ElectionError> {
    let key = keys::leader(unit);
    let result = transact(store, policy, |txn| {
        let Some(record) = read_leader(txn, unit)? else {
            return Ok(None);
        };
        if record.released || only_holder.is_some_and(|h| h != record.holder) {
            return Ok(None);
        }
        if !record.step_down_requested() {
            // `..record` keeps an older holder's fields (module docs).
            let marked = LeaderRecord {
                step_down_requested_epoch: Some(record.epoch),
                ..record.clone()
            };
            txn.set(&key, &serde_json::to_vec(&marked).expect("serialises"))?;
        }
        Ok(Some(record))
    });
    result.map_err(|error| error.into_typed(ElectionError::Store))
}

/// Why a fenced write was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("processor '{processor}': the write of epoch {epoch} is fenced off (the leader record is at epoch {current_epoch}, held by {holder})")]
pub struct Fenced {
    pub processor: String,
    pub epoch: u64,
    pub current_epoch: u64,
    pub holder: String,
}

/// Inside a transaction, refuse unless `incarnation` holds `epoch` of
/// `processor`. Every write made on behalf of a processor calls this first,
/// so a zombie's write conflicts with, or is refused after, a newer claim.
/// It reads the leader record only, never the renewal record, so the
/// leader's own renewals do not conflict with its writes (module docs).
pub fn check_fence(
    txn: &mut dyn KvTxn,
    processor: &str,
    epoch: u64,
    incarnation: &str,
) -> Result<(), TxnAbort> {
    let current = read_leader(txn, processor)?;
    match current {
        Some(r) if r.epoch == epoch && r.holder == incarnation => Ok(()),
        other => {
            let (current_epoch, holder) =
                other.map_or((0, "nobody".into()), |r| (r.epoch, r.holder));
            Err(TxnAbort::Abort(
                Fenced {
                    processor: processor.to_string(),
                    epoch,
                    current_epoch,
                    holder,
                }
                .into(),
            ))
        }
    }
}

impl From<StoreError> for ElectionError {
    fn from(error: StoreError) -> Self {
        ElectionError::Store(TransactError::Store {
            source: error,
            attempts: 1,
        })
    }
}

#[cfg(test)]
#[path = "election_occ_tests.rs"]
mod occ_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::clock::{Clock, ManualClock};
    use crate::store::SqliteStore;

    const P: &str = "orders";

    struct World {
        _dir: tempfile::TempDir,
        store: SqliteStore,
        clock: ManualClock,
        policy: RetryPolicy,
    }

    impl World {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let store = SqliteStore::open(dir.path().join("store.db")).unwrap();
            World {
                _dir: dir,
                store,
                clock: ManualClock::default(),
                policy: RetryPolicy::default(),
            }
        }

        fn round(&self, election: &mut Election) -> StepOutcome {
            step(&self.store, &self.policy, election, P, &self.clock, false).unwrap()
        }

        fn tick(&self) {
            self.clock.advance(DEFAULT_HEARTBEAT);
        }
    }

    fn contender(name: &str) -> Election {
        Election::new(name, &format!("{name}#1"), ElectionTiming::default())
    }

    /// The state of a live leader `holder` of `epoch` at `renewal`, as
    /// this version writes it (with its renewal record).
    fn held(epoch: u64, holder: &str, renewal: u64, preferred_host: Option<&str>) -> LeaderState {
        LeaderState {
            record: LeaderRecord {
                epoch,
                holder: holder.into(),
                released: false,
                preferred_host: preferred_host.map(str::to_string),
                step_down_requested_epoch: None,
                legacy_renewal: None,
                legacy_lease_ms: None,
            },
            renewal: Some(RenewalRecord {
                epoch,
                renewal,
                lease_ms: DEFAULT_LEASE.as_millis() as u64,
            }),
        }
    }

    #[test]
    fn timing_is_validated() {
        assert!(ElectionTiming::default().validate().is_ok());
        let short = ElectionTiming {
            lease: Duration::from_millis(250),
            ..ElectionTiming::default()
        };
        assert!(short
            .validate()
            .unwrap_err()
            .contains("at least 3 heartbeats"));
        let no_margin = ElectionTiming {
            margin: Duration::ZERO,
            ..ElectionTiming::default()
        };
        assert!(no_margin.validate().unwrap_err().contains("margin"));
    }

    #[test]
    fn first_contender_claims_epoch_one_and_the_other_follows() {
        let world = World::new();
        let (mut a, mut b) = (contender("a"), contender("b"));
        assert_eq!(
            world.round(&mut a).event,
            Some(ElectionEvent::BecameLeader { epoch: 1 })
        );
        assert_eq!(world.round(&mut b).event, None);
        assert_eq!(a.acting_epoch(world.clock.now()), Some(1));
        assert_eq!(b.held_epoch(), None);
    }

    #[test]
    fn renewals_keep_the_leader_for_as_long_as_they_come() {
        let world = World::new();
        let (mut a, mut b) = (contender("a"), contender("b"));
        world.round(&mut a);
        for _ in 0..50 {
            world.tick();
            assert_eq!(world.round(&mut a).event, None);
            assert_eq!(world.round(&mut b).event, None);
            assert_eq!(a.acting_epoch(world.clock.now()), Some(1));
        }
        assert_eq!(world.round(&mut a).state.unwrap().renewal(), 51);
    }

    /// A renewal after the leader stopped acting (no contender claimed
    /// meanwhile) says so: its paused unit may act again. A renewal in
    /// time says nothing.
    #[test]
    fn a_renewal_after_the_lease_lapsed_resumes_the_same_epoch() {
        let world = World::new();
        let mut a = contender("a");
        world.round(&mut a);
        world.tick();
        assert_eq!(world.round(&mut a).event, None, "renewed in time");
        world.clock.advance(DEFAULT_LEASE - DEFAULT_MARGIN);
        assert_eq!(a.acting_epoch(world.clock.now()), None, "lapsed");
        assert_eq!(
            world.round(&mut a).event,
            Some(ElectionEvent::Resumed { epoch: 1 })
        );
        assert_eq!(a.acting_epoch(world.clock.now()), Some(1));
    }

    #[test]
    fn a_silent_leader_is_replaced_after_the_lease_on_the_contenders_clock() {
        let world = World::new();
        let (mut a, mut b) = (contender("a"), contender("b"));
        world.round(&mut a);
        world.round(&mut b); // b first sees (1, 0) now
        let seen_at = world.clock.now();
        while world.clock.now() + DEFAULT_HEARTBEAT < seen_at + DEFAULT_LEASE {
            world.tick();
            assert_eq!(
                world.round(&mut b).event,
                None,
                "claimed early at {:?}",
                world.clock.now()
            );
        }
        world
            .clock
            .advance(seen_at + DEFAULT_LEASE - world.clock.now());
        assert_eq!(
            world.round(&mut b).event,
            Some(ElectionEvent::BecameLeader { epoch: 2 })
        );
    }

    #[test]
    fn the_leader_goes_quiet_at_lease_minus_margin_after_its_last_renewal_started() {
        let world = World::new();
        let mut a = contender("a");
        world.round(&mut a);
        let started = world.clock.now();
        let quiet_at = started + DEFAULT_LEASE - DEFAULT_MARGIN;
        world
            .clock
            .advance(quiet_at - started - Duration::from_millis(1));
        assert_eq!(a.acting_epoch(world.clock.now()), Some(1));
        world.clock.advance(Duration::from_millis(1));
        assert_eq!(a.acting_epoch(world.clock.now()), None);
        // Quiet strictly before any contender may claim (lease after it saw the record).
        assert!(quiet_at < started + DEFAULT_LEASE);
    }

    #[test]
    fn a_slow_store_counts_validity_from_the_start_of_the_renewal() {
        let mut a = contender("a");
        let t0 = Duration::from_secs(10);
        let decision = a.decide(t0, None, false);
        // The commit lands 300 ms after the transaction started.
        a.apply(t0, None, &decision, true);
        let committed_at = t0 + Duration::from_millis(300);
        assert_eq!(a.acting_epoch(committed_at), Some(1));
        assert_eq!(a.acting_epoch(t0 + DEFAULT_LEASE - DEFAULT_MARGIN), None);
        // A failed renewal leaves the role but not the right to act.
        let record = decision.outcome(None).unwrap();
        let later = t0 + Duration::from_millis(100);
        let renewal = a.decide(later, Some(&record), false);
        a.apply(later, Some(&record), &renewal, false);
        assert_eq!(a.held_epoch(), Some(1));
        assert_eq!(a.acting_epoch(t0 + DEFAULT_LEASE - DEFAULT_MARGIN), None);
    }

    #[test]
    fn step_down_hands_over_at_once() {
        let world = World::new();
        let (mut a, mut b) = (contender("a"), contender("b"));
        world.round(&mut a);
        world.round(&mut b);
        a.request_step_down();
        world.tick();
        assert_eq!(
            world.round(&mut a).event,
            Some(ElectionEvent::SteppedDown { epoch: 1 })
        );
        assert_eq!(a.acting_epoch(world.clock.now()), None);
        assert_eq!(
            world.round(&mut b).event,
            Some(ElectionEvent::BecameLeader { epoch: 2 })
        );
        // The one who stepped down does not take it straight back.
        assert_eq!(world.round(&mut a).event, None);
    }

    #[test]
    fn a_step_down_request_names_the_epoch_renewals_see_it_and_a_claim_drops_it() {
        let world = World::new();
        let (mut a, mut b) = (contender("a"), contender("b"));
        assert_eq!(
            request_step_down(&world.store, &world.policy, P, None).unwrap(),
            None
        );
        world.round(&mut a);
        world.round(&mut b);
        // Only the named holder's units are asked.
        assert_eq!(
            request_step_down(&world.store, &world.policy, P, Some("b#1")).unwrap(),
            None
        );
        let asked = request_step_down(&world.store, &world.policy, P, Some("a#1"))
            .unwrap()
            .unwrap();
        assert_eq!(asked.epoch, 1);
        world.tick();
        let renewed = world.round(&mut a).state.unwrap().record;
        assert!(renewed.step_down_requested(), "{renewed:?}");
        // The holder releases (the unit does after its final checkpoint)...
        a.request_step_down();
        world.tick();
        let released = world.round(&mut a).state.unwrap().record;
        assert!(released.released && !released.step_down_requested());
        // ...the other claims at once, with a clean record.
        let claimed = world.round(&mut b).state.unwrap().record;
        assert_eq!(
            (claimed.epoch, claimed.step_down_requested_epoch),
            (2, None)
        );
        // A released or absent leader is not asked.
        b.request_step_down();
        world.round(&mut b);
        assert_eq!(
            request_step_down(&world.store, &world.policy, P, None).unwrap(),
            None
        );
    }

    #[test]
    fn a_fenced_leader_forgets_a_pending_step_down() {
        let mut a = contender("a");
        let t0 = Duration::from_secs(1);
        let claim = a.decide(t0, None, false);
        a.apply(t0, None, &claim, true);
        a.request_step_down();
        let other = held(2, "b#1", 0, None);
        let later = t0 + DEFAULT_HEARTBEAT;
        let observe = a.decide(later, Some(&other), false);
        assert_eq!(observe, Decision::Observe);
        a.apply(later, Some(&other), &observe, true);
        // Free to claim once b's lease runs out.
        let much_later = later + DEFAULT_LEASE;
        assert!(
            matches!(a.decide(much_later, Some(&other), false), Decision::Claim { record, .. } if record.epoch == 3)
        );
    }

    #[test]
    fn a_resumed_zombie_is_fenced_and_its_writes_refused() {
        let world = World::new();
        let (mut a, mut b) = (contender("a"), contender("b"));
        world.round(&mut a);
        world.round(&mut b);
        // a is paused; b waits out the lease and claims.
        world.clock.advance(DEFAULT_LEASE);
        assert_eq!(
            world.round(&mut b).event,
            Some(ElectionEvent::BecameLeader { epoch: 2 })
        );
        // a resumes: it is no longer acting, its fenced write is refused...
        assert_eq!(a.acting_epoch(world.clock.now()), None);
        let refused = transact(&world.store, &world.policy, |txn| {
            check_fence(txn, P, 1, a.incarnation())
        });
        let error = refused.unwrap_err();
        let TransactError::Aborted(inner) = error else {
            panic!("not a fence refusal")
        };
        let fenced = inner.downcast::<Fenced>().unwrap();
        assert_eq!((fenced.epoch, fenced.current_epoch), (1, 2));
        // ...and its next round tells it so.
        assert_eq!(
            world.round(&mut a).event,
            Some(ElectionEvent::Fenced {
                epoch: 1,
                by_epoch: 2
            })
        );
        assert_eq!(a.held_epoch(), None);
        // b's writes pass the fence.
        transact(&world.store, &world.policy, |txn| {
            check_fence(txn, P, 2, b.incarnation())
        })
        .unwrap();
    }

    #[test]
    fn a_restarted_process_does_not_inherit_its_old_epoch() {
        let world = World::new();
        let mut old = Election::new("a", "a#1", ElectionTiming::default());
        world.round(&mut old);
        let mut restarted = Election::new("a", "a#2", ElectionTiming::default());
        assert_eq!(world.round(&mut restarted).event, None);
        world.clock.advance(DEFAULT_LEASE);
        assert_eq!(
            world.round(&mut restarted).event,
            Some(ElectionEvent::BecameLeader { epoch: 2 })
        );
    }

    #[test]
    fn a_preferred_host_gets_a_head_start_and_the_leader_yields_to_it() {
        let world = World::new();
        let (mut a, mut b, mut c) = (contender("a"), contender("b"), contender("c"));
        world.round(&mut a);
        set_preferred_host(&world.store, &world.policy, P, Some("b")).unwrap();
        // a yields to b, which is alive.
        world.tick();
        let outcome = step(&world.store, &world.policy, &mut a, P, &world.clock, true).unwrap();
        assert_eq!(outcome.event, Some(ElectionEvent::SteppedDown { epoch: 1 }));
        // c, not preferred, waits; b claims at once.
        assert_eq!(world.round(&mut c).event, None);
        assert_eq!(
            world.round(&mut b).event,
            Some(ElectionEvent::BecameLeader { epoch: 2 })
        );
    }

    #[test]
    fn a_non_preferred_contender_waits_the_preference_delay_longer() {
        let mut c = contender("c");
        let record = held(3, "a#1", 7, Some("b"));
        let t0 = Duration::from_secs(1);
        assert_eq!(c.decide(t0, Some(&record), false), Decision::Observe);
        let at_lease = t0 + DEFAULT_LEASE;
        assert_eq!(c.decide(at_lease, Some(&record), false), Decision::Observe);
        let later = t0 + DEFAULT_LEASE + ElectionTiming::default().preference_delay();
        assert!(
            matches!(c.decide(later, Some(&record), false), Decision::Claim { record, .. } if record.epoch == 4)
        );
    }

    #[test]
    fn a_contender_dates_what_it_saw_by_when_its_read_returned() {
        let mut a = contender("a");
        let mut b = contender("b");
        let t0 = Duration::from_secs(10);
        let claim = a.decide(t0, None, false);
        a.apply(t0, None, &claim, true);
        let record = claim.outcome(None).unwrap();
        // b's transaction starts at t0 but its read waits 300 ms on the
        // store (say, behind a's lock) and sees a's fresh record.
        let read_at = t0 + Duration::from_millis(300);
        assert_eq!(b.decide(read_at, Some(&record), false), Decision::Observe);
        // a acts until t0 + lease - margin by its own reckoning...
        assert!(a
            .acting_epoch(t0 + DEFAULT_LEASE - DEFAULT_MARGIN - Duration::from_millis(1))
            .is_some());
        // ...and b, dating the record by its read, may not claim before
        // read_at + lease, even in a round that started earlier.
        let just_before = read_at + DEFAULT_LEASE - Duration::from_millis(1);
        assert_eq!(
            b.decide(just_before, Some(&record), false),
            Decision::Observe
        );
        let at = read_at + DEFAULT_LEASE;
        assert!(matches!(
            b.decide(at, Some(&record), false),
            Decision::Claim { record, .. } if record.epoch == 2
        ));
    }

    #[test]
    fn a_contender_waits_out_the_holders_longer_lease() {
        let slow = ElectionTiming {
            lease: Duration::from_secs(5),
            heartbeat: Duration::from_secs(1),
            margin: Duration::from_secs(1),
        };
        let mut a = Election::new("a", "a#1", slow);
        let mut b = contender("b");
        let t0 = Duration::from_secs(10);
        let claim = a.decide(t0, None, false);
        a.apply(t0, None, &claim, true);
        let record = claim.outcome(None).unwrap();
        assert_eq!(record.lease_ms(), Some(5_000));
        assert_eq!(b.decide(t0, Some(&record), false), Decision::Observe);
        // b's own lease (500 ms) has long passed, a's has not: a renews
        // every second and must not be deposed between renewals.
        let later = t0 + Duration::from_secs(1);
        assert_eq!(b.decide(later, Some(&record), false), Decision::Observe);
        let after = t0 + Duration::from_secs(5);
        assert!(matches!(
            b.decide(after, Some(&record), false),
            Decision::Claim { .. }
        ));
    }

    /// The leader record's bytes, as fenced writes read them.
    fn leader_bytes(world: &World) -> Option<Vec<u8>> {
        let mut txn = world.store.begin().unwrap();
        txn.get(&keys::leader(P)).unwrap()
    }

    fn set_raw(world: &World, key: &[u8], value: &[u8]) {
        transact(&world.store, &world.policy, |txn| Ok(txn.set(key, value)?)).unwrap();
    }

    #[test]
    fn renewals_write_the_renewal_record_and_never_the_leader_record() {
        let world = World::new();
        let mut a = contender("a");
        world.round(&mut a);
        let claimed = leader_bytes(&world);
        for renewal in 1..=10 {
            world.tick();
            let state = world.round(&mut a).state.unwrap();
            assert_eq!(
                state.renewal,
                Some(RenewalRecord {
                    epoch: 1,
                    renewal,
                    lease_ms: DEFAULT_LEASE.as_millis() as u64,
                })
            );
        }
        assert_eq!(leader_bytes(&world), claimed);
        // Nor does this version write the old fields into the record: an
        // older host refuses it rather than depose its leader.
        let json: serde_json::Value = serde_json::from_slice(&claimed.unwrap()).unwrap();
        assert_eq!(json.get("renewal"), None);
        assert_eq!(json.get("lease_ms"), None);
    }

    /// What an older host wrote when it claimed (epoch 3, its lease 1 s),
    /// over a renewal record left by an earlier epoch's newer holder.
    fn old_format_leader(world: &World) {
        set_raw(
            world,
            &keys::leader(P),
            br#"{"epoch":3,"holder":"old#1","renewal":0,"released":false,"lease_ms":1000}"#,
        );
        set_raw(
            world,
            &keys::renewal(P),
            br#"{"epoch":2,"renewal":40,"lease_ms":500}"#,
        );
    }

    /// One heartbeat of the older host: it bumps the record's own counter.
    fn old_format_renewal(world: &World) {
        transact(&world.store, &world.policy, |txn| {
            let record = read_leader(txn, P)?.unwrap();
            let renewed = LeaderRecord {
                legacy_renewal: Some(record.legacy_renewal.unwrap() + 1),
                ..record
            };
            txn.set(&keys::leader(P), &serde_json::to_vec(&renewed).unwrap())?;
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn a_live_leader_of_an_older_version_is_watched_through_its_own_record() {
        let world = World::new();
        old_format_leader(&world);
        let mut b = contender("b");
        // The stale renewal record (epoch 2) is ignored: b watches the
        // record's own counter, which the older leader keeps bumping.
        let state = world.round(&mut b).state.unwrap();
        assert_eq!(
            (&state.renewal, state.renewal(), state.lease_ms()),
            (&None, 0, Some(1000))
        );
        for _ in 0..30 {
            world.tick();
            old_format_renewal(&world);
            assert_eq!(world.round(&mut b).event, None, "deposed a live leader");
        }
        // Once it falls silent, b waits out the older holder's lease (1 s,
        // longer than its own), then claims.
        let silent_at = world.clock.now();
        while world.clock.now() + DEFAULT_HEARTBEAT < silent_at + Duration::from_secs(1) {
            world.tick();
            assert_eq!(world.round(&mut b).event, None, "claimed before the lease");
        }
        world
            .clock
            .advance(silent_at + Duration::from_secs(1) - world.clock.now());
        assert_eq!(
            world.round(&mut b).event,
            Some(ElectionEvent::BecameLeader { epoch: 4 })
        );
        let state = world.round(&mut b).state.unwrap();
        assert_eq!((state.record.legacy_renewal, state.renewal()), (None, 1));
    }

    #[test]
    fn a_step_down_request_keeps_an_older_records_own_fields() {
        let world = World::new();
        old_format_leader(&world);
        let asked = request_step_down(&world.store, &world.policy, P, None)
            .unwrap()
            .unwrap();
        assert_eq!((asked.epoch, asked.holder.as_str()), (3, "old#1"));
        let json: serde_json::Value =
            serde_json::from_slice(&leader_bytes(&world).unwrap()).unwrap();
        assert_eq!(json["step_down_requested_epoch"], 3);
        assert_eq!(
            (json["renewal"].as_u64(), json["lease_ms"].as_u64()),
            (Some(0), Some(1000))
        );
    }

    /// Lease exclusivity under arbitrary store delays: two contenders whose
    /// rounds start every heartbeat (plus random pauses), whose reads and
    /// commits are each delayed by up to 400 ms, over a store with
    /// optimistic commits, and whose clocks run at rates up to 20 % apart
    /// (the bound is lease / (lease - margin) = 1.25 with the defaults).
    /// At no real instant may both consider themselves acting.
    mod exclusivity {
        use super::*;
        use proptest::prelude::*;

        /// Real time, in microseconds.
        type Micros = u64;

        #[derive(Debug, Clone)]
        struct Round {
            /// Extra wait before this round starts (a pause), µs.
            pause: Micros,
            read_delay: Micros,
            commit_delay: Micros,
        }

        fn round() -> impl Strategy<Value = Round> {
            // Long store delays and leader pauses often: the interleavings
            // where a delayed read could misdate a record need both.
            (
                prop_oneof![3 => Just(0u64), 1 => 0u64..2_000_000],
                prop_oneof![1 => 0u64..50_000, 1 => 100_000u64..400_000],
                0u64..400_000,
            )
                .prop_map(|(pause, read_delay, commit_delay)| Round {
                    pause,
                    read_delay,
                    commit_delay,
                })
        }

        struct Contender {
            election: Election,
            /// Clock rate: own-clock µs per real µs, in permille.
            rate_permille: u64,
            rounds: std::vec::IntoIter<Round>,
            /// Acting intervals so far, in real time.
            acting: Vec<(Micros, Micros)>,
        }

        impl Contender {
            fn clock(&self, real: Micros) -> Duration {
                Duration::from_micros(real * self.rate_permille / 1000)
            }

            /// The real time at which own-clock time `at` is reached.
            fn real(&self, at: Duration) -> Micros {
                (at.as_micros() as u64 * 1000).div_ceil(self.rate_permille)
            }

            /// Record the acting interval that starts (or goes on) now.
            fn note_acting(&mut self, now: Micros) {
                let own_now = self.clock(now);
                if let Some(epoch) = self.election.acting_epoch(own_now) {
                    let _ = epoch;
                    let Role::Leader { valid_until, .. } = self.election.role else {
                        unreachable!()
                    };
                    self.acting.push((now, self.real(valid_until)));
                }
            }

            /// A role change at `now` ends any interval after it.
            fn cut_acting(&mut self, now: Micros) {
                if self.election.acting_epoch(self.clock(now)).is_none() {
                    for interval in &mut self.acting {
                        interval.1 = interval.1.min(now.max(interval.0));
                    }
                }
            }
        }

        /// A round in flight: its start, and what its read saw.
        struct InFlight {
            start: Micros,
            seen: Option<LeaderState>,
            seen_version: u64,
            decision: Decision,
        }

        /// Run both contenders' rounds against one unit's records with optimistic
        /// commits, event by event in real-time order (a read sees the
        /// commits before it; a commit fails if a write landed since its
        /// read); returns both acting histories.
        fn simulate(mut contenders: [Contender; 2]) -> [Vec<(Micros, Micros)>; 2] {
            use std::cmp::Reverse;
            use std::collections::BinaryHeap;
            #[derive(PartialEq, Eq, PartialOrd, Ord)]
            enum Event {
                Start,
                Read,
                Commit,
            }
            let heartbeat = DEFAULT_HEARTBEAT.as_micros() as u64;
            let mut state: Option<LeaderState> = None;
            let mut version = 0u64;
            let mut in_flight: [Option<InFlight>; 2] = [None, None];
            let mut current: [Option<Round>; 2] = [None, None];
            let mut events = BinaryHeap::new();
            events.push(Reverse((0u64, 0usize, Event::Start)));
            events.push(Reverse((heartbeat / 3, 1usize, Event::Start)));
            while let Some(Reverse((now, who, event))) = events.pop() {
                let c = &mut contenders[who];
                match event {
                    Event::Start => {
                        let Some(round) = c.rounds.next() else {
                            continue;
                        };
                        let start = now + round.pause;
                        events.push(Reverse((start + round.read_delay, who, Event::Read)));
                        in_flight[who] = Some(InFlight {
                            start,
                            seen: None,
                            seen_version: 0,
                            decision: Decision::Observe,
                        });
                        current[who] = Some(round);
                    }
                    Event::Read => {
                        let round = current[who].as_ref().expect("a round in flight");
                        let flight = in_flight[who].as_mut().expect("a round in flight");
                        flight.seen = state.clone();
                        flight.seen_version = version;
                        flight.decision = c.election.decide(c.clock(now), state.as_ref(), false);
                        events.push(Reverse((now + round.commit_delay, who, Event::Commit)));
                    }
                    Event::Commit => {
                        let flight = in_flight[who].take().expect("a round in flight");
                        let committed = flight.seen_version == version;
                        // Every round reads both records, so a write of
                        // either fails every round in flight (one version).
                        if committed && flight.decision != Decision::Observe {
                            state = flight.decision.outcome(flight.seen.as_ref());
                            version += 1;
                        }
                        c.election.apply(
                            c.clock(flight.start),
                            flight.seen.as_ref(),
                            &flight.decision,
                            committed,
                        );
                        c.cut_acting(now);
                        c.note_acting(now);
                        let next = now.max(flight.start + heartbeat);
                        events.push(Reverse((next, who, Event::Start)));
                    }
                }
            }
            contenders.map(|c| c.acting)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1024))]
            #[test]
            fn no_two_contenders_act_at_the_same_instant(
                a_rounds in proptest::collection::vec(round(), 50..200),
                b_rounds in proptest::collection::vec(round(), 50..200),
                a_rate in 900u64..=1_000,
                b_rate in 900u64..=1_080,
            ) {
                let make = |name: &str, rate, rounds: Vec<Round>| Contender {
                    election: contender(name),
                    rate_permille: rate,
                    rounds: rounds.into_iter(),
                    acting: Vec::new(),
                };
                let [a, b] = simulate([
                    make("a", a_rate, a_rounds),
                    make("b", b_rate, b_rounds),
                ]);
                for &(a_from, a_until) in &a {
                    for &(b_from, b_until) in &b {
                        prop_assert!(
                            a_until <= b_from || b_until <= a_from,
                            "a acts {a_from}..{a_until} µs, b acts {b_from}..{b_until} µs"
                        );
                    }
                }
            }
        }
    }
}
