//! The command line: argument definitions (clap) and dispatch to one module
//! per command. Each command returns an exit code or an error; `main` prints
//! errors as one line on stderr and exits non-zero.

mod check;
mod deploy;
mod gen_logs;
mod host;
mod host_config;
mod probe_election;
mod processors;
mod run_local;
mod state;
mod status;
mod step_down;
mod undeploy;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::{ArgMatches, Args, Parser, Subcommand};

use crate::wasm::{CompileCache, InstanceLimits, ModuleLoader, WasmEngine};

/// LogStream: stateful WebAssembly log processors with active-passive failover.
#[derive(Debug, Parser)]
#[command(name = "logstream", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Log filter (tracing `EnvFilter` syntax, e.g. `info` or `logstream=debug`).
    #[arg(long, global = true, env = "LOGSTREAM_LOG", default_value = "warn")]
    pub log: String,

    /// Where compiled modules are cached [default: $XDG_CACHE_HOME/logstream].
    #[arg(long, global = true, env = "LOGSTREAM_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Compile modules afresh instead of using the cache.
    #[arg(long, global = true)]
    pub no_cache: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate a processor component and print its interface and state version.
    Check(check::CheckArgs),
    /// Run a processor over a JSON-lines file and print its outputs (the
    /// plugin author's harness).
    RunLocal(run_local::RunLocalArgs),
    /// Run a host node: elect, process deployed processors over Kafka, fail over.
    Host(host::HostArgs),
    /// Validate a processor module and deploy it (module and spec) to the store.
    Deploy(deploy::DeployArgs),
    /// Write realistic sample log records as JSON lines (run-local input format).
    GenLogs(gen_logs::GenLogsArgs),
    /// List the deployed processors: version, module, topics, config.
    Processors(processors::ProcessorsArgs),
    /// Remove a processor's spec; hosts stop its units (checkpoints stay).
    Undeploy(undeploy::UndeployArgs),
    /// Show each processor's units (leader, epoch, checkpoint, lag) and the hosts.
    Status(status::StatusArgs),
    /// Ask the active host of units to hand over to a passive one.
    StepDown(step_down::StepDownArgs),
    /// Read processor state out of the store.
    #[command(subcommand)]
    State(state::StateCommand),
    /// Diagnostic: contend for a processor's leadership and append fenced
    /// writes while leading (or --check the log they left).
    ProbeElection(probe_election::ProbeElectionArgs),
}

/// Limits of processor instances, shared by the commands that run them.
#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// Memory limit of one processor instance, in MiB.
    #[arg(long, default_value_t = (crate::wasm::limits::DEFAULT_MEMORY_LIMIT_BYTES >> 20) as u64)]
    pub memory_limit_mib: u64,

    /// Time limit of one call into the processor, in milliseconds.
    #[arg(long, default_value_t = crate::wasm::limits::DEFAULT_CALL_TIMEOUT.as_millis() as u64)]
    pub call_timeout_ms: u64,

    /// Limit on the payload one call may return, in MiB.
    #[arg(long, default_value_t = (crate::wasm::limits::DEFAULT_MAX_OUTPUT_BYTES_PER_CALL >> 20) as u64)]
    pub max_output_mib: u64,
}

impl LimitArgs {
    fn instance_limits(&self) -> InstanceLimits {
        InstanceLimits {
            memory_limit_bytes: usize::try_from(self.memory_limit_mib << 20).unwrap_or(usize::MAX),
            call_timeout: Duration::from_millis(self.call_timeout_ms),
            max_output_bytes_per_call: usize::try_from(self.max_output_mib << 20)
                .unwrap_or(usize::MAX),
            ..InstanceLimits::default()
        }
    }
}

/// The election timing, shared by the commands that contend.
#[derive(Debug, Clone, Args)]
pub struct ElectionArgs {
    /// Election lease, in milliseconds: a silent leader is replaced after this.
    #[arg(long, default_value_t = crate::store::election::DEFAULT_LEASE.as_millis() as u64)]
    pub lease_ms: u64,

    /// Election heartbeat (renewal and observation period), in milliseconds.
    #[arg(long, default_value_t = crate::store::election::DEFAULT_HEARTBEAT.as_millis() as u64)]
    pub heartbeat_ms: u64,

    /// Election margin: the leader goes quiet this long before its lease ends, in milliseconds.
    #[arg(long, default_value_t = crate::store::election::DEFAULT_MARGIN.as_millis() as u64)]
    pub margin_ms: u64,
}

impl ElectionArgs {
    /// The timing, validated (one sentence on what is wrong).
    pub fn timing(&self) -> Result<crate::store::election::ElectionTiming> {
        let timing = crate::store::election::ElectionTiming {
            lease: Duration::from_millis(self.lease_ms),
            heartbeat: Duration::from_millis(self.heartbeat_ms),
            margin: Duration::from_millis(self.margin_ms),
        };
        timing.validate().map_err(anyhow::Error::msg)?;
        Ok(timing)
    }
}

/// The coordination store option of the operator commands.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Coordination store URL: `sqlite:PATH` or `fdb:[CLUSTER_FILE]`.
    #[arg(
        long,
        env = "LOGSTREAM_STORE",
        default_value = "sqlite:logstream-data/store.db"
    )]
    pub store: String,
}

