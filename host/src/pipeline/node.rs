//! A host node (`logstream host`): settles the deployment's name, registers
//! in the store, heartbeats, polls the registry, and runs one crash-only
//! [`Unit`] per (deployed processor, input partition) as a job of its
//! [`WorkerPool`], whose leases one [`HostElector`] renews. On shutdown
//! every unit hands over (final checkpoint, step down) and the host
//! deregisters.
//!
//! Guarantees:
//! - **One bad processor never blocks the others.** A processor whose
//!   module cannot be loaded or whose topics cannot be read is reported
//!   (`/status`, `/readyz`) and tried again every [`PROCESSOR_RETRY`]; the
//!   other processors start and run meanwhile.
//! - **Growing topics get units.** Every [`PARTITION_RECHECK`] the host
//!   looks at each running processor's input partition count and starts
//!   units for new partitions; the existing units keep their output
//!   partitions (`pipeline::position`).
//! - **Capacity is explicit.** A host runs at most `max_units` units (its
//!   instance pool is sized for that many); the units beyond it are not
//!   started — so it never contends for their leases, and a host with room
//!   leads them — and are reported as waiting (`/status`, `/readyz`,
//!   `logstream_units_waiting`) until room frees up.
//! - **A host cut off from the brokers hands over.** It publishes whether
//!   it reaches them with its heartbeat ([`broker_health`]); unreachable
//!   for [`broker_health::HANDOVER_AFTER`] while a live peer reaches them,
//!   it releases its leases and claims none until its brokers answer again.
//!   When no host reaches them, nobody yields. Membership heartbeats run on
//!   a thread of their own ([`super::heartbeat`]), never behind a broker
//!   call.
//!
//! With an admin address, the host also serves its metrics and status over
//! HTTP ([`crate::admin`]) from startup until it has handed over.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::broker_health::BrokerHealth;
use super::checkpoint_watch::CheckpointWatch;
use super::elector::HostElector;
use super::heartbeat::{Duties, Heartbeat};
use super::kafka;
use super::shared_io::SharedIo;
use super::standby_budget::StandbyBudget;
use super::unit::restarts::UnitJob;
use super::unit::{Unit, UnitSettings};
use super::worker_pool::{TaskHandle, WorkerPool};
use crate::admin::{Admin, AdminServer, CapacityReport};
use crate::store::clock::SystemClock;
use crate::store::election::ElectionTiming;
use crate::store::membership::HostCapacity;
use crate::store::registry::{self, ProcessorSpec};
use crate::store::{deployment, membership, KvStore, RetryPolicy};
use crate::unit_id::{Deployment, UnitId};
use crate::wasm::limits::MIB;
use crate::wasm::{CompileCache, InstanceLimits, ModuleLoader, ProcessorModule, WasmEngine};

/// How often the main loop looks at the shutdown flag while it waits.
const SHUTDOWN_CHECK: Duration = Duration::from_millis(5);
/// How often the registry's change counter is polled.
pub const REGISTRY_POLL: Duration = Duration::from_millis(250);
/// How often a processor that could not start is tried again.
pub const PROCESSOR_RETRY: Duration = Duration::from_secs(5);
/// How often running processors' input partition counts are looked at.
pub const PARTITION_RECHECK: Duration = Duration::from_secs(5);

/// What a host needs.
#[derive(Debug, Clone)]
pub struct HostConfig {
    pub store_url: String,
    pub brokers: String,
    pub host_id: String,
    /// The deployment name to settle or check (`None`: the store's, or a
    /// generated one on a new store).
    pub deployment: Option<Deployment>,
    pub timing: ElectionTiming,
    pub checkpoint_interval: Duration,
    pub checkpoint_every_records: u64,
    pub limits: InstanceLimits,
    /// Most units this host runs (`limits.max_instances` must allow one
    /// instance each).
    pub max_units: u32,
    /// Kafka consumers shared by all units' inputs.
    pub input_fetchers: usize,
    /// Worker threads that run the units' steps (the pool grows past them
    /// while steps block; see [`super::worker_pool`]).
    pub unit_workers: usize,
    /// How much linear memory the warm standbys may hold together, in MiB.
    pub standby_memory_mib: u64,
    pub cache_dir: Option<std::path::PathBuf>,
    /// Where to serve the admin HTTP endpoints (`None`: not served).
    pub admin_addr: Option<std::net::SocketAddr>,
}

/// One unit's job in the host's worker pool.
struct RunningUnit {
    job: TaskHandle,
}

