//! A unit's producer generation: which of its Kafka transactional ids
//! (`UnitId::transactional_id`) its leaders produce as. Every takeover
//! burns one producer epoch of that id at the broker; when they run out the
//! leader moves the unit to the next generation, a fresh id
//! (`pipeline::fenced::LAST_PRODUCER_EPOCH`).
//!
//! This module owns the key `("unit", UNIT, "producer")`: the generation,
//! u32 big-endian (absent: 0).
//!
//! Guarantees: the generation only moves forward, and only by the holder of
//! the unit's current epoch ([`advance`] checks the fence in the same
//! transaction), so every leader after a move produces as the new id.

use super::checkpoint::{check_fence, CheckpointError, Fence};
use super::keys;
use super::kv::{transact, KvStore, RetryPolicy, TxnAbort};

/// The unit's producer generation (0 until a leader moved it).
pub fn read(store: &dyn KvStore, unit: &str) -> Result<u32, CheckpointError> {
    transact(store, &RetryPolicy::default(), |txn| {
        let value = txn.get(&keys::producer(unit))?;
        decode(unit, value.as_deref())
    })
    .map_err(CheckpointError::from_transact)
}

/// Move the unit past generation `from`, as the holder of `fence`; the
/// generation now in force (already past `from` if this is a retry of an
/// applied commit).
pub fn advance(store: &dyn KvStore, fence: &Fence, from: u32) -> Result<u32, CheckpointError> {
    transact(store, &RetryPolicy::default(), |txn| {
        check_fence(txn, fence)?;
        let key = keys::producer(&fence.processor);
        let stored = decode(&fence.processor, txn.get(&key)?.as_deref())?;
        if stored > from {
            return Ok(stored);
        }
        let next = from + 1;
        txn.set(&key, &next.to_be_bytes())?;
        Ok(next)
    })
    .map_err(CheckpointError::from_transact)
}

fn decode(unit: &str, value: Option<&[u8]>) -> Result<u32, TxnAbort> {
    match value {
        None => Ok(0),
        Some(bytes) => bytes.try_into().map(u32::from_be_bytes).map_err(|_| {
            TxnAbort::with(CheckpointError::BadRecord {
                processor: unit.to_string(),
                record: "producer generation".to_string(),
                reason: format!("{} bytes instead of 4", bytes.len()),
            })
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::checkpoint::tests::{set_leader, TestStore};

    #[test]
    fn only_the_epoch_holder_moves_the_generation_and_only_forward() {
        let store = TestStore::new();
        assert_eq!(read(&store, "p/0").unwrap(), 0);
        set_leader(&store, "p/0", 4);
        assert!(matches!(
            advance(&store, &Fence::new("p/0", 3), 0),
            Err(CheckpointError::Fenced { .. })
        ));
        assert_eq!(read(&store, "p/0").unwrap(), 0);
        assert_eq!(advance(&store, &Fence::new("p/0", 4), 0).unwrap(), 1);
        // A retry of that move (or a stale caller) does not move it again.
        assert_eq!(advance(&store, &Fence::new("p/0", 4), 0).unwrap(), 1);
        assert_eq!(advance(&store, &Fence::new("p/0", 4), 1).unwrap(), 2);
        assert_eq!(read(&store, "p/0").unwrap(), 2);
        assert_eq!(read(&store, "p/1").unwrap(), 0);
    }
}
