//! The unit's output producer, fenced at the broker by the unit's epoch.
//!
//! Without fencing at the broker, a leader paused past its lease (a
//! "zombie") could still get a produce request appended after its
//! successor read back the output tail: the request may already sit in the
//! broker's queue, or leave the zombie's socket the moment it resumes. The
//! successor would then produce the same outputs again.
//!
//! So every unit produces as one Kafka *transactional id*
//! (`logstream/PROCESSOR/PARTITION`), without ever opening a transaction:
//! - [`FencedProducer::fence`] (at every takeover, before the read-back)
//!   sends `InitProducerId` for that id; the broker bumps the id's producer
//!   epoch in its own store;
//! - every produce request carries the producer id, that epoch and a
//!   sequence per partition (an idempotent batch). The broker checks the
//!   epoch in the same store transaction that appends the batch and refuses
//!   a batch of an older epoch (`PRODUCER_FENCED` / `INVALID_PRODUCER_EPOCH`).
//!
//! - right after `InitProducerId`, [`FencedProducer::write_fences`] writes
//!   one *fence record* ([`FENCE_HEADER`], no data) at the new epoch to
//!   every partition the unit writes, and waits for the acknowledgements.
//!
//! Why the fence records: Apache Kafka and Redpanda keep producer state
//! **per partition** (`ProducerStateManager`, `ProducerAppendInfo.checkProducerEpoch`):
//! a partition learns a producer's new epoch only from a batch or a
//! transaction marker written *to it*, and for idempotent (non-transactional)
//! batches no broker asks the coordinator (KIP-890 verification guards
//! transactional batches only). After `InitProducerId` alone, a zombie's
//! batch at the old epoch is still appended to every partition the new
//! epoch has not reached — during the read-back — and would be replayed: a
//! duplicate. Once a partition holds a batch at the new epoch it refuses
//! every older one. tansu checks the epoch against the coordinator's
//! (globally), where the fence records are redundant but harmless. The
//! race and both fences are modelled from Kafka's source in
//! `tests/sim/src/broker.rs` (crate `logstream-sim`).
//!
//! So any batch of an earlier leader is either appended before the fence
//! records are acknowledged (and the successor's read-back, which comes
//! after, sees it) or refused. This needs no Kafka transactions (`EndTxn`,
//! which our test broker lacks; an aborted empty transaction would write
//! invisible control markers instead, but its markers land *after* `EndTxn`
//! answers, so it needs a wait of its own), only `InitProducerId` with a
//! transactional id and idempotent produce checks, which every broker we
//! know implements. What a downstream consumer sees: one record per
//! takeover per output partition with an empty value, no key and the
//! header `logstream-fence`, to skip (LogStream's inputs skip it).
//!
//! librdkafka picks a producer id of its own and only takes a
//! transactional id together with transactions, so this producer speaks
//! the protocol itself ([`super::wire`]). It is synchronous: records are
//! held in memory by [`send`](FencedProducer::send) and leave the process
//! only in [`flush`](FencedProducer::flush), one request per broker at a
//! time, which returns once every record is acknowledged.
//!
//! Guarantees: records of one partition are appended in `send` order,
//! each once (a request retried after a lost answer is recognised by its
//! sequence and not appended twice); `flush` returns `Ok` only when all
//! are acknowledged, [`ProduceError::Fenced`] when a newer epoch owns the
//! id (nothing more of this producer's is appended until the next
//! `fence`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use kafka_protocol::messages::find_coordinator_request::FindCoordinatorRequest;
use kafka_protocol::messages::init_producer_id_request::InitProducerIdRequest;
use kafka_protocol::messages::list_offsets_request::{
    ListOffsetsPartition, ListOffsetsRequest, ListOffsetsTopic,
};
use kafka_protocol::messages::metadata_request::{MetadataRequest, MetadataRequestTopic};
use kafka_protocol::messages::produce_request::{
    PartitionProduceData, ProduceRequest, TopicProduceData,
};
use kafka_protocol::messages::{BrokerId, ProducerId, TopicName, TransactionalId};
use kafka_protocol::protocol::StrBytes;

