//! Checkpoints of processor state: fenced, chunked, checksummed, with the
//! last few generations kept to fall back on.
//!
//! This module owns the `("proc", NAME, "ckpt", …)` keys:
//!
//! | key | value |
//! |---|---|
//! | `("proc", NAME, "ckpt", "current")` | JSON pointer: the current generation and the older kept ones, newest first |
//! | `("proc", NAME, "ckpt", "next-gen")` | the next generation id to allocate, u64 big-endian |
//! | `("proc", NAME, "ckpt", "gen", GEN)` | JSON [`CheckpointMeta`] of the generation with a checksum of itself ([`encode_meta`]), written when it becomes current |
//! | `("proc", NAME, "ckpt", "gen", GEN, I)` | chunk `I` of the generation's state, at most [`CHUNK_BYTES`] |
//! | `("proc", NAME, "ckpt", "gen", GEN, "unusable")` | JSON [`UnusableReport`]: a host found the generation unusable (diagnostic) |
//!
//! Guarantees:
//! - **One writer.** Every transaction that writes (allocation, chunks,
//!   commit, garbage collection) reads the leader record in the same
//!   transaction and is refused with [`CheckpointError::Fenced`] unless the
//!   record's epoch is the writer's. A zombie can at most leave chunks of a
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
//! One writer means one *sequential* writer: the epoch holder writes one
//! checkpoint at a time. Generation ids are allocated from a counter in a
//! fenced transaction, so writers of different epochs never share an id and
//! the current generation only moves forward (a commit older than the
//! current one is refused with [`CheckpointError::Superseded`]).

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use foundationdb_tuple::{Element, Subspace};
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
    fn from_transact(error: TransactError) -> Self {
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
/// the rest of the record belongs to the election.
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
fn check_fence(txn: &mut dyn KvTxn, fence: &Fence) -> TxnResult<()> {
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
/// checksum of its other members ([`META_CHECKSUM_KEY`]). Public for tools
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

// ---------------------------------------------------------------- writing

/// Write a checkpoint with the default options; see [`write_checkpoint_with`].
pub fn write_checkpoint(
    store: &dyn KvStore,
    fence: &Fence,
    state: &[u8],
    state_version: u32,
    offsets: BTreeMap<i32, i64>,
    marks: BTreeMap<String, String>,
) -> Result<CheckpointMeta, CheckpointError> {
    write_checkpoint_with(
        store,
        &CheckpointOptions::default(),
        fence,
        state,
        state_version,
        offsets,
        marks,
    )
}

/// Write `state` with its offsets and marks as a new generation, make it
/// current, and garbage-collect all but the last `keep_generations`.
///
/// Returns the metadata of the new current generation. A failure before the
/// switch leaves the previous checkpoint current (and at most orphan chunks,
/// collected later). Garbage collection runs after the switch; its failure
/// is only logged, since the checkpoint itself is durable, and the next write
/// retries it.
pub fn write_checkpoint_with(
    store: &dyn KvStore,
    options: &CheckpointOptions,
    fence: &Fence,
    state: &[u8],
    state_version: u32,
    offsets: BTreeMap<i32, i64>,
    marks: BTreeMap<String, String>,
) -> Result<CheckpointMeta, CheckpointError> {
    let name = fence.processor.as_str();
    let keep = options.keep_generations.max(1);
    let size_bytes = state.len() as u64;
    let mut meta = CheckpointMeta {
        // Placeholder of the widest id, so the size check below is an upper
        // bound and runs before anything is written.
        generation: u64::MAX,
        epoch: fence.epoch,
        state_version,
        size_bytes,
        chunk_bytes: CHUNK_BYTES as u64,
        chunk_count: size_bytes.div_ceil(CHUNK_BYTES as u64),
        sha256: hex::encode(Sha256::digest(state)),
        offsets,
        marks,
        created_at_unix_ms: unix_millis_now(),
    };
    let bytes = encode_meta(&meta).len();
    if bytes > MAX_META_BYTES {
        return Err(CheckpointError::MetadataTooLarge {
            processor: name.to_string(),
            bytes,
        });
    }

    meta.generation = allocate_generation(store, &options.retry, fence)?;
    write_chunks(store, &options.retry, fence, meta.generation, state)?;
    commit_generation(store, &options.retry, fence, &meta, keep)?;
    tracing::debug!(
        processor = name,
        generation = meta.generation,
        epoch = fence.epoch,
        size_bytes,
        "checkpoint is current"
    );

    match collect_garbage(store, &options.retry, fence, keep) {
        Ok(collected) if !collected.is_empty() => {
            tracing::debug!(
                processor = name,
                ?collected,
                "collected old checkpoint generations"
            );
        }
        Ok(_) => {}
        Err(error) => {
            tracing::warn!(
                processor = name,
                "checkpoint garbage collection failed (the next checkpoint retries it): {error}"
            );
        }
    }
    Ok(meta)
}

/// Take the next generation id, fenced. Never reuses an id: the counter only
/// grows, and never falls behind the current generation.
fn allocate_generation(
    store: &dyn KvStore,
    policy: &RetryPolicy,
    fence: &Fence,
) -> Result<u64, CheckpointError> {
    let name = fence.processor.as_str();
    run(store, policy, |txn| {
        check_fence(txn, fence)?;
        let counter = match txn.get(&next_generation_key(name))? {
            None => 1,
            Some(value) => <[u8; 8]>::try_from(value.as_slice())
                .map(u64::from_be_bytes)
                .map_err(|_| {
                    abort(bad_record(
                        name,
                        "checkpoint generation counter",
                        format!("it is {} bytes, not 8", value.len()),
                    ))
                })?,
        };
        let after_current = read_pointer(txn, name)?.map_or(1, |p| p.generation + 1);
        let gen = counter.max(after_current);
        txn.set(&next_generation_key(name), &(gen + 1).to_be_bytes())?;
        Ok(gen)
    })
}

/// Write the chunks of `gen`, [`MAX_CHUNKS_PER_TXN`] per fenced transaction.
fn write_chunks(
    store: &dyn KvStore,
    policy: &RetryPolicy,
    fence: &Fence,
    gen: u64,
    state: &[u8],
) -> Result<(), CheckpointError> {
    let name = fence.processor.as_str();
    let chunks: Vec<&[u8]> = state.chunks(CHUNK_BYTES).collect();
    for (batch_number, batch) in chunks.chunks(MAX_CHUNKS_PER_TXN).enumerate() {
        let first = (batch_number * MAX_CHUNKS_PER_TXN) as u64;
        run(store, policy, |txn| {
            check_fence(txn, fence)?;
            for (index, chunk) in (first..).zip(batch) {
                txn.set(&chunk_key(name, gen, index), chunk)?;
            }
            Ok(())
        })?;
    }
    Ok(())
}

/// Make `meta`'s generation current (metadata and pointer in one fenced
/// transaction), keeping `keep - 1` older generations in the pointer.
fn commit_generation(
    store: &dyn KvStore,
    policy: &RetryPolicy,
    fence: &Fence,
    meta: &CheckpointMeta,
    keep: usize,
) -> Result<(), CheckpointError> {
    let name = fence.processor.as_str();
    let meta_bytes = encode_meta(meta);
    run(store, policy, |txn| {
        check_fence(txn, fence)?;
        let old = read_pointer(txn, name)?;
        if let Some(old) = &old {
            // Already current: a retry after a commit that did apply.
            if old.generation == meta.generation {
                return Ok(());
            }
            if old.generation > meta.generation {
                return Err(abort(CheckpointError::Superseded {
                    processor: name.to_string(),
                    generation: meta.generation,
                    current: old.generation,
                }));
            }
        }
        let pointer = CurrentPointer {
            generation: meta.generation,
            previous: old
                .iter()
                .flat_map(CurrentPointer::kept)
                .take(keep - 1)
                .collect(),
        };
        txn.set(&meta_key(name, meta.generation), &meta_bytes)?;
        txn.set(
            &current_key(name),
            &serde_json::to_vec(&pointer).expect("pointer serialises"),
        )?;
        Ok(())
    })
}

/// Remove every generation older than the current one that is not among the
/// last `keep` current ones — old generations and orphan chunks of
/// generations that never became current (a failed or fenced-out write).
/// Generations newer than the current one are in flight and left alone.
/// Fenced, so a zombie can never remove what the leader is writing. Returns
/// the generations removed.
pub fn collect_garbage(
    store: &dyn KvStore,
    policy: &RetryPolicy,
    fence: &Fence,
    keep: usize,
) -> Result<Vec<u64>, CheckpointError> {
    let name = fence.processor.as_str();
    let keep = keep.max(1);
    let mut collected = Vec::new();
    let mut cursor = Some(generations(name).bytes().to_vec());
    while let Some(from) = cursor.take() {
        let (removed, next) = run(store, policy, |txn| {
            check_fence(txn, fence)?;
            let Some(pointer) = read_pointer(txn, name)? else {
                return Ok((Vec::new(), None));
            };
            let kept: BTreeSet<u64> = pointer.kept().take(keep).collect();
            let (found, next) = scan_generations(txn, name, &from)?;
            let mut removed = Vec::new();
            for gen in found {
                if gen < pointer.generation && !kept.contains(&gen) {
                    let subspace = generation(name, gen);
                    txn.clear_range(subspace.bytes(), &subtree_end(&subspace))?;
                    removed.push(gen);
                }
            }
            Ok((removed, next))
        })?;
        collected.extend(removed);
        cursor = next;
    }
    Ok(collected)
}

/// Up to [`GC_GENERATIONS_PER_TXN`] generation ids with any key at or after
/// `from`, ascending, and where to continue (`None`: no more). Skips from
/// generation to generation, reading one key-value of each.
fn scan_generations(
    txn: &mut dyn KvTxn,
    name: &str,
    from: &[u8],
) -> TxnResult<(Vec<u64>, Option<Vec<u8>>)> {
    let all = generations(name);
    let end = subtree_end(&all);
    let mut from = from.to_vec();
    let mut found = Vec::new();
    for _ in 0..GC_GENERATIONS_PER_TXN {
        let Some((key, _)) = txn.get_range(&from, &end, 1)?.into_iter().next() else {
            return Ok((found, None));
        };
        match all
            .unpack::<Vec<Element>>(&key)
            .ok()
            .and_then(|t| match t.first() {
                Some(Element::Int(gen)) => u64::try_from(*gen).ok(),
                _ => None,
            }) {
            Some(gen) => {
                found.push(gen);
                from = subtree_end(&generation(name, gen));
            }
            // Not a key of our layout: step over it.
            None => {
                from = key;
                from.push(0);
            }
        }
    }
    Ok((found, Some(from)))
}

/// Every generation id with any stored key (current, kept, in flight and
/// orphan), ascending: for status and tests. Reads one key-value per
/// generation, in several transactions if needed (not one snapshot).
pub fn stored_generations(store: &dyn KvStore, name: &str) -> Result<Vec<u64>, CheckpointError> {
    let policy = RetryPolicy::default();
    let mut all = Vec::new();
    let mut cursor = Some(generations(name).bytes().to_vec());
    while let Some(from) = cursor.take() {
        let (found, next) = run(store, &policy, |txn| scan_generations(txn, name, &from))?;
        all.extend(found);
        cursor = next;
    }
    Ok(all)
}

// ---------------------------------------------------------------- reading

/// The metadata of the current generation, without its chunks: one small
/// transaction, cheap enough for a passive to poll. `None` when the
/// processor has no checkpoint. Missing or malformed metadata is an error
/// here; [`read_current`] falls back past it.
pub fn read_current_meta(
    store: &dyn KvStore,
    name: &str,
) -> Result<Option<CheckpointMeta>, CheckpointError> {
    run(store, &RetryPolicy::default(), |txn| {
        let Some(pointer) = read_pointer(txn, name)? else {
            return Ok(None);
        };
        let gen = pointer.generation;
        let record = format!("metadata of checkpoint generation {gen}");
        let value = txn
            .get(&meta_key(name, gen))?
            .ok_or_else(|| abort(bad_record(name, &record, "it is missing")))?;
        parse_meta(&value, gen)
            .map(Some)
            .map_err(|reason| abort(bad_record(name, &record, reason)))
    })
}

/// The metadata of the kept generations, newest (current) first, in one
/// snapshot and without their chunks: for status (e.g. a rate between the
/// two newest). Generations whose metadata is missing or malformed are
/// left out (reading the state falls back past them the same way).
pub fn read_kept_meta(
    store: &dyn KvStore,
    name: &str,
) -> Result<Vec<CheckpointMeta>, CheckpointError> {
    run(store, &RetryPolicy::default(), |txn| {
        let Some(pointer) = read_pointer(txn, name)? else {
            return Ok(Vec::new());
        };
        let mut kept = Vec::new();
        for gen in pointer.kept() {
            if let Some(value) = txn.get(&meta_key(name, gen))? {
                kept.extend(parse_meta(&value, gen).ok());
            }
        }
        Ok(kept)
    })
}

/// One generation the pointer keeps, with its metadata or why that is
/// unusable (missing, malformed, checksum mismatch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptGeneration {
    pub generation: u64,
    pub meta: Result<CheckpointMeta, String>,
}

/// The generations the pointer keeps, newest (current) first, each with its
/// metadata, in one snapshot and without their chunks: cheap enough for a
/// passive to poll. Empty when the processor has no checkpoint.
pub fn read_kept(store: &dyn KvStore, name: &str) -> Result<Vec<KeptGeneration>, CheckpointError> {
    read_kept_with(store, &RetryPolicy::default(), name)
}

fn read_kept_with(
    store: &dyn KvStore,
    policy: &RetryPolicy,
    name: &str,
) -> Result<Vec<KeptGeneration>, CheckpointError> {
    run(store, policy, |txn| {
        let Some(pointer) = read_pointer(txn, name)? else {
            check_no_committed_generation(txn, name)?;
            return Ok(Vec::new());
        };
        let mut kept = Vec::new();
        for gen in pointer.kept() {
            let meta = match txn.get(&meta_key(name, gen))? {
                None => Err("its metadata is missing".to_string()),
                Some(value) => parse_meta(&value, gen),
            };
            kept.push(KeptGeneration {
                generation: gen,
                meta,
            });
        }
        Ok(kept)
    })
}

/// Without a current pointer a processor has no checkpoint — unless the
/// pointer was lost: metadata is only written when a generation becomes
/// current, so a generation with metadata proves one existed, and reading
/// "no checkpoint" would silently restart from empty state. Checks the
/// first [`GC_GENERATIONS_PER_TXN`] generations stored (orphan chunks of
/// never-committed ones have no metadata).
fn check_no_committed_generation(txn: &mut dyn KvTxn, name: &str) -> TxnResult<()> {
    let (found, _) = scan_generations(txn, name, generations(name).bytes())?;
    for gen in found {
        if txn.get(&meta_key(name, gen))?.is_some() {
            return Err(abort(bad_record(
                name,
                "current-checkpoint pointer",
                format!("it is missing, but generation {gen} was committed"),
            )));
        }
    }
    Ok(())
}

/// The newest of `kept` whose metadata is intact and that `known_unusable`
/// does not rule out: the generation a restore is expected to use, judged
/// without reading any state (a caller's memory of generations it found
/// unusable before). A restore still verifies what it reads.
pub fn newest_candidate(
    kept: &[KeptGeneration],
    known_unusable: impl Fn(u64) -> bool,
) -> Option<&CheckpointMeta> {
    kept.iter()
        .filter(|k| !known_unusable(k.generation))
        .find_map(|k| k.meta.as_ref().ok())
}

/// Why a kept generation was not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// Its stored data is damaged: metadata, a chunk, the size or the sha256.
    Corrupt,
    /// Its data is intact, but the processor's `restore` refused (or failed
    /// on) its state.
    Refused,
}

