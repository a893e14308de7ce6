//! One pipeline unit: a deployed processor on one input partition. Units
//! are what hosts elect a leader for, checkpoint and fail over: the unit's
//! name is `PROCESSOR/PARTITION`, its state is one processor instance's
//! state, its checkpoint records the partition's next offset.
//!
//! While it leads, a unit: polls a batch from its partition (bounded by the
//! spec's records, bytes and linger), runs it through the processor,
//! produces the outputs (and dead letters) with deterministic ids, waits for
//! the broker to acknowledge them, and every checkpoint interval or N
//! records checkpoints state + next offset + the output partitions' high
//! watermarks, fenced by its epoch. A checkpoint is therefore never ahead of
//! delivered outputs.
//!
//! While it does not lead, it is a hot standby: the module stays compiled
//! and an instance stays restored from the latest checkpoint, refreshed when
//! a new one lands.
//!
//! On takeover it restores the last checkpoint (only if the standby does not
//! already hold it), fences the previous leader's producer at the broker
//! (see [`super::fenced`]), reads back the ids the output partitions
//! received since the checkpoint's marks, seeks the input to the
//! checkpointed offset, and replays, suppressing outputs that already
//! reached the topic (guarantee 2 without Kafka transactions).
//!
//! Output ids: `PROCESSOR/PARTITION/OFFSET/INDEX` for outputs and
//! `PROCESSOR/PARTITION/OFFSET/dlq` for dead letters, in the `logstream-id`
//! header.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::fenced::ProduceError;
use super::kafka::Outgoing;
use super::links::{Position, UnitLinks, DLQ_MARK, OUTPUT_MARK};
use crate::admin::{BatchFigures, UnitAdmin};
use crate::record::LogRecord;
use crate::store::checkpoint::{self, CheckpointError, Fence};
use crate::store::clock::{Clock, SystemClock};
use crate::store::election::{self, Election, ElectionEvent, ElectionTiming};
use crate::store::registry::ProcessorSpec;
use crate::store::{KvStore, RetryPolicy};
use crate::wasm::bindings::Header;
use crate::wasm::{ProcessedBatch, ProcessorModule, RecoveryPolicy, SupervisedProcessor};

/// Header of a dead letter carrying the reason.
pub const ERROR_HEADER: &str = "logstream-error";
/// Longest reason a dead letter carries, in bytes: a processor's rejection
/// reason is its own string, and an unbounded one could make the dead
/// letter too large for the broker (the partition would stop there).
pub const MAX_DEAD_LETTER_REASON_BYTES: usize = 4096;
/// How many times per heartbeat a passive unit reads the leader record:
/// the delay between a graceful release and the claim is at most
/// heartbeat / this. (Expiry is judged on elapsed time, not on the number
/// of observations, so this does not shorten the lease.)
const PASSIVE_OBSERVATIONS_PER_HEARTBEAT: u32 = 4;
/// Pause before reading the input again after a failed read (the broker
/// unreachable, say), while leading.
const INPUT_RETRY_BACKOFF: Duration = Duration::from_millis(100);
/// How often a passive unit checks whether it became the leader (it follows
/// the output tail meanwhile).
const STANDBY_POLL: Duration = Duration::from_millis(5);

/// How units run; shared by all units of a host.
#[derive(Debug, Clone)]
pub struct UnitSettings {
    pub brokers: String,
    pub host_id: String,
    pub incarnation: String,
    pub timing: ElectionTiming,
    /// Checkpoint at least this often while records flow.
    pub checkpoint_interval: Duration,
    /// ... and after this many records.
    pub checkpoint_every_records: u64,
}

/// The dead-letter topic of a processor.
pub fn dlq_topic(processor: &str) -> String {
    format!("{processor}.dlq")
}

/// The unit name (election and checkpoint key) of a processor partition.
pub fn unit_name(processor: &str, partition: i32) -> String {
    format!("{processor}/{partition}")
}

