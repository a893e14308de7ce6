//! The host's shared input fetchers: every input partition its units follow
//! is read through a fixed number of Kafka consumers (`input_fetchers`),
//! the way Kafka Streams' stream threads share their clients across tasks,
//! instead of through a consumer per unit — each with threads and broker
//! connections of its own, and a fetch request of its own per wait.
//!
//! Each partition's records reach its unit through a queue of their own
//! (librdkafka's partition queues, split from the consumer's main queue),
//! so a unit sees only its partition, in offset order, and a slow unit holds
//! back only its own partition: librdkafka stops fetching a partition whose
//! queue holds the fetch profile's records or bytes.
//!
//! Guarantees:
//! - A [`SharedPartitionReader`] keeps the [`PartitionSource`] contract:
//!   its partition's records in offset order from its last `restart_at`.
//!   (librdkafka's version barrier drops what was fetched before a restart;
//!   [`super::input::UnitInput`] also refuses stale records and gaps.)
//! - One consumer never holds a partition twice: a partition followed by
//!   two readers (two processors over one topic) goes to two fetchers,
//!   growing the pool past its size only when every fetcher has it.
//! - Each fetcher's main queue (errors, events) is served by a thread of its
//!   own; a fetcher ends when the pool and its last reader are dropped.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, Consumer, DefaultConsumerContext};
use rdkafka::{Offset, TopicPartitionList};

use super::kafka::{self, BatchLimits, FetchProfile, PartitionSource};
use super::wake::ArmedWake;
use crate::record::LogRecord;

/// Input fetchers per host, unless configured (`limits.input_fetchers`).
pub const DEFAULT_INPUT_FETCHERS: usize = 4;
/// Most input fetchers a host may be configured with.
pub const MAX_INPUT_FETCHERS: usize = 64;
/// How long a fetcher's thread waits on the main queue before it looks at
/// its stop flag again.
const MAIN_QUEUE_POLL: Duration = Duration::from_millis(100);
/// At most one log line per fetcher for consumer-wide errors this often.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// A pool of consumers shared by a host's readers.
pub struct Fetchers {
    brokers: String,
    profile: FetchProfile,
    size: usize,
    pool: Mutex<Vec<Arc<Fetcher>>>,
}

impl std::fmt::Debug for Fetchers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetchers")
            .field("brokers", &self.brokers)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// One shared consumer.
struct Fetcher {
    consumer: Arc<BaseConsumer>,
    /// The partitions assigned to it.
    partitions: Mutex<HashSet<(String, i32)>>,
    stop: Arc<AtomicBool>,
    main_queue: Option<JoinHandle<()>>,
}

impl Fetchers {
    /// A pool of `size` consumers (made as readers need them) of `brokers`,
    /// fetching as `profile` says for each partition.
    pub fn new(brokers: &str, size: usize, profile: FetchProfile) -> Result<Self> {
        if size == 0 || size > MAX_INPUT_FETCHERS {
            anyhow::bail!(
                "input_fetchers is {size}; it must be between 1 and {MAX_INPUT_FETCHERS}"
            );
        }
        Ok(Fetchers {
            brokers: brokers.to_string(),
            profile,
            size,
            pool: Mutex::new(Vec::new()),
        })
    }

    /// Read `topic`/`partition` from `start` (`None`: the earliest offset)
    /// through the least loaded fetcher that does not hold it yet.
    pub fn reader(
        &self,
        topic: &str,
        partition: i32,
        start: Option<i64>,
    ) -> Result<SharedPartitionReader> {
        let key = (topic.to_string(), partition);
        let fetcher = {
            let mut pool = self.pool.lock().expect("fetcher pool");
            let free = pool
                .iter()
                .filter(|f| !f.holds(&key))
                .min_by_key(|f| f.load())
                .cloned();
            match free {
                Some(fetcher) if pool.len() >= self.size || fetcher.load() == 0 => fetcher,
                _ => {
                    if pool.len() >= self.size {
                        tracing::info!(
                            "every input fetcher already reads {topic}/{partition}; starting fetcher {} of {}",
                            pool.len() + 1,
                            self.size
                        );
                    }
                    let fetcher = Arc::new(Fetcher::start(&self.brokers, self.profile)?);
                    pool.push(fetcher.clone());
                    fetcher
                }
            }
        };
        fetcher
            .partitions
            .lock()
            .expect("fetcher partitions")
            .insert(key);
        let mut reader = SharedPartitionReader {
            queue: None,
            arrival_wake: None,
            fetcher,
            topic: topic.to_string(),
            partition,
        };
        reader.assign(start)?;
        Ok(reader)
    }
}

impl Fetcher {
    fn start(brokers: &str, profile: FetchProfile) -> Result<Self> {
        let consumer = Arc::new(kafka::manual_consumer(brokers, Some(profile))?);
        let stop = Arc::new(AtomicBool::new(false));
        let main_queue = {
            let (consumer, stop) = (consumer.clone(), stop.clone());
            std::thread::Builder::new()
                .name("input-fetcher".into())
                .spawn(move || serve_main_queue(&consumer, &stop))
                .context("starting an input fetcher's thread")?
        };
        Ok(Fetcher {
            consumer,
            partitions: Mutex::new(HashSet::new()),
            stop,
            main_queue: Some(main_queue),
        })
    }

