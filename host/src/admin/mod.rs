//! The per-host admin surface: Prometheus metrics and a read-only HTTP
//! server (`logstream host --admin-addr`, default `127.0.0.1:0`: a free
//! loopback port per host, printed at start).
//! Endpoints and metrics are documented in `docs/admin.md`.
//!
//! - [`metrics`]: the metric families and a unit's series;
//! - [`status`]: readiness and the per-unit status of `/status`;
//! - [`server`]: the HTTP server on its own thread.
//!
//! The host owns one [`Admin`] (whether or not it serves HTTP: recording is
//! a few atomic updates) and hands each unit a [`UnitAdmin`]; both are
//! cheap to clone. Recording never fails and never blocks on the server.

pub mod metrics;
pub mod server;
pub mod status;

use std::time::Duration;

pub use metrics::{Metrics, UnitMetrics};
pub use server::{AdminServer, StartError};
pub use status::{CapacityReport, HostStatus, StatusReport, TakeoverReport, UnitStatus};

use crate::store::checkpoint::{CheckpointMeta, UnusableGeneration};

/// The default admin address: loopback only, on a free port, so any number
/// of hosts on one machine each serve theirs; the host prints the port it
/// got. A scraper that needs a fixed port is given one (`--admin-addr`).
pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:0";

/// A host's metrics and status.
#[derive(Clone)]
pub struct Admin {
    metrics: Metrics,
    status: HostStatus,
}