struct Active {
    epoch: u64,
    processor: SupervisedProcessor,
    links: UnitLinks,
    next_offset: Option<i64>,
    suppressed: HashSet<String>,
    records_since_checkpoint: u64,
    last_checkpoint: Instant,
    took_over_at: Instant,
    first_output_logged: bool,
    /// Since when reading the input fails (`None`: it does not).
    input_failing_since: Option<Instant>,
}

struct Standby {
    generation: Option<u64>,
    processor: SupervisedProcessor,
}

/// One unit's loop.
pub struct Unit {
    spec: ProcessorSpec,
    partition: i32,
    name: String,
    module: ProcessorModule,
    store: Arc<dyn KvStore>,
    settings: UnitSettings,
    policy: RetryPolicy,
    /// Shared with the unit's elector thread, which renews the lease every
    /// heartbeat whatever the worker is doing (a slow takeover or flush must
    /// not cost the lease).
    election: Arc<Mutex<Election>>,
    clock: SystemClock,
    /// Partition counts of extra output topics (records a processor sends
    /// to a topic of its choosing).
    output_partitions: HashMap<String, i32>,
    standby: Option<Standby>,
    /// Connections kept open while passive.
    links: Option<UnitLinks>,
    active: Option<Active>,
    /// Metrics and `/status` entry of the unit.
    admin: UnitAdmin,
}

impl Unit {
    pub fn new(
        spec: ProcessorSpec,
        partition: i32,
        module: ProcessorModule,
        store: Arc<dyn KvStore>,
        settings: UnitSettings,
        admin: UnitAdmin,
    ) -> Self {
        let name = unit_name(&spec.name, partition);
        let election = Arc::new(Mutex::new(Election::new(
            &settings.host_id,
            &settings.incarnation,
            settings.timing,
        )));
        let policy = RetryPolicy {
            max_elapsed: settings.timing.heartbeat,
            ..RetryPolicy::default()
        };
        Unit {
            spec,
            partition,
            name,
            module,
            store,
            settings,
            policy,
            election,
            clock: SystemClock::default(),
            output_partitions: HashMap::new(),
            standby: None,
            links: None,
            active: None,
            admin,
        }
    }

