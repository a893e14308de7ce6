//! Crash-only units, run by the host's worker pool: a unit whose step
//! fails — an error it cannot ride out, or a panic — is dropped whole and
//! started again after a backoff. [`UnitJob`] is the unit's job in the
//! pool ([`crate::pipeline::worker_pool`]).
//!
//! Guarantees:
//! - **A failed unit holds no lease.** Dropping the unit stops its elector
//!   and releases the lease ([`super::super::elector`]), so a passive on
//!   another host takes over at once (within a lease if the release cannot
//!   reach the store); during the backoff this host does not contend.
//! - **Bounded retries, never a hot loop.** Restarts wait
//!   [`FIRST_RESTART_DELAY`], doubling up to [`MAX_RESTART_DELAY`], with
//!   jitter so the units of one host do not restart in step. A unit that
//!   ran [`HEALTHY_RUN`] without failing starts its backoff over.
//! - **Reported.** Each failure is logged, counted
//!   (`logstream_unit_failures_total`) and shown in `/status`,
//!   `logstream status` and `/readyz` until the unit runs again.
//! - **A stop hands over.** The job's last step (asked to stop) writes the
//!   unit's final checkpoint and releases its lease.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};

use super::Unit;
use crate::admin::UnitAdmin;
use crate::pipeline::worker_pool::{Job, JobNext, Waker};

/// The first wait before restarting a failed unit.
pub const FIRST_RESTART_DELAY: Duration = Duration::from_millis(500);
/// The longest wait before restarting a failed unit.
pub const MAX_RESTART_DELAY: Duration = Duration::from_secs(30);
/// A unit that ran this long without failing starts its backoff over.
pub const HEALTHY_RUN: Duration = Duration::from_secs(60);

fn restart_delays() -> impl Iterator<Item = Duration> + Send {
    ExponentialBuilder::new()
        .with_min_delay(FIRST_RESTART_DELAY)
        .with_max_delay(MAX_RESTART_DELAY)
        .with_jitter()
        .without_max_times()
        .build()
}

/// Where a unit's job is.
enum Phase {
    /// A unit is to be made (at the start, and after a backoff).
    Starting,
    /// The unit runs; `since` its start.
    Running { unit: Box<Unit>, since: Instant },
    /// The unit failed; the next starts at `until`.
    BackingOff { until: Instant },
}

/// A unit's job in the host's worker pool: makes the unit with `start`,
/// steps it, restarts it after failures (see the module docs).
pub struct UnitJob<F: Fn() -> Unit + Send> {
    start: F,
    admin: UnitAdmin,
    waker: Waker,
    span: tracing::Span,
    phase: Phase,
    delays: Box<dyn Iterator<Item = Duration> + Send>,
}

impl<F: Fn() -> Unit + Send> UnitJob<F> {
    /// The job of the unit `start` makes, woken through `waker`, logging
    /// in `span`.
    pub fn new(start: F, admin: UnitAdmin, waker: Waker, span: tracing::Span) -> Self {
        UnitJob {
            start,
            admin,
            waker,
            span,
            phase: Phase::Starting,
            delays: Box::new(restart_delays()),
        }
    }

    /// Give the unit up after `reason` (it was dropped, releasing its
    /// lease) and back off.
    fn failed(&mut self, reason: String, ran: Duration) -> JobNext {
        if ran >= HEALTHY_RUN {
            self.delays = Box::new(restart_delays());
        }
        // (The jitter may add up to the delay again: keep to the bound.)
        let delay = self
            .delays
            .next()
            .unwrap_or(MAX_RESTART_DELAY)
            .min(MAX_RESTART_DELAY);
        tracing::error!(
            %reason,
            restart_in = ?delay,
            "unit failed; its lease is released and it restarts after a backoff"
        );
        self.admin.failed(&reason, delay);
        self.phase = Phase::BackingOff {
            until: Instant::now() + delay,
        };
        JobNext::Wait(delay)
    }
}

impl<F: Fn() -> Unit + Send> Job for UnitJob<F> {
    fn step(&mut self, stopping: bool) -> JobNext {
        let span = self.span.clone();
        let _entered = span.enter();
        if stopping {
            if let Phase::Running { mut unit, .. } =
                std::mem::replace(&mut self.phase, Phase::Starting)
            {
                if let Err(panic) = catch_unwind(AssertUnwindSafe(|| unit.hand_over())) {
                    tracing::error!(
                        "the unit panicked while handing over: {}",
                        panic_message(&*panic)
                    );
                }
            }
            return JobNext::Done;
        }
        match std::mem::replace(&mut self.phase, Phase::Starting) {
            Phase::BackingOff { until } => {
                let left = until.saturating_duration_since(Instant::now());
                if !left.is_zero() {
                    // Woken early (a stale lease wake): keep waiting.
                    self.phase = Phase::BackingOff { until };
                    return JobNext::Wait(left);
                }
                self.admin.restarting();
                JobNext::Now
            }
            Phase::Starting => {
                let since = Instant::now();
                match catch_unwind(AssertUnwindSafe(|| (self.start)())) {
                    Ok(mut unit) => {
                        let waker = self.waker.clone();
                        unit.set_wake(Arc::new(move || waker.wake()));
                        self.phase = Phase::Running {
                            unit: Box::new(unit),
                            since,
                        };
                        JobNext::Now
                    }
                    Err(panic) => self.failed(
                        format!("the unit panicked: {}", panic_message(&*panic)),
                        Duration::ZERO,
                    ),
                }
            }
            Phase::Running { mut unit, since } => {
                match catch_unwind(AssertUnwindSafe(|| unit.step())) {
                    Ok(Ok(next)) => {
                        self.phase = Phase::Running { unit, since };
                        match next.timeout() {
                            wait if wait.is_zero() => JobNext::Now,
                            wait => JobNext::Wait(wait),
                        }
                    }
                    Ok(Err(error)) => {
                        // Dropping the unit releases its lease.
                        drop(unit);
                        self.failed(format!("{error:#}"), since.elapsed())
                    }
                    Err(panic) => {
                        drop(unit);
                        self.failed(
                            format!("the unit panicked: {}", panic_message(&*panic)),
                            since.elapsed(),
                        )
                    }
                }
            }
        }
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
