//! The WebAssembly runtime: engine, sandbox, module loading, instances and
//! the supervisor that recovers from guest failures.

pub mod bindings;
pub mod compile_cache;
pub mod engine;
pub mod instance;
pub mod limits;
pub mod module;
pub mod sandbox;
pub mod supervisor;

pub use compile_cache::{CacheOutcome, CompileCache};
pub use engine::WasmEngine;
pub use instance::{GuestError, ProcessorInstance};
pub use limits::InstanceLimits;
pub use module::{ComponentInterface, ModuleError, ModuleLoader, ProcessorModule};
pub use supervisor::{
    ProcessedBatch, RecordFailure, RecoveryPolicy, SupervisedProcessor, SupervisorError,
};