use super::kafka::{Outgoing, DELIVERY_TIMEOUT, FENCE_HEADER, ID_HEADER};
use super::record_batch::{self, BatchRecord, ProducerIdentity};
use super::wire::{WireConnection, WirePool};
use crate::wasm::bindings::Header;

/// Most bytes of records per partition in one produce request (the
/// broker's default largest batch is 1 MiB; this leaves room for framing).
pub const MAX_BATCH_BYTES: usize = 900 * 1024;
/// Pause before retrying a request that failed for a reason that passes
/// (a lost connection, a leader moving, a coordinator loading).
const RETRY_BACKOFF: Duration = Duration::from_millis(50);
/// Bound on `fence` (coordinator lookup and `InitProducerId`, retried).
const FENCE_TIMEOUT: Duration = Duration::from_secs(10);
/// The transaction timeout `InitProducerId` requires; no transaction is
/// ever opened, so it only has to be valid (brokers cap it at 15 min).
const UNUSED_TRANSACTION_TIMEOUT_MS: i32 = 60_000;
/// ListOffsets timestamps asking for the first offset and for the next
/// offset to be written (the high watermark).
const EARLIEST: i64 = -2;
const LATEST: i64 = -1;
/// Produce acknowledgement: all in-sync replicas.
const ACKS_ALL: i16 = -1;
/// The producer epoch from which a unit moves to a fresh transactional id
/// (the next producer generation) instead of fencing its current one
/// again: epochs are 16-bit, every takeover burns one, and Apache Kafka
/// treats `i16::MAX - 1` as exhausted (`TransactionMetadata`
/// `isProducerEpochExhausted`). Two below that, so the last fence of the
/// old id still fences every earlier holder.
pub const LAST_PRODUCER_EPOCH: i16 = i16::MAX - 3;

/// Kafka error codes this producer tells apart.
mod code {
    pub const NONE: i16 = 0;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const LEADER_NOT_AVAILABLE: i16 = 5;
    pub const NOT_LEADER_OR_FOLLOWER: i16 = 6;
    pub const REQUEST_TIMED_OUT: i16 = 7;
    pub const NOT_ENOUGH_REPLICAS: i16 = 19;
    pub const NOT_ENOUGH_REPLICAS_AFTER_APPEND: i16 = 20;
    pub const DUPLICATE_SEQUENCE_NUMBER: i16 = 46;
    pub const INVALID_PRODUCER_EPOCH: i16 = 47;
    pub const PRODUCER_FENCED: i16 = 90;
}

/// Why a flush did not deliver.
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    /// A newer leader of the unit fenced this producer's epoch.
    #[error("the broker refused the outputs of producer {transactional_id} at producer epoch {epoch}: a newer leader fenced it")]
    Fenced {
        transactional_id: String,
        epoch: i16,
    },
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// A topic and one of its partitions.
pub type TopicPartition = (String, i32);

/// A unit's producer; see the module docs.
pub struct FencedProducer {
    bootstrap: Vec<String>,
    transactional_id: String,
    /// Broker connections, shared with the host's other producers.
    pool: Arc<WirePool>,
    /// `host:port` of each broker node, from metadata.
    nodes: HashMap<i32, String>,
    leaders: HashMap<TopicPartition, i32>,
    partition_counts: HashMap<String, i32>,
    identity: Option<ProducerIdentity>,
    /// The node coordinating the transactional id, once looked up (a
    /// takeover then costs one round trip, `InitProducerId`).
    coordinator: Option<i32>,
    /// Next sequence per partition for the current identity.
    sequences: HashMap<TopicPartition, i32>,
    /// Records sent but not yet flushed, in send order per partition (a
    /// partition leaves the map when its last record is acknowledged).
    held: BTreeMap<TopicPartition, Vec<BatchRecord>>,
    /// Offset of the last record acknowledged per partition, when the
    /// broker said (a duplicate's answer may not carry it).
    last_offsets: HashMap<TopicPartition, i64>,
}