    /// Run until `stop` is set; then hand over (final checkpoint, step down).
    pub fn run(mut self, stop: Arc<AtomicBool>) {
        let span = tracing::info_span!("unit", unit = %self.name);
        let _entered = span.enter();
        let elector_stop = Arc::new(AtomicBool::new(false));
        // The epoch an operator asked to hand over (`logstream step-down`),
        // seen by the elector in the leader record it reads every round
        // anyway; 0 when none (epochs start at 1).
        let step_down_asked = Arc::new(AtomicU64::new(0));
        let elector = {
            let asked = step_down_asked.clone();
            let (store, policy, election, name, clock, stop) = (
                self.store.clone(),
                self.policy.clone(),
                self.election.clone(),
                self.name.clone(),
                self.clock.clone(),
                elector_stop.clone(),
            );
            let heartbeat = self.settings.timing.heartbeat;
            std::thread::Builder::new()
                .name(format!("elect-{}", self.name))
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let started = clock.now();
                        if let Some(epoch) =
                            election_round(store.as_ref(), &policy, &election, &name, started)
                        {
                            asked.store(epoch, Ordering::Relaxed);
                        }
                        // A leader renews once per heartbeat; a passive
                        // looks more often, so a released lease (graceful
                        // handover) is claimed within a fraction of one.
                        let leading = election
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .held_epoch()
                            .is_some();
                        let period = if leading {
                            heartbeat
                        } else {
                            heartbeat / PASSIVE_OBSERVATIONS_PER_HEARTBEAT
                        };
                        // Parked, so a handover wakes it at once (`unpark`).
                        std::thread::park_timeout(period.saturating_sub(clock.now() - started));
                    }
                })
                .expect("starting an elector thread")
        };
        let mut next_standby_refresh = Duration::ZERO;
        while !stop.load(Ordering::Relaxed) {
            match self.acting_epoch() {
                Some(epoch) if step_down_asked.load(Ordering::Relaxed) == epoch => {
                    self.step_down(epoch);
                    step_down_asked.store(0, Ordering::Relaxed);
                }
                Some(epoch) => {
                    if let Err(error) = self.lead(epoch) {
                        tracing::error!(
                            "unit {} failed while leading: {error:#}; stepping back",
                            self.name
                        );
                        self.demote();
                        std::thread::sleep(self.settings.timing.heartbeat);
                    }
                }
                None => {
                    if self.active.is_some() {
                        tracing::info!(
                            "unit {}: not (or no longer) the acting leader; going passive",
                            self.name
                        );
                        self.demote();
                    }
                    if self.clock.now() >= next_standby_refresh {
                        next_standby_refresh = self.clock.now() + self.settings.timing.heartbeat;
                        if let Err(error) = self.refresh_standby() {
                            tracing::warn!("refreshing the standby failed: {error:#}");
                        }
                    }
                    // Poll for leadership often: takeover latency is this
                    // pause plus the lease. Meanwhile follow the outputs.
                    match self.links.as_mut() {
                        Some(links) => {
                            if let Err(error) = links.follow(STANDBY_POLL) {
                                tracing::warn!("following the output tail failed: {error:#}");
                                self.links = None;
                                std::thread::sleep(STANDBY_POLL);
                            }
                        }
                        None => std::thread::sleep(STANDBY_POLL),
                    }
                }
            }
        }
        self.hand_over(elector_stop, elector);
    }

    fn acting_epoch(&self) -> Option<u64> {
        let election = self.election.lock().unwrap_or_else(|p| p.into_inner());
        election.acting_epoch(self.clock.now())
    }

    /// One batch as leader (taking over first if needed).
    fn lead(&mut self, epoch: u64) -> Result<()> {
        if self.active.as_ref().is_none_or(|a| a.epoch != epoch) {
            self.take_over(epoch)?;
        }
        let batch_settings = self.spec.batch;
        let wait = self.settings.timing.heartbeat / 2;
        let active = self.active.as_mut().expect("just taken over");
        // The first batch after a takeover takes what the standby's reader
        // prefetched without lingering for more: it is on the failover path.
        let linger = if active.first_output_logged {
            Duration::from_millis(batch_settings.linger_ms)
        } else {
            Duration::ZERO
        };
        let poll_started = Instant::now();
        let polled = active.links.input.poll_batch(
            batch_settings.max_records as usize,
            batch_settings.max_bytes as usize,
            wait,
            linger,
        );
        // Nothing was taken in yet, so a failed read loses nothing: keep the
        // state and the epoch, and read again (librdkafka reconnects by
        // itself, e.g. while the broker restarts). Going passive would
        // restore and replay from the checkpoint for nothing.
        let mut records = match polled {
            Ok(records) => {
                if let Some(since) = active.input_failing_since.take() {
                    tracing::info!(
                        "unit {}: reading the input again after {:?}",
                        self.name,
                        since.elapsed()
                    );
                }
                records
            }
            Err(error) => {
                if active.input_failing_since.is_none() {
                    active.input_failing_since = Some(Instant::now());
                    tracing::warn!(
                        "unit {}: reading the input failed: {error:#}; retrying every {INPUT_RETRY_BACKOFF:?} while leading",
                        self.name
                    );
                }
                std::thread::sleep(INPUT_RETRY_BACKOFF);
                return Ok(());
            }
        };
        // A reader restarted at an offset delivers nothing before it; this
        // guards the exactly-once accounting should it ever do so.
        if let Some(next) = active.next_offset {
            records.retain(|r| r.offset >= next);
        }
        if let Some(last) = records.last() {
            let next = last.offset + 1;
            let count = records.len() as u64;
            // The supervisor keeps the records (its replay journal); the
            // dead letters need their bytes too.
            let kept = records.clone();
            let polled_at = Instant::now();
            let result = active.processor.process_batch(records)?;
            // A leader that knows it lost the lease drops the batch here.
            // (One paused past its lease after this check is refused by the
            // broker: the successor fenced its producer epoch.)
            if !self.still_acting(epoch) {
                return Ok(());
            }
            let (records_out, dead_letters) = self.emit(&kept, &result)?;
            let emitted_at = Instant::now();
            // Sends the held outputs and waits for the acknowledgements.
            if !self.flushed()? {
                return Ok(());
            }
            let active = self.active.as_mut().expect("still active");
            active.next_offset = Some(next);
            active.records_since_checkpoint += count;
            self.admin.batch_done(BatchFigures {
                records_in: count,
                records_out,
                dead_letters,
                guest_failures: result.failures.len() as u64,
                elapsed: polled_at.elapsed(),
                next_offset: next,
                input_high_watermark: active.links.input.cached_high_watermark(),
            });
            if !active.first_output_logged {
                active.first_output_logged = true;
                tracing::info!(
                    "unit {}: takeover phase first-output done in {:?} after takeover start (first batch of {count} records from offset {}: last poll {:?}, process and send {:?}, delivery {:?})",
                    self.name,
                    active.took_over_at.elapsed(),
                    kept[0].offset,
                    polled_at - poll_started,
                    emitted_at - polled_at,
                    emitted_at.elapsed(),
                );
            }
        }
        let active = self.active.as_ref().expect("still active");
        let due = active.records_since_checkpoint >= self.settings.checkpoint_every_records
            || (active.records_since_checkpoint > 0
                && active.last_checkpoint.elapsed() >= self.settings.checkpoint_interval);
        if due {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// Send the held outputs and wait for the broker; `false` (and passive)
    /// if the broker refused them because a newer leader fenced this one.
    fn flushed(&mut self) -> Result<bool> {
        let active = self.active.as_mut().expect("active");
        match active.links.producer.flush() {
            Ok(()) => Ok(true),
            Err(ProduceError::Fenced { epoch, .. }) => {
                self.admin.batch_fenced();
                tracing::warn!(
                    "unit {}: the broker refused our outputs (producer epoch {epoch} fenced by a newer leader); dropping the batch and going passive",
                    self.name
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
        if self.acting_epoch() == Some(epoch) {
            return true;
        }
        tracing::warn!(
            "unit {}: epoch {epoch} is no longer ours to act on; dropping the batch and going passive",
            self.name
        );
        self.demote();
        false
    }

    /// The partition of `topic` the outputs of this unit go to.
    fn output_partition(&mut self, topic: &str) -> Result<i32> {
        let active = self.active.as_mut().expect("active");
        let outputs = &active.links.outputs;
        if topic == outputs.output_topic {
            return Ok(outputs.output_partition);
        }
        if topic == outputs.dlq_topic {
            return Ok(outputs.dlq_partition);
        }
        if let Some(count) = self.output_partitions.get(topic) {
            return Ok(self.partition % count);
        }
        let count = active.links.producer.partition_count(topic)?.max(1);
        self.output_partitions.insert(topic.to_string(), count);
        Ok(self.partition % count)
    }

    /// Produce a batch's outputs and dead letters, skipping suppressed ids;
    /// how many of each were sent.
    fn emit(&mut self, sources: &[LogRecord], result: &ProcessedBatch) -> Result<(u64, u64)> {
        let output_topic = self.spec.output_topic.clone();
        let dlq = dlq_topic(&self.spec.name);
        let dlq_partition = self.output_partition(&dlq)?;
        let mut index_of: HashMap<u32, u32> = HashMap::new();
        let mut targets = Vec::with_capacity(result.outputs.len());
        for output in &result.outputs {
            let topic = output.topic.clone().unwrap_or_else(|| output_topic.clone());
            let partition = self.output_partition(&topic)?;
            targets.push((topic, partition));
        }
        let active = self.active.as_mut().expect("active");
        let (mut outputs_sent, mut dead_letters_sent) = (0, 0);
        for (output, (topic, partition)) in result.outputs.iter().zip(&targets) {
            let source = &sources[output.input_index as usize];
            let index = index_of.entry(output.input_index).or_insert(0);
            let id = format!("{}/{}/{}", self.name, source.offset, index);
            *index += 1;
            if active.suppressed.remove(&id) {
                continue;
            }
            active.links.producer.send(&Outgoing {
                topic,
                partition: *partition,
                key: output.key.as_deref(),
                value: &output.value,
                headers: &output.headers,
                id: Some(&id),
            })?;
            outputs_sent += 1;
        }
        // Dead letters in input order, whichever way each record failed.
        let mut refusals: Vec<(u32, String)> = result
            .rejections
            .iter()
            .map(|r| (r.input_index, format!("rejected: {}", r.reason)))
            .chain(
                result
                    .failures
                    .iter()
                    .map(|f| (f.input_index, format!("failed: {}", f.error))),
            )
            .collect();
        refusals.sort_by_key(|(input_index, _)| *input_index);
        for (input_index, reason) in refusals {
            let source = &sources[input_index as usize];
            let id = format!("{}/{}/dlq", self.name, source.offset);
            if active.suppressed.remove(&id) {
                continue;
            }
            let mut headers = source.headers.clone();
            headers.push(Header {
                key: ERROR_HEADER.to_string(),
                value: bounded_reason(reason).into_bytes(),
            });
            active.links.producer.send(&Outgoing {
                topic: &dlq,
                partition: dlq_partition,
                key: source.key.as_deref(),
                value: &source.value,
                headers: &headers,
                id: Some(&id),
            })?;
            dead_letters_sent += 1;
        }
        Ok((outputs_sent, dead_letters_sent))
    }

    fn checkpoint(&mut self) -> Result<()> {
        let active = self.active.as_mut().expect("active");
        let Some(next_offset) = active.next_offset else {
            return Ok(());
        };
        let started = Instant::now();
        // Everything produced so far must be acknowledged before the
        // checkpoint records the input as done (each batch is, this keeps it
        // true on every path); then these watermarks bound what the outputs
        // since hold.
        if !self.flushed()? {
            return Ok(());
        }
        let active = self.active.as_mut().expect("active");
        let outputs = &active.links.outputs;
        let producer = &mut active.links.producer;
        let highs = producer
            .high_watermark(&outputs.output_topic, outputs.output_partition)
            .and_then(|output| {
                let dlq = producer.high_watermark(&outputs.dlq_topic, outputs.dlq_partition)?;
                Ok((output, dlq))
            });
        // Read before the snapshot, so a postponed checkpoint costs no
        // snapshot (nothing is produced in between either way).
        let (output_high, dlq_high) = match highs {
            Ok(highs) => highs,
            // The broker is unreachable (restarting, say): everything is
            // delivered, so the checkpoint can wait for the next interval;
            // a takeover meanwhile replays a little more.
            Err(error) => {
                tracing::warn!(
                    "unit {}: checkpoint postponed, the output watermarks are unreadable: {error:#}",
                    self.name
                );
                active.last_checkpoint = Instant::now();
                return Ok(());
            }
        };
        let state = active.processor.snapshot()?;
        let state_version = active.processor.state_version()?;
        let marks = BTreeMap::from([
            (OUTPUT_MARK.to_string(), output_high.to_string()),
            (DLQ_MARK.to_string(), dlq_high.to_string()),
        ]);
        let offsets = BTreeMap::from([(self.partition, next_offset)]);
        let fence = Fence::new(self.name.clone(), active.epoch);
        match checkpoint::write_checkpoint(
            self.store.as_ref(),
            &fence,
            &state,
            state_version,
            offsets,
            marks,
        ) {
            Ok(meta) => {
                tracing::debug!(
                    "unit {}: checkpoint generation {} ({} bytes, next offset {next_offset}) in {:?}",
                    self.name,
                    meta.generation,
                    meta.size_bytes,
                    started.elapsed()
                );
                active.records_since_checkpoint = 0;
                active.last_checkpoint = Instant::now();
                self.admin.checkpointed(&meta, started.elapsed());
                Ok(())
            }
            Err(CheckpointError::Fenced { .. }) => {
                tracing::warn!(
                    "unit {}: checkpoint fenced off at epoch {}; going passive",
                    self.name,
                    active.epoch
                );
                self.demote();
                Ok(())
            }
            Err(error) => Err(error).context("writing a checkpoint"),
        }
    }

    fn take_over(&mut self, epoch: u64) -> Result<()> {
        let started = Instant::now();
        tracing::info!("unit {}: taking over at epoch {epoch}", self.name);
        // Read only the metadata first: when the warm standby already holds
        // the generation a restore would use (the current one, or the newest
        // this unit has not found unusable), its state need not be read again.
        let kept = checkpoint::read_kept(self.store.as_ref(), &self.name)?;
        let candidate =
            checkpoint::newest_candidate(&kept, |g| self.admin.found_unusable(g)).cloned();
        let restore_started = Instant::now();
        let (meta, processor) = match self.standby.take() {
            Some(standby) if kept.is_empty() && standby.generation.is_none() => {
                (None, standby.processor)
            }
            Some(standby)
                if candidate.is_some()
                    && standby.generation == candidate.as_ref().map(|m| m.generation) =>
            {
                (candidate, standby.processor)
            }
            _ => self.start_processor()?,
        };
        let generation = meta.as_ref().map(|m| m.generation);
        let restored_in = restore_started.elapsed();
        let position = Position::of(meta.as_ref(), self.partition);
        let seek_started = Instant::now();
        let warm_links = self.links.is_some();
        let mut links = self.links_at(position)?;
        links.input_from(position)?;
        let suppressed = links.fence_and_read_back()?;
        links.start_leading()?;
        tracing::info!(
            "unit {}: takeover phases: restore {:?} (generation {generation:?}), fence, read-back and seek {:?} ({} outputs to suppress, connections {}), next offset {:?}",
            self.name,
            restored_in,
            seek_started.elapsed(),
            suppressed.len(),
            if warm_links { "kept from standby" } else { "opened" },
            position.next_offset,
        );
        self.active = Some(Active {
            epoch,
            processor,
            links,
            next_offset: position.next_offset,
            suppressed,
            records_since_checkpoint: 0,
            last_checkpoint: Instant::now(),
            took_over_at: started,
            first_output_logged: false,
            input_failing_since: None,
        });
        self.admin.took_over(epoch, position.next_offset);
        Ok(())
    }

    /// The unit's connections put at `position`: the standby's if it has
    /// them, new ones otherwise.
    fn links_at(&mut self, position: Position) -> Result<UnitLinks> {
        match self.links.take() {
            Some(mut links) => {
                links.rebase(position)?;
                Ok(links)
            }
            None => UnitLinks::open(
                &self.settings.brokers,
                &self.spec,
                &self.name,
                self.partition,
                position,
            ),
        }
    }

    /// A fresh instance restored from the newest usable checkpoint, with that
    /// checkpoint's metadata (`None`: no checkpoint yet, empty state).
    ///
    /// A kept generation that is corrupt, or whose state the processor's
    /// restore refuses, is skipped for the next older one. That keeps
    /// exactly-once: the metadata returned is the generation actually
    /// restored, so the takeover replays from *its* offsets and suppresses
    /// the outputs found since *its* marks. Each skipped generation is logged
    /// (by the checkpoint layer), and the first time this unit finds it,
    /// counted, listed in `/status` and stored for `logstream status`.
    fn start_processor(&self) -> Result<(Option<checkpoint::CheckpointMeta>, SupervisedProcessor)> {
        let start = |state: Option<Vec<u8>>| {
            SupervisedProcessor::start_from(
                &self.name,
                self.module.clone(),
                &self.spec.config,
                RecoveryPolicy::default(),
                state,
            )
        };
        let restored = checkpoint::restore_newest(
            self.store.as_ref(),
            &RetryPolicy::default(),
            &self.name,
            |_, state| {
                start(Some(state)).map_err(|error| match error {
                    // The state's fault (refused, or the guest failed on
                    // it): an older generation may do.
                    crate::wasm::SupervisorError::Restore { .. } => {
                        checkpoint::RestoreFailure::Refused(error.to_string())
                    }
                    // Not the state's (instantiation, configuration): no
                    // generation would do better.
                    other => checkpoint::RestoreFailure::Failed(other),
                })
            },
        );
        let report = |unusable: &[checkpoint::UnusableGeneration]| {
            for found in unusable
                .iter()
                .filter(|f| self.admin.unusable_checkpoint(f))
            {
                let report = checkpoint::UnusableReport::new(
                    found,
                    &self.settings.host_id,
                    Some(&self.spec.module_sha256),
                );
                if let Err(error) =
                    checkpoint::report_unusable(self.store.as_ref(), &self.name, &report)
                {
                    tracing::warn!(
                        "unit {}: could not store the report that checkpoint {found}: {error}",
                        self.name
                    );
                }
            }
        };
        let context = || format!("starting processor {}", self.name);
        match restored {
            Ok(Some(restored)) => {
                report(&restored.unusable);
                Ok((Some(restored.meta), restored.value))
            }
            Ok(None) => Ok((None, start(None).with_context(context)?)),
            Err(checkpoint::RestoreError::Checkpoint(error)) => {
                if let CheckpointError::Unusable { unusable, .. } = &error {
                    report(unusable);
                }
                Err(error).with_context(context)
            }
            Err(checkpoint::RestoreError::Failed(error)) => Err(error).with_context(context),
        }
    }

    /// Keep a warm instance and the connections at the latest checkpoint.
    fn refresh_standby(&mut self) -> Result<()> {
        let kept = checkpoint::read_kept(self.store.as_ref(), &self.name)?;
        // The generation a restore would use, as far as this unit knows: the
        // newest intact one it has not found unusable before — so a corrupt
        // or refused generation is not read (and reported) again every
        // heartbeat while it stays current.
        let candidate = checkpoint::newest_candidate(&kept, |g| self.admin.found_unusable(g));
        let fresh = self.standby.as_ref().is_some_and(|s| match candidate {
            Some(meta) => s.generation == Some(meta.generation),
            None => kept.is_empty() && s.generation.is_none(),
        });
        let meta = if fresh {
            candidate.cloned()
        } else {
            // The restore may find a newer generation than the metadata read
            // did, or fall back past unusable ones; the connections follow
            // the one restored.
            let (meta, processor) = self.start_processor()?;
            self.standby = Some(Standby {
                generation: meta.as_ref().map(|m| m.generation),
                processor,
            });
            meta
        };
        if let Some(meta) = &meta {
            self.admin.standby_at(meta);
        }
        // A no-op when the connections are already at this checkpoint.
        let links = self.links_at(Position::of(meta.as_ref(), self.partition))?;
        self.links = Some(links);
        Ok(())
    }

    fn demote(&mut self) {
        // The active instance's state is ahead of the last checkpoint; the
        // standby is rebuilt from the store. The connections are kept and
        // put back at the checkpoint by the next standby refresh.
        if let Some(mut active) = self.active.take() {
            // Whatever it has not sent yet is not its to send any more.
            active.links.producer.abandon();
            self.links = Some(active.links);
            self.admin.went_passive();
        }
    }

    /// An operator's step-down of `epoch`: what [`Unit::hand_over`] does
    /// without stopping. Final checkpoint, release the leadership (the other
    /// hosts claim a released record at once), go passive. The election
    /// does not claim back its own released record before a lease has
    /// passed, which leaves the claim to another host if one is there.
    fn step_down(&mut self, epoch: u64) {
        tracing::info!(
            "unit {}: stepping down from epoch {epoch} on request",
            self.name
        );
        if self.active.as_ref().is_some_and(|a| a.epoch == epoch) {
            if let Err(error) = self.checkpoint() {
                tracing::warn!("unit {}: final checkpoint failed: {error:#}", self.name);
            }
        }
        // Should this round fail, the elector's next one releases (the
        // request stays set in the election until a release commits).
        self.release(Some(epoch));
        self.demote();
    }

    /// Release the held epoch (`only`: if it is that one) in one election
    /// round now.
    fn release(&mut self, only: Option<u64>) {
        let held = {
            let mut election = self.election.lock().unwrap_or_else(|p| p.into_inner());
            let held = election
                .held_epoch()
                .is_some_and(|h| only.is_none_or(|o| o == h));
            if held {
                election.request_step_down();
            }
            held
        };
        if held {
            election_round(
                self.store.as_ref(),
                &self.policy,
                &self.election,
                &self.name,
                self.clock.now(),
            );
        }
    }

    /// Graceful stop: final checkpoint, then release leadership at once.
    fn hand_over(&mut self, elector_stop: Arc<AtomicBool>, elector: std::thread::JoinHandle<()>) {
        if self.active.is_some() && self.acting_epoch().is_some() {
            if let Err(error) = self.checkpoint() {
                tracing::warn!("unit {}: final checkpoint failed: {error:#}", self.name);
            }
        }
        elector_stop.store(true, Ordering::Relaxed);
        elector.thread().unpark();
        let _ = elector.join();
        self.release(None);
    }
}

/// `reason` cut to [`MAX_DEAD_LETTER_REASON_BYTES`] (at a character
/// boundary, saying how much was cut).
fn bounded_reason(reason: String) -> String {
    if reason.len() <= MAX_DEAD_LETTER_REASON_BYTES {
        return reason;
    }
    let mut end = MAX_DEAD_LETTER_REASON_BYTES;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes cut)", &reason[..end], reason.len() - end)
}

/// One election round for `unit`, logging role changes. Returns the epoch
/// an operator asked to step down from when it is the one this contender
/// holds.
fn election_round(
    store: &dyn KvStore,
    policy: &RetryPolicy,
    election: &Mutex<Election>,
    unit: &str,
    now: Duration,
) -> Option<u64> {
    let mut election = election.lock().unwrap_or_else(|p| p.into_inner());
    match election::step(store, policy, &mut election, unit, now, false) {
        Ok(outcome) => {
            log_event(unit, outcome.event);
            outcome
                .record
                .filter(|r| r.step_down_requested() && r.holder == election.incarnation())
                .map(|r| r.epoch)
                .filter(|epoch| election.held_epoch() == Some(*epoch))
        }
        Err(error) => {
            tracing::warn!("unit {unit}: election round failed: {error}");
            None
        }
    }
}

fn log_event(unit: &str, event: Option<ElectionEvent>) {
    match event {
        Some(ElectionEvent::BecameLeader { epoch }) => {
            // The wall-clock field lets benchmarks on one machine time
            // the takeover from the claim.
            tracing::info!(
                epoch,
                claimed_at_unix_ms = crate::probe::unix_micros() / 1000,
                "unit {unit}: became leader at epoch {epoch}"
            )
        }
        Some(ElectionEvent::Fenced { epoch, by_epoch }) => {
            tracing::warn!("unit {unit}: fenced at epoch {epoch} by epoch {by_epoch}; now passive")
        }
        Some(ElectionEvent::SteppedDown { epoch }) => {
            tracing::info!("unit {unit}: stepped down from epoch {epoch}")
        }
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_reason_is_cut_at_a_character_boundary() {
        assert_eq!(bounded_reason("short".into()), "short");
        let long = "é".repeat(MAX_DEAD_LETTER_REASON_BYTES);
        let cut = bounded_reason(long.clone());
        assert!(
            cut.len() < MAX_DEAD_LETTER_REASON_BYTES + 40,
            "{}",
            cut.len()
        );
        assert!(cut.ends_with(&format!(
            "… ({} bytes cut)",
            long.len() - MAX_DEAD_LETTER_REASON_BYTES
        )));
    }
}
