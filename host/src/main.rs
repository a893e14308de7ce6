//! The `logstream` binary: parses the command line and hands over to the
//! library. Everything testable lives in `logstream_host::cli`.

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

fn main() -> ExitCode {
    let matches = logstream_host::cli::Cli::command().get_matches();
    let cli = logstream_host::cli::Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    logstream_host::cli::init_tracing(&cli.global);
    match logstream_host::cli::run(cli, Some(&matches)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {}", logstream_host::cli::one_line(&error));
            ExitCode::FAILURE
        }
    }
}
