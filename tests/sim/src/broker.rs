//! A Kafka broker's producer-facing state, as a pure deterministic model.
//!
//! # What it owns
//!
//! One [`Broker`] holds, for a single-node cluster:
//! - the transaction coordinator: transactional id → producer id, producer
//!   epoch, transaction state and the partitions of the ongoing
//!   transaction;
//! - every partition's log of batches (data and control) and its producer
//!   state: per producer id, the epoch the partition last saw and the
//!   sequence ranges of the last [`NUM_BATCHES_TO_RETAIN`] batches.
//!
//! Every call is synchronous and its effect is a function of the state and
//! the arguments only (producer ids are handed out in order from
//! [`FIRST_PRODUCER_ID`]), so a simulator can replay any schedule of
//! requests exactly. Work that Kafka does in the background — writing the
//! transaction markers after `EndTxn` — is a separate step
//! ([`Broker::deliver_marker`]) that the simulator schedules like any other
//! event.
//!
//! # Two epoch checks
//!
//! [`EpochCheck::PerPartition`] is Apache Kafka (and Redpanda): a
//! partition learns a producer's epoch only from what is written *to that
//! partition* (a data batch or a transaction marker), so after
//! `InitProducerId` bumps the epoch at the coordinator, a partition the new
//! epoch has not reached yet still appends an old-epoch idempotent batch.
//! [`EpochCheck::Global`] is tansu: a produce request's epoch is compared
//! with the coordinator's current epoch for the producer id, so the bump
//! fences every partition at once. The global check is modelled after
//! LogStream's description of tansu in `host/src/pipeline/fenced.rs`, not
//! after tansu's source.
//!
//! # Where it comes from
//!
//! Read in the Apache Kafka repository at these commits (the storage
//! classes from trunk; the coordinator from its Scala code of the 3.x
//! line, before transaction version 2 and before it moved to Java):
//! - `storage/src/main/java/org/apache/kafka/storage/internals/log/ProducerAppendInfo.java`
//!   (074553555c604cbc60ddb83feb257e07d14d4dbc): `checkProducerEpoch`,
//!   `checkSequence`, `inSequence`, `appendDataBatch`,
//!   `appendEndTxnMarker`;
//! - `storage/src/main/java/org/apache/kafka/storage/internals/log/ProducerStateEntry.java`
//!   (087c00f8195e12b4fa43804ca161f3f713c9eb45): `NUM_BATCHES_TO_RETAIN`,
//!   `addBatch`, `maybeUpdateProducerEpoch`, `findDuplicateBatch`;
//! - `UnifiedLog.analyzeAndValidateProducerState` (Scala
//!   `core/src/main/scala/kafka/log/UnifiedLog.scala` in 3.x, Java
//!   `storage/.../UnifiedLog.java` on trunk): the duplicate lookup comes
//!   first, then the epoch and sequence checks; a duplicate is answered
//!   with the offsets of the batch already appended and no error;
//! - `core/src/main/scala/kafka/coordinator/transaction/TransactionCoordinator.scala`
//!   (00c29d0ff509329cc81389ccfa795a5aa3b958e0): `handleInitProducerId`,
//!   `prepareInitProducerIdTransit`, `handleAddPartitionsToTransaction`,
//!   `endTransaction`;
//! - `core/src/main/scala/kafka/coordinator/transaction/TransactionMetadata.scala`
//!   (02653fc1e35b4ae153f656a5fe2688ecc4cba006): `isEpochExhausted`,
//!   `prepareIncrementProducerEpoch`, `prepareProducerIdRotation`,
//!   `prepareFenceProducerEpoch`.
//!
//! # What is left out
//!
//! - Replication, ISR, leader changes, `acks` other than all with one
//!   replica: the log end is the high watermark.
//! - Timeouts of every kind (transaction timeout, producer id expiration,
//!   `transactional.id.expiration.ms`), log retention and compaction.
//! - Coordinator epochs and coordinator moves (`checkCoordinatorEpoch`),
//!   `InitProducerId` with an expected producer id and epoch (KIP-360;
//!   LogStream sends none), offsets in transactions, transactional data
//!   batches and `read_committed` (LogStream never writes transactional
//!   data, so both isolation levels read the same records here).
//! - KIP-890 server-side verification. It guards *transactional* batches
//!   only (`UnifiedLog.analyzeAndValidateProducerState` checks the
//!   verification guard when `batch.isTransactional`; `ReplicaManager`
//!   asks the coordinator only for transactional produce requests), so it
//!   does nothing for LogStream's idempotent batches, which is why the
//!   per-partition race exists on Kafka 3.6+ and 4.x as well.
//! - Transaction version 2 (KIP-890 part 2, Kafka 4.0+): `EndTxn` then
//!   bumps the epoch once more and writes the markers at that epoch, and
//!   markers at an epoch not above the partition's are refused. This model
//!   is transaction versions 0/1: markers at the coordinator's epoch.
//!   Either way a marker reaches the partition at an epoch above every
//!   earlier holder's, which is what fencing needs.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

/// A producer id, as Kafka's `long producerId`.
pub type ProducerId = i64;
/// A producer epoch, as Kafka's `short producerEpoch`.
pub type ProducerEpoch = i16;
/// A batch sequence number, as Kafka's `int baseSequence`.
pub type Sequence = i32;
/// A position in a partition's log, in records.
pub type Offset = i64;

/// `RecordBatch.NO_PRODUCER_EPOCH`: no epoch known.
pub const NO_PRODUCER_EPOCH: ProducerEpoch = -1;
/// `RecordBatch.NO_SEQUENCE`: no sequence (control batches, empty state).
pub const NO_SEQUENCE: Sequence = -1;
/// `ProducerStateEntry.NUM_BATCHES_TO_RETAIN`: batches per producer id and
/// partition whose sequence ranges a partition remembers for duplicates.
pub const NUM_BATCHES_TO_RETAIN: usize = 5;
/// The first epoch `TransactionMetadata.isEpochExhausted` treats as used
/// up (`Short.MaxValue - 1`): `InitProducerId` then rotates to a new
/// producer id at epoch 0 instead of bumping.
pub const EXHAUSTED_PRODUCER_EPOCH: ProducerEpoch = i16::MAX - 1;
/// The first producer id this broker hands out (then 1001, 1002, ...).
pub const FIRST_PRODUCER_ID: ProducerId = 1000;
/// Header key of LogStream's fence record, which consumers skip.
pub const FENCE_HEADER: &str = "logstream-fence";

/// How a produce request's producer epoch is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EpochCheck {
    /// Against the epoch the partition last saw for the producer id
    /// (Apache Kafka, Redpanda).
    PerPartition,
    /// Against the coordinator's current epoch for the producer id (tansu).
    Global,
}

/// What kind of broker to model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BrokerConfig {
    pub epoch_check: EpochCheck,
    /// Whether `AddPartitionsToTxn` / `EndTxn` are implemented; when not,
    /// both answer [`KafkaError::UnsupportedVersion`].
    pub supports_transactions: bool,
}

impl BrokerConfig {
    /// Apache Kafka (transaction version 0/1).
    pub const APACHE_KAFKA: Self = Self {
        epoch_check: EpochCheck::PerPartition,
        supports_transactions: true,
    };
    /// tansu with its SQL storage, as LogStream's process tests use it.
    pub const TANSU: Self = Self {
        epoch_check: EpochCheck::Global,
        supports_transactions: false,
    };
}

