//! The `logstream` binary: parses the command line and hands over to the
//! library. Everything testable lives in `logstream_host::cli`.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = logstream_host::cli::Cli::parse();
    logstream_host::cli::init_tracing(&cli.global);
    match logstream_host::cli::run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {}", logstream_host::cli::one_line(&error));
            ExitCode::FAILURE
        }
    }
}
