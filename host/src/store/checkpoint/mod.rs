//! Checkpoints of processor state: fenced, chunked, checksummed, with the
//! last few generations kept to fall back on.
//!
//! This module owns the `("unit", UNIT, "ckpt", …)` keys:
//!
//! | key | value |
//! |---|---|
//! | `("unit", UNIT, "ckpt", "current")` | JSON pointer: the current generation and the older kept ones, newest first |
//! | `("unit", UNIT, "ckpt", "next-gen")` | the next generation id to allocate, u64 big-endian |
//! | `("unit", UNIT, "ckpt", "gen", GEN)` | JSON [`CheckpointMeta`] of the generation with a checksum of itself ([`encode_meta`]), written when it becomes current |
//! | `("unit", UNIT, "ckpt", "gen", GEN, I)` | chunk `I` of the generation's state, at most [`CHUNK_BYTES`] |
//! | `("unit", UNIT, "ckpt", "gen", GEN, "unusable")` | JSON [`UnusableReport`]: a host found the generation unusable (diagnostic) |
//!
//! Guarantees:
//! - **One writer.** Every transaction that writes (allocation, chunks,
//!   commit, garbage collection) reads the leader record in the same
//!   transaction and is refused with [`CheckpointError::Fenced`] unless the
//!   record's epoch is the writer's. The leader record changes only with
//!   leadership (renewals write the separate renewal record), so a slow
//!   checkpoint never conflicts with its own leader's heartbeat. A zombie can at most leave chunks of a
//!   generation that never becomes current; the leader's next garbage
//!   collection removes them.
//! - **Atomic switch.** A generation becomes current — with its offsets and
//!   output marks — in one small transaction, after all its chunks are
//!   durable; a reader never sees a half-written generation, and chunks are
//!   immutable once written.
//! - **Integrity, loudly.** Reading checks the metadata's own checksum (it
//!   holds the offsets and marks, which the state's sha256 does not cover),
//!   every chunk's length, the size and the sha256. A corrupt generation is
//!   logged with `tracing::error!`, reported in
//!   [`Checkpoint::corrupt_generations`], and the newest intact kept
//!   generation is used instead. [`restore_newest`] does the same for a
//!   generation whose state the processor refuses to restore; hosts store
//!   an [`UnusableReport`] with such generations for `logstream status`.
//!   Corrupt bytes are an error or a fallback, never a silently different
//!   state or position (property-tested over arbitrary damage).
//! - **FoundationDB limits.** Chunks of [`CHUNK_BYTES`] (under the 100 kB
//!   value limit), at most [`MAX_CHUNKS_PER_TXN`] per transaction (about
//!   half the 1 MB write limit), metadata at most [`MAX_META_BYTES`].
//! - **Retry safety.** Every transaction body is idempotent under
//!   `commit_unknown_result`: chunks are set to the same bytes again, the
//!   commit recognises its own generation as already current, and garbage
//!   collection only clears. A retried allocation skips an id, which is
//!   harmless (ids are increasing, not dense).
//!
//! Submodules: `write` (allocate, chunk, commit, collect garbage),
//! `read` (the kept generations, restoring the newest usable one) and
//! `report` (reports of unusable generations); this module holds the
//! keys, the records and the errors they share.
//!
//! One writer means one *sequential* writer: the epoch holder writes one
//! checkpoint at a time. Generation ids are allocated from a counter in a
//! fenced transaction, so writers of different epochs never share an id and
//! the current generation only moves forward (a commit older than the
//! current one is refused with [`CheckpointError::Superseded`]).

use std::collections::BTreeMap;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use foundationdb_tuple::Subspace;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::keys;
use super::kv::{
    transact, KvStore, KvTxn, RetryPolicy, TransactError, TxnAbort, TxnResult, MAX_TXN_WRITE_BYTES,
    MAX_VALUE_BYTES,
};