impl FencedProducer {
    /// A producer for `transactional_id` with connections of its own; see
    /// [`open_in`](Self::open_in).
    pub fn open(brokers: &str, transactional_id: &str) -> Result<Self> {
        let pool = Arc::new(WirePool::new(&format!("logstream/{transactional_id}")));
        Self::open_in(&pool, brokers, transactional_id)
    }

    /// A producer for `transactional_id` over `pool`'s connections; asks
    /// the first answering broker of `brokers` (comma-separated
    /// `host:port`) for metadata. Produces nothing before
    /// [`fence`](Self::fence).
    pub fn open_in(pool: &Arc<WirePool>, brokers: &str, transactional_id: &str) -> Result<Self> {
        let bootstrap: Vec<String> = brokers
            .split(',')
            .map(str::trim)
            .filter(|b| !b.is_empty())
            .map(str::to_string)
            .collect();
        if bootstrap.is_empty() {
            bail!("no broker address in '{brokers}'");
        }
        let mut producer = FencedProducer {
            bootstrap,
            transactional_id: transactional_id.to_string(),
            pool: pool.clone(),
            nodes: HashMap::new(),
            leaders: HashMap::new(),
            partition_counts: HashMap::new(),
            identity: None,
            coordinator: None,
            sequences: HashMap::new(),
            held: BTreeMap::new(),
            last_offsets: HashMap::new(),
        };
        producer.refresh_metadata(&[])?;
        // Resolved now, while nobody waits on it.
        producer.coordinator()?;
        Ok(producer)
    }

    /// The transactional id this producer fences and produces as.
    pub fn transactional_id(&self) -> &str {
        &self.transactional_id
    }

    /// Produce as `transactional_id` from the next [`fence`](Self::fence)
    /// on (the unit moved to another producer generation). Drops anything
    /// held; the connections and metadata stay.
    pub fn retarget(&mut self, transactional_id: &str) {
        self.transactional_id = transactional_id.to_string();
        self.coordinator = None;
        self.identity = None;
        self.sequences.clear();
        self.held.clear();
    }

    /// Take the producer id over for a new epoch of the unit: from now on
    /// the broker refuses every batch an earlier holder of the id sends.
    /// Drops anything held from before.
    pub fn fence(&mut self) -> Result<ProducerIdentity> {
        self.held.clear();
        self.identity = None;
        self.sequences.clear();
        let deadline = Instant::now() + FENCE_TIMEOUT;
        let mut last_error = anyhow!("no attempt");
        while Instant::now() < deadline {
            match self.try_fence() {
                Ok(identity) => {
                    self.identity = Some(identity);
                    return Ok(identity);
                }
                Err(error) => {
                    // Look the coordinator up again: it may have moved.
                    self.coordinator = None;
                    last_error = error;
                }
            }
            std::thread::sleep(RETRY_BACKOFF);
        }
        Err(last_error.context(format!(
            "fencing producer {} within {FENCE_TIMEOUT:?}",
            self.transactional_id
        )))
    }

    fn try_fence(&mut self) -> Result<ProducerIdentity> {
        let coordinator = self.coordinator()?;
        let transactional_id = self.transactional_id.clone();
        let response = self.on_node(coordinator, |c| {
            let version = c.version_of::<InitProducerIdRequest>(0..=4)?;
            let mut request = InitProducerIdRequest::default();
            request.transactional_id = Some(TransactionalId(StrBytes::from_string(
                transactional_id.clone(),
            )));
            request.transaction_timeout_ms = UNUSED_TRANSACTION_TIMEOUT_MS;
            if version >= 3 {
                // "No current id": take the id over with a new epoch.
                request.producer_id = ProducerId(-1);
                request.producer_epoch = -1;
            }
            c.request_at(&request, version)
        })?;
        match response.error_code {
            code::NONE => Ok(ProducerIdentity {
                id: response.producer_id.0,
                epoch: response.producer_epoch,
            }),
            error => Err(anyhow!(
                "InitProducerId for {} failed with error code {error}",
                self.transactional_id
            )),
        }
    }

