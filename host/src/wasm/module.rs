//! Loading a processor: classify the bytes, compile (through the cache),
//! check the component against the `log-processor` world, and keep an
//! `InstancePre` from which instances start in microseconds.
//!
//! Guarantee: a [`ProcessorModule`] only exists for a component whose
//! imports the host satisfies and whose exports match the world; every other
//! input is refused with a [`ModuleError`] that says which case it is.

use std::sync::Arc;

use anyhow::Context;
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};

use super::bindings::{LogProcessor, LogProcessorPre, HOST_LOG_IMPORT, PROCESSOR_EXPORT};
use super::compile_cache::{CacheOutcome, CompileCache};
use super::engine::WasmEngine;
use super::instance::ProcessorInstance;
use super::limits::MIB;
use super::sandbox::SandboxState;

/// Why bytes are not a loadable processor.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("not a WebAssembly file (it does not start with the \\0asm magic)")]
    NotWasm,
    #[error("a core WebAssembly module, not a component; build the processor for wasm32-wasip2 (or run `wasm-tools component new`)")]
    CoreModule,
    #[error("not a valid WebAssembly component: {0}")]
    InvalidComponent(String),
    #[error("a component that starts with {} of linear memory, more than the {} an instance may have; raise the memory limit (`--memory-limit-mib`, `limits.memory_limit_mib`) to at least {}", mib(*initial_bytes), mib(*limit_bytes), initial_bytes.div_ceil(MIB))]
    InitialMemoryOverLimit {
        initial_bytes: u64,
        limit_bytes: u64,
    },
    #[error("a component of another world: it does not export `{PROCESSOR_EXPORT}` (it exports: {exports})")]
    WrongWorld { exports: String },
    #[error("a component that imports `{import}`, which the host does not provide (a processor may import only `{HOST_LOG_IMPORT}` and WASI 0.2)")]
    UnsupportedImport { import: String },
    #[error("a component whose `{PROCESSOR_EXPORT}` export does not match the host's world: {0}")]
    IncompatibleExports(String),
    #[error("the component cannot be linked against the host: {0}")]
    Link(String),
}

/// The kind of a WebAssembly binary, from its 8-byte preamble.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryKind {
    CoreModule,
    Component,
}

/// Tell a component from a core module (or from anything else).
pub fn classify(bytes: &[u8]) -> Result<BinaryKind, ModuleError> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(ModuleError::NotWasm);
    }
    // The preamble's "layer" field: 0 for core modules, 1 for components.
    match (bytes[6], bytes[7]) {
        (0, 0) => Ok(BinaryKind::CoreModule),
        (1, 0) => Ok(BinaryKind::Component),
        _ => Err(ModuleError::InvalidComponent(format!(
            "unknown WebAssembly layer {}",
            u16::from_le_bytes([bytes[6], bytes[7]])
        ))),
    }
}

/// Import names a processor may have: our logging interface and WASI 0.2.
fn import_is_provided(name: &str) -> bool {
    name == HOST_LOG_IMPORT
        || name.starts_with("logstream:processor/types@0.1.0")
        || (name.starts_with("wasi:") && name.contains("@0.2."))
}

/// Compiles modules for one engine and links them against the sandbox.
#[derive(Clone)]
pub struct ModuleLoader {
    engine: WasmEngine,
    linker: Arc<Linker<SandboxState>>,
    cache: Option<CompileCache>,
}

impl ModuleLoader {
    pub fn new(engine: WasmEngine, cache: Option<CompileCache>) -> anyhow::Result<Self> {
        let mut linker = Linker::new(engine.engine());
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(anyhow::Error::from)
            .context("linking WASI")?;
        LogProcessor::add_to_linker::<_, HasSelf<SandboxState>>(&mut linker, |state| state)
            .map_err(anyhow::Error::from)
            .context("linking the host-log interface")?;
        Ok(ModuleLoader {
            engine,
            linker: Arc::new(linker),
            cache,
        })
    }

    pub fn engine(&self) -> &WasmEngine {
        &self.engine
    }

    /// Validate and compile `bytes` as a processor.
    pub fn load(&self, bytes: &[u8]) -> Result<ProcessorModule, ModuleError> {
        if classify(bytes)? == BinaryKind::CoreModule {
            return Err(ModuleError::CoreModule);
        }
        let sha256 = hex::encode(Sha256::digest(bytes));
        let (component, cache) = match &self.cache {
            Some(cache) => cache.load_or_compile(&self.engine, &sha256, bytes),
            None => Component::new(self.engine.engine(), bytes)
                .map(|c| (c, CacheOutcome::Compiled))
                .map_err(anyhow::Error::from),
        }
        .map_err(|e| compile_error(&e))?;

        let interface = describe(&component, &self.engine);
        if let Some(import) = interface
            .imports
            .iter()
            .find(|name| !import_is_provided(name))
        {
            return Err(ModuleError::UnsupportedImport {
                import: import.clone(),
            });
        }
        if !interface
            .exports
            .iter()
            .any(|name| name == PROCESSOR_EXPORT)
        {
            let exports = if interface.exports.is_empty() {
                "nothing".to_string()
            } else {
                interface.exports.join(", ")
            };
            return Err(ModuleError::WrongWorld { exports });
        }
        let instance_pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| ModuleError::Link(first_line(&e.into())))?;
        let pre = LogProcessorPre::new(instance_pre)
            .map_err(|e| ModuleError::IncompatibleExports(first_line(&e.into())))?;
        Ok(ProcessorModule {
            inner: Arc::new(ModuleInner {
                engine: self.engine.clone(),
                pre,
                sha256,
                size_bytes: bytes.len(),
                interface,
                cache,
            }),
        })
    }
}