/// The Kafka error codes this model answers, named as in
/// `org.apache.kafka.common.protocol.Errors`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KafkaError {
    UnknownTopicOrPartition,
    UnsupportedVersion,
    InvalidRequest,
    OutOfOrderSequenceNumber,
    /// Code 47, what a partition answers a batch of an older epoch. Its
    /// name changed, not its code: before Kafka 2.7 (KIP-588) code 47 was
    /// `INVALID_PRODUCER_EPOCH` built as `ProducerFencedException` and
    /// `ProducerAppendInfo` threw `ProducerFencedException`; since 2.7 the
    /// partition throws `InvalidProducerEpochException` (same code 47) and
    /// `PRODUCER_FENCED` (90) is answered by the coordinator only.
    InvalidProducerEpoch,
    InvalidTxnState,
    InvalidProducerIdMapping,
    ConcurrentTransactions,
    InvalidRecord,
    /// Code 90, the coordinator's answer to a request of a fenced epoch
    /// (`AddPartitionsToTxn`, `EndTxn`).
    ProducerFenced,
}

impl KafkaError {
    /// The wire error code.
    pub fn code(self) -> i16 {
        match self {
            Self::UnknownTopicOrPartition => 3,
            Self::UnsupportedVersion => 35,
            Self::InvalidRequest => 42,
            Self::OutOfOrderSequenceNumber => 45,
            Self::InvalidProducerEpoch => 47,
            Self::InvalidTxnState => 48,
            Self::InvalidProducerIdMapping => 49,
            Self::ConcurrentTransactions => 51,
            Self::InvalidRecord => 87,
            Self::ProducerFenced => 90,
        }
    }
}

impl fmt::Display for KafkaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?} ({})", self.code())
    }
}

impl std::error::Error for KafkaError {}

/// A topic partition.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: &str, partition: i32) -> Self {
        Self {
            topic: topic.to_string(),
            partition,
        }
    }
}

/// A record header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub key: String,
    pub value: Vec<u8>,
}

/// A record as produced: key, value, headers.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Record {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<Header>,
}

impl Record {
    /// A record with a value and no key or headers.
    pub fn value(value: &[u8]) -> Self {
        Self {
            value: Some(value.to_vec()),
            ..Self::default()
        }
    }

    /// LogStream's fence record: no key or value, one [`FENCE_HEADER`].
    pub fn fence() -> Self {
        Self {
            headers: vec![Header {
                key: FENCE_HEADER.to_string(),
                value: Vec::new(),
            }],
            ..Self::default()
        }
    }

    /// Whether consumers of LogStream outputs skip this record.
    pub fn is_fence(&self) -> bool {
        self.headers.iter().any(|h| h.key == FENCE_HEADER)
    }
}

/// The marker of a control batch (`ControlRecordType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlType {
    Abort,
    Commit,
}

/// How a transaction ends (`TransactionResult`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxnResult {
    Abort,
    Commit,
}

/// A batch in a partition's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    pub base_offset: Offset,
    pub producer_id: ProducerId,
    pub producer_epoch: ProducerEpoch,
    /// [`NO_SEQUENCE`] for control batches.
    pub base_sequence: Sequence,
    /// Data records; empty for a control batch, which takes one offset.
    pub records: Vec<Record>,
    /// `Some` for a control batch (a transaction marker).
    pub control: Option<ControlType>,
}

impl Batch {
    /// Offsets the batch takes in the log.
    pub fn offset_count(&self) -> Offset {
        if self.control.is_some() {
            1
        } else {
            self.records.len() as Offset
        }
    }

    /// Whether this is a data batch holding a fence record.
    pub fn is_fence(&self) -> bool {
        self.control.is_none() && self.records.iter().any(Record::is_fence)
    }
}

/// One idempotent produce request for one partition (one batch).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProduceRequest {
    pub tp: TopicPartition,
    pub producer_id: ProducerId,
    pub producer_epoch: ProducerEpoch,
    pub base_sequence: Sequence,
    pub records: Vec<Record>,
}

/// A successful produce answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Produced {
    pub base_offset: Offset,
    /// The batch was a retry of one of the last [`NUM_BATCHES_TO_RETAIN`]
    /// batches: nothing was appended, `base_offset` is the original's.
    pub duplicate: bool,
}

/// A producer id and epoch, as `InitProducerId` answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProducerIdAndEpoch {
    pub producer_id: ProducerId,
    pub epoch: ProducerEpoch,
}

/// A data record as a consumer reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadRecord {
    pub offset: Offset,
    pub producer_id: ProducerId,
    pub producer_epoch: ProducerEpoch,
    pub record: Record,
}

/// Transaction states of `TransactionState` that this model reaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxnState {
    Empty,
    Ongoing,
    PrepareAbort,
    PrepareCommit,
    CompleteAbort,
    CompleteCommit,
}

/// What the coordinator holds for a transactional id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnDescription {
    pub producer_id: ProducerId,
    pub epoch: ProducerEpoch,
    pub state: TxnState,
    /// Partitions of the ongoing transaction, or whose markers are still
    /// to be written (`Prepare*`).
    pub partitions: BTreeSet<TopicPartition>,
}

/// The sequence `count` records after `sequence`, wrapping from
/// `i32::MAX` to 0 (`DefaultRecordBatch.incrementSequence`).
pub fn increment_sequence(sequence: Sequence, count: i32) -> Sequence {
    if sequence > i32::MAX - count {
        count - (i32::MAX - sequence) - 1
    } else {
        sequence + count
    }
}

/// `ProducerAppendInfo.inSequence`.
fn in_sequence(last: Sequence, next: Sequence) -> bool {
    i64::from(next) == i64::from(last) + 1 || (next == 0 && last == i32::MAX)
}

/// `TransactionMetadata.isEpochExhausted`.
fn epoch_exhausted(epoch: ProducerEpoch) -> bool {
    epoch >= EXHAUSTED_PRODUCER_EPOCH
}

/// Sequence range and offset of a retained batch (`BatchMetadata`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct BatchMetadata {
    first_seq: Sequence,
    last_seq: Sequence,
    base_offset: Offset,
}

/// A partition's state for one producer id (`ProducerStateEntry`).
#[derive(Clone, Debug, PartialEq, Eq)]
struct ProducerStateEntry {
    epoch: ProducerEpoch,
    batches: VecDeque<BatchMetadata>,
}

impl ProducerStateEntry {
    fn empty() -> Self {
        Self {
            epoch: NO_PRODUCER_EPOCH,
            batches: VecDeque::new(),
        }
    }

    fn last_seq(&self) -> Sequence {
        self.batches.back().map_or(NO_SEQUENCE, |b| b.last_seq)
    }

    /// `maybeUpdateProducerEpoch`: a new epoch forgets the old batches.
    fn update_epoch(&mut self, epoch: ProducerEpoch) {
        if self.epoch != epoch {
            self.batches.clear();
            self.epoch = epoch;
        }
    }

    /// `addBatch` / `addBatchMetadata`.
    fn add_batch(&mut self, epoch: ProducerEpoch, batch: BatchMetadata) {
        self.update_epoch(epoch);
        if self.batches.len() == NUM_BATCHES_TO_RETAIN {
            self.batches.pop_front();
        }
        self.batches.push_back(batch);
    }

