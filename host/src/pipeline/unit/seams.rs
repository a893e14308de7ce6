//! The unit's seams: everything a [`Unit`](super::Unit) does outside its own
//! memory goes through one of these traits, so the same protocol code runs
//! over the host's real clients in production and over simulated ones in
//! the deterministic simulator (`logstream-sim`, issue 13).
//!
//! - [`UnitClock`]: the time its decisions read (when a checkpoint is due,
//!   when the standby is refreshed) and its pauses;
//! - [`Lease`]: its place in the host's elections (the acting epoch, the
//!   waits for a change, releases);
//! - [`UnitIoFactory`] and [`UnitIo`]: its broker connections — the input
//!   reader ([`InputReader`]), the fenced producer ([`OutputProducer`]) and
//!   the tail of the partitions it writes;
//! - the store is the host's [`KvStore`](crate::store::KvStore) contract,
//!   already a trait; the processor is the wasm runtime's
//!   [`SupervisedProcessor`](crate::wasm::SupervisedProcessor), which a
//!   simulation runs as it is.
//!
//! The production implementations are the host's own types
//! ([`SystemClock`], [`UnitLease`], [`SharedIo`], [`UnitLinks`],
//! [`UnitInput`], [`FencedProducer`]); each trait method is that type's
//! method of the same name, documented there. The traits add no behaviour:
//! what a method guarantees is what the production type guarantees, and a
//! simulated implementation must keep the same contract (the simulator's
//! models cite the systems whose semantics they follow).
//!
//! The calls block while they talk to the broker or the store; the waits
//! between steps are the runner's ([`Next`](super::Next)): the host's
//! worker pool wakes a unit through [`Lease::on_change`] and
//! [`InputReader::set_arrival_wake`], a simulation waits in place
//! ([`Unit::wait_in_place`](super::Unit::wait_in_place)). A simulation runs
//! each simulated unit on a thread of its own and decides which one runs
//! next at every call through a seam, so it interleaves units at every I/O
//! step, not only between batches. Wall-clock durations that only reach logs and metrics
//! (phase timings) are not read through the clock: they decide nothing.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;

use crate::pipeline::elector::UnitLease;
use crate::pipeline::fenced::{FencedProducer, ProduceError, TopicPartition};
use crate::pipeline::input::UnitInput;
use crate::pipeline::kafka::{BatchLimits, Outgoing};
use crate::pipeline::links::UnitLinks;
use crate::pipeline::position::{OutputMark, Position};
use crate::pipeline::record_batch::ProducerIdentity;
use crate::pipeline::shared_io::SharedIo;
use crate::pipeline::wake::{ArmedWake, Wake};
use crate::record::LogRecord;
use crate::store::clock::{Clock, ManualClock, SystemClock};
use crate::store::registry::ProcessorSpec;

/// The unit's time: [`Clock::now`] for its decisions, and its pauses.
pub trait UnitClock: Clock + std::fmt::Debug {
    /// Pause the calling unit for `duration` (of this clock).
    fn sleep(&self, duration: Duration);
}

impl UnitClock for SystemClock {
    fn sleep(&self, duration: Duration) {
        std::thread::sleep(duration);
    }
}

/// A clock that moves only when told to: sleeping moves it.
impl UnitClock for ManualClock {
    fn sleep(&self, duration: Duration) {
        self.advance(duration);
    }
}

/// A unit's lease in its host's elections; see [`UnitLease`]. Dropping it
/// leaves the elections and releases a held epoch.
pub trait Lease: Send {
    /// The epoch this host may act for now, if any.
    fn acting_epoch(&self) -> Option<u64>;
    /// The epoch this host holds, acting or not: its last renewal may be
    /// too old to act on, but no round has seen another holder. While a
    /// held epoch lasts nobody else can have acted, so a leader that lost
    /// its acting status only pauses.
    fn held_epoch(&self) -> Option<u64>;
    /// How many election rounds changed what the unit should do so far.
    fn changes(&self) -> u64;
    /// Wait until the change count passes `seen`, or `timeout` passed.
    fn wait_for_change(&self, seen: u64, timeout: Duration);
    /// Whether an operator asked the holder of `epoch` to step down.
    fn step_down_asked(&self, epoch: u64) -> bool;
    /// Release the held epoch (`only`: if it is that one).
    fn release(&self, only: Option<u64>);
    /// Call `wake` after every change (as [`wait_for_change`](Self::wait_for_change)
    /// would return): a unit that holds no thread while it waits. Leases
    /// whose units wait in `wait_for_change` need not.
    fn on_change(&self, _wake: Wake) {}
}

