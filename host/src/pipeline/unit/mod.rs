//! One pipeline unit: a deployed processor on one input partition
//! ([`UnitId`]). Units are what hosts elect a leader for, checkpoint and
//! fail over: the unit's state is one processor instance's state, its
//! checkpoint records the partition's next offset and a mark on every output
//! partition it writes ([`Position`]).
//!
//! A unit is always in one [`Role`]:
//! - **Active** (it holds the acting epoch): polls a batch from its
//!   partition (bounded by the spec's records, bytes and linger), runs it
//!   through the processor, produces the outputs — to the default output
//!   topic or to a topic the processor names among those it was deployed
//!   with — and dead letters with deterministic ids ([`emit`]), waits for the
//!   broker to acknowledge them, and every checkpoint interval or N records
//!   checkpoints state + next offset + the output partitions' high
//!   watermarks, fenced by its epoch. A checkpoint is therefore never ahead
//!   of delivered outputs.
//! - **Passive**: a hot standby. The module stays compiled and an instance
//!   stays restored from the latest checkpoint, refreshed when a new one
//!   lands (the host's [`CheckpointWatch`] says when); the input is read
//!   ahead and the output tail followed.
//!
//! On takeover ([`takeover`]) it restores the last checkpoint of its state
//! lineage (only if the standby does not already hold it), fences the
//! previous leader's producer at the broker (see [`super::fenced`]), marks
//! any output partition the checkpoint does not cover yet in a checkpoint of
//! its own, reads back the ids the output partitions received since the
//! marks, seeks the input to the checkpointed offset, and replays,
//! suppressing outputs that already reached the topic (guarantee 2 without
//! Kafka transactions).
//!
//! The unit reads time, its lease and the broker only through [`seams`]:
//! production passes the host's clients, the simulator simulated ones.
//!
//! Crash-only: a unit whose step fails (an error it cannot ride out, or a
//! panic) is dropped whole — its lease leaves the host's elector and is
//! released ([`super::elector`]) — and the host starts it again after a
//! backoff ([`restarts`]).

mod checkpointing;
mod emit;
pub mod restarts;
pub mod seams;
mod takeover;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashSet};

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;

use super::checkpoint_watch::{CheckpointWatch, WatchedCheckpoint};
use super::fenced::ProduceError;
use super::kafka::{is_fence_record, BatchLimits};
use super::position::{OutputMark, Position};
use super::standby_budget::StandbyBudget;
use super::wake::{ArmedWake, Wake};
use crate::admin::{BatchFigures, UnitAdmin};
use crate::store::checkpoint::CheckpointMeta;
use crate::store::election::ElectionTiming;
use crate::store::registry::ProcessorSpec;
use crate::store::KvStore;
use crate::unit_id::{Deployment, UnitId};
use crate::wasm::{ProcessorModule, SupervisedProcessor};
use seams::{Lease, UnitClock, UnitIo, UnitIoFactory};

pub use emit::{ERROR_HEADER, MAX_DEAD_LETTER_REASON_BYTES};

/// Pause before reading the input again after a failed read (the broker
/// unreachable, say), while leading.
const INPUT_RETRY_BACKOFF: Duration = Duration::from_millis(100);
/// How many times per heartbeat a passive unit wakes to read its input ahead
/// (the host's tail hub follows the outputs), and a paused one to look at
/// its lease, at least. Once is enough: each wakes at once when its claim
/// or renewal commits or its lease is lost (the elector notifies it), and
/// the read-ahead window is far larger than a heartbeat's records. Twice
/// cost an idle passive at 300 units a fifth more CPU (BENCHMARKS.md).
const STANDBY_WAKES_PER_HEARTBEAT: u32 = 1;

/// How units run; shared by all units of a host.
#[derive(Debug, Clone)]
pub struct UnitSettings {
    /// Opens a unit's broker connections (production: the host's shared
    /// broker I/O, [`super::shared_io::SharedIo`]).
    pub io: Arc<dyn UnitIoFactory>,
    /// The time units decide by (production: the process's monotonic
    /// clock).
    pub clock: Arc<dyn UnitClock>,
    /// How much memory the host's warm standbys may hold.
    pub standby_budget: Arc<StandbyBudget>,
    pub host_id: String,
    pub incarnation: String,
    /// The deployment every id on the broker carries.
    pub deployment: Deployment,
    pub timing: ElectionTiming,
    /// Tells passives when their checkpoint moved, so they re-read it only
    /// then (`None`: every standby refresh reads the store).
    pub checkpoint_watch: Option<CheckpointWatch>,
    /// Checkpoint at least this often while records flow.
    pub checkpoint_interval: Duration,
    /// ... and after this many records.
    pub checkpoint_every_records: u64,
}

