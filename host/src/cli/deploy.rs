//! `logstream deploy FILE.wasm --name NAME --input TOPIC --output TOPIC`:
//! validate a processor module, store it and its spec in the registry.
//! Hosts notice the new version through the registry's change counter.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

use super::{module_loader, GlobalArgs};
use crate::store::registry::{self, BatchSettings, DeploySpec};
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

    /// Output topic.
    #[arg(long)]
    pub output: String,

    /// Configuration string for the processor.
    #[arg(long, default_value = "")]
    pub config: String,

    /// Most records per batch.
    #[arg(long, default_value_t = registry::DEFAULT_BATCH_MAX_RECORDS)]
    pub batch_max_records: u32,

    /// How long a batch waits for more records after its first, in ms.
    #[arg(long, default_value_t = registry::DEFAULT_BATCH_LINGER_MS)]
    pub batch_linger_ms: u64,

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
    let spec = DeploySpec {
        name: args.name,
        input_topic: args.input,
        output_topic: args.output,
        config: args.config,
        batch: BatchSettings {
            max_records: args.batch_max_records,
            linger_ms: args.batch_linger_ms,
            ..BatchSettings::default()
        },
    };
    let outcome = registry::deploy(store.as_ref(), &loader, &bytes, spec)
        .map_err(|e| anyhow::anyhow!("{} was not deployed: {e}", args.file.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&outcome.spec)?);
    } else {
        println!(
            "deployed {} v{} (module {}){}",
            outcome.spec.name,
            outcome.spec.version,
            &outcome.spec.module_sha256[..12],
            if outcome.changed { "" } else { " (unchanged)" }
        );
    }
    Ok(ExitCode::SUCCESS)
}