/// Size of one state chunk: 64 KiB, under FoundationDB's 100 kB value limit.
pub const CHUNK_BYTES: usize = 64 * 1024;
/// Chunks written (or read) per transaction: 8 × 64 KiB = 512 KiB, about
/// half the 1 MB transaction limit, leaving room for keys and the fence read.
pub const MAX_CHUNKS_PER_TXN: usize = 8;
/// Generations kept by default (the current one and two to fall back on).
pub const KEEP_GENERATIONS: usize = 3;
/// Largest serialised metadata of one generation (offsets and marks
/// included): 90 000 bytes, under the 100 kB value limit.
pub const MAX_META_BYTES: usize = 90_000;
/// Generations examined per garbage-collection transaction; each costs one
/// key-value read (up to one chunk), so this bounds the transaction to ~1 MB
/// of reads.
const GC_GENERATIONS_PER_TXN: usize = 16;
/// How often [`read_current`] starts over when the generation it is reading
/// is garbage-collected under it (only possible when a reader is slower
/// than [`KEEP_GENERATIONS`] checkpoints).
const MAX_READ_RESTARTS: u32 = 5;
/// Upper bound of the buffer reserved up front for a state: 256 MiB, so a
/// corrupt size in metadata cannot make the reader allocate absurdly.
const MAX_PREALLOCATED_BYTES: u64 = 256 * 1024 * 1024;

const _: () = assert!(CHUNK_BYTES <= MAX_VALUE_BYTES);
const _: () = assert!(MAX_META_BYTES <= MAX_VALUE_BYTES);
const _: () = assert!(CHUNK_BYTES * MAX_CHUNKS_PER_TXN <= MAX_TXN_WRITE_BYTES * 6 / 10);

/// The right to write on behalf of a processor: its name and the epoch the
/// writer holds. Writes are refused once the leader record has another epoch.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Fence {
    pub processor: String,
    pub epoch: u64,
}

impl Fence {
    pub fn new(processor: impl Into<String>, epoch: u64) -> Self {
        Fence {
            processor: processor.into(),
            epoch,
        }
    }
}

/// The metadata of one checkpoint generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    pub generation: u64,
    /// The epoch of the writer.
    pub epoch: u64,
    /// The processor's own version of its state format.
    pub state_version: u32,
    pub size_bytes: u64,
    /// The chunk size the generation was written with (so the chunk size can
    /// change without making old generations unreadable).
    pub chunk_bytes: u64,
    pub chunk_count: u64,
    /// Hex sha256 of the whole state.
    pub sha256: String,
    /// Next offset to consume, per input partition.
    pub offsets: BTreeMap<i32, i64>,
    /// Output marks (opaque to the store).
    pub marks: BTreeMap<String, String>,
    /// Writer's wall clock, milliseconds since the Unix epoch: for display
    /// only, never compared across machines.
    pub created_at_unix_ms: u64,
}

/// A checkpoint read back: the generation used and its state.
#[derive(Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub meta: CheckpointMeta,
    pub state: Vec<u8>,
    /// Newer generations that were found corrupt and skipped, newest first
    /// (empty when the current generation was used).
    pub corrupt_generations: Vec<u64>,
}

// By hand: a derived Debug would print megabytes of state.
impl fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Checkpoint")
            .field("meta", &self.meta)
            .field("state", &format_args!("<{} bytes>", self.state.len()))
            .field("corrupt_generations", &self.corrupt_generations)
            .finish()
    }
}

/// How checkpoints are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointOptions {
    /// Generations kept (at least 1, the current one).
    pub keep_generations: usize,
    /// Retries of each transaction.
    pub retry: RetryPolicy,
}

impl Default for CheckpointOptions {
    fn default() -> Self {
        CheckpointOptions {
            keep_generations: KEEP_GENERATIONS,
            retry: RetryPolicy::default(),
        }
    }
}

