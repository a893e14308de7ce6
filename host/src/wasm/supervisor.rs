//! Keeps a processor running through guest failures without losing or
//! double-applying a record.
//!
//! The supervisor holds a *base* snapshot and a *journal* of the batches
//! applied since. When a batch fails (trap, timeout, memory limit, output
//! too large, or an error returned for the whole batch) the instance is
//! discarded, a fresh one is rebuilt from the base plus the journal, and the
//! batch is retried one record at a time, so the failure is pinned to one
//! record. That record is retried up to [`RecoveryPolicy::max_attempts_per_record`]
//! times and then reported as a [`RecordFailure`] (with processor name,
//! partition and offset); it is skipped, and its effects on state are
//! discarded with the instance.
//!
//! Guarantees, for a deterministic processor:
//! - the outputs and the state after any sequence of failures equal those of
//!   a run in which each failed record was simply absent from the input;
//! - outputs of records before a failing one in the same batch are returned
//!   exactly once;
//! - the journal never exceeds [`RecoveryPolicy::max_journal_records`]
//!   records: past that the supervisor snapshots and makes that the base.

use std::sync::Arc;

use super::bindings::{OutputRecord, ProcessorError, Rejection};
use super::instance::{GuestError, ProcessorInstance};
use super::module::ProcessorModule;
use crate::record::LogRecord;

/// Default attempts at one failing record before it is given up on.
pub const DEFAULT_MAX_ATTEMPTS_PER_RECORD: u32 = 2;
/// Default bound on records applied since the last snapshot (replay cost).
pub const DEFAULT_MAX_JOURNAL_RECORDS: usize = 100_000;

/// How the supervisor reacts to failures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryPolicy {
    /// Attempts at a single record before it is reported as failed (≥ 1).
    pub max_attempts_per_record: u32,
    /// Records applied since the base snapshot before a new snapshot is
    /// taken automatically (bounds rebuild time and memory).
    pub max_journal_records: usize,
}

impl Default for RecoveryPolicy {
    fn default() -> Self {
        RecoveryPolicy {
            max_attempts_per_record: DEFAULT_MAX_ATTEMPTS_PER_RECORD,
            max_journal_records: DEFAULT_MAX_JOURNAL_RECORDS,
        }
    }
}

/// A record the processor could not get through, even after retries.
#[derive(Debug, Clone)]
pub struct RecordFailure {
    /// Index of the record in the batch given to `process_batch`.
    pub input_index: u32,
    pub partition: i32,
    pub offset: i64,
    pub error: GuestError,
}

/// What one batch produced. Indices refer to the batch as given.
#[derive(Debug, Default)]
pub struct ProcessedBatch {
    pub outputs: Vec<OutputRecord>,
    /// Records the processor rejected itself.
    pub rejections: Vec<Rejection>,
    /// Records on which the processor failed (trap, limit, error).
    pub failures: Vec<RecordFailure>,
}

/// Failures the supervisor cannot recover from by itself.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("processor '{name}' could not be instantiated: {reason}")]
    Instantiate { name: String, reason: String },
    #[error("processor '{name}' refused its configuration: {error}")]
    Configure { name: String, error: GuestError },
    #[error("processor '{name}' could not restore its state: {error}")]
    Restore { name: String, error: GuestError },
    #[error("processor '{name}' could not take a snapshot: {error}")]
    Snapshot { name: String, error: GuestError },
    #[error(
        "processor '{name}' failed while replaying records it had processed before ({error}); {}",
        replay_cause(error)
    )]
    Replay { name: String, error: GuestError },
}

/// What a failed replay says about the processor. A limit hit again is a
/// limit too tight for the journal (a JavaScript engine's heap grows with
/// the records it has processed, and a rebuilt instance replays up to the
/// whole journal); any other failure of records that passed before means
/// they do not give the same result twice.
fn replay_cause(error: &GuestError) -> &'static str {
    match error {
        GuestError::MemoryLimit(_) => {
            "its memory grows with the records it processes: raise the memory limit (`--memory-limit-mib`, `limits.memory_limit_mib`)"
        }
        GuestError::TimeLimit(_) => {
            "records that passed before ran out of time: raise the call time limit (`--call-timeout-ms`, `limits.call_timeout_ms`) or give the host more CPU"
        }
        _ => "it is not deterministic",
    }
}

/// A processor instance with recovery.
pub struct SupervisedProcessor {
    name: Arc<str>,
    module: ProcessorModule,
    config: String,
    policy: RecoveryPolicy,
    /// Topics outputs may name ([`SupervisedProcessor::route_to`]).
    output_topics: Arc<[String]>,
    instance: Option<ProcessorInstance>,
    base_snapshot: Option<Vec<u8>>,
    journal: Vec<Vec<LogRecord>>,
    journal_records: usize,
    rebuilds: u64,
}