impl FaultKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Corrupt => "corrupt",
            FaultKind::Refused => "refused",
        }
    }
}

/// A kept generation found unusable, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnusableGeneration {
    pub generation: u64,
    pub kind: FaultKind,
    pub reason: String,
}

impl fmt::Display for UnusableGeneration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            FaultKind::Corrupt => write!(
                f,
                "generation {} is corrupt: {}",
                self.generation, self.reason
            ),
            FaultKind::Refused => write!(
                f,
                "generation {} was refused by the processor: {}",
                self.generation, self.reason
            ),
        }
    }
}

fn describe_unusable(unusable: &[UnusableGeneration]) -> String {
    unusable
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// A generation restored by [`restore_newest`].
pub struct Restored<T> {
    /// The generation used: its offsets and marks go with the restored state.
    pub meta: CheckpointMeta,
    /// What the restore callback made of its state.
    pub value: T,
    /// Newer kept generations skipped, newest first (empty when the current
    /// one was used).
    pub unusable: Vec<UnusableGeneration>,
}

/// Why a [`restore_newest`] callback could not use a generation's state.
pub enum RestoreFailure<E> {
    /// The state is refused (why): the next older generation is tried.
    Refused(String),
    /// A failure that is not the state's (e.g. the module does not
    /// instantiate): restoring stops with it.
    Failed(E),
}

/// Why [`restore_newest`] restored nothing.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError<E> {
    /// Reading failed, or no kept generation is usable.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The callback failed for a reason not the state's.
    #[error(transparent)]
    Failed(E),
}