    /// `findDuplicateBatch`: same epoch and exactly the same range.
    fn find_duplicate(
        &self,
        epoch: ProducerEpoch,
        first: Sequence,
        last: Sequence,
    ) -> Option<Offset> {
        if epoch != self.epoch {
            return None;
        }
        self.batches
            .iter()
            .find(|b| b.first_seq == first && b.last_seq == last)
            .map(|b| b.base_offset)
    }
}

#[derive(Clone, Debug, Default)]
struct PartitionState {
    log: Vec<Batch>,
    log_end: Offset,
    producers: BTreeMap<ProducerId, ProducerStateEntry>,
}

impl PartitionState {
    /// Append `batch` at the log end; returns its base offset.
    fn append(&mut self, mut batch: Batch) -> Offset {
        let base_offset = self.log_end;
        batch.base_offset = base_offset;
        self.log_end += batch.offset_count();
        self.log.push(batch);
        base_offset
    }
}

/// `TransactionMetadata`, reduced to what fencing needs.
#[derive(Clone, Debug)]
struct TxnMetadata {
    producer_id: ProducerId,
    epoch: ProducerEpoch,
    state: TxnState,
    partitions: BTreeSet<TopicPartition>,
}

impl TxnMetadata {
    /// `Ongoing` → `Prepare*`, or straight to `Complete*` when no
    /// partition awaits a marker.
    fn prepare_end(&mut self, result: TxnResult) {
        self.state = match (result, self.partitions.is_empty()) {
            (TxnResult::Abort, false) => TxnState::PrepareAbort,
            (TxnResult::Commit, false) => TxnState::PrepareCommit,
            (TxnResult::Abort, true) => TxnState::CompleteAbort,
            (TxnResult::Commit, true) => TxnState::CompleteCommit,
        };
    }
}

/// What the coordinator knows of a producer id (for [`EpochCheck::Global`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ProducerIdStanding {
    /// The current producer id of a transactional id, at this epoch.
    Current(ProducerEpoch),
    /// A producer id its transactional id rotated away from.
    Retired,
    /// Not handed out by the coordinator (a plain idempotent producer).
    Unknown,
}

/// A single-node broker; see the module docs.
#[derive(Clone, Debug)]
pub struct Broker {
    config: BrokerConfig,
    partitions: BTreeMap<TopicPartition, PartitionState>,
    transactions: BTreeMap<String, TxnMetadata>,
    /// Every producer id handed out, to its transactional id.
    producer_ids: BTreeMap<ProducerId, String>,
    next_producer_id: ProducerId,
}

impl Broker {
    pub fn new(config: BrokerConfig) -> Self {
        Self {
            config,
            partitions: BTreeMap::new(),
            transactions: BTreeMap::new(),
            producer_ids: BTreeMap::new(),
            next_producer_id: FIRST_PRODUCER_ID,
        }
    }

    pub fn config(&self) -> BrokerConfig {
        self.config
    }

    /// Create `topic` with partitions `0..partitions` (no-op for existing).
    pub fn create_topic(&mut self, topic: &str, partitions: i32) {
        for partition in 0..partitions {
            self.partitions
                .entry(TopicPartition::new(topic, partition))
                .or_default();
        }
    }

    // ----- transaction coordinator -----

    /// `InitProducerId` with a transactional id and no expected producer
    /// id and epoch (what LogStream sends), after
    /// `TransactionCoordinator.handleInitProducerId` and
    /// `prepareInitProducerIdTransit`:
    /// - an unknown id gets a new producer id at epoch 0;
    /// - `Empty` / `Complete*`: the epoch is bumped
    ///   (`prepareIncrementProducerEpoch`), or, once it is exhausted, a new
    ///   producer id at epoch 0 (`prepareProducerIdRotation`);
    /// - `Ongoing`: the epoch is bumped and the transaction aborted by the
    ///   coordinator (`prepareFenceProducerEpoch`, markers at the bumped
    ///   epoch, to be delivered), answering `CONCURRENT_TRANSACTIONS`: the
    ///   caller retries and gets one more bump;
    /// - `Prepare*` (markers still being written): `CONCURRENT_TRANSACTIONS`.
    pub fn init_producer_id(&mut self, txn_id: &str) -> Result<ProducerIdAndEpoch, KafkaError> {
        if txn_id.is_empty() {
            return Err(KafkaError::InvalidRequest);
        }
        if !self.transactions.contains_key(txn_id) {
            let producer_id = self.allocate_producer_id(txn_id);
            self.transactions.insert(
                txn_id.to_string(),
                TxnMetadata {
                    producer_id,
                    epoch: NO_PRODUCER_EPOCH,
                    state: TxnState::Empty,
                    partitions: BTreeSet::new(),
                },
            );
        }
        let state = self.transactions[txn_id].state;
        match state {
            TxnState::PrepareAbort | TxnState::PrepareCommit => {
                Err(KafkaError::ConcurrentTransactions)
            }
            TxnState::Ongoing => {
                let txn = self.transactions.get_mut(txn_id).expect("looked up");
                txn.epoch += 1;
                txn.prepare_end(TxnResult::Abort);
                Err(KafkaError::ConcurrentTransactions)
            }
            TxnState::Empty | TxnState::CompleteAbort | TxnState::CompleteCommit => {
                let exhausted = epoch_exhausted(self.transactions[txn_id].epoch);
                let new_id = exhausted.then(|| self.allocate_producer_id(txn_id));
                let txn = self.transactions.get_mut(txn_id).expect("looked up");
                match new_id {
                    Some(producer_id) => {
                        txn.producer_id = producer_id;
                        txn.epoch = 0;
                    }
                    // NO_PRODUCER_EPOCH (-1) + 1 is 0 for a new id.
                    None => txn.epoch += 1,
                }
                txn.state = TxnState::Empty;
                txn.partitions.clear();
                Ok(ProducerIdAndEpoch {
                    producer_id: txn.producer_id,
                    epoch: txn.epoch,
                })
            }
        }
    }

    /// Test hook: set the current epoch of a transactional id that has
    /// been initialised, as if it had been fenced that many times (so that
    /// exhaustion is reachable). Panics for an unknown id.
    pub fn set_producer_epoch(&mut self, txn_id: &str, epoch: ProducerEpoch) {
        self.transactions
            .get_mut(txn_id)
            .expect("set_producer_epoch: transactional id not initialised")
            .epoch = epoch;
    }

    /// `AddPartitionsToTxn` from a client (versions ≤ 3), after
    /// `TransactionCoordinator.handleAddPartitionsToTransaction`.
    pub fn add_partitions_to_txn(
        &mut self,
        txn_id: &str,
        producer: ProducerIdAndEpoch,
        partitions: &[TopicPartition],
    ) -> Result<(), KafkaError> {
        if !self.config.supports_transactions {
            return Err(KafkaError::UnsupportedVersion);
        }
        if txn_id.is_empty() {
            return Err(KafkaError::InvalidRequest);
        }
        if partitions
            .iter()
            .any(|tp| !self.partitions.contains_key(tp))
        {
            return Err(KafkaError::UnknownTopicOrPartition);
        }
        let txn = self
            .transactions
            .get_mut(txn_id)
            .ok_or(KafkaError::InvalidProducerIdMapping)?;
        if txn.producer_id != producer.producer_id {
            return Err(KafkaError::InvalidProducerIdMapping);
        }
        if txn.epoch != producer.epoch {
            return Err(KafkaError::ProducerFenced);
        }
        match txn.state {
            TxnState::PrepareAbort | TxnState::PrepareCommit => {
                Err(KafkaError::ConcurrentTransactions)
            }
            TxnState::Empty
            | TxnState::Ongoing
            | TxnState::CompleteAbort
            | TxnState::CompleteCommit => {
                if txn.state != TxnState::Ongoing {
                    txn.partitions.clear();
                }
                txn.partitions.extend(partitions.iter().cloned());
                txn.state = TxnState::Ongoing;
                Ok(())
            }
        }
    }