    /// The node coordinating the transactional id.
    fn coordinator(&mut self) -> Result<i32> {
        if let Some(node) = self.coordinator {
            return Ok(node);
        }
        let key = StrBytes::from_string(self.transactional_id.clone());
        let node = self.any_node()?;
        let response = self.on_node(node, |c| {
            let version = c.version_of::<FindCoordinatorRequest>(1..=4)?;
            let mut request = FindCoordinatorRequest::default();
            request.key_type = 1; // a transactional id
            if version >= 4 {
                request.coordinator_keys = vec![key];
            } else {
                request.key = key;
            }
            c.request_at(&request, version)
        })?;
        // Up to v3 the answer is in the top level, from v4 in a list.
        let (error, node_id, host, port) = match response.coordinators.first() {
            Some(c) => (c.error_code, c.node_id, c.host.to_string(), c.port),
            None => (
                response.error_code,
                response.node_id,
                response.host.to_string(),
                response.port,
            ),
        };
        if error != code::NONE {
            bail!(
                "FindCoordinator for {} failed with error code {error}",
                self.transactional_id
            );
        }
        self.nodes.insert(node_id.0, format!("{host}:{port}"));
        self.coordinator = Some(node_id.0);
        Ok(node_id.0)
    }

    /// Hold one record until the next [`flush`](Self::flush).
    pub fn send(&mut self, record: &Outgoing<'_>) -> Result<()> {
        let mut headers = Vec::with_capacity(record.headers.len() + 1);
        if let Some(id) = record.id {
            headers.push((ID_HEADER.to_string(), id.as_bytes().to_vec()));
        }
        headers.extend(
            record
                .headers
                .iter()
                .map(|h| (h.key.clone(), h.value.clone())),
        );
        self.held
            .entry((record.topic.to_string(), record.partition))
            .or_default()
            .push(BatchRecord {
                key: record.key.map(<[u8]>::to_vec),
                value: record.value.to_vec(),
                headers,
                timestamp_ms: (crate::probe::unix_micros() / 1000) as i64,
            });
        Ok(())
    }

    /// Write one fence record ([`FENCE_HEADER`]) at the current producer
    /// epoch to each of `partitions` and wait until all are acknowledged:
    /// from then on each of them refuses every batch of an earlier epoch,
    /// on brokers that check epochs per partition (Apache Kafka, Redpanda)
    /// as on those that check them globally. Call right after
    /// [`fence`](Self::fence), before anything else is produced. Returns
    /// the offset of each fence record the broker reported: every batch of
    /// an earlier epoch on that partition lies below it, so a read-back
    /// need not reach past it (nor wait for the fence record itself).
    pub fn write_fences(
        &mut self,
        partitions: &[(String, i32)],
    ) -> Result<BTreeMap<TopicPartition, i64>, ProduceError> {
        if self.holds_records() {
            return Err(ProduceError::Other(anyhow!(
                "fence records must be the first records of an epoch, but outputs are held"
            )));
        }
        let identity = self
            .identity
            .ok_or_else(|| anyhow!("writing fence records before the producer was fenced in"))?;
        let producer = format!("{}@{}", self.transactional_id, identity.epoch);
        let headers = [Header {
            key: FENCE_HEADER.to_string(),
            value: producer.into_bytes(),
        }];
        for tp in partitions {
            self.last_offsets.remove(tp);
        }
        for (topic, partition) in partitions {
            self.send(&Outgoing {
                topic,
                partition: *partition,
                key: None,
                value: &[],
                headers: &headers,
                id: None,
            })?;
        }
        self.flush()?;
        Ok(partitions
            .iter()
            .filter_map(|tp| Some((tp.clone(), *self.last_offsets.get(tp)?)))
            .collect())
    }

