//! A unit's Kafka connections, kept open across roles so a takeover does
//! not connect: the input reader, the [`FencedProducer`] of its outputs and
//! the [`OutputTail`] of its output and dead-letter partitions.
//!
//! While passive, [`UnitLinks::rebase`] keeps them at the latest checkpoint
//! and [`UnitLinks::follow`] keeps them reading: the input reads ahead from
//! the checkpointed offset (so the first batch after a takeover is already
//! in memory), the tail follows the outputs since the checkpoint's marks (so
//! suppression only reads the last few records).
//! Connecting, fetching metadata and the first fetch otherwise cost about
//! 250 ms per takeover on our broker.
//!
//! Guarantee: after [`rebase`](UnitLinks::rebase) to a checkpoint, the
//! reader returns records from its offset on, and the tail's ids are those
//! at or above its marks.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Context, Result};

use super::fenced::FencedProducer;
use super::input::UnitInput;
use super::tail::OutputTail;
use crate::store::checkpoint::CheckpointMeta;
use crate::store::registry::ProcessorSpec;

/// Mark (in checkpoints) of the output partition's high watermark.
pub const OUTPUT_MARK: &str = "output_high_watermark";
/// Mark of the dead-letter partition's high watermark.
pub const DLQ_MARK: &str = "dlq_high_watermark";

/// Where a unit's outputs go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputPartitions {
    pub output_topic: String,
    pub output_partition: i32,
    pub dlq_topic: String,
    pub dlq_partition: i32,
}

/// The position a checkpoint (or its absence) puts a unit at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Next input offset (`None`: the earliest).
    pub next_offset: Option<i64>,
    pub output_mark: i64,
    pub dlq_mark: i64,
}

impl Position {
    /// The position recorded in `meta` for `partition`.
    pub fn of(meta: Option<&CheckpointMeta>, partition: i32) -> Position {
        let mark = |name: &str| -> i64 {
            meta.and_then(|m| m.marks.get(name))
                .and_then(|m| m.parse().ok())
                .unwrap_or(0)
        };
        Position {
            next_offset: meta.and_then(|m| m.offsets.get(&partition).copied()),
            output_mark: mark(OUTPUT_MARK),
            dlq_mark: mark(DLQ_MARK),
        }
    }
}

/// The Kafka transactional id a unit produces as: each takeover fences the
/// previous leader's producer through it (see [`FencedProducer`]).
pub fn transactional_id(unit: &str) -> String {
    format!("logstream/{unit}")
}

/// A unit's open connections.
pub struct UnitLinks {
    pub input: UnitInput,
    pub producer: FencedProducer,
    pub outputs: OutputPartitions,
    tail: OutputTail,
    /// Where `reader` and `tail` were last put (`None`: moved on since, by
    /// leading).
    position: Option<Position>,
}

impl UnitLinks {
    /// Connect for `unit` (`PROCESSOR/PARTITION`) of `spec`, at `position`.
    pub fn open(
        brokers: &str,
        spec: &ProcessorSpec,
        unit: &str,
        partition: i32,
        position: Position,
    ) -> Result<Self> {
        let mut producer = FencedProducer::open(brokers, &transactional_id(unit))?;
        let output_topic = spec.output_topic.clone();
        let dlq_topic = super::unit::dlq_topic(&spec.name);
        // Outputs of input partition N go to partition N modulo the count.
        let output_partition = partition % producer.partition_count(&output_topic)?.max(1);
        let dlq_partition = partition % producer.partition_count(&dlq_topic)?.max(1);
        let input = UnitInput::open(brokers, &spec.input_topic, partition, position.next_offset)?;
        let tail = OutputTail::open(
            brokers,
            &format!("{unit}/"),
            &[
                (&output_topic, output_partition, position.output_mark),
                (&dlq_topic, dlq_partition, position.dlq_mark),
            ],
        )?;
        Ok(UnitLinks {
            input,
            producer,
            outputs: OutputPartitions {
                output_topic,
                output_partition,
                dlq_topic,
                dlq_partition,
            },
            tail,
            position: Some(position),
        })
    }

    /// Put the reader and the tail at `position` (no-op if already there).
    pub fn rebase(&mut self, position: Position) -> Result<()> {
        if self.position == Some(position) {
            return Ok(());
        }
        match self.position {
            // Just opened, or back from leading: the input is elsewhere.
            None => self.input.restart_at(position.next_offset)?,
            Some(_) => self.input.advance_to(position.next_offset),
        }
        self.tail
            .rebase(&[position.output_mark, position.dlq_mark])?;
        self.position = Some(position);
        Ok(())
    }

    /// Read the input ahead and follow the output tail (waiting up to
    /// `wait` for the tail).
    pub fn follow(&mut self, wait: Duration) -> Result<()> {
        self.input.read_ahead()?;
        self.tail.poll(wait)
    }

    /// Make the input start exactly at the position's offset (fetching
    /// again only if the read-ahead window does not start there).
    pub fn input_from(&mut self, position: Position) -> Result<()> {
        self.input.restart_at(position.next_offset)
    }

    /// Fence the previous leader's producer, then read the ids of the
    /// unit's outputs and dead letters since the marks, up to the current
    /// high watermarks. The order matters: once the fence is in, nothing of
    /// an earlier epoch can be appended, so the read-back sees all of it.
    pub fn fence_and_read_back(&mut self) -> Result<HashSet<String>> {
        self.producer
            .fence()
            .context("fencing the previous leader's producer")?;
        self.tail.catch_up()
    }

    /// Start leading from the last rebase: the input moves on from its
    /// position, and the tail stops fetching (the leader knows what it
    /// produces) until the next rebase.
    pub fn start_leading(&mut self) -> Result<()> {
        self.position = None;
        self.tail.pause()
    }
}
