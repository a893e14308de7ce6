//! One live processor instance: a store, the instantiated component and the
//! calls into it, each under the engine's time limit and output limit.
//!
//! Guarantees:
//! - every call runs with a fresh epoch deadline of the configured timeout;
//! - a trap, a timeout, a memory-limit hit or an oversized result marks the
//!   instance dead ([`GuestError::is_fatal`]): every later call fails at once
//!   without entering the guest, and the owner must start a new instance;
//! - an error the processor *returns* (`processor-error`) leaves it alive;
//! - an output naming a topic the instance was not given
//!   ([`ProcessorInstance::route_to`]) fails the batch: untrusted code
//!   writes only to the topics its deployer declared.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use wasmtime::{Store, Trap};

use super::bindings::{BatchResult, LogProcessor, LogProcessorPre, ProcessorError};
use super::engine::WasmEngine;
use super::limits::{InstanceLimits, MAX_OUTPUT_RECORD_BYTES};
use super::sandbox::{MemoryLimitExceeded, SandboxState};
use crate::record::{pack_batch, LogRecord};

/// Why a call into a processor failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GuestError {
    #[error("the processor trapped: {0}")]
    Trap(String),
    #[error("the processor exceeded its time limit of {0:?} per call")]
    TimeLimit(Duration),
    #[error("the processor exceeded its memory limit: {0}")]
    MemoryLimit(String),
    #[error("the processor returned {bytes} bytes, more than the limit of {limit} bytes per call")]
    OutputTooLarge { bytes: usize, limit: usize },
    #[error("the instance is dead after an earlier failure")]
    Dead,
    #[error("the processor returned an error: {}", super::bindings::describe_processor_error(.0))]
    Returned(ProcessorError),
}

impl GuestError {
    /// Whether the instance must be discarded.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, GuestError::Returned(_))
    }
}

/// A started instance of a processor module.
pub struct ProcessorInstance {
    name: Arc<str>,
    store: Store<SandboxState>,
    bindings: LogProcessor,
    limits: InstanceLimits,
    /// Topics outputs may name (besides naming none: the default topic).
    output_topics: Arc<[String]>,
    dead: bool,
}