/// A warm instance at a checkpoint (`None`: at no checkpoint, empty state).
struct Standby {
    generation: Option<u64>,
    processor: SupervisedProcessor,
}

/// What a leader holds.
struct Active {
    epoch: u64,
    processor: SupervisedProcessor,
    links: Box<dyn UnitIo>,
    /// The next input offset to process.
    next_offset: i64,
    /// Ids found on the output partitions at takeover, not to produce again
    /// (each dropped once produced or once the input moved past its record).
    suppressed: HashSet<String>,
    /// The marks the takeover read back from. While ids are suppressed,
    /// outputs of input records at or after `next_offset` lie above them,
    /// so a checkpoint keeps these marks instead of the high watermarks: a
    /// later takeover must read those outputs back too.
    read_back_from: BTreeMap<String, OutputMark>,
    records_since_checkpoint: u64,
    /// When the last checkpoint was written (unit clock).
    last_checkpoint: Duration,
    took_over_at: Instant,
    first_output_logged: bool,
    /// Since when reading the input fails (`None`: it does not).
    input_failing_since: Option<Instant>,
    /// Whether its lease lapsed and it waits for a renewal (see
    /// [`Unit::pause`]).
    paused: bool,
}

/// What a unit is doing; see the module docs. (One per unit, replaced at
/// role changes only: the variants' sizes do not matter.)
#[allow(clippy::large_enum_variant)]
enum Role {
    Passive {
        standby: Option<Standby>,
        /// Connections kept open while passive (`None` until opened, or
        /// after they failed).
        links: Option<Box<dyn UnitIo>>,
        /// When the standby is next refreshed (unit clock).
        next_refresh: Duration,
        /// The checkpoint watch's change count read before the last
        /// refresh that succeeded (`None`: none yet, or it failed).
        refreshed_at_change: Option<u64>,
    },
    Active(Active),
}

impl Role {
    /// Passive, refreshing its standby at once.
    fn passive(links: Option<Box<dyn UnitIo>>) -> Role {
        Role::Passive {
            standby: None,
            links,
            next_refresh: Duration::ZERO,
            refreshed_at_change: None,
        }
    }
}

/// What a unit waits for before its next [`step`](Unit::step). Between
/// steps a unit holds no thread: the host's worker pool
/// ([`super::worker_pool`]) runs its next step when the wait ends or the
/// unit is woken (see [`Unit::set_wake`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Step again at once (more input may be there).
    Now,
    /// Nothing to do until the lease changes past `seen` (its change count
    /// before the step looked at it) or `timeout` passed: a passive, or a
    /// leader whose lease lapsed.
    Lease { seen: u64, timeout: Duration },
    /// A leader whose input was empty: step again when a record arrives
    /// (the arrival wake is armed), the lease changes past `seen`, or
    /// `timeout` passed.
    Input { seen: u64, timeout: Duration },
    /// Pause `timeout` before trying again (reading the input failed).
    Backoff(Duration),
}

impl Next {
    /// The longest a runner waits before the next step (a wake may end the
    /// wait sooner).
    pub fn timeout(&self) -> Duration {
        match *self {
            Next::Now => Duration::ZERO,
            Next::Lease { timeout, .. } | Next::Input { timeout, .. } | Next::Backoff(timeout) => {
                timeout
            }
        }
    }
}

/// One unit; see the module docs.
pub struct Unit {
    id: UnitId,
    spec: ProcessorSpec,
    module: ProcessorModule,
    store: Arc<dyn KvStore>,
    settings: UnitSettings,
    /// The unit's lease, renewed by the host's elector while this lives.
    lease: Box<dyn Lease>,
    role: Role,
    /// Metrics and `/status` entry of the unit.
    admin: UnitAdmin,
    /// The linear memory of the unit's last instance (what a warm standby
    /// of it costs the budget), once measured.
    instance_bytes: Option<u64>,
    /// The unit's place in the host's checkpoint watch, if it has one.
    watched_checkpoint: Option<WatchedCheckpoint>,
    /// Wakes the unit when a record reaches its input while it waits for
    /// one (`None`: its runner does not wait between steps; see
    /// [`Unit::set_wake`]).
    arrival_wake: Option<Arc<ArmedWake>>,
}

