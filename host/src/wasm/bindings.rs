//! The typed bindings of the `logstream:processor/log-processor` world.
//!
//! This is the only place `bindgen!` runs; every other module uses the types
//! and the `LogProcessor` handle re-exported from here.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "log-processor",
    additional_derives: [PartialEq, Eq],
});

pub use exports::logstream::processor::processor::Guest as ProcessorExports;
pub use logstream::processor::host_log;
pub use logstream::processor::types::{
    BatchResult, Header, HeaderSpan, IncompatibleState, LogRecord, OutputRecord, ProcessorError,
    RecordBatch, Rejection, Span,
};

/// The name of the interface every processor must export.
pub const PROCESSOR_EXPORT: &str = "logstream:processor/processor@0.1.0";
/// The name of the logging interface the host provides.
pub const HOST_LOG_IMPORT: &str = "logstream:processor/host-log@0.1.0";

/// A processor's own error in one sentence (the generated `Display` of
/// [`ProcessorError`] is its debug form, e.g.
/// `ProcessorError::IncompatibleState(IncompatibleState { .. })`).
pub fn describe_processor_error(error: &ProcessorError) -> String {
    match error {
        ProcessorError::InvalidConfig(reason) => format!("invalid configuration: {reason}"),
        ProcessorError::IncompatibleState(state) => {
            let found = match state.found {
                Some(version) => format!("the snapshot has state version {version}"),
                None => "the snapshot's state version is unreadable".to_string(),
            };
            format!(
                "incompatible state ({found}, this module reads state version {}): {}",
                state.expected, state.reason
            )
        }
        ProcessorError::Failed(reason) => reason.clone(),
    }
}

impl OutputRecord {
    /// Bytes this output occupies in topic, key, value and headers.
    pub fn payload_bytes(&self) -> usize {
        self.topic.as_ref().map_or(0, String::len)
            + self.key.as_ref().map_or(0, Vec::len)
            + self.value.len()
            + self
                .headers
                .iter()
                .map(|h| h.key.len() + h.value.len())
                .sum::<usize>()
    }
}
