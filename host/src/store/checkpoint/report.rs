//! Reports of unusable generations: a host that skipped a generation
//! (corrupt, or refused by the processor) stores a small report inside that
//! generation's key space, for `logstream status`; it is deleted with the
//! generation.

use serde::{Deserialize, Serialize};

use super::*;
use crate::store::kv::{KvStore, RetryPolicy};

/// Longest reason kept in a stored report: a guest's error message can be
/// long, and a report is one small value.
pub(super) const MAX_REPORT_REASON_BYTES: usize = 2_000;

/// A host's report that it found a kept generation unusable, stored with the
/// generation (and collected with it) so `logstream status` can show it.
/// Diagnostic only: nothing decides on a report; every reader verifies what
/// it reads for itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnusableReport {
    pub generation: u64,
    pub fault: FaultKind,
    pub reason: String,
    /// The host that found it.
    pub host_id: String,
    /// The module whose `restore` was used (a refusal depends on the module).
    pub module_sha256: Option<String>,
    /// The reporting host's wall clock, for display only.
    pub reported_at_unix_ms: u64,
}

impl UnusableReport {
    pub fn new(found: &UnusableGeneration, host_id: &str, module_sha256: Option<&str>) -> Self {
        let mut reason = found.reason.clone();
        if reason.len() > MAX_REPORT_REASON_BYTES {
            let mut end = MAX_REPORT_REASON_BYTES;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
            reason.push('…');
        }
        UnusableReport {
            generation: found.generation,
            fault: found.kind,
            reason,
            host_id: host_id.to_string(),
            module_sha256: module_sha256.map(str::to_string),
            reported_at_unix_ms: unix_millis_now(),
        }
    }
}

/// Store `report` with its generation, if the pointer still keeps that
/// generation (so no key is left under a collected one); whether it was
/// stored. Not fenced: any host that finds a generation unusable may say so,
/// and a report changes no state, offsets or marks. The latest report of a
/// generation wins.
pub fn report_unusable(
    store: &dyn KvStore,
    name: &str,
    report: &UnusableReport,
) -> Result<bool, CheckpointError> {
    let value = serde_json::to_vec(report).expect("a report serialises");
    run(store, &RetryPolicy::default(), |txn| {
        let kept = read_pointer(txn, name)?
            .is_some_and(|pointer| pointer.kept().any(|gen| gen == report.generation));
        if kept {
            txn.set(&report_key(name, report.generation), &value)?;
        }
        Ok(kept)
    })
}

/// The stored reports of the kept generations, newest generation first. A
/// report that does not parse is left out (it is diagnostic only).
pub fn read_unusable_reports(
    store: &dyn KvStore,
    name: &str,
) -> Result<Vec<UnusableReport>, CheckpointError> {
    run(store, &RetryPolicy::default(), |txn| {
        let Some(pointer) = read_pointer(txn, name)? else {
            return Ok(Vec::new());
        };
        let mut reports = Vec::new();
        for gen in pointer.kept() {
            if let Some(value) = txn.get(&report_key(name, gen))? {
                reports.extend(
                    serde_json::from_slice::<UnusableReport>(&value)
                        .ok()
                        .filter(|r| r.generation == gen),
                );
            }
        }
        Ok(reports)
    })
}