    /// Whether records are held.
    pub fn holds_records(&self) -> bool {
        !self.held.is_empty()
    }

    /// Drop what is held: a leader that lost its epoch must not produce it.
    pub fn abandon(&mut self) {
        self.held.clear();
    }

    /// Send everything held and wait until the broker acknowledged it all.
    pub fn flush(&mut self) -> Result<(), ProduceError> {
        if !self.holds_records() {
            return Ok(());
        }
        let identity = self
            .identity
            .ok_or_else(|| anyhow!("producing before the producer was fenced in"))?;
        let deadline = Instant::now() + DELIVERY_TIMEOUT;
        let mut last_error: Option<anyhow::Error> = None;
        while self.holds_records() {
            if Instant::now() >= deadline {
                let reason = last_error.map(|e| format!(": {e:#}")).unwrap_or_default();
                return Err(ProduceError::Other(anyhow!(
                    "the broker did not acknowledge the outputs within {DELIVERY_TIMEOUT:?}{reason}"
                )));
            }
            match self.send_round(identity) {
                Ok(()) => {}
                Err(fenced @ ProduceError::Fenced { .. }) => {
                    self.held.clear();
                    return Err(fenced);
                }
                Err(ProduceError::Other(error)) => {
                    tracing::debug!(
                        "producing for {}: {error:#}; retrying",
                        self.transactional_id
                    );
                    last_error = Some(error);
                    std::thread::sleep(RETRY_BACKOFF);
                }
            }
        }
        Ok(())
    }

    /// One produce request per leader with the next chunk of every held
    /// partition; acknowledged chunks leave `held`.
    fn send_round(&mut self, identity: ProducerIdentity) -> Result<(), ProduceError> {
        // Chunks per leader node: (partition, records in the chunk, bytes).
        let mut by_node: BTreeMap<i32, Vec<(TopicPartition, usize, Bytes)>> = BTreeMap::new();
        let held: Vec<TopicPartition> = self.held.keys().cloned().collect();
        for tp in held {
            let leader = self.leader(&tp)?;
            let records = &self.held[&tp];
            let mut bytes = 0;
            let count = records
                .iter()
                .take_while(|r| {
                    bytes += r.approximate_size();
                    bytes <= MAX_BATCH_BYTES
                })
                .count()
                .max(1);
            let sequence = self.sequences.get(&tp).copied().unwrap_or(0);
            let batch = record_batch::encode(&records[..count], identity, sequence)?;
            by_node
                .entry(leader)
                .or_default()
                .push((tp, count, Bytes::from(batch)));
        }
        for (node, chunks) in by_node {
            let mut topics: BTreeMap<&str, Vec<PartitionProduceData>> = BTreeMap::new();
            for ((topic, partition), _, batch) in &chunks {
                let mut data = PartitionProduceData::default();
                data.index = *partition;
                data.records = Some(batch.clone());
                topics.entry(topic).or_default().push(data);
            }
            let mut request = ProduceRequest::default();
            request.acks = ACKS_ALL;
            request.timeout_ms = DELIVERY_TIMEOUT.as_millis() as i32;
            request.topic_data = topics
                .into_iter()
                .map(|(name, partitions)| {
                    let mut topic = TopicProduceData::default();
                    topic.name = TopicName(StrBytes::from_string(name.to_string()));
                    topic.partition_data = partitions;
                    topic
                })
                .collect();
            let response = self.on_node(node, |c| c.request(&request, 3..=9))?;
            let mut codes: HashMap<TopicPartition, (i16, i64)> = HashMap::new();
            for topic in &response.responses {
                for partition in &topic.partition_responses {
                    codes.insert(
                        (topic.name.0.to_string(), partition.index),
                        (partition.error_code, partition.base_offset),
                    );
                }
            }
            let mut retriable = None;
            for (tp, count, _) in chunks {
                match codes.get(&tp).map(|(code, _)| *code) {
                    // A duplicate is a retried batch the broker already has.
                    Some(code::NONE | code::DUPLICATE_SEQUENCE_NUMBER) => {
                        match codes[&tp].1 {
                            base if base >= 0 => self
                                .last_offsets
                                .insert(tp.clone(), base + count as i64 - 1),
                            _ => self.last_offsets.remove(&tp),
                        };
                        let records = self.held.get_mut(&tp).expect("held");
                        records.drain(..count);
                        if records.is_empty() {
                            self.held.remove(&tp);
                        }
                        let next = self.sequences.entry(tp).or_insert(0);
                        *next = increment_sequence(*next, count);
                    }
                    Some(code::PRODUCER_FENCED | code::INVALID_PRODUCER_EPOCH) => {
                        return Err(ProduceError::Fenced {
                            transactional_id: self.transactional_id.clone(),
                            epoch: identity.epoch,
                        });
                    }
                    Some(
                        error @ (code::NOT_LEADER_OR_FOLLOWER
                        | code::LEADER_NOT_AVAILABLE
                        | code::UNKNOWN_TOPIC_OR_PARTITION
                        | code::REQUEST_TIMED_OUT
                        | code::NOT_ENOUGH_REPLICAS
                        | code::NOT_ENOUGH_REPLICAS_AFTER_APPEND),
                    ) => {
                        // Look the leader up again before the retry.
                        self.leaders.remove(&tp);
                        retriable = Some(anyhow!("{}/{} answered error code {error}", tp.0, tp.1));
                    }
                    Some(error) => {
                        return Err(ProduceError::Other(anyhow!(
                            "the broker refused outputs to {}/{} with error code {error}",
                            tp.0,
                            tp.1
                        )));
                    }
                    None => {
                        retriable = Some(anyhow!("no answer for {}/{}", tp.0, tp.1));
                    }
                }
            }
            if let Some(error) = retriable {
                return Err(ProduceError::Other(error));
            }
        }
        Ok(())
    }

