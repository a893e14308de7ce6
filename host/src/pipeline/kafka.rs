//! The Kafka side of a pipeline, on `rdkafka`'s blocking clients: reading
//! one input partition from an offset (manual assignment, no consumer
//! group), producing with delivery confirmed, reading back the ids of what
//! an output partition already holds, and creating topics.
//!
//! Guarantees: a [`PartitionReader`] returns records of its one partition in
//! offset order; [`OutputProducer::flush`] returns only when every record
//! sent before it was acknowledged by the broker, or reports that one was
//! not; records are produced in order (one request in flight).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header as KafkaHeader, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::wake::ArmedWake;
use crate::record::LogRecord;
use crate::wasm::bindings::Header;

/// Bound on metadata, watermark and admin requests.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on waiting for the broker to acknowledge produced records.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// The header that carries an output's deterministic id.
pub const ID_HEADER: &str = "logstream-id";
/// The header of a *fence record*: what a new leader writes to every
/// partition it produces to, at its new producer epoch, before reading the
/// outputs back (see [`super::fenced`]). It carries no data; its value
/// names the producer (`TRANSACTIONAL_ID@EPOCH`) for diagnosis. Consumers
/// of LogStream's output topics skip records with this header (LogStream's
/// own inputs do, [`is_fence_record`]).
pub const FENCE_HEADER: &str = "logstream-fence";

/// Whether `record` is a fence record ([`FENCE_HEADER`]), not data.
pub fn is_fence_record(record: &LogRecord) -> bool {
    record.headers.iter().any(|h| h.key == FENCE_HEADER)
}
/// Records the producer may hold unacknowledged before `send` waits.
pub const PRODUCER_QUEUE_RECORDS: u32 = 100_000;
/// Pause before the next fetch after a failed one or a full prefetch queue,
/// in milliseconds.
const FETCH_BACKOFF_MS: u32 = 20;
/// Most bytes per partition in one request of a streaming producer: small
/// enough that a slow broker answers each well within its timeout.
const STREAMING_BATCH_BYTES: u32 = 256 * 1024;
/// How long a streaming producer waits to fill a request, in ms.
const STREAMING_LINGER_MS: u32 = 5;
/// How long [`OutputProducer::flush`] sleeps when no delivery report was
/// waiting.
const FLUSH_POLL_STEP: Duration = Duration::from_millis(1);

fn base_config(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    if let Ok(debug) = std::env::var("LOGSTREAM_RDKAFKA_DEBUG") {
        config
            .set("debug", debug)
            .set_log_level(rdkafka::config::RDKafkaLogLevel::Debug);
    }
    config
        .set("bootstrap.servers", brokers)
        .set("client.id", "logstream")
        .set("socket.timeout.ms", "10000");
    config
}

/// Check that the brokers answer a metadata request within
/// [`REQUEST_TIMEOUT`]; the error is one sentence naming them.
pub fn check_reachable(brokers: &str) -> Result<()> {
    let consumer: BaseConsumer = base_config(brokers)
        .create()
        .context("creating a Kafka client")?;
    consumer
        .fetch_metadata(None, REQUEST_TIMEOUT)
        .map(|_| ())
        .map_err(|e| {
            anyhow!("the Kafka brokers {brokers} did not answer within {REQUEST_TIMEOUT:?} ({e})")
        })
}

/// Partitions of `topic`.
pub fn partition_count(brokers: &str, topic: &str) -> Result<i32> {
    let consumer: BaseConsumer = base_config(brokers)
        .create()
        .context("creating a Kafka client")?;
    let metadata = consumer
        .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
        .with_context(|| format!("reading the metadata of topic {topic} from {brokers}"))?;
    topic_partitions(&metadata, topic)
}

fn topic_partitions(metadata: &rdkafka::metadata::Metadata, topic: &str) -> Result<i32> {
    let topic_metadata = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or_else(|| anyhow!("the broker does not know topic {topic}"))?;
    if let Some(error) = topic_metadata.error() {
        return Err(anyhow!(
            "topic {topic}: {:?}",
            RDKafkaErrorCode::from(error)
        ));
    }
    Ok(topic_metadata.partitions().len() as i32)
}