/// Why a checkpoint operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The leader record's epoch is not the writer's: a newer leader exists
    /// (or none does). The writer must stop acting for the processor.
    #[error("processor {processor:?} is fenced out: this writer holds epoch {writer_epoch} but {}", describe_epoch(.current_epoch))]
    Fenced {
        processor: String,
        writer_epoch: u64,
        /// The leader record's epoch; `None` when there is no leader record.
        current_epoch: Option<u64>,
    },
    /// No kept generation is usable ([`restore_newest`]): each is corrupt or
    /// its state was refused. ([`read_current`] reports all-corrupt as
    /// [`CheckpointError::Corrupt`].)
    #[error("processor {processor:?} has no usable checkpoint: {}", describe_unusable(.unusable))]
    Unusable {
        processor: String,
        unusable: Vec<UnusableGeneration>,
    },
    /// Every kept generation is corrupt.
    #[error("processor {processor:?} has no usable checkpoint: generations {corrupt_generations:?} are all corrupt")]
    Corrupt {
        processor: String,
        corrupt_generations: Vec<u64>,
    },
    /// A record this module reads is not in the expected format.
    #[error("the {record} of processor {processor:?} is malformed: {reason}")]
    BadRecord {
        processor: String,
        record: String,
        reason: String,
    },
    /// The offsets and marks do not fit in one value.
    #[error("the checkpoint metadata of processor {processor:?} would be {bytes} bytes, over the {MAX_META_BYTES}-byte limit; keep fewer or shorter output marks")]
    MetadataTooLarge { processor: String, bytes: usize },
    /// A newer generation became current while this one was being written:
    /// two writers of the same epoch, which the caller must not do.
    #[error("checkpoint generation {generation} of processor {processor:?} was superseded by generation {current} before it became current (two concurrent writers in one epoch)")]
    Superseded {
        processor: String,
        generation: u64,
        current: u64,
    },
    /// Reading kept losing the race against garbage collection.
    #[error("the checkpoints of processor {processor:?} changed {restarts} times while being read; the reader is slower than the writer")]
    Unstable { processor: String, restarts: u32 },
    /// The coordination store failed (after retries).
    #[error("the coordination store failed: {0}")]
    Store(#[source] TransactError),
}

fn describe_epoch(epoch: &Option<u64>) -> String {
    match epoch {
        Some(epoch) => format!("the leader record is at epoch {epoch}"),
        None => "there is no leader record".to_string(),
    }
}

impl CheckpointError {
    /// Recover our own error from a transaction body's abort.
    pub(crate) fn from_transact(error: TransactError) -> Self {
        error.into_typed(CheckpointError::Store)
    }
}

/// Abort a transaction body with one of our errors (never retried).
fn abort(error: CheckpointError) -> TxnAbort {
    TxnAbort::with(error)
}

fn run<T>(
    store: &dyn KvStore,
    policy: &RetryPolicy,
    body: impl FnMut(&mut dyn KvTxn) -> TxnResult<T>,
) -> Result<T, CheckpointError> {
    transact(store, policy, body).map_err(CheckpointError::from_transact)
}

// ---------------------------------------------------------------- keys

fn current_key(name: &str) -> Vec<u8> {
    keys::checkpoints(name).pack(&"current")
}

fn next_generation_key(name: &str) -> Vec<u8> {
    keys::checkpoints(name).pack(&"next-gen")
}

/// All generations of a processor.
fn generations(name: &str) -> Subspace {
    keys::checkpoints(name).subspace(&"gen")
}

/// One generation: its own key holds the metadata, `(…, I)` its chunks.
fn generation(name: &str, generation: u64) -> Subspace {
    generations(name).subspace(&generation)
}

/// The key of generation `gen`'s metadata. Public (with [`chunk_key`]) for
/// tools and fault-injection tests that damage a generation on purpose.
pub fn meta_key(name: &str, gen: u64) -> Vec<u8> {
    generation(name, gen).into_bytes()
}

/// The key of chunk `index` of generation `gen`.
pub fn chunk_key(name: &str, gen: u64, index: u64) -> Vec<u8> {
    generation(name, gen).pack(&index)
}

