//! `logstream state export NAME [--partition P] [--out FILE]`: the state
//! bytes of a unit's current checkpoint (verified; an older kept generation
//! if the current one is corrupt), for inspection or backup.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use super::StoreArgs;
use crate::store::{checkpoint, registry};
use crate::unit_id::UnitId;

#[derive(Debug, Subcommand)]
pub enum StateCommand {
    /// Write the state bytes of a unit's current checkpoint to a file or stdout.
    Export(ExportArgs),
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The processor.
    pub name: String,

    /// The input partition of the unit.
    #[arg(long, default_value_t = 0)]
    pub partition: i32,

    /// Write here instead of to stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,

    #[command(flatten)]
    pub store: StoreArgs,
}

pub fn run(command: StateCommand) -> Result<ExitCode> {
    match command {
        StateCommand::Export(args) => export(args),
    }
}

fn export(args: ExportArgs) -> Result<ExitCode> {
    let store = args.store.open()?;
    if registry::get_spec(store.as_ref(), &args.name)?.is_none() {
        anyhow::bail!("no processor named {} is deployed", args.name);
    }
    let unit = UnitId::new(&args.name, args.partition).name();
    let Some(found) = checkpoint::read_current(store.as_ref(), &unit)? else {
        anyhow::bail!("unit {unit} has no checkpoint yet");
    };
    if !found.corrupt_generations.is_empty() {
        eprintln!(
            "warning: newer generations {:?} of {unit} are corrupt; exporting generation {}",
            found.corrupt_generations, found.meta.generation
        );
    }
    match &args.out {
        Some(path) => {
            std::fs::write(path, &found.state)
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
            eprintln!(
                "wrote {} bytes of {unit} (checkpoint generation {}, state version {}) to {}",
                found.state.len(),
                found.meta.generation,
                found.meta.state_version,
                path.display()
            );
        }
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(&found.state)
                .and_then(|()| stdout.flush())
                .context("writing the state to stdout")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
