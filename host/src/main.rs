//! The `logstream` binary: parses the command line and hands over to the
//! library. Everything testable lives in `logstream::cli`.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = logstream::cli::Cli::parse();
    logstream::cli::init_tracing(&cli.global);
    match logstream::cli::run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {}", logstream::cli::one_line(&error));
            ExitCode::FAILURE
        }
    }
}
