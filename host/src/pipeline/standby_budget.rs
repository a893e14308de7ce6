//! The host's standby memory budget (`limits.standby_memory_mib`): how much
//! linear memory the warm standbys of its passive units may hold together.
//!
//! A warm standby is a live instance restored from the unit's latest
//! checkpoint, so a takeover skips the instantiate-and-restore. Past the
//! budget, a passive unit keeps no instance (it is *cold*): its takeover
//! restores from the store, as a unit new to the host does. The compiled
//! module is shared by all units of a processor either way.
//!
//! Guarantees: the warm standbys' linear memory, as each was measured when
//! it was restored, never adds up to more than the budget; a unit holds at
//! most one share (a new standby replaces the unit's old one), and gives it
//! back when it stops being a standby (it leads, fails or stops). Which
//! units are warm is first come, first served: a cold unit is admitted at
//! its next refresh once room frees up.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::wasm::limits::MIB;

/// The standby budget unless configured, in MiB.
pub const DEFAULT_STANDBY_MEMORY_MIB: u64 = 4096;

/// The warm standbys' shares of the budget.
#[derive(Debug)]
pub struct StandbyBudget {
    limit_bytes: u64,
    warm: Mutex<HashMap<String, u64>>,
}

impl StandbyBudget {
    pub fn new(limit_mib: u64) -> Self {
        StandbyBudget {
            limit_bytes: limit_mib.saturating_mul(MIB),
            warm: Mutex::new(HashMap::new()),
        }
    }

    fn warm(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.warm.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a standby of `bytes` for `unit` would fit (its current share
    /// counts as free).
    pub fn has_room(&self, unit: &str, bytes: u64) -> bool {
        let warm = self.warm();
        let others: u64 = warm
            .iter()
            .filter(|(name, _)| name.as_str() != unit)
            .map(|(_, b)| b)
            .sum();
        others + bytes <= self.limit_bytes
    }

    /// Hold `bytes` for `unit`'s warm standby, replacing its old share;
    /// `false` (and no share) when they do not fit.
    pub fn admit(&self, unit: &str, bytes: u64) -> bool {
        let mut warm = self.warm();
        warm.remove(unit);
        let used: u64 = warm.values().sum();
        if used + bytes > self.limit_bytes {
            return false;
        }
        warm.insert(unit.to_string(), bytes);
        true
    }

    /// `unit` holds no warm standby any more.
    pub fn release(&self, unit: &str) {
        self.warm().remove(unit);
    }

    /// Bytes the warm standbys hold, and how many there are.
    pub fn used(&self) -> (u64, usize) {
        let warm = self.warm();
        (warm.values().sum(), warm.len())
    }

    pub fn limit_bytes(&self) -> u64 {
        self.limit_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warm_standbys_never_add_up_past_the_budget() {
        let budget = StandbyBudget::new(3);
        assert!(budget.admit("p/0", 2 * MIB));
        assert!(!budget.has_room("p/1", 2 * MIB));
        assert!(!budget.admit("p/1", 2 * MIB));
        assert!(budget.admit("p/1", MIB));
        assert_eq!(budget.used(), (3 * MIB, 2));
        // A unit's new standby replaces its old share.
        assert!(budget.has_room("p/0", 2 * MIB));
        assert!(budget.admit("p/0", 2 * MIB));
        assert_eq!(budget.used(), (3 * MIB, 2));
        budget.release("p/0");
        assert!(budget.admit("p/2", 2 * MIB));
        assert_eq!(budget.used(), (3 * MIB, 2));
    }
}
