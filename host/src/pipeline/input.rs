//! A unit's input: one partition read from an offset, for the leader and
//! for the passive alike.
//!
//! While passive, the unit reads the partition as it grows
//! ([`UnitInput::read_ahead`]) and keeps the records from the latest
//! checkpoint's offset on in a bounded window, so a takeover finds its first
//! batch in memory. As checkpoints land, [`UnitInput::advance_to`] drops
//! what they cover; nothing is fetched twice. Only a takeover whose offset
//! the window no longer reaches (the leader ran further past its checkpoint
//! than the window holds) fetches again, from that offset
//! ([`UnitInput::restart_at`]). So a passive reads each input record once,
//! whatever the checkpoint rate — which matters on a broker whose fetches
//! are slow.
//!
//! Guarantee: [`UnitInput::poll_batch`] returns the partition's records in
//! offset order, starting at the offset of the last `open`/`restart_at`
//! (`None`: the earliest), with none skipped or repeated.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;

use super::fetchers::Fetchers;
use super::kafka::{BatchLimits, FetchProfile, PartitionSource};
use super::wake::ArmedWake;
use crate::record::LogRecord;

/// What the host's input fetchers fetch ahead of each unit.
pub const INPUT_PREFETCH: FetchProfile = FetchProfile {
    records: 10_000,
    kbytes: 8 * 1024,
    // The leader's latency on a partition that was idle.
    max_wait_ms: 20,
};
/// What a passive holds read ahead of the checkpoint, at most: the newest
/// records and bytes from the checkpoint's offset on.
pub const READ_AHEAD_RECORDS: usize = 10_000;
pub const READ_AHEAD_BYTES: usize = 8 * 1024 * 1024;
/// Most records one read-ahead poll takes in.
const READ_AHEAD_POLL_RECORDS: usize = 1_000;

/// One input partition with a read-ahead window.
pub struct UnitInput {
    reader: Box<dyn PartitionSource>,
    /// Records read ahead, in offset order, none below `floor`.
    buffered: VecDeque<LogRecord>,
    buffered_bytes: usize,
    /// The offset the next record read from the broker should have (when
    /// known): one past the last one read.
    next: Option<i64>,
    /// Records below this are not wanted (the latest checkpoint's offset).
    floor: Option<i64>,
    /// A gap after this offset was confirmed by fetching again from it: the
    /// partition really has no record there (compaction, transaction
    /// markers), so the next record after it is accepted.
    gap_confirmed_at: Option<i64>,
}

/// What a record read from the broker is, given what was read before.
#[derive(Debug, PartialEq, Eq)]
enum Arrival {
    /// The next record.
    Next,
    /// Fetched before a restart, below where reading is now.
    Stale,
    /// Beyond the next offset: records in between were not delivered.
    Gap,
}

impl UnitInput {
    /// Read `topic`/`partition` from `start` (`None`: the earliest offset)
    /// through one of the host's `fetchers`.
    pub fn open(
        fetchers: &Fetchers,
        topic: &str,
        partition: i32,
        start: Option<i64>,
    ) -> Result<Self> {
        let reader = fetchers.reader(topic, partition, start)?;
        Ok(UnitInput {
            reader: Box::new(reader),
            buffered: VecDeque::new(),
            buffered_bytes: 0,
            next: start,
            floor: start,
            gap_confirmed_at: None,
        })
    }

    /// Passive: records below `start` (a new checkpoint's offset) are no
    /// longer wanted. Never fetches again: if the window does not reach
    /// back to `start` any more, [`restart_at`](Self::restart_at) will.
    pub fn advance_to(&mut self, start: Option<i64>) {
        self.floor = start;
        self.trim();
    }

    fn trim(&mut self) {
        let Some(floor) = self.floor else { return };
        while self.buffered.front().is_some_and(|r| r.offset < floor) {
            let dropped = self.buffered.pop_front().expect("non-empty");
            self.buffered_bytes -= dropped.payload_bytes();
        }
    }

    /// Whether the next record [`poll_batch`](Self::poll_batch) returns is
    /// the one at `start`, without fetching again.
    fn covers(&self, start: Option<i64>) -> bool {
        let Some(start) = start else {
            // The earliest offset is unknown here.
            return false;
        };
        match self.buffered.front() {
            Some(first) => first.offset == start,
            None => self.next == Some(start),
        }
    }

