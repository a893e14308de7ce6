//! The host's Prometheus metrics: one registry per host, every family
//! named `logstream_*` and labelled by `processor` and `partition` (one
//! series per unit). [`Metrics`] owns the registry and renders it in the
//! text exposition format; [`UnitMetrics`] is a unit's cheap cloneable
//! handle, its label values resolved once, so recording costs an atomic
//! update and no lookup. Families are documented in `docs/admin.md`.
//!
//! Guarantee: a unit's series exist from the moment its handle is made
//! (counters at 0, `role` 0) until [`Metrics::forget_unit`] is called for
//! it; a family with no unit renders as nothing (Prometheus convention).

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Labels of every per-unit family.
const UNIT_LABELS: &[&str] = &["processor", "partition"];

/// Buckets of the batch latency histogram, in seconds: a batch takes from
/// well under a millisecond (a few records, passthrough) to seconds (a full
/// batch through a slow processor, or a slow broker acknowledgement).
const BATCH_SECONDS_BUCKETS: &[f64] = &[
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Buckets of the checkpoint duration histogram, in seconds: a small state
/// on SQLite takes about a millisecond, a large one on a remote store
/// seconds.
const CHECKPOINT_SECONDS_BUCKETS: &[f64] = &[
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The metric families of one host.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    records_in: IntCounterVec,
    records_out: IntCounterVec,
    dead_letters: IntCounterVec,
    guest_failures: IntCounterVec,
    takeovers: IntCounterVec,
    corrupt_checkpoints: IntCounterVec,
    fenced_batches: IntCounterVec,
    lease_lapses: IntCounterVec,
    unit_failures: IntCounterVec,
    batch_seconds: HistogramVec,
    checkpoint_seconds: HistogramVec,
    checkpoint_bytes: IntGaugeVec,
    input_lag: IntGaugeVec,
    epoch: IntGaugeVec,
    role: IntGaugeVec,
    max_units: IntGauge,
    units_running: IntGauge,
    units_waiting: IntGauge,
    unit_workers: IntGauge,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| -> IntCounterVec {
            let family = IntCounterVec::new(Opts::new(name, help), UNIT_LABELS)
                .expect("a valid counter definition");
            registry
                .register(Box::new(family.clone()))
                .expect("metric names are unique");
            family
        };
        let gauge = |name: &str, help: &str| -> IntGaugeVec {
            let family = IntGaugeVec::new(Opts::new(name, help), UNIT_LABELS)
                .expect("a valid gauge definition");
            registry
                .register(Box::new(family.clone()))
                .expect("metric names are unique");
            family
        };
        let histogram = |name: &str, help: &str, buckets: &[f64]| -> HistogramVec {
            let family = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                UNIT_LABELS,
            )
            .expect("a valid histogram definition");
            registry
                .register(Box::new(family.clone()))
                .expect("metric names are unique");
            family
        };
        let host_gauge = |name: &str, help: &str| -> IntGauge {
            let gauge = IntGauge::new(name, help).expect("a valid gauge definition");
            registry
                .register(Box::new(gauge.clone()))
                .expect("metric names are unique");
            gauge
        };
        Metrics {
            max_units: host_gauge(
                "logstream_max_units",
                "Most units this host runs (`--max-units`).",
            ),
            units_running: host_gauge(
                "logstream_units_running",
                "Units this host runs (each a leader or a passive).",
            ),
            units_waiting: host_gauge(
                "logstream_units_waiting",
                "Units of deployed processors this host does not run for lack of capacity (it does not contend for their leases).",
            ),
            unit_workers: host_gauge(
                "logstream_unit_workers",
                "Threads running this host's units (the worker pool's core, and extra workers while steps wait on the broker).",
            ),
            records_in: counter(
                "logstream_records_in_total",
                "Input records run through the processor while leading.",
            ),
            records_out: counter(
                "logstream_records_out_total",
                "Output records produced and acknowledged by the broker (outputs a previous leader already delivered are not counted).",
            ),
            dead_letters: counter(
                "logstream_dead_letters_total",
                "Records sent to the dead-letter topic (rejected by the processor or failed in it).",
            ),
            guest_failures: counter(
                "logstream_guest_failures_total",
                "Records the processor failed on (trap, limit, error) as reported by the supervisor.",
            ),
            takeovers: counter(
                "logstream_takeovers_total",
                "Times this host took over the unit's leadership (startup, failover, handover).",
            ),
            corrupt_checkpoints: counter(
                "logstream_corrupt_checkpoints_total",
                "Distinct checkpoint generations this host found unusable for the unit (corrupt, or refused by the processor's restore) and skipped for an older one.",
            ),
            fenced_batches: counter(
                "logstream_fenced_batches_total",
                "Batches of outputs the broker refused because a newer leader of the unit had fenced this host's producer epoch (this host was paused or cut off past its lease); their outputs were produced by the newer leader instead.",
            ),
            lease_lapses: counter(
                "logstream_lease_lapses_total",
                "Times the unit's lease lapsed while this host led it (a renewal overdue, no other holder seen): it paused, and acted again at the same epoch if the next renewal committed.",
            ),
            unit_failures: counter(
                "logstream_unit_failures_total",
                "Times the unit failed on this host (an error it could not ride out, or a panic): it released its lease and restarted after a backoff.",
            ),
            batch_seconds: histogram(
                "logstream_batch_duration_seconds",
                "Time from a batch being polled to its outputs acknowledged by the broker.",
                BATCH_SECONDS_BUCKETS,
            ),
            checkpoint_seconds: histogram(
                "logstream_checkpoint_duration_seconds",
                "Time to write one checkpoint (flush, snapshot, watermarks, store write).",
                CHECKPOINT_SECONDS_BUCKETS,
            ),
            checkpoint_bytes: gauge(
                "logstream_checkpoint_size_bytes",
                "Size of the state in the unit's last checkpoint written by this host.",
            ),
            input_lag: gauge(
                "logstream_input_lag_records",
                "Input partition high watermark (as last seen by the consumer) minus the unit's next offset.",
            ),
            epoch: gauge(
                "logstream_epoch",
                "Epoch the unit last led at on this host (0: never led here).",
            ),
            role: gauge(
                "logstream_role",
                "1 while this host leads the unit, 0 while it is passive.",
            ),
            registry,
        }
    }

    /// The handle of unit `processor`/`partition`, creating its series.
    pub fn unit(&self, processor: &str, partition: i32) -> UnitMetrics {
        let partition = partition.to_string();
        let labels = [processor, partition.as_str()];
        let unit = UnitMetrics {
            records_in: self.records_in.with_label_values(&labels),
            records_out: self.records_out.with_label_values(&labels),
            dead_letters: self.dead_letters.with_label_values(&labels),
            guest_failures: self.guest_failures.with_label_values(&labels),
            takeovers: self.takeovers.with_label_values(&labels),
            corrupt_checkpoints: self.corrupt_checkpoints.with_label_values(&labels),
            fenced_batches: self.fenced_batches.with_label_values(&labels),
            lease_lapses: self.lease_lapses.with_label_values(&labels),
            unit_failures: self.unit_failures.with_label_values(&labels),
            batch_seconds: self.batch_seconds.with_label_values(&labels),
            checkpoint_seconds: self.checkpoint_seconds.with_label_values(&labels),
            checkpoint_bytes: self.checkpoint_bytes.with_label_values(&labels),
            input_lag: self.input_lag.with_label_values(&labels),
            epoch: self.epoch.with_label_values(&labels),
            role: self.role.with_label_values(&labels),
        };
        unit.role.set(0);
        unit
    }

    /// Drop the series of unit `processor`/`partition` (its processor was
    /// undeployed or redeployed: a stale `role` of 1 would mislead).
    pub fn forget_unit(&self, processor: &str, partition: i32) {
        let partition = partition.to_string();
        let labels = [processor, partition.as_str()];
        // Absent series (never recorded) are not an error worth reporting.
        let _ = self.records_in.remove_label_values(&labels);
        let _ = self.records_out.remove_label_values(&labels);
        let _ = self.dead_letters.remove_label_values(&labels);
        let _ = self.guest_failures.remove_label_values(&labels);
        let _ = self.takeovers.remove_label_values(&labels);
        let _ = self.corrupt_checkpoints.remove_label_values(&labels);
        let _ = self.fenced_batches.remove_label_values(&labels);
        let _ = self.lease_lapses.remove_label_values(&labels);
        let _ = self.unit_failures.remove_label_values(&labels);
        let _ = self.batch_seconds.remove_label_values(&labels);
        let _ = self.checkpoint_seconds.remove_label_values(&labels);
        let _ = self.checkpoint_bytes.remove_label_values(&labels);
        let _ = self.input_lag.remove_label_values(&labels);
        let _ = self.epoch.remove_label_values(&labels);
        let _ = self.role.remove_label_values(&labels);
    }

    /// The host's unit capacity and use.
    pub fn capacity(&self, max_units: u32, running: usize, waiting: usize, workers: usize) {
        self.max_units.set(i64::from(max_units));
        self.units_running
            .set(i64::try_from(running).unwrap_or(i64::MAX));
        self.units_waiting
            .set(i64::try_from(waiting).unwrap_or(i64::MAX));
        self.unit_workers
            .set(i64::try_from(workers).unwrap_or(i64::MAX));
    }

    /// Every family in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut text = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut text)
            .expect("encoding into memory does not fail");
        String::from_utf8(text).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The content type of [`Metrics::render`]'s output.