/// The key of hosts' report that generation `gen` is unusable. Inside the
/// generation's subspace, so garbage collection removes it with the
/// generation; a string element, so it sorts before the (integer) chunk keys
/// and never falls in a chunk range.
fn report_key(name: &str, gen: u64) -> Vec<u8> {
    generation(name, gen).pack(&"unusable")
}

/// The end of the range of every key of a subspace, the subspace's own key
/// included (`[subspace.bytes(), subtree_end)`).
fn subtree_end(subspace: &Subspace) -> Vec<u8> {
    subspace.range().1
}

// ---------------------------------------------------------------- records

/// The `current` pointer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct CurrentPointer {
    generation: u64,
    /// The older generations kept, newest first (at most keep − 1).
    #[serde(default)]
    previous: Vec<u64>,
}

impl CurrentPointer {
    fn kept(&self) -> impl Iterator<Item = u64> + '_ {
        std::iter::once(self.generation).chain(self.previous.iter().copied())
    }
}

/// The epoch of a processor's leader record, read inside `txn` (so a write
/// in the same transaction is fenced by it). Only the `epoch` field is read;
/// the rest of the record belongs to the election. Only the leader record
/// is read, never the renewal record (`keys::renewal`): the leader's
/// heartbeat rewrites that one, and under optimistic concurrency a
/// checkpoint spanning a heartbeat would conflict with it.
pub fn read_leader_epoch(txn: &mut dyn KvTxn, name: &str) -> TxnResult<Option<u64>> {
    #[derive(Deserialize)]
    struct EpochOnly {
        epoch: u64,
    }
    let Some(value) = txn.get(&keys::leader(name))? else {
        return Ok(None);
    };
    serde_json::from_slice::<EpochOnly>(&value)
        .map(|record| Some(record.epoch))
        .map_err(|e| {
            abort(CheckpointError::BadRecord {
                processor: name.to_string(),
                record: "leader record".to_string(),
                reason: e.to_string(),
            })
        })
}

/// Refuse unless the leader record holds the fence's epoch.
pub(crate) fn check_fence(txn: &mut dyn KvTxn, fence: &Fence) -> TxnResult<()> {
    let current_epoch = read_leader_epoch(txn, &fence.processor)?;
    if current_epoch == Some(fence.epoch) {
        return Ok(());
    }
    Err(abort(CheckpointError::Fenced {
        processor: fence.processor.clone(),
        writer_epoch: fence.epoch,
        current_epoch,
    }))
}

fn bad_record(name: &str, record: impl Into<String>, reason: impl fmt::Display) -> CheckpointError {
    CheckpointError::BadRecord {
        processor: name.to_string(),
        record: record.into(),
        reason: reason.to_string(),
    }
}

fn read_pointer(txn: &mut dyn KvTxn, name: &str) -> TxnResult<Option<CurrentPointer>> {
    match txn.get(&current_key(name))? {
        None => Ok(None),
        Some(value) => serde_json::from_slice(&value)
            .map(Some)
            .map_err(|e| abort(bad_record(name, "current-checkpoint pointer", e))),
    }
}

/// Key of the metadata's own checksum inside the stored JSON object: the
/// hex sha256 of the canonical encoding (keys sorted, no whitespace) of every
/// other member. The state's sha256 does not cover the offsets and marks, and
/// a flipped digit there would silently skip or replay input.
const META_CHECKSUM_KEY: &str = "meta_sha256";
/// The members of metadata written before [`META_CHECKSUM_KEY`] existed.
/// Such legacy metadata is accepted only with exactly these members, so a
/// damaged checksum key (which would otherwise read as "legacy, unchecked")
/// is refused instead.
const LEGACY_META_KEYS: &[&str] = &[
    "generation",
    "epoch",
    "state_version",
    "size_bytes",
    "chunk_bytes",
    "chunk_count",
    "sha256",
    "offsets",
    "marks",
    "created_at_unix_ms",
];

