//! Snapshot encoding: `b"LSS1"` magic, the state version as a little-endian
//! `u32`, then the `postcard` encoding of the processor's `State`.
//!
//! Guarantees: `decode(encode(s)) == s`; a snapshot of another state version
//! goes to [`Processor::migrate`]; bytes that are not a snapshot are refused
//! with [`StateError::Incompatible`] (never a panic).

use crate::Processor;

/// Magic prefix of every SDK snapshot.
pub const MAGIC: &[u8; 4] = b"LSS1";
/// Bytes before the payload: magic and version.
pub const HEADER_LEN: usize = 8;

/// Why a snapshot cannot be taken or restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("incompatible state: {reason}")]
    Incompatible {
        /// The snapshot's state version, when the header could be read.
        found: Option<u32>,
        expected: u32,
        reason: String,
    },
    #[error("state could not be encoded: {0}")]
    Encode(String),
}

/// Encode a state with its version header.
pub fn encode<P: Processor>(state: &P::State) -> Result<Vec<u8>, StateError> {
    let mut bytes = Vec::with_capacity(64);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&P::STATE_VERSION.to_le_bytes());
    postcard::to_extend(state, bytes).map_err(|e| StateError::Encode(e.to_string()))
}

/// Read the state version of a snapshot without decoding it.
pub fn version_of(bytes: &[u8]) -> Option<u32> {
    if bytes.len() < HEADER_LEN || &bytes[..4] != MAGIC {
        return None;
    }
    Some(u32::from_le_bytes(bytes[4..8].try_into().ok()?))
}

/// Decode a snapshot, migrating it when it has another version.
pub fn decode<P: Processor>(bytes: &[u8]) -> Result<P::State, StateError> {
    let Some(found) = version_of(bytes) else {
        return Err(StateError::Incompatible {
            found: None,
            expected: P::STATE_VERSION,
            reason: "the bytes are not a LogStream SDK snapshot (bad header)".into(),
        });
    };
    let payload = &bytes[HEADER_LEN..];
    if found != P::STATE_VERSION {
        return P::migrate(found, payload);
    }
    let (state, rest) =
        postcard::take_from_bytes::<P::State>(payload).map_err(|e| StateError::Incompatible {
            found: Some(found),
            expected: P::STATE_VERSION,
            reason: format!("the state payload does not decode: {e}"),
        })?;
    if !rest.is_empty() {
        return Err(StateError::Incompatible {
            found: Some(found),
            expected: P::STATE_VERSION,
            reason: format!("{} unexpected bytes after the state payload", rest.len()),
        });
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Emitter, Record, Reject};
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    struct Map;
    impl Processor for Map {
        type State = BTreeMap<String, u64>;
        const STATE_VERSION: u32 = 3;
        fn configure(_: &str) -> Result<Self, String> {
            Ok(Map)
        }
        fn process(
            &mut self,
            _: &mut Self::State,
            _: &Record,
            _: &mut Emitter,
        ) -> Result<(), Reject> {
            Ok(())
        }
    }

    proptest! {
        #[test]
        fn round_trips(state in proptest::collection::btree_map(".{0,12}", any::<u64>(), 0..50)) {
            let bytes = encode::<Map>(&state).unwrap();
            prop_assert_eq!(version_of(&bytes), Some(3));
            prop_assert_eq!(decode::<Map>(&bytes).unwrap(), state);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode::<Map>(&bytes);
        }
    }

    #[test]
    fn other_versions_go_to_migrate_which_refuses_by_default() {
        let mut bytes = encode::<Map>(&BTreeMap::new()).unwrap();
        bytes[4] = 2;
        match decode::<Map>(&bytes) {
            Err(StateError::Incompatible {
                found: Some(2),
                expected: 3,
                reason,
            }) => {
                assert!(reason.contains("no migration from version 2"), "{reason}")
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn garbage_and_trailing_bytes_are_refused() {
        assert!(matches!(
            decode::<Map>(b"nope"),
            Err(StateError::Incompatible { found: None, .. })
        ));
        let mut bytes = encode::<Map>(&BTreeMap::new()).unwrap();
        bytes.push(0);
        assert!(matches!(
            decode::<Map>(&bytes),
            Err(StateError::Incompatible { found: Some(3), .. })
        ));
    }
}