pub fn content_type() -> &'static str {
    prometheus::TEXT_FORMAT
}

/// One unit's series.
#[derive(Clone)]
pub struct UnitMetrics {
    pub records_in: IntCounter,
    pub records_out: IntCounter,
    pub dead_letters: IntCounter,
    pub guest_failures: IntCounter,
    pub takeovers: IntCounter,
    pub corrupt_checkpoints: IntCounter,
    pub fenced_batches: IntCounter,
    pub lease_lapses: IntCounter,
    pub unit_failures: IntCounter,
    pub batch_seconds: prometheus::Histogram,
    pub checkpoint_seconds: prometheus::Histogram,
    pub checkpoint_bytes: IntGauge,
    pub input_lag: IntGauge,
    pub epoch: IntGauge,
    pub role: IntGauge,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_render_and_forgotten_units_vanish() {
        let metrics = Metrics::new();
        let unit = metrics.unit("pt", 0);
        unit.records_in.inc_by(3);
        unit.role.set(1);
        let text = metrics.render();
        assert!(text.contains("logstream_records_in_total{partition=\"0\",processor=\"pt\"} 3"));
        assert!(text.contains("logstream_role{partition=\"0\",processor=\"pt\"} 1"));
        assert!(text
            .contains("logstream_corrupt_checkpoints_total{partition=\"0\",processor=\"pt\"} 0"));
        metrics.forget_unit("pt", 0);
        assert!(!metrics.render().contains("processor=\"pt\""));
    }
}
