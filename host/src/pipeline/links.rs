//! A unit's Kafka connections, kept open across roles so a takeover does
//! not connect: the input reader (a partition queue of one of the host's
//! shared fetchers), the [`FencedProducer`] of its outputs and its
//! [`OutputTail`] (its view of the host's tail hub) of every output
//! partition it writes.
//!
//! While passive, [`UnitLinks::rebase`] keeps them at the latest checkpoint
//! and [`UnitLinks::follow`] keeps them reading: the input reads ahead from
//! the checkpointed offset (so the first batch after a takeover is already
//! in memory), the tail follows the outputs since the checkpoint's marks (so
//! suppression only reads the last few records).
//! Connecting, fetching metadata and the first fetch otherwise cost about
//! 250 ms per takeover on our broker.
//!
//! A unit writes one partition of each of its topics — the default output
//! topic, every topic the processor may route to, and the dead-letter
//! topic: the partition its checkpoint records, or for a topic it has no
//! mark of yet, its input partition modulo the topic's partition count
//! ([`Position::output_partition`]).
//!
//! Guarantee: after [`rebase`](UnitLinks::rebase) to a position, the reader
//! returns records from its offset on, and the tail's ids are those at or
//! above its marks, on every marked output partition.

use std::collections::{BTreeMap, HashSet};

use anyhow::{Context, Result};

use super::fenced::FencedProducer;
use super::input::UnitInput;
use super::position::{OutputMark, Position};
use super::shared_io::SharedIo;
use super::tail::{FollowFrom, OutputTail};
use super::unit::seams::UnitIo;
use crate::store::registry::ProcessorSpec;

/// A unit's open connections.
pub struct UnitLinks {
    pub input: UnitInput,
    pub producer: FencedProducer,
    /// The partition the unit writes in each of its output topics
    /// (default, routed and dead-letter).
    pub targets: BTreeMap<String, i32>,
    tail: OutputTail,
    /// Where `input` and `tail` were last put (`None`: moved on since, by
    /// leading).
    position: Option<Position>,
}

impl UnitLinks {
    /// Connect for input `partition` of `spec` through the host's `io`, producing as
    /// `transactional_id`, with `id_prefix` the unit's output-id prefix,
    /// at `position`.
    pub fn open(
        io: &SharedIo,
        spec: &ProcessorSpec,
        partition: i32,
        transactional_id: &str,
        id_prefix: &str,
        position: &Position,
    ) -> Result<Self> {
        let mut producer = FencedProducer::open_in(&io.producers, &io.brokers, transactional_id)?;
        let mut targets = BTreeMap::new();
        for topic in spec.written_topics() {
            let count = producer
                .partition_count(&topic)
                .with_context(|| format!("looking up output topic {topic}"))?;
            targets.insert(
                topic.clone(),
                position.output_partition(&topic, partition, count),
            );
        }
        let input = UnitInput::open(
            &io.inputs,
            &spec.input_topic,
            partition,
            position.next_offset,
        )?;
        let tail = OutputTail::open(&io.tails, id_prefix, &followed(&targets, position))?;
        Ok(UnitLinks {
            input,
            producer,
            targets,
            tail,
            position: Some(position.clone()),
        })
    }

    /// The high watermark of input partition `input` (when given) and the
    /// marks of every output partition now, in one request per broker.
    pub fn watermarks_now(
        &mut self,
        input: Option<(&str, i32)>,
    ) -> Result<(Option<i64>, BTreeMap<String, OutputMark>)> {
        let mut partitions = UnitIo::target_partitions(self);
        if let Some((topic, partition)) = input {
            partitions.push((topic.to_string(), partition));
        }
        let mut highs = self.producer.high_watermarks(&partitions)?;
        let input_high = input.and_then(|_| highs.pop());
        partitions.truncate(highs.len());
        let marks = partitions
            .into_iter()
            .zip(highs)
            .map(|((topic, partition), offset)| (topic, OutputMark { partition, offset }))
            .collect();
        Ok((input_high, marks))
    }

    /// Put the reader and the tail at `position` (no-op if already there).
    pub fn rebase(&mut self, position: &Position) -> Result<()> {
        if self.position.as_ref() == Some(position) {
            return Ok(());
        }
        // A recorded partition wins (see Position::output_partition).
        for (topic, mark) in &position.marks {
            if let Some(partition) = self.targets.get_mut(topic) {
                *partition = mark.partition;
            }
        }
        match self.position {
            // Just opened, or back from leading: the input is elsewhere.
            None => self.input.restart_at(position.next_offset)?,
            Some(_) => self.input.advance_to(position.next_offset),
        }
        self.tail.rebase(&followed(&self.targets, position))?;
        self.position = Some(position.clone());
        Ok(())
    }

    /// Read the input ahead. (The host's tail hub follows the outputs.)
    pub fn follow(&mut self) -> Result<()> {
        self.input.read_ahead()
    }

    /// Make the input start exactly at the position's offset (fetching
    /// again only if the read-ahead window does not start there).
    pub fn input_from(&mut self, position: &Position) -> Result<()> {
        self.input.restart_at(position.next_offset)
    }

    /// Read the ids of the unit's outputs and dead letters since the marks,
    /// up to `highs` (from [`UnitLinks::watermarks_now`]), while
    /// `keep_going` holds. Read the watermarks after the producer's fence:
    /// once the fence is in, nothing of an earlier epoch can be appended, so
    /// the read-back sees all of it.
    pub fn read_back(
        &mut self,
        highs: &BTreeMap<String, OutputMark>,
        keep_going: &dyn Fn() -> bool,
    ) -> Result<HashSet<String>> {
        let highs = highs
            .iter()
            .map(|(topic, mark)| (topic.clone(), mark.offset))
            .collect();
        self.tail.catch_up(&highs, keep_going)
    }

    /// Start leading from the last rebase: the input moves on from its
    /// position, and the tail stops fetching (the leader knows what it
    /// produces) until the next rebase.
    pub fn start_leading(&mut self) -> Result<()> {
        self.position = None;
        self.tail.pause()
    }
}

/// The partitions of `targets` that `position` marks, from their marks.
/// (An unmarked one has no outputs of the unit to read back: the unit
/// marks it before its first output there.)
fn followed(targets: &BTreeMap<String, i32>, position: &Position) -> Vec<FollowFrom> {
    targets
        .iter()
        .filter_map(|(topic, &partition)| {
            let mark = position.marks.get(topic)?;
            Some(FollowFrom {
                topic: topic.clone(),
                partition,
                mark: mark.offset,
            })
        })
        .collect()
}