/// The units of one deployed processor on this host.
struct RunningProcessor {
    spec: ProcessorSpec,
    module: ProcessorModule,
    units: BTreeMap<i32, RunningUnit>,
    /// The input's partition count as last read: units below it that are
    /// not running wait for capacity.
    partitions: i32,
    partitions_checked: Instant,
}

impl RunningProcessor {
    /// Partitions with no unit running here.
    fn waiting(&self) -> impl Iterator<Item = i32> + '_ {
        (0..self.partitions).filter(|p| !self.units.contains_key(p))
    }
}

/// What the host loop keeps between rounds.
struct Host {
    /// Runs every unit's steps (see [`super::worker_pool`]).
    workers: WorkerPool,
    elector: HostElector,
    store: Arc<dyn KvStore>,
    loader: ModuleLoader,
    /// Kafka bootstrap servers.
    brokers: String,
    settings: UnitSettings,
    admin: Admin,
    max_units: u32,
    running: BTreeMap<String, RunningProcessor>,
    /// Processors that could not start, and when to try again.
    failed: BTreeMap<String, Instant>,
}

/// Run a host until `shutdown` is set.
pub fn run(config: HostConfig, shutdown: Arc<AtomicBool>) -> Result<()> {
    config.timing.validate().map_err(anyhow::Error::msg)?;
    if config.max_units == 0 || config.limits.max_instances < config.max_units {
        anyhow::bail!(
            "max_units is {} and the instance pool holds {}; a host needs at least one unit and one instance per unit",
            config.max_units,
            config.limits.max_instances
        );
    }
    let store: Arc<dyn KvStore> = crate::store::open(&config.store_url)
        .with_context(|| format!("opening the store {}", config.store_url))?;
    let deployment = deployment::settle(store.as_ref(), config.deployment.as_ref())?;
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
        %deployment,
        "host {incarnation} starting: store {}, brokers {}",
        store.describe(),
        config.brokers
    );
    let elector = HostElector::start(store.clone(), &config.host_id, &incarnation, config.timing)?;
    let broker_health =
        BrokerHealth::start(&config.brokers).context("starting the broker health probe")?;
    let capacity = Arc::new(Mutex::new(HostCapacity {
        max_units: config.max_units,
        units: 0,
    }));
    let heartbeat = Heartbeat::start(Duties {
        store: store.clone(),
        policy: policy.clone(),
        host_id: config.host_id.clone(),
        incarnation: incarnation.clone(),
        started_at_unix_ms: started_at,
        heartbeat: config.timing.heartbeat,
        lease: config.timing.lease,
        capacity: capacity.clone(),
        broker_health,
        elector: elector.clone(),
        admin: admin.clone(),
    })?;
    // Grows past the core while steps block (takeovers, flushes), to at
    // most a worker per unit: never fewer side by side than a thread per
    // unit would run.
    let workers = WorkerPool::new("unit", config.unit_workers, config.max_units as usize)?;
    let mut host = Host {
        workers,
        elector,
        store: store.clone(),
        loader,
        brokers: config.brokers.clone(),
        settings: UnitSettings {
            io: Arc::new(SharedIo::new(&config.brokers, config.input_fetchers)?),
            clock: Arc::new(SystemClock::default()),
            standby_budget: Arc::new(StandbyBudget::new(config.standby_memory_mib)),
            host_id: config.host_id.clone(),
            incarnation: incarnation.clone(),
            deployment,
            timing: config.timing,
            checkpoint_watch: Some(
                CheckpointWatch::start(store.clone(), config.timing.heartbeat)
                    .context("starting the checkpoint watch thread")?,
            ),
            checkpoint_interval: config.checkpoint_interval,
            checkpoint_every_records: config.checkpoint_every_records,
        },
        admin: admin.clone(),
        max_units: config.max_units,
        running: BTreeMap::new(),
        failed: BTreeMap::new(),
    };
    let mut seen_version = None;
    while !shutdown.load(Ordering::Relaxed) {
        *capacity.lock().unwrap_or_else(|p| p.into_inner()) = HostCapacity {
            max_units: host.max_units,
            units: host.running_units() as u32,
        };
        let version = registry::registry_version(store.as_ref());
        if version.is_ok() {
            admin.status().registry_read();
        }
        let retry_due = host.failed.values().any(|at| Instant::now() >= *at);
        match version {
            Ok(version) if Some(version) != seen_version || retry_due => match host.reconcile() {
                Ok(()) => seen_version = Some(version),
                Err(error) => {
                    tracing::error!(
                        error = format!("{error:#}"),
                        "reading the deployments failed"
                    )
                }
            },
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "reading the registry failed"),
        }
        host.start_new_partitions();
        host.fill_capacity();
        sleep_unless(&shutdown, REGISTRY_POLL.min(config.timing.heartbeat));
    }
    tracing::info!("host {incarnation} shutting down: handing over");
    // All units hand over at once: the passives' takeovers overlap.
    let stopping: Vec<RunningUnit> = std::mem::take(&mut host.running)
        .into_values()
        .flat_map(|processor| processor.units.into_values())
        .collect();
    stop_units(stopping);
    // No heartbeat may re-register the host after it deregistered.
    drop(heartbeat);
    // The admin server stops when `_admin_server` drops, after deregistering.
    membership::deregister(store.as_ref(), &policy, &config.host_id, &incarnation)?;
    Ok(())
}