impl StoreArgs {
    /// Open an existing store: an operator command must not create an
    /// empty SQLite file where a path was mistyped.
    pub fn open(&self) -> Result<std::sync::Arc<dyn crate::store::KvStore>> {
        if let Some(path) = self.store.strip_prefix("sqlite:") {
            if !path.is_empty() && !std::path::Path::new(path).exists() {
                anyhow::bail!("there is no store at {path} (nothing was ever deployed there)");
            }
        }
        crate::store::open(&self.store)
            .map_err(|e| anyhow::anyhow!("cannot open the store {}: {e}", self.store))
    }
}

/// A flag set by SIGTERM or SIGINT.
fn shutdown_on_signals() -> Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    let shutdown = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, shutdown.clone())
            .map_err(|e| anyhow::anyhow!("installing signal handlers: {e}"))?;
    }
    Ok(shutdown)
}

/// Set up `tracing` to stderr with the `--log` filter.
pub fn init_tracing(global: &GlobalArgs) {
    let filter = tracing_subscriber::EnvFilter::try_new(&global.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal: logs in files stay greppable.
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// An error and its causes on one line.
pub fn one_line(error: &anyhow::Error) -> String {
    format!("{error:#}").replace('\n', " ")
}

/// A command-line usage error (unknown option, malformed value, missing
/// argument) as one line: clap's message, with its tip if it has one
/// (e.g. a similar option's name), without the usage and help lines that
/// follow it. Guarantee 6: a bad command is refused with one sentence.
pub fn usage_error_line(error: &clap::Error) -> String {
    let rendered = error.render().to_string();
    let mut line = String::new();
    for part in rendered
        .lines()
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .map(str::trim)
        .filter(|l| !l.is_empty())
    {
        if line.is_empty() {
            line.push_str(part);
        } else if part.starts_with("tip:") {
            line.push_str("; ");
            line.push_str(part);
        } else {
            // Continuation lines, e.g. the list of missing arguments.
            line.push(' ');
            line.push_str(part);
        }
    }
    line
}

/// Run one command.
/// `matches` are the parsed command line `cli` came from: `host` needs them
/// to tell options given from defaults (its `--config` file fills in only
/// the latter); without them every option counts as given.
pub fn run(cli: Cli, matches: Option<&ArgMatches>) -> Result<ExitCode> {
    match cli.command {
        Command::Check(args) => check::run(&cli.global, args),
        Command::RunLocal(args) => run_local::run(&cli.global, args),
        Command::GenLogs(args) => gen_logs::run(args),
        Command::Host(args) => {
            let empty = ArgMatches::default();
            let host_matches = matches.and_then(|m| m.subcommand_matches("host"));
            host::run(&cli.global, args, host_matches.unwrap_or(&empty))
        }
        Command::Deploy(args) => deploy::run(&cli.global, args),
        Command::ProbeElection(args) => probe_election::run(args),
        Command::Processors(args) => processors::run(args),
        Command::Undeploy(args) => undeploy::run(args),
        Command::Status(args) => status::run(args),
        Command::StepDown(args) => step_down::run(args),
        Command::State(command) => state::run(command),
    }
}

/// Engine and loader for commands that load modules.
fn module_loader(global: &GlobalArgs, limits: InstanceLimits) -> Result<ModuleLoader> {
    let engine = WasmEngine::new(limits)?;
    let cache = if global.no_cache {
        None
    } else {
        global
            .cache_dir
            .clone()
            .or_else(CompileCache::default_dir)
            .map(CompileCache::new)
    };
    ModuleLoader::new(engine, cache)
}

/// Read and validate a module file, naming the file in every error.
fn load_module(
    loader: &ModuleLoader,
    path: &std::path::Path,
) -> Result<crate::wasm::ProcessorModule> {
    let bytes =
        std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    loader
        .load(&bytes)
        .map_err(|e| anyhow::anyhow!("{} is {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    fn usage_error(args: &[&str]) -> String {
        let argv = std::iter::once("logstream").chain(args.iter().copied());
        let error = super::Cli::command()
            .try_get_matches_from(argv)
            .unwrap_err();
        super::usage_error_line(&error)
    }

    #[test]
    fn an_unknown_option_is_one_line_naming_it() {
        let line = usage_error(&["host", "--bogus-flag"]);
        assert_eq!(line, "error: unexpected argument '--bogus-flag' found");
    }

    #[test]
    fn a_near_miss_keeps_the_tip_on_the_same_line() {
        let line = usage_error(&["host", "--lease", "5"]);
        assert!(
            line.starts_with("error: unexpected argument '--lease' found; tip: "),
            "{line}"
        );
        assert!(line.contains("--lease-ms"), "{line}");
        assert!(!line.contains('\n'), "{line}");
    }

    #[test]
    fn a_malformed_number_names_option_and_value() {
        let line = usage_error(&["host", "--lease-ms", "5s"]);
        assert!(
            line.starts_with("error: invalid value '5s' for '--lease-ms"),
            "{line}"
        );
        assert!(!line.contains('\n'), "{line}");
    }

    #[test]
    fn missing_arguments_are_listed_on_the_line() {
        let line = usage_error(&["deploy", "x.wasm"]);
        assert!(
            line.starts_with("error: the following required arguments were not provided:"),
            "{line}"
        );
        assert!(line.contains("--name"), "{line}");
        assert!(!line.contains('\n'), "{line}");
    }
}
