//! What a host reports about itself on `/readyz` and `/status`: whether its
//! store heartbeat succeeded recently and the registry was read, and per
//! unit its role, epoch, next offset, last checkpoint, records processed
//! and its last takeovers with their phase timings.
//!
//! The host loop and the unit threads write it ([`HostStatus`] and
//! [`UnitStatus`] handles, each behind its own mutex so units never wait on
//! each other); the HTTP server only reads a copy ([`HostStatus::report`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::store::checkpoint::{CheckpointMeta, FaultKind, UnusableGeneration};
use crate::unit_id::UnitId;

/// Unusable checkpoint generations listed per unit in `/status`, newest
/// last; older ones are dropped (they are long out of the kept ones).
pub const MAX_LISTED_UNUSABLE: usize = 16;

/// Takeovers listed per unit in `/status`, newest last; older ones are
/// dropped (`logstream_takeovers_total` counts them all).
pub const MAX_LISTED_TAKEOVERS: usize = 8;

/// A host is ready while its last successful store heartbeat is at most
/// this old. The host loop heartbeats every 250 ms or so; applying a
/// deployment (compiling a module, connecting its units) can hold the loop
/// for seconds, which must not flap readiness.
pub const READY_HEARTBEAT_MAX_AGE: Duration = Duration::from_secs(10);

/// The shared status of one host (cheap to clone).
#[derive(Clone)]
pub struct HostStatus {
    host_id: String,
    incarnation: String,
    inner: Arc<Mutex<HostInner>>,
}

#[derive(Default)]
struct HostInner {
    last_heartbeat_ok: Option<Instant>,
    registry_read: bool,
    units: BTreeMap<String, UnitStatus>,
    /// Processors this host could not start, with why.
    failed_processors: BTreeMap<String, String>,
    capacity: Option<CapacityReport>,
}

/// The shared status of one unit (cheap to clone).
#[derive(Clone)]
pub struct UnitStatus {
    processor: String,
    partition: i32,
    inner: Arc<Mutex<UnitInner>>,
}

#[derive(Default, Clone)]
struct UnitInner {
    leading: bool,
    epoch: Option<u64>,
    /// This host's wall clock when its current leadership began.
    leader_since_unix_ms: Option<u64>,
    /// Input records run through the processor while leading on this host.
    records_in: u64,
    /// This host's takeovers of the unit, oldest first.
    takeovers: Vec<TakeoverReport>,
    next_offset: Option<i64>,
    input_high_watermark: Option<i64>,
    checkpoint: Option<CheckpointMeta>,
    /// Distinct generations this unit found unusable, oldest first.
    unusable: Vec<UnusableGeneration>,
    /// Failures on this host so far.
    failures: u64,
    last_failure: Option<Failure>,
    /// Between a failure and its restart.
    failed: bool,
    /// A passive's standby: warm (a live instance) or cold (past the
    /// standby memory budget); `None` until its first refresh.
    standby_warm: Option<bool>,
    /// The linear memory of the unit's last standby instance, once measured.
    standby_bytes: Option<u64>,
}

#[derive(Clone)]
struct Failure {
    reason: String,
    at_unix_ms: u64,
    restart_at: Instant,
}

/// `/status` as JSON.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub host_id: String,
    pub incarnation: String,
    /// This host's wall clock when the report was made, ms since the Unix
    /// epoch (what the `*_unix_ms` fields compare with).
    pub now_unix_ms: u64,
    pub ready: bool,
    /// Why not ready (absent when ready).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_ready: Option<String>,
    pub units: Vec<UnitReport>,
    /// Processors this host could not start, with why (it retries).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failed_processors: Vec<FailedProcessorReport>,
    /// Units it may run, runs, and cannot run (absent before the first
    /// registry read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity: Option<CapacityReport>,
}

/// A host's unit capacity, in `/status`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CapacityReport {
    pub max_units: u32,
    pub running: usize,
    /// The standby memory budget (`standby_memory_mib`), what the warm
    /// standbys hold of it, and how many they are.
    pub standby_memory_mib: u64,
    pub standby_memory_used_mib: u64,
    pub warm_standbys: usize,
    /// Threads running the units now (the worker pool's core, and the
    /// extra workers started while steps block).
    pub unit_workers: usize,
    /// Units of deployed processors this host does not run for lack of
    /// room (it does not contend for their leases).
    pub waiting: Vec<String>,
}

/// Units named in a readiness reason, at most.
const MAX_UNITS_NAMED: usize = 5;

