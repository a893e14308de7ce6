//! `logstream undeploy NAME`: remove a processor's spec. Hosts notice the
//! registry change at their next poll and stop the processor's units
//! (`pipeline::node::reconcile`); its module and checkpoints stay in the
//! store, so deploying it again resumes from its last checkpoint.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use super::StoreArgs;
use crate::store::registry;

#[derive(Debug, Args)]
pub struct UndeployArgs {
    /// The processor to remove.
    pub name: String,

    #[command(flatten)]
    pub store: StoreArgs,
}

pub fn run(args: UndeployArgs) -> Result<ExitCode> {
    let store = args.store.open()?;
    if !registry::remove_spec(store.as_ref(), &args.name)? {
        anyhow::bail!("no processor named {} is deployed", args.name);
    }
    println!(
        "undeployed {} (hosts stop its units at their next registry poll; its checkpoints are kept)",
        args.name
    );
    Ok(ExitCode::SUCCESS)
}
