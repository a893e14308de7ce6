//! # logstream-sdk
//!
//! Write a LogStream log processor as a plain Rust type; the SDK turns it into
//! a WebAssembly component of the `logstream:processor/log-processor` world.
//!
//! You implement [`Processor`]: build yourself from a config string, process
//! one record at a time (emitting outputs or rejecting the record), and keep
//! every piece of mutable state in [`Processor::State`], a serde type. Then
//! one line, [`export_processor!`], generates the component exports. The SDK
//! owns the bindings, the snapshot/restore encoding (with a state-version
//! header, see [`snapshot`]) and the mapping of errors onto the WIT types.
//!
//! Guarantees the SDK gives a processor author:
//! - `process` is called once per record, in order, with the record's index
//!   in the batch tracked for you, so outputs never depend on batch
//!   boundaries unless your code makes them;
//! - a snapshot restores to exactly the `State` value it was taken from.
//!
//! What the author must do: keep all state in `State`, and use ordered
//! collections (`BTreeMap`, `VecDeque`) rather than `HashMap` there, so two
//! hosts that reached the same state produce byte-identical snapshots.
//!
//! See the crate README for a complete example.

pub mod config;
mod emitter;
pub mod json;
pub mod log;
pub mod record;
mod runtime;
pub mod snapshot;

#[cfg(target_family = "wasm")]
#[doc(hidden)]
pub mod bindings;

/// The README's example, compiled as a doc test so it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeExample;

pub use emitter::{Emitter, Output};
pub use record::{Batch, Header, HeaderMeta, HeaderRef, OwnedRecord, Record, RecordMeta, Span};
pub use runtime::{BatchOutput, IndexedOutput, IndexedRejection, Runtime, RuntimeError};
pub use snapshot::StateError;

/// Re-exported so processors can derive `Serialize`/`Deserialize` for their
/// state without depending on serde themselves.
pub use serde;

/// The error a processor returns to refuse one record. The record goes to the
/// processor's dead-letter topic with this reason; processing continues with
/// the next record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject(pub String);

impl Reject {
    pub fn new(reason: impl Into<String>) -> Self {
        Reject(reason.into())
    }
}

impl<E: std::fmt::Display> From<E> for Reject {
    fn from(error: E) -> Self {
        Reject(error.to_string())
    }
}

/// A LogStream log processor.
///
/// The processor value itself holds configuration (immutable after
/// [`Processor::configure`]); everything that changes while records flow
/// lives in [`Processor::State`], which the host snapshots and restores.
pub trait Processor: Sized + 'static {
    /// All mutable state. Serialised with `postcard` into snapshots.
    type State: serde::Serialize + serde::de::DeserializeOwned + Default;

    /// Version of the `State` encoding. Bump it whenever `State` changes
    /// shape, and handle older versions in [`Processor::migrate`].
    const STATE_VERSION: u32 = 1;

    /// Build the processor from its configuration string (the string given
    /// at deploy time, often empty). Return a sentence saying what is wrong.
    fn configure(config: &str) -> Result<Self, String>;

    /// Process one record. Emit outputs through `out`; return `Err` to
    /// reject the record (state changes made before returning `Err` are kept,
    /// so validate before mutating).
    fn process(
        &mut self,
        state: &mut Self::State,
        record: &Record<'_>,
        out: &mut Emitter,
    ) -> Result<(), Reject>;

    /// Turn a snapshot written with an older (or newer) state version into
    /// the current `State`, or refuse it. The default refuses.
    fn migrate(found_version: u32, payload: &[u8]) -> Result<Self::State, StateError> {
        let _ = payload;
        Err(StateError::Incompatible {
            found: Some(found_version),
            expected: Self::STATE_VERSION,
            reason: format!(
                "this module reads state version {} and has no migration from version {found_version}",
                Self::STATE_VERSION
            ),
        })
    }
}

/// Export a [`Processor`] implementation as the component's `processor`
/// interface. Use it exactly once, at the crate root of a `cdylib` built for
/// `wasm32-wasip2`. On other targets it expands to nothing, so the same crate
/// can be tested and benchmarked natively.
#[macro_export]
macro_rules! export_processor {
    ($processor:ty) => {
        #[cfg(target_family = "wasm")]
        const _: () = {
            use $crate::bindings::exports::logstream::processor::processor as wit;
            use $crate::bindings::logstream::processor::types as wit_types;

            struct LogstreamExport;

            ::std::thread_local! {
                static RUNTIME: ::core::cell::RefCell<$crate::Runtime<$processor>> =
                    ::core::cell::RefCell::new($crate::Runtime::new());
            }

            impl wit::Guest for LogstreamExport {
                fn state_version() -> u32 {
                    $crate::log::install_panic_hook();
                    <$processor as $crate::Processor>::STATE_VERSION
                }

                fn configure(config: ::std::string::String) -> Result<(), wit_types::ProcessorError> {
                    $crate::log::install_panic_hook();
                    RUNTIME.with_borrow_mut(|rt| rt.configure(&config)).map_err($crate::bindings::to_wit_error)
                }

                fn process_batch(
                    batch: wit_types::RecordBatch,
                ) -> Result<wit_types::BatchResult, wit_types::ProcessorError> {
                    let (records, headers) = $crate::bindings::from_wit_batch_meta(&batch);
                    RUNTIME
                        .with_borrow_mut(|rt| rt.process_packed(&batch.data, &records, &headers))
                        .map($crate::bindings::to_wit_batch)
                        .map_err($crate::bindings::to_wit_error)
                }

                fn snapshot() -> Result<::std::vec::Vec<u8>, wit_types::ProcessorError> {
                    RUNTIME.with_borrow(|rt| rt.snapshot()).map_err($crate::bindings::to_wit_error)
                }

                fn restore(state: ::std::vec::Vec<u8>) -> Result<(), wit_types::ProcessorError> {
                    RUNTIME.with_borrow_mut(|rt| rt.restore(&state)).map_err($crate::bindings::to_wit_error)
                }
            }

            $crate::bindings::__export_log_processor!(LogstreamExport with_types_in $crate::bindings);
        };
    };
}