impl ProcessorInstance {
    pub(crate) fn start(
        engine: &WasmEngine,
        pre: &LogProcessorPre<SandboxState>,
        name: Arc<str>,
    ) -> anyhow::Result<Self> {
        let limits = engine.limits();
        let mut store = Store::new(
            engine.engine(),
            SandboxState::new(name.clone(), limits.memory_limit_bytes),
        );
        store.limiter(|state| state);
        store.set_epoch_deadline(limits.call_timeout_ticks());
        store.epoch_deadline_trap();
        let bindings = pre
            .instantiate(&mut store)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("instantiating processor '{name}'"))?;
        Ok(ProcessorInstance {
            name,
            store,
            bindings,
            limits: limits.clone(),
            output_topics: Arc::from([]),
            dead: false,
        })
    }

    /// Let outputs name these topics (and no other).
    pub fn route_to(&mut self, topics: Arc<[String]>) {
        self.output_topics = topics;
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Bytes of linear memory the instance has now (what a warm standby
    /// of it costs, besides the module shared by all its instances).
    pub fn memory_bytes(&self) -> usize {
        self.store.data().memory_bytes()
    }

    pub fn is_dead(&self) -> bool {
        self.dead
    }

    /// Run one guest call with a fresh deadline, classifying failures and
    /// marking the instance dead on a fatal one.
    fn call<R>(
        &mut self,
        output_bytes: impl FnOnce(&R) -> usize,
        f: impl FnOnce(
            &LogProcessor,
            &mut Store<SandboxState>,
        ) -> wasmtime::Result<Result<R, ProcessorError>>,
    ) -> Result<R, GuestError> {
        if self.dead {
            return Err(GuestError::Dead);
        }
        let limits = &self.limits;
        self.store.set_epoch_deadline(limits.call_timeout_ticks());
        self.store.data_mut().clear_last_guest_error();
        let result = match f(&self.bindings, &mut self.store) {
            Ok(Ok(value)) => {
                let bytes = output_bytes(&value);
                if bytes > limits.max_output_bytes_per_call {
                    Err(GuestError::OutputTooLarge {
                        bytes,
                        limit: limits.max_output_bytes_per_call,
                    })
                } else {
                    Ok(value)
                }
            }
            Ok(Err(returned)) => Err(GuestError::Returned(returned)),
            Err(trap) => Err(classify_trap(
                &trap,
                limits.call_timeout,
                self.store.data_mut().take_last_guest_error(),
            )),
        };
        if let Err(error) = &result {
            if error.is_fatal() {
                self.dead = true;
            }
        }
        result
    }

    pub fn state_version(&mut self) -> Result<u32, GuestError> {
        self.call(
            |_| 0,
            |b, s| {
                b.logstream_processor_processor()
                    .call_state_version(s)
                    .map(Ok)
            },
        )
    }

    pub fn configure(&mut self, config: &str) -> Result<(), GuestError> {
        self.call(
            |_| 0,
            |b, s| b.logstream_processor_processor().call_configure(s, config),
        )
    }

    pub fn process_batch(&mut self, records: &[LogRecord]) -> Result<BatchResult, GuestError> {
        // A batch too large to pack is the caller's problem, not the
        // guest's: refuse it without entering (or killing) the instance.
        let batch = pack_batch(records)
            .map_err(|e| GuestError::Returned(ProcessorError::Failed(e.to_string())))?;
        let result = self.call(batch_result_bytes, |b, s| {
            b.logstream_processor_processor()
                .call_process_batch(s, &batch)
        })?;
        check_batch_result(&result, records.len(), &self.output_topics)
            .map_err(|e| GuestError::Returned(ProcessorError::Failed(e)))?;
        Ok(result)
    }

    pub fn snapshot(&mut self) -> Result<Vec<u8>, GuestError> {
        self.call(Vec::len, |b, s| {
            b.logstream_processor_processor().call_snapshot(s)
        })
    }

    pub fn restore(&mut self, state: &[u8]) -> Result<(), GuestError> {
        self.call(
            |_| 0,
            |b, s| b.logstream_processor_processor().call_restore(s, state),
        )
    }
}

/// Every output and rejection must name a record of the batch: the host
/// derives ids and dead letters from that index, so a garbage one is the
/// guest's failure, not a panic of the host. Every output must fit in
/// one Kafka record ([`MAX_OUTPUT_RECORD_BYTES`]), and name no topic or
/// one of `output_topics`.
fn check_batch_result(
    result: &BatchResult,
    records: usize,
    output_topics: &[String],
) -> Result<(), String> {
    if let Some((output, topic)) = result.outputs.iter().find_map(|o| {
        o.topic
            .as_ref()
            .filter(|t| !output_topics.contains(t))
            .map(|t| (o, t))
    }) {
        let declared = if output_topics.is_empty() {
            "none were declared".to_string()
        } else {
            format!("it may write to {}", output_topics.join(", "))
        };
        return Err(format!(
            "the processor sent an output of record {} to topic {topic:?}, which it was not deployed to write to ({declared}; `logstream deploy --output` declares more)",
            output.input_index
        ));
    }
    if let Some(output) = result
        .outputs
        .iter()
        .find(|o| o.payload_bytes() > MAX_OUTPUT_RECORD_BYTES)
    {
        return Err(format!(
            "the processor returned an output record of {} bytes for record {}, more than the limit of {MAX_OUTPUT_RECORD_BYTES} bytes per record",
            output.payload_bytes(),
            output.input_index
        ));
    }
    let indices = result
        .outputs
        .iter()
        .map(|o| o.input_index)
        .chain(result.rejections.iter().map(|r| r.input_index));
    for index in indices {
        if index as usize >= records {
            return Err(format!(
                "the processor returned a result for record {index} of a {records}-record batch"
            ));
        }
    }
    Ok(())
}

fn batch_result_bytes(result: &BatchResult) -> usize {
    result
        .outputs
        .iter()
        .map(|o| o.payload_bytes())
        .sum::<usize>()
        + result
            .rejections
            .iter()
            .map(|r| r.reason.len())
            .sum::<usize>()
}

/// Name the failure: a limit when one was hit, else the trap (without the
/// wasm backtrace) and what the guest last logged as an error.
fn classify_trap(
    error: &wasmtime::Error,
    timeout: Duration,
    guest_said: Option<String>,
) -> GuestError {
    if let Some(limit) = error.downcast_ref::<MemoryLimitExceeded>() {
        return GuestError::MemoryLimit(limit.to_string());
    }
    let trap = error.downcast_ref::<Trap>();
    if let Some(Trap::Interrupt) = trap {
        return GuestError::TimeLimit(timeout);
    }
    let what = match trap {
        Some(trap) => trap.to_string(),
        None => format!("{error:#}").replace('\n', " "),
    };
    GuestError::Trap(match guest_said {
        Some(said) => format!("{what} ({})", said.replace('\n', " ")),
        None => what,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wasm::bindings::{OutputRecord, Rejection};

    fn output(input_index: u32) -> OutputRecord {
        OutputRecord {
            input_index,
            topic: None,
            key: None,
            value: b"v".to_vec(),
            headers: Vec::new(),
        }
    }

    #[test]
    fn results_for_records_of_the_batch_pass() {
        let result = BatchResult {
            outputs: vec![output(0), output(2)],
            rejections: vec![Rejection {
                input_index: 1,
                reason: "no".into(),
            }],
        };
        assert_eq!(check_batch_result(&result, 3, &[]), Ok(()));
    }

    #[test]
    fn an_index_past_the_batch_is_the_guests_failure() {
        let result = BatchResult {
            outputs: vec![output(0), output(3)],
            rejections: Vec::new(),
        };
        assert_eq!(
            check_batch_result(&result, 3, &[]),
            Err("the processor returned a result for record 3 of a 3-record batch".into())
        );
        let rejected = BatchResult {
            outputs: Vec::new(),
            rejections: vec![Rejection {
                input_index: u32::MAX,
                reason: "no".into(),
            }],
        };
        assert!(check_batch_result(&rejected, 3, &[]).is_err());
    }

    #[test]
    fn an_output_record_over_the_kafka_limit_is_the_guests_failure() {
        let mut big = output(1);
        big.value = vec![0; MAX_OUTPUT_RECORD_BYTES];
        big.key = Some(b"k".to_vec());
        let result = BatchResult {
            outputs: vec![output(0), big],
            rejections: Vec::new(),
        };
        let error = check_batch_result(&result, 2, &[]).unwrap_err();
        assert!(
            error.contains("output record of 1000001 bytes for record 1"),
            "{error}"
        );
        let mut at_limit = output(0);
        at_limit.value = vec![0; MAX_OUTPUT_RECORD_BYTES];
        let fits = BatchResult {
            outputs: vec![at_limit],
            rejections: Vec::new(),
        };
        assert_eq!(check_batch_result(&fits, 1, &[]), Ok(()));
    }

    #[test]
    fn an_output_to_an_undeclared_topic_is_the_guests_failure() {
        let mut routed = output(1);
        routed.topic = Some("alerts".into());
        let result = BatchResult {
            outputs: vec![output(0), routed],
            rejections: Vec::new(),
        };
        let error = check_batch_result(&result, 2, &[]).unwrap_err();
        assert!(
            error.contains("output of record 1 to topic \"alerts\"")
                && error.contains("none were declared"),
            "{error}"
        );
        let declared = ["out".to_string(), "alerts".to_string()];
        assert_eq!(check_batch_result(&result, 2, &declared), Ok(()));
        let error = check_batch_result(&result, 2, &declared[..1]).unwrap_err();
        assert!(error.contains("it may write to out"), "{error}");
    }
}
