//! Reading checkpoints back: the kept generations' metadata, and restoring
//! the newest usable generation — verifying every chunk, the size and the
//! sha256, and falling back past a generation that is corrupt or whose state
//! the processor refuses, with that generation's own offsets and marks.

use std::convert::Infallible;
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::*;
use crate::store::kv::{KvStore, KvTxn, RetryPolicy, TxnResult};

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

/// The stored bytes of each unit's current-checkpoint pointer (`None`: no
/// checkpoint), in one snapshot: enough to tell whether a checkpoint was
/// written since the last look, for many units in one transaction. (A
/// read-only transaction commits nothing on any backend.)
pub fn read_current_pointers(
    store: &dyn KvStore,
    policy: &RetryPolicy,
    names: &[&str],
) -> Result<Vec<Option<Vec<u8>>>, CheckpointError> {
    run(store, policy, |txn| {
        names
            .iter()
            .map(|name| Ok(txn.get(&current_key(name))?))
            .collect()
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

pub(super) fn describe_unusable(unusable: &[UnusableGeneration]) -> String {
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
    restore: impl FnMut(&CheckpointMeta, Vec<u8>) -> Result<T, RestoreFailure<E>>,
) -> Result<Option<Restored<T>>, RestoreError<E>> {
    restore_newest_where(store, policy, name, |_| true, restore)
}

/// [`restore_newest`] among the newest generations that `accept` takes. The
/// search ends at the first intact generation it does not take (the older
/// ones belong to the same past): with `Ok(None)` when no generation before
/// it was either, with [`CheckpointError::Unusable`] when the ones before it
/// were all unusable. (A unit keeps to its own state lineage this way: a
/// corrupt generation of its lineage must not make it start over.)
pub fn restore_newest_where<T, E>(
    store: &dyn KvStore,
    policy: &RetryPolicy,
    name: &str,
    accept: impl Fn(&CheckpointMeta) -> bool,
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
                Ok(meta) if !accept(&meta) => {
                    if unusable.is_empty() {
                        return Ok(None);
                    }
                    break;
                }
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