/// A processor a host could not start, in `/status`.
#[derive(Debug, Clone, Serialize)]
pub struct FailedProcessorReport {
    pub processor: String,
    pub reason: String,
}

/// A unit's last failure, in `/status`.
#[derive(Debug, Clone, Serialize)]
pub struct FailureReport {
    pub reason: String,
    /// This host's wall clock when it failed, ms since the Unix epoch.
    pub at_unix_ms: u64,
    /// Seconds until the restart (0 once restarted).
    pub restart_in_seconds: f64,
}

/// One unit in `/status`.
#[derive(Debug, Clone, Serialize)]
pub struct UnitReport {
    /// `PROCESSOR/PARTITION`.
    pub name: String,
    pub processor: String,
    pub partition: i32,
    /// `leader`, `passive`, or `failed` (between a failure and its
    /// restart: holding no lease).
    pub role: &'static str,
    /// The epoch it leads at, or last led at on this host.
    pub epoch: Option<u64>,
    /// While leading: when this host's leadership began (its wall clock,
    /// ms since the Unix epoch).
    pub leader_since_unix_ms: Option<u64>,
    /// Input records run through the processor while leading on this host
    /// (`logstream_records_in_total`): a rate over successive reports is
    /// the unit's records/s here.
    pub records_in: u64,
    /// This host's last takeovers of the unit, oldest first (at most
    /// [`MAX_LISTED_TAKEOVERS`]).
    pub takeovers: Vec<TakeoverReport>,
    /// Next input offset: the leader's, or the latest checkpoint's for a
    /// passive.
    pub next_offset: Option<i64>,
    /// The input partition's high watermark as last seen by the leader.
    pub input_high_watermark: Option<i64>,
    /// The latest checkpoint written (leader) or seen (passive).
    pub last_checkpoint: Option<CheckpointReport>,
    /// Checkpoint generations this unit found unusable (corrupt, or refused
    /// by the processor's restore) and skipped, oldest first.
    pub corrupt_checkpoints: Vec<CorruptCheckpointReport>,
    /// Times the unit failed on this host (and restarted).
    pub failures: u64,
    /// The last of them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<FailureReport>,
    /// A passive's standby: `warm` (a live instance restored from the latest
    /// checkpoint) or `cold` (none: past the host's standby memory budget,
    /// its takeover restores from the store).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub standby: Option<&'static str>,
    /// The linear memory a warm standby of this unit holds (measured when
    /// it was last restored): what it costs the standby budget.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub standby_bytes: Option<u64>,
}

/// One takeover of a unit by this host, in `/status`: when, at which
/// epoch, from which checkpoint, and how long each phase took (from the
/// won claim; the detection before it, up to a lease, is not included).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TakeoverReport {
    pub epoch: u64,
    /// This host's wall clock when the takeover began.
    pub at_unix_ms: u64,
    /// The checkpoint generation restored (`None`: none, empty state).
    pub generation: Option<u64>,
    /// Whether the warm standby already held that generation (no restore
    /// from the store).
    pub warm_standby: bool,
    /// Restoring the state (instantiation from the store when not warm).
    pub restore_ms: f64,
    /// Fencing the previous leader, marking new outputs, reading the
    /// outputs back and seeking the input.
    pub fence_and_seek_ms: f64,
    /// From the takeover's start to leading (the phases above and the
    /// checkpoint metadata read before them).
    pub total_ms: f64,
    /// From the takeover's start to the first batch's outputs
    /// acknowledged; `None` until then.
    pub first_output_ms: Option<f64>,
}

/// An unusable checkpoint generation in `/status`.
#[derive(Debug, Clone, Serialize)]
pub struct CorruptCheckpointReport {
    pub generation: u64,
    /// `corrupt` (damaged data) or `refused` (intact, but the processor's
    /// restore refused its state).
    pub fault: FaultKind,
    pub reason: String,
}

/// A checkpoint in `/status`.
#[derive(Debug, Clone, Serialize)]
pub struct CheckpointReport {
    pub generation: u64,
    pub size_bytes: u64,
    /// Since its writer's wall clock stamped it (another host's clock for a
    /// checkpoint a passive saw).
    pub age_seconds: f64,
}