/// Restore the newest usable kept generation: read and verify each, newest
/// first, and hand its state to `restore`; a generation that is corrupt or
/// whose state `restore` refuses is logged (`tracing::error!` naming the
/// processor, the generation and why) and the next older one is tried.
/// `Ok(None)` when the processor has no checkpoint.
///
/// Falling back is safe for the pipeline: every generation carries its own
/// offsets and output marks, so a leader that restores an older one replays
/// from its offsets and suppresses the outputs found since its marks.
pub fn restore_newest<T, E>(
    store: &dyn KvStore,
    policy: &RetryPolicy,
    name: &str,
    mut restore: impl FnMut(&CheckpointMeta, Vec<u8>) -> Result<T, RestoreFailure<E>>,
) -> Result<Option<Restored<T>>, RestoreError<E>> {
    'restart: for _ in 0..MAX_READ_RESTARTS {
        let kept = read_kept_with(store, policy, name)?;
        if kept.is_empty() {
            return Ok(None);
        }
        let mut unusable = Vec::new();
        for KeptGeneration {
            generation: gen,
            meta,
        } in kept
        {
            let (kind, reason) = match meta {
                Err(reason) => (FaultKind::Corrupt, reason),
                Ok(meta) => match read_state(store, policy, name, &meta) {
                    Err(ReadFailure::Vanished) => continue 'restart,
                    Err(ReadFailure::Failed(error)) => return Err(error.into()),
                    Err(ReadFailure::Corrupt(reason)) => (FaultKind::Corrupt, reason),
                    Ok(state) => match restore(&meta, state) {
                        Ok(value) => {
                            if !unusable.is_empty() {
                                let skipped: Vec<u64> = unusable
                                    .iter()
                                    .map(|u: &UnusableGeneration| u.generation)
                                    .collect();
                                tracing::error!(
                                    processor = name,
                                    generation = gen,
                                    ?skipped,
                                    "restoring processor {name:?} from the older checkpoint generation {gen} because newer ones are unusable"
                                );
                            }
                            return Ok(Some(Restored {
                                meta,
                                value,
                                unusable,
                            }));
                        }
                        Err(RestoreFailure::Failed(error)) => {
                            return Err(RestoreError::Failed(error))
                        }
                        Err(RestoreFailure::Refused(reason)) => (FaultKind::Refused, reason),
                    },
                },
            };
            let found = UnusableGeneration {
                generation: gen,
                kind,
                reason,
            };
            match kind {
                FaultKind::Corrupt => tracing::error!(
                    processor = name,
                    generation = gen,
                    fault = kind.as_str(),
                    "checkpoint generation {gen} of processor {name:?} is corrupt: {}",
                    found.reason
                ),
                FaultKind::Refused => tracing::error!(
                    processor = name,
                    generation = gen,
                    fault = kind.as_str(),
                    "checkpoint generation {gen} of processor {name:?} was refused by the processor: {}; trying an older one",
                    found.reason
                ),
            }
            unusable.push(found);
        }
        return Err(CheckpointError::Unusable {
            processor: name.to_string(),
            unusable,
        }
        .into());
    }
    Err(CheckpointError::Unstable {
        processor: name.to_string(),
        restarts: MAX_READ_RESTARTS,
    }
    .into())
}

/// Read the current checkpoint, verified; if it is corrupt, the newest
/// intact kept generation (see [`Checkpoint::corrupt_generations`]).
/// `None` when the processor has no checkpoint.
pub fn read_current(
    store: &dyn KvStore,
    name: &str,
) -> Result<Option<Checkpoint>, CheckpointError> {
    read_current_with(store, &RetryPolicy::default(), name)
}

/// [`read_current`] with a retry policy for each transaction.
pub fn read_current_with(
    store: &dyn KvStore,
    policy: &RetryPolicy,
    name: &str,
) -> Result<Option<Checkpoint>, CheckpointError> {
    let accept_any = |_: &CheckpointMeta, state| Ok::<_, RestoreFailure<Infallible>>(state);
    match restore_newest(store, policy, name, accept_any) {
        Ok(restored) => Ok(restored.map(|r| Checkpoint {
            meta: r.meta,
            state: r.value,
            corrupt_generations: r.unusable.iter().map(|u| u.generation).collect(),
        })),
        // Nothing but corruption can make this reader skip a generation.
        Err(RestoreError::Checkpoint(CheckpointError::Unusable {
            processor,
            unusable,
        })) => Err(CheckpointError::Corrupt {
            processor,
            corrupt_generations: unusable.iter().map(|u| u.generation).collect(),
        }),
        Err(RestoreError::Checkpoint(error)) => Err(error),
        Err(RestoreError::Failed(never)) => match never {},
    }
}

// ---------------------------------------------------------------- reports

/// Longest reason kept in a stored report: a guest's error message can be
/// long, and a report is one small value.
const MAX_REPORT_REASON_BYTES: usize = 2_000;

/// A host's report that it found a kept generation unusable, stored with the
/// generation (and collected with it) so `logstream status` can show it.
/// Diagnostic only: nothing decides on a report; every reader verifies what
/// it reads for itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnusableReport {
    pub generation: u64,
    pub fault: FaultKind,
    pub reason: String,
    /// The host that found it.
    pub host_id: String,
    /// The module whose `restore` was used (a refusal depends on the module).
    pub module_sha256: Option<String>,
    /// The reporting host's wall clock, for display only.
    pub reported_at_unix_ms: u64,
}

impl UnusableReport {
    pub fn new(found: &UnusableGeneration, host_id: &str, module_sha256: Option<&str>) -> Self {
        let mut reason = found.reason.clone();
        if reason.len() > MAX_REPORT_REASON_BYTES {
            let mut end = MAX_REPORT_REASON_BYTES;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
            reason.push('…');
        }
        UnusableReport {
            generation: found.generation,
            fault: found.kind,
            reason,
            host_id: host_id.to_string(),
            module_sha256: module_sha256.map(str::to_string),
            reported_at_unix_ms: unix_millis_now(),
        }
    }
}

/// Store `report` with its generation, if the pointer still keeps that
/// generation (so no key is left under a collected one); whether it was
/// stored. Not fenced: any host that finds a generation unusable may say so,
/// and a report changes no state, offsets or marks. The latest report of a
/// generation wins.
pub fn report_unusable(
    store: &dyn KvStore,
    name: &str,
    report: &UnusableReport,
) -> Result<bool, CheckpointError> {
    let value = serde_json::to_vec(report).expect("a report serialises");
    run(store, &RetryPolicy::default(), |txn| {
        let kept = read_pointer(txn, name)?
            .is_some_and(|pointer| pointer.kept().any(|gen| gen == report.generation));
        if kept {
            txn.set(&report_key(name, report.generation), &value)?;
        }
        Ok(kept)
    })
}

/// The stored reports of the kept generations, newest generation first. A
/// report that does not parse is left out (it is diagnostic only).
pub fn read_unusable_reports(
    store: &dyn KvStore,
    name: &str,
) -> Result<Vec<UnusableReport>, CheckpointError> {
    run(store, &RetryPolicy::default(), |txn| {
        let Some(pointer) = read_pointer(txn, name)? else {
            return Ok(Vec::new());
        };
        let mut reports = Vec::new();
        for gen in pointer.kept() {
            if let Some(value) = txn.get(&report_key(name, gen))? {
                reports.extend(
                    serde_json::from_slice::<UnusableReport>(&value)
                        .ok()
                        .filter(|r| r.generation == gen),
                );
            }
        }
        Ok(reports)
    })
}

