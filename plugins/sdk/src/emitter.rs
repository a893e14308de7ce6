//! Collects the outputs a processor emits while it handles a record, tagged
//! with the index of that record in the batch.

use crate::{Header, Record};

/// A record to produce.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Output {
    /// Destination topic; `None` is the processor's configured output topic.
    pub topic: Option<String>,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: Vec<Header>,
}

impl Output {
    pub fn new(value: impl Into<Vec<u8>>) -> Self {
        Output {
            value: value.into(),
            ..Output::default()
        }
    }

    /// A copy of an input record: same key, value and headers.
    pub fn copy_of(record: &Record<'_>) -> Self {
        Output {
            topic: None,
            key: record.key.map(<[u8]>::to_vec),
            value: record.value.to_vec(),
            headers: record.headers.iter().map(|h| h.to_owned()).collect(),
        }
    }

    /// The same output with another value.
    pub fn with_value(mut self, value: impl Into<Vec<u8>>) -> Self {
        self.value = value.into();
        self
    }

    pub fn key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }

    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = Some(topic.into());
        self
    }

    pub fn header(mut self, key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push(Header {
            key: key.into(),
            value: value.into(),
        });
        self
    }
}

/// Where a processor puts its outputs. The SDK sets the current input index
/// before each `process` call, so every output is attributed to the record
/// that caused it (the host derives deterministic output ids from that).
#[derive(Debug, Default)]
pub struct Emitter {
    current_input: u32,
    outputs: Vec<(u32, Output)>,
}

impl Emitter {
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Emitter {
            current_input: 0,
            outputs: Vec::with_capacity(capacity),
        }
    }

    pub(crate) fn set_input(&mut self, index: u32) {
        self.current_input = index;
    }

    pub(crate) fn into_outputs(self) -> Vec<(u32, Output)> {
        self.outputs
    }

    /// Emit one output for the current record.
    pub fn emit(&mut self, output: Output) {
        self.outputs.push((self.current_input, output));
    }

    /// Emit a value-only output for the current record.
    pub fn emit_value(&mut self, value: impl Into<Vec<u8>>) {
        self.emit(Output::new(value));
    }

    /// Discard what the current record emitted (used when it is rejected).
    pub(crate) fn discard_current(&mut self) {
        let current = self.current_input;
        while self.outputs.last().is_some_and(|(i, _)| *i == current) {
            self.outputs.pop();
        }
    }
}