/// The error's message with its causes, on one line.
fn first_line(error: &anyhow::Error) -> String {
    format!("{error:#}").replace('\n', " ")
}

/// `bytes` in MiB, to one decimal.
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB as f64)
}

/// Why a compile failed, for the plugin author: a component whose initial
/// linear memory exceeds the pooling allocator's per-instance limit
/// (componentize-py's pre-initialised CPython starts at about 12.5 MiB) is
/// named as such, with the limit to set; every other error as it is.
fn compile_error(error: &anyhow::Error) -> ModuleError {
    let text = first_line(error);
    match initial_memory_over_limit(&text) {
        Some((initial_bytes, limit_bytes)) => ModuleError::InitialMemoryOverLimit {
            initial_bytes,
            limit_bytes,
        },
        None => ModuleError::InvalidComponent(text),
    }
}

/// `(initial bytes, limit bytes)` when `text` (an error with its causes) is
/// the engine refusing a component whose initial linear memory exceeds the
/// per-instance limit.
/// Wasmtime words it "memory has a minimum byte size of N which exceeds the
/// limit of M bytes" (`pooling/memory_pool.rs`), when compiling and when
/// loading a compiled artifact; only that wording is recognised.
pub(super) fn initial_memory_over_limit(text: &str) -> Option<(u64, u64)> {
    let number_after = |marker: &str| -> Option<u64> {
        let rest = &text[text.find(marker)? + marker.len()..];
        let digits = rest.split(|c: char| c.is_whitespace()).next()?;
        match digits.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).ok(),
            None => digits.parse().ok(),
        }
    };
    Some((
        number_after("minimum byte size of ")?,
        number_after("exceeds the limit of ")?,
    ))
}

/// The names a component imports and exports.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ComponentInterface {
    pub imports: Vec<String>,
    pub exports: Vec<String>,
}

fn describe(component: &Component, engine: &WasmEngine) -> ComponentInterface {
    let ty = component.component_type();
    let engine = engine.engine();
    ComponentInterface {
        imports: ty
            .imports(engine)
            .map(|(name, _)| name.to_string())
            .collect(),
        exports: ty
            .exports(engine)
            .map(|(name, _)| name.to_string())
            .collect(),
    }
}

/// A validated, compiled processor, ready to instantiate. Cheap to clone.
#[derive(Clone)]
pub struct ProcessorModule {
    inner: Arc<ModuleInner>,
}

struct ModuleInner {
    engine: WasmEngine,
    pre: LogProcessorPre<SandboxState>,
    sha256: String,
    size_bytes: usize,
    interface: ComponentInterface,
    cache: CacheOutcome,
}

impl ProcessorModule {
    /// Hex sha256 of the module bytes: the module's identity.
    pub fn sha256(&self) -> &str {
        &self.inner.sha256
    }

    pub fn size_bytes(&self) -> usize {
        self.inner.size_bytes
    }

    pub fn interface(&self) -> &ComponentInterface {
        &self.inner.interface
    }

    /// Whether loading found a precompiled artifact.
    pub fn cache_outcome(&self) -> CacheOutcome {
        self.inner.cache
    }

    /// Start a fresh, unconfigured instance named `processor_name`.
    pub fn instantiate(&self, processor_name: &str) -> anyhow::Result<ProcessorInstance> {
        ProcessorInstance::start(&self.inner.engine, &self.inner.pre, processor_name.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Wasmtime's own text (as `run-local --memory-limit-mib 8` printed it
    /// for the Python level-counter) becomes the sentence with the limit to
    /// set; other compile errors pass through.
    #[test]
    fn an_initial_memory_over_the_limit_names_the_limit_to_set() {
        let wasmtime = anyhow::anyhow!("module memory does not fit in pooling allocator requirements: memory index 0 is unsupported in this pooling allocator configuration: memory has a minimum byte size of 13107200 which exceeds the limit of 0x800000 bytes");
        let error = compile_error(&wasmtime);
        assert!(matches!(
            error,
            ModuleError::InitialMemoryOverLimit {
                initial_bytes: 13_107_200,
                limit_bytes: 0x80_0000
            }
        ));
        assert_eq!(
            error.to_string(),
            "a component that starts with 12.5 MiB of linear memory, more than the 8.0 MiB an instance may have; raise the memory limit (`--memory-limit-mib`, `limits.memory_limit_mib`) to at least 13"
        );
        let other = compile_error(&anyhow::anyhow!("failed to parse WebAssembly module"));
        assert!(matches!(other, ModuleError::InvalidComponent(_)));
    }

    #[test]
    fn classifies_preambles() {
        assert!(matches!(
            classify(b"hello world"),
            Err(ModuleError::NotWasm)
        ));
        assert!(matches!(classify(b"\0asm"), Err(ModuleError::NotWasm)));
        assert_eq!(
            classify(b"\0asm\x01\0\0\0").unwrap(),
            BinaryKind::CoreModule
        );
        assert_eq!(
            classify(b"\0asm\x0d\0\x01\0").unwrap(),
            BinaryKind::Component
        );
        assert!(matches!(
            classify(b"\0asm\x01\0\x07\0"),
            Err(ModuleError::InvalidComponent(_))
        ));
    }

    #[test]
    fn only_our_interfaces_and_wasi_02_are_provided() {
        assert!(import_is_provided(HOST_LOG_IMPORT));
        assert!(import_is_provided("wasi:cli/environment@0.2.6"));
        assert!(!import_is_provided("wasi:http/outgoing-handler@0.3.0"));
        assert!(!import_is_provided("acme:secrets/vault@1.0.0"));
    }
}