impl Admin {
    pub fn new(host_id: &str, incarnation: &str) -> Self {
        Admin {
            metrics: Metrics::new(),
            status: HostStatus::new(host_id, incarnation),
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn status(&self) -> &HostStatus {
        &self.status
    }

    /// The host runs `running` units of at most `max_units`; `waiting`
    /// (unit names) do not fit.
    pub fn capacity(&self, capacity: CapacityReport) {
        self.metrics.capacity(
            capacity.max_units,
            capacity.running,
            capacity.waiting.len(),
            capacity.unit_workers,
        );
        self.status.capacity(capacity);
    }

    /// A processor this host could not start (its module or its topics):
    /// its units do not run here until a later attempt succeeds.
    pub fn processor_failed(&self, processor: &str, reason: &str) {
        self.status.processor_failed(processor, reason);
    }

    /// The processor started (or was removed): no longer failed.
    pub fn processor_ok(&self, processor: &str) {
        self.status.processor_ok(processor);
    }

    /// The handle of unit `processor`/`partition` (its series and status
    /// entry exist from now on).
    pub fn unit(&self, processor: &str, partition: i32) -> UnitAdmin {
        UnitAdmin {
            metrics: self.metrics.unit(processor, partition),
            status: self.status.unit(processor, partition),
        }
    }

    /// Drop a stopped unit's series and status entry.
    pub fn forget_unit(&self, processor: &str, partition: i32) {
        self.metrics.forget_unit(processor, partition);
        self.status.forget_unit(processor, partition);
    }
}

/// What one unit records.
#[derive(Clone)]
pub struct UnitAdmin {
    metrics: UnitMetrics,
    status: UnitStatus,
}

/// One batch as the leader saw it, for [`UnitAdmin::batch_done`].
#[derive(Debug, Clone, Copy)]
pub struct BatchFigures {
    pub records_in: u64,
    /// Outputs produced (not counting those suppressed on replay).
    pub records_out: u64,
    pub dead_letters: u64,
    /// Records the processor failed on (`ProcessedBatch::failures`).
    pub guest_failures: u64,
    /// From the batch being polled to its outputs acknowledged.
    pub elapsed: Duration,
    pub next_offset: i64,
    /// The input partition's high watermark as the consumer last saw it.
    pub input_high_watermark: Option<i64>,
}

/// One takeover as the new leader saw it, for [`UnitAdmin::took_over`].
#[derive(Debug, Clone, Copy)]
pub struct TakeoverFigures {
    pub epoch: u64,
    /// The input offset it goes on from.
    pub next_offset: i64,
    /// The checkpoint generation restored (`None`: none, empty state).
    pub generation: Option<u64>,
    /// The warm standby held that generation.
    pub warm_standby: bool,
    pub restore: Duration,
    /// Fence, marks, read-back and seek.
    pub fence_and_seek: Duration,
    /// From the takeover's start to leading.
    pub total: Duration,
}

impl UnitAdmin {
    /// Took over (see [`TakeoverFigures`]).
    pub fn took_over(&self, takeover: TakeoverFigures) {
        self.metrics.takeovers.inc();
        self.metrics
            .epoch
            .set(i64::try_from(takeover.epoch).unwrap_or(i64::MAX));
        self.metrics.role.set(1);
        let total = takeover.total;
        let report = TakeoverReport {
            epoch: takeover.epoch,
            at_unix_ms: (crate::probe::unix_micros() / 1000)
                .saturating_sub(total.as_millis() as u64),
            generation: takeover.generation,
            warm_standby: takeover.warm_standby,
            restore_ms: status::millis(takeover.restore),
            fence_and_seek_ms: status::millis(takeover.fence_and_seek),
            total_ms: status::millis(total),
            first_output_ms: None,
        };
        self.status.leading(report, Some(takeover.next_offset));
    }

    /// The first batch after the last takeover was acknowledged, `after`
    /// the takeover's start.
    pub fn first_output(&self, after: Duration) {
        self.status.first_output(after);
    }

    /// The broker refused a batch of outputs: a newer leader fenced this
    /// host's producer epoch.
    pub fn batch_fenced(&self) {
        self.metrics.fenced_batches.inc();
    }

    /// The unit failed and restarts in `restart_in` (its lease is
    /// released meanwhile).
    pub fn failed(&self, reason: &str, restart_in: Duration) {
        self.metrics.unit_failures.inc();
        self.metrics.role.set(0);
        self.status.failed(reason, restart_in);
    }

    /// The failed unit starts again (as a passive).
    pub fn restarting(&self) {
        self.status.restarting();
    }

    /// The passive's standby is warm (a live instance) or cold; a warm one
    /// of this unit holds `bytes` of linear memory (when measured).
    pub fn standby(&self, warm: bool, bytes: Option<u64>) {
        self.status.standby(warm, bytes);
    }

    /// The lease lapsed while leading; the unit pauses.
    pub fn lease_lapsed(&self) {
        self.metrics.lease_lapses.inc();
    }

    /// Went passive (demoted, fenced, or stepped back after an error).
    pub fn went_passive(&self) {
        self.metrics.role.set(0);
        self.status.passive();
    }

    pub fn batch_done(&self, batch: BatchFigures) {
        self.metrics.records_in.inc_by(batch.records_in);
        self.metrics.records_out.inc_by(batch.records_out);
        self.metrics.dead_letters.inc_by(batch.dead_letters);
        self.metrics.guest_failures.inc_by(batch.guest_failures);
        self.metrics
            .batch_seconds
            .observe(batch.elapsed.as_secs_f64());
        if let Some(high) = batch.input_high_watermark {
            self.metrics
                .input_lag
                .set(high.saturating_sub(batch.next_offset).max(0));
        }
        self.status.progressed(
            batch.records_in,
            batch.next_offset,
            batch.input_high_watermark,
        );
    }

    /// Wrote checkpoint `meta` in `elapsed`.
    pub fn checkpointed(&self, meta: &CheckpointMeta, elapsed: Duration) {
        self.metrics
            .checkpoint_seconds
            .observe(elapsed.as_secs_f64());
        self.metrics
            .checkpoint_bytes
            .set(i64::try_from(meta.size_bytes).unwrap_or(i64::MAX));
        self.status.checkpoint(meta);
    }

    /// A passive saw (and restored its standby from) checkpoint `meta`.
    pub fn standby_at(&self, meta: &CheckpointMeta) {
        self.status.checkpoint(meta);
    }

    /// Found checkpoint generation `found` unusable and skipped it: counted
    /// and listed in `/status` the first time per generation. Returns
    /// whether it was news (so the caller reports it once).
    pub fn unusable_checkpoint(&self, found: &UnusableGeneration) -> bool {
        let news = self.status.unusable(found);
        if news {
            self.metrics.corrupt_checkpoints.inc();
        }
        news
    }

    /// Whether this unit found checkpoint `generation` unusable before (a
    /// restore need not be retried just to skip it again).
    pub fn found_unusable(&self, generation: u64) -> bool {
        self.status.found_unusable(generation)
    }
}