/// Create each `(topic, partitions)` that does not exist yet.
pub fn ensure_topics(brokers: &str, topics: &[(&str, i32)]) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = base_config(brokers)
        .create()
        .context("creating a Kafka admin client")?;
    let new_topics: Vec<NewTopic> = topics
        .iter()
        .map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT));
    let results = futures::executor::block_on(admin.create_topics(&new_topics, &options))
        .with_context(|| format!("creating topics on {brokers}"))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(anyhow!("creating topic {topic}: {code:?}")),
        }
    }
    Ok(())
}

/// Low and high watermark of one partition.
pub fn watermarks(brokers: &str, topic: &str, partition: i32) -> Result<(i64, i64)> {
    let consumer: BaseConsumer = base_config(brokers).create()?;
    consumer
        .fetch_watermarks(topic, partition, REQUEST_TIMEOUT)
        .with_context(|| format!("reading the watermarks of {topic}/{partition}"))
}

/// How a consumer fetches: how much ahead of its caller (librdkafka's
/// defaults, 100,000 records or 64 MiB, are far more than a unit needs) and
/// how long the broker may hold a fetch that finds nothing new (each idle
/// consumer costs the broker one fetch per wait).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchProfile {
    /// librdkafka fetches while fewer records than this are queued.
    pub records: u32,
    /// ... and fewer KiB than this.
    pub kbytes: u32,
    /// The broker answers an empty fetch after at most this, in ms.
    pub max_wait_ms: u32,
}

/// How consumers without a profile of their own fetch: librdkafka's
/// prefetch bounds, a short wait (latency over broker load).
pub const DEFAULT_FETCH: FetchProfile = FetchProfile {
    records: 100_000,
    kbytes: 64 * 1024,
    max_wait_ms: 20,
};

/// Most bytes one fetch returns per partition: small fetches keep one
/// consumer from holding a slow broker for long.
const FETCH_PARTITION_BYTES: u32 = 256 * 1024;

/// A consumer for manually assigned partitions, fetching as `prefetch`
/// says ([`DEFAULT_FETCH`] when `None`).
pub fn manual_consumer(brokers: &str, prefetch: Option<FetchProfile>) -> Result<BaseConsumer> {
    let mut config = base_config(brokers);
    // Required by librdkafka's assign, otherwise unused: offsets live in
    // our checkpoints and nothing is committed to the group.
    config
        .set("group.id", "logstream-manual-assignment")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set(
            "max.partition.fetch.bytes",
            FETCH_PARTITION_BYTES.to_string(),
        )
        // After a failed fetch librdkafka waits this long (default 500 ms)
        // before the next; a takeover must not sit out such a pause.
        .set("fetch.error.backoff.ms", FETCH_BACKOFF_MS.to_string())
        // Likewise after the prefetch queue was full (default 1 s): a
        // passive's reader fills it, and is restarted at each checkpoint.
        .set("fetch.queue.backoff.ms", FETCH_BACKOFF_MS.to_string());
    let profile = prefetch.unwrap_or(DEFAULT_FETCH);
    config
        .set("queued.min.messages", profile.records.to_string())
        .set("queued.max.messages.kbytes", profile.kbytes.to_string())
        .set("fetch.wait.max.ms", profile.max_wait_ms.to_string());
    config.create().context("creating a Kafka consumer")
}

/// Reads one partition from a given offset.
pub struct PartitionReader {
    consumer: BaseConsumer,
    topic: String,
    partition: i32,
}

impl PartitionReader {
    /// Assign `topic`/`partition` at `start` (`None`: the earliest offset).
    pub fn open(brokers: &str, topic: &str, partition: i32, start: Option<i64>) -> Result<Self> {
        Self::open_with_prefetch(brokers, topic, partition, start, None)
    }

    /// [`open`](Self::open), fetching ahead of the caller only as much as
    /// `prefetch` allows.
    pub fn open_with_prefetch(
        brokers: &str,
        topic: &str,
        partition: i32,
        start: Option<i64>,
        prefetch: Option<FetchProfile>,
    ) -> Result<Self> {
        let reader = PartitionReader {
            consumer: manual_consumer(brokers, prefetch)?,
            topic: topic.to_string(),
            partition,
        };
        reader.assign(start)?;
        Ok(reader)
    }