/// A duration in milliseconds, for the JSON.
pub fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Status is plain data: a panicked writer leaves it usable.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl HostStatus {
    pub fn new(host_id: &str, incarnation: &str) -> Self {
        HostStatus {
            host_id: host_id.to_string(),
            incarnation: incarnation.to_string(),
            inner: Arc::default(),
        }
    }

    pub fn heartbeat_succeeded(&self) {
        lock(&self.inner).last_heartbeat_ok = Some(Instant::now());
    }

    pub fn registry_read(&self) {
        lock(&self.inner).registry_read = true;
    }

    /// `Ok` when ready, else why not (one line).
    pub fn readiness(&self) -> Result<(), String> {
        let inner = lock(&self.inner);
        match inner.last_heartbeat_ok {
            None => return Err("no store heartbeat has succeeded yet".to_string()),
            Some(at) if at.elapsed() > READY_HEARTBEAT_MAX_AGE => {
                return Err(format!(
                    "the last successful store heartbeat was {:.1} s ago (more than {} s)",
                    at.elapsed().as_secs_f64(),
                    READY_HEARTBEAT_MAX_AGE.as_secs()
                ))
            }
            Some(_) => {}
        }
        if !inner.registry_read {
            return Err("the deployment registry has not been read yet".to_string());
        }
        if let Some(capacity) = inner.capacity.as_ref().filter(|c| !c.waiting.is_empty()) {
            let named: Vec<&str> = capacity
                .waiting
                .iter()
                .take(MAX_UNITS_NAMED)
                .map(String::as_str)
                .collect();
            return Err(format!(
                "at capacity: {} units cannot run on this host (max_units {}, running {}): {}{}",
                capacity.waiting.len(),
                capacity.max_units,
                capacity.running,
                named.join(", "),
                if capacity.waiting.len() > named.len() {
                    ", …"
                } else {
                    ""
                }
            ));
        }
        if let Some((processor, reason)) = inner.failed_processors.iter().next() {
            return Err(format!(
                "processor {processor} could not start on this host: {reason}"
            ));
        }
        let units: Vec<(String, UnitStatus)> = inner
            .units
            .iter()
            .map(|(name, unit)| (name.clone(), unit.clone()))
            .collect();
        drop(inner);
        for (name, unit) in units {
            let state = lock(&unit.inner);
            if let (true, Some(failure)) = (state.failed, &state.last_failure) {
                return Err(format!(
                    "unit {name} failed ({} times on this host): {}; it restarts in {:.1} s",
                    state.failures,
                    failure.reason,
                    failure
                        .restart_at
                        .saturating_duration_since(Instant::now())
                        .as_secs_f64()
                ));
            }
        }
        Ok(())
    }

    /// Processor `processor` could not start on this host, for `reason`.
    pub fn processor_failed(&self, processor: &str, reason: &str) {
        lock(&self.inner)
            .failed_processors
            .insert(processor.to_string(), reason.to_string());
    }

    /// The host's unit capacity and use.
    pub fn capacity(&self, capacity: CapacityReport) {
        lock(&self.inner).capacity = Some(capacity);
    }

    /// The processors listed as failed.
    pub fn failed_processor_names(&self) -> Vec<String> {
        lock(&self.inner)
            .failed_processors
            .keys()
            .cloned()
            .collect()
    }

    /// Processor `processor` started, or is gone.
    pub fn processor_ok(&self, processor: &str) {
        lock(&self.inner).failed_processors.remove(processor);
    }

    /// The status entry of a unit, created passive.
    pub fn unit(&self, processor: &str, partition: i32) -> UnitStatus {
        let unit = UnitStatus {
            processor: processor.to_string(),
            partition,
            inner: Arc::default(),
        };
        let name = UnitId::new(processor, partition).name();
        lock(&self.inner).units.insert(name, unit.clone());
        unit
    }

    pub fn forget_unit(&self, processor: &str, partition: i32) {
        let name = UnitId::new(processor, partition).name();
        lock(&self.inner).units.remove(&name);
    }

    /// A snapshot of everything, for `/status`.
    pub fn report(&self) -> StatusReport {
        let readiness = self.readiness();
        let (units, failed_processors, capacity) = {
            let inner = lock(&self.inner);
            (
                inner.units.values().cloned().collect::<Vec<UnitStatus>>(),
                inner
                    .failed_processors
                    .iter()
                    .map(|(processor, reason)| FailedProcessorReport {
                        processor: processor.clone(),
                        reason: reason.clone(),
                    })
                    .collect::<Vec<_>>(),
                inner.capacity.clone(),
            )
        };
        let now_ms = crate::probe::unix_micros() / 1000;
        StatusReport {
            host_id: self.host_id.clone(),
            incarnation: self.incarnation.clone(),
            now_unix_ms: now_ms,
            ready: readiness.is_ok(),
            not_ready: readiness.err(),
            failed_processors,
            capacity,
            units: units
                .iter()
                .map(|unit| {
                    let state = lock(&unit.inner).clone();
                    UnitReport {
                        name: UnitId::new(&unit.processor, unit.partition).name(),
                        processor: unit.processor.clone(),
                        partition: unit.partition,
                        role: match (state.failed, state.leading) {
                            (true, _) => "failed",
                            (false, true) => "leader",
                            (false, false) => "passive",
                        },
                        failures: state.failures,
                        standby: match (state.leading, state.standby_warm) {
                            (false, Some(true)) => Some("warm"),
                            (false, Some(false)) => Some("cold"),
                            _ => None,
                        },
                        standby_bytes: state.standby_bytes,
                        last_failure: state.last_failure.as_ref().map(|f| FailureReport {
                            reason: f.reason.clone(),
                            at_unix_ms: f.at_unix_ms,
                            restart_in_seconds: f
                                .restart_at
                                .saturating_duration_since(Instant::now())
                                .as_secs_f64(),
                        }),
                        epoch: state.epoch,
                        leader_since_unix_ms: state
                            .leader_since_unix_ms
                            .filter(|_| state.leading && !state.failed),
                        records_in: state.records_in,
                        takeovers: state.takeovers.clone(),
                        next_offset: state.next_offset,
                        input_high_watermark: state.input_high_watermark,
                        last_checkpoint: state.checkpoint.map(|meta| CheckpointReport {
                            generation: meta.generation,
                            size_bytes: meta.size_bytes,
                            age_seconds: now_ms.saturating_sub(meta.created_at_unix_ms) as f64
                                / 1000.0,
                        }),
                        corrupt_checkpoints: state
                            .unusable
                            .iter()
                            .map(|u| CorruptCheckpointReport {
                                generation: u.generation,
                                fault: u.kind,
                                reason: u.reason.clone(),
                            })
                            .collect(),
                    }
                })
                .collect(),
        }
    }
}

