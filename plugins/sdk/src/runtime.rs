//! The target-independent half of a component: drives a [`Processor`]
//! through configure / process-batch / snapshot / restore. The wasm glue in
//! [`export_processor!`](crate::export_processor) only converts types around
//! it, so this is also what native tests and benchmarks run.

use crate::emitter::Emitter;
use crate::record::{Batch, HeaderMeta, RecordMeta};
use crate::snapshot::{self, StateError};
use crate::{Output, OwnedRecord, Processor};

/// An output tagged with the index of the input record that caused it.
pub type IndexedOutput = (u32, Output);
/// A rejection tagged with the index of the rejected input record.
pub type IndexedRejection = (u32, String);

/// What one batch produced, ordered by input index.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BatchOutput {
    pub outputs: Vec<IndexedOutput>,
    pub rejections: Vec<IndexedRejection>,
}

/// Why a whole call failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RuntimeError {
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("{0}")]
    Failed(String),
}

/// A processor and its state, as one component instance holds them.
pub struct Runtime<P: Processor> {
    processor: Option<P>,
    state: P::State,
}

impl<P: Processor> Default for Runtime<P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P: Processor> Runtime<P> {
    pub fn new() -> Self {
        Runtime {
            processor: None,
            state: P::State::default(),
        }
    }

    pub fn configure(&mut self, config: &str) -> Result<(), RuntimeError> {
        if self.processor.is_some() {
            return Err(RuntimeError::Failed(
                "configure was called twice on one instance".into(),
            ));
        }
        self.processor = Some(P::configure(config).map_err(RuntimeError::InvalidConfig)?);
        Ok(())
    }

    fn processor_mut(&mut self) -> Result<&mut P, RuntimeError> {
        self.processor
            .as_mut()
            .ok_or_else(|| RuntimeError::Failed("the processor was used before configure".into()))
    }

    /// Run every record through [`Processor::process`], in order.
    pub fn process_batch(&mut self, records: &[OwnedRecord]) -> Result<BatchOutput, RuntimeError> {
        let batch = Batch::encode(records);
        self.process_packed(&batch.data, &batch.records, &batch.headers)
    }

    /// [`Runtime::process_batch`] over a packed batch (what the host sends).
    pub fn process_packed(
        &mut self,
        data: &[u8],
        records: &[RecordMeta],
        headers: &[HeaderMeta],
    ) -> Result<BatchOutput, RuntimeError> {
        self.processor_mut()?;
        if u32::try_from(records.len()).is_err() {
            return Err(RuntimeError::Failed(
                "batch has more than 2^32 records".into(),
            ));
        }
        let Runtime { processor, state } = self;
        let processor = processor.as_mut().expect("checked above");
        let mut emitter = Emitter::with_capacity(records.len());
        let mut rejections = Vec::new();
        crate::record::for_each_record(data, records, headers, |index, record| {
            let index = index as u32;
            emitter.set_input(index);
            if let Err(reject) = processor.process(state, record, &mut emitter) {
                emitter.discard_current();
                rejections.push((index, reject.0));
            }
            Ok::<(), RuntimeError>(())
        })
        .map_err(|reason| {
            RuntimeError::Failed(format!("the host sent a malformed batch: {reason}"))
        })??;
        Ok(BatchOutput {
            outputs: emitter.into_outputs(),
            rejections,
        })
    }

    /// The state, encoded with its version header.
    pub fn snapshot(&self) -> Result<Vec<u8>, RuntimeError> {
        Ok(snapshot::encode::<P>(&self.state)?)
    }

    /// Replace the state with a decoded snapshot; on error the state is untouched.
    pub fn restore(&mut self, bytes: &[u8]) -> Result<(), RuntimeError> {
        self.processor_mut()?;
        self.state = snapshot::decode::<P>(bytes)?;
        Ok(())
    }

    /// The current state (for tests).
    pub fn state(&self) -> &P::State {
        &self.state
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Record, Reject};

    /// Emits the running count for every record; rejects empty values.
    struct Counter {
        step: u64,
    }

    impl Processor for Counter {
        type State = u64;
        fn configure(config: &str) -> Result<Self, String> {
            let step = if config.is_empty() {
                1
            } else {
                config
                    .parse()
                    .map_err(|_| format!("step {config:?} is not a number"))?
            };
            Ok(Counter { step })
        }
        fn process(
            &mut self,
            state: &mut u64,
            record: &Record,
            out: &mut Emitter,
        ) -> Result<(), Reject> {
            out.emit_value(state.to_string());
            if record.value.is_empty() {
                return Err(Reject::new("empty value"));
            }
            *state += self.step;
            Ok(())
        }
    }

    fn records(values: &[&str]) -> Vec<OwnedRecord> {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| OwnedRecord::with_value(i as i64, v.as_bytes()))
            .collect()
    }

    #[test]
    fn outputs_are_tagged_and_rejected_records_emit_nothing() {
        let mut rt = Runtime::<Counter>::new();
        rt.configure("2").unwrap();
        let out = rt.process_batch(&records(&["a", "", "b"])).unwrap();
        assert_eq!(
            out.outputs,
            vec![(0, Output::new("0")), (2, Output::new("2"))]
        );
        assert_eq!(out.rejections, vec![(1, "empty value".to_string())]);
    }

    #[test]
    fn snapshot_restore_continues_identically() {
        let input = records(&["a", "b", "c", "d"]);
        let mut whole = Runtime::<Counter>::new();
        whole.configure("").unwrap();
        let expected = whole.process_batch(&input).unwrap();

        let mut first = Runtime::<Counter>::new();
        first.configure("").unwrap();
        let head = first.process_batch(&input[..2]).unwrap();
        let snap = first.snapshot().unwrap();
        let mut second = Runtime::<Counter>::new();
        second.configure("").unwrap();
        second.restore(&snap).unwrap();
        let tail = second.process_batch(&input[2..]).unwrap();

        let joined: Vec<_> = head
            .outputs
            .into_iter()
            .chain(tail.outputs.into_iter().map(|(i, o)| (i + 2, o)))
            .collect();
        assert_eq!(joined, expected.outputs);
        assert_eq!(second.snapshot().unwrap(), whole.snapshot().unwrap());
    }

    #[test]
    fn misuse_and_bad_config_are_errors() {
        let mut rt = Runtime::<Counter>::new();
        assert!(matches!(
            rt.process_batch(&[]),
            Err(RuntimeError::Failed(_))
        ));
        assert_eq!(
            rt.configure("x"),
            Err(RuntimeError::InvalidConfig(
                "step \"x\" is not a number".into()
            ))
        );
        rt.configure("1").unwrap();
        assert!(matches!(rt.configure("1"), Err(RuntimeError::Failed(_))));
    }
}
