//! `logstream step-down [--processor NAME] [--host ID] [--wait]`: ask the
//! active host of units to hand over gracefully to a passive one.
//!
//! No signal goes to another process: the command marks the current epoch
//! in each unit's leader record (`step_down_requested_epoch`, one
//! transaction with the read, [`election::request_step_down`]). The leading
//! unit's elector sees it in the record it reads every heartbeat; the unit
//! then writes a final checkpoint, releases the record (other hosts claim a
//! released record at once) and goes passive, not claiming its own release
//! back for a lease. A request dies with its epoch: the next claim writes a
//! fresh record without it.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;

use super::StoreArgs;
use crate::store::election::{self, read_leader, LeaderRecord};
use crate::store::membership;
use crate::store::registry;
use crate::store::{transact, KvStore, RetryPolicy};
use crate::unit_id::UnitId;

/// Default bound of `--wait`, in milliseconds.
pub const DEFAULT_WAIT_MS: u64 = 30_000;
/// How often `--wait` reads the leader records.
const WAIT_POLL: Duration = Duration::from_millis(50);

#[derive(Debug, Args)]
pub struct StepDownArgs {
    /// Only this processor's units [default: every deployed processor].
    #[arg(long)]
    pub processor: Option<String>,

    /// Only units this host currently leads.
    #[arg(long)]
    pub host: Option<String>,

    /// Wait until another host leads every unit asked (exit 1 if that does
    /// not happen within --wait-ms).
    #[arg(long)]
    pub wait: bool,

    /// Bound of --wait, in milliseconds.
    #[arg(long, default_value_t = DEFAULT_WAIT_MS)]
    pub wait_ms: u64,

    #[command(flatten)]
    pub store: StoreArgs,
}

pub fn run(args: StepDownArgs) -> Result<ExitCode> {
    let store = args.store.open()?;
    let policy = RetryPolicy::default();
    let specs = match &args.processor {
        Some(name) => match registry::get_spec(store.as_ref(), name)? {
            Some(spec) => vec![spec],
            None => anyhow::bail!("no processor named {name} is deployed"),
        },
        None => registry::list_specs(store.as_ref())?,
    };
    let hosts = membership::list_hosts(store.as_ref(), &policy)?;
    let only_holder = match &args.host {
        Some(id) => match hosts.iter().find(|h| &h.host_id == id) {
            Some(host) => Some(host.incarnation.clone()),
            None => anyhow::bail!("no host named {id} is registered"),
        },
        None => None,
    };
    let host_of: BTreeMap<String, String> = hosts
        .into_iter()
        .map(|h| (h.incarnation, h.host_id))
        .collect();
    let describe = |record: &LeaderRecord| {
        host_of.get(&record.holder).map_or_else(
            || format!("incarnation {}", record.holder),
            |h| format!("host {h}"),
        )
    };

    let mut asked: Vec<(String, LeaderRecord)> = Vec::new();
    for spec in &specs {
        for partition in registry::unit_partitions(store.as_ref(), &spec.name)? {
            let unit = UnitId::new(&spec.name, partition).name();
            let request =
                election::request_step_down(store.as_ref(), &policy, &unit, only_holder.as_deref())
                    .map_err(|e| anyhow::anyhow!("asking {unit} to step down: {e}"))?;
            if let Some(record) = request {
                println!(
                    "asked {unit} to step down (epoch {}, {})",
                    record.epoch,
                    describe(&record)
                );
                asked.push((unit, record));
            }
        }
    }
    if asked.is_empty() {
        println!(
            "no unit was asked: none is led{}",
            match &args.host {
                Some(id) => format!(" by host {id}"),
                None => String::new(),
            }
        );
        return Ok(ExitCode::SUCCESS);
    }
    if args.wait {
        wait_for_handover(
            store.as_ref(),
            &policy,
            &asked,
            Duration::from_millis(args.wait_ms),
            |record| describe(record),
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Wait until each unit is led (not released) by another incarnation than
/// the one asked, at a later epoch.
fn wait_for_handover(
    store: &dyn KvStore,
    policy: &RetryPolicy,
    asked: &[(String, LeaderRecord)],
    bound: Duration,
    describe: impl Fn(&LeaderRecord) -> String,
) -> Result<()> {
    let deadline = Instant::now() + bound;
    let mut pending: Vec<&(String, LeaderRecord)> = asked.iter().collect();
    loop {
        let mut still = Vec::new();
        for entry @ (unit, before) in pending {
            let now = transact(store, policy, |txn| read_leader(txn, unit))
                .map_err(|e| anyhow::anyhow!("reading the leader record of {unit}: {e}"))?;
            match now {
                Some(r) if !r.released && r.holder != before.holder && r.epoch > before.epoch => {
                    println!("{unit}: now led by {} at epoch {}", describe(&r), r.epoch);
                }
                _ => still.push(entry),
            }
        }
        if still.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let units: Vec<&str> = still.iter().map(|(u, _)| u.as_str()).collect();
            anyhow::bail!(
                "no other host took over {} within {} ms (is a passive host running?)",
                units.join(", "),
                bound.as_millis()
            );
        }
        pending = still;
        std::thread::sleep(WAIT_POLL);
    }
}