    fn assign(&self, start: Option<i64>) -> Result<()> {
        let mut assignment = TopicPartitionList::new();
        let offset = Offset::Offset(start.unwrap_or(0));
        assignment
            .add_partition_offset(&self.topic, self.partition, offset)
            .context("building the partition assignment")?;
        self.consumer
            .assign(&assignment)
            .with_context(|| format!("assigning {}/{}", self.topic, self.partition))
    }

    /// Read from `start` on (`None`: the earliest offset), dropping what was
    /// fetched ahead; the connection stays open.
    pub fn restart_at(&self, start: Option<i64>) -> Result<()> {
        self.consumer
            .unassign()
            .with_context(|| format!("unassigning {}/{}", self.topic, self.partition))?;
        self.assign(start)
    }

    /// The partition's high watermark as of the consumer's last fetch
    /// response (librdkafka's cached value: no request to the broker);
    /// `None` before the first fetch answered.
    pub fn cached_high_watermark(&self) -> Option<i64> {
        cached_high_watermark(&self.consumer, &self.topic, self.partition)
    }

    /// Up to `max_records` records (and about `max_bytes` of payload): waits
    /// at most `wait` for the first, then at most `linger` for more.
    pub fn poll_batch(
        &self,
        max_records: usize,
        max_bytes: usize,
        wait: Duration,
        linger: Duration,
    ) -> Result<Vec<LogRecord>> {
        let limits = BatchLimits {
            max_records,
            max_bytes,
            wait,
            linger,
        };
        poll_batch_from(
            |timeout| self.consumer.poll(timeout),
            (&self.topic, self.partition),
            limits,
        )
    }
}

/// Records of one partition from an offset on, in offset order, as a unit's
/// input reads them (from one of the host's shared fetchers,
/// [`super::fetchers::SharedPartitionReader`]); the seam where a simulated
/// broker plugs in.
pub trait PartitionSource: Send {
    /// Read from `start` on (`None`: the earliest offset), dropping what
    /// was fetched ahead.
    fn restart_at(&mut self, start: Option<i64>) -> Result<()>;
    /// The partition's high watermark as of the last fetch response.
    fn cached_high_watermark(&self) -> Option<i64>;
    /// A batch within `limits`.
    fn poll(&mut self, limits: BatchLimits) -> Result<Vec<LogRecord>>;
    /// Fire `wake` whenever a record arrives in an empty queue (it is
    /// armed by its owner; see [`super::wake`]). Sources that are polled
    /// with a wait of their own need not.
    fn set_arrival_wake(&mut self, _wake: Arc<ArmedWake>) {}
}

/// How much one poll takes, and how long it waits.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    pub max_records: usize,
    pub max_bytes: usize,
    /// Longest wait for the first record.
    pub wait: Duration,
    /// Longest wait for more after the first.
    pub linger: Duration,
}

/// `wait` rounded up to whole milliseconds, for a librdkafka poll.
///
/// librdkafka takes its timeouts in whole milliseconds, and rdkafka
/// truncates: a wait of 49.9 ms sleeps 49 ms, and rdkafka's poll loop then
/// spends the remaining 0.9 ms calling the queue with a timeout of 0 —
/// a busy loop of a millisecond per poll. With a leader polling its
/// partition every half heartbeat, that was most of an idle host's CPU at
/// 100 units (BENCHMARKS.md, "Idle CPU"). Rounded up, one sleep covers it.
pub(super) fn whole_millis(wait: Duration) -> Duration {
    let micros = wait.as_micros();
    let millis = micros.div_ceil(1_000);
    Duration::from_millis(u64::try_from(millis).unwrap_or(u64::MAX))
}

/// A batch of `partition`'s records from `poll` (a consumer's or a
/// partition queue's), within `limits`.
pub(super) fn poll_batch_from<'a>(
    poll: impl Fn(
        Duration,
    ) -> Option<rdkafka::error::KafkaResult<rdkafka::message::BorrowedMessage<'a>>>,
    (topic, partition): (&str, i32),
    limits: BatchLimits,
) -> Result<Vec<LogRecord>> {
    let mut batch = Vec::new();
    let mut bytes = 0;
    let mut deadline = Instant::now() + limits.wait;
    while batch.len() < limits.max_records && bytes < limits.max_bytes {
        let remaining = whole_millis(deadline.saturating_duration_since(Instant::now()));
        let Some(message) = poll(remaining) else {
            break;
        };
        let message = match message {
            Ok(message) => message,
            // Records already taken from the consumer's queue are not
            // fetched again: return them, or the caller would skip them.
            // (The error is usually transient, e.g. the broker restarting;
            // librdkafka reconnects by itself.)
            Err(error) if !batch.is_empty() => {
                tracing::warn!(
                    "reading {topic}/{partition}: {error}; returning the {} records read before it",
                    batch.len()
                );
                break;
            }
            Err(error) => {
                return Err(error).with_context(|| format!("reading {topic}/{partition}"))
            }
        };
        let record = to_record(&message);
        bytes += record.payload_bytes();
        if batch.is_empty() {
            deadline = Instant::now() + limits.linger;
        }
        batch.push(record);
    }
    Ok(batch)
}

