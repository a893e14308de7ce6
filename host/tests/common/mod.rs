//! Helpers shared by the integration tests: the real `logstream` binary, the
//! real plugin components (built by `scripts/build-plugins.sh`), inputs,
//! and (in [`probes`]) election probe processes.

#![allow(dead_code)]

pub mod admin;
pub mod broker;
pub mod etcd;
pub mod hosts;
pub mod netns;
pub mod probes;
pub mod records;
pub mod reliability;
pub mod tls;
pub mod verify;
pub mod world;

use std::collections::BTreeMap;
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
    built(
        plugin_dir().join(format!("{name}.wasm")),
        "scripts/build-plugins.sh",
    )
}

/// The path of a built Python component (`plugins/sdk-python/examples`),
/// e.g. `python_plugin("level_counter")`.
#[allow(dead_code)] // not every test binary deploys a Python processor
pub fn python_plugin(name: &str) -> PathBuf {
    built(
        plugin_dir().join(format!("../python/{name}.wasm")),
        "scripts/build-plugins.sh --python",
    )
}

/// The path of a built JavaScript component (`plugins/sdk-js/examples`),
/// e.g. `js_plugin("redactor")`.
#[allow(dead_code)] // not every test binary deploys a JavaScript processor
pub fn js_plugin(name: &str) -> PathBuf {
    built(
        plugin_dir().join(format!("../js/{name}.wasm")),
        "scripts/build-plugins.sh --js",
    )
}

/// `path`, which `build` makes; a test without it says how to build it.
fn built(path: PathBuf, build: &str) -> PathBuf {
    assert!(
        path.exists(),
        "{} is missing: build the components first with {build}",
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

/// Every row of every table of a SQLite store, as text (empty when the file
/// does not exist): what "the store is unchanged" is checked against.
pub fn store_dump(path: &Path) -> BTreeMap<String, String> {
    let mut dump = BTreeMap::new();
    if !path.exists() {
        return dump;
    }
    let connection =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let tables: Vec<String> = connection
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for table in tables {
        let mut statement = connection
            .prepare(&format!("SELECT * FROM \"{table}\""))
            .unwrap();
        let columns = statement.column_count();
        let rows = statement
            .query_map([], |row| {
                (0..columns)
                    .map(|i| row.get::<_, rusqlite::types::Value>(i))
                    .collect::<Result<Vec<_>, _>>()
            })
            .unwrap();
        for row in rows {
            let row = row.unwrap();
            // The first column is the key (the kv table's primary key).
            dump.insert(format!("{table}:{:?}", row[0]), format!("{:?}", &row[1..]));
        }
    }
    dump
}

/// Hold the SQLite store's write lock for `held`, as another process
/// would: every renewal, claim and checkpoint waits or fails meanwhile.
pub fn lock_store(store_path: &Path, held: std::time::Duration) {
    let connection = rusqlite::Connection::open(store_path).unwrap();
    connection
        .busy_timeout(std::time::Duration::from_secs(10))
        .unwrap();
    connection.execute_batch("BEGIN IMMEDIATE").unwrap();
    std::thread::sleep(held);
    connection.execute_batch("ROLLBACK").unwrap();
}