    /// Partitions of `topic`.
    pub fn partition_count(&mut self, topic: &str) -> Result<i32> {
        if let Some(count) = self.partition_counts.get(topic) {
            return Ok(*count);
        }
        self.refresh_metadata(&[topic])?;
        self.partition_counts
            .get(topic)
            .copied()
            .ok_or_else(|| anyhow!("topic {topic} does not exist"))
    }

    /// The high watermarks of `partitions`, in their order: one ListOffsets
    /// request per leader broker.
    pub fn high_watermarks(&mut self, partitions: &[(String, i32)]) -> Result<Vec<i64>> {
        let mut by_node: BTreeMap<i32, Vec<&(String, i32)>> = BTreeMap::new();
        for tp in partitions {
            by_node.entry(self.leader(tp)?).or_default().push(tp);
        }
        let mut answers: HashMap<TopicPartition, i64> = HashMap::new();
        for (node, wanted) in by_node {
            let mut topics: BTreeMap<&str, Vec<ListOffsetsPartition>> = BTreeMap::new();
            for (topic, partition) in wanted {
                let mut request = ListOffsetsPartition::default();
                request.partition_index = *partition;
                request.timestamp = LATEST;
                request.current_leader_epoch = -1;
                topics.entry(topic).or_default().push(request);
            }
            let mut request = ListOffsetsRequest::default();
            request.replica_id = BrokerId(-1);
            request.topics = topics
                .into_iter()
                .map(|(name, partitions)| {
                    let mut topic = ListOffsetsTopic::default();
                    topic.name = TopicName(StrBytes::from_string(name.to_string()));
                    topic.partitions = partitions;
                    topic
                })
                .collect();
            let response = self
                .on_node(node, |c| c.request(&request, 1..=7))
                .context("reading the high watermarks")?;
            for topic in &response.topics {
                for answer in &topic.partitions {
                    let tp = (topic.name.0.to_string(), answer.partition_index);
                    if answer.error_code != code::NONE {
                        // A moved leader is looked up again next time.
                        self.leaders.remove(&tp);
                        bail!(
                            "listing the offsets of {}/{} failed with error code {}",
                            tp.0,
                            tp.1,
                            answer.error_code
                        );
                    }
                    answers.insert(tp, answer.offset);
                }
            }
        }
        partitions
            .iter()
            .map(|tp| {
                answers
                    .get(tp)
                    .copied()
                    .ok_or_else(|| anyhow!("no offsets for {}/{} in the answer", tp.0, tp.1))
            })
            .collect()
    }