/// `topic`/`partition`'s high watermark as `consumer` last saw it in a
/// fetch response (no request to the broker); `None` before one answered.
pub(super) fn cached_high_watermark(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
) -> Option<i64> {
    let topic = std::ffi::CString::new(topic).ok()?;
    let (mut low, mut high) = (-1_i64, -1_i64);
    // SAFETY: the consumer (and so its handle) is alive for the call,
    // `topic` is a NUL-terminated string that outlives it, and librdkafka
    // only writes the two out-parameters.
    let error = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (error == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0)
        .then_some(high)
}

fn to_record(message: &impl Message) -> LogRecord {
    let headers = message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|h| Header {
                    key: h.key.to_string(),
                    value: h.value.map(<[u8]>::to_vec).unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default();
    LogRecord {
        partition: message.partition(),
        offset: message.offset(),
        timestamp_ms: message.timestamp().to_millis().unwrap_or(0),
        key: message.key().map(<[u8]>::to_vec),
        value: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        headers,
    }
}

/// Counts delivery failures, keeping the first error.
#[derive(Default)]
pub struct DeliveryTracker {
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl ClientContext for DeliveryTracker {}

impl ProducerContext for DeliveryTracker {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, _)) = result {
            self.failed.fetch_add(1, Ordering::Relaxed);
            let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
            first.get_or_insert_with(|| error.to_string());
        }
    }
}

/// One record to produce.
pub struct Outgoing<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub key: Option<&'a [u8]>,
    pub value: &'a [u8],
    pub headers: &'a [Header],
    /// The deterministic id, sent in the [`ID_HEADER`] header.
    pub id: Option<&'a str>,
}

/// Produces records in order and confirms their delivery: for bulk input
/// (`gen-logs`, the demo's and tests' feeders). A unit's outputs go through
/// the [`FencedProducer`](super::fenced::FencedProducer) instead.
pub struct OutputProducer {
    producer: BaseProducer<DeliveryTracker>,
}

impl OutputProducer {
    /// A producer that sends continuously in bounded requests: for bulk
    /// input (`gen-logs`, test feeders), where a flush of tens of thousands
    /// of held records would make requests a slow broker answers after its
    /// request timeout.
    pub fn open_streaming(brokers: &str) -> Result<Self> {
        let producer = base_config(brokers)
            .set("linger.ms", STREAMING_LINGER_MS.to_string())
            .set("batch.size", STREAMING_BATCH_BYTES.to_string())
            .set(
                "message.timeout.ms",
                DELIVERY_TIMEOUT.as_millis().to_string(),
            )
            .set("acks", "all")
            // One request in flight keeps each partition in send order even
            // across retries, without idempotence (which our broker lacks).
            .set("max.in.flight.requests.per.connection", "1")
            .set(
                "queue.buffering.max.messages",
                PRODUCER_QUEUE_RECORDS.to_string(),
            )
            .create_with_context(DeliveryTracker::default())
            .context("creating a Kafka producer")?;
        Ok(OutputProducer { producer })
    }

