//! A host node (`logstream host`): registers in the store, heartbeats, polls
//! the registry, and runs one [`Unit`] thread per (deployed processor, input
//! partition). On shutdown every unit hands over (final checkpoint, step
//! down) and the host deregisters.
//!
//! With an admin address, the host also serves its metrics and status over
//! HTTP ([`crate::admin`]) from startup until it has handed over.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};

use super::kafka;
use super::unit::{dlq_topic, Unit, UnitSettings};
use crate::admin::{Admin, AdminServer};
use crate::store::election::ElectionTiming;
use crate::store::registry::{self, ProcessorSpec};
use crate::store::{membership, KvStore, RetryPolicy};
use crate::wasm::{CompileCache, InstanceLimits, ModuleLoader, WasmEngine};

/// How often the main loop looks at the shutdown flag while it waits.
const SHUTDOWN_CHECK: Duration = Duration::from_millis(5);
/// How often the registry's change counter is polled.
pub const REGISTRY_POLL: Duration = Duration::from_millis(250);

/// What a host needs.
#[derive(Debug, Clone)]
pub struct HostConfig {
    pub store_url: String,
    pub brokers: String,
    pub host_id: String,
    pub timing: ElectionTiming,
    pub checkpoint_interval: Duration,
    pub checkpoint_every_records: u64,
    pub limits: InstanceLimits,
    pub cache_dir: Option<std::path::PathBuf>,
    /// Where to serve the admin HTTP endpoints (`None`: not served).
    pub admin_addr: Option<std::net::SocketAddr>,
}

struct RunningUnit {
    version: u64,
    partitions: i32,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// Run a host until `shutdown` is set.
pub fn run(config: HostConfig, shutdown: Arc<AtomicBool>) -> Result<()> {
    config.timing.validate().map_err(anyhow::Error::msg)?;
    let store: Arc<dyn KvStore> = crate::store::open(&config.store_url)
        .with_context(|| format!("opening the store {}", config.store_url))?;
    let engine = WasmEngine::new(config.limits.clone())?;
    let loader = ModuleLoader::new(engine, config.cache_dir.clone().map(CompileCache::new))?;
    let incarnation = crate::probe::incarnation_of(&config.host_id);
    let admin = Admin::new(&config.host_id, &incarnation);
    // Bound first: a busy admin port fails the start before any election.
    let _admin_server = config
        .admin_addr
        .map(|address| AdminServer::start(address, admin.clone()))
        .transpose()?;
    // A host without its broker can do nothing: say so at start rather
    // than log failures forever.
    kafka::check_reachable(&config.brokers)?;
    let started_at = crate::probe::unix_micros() / 1000;
    let policy = RetryPolicy {
        max_elapsed: config.timing.heartbeat,
        ..RetryPolicy::default()
    };
    tracing::info!(
        "host {incarnation} starting: store {}, brokers {}",
        store.describe(),
        config.brokers
    );
    let settings = UnitSettings {
        brokers: config.brokers.clone(),
        host_id: config.host_id.clone(),
        incarnation: incarnation.clone(),
        timing: config.timing,
        checkpoint_interval: config.checkpoint_interval,
        checkpoint_every_records: config.checkpoint_every_records,
    };
    let mut running: BTreeMap<String, RunningUnit> = BTreeMap::new();
    let mut seen_version = None;
    while !shutdown.load(Ordering::Relaxed) {
        match membership::heartbeat(
            store.as_ref(),
            &policy,
            &config.host_id,
            &incarnation,
            started_at,
        ) {
            Ok(_) => admin.status().heartbeat_succeeded(),
            Err(error) => tracing::warn!("membership heartbeat failed: {error}"),
        }
        let version = registry::registry_version(store.as_ref());
        if version.is_ok() {
            admin.status().registry_read();
        }
        match version {
            Ok(version) if Some(version) != seen_version => {
                match reconcile(&store, &loader, &settings, &admin, &mut running) {
                    Ok(()) => seen_version = Some(version),
                    Err(error) => tracing::error!("applying deployments failed: {error:#}"),
                }
            }
            Ok(_) => {}
            Err(error) => tracing::warn!("reading the registry failed: {error}"),
        }
        sleep_unless(&shutdown, REGISTRY_POLL.min(config.timing.heartbeat));
    }
    tracing::info!("host {incarnation} shutting down: handing over");
    // All units hand over at once: the passives' takeovers overlap.
    let stopping: Vec<RunningUnit> = std::mem::take(&mut running).into_values().collect();
    for unit in &stopping {
        unit.stop.store(true, Ordering::Relaxed);
    }
    for unit in stopping {
        stop_unit(unit);
    }
    // The admin server stops when `_admin_server` drops, after deregistering.
    membership::deregister(store.as_ref(), &policy, &config.host_id, &incarnation)?;
    Ok(())
}

/// Sleep `period`, returning early once `flag` is set: a SIGTERM starts
/// the handover within [`SHUTDOWN_CHECK`], not a whole poll later.
fn sleep_unless(flag: &AtomicBool, period: Duration) {
    let deadline = std::time::Instant::now() + period;
    while !flag.load(Ordering::Relaxed) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(SHUTDOWN_CHECK));
    }
}

fn stop_unit(unit: RunningUnit) {
    unit.stop.store(true, Ordering::Relaxed);
    for thread in unit.threads {
        let _ = thread.join();
    }
}

/// Start units for new or changed specs, stop those of removed ones.
fn reconcile(
    store: &Arc<dyn KvStore>,
    loader: &ModuleLoader,
    settings: &UnitSettings,
    admin: &Admin,
    running: &mut BTreeMap<String, RunningUnit>,
) -> Result<()> {
    let specs: BTreeMap<String, ProcessorSpec> = registry::list_specs(store.as_ref())?
        .into_iter()
        .map(|s| (s.name.clone(), s))
        .collect();
    let gone: Vec<String> = running
        .iter()
        .filter(|(name, unit)| specs.get(*name).is_none_or(|s| s.version != unit.version))
        .map(|(name, _)| name.clone())
        .collect();
    for name in gone {
        tracing::info!("processor {name}: stopping its units (undeployed or redeployed)");
        let unit = running.remove(&name).expect("listed");
        let partitions = unit.partitions;
        stop_unit(unit);
        for partition in 0..partitions {
            admin.forget_unit(&name, partition);
        }
    }
    for (name, spec) in specs {
        if running.contains_key(&name) {
            continue;
        }
        let bytes =
            registry::read_module(store.as_ref(), &spec.module_sha256)?.with_context(|| {
                format!(
                    "processor {name}: module {} is not in the store",
                    spec.module_sha256
                )
            })?;
        let module = loader
            .load(&bytes)
            .map_err(|e| anyhow::anyhow!("processor {name}: the stored module is {e}"))?;
        let partitions = kafka::partition_count(&settings.brokers, &spec.input_topic)?;
        kafka::ensure_topics(&settings.brokers, &[(&dlq_topic(&name), partitions)])?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for partition in 0..partitions {
            let unit = Unit::new(
                spec.clone(),
                partition,
                module.clone(),
                store.clone(),
                settings.clone(),
                admin.unit(&name, partition),
            );
            let stop = stop.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("unit-{name}-{partition}"))
                    .spawn(move || unit.run(stop))
                    .context("starting a unit thread")?,
            );
        }
        tracing::info!(
            "processor {name} v{}: {partitions} units started",
            spec.version
        );
        running.insert(
            name,
            RunningUnit {
                version: spec.version,
                partitions,
                stop,
                threads,
            },
        );
    }
    Ok(())
}
