//! Helpers shared by the integration tests: the real `logstream` binary, the
//! real plugin components (built by `scripts/build-plugins.sh`), inputs,
//! and (in [`probes`]) election probe processes.

#![allow(dead_code)]

pub mod admin;
pub mod broker;
pub mod hosts;
pub mod probes;
pub mod records;
pub mod reliability;
pub mod verify;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Where `scripts/build-plugins.sh` puts the components.
pub fn plugin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LOGSTREAM_PLUGIN_DIR") {
        return PathBuf::from(dir);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("wasm32-wasip2/plugin")
}

/// The path of a built component, e.g. `plugin("level_counter")`.
pub fn plugin(name: &str) -> PathBuf {
    let path = plugin_dir().join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: build the components first with scripts/build-plugins.sh",
        path.display()
    );
    path
}

/// The `logstream` binary with a test-local compile cache and quiet logs.
pub fn logstream() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_logstream"));
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("compile-cache");
    command
        .env("LOGSTREAM_CACHE_DIR", cache)
        .env("LOGSTREAM_LOG", "warn");
    command
}

/// Run and capture; panics with the output if the command could not start.
pub fn run(command: &mut Command) -> Output {
    command.output().expect("the logstream binary starts")
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).expect("stdout is UTF-8")
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Write `count` sample records over `partitions` partitions to a file in `dir`.
pub fn sample_input(dir: &Path, count: u64, partitions: u32) -> PathBuf {
    let path = dir.join(format!("sample-{count}-{partitions}.jsonl"));
    let output = run(logstream().args([
        "gen-logs",
        "--count",
        &count.to_string(),
        "--partitions",
        &partitions.to_string(),
        "--out",
        path.to_str().unwrap(),
    ]));
    assert!(
        output.status.success(),
        "gen-logs failed: {}",
        stderr(&output)
    );
    path
}

/// Write JSON-lines records with the given values to a file in `dir`.
pub fn input_of(dir: &Path, name: &str, values: &[&str]) -> PathBuf {
    let path = dir.join(name);
    let lines: Vec<String> = values
        .iter()
        .map(|v| serde_json::json!({ "value": v }).to_string())
        .collect();
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

/// Parse stdout JSON lines.
pub fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("bad output line {line:?}: {e}"))
        })
        .collect()
}