impl UnitStatus {
    /// Took over: leading at `takeover.epoch` from `next_offset`.
    pub fn leading(&self, takeover: TakeoverReport, next_offset: Option<i64>) {
        let mut inner = lock(&self.inner);
        inner.leading = true;
        inner.epoch = Some(takeover.epoch);
        inner.leader_since_unix_ms = Some(takeover.at_unix_ms);
        inner.next_offset = next_offset;
        if inner.takeovers.len() >= MAX_LISTED_TAKEOVERS {
            inner.takeovers.remove(0);
        }
        inner.takeovers.push(takeover);
    }

    /// The first batch after the last takeover was acknowledged, `after`
    /// its start.
    pub fn first_output(&self, after: Duration) {
        if let Some(last) = lock(&self.inner).takeovers.last_mut() {
            last.first_output_ms.get_or_insert(millis(after));
        }
    }

    pub fn passive(&self) {
        lock(&self.inner).leading = false;
    }

    /// The passive's standby is warm (`true`) or cold; a warm one of this
    /// unit holds `bytes` of linear memory (when measured).
    pub fn standby(&self, warm: bool, bytes: Option<u64>) {
        let mut inner = lock(&self.inner);
        inner.standby_warm = Some(warm);
        if bytes.is_some() {
            inner.standby_bytes = bytes;
        }
    }

    /// Failed for `reason`; restarts in `restart_in`.
    pub fn failed(&self, reason: &str, restart_in: Duration) {
        let mut inner = lock(&self.inner);
        inner.leading = false;
        inner.failed = true;
        inner.failures += 1;
        inner.last_failure = Some(Failure {
            reason: reason.to_string(),
            at_unix_ms: crate::probe::unix_micros() / 1000,
            restart_at: Instant::now() + restart_in,
        });
    }

    /// Restarted after a failure (the last failure stays listed).
    pub fn restarting(&self) {
        lock(&self.inner).failed = false;
    }

    pub fn progressed(&self, records: u64, next_offset: i64, input_high_watermark: Option<i64>) {
        let mut inner = lock(&self.inner);
        inner.records_in += records;
        inner.next_offset = Some(next_offset);
        if input_high_watermark.is_some() {
            inner.input_high_watermark = input_high_watermark;
        }
    }

