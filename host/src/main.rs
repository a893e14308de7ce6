//! The `logstream` binary: parses the command line and hands over to the
//! library. Everything testable lives in `logstream_host::cli`.

use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::{CommandFactory, FromArgMatches};

fn main() -> ExitCode {
    let matches = match logstream_host::cli::Cli::command().try_get_matches() {
        Ok(matches) => matches,
        // --help, --version, and the help shown when no command is given.
        Err(e)
            if !e.use_stderr()
                || e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand =>
        {
            e.exit()
        }
        Err(e) => {
            // A usage error: one line, not clap's usage block (guarantee 6).
            eprintln!("{}", logstream_host::cli::usage_error_line(&e));
            return ExitCode::from(2);
        }
    };
    let cli = logstream_host::cli::Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    logstream_host::cli::init_tracing(&cli.global);
    // Test builds only: arm the fault-injection points FAILPOINTS names.
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let code = match logstream_host::cli::run(cli, Some(&matches)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {}", logstream_host::cli::one_line(&error));
            ExitCode::FAILURE
        }
    };
    // FoundationDB's client network thread is joined before exit (a no-op
    // when no FoundationDB store was opened).
    #[cfg(feature = "fdb")]
    logstream_host::store::fdb::stop_network();
    code
}
