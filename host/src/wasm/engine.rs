//! The process-wide wasmtime engine: configured once (component model,
//! pooling allocator sized from [`InstanceLimits`], epoch interruption) and
//! a timer thread that advances the epoch every [`EPOCH_TICK`].
//!
//! Guarantee: every store created from a [`WasmEngine`] is interruptible;
//! the timer stops when the last clone of the engine handle is dropped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::limits::{InstanceLimits, EPOCH_TICK, MAX_TABLE_ELEMENTS};

/// Core instances, memories and tables one processor component may contain.
/// A Rust `wasm32-wasip2` component has a handful of each.
const MAX_CORE_INSTANCES_PER_COMPONENT: u32 = 32;
const MAX_MEMORIES_PER_COMPONENT: u32 = 4;
const MAX_TABLES_PER_COMPONENT: u32 = 16;

/// A configured engine and its epoch timer. Cheap to clone.
#[derive(Clone)]
pub struct WasmEngine {
    inner: Arc<EngineInner>,
}

struct EngineInner {
    engine: Engine,
    limits: InstanceLimits,
    stop_timer: Arc<AtomicBool>,
}

impl Drop for EngineInner {
    fn drop(&mut self) {
        self.stop_timer.store(true, Ordering::Relaxed);
    }
}

impl WasmEngine {
    /// Build the engine and start its epoch timer.
    pub fn new(limits: InstanceLimits) -> Result<Self> {
        limits.validate().map_err(anyhow::Error::msg)?;
        let engine = Engine::new(&engine_config(&limits))
            .map_err(anyhow::Error::from)
            .context("configuring wasmtime")?;
        let stop_timer = Arc::new(AtomicBool::new(false));
        spawn_epoch_timer(engine.clone(), stop_timer.clone())?;
        Ok(WasmEngine {
            inner: Arc::new(EngineInner {
                engine,
                limits,
                stop_timer,
            }),
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    pub fn limits(&self) -> &InstanceLimits {
        &self.inner.limits
    }

    /// A short hex string that changes whenever compiled artifacts of this
    /// engine stop being loadable (wasmtime version, target, settings).
    pub fn compatibility_key(&self) -> String {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.inner
            .engine
            .precompile_compatibility_hash()
            .hash(&mut hasher);
        format!("{:016x}", hasher.finish())
    }
}

fn engine_config(limits: &InstanceLimits) -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    config.cranelift_opt_level(wasmtime::OptLevel::Speed);

    let mut pool = PoolingAllocationConfig::default();
    let instances = limits.max_instances;
    pool.total_component_instances(instances)
        .total_core_instances(instances * MAX_CORE_INSTANCES_PER_COMPONENT)
        .total_memories(instances * MAX_MEMORIES_PER_COMPONENT)
        .total_tables(instances * MAX_TABLES_PER_COMPONENT)
        .total_stacks(instances)
        .max_core_instances_per_component(MAX_CORE_INSTANCES_PER_COMPONENT)
        .max_memories_per_component(MAX_MEMORIES_PER_COMPONENT)
        .max_tables_per_component(MAX_TABLES_PER_COMPONENT)
        .table_elements(MAX_TABLE_ELEMENTS)
        .max_memory_size(limits.memory_limit_bytes);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    config
}

fn spawn_epoch_timer(engine: Engine, stop: Arc<AtomicBool>) -> Result<()> {
    std::thread::Builder::new()
        .name("logstream-epoch".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(EPOCH_TICK);
                engine.increment_epoch();
            }
        })
        .context("starting the epoch timer thread")?;
    Ok(())
}
