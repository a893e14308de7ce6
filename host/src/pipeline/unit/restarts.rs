//! Crash-only units: a unit whose run fails — an error it cannot ride out,
//! or a panic anywhere in its worker — is dropped whole and started again
//! after a backoff.
//!
//! Guarantees:
//! - **A failed unit holds no lease.** Dropping the unit stops its elector
//!   and releases the lease ([`super::elector`]), so a passive on another
//!   host takes over at once (within a lease if the release cannot reach
//!   the store); during the backoff this host does not contend.
//! - **Bounded retries, never a hot loop.** Restarts wait
//!   [`FIRST_RESTART_DELAY`], doubling up to [`MAX_RESTART_DELAY`], with
//!   jitter so the units of one host do not restart in step. A unit that
//!   ran [`HEALTHY_RUN`] without failing starts its backoff over.
//! - **Reported.** Each failure is logged, counted
//!   (`logstream_unit_failures_total`) and shown in `/status`,
//!   `logstream status` and `/readyz` until the unit runs again.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};

use super::{Unit, UnitExit};
use crate::admin::UnitAdmin;

/// The first wait before restarting a failed unit.
pub const FIRST_RESTART_DELAY: Duration = Duration::from_millis(500);
/// The longest wait before restarting a failed unit.
pub const MAX_RESTART_DELAY: Duration = Duration::from_secs(30);
/// A unit that ran this long without failing starts its backoff over.
pub const HEALTHY_RUN: Duration = Duration::from_secs(60);
/// How often a waiting restart looks at the stop flag.
const STOP_CHECK: Duration = Duration::from_millis(10);

fn restart_delays() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::new()
        .with_min_delay(FIRST_RESTART_DELAY)
        .with_max_delay(MAX_RESTART_DELAY)
        .with_jitter()
        .without_max_times()
        .build()
}

/// Run the unit `start` makes until `stop` is set, starting a new one after
/// each failure (see the module docs).
pub fn run_with_restarts(start: impl Fn() -> Unit, stop: &AtomicBool, admin: &UnitAdmin) {
    let mut delays = restart_delays();
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let exit = catch_unwind(AssertUnwindSafe(|| start().run(stop)));
        let reason = match exit {
            Ok(UnitExit::Stopped) => return,
            Ok(UnitExit::Failed(error)) => format!("{error:#}"),
            Err(panic) => format!("the unit panicked: {}", panic_message(&*panic)),
        };
        if started.elapsed() >= HEALTHY_RUN {
            delays = restart_delays();
        }
        // (The jitter may add up to the delay again: keep to the bound.)
        let delay = delays
            .next()
            .unwrap_or(MAX_RESTART_DELAY)
            .min(MAX_RESTART_DELAY);
        tracing::error!(
            %reason,
            restart_in = ?delay,
            "unit failed; its lease is released and it restarts after a backoff"
        );
        admin.failed(&reason, delay);
        let until = Instant::now() + delay;
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(STOP_CHECK.min(until.saturating_duration_since(Instant::now())));
        }
        admin.restarting();
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        text.to_string()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "(no message)".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_delays_grow_to_the_cap_and_never_end() {
        let delays: Vec<Duration> = restart_delays().take(20).collect();
        assert_eq!(delays.len(), 20);
        assert!(delays[0] >= FIRST_RESTART_DELAY, "{delays:?}");
        assert!(
            delays[0] < FIRST_RESTART_DELAY * 2 + FIRST_RESTART_DELAY,
            "{delays:?}"
        );
        // Jitter adds at most the current delay again.
        assert!(
            delays.iter().all(|d| *d <= MAX_RESTART_DELAY * 2),
            "{delays:?}"
        );
        assert!(delays[19] >= MAX_RESTART_DELAY, "{delays:?}");
    }

    #[test]
    fn panic_messages_are_read_from_both_payload_kinds() {
        let caught = catch_unwind(|| panic!("plain")).unwrap_err();
        assert_eq!(panic_message(&*caught), "plain");
        let caught = catch_unwind(|| panic!("formatted {}", 7)).unwrap_err();
        assert_eq!(panic_message(&*caught), "formatted 7");
    }
}
