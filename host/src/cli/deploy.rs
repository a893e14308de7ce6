//! `logstream deploy FILE.wasm --name NAME --input TOPIC --output TOPIC
//! [--output TOPIC …] [--reset]`: validate a processor module, store it and
//! its spec in the registry. Hosts notice the new version through the
//! registry's change counter.
//!
//! The first `--output` is the default output topic; the others are the
//! only topics the processor may route outputs to by name.
//!
//! Redeploying under an existing name first checks that the new module
//! restores the current checkpoint of every unit of the processor; if one
//! refuses, nothing is stored and the running version keeps running. A
//! redeploy that changes the input or the default output topic is refused
//! unless `--reset` starts a new state lineage (empty state, from the start
//! of the input).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

use super::{module_loader, GlobalArgs};
use crate::store::registry::{self, BatchSettings, DeployOptions, DeploySpec};
use crate::wasm::InstanceLimits;

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// The processor component.
    pub file: PathBuf,

    /// Processor name (1–64 characters of a-z, 0-9, `.`, `_`, `-`).
    #[arg(long)]
    pub name: String,

    /// Input topic.
    #[arg(long)]
    pub input: String,

    /// Output topic; repeat it for topics the processor may route outputs
    /// to by name (the first is the default for outputs that name none).
    #[arg(long = "output", value_name = "TOPIC", required = true)]
    pub outputs: Vec<String>,

    /// Start the processor over: empty state, from the start of the input
    /// (a new state lineage; the old checkpoints are ignored). Needed to
    /// change the input or the default output topic of a deployed
    /// processor.
    #[arg(long)]
    pub reset: bool,

    /// Configuration string for the processor.
    #[arg(long, default_value = "")]
    pub config: String,

    /// Most records per batch.
    #[arg(long, default_value_t = registry::DEFAULT_BATCH_MAX_RECORDS)]
    pub batch_max_records: u32,

    /// How long a batch waits for more records after its first, in ms.
    #[arg(long, default_value_t = registry::DEFAULT_BATCH_LINGER_MS)]
    pub batch_linger_ms: u64,

    /// Kafka bootstrap servers: when given, the deploy checks the input
    /// topic and warns when its units fit on no registered host.
    #[arg(long, env = "LOGSTREAM_BROKERS")]
    pub brokers: Option<String>,

    /// Coordination store URL.
    #[arg(
        long,
        env = "LOGSTREAM_STORE",
        default_value = "sqlite:logstream-data/store.db"
    )]
    pub store: String,

    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(global: &GlobalArgs, args: DeployArgs) -> Result<ExitCode> {
    let bytes = std::fs::read(&args.file)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", args.file.display()))?;
    let loader = module_loader(global, InstanceLimits::default())?;
    let store = crate::store::open(&args.store)
        .with_context(|| format!("opening the store {}", args.store))?;
    let mut outputs = args.outputs.into_iter();
    let spec = DeploySpec {
        name: args.name,
        input_topic: args.input,
        output_topic: outputs.next().expect("clap requires one --output"),
        extra_output_topics: outputs.collect(),
        config: args.config,
        batch: BatchSettings {
            max_records: args.batch_max_records,
            linger_ms: args.batch_linger_ms,
            ..BatchSettings::default()
        },
    };
    let options = DeployOptions { reset: args.reset };
    let refused = |e: &dyn std::fmt::Display| {
        anyhow::anyhow!("{} was not deployed: {e:#}", args.file.display())
    };
    if registry::get_spec(store.as_ref(), &spec.name)?.is_some() {
        // A redeploy: the file first (is it a processor at all?), then the
        // topics (do the checkpoints carry over?), then the state (does the
        // module restore it?).
        let module = loader
            .load(&bytes)
            .map_err(|e| anyhow::anyhow!("{} was not deployed: {e}", args.file.display()))?;
        registry::check_redeploy(store.as_ref(), &spec, options).map_err(|e| refused(&e))?;
        // (A reset starts a new lineage: the old state is not restored.)
        if !args.reset {
            let checked = check_restores(store.as_ref(), module, &spec.name, &spec.config)
                .map_err(|e| refused(&e))?;
            if checked > 0 {
                eprintln!("the new module restores the current state of all {checked} units");
            }
        }
    }
    let new_processor = registry::get_spec(store.as_ref(), &spec.name)?.is_none();
    let outcome = registry::deploy(store.as_ref(), &loader, &bytes, spec, options)
        .map_err(|e| anyhow::anyhow!("{} was not deployed: {e}", args.file.display()))?;
    if let (Some(brokers), true) = (&args.brokers, new_processor) {
        if let Some(warning) = capacity_warning(store.as_ref(), brokers, &outcome.spec) {
            eprintln!("warning: {warning}");
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&outcome.spec)?);
    } else {
        println!(
            "deployed {} v{} (module {}){}{}",
            outcome.spec.name,
            outcome.spec.version,
            &outcome.spec.module_sha256[..12],
            if outcome.changed { "" } else { " (unchanged)" },
            if args.reset {
                format!(
                    "; reset: state lineage {}, from empty state at the start of the input",
                    outcome.spec.lineage
                )
            } else {
                String::new()
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Restore each unit's current checkpoint of `processor` into a fresh
/// instance of `module` (configured with `config`); the number of units
/// checked, or which one refused and why.
fn check_restores(
    store: &dyn crate::store::KvStore,
    module: crate::wasm::ProcessorModule,
    processor: &str,
    config: &str,
) -> Result<usize> {
    let mut checked = 0;
    for partition in registry::unit_partitions(store, processor)? {
        let unit = crate::unit_id::UnitId::new(processor, partition);
        let Some(current) = crate::store::checkpoint::read_current(store, &unit.name())
            .with_context(|| format!("reading the checkpoint of {unit}"))?
        else {
            continue;
        };
        crate::wasm::SupervisedProcessor::start_from(
            &unit.name(),
            module.clone(),
            config,
            crate::wasm::RecoveryPolicy::default(),
            Some(current.state),
        )
        .map_err(|e| {
            anyhow::anyhow!(
                "the new module refuses the state of {unit} (checkpoint generation {}, state version {}): {e}; the deployed version keeps running",
                current.meta.generation,
                current.meta.state_version
            )
        })?;
        checked += 1;
    }
    Ok(checked)
}

/// Why the units of a newly deployed `spec` may not run anywhere yet: its
/// input topic is missing, or no registered host has room for all of them
/// (`None`: they fit, or nothing is known about the hosts' capacity).
fn capacity_warning(
    store: &dyn crate::store::KvStore,
    brokers: &str,
    spec: &crate::store::registry::ProcessorSpec,
) -> Option<String> {
    let units = match crate::pipeline::kafka::partition_count(brokers, &spec.input_topic) {
        Ok(units) => units,
        Err(error) => {
            return Some(format!(
                "the input topic {} cannot be read ({error:#}); processor {} starts on each host once it can",
                spec.input_topic, spec.name
            ))
        }
    };
    let hosts =
        crate::store::membership::list_hosts(store, &crate::store::RetryPolicy::default()).ok()?;
    let rooms: Vec<(String, u32, u32)> = hosts
        .iter()
        .filter_map(|h| {
            let c = h.capacity?;
            Some((
                h.host_id.clone(),
                c.max_units.saturating_sub(c.units),
                c.max_units,
            ))
        })
        .collect();
    if rooms.is_empty()
        || rooms
            .iter()
            .any(|(_, free, _)| *free as i64 >= i64::from(units))
    {
        return None;
    }
    let listed: Vec<String> = rooms
        .iter()
        .map(|(host, free, max)| format!("{host}: {free} of {max} free"))
        .collect();
    Some(format!(
        "processor {} has {units} units (one per partition of {}), more than any registered host has room for ({}); the units that do not fit wait until room frees up: raise --max-units or add hosts",
        spec.name,
        spec.input_topic,
        listed.join(", ")
    ))
}