    /// Read from `start` on (`None`: the earliest offset): from the window
    /// when it starts there, else by fetching again from there.
    pub fn restart_at(&mut self, start: Option<i64>) -> Result<()> {
        self.advance_to(start);
        if self.covers(start) {
            return Ok(());
        }
        self.buffered.clear();
        self.buffered_bytes = 0;
        self.next = start;
        self.gap_confirmed_at = None;
        self.reader.restart_at(start)
    }

    /// Passive: take in what has arrived. The window keeps the newest
    /// [`READ_AHEAD_RECORDS`] / [`READ_AHEAD_BYTES`] at or above the floor.
    pub fn read_ahead(&mut self) -> Result<()> {
        loop {
            let batch = self.reader.poll(BatchLimits {
                max_records: READ_AHEAD_POLL_RECORDS,
                max_bytes: READ_AHEAD_BYTES,
                wait: Duration::ZERO,
                linger: Duration::ZERO,
            })?;
            if batch.is_empty() {
                return Ok(());
            }
            for record in batch {
                match self.accept(&record)? {
                    Arrival::Next => {}
                    Arrival::Stale => continue,
                    // Fetching again from the gap; the rest of this fetch
                    // is beyond it too.
                    Arrival::Gap => break,
                }
                if self.floor.is_some_and(|f| record.offset < f) {
                    continue;
                }
                self.buffered_bytes += record.payload_bytes();
                self.buffered.push_back(record);
            }
            while self.buffered.len() > READ_AHEAD_RECORDS || self.buffered_bytes > READ_AHEAD_BYTES
            {
                let dropped = self.buffered.pop_front().expect("over the bound");
                self.buffered_bytes -= dropped.payload_bytes();
            }
        }
    }

    /// Classify a record read from the broker, moving `next` past it when
    /// it is the next one. Records must arrive without gaps: a consumer
    /// that dropped some (e.g. taken from its queue and lost to an error)
    /// would otherwise make the unit skip input. On a gap the reader
    /// fetches again from the missing offset; if the same gap comes back,
    /// the partition really has no records there and reading goes on.
    fn accept(&mut self, record: &LogRecord) -> Result<Arrival> {
        let Some(next) = self.next else {
            self.next = Some(record.offset + 1);
            return Ok(Arrival::Next);
        };
        if record.offset < next {
            return Ok(Arrival::Stale);
        }
        if record.offset > next && self.gap_confirmed_at != Some(next) {
            tracing::warn!(
                "partition {} delivered offset {} where {next} was expected; fetching again from {next}",
                record.partition,
                record.offset
            );
            self.gap_confirmed_at = Some(next);
            self.reader.restart_at(Some(next))?;
            return Ok(Arrival::Gap);
        }
        self.next = Some(record.offset + 1);
        Ok(Arrival::Next)
    }

    /// Fire `wake` when a record reaches the partition's queue empty (see
    /// [`super::wake`]).
    pub fn set_arrival_wake(&mut self, wake: Arc<ArmedWake>) {
        self.reader.set_arrival_wake(wake);
    }

    /// The partition's high watermark as the consumer last saw it (no
    /// broker round trip).
    pub fn cached_high_watermark(&self) -> Option<i64> {
        self.reader.cached_high_watermark()
    }

    /// A batch within `limits`: what is buffered first, then from the
    /// broker, waiting at most `limits.wait` for the first record and
    /// `limits.linger` for more.
    pub fn poll_batch(&mut self, limits: BatchLimits) -> Result<Vec<LogRecord>> {
        let BatchLimits {
            max_records,
            max_bytes,
            wait,
            linger,
        } = limits;
        let mut batch = Vec::new();
        let mut bytes = 0;
        while batch.len() < max_records && bytes < max_bytes {
            let Some(record) = self.buffered.pop_front() else {
                break;
            };
            self.buffered_bytes -= record.payload_bytes();
            bytes += record.payload_bytes();
            batch.push(record);
        }
        if batch.len() < max_records && bytes < max_bytes {
            // Buffered records count as the first: only linger for more.
            let wait = if batch.is_empty() {
                wait
            } else {
                Duration::ZERO
            };
            let more = self.reader.poll(BatchLimits {
                max_records: max_records - batch.len(),
                max_bytes: max_bytes - bytes,
                wait,
                linger,
            })?;
            for record in more {
                match self.accept(&record)? {
                    Arrival::Next => batch.push(record),
                    Arrival::Stale => {}
                    Arrival::Gap => break,
                }
            }
        }
        Ok(batch)
    }
}