    /// `EndTxn` from a client, after `TransactionCoordinator.endTransaction`
    /// (transaction versions 0/1). From `Ongoing` the transaction moves to
    /// `Prepare*` and the answer is `NONE` *before* any marker is written:
    /// Kafka answers the client, then hands the markers to
    /// `TransactionMarkerChannelManager`. Markers reach the partitions
    /// through [`deliver_marker`](Self::deliver_marker); until the last
    /// one is written, `EndTxn` again answers `CONCURRENT_TRANSACTIONS`,
    /// then `NONE` (`Complete*` with the same result), which is how a
    /// caller waits for them.
    pub fn end_txn(
        &mut self,
        txn_id: &str,
        producer: ProducerIdAndEpoch,
        result: TxnResult,
    ) -> Result<(), KafkaError> {
        if !self.config.supports_transactions {
            return Err(KafkaError::UnsupportedVersion);
        }
        if txn_id.is_empty() {
            return Err(KafkaError::InvalidRequest);
        }
        let txn = self
            .transactions
            .get_mut(txn_id)
            .ok_or(KafkaError::InvalidProducerIdMapping)?;
        if txn.producer_id != producer.producer_id {
            return Err(KafkaError::InvalidProducerIdMapping);
        }
        if txn.epoch != producer.epoch {
            return Err(KafkaError::ProducerFenced);
        }
        match (txn.state, result) {
            (TxnState::Ongoing, result) => {
                txn.prepare_end(result);
                Ok(())
            }
            (TxnState::CompleteAbort, TxnResult::Abort)
            | (TxnState::CompleteCommit, TxnResult::Commit) => Ok(()),
            (TxnState::PrepareAbort, TxnResult::Abort)
            | (TxnState::PrepareCommit, TxnResult::Commit) => {
                Err(KafkaError::ConcurrentTransactions)
            }
            _ => Err(KafkaError::InvalidTxnState),
        }
    }

    /// Partitions whose transaction marker for `txn_id` is still to be
    /// written (empty unless the transaction is `Prepare*`).
    pub fn pending_markers(&self, txn_id: &str) -> Vec<TopicPartition> {
        match self.transactions.get(txn_id) {
            Some(txn) if matches!(txn.state, TxnState::PrepareAbort | TxnState::PrepareCommit) => {
                txn.partitions.iter().cloned().collect()
            }
            _ => Vec::new(),
        }
    }

    /// The coordinator's background work for one partition: write the
    /// marker of `txn_id`'s ending transaction to `tp` (a control batch at
    /// the coordinator's epoch, `ProducerAppendInfo.appendEndTxnMarker`);
    /// after the last partition, the transaction is `Complete*`. Returns
    /// whether a marker was pending for `tp`.
    pub fn deliver_marker(
        &mut self,
        txn_id: &str,
        tp: &TopicPartition,
    ) -> Result<bool, KafkaError> {
        let Some(txn) = self.transactions.get_mut(txn_id) else {
            return Ok(false);
        };
        let marker = match txn.state {
            TxnState::PrepareAbort => ControlType::Abort,
            TxnState::PrepareCommit => ControlType::Commit,
            _ => return Ok(false),
        };
        if !txn.partitions.remove(tp) {
            return Ok(false);
        }
        let (producer_id, epoch) = (txn.producer_id, txn.epoch);
        if txn.partitions.is_empty() {
            txn.state = match marker {
                ControlType::Abort => TxnState::CompleteAbort,
                ControlType::Commit => TxnState::CompleteCommit,
            };
        }
        let partition = self
            .partitions
            .get_mut(tp)
            .ok_or(KafkaError::UnknownTopicOrPartition)?;
        let entry = partition
            .producers
            .entry(producer_id)
            .or_insert_with(ProducerStateEntry::empty);
        // checkProducerEpoch for transaction versions 0/1: refused only
        // below the partition's epoch.
        if epoch < entry.epoch {
            return Err(KafkaError::InvalidProducerEpoch);
        }
        // ProducerStateEntry.update(epoch, ...): a new epoch clears the
        // retained batches; the same epoch keeps them (and the next data
        // batch of that epoch continues their sequence).
        entry.update_epoch(epoch);
        partition.append(Batch {
            base_offset: 0,
            producer_id,
            producer_epoch: epoch,
            base_sequence: NO_SEQUENCE,
            records: Vec::new(),
            control: Some(marker),
        });
        Ok(true)
    }

    /// Deliver every pending marker of `txn_id`, in partition order.
    pub fn deliver_markers(&mut self, txn_id: &str) -> Result<(), KafkaError> {
        for tp in self.pending_markers(txn_id) {
            self.deliver_marker(txn_id, &tp)?;
        }
        Ok(())
    }

    /// The coordinator's view of a transactional id (`DescribeTransactions`).
    pub fn describe_transaction(&self, txn_id: &str) -> Option<TxnDescription> {
        self.transactions.get(txn_id).map(|txn| TxnDescription {
            producer_id: txn.producer_id,
            epoch: txn.epoch,
            state: txn.state,
            partitions: txn.partitions.clone(),
        })
    }

    fn allocate_producer_id(&mut self, txn_id: &str) -> ProducerId {
        let id = self.next_producer_id;
        self.next_producer_id += 1;
        self.producer_ids.insert(id, txn_id.to_string());
        id
    }

    fn standing(&self, producer_id: ProducerId) -> ProducerIdStanding {
        let Some(txn_id) = self.producer_ids.get(&producer_id) else {
            return ProducerIdStanding::Unknown;
        };
        match self.transactions.get(txn_id) {
            Some(txn) if txn.producer_id == producer_id => ProducerIdStanding::Current(txn.epoch),
            _ => ProducerIdStanding::Retired,
        }
    }

    // ----- partitions -----

