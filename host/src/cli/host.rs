//! `logstream host`: run a host node until SIGTERM/SIGINT, then hand over.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args};

use super::host_config::HostFile;
use super::{GlobalArgs, LimitArgs};
use crate::pipeline::node::{self, HostConfig};
use crate::unit_id::Deployment;

/// Default checkpoint interval while records flow, in milliseconds.
pub const DEFAULT_CHECKPOINT_INTERVAL_MS: u64 = 1_000;
/// Default records between checkpoints.
pub const DEFAULT_CHECKPOINT_EVERY_RECORDS: u64 = 100_000;

#[derive(Debug, Args)]
pub struct HostArgs {
    /// Read settings from this TOML file (docs/configuration.md). Command-line
    /// options and `LOGSTREAM_…` variables override it.
    #[arg(long, env = "LOGSTREAM_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Coordination store URL: `sqlite:PATH` or `fdb:[CLUSTER_FILE]`.
    #[arg(
        long,
        env = "LOGSTREAM_STORE",
        default_value = "sqlite:logstream-data/store.db"
    )]
    pub store: String,

    /// Kafka bootstrap servers.
    #[arg(long, env = "LOGSTREAM_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,

    /// This host's id [default: the hostname].
    #[arg(long, env = "LOGSTREAM_HOST_ID")]
    pub host_id: Option<String>,

    /// The deployment's name, part of every id this host's units put on
    /// the broker, so deployments sharing a broker never interfere. The
    /// first host of a store records it there; later hosts must agree
    /// [default: the store's; a generated one on a new store].
    #[arg(long, env = "LOGSTREAM_DEPLOYMENT")]
    pub deployment: Option<String>,

    #[command(flatten)]
    pub election: super::ElectionArgs,

    /// Checkpoint at least this often while records flow, in milliseconds.
    #[arg(long, default_value_t = DEFAULT_CHECKPOINT_INTERVAL_MS)]
    pub checkpoint_interval_ms: u64,

    /// Checkpoint after this many records.
    #[arg(long, default_value_t = DEFAULT_CHECKPOINT_EVERY_RECORDS)]
    pub checkpoint_every_records: u64,

    #[command(flatten)]
    pub limits: LimitArgs,

    /// Most units this host runs: it starts no more (they wait, reported in
    /// /status and /readyz) and never contends for their leases. Sizes the
    /// instance pool (one instance per unit).
    #[arg(long, default_value_t = crate::wasm::limits::DEFAULT_MAX_UNITS)]
    pub max_units: u32,

    /// Kafka consumers this host reads all its units' input partitions
    /// through (each partition has a queue of its own).
    #[arg(long, default_value_t = crate::pipeline::fetchers::DEFAULT_INPUT_FETCHERS)]
    pub input_fetchers: usize,

    /// Worker threads that run this host's units, 1 to 1024: a unit holds
    /// a thread only while it steps. The pool grows past this while steps
    /// block on the broker (takeovers, flushes), up to one per unit, and
    /// shrinks back when they are done.
    #[arg(long, default_value_t = crate::pipeline::worker_pool::DEFAULT_UNIT_WORKERS)]
    pub unit_workers: usize,

    /// How much linear memory the warm standbys of this host's passive
    /// units may hold together, in MiB; past it a passive keeps no live
    /// instance (cold: its takeover restores from the store).
    #[arg(long, default_value_t = crate::pipeline::standby_budget::DEFAULT_STANDBY_MEMORY_MIB)]
    pub standby_memory_mib: u64,

    /// Serve the admin HTTP endpoints (/metrics, /healthz, /readyz,
    /// /status) on this address; `off` to not serve them. Port 0 (the
    /// default) picks a free port, so hosts on one machine never collide;
    /// the host prints the address it got on stderr at start.
    #[arg(
        long,
        env = "LOGSTREAM_ADMIN_ADDR",
        value_name = "ADDR",
        default_value = crate::admin::DEFAULT_ADMIN_ADDR,
        value_parser = parse_admin_addr,
    )]
    pub admin_addr: AdminAddr,
}

/// `--admin-addr`: an address, or none (`off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminAddr(pub Option<SocketAddr>);

pub(super) fn parse_admin_addr(text: &str) -> Result<AdminAddr, String> {
    if text.eq_ignore_ascii_case("off") {
        return Ok(AdminAddr(None));
    }
    text.parse()
        .map(|address| AdminAddr(Some(address)))
        .map_err(|_| format!("{text:?} is neither IP:PORT nor `off`"))
}

/// Run a host; `matches` (the `host` subcommand's) tells which options the
/// command line or the environment set, which a `--config` file may not
/// override.
pub fn run(global: &GlobalArgs, mut args: HostArgs, matches: &ArgMatches) -> Result<ExitCode> {
    if let Some(path) = args.config.clone() {
        let file = super::host_config::load(&path)?;
        apply(file, &mut args, matches)
            .with_context(|| format!("the config file {} is invalid", path.display()))?;
    }
    let timing = args.election.timing()?;
    let deployment = args
        .deployment
        .as_deref()
        .map(Deployment::new)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let shutdown = super::shutdown_on_signals()?;
    let cache_dir: Option<PathBuf> = if global.no_cache {
        None
    } else {
        global
            .cache_dir
            .clone()
            .or_else(crate::wasm::CompileCache::default_dir)
    };
    let config = HostConfig {
        store_url: args.store,
        brokers: args.brokers,
        host_id: args
            .host_id
            .unwrap_or_else(super::probe_election::default_host_id),
        deployment,
        timing,
        checkpoint_interval: Duration::from_millis(args.checkpoint_interval_ms),
        checkpoint_every_records: args.checkpoint_every_records.max(1),
        limits: crate::wasm::InstanceLimits {
            max_instances: crate::wasm::limits::instances_for_units(args.max_units),
            ..args.limits.instance_limits()
        },
        max_units: args.max_units,
        input_fetchers: args.input_fetchers,
        unit_workers: args.unit_workers,
        standby_memory_mib: args.standby_memory_mib,
        cache_dir,
        admin_addr: args.admin_addr.0,
    };
    node::run(config, shutdown)?;
    Ok(ExitCode::SUCCESS)
}

