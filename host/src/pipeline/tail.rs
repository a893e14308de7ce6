//! Following the tail of a unit's output partitions: the ids of what the
//! unit's leaders produced there since the last checkpoint's marks.
//!
//! A new leader must not re-emit outputs that already reached the topic
//! (guarantee 2 without Kafka transactions). The passive keeps an
//! [`OutputTail`] connected and reading while the active produces, so at
//! takeover it only asks for the high watermarks and reads the last few
//! records, instead of connecting and reading everything since the marks.
//!
//! Guarantees: after [`OutputTail::catch_up`] returns, the set holds every id
//! with the unit's prefix at offsets from the current marks up to the high
//! watermarks read at that moment; ids below the marks are never returned.
//! A catch-up makes progress however long the tail is: it has no deadline
//! of its own (only a bound on a broker that stops answering), and what it
//! read is kept when it fails, so the next attempt goes on from there.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use super::kafka::{self, FetchProfile, ID_HEADER};

/// Bound on a catch-up that receives nothing at all: the broker is not
/// answering. (A catch-up that receives records goes on however long.)
pub const CATCH_UP_STALL_BOUND: Duration = Duration::from_secs(30);
/// What the tail consumer may fetch ahead of [`OutputTail::poll`].
pub const TAIL_PREFETCH: FetchProfile = FetchProfile {
    records: 10_000,
    kbytes: 4 * 1024,
    // Only a takeover needs the tail current, and it reads to the high
    // watermarks then; meanwhile fewer idle fetches spare the broker.
    max_wait_ms: 100,
};
/// Longest single wait for more records while catching up.
const CATCH_UP_POLL: Duration = Duration::from_millis(100);

/// One output partition to follow from a mark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowFrom {
    pub topic: String,
    pub partition: i32,
    /// Ids below this offset are covered by the checkpoint.
    pub mark: i64,
}

/// One followed partition.
#[derive(Debug)]
struct Followed {
    topic: String,
    partition: i32,
    /// Ids below this offset are covered by the checkpoint.
    mark: i64,
    /// The offset the consumer reads next (as far as we have seen).
    next: i64,
    /// `(offset, id)` of the unit's records at or above `mark`, in offset order.
    ids: Vec<(i64, String)>,
}

/// A consumer that follows some output partitions from marks, keeping the
/// ids that start with a unit's prefix.
pub struct OutputTail {
    consumer: BaseConsumer,
    prefix: String,
    followed: Vec<Followed>,
    paused: bool,
}

impl OutputTail {
    /// Follow each partition from its mark.
    pub fn open(brokers: &str, prefix: &str, partitions: &[FollowFrom]) -> Result<Self> {
        let consumer = kafka::manual_consumer(brokers, Some(TAIL_PREFETCH))?;
        let mut tail = OutputTail {
            consumer,
            prefix: prefix.to_string(),
            followed: Vec::new(),
            paused: false,
        };
        tail.rebase(partitions)?;
        Ok(tail)
    }

    fn assign(&self) -> Result<()> {
        let mut assignment = TopicPartitionList::new();
        for f in &self.followed {
            assignment
                .add_partition_offset(&f.topic, f.partition, Offset::Offset(f.next))
                .context("building the tail assignment")?;
        }
        self.consumer
            .assign(&assignment)
            .context("assigning the output partitions to follow")
    }

    /// Follow `partitions` from their marks (a new checkpoint's): ids below
    /// the marks are dropped, what was read above them is kept. A mark
    /// below what was already read (a checkpoint older than the last one)
    /// re-reads from it; a partition not followed before is read from its
    /// mark.
    pub fn rebase(&mut self, partitions: &[FollowFrom]) -> Result<()> {
        let mut reassign = self.paused || partitions.len() != self.followed.len();
        let mut previous = std::mem::take(&mut self.followed);
        for want in partitions {
            let kept = previous
                .iter()
                .position(|f| f.topic == want.topic && f.partition == want.partition)
                .map(|at| previous.swap_remove(at));
            let followed = match kept {
                Some(mut f) if want.mark >= f.mark => {
                    f.ids.retain(|(offset, _)| *offset >= want.mark);
                    f.next = f.next.max(want.mark);
                    f.mark = want.mark;
                    f
                }
                _ => {
                    reassign = true;
                    Followed {
                        topic: want.topic.clone(),
                        partition: want.partition,
                        mark: want.mark,
                        next: want.mark,
                        ids: Vec::new(),
                    }
                }
            };
            self.followed.push(followed);
        }
        if reassign {
            self.consumer.unassign().context("unassigning the tail")?;
            self.assign()?;
            self.paused = false;
        }
        Ok(())
    }