    /// The low watermark (first offset) of one partition.
    pub fn low_watermark(&mut self, topic: &str, partition: i32) -> Result<i64> {
        self.list_offset(topic, partition, EARLIEST)
            .context("reading the low watermark")
    }

    /// Low and high watermark of one partition.
    pub fn watermarks(&mut self, topic: &str, partition: i32) -> Result<(i64, i64)> {
        let low = self
            .list_offset(topic, partition, EARLIEST)
            .context("reading the low watermark")?;
        Ok((low, self.high_watermark(topic, partition)?))
    }

    /// The high watermark of one partition (one ListOffsets request).
    pub fn high_watermark(&mut self, topic: &str, partition: i32) -> Result<i64> {
        self.list_offset(topic, partition, LATEST)
            .context("reading the high watermark")
    }

    /// The offset ListOffsets answers for `timestamp` ([`EARLIEST`],
    /// [`LATEST`]) on the partition's leader.
    fn list_offset(&mut self, topic: &str, partition: i32, timestamp: i64) -> Result<i64> {
        let leader = self.leader(&(topic.to_string(), partition))?;
        let mut wanted = ListOffsetsPartition::default();
        wanted.partition_index = partition;
        wanted.timestamp = timestamp;
        wanted.current_leader_epoch = -1;
        let mut topic_request = ListOffsetsTopic::default();
        topic_request.name = TopicName(StrBytes::from_string(topic.to_string()));
        topic_request.partitions = vec![wanted];
        let mut request = ListOffsetsRequest::default();
        request.replica_id = BrokerId(-1);
        request.topics = vec![topic_request];
        let response = self.on_node(leader, |c| c.request(&request, 1..=7))?;
        let answer = response
            .topics
            .iter()
            .flat_map(|t| &t.partitions)
            .find(|p| p.partition_index == partition)
            .ok_or_else(|| anyhow!("no offsets for {topic}/{partition} in the answer"))?;
        if answer.error_code != code::NONE {
            bail!(
                "listing the offsets of {topic}/{partition} failed with error code {}",
                answer.error_code
            );
        }
        Ok(answer.offset)
    }

    fn leader(&mut self, tp: &(String, i32)) -> Result<i32> {
        if let Some(leader) = self.leaders.get(tp) {
            return Ok(*leader);
        }
        self.refresh_metadata(&[&tp.0])?;
        self.leaders
            .get(tp)
            .copied()
            .ok_or_else(|| anyhow!("partition {}/{} has no leader", tp.0, tp.1))
    }

