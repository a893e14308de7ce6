//! Writing checkpoints: allocating a generation, writing its chunks and
//! making it current in one small fenced transaction, and collecting the
//! generations no longer kept. Every transaction here checks the writer's
//! epoch (see the parent module's guarantees).

use std::collections::{BTreeMap, BTreeSet};

use foundationdb_tuple::Element;
use sha2::{Digest, Sha256};

use super::*;
use crate::store::kv::{KvStore, KvTxn, RetryPolicy, TxnResult};

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
pub(super) fn allocate_generation(
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
pub(super) fn write_chunks(
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
pub(super) fn commit_generation(
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
pub(super) fn scan_generations(
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
