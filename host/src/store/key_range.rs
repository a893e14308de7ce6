//! Key ranges `[begin, end)` for stores that track what a transaction read
//! and wrote (optimistic concurrency): the in-memory test store
//! (`occ_memory`) and the simulator's store (`logstream-sim`). One
//! definition, so both compute conflicts the same way.

use std::ops::Bound;

/// The keys from `.0` (included) to `.1` (excluded).
pub type KeyRange = (Vec<u8>, Vec<u8>);

/// The range of exactly `key`: up to its successor, `key` + `0x00`.
pub fn single_key(key: &[u8]) -> KeyRange {
    let mut end = key.to_vec();
    end.push(0);
    (key.to_vec(), end)
}

/// Whether `a` and `b` share a key.
pub fn overlap(a: &KeyRange, b: &KeyRange) -> bool {
    a.0 < b.1 && b.0 < a.1
}

/// `[begin, end)` as the bounds of a `BTreeMap` range.
pub fn bounds(begin: &[u8], end: &[u8]) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    (
        Bound::Included(begin.to_vec()),
        Bound::Excluded(end.to_vec()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_key_overlaps_only_ranges_holding_it() {
        let k = single_key(b"k");
        assert!(overlap(&k, &(b"a".to_vec(), b"z".to_vec())));
        assert!(overlap(&k, &single_key(b"k")));
        assert!(!overlap(&k, &single_key(b"k\0")));
        assert!(!overlap(&k, &(b"a".to_vec(), b"k".to_vec())));
    }
}