    /// Found generation `found` unusable: whether that is news (the first
    /// time this unit found that generation unusable).
    pub fn unusable(&self, found: &UnusableGeneration) -> bool {
        let mut inner = lock(&self.inner);
        if inner
            .unusable
            .iter()
            .any(|u| u.generation == found.generation)
        {
            return false;
        }
        if inner.unusable.len() >= MAX_LISTED_UNUSABLE {
            inner.unusable.remove(0);
        }
        inner.unusable.push(found.clone());
        true
    }

    /// Whether this unit found `generation` unusable before.
    pub fn found_unusable(&self, generation: u64) -> bool {
        lock(&self.inner)
            .unusable
            .iter()
            .any(|u| u.generation == generation)
    }

    /// A checkpoint written (leader) or restored from (passive).
    pub fn checkpoint(&self, meta: &CheckpointMeta) {
        let mut inner = lock(&self.inner);
        inner.checkpoint = Some(meta.clone());
        if !inner.leading {
            inner.next_offset = meta.offsets.get(&self.partition).copied();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_after_a_heartbeat_and_a_registry_read() {
        let status = HostStatus::new("h", "h:1:2");
        assert!(status.readiness().unwrap_err().contains("heartbeat"));
        status.heartbeat_succeeded();
        assert!(status.readiness().unwrap_err().contains("registry"));
        status.registry_read();
        assert_eq!(status.readiness(), Ok(()));
    }

    #[test]
    fn report_lists_units_with_their_role() {
        let status = HostStatus::new("h", "h:1:2");
        let unit = status.unit("pt", 0);
        unit.leading(takeover(3), Some(10));
        unit.progressed(2, 12, Some(20));
        let report = status.report();
        assert_eq!(report.units.len(), 1);
        assert_eq!(report.units[0].name, "pt/0");
        assert_eq!(report.units[0].role, "leader");
        assert_eq!(report.units[0].epoch, Some(3));
        assert_eq!(report.units[0].next_offset, Some(12));
        assert_eq!(report.units[0].records_in, 2);
        assert_eq!(report.units[0].leader_since_unix_ms, Some(1_000));
        unit.passive();
        assert_eq!(status.report().units[0].leader_since_unix_ms, None);
        status.forget_unit("pt", 0);
        assert!(status.report().units.is_empty());
    }

    fn takeover(epoch: u64) -> TakeoverReport {
        TakeoverReport {
            epoch,
            at_unix_ms: 1_000,
            generation: Some(epoch),
            warm_standby: true,
            restore_ms: 1.0,
            fence_and_seek_ms: 2.0,
            total_ms: 4.0,
            first_output_ms: None,
        }
    }

    #[test]
    fn takeovers_are_listed_with_their_first_output_and_bounded() {
        let status = HostStatus::new("h", "h:1:2");
        let unit = status.unit("pt", 0);
        unit.leading(takeover(1), Some(0));
        unit.first_output(Duration::from_millis(7));
        unit.first_output(Duration::from_millis(9));
        let listed = &status.report().units[0].takeovers;
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].first_output_ms, Some(7.0), "the first one only");
        for epoch in 2..=MAX_LISTED_TAKEOVERS as u64 + 1 {
            unit.leading(takeover(epoch), Some(0));
        }
        let listed = &status.report().units[0].takeovers;
        assert_eq!(listed.len(), MAX_LISTED_TAKEOVERS);
        assert_eq!(listed[0].epoch, 2, "the oldest is dropped past the bound");
        assert_eq!(listed.last().unwrap().first_output_ms, None);
    }

    #[test]
    fn unusable_generations_are_listed_once_and_bounded() {
        let status = HostStatus::new("h", "h:1:2");
        let unit = status.unit("pt", 0);
        let found = |generation| UnusableGeneration {
            generation,
            kind: FaultKind::Refused,
            reason: format!("no {generation}"),
        };
        assert!(!unit.found_unusable(7));
        assert!(unit.unusable(&found(7)));
        assert!(
            !unit.unusable(&found(7)),
            "the same generation is news once"
        );
        assert!(unit.found_unusable(7));
        let report = serde_json::to_value(status.report()).unwrap();
        assert_eq!(
            report["units"][0]["corrupt_checkpoints"],
            serde_json::json!([{"generation": 7, "fault": "refused", "reason": "no 7"}])
        );
        for generation in 8..8 + MAX_LISTED_UNUSABLE as u64 {
            assert!(unit.unusable(&found(generation)));
        }
        assert!(
            !unit.found_unusable(7),
            "the oldest is dropped past the bound"
        );
        assert_eq!(
            status.report().units[0].corrupt_checkpoints.len(),
            MAX_LISTED_UNUSABLE
        );
    }
}