/// A JSON value in canonical form: object members sorted by key, no
/// whitespace, whatever order the parser kept (serde_json's
/// `preserve_order` feature changes that order).
fn canonical_json(value: &serde_json::Value, out: &mut Vec<u8>) {
    match value {
        serde_json::Value::Object(members) => {
            let mut sorted: Vec<(&String, &serde_json::Value)> = members.iter().collect();
            sorted.sort_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (key, value)) in sorted.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend(serde_json::to_vec(key).expect("a string serialises"));
                out.push(b':');
                canonical_json(value, out);
            }
            out.push(b'}');
        }
        serde_json::Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical_json(item, out);
            }
            out.push(b']');
        }
        scalar => out.extend(serde_json::to_vec(scalar).expect("a scalar serialises")),
    }
}

fn meta_checksum(members: &serde_json::Map<String, serde_json::Value>) -> String {
    let mut canonical = Vec::new();
    canonical_json(&serde_json::Value::Object(members.clone()), &mut canonical);
    hex::encode(Sha256::digest(&canonical))
}

/// The stored form of a generation's metadata: its JSON object with a
/// checksum of its other members (`meta_sha256`). Public for tools
/// and fault-injection tests that write a generation by hand.
pub fn encode_meta(meta: &CheckpointMeta) -> Vec<u8> {
    let serde_json::Value::Object(mut members) =
        serde_json::to_value(meta).expect("checkpoint metadata serialises")
    else {
        unreachable!("CheckpointMeta serialises as an object");
    };
    let checksum = meta_checksum(&members);
    members.insert(META_CHECKSUM_KEY.to_string(), checksum.into());
    serde_json::to_vec(&members).expect("checkpoint metadata serialises")
}

/// Decode and verify a generation's stored metadata (see [`encode_meta`]),
/// and sanity-check it; the error is why the generation is unusable. Never
/// panics, whatever the bytes.
pub fn parse_meta(value: &[u8], gen: u64) -> Result<CheckpointMeta, String> {
    let members: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(value).map_err(|e| format!("its metadata is malformed: {e}"))?;
    let mut members = members;
    match members.remove(META_CHECKSUM_KEY) {
        Some(serde_json::Value::String(stored)) => {
            let computed = meta_checksum(&members);
            if stored != computed {
                return Err(format!(
                    "its metadata checksum is {computed}, the metadata says {stored}"
                ));
            }
        }
        Some(_) => return Err("its metadata checksum is not a string".to_string()),
        None => {
            if let Some(unknown) = members
                .keys()
                .find(|key| !LEGACY_META_KEYS.contains(&key.as_str()))
            {
                return Err(format!(
                    "its metadata has no checksum and an unknown member {unknown:?}"
                ));
            }
        }
    }
    let meta: CheckpointMeta = serde_json::from_value(serde_json::Value::Object(members))
        .map_err(|e| format!("its metadata is malformed: {e}"))?;
    if meta.generation != gen {
        return Err(format!("its metadata names generation {}", meta.generation));
    }
    if meta.chunk_bytes == 0 || meta.chunk_bytes > MAX_VALUE_BYTES as u64 {
        return Err(format!(
            "its metadata has a chunk size of {} bytes",
            meta.chunk_bytes
        ));
    }
    if meta.chunk_count != meta.size_bytes.div_ceil(meta.chunk_bytes) {
        return Err(format!(
            "its metadata has {} chunks for {} bytes in chunks of {}",
            meta.chunk_count, meta.size_bytes, meta.chunk_bytes
        ));
    }
    if meta.sha256.len() != 64 || !meta.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("its metadata's state sha256 is not 64 hex digits".to_string());
    }
    Ok(meta)
}

fn unix_millis_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

mod read;
mod report;
mod write;

pub use read::*;
pub use report::*;
pub use write::*;

#[cfg(test)]
pub(crate) mod tests;
