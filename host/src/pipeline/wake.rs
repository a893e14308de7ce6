//! Wake-ups for units that hold no thread between steps
//! ([`super::worker_pool`]): what their lease and their input call when
//! something a waiting unit waits for happened.
//!
//! - [`Wake`]: wakes one unit (production: its job in the pool).
//! - [`ArmedWake`]: a wake that fires once per arming. A unit arms it before
//!   it finds its input empty; the input's queue fires it when a record
//!   arrives. Unarmed (a passive that reads its input ahead on its own
//!   schedule, or a leader busy with a batch), arrivals cost nothing.
//!
//! Guarantee: arming before looking at the input loses no wake-up — a
//! record that arrives after the look fires the armed wake. A wake may
//! also come with no record: librdkafka's partition queue carries events
//! too, and any of them reaching the queue empty fires the callback. A
//! woken unit that finds nothing arms again and waits (one extra step).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Wakes one unit: its next step comes at once.
pub type Wake = Arc<dyn Fn() + Send + Sync>;

/// A wake that fires at most once per [`arm`](Self::arm); see the module
/// docs.
pub struct ArmedWake {
    armed: AtomicBool,
    wake: Wake,
}

impl std::fmt::Debug for ArmedWake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArmedWake")
            .field("armed", &self.armed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl ArmedWake {
    pub fn new(wake: Wake) -> Arc<Self> {
        Arc::new(ArmedWake {
            armed: AtomicBool::new(false),
            wake,
        })
    }

    /// The next [`fire`](Self::fire) wakes the unit.
    pub fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// Wake the unit if armed, disarming.
    pub fn fire(&self) {
        if self.armed.swap(false, Ordering::SeqCst) {
            (self.wake)();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn fires_once_per_arming() {
        let woken = Arc::new(AtomicUsize::new(0));
        let counted = woken.clone();
        let wake = ArmedWake::new(Arc::new(move || {
            counted.fetch_add(1, Ordering::SeqCst);
        }));
        wake.fire();
        assert_eq!(woken.load(Ordering::SeqCst), 0, "unarmed");
        wake.arm();
        wake.fire();
        wake.fire();
        assert_eq!(woken.load(Ordering::SeqCst), 1);
        wake.arm();
        wake.fire();
        assert_eq!(woken.load(Ordering::SeqCst), 2);
    }
}
