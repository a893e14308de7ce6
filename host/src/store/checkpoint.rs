//! Checkpoints of processor state: fenced, chunked, checksummed, with the
//! last few generations kept to fall back on.
//!
//! This module owns the `("proc", NAME, "ckpt", …)` keys:
//!
//! | key | value |
//! |---|---|
//! | `("proc", NAME, "ckpt", "current")` | JSON pointer: the current generation and the older kept ones, newest first |
//! | `("proc", NAME, "ckpt", "next-gen")` | the next generation id to allocate, u64 big-endian |
//! | `("proc", NAME, "ckpt", "gen", GEN)` | JSON [`CheckpointMeta`] of the generation, written when it becomes current |
//! | `("proc", NAME, "ckpt", "gen", GEN, I)` | chunk `I` of the generation's state, at most [`CHUNK_BYTES`] |
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
//! - **Integrity, loudly.** Reading checks every chunk's length, the size and
//!   the sha256. A corrupt generation is logged with `tracing::error!`,
//!   reported in [`Checkpoint::corrupt_generations`], and the newest intact
//!   kept generation is used instead.
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

fn meta_key(name: &str, gen: u64) -> Vec<u8> {
    generation(name, gen).into_bytes()
}

fn chunk_key(name: &str, gen: u64, index: u64) -> Vec<u8> {
    generation(name, gen).pack(&index)
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

/// Parse and sanity-check a generation's metadata; the error is why the
/// generation is unusable.
fn parse_meta(value: &[u8], gen: u64) -> Result<CheckpointMeta, String> {
    let meta: CheckpointMeta =
        serde_json::from_slice(value).map_err(|e| format!("its metadata is malformed: {e}"))?;
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
    let bytes = serde_json::to_vec(&meta)
        .expect("checkpoint metadata serialises")
        .len();
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
    let meta_bytes = serde_json::to_vec(meta).expect("checkpoint metadata serialises");
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
    'restart: for _ in 0..MAX_READ_RESTARTS {
        // The pointer and the kept generations' metadata, one snapshot.
        let candidates = run(store, policy, |txn| {
            let Some(pointer) = read_pointer(txn, name)? else {
                return Ok(None);
            };
            let mut candidates = Vec::new();
            for gen in pointer.kept() {
                let meta = match txn.get(&meta_key(name, gen))? {
                    None => Err("its metadata is missing".to_string()),
                    Some(value) => parse_meta(&value, gen),
                };
                candidates.push((gen, meta));
            }
            Ok(Some(candidates))
        })?;
        let Some(candidates) = candidates else {
            return Ok(None);
        };

        let mut corrupt_generations = Vec::new();
        for (gen, meta) in candidates {
            let outcome = match meta {
                Ok(meta) => read_state(store, policy, name, &meta).map(|state| (meta, state)),
                Err(reason) => Err(ReadFailure::Corrupt(reason)),
            };
            match outcome {
                Ok((meta, state)) => {
                    if !corrupt_generations.is_empty() {
                        tracing::error!(
                            processor = name,
                            generation = gen,
                            ?corrupt_generations,
                            "restoring from an older checkpoint generation because newer ones are corrupt"
                        );
                    }
                    return Ok(Some(Checkpoint {
                        meta,
                        state,
                        corrupt_generations,
                    }));
                }
                Err(ReadFailure::Corrupt(reason)) => {
                    tracing::error!(
                        processor = name,
                        generation = gen,
                        "checkpoint generation {gen} of processor {name:?} is corrupt: {reason}"
                    );
                    corrupt_generations.push(gen);
                }
                Err(ReadFailure::Vanished) => continue 'restart,
                Err(ReadFailure::Failed(error)) => return Err(error),
            }
        }
        return Err(CheckpointError::Corrupt {
            processor: name.to_string(),
            corrupt_generations,
        });
    }
    Err(CheckpointError::Unstable {
        processor: name.to_string(),
        restarts: MAX_READ_RESTARTS,
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
            let dir = tempfile::tempdir().unwrap();
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
            let store = TestStore::new();
            set_leader(&store, "p", 1);
            let state = random_bytes(len, seed);
            let meta = write(&store, &Fence::new("p", 1), &state);
            prop_assert_eq!(meta.chunk_count, len.div_ceil(CHUNK_BYTES) as u64);
            let checkpoint = read_current(&store, "p").unwrap().unwrap();
            prop_assert!(checkpoint.state == state);
        }
    }
}