/// Whether `id` was left at its built-in default (not given on the command
/// line or in the environment), so the file may set it.
fn defaulted(matches: &ArgMatches, id: &str) -> bool {
    matches!(
        matches.value_source(id),
        None | Some(ValueSource::DefaultValue)
    )
}

/// Fill in `args` from `file` where the command line and the environment
/// left the default.
fn apply(file: HostFile, args: &mut HostArgs, matches: &ArgMatches) -> Result<()> {
    macro_rules! take {
        ($id:literal, $from:expr => $to:expr) => {
            if let Some(value) = $from {
                if defaulted(matches, $id) {
                    $to = value;
                }
            }
        };
    }
    take!("store", file.store => args.store);
    take!("brokers", file.brokers => args.brokers);
    if let Some(host_id) = file.host_id {
        if defaulted(matches, "host_id") {
            args.host_id = Some(host_id);
        }
    }
    if let Some(deployment) = file.deployment {
        if defaulted(matches, "deployment") {
            args.deployment = Some(deployment);
        }
    }
    if let Some(text) = file.admin_addr {
        if defaulted(matches, "admin_addr") {
            args.admin_addr =
                parse_admin_addr(&text).map_err(|e| anyhow::anyhow!("admin_addr: {e}"))?;
        }
    }
    take!("lease_ms", file.election.lease_ms => args.election.lease_ms);
    take!("heartbeat_ms", file.election.heartbeat_ms => args.election.heartbeat_ms);
    take!("margin_ms", file.election.margin_ms => args.election.margin_ms);
    take!("checkpoint_interval_ms", file.checkpoint.interval_ms => args.checkpoint_interval_ms);
    take!("checkpoint_every_records", file.checkpoint.every_records => args.checkpoint_every_records);
    take!("memory_limit_mib", file.limits.memory_limit_mib => args.limits.memory_limit_mib);
    take!("call_timeout_ms", file.limits.call_timeout_ms => args.limits.call_timeout_ms);
    take!("max_output_mib", file.limits.max_output_mib => args.limits.max_output_mib);
    take!("max_units", file.limits.max_units => args.max_units);
    take!("input_fetchers", file.limits.input_fetchers => args.input_fetchers);
    take!("unit_workers", file.limits.unit_workers => args.unit_workers);
    take!("standby_memory_mib", file.limits.standby_memory_mib => args.standby_memory_mib);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::host_config::parse;

    /// `logstream host ARGS` parsed, with the host's matches.
    fn parsed(args: &[&str]) -> (HostArgs, clap::ArgMatches) {
        use clap::{CommandFactory, FromArgMatches};
        let argv = ["logstream", "host"].iter().chain(args);
        let matches = super::super::Cli::command().get_matches_from(argv);
        let cli = super::super::Cli::from_arg_matches(&matches).unwrap();
        let super::super::Command::Host(host) = cli.command else {
            panic!("not the host command")
        };
        (host, matches.subcommand_matches("host").unwrap().clone())
    }

    #[test]
    fn the_file_fills_in_only_what_the_command_line_left_at_its_default() {
        let (mut args, matches) = parsed(&["--brokers", "from-cli:9092", "--margin-ms", "150"]);
        let file = parse(
            "brokers = \"from-file:9092\"\nstore = \"sqlite:from-file.db\"\n[election]\nlease_ms = 900\nmargin_ms = 300\n",
        )
        .unwrap();
        apply(file, &mut args, &matches).unwrap();
        assert_eq!(args.brokers, "from-cli:9092");
        assert_eq!(args.store, "sqlite:from-file.db");
        assert_eq!(args.election.lease_ms, 900);
        assert_eq!(args.election.margin_ms, 150);
        // Untouched by both: the built-in default.
        assert_eq!(args.checkpoint_interval_ms, DEFAULT_CHECKPOINT_INTERVAL_MS);
    }

    #[test]
    fn a_bad_admin_address_in_the_file_is_named() {
        let (mut args, matches) = parsed(&[]);
        let file = parse("admin_addr = \"everywhere\"\n").unwrap();
        let message = format!("{:#}", apply(file, &mut args, &matches).unwrap_err());
        assert!(message.starts_with("admin_addr: "), "{message}");
    }

    #[test]
    fn the_deployment_comes_from_the_file_unless_given() {
        let (mut args, matches) = parsed(&[]);
        apply(
            parse("deployment = \"prod\"\n").unwrap(),
            &mut args,
            &matches,
        )
        .unwrap();
        assert_eq!(args.deployment.as_deref(), Some("prod"));
        let (mut args, matches) = parsed(&["--deployment", "staging"]);
        apply(
            parse("deployment = \"prod\"\n").unwrap(),
            &mut args,
            &matches,
        )
        .unwrap();
        assert_eq!(args.deployment.as_deref(), Some("staging"));
    }
}