    /// Append one idempotent data batch, answering like Kafka's partition
    /// leader (`UnifiedLog.analyzeAndValidateProducerState`, then
    /// `ProducerAppendInfo.appendDataBatch`):
    /// 1. with [`EpochCheck::Global`] only: an epoch below the
    ///    coordinator's current one for the producer id, or a producer id
    ///    rotated away from, is refused (`INVALID_PRODUCER_EPOCH`). Checked
    ///    before the duplicate lookup, so a fenced retry is refused rather
    ///    than answered as a duplicate (nothing is appended either way);
    ///    the order and the error name are this model's assumptions, not
    ///    read from tansu's source;
    /// 2. a batch of the partition's current epoch for the producer id
    ///    with the sequence range of one of the last
    ///    [`NUM_BATCHES_TO_RETAIN`] is a duplicate: answered with the
    ///    original's offset, nothing appended (`findDuplicateBatch`);
    /// 3. `checkProducerEpoch`: below the partition's epoch for the
    ///    producer id → `INVALID_PRODUCER_EPOCH`;
    /// 4. `checkSequence`: a new epoch must start at sequence 0 unless the
    ///    partition knows no epoch for the producer id; the same epoch must
    ///    continue at last sequence + 1 → else `OUT_OF_ORDER_SEQUENCE_NUMBER`.
    pub fn produce(&mut self, request: ProduceRequest) -> Result<Produced, KafkaError> {
        if request.records.is_empty() || request.base_sequence < 0 || request.producer_epoch < 0 {
            return Err(KafkaError::InvalidRecord);
        }
        if self.config.epoch_check == EpochCheck::Global {
            match self.standing(request.producer_id) {
                ProducerIdStanding::Current(epoch) if request.producer_epoch < epoch => {
                    return Err(KafkaError::InvalidProducerEpoch)
                }
                ProducerIdStanding::Retired => return Err(KafkaError::InvalidProducerEpoch),
                _ => {}
            }
        }
        let partition = self
            .partitions
            .get_mut(&request.tp)
            .ok_or(KafkaError::UnknownTopicOrPartition)?;
        let count = i32::try_from(request.records.len()).map_err(|_| KafkaError::InvalidRecord)?;
        let first_seq = request.base_sequence;
        let last_seq = increment_sequence(first_seq, count - 1);
        let epoch = request.producer_epoch;
        let entry = partition
            .producers
            .get(&request.producer_id)
            .cloned()
            .unwrap_or_else(ProducerStateEntry::empty);

        if let Some(base_offset) = entry.find_duplicate(epoch, first_seq, last_seq) {
            return Ok(Produced {
                base_offset,
                duplicate: true,
            });
        }
        // checkProducerEpoch (data batches: transaction version unknown,
        // strict "below" comparison).
        if epoch < entry.epoch {
            return Err(KafkaError::InvalidProducerEpoch);
        }
        // checkSequence.
        if epoch != entry.epoch {
            if first_seq != 0 && entry.epoch != NO_PRODUCER_EPOCH {
                return Err(KafkaError::OutOfOrderSequenceNumber);
            }
        } else if !in_sequence(entry.last_seq(), first_seq) {
            return Err(KafkaError::OutOfOrderSequenceNumber);
        }

        let base_offset = partition.append(Batch {
            base_offset: 0,
            producer_id: request.producer_id,
            producer_epoch: epoch,
            base_sequence: first_seq,
            records: request.records,
            control: None,
        });
        partition
            .producers
            .entry(request.producer_id)
            .or_insert_with(ProducerStateEntry::empty)
            .add_batch(
                epoch,
                BatchMetadata {
                    first_seq,
                    last_seq,
                    base_offset,
                },
            );
        Ok(Produced {
            base_offset,
            duplicate: false,
        })
    }

    // ----- read side -----

    /// The high watermark of `tp`: with one replica and acks=all, the log
    /// end offset (control batches included). `None` for an unknown
    /// partition.
    pub fn high_watermark(&self, tp: &TopicPartition) -> Option<Offset> {
        self.partitions.get(tp).map(|p| p.log_end)
    }

    /// The data records of `tp` from `from_offset` on, as a consumer sees
    /// them: control batches are skipped; fence records are returned
    /// (recognisable by [`Record::is_fence`]) as Kafka returns them.
    pub fn read(&self, tp: &TopicPartition, from_offset: Offset) -> Vec<ReadRecord> {
        let Some(partition) = self.partitions.get(tp) else {
            return Vec::new();
        };
        partition
            .log
            .iter()
            .filter(|b| b.control.is_none())
            .flat_map(|b| {
                b.records
                    .iter()
                    .enumerate()
                    .map(move |(i, record)| ReadRecord {
                        offset: b.base_offset + i as Offset,
                        producer_id: b.producer_id,
                        producer_epoch: b.producer_epoch,
                        record: record.clone(),
                    })
            })
            .filter(|r| r.offset >= from_offset)
            .collect()
    }

    /// Every batch of `tp`'s log, control batches included.
    pub fn log(&self, tp: &TopicPartition) -> &[Batch] {
        self.partitions.get(tp).map_or(&[], |p| p.log.as_slice())
    }