impl Lease for UnitLease {
    fn acting_epoch(&self) -> Option<u64> {
        UnitLease::acting_epoch(self)
    }
    fn held_epoch(&self) -> Option<u64> {
        UnitLease::held_epoch(self)
    }
    fn changes(&self) -> u64 {
        UnitLease::changes(self)
    }
    fn wait_for_change(&self, seen: u64, timeout: Duration) {
        UnitLease::wait_for_change(self, seen, timeout)
    }
    fn step_down_asked(&self, epoch: u64) -> bool {
        UnitLease::step_down_asked(self, epoch)
    }
    fn release(&self, only: Option<u64>) {
        UnitLease::release(self, only)
    }
    fn on_change(&self, wake: Wake) {
        UnitLease::on_change(self, wake)
    }
}

/// A unit's reader of its input partition; see [`UnitInput`].
pub trait InputReader: Send {
    /// The next batch from the reader's position, within `limits`.
    fn poll_batch(&mut self, limits: BatchLimits) -> Result<Vec<LogRecord>>;
    /// The partition's high watermark as last fetched, if known.
    fn cached_high_watermark(&self) -> Option<i64>;
    /// Fire `wake` when a record reaches the reader empty (see
    /// [`crate::pipeline::wake`]). Readers whose `poll_batch` waits need not.
    fn set_arrival_wake(&mut self, _wake: Arc<ArmedWake>) {}
}

impl InputReader for UnitInput {
    fn poll_batch(&mut self, limits: BatchLimits) -> Result<Vec<LogRecord>> {
        UnitInput::poll_batch(self, limits)
    }
    fn cached_high_watermark(&self) -> Option<i64> {
        UnitInput::cached_high_watermark(self)
    }
    fn set_arrival_wake(&mut self, wake: Arc<ArmedWake>) {
        UnitInput::set_arrival_wake(self, wake)
    }
}