impl SupervisedProcessor {
    /// Start and configure a processor with empty state.
    pub fn start(
        name: &str,
        module: ProcessorModule,
        config: &str,
        policy: RecoveryPolicy,
    ) -> Result<Self, SupervisorError> {
        Self::start_from(name, module, config, policy, None)
    }

    /// Start and configure a processor, restoring `snapshot` if given.
    pub fn start_from(
        name: &str,
        module: ProcessorModule,
        config: &str,
        policy: RecoveryPolicy,
        snapshot: Option<Vec<u8>>,
    ) -> Result<Self, SupervisorError> {
        let mut processor = SupervisedProcessor {
            name: name.into(),
            module,
            config: config.to_string(),
            policy,
            output_topics: Arc::from([]),
            instance: None,
            base_snapshot: snapshot,
            journal: Vec::new(),
            journal_records: 0,
            rebuilds: 0,
        };
        processor.instance = Some(processor.build_instance(&[])?);
        processor.rebuilds = 0;
        Ok(processor)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Let outputs name these topics and no other (none by default: an
    /// output naming a topic is then its record's failure). Outputs that
    /// name no topic go to the caller's default topic either way.
    pub fn route_to(&mut self, topics: impl IntoIterator<Item = String>) {
        self.output_topics = topics.into_iter().collect();
        if let Some(instance) = &mut self.instance {
            instance.route_to(self.output_topics.clone());
        }
    }

    pub fn module(&self) -> &ProcessorModule {
        &self.module
    }

    /// How many times an instance was rebuilt after a failure or restart.
    /// Bytes of linear memory of the live instance (0 when none).
    pub fn memory_bytes(&self) -> usize {
        self.instance
            .as_ref()
            .map_or(0, ProcessorInstance::memory_bytes)
    }

    pub fn rebuilds(&self) -> u64 {
        self.rebuilds
    }

    /// The state version the module declares.
    pub fn state_version(&mut self) -> Result<u32, SupervisorError> {
        let name = self.name.to_string();
        self.live_instance()?
            .state_version()
            .map_err(|error| SupervisorError::Snapshot { name, error })
    }

    /// Snapshot the state; it becomes the base for recovery.
    pub fn snapshot(&mut self) -> Result<Vec<u8>, SupervisorError> {
        let name = self.name.to_string();
        let snapshot = self
            .live_instance()?
            .snapshot()
            .map_err(|error| SupervisorError::Snapshot { name, error })?;
        self.base_snapshot = Some(snapshot.clone());
        self.journal.clear();
        self.journal_records = 0;
        Ok(snapshot)
    }

    /// Snapshot, drop the instance and continue in a fresh one restored from
    /// that snapshot (what a failover does). Returns the snapshot size.
    pub fn restart_from_snapshot(&mut self) -> Result<usize, SupervisorError> {
        let size = self.snapshot()?.len();
        self.instance = None;
        self.live_instance()?;
        Ok(size)
    }

    /// Run a batch; see the module docs for what happens on failure.
    pub fn process_batch(
        &mut self,
        records: Vec<LogRecord>,
    ) -> Result<ProcessedBatch, SupervisorError> {
        let span = tracing::debug_span!(
            "processor.batch",
            processor = %self.name,
            records = records.len(),
            first_offset = records.first().map(|r| r.offset),
        );
        let _entered = span.enter();
        let whole = self.live_instance()?.process_batch(&records);
        let result = match whole {
            Ok(result) => ProcessedBatch {
                outputs: result.outputs,
                rejections: result.rejections,
                failures: Vec::new(),
            },
            Err(error) => {
                tracing::warn!(processor = %self.name, "batch failed ({error}); retrying record by record");
                self.instance = None;
                return self.process_one_by_one(records);
            }
        };
        self.append_to_journal(records)?;
        Ok(result)
    }

    fn process_one_by_one(
        &mut self,
        records: Vec<LogRecord>,
    ) -> Result<ProcessedBatch, SupervisorError> {
        let mut batch = ProcessedBatch::default();
        let mut applied = Vec::with_capacity(records.len());
        for (index, record) in records.iter().enumerate() {
            let index = u32::try_from(index).expect("batches are far smaller than 2^32 records");
            let mut attempts = 0;
            loop {
                attempts += 1;
                if self.instance.is_none() {
                    self.instance = Some(self.build_instance(&applied)?);
                }
                let instance = self.instance.as_mut().expect("just built");
                match instance.process_batch(std::slice::from_ref(record)) {
                    Ok(result) => {
                        batch
                            .outputs
                            .extend(result.outputs.into_iter().map(|mut o| {
                                o.input_index = index;
                                o
                            }));
                        batch
                            .rejections
                            .extend(result.rejections.into_iter().map(|mut r| {
                                r.input_index = index;
                                r
                            }));
                        applied.push(record.clone());
                        break;
                    }
                    Err(error) => {
                        // State after a failed call cannot be trusted, fatal or not.
                        self.instance = None;
                        if attempts < self.policy.max_attempts_per_record {
                            tracing::warn!(
                                processor = %self.name,
                                partition = record.partition,
                                offset = record.offset,
                                attempt = attempts,
                                "record failed ({error}); retrying from the last good state"
                            );
                            continue;
                        }
                        tracing::error!(
                            processor = %self.name,
                            partition = record.partition,
                            offset = record.offset,
                            "processor '{}' failed on partition {} offset {} after {attempts} attempts: {error}",
                            self.name,
                            record.partition,
                            record.offset,
                        );
                        batch.failures.push(RecordFailure {
                            input_index: index,
                            partition: record.partition,
                            offset: record.offset,
                            error,
                        });
                        break;
                    }
                }
            }
        }
        self.append_to_journal(applied)?;
        Ok(batch)
    }

    fn append_to_journal(&mut self, records: Vec<LogRecord>) -> Result<(), SupervisorError> {
        if records.is_empty() {
            return Ok(());
        }
        self.journal_records += records.len();
        self.journal.push(records);
        if self.journal_records > self.policy.max_journal_records {
            self.snapshot()?;
        }
        Ok(())
    }

    fn live_instance(&mut self) -> Result<&mut ProcessorInstance, SupervisorError> {
        if self
            .instance
            .as_ref()
            .is_none_or(ProcessorInstance::is_dead)
        {
            self.instance = Some(self.build_instance(&[])?);
        }
        Ok(self.instance.as_mut().expect("just ensured"))
    }

    /// A fresh instance at the state after the base snapshot, the journal
    /// and `extra` records.
    fn build_instance(
        &mut self,
        extra: &[LogRecord],
    ) -> Result<ProcessorInstance, SupervisorError> {
        let name = self.name.to_string();
        let mut instance =
            self.module
                .instantiate(&name)
                .map_err(|e| SupervisorError::Instantiate {
                    name: name.clone(),
                    reason: format!("{e:#}"),
                })?;
        instance.route_to(self.output_topics.clone());
        instance
            .configure(&self.config)
            .map_err(|error| SupervisorError::Configure {
                name: name.clone(),
                error,
            })?;
        if let Some(snapshot) = &self.base_snapshot {
            instance
                .restore(snapshot)
                .map_err(|error| SupervisorError::Restore {
                    name: name.clone(),
                    error,
                })?;
        }
        let extra = (!extra.is_empty()).then_some(extra);
        for batch in self.journal.iter().map(Vec::as_slice).chain(extra) {
            instance
                .process_batch(batch)
                .map_err(|error| SupervisorError::Replay {
                    name: name.clone(),
                    error,
                })?;
        }
        self.rebuilds += 1;
        Ok(instance)
    }
}

impl SupervisorError {
    /// The processor's own error, when it returned one (e.g. a refused config
    /// or an incompatible snapshot).
    pub fn processor_error(&self) -> Option<&ProcessorError> {
        match self {
            SupervisorError::Configure {
                error: GuestError::Returned(e),
                ..
            }
            | SupervisorError::Restore {
                error: GuestError::Returned(e),
                ..
            } => Some(e),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A replay that hits a limit names the limit to raise; only another
    /// failure of records that passed before is called nondeterminism.
    #[test]
    fn a_failed_replay_says_whether_a_limit_or_nondeterminism_is_to_blame() {
        let replay = |error| {
            SupervisorError::Replay {
                name: "p".into(),
                error,
            }
            .to_string()
        };
        let memory = replay(GuestError::MemoryLimit("growing to 64 MiB".into()));
        assert!(memory.contains("raise the memory limit"), "{memory}");
        assert!(!memory.contains("not deterministic"), "{memory}");
        let time = replay(GuestError::TimeLimit(std::time::Duration::from_secs(5)));
        assert!(time.contains("raise the call time limit"), "{time}");
        let trap = replay(GuestError::Trap("unreachable".into()));
        assert!(trap.ends_with("it is not deterministic"), "{trap}");
    }
}