    /// The epoch `tp` last saw for `producer_id` (`None`: no state).
    pub fn partition_epoch(
        &self,
        tp: &TopicPartition,
        producer_id: ProducerId,
    ) -> Option<ProducerEpoch> {
        self.partitions
            .get(tp)?
            .producers
            .get(&producer_id)
            .map(|e| e.epoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TXN: &str = "logstream/proc/0";
    const TOPIC: &str = "out";

    fn p0() -> TopicPartition {
        TopicPartition::new(TOPIC, 0)
    }

    fn p1() -> TopicPartition {
        TopicPartition::new(TOPIC, 1)
    }

    fn new_broker(config: BrokerConfig) -> Broker {
        let mut broker = Broker::new(config);
        broker.create_topic(TOPIC, 2);
        broker
    }

    fn request(
        id: ProducerIdAndEpoch,
        tp: &TopicPartition,
        seq: Sequence,
        values: &[&str],
    ) -> ProduceRequest {
        ProduceRequest {
            tp: tp.clone(),
            producer_id: id.producer_id,
            producer_epoch: id.epoch,
            base_sequence: seq,
            records: values.iter().map(|v| Record::value(v.as_bytes())).collect(),
        }
    }

    fn fence_record(id: ProducerIdAndEpoch, tp: &TopicPartition) -> ProduceRequest {
        ProduceRequest {
            records: vec![Record::fence()],
            ..request(id, tp, 0, &[])
        }
    }

    /// Leader A at epoch e wrote "a1" to P and has "a2" in flight; then B
    /// takes the transactional id over (`InitProducerId`, epoch e + 1).
    fn a_wrote_then_b_took_over(broker: &mut Broker) -> (ProducerIdAndEpoch, ProducerIdAndEpoch) {
        let a = broker.init_producer_id(TXN).unwrap();
        assert_eq!(a.epoch, 0);
        broker.produce(request(a, &p0(), 0, &["a1"])).unwrap();
        let b = broker.init_producer_id(TXN).unwrap();
        assert_eq!((b.producer_id, b.epoch), (a.producer_id, a.epoch + 1));
        (a, b)
    }

    // Scenario: tansu (global check). A's in-flight batch arrives after
    // B's InitProducerId: refused, nothing appended.
    #[test]
    fn global_check_refuses_the_zombie_batch_after_init_producer_id() {
        let mut broker = new_broker(BrokerConfig::TANSU);
        let (a, _b) = a_wrote_then_b_took_over(&mut broker);
        assert_eq!(
            broker.produce(request(a, &p0(), 1, &["a2"])),
            Err(KafkaError::InvalidProducerEpoch)
        );
        // Also on a partition A never wrote.
        assert_eq!(
            broker.produce(request(a, &p1(), 0, &["a2"])),
            Err(KafkaError::InvalidProducerEpoch)
        );
        assert_eq!(broker.high_watermark(&p0()), Some(1));
        assert_eq!(broker.high_watermark(&p1()), Some(0));
    }

    // Scenario: Apache Kafka with today's fence (InitProducerId only). P
    // never saw epoch e + 1, so A's old-epoch batch is appended after B
    // read the tail back: B will replay "a2" and the output holds it twice.
    // This is the bug of issue 13.
    #[test]
    fn per_partition_check_appends_the_zombie_batch_after_the_read_back() {
        let mut broker = new_broker(BrokerConfig::APACHE_KAFKA);
        let (a, b) = a_wrote_then_b_took_over(&mut broker);
        let read_back_end = broker.high_watermark(&p0()).unwrap();
        let read_back: Vec<_> = broker.read(&p0(), 0);
        assert_eq!(read_back.len(), 1);

        let late = broker.produce(request(a, &p0(), 1, &["a2"])).unwrap();
        assert!(!late.duplicate);
        assert!(
            late.base_offset >= read_back_end,
            "appended above the read-back"
        );
        assert!(a.epoch < b.epoch);
        assert_eq!(broker.partition_epoch(&p0(), a.producer_id), Some(a.epoch));
        // The same holds on a partition A had never written (no state: any
        // epoch and sequence is taken).
        assert!(broker.produce(request(a, &p1(), 0, &["a3"])).is_ok());
        // B replays from its checkpoint and produces "a2" again: a duplicate.
        broker.produce(request(b, &p0(), 0, &["a2"])).unwrap();
        let values: Vec<_> = broker
            .read(&p0(), 0)
            .into_iter()
            .filter_map(|r| r.record.value)
            .collect();
        assert_eq!(values, [b"a1".to_vec(), b"a2".to_vec(), b"a2".to_vec()]);
    }

    // Scenario: Apache Kafka, fix by fence record. B writes a batch at
    // e + 1, sequence 0, header `logstream-fence` to P before reading back:
    // A's batch is refused; the fence record stays in the log.
    #[test]
    fn fence_record_makes_the_partition_refuse_the_zombie_batch() {
        let mut broker = new_broker(BrokerConfig::APACHE_KAFKA);
        let (a, b) = a_wrote_then_b_took_over(&mut broker);
        let fenced = broker.produce(fence_record(b, &p0())).unwrap();
        assert_eq!(fenced.base_offset, 1);
        let read_back_end = broker.high_watermark(&p0()).unwrap();

        assert_eq!(
            broker.produce(request(a, &p0(), 1, &["a2"])),
            Err(KafkaError::InvalidProducerEpoch)
        );
        assert_eq!(broker.high_watermark(&p0()), Some(read_back_end));
        let records = broker.read(&p0(), 0);
        assert_eq!(records.len(), 2);
        assert!(records[1].record.is_fence());
        assert!(broker.log(&p0())[1].is_fence());
        // B goes on after its fence record, at sequence 1.
        assert!(broker.produce(request(b, &p0(), 1, &["b1"])).is_ok());
    }

    /// B fences P by an empty transaction: AddPartitionsToTxn + EndTxn(abort).
    fn abort_empty_transaction(broker: &mut Broker, b: ProducerIdAndEpoch, tps: &[TopicPartition]) {
        broker.add_partitions_to_txn(TXN, b, tps).unwrap();
        broker.end_txn(TXN, b, TxnResult::Abort).unwrap();
    }

    // Scenario: Apache Kafka, fix by an aborted empty transaction, waiting
    // for the markers (EndTxn again answers NONE only once they are
    // written): the ABORT marker at e + 1 makes P refuse A's batch, and no
    // consumer sees anything of it.
    #[test]
    fn aborted_empty_transaction_makes_the_partition_refuse_the_zombie_batch() {
        let mut broker = new_broker(BrokerConfig::APACHE_KAFKA);
        let (a, b) = a_wrote_then_b_took_over(&mut broker);
        abort_empty_transaction(&mut broker, b, &[p0(), p1()]);
        assert_eq!(
            broker.end_txn(TXN, b, TxnResult::Abort),
            Err(KafkaError::ConcurrentTransactions),
            "markers still pending"
        );
        broker.deliver_markers(TXN).unwrap();
        assert_eq!(broker.end_txn(TXN, b, TxnResult::Abort), Ok(()));
        assert_eq!(
            broker.describe_transaction(TXN).unwrap().state,
            TxnState::CompleteAbort
        );

        assert_eq!(
            broker.produce(request(a, &p0(), 1, &["a2"])),
            Err(KafkaError::InvalidProducerEpoch)
        );
        assert_eq!(
            broker.produce(request(a, &p1(), 0, &["a2"])),
            Err(KafkaError::InvalidProducerEpoch)
        );
        let marker = &broker.log(&p0())[1];
        assert_eq!(marker.control, Some(ControlType::Abort));
        assert_eq!(marker.producer_epoch, b.epoch);
        assert_eq!(
            broker.high_watermark(&p0()),
            Some(2),
            "the marker takes an offset"
        );
        assert_eq!(broker.read(&p0(), 0).len(), 1, "only a1 is visible");
        assert!(broker.read(&p1(), 0).is_empty());
        // B's first data batch at e + 1 starts at sequence 0.
        assert!(broker.produce(request(b, &p0(), 0, &["b1"])).is_ok());
    }

    // Scenario: Apache Kafka, aborted empty transaction *without* waiting
    // for the markers. EndTxn answers before the coordinator writes them,
    // so A's batch can still land on P between the answer and the marker.
    #[test]
    fn end_txn_answers_before_the_markers_are_written() {
        let mut broker = new_broker(BrokerConfig::APACHE_KAFKA);
        let (a, b) = a_wrote_then_b_took_over(&mut broker);
        abort_empty_transaction(&mut broker, b, &[p0()]);
        assert_eq!(broker.pending_markers(TXN), [p0()]);
        let read_back_end = broker.high_watermark(&p0()).unwrap();
        let late = broker.produce(request(a, &p0(), 1, &["a2"])).unwrap();
        assert!(late.base_offset >= read_back_end);
        // The marker, written afterwards, is at a higher epoch: accepted.
        assert_eq!(broker.deliver_marker(TXN, &p0()), Ok(true));
        assert_eq!(broker.partition_epoch(&p0(), a.producer_id), Some(b.epoch));
    }

    // Scenario: tansu has no EndTxn: the fallback must pick the fence record.
    #[test]
    fn broker_without_transactions_answers_unsupported_version() {
        let mut broker = new_broker(BrokerConfig::TANSU);
        let (_a, b) = a_wrote_then_b_took_over(&mut broker);
        assert_eq!(
            broker.add_partitions_to_txn(TXN, b, &[p0()]),
            Err(KafkaError::UnsupportedVersion)
        );
        assert_eq!(
            broker.end_txn(TXN, b, TxnResult::Abort),
            Err(KafkaError::UnsupportedVersion)
        );
        assert!(broker.produce(fence_record(b, &p0())).is_ok());
    }

    // Scenario: idempotence. A retried batch is answered with the original
    // offset and not appended; a gap is out of order; a new epoch starts
    // at 0; only the last five batches are remembered.
    #[test]
    fn sequence_checks_follow_kafka() {
        for config in [BrokerConfig::APACHE_KAFKA, BrokerConfig::TANSU] {
            let mut broker = new_broker(config);
            let a = broker.init_producer_id(TXN).unwrap();
            let first = broker.produce(request(a, &p0(), 0, &["x", "y"])).unwrap();
            assert_eq!(
                first,
                Produced {
                    base_offset: 0,
                    duplicate: false
                }
            );
            broker.produce(request(a, &p0(), 2, &["z"])).unwrap();
            // Retry of the first batch (sequences 0..=1).
            assert_eq!(
                broker.produce(request(a, &p0(), 0, &["x", "y"])),
                Ok(Produced {
                    base_offset: 0,
                    duplicate: true
                })
            );
            assert_eq!(broker.high_watermark(&p0()), Some(3));
            // A different range over the same sequences is no duplicate.
            assert_eq!(
                broker.produce(request(a, &p0(), 1, &["y"])),
                Err(KafkaError::OutOfOrderSequenceNumber)
            );
            // A gap.
            assert_eq!(
                broker.produce(request(a, &p0(), 5, &["w"])),
                Err(KafkaError::OutOfOrderSequenceNumber)
            );
            // Five more batches: the first one is forgotten, its retry is
            // out of order instead of a duplicate.
            for seq in 3..8 {
                broker.produce(request(a, &p0(), seq, &["v"])).unwrap();
            }
            assert_eq!(
                broker.produce(request(a, &p0(), 2, &["z"])),
                Err(KafkaError::OutOfOrderSequenceNumber)
            );
            assert!(
                broker
                    .produce(request(a, &p0(), 3, &["v"]))
                    .unwrap()
                    .duplicate
            );
            // A new epoch must start at sequence 0 on a partition that knows
            // the producer id, at any sequence on one that does not.
            let b = broker.init_producer_id(TXN).unwrap();
            assert_eq!(
                broker.produce(request(b, &p0(), 8, &["b"])),
                Err(KafkaError::OutOfOrderSequenceNumber)
            );
            assert!(broker.produce(request(b, &p0(), 0, &["b"])).is_ok());
            assert!(broker.produce(request(b, &p1(), 42, &["b"])).is_ok());
            // The old epoch's retry is refused now that P saw e + 1.
            assert_eq!(
                broker.produce(request(a, &p0(), 3, &["v"])),
                Err(KafkaError::InvalidProducerEpoch),
                "{config:?}"
            );
        }
    }

    #[test]
    fn sequences_wrap_like_kafka() {
        assert_eq!(increment_sequence(0, 1), 1);
        assert_eq!(increment_sequence(i32::MAX, 1), 0);
        assert_eq!(increment_sequence(i32::MAX - 1, 3), 1);
        assert!(in_sequence(i32::MAX, 0));
        assert!(!in_sequence(NO_SEQUENCE, 1));
        assert!(in_sequence(NO_SEQUENCE, 0));
    }

    // Scenario: epoch exhaustion. InitProducerId at an exhausted epoch
    // hands out a new producer id at epoch 0. Apache Kafka keeps producer
    // state per producer id *and* partition, so nothing the new id writes
    // fences the old one: a zombie of the old id is still appended, unless
    // the old id's last epoch reached the partition first (a fence record
    // written under the old id before moving on). LogStream moves to a
    // fresh transactional id before exhaustion (`LAST_PRODUCER_EPOCH` in
    // `fenced.rs`), which is the same situation: the old id must be fenced
    // on every partition before the move.
    #[test]
    fn exhausted_epoch_rotates_the_producer_id_and_fences_nothing_per_partition() {
        let mut broker = new_broker(BrokerConfig::APACHE_KAFKA);
        let first = broker.init_producer_id(TXN).unwrap();
        broker.set_producer_epoch(TXN, EXHAUSTED_PRODUCER_EPOCH - 2);
        let zombie = broker.init_producer_id(TXN).unwrap();
        assert_eq!(zombie.epoch, EXHAUSTED_PRODUCER_EPOCH - 1);
        let last = broker.init_producer_id(TXN).unwrap();
        assert_eq!(
            last,
            ProducerIdAndEpoch {
                producer_id: first.producer_id,
                epoch: EXHAUSTED_PRODUCER_EPOCH
            }
        );
        let rotated = broker.init_producer_id(TXN).unwrap();
        assert_eq!(rotated.epoch, 0);
        assert_ne!(rotated.producer_id, first.producer_id);

        // The new id's fence record says nothing about the old id.
        broker.produce(fence_record(rotated, &p0())).unwrap();
        assert!(broker.produce(request(zombie, &p0(), 0, &["z"])).is_ok());
        // The old id's last epoch, written to P1 before the move, does.
        broker.produce(fence_record(last, &p1())).unwrap();
        assert_eq!(
            broker.produce(request(zombie, &p1(), 0, &["z"])),
            Err(KafkaError::InvalidProducerEpoch)
        );

        // tansu's global check refuses a producer id rotated away from.
        let mut tansu = new_broker(BrokerConfig::TANSU);
        tansu.init_producer_id(TXN).unwrap();
        tansu.set_producer_epoch(TXN, EXHAUSTED_PRODUCER_EPOCH);
        let old = tansu.describe_transaction(TXN).unwrap();
        let old = ProducerIdAndEpoch {
            producer_id: old.producer_id,
            epoch: old.epoch,
        };
        tansu.init_producer_id(TXN).unwrap();
        assert_eq!(
            tansu.produce(request(old, &p0(), 0, &["z"])),
            Err(KafkaError::InvalidProducerEpoch)
        );
    }

    // Scenario: a new leader's InitProducerId while an earlier leader's
    // fencing transaction is still open: the coordinator bumps the epoch,
    // aborts it (markers at the bumped epoch) and answers
    // CONCURRENT_TRANSACTIONS; the retry bumps once more.
    #[test]
    fn init_producer_id_aborts_an_ongoing_transaction() {
        let mut broker = new_broker(BrokerConfig::APACHE_KAFKA);
        let b = broker.init_producer_id(TXN).unwrap();
        broker.add_partitions_to_txn(TXN, b, &[p0()]).unwrap();
        assert_eq!(
            broker.init_producer_id(TXN),
            Err(KafkaError::ConcurrentTransactions)
        );
        assert_eq!(
            broker.init_producer_id(TXN),
            Err(KafkaError::ConcurrentTransactions)
        );
        assert_eq!(
            broker.end_txn(TXN, b, TxnResult::Abort),
            Err(KafkaError::ProducerFenced)
        );
        broker.deliver_markers(TXN).unwrap();
        assert_eq!(broker.log(&p0())[0].producer_epoch, b.epoch + 1);
        let c = broker.init_producer_id(TXN).unwrap();
        assert_eq!(c.epoch, b.epoch + 2);
    }

    /// Deterministic schedules of several leaders taking the unit over,
    /// for the property tests below.
    mod schedule {
        use super::*;

        /// How a new leader fences before reading back.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Fence {
            /// `InitProducerId` only (LogStream today).
            InitOnly,
            /// A fence record on every output partition.
            Record,
            /// An aborted empty transaction over every output partition,
            /// waiting until `EndTxn` answers `NONE` again.
            AbortedTxn,
            /// The same without waiting for the markers (a wrong fix).
            AbortedTxnNoWait,
        }

        /// Leaders in a schedule; event `LEADERS` is the coordinator
        /// writing one pending marker.
        pub const LEADERS: u8 = 3;
        /// Output batches each leader produces after its read-back.
        const OUTPUT_BATCHES: usize = 4;

        #[derive(Clone, Copy, Debug)]
        enum Step {
            Init,
            FenceRecord(usize),
            AddPartitions,
            EndTxn,
            AwaitMarkers,
            ReadBack,
            Produce,
        }

        fn script(fence: Fence) -> Vec<Step> {
            let mut steps = vec![Step::Init];
            match fence {
                Fence::InitOnly => {}
                Fence::Record => steps.extend((0..outputs().len()).map(Step::FenceRecord)),
                Fence::AbortedTxn => {
                    steps.extend([Step::AddPartitions, Step::EndTxn, Step::AwaitMarkers])
                }
                Fence::AbortedTxnNoWait => steps.extend([Step::AddPartitions, Step::EndTxn]),
            }
            steps.push(Step::ReadBack);
            steps.extend([Step::Produce; OUTPUT_BATCHES]);
            steps
        }

        pub fn outputs() -> Vec<TopicPartition> {
            vec![p0(), p1()]
        }

        #[derive(Default)]
        struct Leader {
            step: usize,
            identity: Option<ProducerIdAndEpoch>,
            sequences: BTreeMap<TopicPartition, Sequence>,
            /// High watermarks at the read-back.
            read_back: Option<BTreeMap<TopicPartition, Offset>>,
            /// Refused by the broker: it stops (the host steps down).
            fenced: bool,
        }

        /// A batch appended above a leader's read-back at an epoch older
        /// than that leader's: the new leader will replay it.
        #[derive(Debug, PartialEq, Eq)]
        pub struct Duplicate {
            pub tp: TopicPartition,
            pub offset: Offset,
            pub epoch: ProducerEpoch,
            pub reader_epoch: ProducerEpoch,
        }

        /// Run `events` (leader index, partition index) on a fresh broker;
        /// return the violations of "after a leader's read-back, nothing
        /// of an older epoch is appended".
        pub fn run(config: BrokerConfig, fence: Fence, events: &[(u8, u8)]) -> Vec<Duplicate> {
            let mut broker = new_broker(config);
            let script = script(fence);
            let tps = outputs();
            let mut leaders: Vec<Leader> = (0..LEADERS).map(|_| Leader::default()).collect();
            for &(actor, partition) in events {
                let tp = &tps[usize::from(partition) % tps.len()];
                if actor >= LEADERS {
                    let pending = broker.pending_markers(TXN);
                    if let Some(tp) = pending.get(usize::from(partition) % pending.len().max(1)) {
                        broker.deliver_marker(TXN, tp).unwrap();
                    }
                    continue;
                }
                let leader = &mut leaders[usize::from(actor)];
                if leader.fenced || leader.step >= script.len() {
                    continue;
                }
                let advanced = match script[leader.step] {
                    Step::Init => match broker.init_producer_id(TXN) {
                        Ok(id) => {
                            leader.identity = Some(id);
                            Ok(true)
                        }
                        Err(KafkaError::ConcurrentTransactions) => Ok(false),
                        Err(e) => Err(e),
                    },
                    Step::FenceRecord(i) => {
                        let id = leader.identity.unwrap();
                        broker.produce(fence_record(id, &tps[i])).map(|_| {
                            leader.sequences.insert(tps[i].clone(), 1);
                            true
                        })
                    }
                    Step::AddPartitions => broker
                        .add_partitions_to_txn(TXN, leader.identity.unwrap(), &tps)
                        .map(|()| true),
                    Step::EndTxn | Step::AwaitMarkers => {
                        match broker.end_txn(TXN, leader.identity.unwrap(), TxnResult::Abort) {
                            Ok(()) => Ok(true),
                            Err(KafkaError::ConcurrentTransactions) => Ok(false),
                            Err(e) => Err(e),
                        }
                    }
                    Step::ReadBack => {
                        let marks = tps
                            .iter()
                            .map(|tp| (tp.clone(), broker.high_watermark(tp).unwrap()))
                            .collect();
                        leader.read_back = Some(marks);
                        Ok(true)
                    }
                    Step::Produce => {
                        let id = leader.identity.unwrap();
                        let seq = leader.sequences.get(tp).copied().unwrap_or(0);
                        broker.produce(request(id, tp, seq, &["out"])).map(|_| {
                            leader.sequences.insert(tp.clone(), seq + 1);
                            true
                        })
                    }
                };
                match advanced {
                    Ok(true) => leader.step += 1,
                    Ok(false) => {}
                    Err(_) => leader.fenced = true,
                }
            }
            let mut duplicates = Vec::new();
            for leader in &leaders {
                let (Some(id), Some(marks)) = (leader.identity, &leader.read_back) else {
                    continue;
                };
                for (tp, &mark) in marks {
                    for batch in broker.log(tp) {
                        if batch.control.is_none()
                            && batch.base_offset >= mark
                            && batch.producer_id == id.producer_id
                            && batch.producer_epoch < id.epoch
                        {
                            duplicates.push(Duplicate {
                                tp: tp.clone(),
                                offset: batch.base_offset,
                                epoch: batch.producer_epoch,
                                reader_epoch: id.epoch,
                            });
                        }
                    }
                }
            }
            duplicates
        }

        /// xorshift64: schedules reproducible from a seed, no dependency.
        pub fn events(seed: u64, len: usize) -> Vec<(u8, u8)> {
            let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (
                        (state % u64::from(LEADERS + 1)) as u8,
                        ((state >> 8) % 2) as u8,
                    )
                })
                .collect()
        }
    }

    use schedule::{run, Fence};

    /// Schedules tried when looking for the bug.
    const SEARCHED_SCHEDULES: u64 = 2_000;
    /// Events per searched schedule.
    const SCHEDULE_LENGTH: usize = 40;

    fn first_failing_seed(config: BrokerConfig, fence: Fence) -> Option<u64> {
        (0..SEARCHED_SCHEDULES)
            .find(|&seed| !run(config, fence, &schedule::events(seed, SCHEDULE_LENGTH)).is_empty())
    }

    // The simulator finds the bug: on Apache Kafka, today's fence and the
    // aborted transaction without waiting for its markers both let a
    // zombie's batch land above a read-back.
    #[test]
    fn random_schedules_find_the_duplicate_on_kafka_with_todays_fence() {
        assert!(first_failing_seed(BrokerConfig::APACHE_KAFKA, Fence::InitOnly).is_some());
        assert!(first_failing_seed(BrokerConfig::APACHE_KAFKA, Fence::AbortedTxnNoWait).is_some());
        // A hand-written one: leader 0 leads, leader 1 takes over and reads
        // back, leader 0's next batch lands.
        let events = [(0, 0), (0, 0), (0, 0), (1, 0), (1, 0), (0, 0)];
        let duplicates = run(BrokerConfig::APACHE_KAFKA, Fence::InitOnly, &events);
        assert_eq!(duplicates.len(), 1, "{duplicates:?}");
        assert!(run(BrokerConfig::TANSU, Fence::InitOnly, &events).is_empty());
    }

    #[test]
    fn random_schedules_find_no_duplicate_with_a_sound_fence() {
        for (config, fence) in [
            (BrokerConfig::APACHE_KAFKA, Fence::Record),
            (BrokerConfig::APACHE_KAFKA, Fence::AbortedTxn),
            (BrokerConfig::TANSU, Fence::InitOnly),
            (BrokerConfig::TANSU, Fence::Record),
        ] {
            assert_eq!(
                first_failing_seed(config, fence),
                None,
                "{config:?} {fence:?}"
            );
        }
    }

    proptest::proptest! {
        // Any interleaving of three leaders' takeovers and outputs and the
        // coordinator's markers: with the fence (record or aborted empty
        // transaction, waited for) written to every output partition
        // before the read-back, no batch of an older epoch is appended
        // above a read-back.
        #[test]
        fn fence_before_read_back_leaves_no_duplicate(
            events in proptest::collection::vec((0..=schedule::LEADERS, 0u8..2), 0..80),
            by_record in proptest::bool::ANY,
        ) {
            let fence = if by_record { Fence::Record } else { Fence::AbortedTxn };
            let duplicates = run(BrokerConfig::APACHE_KAFKA, fence, &events);
            proptest::prop_assert!(duplicates.is_empty(), "{:?}", duplicates);
        }
    }
}