    /// Learn the brokers, and the partitions and leaders of `topics`.
    fn refresh_metadata(&mut self, topics: &[&str]) -> Result<()> {
        let mut request = MetadataRequest::default();
        request.topics = Some(
            topics
                .iter()
                .map(|t| {
                    let mut topic = MetadataRequestTopic::default();
                    topic.name = Some(TopicName(StrBytes::from_string(t.to_string())));
                    topic
                })
                .collect(),
        );
        request.allow_auto_topic_creation = false;
        let node = self.any_node()?;
        let response = self.on_node(node, |c| c.request(&request, 1..=9))?;
        for broker in &response.brokers {
            self.nodes
                .insert(broker.node_id.0, format!("{}:{}", broker.host, broker.port));
        }
        for topic in &response.topics {
            let Some(name) = topic.name.as_ref().map(|n| n.0.to_string()) else {
                continue;
            };
            if topic.error_code != code::NONE {
                continue;
            }
            self.partition_counts
                .insert(name.clone(), topic.partitions.len() as i32);
            for partition in &topic.partitions {
                if partition.error_code == code::NONE && partition.leader_id.0 >= 0 {
                    self.leaders.insert(
                        (name.clone(), partition.partition_index),
                        partition.leader_id.0,
                    );
                }
            }
        }
        Ok(())
    }

    /// A node to ask metadata or the coordinator of: a known broker that
    /// answers, or the first bootstrap broker that does (as node -1 until
    /// metadata names it).
    fn any_node(&mut self) -> Result<i32> {
        let known = self.nodes.keys().copied().find(|node| *node >= 0);
        if let Some(node) = known {
            if let Ok(connection) = self.pool.checkout(&self.nodes[&node]) {
                self.pool.give_back(connection);
                return Ok(node);
            }
        }
        let mut errors = Vec::new();
        for address in self.bootstrap.clone() {
            match self.pool.checkout(&address) {
                Ok(connection) => {
                    self.pool.give_back(connection);
                    self.nodes.insert(-1, address);
                    return Ok(-1);
                }
                Err(error) => errors.push(format!("{error:#}")),
            }
        }
        bail!("no broker answered: {}", errors.join("; "))
    }

    /// Run one request on a connection to `node` from the pool; one that
    /// failed is dropped (the next request connects again), one that
    /// answered goes back to the pool.
    fn on_node<T>(
        &mut self,
        node: i32,
        request: impl FnOnce(&mut WireConnection) -> Result<T>,
    ) -> Result<T> {
        let address = self
            .nodes
            .get(&node)
            .ok_or_else(|| anyhow!("broker node {node} is unknown"))?;
        let mut connection = self.pool.checkout(address)?;
        let result = request(&mut connection);
        if result.is_ok() {
            self.pool.give_back(connection);
        }
        result
    }
}

/// Whether a unit fenced in at `epoch` must move to its next producer
/// generation (see [`LAST_PRODUCER_EPOCH`]).
pub fn epochs_used_up(epoch: i16) -> bool {
    epoch >= LAST_PRODUCER_EPOCH
}

/// The sequence after `sequence` and `count` more records: Kafka's
/// sequences wrap from `i32::MAX` to 0 (`DefaultRecordBatch.incrementSequence`),
/// so a producer that outlives two billion records per partition goes on.
pub fn increment_sequence(sequence: i32, count: usize) -> i32 {
    let count = i32::try_from(count).expect("a batch holds fewer than i32::MAX records");
    if sequence > i32::MAX - count {
        count - (i32::MAX - sequence) - 1
    } else {
        sequence + count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unit_moves_on_before_kafka_calls_its_epochs_exhausted() {
        assert!(!epochs_used_up(0));
        assert!(!epochs_used_up(32_763));
        assert!(epochs_used_up(32_764));
        assert!(epochs_used_up(i16::MAX));
    }

    // Apache Kafka's TransactionMetadata treats Short.MAX_VALUE - 1 as
    // exhausted: the last fence under the old id happens before it.
    const _: () = assert!(LAST_PRODUCER_EPOCH < i16::MAX - 1);

    #[test]
    fn sequences_wrap_at_i32_max_as_kafka_specifies() {
        assert_eq!(increment_sequence(0, 5), 5);
        assert_eq!(increment_sequence(i32::MAX - 5, 5), i32::MAX);
        assert_eq!(increment_sequence(i32::MAX - 5, 6), 0);
        assert_eq!(increment_sequence(i32::MAX, 1), 0);
        assert_eq!(increment_sequence(i32::MAX - 1, 10), 8);
    }
}