    /// Stop fetching until the next [`rebase`](Self::rebase).
    pub fn pause(&mut self) -> Result<()> {
        let assignment = self
            .consumer
            .assignment()
            .context("reading the tail assignment")?;
        self.consumer
            .pause(&assignment)
            .context("pausing the tail")?;
        self.paused = true;
        Ok(())
    }

    /// Take in what has arrived, waiting at most `wait` for the first
    /// record; how many records of the followed partitions arrived.
    pub fn poll(&mut self, wait: Duration) -> Result<usize> {
        let mut wait = wait;
        let mut arrived = 0;
        while let Some(message) = self.consumer.poll(wait) {
            let message = message.context("following the output partitions")?;
            wait = Duration::ZERO;
            let Some(f) = self
                .followed
                .iter_mut()
                .find(|f| f.partition == message.partition() && f.topic == message.topic())
            else {
                continue;
            };
            let offset = message.offset();
            if offset < f.next {
                // Left over from before a re-read; already seen or below the mark.
                continue;
            }
            arrived += 1;
            f.next = offset + 1;
            if offset < f.mark {
                continue;
            }
            let id = message.headers().and_then(|headers| {
                headers
                    .iter()
                    .find(|h| h.key == ID_HEADER)
                    .and_then(|h| h.value)
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .filter(|id| id.starts_with(&self.prefix))
                    .map(str::to_string)
            });
            if let Some(id) = id {
                f.ids.push((offset, id));
            }
        }
        Ok(arrived)
    }

    /// Read up to `highs` — the high watermark of each followed partition,
    /// asked of the broker after the previous leader was fenced — and return
    /// the ids since the marks. Goes on as long as records arrive and
    /// `keep_going` holds; fails after [`CATCH_UP_STALL_BOUND`] without a
    /// record, or once `keep_going` is false (what was read stays for the
    /// next attempt). A high watermark below a mark means the topic was
    /// recreated since the checkpoint: an error naming it.
    pub fn catch_up(
        &mut self,
        highs: &BTreeMap<String, i64>,
        keep_going: &dyn Fn() -> bool,
    ) -> Result<HashSet<String>> {
        let mut wanted = Vec::with_capacity(self.followed.len());
        for f in &self.followed {
            let high = *highs.get(&f.topic).ok_or_else(|| {
                anyhow!(
                    "no high watermark of {}/{} to read back to",
                    f.topic,
                    f.partition
                )
            })?;
            if high < f.mark {
                bail!(
                    "the output partition {}/{} ends at offset {high}, before the checkpoint's mark {}: the topic was deleted and recreated (or truncated); deploy the processor again with --reset to start it over",
                    f.topic,
                    f.partition,
                    f.mark
                );
            }
            wanted.push(high);
        }
        let mut last_progress = Instant::now();
        while self.followed.iter().zip(&wanted).any(|(f, &h)| f.next < h) {
            if !keep_going() {
                bail!("stopped reading back the output partitions: no longer leading");
            }
            if last_progress.elapsed() > CATCH_UP_STALL_BOUND {
                let (f, high) = self
                    .followed
                    .iter()
                    .zip(&wanted)
                    .find(|(f, &h)| f.next < h)
                    .expect("one is behind");
                bail!(
                    "reading back {}/{} stalled at offset {} of {high}: nothing arrived for {CATCH_UP_STALL_BOUND:?}",
                    f.topic,
                    f.partition,
                    f.next
                );
            }
            if self.poll(CATCH_UP_POLL)? > 0 {
                last_progress = Instant::now();
            }
        }
        Ok(self
            .followed
            .iter()
            .flat_map(|f| f.ids.iter().map(|(_, id)| id.clone()))
            .collect())
    }
}