impl Drop for Unit {
    fn drop(&mut self) {
        self.settings.standby_budget.release(&self.id.name());
    }
}

impl Unit {
    /// A unit of `spec` on input `partition`, acting while `lease` (its
    /// place in the host's elections, e.g.
    /// [`HostElector::join`](super::elector::HostElector::join)) says so.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        spec: ProcessorSpec,
        partition: i32,
        module: ProcessorModule,
        store: Arc<dyn KvStore>,
        settings: UnitSettings,
        lease: Box<dyn Lease>,
        admin: UnitAdmin,
    ) -> Self {
        let id = UnitId::new(&spec.name, partition);
        let watched_checkpoint = settings
            .checkpoint_watch
            .as_ref()
            .map(|watch| watch.watch(&id.name()));
        Unit {
            id,
            spec,
            module,
            store,
            settings,
            lease,
            role: Role::passive(None),
            admin,
            instance_bytes: None,
            watched_checkpoint,
            arrival_wake: None,
        }
    }

    /// Wake the unit through `wake` when what it waits for happens: its
    /// lease changes, or (while it leads and its input was empty) a record
    /// arrives. For a runner that holds no thread per unit.
    pub fn set_wake(&mut self, wake: Wake) {
        self.lease.on_change(wake.clone());
        let arrival = ArmedWake::new(wake);
        self.arrival_wake = Some(arrival.clone());
        let links = match &mut self.role {
            Role::Passive { links, .. } => links.as_mut(),
            Role::Active(active) => Some(&mut active.links),
        };
        if let Some(links) = links {
            links.input().set_arrival_wake(arrival);
        }
    }

    /// Wait as `next` says on the calling thread, for a runner that gives
    /// the unit a thread of its own and wakes it through nothing else (the
    /// simulator): lease waits in [`Lease::wait_for_change`], back-offs in
    /// the clock's sleep. An input wait returns at once: such a runner's
    /// reader delivers what it has when polled.
    pub fn wait_in_place(&self, next: Next) {
        match next {
            Next::Now | Next::Input { .. } => {}
            Next::Lease { seen, timeout } => self.lease.wait_for_change(seen, timeout),
            Next::Backoff(pause) => self.settings.clock.sleep(pause),
        }
    }

    /// One step of the role the unit is in: a batch while active (taking
    /// over first when the lease was just won), a standby refresh while
    /// passive; then what it waits for ([`Next`]). The host's worker pool
    /// calls it (through [`restarts::UnitJob`]); the simulator calls it
    /// directly. An error means the unit must be given up (crash-only):
    /// drop it, which releases the lease.
    ///
    /// A step waits on the broker only where the protocol must: the
    /// takeover, a flush of the batch's outputs, and a lingering batch
    /// (`batch.linger_ms`, once records are in hand). The pool runs other
    /// units meanwhile.
    pub fn step(&mut self) -> Result<Next> {
        // Test hook: FAILPOINTS=unit-panic=return(UNIT) makes that unit's
        // worker panic while it leads (the crash-only tests).
        #[cfg(feature = "failpoints")]
        if let Some(Some(target)) = fail::eval("unit-panic", |target| target) {
            if target == self.id.name() && self.is_active() {
                panic!(
                    "failpoint unit-panic: unit {} panics while leading",
                    self.id
                );
            }
        }
        // Read before the lease: a change after this wakes the standby's wait.
        let changes_seen = self.lease.changes();
        match self.lease.acting_epoch() {
            Some(epoch) if self.lease.step_down_asked(epoch) => {
                self.step_down(epoch);
                Ok(Next::Now)
            }
            Some(epoch) => self.lead(epoch, changes_seen),
            None => {
                if let Role::Active(active) = &self.role {
                    if self.lease.held_epoch() == Some(active.epoch) {
                        return Ok(self.pause(changes_seen));
                    }
                    tracing::info!("not (or no longer) the acting leader; going passive");
                    self.demote();
                }
                Ok(self.stand_by(changes_seen))
            }
        }
    }

    /// A leader whose lease lapsed (its last renewal too old to act on)
    /// while no round has seen another holder: it keeps its state, its
    /// position and its connections, acts on nothing, and waits. Every batch
    /// it took in was flushed and accounted before this step (a batch cut
    /// short by the lapse demotes instead, see `still_acting`), so if the
    /// next renewal commits at the same epoch — nobody claimed in between,
    /// so nobody acted — it goes on where it stopped, without a takeover.
    /// If another host claims, the round that sees it ends the held epoch
    /// and the unit demotes. Under load (a mass failover, a slow store) a
    /// missed renewal costs a pause, not a restore and a replay.
    fn pause(&mut self, changes_seen: u64) -> Next {
        if let Role::Active(active) = &mut self.role {
            if !active.paused {
                active.paused = true;
                self.admin.lease_lapsed();
                tracing::info!(
                    epoch = active.epoch,
                    "lease lapsed (renewal overdue); pausing until it is renewed or lost"
                );
            }
        }
        self.wait_for_lease_change(changes_seen)
    }

    /// Wait until the lease changes (`changes_seen`: its change count
    /// before it was looked at) or it is time to look again: a passive or
    /// paused unit starts acting as soon as its claim or renewal commits
    /// (the elector wakes it), not at the next poll.
    fn wait_for_lease_change(&self, changes_seen: u64) -> Next {
        Next::Lease {
            seen: changes_seen,
            timeout: self.settings.timing.heartbeat / STANDBY_WAKES_PER_HEARTBEAT,
        }
    }

    /// Whether the unit is active (it took over and has not demoted since).
    pub fn is_active(&self) -> bool {
        matches!(self.role, Role::Active(_))
    }

    /// Whether the unit is an active whose lease lapsed, waiting for a
    /// renewal (see [`pause`](Self::pause)).
    pub fn is_paused(&self) -> bool {
        matches!(&self.role, Role::Active(active) if active.paused)
    }

    /// Whether this host may still act for `epoch`.
    fn acting(&self, epoch: u64) -> bool {
        self.lease.acting_epoch() == Some(epoch)
    }

    /// One batch as leader (taking over first if needed).
    fn lead(&mut self, epoch: u64, changes_seen: u64) -> Result<Next> {
        if let Some(watched) = &self.watched_checkpoint {
            watched.set_following(false);
        }
        if !matches!(&self.role, Role::Active(active) if active.epoch == epoch) {
            self.take_over(epoch)?;
        }
        let Role::Active(active) = &mut self.role else {
            return Ok(Next::Now);
        };
        if active.paused {
            active.paused = false;
            tracing::info!(epoch, "lease renewed at the same epoch; acting again");
        }
        let batch_settings = self.spec.batch;
        // The first batch after a takeover takes what the standby's reader
        // prefetched without lingering for more: it is on the failover path.
        let linger = if active.first_output_logged {
            Duration::from_millis(batch_settings.linger_ms)
        } else {
            Duration::ZERO
        };
        let poll_started = Instant::now();
        // Armed before the look: a record that arrives after it wakes the
        // unit (see `pipeline::wake`).
        if let Some(arrival) = &self.arrival_wake {
            arrival.arm();
        }
        let polled = active.links.input().poll_batch(BatchLimits {
            max_records: batch_settings.max_records as usize,
            max_bytes: batch_settings.max_bytes as usize,
            wait: Duration::ZERO,
            linger,
        });
        // Nothing was taken in yet, so a failed read loses nothing: keep the
        // state and the epoch, and read again (librdkafka reconnects by
        // itself, e.g. while the broker restarts). Going passive would
        // restore and replay from the checkpoint for nothing.
        let mut records = match polled {
            Ok(records) => {
                if let Some(since) = active.input_failing_since.take() {
                    tracing::info!(after = ?since.elapsed(), "reading the input again");
                }
                records
            }
            Err(error) => {
                if active.input_failing_since.is_none() {
                    active.input_failing_since = Some(Instant::now());
                    tracing::warn!(
                        error = format!("{error:#}"),
                        "reading the input failed; retrying every {INPUT_RETRY_BACKOFF:?} while leading"
                    );
                }
                return Ok(Next::Backoff(INPUT_RETRY_BACKOFF));
            }
        };
        let polled_nothing = records.is_empty();
        // A reader restarted at an offset delivers nothing before it; this
        // guards the exactly-once accounting should it ever do so.
        records.retain(|r| r.offset >= active.next_offset);
        // Fence records (an upstream LogStream unit's takeovers, when the
        // input is another processor's output topic) carry no data: they
        // move the offset on, and nothing else.
        let read_up_to = records.last().map(|last| last.offset + 1);
        records.retain(|r| !is_fence_record(r));
        if records.is_empty() {
            if let Some(next) = read_up_to {
                active.next_offset = next;
            }
        }
        if let (Some(next), false) = (read_up_to, records.is_empty()) {
            let count = records.len() as u64;
            let first_offset = records[0].offset;
            // The supervisor keeps the records (its replay journal); the
            // dead letters need their bytes too.
            let kept = records.clone();
            let polled_at = Instant::now();
            let result = active.processor.process_batch(records)?;
            // A leader that knows it lost the lease drops the batch here.
            // (One paused past its lease after this check is refused by the
            // broker: the successor fenced its producer epoch.)
            if !self.still_acting(epoch) {
                return Ok(Next::Now);
            }
            let Role::Active(active) = &mut self.role else {
                unreachable!("still acting");
            };
            let sent = emit::emit(
                active,
                &self.id,
                &self.settings.deployment,
                &self.spec,
                &kept,
                &result,
            )?;
            let emitted_at = Instant::now();
            // A deliberately broken variant for the simulator
            // (`logstream-sim`), compiled in only with `failpoints` and armed
            // only by a test: the checkpoint written before the outputs are
            // acknowledged. The simulator must catch it.
            #[cfg(feature = "failpoints")]
            if fail::eval("checkpoint-before-flush", |_| ()).is_some() {
                if let Role::Active(active) = &mut self.role {
                    active.next_offset = next;
                }
                self.write_checkpoint(Instant::now())?;
            }
            // Sends the held outputs and waits for the acknowledgements.
            if !self.flushed()? {
                return Ok(Next::Now);
            }
            let Role::Active(active) = &mut self.role else {
                unreachable!("flushed");
            };
            active.next_offset = next;
            active.records_since_checkpoint += count;
            if !active.suppressed.is_empty() {
                // Ids of records before `next` can never be produced again.
                let (id, deployment) = (&self.id, &self.settings.deployment);
                active.suppressed.retain(|suppressed| {
                    id.input_offset_of(deployment, suppressed)
                        .is_none_or(|offset| offset >= next)
                });
            }
            self.admin.batch_done(BatchFigures {
                records_in: count,
                records_out: sent.outputs,
                dead_letters: sent.dead_letters,
                guest_failures: result.failures.len() as u64,
                elapsed: polled_at.elapsed(),
                next_offset: next,
                input_high_watermark: active.links.cached_input_high_watermark(),
            });
            if !active.first_output_logged {
                active.first_output_logged = true;
                self.admin.first_output(active.took_over_at.elapsed());
                tracing::info!(
                    "takeover phase first-output done in {:?} after takeover start (first batch of {count} records from offset {first_offset}: last poll {:?}, process and send {:?}, delivery {:?})",
                    active.took_over_at.elapsed(),
                    polled_at - poll_started,
                    emitted_at - polled_at,
                    emitted_at.elapsed(),
                );
            }
        }
        let Role::Active(active) = &self.role else {
            return Ok(Next::Now);
        };
        let since_checkpoint = self
            .settings
            .clock
            .now()
            .saturating_sub(active.last_checkpoint);
        let due = active.records_since_checkpoint >= self.settings.checkpoint_every_records
            || (active.records_since_checkpoint > 0
                && since_checkpoint >= self.settings.checkpoint_interval);
        if due {
            self.checkpoint()?;
        }
        if polled_nothing {
            // Woken by the next record (armed above) or a lease change; the
            // timeout only bounds how late an idle leader looks at its
            // checkpoint interval.
            return Ok(Next::Input {
                seen: changes_seen,
                timeout: self.settings.timing.heartbeat / 2,
            });
        }
        // A full batch leaves more behind; a partial one drained the queue,
        // but records may have arrived while it was processed: look again
        // either way (an empty look then waits).
        Ok(Next::Now)
    }

    /// Send the held outputs and wait for the broker; `false` (and passive)
    /// if the broker refused them because a newer leader fenced this one.
    fn flushed(&mut self) -> Result<bool> {
        let Role::Active(active) = &mut self.role else {
            return Ok(false);
        };
        match active.links.producer().flush() {
            Ok(()) => Ok(true),
            Err(ProduceError::Fenced { epoch, .. }) => {
                self.admin.batch_fenced();
                tracing::warn!(
                    producer_epoch = epoch,
                    "the broker refused our outputs (producer epoch fenced by a newer leader); dropping the batch and going passive"
                );
                self.demote();
                Ok(false)
            }
            Err(ProduceError::Other(error)) => Err(error.context("producing outputs")),
        }
    }

    /// Whether `epoch` is still the acting one; if not, go passive (the
    /// producer's held records are dropped).
    fn still_acting(&mut self, epoch: u64) -> bool {
        if self.acting(epoch) {
            return true;
        }
        tracing::warn!(
            epoch,
            "epoch {epoch} is no longer ours to act on; dropping the batch and going passive"
        );
        self.demote();
        false
    }

    /// Passive: keep the standby fresh and the connections reading, then
    /// sleep until the lease changes (`changes_seen`: the lease's change
    /// count before it was looked at) or it is time to read again.
    fn stand_by(&mut self, changes_seen: u64) -> Next {
        let now = self.settings.clock.now();
        let watched = self.watched_checkpoint.as_ref().map(|w| {
            w.set_following(true);
            w.changes()
        });
        let due = match &self.role {
            Role::Passive {
                next_refresh,
                standby,
                links,
                refreshed_at_change,
            } => {
                // With a watch, a warm standby with open connections has
                // nothing to read until its checkpoint moves; a cold one
                // keeps looking for room in the budget.
                let moved = watched.is_none()
                    || standby.is_none()
                    || links.is_none()
                    || *refreshed_at_change != watched;
                now >= *next_refresh && moved
            }
            Role::Active(_) => false,
        };
        if due {
            if let Role::Passive { next_refresh, .. } = &mut self.role {
                *next_refresh = now + self.settings.timing.heartbeat;
            }
            let refreshed = self.refresh_standby();
            if let Err(error) = &refreshed {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "refreshing the standby failed"
                );
            }
            if let Role::Passive {
                refreshed_at_change,
                ..
            } = &mut self.role
            {
                *refreshed_at_change = refreshed.ok().and(watched);
            }
        }
        let Role::Passive { links, .. } = &mut self.role else {
            return Next::Now;
        };
        if let Some(open) = links {
            if let Err(error) = open.follow() {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "reading the input ahead failed"
                );
                *links = None;
            }
        }
        self.wait_for_lease_change(changes_seen)
    }

    fn demote(&mut self) {
        // The active instance's state is ahead of the last checkpoint; the
        // standby is rebuilt from the store. The connections are kept and
        // put back at the checkpoint by the next standby refresh.
        if let Role::Active(active) = std::mem::replace(&mut self.role, Role::passive(None)) {
            let mut links = active.links;
            // Whatever it has not sent yet is not its to send any more.
            links.producer().abandon();
            self.role = Role::passive(Some(links));
            self.admin.went_passive();
        }
    }

    /// An operator's step-down of `epoch`: what [`Unit::hand_over`] does
    /// without stopping. Final checkpoint, release the leadership (the other
    /// hosts claim a released record at once), go passive. The election
    /// does not claim back its own released record before a lease has
    /// passed, which leaves the claim to another host if one is there.
    fn step_down(&mut self, epoch: u64) {
        tracing::info!(epoch, "stepping down from epoch {epoch} on request");
        if matches!(&self.role, Role::Active(active) if active.epoch == epoch) {
            if let Err(error) = self.checkpoint() {
                tracing::warn!(error = format!("{error:#}"), "final checkpoint failed");
            }
        }
        self.lease.release(Some(epoch));
        self.demote();
    }

    /// Graceful stop: final checkpoint, then release leadership at once.
    fn hand_over(&mut self) {
        if let Role::Active(active) = &self.role {
            if self.acting(active.epoch) {
                if let Err(error) = self.checkpoint() {
                    tracing::warn!(error = format!("{error:#}"), "final checkpoint failed");
                }
            }
        }
        self.lease.release(None);
    }
}

/// Whether checkpoint `meta` belongs to the state lineage of `spec` (one
/// that names no lineage is of the first).
fn in_lineage(meta: &CheckpointMeta, spec: &ProcessorSpec) -> bool {
    match Position::deployment_of(meta).0 {
        0 => spec.lineage == 1,
        lineage => lineage == spec.lineage,
    }
}

/// The position a unit of `spec` may act on in checkpoint `meta`: that of
/// its own state lineage, or the start when `meta` is of another (`None`
/// meta: the start too).
fn position_in_lineage(
    meta: Option<&CheckpointMeta>,
    spec: &ProcessorSpec,
    partition: i32,
) -> Result<Position> {
    match meta {
        Some(meta) if in_lineage(meta, spec) => Position::of(Some(meta), partition),
        _ => Ok(Position::default()),
    }
}