    /// Queue one record (waits while the local queue is full).
    pub fn send(&self, record: &Outgoing<'_>) -> Result<()> {
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len() + 1);
        if let Some(id) = record.id {
            headers = headers.insert(KafkaHeader {
                key: ID_HEADER,
                value: Some(id.as_bytes()),
            });
        }
        for header in record.headers {
            headers = headers.insert(KafkaHeader {
                key: &header.key,
                value: Some(&header.value),
            });
        }
        let mut message = BaseRecord::to(record.topic)
            .partition(record.partition)
            .payload(record.value)
            .headers(headers);
        if let Some(key) = record.key {
            message = message.key(key);
        }
        loop {
            match self.producer.send(message) {
                Ok(()) => return Ok(()),
                Err((error, returned))
                    if error.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) =>
                {
                    // The local queue is full: wait until what it holds
                    // is delivered.
                    message = returned;
                    self.flush()?;
                }
                Err((error, _)) => return Err(anyhow!("producing to {}: {error}", record.topic)),
            }
        }
    }

    /// Low and high watermark of one partition, over this producer's
    /// connection.
    pub fn watermarks(&self, topic: &str, partition: i32) -> Result<(i64, i64)> {
        self.producer
            .client()
            .fetch_watermarks(topic, partition, REQUEST_TIMEOUT)
            .with_context(|| format!("reading the watermarks of {topic}/{partition}"))
    }

    /// Partitions of `topic`, over this producer's connection. Also warms
    /// the producer's metadata for the topic, so a first send need not wait
    /// for it.
    pub fn partition_count(&self, topic: &str) -> Result<i32> {
        let metadata = self
            .producer
            .client()
            .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
            .with_context(|| format!("reading the metadata of topic {topic}"))?;
        topic_partitions(&metadata, topic)
    }

    fn take_failure(&self) -> Result<()> {
        let tracker = self.producer.context();
        if tracker.failed.swap(0, Ordering::Relaxed) > 0 {
            let error = tracker
                .first_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            return Err(anyhow!(
                "the broker did not accept some outputs: {}",
                error.unwrap_or_default()
            ));
        }
        Ok(())
    }

    /// Wait until everything sent was acknowledged; an error if any record
    /// was not delivered (the caller must not checkpoint past it).
    pub fn flush(&self) -> Result<()> {
        if self.producer.in_flight_count() == 0 {
            return self.take_failure();
        }
        let deadline = Instant::now() + DELIVERY_TIMEOUT;
        // librdkafka sends held records at once while an `rd_kafka_flush`
        // call is in progress, and that call returns when every record's
        // delivery report was served; so one thread sits in it while this
        // one serves the reports. (rdkafka's own `flush` calls it with a
        // zero timeout, which can end before the broker thread looks, and
        // serves reports in 100 ms polls that run to their end.)
        let client = NativeClient(self.producer.client().native_ptr());
        std::thread::scope(|scope| {
            scope.spawn(move || {
                let client = client;
                // SAFETY: the producer outlives this scope, and
                // `rd_kafka_flush` may be called from any thread.
                unsafe {
                    rdkafka::bindings::rd_kafka_flush(client.0, DELIVERY_TIMEOUT.as_millis() as i32)
                };
            });
            while self.producer.in_flight_count() > 0 {
                if Instant::now() >= deadline {
                    return Err(anyhow!(
                        "the broker did not acknowledge {} outputs within {DELIVERY_TIMEOUT:?}",
                        self.producer.in_flight_count()
                    ));
                }
                // rdkafka's `poll(wait)` polls until its deadline with the
                // time left truncated to whole ms, so it spins through the
                // last ms of any wait: called back to back here, that was
                // a core spinning for as long as the broker took to
                // acknowledge (the mass_failover feeder took 80 % of a
                // core). Serve what is there without waiting, and sleep
                // when nothing was.
                let before = self.producer.in_flight_count();
                self.producer.poll(Duration::ZERO);
                if self.producer.in_flight_count() == before {
                    std::thread::sleep(FLUSH_POLL_STEP);
                }
            }
            Ok(())
        })?;
        self.take_failure()
    }
}

/// The librdkafka handle, to call `rd_kafka_flush` from a helper thread.
struct NativeClient(*mut rdkafka::bindings::rd_kafka_t);
// SAFETY: librdkafka handles are thread-safe; the pointer is only used
// while its producer is borrowed.
unsafe impl Send for NativeClient {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_round_up_to_whole_milliseconds() {
        let cases = [
            (Duration::ZERO, 0),
            (Duration::from_nanos(400), 0),
            (Duration::from_micros(1), 1),
            (Duration::from_micros(49_100), 50),
            (Duration::from_millis(50), 50),
            (Duration::from_micros(50_001), 51),
        ];
        for (wait, millis) in cases {
            assert_eq!(
                whole_millis(wait),
                Duration::from_millis(millis),
                "{wait:?}"
            );
        }
    }
}