/// Sleep `period`, returning early once `flag` is set: a SIGTERM starts
/// the handover within [`SHUTDOWN_CHECK`], not a whole poll later.
fn sleep_unless(flag: &AtomicBool, period: Duration) {
    let deadline = Instant::now() + period;
    while !flag.load(Ordering::Relaxed) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(SHUTDOWN_CHECK));
    }
}

impl Host {
    /// Start units for new or changed specs, stop those of removed or
    /// changed ones. A processor that cannot start is reported and retried
    /// later; the others go on.
    fn reconcile(&mut self) -> Result<()> {
        let specs: BTreeMap<String, ProcessorSpec> = registry::list_specs(self.store.as_ref())?
            .into_iter()
            .map(|s| (s.name.clone(), s))
            .collect();
        let gone: Vec<String> = self
            .running
            .iter()
            .filter(|(name, p)| specs.get(*name).is_none_or(|s| s.version != p.spec.version))
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            tracing::info!(processor = %name, "stopping its units (undeployed or redeployed)");
            let processor = self.running.remove(&name).expect("listed");
            let partitions: Vec<i32> = processor.units.keys().copied().collect();
            stop_units(processor.units.into_values().collect());
            for partition in partitions {
                self.admin.forget_unit(&name, partition);
            }
        }
        self.failed.retain(|name, _| specs.contains_key(name));
        for name in self.admin.status().failed_processor_names() {
            if !specs.contains_key(&name) {
                self.admin.processor_ok(&name);
            }
        }
        for (name, spec) in specs {
            if self.running.contains_key(&name) {
                continue;
            }
            if self
                .failed
                .get(&name)
                .is_some_and(|at| Instant::now() < *at)
            {
                continue;
            }
            match self.start_processor(spec) {
                Ok(processor) => {
                    self.failed.remove(&name);
                    self.admin.processor_ok(&name);
                    self.running.insert(name, processor);
                }
                Err(error) => {
                    let reason = format!("{error:#}");
                    tracing::error!(
                        processor = %name,
                        %reason,
                        retry_in = ?PROCESSOR_RETRY,
                        "could not start the processor; the others run on"
                    );
                    self.admin.processor_failed(&name, &reason);
                    self.failed.insert(name, Instant::now() + PROCESSOR_RETRY);
                }
            }
        }
        Ok(())
    }

    /// Load a processor's module and start a unit per input partition.
    fn start_processor(&self, spec: ProcessorSpec) -> Result<RunningProcessor> {
        let name = spec.name.clone();
        let bytes = registry::read_module(self.store.as_ref(), &spec.module_sha256)?
            .with_context(|| format!("module {} is not in the store", spec.module_sha256))?;
        let module = self
            .loader
            .load(&bytes)
            .map_err(|e| anyhow::anyhow!("the stored module is {e}"))?;
        let partitions = kafka::partition_count(&self.brokers, &spec.input_topic)
            .with_context(|| format!("reading input topic {}", spec.input_topic))?;
        let dead_letters = spec.dead_letter_topic();
        kafka::ensure_topics(&self.brokers, &[(&dead_letters, partitions)])?;
        let mut processor = RunningProcessor {
            spec,
            module,
            units: BTreeMap::new(),
            partitions,
            partitions_checked: Instant::now(),
        };
        let started = self.start_units(&mut processor)?;
        tracing::info!(
            processor = %name,
            version = processor.spec.version,
            "{started} units started of {partitions}"
        );
        Ok(processor)
    }

    /// Units running on this host.
    fn running_units(&self) -> usize {
        self.running.values().map(|p| p.units.len()).sum()
    }

    /// Start the units of `processor` (not yet among the running) that wait,
    /// as far as capacity allows; how many started.
    fn start_units(&self, processor: &mut RunningProcessor) -> Result<usize> {
        let free = (self.max_units as usize).saturating_sub(self.running_units());
        let waiting: Vec<i32> = processor.waiting().take(free).collect();
        for &partition in &waiting {
            let unit = self.start_unit(&processor.spec, &processor.module, partition)?;
            processor.units.insert(partition, unit);
        }
        Ok(waiting.len())
    }

    /// Start waiting units while there is room, in processor and partition
    /// order, and publish the capacity.
    fn fill_capacity(&mut self) {
        let free = (self.max_units as usize).saturating_sub(self.running_units());
        let wanted: Vec<(String, i32)> = self
            .running
            .iter()
            .flat_map(|(name, p)| p.waiting().map(move |partition| (name.clone(), partition)))
            .take(free)
            .collect();
        for (name, partition) in wanted {
            let processor = &self.running[&name];
            match self.start_unit(&processor.spec, &processor.module, partition) {
                Ok(unit) => {
                    let processor = self.running.get_mut(&name).expect("listed");
                    processor.units.insert(partition, unit);
                }
                Err(error) => tracing::warn!(
                    processor = %name,
                    partition,
                    error = format!("{error:#}"),
                    "starting a waiting unit failed"
                ),
            }
        }
        let waiting: Vec<String> = self
            .running
            .values()
            .flat_map(|p| {
                p.waiting()
                    .map(|partition| UnitId::new(&p.spec.name, partition).name())
            })
            .collect();
        let budget = &self.settings.standby_budget;
        let (warm_bytes, warm_standbys) = budget.used();
        self.admin.capacity(CapacityReport {
            max_units: self.max_units,
            running: self.running_units(),
            waiting,
            standby_memory_mib: budget.limit_bytes() / MIB,
            standby_memory_used_mib: warm_bytes.div_ceil(MIB),
            warm_standbys,
            unit_workers: self.workers.workers(),
        });
    }

    fn start_unit(
        &self,
        spec: &ProcessorSpec,
        module: &ProcessorModule,
        partition: i32,
    ) -> Result<RunningUnit> {
        let admin = self.admin.unit(&spec.name, partition);
        let (spec, module, store, settings, elector) = (
            spec.clone(),
            module.clone(),
            self.store.clone(),
            self.settings.clone(),
            self.elector.clone(),
        );
        let name = UnitId::new(&spec.name, partition).name();
        let span = tracing::info_span!("unit", unit = %format!("{}/{partition}", spec.name));
        let job = self.workers.spawn(&name, move |waker| {
            let unit_admin = admin.clone();
            Box::new(UnitJob::new(
                move || {
                    Unit::new(
                        spec.clone(),
                        partition,
                        module.clone(),
                        store.clone(),
                        settings.clone(),
                        Box::new(elector.join(&UnitId::new(&spec.name, partition).name())),
                        unit_admin.clone(),
                    )
                },
                admin,
                waker,
                span,
            ))
        });
        Ok(RunningUnit { job })
    }

    /// Start units for input partitions added since a processor started.
    fn start_new_partitions(&mut self) {
        let due: Vec<String> = self
            .running
            .iter()
            .filter(|(_, p)| p.partitions_checked.elapsed() >= PARTITION_RECHECK)
            .map(|(name, _)| name.clone())
            .collect();
        for name in due {
            let mut processor = self.running.remove(&name).expect("listed");
            processor.partitions_checked = Instant::now();
            let counted = kafka::partition_count(&self.brokers, &processor.spec.input_topic);
            match counted {
                Ok(partitions) if partitions > processor.partitions => {
                    let before = processor.partitions;
                    let dead_letters = processor.spec.dead_letter_topic();
                    let ensured =
                        kafka::ensure_topics(&self.brokers, &[(&dead_letters, partitions)]);
                    match ensured {
                        Ok(()) => {
                            processor.partitions = partitions;
                            tracing::info!(
                                processor = %name,
                                "input topic grew from {before} to {partitions} partitions: units start for the new ones"
                            );
                        }
                        Err(error) => tracing::warn!(
                            processor = %name,
                            error = format!("{error:#}"),
                            "the input topic grew, but the dead-letter topic could not follow; trying again later"
                        ),
                    }
                }
                Ok(_) => {}
                Err(error) => tracing::debug!(
                    processor = %name,
                    error = format!("{error:#}"),
                    "could not count the input partitions"
                ),
            }
            self.running.insert(name, processor);
        }
    }
}

/// Stop units (all at once, so their handovers overlap: the worker pool
/// grows for them) and wait for them.
fn stop_units(units: Vec<RunningUnit>) {
    for unit in &units {
        unit.job.stop();
    }
    for unit in units {
        unit.job.join();
    }
}