/// Why one generation could not be read.
enum ReadFailure {
    /// The generation's data is damaged (why).
    Corrupt(String),
    /// The generation was garbage-collected while being read: start over.
    Vanished,
    /// The store failed; not the generation's fault.
    Failed(CheckpointError),
}

/// Reassemble and verify the state of one generation, reading
/// [`MAX_CHUNKS_PER_TXN`] chunks per transaction. Chunks are immutable, so
/// the transactions together read one consistent generation — as long as
/// the generation still exists, which each transaction checks.
fn read_state(
    store: &dyn KvStore,
    policy: &RetryPolicy,
    name: &str,
    meta: &CheckpointMeta,
) -> Result<Vec<u8>, ReadFailure> {
    let gen = meta.generation;
    let subspace = generation(name, gen);
    let mut state = Vec::with_capacity(meta.size_bytes.min(MAX_PREALLOCATED_BYTES) as usize);
    let mut hasher = Sha256::new();
    let mut next = 0u64;
    while next < meta.chunk_count {
        let rows = run(store, policy, |txn| {
            if txn.get(subspace.bytes())?.is_none() {
                return Ok(None);
            }
            let rows = txn.get_range(
                &chunk_key(name, gen, next),
                &chunk_key(name, gen, meta.chunk_count),
                MAX_CHUNKS_PER_TXN,
            )?;
            Ok(Some(rows))
        })
        .map_err(ReadFailure::Failed)?
        .ok_or(ReadFailure::Vanished)?;
        if rows.is_empty() {
            return Err(ReadFailure::Corrupt(format!(
                "chunk {next} of {} is missing",
                meta.chunk_count
            )));
        }
        for (key, value) in rows {
            if subspace.unpack::<u64>(&key).ok() != Some(next) {
                return Err(ReadFailure::Corrupt(format!(
                    "chunk {next} of {} is missing",
                    meta.chunk_count
                )));
            }
            let expected = meta
                .chunk_bytes
                .min(meta.size_bytes - next * meta.chunk_bytes);
            if value.len() as u64 != expected {
                return Err(ReadFailure::Corrupt(format!(
                    "chunk {next} is {} bytes, not {expected}",
                    value.len()
                )));
            }
            hasher.update(&value);
            state.extend_from_slice(&value);
            next += 1;
        }
    }
    let sha256 = hex::encode(hasher.finalize());
    if sha256 != meta.sha256 {
        return Err(ReadFailure::Corrupt(format!(
            "its sha256 is {sha256}, the metadata says {}",
            meta.sha256
        )));
    }
    Ok(state)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Instant;

    use proptest::prelude::*;

    use super::*;
    use crate::store::kv::{KeyValue, StoreError};
    use crate::store::SqliteStore;

    /// A store wrapper that counts transactions and, every `flaky_every`-th
    /// transaction, applies its commit and then reports `CommitUnknown` — the case the
    /// retry loop re-runs bodies for.
    pub(crate) struct TestStore {
        pub inner: SqliteStore,
        pub transactions: AtomicU64,
        pub flaky_every: u64,
        _dir: tempfile::TempDir,
    }

    impl TestStore {
        pub(crate) fn new() -> Self {
            Self::flaky(0)
        }

        pub(crate) fn flaky(flaky_every: u64) -> Self {
            Self::in_dir(flaky_every, tempfile::tempdir().unwrap())
        }

        /// A store on a RAM file system when there is one: the fuzz
        /// properties open thousands of stores, and on a disk their
        /// creation and checkpoints are mostly waiting for the disk.
        pub(crate) fn in_ram() -> Self {
            let ram = std::path::Path::new("/dev/shm");
            let dir = if ram.is_dir() {
                tempfile::tempdir_in(ram).unwrap()
            } else {
                tempfile::tempdir().unwrap()
            };
            Self::in_dir(0, dir)
        }

        fn in_dir(flaky_every: u64, dir: tempfile::TempDir) -> Self {
            let inner = SqliteStore::open(dir.path().join("store.db")).unwrap();
            TestStore {
                inner,
                transactions: AtomicU64::new(0),
                flaky_every,
                _dir: dir,
            }
        }

        /// Every key and value in the store.
        pub(crate) fn dump(&self) -> Vec<KeyValue> {
            let mut txn = self.inner.begin().unwrap();
            txn.get_range(b"", &[0xff, 0xff], usize::MAX).unwrap()
        }

        pub(crate) fn raw(&self, body: impl FnOnce(&mut dyn KvTxn)) {
            let mut txn = self.inner.begin().unwrap();
            body(&mut *txn);
            txn.commit().unwrap();
        }
    }

    struct TestTxn<'a> {
        inner: Box<dyn KvTxn + 'a>,
        report_unknown: bool,
    }

    impl KvStore for TestStore {
        fn begin(&self) -> Result<Box<dyn KvTxn + '_>, StoreError> {
            let inner = self.inner.begin()?;
            let n = self.transactions.fetch_add(1, Ordering::Relaxed) + 1;
            Ok(Box::new(TestTxn {
                inner,
                report_unknown: self.flaky_every > 0 && n.is_multiple_of(self.flaky_every),
            }))
        }

        fn describe(&self) -> String {
            format!("test:{}", self.inner.describe())
        }
    }

    impl KvTxn for TestTxn<'_> {
        fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            self.inner.get(key)
        }
        fn get_range(
            &mut self,
            begin: &[u8],
            end: &[u8],
            limit: usize,
        ) -> Result<Vec<KeyValue>, StoreError> {
            self.inner.get_range(begin, end, limit)
        }
        fn set(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
            self.inner.set(key, value)
        }
        fn clear(&mut self, key: &[u8]) -> Result<(), StoreError> {
            self.inner.clear(key)
        }
        fn clear_range(&mut self, begin: &[u8], end: &[u8]) -> Result<(), StoreError> {
            self.inner.clear_range(begin, end)
        }
        fn commit(self: Box<Self>) -> Result<(), StoreError> {
            self.inner.commit()?;
            if self.report_unknown {
                return Err(StoreError::CommitUnknown);
            }
            Ok(())
        }
    }

    pub(crate) fn set_leader(store: &TestStore, name: &str, epoch: u64) {
        store.raw(|txn| {
            let record = format!(r#"{{"epoch":{epoch},"holder":"h1"}}"#);
            txn.set(&keys::leader(name), record.as_bytes()).unwrap();
        });
    }

    /// Incompressible pseudo-random bytes (splitmix64), reproducible.
    fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed;
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
        }
        out.truncate(len);
        out
    }

    fn write(store: &TestStore, fence: &Fence, state: &[u8]) -> CheckpointMeta {
        write_checkpoint(store, fence, state, 1, BTreeMap::new(), BTreeMap::new()).unwrap()
    }

    fn write_err(store: &TestStore, fence: &Fence, state: &[u8]) -> CheckpointError {
        write_checkpoint(store, fence, state, 1, BTreeMap::new(), BTreeMap::new()).unwrap_err()
    }

    /// Run `f` with the log events it emits captured as text.
    fn capture_logs<T>(f: impl FnOnce() -> T) -> (T, String) {
        #[derive(Clone, Default)]
        struct Buffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .without_time()
            .with_target(false)
            .with_writer(move || writer.clone())
            .finish();
        let value = tracing::subscriber::with_default(subscriber, f);
        let log = String::from_utf8_lossy(&buffer.0.lock().unwrap()).into_owned();
        (value, log)
    }

    fn keys_of_generation(store: &TestStore, name: &str, gen: u64) -> usize {
        let subspace = generation(name, gen);
        store
            .dump()
            .iter()
            .filter(|(key, _)| key.starts_with(subspace.bytes()))
            .count()
    }

    #[test]
    fn round_trips_64_mib_across_many_transactions() {
        let store = TestStore::new();
        set_leader(&store, "big", 1);
        let fence = Fence::new("big", 1);
        let state = random_bytes(64 * 1024 * 1024, 7);

        let started = Instant::now();
        let meta = write(&store, &fence, &state);
        let written = started.elapsed();
        let commits = store.transactions.load(Ordering::Relaxed);
        let started = Instant::now();
        let read = read_current(&store, "big").unwrap().unwrap();
        let read_time = started.elapsed();
        eprintln!(
            "64 MiB checkpoint: write {written:?} in {commits} transactions, read {read_time:?}"
        );

        assert_eq!(meta.chunk_count, 1024);
        // At most MAX_CHUNKS_PER_TXN chunks per transaction.
        assert!(commits >= 1024 / MAX_CHUNKS_PER_TXN as u64);
        assert_eq!(read.meta, meta);
        assert!(read.corrupt_generations.is_empty());
        assert!(read.state == state, "the state read back differs");
    }

    #[test]
    fn offsets_marks_and_state_version_round_trip() {
        let store = TestStore::new();
        set_leader(&store, "p", 4);
        let offsets = BTreeMap::from([(0, 17), (3, 9_000_000_000), (-1, -1)]);
        let marks = BTreeMap::from([
            ("out:0".to_string(), "p/0/16/2".to_string()),
            ("weird \"key\"".to_string(), "\u{1f980}".to_string()),
        ]);
        let written = write_checkpoint(
            &store,
            &Fence::new("p", 4),
            b"hello",
            42,
            offsets.clone(),
            marks.clone(),
        )
        .unwrap();

        let meta = read_current_meta(&store, "p").unwrap().unwrap();
        assert_eq!(meta, written);
        assert_eq!((meta.offsets, meta.marks), (offsets.clone(), marks.clone()));
        assert_eq!(
            (meta.state_version, meta.epoch, meta.size_bytes),
            (42, 4, 5)
        );
        let checkpoint = read_current(&store, "p").unwrap().unwrap();
        assert_eq!(checkpoint.state, b"hello");
        assert_eq!(checkpoint.meta.offsets, offsets);
        assert_eq!(checkpoint.meta.marks, marks);
    }

    #[test]
    fn nothing_stored_reads_as_none() {
        let store = TestStore::new();
        assert!(read_current(&store, "p").unwrap().is_none());
        assert!(read_current_meta(&store, "p").unwrap().is_none());
    }

    #[test]
    fn empty_state_round_trips() {
        let store = TestStore::new();
        set_leader(&store, "p", 1);
        let meta = write(&store, &Fence::new("p", 1), b"");
        assert_eq!(meta.chunk_count, 0);
        assert_eq!(read_current(&store, "p").unwrap().unwrap().state, b"");
    }

    #[test]
    fn a_flipped_byte_is_detected_and_the_previous_generation_used() {
        let store = TestStore::new();
        set_leader(&store, "p", 1);
        let fence = Fence::new("p", 1);
        let old = random_bytes(100_000, 1);
        let new = random_bytes(3 * CHUNK_BYTES + 5, 2);
        let old_meta = write(&store, &fence, &old);
        let new_meta = write(&store, &fence, &new);

        store.raw(|txn| {
            let key = chunk_key("p", new_meta.generation, 1);
            let mut chunk = txn.get(&key).unwrap().unwrap();
            chunk[1234] ^= 0x01;
            txn.set(&key, &chunk).unwrap();
        });

        let (checkpoint, log) = capture_logs(|| read_current(&store, "p").unwrap().unwrap());
        assert_eq!(checkpoint.meta, old_meta);
        assert_eq!(checkpoint.state, old);
        assert_eq!(checkpoint.corrupt_generations, vec![new_meta.generation]);
        // Loudly: an error naming the processor, the generation and why.
        let expected = format!(
            "ERROR checkpoint generation {} of processor \"p\" is corrupt: its sha256 is",
            new_meta.generation
        );
        assert!(log.contains(&expected), "{log}");
        // The metadata itself is intact, so the cheap poll still names it.
        assert_eq!(read_current_meta(&store, "p").unwrap().unwrap(), new_meta);
    }

    #[test]
    fn a_missing_chunk_is_detected_and_the_previous_generation_used() {
        let store = TestStore::new();
        set_leader(&store, "p", 1);
        let fence = Fence::new("p", 1);
        let first = write(&store, &fence, &random_bytes(10, 1));
        let second = write(&store, &fence, &random_bytes(2 * CHUNK_BYTES, 2));
        let third = write(&store, &fence, &random_bytes(3 * CHUNK_BYTES, 3));

        // The last chunk of the newest, the middle chunk of the next.
        store.raw(|txn| {
            txn.clear(&chunk_key("p", third.generation, 2)).unwrap();
            txn.clear(&chunk_key("p", second.generation, 0)).unwrap();
        });

        let checkpoint = read_current(&store, "p").unwrap().unwrap();
        assert_eq!(checkpoint.meta, first);
        assert_eq!(
            checkpoint.corrupt_generations,
            vec![third.generation, second.generation]
        );
    }

    #[test]
    fn every_generation_corrupt_is_an_error_naming_them() {
        let store = TestStore::new();
        set_leader(&store, "p", 1);
        let fence = Fence::new("p", 1);
        let first = write(&store, &fence, &random_bytes(CHUNK_BYTES + 1, 1));
        let second = write(&store, &fence, &random_bytes(CHUNK_BYTES + 1, 2));
        store.raw(|txn| {
            txn.clear(&chunk_key("p", first.generation, 1)).unwrap();
            // Truncated chunk: length check.
            txn.set(&chunk_key("p", second.generation, 1), b"").unwrap();
        });
        match read_current(&store, "p") {
            Err(CheckpointError::Corrupt {
                processor,
                corrupt_generations,
            }) => {
                assert_eq!(processor, "p");
                assert_eq!(
                    corrupt_generations,
                    vec![second.generation, first.generation]
                );
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn a_stale_epoch_is_refused_and_changes_nothing() {
        let store = TestStore::new();
        set_leader(&store, "p", 1);
        let fence = Fence::new("p", 1);
        write(&store, &fence, &random_bytes(CHUNK_BYTES * 2, 1));
        set_leader(&store, "p", 2);
        let before = store.dump();

        let error = write_checkpoint(
            &store,
            &fence,
            &random_bytes(CHUNK_BYTES * 2, 2),
            1,
            BTreeMap::from([(0, 99)]),
            BTreeMap::new(),
        )
        .unwrap_err();
        assert!(
            matches!(
                error,
                CheckpointError::Fenced {
                    writer_epoch: 1,
                    current_epoch: Some(2),
                    ..
                }
            ),
            "{error:?}"
        );
        assert!(error.to_string().contains("epoch 2"), "{error}");
        assert_eq!(store.dump(), before);

        // Without any leader record, nobody may write.
        let error = write_err(&TestStore::new(), &fence, b"x");
        assert!(matches!(
            error,
            CheckpointError::Fenced {
                current_epoch: None,
                ..
            }
        ));
    }

    #[test]
    fn orphan_chunks_of_a_fenced_out_writer_are_collected() {
        let store = TestStore::new();
        set_leader(&store, "p", 1);
        let zombie = Fence::new("p", 1);
        let policy = RetryPolicy::default();
        let kept = write(&store, &zombie, b"first");

        // The epoch-1 leader starts a checkpoint, then is deposed mid-way.
        let orphan = allocate_generation(&store, &policy, &zombie).unwrap();
        let state = random_bytes(CHUNK_BYTES * MAX_CHUNKS_PER_TXN * 2, 9);
        write_chunks(
            &store,
            &policy,
            &zombie,
            orphan,
            &state[..CHUNK_BYTES * MAX_CHUNKS_PER_TXN],
        )
        .unwrap();
        set_leader(&store, "p", 2);
        assert!(matches!(
            write_chunks(&store, &policy, &zombie, orphan, &state),
            Err(CheckpointError::Fenced { .. })
        ));
        let meta = CheckpointMeta {
            generation: orphan,
            ..kept.clone()
        };
        assert!(matches!(
            commit_generation(&store, &policy, &zombie, &meta, KEEP_GENERATIONS),
            Err(CheckpointError::Fenced { .. })
        ));
        // The zombie cannot garbage-collect either.
        assert!(matches!(
            collect_garbage(&store, &policy, &zombie, 1),
            Err(CheckpointError::Fenced { .. })
        ));
        assert_eq!(keys_of_generation(&store, "p", orphan), MAX_CHUNKS_PER_TXN);
        assert_eq!(
            stored_generations(&store, "p").unwrap(),
            vec![kept.generation, orphan]
        );
        assert_eq!(read_current(&store, "p").unwrap().unwrap().state, b"first");

        // The new leader's first checkpoint collects the orphan.
        let leader = Fence::new("p", 2);
        let newer = write(&store, &leader, b"second");
        assert!(newer.generation > orphan);
        assert_eq!(keys_of_generation(&store, "p", orphan), 0);
        assert_eq!(
            stored_generations(&store, "p").unwrap(),
            vec![kept.generation, newer.generation]
        );
        assert_eq!(read_current(&store, "p").unwrap().unwrap().state, b"second");
    }

    #[test]
    fn only_the_last_k_generations_remain() {
        let store = TestStore::new();
        set_leader(&store, "p", 1);
        let fence = Fence::new("p", 1);
        let mut written = Vec::new();
        for i in 0..10u64 {
            written.push(write(&store, &fence, &random_bytes(CHUNK_BYTES + 10, i)).generation);
        }
        assert_eq!(stored_generations(&store, "p").unwrap(), written[7..]);

        let options = CheckpointOptions {
            keep_generations: 5,
            ..CheckpointOptions::default()
        };
        for i in 0..6u64 {
            let meta = write_checkpoint_with(
                &store,
                &options,
                &fence,
                &random_bytes(10, i),
                1,
                BTreeMap::new(),
                BTreeMap::new(),
            )
            .unwrap();
            written.push(meta.generation);
        }
        assert_eq!(
            stored_generations(&store, "p").unwrap(),
            written[written.len() - 5..]
        );
        // Another processor's checkpoints are untouched.
        set_leader(&store, "q", 1);
        write(&store, &Fence::new("q", 1), b"q");
        assert_eq!(stored_generations(&store, "p").unwrap().len(), 5);
        assert_eq!(stored_generations(&store, "q").unwrap().len(), 1);
    }

    #[test]
    fn writes_survive_unknown_commit_results() {
        // Every third commit applies but reports CommitUnknown, so bodies
        // are re-run after applied commits: allocation, chunks, switch, GC.
        let store = TestStore::flaky(3);
        set_leader(&store, "p", 1);
        let fence = Fence::new("p", 1);
        let mut last = None;
        for i in 0..6u64 {
            let state = random_bytes(CHUNK_BYTES * 9 + 3, i);
            let meta = write(&store, &fence, &state);
            last = Some((meta, state));
        }
        let (meta, state) = last.unwrap();
        let checkpoint = read_current(&store, "p").unwrap().unwrap();
        assert_eq!(checkpoint.meta, meta);
        assert_eq!(checkpoint.state, state);
        assert!(checkpoint.corrupt_generations.is_empty());
        // No orphan left behind: exactly the kept generations.
        assert_eq!(
            stored_generations(&store, "p").unwrap().len(),
            KEEP_GENERATIONS
        );
    }

    #[test]
    fn a_commit_older_than_the_current_generation_is_refused() {
        let store = TestStore::new();
        set_leader(&store, "p", 1);
        let fence = Fence::new("p", 1);
        let policy = RetryPolicy::default();
        let early = allocate_generation(&store, &policy, &fence).unwrap();
        let current = write(&store, &fence, b"later");
        let meta = CheckpointMeta {
            generation: early,
            ..current.clone()
        };
        assert!(matches!(
            commit_generation(&store, &policy, &fence, &meta, KEEP_GENERATIONS),
            Err(CheckpointError::Superseded { .. })
        ));
        assert_eq!(read_current_meta(&store, "p").unwrap().unwrap(), current);
    }

    #[test]
    fn oversized_metadata_is_refused_before_writing() {
        let store = TestStore::new();
        set_leader(&store, "p", 1);
        let before = store.dump();
        let marks = (0..2_000)
            .map(|i| (format!("mark-{i}"), "x".repeat(50)))
            .collect();
        let error = write_checkpoint(&store, &Fence::new("p", 1), b"s", 1, BTreeMap::new(), marks)
            .unwrap_err();
        assert!(
            matches!(error, CheckpointError::MetadataTooLarge { .. }),
            "{error:?}"
        );
        assert_eq!(store.dump(), before);
    }

    #[test]
    fn a_malformed_leader_record_is_reported() {
        let store = TestStore::new();
        store.raw(|txn| txn.set(&keys::leader("p"), b"not json").unwrap());
        let error = write_err(&store, &Fence::new("p", 1), b"x");
        assert!(
            matches!(error, CheckpointError::BadRecord { .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains("leader record"), "{error}");
    }

    #[test]
    fn the_leader_epoch_ignores_other_fields() {
        let store = TestStore::new();
        store.raw(|txn| {
            txn.set(
                &keys::leader("p"),
                br#"{"holder":"h2","epoch":7,"renewed":{"n":1}}"#,
            )
            .unwrap()
        });
        let mut txn = store.inner.begin().unwrap();
        assert_eq!(read_leader_epoch(&mut *txn, "p").unwrap(), Some(7));
        assert_eq!(read_leader_epoch(&mut *txn, "q").unwrap(), None);
    }

    /// Restore with a callback that refuses the states in `refused`.
    fn restore_refusing(
        store: &TestStore,
        refused: &[Vec<u8>],
    ) -> Result<Option<Restored<Vec<u8>>>, RestoreError<String>> {
        restore_newest(store, &RetryPolicy::default(), "p", |_, state| {
            if refused.contains(&state) {
                Err(RestoreFailure::Refused("incompatible state".to_string()))
            } else {
                Ok(state)
            }
        })
    }

    fn write_at(store: &TestStore, fence: &Fence, state: &[u8], offset: i64) -> CheckpointMeta {
        let marks = BTreeMap::from([("out".to_string(), (offset * 10).to_string())]);
        write_checkpoint(store, fence, state, 1, BTreeMap::from([(0, offset)]), marks).unwrap()
    }

    #[test]
    fn a_refused_state_falls_back_to_the_previous_generation_with_its_own_position() {
        let store = TestStore::new();
        set_leader(&store, "p", 1);
        let fence = Fence::new("p", 1);
        let old = write_at(&store, &fence, b"old", 100);
        let new = write_at(&store, &fence, b"new", 200);

        let (restored, log) = capture_logs(|| {
            restore_refusing(&store, &[b"new".to_vec()])
                .unwrap()
                .unwrap()
        });
        assert_eq!(restored.value, b"old");
        // The older generation's own offsets and marks come with its state.
        assert_eq!(restored.meta, old);
        assert_eq!(restored.meta.offsets[&0], 100);
        assert_eq!(
            restored.unusable,
            vec![UnusableGeneration {
                generation: new.generation,
                kind: FaultKind::Refused,
                reason: "incompatible state".to_string(),
            }]
        );
        let expected = format!(
            "ERROR checkpoint generation {} of processor \"p\" was refused by the processor: incompatible state; trying an older one",
            new.generation
        );
        assert!(log.contains(&expected), "{log}");
        // Nothing refused: the current generation, nothing skipped.
        let restored = restore_refusing(&store, &[]).unwrap().unwrap();
        assert_eq!((restored.meta, restored.unusable), (new, Vec::new()));
    }

    #[test]
    fn no_usable_generation_is_an_error_naming_each_and_why() {
        let store = TestStore::new();
        set_leader(&store, "p", 1);
        let fence = Fence::new("p", 1);
        let first = write(&store, &fence, b"a");
        let second = write(&store, &fence, b"b");
        store.raw(|txn| {
            txn.set(&chunk_key("p", second.generation, 0), b"x")
                .unwrap()
        });
        let error = match restore_refusing(&store, &[b"a".to_vec()]) {
            Err(RestoreError::Checkpoint(error)) => error,
            other => panic!("expected a checkpoint error, got {:?}", other.map(|_| ())),
        };
        let CheckpointError::Unusable { unusable, .. } = &error else {
            panic!("expected Unusable, got {error:?}");
        };
        assert_eq!(
            unusable
                .iter()
                .map(|u| (u.generation, u.kind))
                .collect::<Vec<_>>(),
            vec![
                (second.generation, FaultKind::Corrupt),
                (first.generation, FaultKind::Refused)
            ]
        );
        let message = error.to_string();
        assert!(
            message.contains(&format!(
                "generation {} is corrupt: its sha256",
                second.generation
            )) && message.contains(&format!(
                "generation {} was refused by the processor: incompatible state",
                first.generation
            )),
            "{message}"
        );
    }

    #[test]
    fn a_failure_that_is_not_the_states_stops_without_falling_back() {
        let store = TestStore::new();
        set_leader(&store, "p", 1);
        let fence = Fence::new("p", 1);
        write(&store, &fence, b"a");
        write(&store, &fence, b"b");
        let mut calls = 0;
        let result = restore_newest(&store, &RetryPolicy::default(), "p", |_, _| {
            calls += 1;
            Err::<(), _>(RestoreFailure::Failed("the module does not instantiate"))
        });
        assert!(matches!(
            result,
            Err(RestoreError::Failed("the module does not instantiate"))
        ));
        assert_eq!(calls, 1, "no older generation is tried");
    }

    #[test]
    fn the_candidate_skips_known_unusable_and_broken_metadata() {
        let store = TestStore::new();
        set_leader(&store, "p", 1);
        let fence = Fence::new("p", 1);
        let first = write(&store, &fence, b"a");
        let second = write(&store, &fence, b"b");
        let third = write(&store, &fence, b"c");
        store.raw(|txn| txn.set(&meta_key("p", third.generation), b"{").unwrap());
        let kept = read_kept(&store, "p").unwrap();
        assert_eq!(
            kept.iter().map(|k| k.generation).collect::<Vec<_>>(),
            vec![third.generation, second.generation, first.generation]
        );
        assert!(kept[0].meta.is_err());
        assert_eq!(newest_candidate(&kept, |_| false), Some(&second));
        assert_eq!(
            newest_candidate(&kept, |g| g == second.generation),
            Some(&first)
        );
        assert_eq!(newest_candidate(&kept, |_| true), None);
        assert!(read_kept(&TestStore::new(), "p").unwrap().is_empty());
    }

    #[test]
    fn reports_live_with_kept_generations_and_are_collected_with_them() {
        let store = TestStore::new();
        set_leader(&store, "p", 1);
        let fence = Fence::new("p", 1);
        let first = write(&store, &fence, b"a");
        let found = UnusableGeneration {
            generation: first.generation,
            kind: FaultKind::Refused,
            reason: "é".repeat(MAX_REPORT_REASON_BYTES),
        };
        let report = UnusableReport::new(&found, "b", Some("abc"));
        assert!(report.reason.len() <= MAX_REPORT_REASON_BYTES + '…'.len_utf8());
        assert!(report_unusable(&store, "p", &report).unwrap());
        assert_eq!(
            read_unusable_reports(&store, "p").unwrap(),
            vec![report.clone()]
        );
        // The report key never reads as a chunk, nor disturbs the state.
        assert_eq!(read_current(&store, "p").unwrap().unwrap().state, b"a");

        // Not kept any more: collected with its generation, never re-created.
        for state in [b"b", b"c", b"d"] {
            write(&store, &fence, state);
        }
        assert!(!stored_generations(&store, "p")
            .unwrap()
            .contains(&first.generation));
        assert!(read_unusable_reports(&store, "p").unwrap().is_empty());
        assert!(!report_unusable(&store, "p", &report).unwrap());
        assert!(!stored_generations(&store, "p")
            .unwrap()
            .contains(&first.generation));
    }

    #[test]
    fn a_changed_offset_in_the_metadata_is_detected() {
        let store = TestStore::new();
        set_leader(&store, "p", 1);
        let fence = Fence::new("p", 1);
        let old = write_at(&store, &fence, b"old", 100);
        let new = write_at(&store, &fence, b"new", 200);
        // One digit: the state's sha256 still matches, only the position is
        // wrong — which would silently skip 100 records.
        store.raw(|txn| {
            let key = meta_key("p", new.generation);
            let text = String::from_utf8(txn.get(&key).unwrap().unwrap()).unwrap();
            assert!(text.contains(r#""offsets":{"0":200}"#), "{text}");
            let damaged = text.replace(r#""offsets":{"0":200}"#, r#""offsets":{"0":300}"#);
            txn.set(&key, damaged.as_bytes()).unwrap();
        });
        let checkpoint = read_current(&store, "p").unwrap().unwrap();
        assert_eq!(checkpoint.meta, old);
        assert_eq!(checkpoint.corrupt_generations, vec![new.generation]);
        let kept = read_kept(&store, "p").unwrap();
        assert!(
            kept[0]
                .meta
                .as_ref()
                .unwrap_err()
                .contains("metadata checksum"),
            "{:?}",
            kept[0].meta
        );
    }

    #[test]
    fn legacy_metadata_without_a_checksum_is_read_only_with_its_exact_members() {
        let store = TestStore::new();
        set_leader(&store, "p", 1);
        let meta = write_at(&store, &Fence::new("p", 1), b"s", 5);
        let legacy = serde_json::to_vec(&meta).unwrap();
        assert_eq!(parse_meta(&legacy, meta.generation), Ok(meta.clone()));
        // A damaged checksum key must not pass for legacy metadata.
        let renamed = String::from_utf8(encode_meta(&meta))
            .unwrap()
            .replace("meta_sha256", "meta_sha25x");
        let error = parse_meta(renamed.as_bytes(), meta.generation).unwrap_err();
        assert!(error.contains("unknown member \"meta_sha25x\""), "{error}");
        // A newer writer's extra member is fine when the checksum covers it.
        let mut members: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&serde_json::to_vec(&meta).unwrap()).unwrap();
        members.insert(
            "added_later".into(),
            serde_json::json!([1, {"b": 2, "a": 1}]),
        );
        members.insert(META_CHECKSUM_KEY.into(), meta_checksum(&members).into());
        let newer = serde_json::to_vec(&members).unwrap();
        assert_eq!(parse_meta(&newer, meta.generation), Ok(meta));
    }

    /// Fuzzing the decoders of stored bytes (issue 6): metadata, the current
    /// pointer, the generation counter, the leader epoch, reports, and chunk
    /// assembly with its integrity check. Properties: never a panic, and
    /// damaged bytes are an error or a fallback to another generation read
    /// back exactly — never a silently different state or position.
    ///
    /// Cases per property: `PROPTEST_CASES` (proptest's default config reads
    /// it; 256 when unset), e.g.
    /// `PROPTEST_CASES=100000 cargo test -p logstream-host --release --lib store::checkpoint::tests::fuzz`.
    mod fuzz {
        use super::*;

        /// A way to damage stored bytes; positions are taken modulo the length.
        #[derive(Debug, Clone)]
        enum Damage {
            Flip { at: usize, bit: u8 },
            Set { at: usize, byte: u8 },
            Truncate { at: usize },
            Insert { at: usize, byte: u8 },
            Delete { at: usize },
            Replace(Vec<u8>),
        }

        fn damage() -> impl Strategy<Value = Damage> {
            prop_oneof![
                (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Damage::Flip { at, bit }),
                (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Damage::Set { at, byte }),
                any::<usize>().prop_map(|at| Damage::Truncate { at }),
                (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Damage::Insert { at, byte }),
                any::<usize>().prop_map(|at| Damage::Delete { at }),
                proptest::collection::vec(any::<u8>(), 0..64).prop_map(Damage::Replace),
            ]
        }

        fn apply(bytes: &[u8], damage: &Damage) -> Vec<u8> {
            let mut out = bytes.to_vec();
            let len = out.len();
            match *damage {
                Damage::Flip { at, bit } if len > 0 => out[at % len] ^= 1 << bit,
                Damage::Set { at, byte } if len > 0 => out[at % len] = byte,
                Damage::Truncate { at } => out.truncate(at % (len + 1)),
                Damage::Insert { at, byte } => out.insert(at % (len + 1), byte),
                Damage::Delete { at } if len > 0 => {
                    out.remove(at % len);
                }
                Damage::Replace(ref bytes) => out = bytes.clone(),
                _ => {}
            }
            out
        }

        fn meta() -> impl Strategy<Value = CheckpointMeta> {
            (
                (any::<u64>(), any::<u64>(), any::<u32>(), any::<u64>()),
                1u64..=MAX_VALUE_BYTES as u64,
                any::<[u8; 32]>(),
                proptest::collection::btree_map(any::<i32>(), any::<i64>(), 0..4),
                proptest::collection::btree_map(".{0,12}", ".{0,12}", 0..4),
                any::<u64>(),
            )
                .prop_map(
                    |(
                        (generation, epoch, state_version, size_bytes),
                        chunk_bytes,
                        digest,
                        offsets,
                        marks,
                        created,
                    )| {
                        CheckpointMeta {
                            generation,
                            epoch,
                            state_version,
                            size_bytes,
                            chunk_bytes,
                            chunk_count: size_bytes.div_ceil(chunk_bytes),
                            sha256: hex::encode(digest),
                            offsets,
                            marks,
                            created_at_unix_ms: created,
                        }
                    },
                )
        }

        proptest! {
            #[test]
            fn metadata_decoder_never_panics_and_checks_what_it_accepts(
                bytes in proptest::collection::vec(any::<u8>(), 0..600),
                gen in any::<u64>(),
            ) {
                if let Ok(meta) = parse_meta(&bytes, gen) {
                    prop_assert_eq!(meta.generation, gen);
                    prop_assert!(meta.chunk_bytes > 0);
                    prop_assert_eq!(meta.chunk_count, meta.size_bytes.div_ceil(meta.chunk_bytes));
                }
            }

            #[test]
            fn damaged_metadata_is_refused_or_reads_unchanged(
                meta in meta(),
                damages in proptest::collection::vec(damage(), 1..4),
            ) {
                let stored = encode_meta(&meta);
                prop_assert_eq!(parse_meta(&stored, meta.generation), Ok(meta.clone()));
                let damaged = damages.iter().fold(stored, |bytes, d| apply(&bytes, d));
                if let Ok(read) = parse_meta(&damaged, meta.generation) {
                    prop_assert_eq!(read, meta);
                }
            }

            #[test]
            fn report_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
                let store = TestStore::in_ram();
                set_leader(&store, "p", 1);
                let meta = write(&store, &Fence::new("p", 1), b"s");
                store.raw(|txn| txn.set(&report_key("p", meta.generation), &bytes).unwrap());
                for report in read_unusable_reports(&store, "p").unwrap() {
                    prop_assert_eq!(report.generation, meta.generation);
                }
            }

            /// Damage to any stored key of a processor's checkpoints — the
            /// pointer, the counter, metadata, chunks, or an extra chunk —
            /// yields the exact state, metadata and position of *some*
            /// written generation, or an error; a write afterwards is
            /// refused or lands as a readable generation.
            #[test]
            fn damaged_checkpoints_read_back_exactly_or_fail(
                sizes in proptest::collection::vec(0usize..(2 * CHUNK_BYTES + 3), 1..=3),
                seed in any::<u64>(),
                target in any::<usize>(),
                damage in damage(),
            ) {
                let store = TestStore::in_ram();
                set_leader(&store, "p", 1);
                let fence = Fence::new("p", 1);
                let mut written = BTreeMap::new();
                for (i, size) in sizes.iter().enumerate() {
                    let state = random_bytes(*size, seed.wrapping_add(i as u64));
                    let meta = write_at(&store, &fence, &state, 10 * (i as i64 + 1));
                    written.insert(meta.generation, (meta, state));
                }
                // Every key of the checkpoints, plus one chunk past the end of
                // the newest generation (bytes that must be ignored).
                let (newest, (newest_meta, _)) = written.last_key_value().unwrap();
                let mut keys: Vec<Vec<u8>> = store
                    .dump()
                    .into_iter()
                    .map(|(key, _)| key)
                    .filter(|key| key.starts_with(keys::checkpoints("p").bytes()))
                    .collect();
                keys.push(chunk_key("p", *newest, newest_meta.chunk_count));
                let key = keys[target % keys.len()].clone();
                store.raw(|txn| {
                    let before = txn.get(&key).unwrap().unwrap_or_default();
                    let after = apply(&before, &damage);
                    if matches!(damage, Damage::Truncate { at } if at % 3 == 0) {
                        txn.clear(&key).unwrap();
                    } else {
                        txn.set(&key, &after).unwrap();
                    }
                });

                match read_current(&store, "p") {
                    Ok(Some(read)) => {
                        let (meta, state) = &written[&read.meta.generation];
                        prop_assert_eq!(&read.meta, meta);
                        prop_assert!(&read.state == state, "a different state was read back");
                    }
                    Ok(None) => prop_assert!(false, "the checkpoints vanished"),
                    Err(error) => prop_assert!(
                        matches!(error, CheckpointError::Corrupt { .. } | CheckpointError::BadRecord { .. }),
                        "{error:?}"
                    ),
                }
                if let Ok(meta) = write_checkpoint(&store, &fence, b"after", 1, BTreeMap::new(), BTreeMap::new()) {
                    let read = read_current(&store, "p").unwrap().unwrap();
                    prop_assert_eq!(read.meta, meta);
                    prop_assert_eq!(read.state, b"after".to_vec());
                }
            }

            /// A refusing processor over random generations: the newest not
            /// refused is restored with its own metadata, the refused newer
            /// ones are listed in order.
            #[test]
            fn restore_uses_the_newest_state_not_refused(
                count in 1usize..=KEEP_GENERATIONS,
                refused_mask in any::<u8>(),
            ) {
                let store = TestStore::in_ram();
                set_leader(&store, "p", 1);
                let fence = Fence::new("p", 1);
                let metas: Vec<CheckpointMeta> = (0..count)
                    .map(|i| write_at(&store, &fence, format!("state-{i}").as_bytes(), i as i64))
                    .collect();
                let refused: Vec<Vec<u8>> = (0..count)
                    .filter(|i| refused_mask & (1 << i) != 0)
                    .map(|i| format!("state-{i}").into_bytes())
                    .collect();
                let newest_ok = (0..count).rev().find(|i| refused_mask & (1 << i) == 0);
                match (restore_refusing(&store, &refused), newest_ok) {
                    (Ok(Some(restored)), Some(i)) => {
                        prop_assert_eq!(&restored.meta, &metas[i]);
                        prop_assert_eq!(restored.value, format!("state-{i}").into_bytes());
                        let skipped: Vec<u64> = restored.unusable.iter().map(|u| u.generation).collect();
                        let expected: Vec<u64> = metas[i + 1..].iter().rev().map(|m| m.generation).collect();
                        prop_assert_eq!(skipped, expected);
                    }
                    (Err(RestoreError::Checkpoint(CheckpointError::Unusable { unusable, .. })), None) => {
                        prop_assert_eq!(unusable.len(), count);
                    }
                    (other, expected) => prop_assert!(
                        false,
                        "restored {:?}, expected state {expected:?}",
                        other.map(|r| r.map(|r| r.meta.generation)).map_err(|e| e.to_string())
                    ),
                }
            }

            #[test]
            fn counter_and_leader_decoders_never_panic(
                counter in proptest::collection::vec(any::<u8>(), 0..12),
                leader in proptest::collection::vec(any::<u8>(), 0..64),
            ) {
                let store = TestStore::in_ram();
                set_leader(&store, "p", 1);
                let fence = Fence::new("p", 1);
                let first = write(&store, &fence, b"s");
                store.raw(|txn| txn.set(&next_generation_key("p"), &counter).unwrap());
                match allocate_generation(&store, &RetryPolicy::default(), &fence) {
                    Ok(gen) => {
                        prop_assert_eq!(counter.len(), 8);
                        prop_assert!(gen > first.generation);
                    }
                    Err(error) => prop_assert!(
                        counter.len() != 8 && matches!(error, CheckpointError::BadRecord { .. }),
                        "{error:?}"
                    ),
                }
                store.raw(|txn| txn.set(&keys::leader("p"), &leader).unwrap());
                let mut txn = store.inner.begin().unwrap();
                let _ = read_leader_epoch(&mut *txn, "p");
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(12))]

        /// Chunking round-trips at and around chunk and batch boundaries.
        #[test]
        fn chunking_round_trips(
            chunks in 0usize..(MAX_CHUNKS_PER_TXN + 3),
            delta in -2i64..=2,
            seed in any::<u64>(),
        ) {
            let len = (chunks as i64 * CHUNK_BYTES as i64 + delta).max(0) as usize;
            let store = TestStore::in_ram();
            set_leader(&store, "p", 1);
            let state = random_bytes(len, seed);
            let meta = write(&store, &Fence::new("p", 1), &state);
            prop_assert_eq!(meta.chunk_count, len.div_ceil(CHUNK_BYTES) as u64);
            let checkpoint = read_current(&store, "p").unwrap().unwrap();
            prop_assert!(checkpoint.state == state);
        }
    }
}