    fn holds(&self, key: &(String, i32)) -> bool {
        self.partitions
            .lock()
            .expect("fetcher partitions")
            .contains(key)
    }

    fn load(&self) -> usize {
        self.partitions.lock().expect("fetcher partitions").len()
    }
}

impl Drop for Fetcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.main_queue.take() {
            let _ = thread.join();
        }
    }
}

/// Serve a fetcher's main queue: consumer-wide errors and events. (Records
/// of its partitions go to their own queues, never here.)
fn serve_main_queue(consumer: &BaseConsumer, stop: &AtomicBool) {
    let mut last_logged: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        match consumer.poll(MAIN_QUEUE_POLL) {
            Some(Err(error)) if last_logged.is_none_or(|at| at.elapsed() >= ERROR_LOG_INTERVAL) => {
                last_logged = Some(Instant::now());
                tracing::warn!(%error, "input fetcher: consumer error");
            }
            // Logged within the interval: not again.
            Some(Err(_)) => {}
            Some(Ok(message)) => {
                use rdkafka::message::Message;
                tracing::warn!(
                    "input fetcher: a record of {}/{} reached the main queue; dropped (its reader re-reads from its own position)",
                    message.topic(),
                    message.partition()
                );
            }
            None => {}
        }
    }
}

/// One partition read through a shared fetcher.
pub struct SharedPartitionReader {
    fetcher: Arc<Fetcher>,
    /// The partition's own queue (`None` while it is being reassigned).
    queue: Option<PartitionQueue<DefaultConsumerContext>>,
    /// Fired when a record reaches the queue empty (set on every queue the
    /// partition is split into).
    arrival_wake: Option<Arc<ArmedWake>>,
    topic: String,
    partition: i32,
}

impl SharedPartitionReader {
    fn assignment(&self, start: Option<i64>) -> Result<TopicPartitionList> {
        let mut list = TopicPartitionList::new();
        let offset = match start {
            Some(offset) => Offset::Offset(offset),
            None => Offset::Offset(0),
        };
        list.add_partition_offset(&self.topic, self.partition, offset)
            .context("building the partition assignment")?;
        Ok(list)
    }

    /// Split the partition's queue, then start fetching it at `start`.
    /// (Split first, so no record of it reaches the main queue.)
    fn assign(&mut self, start: Option<i64>) -> Result<()> {
        let queue = self
            .fetcher
            .consumer
            .split_partition_queue(&self.topic, self.partition)
            .ok_or_else(|| {
                anyhow!(
                    "cannot split the queue of {}/{}",
                    self.topic,
                    self.partition
                )
            })?;
        self.queue = Some(queue);
        self.fire_on_arrival();
        self.fetcher
            .consumer
            .incremental_assign(&self.assignment(start)?)
            .with_context(|| format!("assigning {}/{}", self.topic, self.partition))
    }

    /// Have the partition's current queue fire the arrival wake, if there
    /// are both (every queue split for the partition needs it anew).
    fn fire_on_arrival(&mut self) {
        if let (Some(queue), Some(wake)) = (&mut self.queue, &self.arrival_wake) {
            let wake = wake.clone();
            queue.set_nonempty_callback(move || wake.fire());
        }
    }

    fn unassign(&mut self) -> Result<()> {
        self.queue = None;
        self.fetcher
            .consumer
            .incremental_unassign(&self.assignment(None)?)
            .with_context(|| format!("unassigning {}/{}", self.topic, self.partition))
    }
}

impl PartitionSource for SharedPartitionReader {
    fn restart_at(&mut self, start: Option<i64>) -> Result<()> {
        self.unassign()?;
        self.assign(start)
    }

    fn cached_high_watermark(&self) -> Option<i64> {
        kafka::cached_high_watermark(&self.fetcher.consumer, &self.topic, self.partition)
    }

    fn poll(&mut self, limits: BatchLimits) -> Result<Vec<LogRecord>> {
        let queue = self
            .queue
            .as_ref()
            .ok_or_else(|| anyhow!("{}/{} is not assigned", self.topic, self.partition))?;
        kafka::poll_batch_from(
            |timeout| queue.poll(timeout),
            (&self.topic, self.partition),
            limits,
        )
    }

    fn set_arrival_wake(&mut self, wake: Arc<ArmedWake>) {
        self.arrival_wake = Some(wake);
        self.fire_on_arrival();
    }
}

impl Drop for SharedPartitionReader {
    fn drop(&mut self) {
        if let Err(error) = self.unassign() {
            tracing::warn!(error = format!("{error:#}"), "releasing an input partition");
        }
        self.fetcher
            .partitions
            .lock()
            .expect("fetcher partitions")
            .remove(&(self.topic.clone(), self.partition));
    }
}