/// A unit's producer of its outputs, fenced by its epoch at the broker;
/// see [`FencedProducer`].
pub trait OutputProducer: Send {
    /// The transactional id it produces as.
    fn transactional_id(&self) -> &str;
    /// Produce as `transactional_id` from the next fence on.
    fn retarget(&mut self, transactional_id: &str);
    /// Fence every earlier holder of the transactional id.
    fn fence(&mut self) -> Result<ProducerIdentity>;
    /// A fence record at the current epoch on each of `partitions`; their
    /// offsets.
    fn write_fences(
        &mut self,
        partitions: &[TopicPartition],
    ) -> Result<BTreeMap<TopicPartition, i64>, ProduceError>;
    /// Hold `record` until the next flush.
    fn send(&mut self, record: &Outgoing<'_>) -> Result<()>;
    /// Send what is held and wait for the broker's acknowledgements.
    fn flush(&mut self) -> Result<(), ProduceError>;
    /// Drop what is held.
    fn abandon(&mut self);
    /// The first offset of `topic`/`partition`.
    fn low_watermark(&mut self, topic: &str, partition: i32) -> Result<i64>;
}

impl OutputProducer for FencedProducer {
    fn transactional_id(&self) -> &str {
        FencedProducer::transactional_id(self)
    }
    fn retarget(&mut self, transactional_id: &str) {
        FencedProducer::retarget(self, transactional_id)
    }
    fn fence(&mut self) -> Result<ProducerIdentity> {
        FencedProducer::fence(self)
    }
    fn write_fences(
        &mut self,
        partitions: &[TopicPartition],
    ) -> Result<BTreeMap<TopicPartition, i64>, ProduceError> {
        FencedProducer::write_fences(self, partitions)
    }
    fn send(&mut self, record: &Outgoing<'_>) -> Result<()> {
        FencedProducer::send(self, record)
    }
    fn flush(&mut self) -> Result<(), ProduceError> {
        FencedProducer::flush(self)
    }
    fn abandon(&mut self) {
        FencedProducer::abandon(self)
    }
    fn low_watermark(&mut self, topic: &str, partition: i32) -> Result<i64> {
        FencedProducer::low_watermark(self, topic, partition)
    }
}

/// A unit's open broker connections, kept across roles; see [`UnitLinks`].
pub trait UnitIo: Send {
    /// Its input reader.
    fn input(&mut self) -> &mut dyn InputReader;
    /// The input partition's high watermark as last fetched, if known.
    fn cached_input_high_watermark(&self) -> Option<i64>;
    /// Its producer.
    fn producer(&mut self) -> &mut dyn OutputProducer;
    /// The partition it writes in each of its output topics.
    fn targets(&self) -> &BTreeMap<String, i32>;
    /// Every `(topic, partition)` it writes.
    fn target_partitions(&self) -> Vec<TopicPartition> {
        self.targets()
            .iter()
            .map(|(topic, partition)| (topic.clone(), *partition))
            .collect()
    }
    /// The input partition's high watermark (when `input` is given) and the
    /// marks of every output partition now.
    fn watermarks_now(
        &mut self,
        input: Option<(&str, i32)>,
    ) -> Result<(Option<i64>, BTreeMap<String, OutputMark>)>;
    /// The marks of every output partition now.
    fn marks_now(&mut self) -> Result<BTreeMap<String, OutputMark>> {
        Ok(self.watermarks_now(None)?.1)
    }
    /// Put the reader and the tail at `position`.
    fn rebase(&mut self, position: &Position) -> Result<()>;
    /// Read the input ahead.
    fn follow(&mut self) -> Result<()>;
    /// Make the input start exactly at the position's offset.
    fn input_from(&mut self, position: &Position) -> Result<()>;
    /// The ids of the unit's outputs since the marks, up to `highs`.
    fn read_back(
        &mut self,
        highs: &BTreeMap<String, OutputMark>,
        keep_going: &dyn Fn() -> bool,
    ) -> Result<HashSet<String>>;
    /// Start leading from the last rebase.
    fn start_leading(&mut self) -> Result<()>;
}

impl UnitIo for UnitLinks {
    fn input(&mut self) -> &mut dyn InputReader {
        &mut self.input
    }
    fn cached_input_high_watermark(&self) -> Option<i64> {
        self.input.cached_high_watermark()
    }
    fn producer(&mut self) -> &mut dyn OutputProducer {
        &mut self.producer
    }
    fn targets(&self) -> &BTreeMap<String, i32> {
        &self.targets
    }
    fn watermarks_now(
        &mut self,
        input: Option<(&str, i32)>,
    ) -> Result<(Option<i64>, BTreeMap<String, OutputMark>)> {
        UnitLinks::watermarks_now(self, input)
    }
    fn rebase(&mut self, position: &Position) -> Result<()> {
        UnitLinks::rebase(self, position)
    }
    fn follow(&mut self) -> Result<()> {
        UnitLinks::follow(self)
    }
    fn input_from(&mut self, position: &Position) -> Result<()> {
        UnitLinks::input_from(self, position)
    }
    fn read_back(
        &mut self,
        highs: &BTreeMap<String, OutputMark>,
        keep_going: &dyn Fn() -> bool,
    ) -> Result<HashSet<String>> {
        UnitLinks::read_back(self, highs, keep_going)
    }
    fn start_leading(&mut self) -> Result<()> {
        UnitLinks::start_leading(self)
    }
}

/// Opens a unit's connections; see [`UnitLinks::open`].
pub trait UnitIoFactory: Send + Sync + std::fmt::Debug {
    /// Connections for input `partition` of `spec`, producing as
    /// `transactional_id` with output ids prefixed `id_prefix`, at
    /// `position`.
    fn open(
        &self,
        spec: &ProcessorSpec,
        partition: i32,
        transactional_id: &str,
        id_prefix: &str,
        position: &Position,
    ) -> Result<Box<dyn UnitIo>>;
}

impl UnitIoFactory for SharedIo {
    fn open(
        &self,
        spec: &ProcessorSpec,
        partition: i32,
        transactional_id: &str,
        id_prefix: &str,
        position: &Position,
    ) -> Result<Box<dyn UnitIo>> {
        Ok(Box::new(UnitLinks::open(
            self,
            spec,
            partition,
            transactional_id,
            id_prefix,
            position,
        )?))
    }
}
